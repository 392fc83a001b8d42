/*
 * milter_client.c - existing milters behind the bridge (see milter_client.h): the probes
 * and the streams. Reaching a milter and the frames on its connection are milter_wire.c's
 * (milter_client_int.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/milter_client.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/filter_link.h"
#include "mgw/filter_stream.h"
#include "mgw/grpc_pump.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/milter_vocab.h"
#include "mgw/milter_xlate.h"
#include "mgw/xmalloc.h"

#include "milter_client_int.h"

#define PROBE_TIMEOUT_MS 5000
#define RETRY_FIRST_MS 1000
#define RETRY_MAX_MS 30000
#define DECL_MACROS_MAX 2048

/* ---- link: the probe ---- */

struct mgw_milter_probe {
    struct mgw_filter_link *f;
    struct milter_addr addr;
    int resolved;
    struct bufferevent *bev;
    struct event *timer; /* probe deadline, or the next retry */
    unsigned retry_ms;
    char macros[DECL_MACROS_MAX]; /* the declaration's macro lists */
};

static void link_set_state(struct mgw_filter_link *f, grpc_connectivity_state s, const char *why)
{
    if (f->state == s)
        return;
    __atomic_store_n(&f->state, s, __ATOMIC_RELAXED); /* /readyz reads it (backend_grpc.h) */
    mgw_metrics_filter_set_ready(f->metric, s == GRPC_CHANNEL_READY);
    if (s == GRPC_CHANNEL_READY)
        log_info(0, "milter reachable", "filter=%s target=%s", f->conf.name, f->conf.target);
    else
        log_warn(0, "milter unreachable", "filter=%s target=%s detail=\"%s\" on_error=%s",
                 f->conf.name, f->conf.target, why, mgw_on_error_name(f->conf.on_error));
}

static void probe_start(struct mgw_milter_probe *p);

static void probe_settled(struct mgw_filter_link *f)
{
    if (f->first_pending) {
        f->first_pending = 0;
        f->settled(f->arg);
    }
}

static void probe_end(struct mgw_milter_probe *p, const char *failure)
{
    struct timeval tv;

    if (p->bev != NULL) {
        bufferevent_free(p->bev);
        p->bev = NULL;
    }
    if (failure != NULL) {
        link_set_state(p->f, GRPC_CHANNEL_TRANSIENT_FAILURE, failure);
        p->retry_ms = p->retry_ms ? p->retry_ms * 2 : RETRY_FIRST_MS;
        if (p->retry_ms > RETRY_MAX_MS)
            p->retry_ms = RETRY_MAX_MS;
    } else {
        link_set_state(p->f, GRPC_CHANNEL_READY, NULL);
        p->retry_ms = 0;
    }
    probe_settled(p->f);
    evtimer_del(p->timer);
    if (p->retry_ms > 0) {
        tv.tv_sec = p->retry_ms / 1000;
        tv.tv_usec = (p->retry_ms % 1000) * 1000;
        evtimer_add(p->timer, &tv);
    }
}

static void probe_read(struct bufferevent *bev, void *arg)
{
    struct mgw_milter_probe *p = arg;
    struct mgw_filter_link *f = p->f;
    struct mgw_milter_msg m, offer;
    char why[200];
    ssize_t n = milter_next_frame(bufferevent_get_input(bev), MGW_MILTER_DEFAULT_MAX_FRAME, &m);

    if (n == 0)
        return;
    memset(&offer, 0, sizeof offer);
    mgw_xlate_offer(MGW_SMFI_CURR_ACTS, &offer.u.optneg);
    if (n < 0 || m.cmd != MGW_SMFIR_OPTNEG) {
        probe_end(p, "the milter did not answer OPTNEG");
        return;
    }
    if (milter_optneg_unfit(&m.u.optneg, &offer.u.optneg, why, sizeof why) != NULL) {
        probe_end(p, why);
        return;
    }
    if (!f->conf.has_decl) {
        mgw_xlate_decl(&m.u.optneg, &f->decl, p->macros, sizeof p->macros);
        f->described = 1;
        log_info(0, "filter described", "filter=%s target=%s kind=milter events=0x%" PRIx32
                 " observe_only=0x%" PRIx32 " actions=0x%" PRIx32, f->conf.name,
                 f->conf.target, f->decl.events, f->decl.observe_only, f->decl.actions);
    }
    milter_write_simple(bev, MGW_SMFIC_QUIT);
    milter_write_now(bev);
    probe_end(p, NULL);
    if (!f->conf.has_decl)
        f->changed(f->arg);
}

