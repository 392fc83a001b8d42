/*
 * fuzz_milter_decode.c - libFuzzer target for the milter frame codec.
 *
 * The input is read as a byte stream in both directions, with the default frame cap and a
 * small one, decoding frame after frame until the decoder asks for more or refuses. Every
 * decoded frame must keep the codec's promises, or the target aborts:
 *   - the consumed count matches the length field and stays inside the input;
 *   - every string view lies inside the frame and ends with a NUL there;
 *   - lists walk to exactly `count` strings;
 *   - the message re-encodes (encoded_len agrees with encode), the re-encoding decodes to
 *     an identical message, and encoding that again gives the same bytes.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

/* ---- Promises about views ---- */

static void check_str(struct mgw_str s, const uint8_t *frame, size_t n)
{
    const char *lo = (const char *)frame, *hi = (const char *)frame + n;

    if (s.ptr == NULL) {
        CHECK(s.len == 0);
        return;
    }
    CHECK(s.ptr >= lo && s.ptr < hi);
    CHECK(s.len < (size_t)(hi - s.ptr));
    CHECK(s.ptr[s.len] == '\0');
    CHECK(memchr(s.ptr, '\0', s.len) == NULL);
}

static void check_list(const struct mgw_strlist *l, const uint8_t *frame, size_t n)
{
    struct mgw_str s;
    size_t pos = 0, count = 0;

    CHECK(l->data != NULL);
    CHECK(l->data >= (const char *)frame && l->len <= n - (size_t)(l->data - (const char *)frame));
    while (mgw_milter_list_next(l, &pos, &s)) {
        check_str(s, frame, n);
        CHECK(s.ptr >= l->data && s.ptr + s.len < l->data + l->len);
        count++;
    }
    CHECK(count == l->count);
    CHECK(pos == l->len);
}

static void check_body(const uint8_t *p, size_t len, const uint8_t *frame, size_t n)
{
    CHECK(p != NULL);
    CHECK(p >= frame && len <= n - (size_t)(p - frame));
}

static void check_views(const struct mgw_milter_msg *m, const uint8_t *frame, size_t n)
{
    switch (m->cmd) {
    case 'O':
        for (int s = 0; s < MGW_STAGE_COUNT; s++)
            check_str(m->u.optneg.symlist[s], frame, n);
        break;
    case 'D':
        CHECK(m->u.macro.pairs.count % 2 == 0);
        check_list(&m->u.macro.pairs, frame, n);
        break;
    case 'C':
        check_str(m->u.connect.hostname, frame, n);
        check_str(m->u.connect.address, frame, n);
        CHECK(m->u.connect.hostname.ptr != NULL);
        CHECK(strchr("UL46", m->u.connect.family) != NULL && m->u.connect.family != 0);
        break;
    case 'H':
    case 'U':
    case 'y':
    case '+':
    case '-':
    case 'q':
        /* helo, unknown and text share one struct mgw_str slot */
        check_str(m->u.text, frame, n);
        CHECK(m->u.text.ptr != NULL);
        break;
    case 'M':
    case 'R':
        CHECK(m->u.args.count >= 1);
        check_list(&m->u.args, frame, n);
        break;
    case 'L':
    case 'h':
    case 'i':
    case 'm':
        check_str(m->u.header.name, frame, n);
        check_str(m->u.header.value, frame, n);
        break;
    case 'B':
    case 'E':
    case 'b': check_body(m->u.body.data, m->u.body.len, frame, n); break;
    case 'l':
        CHECK(m->u.symlist.stage < MGW_STAGE_COUNT);
        check_str(m->u.symlist.names, frame, n);
        break;
    case '2':
    case 'e':
        check_str(m->u.rcpt.addr, frame, n);
        check_str(m->u.rcpt.args, frame, n);
        break;
    default: break;
    }
}

/* ---- Message equality (content, not pointers) ---- */

