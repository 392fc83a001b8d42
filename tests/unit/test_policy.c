/*
 * test_policy.c - unit tests of the merge policy (verdicts, modifications, reply text,
 * negotiation union).
 *
 * Every table row is a sentence naming the behaviour it pins down. Failures are collected
 * per table and reported as "<case>: <field>: got X, want Y", so one run shows every broken
 * case. Modifications are compared as short renderings ("m2 Subject=new", "+ <a>") so a
 * table reads like the frames the MTA will get.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "table.h"

#include "mgw/error.h"
#include "mgw/policy.h"


#include "frames.h"

/* Filter answers, as table initializers. */
#define ANS(k)    .present = true, .state = MGW_POLICY_ANSWERED, .kind = MGW_VERDICT_##k
#define FAIL(k)   .present = true, .state = MGW_POLICY_FAILED, .kind = MGW_VERDICT_##k
#define ASKED_NOT .present = true, .state = MGW_POLICY_NOT_ASKED

#define ALLACTS MGW_SMFI_CURR_ACTS
#define EV(x)   MGW_POLICY_EV_##x
#define NONE    MGW_POLICY_NONE


static const char *kname(enum mgw_verdict_kind k)
{
    return mgw_verdict_name(k);
}

static long idx(size_t i)
{
    return i == NONE ? -1 : (long)i;
}

/* ---- Building answers from table rows ---- */

#define MAXF 4
#define MAXM 7

/* One filter in a table row; a row's filters end at the first one not `present`. mods
 * end at the first frame with cmd 0. */
struct fspec {
    bool present;
    enum mgw_policy_state state;
    enum mgw_verdict_kind kind;
    const char *reply;
    uint32_t actions;
    uint32_t receives;
    bool shadow;
    struct mgw_milter_msg mods[MAXM];
};

static size_t build(const struct fspec *f, size_t n, struct mgw_policy_answer *out)
{
    for (size_t i = 0; i < n; i++) {
        size_t m = 0;

        while (m < MAXM && f[i].mods[m].cmd != 0)
            m++;
        out[i] = (struct mgw_policy_answer){
            .state = f[i].state,
            .kind = f[i].kind,
            .reply = f[i].reply,
            .mods = f[i].mods,
            .nmods = m,
            .actions = f[i].actions,
            .receives = f[i].receives,
            .shadow = f[i].shadow,
        };
    }
    return n;
}

static size_t count_filters(const struct fspec *f)
{
    size_t n = 0;

    while (n < MAXF && f[n].present)
        n++;
    return n;
}

/* ---- Verdicts ---- */

/* Every pair of kinds between two filters at a body chunk (where skip is meaningful). */
static void test_every_rank_pair_has_the_expected_winner(void **state)
{
#define C MGW_VERDICT_CONTINUE
#define A MGW_VERDICT_ACCEPT
#define R MGW_VERDICT_REJECT
#define T MGW_VERDICT_TEMPFAIL
#define D MGW_VERDICT_DISCARD
#define K MGW_VERDICT_SKIP
    static const enum mgw_verdict_kind kinds[6] = {C, A, R, T, D, K};
    /* want[first][second], indexed like `kinds`: discard > reject > tempfail > continue >
     * skip > accept. Written out rather than computed, so the table is the spec. */
    static const enum mgw_verdict_kind want[6][6] = {
        /*        C  A  R  T  D  K */
        /* C */ {C, C, R, T, D, C},
        /* A */ {C, A, R, T, D, K},
        /* R */ {R, R, R, R, D, R},
        /* T */ {T, T, R, T, D, T},
        /* D */ {D, D, D, D, D, D},
        /* K */ {C, K, R, T, D, K},
    };
#undef C
#undef A
#undef R
#undef T
#undef D
#undef K

    (void)state;
    for (size_t a = 0; a < 6; a++) {
        for (size_t b = 0; b < 6; b++) {
            struct mgw_policy_answer ans[2] = {
                {.state = MGW_POLICY_ANSWERED, .kind = kinds[a]},
                {.state = MGW_POLICY_ANSWERED, .kind = kinds[b]},
            };
            struct mgw_policy_result r;
            size_t want_decider = want[a][b] == kinds[a] ? 0 : 1;
            char name[96];
            int rc = mgw_policy_merge('B', ans, 2, NULL, 0, NULL, 0, &r);

            snprintf(name, sizeof name, "%s then %s at a body chunk gives %s", kname(kinds[a]),
                     kname(kinds[b]), kname(want[a][b]));
            if (rc != 0)
                case_failed(name, "return: got %d, want 0", rc);
            else if (r.kind != want[a][b])
                case_failed(name, "kind: got %s, want %s", kname(r.kind), kname(want[a][b]));
            else if (r.decider != want_decider)
                case_failed(name, "decider: got %ld, want %zu", idx(r.decider), want_decider);
        }
    }
    end_table();
}

struct verdict_case {
    const char *name;
    uint8_t cmd;
    struct fspec f[MAXF];
    enum mgw_verdict_kind kind;
    size_t decider;
    const char *reply;
    size_t keeper;
    bool failure_applied;
};

