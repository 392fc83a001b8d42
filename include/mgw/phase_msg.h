/*
 * phase_msg.h - the message as ordered phases see it (policy.h rule 8), for the bridge.
 *
 * With filters in more than one phase, the bridge records each message as the MTA sends
 * it (envelope, headers, body, and the macros of end of headers and end of message) into
 * a held copy (msg_edit.h: in memory up to a configured size, then in a temporary file
 * that is gone on every path). When a phase has answered the end of message, its merged
 * modifications are applied to the copy; the next phase is then shown the copy as
 * events (headers, end of headers, body chunks, end of message), as a later milter in a
 * Postfix chain is shown the message the earlier ones left. At the very end the MTA gets
 * the net modifications of all phases, relative to the message it has.
 *
 * Runs on the loop thread of its bridge; one per MTA connection, reused message after
 * message.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_PHASE_MSG_H
#define MGW_PHASE_MSG_H

#ifdef MGW_CORE
#error "phase_msg.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>
#include <stddef.h>
#include <stdint.h>

#include "mgw/backend.h"
#include "mgw/filter_proto.h"

struct mgw_phase_msg;

/* Body bytes held in memory per message before the rest goes to a temporary file. */
#define MGW_PHASE_DEFAULT_MEMORY (1u << 20)

struct mgw_phase_msg *mgw_phase_msg_new(size_t memory);
struct mgw_phase_msg *mgw_phase_msg_free(struct mgw_phase_msg *pm);

/* The message is over (end of message answered, ABORT, a new MAIL): forget it. */
void mgw_phase_msg_reset(struct mgw_phase_msg *pm);

/* Record one MTA event of the message (M R L N B E; others are ignored). Returns 0, or
 * MGW_ENOSPACE / MGW_EIO when the copy cannot hold it: the message is then "broken" and
 * every later call says so, until the reset. */
int mgw_phase_msg_record(struct mgw_phase_msg *pm, const struct mgw_event *ev);
int mgw_phase_msg_broken(const struct mgw_phase_msg *pm);

/* Apply one phase's merged modification frames. 0, or < 0 (broken from then on). */
int mgw_phase_msg_apply(struct mgw_phase_msg *pm, const struct mgw_milter_msg *mods, size_t n);

/* The replay for the next phase: each event packed (Header*, EndOfHeaders, BodyChunk*,
 * EndOfMessage with the MTA's macros), ids from *next_id on, handed to `each` with a
 * reference the callee takes over; the end of message last. Returns 0, or < 0 (broken). */
int mgw_phase_msg_replay(struct mgw_phase_msg *pm, struct mgw_proto_scratch *sc,
                         uint64_t *next_id,
                         void (*each)(void *arg, uint8_t cmd, grpc_slice msg, uint64_t id),
                         void *arg);

/* The net modification frames for the MTA, only those `actions` (what the MTA granted)
 * allow; the others are counted in *dropped. *frames and *bodymem are allocated (free
 * both); frame views point into the copy and *bodymem: valid until the next record,
 * apply, reset or free. Returns the frame count, or < 0 (broken). */
ssize_t mgw_phase_msg_net(struct mgw_phase_msg *pm, uint32_t actions,
                          struct mgw_milter_msg **frames, uint8_t **bodymem, size_t *dropped);

#endif
