/*
 * fuzz_config.c - libFuzzer target for the configuration loader (config.h).
 *
 * The input is loaded as a file named "fuzz.yaml" through mgw_config_load_data(). Besides
 * "no crash, no leak, no undefined behaviour", the target aborts when the loader breaks
 * one of its promises:
 *   - a refusal returns MGW_EINVAL, no config, and one line starting "fuzz.yaml";
 *   - libcyaml never refuses a document the loader's own scan accepted (its messages
 *     have no reliable line, so every structural refusal must come from the scan);
 *   - a config that loads passes mgw_config_validate(), except for the one check that
 *     needs the command line (at least one listener), and survives ref/unref.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/config.h"
#include "mgw/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static const char no_listener[] =
    "listen: no milter listener (give listen in the file or --listen)";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mgw_config *c = (struct mgw_config *)&size; /* must be overwritten */
    char err[512];
    int rc;

    err[0] = '\0';
    rc = mgw_config_load_data("fuzz.yaml", data, size, &c, err, sizeof err);
    if (rc != 0) {
        CHECK(rc == MGW_EINVAL);
        CHECK(c == NULL);
        CHECK(strncmp(err, "fuzz.yaml", 9) == 0);
        CHECK(strchr(err, '\n') == NULL);
        /* libcyaml's refusals are the only ones without a line (input text can only
         * appear in messages after a line number). */
        CHECK(strncmp(err, "fuzz.yaml: libcyaml", 19) != 0);
        return 0;
    }
    CHECK(c != NULL && c->refs == 1);
    rc = mgw_config_validate(c, err, sizeof err);
    if (c->nlisten == 0)
        CHECK(rc == MGW_EINVAL && strcmp(err, no_listener) == 0);
    else
        CHECK(rc == 0);
    for (size_t i = 0; i < c->nfilters; i++) {
        CHECK(c->filters[i].target != NULL && c->filters[i].name[0] != '\0');
        CHECK(!c->filters[i].has_decl || c->filters[i].decl.events != 0);
    }
    mgw_config_ref(c);
    CHECK(mgw_config_unref(c) == NULL && c->refs == 1);
    CHECK(mgw_config_free(c) == NULL);
    return 0;
}
