/*
 * smfi.c - libmilter's API (libmilter/mfapi.h) on top of the gRPC filter server of
 * examples/c/mgw_filter.c: an unchanged libmilter milter becomes a miltergw filter.
 * SPDX-License-Identifier: Apache-2.0
 *
 * The mapping:
 *  - Describe comes from smfi_register(): an event for every callback, actions from
 *    xxfi_flags; when the milter has xxfi_negotiate, it is called once at smfi_main() with
 *    everything this library can do offered, and its answer decides (NO* steps drop events,
 *    NR_* steps make them observe-only, smfi_setsymlist() asks for macros).
 *  - Each Session stream is one SMTP connection, one SMFICTX. mgw_filter's session threads
 *    run its callbacks in order on a thread of its own, so callbacks may block, as in
 *    libmilter; connections run in parallel.
 *  - A callback's SMFIS_* becomes the Reply's verdict, smfi_setreply() its SmtpResponse
 *    (used, as libmilter does, only when the code's class matches REJECT or TEMPFAIL), and
 *    the modification calls in xxfi_eom its modifications.
 * What it does not do: the milter socket itself (smfi_setbacklog and smfi_settimeout are
 * accepted and have no effect: gRPC has its own listener and the gateway its deadlines).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

#include "libmilter/mfapi.h"
#include "mgw_filter.h"

#define N_STAGES    7              /* macro stages, in event order: connect .. eom */
#define MAX_LINES   32             /* SMTP reply lines */
#define DRAIN_SECS  10             /* after smfi_stop, open connections may finish this long */
#define PROTO_OFFER SMFI_CURR_PROT /* every step but the body sizes (gRPC has no limit) */

struct macro {
    char *name, *value; /* owned */
};

struct smfi_str {
    struct mgw_session *s;
    struct mgw_reply *r; /* the reply being built, during a callback */
    void *priv;
    bool started, in_msg, in_eom, negotiating;
    enum mgw_event kind; /* of the callback running */

    struct macro *mac[N_STAGES];
    size_t n_mac[N_STAGES];

    /* smfi_setreply / smfi_setmlreply: for the callback running */
    unsigned code;
    char *xcode, *text; /* owned; text has '\n' between lines */

    /* smfi_replacebody: collected, sent as one ReplaceBody */
    unsigned char *body;
    size_t body_len;
    bool body_set;

    struct sockaddr_storage addr; /* xxfi_connect's hostaddr */
};

static struct {
    struct smfiDesc d;
    bool registered;
    char *listen; /* the gRPC address from smfi_setconn */
    char *unix_path;
    int dbg;
    unsigned long actions, protocol; /* in force: flags, or the negotiated ones */
    char *symlist[N_STAGES];         /* smfi_setsymlist, by stage */
    struct mgw_filter f;
} L;

/* ---- small helpers ----------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fputs("libmiltergw-milter: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void fail(const char *fn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(const char *fn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "libmiltergw-milter: %s: ", fn);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The macro stage of an event, or -1: connect 0, helo 1, mail 2, rcpt 3, data 4, eoh 5,
 * eom 6 (the order in which they come, which getsymval's lookup relies on). */
static int stage_of(enum mgw_event k)
{
    switch (k) {
    case MGW_CONNECT: return 0;
    case MGW_HELO: return 1;
    case MGW_MAIL: return 2;
    case MGW_RCPT: return 3;
    case MGW_DATA: return 4;
    case MGW_EOH: return 5;
    case MGW_EOM: return 6;
    default: return -1;
    }
}

static const enum mgw_event stage_event[N_STAGES] = {MGW_CONNECT, MGW_HELO, MGW_MAIL, MGW_RCPT,
                                                     MGW_DATA,    MGW_EOH,  MGW_EOM};

static void macros_clear(SMFICTX *ctx, int from)
{
    for (int st = from; st < N_STAGES; st++) {
        for (size_t i = 0; i < ctx->n_mac[st]; i++) {
            free(ctx->mac[st][i].name);
            free(ctx->mac[st][i].value);
        }
        free(ctx->mac[st]);
        ctx->mac[st] = NULL;
        ctx->n_mac[st] = 0;
    }
}

/* An event of stage st brings that stage's macros and ends the later stages' (libmilter
 * keeps a stage's macros until the same stage comes again or an earlier one does). */
