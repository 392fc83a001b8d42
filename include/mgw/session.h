/*
 * session.h - MTA connections: one milter state machine per socket, on libevent.
 *
 * A `struct mgw_server` owns the sessions of one process: it adopts connected sockets
 * (from listeners, or socketpair() in tests), runs the milter protocol on each through
 * the codec, and hands every event to the backend (backend.h). It does not accept
 * connections itself (listener.c does) and knows nothing about gRPC.
 *
 * Per session: negotiation (versions 2..6, never claiming more than offered), macros
 * stored per stage and cleared at message and connection boundaries, several messages
 * per connection, QUIT_NC, an idle timeout between messages, a frame cap, and one write
 * per answer (modifications and final reply together) on a TCP_NODELAY socket. A
 * malformed frame or an out-of-order command ends that one session with a log line
 * naming the reason; with MAIL negotiated away, a message command that goes back begins
 * the next message (implicit abort), as in libmilter.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef MGW_SESSION_H
#define MGW_SESSION_H

#ifdef MGW_CORE
#error "session.h is I/O: not part of mgw_core (src/core)"
#endif

#include <event2/util.h>
#include <stdint.h>
#include <stddef.h>

#include "mgw/backend.h"
#include "mgw/server_conf.h"

struct event_base;

enum mgw_session_state {
    MGW_SESSION_NEGOTIATE = 0, /* waiting for OPTNEG */
    MGW_SESSION_CONNECT,       /* negotiated; waiting for CONNECT (also after QUIT_NC) */
    MGW_SESSION_IDLE,          /* connected, no message: HELO, MAIL, UNKNOWN */
    MGW_SESSION_MAIL,          /* in a message, after MAIL */
    MGW_SESSION_RCPT,
    MGW_SESSION_DATA,
    MGW_SESSION_HEADERS,
    MGW_SESSION_EOH,
    MGW_SESSION_BODY,
    MGW_SESSION_EOM,           /* end of message sent to the backend */
    MGW_SESSION_CLOSING,       /* flushing the last answer, then freed */
};

const char *mgw_session_state_name(enum mgw_session_state st);

struct mgw_server;

/* `backend` is borrowed and must outlive the server. */
struct mgw_server *mgw_server_new(struct event_base *base, const struct mgw_server_config *cfg,
                                  struct mgw_backend *backend);

/* Take ownership of a connected socket and start a session on it. `peer` (may be NULL)
 * is only for logs. Returns 0, or MGW_EUNAVAIL if max_connections is reached (the
 * socket is closed and the refusal logged). */
int mgw_server_adopt(struct mgw_server *srv, evutil_socket_t fd, const char *peer);

unsigned mgw_server_session_count(const struct mgw_server *srv);

/* Sessions of every server in the process, from any thread. max_connections counts
 * these: with one server per worker loop (workers.h), the limit is the process's. */
unsigned mgw_server_process_sessions(void);

/* Which worker loop runs this server: named in the "session opened" log line. */
void mgw_server_set_worker(struct mgw_server *srv, unsigned worker);

/* Bytes the sessions hold in their own buffers (answer scratch, unread input, unsent
 * output): what a large answer leaves behind, for tests. */
size_t mgw_server_buffered_bytes(const struct mgw_server *srv);

/* Reload: sessions adopted from now on use `backend` and `cfg`; running sessions finish
 * on the backend they started with. The previous backend's `release` callback runs
 * when its last session ends (at once if it has none). Both are borrowed. */
void mgw_server_replace(struct mgw_server *srv, const struct mgw_server_config *cfg,
                        struct mgw_backend *backend);

/* Called (on the loop thread) every time the session count drops to 0. */
void mgw_server_set_empty_cb(struct mgw_server *srv, void (*cb)(void *arg), void *arg);

/* End every session now (reason is logged), e.g. at shutdown. */
void mgw_server_close_all(struct mgw_server *srv, const char *reason);

/* Start draining: running sessions go on (more messages included) until the MTA ends
 * them; the caller bounds that with its drain timeout and mgw_server_close_all(). Closing
 * between messages would hand the next message on that SMTP connection the MTA's
 * milter_default_action. The empty callback fires when the last one is gone. New
 * sessions should not be adopted (close the listeners). */
void mgw_server_drain(struct mgw_server *srv);
int mgw_server_draining(const struct mgw_server *srv);

/* Closes every session, then frees; accepts NULL; returns NULL. */
struct mgw_server *mgw_server_free(struct mgw_server *srv);

#endif
