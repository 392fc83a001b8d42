/*
 * msg_edit.c - a held copy of one message, edited by milter modification frames and read
 * back for replay (see msg_edit.h for the rules; the net list is in msg_edit_net.c).
 *
 * It does not talk to the MTA or filters, log, or decide which frames survive a merge
 * (policy.c does). The body lives in memory up to a limit, then in an unlinked temporary
 * file, so a crash leaves nothing behind.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "msg_edit_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mgw/error.h"
#include "mgw/xmalloc.h"

/* ---- Small helpers ---- */

static char *dup_bytes(const char *p, size_t n)
{
    char *s = mgw_xmalloc(n + 1);

    if (n > 0)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void addr_set(struct addr *a, const char *addr, size_t alen, const char *args, size_t arglen)
{
    free(a->addr);
    free(a->args);
    a->addr = dup_bytes(addr, alen);
    a->addr_len = alen;
    a->args = dup_bytes(args, args ? arglen : 0);
    a->args_len = args ? arglen : 0;
}

static void addr_clear(struct addr *a)
{
    free(a->addr);
    free(a->args);
    *a = (struct addr){0};
}

/* ---- Body store ---- */

static int spill_open(const struct mgw_msg_edit_conf *conf, struct body *b)
{
    if (conf->spill_dir != NULL) {
        size_t n = strlen(conf->spill_dir) + sizeof("/mgw-body-XXXXXX");
        char *path = mgw_xmalloc(n);
        int fd;

        snprintf(path, n, "%s/mgw-body-XXXXXX", conf->spill_dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            (void)unlink(path); /* the name goes now; the data lives until close */
        free(path);
        if (fd < 0)
            return MGW_EIO;
        b->fd = fd;
        return 0;
    }
    b->fp = tmpfile(); /* already unlinked */
    if (b->fp == NULL)
        return MGW_EIO;
    b->fd = fileno(b->fp);
    (void)fcntl(b->fd, F_SETFD, FD_CLOEXEC);
    return 0;
}

/* Write at offset `at`, the body's logical end: bytes of a failed write are overwritten by
 * the next one, never read (reads stop at the size). */
static int write_at(int fd, const uint8_t *p, size_t len, size_t at)
{
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)at);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return MGW_EIO;
        p += w;
        at += (size_t)w;
        len -= (size_t)w;
    }
    return 0;
}

static int body_append(const struct mgw_msg_edit_conf *conf, struct body *b, const uint8_t *p,
                       size_t len)
{
    int rc;

    if (len == 0)
        return 0;
    if (len > conf->body_max - b->size)
        return MGW_ENOSPACE;
    if (b->fd < 0 && len <= conf->body_mem_max - b->len) {
        if (b->len + len > b->cap) {
            size_t cap = b->cap ? b->cap : 4096;
            while (cap < b->len + len)
                cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
            if (cap > conf->body_mem_max)
                cap = conf->body_mem_max;
            b->mem = mgw_xrealloc(b->mem, cap);
            b->cap = cap;
        }
        memcpy(b->mem + b->len, p, len);
        b->len += len;
        b->size += len;
        return 0;
    }
    if (b->fd < 0) {
        /* Past the memory limit: the whole body moves to the file. */
        if ((rc = spill_open(conf, b)) < 0)
            return rc;
        if ((rc = write_at(b->fd, b->mem, b->len, 0)) < 0) {
            /* Back to memory only, as if the file had never been opened. */
            if (b->fp != NULL)
                fclose(b->fp);
            else
                close(b->fd);
            b->fp = NULL;
            b->fd = -1;
            return rc;
        }
        free(b->mem);
        b->mem = NULL;
        b->len = b->cap = 0;
    }
    if ((rc = write_at(b->fd, p, len, b->size)) < 0)
        return rc;
    b->size += len;
    return 0;
}

static ssize_t body_read(const struct body *b, size_t off, uint8_t *buf, size_t cap)
{
    size_t n;

    if (off >= b->size)
        return 0;
    n = b->size - off < cap ? b->size - off : cap;
    if (n > SSIZE_MAX)
        n = SSIZE_MAX;
    if (b->fd < 0) {
        memcpy(buf, b->mem + off, n);
        return (ssize_t)n;
    }
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(b->fd, buf + got, n - got, (off_t)(off + got));

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return MGW_EIO;
        got += (size_t)r;
    }
    return (ssize_t)n;
}