static void probe_event(struct bufferevent *bev, short what, void *arg)
{
    struct mgw_milter_probe *p = arg;
    char why[160];

    if (what & BEV_EVENT_CONNECTED)
        return;
    snprintf(why, sizeof why, "%s",
             (what & BEV_EVENT_ERROR) ? strerror(EVUTIL_SOCKET_ERROR()) : "connection closed");
    probe_end(p, why);
}

static void probe_timer(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_milter_probe *p = arg;

    if (p->bev != NULL)
        probe_end(p, "no OPTNEG answer within 5s");
    else
        probe_start(p);
}

static void probe_start(struct mgw_milter_probe *p)
{
    struct timeval tv = {PROBE_TIMEOUT_MS / 1000, 0};
    char why[300];

    if (!p->resolved) {
        /* Resolved once per probe until it works: a name may come up later. Blocking, but
         * only at start and on a retry, never per MTA connection. */
        if (milter_resolve(p->f->conf.target, &p->addr, why, sizeof why) < 0) {
            probe_end(p, why);
            return;
        }
        p->resolved = 1;
    }
    p->bev = milter_dial(p->f->base, &p->addr, probe_read, NULL, probe_event, p);
    if (p->bev == NULL) {
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        probe_end(p, why);
        return;
    }
    milter_write_optneg(p->bev, MGW_SMFI_CURR_ACTS);
    evtimer_add(p->timer, &tv);
}

int mgw_milter_link_start(struct mgw_filter_link *f)
{
    struct mgw_milter_probe *p = mgw_xcalloc(1, sizeof *p);

    p->f = f;
    p->timer = evtimer_new(f->base, probe_timer, p);
    f->probe = p;
    f->first_pending = 1;
    __atomic_store_n(&f->state, GRPC_CHANNEL_CONNECTING, __ATOMIC_RELAXED);
    probe_start(p);
    return 1;
}

void mgw_milter_link_close(struct mgw_filter_link *f)
{
    struct mgw_milter_probe *p = f->probe;

    if (p == NULL)
        return;
    if (p->bev != NULL)
        bufferevent_free(p->bev);
    event_free(p->timer);
    free(p);
    f->probe = NULL;
}

/* A stream learned something about the milter's reachability. */
static void link_report(const struct mgw_filter_link *cf, const char *failure)
{
    struct mgw_filter_link *f = (struct mgw_filter_link *)cf; /* the bridge's own link */
    struct mgw_milter_probe *p = f->probe;

    if (p == NULL)
        return;
    if (failure == NULL) {
        link_set_state(f, GRPC_CHANNEL_READY, NULL);
    } else if (f->state != GRPC_CHANNEL_TRANSIENT_FAILURE && p->bev == NULL) {
        /* Down until a probe answers; the probe starts soon, with back-off. */
        p->retry_ms = 0;
        probe_end(p, failure);
    }
}

/* ---- streams ---- */

/* A reply the milter owes, or the bridge expects, in event order. */
struct expect {
    uint64_t id;
    uint8_t cmd;
    uint8_t milter_replies; /* the milter will answer it */
    uint8_t forward;        /* the bridge owes a reply for it (owed.h) */
};

