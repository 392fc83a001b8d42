/*
 * main.c - miltergw: command line, event loop, listeners, signals, teardown.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/backend.h"
#include "mgw/backend_grpc.h"
#include "mgw/filter_conf.h"
#include "mgw/listener.h"
#include "mgw/log.h"
#include "mgw/metrics_http.h"
#include "mgw/session.h"
#include "mgw/xmalloc.h"

#define MAX_LISTENERS 16
#define MAX_FILTERS 32
#define MGW_DEFAULT_DRAIN_TIMEOUT_MS (30u * 1000u)

struct options {
    const char *listen[MAX_LISTENERS];
    int nlisten;
    unsigned unix_mode;
    unsigned drain_timeout_ms;
    const char *http;      /* HTTP listener (metrics, health) or NULL */
    enum { READY_ANY, READY_ALL, READY_NONE } ready_requires;
    struct mgw_server_config server;
    struct mgw_filter_conf filters[MAX_FILTERS];
    size_t nfilters;
};

struct runtime {
    const struct options *o;
    struct event_base *base;
    struct event *drain_timer;
    struct mgw_bridge *bridge;
    struct mgw_http *http;
    struct mgw_server *srv;
    struct mgw_listener *listeners[MAX_LISTENERS];
    int nlisteners;
    int status;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: miltergw [options]\n"
            "  -l, --listen SPEC         milter socket (repeatable): inet:HOST:PORT,\n"
            "                            inet:PORT@HOST, inet6:[ADDR]:PORT, unix:PATH\n"
            "  -f, --filter NAME=TARGET[,on_error=tempfail|accept|reject][,timeout=DUR]\n"
            "               [,eom_timeout=DUR][,mode=shadow]\n"
            "                            gRPC filter service (repeatable; order = merge order);\n"
            "                            TARGET: HOST:PORT, dns:///HOST:PORT, ipv4:..., unix:PATH;\n"
            "                            DUR: 500ms, 10s, 1m (defaults: timeout 10s, eom 60s)\n"
            "      --unix-mode MODE      permissions of unix sockets, octal (default 0660)\n"
            "      --max-connections N   concurrent MTA connections (default %u, 0 = no limit)\n"
            "      --max-frame BYTES     largest milter frame accepted (default %u)\n"
            "      --idle-timeout SECS   close an MTA connection silent this long (default %u)\n"
            "      --drain-timeout SECS  on SIGTERM, how long messages in progress may take\n"
            "                            to finish before their connections are closed (default %u)\n"
            "      --log-level LEVEL     error, warn, info (default) or debug\n"
            "      --log-format FORMAT   logfmt (default) or json\n"
            "      --http HOST:PORT      serve /metrics, /healthz, /readyz there (e.g.\n"
            "                            127.0.0.1:9090; default: no HTTP listener)\n"
            "      --ready-requires WHAT /readyz needs any (default), all or none of the\n"
            "                            filter channels READY\n"
            "  -V, --version             print the version and exit\n"
            "  -h, --help                print this help and exit\n"
            "With no --filter, miltergw is a null milter: it continues every event and\n"
            "accepts every message.\n",
            MGW_DEFAULT_MAX_CONNECTIONS, MGW_MILTER_DEFAULT_MAX_FRAME,
            MGW_DEFAULT_IDLE_TIMEOUT_MS / 1000, MGW_DEFAULT_DRAIN_TIMEOUT_MS / 1000);
}

