/*
 * policy_filter.c - example miltergw filter: one small mail policy, chosen on the command line.
 * SPDX-License-Identifier: Apache-2.0
 *
 * usage: policy_filter [OPTIONS] POLICY [ARGS...]
 *   --listen HOST:PORT, --threads N, --session-threads: how it serves (mgw_filter.h);
 *   --multiplexed: many connections per Session stream; then it prints a line when each
 *     session starts and ends, naming its stream;
 *   --delay-mail ADDR MS: a message from ADDR waits MS ms at MAIL FROM (a slow check).
 * Prints "port=N" once listening (port 0 picks one); exits 0 on SIGTERM/SIGINT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mgw_filter.h"

#define EV(e)        MGW_EVENT_BIT(MGW_##e)
#define ACT(a)       MGW_ACTION_BIT(a)
#define IS(n)        (strcmp(policy->name, (n)) == 0)
#define MACRO_EVENTS (EV(CONNECT) | EV(MAIL) | EV(RCPT) | EV(DATA) | EV(EOH))

/* Each policy declares only the events and actions it needs. */
static const struct policy {
    const char *name;
    int nargs;
    unsigned events, observe_only, actions;
} policies[] = {
    {"accept", 0, EV(CONNECT), 0, 0},
    {"reject-subject", 1, EV(HEADER) | EV(EOM), EV(HEADER), 0},
    {"tempfail-rcpt", 1, EV(RCPT), 0, 0},
    {"addheader", 2, EV(EOM), 0, ACT(ADD_HEADER)},
    {"rewrite-body", 1, EV(EOM), 0, ACT(REPLACE_BODY)},
    {"quarantine", 1, EV(EOM), 0, ACT(QUARANTINE)},
    {"chgfrom", 1, EV(EOM), 0, ACT(CHANGE_FROM)},
    {"addrcpt", 1, EV(EOM), 0, ACT(ADD_RCPT)},
    {"delrcpt", 1, EV(RCPT) | EV(EOM), EV(RCPT), ACT(DELETE_RCPT)},
    {"discard", 0, EV(EOM), 0, 0},
    /* Observe-only events are never answered: the MTA need not wait for us there. */
    {"macros", 0, MACRO_EVENTS | EV(EOM), MACRO_EVENTS, ACT(ADD_HEADER)},
};
static const struct policy *policy;
static char *arg1, *arg2;
static const char *delay_addr; /* --delay-mail */
static long delay_ms;
static int log_sessions; /* --multiplexed: show which stream carries each session */

/* Per session. Everything but Connect's macros is about the current message. */
struct session {
    int hit;        /* reject-subject: the Subject holds the word */
    char rcpt[256]; /* delrcpt: the recipient as it arrived ("" = none) */
    struct macro {  /* macros: each distinct one seen, Connect's first (n_conn) */
        char name[64], value[256];
    } m[32];
    size_t n, n_conn;
};

/* Equal ignoring case and angle brackets. */
static int addr_eq(const char *a, const char *b)
{
    a += *a == '<', b += *b == '<';
    size_t la = strcspn(a, ">"), lb = strcspn(b, ">");
    return la == lb && strncasecmp(a, b, la) == 0;
}

/* Does a header value contain `word` in any case? Unfolding drops the line breaks. */
static int contains(const ProtobufCBinaryData *v, const char *word)
{
    char *s = calloc(1, v->len + 1), *p = s;
    for (size_t i = 0; i < v->len; i++)
        if (v->data[i] != '\r' && v->data[i] != '\n')
            *p++ = (char)v->data[i];
    int found = 0;
    for (p = s; *p && !found; p++)
        found = strncasecmp(p, word, strlen(word)) == 0;
    free(s);
    return found;
}

static void remember(struct session *st, const Miltergw__V1__Event *ev)
{
    for (size_t i = 0, k; i < ev->n_macros; i++) {
        for (k = 0; k < st->n && strcmp(st->m[k].name, ev->macros[i]->key) != 0; k++)
            ;
        if (k == sizeof st->m / sizeof st->m[0])
            continue; /* no room: forget this one */
        st->n += k == st->n;
        snprintf(st->m[k].name, sizeof st->m[k].name, "%s", ev->macros[i]->key);
        snprintf(st->m[k].value, sizeof st->m[k].value, "%s", ev->macros[i]->value);
    }
}

static void forget_message(struct session *st)
{
    st->hit = 0, st->rcpt[0] = '\0', st->n = st->n_conn;
}

/* Stands for a slow check (a DNS lookup, a scanner). With --session-threads only this
 * session waits; each second a PROGRESS restarts the gateway's deadline. */
static void delay(struct mgw_session *s)
{
    if (log_sessions) {
        printf("delay session=%s stream=%lu ms=%ld\n", mgw_session_id(s), mgw_session_stream(s),
               delay_ms);
        fflush(stdout);
    }
    for (long left = delay_ms; left > 0; left -= 1000) {
        long ms = left < 1000 ? left : 1000;
        struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
        while (nanosleep(&t, &t) != 0)
            ;
        if (left > 1000)
            mgw_session_progress(s); /* -1 without session threads: then the gateway waits */
    }
}

static void on_close(struct mgw_session *s)
{
    if (log_sessions) {
        printf("end session=%s stream=%lu\n", mgw_session_id(s), mgw_session_stream(s));
        fflush(stdout);
    }
}

