/*
 * session.c - the MTA side: one milter protocol state machine per connection.
 *
 * Bytes are read into an input buffer (session_on_readable()); session_drain() takes whole
 * frames out of it through the codec, at most DRAIN_BATCH per wakeup so one busy MTA
 * connection cannot starve the others (libuv, memcached). Each command is checked against
 * the state machine, macros are stored, and events go to the backend. While an event that
 * the MTA expects an answer to is at the backend, no further frame is handled (the MTA
 * may not send one before that answer); reading goes on up to one maximal frame and some
 * slack, which bounds memory against an MTA that does.
 *
 * Everything answering one event - modifications and final reply - is encoded into one
 * buffer and sent with one send(2) (session_write()): libmilter's separate small writes
 * cost ~40 ms per modified message through Nagle.
 *
 * It does not: accept connections (listener.c), talk gRPC (the backend), or decide
 * verdicts (the backend and its merge policy). It only keeps what it sends legal for the
 * negotiated protocol (see sanitize_verdict()).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/session.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mgw/error.h"
#include "mgw/log.h"
#include "mgw/metrics.h"
#include "mgw/milter_vocab.h"
#include "mgw/negotiate.h"
#include "mgw/xmalloc.h"

#define DRAIN_BATCH 64
/* Room for one whole maximal frame plus slack, so reading never stalls mid-frame. */
#define READ_SLACK 65536
/* One read(2) takes at most this much (see read_more()). */
#define READ_MAX 65536
/* How long a closing session may take to flush its last answer to the MTA. */
#define LINGER_MS 5000
/* An answer scratch buffer bigger than this (a replaced body) is freed once sent, so a
 * session does not keep the largest answer it ever sent for the rest of its life. */
#define WBUF_KEEP 65536
/* The first protocol version with INSHEADER and PROGRESS: Sendmail 8.12 speaks 2 and
 * knows neither. */
#define VERSION_INS_PROGRESS 3

struct stage_macros {
    char *data; /* owned copy of the D packet's name/value pairs */
    struct mgw_strlist list;
};

struct mgw_session {
    struct mgw_server *srv;
    struct mgw_backend *backend; /* the one current at adopt: reload does not swap it */
    uint64_t sid;
    char peer[64];
    struct bufferevent *bev; /* its output only: reading is read_more()'s */
    struct event *read_ev;   /* the socket readable, or the idle timeout */
    int reading;             /* read_ev is pending */
    struct event *resume_ev; /* re-enters session_drain() after a batch or async answer */
    struct mgw_milter_decoder dec;
    enum mgw_session_state state;

    struct mgw_backend_needs needs;  /* as asked of the backend at negotiation */
    struct mgw_milter_optneg offered;
    struct mgw_milter_optneg negotiated;
    void *bsession; /* backend's per-connection state, open between CONNECT and close */

    struct stage_macros macros[MGW_STAGE_COUNT];
    struct mgw_macros macro_views;

    unsigned idle_ms;     /* idle timeout between messages, from the config at adopt */
    uint8_t awaiting;     /* command whose answer is at the backend, or 0 */
    int flow_stopped;     /* the backend asked us to read nothing more for now */
    short held_event;     /* EOF or error read while an answer was awaited: acted on once
                           * the answer is out and the frames before it are handled */
    int held_errno;       /* the socket error that came with it */
    int in_drain;         /* session_drain() is on the stack */
    int guard;            /* frame guard: a callback of ours is on the stack */
    int dead;             /* closed while a callback was on the stack: free on unwind */
    uint64_t messages;    /* completed messages on this connection */
    const char *close_reason; /* static string, for the metrics at free */

    uint8_t *wbuf; /* scratch for encoding one answer; reused */
    size_t wcap;

    TAILQ_ENTRY(mgw_session) link;
};

struct mgw_server {
    struct event_base *base;
    struct mgw_server_config cfg;
    struct mgw_backend *backend;
    TAILQ_HEAD(, mgw_session) sessions;
    unsigned nsessions;
    unsigned worker; /* which worker loop runs it, for logs */
    void (*empty_cb)(void *);
    void *empty_arg;
    int draining;
    uint8_t *rbuf; /* READ_MAX bytes: where each session's read(2) lands first */
};

/* Every server of the process (one per worker loop, workers.h) draws session ids from one
 * counter, so ids stay unique and ordered across loops, and max_connections counts the
 * sessions of the whole process. Both are touched with atomics only. */
static uint64_t next_sid;
static unsigned process_sessions;
static pthread_once_t sid_once = PTHREAD_ONCE_INIT;

static void sid_seed(void)
{
    uint64_t seed = 0;

    /* Random high bits keep ids unique across restarts when logs are merged; the
     * counter keeps them ordered within one process. Never 0 (0 means "no session"). */
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = (uint64_t)time(NULL) * 2654435761u;
    next_sid = (seed & 0xffffff0000000000ull) | 1;
}

static void session_drain(struct mgw_session *s);
static void session_release_event(struct mgw_session *s);
static void session_read_on(struct mgw_session *s);
static void read_update(struct mgw_session *s);
static void read_arm(struct mgw_session *s);
static void session_on_event(struct bufferevent *bev, short what, void *arg);
static void session_free(struct mgw_session *s);

static const char *const state_names[] = {
    "negotiate", "connect", "idle", "mail", "rcpt", "data",
    "headers", "eoh", "body", "eom", "closing",
};

const char *mgw_session_state_name(enum mgw_session_state st)
{
    if ((unsigned)st < sizeof state_names / sizeof state_names[0])
        return state_names[st];
    return "?";
}

static int state_in_message(enum mgw_session_state st)
{
    return st >= MGW_SESSION_MAIL && st <= MGW_SESSION_EOM;
}

