/*
 * libmilter_null.c - a null milter on Sendmail's libmilter: the reference point of the
 * benchmarks (tools/bench.sh, docs/benchmarks.md).
 *
 * Every callback is registered and returns SMFIS_CONTINUE; end of message returns
 * SMFIS_ACCEPT. Having a callback for every event means libmilter negotiates no NO* or
 * NR* bit, so the MTA sends every event and waits for every reply, like miltergw with a
 * filter that declares every event. It asks for no actions and modifies nothing.
 * libmilter runs one thread per connection; SIGTERM/SIGINT stop it (smfi_main's own
 * signal thread).
 *
 * Usage: libmilter_null [-b BACKLOG] SOCKET    (SOCKET: inet:PORT@HOST or unix:PATH)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *sa)
{
    (void)ctx, (void)host, (void)sa;
    return SMFIS_CONTINUE;
}

static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx, (void)helo;
    return SMFIS_CONTINUE;
}

static sfsistat on_envelope(SMFICTX *ctx, char **argv) /* MAIL and RCPT */
{
    (void)ctx, (void)argv;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void)ctx, (void)name, (void)value;
    return SMFIS_CONTINUE;
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    (void)ctx, (void)chunk, (void)len;
    return SMFIS_CONTINUE;
}

static sfsistat on_unknown(SMFICTX *ctx, const char *cmd)
{
    (void)ctx, (void)cmd;
    return SMFIS_CONTINUE;
}

static sfsistat on_step(SMFICTX *ctx) /* DATA, EOH, ABORT, CLOSE */
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_eom(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_ACCEPT;
}

static void usage(void)
{
    fputs("usage: libmilter_null [-b BACKLOG] SOCKET   (inet:PORT@HOST or unix:PATH)\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    struct smfiDesc desc;
    int backlog = 4096;
    int c;

    while ((c = getopt(argc, argv, "b:h")) != -1) {
        switch (c) {
        case 'b': backlog = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind + 1 != argc || backlog <= 0)
        usage();

    memset(&desc, 0, sizeof desc);
    desc.xxfi_name = "libmilter_null";
    desc.xxfi_version = SMFI_VERSION;
    desc.xxfi_flags = 0; /* no modifications */
    desc.xxfi_connect = on_connect;
    desc.xxfi_helo = on_helo;
    desc.xxfi_envfrom = on_envelope;
    desc.xxfi_envrcpt = on_envelope;
    desc.xxfi_header = on_header;
    desc.xxfi_eoh = on_step;
    desc.xxfi_body = on_body;
    desc.xxfi_eom = on_eom;
    desc.xxfi_abort = on_step;
    desc.xxfi_close = on_step;
    desc.xxfi_unknown = on_unknown;
    desc.xxfi_data = on_step;

    if (smfi_setconn(argv[optind]) == MI_FAILURE || smfi_setbacklog(backlog) == MI_FAILURE) {
        fprintf(stderr, "libmilter_null: bad socket \"%s\"\n", argv[optind]);
        return 1;
    }
    if (smfi_register(desc) == MI_FAILURE) {
        fputs("libmilter_null: smfi_register failed\n", stderr);
        return 1;
    }
    /* Open (and bind) now so a busy port is reported before "listening". */
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "libmilter_null: cannot listen on %s\n", argv[optind]);
        return 1;
    }
    fprintf(stderr, "libmilter_null: listening on %s\n", argv[optind]);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
