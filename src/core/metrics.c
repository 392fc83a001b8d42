/*
 * metrics.c - process-wide counters and their Prometheus text exposition (format 0.0.4).
 *
 * The registry is one static struct of plain arrays indexed by the enums of metrics.h:
 * a bump is a bounds check and an increment. The histogram keeps per-bucket counts (not
 * cumulative) so an observation touches one slot; rendering accumulates them. Rendering
 * is one fixed sequence of families, so the output order is set by the code (filters in
 * registration order), never by bump order, and two scrapes of an idle process match.
 *
 * Threads: every worker loop (workers.h) bumps, and the HTTP endpoint renders, at once.
 * A bump is a relaxed atomic add (a counter needs no order with anything else); a render
 * reads each value atomically, so a scrape may see one event's counters half bumped,
 * never a torn value. Filter registration, rare, holds `reg_mu`, and so does rendering,
 * which reads the filter table.
 *
 * It does not serve anything (metrics_http.c does), log, or read clocks.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_vocab.h"
#include "mgw/xmalloc.h"

#define PREFIX   "miltergw_"
#define NBUCKETS 14
#define NSHADOW  (MGW_VERDICT_SKIP + 1)

#define BUMP(x, n) __atomic_fetch_add(&(x), (n), __ATOMIC_RELAXED)
#define PEEK(x)    __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* Upper bounds, with their labels spelled as Prometheus clients print them (Go's
 * shortest float form), so the `le` values are stable strings rather than printf's. */
