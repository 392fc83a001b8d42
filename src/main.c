/*
 * main.c - miltergw: configuration, the control loop (listeners, signals, HTTP, reload,
 * drain), teardown. Sessions run on the worker loops (workers.h); this thread accepts
 * connections and hands them over.
 *
 * SIGHUP builds a new configuration (file + the same flags); new filters get their own
 * bridge on every loop, and new sessions switch to it only once every filter in it has
 * answered Describe, so a reload never makes a message wait. Running sessions finish on the
 * backend they started with, which is freed after the last of them. A bad file keeps the
 * old configuration. Channels to unchanged targets share their connections: gRPC pools
 * subchannels by target and arguments. Listener changes need a restart.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <event2/event.h>
#include <grp.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mgw/cli.h"
#include "mgw/listener.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/metrics_http.h"
#include "mgw/session.h"
#include "mgw/workers.h"
#include "mgw/xmalloc.h"

struct runtime {
    struct mgw_cli cli;
    struct event_base *base;
    struct mgw_workers *workers;
    unsigned nworkers;
    struct mgw_config *cur, *next; /* next: a reload waiting for its filters */
    struct mgw_listener *listeners[MGW_CONFIG_MAX_LISTEN];
    int nlisteners;
    struct mgw_http *http;
    struct event *drain_timer;
    int status;
};

static void apply_logging(const struct mgw_config *c)
{
    mgw_log_set_level(c->log_level);
    mgw_log_set_format(c->log_format);
}

/* /readyz: listeners up, not draining, enough filter channels READY. */
static int is_ready(void *arg, char *why, size_t whylen)
{
    struct runtime *rt = arg;
    size_t total = 0, ready;

    if (mgw_workers_draining(rt->workers))
        return snprintf(why, whylen, "draining"), 0;
    if (rt->nlisteners == 0)
        return snprintf(why, whylen, "milter listeners not open yet"), 0;
    if (rt->cur->nfilters == 0 || rt->cur->http_ready == MGW_CONFIG_READY_NONE)
        return 1;
    ready = mgw_workers_ready_count(rt->workers, &total);
    if ((rt->cur->http_ready == MGW_CONFIG_READY_ALL && ready < total) || ready == 0)
        return snprintf(why, whylen, "%zu of %zu filter channels ready", ready, total), 0;
    return 1;
}

static int unix_opts(const struct mgw_config *c, struct mgw_unix_opts *o)
{
    o->mode = c->unix_mode;
    o->uid = (uid_t)-1;
    o->gid = (gid_t)-1;
    if (c->unix_owner != NULL) {
        struct passwd *pw = getpwnam(c->unix_owner);

        if (pw == NULL)
            return log_error(0, "unknown user", "unix_socket.owner=%s", c->unix_owner), -1;
        o->uid = pw->pw_uid;
    }
    if (c->unix_group != NULL) {
        struct group *gr = getgrnam(c->unix_group);

        if (gr == NULL)
            return log_error(0, "unknown group", "unix_socket.group=%s", c->unix_group), -1;
        o->gid = gr->gr_gid;
    }
    return 0;
}

/* The first configuration's filters are ready on every loop: open the doors. */
static void on_started(void *arg, int ok)
{
    struct runtime *rt = arg;
    const struct mgw_config *c = rt->cur;
    struct mgw_unix_opts uo;
    char err[512];

    if (!ok || unix_opts(c, &uo) < 0)
        goto fail;
    mgw_workers_commit(rt->workers);
    if (mgw_workers_draining(rt->workers))
        return; /* stopped while the filters were being described */
    for (size_t i = 0; i < c->nlisten; i++) {
        rt->listeners[i] = mgw_listener_new(rt->base, c->listen[i], &uo, mgw_workers_adopt,
                                            rt->workers, err, sizeof err);
        if (rt->listeners[i] == NULL) {
            log_error(0, "cannot listen", "listen=%s error=\"%s\"", c->listen[i], err);
            goto fail;
        }
        rt->nlisteners++;
    }
    log_info(0, "started", "version=%s filters=%zu workers=%u", MGW_VERSION, c->nfilters,
             rt->nworkers);
    return;
fail:
    rt->status = 1;
    event_base_loopexit(rt->base, NULL);
}

