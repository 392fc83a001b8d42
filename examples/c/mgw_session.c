/*
 * mgw_session.c - the streams of the mgw_filter.h library: one Session stream per SMTP
 * connection, from its first batch to its last; the events it receives go to on_event,
 * one by one, and the replies go back in order.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Sessions. Each keeps one RECV_MESSAGE armed and at most one SEND_MESSAGE in flight (our
 * own flags: gRPC 1.51 can break a call on a refused batch), with later replies queued in
 * order. A session's completions may come on any worker, so each session has a mutex; the
 * callback runs under it, which is what serialises one session's events. A session is
 * freed when its status was sent and its last batch completed (completions of one call
 * arrive in any order).
 *
 * Session threads (mgw_filter.session_threads). The workers then only queue a session's
 * events; a thread per session, started at its first event, runs the callbacks outside the
 * session mutex and takes the mutex only to queue a reply and start sends. The session is
 * freed once that thread is done too.
 *
 * Reflection streams run through the same pump, without callbacks: mgw_std_services.c
 * answers each request. The server (mgw_filter.c) starts a stream with mgw_session_new()
 * and passes it its completions (mgw_session_tag()); mgw_g's counters tell the server when
 * the last stream is gone. What a callback reads and writes is in mgw_reply.c.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/slice.h>

#include "mgw_filter_int.h"
#include "mgw_std_services.h"

struct out {
    struct out *next;
    grpc_byte_buffer *bb;
};

/* Events waiting for a session's thread (session_threads). */
struct evq {
    struct evq *next;
    Miltergw__V1__Event *ev; /* unpacked; freed by the thread */
};

struct mgw_session {
    struct tag t_recv, t_send, t_close, t_status;
    pthread_mutex_t mu;
    grpc_call *call;
    grpc_byte_buffer *recv_bb, *send_bb;
    struct out *head, *tail; /* replies not sent yet */
    int cancelled;           /* RECV_CLOSE_ON_SERVER's answer */
    int outstanding;         /* batches started, not completed */
    bool md_sent, recv_armed, recv_done, send_busy, dead, status_started;
    unsigned answer; /* MGW_EVENT_BITs this stream answers (SessionStart.effective) */
    char *id;
    void *state;
    bool reflection; /* a reflection stream, not a Session */
    bool finished;   /* pump() said "free it" once */

    /* session_threads only. */
    pthread_cond_t cv;   /* events queued, or the stream ended */
    struct evq *qh, *qt; /* events not handled yet */
    bool thr_started, thr_done;
    bool in_event, cur_answered; /* on_event running; its event needs a reply */
    uint64_t cur_id;
};

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&r);
    return m;
}

void *mgw_session_state(struct mgw_session *s)
{
    return s->state;
}

const char *mgw_session_id(const struct mgw_session *s)
{
    return s->id ? s->id : "";
}

void *mgw_session_arg(const struct mgw_session *s)
{
    (void)s;
    return mgw_g.f->arg;
}

/* The MGW_EVENT_BITs to answer, from a declaration's events and observe-only lists. */
unsigned mgw_answer_mask(const Miltergw__V1__EventType *ev, size_t n_ev,
                         const Miltergw__V1__EventType *obs, size_t n_obs)
{
    unsigned want = n_ev ? 0 : MGW_ALL_EVENTS; /* an empty list means all */
    for (size_t i = 0; i < n_ev; i++)
        if ((unsigned)ev[i] <= MGW_UNKNOWN)
            want |= MGW_EVENT_BIT(ev[i]) & MGW_ALL_EVENTS;
    for (size_t i = 0; i < n_obs; i++)
        if ((unsigned)obs[i] <= MGW_UNKNOWN)
            want &= ~MGW_EVENT_BIT(obs[i]);
    return want;
}

static bool batch(struct mgw_session *s, const grpc_op *ops, size_t n, struct tag *t)
{
    grpc_call_error e = grpc_call_start_batch(s->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        /* A refused batch can leave the call unusable: end it. */
        fprintf(stderr, "mgw_filter: start_batch failed (%d); cancelling the stream\n", e);
        grpc_call_cancel(s->call, NULL);
        s->dead = true;
        return false;
    }
    s->outstanding++;
    return true;
}

static void drop_queue(struct mgw_session *s)
{
    while (s->head) {
        struct out *o = s->head;
        s->head = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
    }
    s->tail = NULL;
}

static void evq_free(struct mgw_session *s)
{
    while (s->qh) {
        struct evq *q = s->qh;
        s->qh = q->next;
        protobuf_c_message_free_unpacked(&q->ev->base, NULL);
        free(q);
    }
    s->qt = NULL;
}

static void session_free(struct mgw_session *s)
{
    /* With a session thread, that thread already called on_close. */
    if (mgw_g.f->on_close && !s->reflection && !s->thr_started)
        mgw_g.f->on_close(s);
    drop_queue(s);
    evq_free(s);
    if (s->recv_bb)
        grpc_byte_buffer_destroy(s->recv_bb);
    grpc_call_unref(s->call);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->state);
    free(s->id);
    bool counted = !s->reflection;
    free(s);
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.live--;
    if (counted) {
        mgw_g.sessions--;
        pthread_cond_broadcast(&mgw_g.cv);
    }
    pthread_mutex_unlock(&mgw_g.mu);
}

