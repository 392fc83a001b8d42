/*
 * listener.h - milter listening sockets.
 *
 * Specs and unix socket options are listen_spec.h's. PORT 0 binds an ephemeral port; the
 * "listening" log line names the real one.
 *
 * Unix sockets are created with a configurable mode (Postfix's daemons run as user
 * `postfix` and must be able to connect). A stale socket file left by a dead process is
 * replaced; a live one (something answers connect()) or a non-socket file is an error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_LISTENER_H
#define MGW_LISTENER_H

#ifdef MGW_CORE
#error "listener.h is I/O: not part of mgw_core (src/core)"
#endif

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mgw/listen_spec.h"

struct event_base;
struct mgw_listener;

#define MGW_PEER_MAX 64 /* "[IPv6]:port" and its NUL */

/* Where an accepted connection goes (it takes the socket): workers.h's loops. `peer`
 * is for logs and lives only during the call. */
typedef void mgw_adopt_fn(void *arg, int fd, const char *peer);

/* Bind, listen, and hand every accepted connection to adopt(adopt_arg, ...). Returns
 * NULL with a reason in err on failure. */
struct mgw_listener *mgw_listener_new(struct event_base *base, const char *spec,
                                      const struct mgw_unix_opts *unix_opts,
                                      mgw_adopt_fn *adopt, void *adopt_arg, char *err,
                                      size_t errlen);

/* Stop accepting and close; removes the unix socket file we created. NULL-safe. */
struct mgw_listener *mgw_listener_free(struct mgw_listener *l);

#endif
