/*
 * test_filter.c - a fast, flag-driven miltergw.v1.Filter service on the gRPC core server API.
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Stands in for real filter services in the integration tests and the benchmarks; its
 * behaviour comes from flags (test_filter_opts.c, `--help`). It is not an example of how to
 * write a filter: see examples/ for that. It serves plaintext, or TLS with --tls-cert and
 * --tls-key, and mutual TLS (a verified client certificate required) with --tls-client-ca.
 *
 * Threads. The main thread owns every call and all state: it loops in
 * grpc_completion_queue_next() on one NEXT completion queue, so no state needs a lock. A
 * signal thread only waits in sigwait() and turns SIGTERM/SIGINT into
 * grpc_server_shutdown_and_notify() + grpc_server_cancel_all_calls(), which are
 * thread-safe. Signals are blocked before grpc_init() so gRPC's threads inherit the mask.
 *
 * Calls. Session streams, Describe and a generic catch-all are requested 16, 16 and 2 at a
 * time and re-requested as they arrive; the catch-all answers UNIMPLEMENTED, because the core
 * API would otherwise leave unknown methods hanging. Each stream keeps one RECV_MESSAGE
 * armed and at most one SEND_MESSAGE in flight (our own flags, never TOO_MANY_OPERATIONS);
 * when a reply is ready as the next receive is armed, both go in one
 * {SEND_MESSAGE, RECV_MESSAGE} batch (one completion per round trip).
 *
 * Streams and connections. A stream (struct stream) is the gRPC call; a connection (struct
 * conn) is one SMTP connection's session, which the per-connection flags act on. A
 * per-connection stream carries one; with --multiplexed a stream carries many, told apart
 * by Event.session, each ended by its Event.end.
 *
 * Delays. The C core has no alarm (grpc_alarm is C++ only), and a sleeping thread would stall
 * every stream. Instead replies not due yet wait in their connection's FIFO with a due time,
 * connections whose FIFO is not empty sit in a min-heap keyed by the head's due time, and
 * the CQ wait uses the earliest due time as its deadline: GRPC_QUEUE_TIMEOUT means "some
 * reply is due", and due replies move to their stream's queue of replies to send.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "mgw/filter_proto.h"
#include "test_filter.h"

#define N_REQ_SESSION   16
#define N_REQ_DESCRIBE  16
#define N_REQ_GENERIC   2
#define N_REQ           (N_REQ_SESSION + N_REQ_DESCRIBE + N_REQ_GENERIC)
#define BOGUS_ID_OFFSET 1000000u
#define CRASH_EXIT      70
#define NO_HEAP         UINT32_MAX
#define BATCH_MAX       64 /* replies sent as one message */

enum tag_kind {
    TAG_NEW_SESSION,  /* request_registered_call(Session) */
    TAG_NEW_DESCRIBE, /* request_registered_call(Describe) */
    TAG_NEW_GENERIC,  /* request_call: any other method */
    TAG_UNARY_DONE,   /* the single batch answering Describe or UNIMPLEMENTED */
    TAG_RECV,         /* stream: {RECV_MESSAGE} (the first also sends initial metadata) */
    TAG_SEND,         /* stream: {SEND_MESSAGE} */
    TAG_SENDRECV,     /* stream: {SEND_MESSAGE, RECV_MESSAGE} */
    TAG_CLOSE,        /* stream: {RECV_CLOSE_ON_SERVER} */
    TAG_STATUS,       /* stream: {SEND_STATUS_FROM_SERVER} */
    TAG_SHUTDOWN,     /* grpc_server_shutdown_and_notify */
    TAG_WATCH_SEND,   /* health Watch: {SEND_INITIAL_METADATA?, SEND_MESSAGE} */
    TAG_WATCH_CLOSE,  /* health Watch: {RECV_CLOSE_ON_SERVER} */
};

struct tag {
    enum tag_kind kind;
    void *owner;
};

/* One pre-posted request for a new call. */
struct request {
    struct tag tag;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload; /* Describe only */
    grpc_call_details details; /* generic only */
};

/* A unary answer in flight. */
struct unary {
    struct tag tag;
    grpc_call *call;
    grpc_byte_buffer *bb;
    int cancelled;
};

/* A grpc.health.v1.Health/Watch stream: the status is sent at once and on every change
 * (--control health=...), until the client goes. */
struct watch {
    struct tag t_send, t_close;
    grpc_call *call;
    grpc_byte_buffer *send_bb;
    int cancelled, outstanding, sent_status;
    bool metadata_sent, closed;
    struct watch *next;
};

/* A reply waiting to be sent, packed. */
struct out {
    struct out *next;
    int64_t due; /* ns, gpr monotonic clock */
    grpc_slice packed;
};

/* A FIFO of replies. */
struct outq {
    struct out *head, *tail;
};

struct stream;

/*
 * One SMTP connection's state: what the per-connection flags act on. A per-connection stream
 * has exactly one (id 0, made with the stream); a multiplexed stream has one per
 * Event.session, from the session's first event to its Event.end. Replies that are not due
 * yet wait here rather than in the stream, so that one session's delay holds back no other
 * session of its stream. Kept small: it is what an idle connection costs on a multiplexed
 * stream (with its sid and a table slot or two), and idle connections are why the gateway
 * multiplexes.
 */
struct conn {
    uint64_t id;              /* Event.session; 0 on a per-connection stream */
    struct stream *st;        /* the stream carrying it; borrowed */
    char *sid;                /* SessionStart.session_id, owned; NULL until then */
    char *echo_value;         /* --echo-header: the current message's SRC header, owned */
    struct outq wait;         /* replies not due yet, in event order */
    uint32_t echo_len;        /* header values are far below 4 GiB (max_message 1 GiB) */
    uint32_t heap_idx;        /* in g.heap (keyed by wait.head->due) iff wait is not empty */
    uint16_t events, observe; /* the declaration in force for this connection (stage bits) */
    bool from_match;          /* --only-from: the current message's MAIL FROM is listed */
    bool silent;              /* --never-answer: stop answering this connection */
};
_Static_assert(TF_NSTAGES <= 16, "stage masks fit in conn.events and conn.observe");

/*
 * One Session call: the transport. It keeps one RECV_MESSAGE armed and at most one
 * SEND_MESSAGE in flight, and owns its connections' states, found by Event.session in an
 * open-addressing table (linear probing, backward-shift deletion: no tombstones, so a
 * stream whose sessions come and go never needs a rehash; at most 128 sessions per stream,
 * so growing by doubling is all the resizing it needs).
 */
