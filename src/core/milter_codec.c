/*
 * milter_codec.c - milter protocol v6 frame decoder and encoder.
 *
 * DESCRIPTION
 *   Turns bytes into struct mgw_milter_msg views and back, for both directions of the
 *   protocol. It does no I/O, keeps no state between calls, allocates nothing and never
 *   logs: the session engine decides what a decode error means for the connection.
 *
 *   It checks shape, not meaning. A CHGHEADER with an empty name or a REPLYCODE that is not
 *   "xyz ..." decodes fine; whether the reply is acceptable in the current state is the
 *   session's business. What the codec guarantees is that every view it returns lies
 *   inside the frame and every string view is NUL-terminated inside the frame.
 *
 *   The decoder is strict about trailing bytes wherever the payload has a defined end
 *   (strings, headers, CONNECT): Postfix's milter8_read_data() also refuses a reply
 *   "followed by N data bytes", and accepting slack there would let two peers disagree
 *   about what a frame meant. The exceptions copy libmilter: payload-less commands and
 *   replies, and the MTA's OPTNEG, ignore whatever follows their fixed part.
 *
 *   The encoder is the decoder's inverse: whatever it accepts decodes back to the same
 *   fields, so it refuses (MGW_EINVAL) the shapes the decoder would call malformed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/milter_codec.h"

#include <limits.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_vocab.h"

/* ---- Byte order helpers ---- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- String lists ---- */

/* Number of NUL bytes in p[0..n): the number of complete strings in a list. */
static size_t count_nuls(const char *p, size_t n)
{
    size_t count = 0;
    const char *end = p + n;

    while (p < end) {
        const char *nul = memchr(p, '\0', (size_t)(end - p));

        if (nul == NULL)
            break;
        count++;
        p = nul + 1;
    }
    return count;
}

int mgw_milter_list_next(const struct mgw_strlist *l, size_t *pos, struct mgw_str *out)
{
    const char *start, *nul;

    if (l == NULL || l->data == NULL || *pos >= l->len)
        return 0;
    start = l->data + *pos;
    /* An unterminated tail (only possible in a hand-made list) is not a string: returning
     * it would break the ptr[len] == '\0' promise of struct mgw_str. */
    nul = memchr(start, '\0', l->len - *pos);
    if (nul == NULL)
        return 0;
    out->ptr = start;
    out->len = (size_t)(nul - start);
    *pos += out->len + 1;
    return 1;
}

struct mgw_strlist mgw_milter_list_make(const char *data, size_t len)
{
    struct mgw_strlist l = {data, len, 0};

    if (data == NULL) {
        l.len = 0;
        return l;
    }
    l.count = count_nuls(data, len);
    /* Count an unterminated tail too, so the encoder sees count != NULs and refuses it. */
    if (len > 0 && data[len - 1] != '\0')
        l.count++;
    return l;
}

/* ---- Decoder ---- */

/* A read cursor over one frame's payload; every take_* checks the length before reading. */
struct cursor {
    const uint8_t *p;
    size_t len;
    size_t off;
};

static size_t cur_left(const struct cursor *c)
{
    return c->len - c->off;
}

static int take_u32(struct cursor *c, uint32_t *v)
{
    if (cur_left(c) < 4)
        return MGW_EMALFORMED;
    *v = get_u32(c->p + c->off);
    c->off += 4;
    return 0;
}

static int take_u8(struct cursor *c, uint8_t *v)
{
    if (cur_left(c) < 1)
        return MGW_EMALFORMED;
    *v = c->p[c->off++];
    return 0;
}

/* One NUL-terminated string; the NUL must lie inside the payload. */
static int take_str(struct cursor *c, struct mgw_str *s)
{
    const uint8_t *start = c->p + c->off;
    const uint8_t *nul = memchr(start, '\0', cur_left(c));

    if (nul == NULL)
        return MGW_EMALFORMED;
    s->ptr = (const char *)start;
    s->len = (size_t)(nul - start);
    c->off += s->len + 1;
    return 0;
}

