/*
 * milter_xlate.c - filter.proto <-> milter v6 for milter backends (see milter_xlate.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/milter_xlate.h"

#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_vocab.h"
#include "mgw/negotiate.h"
#include "mgw/xmalloc.h"

void mgw_bytes_clear(struct mgw_bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static uint8_t *bytes_room(struct mgw_bytes *b, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;

        while (cap - b->len < n)
            cap *= 2;
        b->p = mgw_xrealloc(b->p, cap);
        b->cap = cap;
    }
    return b->p + b->len;
}

static int put_frame(struct mgw_bytes *out, const struct mgw_milter_msg *m)
{
    ssize_t n = mgw_milter_encoded_len(m);

    if (n < 0 || mgw_milter_encode(m, bytes_room(out, (size_t)n), (size_t)n) != n)
        return MGW_EINVAL;
    out->len += (size_t)n;
    return 0;
}

/* A list of NUL-terminated strings in scratch memory: name, value, ... or address, args. */
struct list {
    struct mgw_bytes b;
};

static void list_add(struct list *l, const char *s)
{
    size_t n = strlen(s) + 1;

    memcpy(bytes_room(&l->b, n), s, n);
    l->b.len += n;
}

static struct mgw_strlist list_view(const struct list *l)
{
    return mgw_milter_list_make((const char *)l->b.p, l->b.len);
}

static uint8_t family_letter(Miltergw__V1__Family f)
{
    switch (f) {
    case MILTERGW__V1__FAMILY__FAMILY_UNIX: return 'L';
    case MILTERGW__V1__FAMILY__FAMILY_INET: return '4';
    case MILTERGW__V1__FAMILY__FAMILY_INET6: return '6';
    default: return 'U';
    }
}

static struct mgw_str str(const char *s)
{
    return (struct mgw_str){s, strlen(s)};
}

static void address_args(struct list *l, const char *addr, char **args, size_t n)
{
    list_add(l, addr);
    for (size_t i = 0; i < n; i++)
        list_add(l, args[i]);
}

int mgw_xlate_event(const Miltergw__V1__Event *ev, uint32_t protocol, struct mgw_bytes *out,
                    struct mgw_xlate_sent *what)
{
    struct mgw_milter_msg m;
    struct list args = {{0}};
    int r = 0;