/* The idle timeout runs only between messages. Inside one the MTA is silent for as long
 * as its SMTP client takes: Postfix sends DATA, then nothing until the whole message has
 * arrived, and it bounds a slow client itself (smtpd_timeout per read). Timing out there
 * would tempfail slow senders forever, or let them bypass the filters under
 * milter_default_action=accept. A dead MTA host is found by TCP keepalive. */
static void idle_timer_arm(struct mgw_session *s)
{
    if (s->idle_ms != 0 && s->reading)
        read_arm(s);
}

static void session_enter_state(struct mgw_session *s, enum mgw_session_state to)
{
    int was_in_message = state_in_message(s->state);

    if (s->state == to)
        return;
    log_debug(s->sid, "state", "from=%s to=%s", mgw_session_state_name(s->state),
              mgw_session_state_name(to));
    s->state = to;
    /* CLOSING sets its own (linger) timeout. */
    if (to != MGW_SESSION_CLOSING && was_in_message != state_in_message(to))
        idle_timer_arm(s);
}

/* ---- closing ---- */

/* End the session. Safe from inside any callback: if session_drain() is on the stack,
 * the free happens when it unwinds (OpenSMTPD's frame guard). Answers already queued
 * still go out first: they answer commands that were fine (a bad frame may follow good
 * ones in one read), and the linger timeout bounds the wait. */
static void session_close(struct mgw_session *s, enum mgw_log_level level, const char *reason,
                          const char *detail)
{
    struct evbuffer *out;

    if (s->state == MGW_SESSION_CLOSING)
        return;
    if (detail != NULL) {
        char q[300];

        mgw_log(level, s->sid, "session closed", "reason=%s state=%s messages=%" PRIu64 " detail=%s",
                reason, mgw_session_state_name(s->state), s->messages,
                mgw_log_quote(q, sizeof q, detail, strlen(detail)));
    } else {
        mgw_log(level, s->sid, "session closed", "reason=%s state=%s messages=%" PRIu64, reason,
                mgw_session_state_name(s->state), s->messages);
    }
    session_enter_state(s, MGW_SESSION_CLOSING);
    s->close_reason = reason;
    if (s->bsession != NULL) {
        s->backend->ops->session_close(s->bsession);
        s->bsession = NULL;
    }
    s->awaiting = 0;
    read_update(s);
    out = bufferevent_get_output(s->bev);
    if (evbuffer_get_length(out) > 0) {
        /* session_on_write() frees once the output is drained; the timeout bounds it. */
        struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};

        bufferevent_set_timeouts(s->bev, NULL, &tv);
        bufferevent_enable(s->bev, EV_WRITE);
        return;
    }
    if (s->in_drain || s->guard)
        s->dead = 1;
    else
        session_free(s);
}

static void session_fail(struct mgw_session *s, int code, const char *detail)
{
    session_close(s, MGW_LOG_WARN, mgw_strerror(code), detail);
}

/* ---- macros ---- */

static void macros_clear(struct mgw_session *s, int from_stage, int to_stage)
{
    for (int i = from_stage; i <= to_stage; i++) {
        free(s->macros[i].data);
        memset(&s->macros[i], 0, sizeof s->macros[i]);
        memset(&s->macro_views.stage[i], 0, sizeof s->macro_views.stage[i]);
    }
}

static void macros_store(struct mgw_session *s, int stage, const struct mgw_strlist *pairs)
{
    struct stage_macros *m = &s->macros[stage];

    free(m->data);
    m->data = pairs->len ? mgw_xmemdup(pairs->data, pairs->len) : NULL;
    m->list.data = m->data;
    m->list.len = pairs->len;
    m->list.count = pairs->count;
    s->macro_views.stage[stage] = m->list;
}

static enum mgw_session_state message_state(uint8_t cmd, int *repeatable);

/* A message ended (EOM answered, ABORT, or a new transaction began without ABORT).
 * `next_cmd` is the command that begins the next message when it is already here (0
 * if none): the macros of its stage and earlier ones arrived just before it and belong
 * to the new message. */
static void message_reset(struct mgw_session *s, uint8_t next_cmd)
{
    static const uint8_t stage_cmd[] = {
        [MGW_STAGE_ENVFROM] = MGW_SMFIC_MAIL, [MGW_STAGE_ENVRCPT] = MGW_SMFIC_RCPT,
        [MGW_STAGE_DATA] = MGW_SMFIC_DATA,    [MGW_STAGE_EOM] = MGW_SMFIC_BODYEOB,
        [MGW_STAGE_EOH] = MGW_SMFIC_EOH,
    };
    int rep;
    enum mgw_session_state next = next_cmd ? message_state(next_cmd, &rep) : MGW_SESSION_IDLE;

    for (int st = MGW_STAGE_ENVFROM; st <= MGW_STAGE_EOH; st++)
        if (next_cmd == 0 || message_state(stage_cmd[st], &rep) > next)
            macros_clear(s, st, st);
    session_enter_state(s, MGW_SESSION_IDLE);
}

/* ---- writing answers ---- */

static uint8_t *wbuf_reserve(struct mgw_session *s, size_t n)
{
    if (n > s->wcap) {
        s->wcap = n < 256 ? 256 : n;
        s->wbuf = mgw_xrealloc(s->wbuf, s->wcap);
    }
    return s->wbuf;
}

/* Straight to the socket when nothing is queued before it, which is the usual case:
 * through the bufferevent every answer cost libevent's write-interest round, two
 * epoll_ctl calls and a loop turn (measured: ten calls per default message). What the
 * socket does not take now, or refuses with an error, goes the bufferevent's way, which
 * writes it when it can or reports the error as it always did. */
static void session_write(struct mgw_session *s, const uint8_t *buf, size_t len)
{
    ssize_t w = 0;

    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
        w = send(bufferevent_getfd(s->bev), buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0)
            w = 0;
    }
    if ((size_t)w < len && bufferevent_write(s->bev, buf + w, len - (size_t)w) != 0)
        session_fail(s, MGW_EIO, "cannot queue reply");
}

