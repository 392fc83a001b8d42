/*
 * policy.h - the merge policy: N filter answers in, one milter answer out.
 *
 * Pure: no I/O, no clocks, no logging, no libevent or gRPC. The gRPC bridge collects what
 * each configured filter answered to one MTA event and asks this module what to tell the
 * MTA, which modifications to apply, and which to drop (and why, so it can log and count).
 * It also computes the negotiation answer from the filters' declarations, the liveness
 * effect of one filter's answer, and the text of an SMFIR_REPLYCODE.
 *
 * THE MERGE RULE (mgw_policy_merge)
 *
 * 1. Rank, highest wins:  discard > reject > tempfail > continue > skip > accept.
 *    Ties go to the filter configured first: it is the "decider", and its reply text is
 *    the one sent. A reply is passed on only for reject/tempfail and only if its first
 *    digit matches the class (5 for reject, 4 for tempfail): milter has no way to send a
 *    4xx text with a reject, and a mismatched REPLYCODE would change the verdict.
 * 2. Who counts. NOT_ASKED (not subscribed, observe-only, body skipped, retired) is
 *    neutral. FAILED counts like ANSWERED: the caller has already turned the failure into
 *    the filter's on_error verdict; the result says so (failure_applied) when it decided.
 *    Shadow filters never count for the verdict. Nobody counting gives CONTINUE (decider
 *    none) - at end of message that is what accepts the message for the MTA, so no
 *    answer at all still delivers, as with no filter configured.
 * 3. Skip means something only at a body chunk ('B'); at any other event it counts as
 *    continue (the proto says so, and the MTA refuses SMFIR_SKIP elsewhere).
 * 4. Keeping the MTA talking. Accept makes the MTA stop sending the rest of the message
 *    (of the connection at C and H), and skip stops the body. So an ACCEPT merge is only
 *    sent when no filter - asked or not, shadow or not - still expects a later event of
 *    that scope; otherwise it becomes SKIP (at 'B', when nobody needs more body) or
 *    CONTINUE. A SKIP merge becomes CONTINUE while some filter still needs body chunks.
 *    `keeper` names the first filter that forced this. Example: filter A accepts at RCPT
 *    (allow-list), filter B wants only EOM: the MTA sees continue, and B can still reject
 *    at EOM. The mail outcome is unchanged by shadow filters: they can only keep the MTA
 *    sending them events.
 *    What a filter "still expects" is its `receives` set (events the gateway will still
 *    send it in this message, or connection at C/H) intersected with the events that can
 *    follow `cmd`; an answer's own effect is applied first (its accept empties it, its
 *    skip at 'B' removes BODY).
 * 5. Modifications exist only at end of message ('E'); anywhere else every one is dropped
 *    (NOT_EOM). At 'E' each frame goes through these checks, first match drops it:
 *      SHADOW      the filter is in shadow mode (its mods are logged, never applied);
 *      INVALID     the frame is not a modification (h i m b + 2 - e q), or names a
 *                  header that is no RFC 5322 field name (see below): Postfix drops
 *                  the milter for an empty CHGHEADER name, losing every later frame;
 *      UNDECLARED  the filter's `actions` lack the one the frame needs:
 *                  h i ADDHDRS, m CHGHDRS, b CHGBODY, + ADDRCPT, 2 ADDRCPT_PAR,
 *                  - DELRCPT, e CHGFROM, q QUARANTINE. An add-recipient without ESMTP
 *                  args may use either of ADDRCPT / ADDRCPT_PAR and is re-emitted as the
 *                  frame ('+' or '2' with no args) the filter's actions permit;
 *      FAILED      the filter's answer was replaced by its failure policy;
 *      REFUSED     the merged verdict is reject, tempfail or discard: the message will
 *                  not be delivered, so changing it is pointless;
 *      BODY_CONFLICT       another filter earlier in order replaces the body: the first
 *                          filter with a surviving 'b' wins and keeps ALL its chunks;
 *      FROM_CONFLICT       an earlier CHGFROM survived (first wins, one per message);
 *      QUARANTINE_CONFLICT an earlier QUARANTINE survived (first wins);
 *      HEADER_CONFLICT     an earlier CHGHEADER targets the same header name (ASCII case
 *                          -insensitive) and occurrence (0 counts as 1): first wins;
 *      DUPLICATE_RCPT      an earlier ADDRCPT/ADDRCPT_PAR (or DELRCPT) names the same
 *                          address, byte for byte: first wins.
 * 6. Order of the surviving modifications. Every filter saw the original message, so
 *    every index refers to the original; the order below keeps it that way on Postfix
 *    (which renumbers after a delete) and Sendmail (which does not):
 *      a. CHGHEADER ('m'), grouped by header name in the order names first appear (filter
 *         order), within one name in DESCENDING occurrence index, so a delete never
 *         shifts an occurrence still to be changed. Within a filter, indexes likewise
 *         refer to the headers as received, not as renumbered by its own earlier ops;
 *      b. INSHEADER ('i'), DESCENDING position; equal positions in filter order, exactly
 *         as if applied one after another (the later one ends up above). Known limit:
 *         positions count after the deletes of step a, whose absolute positions this
 *         module cannot know; positions 0 and 1 (top of message, above or below
 *         Postfix's own Received) are exact;
 *      c. ADDHEADER ('h'), filter order (appends shift nothing);
 *      d. CHGFROM ('e'); then DELRCPT ('-') before ADDRCPT ('+', '2'), so a filter's
 *         delete, which refers to the original envelope, never removes a recipient
 *         another filter just added; each in filter order;
 *      e. REPLBODY ('b'): the winner's chunks in its order;
 *      f. QUARANTINE ('q').
 *    Mods are applied whatever the non-refusing verdict (continue, accept, skip).
 *
 * 7. Pipelined content (mgw_policy_deferred_fate). A refusal of a header, of the end of
 *    headers or of a body chunk only takes effect at the end of DATA, so the MTA need
 *    not wait for those answers: where it offers NR_HDR, NR_EOH and NR_BODY, the
 *    negotiation asks for them unless a filter that answers that event is strict
 *    (`pipelined` false in its declaration: `content: strict`). The MTA then streams the
 *    content; the bridge forwards every event to the filters at once, and their answers
 *    count at the next event of the message the MTA waits for (the end of message, or
 *    the end of headers if a strict filter answers it). The result is what answering
 *    each event would have given:
 *      - the message ends at the EARLIEST content event that some filter refused
 *        (reject, tempfail, discard, or its on_error verdict when it failed on that
 *        event); the refusals of that one event merge by rule 1 (rank, then filter
 *        order, whose SMTP text is sent); refusals of later events never count;
 *      - from the moment a refusal is known, nothing more of the message is forwarded to
 *        any filter (not even the end of message): the MTA would have stopped there;
 *        filters may have been sent a few events past the refused one meanwhile;
 *      - accept retires a filter for the rest of the message, skip stops its body, from
 *        the event they answer on, as they would have; the MTA just goes on sending;
 *      - the wait event is held until every filter has answered (or failed, each against
 *        its own deadline; progress extends it) the content events it still owes.
 *    Only content events are pipelined; an event the MTA waits for is merged as above.
 *
 * 8. Ordered phases (the bridge, with phase_msg.h). Every filter has a phase (0 to 99,
 *    default 0); the filters of one phase work in parallel by the rules above, and the
 *    phases run in ascending order, as the milters of a Postfix chain do:
 *      - an event the MTA waits for goes to the first phase; once that phase has
 *        answered, the next phase gets it unless the answers so far refuse it (merged
 *        by rule 1 over every phase asked: reject, tempfail, discard), and so on. A
 *        refused event reaches no later phase and the MTA is answered at once; an
 *        accepted one goes on (accept only retires the filter that gave it);
 *      - headers, end of headers and body chunks go to the first phase only, as they
 *        come (rule 7). At the end of message, each phase's merged modifications (rules
 *        5 and 6 among the filters of that phase) edit a copy of the message, and the
 *        next phase is shown that copy (its headers, end of headers, body and end of
 *        message, the last waited for): it sees the message as the earlier phases left
 *        it, with headers added, inserted, changed or deleted and the body replaced. Like
 *        a later milter of a Postfix chain, it does not see changes of sender and
 *        recipients as events; they are kept, and netted, for the MTA;
 *      - the MTA gets the verdict merged over every phase asked (rule 1), and the NET
 *        modifications of all phases relative to the message it has (msg_edit.h: changes
 *        of original headers, new headers at their final places, the body if replaced,
 *        recipients and sender as they ended, quarantine), less any the MTA did not grant;
 *      - the copy holds the body in memory up to `limits.phase_memory`, the rest in a
 *        temporary file; a message the copy cannot hold (too many headers, over 1 GiB, a
 *        failing disk) is tempfailed at its end of message.
 *    With one phase (every filter in the same one) nothing is copied or replayed.
 *
 * Splitting a ReplaceBody into chunks and keeping only the first ReplaceBody of one
 * reply is the bridge's job; here every 'b' of the winning filter is kept.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_POLICY_H
#define MGW_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mgw/backend.h"
#include "mgw/milter_codec.h"
#include "mgw/milter_vocab.h"

/* ---- Events as bits (subscriptions, negotiation, liveness) ---- */