static void macros_store(SMFICTX *ctx, int st, const Miltergw__V1__Event *ev)
{
    macros_clear(ctx, st);
    ctx->mac[st] = xmalloc(ev->n_macros * sizeof *ctx->mac[st]);
    for (size_t i = 0; i < ev->n_macros; i++) {
        ctx->mac[st][i].name = xstrdup(ev->macros[i]->key);
        ctx->mac[st][i].value = xstrdup(ev->macros[i]->value);
    }
    ctx->n_mac[st] = ev->n_macros;
}

/* "{name}" and "name" name the same macro, as in libmilter. */
static bool macro_eq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 2 && a[0] == '{' && a[la - 1] == '}')
        a++, la -= 2;
    if (lb > 2 && b[0] == '{' && b[lb - 1] == '}')
        b++, lb -= 2;
    return la == lb && memcmp(a, b, la) == 0;
}

static void reply_reset(SMFICTX *ctx)
{
    ctx->code = 0;
    free(ctx->xcode);
    free(ctx->text);
    ctx->xcode = ctx->text = NULL;
}

/* ---- the callbacks ----------------------------------------------------------------------- */

static _SOCK_ADDR *connect_addr(SMFICTX *ctx, const Miltergw__V1__Connect *c)
{
    memset(&ctx->addr, 0, sizeof ctx->addr);
    switch (c->family) {
    case MILTERGW__V1__FAMILY__FAMILY_INET: {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ctx->addr;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)c->port);
        if (inet_pton(AF_INET, c->address, &sin->sin_addr) != 1)
            return NULL;
        return (_SOCK_ADDR *)sin;
    }
    case MILTERGW__V1__FAMILY__FAMILY_INET6: {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ctx->addr;
        const char *a = strncasecmp(c->address, "IPv6:", 5) == 0 ? c->address + 5 : c->address;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)c->port);
        if (inet_pton(AF_INET6, a, &sin6->sin6_addr) != 1)
            return NULL;
        return (_SOCK_ADDR *)sin6;
    }
    case MILTERGW__V1__FAMILY__FAMILY_UNIX: {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ctx->addr;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof sun->sun_path, "%s", c->address);
        return (_SOCK_ADDR *)sun;
    }
    default: return NULL; /* libmilter gives NULL for an unknown family */
    }
}

/* argv for xxfi_envfrom/xxfi_envrcpt: the address, then the ESMTP args, then NULL. */
static char **make_argv(const char *addr, char *const *args, size_t n)
{
    char **argv = xmalloc((n + 2) * sizeof *argv);
    argv[0] = (char *)addr;
    for (size_t i = 0; i < n; i++)
        argv[i + 1] = args[i];
    argv[n + 1] = NULL;
    return argv;
}

static sfsistat call(SMFICTX *ctx, const Miltergw__V1__Event *ev, enum mgw_event kind)
{
    const struct smfiDesc *d = &L.d;
    sfsistat st = SMFIS_CONTINUE;
    char **argv;
    switch (kind) {
    case MGW_CONNECT:
        if (d->xxfi_connect)
            st = d->xxfi_connect(ctx, ev->connect->hostname, connect_addr(ctx, ev->connect));
        break;
    case MGW_HELO:
        if (d->xxfi_helo)
            st = d->xxfi_helo(ctx, ev->helo->name);
        break;
    case MGW_MAIL:
        ctx->in_msg = true;
        if (d->xxfi_envfrom) {
            argv = make_argv(ev->mail->address, ev->mail->args, ev->mail->n_args);
            st = d->xxfi_envfrom(ctx, argv);
            free(argv);
        }
        break;
    case MGW_RCPT:
        if (d->xxfi_envrcpt) {
            argv = make_argv(ev->rcpt->address, ev->rcpt->args, ev->rcpt->n_args);
            st = d->xxfi_envrcpt(ctx, argv);
            free(argv);
        }
        break;
    case MGW_DATA:
        if (d->xxfi_data)
            st = d->xxfi_data(ctx);
        break;
    case MGW_HEADER:
        if (d->xxfi_header) {
            char *v = xstrndup((const char *)ev->header->value.data, ev->header->value.len);
            st = d->xxfi_header(ctx, ev->header->name, v);
            free(v);
        }
        break;
    case MGW_EOH:
        if (d->xxfi_eoh)
            st = d->xxfi_eoh(ctx);
        break;
    case MGW_BODY:
        if (d->xxfi_body) /* libmilter never passes NULL; neither do we for an empty chunk */
            st = d->xxfi_body(ctx, ev->body->data.data ? ev->body->data.data : (uint8_t *)"",
                              ev->body->data.len);
        break;
    case MGW_EOM:
        ctx->in_eom = true;
        if (d->xxfi_eom)
            st = d->xxfi_eom(ctx);
        ctx->in_eom = false;
        ctx->in_msg = false;
        break;
    case MGW_UNKNOWN:
        if (d->xxfi_unknown)
            st = d->xxfi_unknown(ctx, ev->unknown->command);
        break;
    case MGW_ABORT:
        if (d->xxfi_abort)
            d->xxfi_abort(ctx); /* its answer is ignored, as in libmilter */
        ctx->in_msg = false;
        macros_clear(ctx, stage_of(MGW_MAIL));
        break;
    default: break;
    }
    return st;
}

