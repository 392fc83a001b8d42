/*
 * phase_msg.c - the message as ordered phases see it (see phase_msg.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/phase_msg.h"

#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/grpc_channel.h"
#include "mgw/msg_edit.h"
#include "mgw/xmalloc.h"

/* Postfix (and Sendmail) count their own Received: header, which milters are not shown,
 * in INSHEADER indexes (msg_edit.h, HIDDEN HEADERS). */
#define INS_HIDDEN 1

struct macros {
    char *data;
    size_t len;
};

struct mgw_phase_msg {
    struct mgw_msg_edit_conf conf;
    struct mgw_msg_edit *m; /* NULL between messages */
    struct macros eoh, eom; /* the MTA's macros of N and E, for the replay */
    int broken;
};

struct mgw_phase_msg *mgw_phase_msg_new(size_t memory)
{
    struct mgw_phase_msg *pm = mgw_xcalloc(1, sizeof *pm);

    pm->conf.body_mem_max = memory ? memory : MGW_PHASE_DEFAULT_MEMORY;
    pm->conf.ins_hidden = INS_HIDDEN;
    /* tmpfile() ignores TMPDIR; a container with a read-only /tmp sets it. */
    pm->conf.spill_dir = getenv("TMPDIR");
    if (pm->conf.spill_dir != NULL && pm->conf.spill_dir[0] == '\0')
        pm->conf.spill_dir = NULL;
    return pm;
}

static void macros_set(struct macros *mc, const struct mgw_strlist *l)
{
    free(mc->data);
    mc->data = NULL;
    mc->len = 0;
    if (l != NULL && l->len > 0) {
        mc->data = mgw_xmemdup(l->data, l->len);
        mc->len = l->len;
    }
}

void mgw_phase_msg_reset(struct mgw_phase_msg *pm)
{
    pm->m = mgw_msg_edit_free(pm->m);
    macros_set(&pm->eoh, NULL);
    macros_set(&pm->eom, NULL);
    pm->broken = 0;
}

struct mgw_phase_msg *mgw_phase_msg_free(struct mgw_phase_msg *pm)
{
    if (pm != NULL) {
        mgw_phase_msg_reset(pm);
        free(pm);
    }
    return NULL;
}

int mgw_phase_msg_broken(const struct mgw_phase_msg *pm)
{
    return pm->broken;
}

static int broke(struct mgw_phase_msg *pm, int r)
{
    if (r < 0)
        pm->broken = 1;
    return r;
}

int mgw_phase_msg_record(struct mgw_phase_msg *pm, const struct mgw_event *ev)
{
    const struct mgw_milter_msg *msg = ev->msg;

    if (msg->cmd == MGW_SMFIC_MAIL)
        mgw_phase_msg_reset(pm); /* a new message (an implicit abort, too) */
    if (pm->broken)
        return MGW_ENOSPACE;
    if (pm->m == NULL) /* created by its first event: MAIL may be negotiated away */
        pm->m = mgw_msg_edit_new(&pm->conf);
    switch (msg->cmd) {
    case MGW_SMFIC_MAIL: return broke(pm, mgw_msg_edit_mail(pm->m, &msg->u.args));
    case MGW_SMFIC_RCPT: return broke(pm, mgw_msg_edit_rcpt(pm->m, &msg->u.args));
    case MGW_SMFIC_HEADER:
        return broke(pm, mgw_msg_edit_add_header(pm->m, msg->u.header.name.ptr,
                                                 msg->u.header.name.len,
                                                 msg->u.header.value.ptr,
                                                 msg->u.header.value.len));
    case MGW_SMFIC_EOH: macros_set(&pm->eoh, ev->macros); return 0;
    case MGW_SMFIC_BODY:
        return broke(pm, mgw_msg_edit_body_append(pm->m, msg->u.body.data, msg->u.body.len));
    case MGW_SMFIC_BODYEOB:
        macros_set(&pm->eom, ev->macros);
        if (msg->u.body.len == 0)
            return 0;
        return broke(pm, mgw_msg_edit_body_append(pm->m, msg->u.body.data, msg->u.body.len));
    default: return 0;
    }
}

int mgw_phase_msg_apply(struct mgw_phase_msg *pm, const struct mgw_milter_msg *mods, size_t n)
{
    if (pm->broken || pm->m == NULL)
        return MGW_EINVAL;
    return broke(pm, mgw_msg_edit_apply(pm->m, mods, n));
}

