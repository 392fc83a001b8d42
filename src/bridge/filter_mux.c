/*
 * filter_mux.c - multiplexed Session streams (see filter_mux.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/filter_mux.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgw/filter_proto.h"
#include "mgw/filter_stream.h"
#include "mgw/grpc_channel.h"
#include "mgw/log.h"
#include "mgw/xmalloc.h"

/* How long after its call was made, and for how many sessions in all, a carrier takes
 * new members. Short enough that calls follow the filter's replicas (a new call is made
 * at most once a second per loop and filter, nothing next to the messages it carries),
 * long enough that concurrent connections share one. */
#define CARRIER_OPEN_MS 1000
#define CARRIER_SESSIONS 128

struct mgw_filter_mux {
    struct mgw_filter_stream t; /* first: the carrier's own call (filter_stream.h) */
    struct mgw_filter_stream **members;
    size_t nmembers, cap;
    unsigned taken; /* sessions it took, in all */
    uint64_t opened_ms;
    int open; /* in the set's list, taking new members */
    TAILQ_ENTRY(mgw_filter_mux) entry;
};

static uint64_t now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* No new members from now on. */
static void close_to_new(struct mgw_filter_mux *c)
{
    if (c->open) {
        c->open = 0;
        TAILQ_REMOVE(&c->t.set->carriers, c, entry);
    }
}

/* Its last member left (or it failed): half-close it, or let its cancelled call finish;
 * it frees itself once its completions are in (filter_stream.h). */
static void retire(struct mgw_filter_mux *c)
{
    close_to_new(c);
    free(c->members);
    c->members = NULL;
    c->nmembers = c->cap = 0;
    mgw_filter_stream_detach(&c->t);
}

static void remove_member(struct mgw_filter_mux *c, size_t i)
{
    c->members[i]->mux = NULL;
    c->members[i] = c->members[--c->nmembers];
    c->t.sessions = (unsigned)c->nmembers;
}

static struct mgw_filter_stream *member_of(const struct mgw_filter_mux *c, uint64_t session)
{
    for (size_t i = 0; i < c->nmembers; i++)
        if (c->members[i]->sid == session)
            return c->members[i];
    return NULL;
}

/* ---- the carrier's hooks ---- */

static void carrier_fail(struct mgw_filter_mux *c, const char *reason, const char *detail)
{
    mgw_filter_stream_fail(&c->t, reason, detail);
}

/* One reply, to the member it names. A reply for a session that has left (its deadline
 * passed, the MTA connection ended) is late, not wrong. Returns nonzero once the carrier
 * broke: nothing more is taken from it. */
static int deliver(void *arg, Miltergw__V1__Reply *r)
{
    struct mgw_filter_mux *c = arg;
    struct mgw_filter_stream *m;

    if (r->session == 0) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        carrier_fail(c, "out_of_contract", "a reply without its session on a multiplexed stream");
        return 1;
    }
    m = member_of(c, r->session);
    if (m == NULL) {
        log_debug(r->session, "late reply ignored", "filter=%s event_id=%" PRIu64,
                  c->t.link->conf.name, r->event_id);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return 0;
    }
    mgw_filter_stream_hold(m); /* what the reply leads to may free it */
    m->hooks->reply(m, r);
    mgw_filter_stream_settle(m);
    mgw_filter_stream_release(m);
    return c->t.broken;
}

/* A message from the filter: one reply, or a batch whose elements may name different
 * sessions, each delivered alone (the members see no batch). */
static void carrier_reply(struct mgw_filter_stream *t, Miltergw__V1__Reply *r)
{
    const char *why = mgw_proto_reply_split(r, t->batching, deliver, t);

    if (why != NULL)
        carrier_fail((struct mgw_filter_mux *)t, "out_of_contract", why);
}

/* Every member fails with the carrier's reason. Each is held (as a batch would hold it)
 * while the others fail: a failure may end its session, which detaches its streams. */
static void carrier_failed(struct mgw_filter_stream *t, const char *reason, const char *detail)
{
    struct mgw_filter_mux *c = (struct mgw_filter_mux *)t;
    struct mgw_filter_stream **held = c->members;
    size_t n = c->nmembers;

    log_warn(t->sid, "multiplexed stream failed", "filter=%s sessions=%zu reason=%s",
             t->link->conf.name, n, reason);
    mgw_filter_stream_hold(t);
    mgw_filter_stream_break(t);
    close_to_new(c);
    c->members = NULL;
    c->nmembers = c->cap = 0;
    t->sessions = 0;
    for (size_t i = 0; i < n; i++) {
        held[i]->mux = NULL; /* nothing to tell the filter: the call is gone */
        mgw_filter_stream_hold(held[i]);
    }
    for (size_t i = 0; i < n; i++) {
        held[i]->fail_reason = reason;
        mgw_filter_stream_fail(held[i], reason, detail);
        mgw_filter_stream_release(held[i]);
    }
    free(held);
    retire(c);
    mgw_filter_stream_release(t);
}

