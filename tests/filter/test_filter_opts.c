/*
 * test_filter_opts.c - command-line flags of the test filter.
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Turns argv into the immutable `struct tf_opts tf`, including the prebuilt protobuf-c
 * modification messages sent with every EOM answer and the Description answered to
 * Describe. No gRPC here. Bad usage prints a reason and exits 2.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "test_filter.h"

struct tf_opts tf;

static const char *const stage_names[TF_NSTAGES] = {
    "connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom", "unknown",
};

static const struct {
    const char *name;
    Miltergw__V1__Action action;
} action_names[] = {
    {"add-header", MILTERGW__V1__ACTION__ACTION_ADD_HEADER},
    {"change-header", MILTERGW__V1__ACTION__ACTION_CHANGE_HEADER},
    {"replace-body", MILTERGW__V1__ACTION__ACTION_REPLACE_BODY},
    {"add-rcpt", MILTERGW__V1__ACTION__ACTION_ADD_RCPT},
    {"del-rcpt", MILTERGW__V1__ACTION__ACTION_DELETE_RCPT},
    {"delete-rcpt", MILTERGW__V1__ACTION__ACTION_DELETE_RCPT},
    {"quarantine", MILTERGW__V1__ACTION__ACTION_QUARANTINE},
    {"change-from", MILTERGW__V1__ACTION__ACTION_CHANGE_FROM},
    {"add-rcpt-args", MILTERGW__V1__ACTION__ACTION_ADD_RCPT_WITH_ARGS},
    {"add-rcpt-with-args", MILTERGW__V1__ACTION__ACTION_ADD_RCPT_WITH_ARGS},
};

#define ACTION_BIT(a) (1u << (unsigned)(a))

static const char usage_text[] =
    "usage: mgw_test_filter [FLAGS]\n"
    "A miltergw.v1.Filter gRPC server whose behaviour is set by flags (tests, benchmarks).\n"
    "Prints \"port=N\" as its first stdout line once listening (port=0 for unix:PATH).\n"
    "SIGTERM/SIGINT: clean exit 0. It answers the events it wants and does not observe\n"
    "(as declared, or as SessionStart.effective says when the gateway sends it).\n"
    "\n"
    "STAGE is one of: connect helo mail rcpt data header eoh body eom unknown.\n"
    "LIST is STAGEs separated by commas, or \"all\" or \"none\". Flags marked + repeat.\n"
    "In VALUE and TEXT arguments \\n \\r \\t \\\\ and \\xHH are unescaped.\n"
    "\n"
    "Server:\n"
    "  --listen ADDR           127.0.0.1:PORT (0 = pick one; the default is 127.0.0.1:0),\n"
    "                          [::1]:PORT, or unix:PATH\n"
    "  --record FILE           append one line per event received (see below)\n"
    "  --tls-cert FILE --tls-key FILE\n"
    "                          serve TLS with this PEM certificate (chain) and key\n"
    "  --tls-client-ca FILE    with TLS: require a client certificate and verify it\n"
    "                          against these PEM roots (mutual TLS)\n"
    "Declaration (Describe):\n"
    "  --name N                filter name (default test-filter)\n"
    "  --filter-version V      filter version (default: miltergw's)\n"
    "  --events LIST           events wanted (default all)\n"
    "  --observe LIST          events declared observe-only: received, never answered\n"
    "  --actions LIST          declared actions, comma separated: add-header change-header\n"
    "                          replace-body add-rcpt add-rcpt-args del-rcpt change-from\n"
    "                          quarantine, or none (default: what the flags below need)\n"
    "  --macros STAGE:NAMES +  macros wanted at STAGE (connect helo mail rcpt data eoh eom),\n"
    "                          NAMES separated by commas, e.g. mail:i,{mail_addr}\n"
    "  --rcpt-rej              also want recipients the MTA rejected\n"
    "  --leadspc               want header values with their leading space\n"
    "  --multiplexed           declare multiplexed streams: one Session stream carries the\n"
    "                          sessions of many connections (Event.session), each ended by\n"
    "                          its Event.end; every reply names its event's session. The\n"
    "                          flags below act per connection (session), except where said\n"
    "Verdicts (everything else is answered CONTINUE, EOM included):\n"
    "  --accept-at LIST        ACCEPT at these stages\n"
    "  --reject-at LIST        REJECT at these stages\n"
    "  --tempfail-at LIST      TEMPFAIL at these stages\n"
    "  --discard-at LIST       DISCARD at these stages\n"
    "  --reject-rcpt ADDR +    REJECT only this recipient (<> and case ignored)\n"
    "  --tempfail-rcpt ADDR +  TEMPFAIL only this recipient (<> and case ignored)\n"
    "  --code N --xcode X.Y.Z --text TEXT (+, one per line)\n"
    "                          SMTP response sent with REJECT/TEMPFAIL (default: none)\n"
    "  --skip-body             answer SKIP to body chunks\n"
    "  --only-from ADDR +      verdicts from MAIL on (rcpt lists included), delays,\n"
    "                          --progress and modifications apply only to messages whose\n"
    "                          MAIL FROM is ADDR (<> and case ignored); other messages,\n"
    "                          and connect/helo before the first MAIL, get CONTINUE at once\n"
    "  (precedence at one stage: rcpt lists, discard, reject, tempfail, accept, skip)\n"
    "Modifications (sent, in flag order, with the final EOM answer):\n"
    "  --add-header NAME:VALUE +\n"
    "  --insert-header IDX:NAME:VALUE +\n"
    "  --change-header NAME:IDX:VALUE +   (empty VALUE deletes)\n"
    "  --replace-body TEXT\n"
    "  --change-from 'ADDR [ARG...]'\n"
    "  --add-rcpt 'ADDR [ARG...]' +        (with ARGs: needs add-rcpt-args)\n"
    "  --del-rcpt ADDR +\n"
    "  --quarantine REASON\n"
    "Timing and faults:\n"
    "  --delay-ms N            wait N ms before each final answer (other sessions go on)\n"
    "  --delay-at LIST         stages the delay applies to (default all)\n"
    "  --progress              send one PROGRESS reply before the final EOM answer (at once,\n"
    "                          so before the delay)\n"
    "  --no-batches            declare no batches: get every event alone and send every\n"
    "                          reply alone (by default replies due together go as one)\n"
    "  --never-answer LIST     at the first such event stop answering for the rest of the\n"
    "                          connection (keep receiving and recording)\n"
    "  --crash-at LIST         _exit(70) when such an event arrives (after recording it):\n"
    "                          the whole process, every stream and session\n"
    "  --fail-at LIST          end the stream with --fail-status when such an event arrives:\n"
    "                          the whole stream, with --multiplexed every session on it\n"
    "  --fail-status CODE:TEXT the status of --fail-at (default 13:test filter failed)\n"
    "  --bogus-reply           answer every event with an event_id it never got (id+1000000)\n"
    "  --bogus-at LIST         the same, only at these stages\n"
    "  --twice-at LIST         answer such events twice (the second reply is one no event\n"
    "                          is owed)\n"
    "  --control FILE          on SIGUSR1 read FILE (words, all optional): delay-ms=N adds\n"
    "                          N ms to every final answer from then on (0: none), bogus=1\n"
    "                          answers every event with a wrong event_id (0: off),\n"
    "                          health=serving|not-serving sets what grpc.health.v1 Check\n"
    "                          and Watch answer (serving from the start); then prints\n"
    "                          \"control delay-ms=N bogus=B health=H\" on stdout\n"
    "Echo (for soak tests):\n"
    "  --echo-header NAME:SRC  at EOM add header NAME whose value is the message's last\n"
    "                          SRC header (case ignored; not added if there was none)\n"
    "  -h, --help\n"
    "\n"
    "Record lines (one write(2) each, O_APPEND; safe to share a file between filters):\n"
    "  ID KIND session=SID [mux=N call=C] DETAILS... m.MACRO=VALUE...\n"
    "  KIND and DETAILS: start filter= gateway= mta_version= mta_actions= mta_protocol=\n"
    "  version= actions= protocol= leadspc= | connect host= family= addr= port= | helo name=\n"
    "  | mail addr= arg=... | rcpt addr= rejected=0|1 arg=... | data | header name= value=\n"
    "  | eoh | body len= data= | eom | abort | unknown cmd=\n"
    "  and, with ID \"-\": describe gateway= filter=, close how=halfclose|cancelled|end\n"
    "  [reason=R].\n"
    "  With --multiplexed, lines of a session also have mux=N (its Event.session) and\n"
    "  call=C (the Session call carrying it, numbered from 1 in this process), its\n"
    "  Event.end is recorded as close how=end (reason=R if the gateway gave up on it), and\n"
    "  when a stream ends, each session still open on it gets close how=halfclose|cancelled.\n"
    "  Otherwise a stream is one connection: its end is its close how=halfclose|cancelled.\n"
    "  Values: bytes outside 0x21-0x7e, and backslash, are written as \\xHH.\n";

static void usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "mgw_test_filter: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see --help)\n");
    exit(2);
}

/* Unescapes \n \r \t \\ \xHH in place; returns the new length (the result may hold NULs). */
static size_t unescape(char *s)
{
    char *out = s;
    const char *in = s;
    while (*in) {
        if (in[0] != '\\' || in[1] == '\0') {
            *out++ = *in++;
            continue;
        }
        switch (in[1]) {
        case 'n':
            *out++ = '\n';
            in += 2;
            break;
        case 'r':
            *out++ = '\r';
            in += 2;
            break;
        case 't':
            *out++ = '\t';
            in += 2;
            break;
        case '\\':
            *out++ = '\\';
            in += 2;
            break;
        case 'x': {
            char hex[3] = {in[2], in[2] ? in[3] : '\0', '\0'};
            char *end;
            unsigned long v = strtoul(hex, &end, 16);
            if (end != hex + 2)
                usage_error("bad \\x escape in \"%s\"", s);
            *out++ = (char)v;
            in += 4;
            break;
        }
        default: *out++ = *in++; break;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* Cuts s at the first `sep`; returns what follows it, or NULL if there is no `sep`. */
static char *cut(char *s, char sep)
{
    char *p = strchr(s, sep);
    if (p == NULL)
        return NULL;
    *p = '\0';
    return p + 1;
}

static int stage_by_name(const char *name)
{
    for (unsigned st = 0; st < TF_NSTAGES; st++)
        if (strcmp(name, stage_names[st]) == 0)
            return (int)st;
    return -1;
}

static unsigned parse_stage_list(const char *arg, const char *flag)
{
    unsigned mask = 0;
    char *copy = strdup(arg);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        int st = stage_by_name(tok);
        if (strcmp(tok, "all") == 0)
            mask |= TF_ALL_STAGES;
        else if (strcmp(tok, "none") == 0)
            ;
        else if (st >= 0)
            mask |= TF_BIT(st);
        else {
            fprintf(stderr, "mgw_test_filter: %s: unknown stage \"%s\"\n", flag, tok);
            free(copy);
            exit(2);
        }
    }
    free(copy);
    return mask;
}

static unsigned parse_action_list(const char *arg)
{
    unsigned mask = 0;
    char *copy = strdup(arg);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        size_t i;
        if (strcmp(tok, "none") == 0)
            continue;
        for (i = 0; i < sizeof action_names / sizeof action_names[0]; i++)
            if (strcmp(tok, action_names[i].name) == 0)
                break;
        if (i == sizeof action_names / sizeof action_names[0]) {
            fprintf(stderr, "mgw_test_filter: --actions: unknown action \"%s\"\n", tok);
            free(copy);
            exit(2);
        }
        mask |= ACTION_BIT(action_names[i].action);
    }
    free(copy);
    return mask;
}

static unsigned parse_uint(const char *arg, const char *flag, unsigned long max)
{
    char *end;
    unsigned long v = strtoul(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || *arg == '-' || v > max)
        usage_error("bad number for %s", flag);
    return (unsigned)v;
}

static struct tf_mod *new_mod(const char *arg, Miltergw__V1__Modification__ModificationCase c)
{
    if (tf.n_mods == TF_MAX_LIST)
        usage_error("too many modifications (at %s)", arg);
    struct tf_mod *m = &tf.mods[tf.n_mods];
    tf.mod_ptrs[tf.n_mods++] = &m->m;
    miltergw__v1__modification__init(&m->m);
    m->m.modification_case = c;
    m->copy = strdup(arg);
    return m;
}

/* "ADDR [ARG...]": address and ESMTP args split on spaces, into m->copy. */
static size_t split_addr_args(struct tf_mod *m, char **addr)
{
    size_t n = 0;
    char *save = NULL;
    *addr = strtok_r(m->copy, " ", &save);
    if (*addr == NULL)
        usage_error("empty address in \"%s\"", "");
    for (char *tok = strtok_r(NULL, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (n == TF_MAX_LIST)
            usage_error("too many ESMTP args for %s", *addr);
        m->args[n++] = tok;
    }
    return n;
}

static void add_header_mod(const char *arg, int kind)
{
    struct tf_mod *m;
    char *name, *idx, *value;
    ProtobufCBinaryData bin;

    if (kind == 0) { /* NAME:VALUE */
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER);
        name = m->copy;
        value = cut(name, ':');
        idx = NULL;
    } else if (kind == 1) { /* IDX:NAME:VALUE */
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER);
        idx = m->copy;
        name = cut(idx, ':');
        value = name ? cut(name, ':') : NULL;
    } else { /* NAME:IDX:VALUE */
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER);
        name = m->copy;
        idx = cut(name, ':');
        value = idx ? cut(idx, ':') : NULL;
    }
    /* An empty NAME is allowed: tests use it to send the gateway a bad modification. */
    if (name == NULL || value == NULL)
        usage_error("bad header modification \"%s\"", arg);
    bin.len = unescape(value);
    bin.data = (uint8_t *)value;
    switch (kind) {
    case 0:
        miltergw__v1__add_header__init(&m->u.add_header);
        m->u.add_header.name = name;
        m->u.add_header.value = bin;
        m->m.add_header = &m->u.add_header;
        break;
    case 1:
        miltergw__v1__insert_header__init(&m->u.insert_header);
        m->u.insert_header.index = parse_uint(idx, "--insert-header", UINT32_MAX);
        m->u.insert_header.name = name;
        m->u.insert_header.value = bin;
        m->m.insert_header = &m->u.insert_header;
        break;
    default:
        miltergw__v1__change_header__init(&m->u.change_header);
        m->u.change_header.index = parse_uint(idx, "--change-header", UINT32_MAX);
        m->u.change_header.name = name;
        m->u.change_header.value = bin;
        m->m.change_header = &m->u.change_header;
        break;
    }
}

