/*
 * test_metrics.c - the metrics registry and its Prometheus text rendering (pure module).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/metrics.h"

static int setup(void **state)
{
    mgw_metrics_reset();
    return 0;
}

/* The text from the line starting with `from` up to (not including) the line starting
 * with `to` (NULL: the end). Owned by the caller. */
static char *section(const char *text, const char *from, const char *to)
{
    const char *s = strstr(text, from), *e;
    char *out;

    if (s == NULL)
        fail_msg("section \"%s\" not found", from);
    e = to ? strstr(s, to) : s + strlen(s);
    if (e == NULL)
        fail_msg("section end \"%s\" not found", to);
    out = malloc((size_t)(e - s) + 1);
    memcpy(out, s, (size_t)(e - s));
    out[e - s] = '\0';
    return out;
}

static void expect_text(const char *what, const char *got, const char *want)
{
    if (strcmp(got, want) != 0) {
        size_t i = 0;

        while (got[i] && got[i] == want[i])
            i++;
        fail_msg("%s: differs at byte %zu\n--- got\n%s\n--- want\n%s", what, i, got, want);
    }
}

static const char golden_scalars[] =
    "# HELP miltergw_sessions_open MTA connections open now.\n"
    "# TYPE miltergw_sessions_open gauge\n"
    "miltergw_sessions_open 1\n"
    "# HELP miltergw_sessions_total MTA connections accepted.\n"
    "# TYPE miltergw_sessions_total counter\n"
    "miltergw_sessions_total 3\n"
    "# HELP miltergw_sessions_closed_total MTA connections closed, by reason.\n"
    "# TYPE miltergw_sessions_closed_total counter\n"
    "miltergw_sessions_closed_total{reason=\"quit\"} 1\n"
    "miltergw_sessions_closed_total{reason=\"eof\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"truncated\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"idle_timeout\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"io_error\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"frame_empty\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"frame_too_big\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"unknown_command\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"malformed\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"out_of_order\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"unsupported_version\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"shutdown\"} 0\n"
    "miltergw_sessions_closed_total{reason=\"other\"} 1\n"
    "# HELP miltergw_messages_total Messages by final verdict (continue = delivered).\n"
    "# TYPE miltergw_messages_total counter\n"
    "miltergw_messages_total{verdict=\"accept\"} 1\n"
    "miltergw_messages_total{verdict=\"continue\"} 1\n"
    "miltergw_messages_total{verdict=\"reject\"} 1\n"
    "miltergw_messages_total{verdict=\"tempfail\"} 0\n"
    "miltergw_messages_total{verdict=\"discard\"} 0\n"
    "miltergw_messages_total{verdict=\"quarantine\"} 1\n"
    "# HELP miltergw_bytes_in_total Bytes read from MTA connections.\n"
    "# TYPE miltergw_bytes_in_total counter\n"
    "miltergw_bytes_in_total 1234\n"
    "# HELP miltergw_bytes_out_total Bytes written to MTA connections.\n"
    "# TYPE miltergw_bytes_out_total counter\n"
    "miltergw_bytes_out_total 57\n"
    "# HELP miltergw_config_reloads_total Configuration reloads, by result.\n"
    "# TYPE miltergw_config_reloads_total counter\n"
    "miltergw_config_reloads_total{result=\"ok\"} 2\n"
    "miltergw_config_reloads_total{result=\"failed\"} 1\n"
    "# HELP miltergw_draining 1 while shutting down and draining sessions.\n"
    "# TYPE miltergw_draining gauge\n"
    "miltergw_draining 1\n"
    /* Filter families keep their HELP and TYPE with no filter registered. */
    "# HELP miltergw_filter_events_total Events sent to each filter.\n"
    "# TYPE miltergw_filter_events_total counter\n"
    "# HELP miltergw_filter_latency_seconds Seconds from sending an event to a filter to its "
    "answer.\n"
    "# TYPE miltergw_filter_latency_seconds histogram\n"
    "# HELP miltergw_filter_errors_total Filter failures by kind.\n"
    "# TYPE miltergw_filter_errors_total counter\n"
    "# HELP miltergw_filter_failure_policy_total Events answered by a filter's failure policy "
    "(on_error).\n"
    "# TYPE miltergw_filter_failure_policy_total counter\n"
    "# HELP miltergw_filter_channel_ready 1 when the filter's gRPC channel is READY.\n"
    "# TYPE miltergw_filter_channel_ready gauge\n"
    "# HELP miltergw_modifications_dropped_total Modifications from a filter that were not "
    "applied, by reason.\n"
    "# TYPE miltergw_modifications_dropped_total counter\n"
    "# HELP miltergw_shadow_verdicts_total What shadow filters would have decided.\n"
    "# TYPE miltergw_shadow_verdicts_total counter\n";

