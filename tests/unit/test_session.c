/*
 * test_session.c - the MTA session engine on a real event loop.
 *
 * Each case writes an MTA's whole side of a conversation into one end of a socketpair()
 * (the session answers one command at a time, so pre-writing is faithful), runs the
 * event loop until the session ends, then decodes everything the session wrote back and
 * compares it with what a milter must answer. The fake backend records what reached it.
 * Every case runs twice: with synchronous and with asynchronous backend answers.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../backend_fake.h"
#include "mgw/error.h"
#include "mgw/log.h"
#include "mgw/session.h"

/* ---- building the MTA's side ---- */

struct script {
    uint8_t buf[1 << 18];
    size_t len;
};

static void put(struct script *sc, const struct mgw_milter_msg *m)
{
    ssize_t n = mgw_milter_encode(m, sc->buf + sc->len, sizeof sc->buf - sc->len);

    assert_true(n > 0);
    sc->len += (size_t)n;
}

static void put_raw(struct script *sc, const void *p, size_t n)
{
    memcpy(sc->buf + sc->len, p, n);
    sc->len += n;
}

static void put_simple(struct script *sc, uint8_t cmd)
{
    struct mgw_milter_msg m = {.cmd = cmd};

    put(sc, &m);
}

static void put_optneg(struct script *sc, uint32_t version, uint32_t actions, uint32_t protocol)
{
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_OPTNEG};

    m.u.optneg.version = version;
    m.u.optneg.actions = actions;
    m.u.optneg.protocol = protocol;
    put(sc, &m);
}

/* `pairs` is "name\0value\0..." with its length. */
static void put_macro(struct script *sc, uint8_t stage_cmd, const char *pairs, size_t len)
{
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_MACRO};

    m.u.macro.stage_cmd = stage_cmd;
    m.u.macro.pairs = mgw_milter_list_make(pairs, len);
    put(sc, &m);
}

static void put_connect(struct script *sc, const char *host)
{
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_CONNECT};

    m.u.connect.hostname = (struct mgw_str){host, strlen(host)};
    m.u.connect.family = '4';
    m.u.connect.port = 25;
    m.u.connect.address = (struct mgw_str){"127.0.0.1", 9};
    put(sc, &m);
}

static void put_str_cmd(struct script *sc, uint8_t cmd, const char *s)
{
    struct mgw_milter_msg m = {.cmd = cmd};

    if (cmd == MGW_SMFIC_MAIL || cmd == MGW_SMFIC_RCPT)
        m.u.args = mgw_milter_list_make(s, strlen(s) + 1);
    else if (cmd == MGW_SMFIC_HELO)
        m.u.helo = (struct mgw_str){s, strlen(s)};
    else
        m.u.unknown = (struct mgw_str){s, strlen(s)};
    put(sc, &m);
}

static void put_header(struct script *sc, const char *name, const char *value)
{
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_HEADER};

    m.u.header.name = (struct mgw_str){name, strlen(name)};
    m.u.header.value = (struct mgw_str){value, strlen(value)};
    put(sc, &m);
}

static void put_body(struct script *sc, uint8_t cmd, const char *data)
{
    struct mgw_milter_msg m = {.cmd = cmd};

    m.u.body.data = (const uint8_t *)data;
    m.u.body.len = strlen(data);
    put(sc, &m);
}

static void put_v6(struct script *sc)
{
    put_optneg(sc, 6, MGW_SMFI_CURR_ACTS, MGW_SMFI_CURR_PROT);
}