/* Pack one event built from a milter frame and hand it on. */
static void emit(struct mgw_proto_scratch *sc, const struct mgw_milter_msg *msg,
                 const struct macros *mc, uint64_t *next_id,
                 void (*each)(void *, uint8_t, grpc_slice, uint64_t), void *arg)
{
    struct mgw_strlist l = mgw_milter_list_make(mc ? mc->data : NULL, mc ? mc->len : 0);
    struct mgw_event ev = {.msg = msg, .macros = mc && mc->len ? &l : NULL};
    struct mgw_proto_event pe;
    uint64_t id = (*next_id)++;
    grpc_slice s;

    if (msg->cmd == MGW_SMFIC_BODY)
        mgw_proto_event_body(&pe, id, msg->u.body.data, msg->u.body.len);
    else
        mgw_proto_event_build(&pe, sc, id, &ev);
    s = mgw_grpc_pack_slice(&pe.ev.base);
    mgw_proto_scratch_reset(sc);
    each(arg, msg->cmd, s, id);
}

int mgw_phase_msg_replay(struct mgw_phase_msg *pm, struct mgw_proto_scratch *sc,
                         uint64_t *next_id,
                         void (*each)(void *arg, uint8_t cmd, grpc_slice msg, uint64_t id),
                         void *arg)
{
    struct mgw_milter_msg m;
    uint8_t *buf;
    size_t off = 0;
    ssize_t got;

    if (pm->broken || pm->m == NULL)
        return MGW_EINVAL;
    for (size_t i = 0; i < mgw_msg_edit_header_count(pm->m); i++) {
        memset(&m, 0, sizeof m);
        m.cmd = MGW_SMFIC_HEADER;
        mgw_msg_edit_header_at(pm->m, i, &m.u.header.name, &m.u.header.value);
        emit(sc, &m, NULL, next_id, each, arg);
    }
    memset(&m, 0, sizeof m);
    m.cmd = MGW_SMFIC_EOH;
    emit(sc, &m, &pm->eoh, next_id, each, arg);
    buf = mgw_xmalloc(MGW_MSG_EDIT_CHUNK);
    while ((got = mgw_msg_edit_body_read(pm->m, &off, buf, MGW_MSG_EDIT_CHUNK)) > 0) {
        memset(&m, 0, sizeof m);
        m.cmd = MGW_SMFIC_BODY;
        m.u.body.data = buf;
        m.u.body.len = (size_t)got;
        emit(sc, &m, NULL, next_id, each, arg);
    }
    free(buf);
    if (got < 0)
        return broke(pm, (int)got);
    memset(&m, 0, sizeof m);
    m.cmd = MGW_SMFIC_BODYEOB;
    emit(sc, &m, &pm->eom, next_id, each, arg);
    return 0;
}

ssize_t mgw_phase_msg_net(struct mgw_phase_msg *pm, uint32_t actions,
                          struct mgw_milter_msg **frames, uint8_t **bodymem, size_t *dropped)
{
    struct mgw_msg_edit_cursor c;
    size_t n = 0, cap = 8, used = 0, room;
    uint8_t *mem;
    int r;

    *frames = NULL;
    *bodymem = NULL;
    *dropped = 0;
    if (pm->broken || pm->m == NULL)
        return MGW_EINVAL;
    room = mgw_msg_edit_body_size(pm->m) + 1;
    mem = mgw_xmalloc(room);
    *frames = mgw_xcalloc(cap, sizeof **frames);
    memset(&c, 0, sizeof c);
    for (;;) {
        struct mgw_milter_msg f;

        r = mgw_msg_edit_net_next(pm->m, &c, mem + used,
                                  room - used < MGW_MSG_EDIT_CHUNK ? room - used
                                                                   : MGW_MSG_EDIT_CHUNK,
                                  &f);
        if (r <= 0)
            break;
        if (f.cmd == MGW_SMFIR_REPLBODY)
            used += f.u.body.len;
        if (mgw_milter_mod_action(f.cmd) & ~actions) {
            (*dropped)++;
            continue;
        }
        if (n == cap) {
            cap *= 2;
            *frames = mgw_xrealloc(*frames, cap * sizeof **frames);
        }
        (*frames)[n++] = f;
    }
    *bodymem = mem;
    if (r < 0)
        return broke(pm, r);
    return (ssize_t)n;
}
