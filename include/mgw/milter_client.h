/*
 * milter_client.h - filters that are existing milters (kind=milter): the gateway speaks
 * milter v6 to them as an MTA would. filter_link.c and filter_stream.c call in here for
 * such a filter; the bridge above does not know the difference.
 *
 * Link (one per configured milter and loop): the socket spec is resolved, then a probe
 * connection offers every action and protocol bit and reads the milter's OPTNEG answer:
 * that is its declaration (milter_xlate.h), as Describe is a gRPC filter's; the probe
 * then QUITs. A milter that cannot be reached is "down" (the link's state is
 * TRANSIENT_FAILURE): new streams fail at once, and the probe is retried with back-off
 * until it answers. A stream that cannot connect marks the link down the same way.
 *
 * Stream (one milter connection per MTA connection): connected at the filter's first
 * event; OPTNEG offers the actions the MTA granted the gateway (never more) and every
 * NO/NR bit; events queue until the milter answers, then go out as frames. The milter's
 * answer is held to the offer: a version above 6, actions or protocol bits not offered
 * fail the stream out of contract (Postfix does the same). Replies are matched to events
 * in order; where the milter negotiated a reply away that the bridge expects, the stream
 * answers CONTINUE for it (libmilter's rule), and a reply the bridge does not expect is
 * dropped. Its output buffer counts as the queue (max_queue, back-pressure). Detach sends
 * QUIT and closes; a stream broken for any reason closes its socket at once.
 *
 * Everything runs on the loop thread of the bridge.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MILTER_CLIENT_H
#define MGW_MILTER_CLIENT_H

#ifdef MGW_CORE
#error "milter_client.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>

struct mgw_filter_link;
struct mgw_filter_stream;

/* Link: resolve, start the first probe. Returns 1: `settled` will be called once it ends. */
int mgw_milter_link_start(struct mgw_filter_link *f);
/* Link: stop probing; free. No callback fires from here on. */
void mgw_milter_link_close(struct mgw_filter_link *f);

/* Stream: connect and negotiate (once). A link known down breaks the stream at once. */
void mgw_milter_stream_start(struct mgw_filter_stream *st);
/* Stream: one packed Event, reference taken over. */
void mgw_milter_stream_send(struct mgw_filter_stream *st, grpc_slice msg);
/* Stream: close the socket (broken or detached); QUIT first when `quit`. */
void mgw_milter_stream_close(struct mgw_filter_stream *st, int quit);

#endif