static void a_known_sequence_renders_the_golden_text(void **state)
{
    size_t len = 0;
    char *text, *again;

    for (int i = 0; i < 3; i++)
        mgw_metrics_session_opened();
    mgw_metrics_session_closed(mgw_metrics_close_reason_parse("quit"));
    mgw_metrics_session_closed(mgw_metrics_close_reason_parse("no_such_reason"));
    mgw_metrics_message(MGW_VERDICT_ACCEPT, false);
    mgw_metrics_message(MGW_VERDICT_CONTINUE, true); /* delivered with a quarantine */
    mgw_metrics_message(MGW_VERDICT_SKIP, false);    /* counts as continue */
    mgw_metrics_message(MGW_VERDICT_REJECT, true);   /* refused: stays reject */
    mgw_metrics_add(MGW_METRIC_BYTES_IN, 1234);
    mgw_metrics_add(MGW_METRIC_BYTES_OUT, 56);
    mgw_metrics_inc(MGW_METRIC_BYTES_OUT);
    mgw_metrics_config_reload(true);
    mgw_metrics_config_reload(true);
    mgw_metrics_config_reload(false);
    mgw_metrics_set(MGW_METRIC_DRAINING, 1);

    text = mgw_metrics_render(&len);
    if (len != strlen(text))
        fail_msg("length: got %zu, want %zu", len, strlen(text));
    expect_text("render", text, golden_scalars);
    again = mgw_metrics_render(NULL);
    expect_text("second render", again, text);
    free(again);
    free(text);
}

