/*
 * filter_link.h - one configured filter as the gateway knows it between streams: its
 * channel, the registered Session method, and its cached declaration.
 *
 * The declaration comes from the filter's Describe answer (or the configuration's
 * `declare:` override, or the conservative default until one answers) and is refreshed
 * whenever the channel comes back READY: a filter redeployed with new needs is seen
 * without a restart, also behind a rolling restart that never showed TRANSIENT_FAILURE.
 * A connectivity watch keeps an idle channel connected and the ready metric current.
 * Everything runs on the loop thread; completions come through the grpc pump.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_LINK_H
#define MGW_FILTER_LINK_H

#ifdef MGW_CORE
#error "filter_link.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>

#include "mgw/filter_conf.h"
#include "mgw/filter_proto.h"
#include "mgw/grpc_pump.h"
#include "mgw/policy.h"

struct mgw_filter_link {
    /* Read by the bridge. */
    struct mgw_filter_conf conf; /* own copy, defaults filled in */
    int metric;                  /* mgw_metrics filter index */
    grpc_channel *ch;
    void *session_method;
    struct mgw_policy_decl decl; /* current declaration */
    int batching;                /* it takes EventBatch and sends Reply.batch */
    int multiplexed;             /* it takes many sessions per stream (filter_mux.h) */
    grpc_connectivity_state state; /* a milter's (kind=milter): READY or TRANSIENT_FAILURE */
    struct event_base *base;       /* the loop the link and its streams run on */
    struct mgw_milter_probe *probe; /* kind=milter: address and reachability (milter_client.h) */
    /* Set by the owner, may be NULL: the channel entered TRANSIENT_FAILURE. */
    void (*down)(void *arg, struct mgw_filter_link *f);

    /* Private. */
    struct mgw_grpc_pump *pump;
    void (*changed)(void *arg); /* a Describe answer replaced `decl` */
    void (*settled)(void *arg); /* the first Describe is over, answered or not */
    void *arg;
    void *describe_method;
    struct mgw_proto_scratch decl_mem; /* owns decl's macro lists */
    int described;                     /* decl came from the filter or the config */
    int first_pending, closing;
    grpc_call *describe_call;          /* the Describe in flight, if any */
    struct mgw_grpc_tag describe_tag;
    grpc_byte_buffer *describe_send, *describe_recv;
    grpc_metadata_array describe_md, describe_trailing;
    grpc_status_code describe_status;
    grpc_slice describe_details;
    struct mgw_grpc_tag watch_tag;
    int watching;
};

struct event_base;

/* Copy the configuration, create the channel (none for a milter); no call yet. Returns 0,
 * or -1 with a reason in err (nothing left to clear). */
int mgw_filter_link_init(struct mgw_filter_link *f, const struct mgw_filter_conf *c,
                         struct event_base *base, struct mgw_grpc_pump *pump,
                         void (*changed)(void *arg), void (*settled)(void *arg), void *arg,
                         char *err, size_t errlen);

/* Start the watch and the first Describe. Returns 1 if `settled` will be called (a
 * Describe was started), 0 if the declaration is the configuration's and final. */
int mgw_filter_link_start(struct mgw_filter_link *f);

/* Shutdown, first half: cancel the Describe, destroy the channel (its watch completes).
 * No callback fires from here on. */
void mgw_filter_link_close(struct mgw_filter_link *f);

/* Shutdown, second half, once the pump delivered every completion: free. */
void mgw_filter_link_clear(struct mgw_filter_link *f);

#endif