static void carrier_flow(struct mgw_filter_stream *t, int hold)
{
    struct mgw_filter_mux *c = (struct mgw_filter_mux *)t;

    for (size_t i = 0; i < c->nmembers; i++) {
        struct mgw_filter_stream *m = c->members[i];

        if (m->attached && !m->broken && m->flow_held != hold) {
            m->flow_held = hold;
            m->hooks->flow(m, hold);
        }
    }
}

static const struct mgw_filter_stream_hooks carrier_hooks = {carrier_reply, carrier_failed,
                                                             carrier_flow};

/* ---- members ---- */

static struct mgw_filter_mux *carrier_for(struct mgw_filter_stream *st)
{
    struct mgw_filter_streams *set = st->set;
    struct mgw_filter_mux *c, *next;
    uint64_t now = now_ms();

    for (c = TAILQ_FIRST(&set->carriers); c != NULL; c = next) {
        next = TAILQ_NEXT(c, entry);
        if (c->t.broken || c->taken >= CARRIER_SESSIONS || now - c->opened_ms >= CARRIER_OPEN_MS)
            close_to_new(c);
        else if (c->t.link == st->link)
            return c;
    }
    c = (struct mgw_filter_mux *)mgw_filter_stream_open(sizeof *c, st->link, st->pump, st->base,
                                                        st->sid, &carrier_hooks, set);
    c->t.role = MGW_STREAM_CARRIER;
    c->opened_ms = now;
    mgw_filter_stream_start(&c->t); /* logs with the session that made it */
    if (c->t.broken) {              /* the channel is known down: no call */
        retire(c);
        return NULL;
    }
    c->t.sid = 0; /* it carries many */
    c->open = 1;
    TAILQ_INSERT_TAIL(&set->carriers, c, entry);
    return c;
}

void mgw_filter_mux_join(struct mgw_filter_stream *st)
{
    struct mgw_filter_mux *c = carrier_for(st);

    if (c == NULL) {
        st->broken = 1;
        return;
    }
    if (c->nmembers == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 4;
        c->members = mgw_xrealloc(c->members, c->cap * sizeof *c->members);
    }
    c->members[c->nmembers++] = st;
    c->t.sessions = (unsigned)c->nmembers;
    c->taken++;
    st->mux = c;
    if (c->t.flow_held) {
        st->flow_held = 1;
        st->hooks->flow(st, 1);
    }
    /* What it queued before joining: its SessionStart. */
    for (size_t i = 0; i < st->nqueue; i++)
        mgw_filter_stream_send_tagged(&c->t, st->queue[i].msg, st->sid);
    free(st->queue);
    st->queue = NULL;
    st->nqueue = st->capqueue = 0;
    st->queued_bytes = 0;
}

void mgw_filter_mux_send(struct mgw_filter_stream *st, grpc_slice msg)
{
    if (st->mux == NULL) {
        grpc_slice_unref(msg);
        return;
    }
    mgw_filter_stream_send_tagged(&st->mux->t, msg, st->sid);
}

void mgw_filter_mux_leave(struct mgw_filter_stream *st, const char *reason)
{
    struct mgw_filter_mux *c = st->mux;
    Miltergw__V1__SessionEnd end = MILTERGW__V1__SESSION_END__INIT;
    Miltergw__V1__Event ev = MILTERGW__V1__EVENT__INIT;

    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nmembers; i++)
        if (c->members[i] == st) {
            remove_member(c, i);
            break;
        }
    if (c->t.broken)
        return;
    end.reason = (char *)reason;
    ev.session = st->sid;
    ev.event_case = MILTERGW__V1__EVENT__EVENT_END;
    ev.end = &end;
    /* Tagged already: the carrier adds no session field of its own (0). */
    mgw_filter_stream_send_tagged(&c->t, mgw_grpc_pack_slice(&ev.base), 0);
    if (c->nmembers == 0)
        retire(c);
}

void mgw_filter_mux_shutdown(struct mgw_filter_streams *set)
{
    struct mgw_filter_stream *st, **carriers = NULL;
    size_t n = 0;

    /* Every carrier, also those closed to new members: retiring one may free it, and so
     * take it out of the list, so they are collected first. */
    TAILQ_FOREACH(st, &set->all, entry)
        if (st->role == MGW_STREAM_CARRIER && st->attached) {
            carriers = mgw_xrealloc(carriers, (n + 1) * sizeof *carriers);
            carriers[n++] = st;
        }
    for (size_t i = 0; i < n; i++) {
        struct mgw_filter_mux *c = (struct mgw_filter_mux *)carriers[i];

        struct mgw_filter_stream **members = c->members;
        size_t nm = c->nmembers;

        c->members = NULL; /* retire() frees the array: the members are settled first */
        c->nmembers = c->cap = 0;
        for (size_t k = 0; k < nm; k++) {
            members[k]->mux = NULL;
            mgw_filter_stream_settle(members[k]); /* a lingering one is freed */
        }
        free(members);
        retire(c);
    }
    free(carriers);
}