/* Encode msgs[0..n) into one buffer and send it with one write. */
static void session_send(struct mgw_session *s, const struct mgw_milter_msg *msgs, size_t n)
{
    size_t total = 0, off = 0;
    uint8_t *buf;

    for (size_t i = 0; i < n; i++) {
        ssize_t l = mgw_milter_encoded_len(&msgs[i]);

        if (l < 0)
            mgw_panic("session: cannot encode reply '%c'", msgs[i].cmd);
        total += (size_t)l;
    }
    buf = wbuf_reserve(s, total);
    for (size_t i = 0; i < n; i++) {
        ssize_t l = mgw_milter_encode(&msgs[i], buf + off, total - off);

        if (l < 0)
            mgw_panic("session: encoder disagrees with encoded_len for '%c'", msgs[i].cmd);
        off += (size_t)l;
    }
    session_write(s, buf, total);
    mgw_metrics_add(MGW_METRIC_BYTES_OUT, total);
    if (s->wcap > WBUF_KEEP) {
        free(s->wbuf);
        s->wbuf = NULL;
        s->wcap = 0;
    }
}

static void send_simple(struct mgw_session *s, uint8_t cmd)
{
    struct mgw_milter_msg m = {.cmd = cmd};

    session_send(s, &m, 1);
}


/* Whether `reply` is a usable SMTP reply for verdict `kind`: three digits whose class
 * matches (4xx for tempfail, 5xx for reject), then a space, a dash or the end. The MTA
 * ignores a mismatched code or turns the reply into a protocol error. */
static int reply_fits(enum mgw_verdict_kind kind, const char *reply)
{
    char want = mgw_verdict_reply_class(kind);

    if (want == 0 || reply[0] != want)
        return 0;
    if (reply[1] < '0' || reply[1] > '9' || reply[2] < '0' || reply[2] > '9')
        return 0;
    return reply[3] == ' ' || reply[3] == '-' || reply[3] == '\0';
}

/* Keep what we send legal for the negotiated protocol and the stage: an illegal reply
 * would make the MTA apply its default action to every message on this connection. */
static enum mgw_verdict_kind sanitize_kind(struct mgw_session *s, uint8_t cmd,
                                           enum mgw_verdict_kind kind)
{
    if (kind == MGW_VERDICT_SKIP &&
        (cmd != MGW_SMFIC_BODY || !(s->negotiated.protocol & MGW_SMFIP_SKIP))) {
        log_debug(s->sid, "skip not allowed here, sending continue", "event=%s",
                  mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA));
        return MGW_VERDICT_CONTINUE;
    }
    if (kind == MGW_VERDICT_DISCARD && s->state < MGW_SESSION_MAIL) {
        /* Postfix and Sendmail refuse DISCARD before MAIL; fail closed, not open. */
        log_warn(s->sid, "discard not allowed before MAIL, sending tempfail", "event=%s",
                 mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA));
        return MGW_VERDICT_TEMPFAIL;
    }
    return kind;
}

/* Messages by final verdict: every end of message, and the verdicts that end a message
 * before it. At RCPT a reject or tempfail refuses one recipient only, but an accept or a
 * discard acts on the whole message. */
static void count_message(uint8_t cmd, enum mgw_verdict_kind kind,
                          const struct mgw_milter_msg *mods, size_t nmods)
{
    bool quarantined = false;

    if (cmd != MGW_SMFIC_BODYEOB) {
        if (kind == MGW_VERDICT_CONTINUE || kind == MGW_VERDICT_SKIP)
            return;
        if (!mgw_milter_cmd_in_message(cmd))
            return;
        if (cmd == MGW_SMFIC_RCPT && kind != MGW_VERDICT_ACCEPT && kind != MGW_VERDICT_DISCARD)
            return;
    }
    for (size_t i = 0; i < nmods; i++)
        quarantined |= mods[i].cmd == MGW_SMFIR_QUARANTINE;
    mgw_metrics_message(kind, quarantined);
}

/* The largest frame the MTA reads: its data size, raised only by a negotiated MDS bit.
 * Sendmail treats a bigger frame as a failed milter; body chunks never exceed 65535. */
static size_t mta_max_data(const struct mgw_session *s)
{
    if (s->negotiated.protocol & MGW_SMFIP_MDS_1M)
        return MGW_MILTER_MDS_1M;
    if (s->negotiated.protocol & MGW_SMFIP_MDS_256K)
        return MGW_MILTER_MDS_256K;
    return 65535;
}

/* Why modification `m` may not go to the MTA in answer to `cmd`, or NULL if it may: the
 * last line of defence behind the backend's own policing, so that nothing we send makes
 * the MTA drop the connection and apply its default action to the whole message. */
static const char *mod_illegal(const struct mgw_session *s, uint8_t cmd,
                               const struct mgw_milter_msg *m)
{
    uint32_t need = mgw_milter_mod_action(m->cmd);

    if (cmd != MGW_SMFIC_BODYEOB)
        return "not_end_of_message";
    if (need == 0 || !(s->negotiated.actions & need))
        return "action_not_negotiated";
    if (m->cmd == MGW_SMFIR_INSHEADER && s->negotiated.version < VERSION_INS_PROGRESS)
        return "mta_version";
    /* The data after the length and the command byte, as Sendmail measures it. */
    if ((size_t)mgw_milter_encoded_len(m) - MGW_MILTER_HDR_LEN - 1 > mta_max_data(s))
        return "too_large";
    return NULL;
}

/* After a callback of ours that may have ended the session: free it if it died and
 * nothing else of ours is on the stack. Returns 1 if the session is gone or closing. */
static int session_unguard(struct mgw_session *s)
{
    s->guard--;
    if (s->state != MGW_SESSION_CLOSING)
        return 0;
    if (s->dead && !s->in_drain && !s->guard)
        session_free(s);
    return 1;
}

