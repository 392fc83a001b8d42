/*
 * mgw_filter.c - the gRPC core server behind mgw_filter.h.
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
 * Standard services. Health/Check is answered like Describe; reflection is a stream like
 * Session (same pump), whose events are answered by mgw_std_services.c.
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
#include "mgw_std_services.h"

#define N_REQ_SESSION  16
#define N_REQ_DESCRIBE 4
#define N_REQ_OTHER    2
#define N_REQ_HEALTH   2 /* each of Check and Watch */
#define N_REQ_REFL     2 /* per reflection version */
#define N_REQ \
    (N_REQ_SESSION + N_REQ_DESCRIBE + N_REQ_OTHER + 2 * N_REQ_HEALTH + 2 * N_REQ_REFL)
#define MAX_LINES      32 /* SMTP reply lines, the proto's limit */
#define MAX_THREADS    64

enum tag_kind {
    TAG_NEW_SESSION, /* request_registered_call(Session) */
    TAG_NEW_DESCRIBE,
    TAG_NEW_OTHER, /* request_call: any other method */
    TAG_NEW_HEALTH,
    TAG_NEW_WATCH,  /* health Watch */
    TAG_NEW_REFL_A, /* reflection v1alpha */
    TAG_NEW_REFL_1, /* reflection v1 */
    TAG_UNARY,      /* the one batch answering Describe or UNIMPLEMENTED */
    TAG_RECV,       /* session: {[SEND_INITIAL_METADATA,] RECV_MESSAGE} */
    TAG_SEND,       /* session: {SEND_MESSAGE} */
    TAG_CLOSE,      /* session: {RECV_CLOSE_ON_SERVER} */
    TAG_STATUS,     /* session: {SEND_STATUS_FROM_SERVER} */
    TAG_SHUTDOWN,   /* grpc_server_shutdown_and_notify */
    TAG_WATCH_SEND, /* health Watch: {[SEND_INITIAL_METADATA,] SEND_MESSAGE} */
    TAG_WATCH_CLOSE, /* health Watch: {RECV_CLOSE_ON_SERVER} */
};

struct tag {
    enum tag_kind kind;
    void *owner;
};

struct request {
    struct tag tag;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload; /* Describe's and Check's request */
    grpc_call_details details; /* TAG_NEW_OTHER only */
};

struct unary {
    struct tag tag;
    grpc_call *call;
    grpc_byte_buffer *bb;
    int cancelled;
};

/* A health Watch stream: the status at once, and again when the drain begins (a gateway
 * balancing over several filters then sends this one no new session). Guarded by g.mu. */
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

/* One modification with its sub-message; strings are copied into buf. */
struct mod {
    Miltergw__V1__Modification m; /* first: the array holds &mod->m */
    union {
        Miltergw__V1__AddHeader add_header;
        Miltergw__V1__InsertHeader insert_header;
        Miltergw__V1__ChangeHeader change_header;
        Miltergw__V1__AddRecipient add_rcpt;
        Miltergw__V1__DeleteRecipient delete_rcpt;
        Miltergw__V1__ChangeFrom change_from;
        Miltergw__V1__ReplaceBody replace_body;
        Miltergw__V1__Quarantine quarantine;
    } u;
    char buf[];
};

struct mgw_reply {
    Miltergw__V1__Reply msg;
    Miltergw__V1__SmtpResponse resp;
    char *text; /* owned; split in place into lines */
    char *lines[MAX_LINES];
    size_t mods_cap;
};

static struct {
    const struct mgw_filter *f;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *m_session, *m_describe, *m_health, *m_watch, *m_refl_a, *m_refl_1;
    struct request reqs[N_REQ];
    struct tag shutdown_tag;
    unsigned answer; /* default for streams without SessionStart.effective */