static void body_clear(struct body *b)
{
    free(b->mem);
    if (b->fp != NULL)
        fclose(b->fp);
    else if (b->fd >= 0)
        close(b->fd);
    *b = (struct body){.fd = -1};
}

/* ---- Life cycle ---- */

struct mgw_msg_edit *mgw_msg_edit_new(const struct mgw_msg_edit_conf *conf)
{
    struct mgw_msg_edit *m = mgw_xcalloc(1, sizeof *m);

    if (conf != NULL)
        m->conf = *conf;
    if (m->conf.body_mem_max == 0)
        m->conf.body_mem_max = MGW_MSG_EDIT_BODY_MEM_MAX;
    if (m->conf.body_max == 0)
        m->conf.body_max = MGW_MSG_EDIT_BODY_MAX;
    if (m->conf.headers_max == 0)
        m->conf.headers_max = MGW_MSG_EDIT_HEADERS_MAX;
    if (m->conf.header_bytes_max == 0)
        m->conf.header_bytes_max = MGW_MSG_EDIT_HEADER_BYTES_MAX;
    if (m->conf.rcpts_max == 0)
        m->conf.rcpts_max = MGW_MSG_EDIT_RCPTS_MAX;
    m->body.fd = -1;
    return m;
}

static void hdrs_free(struct hdr *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
}

static void rcpts_free(struct addr *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        addr_clear(&a[i]);
    free(a);
}

struct mgw_msg_edit *mgw_msg_edit_free(struct mgw_msg_edit *m)
{
    if (m == NULL)
        return NULL;
    hdrs_free(m->ohdr, m->nohdr);
    hdrs_free(m->hdr, m->nhdr);
    addr_clear(&m->sender);
    addr_clear(&m->osender);
    rcpts_free(m->rcpt, m->nrcpt);
    rcpts_free(m->orcpt, m->norcpt);
    body_clear(&m->body);
    free(m->qreason);
    free(m->net);
    free(m);
    return NULL;
}

/* ---- Receiving ---- */

int mgw_msg_edit_set_sender(struct mgw_msg_edit *m, const char *addr, size_t addr_len,
                            const char *args, size_t args_len)
{
    if (m->edited)
        return MGW_EORDER;
    addr_set(&m->osender, addr, addr_len, args, args_len);
    addr_set(&m->sender, addr, addr_len, args, args_len);
    m->has_sender = m->has_osender = true;
    return 0;
}

/* Address and ESMTP args of an 'M'/'R' list, args joined by single spaces into *joined
 * (owned by the caller). */
static int split_list(const struct mgw_strlist *l, struct mgw_str *addr, char **joined,
                      size_t *joined_len)
{
    size_t pos = 0, len = 0;
    struct mgw_str s;

    if (l == NULL || !mgw_milter_list_next(l, &pos, addr))
        return MGW_EINVAL;
    *joined = mgw_xmalloc(l->len + 1); /* the list's NULs become spaces: never longer */
    while (mgw_milter_list_next(l, &pos, &s)) {
        if (len > 0)
            (*joined)[len++] = ' ';
        if (s.len > 0)
            memcpy(*joined + len, s.ptr, s.len);
        len += s.len;
    }
    (*joined)[len] = '\0';
    *joined_len = len;
    return 0;
}

int mgw_msg_edit_mail(struct mgw_msg_edit *m, const struct mgw_strlist *args)
{
    struct mgw_str a;
    char *joined;
    size_t jlen;
    int rc;

    if (m->edited)
        return MGW_EORDER;
    if ((rc = split_list(args, &a, &joined, &jlen)) < 0)
        return rc;
    rc = mgw_msg_edit_set_sender(m, a.ptr, a.len, joined, jlen);
    free(joined);
    return rc;
}

static int rcpt_push(struct mgw_msg_edit *m, struct addr **arr, size_t *n, size_t *cap,
                     const char *addr, size_t alen, const char *args, size_t arglen)
{
    if (*n >= m->conf.rcpts_max)
        return MGW_ENOSPACE;
    *arr = grow(*arr, cap, *n, sizeof **arr);
    (*arr)[*n] = (struct addr){0};
    addr_set(&(*arr)[*n], addr, alen, args, arglen);
    (*n)++;
    return 0;
}

