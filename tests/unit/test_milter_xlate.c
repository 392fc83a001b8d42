/*
 * test_milter_xlate.c - unit tests of the milter backend's translation (milter_xlate.h).
 *
 * The properties that matter are round trips through the whole gateway:
 *  - an MTA event becomes an Event (filter_proto.h, as for every filter), is packed and
 *    unpacked, and becomes frames for the milter again: they must be the MTA's frames,
 *    byte for byte, macros included;
 *  - a milter's answer becomes a Reply, then the verdict, SMTP text and modification
 *    frames the bridge gives the MTA (mgw_proto_reply_answer): they must be what the
 *    milter said.
 * Every case frees what it built, so a sanitizer build also checks for leaks.
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

#include "miltergw/v1/filter.pb-c.h"
#include "mgw/backend.h"
#include "mgw/error.h"
#include "mgw/filter_proto.h"
#include "mgw/milter_codec.h"
#include "mgw/milter_xlate.h"

/* A frame from its command letter and a payload literal (NULs included). */
#define F(cmd, lit) frame_of((cmd), (lit), sizeof(lit) - 1)

struct bytes {
    uint8_t p[4096];
    size_t len;
};

static struct bytes frame_of(uint8_t cmd, const char *payload, size_t n)
{
    struct bytes b;
    uint32_t len = (uint32_t)n + 1;

    b.p[0] = (uint8_t)(len >> 24);
    b.p[1] = (uint8_t)(len >> 16);
    b.p[2] = (uint8_t)(len >> 8);
    b.p[3] = (uint8_t)len;
    b.p[4] = cmd;
    memcpy(b.p + 5, payload, n);
    b.len = n + 5;
    return b;
}

static struct bytes cat(struct bytes a, struct bytes b)
{
    memcpy(a.p + a.len, b.p, b.len);
    a.len += b.len;
    return a;
}

static const struct bytes none;

static void render(char *out, size_t cap, const uint8_t *p, size_t n)
{
    size_t o = 0;

    for (size_t i = 0; i < n && o + 5 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, p[i] >= 0x20 && p[i] < 0x7f ? "%c" : "\\x%02x",
                              p[i]);
    out[o] = '\0';
}

static void check_bytes(const char *name, const char *what, const uint8_t *got, size_t glen,
                        const uint8_t *want, size_t wlen)
{
    char g[1024], w[1024];

    if (glen == wlen && (wlen == 0 || memcmp(got, want, wlen) == 0))
        return;
    render(g, sizeof g, got, glen);
    render(w, sizeof w, want, wlen);
    case_failed(name, "%s: got \"%s\", want \"%s\"", what, g, w);
}

/* ---- events: MTA frames -> Event -> milter frames ---- */

struct event_case {
    const char *name;
    struct bytes macro; /* a 'D' before the command, or none */
    struct bytes cmd;
    uint32_t protocol;  /* the milter's answer */
    int sent, replies;
};