static void on_event(struct mgw_session *s, const Miltergw__V1__Event *ev, struct mgw_reply *r)
{
    struct session *st = mgw_session_state(s);
    enum mgw_event kind = mgw_event_kind(ev);

    if (kind == MGW_START && log_sessions) {
        printf("start session=%s stream=%lu\n", mgw_session_id(s), mgw_session_stream(s));
        fflush(stdout);
    }
    if (kind == MGW_MAIL && delay_addr && addr_eq(ev->mail->address, delay_addr))
        delay(s);
    if (kind == MGW_ABORT || kind == MGW_MAIL) { /* a new message, or none */
        forget_message(st);
        if (kind == MGW_ABORT)
            return;
    }
    if (IS("macros"))
        remember(st, ev);
    if (kind == MGW_CONNECT) {
        st->n_conn = st->n;
        if (IS("accept"))
            mgw_reply_verdict(r, MGW_ACCEPT); /* and hear no more of this connection */
    }
    if (kind == MGW_HEADER && strcasecmp(ev->header->name, "Subject") == 0)
        st->hit |= contains(&ev->header->value, arg1);
    if (kind == MGW_RCPT && (IS("tempfail-rcpt") || IS("delrcpt")) &&
        addr_eq(ev->rcpt->address, arg1)) {
        snprintf(st->rcpt, sizeof st->rcpt, "%s", ev->rcpt->address);
        if (IS("tempfail-rcpt"))
            mgw_reply_tempfail(r, 451, "4.7.1", "Recipient temporarily refused");
    }
    if (kind != MGW_EOM)
        return;
    if (st->hit)
        mgw_reply_reject(r, 550, "5.7.1", "Subject contains forbidden word");
    if (IS("addheader"))
        mgw_reply_add_header(r, arg1, arg2);
    if (IS("rewrite-body"))
        mgw_reply_replace_body(r, arg1, strlen(arg1));
    if (IS("quarantine"))
        mgw_reply_quarantine(r, arg1);
    if (IS("chgfrom"))
        mgw_reply_change_from(r, arg1);
    if (IS("addrcpt"))
        mgw_reply_add_rcpt(r, arg1);
    if (IS("delrcpt") && st->rcpt[0])
        mgw_reply_delete_rcpt(r, st->rcpt);
    if (IS("discard"))
        mgw_reply_verdict(r, MGW_DISCARD);
    for (size_t i = 0; i < st->n; i++) { /* "{mail_addr}" -> X-Macro-mail_addr */
        char name[128], *m = st->m[i].name + (st->m[i].name[0] == '{');
        snprintf(name, sizeof name, "X-Macro-%.*s", (int)strcspn(m, "}"), m);
        mgw_reply_add_header(r, name, st->m[i].value);
    }
    forget_message(st);
}

int main(int argc, char **argv)
{
    struct mgw_filter f = {.listen = "127.0.0.1:50051",
                           .name = "c-policy-example",
                           .on_event = on_event,
                           .on_close = on_close,
                           .state_size = sizeof(struct session),
                           .print_port = 1};
    int i = 1, bad = 0;
    for (; i < argc && !bad && strncmp(argv[i], "--", 2) == 0; i++)
        if (strcmp(argv[i], "--multiplexed") == 0)
            f.multiplexed = true, log_sessions = 1;
        else if (strcmp(argv[i], "--session-threads") == 0)
            f.session_threads = true;
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            f.listen = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            f.threads = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--delay-mail") == 0 && i + 2 < argc)
            delay_addr = argv[i + 1], delay_ms = atol(argv[i + 2]), i += 2;
        else
            bad = 1;
    for (size_t k = 0; !bad && i < argc && k < sizeof policies / sizeof policies[0]; k++)
        if (strcmp(argv[i], policies[k].name) == 0 && argc - i - 1 == policies[k].nargs)
            policy = &policies[k];
    if (policy == NULL) {
        fputs("usage: policy_filter [--listen HOST:PORT] [--threads N] [--session-threads]\n"
              "         [--multiplexed] [--delay-mail ADDR MS] POLICY [ARGS...]\n"
              "POLICY: accept | reject-subject WORD | tempfail-rcpt ADDR | addheader NAME VALUE\n"
              "  | rewrite-body TEXT | quarantine REASON | chgfrom ADDR | addrcpt ADDR\n"
              "  | delrcpt ADDR | discard | macros\n",
              stderr);
        return 2;
    }
    arg1 = argv[i + 1], arg2 = policy->nargs > 1 ? argv[i + 2] : NULL;
    if (IS("rewrite-body")) { /* the new body: one line, ending in CRLF */
        arg1 = malloc(strlen(argv[i + 1]) + 3);
        sprintf(arg1, "%s\r\n", argv[i + 1]);
    }
    f.events = policy->events, f.observe_only = policy->observe_only, f.actions = policy->actions;
    if (delay_addr) { /* the MTA must wait for that answer */
        f.events |= EV(MAIL);
        f.observe_only &= ~EV(MAIL);
    }
    if (IS("macros")) { /* Postfix replaces its default lists with these */
        f.macros[MGW_CONNECT] = "j {daemon_name} {daemon_addr} v _";
        f.macros[MGW_MAIL] = "{mail_addr} {mail_host} {mail_mailer}";
        f.macros[MGW_RCPT] = "{rcpt_addr} {rcpt_host} {rcpt_mailer}";
        f.macros[MGW_DATA] = f.macros[MGW_EOH] = f.macros[MGW_EOM] = "i";
    }
    return mgw_filter_run(&f);
}
