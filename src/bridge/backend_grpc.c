/*
 * backend_grpc.c - the filter bridge (see backend_grpc.h): the backend itself, its
 * filters, sessions and lifetime, and the sending of each event to the filters.
 *
 * Per filter (struct filter): its link (filter_link.h: channel, Session method, cached
 * declaration, kept fresh by Describe) and its index. The channel's settings are
 * grpc_channel.c's; what each filter owes is owed.c's; the merge and the pipelined
 * content rule are policy.c's; the answers to each event (replies, failures, the merged
 * answer to the MTA) are bridge_answer.c's; ordered phases are bridge_phases.c's (the
 * structures these files share are bridge_int.h's).
 *
 * Per MTA connection (struct bsession): one struct stream per filter, the event being
 * answered, and each filter's answer to it. A stream is the transport (filter_stream.h:
 * the call, made at the filter's first event, its outbound queue and batches, deadlines,
 * back-pressure, lifetime) followed by what the bridge keeps per filter and connection:
 * the filter, the session while attached, and the filter's liveness (retired for the
 * message or the connection, body skipped). The bridge pushes what the filter owes
 * (owed.h) as it sends; the transport arms the oldest one's deadline.
 *
 * Pipelined content (policy.h rule 7): headers, end of headers and body chunks the MTA
 * streams under NR_* are owed as DEFERRED; once one of them is refused, nothing more of
 * the message is forwarded. The next event the MTA waits for holds every filter that
 * still owes deferred replies ("draining").
 *
 * Shadow filters are never waited for. A filter whose stream broke gets its on_error
 * verdict, immediately, for every later event it would have answered on this
 * connection. A filter whose channel is in TRANSIENT_FAILURE when its first event comes
 * gets no call at all, so a filter known to be down costs no waiting.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/backend_grpc.h"

#include <event2/event.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "mgw/error.h"
#include "mgw/filter_link.h"
#include "mgw/filter_stream.h"
#include "mgw/filter_proto.h"
#include "mgw/grpc_channel.h"
#include "mgw/grpc_pump.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/milter_vocab.h"
#include "mgw/owed.h"
#include "mgw/phase_msg.h"
#include "mgw/policy.h"
#include "mgw/xmalloc.h"

#include "bridge_int.h"

/* ---- helpers ---- */

uint64_t bridge_now_us(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

unsigned bridge_timeout_of(const struct filter *f, uint8_t cmd)
{
    return cmd == MGW_SMFIC_BODYEOB ? f->l.conf.eom_timeout_ms : f->l.conf.timeout_ms;
}

const char *bridge_event_name(uint8_t cmd)
{
    return mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA);
}

/* ---- needs (negotiation) ---- */

static void recompute_needs(struct bridge *b)
{
    struct mgw_policy_decl *decls = mgw_xcalloc(b->nfilters, sizeof *decls);
    size_t cap;

    for (size_t i = 0; i < b->nfilters; i++) {
        decls[i] = b->filters[i].l.decl;
        decls[i].shadow = b->filters[i].l.conf.shadow;
        decls[i].pipelined = !b->filters[i].l.conf.content_strict;
        /* Not implemented yet: refused recipients and header leading space need the
         * bridge to translate for filters that did not ask; never request them, and say
         * so rather than pretend. */
        if (decls[i].rejected_recipients || decls[i].header_leading_space)
            log_warn(0, "filter asks for something not supported yet; ignored",
                     "filter=%s rejected_recipients=%d header_leading_space=%d",
                     b->filters[i].l.conf.name, decls[i].rejected_recipients,
                     decls[i].header_leading_space);
        decls[i].rejected_recipients = false;
        decls[i].header_leading_space = false;
    }
    cap = mgw_policy_union_storage(decls, b->nfilters);
    free(b->needs_mem);
    b->needs_mem = mgw_xmalloc(cap);
    if (mgw_policy_union_needs(decls, b->nfilters, &b->needs, b->needs_mem, cap) < 0)
        mgw_panic("bridge: union storage too small");
    free(decls);
}

static void bridge_needs(void *impl, struct mgw_backend_needs *out)
{
    struct bridge *b = impl;

    *out = b->needs;
}

/* ---- events ---- */