/* A reloaded configuration is ready on every loop (new sessions use it from now on),
 * or could not start its filters (the running one stays). */
static void on_reloaded(void *arg, int ok)
{
    struct runtime *rt = arg;

    if (!ok) {
        for (size_t i = 0; i < rt->cur->nfilters; i++)
            mgw_metrics_filter_register(rt->cur->filters[i].name);
        rt->next = mgw_config_unref(rt->next);
        mgw_metrics_config_reload(false);
        return;
    }
    mgw_workers_commit(rt->workers);
    mgw_config_unref(rt->cur); /* the loops copied what they keep of it */
    rt->cur = rt->next;
    rt->next = NULL;
    mgw_metrics_config_reload(true);
    log_info(0, "configuration reloaded", "filters=%zu", rt->cur->nfilters);
}

static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    struct runtime *rt = arg;
    char err[1024];

    if (rt->next != NULL || mgw_workers_draining(rt->workers)) {
        log_warn(0, "reload ignored", "reason=%s", rt->next ? "reload_in_progress" : "draining");
        return;
    }
    if (mgw_cli_config(&rt->cli, &rt->next, err, sizeof err) < 0) {
        log_error(0, "reload failed, keeping the running configuration", "error=\"%s\"", err);
        mgw_metrics_config_reload(false);
        return;
    }
    if (rt->next->nlisten != rt->cur->nlisten ||
        (rt->next->http_listen == NULL) != (rt->cur->http_listen == NULL))
        log_warn(0, "listener changes need a restart", "");
    if (rt->next->workers != rt->cur->workers)
        log_warn(0, "worker count changes need a restart", "workers=%u", rt->nworkers);
    apply_logging(rt->next);
    mgw_metrics_filters_retire();
    mgw_workers_prepare(rt->workers, rt->next, on_reloaded, rt);
}

static void on_drained(void *arg)
{
    log_info(0, "drained", "");
    event_base_loopexit(((struct runtime *)arg)->base, NULL);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct runtime *rt = arg;

    log_warn(0, "drain timeout", "sessions=%u", mgw_server_process_sessions());
    mgw_workers_close_all(rt->workers, "drain_timeout");
    event_base_loopexit(rt->base, NULL);
}

/* First SIGTERM/SIGINT: stop accepting and drain (messages in progress finish, bounded
 * by the drain timeout); /readyz turns unready at once. A second one stops now. */
static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct runtime *rt = arg;
    unsigned ms = rt->cur->drain_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    log_info(0, "stopping", "signal=%s sessions=%u drain_timeout_ms=%u",
             sig == SIGTERM ? "TERM" : "INT", mgw_server_process_sessions(), ms);
    if (mgw_workers_draining(rt->workers)) {
        mgw_workers_close_all(rt->workers, "shutdown");
        event_base_loopexit(rt->base, NULL);
        return;
    }
    for (int i = 0; i < rt->nlisteners; i++)
        rt->listeners[i] = mgw_listener_free(rt->listeners[i]);
    rt->nlisteners = 0;
    rt->drain_timer = evtimer_new(rt->base, on_drain_timeout, rt);
    evtimer_add(rt->drain_timer, &tv);
    mgw_workers_drain(rt->workers, on_drained, rt);
}

