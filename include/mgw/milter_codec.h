/*
 * milter_codec.h - pure, I/O-free encoder/decoder of milter protocol v6 frames.
 *
 * Both directions are covered: commands the MTA sends (O D C H M R T L N B E U A Q K) and
 * replies a milter sends (c a r t d s y p f 4 O l h i m b + 2 - e q), so the daemon, its
 * tests and the load generator share one implementation.
 *
 * Wire format: uint32 length (network order; counts the command byte plus data), one
 * command byte, data. The decoder is in the picohttpparser style: the caller hands it all
 * bytes received so far; it returns the number of bytes one complete frame used, or
 * MGW_PARTIAL when more are needed, or a negative MGW_E* code when the input can never
 * become valid. It keeps no sockets, clocks or logs. The length field is bounded before
 * anything else is looked at, so a hostile length is refused after 4 bytes.
 *
 * Decoded strings and byte ranges are views into the caller's buffer: they stay valid
 * until the caller drains or reallocates it. Every string view (struct mgw_str) points at
 * bytes that the decoder has checked to end with a NUL inside the frame, so ptr may be
 * used as a C string; len excludes the NUL.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_MILTER_CODEC_H
#define MGW_MILTER_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- Protocol constants (values checked against libmilter's mfdef.h) ---- */

#define MGW_MILTER_VERSION 6 /* highest protocol version we speak */
#define MGW_MILTER_MIN_VERSION 2
#define MGW_MILTER_HDR_LEN 4      /* the uint32 length prefix */
#define MGW_MILTER_OPTNEG_LEN 12  /* version, actions, protocol */
#define MGW_MILTER_CHUNK_MAX 65535 /* default body chunk / data size */
#define MGW_MILTER_MDS_256K 262143
#define MGW_MILTER_MDS_1M 1048575
/* Default cap on the length field: a 1 MiB body chunk plus command byte and slack. */
#define MGW_MILTER_DEFAULT_MAX_FRAME (1048576u + 5u)

/* Commands, MTA -> milter (SMFIC_*) */
enum {
    MGW_SMFIC_ABORT = 'A',
    MGW_SMFIC_BODY = 'B',
    MGW_SMFIC_CONNECT = 'C',
    MGW_SMFIC_MACRO = 'D',
    MGW_SMFIC_BODYEOB = 'E',
    MGW_SMFIC_HELO = 'H',
    MGW_SMFIC_QUIT_NC = 'K',
    MGW_SMFIC_HEADER = 'L',
    MGW_SMFIC_MAIL = 'M',
    MGW_SMFIC_EOH = 'N',
    MGW_SMFIC_OPTNEG = 'O',
    MGW_SMFIC_QUIT = 'Q',
    MGW_SMFIC_RCPT = 'R',
    MGW_SMFIC_DATA = 'T',
    MGW_SMFIC_UNKNOWN = 'U',
};

/* Replies, milter -> MTA (SMFIR_*) */
enum {
    MGW_SMFIR_ADDRCPT = '+',
    MGW_SMFIR_DELRCPT = '-',
    MGW_SMFIR_ADDRCPT_PAR = '2',
    MGW_SMFIR_SHUTDOWN = '4',
    MGW_SMFIR_ACCEPT = 'a',
    MGW_SMFIR_REPLBODY = 'b',
    MGW_SMFIR_CONTINUE = 'c',
    MGW_SMFIR_DISCARD = 'd',
    MGW_SMFIR_CHGFROM = 'e',
    MGW_SMFIR_CONN_FAIL = 'f',
    MGW_SMFIR_ADDHEADER = 'h',
    MGW_SMFIR_INSHEADER = 'i',
    MGW_SMFIR_SETSYMLIST = 'l',
    MGW_SMFIR_CHGHEADER = 'm',
    MGW_SMFIR_OPTNEG = 'O',
    MGW_SMFIR_PROGRESS = 'p',
    MGW_SMFIR_QUARANTINE = 'q',
    MGW_SMFIR_REJECT = 'r',
    MGW_SMFIR_SKIP = 's',
    MGW_SMFIR_TEMPFAIL = 't',
    MGW_SMFIR_REPLYCODE = 'y',
};

