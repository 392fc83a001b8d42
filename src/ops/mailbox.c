/*
 * mailbox.c - cross-thread calls into a libevent loop (see mailbox.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/mailbox.h"

#include <event2/event.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mgw/xmalloc.h"

struct item {
    mgw_mailbox_fn *fn;
    void *arg;
    int val;
};

struct mgw_mailbox {
    int efd;
    struct event *ev;
    pthread_mutex_t mu;
    /* Posts waiting for the loop: a growable array swapped out whole. */
    struct item *items;
    size_t n, cap;
};

void mgw_mailbox_post(struct mgw_mailbox *mb, mgw_mailbox_fn *fn, void *arg, int val)
{
    uint64_t one = 1;
    int was_empty;

    pthread_mutex_lock(&mb->mu);
    if (mb->n == mb->cap) {
        mb->cap = mb->cap ? mb->cap * 2 : 64;
        mb->items = mgw_xrealloc(mb->items, mb->cap * sizeof *mb->items);
    }
    mb->items[mb->n++] = (struct item){fn, arg, val};
    was_empty = mb->n == 1;
    pthread_mutex_unlock(&mb->mu);
    /* One wakeup per burst: the loop drains everything queued by then. */
    if (was_empty && write(mb->efd, &one, sizeof one) < 0)
        mgw_panic("mailbox: eventfd write failed");
}

/* Take the whole list under the lock, then run it without: a call may post more. */
void mgw_mailbox_drain(struct mgw_mailbox *mb)
{
    struct item *items;
    size_t n, cap;
    uint64_t v;

    if (read(mb->efd, &v, sizeof v) < 0) {
        /* EAGAIN: a previous drain already consumed the wakeup. */
    }
    pthread_mutex_lock(&mb->mu);
    items = mb->items;
    n = mb->n;
    cap = mb->cap;
    mb->items = NULL;
    mb->n = mb->cap = 0;
    pthread_mutex_unlock(&mb->mu);
    for (size_t i = 0; i < n; i++)
        items[i].fn(items[i].arg, items[i].val);
    /* Give the array back for reuse unless a poster already made a new one. */
    pthread_mutex_lock(&mb->mu);
    if (mb->items == NULL) {
        mb->items = items;
        mb->cap = cap;
        items = NULL;
    }
    pthread_mutex_unlock(&mb->mu);
    free(items);
}

void mgw_mailbox_wait(struct mgw_mailbox *mb)
{
    struct pollfd pfd = {.fd = mb->efd, .events = POLLIN};

    while (poll(&pfd, 1, -1) < 0) {
        if (errno != EINTR)
            mgw_panic("mailbox: poll failed");
    }
}

static void on_eventfd(evutil_socket_t fd, short what, void *arg)
{
    mgw_mailbox_drain(arg);
}

struct mgw_mailbox *mgw_mailbox_new(struct event_base *base)
{
    struct mgw_mailbox *mb = mgw_xcalloc(1, sizeof *mb);

    mb->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mb->efd < 0)
        mgw_panic("mailbox: eventfd failed");
    pthread_mutex_init(&mb->mu, NULL);
    mb->ev = event_new(base, mb->efd, EV_READ | EV_PERSIST, on_eventfd, mb);
    if (mb->ev == NULL)
        mgw_panic("mailbox: event_new failed");
    event_add(mb->ev, NULL);
    return mb;
}

struct mgw_mailbox *mgw_mailbox_free(struct mgw_mailbox *mb)
{
    if (mb == NULL)
        return NULL;
    /* Posted calls still owe their effects (a completion its callback, a session its
     * adoption): run them, and what they post, until nothing is left. */
    for (;;) {
        pthread_mutex_lock(&mb->mu);
        size_t n = mb->n;
        pthread_mutex_unlock(&mb->mu);
        if (n == 0)
            break;
        mgw_mailbox_drain(mb);
    }
    event_free(mb->ev);
    close(mb->efd);
    pthread_mutex_destroy(&mb->mu);
    free(mb->items);
    free(mb);
    return NULL;
}
