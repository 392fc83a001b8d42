/*
 * mgw_load.c - milter load generator: plays the MTA (Postfix) against a milter.
 *
 * N connections run on one thread with epoll. Each negotiates protocol v6 (actions 0x1FF,
 * protocol 0x1FFFFF), sends CONNECT and HELO once, then per message the Postfix sequence:
 * D M, MAIL, D R + RCPT per recipient, D T, DATA, the headers, D N, EOH, body chunks of at
 * most 65535 bytes, D E, an empty EOB, and ABORT (Postfix sends it when it reuses the
 * connection), and QUIT at the end. It honours what the milter negotiated: no event that
 * a NO* bit suppresses (the D macro packet is still sent, as both MTAs do), no waiting for
 * a reply that an NR* bit suppresses, macro lists requested in the O reply, and SKIP.
 *
 * Every reply is checked: CONTINUE at each step; at EOB, modifications allowed by the
 * negotiated actions, then ACCEPT or CONTINUE. Other verdicts (reject, tempfail, discard,
 * replycode, accept before EOB) end the message and are counted apart; anything else
 * (unknown or out-of-place reply, a reply nobody waits for, EOF, timeout) is a protocol
 * error that closes the connection and makes the exit status 1.
 *
 * All connections are set up (negotiated, CONNECT and HELO answered) before the clock
 * starts, so "seconds" covers the message phase only. With --messages 0 the connections
 * stay idle after setup ("ready" is printed) until --duration passes or a signal arrives:
 * that is the idle-memory mode of tools/bench.sh. The report line also gives the number of
 * message-stage commands sent (events=) and the message shape, so that CPU per message
 * can be turned into CPU per event without knowing which NO* bits were negotiated.
 *
 * What it does not do: SMTP, TLS, UNKNOWN commands, Sendmail's dialect (K, no ABORT).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mgw/error.h"
#include "mgw/listen_spec.h"
#include "mgw/milter_codec.h"
#include "mgw/milter_vocab.h"
#include "mgw/negotiate.h"
#include "mgw/xmalloc.h"

#define MAX_PENDING    256 /* connections being set up at once (listen backlogs are small) */
#define MAX_ERR_PRINTS 10  /* error lines printed before going quiet */
#define OFFER_ACTIONS  MGW_SMFI_CURR_ACTS
#define OFFER_PROTOCOL MGW_SMFI_CURR_PROT

struct opts {
    struct mgw_listen_spec target;
    unsigned conns;
    unsigned long messages; /* per connection; 0 = idle mode */
    bool messages_given;
    size_t body_bytes;
    unsigned rcpts;
    unsigned headers;
    double duration; /* seconds; 0 = unbounded */
    unsigned timeout_s;
};

/* Where a connection is in its script. A step is set to the *next* one before waiting. */
enum step {
    S_OPTNEG,
    S_CONNECT,
    S_HELO,
    S_READY,
    S_MAIL,
    S_RCPT,
    S_DATA,
    S_HEADER,
    S_EOH,
    S_BODY,
    S_EOB
};

struct buf {
    uint8_t *p;
    size_t off, len, cap; /* live bytes are p[off..len) */
};

struct conn {
    unsigned id;
    int fd;
    bool connecting, closing, want_out, done;
    bool setting_up; /* counted in `pending` */
    enum step step;
    size_t idx;      /* rcpt / header index, or body offset */
    uint8_t wait;    /* command whose reply we wait for, 0 = none */
    double deadline; /* for `wait` */
    uint32_t actions, protocol;
    char *symlist[MGW_STAGE_COUNT]; /* owned; NULL = no list for that stage */
    unsigned long msgs;
    double t_msg; /* start of the current message */
    struct buf in, out;
};

struct stats {
    unsigned long messages, accepted, other, modifications, conn_verdicts, errors;
    unsigned long events; /* message-stage commands sent (MAIL..EOB; not D, ABORT, QUIT) */
    uint32_t *lat_us; /* owned; one per message */
    size_t nlat, caplat;
    uint32_t protocol, actions; /* of the first negotiated connection, for the report */
    bool have_neg;
};

