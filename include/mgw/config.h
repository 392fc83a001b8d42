/*
 * config.h - the configuration: a YAML file, command-line overrides, one immutable result.
 *
 * Every setting is a row of one table in config.c (key as written in the file, type,
 * default, minimum, maximum, target field), in the manner of Redis' static_configs[]. A
 * load parses the whole file, converts and checks every value, then publishes a
 * self-contained struct mgw_config (it owns all its strings). The file (every key is
 * documented in miltergw.example.yaml):
 *
 *   listen: [ "inet:127.0.0.1:8890" ]            milter sockets (listener.h specs)
 *   unix_socket: { mode: "0660", owner: postfix, group: postfix }
 *   http: { listen: "127.0.0.1:9090", ready: any }   absent = no HTTP listener
 *   log: { level: info, format: logfmt }
 *   limits: { max_connections: 10000, max_frame: 1048581, idle_timeout: 7210s }
 *   drain_timeout: 30s
 *   workers: 0                                    event loops; 0 = one per CPU core
 *   filters:                                      ordered: the merge order
 *     - { name, target, on_error, mode, timeout, eom_timeout, max_queue, max_message,
 *         load_balancing, keepalive: { time, timeout }, tls: { ca, cert, key, server_name },
 *         declare: { events, observe_only, actions, macros: { STAGE: [names] },
 *                    rejected_recipients, header_leading_space } }
 *
 * Durations are mgw_duration_parse()'s (250ms, 10s, 2m, bare number = seconds); where 0
 * is allowed (idle_timeout, drain_timeout) it means "none". Sizes are mgw_size_parse()'s
 * (65536, 64KiB, 4MiB, 1GiB); a filter's max_queue must also hold one full frame's event
 * (limits.max_frame + 1 KiB, rounded up to KiB). Unknown keys, duplicate keys,
 * YAML aliases and more than one document are refused. Every refusal names the file, the
 * line and the key: `miltergw.yaml:12: filters[1].timeout: "10x" is not a duration ...`.
 *
 * Command line. main gets a config from mgw_config_load() (or mgw_config_new_default()
 * with no file), applies its flags with mgw_config_set() / mgw_config_set_listen() /
 * mgw_config_set_filters() (flags win over the file), then calls mgw_config_validate(),
 * which runs the same checks as a load plus those that need the flags (at least one
 * listener). Only after that is the config published.
 *
 * Lifetime. A published config is never modified. It is reference counted so that a
 * SIGHUP reload can hand new sessions a new config while running sessions keep the old
 * one: mgw_config_ref() / mgw_config_unref(), on the event-loop thread only (the count is
 * not atomic).
 *
 * Pure apart from reading the file: no logging, no name lookups (unix_socket owner and
 * group are resolved by main), no checks that TLS files exist (the bridge reads them).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_CONFIG_H
#define MGW_CONFIG_H

#include <stddef.h>

#include "mgw/filter_conf.h"
#include "mgw/log.h"
#include "mgw/server_conf.h"

/* What /readyz waits for, besides the milter listeners being up. */
enum mgw_config_ready {
    MGW_CONFIG_READY_ANY = 0, /* at least one filter channel READY (or no filter at all) */
    MGW_CONFIG_READY_ALL,     /* every filter channel READY */
    MGW_CONFIG_READY_NONE,    /* filter channels are not looked at */
};

#define MGW_CONFIG_DEFAULT_DRAIN_TIMEOUT_MS (30u * 1000u)
#define MGW_CONFIG_MAX_LISTEN               64
#define MGW_CONFIG_MAX_FILTERS              64
#define MGW_CONFIG_MAX_WORKERS              256
#define MGW_CONFIG_MAX_FILE                 (1024u * 1024u) /* bytes; a larger file is refused */

struct mgw_config {
    unsigned refs; /* see mgw_config_ref(); 1 when made */