    /* The Description, and the storage it points into. */
    Miltergw__V1__Description desc;
    Miltergw__V1__EventType events[MGW_UNKNOWN], observe[MGW_UNKNOWN];
    Miltergw__V1__Action actions[32];
    Miltergw__V1__MacroRequest macro_req[MGW_UNKNOWN + 1];
    Miltergw__V1__MacroRequest *macro_ptrs[MGW_UNKNOWN + 1];
    char *macro_copy[MGW_UNKNOWN + 1];

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cv;  /* sessions went down */
    int pending;        /* new-call requests posted, not completed */
    int live;           /* sessions and unary answers not freed */
    int sessions;       /* Session streams not freed (for the drain) */
    bool stopping, shutdown_seen, cq_shut;
    bool draining;       /* stop began: health NOT_SERVING, no new Session */
    bool stop_requested; /* mgw_filter_stop() */
    bool running;        /* main_thread waits in sigwait */
    struct watch *watches; /* open health Watch streams */
    pthread_t main_thread;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fputs("mgw_filter: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xcalloc(1, n), s, n);
}

static void counters_add(int *counter, int delta)
{
    pthread_mutex_lock(&g.mu);
    *counter += delta;
    pthread_mutex_unlock(&g.mu);
}

/* ---- protobuf-c <-> grpc_byte_buffer ---------------------------------------------------- */

static grpc_byte_buffer *pack(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

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

/* ---- events and replies ------------------------------------------------------------------ */

enum mgw_event mgw_event_kind(const Miltergw__V1__Event *ev)
{
    /* The oneof's field numbers are 10 + EventType from connect (11) to eom (19). */
    switch (ev->event_case) {
    case MILTERGW__V1__EVENT__EVENT_START: return MGW_START;
    case MILTERGW__V1__EVENT__EVENT_ABORT: return MGW_ABORT;
    case MILTERGW__V1__EVENT__EVENT_UNKNOWN: return MGW_UNKNOWN;
    default:
        if (ev->event_case >= MILTERGW__V1__EVENT__EVENT_CONNECT &&
            ev->event_case <= MILTERGW__V1__EVENT__EVENT_EOM)
            return (enum mgw_event)(ev->event_case - MILTERGW__V1__EVENT__EVENT_START);
        return MGW_NONE; /* not set, or a kind newer than this library */
    }
}

const char *mgw_event_macro(const Miltergw__V1__Event *ev, const char *name)
{
    for (size_t i = 0; i < ev->n_macros; i++)
        if (strcmp(ev->macros[i]->key, name) == 0)
            return ev->macros[i]->value;
    return NULL;
}

/* Copies s (NULL = "") to *p and advances *p. */
static char *put(char **p, const char *s)
{
    char *start = *p;
    size_t n = strlen(s ? s : "") + 1;
    memcpy(start, s ? s : "", n);
    *p += n;
    return start;
}

static size_t len0(const char *s)
{
    return s ? strlen(s) + 1 : 1;
}

/* Copies an envelope address to *p, adding angle brackets if it has none (+2 bytes). */
static char *put_addr(char **p, const char *a)
{
    char *start = *p;
    a = a ? a : "";
    *p += sprintf(start, a[0] == '<' ? "%s" : "<%s>", a) + 1;
    return start;
}

void mgw_reply_verdict(struct mgw_reply *r, enum mgw_verdict v)
{
    r->msg.verdict = (Miltergw__V1__Verdict)v;
}

static void reply_smtp(struct mgw_reply *r, enum mgw_verdict v, unsigned code, const char *xcode,
                       const char *text)
{
    /* Copy both strings: the caller's may not outlive its callback, the packing does. */
    size_t xl = len0(xcode);
    free(r->text);
    r->text = xcalloc(1, xl + len0(text));
    char *p = r->text;
    r->msg.verdict = (Miltergw__V1__Verdict)v;
    r->resp.code = code;
    r->resp.enhanced_status = put(&p, xcode);
    r->resp.n_lines = 0;
    if (text) {
        put(&p, text);
        for (p = r->text + xl; p && r->resp.n_lines < MAX_LINES; p = strchr(p, '\n')) {
            if (*p == '\n')
                *p++ = '\0';
            r->lines[r->resp.n_lines++] = p;
        }
    }
    r->resp.lines = r->lines;
    r->msg.response = &r->resp;
}

void mgw_reply_reject(struct mgw_reply *r, unsigned code, const char *xcode, const char *text)
{
    reply_smtp(r, MGW_REJECT, code, xcode, text);
}

void mgw_reply_tempfail(struct mgw_reply *r, unsigned code, const char *xcode, const char *text)
{
    reply_smtp(r, MGW_TEMPFAIL, code, xcode, text);
}

/* Appends a modification of kind `c` with `extra` bytes of string space in mod->buf. */
static struct mod *mod_add(struct mgw_reply *r, Miltergw__V1__Modification__ModificationCase c,
                           size_t extra)
{
    struct mod *m = xcalloc(1, sizeof *m + extra);
    m->m = (Miltergw__V1__Modification)MILTERGW__V1__MODIFICATION__INIT;
    m->m.modification_case = c;
    if (r->msg.n_modifications == r->mods_cap) {
        r->mods_cap = r->mods_cap ? 2 * r->mods_cap : 4;
        r->msg.modifications =
            realloc(r->msg.modifications, r->mods_cap * sizeof *r->msg.modifications);
        if (r->msg.modifications == NULL) {
            fputs("mgw_filter: out of memory\n", stderr);
            abort();
        }
    }
    r->msg.modifications[r->msg.n_modifications++] = &m->m;
    return m;
}

static void header_mod(struct mgw_reply *r, Miltergw__V1__Modification__ModificationCase c,
                       unsigned index, const char *name, const char *value)
{
    struct mod *m = mod_add(r, c, len0(name) + len0(value));
    char *p = m->buf;
    char *n = put(&p, name);
    ProtobufCBinaryData v = {.len = value ? strlen(value) : 0, .data = (uint8_t *)put(&p, value)};
    if (c == MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER) {
        m->u.add_header = (Miltergw__V1__AddHeader)MILTERGW__V1__ADD_HEADER__INIT;
        m->u.add_header.name = n;
        m->u.add_header.value = v;
        m->m.add_header = &m->u.add_header;
    } else if (c == MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER) {
        m->u.insert_header = (Miltergw__V1__InsertHeader)MILTERGW__V1__INSERT_HEADER__INIT;
        m->u.insert_header.index = index;
        m->u.insert_header.name = n;
        m->u.insert_header.value = v;
        m->m.insert_header = &m->u.insert_header;
    } else {
        m->u.change_header = (Miltergw__V1__ChangeHeader)MILTERGW__V1__CHANGE_HEADER__INIT;
        m->u.change_header.index = index;
        m->u.change_header.name = n;
        m->u.change_header.value = v;
        m->m.change_header = &m->u.change_header;
    }
}

void mgw_reply_add_header(struct mgw_reply *r, const char *name, const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER, 0, name, value);
}

void mgw_reply_insert_header(struct mgw_reply *r, unsigned index, const char *name,
                             const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER, index, name, value);
}

