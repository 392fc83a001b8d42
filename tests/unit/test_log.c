/*
 * test_log.c - log lines in logfmt and JSON, as an operator's tools would read them.
 *
 * stderr is pointed at a pipe for the duration of each case; the line written is read
 * back and compared without its timestamp.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mgw/log.h"

/* Run one log call with stderr captured; returns the line without "ts=..." / "ts":... */
static const char *capture(enum mgw_log_format fmt, void (*emit)(void))
{
    static char buf[4096];
    int p[2], saved;
    ssize_t n;
    char *start;

    assert_int_equal(pipe(p), 0);
    saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    mgw_log_set_format(fmt);
    emit();
    mgw_log_set_format(MGW_LOG_LOGFMT);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    /* Skip the timestamp field, whose value changes. */
    start = strstr(buf, fmt == MGW_LOG_JSON ? "\"level\"" : "level=");
    assert_non_null(start);
    return start;
}

static void emit_session_line(void)
{
    char q[64];

    log_warn(0x1a, "session closed", "reason=%s detail=%s", "truncated",
             mgw_log_quote(q, sizeof q, "EOF \"mid\" frame\n", 16));
}

static void emit_process_line(void)
{
    log_info(0, "listening", "listen=%s", "inet:127.0.0.1:8890");
}

static void lines_are_logfmt_with_quoted_values(void **state)
{
    static const struct {
        void (*emit)(void);
        const char *want;
    } cases[] = {
        {emit_session_line, "level=warn sid=000000000000001a msg=\"session closed\" "
                            "reason=truncated detail=\"EOF \\\"mid\\\" frame\\n\"\n"},
        {emit_process_line, "level=info msg=listening listen=inet:127.0.0.1:8890\n"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = capture(MGW_LOG_LOGFMT, cases[i].emit);

        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, got, cases[i].want);
    }
}

static void json_lines_carry_the_same_fields(void **state)
{
    static const struct {
        void (*emit)(void);
        const char *want;
    } cases[] = {
        {emit_session_line, "\"level\":\"warn\",\"sid\":\"000000000000001a\","
                            "\"msg\":\"session closed\",\"reason\":\"truncated\","
                            "\"detail\":\"EOF \\\"mid\\\" frame\\u000a\"}\n"},
        {emit_process_line, "\"level\":\"info\",\"msg\":\"listening\","
                            "\"listen\":\"inet:127.0.0.1:8890\"}\n"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = capture(MGW_LOG_JSON, cases[i].emit);

        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, got, cases[i].want);
    }
}

static void level_and_format_names_parse(void **state)
{
    enum mgw_log_level l;
    enum mgw_log_format f;

    assert_int_equal(mgw_log_parse_level("debug", &l), 0);
    assert_int_equal(l, MGW_LOG_DEBUG);
    assert_int_equal(mgw_log_parse_level("verbose", &l), -1);
    assert_int_equal(mgw_log_parse_format("json", &f), 0);
    assert_int_equal(f, MGW_LOG_JSON);
    assert_int_equal(mgw_log_parse_format("xml", &f), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lines_are_logfmt_with_quoted_values),
        cmocka_unit_test(json_lines_carry_the_same_fields),
        cmocka_unit_test(level_and_format_names_parse),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