/* Send one packed event to every filter that takes part. A filter that answers it owes
 * a reply (with a deadline); when the MTA wants an answer, a non-shadow one is also
 * marked pending and counted in bs->waiting. Shadow filters are never waited for. */
void bridge_fan_out(struct bsession *bs, uint8_t cmd, grpc_slice msg, uint64_t id, int want_reply,
                    unsigned phase)
{
    uint32_t bit = mgw_policy_event_bit(cmd);
    /* Content the MTA streams without waiting: answers count at its next wait (rule 7). */
    int pipelined = !want_reply && (bit & MGW_POLICY_EV_CONTENT);
    int was_dispatching = bs->dispatching;

    /* A refused message ends where answering each event would have ended it. */
    if (bs->doomed && mgw_milter_cmd_in_message(cmd))
        return;
    bs->dispatching = 1;
    for (size_t i = 0; i < bs->b->nfilters; i++) {
        struct stream *st = bs->streams[i];
        struct filter *f = &bs->b->filters[i];
        struct answer *a = &bs->ans[i];
        int receives;

        if (f->l.conf.phase != phase)
            continue;
        receives = (bs->decls[i].events & bit) && !st->retired_conn &&
                       !(mgw_milter_cmd_in_message(cmd) && st->retired_msg) &&
                       !(cmd == MGW_SMFIC_BODY && st->skip_body);
        int answers = receives && !(bs->decls[i].observe_only & bit);
        int waited_for = answers && want_reply && !f->l.conf.shadow;

        a->state = MGW_POLICY_NOT_ASKED;
        if (!receives)
            continue;
        mgw_filter_stream_start(&st->t);
        if (st->t.broken) {
            if (waited_for) {
                a->state = MGW_POLICY_FAILED;
                a->pa.kind = mgw_on_error_verdict(f->l.conf.on_error);
                mgw_metrics_filter_failure_policy(f->l.metric,
                                                  mgw_metrics_failure_action_of(a->pa.kind));
            }
            continue;
        }
        /* Pending first: a failure from here on applies the filter's on_error to this
         * event (answer_failed() only settles pending answers). */
        if (waited_for) {
            a->pending = 1;
            bs->waiting++;
        }
        if (answers) {
            uint64_t now = bridge_now_us();
            struct mgw_owed o = {.id = id, .due_ms = now / 1000u + bridge_timeout_of(f, cmd),
                                 .sent_us = now, .cmd = cmd, .kind = MGW_OWED_IGNORED};

            if (waited_for)
                o.kind = MGW_OWED_WAITED;
            else if (pipelined && !f->l.conf.shadow)
                o.kind = MGW_OWED_DEFERRED;
            if (mgw_owed_push(&st->t.owed, &o) < 0) {
                bridge_stream_fail(st, "out_of_contract", "too many unanswered events");
                continue;
            }
            if (st->t.owed.len == 1)
                mgw_filter_stream_rearm(&st->t);
        }
        mgw_filter_stream_send(&st->t, grpc_slice_ref(msg));
        mgw_metrics_filter_event(f->l.metric, (enum mgw_metrics_event)mgw_metrics_event_of_cmd(cmd));
    }
    bs->dispatching = was_dispatching;
}

/* The MTA's wait also holds the content answers filters still owe (rule 7). */
void bridge_hold_draining(struct bsession *bs, uint8_t cmd)
{
    for (size_t i = 0; i < bs->b->nfilters && mgw_milter_cmd_in_message(cmd); i++) {
        struct answer *a = &bs->ans[i];

        if (!a->pending && bs->streams[i]->t.owed.deferred > 0) {
            a->pending = 1;
            a->draining = 1;
            bs->waiting++;
        }
    }
}

/* The MTA waits for this event's answer (bridge_answer.c settles it); also the end of
 * message of an 'E' with data, once its body chunk is answered. */
void bridge_start_event(struct bsession *bs, uint8_t cmd, grpc_slice msg, uint64_t id)
{
    bs->active = 1;
    bs->cmd = cmd;
    bs->ev_id = id;
    clock_gettime(CLOCK_MONOTONIC, &bs->ev_start);
    bs->waiting = 0;
    bs->phase_ix = 0;
    bridge_fan_out(bs, cmd, msg, id, 1, bs->b->phases[0]);
    if (bs->b->nphases > 1) {
        if (bs->have_ev_msg)
            grpc_slice_unref(bs->ev_msg);
        bs->ev_msg = msg; /* for the later phases (phase_next) */
        bs->have_ev_msg = 1;
    } else {
        grpc_slice_unref(msg);
    }
    bridge_hold_draining(bs, cmd);
    bridge_event_check(bs);
}

