/*
 * test_negotiate.c - option negotiation rules and listen spec parsing (pure modules).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/negotiate.h"

struct nego_case {
    const char *name;
    struct mgw_milter_optneg offer;
    uint32_t need_actions, need_protocol;
    const char *symlist_mail;
    uint32_t max_frame;
    int want_rc;
    uint32_t want_version, want_actions, want_protocol;
    int want_symlist;
};

static void negotiation_follows_the_rules_of_libmilter_and_postfix(void **state)
{
    static const struct nego_case cases[] = {
        {"Postfix 3.7 offer with nothing needed", {6, 0x1FF, 0x1FFFFF, {{0}}}, 0, 0, NULL, 0,
         0, 6, 0, 0, 0},
        {"version 1 is refused", {1, 0x0F, 0x3F, {{0}}}, 0, 0, NULL, 0, MGW_EPROTO, 0, 0, 0, 0},
        {"version 0 is refused", {0, 0, 0, {{0}}}, 0, 0, NULL, 0, MGW_EPROTO, 0, 0, 0, 0},
        {"version 2 is answered with 2", {2, 0x3F, 0x7F, {{0}}}, 0x3F, 0x7F, NULL, 0, 0, 2,
         0x3F, 0x7F, 0},
        {"version 9 is answered with 6", {9, 0x1FF, 0x1FFFFF, {{0}}}, 0, 0, NULL, 0, 0, 6, 0,
         0, 0},
        {"actions are limited to the offer", {6, 0x11, 0x1FFFFF, {{0}}}, 0xFF, 0, NULL, 0, 0,
         6, 0x11, 0, 0},
        {"protocol bits are limited to the offer", {6, 0x1FF, 0x7F, {{0}}}, 0,
         MGW_SMFIP_NR_HDR | MGW_SMFIP_SKIP | MGW_SMFIP_NOHELO, NULL, 0, 0, 6, 0,
         MGW_SMFIP_NOHELO, 0},
        {"zero offer means the V1 sets", {2, 0, 0, {{0}}}, 0x1FF, 0x1FFFFF, NULL, 0, 0, 2,
         0x0F, 0x3F, 0},
        {"macro lists need SETSYMLIST offered", {6, 0xFF, 0x1FFFFF, {{0}}}, 0, 0, "i", 0, 0, 6,
         0, 0, 0},
        {"macro lists need version 6", {5, 0x1FF, 0x1FFFFF, {{0}}}, 0, 0, "i", 0, 0, 5, 0, 0,
         0},
        {"macro lists set SETSYMLIST", {6, 0x1FF, 0x1FFFFF, {{0}}}, 0, 0, "i {auth_type}", 0,
         0, 6, MGW_SMFIF_SETSYMLIST, 0, 1},
        {"MDS_1M echoed when the frame cap allows", {6, 0x1FF, 0x1FFFFF | MGW_SMFIP_MDS_1M,
         {{0}}}, 0, 0, NULL, 0, 0, 6, 0, MGW_SMFIP_MDS_1M, 0},
        {"MDS_256K when 1M does not fit", {6, 0x1FF,
         0x1FFFFF | MGW_SMFIP_MDS_1M | MGW_SMFIP_MDS_256K, {{0}}}, 0, 0, NULL, 300000, 0, 6,
         0, MGW_SMFIP_MDS_256K, 0},
        {"no MDS when the cap is small", {6, 0x1FF, 0x1FFFFF | MGW_SMFIP_MDS_256K, {{0}}}, 0,
         0, NULL, 70000, 0, 6, 0, 0, 0},
        {"MDS bits asked by filters are not copied", {6, 0x1FF, 0x1FFFFF, {{0}}}, 0,
         MGW_SMFIP_MDS_1M, NULL, 0, 0, 6, 0, 0, 0},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct nego_case *c = &cases[i];
        struct mgw_backend_needs needs = {.actions = c->need_actions,
                                          .protocol = c->need_protocol};
        struct mgw_milter_optneg reply;
        int rc;

        needs.symlist[MGW_STAGE_ENVFROM] = c->symlist_mail;
        rc = mgw_negotiate(&c->offer, &needs, c->max_frame, &reply);
        if (rc != c->want_rc)
            fail_msg("%s: rc got %d, want %d", c->name, rc, c->want_rc);
        if (rc != 0)
            continue;
        if (reply.version != c->want_version || reply.actions != c->want_actions ||
            reply.protocol != c->want_protocol)
            fail_msg("%s: got v%u a=0x%x p=0x%x, want v%u a=0x%x p=0x%x", c->name,
                     reply.version, reply.actions, reply.protocol, c->want_version,
                     c->want_actions, c->want_protocol);
        if ((reply.symlist[MGW_STAGE_ENVFROM].ptr != NULL) != c->want_symlist)
            fail_msg("%s: symlist got %d, want %d", c->name,
                     reply.symlist[MGW_STAGE_ENVFROM].ptr != NULL, c->want_symlist);
    }
}

static void replies_are_expected_unless_an_nr_bit_was_negotiated(void **state)
{
    static const struct {
        uint8_t cmd;
        uint32_t protocol;
        int want;
    } cases[] = {
        {MGW_SMFIC_CONNECT, 0, 1},
        {MGW_SMFIC_CONNECT, MGW_SMFIP_NR_CONN, 0},
        {MGW_SMFIC_HEADER, MGW_SMFIP_NR_HDR, 0},
        {MGW_SMFIC_BODY, MGW_SMFIP_NR_HDR, 1},
        {MGW_SMFIC_BODYEOB, 0x1FFFFF, 1},
        {MGW_SMFIC_ABORT, 0, 0},
        {MGW_SMFIC_MACRO, 0, 0},
        {MGW_SMFIC_QUIT, 0, 0},
        {MGW_SMFIC_UNKNOWN, MGW_SMFIP_NR_UNKN, 0},
        {MGW_SMFIC_EOH, MGW_SMFIP_NR_EOH, 0},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = mgw_negotiate_replies(cases[i].protocol, cases[i].cmd);

        if (got != cases[i].want)
            fail_msg("cmd %c protocol 0x%x: got %d, want %d", cases[i].cmd, cases[i].protocol,
                     got, cases[i].want);
    }
}

static void listen_specs_in_postfix_and_sendmail_forms_parse(void **state)
{
    static const struct {
        const char *spec;
        int want_rc;
        enum mgw_listen_kind kind;
        const char *host;
        uint16_t port;
        const char *path;
    } cases[] = {
        {"inet:127.0.0.1:8890", 0, MGW_LISTEN_INET, "127.0.0.1", 8890, ""},
        {"inet:8890@127.0.0.1", 0, MGW_LISTEN_INET, "127.0.0.1", 8890, ""},
        {"inet:8890@localhost", 0, MGW_LISTEN_INET, "localhost", 8890, ""},
        {"inet:8890", 0, MGW_LISTEN_INET, "", 8890, ""},
        {"inet:localhost:0", 0, MGW_LISTEN_INET, "localhost", 0, ""},
        {"inet6:[::1]:8890", 0, MGW_LISTEN_INET6, "::1", 8890, ""},
        {"inet6:8890@::1", 0, MGW_LISTEN_INET6, "::1", 8890, ""},
        {"unix:/run/miltergw/milter.sock", 0, MGW_LISTEN_UNIX, "", 0,
         "/run/miltergw/milter.sock"},
        {"local:/tmp/m.sock", 0, MGW_LISTEN_UNIX, "", 0, "/tmp/m.sock"},
        {"inet:127.0.0.1:65536", MGW_EINVAL, 0, "", 0, ""},
        {"inet:127.0.0.1:", MGW_EINVAL, 0, "", 0, ""},
        {"inet::25", MGW_EINVAL, 0, "", 0, ""},
        {"inet:abc@host", MGW_EINVAL, 0, "", 0, ""},
        {"inet:25@", MGW_EINVAL, 0, "", 0, ""},
        {"inet6:::1:25", MGW_EINVAL, 0, "", 0, ""},
        {"inet6:[::1]25", MGW_EINVAL, 0, "", 0, ""},
        {"unix:", MGW_EINVAL, 0, "", 0, ""},
        {"tcp:127.0.0.1:25", MGW_EINVAL, 0, "", 0, ""},
        {"127.0.0.1:25", MGW_EINVAL, 0, "", 0, ""},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct mgw_listen_spec sp;
        char err[256] = "";
        int rc = mgw_listen_spec_parse(cases[i].spec, &sp, err, sizeof err);

        if (rc != cases[i].want_rc)
            fail_msg("%s: rc got %d, want %d (%s)", cases[i].spec, rc, cases[i].want_rc, err);
        if (rc != 0) {
            if (strstr(err, cases[i].spec) == NULL)
                fail_msg("%s: error does not name the spec: got \"%s\"", cases[i].spec, err);
            continue;
        }
        if (sp.kind != cases[i].kind || strcmp(sp.host, cases[i].host) != 0 ||
            sp.port != cases[i].port || strcmp(sp.path, cases[i].path) != 0)
            fail_msg("%s: got kind=%d host=%s port=%u path=%s, want kind=%d host=%s port=%u "
                     "path=%s",
                     cases[i].spec, sp.kind, sp.host, sp.port, sp.path, cases[i].kind,
                     cases[i].host, cases[i].port, cases[i].path);
    }
}

/* The HTTP listener's HOST:PORT: one parser for --check-config and start-up. */
static void http_host_port_parses_one_way(void **state)
{
    static const struct {
        const char *spec;
        int want_rc;
        const char *want_host;
        unsigned want_port;
    } cases[] = {
        {"127.0.0.1:9090", 0, "127.0.0.1", 9090},
        {"localhost:0", 0, "localhost", 0},
        {"[::1]:9090", 0, "::1", 9090},
        {"0.0.0.0:65535", 0, "0.0.0.0", 65535},
        {"127.0.0.1:65536", -1, NULL, 0},
        {"127.0.0.1:", -1, NULL, 0},
        {"127.0.0.1:90a", -1, NULL, 0},
        {"127.0.0.1:+90", -1, NULL, 0},
        {"127.0.0.1:000009090", -1, NULL, 0},
        {":9090", -1, NULL, 0},
        {"9090", -1, NULL, 0},
        {"9090@127.0.0.1", -1, NULL, 0},
        {"::1:9090", -1, NULL, 0},
        {"[::1]9090", -1, NULL, 0},
        {"[]:9090", -1, NULL, 0},
        {"inet:127.0.0.1:9090", -1, NULL, 0},
    };

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char host[64] = "";
        uint16_t port = 4242;
        int rc = mgw_hostport_parse(cases[i].spec, host, sizeof host, &port);

        if (rc != cases[i].want_rc)
            fail_msg("\"%s\": rc %d, want %d", cases[i].spec, rc, cases[i].want_rc);
        if (rc == 0 && (strcmp(host, cases[i].want_host) != 0 || port != cases[i].want_port))
            fail_msg("\"%s\": got %s port %u, want %s port %u", cases[i].spec, host, port,
                     cases[i].want_host, cases[i].want_port);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(negotiation_follows_the_rules_of_libmilter_and_postfix),
        cmocka_unit_test(replies_are_expected_unless_an_nr_bit_was_negotiated),
        cmocka_unit_test(listen_specs_in_postfix_and_sendmail_forms_parse),
        cmocka_unit_test(http_host_port_parses_one_way),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
