/*
 * error.c - names of the MGW_* error codes.
 *
 * The names are part of the log format (reason=<name>), so they are stable snake_case
 * strings and never change once released. Unknown codes map to "unknown_error" rather than
 * NULL so callers can pass any int straight into a format string.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/error.h"

const char *mgw_strerror(int code)
{
    switch (code) {
    case MGW_OK: return "ok";
    case MGW_PARTIAL: return "partial";
    case MGW_EPROTO: return "protocol_error";
    case MGW_EFRAME_EMPTY: return "frame_empty";
    case MGW_EFRAME_TOO_BIG: return "frame_too_big";
    case MGW_EUNKNOWN_CMD: return "unknown_command";
    case MGW_EMALFORMED: return "malformed";
    case MGW_ENOSPACE: return "no_space";
    case MGW_EINVAL: return "invalid";
    case MGW_EORDER: return "out_of_order";
    case MGW_ETIMEOUT: return "timeout";
    case MGW_EIO: return "io_error";
    case MGW_EUNAVAIL: return "unavailable";
    default: return "unknown_error";
    }
}