static const double bucket_le[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const char *const bucket_label[NBUCKETS] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                                   "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                                   "1",      "2.5",   "5",      "10"};

static const char *const close_names[MGW_METRICS_CLOSE_COUNT] = {
    "quit",      "eof",          "truncated",           "idle_timeout",
    "io_error",  "frame_empty",  "frame_too_big",       "unknown_command",
    "malformed", "out_of_order", "unsupported_version", "shutdown",
    "other"};
static const char *const msg_names[MGW_METRICS_MSG_COUNT] = {"accept",   "continue", "reject",
                                                             "tempfail", "discard",  "quarantine"};
static const char *const ferr_names[MGW_METRICS_FERR_COUNT] = {
    "unavailable", "stream_broken", "stream_closed", "timeout", "out_of_contract", "queue_full"};
static const char *const fail_names[MGW_METRICS_FAIL_COUNT] = {"fail_open", "fail_closed"};
static const char *const reload_names[2] = {"ok", "failed"};

struct filter_stats {
    char name[MGW_METRICS_FILTER_NAME_MAX];
    bool active;
    bool ready;
    uint64_t events[MGW_METRICS_EV_COUNT];
    uint64_t buckets[NBUCKETS + 1]; /* per bucket, not cumulative; last is +Inf only */
    uint64_t sum_ns; /* an integer, so that it can be added to atomically */
    uint64_t errors[MGW_METRICS_FERR_COUNT];
    uint64_t failure[MGW_METRICS_FAIL_COUNT];
    uint64_t dropped[MGW_POLICY_DROP_COUNT];
    uint64_t shadow[NSHADOW];
};

static struct {
    uint64_t scalar[MGW_METRIC_COUNT]; /* gauges stored two's complement */
    uint64_t closed[MGW_METRICS_CLOSE_COUNT];
    uint64_t messages[MGW_METRICS_MSG_COUNT];
    uint64_t reloads[2];
    int nfilters; /* written under reg_mu; a new entry is complete before it counts */
    struct filter_stats filters[MGW_METRICS_MAX_FILTERS];
} reg;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;

static int is_gauge(enum mgw_metric m)
{
    return m == MGW_METRIC_SESSIONS_OPEN || m == MGW_METRIC_DRAINING;
}

static struct filter_stats *filter_at(int f)
{
    return f >= 0 && f < __atomic_load_n(&reg.nfilters, __ATOMIC_ACQUIRE) ? &reg.filters[f] : NULL;
}

/* ---- Bumps ---- */

void mgw_metrics_inc(enum mgw_metric m)
{
    if ((unsigned)m < MGW_METRIC_COUNT)
        BUMP(reg.scalar[m], 1);
}

void mgw_metrics_add(enum mgw_metric m, uint64_t n)
{
    if ((unsigned)m < MGW_METRIC_COUNT)
        BUMP(reg.scalar[m], n);
}

void mgw_metrics_dec(enum mgw_metric m)
{
    if ((unsigned)m < MGW_METRIC_COUNT && is_gauge(m))
        BUMP(reg.scalar[m], (uint64_t)-1);
}

void mgw_metrics_set(enum mgw_metric m, int64_t v)
{
    if ((unsigned)m < MGW_METRIC_COUNT && is_gauge(m))
        __atomic_store_n(&reg.scalar[m], (uint64_t)v, __ATOMIC_RELAXED);
}

int64_t mgw_metrics_get(enum mgw_metric m)
{
    return (unsigned)m < MGW_METRIC_COUNT ? (int64_t)PEEK(reg.scalar[m]) : 0;
}

enum mgw_metrics_close_reason mgw_metrics_close_reason_parse(const char *name)
{
    if (name == NULL)
        return MGW_METRICS_CLOSE_OTHER;
    for (int i = 0; i < MGW_METRICS_CLOSE_COUNT; i++)
        if (strcmp(name, close_names[i]) == 0)
            return (enum mgw_metrics_close_reason)i;
    return MGW_METRICS_CLOSE_OTHER;
}

void mgw_metrics_session_opened(void)
{
    BUMP(reg.scalar[MGW_METRIC_SESSIONS_TOTAL], 1);
    BUMP(reg.scalar[MGW_METRIC_SESSIONS_OPEN], 1);
}

void mgw_metrics_session_closed(enum mgw_metrics_close_reason r)
{
    if ((unsigned)r >= MGW_METRICS_CLOSE_COUNT)
        r = MGW_METRICS_CLOSE_OTHER;
    BUMP(reg.scalar[MGW_METRIC_SESSIONS_OPEN], (uint64_t)-1);
    BUMP(reg.closed[r], 1);
}

void mgw_metrics_message(enum mgw_verdict_kind final, bool quarantined)
{
    enum mgw_metrics_msg_verdict v;

    switch (final) {
    case MGW_VERDICT_ACCEPT: v = MGW_METRICS_MSG_ACCEPT; break;
    case MGW_VERDICT_CONTINUE:
    case MGW_VERDICT_SKIP: v = MGW_METRICS_MSG_CONTINUE; break;
    case MGW_VERDICT_REJECT: v = MGW_METRICS_MSG_REJECT; break;
    case MGW_VERDICT_TEMPFAIL: v = MGW_METRICS_MSG_TEMPFAIL; break;
    case MGW_VERDICT_DISCARD: v = MGW_METRICS_MSG_DISCARD; break;
    default: return;
    }
    /* A refused message is not delivered, so its quarantine (dropped by policy anyway)
     * does not apply. */
    if (quarantined && (v == MGW_METRICS_MSG_ACCEPT || v == MGW_METRICS_MSG_CONTINUE))
        v = MGW_METRICS_MSG_QUARANTINE;
    BUMP(reg.messages[v], 1);
}

void mgw_metrics_config_reload(bool ok)
{
    BUMP(reg.reloads[ok ? 0 : 1], 1);
}

int mgw_metrics_event_of_cmd(uint8_t cmd)
{
    return mgw_milter_cmd_event(cmd);
}

enum mgw_metrics_failure_action mgw_metrics_failure_action_of(enum mgw_verdict_kind on_error)
{
    switch (on_error) {
    case MGW_VERDICT_ACCEPT:
    case MGW_VERDICT_CONTINUE:
    case MGW_VERDICT_SKIP: return MGW_METRICS_FAIL_OPEN;
    default: return MGW_METRICS_FAIL_CLOSED;
    }
}

static int filter_register_locked(const char *name, size_t len)
{
    for (int i = 0; i < reg.nfilters; i++) {
        if (strcmp(reg.filters[i].name, name) == 0) {
            __atomic_store_n(&reg.filters[i].active, true, __ATOMIC_RELAXED);
            return i;
        }
    }
    if (reg.nfilters == MGW_METRICS_MAX_FILTERS)
        return MGW_ENOSPACE;
    struct filter_stats *fs = &reg.filters[reg.nfilters];
    memset(fs, 0, sizeof *fs);
    memcpy(fs->name, name, len + 1);
    fs->active = true;
    __atomic_store_n(&reg.nfilters, reg.nfilters + 1, __ATOMIC_RELEASE);
    return reg.nfilters - 1;
}

int mgw_metrics_filter_register(const char *name)
{
    size_t len;
    int f;

    if (name == NULL || (len = strlen(name)) == 0 || len >= MGW_METRICS_FILTER_NAME_MAX)
        return MGW_EINVAL;
    pthread_mutex_lock(&reg_mu);
    f = filter_register_locked(name, len);
    pthread_mutex_unlock(&reg_mu);
    return f;
}

void mgw_metrics_filters_retire(void)
{
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < reg.nfilters; i++)
        __atomic_store_n(&reg.filters[i].active, false, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&reg_mu);
}

