/*
 * libmilter/mfdef.h - milter protocol constants, for libmiltergw-milter.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Written for miltergw: the names and values are those of Sendmail's libmilter (so that a
 * milter's source compiles unchanged), checked against Debian's libmilter-dev by
 * sdk/libmilter/tests/test_mfapi_constants.c. The wire commands (SMFIC_*, SMFIR_*) are
 * here for milters that mention them; libmiltergw-milter itself speaks gRPC, not milter.
 */
#ifndef _LIBMILTER_MFDEF_H
#define _LIBMILTER_MFDEF_H 1

#ifndef SMFI_PROT_VERSION
#define SMFI_PROT_VERSION 6 /* the milter protocol version */
#endif

#define MILTER_LEN_BYTES     4
#define MILTER_OPTLEN        (MILTER_LEN_BYTES * 3)
#define MILTER_CHUNK_SIZE    65535
#define MILTER_MAX_DATA_SIZE 65535
#if _FFR_MDS_NEGOTIATE
#define MILTER_MDS_64K  ((64 * 1024) - 1)
#define MILTER_MDS_256K ((256 * 1024) - 1)
#define MILTER_MDS_1M   ((1024 * 1024) - 1)
#endif

/* Action sets of the successive filter API versions. */
#define SMFI_V1_ACTS   0x0000000FL
#define SMFI_V2_ACTS   0x0000003FL
#define SMFI_CURR_ACTS 0x000001FFL

/* Address families in the connect command. */
#define SMFIA_UNKNOWN 'U'
#define SMFIA_UNIX    'L'
#define SMFIA_INET    '4'
#define SMFIA_INET6   '6'

/* Commands, MTA to filter. */
#define SMFIC_ABORT   'A'
#define SMFIC_BODY    'B'
#define SMFIC_CONNECT 'C'
#define SMFIC_MACRO   'D'
#define SMFIC_BODYEOB 'E'
#define SMFIC_HELO    'H'
#define SMFIC_QUIT_NC 'K'
#define SMFIC_HEADER  'L'
#define SMFIC_MAIL    'M'
#define SMFIC_EOH     'N'
#define SMFIC_OPTNEG  'O'
#define SMFIC_QUIT    'Q'
#define SMFIC_RCPT    'R'
#define SMFIC_DATA    'T'
#define SMFIC_UNKNOWN 'U'

/* Replies and modifications, filter to MTA. */
#define SMFIR_ADDRCPT     '+'
#define SMFIR_DELRCPT     '-'
#define SMFIR_ADDRCPT_PAR '2'
#define SMFIR_SHUTDOWN    '4'
#define SMFIR_ACCEPT      'a'
#define SMFIR_REPLBODY    'b'
#define SMFIR_CONTINUE    'c'
#define SMFIR_DISCARD     'd'
#define SMFIR_CHGFROM     'e'
#define SMFIR_CONN_FAIL   'f'
#define SMFIR_ADDHEADER   'h'
#define SMFIR_INSHEADER   'i'
#define SMFIR_SETSYMLIST  'l'
#define SMFIR_CHGHEADER   'm'
#define SMFIR_PROGRESS    'p'
#define SMFIR_QUARANTINE  'q'
#define SMFIR_REJECT      'r'
#define SMFIR_SKIP        's'
#define SMFIR_TEMPFAIL    't'
#define SMFIR_REPLYCODE   'y'

/* Protocol steps: what the MTA should not send, or not wait for (NR = no reply). */
#define SMFIP_NOCONNECT   0x00000001L
#define SMFIP_NOHELO      0x00000002L
#define SMFIP_NOMAIL      0x00000004L
#define SMFIP_NORCPT      0x00000008L
#define SMFIP_NOBODY      0x00000010L
#define SMFIP_NOHDRS      0x00000020L
#define SMFIP_NOEOH       0x00000040L
#define SMFIP_NR_HDR      0x00000080L
#define SMFIP_NOHREPL     SMFIP_NR_HDR
#define SMFIP_NOUNKNOWN   0x00000100L
#define SMFIP_NODATA      0x00000200L
#define SMFIP_SKIP        0x00000400L
#define SMFIP_RCPT_REJ    0x00000800L
#define SMFIP_NR_CONN     0x00001000L
#define SMFIP_NR_HELO     0x00002000L
#define SMFIP_NR_MAIL     0x00004000L
#define SMFIP_NR_RCPT     0x00008000L
#define SMFIP_NR_DATA     0x00010000L
#define SMFIP_NR_UNKN     0x00020000L
#define SMFIP_NR_EOH      0x00040000L
#define SMFIP_NR_BODY     0x00080000L
#define SMFIP_HDR_LEADSPC 0x00100000L
#define SMFIP_MDS_256K    0x10000000L
#define SMFIP_MDS_1M      0x20000000L

/* Protocol step sets of the successive versions. */
#define SMFI_V1_PROT   0x0000003FL
#define SMFI_V2_PROT   0x0000007FL
#define SMFI_CURR_PROT 0x001FFFFFL
#define SMFI_INTERNAL  0x70000000L

#endif