/* One message, as Postfix sends it, ending with its ABORT. */
static void put_message(struct script *sc, const char *from)
{
    put_macro(sc, 'M', "{mail_addr}\0a@x\0", sizeof "{mail_addr}\0a@x\0" - 1);
    put_str_cmd(sc, MGW_SMFIC_MAIL, from);
    put_macro(sc, 'R', "{rcpt_addr}\0b@y\0", sizeof "{rcpt_addr}\0b@y\0" - 1);
    put_str_cmd(sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(sc, MGW_SMFIC_DATA);
    put_header(sc, "Subject", "hello");
    put_header(sc, "X-Folded", "a\n\tb");
    put_simple(sc, MGW_SMFIC_EOH);
    put_body(sc, MGW_SMFIC_BODY, "line\r\n");
    put_body(sc, MGW_SMFIC_BODYEOB, "");
    put_simple(sc, MGW_SMFIC_ABORT);
}

static void put_greeting(struct script *sc)
{
    put_v6(sc);
    put_macro(sc, 'C', "j\0mx.example\0_\0client [127.0.0.1]\0", sizeof "j\0mx.example\0_\0client [127.0.0.1]\0" - 1);
    put_connect(sc, "[127.0.0.1]");
    put_macro(sc, 'H', "", sizeof "" - 1);
    put_str_cmd(sc, MGW_SMFIC_HELO, "client.example");
}

/* ---- running a conversation ---- */

struct harness {
    struct event_base *base;
    struct fake_backend fake;
    struct mgw_server *srv;
    int mta;
    int timed_out;
    int keep_open; /* do not send EOF after the script */
    struct mgw_milter_msg replies[512];
    int nreplies;
    uint8_t in[1 << 18];
    size_t inlen;
};

static void on_empty(void *arg)
{
    event_base_loopbreak(arg);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct harness *h = arg;

    h->timed_out = 1;
    event_base_loopbreak(h->base);
}

static int setup(void **state)
{
    struct harness *h = calloc(1, sizeof *h);

    h->base = event_base_new();
    fake_init(&h->fake, h->base);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct harness *h = *state;

    mgw_server_free(h->srv);
    assert_int_equal(h->fake.open_sessions, 0);
    event_base_free(h->base);
    if (h->mta >= 0)
        close(h->mta);
    free(h);
    return 0;
}

/* Write the script, run until the session ends (bounded), decode every reply. Returns
 * the decoder status of the reply stream: 0 if it decoded completely. */
static void run(struct harness *h, const struct script *sc, const struct mgw_server_config *cfg)
{
    struct mgw_server_config def = {0};
    struct mgw_milter_decoder dec = {.dir = MGW_MILTER_FROM_MILTER};
    struct timeval limit = {10, 0};
    struct event *deadline;
    int sv[2];
    size_t off = 0;
    ssize_t n;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* Room for a frame of 64 KiB and more: the replies are read only at the end. */
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &(int){1 << 20}, sizeof(int));
    h->srv = mgw_server_new(h->base, cfg ? cfg : &def, &h->fake.base);
    mgw_server_set_empty_cb(h->srv, on_empty, h->base);
    assert_int_equal(mgw_server_adopt(h->srv, sv[0], "test"), 0);
    h->mta = sv[1];
    assert_int_equal(write(h->mta, sc->buf, sc->len), (ssize_t)sc->len);
    /* An MTA that stops mid-frame is seen as EOF, as when it dies. */
    if (!h->keep_open)
        shutdown(h->mta, SHUT_WR);
    deadline = evtimer_new(h->base, on_deadline, h);
    evtimer_add(deadline, &limit);
    event_base_dispatch(h->base);
    event_free(deadline);
    if (h->timed_out)
        fail_msg("session did not end within 10 s");
    assert_int_equal(mgw_server_session_count(h->srv), 0);

    while ((n = recv(h->mta, h->in + h->inlen, sizeof h->in - h->inlen, MSG_DONTWAIT)) > 0)
        h->inlen += (size_t)n;
    while (off < h->inlen) {
        ssize_t r = mgw_milter_decode(&dec, h->in + off, h->inlen - off, &h->replies[h->nreplies]);

        if (r < 0)
            fail_msg("reply stream does not decode at byte %zu: got %s", off, mgw_strerror((int)r));
        off += (size_t)r;
        h->nreplies++;
    }
}

/* The reply letters as a string, for readable comparisons ("Occcc..."). */
static const char *reply_letters(struct harness *h)
{
    static char s[600];
    int i;

    for (i = 0; i < h->nreplies && i < (int)sizeof s - 1; i++)
        s[i] = (char)h->replies[i].cmd;
    s[i] = '\0';
    return s;
}

#define assert_replies(h, want)                                                            \
    do {                                                                                   \
        const char *got_ = reply_letters(h);                                               \
        if (strcmp(got_, (want)) != 0)                                                     \
            fail_msg("replies: got \"%s\", want \"%s\"", got_, (want));                    \
    } while (0)

/* ---- cases ---- */

static void postfix_session_with_two_messages_gets_continue_and_accept(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_message(&sc, "<c@x>");
    put_simple(&sc, MGW_SMFIC_ABORT);
    put_simple(&sc, MGW_SMFIC_ABORT);
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    /* O, connect, helo, then per message: mail rcpt data hdr hdr eoh body eom. */
    assert_replies(h, "Occ" "ccccccca" "ccccccca");
    assert_int_equal(h->replies[0].u.optneg.version, 6);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 2);
    /* Every message ended at its EOM: Postfix's ABORTs after it, and the two extra ones
     * at the end, are harmless and reach no filter. */
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_ABORT), 0);
    assert_int_equal(h->fake.opens, 1);
    assert_int_equal(h->fake.closes, 1);
}

static void five_messages_on_one_connection_are_all_accepted(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc);
    for (int i = 0; i < 5; i++)
        put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 5);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_MAIL), 5);
    assert_int_equal(h->nreplies, 3 + 5 * 8);
    assert_int_equal(h->replies[h->nreplies - 1].cmd, MGW_SMFIR_ACCEPT);
}

struct nego_case {
    const char *name;
    uint32_t version, actions, protocol; /* offered */
    uint32_t need_actions, need_protocol;
    int with_symlist;
    uint32_t want_version, want_actions, want_protocol;
    int want_symlist;
};

