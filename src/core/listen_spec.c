/*
 * listen_spec.c - parse milter socket specs (see listen_spec.h). Pure.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/listen_spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"

static int fail(char *err, size_t errlen, const char *spec, const char *why)
{
    snprintf(err, errlen, "bad listen spec \"%s\": %s", spec, why);
    return MGW_EINVAL;
}

static int parse_port(const char *s, size_t len, uint16_t *out)
{
    unsigned long v = 0;

    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int copy_host(char *dst, size_t cap, const char *s, size_t len)
{
    if (len >= cap)
        return -1;
    memcpy(dst, s, len);
    dst[len] = '\0';
    return 0;
}

/* Split an inet body: "HOST:PORT", "[ADDR]:PORT", "PORT@HOST" or "PORT". */
static int parse_inet(const char *spec, const char *body, struct mgw_listen_spec *out,
                      char *err, size_t errlen)
{
    const char *at = strchr(body, '@');
    const char *colon;

    if (at != NULL) {
        if (parse_port(body, (size_t)(at - body), &out->port) < 0)
            return fail(err, errlen, spec, "bad port before '@'");
        if (at[1] == '\0' || copy_host(out->host, sizeof out->host, at + 1, strlen(at + 1)) < 0)
            return fail(err, errlen, spec, "bad host after '@'");
        return 0;
    }
    if (body[0] == '[') {
        const char *close = strchr(body, ']');

        if (close == NULL || close[1] != ':')
            return fail(err, errlen, spec, "expected [ADDR]:PORT");
        if (copy_host(out->host, sizeof out->host, body + 1, (size_t)(close - body - 1)) < 0 ||
            close == body + 1)
            return fail(err, errlen, spec, "bad address in brackets");
        if (parse_port(close + 2, strlen(close + 2), &out->port) < 0)
            return fail(err, errlen, spec, "bad port");
        return 0;
    }
    colon = strrchr(body, ':');
    if (colon == NULL) {
        if (parse_port(body, strlen(body), &out->port) < 0)
            return fail(err, errlen, spec, "bad port");
        return 0;
    }
    if (out->kind == MGW_LISTEN_INET6)
        return fail(err, errlen, spec, "IPv6 addresses go in brackets: inet6:[ADDR]:PORT");
    if (colon == body || copy_host(out->host, sizeof out->host, body, (size_t)(colon - body)) < 0)
        return fail(err, errlen, spec, "bad host");
    if (parse_port(colon + 1, strlen(colon + 1), &out->port) < 0)
        return fail(err, errlen, spec, "bad port");
    return 0;
}

int mgw_listen_spec_parse(const char *spec, struct mgw_listen_spec *out, char *err,
                          size_t errlen)
{
    const char *body;

    memset(out, 0, sizeof *out);
    if (strncmp(spec, "unix:", 5) == 0 || strncmp(spec, "local:", 6) == 0) {
        body = strchr(spec, ':') + 1;
        out->kind = MGW_LISTEN_UNIX;
        if (body[0] == '\0')
            return fail(err, errlen, spec, "empty socket path");
        if (strlen(body) >= sizeof out->path)
            return fail(err, errlen, spec, "socket path too long");
        strcpy(out->path, body);
        return 0;
    }
    if (strncmp(spec, "inet:", 5) == 0) {
        out->kind = MGW_LISTEN_INET;
        body = spec + 5;
    } else if (strncmp(spec, "inet6:", 6) == 0) {
        out->kind = MGW_LISTEN_INET6;
        body = spec + 6;
    } else {
        return fail(err, errlen, spec, "expected inet:, inet6:, unix: or local:");
    }
    return parse_inet(spec, body, out, err, errlen);
}

int mgw_hostport_parse(const char *spec, char *host, size_t cap, uint16_t *port)
{
    const char *hs = spec, *he, *ps;
    unsigned long v = 0;

    if (spec[0] == '[') {
        hs = spec + 1;
        he = strchr(hs, ']');
        if (he == NULL || he[1] != ':')
            return -1;
        ps = he + 2;
    } else {
        he = strrchr(spec, ':');
        if (he == NULL || memchr(spec, ':', (size_t)(he - spec)) != NULL)
            return -1; /* bare IPv6 addresses need brackets */
        ps = he + 1;
    }
    if (he == hs || (size_t)(he - hs) >= cap || *ps == '\0' || strlen(ps) > 5)
        return -1;
    for (const char *p = ps; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535)
        return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    *port = (uint16_t)v;
    return 0;
}
