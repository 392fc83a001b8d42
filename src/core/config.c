/*
 * config.c - load, check and publish the configuration (see config.h).
 *
 * A load runs in four passes over the bytes of the file:
 *   1. scan: libyaml events walked against the libcyaml schema below. It refuses
 *      syntax errors, unknown and duplicate keys, wrong shapes (a list where a mapping
 *      belongs...), missing required keys, aliases, extra documents - each at the exact
 *      line - and records the line of every key it meets ("filters[1].timeout" -> 12).
 *   2. libcyaml loads the same bytes into the raw structs below: every leaf is a string.
 *   3. the settings table converts the strings into the published struct (durations,
 *      numbers, enums), with defaults for what the file leaves out.
 *   4. check() validates the published struct - the same function mgw_config_validate()
 *      runs on a config built from command-line flags.
 * Passes 3 and 4 find the line of a key in the map of pass 1.
 *
 * Why a scan of our own before libcyaml: libcyaml (1.3) reports errors through its log
 * callback as text, and its "Backtrace" lines give the position of the last event seen
 * in each enclosing node, not of the culprit: an unknown key is reported at the line of
 * the previous value, a duplicate key at the first occurrence, a missing key at the last
 * key present, a libyaml syntax error without libyaml's own position, and errors at the
 * top level with no line at all. The scan makes every structural refusal exact, so
 * libcyaml never refuses a document the scan accepted (the fuzz target checks this).
 *
 * What this module does not do: logging, resolving user or group names, opening TLS files.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/config.h"

#include <cyaml/cyaml.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/milter_codec.h"
#include "mgw/milter_vocab.h"
#include "mgw/xmalloc.h"

#define NELEM(a)        (sizeof(a) / sizeof((a)[0]))
#define MAX_DURATION_MS 86400000u /* mgw_duration_parse()'s ceiling: one day */

/* ---- The file as libcyaml loads it: every leaf a string, NULL when absent ---- */

struct raw_macros {
    char **connect, **helo, **mail, **rcpt, **data, **eoh, **eom;
    unsigned connect_count, helo_count, mail_count, rcpt_count, data_count, eoh_count, eom_count;
};

struct raw_declare {
    char **events, **observe_only, **actions;
    unsigned events_count, observe_only_count, actions_count;
    struct raw_macros macros;
    char *rejected_recipients, *header_leading_space;
};

struct raw_keepalive {
    char *time, *timeout;
};

struct raw_tls {
    char *ca, *cert, *key, *server_name;
};

struct raw_filter {
    char *name, *target, *kind, *phase, *on_error, *mode, *content, *timeout, *eom_timeout;
    char *load_balancing;
    char *max_queue, *max_message;
    struct raw_keepalive keepalive;
    struct raw_tls tls;
    struct raw_declare declare;
};

struct raw_unix {
    char *mode, *owner, *group;
};

struct raw_http {
    char *listen, *ready;
};

struct raw_log {
    char *level, *format;
};

struct raw_limits {
    char *max_connections, *max_frame, *idle_timeout, *phase_memory;
};

/* Sections are embedded, not pointed to, so that the settings table can reach every
 * leaf by one offset from the top ("limits.max_frame"). */
struct raw_config {
    char **listen;
    unsigned listen_count;
    struct raw_unix unix_socket;
    struct raw_http http;
    struct raw_log log;
    struct raw_limits limits;
    char *drain_timeout;
    char *workers;
    struct raw_filter *filters;
    unsigned filters_count;
};

