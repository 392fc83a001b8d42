/*
 * xmalloc.c - allocation wrappers that abort on exhaustion, and mgw_panic().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/xmalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mgw_panic(const char *fmt, ...)
{
    va_list ap;

    fputs("level=error msg=panic detail=\"", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\"\n", stderr);
    abort();
}

static void *check(void *p, size_t n)
{
    if (p == NULL && n != 0)
        mgw_panic("out of memory allocating %zu bytes", n);
    return p;
}

void *mgw_xmalloc(size_t n)
{
    /* malloc(0) may return NULL; ask for one byte so callers always get a pointer. */
    return check(malloc(n ? n : 1), n ? n : 1);
}

void *mgw_xcalloc(size_t nmemb, size_t size)
{
    if (nmemb == 0 || size == 0)
        nmemb = size = 1;
    return check(calloc(nmemb, size), nmemb * size);
}

void *mgw_xrealloc(void *p, size_t n)
{
    return check(realloc(p, n ? n : 1), n ? n : 1);
}

char *mgw_xstrdup(const char *s)
{
    return mgw_xmemdup(s, strlen(s));
}

void *mgw_xmemdup(const void *p, size_t n)
{
    char *d = mgw_xmalloc(n + 1);

    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}
