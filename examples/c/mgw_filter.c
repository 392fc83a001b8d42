/*
 * mgw_filter.c - the gRPC core server behind mgw_filter.h: setup, workers, new calls, the
 * unary answers, health, the drain and shutdown.
 * SPDX-License-Identifier: Apache-2.0
 *
 * One completion queue, served by `threads` workers that loop in
 * grpc_completion_queue_next(). Every new-call request, batch and server shutdown has a tag
 * naming what it is and whose. The calling thread of mgw_filter_run() only waits for
 * SIGTERM/SIGINT (blocked before grpc_init(), so gRPC's own threads inherit the mask).
 *
 * Calls. Session, Describe and a catch-all are requested N_REQ_* at a time and requested
 * again as each arrives. The catch-all answers UNIMPLEMENTED: the core API would otherwise
 * leave an unknown method hanging until the client's deadline.
 *
 * Sessions. A Session call becomes a stream of mgw_session.c, which gets the completions of
 * its batches (TAG_RECV..TAG_STATUS); the events and replies its callbacks see are in
 * mgw_reply.c. mgw_filter_int.h holds what the three files share.
 *
 * Standard services. Health/Check is answered like Describe; reflection is a stream like
 * Session (same pump, in mgw_session.c), whose events are answered by mgw_std_services.c.
 *
 * Shutdown. The signal (or mgw_filter_stop) first starts the drain: health says
 * NOT_SERVING and new Session calls are refused, for up to drain_seconds while sessions
 * remain. Then the waiting thread calls grpc_server_shutdown_and_notify() and
 * grpc_server_cancel_all_calls(). Cancelled sessions wind down through the normal paths;
 * when the shutdown tag has arrived and no session, unary answer or new-call request is
 * left, the queue is shut down, the workers see GRPC_QUEUE_SHUTDOWN and everything is freed.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "mgw_filter.h"
#include "mgw_filter_int.h"
#include "mgw_std_services.h"

#define MAX_THREADS 64

struct unary {
    struct tag tag;
    grpc_call *call;
    grpc_byte_buffer *bb;
    int cancelled;
};

/* A health Watch stream: the status at once, and again when the drain begins (a gateway
 * balancing over several filters then sends this one no new session). Guarded by mgw_g.mu. */
struct watch {
    struct tag t_send, t_close;
    grpc_call *call;
    grpc_byte_buffer *send_bb; /* the send in flight */
    uint8_t *request;          /* the HealthCheckRequest, for each answer */
    size_t request_len;
    int cancelled, outstanding;
    bool metadata_sent, closed, sent_serving, sent_any;
    struct watch *next;
};

struct server mgw_g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void counters_add(int *counter, int delta)
{
    pthread_mutex_lock(&mgw_g.mu);
    *counter += delta;
    pthread_mutex_unlock(&mgw_g.mu);
}

/* ---- unary answers and new calls --------------------------------------------------------- */

static void unary_answer(grpc_call *call, grpc_byte_buffer *bb, grpc_status_code status,
                         const char *details_text)
{
    struct unary *u = xcalloc(1, sizeof *u);
    grpc_slice details = grpc_slice_from_static_string(details_text);
    grpc_op ops[4] = {{.op = GRPC_OP_SEND_INITIAL_METADATA}};
    size_t n = 1;
    u->tag = (struct tag){TAG_UNARY, u};
    u->call = call;
    u->bb = bb;
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = status;
    ops[n++].data.send_status_from_server.status_details = &details;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &u->cancelled;
    counters_add(&mgw_g.live, 1);
    if (grpc_call_start_batch(call, ops, n, &u->tag, NULL) != GRPC_CALL_OK) {
        fputs("mgw_filter: cannot answer a unary call\n", stderr);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        grpc_call_unref(call);
        free(u);
        counters_add(&mgw_g.live, -1);
    }
}

static void unary_done(struct unary *u)
{
    if (u->bb)
        grpc_byte_buffer_destroy(u->bb);
    grpc_call_unref(u->call);
    free(u);
    counters_add(&mgw_g.live, -1);
}

static void *request_method(enum tag_kind k)
{
    switch (k) {
    case TAG_NEW_SESSION: return mgw_g.m_session;
    case TAG_NEW_DESCRIBE: return mgw_g.m_describe;
    case TAG_NEW_HEALTH: return mgw_g.m_health;
    case TAG_NEW_WATCH: return mgw_g.m_watch;
    case TAG_NEW_REFL_A: return mgw_g.m_refl_a;
    default: return mgw_g.m_refl_1;
    }
}

