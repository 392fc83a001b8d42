/*
 * backend_null.c - the backend used when no filter is configured: a null milter.
 *
 * It asks the MTA for every event (so the front end is exercised in full and an operator
 * can watch the traffic at debug level), answers continue to each, and accepts at end of
 * message. It modifies nothing.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/backend.h"
#include "mgw/xmalloc.h"

#include <stdlib.h>

static char null_session; /* a non-NULL token: the null backend keeps no state */

static void null_needs(void *backend, struct mgw_backend_needs *out)
{
    out->protocol = 0;
    out->actions = 0;
}

static void *null_open(void *backend, const struct mgw_session_info *info,
                       mgw_backend_progress_cb progress, mgw_backend_flow_cb flow,
                       void *arg)
{
    return &null_session;
}

static int null_event(void *bsession, const struct mgw_event *ev, int want_reply,
                      mgw_backend_done_cb done, void *arg)
{
    struct mgw_verdict v = {.kind = MGW_VERDICT_CONTINUE};

    if (!want_reply)
        return 0;
    if (ev->msg->cmd == MGW_SMFIC_BODYEOB)
        v.kind = MGW_VERDICT_ACCEPT;
    done(arg, &v);
    return 0;
}

static void null_close(void *bsession)
{
}

static void null_free(void *backend)
{
    free(backend);
}

static const struct mgw_backend_ops null_ops = {
    .name = "null",
    .needs = null_needs,
    .session_open = null_open,
    .event = null_event,
    .session_close = null_close,
    .free = null_free,
};

struct mgw_backend *mgw_backend_null_new(void)
{
    struct mgw_backend *b = mgw_xcalloc(1, sizeof *b);

    b->ops = &null_ops;
    b->impl = b; /* freed through null_free */
    return b;
}