struct stream {
    struct tag t_recv, t_send, t_sendrecv, t_close, t_status;
    grpc_call *call;
    grpc_byte_buffer *recv_bb; /* RECV_MESSAGE target */
    grpc_byte_buffer *send_bb; /* the SEND_MESSAGE in flight */
    int cancelled;             /* RECV_CLOSE_ON_SERVER target */
    int outstanding;           /* batches started and not completed */
    bool recv_armed, send_busy, recv_done, dead, status_started, first_recv;
    bool failed;       /* --fail-at: end with --fail-status */
    struct outq ready; /* replies due, sent in this order */
    size_t n_waiting;  /* replies waiting in its connections' queues */
    struct conn **tab; /* 1 << tab_bits slots, NULL = free; owns the conns */
    unsigned tab_bits; /* 0 until the first connection state */
    size_t n_conns;
    unsigned serial;      /* this process's Session calls, counted from 1 */
    const char *in_batch; /* while handling an EventBatch: its size, as text */
};

static struct {
    grpc_server *server;
    grpc_completion_queue *cq;
    void *m_session, *m_describe;
    struct request reqs[N_REQ];
    int pending_requests; /* request tags not yet completed */
    int live;             /* streams and unary answers not yet freed */
    unsigned calls;       /* Session calls so far */
    bool shutdown_seen, cq_shutdown, cq_drained;
    int record_fd;
    struct conn **heap; /* connections with waiting replies */
    size_t heap_len, heap_cap;
    struct tag shutdown_tag;
    struct watch *watches;
} g = {.record_fd = -1};

static atomic_int g_stop;
/* --control: set by the signal thread on SIGUSR1, read by the main thread per event. */
static atomic_uint g_ctl_delay_ms;
static atomic_bool g_ctl_bogus;
/* grpc.health.v1 ServingStatus: 1 SERVING (from the start), 2 NOT_SERVING. */
static atomic_int g_ctl_health = 1;

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fputs("mgw_test_filter: out of memory\n", stderr);
        abort();
    }
    return p;
}

