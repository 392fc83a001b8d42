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
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Set by the control thread (a reload), read by every worker loop: atomic. */
static enum mgw_log_level log_level = MGW_LOG_INFO;
static enum mgw_log_format log_format = MGW_LOG_LOGFMT;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void mgw_log_set_level(enum mgw_log_level level)
{
    __atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
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

void mgw_log_set_format(enum mgw_log_format format)
{
    __atomic_store_n(&log_format, format, __ATOMIC_RELAXED);
}

int mgw_log_parse_format(const char *name, enum mgw_log_format *out)
{
    if (strcmp(name, "logfmt") == 0)
        *out = MGW_LOG_LOGFMT;
    else if (strcmp(name, "json") == 0)
        *out = MGW_LOG_JSON;
    else
        return -1;
    return 0;
}

int mgw_log_enabled(enum mgw_log_level level)
{
    return level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
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

/* Append one JSON string (s[0..len), already logfmt-unescaped or raw) to out. */
static size_t json_str(char *out, size_t o, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";

    if (o + 1 < cap)
        out[o++] = '"';
    for (size_t i = 0; i < len && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    if (o + 1 < cap)
        out[o++] = '"';
    return o;
}

/* Decode one logfmt value starting at *p (bare word or "quoted" with mgw_log_quote()
 * escapes) into buf; advances *p. */
static size_t logfmt_value(const char **p, char *buf, size_t cap)
{
    const char *s = *p;
    size_t n = 0;

    if (*s != '"') {
        while (*s && *s != ' ' && n + 1 < cap)
            buf[n++] = *s++;
        while (*s && *s != ' ')
            s++;
        *p = s;
        return n;
    }
    for (s++; *s && *s != '"'; s++) {
        char c = *s;

        if (c == '\\' && s[1]) {
            s++;
            c = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
            if (*s == 'x' && s[1] && s[2]) {
                char h[3] = {s[1], s[2], 0};

                c = (char)strtol(h, NULL, 16);
                s += 2;
            }
        }
        if (n + 1 < cap)
            buf[n++] = c;
    }
    *p = *s == '"' ? s + 1 : s;
    return n;
}

/* Re-emit a logfmt line (without newline) as a JSON object. */
static size_t logfmt_to_json(const char *line, char *out, size_t cap)
{
    char val[2048];
    size_t o = 0;
    const char *p = line;

    out[o++] = '{';
    while (*p) {
        const char *k = p, *eq;
        size_t vlen;

        while (*p == ' ')
            p++;
        k = p;
        eq = strchr(p, '=');
        if (eq == NULL || *k == '\0')
            break;
        p = eq + 1;
        vlen = logfmt_value(&p, val, sizeof val);
        if (o > 1 && o + 1 < cap)
            out[o++] = ',';
        o = json_str(out, o, cap, k, (size_t)(eq - k));
        if (o + 1 < cap)
            out[o++] = ':';
        o = json_str(out, o, cap, val, vlen);
    }
    if (o + 1 < cap)
        out[o++] = '}';
    return o;
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
    if (__atomic_load_n(&log_format, __ATOMIC_RELAXED) == MGW_LOG_JSON) {
        char json[8192];

        line[n] = '\0';
        n = logfmt_to_json(line, json, sizeof json - 1);
        json[n++] = '\n';
        if (write(STDERR_FILENO, json, n) < 0)
            return;
        return;
    }
    line[n++] = '\n';
    /* A failed log write has nowhere to be reported. */
    if (write(STDERR_FILENO, line, n) < 0)
        return;
}
