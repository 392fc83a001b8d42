/*
 * filter_stream.c - one Session call to one filter (see filter_stream.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/filter_stream.h"

#include <event2/event.h>
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mgw/filter_mux.h"
#include "mgw/grpc_channel.h"
#include "mgw/milter_client.h"
#include "mgw/log.h"
#include "mgw/filter_proto.h"
#include "mgw/xmalloc.h"

#define LINGER_MS 5000 /* a half-closed stream the filter does not end is cancelled */
/* One batch (Description.batches) carries at most this much, well under any filter's
 * receive cap (4 MiB is gRPC's default), so it never fails where single events would not. */
#define BATCH_MAX_EVENTS 256
#define BATCH_MAX_BYTES (1u << 20)

static uint64_t now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void fail(struct mgw_filter_stream *st, const char *reason, const char *detail)
{
    if (!st->broken)
        st->hooks->failed(st, reason, detail);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg);

/* The timer exists only while a deadline is armed: an idle stream owes nothing and
 * keeps none (0.12 KB per idle connection measured); an answered event costs one
 * evtimer_new and event_free more, next to its gRPC send and receive. */
static void arm_timer(struct mgw_filter_stream *st, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    if (st->timer == NULL)
        st->timer = evtimer_new(st->base, on_deadline, st);
    evtimer_add(st->timer, &tv);
}

static int is_milter(const struct mgw_filter_stream *st)
{
    return st->link->conf.kind == MGW_FILTER_MILTER;
}

/* Safe from the timer's own callback (libevent allows freeing a non-persistent event
 * while it runs). */
static void stop_timer(struct mgw_filter_stream *st)
{
    if (st->timer != NULL) {
        event_free(st->timer);
        st->timer = NULL;
    }
}

static void free_if_done(struct mgw_filter_stream *st)
{
    if (st->attached || st->batches > 0)
        return;
    mgw_milter_stream_close(st, 0);
    if (st->call != NULL)
        grpc_call_unref(st->call);
    /* A send still set here was never started (shutdown): no completion owns it. */
    if (st->sending != NULL)
        grpc_byte_buffer_destroy(st->sending);
    for (size_t i = 0; i < st->nqueue; i++)
        grpc_slice_unref(st->queue[i].msg);
    free(st->queue);
    mgw_owed_clear(&st->owed);
    grpc_metadata_array_destroy(&st->md_initial);
    grpc_metadata_array_destroy(&st->md_trailing);
    grpc_slice_unref(st->status_details);
    stop_timer(st);
    TAILQ_REMOVE(&st->set->all, st, entry);
    free(st);
}

/* The stream a completion's tag belongs to. */
#define STREAM_OF(tag, member) \
    ((struct mgw_filter_stream *)((char *)(tag) - offsetof(struct mgw_filter_stream, member)))

/* A batch completed: its hold on the stream ends (see on_send). */
static void batch_done(struct mgw_filter_stream *st)
{
    st->batches--;
    free_if_done(st);
}

/* A lingering member's hold (see detach) ends: it is freed if nothing else holds it. */
static void end_linger(struct mgw_filter_stream *st)
{
    if (st->lingering) {
        st->lingering = 0;
        batch_done(st);
    }
}

/* Arm the timer for the nearest deadline (owed reply, send in flight, linger once
 * detached), or stop it. */
void mgw_filter_stream_rearm(struct mgw_filter_stream *st)
{
    const struct mgw_owed *o = mgw_owed_front(&st->owed);
    uint64_t due = st->linger_due_ms, now;

    if (st->broken || (!st->attached && st->linger_due_ms == 0))
        return;
    if (o != NULL && (due == 0 || o->due_ms < due))
        due = o->due_ms;
    if (st->sending != NULL && st->send_due_ms != 0 && (due == 0 || st->send_due_ms < due))
        due = st->send_due_ms;
    if (due == 0) {
        stop_timer(st);
        return;
    }
    now = now_ms();
    arm_timer(st, due > now ? (unsigned)(due - now) : 0);
}

