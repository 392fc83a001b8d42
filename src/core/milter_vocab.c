/*
 * milter_vocab.c - the milter vocabularies as tables (see milter_vocab.h).
 *
 * DESCRIPTION
 *   Each vocabulary is one static const table; every exported function is a lookup in
 *   it and nothing else. The command and reply tables are indexed by the letter itself
 *   with designated initializers, so a lookup is one array access and a row reads like
 *   the protocol description. A letter without a row is all zeros: name NULL, which the
 *   lookups turn into "not a command" (NULL row, -1, 0, false).
 *
 *   tests/unit/test_milter_vocab.c checks the rows against libmilter's mfdef.h and
 *   mfapi.h, and the labels against the strings logs and metrics have always used.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/milter_vocab.h"

/* ---- Filter events ---- */

static const struct {
    uint8_t cmd;
    const char *label;
} events[MGW_MILTER_EV_COUNT] = {
    [MGW_MILTER_EV_CONNECT] = {MGW_SMFIC_CONNECT, "connect"},
    [MGW_MILTER_EV_HELO] = {MGW_SMFIC_HELO, "helo"},
    [MGW_MILTER_EV_MAIL] = {MGW_SMFIC_MAIL, "mail"},
    [MGW_MILTER_EV_RCPT] = {MGW_SMFIC_RCPT, "rcpt"},
    [MGW_MILTER_EV_DATA] = {MGW_SMFIC_DATA, "data"},
    [MGW_MILTER_EV_HEADER] = {MGW_SMFIC_HEADER, "header"},
    [MGW_MILTER_EV_EOH] = {MGW_SMFIC_EOH, "eoh"},
    [MGW_MILTER_EV_BODY] = {MGW_SMFIC_BODY, "body"},
    [MGW_MILTER_EV_EOM] = {MGW_SMFIC_BODYEOB, "eom"},
    [MGW_MILTER_EV_UNKNOWN] = {MGW_SMFIC_UNKNOWN, "unknown"},
    [MGW_MILTER_EV_ABORT] = {MGW_SMFIC_ABORT, "abort"},
};

const char *mgw_milter_event_label(int event)
{
    return event >= 0 && event < MGW_MILTER_EV_COUNT ? events[event].label : "?";
}

uint8_t mgw_milter_event_cmd(int event)
{
    return event >= 0 && event < MGW_MILTER_EV_COUNT ? events[event].cmd : 0;
}

/* ---- Commands ---- */

/* Rows in the letter order of mfdef.h; columns: name, stage, event, no_bit, nr_bit, and
 * the two flags where true. `stage` and `event` need explicit NONEs: 0 means CONNECT. */
#define NONE -1
static const struct mgw_milter_cmd_info commands[256] = {
    [MGW_SMFIC_ABORT] = {"ABORT", NONE, MGW_MILTER_EV_ABORT, 0, 0, .unanswered = true},
    [MGW_SMFIC_BODY] = {"BODY", NONE, MGW_MILTER_EV_BODY, MGW_SMFIP_NOBODY, MGW_SMFIP_NR_BODY,
                        .in_message = true},
    [MGW_SMFIC_CONNECT] = {"CONNECT", MGW_STAGE_CONNECT, MGW_MILTER_EV_CONNECT, MGW_SMFIP_NOCONNECT,
                           MGW_SMFIP_NR_CONN, .in_message = false},
    [MGW_SMFIC_MACRO] = {"MACRO", NONE, NONE, 0, 0, .unanswered = true},
    [MGW_SMFIC_BODYEOB] = {"BODYEOB", MGW_STAGE_EOM, MGW_MILTER_EV_EOM, 0, 0, .in_message = true},
    [MGW_SMFIC_HELO] = {"HELO", MGW_STAGE_HELO, MGW_MILTER_EV_HELO, MGW_SMFIP_NOHELO,
                        MGW_SMFIP_NR_HELO, .in_message = false},
    [MGW_SMFIC_QUIT_NC] = {"QUIT_NC", NONE, NONE, 0, 0, .unanswered = true},
    [MGW_SMFIC_HEADER] = {"HEADER", NONE, MGW_MILTER_EV_HEADER, MGW_SMFIP_NOHDRS, MGW_SMFIP_NR_HDR,
                          .in_message = true},
    [MGW_SMFIC_MAIL] = {"MAIL", MGW_STAGE_ENVFROM, MGW_MILTER_EV_MAIL, MGW_SMFIP_NOMAIL,
                        MGW_SMFIP_NR_MAIL, .in_message = true},
    [MGW_SMFIC_EOH] = {"EOH", MGW_STAGE_EOH, MGW_MILTER_EV_EOH, MGW_SMFIP_NOEOH, MGW_SMFIP_NR_EOH,
                       .in_message = true},
    [MGW_SMFIC_OPTNEG] = {"OPTNEG", NONE, NONE, 0, 0, .unanswered = false},
    [MGW_SMFIC_QUIT] = {"QUIT", NONE, NONE, 0, 0, .unanswered = true},
    [MGW_SMFIC_RCPT] = {"RCPT", MGW_STAGE_ENVRCPT, MGW_MILTER_EV_RCPT, MGW_SMFIP_NORCPT,
                        MGW_SMFIP_NR_RCPT, .in_message = true},
    [MGW_SMFIC_DATA] = {"DATA", MGW_STAGE_DATA, MGW_MILTER_EV_DATA, MGW_SMFIP_NODATA,
                        MGW_SMFIP_NR_DATA, .in_message = true},
    [MGW_SMFIC_UNKNOWN] = {"UNKNOWN", NONE, MGW_MILTER_EV_UNKNOWN, MGW_SMFIP_NOUNKNOWN,
                           MGW_SMFIP_NR_UNKN, .in_message = false},
};
#undef NONE

