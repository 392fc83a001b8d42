/*
 * libmilter/mfapi.h - libmilter's API, served over gRPC by libmiltergw-milter.
 * SPDX-License-Identifier: Apache-2.0
 *
 * A milter written to Sendmail's libmilter API builds unchanged against this header and
 * `pkg-config --cflags --libs miltergw-milter`; it then serves miltergw.v1.Filter over gRPC
 * instead of speaking milter on a socket, and miltergw connects to it with
 * `--filter NAME=HOST:PORT`. Written for miltergw; names, types and values follow
 * libmilter's documented API (sendmail's libmilter/docs), checked against Debian's
 * libmilter-dev by sdk/libmilter/tests/test_mfapi_constants.c.
 *
 * What differs from libmilter is listed in sdk/libmilter/README.md; anything this
 * library cannot do makes smfi_register() or smfi_main() fail with a message on stderr.
 */
#ifndef _LIBMILTER_MFAPI_H
#define _LIBMILTER_MFAPI_H 1

#ifndef SMFI_VERSION
#if _FFR_MDS_NEGOTIATE
#define SMFI_VERSION     0x01000002
#define SMFI_VERSION_MDS 0x01000002
#else
#define SMFI_VERSION 0x01000001
#endif
#endif

#define SM_LM_VRS_MAJOR(v) (((v)&0x7f000000) >> 24)
#define SM_LM_VRS_MINOR(v) (((v)&0x007fff00) >> 8)
#define SM_LM_VRS_PLVL(v)  ((v)&0x0000007f)

#include <sys/types.h>
#include <sys/socket.h>

#include "libmilter/mfdef.h"

#define LIBMILTER_API extern

