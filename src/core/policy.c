/*
 * policy.c - merge N filter answers into one milter answer; negotiation union; reply text.
 *
 * Pure (see policy.h, which holds the rules). What this file adds is how: the verdict is
 * a single ranked pass; modifications are copied into a scratch array of "items", each
 * given a drop reason or kept, and the survivors are emitted class by class, sorting only
 * where header indexes demand it. Every sort breaks ties on the item's sequence number
 * (filter order, then the filter's own order), so the output never depends on qsort's
 * instability.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/policy.h"

#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/negotiate.h"
#include "mgw/xmalloc.h"

/* ---- Events ---- */

uint32_t mgw_policy_event_bit(uint8_t cmd)
{
    return mgw_milter_cmd_event_bit(cmd);
}

/*
 * Events that can still come, in the scope an accept at `cmd` would end. Repeatable
 * events (HELO again after RSET, more RCPTs, headers, chunks) include themselves. UNKNOWN
 * can come at any time, and Postfix ends "the message" on an accept given to it.
 */
static uint32_t events_after(uint8_t cmd)
{
    const uint32_t msg_tail = MGW_POLICY_EV_EOM | MGW_POLICY_EV_UNKNOWN;

    switch (cmd) {
    case MGW_SMFIC_CONNECT:
    case MGW_SMFIC_HELO: return MGW_POLICY_EV_ALL & ~MGW_POLICY_EV_CONNECT;
    case MGW_SMFIC_MAIL:
    case MGW_SMFIC_RCPT:
    case MGW_SMFIC_UNKNOWN:
        return MGW_POLICY_EV_RCPT | MGW_POLICY_EV_DATA | MGW_POLICY_EV_HEADER | MGW_POLICY_EV_EOH |
               MGW_POLICY_EV_BODY | msg_tail | (cmd == MGW_SMFIC_UNKNOWN ? MGW_POLICY_EV_MAIL : 0);
    case MGW_SMFIC_DATA:
    case MGW_SMFIC_HEADER:
        return MGW_POLICY_EV_HEADER | MGW_POLICY_EV_EOH | MGW_POLICY_EV_BODY | msg_tail;
    case MGW_SMFIC_EOH:
    case MGW_SMFIC_BODY: return MGW_POLICY_EV_BODY | msg_tail;
    default: return 0; /* EOM: the message is over */
    }
}

/* ---- Verdicts ---- */

static int kind_valid(enum mgw_verdict_kind k)
{
    return (unsigned)k <= MGW_VERDICT_SKIP;
}

/* Higher wins. Written as a table so the rule in policy.h can be read off it. */
static int rank(enum mgw_verdict_kind k)
{
    switch (k) {
    case MGW_VERDICT_ACCEPT: return 0;
    case MGW_VERDICT_SKIP: return 1;
    case MGW_VERDICT_CONTINUE: return 2;
    case MGW_VERDICT_TEMPFAIL: return 3;
    case MGW_VERDICT_REJECT: return 4;
    case MGW_VERDICT_DISCARD: return 5;
    }
    return -1;
}

/* Skip only means something for a body chunk; the MTA refuses it elsewhere. */
static enum mgw_verdict_kind effective(uint8_t cmd, enum mgw_verdict_kind k)
{
    return k == MGW_VERDICT_SKIP && cmd != MGW_SMFIC_BODY ? MGW_VERDICT_CONTINUE : k;
}

static int refuses(enum mgw_verdict_kind k)
{
    return k == MGW_VERDICT_REJECT || k == MGW_VERDICT_TEMPFAIL || k == MGW_VERDICT_DISCARD;
}

bool mgw_policy_final_early(enum mgw_verdict_kind kind)
{
    return kind == MGW_VERDICT_DISCARD;
}

bool mgw_policy_refusal(enum mgw_verdict_kind kind)
{
    return kind == MGW_VERDICT_REJECT || kind == MGW_VERDICT_TEMPFAIL ||
           kind == MGW_VERDICT_DISCARD;
}

bool mgw_policy_deferred_fate(const struct mgw_policy_deferred *d, size_t n,
                              struct mgw_policy_result *out, uint8_t *cmd)
{
    struct mgw_policy_answer *ans;
    uint64_t first = 0;
    size_t at = 0;

