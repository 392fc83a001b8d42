/*
 * filter_stream.h - one Session call to one filter for one MTA connection: the transport
 * under the bridge (backend_grpc.c, bridge_answer.c), which does the per-event bookkeeping
 * on top.
 *
 * The call is made at start (the bridge starts it before the filter's first event; until
 * then only what was queued, the SessionStart, waits). At most one SEND_MESSAGE is in
 * flight, with an outbound queue behind it, bounded in bytes (max_queue); a carrier with
 * nothing in flight sends at the end of the loop's turn, so that what the turn's sessions
 * queued goes as one (filter_stream.c, send_soon). A filter that declared batches gets
 * what queued up meanwhile as one EventBatch, built from the events as packed. RECV_STATUS
 * is armed from the start, and one RECV_MESSAGE while replies are owed (a carrier's:
 * always); a stream of its own that owes none receives again with its next send that owes
 * one, in the same batch when the MTA then waits for that reply (no send completion of its
 * own, and re-arming's flow-control update goes out with the event: filter_stream.c,
 * send_next). One timer covers the nearest deadline: the oldest owed reply (owed.h, kept
 * by the bridge), the send in flight (a filter that takes no event within its timeout,
 * e.g. a channel stuck connecting, fails too), and, once detached, the linger of a
 * half-closed stream. Back-pressure: a non-shadow stream more than half its max_queue
 * behind asks its owner to hold the MTA connection's reading until it is back under a
 * quarter.
 *
 * Lifetime: completions arrive in any order, so the stream counts its outstanding
 * batches and frees itself once it is detached and the count is 0. The owner's own state
 * follows the transport in the same allocation (`size` at open), so it lives exactly as
 * long. Everything runs on the loop thread of the pump's base.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_STREAM_H
#define MGW_FILTER_STREAM_H

#ifdef MGW_CORE
#error "filter_stream.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "miltergw/v1/filter.pb-c.h"
#include "mgw/filter_link.h"
#include "mgw/grpc_pump.h"
#include "mgw/owed.h"

struct event_base;
struct event;
struct mgw_filter_stream;

/* The owner's side. Each runs on the loop thread; `failed` is not called again once the
 * stream is broken. */
struct mgw_filter_stream_hooks {
    /* A Reply arrived (the owner takes it over). */
    void (*reply)(struct mgw_filter_stream *st, Miltergw__V1__Reply *r);
    /* The stream cannot go on: reason is a metrics.h error kind name ("timeout",
     * "queue_full", "stream_broken", "stream_closed", "unavailable", "out_of_contract").
     * The owner calls mgw_filter_stream_break() (at once or after looking at `owed`). */
    void (*failed)(struct mgw_filter_stream *st, const char *reason, const char *detail);
    /* Hold (1) or release (0) the MTA connection's reading. */
    void (*flow)(struct mgw_filter_stream *st, int hold);
};

struct mgw_filter_mux;

/* Every stream of one bridge, for shutdown; and the carriers taking new members. */
struct mgw_filter_streams {
    TAILQ_HEAD(, mgw_filter_stream) all;
    TAILQ_HEAD(, mgw_filter_mux) carriers;
    /* Carriers whose first event waits for the end of the loop's turn (send_soon). */
    TAILQ_HEAD(, mgw_filter_stream) flushing;
    struct event *flush_ev; /* made at the first such wait */
    int shutting_down;
};

/* A stream has its own call, or (a filter that declared `multiplexed`) is one session
 * on a call shared with other MTA connections' sessions, its carrier (filter_mux.h). */
enum mgw_stream_role {
    MGW_STREAM_OWN,     /* its own call (or milter connection) */
    MGW_STREAM_MEMBER,  /* a session on a carrier: no call of its own */
    MGW_STREAM_CARRIER, /* the shared call: every Event it sends names its session */
};

/* An event waiting for the send slot; `session` is set on a carrier's (0: none). */
struct mgw_stream_queued {
    grpc_slice msg;
    uint64_t session;
};

struct mgw_filter_stream {
    /* Read by the owner. */
    const struct mgw_filter_link *link;
    uint64_t sid;              /* of the MTA connection, for logs after it let go */
    int batching;              /* the filter's Description.batches when the stream opened */
    int started, broken;       /* the call was made (or failed fast); the stream failed */
    int attached;              /* the MTA connection holds it */
    int reached;               /* the filter took a message: the call got through */
    struct mgw_owed_fifo owed; /* kept by the owner; its front's deadline is armed here */
    /* Set by the owner before it breaks the stream: why (a metrics.h error kind), told to
     * a multiplexed filter in the session's SessionEnd. */
    const char *fail_reason;