static void negotiation_variants_never_claim_more_than_offered(void **state)
{
    static const struct nego_case cases[] = {
        {"v6 full offer, null needs", 6, 0x1FF, 0x1FFFFF, 0, 0, 0, 6, 0, 0, 0},
        {"v2 offer gets version 2", 2, 0x3F, 0x7F, 0x1, 0x0, 0, 2, 0x1, 0, 0},
        {"higher version is answered with 6", 7, 0x1FF, 0x1FFFFF, 0, 0, 0, 6, 0, 0, 0},
        {"few actions offered limit ours", 6, 0x1, 0x1FFFFF, 0x3F, 0, 0, 6, 0x1, 0, 0},
        {"NR bits only where offered", 6, 0x1FF, 0xFF, 0, MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_CONN,
         0, 6, 0, MGW_SMFIP_NR_HDR, 0},
        {"symlist with SETSYMLIST offered", 6, 0x1FF, 0x1FFFFF, 0, 0, 1, 6, 0x100, 0, 1},
        {"no symlist without SETSYMLIST", 6, 0xFF, 0x1FFFFF, 0, 0, 1, 6, 0, 0, 0},
        {"zero actions mean V1 actions", 6, 0, 0, 0x3F, 0x3F, 0, 6, 0x0F, 0x3F, 0},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct nego_case *c = &cases[i];
        struct harness *h;
        void *st;
        static struct script sc;

        setup(&st);
        h = st;
        h->fake.needs.actions = c->need_actions;
        h->fake.needs.protocol = c->need_protocol;
        if (c->with_symlist)
            h->fake.needs.symlist[MGW_STAGE_ENVFROM] = "{auth_authen} i";
        sc.len = 0;
        put_optneg(&sc, c->version, c->actions, c->protocol);
        put_simple(&sc, MGW_SMFIC_QUIT);
        run(h, &sc, NULL);
        if (h->nreplies != 1 || h->replies[0].cmd != MGW_SMFIR_OPTNEG)
            fail_msg("%s: got replies \"%s\", want \"O\"", c->name, reply_letters(h));
        if (h->replies[0].u.optneg.version != c->want_version ||
            h->replies[0].u.optneg.actions != c->want_actions ||
            h->replies[0].u.optneg.protocol != c->want_protocol)
            fail_msg("%s: got v%u a=0x%x p=0x%x, want v%u a=0x%x p=0x%x", c->name,
                     h->replies[0].u.optneg.version, h->replies[0].u.optneg.actions,
                     h->replies[0].u.optneg.protocol, c->want_version, c->want_actions,
                     c->want_protocol);
        if ((h->replies[0].u.optneg.symlist[MGW_STAGE_ENVFROM].ptr != NULL) != c->want_symlist)
            fail_msg("%s: symlist presence: got %d, want %d", c->name,
                     h->replies[0].u.optneg.symlist[MGW_STAGE_ENVFROM].ptr != NULL,
                     c->want_symlist);
        teardown(&st);
    }
}

static void version_1_offer_ends_the_session_without_reply(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_optneg(&sc, 1, 0x0F, 0x3F);
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "");
    assert_int_equal(h->fake.opens, 0);
}

static void macros_are_stored_per_stage_and_cleared_between_messages(void **state)
{
    struct harness *h = *state;
    static struct script sc;
    const struct fake_event *e;

    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    /* Second message: its MAIL has no D M, so it must not see the first one's. */
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<c@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);

    e = fake_nth(&h->fake, MGW_SMFIC_CONNECT, 0);
    assert_non_null(e);
    assert_string_equal(e->macros, "j=mx.example;_=client [127.0.0.1];");
    assert_string_equal(e->arg, "[127.0.0.1]");
    e = fake_nth(&h->fake, MGW_SMFIC_MAIL, 0);
    assert_string_equal(e->macros, "{mail_addr}=a@x;");
    assert_string_equal(e->arg, "<a@x>");
    e = fake_nth(&h->fake, MGW_SMFIC_RCPT, 0);
    assert_string_equal(e->macros, "{rcpt_addr}=b@y;");
    e = fake_nth(&h->fake, MGW_SMFIC_MAIL, 1);
    assert_non_null(e);
    if (strcmp(e->macros, "") != 0)
        fail_msg("second MAIL macros: got \"%s\", want \"\"", e->macros);
    /* Headers have no stage of their own: no macros. */
    e = fake_nth(&h->fake, MGW_SMFIC_HEADER, 1);
    assert_string_equal(e->arg, "X-Folded");
}

static void abort_mid_headers_and_mid_body_then_next_message_works(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc);
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    put_header(&sc, "Subject", "x");
    put_simple(&sc, MGW_SMFIC_ABORT); /* mid-headers */
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    put_simple(&sc, MGW_SMFIC_EOH);
    put_body(&sc, MGW_SMFIC_BODY, "part");
    put_simple(&sc, MGW_SMFIC_ABORT); /* mid-body */
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ" "cccc" "ccccc" "ccccccca");
    /* The two interrupted messages are aborted; the completed one ended at its EOM. */
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_ABORT), 2);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 1);
}

struct order_case {
    const char *name;
    void (*build)(struct script *sc);
    const char *want_replies;
};