static void session_on_done(void *arg, const struct mgw_verdict *v)
{
    struct mgw_session *s = arg;
    uint8_t cmd = s->awaiting;
    enum mgw_verdict_kind kind;
    struct mgw_milter_msg stackbuf[16];
    struct mgw_milter_msg *out = stackbuf;
    size_t n = 0;

    if (cmd == 0)
        mgw_panic("session %016" PRIx64 ": backend answered an event it was not asked",
                  s->sid);
    if ((unsigned)v->kind > MGW_VERDICT_SKIP)
        mgw_panic("session: backend gave verdict %d", (int)v->kind);
    s->awaiting = 0;
    kind = sanitize_kind(s, cmd, v->kind);

    if (v->nmods + 1 > sizeof stackbuf / sizeof stackbuf[0])
        out = mgw_xcalloc(v->nmods + 1, sizeof *out);
    for (size_t i = 0; i < v->nmods; i++) {
        const char *why = mod_illegal(s, cmd, &v->mods[i]);

        if (why != NULL) {
            log_warn(s->sid, "modification dropped", "mod=%s event=%s reason=%s",
                     mgw_milter_cmd_name(v->mods[i].cmd, MGW_MILTER_FROM_MILTER),
                     mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA), why);
            continue;
        }
        out[n++] = v->mods[i];
    }
    if (v->reply != NULL && kind == v->kind && reply_fits(kind, v->reply)) {
        out[n].cmd = MGW_SMFIR_REPLYCODE;
        out[n].u.text.ptr = v->reply;
        out[n].u.text.len = strlen(v->reply);
    } else {
        if (v->reply != NULL) {
            char q[200];

            log_warn(s->sid, "reply text dropped", "verdict=%s reply=%s", mgw_verdict_name(kind),
                     mgw_log_quote(q, sizeof q, v->reply, strlen(v->reply)));
        }
        out[n].cmd = mgw_verdict_reply(kind);
    }
    n++;
    log_debug(s->sid, "answer", "event=%s verdict=%s mods=%zu",
              mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA), mgw_verdict_name(kind), n - 1);
    count_message(cmd, kind, out, n - 1);
    /* Sending may end the session (a failed write): keep it alive until we are done. */
    s->guard++;
    session_send(s, out, n);
    if (out != stackbuf)
        free(out);

    if (cmd == MGW_SMFIC_BODYEOB && s->state == MGW_SESSION_EOM) {
        s->messages++;
        message_reset(s, 0);
    }
    if (session_unguard(s))
        return;
    session_read_on(s);
}

/* Reading goes on when nothing holds it: no answer awaited, no back-pressure. */
static void session_read_on(struct mgw_session *s)
{
    if (s->awaiting || s->flow_stopped || s->state == MGW_SESSION_CLOSING)
        return;
    read_update(s);
    /* Frames may already wait in the input buffer; the socket will not signal them. */
    if (!s->in_drain)
        event_active(s->resume_ev, EV_TIMEOUT, 0);
}

static void session_on_flow(void *arg, int stop)
{
    struct mgw_session *s = arg;

    if (stop == s->flow_stopped)
        return;
    log_debug(s->sid, stop ? "reading paused" : "reading resumed", "reason=backend");
    s->flow_stopped = stop;
    if (stop)
        read_update(s);
    else
        session_read_on(s);
}

static void session_on_progress(void *arg)
{
    struct mgw_session *s = arg;

    if (s->awaiting == 0 || s->state == MGW_SESSION_CLOSING ||
        s->negotiated.version < VERSION_INS_PROGRESS)
        return;
    s->guard++;
    send_simple(s, MGW_SMFIR_PROGRESS);
    session_unguard(s);
}

/* ---- forwarding events ---- */

static const struct mgw_strlist *stage_macros_of(struct mgw_session *s, uint8_t cmd)
{
    int stage = mgw_milter_stage_of_cmd(cmd);

    return stage < 0 ? NULL : &s->macro_views.stage[stage];
}

static int backend_open(struct mgw_session *s)
{
    struct mgw_session_info info = {
        .sid = s->sid, .offered = &s->offered, .negotiated = &s->negotiated};

    s->bsession = s->backend->ops->session_open(s->backend->impl, &info,
                                                     session_on_progress, session_on_flow, s);
    if (s->bsession == NULL) {
        session_fail(s, MGW_EUNAVAIL, "backend refused the session");
        return -1;
    }
    return 0;
}

/* The MTA's connection begins: at CONNECT, or right after negotiation (and QUIT_NC) when
 * CONNECT was negotiated away and will never come. */
static int connection_begin(struct mgw_session *s)
{
    if (backend_open(s) < 0)
        return -1;
    session_enter_state(s, MGW_SESSION_IDLE);
    return 0;
}

/* After negotiation or QUIT_NC: wait for CONNECT, unless the MTA will not send it. */
static void await_connect(struct mgw_session *s)
{
    session_enter_state(s, MGW_SESSION_CONNECT);
    if (s->negotiated.protocol & MGW_SMFIP_NOCONNECT)
        connection_begin(s);
}

/* Give one event to the backend. If the MTA expects an answer, reading pauses until
 * session_on_done(). Events the backend asked not to get (a NO* bit the MTA did not
 * honour) are answered here. */