/* Turns the callback's answer (and smfi_setreply) into the reply's verdict. */
static void answer(SMFICTX *ctx, struct mgw_reply *r, enum mgw_event kind, sfsistat st)
{
    switch (st) {
    case SMFIS_CONTINUE:
    case SMFIS_NOREPLY: /* on an event that gets a reply all the same: no objection */ break;
    case SMFIS_REJECT:
    case SMFIS_TEMPFAIL: {
        bool reject = st == SMFIS_REJECT;
        /* libmilter sends the custom reply only if its class matches the answer */
        if (ctx->code && ctx->code / 100 == (reject ? 5u : 4u)) {
            if (reject)
                mgw_reply_reject(r, ctx->code, ctx->xcode, ctx->text);
            else
                mgw_reply_tempfail(r, ctx->code, ctx->xcode, ctx->text);
        } else {
            mgw_reply_verdict(r, reject ? MGW_REJECT : MGW_TEMPFAIL);
        }
        break;
    }
    case SMFIS_DISCARD:
        if (kind >= MGW_MAIL && kind <= MGW_EOM)
            mgw_reply_verdict(r, MGW_DISCARD);
        else /* what an MTA does with a discard outside a message: nothing */
            fail("SMFIS_DISCARD", "outside a message (event %d): treated as SMFIS_CONTINUE",
                 (int)kind);
        break;
    case SMFIS_ACCEPT: mgw_reply_verdict(r, MGW_ACCEPT); break;
    case SMFIS_SKIP:
        if (kind == MGW_BODY)
            mgw_reply_verdict(r, MGW_SKIP);
        break;
    default:
        fail("callback", "returned %d, not an SMFIS_* answer: answering TEMPFAIL", st);
        mgw_reply_verdict(r, MGW_TEMPFAIL);
        break;
    }
}

static void on_event(struct mgw_session *s, const Miltergw__V1__Event *ev, struct mgw_reply *r)
{
    SMFICTX *ctx = mgw_session_state(s);
    enum mgw_event kind = mgw_event_kind(ev);
    ctx->s = s;
    if (kind == MGW_START || kind == MGW_NONE) {
        if (kind == MGW_START && L.dbg > 0)
            fprintf(stderr, "libmiltergw-milter: session %s start\n", ev->start->session_id);
        return;
    }
    ctx->started = true;
    int st = stage_of(kind);
    if (st >= 0)
        macros_store(ctx, st, ev);
    if (L.dbg > 1)
        fprintf(stderr, "libmiltergw-milter: session %s event %d id %llu\n", mgw_session_id(s),
                (int)kind, (unsigned long long)ev->event_id);
    ctx->r = r;
    ctx->kind = kind;
    sfsistat rc = call(ctx, ev, kind);
    if (kind == MGW_EOM && ctx->body_set)
        mgw_reply_replace_body(r, ctx->body, ctx->body_len);
    answer(ctx, r, kind, rc);
    ctx->r = NULL;
    reply_reset(ctx);
    if (kind == MGW_EOM || kind == MGW_ABORT) {
        free(ctx->body);
        ctx->body = NULL;
        ctx->body_len = 0;
        ctx->body_set = false;
    }
}

static void on_close(struct mgw_session *s)
{
    SMFICTX *ctx = mgw_session_state(s);
    ctx->s = s;
    if (ctx->started) {
        if (ctx->in_msg && L.d.xxfi_abort) /* the connection ended inside a message */
            L.d.xxfi_abort(ctx);
        if (L.d.xxfi_close)
            L.d.xxfi_close(ctx);
    }
    macros_clear(ctx, 0);
    reply_reset(ctx);
    free(ctx->body);
}

