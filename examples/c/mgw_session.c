/*
 * mgw_session.c - the streams of the mgw_filter.h library and the sessions they carry: a
 * Session stream from its first batch to its last; the events it receives go to on_event,
 * one by one per session, and the replies go back in order.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Streams. Each keeps one RECV_MESSAGE armed and at most one SEND_MESSAGE in flight (our
 * own flags: gRPC 1.51 can break a call on a refused batch), with later replies queued in
 * the order they were made. A stream's completions may come on any worker, so each stream
 * has a mutex. A stream is freed when its status was sent, its last batch completed
 * (completions of one call arrive in any order) and no session on it is still busy.
 *
 * Sessions (struct mgw_session: what on_event and on_close see). A per-connection stream
 * carries one, made with the stream and freed with it. Without session threads its
 * callback runs under the stream mutex, which is what serialises its events (the next
 * RECV_MESSAGE is armed only after the callback), and on_close runs when the stream is
 * freed.
 *
 * Session threads (mgw_filter.session_threads). The workers then only queue a session's
 * events; a thread per session, started at its first event, runs the callbacks outside the
 * stream mutex and takes it only to queue a reply and start sends. The thread calls
 * on_close once its session is over.
 *
 * Multiplexed streams (mgw_filter.multiplexed). A stream carries many sessions, told apart
 * by Event.session, each made at its first event and kept in the stream's table until it
 * is freed. Receiving only routes: under the stream mutex each event (each element of a
 * batch, which may mix sessions) is queued on its session, so the queue has the stream's
 * order, and the next RECV_MESSAGE is armed at once. Then either the session's thread
 * runs it, or, without session threads, the worker that queued it claims the session
 * (`running`) unless another worker already runs it, and runs its queue outside the mutex
 * until it is empty: one session's callbacks never run concurrently, and other workers
 * meanwhile run other sessions of the stream. A session ends at its SessionEnd, or when the
 * stream ends: after its queue (half-close, SessionEnd without reason) or dropping what it
 * did not run yet (a broken or cancelled stream, a SessionEnd with a reason: the gateway
 * ignores those answers). Whoever runs it then calls on_close and frees it. `busy` keeps
 * the stream (and its status) until every session is gone.
 *
 * Reflection streams run through the same pump, without sessions: mgw_std_services.c
 * answers each request. The server (mgw_filter.c) starts a stream with mgw_session_new()
 * and passes it its completions (mgw_session_tag()); mgw_g's counters tell the server when
 * the last stream is gone. What a callback reads and writes is in mgw_reply.c.
 */
#include <pthread.h>
#include <stdatomic.h>
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

/* An unpacked Event message, shared by the queued events it holds: the elements of one
 * batch may go to different sessions, and the last one run frees it. */
struct msg {
    Miltergw__V1__Event *ev;
    atomic_int refs;
};

/* An event waiting for its session's callback (session threads, multiplexed streams). */
struct evq {
    struct evq *next;
    struct msg *m;
    const Miltergw__V1__Event *ev; /* m->ev or one element of its batch */
};

struct stream {
    struct tag t_recv, t_send, t_close, t_status;
    pthread_mutex_t mu;
    grpc_call *call;
    grpc_byte_buffer *recv_bb, *send_bb;
    struct out *head, *tail; /* replies not sent yet */
    int cancelled;           /* RECV_CLOSE_ON_SERVER's answer */
    int outstanding;         /* batches started, not completed */
    bool md_sent, recv_armed, recv_done, send_busy, dead, status_started;
    bool reflection; /* a reflection stream, not a Session */
    bool finished;   /* pump() said "free it" once */
    bool mux;        /* multiplexed: sessions in tab, not one */
    unsigned long number;
    int busy; /* sessions not done: a started session thread (per-connection), or any
                 session not freed yet (multiplexed); the status waits for 0 */

    struct mgw_session *one;  /* per-connection stream: its session */
    struct mgw_session **tab; /* multiplexed: its sessions not freed yet */
    size_t n_tab, cap_tab;
};

struct mgw_session {
    struct stream *st;
    uint64_t key;    /* Event.session (0 on a per-connection stream) */
    unsigned answer; /* MGW_EVENT_BITs this session answers (SessionStart.effective) */
    char *id;
    void *state;
    struct evq *qh, *qt;          /* events not handled yet */
    bool ending;                  /* over: no more events; end after the queue */
    bool running;                 /* multiplexed, no session threads: a worker runs its queue */
    struct mgw_session *next_run; /* in a worker's list of claimed sessions */