void mgw_metrics_filter_event(int f, enum mgw_metrics_event ev)
{
    struct filter_stats *fs = filter_at(f);

    if (fs && (unsigned)ev < MGW_METRICS_EV_COUNT)
        BUMP(fs->events[ev], 1);
}

void mgw_metrics_observe_latency(int f, double seconds)
{
    struct filter_stats *fs = filter_at(f);
    int i = 0;

    if (fs == NULL || isnan(seconds))
        return;
    if (seconds < 0)
        seconds = 0;
    /* Prometheus buckets are "le": a value equal to a bound belongs to that bucket. */
    while (i < NBUCKETS && seconds > bucket_le[i])
        i++;
    BUMP(fs->buckets[i], 1);
    BUMP(fs->sum_ns, (uint64_t)(seconds * 1e9 + 0.5));
}

void mgw_metrics_filter_error(int f, enum mgw_metrics_filter_error kind)
{
    struct filter_stats *fs = filter_at(f);

    if (fs && (unsigned)kind < MGW_METRICS_FERR_COUNT)
        BUMP(fs->errors[kind], 1);
}

void mgw_metrics_filter_failure_policy(int f, enum mgw_metrics_failure_action a)
{
    struct filter_stats *fs = filter_at(f);

    if (fs && (unsigned)a < MGW_METRICS_FAIL_COUNT)
        BUMP(fs->failure[a], 1);
}

void mgw_metrics_filter_set_ready(int f, bool ready)
{
    struct filter_stats *fs = filter_at(f);

    if (fs)
        __atomic_store_n(&fs->ready, ready, __ATOMIC_RELAXED);
}

void mgw_metrics_mods_dropped(int f, enum mgw_policy_drop_reason r, uint64_t n)
{
    struct filter_stats *fs = filter_at(f);

    if (fs && r != MGW_POLICY_KEPT && (unsigned)r < MGW_POLICY_DROP_COUNT)
        BUMP(fs->dropped[r], n);
}

void mgw_metrics_shadow_verdict(int f, enum mgw_verdict_kind k)
{
    struct filter_stats *fs = filter_at(f);

    if (fs && (unsigned)k < NSHADOW)
        BUMP(fs->shadow[k], 1);
}

uint64_t mgw_metrics_filter_events(int f, enum mgw_metrics_event ev)
{
    struct filter_stats *fs = filter_at(f);

    return fs && (unsigned)ev < MGW_METRICS_EV_COUNT ? PEEK(fs->events[ev]) : 0;
}

void mgw_metrics_reset(void)
{
    pthread_mutex_lock(&reg_mu);
    memset(&reg, 0, sizeof reg);
    pthread_mutex_unlock(&reg_mu);
}

/* ---- Rendering ---- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t n)
{
    if (b->len + n + 1 <= b->cap)
        return;
    while (b->len + n + 1 > b->cap)
        b->cap = b->cap ? b->cap * 2 : 4096;
    b->p = mgw_xrealloc(b->p, b->cap);
}

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_u64(struct sbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);

    sb_put(b, tmp, (size_t)n);
}

static void sb_i64(struct sbuf *b, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);

    sb_put(b, tmp, (size_t)n);
}

/* The shortest %g form that reads back as the same double (what Prometheus clients
 * print), and the exposition format's spellings of the infinities. */