static const struct verdict_case verdict_cases[] = {
    {"two rejects with different texts send the first filter's text",
     'M',
     {{ANS(REJECT), .reply = "550 5.7.1 first"}, {ANS(REJECT), .reply = "550 5.7.1 second"}},
     MGW_VERDICT_REJECT,
     0,
     "550 5.7.1 first",
     NONE,
     false},
    {"a tie goes to the first filter even when only the second has a text",
     'M',
     {{ANS(REJECT)}, {ANS(REJECT), .reply = "550 5.7.1 second"}},
     MGW_VERDICT_REJECT,
     0,
     NULL,
     NONE,
     false},
    {"a later, higher refusal beats an earlier lower one and brings its text",
     'R',
     {{ANS(TEMPFAIL), .reply = "451 4.7.1 later"}, {ANS(REJECT), .reply = "550 5.1.1 no"}},
     MGW_VERDICT_REJECT,
     1,
     "550 5.1.1 no",
     NONE,
     false},
    {"a reject at RCPT is merged like any refusal (the session scopes it to the recipient)",
     'R',
     {{ANS(CONTINUE)}, {ANS(REJECT), .reply = "550 5.1.1 unknown user"}},
     MGW_VERDICT_REJECT,
     1,
     "550 5.1.1 unknown user",
     NONE,
     false},
    {"a not-asked filter is neutral",
     'H',
     {{ASKED_NOT, .kind = MGW_VERDICT_REJECT}, {ANS(ACCEPT)}},
     MGW_VERDICT_ACCEPT,
     1,
     NULL,
     NONE,
     false},
    {"no filter asked gives continue",
     'M',
     {{ASKED_NOT}, {ASKED_NOT}},
     MGW_VERDICT_CONTINUE,
     NONE,
     NULL,
     NONE,
     false},
    {"no filter asked at end of message gives continue, which delivers",
     'E',
     {{ASKED_NOT}},
     MGW_VERDICT_CONTINUE,
     NONE,
     NULL,
     NONE,
     false},
    {"no filter configured gives continue",
     'C',
     {{0}},
     MGW_VERDICT_CONTINUE,
     NONE,
     NULL,
     NONE,
     false},
    {"every asked filter accepting gives accept",
     'M',
     {{ANS(ACCEPT)}, {ANS(ACCEPT)}, {ANS(ACCEPT)}},
     MGW_VERDICT_ACCEPT,
     0,
     NULL,
     NONE,
     false},
    {"accept and continue give continue",
     'M',
     {{ANS(ACCEPT)}, {ANS(CONTINUE)}},
     MGW_VERDICT_CONTINUE,
     1,
     NULL,
     NONE,
     false},
    {"skip and accept at a body chunk give skip",
     'B',
     {{ANS(SKIP)}, {ANS(ACCEPT)}},
     MGW_VERDICT_SKIP,
     0,
     NULL,
     NONE,
     false},
    {"skip outside a body chunk counts as continue",
     'N',
     {{ANS(ACCEPT)}, {ANS(SKIP)}},
     MGW_VERDICT_CONTINUE,
     1,
     NULL,
     NONE,
     false},
    {"skip everywhere outside a body chunk still is only continue",
     'M',
     {{ANS(SKIP)}, {ANS(SKIP)}},
     MGW_VERDICT_CONTINUE,
     0,
     NULL,
     NONE,
     false},
    {"a shadow filter's reject is ignored",
     'M',
     {{ANS(REJECT), .shadow = true, .reply = "550 5.7.1 shadow"}, {ANS(CONTINUE)}},
     MGW_VERDICT_CONTINUE,
     1,
     NULL,
     NONE,
     false},
    {"a shadow filter's discard is ignored even when alone",
     'E',
     {{ANS(DISCARD), .shadow = true}},
     MGW_VERDICT_CONTINUE,
     NONE,
     NULL,
     NONE,
     false},
    {"a failure policy that decides is flagged",
     'M',
     {{ANS(CONTINUE)}, {FAIL(TEMPFAIL)}},
     MGW_VERDICT_TEMPFAIL,
     1,
     NULL,
     NONE,
     true},
    {"a failure policy that loses is not flagged",
     'M',
     {{FAIL(ACCEPT)}, {ANS(CONTINUE)}},
     MGW_VERDICT_CONTINUE,
     1,
     NULL,
     NONE,
     false},
    {"a reply whose class differs from the verdict is not sent",
     'M',
     {{ANS(REJECT), .reply = "451 4.7.1 wrong class"}},
     MGW_VERDICT_REJECT,
     0,
     NULL,
     NONE,
     false},
    {"a reply text on a continue is not sent",
     'M',
     {{ANS(CONTINUE), .reply = "550 5.7.1 text"}},
     MGW_VERDICT_CONTINUE,
     0,
     NULL,
     NONE,
     false},
    {"a discard outranks a reject and sends no text",
     'T',
     {{ANS(REJECT), .reply = "550 5.7.1 no"}, {ANS(DISCARD), .reply = "550 5.7.1 x"}},
     MGW_VERDICT_DISCARD,
     1,
     NULL,
     NONE,
     false},
    /* Rule 4: accept and skip reach the MTA only if nobody needs what they cut off. */
    {"accept at RCPT becomes continue while another filter still wants EOM",
     'R',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(EOM)}},
     MGW_VERDICT_CONTINUE,
     0,
     NULL,
     1,
     false},
    {"accept at RCPT stays accept when the others are retired",
     'R',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = 0}},
     MGW_VERDICT_ACCEPT,
     0,
     NULL,
     NONE,
     false},
    {"accept at CONNECT becomes continue while another filter wants MAIL later",
     'C',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(MAIL)}},
     MGW_VERDICT_CONTINUE,
     0,
     NULL,
     1,
     false},
    {"accept at MAIL ignores a filter that wanted only CONNECT",
     'M',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(CONNECT)}},
     MGW_VERDICT_ACCEPT,
     0,
     NULL,
     NONE,
     false},
    {"accept at end of message stays accept: nothing follows",
     'E',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(ALL)}},
     MGW_VERDICT_ACCEPT,
     0,
     NULL,
     NONE,
     false},
    {"accept at a body chunk becomes skip when the other only wants EOM",
     'B',
     {{ANS(ACCEPT), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(EOM)}},
     MGW_VERDICT_SKIP,
     0,
     NULL,
     1,
     false},
    {"skip becomes continue while an observe-only filter wants body chunks",
     'B',
     {{ANS(SKIP), .receives = EV(ALL)}, {ASKED_NOT, .receives = EV(BODY) | EV(EOM)}},
     MGW_VERDICT_CONTINUE,
     0,
     NULL,
     1,
     false},
    {"a skipping filter's own later EOM does not block the skip",
     'B',
     {{ANS(SKIP), .receives = EV(BODY) | EV(EOM)}, {ANS(ACCEPT), .receives = EV(ALL)}},
     MGW_VERDICT_SKIP,
     0,
     NULL,
     NONE,
     false},
    {"a continuing shadow filter keeps the MTA sending instead of accepting",
     'R',
     {{ANS(CONTINUE), .shadow = true, .receives = EV(ALL)}, {ANS(ACCEPT), .receives = EV(ALL)}},
     MGW_VERDICT_CONTINUE,
     1,
     NULL,
     0,
     false},
    {"an accepting shadow filter does not hold back an accept",
     'R',
     {{ANS(ACCEPT), .shadow = true, .receives = EV(ALL)}, {ANS(ACCEPT), .receives = EV(ALL)}},
     MGW_VERDICT_ACCEPT,
     1,
     NULL,
     NONE,
     false},
};

/* Report the first of kind, decider, reply text and failure_applied that is not as
 * wanted; true if one was not. */
static bool result_differs(const char *name, const struct mgw_policy_result *r,
                           enum mgw_verdict_kind kind, size_t decider, const char *reply,
                           bool failure_applied)
{
    if (r->kind != kind)
        case_failed(name, "kind: got %s, want %s", kname(r->kind), kname(kind));
    else if (r->decider != decider)
        case_failed(name, "decider: got %ld, want %ld", idx(r->decider), idx(decider));
    else if ((r->reply == NULL) != (reply == NULL) || (r->reply && strcmp(r->reply, reply) != 0))
        case_failed(name, "reply: got %s, want %s", str_or_null(r->reply), str_or_null(reply));
    else if (r->failure_applied != failure_applied)
        case_failed(name, "failure_applied: got %d, want %d", r->failure_applied,
                    failure_applied);
    else
        return false;
    return true;
}

static void test_verdicts_follow_the_merge_rule(void **state)
{
    (void)state;
    for (size_t c = 0; c < NELEM(verdict_cases); c++) {
        const struct verdict_case *t = &verdict_cases[c];
        struct mgw_policy_answer ans[MAXF];
        struct mgw_policy_result r;
        size_t n = build(t->f, count_filters(t->f), ans);
        int rc = mgw_policy_merge(t->cmd, ans, n, NULL, 0, NULL, 0, &r);

        if (rc != 0)
            case_failed(t->name, "return: got %d, want 0", rc);
        else if (!result_differs(t->name, &r, t->kind, t->decider, t->reply, t->failure_applied) &&
                 r.keeper != t->keeper)
            case_failed(t->name, "keeper: got %ld, want %ld", idx(r.keeper), idx(t->keeper));
    }
    end_table();
}

/* ---- Pipelined content: the fate of a message from deferred refusals (rule 7) ---- */

#define REFUSED(id, c, st, k, text) {id, c, MGW_POLICY_##st, MGW_VERDICT_##k, text}

struct fate_case {
    const char *name;
    struct mgw_policy_deferred d[MAXF];
    size_t n;
    bool fated;
    enum mgw_verdict_kind kind;
    size_t decider;
    const char *reply;
    bool failure_applied;
    uint8_t cmd;
};