void mgw_reply_change_header(struct mgw_reply *r, const char *name, unsigned index,
                             const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER, index, name, value);
}

/* Splits a copy of space-separated ESMTP args at *p into (char **) slots also at *p.
 * `args` needs len0(args) bytes of strings plus args_slots() pointers. */
static size_t args_slots(const char *args)
{
    return args ? strlen(args) / 2 + 1 : 0;
}

static char **put_args(char **p, const char *args, size_t *n)
{
    *n = 0;
    if (args == NULL || args[0] == '\0')
        return NULL;
    char **slots = (char **)*p;
    *p += args_slots(args) * sizeof(char *);
    char *copy = put(p, args), *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
        slots[(*n)++] = w;
    return slots;
}

void mgw_reply_add_rcpt_args(struct mgw_reply *r, const char *address, const char *args)
{
    size_t extra = len0(address) + 2 + len0(args) + args_slots(args) * sizeof(char *);
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT, extra);
    char *p = m->buf; /* the slots first: buf is aligned for pointers */
    m->u.add_rcpt = (Miltergw__V1__AddRecipient)MILTERGW__V1__ADD_RECIPIENT__INIT;
    m->u.add_rcpt.args = put_args(&p, args, &m->u.add_rcpt.n_args);
    m->u.add_rcpt.address = put_addr(&p, address);
    m->m.add_recipient = &m->u.add_rcpt;
}

void mgw_reply_add_rcpt(struct mgw_reply *r, const char *address)
{
    mgw_reply_add_rcpt_args(r, address, NULL);
}

void mgw_reply_delete_rcpt(struct mgw_reply *r, const char *address)
{
    struct mod *m =
        mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT, len0(address) + 2);
    char *p = m->buf;
    m->u.delete_rcpt = (Miltergw__V1__DeleteRecipient)MILTERGW__V1__DELETE_RECIPIENT__INIT;
    m->u.delete_rcpt.address = put_addr(&p, address);
    m->m.delete_recipient = &m->u.delete_rcpt;
}

