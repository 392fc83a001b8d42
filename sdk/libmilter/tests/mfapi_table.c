/*
 * mfapi_table.c - the constants of whichever libmilter/mfapi.h the include path finds,
 * compiled twice by CMake: against Debian's (TABLE=mfapi_real) and against ours
 * (TABLE=mfapi_ours). With MDS defined, _FFR_MDS_NEGOTIATE is on.
 * SPDX-License-Identifier: Apache-2.0
 */
#include <stddef.h>

#ifdef MDS
#define _FFR_MDS_NEGOTIATE 1
#endif
#include <libmilter/mfapi.h>

#include "mfapi_constants.h"

#define ENTRY(c)   {#c, (long long)(c)},
#define CAT2(a, b) a##b
#define CAT(a, b)  CAT2(a, b)

#ifdef MDS
const struct mfapi_constant CAT(TABLE, _mds)[] = {MFAPI_CONSTANTS_MDS(ENTRY){NULL, 0}};
#else
const struct mfapi_constant TABLE[] = {MFAPI_CONSTANTS(ENTRY){NULL, 0}};
#endif