static void start_batch(struct mgw_filter_stream *st, const grpc_op *ops, size_t n,
                        struct mgw_grpc_tag *tag)
{
    grpc_call_error e;

    /* At shutdown the completion queue is being drained and may already be shut down:
     * a batch started now would assert in gRPC. Every call is cancelled by then. */
    if (st->set->shutting_down)
        return;
    e = mgw_grpc_pump_start_batch(st->pump, st->call, ops, n, tag);

    /* GRPC_CORE.md §4.4: a refused batch is our bug and may leave the call unusable. */
    if (e != GRPC_CALL_OK) {
        log_error(st->sid, "grpc batch refused", "filter=%s error=%d", st->link->conf.name,
                  (int)e);
        grpc_call_cancel(st->call, NULL);
        return;
    }
    st->batches++;
}

static void recv_arm(struct mgw_filter_stream *st);

/* How many queued events the next send carries: one, or for a filter that takes batches
 * as many as fit (the first always goes, whatever its size). */
static size_t batch_size(const struct mgw_filter_stream *st)
{
    size_t k = 1, bytes = GRPC_SLICE_LENGTH(st->queue[0].msg);

    if (!st->batching)
        return 1;
    while (k < st->nqueue && k < BATCH_MAX_EVENTS &&
           bytes + GRPC_SLICE_LENGTH(st->queue[k].msg) <= BATCH_MAX_BYTES) {
        bytes += GRPC_SLICE_LENGTH(st->queue[k].msg); /* a macro: its argument twice */
        k++;
    }
    return k;
}

/* The Event.session field that tags a carrier's event (0: none, nothing written). */
static size_t session_field(uint8_t *buf, uint64_t session)
{
    return session ? mgw_proto_varint_field(buf, MGW_PROTO_EVENT_SESSION, session) : 0;
}

/* One event alone: as packed, after its session field if it has one. */
static grpc_byte_buffer *single_buffer(const struct mgw_filter_stream *st)
{
    uint8_t tag[MGW_PROTO_PREFIX_MAX];
    size_t n = session_field(tag, st->queue[0].session);
    grpc_slice parts[2];
    grpc_byte_buffer *bb;

    if (n == 0)
        return grpc_raw_byte_buffer_create(&st->queue[0].msg, 1);
    parts[0] = grpc_slice_from_copied_buffer((const char *)tag, n);
    parts[1] = st->queue[0].msg;
    bb = grpc_raw_byte_buffer_create(parts, 2);
    grpc_slice_unref(parts[0]);
    return bb;
}

/* One Event{batch: EventBatch{events: queue[0..take)}} on the wire: the events as they
 * were packed, each after its field prefix (filter_proto.h) and session field, no copy
 * of their bytes. */
static grpc_byte_buffer *batch_buffer(const struct mgw_filter_stream *st, size_t take)
{
    grpc_slice *parts = mgw_xcalloc(2 * take + 1, sizeof *parts);
    uint8_t pre[2 * MGW_PROTO_PREFIX_MAX];
    grpc_byte_buffer *bb;
    uint64_t inner = 0;

    for (size_t k = 0; k < take; k++) {
        uint8_t tag[MGW_PROTO_PREFIX_MAX];
        size_t t = session_field(tag, st->queue[k].session);
        size_t len = GRPC_SLICE_LENGTH(st->queue[k].msg) + t;
        size_t n = mgw_proto_field_prefix(pre, MGW_PROTO_EVENT_BATCH_EVENTS, len);

        memcpy(pre + n, tag, t);
        parts[2 * k + 1] = grpc_slice_from_copied_buffer((const char *)pre, n + t);
        parts[2 * k + 2] = st->queue[k].msg;
        inner += n + len;
    }
    parts[0] = grpc_slice_from_copied_buffer(
        (const char *)pre, mgw_proto_field_prefix(pre, MGW_PROTO_EVENT_BATCH, inner));
    bb = grpc_raw_byte_buffer_create(parts, 2 * take + 1);
    grpc_slice_unref(parts[0]); /* the prefixes; queue[] is the caller's */
    for (size_t k = 0; k < take; k++)
        grpc_slice_unref(parts[2 * k + 1]);
    free(parts);
    return bb;
}

