/*
 * grpc_pump.h - deliver gRPC completion-queue events on the libevent thread.
 *
 * gRPC 1.51's core moves I/O only while some thread sits in grpc_completion_queue_next(),
 * so one thread parks there: one for the whole process, with one completion queue that
 * every pump shares (epoll1 lets one thread at a time poll anyway; grpc_pump.c). It hands
 * each (tag, ok) to the tag's pump, a libevent loop's mailbox (mailbox.h), so a burst of
 * completions costs one wakeup (GRPC_CORE.md §1, §5: the "evfd" wiring).
 * Everything else - every grpc_call_start_batch, cancel and unref - happens on the
 * libevent thread, so calls need no locks.
 *
 * Tags are `struct mgw_grpc_tag *`: the pump calls tag->cb(tag, ok) on the loop thread.
 * Batches and watches are started through the pump, which counts them, so that freeing
 * it can wait for the last completion.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_GRPC_PUMP_H
#define MGW_GRPC_PUMP_H

#ifdef MGW_CORE
#error "grpc_pump.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>

struct event_base;

struct mgw_grpc_pump;

struct mgw_grpc_tag {
    void (*cb)(struct mgw_grpc_tag *tag, int ok);
    struct mgw_grpc_pump *pump; /* set when an operation starts with this tag */
};

/* A pump delivering on `base`'s thread; the first one starts the shared queue and its
 * thread. grpc_init() must have run. */
struct mgw_grpc_pump *mgw_grpc_pump_new(struct event_base *base);

/* The completion queue every call must be created on. */
grpc_completion_queue *mgw_grpc_pump_cq(struct mgw_grpc_pump *p);

/* grpc_call_start_batch() and grpc_channel_watch_connectivity_state() with `tag`, whose
 * completion will come to this pump's loop. The loop's thread only. */
grpc_call_error mgw_grpc_pump_start_batch(struct mgw_grpc_pump *p, grpc_call *call,
                                          const grpc_op *ops, size_t n, struct mgw_grpc_tag *tag);
void mgw_grpc_pump_watch(struct mgw_grpc_pump *p, grpc_channel *ch,
                         grpc_connectivity_state last, gpr_timespec deadline,
                         struct mgw_grpc_tag *tag);

/* The loop's thread: wait for and deliver every completion still owed to this pump,
 * free it; the last pump shuts the queue down and joins its thread. Every call and watch
 * must already be ending (cancelled, channel destroyed), or this waits for them.
 * NULL-safe; returns NULL. */
struct mgw_grpc_pump *mgw_grpc_pump_free(struct mgw_grpc_pump *p);

#endif
