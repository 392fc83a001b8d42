/*
 * msg_edit_int.h - what msg_edit.c (the held message, apply, replay) and msg_edit_net.c
 * (the net modification list) share: the message's layout and small comparisons.
 * Not a contract: msg_edit.h is.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MSG_EDIT_INT_H
#define MGW_MSG_EDIT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mgw/msg_edit.h"
#include "mgw/xmalloc.h"

#define NEW SIZE_MAX /* struct hdr.orig of a header no MTA sent */

struct hdr {
    char *name, *value; /* owned, NUL-terminated */
    size_t name_len, value_len;
    size_t orig; /* index in the original headers, or NEW */
};

struct addr {
    char *addr, *args; /* owned, NUL-terminated; args "" when none */
    size_t addr_len, args_len;
};

struct body {
    uint8_t *mem; /* while fd < 0 */
    size_t len, cap;
    int fd;   /* spill file, or -1 */
    FILE *fp; /* when the spill file came from tmpfile() */
    size_t size;
};

struct mgw_msg_edit {
    struct mgw_msg_edit_conf conf;
    bool edited; /* an apply happened: the original is frozen */

    struct hdr *ohdr; /* original headers; their orig field is unused */
    size_t nohdr, cohdr;
    struct hdr *hdr; /* current headers */
    size_t nhdr, chdr;
    /* hdr[0..above) sit above the MTA's hidden headers (inserted at an index that counts
     * them, conf.ins_hidden > 0): on top of the message as delivered. Always new ones. */
    size_t above;
    size_t hdr_bytes; /* sum of name and value lengths of the current headers */

    bool has_sender, has_osender;
    struct addr sender, osender;
    struct addr *rcpt, *orcpt;
    size_t nrcpt, crcpt, norcpt, corcpt;

    struct body body;
    bool body_replaced;
    bool quarantined;
    char *qreason;
    size_t qreason_len;

    /* The net list (msg_edit_net.c), computed by mgw_msg_edit_net_next() after the last
     * apply. A 'b' frame with data NULL is the slot where the current body goes. */
    bool net_valid;
    struct mgw_milter_msg *net;
    size_t nnet, cnet;
};

/* Make room for one more element in a growing array. */
static inline void *grow(void *p, size_t *cap, size_t len, size_t elem)
{
    if (len < *cap)
        return p;
    size_t ncap = *cap ? *cap * 2 : 8;
    if (ncap > SIZE_MAX / elem)
        mgw_panic("msg_edit: array of %zu elements", ncap);
    *cap = ncap;
    return mgw_xrealloc(p, ncap * elem);
}

static inline unsigned char fold(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Header names compare ASCII case-insensitively (RFC 5322; Postfix strncasecmp). */
static inline int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;

    for (size_t i = 0; i < n; i++) {
        unsigned char x = fold((unsigned char)a[i]), y = fold((unsigned char)b[i]);
        if (x != y)
            return x < y ? -1 : 1;
    }
    return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

static inline bool bytes_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* An address without one enclosing <...>, as '-' compares them. */
static inline struct mgw_str addr_key(const char *a, size_t len)
{
    if (len >= 2 && a[0] == '<' && a[len - 1] == '>')
        return (struct mgw_str){a + 1, len - 2};
    return (struct mgw_str){a, len};
}

static inline int bytes_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;

    if (c != 0)
        return c;
    return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

#endif