static void add_macros(const char *arg)
{
    if (tf.n_macro_copies == TF_MAX_LIST)
        usage_error("too many --macros (at %s)", arg);
    char *copy = strdup(arg);
    tf.macro_copies[tf.n_macro_copies++] = copy;
    char *names = cut(copy, ':');
    int st = stage_by_name(copy);
    if (names == NULL || st < 0 || st == TF_HEADER || st == TF_BODY || st == TF_UNKNOWN)
        usage_error("bad --macros \"%s\" (want STAGE:NAMES)", arg);
    Miltergw__V1__MacroRequest *r = &tf.macro_req[st];
    char *save = NULL;
    for (char *tok = strtok_r(names, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        if (r->n_names == TF_MAX_LIST)
            usage_error("too many macros for \"%s\"", arg);
        tf.macro_names[st][r->n_names++] = tok;
    }
}

enum {
    O_LISTEN = 256,
    O_NAME,
    O_FVERSION,
    O_RECORD,
    O_EVENTS,
    O_OBSERVE,
    O_ACTIONS,
    O_MACROS,
    O_RCPT_REJ,
    O_LEADSPC,
    O_ACCEPT,
    O_REJECT,
    O_TEMPFAIL,
    O_DISCARD,
    O_REJECT_RCPT,
    O_TEMPFAIL_RCPT,
    O_CODE,
    O_XCODE,
    O_TEXT,
    O_SKIP_BODY,
    O_ADD_HEADER,
    O_INSERT_HEADER,
    O_CHANGE_HEADER,
    O_REPLACE_BODY,
    O_CHANGE_FROM,
    O_ADD_RCPT,
    O_DEL_RCPT,
    O_QUARANTINE,
    O_DELAY,
    O_DELAY_AT,
    O_PROGRESS,
    O_NO_BATCHES,
    O_NEVER,
    O_CRASH,
    O_FAIL_AT,
    O_FAIL_STATUS,
    O_BOGUS,
    O_BOGUS_AT,
    O_TWICE_AT,
    O_TLS_CERT,
    O_TLS_KEY,
    O_TLS_CLIENT_CA,
    O_ONLY_FROM,
    O_CONTROL,
    O_ECHO_HEADER,
    O_MULTIPLEXED,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, O_LISTEN},
    {"name", required_argument, NULL, O_NAME},
    {"filter-version", required_argument, NULL, O_FVERSION},
    {"record", required_argument, NULL, O_RECORD},
    {"events", required_argument, NULL, O_EVENTS},
    {"observe", required_argument, NULL, O_OBSERVE},
    {"actions", required_argument, NULL, O_ACTIONS},
    {"macros", required_argument, NULL, O_MACROS},
    {"rcpt-rej", no_argument, NULL, O_RCPT_REJ},
    {"leadspc", no_argument, NULL, O_LEADSPC},
    {"accept-at", required_argument, NULL, O_ACCEPT},
    {"reject-at", required_argument, NULL, O_REJECT},
    {"tempfail-at", required_argument, NULL, O_TEMPFAIL},
    {"discard-at", required_argument, NULL, O_DISCARD},
    {"reject-rcpt", required_argument, NULL, O_REJECT_RCPT},
    {"tempfail-rcpt", required_argument, NULL, O_TEMPFAIL_RCPT},
    {"code", required_argument, NULL, O_CODE},
    {"xcode", required_argument, NULL, O_XCODE},
    {"text", required_argument, NULL, O_TEXT},
    {"skip-body", no_argument, NULL, O_SKIP_BODY},
    {"add-header", required_argument, NULL, O_ADD_HEADER},
    {"insert-header", required_argument, NULL, O_INSERT_HEADER},
    {"change-header", required_argument, NULL, O_CHANGE_HEADER},
    {"replace-body", required_argument, NULL, O_REPLACE_BODY},
    {"change-from", required_argument, NULL, O_CHANGE_FROM},
    {"add-rcpt", required_argument, NULL, O_ADD_RCPT},
    {"del-rcpt", required_argument, NULL, O_DEL_RCPT},
    {"quarantine", required_argument, NULL, O_QUARANTINE},
    {"delay-ms", required_argument, NULL, O_DELAY},
    {"delay-at", required_argument, NULL, O_DELAY_AT},
    {"progress", no_argument, NULL, O_PROGRESS},
    {"no-batches", no_argument, NULL, O_NO_BATCHES},
    {"never-answer", required_argument, NULL, O_NEVER},
    {"crash-at", required_argument, NULL, O_CRASH},
    {"fail-at", required_argument, NULL, O_FAIL_AT},
    {"fail-status", required_argument, NULL, O_FAIL_STATUS},
    {"bogus-reply", no_argument, NULL, O_BOGUS},
    {"bogus-at", required_argument, NULL, O_BOGUS_AT},
    {"twice-at", required_argument, NULL, O_TWICE_AT},
    {"tls-cert", required_argument, NULL, O_TLS_CERT},
    {"tls-key", required_argument, NULL, O_TLS_KEY},
    {"tls-client-ca", required_argument, NULL, O_TLS_CLIENT_CA},
    {"only-from", required_argument, NULL, O_ONLY_FROM},
    {"control", required_argument, NULL, O_CONTROL},
    {"echo-header", required_argument, NULL, O_ECHO_HEADER},
    {"multiplexed", no_argument, NULL, O_MULTIPLEXED},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The modifications other than headers. */
static void add_simple_mod(const char *arg, int opt)
{
    struct tf_mod *m;
    char *addr;
    switch (opt) {
    case O_REPLACE_BODY:
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY);
        miltergw__v1__replace_body__init(&m->u.replace_body);
        m->u.replace_body.body.len = unescape(m->copy);
        m->u.replace_body.body.data = (uint8_t *)m->copy;
        m->m.replace_body = &m->u.replace_body;
        break;
    case O_CHANGE_FROM:
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM);
        miltergw__v1__change_from__init(&m->u.change_from);
        m->u.change_from.n_args = split_addr_args(m, &addr);
        m->u.change_from.address = addr;
        m->u.change_from.args = m->args;
        m->m.change_from = &m->u.change_from;
        break;
    case O_ADD_RCPT:
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT);
        miltergw__v1__add_recipient__init(&m->u.add_rcpt);
        m->u.add_rcpt.n_args = split_addr_args(m, &addr);
        m->u.add_rcpt.address = addr;
        m->u.add_rcpt.args = m->args;
        m->m.add_recipient = &m->u.add_rcpt;
        break;
    case O_DEL_RCPT:
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT);
        miltergw__v1__delete_recipient__init(&m->u.del_rcpt);
        m->u.del_rcpt.address = m->copy;
        m->m.delete_recipient = &m->u.del_rcpt;
        break;
    default: /* O_QUARANTINE */
        m = new_mod(arg, MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE);
        miltergw__v1__quarantine__init(&m->u.quarantine);
        m->u.quarantine.reason = m->copy;
        m->m.quarantine = &m->u.quarantine;
        break;
    }
}

