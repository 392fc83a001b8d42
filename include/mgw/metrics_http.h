/*
 * metrics_http.h - the operations endpoint: Prometheus metrics and health probes over
 * HTTP (libevent evhttp), on its own listener, separate from the milter sockets.
 *
 *   GET /metrics   200, text/plain; version=0.0.4: mgw_metrics_render() (metrics.h)
 *   GET /healthz   liveness, see below: 200 "ok" or 503 "stalled ..."
 *   GET /readyz    readiness, from the `ready` hook: 200 "ready" or 503 "not ready: WHY"
 *   other paths    404;  a known path with a method other than GET or HEAD: 405
 * HEAD is GET without the body. Query strings are ignored. Requests are bounded: headers
 * 8 KiB (evhttp answers 400 beyond), body 4 KiB (413), 10 s read/write timeout per
 * connection. There is no cap on the number of connections (evhttp 2.1 has none): bind
 * it to loopback or a pod IP, not the Internet.
 *
 * LIVENESS. Everything here runs on the event loop it reports on, so a loop that is
 * stuck cannot answer at all: a probe's own timeout (shorter than the stall threshold,
 * e.g. Kubernetes timeoutSeconds 2) is what detects a wedged gateway. On top of that a
 * timer "ticks" every second; /healthz answers 503 if the last tick is older than the
 * stall threshold (5 s), which is what a request sees when it is served right after a
 * long stall, before the timer had its turn; and the tick itself logs
 * `msg="event loop stalled"` whenever it fires that late, so stalls that end on their
 * own still leave a trace. A loop that answers /healthz promptly is alive.
 *
 * READINESS is main's decision (listener up, at least one filter channel READY, not
 * draining...): this module only calls the hook.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_METRICS_HTTP_H
#define MGW_METRICS_HTTP_H

#ifdef MGW_CORE
#error "metrics_http.h is I/O: not part of mgw_core (src/core)"
#endif

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct mgw_http;

#define MGW_HTTP_DEFAULT_LISTEN "127.0.0.1:9090"

struct mgw_http_hooks {
    /* Return nonzero when ready; when not, may write a short reason into why (NUL-
     * terminated, whylen bytes). NULL: always ready. Called on the event-loop thread. */
    int (*ready)(void *arg, char *why, size_t whylen);
    void *arg; /* passed to ready and clock */
    /* Tests only; zero/NULL for the defaults. `clock` returns seconds from any fixed
     * origin (default CLOCK_MONOTONIC); tick_ms (1000) and stall_ms (5000) as above. */
    double (*clock)(void *arg);
    unsigned tick_ms;
    unsigned stall_ms;
};

/*
 * Listen on `listen`, "HOST:PORT" or "[IPV6]:PORT" (NULL: MGW_HTTP_DEFAULT_LISTEN); HOST
 * may be a name, the first address that binds wins; PORT 0 picks a free port. Logs
 * `msg=listening listen=http:HOST:PORT` with the real port. `base` is borrowed and must
 * outlive the result; `hooks` (may be NULL) is copied. Returns NULL with a reason in err
 * (may be NULL) on a bad spec or a bind failure.
 */
struct mgw_http *mgw_http_new(struct event_base *base, const char *listen,
                              const struct mgw_http_hooks *hooks, char *err, size_t errlen);

/* The port actually bound (useful after port 0). */
uint16_t mgw_http_port(const struct mgw_http *h);

/* Stop listening, drop open HTTP connections and the timer. NULL-safe; returns NULL. */
struct mgw_http *mgw_http_free(struct mgw_http *h);

#endif