static void request_post(struct request *r)
{
    grpc_call_error e;
    pthread_mutex_lock(&mgw_g.mu);
    if (mgw_g.stopping) { /* after shutdown began: do not ask for more calls */
        pthread_mutex_unlock(&mgw_g.mu);
        return;
    }
    mgw_g.pending++; /* before posting: the completion may arrive on another worker at once */
    pthread_mutex_unlock(&mgw_g.mu);
    r->call = NULL;
    r->payload = NULL;
    grpc_metadata_array_init(&r->md);
    if (r->tag.kind == TAG_NEW_OTHER) {
        grpc_call_details_init(&r->details);
        e = grpc_server_request_call(mgw_g.server, &r->call, &r->details, &r->md, mgw_g.cq,
                                     mgw_g.cq, &r->tag);
    } else {
        bool unary = r->tag.kind == TAG_NEW_DESCRIBE || r->tag.kind == TAG_NEW_HEALTH ||
                     r->tag.kind == TAG_NEW_WATCH;
        e = grpc_server_request_registered_call(mgw_g.server, request_method(r->tag.kind), &r->call,
                                                &r->deadline, &r->md, unary ? &r->payload : NULL,
                                                mgw_g.cq, mgw_g.cq, &r->tag);
    }
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "mgw_filter: request_call failed: %d\n", e);
        grpc_metadata_array_destroy(&r->md);
        if (r->tag.kind == TAG_NEW_OTHER)
            grpc_call_details_destroy(&r->details);
        counters_add(&mgw_g.pending, -1);
    }
}

static bool is_draining(void)
{
    pthread_mutex_lock(&mgw_g.mu);
    bool d = mgw_g.draining;
    pthread_mutex_unlock(&mgw_g.mu);
    return d;
}

static void health_check(grpc_call *call, grpc_byte_buffer *payload)
{
    grpc_slice in = payload ? bb_bytes(payload) : grpc_empty_slice();
    uint8_t *out;
    size_t n;
    int rc = mgw_health_answer(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in), !is_draining(),
                               &out, &n);
    grpc_slice_unref(in);
    if (rc == 0)
        unary_answer(call, bb_from(out, n), GRPC_STATUS_OK, "");
    else
        unary_answer(call, NULL, GRPC_STATUS_NOT_FOUND, "unknown service");
}

/* Send the current status if it changed (mgw_g.mu held). */
static void watch_send(struct watch *w)
{
    bool serving = !mgw_g.draining;
    grpc_op ops[2];
    size_t n = 0;
    uint8_t *out;
    size_t len;

    if (w->send_bb != NULL || w->closed || (w->sent_any && w->sent_serving == serving))
        return;
    if (mgw_health_answer(w->request, w->request_len, serving, &out, &len) != 0)
        return;
    memset(ops, 0, sizeof ops);
    if (!w->metadata_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        w->metadata_sent = true;
    }
    w->send_bb = bb_from(out, len);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = w->send_bb;
    if (grpc_call_start_batch(w->call, ops, n, &w->t_send, NULL) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(w->send_bb);
        w->send_bb = NULL;
        return;
    }
    w->sent_serving = serving;
    w->sent_any = true;
    w->outstanding++;
}

static void watch_new(grpc_call *call, grpc_byte_buffer *payload)
{
    grpc_slice in = payload ? bb_bytes(payload) : grpc_empty_slice();
    struct watch *w = xcalloc(1, sizeof *w);
    grpc_op op;
    uint8_t *probe;
    size_t n;

    if (mgw_health_answer(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in), true, &probe, &n) != 0) {
        grpc_slice_unref(in);
        free(w);
        unary_answer(call, NULL, GRPC_STATUS_NOT_FOUND, "unknown service");
        return;
    }
    free(probe);
    w->request_len = GRPC_SLICE_LENGTH(in);
    w->request = xcalloc(1, w->request_len + 1);
    memcpy(w->request, GRPC_SLICE_START_PTR(in), w->request_len);
    grpc_slice_unref(in);
    w->t_send = (struct tag){.kind = TAG_WATCH_SEND, .owner = w};
    w->t_close = (struct tag){.kind = TAG_WATCH_CLOSE, .owner = w};
    w->call = call;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &w->cancelled;
    counters_add(&mgw_g.live, 1);
    pthread_mutex_lock(&mgw_g.mu);
    if (grpc_call_start_batch(call, &op, 1, &w->t_close, NULL) != GRPC_CALL_OK) {
        pthread_mutex_unlock(&mgw_g.mu);
        grpc_call_unref(call);
        free(w->request);
        free(w);
        counters_add(&mgw_g.live, -1);
        return;
    }
    w->outstanding = 1;
    w->next = mgw_g.watches;
    mgw_g.watches = w;
    watch_send(w);
    pthread_mutex_unlock(&mgw_g.mu);
}