static struct opts o;
static struct stats st;
static struct conn *conns;
static unsigned launched, pending, ready, live;
static bool started, stopping;
static double t_start, t_end;
static int epfd;
static uint8_t *body;
static char host_ip[INET6_ADDRSTRLEN];
static volatile sig_atomic_t got_signal;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

/* ---- buffers and frames ---- */

static void buf_reserve(struct buf *b, size_t n)
{
    if (b->off > 0 && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n <= b->cap)
        return;
    if (b->off > 0) { /* compact before growing */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + n <= b->cap)
            return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
        cap *= 2;
    b->p = mgw_xrealloc(b->p, cap);
    b->cap = cap;
}

static void put(struct conn *c, const struct mgw_milter_msg *m)
{
    ssize_t n = mgw_milter_encoded_len(m);
    if (n < 0) { /* our own frames are always encodable */
        fprintf(stderr, "mgw_load: cannot encode %c: %s\n", m->cmd, mgw_strerror((int)n));
        abort();
    }
    buf_reserve(&c->out, (size_t)n);
    if (mgw_milter_encode(m, c->out.p + c->out.len, c->out.cap - c->out.len) != n)
        abort();
    c->out.len += (size_t)n;
}

static void put_simple(struct conn *c, uint8_t cmd)
{
    struct mgw_milter_msg m = {.cmd = cmd};
    put(c, &m);
}

/* Whether the milter's macro list for `stage` (if it sent one) names `name`. */
static bool macro_wanted(const struct conn *c, int stage, const char *name)
{
    const char *l = c->symlist[stage];
    size_t n = strlen(name);
    if (l == NULL)
        return true;
    for (const char *p = l; *p != '\0';) {
        size_t w = strcspn(p, " ");
        if (w == n && memcmp(p, name, n) == 0)
            return true;
        p += w;
        p += strspn(p, " ");
    }
    return false;
}

/* D packet for stage letter `sc` with name/value pairs nv[0..2n); a list the milter sent
 * replaces ours, as in Postfix (names it asks for that we lack are left out). */
static void put_macros(struct conn *c, uint8_t sc, const char *const *nv, size_t n)
{
    char pairs[1024];
    size_t len = 0;
    int stage = mgw_milter_stage_of_cmd(sc);
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(nv[2 * i]) + 1, b = strlen(nv[2 * i + 1]) + 1;
        if (!macro_wanted(c, stage, nv[2 * i]) || len + a + b > sizeof pairs)
            continue;
        memcpy(pairs + len, nv[2 * i], a);
        memcpy(pairs + len + a, nv[2 * i + 1], b);
        len += a + b;
    }
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_MACRO};
    m.u.macro.stage_cmd = sc;
    m.u.macro.pairs = mgw_milter_list_make(pairs, len);
    put(c, &m);
}

/* ---- errors and teardown ---- */

/* The connection leaves the setup phase (ready, refused, or failed). */
static void end_setup(struct conn *c)
{
    if (c->setting_up) {
        c->setting_up = false;
        pending--;
    }
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from epoll */
        c->fd = -1;
    }
    if (!c->done) {
        c->done = true;
        live--;
    }
    end_setup(c);
    for (int i = 0; i < MGW_STAGE_COUNT; i++) {
        free(c->symlist[i]);
        c->symlist[i] = NULL;
    }
    free(c->in.p);
    free(c->out.p);
    c->in = c->out = (struct buf){0};
}