    for (size_t i = 0; i < n; i++) {
        if (d[i].event_id != 0 && (first == 0 || d[i].event_id < first)) {
            first = d[i].event_id;
            at = i;
        }
    }
    if (first == 0)
        return false;
    /* Strict answering would have stopped at that event: only its refusals count. */
    ans = mgw_xcalloc(n, sizeof *ans);
    for (size_t i = 0; i < n; i++) {
        if (d[i].event_id != first)
            continue;
        ans[i].state = d[i].state;
        ans[i].kind = d[i].kind;
        ans[i].reply = d[i].reply;
    }
    if (mgw_policy_merge(d[at].cmd, ans, n, NULL, 0, NULL, 0, out) < 0)
        mgw_panic("policy: deferred refusals refused by the merge");
    free(ans);
    *cmd = d[at].cmd;
    return true;
}

enum mgw_policy_effect mgw_policy_effect(uint8_t cmd, enum mgw_verdict_kind kind)
{
    if (mgw_policy_event_bit(cmd) == 0)
        return MGW_POLICY_EFFECT_NONE;
    if (kind == MGW_VERDICT_ACCEPT)
        return cmd == MGW_SMFIC_CONNECT || cmd == MGW_SMFIC_HELO
                   ? MGW_POLICY_EFFECT_RETIRE_CONNECTION
                   : MGW_POLICY_EFFECT_RETIRE_MESSAGE;
    if (kind == MGW_VERDICT_SKIP && cmd == MGW_SMFIC_BODY)
        return MGW_POLICY_EFFECT_SKIP_BODY;
    return MGW_POLICY_EFFECT_NONE;
}

/* What filter `a` still expects after its own answer took effect (rule 4). */
static uint32_t still_expects(uint8_t cmd, const struct mgw_policy_answer *a)
{
    uint32_t need = a->receives & events_after(cmd);

    if (a->state == MGW_POLICY_NOT_ASKED)
        return need;
    switch (mgw_policy_effect(cmd, effective(cmd, a->kind))) {
    case MGW_POLICY_EFFECT_RETIRE_MESSAGE:
    case MGW_POLICY_EFFECT_RETIRE_CONNECTION: return 0;
    case MGW_POLICY_EFFECT_SKIP_BODY: return need & ~MGW_POLICY_EV_BODY;
    default: return need;
    }
}

/* Rule 4: an accept or skip may only reach the MTA if nobody needs what it cuts off. */
static void keep_talking(uint8_t cmd, const struct mgw_policy_answer *answers, size_t n,
                         struct mgw_policy_result *out)
{
    size_t first_any = MGW_POLICY_NONE, first_body = MGW_POLICY_NONE;

    if (out->kind != MGW_VERDICT_ACCEPT && out->kind != MGW_VERDICT_SKIP)
        return;
    for (size_t i = 0; i < n; i++) {
        uint32_t need = still_expects(cmd, &answers[i]);

        if (need != 0 && first_any == MGW_POLICY_NONE)
            first_any = i;
        if ((need & MGW_POLICY_EV_BODY) && first_body == MGW_POLICY_NONE)
            first_body = i;
    }
    if (out->kind == MGW_VERDICT_ACCEPT && first_any != MGW_POLICY_NONE) {
        out->keeper = first_any;
        /* At a body chunk, skipping is still right if nobody needs more body. */
        out->kind = cmd == MGW_SMFIC_BODY && first_body == MGW_POLICY_NONE ? MGW_VERDICT_SKIP
                                                                           : MGW_VERDICT_CONTINUE;
    } else if (out->kind == MGW_VERDICT_SKIP && first_body != MGW_POLICY_NONE) {
        out->keeper = first_body;
        out->kind = MGW_VERDICT_CONTINUE;
    }
}

static void merge_verdict(uint8_t cmd, const struct mgw_policy_answer *answers, size_t n,
                          struct mgw_policy_result *out)
{
    int best = -1;

    out->kind = MGW_VERDICT_CONTINUE;
    for (size_t i = 0; i < n; i++) {
        const struct mgw_policy_answer *a = &answers[i];
        enum mgw_verdict_kind k;

        if (a->state == MGW_POLICY_NOT_ASKED || a->shadow)
            continue;
        k = effective(cmd, a->kind);
        /* Strictly greater: on a tie the filter configured first stays the decider. */
        if (rank(k) > best) {
            best = rank(k);
            out->kind = k;
            out->decider = i;
        }
    }
    if (out->decider != MGW_POLICY_NONE) {
        const struct mgw_policy_answer *d = &answers[out->decider];
        char want = mgw_verdict_reply_class(out->kind);

        out->failure_applied = d->state == MGW_POLICY_FAILED;
        /* A REPLYCODE of the wrong class would change the verdict at the MTA. */
        if (want != 0 && d->reply != NULL && d->reply[0] == want)
            out->reply = d->reply;
    }
    keep_talking(cmd, answers, n, out);
}

