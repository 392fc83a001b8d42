/*
 * filter_link.c - a filter's channel and cached declaration (see filter_link.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/filter_link.h"

#include <grpc/support/alloc.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/grpc_channel.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/milter_client.h"
#include "mgw/xmalloc.h"

#define SESSION_METHOD "/miltergw.v1.Filter/Session"
#define DESCRIBE_METHOD "/miltergw.v1.Filter/Describe"
#define DESCRIBE_TIMEOUT_MS 5000

static const char *state_name(grpc_connectivity_state s)
{
    static const char *const names[] = {"idle", "connecting", "ready", "transient_failure",
                                        "shutdown"};

    return (unsigned)s < 5 ? names[s] : "?";
}

/* ---- Describe ---- */

static void describe_done(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_link *f =
        (struct mgw_filter_link *)((char *)tag - offsetof(struct mgw_filter_link, describe_tag));
    Miltergw__V1__Description *d = NULL;

    if (ok && f->describe_status == GRPC_STATUS_OK && f->describe_recv != NULL)
        d = (Miltergw__V1__Description *)mgw_grpc_unpack(f->describe_recv,
                                                &miltergw__v1__description__descriptor);
    if (d != NULL) {
        struct mgw_proto_scratch old = f->decl_mem;

        memset(&f->decl_mem, 0, sizeof f->decl_mem);
        mgw_proto_decl_from_description(d, &f->decl_mem, &f->decl);
        f->batching = d->batches;
        f->multiplexed = d->multiplexed;
        mgw_proto_scratch_free(&old);
        f->described = 1;
        log_info(0, "filter described", "filter=%s target=%s events=0x%" PRIx32
                 " observe_only=0x%" PRIx32 " actions=0x%" PRIx32 " batches=%d multiplexed=%d",
                 f->conf.name, f->conf.target, f->decl.events, f->decl.observe_only,
                 f->decl.actions, f->batching, f->multiplexed);
        protobuf_c_message_free_unpacked(&d->base, NULL);
        f->changed(f->arg);
    } else {
        char *details = grpc_slice_to_c_string(f->describe_details);
        char q[300];

        /* Status details come from the filter (or a proxy): never raw into a log line. */
        log_warn(0, "filter describe failed", "filter=%s target=%s status=%d detail=%s using=%s",
                 f->conf.name, f->conf.target, (int)f->describe_status,
                 mgw_log_quote(q, sizeof q, details, strlen(details)),
                 f->described ? "previous_declaration" : "default_declaration");
        gpr_free(details);
    }
    if (f->describe_recv)
        grpc_byte_buffer_destroy(f->describe_recv);
    grpc_byte_buffer_destroy(f->describe_send);
    grpc_metadata_array_destroy(&f->describe_md);
    grpc_metadata_array_destroy(&f->describe_trailing);
    grpc_slice_unref(f->describe_details);
    grpc_call_unref(f->describe_call);
    f->describe_call = NULL;
    f->describe_recv = f->describe_send = NULL;
    if (f->first_pending) {
        f->first_pending = 0;
        f->settled(f->arg);
    }
}

static void describe_start(struct mgw_filter_link *f)
{
    Miltergw__V1__DescribeRequest req = MILTERGW__V1__DESCRIBE_REQUEST__INIT;
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(DESCRIBE_TIMEOUT_MS, GPR_TIMESPAN));
    grpc_op ops[6];
    grpc_call_error e;

    if (f->describe_call != NULL || f->closing)
        return;
    req.gateway_version = (char *)MGW_VERSION;
    req.filter_name = f->conf.name;
    f->describe_send = mgw_grpc_pack(&req.base);
    f->describe_recv = NULL;
    grpc_metadata_array_init(&f->describe_md);
    grpc_metadata_array_init(&f->describe_trailing);
    f->describe_details = grpc_empty_slice();
    f->describe_call = grpc_channel_create_registered_call(
        f->ch, NULL, GRPC_PROPAGATE_DEFAULTS, mgw_grpc_pump_cq(f->pump), f->describe_method,
        deadline, NULL);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = f->describe_send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &f->describe_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &f->describe_recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &f->describe_trailing;
    ops[5].data.recv_status_on_client.status = &f->describe_status;
    ops[5].data.recv_status_on_client.status_details = &f->describe_details;
    f->describe_tag.cb = describe_done;
    e = mgw_grpc_pump_start_batch(f->pump, f->describe_call, ops, 6, &f->describe_tag);
    if (e != GRPC_CALL_OK)
        mgw_panic("filter link: Describe batch refused (%d)", (int)e);
}

/* ---- connectivity ---- */

