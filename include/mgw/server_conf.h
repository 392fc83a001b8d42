/*
 * server_conf.h - the MTA side's limits, as the configuration gives them to the sessions
 * (session.h). Pure data, so that the configuration (config.h) needs no I/O header.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_SERVER_CONF_H
#define MGW_SERVER_CONF_H

#include <stdint.h>

struct mgw_server_config {
    uint32_t max_frame;        /* cap on a frame's length field; 0 = default (1 MiB + 5) */
    unsigned max_connections;  /* 0 = unlimited */
    unsigned idle_timeout_ms;  /* MTA silent this long between messages; 0 = none. Never
                                * applies inside a message, where the MTA legitimately waits
                                * for its SMTP client for as long as that takes. */
};

#define MGW_DEFAULT_MAX_CONNECTIONS 10000u
/* libmilter's default: longer than any SMTP session the MTA itself would keep idle. */
#define MGW_DEFAULT_IDLE_TIMEOUT_MS (7210u * 1000u)

#endif
