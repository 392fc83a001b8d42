/*
 * negotiate.c - answer the MTA's option negotiation. Pure; see negotiate.h for the rules.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/negotiate.h"

#include <string.h>

#include "mgw/error.h"

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

uint32_t mgw_negotiate_no_bit(uint8_t cmd)
{
    switch (cmd) {
    case MGW_SMFIC_CONNECT: return MGW_SMFIP_NOCONNECT;
    case MGW_SMFIC_HELO: return MGW_SMFIP_NOHELO;
    case MGW_SMFIC_MAIL: return MGW_SMFIP_NOMAIL;
    case MGW_SMFIC_RCPT: return MGW_SMFIP_NORCPT;
    case MGW_SMFIC_DATA: return MGW_SMFIP_NODATA;
    case MGW_SMFIC_HEADER: return MGW_SMFIP_NOHDRS;
    case MGW_SMFIC_EOH: return MGW_SMFIP_NOEOH;
    case MGW_SMFIC_BODY: return MGW_SMFIP_NOBODY;
    case MGW_SMFIC_UNKNOWN: return MGW_SMFIP_NOUNKNOWN;
    default: return 0;
    }
}

uint32_t mgw_negotiate_nr_bit(uint8_t cmd)
{
    switch (cmd) {
    case MGW_SMFIC_CONNECT: return MGW_SMFIP_NR_CONN;
    case MGW_SMFIC_HELO: return MGW_SMFIP_NR_HELO;
    case MGW_SMFIC_MAIL: return MGW_SMFIP_NR_MAIL;
    case MGW_SMFIC_RCPT: return MGW_SMFIP_NR_RCPT;
    case MGW_SMFIC_DATA: return MGW_SMFIP_NR_DATA;
    case MGW_SMFIC_HEADER: return MGW_SMFIP_NR_HDR;
    case MGW_SMFIC_EOH: return MGW_SMFIP_NR_EOH;
    case MGW_SMFIC_BODY: return MGW_SMFIP_NR_BODY;
    case MGW_SMFIC_UNKNOWN: return MGW_SMFIP_NR_UNKN;
    default: return 0;
    }
}

int mgw_negotiate_replies(uint32_t protocol, uint8_t cmd)
{
    switch (cmd) {
    case MGW_SMFIC_OPTNEG:
    case MGW_SMFIC_BODYEOB:
        return 1;
    case MGW_SMFIC_MACRO:
    case MGW_SMFIC_ABORT:
    case MGW_SMFIC_QUIT:
    case MGW_SMFIC_QUIT_NC:
        return 0;
    default:
        return (protocol & mgw_negotiate_nr_bit(cmd)) == 0;
    }
}
