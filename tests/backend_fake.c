/*
 * backend_fake.c - scripted backend for session tests (see backend_fake.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "backend_fake.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fake_session {
    struct fake_backend *f;
    struct event *timer; /* async answer */
    uint8_t pending_cmd;
    mgw_backend_done_cb done;
    void *arg;
    mgw_backend_progress_cb progress;
    void *progress_arg;
};

static void fake_needs(void *impl, struct mgw_backend_needs *out)
{
    struct fake_backend *f = impl;

    *out = f->needs;
}

static void fake_fire(evutil_socket_t fd, short what, void *p)
{
    struct fake_session *fs = p;
    const struct fake_answer *a = &fs->f->answer[fs->pending_cmd & 127];
    struct mgw_verdict v = {.kind = MGW_VERDICT_CONTINUE};

    for (int i = 0; a->set && i < a->progress; i++) {
        fs->progress(fs->progress_arg);
        fs->f->progress_sent++;
    }
    if (a->set) {
        v.kind = a->kind;
        v.reply = a->reply;
        v.mods = a->mods;
        v.nmods = a->nmods;
    } else if (fs->pending_cmd == MGW_SMFIC_BODYEOB) {
        v.kind = MGW_VERDICT_ACCEPT;
    }
    fs->pending_cmd = 0;
    fs->done(fs->arg, &v);
}

static void *fake_open(void *impl, const struct mgw_session_info *info,
                       mgw_backend_progress_cb progress, mgw_backend_flow_cb flow,
                       void *arg)
{
    struct fake_backend *f = impl;
    struct fake_session *fs = calloc(1, sizeof *fs);

    f->flow = flow;
    f->flow_arg = arg;
    fs->f = f;
    fs->progress = progress;
    fs->progress_arg = arg;
    fs->timer = evtimer_new(f->evbase, fake_fire, fs);
    f->opens++;
    f->open_sessions++;
    return fs;
}

static void record(struct fake_backend *f, const struct mgw_event *ev, int want_reply)
{
    struct fake_event *e;
    struct mgw_str s;
    size_t pos = 0, n = 0;
    const struct mgw_milter_msg *m = ev->msg;

    if (f->nevents == FAKE_MAX_EVENTS)
        return;
    e = &f->events[f->nevents++];
    memset(e, 0, sizeof *e);
    e->cmd = m->cmd;
    e->want_reply = want_reply;
    e->macros[0] = '\0';
    if (ev->macros != NULL) {
        struct mgw_str k, v;

        while (mgw_milter_list_next(ev->macros, &pos, &k) &&
               mgw_milter_list_next(ev->macros, &pos, &v) && n < sizeof e->macros)
            n += (size_t)snprintf(e->macros + n, sizeof e->macros - n, "%s=%s;", k.ptr, v.ptr);
    }
    switch (m->cmd) {
    case MGW_SMFIC_CONNECT: snprintf(e->arg, sizeof e->arg, "%s", m->u.connect.hostname.ptr); break;
    case MGW_SMFIC_HELO: snprintf(e->arg, sizeof e->arg, "%s", m->u.helo.ptr); break;
    case MGW_SMFIC_MAIL:
    case MGW_SMFIC_RCPT:
        pos = 0;
        if (mgw_milter_list_next(&m->u.args, &pos, &s))
            snprintf(e->arg, sizeof e->arg, "%s", s.ptr);
        break;
    case MGW_SMFIC_HEADER: snprintf(e->arg, sizeof e->arg, "%s", m->u.header.name.ptr); break;
    default: break;
    }
}

static void fake_resume(evutil_socket_t fd, short what, void *p)
{
    struct fake_backend *f = p;

    f->events_at_resume = f->nevents;
    event_free(f->flow_timer);
    f->flow_timer = NULL;
    f->flow(f->flow_arg, 0);
}

static int fake_event(void *bs, const struct mgw_event *ev, int want_reply,
                      mgw_backend_done_cb done, void *arg)
{
    struct fake_session *fs = bs;
    struct fake_backend *f = fs->f;
    static const struct timeval zero = {0, 0};

    record(f, ev, want_reply);
    if (f->flow_stop_cmd != 0 && ev->msg->cmd == f->flow_stop_cmd && f->events_at_stop == 0) {
        f->events_at_stop = f->nevents;
        f->flow(f->flow_arg, 1);
        f->flow_timer = evtimer_new(f->evbase, fake_resume, f);
        evtimer_add(f->flow_timer, &zero);
    }
    if (!want_reply)
        return 0;
    if (fs->pending_cmd != 0)
        abort(); /* the session must never have two answered events in flight */
    fs->pending_cmd = ev->msg->cmd;
    fs->done = done;
    fs->arg = arg;
    if (f->async)
        evtimer_add(fs->timer, &zero);
    else
        fake_fire(-1, 0, fs);
    return 0;
}

static void fake_close(void *bs)
{
    struct fake_session *fs = bs;

    fs->f->closes++;
    fs->f->open_sessions--;
    event_free(fs->timer);
    free(fs);
}

static const struct mgw_backend_ops fake_ops = {
    .name = "fake",
    .needs = fake_needs,
    .session_open = fake_open,
    .event = fake_event,
    .session_close = fake_close,
    .free = NULL,
};

void fake_init(struct fake_backend *f, struct event_base *evbase)
{
    memset(f, 0, sizeof *f);
    f->base.ops = &fake_ops;
    f->base.impl = f;
    f->evbase = evbase;
}

int fake_count(const struct fake_backend *f, uint8_t cmd)
{
    int n = 0;

    for (int i = 0; i < f->nevents; i++)
        n += f->events[i].cmd == cmd;
    return n;
}

const struct fake_event *fake_nth(const struct fake_backend *f, uint8_t cmd, int n)
{
    for (int i = 0; i < f->nevents; i++)
        if (f->events[i].cmd == cmd && n-- == 0)
            return &f->events[i];
    return NULL;
}