/* The rest of the payload as a list of strings; it must end with a NUL unless empty. */
static int take_list(struct cursor *c, struct mgw_strlist *l)
{
    size_t n = cur_left(c);

    l->data = (const char *)c->p + c->off;
    l->len = n;
    if (n > 0 && c->p[c->len - 1] != '\0')
        return MGW_EMALFORMED;
    l->count = count_nuls(l->data, n);
    c->off = c->len;
    return 0;
}

static int expect_end(const struct cursor *c)
{
    return cur_left(c) == 0 ? 0 : MGW_EMALFORMED;
}

/* A single string and nothing after it (HELO, UNKNOWN, y, +, -, q). */
static int take_only_str(struct cursor *c, struct mgw_str *s)
{
    int rc = take_str(c, s);

    return rc != 0 ? rc : expect_end(c);
}

static int take_header(struct cursor *c, struct mgw_str *name, struct mgw_str *value)
{
    int rc;

    if ((rc = take_str(c, name)) != 0 || (rc = take_str(c, value)) != 0)
        return rc;
    return expect_end(c);
}

static int decode_optneg(struct cursor *c, enum mgw_milter_dir dir, struct mgw_milter_optneg *o)
{
    if (cur_left(c) < MGW_MILTER_OPTNEG_LEN)
        return MGW_EMALFORMED;
    (void)take_u32(c, &o->version);
    (void)take_u32(c, &o->actions);
    (void)take_u32(c, &o->protocol);
    /* libmilter's st_optionneg reads the first 12 bytes of the MTA's offer and ignores the
     * rest; macro lists only exist in the milter's reply. */
    if (dir == MGW_MILTER_FROM_MTA)
        return 0;
    while (cur_left(c) > 0) {
        uint32_t stage;
        struct mgw_str names;

        if (take_u32(c, &stage) != 0 || stage >= MGW_STAGE_COUNT)
            return MGW_EMALFORMED;
        if (take_str(c, &names) != 0)
            return MGW_EMALFORMED;
        /* Postfix warns and keeps the first; we have one slot per stage and refuse to
         * drop either silently. */
        if (o->symlist[stage].ptr != NULL)
            return MGW_EMALFORMED;
        o->symlist[stage] = names;
    }
    return 0;
}

static int decode_connect(struct cursor *c, struct mgw_milter_msg *m)
{
    uint32_t hi;
    int rc;

    if ((rc = take_str(c, &m->u.connect.hostname)) != 0 ||
        (rc = take_u8(c, &m->u.connect.family)) != 0)
        return rc;
    switch (m->u.connect.family) {
    case 'U': return expect_end(c);
    case 'L':
    case '4':
    case '6': break;
    default: return MGW_EMALFORMED;
    }
    if (cur_left(c) < 2)
        return MGW_EMALFORMED;
    hi = c->p[c->off];
    m->u.connect.port = (uint16_t)(hi << 8 | c->p[c->off + 1]);
    c->off += 2;
    return take_only_str(c, &m->u.connect.address);
}

static int decode_mta(struct cursor *c, struct mgw_milter_msg *m)
{
    int rc;

    switch (m->cmd) {
    case MGW_SMFIC_OPTNEG: return decode_optneg(c, MGW_MILTER_FROM_MTA, &m->u.optneg);
    case MGW_SMFIC_MACRO:
        if ((rc = take_u8(c, &m->u.macro.stage_cmd)) != 0 ||
            (rc = take_list(c, &m->u.macro.pairs)) != 0)
            return rc;
        /* The stage letter itself is not checked: libmilter ignores a D for a letter it
         * does not know, and so can the session (mgw_milter_stage_of_cmd() == -1). */
        return m->u.macro.pairs.count % 2 == 0 ? 0 : MGW_EMALFORMED;
    case MGW_SMFIC_CONNECT: return decode_connect(c, m);
    case MGW_SMFIC_HELO: return take_only_str(c, &m->u.helo);
    case MGW_SMFIC_UNKNOWN: return take_only_str(c, &m->u.unknown);
    case MGW_SMFIC_MAIL:
    case MGW_SMFIC_RCPT:
        if ((rc = take_list(c, &m->u.args)) != 0)
            return rc;
        return m->u.args.count >= 1 ? 0 : MGW_EMALFORMED;
    case MGW_SMFIC_HEADER: return take_header(c, &m->u.header.name, &m->u.header.value);
    case MGW_SMFIC_BODY:
    case MGW_SMFIC_BODYEOB:
        m->u.body.data = c->p + c->off;
        m->u.body.len = cur_left(c);
        return 0;
    default: /* T N A Q K: no payload; trailing bytes are ignored, as libmilter does */ return 0;
    }
}