/* ---- Modifications ---- */

/* One modification of one filter, with its fate. `msg` is the frame to emit (it may be
 * rewritten between '+' and '2'); `seq` is its position in (filter, mod) order. */
struct item {
    size_t filter;
    size_t mod;
    size_t seq;
    enum mgw_policy_drop_reason reason;
    struct mgw_milter_msg msg;
    size_t group; /* CHGHEADER: seq of the first op on the same name */
};


bool mgw_policy_header_name_valid(const char *name, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] < 33 || (unsigned char)name[i] > 126 || name[i] == ':')
            return false;
    return true;
}

/*
 * Check a frame against the filter's actions; on success *emit is what to send. An
 * add-recipient without args is the same request whichever frame carries it, and the
 * proto lets either action cover it, so it is re-framed to one the MTA granted.
 */
static enum mgw_policy_drop_reason police(const struct mgw_milter_msg *m, uint32_t actions,
                                          struct mgw_milter_msg *emit)
{
    uint32_t need = mgw_milter_mod_action(m->cmd);

    *emit = *m;
    if (need == 0)
        return MGW_POLICY_DROP_INVALID;
    if ((m->cmd == MGW_SMFIR_ADDHEADER || m->cmd == MGW_SMFIR_INSHEADER ||
         m->cmd == MGW_SMFIR_CHGHEADER) &&
        !mgw_policy_header_name_valid(m->u.header.name.ptr, m->u.header.name.len))
        return MGW_POLICY_DROP_INVALID;
    if (actions & need)
        return MGW_POLICY_KEPT;
    if (m->cmd == MGW_SMFIR_ADDRCPT && (actions & MGW_SMFIF_ADDRCPT_PAR)) {
        emit->cmd = MGW_SMFIR_ADDRCPT_PAR;
        emit->u.rcpt.addr = m->u.text;
        emit->u.rcpt.args = (struct mgw_str){NULL, 0};
        return MGW_POLICY_KEPT;
    }
    if (m->cmd == MGW_SMFIR_ADDRCPT_PAR && m->u.rcpt.args.len == 0 &&
        (actions & MGW_SMFIF_ADDRCPT)) {
        emit->cmd = MGW_SMFIR_ADDRCPT;
        emit->u.text = m->u.rcpt.addr;
        return MGW_POLICY_KEPT;
    }
    return MGW_POLICY_DROP_UNDECLARED;
}

/* Reasons that do not depend on other filters' modifications. */
static enum mgw_policy_drop_reason first_reason(uint8_t cmd, enum mgw_verdict_kind final,
                                                const struct mgw_policy_answer *a,
                                                const struct mgw_milter_msg *m,
                                                struct mgw_milter_msg *emit)
{
    enum mgw_policy_drop_reason r;

    *emit = *m;
    if (cmd != MGW_SMFIC_BODYEOB)
        return MGW_POLICY_DROP_NOT_EOM;
    if (a->shadow)
        return MGW_POLICY_DROP_SHADOW;
    r = police(m, a->actions, emit);
    if (r != MGW_POLICY_KEPT)
        return r;
    if (a->state == MGW_POLICY_FAILED)
        return MGW_POLICY_DROP_FAILED;
    if (refuses(final))
        return MGW_POLICY_DROP_REFUSED;
    return MGW_POLICY_KEPT;
}

static int is_addrcpt(uint8_t cmd)
{
    return cmd == MGW_SMFIR_ADDRCPT || cmd == MGW_SMFIR_ADDRCPT_PAR;
}

static struct mgw_str rcpt_addr(const struct mgw_milter_msg *m)
{
    return m->cmd == MGW_SMFIR_ADDRCPT_PAR ? m->u.rcpt.addr : m->u.text;
}

static int cmp_size(size_t a, size_t b)
{
    return a < b ? -1 : a > b;
}

static int cmp_bytes(struct mgw_str a, struct mgw_str b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;

    return c ? c : cmp_size(a.len, b.len);
}

