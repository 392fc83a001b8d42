/*
 * mailbox.h - calls posted from any thread, run on one libevent loop's thread.
 *
 * A poster appends (fn, arg, val) to a mutex-protected list and writes the loop's
 * eventfd only when the list was empty, so a burst of posts costs one wakeup; the loop
 * takes the whole list and runs it, in post order, without the lock (GRPC_CORE.md §5:
 * the "evfd" hand-off). The gRPC pump hands completions over this way, and the worker
 * loops (workers.h) take their sessions and orders through one.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MAILBOX_H
#define MGW_MAILBOX_H

#ifdef MGW_CORE
#error "mailbox.h is I/O: not part of mgw_core (src/core)"
#endif

struct event_base;
struct mgw_mailbox;

typedef void mgw_mailbox_fn(void *arg, int val);

/* A mailbox delivering on `base`'s thread. */
struct mgw_mailbox *mgw_mailbox_new(struct event_base *base);

/* Any thread: fn(arg, val) will run on the loop's thread, after everything posted
 * before it. */
void mgw_mailbox_post(struct mgw_mailbox *mb, mgw_mailbox_fn *fn, void *arg, int val);

/* The loop's thread: run what was posted until now (what those calls post runs at the
 * next turn). */
void mgw_mailbox_drain(struct mgw_mailbox *mb);

/* The loop's thread, outside the loop: block until something was posted since the last
 * drain (or at once if so). */
void mgw_mailbox_wait(struct mgw_mailbox *mb);

/* The loop's thread, once nobody posts any more: run what is left, free. NULL-safe;
 * returns NULL. */
struct mgw_mailbox *mgw_mailbox_free(struct mgw_mailbox *mb);

#endif