    memset(&m, 0, sizeof m);
    memset(what, 0, sizeof *what);
    switch (ev->event_case) {
    case MILTERGW__V1__EVENT__EVENT_START:
        return 0;
    case MILTERGW__V1__EVENT__EVENT_CONNECT:
        m.cmd = MGW_SMFIC_CONNECT;
        m.u.connect.hostname = str(ev->connect->hostname);
        m.u.connect.family = family_letter(ev->connect->family);
        m.u.connect.port = (uint16_t)ev->connect->port;
        m.u.connect.address = str(ev->connect->address);
        break;
    case MILTERGW__V1__EVENT__EVENT_HELO:
        m.cmd = MGW_SMFIC_HELO;
        m.u.helo = str(ev->helo->name);
        break;
    case MILTERGW__V1__EVENT__EVENT_MAIL:
        m.cmd = MGW_SMFIC_MAIL;
        address_args(&args, ev->mail->address, ev->mail->args, ev->mail->n_args);
        m.u.args = list_view(&args);
        break;
    case MILTERGW__V1__EVENT__EVENT_RCPT:
        m.cmd = MGW_SMFIC_RCPT;
        address_args(&args, ev->rcpt->address, ev->rcpt->args, ev->rcpt->n_args);
        m.u.args = list_view(&args);
        break;
    case MILTERGW__V1__EVENT__EVENT_DATA: m.cmd = MGW_SMFIC_DATA; break;
    case MILTERGW__V1__EVENT__EVENT_HEADER:
        m.cmd = MGW_SMFIC_HEADER;
        m.u.header.name = str(ev->header->name);
        m.u.header.value.ptr = (const char *)ev->header->value.data;
        m.u.header.value.len = ev->header->value.len;
        /* A header value is a C string on the wire: one with a NUL cannot be sent. */
        if (m.u.header.value.len > 0 && memchr(m.u.header.value.ptr, '\0', m.u.header.value.len))
            return MGW_EINVAL;
        break;
    case MILTERGW__V1__EVENT__EVENT_EOH: m.cmd = MGW_SMFIC_EOH; break;
    case MILTERGW__V1__EVENT__EVENT_BODY:
        m.cmd = MGW_SMFIC_BODY;
        m.u.body.data = ev->body->data.data;
        m.u.body.len = ev->body->data.len;
        break;
    case MILTERGW__V1__EVENT__EVENT_EOM: m.cmd = MGW_SMFIC_BODYEOB; break;
    case MILTERGW__V1__EVENT__EVENT_ABORT: m.cmd = MGW_SMFIC_ABORT; break;
    case MILTERGW__V1__EVENT__EVENT_UNKNOWN:
        m.cmd = MGW_SMFIC_UNKNOWN;
        m.u.unknown = str(ev->unknown->command);
        break;
    default:
        return MGW_EINVAL;
    }
    what->cmd = m.cmd;
    if (ev->n_macros > 0 && mgw_milter_stage_of_cmd(m.cmd) >= 0) {
        struct list pairs = {{0}};
        struct mgw_milter_msg d;

        for (size_t i = 0; i < ev->n_macros; i++) {
            list_add(&pairs, ev->macros[i]->key);
            list_add(&pairs, ev->macros[i]->value);
        }
        memset(&d, 0, sizeof d);
        d.cmd = MGW_SMFIC_MACRO;
        d.u.macro.stage_cmd = m.cmd;
        d.u.macro.pairs = list_view(&pairs);
        r = put_frame(out, &d);
        mgw_bytes_clear(&pairs.b);
    }
    if (r == 0 && (mgw_negotiate_no_bit(m.cmd) & protocol) == 0) {
        r = put_frame(out, &m);
        what->sent = r == 0;
        what->replies = what->sent && m.cmd != MGW_SMFIC_ABORT &&
                        (mgw_negotiate_nr_bit(m.cmd) & protocol) == 0;
    }
    mgw_bytes_clear(&args.b);
    return r;
}

void mgw_xlate_offer(uint32_t actions, struct mgw_milter_optneg *out)
{
    memset(out, 0, sizeof *out);
    out->version = MGW_MILTER_VERSION;
    /* Every SETSYMLIST list is welcome: the MTA's macros are all passed on anyway. */
    out->actions = (actions & MGW_SMFI_CURR_ACTS) | MGW_SMFIF_SETSYMLIST;
    /* Every NO and NR bit (the gateway fakes the answers a milter leaves out) and SKIP;
     * not RCPT_REJ nor HDR_LEADSPC, which the gateway never has from the MTA. */
    out->protocol = MGW_SMFI_CURR_PROT & ~(MGW_SMFIP_RCPT_REJ | MGW_SMFIP_HDR_LEADSPC);
}

void mgw_xlate_decl(const struct mgw_milter_optneg *answer, struct mgw_policy_decl *out,
                    char *storage, size_t cap)
{
    size_t used = 0;

    memset(out, 0, sizeof *out);
    for (int e = 0; e < MGW_MILTER_EV_SUBSCRIBABLE; e++) {
        uint8_t c = mgw_milter_event_cmd(e);
        uint32_t bit = mgw_policy_event_bit(c);

        /* EOM has neither bit: every milter gets it and answers it. */
        if (answer->protocol & mgw_negotiate_no_bit(c))
            continue;
        out->events |= bit;
        if (answer->protocol & mgw_negotiate_nr_bit(c))
            out->observe_only |= bit;
    }
    out->actions = answer->actions & MGW_SMFI_CURR_ACTS & ~MGW_SMFIF_SETSYMLIST;
    for (int st = 0; st < MGW_STAGE_COUNT; st++) {
        const struct mgw_str *l = &answer->symlist[st];

        if (l->ptr == NULL || l->len + 1 > cap - used)
            continue;
        memcpy(storage + used, l->ptr, l->len);
        storage[used + l->len] = '\0';
        out->macros[st] = storage + used;
        used += l->len + 1;
    }
}

/* ---- answers ---- */

