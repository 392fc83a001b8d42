/*
 * mgw_filter.h - a small library for writing miltergw filters in C.
 * SPDX-License-Identifier: Apache-2.0
 *
 * A miltergw filter is a gRPC server implementing miltergw.v1.Filter (see
 * proto/miltergw/v1/filter.proto, the contract). This library hides the gRPC core server and
 * the protobuf-c plumbing: you describe the filter in a `struct mgw_filter`, write one
 * callback that sees every event of a Session stream and fills in the answer, and call
 * mgw_filter_run(). The library then
 *   - answers Describe from the struct, and UNIMPLEMENTED for any other method;
 *   - runs one Session stream per SMTP connection (or, with `multiplexed`, one for many:
 *     see below), calls on_event() for each event of a session in order and sends exactly
 *     one reply for each event that needs one (subscribed to and not observe-only, as
 *     SessionStart.effective says), in order, with its event_id;
 *   - also serves the standard gRPC health service (grpc.health.v1.Health/Check: SERVING,
 *     NOT_SERVING once stopping) and server reflection (grpc.reflection.v1alpha and v1,
 *     enough for `grpcurl list` and `grpcurl describe miltergw.v1.Filter`);
 *   - stops cleanly on SIGTERM, SIGINT or mgw_filter_stop() (mgw_filter_run() then
 *     returns 0).
 *
 * Events arrive as the protobuf-c structs generated from filter.proto: `ev->header->name`,
 * `ev->rcpt->address`, `ev->macros[i]->key`, ... The answer starts as CONTINUE; change it
 * with the mgw_reply_*() functions, which copy what they are given.
 *
 * Threads. Callbacks run on the library's worker threads (`threads`, default 1). Events of
 * one session are never handed out concurrently, so per-session state needs no lock. With
 * threads > 1, callbacks of different sessions run in parallel: protect shared data. A
 * callback that blocks delays its own session, and with one thread every session.
 *
 * With `session_threads`, each session instead gets a thread of its own that runs its
 * callbacks, in order, while the gRPC workers keep receiving: callbacks may then block
 * (libmilter's model), and mgw_session_progress() keeps the gateway waiting meanwhile.
 *
 * Multiplexed streams (`multiplexed`, off by default). Describe then declares
 * `multiplexed: true` and the gateway sends the sessions of many SMTP connections (up to
 * 128) on one Session stream, each event naming its session (filter.proto, "multiplexed
 * streams"). The library keeps a `struct mgw_session` per session, so for the callback
 * nothing changes: each session has its own state, id and answer mask, its callbacks run
 * in order and never concurrently, MGW_START comes first, and on_close is called once at
 * its end - its SessionEnd, or the end of the stream for a session still open then - after
 * its last on_event. Replies carry their session. If the gateway gave up on a session
 * (SessionEnd with a reason: it ignores any answer now) or the stream breaks, events not
 * yet handed to on_event are dropped, as on a cancelled stream without the option; on
 * half-close (and a SessionEnd without reason) the session's queued events run first.
 * Threads then work per session, not per stream:
 *   - with session_threads, each session has its thread as above: a callback that blocks
 *     holds back only its own session; the others' replies go out meanwhile;
 *   - without, callbacks of different sessions on one stream run in parallel on different
 *     workers when their events arrive in different messages from the gateway; one worker
 *     runs, session after session, the events that arrive together in one EventBatch, so
 *     a callback that blocks may also delay sessions whose events came in its batch, and
 *     with one thread every session. Callbacks that block want session_threads.
 * A gateway that does not know the option sends Event.session 0 on per-connection streams:
 * each stream is then one session that ends with it, as without the option.
 *
 * What it does not do: TLS, asynchronous answers (a reply is ready when on_event returns).
 * It serves grpc.health.v1 (Check and Watch) and server reflection beside the filter.
 *
 * Signals: mgw_filter_run() blocks SIGINT and SIGTERM in the calling thread before gRPC
 * starts its threads, so call it before creating threads of your own (or block them too).
 */
