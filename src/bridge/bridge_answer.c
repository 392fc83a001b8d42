/*
 * bridge_answer.c - the bridge's answer to each event: the filters' replies and
 * failures, taken against what each owes (owed.h), and the merge of their answers
 * (policy.h) into the one the MTA gets. Sending the events, sessions and the bridge's
 * lifetime are backend_grpc.c's; ordered phases are bridge_phases.c's (bridge_int.h).
 *
 * Each filter's answer to the event the MTA waits for (struct answer) is pending until
 * it replies or fails. Once none is pending, or at once after a discard (nothing
 * outranks it), the answers are merged and handed to the MTA, unless a later phase
 * takes the event first (rule 8).
 *
 * Pipelined content (policy.h rule 7): the replies to content the MTA streams under
 * NR_* (owed as DEFERRED) apply their liveness effect at once and a refusal (or a
 * failure with a refusing on_error) is kept per filter, first one only; from the first,
 * nothing more of the message is forwarded. The next event the MTA waits for holds
 * every filter that still owes deferred replies ("draining"), and its answer is the
 * fate of the earliest refused event when there is one.
 *
 * Shadow filters are never waited for: their replies are logged as they arrive, against
 * the event they answer, and their deadlines still break them.
 *
 * Failure of one filter (status, end of stream, out-of-contract reply, deadline) cancels
 * its call and marks its stream broken: it gets its on_error verdict for the current
 * event and, immediately, for every later event it would have answered on this
 * connection.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <grpc/grpc.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgw/filter_proto.h"
#include "mgw/filter_stream.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/milter_vocab.h"
#include "mgw/owed.h"
#include "mgw/policy.h"
#include "mgw/xmalloc.h"

#include "bridge_int.h"

static void complete_event(struct bsession *bs);

/* ---- helpers ---- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static uint64_t now_ms(void)
{
    return bridge_now_us() / 1000u;
}

static enum mgw_metrics_filter_error error_kind(const char *reason)
{
    if (strcmp(reason, "unavailable") == 0)
        return MGW_METRICS_FERR_UNAVAILABLE;
    if (strcmp(reason, "stream_closed") == 0)
        return MGW_METRICS_FERR_STREAM_CLOSED;
    if (strcmp(reason, "timeout") == 0)
        return MGW_METRICS_FERR_TIMEOUT;
    if (strcmp(reason, "out_of_contract") == 0)
        return MGW_METRICS_FERR_OUT_OF_CONTRACT;
    if (strcmp(reason, "queue_full") == 0)
        return MGW_METRICS_FERR_QUEUE_FULL;
    return MGW_METRICS_FERR_STREAM_BROKEN;
}

/* ---- replies and failures ---- */

static size_t stream_index(const struct stream *st)
{
    return st->f->index;
}

/* The filter's part in the current event is over with its failure verdict. The caller
 * then calls bridge_event_check(). */
static void answer_failed(struct bsession *bs, size_t i)
{
    struct answer *a = &bs->ans[i];

    if (!a->pending)
        return;
    a->pending = 0;
    a->draining = 0;
    a->state = MGW_POLICY_FAILED;
    a->pa.kind = mgw_on_error_verdict(bs->b->filters[i].l.conf.on_error);
    mgw_metrics_filter_failure_policy(bs->b->filters[i].l.metric,
                                      mgw_metrics_failure_action_of(a->pa.kind));
    bs->waiting--;
}

/* Settle what can be settled of the event the MTA waits for, and answer it once nothing
 * is pending. A filter held only for the content answers it owed (rule 7) is done when
 * it owes none; once the message is refused, so is every filter that owes none (what
 * it says about this event no longer counts). The last thing a caller does: the answer
 * may close the session and free bs. */