/* Header names match ASCII case-insensitively, as the MTAs match them. */
static int cmp_name(struct mgw_str a, struct mgw_str b)
{
    size_t n = a.len < b.len ? a.len : b.len;

    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.ptr[i], y = (unsigned char)b.ptr[i];

        x = x >= 'A' && x <= 'Z' ? x + 32 : x;
        y = y >= 'A' && y <= 'Z' ? y + 32 : y;
        if (x != y)
            return x < y ? -1 : 1;
    }
    return cmp_size(a.len, b.len);
}

/* CHGHEADER occurrence 0 means 1 for both MTAs. */
static uint32_t occurrence(const struct item *it)
{
    return it->msg.u.header.index ? it->msg.u.header.index : 1;
}

static int by_name_index_seq(const void *pa, const void *pb)
{
    const struct item *a = *(struct item *const *)pa, *b = *(struct item *const *)pb;
    int c = cmp_name(a->msg.u.header.name, b->msg.u.header.name);

    if (c == 0)
        c = cmp_size(occurrence(a), occurrence(b));
    return c ? c : cmp_size(a->seq, b->seq);
}

/* Output order of CHGHEADER: name groups in first-seen order, descending occurrence. */
static int by_group_index_desc(const void *pa, const void *pb)
{
    const struct item *a = *(struct item *const *)pa, *b = *(struct item *const *)pb;
    int c = cmp_size(a->group, b->group);

    if (c == 0)
        c = cmp_size(occurrence(b), occurrence(a));
    return c ? c : cmp_size(a->seq, b->seq);
}

static int by_position_desc(const void *pa, const void *pb)
{
    const struct item *a = *(struct item *const *)pa, *b = *(struct item *const *)pb;
    int c = cmp_size(b->msg.u.header.index, a->msg.u.header.index);

    return c ? c : cmp_size(a->seq, b->seq);
}

static int by_addr_seq(const void *pa, const void *pb)
{
    const struct item *a = *(struct item *const *)pa, *b = *(struct item *const *)pb;
    int c = cmp_bytes(rcpt_addr(&a->msg), rcpt_addr(&b->msg));

    return c ? c : cmp_size(a->seq, b->seq);
}

/* Collect pointers to the surviving items whose frame is `cmd` (or any add-recipient). */
static size_t select_kept(struct item *items, size_t m, uint8_t cmd, struct item **sel)
{
    size_t k = 0;

    for (size_t i = 0; i < m; i++) {
        uint8_t c = items[i].msg.cmd;

        if (items[i].reason == MGW_POLICY_KEPT && (c == cmd || (is_addrcpt(cmd) && is_addrcpt(c))))
            sel[k++] = &items[i];
    }
    return k;
}

/* First survivor of `cmd` wins; later ones get `reason` (CHGFROM, QUARANTINE). */
static void first_wins(struct item *items, size_t m, uint8_t cmd,
                       enum mgw_policy_drop_reason reason)
{
    int seen = 0;

    for (size_t i = 0; i < m; i++) {
        if (items[i].reason != MGW_POLICY_KEPT || items[i].msg.cmd != cmd)
            continue;
        if (seen)
            items[i].reason = reason;
        seen = 1;
    }
}

/* The first filter with a surviving REPLBODY keeps all its chunks; others lose theirs. */
static void body_winner(struct item *items, size_t m)
{
    size_t winner = MGW_POLICY_NONE;

    for (size_t i = 0; i < m; i++) {
        if (items[i].reason != MGW_POLICY_KEPT || items[i].msg.cmd != MGW_SMFIR_REPLBODY)
            continue;
        if (winner == MGW_POLICY_NONE)
            winner = items[i].filter;
        if (items[i].filter != winner)
            items[i].reason = MGW_POLICY_DROP_BODY_CONFLICT;
    }
}

/* After sorting by key then seq, every item equal to its predecessor is a later repeat. */
static void drop_repeats(struct item **sel, size_t k,
                         int (*same)(const struct item *, const struct item *),
                         enum mgw_policy_drop_reason reason)
{
    for (size_t i = 1; i < k; i++) {
        if (same(sel[i - 1], sel[i]))
            sel[i]->reason = reason;
    }
}

static int same_header(const struct item *a, const struct item *b)
{
    return cmp_name(a->msg.u.header.name, b->msg.u.header.name) == 0 &&
           occurrence(a) == occurrence(b);
}

