/*
 * negotiate.h - the answer to the MTA's option negotiation (SMFIC_OPTNEG), as pure logic.
 *
 * Rules (libmilter st_optionneg and Postfix milter8.c, see PROTOCOL.md):
 *  - versions below 2 are refused; we answer min(MTA version, 6), never more;
 *  - zero offered actions/protocol mean the V1 sets (0x0F / 0x3F), as libmilter does;
 *  - actions and protocol bits are what the filters need, limited to what the MTA offered
 *    (Postfix treats anything more as a protocol error);
 *  - macro lists are sent only with SMFIF_SETSYMLIST offered and version 6;
 *  - MDS_256K/MDS_1M are echoed when offered and the frame cap admits them, so Sendmail
 *    may send larger body chunks.
 * After negotiation, the session uses mgw_negotiate_sends() and mgw_negotiate_replies()
 * to know which events the MTA will send and which it expects an answer to.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_NEGOTIATE_H
#define MGW_NEGOTIATE_H

#include <stdint.h>

#include "mgw/backend.h"
#include "mgw/milter_codec.h"

/* Compute *reply (symlist pointers borrow needs->symlist). Returns 0, or MGW_EPROTO if
 * the offer cannot be served (version < 2). */
int mgw_negotiate(const struct mgw_milter_optneg *offer, const struct mgw_backend_needs *needs,
                  uint32_t max_frame, struct mgw_milter_optneg *reply);

/* The SMFIP_NO* bit that suppresses command `cmd`, or 0 if it cannot be suppressed. */
uint32_t mgw_negotiate_no_bit(uint8_t cmd);
/* The SMFIP_NR_* bit that makes `cmd` unanswered, or 0 if it is always answered. */
uint32_t mgw_negotiate_nr_bit(uint8_t cmd);
/* Whether the MTA expects a reply to `cmd` under the negotiated protocol bits. */
int mgw_negotiate_replies(uint32_t protocol, uint8_t cmd);

#endif