struct mgw_milter_conn {
    struct mgw_filter_stream *st;
    struct bufferevent *bev;
    struct mgw_milter_optneg offer;
    uint32_t protocol; /* the milter's answer */
    uint32_t actions;  /* ... and the actions it asked for: its modifications are held to them */
    int negotiated, in_cb, dead;
    int msg_over; /* the milter gave the message a final verdict (ends_message) */
    struct expect *exp;
    size_t nexp, capexp, headexp;
    struct mgw_xlate_reply reply;
    struct mgw_bytes out;
};

static void conn_free(struct mgw_milter_conn *mc)
{
    if (mc->bev != NULL)
        bufferevent_free(mc->bev);
    free(mc->exp);
    mgw_xlate_reply_clear(&mc->reply);
    mgw_bytes_clear(&mc->out);
    free(mc);
}

/* Calls out (to the bridge, which may end the session) happen between enter and leave:
 * a connection closed meanwhile is freed by the outermost leave, which then returns 0. */
static void enter(struct mgw_milter_conn *mc)
{
    mc->in_cb++;
}

static int leave(struct mgw_milter_conn *mc)
{
    if (--mc->in_cb == 0 && mc->dead) {
        conn_free(mc);
        return 0;
    }
    return 1;
}

static int conn_live(const struct mgw_milter_conn *mc)
{
    return !mc->dead && !mc->st->broken;
}

static void conn_fail(struct mgw_milter_conn *mc, const char *reason, const char *detail)
{
    if (conn_live(mc))
        mgw_filter_stream_fail(mc->st, reason, detail);
}

/* Whether the bridge pushed a reply owed for event `id` (it pushes before it sends). */
static int bridge_owes(struct mgw_filter_stream *st, uint64_t id)
{
    static const enum mgw_owed_kind kinds[] = {MGW_OWED_WAITED, MGW_OWED_DEFERRED,
                                               MGW_OWED_IGNORED};

    for (size_t k = 0; k < 3; k++) {
        const struct mgw_owed *o = mgw_owed_find(&st->owed, kinds[k], id);

        if (o != NULL && o->id == id)
            return 1;
    }
    return 0;
}

static struct expect *exp_front(struct mgw_milter_conn *mc)
{
    return mc->nexp > mc->headexp ? &mc->exp[mc->headexp] : NULL;
}

static void exp_pop(struct mgw_milter_conn *mc)
{
    if (++mc->headexp == mc->nexp)
        mc->headexp = mc->nexp = 0;
}