static char *dup_str(const struct mgw_str *s)
{
    return mgw_xmemdup(s->ptr ? s->ptr : "", s->len);
}

/* Space-separated ESMTP args (as ADDRCPT_PAR and CHGFROM carry them) as a list. */
static void split_args(const struct mgw_str *s, char ***args, size_t *n)
{
    const char *p = s->ptr, *end = s->ptr ? s->ptr + s->len : NULL;

    *args = NULL;
    *n = 0;
    while (p != NULL && p < end) {
        const char *q = p;

        while (q < end && *q != ' ')
            q++;
        if (q > p) {
            *args = mgw_xrealloc(*args, (*n + 1) * sizeof **args);
            (*args)[(*n)++] = mgw_xmemdup(p, (size_t)(q - p));
        }
        p = q + 1;
    }
}

static ProtobufCBinaryData bytes_of(const void *data, size_t len)
{
    ProtobufCBinaryData b = {len, NULL};

    if (len > 0)
        b.data = mgw_xmemdup(data, len);
    return b;
}

static Miltergw__V1__Reply *new_reply(uint64_t id, Miltergw__V1__Verdict v)
{
    Miltergw__V1__Reply *r = mgw_xcalloc(1, sizeof *r);

    miltergw__v1__reply__init(r);
    r->event_id = id;
    r->verdict = v;
    return r;
}

static Miltergw__V1__Modification *add_mod(struct mgw_xlate_reply *x, uint64_t id)
{
    Miltergw__V1__Modification *mod = mgw_xcalloc(1, sizeof *mod);

    if (x->r == NULL)
        x->r = new_reply(id, MILTERGW__V1__VERDICT__VERDICT_UNSPECIFIED);
    if (x->r->n_modifications == x->cap_mods) {
        x->cap_mods = x->cap_mods ? 2 * x->cap_mods : 4;
        x->r->modifications =
            mgw_xrealloc(x->r->modifications, x->cap_mods * sizeof *x->r->modifications);
    }
    miltergw__v1__modification__init(mod);
    x->r->modifications[x->r->n_modifications++] = mod;
    return mod;
}

/* Several REPLBODY frames in a row are one new body, as the MTA reads them. */
static void add_body(struct mgw_xlate_reply *x, uint64_t id, const uint8_t *data, size_t len)
{
    Miltergw__V1__Modification *last =
        x->r && x->r->n_modifications ? x->r->modifications[x->r->n_modifications - 1] : NULL;
    Miltergw__V1__ReplaceBody *rb;

    if (last != NULL && last->modification_case ==
                            MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY) {
        ProtobufCBinaryData *b = &last->replace_body->body;

        if (len > 0) {
            b->data = mgw_xrealloc(b->data, b->len + len);
            memcpy(b->data + b->len, data, len);
            b->len += len;
        }
        return;
    }
    last = add_mod(x, id);
    rb = mgw_xcalloc(1, sizeof *rb);
    miltergw__v1__replace_body__init(rb);
    rb->body = bytes_of(data, len);
    last->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_REPLACE_BODY;
    last->replace_body = rb;
}

static void add_header_mod(struct mgw_xlate_reply *x, uint64_t id, const struct mgw_milter_msg *m)
{
    Miltergw__V1__Modification *mod = add_mod(x, id);
    const struct mgw_str *v = &m->u.header.value;

    if (m->cmd == MGW_SMFIR_ADDHEADER) {
        Miltergw__V1__AddHeader *h = mgw_xcalloc(1, sizeof *h);

        miltergw__v1__add_header__init(h);
        h->name = dup_str(&m->u.header.name);
        h->value = bytes_of(v->ptr, v->len);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_HEADER;
        mod->add_header = h;
    } else if (m->cmd == MGW_SMFIR_INSHEADER) {
        Miltergw__V1__InsertHeader *h = mgw_xcalloc(1, sizeof *h);

        miltergw__v1__insert_header__init(h);
        h->index = m->u.header.index;
        h->name = dup_str(&m->u.header.name);
        h->value = bytes_of(v->ptr, v->len);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_INSERT_HEADER;
        mod->insert_header = h;
    } else {
        Miltergw__V1__ChangeHeader *h = mgw_xcalloc(1, sizeof *h);

        miltergw__v1__change_header__init(h);
        h->index = m->u.header.index;
        h->name = dup_str(&m->u.header.name);
        h->value = bytes_of(v->ptr, v->len);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_HEADER;
        mod->change_header = h;
    }
}