/* Whether a session thread still has callbacks to run (which may produce replies). */
static bool thread_busy(const struct mgw_session *s)
{
    return s->thr_started && !s->thr_done;
}

/* Starts what can start now; true (once) when the session is over and must be freed. */
static bool pump(struct mgw_session *s)
{
    if (!s->recv_armed && !s->recv_done && !s->dead) {
        grpc_op ops[2] = {{.op = GRPC_OP_SEND_INITIAL_METADATA}, {.op = GRPC_OP_RECV_MESSAGE}};
        ops[1].data.recv_message.recv_message = &s->recv_bb;
        bool first = !s->md_sent;
        s->md_sent = s->recv_armed = batch(s, first ? ops : ops + 1, first ? 2 : 1, &s->t_recv);
    }
    if (!s->send_busy && s->head && !s->dead) {
        struct out *o = s->head;
        s->head = o->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->send_bb = o->bb;
        free(o);
        grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
        op.data.send_message.send_message = s->send_bb;
        s->send_busy = batch(s, &op, 1, &s->t_send);
        if (!s->send_busy) {
            grpc_byte_buffer_destroy(s->send_bb);
            s->send_bb = NULL;
        }
    }
    if (s->dead)
        drop_queue(s); /* nothing queued will ever go out */
    if ((s->recv_done || s->dead) && !s->head && !s->send_busy && !s->status_started &&
        !thread_busy(s)) {
        grpc_op op = {.op = GRPC_OP_SEND_STATUS_FROM_SERVER};
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        s->status_started = true; /* even if refused: then only the other batches remain */
        batch(s, &op, 1, &s->t_status);
    }
    if (s->status_started && s->outstanding == 0 && !thread_busy(s) && !s->finished) {
        s->finished = true;
        return true;
    }
    return false;
}

/* Queues a reply for sending (s->mu held). */
static void enqueue(struct mgw_session *s, grpc_byte_buffer *bb)
{
    struct out *o = xcalloc(1, sizeof *o);
    o->bb = bb;
    if (s->tail)
        s->tail->next = o;
    else
        s->head = o;
    s->tail = o;
}

/* Runs on_event for one event and queues its reply. With session_threads it runs on the
 * session's thread without s->mu and takes it to queue; otherwise s->mu is held. */
static void session_event(struct mgw_session *s, const Miltergw__V1__Event *ev)
{
    bool threaded = mgw_g.f->session_threads;
    enum mgw_event kind = mgw_event_kind(ev);
    if (kind == MGW_START) {
        const Miltergw__V1__Description *eff = ev->start->effective;
        free(s->id);
        s->id = xstrdup(ev->start->session_id);
        if (eff)
            s->answer =
                mgw_answer_mask(eff->events, eff->n_events, eff->observe_only, eff->n_observe_only);
    }
    bool answered = kind >= MGW_CONNECT && kind <= MGW_UNKNOWN && (s->answer & MGW_EVENT_BIT(kind));
    struct mgw_reply r = {.msg = MILTERGW__V1__REPLY__INIT,
                          .resp = MILTERGW__V1__SMTP_RESPONSE__INIT};
    r.msg.event_id = ev->event_id;
    r.msg.verdict = MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
    s->cur_id = ev->event_id;
    s->cur_answered = answered;
    s->in_event = true;
    mgw_g.f->on_event(s, ev, &r);
    s->in_event = false;
    if (answered) {
        grpc_byte_buffer *bb = pack(&r.msg.base);
        if (threaded)
            pthread_mutex_lock(&s->mu);
        enqueue(s, bb);
        if (threaded) {
            pump(s); /* cannot be the end: this thread is not done */
            pthread_mutex_unlock(&s->mu);
        }
    }
    mgw_reply_clear(&r);
}

static void events_run(struct mgw_session *s, const Miltergw__V1__Event *ev)
{
    /* Description.batches: events that queued up at the gateway come as one EventBatch. */
    if (ev->event_case == MILTERGW__V1__EVENT__EVENT_BATCH) {
        for (size_t i = 0; i < ev->batch->n_events; i++)
            session_event(s, ev->batch->events[i]);
    } else {
        session_event(s, ev);
    }
}

