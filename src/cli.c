/*
 * cli.c - command-line flags into a configuration (see cli.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgw/error.h"
#include "mgw/listener.h"
#include "mgw/milter_codec.h"
#include "mgw/session.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: miltergw [-c FILE] [options]\n"
            "  -c, --config FILE         YAML configuration (see miltergw.example.yaml);\n"
            "                            flags below override its values\n"
            "      --check-config        check the configuration, print a summary, exit 0 or 2\n"
            "  -l, --listen SPEC         milter socket (repeatable; replaces the file's list):\n"
            "                            inet:HOST:PORT, inet:PORT@HOST, inet6:[ADDR]:PORT,\n"
            "                            unix:PATH\n"
            "  -f, --filter NAME=TARGET[,kind=grpc|milter][,phase=N]\n"
            "               [,on_error=tempfail|accept|reject][,timeout=DUR]\n"
            "               [,eom_timeout=DUR][,mode=shadow][,content=strict]\n"
            "               [,max_queue=SIZE][,max_message=SIZE]\n"
            "                            filter (repeatable, order = merge order; replaces the\n"
            "                            file's filters): a gRPC filter service, TARGET\n"
            "                            HOST:PORT, dns:///HOST:PORT, ipv4:..., unix:PATH; or\n"
            "                            with kind=milter an existing milter, TARGET\n"
            "                            inet:HOST:PORT, inet6:[ADDR]:PORT, unix:PATH. Phases\n"
            "                            run in order, filters of one phase in parallel\n"
            "                            (default phase 0). DUR: 500ms,\n"
            "                            10s, 1m (defaults: timeout 10s, eom_timeout 60s).\n"
            "                            SIZE: 65536, 4MiB, 1GiB (defaults: max_queue 4MiB,\n"
            "                            at least --max-frame + 1KiB; max_message 64MiB)\n"
            "      --http HOST:PORT      serve /metrics, /healthz, /readyz (default: none)\n"
            "      --ready-requires WHAT /readyz needs any (default), all or none of the\n"
            "                            filter channels READY\n"
            "      --unix-mode MODE      permissions of unix sockets, octal (default 0660)\n"
            "      --max-connections N   concurrent MTA connections (default %u, 0 = no limit)\n"
            "      --max-frame BYTES     largest milter frame accepted (default %u)\n"
            "      --idle-timeout DUR    close an MTA connection silent this long between messages\n"
            "                            (default 7210s; never inside a message)\n"
            "      --phase-memory SIZE   with filters in several phases, message body kept in\n"
            "                            memory for the later ones; the rest goes to a\n"
            "                            temporary file (default 1MiB)\n"
            "      --drain-timeout DUR   on SIGTERM, how long messages in progress may take\n"
            "                            to finish (default 30s)\n"
            "      --workers N           event loops running MTA sessions (default 0: one per\n"
            "                            CPU core)\n"
            "      --log-level LEVEL     error, warn, info (default) or debug\n"
            "      --log-format FORMAT   logfmt (default) or json\n"
            "  -V, --version             print the version and exit\n"
            "  -h, --help                print this help and exit\n"
            "Without filters miltergw is a null milter: it continues every event and accepts\n"
            "every message. SIGHUP reloads the configuration; SIGTERM drains and exits.\n",
            MGW_DEFAULT_MAX_CONNECTIONS, MGW_MILTER_DEFAULT_MAX_FRAME);
}

static void die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "miltergw: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(2);
}

/* Flags that set one configuration key, validated later exactly as the file's value. */
static const struct {
    const char *flag;
    const char *key;
} set_flags[] = {
    {"http", "http.listen"},
    {"ready-requires", "http.ready"},
    {"unix-mode", "unix_socket.mode"},
    {"max-connections", "limits.max_connections"},
    {"max-frame", "limits.max_frame"},
    {"idle-timeout", "limits.idle_timeout"},
    {"phase-memory", "limits.phase_memory"},
    {"drain-timeout", "drain_timeout"},
    {"workers", "workers"},
    {"log-level", "log.level"},
    {"log-format", "log.format"},
};
#define NSET (sizeof set_flags / sizeof set_flags[0])

