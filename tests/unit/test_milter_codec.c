/*
 * test_milter_codec.c - unit tests of the milter frame codec.
 *
 * Every table row is a sentence naming the behaviour it pins down. Failures are collected
 * per table and reported as "<case>: <field>: got X, want Y", so one run shows every broken
 * case, not just the first.
 *
 * Beware C string literals here: "\0" followed by a digit is an octal escape ("\0127" is
 * "\n7"), so such literals are split ("\0" "127").
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
#include "mgw/milter_codec.h"

/* A string view over a literal; sizeof - 1 drops the literal's own terminator. */
#define S(lit) ((struct mgw_str){(lit), sizeof(lit) - 1})
/* A list over a literal whose strings each end in an explicit "\0". */
#define LIST(lit, n) ((struct mgw_strlist){(lit), sizeof(lit) - 1, (n)})
/* Raw bytes of a literal, for byte-level tables. */
#define BYTES(lit) (const uint8_t *)(lit), sizeof(lit) - 1

#define FROM_MTA    MGW_MILTER_FROM_MTA
#define FROM_MILTER MGW_MILTER_FROM_MILTER

/* ---- Comparing messages ---- */

/* The first difference found, as "field: got X, want Y". */
struct diff {
    char text[512];
    int found;
};

/* Printable, C-escaped, truncated rendering of bytes (NULL prints as NULL). */
static const char *show(const void *p, size_t n, char *out, size_t cap)
{
    const unsigned char *b = p;
    size_t o = 0;

    if (p == NULL && n == 0)
        return "NULL";
    out[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\')
            out[o++] = (char)b[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", b[i]);
    }
    if (o + 5 >= cap)
        o = cap - 5;
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static void differ(struct diff *d, const char *field, const void *got, size_t glen,
                   const void *want, size_t wlen)
{
    char g[160], w[160];

    if (d->found)
        return;
    d->found = 1;
    snprintf(d->text, sizeof(d->text), "%s: got %s (len %zu), want %s (len %zu)", field,
             show(got, glen, g, sizeof(g)), glen, show(want, wlen, w, sizeof(w)), wlen);
}

static void diff_num(struct diff *d, const char *field, unsigned long got, unsigned long want)
{
    if (d->found || got == want)
        return;
    d->found = 1;
    snprintf(d->text, sizeof(d->text), "%s: got %lu (0x%lx), want %lu (0x%lx)", field, got, got,
             want, want);
}

static int same_bytes(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* `optional` strings (symlists, rcpt args) also compare presence: ptr NULL vs non-NULL. */
static void diff_str(struct diff *d, const char *field, struct mgw_str got, struct mgw_str want,
                     int optional)
{
    if (optional && (got.ptr == NULL) != (want.ptr == NULL)) {
        differ(d, field, got.ptr, got.len, want.ptr, want.len);
        return;
    }
    if (!same_bytes(got.ptr, got.len, want.ptr, want.len))
        differ(d, field, got.ptr, got.len, want.ptr, want.len);
}

static void diff_list(struct diff *d, const char *field, struct mgw_strlist got,
                      struct mgw_strlist want)
{
    if (!same_bytes(got.data, got.len, want.data, want.len))
        differ(d, field, got.data, got.len, want.data, want.len);
    diff_num(d, field, got.count, want.count);
}

static void diff_msg(struct diff *d, const struct mgw_milter_msg *got,
                     const struct mgw_milter_msg *want)
{
    const char *names[MGW_STAGE_COUNT] = {"symlist[0]", "symlist[1]", "symlist[2]", "symlist[3]",
                                          "symlist[4]", "symlist[5]", "symlist[6]"};

    d->found = 0;
    diff_num(d, "cmd", got->cmd, want->cmd);
    if (d->found)
        return;
    switch (want->cmd) {
    case 'O':
        diff_num(d, "version", got->u.optneg.version, want->u.optneg.version);
        diff_num(d, "actions", got->u.optneg.actions, want->u.optneg.actions);
        diff_num(d, "protocol", got->u.optneg.protocol, want->u.optneg.protocol);
        for (int s = 0; s < MGW_STAGE_COUNT; s++)
            diff_str(d, names[s], got->u.optneg.symlist[s], want->u.optneg.symlist[s], 1);
        break;
    case 'D':
        diff_num(d, "stage_cmd", got->u.macro.stage_cmd, want->u.macro.stage_cmd);
        diff_list(d, "pairs", got->u.macro.pairs, want->u.macro.pairs);
        break;
    case 'C':
        diff_str(d, "hostname", got->u.connect.hostname, want->u.connect.hostname, 0);
        diff_num(d, "family", got->u.connect.family, want->u.connect.family);
        diff_num(d, "port", got->u.connect.port, want->u.connect.port);
        diff_str(d, "address", got->u.connect.address, want->u.connect.address, 0);
        break;
    case 'H': diff_str(d, "helo", got->u.helo, want->u.helo, 0); break;
    case 'M':
    case 'R': diff_list(d, "args", got->u.args, want->u.args); break;
    case 'L':
    case 'h':
    case 'i':
    case 'm':
        diff_num(d, "index", got->u.header.index, want->u.header.index);
        diff_str(d, "name", got->u.header.name, want->u.header.name, 0);
        diff_str(d, "value", got->u.header.value, want->u.header.value, 0);
        break;
    case 'B':
    case 'E':
    case 'b':
        if (!same_bytes(got->u.body.data, got->u.body.len, want->u.body.data, want->u.body.len))
            differ(d, "body", got->u.body.data, got->u.body.len, want->u.body.data,
                   want->u.body.len);
        break;
    case 'U': diff_str(d, "unknown", got->u.unknown, want->u.unknown, 0); break;
    case 'y':
    case '+':
    case '-':
    case 'q': diff_str(d, "text", got->u.text, want->u.text, 0); break;
    case 'l':
        diff_num(d, "stage", got->u.symlist.stage, want->u.symlist.stage);
        diff_str(d, "names", got->u.symlist.names, want->u.symlist.names, 0);
        break;
    case '2':
    case 'e':
        diff_str(d, "addr", got->u.rcpt.addr, want->u.rcpt.addr, 0);
        diff_str(d, "args", got->u.rcpt.args, want->u.rcpt.args, 1);
        break;
    default: break;
    }
}

/* The view promise: every string lies inside the frame and has its NUL inside it too. */
static void check_str_view(struct diff *d, const char *field, struct mgw_str s, const uint8_t *buf,
                           size_t n)
{
    const char *lo = (const char *)buf, *hi = (const char *)buf + n;

    if (d->found || s.ptr == NULL)
        return;
    if (s.ptr < lo || s.ptr > hi || s.len >= (size_t)(hi - s.ptr) || s.ptr[s.len] != '\0') {
        d->found = 1;
        snprintf(d->text, sizeof(d->text),
                 "%s: got a view outside the frame or without NUL, "
                 "want a NUL-terminated view inside it",
                 field);
    }
}

static void check_views(struct diff *d, const struct mgw_milter_msg *m, const uint8_t *buf,
                        size_t n)
{
    d->found = 0;
    switch (m->cmd) {
    case 'O':
        for (int s = 0; s < MGW_STAGE_COUNT; s++)
            check_str_view(d, "symlist", m->u.optneg.symlist[s], buf, n);
        break;
    case 'C':
        check_str_view(d, "hostname", m->u.connect.hostname, buf, n);
        check_str_view(d, "address", m->u.connect.address, buf, n);
        break;
    case 'H': check_str_view(d, "helo", m->u.helo, buf, n); break;
    case 'L':
    case 'h':
    case 'i':
    case 'm':
        check_str_view(d, "name", m->u.header.name, buf, n);
        check_str_view(d, "value", m->u.header.value, buf, n);
        break;
    case 'U': check_str_view(d, "unknown", m->u.unknown, buf, n); break;
    case 'y':
    case '+':
    case '-':
    case 'q': check_str_view(d, "text", m->u.text, buf, n); break;
    case 'l': check_str_view(d, "names", m->u.symlist.names, buf, n); break;
    case '2':
    case 'e':
        check_str_view(d, "addr", m->u.rcpt.addr, buf, n);
        check_str_view(d, "args", m->u.rcpt.args, buf, n);
        break;
    default: break;
    }
}

/* A decode/encode result for messages: a byte count, or the error's name. */
static const char *rc_name(ssize_t r)
{
    return r >= 0 ? "bytes" : mgw_strerror((int)r);
}


/* ---- Round-trip table: every command and every reply ---- */

struct rt_case {
    const char *name;
    enum mgw_milter_dir dir;
    struct mgw_milter_msg msg;
};

static const uint8_t binary_body[] = {'l', 'i', 'n', 'e', '\r', '\n', 0, 0xff, 0x80, '\n'};

#define MSG(c, ...)                                                                                \
    {                                                                                              \
        .cmd = (c), .u = { __VA_ARGS__ }                                                           \
    }

static const struct rt_case rt_cases[] = {
    /* MTA -> milter */
    {"an MTA option negotiation offers version 6 with every action and step", FROM_MTA,
     MSG('O', .optneg = {.version = 6, .actions = 0x1FF, .protocol = 0x1FFFFF})},
    {"an MTA option negotiation can offer nothing at all", FROM_MTA,
     MSG('O', .optneg = {.version = 2})},
    {"connect macros carry name/value pairs", FROM_MTA,
     MSG('D', .macro = {'C', LIST("j\0mx.example.org\0{daemon_name}\0smtpd\0", 4)})},
    {"macros may be an empty list", FROM_MTA, MSG('D', .macro = {'E', LIST("", 0)})},
    {"a macro value may be empty", FROM_MTA, MSG('D', .macro = {'R', LIST("i\0\0", 2)})},
    {"an IPv4 connect carries host, port and address", FROM_MTA,
     MSG('C', .connect = {S("mail.example.org"), '4', 25, S("192.0.2.1")})},
    {"an IPv6 connect carries the high port byte first", FROM_MTA,
     MSG('C', .connect = {S("[2001:db8::1]"), '6', 0xABCD, S("2001:db8::1")})},
    {"a unix-socket connect has port 0 and a path", FROM_MTA,
     MSG('C', .connect = {S("localhost"), 'L', 0, S("/var/run/smtp.sock")})},
    {"an unknown-family connect carries no port and no address", FROM_MTA,
     MSG('C', .connect = {S("unknown"), 'U', 0, {NULL, 0}})},
    {"a connect may have an empty hostname", FROM_MTA,
     MSG('C', .connect = {S(""), '4', 65535, S("198.51.100.7")})},
    {"a HELO carries one name", FROM_MTA, MSG('H', .helo = S("client.example.net"))},
    {"a MAIL with the null sender and no ESMTP args is one string", FROM_MTA,
     MSG('M', .args = LIST("<>\0", 1))},
    {"a MAIL carries the sender then ESMTP args", FROM_MTA,
     MSG('M', .args = LIST("<a@example.org>\0SIZE=1024\0BODY=8BITMIME\0", 3))},
    {"a RCPT carries the recipient", FROM_MTA,
     MSG('R', .args = LIST("<b@example.net>\0NOTIFY=NEVER\0", 2))},
    {"a DATA has no payload", FROM_MTA, MSG('T', .helo = {NULL, 0})},
    {"a header carries a folded value with its newline and tab", FROM_MTA,
     MSG('L', .header = {0, S("Subject"), S("first line\n\tsecond line")})},
    {"a header may have an empty value", FROM_MTA, MSG('L', .header = {0, S("X-Empty"), S("")})},
    {"an end of headers has no payload", FROM_MTA, MSG('N', .helo = {NULL, 0})},
    {"a body chunk carries raw bytes including NUL and high bytes", FROM_MTA,
     MSG('B', .body = {binary_body, sizeof(binary_body)})},
    {"an end of body may be empty", FROM_MTA, MSG('E', .body = {NULL, 0})},
    {"an end of body may carry a final chunk", FROM_MTA,
     MSG('E', .body = {(const uint8_t *)"tail\r\n", 6})},
    {"an unknown SMTP command carries its text", FROM_MTA, MSG('U', .unknown = S("XFOO bar"))},
    {"an abort has no payload", FROM_MTA, MSG('A', .helo = {NULL, 0})},
    {"a quit has no payload", FROM_MTA, MSG('Q', .helo = {NULL, 0})},
    {"a quit-new-connection has no payload", FROM_MTA, MSG('K', .helo = {NULL, 0})},
    /* milter -> MTA */
    {"a continue reply has no payload", FROM_MILTER, MSG('c', .text = {NULL, 0})},
    {"an accept reply has no payload", FROM_MILTER, MSG('a', .text = {NULL, 0})},
    {"a reject reply has no payload", FROM_MILTER, MSG('r', .text = {NULL, 0})},
    {"a tempfail reply has no payload", FROM_MILTER, MSG('t', .text = {NULL, 0})},
    {"a discard reply has no payload", FROM_MILTER, MSG('d', .text = {NULL, 0})},
    {"a skip reply has no payload", FROM_MILTER, MSG('s', .text = {NULL, 0})},
    {"a reply code carries a multi-line text joined by CRLF", FROM_MILTER,
     MSG('y', .text = S("550-5.7.1 first\r\n550 5.7.1 second"))},
    {"a progress reply has no payload", FROM_MILTER, MSG('p', .text = {NULL, 0})},
    {"a connection-failure reply has no payload", FROM_MILTER, MSG('f', .text = {NULL, 0})},
    {"a shutdown reply has no payload", FROM_MILTER, MSG('4', .text = {NULL, 0})},
    {"a milter option negotiation without macro lists is 12 bytes", FROM_MILTER,
     MSG('O', .optneg = {.version = 6, .actions = 0x11, .protocol = 0x400})},
    {"a milter option negotiation may ask for macros of some stages", FROM_MILTER,
     MSG('O', .optneg = {.version = 6,
                         .actions = 0x100,
                         .protocol = 0,
                         .symlist = {[MGW_STAGE_CONNECT] = S("j {daemon_name}"),
                                     [MGW_STAGE_ENVFROM] = S(""),
                                     [MGW_STAGE_EOM] = S("i {rcpt_addr}")}})},
    {"a milter option negotiation may ask for macros of every stage", FROM_MILTER,
     MSG('O', .optneg = {.version = 6,
                         .actions = 0x1FF,
                         .protocol = 0x1FFFFF,
                         .symlist = {S("j"), S("{tls_version}"), S("{mail_addr}"), S("{rcpt_addr}"),
                                     S("i"), S("{msg_id}"), S("i")}})},
    {"a legacy set-symlist names one stage", FROM_MILTER,
     MSG('l', .symlist = {MGW_STAGE_EOH, S("i {auth_authen}")})},
    {"an add-header has a name and a value", FROM_MILTER,
     MSG('h', .header = {0, S("X-Spam"), S("yes\n\tscore=9")})},
    {"an insert-header has a position", FROM_MILTER,
     MSG('i', .header = {0, S("X-First"), S("top")})},
    {"a change-header may use the largest index", FROM_MILTER,
     MSG('m', .header = {0xFFFFFFFFu, S("Subject"), S("")})},
    {"a change-header with index 1 changes the first occurrence", FROM_MILTER,
     MSG('m', .header = {1, S("Subject"), S("[SPAM] hi")})},
    {"a replace-body chunk carries raw bytes", FROM_MILTER,
     MSG('b', .body = {binary_body, sizeof(binary_body)})},
    {"a replace-body chunk may be empty", FROM_MILTER, MSG('b', .body = {NULL, 0})},
    {"an add-recipient carries one address", FROM_MILTER, MSG('+', .text = S("<c@example.org>"))},
    {"an add-recipient with args carries address and args", FROM_MILTER,
     MSG('2', .rcpt = {S("<d@example.org>"), S("NOTIFY=NEVER")})},
    {"an add-recipient with args may omit the args", FROM_MILTER,
     MSG('2', .rcpt = {S("<d@example.org>"), {NULL, 0}})},
    {"a delete-recipient carries one address", FROM_MILTER, MSG('-', .text = S("<b@example.net>"))},
    {"a change-from carries address and args", FROM_MILTER,
     MSG('e', .rcpt = {S("<new@example.org>"), S("RET=HDRS ENVID=x")})},
    {"a change-from may omit the args", FROM_MILTER,
     MSG('e', .rcpt = {S("<new@example.org>"), {NULL, 0}})},
    {"a change-from may send an empty args string", FROM_MILTER,
     MSG('e', .rcpt = {S("<>"), S("")})},
    {"a quarantine carries a reason", FROM_MILTER, MSG('q', .text = S("held for review"))},
};

#define N_RT (sizeof(rt_cases) / sizeof(rt_cases[0]))

static uint8_t *encode_alloc(const struct mgw_milter_msg *m, size_t *n)
{
    ssize_t need = mgw_milter_encoded_len(m);
    uint8_t *buf;
    ssize_t r;

    if (need <= 0)
        return NULL;
    buf = malloc((size_t)need);
    r = mgw_milter_encode(m, buf, (size_t)need);
    if (r != need) {
        free(buf);
        return NULL;
    }
    *n = (size_t)need;
    return buf;
}

static void test_every_message_round_trips(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_RT; i++) {
        const struct rt_case *c = &rt_cases[i];
        struct mgw_milter_decoder dec = {c->dir, 0};
        struct mgw_milter_msg got;
        struct diff d;
        size_t n = 0;
        uint8_t *buf = encode_alloc(&c->msg, &n);
        ssize_t r;

        if (buf == NULL) {
            case_failed(c->name, "encode: got %zd, want a frame", mgw_milter_encoded_len(&c->msg));
            continue;
        }
        r = mgw_milter_decode(&dec, buf, n, &got);
        if (r != (ssize_t)n) {
            case_failed(c->name, "decode: got %zd (%s), want %zu", r, rc_name(r), n);
        } else {
            diff_msg(&d, &got, &c->msg);
            if (d.found)
                case_failed(c->name, "%s", d.text);
            check_views(&d, &got, buf, n);
            if (d.found)
                case_failed(c->name, "%s", d.text);
        }
        free(buf);
    }
    end_table();
}

static void test_every_split_is_partial_until_complete(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_RT; i++) {
        const struct rt_case *c = &rt_cases[i];
        struct mgw_milter_decoder dec = {c->dir, 0};
        struct mgw_milter_msg got, whole, untouched;
        struct diff d;
        size_t n = 0;
        uint8_t *buf = encode_alloc(&c->msg, &n);

        if (buf == NULL) {
            case_failed(c->name, "encode failed");
            continue;
        }
        if (mgw_milter_decode(&dec, buf, n, &whole) != (ssize_t)n) {
            case_failed(c->name, "whole frame did not decode");
            free(buf);
            continue;
        }
        /* Each prefix lives in its own exact-size allocation so that ASan catches any read
         * past len. */
        for (size_t k = 0; k <= n; k++) {
            uint8_t *part = malloc(k > 0 ? k : 1);
            ssize_t r;

            memcpy(part, buf, k);
            memset(&got, 0xA5, sizeof(got));
            memcpy(&untouched, &got, sizeof(got));
            r = mgw_milter_decode(&dec, part, k, &got);
            if (k < n && r != MGW_PARTIAL) {
                case_failed(c->name, "prefix of %zu/%zu bytes: got %zd (%s), want partial", k, n, r,
                            rc_name(r));
            } else if (k < n && memcmp(&got, &untouched, sizeof(got)) != 0) {
                case_failed(c->name, "prefix of %zu bytes: got *out modified, want untouched", k);
            } else if (k == n && r != (ssize_t)n) {
                case_failed(c->name, "full frame: got %zd, want %zu", r, n);
            } else if (k == n) {
                diff_msg(&d, &got, &whole);
                if (d.found)
                    case_failed(c->name, "full frame after splits: %s", d.text);
            }
            free(part);
        }
        free(buf);
    }
    end_table();
}

static void test_frames_back_to_back_decode_in_order(void **state)
{
    (void)state;
    for (int dir = FROM_MTA; dir <= FROM_MILTER; dir++) {
        const char *name = dir == FROM_MTA ? "all MTA commands in one buffer decode in order"
                                           : "all milter replies in one buffer decode in order";
        struct mgw_milter_decoder dec = {(enum mgw_milter_dir)dir, 0};
        uint8_t *all = NULL;
        size_t total = 0, off = 0;

        for (size_t i = 0; i < N_RT; i++) {
            size_t n = 0;
            uint8_t *one;

            if (rt_cases[i].dir != (enum mgw_milter_dir)dir)
                continue;
            one = encode_alloc(&rt_cases[i].msg, &n);
            assert_non_null(one);
            all = realloc(all, total + n);
            memcpy(all + total, one, n);
            total += n;
            free(one);
        }
        for (size_t i = 0; i < N_RT; i++) {
            struct mgw_milter_msg got;
            struct diff d;
            ssize_t r;

            if (rt_cases[i].dir != (enum mgw_milter_dir)dir)
                continue;
            r = mgw_milter_decode(&dec, all + off, total - off, &got);
            if (r <= 0) {
                case_failed(name, "at offset %zu (%s): got %zd, want a frame", off,
                            rt_cases[i].name, r);
                break;
            }
            diff_msg(&d, &got, &rt_cases[i].msg);
            if (d.found)
                case_failed(name, "%s: %s", rt_cases[i].name, d.text);
            off += (size_t)r;
        }
        if (off != total)
            case_failed(name, "consumed %zu bytes, want %zu", off, total);
        free(all);
    }
    end_table();
}

/* ---- Decoder error table ---- */

struct err_case {
    const char *name;
    enum mgw_milter_dir dir;
    uint32_t max_frame;
    const uint8_t *bytes;
    size_t len;
    ssize_t want;
};

static const struct err_case err_cases[] = {
    /* Framing */
    {"an empty buffer is partial", FROM_MTA, 0, BYTES(""), MGW_PARTIAL},
    {"three length bytes are partial", FROM_MTA, 0, BYTES("\0\0\0"), MGW_PARTIAL},
    {"a length without its command byte is partial", FROM_MTA, 0, BYTES("\0\0\0\x01"), MGW_PARTIAL},
    {"a truncated HELO is partial", FROM_MTA, 0, BYTES("\0\0\0\x05Hmx"), MGW_PARTIAL},
    {"a zero length is refused after four bytes", FROM_MTA, 0, BYTES("\0\0\0\0"), MGW_EFRAME_EMPTY},
    {"a zero length is refused even with bytes after it", FROM_MILTER, 0, BYTES("\0\0\0\0c"),
     MGW_EFRAME_EMPTY},
    {"length 0xFFFFFFFF is refused after four bytes", FROM_MTA, 0, BYTES("\xff\xff\xff\xff"),
     MGW_EFRAME_TOO_BIG},
    {"length 0xFFFFFFFF is refused in the reply direction too", FROM_MILTER, 0,
     BYTES("\xff\xff\xff\xff"
           "c"),
     MGW_EFRAME_TOO_BIG},
    {"one byte over the default maximum is refused", FROM_MTA, 0, BYTES("\0\x10\0\x06"),
     MGW_EFRAME_TOO_BIG},
    {"exactly the default maximum waits for the rest", FROM_MTA, 0,
     BYTES("\0\x10\0\x05"
           "B"),
     MGW_PARTIAL},
    {"a custom maximum of 16 refuses length 17", FROM_MTA, 16, BYTES("\0\0\0\x11"),
     MGW_EFRAME_TOO_BIG},
    {"a custom maximum of 16 accepts length 16 and waits", FROM_MTA, 16, BYTES("\0\0\0\x10"),
     MGW_PARTIAL},
    {"a custom maximum of 1 still allows a payload-less command", FROM_MTA, 1, BYTES("\0\0\0\x01T"),
     5},
    {"a custom maximum of 1 refuses a HELO", FROM_MTA, 1, BYTES("\0\0\0\x03Hx\0"),
     MGW_EFRAME_TOO_BIG},
    /* Command bytes per direction */
    {"a reply letter from the MTA is an unknown command", FROM_MTA, 0,
     BYTES("\0\0\0\x01"
           "c"),
     MGW_EUNKNOWN_CMD},
    {"a lower-case letter from the MTA is an unknown command", FROM_MTA, 0, BYTES("\0\0\0\x01h"),
     MGW_EUNKNOWN_CMD},
    {"an unassigned capital from the MTA is an unknown command", FROM_MTA, 0, BYTES("\0\0\0\x01Z"),
     MGW_EUNKNOWN_CMD},
    {"a NUL command byte is an unknown command", FROM_MTA, 0, BYTES("\0\0\0\x01\0"),
     MGW_EUNKNOWN_CMD},
    {"a command letter from the milter is an unknown reply", FROM_MILTER, 0,
     BYTES("\0\0\0\x03Hx\0"), MGW_EUNKNOWN_CMD},
    {"an unassigned letter from the milter is an unknown reply", FROM_MILTER, 0,
     BYTES("\0\0\0\x01x"), MGW_EUNKNOWN_CMD},
    {"an unknown command is reported only once the frame is complete", FROM_MTA, 0,
     BYTES("\0\0\0\x03Z"), MGW_PARTIAL},
    /* Malformed MTA payloads */
    {"an OPTNEG of 11 bytes is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x0cO\0\0\0\x06\0\0\x01\xff\0\x1f\xff"), MGW_EMALFORMED},
    {"an OPTNEG without payload is malformed", FROM_MTA, 0, BYTES("\0\0\0\x01O"), MGW_EMALFORMED},
    {"a macro packet without a stage letter is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x01"
           "D"),
     MGW_EMALFORMED},
    {"a macro packet with a name but no value is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x04"
           "DCj\0"),
     MGW_EMALFORMED},
    {"a macro packet with three strings is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x08"
           "DCj\0h\0v\0"),
     MGW_EMALFORMED},
    {"a macro packet with an unterminated value is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x06"
           "DCj\0hx"),
     MGW_EMALFORMED},
    {"a connect with an unterminated hostname is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x05"
           "Chost"),
     MGW_EMALFORMED},
    {"a connect without a family is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x06"
           "Chost\0"),
     MGW_EMALFORMED},
    {"a connect with family X is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x0a"
           "Ch\0X\0\x19"
           "1.2\0"),
     MGW_EMALFORMED},
    {"an IPv4 connect without a port is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x04"
           "Ch\0"
           "4"),
     MGW_EMALFORMED},
    {"an IPv4 connect with half a port is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x05"
           "Ch\0"
           "4\0"),
     MGW_EMALFORMED},
    {"an IPv4 connect without an address is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x06"
           "Ch\0"
           "4\0\x19"),
     MGW_EMALFORMED},
    {"an IPv6 connect with an unterminated address is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x09"
           "Ch\0"
           "6\0\x19::1"),
     MGW_EMALFORMED},
    {"a unix connect without a path is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x06"
           "Ch\0L\0\0"),
     MGW_EMALFORMED},
    {"an IPv4 connect with a byte after the address is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x0b"
           "Ch\0"
           "4\0\x19"
           "1.2\0x"),
     MGW_EMALFORMED},
    {"an unknown-family connect with a port after it is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x06"
           "Ch\0U\0\x19"),
     MGW_EMALFORMED},
    {"a HELO without payload is malformed", FROM_MTA, 0, BYTES("\0\0\0\x01H"), MGW_EMALFORMED},
    {"an unterminated HELO is malformed", FROM_MTA, 0, BYTES("\0\0\0\x03Hmx"), MGW_EMALFORMED},
    {"a HELO with two strings is malformed", FROM_MTA, 0, BYTES("\0\0\0\x06Hmx\0x\0"),
     MGW_EMALFORMED},
    {"a MAIL with zero strings is malformed", FROM_MTA, 0, BYTES("\0\0\0\x01M"), MGW_EMALFORMED},
    {"a RCPT with zero strings is malformed", FROM_MTA, 0, BYTES("\0\0\0\x01R"), MGW_EMALFORMED},
    {"a MAIL with an unterminated ESMTP arg is malformed", FROM_MTA, 0,
     BYTES("\0\0\0\x09M<a>\0SIZE"), MGW_EMALFORMED},
    {"a header with only a name is malformed", FROM_MTA, 0, BYTES("\0\0\0\x06LSubj\0"),
     MGW_EMALFORMED},
    {"a header with an unterminated value is malformed", FROM_MTA, 0, BYTES("\0\0\0\x07LSubj\0x"),
     MGW_EMALFORMED},
    {"a header with three strings is malformed", FROM_MTA, 0, BYTES("\0\0\0\x0aLSubj\0x\0y\0"),
     MGW_EMALFORMED},
    {"an empty header payload is malformed", FROM_MTA, 0, BYTES("\0\0\0\x01L"), MGW_EMALFORMED},
    {"an unterminated unknown command is malformed", FROM_MTA, 0, BYTES("\0\0\0\x04UFOO"),
     MGW_EMALFORMED},
    /* Malformed milter payloads */
    {"a reply OPTNEG of 8 bytes is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x09O\0\0\0\x06\0\0\0\0"), MGW_EMALFORMED},
    {"a reply OPTNEG with half a stage number is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x0fO\0\0\0\x06\0\0\x01\0\0\0\0\0\0\0"), MGW_EMALFORMED},
    {"a reply OPTNEG with a stage but no names is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x11O\0\0\0\x06\0\0\x01\0\0\0\0\0\0\0\0\0"), MGW_EMALFORMED},
    {"a reply OPTNEG with unterminated names is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x12O\0\0\0\x06\0\0\x01\0\0\0\0\0\0\0\0\0j"), MGW_EMALFORMED},
    {"a reply OPTNEG asking for stage 7 is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x13O\0\0\0\x06\0\0\x01\0\0\0\0\0\0\0\0\x07j\0"), MGW_EMALFORMED},
    {"a reply OPTNEG asking for stage 0xFFFFFFFF is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x13O\0\0\0\x06\0\0\x01\0\0\0\0\0\xff\xff\xff\xffj\0"), MGW_EMALFORMED},
    {"a reply OPTNEG naming one stage twice is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x19O\0\0\0\x06\0\0\x01\0\0\0\0\0\0\0\0\x02j\0\0\0\0\x02v\0"), MGW_EMALFORMED},
    {"a reply code without payload is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x01y"),
     MGW_EMALFORMED},
    {"an unterminated reply code is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x04y550"),
     MGW_EMALFORMED},
    {"an add-recipient with two strings is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x07+<a>\0x\0"),
     MGW_EMALFORMED},
    {"a delete-recipient without payload is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x01-"),
     MGW_EMALFORMED},
    {"a quarantine without payload is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x01q"),
     MGW_EMALFORMED},
    {"a set-symlist with half a stage is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x03l\0\0"),
     MGW_EMALFORMED},
    {"a set-symlist for stage 7 is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x07l\0\0\0\x07j\0"),
     MGW_EMALFORMED},
    {"a set-symlist with unterminated names is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x06l\0\0\0\x01j"), MGW_EMALFORMED},
    {"an add-header with only a name is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x03hX\0"),
     MGW_EMALFORMED},
    {"an insert-header with half an index is malformed", FROM_MILTER, 0, BYTES("\0\0\0\x03i\0\0"),
     MGW_EMALFORMED},
    {"a change-header with an index but no strings is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x05m\0\0\0\x01"), MGW_EMALFORMED},
    {"a change-header with a byte after the value is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x0am\0\0\0\x01X\0v\0!"), MGW_EMALFORMED},
    {"an add-recipient-with-args without payload is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x01"
           "2"),
     MGW_EMALFORMED},
    {"an add-recipient-with-args with unterminated args is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x07"
           "2<a>\0NO"),
     MGW_EMALFORMED},
    {"a change-from with three strings is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x09"
           "e<a>\0x\0y\0"),
     MGW_EMALFORMED},
    {"an unterminated change-from is malformed", FROM_MILTER, 0,
     BYTES("\0\0\0\x04"
           "e<a>"),
     MGW_EMALFORMED},
};

