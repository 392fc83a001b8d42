/* minimal_filter.c - the smallest useful filter: adds "X-Hello: world" to every message.
 * Usage: minimal_filter [HOST:PORT]   (default 127.0.0.1:50051; port 0 picks one)
 * SPDX-License-Identifier: Apache-2.0 */
#include "mgw_filter.h"

static void on_event(struct mgw_session *s, const Miltergw__V1__Event *ev, struct mgw_reply *r)
{
    (void)s;
    /* Only EOM was asked for: answer it with CONTINUE (the default) plus a header. */
    if (mgw_event_kind(ev) == MGW_EOM)
        mgw_reply_add_header(r, "X-Hello", "world");
}

int main(int argc, char **argv)
{
    struct mgw_filter f = {
        .listen = argc > 1 ? argv[1] : "127.0.0.1:50051",
        .name = "minimal",
        .events = MGW_EVENT_BIT(MGW_EOM),
        .actions = MGW_ACTION_BIT(ADD_HEADER),
        .on_event = on_event,
        .print_port = true,
    };
    return mgw_filter_run(&f);
}
