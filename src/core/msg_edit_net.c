/*
 * msg_edit_net.c - the net modification list of a held message: what to tell the MTA so
 * that the original it holds becomes the result of every phase (rules and why they are
 * exact: msg_edit.h, THE NET MODIFICATION LIST).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "msg_edit_int.h"

#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/xmalloc.h"

static struct mgw_milter_msg *net_push(struct mgw_msg_edit *m, uint8_t cmd)
{
    m->net = grow(m->net, &m->cnet, m->nnet, sizeof *m->net);
    m->net[m->nnet] = (struct mgw_milter_msg){.cmd = cmd};
    return &m->net[m->nnet++];
}

static void net_header(struct mgw_msg_edit *m, uint8_t cmd, uint32_t index, const char *name,
                       size_t name_len, const char *value, size_t value_len)
{
    struct mgw_milter_msg *f = net_push(m, cmd);

    f->u.header.index = index;
    f->u.header.name = (struct mgw_str){name, name_len};
    f->u.header.value = (struct mgw_str){value, value_len};
}

/* One entry of the MTA's header list after the INSHEADER step. */
struct slot {
    const struct hdr *h; /* the original (orig != NEW) or the new current header */
    size_t orig;         /* original index, or NEW */
    size_t pos;          /* position in that list */
    size_t occ;          /* 1-based occurrence of its name, counting from the top */
};

static int slot_by_name(const void *a, const void *b)
{
    const struct slot *x = *(const struct slot *const *)a, *y = *(const struct slot *const *)b;
    int c = name_cmp(x->h->name, x->h->name_len, y->h->name, y->h->name_len);

    if (c != 0)
        return c;
    return x->pos < y->pos ? -1 : (x->pos > y->pos ? 1 : 0);
}

/* Steps 1-3 of the net rule (msg_edit.h). */
static int net_headers(struct mgw_msg_edit *m)
{
    size_t n = m->nohdr + m->nhdr;
    struct slot *s = mgw_xcalloc(n ? n : 1, sizeof *s);
    struct slot **byname = mgw_xcalloc(n ? n : 1, sizeof *byname);
    size_t *cur_of = mgw_xmalloc((m->nohdr ? m->nohdr : 1) * sizeof *cur_of);
    size_t ns = 0, o = 0, pend = 0, pend_at = 0;
    int rc = 0;

    for (size_t k = 0; k < m->nohdr; k++)
        cur_of[k] = NEW;
    for (size_t j = 0; j < m->nhdr; j++)
        if (m->hdr[j].orig != NEW)
            cur_of[m->hdr[j].orig] = j;

    /* The list after step 1: originals in order, each new header just before the next
     * surviving original (after any deleted ones). pend counts new headers waiting for
     * it, from current index pend_at. */
    for (size_t j = m->above; j <= m->nhdr; j++) {
        if (j < m->nhdr && m->hdr[j].orig == NEW) {
            if (pend++ == 0)
                pend_at = j;
            continue;
        }
        if (j == m->nhdr)
            break; /* the rest are appended in step 3 */
        for (; o < m->hdr[j].orig; o++, ns++)
            s[ns] = (struct slot){.h = &m->ohdr[o], .orig = o, .pos = ns};
        for (size_t p = pend_at; pend > 0; p++) {
            if (m->hdr[p].orig != NEW)
                continue;
            if (ns > UINT32_MAX - m->conf.ins_hidden) {
                rc = MGW_ENOSPACE;
                goto out;
            }
            net_header(m, MGW_SMFIR_INSHEADER, (uint32_t)(ns + m->conf.ins_hidden), m->hdr[p].name,
                       m->hdr[p].name_len, m->hdr[p].value, m->hdr[p].value_len);
            s[ns] = (struct slot){.h = &m->hdr[p], .orig = NEW, .pos = ns};
            ns++;
            pend--;
        }
        s[ns] = (struct slot){.h = &m->ohdr[o], .orig = o, .pos = ns};
        ns++;
        o++;
    }
    for (; o < m->nohdr; o++, ns++)
        s[ns] = (struct slot){.h = &m->ohdr[o], .orig = o, .pos = ns};

    /* Occurrence of each slot's name, counting from the top (case-insensitive). */
    for (size_t i = 0; i < ns; i++)
        byname[i] = &s[i];
    qsort(byname, ns, sizeof *byname, slot_by_name);
    for (size_t i = 0; i < ns; i++) {
        const struct slot *prev = i > 0 ? byname[i - 1] : NULL;
        bool same = prev && name_cmp(prev->h->name, prev->h->name_len, byname[i]->h->name,
                                     byname[i]->h->name_len) == 0;
        byname[i]->occ = same ? prev->occ + 1 : 1;
    }

    /* Step 2: changed or deleted originals, bottom up. */
    for (size_t i = ns; i-- > 0;) {
        const struct hdr *oh = s[i].h, *ch;

        if (s[i].orig == NEW)
            continue;
        if (s[i].occ > UINT32_MAX) {
            rc = MGW_ENOSPACE;
            goto out;
        }
        if (cur_of[s[i].orig] == NEW) {
            net_header(m, MGW_SMFIR_CHGHEADER, (uint32_t)s[i].occ, oh->name, oh->name_len, "", 0);
            continue;
        }
        ch = &m->hdr[cur_of[s[i].orig]];
        if (bytes_eq(oh->name, oh->name_len, ch->name, ch->name_len) &&
            bytes_eq(oh->value, oh->value_len, ch->value, ch->value_len))
            continue;
        net_header(m, MGW_SMFIR_CHGHEADER, (uint32_t)s[i].occ, ch->name, ch->name_len, ch->value,
                   ch->value_len);
    }

    /* Step 2b: the headers above the MTA's hidden ones, top down at 0, 1, ...: after the
     * changes, which the MTA counts with its own first header still on top. */
    for (size_t k = 0; k < m->above; k++)
        net_header(m, MGW_SMFIR_INSHEADER, (uint32_t)k, m->hdr[k].name, m->hdr[k].name_len,
                   m->hdr[k].value, m->hdr[k].value_len);

    /* Step 3: new headers below the last surviving original. */
    for (size_t p = pend_at; pend > 0; p++) {
        if (m->hdr[p].orig != NEW)
            continue;
        net_header(m, MGW_SMFIR_ADDHEADER, 0, m->hdr[p].name, m->hdr[p].name_len, m->hdr[p].value,
                   m->hdr[p].value_len);
        pend--;
    }
out:
    free(cur_of);
    free(byname);
    free(s);
    return rc;
}

