/*
 * workers.c - session loops on their own threads (see workers.h).
 *
 * Every order from the control thread to a loop is a heap `struct order` posted to the
 * loop's mailbox and freed by the loop; every report back is the loop itself posted to
 * the control mailbox with a value. Fields of a `struct loop` are the loop thread's,
 * except those marked "control", which only the control thread touches; what one side
 * writes before a post the other reads after it (the mailbox's lock orders them).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/workers.h"

#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mgw/backend_grpc.h"
#include "mgw/config.h"
#include "mgw/listener.h"
#include "mgw/log.h"
#include "mgw/mailbox.h"
#include "mgw/session.h"
#include "mgw/xmalloc.h"

struct loop {
    struct mgw_workers *w;
    unsigned index;
    pthread_t thread;
    struct event_base *base;
    struct mgw_mailbox *mb; /* orders for this loop */
    struct mgw_server *srv; /* from the first commit */
    struct mgw_backend *cur, *next;
    struct mgw_bridge *next_bridge;
    char err[512]; /* why `next` could not be built */
    /* control */
    struct mgw_bridge *ctl_cur, *ctl_next; /* for mgw_workers_ready_count() */
    int drained;
};

struct mgw_workers {
    struct event_base *control;
    struct mgw_mailbox *mb; /* reports from the loops */
    struct loop *loops;
    unsigned n;
    unsigned turn; /* the loop the next connection goes to */
    int stopping;
    /* The preparation in progress. */
    const struct mgw_config *prep_cfg;
    unsigned prep_pending;
    int prep_failed;
    void (*prep_done)(void *, int);
    void *prep_arg;
    size_t nfilters; /* of the committed configuration */
    /* Draining. */
    int draining;
    unsigned drain_pending;
    void (*empty)(void *);
    void *empty_arg;
};

struct order {
    struct loop *k;
    const struct mgw_config *cfg;
    int fd;
    char peer[MGW_PEER_MAX];
    const char *reason; /* a string literal */
};

static void post(struct loop *k, mgw_mailbox_fn *fn, const struct order *o)
{
    struct order *copy = mgw_xmalloc(sizeof *copy);

    *copy = *o;
    copy->k = k;
    mgw_mailbox_post(k->mb, fn, copy, 0);
}

static void post_all(struct mgw_workers *w, mgw_mailbox_fn *fn, const struct order *o)
{
    for (unsigned i = 0; i < w->n; i++)
        post(&w->loops[i], fn, o);
}

/* A backend's release (backend.h): the bridge it belongs to, or the null milter. */
static void backend_release(struct mgw_backend *b, void *bridge)
{
    if (bridge != NULL)
        mgw_bridge_free(bridge);
    else
        mgw_backend_free(b);
}

static struct mgw_backend *backend_drop(struct mgw_backend *b)
{
    if (b != NULL)
        b->release(b, b->release_arg);
    return NULL;
}

/* ---- on the loops ---- */

static void *loop_thread(void *arg)
{
    struct loop *k = arg;

    if (event_base_dispatch(k->base) < 0)
        mgw_panic("worker %u: event loop failed", k->index);
    return NULL;
}

static void on_prepared(void *arg, int ok);
static void on_drained(void *arg, int val);

/* Tell the control thread: fn(k, val) runs there. */
static void report(struct loop *k, mgw_mailbox_fn *fn, int val)
{
    mgw_mailbox_post(k->w->mb, fn, k, val);
}

/* The bridge's `ready` and the server's empty callback. */
static void loop_ready(void *k)
{
    report(k, on_prepared, 1);
}

static void loop_empty(void *k)
{
    report(k, on_drained, 0);
}

static void prepare_on_loop(void *arg, int val)
{
    struct order *o = arg;
    struct loop *k = o->k;
    const struct mgw_config *cfg = o->cfg;

    free(o);
    if (cfg->nfilters == 0) {
        k->next = mgw_backend_null_new();
        k->next_bridge = NULL;
    } else {
        k->next_bridge = mgw_bridge_new(k->base, cfg->filters, cfg->nfilters, cfg->phase_memory,
                                        NULL, NULL, k->err, sizeof k->err);
        if (k->next_bridge == NULL) {
            report(k, on_prepared, 0);
            return;
        }
        k->next = mgw_bridge_backend(k->next_bridge);
    }
    k->next->release = backend_release;
    k->next->release_arg = k->next_bridge;
    if (k->next_bridge != NULL)
        mgw_bridge_on_ready(k->next_bridge, loop_ready, k);
    else
        loop_ready(k);
}

static void discard_on_loop(void *arg, int val)
{
    struct order *o = arg;

    o->k->next = backend_drop(o->k->next);
    free(o);
}

static void commit_on_loop(void *arg, int val)
{
    struct order *o = arg;
    struct loop *k = o->k;

    if (k->srv == NULL) {
        k->srv = mgw_server_new(k->base, &o->cfg->server, k->next);
        mgw_server_set_worker(k->srv, k->index);
    } else {
        mgw_server_replace(k->srv, &o->cfg->server, k->next);
    }
    k->cur = k->next;
    k->next = NULL;
    free(o);
}

static void drain_on_loop(void *arg, int val)
{
    struct order *o = arg;
    struct loop *k = o->k;

    free(o);
    if (k->srv == NULL) {
        loop_empty(k);
        return;
    }
    mgw_server_set_empty_cb(k->srv, loop_empty, k);
    mgw_server_drain(k->srv);
}

static void close_on_loop(void *arg, int val)
{
    struct order *o = arg;

    if (o->k->srv != NULL)
        mgw_server_close_all(o->k->srv, o->reason);
    free(o);
}