void mgw_reply_change_from_args(struct mgw_reply *r, const char *address, const char *args)
{
    size_t extra = len0(address) + 2 + len0(args) + args_slots(args) * sizeof(char *);
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM, extra);
    char *p = m->buf;
    m->u.change_from = (Miltergw__V1__ChangeFrom)MILTERGW__V1__CHANGE_FROM__INIT;
    m->u.change_from.args = put_args(&p, args, &m->u.change_from.n_args);
    m->u.change_from.address = put_addr(&p, address);
    m->m.change_from = &m->u.change_from;
}

void mgw_reply_change_from(struct mgw_reply *r, const char *address)
{
    mgw_reply_change_from_args(r, address, NULL);
}

void mgw_reply_replace_body(struct mgw_reply *r, const void *body, size_t len)
{
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY, len);
    if (len)
        memcpy(m->buf, body, len);
    m->u.replace_body = (Miltergw__V1__ReplaceBody)MILTERGW__V1__REPLACE_BODY__INIT;
    m->u.replace_body.body = (ProtobufCBinaryData){.len = len, .data = (uint8_t *)m->buf};
    m->m.replace_body = &m->u.replace_body;
}

void mgw_reply_quarantine(struct mgw_reply *r, const char *reason)
{
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE, len0(reason));
    char *p = m->buf;
    m->u.quarantine = (Miltergw__V1__Quarantine)MILTERGW__V1__QUARANTINE__INIT;
    m->u.quarantine.reason = put(&p, reason);
    m->m.quarantine = &m->u.quarantine;
}

static void reply_free(struct mgw_reply *r)
{
    for (size_t i = 0; i < r->msg.n_modifications; i++)
        free(r->msg.modifications[i]); /* == the struct mod holding it */
    free(r->msg.modifications);
    free(r->text);
}

/* ---- sessions ---------------------------------------------------------------------------- */

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
    return g.f->arg;
}

