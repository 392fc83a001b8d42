/*
 * grpc_pump.h - deliver gRPC completion-queue events on the libevent thread.
 *
 * gRPC 1.51's core moves I/O only while some thread sits in grpc_completion_queue_next(),
 * so one thread ("grpc-cq") parks there. It hands each (tag, ok) to the libevent thread
 * through a mailbox (mailbox.h), so a burst of completions costs one wakeup (GRPC_CORE.md
 * §1, §5: the "evfd" wiring).
 * Everything else - every grpc_call_start_batch, cancel and unref - happens on the
 * libevent thread, so calls need no locks.
 *
 * Tags are `struct mgw_grpc_tag *`: the pump calls tag->cb(tag, ok) on the loop thread.
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

struct mgw_grpc_tag {
    void (*cb)(struct mgw_grpc_tag *tag, int ok);
};

struct mgw_grpc_pump;

/* Create the completion queue and start the grpc-cq thread. grpc_init() must have run. */
struct mgw_grpc_pump *mgw_grpc_pump_new(struct event_base *base);

/* The completion queue every call and watch must use. */
grpc_completion_queue *mgw_grpc_pump_cq(struct mgw_grpc_pump *p);

/* Shut the queue down, deliver whatever remains, join the thread, free. Every call must
 * already be finished (the thread sees GRPC_QUEUE_SHUTDOWN only after every pending
 * operation was delivered). NULL-safe; returns NULL. */
struct mgw_grpc_pump *mgw_grpc_pump_free(struct mgw_grpc_pump *p);

#endif