static void forward(struct mgw_session *s, const struct mgw_milter_msg *m)
{
    uint32_t no_bit = mgw_negotiate_no_bit(m->cmd);
    int want_reply = mgw_negotiate_replies(s->negotiated.protocol, m->cmd);
    struct mgw_event ev = {
        .msg = m, .macros = stage_macros_of(s, m->cmd), .all_macros = &s->macro_views};
    int r;

    if (no_bit != 0 && (s->needs.protocol & no_bit)) {
        if (want_reply)
            send_simple(s, MGW_SMFIR_CONTINUE);
        return;
    }
    /* Reading stays on while the answer is owed: the MTA sends nothing more until it has
     * it, whatever else comes waits in the input buffer (bounded by its high watermark)
     * and session_drain() leaves it there. Turning reading off and on per answered event
     * cost two epoll_ctl calls each (ten per default message measured). */
    if (want_reply)
        s->awaiting = m->cmd;
    r = s->backend->ops->event(s->bsession, &ev, want_reply, session_on_done, s);
    if (r < 0 && want_reply) {
        /* No callback will come; fail closed for this event rather than hang the MTA. */
        struct mgw_verdict v = {.kind = MGW_VERDICT_TEMPFAIL};

        log_warn(s->sid, "backend refused event", "event=%s error=%s",
                 mgw_milter_cmd_name(m->cmd, MGW_MILTER_FROM_MTA), mgw_strerror(r));
        session_on_done(s, &v);
    }
}

/* Tell the backend a message is over without an end of message. */
static void forward_abort(struct mgw_session *s)
{
    struct mgw_milter_msg a = {.cmd = MGW_SMFIC_ABORT};

    if (s->bsession != NULL)
        forward(s, &a);
}

/* ---- the state machine ---- */

/* The state a message command moves to, and whether it may repeat in that state. */
static enum mgw_session_state message_state(uint8_t cmd, int *repeatable)
{
    *repeatable = cmd == MGW_SMFIC_RCPT || cmd == MGW_SMFIC_HEADER || cmd == MGW_SMFIC_BODY;
    switch (cmd) {
    case MGW_SMFIC_MAIL: return MGW_SESSION_MAIL;
    case MGW_SMFIC_RCPT: return MGW_SESSION_RCPT;
    case MGW_SMFIC_DATA: return MGW_SESSION_DATA;
    case MGW_SMFIC_HEADER: return MGW_SESSION_HEADERS;
    case MGW_SMFIC_EOH: return MGW_SESSION_EOH;
    case MGW_SMFIC_BODY: return MGW_SESSION_BODY;
    case MGW_SMFIC_BODYEOB: return MGW_SESSION_EOM;
    default: return MGW_SESSION_CLOSING;
    }
}

static int in_message(const struct mgw_session *s)
{
    return state_in_message(s->state);
}

static void out_of_order(struct mgw_session *s, uint8_t cmd)
{
    char detail[96];

    snprintf(detail, sizeof detail, "%s not allowed in state %s",
             mgw_milter_cmd_name(cmd, MGW_MILTER_FROM_MTA), mgw_session_state_name(s->state));
    session_fail(s, MGW_EORDER, detail);
}

/* The MTA began a new message (or ended the SMTP transaction) without ABORT. `next_cmd`
 * as for message_reset(). */
static void implicit_abort(struct mgw_session *s, uint8_t next_cmd)
{
    log_debug(s->sid, "implicit abort", "next=%s state=%s",
              next_cmd ? mgw_milter_cmd_name(next_cmd, MGW_MILTER_FROM_MTA) : "-",
              mgw_session_state_name(s->state));
    forward_abort(s);
    message_reset(s, next_cmd);
}

static void handle_optneg(struct mgw_session *s, const struct mgw_milter_msg *m)
{
    struct mgw_milter_msg reply = {.cmd = MGW_SMFIR_OPTNEG};
    char detail[64];

    s->offered = m->u.optneg;
    memset(s->offered.symlist, 0, sizeof s->offered.symlist);
    memset(&s->needs, 0, sizeof s->needs);
    s->backend->ops->needs(s->backend->impl, &s->needs);
    if (mgw_negotiate(&s->offered, &s->needs, s->dec.max_frame, &s->negotiated) < 0) {
        snprintf(detail, sizeof detail, "MTA offered protocol version %" PRIu32,
                 s->offered.version);
        session_close(s, MGW_LOG_WARN, "unsupported_version", detail);
        return;
    }
    reply.u.optneg = s->negotiated;
    log_debug(s->sid, "negotiated",
              "mta_version=%" PRIu32 " mta_actions=0x%" PRIx32 " mta_protocol=0x%" PRIx32
              " version=%" PRIu32 " actions=0x%" PRIx32 " protocol=0x%" PRIx32,
              s->offered.version, s->offered.actions, s->offered.protocol,
              s->negotiated.version, s->negotiated.actions, s->negotiated.protocol);
    session_send(s, &reply, 1);
    /* The lists were borrowed from the backend for this answer only: a reload frees them. */
    memset(s->negotiated.symlist, 0, sizeof s->negotiated.symlist);
    memset(s->needs.symlist, 0, sizeof s->needs.symlist);
    await_connect(s);
}

static void handle_macro(struct mgw_session *s, const struct mgw_milter_msg *m)
{
    int stage = mgw_milter_stage_of_cmd(m->u.macro.stage_cmd);

    /* libmilter ignores a D for a command letter without a macro stage; so do we. */
    if (stage < 0) {
        log_debug(s->sid, "macros for unknown stage ignored", "stage_cmd=0x%02x",
                  m->u.macro.stage_cmd);
        return;
    }
    /* With MAIL negotiated away, its macros (which the MTA sends anyway) are what says a
     * message began: it is inside a message, not idle, from here on; and one that comes
     * inside a message begins the next (no ABORT came for the last). */
    if (stage == MGW_STAGE_ENVFROM && (s->negotiated.protocol & MGW_SMFIP_NOMAIL) &&
        s->state >= MGW_SESSION_IDLE) {
        if (in_message(s))
            implicit_abort(s, MGW_SMFIC_MAIL);
        session_enter_state(s, MGW_SESSION_MAIL);
    }
    macros_store(s, stage, &m->u.macro.pairs);
}

