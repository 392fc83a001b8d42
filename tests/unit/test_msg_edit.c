/*
 * test_msg_edit.c - unit tests of the held message: applying modification frames with
 * Postfix's semantics, replaying the result, and the net modification list.
 *
 * Every table row is a sentence naming the behaviour it pins down. Messages and frame
 * lists are compared as short renderings: headers "Name:value|Name:value", the envelope
 * "from=<s> rcpt=<a>,<b>[ARGS]" (recipients sorted: order is not kept, see msg_edit.h),
 * net lists "i1 N=n; m2 B=22; h Z=z; - <a>; + <b>; b5:hello; q why". The key property
 * (applying the net list to the original gives what the phases gave) runs on every
 * table row and on thousands of cases from a fixed-seed generator.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "table.h"

#include "mgw/error.h"
#include "mgw/msg_edit.h"

#include "../../src/core/msg_edit_int.h" /* white box: `above` */

#include "frames.h"

#define MAXH 8 /* headers of a table message */
#define MAXR 4 /* recipients of a table message */
#define MAXM 8 /* frames of one phase */
#define MAXP 3 /* phases */
#define OUT  8192

/* A message as the MTA sends it; lists end at the first NULL name / address. */
struct msg_spec {
    const char *hdr[MAXH][2];
    const char *from, *from_args; /* from NULL: no MAIL */
    const char *rcpt[MAXR][2];    /* address, args (NULL: none) */
    const char *body;             /* NULL: empty */
};

/* The usual original: three headers, one repeated, two recipients. */
#define STD_MSG                                                                                    \
    {                                                                                              \
        .hdr = {{"Subject", "hello"}, {"X-A", "1"}, {"To", "a@x"}, {"x-a", "2"}}, .from = "<s@x>", \
        .rcpt = {{"<a@x>", NULL}, {"<b@x>", "NOTIFY=NEVER"}}, .body = "body\r\n"                   \
    }

static size_t count_frames(const struct mgw_milter_msg *f, size_t max)
{
    size_t n = 0;

    while (n < max && f[n].cmd != 0)
        n++;
    return n;
}

/* ---- Rendering ---- */

static void appendf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void appendf(char *out, const char *fmt, ...)
{
    size_t len = strlen(out);
    va_list ap;

    if (len >= OUT - 1)
        return;
    va_start(ap, fmt);
    vsnprintf(out + len, OUT - len, fmt, ap);
    va_end(ap);
}

static void render_headers(const struct mgw_msg_edit *m, char *out)
{
    out[0] = '\0';
    for (size_t i = 0; i < mgw_msg_edit_header_count(m); i++) {
        struct mgw_str n, v;

        assert_int_equal(mgw_msg_edit_header_at(m, i, &n, &v), 0);
        appendf(out, "%s%.*s:%.*s", i ? "|" : "", (int)n.len, n.ptr, (int)v.len, v.ptr);
    }
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void render_env(const struct mgw_msg_edit *m, char *out)
{
    size_t n = mgw_msg_edit_rcpt_count(m);
    char **r = calloc(n ? n : 1, sizeof *r);
    struct mgw_str a, args;

    mgw_msg_edit_sender(m, &a, &args);
    out[0] = '\0';
    if (a.ptr != NULL)
        appendf(out, "from=%.*s%s%.*s%s ", (int)a.len, a.ptr, args.len ? "[" : "", (int)args.len,
                args.ptr, args.len ? "]" : "");
    appendf(out, "rcpt=");
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(mgw_msg_edit_rcpt_at(m, i, &a, &args), 0);
        if (a.len >= 2 && a.ptr[0] == '<' && a.ptr[a.len - 1] == '>')
            a = (struct mgw_str){a.ptr + 1, a.len - 2};
        r[i] = malloc(a.len + args.len + 3);
        sprintf(r[i], "%.*s%s%.*s%s", (int)a.len, a.ptr, args.len ? "[" : "", (int)args.len,
                args.ptr, args.len ? "]" : "");
    }
    qsort(r, n, sizeof *r, str_cmp);
    for (size_t i = 0; i < n; i++) {
        appendf(out, "%s%s", i ? "," : "", r[i]);
        free(r[i]);
    }
    free(r);
}

/* The whole body, read back in chunks of `chunk` bytes; *nchunks counts the reads. */
static char *read_body(const struct mgw_msg_edit *m, size_t chunk, size_t *nchunks)
{
    size_t size = mgw_msg_edit_body_size(m), off = 0, n = 0;
    char *all = malloc(size + 1);
    uint8_t *buf = malloc(chunk);
    ssize_t r;

    while ((r = mgw_msg_edit_body_read(m, &off, buf, chunk)) > 0) {
        assert_true((size_t)r <= chunk);
        memcpy(all + off - (size_t)r, buf, (size_t)r);
        n++;
    }
    assert_int_equal(r, 0);
    assert_int_equal(off, size);
    all[size] = '\0';
    free(buf);
    if (nchunks != NULL)
        *nchunks = n;
    return all;
}

static void render_all(const struct mgw_msg_edit *m, char *out)
{
    char part[OUT];
    char *body = read_body(m, 7, NULL);
    struct mgw_str q;

    render_headers(m, out);
    render_env(m, part);
    appendf(out, " || %s || body=%s%s", part, body, mgw_msg_edit_body_replaced(m) ? " (new)" : "");
    if (mgw_msg_edit_quarantined(m, &q))
        appendf(out, " || q=%.*s", (int)q.len, q.ptr);
    free(body);
}

static void render_frame(const struct mgw_milter_msg *f, char *out)
{
    const struct mgw_str *n = &f->u.header.name, *v = &f->u.header.value;

    switch (f->cmd) {
    case 'h': appendf(out, "h %.*s=%.*s", (int)n->len, n->ptr, (int)v->len, v->ptr); break;
    case 'i':
    case 'm':
        appendf(out, "%c%u %.*s=%.*s", f->cmd, (unsigned)f->u.header.index, (int)n->len, n->ptr,
                (int)v->len, v->ptr);
        break;
    case 'b': appendf(out, "b%zu:%.*s", f->u.body.len, (int)f->u.body.len, f->u.body.data); break;
    case '+':
    case '-':
    case 'q': appendf(out, "%c %.*s", f->cmd, (int)f->u.text.len, f->u.text.ptr); break;
    case '2':
    case 'e':
        appendf(out, "%c %.*s", f->cmd, (int)f->u.rcpt.addr.len, f->u.rcpt.addr.ptr);
        if (f->u.rcpt.args.ptr != NULL)
            appendf(out, "[%.*s]", (int)f->u.rcpt.args.len, f->u.rcpt.args.ptr);
        break;
    default: appendf(out, "?%c", f->cmd);
    }
}

/* ---- Building and editing ---- */

static struct mgw_msg_edit *build(const struct msg_spec *sp, const struct mgw_msg_edit_conf *conf)
{
    struct mgw_msg_edit *m = mgw_msg_edit_new(conf);

