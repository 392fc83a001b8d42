/*
 * test_filter.h - shared declarations of the flag-driven test filter.
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The test filter is a gRPC core server implementing miltergw.v1.Filter whose behaviour is
 * set entirely by command-line flags (see `mgw_test_filter --help`). test_filter_opts.c
 * parses the flags into one immutable `struct tf_opts` (read-only after tf_opts_parse());
 * test_filter.c runs the server and answers events from it.
 */
#ifndef MGW_TEST_FILTER_H
#define MGW_TEST_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "miltergw/v1/filter.pb-c.h"

/* Stages, in EventType order: stage s is EventType s + 1. */
enum tf_stage {
    TF_CONNECT,
    TF_HELO,
    TF_MAIL,
    TF_RCPT,
    TF_DATA,
    TF_HEADER,
    TF_EOH,
    TF_BODY,
    TF_EOM,
    TF_UNKNOWN,
    TF_NSTAGES
};
#define TF_BIT(st)    (1u << (st))
#define TF_ALL_STAGES (TF_BIT(TF_NSTAGES) - 1u)

#define TF_MAX_LIST 64 /* repeatable flags, macro names per stage, ESMTP args */

/* One prebuilt modification; sub-message storage lives here, strings in `copy`. */
struct tf_mod {
    Miltergw__V1__Modification m;
    union {
        Miltergw__V1__AddHeader add_header;
        Miltergw__V1__InsertHeader insert_header;
        Miltergw__V1__ChangeHeader change_header;
        Miltergw__V1__AddRecipient add_rcpt;
        Miltergw__V1__DeleteRecipient del_rcpt;
        Miltergw__V1__ChangeFrom change_from;
        Miltergw__V1__ReplaceBody replace_body;
        Miltergw__V1__Quarantine quarantine;
    } u;
    char *args[TF_MAX_LIST]; /* ESMTP args, pointing into copy */
    char *copy;              /* owned: the flag's argument, split and unescaped in place */
};

struct tf_opts {
    const char *listen;
    const char *name;
    const char *filter_version;
    const char *record;

    /* TLS (server side): PEM files; NULL = plaintext. tls_client_ca also makes the server
     * require and verify a client certificate (mutual TLS). */
    const char *tls_cert;
    const char *tls_key;
    const char *tls_client_ca;

    /* Declaration (Describe answer). Masks are TF_BIT(stage) sets. */
    unsigned events;
    unsigned observe;
    bool actions_given;
    unsigned actions; /* bit (1 << Miltergw__V1__Action) */
    bool rcpt_rej;
    bool leadspc;
    /* --multiplexed: one Session stream carries many connections (Event.session). Per-
     * connection flags act per connection; --fail-at ends the whole stream. */
    bool multiplexed;

    /* Verdicts per stage. */
    unsigned accept_at, reject_at, tempfail_at, discard_at;
    unsigned never_at, crash_at, bogus_at, delay_at, fail_at, twice_at;
    int fail_code;            /* --fail-status: grpc status code ending the stream */
    const char *fail_details; /* ... and its details (unescaped) */
    bool skip_body;
    bool progress;
    bool no_batches; /* --no-batches: declare no Description.batches, send single replies */
    unsigned delay_ms;
    const char *tempfail_rcpt[TF_MAX_LIST];
    size_t n_tempfail_rcpt;
    const char *reject_rcpt[TF_MAX_LIST];
    size_t n_reject_rcpt;
    /* --only-from: verdicts from MAIL on, delays, progress and modifications apply only to
     * messages whose MAIL FROM is one of these; empty = every message. */
    const char *only_from[TF_MAX_LIST];
    size_t n_only_from;

    /* --control FILE: re-read on SIGUSR1 (runtime delay and bogus toggles). */
    const char *control;
    /* --echo-header NAME:SRC: at EOM add NAME with the value of the message's SRC header. */
    const char *echo_name, *echo_src;
    char *echo_copy; /* owned */

    /* Custom SMTP response for reject/tempfail; sent only if has_response. */
    bool has_response;
    Miltergw__V1__SmtpResponse response;
    char *response_lines[TF_MAX_LIST];

    /* Modifications, in flag order, sent with the final EOM reply. */
    struct tf_mod mods[TF_MAX_LIST];
    Miltergw__V1__Modification *mod_ptrs[TF_MAX_LIST];
    size_t n_mods;

    /* Macros wanted, per macro stage. */
    Miltergw__V1__MacroRequest macro_req[TF_NSTAGES];
    Miltergw__V1__MacroRequest *macro_ptrs[TF_NSTAGES]; /* the stages with names */
    size_t n_macro_ptrs;
    char *macro_names[TF_NSTAGES][TF_MAX_LIST];
    char *macro_copies[TF_MAX_LIST]; /* owned */
    size_t n_macro_copies;
};

/* The options; read-only once tf_opts_parse() has returned. */
extern struct tf_opts tf;

/* Parses argv into `tf`. Prints usage and exits 0 on --help, exits 2 on bad usage. */
void tf_opts_parse(int argc, char **argv);

/* Frees what tf_opts_parse() allocated. */
void tf_opts_free(void);

/* Fills *d (storage: the arrays passed) with the Description this filter declares. */
void tf_describe(Miltergw__V1__Description *d, Miltergw__V1__EventType *events,
                 Miltergw__V1__EventType *observe, Miltergw__V1__Action *actions);

/* "connect", "helo", ... for a stage. */
const char *tf_stage_name(unsigned st);

/* Mask of stages named in an EventType list; an empty list means all. */
unsigned tf_stage_mask(const Miltergw__V1__EventType *types, size_t n, bool empty_is_all);

/* 1 if two addresses are equal ignoring case and one pair of angle brackets. */
int tf_addr_match(const char *got, const char *want);

#endif