static void test_bad_input_gives_the_right_error(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        const struct err_case *c = &err_cases[i];
        struct mgw_milter_decoder dec = {c->dir, c->max_frame};
        struct mgw_milter_msg got;
        /* Exact-size copy: ASan flags any read past len. */
        uint8_t *copy = malloc(c->len > 0 ? c->len : 1);
        ssize_t r;

        memcpy(copy, c->bytes, c->len);
        r = mgw_milter_decode(&dec, copy, c->len, &got);
        if (r != c->want)
            case_failed(c->name, "got %zd (%s), want %zd (%s)", r, rc_name(r), c->want,
                        rc_name(c->want));
        free(copy);
    }
    end_table();
}

/* ---- Decoder leniency that is on purpose ---- */

struct ok_case {
    const char *name;
    enum mgw_milter_dir dir;
    const uint8_t *bytes;
    size_t len;
    struct mgw_milter_msg want;
};

static const struct ok_case ok_cases[] = {
    {"an MTA OPTNEG ignores bytes after its 12, as libmilter does", FROM_MTA,
     BYTES("\0\0\0\x15O\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff\0\0\0\0j\0\0\0"),
     MSG('O', .optneg = {.version = 6, .actions = 0x1FF, .protocol = 0x1FFFFF})},
    {"a DATA ignores trailing bytes, as libmilter does", FROM_MTA, BYTES("\0\0\0\x03Txy"),
     MSG('T', .text = {NULL, 0})},
    {"a continue ignores trailing bytes", FROM_MILTER,
     BYTES("\0\0\0\x02"
           "c!"),
     MSG('c', .text = {NULL, 0})},
    {"a macro packet for an unknown stage letter still decodes", FROM_MTA,
     BYTES("\0\0\0\x06"
           "DXa\0b\0"),
     MSG('D', .macro = {'X', LIST("a\0b\0", 2)})},
    {"a macro packet with only a stage letter has no pairs", FROM_MTA,
     BYTES("\0\0\0\x02"
           "DN"),
     MSG('D', .macro = {'N', LIST("", 0)})},
    {"an empty body chunk decodes", FROM_MTA,
     BYTES("\0\0\0\x01"
           "B"),
     MSG('B', .body = {NULL, 0})},
    {"a one-byte replace-body chunk decodes", FROM_MILTER,
     BYTES("\0\0\0\x02"
           "bZ"),
     MSG('b', .body = {(const uint8_t *)"Z", 1})},
};

