/*
 * filter_conf.h - one configured filter: name, gRPC target, failure policy, timeouts.
 *
 * Parsed from the command line for now:
 *   --filter NAME=TARGET[,kind=grpc|milter][,phase=N][,on_error=tempfail|accept|reject]
 *            [,timeout=DUR][,eom_timeout=DUR][,mode=shadow|normal][,content=pipelined|strict]
 *            [,max_queue=SIZE][,max_message=SIZE]
 * DUR is a number with a unit: 250ms, 10s, 2m (a bare number means seconds). TARGET is
 * any gRPC target string: 127.0.0.1:50051, dns:///filter:50051, ipv4:a:p,b:p, unix:/path.
 * The order of --filter flags is the merge order. Pure.
 *
 * The configuration file (config.h) fills the same structure and the fields after
 * `shadow` too (load balancing, keepalive, TLS, a declaration override); --filter leaves
 * those at their defaults.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_CONF_H
#define MGW_FILTER_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "mgw/backend.h"
#include "mgw/policy.h"

enum mgw_on_error {
    MGW_ON_ERROR_TEMPFAIL = 0, /* default: fail closed, the sender retries */
    MGW_ON_ERROR_ACCEPT,       /* fail open: the filter is ignored */
    MGW_ON_ERROR_REJECT,
};

#define MGW_FILTER_DEFAULT_TIMEOUT_MS 10000u
#define MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS 60000u
#define MGW_FILTER_NAME_MAX 64
#define MGW_FILTER_DEFAULT_KEEPALIVE_TIME_MS 300000u  /* HTTP/2 PING every 5 min when idle */
#define MGW_FILTER_DEFAULT_KEEPALIVE_TIMEOUT_MS 20000u /* ... answered within 20 s */
/* Events packed for one stream and not yet taken by gRPC: a filter that falls this far
 * behind (stopped, unreachable, slower than the MTA) gets its failure policy rather than
 * the gateway's memory. Per MTA connection and filter. */
#define MGW_FILTER_DEFAULT_MAX_QUEUE (4u << 20)
/* The largest message accepted from a filter (a Reply with a replaced body): gRPC's
 * receive limit on the channel. */
#define MGW_FILTER_DEFAULT_MAX_MESSAGE (64u << 20)
/* Bounds of both: a body chunk must fit; a reply beyond 1 GiB is no mail any MTA takes.
 * The configuration (config.h) also holds max_queue to at least one full milter frame's
 * event, limits.max_frame + 1 KiB: 64 KiB alone cannot hold a 65535-byte body chunk. */
#define MGW_FILTER_MIN_SIZE (64u << 10)
#define MGW_FILTER_MAX_SIZE (1u << 30)

/* What speaks behind a filter's target. */
enum mgw_filter_kind {
    MGW_FILTER_GRPC = 0, /* a miltergw.v1.Filter gRPC service */
    MGW_FILTER_MILTER,   /* an existing milter, spoken to in milter v6 as an MTA would */
};

/* Phases order filters (policy.h rule 8); a bound keeps the configuration readable. */
#define MGW_FILTER_MAX_PHASE 99u

enum mgw_load_balancing {
    MGW_LB_PICK_FIRST = 0, /* gRPC's default: one connection to the first address */
    MGW_LB_ROUND_ROBIN,    /* a connection to every address; calls spread over them */
};

struct mgw_filter_conf {
    char name[MGW_FILTER_NAME_MAX];
    char *target;            /* owned */
    enum mgw_filter_kind kind;
    unsigned phase;          /* 0 first; see MGW_FILTER_MAX_PHASE */
    enum mgw_on_error on_error;
    unsigned timeout_ms;     /* per event */
    unsigned eom_timeout_ms; /* end of message */
    bool shadow;
    /* Answers to headers, end of headers and body must each be waited for by the MTA;
     * false (the default) lets them count at end of message (policy.h rule 7). */
    bool content_strict;
    unsigned max_queue;      /* bytes; see MGW_FILTER_DEFAULT_MAX_QUEUE */
    unsigned max_message;    /* bytes; see MGW_FILTER_DEFAULT_MAX_MESSAGE */
    /* Fields below come from the configuration file; --filter sets their defaults. */
    enum mgw_load_balancing load_balancing;
    unsigned keepalive_time_ms;    /* PING interval on a channel with calls; 0 = default */
    unsigned keepalive_timeout_ms; /* PING answer deadline; 0 = default */
    bool tls;                      /* TLS to the filter; false = plaintext */
    char *tls_ca;                  /* owned; PEM root certificates; NULL = system roots */
    char *tls_cert;                /* owned; PEM client certificate (mutual TLS), with key */
    char *tls_key;                 /* owned; PEM private key of tls_cert */
    char *tls_server_name;         /* owned; name to check in the filter's certificate;
                                      NULL = the host of the target */
    /* When has_decl, `decl` replaces the filter's Describe answer (events, observe_only,
     * actions, macros, the two flags); decl.macros[] strings are owned by this struct and
     * decl.shadow equals `shadow`. */
    bool has_decl;
    struct mgw_policy_decl decl;
};

/* Parse one --filter value into *out (target allocated). Returns 0, or MGW_EINVAL with a
 * reason in err. */
int mgw_filter_conf_parse(const char *arg, struct mgw_filter_conf *out, char *err, size_t errlen);
/* Free what *c owns (target, tls_*, decl.macros) and set those pointers to NULL. */
void mgw_filter_conf_clear(struct mgw_filter_conf *c);
/* Deep copy: *dst (not cleared first) gets its own copies of every owned string. */
void mgw_filter_conf_copy(struct mgw_filter_conf *dst, const struct mgw_filter_conf *src);

/* Parse "65536", "64KiB", "4MiB", "1GiB" (also "B") into bytes, at most 4 GiB - 1;
 * 0 or -1 on error (0 bytes, overflow, another unit). */
int mgw_size_parse(const char *s, size_t len, unsigned *bytes);

/* Parse "250ms", "10s", "2m", "3" (seconds) into milliseconds; 0 or -1 on error. */
int mgw_duration_parse(const char *s, size_t len, unsigned *ms);

/* The verdict a failure of this filter stands for. */
enum mgw_verdict_kind mgw_on_error_verdict(enum mgw_on_error e);
const char *mgw_on_error_name(enum mgw_on_error e);
const char *mgw_filter_kind_name(enum mgw_filter_kind k);

/* Why `target` is no milter socket for a kind=milter filter (a host is required: a milter
 * is connected to, not listened on), or NULL when it is one. Pure. */
const char *mgw_filter_milter_target_invalid(const char *target, char *why, size_t whylen);

#endif