static void send_next(struct mgw_filter_stream *st)
{
    grpc_op ops[3];
    size_t n = 0, take;
    const struct mgw_owed *last;

    if (!st->started || st->sending != NULL || st->broken || st->finished)
        return;
    memset(ops, 0, sizeof ops);
    if (st->nqueue == 0) {
        if (st->close_wanted && !st->close_sent) {
            st->close_sent = 1;
            ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
            start_batch(st, ops, 1, &st->close_tag);
        }
        return;
    }
    take = batch_size(st);
    last = mgw_owed_back(&st->owed);
    /* A reply will come to what this send carries, and none is being received: the
     * receive goes with the send when the MTA then waits for that reply, so nothing else
     * follows on this stream until it comes (one completion, after the reply, instead of
     * the send's own, which gRPC reports through its completion-queue thread: two thread
     * wakeups per waited event less, and the flow-control update that re-arming a
     * receive writes goes out with the event). Otherwise the receive is armed alone
     * first: a filter may hold a content event's reply until it has seen more, and the
     * events behind this send must not wait for it. */
    if (st->recv_idle && last != NULL) {
        st->recv_idle = 0;
        if (take == st->nqueue && last->kind == MGW_OWED_WAITED)
            st->sending_recv = 1;
        else
            recv_arm(st);
    }
    st->sending = take > 1 ? batch_buffer(st, take) : single_buffer(st);
    st->sending_len = 0;
    for (size_t k = 0; k < take; k++) {
        st->sending_len += GRPC_SLICE_LENGTH(st->queue[k].msg);
        grpc_slice_unref(st->queue[k].msg); /* the byte buffer holds its own references */
    }
    st->nqueue -= take;
    memmove(st->queue, st->queue + take, st->nqueue * sizeof *st->queue);
    if (st->nqueue == 0) {
        /* An idle stream keeps no queue array (0.12 KB per idle connection measured);
         * the next event allocates it again. */
        free(st->queue);
        st->queue = NULL;
        st->capqueue = 0;
    }
    /* SEND_MESSAGE first, also in the batch with the initial metadata: gRPC 1.51 keeps a
     * batch control per slot, chosen by a batch's *first* op, for the call's whole life
     * (GRPC_CORE.md §4.4), so every send now reuses one instead of the first taking the
     * SEND_INITIAL_METADATA slot's and the rest another (with the same for RECV_MESSAGE in
     * mgw_filter_stream_start: 0.7 KB per open call measured, two batch controls and
     * their arena zones). The order of ops within a batch means nothing to gRPC. */
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = st->sending;
    n++;
    if (!st->initial_sent) {
        st->initial_sent = 1;
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        /* Wait for a connecting channel; the event deadline bounds the wait. */
        ops[n].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
        n++;
    }
    if (st->sending_recv) {
        /* Done when the reply is in: the owed reply's deadline bounds it, not the send's
         * (which would wrongly cut an end of message allowed eom_timeout). */
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &st->recv_buf;
        n++;
    } else {
        st->send_due_ms = now_ms() + st->link->conf.timeout_ms;
    }
    start_batch(st, ops, n, &st->send_tag);
    mgw_filter_stream_rearm(st);
}

/* Back-pressure: the MTA streams content without waiting (policy.h rule 7), so a stream
 * more than half its max_queue behind holds the session's reading until it is back under
 * a quarter. A shadow filter never holds the MTA (it fails at max_queue instead); a
 * stopped filter holds it only until its send deadline fails it. */