/* Parse an unsigned number within [min, max] in `base`; exits 2 on error. */
static unsigned long number(const char *opt, const char *s, int base, unsigned long min,
                            unsigned long max)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, base);
    if (errno != 0 || *s == '\0' || *end != '\0' || *s == '-' || v < min || v > max) {
        fprintf(stderr, "miltergw: %s: \"%s\" is not a number in [%lu, %lu]\n", opt, s, min,
                max);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv, struct options *o)
{
    enum { OPT_UNIX_MODE = 256, OPT_MAX_CONN, OPT_MAX_FRAME, OPT_IDLE, OPT_LOG_LEVEL,
           OPT_LOG_FORMAT, OPT_DRAIN, OPT_HTTP, OPT_READY };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"filter", required_argument, NULL, 'f'},
        {"unix-mode", required_argument, NULL, OPT_UNIX_MODE},
        {"max-connections", required_argument, NULL, OPT_MAX_CONN},
        {"max-frame", required_argument, NULL, OPT_MAX_FRAME},
        {"idle-timeout", required_argument, NULL, OPT_IDLE},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"http", required_argument, NULL, OPT_HTTP},
        {"ready-requires", required_argument, NULL, OPT_READY},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    enum mgw_log_level level;
    enum mgw_log_format format;
    char err[512];
    int c;

    while ((c = getopt_long(argc, argv, "l:f:Vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (o->nlisten == MAX_LISTENERS) {
                fprintf(stderr, "miltergw: at most %d --listen\n", MAX_LISTENERS);
                exit(2);
            }
            o->listen[o->nlisten++] = optarg;
            break;
        case 'f':
            if (o->nfilters == MAX_FILTERS) {
                fprintf(stderr, "miltergw: at most %d --filter\n", MAX_FILTERS);
                exit(2);
            }
            if (mgw_filter_conf_parse(optarg, &o->filters[o->nfilters], err, sizeof err) < 0) {
                fprintf(stderr, "miltergw: %s\n", err);
                exit(2);
            }
            for (size_t i = 0; i < o->nfilters; i++) {
                if (strcmp(o->filters[i].name, o->filters[o->nfilters].name) == 0) {
                    fprintf(stderr, "miltergw: --filter: duplicate name \"%s\"\n",
                            o->filters[i].name);
                    exit(2);
                }
            }
            o->nfilters++;
            break;
        case OPT_UNIX_MODE: o->unix_mode = (unsigned)number("--unix-mode", optarg, 8, 0, 0777); break;
        case OPT_MAX_CONN:
            o->server.max_connections = (unsigned)number("--max-connections", optarg, 10, 0, 1000000);
            break;
        case OPT_MAX_FRAME:
            /* Below 64 KiB + 1 the MTA's ordinary body chunks would not fit. */
            o->server.max_frame = (uint32_t)number("--max-frame", optarg, 10, 65536, 0x7fffffff);
            break;
        case OPT_IDLE:
            o->server.idle_timeout_ms = (unsigned)number("--idle-timeout", optarg, 10, 0, 86400) * 1000;
            break;
        case OPT_LOG_LEVEL:
            if (mgw_log_parse_level(optarg, &level) < 0) {
                fprintf(stderr, "miltergw: --log-level: unknown level \"%s\"\n", optarg);
                exit(2);
            }
            mgw_log_set_level(level);
            break;
        case OPT_HTTP: o->http = optarg; break;
        case OPT_READY:
            if (strcmp(optarg, "any") == 0)
                o->ready_requires = READY_ANY;
            else if (strcmp(optarg, "all") == 0)
                o->ready_requires = READY_ALL;
            else if (strcmp(optarg, "none") == 0)
                o->ready_requires = READY_NONE;
            else {
                fprintf(stderr, "miltergw: --ready-requires: any, all or none\n");
                exit(2);
            }
            break;
        case OPT_DRAIN:
            o->drain_timeout_ms = (unsigned)number("--drain-timeout", optarg, 10, 0, 3600) * 1000;
            break;
        case OPT_LOG_FORMAT:
            if (mgw_log_parse_format(optarg, &format) < 0) {
                fprintf(stderr, "miltergw: --log-format: logfmt or json, not \"%s\"\n", optarg);
                exit(2);
            }
            mgw_log_set_format(format);
            break;
        case 'V': printf("miltergw %s\n", MGW_VERSION); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "miltergw: unexpected argument \"%s\"\n", argv[optind]);
        exit(2);
    }
    if (o->nlisten == 0) {
        fprintf(stderr, "miltergw: at least one --listen is required\n");
        usage(stderr);
        exit(2);
    }
}