/* ---- set-up ------------------------------------------------------------------------------ */

int smfi_register(struct smfiDesc d)
{
    if (d.xxfi_name == NULL) {
        fail("smfi_register", "xxfi_name is NULL");
        return MI_FAILURE;
    }
    /* libmilter takes filters written for API versions 2 to 4 and 1.0.x */
    if (!(d.xxfi_version >= 2 && d.xxfi_version <= 4) &&
        SM_LM_VRS_MAJOR((unsigned)d.xxfi_version) != SM_LM_VRS_MAJOR(SMFI_VERSION)) {
        fail("smfi_register",
             "filter \"%s\": xxfi_version 0x%x is not supported (built with "
             "0x%x)",
             d.xxfi_name, (unsigned)d.xxfi_version, (unsigned)SMFI_VERSION);
        return MI_FAILURE;
    }
    if (d.xxfi_flags & ~(unsigned long)SMFI_CURR_ACTS) {
        fail("smfi_register", "filter \"%s\": unsupported xxfi_flags bits 0x%lx", d.xxfi_name,
             d.xxfi_flags & ~(unsigned long)SMFI_CURR_ACTS);
        return MI_FAILURE;
    }
    if (d.xxfi_version >= 2 && d.xxfi_version <= 3) /* these had no such callbacks */
        d.xxfi_unknown = NULL, d.xxfi_data = NULL, d.xxfi_negotiate = NULL;
    L.d = d;
    L.d.xxfi_name = xstrdup(d.xxfi_name);
    L.registered = true;
    return MI_SUCCESS;
}

/* libmilter's inet:PORT[@HOST], inet6:PORT[@HOST], unix:PATH, local:PATH, /PATH; and
 * gRPC's HOST:PORT, [V6]:PORT, unix:PATH. */
int smfi_setconn(char *conn)
{
    char buf[512];
    const char *port, *host;
    if (conn == NULL || conn[0] == '\0') {
        fail("smfi_setconn", "empty connection spec");
        return MI_FAILURE;
    }
    free(L.listen);
    free(L.unix_path);
    L.listen = L.unix_path = NULL;
    bool inet = strncmp(conn, "inet:", 5) == 0, inet6 = strncmp(conn, "inet6:", 6) == 0;
    if (inet || inet6) {
        const char *p = conn + (inet ? 5 : 6), *at = strchr(p, '@');
        char portbuf[16];
        size_t pl = at ? (size_t)(at - p) : strlen(p);
        if (pl == 0 || pl >= sizeof portbuf || strspn(p, "0123456789") != pl) {
            fail("smfi_setconn", "\"%s\": want %s:PORT@HOST with a numeric PORT", conn,
                 inet ? "inet" : "inet6");
            return MI_FAILURE;
        }
        memcpy(portbuf, p, pl);
        portbuf[pl] = '\0';
        port = portbuf;
        host = at ? at + 1 : (inet ? "0.0.0.0" : "::");
        if (inet6 || strchr(host, ':'))
            snprintf(buf, sizeof buf, "[%s]:%s", host, port);
        else
            snprintf(buf, sizeof buf, "%s:%s", host, port);
        L.listen = xstrdup(buf);
    } else if (strncmp(conn, "unix:", 5) == 0 || strncmp(conn, "local:", 6) == 0 ||
               conn[0] == '/') {
        const char *path = conn[0] == '/' ? conn : strchr(conn, ':') + 1;
        if (path[0] == '\0') {
            fail("smfi_setconn", "\"%s\": empty socket path", conn);
            return MI_FAILURE;
        }
        snprintf(buf, sizeof buf, "unix:%s", path);
        L.listen = xstrdup(buf);
        L.unix_path = xstrdup(path);
    } else if (strrchr(conn, ':') && strrchr(conn, ':')[1] != '\0' &&
               strspn(strrchr(conn, ':') + 1, "0123456789") == strlen(strrchr(conn, ':') + 1)) {
        L.listen = xstrdup(conn); /* HOST:PORT */
    } else {
        fail("smfi_setconn",
             "\"%s\": not inet:PORT@HOST, inet6:PORT@HOST, unix:PATH, "
             "local:PATH nor HOST:PORT",
             conn);
        return MI_FAILURE;
    }
    return MI_SUCCESS;
}

/* libmilter creates its socket here. gRPC binds in smfi_main(); this checks now that it
 * will be able to, so that a milter that opens early still fails early. */
