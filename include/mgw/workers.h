/*
 * workers.h - the event loops that run MTA sessions, one thread each.
 *
 * A gateway on a many-core mail host must not be bound to one core, so sessions run on
 * N loops (the `workers` setting; one per CPU core by default). Each loop is a thread
 * with its own libevent base, its own mgw_server, and, per configuration generation, its
 * own backend: a filter bridge with its own channels, pump (its share of the one
 * completion-queue thread, grpc_pump.h) and Describe cache, or the null milter. Nothing of a session is shared between loops, so
 * the per-event path takes no lock; what the loops share is process-wide and atomic
 * (metrics.h, the session ids and max_connections count of session.h). Channels to one
 * target with the same arguments share one HTTP/2 connection in gRPC, so N loops do not
 * mean N connections per filter (GRPC_CORE.md §6), but each loop Describes its filters.
 *
 * The control thread (main: signals, listeners, HTTP, reload, drain) owns the workers
 * and is the only caller of these functions; it talks to the loops, and they to it,
 * through mailboxes (mailbox.h), so every order reaches a loop in the order given.
 * Accepted connections are handed to the loops in turn.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_WORKERS_H
#define MGW_WORKERS_H

#ifdef MGW_CORE
#error "workers.h is I/O: not part of mgw_core (src/core)"
#endif

#include <stddef.h>

struct event_base;
struct mgw_config;
struct mgw_workers;

/* The loop count `workers: 0` stands for: the CPUs this process may run on. */
unsigned mgw_workers_auto(void);

/* Start n >= 1 loops (no server yet: see mgw_workers_commit). `control` is the caller's
 * loop, where the callbacks below run. Signals stay with the control thread. */
struct mgw_workers *mgw_workers_new(struct event_base *control, unsigned n);

/* Build cfg's backend on every loop. done(arg, 1) runs once every loop's filters have
 * answered Describe or failed to (mgw_bridge_new's `ready`); done(arg, 0) once every loop
 * has reported and any of them could not start its filters (the first reason is logged;
 * the backends built are freed). One preparation at a time; cfg must live until it is
 * committed and replaced, or until done(arg, 0). */
void mgw_workers_prepare(struct mgw_workers *w, const struct mgw_config *cfg,
                         void (*done)(void *arg, int ok), void *arg);

/* After done(arg, 1): connections adopted from now on use the prepared backend and cfg's
 * limits; running sessions finish on theirs, and a replaced backend goes with its last
 * session (on its loop). */
void mgw_workers_commit(struct mgw_workers *w);

/* Give an accepted connection to the next loop (listener.h's mgw_adopt_fn). */
void mgw_workers_adopt(void *w, int fd, const char *peer);

/* Every loop drains (session.h); empty(arg) runs once the last session of all is gone. */
void mgw_workers_drain(struct mgw_workers *w, void (*empty)(void *arg), void *arg);
int mgw_workers_draining(const struct mgw_workers *w);

/* End every session on every loop now (reason is logged). */
void mgw_workers_close_all(struct mgw_workers *w, const char *reason);

/* Filter channels READY (for /readyz): the fewest of any loop, against the filter
 * count of the committed configuration. 0 of 0 for the null milter. */
size_t mgw_workers_ready_count(const struct mgw_workers *w, size_t *total);

/* Close every session, free every backend, stop and join the loops. NULL-safe;
 * returns NULL. */
struct mgw_workers *mgw_workers_free(struct mgw_workers *w);

#endif
