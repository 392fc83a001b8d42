/*
 * test_milter_vocab.c - the vocabulary tables, row by row.
 *
 * Where libmilter defines a constant (mfdef.h: SMFIC_, SMFIR_, SMFIP_; mfapi.h: SMFIF_,
 * SMFIM_), the expected side of a row is libmilter's macro and the expected name is the
 * macro's own spelling, so a typo in either our letters or our log names shows up. The
 * labels are pinned to the strings logs, metrics and configuration have always used:
 * changing one is a visible change for operators, not a refactoring.
 *
 * Without libmilter's headers (Debian: libmilter-dev) the libmilter tables are skipped.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "table.h"

#include "mgw/metrics.h"
#include "mgw/milter_vocab.h"
#include "mgw/negotiate.h"
#include "mgw/policy.h"

#ifdef MGW_HAVE_LIBMILTER
#include <libmilter/mfapi.h>
#include <libmilter/mfdef.h>
#endif

/* Every letter the MTA sends and every letter a milter sends, for "no other byte" checks. */
static const char mta_letters[] = "ABCDEHKLMNOQRTU";
static const char milter_letters[] = "+-24abcdefhilmOpqrsty";

/* ---- Against libmilter ---- */

#ifdef MGW_HAVE_LIBMILTER

static void every_command_letter_and_name_is_libmilters_smfic(void **state)
{
#define ROW(x)                                                                                     \
    {                                                                                              \
        SMFIC_##x, MGW_SMFIC_##x, #x                                                               \
    }
    static const struct {
        int want_letter;
        uint8_t got_letter;
        const char *want_name;
    } rows[] = {
        ROW(ABORT),  ROW(BODY),    ROW(CONNECT), ROW(MACRO), ROW(BODYEOB),
        ROW(HELO),   ROW(QUIT_NC), ROW(HEADER),  ROW(MAIL),  ROW(EOH),
        ROW(OPTNEG), ROW(QUIT),    ROW(RCPT),    ROW(DATA),  ROW(UNKNOWN),
    };
#undef ROW

    (void)state;
    assert_int_equal(NELEM(rows), strlen(mta_letters));
    for (size_t i = 0; i < NELEM(rows); i++) {
        const struct mgw_milter_cmd_info *c = mgw_milter_cmd_info(rows[i].got_letter);

        if (rows[i].got_letter != rows[i].want_letter)
            case_failed(rows[i].want_name, "letter: got '%c', want '%c'", rows[i].got_letter,
                        rows[i].want_letter);
        else if (c == NULL)
            case_failed(rows[i].want_name, "no row for '%c'", rows[i].got_letter);
        else if (strcmp(c->name, rows[i].want_name) != 0)
            case_failed(rows[i].want_name, "name: got %s, want %s", c->name, rows[i].want_name);
    }
    end_table();
}

static void every_reply_letter_and_name_is_libmilters_smfir(void **state)
{
#define ROW(x)                                                                                     \
    {                                                                                              \
        SMFIR_##x, MGW_SMFIR_##x, #x                                                               \
    }
    static const struct {
        int want_letter;
        uint8_t got_letter;
        const char *want_name;
    } rows[] = {
        ROW(ADDRCPT),
        ROW(DELRCPT),
        ROW(ADDRCPT_PAR),
        ROW(SHUTDOWN),
        ROW(ACCEPT),
        ROW(REPLBODY),
        ROW(CONTINUE),
        ROW(DISCARD),
        ROW(CHGFROM),
        ROW(CONN_FAIL),
        ROW(ADDHEADER),
        ROW(INSHEADER),
        ROW(SETSYMLIST),
        ROW(CHGHEADER),
        ROW(PROGRESS),
        ROW(QUARANTINE),
        ROW(REJECT),
        ROW(SKIP),
        ROW(TEMPFAIL),
        ROW(REPLYCODE),
        {'O', MGW_SMFIR_OPTNEG, "OPTNEG"}, /* libmilter reuses SMFIC_OPTNEG for the reply */
    };
#undef ROW

    (void)state;
    assert_int_equal(NELEM(rows), strlen(milter_letters));
    for (size_t i = 0; i < NELEM(rows); i++) {
        const struct mgw_milter_reply_info *r = mgw_milter_reply_info(rows[i].got_letter);

        if (rows[i].got_letter != rows[i].want_letter)
            case_failed(rows[i].want_name, "letter: got '%c', want '%c'", rows[i].got_letter,
                        rows[i].want_letter);
        else if (r == NULL)
            case_failed(rows[i].want_name, "no row for '%c'", rows[i].got_letter);
        else if (strcmp(r->name, rows[i].want_name) != 0)
            case_failed(rows[i].want_name, "name: got %s, want %s", r->name, rows[i].want_name);
    }
    end_table();
}