int smfi_opensocket(bool rmsocket)
{
    if (L.listen == NULL || !L.registered) {
        fail("smfi_opensocket", "call smfi_register and smfi_setconn first");
        return MI_FAILURE;
    }
    if (L.unix_path) {
        if (rmsocket && unlink(L.unix_path) != 0 && errno != ENOENT) {
            fail("smfi_opensocket", "cannot remove %s: %s", L.unix_path, strerror(errno));
            return MI_FAILURE;
        }
        return MI_SUCCESS;
    }
    /* HOST:PORT or [HOST]:PORT: try to bind it */
    char host[256];
    const char *colon = strrchr(L.listen, ':');
    size_t hl = (size_t)(colon - L.listen);
    if (hl >= sizeof host)
        return MI_FAILURE;
    memcpy(host, L.listen, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[' && hl > 1 && h[hl - 1] == ']')
        h[hl - 1] = '\0', h++;
    struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM}, *ai;
    int e = getaddrinfo(h, colon + 1, &hints, &ai);
    if (e != 0) {
        fail("smfi_opensocket", "%s: %s", L.listen, gai_strerror(e));
        return MI_FAILURE;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, 0), one = 1, rc = MI_FAILURE;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            rc = MI_SUCCESS;
        else
            fail("smfi_opensocket", "cannot bind %s: %s", L.listen, strerror(errno));
        close(fd);
    }
    freeaddrinfo(ai);
    return rc;
}

int smfi_settimeout(int t)
{
    (void)t; /* the gateway enforces per-event deadlines; gRPC keeps the connection */
    return MI_SUCCESS;
}

int smfi_setbacklog(int n)
{
    return n > 0 ? MI_SUCCESS : MI_FAILURE; /* gRPC sizes its own listen queue */
}

int smfi_setdbg(int level)
{
    L.dbg = level;
    return MI_SUCCESS;
}

size_t smfi_setmaxdatasize(size_t sz)
{
    (void)sz; /* no milter packets here: the gateway sizes the body chunks */
    return MILTER_MAX_DATA_SIZE;
}

int smfi_version(unsigned int *major, unsigned int *minor, unsigned int *patch)
{
    if (major)
        *major = SM_LM_VRS_MAJOR(SMFI_VERSION);
    if (minor)
        *minor = SM_LM_VRS_MINOR(SMFI_VERSION);
    if (patch)
        *patch = SM_LM_VRS_PLVL(SMFI_VERSION);
    return MI_SUCCESS;
}

int smfi_stop(void)
{
    mgw_filter_stop();
    return MI_SUCCESS;
}

/* The protocol steps implied by the callbacks: no event for a missing callback. */
static unsigned long default_protocol(void)
{
    const struct smfiDesc *d = &L.d;
    unsigned long p = 0;
    p |= d->xxfi_connect ? 0 : SMFIP_NOCONNECT;
    p |= d->xxfi_helo ? 0 : SMFIP_NOHELO;
    p |= d->xxfi_envfrom ? 0 : SMFIP_NOMAIL;
    p |= d->xxfi_envrcpt ? 0 : SMFIP_NORCPT;
    p |= d->xxfi_header ? 0 : SMFIP_NOHDRS;
    p |= d->xxfi_eoh ? 0 : SMFIP_NOEOH;
    p |= d->xxfi_body ? 0 : SMFIP_NOBODY;
    p |= d->xxfi_unknown ? 0 : SMFIP_NOUNKNOWN;
    p |= d->xxfi_data ? 0 : SMFIP_NODATA;
    return p;
}

static int negotiate(void)
{
    L.actions = L.d.xxfi_flags;
    L.protocol = default_protocol();
    if (L.d.xxfi_negotiate == NULL)
        return 0;
    struct smfi_str ctx = {.negotiating = true};
    unsigned long f0 = SMFI_CURR_ACTS, f1 = PROTO_OFFER, p0 = 0, p1 = 0, p2 = 0, p3 = 0;
    sfsistat st = L.d.xxfi_negotiate(&ctx, f0, f1, 0, 0, &p0, &p1, &p2, &p3);
    if (st == SMFIS_ALL_OPTS)
        return 0;
    if (st != SMFIS_CONTINUE) {
        fail("xxfi_negotiate", "answered %d: the filter would refuse every connection", st);
        return -1;
    }
    if (p0 & ~f0) {
        fail("xxfi_negotiate", "asks for actions 0x%lx, which are not supported", p0 & ~f0);
        return -1;
    }
    if (p1 & ~f1) {
        fail("xxfi_negotiate", "asks for protocol steps 0x%lx, which are not supported", p1 & ~f1);
        return -1;
    }
    L.actions = p0;
    L.protocol = p1 | default_protocol();
    return 0;
}