static int bridge_event(void *impl, const struct mgw_event *ev, int want_reply,
                        mgw_backend_done_cb done, void *arg)
{
    struct bsession *bs = impl;
    const struct mgw_milter_msg *m = ev->msg;
    struct mgw_proto_event pe;
    grpc_slice msg;
    uint64_t id;

    if (bs->active)
        mgw_panic("bridge: event '%c' while '%c' is unanswered", m->cmd, bs->cmd);
    mgw_proto_scratch_reset(&bs->b->sc);
    if (bs->pm != NULL)
        bridge_phase_record(bs, ev);
    if (m->cmd == MGW_SMFIC_ABORT) {
        /* The message is over for everyone still on the connection. */
        id = bs->next_id++;
        mgw_proto_event_build(&pe, &bs->b->sc, id, ev);
        msg = mgw_grpc_pack_slice(&pe.ev.base);
        for (size_t i = 0; i < bs->b->nfilters; i++) {
            /* Retired ones included: every filter with a stream (filter.proto); one that
             * has received nothing yet has nothing to abandon. */
            if (bs->streams[i]->t.started && !bs->streams[i]->t.broken) {
                mgw_filter_stream_send(&bs->streams[i]->t, grpc_slice_ref(msg));
                mgw_metrics_filter_event(bs->b->filters[i].l.metric, MGW_METRICS_EV_ABORT);
            }
        }
        grpc_slice_unref(msg);
        bridge_reset_message_liveness(bs);
        return 0;
    }
    bs->done = done;
    bs->done_arg = arg;
    if (m->cmd == MGW_SMFIC_BODYEOB && m->u.body.len > 0 && want_reply) {
        /* Sendmail may put the last body chunk in EOB: filters get it as a BodyChunk
         * first, then EndOfMessage (filter.proto). */
        id = bs->next_id++;
        bs->eom_id = bs->next_id++;
        if (mgw_proto_event_build(&pe, &bs->b->sc, bs->eom_id, ev) < 0)
            return MGW_EINVAL;
        bs->eom_after_body = mgw_grpc_pack_slice(&pe.ev.base);
        bs->have_eom_after_body = 1;
        mgw_proto_event_body(&pe, id, m->u.body.data, m->u.body.len);
        msg = mgw_grpc_pack_slice(&pe.ev.base);
        bridge_start_event(bs, MGW_SMFIC_BODY, msg, id);
        return 0;
    }
    /* Streamed content of a refused message goes nowhere (rule 7): not even packed. */
    if (!want_reply && bs->doomed && mgw_milter_cmd_in_message(m->cmd))
        return 0;
    id = bs->next_id++;
    if (mgw_proto_event_build(&pe, &bs->b->sc, id, ev) < 0)
        return MGW_EINVAL;
    msg = mgw_grpc_pack_slice(&pe.ev.base);
    if (!want_reply) {
        bridge_fan_out(bs, m->cmd, msg, id, 0, bs->b->phases[0]);
        grpc_slice_unref(msg);
        return 0;
    }
    bridge_start_event(bs, m->cmd, msg, id);
    return 0;
}

/* ---- the transport under each stream (filter_stream.h) ---- */

static void hook_reply(struct mgw_filter_stream *t, Miltergw__V1__Reply *r)
{
    bridge_on_reply((struct stream *)t, r);
}

static void hook_failed(struct mgw_filter_stream *t, const char *reason, const char *detail)
{
    bridge_stream_fail((struct stream *)t, reason, detail);
}

/* Back-pressure: the session reads again once no stream of it holds it. */
static void hook_flow(struct mgw_filter_stream *t, int hold)
{
    struct bsession *bs = ((struct stream *)t)->bs;

    if (bs != NULL && (hold ? bs->flow_held++ == 0 : --bs->flow_held == 0))
        bs->flow(bs->progress_arg, hold);
}

