/*
 * frames.h - milter modification frames as table initializers (struct mgw_milter_msg),
 * for the table-driven tests of the modules that take them (policy, msg_edit).
 * Include after "mgw/milter_codec.h".
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_TEST_FRAMES_H
#define MGW_TEST_FRAMES_H

/* A string view initializer over a literal. */
#define S(lit)                                                                                     \
    {                                                                                              \
        (lit), sizeof(lit) - 1                                                                     \
    }

/* Modification frames, as table initializers. */
#define ADDH(n, v)                                                                                 \
    {                                                                                              \
        .cmd = 'h', .u.header = { 0, S(n), S(v) }                                                  \
    }
#define INSH(i, n, v)                                                                              \
    {                                                                                              \
        .cmd = 'i', .u.header = {(i), S(n), S(v) }                                                 \
    }
#define CHGH(i, n, v)                                                                              \
    {                                                                                              \
        .cmd = 'm', .u.header = {(i), S(n), S(v) }                                                 \
    }
#define BODY(lit)                                                                                  \
    {                                                                                              \
        .cmd = 'b', .u.body = {(const uint8_t *)(lit), sizeof(lit) - 1 }                           \
    }
#define ADDR(a)                                                                                    \
    {                                                                                              \
        .cmd = '+', .u.text = S(a)                                                                 \
    }
#define ADDRP(a, args)                                                                             \
    {                                                                                              \
        .cmd = '2', .u.rcpt = { S(a), S(args) }                                                    \
    }
#define ADDRP0(a)                                                                                  \
    {                                                                                              \
        .cmd = '2', .u.rcpt = { S(a), {NULL, 0} }                                                  \
    }
#define DELR(a)                                                                                    \
    {                                                                                              \
        .cmd = '-', .u.text = S(a)                                                                 \
    }
#define CHGF(a)                                                                                    \
    {                                                                                              \
        .cmd = 'e', .u.rcpt = { S(a), {NULL, 0} }                                                  \
    }
#define CHGFA(a, args)                                                                             \
    {                                                                                              \
        .cmd = 'e', .u.rcpt = { S(a), S(args) }                                                    \
    }
#define QUAR(r)                                                                                    \
    {                                                                                              \
        .cmd = 'q', .u.text = S(r)                                                                 \
    }
#define NOTMOD                                                                                     \
    {                                                                                              \
        .cmd = 'c'                                                                                 \
    }

#endif