#ifdef __cplusplus
extern "C" {
#endif

#ifndef _SOCK_ADDR
#define _SOCK_ADDR struct sockaddr
#endif

/* Return values of the smfi_* functions. */
#define MI_SUCCESS 0
#define MI_FAILURE (-1)

/* One SMTP connection's context, passed to every callback. Opaque. */
typedef struct smfi_str SMFICTX;
typedef struct smfi_str *SMFICTX_PTR;

typedef struct smfiDesc smfiDesc_str;
typedef struct smfiDesc *smfiDesc_ptr;

/* A callback's answer: one of SMFIS_*. */
typedef int sfsistat;

/* Old sources spell prototypes with __P(); keep them compiling. */
#ifndef __P
#define __P(X) X
#endif
#ifndef SM__P
#define SM__P(X) X
#endif

#ifndef __cplusplus
#include <stdbool.h>
#endif

/* The filter: its name, the API version it was written for, its SMFIF_* flags, and its
 * callbacks (NULL: not interested). The order of the members is libmilter's. */
struct smfiDesc {
    char *xxfi_name;
    int xxfi_version; /* SMFI_VERSION */
    unsigned long xxfi_flags;

    sfsistat (*xxfi_connect)(SMFICTX *, char *hostname, _SOCK_ADDR *hostaddr);
    sfsistat (*xxfi_helo)(SMFICTX *, char *helohost);
    sfsistat (*xxfi_envfrom)(SMFICTX *, char **argv);
    sfsistat (*xxfi_envrcpt)(SMFICTX *, char **argv);
    sfsistat (*xxfi_header)(SMFICTX *, char *headerf, char *headerv);
    sfsistat (*xxfi_eoh)(SMFICTX *);
    sfsistat (*xxfi_body)(SMFICTX *, unsigned char *bodyp, size_t len);
    sfsistat (*xxfi_eom)(SMFICTX *);
    sfsistat (*xxfi_abort)(SMFICTX *);
    sfsistat (*xxfi_close)(SMFICTX *);
    sfsistat (*xxfi_unknown)(SMFICTX *, const char *cmd);
    sfsistat (*xxfi_data)(SMFICTX *);
    sfsistat (*xxfi_negotiate)(SMFICTX *, unsigned long f0, unsigned long f1, unsigned long f2,
                               unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                               unsigned long *pf2, unsigned long *pf3);
};

/* Flags: the modifications the filter may make (smfiDesc.xxfi_flags). */
#define SMFIF_NONE        0x00000000L
#define SMFIF_ADDHDRS     0x00000001L
#define SMFIF_CHGBODY     0x00000002L
#define SMFIF_MODBODY     SMFIF_CHGBODY
#define SMFIF_ADDRCPT     0x00000004L
#define SMFIF_DELRCPT     0x00000008L
#define SMFIF_CHGHDRS     0x00000010L
#define SMFIF_QUARANTINE  0x00000020L
#define SMFIF_CHGFROM     0x00000040L
#define SMFIF_ADDRCPT_PAR 0x00000080L
#define SMFIF_SETSYMLIST  0x00000100L

/* Macro stages, for smfi_setsymlist(). */
#define SMFIM_NOMACROS (-1)
#define SMFIM_FIRST    0
#define SMFIM_CONNECT  0
#define SMFIM_HELO     1
#define SMFIM_ENVFROM  2
#define SMFIM_ENVRCPT  3
#define SMFIM_DATA     4
#define SMFIM_EOM      5
#define SMFIM_EOH      6
#define SMFIM_LAST     6

/* Callback answers. */
#define SMFIS_CONTINUE 0
#define SMFIS_REJECT   1
#define SMFIS_DISCARD  2
#define SMFIS_ACCEPT   3
#define SMFIS_TEMPFAIL 4
#define SMFIS_NOREPLY  7
#define SMFIS_SKIP     8
#define SMFIS_ALL_OPTS 10

/* Set-up and running (call from main). */
LIBMILTER_API int smfi_register(struct smfiDesc);
LIBMILTER_API int smfi_setconn(char *);
LIBMILTER_API int smfi_opensocket(bool);
LIBMILTER_API int smfi_main(void);
LIBMILTER_API int smfi_stop(void);
LIBMILTER_API int smfi_settimeout(int);
LIBMILTER_API int smfi_setbacklog(int);
LIBMILTER_API int smfi_setdbg(int);
LIBMILTER_API size_t smfi_setmaxdatasize(size_t);
LIBMILTER_API int smfi_version(unsigned int *, unsigned int *, unsigned int *);

/* Inside callbacks. */
LIBMILTER_API char *smfi_getsymval(SMFICTX *, char *);
LIBMILTER_API int smfi_setreply(SMFICTX *, char *, char *, char *);
LIBMILTER_API int smfi_setmlreply(SMFICTX *, const char *, const char *, ...);
LIBMILTER_API int smfi_setpriv(SMFICTX *, void *);
LIBMILTER_API void *smfi_getpriv(SMFICTX *);
LIBMILTER_API int smfi_setsymlist(SMFICTX *, int, char *);

/* Modifications: only inside xxfi_eom, each needing its SMFIF_* flag. */
LIBMILTER_API int smfi_addheader(SMFICTX *, char *, char *);
LIBMILTER_API int smfi_chgheader(SMFICTX *, char *, int, char *);
LIBMILTER_API int smfi_insheader(SMFICTX *, int, char *, char *);
LIBMILTER_API int smfi_chgfrom(SMFICTX *, char *, char *);
LIBMILTER_API int smfi_addrcpt(SMFICTX *, char *);
LIBMILTER_API int smfi_addrcpt_par(SMFICTX *, char *, char *);
LIBMILTER_API int smfi_delrcpt(SMFICTX *, char *);
LIBMILTER_API int smfi_progress(SMFICTX *);
LIBMILTER_API int smfi_replacebody(SMFICTX *, unsigned char *, int);
LIBMILTER_API int smfi_quarantine(SMFICTX *ctx, char *reason);

#ifdef __cplusplus
}
#endif

#endif
