/*
 * grpc_pump.c - completion-queue thread to libevent hand-off (see grpc_pump.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/grpc_pump.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mgw/xmalloc.h"

struct done {
    struct mgw_grpc_tag *tag;
    int ok;
};

struct mgw_grpc_pump {
    grpc_completion_queue *cq;
    pthread_t thread;
    int efd;
    struct event *ev;
    pthread_mutex_t mu;
    /* Completions waiting for the loop thread: a growable array swapped out whole. */
    struct done *items;
    size_t n, cap;
};

static void *pump_thread(void *arg)
{
    struct mgw_grpc_pump *p = arg;

    for (;;) {
        grpc_event e = grpc_completion_queue_next(p->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                  NULL);
        int was_empty;
        uint64_t one = 1;

        if (e.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (e.type != GRPC_OP_COMPLETE)
            continue;
        pthread_mutex_lock(&p->mu);
        if (p->n == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 64;
            p->items = mgw_xrealloc(p->items, p->cap * sizeof *p->items);
        }
        p->items[p->n++] = (struct done){e.tag, e.success};
        was_empty = p->n == 1;
        pthread_mutex_unlock(&p->mu);
        /* One wakeup per burst: the loop drains everything queued by then. */
        if (was_empty && write(p->efd, &one, sizeof one) < 0)
            mgw_panic("grpc pump: eventfd write failed");
    }
    return NULL;
}

/* Take the whole list under the lock, then run callbacks without it: a callback may
 * start batches whose completions the CQ thread queues meanwhile. */
static void pump_drain(struct mgw_grpc_pump *p)
{
    struct done *items;
    size_t n, cap;
    uint64_t v;

    if (read(p->efd, &v, sizeof v) < 0) {
        /* EAGAIN: a previous drain already consumed the wakeup. */
    }
    pthread_mutex_lock(&p->mu);
    items = p->items;
    n = p->n;
    cap = p->cap;
    p->items = NULL;
    p->n = p->cap = 0;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n; i++)
        items[i].tag->cb(items[i].tag, items[i].ok);
    /* Give the array back for reuse unless the thread already made a new one. */
    pthread_mutex_lock(&p->mu);
    if (p->items == NULL) {
        p->items = items;
        p->cap = cap;
        items = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    free(items);
}

static void on_eventfd(evutil_socket_t fd, short what, void *arg)
{
    pump_drain(arg);
}

struct mgw_grpc_pump *mgw_grpc_pump_new(struct event_base *base)
{
    struct mgw_grpc_pump *p = mgw_xcalloc(1, sizeof *p);

    p->cq = grpc_completion_queue_create_for_next(NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0)
        mgw_panic("grpc pump: eventfd failed");
    pthread_mutex_init(&p->mu, NULL);
    p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_eventfd, p);
    event_add(p->ev, NULL);
    if (pthread_create(&p->thread, NULL, pump_thread, p) != 0)
        mgw_panic("grpc pump: cannot start the completion-queue thread");
    return p;
}

grpc_completion_queue *mgw_grpc_pump_cq(struct mgw_grpc_pump *p)
{
    return p->cq;
}

struct mgw_grpc_pump *mgw_grpc_pump_free(struct mgw_grpc_pump *p)
{
    if (p == NULL)
        return NULL;
    grpc_completion_queue_shutdown(p->cq);
    pthread_join(p->thread, NULL);
    /* Completions queued after the loop's last turn still owe their callbacks. */
    pump_drain(p);
    event_free(p->ev);
    close(p->efd);
    grpc_completion_queue_destroy(p->cq);
    pthread_mutex_destroy(&p->mu);
    free(p->items);
    free(p);
    return NULL;
}
