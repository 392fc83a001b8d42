/*
 * metrics_http.c - /metrics, /healthz and /readyz on an evhttp listener (metrics_http.h).
 *
 * No logic lives here: counters come from metrics.c, readiness from main's hook. The
 * listening socket is made here (not by evhttp_bind_socket) so that a bind failure comes
 * back as text in err instead of a libevent warning on stderr, and so the real port of a
 * port-0 bind can be read back for the log line and the tests.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/metrics_http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mgw/listen_spec.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/xmalloc.h"

#define DEFAULT_TICK_MS  1000u
#define DEFAULT_STALL_MS 5000u
#define MAX_HEADERS_SIZE 8192
#define MAX_BODY_SIZE    4096
#define IO_TIMEOUT_S     10
#define LISTEN_BACKLOG   64

struct mgw_http {
    struct event_base *base;
    struct evhttp *http;
    struct event *tick;
    struct mgw_http_hooks hooks;
    double last_tick; /* hooks.clock() at the last tick */
    uint16_t port;
    char name[300]; /* "http:HOST:PORT", for logs */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double monotonic_clock(void *arg)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- Health ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_http *h = arg;
    double now = h->hooks.clock(h->hooks.arg);
    double gap = now - h->last_tick;

    /* A tick this late means the loop was busy elsewhere for that long: every MTA
     * session and filter stream waited too. */
    if (gap * 1000.0 > h->hooks.stall_ms)
        log_warn(0, "event loop stalled", "seconds=%.3f", gap);
    h->last_tick = now;
}

/* ---- Requests ---- */

/* libevent 2.1 writes the body even in answer to HEAD (it only leaves out Content-Length),
 * which desynchronizes a keep-alive client: drop the body of a HEAD answer here. */
static void send_reply(struct evhttp_request *req, int code, const char *reason)
{
    struct evbuffer *body = evhttp_request_get_output_buffer(req);

    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
        evbuffer_drain(body, evbuffer_get_length(body));
    evhttp_send_reply(req, code, reason, NULL);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evkeyvalq *hdr = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evhttp_request_get_output_buffer(req);

    evhttp_add_header(hdr, "Content-Type", "text/plain; charset=utf-8");
    evhttp_add_header(hdr, "Cache-Control", "no-store");
    evbuffer_add(body, text, strlen(text));
    send_reply(req, code, reason);
}

static void release_render(const void *data, size_t len, void *extra)
{
    free((void *)(uintptr_t)data);
}

static void serve_metrics(struct evhttp_request *req)
{
    struct evkeyvalq *hdr = evhttp_request_get_output_headers(req);
    size_t len;
    char *text;

    evhttp_add_header(hdr, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    evhttp_add_header(hdr, "Cache-Control", "no-store");
    if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        text = mgw_metrics_render(&len);
        /* Hand the rendered text over without a copy; evbuffer frees it once sent. */
        if (evbuffer_add_reference(evhttp_request_get_output_buffer(req), text, len, release_render,
                                   NULL) < 0)
            free(text);
    }
    send_reply(req, HTTP_OK, "OK");
}

static void serve_healthz(struct mgw_http *h, struct evhttp_request *req)
{
    double age = h->hooks.clock(h->hooks.arg) - h->last_tick;
    char text[96];

    if (age * 1000.0 > h->hooks.stall_ms) {
        snprintf(text, sizeof text, "stalled: event loop tick %.1fs old\n", age);
        reply_text(req, 503, "Service Unavailable", text);
        return;
    }
    reply_text(req, HTTP_OK, "OK", "ok\n");
}

static void serve_readyz(struct mgw_http *h, struct evhttp_request *req)
{
    char why[256] = "";
    char text[sizeof why + 16];

    if (h->hooks.ready == NULL || h->hooks.ready(h->hooks.arg, why, sizeof why)) {
        reply_text(req, HTTP_OK, "OK", "ready\n");
        return;
    }
    why[sizeof why - 1] = '\0';
    snprintf(text, sizeof text, "not ready: %s\n", why[0] ? why : "unspecified");
    reply_text(req, 503, "Service Unavailable", text);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct mgw_http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    int which;

    if (path == NULL)
        path = "";
    if (strcmp(path, "/metrics") == 0)
        which = 0;
    else if (strcmp(path, "/healthz") == 0)
        which = 1;
    else if (strcmp(path, "/readyz") == 0)
        which = 2;
    else {
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found\n");
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        reply_text(req, 405, "Method Not Allowed", "method not allowed\n");
        return;
    }
    switch (which) {
    case 0: serve_metrics(req); break;
    case 1: serve_healthz(h, req); break;
    default: serve_readyz(h, req); break;
    }
}