#ifndef MGW_FILTER_H
#define MGW_FILTER_H

#include <stdbool.h>
#include <stddef.h>

#include "miltergw/v1/filter.pb-c.h"

/* Event kinds. MGW_CONNECT..MGW_UNKNOWN equal the proto's EventType values. */
enum mgw_event {
    MGW_NONE = 0,
    MGW_CONNECT,
    MGW_HELO,
    MGW_MAIL,
    MGW_RCPT,
    MGW_DATA,
    MGW_HEADER,
    MGW_EOH,
    MGW_BODY,
    MGW_EOM,
    MGW_UNKNOWN,
    MGW_START, /* SessionStart: first of every session, never answered */
    MGW_ABORT, /* the current message is abandoned: forget its state; never answered */
};
#define MGW_EVENT_BIT(e)  (1u << (e)) /* for mgw_filter.events / observe_only */
#define MGW_ALL_EVENTS    (0x7feu)    /* MGW_CONNECT..MGW_UNKNOWN */
#define MGW_ACTION_BIT(a) (1u << MILTERGW__V1__ACTION__ACTION_##a) /* e.g. (ADD_HEADER) */

/* Verdicts (the proto's Verdict values). */
enum mgw_verdict {
    MGW_CONTINUE = MILTERGW__V1__VERDICT__VERDICT_CONTINUE,
    MGW_ACCEPT = MILTERGW__V1__VERDICT__VERDICT_ACCEPT,
    MGW_REJECT = MILTERGW__V1__VERDICT__VERDICT_REJECT,
    MGW_TEMPFAIL = MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL,
    MGW_DISCARD = MILTERGW__V1__VERDICT__VERDICT_DISCARD,
    MGW_SKIP = MILTERGW__V1__VERDICT__VERDICT_SKIP,
};

struct mgw_session; /* one SMTP connection: its Session stream, or its part of a multiplexed one */
struct mgw_reply;   /* the answer to one event, being built */

/*
 * Called for every event of a session, in stream order, SessionStart and Abort included.
 * `ev` and `r` are valid only during the call. For events that need no answer (SessionStart,
 * Abort, observe-only ones) `r` is still given, and then discarded.
 */
typedef void mgw_event_fn(struct mgw_session *s, const Miltergw__V1__Event *ev,
                          struct mgw_reply *r);
/* Called once when a session ends, before its state is freed: release what it points to. */
typedef void mgw_close_fn(struct mgw_session *s);

/* What the filter needs and how it runs. Only on_event is required. */
struct mgw_filter {
    const char *listen;    /* "HOST:PORT" (port 0 picks one) or "unix:PATH";
                              default "127.0.0.1:50051" */
    const char *name;      /* for the gateway's logs */
    const char *version;   /* for the gateway's logs */
    unsigned events;       /* MGW_EVENT_BIT()s wanted; 0 = none (only SessionStart, Abort) */
    unsigned observe_only; /* of those, the ones received but never answered */
    unsigned actions;      /* MGW_ACTION_BIT()s: the modifications it may ask for at EOM */
    /* Macros wanted per stage (CONNECT, HELO, MAIL, RCPT, DATA, EOH, EOM), names separated
     * by spaces, e.g. .macros[MGW_MAIL] = "i {mail_addr}". */
    const char *macros[MGW_UNKNOWN + 1];
    bool rejected_recipients;  /* also see recipients the MTA refused (RcptTo.rejected) */
    bool header_leading_space; /* header values keep the space after the colon */

    mgw_event_fn *on_event;
    mgw_close_fn *on_close; /* optional */
    size_t state_size;      /* bytes of zeroed per-session state (mgw_session_state) */
    void *arg;              /* anything; see mgw_session_arg() */
    unsigned threads;       /* worker threads; 0 means 1 */
    bool print_port;        /* print "port=N" as a line on stdout once listening */
    bool session_threads;   /* run each session's callbacks on a thread of its own */
    /* On stop: health says NOT_SERVING, new Session calls get UNAVAILABLE, and open
     * sessions have this many seconds to end before they are cancelled (0: at once). */
    unsigned drain_seconds;
    /* Take many connections' sessions on one Session stream (Description.multiplexed; see
     * "Multiplexed streams" above). */
    bool multiplexed;
};