/* Bit e is event e of milter_vocab.h (enum mgw_milter_event), so the bits follow the
 * command table; the letters are there. */
#define MGW_POLICY_EV_CONNECT (1u << MGW_MILTER_EV_CONNECT) /* C */
#define MGW_POLICY_EV_HELO    (1u << MGW_MILTER_EV_HELO)    /* H */
#define MGW_POLICY_EV_MAIL    (1u << MGW_MILTER_EV_MAIL)    /* M */
#define MGW_POLICY_EV_RCPT    (1u << MGW_MILTER_EV_RCPT)    /* R */
#define MGW_POLICY_EV_DATA    (1u << MGW_MILTER_EV_DATA)    /* T */
#define MGW_POLICY_EV_HEADER  (1u << MGW_MILTER_EV_HEADER)  /* L */
#define MGW_POLICY_EV_EOH     (1u << MGW_MILTER_EV_EOH)     /* N */
#define MGW_POLICY_EV_BODY    (1u << MGW_MILTER_EV_BODY)    /* B */
#define MGW_POLICY_EV_EOM     (1u << MGW_MILTER_EV_EOM)     /* E */
#define MGW_POLICY_EV_UNKNOWN (1u << MGW_MILTER_EV_UNKNOWN) /* U */
#define MGW_POLICY_EV_ALL     ((1u << MGW_MILTER_EV_SUBSCRIBABLE) - 1u)