static void flow_update(struct mgw_filter_stream *st)
{
    size_t limit = st->link->conf.max_queue / (st->flow_held ? 4 : 2);
    int hold = !st->broken && !st->link->conf.shadow && st->queued_bytes > limit;

    if (!st->attached || hold == st->flow_held)
        return;
    st->flow_held = hold;
    st->hooks->flow(st, hold);
}

void mgw_filter_stream_send(struct mgw_filter_stream *st, grpc_slice msg)
{
    if (is_milter(st))
        mgw_milter_stream_send(st, msg);
    else if (st->role == MGW_STREAM_MEMBER && st->started)
        mgw_filter_mux_send(st, msg);
    else /* a member not yet on its carrier keeps its SessionStart until it joins */
        mgw_filter_stream_send_tagged(st, msg, 0);
}

/* The next carrier waiting for the end of the turn, taken off the list (still held: the
 * caller ends the hold send_soon took with batch_done), or NULL. */
static struct mgw_filter_stream *flush_take(struct mgw_filter_streams *set)
{
    struct mgw_filter_stream *st = TAILQ_FIRST(&set->flushing);

    if (st != NULL) {
        TAILQ_REMOVE(&set->flushing, st, flush_entry);
        st->flush_pending = 0;
    }
    return st;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_filter_streams *set = arg;
    struct mgw_filter_stream *st;

    while ((st = flush_take(set)) != NULL) {
        send_next(st);
        batch_done(st);
    }
}

/* A carrier with nothing in flight sends at the end of the loop's turn, not at once: the
 * events of every session whose MTA input the loop handles in this turn then go in one
 * send (one sendmsg, one completion) instead of the first alone and the rest after its
 * completion. The turn ends within microseconds; a stream of its own has no other
 * session to wait for and sends at once. */
static void send_soon(struct mgw_filter_stream *st)
{
    struct mgw_filter_streams *set = st->set;

    if (st->role != MGW_STREAM_CARRIER || st->sending != NULL || set->shutting_down) {
        send_next(st);
        return;
    }
    if (st->flush_pending)
        return;
    st->flush_pending = 1;
    st->batches++; /* held until flushed: it may be detached meanwhile */
    TAILQ_INSERT_TAIL(&set->flushing, st, flush_entry);
    if (set->flush_ev == NULL)
        set->flush_ev = event_new(st->base, -1, 0, on_flush, set);
    event_active(set->flush_ev, EV_TIMEOUT, 0);
}

void mgw_filter_stream_send_tagged(struct mgw_filter_stream *st, grpc_slice msg,
                                   uint64_t session)
{
    size_t len = GRPC_SLICE_LENGTH(msg);
    /* A carrier's sessions each get the filter's max_queue (its back-pressure still
     * starts at half of one). */
    size_t limit = (size_t)st->link->conf.max_queue * (st->sessions ? st->sessions : 1);

    if (st->queued_bytes + len > limit) {
        char detail[120];

        grpc_slice_unref(msg);
        snprintf(detail, sizeof detail, "%zu bytes not yet taken by the filter, max_queue %u",
                 st->queued_bytes + len, st->link->conf.max_queue);
        fail(st, "queue_full", detail);
        return;
    }
    st->queued_bytes += len;
    if (st->nqueue == st->capqueue) {
        st->capqueue = st->capqueue ? st->capqueue * 2 : 4;
        st->queue = mgw_xrealloc(st->queue, st->capqueue * sizeof *st->queue);
    }
    st->queue[st->nqueue++] = (struct mgw_stream_queued){msg, session};
    send_soon(st);
    flow_update(st);
}

static void recv_done(struct mgw_filter_stream *st, int ok);

