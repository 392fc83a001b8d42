/*
 * filter_conf.c - parse --filter NAME=TARGET[,key=value...] (see filter_conf.h). Pure.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/filter_conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/xmalloc.h"

int mgw_duration_parse(const char *s, size_t len, unsigned *ms)
{
    unsigned long long v = 0;
    size_t i = 0;
    unsigned long long mult;

    while (i < len && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > 86400000ull)
            return -1;
        i++;
    }
    if (i == 0)
        return -1;
    if (i == len || (len - i == 1 && s[i] == 's'))
        mult = 1000;
    else if (len - i == 2 && s[i] == 'm' && s[i + 1] == 's')
        mult = 1;
    else if (len - i == 1 && s[i] == 'm')
        mult = 60000;
    else
        return -1;
    v *= mult;
    if (v == 0 || v > 86400000ull)
        return -1;
    *ms = (unsigned)v;
    return 0;
}

int mgw_size_parse(const char *s, size_t len, unsigned *bytes)
{
    static const struct {
        const char *unit;
        unsigned long long mult;
    } units[] = {{"", 1}, {"B", 1}, {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}};
    unsigned long long v = 0;
    size_t i = 0;

    while (i < len && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > 0xffffffffull)
            return -1;
        i++;
    }
    if (i == 0)
        return -1;
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        if (len - i == strlen(units[u].unit) && memcmp(s + i, units[u].unit, len - i) == 0) {
            v *= units[u].mult;
            if (v == 0 || v > 0xffffffffull)
                return -1;
            *bytes = (unsigned)v;
            return 0;
        }
    }
    return -1;
}

enum mgw_verdict_kind mgw_on_error_verdict(enum mgw_on_error e)
{
    switch (e) {
    case MGW_ON_ERROR_ACCEPT: return MGW_VERDICT_ACCEPT;
    case MGW_ON_ERROR_REJECT: return MGW_VERDICT_REJECT;
    default: return MGW_VERDICT_TEMPFAIL;
    }
}

const char *mgw_on_error_name(enum mgw_on_error e)
{
    static const char *const names[] = {"tempfail", "accept", "reject"};

    return (unsigned)e < 3 ? names[e] : "?";
}

const char *mgw_filter_kind_name(enum mgw_filter_kind k)
{
    return k == MGW_FILTER_MILTER ? "milter" : "grpc";
}

const char *mgw_filter_milter_target_invalid(const char *target, char *why, size_t whylen)
{
    struct mgw_listen_spec ls;

    if (mgw_listen_spec_parse(target, &ls, why, whylen) < 0)
        return why;
    if (ls.kind != MGW_LISTEN_UNIX && ls.host[0] == '\0') {
        snprintf(why, whylen, "milter socket \"%s\" names no host (inet:HOST:PORT)", target);
        return why;
    }
    return NULL;
}

static int bad(char *err, size_t errlen, const char *arg, const char *why)
{
    snprintf(err, errlen, "bad --filter \"%s\": %s", arg, why);
    return MGW_EINVAL;
}

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

/* Apply one key=value option. */
static int apply_option(struct mgw_filter_conf *c, const char *opt, size_t len, const char *arg,
                        char *err, size_t errlen)
{
    const char *eq = memchr(opt, '=', len);
    size_t klen, vlen;
    const char *v;

    if (eq == NULL)
        return bad(err, errlen, arg, "options are key=value");
    klen = (size_t)(eq - opt);
    v = eq + 1;
    vlen = len - klen - 1;
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(opt, k, klen) == 0)
#define VAL(x) (vlen == sizeof(x) - 1 && memcmp(v, x, vlen) == 0)
    if (KEY("on_error")) {
        if (VAL("tempfail"))
            c->on_error = MGW_ON_ERROR_TEMPFAIL;
        else if (VAL("accept"))
            c->on_error = MGW_ON_ERROR_ACCEPT;
        else if (VAL("reject"))
            c->on_error = MGW_ON_ERROR_REJECT;
        else
            return bad(err, errlen, arg, "on_error is tempfail, accept or reject");
    } else if (KEY("kind")) {
        if (VAL("grpc"))
            c->kind = MGW_FILTER_GRPC;
        else if (VAL("milter"))
            c->kind = MGW_FILTER_MILTER;
        else
            return bad(err, errlen, arg, "kind is grpc or milter");
    } else if (KEY("phase")) {
        unsigned long long n = 0;

        for (size_t i = 0; i < vlen && n <= MGW_FILTER_MAX_PHASE; i++)
            n = v[i] >= '0' && v[i] <= '9' ? n * 10 + (unsigned)(v[i] - '0') : ~0ull;
        if (vlen == 0 || n > MGW_FILTER_MAX_PHASE)
            return bad(err, errlen, arg, "phase is a whole number from 0 to 99");
        c->phase = (unsigned)n;
    } else if (KEY("timeout")) {
        if (mgw_duration_parse(v, vlen, &c->timeout_ms) < 0)
            return bad(err, errlen, arg, "timeout is a duration such as 500ms, 10s or 1m");
    } else if (KEY("eom_timeout")) {
        if (mgw_duration_parse(v, vlen, &c->eom_timeout_ms) < 0)
            return bad(err, errlen, arg, "eom_timeout is a duration such as 500ms, 60s or 2m");
    } else if (KEY("max_queue") || KEY("max_message")) {
        unsigned *dst = KEY("max_queue") ? &c->max_queue : &c->max_message;

        if (mgw_size_parse(v, vlen, dst) < 0 || *dst < MGW_FILTER_MIN_SIZE ||
            *dst > MGW_FILTER_MAX_SIZE)
            return bad(err, errlen, arg, "max_queue and max_message are sizes from 64KiB to "
                                         "1GiB, such as 4MiB");
    } else if (KEY("mode")) {
        if (VAL("shadow"))
            c->shadow = true;
        else if (VAL("normal"))
            c->shadow = false;
        else
            return bad(err, errlen, arg, "mode is normal or shadow");
    } else if (KEY("content")) {
        if (VAL("strict"))
            c->content_strict = true;
        else if (VAL("pipelined"))
            c->content_strict = false;
        else
            return bad(err, errlen, arg, "content is pipelined or strict");
    } else {
        return bad(err, errlen, arg, "unknown option (kind, phase, on_error, timeout, "
                                     "eom_timeout, mode, content, max_queue, max_message)");
    }