/* The actions the configured modifications need. */
static unsigned needed_actions(void)
{
    unsigned mask = 0;
    for (size_t i = 0; i < tf.n_mods; i++) {
        const Miltergw__V1__Modification *m = &tf.mods[i].m;
        switch (m->modification_case) {
        case MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER:
        case MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_ADD_HEADER);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_CHANGE_HEADER);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT:
            mask |= ACTION_BIT(m->add_recipient->n_args
                                   ? MILTERGW__V1__ACTION__ACTION_ADD_RCPT_WITH_ARGS
                                   : MILTERGW__V1__ACTION__ACTION_ADD_RCPT);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_DELETE_RCPT);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_CHANGE_FROM);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_REPLACE_BODY);
            break;
        case MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE:
            mask |= ACTION_BIT(MILTERGW__V1__ACTION__ACTION_QUARANTINE);
            break;
        default: break;
        }
    }
    return mask;
}

static void push_str(const char **list, size_t *n, const char *s, const char *flag)
{
    if (*n == TF_MAX_LIST)
        usage_error("too many %s", flag);
    list[(*n)++] = s;
}

void tf_opts_parse(int argc, char **argv)
{
    int opt;

    tf.listen = "127.0.0.1:0";
    tf.name = "test-filter";
    tf.filter_version = MGW_VERSION;
    tf.events = TF_ALL_STAGES;
    tf.delay_at = TF_ALL_STAGES;
    miltergw__v1__smtp_response__init(&tf.response);
    tf.response.lines = tf.response_lines;
    for (unsigned st = 0; st < TF_NSTAGES; st++) {
        miltergw__v1__macro_request__init(&tf.macro_req[st]);
        tf.macro_req[st].stage = (Miltergw__V1__EventType)(st + 1);
        tf.macro_req[st].names = tf.macro_names[st];
    }

    while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        switch (opt) {
        case O_LISTEN: tf.listen = optarg; break;
        case O_NAME: tf.name = optarg; break;
        case O_FVERSION: tf.filter_version = optarg; break;
        case O_RECORD: tf.record = optarg; break;
        case O_EVENTS: tf.events = parse_stage_list(optarg, "--events"); break;
        case O_OBSERVE: tf.observe = parse_stage_list(optarg, "--observe"); break;
        case O_ACTIONS:
            tf.actions_given = true;
            tf.actions = parse_action_list(optarg);
            break;
        case O_MACROS: add_macros(optarg); break;
        case O_RCPT_REJ: tf.rcpt_rej = true; break;
        case O_LEADSPC: tf.leadspc = true; break;
        case O_MULTIPLEXED: tf.multiplexed = true; break;
        case O_ACCEPT: tf.accept_at |= parse_stage_list(optarg, "--accept-at"); break;
        case O_REJECT: tf.reject_at |= parse_stage_list(optarg, "--reject-at"); break;
        case O_TEMPFAIL: tf.tempfail_at |= parse_stage_list(optarg, "--tempfail-at"); break;
        case O_DISCARD: tf.discard_at |= parse_stage_list(optarg, "--discard-at"); break;
        case O_REJECT_RCPT:
            push_str(tf.reject_rcpt, &tf.n_reject_rcpt, optarg, "--reject-rcpt");
            break;
        case O_TEMPFAIL_RCPT:
            push_str(tf.tempfail_rcpt, &tf.n_tempfail_rcpt, optarg, "--tempfail-rcpt");
            break;
        case O_CODE:
            tf.has_response = true;
            tf.response.code = parse_uint(optarg, "--code", 999);
            break;
        case O_XCODE:
            tf.has_response = true;
            tf.response.enhanced_status = optarg;
            break;
        case O_TEXT:
            tf.has_response = true;
            push_str((const char **)tf.response_lines, &tf.response.n_lines, optarg, "--text");
            break;
        case O_SKIP_BODY: tf.skip_body = true; break;
        case O_ADD_HEADER: add_header_mod(optarg, 0); break;
        case O_INSERT_HEADER: add_header_mod(optarg, 1); break;
        case O_CHANGE_HEADER: add_header_mod(optarg, 2); break;
        case O_REPLACE_BODY:
        case O_CHANGE_FROM:
        case O_ADD_RCPT:
        case O_DEL_RCPT:
        case O_QUARANTINE: add_simple_mod(optarg, opt); break;
        case O_DELAY: tf.delay_ms = parse_uint(optarg, "--delay-ms", 3600000); break;
        case O_DELAY_AT: tf.delay_at = parse_stage_list(optarg, "--delay-at"); break;
        case O_PROGRESS: tf.progress = true; break;
        case O_NO_BATCHES: tf.no_batches = true; break;
        case O_NEVER: tf.never_at |= parse_stage_list(optarg, "--never-answer"); break;
        case O_CRASH: tf.crash_at |= parse_stage_list(optarg, "--crash-at"); break;
        case O_FAIL_AT: tf.fail_at |= parse_stage_list(optarg, "--fail-at"); break;
        case O_FAIL_STATUS: {
            char *text = cut(optarg, ':');

            if (text == NULL)
                usage_error("--fail-status is CODE:TEXT, not \"%s\"", optarg);
            tf.fail_code = (int)parse_uint(optarg, "--fail-status", 16);
            text[unescape(text)] = '\0';
            tf.fail_details = text;
            break;
        }
        case O_BOGUS: tf.bogus_at = TF_ALL_STAGES; break;
        case O_BOGUS_AT: tf.bogus_at |= parse_stage_list(optarg, "--bogus-at"); break;
        case O_TWICE_AT: tf.twice_at |= parse_stage_list(optarg, "--twice-at"); break;
        case O_TLS_CERT: tf.tls_cert = optarg; break;
        case O_TLS_KEY: tf.tls_key = optarg; break;
        case O_TLS_CLIENT_CA: tf.tls_client_ca = optarg; break;
        case O_ONLY_FROM: push_str(tf.only_from, &tf.n_only_from, optarg, "--only-from"); break;
        case O_CONTROL: tf.control = optarg; break;
        case O_ECHO_HEADER: {
            free(tf.echo_copy);
            tf.echo_copy = strdup(optarg);
            tf.echo_src = cut(tf.echo_copy, ':');
            tf.echo_name = tf.echo_copy;
            if (tf.echo_src == NULL || *tf.echo_src == '\0' || *tf.echo_name == '\0')
                usage_error("bad --echo-header \"%s\" (want NAME:SRC)", optarg);
            break;
        }
        case 'h': fputs(usage_text, stdout); exit(0);
        default: fputs("(see --help)\n", stderr); exit(2);
        }
    }
    if (optind != argc)
        usage_error("unexpected argument \"%s\"", argv[optind]);
    if ((tf.tls_cert == NULL) != (tf.tls_key == NULL))
        usage_error("%s", "--tls-cert and --tls-key go together");
    if (tf.tls_client_ca != NULL && tf.tls_cert == NULL)
        usage_error("%s", "--tls-client-ca needs --tls-cert and --tls-key");
    tf.observe &= tf.events;
    if (!tf.actions_given)
        tf.actions = needed_actions() |
                     (tf.echo_name ? ACTION_BIT(MILTERGW__V1__ACTION__ACTION_ADD_HEADER) : 0);
    for (unsigned st = 0; st < TF_NSTAGES; st++)
        if (tf.macro_req[st].n_names > 0)
            tf.macro_ptrs[tf.n_macro_ptrs++] = &tf.macro_req[st];
}

