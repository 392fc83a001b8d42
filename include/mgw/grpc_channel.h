/*
 * grpc_channel.h - the channel to one filter, as its configuration says.
 *
 * Plaintext, TLS or mutual TLS (PEM files read at creation), keepalive, the receive cap
 * (max_message), a short capped reconnect backoff, no retries (the bridge has its own
 * deadlines and failure policy), and pick_first or round_robin over the target's
 * addresses. Creating a channel does not connect it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_GRPC_CHANNEL_H
#define MGW_GRPC_CHANNEL_H

#include <grpc/grpc.h>
#include <stddef.h>

#include "mgw/filter_conf.h"

/* A new channel for filter `c`; NULL with a reason in err (an unreadable PEM file, TLS
 * credentials gRPC refused). grpc_init() must have run. */
grpc_channel *mgw_grpc_channel_new(const struct mgw_filter_conf *c, char *err, size_t errlen);

#endif
