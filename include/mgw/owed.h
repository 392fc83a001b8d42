/*
 * owed.h - the replies one filter owes on its stream, oldest first.
 *
 * Pure: a FIFO ring of (event id, command, deadline, kind) that grows on demand and
 * starts empty, so an idle stream costs nothing for it. Replies come in event order
 * (filter.proto), so the oldest entry is always the one the next reply must answer and
 * the one whose deadline is nearest. Kinds say what the answer is for: the event the MTA
 * waits for, a content event the MTA streamed without waiting (its verdict counts at the
 * next wait, policy.h rule 7), or one nobody waits for any more.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_OWED_H
#define MGW_OWED_H

#include <stddef.h>
#include <stdint.h>

enum mgw_owed_kind {
    MGW_OWED_WAITED = 0, /* the MTA waits for the merged answer to this event */
    MGW_OWED_DEFERRED,   /* a pipelined content event: counts at the MTA's next wait */
    MGW_OWED_IGNORED,    /* nobody waits (the MTA negotiated no reply): only its deadline */
};

struct mgw_owed {
    uint64_t id;
    uint64_t due_ms; /* monotonic deadline of the reply */
    uint64_t sent_us; /* monotonic time the event was queued, for the latency histogram */
    uint8_t cmd;     /* milter command letter of the event */
    uint8_t kind;    /* enum mgw_owed_kind */
};

/* Replies a filter may owe at once. Far above any real backlog (a message's headers and
 * its body chunks while the filter is behind); beyond it the filter is not answering. */
#define MGW_OWED_MAX 4096u

struct mgw_owed_fifo {
    struct mgw_owed *ring;
    uint32_t head, len, cap; /* cap is 0 or a power of two */
    uint32_t deferred;       /* entries of kind MGW_OWED_DEFERRED */
};

/* Append; returns 0, or MGW_ENOSPACE at MGW_OWED_MAX entries. */
int mgw_owed_push(struct mgw_owed_fifo *q, const struct mgw_owed *o);

/* The oldest entry, or NULL when empty; valid until the next push or pop. */
struct mgw_owed *mgw_owed_front(struct mgw_owed_fifo *q);

/* The newest entry, or NULL when empty; valid until the next push or pop. */
const struct mgw_owed *mgw_owed_back(const struct mgw_owed_fifo *q);

/* Remove the oldest entry into *out (may be NULL); returns 0, or MGW_EINVAL when empty. */
int mgw_owed_pop(struct mgw_owed_fifo *q, struct mgw_owed *out);

/* The oldest entry of `kind` with id >= min_id, or NULL. */
const struct mgw_owed *mgw_owed_find(const struct mgw_owed_fifo *q, enum mgw_owed_kind kind,
                                     uint64_t min_id);

/* Forget every entry and free the ring. */
void mgw_owed_clear(struct mgw_owed_fifo *q);

#endif
