/*
 * mgw_filter_int.h - what the files of the mgw_filter.h library share. Private: not
 * installed, and not for filters to include.
 * SPDX-License-Identifier: Apache-2.0
 *
 * The library is three files around one server state (mgw_g):
 *   - mgw_filter.c, the server: setup, the workers and their completion queue, new calls,
 *     the unary answers (Describe, health Check, UNIMPLEMENTED), health Watch, the drain
 *     and shutdown;
 *   - mgw_session.c, the streams and their sessions: a Session (or reflection) call from
 *     its first batch to its last, the session (or, multiplexed, sessions) it carries,
 *     on_event, replies in order, session threads;
 *   - mgw_reply.c, the events and replies the callback reads and builds (protobuf-c only).
 * The server hands each stream its completions (mgw_session_tag); a completion's tag says
 * which kind of batch it was and whose.
 *
 * Names with external linkage are mgw_*: these objects also go into libmiltergw-milter.a,
 * which unchanged milters link, and a plain name (a global `g`) could collide with one of
 * theirs. For the same reason the small helpers below are static inline.
 */
#ifndef MGW_FILTER_INT_H
#define MGW_FILTER_INT_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/slice.h>

#include "mgw_filter.h"

#define N_REQ_SESSION  16
#define N_REQ_DESCRIBE 4
#define N_REQ_OTHER    2
#define N_REQ_HEALTH   2 /* each of Check and Watch */
#define N_REQ_REFL     2 /* per reflection version */
#define N_REQ \
    (N_REQ_SESSION + N_REQ_DESCRIBE + N_REQ_OTHER + 2 * N_REQ_HEALTH + 2 * N_REQ_REFL)
#define MAX_LINES      32 /* SMTP reply lines, the proto's limit */

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

struct mgw_reply {
    Miltergw__V1__Reply msg;
    Miltergw__V1__SmtpResponse resp;
    char *text; /* owned; split in place into lines */
    char *lines[MAX_LINES];
    size_t mods_cap;
};

struct watch; /* a health Watch stream (mgw_filter.c) */

/* The server's state: one per process (mgw_filter_run() is called once); mgw_filter.c
 * defines it. */
struct server {
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
};
extern struct server mgw_g;

static inline void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fputs("mgw_filter: out of memory\n", stderr);
        abort();
    }
    return p;
}

static inline char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xcalloc(1, n), s, n);
}

/* ---- protobuf-c <-> grpc_byte_buffer ---------------------------------------------------- */

static inline grpc_byte_buffer *pack(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static inline grpc_slice bb_bytes(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return grpc_empty_slice();
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return sl;
}

static inline grpc_byte_buffer *bb_from(uint8_t *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    free(data);
    return bb;
}

/* mgw_reply.c: frees what the mgw_reply_*() calls allocated, not r itself. */
void mgw_reply_clear(struct mgw_reply *r);

/* mgw_session.c. */
/* The events to answer: Describe's default (mgw_g.answer), or SessionStart.effective's. */
unsigned mgw_answer_mask(const Miltergw__V1__EventType *ev, size_t n_ev,
                         const Miltergw__V1__EventType *obs, size_t n_obs);
/* A new stream on `call` (owned from now on): a Session, or a reflection stream. */
void mgw_session_new(grpc_call *call, bool reflection);
/* A completion of a stream's batch: TAG_RECV, TAG_SEND, TAG_CLOSE or TAG_STATUS. */
void mgw_session_tag(struct tag *t, int ok);

#endif