static void watch_tag(struct tag *t, int ok)
{
    struct watch *w = t->owner, **pp;

    pthread_mutex_lock(&mgw_g.mu);
    w->outstanding--;
    if (t->kind == TAG_WATCH_SEND) {
        grpc_byte_buffer_destroy(w->send_bb);
        w->send_bb = NULL;
        if (ok)
            watch_send(w); /* the drain may have begun meanwhile */
        else
            w->closed = true;
    } else {
        w->closed = true;
    }
    if (w->outstanding > 0) {
        pthread_mutex_unlock(&mgw_g.mu);
        return;
    }
    for (pp = &mgw_g.watches; *pp != w; pp = &(*pp)->next)
        ;
    *pp = w->next;
    pthread_mutex_unlock(&mgw_g.mu);
    grpc_call_unref(w->call);
    free(w->request);
    free(w);
    counters_add(&mgw_g.live, -1);
}

static void request_done(struct request *r, int ok)
{
    grpc_metadata_array_destroy(&r->md); /* no metadata is read */
    if (r->tag.kind == TAG_NEW_OTHER)
        grpc_call_details_destroy(&r->details);
    if (ok) {
        switch (r->tag.kind) {
        case TAG_NEW_SESSION:
            if (is_draining())
                unary_answer(r->call, NULL, GRPC_STATUS_UNAVAILABLE, "filter is stopping");
            else
                mgw_session_new(r->call, false);
            break;
        case TAG_NEW_DESCRIBE: /* the DescribeRequest is informational */
            unary_answer(r->call, pack(&mgw_g.desc.base), GRPC_STATUS_OK, "");
            break;
        case TAG_NEW_HEALTH: health_check(r->call, r->payload); break;
        case TAG_NEW_WATCH: watch_new(r->call, r->payload); break;
        case TAG_NEW_REFL_A:
        case TAG_NEW_REFL_1: mgw_session_new(r->call, true); break;
        default: unary_answer(r->call, NULL, GRPC_STATUS_UNIMPLEMENTED, "unknown method"); break;
        }
    }
    if (r->payload)
        grpc_byte_buffer_destroy(r->payload);
    r->payload = NULL;
    if (ok)
        request_post(r);
    counters_add(&mgw_g.pending, -1);
}

/* ---- workers, signals, setup ------------------------------------------------------------- */

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        grpc_event e =
            grpc_completion_queue_next(mgw_g.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (e.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        if (e.type != GRPC_OP_COMPLETE)
            continue;
        struct tag *t = e.tag;
        switch (t->kind) {
        case TAG_NEW_SESSION:
        case TAG_NEW_DESCRIBE:
        case TAG_NEW_OTHER:
        case TAG_NEW_HEALTH:
        case TAG_NEW_WATCH:
        case TAG_NEW_REFL_A:
        case TAG_NEW_REFL_1: request_done(t->owner, e.success); break;
        case TAG_WATCH_SEND:
        case TAG_WATCH_CLOSE: watch_tag(t, e.success); break;
        case TAG_UNARY: unary_done(t->owner); break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&mgw_g.mu);
            mgw_g.shutdown_seen = true;
            pthread_mutex_unlock(&mgw_g.mu);
            break;
        default: mgw_session_tag(t, e.success); break;
        }
        /* Once nothing can produce a completion any more, let every worker return. */
        pthread_mutex_lock(&mgw_g.mu);
        bool last = mgw_g.shutdown_seen && !mgw_g.cq_shut && mgw_g.live == 0 && mgw_g.pending == 0;
        if (last)
            mgw_g.cq_shut = true;
        pthread_mutex_unlock(&mgw_g.mu);
        if (last)
            grpc_completion_queue_shutdown(mgw_g.cq);
    }
}

