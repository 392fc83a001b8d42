/*
 * msg_edit.h - a held copy of one message, edited by milter modification frames.
 *
 * Pure: no libevent, no gRPC, no logging, no clocks. The only I/O is the body spill file
 * (below). Used for ordered phases: the gateway records the message as the MTA sent it
 * (envelope, headers, body), applies phase N's merged modification frames to it, replays
 * the result to phase N+1 (the way a later milter in a Postfix chain sees the message),
 * and at the end sends the MTA the NET modifications of all phases as one frame list
 * relative to the ORIGINAL message.
 *
 * LIFE OF A MESSAGE
 *   1. Receive (before the first apply): mgw_msg_edit_set_sender / _mail, _add_rcpt /
 *      _rcpt, _add_header, _body_append, in any order. What is received IS the original.
 *      After the first apply, these return MGW_EORDER.
 *   2. mgw_msg_edit_apply() once per phase (with the phase's merged frames).
 *   3. Replay: mgw_msg_edit_header_at, _body_read, _sender, _rcpt_at.
 *   4. mgw_msg_edit_net_next() walks the net list for the MTA.
 *
 * VALUES AND THE LEADING SPACE. Header values are opaque bytes, kept exactly as given,
 * in the MTA session's convention: the MTA strips one space after the colon when it
 * sends a header to a milter that did not negotiate HDR_LEADSPC, and adds one when it
 * applies h/i/m from such a milter. Because the strip and the add are symmetric, values
 * received (L) and values of modifications must simply use the SAME convention, that of
 * the MTA session; converting for a filter that negotiated otherwise is the bridge's job
 * (policy.h). An original header is never rewritten unless its name or value bytes
 * changed, so "Subject:x" (no space) stays byte-exact when nobody touches it.
 *
 * APPLY SEMANTICS (Postfix cleanup_milter.c; `hidden` is conf.ins_hidden, see below)
 *   h name value      append at the end of the headers.
 *   i idx name value  insert at place idx of the MTA's list (the held headers above its
 *                     hidden ones, the hidden ones, the rest: HIDDEN HEADERS); past the
 *                     end appends.
 *   m idx name value  find occurrence max(idx,1) of `name` (ASCII case-insensitive) among
 *                     the CURRENT headers (those added by earlier phases count). Found:
 *                     empty value deletes it (later indexes shift, as in Postfix), else
 *                     name and value are replaced (the name's spelling is the frame's,
 *                     as Postfix writes it). Not found: empty value does nothing, else the
 *                     header is appended (Postfix falls back to add_header).
 *   b data            the 'b' frames of one list, which must be consecutive, form one
 *                     replacement body (Postfix starts it at the first 'b', ends it at the
 *                     next other frame and treats a later 'b' as a configuration error of
 *                     the milter: here MGW_EINVAL); one empty 'b' empties the body.
 *   + addr            append a recipient without ESMTP args; an empty address is ignored
 *                     (Postfix: "ignoring attempt from Milter to add null recipient").
 *   2 addr [args]     append a recipient with args (args kept as one string).
 *   - addr            delete EVERY recipient with that address. Addresses compare byte for
 *                     byte after removing one enclosing <...> pair ("<a@x>" == "a@x").
 *   e addr [args]     replace the sender and its args.
 *   q reason          quarantine; the last reason wins.
 * Any other frame, or a header frame with an empty name, makes the whole list
 * MGW_EINVAL before anything changes. A limit hit midway (MGW_ENOSPACE) or a spill file
 * error (MGW_EIO) leaves the message valid but partly edited: give it up.
 *
 * HIDDEN HEADERS (conf.ins_hidden). Postfix does not show milters its own Received:
 * header, yet counts it in INSHEADER indexes ("relative to the content as delivered"):
 * index 0 goes above it, index 1 just below it, i.e. above the first header milters see.
 * CHGHEADER indexes skip it. So with Postfix set ins_hidden = 1. The message then holds
 * the headers inserted above the hidden ones apart (at the top, `above` of them): an
 * INSHEADER k <= above goes among them, at k; a larger k goes before held header
 * k - ins_hidden (counting them). A later phase sees them on top, and its own inserts
 * count them, as a later milter of a Postfix chain does (tested against one). Known
 * difference: Postfix's CHGHEADER skips the FIRST header whatever it is, so in a chain a
 * later milter's change of a header named like one inserted above Received counts one
 * occurrence fewer than here. With 0 the index is a plain position (libmilter's meaning).
 *
 * THE NET MODIFICATION LIST (mgw_msg_edit_net_next), in this order:
 *   1. INSHEADER for each new header (added by any phase, or changed after being added)
 *      below the hidden ones that has a surviving original header below it, top to bottom, placed just above
 *      the next surviving original; index = its position in the MTA's list at that
 *      moment + ins_hidden. No delete has run yet, so every original is still there and
 *      positions are the same whether the MTA removes deleted headers (Postfix) or only
 *      marks them (Sendmail, whose marked headers keep their place).
 *   2. CHGHEADER for each original header that was deleted (empty value) or whose name or
 *      value bytes differ, in DESCENDING position; index = its occurrence of that name
 *      (case-insensitive) in the list after step 1, counting the new headers inserted
 *      above it (Postfix walks the edited list, so it counts them too). Bottom-up order
 *      makes Postfix's renumbering after a delete harmless: a delete only shifts headers
 *      below it, which are done already.
 *   2b. INSHEADER 0, 1, ... for the headers above the MTA's hidden ones, top down: after
 *      the changes, which the MTA counts with its own first header still on top.
 *   3. ADDHEADER, in order, for the new headers below the last surviving original. They
 *      come last, so they cannot shift any index above.
 *   4. CHGFROM if the sender or its args differ from the original.
 *   5. Recipients, grouped by address (as '-' compares them) and compared as multisets of
 *      (address, args): a group where some (address, args) has fewer copies than in the
 *      original gets one DELRCPT (all DELRCPTs first; it removes the whole group) and
 *      then ADDRCPT for each of its current recipients; a group that only gained copies
 *      gets ADDRCPT for the extra ones; any other group gets nothing. So a recipient added
 *      then deleted, or deleted then re-added alike, costs nothing (Postfix's duplicate
 *      filter may still remember a deleted recipient and drop its identical re-add).
 *      ADDRCPT is '+' without args, '2' with. Recipient ORDER is not kept: it carries no
 *      meaning for delivery.
 *   6. REPLBODY chunks, consecutive, if any phase replaced the body (even with the same
 *      bytes); one empty frame for an empty body.
 *   7. QUARANTINE with the last reason, if any phase quarantined.
 * Why it is exact: no frame reorders existing headers, so the final list is the
 * surviving originals, in their order, with new headers between them. Step 1 rebuilds
 * the new headers' places while the MTA's list is known exactly (originals + inserted);
 * step 2 edits originals by occurrence in that same known list, bottom up, so no edit
 * moves a header still to be edited; step 3 appends. The tests check, over thousands of
 * generated chains of up to three phases: mgw_msg_edit_apply() of the net list to the
 * original gives the phases' result (headers, body, sender, recipients as a multiset,
 * quarantine); the net list of that result is the same list (canonical); and for
 * ins_hidden 1 an independent model of Postfix's cleanup header editing, fed the
 * original plus its hidden Received: and the net list, delivers the same headers.
 * Example (ins_hidden 0). Original "A:1 B:2 A:3". Phase 1: "m1 A=" (delete A#1), then
 * "i1 N=n" (before the held header 1: B:2 A:3 -> B:2 N:n A:3). Phase 2: "m1 B=22", "h Z=z".
 * Result: B:22 N:n A:3 Z:z. Net list: "i2 N=n" (before the original A:3, all three
 * originals still there: A:1 B:2 N:n A:3), then descending "m1 B=22", "m1 A=", then
 * "h Z=z". Applied to the original it gives B:22 N:n A:3 Z:z.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MSG_EDIT_H
#define MGW_MSG_EDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "mgw/milter_codec.h"

/* Defaults for a zero field of struct mgw_msg_edit_conf. */
#define MGW_MSG_EDIT_BODY_MEM_MAX     (1024u * 1024u)              /* then spill to a file */
#define MGW_MSG_EDIT_BODY_MAX         ((size_t)1024 * 1024 * 1024) /* 1 GiB */
#define MGW_MSG_EDIT_HEADERS_MAX      10000u
#define MGW_MSG_EDIT_HEADER_BYTES_MAX (16u * 1024u * 1024u) /* names + values, all headers */
#define MGW_MSG_EDIT_RCPTS_MAX        100000u
/* Body chunk size for replay and REPLBODY. */
#define MGW_MSG_EDIT_CHUNK MGW_MILTER_CHUNK_MAX

