/*
 * grpc_channel.h - the channel to one filter, as its configuration says, and protobuf-c
 * messages in and out of gRPC byte buffers.
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

#ifdef MGW_CORE
#error "grpc_channel.h is I/O: not part of mgw_core (src/core)"
#endif

#include <grpc/grpc.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "mgw/filter_conf.h"

/* A new channel for filter `c`; NULL with a reason in err (an unreadable PEM file, TLS
 * credentials gRPC refused). grpc_init() must have run. */
grpc_channel *mgw_grpc_channel_new(const struct mgw_filter_conf *c, char *err, size_t errlen);

/* A message packed once into gRPC-owned memory (no extra copy; GRPC_CORE.md §3). */
grpc_slice mgw_grpc_pack_slice(const ProtobufCMessage *m);
grpc_byte_buffer *mgw_grpc_pack(const ProtobufCMessage *m);
/* Unpack a received buffer (one slice without copy when possible); NULL if it does not
 * decode. The caller frees with protobuf_c_message_free_unpacked(). */
ProtobufCMessage *mgw_grpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d);

#endif