static void build_rcpt_before_mail(struct script *sc)
{
    put_greeting(sc);
    put_str_cmd(sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_connect_before_optneg(struct script *sc)
{
    put_connect(sc, "x");
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_header_after_body(struct script *sc)
{
    put_greeting(sc);
    put_str_cmd(sc, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(sc, MGW_SMFIC_RCPT, "<b@y>");
    put_body(sc, MGW_SMFIC_BODY, "x");
    put_header(sc, "Late", "x");
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_second_optneg(struct script *sc)
{
    put_v6(sc);
    put_v6(sc);
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_second_connect(struct script *sc)
{
    put_greeting(sc);
    put_connect(sc, "again");
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_eom_outside_message(struct script *sc)
{
    put_greeting(sc);
    put_body(sc, MGW_SMFIC_BODYEOB, "");
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void build_data_twice(struct script *sc)
{
    put_greeting(sc);
    put_str_cmd(sc, MGW_SMFIC_MAIL, "<a@x>");
    put_simple(sc, MGW_SMFIC_DATA);
    put_simple(sc, MGW_SMFIC_DATA);
    put_simple(sc, MGW_SMFIC_QUIT);
}

static void out_of_order_commands_end_the_session(void **state)
{
    static const struct order_case cases[] = {
        {"RCPT before MAIL", build_rcpt_before_mail, "Occ"},
        {"CONNECT before OPTNEG", build_connect_before_optneg, ""},
        {"header after body", build_header_after_body, "Occccc"},
        {"second OPTNEG", build_second_optneg, "O"},
        {"second CONNECT", build_second_connect, "Occ"},
        {"end of message outside a message", build_eom_outside_message, "Occ"},
        {"DATA twice", build_data_twice, "Occcc"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct harness *h;
        void *st;
        static struct script sc;

        setup(&st);
        h = st;
        sc.len = 0;
        cases[i].build(&sc);
        run(h, &sc, NULL);
        if (strcmp(reply_letters(h), cases[i].want_replies) != 0)
            fail_msg("%s: got replies \"%s\", want \"%s\"", cases[i].name, reply_letters(h),
                     cases[i].want_replies);
        teardown(&st);
    }
}

struct frame_case {
    const char *name;
    const uint8_t *bytes;
    size_t len;
};

static void bad_frames_end_the_session(void **state)
{
    static const uint8_t zero_len[] = {0, 0, 0, 0};
    static const uint8_t too_big[] = {0x7f, 0xff, 0xff, 0xff, 'B'};
    static const uint8_t unknown[] = {0, 0, 0, 1, 'Z'};
    static const uint8_t truncated[] = {0, 0, 0, 20, 'H', 'x'};
    static const uint8_t bad_helo[] = {0, 0, 0, 3, 'H', 'a', 'b'}; /* no NUL */
    static const struct frame_case cases[] = {
        {"zero length", zero_len, sizeof zero_len},
        {"length over the maximum", too_big, sizeof too_big},
        {"unknown command", unknown, sizeof unknown},
        {"truncated frame then EOF", truncated, sizeof truncated},
        {"HELO without NUL", bad_helo, sizeof bad_helo},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct harness *h;
        void *st;
        static struct script sc;

        setup(&st);
        h = st;
        sc.len = 0;
        put_greeting(&sc);
        put_raw(&sc, cases[i].bytes, cases[i].len);
        /* The truncated frame is followed by EOF (run() shuts the MTA side down). */
        run(h, &sc, NULL);
        if (strcmp(reply_letters(h), "Occ") != 0)
            fail_msg("%s: got replies \"%s\", want \"Occ\"", cases[i].name, reply_letters(h));
        assert_int_equal(h->fake.closes, 1);
        teardown(&st);
    }
}

static void modifications_go_before_the_final_reply_and_are_policed(void **state)
{
    struct harness *h = *state;
    static struct script sc;
    struct fake_answer *a = &h->fake.answer[MGW_SMFIC_BODYEOB];

    h->fake.needs.actions = MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGFROM;
    a->set = 1;
    a->kind = MGW_VERDICT_ACCEPT;
    a->mods[0].cmd = MGW_SMFIR_ADDHEADER;
    a->mods[0].u.header.name = (struct mgw_str){"X-Scanned", 9};
    a->mods[0].u.header.value = (struct mgw_str){"yes", 3};
    a->mods[1].cmd = MGW_SMFIR_DELRCPT; /* not declared: dropped */
    a->mods[1].u.text = (struct mgw_str){"<b@y>", 5};
    a->mods[2].cmd = MGW_SMFIR_CHGFROM;
    a->mods[2].u.rcpt.addr = (struct mgw_str){"<new@x>", 7};
    a->nmods = 3;
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occccccccchea");
    assert_string_equal(h->replies[10].u.header.name.ptr, "X-Scanned");
    assert_string_equal(h->replies[11].u.rcpt.addr.ptr, "<new@x>");
}

static void illegal_verdicts_are_made_legal(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    /* SKIP without SMFIP_SKIP negotiated -> continue; DISCARD at connect -> tempfail;
     * a 4xx text on a reject -> plain reject; a 5xx text on a reject is kept. */
    h->fake.answer[MGW_SMFIC_BODY] = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_SKIP};
    h->fake.answer[MGW_SMFIC_CONNECT] =
        (struct fake_answer){.set = 1, .kind = MGW_VERDICT_DISCARD};
    h->fake.answer[MGW_SMFIC_RCPT] =
        (struct fake_answer){.set = 1, .kind = MGW_VERDICT_REJECT, .reply = "451 4.7.1 wrong"};
    h->fake.answer[MGW_SMFIC_DATA] =
        (struct fake_answer){.set = 1, .kind = MGW_VERDICT_REJECT, .reply = "550 5.7.1 no"};
    sc.len = 0;
    put_v6(&sc);
    put_connect(&sc, "x");
    put_str_cmd(&sc, MGW_SMFIC_HELO, "h");
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    put_simple(&sc, MGW_SMFIC_ABORT);
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<a@x>");
    put_body(&sc, MGW_SMFIC_BODY, "x");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Otccrycc");
    assert_string_equal(h->replies[5].u.text.ptr, "550 5.7.1 no");
}

static void skip_is_sent_when_negotiated(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    h->fake.needs.protocol = MGW_SMFIP_SKIP;
    h->fake.answer[MGW_SMFIC_BODY] = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_SKIP};
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ" "cccccc" "sa");
}

static void unanswered_events_get_no_reply(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    h->fake.needs.protocol = MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_CONN;
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    /* O, (no connect reply), helo, mail, rcpt, data, (no headers), eoh, body, eom */
    assert_replies(h, "Occcccca");
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_HEADER), 2);
    assert_false(fake_nth(&h->fake, MGW_SMFIC_HEADER, 0)->want_reply);
}

/* Back-pressure: while the backend holds the session, no further frame is handled, even
 * with the whole message already in the input buffer; then everything comes, in order. */
static void backend_flow_control_pauses_reading(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    h->fake.needs.protocol = MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_EOH | MGW_SMFIP_NR_BODY;
    h->fake.flow_stop_cmd = MGW_SMFIC_HEADER;
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_true(h->fake.events_at_stop > 0);
    assert_int_equal(h->fake.events_at_resume, h->fake.events_at_stop);
    /* O, connect, helo, mail, rcpt, data, (headers, eoh, body streamed), eom */
    assert_replies(h, "Occccca");
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_HEADER), 2);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 1);
}

static void events_the_backend_declined_are_answered_locally(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    /* The filters asked for no HELO, but this MTA did not offer NOHELO. */
    h->fake.needs.protocol = MGW_SMFIP_NOHELO;
    sc.len = 0;
    put_optneg(&sc, 6, 0x1FF, 0x1FFFFF & ~MGW_SMFIP_NOHELO);
    put_connect(&sc, "x");
    put_str_cmd(&sc, MGW_SMFIC_HELO, "h");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ");
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_HELO), 0);
}

