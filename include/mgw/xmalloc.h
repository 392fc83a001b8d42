/*
 * xmalloc.h - allocation that never returns NULL.
 *
 * Out of memory is not a condition miltergw can serve mail through, so, as in Postfix
 * (mymalloc) and OpenSMTPD (xmalloc), these functions abort with a message instead of
 * making every caller check.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_XMALLOC_H
#define MGW_XMALLOC_H

#include <stddef.h>

void *mgw_xmalloc(size_t n);
void *mgw_xcalloc(size_t nmemb, size_t size);
void *mgw_xrealloc(void *p, size_t n);
char *mgw_xstrdup(const char *s);
void *mgw_xmemdup(const void *p, size_t n); /* copies n bytes and adds a NUL after them */

/* Report a broken internal invariant and abort with a core dump. Never returns. */
void mgw_panic(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif
