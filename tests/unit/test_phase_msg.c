/*
 * test_phase_msg.c - unit tests of the message a later phase is shown (phase_msg.h):
 * recorded from MTA events, edited by one phase's modifications, replayed as packed
 * Events (unpacked here again, as a filter would), and netted for the MTA.
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

#include "miltergw/v1/filter.pb-c.h"
#include "mgw/backend.h"
#include "mgw/milter_codec.h"
#include "mgw/phase_msg.h"

#define LIST(lit) mgw_milter_list_make((lit), sizeof(lit) - 1)
#define S(lit) ((struct mgw_str){(lit), sizeof(lit) - 1})

static void record(struct mgw_phase_msg *pm, struct mgw_milter_msg *m,
                   const struct mgw_strlist *mac)
{
    struct mgw_event ev = {.msg = m, .macros = mac};

    assert_int_equal(mgw_phase_msg_record(pm, &ev), 0);
}

/* A message: MAIL, one RCPT, three headers, EOH and EOM with macros, a body in two chunks. */
static void record_message(struct mgw_phase_msg *pm, const char *body, size_t len)
{
    struct mgw_milter_msg m;
    struct mgw_strlist eoh = LIST("i\0Q1\0"), eom = LIST("i\0Q1\0{msg_id}\0<x@y>\0");
    size_t half = len / 2;

    memset(&m, 0, sizeof m);
    m.cmd = MGW_SMFIC_MAIL;
    m.u.args = LIST("<a@example.org>\0SIZE=10\0");
    record(pm, &m, NULL);
    m.cmd = MGW_SMFIC_RCPT;
    m.u.args = LIST("<b@example.org>\0");
    record(pm, &m, NULL);
    m.cmd = MGW_SMFIC_HEADER;
    m.u.header.name = S("From");
    m.u.header.value = S("a@example.org");
    record(pm, &m, NULL);
    m.u.header.name = S("Subject");
    m.u.header.value = S("hello");
    record(pm, &m, NULL);
    m.u.header.name = S("To");
    m.u.header.value = S("b@example.org");
    record(pm, &m, NULL);
    memset(&m, 0, sizeof m);
    m.cmd = MGW_SMFIC_EOH;
    record(pm, &m, &eoh);
    m.cmd = MGW_SMFIC_BODY;
    m.u.body.data = (const uint8_t *)body;
    m.u.body.len = half;
    record(pm, &m, NULL);
    m.cmd = MGW_SMFIC_BODYEOB; /* Sendmail's last chunk in EOB */
    m.u.body.data = (const uint8_t *)body + half;
    m.u.body.len = len - half;
    record(pm, &m, &eom);
}

struct seen {
    char text[8192];
    size_t len;
    uint64_t last_id;
    char body[4096];
    size_t body_len;
};

static void on_event(void *arg, uint8_t cmd, grpc_slice msg, uint64_t id)
{
    struct seen *s = arg;
    Miltergw__V1__Event *ev =
        miltergw__v1__event__unpack(NULL, GRPC_SLICE_LENGTH(msg), GRPC_SLICE_START_PTR(msg));

    assert_non_null(ev);
    assert_int_equal(ev->event_id, id);
    assert_true(id > s->last_id);
    s->last_id = id;
    if (cmd == MGW_SMFIC_HEADER)
        s->len += (size_t)snprintf(s->text + s->len, sizeof s->text - s->len, "L %s=%.*s|",
                                   ev->header->name, (int)ev->header->value.len,
                                   (const char *)ev->header->value.data);
    else if (cmd == MGW_SMFIC_BODY) {
        memcpy(s->body + s->body_len, ev->body->data.data, ev->body->data.len);
        s->body_len += ev->body->data.len;
        s->len += (size_t)snprintf(s->text + s->len, sizeof s->text - s->len, "B|");
    } else {
        s->len += (size_t)snprintf(s->text + s->len, sizeof s->text - s->len, "%c", cmd);
        for (size_t i = 0; i < ev->n_macros; i++)
            s->len += (size_t)snprintf(s->text + s->len, sizeof s->text - s->len, " %s=%s",
                                       ev->macros[i]->key, ev->macros[i]->value);
        s->len += (size_t)snprintf(s->text + s->len, sizeof s->text - s->len, "|");
    }
    protobuf_c_message_free_unpacked(&ev->base, NULL);
    grpc_slice_unref(msg);
}