static void on_send(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_stream *st = STREAM_OF(tag, send_tag);
    int with_recv = st->sending_recv;

    /* The batch count stays up (our hold) until we are done: what we call may end the
     * MTA session and detach the stream, which must not free it under us. */
    if (with_recv) {
        /* The reply first: it may leave the stream owing nothing (receive idle), which
         * the next send below then sees. */
        st->sending_recv = 0;
        recv_done(st, ok);
    }
    st->queued_bytes -= st->sending_len;
    grpc_byte_buffer_destroy(st->sending);
    st->sending = NULL;
    st->send_due_ms = 0;
    if (ok) {
        st->reached = 1;
        send_next(st);
        mgw_filter_stream_rearm(st);
        flow_update(st);
    } else if (!with_recv) {
        fail(st, "stream_broken", "send failed");
    }
    /* A batch that failed with its receive is the call's end (our own cancel too, once
     * detached): its status says why, as for a receive alone (on_status). */
    batch_done(st);
}

static void on_close_sent(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_stream *st = STREAM_OF(tag, close_tag);

    batch_done(st);
}

static void recv_arm(struct mgw_filter_stream *st)
{
    grpc_op op;

    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->recv_buf;
    start_batch(st, &op, 1, &st->recv_tag);
}

/* A receive completed (alone or with a send): hand the reply over, receive again while
 * more replies are owed. */
static void recv_done(struct mgw_filter_stream *st, int ok)
{
    grpc_byte_buffer *bb = st->recv_buf;

    st->recv_buf = NULL;
    /* The filter's initial metadata, if any, came with the first completion; nothing reads
     * it, so its array is not kept for the call's life (0.17 KB per call measured with
     * the test filter's). */
    if (st->md_initial.capacity > 0) {
        grpc_metadata_array_destroy(&st->md_initial);
        grpc_metadata_array_init(&st->md_initial);
    }
    if (!ok || bb == NULL) {
        /* End of stream: the status, which always follows, says why (on_status). */
        st->finished = 1;
    } else {
        Miltergw__V1__Reply *r =
            (Miltergw__V1__Reply *)mgw_grpc_unpack(bb, &miltergw__v1__reply__descriptor);

        grpc_byte_buffer_destroy(bb);
        if (r == NULL)
            fail(st, "out_of_contract", "reply does not parse as miltergw.v1.Reply");
        else
            st->hooks->reply(st, r);
        /* A carrier always receives (its members owe what it demultiplexes); a stream of
         * its own only while it owes a reply, or its next send would wait behind this
         * one's flow-control update. A reply nobody owes then waits in gRPC until the
         * next event's receive, and is refused there as out of contract. */
        if (!st->finished && !st->set->shutting_down) {
            if (st->role == MGW_STREAM_OWN && mgw_owed_front(&st->owed) == NULL)
                st->recv_idle = 1;
            else
                recv_arm(st);
        }
    }
}

static void on_recv(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_stream *st = STREAM_OF(tag, recv_tag);

    recv_done(st, ok);
    batch_done(st); /* this batch's count was our hold until here (see on_send) */
}

static void on_status(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_stream *st = STREAM_OF(tag, status_tag);

    st->finished = 1;
    if (st->status != GRPC_STATUS_OK && st->attached) {
        char *details = grpc_slice_to_c_string(st->status_details);
        char detail[300];

        snprintf(detail, sizeof detail, "grpc status %d: %s", (int)st->status, details);
        gpr_free(details);
        fail(st, st->status == GRPC_STATUS_UNAVAILABLE ? "unavailable" : "stream_broken", detail);
    } else if (st->attached) {
        fail(st, "stream_closed", "the filter ended the stream");
    }
    batch_done(st); /* our hold until here (see on_send) */
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_filter_stream *st = arg;
    const struct mgw_owed *o = mgw_owed_front(&st->owed);
    char detail[80];
    uint64_t now;

    now = now_ms();
    if (o != NULL && o->due_ms <= now) {
        snprintf(detail, sizeof detail, "no answer to %s within %s",
                 mgw_milter_cmd_name(o->cmd, MGW_MILTER_FROM_MTA),
                 o->cmd == MGW_SMFIC_BODYEOB ? "eom_timeout" : "timeout");
        fail(st, "timeout", detail);
    } else if (st->sending != NULL && st->send_due_ms != 0 && st->send_due_ms <= now) {
        fail(st, "timeout", "the filter took no event within timeout");
    } else if (st->linger_due_ms != 0 && st->linger_due_ms <= now) {
        /* The filter never ended the half-closed stream, or never answered a lingering
         * member. */
        if (st->call != NULL && !st->finished)
            grpc_call_cancel(st->call, NULL);
        if (st->lingering) {
            mgw_filter_mux_leave(st, "");
            end_linger(st); /* last: it may free the stream */
        }
    } else {
        mgw_filter_stream_rearm(st); /* woke early: a deadline moved */
    }
}