int mgw_session_progress(struct mgw_session *s)
{
    if (!mgw_g.f->session_threads || !s->in_event || !s->cur_answered)
        return -1;
    Miltergw__V1__Reply r = MILTERGW__V1__REPLY__INIT;
    r.event_id = s->cur_id;
    r.verdict = MILTERGW__V1__VERDICT__VERDICT_PROGRESS;
    grpc_byte_buffer *bb = pack(&r.base);
    pthread_mutex_lock(&s->mu);
    enqueue(s, bb);
    pump(s);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* A session's thread: its callbacks, in order, until the stream ends; then on_close. */
static void *session_thread(void *arg)
{
    struct mgw_session *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->qh == NULL && !s->recv_done && !s->dead)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->dead || s->qh == NULL)
            break;
        struct evq *q = s->qh;
        s->qh = q->next;
        if (s->qh == NULL)
            s->qt = NULL;
        pthread_mutex_unlock(&s->mu);
        events_run(s, q->ev);
        protobuf_c_message_free_unpacked(&q->ev->base, NULL);
        free(q);
        pthread_mutex_lock(&s->mu);
    }
    evq_free(s); /* a dead stream's unhandled events */
    pthread_mutex_unlock(&s->mu);
    if (mgw_g.f->on_close)
        mgw_g.f->on_close(s);
    pthread_mutex_lock(&s->mu);
    s->thr_done = true;
    bool done = pump(s);
    pthread_mutex_unlock(&s->mu);
    if (done)
        session_free(s);
    return NULL;
}

/* Hands an event to the session's thread, starting it at the first (s->mu held). */
static void thread_queue(struct mgw_session *s, Miltergw__V1__Event *ev)
{
    struct evq *q = xcalloc(1, sizeof *q);
    q->ev = ev;
    if (s->qt)
        s->qt->next = q;
    else
        s->qh = q;
    s->qt = q;
    if (s->thr_started) {
        pthread_cond_signal(&s->cv);
        return;
    }
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, session_thread, s) != 0) {
        fputs("mgw_filter: cannot start a session thread\n", stderr);
        abort();
    }
    pthread_attr_destroy(&attr);
    s->thr_started = true;
}

/* A reflection request: one response each, in order. */
static void reflection_recv(struct mgw_session *s)
{
    grpc_slice in = bb_bytes(s->recv_bb);
    uint8_t *out;
    size_t n;
    int rc = mgw_reflection_answer(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in), &out, &n);
    grpc_slice_unref(in);
    if (rc != 0) {
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_INVALID_ARGUMENT, "bad request", NULL);
        s->dead = s->recv_done = true;
        return;
    }
    enqueue(s, bb_from(out, n));
}

static void session_recv(struct mgw_session *s, int ok)
{
    s->recv_armed = false;
    if (!ok || s->recv_bb == NULL) { /* half-close by the gateway, or the call failed */
        s->recv_done = true;
        if (!ok || grpc_call_failed_before_recv_message(s->call))
            s->dead = true;
        pthread_cond_signal(&s->cv);
        return;
    }
    if (s->reflection) {
        reflection_recv(s);
        grpc_byte_buffer_destroy(s->recv_bb);
        s->recv_bb = NULL;
        return;
    }
    Miltergw__V1__Event *ev =
        (Miltergw__V1__Event *)unpack(&miltergw__v1__event__descriptor, s->recv_bb);
    grpc_byte_buffer_destroy(s->recv_bb);
    s->recv_bb = NULL;
    if (ev == NULL) {
        fputs("mgw_filter: undecodable Event; ending the stream\n", stderr);
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_INVALID_ARGUMENT, "bad Event", NULL);
        s->dead = s->recv_done = true;
        pthread_cond_signal(&s->cv);
        return;
    }
    if (mgw_g.f->session_threads) {
        thread_queue(s, ev);
        return;
    }
    events_run(s, ev);
    protobuf_c_message_free_unpacked(&ev->base, NULL);
}

void mgw_session_tag(struct tag *t, int ok)
{
    struct mgw_session *s = t->owner;
    pthread_mutex_lock(&s->mu);
    s->outstanding--;
    switch (t->kind) {
    case TAG_RECV: session_recv(s, ok); break;
    case TAG_SEND:
        s->send_busy = false;
        grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        if (!ok)
            s->dead = true;
        break;
    case TAG_CLOSE:
        if (s->cancelled)
            s->dead = true;
        break;
    default: break; /* TAG_STATUS */
    }
    if (s->dead)
        pthread_cond_signal(&s->cv);
    bool done = pump(s);
    pthread_mutex_unlock(&s->mu);
    if (done)
        session_free(s); /* no batch left, no thread running: no other thread can hold s */
}

void mgw_session_new(grpc_call *call, bool reflection)
{
    struct mgw_session *s = xcalloc(1, sizeof *s);
    s->t_recv = (struct tag){TAG_RECV, s};
    s->t_send = (struct tag){TAG_SEND, s};
    s->t_close = (struct tag){TAG_CLOSE, s};
    s->t_status = (struct tag){TAG_STATUS, s};
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->call = call;
    s->answer = mgw_g.answer;
    s->reflection = reflection;
    if (mgw_g.f->state_size && !reflection)
        s->state = xcalloc(1, mgw_g.f->state_size);
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.live++;
    if (!reflection)
        mgw_g.sessions++;
    pthread_mutex_unlock(&mgw_g.mu);

    pthread_mutex_lock(&s->mu); /* completions may arrive on other workers at once */
    grpc_op op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    op.data.recv_close_on_server.cancelled = &s->cancelled;
    batch(s, &op, 1, &s->t_close);
    bool done = pump(s);
    pthread_mutex_unlock(&s->mu);
    if (done)
        session_free(s);
}