static int64_t now_ns(void)
{
    gpr_timespec t = gpr_now(GPR_CLOCK_MONOTONIC);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static gpr_timespec ns_to_timespec(int64_t ns)
{
    gpr_timespec t = {.tv_sec = ns / 1000000000,
                      .tv_nsec = (int32_t)(ns % 1000000000),
                      .clock_type = GPR_CLOCK_MONOTONIC};
    return t;
}

/* ---- protobuf-c <-> grpc_byte_buffer ---------------------------------------------------- */

static grpc_slice pack_slice(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    return s;
}

static grpc_byte_buffer *pack_bb(const ProtobufCMessage *m)
{
    grpc_slice s = pack_slice(m);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack_bb(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        grpc_slice s = bb->data.raw.slice_buffer.slices[0];
        return protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    }
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

/* ---- the --record file ------------------------------------------------------------------ */

static struct {
    char *p;
    size_t len, cap;
} line;

static void line_put(const void *data, size_t n)
{
    if (line.len + n + 1 > line.cap) {
        size_t cap = line.cap ? line.cap : 256;
        while (cap < line.len + n + 1)
            cap *= 2;
        char *p = realloc(line.p, cap);
        if (p == NULL)
            abort();
        line.p = p;
        line.cap = cap;
    }
    memcpy(line.p + line.len, data, n);
    line.len += n;
}

__attribute__((format(printf, 1, 2))) static void line_printf(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        line_put(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* Bytes outside 0x21..0x7e, and backslash, become \xHH: a value never holds a space. */
static void line_esc(const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        if (p[i] > 0x20 && p[i] < 0x7f && p[i] != '\\')
            line_put(&p[i], 1);
        else
            line_printf("\\x%02x", p[i]);
    }
}

static void line_kv(const char *key, const char *value)
{
    line_printf(" %s=", key);
    line_esc(value ? value : "", value ? strlen(value) : 0);
}

/* "ID KIND session=SID", and on a multiplexed stream " mux=N call=C" (Event.session: not a
 * second "session=", which record readers take to be the SID; the call carrying it). */
static void line_start(uint64_t id, bool has_id, const char *kind, const struct conn *c)
{
    line.len = 0;
    if (has_id)
        line_printf("%" PRIu64 " %s", id, kind);
    else
        line_printf("- %s", kind);
    line_kv("session", c && c->sid ? c->sid : "-");
    if (c && tf.multiplexed)
        line_printf(" mux=%" PRIu64 " call=%u", c->id, c->st->serial);
}

static void line_write(void)
{
    line_put("\n", 1);
    size_t off = 0;
    while (off < line.len) {
        ssize_t n = write(g.record_fd, line.p + off, line.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("mgw_test_filter: --record");
            return;
        }
        off += (size_t)n;
    }
}

static const char *family_name(Miltergw__V1__Family f)
{
    switch (f) {
    case MILTERGW__V1__FAMILY__FAMILY_UNKNOWN: return "unknown";
    case MILTERGW__V1__FAMILY__FAMILY_UNIX: return "unix";
    case MILTERGW__V1__FAMILY__FAMILY_INET: return "inet";
    case MILTERGW__V1__FAMILY__FAMILY_INET6: return "inet6";
    default: return "unspecified";
    }
}

static void record_args(char **args, size_t n)
{
    for (size_t i = 0; i < n; i++)
        line_kv("arg", args[i]);
}

static void record_event(const struct conn *c, const Miltergw__V1__Event *ev, const char *kind)
{
    if (g.record_fd < 0)
        return;
    line_start(ev->event_id, true, kind, c);
    if (c->st->in_batch)
        line_kv("batch", c->st->in_batch);
    switch (ev->event_case) {
    case MILTERGW__V1__EVENT__EVENT_START: {
        const Miltergw__V1__SessionStart *st = ev->start;
        const Miltergw__V1__MilterOptions *o = st->mta_offered, *n = st->negotiated;
        line_kv("filter", st->filter_name);
        line_kv("gateway", st->gateway_version);
        line_printf(" mta_version=%u mta_actions=0x%x mta_protocol=0x%x", o ? o->version : 0,
                    o ? o->actions : 0, o ? o->protocol : 0);
        line_printf(" version=%u actions=0x%x protocol=0x%x", n ? n->version : 0,
                    n ? n->actions : 0, n ? n->protocol : 0);
        line_printf(" leadspc=%d", st->header_leading_space ? 1 : 0);
        break;
    }
    case MILTERGW__V1__EVENT__EVENT_CONNECT:
        line_kv("host", ev->connect->hostname);
        line_kv("family", family_name(ev->connect->family));
        line_kv("addr", ev->connect->address);
        line_printf(" port=%u", ev->connect->port);
        break;
    case MILTERGW__V1__EVENT__EVENT_HELO: line_kv("name", ev->helo->name); break;
    case MILTERGW__V1__EVENT__EVENT_MAIL:
        line_kv("addr", ev->mail->address);
        record_args(ev->mail->args, ev->mail->n_args);
        break;
    case MILTERGW__V1__EVENT__EVENT_RCPT:
        line_kv("addr", ev->rcpt->address);
        line_printf(" rejected=%d", ev->rcpt->rejected ? 1 : 0);
        record_args(ev->rcpt->args, ev->rcpt->n_args);
        break;
    case MILTERGW__V1__EVENT__EVENT_HEADER:
        line_kv("name", ev->header->name);
        line_put(" value=", 7);
        line_esc(ev->header->value.data, ev->header->value.len);
        break;
    case MILTERGW__V1__EVENT__EVENT_BODY:
        line_printf(" len=%zu data=", ev->body->data.len);
        line_esc(ev->body->data.data, ev->body->data.len);
        break;
    case MILTERGW__V1__EVENT__EVENT_UNKNOWN: line_kv("cmd", ev->unknown->command); break;
    default: break;
    }
    for (size_t i = 0; i < ev->n_macros; i++) {
        line_put(" m.", 3);
        line_esc(ev->macros[i]->key, strlen(ev->macros[i]->key));
        line_put("=", 1);
        line_esc(ev->macros[i]->value, strlen(ev->macros[i]->value));
    }
    line_write();
}

/* ---- timer heap of connections, keyed by the due time of their first waiting reply ------- */

static int64_t heap_due(size_t i)
{
    return g.heap[i]->wait.head->due;
}

static void heap_swap(size_t a, size_t b)
{
    struct conn *t = g.heap[a];
    g.heap[a] = g.heap[b];
    g.heap[b] = t;
    g.heap[a]->heap_idx = (uint32_t)a;
    g.heap[b]->heap_idx = (uint32_t)b;
}

static void heap_fix(size_t i)
{
    while (i > 0 && heap_due(i) < heap_due((i - 1) / 2)) {
        heap_swap(i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < g.heap_len && heap_due(l) < heap_due(m))
            m = l;
        if (r < g.heap_len && heap_due(r) < heap_due(m))
            m = r;
        if (m == i)
            return;
        heap_swap(i, m);
        i = m;
    }
}

static void heap_remove(struct conn *c)
{
    size_t i = c->heap_idx;
    if (c->heap_idx == NO_HEAP)
        return;
    c->heap_idx = NO_HEAP;
    if (i != --g.heap_len) {
        g.heap[i] = g.heap[g.heap_len];
        g.heap[i]->heap_idx = (uint32_t)i;
        heap_fix(i);
    }
}

/* Puts c in the heap, or moves it, after its first waiting reply changed. */
static void heap_update(struct conn *c)
{
    if (c->wait.head == NULL) {
        heap_remove(c);
        return;
    }
    if (c->heap_idx == NO_HEAP) {
        if (g.heap_len == g.heap_cap) {
            g.heap_cap = g.heap_cap ? 2 * g.heap_cap : 64;
            g.heap = realloc(g.heap, g.heap_cap * sizeof *g.heap);
            if (g.heap == NULL)
                abort();
        }
        c->heap_idx = (uint32_t)g.heap_len;
        g.heap[g.heap_len++] = c;
    }
    heap_fix(c->heap_idx);
}

/* ---- reply queues ------------------------------------------------------------------------ */

static void outq_push(struct outq *q, struct out *o)
{
    o->next = NULL;
    if (q->tail)
        q->tail->next = o;
    else
        q->head = o;
    q->tail = o;
}

static struct out *outq_pop(struct outq *q)
{
    struct out *o = q->head;
    q->head = o->next;
    if (q->head == NULL)
        q->tail = NULL;
    return o;
}

/* Frees the queued replies; returns how many there were. */
static size_t outq_drop(struct outq *q)
{
    size_t n = 0;
    while (q->head) {
        struct out *o = outq_pop(q);
        grpc_slice_unref(o->packed);
        free(o);
        n++;
    }
    return n;
}

/* ---- connection states ------------------------------------------------------------------- */

/* Fibonacci hashing: spreads ids that come in sequence, as a counter's would. */
static size_t conn_hash(uint64_t id, unsigned bits)
{
    return (size_t)((id * UINT64_C(0x9e3779b97f4a7c15)) >> (64 - bits));
}

/* The slot holding id, or the free slot where it would go. */
static size_t conn_slot(const struct stream *st, uint64_t id)
{
    size_t mask = ((size_t)1 << st->tab_bits) - 1, i = conn_hash(id, st->tab_bits);
    while (st->tab[i] != NULL && st->tab[i]->id != id)
        i = (i + 1) & mask;
    return i;
}

static void conn_table_grow(struct stream *st)
{
    struct conn **old = st->tab;
    size_t n = old ? (size_t)1 << st->tab_bits : 0;

    st->tab_bits = old ? st->tab_bits + 1 : 1;
    st->tab = xcalloc((size_t)1 << st->tab_bits, sizeof *st->tab);
    for (size_t i = 0; i < n; i++)
        if (old[i])
            st->tab[conn_slot(st, old[i]->id)] = old[i];
    free(old);
}

/* The state of connection `id` on st, made if it has none yet. */
static struct conn *conn_get(struct stream *st, uint64_t id)
{
    if (st->tab) {
        struct conn *c = st->tab[conn_slot(st, id)];
        if (c)
            return c;
    }
    if (st->tab == NULL || 2 * (st->n_conns + 1) > (size_t)1 << st->tab_bits)
        conn_table_grow(st);
    struct conn *c = xcalloc(1, sizeof *c);
    c->id = id;
    c->st = st;
    c->heap_idx = NO_HEAP;
    c->events = (uint16_t)tf.events;
    c->observe = (uint16_t)tf.observe;
    st->tab[conn_slot(st, id)] = c;
    st->n_conns++;
    return c;
}

static void conn_free(struct conn *c)
{
    heap_remove(c);
    c->st->n_waiting -= outq_drop(&c->wait);
    free(c->sid);
    free(c->echo_value);
    free(c);
}

/* Takes c out of its stream's table (backward shift: the entries after it that may sit
 * nearer their home slot move back, so lookups never need tombstones) and frees it. */
static void conn_remove(struct conn *c)
{
    struct stream *st = c->st;
    size_t mask = ((size_t)1 << st->tab_bits) - 1, i = conn_slot(st, c->id), j = i;

    st->tab[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        if (st->tab[j] == NULL)
            break;
        size_t k = conn_hash(st->tab[j]->id, st->tab_bits);
        /* tab[j] stays unless its home k is cyclically outside (i, j]. */
        if (i < j ? (k <= i || k > j) : (k <= i && k > j)) {
            st->tab[i] = st->tab[j];
            st->tab[j] = NULL;
            i = j;
        }
    }
    st->n_conns--;
    conn_free(c);
}

/* Moves c's waiting replies due by `now` to its stream's ready queue, in order. */
static void conn_release(struct conn *c, int64_t now)
{
    while (c->wait.head && c->wait.head->due <= now) {
        outq_push(&c->st->ready, outq_pop(&c->wait));
        c->st->n_waiting--;
    }
    heap_update(c);
}

static void record_close(const struct conn *c, const char *how, const char *reason)
{
    if (g.record_fd < 0)
        return;
    line_start(0, false, "close", c);
    line_kv("how", how);
    if (reason && *reason)
        line_kv("reason", reason);
    line_write();
}

/* ---- streams ----------------------------------------------------------------------------- */

static void pump(struct stream *st);

static bool stream_batch(struct stream *st, const grpc_op *ops, size_t n, struct tag *t)
{
    grpc_call_error e = grpc_call_start_batch(st->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        /* A refused batch can leave the call unusable (GRPC_CORE.md 4.4): end it. */
        fprintf(stderr, "mgw_test_filter: start_batch(kind=%d) failed: %d\n", t->kind, e);
        grpc_call_cancel(st->call, NULL);
        st->dead = true;
        return false;
    }
    st->outstanding++;
    return true;
}

/* A dead stream sends nothing more: drop every reply, ready or waiting. */
static void stream_drop_replies(struct stream *st)
{
    outq_drop(&st->ready);
    for (size_t i = 0; st->n_waiting > 0 && i < ((size_t)1 << st->tab_bits); i++) {
        struct conn *c = st->tab[i];
        if (c && c->wait.head) {
            st->n_waiting -= outq_drop(&c->wait);
            heap_remove(c);
        }
    }
}

static void stream_free(struct stream *st)
{
    for (size_t i = 0; st->tab && i < ((size_t)1 << st->tab_bits); i++)
        if (st->tab[i])
            conn_free(st->tab[i]);
    free(st->tab);
    outq_drop(&st->ready);
    if (st->recv_bb)
        grpc_byte_buffer_destroy(st->recv_bb);
    grpc_call_unref(st->call);
    free(st);
    g.live--;
}

static void stream_new(grpc_call *call)
{
    struct stream *st = xcalloc(1, sizeof *st);
    struct tag *tags[] = {&st->t_recv, &st->t_send, &st->t_sendrecv, &st->t_close, &st->t_status};
    enum tag_kind kinds[] = {TAG_RECV, TAG_SEND, TAG_SENDRECV, TAG_CLOSE, TAG_STATUS};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        *tags[i] = (struct tag){.kind = kinds[i], .owner = st};
    st->call = call;
    st->first_recv = true;
    st->serial = ++g.calls;
    /* A per-connection stream is its connection: its state exists (and its close is
     * recorded) even if no event ever comes, as before multiplexing. */
    if (!tf.multiplexed)
        conn_get(st, 0);
    g.live++;

    grpc_op close_op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    close_op.data.recv_close_on_server.cancelled = &st->cancelled;
    stream_batch(st, &close_op, 1, &st->t_close);
    pump(st);
}

/* Queues reply r of connection c, to be sent at `due`: straight to the stream's ready queue
 * when due already and nothing of c waits before it (replies of one connection keep their
 * order; those of different connections need not). Packs r at once: its storage may go. */
static void enqueue(struct conn *c, const Miltergw__V1__Reply *r, int64_t due, int64_t now)
{
    struct out *o = xcalloc(1, sizeof *o);
    o->due = due;
    o->packed = pack_slice(&r->base);
    if (c->wait.head == NULL && due <= now) {
        outq_push(&c->st->ready, o);
        return;
    }
    outq_push(&c->wait, o);
    c->st->n_waiting++;
    if (c->wait.head == o)
        heap_update(c);
}

/* The next message to send: the first ready reply alone, or (batches declared) up to
 * BATCH_MAX of them as one Reply{batch}, each element the reply as packed, after its field
 * prefix. Every element names its own session, so a batch may mix them. */
static grpc_byte_buffer *take_due(struct stream *st)
{
    grpc_slice parts[2 * BATCH_MAX + 1];
    uint8_t pre[MGW_PROTO_PREFIX_MAX];
    size_t k = 0, np = 1;
    grpc_byte_buffer *bb;

    while (st->ready.head && (k == 0 || (!tf.no_batches && k < BATCH_MAX))) {
        struct out *o = outq_pop(&st->ready);
        parts[np + 1] = o->packed;
        parts[np] = grpc_slice_from_copied_buffer(
            (const char *)pre, mgw_proto_field_prefix(pre, MGW_PROTO_REPLY_BATCH,
                                                      GRPC_SLICE_LENGTH(o->packed)));
        np += 2;
        k++;
        free(o);
    }
    if (k == 1) {
        bb = grpc_raw_byte_buffer_create(&parts[2], 1);
        grpc_slice_unref(parts[1]);
        grpc_slice_unref(parts[2]);
        return bb;
    }
    /* A Reply whose only field is `batch`: the elements back to back. */
    bb = grpc_raw_byte_buffer_create(parts + 1, np - 1);
    for (size_t i = 1; i < np; i++)
        grpc_slice_unref(parts[i]);
    return bb;
}

/* Starts {SEND_MESSAGE(ready replies)}, {RECV_MESSAGE} or both in one batch. */
static void start_io(struct stream *st, bool send, bool recv)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (recv && st->first_recv) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        st->first_recv = false;
    }
    if (send) {
        st->send_bb = take_due(st);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = st->send_bb;
    }
    if (recv) {
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &st->recv_bb;
    }
    struct tag *t = send && recv ? &st->t_sendrecv : send ? &st->t_send : &st->t_recv;
    if (stream_batch(st, ops, n, t)) {
        /* A receive started while a send is in flight leaves that send busy. */
        st->send_busy = st->send_busy || send;
        st->recv_armed = st->recv_armed || recv;
    } else if (send) {
        grpc_byte_buffer_destroy(st->send_bb);
        st->send_bb = NULL;
    }
}

/*
 * Starts whatever the stream can do now: arm the receive, send the ready replies (with the
 * receive in one batch when possible), send the status once the client half-closed and no
 * reply is left, and free the stream when all is done. The connections' timers (the heap)
 * move replies to `ready` when they fall due.
 */
static void pump(struct stream *st)
{
    bool want_recv = !st->recv_armed && !st->recv_done && !st->dead;
    bool can_send = !st->send_busy && !st->dead && st->ready.head;

    /* A combined batch completes only when the next event arrives, so it may carry only the
     * last reply there is: one behind it, ready or waiting (e.g. the final answer after a
     * PROGRESS, or another session's delayed answer), would wait for an event the gateway
     * may send only after getting that answer. */
    if (can_send && want_recv && st->ready.head->next == NULL && st->n_waiting == 0) {
        start_io(st, true, true);
    } else {
        if (want_recv)
            start_io(st, false, true);
        if (can_send && !st->dead)
            start_io(st, true, false);
    }
    if (st->dead)
        stream_drop_replies(st);

    if ((st->recv_done || st->dead) && !st->ready.head && st->n_waiting == 0 && !st->send_busy &&
        !st->status_started) {
        grpc_op op = {.op = GRPC_OP_SEND_STATUS_FROM_SERVER};
        static grpc_slice details;
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        if (st->failed) {
            details = grpc_slice_from_static_string(tf.fail_details);
            op.data.send_status_from_server.status = (grpc_status_code)tf.fail_code;
            op.data.send_status_from_server.status_details = &details;
        }
        st->status_started = true;
        stream_batch(st, &op, 1, &st->t_status);
    }
    if (st->status_started && st->outstanding == 0)
        stream_free(st);
}

static Miltergw__V1__Verdict decide(unsigned st, const Miltergw__V1__Event *ev)
{
    unsigned bit = TF_BIT(st);
    if (st == TF_RCPT) {
        for (size_t i = 0; i < tf.n_reject_rcpt; i++)
            if (tf_addr_match(ev->rcpt->address, tf.reject_rcpt[i]))
                return MILTERGW__V1__VERDICT__VERDICT_REJECT;
        for (size_t i = 0; i < tf.n_tempfail_rcpt; i++)
            if (tf_addr_match(ev->rcpt->address, tf.tempfail_rcpt[i]))
                return MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL;
    }
    if (tf.discard_at & bit)
        return MILTERGW__V1__VERDICT__VERDICT_DISCARD;
    if (tf.reject_at & bit)
        return MILTERGW__V1__VERDICT__VERDICT_REJECT;
    if (tf.tempfail_at & bit)
        return MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL;
    if (tf.accept_at & bit)
        return MILTERGW__V1__VERDICT__VERDICT_ACCEPT;
    if (st == TF_BODY && tf.skip_body)
        return MILTERGW__V1__VERDICT__VERDICT_SKIP;
    return MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
}

/* Stage of an event, or -1 for SessionStart, Abort, SessionEnd and unknown kinds. */
static int event_stage(const Miltergw__V1__Event *ev, const char **kind)
{
    static const struct {
        Miltergw__V1__Event__EventCase c;
        int stage;
        const char *kind;
    } map[] = {
        {MILTERGW__V1__EVENT__EVENT_START, -1, "start"},
        {MILTERGW__V1__EVENT__EVENT_CONNECT, TF_CONNECT, "connect"},
        {MILTERGW__V1__EVENT__EVENT_HELO, TF_HELO, "helo"},
        {MILTERGW__V1__EVENT__EVENT_MAIL, TF_MAIL, "mail"},
        {MILTERGW__V1__EVENT__EVENT_RCPT, TF_RCPT, "rcpt"},
        {MILTERGW__V1__EVENT__EVENT_DATA, TF_DATA, "data"},
        {MILTERGW__V1__EVENT__EVENT_HEADER, TF_HEADER, "header"},
        {MILTERGW__V1__EVENT__EVENT_EOH, TF_EOH, "eoh"},
        {MILTERGW__V1__EVENT__EVENT_BODY, TF_BODY, "body"},
        {MILTERGW__V1__EVENT__EVENT_EOM, TF_EOM, "eom"},
        {MILTERGW__V1__EVENT__EVENT_ABORT, -1, "abort"},
        {MILTERGW__V1__EVENT__EVENT_UNKNOWN, TF_UNKNOWN, "unknown"},
        {MILTERGW__V1__EVENT__EVENT_END, -1, "end"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (map[i].c == ev->event_case) {
            *kind = map[i].kind;
            return map[i].stage;
        }
    *kind = "invalid";
    return -1;
}

/*
 * Event.end: the session is over. Its replies still waiting go out at once (they were in
 * flight, so to speak; the gateway ignores replies for an ended session, and sending them
 * checks that it does), then its state goes.
 */
static void on_end(struct conn *c, const Miltergw__V1__Event *ev)
{
    record_close(c, "end", ev->end ? ev->end->reason : NULL);
    conn_release(c, INT64_MAX);
    conn_remove(c);
}

static void on_event(struct stream *st, const Miltergw__V1__Event *ev)
{
    const char *kind;
    int stage = event_stage(ev, &kind);
    /* A per-connection stream has one state whatever Event.session says; a multiplexed
     * one given session 0 (a gateway that does not multiplex) treats it as one more key. */
    struct conn *c = conn_get(st, tf.multiplexed ? ev->session : 0);

    if (ev->event_case == MILTERGW__V1__EVENT__EVENT_END) {
        on_end(c, ev);
        return;
    }
    if (ev->event_case == MILTERGW__V1__EVENT__EVENT_START) {
        const Miltergw__V1__Description *eff = ev->start->effective;
        free(c->sid);
        c->sid = strdup(ev->start->session_id);
        if (eff) {
            unsigned observe = tf_stage_mask(eff->observe_only, eff->n_observe_only, false);
            c->events = (uint16_t)tf_stage_mask(eff->events, eff->n_events, true);
            c->observe = (uint16_t)(observe & c->events);
        }
    }
    record_event(c, ev, kind);
    if (tf.echo_name && (stage == TF_MAIL || ev->event_case == MILTERGW__V1__EVENT__EVENT_ABORT)) {
        free(c->echo_value);
        c->echo_value = NULL;
    }
    if (tf.echo_name && stage == TF_HEADER && strcasecmp(ev->header->name, tf.echo_src) == 0) {
        free(c->echo_value);
        c->echo_len = (uint32_t)ev->header->value.len;
        c->echo_value = xcalloc(1, (size_t)c->echo_len + 1);
        if (c->echo_len)
            memcpy(c->echo_value, ev->header->value.data, c->echo_len);
    }
    if (stage < 0)
        return; /* SessionStart, Abort: never answered */

    unsigned bit = TF_BIT((unsigned)stage);
    if (stage == TF_MAIL && tf.n_only_from > 0) {
        c->from_match = false;
        for (size_t i = 0; i < tf.n_only_from; i++)
            if (tf_addr_match(ev->mail->address, tf.only_from[i]))
                c->from_match = true;
    }
    if (tf.crash_at & bit)
        _exit(CRASH_EXIT);
    if (tf.fail_at & bit) {
        /* The whole call, with every session on it: what a broken filter stream does. */
        st->failed = st->dead = true;
        return;
    }
    if (tf.never_at & bit)
        c->silent = true;
    if (c->silent || !(c->events & bit) || (c->observe & bit))
        return;

    /* --only-from: a message not from a listed sender gets plain CONTINUE, at once. */
    bool applies = tf.n_only_from == 0 || c->from_match;
    int64_t now = now_ns();
    Miltergw__V1__Reply r = MILTERGW__V1__REPLY__INIT;
    r.session = ev->session;
    if (applies && tf.progress && stage == TF_EOM) {
        r.event_id = ev->event_id;
        r.verdict = MILTERGW__V1__VERDICT__VERDICT_PROGRESS;
        enqueue(c, &r, now, now);
    }
    bool bogus = (tf.bogus_at & bit) || atomic_load(&g_ctl_bogus);
    r.event_id = ev->event_id + (bogus ? BOGUS_ID_OFFSET : 0);
    r.verdict = applies ? decide((unsigned)stage, ev) : MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
    if (tf.has_response && (r.verdict == MILTERGW__V1__VERDICT__VERDICT_REJECT ||
                            r.verdict == MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL))
        r.response = &tf.response;
    Miltergw__V1__Modification *mods[TF_MAX_LIST + 1];
    Miltergw__V1__Modification echo = MILTERGW__V1__MODIFICATION__INIT;
    Miltergw__V1__AddHeader echo_hdr = MILTERGW__V1__ADD_HEADER__INIT;
    if (applies && stage == TF_EOM) {
        memcpy(mods, tf.mod_ptrs, tf.n_mods * sizeof mods[0]);
        r.n_modifications = tf.n_mods;
        r.modifications = mods;
        if (tf.echo_name && c->echo_value) {
            echo_hdr.name = (char *)tf.echo_name;
            echo_hdr.value.data = (uint8_t *)c->echo_value;
            echo_hdr.value.len = c->echo_len;
            echo.modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER;
            echo.add_header = &echo_hdr;
            mods[r.n_modifications++] = &echo;
        }
    }
    int64_t delay = (applies && (tf.delay_at & bit)) ? (int64_t)tf.delay_ms * 1000000 : 0;
    delay += (int64_t)atomic_load(&g_ctl_delay_ms) * 1000000;
    enqueue(c, &r, now + delay, now);
    if (tf.twice_at & bit)
        enqueue(c, &r, now + delay, now);
    if (stage == TF_EOM && c->echo_value) {
        free(c->echo_value);
        c->echo_value = NULL;
    }
}

static void on_recv(struct stream *st, int ok)
{
    st->recv_armed = false;
    if (!ok || st->recv_bb == NULL) {
        /* A NULL message with ok=1 is also how an error (e.g. the client's cancel) ends. */
        bool failed = !ok || grpc_call_failed_before_recv_message(st->call);
        /* Every connection still open ends with the call (on a multiplexed stream,
         * normally none: each had its Event.end before the half-close). */
        for (size_t i = 0; !st->recv_done && st->tab && i < ((size_t)1 << st->tab_bits); i++)
            if (st->tab[i])
                record_close(st->tab[i], failed ? "cancelled" : "halfclose", NULL);
        st->recv_done = true;
        if (failed)
            st->dead = true;
        return;
    }
    Miltergw__V1__Event *ev =
        (Miltergw__V1__Event *)unpack_bb(&miltergw__v1__event__descriptor, st->recv_bb);
    grpc_byte_buffer_destroy(st->recv_bb);
    st->recv_bb = NULL;
    if (ev == NULL) {
        fputs("mgw_test_filter: undecodable Event; ending the stream\n", stderr);
        grpc_call_cancel_with_status(st->call, GRPC_STATUS_INVALID_ARGUMENT, "bad Event", NULL);
        st->dead = true;
        st->recv_done = true;
        return;
    }
    if (ev->event_case == MILTERGW__V1__EVENT__EVENT_BATCH) {
        char n[24];

        snprintf(n, sizeof n, "%zu", ev->batch->n_events);
        st->in_batch = n;
        for (size_t i = 0; i < ev->batch->n_events; i++)
            on_event(st, ev->batch->events[i]);
        st->in_batch = NULL;
    } else {
        on_event(st, ev);
    }
    protobuf_c_message_free_unpacked(&ev->base, NULL);
}

static void on_stream_tag(struct tag *t, int ok)
{
    struct stream *st = t->owner;
    st->outstanding--;
    switch (t->kind) {
    case TAG_RECV: on_recv(st, ok); break;
    case TAG_SENDRECV:
    case TAG_SEND:
        st->send_busy = false;
        grpc_byte_buffer_destroy(st->send_bb);
        st->send_bb = NULL;
        if (t->kind == TAG_SENDRECV)
            on_recv(st, ok);
        else if (!ok)
            st->dead = true;
        break;
    default: /* TAG_CLOSE, TAG_STATUS: nothing to do but count */
        if (t->kind == TAG_CLOSE && st->cancelled)
            st->dead = true;
        break;
    }
    pump(st);
}

/* ---- unary answers ----------------------------------------------------------------------- */

static void unary_answer(grpc_call *call, grpc_byte_buffer *bb, grpc_status_code status,
                         const char *details)
{
    struct unary *u = xcalloc(1, sizeof *u);
    grpc_slice det = grpc_slice_from_static_string(details);
    grpc_op ops[4];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    u->tag = (struct tag){.kind = TAG_UNARY_DONE, .owner = u};
    u->call = call;
    u->bb = bb;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = status;
    ops[n++].data.send_status_from_server.status_details = &det;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &u->cancelled;
    g.live++;
    grpc_call_error e = grpc_call_start_batch(call, ops, n, &u->tag, NULL);
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "mgw_test_filter: unary start_batch failed: %d\n", e);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        grpc_call_unref(call);
        free(u);
        g.live--;
    }
}

static void unary_done(struct unary *u)
{
    if (u->bb)
        grpc_byte_buffer_destroy(u->bb);
    grpc_call_unref(u->call);
    free(u);
    g.live--;
}

static void describe(grpc_call *call, grpc_byte_buffer *payload)
{
    Miltergw__V1__DescribeRequest *req = NULL;
    if (payload) {
        req = (Miltergw__V1__DescribeRequest *)unpack_bb(
            &miltergw__v1__describe_request__descriptor, payload);
        grpc_byte_buffer_destroy(payload);
    }
    if (g.record_fd >= 0) {
        line_start(0, false, "describe", NULL);
        line_kv("gateway", req ? req->gateway_version : NULL);
        line_kv("filter", req ? req->filter_name : NULL);
        line_write();
    }
    if (req)
        protobuf_c_message_free_unpacked(&req->base, NULL);

    Miltergw__V1__Description d;
    Miltergw__V1__EventType events[TF_NSTAGES], observe[TF_NSTAGES];
    Miltergw__V1__Action actions[32];
    tf_describe(&d, events, observe, actions);
    unary_answer(call, pack_bb(&d.base), GRPC_STATUS_OK, "");
}

/* ---- grpc.health.v1.Health: Check and Watch, for client-side health checking ----------- */

/* HealthCheckResponse{status}: field 1, varint. The request (a service name) is not read:
 * this server answers the same for every service. */
static grpc_byte_buffer *health_response(int status)
{
    uint8_t b[2] = {0x08, (uint8_t)status};
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)b, sizeof b);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

    grpc_slice_unref(s);
    return bb;
}