static void filter_series_render_one_line_per_label_value(void **state)
{
    int f = mgw_metrics_filter_register("spam");
    int g = mgw_metrics_filter_register("virus");
    static const char *const want[] = {
        "miltergw_filter_events_total{filter=\"spam\",event=\"connect\"} 1\n",
        "miltergw_filter_events_total{filter=\"spam\",event=\"rcpt\"} 2\n",
        "miltergw_filter_events_total{filter=\"spam\",event=\"abort\"} 1\n",
        "miltergw_filter_events_total{filter=\"virus\",event=\"eom\"} 1\n",
        "miltergw_filter_events_total{filter=\"virus\",event=\"rcpt\"} 0\n",
        "miltergw_filter_errors_total{filter=\"spam\",kind=\"timeout\"} 1\n",
        "miltergw_filter_errors_total{filter=\"virus\",kind=\"out_of_contract\"} 1\n",
        "miltergw_filter_failure_policy_total{filter=\"spam\",action=\"fail_open\"} 1\n",
        "miltergw_filter_failure_policy_total{filter=\"virus\",action=\"fail_closed\"} 2\n",
        "miltergw_filter_channel_ready{filter=\"spam\"} 1\n",
        "miltergw_filter_channel_ready{filter=\"virus\"} 0\n",
        "miltergw_modifications_dropped_total{filter=\"spam\",reason=\"body_conflict\"} 3\n",
        "miltergw_modifications_dropped_total{filter=\"spam\",reason=\"not_end_of_message\"} 0\n",
        "miltergw_shadow_verdicts_total{filter=\"virus\",verdict=\"reject\"} 1\n",
        "miltergw_shadow_verdicts_total{filter=\"virus\",verdict=\"skip\"} 0\n",
    };
    static const char *const unwanted[] = {
        "reason=\"kept\"", /* MGW_POLICY_KEPT is not a drop */
    };
    char *text;

    assert_int_equal(f, 0);
    assert_int_equal(g, 1);
    mgw_metrics_filter_event(f, (enum mgw_metrics_event)mgw_metrics_event_of_cmd('C'));
    mgw_metrics_filter_event(f, MGW_METRICS_EV_RCPT);
    mgw_metrics_filter_event(f, MGW_METRICS_EV_RCPT);
    mgw_metrics_filter_event(f, (enum mgw_metrics_event)mgw_metrics_event_of_cmd('A'));
    mgw_metrics_filter_event(g, MGW_METRICS_EV_EOM);
    mgw_metrics_filter_error(f, MGW_METRICS_FERR_TIMEOUT);
    mgw_metrics_filter_error(g, MGW_METRICS_FERR_OUT_OF_CONTRACT);
    mgw_metrics_filter_failure_policy(f, mgw_metrics_failure_action_of(MGW_VERDICT_ACCEPT));
    mgw_metrics_filter_failure_policy(g, mgw_metrics_failure_action_of(MGW_VERDICT_TEMPFAIL));
    mgw_metrics_filter_failure_policy(g, mgw_metrics_failure_action_of(MGW_VERDICT_REJECT));
    mgw_metrics_filter_set_ready(f, true);
    mgw_metrics_filter_set_ready(g, true);
    mgw_metrics_filter_set_ready(g, false);
    mgw_metrics_mods_dropped(f, MGW_POLICY_DROP_BODY_CONFLICT, 3);
    mgw_metrics_mods_dropped(f, MGW_POLICY_KEPT, 7);
    mgw_metrics_shadow_verdict(g, MGW_VERDICT_REJECT);

    text = mgw_metrics_render(NULL);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("got no line %s", want[i]);
    for (size_t i = 0; i < sizeof unwanted / sizeof unwanted[0]; i++)
        if (strstr(text, unwanted[i]) != NULL)
            fail_msg("got %s, want no such label", unwanted[i]);
    /* Filters come in registration order within each family. */
    if (strstr(text, "filter_channel_ready{filter=\"spam\"}") >
        strstr(text, "filter_channel_ready{filter=\"virus\"}"))
        fail_msg("got virus before spam, want registration order");
    free(text);
}

static void histogram_buckets_are_cumulative_with_inf_sum_and_count(void **state)
{
    static const double observe[] = {
        0.0001, /* first bucket */
        0.001,  /* equal to a bound: that bucket ("le") */
        0.0625, /* 0.1 */
        0.0625, /* again */
        -1,     /* negative counts as 0 */
        20,     /* above 10: +Inf only */
        NAN,    /* ignored */
    };
    static const char want[] =
        "# HELP miltergw_filter_latency_seconds Seconds from sending an event to a filter to "
        "its answer.\n"
        "# TYPE miltergw_filter_latency_seconds histogram\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.0005\"} 2\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.001\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.0025\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.005\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.01\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.025\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.05\"} 3\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.1\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.25\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"0.5\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"1\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"2.5\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"5\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"10\"} 5\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f1\",le=\"+Inf\"} 6\n"
        "miltergw_filter_latency_seconds_sum{filter=\"f1\"} 20.1261\n"
        "miltergw_filter_latency_seconds_count{filter=\"f1\"} 6\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.0005\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.001\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.0025\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.005\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.01\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.025\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.05\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.1\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.25\"} 0\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"0.5\"} 1\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"1\"} 1\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"2.5\"} 1\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"5\"} 1\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"10\"} 1\n"
        "miltergw_filter_latency_seconds_bucket{filter=\"f2\",le=\"+Inf\"} 1\n"
        "miltergw_filter_latency_seconds_sum{filter=\"f2\"} 0.3\n"
        "miltergw_filter_latency_seconds_count{filter=\"f2\"} 1\n";
    int f1 = mgw_metrics_filter_register("f1");
    int f2 = mgw_metrics_filter_register("f2");
    char *text, *got;

    for (size_t i = 0; i < sizeof observe / sizeof observe[0]; i++)
        mgw_metrics_observe_latency(f1, observe[i]);
    mgw_metrics_observe_latency(f2, 0.3); /* not exact in binary: printed shortest */
    text = mgw_metrics_render(NULL);
    got = section(text, "# HELP miltergw_filter_latency_seconds",
                  "# HELP miltergw_filter_errors_total");
    expect_text("histogram", got, want);
    free(got);
    free(text);
}