/* The MGW_POLICY_EV_* bit of an event command letter (C H M R T L N B E U), or 0
 * (mgw_milter_cmd_event_bit()). */
uint32_t mgw_policy_event_bit(uint8_t cmd);

/* Content stages the MTA may stream without waiting (rule 7). */
#define MGW_POLICY_EV_CONTENT (MGW_POLICY_EV_HEADER | MGW_POLICY_EV_EOH | MGW_POLICY_EV_BODY)

/* ---- Per-event merge ---- */

enum mgw_policy_state {
    MGW_POLICY_NOT_ASKED = 0, /* not sent this event, or sent but observe-only: neutral */
    MGW_POLICY_ANSWERED,      /* `kind` is the filter's own answer */
    MGW_POLICY_FAILED,        /* error/timeout: `kind` is its on_error verdict already */
};

/* One filter's part in one event. Everything is borrowed for the call only. */
struct mgw_policy_answer {
    enum mgw_policy_state state;
    enum mgw_verdict_kind kind; /* ignored when NOT_ASKED */
    /* Full SMTP reply ("550 5.7.1 text", lines joined by CRLF, e.g. from
     * mgw_policy_format_reply()) or NULL for the MTA's default. */
    const char *reply;
    /* Modification frames (h i m b + 2 - e q; see milter_codec.h), in the filter's order.
     * Ignored when NOT_ASKED. */
    const struct mgw_milter_msg *mods;
    size_t nmods;
    /* SMFIF_* the filter may use in this session: its declaration AND what the MTA
     * granted (anything else would be a protocol error towards the MTA). */
    uint32_t actions;
    /* MGW_POLICY_EV_* the gateway will still send this filter in the current message (in
     * the connection, at C and H), counting observe-only events: its subscriptions, less
     * BODY once it skipped, 0 once retired. Drives rule 4 of the merge; 0 means "wants
     * nothing later" and never keeps the MTA talking. */
    uint32_t receives;
    bool shadow;
};

