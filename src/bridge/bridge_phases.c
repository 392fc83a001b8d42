/*
 * bridge_phases.c - ordered phases in the bridge (policy.h rule 8): an event goes on to the
 * next phase unless refused; at the end of message each later phase is replayed the
 * message as the earlier ones left it (phase_msg.h), and the MTA gets the net
 * modifications of all. Sending events is backend_grpc.c's, the per-event answer
 * bookkeeping bridge_answer.c's (bridge_int.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgw/log.h"
#include "mgw/milter_vocab.h"
#include "mgw/phase_msg.h"
#include "mgw/xmalloc.h"

#include "bridge_int.h"

/* Rule 8, at the end: the net modifications of every phase replace the merged ones; a
 * message the held copy could not take is tempfailed (nothing was applied). */
void bridge_net_mods(struct bsession *bs, struct mgw_policy_result *res,
                     struct mgw_milter_msg **mods, size_t *total, uint8_t **body)
{
    struct mgw_milter_msg *frames;
    size_t dropped;
    ssize_t k = mgw_phase_msg_net(bs->pm, bs->negotiated_actions, &frames, body, &dropped);

    if (k < 0) {
        log_warn(bs->sid, "message too large to hold for later phases", "outcome=tempfail");
        free(frames);
        res->kind = MGW_VERDICT_TEMPFAIL;
        res->reply = NULL;
        res->nmods = 0;
        return;
    }
    if (dropped > 0)
        log_warn(bs->sid, "modification dropped", "mods=%zu reason=not_granted_by_mta", dropped);
    free(*mods);
    *mods = frames;
    *total = (size_t)k;
    res->nmods = (size_t)k;
}

/* Rule 8: one phase has answered the end of message: its merged modifications, policed
 * as for the MTA, edit the message the next phase will see. Returns 0, or -1 when the
 * held copy cannot take them (the message then ends in a tempfail). */
static int phase_apply(struct bsession *bs, unsigned phase)
{
    struct bridge *b = bs->b;
    size_t n = b->nfilters, total = 0;
    struct mgw_policy_answer *pa = mgw_xcalloc(n, sizeof *pa);
    struct mgw_milter_msg *mods;
    struct mgw_policy_result res;
    int r;

    for (size_t i = 0; i < n; i++) {
        bridge_policy_answer(bs, i, b->filters[i].l.conf.phase == phase, &pa[i]);
        if (b->filters[i].l.conf.phase != phase)
            pa[i].state = MGW_POLICY_NOT_ASKED;
        total += pa[i].nmods;
    }
    bridge_merge(bs, pa, total, &mods, &res);
    r = mgw_phase_msg_apply(bs->pm, mods, res.nmods < total + 1 ? res.nmods : total + 1);
    if (r < 0)
        log_warn(bs->sid, "phase modifications not applied", "phase=%u mods=%zu error=%d "
                 "outcome=tempfail", phase, res.nmods, r);
    free(pa);
    free(mods);
    return r < 0 ? -1 : 0;
}

struct replay {
    struct bsession *bs;
    unsigned phase;
};

/* One event of the message shown to a later phase: the end of message is waited for,
 * the content before it streamed as the MTA streams it (rule 7). */
static void replay_one(void *arg, uint8_t cmd, grpc_slice msg, uint64_t id)
{
    struct replay *r = arg;

    if (cmd == MGW_SMFIC_BODYEOB)
        r->bs->ev_id = id;
    bridge_fan_out(r->bs, cmd, msg, id, cmd == MGW_SMFIC_BODYEOB, r->phase);
    grpc_slice_unref(msg);
}

/*
 * Rule 8: a phase has answered the event the MTA waits for. Unless the answers so far
 * refuse it, the next phase gets it: an envelope event as it came, the end of message as
 * the replay of the message the phases so far left (after this phase's modifications).
 * Headers, end of headers and body chunks go to the first phase only; the later ones see
 * them in the replay. Returns 1 when a later phase has the event now (the MTA's answer
 * waits for it), 0 when the answer is due.
 */
int bridge_phase_next(struct bsession *bs)
{
    struct bridge *b = bs->b;
    size_t n = b->nfilters;
    uint8_t cmd = bs->cmd;
    int eom = cmd == MGW_SMFIC_BODYEOB;
    struct mgw_policy_answer *pa;
    struct mgw_policy_result res;
    struct replay rp;

    if (b->nphases == 1 || (mgw_policy_event_bit(cmd) & MGW_POLICY_EV_CONTENT) ||
        (bs->fate != NULL && mgw_milter_cmd_in_message(cmd)) ||
        (eom && mgw_phase_msg_broken(bs->pm)))
        return 0;
    pa = mgw_xcalloc(n, sizeof *pa);
    for (size_t i = 0; i < n; i++)
        bridge_policy_answer(bs, i, 0, &pa[i]);
    mgw_policy_merge(cmd, pa, n, NULL, 0, NULL, 0, &res); /* counts only: never fails */
    free(pa);
    if (mgw_policy_refusal(res.kind))
        return 0;
    if (eom && phase_apply(bs, b->phases[bs->phase_ix]) < 0)
        return 0;
    if (bs->phase_ix + 1 >= b->nphases)
        return 0;
    rp.bs = bs;
    rp.phase = b->phases[++bs->phase_ix];
    clock_gettime(CLOCK_MONOTONIC, &bs->ev_start);
    bs->dispatching++;
    if (!eom)
        bridge_fan_out(bs, cmd, bs->ev_msg, bs->ev_id, 1, rp.phase);
    else if (mgw_phase_msg_replay(bs->pm, &b->sc, &bs->next_id, replay_one, &rp) < 0)
        log_warn(bs->sid, "message not replayed to a later phase", "phase=%u outcome=tempfail",
                 rp.phase);
    bs->dispatching--;
    bridge_hold_draining(bs, cmd);
    bridge_event_check(bs); /* at once when nobody in this phase takes it: on to the next */
    return 1;
}

/* Several phases: the message as the MTA sends it is held for the later ones (rule 8). */
void bridge_phase_record(struct bsession *bs, const struct mgw_event *ev)
{
    uint8_t cmd = ev->msg->cmd;
    int was_broken = mgw_phase_msg_broken(bs->pm);

    if (bs->pm_stale || cmd == MGW_SMFIC_ABORT) {
        mgw_phase_msg_reset(bs->pm);
        bs->pm_stale = 0;
    }
    if (!mgw_milter_cmd_in_message(cmd) || mgw_phase_msg_record(bs->pm, ev) == 0 || was_broken)
        return;
    log_warn(bs->sid, "message too large to hold for later phases",
             "event=%s outcome=tempfail_at_eom", bridge_event_name(cmd));
}

/* The distinct phases of the filters, ascending (rule 8); one, 0, without filters. */
void bridge_find_phases(struct bridge *b, const struct mgw_filter_conf *filters, size_t n)
{
    b->phases = mgw_xcalloc(n + 1, sizeof *b->phases);
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;

        while (k < b->nphases && b->phases[k] < filters[i].phase)
            k++;
        if (k < b->nphases && b->phases[k] == filters[i].phase)
            continue;
        memmove(b->phases + k + 1, b->phases + k, (b->nphases - k) * sizeof *b->phases);
        b->phases[k] = filters[i].phase;
        b->nphases++;
    }
    if (b->nphases == 0)
        b->nphases = 1;
}