static void label_values_are_escaped(void **state)
{
    static const struct {
        const char *name;
        const char *want;
    } cases[] = {
        {"plain", "filter=\"plain\""},
        {"quo\"te", "filter=\"quo\\\"te\""},
        {"back\\slash", "filter=\"back\\\\slash\""},
        {"new\nline", "filter=\"new\\nline\""},
        {"tab\tand utf-8 \xc3\xa9", "filter=\"tab\tand utf-8 \xc3\xa9\""},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text, want[128];

        mgw_metrics_reset();
        if (mgw_metrics_filter_register(cases[i].name) != 0)
            fail_msg("%s: register failed", cases[i].want);
        text = mgw_metrics_render(NULL);
        snprintf(want, sizeof want, "miltergw_filter_channel_ready{%s} 0\n", cases[i].want);
        if (strstr(text, want) == NULL)
            fail_msg("got no line %s", want);
        free(text);
    }
}

static void filters_are_registered_by_name(void **state)
{
    char longname[MGW_METRICS_FILTER_NAME_MAX + 1];
    char name[16];
    int a, b, rc;

    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    static const struct {
        const char *name;
        int want;
    } cases[] = {
        {"a", 0},           {"b", 1}, {"a", 0}, /* same name, same index */
        {"", MGW_EINVAL},                       /* no name */
        {NULL, MGW_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rc = mgw_metrics_filter_register(cases[i].name);
        if (rc != cases[i].want)
            fail_msg("register(%s): got %d, want %d", cases[i].name ? cases[i].name : "NULL", rc,
                     cases[i].want);
    }
    rc = mgw_metrics_filter_register(longname);
    if (rc != MGW_EINVAL)
        fail_msg("register(64 x): got %d, want %d", rc, MGW_EINVAL);
    longname[MGW_METRICS_FILTER_NAME_MAX - 1] = '\0'; /* 63 characters fit */
    rc = mgw_metrics_filter_register(longname);
    if (rc != 2)
        fail_msg("register(63 x): got %d, want 2", rc);

    for (int i = 3; i < MGW_METRICS_MAX_FILTERS; i++) {
        snprintf(name, sizeof name, "f%d", i);
        rc = mgw_metrics_filter_register(name);
        if (rc != i)
            fail_msg("register(%s): got %d, want %d", name, rc, i);
    }
    rc = mgw_metrics_filter_register("one-too-many");
    if (rc != MGW_ENOSPACE)
        fail_msg("register past the table: got %d, want %d", rc, MGW_ENOSPACE);
    a = mgw_metrics_filter_register("a");
    b = mgw_metrics_filter_register("f5");
    if (a != 0 || b != 5)
        fail_msg("known names when full: got %d %d, want 0 5", a, b);
}

static void a_reload_hides_removed_filters_and_keeps_their_counts(void **state)
{
    int keep = mgw_metrics_filter_register("keep");
    int gone = mgw_metrics_filter_register("gone");
    char *text;

    mgw_metrics_filter_event(keep, MGW_METRICS_EV_MAIL);
    mgw_metrics_filter_event(gone, MGW_METRICS_EV_MAIL);

    /* Reload: retire all, register the new set. */
    mgw_metrics_filters_retire();
    if (mgw_metrics_filter_register("keep") != keep)
        fail_msg("re-register: got a new index, want %d", keep);
    mgw_metrics_filter_event(gone, MGW_METRICS_EV_MAIL); /* an old session still counts */
    text = mgw_metrics_render(NULL);
    if (strstr(text, "filter=\"gone\"") != NULL)
        fail_msg("got series of a retired filter, want none");
    if (strstr(text, "miltergw_filter_events_total{filter=\"keep\",event=\"mail\"} 1\n") == NULL)
        fail_msg("got no mail count 1 for keep");
    free(text);

    /* The name comes back: its counters resume, never reset. */
    if (mgw_metrics_filter_register("gone") != gone)
        fail_msg("re-register gone: got a new index, want %d", gone);
    text = mgw_metrics_render(NULL);
    if (strstr(text, "miltergw_filter_events_total{filter=\"gone\",event=\"mail\"} 2\n") == NULL)
        fail_msg("got no mail count 2 for gone");
    free(text);
}

static void out_of_range_arguments_are_ignored(void **state)
{
    int f = mgw_metrics_filter_register("f");
    char *before, *after;

    before = mgw_metrics_render(NULL);
    mgw_metrics_filter_event(-1, MGW_METRICS_EV_MAIL);
    mgw_metrics_filter_event(f + 1, MGW_METRICS_EV_MAIL);
    mgw_metrics_filter_event(MGW_METRICS_MAX_FILTERS, MGW_METRICS_EV_MAIL);
    mgw_metrics_filter_event(f, MGW_METRICS_EV_COUNT);
    mgw_metrics_observe_latency(-5, 1.0);
    mgw_metrics_filter_error(f, MGW_METRICS_FERR_COUNT);
    mgw_metrics_filter_failure_policy(f, MGW_METRICS_FAIL_COUNT);
    mgw_metrics_mods_dropped(f, MGW_POLICY_DROP_COUNT, 1);
    mgw_metrics_shadow_verdict(f, (enum mgw_verdict_kind)99);
    mgw_metrics_message((enum mgw_verdict_kind)99, false);
    mgw_metrics_inc(MGW_METRIC_COUNT);
    mgw_metrics_dec(MGW_METRIC_SESSIONS_TOTAL); /* counters never go down */
    mgw_metrics_set(MGW_METRIC_BYTES_IN, 5);
    after = mgw_metrics_render(NULL);
    expect_text("render after ignored bumps", after, before);
    free(before);
    free(after);
}

static void gauges_go_up_and_down(void **state)
{
    static const struct {
        const char *name;
        void (*op)(void);
        int64_t want_open;
    } steps[] = {
        {"open", mgw_metrics_session_opened, 1},
        {"open again", mgw_metrics_session_opened, 2},
    };

    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        steps[i].op();
        if (mgw_metrics_get(MGW_METRIC_SESSIONS_OPEN) != steps[i].want_open)
            fail_msg("%s: got %lld, want %lld", steps[i].name,
                     (long long)mgw_metrics_get(MGW_METRIC_SESSIONS_OPEN),
                     (long long)steps[i].want_open);
    }
    mgw_metrics_session_closed(MGW_METRICS_CLOSE_EOF);
    mgw_metrics_dec(MGW_METRIC_SESSIONS_OPEN);
    mgw_metrics_dec(MGW_METRIC_SESSIONS_OPEN); /* a bug upstream shows as -1, not 2^64-1 */
    char *text = mgw_metrics_render(NULL);
    if (strstr(text, "\nmiltergw_sessions_open -1\n") == NULL)
        fail_msg("got no sessions_open -1");
    if (mgw_metrics_get(MGW_METRIC_SESSIONS_TOTAL) != 2)
        fail_msg("sessions_total: got %lld, want 2",
                 (long long)mgw_metrics_get(MGW_METRIC_SESSIONS_TOTAL));
    free(text);
}