static int decode_reply(struct cursor *c, struct mgw_milter_msg *m)
{
    int rc;

    switch (m->cmd) {
    case MGW_SMFIR_OPTNEG: return decode_optneg(c, MGW_MILTER_FROM_MILTER, &m->u.optneg);
    case MGW_SMFIR_REPLYCODE:
    case MGW_SMFIR_ADDRCPT:
    case MGW_SMFIR_DELRCPT:
    case MGW_SMFIR_QUARANTINE: return take_only_str(c, &m->u.text);
    case MGW_SMFIR_SETSYMLIST:
        if (take_u32(c, &m->u.symlist.stage) != 0 || m->u.symlist.stage >= MGW_STAGE_COUNT)
            return MGW_EMALFORMED;
        return take_only_str(c, &m->u.symlist.names);
    case MGW_SMFIR_ADDHEADER: return take_header(c, &m->u.header.name, &m->u.header.value);
    case MGW_SMFIR_INSHEADER:
    case MGW_SMFIR_CHGHEADER:
        if ((rc = take_u32(c, &m->u.header.index)) != 0)
            return rc;
        return take_header(c, &m->u.header.name, &m->u.header.value);
    case MGW_SMFIR_REPLBODY:
        m->u.body.data = c->p + c->off;
        m->u.body.len = cur_left(c);
        return 0;
    case MGW_SMFIR_ADDRCPT_PAR:
    case MGW_SMFIR_CHGFROM:
        if ((rc = take_str(c, &m->u.rcpt.addr)) != 0)
            return rc;
        /* The ESMTP args string is optional (libmilter's send2() omits a NULL one). */
        if (cur_left(c) == 0)
            return 0;
        return take_only_str(c, &m->u.rcpt.args);
    default: /* c a r t d s p f 4: no payload; trailing bytes are ignored */ return 0;
    }
}

ssize_t mgw_milter_decode(const struct mgw_milter_decoder *d, const uint8_t *buf, size_t len,
                          struct mgw_milter_msg *out)
{
    enum mgw_milter_dir dir = d != NULL ? d->dir : MGW_MILTER_FROM_MTA;
    uint32_t max = d != NULL && d->max_frame != 0 ? d->max_frame : MGW_MILTER_DEFAULT_MAX_FRAME;
    uint32_t flen;
    struct mgw_milter_msg m;
    struct cursor c;
    int rc;

    if (len < MGW_MILTER_HDR_LEN)
        return MGW_PARTIAL;
    /* Refuse a hostile length before waiting for (and buffering) its bytes. */
    flen = get_u32(buf);
    if (flen == 0)
        return MGW_EFRAME_EMPTY;
    if (flen > max)
        return MGW_EFRAME_TOO_BIG;
#if SSIZE_MAX - MGW_MILTER_HDR_LEN < UINT32_MAX
    /* Where size_t is 32 bits, the consumed count must still fit the ssize_t result. */
    if (flen > (uint32_t)(SSIZE_MAX - MGW_MILTER_HDR_LEN))
        return MGW_EFRAME_TOO_BIG;
#endif
    /* Written as a subtraction so that 4 + flen cannot wrap a 32-bit size_t. */
    if (len - MGW_MILTER_HDR_LEN < flen)
        return MGW_PARTIAL;