int mgw_msg_edit_add_rcpt(struct mgw_msg_edit *m, const char *addr, size_t addr_len,
                          const char *args, size_t args_len)
{
    int rc;

    if (m->edited)
        return MGW_EORDER;
    rc = rcpt_push(m, &m->orcpt, &m->norcpt, &m->corcpt, addr, addr_len, args, args_len);
    if (rc == 0)
        rc = rcpt_push(m, &m->rcpt, &m->nrcpt, &m->crcpt, addr, addr_len, args, args_len);
    return rc;
}

int mgw_msg_edit_rcpt(struct mgw_msg_edit *m, const struct mgw_strlist *args)
{
    struct mgw_str a;
    char *joined;
    size_t jlen;
    int rc;

    if (m->edited)
        return MGW_EORDER;
    if ((rc = split_list(args, &a, &joined, &jlen)) < 0)
        return rc;
    rc = mgw_msg_edit_add_rcpt(m, a.ptr, a.len, joined, jlen);
    free(joined);
    return rc;
}

/* Whether one more header of these lengths fits the limits. */
static bool header_fits(const struct mgw_msg_edit *m, size_t name_len, size_t value_len)
{
    size_t room = m->conf.header_bytes_max - m->hdr_bytes;

    return m->nhdr < m->conf.headers_max && name_len <= room && value_len <= room - name_len;
}

/* Insert a copy of (name, value) before current header pos (pos == nhdr appends). */
static void header_insert(struct mgw_msg_edit *m, size_t pos, const char *name, size_t name_len,
                          const char *value, size_t value_len, size_t orig)
{
    m->hdr = grow(m->hdr, &m->chdr, m->nhdr, sizeof *m->hdr);
    memmove(&m->hdr[pos + 1], &m->hdr[pos], (m->nhdr - pos) * sizeof *m->hdr);
    m->hdr[pos] = (struct hdr){
        .name = dup_bytes(name, name_len),
        .name_len = name_len,
        .value = dup_bytes(value, value_len),
        .value_len = value_len,
        .orig = orig,
    };
    m->nhdr++;
    m->hdr_bytes += name_len + value_len;
}

static void header_remove(struct mgw_msg_edit *m, size_t pos)
{
    if (pos < m->above)
        m->above--;
    m->hdr_bytes -= m->hdr[pos].name_len + m->hdr[pos].value_len;
    free(m->hdr[pos].name);
    free(m->hdr[pos].value);
    memmove(&m->hdr[pos], &m->hdr[pos + 1], (m->nhdr - pos - 1) * sizeof *m->hdr);
    m->nhdr--;
}

int mgw_msg_edit_add_header(struct mgw_msg_edit *m, const char *name, size_t name_len,
                            const char *value, size_t value_len)
{
    if (m->edited)
        return MGW_EORDER;
    if (name == NULL || name_len == 0)
        return MGW_EINVAL;
    if (!header_fits(m, name_len, value_len))
        return MGW_ENOSPACE;
    m->ohdr = grow(m->ohdr, &m->cohdr, m->nohdr, sizeof *m->ohdr);
    m->ohdr[m->nohdr++] = (struct hdr){
        .name = dup_bytes(name, name_len),
        .name_len = name_len,
        .value = dup_bytes(value, value_len),
        .value_len = value_len,
        .orig = NEW,
    };
    header_insert(m, m->nhdr, name, name_len, value, value_len, m->nohdr - 1);
    return 0;
}

int mgw_msg_edit_body_append(struct mgw_msg_edit *m, const uint8_t *data, size_t len)
{
    if (m->edited)
        return MGW_EORDER;
    if (data == NULL && len > 0)
        return MGW_EINVAL;
    return body_append(&m->conf, &m->body, data, len);
}

/* ---- Applying a phase ---- */

static bool frame_valid(const struct mgw_milter_msg *f)
{
    switch (f->cmd) {
    case MGW_SMFIR_ADDHEADER:
    case MGW_SMFIR_INSHEADER:
    case MGW_SMFIR_CHGHEADER:
        return f->u.header.name.ptr != NULL && f->u.header.name.len > 0 &&
               (f->u.header.value.ptr != NULL || f->u.header.value.len == 0);
    case MGW_SMFIR_REPLBODY: return f->u.body.data != NULL || f->u.body.len == 0;
    case MGW_SMFIR_ADDRCPT:
    case MGW_SMFIR_DELRCPT:
    case MGW_SMFIR_QUARANTINE: return f->u.text.ptr != NULL || f->u.text.len == 0;
    case MGW_SMFIR_ADDRCPT_PAR:
    case MGW_SMFIR_CHGFROM:
        return (f->u.rcpt.addr.ptr != NULL || f->u.rcpt.addr.len == 0) &&
               (f->u.rcpt.args.ptr != NULL || f->u.rcpt.args.len == 0);
    default: return false;
    }
}

