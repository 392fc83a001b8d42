/*
 * mgw_reply.c - the events and replies of mgw_filter.h: what on_event reads (mgw_event_*)
 * and the answer it builds (mgw_reply_*).
 * SPDX-License-Identifier: Apache-2.0
 *
 * A reply is a Miltergw__V1__Reply plus the memory it points into, all owned by the reply:
 * the SMTP text, split in place into lines, and one allocation per modification holding
 * the sub-message and copies of its strings (struct mod). So a callback's arguments need
 * not outlive the call. mgw_session.c gives each event a fresh reply, packs it once
 * on_event has returned (if the event is answered) and frees it with mgw_reply_clear().
 * Nothing here touches gRPC, the session or its locks: these are plain protobuf-c structs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw_filter_int.h"

/* One modification with its sub-message; strings are copied into buf. */
struct mod {
    Miltergw__V1__Modification m; /* first: the array holds &mod->m */
    union {
        Miltergw__V1__AddHeader add_header;
        Miltergw__V1__InsertHeader insert_header;
        Miltergw__V1__ChangeHeader change_header;
        Miltergw__V1__AddRecipient add_rcpt;
        Miltergw__V1__DeleteRecipient delete_rcpt;
        Miltergw__V1__ChangeFrom change_from;
        Miltergw__V1__ReplaceBody replace_body;
        Miltergw__V1__Quarantine quarantine;
    } u;
    char buf[];
};

enum mgw_event mgw_event_kind(const Miltergw__V1__Event *ev)
{
    /* The oneof's field numbers are 10 + EventType from connect (11) to eom (19). */
    switch (ev->event_case) {
    case MILTERGW__V1__EVENT__EVENT_START: return MGW_START;
    case MILTERGW__V1__EVENT__EVENT_ABORT: return MGW_ABORT;
    case MILTERGW__V1__EVENT__EVENT_UNKNOWN: return MGW_UNKNOWN;
    default:
        if (ev->event_case >= MILTERGW__V1__EVENT__EVENT_CONNECT &&
            ev->event_case <= MILTERGW__V1__EVENT__EVENT_EOM)
            return (enum mgw_event)(ev->event_case - MILTERGW__V1__EVENT__EVENT_START);
        return MGW_NONE; /* not set, or a kind newer than this library */
    }
}

const char *mgw_event_macro(const Miltergw__V1__Event *ev, const char *name)
{
    for (size_t i = 0; i < ev->n_macros; i++)
        if (strcmp(ev->macros[i]->key, name) == 0)
            return ev->macros[i]->value;
    return NULL;
}

/* Copies s (NULL = "") to *p and advances *p. */
static char *put(char **p, const char *s)
{
    char *start = *p;
    size_t n = strlen(s ? s : "") + 1;
    memcpy(start, s ? s : "", n);
    *p += n;
    return start;
}

static size_t len0(const char *s)
{
    return s ? strlen(s) + 1 : 1;
}

/* Copies an envelope address to *p, adding angle brackets if it has none (+2 bytes). */
static char *put_addr(char **p, const char *a)
{
    char *start = *p;
    a = a ? a : "";
    *p += sprintf(start, a[0] == '<' ? "%s" : "<%s>", a) + 1;
    return start;
}

void mgw_reply_verdict(struct mgw_reply *r, enum mgw_verdict v)
{
    r->msg.verdict = (Miltergw__V1__Verdict)v;
}

static void reply_smtp(struct mgw_reply *r, enum mgw_verdict v, unsigned code, const char *xcode,
                       const char *text)
{
    /* Copy both strings: the caller's may not outlive its callback, the packing does. */
    size_t xl = len0(xcode);
    free(r->text);
    r->text = xcalloc(1, xl + len0(text));
    char *p = r->text;
    r->msg.verdict = (Miltergw__V1__Verdict)v;
    r->resp.code = code;
    r->resp.enhanced_status = put(&p, xcode);
    r->resp.n_lines = 0;
    if (text) {
        put(&p, text);
        for (p = r->text + xl; p && r->resp.n_lines < MAX_LINES; p = strchr(p, '\n')) {
            if (*p == '\n')
                *p++ = '\0';
            r->lines[r->resp.n_lines++] = p;
        }
    }
    r->resp.lines = r->lines;
    r->msg.response = &r->resp;
}

void mgw_reply_reject(struct mgw_reply *r, unsigned code, const char *xcode, const char *text)
{
    reply_smtp(r, MGW_REJECT, code, xcode, text);
}

void mgw_reply_tempfail(struct mgw_reply *r, unsigned code, const char *xcode, const char *text)
{
    reply_smtp(r, MGW_TEMPFAIL, code, xcode, text);
}

/* Appends a modification of kind `c` with `extra` bytes of string space in mod->buf. */
static struct mod *mod_add(struct mgw_reply *r, Miltergw__V1__Modification__ModificationCase c,
                           size_t extra)
{
    struct mod *m = xcalloc(1, sizeof *m + extra);
    m->m = (Miltergw__V1__Modification)MILTERGW__V1__MODIFICATION__INIT;
    m->m.modification_case = c;
    if (r->msg.n_modifications == r->mods_cap) {
        r->mods_cap = r->mods_cap ? 2 * r->mods_cap : 4;
        r->msg.modifications =
            realloc(r->msg.modifications, r->mods_cap * sizeof *r->msg.modifications);
        if (r->msg.modifications == NULL) {
            fputs("mgw_filter: out of memory\n", stderr);
            abort();
        }
    }
    r->msg.modifications[r->msg.n_modifications++] = &m->m;
    return m;
}

