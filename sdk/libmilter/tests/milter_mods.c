/*
 * milter_mods.c - a libmilter milter that uses every callback of a message and every
 * modification call, written to libmilter's documented API only (it builds against
 * Sendmail's libmilter and against libmiltergw-milter unchanged).
 * SPDX-License-Identifier: Apache-2.0
 *
 * Usage: milter_mods -p CONNSPEC
 * Per connection it keeps its state with smfi_setpriv/smfi_getpriv and prints one line per
 * callback on stdout ("CONNECT host=... family=inet addr=...", "ABORT", "CLOSE msgs=N").
 * At end of message it works 0.7 s, calling smfi_progress every 0.35 s, then:
 *  - adds X-Mods-Info (what the earlier callbacks saw), X-Mods-Macros (smfi_getsymval of
 *    macros of the current and earlier stages), X-Mods-Checks (calls that must fail);
 *  - inserts X-Mods-Inserted at index 1, changes Subject, deletes X-Remove-Me;
 *  - changes the sender to <changed@example.net>, adds <added@example.net> and, with
 *    ESMTP args, <addedpar@example.net>, deletes <gone@example.com>;
 *  - replaces the body in two pieces;
 *  - quarantines if the Subject contains "quarantine".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libmilter/mfapi.h>

struct conn {
    char host[128], addr[64], family[8], helo[128];
    int msgs;
    /* per message */
    char from[256], rcpts[512], subject[256];
    int nargs, headers, eoh, data, chunks;
    size_t bodylen;
    int outside_eom; /* smfi_addheader outside xxfi_eom: must fail */
};

static void say(const char *fmt, const char *a, const char *b, const char *c)
{
    printf(fmt, a, b, c);
    putchar('\n');
    fflush(stdout);
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return SMFIS_TEMPFAIL;
    snprintf(c->host, sizeof c->host, "%s", host);
    strcpy(c->family, "none");
    if (sa && sa->sa_family == AF_INET) {
        strcpy(c->family, "inet");
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, c->addr, sizeof c->addr);
    } else if (sa && sa->sa_family == AF_INET6) {
        strcpy(c->family, "inet6");
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, c->addr, sizeof c->addr);
    }
    if (smfi_setpriv(ctx, c) != MI_SUCCESS)
        return SMFIS_TEMPFAIL;
    say("CONNECT host=%s family=%s addr=%s", c->host, c->family, c->addr);
    return SMFIS_CONTINUE;
}

static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    struct conn *c = smfi_getpriv(ctx);
    snprintf(c->helo, sizeof c->helo, "%s", helo);
    return SMFIS_CONTINUE;
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv)
{
    struct conn *c = smfi_getpriv(ctx);
    c->msgs++;
    snprintf(c->from, sizeof c->from, "%s", argv[0]);
    c->rcpts[0] = c->subject[0] = '\0';
    c->nargs = c->headers = c->eoh = c->data = c->chunks = 0;
    c->bodylen = 0;
    for (char **a = argv + 1; *a; a++)
        c->nargs++;
    return SMFIS_CONTINUE;
}

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv)
{
    struct conn *c = smfi_getpriv(ctx);
    size_t n = strlen(c->rcpts);
    snprintf(c->rcpts + n, sizeof c->rcpts - n, "%s%s", n ? "," : "", argv[0]);
    return SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    c->data++;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    struct conn *c = smfi_getpriv(ctx);
    c->headers++;
    if (strcasecmp(name, "Subject") == 0)
        snprintf(c->subject, sizeof c->subject, "%s", value);
    c->outside_eom = smfi_addheader(ctx, "X-Too-Early", "x") == MI_FAILURE ? 1 : -1;
    return SMFIS_CONTINUE;
}

static sfsistat on_eoh(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    c->eoh++;
    return SMFIS_CONTINUE;
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    struct conn *c = smfi_getpriv(ctx);
    (void)chunk;
    c->chunks++;
    c->bodylen += len;
    return SMFIS_CONTINUE;
}

static const char *sym(SMFICTX *ctx, const char *name)
{
    const char *v = smfi_getsymval(ctx, (char *)name);
    return v ? v : "(none)";
}

