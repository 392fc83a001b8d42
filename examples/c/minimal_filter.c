/* minimal_filter.c - refuses senders at spam.example, tags every other message.
 * SPDX-License-Identifier: Apache-2.0 */
#include <string.h>

#include "mgw_filter.h"

static void on_event(struct mgw_session *s, const Miltergw__V1__Event *ev, struct mgw_reply *r)
{
    (void)s;
    switch (mgw_event_kind(ev)) {
    case MGW_MAIL:
        if (strstr(ev->mail->address, "@spam.example>"))
            mgw_reply_reject(r, 550, "5.7.1", "Sender refused");
        break;
    case MGW_EOM: mgw_reply_add_header(r, "X-Checked-By", "minimal_filter"); break;
    default: break; /* everything else: CONTINUE */
    }
}

int main(void)
{
    struct mgw_filter f = {
        .listen = "127.0.0.1:50051",
        .name = "minimal",
        .events = MGW_EVENT_BIT(MGW_MAIL) | MGW_EVENT_BIT(MGW_EOM),
        .actions = MGW_ACTION_BIT(ADD_HEADER),
        .on_event = on_event,
    };
    return mgw_filter_run(&f);
}
