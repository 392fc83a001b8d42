/*
 * backend_fake.h - a scripted, in-process backend for session tests.
 *
 * It records every event it gets (command letter and the macros of its stage as
 * "name=value;..." text) and answers from a per-command script, synchronously or, in
 * async mode, from a zero-delay timer so the session's asynchronous path is exercised.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_TEST_BACKEND_FAKE_H
#define MGW_TEST_BACKEND_FAKE_H

#include "mgw/backend.h"

struct event_base;

#define FAKE_MAX_EVENTS 256
#define FAKE_MAX_MODS 8

struct fake_answer {
    int set;
    enum mgw_verdict_kind kind;
    const char *reply;
    struct mgw_milter_msg mods[FAKE_MAX_MODS];
    size_t nmods;
    int progress; /* PROGRESS calls made before answering */
};

struct fake_event {
    uint8_t cmd;
    int want_reply;
    char macros[256]; /* this stage's macros, "name=value;" */
    char arg[256];    /* first string argument (hostname, helo, address, header name) */
};

struct fake_backend {
    struct mgw_backend base;
    struct event_base *evbase;
    struct mgw_backend_needs needs;
    int async;
    struct fake_answer answer[128]; /* by command letter */
    struct fake_event events[FAKE_MAX_EVENTS];
    int nevents;
    int opens, closes, progress_sent;
    int open_sessions;
    /* The last opened session's flow control. With flow_stop_cmd set, the first event
     * of that command stops the session's reading, and a zero-delay timer restarts it,
     * noting how many events had come by then (events_at_stop, events_at_resume). */
    mgw_backend_flow_cb flow;
    void *flow_arg;
    uint8_t flow_stop_cmd;
    int events_at_stop, events_at_resume;
    struct event *flow_timer;
};

/* The backend is embedded: pass &f->base to mgw_server_new(). */
void fake_init(struct fake_backend *f, struct event_base *evbase);
/* Count of recorded events with command `cmd`. */
int fake_count(const struct fake_backend *f, uint8_t cmd);
/* The n-th (0-based) recorded event with command `cmd`, or NULL. */
const struct fake_event *fake_nth(const struct fake_backend *f, uint8_t cmd, int n);

#endif
