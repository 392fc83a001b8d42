/*
 * test_config.c - unit tests of the configuration module (config.h): every key of the
 * file, the defaults, every kind of refusal with its exact FILE:LINE and key, command-line
 * overrides through mgw_config_set*() and mgw_config_validate(), and reference counting.
 *
 * Fixtures are written to a fresh temporary directory, so messages carry a real path.
 * Every table row is a sentence naming the behaviour it pins down; failures are collected
 * per table and reported as "<case>: <what>: got X, want Y". Every config is freed, so a
 * sanitizer build also checks for leaks.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "table.h"

#include "mgw/config.h"
#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/milter_codec.h"



/* ---- Fixtures in a temporary directory ---- */

static char tmpdir[64];
static unsigned nfixture;

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config.XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
    char path[128];

    (void)state;
    for (unsigned i = 0; i < nfixture; i++) {
        snprintf(path, sizeof path, "%s/%u.yaml", tmpdir, i);
        unlink(path);
    }
    return rmdir(tmpdir);
}

/* Write text (len bytes) to a new fixture file; its path goes to path[0..cap). */
static void write_fixture(const char *text, size_t len, char *path, size_t cap)
{
    FILE *f;

    snprintf(path, cap, "%s/%u.yaml", tmpdir, nfixture++);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static struct mgw_config *load_text(const char *text, char *path, size_t cap, int *rc, char *err,
                                    size_t errlen)
{
    struct mgw_config *c = NULL;

    write_fixture(text, strlen(text), path, cap);
    *rc = mgw_config_load(path, &c, err, errlen);
    return c;
}

/* ---- Every key ---- */

static const char full_yaml[] =
    "# every key, none at its default\n"
    "listen: [ \"inet:127.0.0.1:8890\", \"unix:/run/miltergw/milter.sock\" ]\n"
    "unix_socket: { mode: \"0600\", owner: postfix, group: mail }\n"
    "http: { listen: \"[::1]:9090\", ready: all }\n"
    "log: { level: debug, format: json }\n"
    "limits: { max_connections: 500, max_frame: 2000000, idle_timeout: 2m }\n"
    "drain_timeout: 45s\n"
    "workers: 3\n"
    "filters:\n"
    "  - name: spam\n"
    "    target: \"dns:///spamfilter:50051\"\n"
    "    on_error: accept\n"
    "    mode: shadow\n"
    "    content: strict\n"
    "    timeout: 250ms\n"
    "    eom_timeout: 90s\n"
    "    max_queue: 3MiB\n"
    "    max_message: 16MiB\n"
    "    load_balancing: round_robin\n"
    "    keepalive: { time: 1m, timeout: 5s }\n"
    "    tls: { ca: /p/ca.pem, cert: /p/client.pem, key: /p/client.key, "
    "server_name: filter.example }\n"
    "    declare:\n"
    "      events: [connect, mail, rcpt, header, eom]\n"
    "      observe_only: [header]\n"
    "      actions: [add_header, change_header, replace_body, add_rcpt, add_rcpt_with_args,\n"
    "                delete_rcpt, quarantine, change_from]\n"
    "      macros: { connect: [j, \"{daemon_name}\"], helo: [\"{tls_version}\"],\n"
    "                mail: [\"{mail_addr}\", i], rcpt: [\"{rcpt_addr}\"], data: [i],\n"
    "                eoh: [\"{x}\"], eom: [\"{msg_id}\"] }\n"
    "      rejected_recipients: true\n"
    "      header_leading_space: true\n"
    "  - name: av\n"
    "    target: unix:/run/av.sock\n"
    "    on_error: reject\n"
    "    tls: {}\n";

#define CHECK_U(what, got, want)                                                                   \
    do {                                                                                           \
        unsigned long long g_ = (unsigned long long)(got), w_ = (unsigned long long)(want);        \
        if (g_ != w_)                                                                              \
            case_failed("the full file sets every key", "%s: got %llu, want %llu", what, g_, w_);  \
    } while (0)

#define CHECK_S(what, got, want)                                                                   \
    do {                                                                                           \
        const char *g_ = (got), *w_ = (want);                                                      \
        if ((g_ == NULL) != (w_ == NULL) || (g_ && strcmp(g_, w_) != 0))                           \
            case_failed("the full file sets every key", "%s: got \"%s\", want \"%s\"", what,       \
                        str_or_null(g_), str_or_null(w_));                                         \
    } while (0)

static void test_every_key_is_parsed(void **state)
{
    char path[128], err[512];
    struct mgw_config *c;
    const struct mgw_filter_conf *f;
    int rc;

    (void)state;
    c = load_text(full_yaml, path, sizeof path, &rc, err, sizeof err);
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    assert_non_null(c);
    CHECK_U("refs", c->refs, 1);
    CHECK_U("nlisten", c->nlisten, 2);
    CHECK_S("listen[0]", c->listen[0], "inet:127.0.0.1:8890");
    CHECK_S("listen[1]", c->listen[1], "unix:/run/miltergw/milter.sock");
    CHECK_U("unix_mode", c->unix_mode, 0600);
    CHECK_S("unix_owner", c->unix_owner, "postfix");
    CHECK_S("unix_group", c->unix_group, "mail");
    CHECK_S("http_listen", c->http_listen, "[::1]:9090");
    CHECK_U("http_ready", c->http_ready, MGW_CONFIG_READY_ALL);
    CHECK_U("log_level", c->log_level, MGW_LOG_DEBUG);
    CHECK_U("log_format", c->log_format, MGW_LOG_JSON);
    CHECK_U("max_connections", c->server.max_connections, 500);
    CHECK_U("max_frame", c->server.max_frame, 2000000);
    CHECK_U("idle_timeout_ms", c->server.idle_timeout_ms, 120000);
    CHECK_U("drain_timeout_ms", c->drain_timeout_ms, 45000);
    CHECK_U("workers", c->workers, 3);
    CHECK_U("nfilters", c->nfilters, 2);

    f = &c->filters[0];
    CHECK_S("filters[0].name", f->name, "spam");
    CHECK_S("filters[0].target", f->target, "dns:///spamfilter:50051");
    CHECK_U("filters[0].on_error", f->on_error, MGW_ON_ERROR_ACCEPT);
    CHECK_U("filters[0].shadow", f->shadow, 1);
    CHECK_U("filters[0].content_strict", f->content_strict, 1);
    CHECK_U("filters[0].timeout_ms", f->timeout_ms, 250);
    CHECK_U("filters[0].eom_timeout_ms", f->eom_timeout_ms, 90000);
    CHECK_U("filters[0].max_queue", f->max_queue, 3u << 20);
    CHECK_U("filters[0].max_message", f->max_message, 16u << 20);
    CHECK_U("filters[0].load_balancing", f->load_balancing, MGW_LB_ROUND_ROBIN);
    CHECK_U("filters[0].keepalive_time_ms", f->keepalive_time_ms, 60000);
    CHECK_U("filters[0].keepalive_timeout_ms", f->keepalive_timeout_ms, 5000);
    CHECK_U("filters[0].tls", f->tls, 1);
    CHECK_S("filters[0].tls_ca", f->tls_ca, "/p/ca.pem");
    CHECK_S("filters[0].tls_cert", f->tls_cert, "/p/client.pem");
    CHECK_S("filters[0].tls_key", f->tls_key, "/p/client.key");
    CHECK_S("filters[0].tls_server_name", f->tls_server_name, "filter.example");
    CHECK_U("filters[0].has_decl", f->has_decl, 1);
    CHECK_U("filters[0].decl.events", f->decl.events,
            MGW_POLICY_EV_CONNECT | MGW_POLICY_EV_MAIL | MGW_POLICY_EV_RCPT | MGW_POLICY_EV_HEADER |
                MGW_POLICY_EV_EOM);
    CHECK_U("filters[0].decl.observe_only", f->decl.observe_only, MGW_POLICY_EV_HEADER);
    CHECK_U("filters[0].decl.actions", f->decl.actions,
            MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGHDRS | MGW_SMFIF_CHGBODY | MGW_SMFIF_ADDRCPT |
                MGW_SMFIF_ADDRCPT_PAR | MGW_SMFIF_DELRCPT | MGW_SMFIF_QUARANTINE |
                MGW_SMFIF_CHGFROM);
    CHECK_S("filters[0].decl.macros[CONNECT]", f->decl.macros[MGW_STAGE_CONNECT],
            "j {daemon_name}");
    CHECK_S("filters[0].decl.macros[HELO]", f->decl.macros[MGW_STAGE_HELO], "{tls_version}");
    CHECK_S("filters[0].decl.macros[ENVFROM]", f->decl.macros[MGW_STAGE_ENVFROM], "{mail_addr} i");
    CHECK_S("filters[0].decl.macros[ENVRCPT]", f->decl.macros[MGW_STAGE_ENVRCPT], "{rcpt_addr}");
    CHECK_S("filters[0].decl.macros[DATA]", f->decl.macros[MGW_STAGE_DATA], "i");
    CHECK_S("filters[0].decl.macros[EOH]", f->decl.macros[MGW_STAGE_EOH], "{x}");
    CHECK_S("filters[0].decl.macros[EOM]", f->decl.macros[MGW_STAGE_EOM], "{msg_id}");
    CHECK_U("filters[0].decl.rejected_recipients", f->decl.rejected_recipients, 1);
    CHECK_U("filters[0].decl.header_leading_space", f->decl.header_leading_space, 1);
    CHECK_U("filters[0].decl.shadow follows mode", f->decl.shadow, 1);

    f = &c->filters[1];
    CHECK_S("filters[1].name", f->name, "av");
    CHECK_S("filters[1].target", f->target, "unix:/run/av.sock");
    CHECK_U("filters[1].on_error", f->on_error, MGW_ON_ERROR_REJECT);
    CHECK_U("filters[1].tls (empty section: TLS, system roots)", f->tls, 1);
    CHECK_S("filters[1].tls_ca", f->tls_ca, NULL);
    CHECK_U("filters[1].has_decl", f->has_decl, 0);
    end_table();
    assert_null(mgw_config_free(c));
}

/* ---- Defaults ---- */

static void check_top_defaults(const char *name, const struct mgw_config *c)
{
    struct {
        const char *what;
        unsigned long long got, want;
    } rows[] = {
        {"unix_mode", c->unix_mode, MGW_DEFAULT_UNIX_MODE},
        {"http_ready", c->http_ready, MGW_CONFIG_READY_ANY},
        {"log_level", c->log_level, MGW_LOG_INFO},
        {"log_format", c->log_format, MGW_LOG_LOGFMT},
        {"max_connections", c->server.max_connections, MGW_DEFAULT_MAX_CONNECTIONS},
        {"max_frame", c->server.max_frame, MGW_MILTER_DEFAULT_MAX_FRAME},
        {"idle_timeout_ms", c->server.idle_timeout_ms, MGW_DEFAULT_IDLE_TIMEOUT_MS},
        {"drain_timeout_ms", c->drain_timeout_ms, MGW_CONFIG_DEFAULT_DRAIN_TIMEOUT_MS},
        {"workers", c->workers, 0},
        {"refs", c->refs, 1},
    };

    for (size_t i = 0; i < NELEM(rows); i++)
        if (rows[i].got != rows[i].want)
            case_failed(name, "%s: got %llu, want %llu", rows[i].what, rows[i].got, rows[i].want);
    if (c->unix_owner || c->unix_group || c->http_listen)
        case_failed(name, "owner/group/http: got \"%s\"/\"%s\"/\"%s\", want all NULL",
                    str_or_null(c->unix_owner), str_or_null(c->unix_group),
                    str_or_null(c->http_listen));
}

static void test_defaults_fill_what_the_file_leaves_out(void **state)
{
    char path[128], err[512];
    struct mgw_config *c;
    const struct mgw_filter_conf *f;
    int rc;

    (void)state;
    c = mgw_config_new_default();
    check_top_defaults("a new default config has every default", c);
    if (c->nlisten != 0 || c->nfilters != 0)
        case_failed("a new default config has no listener and no filter",
                    "nlisten/nfilters: got %zu/%zu, want 0/0", c->nlisten, c->nfilters);
    mgw_config_free(c);

    c = load_text("listen: [\"inet:8890\"]\nfilters:\n  - { name: f, target: \"h:1\" }\n", path,
                  sizeof path, &rc, err, sizeof err);
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    check_top_defaults("a file with listen and one filter has every other default", c);
    f = &c->filters[0];
    struct {
        const char *what;
        unsigned long long got, want;
    } rows[] = {
        {"on_error", f->on_error, MGW_ON_ERROR_TEMPFAIL},
        {"shadow", f->shadow, 0},
        {"content_strict", f->content_strict, 0},
        {"timeout_ms", f->timeout_ms, MGW_FILTER_DEFAULT_TIMEOUT_MS},
        {"eom_timeout_ms", f->eom_timeout_ms, MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS},
        {"max_queue", f->max_queue, MGW_FILTER_DEFAULT_MAX_QUEUE},
        {"max_message", f->max_message, MGW_FILTER_DEFAULT_MAX_MESSAGE},
        {"load_balancing", f->load_balancing, MGW_LB_PICK_FIRST},
        {"keepalive_time_ms", f->keepalive_time_ms, MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS},
        {"keepalive_timeout_ms", f->keepalive_timeout_ms, MGW_FILTER_DEFAULT_KEEPALIVE_TIMEOUT_MS},
        {"tls", f->tls, 0},
        {"has_decl", f->has_decl, 0},
    };
    for (size_t i = 0; i < NELEM(rows); i++)
        if (rows[i].got != rows[i].want)
            case_failed("a filter with only name and target has every default",
                        "%s: got %llu, want %llu", rows[i].what, rows[i].got, rows[i].want);
    if (f->tls_ca || f->tls_cert || f->tls_key || f->tls_server_name)
        case_failed("a filter with only name and target has no TLS file",
                    "tls_*: got a string, want NULL");
    mgw_config_free(c);

    c = load_text("filters:\n  - name: f\n    target: \"h:1\"\n    declare: { actions: [] }\n",
                  path, sizeof path, &rc, err, sizeof err);
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    f = &c->filters[0];
    if (!f->has_decl || f->decl.events != MGW_POLICY_EV_ALL || f->decl.observe_only != 0 ||
        f->decl.actions != 0 || f->decl.macros[MGW_STAGE_CONNECT] != NULL)
        case_failed("a declare without events means every event, nothing else",
                    "has_decl/events/observe_only/actions: got %d/0x%x/0x%x/0x%x, "
                    "want 1/0x%x/0/0",
                    f->has_decl, f->decl.events, f->decl.observe_only, f->decl.actions,
                    MGW_POLICY_EV_ALL);
    mgw_config_free(c);

    c = load_text("limits: { idle_timeout: 0 }\ndrain_timeout: 0s\nlisten: []\nfilters: []\n", path,
                  sizeof path, &rc, err, sizeof err);
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    if (c->server.idle_timeout_ms != 0 || c->drain_timeout_ms != 0)
        case_failed("zero durations mean none where allowed", "idle/drain: got %u/%u, want 0/0",
                    c->server.idle_timeout_ms, c->drain_timeout_ms);
    if (c->nlisten != 0 || c->nfilters != 0)
        case_failed("empty lists are allowed in a file", "got %zu/%zu, want 0/0", c->nlisten,
                    c->nfilters);
    mgw_config_free(c);

    c = load_text("{}\n", path, sizeof path, &rc, err, sizeof err);
    if (rc != 0)
        fail_msg("an empty mapping loads: got %d \"%s\", want 0", rc, err);
    check_top_defaults("an empty mapping has every default", c);
    mgw_config_free(c);
    end_table();
}

/* ---- Refusals: FILE:LINE: KEY: problem ---- */

#define L65                                                                                        \
    "[ a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, "     \
    "a20, a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31, a32, a33, a34, a35, a36, a37, "   \
    "a38, a39, a40, a41, a42, a43, a44, a45, a46, a47, a48, a49, a50, a51, a52, a53, a54, a55, "   \
    "a56, a57, a58, a59, a60, a61, a62, a63, a64, a65 ]"

static const struct {
    const char *name;
    const char *yaml;
    unsigned line;   /* 0: no line in the message */
    const char *msg; /* after "FILE:LINE: " */
} bad[] = {
    /* unknown keys */
    {"an unknown top-level key is refused at its line", "listen: []\n\nlistne: [a]\n", 3,
     "unknown key \"listne\" (known here: listen, unix_socket, http, log, limits, "
     "drain_timeout, workers, filters)"},
    {"an unknown key in a section is refused at its line",
     "limits:\n  max_frame: 70000\n  max_frames: 70000\n", 3,
     "limits: unknown key \"max_frames\" (known here: max_connections, max_frame, "
     "idle_timeout, phase_memory)"},
    {"an unknown key in a filter is refused at its line",
     "filters:\n  - name: a\n    target: b\n  - name: c\n    target: d\n    timout: 1s\n", 6,
     "filters[1]: unknown key \"timout\" (known here: name, target, kind, phase, on_error, mode, content, "
     "timeout, eom_timeout, max_queue, max_message, load_balancing, keepalive, tls, declare)"},
    {"a size that is no size is refused",
     "filters:\n  - name: a\n    target: b\n    max_queue: 4MB\n", 4,
     "filters[0].max_queue: \"4MB\" is not a size (bytes, or with KiB, MiB or GiB, such as "
     "4MiB)"},
    {"a max_queue that cannot hold one full milter frame is refused",
     "filters:\n  - name: a\n    target: b\n    max_queue: 1MiB\n", 4,
     "filters[0].max_queue: 1MiB cannot hold the event of one full milter frame "
     "(limits.max_frame 1048581): give at least 1026KiB, or lower limits.max_frame"},
    {"the default max_queue is refused where a larger frame cap needs more",
     "limits: { max_frame: 8000000 }\nfilters:\n  - name: a\n    target: b\n", 3,
     "filters[0].max_queue: 4MiB cannot hold the event of one full milter frame "
     "(limits.max_frame 8000000): give at least 7814KiB, or lower limits.max_frame"},
    {"a size out of range is refused, in the units it reads best in",
     "filters:\n  - name: a\n    target: b\n    max_message: 2GiB\n", 4,
     "filters[0].max_message: 2GiB is out of range (64KiB to 1GiB)"},
    {"an unknown macro stage is refused",
     "filters:\n  - name: a\n    target: b\n    declare:\n      macros:\n        quit: [j]\n", 6,
     "filters[0].declare.macros: unknown key \"quit\" (known here: connect, helo, mail, rcpt, "
     "data, eoh, eom)"},
    {"keys are case sensitive", "Listen: []\n", 1,
     "unknown key \"Listen\" (known here: listen, unix_socket, http, log, limits, "
     "drain_timeout, workers, filters)"},
    {"a key given twice is refused at the second one",
     "log: { level: info }\nlimits: {}\nlog: { level: debug }\n", 3,
     "log: duplicate key (first on line 1)"},
    {"a key given twice in a filter is refused",
     "filters:\n  - name: a\n    target: b\n    target: c\n", 4,
     "filters[0].target: duplicate key (first on line 3)"},
    /* wrong shapes */
    {"a string where a list belongs is refused", "listen: \"inet:127.0.0.1:8890\"\n", 1,
     "listen: want a list, got \"inet:127.0.0.1:8890\""},
    {"a list where a mapping belongs is refused", "log: {}\nhttp: [ \"127.0.0.1:9090\" ]\n", 2,
     "http: want a mapping (key: value), got a list"},
    {"a mapping where a single value belongs is refused", "drain_timeout: { s: 1 }\n", 1,
     "drain_timeout: want a single value, got a mapping"},
    {"a list where a single value belongs is refused",
     "filters:\n  - name: a\n    target: [b, c]\n", 3,
     "filters[0].target: want a single value, got a list"},
    {"a mapping where a list entry's value belongs is refused", "listen:\n  - {a: b}\n", 2,
     "listen[0]: want a single value, got a mapping"},
    {"a section with nothing after its key is refused", "log:\nlimits: {}\n", 1,
     "log: want a mapping (key: value), got an empty value"},
    {"filters given as a mapping is refused", "filters:\n  spam: { target: b }\n", 2,
     "filters: want a list, got a mapping"},
    {"a key that is a list is refused", "log:\n  ? [a]\n  : b\n", 2,
     "log: a key must be a single word, not a list"},
    {"a top level that is a list is refused", "- listen\n", 1,
     "want a mapping (key: value), got a list"},
    {"a top level that is text is refused", "\n\nlisten\n", 3,
     "want a mapping (key: value), got \"listen\""},
    /* numbers, durations, enums, modes */
    {"text where a number belongs is refused", "limits:\n  max_connections: many\n", 2,
     "limits.max_connections: \"many\" is not a number"},
    {"a negative number is refused", "limits: { max_connections: -1 }\n", 1,
     "limits.max_connections: \"-1\" is not a number"},
    {"more worker loops than 256 are refused", "workers: 257\n", 1,
     "workers: 257 is out of range (0 to 256)"},
    {"a frame cap below 64 KiB is refused", "limits: { max_frame: 65535 }\n", 1,
     "limits.max_frame: 65535 is out of range (65536 to 2147483647)"},
    {"a number too large for 32 bits is refused", "limits: { max_frame: 99999999999999999999 }\n",
     1, "limits.max_frame: \"99999999999999999999\" is out of range (65536 to 2147483647)"},
    {"a bad duration is refused naming the filter's index",
     "listen: [\"inet:1\"]\nfilters:\n  - name: a\n    target: b\n  - name: c\n    target: d\n"
     "    timeout: 10x\n",
     7, "filters[1].timeout: \"10x\" is not a duration (such as 250ms, 10s or 2m; at most a day)"},
    {"a bad value on the line after its key is refused at the value's line",
     "filters:\n  - name: a\n    target: b\n    timeout:\n\n      10x\n", 6,
     "filters[0].timeout: \"10x\" is not a duration (such as 250ms, 10s or 2m; at most a day)"},
    {"a bad value in a flow mapping over several lines is refused at its line",
     "limits: { max_connections: 5,\n          max_frame: 12,\n          idle_timeout: 1s }\n", 2,
     "limits.max_frame: 12 is out of range (65536 to 2147483647)"},
    {"a duration longer than a day is refused", "limits:\n  idle_timeout: 86401s\n", 2,
     "limits.idle_timeout: \"86401s\" is not a duration (such as 250ms, 10s or 2m; at most a "
     "day; 0 for none)"},
    {"a zero filter timeout is refused", "filters:\n  - name: a\n    target: b\n    timeout: 0\n",
     4, "filters[0].timeout: 0s is out of range (1ms to 1440m)"},
    {"a keepalive below 10 s is refused",
     "filters:\n  - name: a\n    target: b\n    keepalive: { time: 5s }\n", 4,
     "filters[0].keepalive.time: 5s is out of range (10s to 1440m)"},
    {"a drain timeout over an hour is refused", "drain_timeout: 61m\n", 1,
     "drain_timeout: 61m is out of range (0s to 60m)"},
    {"a bad on_error is refused with the choices",
     "filters:\n  - name: a\n    target: b\n    on_error: maybe\n", 4,
     "filters[0].on_error: \"maybe\" is not one of tempfail, accept, reject"},
    {"a bad mode is refused", "filters:\n  - name: a\n    target: b\n    mode: loud\n", 4,
     "filters[0].mode: \"loud\" is not one of normal, shadow"},
    {"a bad content mode is refused",
     "filters:\n  - name: a\n    target: b\n    content: lazy\n", 4,
     "filters[0].content: \"lazy\" is not one of pipelined, strict"},
    {"a bad filter kind is refused",
     "filters:\n  - name: a\n    target: b\n    kind: smtp\n", 4,
     "filters[0].kind: \"smtp\" is not one of grpc, milter"},
    {"a milter's target must be a milter socket",
     "filters:\n  - name: a\n    target: 127.0.0.1:8891\n    kind: milter\n", 3,
     "filters[0].target: bad listen spec \"127.0.0.1:8891\": expected inet:, inet6:, unix: or local:"},
    {"a milter socket needs a host to connect to",
     "filters:\n  - name: a\n    target: inet:8891\n    kind: milter\n", 3,
     "filters[0].target: milter socket \"inet:8891\" names no host (inet:HOST:PORT)"},
    {"load balancing is a gRPC setting, not a milter's",
     "filters:\n  - name: a\n    target: inet:127.0.0.1:1\n    kind: milter\n"
     "    load_balancing: round_robin\n", 4,
     "filters[0].kind: milter: tls and load_balancing are gRPC settings"},
    {"a phase past 99 is refused",
     "filters:\n  - name: a\n    target: b\n    phase: 100\n", 4,
     "filters[0].phase: 100 is out of range (0 to 99)"},
    {"a bad load balancing policy is refused",
     "filters:\n  - name: a\n    target: b\n    load_balancing: random\n", 4,
     "filters[0].load_balancing: \"random\" is not one of pick_first, round_robin"},
    {"a bad log level is refused", "log:\n  format: json\n  level: verbose\n", 3,
     "log.level: \"verbose\" is not one of error, warn, info, debug"},
    {"a bad log format is refused", "log: { format: xml }\n", 1,
     "log.format: \"xml\" is not one of logfmt, json"},
    {"a bad readiness rule is refused", "http: { listen: \"127.0.0.1:9090\", ready: some }\n", 1,
     "http.ready: \"some\" is not one of any, all, none"},
    {"a mode that is not octal is refused", "unix_socket: { mode: \"0999\" }\n", 1,
     "unix_socket.mode: \"0999\" is not an octal mode such as 0660"},
    {"a mode beyond 0777 is refused", "unix_socket: { mode: \"1777\" }\n", 1,
     "unix_socket.mode: 01777 is out of range (0000 to 0777)"},
    {"a non-boolean flag is refused",
     "filters:\n  - name: a\n    target: b\n    declare: { rejected_recipients: yes }\n", 4,
     "filters[0].declare.rejected_recipients: \"yes\" is not one of false, true"},
    /* filters */
    {"a filter without a target is refused at the filter",
     "filters:\n  - name: a\n    target: b\n\n  - name: c\n    mode: shadow\n", 5,
     "filters[1].target: required key is missing"},
    {"a filter without a name is refused at the filter",
     "filters:\n  - name: a\n    target: b\n  - target: c\n    mode: shadow\n", 4,
     "filters[1].name: required key is missing"},
    {"a duplicate filter name is refused at the second name",
     "filters:\n  - name: spam\n    target: b\n  - target: c\n    name: spam\n", 5,
     "filters[1].name: \"spam\" is already the name of filters[0]"},
    {"a filter name with a space is refused", "filters:\n  - { name: \"my filter\", target: b }\n",
     2, "filters[0].name: \"my filter\" is not a name of letters, digits, '-', '_' and '.'"},
    {"a filter name of 64 characters is refused",
     "filters:\n  - target: b\n    name: "
     "abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefghi\n",
     3, "filters[0].name: is 64 characters long, more than 63"},
    {"an empty target is refused", "filters:\n  - name: a\n    target: \"\"\n", 3,
     "filters[0].target: is empty"},
    {"a target with a control character is refused",
     "filters:\n  - name: a\n    target: \"b\\tc\"\n", 3,
     "filters[0].target: \"b\\x09c\" holds a control character"},
    {"a TLS certificate without its key is refused",
     "filters:\n  - name: a\n    target: b\n    tls:\n      ca: /ca.pem\n      cert: /c.pem\n", 6,
     "filters[0].tls.cert: a client certificate needs its key (tls.key)"},
    {"a TLS key without its certificate is refused",
     "filters:\n  - name: a\n    target: b\n    tls:\n      key: /c.key\n", 5,
     "filters[0].tls.key: a private key needs its certificate (tls.cert)"},
    {"an unknown event is refused at its list entry",
     "filters:\n  - name: a\n    target: b\n    declare:\n      events:\n        - connect\n"
     "        - quit\n",
     7,
     "filters[0].declare.events[1]: \"quit\" is not an event (connect, helo, mail, rcpt, data, "
     "header, eoh, body, eom, unknown)"},
    {"an unknown action is refused",
     "filters:\n  - name: a\n    target: b\n    declare: { actions: [add_header, delete_header] "
     "}\n",
     4,
     "filters[0].declare.actions[1]: \"delete_header\" is not an action (add_header, "
     "change_header, replace_body, add_rcpt, add_rcpt_with_args, delete_rcpt, quarantine, "
     "change_from)"},
    {"observe-only events must be declared events",
     "filters:\n  - name: a\n    target: b\n    declare:\n      events: [mail]\n"
     "      observe_only: [rcpt]\n",
     6, "filters[0].declare.observe_only[0]: \"rcpt\" is not one of the declared events"},
    {"an empty event list is refused",
     "filters:\n  - name: a\n    target: b\n    declare:\n      events: []\n", 5,
     "filters[0].declare.events: is an empty list (leave it out for every event)"},
    {"a bad macro name is refused",
     "filters:\n  - name: a\n    target: b\n    declare:\n      macros:\n        mail: "
     "[\"{mail_addr}\", \"mail addr\"]\n",
     6,
     "filters[0].declare.macros.mail[1]: \"mail addr\" is not a macro name such as j or "
     "{daemon_name}"},
    {"more than 64 filters are refused", NULL, 0, NULL}, /* built in the test */
    /* listeners, http, unix socket */
    {"a bad listen spec is refused at its entry",
     "listen:\n  - \"inet:127.0.0.1:8890\"\n  - \"tcp:127.0.0.1:8891\"\n", 3,
     "listen[1]: bad listen spec \"tcp:127.0.0.1:8891\": expected inet:, inet6:, unix: or "
     "local:"},
    {"a listen spec with a bad port is refused", "listen: [ \"inet:127.0.0.1:99999\" ]\n", 1,
     "listen[0]: bad listen spec \"inet:127.0.0.1:99999\": bad port"},
    {"the same listener twice is refused", "listen:\n  - inet:8890\n  - unix:/s\n  - inet:8890\n",
     4, "listen[2]: \"inet:8890\" is also listen[0]"},
    {"more than 64 listeners are refused", "listen: " L65 "\n", 1, "listen: more than 64 entries"},
    {"an http section without listen is refused", "http:\n  ready: all\n", 2,
     "http.listen: required key is missing"},
    {"a bad http address is refused", "http: { listen: \"localhost\" }\n", 1,
     "http.listen: \"localhost\" is not HOST:PORT or [ADDR]:PORT"},
    /* Milter listener forms that start-up's HTTP parser never took: refused here too. */
    {"a bare http port is refused (start-up would refuse it)", "http: { listen: \"9090\" }\n",
     1, "http.listen: \"9090\" is not HOST:PORT or [ADDR]:PORT"},
    {"the Sendmail PORT@HOST form is no http address",
     "http: { listen: \"9090@127.0.0.1\" }\n", 1,
     "http.listen: \"9090@127.0.0.1\" is not HOST:PORT or [ADDR]:PORT"},
    {"an http address without a host is refused", "http: { listen: \":9090\" }\n", 1,
     "http.listen: \":9090\" is not HOST:PORT or [ADDR]:PORT"},
    {"a unix socket owner with a space is refused", "unix_socket: { owner: \"post fix\" }\n", 1,
     "unix_socket.owner: \"post fix\" is not a user or group name"},
    /* YAML itself */
    {"a YAML syntax error is refused at its line",
     "log: { level: info }\nlisten: [ \"inet:8890\"\nlimits: {}\n", 3,
     "listen: YAML syntax error: did not find expected ',' or ']' (while parsing a flow "
     "sequence on line 2)"},
    {"a tab in indentation is refused at its line", "log:\n  level: info\n\tformat: json\n", 3,
     "log.level: YAML syntax error: found a tab character that violates indentation (while "
     "scanning a plain scalar on line 2)"},
    {"a bad indentation is refused at its line", "log:\n  level: info\n format: json\n", 3,
     "YAML syntax error: did not find expected key (while parsing a block mapping on line 1)"},
    {"an unterminated quote is refused", "log:\n  level: \"info\n", 3,
     "log.level: YAML syntax error: found unexpected end of stream (while scanning a quoted "
     "scalar on line 2)"},
    {"invalid UTF-8 is refused at its line", "log: {}\nlimits: { max_frame: \"\xff\" }\n", 2,
     "YAML syntax error: invalid leading UTF-8 octet"},
    {"a YAML alias is refused", "log:\n  level: &lv info\n  format: *lv\n", 3,
     "log.format: YAML aliases are not supported (alias \"lv\")"},
    {"a second document is refused", "log: {}\n---\nlog: {}\n", 2,
     "only one YAML document is allowed"},
    {"an empty file is refused", "", 1, "the file is empty (no settings)"},
    {"a file of comments only is refused", "# nothing\n\n# here\n", 1,
     "the file is empty (no settings)"},
    {"an empty document is refused", "---\n", 1, "the file is empty (no settings)"},
    {"a value holding a NUL is refused", "log: { level: \"in\\0fo\" }\n", 1,
     "log.level: a value may not hold a NUL character"},
};

/* "FILE:LINE: ..." -> LINE, or 0 when the message has no line after FILE. */
static unsigned line_in(const char *err, const char *file)
{
    size_t n = strlen(file);

    if (strncmp(err, file, n) != 0 || err[n] != ':')
        return 0;
    return (unsigned)strtoul(err + n + 1, NULL, 10);
}

static void test_refusals_name_file_line_and_key(void **state)
{
    char path[128], err[1024], want[1200], big[8192];
    struct mgw_config *c;
    int rc;

    (void)state;
    for (size_t i = 0; i < NELEM(bad); i++) {
        const char *yaml = bad[i].yaml;
        unsigned line = bad[i].line;
        const char *msg = bad[i].msg;

        if (yaml == NULL) { /* 65 filters, each on its own line after "filters:" */
            size_t o = (size_t)snprintf(big, sizeof big, "filters:\n");

            for (int k = 0; k < 65; k++)
                o += (size_t)snprintf(big + o, sizeof big - o, "  - { name: f%d, target: t }\n", k);
            yaml = big;
            line = 66;
            msg = "filters: more than 64 entries";
        }
        memset(err, 'x', sizeof err);
        c = NULL;
        write_fixture(yaml, strlen(yaml), path, sizeof path);
        rc = mgw_config_load(path, &c, err, sizeof err);
        if (rc != MGW_EINVAL || c != NULL) {
            case_failed(bad[i].name, "rc: got %d (%s), want %d; config: got %p, want NULL", rc,
                        rc == 0 ? "loaded" : err, MGW_EINVAL, (void *)c);
            mgw_config_free(c);
            continue;
        }
        if (line_in(err, path) != line)
            case_failed(bad[i].name, "line: got %u, want %u (\"%s\")", line_in(err, path), line,
                        err);
        if (line)
            snprintf(want, sizeof want, "%s:%u: %s", path, line, msg);
        else
            snprintf(want, sizeof want, "%s: %s", path, msg);
        if (strcmp(err, want) != 0)
            case_failed(bad[i].name, "message:\n  got  \"%s\"\n  want \"%s\"", err, want);
    }
    end_table();
}

/* A buffer load names the given file; a truncated message stays a C string. */
static void test_buffer_loads_use_the_given_name(void **state)
{
    static const char text[] = "log:\n  level: loud\n";
    char err[512], tiny[12];
    struct mgw_config *c = (struct mgw_config *)1;
    int rc;

    (void)state;
    rc = mgw_config_load_data("inline.yaml", text, strlen(text), &c, err, sizeof err);
    if (rc != MGW_EINVAL || c != NULL)
        case_failed("a buffer load refuses like a file", "rc: got %d, want %d", rc, MGW_EINVAL);
    if (strcmp(err, "inline.yaml:2: log.level: \"loud\" is not one of error, warn, info, debug"))
        case_failed("a buffer load names the given file", "got \"%s\"", err);
    rc = mgw_config_load_data("inline.yaml", text, strlen(text), &c, tiny, sizeof tiny);
    if (rc != MGW_EINVAL || strlen(tiny) != sizeof tiny - 1)
        case_failed("a message longer than the buffer is cut", "got %d \"%s\"", rc, tiny);
    rc = mgw_config_load_data("inline.yaml", text, strlen(text), &c, NULL, 0);
    if (rc != MGW_EINVAL)
        case_failed("no error buffer is fine", "rc: got %d, want %d", rc, MGW_EINVAL);
    end_table();
}

static void test_unreadable_files_are_refused_without_a_line(void **state)
{
    char path[160], err[512], want[300];
    struct mgw_config *c = (struct mgw_config *)1;
    char *big;
    int rc;

    (void)state;
    snprintf(path, sizeof path, "%s/does-not-exist.yaml", tmpdir);
    rc = mgw_config_load(path, &c, err, sizeof err);
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
    if (rc != MGW_EIO || c != NULL || strcmp(err, want) != 0)
        case_failed("a missing file is refused", "got %d \"%s\", want %d \"%s\"", rc, err, MGW_EIO,
                    want);

    rc = mgw_config_load(tmpdir, &c, err, sizeof err);
    snprintf(want, sizeof want, "%s: cannot read: Is a directory", tmpdir);
    if (rc != MGW_EIO || c != NULL || strcmp(err, want) != 0)
        case_failed("a directory is refused", "got %d \"%s\", want %d \"%s\"", rc, err, MGW_EIO,
                    want);

    big = malloc(MGW_CONFIG_MAX_FILE + 1);
    assert_non_null(big);
    memset(big, '#', MGW_CONFIG_MAX_FILE + 1);
    write_fixture(big, MGW_CONFIG_MAX_FILE + 1, path, sizeof path);
    free(big);
    rc = mgw_config_load(path, &c, err, sizeof err);
    snprintf(want, sizeof want, "%s: larger than %u bytes", path, MGW_CONFIG_MAX_FILE);
    if (rc != MGW_EINVAL || c != NULL || strcmp(err, want) != 0)
        case_failed("a file over 1 MiB is refused", "got %d \"%s\", want %d \"%s\"", rc, err,
                    MGW_EINVAL, want);
    end_table();
}

/* ---- Command line: set, set_listen, set_filters, validate ---- */

static void test_command_line_overrides_use_the_same_rules(void **state)
{
    static const struct {
        const char *name;
        const char *key, *value;
        int want_rc;
        const char *want_err;
    } sets[] = {
        {"a frame cap is set by its file key", "limits.max_frame", "70000", 0, ""},
        {"an idle timeout in bare seconds is set", "limits.idle_timeout", "60", 0, ""},
        {"an http listener is set", "http.listen", "127.0.0.1:9090", 0, ""},
        {"a log level is set", "log.level", "warn", 0, ""},
        {"a unix mode is set", "unix_socket.mode", "0600", 0, ""},
        {"a bad frame cap is refused with the key", "limits.max_frame", "1k", MGW_EINVAL,
         "limits.max_frame: \"1k\" is not a number"},
        {"an out-of-range value is refused", "limits.max_connections", "1000001", MGW_EINVAL,
         "limits.max_connections: 1000001 is out of range (0 to 1000000)"},
        {"an unknown key is refused", "limits.frame", "1", MGW_EINVAL,
         "limits.frame: no such setting"},
        {"filter keys are not top-level settings", "timeout", "1s", MGW_EINVAL,
         "timeout: no such setting"},
    };
    const char *specs[] = {"inet:127.0.0.1:8890", "unix:/run/m.sock"};
    struct mgw_filter_conf fl[2];
    struct mgw_config *c = mgw_config_new_default();
    char err[512];
    int rc;

    (void)state;
    for (size_t i = 0; i < NELEM(sets); i++) {
        err[0] = '\0';
        rc = mgw_config_set(c, sets[i].key, sets[i].value, err, sizeof err);
        if (rc != sets[i].want_rc || strcmp(err, sets[i].want_err) != 0)
            case_failed(sets[i].name, "got %d \"%s\", want %d \"%s\"", rc, err, sets[i].want_rc,
                        sets[i].want_err);
    }
    if (c->server.max_frame != 70000 || c->server.idle_timeout_ms != 60000 ||
        c->log_level != MGW_LOG_WARN || c->unix_mode != 0600 || c->http_listen == NULL ||
        strcmp(c->http_listen, "127.0.0.1:9090") != 0)
        case_failed("set values land in the config", "frame/idle/level/mode: got %u/%u/%d/%o",
                    c->server.max_frame, c->server.idle_timeout_ms, c->log_level, c->unix_mode);

    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "listen: no milter listener (give listen in the file or --listen)") != 0)
        case_failed("a config without a listener does not validate", "got %d \"%s\"", rc, err);

    mgw_config_set_listen(c, specs, 2);
    mgw_config_set_listen(c, specs, 1); /* replaces, does not append */
    assert_int_equal(mgw_filter_conf_parse("spam=h:1,timeout=2s", &fl[0], err, sizeof err), 0);
    assert_int_equal(mgw_filter_conf_parse("av=h:2", &fl[1], err, sizeof err), 0);
    mgw_config_set_filters(c, fl, 2);
    mgw_filter_conf_clear(&fl[0]); /* the config holds its own copies */
    mgw_filter_conf_clear(&fl[1]);
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != 0)
        case_failed("flags alone make a valid config", "got %d \"%s\", want 0", rc, err);
    if (c->nlisten != 1 || c->nfilters != 2 || strcmp(c->filters[0].target, "h:1") != 0 ||
        c->filters[0].timeout_ms != 2000 ||
        c->filters[1].keepalive_time_ms != MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS)
        case_failed("listeners and filters are replaced by copies",
                    "nlisten/nfilters: got %zu/%zu, want 1/2", c->nlisten, c->nfilters);

    /* Direct assignments are checked by validate with the same rules as the file. */
    c->server.max_frame = 100;
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "limits.max_frame: 100 is out of range (65536 to 2147483647)") != 0)
        case_failed("a frame cap assigned directly is checked", "got %d \"%s\"", rc, err);
    c->server.max_frame = 70000;

    strcpy(c->filters[1].name, "spam");
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "filters[1].name: \"spam\" is already the name of filters[0]") != 0)
        case_failed("duplicate --filter names do not validate", "got %d \"%s\"", rc, err);
    strcpy(c->filters[1].name, "av");

    c->filters[1].tls = true;
    c->filters[1].tls_cert = strdup("/c.pem");
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "filters[1].tls.cert: a client certificate needs its key (tls.key)") != 0)
        case_failed("a certificate without key does not validate", "got %d \"%s\"", rc, err);
    c->filters[1].tls = false;
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "filters[1].tls: certificate settings given but TLS is off") != 0)
        case_failed("TLS files without TLS do not validate", "got %d \"%s\"", rc, err);

    mgw_config_set_listen(c, (const char *[]){"bogus"}, 1);
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != MGW_EINVAL ||
        strcmp(err, "listen[0]: bad listen spec \"bogus\": expected inet:, inet6:, unix: or "
                    "local:") != 0)
        case_failed("a bad --listen does not validate", "got %d \"%s\"", rc, err);
    end_table();
    mgw_config_free(c);
}