void mgw_cli_parse(int argc, char **argv, struct mgw_cli *cli)
{
    enum { OPT_CHECK = 256, OPT_SET = 512 };
    struct option longopts[NSET + 8];
    char err[512];
    size_t n = 0;
    int c;

    memset(cli, 0, sizeof *cli);
    longopts[n++] = (struct option){"config", required_argument, NULL, 'c'};
    longopts[n++] = (struct option){"check-config", no_argument, NULL, OPT_CHECK};
    longopts[n++] = (struct option){"listen", required_argument, NULL, 'l'};
    longopts[n++] = (struct option){"filter", required_argument, NULL, 'f'};
    longopts[n++] = (struct option){"version", no_argument, NULL, 'V'};
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    for (size_t i = 0; i < NSET; i++)
        longopts[n++] = (struct option){set_flags[i].flag, required_argument, NULL,
                                        OPT_SET + (int)i};
    longopts[n] = (struct option){NULL, 0, NULL, 0};

    while ((c = getopt_long(argc, argv, "c:l:f:Vh", longopts, NULL)) != -1) {
        if (c >= OPT_SET) {
            if (cli->nsets == MGW_CLI_MAX_SETS)
                die("too many options%s%s", "", "");
            cli->sets[cli->nsets].key = set_flags[c - OPT_SET].key;
            cli->sets[cli->nsets++].value = optarg;
            continue;
        }
        switch (c) {
        case 'c': cli->config_path = optarg; break;
        case OPT_CHECK: cli->check_config = true; break;
        case 'l':
            if (cli->nlisten == MGW_CLI_MAX_LISTEN)
                die("at most 64 --listen%s%s", "", "");
            cli->listen[cli->nlisten++] = optarg;
            break;
        case 'f':
            if (cli->nfilters == MGW_CLI_MAX_FILTERS)
                die("at most 64 --filter%s%s", "", "");
            if (mgw_filter_conf_parse(optarg, &cli->filters[cli->nfilters], err, sizeof err) < 0)
                die("%s%s", err, "");
            cli->nfilters++;
            break;
        case 'V': printf("miltergw %s\n", MGW_VERSION); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        die("unexpected argument \"%s\"%s", argv[optind], "");
}

int mgw_cli_config(const struct mgw_cli *cli, struct mgw_config **out, char *err, size_t errlen)
{
    struct mgw_config *c;
    char why[400];
    int r;

    *out = NULL;
    if (cli->config_path != NULL) {
        r = mgw_config_load(cli->config_path, &c, err, errlen);
        if (r < 0)
            return r;
    } else {
        c = mgw_config_new_default();
    }
    for (size_t i = 0; i < cli->nsets; i++) {
        if (mgw_config_set(c, cli->sets[i].key, cli->sets[i].value, why, sizeof why) < 0) {
            snprintf(err, errlen, "command line: %s", why);
            mgw_config_free(c);
            return MGW_EINVAL;
        }
    }
    if (cli->nlisten > 0)
        mgw_config_set_listen(c, cli->listen, cli->nlisten);
    if (cli->nfilters > 0)
        mgw_config_set_filters(c, cli->filters, cli->nfilters);
    if (mgw_config_validate(c, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s%s%s", cli->config_path ? cli->config_path : "command line",
                 cli->config_path ? " (with command-line overrides): " : ": ", why);
        mgw_config_free(c);
        return MGW_EINVAL;
    }
    *out = c;
    return 0;
}

void mgw_cli_clear(struct mgw_cli *cli)
{
    for (size_t i = 0; i < cli->nfilters; i++)
        mgw_filter_conf_clear(&cli->filters[i]);
    cli->nfilters = 0;
}
