/*
 * grpc_pump.c - completion-queue thread to libevent hand-off (see grpc_pump.h).
 *
 * One completion queue and one thread serve every pump in the process (the hub): gRPC
 * 1.51's epoll1 engine lets a single thread at a time wait for I/O, so a thread per
 * worker loop only passed that role back and forth (21 futex calls per default message
 * with two loops, against 8 with one, and 17 % more gateway CPU at one connection:
 * docs/benchmarks.md). Each pump is a loop's mailbox; a tag names its pump, and the hub
 * posts each completion to it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/grpc_pump.h"

#include <pthread.h>
#include <stdlib.h>

#include "mgw/mailbox.h"
#include "mgw/xmalloc.h"

struct mgw_grpc_pump {
    struct mgw_mailbox *mb;
    /* Operations started and not yet delivered; only the loop thread touches it. */
    size_t pending;
};

static struct {
    pthread_mutex_t mu; /* guards refs and the start and end of the hub */
    unsigned refs;      /* pumps alive */
    grpc_completion_queue *cq;
    pthread_t thread;
} hub = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* On the loop thread: the callback, then the count (a callback may start more). */
static void run_tag(void *arg, int ok)
{
    struct mgw_grpc_tag *tag = arg;
    struct mgw_grpc_pump *p = tag->pump;

    tag->cb(tag, ok);
    p->pending--;
}

static void *hub_thread(void *arg)
{
    grpc_completion_queue *cq = arg;

    for (;;) {
        grpc_event e = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

        if (e.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (e.type == GRPC_OP_COMPLETE) {
            struct mgw_grpc_tag *tag = e.tag;

            mgw_mailbox_post(tag->pump->mb, run_tag, tag, e.success);
        }
    }
    return NULL;
}

struct mgw_grpc_pump *mgw_grpc_pump_new(struct event_base *base)
{
    struct mgw_grpc_pump *p = mgw_xcalloc(1, sizeof *p);

    p->mb = mgw_mailbox_new(base);
    pthread_mutex_lock(&hub.mu);
    if (hub.refs++ == 0) {
        hub.cq = grpc_completion_queue_create_for_next(NULL);
        if (pthread_create(&hub.thread, NULL, hub_thread, hub.cq) != 0)
            mgw_panic("grpc pump: cannot start the completion-queue thread");
    }
    pthread_mutex_unlock(&hub.mu);
    return p;
}

grpc_completion_queue *mgw_grpc_pump_cq(struct mgw_grpc_pump *p)
{
    (void)p;
    return hub.cq;
}

grpc_call_error mgw_grpc_pump_start_batch(struct mgw_grpc_pump *p, grpc_call *call,
                                          const grpc_op *ops, size_t n, struct mgw_grpc_tag *tag)
{
    grpc_call_error e;

    tag->pump = p;
    e = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (e == GRPC_CALL_OK)
        p->pending++;
    return e;
}

void mgw_grpc_pump_watch(struct mgw_grpc_pump *p, grpc_channel *ch,
                         grpc_connectivity_state last, gpr_timespec deadline,
                         struct mgw_grpc_tag *tag)
{
    tag->pump = p;
    p->pending++;
    grpc_channel_watch_connectivity_state(ch, last, deadline, hub.cq, tag);
}

struct mgw_grpc_pump *mgw_grpc_pump_free(struct mgw_grpc_pump *p)
{
    if (p == NULL)
        return NULL;
    /* The hub may still hold completions of ours: take them as they come. */
    while (p->pending > 0) {
        mgw_mailbox_wait(p->mb);
        mgw_mailbox_drain(p->mb);
    }
    p->mb = mgw_mailbox_free(p->mb);
    free(p);
    pthread_mutex_lock(&hub.mu);
    if (--hub.refs == 0) {
        /* Nothing is pending anywhere: the thread sees the shutdown at once. */
        grpc_completion_queue_shutdown(hub.cq);
        pthread_join(hub.thread, NULL);
        grpc_completion_queue_destroy(hub.cq);
        hub.cq = NULL;
    }
    pthread_mutex_unlock(&hub.mu);
    return NULL;
}