static void close_reasons_parse_from_session_strings(void **state)
{
    static const struct {
        const char *in;
        enum mgw_metrics_close_reason want;
    } cases[] = {
        {"quit", MGW_METRICS_CLOSE_QUIT},
        {"eof", MGW_METRICS_CLOSE_EOF},
        {"truncated", MGW_METRICS_CLOSE_TRUNCATED},
        {"idle_timeout", MGW_METRICS_CLOSE_IDLE_TIMEOUT},
        {"io_error", MGW_METRICS_CLOSE_IO_ERROR},
        {"frame_empty", MGW_METRICS_CLOSE_FRAME_EMPTY},
        {"frame_too_big", MGW_METRICS_CLOSE_FRAME_TOO_BIG},
        {"unknown_command", MGW_METRICS_CLOSE_UNKNOWN_COMMAND},
        {"malformed", MGW_METRICS_CLOSE_MALFORMED},
        {"out_of_order", MGW_METRICS_CLOSE_OUT_OF_ORDER},
        {"unsupported_version", MGW_METRICS_CLOSE_UNSUPPORTED_VERSION},
        {"shutdown", MGW_METRICS_CLOSE_SHUTDOWN},
        {"other", MGW_METRICS_CLOSE_OTHER},
        {"protocol_error", MGW_METRICS_CLOSE_OTHER},
        {"QUIT", MGW_METRICS_CLOSE_OTHER},
        {"", MGW_METRICS_CLOSE_OTHER},
        {NULL, MGW_METRICS_CLOSE_OTHER},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum mgw_metrics_close_reason got = mgw_metrics_close_reason_parse(cases[i].in);

        if (got != cases[i].want)
            fail_msg("parse(%s): got %d, want %d", cases[i].in ? cases[i].in : "NULL", got,
                     cases[i].want);
    }
    /* The mgw_strerror() names of the codec's errors are labels as they stand. */
    static const int codes[] = {MGW_EFRAME_EMPTY, MGW_EFRAME_TOO_BIG, MGW_EUNKNOWN_CMD,
                                MGW_EMALFORMED,   MGW_EORDER,         MGW_EIO};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (mgw_metrics_close_reason_parse(mgw_strerror(codes[i])) == MGW_METRICS_CLOSE_OTHER)
            fail_msg("parse(%s): got other, want its own reason", mgw_strerror(codes[i]));
}