/* Why a modification was not applied. 0 is "applied"; see rule 5 above. */
enum mgw_policy_drop_reason {
    MGW_POLICY_KEPT = 0,
    MGW_POLICY_DROP_NOT_EOM,
    MGW_POLICY_DROP_SHADOW,
    MGW_POLICY_DROP_INVALID,
    MGW_POLICY_DROP_UNDECLARED,
    MGW_POLICY_DROP_FAILED,
    MGW_POLICY_DROP_REFUSED,
    MGW_POLICY_DROP_BODY_CONFLICT,
    MGW_POLICY_DROP_FROM_CONFLICT,
    MGW_POLICY_DROP_QUARANTINE_CONFLICT,
    MGW_POLICY_DROP_HEADER_CONFLICT,
    MGW_POLICY_DROP_DUPLICATE_RCPT,
    MGW_POLICY_DROP_COUNT
};

/* An RFC 5322 field name: one or more printable US-ASCII characters (33-126) except
 * ':'. Anything else (empty, a space, a colon, a control or 8-bit byte) would make the
 * MTA write a broken header or give up on the milter. */
bool mgw_policy_header_name_valid(const char *name, size_t len);

/* Stable snake_case name of a reason, for logs and metric labels ("body_conflict"). */
const char *mgw_policy_drop_name(enum mgw_policy_drop_reason r);

/* One dropped modification. `msg` borrows answers[filter].mods[mod]. */
struct mgw_policy_drop {
    size_t filter;
    size_t mod;
    enum mgw_policy_drop_reason reason;
    const struct mgw_milter_msg *msg;
};

#define MGW_POLICY_NONE SIZE_MAX /* "no filter" for decider / keeper */

struct mgw_policy_result {
    enum mgw_verdict_kind kind; /* what the MTA gets */
    const char *reply;          /* borrowed from answers[decider].reply, or NULL */
    size_t decider;             /* first filter with the top rank (before rule 4), or NONE */
    bool failure_applied;       /* the decider's answer was a failure policy (FAILED) */
    size_t keeper;              /* rule 4: who turned accept/skip into less, or NONE */
    size_t nmods;               /* modifications to apply (all, even beyond mods_cap) */
    size_t ndrops;              /* modifications dropped (all, even beyond drops_cap) */
    size_t dropped[MGW_POLICY_DROP_COUNT]; /* ndrops by reason */
};

/*
 * Merge the answers of n filters (configuration order) to the event `cmd` (one of
 * C H M R T L N B E U). Fills *out; writes the first mods_cap modifications to apply,
 * in order, to mods[] (copies of the input frames: their views still borrow the
 * caller's data), and the first drops_cap drops, in (filter, mod) order, to drops[].
 * A NULL array means "count only" and is never an error.
 * Returns 0; MGW_ENOSPACE if a non-NULL array was too small (*out is complete, so call
 * again with nmods / ndrops entries); MGW_EINVAL for an unknown cmd, state or kind.
 * Cost: O(m log m) in the number of modifications (scratch memory from mgw_xmalloc).
 */
int mgw_policy_merge(uint8_t cmd, const struct mgw_policy_answer *answers, size_t n,
                     struct mgw_milter_msg *mods, size_t mods_cap, struct mgw_policy_drop *drops,
                     size_t drops_cap, struct mgw_policy_result *out);