static int same_rcpt(const struct item *a, const struct item *b)
{
    return cmp_bytes(rcpt_addr(&a->msg), rcpt_addr(&b->msg)) == 0;
}

/* Header conflicts; then each survivor learns the seq of its name's first op. */
static void resolve_headers(struct item *items, size_t m, struct item **sel)
{
    size_t k = select_kept(items, m, MGW_SMFIR_CHGHEADER, sel);

    qsort(sel, k, sizeof *sel, by_name_index_seq);
    drop_repeats(sel, k, same_header, MGW_POLICY_DROP_HEADER_CONFLICT);
    for (size_t i = 0; i < k;) {
        size_t j = i, first = sel[i]->seq;

        for (; j < k && cmp_name(sel[j]->msg.u.header.name, sel[i]->msg.u.header.name) == 0; j++)
            first = sel[j]->seq < first ? sel[j]->seq : first;
        for (; i < j; i++)
            sel[i]->group = first;
    }
}

static void resolve_rcpts(struct item *items, size_t m, uint8_t cmd, struct item **sel)
{
    size_t k = select_kept(items, m, cmd, sel);

    qsort(sel, k, sizeof *sel, by_addr_seq);
    drop_repeats(sel, k, same_rcpt, MGW_POLICY_DROP_DUPLICATE_RCPT);
}

/* Append the survivors of one class to the output, in `cmp` order (NULL: seq order). */
static void emit_class(struct item *items, size_t m, uint8_t cmd,
                       int (*cmp)(const void *, const void *), struct item **sel,
                       struct mgw_milter_msg *mods, size_t cap, size_t *nmods)
{
    size_t k = select_kept(items, m, cmd, sel);

    if (cmp != NULL)
        qsort(sel, k, sizeof *sel, cmp);
    for (size_t i = 0; i < k; i++, (*nmods)++) {
        if (mods != NULL && *nmods < cap)
            mods[*nmods] = sel[i]->msg;
    }
}

static void merge_mods(uint8_t cmd, const struct mgw_policy_answer *answers, size_t n,
                       struct mgw_milter_msg *mods, size_t mods_cap, struct mgw_policy_drop *drops,
                       size_t drops_cap, struct mgw_policy_result *out)
{
    struct item *items, **sel;
    size_t m = 0;

    for (size_t i = 0; i < n; i++)
        m += answers[i].state == MGW_POLICY_NOT_ASKED ? 0 : answers[i].nmods;
    if (m == 0)
        return;
    items = mgw_xcalloc(m, sizeof *items);
    sel = mgw_xcalloc(m, sizeof *sel);
    m = 0;
    for (size_t i = 0; i < n; i++) {
        const struct mgw_policy_answer *a = &answers[i];

        if (a->state == MGW_POLICY_NOT_ASKED)
            continue;
        for (size_t j = 0; j < a->nmods; j++, m++) {
            items[m].filter = i;
            items[m].mod = j;
            items[m].seq = m;
            items[m].reason = first_reason(cmd, out->kind, a, &a->mods[j], &items[m].msg);
        }
    }

    body_winner(items, m);
    first_wins(items, m, MGW_SMFIR_CHGFROM, MGW_POLICY_DROP_FROM_CONFLICT);
    first_wins(items, m, MGW_SMFIR_QUARANTINE, MGW_POLICY_DROP_QUARANTINE_CONFLICT);
    resolve_headers(items, m, sel);
    resolve_rcpts(items, m, MGW_SMFIR_DELRCPT, sel);
    resolve_rcpts(items, m, MGW_SMFIR_ADDRCPT, sel);

    /* Order of policy.h rule 6. '+' selects both add-recipient frames. */
    emit_class(items, m, MGW_SMFIR_CHGHEADER, by_group_index_desc, sel, mods, mods_cap,
               &out->nmods);
    emit_class(items, m, MGW_SMFIR_INSHEADER, by_position_desc, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_ADDHEADER, NULL, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_CHGFROM, NULL, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_DELRCPT, NULL, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_ADDRCPT, NULL, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_REPLBODY, NULL, sel, mods, mods_cap, &out->nmods);
    emit_class(items, m, MGW_SMFIR_QUARANTINE, NULL, sel, mods, mods_cap, &out->nmods);

    for (size_t i = 0; i < m; i++) {
        if (items[i].reason == MGW_POLICY_KEPT)
            continue;
        out->dropped[items[i].reason]++;
        if (drops != NULL && out->ndrops < drops_cap)
            drops[out->ndrops] =
                (struct mgw_policy_drop){items[i].filter, items[i].mod, items[i].reason,
                                         &answers[items[i].filter].mods[items[i].mod]};
        out->ndrops++;
    }
    free(sel);
    free(items);
}

