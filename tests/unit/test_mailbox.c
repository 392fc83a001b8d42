/*
 * test_mailbox.c - calls posted from other threads run on the loop thread, each once, in
 * post order per poster; calls posted by a call run too; free runs what is left.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/event.h>
#include <pthread.h>
#include <string.h>

#include "mgw/mailbox.h"

#define POSTERS 4
#define POSTS   5000

static struct event_base *base;
static struct mgw_mailbox *mb;
static pthread_t loop_thread;
static int last[POSTERS]; /* the last value seen from each poster */
static int seen, out_of_order, wrong_thread;

static void on_post(void *arg, int val)
{
    int poster = (int)(intptr_t)arg;

    if (!pthread_equal(pthread_self(), loop_thread))
        wrong_thread++;
    if (val != last[poster] + 1)
        out_of_order++;
    last[poster] = val;
    if (++seen == POSTERS * POSTS)
        event_base_loopbreak(base);
}

static void *poster(void *arg)
{
    for (int v = 1; v <= POSTS; v++)
        mgw_mailbox_post(mb, on_post, arg, v);
    return NULL;
}

static void posts_from_threads_run_on_the_loop_in_order(void **state)
{
    pthread_t t[POSTERS];
    struct timeval limit = {30, 0};

    base = event_base_new();
    mb = mgw_mailbox_new(base);
    loop_thread = pthread_self();
    memset(last, 0, sizeof last);
    seen = out_of_order = wrong_thread = 0;
    for (int i = 0; i < POSTERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, poster, (void *)(intptr_t)i), 0);
    event_base_loopexit(base, &limit); /* bounded: a lost post fails, it does not hang */
    event_base_dispatch(base);
    for (int i = 0; i < POSTERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(seen, POSTERS * POSTS);
    assert_int_equal(out_of_order, 0);
    assert_int_equal(wrong_thread, 0);
    mb = mgw_mailbox_free(mb);
    event_base_free(base);
}

static int chain_left, chain_runs;

/* Each call posts the next: those run at later drains, and free runs them all. */
static void on_chain(void *arg, int val)
{
    chain_runs++;
    if (chain_left-- > 0)
        mgw_mailbox_post(arg, on_chain, arg, val + 1);
}

static void free_runs_what_is_left_including_what_it_posts(void **state)
{
    struct event_base *b = event_base_new();
    struct mgw_mailbox *m = mgw_mailbox_new(b);

    chain_left = 3;
    chain_runs = 0;
    mgw_mailbox_post(m, on_chain, m, 0);
    mgw_mailbox_drain(m); /* runs the first, which posts the second */
    assert_int_equal(chain_runs, 1);
    assert_null(mgw_mailbox_free(m));
    assert_int_equal(chain_runs, 4);
    event_base_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(posts_from_threads_run_on_the_loop_in_order),
        cmocka_unit_test(free_runs_what_is_left_including_what_it_posts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