    if (sp->from != NULL)
        assert_int_equal(mgw_msg_edit_set_sender(m, sp->from, strlen(sp->from), sp->from_args,
                                                 sp->from_args ? strlen(sp->from_args) : 0),
                         0);
    for (size_t i = 0; i < MAXR && sp->rcpt[i][0] != NULL; i++) {
        const char *args = sp->rcpt[i][1];
        assert_int_equal(mgw_msg_edit_add_rcpt(m, sp->rcpt[i][0], strlen(sp->rcpt[i][0]), args,
                                               args ? strlen(args) : 0),
                         0);
    }
    for (size_t i = 0; i < MAXH && sp->hdr[i][0] != NULL; i++)
        assert_int_equal(mgw_msg_edit_add_header(m, sp->hdr[i][0], strlen(sp->hdr[i][0]),
                                                 sp->hdr[i][1], strlen(sp->hdr[i][1])),
                         0);
    if (sp->body != NULL) {
        /* In three pieces, as BODY chunks would come. */
        size_t len = strlen(sp->body), a = len / 3, b = 2 * len / 3;
        const uint8_t *p = (const uint8_t *)sp->body;

        assert_int_equal(mgw_msg_edit_body_append(m, p, a), 0);
        assert_int_equal(mgw_msg_edit_body_append(m, p + a, b - a), 0);
        assert_int_equal(mgw_msg_edit_body_append(m, p + b, len - b), 0);
    }
    return m;
}

/* The net list: frames rendered into `text` (may be NULL) and, copied with their body
 * chunks into *arena (freed by the caller), into frames[] for re-applying. */
static size_t collect_net(struct mgw_msg_edit *m, size_t chunk, char *text,
                          struct mgw_milter_msg **frames, uint8_t **arena)
{
    struct mgw_msg_edit_cursor c = {0};
    size_t n = 0, cap = 16, used = 0, acap = mgw_msg_edit_body_size(m) + 1;
    uint8_t *buf = malloc(chunk);
    struct mgw_milter_msg f;
    int rc;

    *frames = malloc(cap * sizeof **frames);
    *arena = malloc(acap);
    if (text != NULL)
        text[0] = '\0';
    while ((rc = mgw_msg_edit_net_next(m, &c, buf, chunk, &f)) == 1) {
        if (f.cmd == 'b') {
            assert_true(f.u.body.len <= chunk);
            assert_true(used + f.u.body.len <= acap);
            memcpy(*arena + used, f.u.body.data, f.u.body.len);
            f.u.body.data = *arena + used;
            used += f.u.body.len;
        }
        if (text != NULL) {
            if (n > 0)
                appendf(text, "; ");
            render_frame(&f, text);
        }
        if (n == cap)
            *frames = realloc(*frames, (cap *= 2) * sizeof **frames);
        (*frames)[n++] = f;
    }
    assert_int_equal(rc, 0);
    free(buf);
    return n;
}

/*
 * The key property: the net list applied to the original gives what the phases gave.
 * Returns false (and reports the case) when it does not.
 */
static bool roundtrip_ok(const char *name, const struct msg_spec *sp,
                         const struct mgw_msg_edit_conf *conf, struct mgw_msg_edit *phased)
{
    static char want[OUT], got[OUT], net[OUT], net2[OUT];
    struct mgw_msg_edit *o = build(sp, conf);
    struct mgw_milter_msg *frames, *frames2;
    uint8_t *arena, *arena2;
    size_t n = collect_net(phased, 5, net, &frames, &arena);
    int rc = mgw_msg_edit_apply(o, frames, n);
    bool ok = true;

    render_all(phased, want);
    render_all(o, got);
    /* The net list of the re-applied message is the same list: it is canonical, so a
     * message reaching the same state by other edits gets the same frames. */
    collect_net(o, 5, net2, &frames2, &arena2);
    if (rc != 0) {
        case_failed(name, "re-applying the net list: got %d, want 0 (net %s)", rc, net);
        ok = false;
    } else if (strcmp(got, want) != 0) {
        case_failed(name, "net list round trip:\n  got  %s\n  want %s\n  net  %s", got, want, net);
        ok = false;
    } else if (strcmp(net2, net) != 0) {
        case_failed(name, "net list of the re-applied message:\n  got  %s\n  want %s", net2, net);
        ok = false;
    }
    free(frames2);
    free(arena2);
    free(frames);
    free(arena);
    mgw_msg_edit_free(o);
    return ok;
}