__attribute__((format(printf, 2, 3))) static void conn_fail(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    if (++st.errors <= MAX_ERR_PRINTS) {
        fprintf(stderr, "mgw_load: conn=%u msg=%lu error: ", c->id, c->msgs);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    conn_close(c);
}

/* Send QUIT and close once the output is flushed. */
static void conn_quit(struct conn *c)
{
    put_simple(c, MGW_SMFIC_QUIT);
    c->closing = true;
}

/* ---- the script ---- */

static bool sends(const struct conn *c, uint8_t cmd)
{
    return (c->protocol & mgw_negotiate_no_bit(cmd)) == 0;
}

/* Put `cmd` if negotiated; returns true if we must now wait for its reply. */
static bool put_event(struct conn *c, const struct mgw_milter_msg *m)
{
    if (!sends(c, m->cmd))
        return false;
    put(c, m);
    /* CONNECT and HELO come once per connection, before the clock: not a message's. */
    if (mgw_milter_cmd_in_message(m->cmd))
        st.events++;
    if (!mgw_negotiate_replies(c->protocol, m->cmd))
        return false;
    c->wait = m->cmd;
    c->deadline = now() + o.timeout_s;
    return true;
}

static void put_connect(struct conn *c)
{
    char name[64];
    snprintf(name, sizeof name, "client%u.example", c->id);
    const char *nv[] = {"j",
                        "mx.example.com",
                        "{daemon_name}",
                        "smtpd",
                        "{daemon_addr}",
                        "127.0.0.1",
                        "v",
                        "Postfix 3.7.11",
                        "_",
                        "client.example [127.0.0.1]"};
    put_macros(c, 'C', nv, 5);
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_CONNECT};
    m.u.connect.hostname = (struct mgw_str){name, strlen(name)};
    m.u.connect.family = '4';
    m.u.connect.port = (uint16_t)(10000 + c->id % 50000);
    m.u.connect.address = (struct mgw_str){"127.0.0.1", 9};
    put_event(c, &m);
}

static void put_helo(struct conn *c)
{
    const char *nv[] = {"{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384"};
    put_macros(c, 'H', nv, 2);
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_HELO};
    m.u.helo = (struct mgw_str){"client.example", 14};
    put_event(c, &m);
}

static void put_header(struct conn *c, char *qid, size_t i)
{
    static const char *const names[] = {"From", "To", "Subject", "Date", "Message-ID"};
    static const char *const values[] = {"Sender <sender@example.org>", "rcpt0@example.net",
                                         "load test message", "Mon, 1 Jan 2024 00:00:00 +0000",
                                         "<load@example.org>"};
    char name[32], value[128];
    const char *sp = (c->protocol & MGW_SMFIP_HDR_LEADSPC) ? " " : "";
    if (i < 5) {
        snprintf(name, sizeof name, "%s", names[i]);
        snprintf(value, sizeof value, "%s%s", sp, values[i]);
    } else {
        snprintf(name, sizeof name, "X-Load-%zu", i);
        snprintf(value, sizeof value, "%squeue id %s, header number %zu", sp, qid, i);
    }
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_HEADER};
    m.u.header.name = (struct mgw_str){name, strlen(name)};
    m.u.header.value = (struct mgw_str){value, strlen(value)};
    put_event(c, &m);
}