static void watch_send(struct watch *w)
{
    grpc_op ops[2];
    size_t n = 0;
    int status = atomic_load(&g_ctl_health);

    if (w->send_bb != NULL || w->closed || w->sent_status == status)
        return;
    memset(ops, 0, sizeof ops);
    if (!w->metadata_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        w->metadata_sent = true;
    }
    w->send_bb = health_response(status);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = w->send_bb;
    if (grpc_call_start_batch(w->call, ops, n, &w->t_send, NULL) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(w->send_bb);
        w->send_bb = NULL;
        return;
    }
    w->sent_status = status;
    w->outstanding++;
    printf("health watch sent status=%d\n", status); /* tests wait for it */
    fflush(stdout);
}

static void watch_new(grpc_call *call)
{
    struct watch *w = xcalloc(1, sizeof *w);
    grpc_op op;

    w->t_send = (struct tag){.kind = TAG_WATCH_SEND, .owner = w};
    w->t_close = (struct tag){.kind = TAG_WATCH_CLOSE, .owner = w};
    w->call = call;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &w->cancelled;
    if (grpc_call_start_batch(call, &op, 1, &w->t_close, NULL) != GRPC_CALL_OK) {
        grpc_call_unref(call);
        free(w);
        return;
    }
    w->outstanding = 1;
    w->next = g.watches;
    g.watches = w;
    g.live++;
    watch_send(w);
}