static int str_eq(struct mgw_str a, struct mgw_str b, int optional)
{
    if (optional && (a.ptr == NULL) != (b.ptr == NULL))
        return 0;
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int bytes_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static int list_eq(const struct mgw_strlist *a, const struct mgw_strlist *b)
{
    return a->count == b->count && bytes_eq(a->data, a->len, b->data, b->len);
}

static int msg_eq(const struct mgw_milter_msg *a, const struct mgw_milter_msg *b)
{
    if (a->cmd != b->cmd)
        return 0;
    switch (a->cmd) {
    case 'O':
        if (a->u.optneg.version != b->u.optneg.version ||
            a->u.optneg.actions != b->u.optneg.actions ||
            a->u.optneg.protocol != b->u.optneg.protocol)
            return 0;
        for (int s = 0; s < MGW_STAGE_COUNT; s++)
            if (!str_eq(a->u.optneg.symlist[s], b->u.optneg.symlist[s], 1))
                return 0;
        return 1;
    case 'D':
        return a->u.macro.stage_cmd == b->u.macro.stage_cmd &&
               list_eq(&a->u.macro.pairs, &b->u.macro.pairs);
    case 'C':
        return a->u.connect.family == b->u.connect.family &&
               a->u.connect.port == b->u.connect.port &&
               str_eq(a->u.connect.hostname, b->u.connect.hostname, 1) &&
               str_eq(a->u.connect.address, b->u.connect.address, 1);
    case 'H':
    case 'U':
    case 'y':
    case '+':
    case '-':
    case 'q': return str_eq(a->u.text, b->u.text, 1);
    case 'M':
    case 'R': return list_eq(&a->u.args, &b->u.args);
    case 'L':
    case 'h':
    case 'i':
    case 'm':
        return a->u.header.index == b->u.header.index &&
               str_eq(a->u.header.name, b->u.header.name, 1) &&
               str_eq(a->u.header.value, b->u.header.value, 1);
    case 'B':
    case 'E':
    case 'b': return bytes_eq(a->u.body.data, a->u.body.len, b->u.body.data, b->u.body.len);
    case 'l':
        return a->u.symlist.stage == b->u.symlist.stage &&
               str_eq(a->u.symlist.names, b->u.symlist.names, 1);
    case '2':
    case 'e':
        return str_eq(a->u.rcpt.addr, b->u.rcpt.addr, 1) &&
               str_eq(a->u.rcpt.args, b->u.rcpt.args, 1);
    default: return 1;
    }
}

/* ---- Re-encoding ---- */

static void check_reencode(const struct mgw_milter_decoder *dec, const struct mgw_milter_msg *m,
                           size_t consumed)
{
    ssize_t need = mgw_milter_encoded_len(m);
    struct mgw_milter_msg again;
    uint8_t *buf, *buf2;
    ssize_t r;

    /* Anything the decoder accepts can be encoded, and never into more bytes than it came
     * in (only ignored trailing bytes are dropped). */
    CHECK(need > 0 && (size_t)need <= consumed);
    buf = malloc((size_t)need);
    CHECK(buf != NULL);
    CHECK(mgw_milter_encode(m, buf, (size_t)need - 1) == MGW_ENOSPACE);
    CHECK(mgw_milter_encode(m, buf, (size_t)need) == need);

    r = mgw_milter_decode(dec, buf, (size_t)need, &again);
    CHECK(r == need);
    CHECK(msg_eq(m, &again));
    check_views(&again, buf, (size_t)need);

    /* Encoding is a fixed point after one round: same message, same bytes. */
    buf2 = malloc((size_t)need);
    CHECK(buf2 != NULL);
    CHECK(mgw_milter_encode(&again, buf2, (size_t)need) == need);
    CHECK(memcmp(buf, buf2, (size_t)need) == 0);
    free(buf2);
    free(buf);
}

static void run_stream(enum mgw_milter_dir dir, uint32_t max_frame, const uint8_t *data,
                       size_t size)
{
    struct mgw_milter_decoder dec = {dir, max_frame};
    size_t off = 0;

    while (off < size) {
        struct mgw_milter_msg m;
        ssize_t r = mgw_milter_decode(&dec, data + off, size - off, &m);
        uint32_t flen;

        if (r <= 0) {
            CHECK(r == MGW_PARTIAL || r == MGW_EFRAME_EMPTY || r == MGW_EFRAME_TOO_BIG ||
                  r == MGW_EUNKNOWN_CMD || r == MGW_EMALFORMED);
            return;
        }
        CHECK((size_t)r <= size - off && r >= 5);
        flen = (uint32_t)data[off] << 24 | (uint32_t)data[off + 1] << 16 |
               (uint32_t)data[off + 2] << 8 | data[off + 3];
        CHECK((size_t)r == 4 + (size_t)flen);
        CHECK(max_frame == 0 || flen <= max_frame);
        CHECK(m.cmd == data[off + 4]);
        CHECK(strcmp(mgw_milter_cmd_name(m.cmd, dir), "?") != 0);
        check_views(&m, data + off, (size_t)r);
        check_reencode(&dec, &m, (size_t)r);
        off += (size_t)r;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t caps[] = {0, 32};

    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        run_stream(MGW_MILTER_FROM_MTA, caps[i], data, size);
        run_stream(MGW_MILTER_FROM_MILTER, caps[i], data, size);
    }
    return 0;
}
