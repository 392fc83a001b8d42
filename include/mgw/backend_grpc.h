/*
 * backend_grpc.h - the filter bridge: the backend that forwards MTA events to gRPC
 * filter services (filter.proto) and merges their answers.
 *
 * One channel per configured filter, shared by every MTA connection; each filter's
 * declaration comes from its unary Describe, asked at start and again whenever its
 * channel becomes READY after being down, and cached, so negotiation with the MTA costs
 * no round trip. Per MTA connection, one Session stream per filter. Every event goes at
 * once to every filter that wants it and is still live; the answer is merged by
 * policy.c. A filter that fails (cannot be reached, breaks its stream, answers out of
 * contract, misses its deadline) gets its on_error verdict for the event and for the
 * rest of that connection, without waiting when its channel is known to be down.
 *
 * Threading: everything runs on the libevent thread; gRPC completions arrive there
 * through grpc_pump. grpc_init() must have run (with the signals miltergw handles
 * blocked) before mgw_bridge_new().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_BACKEND_GRPC_H
#define MGW_BACKEND_GRPC_H

#ifdef MGW_CORE
#error "backend_grpc.h is I/O: not part of mgw_core (src/core)"
#endif

#include <stddef.h>

#include "mgw/backend.h"
#include "mgw/filter_conf.h"

struct event_base;
struct mgw_bridge;

/* Start channels and the first Describe of every filter (none for a filter whose
 * declaration the configuration overrides). `ready` is called once, on the loop thread,
 * when every filter has answered Describe or failed to (bounded by the Describe
 * deadline); listeners should open then. The filter configs are copied. Returns NULL
 * with a reason in err when a channel cannot be set up (e.g. an unreadable TLS file):
 * never a silent fallback to plaintext. With filters in several phases, each MTA
 * connection holds its message for the later ones: phase_memory body bytes in memory,
 * the rest in a temporary file (phase_msg.h; 0 = the default). */
struct mgw_bridge *mgw_bridge_new(struct event_base *base, const struct mgw_filter_conf *filters,
                                  size_t n, size_t phase_memory, void (*ready)(void *arg),
                                  void *arg, char *err, size_t errlen);

/* The backend to give mgw_server_new(); owned by the bridge. */
struct mgw_backend *mgw_bridge_backend(struct mgw_bridge *b);

/* Call `ready` once every filter has answered Describe or failed to (now, if that is
 * already so): the same moment as mgw_bridge_new()'s `ready`, set later. */
void mgw_bridge_on_ready(struct mgw_bridge *b, void (*ready)(void *arg), void *arg);

/* How many filter channels are READY now (for /readyz); *total gets the filter count.
 * Safe from any thread while the bridge lives. */
size_t mgw_bridge_ready_count(const struct mgw_bridge *b, size_t *total);

/* Cancel every stream, close the channels, take the last completions, free.
 * Sessions should be closed first. NULL-safe; returns NULL. */
struct mgw_bridge *mgw_bridge_free(struct mgw_bridge *b);

#endif