static void on_watch_tag(struct tag *t, int ok)
{
    struct watch *w = t->owner, **pp;

    w->outstanding--;
    if (t->kind == TAG_WATCH_SEND) {
        grpc_byte_buffer_destroy(w->send_bb);
        w->send_bb = NULL;
        if (!ok)
            w->closed = true;
        else
            watch_send(w); /* the status may have changed meanwhile */
    } else {
        w->closed = true;
    }
    if (w->outstanding > 0)
        return;
    for (pp = &g.watches; *pp != w; pp = &(*pp)->next)
        ;
    *pp = w->next;
    grpc_call_unref(w->call);
    free(w);
    g.live--;
}

static void health_update(void)
{
    for (struct watch *w = g.watches; w != NULL; w = w->next)
        watch_send(w);
}

/* ---- new calls --------------------------------------------------------------------------- */

static void post_request(struct request *r)
{
    grpc_call_error e;
    r->call = NULL;
    r->payload = NULL;
    grpc_metadata_array_init(&r->md);
    switch (r->tag.kind) {
    case TAG_NEW_SESSION:
        e = grpc_server_request_registered_call(g.server, g.m_session, &r->call, &r->deadline,
                                                &r->md, NULL, g.cq, g.cq, &r->tag);
        break;
    case TAG_NEW_DESCRIBE:
        e = grpc_server_request_registered_call(g.server, g.m_describe, &r->call, &r->deadline,
                                                &r->md, &r->payload, g.cq, g.cq, &r->tag);
        break;
    default:
        grpc_call_details_init(&r->details);
        e = grpc_server_request_call(g.server, &r->call, &r->details, &r->md, g.cq, g.cq, &r->tag);
        break;
    }
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "mgw_test_filter: request_call failed: %d\n", e);
        grpc_metadata_array_destroy(&r->md);
        if (r->tag.kind == TAG_NEW_GENERIC)
            grpc_call_details_destroy(&r->details);
        return;
    }
    g.pending_requests++;
}