int mgw_policy_merge(uint8_t cmd, const struct mgw_policy_answer *answers, size_t n,
                     struct mgw_milter_msg *mods, size_t mods_cap, struct mgw_policy_drop *drops,
                     size_t drops_cap, struct mgw_policy_result *out)
{
    if (out == NULL || mgw_policy_event_bit(cmd) == 0 || (answers == NULL && n > 0))
        return MGW_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const struct mgw_policy_answer *a = &answers[i];

        if ((unsigned)a->state > MGW_POLICY_FAILED)
            return MGW_EINVAL;
        if (a->state != MGW_POLICY_NOT_ASKED &&
            (!kind_valid(a->kind) || (a->mods == NULL && a->nmods > 0)))
            return MGW_EINVAL;
    }
    memset(out, 0, sizeof *out);
    out->decider = MGW_POLICY_NONE;
    out->keeper = MGW_POLICY_NONE;
    merge_verdict(cmd, answers, n, out);
    merge_mods(cmd, answers, n, mods, mods_cap, drops, drops_cap, out);
    if ((mods != NULL && out->nmods > mods_cap) || (drops != NULL && out->ndrops > drops_cap))
        return MGW_ENOSPACE;
    return 0;
}

const char *mgw_policy_drop_name(enum mgw_policy_drop_reason r)
{
    static const char *const names[MGW_POLICY_DROP_COUNT] = {
        [MGW_POLICY_KEPT] = "kept",
        [MGW_POLICY_DROP_NOT_EOM] = "not_end_of_message",
        [MGW_POLICY_DROP_SHADOW] = "shadow",
        [MGW_POLICY_DROP_INVALID] = "invalid",
        [MGW_POLICY_DROP_UNDECLARED] = "undeclared_action",
        [MGW_POLICY_DROP_FAILED] = "filter_failed",
        [MGW_POLICY_DROP_REFUSED] = "message_refused",
        [MGW_POLICY_DROP_BODY_CONFLICT] = "body_conflict",
        [MGW_POLICY_DROP_FROM_CONFLICT] = "from_conflict",
        [MGW_POLICY_DROP_QUARANTINE_CONFLICT] = "quarantine_conflict",
        [MGW_POLICY_DROP_HEADER_CONFLICT] = "header_conflict",
        [MGW_POLICY_DROP_DUPLICATE_RCPT] = "duplicate_recipient",
    };

    return (unsigned)r < MGW_POLICY_DROP_COUNT ? names[r] : "?";
}

/* ---- SMTP reply text ---- */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "x.y.z", x one digit, y and z 1-3 digits (RFC 3463). */
static int enhanced_valid(const char *e)
{
    const char *p = e + 1;

    if (!is_digit(e[0]))
        return 0;
    for (int part = 0; part < 2; part++) {
        int digits = 0;

        if (*p++ != '.')
            return 0;
        while (is_digit(*p) && digits < 4) {
            p++;
            digits++;
        }
        if (digits < 1 || digits > 3)
            return 0;
    }
    return *p == '\0';
}

static size_t escaped_len(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '%' ? 2 : 1;
    return n;
}

static int line_valid(const char *line, char klass, int has_enhanced)
{
    if (line == NULL || strlen(line) > MGW_POLICY_REPLY_MAX_LINE || strpbrk(line, "\r\n"))
        return 0;
    /* Postfix reads a leading digit as the start of an enhanced code and refuses a reply
     * whose classes disagree. */
    return has_enhanced || !is_digit(line[0]) || line[0] == klass;
}