/*
 * Whether one filter's answer settles the event before the others answer: true only for
 * DISCARD, which nothing outranks (its merge has no reply text and no modifications).
 * The caller must not ask this for a shadow filter's answer.
 */
bool mgw_policy_final_early(enum mgw_verdict_kind kind);

/* Whether a verdict refuses the message (reject, tempfail, discard). */
bool mgw_policy_refusal(enum mgw_verdict_kind kind);

/* ---- Pipelined content (rule 7) ---- */

/* One filter's first refusal of a content event the MTA did not wait for. */
struct mgw_policy_deferred {
    uint64_t event_id;           /* 0: this filter refused none in this message */
    uint8_t cmd;                 /* the event refused: L N or B */
    enum mgw_policy_state state; /* ANSWERED, or FAILED (kind is its on_error verdict) */
    enum mgw_verdict_kind kind;  /* a refusal (mgw_policy_refusal) */
    const char *reply;           /* its SMTP text, or NULL; borrowed */
};

/*
 * The fate of the message from n filters' deferred refusals (configuration order):
 * false when there is none (*out and *cmd untouched); otherwise *out is the rule-1 merge
 * of the refusals of the earliest refused event (decider, text, failure_applied; no
 * modifications) and *cmd that event's command letter.
 */
bool mgw_policy_deferred_fate(const struct mgw_policy_deferred *d, size_t n,
                              struct mgw_policy_result *out, uint8_t *cmd);

/* ---- Liveness ---- */

enum mgw_policy_effect {
    MGW_POLICY_EFFECT_NONE = 0,
    MGW_POLICY_EFFECT_RETIRE_MESSAGE,    /* no more events for this message (abort may
                                            still come; MAIL of the next message does) */
    MGW_POLICY_EFFECT_RETIRE_CONNECTION, /* no more events on this connection */
    MGW_POLICY_EFFECT_SKIP_BODY,         /* no more body chunks; EOM still comes */
};

/*
 * What a filter's own answer `kind` to event `cmd` does to that filter's liveness:
 *   accept at C or H            -> RETIRE_CONNECTION
 *   accept at M R T L N B E U   -> RETIRE_MESSAGE (U too: Postfix treats every accept
 *                                  other than at connect/helo as ending the message)
 *   skip at B                   -> SKIP_BODY (elsewhere skip counts as continue: NONE)
 *   anything else               -> NONE. A reject/tempfail at R refuses that recipient
 *                                  only; the message goes on for this filter. Refusals
 *                                  that end the message or connection do so through the
 *                                  merged verdict, for every filter at once.
 */
enum mgw_policy_effect mgw_policy_effect(uint8_t cmd, enum mgw_verdict_kind kind);

/* ---- SMTP reply text ---- */

#define MGW_POLICY_REPLY_MAX_LINES 32  /* smfi_setmlreply */
#define MGW_POLICY_REPLY_MAX_LINE  980 /* characters of text per line, as given */

/*
 * Build the text of an SMFIR_REPLYCODE for a REJECT or TEMPFAIL into buf[0..cap), NUL
 * terminated. One line: "550 5.7.1 text"; several: "550-5.7.1 l1\r\n550 5.7.1 l2".
 *   code      0 = the default code of the verdict (550 / 451) - but with no enhanced
 *             code and no lines either, there is no custom reply: returns 0, buf = "".
 *             Else 4xx for TEMPFAIL, 5xx for REJECT (second digit 0-5); 421 is allowed
 *             and makes the MTA close the connection.
 *   enhanced  NULL or "" = none; else "x.y.z" (y, z 1-3 digits), x = first digit of code.
 *   lines     nlines <= 32 lines of <= 980 characters each (before escaping); a line
 *             holding CR or LF is refused, not repaired: it is out of contract, and the
 *             caller should fall back to the MTA's default text and say why. '%' is
 *             doubled (Sendmail formats the text; Postfix un-doubles). Without an
 *             enhanced code, a line may not start with a digit of another class than
 *             `code` (Postfix would read it as a conflicting enhanced code). No lines
 *             gives "550 5.7.1" (or "550 ").
 * Returns the length written (without NUL), 0 for "no custom reply", MGW_EINVAL for
 * anything refused above (including any custom reply with another verdict), or
 * MGW_ENOSPACE when cap is too small.
 */