/* One event per milter frame: max_queue must hold one full frame, whatever sets either. */
static void test_max_queue_holds_one_full_frame(void **state)
{
    static const struct {
        const char *name;
        const char *max_frame, *filter;
        int want_rc;
        const char *want_err;
    } cases[] = {
        {"the defaults fit each other", NULL, "a=h:1", 0, ""},
        {"Postfix's frames fit 65KiB", "65536", "a=h:1,max_queue=65KiB", 0, ""},
        {"the 64KiB minimum is refused even for Postfix's frames (65546-byte events)", "65536",
         "a=h:1,max_queue=64KiB", MGW_EINVAL,
         "filters[0].max_queue: 64KiB cannot hold the event of one full milter frame "
         "(limits.max_frame 65536): give at least 65KiB, or lower limits.max_frame"},
        {"a --filter max_queue below the default frame cap is refused", NULL,
         "a=h:1,max_queue=256KiB", MGW_EINVAL,
         "filters[0].max_queue: 256KiB cannot hold the event of one full milter frame "
         "(limits.max_frame 1048581): give at least 1026KiB, or lower limits.max_frame"},
        {"the default frame cap fits 1026KiB", NULL, "a=h:1,max_queue=1026KiB", 0, ""},
        {"a frame cap beyond what max_queue may be is refused", "1073741824",
         "a=h:1,max_queue=1GiB", MGW_EINVAL,
         "filters[0].max_queue: 1GiB cannot hold the event of one full milter frame "
         "(limits.max_frame 1073741824): give at least 1048577KiB, or lower limits.max_frame"},
    };
    const char *spec = "inet:127.0.0.1:8890";

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_config *c = mgw_config_new_default();
        struct mgw_filter_conf f;
        char err[512] = "";
        int rc;

        mgw_config_set_listen(c, &spec, 1);
        if (cases[i].max_frame != NULL &&
            mgw_config_set(c, "limits.max_frame", cases[i].max_frame, err, sizeof err) != 0)
            case_failed(cases[i].name, "limits.max_frame %s: got \"%s\"", cases[i].max_frame, err);
        if (mgw_filter_conf_parse(cases[i].filter, &f, err, sizeof err) != 0)
            case_failed(cases[i].name, "--filter %s: got \"%s\"", cases[i].filter, err);
        mgw_config_set_filters(c, &f, 1);
        mgw_filter_conf_clear(&f);
        err[0] = '\0';
        rc = mgw_config_validate(c, err, sizeof err);
        if (rc != cases[i].want_rc || strcmp(err, cases[i].want_err) != 0)
            case_failed(cases[i].name, "got %d \"%s\", want %d \"%s\"", rc, err, cases[i].want_rc,
                        cases[i].want_err);
        mgw_config_free(c);
    }
    end_table();
}