    memset(&m, 0, sizeof(m));
    m.cmd = buf[MGW_MILTER_HDR_LEN];
    c.p = buf + MGW_MILTER_HDR_LEN + 1;
    c.len = (size_t)flen - 1;
    c.off = 0;
    if (dir == MGW_MILTER_FROM_MILTER) {
        if (mgw_milter_reply_info(m.cmd) == NULL)
            return MGW_EUNKNOWN_CMD;
        rc = decode_reply(&c, &m);
    } else {
        if (mgw_milter_cmd_info(m.cmd) == NULL)
            return MGW_EUNKNOWN_CMD;
        rc = decode_mta(&c, &m);
    }
    if (rc != 0)
        return rc;
    *out = m;
    return (ssize_t)(MGW_MILTER_HDR_LEN + (size_t)flen);
}

/* ---- Encoder ---- */

/*
 * An output cursor that always counts and writes only while the bytes fit, so one pass
 * both measures the frame and fills the buffer. `bad` records MGW_EINVAL (or a size
 * overflow) so callers can chain writes and check once.
 */
struct writer {
    uint8_t *buf;
    size_t cap;
    size_t off;
    int bad;
};

static void put_bytes(struct writer *w, const void *p, size_t n)
{
    if (n > SIZE_MAX - w->off) {
        w->bad = 1;
        return;
    }
    if (w->buf != NULL && n > 0 && n <= w->cap && w->off <= w->cap - n)
        memcpy(w->buf + w->off, p, n);
    w->off += n;
}

static void put_byte(struct writer *w, uint8_t b)
{
    put_bytes(w, &b, 1);
}

static void put_be32(struct writer *w, uint32_t v)
{
    uint8_t b[4];

    put_u32(b, v);
    put_bytes(w, b, sizeof(b));
}

/* A string that must travel as one NUL-terminated string: no NUL allowed inside it. */
static void put_str(struct writer *w, const struct mgw_str *s)
{
    if (s->len > 0 && (s->ptr == NULL || memchr(s->ptr, '\0', s->len) != NULL)) {
        w->bad = 1;
        return;
    }
    put_bytes(w, s->ptr, s->len);
    put_byte(w, 0);
}

/* A list must end with a NUL and hold exactly `count` strings, or it would not decode back
 * to itself. */
static void put_list(struct writer *w, const struct mgw_strlist *l)
{
    if (l->len == 0) {
        if (l->count != 0)
            w->bad = 1;
        return;
    }
    if (l->data == NULL || l->data[l->len - 1] != '\0' || count_nuls(l->data, l->len) != l->count) {
        w->bad = 1;
        return;
    }
    put_bytes(w, l->data, l->len);
}

static void put_body(struct writer *w, const uint8_t *data, size_t len)
{
    if (len > 0 && data == NULL) {
        w->bad = 1;
        return;
    }
    put_bytes(w, data, len);
}

static void put_connect(struct writer *w, const struct mgw_milter_msg *m)
{
    uint8_t port[2] = {(uint8_t)(m->u.connect.port >> 8), (uint8_t)m->u.connect.port};

    put_str(w, &m->u.connect.hostname);
    put_byte(w, m->u.connect.family);
    switch (m->u.connect.family) {
    case 'U': return; /* no port, no address: that is what 'U' means on the wire */
    case 'L':
    case '4':
    case '6':
        put_bytes(w, port, sizeof(port));
        put_str(w, &m->u.connect.address);
        return;
    default: w->bad = 1;
    }
}