    /* session_threads only. */
    pthread_cond_t cv; /* events queued, or the session is over */
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

unsigned long mgw_session_stream(const struct mgw_session *s)
{
    return s->st->number;
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

static bool batch(struct stream *st, const grpc_op *ops, size_t n, struct tag *t)
{
    grpc_call_error e = grpc_call_start_batch(st->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        /* A refused batch can leave the call unusable: end it. */
        fprintf(stderr, "mgw_filter: start_batch failed (%d); cancelling the stream\n", e);
        grpc_call_cancel(st->call, NULL);
        st->dead = true;
        return false;
    }
    st->outstanding++;
    return true;
}

static void drop_queue(struct stream *st)
{
    while (st->head) {
        struct out *o = st->head;
        st->head = o->next;
        grpc_byte_buffer_destroy(o->bb);
        free(o);
    }
    st->tail = NULL;
}

/* ---- queued events ----------------------------------------------------------------------- */

static void msg_unref(struct msg *m)
{
    if (atomic_fetch_sub(&m->refs, 1) == 1) {
        protobuf_c_message_free_unpacked(&m->ev->base, NULL);
        free(m);
    }
}

static void evq_release(struct evq *q)
{
    msg_unref(q->m);
    free(q);
}

/* Drops the session's events not handled yet (st->mu held, or no other thread left). */
static void evq_free(struct mgw_session *s)
{
    while (s->qh) {
        struct evq *q = s->qh;
        s->qh = q->next;
        evq_release(q);
    }
    s->qt = NULL;
}

static void evq_push(struct mgw_session *s, struct msg *m, const Miltergw__V1__Event *ev)
{
    struct evq *q = xcalloc(1, sizeof *q);
    atomic_fetch_add(&m->refs, 1);
    q->m = m;
    q->ev = ev;
    if (s->qt)
        s->qt->next = q;
    else
        s->qh = q;
    s->qt = q;
}

static struct evq *evq_pop(struct mgw_session *s)
{
    struct evq *q = s->qh;
    if (q) {
        s->qh = q->next;
        if (s->qh == NULL)
            s->qt = NULL;
    }
    return q;
}

/* ---- sessions and streams ---------------------------------------------------------------- */

static struct mgw_session *session_alloc(struct stream *st, uint64_t key)
{
    struct mgw_session *s = xcalloc(1, sizeof *s);
    s->st = st;
    s->key = key;
    s->answer = mgw_g.answer;
    pthread_cond_init(&s->cv, NULL);
    if (mgw_g.f->state_size)
        s->state = xcalloc(1, mgw_g.f->state_size);
    return s;
}

static void session_destroy(struct mgw_session *s)
{
    evq_free(s);
    pthread_cond_destroy(&s->cv);
    free(s->state);
    free(s->id);
    free(s);
}

/* A multiplexed stream's open session with this Event.session, or NULL (st->mu held). The
 * table is small (the gateway puts at most 128 sessions on a stream): a scan will do. */
static struct mgw_session *session_find(const struct stream *st, uint64_t key)
{
    for (size_t i = 0; i < st->n_tab; i++)
        if (st->tab[i]->key == key && !st->tab[i]->ending)
            return st->tab[i];
    return NULL;
}

/* A new session on a multiplexed stream (st->mu held). */
static struct mgw_session *session_open(struct stream *st, uint64_t key)
{
    if (st->n_tab == st->cap_tab) {
        st->cap_tab = st->cap_tab ? 2 * st->cap_tab : 8;
        struct mgw_session **t = realloc(st->tab, st->cap_tab * sizeof *t);
        if (t == NULL) {
            fputs("mgw_filter: out of memory\n", stderr);
            abort();
        }
        st->tab = t;
    }
    struct mgw_session *s = session_alloc(st, key);
    st->tab[st->n_tab++] = s;
    st->busy++;
    return s;
}

/* Takes a multiplexed session out of its stream's table once it is over (st->mu held). */
static void session_remove(struct stream *st, struct mgw_session *s)
{
    for (size_t i = 0; i < st->n_tab; i++)
        if (st->tab[i] == s) {
            st->tab[i] = st->tab[--st->n_tab];
            st->busy--;
            return;
        }
}

static void stream_free(struct stream *st)
{
    if (st->one) {
        /* With a session thread, that thread already called on_close. */
        if (mgw_g.f->on_close && !st->one->thr_started)
            mgw_g.f->on_close(st->one);
        session_destroy(st->one);
    }
    free(st->tab); /* empty: busy was 0 */
    drop_queue(st);
    if (st->recv_bb)
        grpc_byte_buffer_destroy(st->recv_bb);
    grpc_call_unref(st->call);
    pthread_mutex_destroy(&st->mu);
    bool counted = !st->reflection;
    free(st);
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.live--;
    if (counted) {
        mgw_g.sessions--;
        pthread_cond_broadcast(&mgw_g.cv);
    }
    pthread_mutex_unlock(&mgw_g.mu);
}

/* Starts what can start now; true (once) when the stream is over and must be freed. */
static bool pump(struct stream *st)
{
    if (!st->recv_armed && !st->recv_done && !st->dead) {
        grpc_op ops[2] = {{.op = GRPC_OP_SEND_INITIAL_METADATA}, {.op = GRPC_OP_RECV_MESSAGE}};
        ops[1].data.recv_message.recv_message = &st->recv_bb;
        bool first = !st->md_sent;
        st->md_sent = st->recv_armed = batch(st, first ? ops : ops + 1, first ? 2 : 1, &st->t_recv);
    }
    if (!st->send_busy && st->head && !st->dead) {
        struct out *o = st->head;
        st->head = o->next;
        if (st->head == NULL)
            st->tail = NULL;
        st->send_bb = o->bb;
        free(o);
        grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
        op.data.send_message.send_message = st->send_bb;
        st->send_busy = batch(st, &op, 1, &st->t_send);
        if (!st->send_busy) {
            grpc_byte_buffer_destroy(st->send_bb);
            st->send_bb = NULL;
        }
    }
    if (st->dead)
        drop_queue(st); /* nothing queued will ever go out */
    if ((st->recv_done || st->dead) && !st->head && !st->send_busy && !st->status_started &&
        st->busy == 0) {
        grpc_op op = {.op = GRPC_OP_SEND_STATUS_FROM_SERVER};
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        st->status_started = true; /* even if refused: then only the other batches remain */
        batch(st, &op, 1, &st->t_status);
    }
    if (st->status_started && st->outstanding == 0 && st->busy == 0 && !st->finished) {
        st->finished = true;
        return true;
    }
    return false;
}

/* Queues a reply for sending (st->mu held). */
static void enqueue(struct stream *st, grpc_byte_buffer *bb)
{
    struct out *o = xcalloc(1, sizeof *o);
    o->bb = bb;
    if (st->tail)
        st->tail->next = o;
    else
        st->head = o;
    st->tail = o;
}

/* ---- callbacks --------------------------------------------------------------------------- */

/* Runs on_event for one event and queues its reply. With session threads or on a
 * multiplexed stream it runs without st->mu and takes it to queue; otherwise st->mu is
 * held. */
static void session_event(struct mgw_session *s, const Miltergw__V1__Event *ev)
{
    struct stream *st = s->st;
    bool unlocked = mgw_g.f->session_threads || st->mux;
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
    r.msg.session = s->key; /* 0, not sent, on a per-connection stream */
    r.msg.verdict = MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
    s->cur_id = ev->event_id;
    s->cur_answered = answered;
    s->in_event = true;
    mgw_g.f->on_event(s, ev, &r);
    s->in_event = false;
    if (answered) {
        grpc_byte_buffer *bb = pack(&r.msg.base);
        if (unlocked)
            pthread_mutex_lock(&st->mu);
        enqueue(st, bb);
        if (unlocked) {
            pump(st); /* cannot be the end: this session is still busy */
            pthread_mutex_unlock(&st->mu);
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
    r.session = s->key;
    r.verdict = MILTERGW__V1__VERDICT__VERDICT_PROGRESS;
    grpc_byte_buffer *bb = pack(&r.base);
    pthread_mutex_lock(&s->st->mu);
    enqueue(s->st, bb);
    pump(s->st);
    pthread_mutex_unlock(&s->st->mu);
    return 0;
}

/* A session's thread: its callbacks, in order, until it is over; then on_close. */
static void *session_thread(void *arg)
{
    struct mgw_session *s = arg;
    struct stream *st = s->st;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (s->qh == NULL && !s->ending && !st->dead)
            pthread_cond_wait(&s->cv, &st->mu);
        if (st->dead || s->qh == NULL)
            break;
        struct evq *q = evq_pop(s);
        pthread_mutex_unlock(&st->mu);
        events_run(s, q->ev);
        evq_release(q);
        pthread_mutex_lock(&st->mu);
    }
    evq_free(s); /* a dead stream's unhandled events */
    pthread_mutex_unlock(&st->mu);
    if (mgw_g.f->on_close)
        mgw_g.f->on_close(s);
    /* Once busy drops and the mutex is released, another worker may free the stream (and
     * a per-connection stream's session): after the unlock only `mux`, `done` and, if mux,
     * s (out of the table, reachable by no one) may be used. */
    bool mux = st->mux;
    pthread_mutex_lock(&st->mu);
    s->thr_done = true;
    if (mux)
        session_remove(st, s);
    else
        st->busy--; /* the stream frees its one session */
    bool done = pump(st);
    pthread_mutex_unlock(&st->mu);
    if (mux)
        session_destroy(s); /* after the unlock: the cv is not in use any more */
    if (done)
        stream_free(st);
    return NULL;
}

/* Starts the session's thread (st->mu held). */
static void thread_start(struct mgw_session *s)
{
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
    if (!s->st->mux)
        s->st->busy++; /* a multiplexed session counts from its making */
}

/* Something to do for the session (st->mu held): wake or start its thread, or, on a
 * multiplexed stream without session threads, claim it for this worker (*run) unless a
 * worker already runs it. */
static void session_wake(struct mgw_session *s, struct mgw_session **run)
{
    if (mgw_g.f->session_threads) {
        if (s->thr_started)
            pthread_cond_signal(&s->cv);
        else if (s->qh)
            thread_start(s);
    } else if (s->st->mux && !s->running) {
        s->running = true;
        s->next_run = *run;
        *run = s;
    }
}

/* The session is over (st->mu held): it takes no more events; `drop`: nor does it run
 * those still queued. */
static void session_over(struct mgw_session *s, bool drop, struct mgw_session **run)
{
    if (s->ending && !(drop && s->qh))
        return;
    if (drop)
        evq_free(s);
    s->ending = true;
    session_wake(s, run);
}

/* When the stream is over, so is every session on it (st->mu held). */
static void stream_over(struct stream *st, struct mgw_session **run)
{
    if (!st->recv_done && !st->dead)
        return;
    if (st->one)
        session_over(st->one, st->dead, run);
    for (size_t i = 0; i < st->n_tab; i++)
        session_over(st->tab[i], st->dead, run);
}

/* Runs the sessions claimed by this worker (session_wake), each until its queue is empty,
 * and ends those that are over. */
static void run_claimed(struct mgw_session *run)
{
    struct mgw_session *rev = NULL;
    while (run) { /* claimed newest first: run them in the order their events came */
        struct mgw_session *s = run;
        run = s->next_run;
        s->next_run = rev;
        rev = s;
    }
    run = rev;
    while (run) {
        struct mgw_session *s = run;
        struct stream *st = s->st;
        run = s->next_run;
        pthread_mutex_lock(&st->mu);
        for (struct evq *q; (q = evq_pop(s)) != NULL;) {
            pthread_mutex_unlock(&st->mu);
            events_run(s, q->ev);
            evq_release(q);
            pthread_mutex_lock(&st->mu);
        }
        if (!s->ending) {
            s->running = false; /* its next event claims it again */
            pthread_mutex_unlock(&st->mu);
            continue;
        }
        /* Over, and still `running`: no other worker claims it again. */
        pthread_mutex_unlock(&st->mu);
        if (mgw_g.f->on_close)
            mgw_g.f->on_close(s);
        pthread_mutex_lock(&st->mu);
        session_remove(st, s);
        bool done = pump(st);
        pthread_mutex_unlock(&st->mu);
        session_destroy(s);
        if (done)
            stream_free(st);
    }
}

/* Hands an event to a per-connection stream's session thread (st->mu held). */
static void thread_queue(struct mgw_session *s, Miltergw__V1__Event *ev)
{
    struct msg *m = xcalloc(1, sizeof *m);
    m->ev = ev;
    atomic_init(&m->refs, 0);
    evq_push(s, m, ev);
    session_wake(s, NULL);
}

/* One event of a multiplexed stream to its session's queue (st->mu held). */
static void mux_route(struct stream *st, struct msg *m, const Miltergw__V1__Event *ev,
                      struct mgw_session **run)
{
    struct mgw_session *s = session_find(st, ev->session);
    if (ev->event_case == MILTERGW__V1__EVENT__EVENT_END) {
        /* A reason means the gateway gave up on the session: it ignores any answer now. */
        if (s)
            session_over(s, ev->end && ev->end->reason && ev->end->reason[0], run);
        return;
    }
    /* A session begins with its SessionStart; a gateway that does not multiplex sends
     * Event.session 0 throughout, and the stream is then that one session. */
    if (s == NULL)
        s = session_open(st, ev->session);
    evq_push(s, m, ev);
    session_wake(s, run);
}

/* ---- receiving --------------------------------------------------------------------------- */

/* A reflection request: one response each, in order. */
static void reflection_recv(struct stream *st)
{
    grpc_slice in = bb_bytes(st->recv_bb);
    uint8_t *out;
    size_t n;
    int rc = mgw_reflection_answer(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in), &out, &n);
    grpc_slice_unref(in);
    if (rc != 0) {
        grpc_call_cancel_with_status(st->call, GRPC_STATUS_INVALID_ARGUMENT, "bad request", NULL);
        st->dead = st->recv_done = true;
        return;
    }
    enqueue(st, bb_from(out, n));
}

static void session_recv(struct stream *st, int ok, struct mgw_session **run)
{
    st->recv_armed = false;
    if (!ok || st->recv_bb == NULL) { /* half-close by the gateway, or the call failed */
        st->recv_done = true;
        if (!ok || grpc_call_failed_before_recv_message(st->call))
            st->dead = true;
        return; /* stream_over() ends the sessions */
    }
    if (st->reflection) {
        reflection_recv(st);
        grpc_byte_buffer_destroy(st->recv_bb);
        st->recv_bb = NULL;
        return;
    }
    Miltergw__V1__Event *ev =
        (Miltergw__V1__Event *)unpack(&miltergw__v1__event__descriptor, st->recv_bb);
    grpc_byte_buffer_destroy(st->recv_bb);
    st->recv_bb = NULL;
    if (ev == NULL) {
        fputs("mgw_filter: undecodable Event; ending the stream\n", stderr);
        grpc_call_cancel_with_status(st->call, GRPC_STATUS_INVALID_ARGUMENT, "bad Event", NULL);
        st->dead = st->recv_done = true;
        return;
    }
    if (st->mux) {
        struct msg *m = xcalloc(1, sizeof *m);
        m->ev = ev;
        atomic_init(&m->refs, 1); /* held while routing: an element may be run at once */
        if (ev->event_case == MILTERGW__V1__EVENT__EVENT_BATCH)
            for (size_t i = 0; i < ev->batch->n_events; i++)
                mux_route(st, m, ev->batch->events[i], run);
        else
            mux_route(st, m, ev, run);
        msg_unref(m);
        return;
    }
    if (mgw_g.f->session_threads) {
        thread_queue(st->one, ev);
        return;
    }
    events_run(st->one, ev);
    protobuf_c_message_free_unpacked(&ev->base, NULL);
}

void mgw_session_tag(struct tag *t, int ok)
{
    struct stream *st = t->owner;
    struct mgw_session *run = NULL;
    pthread_mutex_lock(&st->mu);
    st->outstanding--;
    switch (t->kind) {
    case TAG_RECV: session_recv(st, ok, &run); break;
    case TAG_SEND:
        st->send_busy = false;
        grpc_byte_buffer_destroy(st->send_bb);
        st->send_bb = NULL;
        if (!ok)
            st->dead = true;
        break;
    case TAG_CLOSE:
        if (st->cancelled)
            st->dead = true;
        break;
    default: break; /* TAG_STATUS */
    }
    stream_over(st, &run);
    bool done = pump(st);
    pthread_mutex_unlock(&st->mu);
    if (done)
        stream_free(st); /* no batch left, no session busy: no other thread can hold st */
    else
        run_claimed(run); /* empty when done: a claimed session keeps the stream busy */
}

void mgw_session_new(grpc_call *call, bool reflection)
{
    static unsigned long streams;
    struct stream *st = xcalloc(1, sizeof *st);
    st->t_recv = (struct tag){TAG_RECV, st};
    st->t_send = (struct tag){TAG_SEND, st};
    st->t_close = (struct tag){TAG_CLOSE, st};
    st->t_status = (struct tag){TAG_STATUS, st};
    pthread_mutex_init(&st->mu, NULL);
    st->call = call;
    st->reflection = reflection;
    st->mux = mgw_g.f->multiplexed && !reflection;
    if (!reflection && !st->mux)
        st->one = session_alloc(st, 0);
    pthread_mutex_lock(&mgw_g.mu);
    st->number = ++streams;
    mgw_g.live++;
    if (!reflection)
        mgw_g.sessions++;
    pthread_mutex_unlock(&mgw_g.mu);

    pthread_mutex_lock(&st->mu); /* completions may arrive on other workers at once */
    grpc_op op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    op.data.recv_close_on_server.cancelled = &st->cancelled;
    batch(st, &op, 1, &st->t_close);
    bool done = pump(st);
    pthread_mutex_unlock(&st->mu);
    if (done)
        stream_free(st);
}