struct mgw_msg_edit_conf {
    size_t body_mem_max;     /* body bytes held in memory; beyond, all of it goes to a file */
    size_t body_max;         /* larger bodies are refused (MGW_ENOSPACE) */
    size_t headers_max;      /* header count */
    size_t header_bytes_max; /* sum of name and value lengths over the current headers */
    size_t rcpts_max;        /* recipients */
    /* Directory of the spill file (mkstemp there, unlinked at once), or NULL for tmpfile().
     * Borrowed: must outlive the message. */
    const char *spill_dir;
    uint32_t ins_hidden; /* headers the MTA hides but counts in INSHEADER (Postfix: 1) */
};

struct mgw_msg_edit;

/* A new empty message. conf may be NULL (all defaults). Never returns NULL. */
struct mgw_msg_edit *mgw_msg_edit_new(const struct mgw_msg_edit_conf *conf);

/* Free everything (closing the spill file, which the system then deletes). Accepts NULL;
 * returns NULL. */
struct mgw_msg_edit *mgw_msg_edit_free(struct mgw_msg_edit *m);

/* ---- Receiving the original (copies everything; MGW_EORDER after the first apply) ---- */

/* Sender address and ESMTP args as one string (args may be NULL / empty). 0, MGW_EORDER. */
int mgw_msg_edit_set_sender(struct mgw_msg_edit *m, const char *addr, size_t addr_len,
                            const char *args, size_t args_len);