/* The MGW_EVENT_BITs to answer, from a declaration's events and observe-only lists. */
static unsigned answer_mask(const Miltergw__V1__EventType *ev, size_t n_ev,
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
    if (g.f->on_close && !s->reflection && !s->thr_started)
        g.f->on_close(s);
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
    pthread_mutex_lock(&g.mu);
    g.live--;
    if (counted) {
        g.sessions--;
        pthread_cond_broadcast(&g.cv);
    }
    pthread_mutex_unlock(&g.mu);
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
    bool threaded = g.f->session_threads;
    enum mgw_event kind = mgw_event_kind(ev);
    if (kind == MGW_START) {
        const Miltergw__V1__Description *eff = ev->start->effective;
        free(s->id);
        s->id = xstrdup(ev->start->session_id);
        if (eff)
            s->answer =
                answer_mask(eff->events, eff->n_events, eff->observe_only, eff->n_observe_only);
    }
    bool answered = kind >= MGW_CONNECT && kind <= MGW_UNKNOWN && (s->answer & MGW_EVENT_BIT(kind));
    struct mgw_reply r = {.msg = MILTERGW__V1__REPLY__INIT,
                          .resp = MILTERGW__V1__SMTP_RESPONSE__INIT};
    r.msg.event_id = ev->event_id;
    r.msg.verdict = MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
    s->cur_id = ev->event_id;
    s->cur_answered = answered;
    s->in_event = true;
    g.f->on_event(s, ev, &r);
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
    reply_free(&r);
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
    if (!g.f->session_threads || !s->in_event || !s->cur_answered)
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
    if (g.f->on_close)
        g.f->on_close(s);
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

static grpc_slice bb_bytes(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return grpc_empty_slice();
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return sl;
}

static grpc_byte_buffer *bb_from(uint8_t *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    free(data);
    return bb;
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
    if (g.f->session_threads) {
        thread_queue(s, ev);
        return;
    }
    events_run(s, ev);
    protobuf_c_message_free_unpacked(&ev->base, NULL);
}

static void session_tag(struct tag *t, int ok)
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

static void session_new(grpc_call *call, bool reflection)
{
    struct mgw_session *s = xcalloc(1, sizeof *s);
    s->t_recv = (struct tag){TAG_RECV, s};
    s->t_send = (struct tag){TAG_SEND, s};
    s->t_close = (struct tag){TAG_CLOSE, s};
    s->t_status = (struct tag){TAG_STATUS, s};
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->call = call;
    s->answer = g.answer;
    s->reflection = reflection;
    if (g.f->state_size && !reflection)
        s->state = xcalloc(1, g.f->state_size);
    pthread_mutex_lock(&g.mu);
    g.live++;
    if (!reflection)
        g.sessions++;
    pthread_mutex_unlock(&g.mu);

    pthread_mutex_lock(&s->mu); /* completions may arrive on other workers at once */
    grpc_op op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    op.data.recv_close_on_server.cancelled = &s->cancelled;
    batch(s, &op, 1, &s->t_close);
    bool done = pump(s);
    pthread_mutex_unlock(&s->mu);
    if (done)
        session_free(s);
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
    counters_add(&g.live, 1);
    if (grpc_call_start_batch(call, ops, n, &u->tag, NULL) != GRPC_CALL_OK) {
        fputs("mgw_filter: cannot answer a unary call\n", stderr);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        grpc_call_unref(call);
        free(u);
        counters_add(&g.live, -1);
    }
}

static void unary_done(struct unary *u)
{
    if (u->bb)
        grpc_byte_buffer_destroy(u->bb);
    grpc_call_unref(u->call);
    free(u);
    counters_add(&g.live, -1);
}

static void *request_method(enum tag_kind k)
{
    switch (k) {
    case TAG_NEW_SESSION: return g.m_session;
    case TAG_NEW_DESCRIBE: return g.m_describe;
    case TAG_NEW_HEALTH: return g.m_health;
    case TAG_NEW_WATCH: return g.m_watch;
    case TAG_NEW_REFL_A: return g.m_refl_a;
    default: return g.m_refl_1;
    }
}

static void request_post(struct request *r)
{
    grpc_call_error e;
    pthread_mutex_lock(&g.mu);
    if (g.stopping) { /* after shutdown began: do not ask for more calls */
        pthread_mutex_unlock(&g.mu);
        return;
    }
    g.pending++; /* before posting: the completion may arrive on another worker at once */
    pthread_mutex_unlock(&g.mu);
    r->call = NULL;
    r->payload = NULL;
    grpc_metadata_array_init(&r->md);
    if (r->tag.kind == TAG_NEW_OTHER) {
        grpc_call_details_init(&r->details);
        e = grpc_server_request_call(g.server, &r->call, &r->details, &r->md, g.cq, g.cq, &r->tag);
    } else {
        bool unary = r->tag.kind == TAG_NEW_DESCRIBE || r->tag.kind == TAG_NEW_HEALTH ||
                     r->tag.kind == TAG_NEW_WATCH;
        e = grpc_server_request_registered_call(g.server, request_method(r->tag.kind), &r->call,
                                                &r->deadline, &r->md, unary ? &r->payload : NULL,
                                                g.cq, g.cq, &r->tag);
    }
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "mgw_filter: request_call failed: %d\n", e);
        grpc_metadata_array_destroy(&r->md);
        if (r->tag.kind == TAG_NEW_OTHER)
            grpc_call_details_destroy(&r->details);
        counters_add(&g.pending, -1);
    }
}