static void test_an_mta_event_reaches_the_milter_as_the_mta_sent_it(void **state)
{
    const struct event_case cases[] = {
        {"connect over IPv4 with its macros", F('D', "Cj\0mx.example.org\0{daemon_name}\0smtpd\0"),
         F('C', "client.example.net\0" "4\x00\x19" "192.0.2.1\0"), 0, 1, 1},
        {"connect over IPv6", none, F('C', "[2001:db8::1]\0" "6\x04\x01" "2001:db8::1\0"), 0, 1,
         1},
        {"connect from an unknown family carries no port nor address", none,
         F('C', "localhost\0U"), 0, 1, 1},
        {"helo", F('D', "H{tls_version}\0TLSv1.3\0"), F('H', "client.example.net\0"), 0, 1, 1},
        {"mail with ESMTP args", F('D', "M{mail_addr}\0a@example.org\0"),
         F('M', "<a@example.org>\0SIZE=1000\0BODY=8BITMIME\0"), 0, 1, 1},
        {"rcpt", F('D', "Ri\0ABC123\0"), F('R', "<b@example.org>\0NOTIFY=NEVER\0"), 0, 1, 1},
        {"data", none, F('T', ""), 0, 1, 1},
        {"a header value exactly as received", none, F('L', "Subject\0 two  spaces\tand tab\0"),
         0, 1, 1},
        {"end of headers", none, F('N', ""), 0, 1, 1},
        {"a body chunk with CRLF and binary bytes", none, F('B', "line\r\n\x01\xff\r\n"), 0, 1,
         1},
        {"end of message with its macros", F('D', "Ei\0ABC123\0"), F('E', ""), 0, 1, 1},
        {"an unknown command", none, F('U', "HELP ME\0"), 0, 1, 1},
        {"abort is sent and never answered", none, F('A', ""), 0, 1, 0},
        {"helo negotiated away is not sent, its macros are", F('D', "Hj\0mx\0"),
         F('H', "client\0"), MGW_SMFIP_NOHELO, 0, 0},
        {"a header the milter does not answer (NR_HDR) is sent", none, F('L', "X\0y\0"),
         MGW_SMFIP_NR_HDR, 1, 0},
        {"end of message is always answered", none, F('E', ""), MGW_SMFIP_NR_BODY, 1, 1},
    };
    struct mgw_milter_decoder dec = {0};
    struct mgw_proto_scratch sc = {0};

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        const struct event_case *c = &cases[i];
        struct mgw_milter_msg cmd, mac;
        struct mgw_event ev = {.msg = &cmd};
        struct mgw_proto_event pe;
        struct mgw_bytes out = {0};
        struct mgw_xlate_sent what;
        Miltergw__V1__Event *back;
        uint8_t *packed;
        size_t plen;
        struct bytes want = c->macro;

        if (mgw_milter_decode(&dec, c->cmd.p, c->cmd.len, &cmd) != (ssize_t)c->cmd.len) {
            case_failed(c->name, "the command does not decode");
            continue;
        }
        if (c->macro.len > 0) {
            if (mgw_milter_decode(&dec, c->macro.p, c->macro.len, &mac) != (ssize_t)c->macro.len)
                fail_msg("%s: macro frame does not decode", c->name);
            ev.macros = &mac.u.macro.pairs;
        }
        assert_int_equal(mgw_proto_event_build(&pe, &sc, 7, &ev), 0);
        plen = protobuf_c_message_get_packed_size(&pe.ev.base);
        packed = malloc(plen + 1);
        protobuf_c_message_pack(&pe.ev.base, packed);
        back = miltergw__v1__event__unpack(NULL, plen, packed);
        assert_non_null(back);
        assert_int_equal(mgw_xlate_event(back, c->protocol, &out, &what), 0);
        if (c->sent)
            want = cat(want, c->cmd);
        check_bytes(c->name, "frames", out.p, out.len, want.p, want.len);
        if (what.cmd != cmd.cmd || what.sent != c->sent || what.replies != c->replies)
            case_failed(c->name, "cmd %c sent %d replies %d, want %c %d %d", what.cmd, what.sent,
                        what.replies, cmd.cmd, c->sent, c->replies);
        protobuf_c_message_free_unpacked(&back->base, NULL);
        free(packed);
        mgw_bytes_clear(&out);
        mgw_proto_scratch_reset(&sc);
    }
    mgw_proto_scratch_free(&sc);
    end_table();
}

static void test_a_session_start_sends_nothing_and_a_batch_is_refused(void **state)
{
    Miltergw__V1__Event ev = MILTERGW__V1__EVENT__INIT;
    Miltergw__V1__SessionStart start = MILTERGW__V1__SESSION_START__INIT;
    Miltergw__V1__EventBatch batch = MILTERGW__V1__EVENT_BATCH__INIT;
    struct mgw_bytes out = {0};
    struct mgw_xlate_sent what;

    (void)state;
    ev.event_case = MILTERGW__V1__EVENT__EVENT_START;
    ev.start = &start;
    assert_int_equal(mgw_xlate_event(&ev, 0, &out, &what), 0);
    assert_int_equal(what.cmd, 0);
    assert_int_equal(out.len, 0);
    ev.event_case = MILTERGW__V1__EVENT__EVENT_BATCH;
    ev.batch = &batch;
    assert_int_equal(mgw_xlate_event(&ev, 0, &out, &what), MGW_EINVAL);
    mgw_bytes_clear(&out);
}