/* Protocol flags (SMFIP_*) */
#define MGW_SMFIP_NOCONNECT 0x00000001u
#define MGW_SMFIP_NOHELO 0x00000002u
#define MGW_SMFIP_NOMAIL 0x00000004u
#define MGW_SMFIP_NORCPT 0x00000008u
#define MGW_SMFIP_NOBODY 0x00000010u
#define MGW_SMFIP_NOHDRS 0x00000020u
#define MGW_SMFIP_NOEOH 0x00000040u
#define MGW_SMFIP_NR_HDR 0x00000080u
#define MGW_SMFIP_NOUNKNOWN 0x00000100u
#define MGW_SMFIP_NODATA 0x00000200u
#define MGW_SMFIP_SKIP 0x00000400u
#define MGW_SMFIP_RCPT_REJ 0x00000800u
#define MGW_SMFIP_NR_CONN 0x00001000u
#define MGW_SMFIP_NR_HELO 0x00002000u
#define MGW_SMFIP_NR_MAIL 0x00004000u
#define MGW_SMFIP_NR_RCPT 0x00008000u
#define MGW_SMFIP_NR_DATA 0x00010000u
#define MGW_SMFIP_NR_UNKN 0x00020000u
#define MGW_SMFIP_NR_EOH 0x00040000u
#define MGW_SMFIP_NR_BODY 0x00080000u
#define MGW_SMFIP_HDR_LEADSPC 0x00100000u
#define MGW_SMFIP_MDS_256K 0x10000000u
#define MGW_SMFIP_MDS_1M 0x20000000u
#define MGW_SMFI_V1_PROT 0x0000003Fu
#define MGW_SMFI_V2_PROT 0x0000007Fu
#define MGW_SMFI_CURR_PROT 0x001FFFFFu

/* Action flags (SMFIF_*) */
#define MGW_SMFIF_ADDHDRS 0x001u
#define MGW_SMFIF_CHGBODY 0x002u
#define MGW_SMFIF_ADDRCPT 0x004u
#define MGW_SMFIF_DELRCPT 0x008u
#define MGW_SMFIF_CHGHDRS 0x010u
#define MGW_SMFIF_QUARANTINE 0x020u
#define MGW_SMFIF_CHGFROM 0x040u
#define MGW_SMFIF_ADDRCPT_PAR 0x080u
#define MGW_SMFIF_SETSYMLIST 0x100u
#define MGW_SMFI_V1_ACTS 0x0Fu
#define MGW_SMFI_V2_ACTS 0x3Fu
#define MGW_SMFI_CURR_ACTS 0x1FFu

/* Macro stages (SMFIM_*), the index of per-stage macro lists. */
enum mgw_milter_stage {
    MGW_STAGE_CONNECT = 0,
    MGW_STAGE_HELO = 1,
    MGW_STAGE_ENVFROM = 2,
    MGW_STAGE_ENVRCPT = 3,
    MGW_STAGE_DATA = 4,
    MGW_STAGE_EOM = 5,
    MGW_STAGE_EOH = 6,
    MGW_STAGE_COUNT = 7,
};

/* Stage of the command letter carried by a 'D' packet (C H M R T E N), or -1. This and
 * the other per-letter facts below are lookups in the tables of milter_vocab.h. */
int mgw_milter_stage_of_cmd(uint8_t cmd);

/* ---- Decoded / encodable messages ---- */

/* A view of bytes; for strings, ptr[len] == '\0' (see above). ptr may be NULL if len 0. */
struct mgw_str {
    const char *ptr;
    size_t len;
};

/* A view of a sequence of NUL-terminated strings (MAIL/RCPT args, macro name/value
 * pairs). data/len cover the whole sequence including every NUL; count is the number of
 * strings. Walk it with mgw_milter_list_next(). */
struct mgw_strlist {
    const char *data;
    size_t len;
    size_t count;
};

/* Option negotiation, both directions. symlist[stage].ptr == NULL means "no list for
 * that stage"; lists are only sent in replies (SMFIF_SETSYMLIST). */
struct mgw_milter_optneg {
    uint32_t version;
    uint32_t actions;
    uint32_t protocol;
    struct mgw_str symlist[MGW_STAGE_COUNT];
};

/*
 * One milter frame. `cmd` says which union member is meaningful:
 *   O              optneg
 *   D              macro  (stage_cmd = the command letter; pairs = name,value,name,...)
 *   C              connect (family 'U','L','4','6'; port and address absent for 'U')
 *   H              helo
 *   M R            args   (args.count >= 1; first is the address, rest ESMTP args)
 *   L              header
 *   B E            body   (E may carry a final chunk or be empty)
 *   U              unknown
 *   T N A Q K      nothing
 *   c a r t d s p f 4   nothing
 *   y              text   ("550 5.7.1 text", lines joined by CRLF)
 *   l              symlist (stage, names) - legacy standalone SETSYMLIST
 *   h              header (index unused)
 *   i m            header (index used: insert position / 1-based occurrence)
 *   b              body
 *   + - q          text   (recipient / recipient / quarantine reason)
 *   2 e            rcpt   (addr + optional args; args.ptr == NULL when absent: Postfix
 *                          reads both as optional and libmilter omits NULL args)
 */
