/*
 * cli.h - the command line: flags, kept so that every (re)load applies them again.
 *
 * `miltergw -c FILE` reads the YAML configuration (config.h); flags override the file's
 * values, and `--filter` flags replace its filter list. Without -c, flags alone make the
 * configuration. mgw_cli_config() builds and validates it; SIGHUP calls it again, so a
 * reload re-reads the file and re-applies the same flags.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_CLI_H
#define MGW_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "mgw/config.h"
#include "mgw/filter_conf.h"

#define MGW_CLI_MAX_LISTEN 64
#define MGW_CLI_MAX_FILTERS 64
#define MGW_CLI_MAX_SETS 32

struct mgw_cli {
    const char *config_path; /* -c FILE, or NULL */
    bool check_config;       /* --check-config: validate, report, exit */
    const char *listen[MGW_CLI_MAX_LISTEN];
    size_t nlisten;
    struct mgw_filter_conf filters[MGW_CLI_MAX_FILTERS]; /* owned */
    size_t nfilters;
    struct {
        const char *key; /* config key, as in the file */
        const char *value;
    } sets[MGW_CLI_MAX_SETS];
    size_t nsets;
};

/* Parse argv into *cli. --help and --version print and exit 0; a usage error prints why
 * and exits 2. */
void mgw_cli_parse(int argc, char **argv, struct mgw_cli *cli);

/* File (if any) + flags -> a validated configuration (refs 1). Returns 0, or an MGW_E*
 * code with "FILE:LINE: key: problem" (or "--flag: problem") in err. */
int mgw_cli_config(const struct mgw_cli *cli, struct mgw_config **out, char *err, size_t errlen);

void mgw_cli_clear(struct mgw_cli *cli);

#endif