static void test_deliberate_leniency_decodes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
        const struct ok_case *c = &ok_cases[i];
        struct mgw_milter_decoder dec = {c->dir, 0};
        struct mgw_milter_msg got;
        struct diff d;
        ssize_t r = mgw_milter_decode(&dec, c->bytes, c->len, &got);

        if (r != (ssize_t)c->len) {
            case_failed(c->name, "got %zd (%s), want %zu", r, rc_name(r), c->len);
            continue;
        }
        diff_msg(&d, &got, &c->want);
        if (d.found)
            case_failed(c->name, "%s", d.text);
    }
    end_table();
}

/* ---- A Postfix-shaped session start ---- */

static const uint8_t postfix_bytes[] =
    /* O: version 6, actions 0x1FF, protocol 0x1FFFFF */
    "\0\0\0\x0dO"
    "\0\0\0\x06"
    "\0\0\x01\xff"
    "\0\x1f\xff\xff"
    /* D C: Postfix's default connect macros */
    "\0\0\0\x6a"
    "DC"
    "j\0mail.example.org\0{daemon_name}\0smtpd\0{daemon_addr}\0"
    "127.0.0.1\0"
    "v\0Postfix 3.7.11\0_\0localhost [127.0.0.1]\0"
    /* C: "[127.0.0.1]" '4' port 12345 (0x3039) "127.0.0.1" */
    "\0\0\0\x1a"
    "C[127.0.0.1]\0"
    "4\x30\x39"
    "127.0.0.1\0"
    /* L: a folded Subject */
    "\0\0\0\x20"
    "LSubject\0a folded\n\tsubject line\0";