#undef KEY
#undef VAL
    return 0;
}

int mgw_filter_conf_parse(const char *arg, struct mgw_filter_conf *out, char *err, size_t errlen)
{
    const char *eq = strchr(arg, '=');
    const char *target, *comma;
    size_t nlen;

    memset(out, 0, sizeof *out);
    out->timeout_ms = MGW_FILTER_DEFAULT_TIMEOUT_MS;
    out->eom_timeout_ms = MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS;
    out->max_queue = MGW_FILTER_DEFAULT_MAX_QUEUE;
    out->max_message = MGW_FILTER_DEFAULT_MAX_MESSAGE;
    out->keepalive_time_ms = MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS;
    out->keepalive_timeout_ms = MGW_FILTER_DEFAULT_KEEPALIVE_TIMEOUT_MS;
    if (eq == NULL || eq == arg)
        return bad(err, errlen, arg, "expected NAME=TARGET");
    nlen = (size_t)(eq - arg);
    if (nlen >= sizeof out->name)
        return bad(err, errlen, arg, "name too long");
    for (size_t i = 0; i < nlen; i++)
        if (!is_name_char(arg[i]))
            return bad(err, errlen, arg, "name may use letters, digits, '-', '_' and '.'");
    memcpy(out->name, arg, nlen);
    target = eq + 1;
    comma = strchr(target, ',');
    if (comma == NULL)
        comma = target + strlen(target);
    if (comma == target)
        return bad(err, errlen, arg, "empty target");
    /* Options follow the target; a target itself may hold commas (ipv4:a:1,b:2), so an
     * option is recognised only as key=value with a known key. */
    while (*comma == ',') {
        const char *next = strchr(comma + 1, ',');
        size_t len = next ? (size_t)(next - comma - 1) : strlen(comma + 1);
        const char *opt = comma + 1;

        if (len == 0)
            return bad(err, errlen, arg, "empty option after ','");
        if (memchr(opt, '=', len) == NULL) {
            comma = next ? next : opt + len; /* part of the target */
            continue;
        }
        break;
    }
    out->target = mgw_xmemdup(target, (size_t)(comma - target));
    while (*comma == ',') {
        const char *opt = comma + 1;
        const char *next = strchr(opt, ',');
        size_t len = next ? (size_t)(next - opt) : strlen(opt);
        int r = len == 0 ? bad(err, errlen, arg, "empty option after ','")
                         : apply_option(out, opt, len, arg, err, errlen);

        if (r < 0) {
            mgw_filter_conf_clear(out);
            return r;
        }
        comma = opt + len;
    }
    if (out->kind == MGW_FILTER_MILTER) {
        char why[300];

        if (mgw_filter_milter_target_invalid(out->target, why, sizeof why) != NULL) {
            bad(err, errlen, arg, why);
            mgw_filter_conf_clear(out);
            return MGW_EINVAL;
        }
    }
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? mgw_xstrdup(s) : NULL;
}

void mgw_filter_conf_clear(struct mgw_filter_conf *c)
{
    free(c->target);
    c->target = NULL;
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_server_name);
    c->tls_ca = c->tls_cert = c->tls_key = c->tls_server_name = NULL;
    for (int i = 0; i < MGW_STAGE_COUNT; i++) {
        free((char *)c->decl.macros[i]); /* owned here, const only for policy.h */
        c->decl.macros[i] = NULL;
    }
}

void mgw_filter_conf_copy(struct mgw_filter_conf *dst, const struct mgw_filter_conf *src)
{
    *dst = *src;
    dst->target = dup_or_null(src->target);
    dst->tls_ca = dup_or_null(src->tls_ca);
    dst->tls_cert = dup_or_null(src->tls_cert);
    dst->tls_key = dup_or_null(src->tls_key);
    dst->tls_server_name = dup_or_null(src->tls_server_name);
    for (int i = 0; i < MGW_STAGE_COUNT; i++)
        dst->decl.macros[i] = dup_or_null(src->decl.macros[i]);
}
