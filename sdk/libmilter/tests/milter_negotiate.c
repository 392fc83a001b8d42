/*
 * milter_negotiate.c - a libmilter milter that negotiates (xxfi_negotiate): it asks for
 * macros with smfi_setsymlist, declines HELO, observes connect and headers without
 * replying (SMFIP_NR_CONN, SMFIP_NR_HDR, SMFIS_NOREPLY), and answers unknown SMTP
 * commands. Written to libmilter's documented API only.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Usage: milter_negotiate -p CONNSPEC
 * End of message, by the sender ({mail_addr}, asked for with smfi_setsymlist): one
 * containing "tempfail" -> 451 4.3.2 (smfi_setreply), "discard" -> SMFIS_DISCARD,
 * "accept" -> SMFIS_ACCEPT; otherwise it adds
 * "X-Negotiate: headers=N mail_addr=... auth_type=...". An unknown command "XSTOP" makes it
 * call smfi_stop(); any other unknown command gets 550 5.5.1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libmilter/mfapi.h>

static int headers; /* only one test connection at a time uses it */

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                             unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                             unsigned long *pf2, unsigned long *pf3)
{
    unsigned long want = SMFIP_NR_CONN | SMFIP_NR_HDR | SMFIP_NOHELO;
    printf("NEGOTIATE f0=0x%lx f1=0x%lx f2=0x%lx f3=0x%lx\n", f0, f1, f2, f3);
    fflush(stdout);
    if ((f0 & (SMFIF_ADDHDRS | SMFIF_SETSYMLIST)) != (SMFIF_ADDHDRS | SMFIF_SETSYMLIST) ||
        (f1 & want) != want)
        return SMFIS_REJECT;
    if (smfi_setsymlist(ctx, SMFIM_ENVFROM, "{mail_addr} {auth_type}") != MI_SUCCESS)
        return SMFIS_REJECT;
    *pf0 = SMFIF_ADDHDRS | SMFIF_SETSYMLIST;
    *pf1 = want;
    *pf2 = *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
    (void)ctx, (void)sa;
    printf("CONNECT %s\n", host);
    fflush(stdout);
    return SMFIS_NOREPLY;
}

static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx;
    printf("HELO %s (not expected: SMFIP_NOHELO)\n", helo);
    fflush(stdout);
    return SMFIS_CONTINUE;
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    (void)ctx, (void)argv;
    headers = 0;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void)ctx, (void)name, (void)value;
    headers++;
    return SMFIS_NOREPLY;
}

static sfsistat on_eom(SMFICTX *ctx)
{
    /* macros of an earlier stage (MAIL) are still there at end of message */
    const char *from = smfi_getsymval(ctx, "{mail_addr}");
    const char *auth = smfi_getsymval(ctx, "{auth_type}");
    char v[400];
    if (from && strstr(from, "tempfail")) {
        smfi_setreply(ctx, "451", "4.3.2", "try again later, says milter_negotiate");
        return SMFIS_TEMPFAIL;
    }
    if (from && strstr(from, "discard"))
        return SMFIS_DISCARD;
    if (from && strstr(from, "accept"))
        return SMFIS_ACCEPT;
    snprintf(v, sizeof v, "headers=%d mail_addr=%s auth_type=%s", headers, from ? from : "(none)",
             auth ? auth : "(none)");
    return smfi_addheader(ctx, "X-Negotiate", v) == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}

static sfsistat on_unknown(SMFICTX *ctx, const char *cmd)
{
    printf("UNKNOWN %s\n", cmd);
    fflush(stdout);
    if (strncmp(cmd, "XSTOP", 5) == 0) {
        smfi_stop();
        return SMFIS_CONTINUE;
    }
    smfi_setreply(ctx, "550", "5.5.1", "unknown command refused by milter_negotiate");
    return SMFIS_REJECT;
}

static struct smfiDesc desc = {
    "milter_negotiate",
    SMFI_VERSION,
    SMFIF_ADDHDRS | SMFIF_SETSYMLIST,
    on_connect,
    on_helo,
    on_envfrom,
    NULL, /* envrcpt */
    on_header,
    NULL, /* eoh */
    NULL, /* body */
    on_eom,
    NULL, /* abort */
    NULL, /* close */
    on_unknown,
    NULL, /* data */
    on_negotiate,
};

int main(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "-p") != 0) {
        fprintf(stderr, "usage: %s -p CONNSPEC\n", argv[0]);
        return 2;
    }
    if (smfi_register(desc) == MI_FAILURE || smfi_setconn(argv[2]) == MI_FAILURE)
        return 1;
    int rc = smfi_main();
    printf("smfi_main returned %d\n", rc);
    fflush(stdout);
    return rc == MI_SUCCESS ? 0 : 1;
}