/* What a non-command looks like to the one-line lookups below. */
static const struct mgw_milter_cmd_info no_command = {NULL, -1, -1, 0, 0, false, false};

static const struct mgw_milter_cmd_info *cmd_row(uint8_t cmd)
{
    return commands[cmd].name != NULL ? &commands[cmd] : &no_command;
}

const struct mgw_milter_cmd_info *mgw_milter_cmd_info(uint8_t cmd)
{
    return commands[cmd].name != NULL ? &commands[cmd] : NULL;
}

int mgw_milter_cmd_event(uint8_t cmd)
{
    return cmd_row(cmd)->event;
}

bool mgw_milter_cmd_in_message(uint8_t cmd)
{
    return cmd_row(cmd)->in_message;
}

uint32_t mgw_milter_cmd_event_bit(uint8_t cmd)
{
    int e = cmd_row(cmd)->event;

    return e >= 0 && e < MGW_MILTER_EV_SUBSCRIBABLE ? 1u << e : 0;
}

int mgw_milter_stage_of_cmd(uint8_t cmd)
{
    return cmd_row(cmd)->stage;
}

uint8_t mgw_milter_stage_cmd(int stage)
{
    for (unsigned c = 0; c < 256; c++)
        if (commands[c].name != NULL && commands[c].stage == stage && stage >= 0)
            return (uint8_t)c;
    return 0;
}

/* ---- Replies ---- */

static const struct mgw_milter_reply_info replies[256] = {
    [MGW_SMFIR_ADDRCPT] = {"ADDRCPT", MGW_SMFIF_ADDRCPT},
    [MGW_SMFIR_DELRCPT] = {"DELRCPT", MGW_SMFIF_DELRCPT},
    [MGW_SMFIR_ADDRCPT_PAR] = {"ADDRCPT_PAR", MGW_SMFIF_ADDRCPT_PAR},
    [MGW_SMFIR_SHUTDOWN] = {"SHUTDOWN", 0},
    [MGW_SMFIR_ACCEPT] = {"ACCEPT", 0},
    [MGW_SMFIR_REPLBODY] = {"REPLBODY", MGW_SMFIF_CHGBODY},
    [MGW_SMFIR_CONTINUE] = {"CONTINUE", 0},
    [MGW_SMFIR_DISCARD] = {"DISCARD", 0},
    [MGW_SMFIR_CHGFROM] = {"CHGFROM", MGW_SMFIF_CHGFROM},
    [MGW_SMFIR_CONN_FAIL] = {"CONN_FAIL", 0},
    [MGW_SMFIR_ADDHEADER] = {"ADDHEADER", MGW_SMFIF_ADDHDRS},
    [MGW_SMFIR_INSHEADER] = {"INSHEADER", MGW_SMFIF_ADDHDRS},
    [MGW_SMFIR_SETSYMLIST] = {"SETSYMLIST", 0},
    [MGW_SMFIR_CHGHEADER] = {"CHGHEADER", MGW_SMFIF_CHGHDRS},
    [MGW_SMFIR_OPTNEG] = {"OPTNEG", 0},
    [MGW_SMFIR_PROGRESS] = {"PROGRESS", 0},
    [MGW_SMFIR_QUARANTINE] = {"QUARANTINE", MGW_SMFIF_QUARANTINE},
    [MGW_SMFIR_REJECT] = {"REJECT", 0},
    [MGW_SMFIR_SKIP] = {"SKIP", 0},
    [MGW_SMFIR_TEMPFAIL] = {"TEMPFAIL", 0},
    [MGW_SMFIR_REPLYCODE] = {"REPLYCODE", 0},
};

const struct mgw_milter_reply_info *mgw_milter_reply_info(uint8_t reply)
{
    return replies[reply].name != NULL ? &replies[reply] : NULL;
}

uint32_t mgw_milter_mod_action(uint8_t reply)
{
    return replies[reply].mod_action;
}

const char *mgw_milter_cmd_name(uint8_t cmd, enum mgw_milter_dir dir)
{
    const char *name = dir == MGW_MILTER_FROM_MILTER ? replies[cmd].name : commands[cmd].name;

    return name != NULL ? name : "?";
}