/* From an 'M' frame's list: address, then ESMTP args joined by single spaces.
 * 0, MGW_EINVAL (empty list), MGW_EORDER. */
int mgw_msg_edit_mail(struct mgw_msg_edit *m, const struct mgw_strlist *args);

/* Append a recipient. 0, MGW_ENOSPACE (rcpts_max), MGW_EORDER. */
int mgw_msg_edit_add_rcpt(struct mgw_msg_edit *m, const char *addr, size_t addr_len,
                          const char *args, size_t args_len);
/* From an 'R' frame's list, as mgw_msg_edit_mail(). */
int mgw_msg_edit_rcpt(struct mgw_msg_edit *m, const struct mgw_strlist *args);

/* Append a header as received ('L'). 0, MGW_EINVAL (empty name), MGW_ENOSPACE, EORDER. */
int mgw_msg_edit_add_header(struct mgw_msg_edit *m, const char *name, size_t name_len,
                            const char *value, size_t value_len);

/* Append body bytes ('B', 'E' data). 0, MGW_ENOSPACE (body_max), MGW_EIO (spill file),
 * MGW_EORDER. */
int mgw_msg_edit_body_append(struct mgw_msg_edit *m, const uint8_t *data, size_t len);

/* ---- Editing ---- */

/* Apply one phase's frames (h i m b + 2 - e q), in order; see APPLY SEMANTICS. The frames
 * are borrowed for the call. 0, MGW_EINVAL, MGW_ENOSPACE, MGW_EIO. */
int mgw_msg_edit_apply(struct mgw_msg_edit *m, const struct mgw_milter_msg *mods, size_t n);

/* ---- The current message (views valid until the next apply or free) ---- */

size_t mgw_msg_edit_header_count(const struct mgw_msg_edit *m);
/* Header i (0-based) of the current list. 0, or MGW_EINVAL if i is out of range. */
int mgw_msg_edit_header_at(const struct mgw_msg_edit *m, size_t i, struct mgw_str *name,
                           struct mgw_str *value);

size_t mgw_msg_edit_body_size(const struct mgw_msg_edit *m);
bool mgw_msg_edit_body_spilled(const struct mgw_msg_edit *m);
bool mgw_msg_edit_body_replaced(const struct mgw_msg_edit *m);
/* Copy up to cap body bytes from *off into buf and advance *off. Returns the count, 0 at
 * the end, MGW_EINVAL (cap 0), MGW_EIO. For replay, cap = MGW_MSG_EDIT_CHUNK. */
ssize_t mgw_msg_edit_body_read(const struct mgw_msg_edit *m, size_t *off, uint8_t *buf, size_t cap);

/* Sender and its args ("" when none; ptr never NULL once set, NULL before). */
void mgw_msg_edit_sender(const struct mgw_msg_edit *m, struct mgw_str *addr, struct mgw_str *args);
size_t mgw_msg_edit_rcpt_count(const struct mgw_msg_edit *m);
int mgw_msg_edit_rcpt_at(const struct mgw_msg_edit *m, size_t i, struct mgw_str *addr,
                         struct mgw_str *args);
/* Whether a phase quarantined the message; *reason (may be NULL) gets the last reason. */
bool mgw_msg_edit_quarantined(const struct mgw_msg_edit *m, struct mgw_str *reason);

/* ---- The net modification list ---- */

/* A walk over the net list. Zero-fill to start; restart by zero-filling again. A cursor
 * from before an apply must be zero-filled again (the list is recomputed). */
struct mgw_msg_edit_cursor {
    size_t next;     /* index in the computed list */
    size_t body_off; /* inside the REPLBODY slot */
    bool body_done;
};

/*
 * The next frame of the net list (see THE NET MODIFICATION LIST) into *out. Header and
 * envelope frames are views into the message (valid until the next apply or free); a
 * REPLBODY frame carries up to cap bytes copied into buf (cap >= 1; MGW_MSG_EDIT_CHUNK
 * for the MTA), valid until the next call; an empty replacement body is one empty frame.
 * The list is computed on the first call after an apply. out must not be NULL.
 * Returns 1 (a frame), 0 (the end), MGW_EINVAL (cap 0 or buf NULL), MGW_EIO.
 */
int mgw_msg_edit_net_next(struct mgw_msg_edit *m, struct mgw_msg_edit_cursor *c, uint8_t *buf,
                          size_t cap, struct mgw_milter_msg *out);

#endif
