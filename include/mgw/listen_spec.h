/*
 * listen_spec.h - milter socket specs, as Postfix and Sendmail write them. Pure: the
 * listeners (listener.h) bind them, the milter backend (milter_client.h) connects to them.
 *   inet:HOST:PORT      inet:PORT@HOST (Sendmail)      inet:PORT (all IPv4 addresses)
 *   inet6:[ADDR]:PORT   inet6:PORT@ADDR                inet6:PORT (all IPv6 addresses)
 *   unix:PATH           local:PATH (Sendmail)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_LISTEN_SPEC_H
#define MGW_LISTEN_SPEC_H

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

#define MGW_DEFAULT_UNIX_MODE 0660

/* How unix sockets are created: permissions, and owner/group ((uid_t)-1 / (gid_t)-1 =
 * leave as created; changing them needs the privilege to chown). */
struct mgw_unix_opts {
    unsigned mode;
    uid_t uid;
    gid_t gid;
};

#endif