#define OPT           CYAML_FLAG_OPTIONAL
#define STR(T, m)     CYAML_FIELD_STRING_PTR(#m, OPT, T, m, 0, CYAML_UNLIMITED)
#define STR_REQ(T, m) CYAML_FIELD_STRING_PTR(#m, CYAML_FLAG_DEFAULT, T, m, 0, CYAML_UNLIMITED)
#define LIST(T, m, max)                                                                            \
    CYAML_FIELD_SEQUENCE(#m, CYAML_FLAG_POINTER | OPT, T, m, &string_entry, 0, max)

static const cyaml_schema_value_t string_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t macros_fields[] = {
    LIST(struct raw_macros, connect, 64), LIST(struct raw_macros, helo, 64),
    LIST(struct raw_macros, mail, 64),    LIST(struct raw_macros, rcpt, 64),
    LIST(struct raw_macros, data, 64),    LIST(struct raw_macros, eoh, 64),
    LIST(struct raw_macros, eom, 64),     CYAML_FIELD_END,
};

static const cyaml_schema_field_t declare_fields[] = {
    LIST(struct raw_declare, events, 32),
    LIST(struct raw_declare, observe_only, 32),
    LIST(struct raw_declare, actions, 32),
    CYAML_FIELD_MAPPING("macros", OPT, struct raw_declare, macros, macros_fields),
    STR(struct raw_declare, rejected_recipients),
    STR(struct raw_declare, header_leading_space),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t keepalive_fields[] = {
    STR(struct raw_keepalive, time),
    STR(struct raw_keepalive, timeout),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t tls_fields[] = {
    STR(struct raw_tls, ca),          STR(struct raw_tls, cert), STR(struct raw_tls, key),
    STR(struct raw_tls, server_name), CYAML_FIELD_END,
};

static const cyaml_schema_field_t filter_fields[] = {
    STR_REQ(struct raw_filter, name),
    STR_REQ(struct raw_filter, target),
    STR(struct raw_filter, kind),
    STR(struct raw_filter, phase),
    STR(struct raw_filter, on_error),
    STR(struct raw_filter, mode),
    STR(struct raw_filter, content),
    STR(struct raw_filter, timeout),
    STR(struct raw_filter, eom_timeout),
    STR(struct raw_filter, max_queue),
    STR(struct raw_filter, max_message),
    STR(struct raw_filter, load_balancing),
    CYAML_FIELD_MAPPING("keepalive", OPT, struct raw_filter, keepalive, keepalive_fields),
    CYAML_FIELD_MAPPING("tls", OPT, struct raw_filter, tls, tls_fields),
    CYAML_FIELD_MAPPING("declare", OPT, struct raw_filter, declare, declare_fields),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t filter_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_filter, filter_fields),
};

static const cyaml_schema_field_t unix_fields[] = {
    STR(struct raw_unix, mode),
    STR(struct raw_unix, owner),
    STR(struct raw_unix, group),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t http_fields[] = {
    STR_REQ(struct raw_http, listen),
    STR(struct raw_http, ready),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t log_fields[] = {
    STR(struct raw_log, level),
    STR(struct raw_log, format),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t limits_fields[] = {
    STR(struct raw_limits, max_connections),
    STR(struct raw_limits, max_frame),
    STR(struct raw_limits, idle_timeout),
    STR(struct raw_limits, phase_memory),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t top_fields[] = {
    LIST(struct raw_config, listen, MGW_CONFIG_MAX_LISTEN),
    CYAML_FIELD_MAPPING("unix_socket", OPT, struct raw_config, unix_socket, unix_fields),
    CYAML_FIELD_MAPPING("http", OPT, struct raw_config, http, http_fields),
    CYAML_FIELD_MAPPING("log", OPT, struct raw_config, log, log_fields),
    CYAML_FIELD_MAPPING("limits", OPT, struct raw_config, limits, limits_fields),
    STR(struct raw_config, drain_timeout),
    STR(struct raw_config, workers),
    CYAML_FIELD_SEQUENCE("filters", CYAML_FLAG_POINTER | OPT, struct raw_config, filters,
                         &filter_entry, 0, MGW_CONFIG_MAX_FILTERS),
    CYAML_FIELD_END,
};

static const cyaml_schema_value_t top_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct raw_config, top_fields),
};

/* ---- Errors: "FILE:LINE: KEY: problem" ---- */

struct where {
    char *path; /* "filters[1].timeout" */
    unsigned line;
};

struct ctx {
    const char *file; /* NULL: the command line, no file */
    struct where *w;  /* every key the scan met, in file order */
    size_t nw, capw;
    char *err;
    size_t errlen;
};

/* The line of `path`, else of its nearest recorded parent ("filters[1].tls.key" ->
 * "filters[1].tls" -> "filters[1]"), else 0. */
static unsigned line_of(const struct ctx *x, const char *path)
{
    size_t len = strlen(path);

    while (len > 0) {
        for (size_t i = 0; i < x->nw; i++)
            if (strlen(x->w[i].path) == len && memcmp(x->w[i].path, path, len) == 0)
                return x->w[i].line;
        do /* drop the last ".key" or "[i]" */
            len--;
        while (len > 0 && path[len] != '.' && path[len] != '[');
    }
    return 0;
}

static bool seen(const struct ctx *x, const char *path)
{
    for (size_t i = 0; i < x->nw; i++)
        if (strcmp(x->w[i].path, path) == 0)
            return true;
    return false;
}

static int fail_line(struct ctx *x, unsigned line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_line(struct ctx *x, unsigned line, const char *path, const char *fmt, ...)
{
    char msg[400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (x->err == NULL || x->errlen == 0)
        return MGW_EINVAL;
    if (x->file != NULL && line > 0)
        snprintf(x->err, x->errlen, "%s:%u: %s%s%s", x->file, line, path, *path ? ": " : "", msg);
    else if (x->file != NULL)
        snprintf(x->err, x->errlen, "%s: %s%s%s", x->file, path, *path ? ": " : "", msg);
    else
        snprintf(x->err, x->errlen, "%s%s%s", path, *path ? ": " : "", msg);
    return MGW_EINVAL;
}

#define fail(x, path, ...) fail_line((x), (x)->file ? line_of((x), (path)) : 0, (path), __VA_ARGS__)

/* User text for a message: quoted, control and non-ASCII bytes escaped, cut at 60. */
static const char *quote(char *buf, size_t cap, const char *s, size_t len)
{
    size_t o = 0;

    buf[o++] = '"';
    for (size_t i = 0; i < len && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];

        if (i == 60) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        if (c == '"' || c == '\\')
            o += (size_t)snprintf(buf + o, cap - o, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

#define Q(buf, s) quote((buf), sizeof(buf), (s), strlen(s))

/* ---- Pass 1: the scan ---- */

struct scan {
    struct ctx *x;
    const unsigned char *data;
    size_t len;
    yaml_parser_t parser;
    yaml_event_t ev;
    bool have_ev;
    char path[192];
    size_t plen;
};

static unsigned ev_line(const struct scan *s)
{
    return (unsigned)s->ev.start_mark.line + 1;
}

static void record(struct scan *s, unsigned line)
{
    struct ctx *x = s->x;

    if (x->nw == x->capw) {
        x->capw = x->capw ? 2 * x->capw : 32;
        x->w = mgw_xrealloc(x->w, x->capw * sizeof *x->w);
    }
    x->w[x->nw].path = mgw_xstrdup(s->path);
    x->w[x->nw].line = line;
    x->nw++;
}

/* Append ".key" (or "key" at the top) or "[i]" to the path; returns the old length. */
static size_t push(struct scan *s, const char *key, unsigned index)
{
    size_t old = s->plen;
    int n;

    if (key != NULL)
        n = snprintf(s->path + old, sizeof s->path - old, "%s%s", old ? "." : "", key);
    else
        n = snprintf(s->path + old, sizeof s->path - old, "[%u]", index);
    if (n < 0 || (size_t)n >= sizeof s->path - old)
        mgw_panic("config: key path too long"); /* keys come from the schema: bounded */
    s->plen += (size_t)n;
    return old;
}

static void pop(struct scan *s, size_t old)
{
    s->plen = old;
    s->path[old] = '\0';
}

static int syntax_error(struct scan *s)
{
    yaml_parser_t *p = &s->parser;
    unsigned line = (unsigned)p->problem_mark.line + 1;
    const char *problem = p->problem ? p->problem : "unknown error";

    if (p->error == YAML_MEMORY_ERROR)
        mgw_panic("config: libyaml out of memory");
    if (p->error == YAML_READER_ERROR) {
        /* Encoding errors carry a byte offset, not a mark. */
        line = 1;
        for (size_t i = 0; i < p->problem_offset && i < s->len; i++)
            line += s->data[i] == '\n';
    }
    if (p->context != NULL && p->context_mark.line + 1 != line && p->error != YAML_READER_ERROR)
        return fail_line(s->x, line, s->path, "YAML syntax error: %s (%s on line %u)", problem,
                         p->context, (unsigned)p->context_mark.line + 1);
    if (p->context != NULL)
        return fail_line(s->x, line, s->path, "YAML syntax error: %s (%s)", problem, p->context);
    return fail_line(s->x, line, s->path, "YAML syntax error: %s", problem);
}

static int next(struct scan *s)
{
    if (s->have_ev)
        yaml_event_delete(&s->ev);
    s->have_ev = false;
    if (!yaml_parser_parse(&s->parser, &s->ev))
        return syntax_error(s);
    s->have_ev = true;
    if (s->ev.type == YAML_ALIAS_EVENT) {
        char q[80];
        const char *a = (const char *)s->ev.data.alias.anchor;

        return fail_line(s->x, ev_line(s), s->path, "YAML aliases are not supported (alias %s)",
                         Q(q, a ? a : ""));
    }
    return 0;
}

static const char *shape_name(const cyaml_schema_value_t *v)
{
    switch (v->type) {
    case CYAML_MAPPING: return "a mapping (key: value)";
    case CYAML_SEQUENCE: return "a list";
    default: return "a single value";
    }
}

/* A plain scalar YAML reads as null: "key:" with nothing after it, "~", "null". */
static bool is_null(const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;

    return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
            strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0);
}

static int wrong_shape(struct scan *s, const cyaml_schema_value_t *v)
{
    char q[100];
    const char *got;

    switch (s->ev.type) {
    case YAML_MAPPING_START_EVENT: got = "a mapping"; break;
    case YAML_SEQUENCE_START_EVENT: got = "a list"; break;
    case YAML_SCALAR_EVENT:
        got = is_null(&s->ev) ? "an empty value"
                              : quote(q, sizeof q, (const char *)s->ev.data.scalar.value,
                                      s->ev.data.scalar.length);
        break;
    default: got = "something else"; break;
    }
    return fail_line(s->x, ev_line(s), s->path, "want %s, got %s", shape_name(v), got);
}

static int walk(struct scan *s, const cyaml_schema_value_t *v);

static int walk_mapping(struct scan *s, const cyaml_schema_field_t *fields)
{
    unsigned start = ev_line(s), first[64];
    uint64_t got = 0;
    size_t nf = 0;
    int r;

    while (fields[nf].key != NULL)
        nf++;
    if (nf > 64)
        mgw_panic("config: mapping with %zu keys", nf);
    for (;;) {
        const char *key;
        size_t klen, f, old;
        char q[100], known[400];

        if ((r = next(s)) < 0)
            return r;
        if (s->ev.type == YAML_MAPPING_END_EVENT)
            break;
        if (s->ev.type != YAML_SCALAR_EVENT)
            return fail_line(s->x, ev_line(s), s->path, "a key must be a single word, not %s",
                             s->ev.type == YAML_SEQUENCE_START_EVENT ? "a list" : "a mapping");
        key = (const char *)s->ev.data.scalar.value;
        klen = s->ev.data.scalar.length;
        for (f = 0; f < nf; f++)
            if (strlen(fields[f].key) == klen && memcmp(fields[f].key, key, klen) == 0)
                break;
        if (f == nf) {
            size_t o = 0;

            for (size_t i = 0; i < nf && o < sizeof known; i++)
                o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", i ? ", " : "",
                                      fields[i].key);
            return fail_line(s->x, ev_line(s), s->path, "unknown key %s (known here: %s)",
                             quote(q, sizeof q, key, klen), known);
        }
        old = push(s, fields[f].key, 0);
        if (got & (UINT64_C(1) << f))
            return fail_line(s->x, ev_line(s), s->path, "duplicate key (first on line %u)",
                             first[f]);
        got |= UINT64_C(1) << f;
        first[f] = ev_line(s);
        record(s, ev_line(s));
        if ((r = next(s)) < 0)
            return r;
        if (s->ev.type == YAML_SCALAR_EVENT) /* a bad value is reported where it is */
            s->x->w[s->x->nw - 1].line = ev_line(s);
        if ((r = walk(s, &fields[f].value)) < 0)
            return r;
        pop(s, old);
    }
    for (size_t f = 0; f < nf; f++) {
        if (!(got & (UINT64_C(1) << f)) && !(fields[f].value.flags & CYAML_FLAG_OPTIONAL)) {
            size_t old = push(s, fields[f].key, 0);

            r = fail_line(s->x, start, s->path, "required key is missing");
            pop(s, old);
            return r;
        }
    }
    return 0;
}

static int walk_sequence(struct scan *s, const cyaml_schema_value_t *v)
{
    unsigned n = 0, start = ev_line(s);
    int r;

    for (;;) {
        size_t old;

        if ((r = next(s)) < 0)
            return r;
        if (s->ev.type == YAML_SEQUENCE_END_EVENT)
            break;
        if (n == v->sequence.max)
            return fail_line(s->x, ev_line(s), s->path, "more than %u entries", v->sequence.max);
        old = push(s, NULL, n);
        record(s, ev_line(s));
        if ((r = walk(s, v->sequence.entry)) < 0)
            return r;
        pop(s, old);
        n++;
    }
    if (n < v->sequence.min)
        return fail_line(s->x, start, s->path, "want at least %u entries", v->sequence.min);
    return 0;
}

static int walk(struct scan *s, const cyaml_schema_value_t *v)
{
    switch (v->type) {
    case CYAML_MAPPING:
        if (s->ev.type != YAML_MAPPING_START_EVENT)
            return wrong_shape(s, v);
        return walk_mapping(s, v->mapping.fields);
    case CYAML_SEQUENCE:
        if (s->ev.type != YAML_SEQUENCE_START_EVENT)
            return wrong_shape(s, v);
        return walk_sequence(s, v);
    default:
        if (s->ev.type != YAML_SCALAR_EVENT)
            return wrong_shape(s, v);
        /* Values become C strings: an escaped NUL ("\0") would silently cut them. */
        if (strlen((const char *)s->ev.data.scalar.value) != s->ev.data.scalar.length)
            return fail_line(s->x, ev_line(s), s->path, "a value may not hold a NUL character");
        return 0;
    }
}

/* The whole stream: exactly one document whose root is the settings mapping. */
static int scan_document(struct scan *s)
{
    int r;

    if ((r = next(s)) < 0 || (r = next(s)) < 0) /* STREAM-START, then the document */
        return r;
    if (s->ev.type == YAML_STREAM_END_EVENT)
        return fail_line(s->x, 1, "", "the file is empty (no settings)");
    if ((r = next(s)) < 0) /* the root node */
        return r;
    if (s->ev.type == YAML_SCALAR_EVENT && is_null(&s->ev))
        return fail_line(s->x, 1, "", "the file is empty (no settings)");
    if (s->ev.type != YAML_MAPPING_START_EVENT)
        return wrong_shape(s, &top_schema);
    if ((r = walk(s, &top_schema)) < 0 || (r = next(s)) < 0) /* DOCUMENT-END */
        return r;
    if ((r = next(s)) < 0)
        return r;
    if (s->ev.type != YAML_STREAM_END_EVENT)
        return fail_line(s->x, ev_line(s), "", "only one YAML document is allowed");
    return 0;
}

static int scan(struct ctx *x, const void *data, size_t len)
{
    struct scan s = {.x = x, .data = data, .len = len};
    int r;

    if (!yaml_parser_initialize(&s.parser))
        mgw_panic("config: yaml_parser_initialize failed");
    yaml_parser_set_input_string(&s.parser, data, len);
    r = scan_document(&s);
    if (s.have_ev)
        yaml_event_delete(&s.ev);
    yaml_parser_delete(&s.parser);
    return r;
}

/* ---- Pass 2: libcyaml ---- */

static void *cy_mem(void *ctx, void *ptr, size_t size)
{
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    return mgw_xrealloc(ptr, size);
}

struct cy_log {
    char text[300];
    size_t len;
};

/* Keep the first error lines (message and backtrace) for the unexpected case where
 * libcyaml refuses what the scan accepted. */
static void cy_log_fn(cyaml_log_t level, void *ctx, const char *fmt, va_list ap)
{
    struct cy_log *l = ctx;
    int n;

    if (l->len + 1 >= sizeof l->text)
        return;
    n = vsnprintf(l->text + l->len, sizeof l->text - l->len, fmt, ap);
    if (n < 0)
        return;
    l->len = (size_t)n < sizeof l->text - l->len ? l->len + (size_t)n : sizeof l->text - 1;
    for (size_t i = 0; i < l->len; i++)
        if ((unsigned char)l->text[i] < 0x20)
            l->text[i] = ' ';
}

static int cy_load(struct ctx *x, const void *data, size_t len, struct raw_config **raw,
                   cyaml_config_t *cc, struct cy_log *log)
{
    cyaml_err_t e;

    *cc = (cyaml_config_t){
        .log_fn = cy_log_fn,
        .log_ctx = log,
        .mem_fn = cy_mem,
        .log_level = CYAML_LOG_ERROR,
        .flags = CYAML_CFG_NO_ALIAS,
    };
    e = cyaml_load_data(data, len, cc, &top_schema, (cyaml_data_t **)raw, NULL);
    if (e != CYAML_OK)
        return fail_line(x, 0, "", "libcyaml refused the file: %s: %.*s", cyaml_strerror(e),
                         (int)log->len, log->text);
    return 0;
}

/* ---- Pass 3: the settings table ---- */

enum kind {
    K_UINT,     /* decimal number */
    K_DURATION, /* mgw_duration_parse(), plus 0 where min is 0; stored in ms */
    K_OCTAL,    /* permission bits */
    K_SIZE,     /* mgw_size_parse(): bytes, "4MiB" */
    K_ENUM,     /* one of names[]; stored as its index (a bool for two names) */
    K_STRING,   /* owned char * */
    K_NAME,     /* char[MGW_FILTER_NAME_MAX] */
};

struct setting {
    const char *key; /* as in the file, below its section */
    enum kind kind;
    size_t raw;  /* offset of the char * in the raw struct */
    size_t dst;  /* offset of the field in the published struct */
    size_t size; /* of that field */
    unsigned def, min, max;
    const char *const *names;            /* K_ENUM, NULL-terminated */
    const char *(*valid)(const char *s); /* K_STRING/K_NAME: NULL if fine, else why not */
};

static const char *const ready_names[] = {"any", "all", "none", NULL};
static const char *const level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const format_names[] = {"logfmt", "json", NULL};
static const char *const on_error_names[] = {"tempfail", "accept", "reject", NULL};
static const char *const mode_names[] = {"normal", "shadow", NULL};
static const char *const content_names[] = {"pipelined", "strict", NULL};
static const char *const kind_names[] = {"grpc", "milter", NULL};
static const char *const lb_names[] = {"pick_first", "round_robin", NULL};
static const char *const bool_names[] = {"false", "true", NULL};

static const char *name_valid(const char *s);
static const char *target_valid(const char *s);
static const char *account_valid(const char *s);
static const char *hostport_valid(const char *s);

#define TOP(m)   offsetof(struct raw_config, m)
#define FIL(m)   offsetof(struct raw_filter, m)
#define TO(T, m) offsetof(T, m), sizeof(((T *)0)->m)
#define CFG(m)   TO(struct mgw_config, m)
#define FC(m)    TO(struct mgw_filter_conf, m)

/* Rows: a number, duration or mode with default and bounds; an enum with its default
 * (an index into names); a string with an optional validity check. */
/* clang-format off */
#define NUM(key, kind, raw, dst, def, min, max) {key, kind, raw, dst, def, min, max, NULL, NULL}
#define ENUM(key, raw, dst, def, names)         {key, K_ENUM, raw, dst, def, 0, 0, names, NULL}
#define TEXT(key, kind, raw, dst, valid)        {key, kind, raw, dst, 0, 0, 0, NULL, valid}
/* clang-format on */

static const struct setting top_settings[] = {
    NUM("unix_socket.mode", K_OCTAL, TOP(unix_socket.mode), CFG(unix_mode), MGW_DEFAULT_UNIX_MODE,
        0, 0777),
    TEXT("unix_socket.owner", K_STRING, TOP(unix_socket.owner), CFG(unix_owner), account_valid),
    TEXT("unix_socket.group", K_STRING, TOP(unix_socket.group), CFG(unix_group), account_valid),
    TEXT("http.listen", K_STRING, TOP(http.listen), CFG(http_listen), hostport_valid),
    ENUM("http.ready", TOP(http.ready), CFG(http_ready), MGW_CONFIG_READY_ANY, ready_names),
    ENUM("log.level", TOP(log.level), CFG(log_level), MGW_LOG_INFO, level_names),
    ENUM("log.format", TOP(log.format), CFG(log_format), MGW_LOG_LOGFMT, format_names),
    NUM("limits.max_connections", K_UINT, TOP(limits.max_connections), CFG(server.max_connections),
        MGW_DEFAULT_MAX_CONNECTIONS, 0, 1000000),
    /* Below 64 KiB the MTA's ordinary body chunks (65535 bytes + command) would not fit. */
    NUM("limits.max_frame", K_UINT, TOP(limits.max_frame), CFG(server.max_frame),
        MGW_MILTER_DEFAULT_MAX_FRAME, 65536, 0x7fffffff),
    NUM("limits.idle_timeout", K_DURATION, TOP(limits.idle_timeout), CFG(server.idle_timeout_ms),
        MGW_DEFAULT_IDLE_TIMEOUT_MS, 0, MAX_DURATION_MS),
    /* With filters in several phases, what of a message stays in memory for the later
     * ones; the rest goes to a temporary file (phase_msg.h). */
    NUM("limits.phase_memory", K_SIZE, TOP(limits.phase_memory), CFG(phase_memory),
        1u << 20, MGW_FILTER_MIN_SIZE, MGW_FILTER_MAX_SIZE),
    NUM("drain_timeout", K_DURATION, TOP(drain_timeout), CFG(drain_timeout_ms),
        MGW_CONFIG_DEFAULT_DRAIN_TIMEOUT_MS, 0, 3600000),
    NUM("workers", K_UINT, TOP(workers), CFG(workers), 0, 0, MGW_CONFIG_MAX_WORKERS),
};

static const struct setting filter_settings[] = {
    TEXT("name", K_NAME, FIL(name), FC(name), name_valid),
    TEXT("target", K_STRING, FIL(target), FC(target), target_valid),
    ENUM("kind", FIL(kind), FC(kind), MGW_FILTER_GRPC, kind_names),
    NUM("phase", K_UINT, FIL(phase), FC(phase), 0, 0, MGW_FILTER_MAX_PHASE),
    ENUM("on_error", FIL(on_error), FC(on_error), MGW_ON_ERROR_TEMPFAIL, on_error_names),
    ENUM("mode", FIL(mode), FC(shadow), 0, mode_names),
    ENUM("content", FIL(content), FC(content_strict), 0, content_names),
    NUM("timeout", K_DURATION, FIL(timeout), FC(timeout_ms), MGW_FILTER_DEFAULT_TIMEOUT_MS, 1,
        MAX_DURATION_MS),
    NUM("max_queue", K_SIZE, FIL(max_queue), FC(max_queue), MGW_FILTER_DEFAULT_MAX_QUEUE,
        MGW_FILTER_MIN_SIZE, MGW_FILTER_MAX_SIZE),
    NUM("max_message", K_SIZE, FIL(max_message), FC(max_message), MGW_FILTER_DEFAULT_MAX_MESSAGE,
        MGW_FILTER_MIN_SIZE, MGW_FILTER_MAX_SIZE),
    NUM("eom_timeout", K_DURATION, FIL(eom_timeout), FC(eom_timeout_ms),
        MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS, 1, MAX_DURATION_MS),
    ENUM("load_balancing", FIL(load_balancing), FC(load_balancing), MGW_LB_PICK_FIRST, lb_names),
    /* gRPC never pings more often than every 10 s, and servers refuse more by default. */
    NUM("keepalive.time", K_DURATION, FIL(keepalive.time), FC(keepalive_time_ms),
        MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS, 10000, MAX_DURATION_MS),
    NUM("keepalive.timeout", K_DURATION, FIL(keepalive.timeout), FC(keepalive_timeout_ms),
        MGW_FILTER_DEFAULT_KEEPALIVE_TIMEOUT_MS, 1000, MAX_DURATION_MS),
    TEXT("tls.ca", K_STRING, FIL(tls.ca), FC(tls_ca), NULL),
    TEXT("tls.cert", K_STRING, FIL(tls.cert), FC(tls_cert), NULL),
    TEXT("tls.key", K_STRING, FIL(tls.key), FC(tls_key), NULL),
    TEXT("tls.server_name", K_STRING, FIL(tls.server_name), FC(tls_server_name), target_valid),
    ENUM("declare.rejected_recipients", FIL(declare.rejected_recipients),
         FC(decl.rejected_recipients), 0, bool_names),
    ENUM("declare.header_leading_space", FIL(declare.header_leading_space),
         FC(decl.header_leading_space), 0, bool_names),
};

static unsigned get_num(const void *base, const struct setting *s)
{
    const char *p = (const char *)base + s->dst;
    unsigned v;

    if (s->size == sizeof(bool))
        return *(const bool *)p;
    if (s->size != sizeof v)
        mgw_panic("config: %s: field of %zu bytes", s->key, s->size);
    memcpy(&v, p, sizeof v); /* unsigned, uint32_t or an enum: all four bytes here */
    return v;
}

static void put_num(void *base, const struct setting *s, unsigned v)
{
    char *p = (char *)base + s->dst;

    if (s->size == sizeof(bool))
        *(bool *)p = v != 0;
    else if (s->size == sizeof v)
        memcpy(p, &v, sizeof v);
    else
        mgw_panic("config: %s: field of %zu bytes", s->key, s->size);
}

static void apply_defaults(void *base, const struct setting *table, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (table[i].kind != K_STRING && table[i].kind != K_NAME)
            put_num(base, &table[i], table[i].def);
}

static size_t count_names(const char *const *names)
{
    size_t n = 0;

    while (names[n] != NULL)
        n++;
    return n;
}

static void join_names(char *buf, size_t cap, const char *const *names)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; names[i] != NULL && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", names[i]);
}

/* "250ms", "10s", "5m": how a duration reads best. */
static const char *duration_text(char *buf, size_t cap, unsigned ms)
{
    if (ms != 0 && ms % 60000 == 0)
        snprintf(buf, cap, "%um", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, cap, "%us", ms / 1000);
    else
        snprintf(buf, cap, "%ums", ms);
    return buf;
}

/* "4MiB", "64KiB", "65537": how a size reads best. */
static const char *size_text(char *buf, size_t cap, unsigned v)
{
    if (v != 0 && v % (1u << 30) == 0)
        snprintf(buf, cap, "%uGiB", v >> 30);
    else if (v != 0 && v % (1u << 20) == 0)
        snprintf(buf, cap, "%uMiB", v >> 20);
    else if (v != 0 && v % (1u << 10) == 0)
        snprintf(buf, cap, "%uKiB", v >> 10);
    else
        snprintf(buf, cap, "%u", v);
    return buf;
}

static const char *num_text(char *buf, size_t cap, const struct setting *s, unsigned v)
{
    if (s->kind == K_DURATION)
        return duration_text(buf, cap, v);
    if (s->kind == K_SIZE)
        return size_text(buf, cap, v);
    snprintf(buf, cap, s->kind == K_OCTAL ? "0%03o" : "%u", v);
    return buf;
}

/* Range of a number, duration or mode; enum index in range. */
static int check_value(struct ctx *x, const char *path, const struct setting *s, unsigned v)
{
    char a[32], lo[32], hi[32];

    if (s->kind == K_ENUM) {
        if (v >= count_names(s->names))
            return fail(x, path, "value %u is out of range", v);
        return 0;
    }
    if (v < s->min || v > s->max)
        return fail(x, path, "%s is out of range (%s to %s)", num_text(a, sizeof a, s, v),
                    num_text(lo, sizeof lo, s, s->min), num_text(hi, sizeof hi, s, s->max));
    return 0;
}

static int check_string(struct ctx *x, const char *path, const struct setting *s, const char *v)
{
    char q[100];
    const char *why;

    if (*v == '\0')
        return fail(x, path, "is empty");
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return fail(x, path, "%s holds a control character", Q(q, v));
    if (s->valid != NULL && (why = s->valid(v)) != NULL)
        return fail(x, path, "%s %s", Q(q, v), why);
    return 0;
}

static bool parse_uint(const char *t, unsigned long max, unsigned long *out)
{
    unsigned long v = 0;

    if (*t == '\0')
        return false;
    for (; *t; t++) {
        if (*t < '0' || *t > '9')
            return false;
        v = v * 10 + (unsigned long)(*t - '0');
        if (v > max)
            return false;
    }
    *out = v;
    return true;
}

/* "0", "0ms", "0s", "0m": mgw_duration_parse() refuses them, some settings take them. */
static bool is_zero_duration(const char *t)
{
    size_t z = strspn(t, "0");

    return z > 0 && (strcmp(t + z, "") == 0 || strcmp(t + z, "ms") == 0 ||
                     strcmp(t + z, "s") == 0 || strcmp(t + z, "m") == 0);
}

/* Convert the text of one setting and store it into base (published struct). */
static int convert(struct ctx *x, const char *path, const struct setting *s, const char *t,
                   void *base)
{
    char q[100], names[200];
    unsigned long ul = 0;
    unsigned v = 0;
    size_t i;
    int r;

    switch (s->kind) {
    case K_UINT:
        if (!parse_uint(t, 0xffffffffUL, &ul) && (*t == '\0' || t[strspn(t, "0123456789")]))
            return fail(x, path, "%s is not a number", Q(q, t));
        if (!parse_uint(t, 0xffffffffUL, &ul)) /* digits, but too many */
            return fail(x, path, "%s is out of range (%u to %u)", Q(q, t), s->min, s->max);
        v = (unsigned)ul;
        break;
    case K_DURATION:
        if (is_zero_duration(t))
            v = 0; /* "0", "0s": none where min is 0, else out of range below */
        else if (mgw_duration_parse(t, strlen(t), &v) < 0)
            return fail(x, path, "%s is not a duration (such as 250ms, 10s or 2m; at most a day%s)",
                        Q(q, t), s->min == 0 ? "; 0 for none" : "");
        break;
    case K_SIZE:
        if (mgw_size_parse(t, strlen(t), &v) < 0)
            return fail(x, path, "%s is not a size (bytes, or with KiB, MiB or GiB, such as 4MiB)",
                        Q(q, t));
        break;
    case K_OCTAL:
        if (*t == '\0' || strspn(t, "01234567") != strlen(t) || strlen(t) > 6)
            return fail(x, path, "%s is not an octal mode such as 0660", Q(q, t));
        v = (unsigned)strtoul(t, NULL, 8);
        break;
    case K_ENUM:
        for (i = 0; s->names[i] != NULL; i++)
            if (strcmp(s->names[i], t) == 0)
                break;
        if (s->names[i] == NULL) {
            join_names(names, sizeof names, s->names);
            return fail(x, path, "%s is not one of %s", Q(q, t), names);
        }
        v = (unsigned)i;
        break;
    case K_STRING:
        if ((r = check_string(x, path, s, t)) < 0)
            return r;
        free(*(char **)((char *)base + s->dst));
        *(char **)((char *)base + s->dst) = mgw_xstrdup(t);
        return 0;
    case K_NAME:
        if (strlen(t) >= s->size)
            return fail(x, path, "is %zu characters long, more than %zu", strlen(t), s->size - 1);
        if ((r = check_string(x, path, s, t)) < 0)
            return r;
        memcpy((char *)base + s->dst, t, strlen(t) + 1);
        return 0;
    }
    if ((r = check_value(x, path, s, v)) < 0)
        return r;
    put_num(base, s, v);
    return 0;
}

/* Convert every setting of a table present in raw; `prefix` is "" or "filters[1]." */
static int convert_table(struct ctx *x, const char *prefix, const struct setting *table, size_t n,
                         const void *raw, void *base)
{
    for (size_t i = 0; i < n; i++) {
        const char *t = *(char *const *)((const char *)raw + table[i].raw);
        char path[128];
        int r;

        if (t == NULL)
            continue;
        snprintf(path, sizeof path, "%s%s", prefix, table[i].key);
        if ((r = convert(x, path, &table[i], t, base)) < 0)
            return r;
    }
    return 0;
}

/* ---- The declaration override ---- */

/* Every key a declaration accepts. SETSYMLIST is the gateway's own business. */
#define ACTIONS_ALL (MGW_SMFI_CURR_ACTS & ~MGW_SMFIF_SETSYMLIST)

/* The macro lists of a declaration, one per stage key. */
/* clang-format off */
#define STAGE(k, s) {#k, offsetof(struct raw_macros, k), offsetof(struct raw_macros, k##_count), s}
/* clang-format on */
static const struct {
    const char *key;
    size_t list, count; /* offsets of the list and its count in struct raw_macros */
    int stage;          /* MGW_STAGE_* */
} stages[] = {
    STAGE(connect, MGW_STAGE_CONNECT), STAGE(helo, MGW_STAGE_HELO), STAGE(mail, MGW_STAGE_ENVFROM),
    STAGE(rcpt, MGW_STAGE_ENVRCPT),    STAGE(data, MGW_STAGE_DATA), STAGE(eoh, MGW_STAGE_EOH),
    STAGE(eom, MGW_STAGE_EOM),
};
#undef STAGE

/* A milter macro name: one character ("j", "_") or "{name}". */
static bool macro_name_ok(const char *s, size_t len)
{
    if (len == 1)
        return s[0] > ' ' && s[0] < 0x7f && s[0] != '{' && s[0] != '}';
    if (len < 3 || len > 64 || s[0] != '{' || s[len - 1] != '}')
        return false;
    for (size_t i = 1; i + 1 < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
            return false;
    return true;
}

/* A list of names into bits; bits[i] for names[i] (NULL bits: 1 << i). */
static int list_bits(struct ctx *x, const char *path, char *const *list, unsigned n,
                     const char *const *names, const uint32_t *bits, const char *what,
                     uint32_t *out)
{
    char q[100], item[160 + 16], all[300]; /* item: a path of up to 160, then "[k]" */

    *out = 0;
    for (unsigned k = 0; k < n; k++) {
        size_t i;

        for (i = 0; names[i] != NULL; i++)
            if (strcmp(names[i], list[k]) == 0)
                break;
        if (names[i] == NULL) {
            snprintf(item, sizeof item, "%s[%u]", path, k);
            join_names(all, sizeof all, names);
            return fail(x, item, "%s is not %s (%s)", Q(q, list[k]), what, all);
        }
        *out |= bits ? bits[i] : UINT32_C(1) << i;
    }
    return 0;
}

static int convert_declare(struct ctx *x, const char *prefix, const struct raw_declare *d,
                           struct mgw_filter_conf *f)
{
    /* The vocabulary tables (milter_vocab.h) as list_bits() wants them: event labels by
     * bit, and action keys with their bits, each NULL-terminated. */
    const char *event_names[MGW_MILTER_EV_SUBSCRIBABLE + 1] = {NULL};
    const char *action_names[16] = {NULL};
    uint32_t action_bits[16] = {0};
    const struct mgw_milter_action_info *acts;
    char path[160], item[200], q[100];
    size_t nacts, na = 0;
    int r;

    for (int e = 0; e < MGW_MILTER_EV_SUBSCRIBABLE; e++)
        event_names[e] = mgw_milter_event_label(e);
    acts = mgw_milter_actions(&nacts);
    for (size_t i = 0; i < nacts && na + 1 < NELEM(action_names); i++) {
        if (acts[i].key != NULL) {
            action_names[na] = acts[i].key;
            action_bits[na++] = acts[i].bit;
        }
    }

    f->has_decl = true;
    snprintf(path, sizeof path, "%sdeclare.events", prefix);
    if (d->events_count == 0 && seen(x, path))
        return fail(x, path, "is an empty list (leave it out for every event)");
    if (d->events_count == 0)
        f->decl.events = MGW_POLICY_EV_ALL;
    else if ((r = list_bits(x, path, d->events, d->events_count, event_names, NULL, "an event",
                            &f->decl.events)) < 0)
        return r;
    snprintf(path, sizeof path, "%sdeclare.observe_only", prefix);
    if ((r = list_bits(x, path, d->observe_only, d->observe_only_count, event_names, NULL,
                       "an event", &f->decl.observe_only)) < 0)
        return r;
    for (unsigned k = 0; k < d->observe_only_count; k++) {
        uint32_t bit;

        list_bits(x, path, &d->observe_only[k], 1, event_names, NULL, "", &bit);
        snprintf(item, sizeof item, "%s[%u]", path, k);
        if (!(bit & f->decl.events))
            return fail(x, item, "%s is not one of the declared events", Q(q, d->observe_only[k]));
    }
    snprintf(path, sizeof path, "%sdeclare.actions", prefix);
    if ((r = list_bits(x, path, d->actions, d->actions_count, action_names, action_bits,
                       "an action", &f->decl.actions)) < 0)
        return r;
    for (size_t s = 0; s < NELEM(stages); s++) {
        char *const *list = *(char *const *const *)((const char *)&d->macros + stages[s].list);
        unsigned n = *(const unsigned *)((const char *)&d->macros + stages[s].count);
        size_t len = 0;
        char *joined;

        snprintf(path, sizeof path, "%sdeclare.macros.%s", prefix, stages[s].key);
        for (unsigned k = 0; k < n; k++) {
            if (!macro_name_ok(list[k], strlen(list[k]))) {
                snprintf(item, sizeof item, "%s[%u]", path, k);
                return fail(x, item, "%s is not a macro name such as j or {daemon_name}",
                            Q(q, list[k]));
            }
            len += strlen(list[k]) + 1;
        }
        if (n == 0)
            continue;
        joined = mgw_xmalloc(len);
        joined[0] = '\0';
        for (unsigned k = 0; k < n; k++) {
            if (k > 0)
                strcat(joined, " ");
            strcat(joined, list[k]);
        }
        f->decl.macros[stages[s].stage] = joined;
    }
    return 0;
}

static void filter_defaults(struct mgw_filter_conf *f)
{
    memset(f, 0, sizeof *f);
    apply_defaults(f, filter_settings, NELEM(filter_settings));
}

static int convert_all(struct ctx *x, const struct raw_config *raw, struct mgw_config *c)
{
    int r;

    if ((r = convert_table(x, "", top_settings, NELEM(top_settings), raw, c)) < 0)
        return r;
    if (raw->listen_count > 0) {
        c->listen = mgw_xcalloc(raw->listen_count, sizeof *c->listen);
        for (unsigned i = 0; i < raw->listen_count; i++)
            c->listen[c->nlisten++] = mgw_xstrdup(raw->listen[i]);
    }
    if (raw->filters_count > 0)
        c->filters = mgw_xcalloc(raw->filters_count, sizeof *c->filters);
    for (unsigned i = 0; i < raw->filters_count; i++) {
        struct mgw_filter_conf *f = &c->filters[c->nfilters++];
        char prefix[40], path[64];

        filter_defaults(f);
        snprintf(prefix, sizeof prefix, "filters[%u].", i);
        if ((r = convert_table(x, prefix, filter_settings, NELEM(filter_settings), &raw->filters[i],
                               f)) < 0)
            return r;
        snprintf(path, sizeof path, "%stls", prefix);
        f->tls = seen(x, path);
        snprintf(path, sizeof path, "%sdeclare", prefix);
        if (seen(x, path) && (r = convert_declare(x, prefix, &raw->filters[i].declare, f)) < 0)
            return r;
        f->decl.shadow = f->shadow;
    }
    return 0;
}

/* ---- Pass 4: checks shared with the command line ---- */

static const char *name_valid(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return "is not a name of letters, digits, '-', '_' and '.'";
    return NULL;
}

static const char *target_valid(const char *s)
{
    return strpbrk(s, " ") ? "holds a space" : NULL;
}

static const char *account_valid(const char *s)
{
    if (strlen(s) > 64)
        return "is too long for a user or group";
    return strpbrk(s, " :/") ? "is not a user or group name" : NULL;
}

static const char *hostport_valid(const char *s)
{
    char host[256];
    uint16_t port;

    /* The parser start-up uses: what passes --check-config also starts. */
    if (mgw_hostport_parse(s, host, sizeof host, &port) < 0)
        return "is not HOST:PORT or [ADDR]:PORT";
    return NULL;
}

static int check_table(struct ctx *x, const char *prefix, const struct setting *table, size_t n,
                       const void *base)
{
    for (size_t i = 0; i < n; i++) {
        const struct setting *s = &table[i];
        const char *p = (const char *)base + s->dst;
        char path[128];
        int r = 0;

        snprintf(path, sizeof path, "%s%s", prefix, s->key);
        if (s->kind == K_STRING && *(char *const *)p != NULL)
            r = check_string(x, path, s, *(char *const *)p);
        else if (s->kind == K_NAME)
            r = memchr(p, '\0', s->size) == NULL ? fail(x, path, "is not terminated")
                                                 : check_string(x, path, s, p);
        else if (s->kind != K_STRING)
            r = check_value(x, path, s, get_num(base, s));
        if (r < 0)
            return r;
    }
    return 0;
}

static int check_decl(struct ctx *x, const char *prefix, const struct mgw_policy_decl *d)
{
    char path[160], q[100];

    snprintf(path, sizeof path, "%sdeclare", prefix);
    if (d->events == 0 || (d->events & ~MGW_POLICY_EV_ALL) != 0)
        return fail(x, path, "events 0x%x are not a set of events", (unsigned)d->events);
    if ((d->observe_only & ~d->events) != 0)
        return fail(x, path, "observe_only names events not declared");
    if ((d->actions & ~ACTIONS_ALL) != 0)
        return fail(x, path, "actions 0x%x hold unknown actions", (unsigned)d->actions);
    for (int st = 0; st < MGW_STAGE_COUNT; st++) {
        const char *m = d->macros[st];

        while (m != NULL && *m) {
            size_t len = strcspn(m, " \t");

            if (len > 0 && !macro_name_ok(m, len))
                return fail(x, path, "%s is not a macro name", quote(q, sizeof q, m, len));
            m += len;
            m += strspn(m, " \t");
        }
    }
    return 0;
}

/* The smallest max_queue that holds the event of one full milter frame. A stream sends
 * each event as one gRPC message, and one frame (a body chunk, a header) is one event: a
 * max_queue below that fails a healthy filter on the first long body with nothing queued
 * behind (Postfix's 65535-byte chunks are events of 65546 bytes). The slack covers the
 * event's protobuf framing; the result is rounded up to KiB so that it reads well. */
#define EVENT_SLACK 1024u

static unsigned queue_floor(unsigned max_frame)
{
    unsigned long long v = ((unsigned long long)max_frame + EVENT_SLACK + 1023) / 1024 * 1024;

    return v > UINT32_MAX ? UINT32_MAX : (unsigned)v;
}

static int check_filter(struct ctx *x, const struct mgw_config *c, size_t i)
{
    const struct mgw_filter_conf *f = &c->filters[i];
    char prefix[40], path[64], q[100], a[32], b[32];
    int r;

    snprintf(prefix, sizeof prefix, "filters[%zu].", i);
    if ((r = check_table(x, prefix, filter_settings, NELEM(filter_settings), f)) < 0)
        return r;
    snprintf(path, sizeof path, "%smax_queue", prefix);
    if (f->max_queue < queue_floor(c->server.max_frame))
        return fail(x, path,
                    "%s cannot hold the event of one full milter frame (limits.max_frame %u): "
                    "give at least %s, or lower limits.max_frame",
                    size_text(a, sizeof a, f->max_queue), c->server.max_frame,
                    size_text(b, sizeof b, queue_floor(c->server.max_frame)));
    snprintf(path, sizeof path, "%sname", prefix);
    for (size_t j = 0; j < i; j++)
        if (strcmp(c->filters[j].name, f->name) == 0)
            return fail(x, path, "%s is already the name of filters[%zu]", Q(q, f->name), j);
    snprintf(path, sizeof path, "%starget", prefix);
    if (f->target == NULL)
        return fail(x, path, "required key is missing");
    if (f->kind == MGW_FILTER_MILTER) {
        char why[300];

        if (mgw_filter_milter_target_invalid(f->target, why, sizeof why) != NULL)
            return fail(x, path, "%s", why);
        /* gRPC channel settings mean nothing on a milter socket: say so, not ignore. */
        snprintf(path, sizeof path, "%skind", prefix);
        if (f->tls || f->load_balancing != MGW_LB_PICK_FIRST)
            return fail(x, path, "milter: tls and load_balancing are gRPC settings");
    }
    snprintf(path, sizeof path, "%stls", prefix);
    if (!f->tls && (f->tls_ca || f->tls_cert || f->tls_key || f->tls_server_name))
        return fail(x, path, "certificate settings given but TLS is off");
    snprintf(path, sizeof path, "%stls.cert", prefix);
    if (f->tls_cert != NULL && f->tls_key == NULL)
        return fail(x, path, "a client certificate needs its key (tls.key)");
    snprintf(path, sizeof path, "%stls.key", prefix);
    if (f->tls_key != NULL && f->tls_cert == NULL)
        return fail(x, path, "a private key needs its certificate (tls.cert)");
    if (f->has_decl && (r = check_decl(x, prefix, &f->decl)) < 0)
        return r;
    return 0;
}

/* A listen entry is a string like any other before it is a spec. */
static const struct setting listen_setting = {.key = "listen", .kind = K_STRING};

static int check(struct ctx *x, const struct mgw_config *c, bool need_listener)
{
    char path[40], why[400], q[100];
    struct mgw_listen_spec ls;
    int r;

    if (need_listener && c->nlisten == 0)
        return fail(x, "listen", "no milter listener (give listen in the file or --listen)");
    if (c->nlisten > MGW_CONFIG_MAX_LISTEN)
        return fail(x, "listen", "more than %d listeners", MGW_CONFIG_MAX_LISTEN);
    for (size_t i = 0; i < c->nlisten; i++) {
        snprintf(path, sizeof path, "listen[%zu]", i);
        if ((r = check_string(x, path, &listen_setting, c->listen[i])) < 0)
            return r; /* first: the spec's own message quotes it raw */
        if (mgw_listen_spec_parse(c->listen[i], &ls, why, sizeof why) < 0)
            return fail(x, path, "%s", why);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->listen[i], c->listen[j]) == 0)
                return fail(x, path, "%s is also listen[%zu]", Q(q, c->listen[i]), j);
    }
    if ((r = check_table(x, "", top_settings, NELEM(top_settings), c)) < 0)
        return r;
    if (c->nfilters > MGW_CONFIG_MAX_FILTERS)
        return fail(x, "filters", "more than %d filters", MGW_CONFIG_MAX_FILTERS);
    for (size_t i = 0; i < c->nfilters; i++)
        if ((r = check_filter(x, c, i)) < 0)
            return r;
    return 0;
}

/* ---- API ---- */

struct mgw_config *mgw_config_new_default(void)
{
    struct mgw_config *c = mgw_xcalloc(1, sizeof *c);

    c->refs = 1;
    apply_defaults(c, top_settings, NELEM(top_settings));
    return c;
}

int mgw_config_load_data(const char *name, const void *data, size_t len, struct mgw_config **out,
                         char *err, size_t errlen)
{
    struct ctx x = {.file = name, .err = err, .errlen = errlen};
    struct mgw_config *c = mgw_config_new_default();
    struct raw_config *raw = NULL, empty = {.listen = NULL};
    struct cy_log log = {.len = 0};
    cyaml_config_t cc;
    int r;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    r = scan(&x, data, len);
    if (r == 0)
        r = cy_load(&x, data, len, &raw, &cc, &log);
    if (r == 0) /* a top-level mapping with nothing in it loads as NULL */
        r = convert_all(&x, raw ? raw : &empty, c);
    if (r == 0)
        r = check(&x, c, false);
    if (raw != NULL)
        cyaml_free(&cc, &top_schema, raw, 0);
    for (size_t i = 0; i < x.nw; i++)
        free(x.w[i].path);
    free(x.w);
    if (r < 0)
        c = mgw_config_free(c);
    *out = c;
    return r;
}

int mgw_config_load(const char *path, struct mgw_config **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    size_t cap = MGW_CONFIG_MAX_FILE + 1, len;
    char *buf;
    int r;

    *out = NULL;
    if (err == NULL)
        errlen = 0;
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return MGW_EIO;
    }
    buf = mgw_xmalloc(cap);
    len = fread(buf, 1, cap, f);
    if (ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        r = MGW_EIO;
    } else if (len == cap) {
        snprintf(err, errlen, "%s: larger than %u bytes", path, MGW_CONFIG_MAX_FILE);
        r = MGW_EINVAL;
    } else {
        r = mgw_config_load_data(path, buf, len, out, err, errlen);
    }
    free(buf);
    fclose(f);
    return r;
}

int mgw_config_set(struct mgw_config *c, const char *key, const char *value, char *err,
                   size_t errlen)
{
    struct ctx x = {.err = err, .errlen = errlen};

    for (size_t i = 0; i < NELEM(top_settings); i++)
        if (strcmp(top_settings[i].key, key) == 0)
            return convert(&x, key, &top_settings[i], value, c);
    return fail(&x, key, "no such setting");
}

void mgw_config_set_listen(struct mgw_config *c, const char *const *specs, size_t n)
{
    for (size_t i = 0; i < c->nlisten; i++)
        free(c->listen[i]);
    free(c->listen);
    c->listen = n ? mgw_xcalloc(n, sizeof *c->listen) : NULL;
    for (size_t i = 0; i < n; i++)
        c->listen[i] = mgw_xstrdup(specs[i]);
    c->nlisten = n;
}

void mgw_config_set_filters(struct mgw_config *c, const struct mgw_filter_conf *filters, size_t n)
{
    for (size_t i = 0; i < c->nfilters; i++)
        mgw_filter_conf_clear(&c->filters[i]);
    free(c->filters);
    c->filters = n ? mgw_xcalloc(n, sizeof *c->filters) : NULL;
    for (size_t i = 0; i < n; i++)
        mgw_filter_conf_copy(&c->filters[i], &filters[i]);
    c->nfilters = n;
}

int mgw_config_validate(const struct mgw_config *c, char *err, size_t errlen)
{
    struct ctx x = {.err = err, .errlen = errlen};

    return check(&x, c, true);
}

struct mgw_config *mgw_config_ref(struct mgw_config *c)
{
    c->refs++;
    return c;
}

struct mgw_config *mgw_config_unref(struct mgw_config *c)
{
    if (c == NULL || --c->refs > 0)
        return NULL;
    mgw_config_set_listen(c, NULL, 0);
    mgw_config_set_filters(c, NULL, 0);
    free(c->unix_owner);
    free(c->unix_group);
    free(c->http_listen);
    free(c);
    return NULL;
}

struct mgw_config *mgw_config_free(struct mgw_config *c)
{
    return mgw_config_unref(c);
}

const char *mgw_config_ready_name(enum mgw_config_ready r)
{
    return (unsigned)r < NELEM(ready_names) - 1 ? ready_names[r] : "?";
}

const char *mgw_load_balancing_name(enum mgw_load_balancing lb)
{
    return (unsigned)lb < NELEM(lb_names) - 1 ? lb_names[lb] : "?";
}