/* Builds mgw_filter's declaration from the actions and protocol steps in force. */
static int describe(void)
{
    static const struct {
        enum mgw_event ev;
        unsigned long no, nr; /* SMFIP_NO*: not sent; SMFIP_NR_*: no reply */
    } steps[] = {
        {MGW_CONNECT, SMFIP_NOCONNECT, SMFIP_NR_CONN},
        {MGW_HELO, SMFIP_NOHELO, SMFIP_NR_HELO},
        {MGW_MAIL, SMFIP_NOMAIL, SMFIP_NR_MAIL},
        {MGW_RCPT, SMFIP_NORCPT, SMFIP_NR_RCPT},
        {MGW_DATA, SMFIP_NODATA, SMFIP_NR_DATA},
        {MGW_HEADER, SMFIP_NOHDRS, SMFIP_NR_HDR},
        {MGW_EOH, SMFIP_NOEOH, SMFIP_NR_EOH},
        {MGW_BODY, SMFIP_NOBODY, SMFIP_NR_BODY},
        {MGW_EOM, 0, 0},
        {MGW_UNKNOWN, SMFIP_NOUNKNOWN, SMFIP_NR_UNKN},
    };
    static const struct {
        unsigned long flag;
        unsigned bit;
    } acts[] = {
        {SMFIF_ADDHDRS, MGW_ACTION_BIT(ADD_HEADER)},
        {SMFIF_CHGHDRS, MGW_ACTION_BIT(CHANGE_HEADER)},
        {SMFIF_CHGBODY, MGW_ACTION_BIT(REPLACE_BODY)},
        {SMFIF_ADDRCPT, MGW_ACTION_BIT(ADD_RCPT)},
        {SMFIF_ADDRCPT_PAR, MGW_ACTION_BIT(ADD_RCPT_WITH_ARGS)},
        {SMFIF_DELRCPT, MGW_ACTION_BIT(DELETE_RCPT)},
        {SMFIF_QUARANTINE, MGW_ACTION_BIT(QUARANTINE)},
        {SMFIF_CHGFROM, MGW_ACTION_BIT(CHANGE_FROM)},
    };
    struct mgw_filter *f = &L.f;
    bool has_eom = L.d.xxfi_eom != NULL;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        bool wanted = steps[i].ev == MGW_EOM ? has_eom : !(L.protocol & steps[i].no);
        if (!wanted)
            continue;
        f->events |= MGW_EVENT_BIT(steps[i].ev);
        if (L.protocol & steps[i].nr)
            f->observe_only |= MGW_EVENT_BIT(steps[i].ev);
    }
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        if (L.actions & acts[i].flag)
            f->actions |= acts[i].bit;
    for (int st = 0; st < N_STAGES; st++) {
        if (L.symlist[st] == NULL)
            continue;
        if (!(L.actions & SMFIF_SETSYMLIST)) {
            fail("smfi_setsymlist", "used without SMFIF_SETSYMLIST in the filter's actions");
            return -1;
        }
        f->macros[stage_event[st]] = L.symlist[st];
    }
    f->rejected_recipients = (L.protocol & SMFIP_RCPT_REJ) != 0;
    f->header_leading_space = (L.protocol & SMFIP_HDR_LEADSPC) != 0;
    if (f->rejected_recipients || f->header_leading_space)
        fprintf(stderr,
                "libmiltergw-milter: note: %s%s%s asked for; the gateway may not grant "
                "it (SessionStart.effective says)\n",
                f->rejected_recipients ? "SMFIP_RCPT_REJ" : "",
                f->rejected_recipients && f->header_leading_space ? " and " : "",
                f->header_leading_space ? "SMFIP_HDR_LEADSPC" : "");
    return 0;
}