static void test_postfix_session_start_decodes(void **state)
{
    static const char macros[] = "j\0mail.example.org\0{daemon_name}\0smtpd\0{daemon_addr}\0"
                                 "127.0.0.1\0v\0Postfix 3.7.11\0_\0localhost [127.0.0.1]\0";
    static const char *const want_pairs[] = {"j",
                                             "mail.example.org",
                                             "{daemon_name}",
                                             "smtpd",
                                             "{daemon_addr}",
                                             "127.0.0.1",
                                             "v",
                                             "Postfix 3.7.11",
                                             "_",
                                             "localhost [127.0.0.1]"};
    const struct mgw_milter_msg want[] = {
        MSG('O', .optneg = {.version = 6, .actions = 0x1FF, .protocol = 0x1FFFFF}),
        MSG('D', .macro = {'C', {macros, sizeof(macros) - 1, 10}}),
        MSG('C', .connect = {S("[127.0.0.1]"), '4', 12345, S("127.0.0.1")}),
        MSG('L', .header = {0, S("Subject"), S("a folded\n\tsubject line")}),
    };
    const size_t want_sizes[] = {17, 110, 30, 36};
    struct mgw_milter_decoder dec = {FROM_MTA, 0};
    size_t total = sizeof(postfix_bytes) - 1, off = 0;
    const char *name = "a Postfix connect sequence decodes frame by frame";

    assert_int_equal(total, 193);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        struct mgw_milter_msg got;
        struct diff d;
        ssize_t r = mgw_milter_decode(&dec, postfix_bytes + off, total - off, &got);

        if (r != (ssize_t)want_sizes[i]) {
            case_failed(name, "frame %zu: got %zd (%s), want %zu", i, r, rc_name(r), want_sizes[i]);
            break;
        }
        diff_msg(&d, &got, &want[i]);
        if (d.found)
            case_failed(name, "frame %zu: %s", i, d.text);
        if (got.cmd == 'D') {
            struct mgw_str s;
            size_t pos = 0, k = 0;

            assert_int_equal(mgw_milter_stage_of_cmd(got.u.macro.stage_cmd), MGW_STAGE_CONNECT);
            while (mgw_milter_list_next(&got.u.macro.pairs, &pos, &s)) {
                if (k >= 10 || strcmp(s.ptr, want_pairs[k]) != 0)
                    case_failed(name, "macro string %zu: got \"%s\", want \"%s\"", k, s.ptr,
                                k < 10 ? want_pairs[k] : "(end)");
                k++;
            }
            if (k != 10)
                case_failed(name, "macro strings: got %zu, want 10", k);
        }
        off += (size_t)r;
    }
    if (off != total)
        case_failed(name, "consumed %zu, want %zu", off, total);
    end_table();
}

