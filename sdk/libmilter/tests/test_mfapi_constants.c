/*
 * test_mfapi_constants.c - every SMFIS_/SMFIF_/SMFIP_/SMFIM_/SMFI_/SMFIC_/SMFIR_/SMFIA_/
 * MI_/MILTER_ constant of libmiltergw-milter's <libmilter/mfapi.h> equals Debian's
 * (libmilter-dev), with and without _FFR_MDS_NEGOTIATE.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mfapi_constants.h"

extern const struct mfapi_constant mfapi_real[], mfapi_ours[];
extern const struct mfapi_constant mfapi_real_mds[], mfapi_ours_mds[];

static void compare(const struct mfapi_constant *want, const struct mfapi_constant *got)
{
    int bad = 0, n = 0;
    for (; want->name; want++, got++, n++) {
        assert_string_equal(got->name, want->name);
        if (got->value != want->value) {
            print_error("%s: got %lld, want %lld (Debian's libmilter)\n", want->name, got->value,
                        want->value);
            bad++;
        }
    }
    assert_null(got->name);
    assert_true(n > 0);
    assert_int_equal(bad, 0);
}

static void every_constant_equals_libmilters(void **state)
{
    (void)state;
    compare(mfapi_real, mfapi_ours);
}

static void every_mds_constant_equals_libmilters(void **state)
{
    (void)state;
    compare(mfapi_real_mds, mfapi_ours_mds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_constant_equals_libmilters),
        cmocka_unit_test(every_mds_constant_equals_libmilters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