static const struct mgw_filter_stream_hooks stream_hooks = {hook_reply, hook_failed, hook_flow};

static struct stream *stream_open(struct bsession *bs, struct filter *f)
{
    struct stream *st = (struct stream *)mgw_filter_stream_open(
        sizeof *st, &f->l, bs->b->pump, bs->b->base, bs->sid, &stream_hooks, &bs->b->streams);

    st->f = f;
    st->bs = bs;
    return st;
}

/* The MTA connection lets go; owed replies keep their deadlines (a shadow filter's still
 * get logged). */
static void stream_detach(struct stream *st)
{
    st->bs = NULL;
    mgw_filter_stream_detach(&st->t);
}

/* ---- sessions ---- */

static void *bridge_open(void *impl, const struct mgw_session_info *info,
                         mgw_backend_progress_cb progress, mgw_backend_flow_cb flow,
                         void *arg)
{
    struct bridge *b = impl;
    struct bsession *bs = mgw_xcalloc(1, sizeof *bs);
    struct mgw_milter_optneg offered = *info->offered, negotiated = *info->negotiated;
    char sid_str[17];
    uint64_t start_id;

    bs->b = b;
    bs->sid = info->sid;
    snprintf(sid_str, sizeof sid_str, "%016" PRIx64, info->sid);
    memset(offered.symlist, 0, sizeof offered.symlist);
    memset(negotiated.symlist, 0, sizeof negotiated.symlist);
    bs->negotiated_actions = negotiated.actions;
    bs->progress = progress;
    bs->flow = flow;
    bs->progress_arg = arg;
    bs->next_id = 1;
    start_id = bs->next_id++; /* SessionStart: the same id on every stream, never 0 */
    bs->streams = mgw_xcalloc(b->nfilters, sizeof *bs->streams);
    bs->decls = mgw_xcalloc(b->nfilters, sizeof *bs->decls);
    if (b->nphases > 1)
        bs->pm = mgw_phase_msg_new(b->phase_memory);
    bs->ans = mgw_xcalloc(b->nfilters, sizeof *bs->ans);
    for (size_t i = 0; i < b->nfilters; i++) {
        struct filter *f = &b->filters[i];
        struct mgw_proto_event pe;
        struct mgw_proto_start_info si = {
            .session_id = sid_str, .gateway_version = MGW_VERSION,
            .filter_name = f->l.conf.name, .offered = &offered,
            .negotiated = &negotiated, .effective = &bs->decls[i]};

        /* What the filter declared less what this MTA cannot do: what it is told and
         * what it is held to. */
        mgw_policy_effective_decl(&f->l.decl, &offered, &negotiated, &bs->decls[i]);
        bs->streams[i] = stream_open(bs, f);
        mgw_proto_event_start(&pe, &b->sc, start_id, &si);
        mgw_filter_stream_send(&bs->streams[i]->t, mgw_grpc_pack_slice(&pe.ev.base));
        mgw_proto_scratch_reset(&b->sc);
        /* Macro lists are borrowed from f->l.decl, which a Describe refresh may free; they
         * were needed only for negotiation and the SessionStart just packed. */
        memset(bs->decls[i].macros, 0, sizeof bs->decls[i].macros);
    }
    return bs;
}

static void bridge_close(void *impl)
{
    struct bsession *bs = impl;

    for (size_t i = 0; i < bs->b->nfilters; i++)
        stream_detach(bs->streams[i]);
    if (bs->have_eom_after_body)
        grpc_slice_unref(bs->eom_after_body);
    if (bs->have_ev_msg)
        grpc_slice_unref(bs->ev_msg);
    mgw_phase_msg_free(bs->pm);
    bridge_fate_free(bs);
    bridge_release_answers(bs->ans, bs->b->nfilters);
    free(bs->streams);
    free(bs->decls);
    free(bs);
}

static const struct mgw_backend_ops bridge_ops = {
    .name = "grpc",
    .needs = bridge_needs,
    .session_open = bridge_open,
    .event = bridge_event,
    .session_close = bridge_close,
    .free = NULL, /* owned by the bridge: mgw_bridge_free() */
};

/* ---- lifetime ---- */

static void on_decl_changed(void *arg)
{
    recompute_needs(arg);
}