ssize_t mgw_policy_format_reply(unsigned code, const char *enhanced, const char *const *lines,
                                size_t nlines, enum mgw_verdict_kind kind, char *buf, size_t cap)
{
    char klass, head[3];
    size_t len = 0, hlen, elen = enhanced ? strlen(enhanced) : 0;

    if (code == 0 && elen == 0 && nlines == 0) {
        if (buf != NULL && cap > 0)
            buf[0] = '\0';
        return 0;
    }
    klass = mgw_verdict_reply_class(kind);
    if (klass == 0)
        return MGW_EINVAL;
    if (code == 0)
        code = kind == MGW_VERDICT_REJECT ? 550 : 451;
    if (code / 100 != (unsigned)(klass - '0') || (code / 10) % 10 > 5)
        return MGW_EINVAL;
    if (elen > 0 && (!enhanced_valid(enhanced) || enhanced[0] != klass))
        return MGW_EINVAL;
    if (nlines > MGW_POLICY_REPLY_MAX_LINES || (lines == NULL && nlines > 0))
        return MGW_EINVAL;
    for (size_t i = 0; i < nlines; i++) {
        if (!line_valid(lines[i], klass, elen > 0))
            return MGW_EINVAL;
    }

    /* Each line: "550" sep [enhanced] [" " text]; sep is '-' on all but the last.
     * With neither enhanced code nor text, "550 " keeps the separator Postfix requires. */
    head[0] = (char)('0' + code / 100);
    head[1] = (char)('0' + code / 10 % 10);
    head[2] = (char)('0' + code % 10);
    hlen = 3;
    for (size_t i = 0; i < (nlines ? nlines : 1); i++) {
        size_t tlen = nlines ? escaped_len(lines[i]) : 0;

        len += (i ? 2 : 0) + hlen + 1 + elen + (elen && tlen ? 1 : 0) + tlen;
    }
    if (buf == NULL || cap < len + 1)
        return MGW_ENOSPACE;

    len = 0;
    for (size_t i = 0; i < (nlines ? nlines : 1); i++) {
        const char *t = nlines ? lines[i] : "";

        if (i) {
            memcpy(buf + len, "\r\n", 2);
            len += 2;
        }
        memcpy(buf + len, head, hlen);
        len += hlen;
        buf[len++] = i + 1 < nlines ? '-' : ' ';
        if (elen > 0) {
            memcpy(buf + len, enhanced, elen);
            len += elen;
            if (*t)
                buf[len++] = ' ';
        }
        for (; *t; t++) {
            buf[len++] = *t;
            if (*t == '%')
                buf[len++] = '%';
        }
    }
    buf[len] = '\0';
    return (ssize_t)len;
}

