/* tag_milter.c - an ordinary libmilter milter: refuses senders at spam.example and tags
 * every other message with the queue id. The worked example of docs/filter-guide.md.
 * SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>
#include <string.h>

#include <libmilter/mfapi.h>

static sfsistat tag_envfrom(SMFICTX *ctx, char **argv)
{
    if (strstr(argv[0], "@spam.example")) {
        smfi_setreply(ctx, "550", "5.7.1", "Sender refused");
        return SMFIS_REJECT;
    }
    return SMFIS_CONTINUE;
}

static sfsistat tag_eom(SMFICTX *ctx)
{
    char *qid = smfi_getsymval(ctx, "i");
    char value[100];
    snprintf(value, sizeof value, "tag_milter, queue id %s", qid ? qid : "unknown");
    smfi_addheader(ctx, "X-Tagged-By", value);
    return SMFIS_CONTINUE;
}

static struct smfiDesc tag_desc = {
    .xxfi_name = "tag_milter",
    .xxfi_version = SMFI_VERSION,
    .xxfi_flags = SMFIF_ADDHDRS,
    .xxfi_envfrom = tag_envfrom,
    .xxfi_eom = tag_eom,
};

int main(int argc, char **argv)
{
    char *conn = argc > 1 ? argv[1] : "inet:50051@127.0.0.1";
    if (smfi_setconn(conn) == MI_FAILURE || smfi_register(tag_desc) == MI_FAILURE)
        return 1;
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