static void forward(struct mgw_milter_conn *mc, Miltergw__V1__Reply *r)
{
    struct mgw_filter_stream *st = mc->st;

    if (conn_live(mc))
        st->hooks->reply(st, r);
    else
        protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* Answer CONTINUE, in order, for what the bridge expects and the milter will not answer. */
static void answer_unanswered(struct mgw_milter_conn *mc)
{
    struct expect *e;

    while (conn_live(mc) && (e = exp_front(mc)) != NULL && !e->milter_replies) {
        uint64_t id = e->id;
        Miltergw__V1__Reply *r;

        exp_pop(mc);
        r = mgw_xcalloc(1, sizeof *r);
        miltergw__v1__reply__init(r);
        r->event_id = id;
        r->verdict = MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
        forward(mc, r);
    }
}

static void update_queue(struct mgw_milter_conn *mc)
{
    size_t queued = mc->bev ? evbuffer_get_length(bufferevent_get_output(mc->bev)) : 0;

    if (!conn_live(mc))
        return;
    if (queued > mc->st->link->conf.max_queue) {
        char detail[120];

        snprintf(detail, sizeof detail, "%zu bytes not yet taken by the milter, max_queue %u",
                 queued, mc->st->link->conf.max_queue);
        conn_fail(mc, "queue_full", detail);
        return;
    }
    mgw_filter_stream_set_queued(mc->st, queued);
}

/* Translate and write one event (the milter has answered OPTNEG). */
static void conn_event(struct mgw_milter_conn *mc, grpc_slice msg)
{
    Miltergw__V1__Event *ev = miltergw__v1__event__unpack(
        NULL, GRPC_SLICE_LENGTH(msg), GRPC_SLICE_START_PTR(msg));
    struct mgw_xlate_sent what;
    int owes;

    grpc_slice_unref(msg);
    if (ev == NULL) {
        conn_fail(mc, "out_of_contract", "an event that does not unpack");
        return;
    }
    mc->out.len = 0;
    if (mgw_xlate_event(ev, mc->protocol, &mc->out, &what) < 0) {
        uint64_t id = ev->event_id;

        protobuf_c_message_free_unpacked(&ev->base, NULL);
        /* A header value with a NUL: no milter frame can carry it. */
        log_warn(mc->st->sid, "event not sent to milter", "filter=%s event_id=%" PRIu64,
                 mc->st->link->conf.name, id);
        if (bridge_owes(mc->st, id))
            conn_fail(mc, "out_of_contract", "an event that has no milter frame");
        return;
    }
    if (what.cmd == MGW_SMFIC_MAIL || what.cmd == MGW_SMFIC_ABORT) {
        mc->msg_over = 0; /* a new message (an abort ends the old one) */
    } else if (mc->msg_over && mgw_milter_cmd_in_message(what.cmd)) {
        mc->out.len = 0; /* the milter is done with this message (ends_message) */
        what.sent = what.replies = 0;
    }
    owes = what.cmd != 0 && bridge_owes(mc->st, ev->event_id);
    if (what.replies || owes) {
        if (mc->nexp == mc->capexp) {
            mc->capexp = mc->capexp ? 2 * mc->capexp : 8;
            mc->exp = mgw_xrealloc(mc->exp, mc->capexp * sizeof *mc->exp);
        }
        mc->exp[mc->nexp++] = (struct expect){ev->event_id, what.cmd, (uint8_t)what.replies,
                                              (uint8_t)owes};
    }
    protobuf_c_message_free_unpacked(&ev->base, NULL);
    if (mc->out.len > 0)
        bufferevent_write(mc->bev, mc->out.p, mc->out.len);
    answer_unanswered(mc);
    update_queue(mc);
}

static void conn_flush_queue(struct mgw_filter_stream *st)
{
    size_t n = st->nqueue;

    /* Events queued before the milter answered OPTNEG, in order. */
    st->nqueue = 0;
    for (size_t i = 0; i < n; i++) {
        if (st->milter != NULL && conn_live(st->milter))
            conn_event(st->milter, st->queue[i].msg);
        else
            grpc_slice_unref(st->queue[i].msg);
    }
}

static void conn_negotiated(struct mgw_milter_conn *mc, const struct mgw_milter_msg *m)
{
    char why[200];

    if (milter_optneg_unfit(&m->u.optneg, &mc->offer, why, sizeof why) != NULL) {
        log_warn(mc->st->sid, "milter negotiation refused", "filter=%s detail=\"%s\"",
                 mc->st->link->conf.name, why);
        conn_fail(mc, "out_of_contract", why);
        return;
    }
    mc->negotiated = 1;
    mc->protocol = m->u.optneg.protocol;
    mc->actions = m->u.optneg.actions;
    mc->st->reached = 1;
    link_report(mc->st->link, NULL);
    conn_flush_queue(mc->st);
}

/* libmilter's rule: a final verdict on a message before its end (accept, reject,
 * tempfail or discard of MAIL, DATA, a header, the end of headers or a body chunk; at RCPT
 * it concerns that recipient only) ends the message for the milter: it answers nothing
 * more of it, until the next MAIL or ABORT. An MTA sends it nothing more; the gateway may
 * already have streamed some (pipelined content), which is answered CONTINUE for it. */
static int ends_message(uint8_t cmd, Miltergw__V1__Verdict v)
{
    return mgw_milter_cmd_in_message(cmd) && cmd != MGW_SMFIC_RCPT && cmd != MGW_SMFIC_BODYEOB &&
           (v == MILTERGW__V1__VERDICT__VERDICT_ACCEPT ||
            v == MILTERGW__V1__VERDICT__VERDICT_REJECT ||
            v == MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL ||
            v == MILTERGW__V1__VERDICT__VERDICT_DISCARD);
}

static void message_over(struct mgw_milter_conn *mc)
{
    mc->msg_over = 1;
    for (size_t k = mc->headexp; k < mc->nexp; k++)
        mc->exp[k].milter_replies = 0;
}

static void conn_reply(struct mgw_milter_conn *mc, const struct mgw_milter_msg *m)
{
    struct expect *e = exp_front(mc);
    Miltergw__V1__Reply *r = NULL;
    const char *why = NULL;
    char detail[120];
    int done, fwd;

    if (e == NULL) {
        snprintf(detail, sizeof detail, "%s with no event to answer",
                 mgw_milter_cmd_name(m->cmd, MGW_MILTER_FROM_MILTER));
        conn_fail(mc, "out_of_contract", detail);
        return;
    }
    if (mgw_milter_mod_action(m->cmd) & ~mc->actions) {
        /* libmilter refuses such a call itself; another milter's frame goes no further. */
        log_warn(mc->st->sid, "modification dropped", "filter=%s mod=%s reason=%s",
                 mc->st->link->conf.name, mgw_milter_cmd_name(m->cmd, MGW_MILTER_FROM_MILTER),
                 mgw_policy_drop_name(MGW_POLICY_DROP_UNDECLARED));
        mgw_metrics_mods_dropped(mc->st->link->metric, MGW_POLICY_DROP_UNDECLARED, 1);
        return;
    }
    done = mgw_xlate_reply_add(&mc->reply, e->id, m, &r, &why);
    if (done < 0) {
        conn_fail(mc, "out_of_contract", why);
        return;
    }
    if (done == 0)
        return;
    fwd = e->forward;
    if (r->verdict != MILTERGW__V1__VERDICT__VERDICT_PROGRESS) {
        int over = ends_message(e->cmd, r->verdict);

        exp_pop(mc);
        if (over)
            message_over(mc);
    }
    if (fwd)
        forward(mc, r);
    else
        protobuf_c_message_free_unpacked(&r->base, NULL);
    answer_unanswered(mc);
}

static void conn_read(struct bufferevent *bev, void *arg)
{
    struct mgw_milter_conn *mc = arg;
    struct mgw_filter_stream *st = mc->st;
    struct evbuffer *in = bufferevent_get_input(bev);
    uint32_t max = st->link->conf.max_message;
    struct mgw_milter_msg m;
    ssize_t n;

    /* What we call may end the MTA session and detach or break the stream: hold it, and
     * let the connection go only once this callback is done with it. */
    milter_quick_ack(bev);
    mgw_filter_stream_hold(st);
    enter(mc);
    while (conn_live(mc) && (n = milter_next_frame(in, max, &m)) != 0) {
        if (n < 0) {
            conn_fail(mc, "out_of_contract", "a frame that does not decode");
            break;
        }
        if (!mc->negotiated) {
            if (m.cmd == MGW_SMFIR_OPTNEG)
                conn_negotiated(mc, &m);
            else
                conn_fail(mc, "out_of_contract", "no OPTNEG answer first");
        } else {
            conn_reply(mc, &m);
        }
        if (!mc->dead)
            evbuffer_drain(in, (size_t)n);
    }
    leave(mc);
    mgw_filter_stream_release(st);
}

static void conn_write(struct bufferevent *bev, void *arg)
{
    struct mgw_milter_conn *mc = arg;

    struct mgw_filter_stream *st = mc->st;

    mgw_filter_stream_hold(st);
    enter(mc);
    update_queue(mc);
    leave(mc);
    mgw_filter_stream_release(st);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct mgw_milter_conn *mc = arg;
    struct mgw_filter_stream *st = mc->st;
    char detail[160];

    if (what & BEV_EVENT_CONNECTED)
        return;
    mgw_filter_stream_hold(st);
    enter(mc);
    if (!st->reached) {
        snprintf(detail, sizeof detail, "connect: %s",
                 (what & BEV_EVENT_ERROR) ? strerror(EVUTIL_SOCKET_ERROR()) : "closed at once");
        link_report(st->link, detail);
        conn_fail(mc, "unavailable", detail);
    } else {
        snprintf(detail, sizeof detail, "the milter %s",
                 (what & BEV_EVENT_ERROR) ? strerror(EVUTIL_SOCKET_ERROR())
                                          : "closed the connection");
        conn_fail(mc, "stream_closed", detail);
    }
    leave(mc);
    mgw_filter_stream_release(st);
}

void mgw_milter_stream_start(struct mgw_filter_stream *st)
{
    const struct mgw_filter_link *l = st->link;
    struct mgw_milter_conn *mc = st->milter;
    char detail[200];

    if (mc == NULL || l->probe == NULL)
        return;
    /* Fail fast: a milter known to be down gets no connection and costs no waiting. */
    if (l->state == GRPC_CHANNEL_TRANSIENT_FAILURE || !l->probe->resolved) {
        st->broken = 1;
        log_warn(st->sid, "filter unavailable", "filter=%s target=%s on_error=%s",
                 l->conf.name, l->conf.target, mgw_on_error_name(l->conf.on_error));
        return;
    }
    mc->bev = milter_dial(l->base, &l->probe->addr, conn_read, conn_write, conn_event_cb, mc);
    if (mc->bev == NULL) {
        snprintf(detail, sizeof detail, "connect: %s", strerror(errno));
        link_report(l, detail);
        mgw_filter_stream_hold(st);
        enter(mc);
        conn_fail(mc, "unavailable", detail);
        leave(mc);
        mgw_filter_stream_release(st);
        return;
    }
    /* The SessionStart (first in the queue) said what the MTA granted. */
    milter_write_optneg(mc->bev, mc->offer.actions);
}

void mgw_milter_stream_send(struct mgw_filter_stream *st, grpc_slice msg)
{
    struct mgw_milter_conn *mc = st->milter;

    if (mc == NULL) {
        Miltergw__V1__Event *ev = miltergw__v1__event__unpack(
            NULL, GRPC_SLICE_LENGTH(msg), GRPC_SLICE_START_PTR(msg));

        /* The first event is the SessionStart: what the MTA granted bounds the offer. */
        mc = st->milter = mgw_xcalloc(1, sizeof *mc);
        mc->st = st;
        mgw_xlate_offer(ev && ev->start && ev->start->negotiated ? ev->start->negotiated->actions
                                                                 : 0,
                        &mc->offer);
        if (ev != NULL)
            protobuf_c_message_free_unpacked(&ev->base, NULL);
        grpc_slice_unref(msg);
        return;
    }
    if (!conn_live(mc)) {
        grpc_slice_unref(msg);
        return;
    }
    if (mc->negotiated) {
        mgw_filter_stream_hold(st);
        enter(mc);
        conn_event(mc, msg);
        leave(mc);
        mgw_filter_stream_release(st);
        return;
    }
    if (st->nqueue == st->capqueue) {
        st->capqueue = st->capqueue ? st->capqueue * 2 : 4;
        st->queue = mgw_xrealloc(st->queue, st->capqueue * sizeof *st->queue);
    }
    st->queue[st->nqueue++] = (struct mgw_stream_queued){msg, 0};
}

void mgw_milter_stream_close(struct mgw_filter_stream *st, int quit)
{
    struct mgw_milter_conn *mc = st->milter;

    if (mc == NULL || mc->dead)
        return;
    if (quit && mc->bev != NULL && mc->negotiated) {
        milter_write_simple(mc->bev, MGW_SMFIC_QUIT);
        milter_write_now(mc->bev);
    }
    mc->dead = 1;
    st->milter = NULL;
    if (mc->in_cb == 0)
        conn_free(mc);
}
