/*
 * milter_basic.c - a small libmilter milter: adds a header at end of message and refuses
 * recipients with a custom reply. Written to libmilter's documented API only, so that it
 * builds against Sendmail's libmilter (-lmilter) and against libmiltergw-milter unchanged.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Usage: milter_basic -p CONNSPEC
 * Recipients containing "refuse" get 550 5.7.1 (smfi_setreply), containing "later" a
 * two-line 451 4.7.1 (smfi_setmlreply). Every delivered message gets
 * "X-Milter-Basic: headers=N subject=<Subject>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

struct priv {
    int headers;
    char subject[200];
};

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    struct priv *p = smfi_getpriv(ctx);
    (void)argv;
    if (p == NULL) {
        p = calloc(1, sizeof *p);
        if (p == NULL || smfi_setpriv(ctx, p) != MI_SUCCESS)
            return SMFIS_TEMPFAIL;
    }
    memset(p, 0, sizeof *p);
    return SMFIS_CONTINUE;
}

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
    if (strstr(argv[0], "refuse")) {
        if (smfi_setreply(ctx, "550", "5.7.1", "recipient refused by milter_basic") != MI_SUCCESS)
            return SMFIS_TEMPFAIL;
        return SMFIS_REJECT;
    }
    if (strstr(argv[0], "later")) {
        if (smfi_setmlreply(ctx, "451", "4.7.1", "not now,", "try again later", NULL) != MI_SUCCESS)
            return SMFIS_REJECT;
        return SMFIS_TEMPFAIL;
    }
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    struct priv *p = smfi_getpriv(ctx);
    p->headers++;
    if (strcasecmp(name, "Subject") == 0)
        snprintf(p->subject, sizeof p->subject, "%s", value);
    return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
    struct priv *p = smfi_getpriv(ctx);
    char v[300];
    snprintf(v, sizeof v, "headers=%d subject=<%s>", p->headers, p->subject);
    if (smfi_addheader(ctx, "X-Milter-Basic", v) != MI_SUCCESS)
        return SMFIS_TEMPFAIL;
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx)
{
    free(smfi_getpriv(ctx));
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "milter_basic", /* name */
    SMFI_VERSION,   /* version */
    SMFIF_ADDHDRS,  /* flags */
    NULL,           /* connect */
    NULL,           /* helo */
    on_envfrom,     /* envfrom */
    on_envrcpt,     /* envrcpt */
    on_header,      /* header */
    NULL,           /* eoh */
    NULL,           /* body */
    on_eom,         /* eom */
    NULL,           /* abort */
    on_close,       /* close */
    NULL,           /* unknown */
    NULL,           /* data */
    NULL,           /* negotiate */
};

int main(int argc, char **argv)
{
    const char *conn = NULL;
    int c;
    while ((c = getopt(argc, argv, "p:")) != -1)
        if (c == 'p')
            conn = optarg;
    if (conn == NULL) {
        fprintf(stderr, "usage: %s -p CONNSPEC\n", argv[0]);
        return 2;
    }
    if (smfi_setconn((char *)conn) == MI_FAILURE || smfi_register(desc) == MI_FAILURE ||
        smfi_settimeout(600) == MI_FAILURE || smfi_setbacklog(64) == MI_FAILURE ||
        smfi_setdbg(0) == MI_FAILURE || smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "milter_basic: set-up failed\n");
        return 1;
    }
    printf("milter_basic: ready\n");
    fflush(stdout);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