/* Current index of occurrence k (1-based) of a header name, or SIZE_MAX. */
static size_t header_find(const struct mgw_msg_edit *m, const struct mgw_str *name, size_t k)
{
    for (size_t i = 0; i < m->nhdr; i++)
        if (name_cmp(m->hdr[i].name, m->hdr[i].name_len, name->ptr, name->len) == 0 && --k == 0)
            return i;
    return SIZE_MAX;
}

static int apply_header(struct mgw_msg_edit *m, const struct mgw_milter_msg *f)
{
    const struct mgw_str *n = &f->u.header.name, *v = &f->u.header.value;
    uint32_t idx = f->u.header.index;
    size_t pos = m->nhdr, hidden = m->conf.ins_hidden;
    bool above = false;

    if (f->cmd == MGW_SMFIR_INSHEADER) {
        /* idx is a place in the MTA's list: hdr[0..above), its hidden headers, the rest. */
        if (hidden > 0 && idx <= m->above) {
            pos = idx;
            above = true;
        } else {
            size_t want = idx <= m->above + hidden ? m->above : idx - hidden;

            pos = want < m->nhdr ? want : m->nhdr;
        }
    } else if (f->cmd == MGW_SMFIR_CHGHEADER) {
        size_t at = header_find(m, n, idx == 0 ? 1 : idx);

        if (at != SIZE_MAX && v->len == 0) {
            header_remove(m, at);
            return 0;
        }
        if (at != SIZE_MAX) {
            struct hdr *h = &m->hdr[at];
            size_t rest = m->hdr_bytes - h->name_len - h->value_len;

            if (n->len > m->conf.header_bytes_max - rest ||
                v->len > m->conf.header_bytes_max - rest - n->len)
                return MGW_ENOSPACE;
            free(h->name);
            free(h->value);
            h->name = dup_bytes(n->ptr, n->len);
            h->name_len = n->len;
            h->value = dup_bytes(v->ptr, v->len);
            h->value_len = v->len;
            m->hdr_bytes = rest + n->len + v->len;
            return 0;
        }
        if (v->len == 0)
            return 0; /* deleting what is not there */
        /* Changing a missing occurrence adds the header at the end, as Postfix does. */
    }
    if (!header_fits(m, n->len, v->len))
        return MGW_ENOSPACE;
    header_insert(m, pos, n->ptr, n->len, v->ptr, v->len, NEW);
    m->above += above;
    return 0;
}

static void rcpt_delete(struct mgw_msg_edit *m, const struct mgw_str *a)
{
    struct mgw_str key = addr_key(a->ptr, a->len);
    size_t k = 0;

    for (size_t i = 0; i < m->nrcpt; i++) {
        struct mgw_str r = addr_key(m->rcpt[i].addr, m->rcpt[i].addr_len);

        if (bytes_eq(r.ptr, r.len, key.ptr, key.len))
            addr_clear(&m->rcpt[i]);
        else
            m->rcpt[k++] = m->rcpt[i];
    }
    m->nrcpt = k;
}

static int apply_one(struct mgw_msg_edit *m, const struct mgw_milter_msg *f)
{
    switch (f->cmd) {
    case MGW_SMFIR_ADDHEADER:
    case MGW_SMFIR_INSHEADER:
    case MGW_SMFIR_CHGHEADER: return apply_header(m, f);
    case MGW_SMFIR_ADDRCPT:
        if (f->u.text.len == 0)
            return 0;
        return rcpt_push(m, &m->rcpt, &m->nrcpt, &m->crcpt, f->u.text.ptr, f->u.text.len, NULL, 0);
    case MGW_SMFIR_ADDRCPT_PAR:
        if (f->u.rcpt.addr.len == 0)
            return 0;
        return rcpt_push(m, &m->rcpt, &m->nrcpt, &m->crcpt, f->u.rcpt.addr.ptr, f->u.rcpt.addr.len,
                         f->u.rcpt.args.ptr, f->u.rcpt.args.len);
    case MGW_SMFIR_DELRCPT: rcpt_delete(m, &f->u.text); return 0;
    case MGW_SMFIR_CHGFROM:
        addr_set(&m->sender, f->u.rcpt.addr.ptr, f->u.rcpt.addr.len, f->u.rcpt.args.ptr,
                 f->u.rcpt.args.len);
        m->has_sender = true;
        return 0;
    case MGW_SMFIR_QUARANTINE:
        free(m->qreason);
        m->qreason = dup_bytes(f->u.text.ptr, f->u.text.len);
        m->qreason_len = f->u.text.len;
        m->quarantined = true;
        return 0;
    default: /* 'b' is handled by the caller */ return 0;
    }
}

