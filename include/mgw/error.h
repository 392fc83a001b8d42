/*
 * error.h - error codes shared by every miltergw module.
 *
 * Fallible functions return 0 (or a positive count) on success and one of the negative
 * MGW_E* codes below on failure. mgw_strerror() gives a short, stable, log-friendly name.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_ERROR_H
#define MGW_ERROR_H

enum {
    MGW_OK = 0,
    MGW_PARTIAL = -1,        /* decoder: the frame is not complete yet; feed more bytes */
    MGW_EPROTO = -2,         /* generic protocol violation */
    MGW_EFRAME_EMPTY = -3,   /* frame length field is 0 (no command byte) */
    MGW_EFRAME_TOO_BIG = -4, /* frame length field exceeds the configured maximum */
    MGW_EUNKNOWN_CMD = -5,   /* command/reply byte not valid in this direction */
    MGW_EMALFORMED = -6,     /* payload does not have the shape its command requires */
    MGW_ENOSPACE = -7,       /* encoder: output buffer too small */
    MGW_EINVAL = -8,         /* caller passed something that cannot be encoded */
    MGW_EORDER = -9,         /* command not allowed in the current session state */
    MGW_ETIMEOUT = -10,      /* a deadline passed */
    MGW_EIO = -11,           /* socket or system error */
    MGW_EUNAVAIL = -12,      /* a peer (filter) cannot be reached */
};

/* Short snake_case name of an MGW_* code, e.g. "frame_too_big"; never NULL. */
const char *mgw_strerror(int code);

#endif