/* ---- Encoder errors ---- */

struct enc_case {
    const char *name;
    struct mgw_milter_msg msg;
    size_t cap; /* SIZE_MAX: use a big enough buffer */
    ssize_t want;
};

static const struct enc_case enc_cases[] = {
    {"a buffer one byte short is no_space", MSG('H', .helo = S("mx")), 7, MGW_ENOSPACE},
    {"a buffer that cannot hold the length is no_space", MSG('c', .text = {NULL, 0}), 3,
     MGW_ENOSPACE},
    {"a zero-size buffer is no_space", MSG('O', .optneg = {.version = 6}), 0, MGW_ENOSPACE},
    {"an exact-size buffer is enough", MSG('H', .helo = S("mx")), 8, 8},
    {"an unknown command byte is invalid", MSG('Z', .text = {NULL, 0}), SIZE_MAX, MGW_EINVAL},
    {"a NUL command byte is invalid", MSG('\0', .text = {NULL, 0}), SIZE_MAX, MGW_EINVAL},
    {"invalid wins over no_space", MSG('Z', .text = {NULL, 0}), 0, MGW_EINVAL},
    {"a HELO containing NUL is invalid", MSG('H', .helo = S("a\0b")), SIZE_MAX, MGW_EINVAL},
    {"a string with a NULL pointer and a length is invalid", MSG('H', .helo = {NULL, 3}), SIZE_MAX,
     MGW_EINVAL},
    {"a MAIL list without a final NUL is invalid", MSG('M', .args = {"<a>\0SIZE=1", 10, 2}),
     SIZE_MAX, MGW_EINVAL},
    {"a MAIL list whose count disagrees with its NULs is invalid",
     MSG('M', .args = LIST("<a>\0SIZE=1\0", 1)), SIZE_MAX, MGW_EINVAL},
    {"a MAIL with zero args is invalid", MSG('M', .args = LIST("", 0)), SIZE_MAX, MGW_EINVAL},
    {"a list with a NULL pointer and a length is invalid", MSG('R', .args = {NULL, 4, 1}), SIZE_MAX,
     MGW_EINVAL},
    {"a macro packet with an odd string count is invalid",
     MSG('D', .macro = {'C', LIST("j\0host\0v\0", 3)}), SIZE_MAX, MGW_EINVAL},
    {"a connect with family X is invalid", MSG('C', .connect = {S("h"), 'X', 25, S("1.2.3.4")}),
     SIZE_MAX, MGW_EINVAL},
    {"a connect with an address containing NUL is invalid",
     MSG('C', .connect = {S("h"), '4', 25, S("1.2\0.4")}), SIZE_MAX, MGW_EINVAL},
    {"a header name containing NUL is invalid", MSG('L', .header = {0, S("X\0Y"), S("v")}),
     SIZE_MAX, MGW_EINVAL},
    {"a header value containing NUL is invalid", MSG('h', .header = {0, S("X"), S("v\0w")}),
     SIZE_MAX, MGW_EINVAL},
    {"a body with a NULL pointer and a length is invalid", MSG('B', .body = {NULL, 5}), SIZE_MAX,
     MGW_EINVAL},
    {"macro names containing NUL are invalid",
     MSG('O', .optneg = {.version = 6, .symlist = {[2] = S("i\0j")}}), SIZE_MAX, MGW_EINVAL},
    {"a set-symlist for stage 7 is invalid", MSG('l', .symlist = {7, S("j")}), SIZE_MAX,
     MGW_EINVAL},
    {"change-from args containing NUL are invalid", MSG('e', .rcpt = {S("<a>"), S("X\0Y")}),
     SIZE_MAX, MGW_EINVAL},
    {"a reply code containing NUL is invalid", MSG('y', .text = S("550\0x")), SIZE_MAX, MGW_EINVAL},
};