int smfi_main(void)
{
    if (!L.registered) {
        fail("smfi_main", "smfi_register was not called (or failed)");
        return MI_FAILURE;
    }
    if (L.listen == NULL) {
        fail("smfi_main", "smfi_setconn was not called (or failed)");
        return MI_FAILURE;
    }
    if (negotiate() != 0 || describe() != 0)
        return MI_FAILURE;
    struct mgw_filter *f = &L.f;
    f->listen = L.listen;
    f->name = L.d.xxfi_name;
    f->version = "libmiltergw-milter";
    f->on_event = on_event;
    f->on_close = on_close;
    f->state_size = sizeof(struct smfi_str);
    f->threads = 2;
    f->session_threads = true;
    f->drain_seconds = DRAIN_SECS;
    if (L.dbg > 0)
        fprintf(stderr, "libmiltergw-milter: %s serving miltergw.v1.Filter on %s\n", f->name,
                f->listen);
    return mgw_filter_run(f) == 0 ? MI_SUCCESS : MI_FAILURE;
}

/* ---- inside callbacks -------------------------------------------------------------------- */

char *smfi_getsymval(SMFICTX *ctx, char *name)
{
    if (ctx == NULL || name == NULL)
        return NULL;
    for (int st = N_STAGES - 1; st >= 0; st--) /* the latest stage first */
        for (size_t i = 0; i < ctx->n_mac[st]; i++)
            if (macro_eq(ctx->mac[st][i].name, name))
                return ctx->mac[st][i].value;
    return NULL;
}

int smfi_setpriv(SMFICTX *ctx, void *priv)
{
    if (ctx == NULL || ctx->negotiating)
        return MI_FAILURE;
    ctx->priv = priv;
    return MI_SUCCESS;
}

void *smfi_getpriv(SMFICTX *ctx)
{
    return ctx ? ctx->priv : NULL;
}

int smfi_setsymlist(SMFICTX *ctx, int stage, char *macros)
{
    if (ctx == NULL || !ctx->negotiating) {
        fail("smfi_setsymlist", "only valid inside xxfi_negotiate");
        return MI_FAILURE;
    }
    if (stage < SMFIM_FIRST || stage > SMFIM_LAST || macros == NULL || macros[0] == '\0')
        return MI_FAILURE;
    /* SMFIM_* numbers the stages connect, helo, mail, rcpt, data, eom, eoh */
    static const int to_stage[] = {0, 1, 2, 3, 4, 6, 5};
    int st = to_stage[stage];
    if (L.symlist[st] != NULL)
        return MI_FAILURE; /* once per stage, as in libmilter */
    L.symlist[st] = xstrdup(macros);
    return MI_SUCCESS;
}

static bool reply_code_ok(const char *rcode)
{
    return rcode && strlen(rcode) == 3 && (rcode[0] == '4' || rcode[0] == '5') &&
           strspn(rcode, "0123456789") == 3;
}

/* xcode "C.N.N": its class must be the code's */
static bool xcode_ok(const char *rcode, const char *xcode)
{
    if (xcode == NULL || xcode[0] == '\0')
        return true;
    unsigned a, b, c;
    int end = 0;
    return sscanf(xcode, "%u.%u.%u%n", &a, &b, &c, &end) == 3 && xcode[end] == '\0' &&
           a == (unsigned)(rcode[0] - '0');
}

static bool text_ok(const char *t)
{
    return t == NULL || strpbrk(t, "\r\n") == NULL;
}

int smfi_setreply(SMFICTX *ctx, char *rcode, char *xcode, char *message)
{
    if (ctx == NULL || ctx->r == NULL || !reply_code_ok(rcode) || !xcode_ok(rcode, xcode) ||
        !text_ok(message))
        return MI_FAILURE;
    reply_reset(ctx);
    ctx->code = (unsigned)atoi(rcode);
    ctx->xcode = xcode && xcode[0] ? xstrdup(xcode) : NULL;
    ctx->text = message && message[0] ? xstrdup(message) : NULL;
    return MI_SUCCESS;
}

int smfi_setmlreply(SMFICTX *ctx, const char *rcode, const char *xcode, ...)
{
    if (ctx == NULL || ctx->r == NULL || !reply_code_ok(rcode) || !xcode_ok(rcode, xcode))
        return MI_FAILURE;
    const char *lines[MAX_LINES + 1];
    size_t n = 0, len = 0;
    va_list ap;
    va_start(ap, xcode);
    for (const char *l; (l = va_arg(ap, const char *)) != NULL;) {
        if (n == MAX_LINES || !text_ok(l)) {
            va_end(ap);
            return MI_FAILURE;
        }
        lines[n++] = l;
        len += strlen(l) + 1;
    }
    va_end(ap);
    reply_reset(ctx);
    ctx->code = (unsigned)atoi(rcode);
    ctx->xcode = xcode && xcode[0] ? xstrdup(xcode) : NULL;
    if (n) {
        char *p = ctx->text = xmalloc(len);
        for (size_t i = 0; i < n; i++)
            p += sprintf(p, i + 1 < n ? "%s\n" : "%s", lines[i]);
    }
    return MI_SUCCESS;
}

