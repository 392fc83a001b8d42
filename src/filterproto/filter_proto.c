/*
 * filter_proto.c - milter <-> filter.proto translation (see filter_proto.h). Pure.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/filter_proto.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_vocab.h"
#include "mgw/xmalloc.h"

/* ---- scratch arena ---- */

struct scratch_chunk {
    struct scratch_chunk *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
};

#define CHUNK_MIN 4096

void *mgw_proto_scratch_alloc(struct mgw_proto_scratch *s, size_t n)
{
    struct scratch_chunk *c = s->chunks;
    size_t need = (n + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
    void *p;

    if (c == NULL || c->cap - c->used < need) {
        size_t cap = need > CHUNK_MIN ? need : CHUNK_MIN;

        c = mgw_xmalloc(sizeof *c + cap);
        c->used = 0;
        c->cap = cap;
        c->next = s->chunks;
        s->chunks = c;
    }
    p = c->data + c->used;
    c->used += need;
    return p;
}

void mgw_proto_scratch_reset(struct mgw_proto_scratch *s)
{
    struct scratch_chunk *c = s->chunks, *next;

    /* Keep one chunk for reuse: most events fit in it, so steady state allocates nothing. */
    if (c == NULL)
        return;
    for (next = c->next; next != NULL; next = c->next) {
        c->next = next->next;
        free(next);
    }
    c->used = 0;
    if (c->cap > 16 * CHUNK_MIN) {
        free(c);
        s->chunks = NULL;
    }
}

void mgw_proto_scratch_free(struct mgw_proto_scratch *s)
{
    mgw_proto_scratch_reset(s);
    free(s->chunks);
    s->chunks = NULL;
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid (RFC 3629). */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* A proto3-safe string for s[0..len): s itself when it is valid UTF-8 and NUL-terminated
 * there (the common case: no copy), else a copy with U+FFFD for each invalid byte. */
static char *utf8_string(struct mgw_proto_scratch *sc, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, bad = 0, o = 0;
    char *out;

    if (s == NULL)
        return (char *)"";
    while (i < len) {
        size_t n = utf8_seq(p + i, len - i);

        if (n == 0) {
            bad++;
            n = 1;
        }
        i += n;
    }
    if (bad == 0 && s[len] == '\0')
        return (char *)s;
    out = mgw_proto_scratch_alloc(sc, len + bad * 2 + 1);
    for (i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);

        if (n == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    return out;
}

static char *str_of(struct mgw_proto_scratch *sc, const struct mgw_str *v)
{
    return utf8_string(sc, v->ptr, v->len);
}

/* ---- events ---- */

static void set_macros(struct mgw_proto_event *pe, struct mgw_proto_scratch *sc,
                       const struct mgw_strlist *l)
{
    Miltergw__V1__Event__MacrosEntry *entries, **ptrs;
    struct mgw_str k, v;
    size_t pos = 0, n = 0, cap;

    if (l == NULL || l->count < 2)
        return;
    cap = l->count / 2;
    entries = mgw_proto_scratch_alloc(sc, cap * sizeof *entries);
    ptrs = mgw_proto_scratch_alloc(sc, cap * sizeof *ptrs);
    while (n < cap && mgw_milter_list_next(l, &pos, &k) && mgw_milter_list_next(l, &pos, &v)) {
        miltergw__v1__event__macros_entry__init(&entries[n]);
        entries[n].key = str_of(sc, &k);
        entries[n].value = str_of(sc, &v);
        ptrs[n] = &entries[n];
        n++;
    }
    pe->ev.n_macros = n;
    pe->ev.macros = ptrs;
}

/* MAIL/RCPT: the first string is the address, the rest ESMTP args. */
static char *split_args(struct mgw_proto_scratch *sc, const struct mgw_strlist *l,
                        size_t *nargs, char ***args)
{
    struct mgw_str s;
    size_t pos = 0, n = 0;
    char *addr = (char *)"";

    *args = l->count > 1 ? mgw_proto_scratch_alloc(sc, (l->count - 1) * sizeof **args) : NULL;
    if (mgw_milter_list_next(l, &pos, &s))
        addr = str_of(sc, &s);
    while (mgw_milter_list_next(l, &pos, &s))
        (*args)[n++] = str_of(sc, &s);
    *nargs = n;
    return addr;
}

static Miltergw__V1__Family family_of(uint8_t f)
{
    switch (f) {
    case 'U': return MILTERGW__V1__FAMILY__FAMILY_UNKNOWN;
    case 'L': return MILTERGW__V1__FAMILY__FAMILY_UNIX;
    case '4': return MILTERGW__V1__FAMILY__FAMILY_INET;
    case '6': return MILTERGW__V1__FAMILY__FAMILY_INET6;
    default: return MILTERGW__V1__FAMILY__FAMILY_UNSPECIFIED;
    }
}

int mgw_proto_event_build(struct mgw_proto_event *pe, struct mgw_proto_scratch *sc, uint64_t id,
                          const struct mgw_event *ev)
{
    const struct mgw_milter_msg *m = ev->msg;
    Miltergw__V1__Event *e = &pe->ev;

    miltergw__v1__event__init(e);
    e->event_id = id;
    switch (m->cmd) {
    case MGW_SMFIC_CONNECT:
        miltergw__v1__connect__init(&pe->u.connect);
        pe->u.connect.hostname = str_of(sc, &m->u.connect.hostname);
        pe->u.connect.family = family_of(m->u.connect.family);
        pe->u.connect.address = str_of(sc, &m->u.connect.address);
        pe->u.connect.port = m->u.connect.port;
        e->event_case = MILTERGW__V1__EVENT__EVENT_CONNECT;
        e->connect = &pe->u.connect;
        break;
    case MGW_SMFIC_HELO:
        miltergw__v1__helo__init(&pe->u.helo);
        pe->u.helo.name = str_of(sc, &m->u.helo);
        e->event_case = MILTERGW__V1__EVENT__EVENT_HELO;
        e->helo = &pe->u.helo;
        break;
    case MGW_SMFIC_MAIL:
        miltergw__v1__mail_from__init(&pe->u.mail);
        pe->u.mail.address = split_args(sc, &m->u.args, &pe->u.mail.n_args, &pe->u.mail.args);
        e->event_case = MILTERGW__V1__EVENT__EVENT_MAIL;
        e->mail = &pe->u.mail;
        break;
    case MGW_SMFIC_RCPT:
        miltergw__v1__rcpt_to__init(&pe->u.rcpt);
        pe->u.rcpt.address = split_args(sc, &m->u.args, &pe->u.rcpt.n_args, &pe->u.rcpt.args);
        e->event_case = MILTERGW__V1__EVENT__EVENT_RCPT;
        e->rcpt = &pe->u.rcpt;
        break;
    case MGW_SMFIC_DATA:
        miltergw__v1__data__init(&pe->u.data);
        e->event_case = MILTERGW__V1__EVENT__EVENT_DATA;
        e->data = &pe->u.data;
        break;
    case MGW_SMFIC_HEADER:
        miltergw__v1__header__init(&pe->u.header);
        pe->u.header.name = str_of(sc, &m->u.header.name);
        pe->u.header.value.data = (uint8_t *)m->u.header.value.ptr;
        pe->u.header.value.len = m->u.header.value.len;
        e->event_case = MILTERGW__V1__EVENT__EVENT_HEADER;
        e->header = &pe->u.header;
        break;
    case MGW_SMFIC_EOH:
        miltergw__v1__end_of_headers__init(&pe->u.eoh);
        e->event_case = MILTERGW__V1__EVENT__EVENT_EOH;
        e->eoh = &pe->u.eoh;
        break;
    case MGW_SMFIC_BODY:
        mgw_proto_event_body(pe, id, m->u.body.data, m->u.body.len);
        return 0; /* body chunks carry no macros (see filter.proto) */
    case MGW_SMFIC_BODYEOB:
        miltergw__v1__end_of_message__init(&pe->u.eom);
        e->event_case = MILTERGW__V1__EVENT__EVENT_EOM;
        e->eom = &pe->u.eom;
        break;
    case MGW_SMFIC_ABORT:
        miltergw__v1__abort__init(&pe->u.abort);
        e->event_case = MILTERGW__V1__EVENT__EVENT_ABORT;
        e->abort = &pe->u.abort;
        return 0;
    case MGW_SMFIC_UNKNOWN:
        miltergw__v1__unknown__init(&pe->u.unknown);
        pe->u.unknown.command = str_of(sc, &m->u.unknown);
        e->event_case = MILTERGW__V1__EVENT__EVENT_UNKNOWN;
        e->unknown = &pe->u.unknown;
        return 0;
    default:
        return MGW_EINVAL;
    }
    set_macros(pe, sc, ev->macros);
    return 0;
}

void mgw_proto_event_body(struct mgw_proto_event *pe, uint64_t id, const uint8_t *data,
                          size_t len)
{
    miltergw__v1__event__init(&pe->ev);
    pe->ev.event_id = id;
    miltergw__v1__body_chunk__init(&pe->u.body);
    pe->u.body.data.data = (uint8_t *)data;
    pe->u.body.data.len = len;
    pe->ev.event_case = MILTERGW__V1__EVENT__EVENT_BODY;
    pe->ev.body = &pe->u.body;
}

/* ---- declarations ---- */

/*
 * filter.proto's EventType lists the subscribable events in the order of enum
 * mgw_milter_event, from 1 (0 is UNSPECIFIED): translating is "+ 1" one way and "- 1"
 * the other, and the command table (milter_vocab.h) knows the rest. Checked here, one
 * assertion per event, so that a reordered proto fails the build.
 */
#define PROTO_EV(name) MILTERGW__V1__EVENT_TYPE__EVENT_TYPE_##name
_Static_assert(PROTO_EV(CONNECT) == MGW_MILTER_EV_CONNECT + 1, "EventType CONNECT");
_Static_assert(PROTO_EV(HELO) == MGW_MILTER_EV_HELO + 1, "EventType HELO");
_Static_assert(PROTO_EV(MAIL) == MGW_MILTER_EV_MAIL + 1, "EventType MAIL");
_Static_assert(PROTO_EV(RCPT) == MGW_MILTER_EV_RCPT + 1, "EventType RCPT");
_Static_assert(PROTO_EV(DATA) == MGW_MILTER_EV_DATA + 1, "EventType DATA");
_Static_assert(PROTO_EV(HEADER) == MGW_MILTER_EV_HEADER + 1, "EventType HEADER");
_Static_assert(PROTO_EV(EOH) == MGW_MILTER_EV_EOH + 1, "EventType EOH");
_Static_assert(PROTO_EV(BODY) == MGW_MILTER_EV_BODY + 1, "EventType BODY");
_Static_assert(PROTO_EV(EOM) == MGW_MILTER_EV_EOM + 1, "EventType EOM");
_Static_assert(PROTO_EV(UNKNOWN) == MGW_MILTER_EV_UNKNOWN + 1, "EventType UNKNOWN");
#undef PROTO_EV

/* The command letter of EventType t, or 0 (UNSPECIFIED, out of range). */
static uint8_t event_type_cmd(Miltergw__V1__EventType t)
{
    if ((unsigned)t < 1 || (unsigned)t > MGW_MILTER_EV_SUBSCRIBABLE)
        return 0;
    return mgw_milter_event_cmd((int)t - 1);
}

static uint32_t event_bit(Miltergw__V1__EventType t)
{
    return mgw_policy_event_bit(event_type_cmd(t));
}

/* EventType -> macro stage (SMFIM_*), or -1 for events without one. */
static int stage_of(Miltergw__V1__EventType t)
{
    return mgw_milter_stage_of_cmd(event_type_cmd(t));
}

/* Macro stage -> the EventType that carries its macros. */
static Miltergw__V1__EventType stage_event(int stage)
{
    return (Miltergw__V1__EventType)(mgw_milter_cmd_event(mgw_milter_stage_cmd(stage)) + 1);
}

/* Room for every Action: the action table has a row per SMFIF_* bit. */
static size_t action_count(void)
{
    size_t n;

    (void)mgw_milter_actions(&n);
    return n;
}

static size_t put_varint(uint8_t *buf, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        buf[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[n++] = (uint8_t)v;
    return n;
}

size_t mgw_proto_field_prefix(uint8_t *buf, uint32_t field, uint64_t len)
{
    size_t n = put_varint(buf, (uint64_t)field << 3 | 2); /* wire type 2: length-delimited */

    return n + put_varint(buf + n, len);
}

size_t mgw_proto_varint_field(uint8_t *buf, uint32_t field, uint64_t v)
{
    size_t n = put_varint(buf, (uint64_t)field << 3); /* wire type 0: varint */

    return n + put_varint(buf + n, v);
}

void mgw_proto_decl_default(struct mgw_policy_decl *out)
{
    memset(out, 0, sizeof *out);
    out->events = MGW_POLICY_EV_ALL;
    out->actions = MGW_SMFI_CURR_ACTS & ~MGW_SMFIF_SETSYMLIST;
}

void mgw_proto_decl_from_description(const Miltergw__V1__Description *d,
                                     struct mgw_proto_scratch *sc, struct mgw_policy_decl *out)
{
    memset(out, 0, sizeof *out);
    /* Empty means all; a list of only UNSPECIFIED means none (filter.proto). */
    if (d->n_events == 0)
        out->events = MGW_POLICY_EV_ALL;
    for (size_t i = 0; i < d->n_events; i++)
        out->events |= event_bit(d->events[i]);
    for (size_t i = 0; i < d->n_observe_only; i++)
        out->observe_only |= event_bit(d->observe_only[i]);
    for (size_t i = 0; i < d->n_actions; i++)
        out->actions |= mgw_milter_action_of_proto(d->actions[i]);
    for (size_t i = 0; i < d->n_macros; i++) {
        const Miltergw__V1__MacroRequest *mr = d->macros[i];
        int st = stage_of(mr->stage);
        size_t len = 0, o = 0;
        char *buf;

        if (st < 0 || mr->n_names == 0)
            continue;
        if (out->macros[st] != NULL)
            len = strlen(out->macros[st]) + 1;
        for (size_t k = 0; k < mr->n_names; k++)
            len += strlen(mr->names[k]) + 1;
        buf = mgw_proto_scratch_alloc(sc, len + 1);
        if (out->macros[st] != NULL)
            o = (size_t)(stpcpy(buf, out->macros[st]) - buf);
        for (size_t k = 0; k < mr->n_names; k++) {
            /* Names are space-separated on the wire: a name with a space cannot be asked. */
            if (mr->names[k][0] == '\0' || strpbrk(mr->names[k], " \t") != NULL)
                continue;
            if (o > 0)
                buf[o++] = ' ';
            o = (size_t)(stpcpy(buf + o, mr->names[k]) - buf);
        }
        buf[o] = '\0';
        out->macros[st] = buf;
    }
    out->rejected_recipients = d->rejected_recipients;
    out->header_leading_space = d->header_leading_space;
}

/* The Description a declaration amounts to (for SessionStart.effective). */
static void description_of(Miltergw__V1__Description *d, struct mgw_proto_scratch *sc,
                           const struct mgw_policy_decl *decl)
{
    Miltergw__V1__EventType *ev =
        mgw_proto_scratch_alloc(sc, (MGW_MILTER_EV_SUBSCRIBABLE + 1) * sizeof *ev);
    Miltergw__V1__EventType *obs =
        mgw_proto_scratch_alloc(sc, (MGW_MILTER_EV_SUBSCRIBABLE + 1) * sizeof *obs);
    Miltergw__V1__Action *act = mgw_proto_scratch_alloc(sc, action_count() * sizeof *act);

    miltergw__v1__description__init(d);
    for (unsigned t = 1; t <= MGW_MILTER_EV_SUBSCRIBABLE; t++) {
        if (decl->events & event_bit((Miltergw__V1__EventType)t))
            ev[d->n_events++] = (Miltergw__V1__EventType)t;
        if (decl->events & decl->observe_only & event_bit((Miltergw__V1__EventType)t))
            obs[d->n_observe_only++] = (Miltergw__V1__EventType)t;
    }
    if (d->n_events == 0)
        ev[d->n_events++] = MILTERGW__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    /* Action values are dense from 1 (test_filter_proto checks the enum against the
     * action table), so the first one without a bit ends them. */
    for (int a = 1; mgw_milter_action_of_proto(a) != 0; a++)
        if (decl->actions & mgw_milter_action_of_proto(a))
            act[d->n_actions++] = (Miltergw__V1__Action)a;
    d->events = ev;
    d->observe_only = obs;
    d->actions = act;
    d->macros = mgw_proto_scratch_alloc(sc, MGW_STAGE_COUNT * sizeof *d->macros);
    for (int st = 0; st < MGW_STAGE_COUNT; st++) {
        const char *l = decl->macros[st];
        Miltergw__V1__MacroRequest *mr;
        char *copy, *save = NULL;
        size_t n = 0;

        if (l == NULL || *l == '\0')
            continue;
        mr = mgw_proto_scratch_alloc(sc, sizeof *mr);
        miltergw__v1__macro_request__init(mr);
        mr->stage = stage_event(st);
        copy = mgw_proto_scratch_alloc(sc, strlen(l) + 1);
        strcpy(copy, l);
        mr->names = mgw_proto_scratch_alloc(sc, (strlen(l) / 2 + 1) * sizeof *mr->names);
        for (char *t = strtok_r(copy, " \t", &save); t != NULL; t = strtok_r(NULL, " \t", &save))
            mr->names[n++] = t;
        mr->n_names = n;
        d->macros[d->n_macros++] = mr;
    }
    d->rejected_recipients = decl->rejected_recipients;
    d->header_leading_space = decl->header_leading_space;
}

void mgw_proto_event_start(struct mgw_proto_event *pe, struct mgw_proto_scratch *sc, uint64_t id,
                           const struct mgw_proto_start_info *info)
{
    Miltergw__V1__SessionStart *st = &pe->u.start;

    miltergw__v1__event__init(&pe->ev);
    pe->ev.event_id = id;
    miltergw__v1__session_start__init(st);
    st->session_id = (char *)info->session_id;
    st->gateway_version = (char *)info->gateway_version;
    st->filter_name = (char *)info->filter_name;
    miltergw__v1__milter_options__init(&pe->offered);
    pe->offered.version = info->offered->version;
    pe->offered.actions = info->offered->actions;
    pe->offered.protocol = info->offered->protocol;
    miltergw__v1__milter_options__init(&pe->negotiated);
    pe->negotiated.version = info->negotiated->version;
    pe->negotiated.actions = info->negotiated->actions;
    pe->negotiated.protocol = info->negotiated->protocol;
    st->mta_offered = &pe->offered;
    st->negotiated = &pe->negotiated;
    description_of(&pe->effective, sc, info->effective);
    st->effective = &pe->effective;
    st->header_leading_space = (info->negotiated->protocol & MGW_SMFIP_HDR_LEADSPC) != 0;
    pe->ev.event_case = MILTERGW__V1__EVENT__EVENT_START;
    pe->ev.start = st;
}

/* ---- replies ---- */

/* A bytes field as a NUL-terminated view (copied: protobuf-c does not terminate bytes). */
static struct mgw_str bytes_str(struct mgw_proto_scratch *sc, const ProtobufCBinaryData *b)
{
    char *p = mgw_proto_scratch_alloc(sc, b->len + 1);

    if (b->len)
        memcpy(p, b->data, b->len);
    p[b->len] = '\0';
    return (struct mgw_str){p, b->len};
}

static struct mgw_str cstr(const char *s)
{
    return (struct mgw_str){s ? s : "", s ? strlen(s) : 0};
}

/* ESMTP args travel as one space-separated string (smfi_chgfrom, smfi_addrcpt_par). */
static struct mgw_str join_args(struct mgw_proto_scratch *sc, char **args, size_t n)
{
    size_t len = 0, o = 0;
    char *p;

    if (n == 0)
        return (struct mgw_str){NULL, 0};
    for (size_t i = 0; i < n; i++)
        len += strlen(args[i]) + 1;
    p = mgw_proto_scratch_alloc(sc, len);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            p[o++] = ' ';
        o = (size_t)(stpcpy(p + o, args[i]) - p);
    }
    return (struct mgw_str){p, o};
}

/* Number of milter frames one Modification becomes: a body is split into chunks of at
 * most 65535 bytes, as libmilter's smfi_replacebody does. */
static size_t frames_of(const Miltergw__V1__Modification *m)
{
    if (m->modification_case == MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY) {
        size_t len = m->replace_body->body.len;

        return len == 0 ? 1 : (len + MGW_MILTER_CHUNK_MAX - 1) / MGW_MILTER_CHUNK_MAX;
    }
    return 1;
}

/* Translate one Modification into frames at out[]; returns the count, 0 if unknown. */
static size_t translate_mod(const Miltergw__V1__Modification *m, struct mgw_proto_scratch *sc,
                            struct mgw_milter_msg *out)
{
    memset(out, 0, sizeof *out);
    switch (m->modification_case) {
    case MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER:
        out->cmd = MGW_SMFIR_ADDHEADER;
        out->u.header.name = cstr(m->add_header->name);
        out->u.header.value = bytes_str(sc, &m->add_header->value);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER:
        out->cmd = MGW_SMFIR_INSHEADER;
        out->u.header.index = m->insert_header->index;
        out->u.header.name = cstr(m->insert_header->name);
        out->u.header.value = bytes_str(sc, &m->insert_header->value);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER:
        out->cmd = MGW_SMFIR_CHGHEADER;
        out->u.header.index = m->change_header->index;
        out->u.header.name = cstr(m->change_header->name);
        out->u.header.value = bytes_str(sc, &m->change_header->value);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT:
        if (m->add_recipient->n_args == 0) {
            out->cmd = MGW_SMFIR_ADDRCPT;
            out->u.text = cstr(m->add_recipient->address);
        } else {
            out->cmd = MGW_SMFIR_ADDRCPT_PAR;
            out->u.rcpt.addr = cstr(m->add_recipient->address);
            out->u.rcpt.args = join_args(sc, m->add_recipient->args, m->add_recipient->n_args);
        }
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT:
        out->cmd = MGW_SMFIR_DELRCPT;
        out->u.text = cstr(m->delete_recipient->address);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM:
        out->cmd = MGW_SMFIR_CHGFROM;
        out->u.rcpt.addr = cstr(m->change_from->address);
        out->u.rcpt.args = join_args(sc, m->change_from->args, m->change_from->n_args);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE:
        out->cmd = MGW_SMFIR_QUARANTINE;
        out->u.text = cstr(m->quarantine->reason);
        return 1;
    case MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY: {
        const ProtobufCBinaryData *b = &m->replace_body->body;
        size_t n = frames_of(m);

        for (size_t i = 0; i < n; i++) {
            size_t off = i * MGW_MILTER_CHUNK_MAX;

            memset(&out[i], 0, sizeof out[i]);
            out[i].cmd = MGW_SMFIR_REPLBODY;
            out[i].u.body.data = b->data + off;
            out[i].u.body.len = b->len - off < MGW_MILTER_CHUNK_MAX ? b->len - off
                                                                     : MGW_MILTER_CHUNK_MAX;
        }
        return n;
    }
    default:
        return 0;
    }
}

/* The longest legal reply: 32 lines of 980 characters, every '%' doubled, each line with
 * "xyz-x.yyy.zzz " in front and CRLF after. */
#define REPLY_MAX                                                                          \
    (MGW_POLICY_REPLY_MAX_LINES * (2 * MGW_POLICY_REPLY_MAX_LINE + 32) + 1)

static enum mgw_verdict_kind kind_of(Miltergw__V1__Verdict v, bool *ok)
{
    *ok = true;
    switch (v) {
    case MILTERGW__V1__VERDICT__VERDICT_CONTINUE: return MGW_VERDICT_CONTINUE;
    case MILTERGW__V1__VERDICT__VERDICT_ACCEPT: return MGW_VERDICT_ACCEPT;
    case MILTERGW__V1__VERDICT__VERDICT_REJECT: return MGW_VERDICT_REJECT;
    case MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL: return MGW_VERDICT_TEMPFAIL;
    case MILTERGW__V1__VERDICT__VERDICT_DISCARD: return MGW_VERDICT_DISCARD;
    case MILTERGW__V1__VERDICT__VERDICT_SKIP: return MGW_VERDICT_SKIP;
    default: *ok = false; return MGW_VERDICT_CONTINUE;
    }
}

int mgw_proto_reply_answer(const Miltergw__V1__Reply *r, uint8_t cmd,
                           struct mgw_proto_scratch *sc, struct mgw_proto_answer *out,
                           const char **why)
{
    bool ok;
    size_t nframes = 0, seen_body = 0;

    memset(out, 0, sizeof *out);
    out->kind = kind_of(r->verdict, &ok);
    if (!ok) {
        *why = r->verdict == MILTERGW__V1__VERDICT__VERDICT_UNSPECIFIED ? "reply without verdict"
                                                                       : "unknown verdict";
        return MGW_EPROTO;
    }
    if (out->kind == MGW_VERDICT_DISCARD && (cmd == MGW_SMFIC_CONNECT || cmd == MGW_SMFIC_HELO)) {
        *why = "discard before MAIL: there is no message to discard";
        return MGW_EPROTO;
    }
    if (r->response != NULL && (r->response->code != 0 || r->response->n_lines > 0 ||
                                (r->response->enhanced_status && *r->response->enhanced_status))) {
        if (out->kind == MGW_VERDICT_REJECT || out->kind == MGW_VERDICT_TEMPFAIL) {
            char *buf = mgw_proto_scratch_alloc(sc, REPLY_MAX);
            ssize_t n = mgw_policy_format_reply(r->response->code, r->response->enhanced_status,
                                                (const char *const *)r->response->lines,
                                                r->response->n_lines, out->kind, buf, REPLY_MAX);

            if (n > 0)
                out->reply = buf;
            else if (n < 0)
                out->warning = "SMTP response unusable (code class, enhanced code or text): "
                               "MTA default text used";
        } else {
            out->warning = "SMTP response ignored: only reject and tempfail carry one";
        }
    }
    for (size_t i = 0; i < r->n_modifications; i++)
        nframes += frames_of(r->modifications[i]);
    if (nframes == 0)
        return 0;
    out->mods = mgw_proto_scratch_alloc(sc, nframes * sizeof *out->mods);
    for (size_t i = 0; i < r->n_modifications; i++) {
        const Miltergw__V1__Modification *m = r->modifications[i];
        size_t n;

        if (m->modification_case == MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY) {
            if (seen_body++) {
                out->bodies_dropped++;
                continue;
            }
        }
        n = translate_mod(m, sc, &out->mods[out->nmods]);

        /* A frame the wire cannot carry (a NUL inside a header value) is dropped here: it
         * must never reach the MTA session's encoder. A NUL inside a `string` field cannot
         * be seen: protobuf-c already cut the string there at unpack. */
        for (size_t k = 0; k < n; k++) {
            if (mgw_milter_encoded_len(&out->mods[out->nmods]) < 0) {
                out->mods_invalid++;
                memmove(&out->mods[out->nmods], &out->mods[out->nmods + 1],
                        (n - k - 1) * sizeof *out->mods);
            } else {
                out->nmods++;
            }
        }
        if (n == 0)
            out->mods_invalid++;
    }
    return 0;
}

const char *mgw_proto_reply_split(Miltergw__V1__Reply *r, int batching,
                                  int (*one)(void *arg, Miltergw__V1__Reply *r), void *arg)
{
    const char *why = NULL;

    if (r->n_batch == 0) {
        one(arg, r);
        return NULL;
    }
    if (!batching)
        why = "a batch of replies from a filter that did not declare batches";
    else if (r->event_id != 0 || r->verdict != 0 || r->response != NULL ||
             r->n_modifications || r->session != 0)
        why = "a batch of replies with fields of its own";
    for (size_t i = 0; why == NULL && i < r->n_batch; i++) {
        Miltergw__V1__Reply *e = r->batch[i];

        r->batch[i] = NULL; /* now ours: protobuf-c frees NULL elements as nothing */
        if (e->n_batch > 0) {
            protobuf_c_message_free_unpacked(&e->base, NULL);
            why = "a batch inside a batch";
        } else if (one(arg, e) != 0) {
            break;
        }
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return why;
}
