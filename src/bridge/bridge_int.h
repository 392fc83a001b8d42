/*
 * bridge_int.h - what the bridge's files share (backend_grpc.c: filters, sessions, the
 * sending of events, lifetime; bridge_answer.c: the per-event answer bookkeeping and
 * merge; bridge_phases.c: ordered phases). Not a contract: backend_grpc.h is.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_BRIDGE_INT_H
#define MGW_BRIDGE_INT_H

#include <grpc/grpc.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "mgw/backend.h"
#include "mgw/filter_link.h"
#include "mgw/filter_proto.h"
#include "mgw/filter_stream.h"
#include "mgw/policy.h"

struct bridge;
struct bsession;

/* A configured filter: its link (channel, declaration) and its place in the bridge. */
struct filter {
    struct mgw_filter_link l;
    struct bridge *b;
    size_t index;
};

struct stream {
    struct mgw_filter_stream t; /* first: the transport allocates the whole (filter_stream.h) */
    struct filter *f;
    struct bsession *bs; /* NULL once the MTA connection let go */
    /* Liveness in the current message / connection (policy effects). */
    int retired_msg, retired_conn, skip_body;
};

struct answer {
    int pending;  /* waiting for this filter's answer to the current event */
    int draining; /* pending only for the content answers it still owes (rule 7) */
    enum mgw_policy_state state;
    struct mgw_proto_answer pa;
    Miltergw__V1__Reply *reply; /* owned until the merge is delivered */
    struct mgw_proto_scratch sc;
};

struct bsession {
    struct bridge *b;
    uint64_t sid;
    /* Of the negotiation only the actions are needed after open; the whole offer and
     * result (256 bytes) live in bridge_open's frame (0.27 KB per connection
     * measured). */
    uint32_t negotiated_actions;
    mgw_backend_progress_cb progress;
    mgw_backend_flow_cb flow;
    void *progress_arg; /* for progress and flow */
    unsigned flow_held; /* streams holding the MTA's reading */
    struct stream **streams;
    struct mgw_policy_decl *decls; /* snapshot at open */
    uint64_t next_id;

    /* The event being answered. */
    int active, dispatching;
    uint8_t cmd;
    uint64_t ev_id;
    struct timespec ev_start; /* for the filters' latency histogram */
    size_t waiting;
    mgw_backend_done_cb done;
    void *done_arg;
    struct answer *ans;
    grpc_slice eom_after_body; /* 'E' with data: the EOM event, sent after its body */
    uint64_t eom_id;
    int have_eom_after_body;

    /* Pipelined content (policy.h rule 7), for the current message: each filter's first
     * refusal (allocated at the first one; texts owned), and whether one is known, after
     * which nothing more of the message is forwarded. */
    uint64_t msg_first_id; /* events before this id belong to earlier messages */
    struct mgw_policy_deferred *fate;
    char **fate_text;
    int doomed;

    /* Ordered phases (policy.h rule 8), with filters in more than one: the phase the
     * event the MTA waits for is at (an index into b->phases), the event as packed for
     * the next phase, and the message as the phases leave it. */
    size_t phase_ix;
    grpc_slice ev_msg;
    int have_ev_msg;
    struct mgw_phase_msg *pm;
    int pm_stale; /* the last message is over: forget it at the next event */
};

struct bridge {
    struct event_base *base;
    struct mgw_grpc_pump *pump;
    struct filter *filters;
    size_t nfilters;
    struct mgw_backend backend;
    struct mgw_backend_needs needs;
    char *needs_mem;
    struct mgw_filter_streams streams;
    unsigned *phases; /* the filters' phases, each once, ascending */
    size_t nphases;
    size_t phase_memory; /* body bytes a message keeps in memory for later phases */
    size_t describing; /* first Describes still running */
    void (*ready)(void *);
    void *ready_arg;
    /* Where events and SessionStarts are built: each is packed before the call that
     * built it returns, so one arena serves every session (an idle connection holds
     * none of it). */
    struct mgw_proto_scratch sc;
};

/* backend_grpc.c */
uint64_t bridge_now_us(void);
unsigned bridge_timeout_of(const struct filter *f, uint8_t cmd);
const char *bridge_event_name(uint8_t cmd);
void bridge_fan_out(struct bsession *bs, uint8_t cmd, grpc_slice msg, uint64_t id,
                    int want_reply, unsigned phase);
void bridge_hold_draining(struct bsession *bs, uint8_t cmd);
void bridge_start_event(struct bsession *bs, uint8_t cmd, grpc_slice msg, uint64_t id);

/* bridge_answer.c */
void bridge_event_check(struct bsession *bs);
void bridge_fate_free(struct bsession *bs);
void bridge_stream_fail(struct stream *st, const char *reason, const char *detail);
void bridge_on_reply(struct stream *st, Miltergw__V1__Reply *r);
void bridge_reset_message_liveness(struct bsession *bs);
void bridge_release_answers(struct answer *ans, size_t n);
void bridge_merge(struct bsession *bs, const struct mgw_policy_answer *pa, size_t total,
                  struct mgw_milter_msg **mods, struct mgw_policy_result *res);
void bridge_policy_answer(const struct bsession *bs, size_t i, int mods,
                          struct mgw_policy_answer *out);

/* bridge_phases.c */
int bridge_phase_next(struct bsession *bs);
void bridge_phase_record(struct bsession *bs, const struct mgw_event *ev);
void bridge_net_mods(struct bsession *bs, struct mgw_policy_result *res,
                     struct mgw_milter_msg **mods, size_t *total, uint8_t **body);
void bridge_find_phases(struct bridge *b, const struct mgw_filter_conf *filters, size_t n);

#endif