static void quit_nc_starts_a_new_connection_on_the_same_socket(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT_NC);
    put_macro(&sc, 'C', "j\0other\0", sizeof "j\0other\0" - 1);
    put_connect(&sc, "second");
    put_str_cmd(&sc, MGW_SMFIC_HELO, "h2");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occcccccccacc");
    assert_int_equal(h->fake.opens, 2);
    assert_int_equal(h->fake.closes, 2);
    assert_string_equal(fake_nth(&h->fake, MGW_SMFIC_CONNECT, 1)->macros, "j=other;");
}

static void stages_negotiated_away_may_be_absent(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    /* The filters want only the end of message: the MTA then sends no CONNECT, HELO,
     * MAIL, RCPT, DATA, headers or body - only macros, EOB and ABORT. */
    h->fake.needs.protocol = MGW_SMFIP_NOCONNECT | MGW_SMFIP_NOHELO | MGW_SMFIP_NOMAIL |
                             MGW_SMFIP_NORCPT | MGW_SMFIP_NODATA | MGW_SMFIP_NOHDRS |
                             MGW_SMFIP_NOEOH | MGW_SMFIP_NOBODY | MGW_SMFIP_NOUNKNOWN;
    sc.len = 0;
    put_v6(&sc);
    put_macro(&sc, 'C', "j\0mx\0", sizeof "j\0mx\0" - 1);
    put_macro(&sc, 'M', "{mail_addr}\0a@x\0", sizeof "{mail_addr}\0a@x\0" - 1);
    put_body(&sc, MGW_SMFIC_BODYEOB, "");
    put_simple(&sc, MGW_SMFIC_ABORT);
    put_body(&sc, MGW_SMFIC_BODYEOB, "");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Oaa");
    assert_int_equal(h->replies[0].u.optneg.protocol & 0x1FF, 0x17F);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 2);
    assert_int_equal(h->fake.opens, 1);
    assert_string_equal(fake_nth(&h->fake, MGW_SMFIC_BODYEOB, 0)->macros, "");
}

/* Run the loop until `pred` holds, bounded (no sleeping: each turn waits for I/O). */
static void loop_until(struct harness *h, int (*pred)(struct harness *), const char *what)
{
    for (int i = 0; i < 1000 && !pred(h); i++)
        event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (!pred(h))
        fail_msg("gave up waiting for %s", what);
}

static int saw_rcpt(struct harness *h)
{
    return fake_count(&h->fake, MGW_SMFIC_RCPT) == 1 && fake_count(&h->fake, MGW_SMFIC_HELO) == 2;
}

static int one_session_left(struct harness *h)
{
    return mgw_server_session_count(h->srv) == 1;
}

static int no_session_left(struct harness *h)
{
    return mgw_server_session_count(h->srv) == 0;
}

/* What the session wrote to one MTA socket so far, read and decoded incrementally. */
struct replies {
    uint8_t in[1 << 21];
    size_t len, off;
    struct mgw_milter_decoder dec;
    char letters[256];
    size_t n;
};

/* Read what is there and return every reply letter so far ("Occ..."). */
static const char *replies_on(struct replies *rp, int fd)
{
    ssize_t r;

    rp->dec.dir = MGW_MILTER_FROM_MILTER;
    while ((r = recv(fd, rp->in + rp->len, sizeof rp->in - rp->len, MSG_DONTWAIT)) > 0)
        rp->len += (size_t)r;
    while (rp->off < rp->len && rp->n < sizeof rp->letters - 1) {
        struct mgw_milter_msg m;

        r = mgw_milter_decode(&rp->dec, rp->in + rp->off, rp->len - rp->off, &m);
        if (r == MGW_PARTIAL)
            break;
        assert_true(r > 0);
        rp->letters[rp->n++] = (char)m.cmd;
        rp->off += (size_t)r;
    }
    rp->letters[rp->n] = '\0';
    return rp->letters;
}

static void write_script(int fd, const struct script *sc)
{
    assert_int_equal(write(fd, sc->buf, sc->len), (ssize_t)sc->len);
}