/* Put frames from c->step on until one needs a reply (c->wait set) or setup is done. */
static void advance(struct conn *c)
{
    char qid[24], tmp[160];
    struct mgw_milter_msg m;

    snprintf(qid, sizeof qid, "%05X%06lX", c->id, c->msgs);
    const char *nv_i[] = {"i", qid};
    while (c->wait == 0) {
        memset(&m, 0, sizeof m);
        switch (c->step) {
        case S_OPTNEG: /* sent at connect time */ abort();
        case S_CONNECT:
            c->step = S_HELO;
            put_connect(c);
            break;
        case S_HELO:
            c->step = S_READY;
            put_helo(c);
            break;
        case S_READY: /* setup complete: wait for the others */
            end_setup(c);
            ready++;
            return;
        case S_MAIL: {
            c->t_msg = now();
            const char *nv[] = {"i",           qid,           "{mail_addr}",   "sender@example.org",
                                "{mail_host}", "example.org", "{mail_mailer}", "smtp"};
            put_macros(c, 'M', nv, 4);
            int n = snprintf(tmp, sizeof tmp, "<sender@example.org>%cSIZE=%zu%cBODY=8BITMIME", 0,
                             o.body_bytes, 0);
            m.cmd = MGW_SMFIC_MAIL;
            m.u.args = mgw_milter_list_make(tmp, (size_t)n + 1);
            c->step = S_RCPT;
            c->idx = 0;
            put_event(c, &m);
            break;
        }
        case S_RCPT: {
            if (c->idx == o.rcpts) {
                c->step = S_DATA;
                break;
            }
            char addr[48], host[] = "example.net";
            snprintf(addr, sizeof addr, "rcpt%zu@example.net", c->idx);
            const char *nv[] = {"i",           qid,  "{rcpt_addr}",   addr,
                                "{rcpt_host}", host, "{rcpt_mailer}", "smtp"};
            put_macros(c, 'R', nv, 4);
            int n = snprintf(tmp, sizeof tmp, "<%s>", addr);
            m.cmd = MGW_SMFIC_RCPT;
            m.u.args = mgw_milter_list_make(tmp, (size_t)n + 1);
            c->idx++;
            put_event(c, &m);
            break;
        }
        case S_DATA:
            put_macros(c, 'T', nv_i, 1);
            m.cmd = MGW_SMFIC_DATA;
            c->step = S_HEADER;
            c->idx = 0;
            put_event(c, &m);
            break;
        case S_HEADER:
            if (c->idx == o.headers) {
                c->step = S_EOH;
                break;
            }
            put_header(c, qid, c->idx++);
            break;
        case S_EOH:
            put_macros(c, 'N', nv_i, 1);
            m.cmd = MGW_SMFIC_EOH;
            c->step = S_BODY;
            c->idx = 0;
            put_event(c, &m);
            break;
        case S_BODY: {
            size_t n = o.body_bytes - c->idx;
            if (n == 0 || !sends(c, MGW_SMFIC_BODY)) {
                c->step = S_EOB;
                break;
            }
            if (n > MGW_MILTER_CHUNK_MAX)
                n = MGW_MILTER_CHUNK_MAX;
            m.cmd = MGW_SMFIC_BODY;
            m.u.body.data = body + c->idx;
            m.u.body.len = n;
            c->idx += n;
            put_event(c, &m);
            break;
        }
        case S_EOB:
            put_macros(c, 'E', nv_i, 1);
            m.cmd = MGW_SMFIC_BODYEOB; /* Postfix: body in B frames, then an empty EOB */
            put(c, &m);
            st.events++;
            c->wait = MGW_SMFIC_BODYEOB; /* always answered */
            c->deadline = now() + o.timeout_s;
            return;
        }
    }
}

static bool more_messages(const struct conn *c)
{
    return !stopping && (!o.messages_given || c->msgs < o.messages);
}