static void test_encoder_refuses_what_it_cannot_encode(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(enc_cases) / sizeof(enc_cases[0]); i++) {
        const struct enc_case *c = &enc_cases[i];
        size_t cap = c->cap == SIZE_MAX ? 256 : c->cap;
        uint8_t *buf = malloc(cap > 0 ? cap : 1);
        ssize_t r = mgw_milter_encode(&c->msg, buf, cap);
        ssize_t len = mgw_milter_encoded_len(&c->msg);

        if (r != c->want)
            case_failed(c->name, "encode: got %zd (%s), want %zd (%s)", r, rc_name(r), c->want,
                        rc_name(c->want));
        if (c->want == MGW_EINVAL && len != MGW_EINVAL)
            case_failed(c->name, "encoded_len: got %zd, want %d", len, MGW_EINVAL);
        free(buf);
    }
    /* A NULL buffer can never hold a frame. */
    {
        struct mgw_milter_msg m = MSG('c', .text = {NULL, 0});
        ssize_t r = mgw_milter_encode(&m, NULL, 0);

        if (r != MGW_ENOSPACE)
            case_failed("a NULL buffer is no_space", "got %zd, want %d", r, MGW_ENOSPACE);
        r = mgw_milter_encode(NULL, NULL, 0);
        if (r != MGW_EINVAL)
            case_failed("a NULL message is invalid", "got %zd, want %d", r, MGW_EINVAL);
    }
    end_table();
}