static void add_envelope_mod(struct mgw_xlate_reply *x, uint64_t id, const struct mgw_milter_msg *m)
{
    Miltergw__V1__Modification *mod = add_mod(x, id);

    switch (m->cmd) {
    case MGW_SMFIR_ADDRCPT:
    case MGW_SMFIR_ADDRCPT_PAR: {
        Miltergw__V1__AddRecipient *a = mgw_xcalloc(1, sizeof *a);

        miltergw__v1__add_recipient__init(a);
        if (m->cmd == MGW_SMFIR_ADDRCPT) {
            a->address = dup_str(&m->u.text);
        } else {
            a->address = dup_str(&m->u.rcpt.addr);
            split_args(&m->u.rcpt.args, &a->args, &a->n_args);
        }
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_ADD_RECIPIENT;
        mod->add_recipient = a;
        break;
    }
    case MGW_SMFIR_DELRCPT: {
        Miltergw__V1__DeleteRecipient *d = mgw_xcalloc(1, sizeof *d);

        miltergw__v1__delete_recipient__init(d);
        d->address = dup_str(&m->u.text);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_DELETE_RECIPIENT;
        mod->delete_recipient = d;
        break;
    }
    case MGW_SMFIR_CHGFROM: {
        Miltergw__V1__ChangeFrom *c = mgw_xcalloc(1, sizeof *c);

        miltergw__v1__change_from__init(c);
        c->address = dup_str(&m->u.rcpt.addr);
        split_args(&m->u.rcpt.args, &c->args, &c->n_args);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_CHANGE_FROM;
        mod->change_from = c;
        break;
    }
    default: { /* QUARANTINE */
        Miltergw__V1__Quarantine *q = mgw_xcalloc(1, sizeof *q);

        miltergw__v1__quarantine__init(q);
        q->reason = dup_str(&m->u.text);
        mod->modification_case = MILTERGW__V1__MODIFICATION__MODIFICATION_QUARANTINE;
        mod->quarantine = q;
        break;
    }
    }
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Length of an enhanced status code ("5.7.1") at the start of s[0..len), or 0. */
static size_t enhanced_len(const char *s, size_t len)
{
    size_t i = 0;

    for (int part = 0; part < 3; part++) {
        size_t start = i;

        while (i < len && is_digit(s[i]) && i - start < 3)
            i++;
        if (i == start || (part < 2 && (i >= len || s[i++] != '.')))
            return 0;
    }
    return i < len && s[i] != ' ' ? 0 : i;
}

/* "550-5.7.1 a\r\n550 5.7.1 b" as an SmtpResponse; 0, or -1 if it is no 4xx/5xx reply. */
static int parse_replycode(const struct mgw_str *t, Miltergw__V1__SmtpResponse **out)
{
    const char *p = t->ptr, *end = t->ptr + t->len;
    Miltergw__V1__SmtpResponse *resp;
    size_t elen;

    if (t->len < 3 || (p[0] != '4' && p[0] != '5') || !is_digit(p[1]) || !is_digit(p[2]))
        return -1;
    resp = mgw_xcalloc(1, sizeof *resp);
    miltergw__v1__smtp_response__init(resp);
    resp->code = (uint32_t)((p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0'));
    elen = t->len > 4 ? enhanced_len(p + 4, t->len - 4) : 0;
    if (elen > 0)
        resp->enhanced_status = mgw_xmemdup(p + 4, elen);
    while (p < end) {
        const char *eol = p, *text;

        while (eol < end && !(*eol == '\r' && eol + 1 < end && eol[1] == '\n'))
            eol++;
        text = p + 3 < eol ? p + 4 : eol; /* after "550 " or "550-" */
        if (elen > 0 && (size_t)(eol - text) >= elen && memcmp(text, t->ptr + 4, elen) == 0) {
            text += elen;
            if (text < eol && *text == ' ')
                text++;
        }
        resp->lines = mgw_xrealloc(resp->lines, (resp->n_lines + 1) * sizeof *resp->lines);
        resp->lines[resp->n_lines++] = mgw_xmemdup(text, (size_t)(eol - text));
        p = eol < end ? eol + 2 : end;
    }
    *out = resp;
    return 0;
}

static Miltergw__V1__Verdict verdict_of(uint8_t cmd)
{
    switch (cmd) {
    case MGW_SMFIR_CONTINUE: return MILTERGW__V1__VERDICT__VERDICT_CONTINUE;
    case MGW_SMFIR_ACCEPT: return MILTERGW__V1__VERDICT__VERDICT_ACCEPT;
    case MGW_SMFIR_REJECT: return MILTERGW__V1__VERDICT__VERDICT_REJECT;
    case MGW_SMFIR_DISCARD: return MILTERGW__V1__VERDICT__VERDICT_DISCARD;
    case MGW_SMFIR_SKIP: return MILTERGW__V1__VERDICT__VERDICT_SKIP;
    /* CONN_FAIL and SHUTDOWN: the milter cannot serve this connection; the MTA would
     * fail it temporarily. */
    case MGW_SMFIR_TEMPFAIL:
    case MGW_SMFIR_CONN_FAIL:
    case MGW_SMFIR_SHUTDOWN: return MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL;
    default: return MILTERGW__V1__VERDICT__VERDICT_UNSPECIFIED;
    }
}

static Miltergw__V1__Reply *finish(struct mgw_xlate_reply *x, uint64_t id, Miltergw__V1__Verdict v)
{
    Miltergw__V1__Reply *r = x->r ? x->r : new_reply(id, v);

    r->verdict = v;
    x->r = NULL;
    x->cap_mods = 0;
    return r;
}

int mgw_xlate_reply_add(struct mgw_xlate_reply *x, uint64_t id, const struct mgw_milter_msg *m,
                        Miltergw__V1__Reply **out, const char **why)
{
    Miltergw__V1__SmtpResponse *resp = NULL;
    Miltergw__V1__Verdict v;

    switch (m->cmd) {
    case MGW_SMFIR_PROGRESS:
        *out = new_reply(id, MILTERGW__V1__VERDICT__VERDICT_PROGRESS);
        return 1;
    case MGW_SMFIR_ADDHEADER:
    case MGW_SMFIR_INSHEADER:
    case MGW_SMFIR_CHGHEADER:
        add_header_mod(x, id, m);
        return 0;
    case MGW_SMFIR_REPLBODY:
        add_body(x, id, m->u.body.data, m->u.body.len);
        return 0;
    case MGW_SMFIR_ADDRCPT:
    case MGW_SMFIR_ADDRCPT_PAR:
    case MGW_SMFIR_DELRCPT:
    case MGW_SMFIR_CHGFROM:
    case MGW_SMFIR_QUARANTINE:
        add_envelope_mod(x, id, m);
        return 0;
    case MGW_SMFIR_REPLYCODE:
        if (parse_replycode(&m->u.text, &resp) < 0) {
            *why = "a REPLYCODE that is no 4xx or 5xx SMTP reply";
            return MGW_EPROTO;
        }
        v = resp->code >= 500 ? MILTERGW__V1__VERDICT__VERDICT_REJECT
                              : MILTERGW__V1__VERDICT__VERDICT_TEMPFAIL;
        *out = finish(x, id, v);
        (*out)->response = resp;
        return 1;
    default:
        v = verdict_of(m->cmd);
        if (v == MILTERGW__V1__VERDICT__VERDICT_UNSPECIFIED) {
            *why = "a reply that answers no event (OPTNEG or SETSYMLIST)";
            return MGW_EPROTO;
        }
        *out = finish(x, id, v);
        return 1;
    }
}

void mgw_xlate_reply_clear(struct mgw_xlate_reply *x)
{
    if (x->r != NULL)
        protobuf_c_message_free_unpacked(&x->r->base, NULL);
    x->r = NULL;
    x->cap_mods = 0;
}