static void watch_arm(struct mgw_filter_link *f)
{
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_seconds(3600, GPR_TIMESPAN));

    f->watching = 1;
    mgw_grpc_pump_watch(f->pump, f->ch, f->state, deadline, &f->watch_tag);
}

static void watch_done(struct mgw_grpc_tag *tag, int ok)
{
    struct mgw_filter_link *f =
        (struct mgw_filter_link *)((char *)tag - offsetof(struct mgw_filter_link, watch_tag));
    grpc_connectivity_state prev = f->state;

    f->watching = 0;
    if (f->closing)
        return;
    /* Atomic: /readyz reads it from the control thread (mgw_bridge_ready_count). */
    __atomic_store_n(&f->state, grpc_channel_check_connectivity_state(f->ch, 0), __ATOMIC_RELAXED);
    if (f->state != prev) {
        enum mgw_log_level lvl =
            f->state == GRPC_CHANNEL_TRANSIENT_FAILURE ? MGW_LOG_WARN : MGW_LOG_INFO;

        mgw_log(lvl, 0, "filter channel", "filter=%s target=%s state=%s", f->conf.name,
                f->conf.target, state_name(f->state));
        /* (Re)connected: the filter may have been redeployed with new needs, also behind
         * a rolling restart that never showed TRANSIENT_FAILURE. At start the first
         * Describe is still in flight and this is a no-op. */
        if (f->state == GRPC_CHANNEL_READY && !f->conf.has_decl)
            describe_start(f);
        mgw_metrics_filter_set_ready(f->metric, f->state == GRPC_CHANNEL_READY);
        if (f->state == GRPC_CHANNEL_TRANSIENT_FAILURE && f->down != NULL)
            f->down(f->arg, f);
    }
    /* An idle channel reconnects only when asked; keep it connected. */
    if (f->state == GRPC_CHANNEL_IDLE)
        grpc_channel_check_connectivity_state(f->ch, 1);
    watch_arm(f);
}

int mgw_filter_link_init(struct mgw_filter_link *f, const struct mgw_filter_conf *c,
                         struct event_base *base, struct mgw_grpc_pump *pump, void (*changed)(void *arg),
                         void (*settled)(void *arg), void *arg, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->base = base;
    f->pump = pump;
    f->changed = changed;
    f->settled = settled;
    f->arg = arg;
    f->metric = mgw_metrics_filter_register(c->name);
    mgw_filter_conf_copy(&f->conf, c);
    if (f->conf.max_queue == 0)
        f->conf.max_queue = MGW_FILTER_DEFAULT_MAX_QUEUE;
    if (f->conf.max_message == 0)
        f->conf.max_message = MGW_FILTER_DEFAULT_MAX_MESSAGE;
    if (f->conf.kind == MGW_FILTER_MILTER) {
        /* No channel: the probe (milter_client.h) reaches it and reads its declaration. */
        if (f->conf.has_decl)
            f->decl = f->conf.decl;
        else
            mgw_proto_decl_default(&f->decl);
        f->described = f->conf.has_decl;
        return 0;
    }
    f->ch = mgw_grpc_channel_new(&f->conf, err, errlen);
    if (f->ch == NULL) {
        mgw_filter_conf_clear(&f->conf);
        return -1;
    }
    f->session_method = grpc_channel_register_call(f->ch, SESSION_METHOD, NULL, NULL);
    f->describe_method = grpc_channel_register_call(f->ch, DESCRIBE_METHOD, NULL, NULL);
    if (f->conf.has_decl) {
        /* The operator's declaration replaces Describe (filter_conf.h). */
        f->decl = f->conf.decl;
        f->described = 1;
    } else {
        mgw_proto_decl_default(&f->decl);
    }
    f->watch_tag.cb = watch_done;
    f->describe_tag.cb = describe_done;
    return 0;
}

int mgw_filter_link_start(struct mgw_filter_link *f)
{
    if (f->conf.kind == MGW_FILTER_MILTER)
        return mgw_milter_link_start(f);
    __atomic_store_n(&f->state, grpc_channel_check_connectivity_state(f->ch, 1), __ATOMIC_RELAXED);
    watch_arm(f);
    if (f->conf.has_decl)
        return 0;
    f->first_pending = 1;
    describe_start(f);
    return 1;
}

void mgw_filter_link_close(struct mgw_filter_link *f)
{
    f->closing = 1;
    mgw_milter_link_close(f);
    if (f->describe_call != NULL)
        grpc_call_cancel(f->describe_call, NULL);
    if (f->ch != NULL)
        grpc_channel_destroy(f->ch);
    f->ch = NULL;
}

void mgw_filter_link_clear(struct mgw_filter_link *f)
{
    mgw_proto_scratch_free(&f->decl_mem);
    mgw_filter_conf_clear(&f->conf);
}