void bridge_event_check(struct bsession *bs)
{
    if (!bs->active || bs->dispatching)
        return;
    for (size_t i = 0; i < bs->b->nfilters; i++) {
        struct answer *a = &bs->ans[i];

        if (!a->pending || bs->streams[i]->t.owed.deferred > 0 || !(a->draining || bs->doomed))
            continue;
        a->pending = 0;
        a->draining = 0;
        a->state = MGW_POLICY_NOT_ASKED;
        bs->waiting--;
    }
    if (bs->waiting == 0)
        complete_event(bs);
}

/* Rule 7: filter i refused content event o, or failed on it with a refusing on_error.
 * Its first refusal in the message is kept; from the first of anyone's the message is
 * doomed. */
static void content_refused(struct bsession *bs, size_t i, const struct mgw_owed *o,
                            enum mgw_policy_state state, enum mgw_verdict_kind kind,
                            const char *reply)
{
    size_t n = bs->b->nfilters;

    if (o->id < bs->msg_first_id)
        return; /* an earlier message's */
    if (bs->fate == NULL) {
        bs->fate = mgw_xcalloc(n, sizeof *bs->fate);
        bs->fate_text = mgw_xcalloc(n, sizeof *bs->fate_text);
    }
    if (bs->fate[i].event_id != 0)
        return;
    bs->fate_text[i] = reply ? mgw_xstrdup(reply) : NULL;
    bs->fate[i] = (struct mgw_policy_deferred){o->id, o->cmd, state, kind, bs->fate_text[i]};
    log_info(bs->sid, "content refused", "filter=%s event=%s verdict=%s failure_policy=%s",
             bs->b->filters[i].l.conf.name, bridge_event_name(o->cmd), mgw_verdict_name(kind),
             state == MGW_POLICY_FAILED ? "yes" : "no");
    bs->doomed = 1;
}

void bridge_fate_free(struct bsession *bs)
{
    if (bs->fate_text != NULL) {
        for (size_t i = 0; i < bs->b->nfilters; i++)
            free(bs->fate_text[i]);
    }
    free(bs->fate_text);
    free(bs->fate);
    bs->fate_text = NULL;
    bs->fate = NULL;
}

void bridge_stream_fail(struct stream *st, const char *reason, const char *detail)
{
    struct bsession *bs = st->bs;
    const struct mgw_owed *o;
    char q[400];

    if (st->t.broken)
        return;
    mgw_metrics_filter_error(st->f->l.metric, error_kind(reason));
    log_warn(st->t.sid, "filter failed", "filter=%s reason=%s event=%s on_error=%s detail=%s",
             st->f->l.conf.name, reason, bs && bs->active ? bridge_event_name(bs->cmd) : "-",
             mgw_on_error_name(st->f->l.conf.on_error),
             mgw_log_quote(q, sizeof q, detail, strlen(detail)));
    /* The oldest content event it still owed an answer to gets its on_error (rule 7). */
    o = bs != NULL ? mgw_owed_find(&st->t.owed, MGW_OWED_DEFERRED, bs->msg_first_id) : NULL;
    if (o != NULL) {
        enum mgw_verdict_kind k = mgw_on_error_verdict(st->f->l.conf.on_error);

        mgw_metrics_filter_failure_policy(st->f->l.metric, mgw_metrics_failure_action_of(k));
        if (mgw_policy_refusal(k))
            content_refused(bs, stream_index(st), o, MGW_POLICY_FAILED, k, NULL);
    }
    st->t.fail_reason = reason; /* a multiplexed filter is told why (SessionEnd) */
    mgw_filter_stream_break(&st->t);
    if (bs != NULL && bs->active) {
        answer_failed(bs, stream_index(st));
        bridge_event_check(bs);
    }
}

static void apply_effect(struct stream *st, uint8_t cmd, enum mgw_verdict_kind kind)
{
    switch (mgw_policy_effect(cmd, kind)) {
    case MGW_POLICY_EFFECT_RETIRE_CONNECTION: st->retired_conn = 1; break;
    case MGW_POLICY_EFFECT_RETIRE_MESSAGE: st->retired_msg = 1; break;
    case MGW_POLICY_EFFECT_SKIP_BODY: st->skip_body = 1; break;
    default: break;
    }
}

