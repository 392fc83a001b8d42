/*
 * test_owed.c - unit tests of the owed-reply FIFO (owed.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mgw/error.h"
#include "mgw/owed.h"

static struct mgw_owed entry(uint64_t id, enum mgw_owed_kind kind)
{
    return (struct mgw_owed){.id = id, .due_ms = 1000 + id, .cmd = 'L', .kind = (uint8_t)kind};
}

/* Entries come out in the order they went in, across wrap-around and growth. */
static void test_fifo_order_survives_wrapping_and_growth(void **state)
{
    struct mgw_owed_fifo q = {0};
    struct mgw_owed o;
    uint64_t next_in = 1, next_out = 1;

    (void)state;
    assert_null(mgw_owed_front(&q));
    assert_null(mgw_owed_back(&q));
    assert_int_equal(mgw_owed_pop(&q, &o), MGW_EINVAL);
    /* Push 3, pop 2, repeatedly: the head walks round the ring while it grows. */
    for (int round = 0; round < 200; round++) {
        for (int k = 0; k < 3; k++) {
            struct mgw_owed e = entry(next_in++, MGW_OWED_WAITED);

            assert_int_equal(mgw_owed_push(&q, &e), 0);
            assert_int_equal(mgw_owed_back(&q)->id, e.id);
        }
        for (int k = 0; k < 2; k++) {
            assert_int_equal(mgw_owed_front(&q)->id, next_out);
            assert_int_equal(mgw_owed_pop(&q, &o), 0);
            assert_int_equal(o.id, next_out);
            assert_int_equal(o.due_ms, 1000 + next_out);
            next_out++;
            assert_int_equal(mgw_owed_back(&q)->id, next_in - 1);
        }
    }
    assert_int_equal(q.len, 200);
    while (mgw_owed_pop(&q, &o) == 0)
        assert_int_equal(o.id, next_out++);
    assert_int_equal(next_out, next_in);
    /* A ring that grew for a backlog is freed once empty. */
    assert_null(q.ring);
    assert_int_equal(q.cap, 0);
}

/* The deferred count follows pushes and pops; find returns the oldest match. */
static void test_deferred_entries_are_counted_and_found(void **state)
{
    struct mgw_owed_fifo q = {0};
    static const enum mgw_owed_kind kinds[] = {MGW_OWED_WAITED, MGW_OWED_DEFERRED,
                                               MGW_OWED_IGNORED, MGW_OWED_DEFERRED};

    (void)state;
    for (uint64_t i = 0; i < 4; i++) {
        struct mgw_owed e = entry(10 + i, kinds[i]);

        assert_int_equal(mgw_owed_push(&q, &e), 0);
    }
    assert_int_equal(q.deferred, 2);
    assert_int_equal(mgw_owed_find(&q, MGW_OWED_DEFERRED, 0)->id, 11);
    assert_int_equal(mgw_owed_find(&q, MGW_OWED_DEFERRED, 12)->id, 13);
    assert_null(mgw_owed_find(&q, MGW_OWED_DEFERRED, 14));
    assert_int_equal(mgw_owed_find(&q, MGW_OWED_IGNORED, 0)->id, 12);
    assert_int_equal(mgw_owed_pop(&q, NULL), 0);
    assert_int_equal(q.deferred, 2);
    assert_int_equal(mgw_owed_pop(&q, NULL), 0);
    assert_int_equal(q.deferred, 1);
    mgw_owed_clear(&q);
    assert_int_equal(q.len, 0);
    assert_int_equal(q.deferred, 0);
    assert_null(mgw_owed_front(&q));
}

/* A filter that never answers cannot make the gateway owe without bound. */
static void test_the_fifo_is_bounded(void **state)
{
    struct mgw_owed_fifo q = {0};

    (void)state;
    for (uint64_t i = 0; i < MGW_OWED_MAX; i++) {
        struct mgw_owed e = entry(i + 1, MGW_OWED_IGNORED);

        assert_int_equal(mgw_owed_push(&q, &e), 0);
    }
    {
        struct mgw_owed e = entry(MGW_OWED_MAX + 1, MGW_OWED_IGNORED);

        assert_int_equal(mgw_owed_push(&q, &e), MGW_ENOSPACE);
    }
    assert_int_equal(q.len, MGW_OWED_MAX);
    assert_int_equal(mgw_owed_front(&q)->id, 1);
    mgw_owed_clear(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_order_survives_wrapping_and_growth),
        cmocka_unit_test(test_deferred_entries_are_counted_and_found),
        cmocka_unit_test(test_the_fifo_is_bounded),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
