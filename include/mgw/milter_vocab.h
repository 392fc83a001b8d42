/*
 * milter_vocab.h - the milter vocabularies, one table each, and their lookups.
 *
 * Every fact about a command letter, a reply letter, a filter event or a verdict is
 * written once, as one row of a static table in milter_vocab.c (Postfix keeps
 * smfic_table, smfir_table, ... in milter8.c the same way). Everything else - the codec,
 * the negotiation, the merge policy, the metrics labels, the session, the bridge, the
 * filter.proto translation and the load generator - asks these functions instead of
 * keeping its own switch. Adding a command is then a one-row change.
 *
 *   command (MTA -> milter, SMFIC_*)  name for logs, macro stage of its D, filter event,
 *                                     SMFIP_NO* / SMFIP_NR_* bits, whether the MTA waits
 *                                     for an answer, whether it belongs to a message
 *   reply   (milter -> MTA, SMFIR_*)  name for logs, SMFIF_* action a modification needs
 *   event   (what a filter is sent)   label (metrics, configuration), command letter;
 *                                     the event's index is its metrics label index and,
 *                                     below MGW_MILTER_EV_SUBSCRIBABLE, its bit in
 *                                     MGW_POLICY_EV_* (policy.h)
 *   stage   (SMFIM_*)                 the command letter whose D carries its macros
 *   verdict (enum mgw_verdict_kind)   name for logs and labels, the reply letter sent,
 *                                     the class of SMTP reply text it may carry
 *   action  (SMFIF_*)                 libmilter name, configuration key
 *   protocol bit (SMFIP_*)            libmilter name
 *
 * Pure and constant: no state, no I/O, no allocation. Every string returned is static.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MILTER_VOCAB_H
#define MGW_MILTER_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mgw/backend.h"
#include "mgw/milter_codec.h"

/* ---- Filter events ---- */

/* What the gateway forwards to a filter, in one fixed order: the order of the metrics
 * labels (filter_events_total{event}) and of the MGW_POLICY_EV_* bits. */
enum mgw_milter_event {
    MGW_MILTER_EV_CONNECT = 0, /* C */
    MGW_MILTER_EV_HELO,        /* H */
    MGW_MILTER_EV_MAIL,        /* M */
    MGW_MILTER_EV_RCPT,        /* R */
    MGW_MILTER_EV_DATA,        /* T */
    MGW_MILTER_EV_HEADER,      /* L */
    MGW_MILTER_EV_EOH,         /* N */
    MGW_MILTER_EV_BODY,        /* B */
    MGW_MILTER_EV_EOM,         /* E */
    MGW_MILTER_EV_UNKNOWN,     /* U */
    MGW_MILTER_EV_ABORT,       /* A: sent to filters, but nobody subscribes to it */
    MGW_MILTER_EV_COUNT
};
/* Events below this one can be subscribed to; event e has the bit 1u << e. */
#define MGW_MILTER_EV_SUBSCRIBABLE MGW_MILTER_EV_ABORT

/* Label of an event, e.g. "connect", "eom", "abort"; "?" when out of range. */
const char *mgw_milter_event_label(int event);
/* Command letter of an event, or 0 when out of range. */
uint8_t mgw_milter_event_cmd(int event);

/* ---- Commands (MTA -> milter) ---- */

struct mgw_milter_cmd_info {
    const char *name; /* libmilter's SMFIC_ name without the prefix: "HELO", "BODYEOB" */
    int8_t stage;     /* MGW_STAGE_* of the macros a D for this letter carries, or -1 */
    int8_t event;     /* enum mgw_milter_event, or -1 (O D Q K are not forwarded) */
    uint32_t no_bit;  /* SMFIP_NO* that stops the MTA sending it, or 0 */
    uint32_t nr_bit;  /* SMFIP_NR_* that makes it unanswered, or 0 */
    bool unanswered;  /* the MTA never waits for an answer (D A Q K) */
    bool in_message;  /* part of a message: M R T L N B E (not A, which ends one) */
};

/* The row of command `cmd`, or NULL if `cmd` is no command the MTA sends. */
const struct mgw_milter_cmd_info *mgw_milter_cmd_info(uint8_t cmd);

/* One-line lookups on that row; each gives the "none" value for a non-command. */
int mgw_milter_cmd_event(uint8_t cmd);       /* enum mgw_milter_event, or -1 */
bool mgw_milter_cmd_in_message(uint8_t cmd); /* M R T L N B E */
/* The MGW_POLICY_EV_* bit of an event command (C H M R T L N B E U), or 0. */
uint32_t mgw_milter_cmd_event_bit(uint8_t cmd);

/* The command letter whose D carries the macros of `stage` (C H M R T E N), or 0. */
uint8_t mgw_milter_stage_cmd(int stage);

/* ---- Replies (milter -> MTA) ---- */

struct mgw_milter_reply_info {
    const char *name;    /* libmilter's SMFIR_ name without the prefix: "REPLYCODE" */
    uint32_t mod_action; /* SMFIF_* a modification needs (h i m b + 2 - e q), else 0 */
};

/* The row of reply `reply`, or NULL if `reply` is no reply a milter sends. */
const struct mgw_milter_reply_info *mgw_milter_reply_info(uint8_t reply);

/* ---- Verdicts ---- */

/* The reply letter that carries verdict `k` (c a r t d s), or 0 when out of range.
 * mgw_verdict_name() (backend.h) reads the same table. */
uint8_t mgw_verdict_reply(enum mgw_verdict_kind k);
/* The first digit of an SMTP reply text that may go with verdict `k`: '5' for reject,
 * '4' for tempfail, 0 for a verdict that carries no text. Another class would change
 * the verdict at the MTA (or make it a protocol error). */
char mgw_verdict_reply_class(enum mgw_verdict_kind k);

/* ---- Actions (SMFIF_*) and protocol bits (SMFIP_*) ---- */

struct mgw_milter_action_info {
    uint32_t bit;     /* SMFIF_* */
    const char *name; /* libmilter's name without SMFIF_: "ADDHDRS" */
    const char *key;  /* configuration spelling, "add_header"; NULL for SETSYMLIST */
    int proto;        /* value of filter.proto's Action enum, 0 for SETSYMLIST */
};

/* The SMFIF_* actions, in configuration order (add_header change_header replace_body
 * add_rcpt add_rcpt_with_args delete_rcpt quarantine change_from, then SETSYMLIST, which
 * only the gateway uses). *n gets the row count. */
const struct mgw_milter_action_info *mgw_milter_actions(size_t *n);
/* The SMFIF_* bit of filter.proto Action value `proto`, or 0. */
uint32_t mgw_milter_action_of_proto(int proto);

struct mgw_milter_bit_name {
    uint32_t bit;
    const char *name; /* libmilter's name without SMFIP_: "NOCONNECT", "NR_HDR" */
};

/* The SMFIP_* protocol bits (MDS_* included), in bit order. *n gets the row count. */
const struct mgw_milter_bit_name *mgw_milter_protocol_bits(size_t *n);

#endif
