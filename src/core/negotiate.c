/*
 * negotiate.c - answer the MTA's option negotiation. Pure; see negotiate.h for the rules.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/negotiate.h"

#include <string.h>

#include "mgw/error.h"
#include "mgw/milter_vocab.h"

/* Bits a milter may set in its protocol answer. MDS bits are decided separately. */
#define PROTOCOL_SETTABLE                                                                \
    (MGW_SMFI_CURR_PROT & ~(MGW_SMFIP_MDS_256K | MGW_SMFIP_MDS_1M))

int mgw_negotiate(const struct mgw_milter_optneg *offer, const struct mgw_backend_needs *needs,
                  uint32_t max_frame, struct mgw_milter_optneg *reply)
{
    uint32_t offered_actions = offer->actions ? offer->actions : MGW_SMFI_V1_ACTS;
    uint32_t offered_protocol = offer->protocol ? offer->protocol : MGW_SMFI_V1_PROT;
    int lists = 0;

    if (offer->version < MGW_MILTER_MIN_VERSION)
        return MGW_EPROTO;
    if (max_frame == 0)
        max_frame = MGW_MILTER_DEFAULT_MAX_FRAME;
    memset(reply, 0, sizeof *reply);
    reply->version = offer->version < MGW_MILTER_VERSION ? offer->version : MGW_MILTER_VERSION;
    reply->actions = needs->actions & offered_actions & ~MGW_SMFIF_SETSYMLIST;
    reply->protocol = needs->protocol & offered_protocol & PROTOCOL_SETTABLE;

    /* The frame cap counts the command byte too, hence "+ 1". */
    if ((offered_protocol & MGW_SMFIP_MDS_1M) && max_frame >= MGW_MILTER_MDS_1M + 1)
        reply->protocol |= MGW_SMFIP_MDS_1M;
    else if ((offered_protocol & MGW_SMFIP_MDS_256K) && max_frame >= MGW_MILTER_MDS_256K + 1)
        reply->protocol |= MGW_SMFIP_MDS_256K;

    if (reply->version >= 6 && (offered_actions & MGW_SMFIF_SETSYMLIST)) {
        for (int i = 0; i < MGW_STAGE_COUNT; i++) {
            const char *l = needs->symlist[i];

            if (l != NULL) {
                reply->symlist[i].ptr = l;
                reply->symlist[i].len = strlen(l);
                lists = 1;
            }
        }
    }
    if (lists)
        reply->actions |= MGW_SMFIF_SETSYMLIST;
    return 0;
}

/* The three lookups below read the command table (milter_vocab.c). */

uint32_t mgw_negotiate_no_bit(uint8_t cmd)
{
    const struct mgw_milter_cmd_info *c = mgw_milter_cmd_info(cmd);

    return c != NULL ? c->no_bit : 0;
}

uint32_t mgw_negotiate_nr_bit(uint8_t cmd)
{
    const struct mgw_milter_cmd_info *c = mgw_milter_cmd_info(cmd);

    return c != NULL ? c->nr_bit : 0;
}

/* A byte that is no command counts as answered, as it always has: the session never
 * asks about one (the decoder refuses it first). */
int mgw_negotiate_replies(uint32_t protocol, uint8_t cmd)
{
    const struct mgw_milter_cmd_info *c = mgw_milter_cmd_info(cmd);

    if (c == NULL)
        return 1;
    return !c->unanswered && (protocol & c->nr_bit) == 0;
}