static void header_mod(struct mgw_reply *r, Miltergw__V1__Modification__ModificationCase c,
                       unsigned index, const char *name, const char *value)
{
    struct mod *m = mod_add(r, c, len0(name) + len0(value));
    char *p = m->buf;
    char *n = put(&p, name);
    ProtobufCBinaryData v = {.len = value ? strlen(value) : 0, .data = (uint8_t *)put(&p, value)};
    if (c == MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER) {
        m->u.add_header = (Miltergw__V1__AddHeader)MILTERGW__V1__ADD_HEADER__INIT;
        m->u.add_header.name = n;
        m->u.add_header.value = v;
        m->m.add_header = &m->u.add_header;
    } else if (c == MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER) {
        m->u.insert_header = (Miltergw__V1__InsertHeader)MILTERGW__V1__INSERT_HEADER__INIT;
        m->u.insert_header.index = index;
        m->u.insert_header.name = n;
        m->u.insert_header.value = v;
        m->m.insert_header = &m->u.insert_header;
    } else {
        m->u.change_header = (Miltergw__V1__ChangeHeader)MILTERGW__V1__CHANGE_HEADER__INIT;
        m->u.change_header.index = index;
        m->u.change_header.name = n;
        m->u.change_header.value = v;
        m->m.change_header = &m->u.change_header;
    }
}

void mgw_reply_add_header(struct mgw_reply *r, const char *name, const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER, 0, name, value);
}

void mgw_reply_insert_header(struct mgw_reply *r, unsigned index, const char *name,
                             const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER, index, name, value);
}

void mgw_reply_change_header(struct mgw_reply *r, const char *name, unsigned index,
                             const char *value)
{
    header_mod(r, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER, index, name, value);
}

/* Splits a copy of space-separated ESMTP args at *p into (char **) slots also at *p.
 * `args` needs len0(args) bytes of strings plus args_slots() pointers. */
static size_t args_slots(const char *args)
{
    return args ? strlen(args) / 2 + 1 : 0;
}

static char **put_args(char **p, const char *args, size_t *n)
{
    *n = 0;
    if (args == NULL || args[0] == '\0')
        return NULL;
    char **slots = (char **)*p;
    *p += args_slots(args) * sizeof(char *);
    char *copy = put(p, args), *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
        slots[(*n)++] = w;
    return slots;
}

void mgw_reply_add_rcpt_args(struct mgw_reply *r, const char *address, const char *args)
{
    size_t extra = len0(address) + 2 + len0(args) + args_slots(args) * sizeof(char *);
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT, extra);
    char *p = m->buf; /* the slots first: buf is aligned for pointers */
    m->u.add_rcpt = (Miltergw__V1__AddRecipient)MILTERGW__V1__ADD_RECIPIENT__INIT;
    m->u.add_rcpt.args = put_args(&p, args, &m->u.add_rcpt.n_args);
    m->u.add_rcpt.address = put_addr(&p, address);
    m->m.add_recipient = &m->u.add_rcpt;
}

void mgw_reply_add_rcpt(struct mgw_reply *r, const char *address)
{
    mgw_reply_add_rcpt_args(r, address, NULL);
}

void mgw_reply_delete_rcpt(struct mgw_reply *r, const char *address)
{
    struct mod *m =
        mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT, len0(address) + 2);
    char *p = m->buf;
    m->u.delete_rcpt = (Miltergw__V1__DeleteRecipient)MILTERGW__V1__DELETE_RECIPIENT__INIT;
    m->u.delete_rcpt.address = put_addr(&p, address);
    m->m.delete_recipient = &m->u.delete_rcpt;
}

void mgw_reply_change_from_args(struct mgw_reply *r, const char *address, const char *args)
{
    size_t extra = len0(address) + 2 + len0(args) + args_slots(args) * sizeof(char *);
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM, extra);
    char *p = m->buf;
    m->u.change_from = (Miltergw__V1__ChangeFrom)MILTERGW__V1__CHANGE_FROM__INIT;
    m->u.change_from.args = put_args(&p, args, &m->u.change_from.n_args);
    m->u.change_from.address = put_addr(&p, address);
    m->m.change_from = &m->u.change_from;
}

void mgw_reply_change_from(struct mgw_reply *r, const char *address)
{
    mgw_reply_change_from_args(r, address, NULL);
}

void mgw_reply_replace_body(struct mgw_reply *r, const void *body, size_t len)
{
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY, len);
    if (len)
        memcpy(m->buf, body, len);
    m->u.replace_body = (Miltergw__V1__ReplaceBody)MILTERGW__V1__REPLACE_BODY__INIT;
    m->u.replace_body.body = (ProtobufCBinaryData){.len = len, .data = (uint8_t *)m->buf};
    m->m.replace_body = &m->u.replace_body;
}

void mgw_reply_quarantine(struct mgw_reply *r, const char *reason)
{
    struct mod *m = mod_add(r, MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE, len0(reason));
    char *p = m->buf;
    m->u.quarantine = (Miltergw__V1__Quarantine)MILTERGW__V1__QUARANTINE__INIT;
    m->u.quarantine.reason = put(&p, reason);
    m->m.quarantine = &m->u.quarantine;
}

/* The reply itself lives on its caller's stack (session_event). */
void mgw_reply_clear(struct mgw_reply *r)
{
    for (size_t i = 0; i < r->msg.n_modifications; i++)
        free(r->msg.modifications[i]); /* == the struct mod holding it */
    free(r->msg.modifications);
    free(r->text);
}