struct mgw_filter_stream *mgw_filter_stream_open(size_t size, const struct mgw_filter_link *link,
                                                 struct mgw_grpc_pump *pump,
                                                 struct event_base *base, uint64_t sid,
                                                 const struct mgw_filter_stream_hooks *hooks,
                                                 struct mgw_filter_streams *set)
{
    struct mgw_filter_stream *st = mgw_xcalloc(1, size);

    st->link = link;
    st->pump = pump;
    st->sid = sid;
    st->hooks = hooks;
    st->set = set;
    st->attached = 1;
    st->batching = link->batching;
    st->role = link->multiplexed && link->conf.kind != MGW_FILTER_MILTER ? MGW_STREAM_MEMBER
                                                                          : MGW_STREAM_OWN;
    grpc_metadata_array_init(&st->md_initial);
    grpc_metadata_array_init(&st->md_trailing);
    st->status_details = grpc_empty_slice();
    st->base = base;
    st->recv_tag.cb = on_recv;
    st->send_tag.cb = on_send;
    st->status_tag.cb = on_status;
    st->close_tag.cb = on_close_sent;
    TAILQ_INSERT_TAIL(&set->all, st, entry);
    return st;
}

void mgw_filter_stream_start(struct mgw_filter_stream *st)
{
    const struct mgw_filter_link *l = st->link;
    grpc_op ops[2];

    if (st->started)
        return;
    st->started = 1;
    if (is_milter(st)) {
        mgw_milter_stream_start(st);
        return;
    }
    if (st->role == MGW_STREAM_MEMBER) {
        mgw_filter_mux_join(st);
        return;
    }
    /* Fail fast: a channel known to be down gets no call and costs no waiting. */
    if (grpc_channel_check_connectivity_state(l->ch, 1) == GRPC_CHANNEL_TRANSIENT_FAILURE) {
        st->broken = 1;
        log_warn(st->sid, "filter unavailable", "filter=%s target=%s on_error=%s",
                 l->conf.name, l->conf.target, mgw_on_error_name(l->conf.on_error));
        return;
    }
    st->call = grpc_channel_create_registered_call(l->ch, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                   mgw_grpc_pump_cq(st->pump), l->session_method,
                                                   gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &st->md_trailing;
    ops[0].data.recv_status_on_client.status = &st->status;
    ops[0].data.recv_status_on_client.status_details = &st->status_details;
    start_batch(st, ops, 1, &st->status_tag);
    /* RECV_MESSAGE first: its re-arms then reuse this batch's control (see send_next). */
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &st->recv_buf;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &st->md_initial;
    start_batch(st, ops, 2, &st->recv_tag);
    send_next(st);
}

void mgw_filter_stream_settle(struct mgw_filter_stream *st)
{
    if (!st->lingering || (st->mux != NULL && mgw_owed_front(&st->owed) != NULL))
        return;
    mgw_filter_mux_leave(st, "");
    end_linger(st);
}

void mgw_filter_stream_break(struct mgw_filter_stream *st)
{
    if (st->broken)
        return;
    st->broken = 1;
    stop_timer(st);
    if (st->role == MGW_STREAM_MEMBER)
        mgw_filter_mux_leave(st, st->fail_reason ? st->fail_reason : "failed");
    if (st->call != NULL && !st->finished)
        grpc_call_cancel(st->call, NULL);
    mgw_milter_stream_close(st, 0);
    /* Nothing more will be answered, nor taken. */
    mgw_owed_clear(&st->owed);
    if (st->flow_held) {
        st->flow_held = 0;
        if (st->attached)
            st->hooks->flow(st, 0);
    }
    end_linger(st); /* last: it may free the stream */
}

void mgw_filter_stream_detach(struct mgw_filter_stream *st)
{
    st->flow_held = 0; /* the session is going: nothing to resume */
    st->attached = 0;
    stop_timer(st);
    mgw_milter_stream_close(st, 1);
    if (st->role == MGW_STREAM_MEMBER && !st->broken) {
        if (st->mux != NULL && mgw_owed_front(&st->owed) != NULL) {
            /* It still owes replies (a shadow filter's are still logged, its deadlines
             * still hold): it stays on its carrier, held, until it owes none (settle),
             * fails, or lingers too long, as a stream of its own would half-close. */
            st->lingering = 1;
            st->batches++;
            st->linger_due_ms = now_ms() + LINGER_MS;
            mgw_filter_stream_rearm(st);
        } else {
            mgw_filter_mux_leave(st, "");
        }
    }
    if (st->call != NULL && !st->finished && !st->broken) {
        st->close_wanted = 1;
        st->linger_due_ms = now_ms() + LINGER_MS;
        send_next(st);
        mgw_filter_stream_rearm(st);
    }
    free_if_done(st);
}

void mgw_filter_stream_fail(struct mgw_filter_stream *st, const char *reason, const char *detail)
{
    fail(st, reason, detail);
}

void mgw_filter_stream_set_queued(struct mgw_filter_stream *st, size_t bytes)
{
    st->queued_bytes = bytes;
    flow_update(st);
}

void mgw_filter_stream_hold(struct mgw_filter_stream *st)
{
    st->batches++;
}

void mgw_filter_stream_release(struct mgw_filter_stream *st)
{
    batch_done(st);
}

void mgw_filter_streams_link_down(struct mgw_filter_streams *set,
                                  const struct mgw_filter_link *link)
{
    struct mgw_filter_stream *st, **held = NULL;
    size_t n = 0, cap = 0;

    /* A failure may end its session, which detaches (and may free) that session's other
     * streams: hold every stream concerned first (as a batch would), then fail them. */
    TAILQ_FOREACH(st, &set->all, entry) {
        /* A member's carrier is in the list itself. */
        if (st->link != link || !st->started || st->reached || st->broken || !st->attached ||
            st->role == MGW_STREAM_MEMBER)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            held = mgw_xrealloc(held, cap * sizeof *held);
        }
        held[n++] = st;
        st->batches++;
    }
    for (size_t i = 0; i < n; i++) {
        if (held[i]->attached)
            fail(held[i], "unavailable",
                 "the filter's channel failed while the stream waited for it");
        batch_done(held[i]);
    }
    free(held);
}

void mgw_filter_streams_init(struct mgw_filter_streams *set)
{
    memset(set, 0, sizeof *set);
    TAILQ_INIT(&set->all);
    TAILQ_INIT(&set->carriers);
    TAILQ_INIT(&set->flushing);
}

void mgw_filter_streams_shutdown(struct mgw_filter_streams *set)
{
    struct mgw_filter_stream *st;

    set->shutting_down = 1;
    /* Nothing is sent from now on: what waited for the end of the turn lets go. */
    while ((st = flush_take(set)) != NULL)
        batch_done(st);
    if (set->flush_ev != NULL) {
        event_free(set->flush_ev);
        set->flush_ev = NULL;
    }
    mgw_filter_mux_shutdown(set);
    TAILQ_FOREACH(st, &set->all, entry) {
        mgw_milter_stream_close(st, 0);
        if (st->call != NULL && !st->finished)
            grpc_call_cancel(st->call, NULL);
    }
}
