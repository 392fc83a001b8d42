/*
 * milter_xlate.h - filter.proto <-> milter v6, the other way round: what the milter
 * backend (milter_stream.h) sends an existing milter and makes of its answers. Pure.
 *
 * The bridge builds one Event per MTA event for all its filters; for a milter filter it is
 * turned back into the frames an MTA would send: a 'D' with the event's macros when it has
 * any (the MTA sends it even for a command negotiated away), then the command, unless the
 * milter negotiated it away (SMFIP_NO*). The proto mirrors the milter fields one to one, so
 * the frames are the MTA's, except that envelope strings went through proto3's UTF-8
 * strings (filter_proto.h). Header values carry no leading space: the bridge never
 * negotiates SMFIP_HDR_LEADSPC (policy.h), so neither side of the gateway sees one.
 *
 * The milter's answer to one event - modification frames, then one verdict - becomes one
 * Reply for the bridge, as a gRPC filter would have sent it: consecutive REPLBODY frames
 * are one ReplaceBody, REPLYCODE is a refusal with its SMTP response, CONN_FAIL and
 * SHUTDOWN are TEMPFAIL. PROGRESS becomes a PROGRESS reply.
 *
 * Replies are built on the heap, field by field, exactly as protobuf-c's unpacker lays
 * them out, so protobuf_c_message_free_unpacked(r, NULL) frees one.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MILTER_XLATE_H
#define MGW_MILTER_XLATE_H

#include <stddef.h>
#include <stdint.h>

#include "miltergw/v1/filter.pb-c.h"
#include "mgw/milter_codec.h"
#include "mgw/policy.h"

/* A growable byte string (frames waiting for the socket). */
struct mgw_bytes {
    uint8_t *p;
    size_t len, cap;
};

void mgw_bytes_clear(struct mgw_bytes *b);

/* What one Event became. */
struct mgw_xlate_sent {
    uint8_t cmd;  /* its command letter (C H M R T L N B E U A), or 0 (SessionStart) */
    int sent;     /* the command went out (not negotiated away by the milter) */
    int replies;  /* ... and the milter will answer it */
};

/*
 * Append the frames for `ev` to `out`, for a milter that negotiated `protocol` (its
 * SMFIP_* answer). Returns 0 and fills *what, or MGW_EINVAL for an event no MTA sends a
 * milter (a batch, or one that does not encode).
 */
int mgw_xlate_event(const Miltergw__V1__Event *ev, uint32_t protocol, struct mgw_bytes *out,
                    struct mgw_xlate_sent *what);

/* The OPTNEG an MTA sends: version 6, and what the gateway may let the milter do. */
void mgw_xlate_offer(uint32_t actions, struct mgw_milter_optneg *out);

/*
 * The declaration a milter makes by its OPTNEG answer to the offer of every action and
 * protocol bit: events it did not negotiate away, observe-only where it asked NR_*,
 * its actions, its macro lists (copied into storage[0..cap), NUL-terminated, as
 * decl->macros; a list that does not fit is left out). RCPT_REJ and HDR_LEADSPC are
 * not taken (the bridge never asks the MTA for them).
 */
void mgw_xlate_decl(const struct mgw_milter_optneg *answer, struct mgw_policy_decl *out,
                    char *storage, size_t cap);

/* One answer being assembled. Zero-filled is empty. */
struct mgw_xlate_reply {
    Miltergw__V1__Reply *r; /* modifications so far, or NULL */
    size_t cap_mods;
};

/*
 * Take one decoded reply frame of a milter to event `id`. Returns 0 while the answer goes
 * on (a modification), 1 with *out set (taken over by the caller) when it is complete or
 * a PROGRESS, or MGW_EPROTO with a reason in *why for a frame that is not an answer
 * (OPTNEG, SETSYMLIST, a REPLYCODE without a 4xx/5xx code...).
 */
int mgw_xlate_reply_add(struct mgw_xlate_reply *x, uint64_t id, const struct mgw_milter_msg *m,
                        Miltergw__V1__Reply **out, const char **why);

/* Drop a partly assembled answer. */
void mgw_xlate_reply_clear(struct mgw_xlate_reply *x);

#endif