/* The message ended with a final verdict: record it, ABORT, go on or quit. */
static void finish_message(struct conn *c, bool accepted)
{
    double t = now();
    double us = (t - c->t_msg) * 1e6;
    if (st.nlat == st.caplat) {
        st.caplat = st.caplat ? 2 * st.caplat : 65536;
        st.lat_us = mgw_xrealloc(st.lat_us, st.caplat * sizeof *st.lat_us);
    }
    st.lat_us[st.nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    st.messages++;
    if (accepted)
        st.accepted++;
    else
        st.other++;
    t_end = t;
    c->msgs++;
    c->wait = 0;
    put_simple(c, MGW_SMFIC_ABORT);
    if (more_messages(c)) {
        c->step = S_MAIL;
        advance(c);
    } else {
        conn_quit(c);
    }
}

/* Whether `r` is a modification the negotiated actions allow. */
static bool action_allows(uint32_t actions, uint8_t r)
{
    return (actions & mgw_milter_mod_action(r)) != 0;
}

/* Check and take the O reply. Returns false (after conn_fail) if it is not acceptable. */
static bool take_optneg(struct conn *c, const struct mgw_milter_optneg *n)
{
    if (n->version < MGW_MILTER_MIN_VERSION || n->version > MGW_MILTER_VERSION) {
        conn_fail(c, "OPTNEG reply version %" PRIu32 " not in [2, 6]", n->version);
        return false;
    }
    if ((n->actions & ~OFFER_ACTIONS) != 0) {
        conn_fail(c, "OPTNEG reply actions 0x%" PRIx32 " exceed offered 0x%x", n->actions,
                  OFFER_ACTIONS);
        return false;
    }
    /* The MDS bits are internal: the MTA decides them (libmilter ignores changes). */
    uint32_t proto = n->protocol & ~(MGW_SMFIP_MDS_256K | MGW_SMFIP_MDS_1M);
    if ((proto & ~OFFER_PROTOCOL) != 0) {
        conn_fail(c, "OPTNEG reply protocol 0x%" PRIx32 " exceeds offered 0x%x", n->protocol,
                  OFFER_PROTOCOL);
        return false;
    }
    c->actions = n->actions;
    c->protocol = proto;
    for (int i = 0; i < MGW_STAGE_COUNT; i++) {
        if (n->symlist[i].ptr != NULL)
            c->symlist[i] = mgw_xmemdup(n->symlist[i].ptr, n->symlist[i].len);
    }
    if (!st.have_neg) {
        st.have_neg = true;
        st.protocol = c->protocol;
        st.actions = c->actions;
    }
    return true;
}

/* One reply frame. Returns false if the connection was closed. */
static bool on_reply(struct conn *c, const struct mgw_milter_msg *r)
{
    uint8_t w = c->wait;
    if (w == 0) {
        conn_fail(c, "reply %s while no reply is due",
                  mgw_milter_cmd_name(r->cmd, MGW_MILTER_FROM_MILTER));
        return false;
    }
    if (r->cmd == MGW_SMFIR_PROGRESS) { /* keepalive: the deadline starts over */
        c->deadline = now() + o.timeout_s;
        return true;
    }
    if (w == MGW_SMFIC_OPTNEG) {
        if (r->cmd != MGW_SMFIR_OPTNEG) {
            conn_fail(c, "reply %s to OPTNEG", mgw_milter_cmd_name(r->cmd, MGW_MILTER_FROM_MILTER));
            return false;
        }
        if (!take_optneg(c, &r->u.optneg))
            return false;
        c->wait = 0;
        c->step = S_CONNECT;
        advance(c);
        return true;
    }
    if (w == MGW_SMFIC_BODYEOB && action_allows(c->actions, r->cmd)) {
        st.modifications++;
        return true;
    }
    switch (r->cmd) {
    case MGW_SMFIR_CONTINUE:
        if (w == MGW_SMFIC_BODYEOB) {
            finish_message(c, true);
            return c->fd >= 0;
        }
        c->wait = 0;
        advance(c);
        return true;
    case MGW_SMFIR_SKIP:
        if (w != MGW_SMFIC_BODY || !(c->protocol & MGW_SMFIP_SKIP))
            break;
        c->wait = 0;
        c->step = S_EOB;
        advance(c);
        return true;
    case MGW_SMFIR_ACCEPT:
    case MGW_SMFIR_REJECT:
    case MGW_SMFIR_TEMPFAIL:
    case MGW_SMFIR_DISCARD:
    case MGW_SMFIR_REPLYCODE:
        if (w == MGW_SMFIC_CONNECT || w == MGW_SMFIC_HELO) {
            if (r->cmd == MGW_SMFIR_DISCARD)
                break; /* message stages only */
            /* The session's fate is decided: nothing to measure on this connection. */
            st.conn_verdicts++;
            c->wait = 0;
            end_setup(c);
            conn_quit(c);
            return true;
        }
        finish_message(c, w == MGW_SMFIC_BODYEOB && r->cmd == MGW_SMFIR_ACCEPT);
        return c->fd >= 0;
    default: break;
    }
    conn_fail(c, "reply %s to %s not allowed (actions 0x%" PRIx32 ")",
              mgw_milter_cmd_name(r->cmd, MGW_MILTER_FROM_MILTER),
              mgw_milter_cmd_name(w, MGW_MILTER_FROM_MTA), c->actions);
    return false;
}

/* ---- I/O ---- */

static void set_out_interest(struct conn *c, bool want)
{
    if (c->want_out == want)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        perror("mgw_load: epoll_ctl");
        exit(3);
    }
    c->want_out = want;
}

