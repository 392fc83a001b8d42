/*
 * filter_mux.h - multiplexed Session streams: the sessions of many MTA connections on one
 * call to a filter that declared `multiplexed` (filter.proto, Description.multiplexed).
 *
 * Each MTA connection still has its mgw_filter_stream per filter (a "member": its owed
 * replies, deadlines, hooks, everything the bridge keeps), but no call of its own: at
 * start it joins a "carrier", a stream of the same bridge and filter whose call it shares,
 * and everything it sends goes out tagged with its session (Event.session, the MTA
 * connection's id). The carrier hands each Reply to the member its `session` names.
 *
 * A carrier takes new members for CARRIER_OPEN_MS after its call was made and at most
 * CARRIER_SESSIONS in all, then a new one is made: calls spread over the filter's
 * replicas as they come and go (round_robin picks per call) and a draining replica stops
 * getting new sessions. It is half-closed when its last member leaves. What a carrier
 * costs is paid once for its members: gRPC's call (about 12 KB), its receive, its send
 * slot; an idle MTA connection keeps only its member.
 *
 * Failures: a member that fails (a deadline, a reply out of contract) leaves with a
 * SessionEnd naming why and the carrier goes on; a carrier that fails (broken, ended,
 * max_queue, a send not taken in time, a reply with no session) fails every member with
 * the same reason. Back-pressure: a carrier behind holds every member's MTA reading.
 *
 * Everything runs on the loop thread of the bridge that owns the streams.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_MUX_H
#define MGW_FILTER_MUX_H

#ifdef MGW_CORE
#error "filter_mux.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>

struct mgw_filter_stream;

/* Put a member (role MGW_STREAM_MEMBER, being started) on a carrier, making one if none
 * takes it, and hand over what it queued meanwhile (its SessionStart). A carrier that
 * cannot be made (the filter's channel is known down) leaves the member broken, as a
 * stream of its own would be. */
void mgw_filter_mux_join(struct mgw_filter_stream *st);

/* Send one packed event for a member (taking over the reference); dropped once the
 * member is off its carrier. */
void mgw_filter_mux_send(struct mgw_filter_stream *st, grpc_slice msg);

/* The member's session is over: tell the filter (SessionEnd with `reason`, "" when the
 * MTA connection ended) and take it off its carrier. Nothing once it is off one. */
void mgw_filter_mux_leave(struct mgw_filter_stream *st, const char *reason);

/* Shutdown (the calls are being cancelled): every carrier is let go, its members told
 * nothing more. */
struct mgw_filter_streams;
void mgw_filter_mux_shutdown(struct mgw_filter_streams *set);

#endif