static void handle_message_cmd(struct mgw_session *s, const struct mgw_milter_msg *m)
{
    int repeatable;
    enum mgw_session_state to = message_state(m->cmd, &repeatable);

    /* With MAIL negotiated away, whatever message command comes first begins the message. */
    if (s->state == MGW_SESSION_IDLE && (s->negotiated.protocol & MGW_SMFIP_NOMAIL))
        session_enter_state(s, MGW_SESSION_MAIL);
    /* Stages may be skipped (NO* flags) but never revisited; RCPT, header and body
     * chunks may repeat. EOM always closes the message. */
    if (in_message(s) && s->state != MGW_SESSION_EOM &&
        (to < s->state || (to == s->state && !repeatable)) &&
        (s->negotiated.protocol & MGW_SMFIP_NOMAIL)) {
        /* Without MAIL, a command that goes back begins the next message: the MTA ended
         * this one without ABORT (Sendmail does after a refusal before end of message).
         * libmilter resets here too, rather than fail the rest of the connection. */
        implicit_abort(s, m->cmd);
        session_enter_state(s, MGW_SESSION_MAIL);
    }
    if (!in_message(s) || s->state == MGW_SESSION_EOM || to < s->state ||
        (to == s->state && !repeatable)) {
        out_of_order(s, m->cmd);
        return;
    }
    session_enter_state(s, to);
    forward(s, m);
}

static void handle_command(struct mgw_session *s, const struct mgw_milter_msg *m)
{
    if (s->state == MGW_SESSION_NEGOTIATE && m->cmd != MGW_SMFIC_OPTNEG) {
        out_of_order(s, m->cmd);
        return;
    }
    switch (m->cmd) {
    case MGW_SMFIC_OPTNEG:
        if (s->state != MGW_SESSION_NEGOTIATE)
            out_of_order(s, m->cmd);
        else
            handle_optneg(s, m);
        break;
    case MGW_SMFIC_MACRO:
        handle_macro(s, m);
        break;
    case MGW_SMFIC_CONNECT:
        if (s->state != MGW_SESSION_CONNECT) {
            out_of_order(s, m->cmd);
            break;
        }
        if (connection_begin(s) < 0)
            break;
        forward(s, m);
        break;
    case MGW_SMFIC_HELO:
    case MGW_SMFIC_MAIL:
        if (s->state < MGW_SESSION_IDLE) {
            out_of_order(s, m->cmd);
            break;
        }
        /* A new HELO or MAIL inside a message resets it (SMTP RSET semantics); Postfix
         * sends ABORT first, other MTAs may not. */
        if (in_message(s))
            implicit_abort(s, m->cmd == MGW_SMFIC_MAIL ? MGW_SMFIC_MAIL : 0);
        if (m->cmd == MGW_SMFIC_MAIL)
            session_enter_state(s, MGW_SESSION_MAIL);
        forward(s, m);
        break;
    case MGW_SMFIC_RCPT:
    case MGW_SMFIC_DATA:
    case MGW_SMFIC_HEADER:
    case MGW_SMFIC_EOH:
    case MGW_SMFIC_BODY:
    case MGW_SMFIC_BODYEOB:
        handle_message_cmd(s, m);
        break;
    case MGW_SMFIC_UNKNOWN:
        if (s->state < MGW_SESSION_IDLE)
            out_of_order(s, m->cmd);
        else
            forward(s, m);
        break;
    case MGW_SMFIC_ABORT:
        /* Postfix sends ABORT after every message and twice more at the end: an abort
         * outside a message is harmless and not forwarded. */
        if (in_message(s)) {
            forward_abort(s);
            message_reset(s, 0);
        }
        break;
    case MGW_SMFIC_QUIT_NC:
        /* A new SMTP connection follows on this socket: new backend session, no macros. */
        if (s->bsession != NULL) {
            s->backend->ops->session_close(s->bsession);
            s->bsession = NULL;
        }
        macros_clear(s, 0, MGW_STAGE_COUNT - 1);
        await_connect(s);
        break;
    case MGW_SMFIC_QUIT:
        session_close(s, MGW_LOG_DEBUG, "quit", NULL);
        break;
    default:
        mgw_panic("session: decoder returned command 0x%02x", m->cmd);
    }
}

/* ---- reading ---- */