static void drain_lets_running_sessions_finish_their_messages(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {0};
    static struct script idle, busy, rest;
    static struct replies ra, rb;
    int a[2], b[2];

    h->srv = mgw_server_new(h->base, &cfg, &h->fake.base);
    mgw_server_set_empty_cb(h->srv, on_empty, h->base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    assert_int_equal(mgw_server_adopt(h->srv, a[0], "idle"), 0);
    assert_int_equal(mgw_server_adopt(h->srv, b[0], "busy"), 0);
    idle.len = busy.len = rest.len = 0;
    put_greeting(&idle);
    put_greeting(&busy);
    put_str_cmd(&busy, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(&busy, MGW_SMFIC_RCPT, "<b@y>");
    write_script(a[1], &idle);
    write_script(b[1], &busy);
    loop_until(h, saw_rcpt, "both sessions to reach their last command");

    /* Neither is closed by the drain: the one between messages may carry another. */
    mgw_server_drain(h->srv);
    assert_int_equal(mgw_server_session_count(h->srv), 2);
    put_simple(&rest, MGW_SMFIC_DATA);
    put_simple(&rest, MGW_SMFIC_EOH);
    put_body(&rest, MGW_SMFIC_BODYEOB, "");
    write_script(b[1], &rest);
    rest.len = 0;
    put_message(&rest, "<next@x>");
    write_script(a[1], &rest);
    memset(&ra, 0, sizeof ra);
    memset(&rb, 0, sizeof rb);
    for (int i = 0; i < 1000 && (strlen(replies_on(&ra, a[1])) < 11 ||
                                 strlen(replies_on(&rb, b[1])) < 8); i++)
        event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_BODYEOB), 2);
    assert_int_equal(mgw_server_session_count(h->srv), 2);
    assert_string_equal(replies_on(&rb, b[1]), "Occccc" "ca");
    assert_string_equal(replies_on(&ra, a[1]), "Occ" "ccccccca");

    /* They end when their MTA ends them; the empty callback fires after the last. */
    rest.len = 0;
    put_simple(&rest, MGW_SMFIC_QUIT);
    write_script(a[1], &rest);
    loop_until(h, one_session_left, "the first session to quit");
    write_script(b[1], &rest);
    loop_until(h, no_session_left, "the second session to quit");
    close(a[1]);
    close(b[1]);
    h->mta = -1;
}

static void unknown_smtp_command_is_forwarded(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc);
    put_str_cmd(&sc, MGW_SMFIC_UNKNOWN, "XYZZY");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occc");
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_UNKNOWN), 1);
}

static void max_connections_refuses_the_extra_connection(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {.max_connections = 1};
    int a[2], b[2];
    char c;

    h->srv = mgw_server_new(h->base, &cfg, &h->fake.base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    assert_int_equal(mgw_server_adopt(h->srv, a[0], "first"), 0);
    assert_int_equal(mgw_server_adopt(h->srv, b[0], "second"), MGW_EUNAVAIL);
    /* The refused socket is closed at once: its peer reads EOF. */
    assert_int_equal(read(b[1], &c, 1), 0);
    assert_int_equal(mgw_server_session_count(h->srv), 1);
    close(a[1]);
    close(b[1]);
    h->mta = -1;
}

static void idle_mta_is_disconnected(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {.idle_timeout_ms = 50};
    static struct script sc;

    sc.len = 0;
    put_greeting(&sc); /* and then silence, with the socket left open */
    h->keep_open = 1;
    run(h, &sc, &cfg);
    assert_replies(h, "Occ");
    assert_int_equal(h->fake.closes, 1);
}

static void stop_loop(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

/* Run the loop for `ms` of wall time: for the things that must NOT happen meanwhile. */
static void run_for(struct harness *h, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    struct event *t = evtimer_new(h->base, stop_loop, h->base);

    evtimer_add(t, &tv);
    event_base_dispatch(h->base);
    event_free(t);
}

static void mta_silent_inside_a_message_is_not_timed_out(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {.idle_timeout_ms = 50};
    static struct script sc;
    static struct replies rp;
    int sv[2];

    /* Postfix sends DATA, then nothing until its client has sent the whole message. */
    h->srv = mgw_server_new(h->base, &cfg, &h->fake.base);
    mgw_server_set_empty_cb(h->srv, on_empty, h->base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mgw_server_adopt(h->srv, sv[0], "slow"), 0);
    h->mta = sv[1];
    sc.len = 0;
    put_greeting(&sc);
    put_str_cmd(&sc, MGW_SMFIC_MAIL, "<a@x>");
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<b@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    write_script(h->mta, &sc);
    run_for(h, 400);
    assert_int_equal(mgw_server_session_count(h->srv), 1);
    assert_int_equal(h->fake.closes, 0);

    /* Once the message is answered the MTA is between messages: the timeout runs again. */
    sc.len = 0;
    put_simple(&sc, MGW_SMFIC_EOH);
    put_body(&sc, MGW_SMFIC_BODYEOB, "");
    write_script(h->mta, &sc);
    run_for(h, 5000); /* ended early by the empty callback */
    assert_int_equal(mgw_server_session_count(h->srv), 0);
    memset(&rp, 0, sizeof rp);
    assert_string_equal(replies_on(&rp, h->mta), "Occ" "cccca");
}

static void without_mail_a_command_that_goes_back_begins_the_next_message(void **state)
{
    struct harness *h = *state;
    static struct script sc;

    /* No filter wants MAIL; the MTA refuses message 1 at DATA and sends no ABORT. */
    h->fake.needs.protocol = MGW_SMFIP_NOMAIL;
    h->fake.answer[MGW_SMFIC_DATA] = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_REJECT};
    sc.len = 0;
    put_greeting(&sc);
    put_macro(&sc, 'R', "{rcpt_addr}\0one@y\0", sizeof "{rcpt_addr}\0one@y\0" - 1);
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<one@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    put_macro(&sc, 'R', "{rcpt_addr}\0two@y\0", sizeof "{rcpt_addr}\0two@y\0" - 1);
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<two@y>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ" "cr" "c");
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_ABORT), 1);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_RCPT), 2);
    /* The new RCPT's macros, which came just before it, survive the reset. */
    assert_string_equal(fake_nth(&h->fake, MGW_SMFIC_RCPT, 1)->macros, "{rcpt_addr}=two@y;");
}