static void sb_double(struct sbuf *b, double v)
{
    char tmp[40];
    int n = 0;

    if (isnan(v)) {
        sb_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        sb_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    sb_put(b, tmp, (size_t)n);
}

/* Label values escape backslash, double quote and line feed (format 0.0.4). */
static void sb_label_value(struct sbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '\\': sb_put(b, "\\\\", 2); break;
        case '"': sb_put(b, "\\\"", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        default: sb_put(b, s, 1);
        }
    }
}

static void family(struct sbuf *b, const char *name, const char *type, const char *help)
{
    sb_puts(b, "# HELP " PREFIX);
    sb_puts(b, name);
    sb_puts(b, " ");
    sb_puts(b, help);
    sb_puts(b, "\n# TYPE " PREFIX);
    sb_puts(b, name);
    sb_puts(b, " ");
    sb_puts(b, type);
    sb_puts(b, "\n");
}

/* Write `miltergw_NAME{filter="F",KEY="VAL"} ` with either label optional; the caller
 * appends the value and the newline. */
static void sample(struct sbuf *b, const char *name, const char *filter, const char *key,
                   const char *val)
{
    sb_puts(b, PREFIX);
    sb_puts(b, name);
    if (filter || key) {
        sb_puts(b, "{");
        if (filter) {
            sb_puts(b, "filter=\"");
            sb_label_value(b, filter);
            sb_puts(b, key ? "\"," : "\"");
        }
        if (key) {
            sb_puts(b, key);
            sb_puts(b, "=\"");
            sb_label_value(b, val);
            sb_puts(b, "\"");
        }
        sb_puts(b, "}");
    }
    sb_puts(b, " ");
}

static void counter_line(struct sbuf *b, const char *name, const char *filter, const char *key,
                         const char *val, uint64_t v)
{
    sample(b, name, filter, key, val);
    sb_u64(b, v);
    sb_puts(b, "\n");
}

/* One labelled family over every active filter: values at offset `off` of each
 * filter_stats, n of them, labelled key=names[i] (names[i] NULL: skipped). */
static void filter_family(struct sbuf *b, const char *name, const char *help, const char *key,
                          size_t off, const char *const *names, int n)
{
    family(b, name, "counter", help);
    for (int f = 0; f < reg.nfilters; f++) {
        const struct filter_stats *fs = &reg.filters[f];
        const uint64_t *vals = (const uint64_t *)((const char *)fs + off);

        if (!PEEK(fs->active))
            continue;
        for (int i = 0; i < n; i++)
            if (names[i])
                counter_line(b, name, fs->name, key, names[i], PEEK(vals[i]));
    }
}

static void render_histograms(struct sbuf *b)
{
    static const char *const name = "filter_latency_seconds";

    family(b, name, "histogram", "Seconds from sending an event to a filter to its answer.");
    for (int f = 0; f < reg.nfilters; f++) {
        const struct filter_stats *fs = &reg.filters[f];
        uint64_t cum = 0;

        if (!PEEK(fs->active))
            continue;
        for (int i = 0; i < NBUCKETS; i++) {
            cum += PEEK(fs->buckets[i]);
            counter_line(b, "filter_latency_seconds_bucket", fs->name, "le", bucket_label[i], cum);
        }
        cum += PEEK(fs->buckets[NBUCKETS]);
        counter_line(b, "filter_latency_seconds_bucket", fs->name, "le", "+Inf", cum);
        sample(b, "filter_latency_seconds_sum", fs->name, NULL, NULL);
        sb_double(b, (double)PEEK(fs->sum_ns) / 1e9);
        sb_puts(b, "\n");
        counter_line(b, "filter_latency_seconds_count", fs->name, NULL, NULL, cum);
    }
}