int mgw_msg_edit_apply(struct mgw_msg_edit *m, const struct mgw_milter_msg *mods, size_t n)
{
    struct body nb = {.fd = -1};
    bool replace = false, body_closed = false;
    int rc = 0;

    if (mods == NULL && n > 0)
        return MGW_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!frame_valid(&mods[i]))
            return MGW_EINVAL;
        /* Postfix ends a replacement body at the first other frame and refuses a later
         * REPLBODY ("can't currently be mixed with other requests"). */
        if (mods[i].cmd == MGW_SMFIR_REPLBODY && body_closed)
            return MGW_EINVAL;
        if (mods[i].cmd != MGW_SMFIR_REPLBODY && i > 0 && mods[i - 1].cmd == MGW_SMFIR_REPLBODY)
            body_closed = true;
    }
    m->edited = true;
    m->net_valid = false;
    /* The replacement body first: a full disk or a too large body changes nothing. */
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (mods[i].cmd == MGW_SMFIR_REPLBODY) {
            replace = true;
            rc = body_append(&m->conf, &nb, mods[i].u.body.data, mods[i].u.body.len);
        }
    }
    if (rc < 0) {
        body_clear(&nb);
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = apply_one(m, &mods[i]);
    if (replace) {
        body_clear(&m->body);
        m->body = nb;
        m->body_replaced = true;
    }
    return rc;
}

/* ---- The current message ---- */

size_t mgw_msg_edit_header_count(const struct mgw_msg_edit *m)
{
    return m->nhdr;
}

int mgw_msg_edit_header_at(const struct mgw_msg_edit *m, size_t i, struct mgw_str *name,
                           struct mgw_str *value)
{
    if (i >= m->nhdr)
        return MGW_EINVAL;
    *name = (struct mgw_str){m->hdr[i].name, m->hdr[i].name_len};
    *value = (struct mgw_str){m->hdr[i].value, m->hdr[i].value_len};
    return 0;
}

size_t mgw_msg_edit_body_size(const struct mgw_msg_edit *m)
{
    return m->body.size;
}

bool mgw_msg_edit_body_spilled(const struct mgw_msg_edit *m)
{
    return m->body.fd >= 0;
}

bool mgw_msg_edit_body_replaced(const struct mgw_msg_edit *m)
{
    return m->body_replaced;
}

ssize_t mgw_msg_edit_body_read(const struct mgw_msg_edit *m, size_t *off, uint8_t *buf, size_t cap)
{
    ssize_t r;

    if (cap == 0 || buf == NULL || off == NULL)
        return MGW_EINVAL;
    r = body_read(&m->body, *off, buf, cap);
    if (r > 0)
        *off += (size_t)r;
    return r;
}

void mgw_msg_edit_sender(const struct mgw_msg_edit *m, struct mgw_str *addr, struct mgw_str *args)
{
    *addr = (struct mgw_str){m->sender.addr, m->sender.addr_len};
    *args = (struct mgw_str){m->sender.args, m->sender.args_len};
}

size_t mgw_msg_edit_rcpt_count(const struct mgw_msg_edit *m)
{
    return m->nrcpt;
}

int mgw_msg_edit_rcpt_at(const struct mgw_msg_edit *m, size_t i, struct mgw_str *addr,
                         struct mgw_str *args)
{
    if (i >= m->nrcpt)
        return MGW_EINVAL;
    *addr = (struct mgw_str){m->rcpt[i].addr, m->rcpt[i].addr_len};
    *args = (struct mgw_str){m->rcpt[i].args, m->rcpt[i].args_len};
    return 0;
}

bool mgw_msg_edit_quarantined(const struct mgw_msg_edit *m, struct mgw_str *reason)
{
    if (reason != NULL)
        *reason = (struct mgw_str){m->qreason, m->qreason_len};
    return m->quarantined;
}