/* ---- answers: milter frames -> Reply -> what the MTA is given ---- */

struct answer_case {
    const char *name;
    struct bytes in;          /* the milter's frames, the verdict last */
    uint8_t cmd;              /* the event answered */
    enum mgw_verdict_kind kind;
    const char *reply;        /* the SMTP reply the MTA gets, or NULL */
    struct bytes mods;        /* the modification frames the MTA gets */
};

static void test_a_milter_answer_reaches_the_mta_as_the_milter_gave_it(void **state)
{
    const struct answer_case cases[] = {
        {"continue", F('c', ""), 'M', MGW_VERDICT_CONTINUE, NULL, none},
        {"accept", F('a', ""), 'C', MGW_VERDICT_ACCEPT, NULL, none},
        {"reject", F('r', ""), 'R', MGW_VERDICT_REJECT, NULL, none},
        {"tempfail", F('t', ""), 'M', MGW_VERDICT_TEMPFAIL, NULL, none},
        {"discard", F('d', ""), 'E', MGW_VERDICT_DISCARD, NULL, none},
        {"skip", F('s', ""), 'B', MGW_VERDICT_SKIP, NULL, none},
        {"connection failure is a tempfail", F('f', ""), 'C', MGW_VERDICT_TEMPFAIL, NULL, none},
        {"shutdown is a tempfail", F('4', ""), 'H', MGW_VERDICT_TEMPFAIL, NULL, none},
        {"a 5xx reply code with enhanced status", F('y', "550 5.7.1 go away\0"), 'R',
         MGW_VERDICT_REJECT, "550 5.7.1 go away", none},
        {"a 4xx reply code without enhanced status", F('y', "451 try later\0"), 'M',
         MGW_VERDICT_TEMPFAIL, "451 try later", none},
        {"a multi-line reply", F('y', "550-5.7.1 first\r\n550 5.7.1 second\0"), 'E',
         MGW_VERDICT_REJECT, "550-5.7.1 first\r\n550 5.7.1 second", none},
        {"every modification, in order",
         cat(cat(cat(cat(cat(cat(cat(F('h', "X-A\0one\0"), F('i', "\0\0\0\0X-B\0two\0")),
                                 F('m', "\0\0\0\x02Subject\0\0")),
                             F('+', "<c@example.org>\0")),
                         F('2', "<d@example.org>\0NOTIFY=NEVER ORCPT=rfc822;d@example.org\0")),
                     F('-', "<b@example.org>\0")),
                 F('e', "<s@example.org>\0RET=HDRS\0")),
             cat(F('q', "held for review\0"), F('a', ""))),
         'E', MGW_VERDICT_ACCEPT, NULL,
         cat(cat(cat(cat(cat(cat(cat(F('h', "X-A\0one\0"), F('i', "\0\0\0\0X-B\0two\0")),
                                 F('m', "\0\0\0\x02Subject\0\0")),
                             F('+', "<c@example.org>\0")),
                         F('2', "<d@example.org>\0NOTIFY=NEVER ORCPT=rfc822;d@example.org\0")),
                     F('-', "<b@example.org>\0")),
                 F('e', "<s@example.org>\0RET=HDRS\0")),
             F('q', "held for review\0"))},
        {"a new body in several frames is one body",
         cat(cat(F('b', "new "), F('b', "body\r\n")), F('c', "")), 'E', MGW_VERDICT_CONTINUE,
         NULL, F('b', "new body\r\n")},
        {"a change of sender without args", cat(F('e', "<s@example.org>\0"), F('c', "")), 'E',
         MGW_VERDICT_CONTINUE, NULL, F('e', "<s@example.org>\0")},
    };
    struct mgw_milter_decoder dec = {.dir = MGW_MILTER_FROM_MILTER};
    struct mgw_proto_scratch sc = {0};

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        const struct answer_case *c = &cases[i];
        struct mgw_xlate_reply x = {0};
        Miltergw__V1__Reply *r = NULL;
        struct mgw_proto_answer pa;
        const char *why = NULL;
        size_t off = 0;
        struct bytes got = {.len = 0};

        while (r == NULL && off < c->in.len) {
            struct mgw_milter_msg m;
            ssize_t n = mgw_milter_decode(&dec, c->in.p + off, c->in.len - off, &m);

            assert_true(n > 0);
            off += (size_t)n;
            assert_true(mgw_xlate_reply_add(&x, 9, &m, &r, &why) >= 0);
        }
        if (r == NULL || off != c->in.len) {
            case_failed(c->name, "the answer did not end with its last frame");
            mgw_xlate_reply_clear(&x);
            continue;
        }
        assert_int_equal(r->event_id, 9);
        assert_int_equal(mgw_proto_reply_answer(r, c->cmd, &sc, &pa, &why), 0);
        if (pa.kind != c->kind)
            case_failed(c->name, "verdict %s, want %s", mgw_verdict_name(pa.kind),
                        mgw_verdict_name(c->kind));
        if ((pa.reply == NULL) != (c->reply == NULL) ||
            (c->reply != NULL && strcmp(pa.reply, c->reply) != 0))
            case_failed(c->name, "reply \"%s\", want \"%s\"", str_or_null(pa.reply),
                        str_or_null(c->reply));
        for (size_t k = 0; k < pa.nmods; k++) {
            ssize_t n = mgw_milter_encode(&pa.mods[k], got.p + got.len, sizeof got.p - got.len);

            assert_true(n > 0);
            got.len += (size_t)n;
        }
        check_bytes(c->name, "modifications", got.p, got.len, c->mods.p, c->mods.len);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        mgw_xlate_reply_clear(&x);
        mgw_proto_scratch_reset(&sc);
    }
    mgw_proto_scratch_free(&sc);
    end_table();
}