static void adopt_on_loop(void *arg, int val)
{
    struct order *o = arg;

    mgw_server_adopt(o->k->srv, o->fd, o->peer);
    free(o);
}

/* Sessions first (a replaced backend goes with its last one), then the backends. */
static void stop_on_loop(void *arg, int val)
{
    struct order *o = arg;
    struct loop *k = o->k;

    free(o);
    k->srv = mgw_server_free(k->srv);
    k->cur = backend_drop(k->cur);
    k->next = backend_drop(k->next);
    event_base_loopbreak(k->base);
}

/* ---- on the control thread ---- */

static void on_prepared(void *arg, int ok)
{
    struct loop *k = arg;
    struct mgw_workers *w = k->w;

    if (w->stopping)
        return;
    if (!ok && !w->prep_failed)
        log_error(0, "cannot start filters", "error=\"%s\"", k->err);
    if (!ok)
        w->prep_failed = 1;
    k->ctl_next = ok ? k->next_bridge : NULL;
    if (--w->prep_pending > 0)
        return;
    if (w->prep_failed) {
        post_all(w, discard_on_loop, &(struct order){0});
        for (unsigned i = 0; i < w->n; i++)
            w->loops[i].ctl_next = NULL;
    }
    w->prep_done(w->prep_arg, !w->prep_failed);
}

static void on_drained(void *arg, int val)
{
    struct loop *k = arg;
    struct mgw_workers *w = k->w;

    if (w->stopping || !w->draining || k->drained)
        return;
    k->drained = 1;
    if (--w->drain_pending == 0 && w->empty != NULL)
        w->empty(w->empty_arg);
}

unsigned mgw_workers_auto(void)
{
    cpu_set_t set;
    long n;

    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

struct mgw_workers *mgw_workers_new(struct event_base *control, unsigned n)
{
    struct mgw_workers *w = mgw_xcalloc(1, sizeof *w);
    sigset_t all, old;

    w->control = control;
    w->mb = mgw_mailbox_new(control);
    w->n = n ? n : 1;
    w->loops = mgw_xcalloc(w->n, sizeof *w->loops);
    /* Signals are the control thread's: the loops (and the gRPC threads they start)
     * inherit a mask that blocks them all. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (unsigned i = 0; i < w->n; i++) {
        struct loop *k = &w->loops[i];

        k->w = w;
        k->index = i;
        k->base = event_base_new();
        if (k->base == NULL)
            mgw_panic("worker %u: event_base_new failed", i);
        k->mb = mgw_mailbox_new(k->base);
        if (pthread_create(&k->thread, NULL, loop_thread, k) != 0)
            mgw_panic("worker %u: cannot start its thread", i);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return w;
}

void mgw_workers_prepare(struct mgw_workers *w, const struct mgw_config *cfg,
                         void (*done)(void *arg, int ok), void *arg)
{
    w->prep_cfg = cfg;
    w->prep_pending = w->n;
    w->prep_failed = 0;
    w->prep_done = done;
    w->prep_arg = arg;
    post_all(w, prepare_on_loop, &(struct order){.cfg = cfg});
}

void mgw_workers_commit(struct mgw_workers *w)
{
    for (unsigned i = 0; i < w->n; i++) {
        w->loops[i].ctl_cur = w->loops[i].ctl_next;
        w->loops[i].ctl_next = NULL;
    }
    w->nfilters = w->prep_cfg->nfilters;
    post_all(w, commit_on_loop, &(struct order){.cfg = w->prep_cfg});
}

void mgw_workers_adopt(void *arg, int fd, const char *peer)
{
    struct mgw_workers *w = arg;
    struct order o = {.fd = fd};

    snprintf(o.peer, sizeof o.peer, "%s", peer ? peer : "-");
    post(&w->loops[w->turn], adopt_on_loop, &o);
    w->turn = (w->turn + 1) % w->n;
}

void mgw_workers_drain(struct mgw_workers *w, void (*empty)(void *arg), void *arg)
{
    w->draining = 1;
    w->drain_pending = w->n;
    w->empty = empty;
    w->empty_arg = arg;
    post_all(w, drain_on_loop, &(struct order){0});
}

int mgw_workers_draining(const struct mgw_workers *w)
{
    return w->draining;
}

void mgw_workers_close_all(struct mgw_workers *w, const char *reason)
{
    post_all(w, close_on_loop, &(struct order){.reason = reason});
}

size_t mgw_workers_ready_count(const struct mgw_workers *w, size_t *total)
{
    size_t least = w->nfilters;

    for (unsigned i = 0; i < w->n; i++) {
        size_t n, t;

        if (w->loops[i].ctl_cur == NULL)
            continue;
        n = mgw_bridge_ready_count(w->loops[i].ctl_cur, &t);
        if (n < least)
            least = n;
    }
    *total = w->nfilters;
    return least;
}

struct mgw_workers *mgw_workers_free(struct mgw_workers *w)
{
    if (w == NULL)
        return NULL;
    w->stopping = 1;
    post_all(w, stop_on_loop, &(struct order){0});
    for (unsigned i = 0; i < w->n; i++) {
        struct loop *k = &w->loops[i];

        pthread_join(k->thread, NULL);
        /* The thread is gone: this one is the loop's now, for what was left posted. */
        k->mb = mgw_mailbox_free(k->mb);
        event_base_free(k->base);
    }
    w->mb = mgw_mailbox_free(w->mb);
    free(w->loops);
    free(w);
    return NULL;
}