/* What a reply left unusable (it is not out of contract for it): logged and counted. */
static void report_unusable(struct stream *st, uint8_t cmd, const struct mgw_proto_answer *pa)
{
    if (pa->warning == NULL && pa->mods_invalid == 0 && pa->bodies_dropped == 0)
        return;
    log_warn(st->t.sid, "filter reply partly unusable", "filter=%s event=%s detail=\"%s\" "
             "invalid_mods=%zu extra_bodies=%zu", st->f->l.conf.name, bridge_event_name(cmd),
             pa->warning ? pa->warning : "-", pa->mods_invalid, pa->bodies_dropped);
    mgw_metrics_mods_dropped(st->f->l.metric, MGW_POLICY_DROP_INVALID, pa->mods_invalid);
    mgw_metrics_mods_dropped(st->f->l.metric, MGW_POLICY_DROP_BODY_CONFLICT, pa->bodies_dropped);
}

/* A reply the MTA does not wait for: a shadow filter's (logged and counted, never
 * applied) or one to a pipelined content event (rule 7: its liveness effect at once,
 * a refusal kept for the MTA's next wait). */
static void unwaited_reply(struct stream *st, const struct mgw_owed *o, Miltergw__V1__Reply *r)
{
    struct bsession *bs = st->bs;
    struct mgw_proto_scratch sc = {0};
    struct mgw_proto_answer pa;
    const char *why = NULL;
    int shadow = st->f->l.conf.shadow;

    if (mgw_proto_reply_answer(r, o->cmd, &sc, &pa, &why) < 0) {
        /* Out of contract on this very event: its on_error applies here. */
        enum mgw_verdict_kind k = mgw_on_error_verdict(st->f->l.conf.on_error);

        if (!shadow && bs != NULL && mgw_policy_refusal(k))
            content_refused(bs, stream_index(st), o, MGW_POLICY_FAILED, k, NULL);
        bridge_stream_fail(st, "out_of_contract", why);
    } else if (shadow) {
        report_unusable(st, o->cmd, &pa);
        mgw_metrics_shadow_verdict(st->f->l.metric, pa.kind);
        if (pa.nmods > 0)
            mgw_metrics_mods_dropped(st->f->l.metric, MGW_POLICY_DROP_SHADOW, pa.nmods);
        if (pa.kind != MGW_VERDICT_CONTINUE || pa.nmods > 0)
            log_info(st->t.sid, "shadow verdict", "filter=%s event=%s verdict=%s mods=%zu applied=no",
                     st->f->l.conf.name, bridge_event_name(o->cmd), mgw_verdict_name(pa.kind), pa.nmods);
        apply_effect(st, o->cmd, pa.kind);
    } else {
        report_unusable(st, o->cmd, &pa);
        mgw_metrics_observe_latency(st->f->l.metric, (double)(bridge_now_us() - o->sent_us) / 1e6);
        if (pa.nmods > 0) {
            log_warn(st->t.sid, "modification dropped", "filter=%s event=%s mods=%zu reason=%s",
                     st->f->l.conf.name, bridge_event_name(o->cmd), pa.nmods,
                     mgw_policy_drop_name(MGW_POLICY_DROP_NOT_EOM));
            mgw_metrics_mods_dropped(st->f->l.metric, MGW_POLICY_DROP_NOT_EOM, pa.nmods);
        }
        if (o->id >= bs->msg_first_id) {
            apply_effect(st, o->cmd, pa.kind);
            if (mgw_policy_refusal(pa.kind))
                content_refused(bs, stream_index(st), o, MGW_POLICY_ANSWERED, pa.kind, pa.reply);
        }
    }
    mgw_proto_scratch_free(&sc);
}