static void test_progress_is_a_progress_reply_and_leaves_the_answer_open(void **state)
{
    struct mgw_milter_decoder dec = {.dir = MGW_MILTER_FROM_MILTER};
    struct bytes in = cat(cat(F('h', "X\0y\0"), F('p', "")), F('c', ""));
    struct mgw_xlate_reply x = {0};
    Miltergw__V1__Reply *r = NULL;
    const char *why = NULL;
    struct mgw_milter_msg m;
    size_t off = 0;
    ssize_t n;

    (void)state;
    n = mgw_milter_decode(&dec, in.p, in.len, &m);
    off += (size_t)n;
    assert_int_equal(mgw_xlate_reply_add(&x, 3, &m, &r, &why), 0);
    n = mgw_milter_decode(&dec, in.p + off, in.len - off, &m);
    off += (size_t)n;
    assert_int_equal(mgw_xlate_reply_add(&x, 3, &m, &r, &why), 1);
    assert_int_equal(r->verdict, MILTERGW__V1__VERDICT__VERDICT_PROGRESS);
    assert_int_equal(r->n_modifications, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    n = mgw_milter_decode(&dec, in.p + off, in.len - off, &m);
    assert_int_equal(mgw_xlate_reply_add(&x, 3, &m, &r, &why), 1);
    assert_int_equal(r->verdict, MILTERGW__V1__VERDICT__VERDICT_CONTINUE);
    assert_int_equal(r->n_modifications, 1); /* the header before the progress */
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_frames_that_answer_nothing_are_out_of_contract(void **state)
{
    const struct {
        const char *name;
        struct bytes in;
    } cases[] = {
        {"a reply code that is no refusal", F('y', "250 ok\0")},
        {"a reply code that is too short", F('y', "55\0")},
        {"an OPTNEG in the middle of a session",
         F('O', "\0\0\0\x06\0\0\0\0\0\0\0\0")},
    };
    struct mgw_milter_decoder dec = {.dir = MGW_MILTER_FROM_MILTER};

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_xlate_reply x = {0};
        Miltergw__V1__Reply *r = NULL;
        const char *why = NULL;
        struct mgw_milter_msg m;

        assert_true(mgw_milter_decode(&dec, cases[i].in.p, cases[i].in.len, &m) > 0);
        if (mgw_xlate_reply_add(&x, 1, &m, &r, &why) != MGW_EPROTO || why == NULL)
            case_failed(cases[i].name, "not refused");
        mgw_xlate_reply_clear(&x);
    }
    end_table();
}

/* ---- negotiation ---- */

static void test_the_offer_never_exceeds_what_the_mta_granted(void **state)
{
    struct mgw_milter_optneg o;

    (void)state;
    mgw_xlate_offer(MGW_SMFIF_ADDHDRS | MGW_SMFIF_QUARANTINE, &o);
    assert_int_equal(o.version, 6);
    assert_int_equal(o.actions, MGW_SMFIF_ADDHDRS | MGW_SMFIF_QUARANTINE | MGW_SMFIF_SETSYMLIST);
    assert_int_equal(o.protocol & (MGW_SMFIP_RCPT_REJ | MGW_SMFIP_HDR_LEADSPC), 0);
    assert_int_equal(o.protocol & MGW_SMFIP_NR_HDR, MGW_SMFIP_NR_HDR);
    assert_int_equal(o.protocol & MGW_SMFIP_NOBODY, MGW_SMFIP_NOBODY);
}

static void test_an_optneg_answer_is_a_declaration(void **state)
{
    struct mgw_milter_optneg ans = {
        .version = 6,
        .actions = MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGBODY | MGW_SMFIF_SETSYMLIST,
        .protocol = MGW_SMFIP_NOCONNECT | MGW_SMFIP_NOHELO | MGW_SMFIP_NOUNKNOWN |
                    MGW_SMFIP_NODATA | MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_EOH | MGW_SMFIP_SKIP,
    };
    struct mgw_policy_decl d;
    char mem[64];

    (void)state;
    ans.symlist[MGW_STAGE_ENVFROM] = (struct mgw_str){"{auth_authen} i", 15};
    mgw_xlate_decl(&ans, &d, mem, sizeof mem);
    assert_int_equal(d.events, MGW_POLICY_EV_MAIL | MGW_POLICY_EV_RCPT | MGW_POLICY_EV_HEADER |
                                   MGW_POLICY_EV_EOH | MGW_POLICY_EV_BODY | MGW_POLICY_EV_EOM);
    assert_int_equal(d.observe_only, MGW_POLICY_EV_HEADER | MGW_POLICY_EV_EOH);
    assert_int_equal(d.actions, MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGBODY);
    assert_string_equal(d.macros[MGW_STAGE_ENVFROM], "{auth_authen} i");
    assert_null(d.macros[MGW_STAGE_CONNECT]);
    /* A list that does not fit the storage is left out, never cut. */
    mgw_xlate_decl(&ans, &d, mem, 10);
    assert_null(d.macros[MGW_STAGE_ENVFROM]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_an_mta_event_reaches_the_milter_as_the_mta_sent_it),
        cmocka_unit_test(test_a_session_start_sends_nothing_and_a_batch_is_refused),
        cmocka_unit_test(test_a_milter_answer_reaches_the_mta_as_the_milter_gave_it),
        cmocka_unit_test(test_progress_is_a_progress_reply_and_leaves_the_answer_open),
        cmocka_unit_test(test_frames_that_answer_nothing_are_out_of_contract),
        cmocka_unit_test(test_the_offer_never_exceeds_what_the_mta_granted),
        cmocka_unit_test(test_an_optneg_answer_is_a_declaration),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
