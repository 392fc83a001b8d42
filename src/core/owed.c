/*
 * owed.c - the replies one filter owes (see owed.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/owed.h"

#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/xmalloc.h"

#define FIRST_CAP 4u
#define KEEP_CAP 64u

static struct mgw_owed *at(const struct mgw_owed_fifo *q, uint32_t k)
{
    return &q->ring[(q->head + k) & (q->cap - 1)];
}

int mgw_owed_push(struct mgw_owed_fifo *q, const struct mgw_owed *o)
{
    if (q->len == MGW_OWED_MAX)
        return MGW_ENOSPACE;
    if (q->len == q->cap) {
        uint32_t cap = q->cap ? q->cap * 2 : FIRST_CAP;
        struct mgw_owed *ring = mgw_xmalloc((size_t)cap * sizeof *ring);

        /* Unwrap into the new ring: entries k = 0..len-1 in order. */
        for (uint32_t k = 0; k < q->len; k++)
            ring[k] = *at(q, k);
        free(q->ring);
        q->ring = ring;
        q->cap = cap;
        q->head = 0;
    }
    *at(q, q->len++) = *o;
    if (o->kind == MGW_OWED_DEFERRED)
        q->deferred++;
    return 0;
}

struct mgw_owed *mgw_owed_front(struct mgw_owed_fifo *q)
{
    return q->len > 0 ? at(q, 0) : NULL;
}

const struct mgw_owed *mgw_owed_back(const struct mgw_owed_fifo *q)
{
    return q->len > 0 ? at(q, q->len - 1) : NULL;
}

int mgw_owed_pop(struct mgw_owed_fifo *q, struct mgw_owed *out)
{
    struct mgw_owed *o = mgw_owed_front(q);

    if (o == NULL)
        return MGW_EINVAL;
    if (o->kind == MGW_OWED_DEFERRED)
        q->deferred--;
    if (out != NULL)
        *out = *o;
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    /* A ring that grew for a backlog goes once it is empty; a small one stays, or every
     * event would cost a malloc. */
    if (q->len == 0 && q->cap > KEEP_CAP)
        mgw_owed_clear(q);
    return 0;
}

const struct mgw_owed *mgw_owed_find(const struct mgw_owed_fifo *q, enum mgw_owed_kind kind,
                                     uint64_t min_id)
{
    for (uint32_t k = 0; k < q->len; k++) {
        const struct mgw_owed *o = at(q, k);

        if (o->kind == kind && o->id >= min_id)
            return o;
    }
    return NULL;
}

void mgw_owed_clear(struct mgw_owed_fifo *q)
{
    free(q->ring);
    memset(q, 0, sizeof *q);
}