/* A modification is allowed inside xxfi_eom, with its flag in force. */
static bool may_modify(SMFICTX *ctx, unsigned long flag)
{
    return ctx && ctx->in_eom && ctx->r && (L.actions & flag);
}

int smfi_addheader(SMFICTX *ctx, char *name, char *value)
{
    if (!may_modify(ctx, SMFIF_ADDHDRS) || name == NULL || value == NULL || name[0] == '\0')
        return MI_FAILURE;
    mgw_reply_add_header(ctx->r, name, value);
    return MI_SUCCESS;
}

int smfi_insheader(SMFICTX *ctx, int index, char *name, char *value)
{
    if (!may_modify(ctx, SMFIF_ADDHDRS) || index < 0 || name == NULL || value == NULL ||
        name[0] == '\0')
        return MI_FAILURE;
    mgw_reply_insert_header(ctx->r, (unsigned)index, name, value);
    return MI_SUCCESS;
}

int smfi_chgheader(SMFICTX *ctx, char *name, int index, char *value)
{
    if (!may_modify(ctx, SMFIF_CHGHDRS) || index < 0 || name == NULL || name[0] == '\0')
        return MI_FAILURE;
    mgw_reply_change_header(ctx->r, name, (unsigned)index, value); /* NULL deletes */
    return MI_SUCCESS;
}

int smfi_chgfrom(SMFICTX *ctx, char *from, char *args)
{
    if (!may_modify(ctx, SMFIF_CHGFROM) || from == NULL || from[0] == '\0')
        return MI_FAILURE;
    mgw_reply_change_from_args(ctx->r, from, args);
    return MI_SUCCESS;
}

int smfi_addrcpt(SMFICTX *ctx, char *rcpt)
{
    if (!may_modify(ctx, SMFIF_ADDRCPT) || rcpt == NULL || rcpt[0] == '\0')
        return MI_FAILURE;
    mgw_reply_add_rcpt(ctx->r, rcpt);
    return MI_SUCCESS;
}

int smfi_addrcpt_par(SMFICTX *ctx, char *rcpt, char *args)
{
    if (!may_modify(ctx, SMFIF_ADDRCPT_PAR) || rcpt == NULL || rcpt[0] == '\0')
        return MI_FAILURE;
    mgw_reply_add_rcpt_args(ctx->r, rcpt, args);
    return MI_SUCCESS;
}

int smfi_delrcpt(SMFICTX *ctx, char *rcpt)
{
    if (!may_modify(ctx, SMFIF_DELRCPT) || rcpt == NULL || rcpt[0] == '\0')
        return MI_FAILURE;
    mgw_reply_delete_rcpt(ctx->r, rcpt);
    return MI_SUCCESS;
}

int smfi_replacebody(SMFICTX *ctx, unsigned char *body, int len)
{
    if (!may_modify(ctx, SMFIF_CHGBODY) || len < 0 || (body == NULL && len > 0))
        return MI_FAILURE;
    /* libmilter sends each call as one more piece of the new body */
    unsigned char *nb = realloc(ctx->body, ctx->body_len + (size_t)len + 1);
    if (nb == NULL)
        return MI_FAILURE;
    ctx->body = nb;
    if (len)
        memcpy(ctx->body + ctx->body_len, body, (size_t)len);
    ctx->body_len += (size_t)len;
    ctx->body_set = true;
    return MI_SUCCESS;
}

int smfi_quarantine(SMFICTX *ctx, char *reason)
{
    if (!may_modify(ctx, SMFIF_QUARANTINE) || reason == NULL || reason[0] == '\0')
        return MI_FAILURE;
    mgw_reply_quarantine(ctx->r, reason);
    return MI_SUCCESS;
}

int smfi_progress(SMFICTX *ctx)
{
    if (ctx == NULL || ctx->s == NULL || ctx->r == NULL)
        return MI_FAILURE;
    return mgw_session_progress(ctx->s) == 0 ? MI_SUCCESS : MI_FAILURE;
}