/*
 * Serves until SIGTERM or SIGINT, then shuts down cleanly (live streams are cancelled) and
 * returns 0. Returns 1, after a message on stderr, if it cannot listen. Call it once.
 */
int mgw_filter_run(const struct mgw_filter *f);
/* Makes mgw_filter_run() stop as on SIGTERM; callable from any thread, callbacks included,
 * and before mgw_filter_run() (which then returns at once). */
void mgw_filter_stop(void);

/* With session_threads, from on_event: tells the gateway the event being handled is still
 * being worked on (a PROGRESS reply, sent at once), which restarts its deadline. Returns
 * 0, or -1 if not possible (no session_threads, outside on_event, or an event that gets
 * no reply). */
int mgw_session_progress(struct mgw_session *s);

/* The session's zeroed state of `state_size` bytes (NULL if 0); owned by the library. */
void *mgw_session_state(struct mgw_session *s);
/* The gateway's id of the session (its logs name it), "" before SessionStart. */
const char *mgw_session_id(const struct mgw_session *s);
/* mgw_filter.arg. */
void *mgw_session_arg(const struct mgw_session *s);
/* For logs: a number for the Session stream carrying the session, counted from 1 in this
 * process. With `multiplexed`, sessions that share a stream share it. */
unsigned long mgw_session_stream(const struct mgw_session *s);

/* The kind of an event. */
enum mgw_event mgw_event_kind(const Miltergw__V1__Event *ev);
/* The value of macro `name` ("i", "{mail_addr}") in this event, or NULL. */
const char *mgw_event_macro(const Miltergw__V1__Event *ev, const char *name);

/* Sets the verdict (initially MGW_CONTINUE). */
void mgw_reply_verdict(struct mgw_reply *r, enum mgw_verdict v);
/* REJECT / TEMPFAIL with an SMTP reply: code (0 = default), enhanced status ("5.7.1" or
 * NULL) and text (NULL = the MTA's; '\n' separates the lines of a multi-line reply). */
void mgw_reply_reject(struct mgw_reply *r, unsigned code, const char *xcode, const char *text);
void mgw_reply_tempfail(struct mgw_reply *r, unsigned code, const char *xcode, const char *text);

/* Modifications, applied in order. Only valid in the answer to MGW_EOM, and only for the
 * actions declared in mgw_filter.actions; the gateway drops and logs any other. */
void mgw_reply_add_header(struct mgw_reply *r, const char *name, const char *value);
void mgw_reply_insert_header(struct mgw_reply *r, unsigned index, const char *name,
                             const char *value);
/* Changes occurrence `index` (1-based) of header `name`; value "" or NULL deletes it. */
void mgw_reply_change_header(struct mgw_reply *r, const char *name, unsigned index,
                             const char *value);
/* Envelope addresses: "<a@b.example>"; the angle brackets are added if missing. A recipient
 * to delete is named as it arrived in RcptTo.address. */
void mgw_reply_add_rcpt(struct mgw_reply *r, const char *address);
void mgw_reply_delete_rcpt(struct mgw_reply *r, const char *address);
void mgw_reply_change_from(struct mgw_reply *r, const char *address);
/* The same with ESMTP arguments separated by spaces ("NOTIFY=NEVER ORCPT=rfc822;a@b");
 * NULL or "" means none. */
void mgw_reply_add_rcpt_args(struct mgw_reply *r, const char *address, const char *args);
void mgw_reply_change_from_args(struct mgw_reply *r, const char *address, const char *args);
/* The whole new body: lines end in CRLF, no dot-stuffing. */
void mgw_reply_replace_body(struct mgw_reply *r, const void *body, size_t len);
void mgw_reply_quarantine(struct mgw_reply *r, const char *reason);

#endif
