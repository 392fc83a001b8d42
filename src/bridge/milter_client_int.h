/*
 * milter_client_int.h - what milter_client.c and milter_wire.c share: reaching a milter
 * and the frames on its connection (milter_wire.c). Not a contract: milter_client.h is.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MILTER_CLIENT_INT_H
#define MGW_MILTER_CLIENT_INT_H

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "mgw/milter_codec.h"

struct milter_addr {
    struct sockaddr_storage sa;
    socklen_t len;
};

int milter_resolve(const char *target, struct milter_addr *out, char *why, size_t whylen);
struct bufferevent *milter_dial(struct event_base *base, const struct milter_addr *a,
                                bufferevent_data_cb readcb, bufferevent_data_cb writecb,
                                bufferevent_event_cb eventcb, void *arg);
void milter_quick_ack(struct bufferevent *bev);
void milter_write_optneg(struct bufferevent *bev, uint32_t actions);
void milter_write_simple(struct bufferevent *bev, uint8_t cmd);
void milter_write_now(struct bufferevent *bev);
ssize_t milter_next_frame(struct evbuffer *in, uint32_t max_frame, struct mgw_milter_msg *m);
const char *milter_optneg_unfit(const struct mgw_milter_optneg *ans,
                                const struct mgw_milter_optneg *offer, char *why, size_t n);

#endif