static void test_encoder_writes_the_documented_bytes(void **state)
{
    static const struct {
        const char *name;
        struct mgw_milter_msg msg;
        const uint8_t *bytes;
        size_t len;
    } cases[] = {
        {"an unknown-family connect writes no port and no address",
         MSG('C', .connect = {S("h"), 'U', 25, S("ignored")}),
         BYTES("\0\0\0\x04"
               "Ch\0U")},
        {"an IPv4 connect writes the port in network order",
         MSG('C', .connect = {S("h"), '4', 12345, S("1.2.3.4")}),
         BYTES("\0\0\0\x0e"
               "Ch\0"
               "4\x30\x39"
               "1.2.3.4\0")},
        {"a reply OPTNEG appends lists in stage order",
         MSG('O', .optneg = {.version = 6,
                             .actions = 0x100,
                             .protocol = 0,
                             .symlist = {[5] = S("i"), [1] = S("")}}),
         BYTES("\0\0\0\x18O\0\0\0\x06\0\0\x01\0\0\0\0\0"
               "\0\0\0\x01\0"
               "\0\0\0\x05i\0")},
        {"a macro packet writes the stage letter then the pairs",
         MSG('D', .macro = {'M', LIST("i\0"
                                      "4A2\0",
                                      2)}),
         BYTES("\0\0\0\x08"
               "DMi\0"
               "4A2\0")},
        {"a change-from without args writes one string", MSG('e', .rcpt = {S("<>"), {NULL, 0}}),
         BYTES("\0\0\0\x04"
               "e<>\0")},
        {"an insert-header writes its index first", MSG('i', .header = {2, S("X"), S("v")}),
         BYTES("\0\0\0\x09i\0\0\0\x02X\0v\0")},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t buf[64];
        char g[160], w[160];
        ssize_t r = mgw_milter_encode(&cases[i].msg, buf, sizeof(buf));

        if (r < 0 || !same_bytes(buf, (size_t)r, cases[i].bytes, cases[i].len))
            case_failed(cases[i].name, "got %s, want %s",
                        r < 0 ? rc_name(r) : show(buf, (size_t)r, g, sizeof(g)),
                        show(cases[i].bytes, cases[i].len, w, sizeof(w)));
    }
    end_table();
}

/* ---- Lists, stages, names ---- */