/* One recipient, from the original (side 0) or the current list (side 1). */
struct rref {
    struct mgw_str key, args;
    uint8_t side;
    size_t idx;
};

static int rref_cmp(const void *a, const void *b)
{
    const struct rref *x = a, *y = b;
    int c = bytes_cmp(x->key.ptr, x->key.len, y->key.ptr, y->key.len);

    if (c == 0)
        c = bytes_cmp(x->args.ptr, x->args.len, y->args.ptr, y->args.len);
    if (c == 0)
        c = (int)x->side - (int)y->side;
    return c;
}

/* Step 5: recipients, netted per address (a group). A group where some (address, args)
 * lost copies needs a DELRCPT and all its current recipients added back; a group that
 * only gained copies needs just the extra ones added. */
static void net_rcpts(struct mgw_msg_edit *m)
{
    size_t n = m->norcpt + m->nrcpt, ng = 0, k = 0;
    struct rref *r = mgw_xcalloc(n ? n : 1, sizeof *r);
    size_t *gid_o = mgw_xcalloc(m->norcpt ? m->norcpt : 1, sizeof *gid_o);
    size_t *gid_c = mgw_xcalloc(m->nrcpt ? m->nrcpt : 1, sizeof *gid_c);
    bool *add = mgw_xcalloc(m->nrcpt ? m->nrcpt : 1, sizeof *add);
    bool *lost = mgw_xcalloc(n ? n : 1, sizeof *lost);
    bool *deleted = mgw_xcalloc(n ? n : 1, sizeof *deleted);

    for (size_t i = 0; i < m->norcpt; i++)
        r[k++] = (struct rref){addr_key(m->orcpt[i].addr, m->orcpt[i].addr_len),
                               {m->orcpt[i].args, m->orcpt[i].args_len},
                               0,
                               i};
    for (size_t i = 0; i < m->nrcpt; i++)
        r[k++] = (struct rref){addr_key(m->rcpt[i].addr, m->rcpt[i].addr_len),
                               {m->rcpt[i].args, m->rcpt[i].args_len},
                               1,
                               i};
    qsort(r, n, sizeof *r, rref_cmp);

    /* Sorted by (address, args, side): each run of one (address, args) has its originals
     * first. Current entries beyond the originals' count are extras. */
    for (size_t i = 0; i < n;) {
        size_t g = ng++, j = i;

        while (j < n && bytes_eq(r[j].key.ptr, r[j].key.len, r[i].key.ptr, r[i].key.len)) {
            size_t run = j, count[2] = {0, 0};

            while (run < n &&
                   bytes_eq(r[run].key.ptr, r[run].key.len, r[j].key.ptr, r[j].key.len) &&
                   bytes_eq(r[run].args.ptr, r[run].args.len, r[j].args.ptr, r[j].args.len)) {
                if (r[run].side == 0) {
                    gid_o[r[run].idx] = g;
                } else {
                    gid_c[r[run].idx] = g;
                    add[r[run].idx] = count[1] >= count[0];
                }
                count[r[run].side]++;
                run++;
            }
            if (count[0] > count[1])
                lost[g] = true;
            j = run;
        }
        i = j;
    }
    for (size_t i = 0; i < m->norcpt; i++) {
        size_t g = gid_o[i];

        if (lost[g] && !deleted[g]) {
            struct mgw_milter_msg *f = net_push(m, MGW_SMFIR_DELRCPT);
            f->u.text = (struct mgw_str){m->orcpt[i].addr, m->orcpt[i].addr_len};
            deleted[g] = true;
        }
    }
    for (size_t i = 0; i < m->nrcpt; i++) {
        const struct addr *a = &m->rcpt[i];
        struct mgw_milter_msg *f;

        if (!lost[gid_c[i]] && !add[i])
            continue;
        if (a->args_len == 0) {
            f = net_push(m, MGW_SMFIR_ADDRCPT);
            f->u.text = (struct mgw_str){a->addr, a->addr_len};
        } else {
            f = net_push(m, MGW_SMFIR_ADDRCPT_PAR);
            f->u.rcpt.addr = (struct mgw_str){a->addr, a->addr_len};
            f->u.rcpt.args = (struct mgw_str){a->args, a->args_len};
        }
    }
    free(deleted);
    free(lost);
    free(add);
    free(gid_c);
    free(gid_o);
    free(r);
}

