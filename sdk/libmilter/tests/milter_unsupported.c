/*
 * milter_unsupported.c - libmilter programs that libmiltergw-milter must refuse at start,
 * loudly: MODE "flags" registers an xxfi_flags bit that does not exist, "mds" negotiates
 * SMFIP_MDS_1M (larger milter packets, which have no meaning over gRPC and are not
 * offered), "conn" gives smfi_setconn a spec it cannot parse, "symlist" calls
 * smfi_setsymlist without SMFIF_SETSYMLIST. Each exits 3 where the call failed.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Usage: milter_unsupported MODE CONNSPEC
 */
#include <stdio.h>
#include <string.h>

#include <libmilter/mfapi.h>

#ifndef SMFIP_MDS_1M
#define SMFIP_MDS_1M 0x20000000L
#endif

static sfsistat on_eom(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat negotiate_mds(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                              unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                              unsigned long *pf2, unsigned long *pf3)
{
    (void)ctx, (void)f1, (void)f2, (void)f3;
    *pf0 = f0 & SMFIF_ADDHDRS;
    *pf1 = SMFIP_MDS_1M; /* asked for even though not offered */
    *pf2 = *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat negotiate_symlist(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                                  unsigned long f2, unsigned long f3, unsigned long *pf0,
                                  unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
    (void)f0, (void)f1, (void)f2, (void)f3;
    smfi_setsymlist(ctx, SMFIM_CONNECT, "j");
    *pf0 = SMFIF_ADDHDRS; /* but not SMFIF_SETSYMLIST */
    *pf1 = *pf2 = *pf3 = 0;
    return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
    struct smfiDesc d;
    if (argc != 3) {
        fprintf(stderr, "usage: %s flags|mds|conn|symlist CONNSPEC\n", argv[0]);
        return 2;
    }
    memset(&d, 0, sizeof d);
    d.xxfi_name = "milter_unsupported";
    d.xxfi_version = SMFI_VERSION;
    d.xxfi_flags = SMFIF_ADDHDRS;
    d.xxfi_eom = on_eom;
    if (strcmp(argv[1], "flags") == 0)
        d.xxfi_flags |= 0x00010000L;
    else if (strcmp(argv[1], "mds") == 0)
        d.xxfi_negotiate = negotiate_mds;
    else if (strcmp(argv[1], "symlist") == 0)
        d.xxfi_negotiate = negotiate_symlist;
    if (smfi_register(d) == MI_FAILURE) {
        puts("smfi_register failed");
        return 3;
    }
    if (smfi_setconn(strcmp(argv[1], "conn") == 0 ? "inet:notaport@127.0.0.1" : argv[2]) ==
        MI_FAILURE) {
        puts("smfi_setconn failed");
        return 3;
    }
    if (smfi_main() == MI_FAILURE) {
        puts("smfi_main failed");
        return 3;
    }
    puts("smfi_main returned MI_SUCCESS");
    return 0;
}