static void test_lists_are_walked_and_counted(void **state)
{
    static const struct {
        const char *name;
        const char *data;
        size_t len;
        size_t want_count;
        const char *want_walk; /* strings joined by '|' */
    } cases[] = {
        {"two strings are counted and walked", "a\0bc\0", 5, 2, "a|bc"},
        {"an empty string in the middle is still a string", "a\0\0c\0", 5, 3, "a||c"},
        {"an unterminated tail is counted but not walked", "a\0bc", 4, 2, "a"},
        {"an empty list has no strings", "", 0, 0, ""},
        {"a NULL list has no strings", NULL, 7, 0, ""},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mgw_strlist l = mgw_milter_list_make(cases[i].data, cases[i].len);
        char walk[64] = "";
        struct mgw_str s;
        size_t pos = 0, n = 0;

        if (l.count != cases[i].want_count)
            case_failed(cases[i].name, "count: got %zu, want %zu", l.count, cases[i].want_count);
        while (mgw_milter_list_next(&l, &pos, &s)) {
            if (s.ptr[s.len] != '\0')
                case_failed(cases[i].name, "string %zu: got no NUL at ptr[len], want one", n);
            snprintf(walk + strlen(walk), sizeof(walk) - strlen(walk), "%s%s", n ? "|" : "", s.ptr);
            n++;
        }
        if (strcmp(walk, cases[i].want_walk) != 0)
            case_failed(cases[i].name, "walk: got \"%s\", want \"%s\"", walk, cases[i].want_walk);
    }
    end_table();
}

static void test_stage_letters_map_to_stages(void **state)
{
    static const struct {
        uint8_t cmd;
        int want;
    } cases[] = {
        {'C', MGW_STAGE_CONNECT},
        {'H', MGW_STAGE_HELO},
        {'M', MGW_STAGE_ENVFROM},
        {'R', MGW_STAGE_ENVRCPT},
        {'T', MGW_STAGE_DATA},
        {'E', MGW_STAGE_EOM},
        {'N', MGW_STAGE_EOH},
        {'U', -1},
        {'B', -1},
        {'L', -1},
        {'O', -1},
        {0, -1},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = mgw_milter_stage_of_cmd(cases[i].cmd);

        if (got != cases[i].want)
            case_failed("each D stage letter maps to its macro stage",
                        "letter 0x%02x: got %d, want %d", cases[i].cmd, got, cases[i].want);
    }
    end_table();
}

static void test_command_names_depend_on_direction(void **state)
{
    static const struct {
        uint8_t cmd;
        enum mgw_milter_dir dir;
        const char *want;
    } cases[] = {
        {'O', FROM_MTA, "OPTNEG"},        {'D', FROM_MTA, "MACRO"},
        {'C', FROM_MTA, "CONNECT"},       {'H', FROM_MTA, "HELO"},
        {'M', FROM_MTA, "MAIL"},          {'R', FROM_MTA, "RCPT"},
        {'T', FROM_MTA, "DATA"},          {'L', FROM_MTA, "HEADER"},
        {'N', FROM_MTA, "EOH"},           {'B', FROM_MTA, "BODY"},
        {'E', FROM_MTA, "BODYEOB"},       {'U', FROM_MTA, "UNKNOWN"},
        {'A', FROM_MTA, "ABORT"},         {'Q', FROM_MTA, "QUIT"},
        {'K', FROM_MTA, "QUIT_NC"},       {'c', FROM_MTA, "?"},
        {'c', FROM_MILTER, "CONTINUE"},   {'a', FROM_MILTER, "ACCEPT"},
        {'r', FROM_MILTER, "REJECT"},     {'t', FROM_MILTER, "TEMPFAIL"},
        {'d', FROM_MILTER, "DISCARD"},    {'s', FROM_MILTER, "SKIP"},
        {'y', FROM_MILTER, "REPLYCODE"},  {'p', FROM_MILTER, "PROGRESS"},
        {'f', FROM_MILTER, "CONN_FAIL"},  {'4', FROM_MILTER, "SHUTDOWN"},
        {'O', FROM_MILTER, "OPTNEG"},     {'l', FROM_MILTER, "SETSYMLIST"},
        {'h', FROM_MILTER, "ADDHEADER"},  {'i', FROM_MILTER, "INSHEADER"},
        {'m', FROM_MILTER, "CHGHEADER"},  {'b', FROM_MILTER, "REPLBODY"},
        {'+', FROM_MILTER, "ADDRCPT"},    {'2', FROM_MILTER, "ADDRCPT_PAR"},
        {'-', FROM_MILTER, "DELRCPT"},    {'e', FROM_MILTER, "CHGFROM"},
        {'q', FROM_MILTER, "QUARANTINE"}, {'H', FROM_MILTER, "?"},
        {0xff, FROM_MILTER, "?"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = mgw_milter_cmd_name(cases[i].cmd, cases[i].dir);

        if (strcmp(got, cases[i].want) != 0)
            case_failed("each command byte has its libmilter name in its direction",
                        "'%c' dir %d: got %s, want %s", cases[i].cmd, (int)cases[i].dir, got,
                        cases[i].want);
    }
    end_table();
}

static void test_error_codes_have_stable_names(void **state)
{
    static const struct {
        int code;
        const char *want;
    } cases[] = {
        {MGW_OK, "ok"},
        {MGW_PARTIAL, "partial"},
        {MGW_EPROTO, "protocol_error"},
        {MGW_EFRAME_EMPTY, "frame_empty"},
        {MGW_EFRAME_TOO_BIG, "frame_too_big"},
        {MGW_EUNKNOWN_CMD, "unknown_command"},
        {MGW_EMALFORMED, "malformed"},
        {MGW_ENOSPACE, "no_space"},
        {MGW_EINVAL, "invalid"},
        {MGW_EORDER, "out_of_order"},
        {MGW_ETIMEOUT, "timeout"},
        {MGW_EIO, "io_error"},
        {MGW_EUNAVAIL, "unavailable"},
        {-13, "unknown_error"},
        {1, "unknown_error"},
        {-2147483647 - 1, "unknown_error"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = mgw_strerror(cases[i].code);

        if (got == NULL || strcmp(got, cases[i].want) != 0)
            case_failed("each error code has a stable snake_case name", "%d: got %s, want %s",
                        cases[i].code, got ? got : "NULL", cases[i].want);
    }
    end_table();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_round_trips),
        cmocka_unit_test(test_every_split_is_partial_until_complete),
        cmocka_unit_test(test_frames_back_to_back_decode_in_order),
        cmocka_unit_test(test_bad_input_gives_the_right_error),
        cmocka_unit_test(test_deliberate_leniency_decodes),
        cmocka_unit_test(test_postfix_session_start_decodes),
        cmocka_unit_test(test_encoder_refuses_what_it_cannot_encode),
        cmocka_unit_test(test_encoder_writes_the_documented_bytes),
        cmocka_unit_test(test_lists_are_walked_and_counted),
        cmocka_unit_test(test_stage_letters_map_to_stages),
        cmocka_unit_test(test_command_names_depend_on_direction),
        cmocka_unit_test(test_error_codes_have_stable_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
