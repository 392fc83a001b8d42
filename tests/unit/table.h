/*
 * table.h - shared helpers for table-driven cmocka tests.
 *
 * A table test runs every row, reports each failing row as "FAIL <case>: got X, want Y"
 * through case_failed(), and fails once at the end (end_table()), so one run shows every
 * broken row rather than the first. Include after <cmocka.h>.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_TEST_TABLE_H
#define MGW_TEST_TABLE_H

#include <stdarg.h>
#include <stdio.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int failures;

static inline void case_failed(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline void case_failed(const char *name, const char *fmt, ...)
{
    char text[1200];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    print_error("FAIL %s: %s\n", name, text);
    failures++;
}

/* Fail the test if any row of the table failed; resets the count for the next table. */
static inline void end_table(void)
{
    int n = failures;

    failures = 0;
    if (n > 0)
        fail_msg("%d case(s) failed", n);
}

static inline const char *str_or_null(const char *s)
{
    return s ? s : "(null)";
}

#endif