static void each_command_has_libmilters_no_and_nr_bits(void **state)
{
    static const struct {
        const char *name;
        uint8_t cmd;
        unsigned long want_no, want_nr;
    } rows[] = {
        {"CONNECT has NOCONNECT and NR_CONN", 'C', SMFIP_NOCONNECT, SMFIP_NR_CONN},
        {"HELO has NOHELO and NR_HELO", 'H', SMFIP_NOHELO, SMFIP_NR_HELO},
        {"MAIL has NOMAIL and NR_MAIL", 'M', SMFIP_NOMAIL, SMFIP_NR_MAIL},
        {"RCPT has NORCPT and NR_RCPT", 'R', SMFIP_NORCPT, SMFIP_NR_RCPT},
        {"DATA has NODATA and NR_DATA", 'T', SMFIP_NODATA, SMFIP_NR_DATA},
        {"HEADER has NOHDRS and NR_HDR", 'L', SMFIP_NOHDRS, SMFIP_NR_HDR},
        {"EOH has NOEOH and NR_EOH", 'N', SMFIP_NOEOH, SMFIP_NR_EOH},
        {"BODY has NOBODY and NR_BODY", 'B', SMFIP_NOBODY, SMFIP_NR_BODY},
        {"UNKNOWN has NOUNKNOWN and NR_UNKN", 'U', SMFIP_NOUNKNOWN, SMFIP_NR_UNKN},
        {"end of message can be neither suppressed nor left unanswered", 'E', 0, 0},
        {"OPTNEG has no bits", 'O', 0, 0},
        {"MACRO has no bits", 'D', 0, 0},
        {"ABORT has no bits", 'A', 0, 0},
        {"QUIT has no bits", 'Q', 0, 0},
        {"QUIT_NC has no bits", 'K', 0, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(rows); i++) {
        uint32_t no = mgw_negotiate_no_bit(rows[i].cmd), nr = mgw_negotiate_nr_bit(rows[i].cmd);

        if (no != rows[i].want_no || nr != rows[i].want_nr)
            case_failed(rows[i].name, "got no 0x%x nr 0x%x, want no 0x%lx nr 0x%lx", no, nr,
                        rows[i].want_no, rows[i].want_nr);
    }
    end_table();
}

static void every_protocol_bit_is_named_as_in_libmilter(void **state)
{
#define ROW(x)                                                                                     \
    {                                                                                              \
        SMFIP_##x, #x                                                                              \
    }
    static const struct {
        unsigned long bit;
        const char *name;
    } want[] = {
        ROW(NOCONNECT), ROW(NOHELO),  ROW(NOMAIL),      ROW(NORCPT),   ROW(NOBODY),  ROW(NOHDRS),
        ROW(NOEOH),     ROW(NR_HDR),  ROW(NOUNKNOWN),   ROW(NODATA),   ROW(SKIP),    ROW(RCPT_REJ),
        ROW(NR_CONN),   ROW(NR_HELO), ROW(NR_MAIL),     ROW(NR_RCPT),  ROW(NR_DATA), ROW(NR_UNKN),
        ROW(NR_EOH),    ROW(NR_BODY), ROW(HDR_LEADSPC), ROW(MDS_256K), ROW(MDS_1M),
    };
#undef ROW
    size_t n;
    const struct mgw_milter_bit_name *got = mgw_milter_protocol_bits(&n);
    unsigned long all = 0;

    (void)state;
    if (n != NELEM(want))
        case_failed("the table has one row per SMFIP_ bit", "got %zu rows, want %zu", n,
                    NELEM(want));
    for (size_t i = 0; i < n && i < NELEM(want); i++) {
        all |= got[i].bit;
        if (got[i].bit != want[i].bit || strcmp(got[i].name, want[i].name) != 0)
            case_failed(want[i].name, "got 0x%x %s, want 0x%lx %s", got[i].bit, got[i].name,
                        want[i].bit, want[i].name);
    }
    if (all != (SMFI_CURR_PROT | SMFIP_MDS_256K | SMFIP_MDS_1M))
        case_failed("the bits are libmilter's current protocol plus MDS", "got 0x%lx, want 0x%lx",
                    all, (unsigned long)(SMFI_CURR_PROT | SMFIP_MDS_256K | SMFIP_MDS_1M));
    end_table();
}

static void every_action_is_named_as_in_libmilter(void **state)
{
#define ROW(x, key)                                                                                \
    {                                                                                              \
        SMFIF_##x, #x, key                                                                         \
    }
    static const struct {
        unsigned long bit;
        const char *name, *key;
    } want[] = {
        ROW(ADDHDRS, "add_header"),
        ROW(CHGHDRS, "change_header"),
        ROW(CHGBODY, "replace_body"),
        ROW(ADDRCPT, "add_rcpt"),
        ROW(ADDRCPT_PAR, "add_rcpt_with_args"),
        ROW(DELRCPT, "delete_rcpt"),
        ROW(QUARANTINE, "quarantine"),
        ROW(CHGFROM, "change_from"),
        ROW(SETSYMLIST, NULL),
    };
#undef ROW
    size_t n;
    const struct mgw_milter_action_info *got = mgw_milter_actions(&n);
    unsigned long all = 0;

    (void)state;
    if (n != NELEM(want))
        case_failed("the table has one row per SMFIF_ bit", "got %zu rows, want %zu", n,
                    NELEM(want));
    for (size_t i = 0; i < n && i < NELEM(want); i++) {
        all |= got[i].bit;
        if (got[i].bit != want[i].bit || strcmp(got[i].name, want[i].name) != 0 ||
            strcmp(str_or_null(got[i].key), str_or_null(want[i].key)) != 0)
            case_failed(want[i].name, "got 0x%x %s %s, want 0x%lx %s %s", got[i].bit, got[i].name,
                        str_or_null(got[i].key), want[i].bit, want[i].name,
                        str_or_null(want[i].key));
    }
    if (all != SMFI_CURR_ACTS)
        case_failed("the actions are libmilter's current set", "got 0x%lx, want 0x%lx", all,
                    (unsigned long)SMFI_CURR_ACTS);
    end_table();
}

static void each_modification_reply_needs_libmilters_action(void **state)
{
    static const struct {
        const char *name;
        uint8_t reply;
        unsigned long want;
    } rows[] = {
        {"ADDHEADER needs ADDHDRS", SMFIR_ADDHEADER, SMFIF_ADDHDRS},
        {"INSHEADER needs ADDHDRS too", SMFIR_INSHEADER, SMFIF_ADDHDRS},
        {"CHGHEADER needs CHGHDRS", SMFIR_CHGHEADER, SMFIF_CHGHDRS},
        {"REPLBODY needs CHGBODY", SMFIR_REPLBODY, SMFIF_CHGBODY},
        {"ADDRCPT needs ADDRCPT", SMFIR_ADDRCPT, SMFIF_ADDRCPT},
        {"ADDRCPT_PAR needs ADDRCPT_PAR", SMFIR_ADDRCPT_PAR, SMFIF_ADDRCPT_PAR},
        {"DELRCPT needs DELRCPT", SMFIR_DELRCPT, SMFIF_DELRCPT},
        {"CHGFROM needs CHGFROM", SMFIR_CHGFROM, SMFIF_CHGFROM},
        {"QUARANTINE needs QUARANTINE", SMFIR_QUARANTINE, SMFIF_QUARANTINE},
        {"CONTINUE is no modification", SMFIR_CONTINUE, 0},
        {"REPLYCODE is no modification", SMFIR_REPLYCODE, 0},
        {"SETSYMLIST is no modification", SMFIR_SETSYMLIST, 0},
        {"a command letter is no modification", SMFIC_HELO, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(rows); i++) {
        uint32_t got = mgw_milter_mod_action(rows[i].reply);

        if (got != rows[i].want)
            case_failed(rows[i].name, "got 0x%x, want 0x%lx", got, rows[i].want);
    }
    end_table();
}

static void each_macro_stage_is_libmilters_smfim_and_names_its_letter(void **state)
{
    static const struct {
        const char *name;
        int stage;
        uint8_t cmd;
        int want;
    } rows[] = {
        {"CONNECT macros are SMFIM_CONNECT", MGW_STAGE_CONNECT, 'C', SMFIM_CONNECT},
        {"HELO macros are SMFIM_HELO", MGW_STAGE_HELO, 'H', SMFIM_HELO},
        {"MAIL macros are SMFIM_ENVFROM", MGW_STAGE_ENVFROM, 'M', SMFIM_ENVFROM},
        {"RCPT macros are SMFIM_ENVRCPT", MGW_STAGE_ENVRCPT, 'R', SMFIM_ENVRCPT},
        {"DATA macros are SMFIM_DATA", MGW_STAGE_DATA, 'T', SMFIM_DATA},
        {"end of message macros are SMFIM_EOM", MGW_STAGE_EOM, 'E', SMFIM_EOM},
        {"end of header macros are SMFIM_EOH", MGW_STAGE_EOH, 'N', SMFIM_EOH},
    };

    (void)state;
    assert_int_equal(NELEM(rows), MGW_STAGE_COUNT);
    assert_int_equal(MGW_STAGE_COUNT, SMFIM_LAST + 1);
    for (size_t i = 0; i < NELEM(rows); i++) {
        int got = mgw_milter_stage_of_cmd(rows[i].cmd);
        uint8_t letter = mgw_milter_stage_cmd(rows[i].stage);

        if (rows[i].stage != rows[i].want || got != rows[i].want)
            case_failed(rows[i].name, "stage %d, of '%c' %d, want %d", rows[i].stage, rows[i].cmd,
                        got, rows[i].want);
        if (letter != rows[i].cmd)
            case_failed(rows[i].name, "letter of stage %d: got 0x%02x, want '%c'", rows[i].stage,
                        letter, rows[i].cmd);
    }
    end_table();
}

#endif /* MGW_HAVE_LIBMILTER */

/* ---- Our own vocabularies ---- */

static void each_event_has_its_letter_label_bit_and_metric(void **state)
{
    static const struct {
        int event;
        uint8_t cmd;
        const char *label;
        uint32_t policy_bit; /* the values MGW_POLICY_EV_* always had */
        int metric;
    } rows[] = {
        {MGW_MILTER_EV_CONNECT, 'C', "connect", 0x001, MGW_METRICS_EV_CONNECT},
        {MGW_MILTER_EV_HELO, 'H', "helo", 0x002, MGW_METRICS_EV_HELO},
        {MGW_MILTER_EV_MAIL, 'M', "mail", 0x004, MGW_METRICS_EV_MAIL},
        {MGW_MILTER_EV_RCPT, 'R', "rcpt", 0x008, MGW_METRICS_EV_RCPT},
        {MGW_MILTER_EV_DATA, 'T', "data", 0x010, MGW_METRICS_EV_DATA},
        {MGW_MILTER_EV_HEADER, 'L', "header", 0x020, MGW_METRICS_EV_HEADER},
        {MGW_MILTER_EV_EOH, 'N', "eoh", 0x040, MGW_METRICS_EV_EOH},
        {MGW_MILTER_EV_BODY, 'B', "body", 0x080, MGW_METRICS_EV_BODY},
        {MGW_MILTER_EV_EOM, 'E', "eom", 0x100, MGW_METRICS_EV_EOM},
        {MGW_MILTER_EV_UNKNOWN, 'U', "unknown", 0x200, MGW_METRICS_EV_UNKNOWN},
        {MGW_MILTER_EV_ABORT, 'A', "abort", 0, MGW_METRICS_EV_ABORT},
    };

    (void)state;
    assert_int_equal(NELEM(rows), MGW_MILTER_EV_COUNT);
    assert_int_equal(MGW_POLICY_EV_ALL, 0x3FF);
    for (size_t i = 0; i < NELEM(rows); i++) {
        const char *label = mgw_milter_event_label(rows[i].event);
        uint8_t cmd = mgw_milter_event_cmd(rows[i].event);

        if (cmd != rows[i].cmd || mgw_milter_cmd_event(cmd) != rows[i].event)
            case_failed(rows[i].label, "letter: got '%c', back %d", cmd, mgw_milter_cmd_event(cmd));
        if (strcmp(label, rows[i].label) != 0)
            case_failed(rows[i].label, "label: got %s", label);
        if (mgw_policy_event_bit(rows[i].cmd) != rows[i].policy_bit)
            case_failed(rows[i].label, "policy bit: got 0x%x, want 0x%x",
                        mgw_policy_event_bit(rows[i].cmd), rows[i].policy_bit);
        if (rows[i].metric != rows[i].event ||
            mgw_metrics_event_of_cmd(rows[i].cmd) != rows[i].event)
            case_failed(rows[i].label, "metric: got %d, want %d",
                        mgw_metrics_event_of_cmd(rows[i].cmd), rows[i].event);
    }
    if (strcmp(mgw_milter_event_label(-1), "?") != 0 ||
        strcmp(mgw_milter_event_label(MGW_MILTER_EV_COUNT), "?") != 0)
        case_failed("an event out of range has the label ?", "got %s / %s",
                    mgw_milter_event_label(-1), mgw_milter_event_label(MGW_MILTER_EV_COUNT));
    end_table();
}

static void each_command_says_whether_it_is_in_a_message_and_answered(void **state)
{
    static const struct {
        const char *name;
        uint8_t cmd;
        bool in_message;
        int replies; /* mgw_negotiate_replies() with no NR bit negotiated */
    } rows[] = {
        {"OPTNEG is answered, outside any message", 'O', false, 1},
        {"MACRO is never answered", 'D', false, 0},
        {"CONNECT is answered, outside any message", 'C', false, 1},
        {"HELO is answered, outside any message", 'H', false, 1},
        {"MAIL begins a message", 'M', true, 1},
        {"RCPT is in a message", 'R', true, 1},
        {"DATA is in a message", 'T', true, 1},
        {"a header is in a message", 'L', true, 1},
        {"end of headers is in a message", 'N', true, 1},
        {"a body chunk is in a message", 'B', true, 1},
        {"end of message is in a message", 'E', true, 1},
        {"UNKNOWN may come anywhere, so not in a message", 'U', false, 1},
        {"ABORT ends a message and is never answered", 'A', false, 0},
        {"QUIT is never answered", 'Q', false, 0},
        {"QUIT_NC is never answered", 'K', false, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(rows); i++) {
        bool in = mgw_milter_cmd_in_message(rows[i].cmd);
        int replies = mgw_negotiate_replies(0, rows[i].cmd);

        if (in != rows[i].in_message || replies != rows[i].replies)
            case_failed(rows[i].name, "got in_message %d replies %d, want %d %d", in, replies,
                        rows[i].in_message, rows[i].replies);
    }
    end_table();
}

static void each_verdict_has_its_name_reply_letter_and_reply_class(void **state)
{
    static const struct {
        enum mgw_verdict_kind kind;
        const char *name;
        uint8_t reply;
        char reply_class;
    } rows[] = {
        {MGW_VERDICT_CONTINUE, "continue", 'c', 0}, {MGW_VERDICT_ACCEPT, "accept", 'a', 0},
        {MGW_VERDICT_REJECT, "reject", 'r', '5'},   {MGW_VERDICT_TEMPFAIL, "tempfail", 't', '4'},
        {MGW_VERDICT_DISCARD, "discard", 'd', 0},   {MGW_VERDICT_SKIP, "skip", 's', 0},
        {(enum mgw_verdict_kind)6, "?", 0, 0},      {(enum mgw_verdict_kind) - 1, "?", 0, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(rows); i++) {
        const char *name = mgw_verdict_name(rows[i].kind);
        uint8_t reply = mgw_verdict_reply(rows[i].kind);
        char klass = mgw_verdict_reply_class(rows[i].kind);

        if (strcmp(name, rows[i].name) != 0 || reply != rows[i].reply ||
            klass != rows[i].reply_class)
            case_failed(rows[i].name, "got %s 0x%02x class 0x%02x, want 0x%02x class 0x%02x", name,
                        reply, klass, rows[i].reply, rows[i].reply_class);
    }
    end_table();
}

static void a_byte_that_is_no_command_or_reply_has_no_row(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        char name[32];
        bool mta = b != 0 && strchr(mta_letters, (int)b) != NULL;
        bool milter = b != 0 && strchr(milter_letters, (int)b) != NULL;

        snprintf(name, sizeof name, "byte 0x%02x", b);
        if ((mgw_milter_cmd_info((uint8_t)b) != NULL) != mta)
            case_failed(name, "command row: got %d, want %d",
                        mgw_milter_cmd_info((uint8_t)b) != NULL, mta);
        if ((mgw_milter_reply_info((uint8_t)b) != NULL) != milter)
            case_failed(name, "reply row: got %d, want %d",
                        mgw_milter_reply_info((uint8_t)b) != NULL, milter);
        if (mta)
            continue;
        if (strcmp(mgw_milter_cmd_name((uint8_t)b, MGW_MILTER_FROM_MTA), "?") != 0 ||
            mgw_milter_stage_of_cmd((uint8_t)b) != -1 || mgw_milter_cmd_event((uint8_t)b) != -1 ||
            mgw_milter_cmd_event_bit((uint8_t)b) != 0 || mgw_milter_cmd_in_message((uint8_t)b) ||
            mgw_negotiate_no_bit((uint8_t)b) != 0 || mgw_negotiate_nr_bit((uint8_t)b) != 0 ||
            mgw_negotiate_replies(0, (uint8_t)b) != 1)
            case_failed(name, "a non-command has a value other than none");
    }
    if (mgw_milter_stage_cmd(-1) != 0 || mgw_milter_stage_cmd(MGW_STAGE_COUNT) != 0)
        case_failed("a stage out of range has no letter", "got a letter");
    end_table();
}

static void each_filter_proto_action_maps_to_its_smfif_bit(void **state)
{
    static const struct {
        int proto;
        uint32_t want;
    } rows[] = {
        {0, 0}, /* ACTION_UNSPECIFIED */
        {1, MGW_SMFIF_ADDHDRS},
        {2, MGW_SMFIF_CHGHDRS},
        {3, MGW_SMFIF_CHGBODY},
        {4, MGW_SMFIF_ADDRCPT},
        {5, MGW_SMFIF_DELRCPT},
        {6, MGW_SMFIF_QUARANTINE},
        {7, MGW_SMFIF_CHGFROM},
        {8, MGW_SMFIF_ADDRCPT_PAR},
        {9, 0},
        {-1, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(rows); i++) {
        uint32_t got = mgw_milter_action_of_proto(rows[i].proto);

        if (got != rows[i].want)
            case_failed("each filter.proto Action value maps to its SMFIF bit",
                        "Action %d: got 0x%x, want 0x%x", rows[i].proto, got, rows[i].want);
    }
    end_table();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#ifdef MGW_HAVE_LIBMILTER
        cmocka_unit_test(every_command_letter_and_name_is_libmilters_smfic),
        cmocka_unit_test(every_reply_letter_and_name_is_libmilters_smfir),
        cmocka_unit_test(each_command_has_libmilters_no_and_nr_bits),
        cmocka_unit_test(every_protocol_bit_is_named_as_in_libmilter),
        cmocka_unit_test(every_action_is_named_as_in_libmilter),
        cmocka_unit_test(each_modification_reply_needs_libmilters_action),
        cmocka_unit_test(each_macro_stage_is_libmilters_smfim_and_names_its_letter),
#endif
        cmocka_unit_test(each_event_has_its_letter_label_bit_and_metric),
        cmocka_unit_test(each_command_says_whether_it_is_in_a_message_and_answered),
        cmocka_unit_test(each_verdict_has_its_name_reply_letter_and_reply_class),
        cmocka_unit_test(a_byte_that_is_no_command_or_reply_has_no_row),
        cmocka_unit_test(each_filter_proto_action_maps_to_its_smfif_bit),
    };

#ifndef MGW_HAVE_LIBMILTER
    print_message("libmilter headers not found: the libmilter tables are skipped\n");
#endif
    return cmocka_run_group_tests(tests, NULL, NULL);
}