void tf_opts_free(void)
{
    for (size_t i = 0; i < tf.n_mods; i++)
        free(tf.mods[i].copy);
    for (size_t i = 0; i < tf.n_macro_copies; i++)
        free(tf.macro_copies[i]);
    free(tf.echo_copy);
    memset(&tf, 0, sizeof tf);
    tf.fail_code = 13; /* INTERNAL */
    tf.fail_details = "test filter failed";
}

void tf_describe(Miltergw__V1__Description *d, Miltergw__V1__EventType *events,
                 Miltergw__V1__EventType *observe, Miltergw__V1__Action *actions)
{
    miltergw__v1__description__init(d);
    d->name = (char *)tf.name;
    d->version = (char *)tf.filter_version;
    d->events = events;
    d->observe_only = observe;
    for (unsigned st = 0; st < TF_NSTAGES; st++) {
        if (tf.events & TF_BIT(st))
            events[d->n_events++] = (Miltergw__V1__EventType)(st + 1);
        if (tf.observe & TF_BIT(st))
            observe[d->n_observe_only++] = (Miltergw__V1__EventType)(st + 1);
    }
    /* Wanting no event at all cannot be said with an empty list (it means all): declare
     * only UNSPECIFIED, which matches no event. */
    if (d->n_events == 0)
        events[d->n_events++] = MILTERGW__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    d->actions = actions;
    for (unsigned a = 1; a < 32; a++)
        if (tf.actions & ACTION_BIT(a))
            actions[d->n_actions++] = (Miltergw__V1__Action)a;
    d->macros = tf.macro_ptrs;
    d->n_macros = tf.n_macro_ptrs;
    d->rejected_recipients = tf.rcpt_rej;
    d->header_leading_space = tf.leadspc;
    d->batches = !tf.no_batches;
    d->multiplexed = tf.multiplexed;
}

const char *tf_stage_name(unsigned st)
{
    return st < TF_NSTAGES ? stage_names[st] : "?";
}

unsigned tf_stage_mask(const Miltergw__V1__EventType *types, size_t n, bool empty_is_all)
{
    unsigned mask = 0;
    if (n == 0)
        return empty_is_all ? TF_ALL_STAGES : 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned)types[i] >= 1 && (unsigned)types[i] <= (unsigned)TF_NSTAGES)
            mask |= TF_BIT(types[i] - 1);
    return mask;
}

int tf_addr_match(const char *got, const char *want)
{
    size_t gl = strlen(got), wl = strlen(want);
    if (gl >= 2 && got[0] == '<' && got[gl - 1] == '>')
        got++, gl -= 2;
    if (wl >= 2 && want[0] == '<' && want[wl - 1] == '>')
        want++, wl -= 2;
    return gl == wl && strncasecmp(got, want, gl) == 0;
}