static void describe_build(const struct mgw_filter *f)
{
    Miltergw__V1__Description *d = &mgw_g.desc;
    *d = (Miltergw__V1__Description)MILTERGW__V1__DESCRIPTION__INIT;
    d->name = (char *)(f->name ? f->name : "");
    d->version = (char *)(f->version ? f->version : "");
    d->events = mgw_g.events;
    d->observe_only = mgw_g.observe;
    for (int t = MGW_CONNECT; t <= MGW_UNKNOWN; t++) {
        if (f->events & MGW_EVENT_BIT(t))
            mgw_g.events[d->n_events++] = (Miltergw__V1__EventType)t;
        if (f->events & f->observe_only & MGW_EVENT_BIT(t))
            mgw_g.observe[d->n_observe_only++] = (Miltergw__V1__EventType)t;
    }
    if (d->n_events == 0) /* a list holding only UNSPECIFIED means "none" */
        mgw_g.events[d->n_events++] = MILTERGW__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    d->actions = mgw_g.actions;
    for (unsigned a = 1; a < 32; a++)
        if (f->actions & (1u << a))
            mgw_g.actions[d->n_actions++] = (Miltergw__V1__Action)a;
    d->macros = mgw_g.macro_ptrs;
    for (int t = MGW_CONNECT; t <= MGW_UNKNOWN; t++) {
        if (f->macros[t] == NULL)
            continue;
        Miltergw__V1__MacroRequest *m = &mgw_g.macro_req[t];
        *m = (Miltergw__V1__MacroRequest)MILTERGW__V1__MACRO_REQUEST__INIT;
        m->stage = (Miltergw__V1__EventType)t;
        /* names point into a copy split at spaces; n names need at most len/2+1 slots */
        mgw_g.macro_copy[t] = xstrdup(f->macros[t]);
        m->names = xcalloc(strlen(f->macros[t]) / 2 + 1, sizeof *m->names);
        char *save = NULL;
        for (char *w = strtok_r(mgw_g.macro_copy[t], " ", &save); w; w = strtok_r(NULL, " ", &save))
            m->names[m->n_names++] = w;
        mgw_g.macro_ptrs[d->n_macros++] = m;
    }
    d->rejected_recipients = f->rejected_recipients;
    d->batches = true; /* this library takes EventBatch (session_recv); replies go one by one */
    d->header_leading_space = f->header_leading_space;
    d->multiplexed = f->multiplexed; /* mgw_session.c keeps a session per Event.session */
    mgw_g.answer = mgw_answer_mask(mgw_g.events, d->n_events, mgw_g.observe, d->n_observe_only);
}

static void describe_free(void)
{
    for (int t = 0; t <= MGW_UNKNOWN; t++) {
        free(mgw_g.macro_copy[t]);
        free(mgw_g.macro_req[t].names);
    }
}

/* Stop, first part: health says NOT_SERVING, no new sessions, and the open ones get up to
 * `seconds` to end on their own. */