static void render_filters(struct sbuf *b)
{
    const char *event_names[MGW_METRICS_EV_COUNT];
    const char *drop_names[MGW_POLICY_DROP_COUNT];
    const char *shadow_names[NSHADOW];

    for (int i = 0; i < MGW_METRICS_EV_COUNT; i++)
        event_names[i] = mgw_milter_event_label(i);

    drop_names[MGW_POLICY_KEPT] = NULL;
    for (int i = 1; i < MGW_POLICY_DROP_COUNT; i++)
        drop_names[i] = mgw_policy_drop_name((enum mgw_policy_drop_reason)i);
    for (int i = 0; i < NSHADOW; i++)
        shadow_names[i] = mgw_verdict_name((enum mgw_verdict_kind)i);

    filter_family(b, "filter_events_total", "Events sent to each filter.", "event",
                  offsetof(struct filter_stats, events), event_names, MGW_METRICS_EV_COUNT);
    render_histograms(b);
    filter_family(b, "filter_errors_total", "Filter failures by kind.", "kind",
                  offsetof(struct filter_stats, errors), ferr_names, MGW_METRICS_FERR_COUNT);
    filter_family(b, "filter_failure_policy_total",
                  "Events answered by a filter's failure policy (on_error).", "action",
                  offsetof(struct filter_stats, failure), fail_names, MGW_METRICS_FAIL_COUNT);
    family(b, "filter_channel_ready", "gauge", "1 when the filter's gRPC channel is READY.");
    for (int f = 0; f < reg.nfilters; f++) {
        if (!PEEK(reg.filters[f].active))
            continue;
        sample(b, "filter_channel_ready", reg.filters[f].name, NULL, NULL);
        sb_puts(b, PEEK(reg.filters[f].ready) ? "1\n" : "0\n");
    }
    filter_family(b, "modifications_dropped_total",
                  "Modifications from a filter that were not applied, by reason.", "reason",
                  offsetof(struct filter_stats, dropped), drop_names, MGW_POLICY_DROP_COUNT);
    filter_family(b, "shadow_verdicts_total", "What shadow filters would have decided.", "verdict",
                  offsetof(struct filter_stats, shadow), shadow_names, NSHADOW);
}

static void labelled(struct sbuf *b, const char *name, const char *help, const char *key,
                     const char *const *names, const uint64_t *vals, int n)
{
    family(b, name, "counter", help);
    for (int i = 0; i < n; i++)
        counter_line(b, name, NULL, key, names[i], PEEK(vals[i]));
}

static void gauge(struct sbuf *b, const char *name, const char *help, enum mgw_metric m)
{
    family(b, name, "gauge", help);
    sample(b, name, NULL, NULL, NULL);
    sb_i64(b, (int64_t)PEEK(reg.scalar[m]));
    sb_puts(b, "\n");
}

static void counter(struct sbuf *b, const char *name, const char *help, enum mgw_metric m)
{
    family(b, name, "counter", help);
    counter_line(b, name, NULL, NULL, NULL, PEEK(reg.scalar[m]));
}

char *mgw_metrics_render(size_t *len)
{
    struct sbuf b = {0};

    sb_reserve(&b, 16384);
    pthread_mutex_lock(&reg_mu);
    gauge(&b, "sessions_open", "MTA connections open now.", MGW_METRIC_SESSIONS_OPEN);
    counter(&b, "sessions_total", "MTA connections accepted.", MGW_METRIC_SESSIONS_TOTAL);
    labelled(&b, "sessions_closed_total", "MTA connections closed, by reason.", "reason",
             close_names, reg.closed, MGW_METRICS_CLOSE_COUNT);
    labelled(&b, "messages_total", "Messages by final verdict (continue = delivered).", "verdict",
             msg_names, reg.messages, MGW_METRICS_MSG_COUNT);
    counter(&b, "bytes_in_total", "Bytes read from MTA connections.", MGW_METRIC_BYTES_IN);
    counter(&b, "bytes_out_total", "Bytes written to MTA connections.", MGW_METRIC_BYTES_OUT);
    labelled(&b, "config_reloads_total", "Configuration reloads, by result.", "result",
             reload_names, reg.reloads, 2);
    gauge(&b, "draining", "1 while shutting down and draining sessions.", MGW_METRIC_DRAINING);
    render_filters(&b);
    pthread_mutex_unlock(&reg_mu);
    if (len)
        *len = b.len;
    return b.p;
}