static int net_build(struct mgw_msg_edit *m)
{
    int rc;

    m->nnet = 0;
    if ((rc = net_headers(m)) < 0)
        return rc;
    if (m->has_sender &&
        (!m->has_osender ||
         !bytes_eq(m->sender.addr, m->sender.addr_len, m->osender.addr, m->osender.addr_len) ||
         !bytes_eq(m->sender.args, m->sender.args_len, m->osender.args, m->osender.args_len))) {
        struct mgw_milter_msg *f = net_push(m, MGW_SMFIR_CHGFROM);

        f->u.rcpt.addr = (struct mgw_str){m->sender.addr, m->sender.addr_len};
        if (m->sender.args_len > 0)
            f->u.rcpt.args = (struct mgw_str){m->sender.args, m->sender.args_len};
    }
    net_rcpts(m);
    if (m->body_replaced)
        net_push(m, MGW_SMFIR_REPLBODY); /* the slot: data NULL */
    if (m->quarantined)
        net_push(m, MGW_SMFIR_QUARANTINE)->u.text = (struct mgw_str){m->qreason, m->qreason_len};
    m->net_valid = true;
    return 0;
}

int mgw_msg_edit_net_next(struct mgw_msg_edit *m, struct mgw_msg_edit_cursor *c, uint8_t *buf,
                          size_t cap, struct mgw_milter_msg *out)
{
    int rc;

    if (cap == 0 || buf == NULL)
        return MGW_EINVAL;
    if (!m->net_valid && (rc = net_build(m)) < 0)
        return rc;
    while (c->next < m->nnet) {
        const struct mgw_milter_msg *f = &m->net[c->next];
        ssize_t r;

        if (f->cmd != MGW_SMFIR_REPLBODY) {
            *out = *f;
            c->next++;
            return 1;
        }
        if (c->body_done) {
            c->next++;
            c->body_off = 0;
            c->body_done = false;
            continue;
        }
        /* An empty replacement still needs one (empty) frame to tell the MTA. */
        r = mgw_msg_edit_body_read(m, &c->body_off, buf, cap);
        if (r < 0)
            return (int)r;
        c->body_done = c->body_off >= m->body.size;
        *out = (struct mgw_milter_msg){.cmd = MGW_SMFIR_REPLBODY};
        out->u.body.data = buf;
        out->u.body.len = (size_t)r;
        return 1;
    }
    return 0;
}