static void test_a_later_phase_is_shown_the_message_as_the_earlier_one_left_it(void **state)
{
    struct mgw_phase_msg *pm = mgw_phase_msg_new(0);
    struct mgw_proto_scratch sc = {0};
    struct mgw_milter_msg mods[3];
    struct seen seen = {.len = 0};
    uint64_t next = 100;
    const char *body = "line one\r\nline two\r\n";

    (void)state;
    record_message(pm, body, strlen(body));
    memset(mods, 0, sizeof mods);
    mods[0].cmd = MGW_SMFIR_CHGHEADER; /* delete Subject */
    mods[0].u.header.index = 1;
    mods[0].u.header.name = S("Subject");
    mods[0].u.header.value = S("");
    mods[1].cmd = MGW_SMFIR_INSHEADER; /* above From: index 1 counts Postfix's Received */
    mods[1].u.header.index = 1;
    mods[1].u.header.name = S("Authentication-Results");
    mods[1].u.header.value = S("dkim.test; dkim=pass");
    mods[2].cmd = MGW_SMFIR_ADDHEADER;
    mods[2].u.header.name = S("X-Phase0");
    mods[2].u.header.value = S("yes");
    assert_int_equal(mgw_phase_msg_apply(pm, mods, 3), 0);
    assert_int_equal(mgw_phase_msg_replay(pm, &sc, &next, on_event, &seen), 0);
    assert_string_equal(seen.text, "L Authentication-Results=dkim.test; dkim=pass|"
                                   "L From=a@example.org|L To=b@example.org|L X-Phase0=yes|"
                                   "N i=Q1|B|E i=Q1 {msg_id}=<x@y>|");
    assert_int_equal(seen.body_len, strlen(body));
    assert_memory_equal(seen.body, body, strlen(body));
    assert_int_equal(next, seen.last_id + 1);
    mgw_proto_scratch_free(&sc);
    mgw_phase_msg_free(pm);
}

static void test_the_mta_gets_the_net_of_every_phase_it_granted(void **state)
{
    struct mgw_phase_msg *pm = mgw_phase_msg_new(0);
    struct mgw_milter_msg p0[2], p1[2], *net;
    uint8_t *mem;
    size_t dropped;
    ssize_t n;

    (void)state;
    record_message(pm, "x\r\n", 3);
    memset(p0, 0, sizeof p0);
    memset(p1, 0, sizeof p1);
    p0[0].cmd = MGW_SMFIR_ADDRCPT; /* phase 0 adds a recipient ... */
    p0[0].u.text = S("<c@example.org>");
    p0[1].cmd = MGW_SMFIR_ADDHEADER;
    p0[1].u.header.name = S("X-A");
    p0[1].u.header.value = S("1");
    p1[0].cmd = MGW_SMFIR_DELRCPT; /* ... phase 1 deletes it again: nothing for the MTA */
    p1[0].u.text = S("<c@example.org>");
    p1[1].cmd = MGW_SMFIR_QUARANTINE;
    p1[1].u.text = S("held");
    assert_int_equal(mgw_phase_msg_apply(pm, p0, 2), 0);
    assert_int_equal(mgw_phase_msg_apply(pm, p1, 2), 0);
    n = mgw_phase_msg_net(pm, MGW_SMFI_CURR_ACTS, &net, &mem, &dropped);
    assert_int_equal(n, 2);
    assert_int_equal(net[0].cmd, MGW_SMFIR_ADDHEADER);
    assert_int_equal(net[1].cmd, MGW_SMFIR_QUARANTINE);
    assert_int_equal(dropped, 0);
    free(net);
    free(mem);
    /* What the MTA did not grant is dropped and counted. */
    n = mgw_phase_msg_net(pm, MGW_SMFIF_ADDHDRS, &net, &mem, &dropped);
    assert_int_equal(n, 1);
    assert_int_equal(dropped, 1);
    free(net);
    free(mem);
    mgw_phase_msg_free(pm);
}

static void test_a_body_past_the_memory_limit_replays_whole_from_the_file(void **state)
{
    struct mgw_phase_msg *pm = mgw_phase_msg_new(16);
    struct mgw_proto_scratch sc = {0};
    struct seen seen = {.len = 0};
    uint64_t next = 1;
    char body[3000];

    (void)state;
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('a' + i % 26);
    record_message(pm, body, sizeof body);
    assert_int_equal(mgw_phase_msg_apply(pm, NULL, 0), 0);
    assert_int_equal(mgw_phase_msg_replay(pm, &sc, &next, on_event, &seen), 0);
    assert_int_equal(seen.body_len, sizeof body);
    assert_memory_equal(seen.body, body, sizeof body);
    mgw_proto_scratch_free(&sc);
    mgw_phase_msg_free(pm);
}

static void test_a_new_mail_or_a_reset_starts_a_new_message(void **state)
{
    struct mgw_phase_msg *pm = mgw_phase_msg_new(0);
    struct mgw_proto_scratch sc = {0};
    struct seen seen = {.len = 0};
    uint64_t next = 1;

    (void)state;
    record_message(pm, "one\r\n", 5);
    record_message(pm, "two\r\n", 5); /* MAIL again: the first message is forgotten */
    assert_int_equal(mgw_phase_msg_replay(pm, &sc, &next, on_event, &seen), 0);
    assert_int_equal(seen.body_len, 5);
    assert_memory_equal(seen.body, "two\r\n", 5);
    mgw_phase_msg_reset(pm);
    assert_true(mgw_phase_msg_replay(pm, &sc, &next, on_event, &seen) < 0);
    mgw_proto_scratch_free(&sc);
    mgw_phase_msg_free(pm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_later_phase_is_shown_the_message_as_the_earlier_one_left_it),
        cmocka_unit_test(test_the_mta_gets_the_net_of_every_phase_it_granted),
        cmocka_unit_test(test_a_body_past_the_memory_limit_replays_whole_from_the_file),
        cmocka_unit_test(test_a_new_mail_or_a_reset_starts_a_new_message),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