ssize_t mgw_policy_format_reply(unsigned code, const char *enhanced, const char *const *lines,
                                size_t nlines, enum mgw_verdict_kind kind, char *buf, size_t cap);

/* ---- Negotiation: the union of the filters' declarations ---- */

/* What one configured filter declared (its cached Describe answer, or config). */
struct mgw_policy_decl {
    uint32_t events;       /* MGW_POLICY_EV_* it receives (proto "empty = all" already
                              expanded by the caller) */
    uint32_t observe_only; /* subset of events it never answers (bits outside ignored) */
    uint32_t actions;      /* SMFIF_* it may use */
    /* Macro names wanted per MGW_STAGE_*, separated by spaces or tabs; NULL/"" = none.
     * Borrowed for the call. */
    const char *macros[MGW_STAGE_COUNT];
    bool rejected_recipients;  /* asks SMFIP_RCPT_REJ (counts only if it receives R) */
    bool header_leading_space; /* asks SMFIP_HDR_LEADSPC */
    bool shadow;
    /* Its answers to content events may count at the MTA's next wait (rule 7); false =
     * strict: the MTA waits for each one. */
    bool pipelined;
};

/*
 * Fill *out with what the filters together need from the MTA:
 *  - NO_x for every event x (C H M R T L N B U) that no filter receives; NR_x where every
 *    filter that receives x has it observe-only or, for a content event (L N B), is
 *    pipelined (rule 7) - vacuously also where none receives it, so an MTA that cannot
 *    suppress x at least need not wait for an answer. A shadow filter that answers x
 *    keeps NR_x off like any other unless pipelined (the bridge logs its answers).
 *  - SKIP always; RCPT_REJ if a filter that receives R asks (the bridge must then hide
 *    refused recipients from the others); HDR_LEADSPC if any filter asks (the bridge must
 *    then strip the one leading space of header values for filters that did not ask, and
 *    prefix one to their header-modification values).
 *  - actions: the union over NON-shadow filters that receive EOM and answer it; shadow
 *    mods are never applied, so asking the MTA for them would only cost (CHGBODY makes
 *    the MTA keep a copy of every message). SETSYMLIST is left to mgw_negotiate().
 *  - symlist[stage]: NULL when no filter names a macro at that stage; otherwise the MTA
 *    defaults for the stage (Postfix's and Sendmail's), then the union of all filters'
 *    names (shadow included), duplicates removed, first-seen order, single spaces, stored
 *    in storage[0..cap). The MTA lets such a list REPLACE its default one, for every
 *    filter; with the defaults in, one filter's list never takes them from another.
 * Returns the bytes of storage used, or MGW_ENOSPACE (out->symlist then all NULL).
 * out->symlist points into storage. mgw_policy_union_storage() is always enough.
 */
/*
 * The declaration a filter gets to act on in one MTA connection (SessionStart.effective):
 * `d` less what the MTA cannot do. Events the MTA will not send (negotiated away with a
 * NO_x bit, or older than its protocol: UNKNOWN and DATA need the MTA to offer NOUNKNOWN
 * and NODATA) and observe-only bits outside them go; actions are those the MTA granted;
 * rejected_recipients and header_leading_space are off (the bridge never asks for them).
 * Macro lists are kept.
 */
void mgw_policy_effective_decl(const struct mgw_policy_decl *d,
                               const struct mgw_milter_optneg *offered,
                               const struct mgw_milter_optneg *negotiated,
                               struct mgw_policy_decl *out);

ssize_t mgw_policy_union_needs(const struct mgw_policy_decl *decls, size_t n,
                               struct mgw_backend_needs *out, char *storage, size_t cap);
size_t mgw_policy_union_storage(const struct mgw_policy_decl *decls, size_t n);

#endif