/* ---- Verdicts ---- */

static const struct {
    const char *name;
    uint8_t reply;
    char reply_class; /* first digit of an SMTP reply that may go with it */
} verdicts[] = {
    [MGW_VERDICT_CONTINUE] = {"continue", MGW_SMFIR_CONTINUE, 0},
    [MGW_VERDICT_ACCEPT] = {"accept", MGW_SMFIR_ACCEPT, 0},
    [MGW_VERDICT_REJECT] = {"reject", MGW_SMFIR_REJECT, '5'},
    [MGW_VERDICT_TEMPFAIL] = {"tempfail", MGW_SMFIR_TEMPFAIL, '4'},
    [MGW_VERDICT_DISCARD] = {"discard", MGW_SMFIR_DISCARD, 0},
    [MGW_VERDICT_SKIP] = {"skip", MGW_SMFIR_SKIP, 0},
};
#define NVERDICTS (sizeof verdicts / sizeof verdicts[0])

const char *mgw_verdict_name(enum mgw_verdict_kind k)
{
    return (unsigned)k < NVERDICTS ? verdicts[k].name : "?";
}

uint8_t mgw_verdict_reply(enum mgw_verdict_kind k)
{
    return (unsigned)k < NVERDICTS ? verdicts[k].reply : 0;
}

char mgw_verdict_reply_class(enum mgw_verdict_kind k)
{
    return (unsigned)k < NVERDICTS ? verdicts[k].reply_class : 0;
}

/* ---- Actions and protocol bits ---- */

static const struct mgw_milter_action_info actions[] = {
    {MGW_SMFIF_ADDHDRS, "ADDHDRS", "add_header", 1},
    {MGW_SMFIF_CHGHDRS, "CHGHDRS", "change_header", 2},
    {MGW_SMFIF_CHGBODY, "CHGBODY", "replace_body", 3},
    {MGW_SMFIF_ADDRCPT, "ADDRCPT", "add_rcpt", 4},
    {MGW_SMFIF_ADDRCPT_PAR, "ADDRCPT_PAR", "add_rcpt_with_args", 8},
    {MGW_SMFIF_DELRCPT, "DELRCPT", "delete_rcpt", 5},
    {MGW_SMFIF_QUARANTINE, "QUARANTINE", "quarantine", 6},
    {MGW_SMFIF_CHGFROM, "CHGFROM", "change_from", 7},
    {MGW_SMFIF_SETSYMLIST, "SETSYMLIST", NULL, 0},
};
#define NACTIONS (sizeof actions / sizeof actions[0])

const struct mgw_milter_action_info *mgw_milter_actions(size_t *n)
{
    *n = NACTIONS;
    return actions;
}

uint32_t mgw_milter_action_of_proto(int proto)
{
    for (size_t i = 0; i < NACTIONS; i++)
        if (actions[i].proto == proto && proto != 0)
            return actions[i].bit;
    return 0;
}

static const struct mgw_milter_bit_name protocol_bits[] = {
    {MGW_SMFIP_NOCONNECT, "NOCONNECT"},
    {MGW_SMFIP_NOHELO, "NOHELO"},
    {MGW_SMFIP_NOMAIL, "NOMAIL"},
    {MGW_SMFIP_NORCPT, "NORCPT"},
    {MGW_SMFIP_NOBODY, "NOBODY"},
    {MGW_SMFIP_NOHDRS, "NOHDRS"},
    {MGW_SMFIP_NOEOH, "NOEOH"},
    {MGW_SMFIP_NR_HDR, "NR_HDR"},
    {MGW_SMFIP_NOUNKNOWN, "NOUNKNOWN"},
    {MGW_SMFIP_NODATA, "NODATA"},
    {MGW_SMFIP_SKIP, "SKIP"},
    {MGW_SMFIP_RCPT_REJ, "RCPT_REJ"},
    {MGW_SMFIP_NR_CONN, "NR_CONN"},
    {MGW_SMFIP_NR_HELO, "NR_HELO"},
    {MGW_SMFIP_NR_MAIL, "NR_MAIL"},
    {MGW_SMFIP_NR_RCPT, "NR_RCPT"},
    {MGW_SMFIP_NR_DATA, "NR_DATA"},
    {MGW_SMFIP_NR_UNKN, "NR_UNKN"},
    {MGW_SMFIP_NR_EOH, "NR_EOH"},
    {MGW_SMFIP_NR_BODY, "NR_BODY"},
    {MGW_SMFIP_HDR_LEADSPC, "HDR_LEADSPC"},
    {MGW_SMFIP_MDS_256K, "MDS_256K"},
    {MGW_SMFIP_MDS_1M, "MDS_1M"},
};

const struct mgw_milter_bit_name *mgw_milter_protocol_bits(size_t *n)
{
    *n = sizeof protocol_bits / sizeof protocol_bits[0];
    return protocol_bits;
}