static void flush(struct conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                set_out_interest(c, true);
                return;
            }
            conn_fail(c, "send: %s", strerror(errno));
            return;
        }
        c->out.off += (size_t)n;
    }
    c->out.off = c->out.len = 0;
    set_out_interest(c, false);
    if (c->closing) /* QUIT is out: nothing more to say or hear */
        conn_close(c);
}

static void on_readable(struct conn *c)
{
    const struct mgw_milter_decoder dec = {.dir = MGW_MILTER_FROM_MILTER};
    for (;;) {
        buf_reserve(&c->in, 16384);
        size_t room = c->in.cap - c->in.len;
        ssize_t n = recv(c->fd, c->in.p + c->in.len, room, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            conn_fail(c, "recv: %s", strerror(errno));
            return;
        }
        if (n == 0) {
            if (c->closing)
                conn_close(c);
            else
                conn_fail(c, "milter closed the connection (waiting for %s)",
                          c->wait ? mgw_milter_cmd_name(c->wait, MGW_MILTER_FROM_MTA) : "-");
            return;
        }
        c->in.len += (size_t)n;
        while (c->in.off < c->in.len) {
            struct mgw_milter_msg r;
            ssize_t used = mgw_milter_decode(&dec, c->in.p + c->in.off, c->in.len - c->in.off, &r);
            if (used == MGW_PARTIAL)
                break;
            if (used < 0) {
                conn_fail(c, "undecodable reply: %s", mgw_strerror((int)used));
                return;
            }
            if (!on_reply(c, &r))
                return;
            /* on_reply() does not touch c->in, so r's views were valid until here. */
            c->in.off += (size_t)used;
        }
        if ((size_t)n < room) /* short read: the socket is drained */
            break;
    }
    if (c->fd >= 0)
        flush(c);
}

static void conn_start(struct conn *c)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    int fd;

    memset(&sa, 0, sizeof sa);
    if (o.target.kind == MGW_LISTEN_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&sa;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof un->sun_path, "%s", o.target.path);
        salen = sizeof *un;
    } else if (o.target.kind == MGW_LISTEN_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(o.target.port);
        inet_pton(AF_INET6, host_ip, &in6->sin6_addr);
        salen = sizeof *in6;
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        in->sin_family = AF_INET;
        in->sin_port = htons(o.target.port);
        inet_pton(AF_INET, host_ip, &in->sin_addr);
        salen = sizeof *in;
    }
    live++;
    pending++;
    c->setting_up = true;
    c->fd = -1;
    fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_fail(c, "socket: %s", strerror(errno));
        return;
    }
    c->fd = fd;
    if (sa.ss_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    if (connect(fd, (struct sockaddr *)&sa, salen) < 0 && errno != EINPROGRESS) {
        conn_fail(c, "connect: %s", strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("mgw_load: epoll_ctl");
        exit(3);
    }
    c->want_out = true;
    c->connecting = true;
    c->step = S_OPTNEG;
    struct mgw_milter_msg m = {.cmd = MGW_SMFIC_OPTNEG};
    m.u.optneg.version = MGW_MILTER_VERSION;
    m.u.optneg.actions = OFFER_ACTIONS;
    m.u.optneg.protocol = OFFER_PROTOCOL;
    put(c, &m);
    c->wait = MGW_SMFIC_OPTNEG;
    c->deadline = now() + o.timeout_s;
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            conn_fail(c, "connect: %s", strerror(err));
            return;
        }
        c->connecting = false;
    }
    if (c->connecting)
        return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
    if (c->fd >= 0 && (events & EPOLLOUT))
        flush(c);
}

/* ---- driver ---- */

static void begin_messages(void)
{
    started = true;
    t_start = t_end = now();
    for (unsigned i = 0; i < o.conns; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0 || c->step != S_READY || c->wait != 0 || c->closing)
            continue;
        if (o.messages_given && o.messages == 0) /* idle mode: hold until the deadline */
            continue;
        if (!more_messages(c)) {
            conn_quit(c);
            flush(c);
            continue;
        }
        c->step = S_MAIL;
        advance(c);
        flush(c);
    }
}