    char **listen; /* owned, nlisten specs as given (each parses with mgw_listen_spec_parse) */
    size_t nlisten;
    unsigned unix_mode; /* permission bits of unix sockets; default MGW_DEFAULT_UNIX_MODE */
    char *unix_owner;   /* owned; user name or number for unix sockets; NULL = unchanged */
    char *unix_group;   /* owned; group name or number; NULL = unchanged */

    char *http_listen; /* owned; "HOST:PORT" or "[ADDR]:PORT"; NULL = no HTTP listener */
    enum mgw_config_ready http_ready;

    enum mgw_log_level log_level;   /* default info */
    enum mgw_log_format log_format; /* default logfmt */

    struct mgw_server_config server; /* limits: max_frame, max_connections, idle_timeout_ms
                                        (0 = none); defaults as in session.h */
    unsigned drain_timeout_ms;       /* SIGTERM: time given to messages in progress */
    unsigned phase_memory; /* limits.phase_memory: body bytes a message keeps in memory for
                              later phases, the rest in a temporary file (rule 8) */
    unsigned workers; /* event loops running sessions; 0 = one per online CPU (workers.h).
                         A reload keeps the running count: changing it needs a restart. */

    struct mgw_filter_conf *filters; /* owned, nfilters in merge order; names unique */
    size_t nfilters;
};

/*
 * Read, parse and check the file at `path`. On success *out is a new config (refs 1) and
 * 0 is returned. Otherwise *out is NULL, MGW_EINVAL is returned (MGW_EIO if the file
 * cannot be read) and err holds one line: "PATH:LINE: KEY: problem", or "PATH: problem"
 * when no line applies (unreadable file). A file without `listen` loads: the command line
 * may supply it, and mgw_config_validate() insists.
 */
int mgw_config_load(const char *path, struct mgw_config **out, char *err, size_t errlen);

/* The same from a buffer (tests, fuzzing); `name` stands for the file name in messages. */
int mgw_config_load_data(const char *name, const void *data, size_t len, struct mgw_config **out,
                         char *err, size_t errlen);

/* Every default, no listener, no filter; refs 1. */
struct mgw_config *mgw_config_new_default(void);

/*
 * Command-line overrides, for a config not yet published (refs 1, not validated).
 * mgw_config_set() sets one scalar by its file key ("limits.max_frame", "http.listen",
 * "log.level", "unix_socket.mode", "drain_timeout", ...) from text, exactly as the file
 * would; returns 0 or MGW_EINVAL with "KEY: problem" in err. Scalar fields may also be
 * assigned directly; mgw_config_validate() checks them all.
 */
int mgw_config_set(struct mgw_config *c, const char *key, const char *value, char *err,
                   size_t errlen);
/* Replace the listeners with copies of specs[0..n). */
void mgw_config_set_listen(struct mgw_config *c, const char *const *specs, size_t n);
/* Replace the filters with deep copies of filters[0..n) (mgw_filter_conf_copy). */
void mgw_config_set_filters(struct mgw_config *c, const struct mgw_filter_conf *filters, size_t n);

/*
 * Check everything a load checks (ranges, names, listen specs, unique filter names, TLS
 * certificate and key together, declarations) plus at least one listener. Returns 0 or
 * MGW_EINVAL with "KEY: problem" in err.
 */
int mgw_config_validate(const struct mgw_config *c, char *err, size_t errlen);

/* Take one more reference; returns c. */
struct mgw_config *mgw_config_ref(struct mgw_config *c);
/* Drop one reference, freeing everything at zero. Accepts NULL; returns NULL. */
struct mgw_config *mgw_config_unref(struct mgw_config *c);
/* The same as mgw_config_unref(), for the *_new / *_free pairing rule. */
struct mgw_config *mgw_config_free(struct mgw_config *c);

const char *mgw_config_ready_name(enum mgw_config_ready r);
const char *mgw_load_balancing_name(enum mgw_load_balancing lb);

#endif
