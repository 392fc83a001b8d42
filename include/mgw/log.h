/*
 * log.h - leveled, structured log lines on stderr.
 *
 * Every line is logfmt: `ts=... level=info sid=0000000000000001 msg="..." key=value ...`,
 * or, with MGW_LOG_JSON, the same fields as one JSON object:
 * `{"ts":"...","level":"info","sid":"...","msg":"...","key":"value"}` (values are strings;
 * the logfmt escapes of mgw_log_quote() become JSON escapes).
 * The caller writes the key=value tail with a printf format; string values that may hold
 * spaces, quotes or control bytes (peer names, SMTP text) go through mgw_log_quote() so
 * the line stays machine-parseable. Session lines carry the session id (sid); process
 * lines pass sid 0, which is left out.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_LOG_H
#define MGW_LOG_H

#include <stddef.h>
#include <stdint.h>

enum mgw_log_level {
    MGW_LOG_ERROR = 0,
    MGW_LOG_WARN = 1,
    MGW_LOG_INFO = 2,
    MGW_LOG_DEBUG = 3,
};

enum mgw_log_format {
    MGW_LOG_LOGFMT = 0,
    MGW_LOG_JSON = 1, /* one JSON object per line; the key=value tail becomes fields */
};

void mgw_log_set_level(enum mgw_log_level level);
void mgw_log_set_format(enum mgw_log_format format);
/* Parse "logfmt" or "json"; returns 0 or -1. */
int mgw_log_parse_format(const char *name, enum mgw_log_format *out);
/* Parse "error", "warn", "info", "debug"; returns 0 or -1. */
int mgw_log_parse_level(const char *name, enum mgw_log_level *out);
int mgw_log_enabled(enum mgw_log_level level);

/* `msg` is a short constant phrase; `fmt` formats the key=value tail (may be ""). */
void mgw_log(enum mgw_log_level level, uint64_t sid, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Write s[0..len) into buf as a double-quoted, escaped logfmt value (truncated with "..."
 * to fit cap); returns buf. */
const char *mgw_log_quote(char *buf, size_t cap, const char *s, size_t len);

#define log_error(sid, msg, ...) mgw_log(MGW_LOG_ERROR, (sid), (msg), __VA_ARGS__)
#define log_warn(sid, msg, ...) mgw_log(MGW_LOG_WARN, (sid), (msg), __VA_ARGS__)
#define log_info(sid, msg, ...) mgw_log(MGW_LOG_INFO, (sid), (msg), __VA_ARGS__)
#define log_debug(sid, msg, ...)                                                        \
    do {                                                                                \
        if (mgw_log_enabled(MGW_LOG_DEBUG))                                             \
            mgw_log(MGW_LOG_DEBUG, (sid), (msg), __VA_ARGS__);                          \
    } while (0)

#endif