static void stop_idle(void)
{
    for (unsigned i = 0; i < o.conns; i++) {
        struct conn *c = &conns[i];
        if (c->fd >= 0 && c->wait == 0 && !c->closing) {
            conn_quit(c);
            flush(c);
        }
    }
}

static void check_deadlines(double t)
{
    for (unsigned i = 0; i < launched; i++) {
        struct conn *c = &conns[i];
        if (c->fd >= 0 && c->wait != 0 && t > c->deadline)
            conn_fail(c, "no reply to %s within %us",
                      mgw_milter_cmd_name(c->wait, MGW_MILTER_FROM_MTA), o.timeout_s);
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(double p)
{
    if (st.nlat == 0)
        return 0;
    size_t i = (size_t)(p * (double)(st.nlat - 1) + 0.5);
    return st.lat_us[i] / 1000.0;
}

static void usage(FILE *f)
{
    fputs("usage: mgw_load --connect SPEC [options]\n"
          "  -c, --connect SPEC     milter socket: inet:HOST:PORT, inet:PORT@HOST,\n"
          "                         inet6:[ADDR]:PORT, unix:PATH\n"
          "  -n, --connections N    concurrent connections (default 1)\n"
          "  -m, --messages M       messages per connection (default: unbounded if\n"
          "                         --duration is given, else 1000); 0 = only set up the\n"
          "                         connections and hold them idle (prints \"ready\")\n"
          "  -b, --body-bytes B     body size (default 4096; chunks of <= 65535)\n"
          "  -r, --rcpts R          recipients per message (default 2)\n"
          "  -H, --headers H        headers per message (default 8)\n"
          "  -d, --duration S       stop starting messages after S seconds (default: none)\n"
          "  -t, --timeout S        per-reply timeout in seconds (default 30)\n"
          "Prints one key=value line (events= counts the MAIL, RCPT, DATA, header, EOH,\n"
          "body and EOB commands sent); exit status 1 on protocol errors.\n",
          f);
}

static double parse_num(const char *opt, const char *s, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0) || v > max) {
        fprintf(stderr, "mgw_load: %s: \"%s\" is not a number in [0, %g]\n", opt, s, max);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, 'c'},  {"connections", required_argument, NULL, 'n'},
        {"messages", required_argument, NULL, 'm'}, {"body-bytes", required_argument, NULL, 'b'},
        {"rcpts", required_argument, NULL, 'r'},    {"headers", required_argument, NULL, 'H'},
        {"duration", required_argument, NULL, 'd'}, {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *target = NULL;
    char err[256];
    int ch;

    o = (struct opts){.conns = 1,
                      .messages = 1000,
                      .body_bytes = 4096,
                      .rcpts = 2,
                      .headers = 8,
                      .timeout_s = 30};
    while ((ch = getopt_long(argc, argv, "c:n:m:b:r:H:d:t:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': target = optarg; break;
        case 'n': o.conns = (unsigned)parse_num("--connections", optarg, 1000000); break;
        case 'm':
            o.messages = (unsigned long)parse_num("--messages", optarg, 1e12);
            o.messages_given = true;
            break;
        case 'b': o.body_bytes = (size_t)parse_num("--body-bytes", optarg, 1 << 30); break;
        case 'r': o.rcpts = (unsigned)parse_num("--rcpts", optarg, 1000); break;
        case 'H': o.headers = (unsigned)parse_num("--headers", optarg, 10000); break;
        case 'd': o.duration = parse_num("--duration", optarg, 86400 * 365); break;
        case 't': o.timeout_s = (unsigned)parse_num("--timeout", optarg, 86400); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc || target == NULL || o.conns == 0 || o.timeout_s == 0) {
        usage(stderr);
        exit(2);
    }
    if (mgw_listen_spec_parse(target, &o.target, err, sizeof err) < 0) {
        fprintf(stderr, "mgw_load: --connect: %s\n", err);
        exit(2);
    }
    if (!o.messages_given && o.duration > 0)
        o.messages = 0; /* unbounded; more_messages() checks messages_given */
    else
        o.messages_given = true;
}

/* Resolve the target host once (numeric addresses stay as they are). */
static void resolve_target(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    const char *h = o.target.host[0] ? o.target.host : "127.0.0.1";
    if (o.target.kind == MGW_LISTEN_UNIX)
        return;
    hints.ai_family = o.target.kind == MGW_LISTEN_INET6 ? AF_INET6 : AF_INET;
    int r = getaddrinfo(h, NULL, &hints, &res);
    if (r != 0) {
        fprintf(stderr, "mgw_load: cannot resolve \"%s\": %s\n", h, gai_strerror(r));
        exit(2);
    }
    if (res->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, host_ip,
                  sizeof host_ip);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, host_ip,
                  sizeof host_ip);
    freeaddrinfo(res);
}

/* A readable body: 76-character lines ending in CRLF. */
static void make_body(void)
{
    static const char text[] = "The quick brown fox jumps over the lazy dog. 0123456789 "
                               "abcdefghijklmnopqrstuvwxyz";
    body = mgw_xmalloc(o.body_bytes + 1);
    for (size_t i = 0; i < o.body_bytes; i++) {
        size_t col = i % 78;
        body[i] = col == 76 ? '\r' : col == 77 ? '\n' : (uint8_t)text[(i / 78 + col) % 76];
    }
}

int main(int argc, char **argv)
{
    struct epoll_event evs[256];
    bool idle_announced = false;

    parse_args(argc, argv);
    resolve_target();
    make_body();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("mgw_load: epoll_create1");
        return 3;
    }
    conns = mgw_xcalloc(o.conns, sizeof *conns);
    for (unsigned i = 0; i < o.conns; i++) {
        conns[i].id = i;
        conns[i].fd = -1;
    }

    double t_setup = now();
    for (;;) {
        while (!stopping && launched < o.conns && pending < MAX_PENDING)
            conn_start(&conns[launched++]);
        if (!started && launched == o.conns && pending == 0) {
            fprintf(stderr, "mgw_load: %u of %u connections set up in %.2fs\n", ready, o.conns,
                    now() - t_setup);
            begin_messages();
        }
        if (got_signal || (started && o.duration > 0 && now() - t_start >= o.duration))
            stopping = true;
        if (stopping) /* connections that finished setup or a message since last time */
            stop_idle();
        if (started && o.messages_given && o.messages == 0 && !idle_announced) {
            printf("ready connections=%u\n", ready);
            fflush(stdout);
            idle_announced = true;
        }
        if (live == 0 && (launched == o.conns || stopping))
            break;
        int n = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]), 100);
        if (n < 0 && errno != EINTR) {
            perror("mgw_load: epoll_wait");
            return 3;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd >= 0) /* closed earlier in this batch */
                on_event(c, evs[i].events);
        }
        check_deadlines(now());
    }

    if (o.messages_given && o.messages == 0) { /* idle mode reports the setup only */
        printf("idle connections=%u ready=%u errors=%lu\n", o.conns, ready, st.errors);
        return st.errors ? 1 : 0;
    }
    if (st.nlat > 0)
        qsort(st.lat_us, st.nlat, sizeof *st.lat_us, cmp_u32);
    double secs = started ? t_end - t_start : 0;
    printf("messages=%lu seconds=%.3f msgs_per_sec=%.1f p50_ms=%.3f p99_ms=%.3f "
           "accepted=%lu other_verdicts=%lu conn_verdicts=%lu modifications=%lu errors=%lu "
           "connections=%u protocol=0x%06" PRIx32 " actions=0x%03" PRIx32 " events=%lu "
           "rcpts=%u headers=%u body_bytes=%zu\n",
           st.messages, secs, secs > 0 ? (double)st.messages / secs : 0.0, pct_ms(0.50),
           pct_ms(0.99), st.accepted, st.other, st.conn_verdicts, st.modifications, st.errors,
           o.conns, st.protocol, st.actions, st.events, o.rcpts, o.headers, o.body_bytes);
    free(st.lat_us);
    free(body);
    free(conns);
    close(epfd);
    return st.errors ? 1 : 0;
}