static void put_payload(struct writer *w, const struct mgw_milter_msg *m)
{
    switch (m->cmd) {
    case MGW_SMFIC_OPTNEG: /* = MGW_SMFIR_OPTNEG; lists are only sent in a reply */
        put_be32(w, m->u.optneg.version);
        put_be32(w, m->u.optneg.actions);
        put_be32(w, m->u.optneg.protocol);
        for (uint32_t s = 0; s < MGW_STAGE_COUNT; s++) {
            if (m->u.optneg.symlist[s].ptr == NULL)
                continue;
            put_be32(w, s);
            put_str(w, &m->u.optneg.symlist[s]);
        }
        return;
    case MGW_SMFIC_MACRO:
        put_byte(w, m->u.macro.stage_cmd);
        if (m->u.macro.pairs.count % 2 != 0)
            w->bad = 1;
        put_list(w, &m->u.macro.pairs);
        return;
    case MGW_SMFIC_CONNECT: put_connect(w, m); return;
    case MGW_SMFIC_HELO: put_str(w, &m->u.helo); return;
    case MGW_SMFIC_UNKNOWN: put_str(w, &m->u.unknown); return;
    case MGW_SMFIC_MAIL:
    case MGW_SMFIC_RCPT:
        if (m->u.args.count == 0)
            w->bad = 1;
        put_list(w, &m->u.args);
        return;
    case MGW_SMFIC_HEADER:
    case MGW_SMFIR_ADDHEADER:
        put_str(w, &m->u.header.name);
        put_str(w, &m->u.header.value);
        return;
    case MGW_SMFIR_INSHEADER:
    case MGW_SMFIR_CHGHEADER:
        put_be32(w, m->u.header.index);
        put_str(w, &m->u.header.name);
        put_str(w, &m->u.header.value);
        return;
    case MGW_SMFIC_BODY:
    case MGW_SMFIC_BODYEOB:
    case MGW_SMFIR_REPLBODY: put_body(w, m->u.body.data, m->u.body.len); return;
    case MGW_SMFIR_REPLYCODE:
    case MGW_SMFIR_ADDRCPT:
    case MGW_SMFIR_DELRCPT:
    case MGW_SMFIR_QUARANTINE: put_str(w, &m->u.text); return;
    case MGW_SMFIR_SETSYMLIST:
        if (m->u.symlist.stage >= MGW_STAGE_COUNT)
            w->bad = 1;
        put_be32(w, m->u.symlist.stage);
        put_str(w, &m->u.symlist.names);
        return;
    case MGW_SMFIR_ADDRCPT_PAR:
    case MGW_SMFIR_CHGFROM:
        put_str(w, &m->u.rcpt.addr);
        if (m->u.rcpt.args.ptr != NULL)
            put_str(w, &m->u.rcpt.args);
        return;
    default:
        /* Payload-less commands and replies; anything else is not a milter byte. */
        if (mgw_milter_cmd_info(m->cmd) == NULL && mgw_milter_reply_info(m->cmd) == NULL)
            w->bad = 1;
        return;
    }
}

/* Encode into buf[0..cap) (buf may be NULL to measure); *need gets the frame size. */
static int encode_frame(const struct mgw_milter_msg *m, uint8_t *buf, size_t cap, size_t *need)
{
    struct writer w = {buf, cap, MGW_MILTER_HDR_LEN, 0};
    size_t flen;

    if (m == NULL)
        return MGW_EINVAL;
    if (cap < MGW_MILTER_HDR_LEN)
        w.buf = NULL; /* cannot even hold the length; just measure */
    put_byte(&w, m->cmd);
    put_payload(&w, m);
    if (w.bad)
        return MGW_EINVAL;
    /* The length field is a uint32 and the result must fit ssize_t. */
    flen = w.off - MGW_MILTER_HDR_LEN;
#if SIZE_MAX > UINT32_MAX
    if (flen > UINT32_MAX)
        return MGW_EINVAL;
#endif
    if (w.off > (size_t)SSIZE_MAX)
        return MGW_EINVAL;
    *need = w.off;
    if (buf != NULL && w.off <= cap)
        put_u32(buf, (uint32_t)flen);
    return 0;
}

ssize_t mgw_milter_encode(const struct mgw_milter_msg *m, uint8_t *buf, size_t cap)
{
    size_t need = 0;
    int rc = encode_frame(m, buf, cap, &need);

    if (rc != 0)
        return rc;
    if (buf == NULL || need > cap)
        return MGW_ENOSPACE;
    return (ssize_t)need;
}

ssize_t mgw_milter_encoded_len(const struct mgw_milter_msg *m)
{
    size_t need = 0;
    int rc = encode_frame(m, NULL, 0, &need);

    return rc != 0 ? rc : (ssize_t)need;
}
