/*
 * test_grpc_pump.c - completions reach the libevent thread, each exactly once.
 *
 * A connectivity watch with a short deadline on a channel nobody answers is the one
 * completion the C core API can produce without a server: it completes with ok=0 at the
 * deadline (or ok=1 on a state change). Several watches in a burst must all arrive, on
 * the loop thread, and shutdown must join the thread cleanly. Pumps of several loops
 * share one queue and thread: each completion must reach its own pump's loop, and a
 * pump freed with watches still out must wait for them while the others go on.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/event.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <pthread.h>
#include <string.h>

#include "mgw/grpc_pump.h"

#define WATCHES 8

struct watch {
    struct mgw_grpc_tag tag;
    int fired;
    pthread_t thread;
};

static struct event_base *base;
static int remaining;

static void on_watch(struct mgw_grpc_tag *tag, int ok)
{
    struct watch *w = (struct watch *)tag;

    w->fired++;
    w->thread = pthread_self();
    if (--remaining == 0)
        event_base_loopbreak(base);
}

static void watches_complete_on_the_loop_thread_exactly_once(void **state)
{
    struct watch w[WATCHES];
    struct mgw_grpc_pump *p;
    grpc_channel_credentials *cr;
    grpc_channel *ch;
    gpr_timespec deadline;

    memset(w, 0, sizeof w);
    base = event_base_new();
    p = mgw_grpc_pump_new(base);
    cr = grpc_insecure_credentials_create();
    /* Port 1 on loopback: nothing listens, the channel never becomes ready. */
    ch = grpc_channel_create("127.0.0.1:1", cr, NULL);
    grpc_channel_credentials_release(cr);
    deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(50, GPR_TIMESPAN));
    remaining = WATCHES;
    for (int i = 0; i < WATCHES; i++) {
        w[i].tag.cb = on_watch;
        mgw_grpc_pump_watch(p, ch, grpc_channel_check_connectivity_state(ch, 0), deadline,
                            &w[i].tag);
    }
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    for (int i = 0; i < WATCHES; i++) {
        if (w[i].fired != 1)
            fail_msg("watch %d: fired got %d, want 1", i, w[i].fired);
        assert_true(pthread_equal(w[i].thread, pthread_self()));
    }
    grpc_channel_destroy(ch);
    p = mgw_grpc_pump_free(p);
    assert_null(p);
    event_base_free(base);
}

/* A loop on its own thread with its own pump: it arms WATCHES watches, runs until they
 * all came, and either frees its pump from the loop (free_early: with its watches still
 * out, which pump_free must wait for) or after. */
struct loop {
    struct event_base *base;
    struct mgw_grpc_pump *pump;
    grpc_channel *ch;
    struct watch w[WATCHES];
    int free_early, ms;
    pthread_t thread;
};

static void on_loop_watch(struct mgw_grpc_tag *tag, int ok)
{
    struct watch *w = (struct watch *)tag;

    w->fired++;
    w->thread = pthread_self();
}

static int loop_fired(const struct loop *l)
{
    int n = 0;

    for (int i = 0; i < WATCHES; i++)
        n += l->w[i].fired;
    return n;
}

static void *loop_main(void *arg)
{
    struct loop *l = arg;
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(l->ms, GPR_TIMESPAN));

    l->base = event_base_new();
    l->pump = mgw_grpc_pump_new(l->base);
    for (int i = 0; i < WATCHES; i++) {
        l->w[i].tag.cb = on_loop_watch;
        mgw_grpc_pump_watch(l->pump, l->ch, grpc_channel_check_connectivity_state(l->ch, 0),
                            deadline, &l->w[i].tag);
    }
    while (!l->free_early && loop_fired(l) < WATCHES)
        event_base_loop(l->base, EVLOOP_ONCE);
    l->pump = mgw_grpc_pump_free(l->pump);
    event_base_free(l->base);
    return NULL;
}

static void pumps_of_several_loops_share_one_queue(void **state)
{
    struct loop loops[3];
    grpc_channel_credentials *cr = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create("127.0.0.1:1", cr, NULL);

    grpc_channel_credentials_release(cr);
    memset(loops, 0, sizeof loops);
    for (int k = 0; k < 3; k++) {
        loops[k].ch = ch;
        loops[k].free_early = k == 1;
        loops[k].ms = 50 + 50 * k;
        assert_int_equal(pthread_create(&loops[k].thread, NULL, loop_main, &loops[k]), 0);
    }
    for (int k = 0; k < 3; k++) {
        assert_int_equal(pthread_join(loops[k].thread, NULL), 0);
        for (int i = 0; i < WATCHES; i++) {
            if (loops[k].w[i].fired != 1)
                fail_msg("loop %d watch %d: fired %d, want 1", k, i, loops[k].w[i].fired);
            assert_true(pthread_equal(loops[k].w[i].thread, loops[k].thread));
        }
    }
    grpc_channel_destroy(ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(watches_complete_on_the_loop_thread_exactly_once),
        cmocka_unit_test(pumps_of_several_loops_share_one_queue),
    };
    int r;

    grpc_init();
    r = cmocka_run_group_tests(tests, NULL, NULL);
    grpc_shutdown_blocking();
    return r;
}