static void reply_one(struct stream *st, Miltergw__V1__Reply *r)
{
    struct bsession *bs = st->bs;
    struct mgw_owed *front = mgw_owed_front(&st->t.owed);
    struct answer *a;
    const char *why = NULL;
    char detail[160];
    struct mgw_owed o;

    /* A shadow filter's replies count after the MTA connection let go too. */
    if (st->t.broken || (bs == NULL && !st->f->l.conf.shadow)) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    if (front == NULL || r->event_id != front->id) {
        if (front == NULL)
            snprintf(detail, sizeof detail, "reply to event %" PRIu64 ", none was due",
                     r->event_id);
        else
            snprintf(detail, sizeof detail, "reply to event %" PRIu64 ", event %" PRIu64 " was due",
                     r->event_id, front->id);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        bridge_stream_fail(st, "out_of_contract", detail);
        return;
    }
    if (r->verdict == MILTERGW__V1__VERDICT__VERDICT_PROGRESS) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        front->due_ms = now_ms() + bridge_timeout_of(st->f, front->cmd);
        mgw_filter_stream_rearm(&st->t);
        /* Only a filter the MTA is waiting for (for this event, or for content answers it
         * still owes) keeps the MTA waiting longer. */
        if (bs != NULL && bs->active && bs->ans[stream_index(st)].pending)
            bs->progress(bs->progress_arg);
        return;
    }
    mgw_owed_pop(&st->t.owed, &o);
    mgw_filter_stream_rearm(&st->t);
    if (st->f->l.conf.shadow || o.kind == MGW_OWED_DEFERRED) {
        unwaited_reply(st, &o, r);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        if (bs != NULL)
            bridge_event_check(bs);
        return;
    }
    a = &bs->ans[stream_index(st)];
    if (!(o.kind == MGW_OWED_WAITED && bs->active && o.id == bs->ev_id && a->pending)) {
        /* A late answer to an event already settled (early discard), or one nobody waits
         * for: nothing to do. */
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    if (mgw_proto_reply_answer(r, bs->cmd, &a->sc, &a->pa, &why) < 0) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        bridge_stream_fail(st, "out_of_contract", why);
        return;
    }
    report_unusable(st, bs->cmd, &a->pa);
    a->reply = r;
    a->pending = 0;
    a->state = MGW_POLICY_ANSWERED;
    mgw_metrics_observe_latency(st->f->l.metric, seconds_since(&bs->ev_start));
    apply_effect(st, bs->cmd, a->pa.kind);
    bs->waiting--;
    /* Nothing outranks a discard: answer the MTA now (PRODUCT.md, merge semantics). */
    if (mgw_policy_final_early(a->pa.kind) && !bs->dispatching)
        complete_event(bs);
    else
        bridge_event_check(bs);
}

static int take_one(void *arg, Miltergw__V1__Reply *r)
{
    struct stream *st = arg;

    reply_one(st, r);
    return st->t.broken; /* nothing more is taken from a failed stream */
}

/* A message from the filter: one reply, or a batch of them, each handled in order as if
 * it had come alone (filter_proto.h). */
void bridge_on_reply(struct stream *st, Miltergw__V1__Reply *r)
{
    const char *why = mgw_proto_reply_split(r, st->t.batching, take_one, st);

    if (why != NULL)
        bridge_stream_fail(st, "out_of_contract", why);
}

/* ---- the answer to the MTA ---- */

/* Events this filter will still be sent in the current scope (policy rule 4). */
static uint32_t receives_of(const struct bsession *bs, size_t i)
{
    const struct stream *st = bs->streams[i];
    uint32_t ev = bs->decls[i].events;

    if (st->t.broken || st->retired_conn || st->retired_msg)
        return 0;
    return st->skip_body ? ev & ~MGW_POLICY_EV_BODY : ev;
}

void bridge_reset_message_liveness(struct bsession *bs)
{
    for (size_t i = 0; i < bs->b->nfilters; i++) {
        bs->streams[i]->retired_msg = 0;
        bs->streams[i]->skip_body = 0;
    }
    bridge_fate_free(bs);
    bs->doomed = 0;
    bs->msg_first_id = bs->next_id;
}