static int apply_phases(struct mgw_msg_edit *m, const struct mgw_milter_msg (*ph)[MAXM], size_t np)
{
    for (size_t p = 0; p < np; p++) {
        int rc = mgw_msg_edit_apply(m, ph[p], count_frames(ph[p], MAXM));

        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- Header frames, one phase ---- */

struct header_case {
    const char *name;
    uint32_t hidden;
    struct msg_spec msg;
    struct mgw_milter_msg mods[MAXM];
    const char *want;
};

static const struct header_case header_cases[] = {
    {"an added header goes below the last one",
     0,
     STD_MSG,
     {ADDH("X-New", "v")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-New:v"},
    {"two added headers keep their order",
     0,
     STD_MSG,
     {ADDH("X-1", "a"), ADDH("X-2", "b")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-1:a|X-2:b"},
    {"values are kept byte for byte, leading space and all",
     0,
     STD_MSG,
     {ADDH("X-Sp", " two  spaces "), ADDH("X-Empty", "")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-Sp: two  spaces |X-Empty:"},
    {"insert at index 0 puts the header on top",
     0,
     STD_MSG,
     {INSH(0, "X-Top", "t")},
     "X-Top:t|Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"insert at index 2 goes before the third header",
     0,
     STD_MSG,
     {INSH(2, "X-Mid", "m")},
     "Subject:hello|X-A:1|X-Mid:m|To:a@x|x-a:2"},
    {"insert at the header count appends",
     0,
     STD_MSG,
     {INSH(4, "X-End", "e")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-End:e"},
    {"insert far past the end appends",
     0,
     STD_MSG,
     {INSH(4000000000u, "X-End", "e")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-End:e"},
    {"two inserts at 0 stack, the later on top",
     0,
     STD_MSG,
     {INSH(0, "X-1", "a"), INSH(0, "X-2", "b")},
     "X-2:b|X-1:a|Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"with a hidden Received insert at 1 is the top of the held headers",
     1,
     STD_MSG,
     {INSH(1, "X-Top", "t")},
     "X-Top:t|Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"with a hidden Received insert at 0 goes above it, on top of the held headers too",
     1,
     STD_MSG,
     {INSH(0, "X-Top", "t")},
     "X-Top:t|Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"with a hidden Received insert at 3 goes before the third held header",
     1,
     STD_MSG,
     {INSH(3, "X-Mid", "m")},
     "Subject:hello|X-A:1|X-Mid:m|To:a@x|x-a:2"},
    {"with a hidden Received insert past the end appends",
     1,
     STD_MSG,
     {INSH(5, "X-End", "e")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-End:e"},
    {"change index 1 changes the first occurrence",
     0,
     STD_MSG,
     {CHGH(1, "X-A", "one")},
     "Subject:hello|X-A:one|To:a@x|x-a:2"},
    {"change index 0 means index 1, as in Postfix",
     0,
     STD_MSG,
     {CHGH(0, "X-A", "zero")},
     "Subject:hello|X-A:zero|To:a@x|x-a:2"},
    {"change index 2 counts the repeated name case-insensitively",
     0,
     STD_MSG,
     {CHGH(2, "X-A", "two")},
     "Subject:hello|X-A:1|To:a@x|X-A:two"},
    {"a change writes the frame's spelling of the name",
     0,
     STD_MSG,
     {CHGH(1, "SUBJECT", "hi")},
     "SUBJECT:hi|X-A:1|To:a@x|x-a:2"},
    {"hidden headers do not shift change indexes",
     1,
     STD_MSG,
     {CHGH(1, "Subject", "hi")},
     "Subject:hi|X-A:1|To:a@x|x-a:2"},
    {"an empty value deletes the occurrence",
     0,
     STD_MSG,
     {CHGH(1, "x-A", "")},
     "Subject:hello|To:a@x|x-a:2"},
    {"after a delete the later occurrences shift down",
     0,
     STD_MSG,
     {CHGH(1, "X-A", ""), CHGH(1, "X-A", "was second")},
     "Subject:hello|To:a@x|X-A:was second"},
    {"deleting in reverse order removes both occurrences",
     0,
     STD_MSG,
     {CHGH(2, "X-A", ""), CHGH(1, "X-A", "")},
     "Subject:hello|To:a@x"},
    {"deleting index 1 twice also removes both",
     0,
     STD_MSG,
     {CHGH(1, "X-A", ""), CHGH(1, "X-A", "")},
     "Subject:hello|To:a@x"},
    {"changing an occurrence past the last appends the header (Postfix)",
     0,
     STD_MSG,
     {CHGH(3, "X-A", "three")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-A:three"},
    {"changing a name that is absent appends it",
     0,
     STD_MSG,
     {CHGH(1, "X-None", "v")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-None:v"},
    {"deleting an absent occurrence does nothing",
     0,
     STD_MSG,
     {CHGH(3, "X-A", ""), CHGH(1, "X-None", "")},
     "Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"a name that only prefixes another does not match",
     0,
     STD_MSG,
     {CHGH(1, "X", "v")},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X:v"},
    {"a header added in the same list counts for a later change",
     0,
     STD_MSG,
     {INSH(0, "X-A", "top"), CHGH(1, "X-A", "")},
     "Subject:hello|X-A:1|To:a@x|x-a:2"},
    {"a change then a delete of the same header leaves none",
     0,
     STD_MSG,
     {CHGH(1, "To", "b@x"), CHGH(1, "To", "")},
     "Subject:hello|X-A:1|x-a:2"},
    {"insert positions count headers deleted earlier in the list as gone",
     0,
     STD_MSG,
     {CHGH(1, "Subject", ""), INSH(1, "X-Mid", "m")},
     "X-A:1|X-Mid:m|To:a@x|x-a:2"},
    {"a message without headers takes an insert at any index",
     0,
     {.body = "b"},
     {INSH(7, "X-1", "a"), CHGH(0, "X-1", "b")},
     "X-1:b"},
};

static void test_header_frames_follow_postfix(void **state)
{
    char got[OUT];

    (void)state;
    for (size_t i = 0; i < NELEM(header_cases); i++) {
        const struct header_case *c = &header_cases[i];
        struct mgw_msg_edit_conf conf = {.ins_hidden = c->hidden};
        struct mgw_msg_edit *m = build(&c->msg, &conf);
        int rc = mgw_msg_edit_apply(m, c->mods, count_frames(c->mods, MAXM));

        render_headers(m, got);
        if (rc != 0)
            case_failed(c->name, "apply: got %d, want 0", rc);
        else if (strcmp(got, c->want) != 0)
            case_failed(c->name, "headers: got %s, want %s", got, c->want);
        else
            roundtrip_ok(c->name, &c->msg, &conf, m);
        mgw_msg_edit_free(m);
    }
    end_table();
}

/* ---- Envelope, body and quarantine frames ---- */

struct env_case {
    const char *name;
    struct msg_spec msg;
    struct mgw_milter_msg mods[MAXM];
    const char *want_env;
    const char *want_net;
};

static const struct env_case env_cases[] = {
    {"an added recipient joins the list",
     STD_MSG,
     {ADDR("<c@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER],c@x",
     "+ <c@x>"},
    {"an added recipient with args keeps them",
     STD_MSG,
     {ADDRP("<c@x>", "NOTIFY=SUCCESS")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER],c@x[NOTIFY=SUCCESS]",
     "2 <c@x>[NOTIFY=SUCCESS]"},
    {"ADDRCPT_PAR without args is a plain add",
     STD_MSG,
     {ADDRP0("<c@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER],c@x",
     "+ <c@x>"},
    {"an empty added recipient is ignored, as Postfix does",
     STD_MSG,
     {ADDR(""), ADDRP0("")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a deleted recipient leaves", STD_MSG, {DELR("<b@x>")}, "from=<s@x> rcpt=a@x", "- <b@x>"},
    {"a delete matches with or without angle brackets",
     STD_MSG,
     {DELR("a@x")},
     "from=<s@x> rcpt=b@x[NOTIFY=NEVER]",
     "- <a@x>"},
    {"a delete removes every recipient with the address",
     {.rcpt = {{"<a@x>"}, {"a@x", "X=1"}}},
     {DELR("<a@x>")},
     "rcpt=",
     "- <a@x>"},
    {"a delete compares addresses byte for byte",
     STD_MSG,
     {DELR("<A@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"deleting an absent recipient changes nothing",
     STD_MSG,
     {DELR("<z@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a recipient added then deleted nets to nothing",
     STD_MSG,
     {ADDR("<c@x>"), DELR("<c@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a recipient deleted then added alike nets to nothing",
     STD_MSG,
     {DELR("<a@x>"), ADDR("a@x")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a recipient deleted then added with the same args nets to nothing",
     STD_MSG,
     {DELR("<b@x>"), ADDRP("<b@x>", "NOTIFY=NEVER")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a recipient re-added with other args is deleted then added",
     STD_MSG,
     {DELR("<b@x>"), ADDR("<b@x>")},
     "from=<s@x> rcpt=a@x,b@x",
     "- <b@x>; + <b@x>"},
    {"a second copy of an original recipient is one add",
     STD_MSG,
     {ADDR("<a@x>")},
     "from=<s@x> rcpt=a@x,a@x,b@x[NOTIFY=NEVER]",
     "+ <a@x>"},
    {"the sender changes with its args",
     STD_MSG,
     {CHGFA("<t@x>", "RET=HDRS")},
     "from=<t@x>[RET=HDRS] rcpt=a@x,b@x[NOTIFY=NEVER]",
     "e <t@x>[RET=HDRS]"},
    {"a sender changed back to the original nets to nothing",
     STD_MSG,
     {CHGF("<t@x>"), CHGF("<s@x>")},
     "from=<s@x> rcpt=a@x,b@x[NOTIFY=NEVER]",
     ""},
    {"a sender without MAIL can still be set",
     {.rcpt = {{"<a@x>"}}},
     {CHGF("<>")},
     "from=<> rcpt=a@x",
     "e <>"},
    {"deletes come before adds, each in list order",
     STD_MSG,
     {ADDR("<d@x>"), DELR("<b@x>"), DELR("<a@x>"), ADDR("<c@x>")},
     "from=<s@x> rcpt=c@x,d@x",
     "- <a@x>; - <b@x>; + <d@x>; + <c@x>"},
};

static void test_envelope_frames_and_their_net(void **state)
{
    char got[OUT], net[OUT];

    (void)state;
    for (size_t i = 0; i < NELEM(env_cases); i++) {
        const struct env_case *c = &env_cases[i];
        struct mgw_msg_edit *m = build(&c->msg, NULL);
        int rc = mgw_msg_edit_apply(m, c->mods, count_frames(c->mods, MAXM));
        struct mgw_milter_msg *frames;
        uint8_t *arena;

        render_env(m, got);
        collect_net(m, MGW_MSG_EDIT_CHUNK, net, &frames, &arena);
        free(frames);
        free(arena);
        if (rc != 0)
            case_failed(c->name, "apply: got %d, want 0", rc);
        else if (strcmp(got, c->want_env) != 0)
            case_failed(c->name, "envelope: got %s, want %s", got, c->want_env);
        else if (strcmp(net, c->want_net) != 0)
            case_failed(c->name, "net: got %s, want %s", net, c->want_net);
        else
            roundtrip_ok(c->name, &c->msg, NULL, m);
        mgw_msg_edit_free(m);
    }
    end_table();
}

struct body_case {
    const char *name;
    struct mgw_milter_msg mods[MAXM];
    const char *want_body;
    bool replaced;
    const char *want_net;
};

static const struct body_case body_cases[] = {
    {"no REPLBODY keeps the body and sends none", {ADDH("X", "y")}, "body\r\n", false, "h X=y"},
    {"one REPLBODY replaces the body", {BODY("new\r\n")}, "new\r\n", true, "b5:new\r\n"},
    {"consecutive REPLBODY frames form one body",
     {BODY("ab"), BODY("cd"), BODY("e")},
     "abcde",
     true,
     "b5:abcde"},
    {"REPLBODY frames may follow other frames",
     {ADDH("X", "y"), BODY("ab"), BODY("c")},
     "abc",
     true,
     "h X=y; b3:abc"},
    {"an empty REPLBODY empties the body and is sent as one empty frame",
     {BODY("")},
     "",
     true,
     "b0:"},
    {"a replacement equal to the original is still sent",
     {BODY("body\r\n")},
     "body\r\n",
     true,
     "b6:body\r\n"},
    {"quarantine is a flag with the last reason",
     {QUAR("first"), QUAR("second")},
     "body\r\n",
     false,
     "q second"},
};

static void test_body_and_quarantine_frames(void **state)
{
    const struct msg_spec sp = STD_MSG;
    char net[OUT];

    (void)state;
    for (size_t i = 0; i < NELEM(body_cases); i++) {
        const struct body_case *c = &body_cases[i];
        struct mgw_msg_edit *m = build(&sp, NULL);
        int rc = mgw_msg_edit_apply(m, c->mods, count_frames(c->mods, MAXM));
        char *body = read_body(m, 3, NULL);
        struct mgw_milter_msg *frames;
        uint8_t *arena;

        collect_net(m, MGW_MSG_EDIT_CHUNK, net, &frames, &arena);
        free(frames);
        free(arena);
        if (rc != 0)
            case_failed(c->name, "apply: got %d, want 0", rc);
        else if (strcmp(body, c->want_body) != 0)
            case_failed(c->name, "body: got %s, want %s", body, c->want_body);
        else if (mgw_msg_edit_body_replaced(m) != c->replaced)
            case_failed(c->name, "replaced: got %d, want %d", mgw_msg_edit_body_replaced(m),
                        c->replaced);
        else if (strcmp(net, c->want_net) != 0)
            case_failed(c->name, "net: got %s, want %s", net, c->want_net);
        else
            roundtrip_ok(c->name, &sp, NULL, m);
        free(body);
        mgw_msg_edit_free(m);
    }
    end_table();
}

/* ---- Chains of phases and their net list ---- */

struct chain_case {
    const char *name;
    uint32_t hidden;
    struct msg_spec msg;
    struct mgw_milter_msg phases[MAXP][MAXM];
    const char *want_headers;
    const char *want_net;
};

static const struct chain_case chain_cases[] = {
    {"no phase changing anything gives an empty net list",
     0,
     STD_MSG,
     {{{0}}},
     "Subject:hello|X-A:1|To:a@x|x-a:2",
     ""},
    {"the header example of msg_edit.h",
     0,
     {.hdr = {{"A", "1"}, {"B", "2"}, {"A", "3"}}},
     {{CHGH(1, "A", ""), INSH(1, "N", "n")}, {CHGH(1, "B", "22"), ADDH("Z", "z")}},
     "B:22|N:n|A:3|Z:z",
     "i2 N=n; m1 B=22; m1 A=; h Z=z"},
    {"a later phase sees an earlier phase's header and changes it",
     0,
     STD_MSG,
     {{ADDH("X-Spam", "no")}, {CHGH(1, "X-Spam", "yes")}},
     "Subject:hello|X-A:1|To:a@x|x-a:2|X-Spam:yes",
     "h X-Spam=yes"},
    {"a header added then deleted by a later phase nets to nothing",
     0,
     STD_MSG,
     {{INSH(0, "X-Tmp", "t")}, {CHGH(1, "X-Tmp", "")}},
     "Subject:hello|X-A:1|To:a@x|x-a:2",
     ""},
    {"a later phase's index counts a header inserted above by an earlier one",
     0,
     STD_MSG,
     {{INSH(0, "X-A", "new")}, {CHGH(2, "X-A", "changed")}},
     "X-A:new|Subject:hello|X-A:changed|To:a@x|x-a:2",
     "i0 X-A=new; m2 X-A=changed"},
    {"the same with a hidden Received shifts the insert index by one",
     1,
     STD_MSG,
     {{INSH(1, "X-A", "new")}, {CHGH(2, "X-A", "changed")}},
     "X-A:new|Subject:hello|X-A:changed|To:a@x|x-a:2",
     "i1 X-A=new; m2 X-A=changed"},
    {"inserts above a hidden Received by two phases keep a Postfix chain's order",
     1,
     STD_MSG,
     {{INSH(0, "X-P0-Top", "t")}, {INSH(1, "X-P1-Ins", "i")}},
     "X-P0-Top:t|X-P1-Ins:i|Subject:hello|X-A:1|To:a@x|x-a:2",
     "i0 X-P0-Top=t; i1 X-P1-Ins=i"},
    {"an insert above a hidden Received is counted by later inserts, and netted last at 0",
     1,
     STD_MSG,
     {{INSH(0, "X-Top", "t"), CHGH(1, "Subject", "hi"), INSH(2, "X-Mid", "m")}},
     "X-Top:t|X-Mid:m|Subject:hi|X-A:1|To:a@x|x-a:2",
     "i1 X-Mid=m; m1 Subject=hi; i0 X-Top=t"},
    {"a change then a delete in the next phase is one delete",
     0,
     STD_MSG,
     {{CHGH(2, "x-a", "two")}, {CHGH(2, "X-A", "")}},
     "Subject:hello|X-A:1|To:a@x",
     "m2 x-a="},
    {"an original changed back to its value is left alone",
     0,
     STD_MSG,
     {{CHGH(1, "Subject", "spam")}, {CHGH(1, "Subject", "hello")}},
     "Subject:hello|X-A:1|To:a@x|x-a:2",
     ""},
    {"a header deleted and re-added with the same text is a delete and an add",
     0,
     STD_MSG,
     {{CHGH(1, "To", "")}, {ADDH("To", "a@x")}},
     "Subject:hello|X-A:1|x-a:2|To:a@x",
     "m1 To=; h To=a@x"},
    {"deletes of one name go bottom up so Postfix's renumbering is harmless",
     0,
     STD_MSG,
     {{CHGH(1, "X-A", "")}, {CHGH(1, "X-A", "")}},
     "Subject:hello|To:a@x",
     "m2 x-a=; m1 X-A="},
    {"a new header between deleted originals goes before the next survivor",
     0,
     {.hdr = {{"A", "1"}, {"B", "2"}, {"C", "3"}, {"D", "4"}}},
     {{CHGH(1, "B", ""), CHGH(1, "C", "")}, {INSH(1, "N", "n")}},
     "A:1|N:n|D:4",
     "i3 N=n; m1 C=; m1 B="},
    {"new headers after the last survivor are appended, after the deletes",
     0,
     {.hdr = {{"A", "1"}, {"B", "2"}}},
     {{CHGH(1, "B", "")}, {ADDH("Z", "z"), INSH(1, "Y", "y")}},
     "A:1|Y:y|Z:z",
     "m1 B=; h Y=y; h Z=z"},
    {"three phases: insert, change the inserted, change an original",
     0,
     STD_MSG,
     {{INSH(1, "X-B", "b1")},
      {CHGH(1, "X-B", "b2"), INSH(0, "X-C", "c")},
      {CHGH(1, "Subject", "s3"), CHGH(2, "X-A", "")}},
     "X-C:c|Subject:s3|X-B:b2|X-A:1|To:a@x",
     "i0 X-C=c; i2 X-B=b2; m2 x-a=; m1 Subject=s3"},
    {"three phases with envelope, body and quarantine",
     0,
     STD_MSG,
     {{ADDR("<c@x>"), BODY("one")},
      {DELR("<c@x>"), CHGF("<t@x>"), BODY("two")},
      {QUAR("held"), DELR("<a@x>")}},
     "Subject:hello|X-A:1|To:a@x|x-a:2",
     "e <t@x>; - <a@x>; b3:two; q held"},
};

static void test_chains_of_phases_net_to_one_list(void **state)
{
    char got[OUT], net[OUT];

    (void)state;
    for (size_t i = 0; i < NELEM(chain_cases); i++) {
        const struct chain_case *c = &chain_cases[i];
        struct mgw_msg_edit_conf conf = {.ins_hidden = c->hidden};
        struct mgw_msg_edit *m = build(&c->msg, &conf);
        int rc = apply_phases(m, c->phases, MAXP);
        struct mgw_milter_msg *frames;
        uint8_t *arena;

        render_headers(m, got);
        collect_net(m, MGW_MSG_EDIT_CHUNK, net, &frames, &arena);
        free(frames);
        free(arena);
        if (rc != 0)
            case_failed(c->name, "apply: got %d, want 0", rc);
        else if (strcmp(got, c->want_headers) != 0)
            case_failed(c->name, "headers: got %s, want %s", got, c->want_headers);
        else if (strcmp(net, c->want_net) != 0)
            case_failed(c->name, "net: got %s, want %s", net, c->want_net);
        else
            roundtrip_ok(c->name, &c->msg, &conf, m);
        mgw_msg_edit_free(m);
    }
    end_table();
}

/* ---- The property, on generated chains ---- */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    /* xorshift64*: fixed seed, same cases on every run and machine. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 33) % n;
}

static const char *const gen_names[] = {"Subject", "subject",  "X-A", "x-a", "X-a",
                                        "To",      "Received", "X-B", "x-b"};
static const char *const gen_values[] = {"", "v1", "v2", " v3", "v1", "long value here"};
static const char *const gen_addrs[] = {"<a@x>", "a@x", "<b@x>", "<c@x>", "<>"};
static const char *const gen_args[] = {NULL, "NOTIFY=NEVER", "ORCPT=rfc822;a@x", ""};
static const char gen_bytes[] = "0123456789abcdefghijklmnopqrstuvwxyz\r\n.";

static struct mgw_str pick_str(const char *const *pool, size_t n)
{
    const char *s = pool[rnd((uint32_t)n)];

    return (struct mgw_str){s, s ? strlen(s) : 0};
}

#define GEN_MODS 10

static void gen_message(struct msg_spec *sp)
{
    size_t nh = rnd(7), nr = rnd(MAXR + 1);

    memset(sp, 0, sizeof *sp);
    for (size_t i = 0; i < nh; i++) {
        sp->hdr[i][0] = gen_names[rnd(NELEM(gen_names))];
        sp->hdr[i][1] = gen_values[rnd(NELEM(gen_values))];
    }
    if (rnd(4) != 0)
        sp->from = "<s@x>", sp->from_args = rnd(2) ? "BODY=8BITMIME" : NULL;
    for (size_t i = 0; i < nr; i++) {
        sp->rcpt[i][0] = gen_addrs[rnd(NELEM(gen_addrs))];
        sp->rcpt[i][1] = gen_args[rnd(NELEM(gen_args))];
    }
    sp->body = rnd(5) ? "original body\r\n" : NULL;
}

static void gen_frame(struct mgw_milter_msg *f, size_t nh)
{
    static const char cmds[] = "hiiimmmmb+2-eq";
    struct mgw_str name = pick_str(gen_names, NELEM(gen_names));
    struct mgw_str value = pick_str(gen_values, NELEM(gen_values));
    uint32_t at, len;

    memset(f, 0, sizeof *f);
    f->cmd = (uint8_t)cmds[rnd(sizeof cmds - 1)];
    switch (f->cmd) {
    case 'h':
    case 'i':
    case 'm':
        f->u.header.index = rnd((uint32_t)nh + 4);
        f->u.header.name = name;
        f->u.header.value = value;
        break;
    case 'b':
        at = rnd(sizeof gen_bytes - 1);
        len = rnd((uint32_t)(sizeof gen_bytes - at));
        f->u.body.data = (const uint8_t *)gen_bytes + at;
        f->u.body.len = len;
        break;
    case '+':
    case '-': f->u.text = pick_str(gen_addrs, NELEM(gen_addrs)); break;
    case '2':
    case 'e':
        f->u.rcpt.addr = pick_str(gen_addrs, NELEM(gen_addrs));
        f->u.rcpt.args = pick_str(gen_args, NELEM(gen_args));
        break;
    case 'q': f->u.text = rnd(2) ? (struct mgw_str)S("why") : (struct mgw_str)S("other"); break;
    }
}

/* Gather the REPLBODY frames (kept in order) into one run at a random place, as Postfix
 * wants them. */
static void bodies_in_one_run(struct mgw_milter_msg *mods, size_t n)
{
    struct mgw_milter_msg other[GEN_MODS], body[GEN_MODS];
    size_t no = 0, nb = 0, at;

    for (size_t i = 0; i < n; i++) {
        if (mods[i].cmd == 'b')
            body[nb++] = mods[i];
        else
            other[no++] = mods[i];
    }
    at = rnd((uint32_t)no + 1);
    memcpy(mods, other, at * sizeof *mods);
    memcpy(mods + at, body, nb * sizeof *mods);
    memcpy(mods + at + nb, other + at, (no - at) * sizeof *mods);
}

/*
 * An independent model of Postfix's header editing (cleanup_milter.c as read, not this
 * module's code), for net lists with ins_hidden 1. Postfix's own Received: is header 0,
 * which milters never see. INSHEADER k inserts before header k counting every header (k
 * past the end appends); CHGHEADER skips header 0 whatever it is, then counts
 * occurrences of the name (index 0 is 1): found, an empty value removes it, another
 * replaces name and value; not found, an empty value does nothing, another appends.
 */
#define PF_MAX 96

struct pf_list {
    size_t n;
    struct mgw_str h[PF_MAX][2];
};

static void pf_insert(struct pf_list *l, size_t at, const struct mgw_str *name,
                      const struct mgw_str *value)
{
    assert_true(l->n < PF_MAX);
    memmove(&l->h[at + 1], &l->h[at], (l->n - at) * sizeof l->h[0]);
    l->h[at][0] = *name;
    l->h[at][1] = *value;
    l->n++;
}

static bool pf_same_name(const struct mgw_str *a, const struct mgw_str *b)
{
    if (a->len != b->len)
        return false;
    for (size_t i = 0; i < a->len; i++) {
        char x = a->ptr[i], y = b->ptr[i];
        if ((x >= 'A' && x <= 'Z' ? x - 'A' + 'a' : x) !=
            (y >= 'A' && y <= 'Z' ? y - 'A' + 'a' : y))
            return false;
    }
    return true;
}

static void pf_apply(struct pf_list *l, const struct mgw_milter_msg *f)
{
    const struct mgw_str *name = &f->u.header.name, *value = &f->u.header.value;
    size_t k = f->u.header.index, i;

    switch (f->cmd) {
    case 'h': pf_insert(l, l->n, name, value); return;
    case 'i': pf_insert(l, k < l->n ? k : l->n, name, value); return;
    case 'm':
        k = k == 0 ? 1 : k;
        for (i = 1; i < l->n; i++)
            if (pf_same_name(&l->h[i][0], name) && --k == 0)
                break;
        if (i < l->n && value->len == 0) {
            memmove(&l->h[i], &l->h[i + 1], (l->n - i - 1) * sizeof l->h[0]);
            l->n--;
        } else if (i < l->n) {
            l->h[i][0] = *name;
            l->h[i][1] = *value;
        } else if (value->len > 0) {
            pf_insert(l, l->n, name, value);
        }
        return;
    default: return; /* not a header frame */
    }
}

static bool bytes_equal(const struct mgw_str *a, const char *b)
{
    return a->len == strlen(b) && memcmp(a->ptr, b, a->len) == 0;
}

/* Whether Postfix, given the original and the net list, delivers the phases' headers. */
static bool postfix_agrees(const char *name, const struct msg_spec *sp, struct mgw_msg_edit *phased)
{
    static char want[OUT], got[OUT];
    struct pf_list l = {.n = 1, .h = {{S("Received"), S("by gateway")}}};
    struct mgw_milter_msg *frames;
    uint8_t *arena;
    size_t n = collect_net(phased, MGW_MSG_EDIT_CHUNK, NULL, &frames, &arena);

    for (size_t i = 0; i < MAXH && sp->hdr[i][0] != NULL; i++) {
        struct mgw_str hn = {sp->hdr[i][0], strlen(sp->hdr[i][0])};
        struct mgw_str hv = {sp->hdr[i][1], strlen(sp->hdr[i][1])};
        pf_insert(&l, l.n, &hn, &hv);
    }
    for (size_t i = 0; i < n; i++)
        pf_apply(&l, &frames[i]);
    free(frames);
    free(arena);
    render_headers(phased, want);
    got[0] = '\0';
    /* Postfix's own Received stays where the phases left it: below the headers inserted
     * above it (msg_edit_int.h, `above`), on top otherwise. */
    if (phased->above >= l.n || !bytes_equal(&l.h[phased->above][0], "Received") ||
        !bytes_equal(&l.h[phased->above][1], "by gateway")) {
        case_failed(name, "Postfix model: its Received is not below the %zu header(s) above it",
                    phased->above);
        return false;
    }
    for (size_t i = 0, k = 0; i < l.n; i++) {
        if (i == phased->above)
            continue;
        appendf(got, "%s%.*s:%.*s", k++ > 0 ? "|" : "", (int)l.h[i][0].len, l.h[i][0].ptr,
                (int)l.h[i][1].len, l.h[i][1].ptr);
    }
    if (strcmp(got, want) != 0) {
        case_failed(name, "Postfix model:\n  got  %s\n  want %s", got, want);
        return false;
    }
    return true;
}

static void test_net_list_round_trips_on_generated_chains(void **state)
{
    size_t failed = 0, cases = 0;

    (void)state;
    rng_state = 0x9E3779B97F4A7C15ull;
    for (uint32_t hidden = 0; hidden <= 1; hidden++) {
        for (size_t k = 0; k < 3000; k++) {
            struct mgw_msg_edit_conf conf = {.ins_hidden = hidden,
                                             .body_mem_max = k % 3 == 0 ? 8 : 0};
            struct msg_spec sp;
            struct mgw_msg_edit *m;
            size_t np = 1 + rnd(MAXP);
            char name[96];

            gen_message(&sp);
            m = build(&sp, &conf);
            for (size_t p = 0; p < np; p++) {
                struct mgw_milter_msg mods[GEN_MODS];
                size_t n = rnd(GEN_MODS + 1);

                for (size_t i = 0; i < n; i++)
                    gen_frame(&mods[i], mgw_msg_edit_header_count(m));
                bodies_in_one_run(mods, n);
                assert_int_equal(mgw_msg_edit_apply(m, mods, n), 0);
            }
            snprintf(name, sizeof name, "generated case %zu (hidden %u, %zu phases)", k,
                     (unsigned)hidden, np);
            cases++;
            if ((!roundtrip_ok(name, &sp, &conf, m) ||
                 (hidden == 1 && !postfix_agrees(name, &sp, m))) &&
                ++failed >= 5) {
                mgw_msg_edit_free(m);
                end_table();
            }
            mgw_msg_edit_free(m);
        }
    }
    assert_int_equal(cases, 6000);
    end_table();
}

/* ---- Replay, spill, bounds ---- */

static size_t files_in(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void test_a_large_body_spills_to_an_unlinked_file_and_replays_in_chunks(void **state)
{
    char dir[] = "/tmp/mgw-msg-edit-XXXXXX";
    struct mgw_msg_edit_conf conf = {.body_mem_max = 100, .spill_dir = dir};
    const struct msg_spec sp = {.hdr = {{"Subject", "big"}}};
    uint8_t data[1000];
    struct mgw_msg_edit *m;
    size_t nchunks;
    char *body;

    (void)state;
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)('a' + i % 26);
    m = build(&sp, &conf);
    assert_int_equal(mgw_msg_edit_body_append(m, data, 60), 0);
    assert_false(mgw_msg_edit_body_spilled(m));
    assert_int_equal(mgw_msg_edit_body_append(m, data + 60, 40), 0);
    assert_false(mgw_msg_edit_body_spilled(m)); /* exactly at the limit: still in memory */
    assert_int_equal(mgw_msg_edit_body_append(m, data + 100, 1), 0);
    assert_true(mgw_msg_edit_body_spilled(m));
    assert_int_equal(mgw_msg_edit_body_append(m, data + 101, sizeof data - 101), 0);
    assert_int_equal(mgw_msg_edit_body_size(m), sizeof data);
    assert_int_equal(files_in(dir), 0); /* unlinked at once */

    body = read_body(m, 64, &nchunks);
    assert_memory_equal(body, data, sizeof data);
    assert_int_equal(nchunks, 16); /* 15 x 64 + 40 */
    free(body);

    /* A replacement larger than the limit spills too; the net list carries it in chunks. */
    {
        struct mgw_milter_msg repl[3] = {
            {.cmd = 'b', .u.body = {data, 500}},
            {.cmd = 'b', .u.body = {data + 500, 300}},
            {.cmd = 'b', .u.body = {data + 800, 1}},
        };
        struct mgw_msg_edit_cursor c = {0};
        struct mgw_milter_msg f;
        uint8_t buf[256];
        size_t got = 0, frames = 0;
        int rc;

        assert_int_equal(mgw_msg_edit_apply(m, repl, 3), 0);
        assert_true(mgw_msg_edit_body_spilled(m));
        assert_int_equal(mgw_msg_edit_body_size(m), 801);
        while ((rc = mgw_msg_edit_net_next(m, &c, buf, sizeof buf, &f)) == 1) {
            assert_int_equal(f.cmd, 'b');
            assert_true(f.u.body.len <= sizeof buf);
            assert_memory_equal(f.u.body.data, data + got, f.u.body.len);
            got += f.u.body.len;
            frames++;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(got, 801);
        assert_int_equal(frames, 4); /* 256 + 256 + 256 + 33 */
    }
    assert_int_equal(files_in(dir), 0);
    m = mgw_msg_edit_free(m);
    assert_null(m);
    assert_int_equal(rmdir(dir), 0);

    /* Without a directory, tmpfile() is used. */
    m = mgw_msg_edit_new(&(struct mgw_msg_edit_conf){.body_mem_max = 10});
    assert_int_equal(mgw_msg_edit_body_append(m, data, 11), 0);
    assert_true(mgw_msg_edit_body_spilled(m));
    body = read_body(m, MGW_MSG_EDIT_CHUNK, &nchunks);
    assert_memory_equal(body, data, 11);
    assert_int_equal(nchunks, 1);
    free(body);
    mgw_msg_edit_free(m);
}

static void test_a_spill_directory_that_does_not_exist_is_an_io_error(void **state)
{
    struct mgw_msg_edit_conf conf = {.body_mem_max = 4, .spill_dir = "/nonexistent/mgw"};
    struct mgw_msg_edit *m = mgw_msg_edit_new(&conf);
    const uint8_t data[8] = "12345678";

    (void)state;
    assert_int_equal(mgw_msg_edit_body_append(m, data, 4), 0);
    assert_int_equal(mgw_msg_edit_body_append(m, data, 1), MGW_EIO);
    mgw_msg_edit_free(m);
}

static void test_limits_refuse_what_does_not_fit(void **state)
{
    struct mgw_msg_edit_conf conf = {.body_mem_max = 4,
                                     .body_max = 10,
                                     .headers_max = 2,
                                     .header_bytes_max = 20,
                                     .rcpts_max = 2};
    struct mgw_msg_edit *m = mgw_msg_edit_new(&conf);
    const uint8_t data[16] = {0};

    (void)state;
    assert_int_equal(mgw_msg_edit_add_header(m, "A", 1, "123456789", 9), 0); /* 10 bytes */
    assert_int_equal(mgw_msg_edit_add_header(m, "B", 1, "1234567890", 10), MGW_ENOSPACE);
    assert_int_equal(mgw_msg_edit_add_header(m, "B", 1, "123456789", 9), 0);   /* 20 bytes */
    assert_int_equal(mgw_msg_edit_add_header(m, "C", 1, "", 0), MGW_ENOSPACE); /* count */
    assert_int_equal(mgw_msg_edit_add_header(m, "", 0, "v", 1), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_add_header(m, "C", SIZE_MAX, "v", SIZE_MAX), MGW_ENOSPACE);
    assert_int_equal(mgw_msg_edit_add_rcpt(m, "<a@x>", 5, NULL, 0), 0);
    assert_int_equal(mgw_msg_edit_add_rcpt(m, "<b@x>", 5, NULL, 0), 0);
    assert_int_equal(mgw_msg_edit_add_rcpt(m, "<c@x>", 5, NULL, 0), MGW_ENOSPACE);
    assert_int_equal(mgw_msg_edit_body_append(m, data, 10), 0);
    assert_int_equal(mgw_msg_edit_body_append(m, data, 1), MGW_ENOSPACE);
    assert_int_equal(mgw_msg_edit_body_append(m, data, SIZE_MAX), MGW_ENOSPACE);
    assert_int_equal(mgw_msg_edit_body_size(m), 10);

    {
        const struct mgw_milter_msg add[] = {ADDH("C", "c")};
        const struct mgw_milter_msg grow[] = {CHGH(1, "A", "12345678901")};
        const struct mgw_milter_msg same[] = {CHGH(1, "A", "abcdefghi")};
        const struct mgw_milter_msg rcpt[] = {ADDR("<c@x>")};
        const struct mgw_milter_msg big[] = {BODY("12345678901")};
        const struct mgw_milter_msg fits[] = {BODY("1234567890")};

        assert_int_equal(mgw_msg_edit_apply(m, add, 1), MGW_ENOSPACE);
        assert_int_equal(mgw_msg_edit_apply(m, grow, 1), MGW_ENOSPACE);
        assert_int_equal(mgw_msg_edit_apply(m, same, 1), 0); /* same size fits */
        assert_int_equal(mgw_msg_edit_apply(m, rcpt, 1), MGW_ENOSPACE);
        assert_int_equal(mgw_msg_edit_apply(m, big, 1), MGW_ENOSPACE);
        assert_false(mgw_msg_edit_body_replaced(m)); /* a refused body changes nothing */
        assert_int_equal(mgw_msg_edit_apply(m, fits, 1), 0);
        assert_true(mgw_msg_edit_body_replaced(m));
    }
    mgw_msg_edit_free(m);
}

static void test_invalid_frames_change_nothing(void **state)
{
    static const struct {
        const char *name;
        struct mgw_milter_msg f;
    } cases[] = {
        {"a verdict is not a modification", {.cmd = 'c'}},
        {"a reply code is not a modification", {.cmd = 'y', .u.text = S("550 no")}},
        {"an added header needs a name", ADDH("", "v")},
        {"an inserted header needs a name", INSH(0, "", "v")},
        {"a changed header needs a name", CHGH(1, "", "v")},
        {"a header name view must not be NULL", {.cmd = 'h', .u.header = {0, {NULL, 0}, S("v")}}},
        {"a body view with bytes must not be NULL", {.cmd = 'b', .u.body = {NULL, 3}}},
        {"a recipient view with bytes must not be NULL", {.cmd = '+', .u.text = {NULL, 3}}},
        {"a quarantine view with bytes must not be NULL", {.cmd = 'q', .u.text = {NULL, 1}}},
        {"a sender view with bytes must not be NULL", {.cmd = 'e', .u.rcpt = {{NULL, 1}, {0}}}},
    };
    char before[OUT], after[OUT];
    const struct msg_spec sp = STD_MSG;

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_msg_edit *m = build(&sp, NULL);
        struct mgw_milter_msg list[2] = {ADDH("X-First", "ok"), cases[i].f};
        int rc;

        render_all(m, before);
        rc = mgw_msg_edit_apply(m, list, 2);
        render_all(m, after);
        if (rc != MGW_EINVAL)
            case_failed(cases[i].name, "apply: got %d, want %d", rc, MGW_EINVAL);
        else if (strcmp(before, after) != 0)
            case_failed(cases[i].name, "message: got %s, want %s", after, before);
        mgw_msg_edit_free(m);
    }
    end_table();
}

static void test_replbody_runs_split_by_other_frames_are_refused(void **state)
{
    static const struct {
        const char *name;
        struct mgw_milter_msg mods[MAXM];
        int want;
    } cases[] = {
        {"a body, a header, a body is refused as Postfix refuses it",
         {BODY("a"), ADDH("X", "y"), BODY("b")},
         MGW_EINVAL},
        {"a body split by a recipient change is refused",
         {BODY("a"), DELR("<a@x>"), BODY("b")},
         MGW_EINVAL},
        {"one run of bodies then other frames is fine", {BODY("a"), BODY("b"), ADDH("X", "y")}, 0},
        {"other frames then one run of bodies is fine", {ADDH("X", "y"), BODY("a"), BODY("b")}, 0},
    };
    const struct msg_spec sp = STD_MSG;
    char before[OUT], after[OUT];

    (void)state;
    for (size_t i = 0; i < NELEM(cases); i++) {
        struct mgw_msg_edit *m = build(&sp, NULL);
        int rc;

        render_all(m, before);
        rc = mgw_msg_edit_apply(m, cases[i].mods, count_frames(cases[i].mods, MAXM));
        render_all(m, after);
        if (rc != cases[i].want)
            case_failed(cases[i].name, "apply: got %d, want %d", rc, cases[i].want);
        else if (rc != 0 && strcmp(before, after) != 0)
            case_failed(cases[i].name, "message: got %s, want %s", after, before);
        mgw_msg_edit_free(m);
    }
    end_table();
}

static void test_the_original_is_frozen_after_the_first_apply(void **state)
{
    const struct msg_spec sp = STD_MSG;
    struct mgw_msg_edit *m = build(&sp, NULL);
    const char list[] = "<c@x>\0NOTIFY=NEVER\0";
    struct mgw_strlist l = mgw_milter_list_make(list, sizeof list - 1);

    (void)state;
    assert_int_equal(mgw_msg_edit_apply(m, NULL, 0), 0);
    assert_int_equal(mgw_msg_edit_add_header(m, "X", 1, "y", 1), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_body_append(m, (const uint8_t *)"x", 1), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_set_sender(m, "<t@x>", 5, NULL, 0), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_add_rcpt(m, "<c@x>", 5, NULL, 0), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_mail(m, &l), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_rcpt(m, &l), MGW_EORDER);
    assert_int_equal(mgw_msg_edit_apply(m, NULL, 1), MGW_EINVAL);
    mgw_msg_edit_free(m);
    assert_null(mgw_msg_edit_free(NULL));
}

static void test_mail_and_rcpt_lists_become_address_and_joined_args(void **state)
{
    const char mail[] = "<s@x>\0BODY=8BITMIME\0SIZE=100\0";
    const char rcpt1[] = "<a@x>\0";
    const char rcpt2[] = "<b@x>\0NOTIFY=NEVER\0ORCPT=rfc822;b@x\0";
    struct mgw_strlist ml = mgw_milter_list_make(mail, sizeof mail - 1);
    struct mgw_strlist r1 = mgw_milter_list_make(rcpt1, sizeof rcpt1 - 1);
    struct mgw_strlist r2 = mgw_milter_list_make(rcpt2, sizeof rcpt2 - 1);
    struct mgw_strlist empty = {NULL, 0, 0};
    struct mgw_msg_edit *m = mgw_msg_edit_new(NULL);
    char got[OUT];

    (void)state;
    assert_int_equal(mgw_msg_edit_mail(m, &ml), 0);
    assert_int_equal(mgw_msg_edit_rcpt(m, &r1), 0);
    assert_int_equal(mgw_msg_edit_rcpt(m, &r2), 0);
    assert_int_equal(mgw_msg_edit_rcpt(m, &empty), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_mail(m, NULL), MGW_EINVAL);
    render_env(m, got);
    assert_string_equal(got, "from=<s@x>[BODY=8BITMIME SIZE=100] "
                             "rcpt=a@x,b@x[NOTIFY=NEVER ORCPT=rfc822;b@x]");
    mgw_msg_edit_free(m);
}

static void test_replay_reads_views_and_reports_bad_arguments(void **state)
{
    const struct msg_spec sp = STD_MSG;
    struct mgw_msg_edit *m = build(&sp, NULL);
    struct mgw_msg_edit_cursor c = {0};
    struct mgw_milter_msg f;
    struct mgw_str n, v;
    uint8_t buf[4];
    size_t off = 0;

    (void)state;
    assert_int_equal(mgw_msg_edit_header_count(m), 4);
    assert_int_equal(mgw_msg_edit_header_at(m, 3, &n, &v), 0);
    assert_string_equal(n.ptr, "x-a"); /* views are NUL-terminated */
    assert_string_equal(v.ptr, "2");
    assert_int_equal(mgw_msg_edit_header_at(m, 4, &n, &v), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_rcpt_at(m, 2, &n, &v), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_body_read(m, &off, buf, 0), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_body_read(m, &off, NULL, 4), MGW_EINVAL);
    off = 100;
    assert_int_equal(mgw_msg_edit_body_read(m, &off, buf, 4), 0);
    assert_int_equal(mgw_msg_edit_net_next(m, &c, buf, 0, &f), MGW_EINVAL);
    assert_int_equal(mgw_msg_edit_net_next(m, &c, buf, sizeof buf, &f), 0); /* nothing changed */
    assert_false(mgw_msg_edit_quarantined(m, NULL));
    mgw_msg_edit_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_frames_follow_postfix),
        cmocka_unit_test(test_envelope_frames_and_their_net),
        cmocka_unit_test(test_body_and_quarantine_frames),
        cmocka_unit_test(test_chains_of_phases_net_to_one_list),
        cmocka_unit_test(test_net_list_round_trips_on_generated_chains),
        cmocka_unit_test(test_a_large_body_spills_to_an_unlinked_file_and_replays_in_chunks),
        cmocka_unit_test(test_a_spill_directory_that_does_not_exist_is_an_io_error),
        cmocka_unit_test(test_limits_refuse_what_does_not_fit),
        cmocka_unit_test(test_invalid_frames_change_nothing),
        cmocka_unit_test(test_replbody_runs_split_by_other_frames_are_refused),
        cmocka_unit_test(test_the_original_is_frozen_after_the_first_apply),
        cmocka_unit_test(test_mail_and_rcpt_lists_become_address_and_joined_args),
        cmocka_unit_test(test_replay_reads_views_and_reports_bad_arguments),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