static const struct fate_case fate_cases[] = {
    {"no refusal: no fate, the wait event merges as usual", {{0}}, 2, false,
     MGW_VERDICT_CONTINUE, 0, NULL, false, 0},
    {"one filter's refusal of a header decides, with its text",
     {{0}, REFUSED(7, 'L', ANSWERED, REJECT, "550 5.7.1 bad header")},
     2, true, MGW_VERDICT_REJECT, 1, "550 5.7.1 bad header", false, 'L'},
    {"the earliest refused event wins, not the highest rank",
     {REFUSED(9, 'B', ANSWERED, DISCARD, NULL), REFUSED(4, 'L', ANSWERED, TEMPFAIL, NULL)},
     2, true, MGW_VERDICT_TEMPFAIL, 1, NULL, false, 'L'},
    {"refusals of one event merge by rank",
     {REFUSED(5, 'N', ANSWERED, REJECT, NULL), REFUSED(5, 'N', ANSWERED, DISCARD, NULL)},
     2, true, MGW_VERDICT_DISCARD, 1, NULL, false, 'N'},
    {"equal refusals of one event: the first filter's text",
     {REFUSED(6, 'B', ANSWERED, REJECT, "550 5.7.1 first"),
      REFUSED(6, 'B', ANSWERED, REJECT, "550 5.7.1 second"),
      REFUSED(8, 'B', ANSWERED, DISCARD, NULL)},
     3, true, MGW_VERDICT_REJECT, 0, "550 5.7.1 first", false, 'B'},
    {"a filter that failed on an earlier event decides with its on_error verdict",
     {REFUSED(12, 'L', ANSWERED, REJECT, "550 5.7.1 late"), REFUSED(3, 'L', FAILED, TEMPFAIL, NULL)},
     2, true, MGW_VERDICT_TEMPFAIL, 1, NULL, true, 'L'},
    {"a text of the wrong class is not sent, as for any reject",
     {REFUSED(2, 'L', ANSWERED, REJECT, "451 4.7.1 wrong class")},
     1, true, MGW_VERDICT_REJECT, 0, NULL, false, 'L'},
};

static void test_pipelined_refusals_decide_as_strict_answers_would(void **state)
{
    (void)state;
    for (size_t c = 0; c < NELEM(fate_cases); c++) {
        const struct fate_case *t = &fate_cases[c];
        struct mgw_policy_result r;
        uint8_t cmd = 0;
        bool fated = mgw_policy_deferred_fate(t->d, t->n, &r, &cmd);

        if (fated != t->fated)
            case_failed(t->name, "fated: got %d, want %d", fated, t->fated);
        else if (!fated ||
                 result_differs(t->name, &r, t->kind, t->decider, t->reply, t->failure_applied))
            continue;
        else if (cmd != t->cmd)
            case_failed(t->name, "cmd: got %c, want %c", cmd, t->cmd);
        else if (r.nmods != 0)
            case_failed(t->name, "nmods: got %zu, want 0", r.nmods);
    }
    end_table();
}

/* What each verdict is, as the bridge asks: a refusal of the message (pipelined content,
 * rule 7), and whether it settles an event early (only a discard, which nothing outranks). */
static void test_verdict_predicates(void **state)
{
    static const struct {
        enum mgw_verdict_kind kind;
        bool refusal, final_early;
    } cases[] = {
        {MGW_VERDICT_CONTINUE, false, false}, {MGW_VERDICT_ACCEPT, false, false},
        {MGW_VERDICT_REJECT, true, false},    {MGW_VERDICT_TEMPFAIL, true, false},
        {MGW_VERDICT_DISCARD, true, true},    {MGW_VERDICT_SKIP, false, false},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        bool refusal = mgw_policy_refusal(cases[i].kind);
        bool early = mgw_policy_final_early(cases[i].kind);

        if (refusal != cases[i].refusal)
            case_failed("reject, tempfail and discard refuse the message", "%s: got %d, want %d",
                        kname(cases[i].kind), refusal, cases[i].refusal);
        if (early != cases[i].final_early)
            case_failed("only a discard, which nothing outranks, settles an event early",
                        "%s: got %d, want %d", kname(cases[i].kind), early, cases[i].final_early);
    }
    end_table();
}

static void test_answers_change_the_filter_liveness_per_stage(void **state)
{
    static const struct {
        const char *name;
        uint8_t cmd;
        enum mgw_verdict_kind kind;
        enum mgw_policy_effect want;
    } cases[] = {
        {"accept at connect retires the filter for the connection", 'C', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_CONNECTION},
        {"accept at helo retires the filter for the connection", 'H', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_CONNECTION},
        {"accept at mail retires the filter for the message", 'M', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at rcpt retires the filter for the message", 'R', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at data retires the filter for the message", 'T', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at a header retires the filter for the message", 'L', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at end of headers retires the filter for the message", 'N', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at a body chunk retires the filter for the message", 'B', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at end of message retires the filter for the message", 'E', MGW_VERDICT_ACCEPT,
         MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"accept at an unknown command retires the filter for the message, as Postfix does", 'U',
         MGW_VERDICT_ACCEPT, MGW_POLICY_EFFECT_RETIRE_MESSAGE},
        {"skip at a body chunk stops the body only", 'B', MGW_VERDICT_SKIP,
         MGW_POLICY_EFFECT_SKIP_BODY},
        {"skip at a header counts as continue", 'L', MGW_VERDICT_SKIP, MGW_POLICY_EFFECT_NONE},
        {"skip at end of message counts as continue", 'E', MGW_VERDICT_SKIP,
         MGW_POLICY_EFFECT_NONE},
        {"reject at rcpt refuses only that recipient", 'R', MGW_VERDICT_REJECT,
         MGW_POLICY_EFFECT_NONE},
        {"tempfail at rcpt refuses only that recipient", 'R', MGW_VERDICT_TEMPFAIL,
         MGW_POLICY_EFFECT_NONE},
        {"continue changes nothing", 'M', MGW_VERDICT_CONTINUE, MGW_POLICY_EFFECT_NONE},
        {"discard ends the message through the merged verdict, not per filter", 'M',
         MGW_VERDICT_DISCARD, MGW_POLICY_EFFECT_NONE},
        {"reject at connect ends the connection through the merged verdict", 'C',
         MGW_VERDICT_REJECT, MGW_POLICY_EFFECT_NONE},
        {"a non-event command has no effect", 'Q', MGW_VERDICT_ACCEPT, MGW_POLICY_EFFECT_NONE},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        enum mgw_policy_effect got = mgw_policy_effect(cases[i].cmd, cases[i].kind);

        if (got != cases[i].want)
            case_failed(cases[i].name, "got %d, want %d", got, cases[i].want);
    }
    end_table();
}

/* ---- Modifications ---- */

/* Short rendering of a frame, e.g. "m2 Subject=new", "2 <a> NOTIFY=NEVER". */
static const char *render(const struct mgw_milter_msg *m, char *buf, size_t cap)
{
    switch (m->cmd) {
    case 'h':
    case 'i':
    case 'm':
        if (m->cmd == 'h')
            snprintf(buf, cap, "h %s=%s", m->u.header.name.ptr, m->u.header.value.ptr);
        else
            snprintf(buf, cap, "%c%u %s=%s", m->cmd, (unsigned)m->u.header.index,
                     m->u.header.name.ptr, m->u.header.value.ptr);
        break;
    case 'b': snprintf(buf, cap, "b %.*s", (int)m->u.body.len, (const char *)m->u.body.data); break;
    case '+':
    case '-':
    case 'q': snprintf(buf, cap, "%c %s", m->cmd, m->u.text.ptr); break;
    case '2':
    case 'e':
        snprintf(buf, cap, "%c %s%s%s", m->cmd, m->u.rcpt.addr.ptr, m->u.rcpt.args.ptr ? " " : "",
                 m->u.rcpt.args.ptr ? m->u.rcpt.args.ptr : "");
        break;
    default: snprintf(buf, cap, "?%c", m->cmd); break;
    }
    return buf;
}

/* "a | b | c" from a list of renderings. */
static void join(char *out, size_t cap, const char *const *parts, size_t n)
{
    size_t o = 0;

    out[0] = '\0';
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? " | " : "", parts[i]);
}

struct mod_case {
    const char *name;
    uint8_t cmd;
    struct fspec f[MAXF];
    enum mgw_verdict_kind kind;
    const char *mods[12];  /* renderings of the frames to apply, in order */
    const char *drops[12]; /* "f<filter>m<mod>:<reason>", in (filter, mod) order */
};