static void without_mail_its_macros_begin_the_message(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {.idle_timeout_ms = 50};
    static struct script sc;
    int sv[2];

    /* The MTA still sends D M for the MAIL it does not send: inside a message from there,
     * so the idle timeout stops, and the next D M without ABORT begins the next message. */
    h->fake.needs.protocol = MGW_SMFIP_NOMAIL;
    h->fake.answer[MGW_SMFIC_DATA] = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_REJECT};
    h->srv = mgw_server_new(h->base, &cfg, &h->fake.base);
    mgw_server_set_empty_cb(h->srv, on_empty, h->base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mgw_server_adopt(h->srv, sv[0], "nomail"), 0);
    h->mta = sv[1];
    sc.len = 0;
    put_greeting(&sc);
    put_macro(&sc, 'M', "{mail_addr}\0a@x\0", sizeof "{mail_addr}\0a@x\0" - 1);
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<one@y>");
    put_simple(&sc, MGW_SMFIC_DATA);
    put_macro(&sc, 'M', "{mail_addr}\0b@x\0", sizeof "{mail_addr}\0b@x\0" - 1);
    write_script(h->mta, &sc);
    run_for(h, 400);
    assert_int_equal(mgw_server_session_count(h->srv), 1);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_ABORT), 1);
    sc.len = 0;
    put_str_cmd(&sc, MGW_SMFIC_RCPT, "<two@y>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    write_script(h->mta, &sc);
    run_for(h, 5000); /* ended early by the empty callback */
    assert_int_equal(mgw_server_session_count(h->srv), 0);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_RCPT), 2);
    assert_int_equal(fake_count(&h->fake, MGW_SMFIC_ABORT), 1);
}

static void header_mod(struct mgw_milter_msg *m, uint8_t cmd, const char *name,
                       const char *value, size_t vlen)
{
    m->cmd = cmd;
    m->u.header.index = 1;
    m->u.header.name = (struct mgw_str){name, strlen(name)};
    m->u.header.value = (struct mgw_str){value, vlen};
}

static void version_2_mta_gets_no_insheader_or_progress(void **state)
{
    struct harness *h = *state;
    static struct script sc;
    struct fake_answer *a = &h->fake.answer[MGW_SMFIC_BODYEOB];

    h->fake.needs.actions = MGW_SMFIF_ADDHDRS;
    *a = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_ACCEPT, .nmods = 2, .progress = 1};
    header_mod(&a->mods[0], MGW_SMFIR_INSHEADER, "X-First", "1", 1);
    header_mod(&a->mods[1], MGW_SMFIR_ADDHEADER, "X-Last", "2", 1);
    sc.len = 0;
    put_optneg(&sc, 2, 0x3F, 0x7F);
    put_connect(&sc, "x");
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_int_equal(h->fake.progress_sent, 1);
    assert_replies(h, "O" "c" "ccccccc" "ha");
    assert_string_equal(h->replies[9].u.header.name.ptr, "X-Last");
}

static void progress_and_insheader_reach_a_version_6_mta(void **state)
{
    struct harness *h = *state;
    static struct script sc;
    struct fake_answer *a = &h->fake.answer[MGW_SMFIC_BODYEOB];

    h->fake.needs.actions = MGW_SMFIF_ADDHDRS;
    *a = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_ACCEPT, .nmods = 1, .progress = 1};
    header_mod(&a->mods[0], MGW_SMFIR_INSHEADER, "X-First", "1", 1);
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ" "ccccccc" "pia");
}

static void modification_frames_beyond_the_mta_data_size_are_dropped(void **state)
{
    struct harness *h = *state;
    static struct script sc;
    static char big[70000];
    struct fake_answer *a = &h->fake.answer[MGW_SMFIC_BODYEOB];

    memset(big, 'v', sizeof big);
    h->fake.needs.actions = MGW_SMFIF_ADDHDRS;
    *a = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_ACCEPT, .nmods = 2};
    /* Data (name, NUL, value, NUL) of 65536 bytes is one too many; 65535 fits exactly. */
    header_mod(&a->mods[0], MGW_SMFIR_ADDHEADER, "X-Big", big, 65536 - 7);
    header_mod(&a->mods[1], MGW_SMFIR_ADDHEADER, "X-Edge", big, 65535 - 8);
    sc.len = 0;
    put_optneg(&sc, 6, MGW_SMFI_CURR_ACTS, MGW_SMFI_CURR_PROT & ~(MGW_SMFIP_MDS_256K | MGW_SMFIP_MDS_1M));
    put_connect(&sc, "x");
    put_str_cmd(&sc, MGW_SMFIC_HELO, "h");
    put_message(&sc, "<a@x>");
    put_simple(&sc, MGW_SMFIC_QUIT);
    run(h, &sc, NULL);
    assert_replies(h, "Occ" "ccccccc" "ha");
    assert_string_equal(h->replies[10].u.header.name.ptr, "X-Edge");
}