/* /readyz: the milter listeners are up, we are not draining, and enough filter channels
 * are READY. Kubernetes stops routing to an unready pod. */
static int is_ready(void *arg, char *why, size_t whylen)
{
    struct runtime *rt = arg;
    size_t total = 0, ready;

    if (mgw_server_draining(rt->srv)) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    if (rt->nlisteners == 0) {
        snprintf(why, whylen, "milter listeners not open yet");
        return 0;
    }
    if (rt->bridge == NULL || rt->o->ready_requires == READY_NONE)
        return 1;
    ready = mgw_bridge_ready_count(rt->bridge, &total);
    if ((rt->o->ready_requires == READY_ALL && ready < total) ||
        (rt->o->ready_requires == READY_ANY && ready == 0)) {
        snprintf(why, whylen, "%zu of %zu filter channels ready", ready, total);
        return 0;
    }
    return 1;
}

static int open_listeners(struct runtime *rt)
{
    char err[512];

    for (int i = 0; i < rt->o->nlisten; i++) {
        struct mgw_unix_opts uo = {.mode = rt->o->unix_mode, .uid = (uid_t)-1,
                                   .gid = (gid_t)-1};

        rt->listeners[i] = mgw_listener_new(rt->base, rt->o->listen[i], &uo, rt->srv, err,
                                            sizeof err);
        if (rt->listeners[i] == NULL) {
            log_error(0, "cannot listen", "listen=%s error=\"%s\"", rt->o->listen[i], err);
            return -1;
        }
        rt->nlisteners++;
    }
    log_info(0, "started", "version=%s filters=%zu", MGW_VERSION, rt->o->nfilters);
    return 0;
}

/* Every filter has answered Describe (or failed to): negotiation can be answered. */
static void on_filters_ready(void *arg)
{
    struct runtime *rt = arg;

    if (open_listeners(rt) < 0) {
        rt->status = 1;
        event_base_loopexit(rt->base, NULL);
    }
}

static void stop_now(struct runtime *rt, const char *reason)
{
    mgw_server_close_all(rt->srv, reason);
    event_base_loopexit(rt->base, NULL);
}

static void on_drained(void *arg)
{
    struct runtime *rt = arg;

    log_info(0, "drained", "");
    event_base_loopexit(rt->base, NULL);
}

static void on_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct runtime *rt = arg;

    log_warn(0, "drain timeout", "sessions=%u", mgw_server_session_count(rt->srv));
    stop_now(rt, "drain_timeout");
}

/* First SIGTERM/SIGINT: stop accepting and drain (messages in progress finish, bounded
 * by the drain timeout). A second one stops at once. */
static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct runtime *rt = arg;
    struct timeval tv = {rt->o->drain_timeout_ms / 1000, (rt->o->drain_timeout_ms % 1000) * 1000};

    if (mgw_server_draining(rt->srv)) {
        log_info(0, "stopping now", "signal=%s sessions=%u", sig == SIGTERM ? "TERM" : "INT",
                 mgw_server_session_count(rt->srv));
        stop_now(rt, "shutdown");
        return;
    }
    log_info(0, "stopping", "signal=%s sessions=%u drain_timeout_ms=%u",
             sig == SIGTERM ? "TERM" : "INT", mgw_server_session_count(rt->srv),
             rt->o->drain_timeout_ms);
    /* Stop accepting first so no session starts while the others end. */
    for (int i = 0; i < rt->nlisteners; i++)
        rt->listeners[i] = mgw_listener_free(rt->listeners[i]);
    rt->nlisteners = 0;
    rt->drain_timer = evtimer_new(rt->base, on_drain_timeout, rt);
    evtimer_add(rt->drain_timer, &tv);
    mgw_server_set_empty_cb(rt->srv, on_drained, rt);
    mgw_server_drain(rt->srv);
}