static const struct mod_case mod_cases[] = {
    {"modifications of three filters come out headers, envelope, body, quarantine",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-A", "1"), ADDR("<a@x>")}},
      {ANS(ACCEPT), .actions = ALLACTS,
       .mods = {CHGH(1, "Subject", "new"), CHGF("<f@x>"), BODY("new body")}},
      {ANS(CONTINUE), .actions = ALLACTS,
       .mods = {INSH(0, "X-C", "3"), DELR("<d@x>"), QUAR("hold")}}},
     MGW_VERDICT_CONTINUE,
     {"m1 Subject=new", "i0 X-C=3", "h X-A=1", "e <f@x>", "- <d@x>", "+ <a@x>", "b new body",
      "q hold"},
     {NULL}},
    {"added headers keep filter order, then each filter's own order",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-1", "a"), ADDH("X-2", "b")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-3", "c")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-4", "d")}}},
     MGW_VERDICT_CONTINUE,
     {"h X-1=a", "h X-2=b", "h X-3=c", "h X-4=d"},
     {NULL}},
    {"changes of one header name come out in descending index so deletes shift nothing",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS,
       .mods = {CHGH(1, "Received", ""), CHGH(1, "Subject", "s")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGH(3, "Received", "")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGH(2, "received", "x")}}},
     MGW_VERDICT_CONTINUE,
     {"m3 Received=", "m2 received=x", "m1 Received=", "m1 Subject=s"},
     {NULL}},
    {"a second change of the same header occurrence is dropped (case-insensitive, 0 is 1)",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGH(0, "subject", "a")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGH(1, "SUBJECT", "")}}},
     MGW_VERDICT_CONTINUE,
     {"m0 subject=a"},
     {"f1m0:header_conflict"}},
    {"inserts come out in descending position, equal positions in filter order",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {INSH(0, "X-A", "a"), INSH(5, "X-B", "b")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {INSH(0, "X-C", "c"), INSH(2, "X-D", "d")}}},
     MGW_VERDICT_CONTINUE,
     {"i5 X-B=b", "i2 X-D=d", "i0 X-A=a", "i0 X-C=c"},
     {NULL}},
    {"undeclared actions are dropped and the declared ones applied",
     'E',
     {{ANS(CONTINUE), .actions = MGW_SMFIF_ADDHDRS,
       .mods = {ADDH("X-A", "1"), BODY("x"), CHGF("<f@x>"), QUAR("r"), CHGH(1, "S", "v")}}},
     MGW_VERDICT_CONTINUE,
     {"h X-A=1"},
     {"f0m1:undeclared_action", "f0m2:undeclared_action", "f0m3:undeclared_action",
      "f0m4:undeclared_action"}},
    {"header names that are no RFC 5322 field name are dropped as invalid; the rest applies",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS,
       .mods = {CHGH(1, "", "x"), ADDH("X-Good", "1"), ADDH("Bad Name", "2"), INSH(0, "X:Y", "3"),
                ADDH("X-\x7f", "4"), ADDH("X-\xe9", "5")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {QUAR("held")}}},
     MGW_VERDICT_CONTINUE,
     {"h X-Good=1", "q held"},
     {"f0m0:invalid", "f0m2:invalid", "f0m3:invalid", "f0m4:invalid", "f0m5:invalid"}},
    {"an add-recipient without args is re-framed for the action the filter declared",
     'E',
     {{ANS(CONTINUE), .actions = MGW_SMFIF_ADDRCPT_PAR, .mods = {ADDR("<a@x>")}},
      {ANS(CONTINUE), .actions = MGW_SMFIF_ADDRCPT, .mods = {ADDRP0("<b@x>")}},
      {ANS(CONTINUE), .actions = MGW_SMFIF_ADDRCPT, .mods = {ADDRP("<c@x>", "NOTIFY=NEVER")}}},
     MGW_VERDICT_CONTINUE,
     {"2 <a@x>", "+ <b@x>"},
     {"f2m0:undeclared_action"}},
    {"the first body replacement wins and keeps all its chunks",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-A", "1")}},
      {ANS(CONTINUE), .actions = ALLACTS,
       .mods = {BODY("c1"), BODY("c2"), ADDH("X-B", "2"), BODY("c3")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {BODY("d1"), BODY("d2")}}},
     MGW_VERDICT_CONTINUE,
     {"h X-A=1", "h X-B=2", "b c1", "b c2", "b c3"},
     {"f2m0:body_conflict", "f2m1:body_conflict"}},
    {"a body nobody may replace does not block the next filter's body",
     'E',
     {{ANS(CONTINUE), .actions = MGW_SMFIF_ADDHDRS, .mods = {BODY("x")}},
      {ANS(CONTINUE), .actions = MGW_SMFIF_CHGBODY, .mods = {BODY("y")}}},
     MGW_VERDICT_CONTINUE,
     {"b y"},
     {"f0m0:undeclared_action"}},
    {"only the first change of sender and the first quarantine apply",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGF("<a@x>")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {CHGF("<b@x>"), QUAR("r1")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {QUAR("r2")}}},
     MGW_VERDICT_CONTINUE,
     {"e <a@x>", "q r1"},
     {"f1m0:from_conflict", "f2m0:quarantine_conflict"}},
    {"a recipient deleted or added twice is changed once",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {DELR("<x@x>"), ADDR("<y@x>")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {DELR("<x@x>"), ADDRP("<y@x>", "NOTIFY=NEVER")}}},
     MGW_VERDICT_CONTINUE,
     {"- <x@x>", "+ <y@x>"},
     {"f1m0:duplicate_recipient", "f1m1:duplicate_recipient"}},
    {"a shadow filter's verdict and modifications are ignored",
     'E',
     {{ANS(REJECT), .shadow = true, .actions = ALLACTS, .mods = {ADDH("X-S", "1"), BODY("s")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X-A", "1")}}},
     MGW_VERDICT_CONTINUE,
     {"h X-A=1"},
     {"f0m0:shadow", "f0m1:shadow"}},
    {"a shadow filter's body does not block another filter's body",
     'E',
     {{ANS(CONTINUE), .shadow = true, .actions = ALLACTS, .mods = {BODY("s")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {BODY("real")}}},
     MGW_VERDICT_CONTINUE,
     {"b real"},
     {"f0m0:shadow"}},
    {"modifications are dropped when the message is rejected",
     'E',
     {{ANS(REJECT), .actions = ALLACTS, .mods = {ADDH("X", "1")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {BODY("b")}}},
     MGW_VERDICT_REJECT,
     {NULL},
     {"f0m0:message_refused", "f1m0:message_refused"}},
    {"modifications are dropped when the message is discarded",
     'E',
     {{ANS(ACCEPT), .actions = ALLACTS, .mods = {ADDH("X", "1")}}, {ANS(DISCARD)}},
     MGW_VERDICT_DISCARD,
     {NULL},
     {"f0m0:message_refused"}},
    {"modifications are applied with an accept",
     'E',
     {{ANS(ACCEPT), .actions = ALLACTS, .mods = {ADDH("X", "1")}}},
     MGW_VERDICT_ACCEPT,
     {"h X=1"},
     {NULL}},
    {"modifications before end of message are dropped",
     'N',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("X", "1")}},
      {ANS(CONTINUE), .shadow = true, .actions = ALLACTS, .mods = {ADDH("Y", "1")}}},
     MGW_VERDICT_CONTINUE,
     {NULL},
     {"f0m0:not_end_of_message", "f1m0:not_end_of_message"}},
    {"a failed filter's modifications are not applied",
     'E',
     {{FAIL(ACCEPT), .actions = ALLACTS, .mods = {ADDH("X", "1")}},
      {ANS(CONTINUE), .actions = ALLACTS, .mods = {ADDH("Y", "2")}}},
     MGW_VERDICT_CONTINUE,
     {"h Y=2"},
     {"f0m0:filter_failed"}},
    {"a frame that is not a modification is dropped",
     'E',
     {{ANS(CONTINUE), .actions = ALLACTS, .mods = {NOTMOD, ADDH("X", "1")}}},
     MGW_VERDICT_CONTINUE,
     {"h X=1"},
     {"f0m0:invalid"}},
    {"a not-asked filter's modifications are ignored, not dropped",
     'E',
     {{ASKED_NOT, .actions = ALLACTS, .mods = {ADDH("X", "1")}},
      {ANS(CONTINUE), .actions = ALLACTS}},
     MGW_VERDICT_CONTINUE,
     {NULL},
     {NULL}},
};

static size_t count_strs(const char *const *s, size_t max)
{
    size_t n = 0;

    while (n < max && s[n] != NULL)
        n++;
    return n;
}

static void test_modifications_are_ordered_policed_and_deduplicated(void **state)
{
    (void)state;
    for (size_t c = 0; c < NELEM(mod_cases); c++) {
        const struct mod_case *t = &mod_cases[c];
        struct mgw_policy_answer ans[MAXF];
        struct mgw_milter_msg mods[16];
        struct mgw_policy_drop drops[16];
        struct mgw_policy_result r;
        char rend[16][160], got[2048], want[2048], one[160];
        const char *parts[16];
        size_t n = build(t->f, count_filters(t->f), ans), ndrops_by_reason = 0;
        int rc = mgw_policy_merge(t->cmd, ans, n, mods, NELEM(mods), drops, NELEM(drops), &r);

        if (rc != 0) {
            case_failed(t->name, "return: got %d, want 0", rc);
            continue;
        }
        if (r.kind != t->kind)
            case_failed(t->name, "kind: got %s, want %s", kname(r.kind), kname(t->kind));

        for (size_t i = 0; i < r.nmods; i++)
            parts[i] = render(&mods[i], rend[i], sizeof rend[i]);
        join(got, sizeof got, parts, r.nmods);
        join(want, sizeof want, t->mods, count_strs(t->mods, NELEM(t->mods)));
        if (strcmp(got, want) != 0)
            case_failed(t->name, "mods: got [%s], want [%s]", got, want);

        for (size_t i = 0; i < r.ndrops; i++) {
            snprintf(rend[i], sizeof rend[i], "f%zum%zu:%s", drops[i].filter, drops[i].mod,
                     mgw_policy_drop_name(drops[i].reason));
            parts[i] = rend[i];
            if (drops[i].msg != &ans[drops[i].filter].mods[drops[i].mod])
                case_failed(t->name, "drop %zu: msg does not point at the dropped frame", i);
        }
        join(got, sizeof got, parts, r.ndrops);
        join(want, sizeof want, t->drops, count_strs(t->drops, NELEM(t->drops)));
        if (strcmp(got, want) != 0)
            case_failed(t->name, "drops: got [%s], want [%s]", got, want);

        for (int k = 0; k < MGW_POLICY_DROP_COUNT; k++)
            ndrops_by_reason += r.dropped[k];
        if (ndrops_by_reason != r.ndrops || r.dropped[MGW_POLICY_KEPT] != 0) {
            snprintf(one, sizeof one, "%zu (kept %zu)", ndrops_by_reason,
                     r.dropped[MGW_POLICY_KEPT]);
            case_failed(t->name, "sum of dropped[]: got %s, want %zu (kept 0)", one, r.ndrops);
        }
    }
    end_table();
}

/* Each modification frame needs exactly its action: refused with every other action,
 * applied with its own. */
static void test_each_modification_needs_its_declared_action(void **state)
{
    static const struct {
        const char *name;
        struct mgw_milter_msg mod;
        uint32_t action;
    } cases[] = {
        {"ADDHEADER needs ADDHDRS", ADDH("X", "1"), MGW_SMFIF_ADDHDRS},
        {"INSHEADER needs ADDHDRS", INSH(1, "X", "1"), MGW_SMFIF_ADDHDRS},
        {"CHGHEADER needs CHGHDRS", CHGH(1, "X", "1"), MGW_SMFIF_CHGHDRS},
        {"REPLBODY needs CHGBODY", BODY("b"), MGW_SMFIF_CHGBODY},
        {"ADDRCPT_PAR with args needs ADDRCPT_PAR", ADDRP("<a>", "NOTIFY=NEVER"),
         MGW_SMFIF_ADDRCPT_PAR},
        {"DELRCPT needs DELRCPT", DELR("<a>"), MGW_SMFIF_DELRCPT},
        {"CHGFROM needs CHGFROM", CHGF("<a>"), MGW_SMFIF_CHGFROM},
        {"QUARANTINE needs QUARANTINE", QUAR("r"), MGW_SMFIF_QUARANTINE},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        for (int with = 0; with < 2; with++) {
            struct mgw_policy_answer a = {
                .state = MGW_POLICY_ANSWERED,
                .kind = MGW_VERDICT_CONTINUE,
                .mods = &cases[i].mod,
                .nmods = 1,
                .actions = with ? cases[i].action : ALLACTS & ~cases[i].action,
            };
            struct mgw_policy_result r;
            int rc = mgw_policy_merge('E', &a, 1, NULL, 0, NULL, 0, &r);

            if (rc != 0 || r.nmods != (size_t)with ||
                r.dropped[MGW_POLICY_DROP_UNDECLARED] != (size_t)!with)
                case_failed(cases[i].name,
                            "%s the action: got rc %d nmods %zu undeclared %zu, "
                            "want rc 0 nmods %d undeclared %d",
                            with ? "with" : "without", rc, r.nmods,
                            r.dropped[MGW_POLICY_DROP_UNDECLARED], with, !with);
        }
    }
    end_table();
}

static void test_merge_arrays_count_and_report_overflow(void **state)
{
    static const struct mgw_milter_msg three[] = {ADDH("A", "1"), ADDH("B", "2"), BODY("x")};
    struct mgw_policy_answer a[2] = {
        {.state = MGW_POLICY_ANSWERED, .mods = three, .nmods = 3, .actions = MGW_SMFIF_ADDHDRS},
        {.state = MGW_POLICY_ANSWERED, .mods = three, .nmods = 1, .actions = MGW_SMFIF_ADDHDRS},
    };
    struct mgw_policy_answer bad_kind = {.state = MGW_POLICY_ANSWERED, .kind = 99};
    struct mgw_policy_answer bad_state = {.state = 7};
    struct mgw_milter_msg mods[2];
    struct mgw_policy_drop drops[1];
    struct mgw_policy_result r;
    char buf[64];
    int rc;

    (void)state;
    rc = mgw_policy_merge('E', a, 2, NULL, 0, NULL, 0, &r);
    if (rc != 0 || r.nmods != 3 || r.ndrops != 1)
        case_failed("a count-only pass counts everything",
                    "got rc %d nmods %zu ndrops %zu, "
                    "want rc 0 nmods 3 ndrops 1",
                    rc, r.nmods, r.ndrops);

    memset(mods, 0, sizeof mods);
    rc = mgw_policy_merge('E', a, 2, mods, 2, drops, 1, &r);
    if (rc != MGW_ENOSPACE || r.nmods != 3 ||
        strcmp(render(&mods[1], buf, sizeof buf), "h B=2") != 0)
        case_failed("a short mods array reports ENOSPACE and keeps the first entries",
                    "got rc %d nmods %zu mods[1] %s, want rc %d nmods 3 mods[1] h B=2", rc, r.nmods,
                    buf, MGW_ENOSPACE);

    rc = mgw_policy_merge('E', a, 2, NULL, 0, drops, 0, &r);
    if (rc != MGW_ENOSPACE || r.ndrops != 1)
        case_failed("a short drops array reports ENOSPACE", "got rc %d ndrops %zu, want %d 1", rc,
                    r.ndrops, MGW_ENOSPACE);

    rc = mgw_policy_merge('Q', a, 2, NULL, 0, NULL, 0, &r);
    if (rc != MGW_EINVAL)
        case_failed("a command that is no event is refused", "got %d, want %d", rc, MGW_EINVAL);
    rc = mgw_policy_merge('M', &bad_kind, 1, NULL, 0, NULL, 0, &r);
    if (rc != MGW_EINVAL)
        case_failed("an unknown verdict kind is refused", "got %d, want %d", rc, MGW_EINVAL);
    rc = mgw_policy_merge('M', &bad_state, 1, NULL, 0, NULL, 0, &r);
    if (rc != MGW_EINVAL)
        case_failed("an unknown answer state is refused", "got %d, want %d", rc, MGW_EINVAL);
    end_table();
}

static void test_drop_reasons_have_distinct_names(void **state)
{
    (void)state;
    for (int i = 0; i < MGW_POLICY_DROP_COUNT; i++) {
        const char *a = mgw_policy_drop_name(i);

        if (a == NULL || strcmp(a, "?") == 0)
            case_failed("every drop reason has a name", "%d: got %s, want a name", i,
                        a ? a : "NULL");
        for (int j = 0; j < i && a != NULL; j++) {
            if (strcmp(a, mgw_policy_drop_name(j)) == 0)
                case_failed("drop reason names are distinct", "%d and %d: got %s twice", j, i, a);
        }
    }
    if (strcmp(mgw_policy_drop_name(MGW_POLICY_DROP_COUNT), "?") != 0)
        case_failed("an out-of-range reason is named ?", "got %s, want ?",
                    mgw_policy_drop_name(MGW_POLICY_DROP_COUNT));
    end_table();
}

/* ---- SMTP reply text ---- */

static void test_replies_are_formatted_or_refused(void **state)
{
    static const struct {
        const char *name;
        unsigned code;
        const char *enhanced;
        const char *lines[4];
        size_t nlines;
        enum mgw_verdict_kind kind;
        ssize_t want_rc; /* > 0: strlen(want) */
        const char *want;
    } cases[] = {
        {"a single line has code, enhanced code and text",
         550,
         "5.7.1",
         {"go away"},
         1,
         MGW_VERDICT_REJECT,
         1,
         "550 5.7.1 go away"},
        {"a multi-line reply repeats the codes with dashes",
         550,
         "5.7.1",
         {"l1", "l2", "l3"},
         3,
         MGW_VERDICT_REJECT,
         1,
         "550-5.7.1 l1\r\n550-5.7.1 l2\r\n550 5.7.1 l3"},
        {"without an enhanced code the text follows the code",
         451,
         NULL,
         {"later", "really"},
         2,
         MGW_VERDICT_TEMPFAIL,
         1,
         "451-later\r\n451 really"},
        {"code 0 with a text takes 550 for a reject",
         0,
         "5.7.1",
         {"no"},
         1,
         MGW_VERDICT_REJECT,
         1,
         "550 5.7.1 no"},
        {"code 0 with a text takes 451 for a tempfail",
         0,
         "",
         {"later"},
         1,
         MGW_VERDICT_TEMPFAIL,
         1,
         "451 later"},
        {"no code, no enhanced code and no text is no custom reply",
         0,
         NULL,
         {NULL},
         0,
         MGW_VERDICT_REJECT,
         0,
         ""},
        {"no text gives the codes alone",
         554,
         "5.7.0",
         {NULL},
         0,
         MGW_VERDICT_REJECT,
         1,
         "554 5.7.0"},
        {"no text and no enhanced code keeps the separator Postfix requires",
         550,
         NULL,
         {NULL},
         0,
         MGW_VERDICT_REJECT,
         1,
         "550 "},
        {"percent signs are doubled",
         550,
         "5.7.1",
         {"100% spam, 5%s"},
         1,
         MGW_VERDICT_REJECT,
         1,
         "550 5.7.1 100%% spam, 5%%s"},
        {"421 with tempfail is allowed",
         421,
         "4.3.2",
         {"closing"},
         1,
         MGW_VERDICT_TEMPFAIL,
         1,
         "421 4.3.2 closing"},
        {"a 4xx code with a reject is refused",
         450,
         NULL,
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a 5xx code with a tempfail is refused",
         550,
         NULL,
         {"x"},
         1,
         MGW_VERDICT_TEMPFAIL,
         MGW_EINVAL,
         NULL},
        {"a 2xx code is refused", 250, NULL, {"x"}, 1, MGW_VERDICT_REJECT, MGW_EINVAL, NULL},
        {"a second digit above 5 is refused",
         560,
         NULL,
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"an enhanced code of another class is refused",
         550,
         "4.7.1",
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"an enhanced code with two parts is refused",
         550,
         "5.7",
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"an enhanced code with a four-digit part is refused",
         550,
         "5.1000.1",
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"an enhanced code with trailing junk is refused",
         550,
         "5.7.1x",
         {"x"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a line with LF is refused",
         550,
         "5.7.1",
         {"a\nb"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a line with CR is refused",
         550,
         "5.7.1",
         {"ok", "a\rb"},
         2,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a NULL line is refused",
         550,
         "5.7.1",
         {"ok", NULL},
         2,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a text starting with a digit of another class needs an enhanced code",
         550,
         NULL,
         {"4 attempts failed"},
         1,
         MGW_VERDICT_REJECT,
         MGW_EINVAL,
         NULL},
        {"a text starting with a digit is fine after an enhanced code",
         550,
         "5.7.1",
         {"4 attempts failed"},
         1,
         MGW_VERDICT_REJECT,
         1,
         "550 5.7.1 4 attempts failed"},
        {"a custom reply with an accept is refused",
         550,
         "5.7.1",
         {"x"},
         1,
         MGW_VERDICT_ACCEPT,
         MGW_EINVAL,
         NULL},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        char buf[256];
        ssize_t want_rc = cases[i].want_rc > 0 ? (ssize_t)strlen(cases[i].want) : cases[i].want_rc;
        ssize_t rc = mgw_policy_format_reply(cases[i].code, cases[i].enhanced, cases[i].lines,
                                             cases[i].nlines, cases[i].kind, buf, sizeof buf);

        if (rc != want_rc)
            case_failed(cases[i].name, "return: got %zd, want %zd", rc, want_rc);
        else if (rc >= 0 && strcmp(buf, cases[i].want) != 0)
            case_failed(cases[i].name, "text: got \"%s\", want \"%s\"", buf, cases[i].want);
    }
    end_table();
}

/* Line count, line length and buffer size limits, with generated input. */
static void test_reply_limits_are_enforced(void **state)
{
    static const struct {
        const char *name;
        size_t nlines, linelen;
        size_t cap_short; /* bytes less than the exact need */
        ssize_t want;     /* 0 = success (length checked against the computed one) */
    } cases[] = {
        {"32 lines are allowed", 32, 10, 0, 0},
        {"33 lines are refused", 33, 10, 0, MGW_EINVAL},
        {"a line of 980 characters is allowed", 1, 980, 0, 0},
        {"a line of 981 characters is refused", 1, 981, 0, MGW_EINVAL},
        {"32 lines of 980 characters fit an exactly sized buffer", 32, 980, 0, 0},
        {"a buffer one byte short is refused", 2, 10, 1, MGW_ENOSPACE},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        size_t n = cases[i].nlines, len = cases[i].linelen;
        char *text = malloc(len + 1);
        const char **lines = calloc(n, sizeof *lines);
        /* Each line: "550-5.7.1 " + text, joined by CRLF, plus the final NUL. */
        size_t need = n * (10 + len) + (n - 1) * 2 + 1;
        size_t cap = need - cases[i].cap_short;
        char *buf = malloc(cap);
        ssize_t rc;

        memset(text, 'x', len);
        text[len] = '\0';
        for (size_t l = 0; l < n; l++)
            lines[l] = text;
        rc = mgw_policy_format_reply(550, "5.7.1", lines, n, MGW_VERDICT_REJECT, buf, cap);
        if (cases[i].want == 0 && rc != (ssize_t)(need - 1))
            case_failed(cases[i].name, "got %zd, want %zu", rc, need - 1);
        else if (cases[i].want != 0 && rc != cases[i].want)
            case_failed(cases[i].name, "got %zd, want %zd", rc, cases[i].want);
        free(buf);
        free(lines);
        free(text);
    }
    end_table();
}

/* ---- Negotiation union ---- */

#define NO_ALL                                                                                     \
    (MGW_SMFIP_NOCONNECT | MGW_SMFIP_NOHELO | MGW_SMFIP_NOMAIL | MGW_SMFIP_NORCPT |                \
     MGW_SMFIP_NOBODY | MGW_SMFIP_NOHDRS | MGW_SMFIP_NOEOH | MGW_SMFIP_NOUNKNOWN |                 \
     MGW_SMFIP_NODATA)
#define NR_ALL                                                                                     \
    (MGW_SMFIP_NR_CONN | MGW_SMFIP_NR_HELO | MGW_SMFIP_NR_MAIL | MGW_SMFIP_NR_RCPT |               \
     MGW_SMFIP_NR_DATA | MGW_SMFIP_NR_UNKN | MGW_SMFIP_NR_EOH | MGW_SMFIP_NR_BODY |                \
     MGW_SMFIP_NR_HDR)

struct union_case {
    const char *name;
    struct mgw_policy_decl d[3];
    size_t n;
    uint32_t protocol;
    uint32_t actions;
    const char *symlist[MGW_STAGE_COUNT];
};

static const struct union_case union_cases[] = {
    {"no filter: every event off, every step unanswered, skip requested",
     {{0}},
     0,
     NO_ALL | NR_ALL | MGW_SMFIP_SKIP,
     0,
     {NULL}},
    {"events no filter wants are switched off and left unanswered",
     {{.events = EV(CONNECT) | EV(HELO) | EV(EOM)}, {.events = EV(MAIL) | EV(EOM)}},
     2,
     MGW_SMFIP_SKIP | MGW_SMFIP_NORCPT | MGW_SMFIP_NODATA | MGW_SMFIP_NOHDRS | MGW_SMFIP_NOEOH |
         MGW_SMFIP_NOBODY | MGW_SMFIP_NOUNKNOWN | MGW_SMFIP_NR_RCPT | MGW_SMFIP_NR_DATA |
         MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_EOH | MGW_SMFIP_NR_BODY | MGW_SMFIP_NR_UNKN,
     0,
     {NULL}},
    {"a step is unanswered only where every filter receiving it observes only",
     {{.events = EV(ALL), .observe_only = EV(HEADER) | EV(BODY)},
      {.events = EV(HEADER) | EV(EOM), .observe_only = EV(HEADER)},
      {.events = EV(BODY) | EV(EOM)}},
     3,
     MGW_SMFIP_SKIP | MGW_SMFIP_NR_HDR,
     0,
     {NULL}},
    {"observe-only bits for events not received are ignored",
     {{.events = EV(ALL) & ~EV(UNKNOWN), .observe_only = EV(UNKNOWN)}},
     1,
     MGW_SMFIP_SKIP | MGW_SMFIP_NOUNKNOWN | MGW_SMFIP_NR_UNKN,
     0,
     {NULL}},
    {"actions are the union of the filters' actions, without SETSYMLIST",
     {{.events = EV(ALL), .actions = MGW_SMFIF_ADDHDRS | MGW_SMFIF_SETSYMLIST},
      {.events = EV(ALL), .actions = MGW_SMFIF_CHGFROM | MGW_SMFIF_ADDHDRS | 0x8000}},
     2,
     MGW_SMFIP_SKIP,
     MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGFROM,
     {NULL}},
    {"a shadow filter counts for events but not for actions",
     {{.events = EV(ALL), .actions = MGW_SMFIF_CHGBODY, .shadow = true},
      {.events = EV(EOM), .actions = MGW_SMFIF_ADDHDRS}},
     2,
     MGW_SMFIP_SKIP,
     MGW_SMFIF_ADDHDRS,
     {NULL}},
    {"a filter that does not answer end of message asks for no actions",
     {{.events = EV(ALL), .observe_only = EV(EOM), .actions = MGW_SMFIF_CHGBODY},
      {.events = EV(MAIL), .actions = MGW_SMFIF_QUARANTINE},
      {.events = EV(EOM), .actions = MGW_SMFIF_DELRCPT}},
     3,
     MGW_SMFIP_SKIP,
     MGW_SMFIF_DELRCPT,
     {NULL}},
    {"a pipelined filter leaves headers, end of headers and body unanswered",
     {{.events = EV(ALL), .pipelined = true}},
     1,
     MGW_SMFIP_SKIP | MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_EOH | MGW_SMFIP_NR_BODY,
     0,
     {NULL}},
    {"a strict filter keeps the MTA waiting for the content it answers",
     {{.events = EV(ALL), .pipelined = true},
      {.events = EV(EOH) | EV(EOM), .actions = MGW_SMFIF_ADDHDRS}},
     2,
     MGW_SMFIP_SKIP | MGW_SMFIP_NR_HDR | MGW_SMFIP_NR_BODY,
     MGW_SMFIF_ADDHDRS,
     {NULL}},
    {"rejected recipients and leading space are asked when a filter wants them",
     {{.events = EV(ALL), .rejected_recipients = true},
      {.events = EV(ALL), .header_leading_space = true}},
     2,
     MGW_SMFIP_SKIP | MGW_SMFIP_RCPT_REJ | MGW_SMFIP_HDR_LEADSPC,
     0,
     {NULL}},
    {"rejected recipients are not asked by a filter that gets no RCPT",
     {{.events = EV(ALL) & ~EV(RCPT), .rejected_recipients = true}},
     1,
     MGW_SMFIP_SKIP | MGW_SMFIP_NORCPT | MGW_SMFIP_NR_RCPT,
     0,
     {NULL}},
    {"macro lists are unioned per stage after the MTA defaults, duplicates removed, "
     "first-seen order; a stage nobody names gets no list",
     {{.events = EV(ALL),
       .macros = {[MGW_STAGE_CONNECT] = "j {client_ptr}  _ ", [MGW_STAGE_EOM] = ""}},
      {.events = EV(ALL),
       .shadow = true,
       .macros =
           {[MGW_STAGE_CONNECT] = "{daemon_name} v j", [MGW_STAGE_ENVFROM] = "\t{x_b}\ti"}},
      {.events = EV(ALL), .macros = {[MGW_STAGE_ENVFROM] = "i {x_a} {auth_type}"}}},
     3,
     MGW_SMFIP_SKIP,
     0,
     {[MGW_STAGE_CONNECT] = "j {daemon_name} {daemon_addr} v _ {if_name} {if_addr} {client_ptr}",
      [MGW_STAGE_ENVFROM] = "i {auth_type} {auth_authen} {auth_ssf} {auth_author} {mail_addr} "
                            "{mail_host} {mail_mailer} {x_b} {x_a}"}},
};

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static void test_negotiation_is_the_union_of_declarations(void **state)
{
    (void)state;
    for (size_t c = 0; c < NELEM(union_cases); c++) {
        const struct union_case *t = &union_cases[c];
        struct mgw_backend_needs out;
        char storage[256];
        ssize_t rc = mgw_policy_union_needs(t->d, t->n, &out, storage, sizeof storage);

        if (rc < 0) {
            case_failed(t->name, "return: got %zd, want >= 0", rc);
            continue;
        }
        if (out.protocol != t->protocol)
            case_failed(t->name, "protocol: got 0x%x, want 0x%x (diff 0x%x)", out.protocol,
                        t->protocol, out.protocol ^ t->protocol);
        if (out.actions != t->actions)
            case_failed(t->name, "actions: got 0x%x, want 0x%x", out.actions, t->actions);
        for (int s = 0; s < MGW_STAGE_COUNT; s++) {
            if (!same_str(out.symlist[s], t->symlist[s]))
                case_failed(t->name, "symlist[%d]: got %s, want %s", s,
                            out.symlist[s] ? out.symlist[s] : "NULL",
                            t->symlist[s] ? t->symlist[s] : "NULL");
        }
        if ((size_t)rc > mgw_policy_union_storage(t->d, t->n))
            case_failed(t->name, "storage: used %zd, more than the bound %zu", rc,
                        mgw_policy_union_storage(t->d, t->n));
    }
    end_table();
}

/* SessionStart.effective: what the filter declared, less what this MTA cannot do. */
static void test_effective_declaration_is_what_the_mta_can_do(void **state)
{
    static const struct {
        const char *name;
        struct mgw_policy_decl d;
        uint32_t offered_protocol, negotiated_protocol, negotiated_actions;
        uint32_t want_events, want_observe_only, want_actions;
    } cases[] = {
        {"actions are those the MTA granted; the flags the bridge never asks are off",
         {.events = EV(ALL), .actions = MGW_SMFIF_ADDHDRS | MGW_SMFIF_CHGBODY,
          .rejected_recipients = true, .header_leading_space = true},
         MGW_SMFI_CURR_PROT, 0, MGW_SMFIF_ADDHDRS, EV(ALL), 0, MGW_SMFIF_ADDHDRS},
        {"events negotiated away go, and their observe-only bits with them",
         {.events = EV(ALL), .observe_only = EV(HEADER) | EV(BODY), .actions = ALLACTS},
         MGW_SMFI_CURR_PROT, MGW_SMFIP_NOHDRS | MGW_SMFIP_NOHELO, ALLACTS,
         EV(ALL) & ~(EV(HEADER) | EV(HELO)), EV(BODY), ALLACTS},
        {"an MTA of protocol 2 sends no DATA and no UNKNOWN",
         {.events = EV(ALL), .actions = MGW_SMFIF_ADDHDRS}, 0x7F, 0, 0x3F,
         EV(ALL) & ~(EV(DATA) | EV(UNKNOWN)), 0, MGW_SMFIF_ADDHDRS},
        {"nothing the filter did not declare is added",
         {.events = EV(EOM), .actions = 0}, MGW_SMFI_CURR_PROT, 0, ALLACTS, EV(EOM), 0, 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_milter_optneg off = {.version = 6, .actions = ALLACTS,
                                        .protocol = cases[i].offered_protocol};
        struct mgw_milter_optneg neg = {.version = 6, .actions = cases[i].negotiated_actions,
                                        .protocol = cases[i].negotiated_protocol};
        struct mgw_policy_decl out;

        mgw_policy_effective_decl(&cases[i].d, &off, &neg, &out);
        if (out.events != cases[i].want_events || out.observe_only != cases[i].want_observe_only ||
            out.actions != cases[i].want_actions || out.rejected_recipients ||
            out.header_leading_space)
            case_failed(cases[i].name,
                        "got events 0x%x observe_only 0x%x actions 0x%x flags %d/%d, want "
                        "0x%x 0x%x 0x%x 0/0",
                        out.events, out.observe_only, out.actions, out.rejected_recipients,
                        out.header_leading_space, cases[i].want_events,
                        cases[i].want_observe_only, cases[i].want_actions);
    }
    end_table();
}

static void test_negotiation_storage_is_bounded(void **state)
{
    const struct mgw_policy_decl d[2] = {
        {.events = EV(ALL), .macros = {[MGW_STAGE_CONNECT] = "j _", [MGW_STAGE_HELO] = "x"}},
        {.events = EV(ALL), .macros = {[MGW_STAGE_CONNECT] = "_ v {y}"}},
    };
    static const char want_c[] = "j {daemon_name} {daemon_addr} v _ {if_name} {if_addr} {y}";
    static const char want_h[] = "{tls_version} {cipher} {cipher_bits} {cert_subject} "
                                 "{cert_issuer} x";
    const size_t exact = sizeof want_c + sizeof want_h;
    const struct {
        const char *name;
        size_t cap;
        ssize_t want;
    } cases[] = {
        {"the exact size is enough", exact, (ssize_t)exact},
        {"one byte short is refused", exact - 1, MGW_ENOSPACE},
        {"no storage at all is refused when there are names", 0, MGW_ENOSPACE},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        char storage[sizeof want_c + sizeof want_h];
        struct mgw_backend_needs out;
        ssize_t rc =
            mgw_policy_union_needs(d, 2, &out, cases[i].cap ? storage : NULL, cases[i].cap);

        if (rc != cases[i].want)
            case_failed(cases[i].name, "return: got %zd, want %zd", rc, cases[i].want);
        else if (rc < 0 && (out.symlist[MGW_STAGE_CONNECT] || out.symlist[MGW_STAGE_HELO]))
            case_failed(cases[i].name, "symlists: got non-NULL after ENOSPACE, want NULL");
        else if (rc >= 0 && (!same_str(out.symlist[MGW_STAGE_CONNECT], want_c) ||
                             !same_str(out.symlist[MGW_STAGE_HELO], want_h)))
            case_failed(cases[i].name, "symlists: got %s / %s, want %s / %s",
                        out.symlist[MGW_STAGE_CONNECT], out.symlist[MGW_STAGE_HELO], want_c,
                        want_h);
    }
    if (mgw_policy_union_storage(d, 2) < exact)
        case_failed("the storage bound covers the union", "got %zu, want >= %zu",
                    mgw_policy_union_storage(d, 2), exact);
    end_table();
}

/* ---- Event bits ---- */

static void test_event_letters_map_to_bits(void **state)
{
    static const struct {
        uint8_t cmd;
        uint32_t want;
    } cases[] = {
        {'C', EV(CONNECT)}, {'H', EV(HELO)}, {'M', EV(MAIL)}, {'R', EV(RCPT)}, {'T', EV(DATA)},
        {'L', EV(HEADER)},  {'N', EV(EOH)},  {'B', EV(BODY)}, {'E', EV(EOM)},  {'U', EV(UNKNOWN)},
        {'A', 0},           {'Q', 0},        {'O', 0},        {'D', 0},        {'c', 0},
    };

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        uint32_t got = mgw_policy_event_bit(cases[i].cmd);

        if (got != cases[i].want)
            case_failed("every event letter has its own bit, other letters none",
                        "'%c': got 0x%x, want 0x%x", cases[i].cmd, got, cases[i].want);
    }
    end_table();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_rank_pair_has_the_expected_winner),
        cmocka_unit_test(test_verdicts_follow_the_merge_rule),
        cmocka_unit_test(test_pipelined_refusals_decide_as_strict_answers_would),
        cmocka_unit_test(test_verdict_predicates),
        cmocka_unit_test(test_answers_change_the_filter_liveness_per_stage),
        cmocka_unit_test(test_modifications_are_ordered_policed_and_deduplicated),
        cmocka_unit_test(test_each_modification_needs_its_declared_action),
        cmocka_unit_test(test_merge_arrays_count_and_report_overflow),
        cmocka_unit_test(test_drop_reasons_have_distinct_names),
        cmocka_unit_test(test_replies_are_formatted_or_refused),
        cmocka_unit_test(test_reply_limits_are_enforced),
        cmocka_unit_test(test_negotiation_is_the_union_of_declarations),
        cmocka_unit_test(test_negotiation_storage_is_bounded),
        cmocka_unit_test(test_effective_declaration_is_what_the_mta_can_do),
        cmocka_unit_test(test_event_letters_map_to_bits),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