static void session_drain(struct mgw_session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    int frames = 0, starved = 0;

    s->in_drain++;
    while (!s->awaiting && !s->flow_stopped && s->state != MGW_SESSION_CLOSING) {
        size_t avail = evbuffer_get_length(in);
        uint8_t hdr[MGW_MILTER_HDR_LEN];
        struct mgw_milter_msg m;
        size_t want;
        ssize_t r;
        uint8_t *buf;

        if (avail < MGW_MILTER_HDR_LEN) {
            starved = 1;
            break;
        }
        if (++frames > DRAIN_BATCH) {
            /* Yield to other connections; continue on the next loop turn. */
            event_active(s->resume_ev, EV_TIMEOUT, 0);
            break;
        }
        evbuffer_copyout(in, hdr, sizeof hdr);
        want = MGW_MILTER_HDR_LEN + ((size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 |
                                     (size_t)hdr[2] << 8 | hdr[3]);
        /* Let the codec judge the length before waiting for (or pulling up) the body. */
        r = mgw_milter_decode(&s->dec, hdr, sizeof hdr, &m);
        if (r < 0 && r != MGW_PARTIAL) {
            session_fail(s, (int)r, "bad frame length");
            break;
        }
        if (avail < want) {
            starved = 1;
            break;
        }
        buf = evbuffer_pullup(in, (ssize_t)want);
        r = mgw_milter_decode(&s->dec, buf, want, &m);
        mgw_metrics_add(MGW_METRIC_BYTES_IN, want);
        if (r < 0) {
            char detail[64];

            snprintf(detail, sizeof detail, "command 0x%02x, frame length %zu", buf[4],
                     want - MGW_MILTER_HDR_LEN);
            session_fail(s, r == MGW_PARTIAL ? MGW_EMALFORMED : (int)r, detail);
            break;
        }
        handle_command(s, &m);
        /* Views into `buf` die here; the backend copied what it keeps. */
        if (s->state != MGW_SESSION_CLOSING || !s->dead)
            evbuffer_drain(in, (size_t)r);
    }
    if (starved && s->held_event != 0)
        session_release_event(s);
    if (!s->dead)
        read_update(s); /* frames taken out make room again */
    s->in_drain--;
    if (s->dead && s->in_drain == 0 && s->guard == 0)
        session_free(s);
}

/* ---- the socket ---- */

static size_t read_limit(const struct mgw_session *s)
{
    return s->dec.max_frame + MGW_MILTER_HDR_LEN + READ_SLACK;
}

/* The idle timeout rides on the read event: it runs out only while reading is on, and
 * restarts at every read, as the bufferevent's read timeout did. */
static void read_arm(struct mgw_session *s)
{
    struct timeval tv = {s->idle_ms / 1000, (s->idle_ms % 1000) * 1000};

    if (s->idle_ms != 0 && !state_in_message(s->state)) {
        event_add(s->read_ev, &tv);
    } else {
        event_add(s->read_ev, NULL); /* a pending event keeps its timer: removed below */
        event_remove_timer(s->read_ev);
    }
}

/* Reading is on unless the session is closing, the backend holds it (back-pressure), an
 * EOF or error waits to be acted on (session_on_event()), or the input holds a maximal
 * frame and more. An answer owed does not stop it (see forward()). */
static void read_update(struct mgw_session *s)
{
    int want = s->state != MGW_SESSION_CLOSING && !s->flow_stopped && s->held_event == 0 &&
               evbuffer_get_length(bufferevent_get_input(s->bev)) < read_limit(s);

    if (want == s->reading)
        return;
    s->reading = want;
    if (want)
        read_arm(s);
    else
        event_del(s->read_ev);
}

/*
 * The socket is readable (or idle too long). Reading is ours, not the bufferevent's:
 * libevent 2.1's evbuffer_read() asks the socket how much it holds (ioctl FIONREAD) before
 * every read and then reads at most 4 KiB, so a 100 KB message cost 32 ioctl and readv
 * pairs (strace). One read(2) of up to READ_MAX into the loop's buffer, appended to the
 * input, does it in a few; the copy is what evbuffer_pullup() did for frames that spanned
 * 4 KiB reads. The loop's buffer, not the input's, takes the read: an input chain sized for
 * READ_MAX would stay with every connection that keeps part of a frame.
 */
static void session_on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_session *s = arg;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t room = read_limit(s) - evbuffer_get_length(in);
    ssize_t n;

    if (what & EV_TIMEOUT) {
        session_on_event(s->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, s);
        return;
    }
    n = read(fd, s->srv->rbuf, room < READ_MAX ? room : READ_MAX);
    if (n > 0) {
        if (evbuffer_add(in, s->srv->rbuf, (size_t)n) != 0)
            mgw_panic("session: out of memory for %zd bytes read", n);
        session_drain(s);
    } else if (n == 0) {
        session_on_event(s->bev, BEV_EVENT_READING | BEV_EVENT_EOF, s);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        session_on_event(s->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, s);
    }
}

static void session_on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_session *s = arg;

    if (s->state != MGW_SESSION_CLOSING)
        session_drain(s);
}

static void session_on_write(struct bufferevent *bev, void *arg)
{
    struct mgw_session *s = arg;

    /* Only a lingering, closing session waits for its output to drain. */
    if (s->state == MGW_SESSION_CLOSING && !s->in_drain)
        session_free(s);
}