static void drain(unsigned seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.draining = true;
    for (struct watch *w = mgw_g.watches; w != NULL; w = w->next)
        watch_send(w); /* NOT_SERVING to every watcher */
    while (seconds && mgw_g.sessions > 0)
        if (pthread_cond_timedwait(&mgw_g.cv, &mgw_g.mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&mgw_g.mu);
}

void mgw_filter_stop(void)
{
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.stop_requested = true;
    if (mgw_g.running && !mgw_g.draining)
        pthread_kill(mgw_g.main_thread, SIGTERM); /* blocked everywhere: sigwait takes it */
    pthread_mutex_unlock(&mgw_g.mu);
}

int mgw_filter_run(const struct mgw_filter *f)
{
    pthread_t threads[MAX_THREADS];
    unsigned n_threads = f->threads == 0 ? 1 : f->threads > MAX_THREADS ? MAX_THREADS : f->threads;
    const char *listen = f->listen ? f->listen : "127.0.0.1:50051";
    sigset_t sigs;
    int sig, rc = 0;

    mgw_g.f = f;
    describe_build(f);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* before grpc_init: its threads inherit it */

    grpc_init();
    grpc_arg args[] = {
        /* Accept the gateway's keepalive pings (the default minimum interval is 5 min). */
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
         .value.integer = 1000},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_MAX_PING_STRIKES, .value.integer = 0},
        /* gRPC sets SO_REUSEPORT by default: a second filter on a busy port would start
         * and silently share it. Fail instead. */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof args[0], .args = args};
    mgw_g.server = grpc_server_create(&chargs, NULL);
    mgw_g.m_session = grpc_server_register_method(mgw_g.server, "/miltergw.v1.Filter/Session", NULL,
                                                  GRPC_SRM_PAYLOAD_NONE, 0);
    mgw_g.m_describe =
        grpc_server_register_method(mgw_g.server, "/miltergw.v1.Filter/Describe", NULL,
                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    mgw_g.m_health = grpc_server_register_method(mgw_g.server, MGW_HEALTH_CHECK, NULL,
                                                 GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    mgw_g.m_watch = grpc_server_register_method(mgw_g.server, MGW_HEALTH_WATCH, NULL,
                                                GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    mgw_g.m_refl_a = grpc_server_register_method(mgw_g.server, MGW_REFLECTION_V1A, NULL,
                                                 GRPC_SRM_PAYLOAD_NONE, 0);
    mgw_g.m_refl_1 = grpc_server_register_method(mgw_g.server, MGW_REFLECTION_V1, NULL,
                                                 GRPC_SRM_PAYLOAD_NONE, 0);
    mgw_g.cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(mgw_g.server, mgw_g.cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(mgw_g.server, listen, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        fprintf(stderr, "mgw_filter: cannot listen on %s\n", listen);
        grpc_server_destroy(mgw_g.server); /* never started: nothing to wait for */
        rc = 1;
        goto out;
    }
    grpc_server_start(mgw_g.server);
    for (size_t i = 0; i < N_REQ; i++) {
        struct request *r = &mgw_g.reqs[i];
        r->tag.owner = r;
        size_t k = i;
        static const struct {
            size_t n;
            enum tag_kind kind;
        } kinds[] = {{N_REQ_SESSION, TAG_NEW_SESSION}, {N_REQ_DESCRIBE, TAG_NEW_DESCRIBE},
                     {N_REQ_HEALTH, TAG_NEW_HEALTH},   {N_REQ_HEALTH, TAG_NEW_WATCH},
                     {N_REQ_REFL, TAG_NEW_REFL_A},
                     {N_REQ_REFL, TAG_NEW_REFL_1},     {N_REQ_OTHER, TAG_NEW_OTHER}};
        size_t j = 0;
        while (k >= kinds[j].n)
            k -= kinds[j++].n;
        r->tag.kind = kinds[j].kind;
        request_post(r);
    }
    mgw_g.shutdown_tag.kind = TAG_SHUTDOWN;
    if (f->print_port) {
        printf("port=%d\n", strncmp(listen, "unix:", 5) == 0 ? 0 : port);
        fflush(stdout);
    }
    for (unsigned i = 0; i < n_threads; i++)
        if (pthread_create(&threads[i], NULL, worker, NULL) != 0) {
            fputs("mgw_filter: cannot start a worker thread\n", stderr);
            abort();
        }

    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.main_thread = pthread_self();
    mgw_g.running = true;
    bool stop_now = mgw_g.stop_requested;
    pthread_mutex_unlock(&mgw_g.mu);
    while (!stop_now && sigwait(&sigs, &sig) != 0)
        ;
    drain(f->drain_seconds);
    pthread_mutex_lock(&mgw_g.mu);
    mgw_g.stopping = true;
    mgw_g.running = false;
    pthread_mutex_unlock(&mgw_g.mu);
    grpc_server_shutdown_and_notify(mgw_g.server, mgw_g.cq, &mgw_g.shutdown_tag);
    grpc_server_cancel_all_calls(mgw_g.server);
    for (unsigned i = 0; i < n_threads; i++)
        pthread_join(threads[i], NULL);
    grpc_server_destroy(mgw_g.server);
out:
    if (rc != 0) { /* no worker ran: drain the queue here */
        grpc_completion_queue_shutdown(mgw_g.cq);
        while (
            grpc_completion_queue_next(mgw_g.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
            GRPC_QUEUE_SHUTDOWN)
            ;
    }
    grpc_completion_queue_destroy(mgw_g.cq);
    grpc_shutdown_blocking();
    describe_free();
    return rc;
}