static void milter_commands_map_to_events(void **state)
{
    static const struct {
        uint8_t cmd;
        int want;
    } cases[] = {
        {'C', MGW_METRICS_EV_CONNECT},
        {'H', MGW_METRICS_EV_HELO},
        {'M', MGW_METRICS_EV_MAIL},
        {'R', MGW_METRICS_EV_RCPT},
        {'T', MGW_METRICS_EV_DATA},
        {'L', MGW_METRICS_EV_HEADER},
        {'N', MGW_METRICS_EV_EOH},
        {'B', MGW_METRICS_EV_BODY},
        {'E', MGW_METRICS_EV_EOM},
        {'U', MGW_METRICS_EV_UNKNOWN},
        {'A', MGW_METRICS_EV_ABORT},
        {'O', -1},
        {'Q', -1},
        {'D', -1},
        {0, -1},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = mgw_metrics_event_of_cmd(cases[i].cmd);

        if (got != cases[i].want)
            fail_msg("event_of_cmd('%c'): got %d, want %d", cases[i].cmd ? cases[i].cmd : '0', got,
                     cases[i].want);
    }
}

static void reset_forgets_counts_and_filters(void **state)
{
    char *fresh, *text;

    fresh = mgw_metrics_render(NULL);
    mgw_metrics_session_opened();
    mgw_metrics_message(MGW_VERDICT_DISCARD, false);
    mgw_metrics_observe_latency(mgw_metrics_filter_register("x"), 0.1);
    mgw_metrics_reset();
    text = mgw_metrics_render(NULL);
    expect_text("render after reset", text, fresh);
    if (mgw_metrics_filter_register("y") != 0)
        fail_msg("first index after reset: want 0");
    free(text);
    free(fresh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(a_known_sequence_renders_the_golden_text, setup),
        cmocka_unit_test_setup(filter_series_render_one_line_per_label_value, setup),
        cmocka_unit_test_setup(histogram_buckets_are_cumulative_with_inf_sum_and_count, setup),
        cmocka_unit_test_setup(label_values_are_escaped, setup),
        cmocka_unit_test_setup(filters_are_registered_by_name, setup),
        cmocka_unit_test_setup(a_reload_hides_removed_filters_and_keeps_their_counts, setup),
        cmocka_unit_test_setup(out_of_range_arguments_are_ignored, setup),
        cmocka_unit_test_setup(gauges_go_up_and_down, setup),
        cmocka_unit_test_setup(close_reasons_parse_from_session_strings, setup),
        cmocka_unit_test_setup(milter_commands_map_to_events, setup),
        cmocka_unit_test_setup(reset_forgets_counts_and_filters, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