static void session_on_event(struct bufferevent *bev, short what, void *arg)
{
    struct mgw_session *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (s->state == MGW_SESSION_CLOSING) {
        /* The peer went away or the linger timed out while flushing: just free. */
        session_free(s);
        return;
    }
    if (s->awaiting) {
        /* Read while an answer is owed (reading stays on, see forward()). The MTA is
         * waiting for us, not idle: the idle timer starts again. An end of the connection
         * waits until the answer is out and the frames read before it are handled, as if
         * it had been read only then. */
        if (what & BEV_EVENT_TIMEOUT)
            return;
        s->held_event = what;
        s->held_errno = EVUTIL_SOCKET_ERROR();
        read_update(s); /* reading again would report the EOF first */
        return;
    }
    if (what & BEV_EVENT_EOF) {
        if (evbuffer_get_length(in) > 0)
            session_close(s, MGW_LOG_WARN, "truncated", "EOF in the middle of a frame");
        else
            session_close(s, MGW_LOG_INFO, "eof", "MTA closed the connection without QUIT");
    } else if (what & BEV_EVENT_TIMEOUT) {
        session_close(s, MGW_LOG_WARN, "idle_timeout", NULL);
    } else if (what & BEV_EVENT_ERROR) {
        session_close(s, MGW_LOG_WARN, "io_error", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    }
}

/* An event session_on_event() held while an answer was owed, now that it is not. */
static void session_release_event(struct mgw_session *s)
{
    short what = s->held_event;

    s->held_event = 0;
    EVUTIL_SET_SOCKET_ERROR(s->held_errno);
    session_on_event(s->bev, what, s);
}

/* ---- lifetime ---- */

static void backend_unref(struct mgw_backend *b, struct mgw_server *srv)
{
    /* The current backend lives as long as the server; a replaced one goes with its
     * last session. */
    if (--b->sessions == 0 && b != srv->backend && b->release != NULL)
        b->release(b, b->release_arg);
}

static void session_free(struct mgw_session *s)
{
    struct mgw_server *srv = s->srv;

    if (s->bsession != NULL)
        s->backend->ops->session_close(s->bsession);
    backend_unref(s->backend, srv);
    macros_clear(s, 0, MGW_STAGE_COUNT - 1);
    event_free(s->read_ev);
    bufferevent_free(s->bev);
    event_free(s->resume_ev);
    free(s->wbuf);
    TAILQ_REMOVE(&srv->sessions, s, link);
    srv->nsessions--;
    __atomic_sub_fetch(&process_sessions, 1, __ATOMIC_RELAXED);
    mgw_metrics_session_closed(mgw_metrics_close_reason_parse(s->close_reason ? s->close_reason
                                                                              : "other"));
    free(s);
    if (srv->nsessions == 0 && srv->empty_cb != NULL)
        srv->empty_cb(srv->empty_arg);
}

int mgw_server_adopt(struct mgw_server *srv, evutil_socket_t fd, const char *peer)
{
    struct mgw_session *s;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int one = 1;

    if (__atomic_add_fetch(&process_sessions, 1, __ATOMIC_RELAXED) > srv->cfg.max_connections &&
        srv->cfg.max_connections) {
        __atomic_sub_fetch(&process_sessions, 1, __ATOMIC_RELAXED);
        log_warn(0, "connection refused", "reason=max_connections limit=%u peer=%s",
                 srv->cfg.max_connections, peer ? peer : "-");
        evutil_closesocket(fd);
        return MGW_EUNAVAIL;
    }
    s = mgw_xcalloc(1, sizeof *s);
    s->srv = srv;
    s->backend = srv->backend;
    s->backend->sessions++;
    s->sid = __atomic_fetch_add(&next_sid, 1, __ATOMIC_RELAXED);
    snprintf(s->peer, sizeof s->peer, "%s", peer ? peer : "-");
    s->dec.dir = MGW_MILTER_FROM_MTA;
    s->dec.max_frame = srv->cfg.max_frame ? srv->cfg.max_frame : MGW_MILTER_DEFAULT_MAX_FRAME;

    /* Replies are small and latency-bound; see the Nagle note at the top. */
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* No idle timeout runs inside a message: keepalive finds a vanished MTA host. */
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    }
    evutil_make_socket_nonblocking(fd);
    evutil_make_socket_closeonexec(fd);

    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->read_ev = event_new(srv->base, fd, EV_READ | EV_PERSIST, session_on_readable, s);
    s->resume_ev = event_new(srv->base, -1, 0, session_on_resume, s);
    if (s->bev == NULL || s->read_ev == NULL || s->resume_ev == NULL)
        mgw_panic("session: libevent allocation failed");
    bufferevent_setcb(s->bev, NULL, session_on_write, session_on_event, s);
    /* A socket bufferevent keeps its input's end frozen except inside its own reads;
     * ours append to it instead. */
    evbuffer_unfreeze(bufferevent_get_input(s->bev), 0);
    s->idle_ms = srv->cfg.idle_timeout_ms;
    TAILQ_INSERT_TAIL(&srv->sessions, s, link);
    srv->nsessions++;
    mgw_metrics_session_opened();
    log_debug(s->sid, "session opened", "peer=%s worker=%u", s->peer, srv->worker);
    bufferevent_enable(s->bev, EV_WRITE);
    read_update(s);
    return 0;
}

struct mgw_server *mgw_server_new(struct event_base *base, const struct mgw_server_config *cfg,
                                  struct mgw_backend *backend)
{
    struct mgw_server *srv = mgw_xcalloc(1, sizeof *srv);

    pthread_once(&sid_once, sid_seed);
    srv->base = base;
    srv->cfg = *cfg;
    srv->backend = backend;
    TAILQ_INIT(&srv->sessions);
    srv->rbuf = mgw_xmalloc(READ_MAX);
    return srv;
}

void mgw_server_set_worker(struct mgw_server *srv, unsigned worker)
{
    srv->worker = worker;
}

unsigned mgw_server_process_sessions(void)
{
    return __atomic_load_n(&process_sessions, __ATOMIC_RELAXED);
}

void mgw_server_replace(struct mgw_server *srv, const struct mgw_server_config *cfg,
                        struct mgw_backend *backend)
{
    struct mgw_backend *old = srv->backend;

    srv->cfg = *cfg;
    if (backend == old)
        return;
    srv->backend = backend;
    if (old->sessions == 0 && old->release != NULL)
        old->release(old, old->release_arg);
}

size_t mgw_server_buffered_bytes(const struct mgw_server *srv)
{
    const struct mgw_session *s;
    size_t n = 0;

    TAILQ_FOREACH(s, &srv->sessions, link)
        n += s->wcap + evbuffer_get_length(bufferevent_get_input(s->bev)) +
             evbuffer_get_length(bufferevent_get_output(s->bev));
    return n;
}

unsigned mgw_server_session_count(const struct mgw_server *srv)
{
    return srv->nsessions;
}

void mgw_server_set_empty_cb(struct mgw_server *srv, void (*cb)(void *arg), void *arg)
{
    srv->empty_cb = cb;
    srv->empty_arg = arg;
}

void mgw_server_close_all(struct mgw_server *srv, const char *reason)
{
    struct mgw_session *s, *next;

    for (s = TAILQ_FIRST(&srv->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->state == MGW_SESSION_CLOSING)
            session_free(s);
        else
            session_close(s, MGW_LOG_INFO, reason, NULL);
    }
}

void mgw_server_drain(struct mgw_server *srv)
{
    srv->draining = 1;
    mgw_metrics_set(MGW_METRIC_DRAINING, 1);
    /* Otherwise the last session to go calls it from session_free(). */
    if (srv->nsessions == 0 && srv->empty_cb != NULL)
        srv->empty_cb(srv->empty_arg);
}

int mgw_server_draining(const struct mgw_server *srv)
{
    return srv->draining;
}

struct mgw_server *mgw_server_free(struct mgw_server *srv)
{
    if (srv == NULL)
        return NULL;
    srv->empty_cb = NULL;
    mgw_server_close_all(srv, "shutdown");
    free(srv->rbuf);
    free(srv);
    return NULL;
}