static bool is_draining(void)
{
    pthread_mutex_lock(&g.mu);
    bool d = g.draining;
    pthread_mutex_unlock(&g.mu);
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

/* Send the current status if it changed (g.mu held). */
static void watch_send(struct watch *w)
{
    bool serving = !g.draining;
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
    counters_add(&g.live, 1);
    pthread_mutex_lock(&g.mu);
    if (grpc_call_start_batch(call, &op, 1, &w->t_close, NULL) != GRPC_CALL_OK) {
        pthread_mutex_unlock(&g.mu);
        grpc_call_unref(call);
        free(w->request);
        free(w);
        counters_add(&g.live, -1);
        return;
    }
    w->outstanding = 1;
    w->next = g.watches;
    g.watches = w;
    watch_send(w);
    pthread_mutex_unlock(&g.mu);
}

static void watch_tag(struct tag *t, int ok)
{
    struct watch *w = t->owner, **pp;

    pthread_mutex_lock(&g.mu);
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
        pthread_mutex_unlock(&g.mu);
        return;
    }
    for (pp = &g.watches; *pp != w; pp = &(*pp)->next)
        ;
    *pp = w->next;
    pthread_mutex_unlock(&g.mu);
    grpc_call_unref(w->call);
    free(w->request);
    free(w);
    counters_add(&g.live, -1);
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
                session_new(r->call, false);
            break;
        case TAG_NEW_DESCRIBE: /* the DescribeRequest is informational */
            unary_answer(r->call, pack(&g.desc.base), GRPC_STATUS_OK, "");
            break;
        case TAG_NEW_HEALTH: health_check(r->call, r->payload); break;
        case TAG_NEW_WATCH: watch_new(r->call, r->payload); break;
        case TAG_NEW_REFL_A:
        case TAG_NEW_REFL_1: session_new(r->call, true); break;
        default: unary_answer(r->call, NULL, GRPC_STATUS_UNIMPLEMENTED, "unknown method"); break;
        }
    }
    if (r->payload)
        grpc_byte_buffer_destroy(r->payload);
    r->payload = NULL;
    if (ok)
        request_post(r);
    counters_add(&g.pending, -1);
}

/* ---- workers, signals, setup ------------------------------------------------------------- */

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        grpc_event e = grpc_completion_queue_next(g.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
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
            pthread_mutex_lock(&g.mu);
            g.shutdown_seen = true;
            pthread_mutex_unlock(&g.mu);
            break;
        default: session_tag(t, e.success); break;
        }
        /* Once nothing can produce a completion any more, let every worker return. */
        pthread_mutex_lock(&g.mu);
        bool last = g.shutdown_seen && !g.cq_shut && g.live == 0 && g.pending == 0;
        if (last)
            g.cq_shut = true;
        pthread_mutex_unlock(&g.mu);
        if (last)
            grpc_completion_queue_shutdown(g.cq);
    }
}

static void describe_build(const struct mgw_filter *f)
{
    Miltergw__V1__Description *d = &g.desc;
    *d = (Miltergw__V1__Description)MILTERGW__V1__DESCRIPTION__INIT;
    d->name = (char *)(f->name ? f->name : "");
    d->version = (char *)(f->version ? f->version : "");
    d->events = g.events;
    d->observe_only = g.observe;
    for (int t = MGW_CONNECT; t <= MGW_UNKNOWN; t++) {
        if (f->events & MGW_EVENT_BIT(t))
            g.events[d->n_events++] = (Miltergw__V1__EventType)t;
        if (f->events & f->observe_only & MGW_EVENT_BIT(t))
            g.observe[d->n_observe_only++] = (Miltergw__V1__EventType)t;
    }
    if (d->n_events == 0) /* a list holding only UNSPECIFIED means "none" */
        g.events[d->n_events++] = MILTERGW__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    d->actions = g.actions;
    for (unsigned a = 1; a < 32; a++)
        if (f->actions & (1u << a))
            g.actions[d->n_actions++] = (Miltergw__V1__Action)a;
    d->macros = g.macro_ptrs;
    for (int t = MGW_CONNECT; t <= MGW_UNKNOWN; t++) {
        if (f->macros[t] == NULL)
            continue;
        Miltergw__V1__MacroRequest *m = &g.macro_req[t];
        *m = (Miltergw__V1__MacroRequest)MILTERGW__V1__MACRO_REQUEST__INIT;
        m->stage = (Miltergw__V1__EventType)t;
        /* names point into a copy split at spaces; n names need at most len/2+1 slots */
        g.macro_copy[t] = xstrdup(f->macros[t]);
        m->names = xcalloc(strlen(f->macros[t]) / 2 + 1, sizeof *m->names);
        char *save = NULL;
        for (char *w = strtok_r(g.macro_copy[t], " ", &save); w; w = strtok_r(NULL, " ", &save))
            m->names[m->n_names++] = w;
        g.macro_ptrs[d->n_macros++] = m;
    }
    d->rejected_recipients = f->rejected_recipients;
    d->batches = true; /* this library takes EventBatch (session_recv); replies go one by one */
    d->header_leading_space = f->header_leading_space;
    g.answer = answer_mask(g.events, d->n_events, g.observe, d->n_observe_only);
}