static struct replies big_replies;

static int answered_eom(struct harness *h)
{
    return fake_count(&h->fake, MGW_SMFIC_BODYEOB) == 1 &&
           strchr(replies_on(&big_replies, h->mta), 'a') != NULL;
}

static void answer_buffer_shrinks_after_a_large_answer(void **state)
{
    struct harness *h = *state;
    struct mgw_server_config cfg = {0};
    static struct script sc;
    static uint8_t body[60000];
    struct fake_answer *a = &h->fake.answer[MGW_SMFIC_BODYEOB];
    int sv[2];

    /* 16 chunks of a replaced body: about 1 MiB in one answer. */
    memset(body, 'b', sizeof body);
    h->fake.needs.actions = MGW_SMFIF_CHGBODY;
    *a = (struct fake_answer){.set = 1, .kind = MGW_VERDICT_ACCEPT, .nmods = FAKE_MAX_MODS};
    for (int i = 0; i < FAKE_MAX_MODS; i++) {
        a->mods[i].cmd = MGW_SMFIR_REPLBODY;
        a->mods[i].u.body.data = body;
        a->mods[i].u.body.len = sizeof body;
    }
    memset(&big_replies, 0, sizeof big_replies);
    h->srv = mgw_server_new(h->base, &cfg, &h->fake.base);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mgw_server_adopt(h->srv, sv[0], "big"), 0);
    h->mta = sv[1];
    sc.len = 0;
    put_greeting(&sc);
    put_message(&sc, "<a@x>");
    write_script(h->mta, &sc);
    for (int i = 0; i < 5000 && !answered_eom(h); i++)
        event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_true(answered_eom(h));
    /* Everything was sent and read: what remains is the session's own keep. */
    assert_true(mgw_server_buffered_bytes(h->srv) < 65536);
}

#define SYNC_AND_ASYNC(fn)                                                                 \
    cmocka_unit_test_setup_teardown(fn, setup, teardown),                                  \
        cmocka_unit_test_setup_teardown(fn##_async, setup, teardown)

#define ASYNC_VARIANT(fn)                                                                  \
    static void fn##_async(void **state)                                                   \
    {                                                                                      \
        ((struct harness *)*state)->fake.async = 1;                                        \
        fn(state);                                                                         \
    }

ASYNC_VARIANT(postfix_session_with_two_messages_gets_continue_and_accept)
ASYNC_VARIANT(five_messages_on_one_connection_are_all_accepted)
ASYNC_VARIANT(abort_mid_headers_and_mid_body_then_next_message_works)
ASYNC_VARIANT(modifications_go_before_the_final_reply_and_are_policed)
ASYNC_VARIANT(illegal_verdicts_are_made_legal)
ASYNC_VARIANT(quit_nc_starts_a_new_connection_on_the_same_socket)
ASYNC_VARIANT(stages_negotiated_away_may_be_absent)
ASYNC_VARIANT(drain_lets_running_sessions_finish_their_messages)

int main(void)
{
    const struct CMUnitTest tests[] = {
        SYNC_AND_ASYNC(postfix_session_with_two_messages_gets_continue_and_accept),
        SYNC_AND_ASYNC(five_messages_on_one_connection_are_all_accepted),
        cmocka_unit_test(negotiation_variants_never_claim_more_than_offered),
        cmocka_unit_test_setup_teardown(version_1_offer_ends_the_session_without_reply, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(macros_are_stored_per_stage_and_cleared_between_messages,
                                        setup, teardown),
        SYNC_AND_ASYNC(abort_mid_headers_and_mid_body_then_next_message_works),
        cmocka_unit_test(out_of_order_commands_end_the_session),
        cmocka_unit_test(bad_frames_end_the_session),
        SYNC_AND_ASYNC(modifications_go_before_the_final_reply_and_are_policed),
        SYNC_AND_ASYNC(illegal_verdicts_are_made_legal),
        cmocka_unit_test_setup_teardown(skip_is_sent_when_negotiated, setup, teardown),
        cmocka_unit_test_setup_teardown(unanswered_events_get_no_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(backend_flow_control_pauses_reading, setup, teardown),
        cmocka_unit_test_setup_teardown(events_the_backend_declined_are_answered_locally, setup,
                                        teardown),
        SYNC_AND_ASYNC(quit_nc_starts_a_new_connection_on_the_same_socket),
        cmocka_unit_test_setup_teardown(unknown_smtp_command_is_forwarded, setup, teardown),
        SYNC_AND_ASYNC(stages_negotiated_away_may_be_absent),
        SYNC_AND_ASYNC(drain_lets_running_sessions_finish_their_messages),
        cmocka_unit_test_setup_teardown(max_connections_refuses_the_extra_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(idle_mta_is_disconnected, setup, teardown),
        cmocka_unit_test_setup_teardown(mta_silent_inside_a_message_is_not_timed_out, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            without_mail_a_command_that_goes_back_begins_the_next_message, setup, teardown),
        cmocka_unit_test_setup_teardown(without_mail_its_macros_begin_the_message, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(version_2_mta_gets_no_insheader_or_progress, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(progress_and_insheader_reach_a_version_6_mta, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            modification_frames_beyond_the_mta_data_size_are_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(answer_buffer_shrinks_after_a_large_answer, setup,
                                        teardown),
    };

    /* Session close lines are expected here; keep the test output readable. */
    mgw_log_set_level(getenv("MGW_TEST_LOG") ? MGW_LOG_DEBUG : MGW_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
