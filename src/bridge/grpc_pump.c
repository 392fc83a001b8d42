/*
 * grpc_pump.c - completion-queue thread to libevent hand-off (see grpc_pump.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/grpc_pump.h"

#include <pthread.h>
#include <stdlib.h>

#include "mgw/mailbox.h"
#include "mgw/xmalloc.h"

struct mgw_grpc_pump {
    grpc_completion_queue *cq;
    pthread_t thread;
    struct mgw_mailbox *mb;
};

static void run_tag(void *arg, int ok)
{
    struct mgw_grpc_tag *tag = arg;

    tag->cb(tag, ok);
}

static void *pump_thread(void *arg)
{
    struct mgw_grpc_pump *p = arg;

    for (;;) {
        grpc_event e = grpc_completion_queue_next(p->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                  NULL);

        if (e.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (e.type == GRPC_OP_COMPLETE)
            mgw_mailbox_post(p->mb, run_tag, e.tag, e.success);
    }
    return NULL;
}

struct mgw_grpc_pump *mgw_grpc_pump_new(struct event_base *base)
{
    struct mgw_grpc_pump *p = mgw_xcalloc(1, sizeof *p);

    p->cq = grpc_completion_queue_create_for_next(NULL);
    p->mb = mgw_mailbox_new(base);
    if (pthread_create(&p->thread, NULL, pump_thread, p) != 0)
        mgw_panic("grpc pump: cannot start the completion-queue thread");
    return p;
}

grpc_completion_queue *mgw_grpc_pump_cq(struct mgw_grpc_pump *p)
{
    return p->cq;
}

struct mgw_grpc_pump *mgw_grpc_pump_free(struct mgw_grpc_pump *p)
{
    if (p == NULL)
        return NULL;
    grpc_completion_queue_shutdown(p->cq);
    pthread_join(p->thread, NULL);
    /* Completions queued after the loop's last turn still owe their callbacks. */
    p->mb = mgw_mailbox_free(p->mb);
    grpc_completion_queue_destroy(p->cq);
    free(p);
    return NULL;
}
