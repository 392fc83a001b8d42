/*
 * milter_wire.c - reaching a milter and the frames on its connection, for the probes and
 * the streams of milter_client.c alike (milter_client_int.h): the socket spec resolved to
 * an address, the connection made, OPTNEG and the other frames the gateway writes, the
 * milter's frames read, and whether its OPTNEG answer fits the offer. What is sent when,
 * and what a reply means, are milter_client.c's.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/milter_vocab.h"
#include "mgw/milter_xlate.h"

#include "milter_client_int.h"

int milter_resolve(const char *target, struct milter_addr *out, char *why, size_t whylen)
{
    struct mgw_listen_spec ls;
    struct addrinfo hints, *res = NULL;
    char port[8];
    int r;

    memset(out, 0, sizeof *out);
    if (mgw_listen_spec_parse(target, &ls, why, whylen) < 0)
        return -1;
    if (ls.kind == MGW_LISTEN_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&out->sa;

        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, ls.path, sizeof un->sun_path);
        out->len = sizeof *un;
        return 0;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = ls.kind == MGW_LISTEN_INET6 ? AF_INET6 : AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%u", (unsigned)ls.port);
    r = getaddrinfo(ls.host, port, &hints, &res);
    if (r != 0 || res == NULL || res->ai_addrlen > sizeof out->sa) {
        snprintf(why, whylen, "cannot resolve %s: %s", ls.host,
                 r != 0 ? gai_strerror(r) : "no address");
        if (res != NULL)
            freeaddrinfo(res);
        return -1;
    }
    memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
    out->len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

struct bufferevent *milter_dial(struct event_base *base, const struct milter_addr *a,
                                bufferevent_data_cb readcb, bufferevent_data_cb writecb,
                                bufferevent_event_cb eventcb, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);

    bufferevent_setcb(bev, readcb, writecb, eventcb, arg);
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)&a->sa, (int)a->len) < 0) {
        bufferevent_free(bev);
        return NULL;
    }
    if (a->sa.ss_family != AF_UNIX) {
        int one = 1;

        /* Small frames, one round trip each: Nagle would hold every one for the ACK. */
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return bev;
}

/* Pipelined events get one small answer each, written one by one by the milter: with
 * Nagle on its side, each next answer waits for our ACK of the last, which delayed ACK
 * holds for 40 ms. Acknowledge at once instead (Linux turns quick ACKs off again by
 * itself, hence after every read). */
void milter_quick_ack(struct bufferevent *bev)
{
#ifdef TCP_QUICKACK
    int one = 1;

    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
#else
    (void)bev;
#endif
}

static void write_frame(struct bufferevent *bev, const struct mgw_milter_msg *m)
{
    uint8_t buf[64];
    ssize_t n = mgw_milter_encode(m, buf, sizeof buf);

    if (n > 0)
        bufferevent_write(bev, buf, (size_t)n);
}

void milter_write_optneg(struct bufferevent *bev, uint32_t actions)
{
    struct mgw_milter_msg m;

    memset(&m, 0, sizeof m);
    m.cmd = MGW_SMFIC_OPTNEG;
    mgw_xlate_offer(actions, &m.u.optneg);
    write_frame(bev, &m);
}

void milter_write_simple(struct bufferevent *bev, uint8_t cmd)
{
    struct mgw_milter_msg m;

    memset(&m, 0, sizeof m);
    m.cmd = cmd;
    write_frame(bev, &m);
}

/* One write attempt of what is buffered, before the socket is closed: QUIT needs no
 * answer, and closing right after it is what an MTA does. */
void milter_write_now(struct bufferevent *bev)
{
    evbuffer_write(bufferevent_get_output(bev), bufferevent_getfd(bev));
}

/*
 * Decode the next frame in `in` (milter to MTA). Returns bytes to drain after use (> 0)
 * with *m filled and valid until then, 0 if more bytes are needed, or < 0 on a frame that
 * can never be valid.
 */
ssize_t milter_next_frame(struct evbuffer *in, uint32_t max_frame, struct mgw_milter_msg *m)
{
    struct mgw_milter_decoder d = {.dir = MGW_MILTER_FROM_MILTER, .max_frame = max_frame};
    size_t avail = evbuffer_get_length(in);
    uint8_t hdr[MGW_MILTER_HDR_LEN];
    uint32_t len;
    ssize_t n;

    if (avail < sizeof hdr)
        return 0;
    evbuffer_copyout(in, hdr, sizeof hdr);
    len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    if (len == 0 || len > max_frame)
        return MGW_EMALFORMED;
    if (avail < sizeof hdr + len)
        return 0;
    n = mgw_milter_decode(&d, evbuffer_pullup(in, (ssize_t)(sizeof hdr + len)),
                          sizeof hdr + len, m);
    return n == MGW_PARTIAL ? MGW_EMALFORMED : n;
}

/* Why an OPTNEG answer does not fit the offer (NULL: it fits). */
const char *milter_optneg_unfit(const struct mgw_milter_optneg *ans,
                                const struct mgw_milter_optneg *offer, char *why, size_t n)
{
    if (ans->version < MGW_MILTER_MIN_VERSION || ans->version > MGW_MILTER_VERSION)
        snprintf(why, n, "milter protocol version %" PRIu32 " (2 to 6 spoken)", ans->version);
    else if (ans->actions & ~offer->actions)
        snprintf(why, n, "the milter asked for actions 0x%" PRIx32 ", only 0x%" PRIx32
                 " were offered (what the MTA granted)", ans->actions, offer->actions);
    else if (ans->protocol & ~offer->protocol & ~(MGW_SMFIP_MDS_256K | MGW_SMFIP_MDS_1M))
        snprintf(why, n, "the milter asked for protocol bits 0x%" PRIx32 " not offered",
                 ans->protocol & ~offer->protocol);
    else
        return NULL;
    return why;
}