int main(int argc, char **argv)
{
    static struct options o = {.unix_mode = MGW_DEFAULT_UNIX_MODE,
                               .drain_timeout_ms = MGW_DEFAULT_DRAIN_TIMEOUT_MS,
                               .server = {.max_connections = MGW_DEFAULT_MAX_CONNECTIONS,
                                          .max_frame = MGW_MILTER_DEFAULT_MAX_FRAME,
                                          .idle_timeout_ms = MGW_DEFAULT_IDLE_TIMEOUT_MS}};
    struct runtime rt = {.o = &o, .status = 0};
    struct mgw_backend *null_backend = NULL, *backend;
    struct mgw_bridge *bridge = NULL;
    struct event *sigterm, *sigint;
    sigset_t handled;

    parse_args(argc, argv, &o);
    /* An MTA that hangs up mid-write must cost one session, not the process. */
    signal(SIGPIPE, SIG_IGN);
    /* gRPC's threads inherit the signal mask: block what the event loop handles before
     * grpc_init(), unblock it on this thread only (GRPC_CORE.md §11). */
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &handled, NULL);
    if (o.nfilters > 0)
        grpc_init();

    rt.base = event_base_new();
    if (rt.base == NULL)
        mgw_panic("event_base_new failed");
    if (o.nfilters > 0) {
        char err[512];

        bridge = rt.bridge = mgw_bridge_new(rt.base, o.filters, o.nfilters, on_filters_ready,
                                            &rt, err, sizeof err);
        if (bridge == NULL) {
            log_error(0, "cannot start filters", "error=\"%s\"", err);
            event_base_free(rt.base);
            for (size_t i = 0; i < o.nfilters; i++)
                mgw_filter_conf_clear(&o.filters[i]);
            grpc_shutdown_blocking();
            return 1;
        }
        backend = mgw_bridge_backend(bridge);
    } else {
        backend = null_backend = mgw_backend_null_new();
    }
    rt.srv = mgw_server_new(rt.base, &o.server, backend);
    sigterm = evsignal_new(rt.base, SIGTERM, on_stop_signal, &rt);
    sigint = evsignal_new(rt.base, SIGINT, on_stop_signal, &rt);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    pthread_sigmask(SIG_UNBLOCK, &handled, NULL);
    if (o.http != NULL) {
        struct mgw_http_hooks hooks = {.ready = is_ready, .arg = &rt};
        char err[512];

        rt.http = mgw_http_new(rt.base, o.http, &hooks, err, sizeof err);
        if (rt.http == NULL) {
            log_error(0, "cannot listen", "listen=http:%s error=\"%s\"", o.http, err);
            rt.status = 1;
        }
    }

    if (rt.status != 0)
        ;
    else if (o.nfilters == 0 && open_listeners(&rt) < 0)
        rt.status = 1;
    else if (event_base_dispatch(rt.base) < 0)
        mgw_panic("event loop failed");
    if (rt.status == 0)
        log_info(0, "stopped", "");

    for (int i = 0; i < rt.nlisteners; i++)
        mgw_listener_free(rt.listeners[i]);
    rt.http = mgw_http_free(rt.http);
    rt.srv = mgw_server_free(rt.srv);
    bridge = rt.bridge = mgw_bridge_free(bridge);
    mgw_backend_free(null_backend);
    event_free(sigterm);
    event_free(sigint);
    if (rt.drain_timer != NULL)
        event_free(rt.drain_timer);
    event_base_free(rt.base);
    for (size_t i = 0; i < o.nfilters; i++)
        mgw_filter_conf_clear(&o.filters[i]);
    if (o.nfilters > 0)
        grpc_shutdown_blocking();
    return rt.status;
}
