/*
 * test_metrics_http.c - /metrics, /healthz and /readyz on a real event loop, fetched with
 * libevent's own HTTP client over loopback. One request at a time, each started from the
 * previous one's answer; a safety timer bounds the whole run. Time is a fake clock, so
 * the stalled-loop answer needs no sleeping.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/metrics.h"
#include "mgw/metrics_http.h"

#define SAFETY_S 20

struct http_case {
    const char *name;
    enum evhttp_cmd_type method;
    const char *path;
    int ready;         /* what the ready hook answers during this request */
    double clock_jump; /* added to the fake clock before the request */
    size_t big_header; /* add a header of this many bytes */
    size_t big_body;   /* send a body of this many bytes */
    int want_code;
    const char *want_body; /* substring of the body, or NULL */
    const char *want_type; /* prefix of Content-Type, or NULL */
    const char *want_allow;
};

struct ctx {
    struct event_base *base;
    struct evhttp_connection *conn;
    const struct http_case *cases;
    size_t n, next, done;
    double now;
    int ready;
    char failure[512];
};

static double fake_clock(void *arg)
{
    return ((struct ctx *)arg)->now;
}

static int ready_hook(void *arg, char *why, size_t whylen)
{
    struct ctx *c = arg;

    if (!c->ready)
        snprintf(why, whylen, "no filter channel is READY");
    return c->ready;
}

