/*
 * filter_proto.h - translation between milter and the gRPC contract (filter.proto).
 *
 * Milter events become `miltergw.v1.Event` messages; a filter's `Reply` becomes a policy
 * answer (verdict, SMTP reply text, modification frames); a `Description` becomes a
 * policy declaration. Pure: protobuf-c structures in and out, no gRPC, no I/O, no logs.
 *
 * Strings: proto3 `string` fields must be UTF-8, and a Python or Node filter refuses a
 * message that is not, so every invalid byte coming from the MTA is replaced with U+FFFD
 * (as filter.proto promises). Header values and body bytes travel as `bytes`, untouched.
 *
 * Known limit: protobuf-c keeps `string` fields as C strings, so a NUL inside one (legal
 * in proto3) cuts the string at unpack; a filter sending "X-A\0B" as a header name is
 * taken to have sent "X-A". A NUL in a `bytes` header value is detected and dropped.
 *
 * Memory: everything built here lives in a `struct mgw_proto_scratch` until its reset or
 * free; views into protobuf messages are valid while the message is.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_PROTO_H
#define MGW_FILTER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "miltergw/v1/filter.pb-c.h"
#include "mgw/backend.h"
#include "mgw/policy.h"

/* Allocation arena for one event's or one reply's translation. Zero-filled is valid. */
struct mgw_proto_scratch {
    struct scratch_chunk *chunks;
};

void *mgw_proto_scratch_alloc(struct mgw_proto_scratch *s, size_t n);
void mgw_proto_scratch_reset(struct mgw_proto_scratch *s); /* keeps one chunk for reuse */
void mgw_proto_scratch_free(struct mgw_proto_scratch *s);  /* keeps nothing; reusable */

/* An Event ready to pack, with all its parts (they point into the scratch arena and
 * into the milter event's buffers: pack it before either goes away). */
struct mgw_proto_event {
    Miltergw__V1__Event ev;
    union {
        Miltergw__V1__SessionStart start;
        Miltergw__V1__Connect connect;
        Miltergw__V1__Helo helo;
        Miltergw__V1__MailFrom mail;
        Miltergw__V1__RcptTo rcpt;
        Miltergw__V1__Data data;
        Miltergw__V1__Header header;
        Miltergw__V1__EndOfHeaders eoh;
        Miltergw__V1__BodyChunk body;
        Miltergw__V1__EndOfMessage eom;
        Miltergw__V1__Abort abort;
        Miltergw__V1__Unknown unknown;
    } u;
    Miltergw__V1__MilterOptions offered, negotiated;
    Miltergw__V1__Description effective;
};

/*
 * Build the Event for milter command ev->msg (C H M R T L N B E U A). For 'E' the body
 * bytes it may carry are NOT included: send them first as a BodyChunk built with
 * mgw_proto_event_body(). Returns 0, or MGW_EINVAL for a command that is no event.
 */
int mgw_proto_event_build(struct mgw_proto_event *pe, struct mgw_proto_scratch *s, uint64_t id,
                          const struct mgw_event *ev);

/* A BodyChunk event carrying data[0..len) (the final chunk of an 'E'). */
void mgw_proto_event_body(struct mgw_proto_event *pe, uint64_t id, const uint8_t *data,
                          size_t len);

/* What a SessionStart says; borrowed during the build. */
struct mgw_proto_start_info {
    const char *session_id;
    const char *gateway_version;
    const char *filter_name;
    const struct mgw_milter_optneg *offered;
    const struct mgw_milter_optneg *negotiated;
    const struct mgw_policy_decl *effective;
};

void mgw_proto_event_start(struct mgw_proto_event *pe, struct mgw_proto_scratch *s, uint64_t id,
                           const struct mgw_proto_start_info *info);

/* One translated reply. Views point into the Reply and the scratch arena. */
struct mgw_proto_answer {
    enum mgw_verdict_kind kind;
    const char *reply;             /* formatted SMTP reply, or NULL */
    struct mgw_milter_msg *mods;   /* modification frames, in order */
    size_t nmods;
    /* Problems that do not make the reply out of contract, for the log: the first one. */
    const char *warning;
    size_t mods_invalid; /* modifications that could not be encoded (e.g. NUL in a name) */
    size_t bodies_dropped; /* ReplaceBody after the first of this reply (the first wins) */
};

/*
 * Translate a final (non-PROGRESS) Reply to event `cmd`. Returns 0, or MGW_EPROTO with
 * a reason in *why when the reply is out of contract: verdict missing or unknown, or a
 * DISCARD at CONNECT or HELO (no message to discard; the MTAs refuse it there).
 * Modifications on an event other than 'E' are translated anyway: the policy drops and
 * counts them. Only the first ReplaceBody of a reply is kept: the MTA would append a
 * second one to the first.
 */
int mgw_proto_reply_answer(const Miltergw__V1__Reply *r, uint8_t cmd,
                           struct mgw_proto_scratch *s, struct mgw_proto_answer *out,
                           const char **why);

/* ---- Batches (Description.batches) ---- */

#define MGW_PROTO_EVENT_BATCH        22 /* Event.batch (an EventBatch) */
#define MGW_PROTO_EVENT_BATCH_EVENTS 1  /* EventBatch.events */
#define MGW_PROTO_REPLY_BATCH        5  /* Reply.batch */
#define MGW_PROTO_PREFIX_MAX         16 /* bytes mgw_proto_field_prefix() may write */

/*
 * Write the wire prefix of one length-delimited field, number `field`, holding `len`
 * bytes: its tag and the varint length. An already packed message after such a prefix is
 * one element of a repeated message field, or a submessage, so a batch is built from
 * messages packed once, by concatenation, without unpacking or copying them. Returns the
 * bytes written (at most MGW_PROTO_PREFIX_MAX).
 */
size_t mgw_proto_field_prefix(uint8_t *buf, uint32_t field, uint64_t len);

/*
 * A message from a filter: one reply, or a batch of them (Description.batches). Hands
 * each reply to `one`, in order, as if it had come alone (`one` takes it over; it returns
 * nonzero to take no more, e.g. once the stream broke), and frees the rest. Returns NULL,
 * or why the message is out of contract: a batch from a filter that did not declare
 * batches, one with fields of its own, a batch inside a batch.
 */
const char *mgw_proto_reply_split(Miltergw__V1__Reply *r, int batching,
                                  int (*one)(void *arg, Miltergw__V1__Reply *r), void *arg);

/* ---- Multiplexed streams (Description.multiplexed) ---- */

#define MGW_PROTO_EVENT_SESSION 3 /* Event.session */

/* Write one varint field, number `field`, value `v` (at most MGW_PROTO_PREFIX_MAX bytes).
 * After an already packed Event it sets Event.session: protobuf merges concatenated
 * encodings field by field, so an Event packed once for every filter is tagged with a
 * multiplexed stream's session without repacking or copying it. */
size_t mgw_proto_varint_field(uint8_t *buf, uint32_t field, uint64_t v);

/* The declaration a Description makes. Macro lists are copied into the scratch arena. */
void mgw_proto_decl_from_description(const Miltergw__V1__Description *d,
                                     struct mgw_proto_scratch *s, struct mgw_policy_decl *out);

/* The declaration assumed for a filter that could not be asked: every event, answered,
 * every action, no macro list. Conservative: it never silences an event a filter needs. */
void mgw_proto_decl_default(struct mgw_policy_decl *out);

#endif