static void on_link_down(void *arg, struct mgw_filter_link *l)
{
    mgw_filter_streams_link_down(&((struct bridge *)arg)->streams, l);
}

/* One first Describe is over: when the last is, the bridge is ready. */
static void on_decl_settled(void *arg)
{
    struct bridge *b = arg;

    if (b->describing > 0 && --b->describing == 0 && b->ready != NULL) {
        void (*ready)(void *) = b->ready;

        b->ready = NULL;
        ready(b->ready_arg);
    }
}

struct mgw_bridge *mgw_bridge_new(struct event_base *base, const struct mgw_filter_conf *filters,
                                  size_t n, size_t phase_memory, void (*ready)(void *arg),
                                  void *arg, char *err, size_t errlen)
{
    struct bridge *b = mgw_xcalloc(1, sizeof *b);
    size_t describing = 0;

    b->base = base;
    b->pump = mgw_grpc_pump_new(base);
    b->filters = mgw_xcalloc(n, sizeof *b->filters);
    b->backend.ops = &bridge_ops;
    b->backend.impl = b;
    b->phase_memory = phase_memory;
    bridge_find_phases(b, filters, n);
    mgw_filter_streams_init(&b->streams);
    for (size_t i = 0; i < n; i++) {
        struct filter *f = &b->filters[i];
        char why[400];

        f->b = b;
        f->index = i;
        if (mgw_filter_link_init(&f->l, &filters[i], base, b->pump, on_decl_changed,
                                 on_decl_settled, b, why, sizeof why) < 0) {
            snprintf(err, errlen, "filter %s: %s", filters[i].name, why);
            mgw_bridge_free((struct mgw_bridge *)b);
            return NULL;
        }
        f->l.down = on_link_down;
        b->nfilters = i + 1;
    }
    recompute_needs(b);
    b->ready = ready;
    b->ready_arg = arg;
    /* Counted before any starts: a Describe cannot answer inside start, but be exact. */
    for (size_t i = 0; i < n; i++)
        describing += !b->filters[i].l.conf.has_decl ||
                      b->filters[i].l.conf.kind == MGW_FILTER_MILTER;
    b->describing = describing;
    for (size_t i = 0; i < n; i++)
        mgw_filter_link_start(&b->filters[i].l);
    if (describing == 0 && ready != NULL) {
        b->ready = NULL;
        ready(arg);
    }
    return (struct mgw_bridge *)b;
}

void mgw_bridge_on_ready(struct mgw_bridge *mb, void (*ready)(void *arg), void *arg)
{
    struct bridge *b = (struct bridge *)mb;

    if (b->describing == 0) {
        ready(arg);
        return;
    }
    b->ready = ready;
    b->ready_arg = arg;
}

size_t mgw_bridge_ready_count(const struct mgw_bridge *mb, size_t *total)
{
    const struct bridge *b = (const struct bridge *)mb;
    size_t n = 0;

    for (size_t i = 0; i < b->nfilters; i++)
        n += __atomic_load_n(&b->filters[i].l.state, __ATOMIC_RELAXED) == GRPC_CHANNEL_READY;
    *total = b->nfilters;
    return n;
}

struct mgw_backend *mgw_bridge_backend(struct mgw_bridge *mb)
{
    return &((struct bridge *)mb)->backend;
}

struct mgw_bridge *mgw_bridge_free(struct mgw_bridge *mb)
{
    struct bridge *b = (struct bridge *)mb;

    if (b == NULL)
        return NULL;
    b->ready = NULL;
    mgw_filter_streams_shutdown(&b->streams);
    /* Destroying a channel completes its watch; freeing the pump waits for every
     * completion still owed to it, so every stream frees itself. */
    for (size_t i = 0; i < b->nfilters; i++)
        mgw_filter_link_close(&b->filters[i].l);
    b->pump = mgw_grpc_pump_free(b->pump);
    if (!TAILQ_EMPTY(&b->streams.all))
        log_error(0, "streams left at shutdown", "");
    for (size_t i = 0; i < b->nfilters; i++)
        mgw_filter_link_clear(&b->filters[i].l);
    free(b->filters);
    free(b->phases);
    free(b->needs_mem);
    mgw_proto_scratch_free(&b->sc);
    free(b);
    return NULL;
}