/* A file config plus flags, the way main builds it. */
static void test_a_loaded_file_takes_flag_overrides(void **state)
{
    char path[128], err[512];
    struct mgw_config *c;
    int rc;

    (void)state;
    c = load_text("limits: { max_frame: 80000 }\nfilters:\n  - { name: a, target: \"h:1\" }\n",
                  path, sizeof path, &rc, err, sizeof err);
    assert_int_equal(rc, 0);
    if (mgw_config_validate(c, err, sizeof err) != MGW_EINVAL)
        case_failed("a file without listen needs --listen", "validate: got 0, want %d", MGW_EINVAL);
    mgw_config_set_listen(c, (const char *[]){"inet:8890"}, 1);
    assert_int_equal(mgw_config_set(c, "limits.max_frame", "90000", err, sizeof err), 0);
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != 0 || c->server.max_frame != 90000 || c->nfilters != 1)
        case_failed("flags win over the file", "got %d \"%s\" frame %u", rc, err,
                    c->server.max_frame);
    end_table();
    mgw_config_free(c);
}

static void test_references_free_at_zero(void **state)
{
    struct mgw_config *c = mgw_config_new_default();

    (void)state;
    assert_ptr_equal(mgw_config_ref(c), c);
    assert_int_equal(c->refs, 2);
    assert_null(mgw_config_unref(c)); /* still held once */
    assert_int_equal(c->refs, 1);
    assert_null(mgw_config_unref(c)); /* freed; ASan would see a leak otherwise */
    assert_null(mgw_config_unref(NULL));
    assert_null(mgw_config_free(NULL));
}