static void describe_free(void)
{
    for (int t = 0; t <= MGW_UNKNOWN; t++) {
        free(g.macro_copy[t]);
        free(g.macro_req[t].names);
    }
}

/* Stop, first part: health says NOT_SERVING, no new sessions, and the open ones get up to
 * `seconds` to end on their own. */
static void drain(unsigned seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    pthread_mutex_lock(&g.mu);
    g.draining = true;
    for (struct watch *w = g.watches; w != NULL; w = w->next)
        watch_send(w); /* NOT_SERVING to every watcher */
    while (seconds && g.sessions > 0)
        if (pthread_cond_timedwait(&g.cv, &g.mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&g.mu);
}

void mgw_filter_stop(void)
{
    pthread_mutex_lock(&g.mu);
    g.stop_requested = true;
    if (g.running && !g.draining)
        pthread_kill(g.main_thread, SIGTERM); /* blocked everywhere: sigwait takes it */
    pthread_mutex_unlock(&g.mu);
}

int mgw_filter_run(const struct mgw_filter *f)
{
    pthread_t threads[MAX_THREADS];
    unsigned n_threads = f->threads == 0 ? 1 : f->threads > MAX_THREADS ? MAX_THREADS : f->threads;
    const char *listen = f->listen ? f->listen : "127.0.0.1:50051";
    sigset_t sigs;
    int sig, rc = 0;

    g.f = f;
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
    g.server = grpc_server_create(&chargs, NULL);
    g.m_session = grpc_server_register_method(g.server, "/miltergw.v1.Filter/Session", NULL,
                                              GRPC_SRM_PAYLOAD_NONE, 0);
    g.m_describe = grpc_server_register_method(g.server, "/miltergw.v1.Filter/Describe", NULL,
                                               GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    g.m_health = grpc_server_register_method(g.server, MGW_HEALTH_CHECK, NULL,
                                             GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    g.m_watch = grpc_server_register_method(g.server, MGW_HEALTH_WATCH, NULL,
                                            GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    g.m_refl_a =
        grpc_server_register_method(g.server, MGW_REFLECTION_V1A, NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    g.m_refl_1 =
        grpc_server_register_method(g.server, MGW_REFLECTION_V1, NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    g.cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(g.server, g.cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(g.server, listen, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        fprintf(stderr, "mgw_filter: cannot listen on %s\n", listen);
        grpc_server_destroy(g.server); /* never started: nothing to wait for */
        rc = 1;
        goto out;
    }
    grpc_server_start(g.server);
    for (size_t i = 0; i < N_REQ; i++) {
        struct request *r = &g.reqs[i];
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
    g.shutdown_tag.kind = TAG_SHUTDOWN;
    if (f->print_port) {
        printf("port=%d\n", strncmp(listen, "unix:", 5) == 0 ? 0 : port);
        fflush(stdout);
    }
    for (unsigned i = 0; i < n_threads; i++)
        if (pthread_create(&threads[i], NULL, worker, NULL) != 0) {
            fputs("mgw_filter: cannot start a worker thread\n", stderr);
            abort();
        }

    pthread_mutex_lock(&g.mu);
    g.main_thread = pthread_self();
    g.running = true;
    bool stop_now = g.stop_requested;
    pthread_mutex_unlock(&g.mu);
    while (!stop_now && sigwait(&sigs, &sig) != 0)
        ;
    drain(f->drain_seconds);
    pthread_mutex_lock(&g.mu);
    g.stopping = true;
    g.running = false;
    pthread_mutex_unlock(&g.mu);
    grpc_server_shutdown_and_notify(g.server, g.cq, &g.shutdown_tag);
    grpc_server_cancel_all_calls(g.server);
    for (unsigned i = 0; i < n_threads; i++)
        pthread_join(threads[i], NULL);
    grpc_server_destroy(g.server);
out:
    if (rc != 0) { /* no worker ran: drain the queue here */
        grpc_completion_queue_shutdown(g.cq);
        while (grpc_completion_queue_next(g.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
    }
    grpc_completion_queue_destroy(g.cq);
    grpc_shutdown_blocking();
    describe_free();
    return rc;
}