    /* Private. */
    const struct mgw_filter_stream_hooks *hooks;
    struct mgw_filter_streams *set;
    struct mgw_grpc_pump *pump;
    uint64_t linger_due_ms; /* once detached: when a half-closed stream is cancelled */
    grpc_call *call;
    int batches; /* outstanding: the stream is freed at 0 once detached */
    struct mgw_grpc_tag recv_tag, send_tag, status_tag, close_tag;
    grpc_byte_buffer *recv_buf;
    grpc_metadata_array md_initial, md_trailing;
    grpc_status_code status;
    grpc_slice status_details;
    enum mgw_stream_role role;
    struct mgw_filter_mux *mux; /* a member's carrier while it is on one */
    unsigned sessions;          /* a carrier's members: its max_queue is per session */
    int lingering; /* a detached member still owed replies: held on its carrier */
    struct mgw_stream_queued *queue; /* packed events waiting for the send slot */
    size_t nqueue, capqueue;
    grpc_byte_buffer *sending;
    size_t queued_bytes;  /* in queue[] and sending */
    size_t sending_len;   /* of `sending`, taken at the start: gRPC empties the buffer */
    uint64_t send_due_ms; /* deadline of the send in flight; 0 = none */
    /* A stream of its own keeps no receive armed while it owes no reply (recv_idle); the
     * next send that owes one carries it (sending_recv when in the same batch). */
    int recv_idle, sending_recv;
    int initial_sent, close_wanted, close_sent, finished;
    int flow_held;
    struct event_base *base;
    struct event *timer; /* NULL while no deadline is armed */
    struct mgw_milter_conn *milter; /* kind=milter: its connection (milter_client.h) */
    TAILQ_ENTRY(mgw_filter_stream) entry;
    int flush_pending; /* in the set's flushing list, held (batches) until flushed */
    TAILQ_ENTRY(mgw_filter_stream) flush_entry;
};

/* A detached-from-nothing stream, no call yet, of `size` >= sizeof(struct
 * mgw_filter_stream) zeroed bytes (the owner's state after the transport). */
struct mgw_filter_stream *mgw_filter_stream_open(size_t size, const struct mgw_filter_link *link,
                                                 struct mgw_grpc_pump *pump,
                                                 struct event_base *base, uint64_t sid,
                                                 const struct mgw_filter_stream_hooks *hooks,
                                                 struct mgw_filter_streams *set);

/* Make the call (once; a channel in TRANSIENT_FAILURE gets none: the stream is broken at
 * once, with a "filter unavailable" line). */
void mgw_filter_stream_start(struct mgw_filter_stream *st);

/* Queue one packed message, taking over the caller's reference; past max_queue the
 * stream fails ("queue_full") instead. */
void mgw_filter_stream_send(struct mgw_filter_stream *st, grpc_slice msg);

/* The same on a carrier, for the member whose session is `session` (filter_mux.c). */
void mgw_filter_stream_send_tagged(struct mgw_filter_stream *st, grpc_slice msg,
                                   uint64_t session);

/* The owed FIFO's front changed: re-arm the deadline. */
void mgw_filter_stream_rearm(struct mgw_filter_stream *st);

/* Fail: cancel the call, forget what is owed and queued for sending, release any hold. */
void mgw_filter_stream_break(struct mgw_filter_stream *st);

/* The MTA connection lets go: half-close, cancel if the filter lingers; freed once its
 * completions are in. The owner's hooks are not called for it any more except `reply`
 * (a shadow filter's replies are still logged). */
void mgw_filter_stream_detach(struct mgw_filter_stream *st);

/* `link`'s channel entered TRANSIENT_FAILURE: its streams still waiting for their call
 * to get through (WAIT_FOR_READY, made while the channel was connecting) fail now
 * ("unavailable") instead of at their send deadline: a filter known down costs no
 * waiting. */
void mgw_filter_streams_link_down(struct mgw_filter_streams *set,
                                  const struct mgw_filter_link *link);

/* A member was handed a reply, or taken off its carrier: one that lingers after its MTA
 * connection let go (it still owed replies) leaves once it owes none or is off its
 * carrier, and is freed. Call it with the member held. */
void mgw_filter_stream_settle(struct mgw_filter_stream *st);

/* For the milter transport (milter_client.c), which keeps the rest of this contract:
 * fail through the owner's hook (once), report its output buffer as the queue (for
 * back-pressure), and hold the stream across calls out that may detach it. */
void mgw_filter_stream_fail(struct mgw_filter_stream *st, const char *reason, const char *detail);
void mgw_filter_stream_set_queued(struct mgw_filter_stream *st, size_t bytes);
void mgw_filter_stream_hold(struct mgw_filter_stream *st);
void mgw_filter_stream_release(struct mgw_filter_stream *st);

/* An empty set. */
void mgw_filter_streams_init(struct mgw_filter_streams *set);

/* Shutdown: no batch starts from now on; every call is cancelled. */
void mgw_filter_streams_shutdown(struct mgw_filter_streams *set);

#endif