void bridge_release_answers(struct answer *ans, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ans[i].reply != NULL)
            protobuf_c_message_free_unpacked(&ans[i].reply->base, NULL);
        mgw_proto_scratch_free(&ans[i].sc);
    }
    free(ans);
}

static void log_drops(struct bsession *bs, const struct mgw_policy_drop *drops, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        /* A shadow filter's modifications are never applied, and a refused message
         * keeps none: that is no news. Everything else is a filter's mistake or a
         * conflict between filters, worth a warning. */
        enum mgw_log_level lvl = drops[k].reason == MGW_POLICY_DROP_SHADOW ||
                                         drops[k].reason == MGW_POLICY_DROP_REFUSED
                                     ? MGW_LOG_DEBUG
                                     : MGW_LOG_WARN;

        if (mgw_log_enabled(lvl))
            mgw_log(lvl, bs->sid, "modification dropped", "filter=%s mod=%s reason=%s",
                    bs->b->filters[drops[k].filter].l.conf.name,
                    mgw_milter_cmd_name(drops[k].msg->cmd, MGW_MILTER_FROM_MILTER),
                    mgw_policy_drop_name(drops[k].reason));
        mgw_metrics_mods_dropped(bs->b->filters[drops[k].filter].l.metric, drops[k].reason, 1);
    }
}

/* Merge the answers to the current event (policy.h): *mods gets the modifications to
 * apply (allocated, room for `total`, the answers' count), the drops are logged. */
void bridge_merge(struct bsession *bs, const struct mgw_policy_answer *pa, size_t total,
                  struct mgw_milter_msg **mods, struct mgw_policy_result *res)
{
    struct mgw_policy_drop *drops = mgw_xcalloc(total + 1, sizeof *drops);

    *mods = mgw_xcalloc(total + 1, sizeof **mods);
    if (mgw_policy_merge(bs->cmd, pa, bs->b->nfilters, *mods, total + 1, drops, total + 1,
                         res) < 0)
        mgw_panic("bridge: merge refused its input");
    log_drops(bs, drops, res->ndrops < total + 1 ? res->ndrops : total + 1);
    free(drops);
}

/* The policy's view of filter i's answer to the current event, modifications left out
 * unless `mods`. */
void bridge_policy_answer(const struct bsession *bs, size_t i, int mods,
                          struct mgw_policy_answer *out)
{
    const struct answer *a = &bs->ans[i];

    out->state = a->state;
    out->kind = a->pa.kind;
    out->reply = a->pa.reply;
    out->mods = mods ? a->pa.mods : NULL;
    out->nmods = mods ? a->pa.nmods : 0;
    out->actions = bs->decls[i].actions & bs->negotiated_actions;
    out->receives = receives_of(bs, i);
    out->shadow = bs->b->filters[i].l.conf.shadow;
}

