/*
 * listener.h - milter listening sockets.
 *
 * Specs, as Postfix and Sendmail write them:
 *   inet:HOST:PORT      inet:PORT@HOST (Sendmail)      inet:PORT (all IPv4 addresses)
 *   inet6:[ADDR]:PORT   inet6:PORT@ADDR                inet6:PORT (all IPv6 addresses)
 *   unix:PATH           local:PATH (Sendmail)
 * PORT 0 binds an ephemeral port; the "listening" log line names the real one.
 *
 * Unix sockets are created with a configurable mode (Postfix's daemons run as user
 * `postfix` and must be able to connect). A stale socket file left by a dead process is
 * replaced; a live one (something answers connect()) or a non-socket file is an error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_LISTENER_H
#define MGW_LISTENER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum mgw_listen_kind {
    MGW_LISTEN_INET = 1,
    MGW_LISTEN_INET6,
    MGW_LISTEN_UNIX,
};

struct mgw_listen_spec {
    enum mgw_listen_kind kind;
    char host[256]; /* inet/inet6; "" = any address */
    uint16_t port;
    char path[108]; /* unix; fits sockaddr_un.sun_path */
};

/* Pure. Returns 0, or MGW_EINVAL with a reason in err. */
int mgw_listen_spec_parse(const char *spec, struct mgw_listen_spec *out, char *err,
                          size_t errlen);

/* The HTTP listener's address: "HOST:PORT" or "[ADDR]:PORT", HOST not empty, PORT 0 to
 * 65535 in decimal (0 picks a free one); a bare IPv6 address needs its brackets. The one
 * parser behind both --check-config and start-up. Pure. Returns 0 (host in host[0..cap),
 * NUL-terminated), or -1. */
int mgw_hostport_parse(const char *spec, char *host, size_t cap, uint16_t *port);

struct event_base;
struct mgw_listener;

#define MGW_PEER_MAX 64 /* "[IPv6]:port" and its NUL */

/* Where an accepted connection goes (it takes the socket): workers.h's loops. `peer`
 * is for logs and lives only during the call. */
typedef void mgw_adopt_fn(void *arg, int fd, const char *peer);

#define MGW_DEFAULT_UNIX_MODE 0660

/* How unix sockets are created: permissions, and owner/group ((uid_t)-1 / (gid_t)-1 =
 * leave as created; changing them needs the privilege to chown). */
struct mgw_unix_opts {
    unsigned mode;
    uid_t uid;
    gid_t gid;
};

/* Bind, listen, and hand every accepted connection to adopt(adopt_arg, ...). Returns
 * NULL with a reason in err on failure. */
struct mgw_listener *mgw_listener_new(struct event_base *base, const char *spec,
                                      const struct mgw_unix_opts *unix_opts,
                                      mgw_adopt_fn *adopt, void *adopt_arg, char *err,
                                      size_t errlen);

/* Stop accepting and close; removes the unix socket file we created. NULL-safe. */
struct mgw_listener *mgw_listener_free(struct mgw_listener *l);

#endif