/* ---- Listening ---- */

/* A listening, non-blocking socket on the first address of host that binds, or -1. */
static evutil_socket_t listen_socket(const char *host, uint16_t port, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res, *ai;
    char portstr[8];
    evutil_socket_t fd = -1;
    int r, saved = 0;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    if ((r = getaddrinfo(host, portstr, &hints, &res)) != 0) {
        seterr(err, errlen, "http listen %s: %s", host, gai_strerror(r));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        evutil_make_listen_socket_reuseable(fd);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        seterr(err, errlen, "http listen %s:%u: %s", host, (unsigned)port, strerror(saved));
    return fd;
}

static uint16_t bound_port(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

struct mgw_http *mgw_http_new(struct event_base *base, const char *listen,
                              const struct mgw_http_hooks *hooks, char *err, size_t errlen)
{
    struct mgw_http *h = mgw_xcalloc(1, sizeof *h);
    char host[256];
    uint16_t port;
    evutil_socket_t fd;
    struct timeval tv;

    if (listen == NULL)
        listen = MGW_HTTP_DEFAULT_LISTEN;
    if (mgw_hostport_parse(listen, host, sizeof host, &port) < 0) {
        seterr(err, errlen, "bad http listen \"%s\": expected HOST:PORT or [ADDR]:PORT", listen);
        goto fail;
    }
    h->base = base;
    if (hooks)
        h->hooks = *hooks;
    if (h->hooks.clock == NULL)
        h->hooks.clock = monotonic_clock;
    if (h->hooks.tick_ms == 0)
        h->hooks.tick_ms = DEFAULT_TICK_MS;
    if (h->hooks.stall_ms == 0)
        h->hooks.stall_ms = DEFAULT_STALL_MS;

    if ((fd = listen_socket(host, port, err, errlen)) < 0)
        goto fail;
    h->port = bound_port(fd);
    h->http = evhttp_new(base);
    if (h->http == NULL || evhttp_accept_socket_with_handle(h->http, fd) == NULL) {
        evutil_closesocket(fd);
        seterr(err, errlen, "http listen %s: evhttp setup failed", listen);
        goto fail;
    }
    evhttp_set_max_headers_size(h->http, MAX_HEADERS_SIZE);
    evhttp_set_max_body_size(h->http, MAX_BODY_SIZE);
    evhttp_set_timeout(h->http, IO_TIMEOUT_S);
    /* Let every method reach on_request, so the answer is 405 rather than evhttp's 501. */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(h->http, on_request, h);

    h->last_tick = h->hooks.clock(h->hooks.arg);
    h->tick = event_new(base, -1, EV_PERSIST, on_tick, h);
    tv.tv_sec = h->hooks.tick_ms / 1000;
    tv.tv_usec = (suseconds_t)(h->hooks.tick_ms % 1000) * 1000;
    if (h->tick == NULL || event_add(h->tick, &tv) < 0) {
        seterr(err, errlen, "http listen %s: cannot start the health timer", listen);
        goto fail;
    }

    snprintf(h->name, sizeof h->name, strchr(host, ':') ? "http:[%s]:%u" : "http:%s:%u", host,
             (unsigned)h->port);
    log_info(0, "listening", "listen=%s", h->name);
    return h;

fail:
    mgw_http_free(h);
    return NULL;
}

uint16_t mgw_http_port(const struct mgw_http *h)
{
    return h->port;
}

struct mgw_http *mgw_http_free(struct mgw_http *h)
{
    if (h == NULL)
        return NULL;
    if (h->tick)
        event_free(h->tick);
    if (h->http)
        evhttp_free(h->http); /* closes the listening socket and open connections */
    free(h);
    return NULL;
}