int main(int argc, char **argv)
{
    static struct runtime rt;
    struct event *sig[3];
    static const int signals[3] = {SIGTERM, SIGINT, SIGHUP};
    sigset_t handled;
    char err[1024];

    mgw_cli_parse(argc, argv, &rt.cli);
    if (mgw_cli_config(&rt.cli, &rt.cur, err, sizeof err) < 0) {
        fprintf(stderr, "miltergw: %s\n", err);
        return 2;
    }
    if (rt.cli.check_config) {
        /* Also what only the start would find out: TLS files must be readable. */
        for (size_t i = 0; i < rt.cur->nfilters; i++) {
            const struct mgw_filter_conf *f = &rt.cur->filters[i];
            const char *files[] = {f->tls_ca, f->tls_cert, f->tls_key};

            for (size_t k = 0; f->tls && k < 3; k++) {
                if (files[k] != NULL && access(files[k], R_OK) != 0) {
                    fprintf(stderr, "miltergw: filter %s: cannot read %s: %s\n", f->name,
                            files[k], strerror(errno));
                    mgw_config_unref(rt.cur);
                    mgw_cli_clear(&rt.cli);
                    return 2;
                }
            }
        }
        printf("configuration ok: %zu listener(s), %zu filter(s)\n", rt.cur->nlisten,
               rt.cur->nfilters);
        mgw_config_unref(rt.cur);
        mgw_cli_clear(&rt.cli);
        return 0;
    }
    apply_logging(rt.cur);
    /* An MTA that hangs up mid-write must cost one session, not the process. */
    signal(SIGPIPE, SIG_IGN);
    /* gRPC's threads inherit the signal mask: block what the loop handles before
     * grpc_init(), unblock it on this thread only (GRPC_CORE.md §11). */
    sigemptyset(&handled);
    for (int i = 0; i < 3; i++)
        sigaddset(&handled, signals[i]);
    pthread_sigmask(SIG_BLOCK, &handled, NULL);
    grpc_init();

    rt.base = event_base_new();
    if (rt.base == NULL)
        mgw_panic("event_base_new failed");
    rt.nworkers = rt.cur->workers ? rt.cur->workers : mgw_workers_auto();
    if (rt.nworkers > MGW_CONFIG_MAX_WORKERS)
        rt.nworkers = MGW_CONFIG_MAX_WORKERS;
    rt.workers = mgw_workers_new(rt.base, rt.nworkers);
    for (int i = 0; i < 3; i++) {
        sig[i] = evsignal_new(rt.base, signals[i], signals[i] == SIGHUP ? on_sighup : on_stop_signal,
                              &rt);
        event_add(sig[i], NULL);
    }
    pthread_sigmask(SIG_UNBLOCK, &handled, NULL);
    if (rt.cur->http_listen != NULL) {
        struct mgw_http_hooks hooks = {.ready = is_ready, .arg = &rt};

        rt.http = mgw_http_new(rt.base, rt.cur->http_listen, &hooks, err, sizeof err);
        if (rt.http == NULL) {
            log_error(0, "cannot listen", "listen=http:%s error=\"%s\"", rt.cur->http_listen,
                      err);
            rt.status = 1;
        }
    }
    if (rt.status == 0)
        mgw_workers_prepare(rt.workers, rt.cur, on_started, &rt);
    if (rt.status == 0 && event_base_dispatch(rt.base) < 0)
        mgw_panic("event loop failed");
    if (rt.status == 0)
        log_info(0, "stopped", "");

    for (int i = 0; i < rt.nlisteners; i++)
        mgw_listener_free(rt.listeners[i]);
    rt.http = mgw_http_free(rt.http);
    /* Sessions, then every backend (replaced ones went with their last sessions). */
    rt.workers = mgw_workers_free(rt.workers);
    for (int i = 0; i < 3; i++)
        event_free(sig[i]);
    if (rt.drain_timer != NULL)
        event_free(rt.drain_timer);
    mgw_config_unref(rt.next);
    mgw_config_unref(rt.cur);
    event_base_free(rt.base);
    mgw_cli_clear(&rt.cli);
    grpc_shutdown_blocking();
    return rt.status;
}