static void on_new_call(struct request *r, int ok)
{
    g.pending_requests--;
    grpc_metadata_array_destroy(&r->md); /* we read no metadata */
    if (ok) {
        switch (r->tag.kind) {
        case TAG_NEW_SESSION: stream_new(r->call); break;
        case TAG_NEW_DESCRIBE: describe(r->call, r->payload); break;
        default:
            if (grpc_slice_str_cmp(r->details.method, "/grpc.health.v1.Health/Watch") == 0)
                watch_new(r->call);
            else if (grpc_slice_str_cmp(r->details.method, "/grpc.health.v1.Health/Check") == 0)
                unary_answer(r->call, health_response(atomic_load(&g_ctl_health)),
                             GRPC_STATUS_OK, "");
            else
                unary_answer(r->call, NULL, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
            break;
        }
    } else if (r->payload) {
        grpc_byte_buffer_destroy(r->payload);
    }
    if (r->tag.kind == TAG_NEW_GENERIC)
        grpc_call_details_destroy(&r->details);
    /* After shutdown began, requests complete with ok=0; do not post them again. */
    if (ok && !atomic_load(&g_stop))
        post_request(r);
}

/* ---- main loop, signals, setup ----------------------------------------------------------- */

static void fire_timers(void)
{
    int64_t now = now_ns();
    while (g.heap_len > 0 && heap_due(0) <= now) {
        struct stream *st = g.heap[0]->st;
        conn_release(g.heap[0], now); /* leaves it nothing due: the loop moves on */
        pump(st);
    }
}

static void run(void)
{
    for (;;) {
        if (g.shutdown_seen && !g.cq_shutdown && g.live == 0 && g.pending_requests == 0) {
            grpc_completion_queue_shutdown(g.cq);
            g.cq_shutdown = true;
        }
        gpr_timespec deadline =
            g.heap_len ? ns_to_timespec(heap_due(0)) : gpr_inf_future(GPR_CLOCK_MONOTONIC);
        /* A health change comes from the signal thread: open watches look every 50 ms. */
        if (g.watches != NULL && gpr_time_cmp(deadline, ns_to_timespec(now_ns() + 50000000)) > 0)
            deadline = ns_to_timespec(now_ns() + 50000000);
        grpc_event ev = grpc_completion_queue_next(g.cq, deadline, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
            g.cq_drained = true;
            return;
        }
        if (ev.type == GRPC_OP_COMPLETE) {
            struct tag *t = ev.tag;
            switch (t->kind) {
            case TAG_NEW_SESSION:
            case TAG_NEW_DESCRIBE:
            case TAG_NEW_GENERIC: on_new_call(t->owner, ev.success); break;
            case TAG_UNARY_DONE: unary_done(t->owner); break;
            case TAG_SHUTDOWN: g.shutdown_seen = true; break;
            case TAG_WATCH_SEND:
            case TAG_WATCH_CLOSE: on_watch_tag(t, ev.success); break;
            default: on_stream_tag(t, ev.success); break;
            }
        }
        fire_timers();
        health_update();
    }
}

/* --control: read the control file (on SIGUSR1, in the signal thread). Unknown words are
 * reported and ignored; a missing file leaves the settings as they are. */
static void read_control(void)
{
    char buf[512];
    FILE *f = fopen(tf.control, "r");
    if (f == NULL) {
        fprintf(stderr, "mgw_test_filter: --control %s: %s\n", tf.control, strerror(errno));
        return;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    unsigned delay = atomic_load(&g_ctl_delay_ms);
    bool bogus = atomic_load(&g_ctl_bogus);
    int health = atomic_load(&g_ctl_health);
    char *save = NULL;
    for (char *w = strtok_r(buf, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
        if (strncmp(w, "delay-ms=", 9) == 0)
            delay = (unsigned)strtoul(w + 9, NULL, 10);
        else if (strncmp(w, "bogus=", 6) == 0)
            bogus = strtoul(w + 6, NULL, 10) != 0;
        else if (strcmp(w, "health=serving") == 0)
            health = 1;
        else if (strcmp(w, "health=not-serving") == 0)
            health = 2;
        else
            fprintf(stderr, "mgw_test_filter: --control: unknown word \"%s\"\n", w);
    }
    atomic_store(&g_ctl_delay_ms, delay);
    atomic_store(&g_ctl_bogus, bogus);
    atomic_store(&g_ctl_health, health);
    printf("control delay-ms=%u bogus=%d health=%s\n", delay, bogus ? 1 : 0,
           health == 1 ? "serving" : "not-serving");
    fflush(stdout);
}

static void *signal_main(void *arg)
{
    int sig;
    for (;;) {
        if (sigwait(arg, &sig) != 0)
            continue;
        if (sig == SIGUSR1) {
            read_control();
            continue;
        }
        break;
    }
    atomic_store(&g_stop, 1);
    grpc_server_shutdown_and_notify(g.server, g.cq, &g.shutdown_tag);
    grpc_server_cancel_all_calls(g.server);
    return NULL;
}

static void teardown(void)
{
    if (g.server)
        grpc_server_destroy(g.server);
    if (!g.cq_shutdown)
        grpc_completion_queue_shutdown(g.cq);
    while (!g.cq_drained)
        g.cq_drained =
            grpc_completion_queue_next(g.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type ==
            GRPC_QUEUE_SHUTDOWN;
    grpc_completion_queue_destroy(g.cq);
    grpc_shutdown_blocking();
    free(g.heap);
    free(line.p);
    if (g.record_fd >= 0)
        close(g.record_fd);
    tf_opts_free();
}

/* The whole of a PEM file as a NUL-terminated string (malloc'd), or NULL with a message. */
static char *read_pem(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL) {
        fprintf(stderr, "mgw_test_filter: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    do {
        if (cap - len < 4096) {
            cap = cap ? 2 * cap : 8192;
            char *p = realloc(buf, cap);
            if (p == NULL)
                abort();
            buf = p;
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    if (ferror(f)) {
        fprintf(stderr, "mgw_test_filter: %s: read error\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

/* Server TLS from --tls-cert/--tls-key, with --tls-client-ca: mutual TLS (a client
 * certificate is required and verified against those roots). NULL if a file is unusable;
 * bad PEM contents show up as a handshake failure. */
static grpc_server_credentials *tls_credentials(void)
{
    char *cert = read_pem(tf.tls_cert);
    char *key = cert ? read_pem(tf.tls_key) : NULL;
    char *roots = key && tf.tls_client_ca ? read_pem(tf.tls_client_ca) : NULL;
    grpc_server_credentials *creds = NULL;

    if (cert && key && (roots || !tf.tls_client_ca)) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        /* The config copies the strings. */
        grpc_ssl_server_certificate_config *cfg =
            grpc_ssl_server_certificate_config_create(roots, &pair, 1);
        grpc_ssl_server_credentials_options *o =
            grpc_ssl_server_credentials_create_options_using_config(
                roots ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                      : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
                cfg);
        creds = grpc_ssl_server_credentials_create_with_options(o);
        if (creds == NULL)
            fputs("mgw_test_filter: cannot make TLS server credentials\n", stderr);
    }
    free(cert);
    free(key);
    free(roots);
    return creds;
}

int main(int argc, char **argv)
{
    static sigset_t sigs;
    pthread_t sig_thread;

    tf_opts_parse(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    if (tf.control)
        sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* before grpc_init: its threads inherit it */

    if (tf.record) {
        g.record_fd = open(tf.record, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (g.record_fd < 0) {
            fprintf(stderr, "mgw_test_filter: %s: %s\n", tf.record, strerror(errno));
            return 1;
        }
    }

    grpc_init();
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = 64 << 20},
        /* Let the gateway's keepalive pings through (default minimum: 5 minutes). */
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
         .value.integer = 1000},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_MAX_PING_STRIKES, .value.integer = 0},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
         .value.integer = 1},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof args[0], .args = args};
    g.server = grpc_server_create(&chargs, NULL);
    g.m_session = grpc_server_register_method(g.server, "/miltergw.v1.Filter/Session", NULL,
                                              GRPC_SRM_PAYLOAD_NONE, 0);
    g.m_describe = grpc_server_register_method(g.server, "/miltergw.v1.Filter/Describe", NULL,
                                               GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    g.cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(g.server, g.cq, NULL);

    grpc_server_credentials *creds = tf.tls_cert ? tls_credentials() : NULL;
    if (tf.tls_cert != NULL && creds == NULL) {
        teardown();
        return 1;
    }
    if (creds == NULL)
        creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(g.server, tf.listen, creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        fprintf(stderr, "mgw_test_filter: cannot listen on %s\n", tf.listen);
        teardown();
        return 1;
    }
    grpc_server_start(g.server);

    for (size_t i = 0; i < N_REQ; i++) {
        struct request *r = &g.reqs[i];
        r->tag.owner = r;
        r->tag.kind = i < N_REQ_SESSION                    ? TAG_NEW_SESSION
                      : i < N_REQ_SESSION + N_REQ_DESCRIBE ? TAG_NEW_DESCRIBE
                                                           : TAG_NEW_GENERIC;
        post_request(r);
    }
    g.shutdown_tag.kind = TAG_SHUTDOWN;

    printf("port=%d\n", strncmp(tf.listen, "unix:", 5) == 0 ? 0 : port);
    fflush(stdout);

    if (pthread_create(&sig_thread, NULL, signal_main, &sigs) != 0) {
        fputs("mgw_test_filter: cannot start the signal thread\n", stderr);
        abort();
    }
    run();
    pthread_join(sig_thread, NULL);
    teardown();
    return 0;
}
