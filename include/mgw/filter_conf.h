/*
 * filter_conf.h - one configured filter: name, gRPC target, failure policy, timeouts.
 *
 * Parsed from the command line for now:
 *   --filter NAME=TARGET[,on_error=tempfail|accept|reject][,timeout=DUR][,eom_timeout=DUR]
 *            [,mode=shadow|normal]
 * DUR is a number with a unit: 250ms, 10s, 2m (a bare number means seconds). TARGET is
 * any gRPC target string: 127.0.0.1:50051, dns:///filter:50051, ipv4:a:p,b:p, unix:/path.
 * The order of --filter flags is the merge order. Pure.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_FILTER_CONF_H
#define MGW_FILTER_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "mgw/backend.h"

enum mgw_on_error {
    MGW_ON_ERROR_TEMPFAIL = 0, /* default: fail closed, the sender retries */
    MGW_ON_ERROR_ACCEPT,       /* fail open: the filter is ignored */
    MGW_ON_ERROR_REJECT,
};

#define MGW_FILTER_DEFAULT_TIMEOUT_MS 10000u
#define MGW_FILTER_DEFAULT_EOM_TIMEOUT_MS 60000u
#define MGW_FILTER_NAME_MAX 64

struct mgw_filter_conf {
    char name[MGW_FILTER_NAME_MAX];
    char *target;            /* owned */
    enum mgw_on_error on_error;
    unsigned timeout_ms;     /* per event */
    unsigned eom_timeout_ms; /* end of message */
    bool shadow;
};

/* Parse one --filter value into *out (target allocated). Returns 0, or MGW_EINVAL with a
 * reason in err. */
int mgw_filter_conf_parse(const char *arg, struct mgw_filter_conf *out, char *err, size_t errlen);
void mgw_filter_conf_clear(struct mgw_filter_conf *c);

/* Parse "250ms", "10s", "2m", "3" (seconds) into milliseconds; 0 or -1 on error. */
int mgw_duration_parse(const char *s, size_t len, unsigned *ms);

/* The verdict a failure of this filter stands for. */
enum mgw_verdict_kind mgw_on_error_verdict(enum mgw_on_error e);
const char *mgw_on_error_name(enum mgw_on_error e);

#endif
