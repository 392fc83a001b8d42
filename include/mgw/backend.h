/*
 * backend.h - the interface between an MTA session and the filters behind it.
 *
 * The session engine (session.c) knows nothing about gRPC. It talks to "a backend"
 * through this function table, in the manner of Postfix's MILTER and OpenSMTPD's
 * queue_backend: backend_null.c (no filter: continue everything, accept at end of
 * message), tests/backend_fake.c (scripted, for tests) and the gRPC bridge implement it.
 *
 * Contract (libuv's rule): when `event` returns an error, its callback never fires.
 * When it returns 0 with want_reply set, the backend calls `done` exactly once, on the
 * event-loop thread, possibly before `event` returns; with want_reply clear it never
 * calls `done`. The backend bounds its own waiting (per-filter deadlines and failure
 * policy), so `done` always comes. After `session_close` no callback fires.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_BACKEND_H
#define MGW_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mgw/milter_codec.h"

/* What the filters behind a backend need from the MTA, answered at negotiation time
 * without any round trip (the gRPC bridge answers it from cached declarations). */
struct mgw_backend_needs {
    /* SMFIP_* bits: NO* for events no filter wants, NR_* where no filter answers, plus
     * SKIP, RCPT_REJ, HDR_LEADSPC as wanted. */
    uint32_t protocol;
    uint32_t actions;                      /* SMFIF_* modifications the filters may make */
    const char *symlist[MGW_STAGE_COUNT];  /* space-separated macro names, or NULL */
};

/* The final answer to one MTA event, as the session should send it. */
enum mgw_verdict_kind {
    MGW_VERDICT_CONTINUE = 0,
    MGW_VERDICT_ACCEPT,
    MGW_VERDICT_REJECT,
    MGW_VERDICT_TEMPFAIL,
    MGW_VERDICT_DISCARD,
    MGW_VERDICT_SKIP,
};

const char *mgw_verdict_name(enum mgw_verdict_kind k);

/* Borrowed: everything a verdict points to is valid only during the `done` callback. */
struct mgw_verdict {
    enum mgw_verdict_kind kind;
    /* Optional full SMTP reply for REJECT/TEMPFAIL ("550 5.7.1 text", several lines
     * joined by CRLF, each with its code); NULL for the MTA's default text. */
    const char *reply;
    /* End of message only: modifications as milter reply frames (h i m b + 2 - e q), in
     * the order they must be applied. */
    const struct mgw_milter_msg *mods;
    size_t nmods;
};

/* Macros the MTA sent for each stage, as decoded name/value lists. Borrowed. */
struct mgw_macros {
    struct mgw_strlist stage[MGW_STAGE_COUNT];
};

/* Look up a macro in one stage's list; returns NULL if absent. */
const struct mgw_str *mgw_macros_get(const struct mgw_macros *m, int stage, const char *name,
                                     struct mgw_str *out);

/* One MTA event: the decoded command plus the macros of its stage. Borrowed for the
 * duration of the `event` call only: a backend copies what it keeps. */
struct mgw_event {
    const struct mgw_milter_msg *msg;     /* C H M R T L N B E U A (and final B of E) */
    const struct mgw_strlist *macros;     /* this event's stage, or NULL (no stage) */
    const struct mgw_macros *all_macros;  /* every stage, as currently known */
};

/* Facts about one MTA connection, given at open. Borrowed during the call. */
struct mgw_session_info {
    uint64_t sid;
    const struct mgw_milter_optneg *offered;    /* what the MTA offered */
    const struct mgw_milter_optneg *negotiated; /* what we answered */
};

typedef void (*mgw_backend_done_cb)(void *arg, const struct mgw_verdict *v);
/* A filter is still working: the session sends PROGRESS to keep the MTA waiting. */
typedef void (*mgw_backend_progress_cb)(void *arg);
/* Back-pressure for events the MTA streams without waiting (NR_*): stop = 1 asks the
 * session to read nothing more from the MTA, stop = 0 lets it go on. The backend must
 * always let it go on eventually (its own deadlines bound every wait). */
typedef void (*mgw_backend_flow_cb)(void *arg, int stop);

struct mgw_backend_ops {
    const char *name;
    /* Fill *out; must not block. */
    void (*needs)(void *backend, struct mgw_backend_needs *out);
    /* Open per-connection state after negotiation; returns NULL only on a hard error
     * (then the session closes). `arg` is passed back to progress and flow. */
    void *(*session_open)(void *backend, const struct mgw_session_info *info,
                          mgw_backend_progress_cb progress, mgw_backend_flow_cb flow,
                          void *arg);
    /* Forward one event; see the contract above. Returns 0 or an MGW_E* code. */
    int (*event)(void *bsession, const struct mgw_event *ev, int want_reply,
                 mgw_backend_done_cb done, void *arg);
    /* The MTA connection (or, for QUIT_NC, the logical connection) is over. Frees. */
    void (*session_close)(void *bsession);
    /* Free the backend itself; no session may be open. */
    void (*free)(void *backend);
};

struct mgw_backend {
    const struct mgw_backend_ops *ops;
    void *impl;
    /* Sessions using this backend (session.c). A backend replaced at reload is released
     * through `release` (if set) when the last of its sessions ends. */
    unsigned sessions;
    void (*release)(struct mgw_backend *b, void *arg);
    void *release_arg;
};

/* The built-in null backend: wants every event, answers continue, accepts at EOM. */
struct mgw_backend *mgw_backend_null_new(void);
struct mgw_backend *mgw_backend_free(struct mgw_backend *b);

#endif
