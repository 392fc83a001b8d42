/*
 * log.c - logfmt lines on stderr.
 *
 * One line is formatted into a stack buffer and written with a single write(2), so lines
 * from concurrent writers never interleave and a slow stderr costs one syscall per line.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum mgw_log_level log_level = MGW_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void mgw_log_set_level(enum mgw_log_level level)
{
    log_level = level;
}

int mgw_log_parse_level(const char *name, enum mgw_log_level *out)
{
    for (int i = 0; i <= MGW_LOG_DEBUG; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum mgw_log_level)i;
            return 0;
        }
    }
    return -1;
}

int mgw_log_enabled(enum mgw_log_level level)
{
    return level <= log_level;
}

const char *mgw_log_quote(char *buf, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    if (cap < 8) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[4];
        size_t n = 0;

        if (c == '"' || c == '\\') {
            esc[n++] = '\\';
            esc[n++] = (char)c;
        } else if (c == '\n') {
            esc[n++] = '\\';
            esc[n++] = 'n';
        } else if (c == '\t') {
            esc[n++] = '\\';
            esc[n++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            esc[n++] = '\\';
            esc[n++] = 'x';
            esc[n++] = hex[c >> 4];
            esc[n++] = hex[c & 15];
        } else {
            esc[n++] = (char)c;
        }
        /* Keep room for "...", the closing quote and the NUL. */
        if (o + n + 5 > cap) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, esc, n);
        o += n;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void mgw_log(enum mgw_log_level level, uint64_t sid, const char *msg, const char *fmt, ...)
{
    char line[4096];
    char q[256];
    struct timeval tv;
    struct tm tm;
    size_t n;
    int r;
    va_list ap;

    if (!mgw_log_enabled(level))
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof line - n, ".%03dZ level=%s", (int)(tv.tv_usec / 1000),
                 level_names[level]);
    n += (size_t)r;
    if (sid != 0) {
        r = snprintf(line + n, sizeof line - n, " sid=%016" PRIx64, sid);
        n += (size_t)r;
    }
    /* Bare words need no quotes; phrases do. */
    if (strpbrk(msg, " \"=") != NULL)
        msg = mgw_log_quote(q, sizeof q, msg, strlen(msg));
    r = snprintf(line + n, sizeof line - n, " msg=%s", msg);
    n += (size_t)r < sizeof line - n ? (size_t)r : sizeof line - n - 1;
    if (fmt[0] != '\0' && n < sizeof line - 2) {
        line[n++] = ' ';
        va_start(ap, fmt);
        r = vsnprintf(line + n, sizeof line - n, fmt, ap);
        va_end(ap);
        if (r > 0)
            n += (size_t)r < sizeof line - n ? (size_t)r : sizeof line - n - 1;
    }
    line[n++] = '\n';
    /* A failed log write has nowhere to be reported. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}