static sfsistat on_eom(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    char v[1500];
    int ok = 1;

    for (int i = 0; i < 2; i++) { /* "long work", kept alive by progress reports */
        ok &= smfi_progress(ctx) == MI_SUCCESS;
        usleep(350 * 1000);
    }

    snprintf(v, sizeof v,
             "msg=%d host=%s family=%s addr=%s helo=%s from=%s nargs=%d rcpts=%s headers=%d "
             "eoh=%d data=%d bodylen=%zu",
             c->msgs, c->host, c->family, c->addr, c->helo, c->from, c->nargs, c->rcpts, c->headers,
             c->eoh, c->data, c->bodylen);
    ok &= smfi_addheader(ctx, "X-Mods-Info", v) == MI_SUCCESS;
    snprintf(v, sizeof v, "i=%s j=%s mail_addr=%s rcpt_addr=%s daemon_name=%s", sym(ctx, "i"),
             sym(ctx, "{j}"), sym(ctx, "{mail_addr}"), sym(ctx, "rcpt_addr"),
             sym(ctx, "{daemon_name}"));
    ok &= smfi_addheader(ctx, "X-Mods-Macros", v) == MI_SUCCESS;
    snprintf(v, sizeof v, "outside_eom=%s bad_code=%s negative_index=%s",
             c->outside_eom == 1 ? "refused" : "ACCEPTED",
             smfi_setreply(ctx, "250", NULL, "no") == MI_FAILURE ? "refused" : "ACCEPTED",
             smfi_chgheader(ctx, "Subject", -1, "x") == MI_FAILURE ? "refused" : "ACCEPTED");
    ok &= smfi_addheader(ctx, "X-Mods-Checks", v) == MI_SUCCESS;

    ok &= smfi_insheader(ctx, 1, "X-Mods-Inserted", "at index 1") == MI_SUCCESS;
    ok &= smfi_chgheader(ctx, "Subject", 1, "changed by milter_mods") == MI_SUCCESS;
    ok &= smfi_chgheader(ctx, "X-Remove-Me", 1, NULL) == MI_SUCCESS;
    ok &= smfi_chgfrom(ctx, "<changed@example.net>", NULL) == MI_SUCCESS;
    ok &= smfi_addrcpt(ctx, "<added@example.net>") == MI_SUCCESS;
    ok &= smfi_addrcpt_par(ctx, "<addedpar@example.net>", "NOTIFY=NEVER") == MI_SUCCESS;
    ok &= smfi_delrcpt(ctx, "<gone@example.com>") == MI_SUCCESS;
    ok &= smfi_replacebody(ctx, (unsigned char *)"Replaced body,\r\n", 16) == MI_SUCCESS;
    ok &= smfi_replacebody(ctx, (unsigned char *)"in two pieces.\r\n", 16) == MI_SUCCESS;
    if (strstr(c->subject, "quarantine"))
        ok &= smfi_quarantine(ctx, "held by milter_mods") == MI_SUCCESS;
    say("EOM msg=%s ok=%s%s", c->msgs == 1 ? "1" : "2+", ok ? "1" : "0", "");
    return ok ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}

static sfsistat on_abort(SMFICTX *ctx)
{
    (void)ctx;
    say("ABORT%s%s%s", "", "", "");
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx)
{
    struct conn *c = smfi_getpriv(ctx);
    char n[16];
    snprintf(n, sizeof n, "%d", c ? c->msgs : -1);
    say("CLOSE msgs=%s%s%s", n, "", "");
    free(c);
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static struct smfiDesc desc = {
    "milter_mods",
    SMFI_VERSION,
    SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_ADDRCPT_PAR |
        SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM,
    on_connect,
    on_helo,
    on_envfrom,
    on_envrcpt,
    on_header,
    on_eoh,
    on_body,
    on_eom,
    on_abort,
    on_close,
    NULL, /* unknown */
    on_data,
    NULL, /* negotiate */
};

int main(int argc, char **argv)
{
    unsigned int major, minor, patch;
    if (argc != 3 || strcmp(argv[1], "-p") != 0) {
        fprintf(stderr, "usage: %s -p CONNSPEC\n", argv[0]);
        return 2;
    }
    smfi_version(&major, &minor, &patch);
    printf("milter_mods: libmilter API %u.%u.%u\n", major, minor, patch);
    fflush(stdout);
    if (smfi_register(desc) == MI_FAILURE || smfi_setconn(argv[2]) == MI_FAILURE)
        return 1;
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