/* ---- Negotiation union ---- */

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Whether `tok` (length tlen) is already one of the space-separated names in list[0..len). */
static int has_name(const char *list, size_t len, const char *tok, size_t tlen)
{
    for (size_t i = 0; i < len;) {
        size_t j = i;

        while (j < len && list[j] != ' ')
            j++;
        if (j - i == tlen && memcmp(list + i, tok, tlen) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

/* The MTAs' own lists per stage (Postfix's milter_*_macros and Sendmail's
 * confMILTER_MACROS_* defaults together). A list we send REPLACES the MTA's for every
 * filter, so whenever one filter asks for names at a stage, these go in too: a filter
 * that relied on the defaults keeps them when another filter is added. */
static const char *const mta_default_macros[MGW_STAGE_COUNT] = {
    [MGW_STAGE_CONNECT] = "j {daemon_name} {daemon_addr} v _ {if_name} {if_addr}",
    [MGW_STAGE_HELO] = "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    [MGW_STAGE_ENVFROM] = ("i {auth_type} {auth_authen} {auth_ssf} {auth_author} {mail_addr} "
                           "{mail_host} {mail_mailer}"),
    [MGW_STAGE_ENVRCPT] = "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    [MGW_STAGE_DATA] = "i",
    [MGW_STAGE_EOM] = "i {msg_id}",
    [MGW_STAGE_EOH] = "i",
};

/* Whether list `p` names anything. */
static int names_any(const char *p)
{
    while (p != NULL && is_space(*p))
        p++;
    return p != NULL && *p != '\0';
}

/* Union of one stage's lists (the MTA defaults first, if any filter asked for names),
 * appended to storage at *used; *res = the list, or NULL if empty. Returns 0 or
 * MGW_ENOSPACE. */
static int union_stage(const struct mgw_policy_decl *decls, size_t n, int stage, char *storage,
                       size_t cap, size_t *used, const char **res)
{
    char *list = storage != NULL ? storage + *used : NULL;
    size_t len = 0, room = storage != NULL ? cap - *used : 0;
    int asked = 0;

    *res = NULL;
    for (size_t i = 0; i < n; i++)
        asked |= names_any(decls[i].macros[stage]);
    for (size_t i = 0; asked && i <= n; i++) {
        const char *p = i == 0 ? mta_default_macros[stage] : decls[i - 1].macros[stage];

        while (p != NULL && *p) {
            size_t tlen = 0;

            while (is_space(*p))
                p++;
            while (p[tlen] && !is_space(p[tlen]))
                tlen++;
            if (tlen > 0 && !has_name(list, len, p, tlen)) {
                /* The separator before, the name, and room for the final NUL. */
                if (len + (len ? 1 : 0) + tlen + 1 > room)
                    return MGW_ENOSPACE;
                if (len)
                    list[len++] = ' ';
                memcpy(list + len, p, tlen);
                len += tlen;
            }
            p += tlen;
        }
    }
    if (len > 0) {
        list[len] = '\0';
        *used += len + 1;
        *res = list;
    }
    return 0;
}

size_t mgw_policy_union_storage(const struct mgw_policy_decl *decls, size_t n)
{
    size_t total = 0;

    for (int s = 0; s < MGW_STAGE_COUNT; s++)
        total += strlen(mta_default_macros[s]) + 1;
    for (size_t i = 0; i < n; i++) {
        for (int s = 0; s < MGW_STAGE_COUNT; s++)
            total += decls[i].macros[s] ? strlen(decls[i].macros[s]) + 1 : 0;
    }
    return total;
}

ssize_t mgw_policy_union_needs(const struct mgw_policy_decl *decls, size_t n,
                               struct mgw_backend_needs *out, char *storage, size_t cap)
{
    size_t used = 0;

    memset(out, 0, sizeof *out);
    out->protocol = MGW_SMFIP_SKIP;
    /* Every event with NO_x / NR_x bits; EOM has neither (the command table gives it 0s):
     * it can be neither disabled nor left unanswered. */
    for (int e = 0; e < MGW_MILTER_EV_SUBSCRIBABLE; e++) {
        const struct mgw_milter_cmd_info *c = mgw_milter_cmd_info(mgw_milter_event_cmd(e));
        uint32_t bit = 1u << e;
        int received = 0, answered = 0;

        for (size_t i = 0; i < n; i++) {
            uint32_t waits = decls[i].events & ~decls[i].observe_only;

            if (decls[i].pipelined)
                waits &= ~MGW_POLICY_EV_CONTENT;
            received |= (decls[i].events & bit) != 0;
            answered |= (waits & bit) != 0;
        }
        out->protocol |= (received ? 0 : c->no_bit) | (answered ? 0 : c->nr_bit);
    }

    for (size_t i = 0; i < n; i++) {
        const struct mgw_policy_decl *d = &decls[i];
        uint32_t answers = d->events & ~d->observe_only;

        if (d->rejected_recipients && (d->events & MGW_POLICY_EV_RCPT))
            out->protocol |= MGW_SMFIP_RCPT_REJ;
        if (d->header_leading_space)
            out->protocol |= MGW_SMFIP_HDR_LEADSPC;
        if (!d->shadow && (answers & MGW_POLICY_EV_EOM))
            out->actions |= d->actions;
    }
    out->actions &= MGW_SMFI_CURR_ACTS & ~MGW_SMFIF_SETSYMLIST;

    for (int s = 0; s < MGW_STAGE_COUNT; s++) {
        if (union_stage(decls, n, s, storage, cap, &used, &out->symlist[s]) != 0) {
            for (int t = 0; t < MGW_STAGE_COUNT; t++)
                out->symlist[t] = NULL;
            return MGW_ENOSPACE;
        }
    }
    return (ssize_t)used;
}

void mgw_policy_effective_decl(const struct mgw_policy_decl *d,
                               const struct mgw_milter_optneg *offered,
                               const struct mgw_milter_optneg *negotiated,
                               struct mgw_policy_decl *out)
{
    *out = *d;
    for (int e = 0; e < MGW_MILTER_EV_SUBSCRIBABLE; e++) {
        uint8_t c = mgw_milter_event_cmd(e);
        uint32_t no = mgw_negotiate_no_bit(c);
        /* An MTA that cannot suppress UNKNOWN or DATA predates those events. */
        int predates = (c == MGW_SMFIC_UNKNOWN || c == MGW_SMFIC_DATA) && !(offered->protocol & no);

        if (no == 0)
            continue; /* E: always comes */
        if ((negotiated->protocol & no) || predates)
            out->events &= ~(1u << e);
    }
    out->observe_only &= out->events;
    out->actions &= negotiated->actions;
    out->rejected_recipients = false;
    out->header_leading_space = false;
}