static void complete_event(struct bsession *bs)
{
    struct bridge *b = bs->b;
    size_t n = b->nfilters, total = 0;
    struct mgw_policy_answer *pa = mgw_xcalloc(n, sizeof *pa);
    struct mgw_milter_msg *mods;
    struct mgw_policy_result res;
    struct answer *ans = bs->ans;
    struct mgw_verdict v;
    mgw_backend_done_cb done = bs->done;
    void *done_arg = bs->done_arg;
    uint8_t cmd = bs->cmd, fate_cmd = 0;
    /* The message ends here at EOM, and at an 'E' whose body part got a final verdict. */
    int message_over = cmd == MGW_SMFIC_BODYEOB || bs->have_eom_after_body;
    /* A refused content event decides instead (rule 7); its texts live until `done`. */
    struct mgw_policy_result fate;
    int fated = bs->fate != NULL && mgw_milter_cmd_in_message(cmd) &&
                mgw_policy_deferred_fate(bs->fate, n, &fate, &fate_cmd);
    struct mgw_policy_deferred *fate_mem = NULL;
    char **fate_text = NULL;
    /* Several phases: the modifications were applied phase by phase to the held message;
     * the MTA gets their net result. */
    int net = bs->pm != NULL && cmd == MGW_SMFIC_BODYEOB;
    uint8_t *net_body = NULL;

    if (!fated && bridge_phase_next(bs)) {
        free(pa);
        return;
    }
    if (fated) {
        fate_mem = bs->fate;
        fate_text = bs->fate_text;
        bs->fate = NULL;
        bs->fate_text = NULL;
        message_over = 1;
    }
    for (size_t i = 0; i < n; i++) {
        struct answer *a = &ans[i];

        /* Still pending only after an early discard: settled without them. Their owed
         * replies keep their deadlines. */
        a->pending = 0;
        a->draining = 0;
        if (fated) {
            /* Answering each event, nobody would have been asked this one. */
            if (a->state != MGW_POLICY_NOT_ASKED && a->pa.nmods > 0)
                mgw_metrics_mods_dropped(b->filters[i].l.metric, MGW_POLICY_DROP_REFUSED,
                                         a->pa.nmods);
            a->state = MGW_POLICY_NOT_ASKED;
        }
        bridge_policy_answer(bs, i, !net, &pa[i]);
        total += pa[i].nmods;
    }
    bridge_merge(bs, pa, total, &mods, &res);
    if (fated) {
        res.kind = fate.kind;
        res.reply = fate.reply;
        res.decider = fate.decider;
        res.failure_applied = fate.failure_applied;
    }
    if (net && !mgw_policy_refusal(res.kind))
        bridge_net_mods(bs, &res, &mods, &total, &net_body);
    if (res.kind != MGW_VERDICT_CONTINUE || cmd == MGW_SMFIC_BODYEOB) {
        log_info(bs->sid, "verdict",
                 "event=%s verdict=%s decided_by=%s failure_policy=%s mods=%zu refused_at=%s",
                 bridge_event_name(cmd), mgw_verdict_name(res.kind),
                 res.decider == MGW_POLICY_NONE ? "-" : b->filters[res.decider].l.conf.name,
                 res.failure_applied ? "yes" : "no", res.nmods,
                 fated ? bridge_event_name(fate_cmd) : "-");
    }

    /* 'E' with data: its body chunk was answered; now the end of message itself. */
    if (bs->have_eom_after_body && (res.kind == MGW_VERDICT_CONTINUE ||
                                    res.kind == MGW_VERDICT_SKIP)) {
        bs->have_eom_after_body = 0;
        free(pa);
        free(mods);
        bridge_release_answers(ans, n);
        bs->ans = mgw_xcalloc(n, sizeof *bs->ans);
        bridge_start_event(bs, MGW_SMFIC_BODYEOB, bs->eom_after_body, bs->eom_id);
        return;
    }
    if (bs->have_eom_after_body) {
        grpc_slice_unref(bs->eom_after_body);
        bs->have_eom_after_body = 0;
    }

    /* Hand the answer over last: `done` may close the session and free bs. */
    bs->active = 0;
    bs->ans = mgw_xcalloc(n, sizeof *bs->ans);
    /* A refusal before EOM is followed by ABORT (or a new MAIL), which resets. */
    if (message_over) {
        bridge_reset_message_liveness(bs);
        bs->pm_stale = bs->pm != NULL; /* the answer below still points into it */
    }
    v.kind = res.kind;
    v.reply = res.reply;
    v.mods = mods;
    v.nmods = res.nmods < total + 1 ? res.nmods : total + 1;
    done(done_arg, &v);
    bridge_release_answers(ans, n);
    free(pa);
    free(mods);
    for (size_t i = 0; fate_text != NULL && i < n; i++)
        free(fate_text[i]);
    free(fate_text);
    free(fate_mem);
    free(net_body);
}