struct mgw_milter_msg {
    uint8_t cmd;
    union {
        struct mgw_milter_optneg optneg;
        struct {
            uint8_t stage_cmd;
            struct mgw_strlist pairs;
        } macro;
        struct {
            struct mgw_str hostname;
            uint8_t family;
            uint16_t port;
            struct mgw_str address;
        } connect;
        struct mgw_str helo;
        struct mgw_strlist args;
        struct {
            uint32_t index;
            struct mgw_str name;
            struct mgw_str value;
        } header;
        struct {
            const uint8_t *data;
            size_t len;
        } body;
        struct mgw_str unknown;
        struct mgw_str text;
        struct {
            uint32_t stage;
            struct mgw_str names;
        } symlist;
        struct {
            struct mgw_str addr;
            struct mgw_str args;
        } rcpt;
    } u;
};

/* Which side wrote the bytes being decoded. */
enum mgw_milter_dir {
    MGW_MILTER_FROM_MTA = 0, /* commands */
    MGW_MILTER_FROM_MILTER = 1, /* replies */
};

/* Decoder settings. A zero-filled struct is valid: direction FROM_MTA, max_frame default. */
struct mgw_milter_decoder {
    enum mgw_milter_dir dir;
    uint32_t max_frame; /* cap on the length field; 0 = MGW_MILTER_DEFAULT_MAX_FRAME */
};

/*
 * Decode one frame from buf[0..len).
 * Returns the bytes consumed (> 0) and fills *out; or MGW_PARTIAL (need more bytes;
 * *out untouched); or MGW_EFRAME_EMPTY, MGW_EFRAME_TOO_BIG, MGW_EUNKNOWN_CMD,
 * MGW_EMALFORMED. Errors are final for this stream: the caller should close it.
 * Commands without a payload (T N A Q K and the simple replies) ignore trailing bytes,
 * as libmilter does, and so does the MTA's O (only its 12 bytes are read). Every other
 * payload must have exactly its shape: a byte after the last field is MGW_EMALFORMED, as
 * is a reply O listing a stage twice or a stage >= MGW_STAGE_COUNT. The stage letter of
 * a D is not checked (see mgw_milter_stage_of_cmd()).
 */
ssize_t mgw_milter_decode(const struct mgw_milter_decoder *d, const uint8_t *buf, size_t len,
                          struct mgw_milter_msg *out);

/*
 * Iterate a string list: *pos starts at 0. Returns 1 and sets *out to the next string,
 * or 0 at the end. Never fails on a list produced by mgw_milter_decode(); in a hand-made
 * list, bytes after the last NUL are not returned.
 */
int mgw_milter_list_next(const struct mgw_strlist *l, size_t *pos, struct mgw_str *out);

/* Build a list view over caller memory ("a\0b\0"); count is computed. For encoding. */
struct mgw_strlist mgw_milter_list_make(const char *data, size_t len);

/*
 * Encode *m into buf[0..cap). Returns the number of bytes written, MGW_ENOSPACE if cap is
 * too small (nothing meaningful written), or MGW_EINVAL if m cannot be encoded (unknown
 * cmd, a string containing NUL where the wire needs one string, a list without final NUL).
 * mgw_milter_encoded_len() returns the exact size the frame needs (or MGW_EINVAL).
 */
ssize_t mgw_milter_encode(const struct mgw_milter_msg *m, uint8_t *buf, size_t cap);
ssize_t mgw_milter_encoded_len(const struct mgw_milter_msg *m);

/* The SMFIF_* action a modification reply needs (h and i: ADDHDRS, m: CHGHDRS,
 * b: CHGBODY, +: ADDRCPT, 2: ADDRCPT_PAR, -: DELRCPT, e: CHGFROM, q: QUARANTINE), or 0
 * for a reply that is not a modification. */
uint32_t mgw_milter_mod_action(uint8_t reply);

/* Printable name of a command/reply byte, e.g. "HELO", "REPLYCODE", "?" if unknown. */
const char *mgw_milter_cmd_name(uint8_t cmd, enum mgw_milter_dir dir);

#endif
