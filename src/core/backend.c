/*
 * backend.c - small pure helpers shared by every backend (see backend.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/backend.h"

#include <string.h>

/* mgw_verdict_name() is a lookup in the verdict table of milter_vocab.c. */

const struct mgw_str *mgw_macros_get(const struct mgw_macros *m, int stage, const char *name,
                                     struct mgw_str *out)
{
    const struct mgw_strlist *l;
    struct mgw_str k, v;
    size_t pos = 0;

    if (stage < 0 || stage >= MGW_STAGE_COUNT)
        return NULL;
    l = &m->stage[stage];
    while (mgw_milter_list_next(l, &pos, &k) && mgw_milter_list_next(l, &pos, &v)) {
        if (strcmp(k.ptr, name) == 0) {
            *out = v;
            return out;
        }
    }
    return NULL;
}

struct mgw_backend *mgw_backend_free(struct mgw_backend *b)
{
    if (b != NULL && b->ops->free != NULL)
        b->ops->free(b->impl);
    return NULL;
}
