/*
 * test_filter_conf.c - unit tests of --filter parsing (filter_conf.h): NAME=TARGET, the
 * options after it, durations, and the error text given for each refusal.
 *
 * Every table row is a sentence naming the behaviour it pins down. Failures are collected
 * per table and reported as "<case>: <field>: got X, want Y", so one run shows every broken
 * case. Every parsed configuration is cleared, so a sanitizer build also checks for leaks.
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

#include <cmocka.h>

#include "table.h"

#include "mgw/error.h"
#include "mgw/filter_conf.h"



/* ---- Durations ---- */

static void test_durations_parse_to_milliseconds(void **state)
{
    static const struct {
        const char *name;
        const char *text;
        int want_rc;       /* 0 or -1 */
        unsigned want_ms;  /* when want_rc == 0 */
    } cases[] = {
        {"milliseconds carry the ms unit", "250ms", 0, 250},
        {"seconds carry the s unit", "10s", 0, 10000},
        {"minutes carry the m unit", "2m", 0, 120000},
        {"a bare number means seconds", "3", 0, 3000},
        {"one millisecond is the smallest duration", "1ms", 0, 1},
        {"leading zeros are harmless", "007s", 0, 7000},
        {"a whole day is the largest duration", "86400s", 0, 86400000},
        {"a whole day in minutes is accepted", "1440m", 0, 86400000},
        {"a whole day in milliseconds is accepted", "86400000ms", 0, 86400000},
        {"zero is refused: a filter cannot have no time at all", "0", -1, 0},
        {"zero milliseconds are refused", "0ms", -1, 0},
        {"zero minutes are refused", "0m", -1, 0},
        {"more than a day in seconds is refused", "86401s", -1, 0},
        {"more than a day in minutes is refused", "1441m", -1, 0},
        {"more than a day in milliseconds is refused", "86400001ms", -1, 0},
        {"a number too big for any integer is refused, not wrapped",
         "99999999999999999999999999s", -1, 0},
        {"a number that wraps 32 bits to a small value is refused", "4294967297ms", -1, 0},
        {"an empty string is refused", "", -1, 0},
        {"a unit without a number is refused", "s", -1, 0},
        {"ms without a number is refused", "ms", -1, 0},
        {"hours are not a unit", "1h", -1, 0},
        {"an unknown unit is refused", "10x", -1, 0},
        {"units are lower case", "10S", -1, 0},
        {"a negative number is refused", "-1s", -1, 0},
        {"a sign is refused", "+1s", -1, 0},
        {"a fraction is refused", "1.5s", -1, 0},
        {"a leading space is refused", " 1s", -1, 0},
        {"a trailing space is refused", "1s ", -1, 0},
        {"a space before the unit is refused", "1 s", -1, 0},
        {"two units are refused", "1sm", -1, 0},
        {"a unit then digits is refused", "1s5", -1, 0},
        {"garbage is refused", "soon", -1, 0},
        {"msec is not a unit", "5msec", -1, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        unsigned ms = 4242;
        int rc = mgw_duration_parse(cases[i].text, strlen(cases[i].text), &ms);

        if (rc != cases[i].want_rc) {
            case_failed(cases[i].name, "\"%s\": rc: got %d, want %d", cases[i].text, rc,
                        cases[i].want_rc);
            continue;
        }
        if (rc == 0 && ms != cases[i].want_ms)
            case_failed(cases[i].name, "\"%s\": ms: got %u, want %u", cases[i].text, ms,
                        cases[i].want_ms);
    }
    end_table();
}

/* The text is bounded by len, not by a NUL: a duration may be a slice of a longer option. */
static void test_duration_reads_only_len_bytes(void **state)
{
    static const struct {
        const char *name;
        const char *text;
        size_t len;
        int want_rc;
        unsigned want_ms;
    } cases[] = {
        {"a slice ending before a comma is parsed alone", "10s,mode=shadow", 3, 0, 10000},
        {"a slice ending inside the unit ms reads as minutes", "5ms", 2, 0, 300000},
        {"a slice of the digits alone reads as seconds", "25ms", 2, 0, 25000},
        {"an empty slice is refused", "10s", 0, -1, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        unsigned ms = 0;
        int rc = mgw_duration_parse(cases[i].text, cases[i].len, &ms);

        if (rc != cases[i].want_rc)
            case_failed(cases[i].name, "rc: got %d, want %d", rc, cases[i].want_rc);
        else if (rc == 0 && ms != cases[i].want_ms)
            case_failed(cases[i].name, "ms: got %u, want %u", ms, cases[i].want_ms);
    }
    end_table();
}

/* Sizes: bytes, or binary units; what max_queue and max_message take. */
static void test_sizes_parse_to_bytes(void **state)
{
    static const struct {
        const char *name;
        const char *text;
        int want_rc;
        unsigned want;
    } cases[] = {
        {"a bare number is bytes", "65536", 0, 65536},
        {"B is bytes", "100B", 0, 100},
        {"KiB is 1024", "64KiB", 0, 65536},
        {"MiB is 1024 KiB", "4MiB", 0, 4u << 20},
        {"GiB is 1024 MiB", "1GiB", 0, 1u << 30},
        {"the largest size that fits", "4294967295", 0, 4294967295u},
        {"one more overflows", "4294967296", -1, 0},
        {"4 GiB overflows", "4GiB", -1, 0},
        {"a huge number overflows before the unit", "99999999999999999999KiB", -1, 0},
        {"zero is refused", "0", -1, 0},
        {"zero with a unit is refused", "0MiB", -1, 0},
        {"decimal units are not binary: refused", "4MB", -1, 0},
        {"lower case is refused", "4mib", -1, 0},
        {"a unit alone is refused", "MiB", -1, 0},
        {"a space is refused", "4 MiB", -1, 0},
        {"a fraction is refused", "1.5MiB", -1, 0},
        {"a sign is refused", "-1", -1, 0},
        {"empty is refused", "", -1, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        unsigned b = 4242;
        int rc = mgw_size_parse(cases[i].text, strlen(cases[i].text), &b);

        if (rc != cases[i].want_rc)
            case_failed(cases[i].name, "\"%s\": rc: got %d, want %d", cases[i].text, rc,
                        cases[i].want_rc);
        else if (rc == 0 && b != cases[i].want)
            case_failed(cases[i].name, "\"%s\": got %u, want %u", cases[i].text, b,
                        cases[i].want);
    }
    end_table();
}

/* --filter ...,max_queue=SIZE,max_message=SIZE; defaults when absent; bounds. */
static void test_size_options(void **state)
{
    static const struct {
        const char *name;
        const char *arg;
        int want_rc;
        unsigned want_queue, want_message;
    } cases[] = {
        {"defaults without the options", "a=h:1", 0, MGW_FILTER_DEFAULT_MAX_QUEUE,
         MGW_FILTER_DEFAULT_MAX_MESSAGE},
        {"both set", "a=h:1,max_queue=256KiB,max_message=16MiB", 0, 256u << 10, 16u << 20},
        {"the smallest the option takes (validation also holds max_queue to one frame)",
         "a=h:1,max_queue=64KiB", 0, 64u << 10,
         MGW_FILTER_DEFAULT_MAX_MESSAGE},
        {"the largest allowed", "a=h:1,max_message=1GiB", 0, MGW_FILTER_DEFAULT_MAX_QUEUE,
         1u << 30},
        {"below 64 KiB is refused", "a=h:1,max_queue=65535", MGW_EINVAL, 0, 0},
        {"above 1 GiB is refused", "a=h:1,max_message=1025MiB", MGW_EINVAL, 0, 0},
        {"garbage is refused", "a=h:1,max_queue=big", MGW_EINVAL, 0, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_filter_conf c;
        char err[200];
        int rc = mgw_filter_conf_parse(cases[i].arg, &c, err, sizeof err);

        if (rc != cases[i].want_rc)
            case_failed(cases[i].name, "rc: got %d, want %d", rc, cases[i].want_rc);
        else if (rc == 0 && (c.max_queue != cases[i].want_queue ||
                             c.max_message != cases[i].want_message))
            case_failed(cases[i].name, "got %u/%u, want %u/%u", c.max_queue, c.max_message,
                        cases[i].want_queue, cases[i].want_message);
        else if (rc != 0 && strstr(err, "max_queue and max_message are sizes") == NULL)
            case_failed(cases[i].name, "error text: %s", err);
        mgw_filter_conf_clear(&c);
    }
    end_table();
}

/* --filter ...,kind=grpc|milter,phase=N: a milter's target is a milter socket. */
static void test_kind_and_phase_options(void **state)
{
    static const struct {
        const char *name;
        const char *arg;
        int want_rc;
        enum mgw_filter_kind want_kind;
        unsigned want_phase;
    } cases[] = {
        {"a filter is a gRPC service in phase 0 by default", "a=h:1", 0, MGW_FILTER_GRPC, 0},
        {"an existing milter on a TCP socket", "dkim=inet:127.0.0.1:8891,kind=milter", 0,
         MGW_FILTER_MILTER, 0},
        {"an existing milter on a unix socket, in phase 2",
         "dmarc=unix:/run/opendmarc.sock,kind=milter,phase=2", 0, MGW_FILTER_MILTER, 2},
        {"Sendmail's PORT@HOST spelling", "m=inet:8891@localhost,kind=milter", 0,
         MGW_FILTER_MILTER, 0},
        {"a milter needs a milter socket", "m=127.0.0.1:8891,kind=milter", MGW_EINVAL, 0, 0},
        {"a milter needs a host to connect to", "m=inet:8891,kind=milter", MGW_EINVAL, 0, 0},
        {"kind=grpc is the default spelled out", "a=h:1,kind=grpc,phase=99", 0,
         MGW_FILTER_GRPC, 99},
        {"an unknown kind is refused", "a=h:1,kind=smtp", MGW_EINVAL, 0, 0},
        {"a phase past 99 is refused", "a=h:1,phase=100", MGW_EINVAL, 0, 0},
        {"a phase that is no number is refused", "a=h:1,phase=first", MGW_EINVAL, 0, 0},
        {"an empty phase is refused", "a=h:1,phase=", MGW_EINVAL, 0, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_filter_conf c;
        char err[300] = "";
        int rc = mgw_filter_conf_parse(cases[i].arg, &c, err, sizeof err);

        if (rc != cases[i].want_rc)
            case_failed(cases[i].name, "rc: got %d, want %d (%s)", rc, cases[i].want_rc, err);
        else if (rc == 0 && (c.kind != cases[i].want_kind || c.phase != cases[i].want_phase))
            case_failed(cases[i].name, "kind %d phase %u", (int)c.kind, c.phase);
        if (rc == 0)
            mgw_filter_conf_clear(&c);
    }
    end_table();
}

/* --filter ...,content=pipelined|strict (policy.h rule 7); pipelined when absent. */
static void test_content_option(void **state)
{
    static const struct {
        const char *name;
        const char *arg;
        int want_rc;
        bool want_strict;
    } cases[] = {
        {"content answers are pipelined by default", "a=h:1", 0, false},
        {"content=strict makes the MTA wait for each answer", "a=h:1,content=strict", 0, true},
        {"content=pipelined is the default spelled out", "a=h:1,content=pipelined", 0, false},
        {"the last one wins", "a=h:1,content=strict,content=pipelined", 0, false},
        {"anything else is refused", "a=h:1,content=lazy", MGW_EINVAL, false},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_filter_conf c;
        char err[200] = "";
        int rc = mgw_filter_conf_parse(cases[i].arg, &c, err, sizeof err);

        if (rc != cases[i].want_rc)
            case_failed(cases[i].name, "rc: got %d, want %d", rc, cases[i].want_rc);
        else if (rc == 0 && c.content_strict != cases[i].want_strict)
            case_failed(cases[i].name, "content_strict: got %d", c.content_strict);
        else if (rc != 0 && strstr(err, "content is pipelined or strict") == NULL)
            case_failed(cases[i].name, "error text: %s", err);
        mgw_filter_conf_clear(&c);
    }
    end_table();
}

/* ---- --filter values that parse ---- */

#define NAME63 "abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefgh"

static void test_filter_values_parse(void **state)
{
    static const struct {
        const char *name;
        const char *arg;
        const char *want_name;
        const char *want_target;
        enum mgw_on_error want_on_error;
        unsigned want_timeout, want_eom;
        bool want_shadow;
    } cases[] = {
        {"a bare NAME=TARGET takes every default", "spam=127.0.0.1:50051", "spam",
         "127.0.0.1:50051", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"on_error=accept fails open", "spam=127.0.0.1:50051,on_error=accept", "spam",
         "127.0.0.1:50051", MGW_ON_ERROR_ACCEPT, 10000, 60000, false},
        {"on_error=reject fails with a permanent error", "spam=h:1,on_error=reject", "spam",
         "h:1", MGW_ON_ERROR_REJECT, 10000, 60000, false},
        {"on_error=tempfail may be spelled out", "spam=h:1,on_error=tempfail", "spam", "h:1",
         MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"timeout sets the per-event deadline", "spam=h:1,timeout=250ms", "spam", "h:1",
         MGW_ON_ERROR_TEMPFAIL, 250, 60000, false},
        {"eom_timeout sets the end-of-message deadline", "spam=h:1,eom_timeout=2m", "spam",
         "h:1", MGW_ON_ERROR_TEMPFAIL, 10000, 120000, false},
        {"a bare number timeout means seconds", "spam=h:1,timeout=3", "spam", "h:1",
         MGW_ON_ERROR_TEMPFAIL, 3000, 60000, false},
        {"mode=shadow makes the filter a shadow", "spam=h:1,mode=shadow", "spam", "h:1",
         MGW_ON_ERROR_TEMPFAIL, 10000, 60000, true},
        {"mode=normal is the default spelled out", "spam=h:1,mode=normal", "spam", "h:1",
         MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"every option together", "av=h:1,on_error=accept,timeout=10s,eom_timeout=90s,"
                                  "mode=shadow",
         "av", "h:1", MGW_ON_ERROR_ACCEPT, 10000, 90000, true},
        {"options may come in any order", "av=h:1,mode=shadow,eom_timeout=1s,on_error=reject,"
                                          "timeout=500ms",
         "av", "h:1", MGW_ON_ERROR_REJECT, 500, 1000, true},
        {"a repeated option: the last one wins", "av=h:1,timeout=1s,timeout=2s,mode=shadow,"
                                                 "mode=normal",
         "av", "h:1", MGW_ON_ERROR_TEMPFAIL, 2000, 60000, false},
        {"a target list with commas stays whole", "lb=ipv4:127.0.0.1:1,127.0.0.2:2", "lb",
         "ipv4:127.0.0.1:1,127.0.0.2:2", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"a target list with commas is followed by options",
         "lb=ipv4:127.0.0.1:1,127.0.0.2:2,on_error=accept,timeout=250ms", "lb",
         "ipv4:127.0.0.1:1,127.0.0.2:2", MGW_ON_ERROR_ACCEPT, 250, 60000, false},
        {"a three-address target list keeps all three",
         "lb=ipv4:10.0.0.1:5,10.0.0.2:5,10.0.0.3:5,mode=shadow", "lb",
         "ipv4:10.0.0.1:5,10.0.0.2:5,10.0.0.3:5", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, true},
        {"an IPv6 target list keeps its colons and brackets",
         "v6=ipv6:[::1]:50051,[2001:db8::1]:50051,timeout=1s", "v6",
         "ipv6:[::1]:50051,[2001:db8::1]:50051", MGW_ON_ERROR_TEMPFAIL, 1000, 60000, false},
        {"a unix socket target keeps its path", "local=unix:/run/filter/sock,timeout=5s",
         "local", "unix:/run/filter/sock", MGW_ON_ERROR_TEMPFAIL, 5000, 60000, false},
        {"an absolute unix socket target keeps its slashes", "local=unix:///run/f.sock",
         "local", "unix:///run/f.sock", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"a dns target keeps its triple slash and port", "dns=dns:///filter.example:50051",
         "dns", "dns:///filter.example:50051", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"a dns target with an authority is kept", "dns=dns://8.8.8.8/filter:50051,mode=shadow",
         "dns", "dns://8.8.8.8/filter:50051", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, true},
        {"the name ends at the first '=', the target may hold more",
         "q=dns:///f:1?x=y", "q", "dns:///f:1?x=y", MGW_ON_ERROR_TEMPFAIL, 10000, 60000,
         false},
        {"a name may use letters, digits, '-', '_' and '.'", "Spam-2_a.b=h:1", "Spam-2_a.b",
         "h:1", MGW_ON_ERROR_TEMPFAIL, 10000, 60000, false},
        {"a one-character name is enough", "x=h:1", "x", "h:1", MGW_ON_ERROR_TEMPFAIL, 10000,
         60000, false},
        {"a name of 63 characters fits", NAME63 "=h:1", NAME63, "h:1", MGW_ON_ERROR_TEMPFAIL,
         10000, 60000, false},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_filter_conf c;
        char err[512] = "";
        int rc = mgw_filter_conf_parse(cases[i].arg, &c, err, sizeof err);
        const char *n = cases[i].name;

        if (rc != 0) {
            case_failed(n, "\"%s\": rc: got %d (%s), want 0", cases[i].arg, rc, err);
            mgw_filter_conf_clear(&c);
            continue;
        }
        if (strcmp(c.name, cases[i].want_name) != 0)
            case_failed(n, "name: got \"%s\", want \"%s\"", c.name, cases[i].want_name);
        if (c.target == NULL || strcmp(c.target, cases[i].want_target) != 0)
            case_failed(n, "target: got \"%s\", want \"%s\"", str_or_null(c.target),
                        cases[i].want_target);
        if (c.on_error != cases[i].want_on_error)
            case_failed(n, "on_error: got %s, want %s", mgw_on_error_name(c.on_error),
                        mgw_on_error_name(cases[i].want_on_error));
        if (c.timeout_ms != cases[i].want_timeout)
            case_failed(n, "timeout_ms: got %u, want %u", c.timeout_ms, cases[i].want_timeout);
        if (c.eom_timeout_ms != cases[i].want_eom)
            case_failed(n, "eom_timeout_ms: got %u, want %u", c.eom_timeout_ms,
                        cases[i].want_eom);
        if (c.shadow != cases[i].want_shadow)
            case_failed(n, "shadow: got %d, want %d", c.shadow, cases[i].want_shadow);
        mgw_filter_conf_clear(&c);
        if (c.target != NULL)
            case_failed(n, "target after clear: got %p, want NULL", (void *)c.target);
    }
    end_table();
}

/* The defaults are the documented constants, not just equal numbers in this test. */
static void test_defaults_match_the_header(void **state)
{
    struct mgw_filter_conf c;
    char err[256];

    (void)state;
    assert_int_equal(mgw_filter_conf_parse("f=h:1", &c, err, sizeof err), 0);
    if (c.timeout_ms != MGW_FILTER_DEFAULT_TIMEOUT_MS)
        fail_msg("timeout_ms: got %u, want %u", c.timeout_ms, MGW_FILTER_DEFAULT_TIMEOUT_MS);
    if (c.eom_timeout_ms != MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS)
        fail_msg("eom_timeout_ms: got %u, want %u", c.eom_timeout_ms,
                 MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS);
    if (c.on_error != MGW_ON_ERROR_TEMPFAIL || c.shadow)
        fail_msg("on_error/shadow: got %s/%d, want tempfail/0", mgw_on_error_name(c.on_error),
                 c.shadow);
    mgw_filter_conf_clear(&c);
    /* Clearing twice, or a never-filled target, is harmless. */
    mgw_filter_conf_clear(&c);
}

/* ---- --filter values that are refused ---- */

#define NAME64 NAME63 "i"

static void test_bad_filter_values_are_refused_with_the_argument(void **state)
{
    static const struct {
        const char *name;
        const char *arg;
        const char *want_reason; /* a substring of the error text */
    } cases[] = {
        {"a value without '=' is refused", "spam", "NAME=TARGET"},
        {"a value with only a target is refused", "127.0.0.1:50051", "NAME=TARGET"},
        {"an empty value is refused", "", "NAME=TARGET"},
        {"an empty name is refused", "=127.0.0.1:50051", "NAME=TARGET"},
        {"a name with a space is refused", "my filter=h:1", "name may use"},
        {"a name with a slash is refused", "a/b=h:1", "name may use"},
        {"a name with a colon is refused", "h:1=h:1", "name may use"},
        {"a name with a comma is refused", "a,b=h:1", "name may use"},
        {"a name with non-ASCII letters is refused", "caf\xc3\xa9=h:1", "name may use"},
        {"a name of 64 characters is too long", NAME64 "=h:1", "name too long"},
        {"an empty target is refused", "spam=", "empty target"},
        {"an empty target before options is refused", "spam=,timeout=1s", "empty target"},
        {"a trailing comma is refused", "spam=h:1,", "empty option"},
        {"an empty option between options is refused", "spam=h:1,timeout=1s,,mode=shadow",
         "empty option"},
        {"an unknown option is refused", "spam=h:1,retries=3", "unknown option"},
        {"option names are case-sensitive", "spam=h:1,Timeout=1s", "unknown option"},
        {"an unknown option after a target list is refused",
         "lb=ipv4:127.0.0.1:1,127.0.0.2:2,colour=blue", "unknown option"},
        {"a bare word after an option is refused", "spam=h:1,timeout=1s,shadow",
         "key=value"},
        {"a bad on_error value is refused", "spam=h:1,on_error=ignore", "on_error is"},
        {"on_error values are case-sensitive", "spam=h:1,on_error=Accept", "on_error is"},
        {"an empty on_error is refused", "spam=h:1,on_error=", "on_error is"},
        {"a bad mode is refused", "spam=h:1,mode=dry-run", "mode is"},
        {"an empty mode is refused", "spam=h:1,mode=", "mode is"},
        {"a timeout in hours is refused", "spam=h:1,timeout=1h", "timeout is"},
        {"a zero timeout is refused", "spam=h:1,timeout=0", "timeout is"},
        {"an empty timeout is refused", "spam=h:1,timeout=", "timeout is"},
        {"a huge timeout is refused", "spam=h:1,timeout=99999999999", "timeout is"},
        {"a garbage eom_timeout is refused", "spam=h:1,eom_timeout=later", "eom_timeout is"},
        {"a bad option after good ones is refused, and the target freed",
         "spam=h:1,timeout=1s,mode=shadow,on_error=maybe", "on_error is"},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_filter_conf c;
        char err[512] = "";
        int rc = mgw_filter_conf_parse(cases[i].arg, &c, err, sizeof err);
        const char *n = cases[i].name;
        char quoted[300];

        if (rc != MGW_EINVAL)
            case_failed(n, "\"%s\": rc: got %d, want %d (MGW_EINVAL)", cases[i].arg, rc,
                        MGW_EINVAL);
        if (strstr(err, cases[i].want_reason) == NULL)
            case_failed(n, "error: got \"%s\", want it to say \"%s\"", err,
                        cases[i].want_reason);
        snprintf(quoted, sizeof quoted, "\"%s\"", cases[i].arg);
        if (strstr(err, quoted) == NULL)
            case_failed(n, "error: got \"%s\", want it to name the argument %s", err, quoted);
        /* A refused value owns nothing: clear is not even needed, but must be safe. */
        if (rc != 0 && c.target != NULL)
            case_failed(n, "target after an error: got \"%s\", want NULL", c.target);
        mgw_filter_conf_clear(&c);
    }
    end_table();
}

/* The error text is cut to the caller's buffer, always NUL-terminated. */
static void test_error_text_fits_a_small_buffer(void **state)
{
    struct mgw_filter_conf c;
    char err[16];

    (void)state;
    memset(err, 'x', sizeof err);
    assert_int_equal(mgw_filter_conf_parse("nothing-to-see-here", &c, err, sizeof err),
                     MGW_EINVAL);
    if (memchr(err, '\0', sizeof err) == NULL)
        fail_msg("error text: got no NUL in %zu bytes, want a terminated string", sizeof err);
    mgw_filter_conf_clear(&c);
}

/* ---- on_error helpers ---- */

static void test_on_error_maps_to_verdict_and_name(void **state)
{
    static const struct {
        const char *name;
        enum mgw_on_error e;
        enum mgw_verdict_kind want_kind;
        const char *want_name;
    } cases[] = {
        {"tempfail stands for a tempfail verdict", MGW_ON_ERROR_TEMPFAIL,
         MGW_VERDICT_TEMPFAIL, "tempfail"},
        {"accept stands for an accept verdict", MGW_ON_ERROR_ACCEPT, MGW_VERDICT_ACCEPT,
         "accept"},
        {"reject stands for a reject verdict", MGW_ON_ERROR_REJECT, MGW_VERDICT_REJECT,
         "reject"},
        {"an out-of-range value fails closed and is named '?'", (enum mgw_on_error)7,
         MGW_VERDICT_TEMPFAIL, "?"},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        enum mgw_verdict_kind k = mgw_on_error_verdict(cases[i].e);
        const char *nm = mgw_on_error_name(cases[i].e);

        if (k != cases[i].want_kind)
            case_failed(cases[i].name, "verdict: got %s, want %s", mgw_verdict_name(k),
                        mgw_verdict_name(cases[i].want_kind));
        if (nm == NULL || strcmp(nm, cases[i].want_name) != 0)
            case_failed(cases[i].name, "name: got \"%s\", want \"%s\"", str_or_null(nm),
                        cases[i].want_name);
    }
    end_table();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations_parse_to_milliseconds),
        cmocka_unit_test(test_duration_reads_only_len_bytes),
        cmocka_unit_test(test_sizes_parse_to_bytes),
        cmocka_unit_test(test_size_options),
        cmocka_unit_test(test_content_option),
        cmocka_unit_test(test_kind_and_phase_options),
        cmocka_unit_test(test_filter_values_parse),
        cmocka_unit_test(test_defaults_match_the_header),
        cmocka_unit_test(test_bad_filter_values_are_refused_with_the_argument),
        cmocka_unit_test(test_error_text_fits_a_small_buffer),
        cmocka_unit_test(test_on_error_maps_to_verdict_and_name),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