static void fail_run(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail_run(struct ctx *c, const char *fmt, ...)
{
    va_list ap;

    if (c->failure[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(c->failure, sizeof c->failure, fmt, ap);
        va_end(ap);
    }
    event_base_loopbreak(c->base);
}

static void start_next(evutil_socket_t fd, short what, void *arg);

static void on_response(struct evhttp_request *req, void *arg)
{
    struct ctx *c = arg;
    const struct http_case *t = &c->cases[c->next];
    struct evbuffer *in;
    const char *type, *allow;
    char *body;
    size_t len;
    int code;

    if (req == NULL) {
        fail_run(c, "%s: got no response", t->name);
        return;
    }
    code = evhttp_request_get_response_code(req);
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    body = malloc(len + 1);
    evbuffer_remove(in, body, len);
    body[len] = '\0';
    type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    allow = evhttp_find_header(evhttp_request_get_input_headers(req), "Allow");

    if (code != t->want_code)
        fail_run(c, "%s: got status %d, want %d (body %s)", t->name, code, t->want_code, body);
    else if (t->want_body && strstr(body, t->want_body) == NULL)
        fail_run(c, "%s: got body \"%s\", want it to contain \"%s\"", t->name, body, t->want_body);
    else if (t->method == EVHTTP_REQ_HEAD && len != 0)
        fail_run(c, "%s: got a %zu-byte body, want none", t->name, len);
    else if (t->want_type &&
             (type == NULL || strncmp(type, t->want_type, strlen(t->want_type)) != 0))
        fail_run(c, "%s: got Content-Type %s, want %s...", t->name, type ? type : "(none)",
                 t->want_type);
    else if (t->want_allow && (allow == NULL || strcmp(allow, t->want_allow) != 0))
        fail_run(c, "%s: got Allow %s, want %s", t->name, allow ? allow : "(none)", t->want_allow);
    free(body);
    if (c->failure[0])
        return;
    c->done++;
    c->next++;
    /* Not from inside the connection's own callback: from the loop, next turn. */
    event_base_once(c->base, -1, EV_TIMEOUT, start_next, c, &(struct timeval){0, 0});
}

static void start_next(evutil_socket_t fd, short what, void *arg)
{
    struct ctx *c = arg;
    const struct http_case *t;
    struct evhttp_request *req;

    if (c->next == c->n) {
        event_base_loopbreak(c->base);
        return;
    }
    t = &c->cases[c->next];
    c->ready = t->ready;
    c->now += t->clock_jump;
    req = evhttp_request_new(on_response, c);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (t->big_header) {
        char *v = malloc(t->big_header + 1);

        memset(v, 'x', t->big_header);
        v[t->big_header] = '\0';
        evhttp_add_header(evhttp_request_get_output_headers(req), "X-Big", v);
        free(v);
    }
    for (size_t i = 0; i < t->big_body; i++)
        evbuffer_add(evhttp_request_get_output_buffer(req), "y", 1);
    if (evhttp_make_request(c->conn, req, t->method, t->path) < 0)
        fail_run(c, "%s: cannot send the request", t->name);
}

static void on_safety(evutil_socket_t fd, short what, void *arg)
{
    struct ctx *c = arg;

    fail_run(c, "timed out after %d s at case %zu", SAFETY_S, c->next);
}

static void endpoints_answer_as_documented(void **state)
{
    static const struct http_case cases[] = {
        {"metrics are Prometheus text", EVHTTP_REQ_GET, "/metrics", 1, 0, 0, 0, 200,
         "# TYPE miltergw_sessions_open gauge\nmiltergw_sessions_open 2\n",
         "text/plain; version=0.0.4", NULL},
        {"filter series are served", EVHTTP_REQ_GET, "/metrics", 1, 0, 0, 0, 200,
         "miltergw_filter_channel_ready{filter=\"spam\"} 1\n", NULL, NULL},
        {"a query string is ignored", EVHTTP_REQ_GET, "/metrics?x=1", 1, 0, 0, 0, 200,
         "miltergw_sessions_total 2\n", NULL, NULL},
        {"HEAD gets the status without a body", EVHTTP_REQ_HEAD, "/metrics", 1, 0, 0, 0, 200, NULL,
         "text/plain; version=0.0.4", NULL},
        {"a turning loop is healthy", EVHTTP_REQ_GET, "/healthz", 1, 0, 0, 0, 200, "ok\n",
         "text/plain", NULL},
        {"not ready says why", EVHTTP_REQ_GET, "/readyz", 0, 0, 0, 0, 503,
         "not ready: no filter channel is READY\n", NULL, NULL},
        {"ready when the hook says so", EVHTTP_REQ_GET, "/readyz", 1, 0, 0, 0, 200, "ready\n", NULL,
         NULL},
        {"an unknown path is 404", EVHTTP_REQ_GET, "/nope", 1, 0, 0, 0, 404, "not found", NULL,
         NULL},
        {"the root is 404", EVHTTP_REQ_GET, "/", 1, 0, 0, 0, 404, NULL, NULL, NULL},
        {"POST is 405", EVHTTP_REQ_POST, "/metrics", 1, 0, 0, 0, 405, NULL, NULL, "GET, HEAD"},
        {"DELETE is 405", EVHTTP_REQ_DELETE, "/readyz", 1, 0, 0, 0, 405, NULL, NULL, "GET, HEAD"},
        {"OPTIONS is 405, not evhttp's 501", EVHTTP_REQ_OPTIONS, "/healthz", 1, 0, 0, 0, 405, NULL,
         NULL, "GET, HEAD"},
        {"a tick older than the threshold is a stall", EVHTTP_REQ_GET, "/healthz", 1, 6.5, 0, 0,
         503, "stalled: event loop tick 6.5s old\n", NULL, NULL},
        {"a body over the limit is refused", EVHTTP_REQ_POST, "/metrics", 1, 0, 0, 5000, 413, NULL,
         NULL, NULL},
        {"oversized headers are refused (evhttp 2.1: 400)", EVHTTP_REQ_GET, "/metrics", 1, 0, 10000,
         0, 400, NULL, NULL, NULL},
    };
    struct ctx c = {.cases = cases, .n = sizeof cases / sizeof cases[0], .now = 1000.0};
    struct mgw_http_hooks hooks = {
        .ready = ready_hook,
        .arg = &c,
        .clock = fake_clock,
        .tick_ms = 3600u * 1000u, /* the real timer must not tick during the run */
    };
    struct mgw_http *h;
    struct event *safety;
    struct timeval safety_tv = {SAFETY_S, 0};
    char err[256] = "";

    mgw_metrics_reset();
    mgw_metrics_session_opened();
    mgw_metrics_session_opened();
    mgw_metrics_filter_set_ready(mgw_metrics_filter_register("spam"), true);

    c.base = event_base_new();
    assert_non_null(c.base);
    h = mgw_http_new(c.base, "127.0.0.1:0", &hooks, err, sizeof err);
    if (h == NULL)
        fail_msg("mgw_http_new: got NULL (%s), want a listener", err);
    if (mgw_http_port(h) == 0)
        fail_msg("port: got 0, want the bound port");
    c.conn = evhttp_connection_base_new(c.base, NULL, "127.0.0.1", mgw_http_port(h));
    assert_non_null(c.conn);
    safety = evtimer_new(c.base, on_safety, &c);
    event_add(safety, &safety_tv);
    event_base_once(c.base, -1, EV_TIMEOUT, start_next, &c, &(struct timeval){0, 0});

    event_base_dispatch(c.base);

    evhttp_connection_free(c.conn);
    event_free(safety);
    mgw_http_free(h);
    event_base_free(c.base);
    mgw_metrics_reset();
    if (c.failure[0])
        fail_msg("%s", c.failure);
    if (c.done != c.n)
        fail_msg("answers: got %zu, want %zu", c.done, c.n);
}

static void bad_listen_specs_are_refused(void **state)
{
    static const struct {
        const char *spec;
        const char *want_err;
    } cases[] = {
        {"9090", "bad http listen"},
        {":9090", "bad http listen"},
        {"127.0.0.1:", "bad http listen"},
        {"127.0.0.1:65536", "bad http listen"},
        {"127.0.0.1:90x", "bad http listen"},
        {"127.0.0.1:-1", "bad http listen"},
        {"::1:9090", "bad http listen"},
        {"[::1]9090", "bad http listen"},
        {"[]:9090", "bad http listen"},
        {"192.0.2.1:0", "http listen 192.0.2.1:0:"}, /* not an address of this host */
    };
    struct event_base *base = event_base_new();

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        struct mgw_http *h = mgw_http_new(base, cases[i].spec, NULL, err, sizeof err);

        if (h != NULL) {
            mgw_http_free(h);
            fail_msg("%s: got a listener, want an error", cases[i].spec);
        }
        if (strstr(err, cases[i].want_err) == NULL)
            fail_msg("%s: got error \"%s\", want \"%s...\"", cases[i].spec, err, cases[i].want_err);
    }
    event_base_free(base);
}

static void a_port_in_use_is_an_error_and_free_releases_it(void **state)
{
    struct event_base *base = event_base_new();
    char err[256] = "", spec[64];
    struct mgw_http *a, *b;

    a = mgw_http_new(base, "127.0.0.1:0", NULL, err, sizeof err);
    assert_non_null(a);
    snprintf(spec, sizeof spec, "127.0.0.1:%u", (unsigned)mgw_http_port(a));
    b = mgw_http_new(base, spec, NULL, err, sizeof err);
    if (b != NULL)
        fail_msg("second bind of %s: got a listener, want an error", spec);
    if (strstr(err, "in use") == NULL)
        fail_msg("second bind of %s: got \"%s\", want \"...in use\"", spec, err);
    assert_null(mgw_http_free(a));
    b = mgw_http_new(base, spec, NULL, err, sizeof err); /* the port is free again */
    if (b == NULL)
        fail_msg("bind after free of %s: got \"%s\", want a listener", spec, err);
    mgw_http_free(b);
    assert_null(mgw_http_free(NULL));
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(endpoints_answer_as_documented),
        cmocka_unit_test(bad_listen_specs_are_refused),
        cmocka_unit_test(a_port_in_use_is_an_error_and_free_releases_it),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