static void test_names_of_enums(void **state)
{
    (void)state;
    assert_string_equal(mgw_config_ready_name(MGW_CONFIG_READY_ANY), "any");
    assert_string_equal(mgw_config_ready_name(MGW_CONFIG_READY_NONE), "none");
    assert_string_equal(mgw_config_ready_name((enum mgw_config_ready)7), "?");
    assert_string_equal(mgw_load_balancing_name(MGW_LB_ROUND_ROBIN), "round_robin");
    assert_string_equal(mgw_load_balancing_name((enum mgw_load_balancing)9), "?");
}

/* The documented example must stay a valid configuration. */
static void test_the_example_file_loads(void **state)
{
    char err[512];
    struct mgw_config *c;
    int rc;

    (void)state;
    rc = mgw_config_load(MGW_SOURCE_DIR "/miltergw.example.yaml", &c, err, sizeof err);
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    rc = mgw_config_validate(c, err, sizeof err);
    if (rc != 0)
        fail_msg("validate: got %d \"%s\", want 0", rc, err);
    assert_int_equal(c->nfilters, 2);
    assert_true(c->filters[0].has_decl);
    assert_non_null(c->http_listen);
    mgw_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_key_is_parsed),
        cmocka_unit_test(test_defaults_fill_what_the_file_leaves_out),
        cmocka_unit_test(test_refusals_name_file_line_and_key),
        cmocka_unit_test(test_buffer_loads_use_the_given_name),
        cmocka_unit_test(test_unreadable_files_are_refused_without_a_line),
        cmocka_unit_test(test_command_line_overrides_use_the_same_rules),
        cmocka_unit_test(test_max_queue_holds_one_full_frame),
        cmocka_unit_test(test_a_loaded_file_takes_flag_overrides),
        cmocka_unit_test(test_references_free_at_zero),
        cmocka_unit_test(test_names_of_enums),
        cmocka_unit_test(test_the_example_file_loads),
    };

    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
