/*
 * listener.c - bind milter sockets and pass accepted connections to the session server.
 *
 * Sockets are created here rather than by evconnlistener_new_bind() so that unix sockets
 * get their mode and stale-file handling, and so that the real bound address (port 0) can
 * be logged. Accept errors such as EMFILE pause accepting briefly instead of spinning.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "mgw/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mgw/error.h"
#include "mgw/log.h"
#include "mgw/xmalloc.h"

#define BACKLOG 511
#define ACCEPT_PAUSE_MS 100

struct mgw_listener {
    struct evconnlistener *evl;
    struct event *pause_ev;
    mgw_adopt_fn *adopt;
    void *adopt_arg;
    char name[300];       /* spec with the real port, for logs */
    char path[108];       /* unix socket we created, to unlink */
    ino_t ino;
};

static void format_peer(const struct sockaddr *sa, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;

        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;

        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, cap, "unix");
    }
}

static void on_accept(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct mgw_listener *l = arg;
    char peer[MGW_PEER_MAX];

    format_peer(sa, peer, sizeof peer);
    l->adopt(l->adopt_arg, fd, peer);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct mgw_listener *l = arg;

    evconnlistener_enable(l->evl);
}

static void on_accept_error(struct evconnlistener *evl, void *arg)
{
    struct mgw_listener *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};

    /* Out of descriptors: the pending connection stays queued and would wake us again at
     * once; pause so the loop can free some. */
    log_warn(0, "accept failed", "listen=%s error=\"%s\" pause_ms=%d", l->name,
             evutil_socket_error_to_string(e), ACCEPT_PAUSE_MS);
    evconnlistener_disable(evl);
    event_add(l->pause_ev, &tv);
}

/* Remove a socket file only if nothing listens on it any more. */
static int unlink_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd, r, e;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : (snprintf(err, errlen, "%s: %s", path, strerror(errno)), -1);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; not removing it", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    /* Non-blocking: a live listener with a full backlog must not hang us. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    r = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    e = errno;
    close(fd);
    if (r == 0 || e == EINPROGRESS) {
        snprintf(err, errlen, "%s is in use by another process", path);
        return -1;
    }
    if (e == ENOENT)
        return 0; /* gone meanwhile */
    /* Only a refused connection proves nobody listens. A full backlog (EAGAIN), a socket
     * we may not connect to (EACCES: another user's live instance) and the rest may all
     * be a live listener: never remove it. */
    if (e != ECONNREFUSED) {
        snprintf(err, errlen, "%s exists and may be in use (connect: %s); not removing it", path,
                 strerror(e));
        return -1;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int bind_unix(const struct mgw_listen_spec *sp, const struct mgw_unix_opts *o,
                     struct mgw_listener *l, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stat st;
    mode_t old;
    int fd, r;

    if (unlink_stale(sp->path, err, errlen) < 0)
        return -1;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    strcpy(sun.sun_path, sp->path);
    /* Create the file with no more access than asked, then set exactly the mode. */
    old = umask(0777 & ~o->mode);
    r = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (r < 0 || chmod(sp->path, o->mode) < 0 || stat(sp->path, &st) < 0) {
        snprintf(err, errlen, "bind %s: %s", sp->path, strerror(errno));
        close(fd);
        return -1;
    }
    /* So Postfix's daemons (user postfix) may connect without a world-writable socket. */
    if ((o->uid != (uid_t)-1 || o->gid != (gid_t)-1) && chown(sp->path, o->uid, o->gid) < 0) {
        snprintf(err, errlen, "chown %s: %s", sp->path, strerror(errno));
        close(fd);
        unlink(sp->path);
        return -1;
    }
    snprintf(l->path, sizeof l->path, "%s", sp->path);
    l->ino = st.st_ino;
    snprintf(l->name, sizeof l->name, "unix:%s", sp->path);
    return fd;
}

static int bind_inet(const struct mgw_listen_spec *sp, struct mgw_listener *l, char *err,
                     size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char port[8], bound[64];
    int fd, one = 1, r;

    hints.ai_family = sp->kind == MGW_LISTEN_INET6 ? AF_INET6 : AF_INET;
    snprintf(port, sizeof port, "%u", sp->port);
    r = getaddrinfo(sp->host[0] ? sp->host : NULL, port, &hints, &res);
    if (r != 0) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", sp->host, gai_strerror(r));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (res->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    r = bind(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (r < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        snprintf(err, errlen, "bind %s:%s: %s", sp->host[0] ? sp->host : "*", port,
                 strerror(errno));
        close(fd);
        return -1;
    }
    format_peer((struct sockaddr *)&ss, bound, sizeof bound);
    snprintf(l->name, sizeof l->name, "%s:%s", sp->kind == MGW_LISTEN_INET6 ? "inet6" : "inet",
             bound);
    return fd;
}

struct mgw_listener *mgw_listener_new(struct event_base *base, const char *spec,
                                      const struct mgw_unix_opts *unix_opts,
                                      mgw_adopt_fn *adopt, void *adopt_arg, char *err,
                                      size_t errlen)
{
    struct mgw_listen_spec sp;
    struct mgw_listener *l;
    int fd;

    if (mgw_listen_spec_parse(spec, &sp, err, errlen) < 0)
        return NULL;
    l = mgw_xcalloc(1, sizeof *l);
    l->adopt = adopt;
    l->adopt_arg = adopt_arg;
    fd = sp.kind == MGW_LISTEN_UNIX ? bind_unix(&sp, unix_opts, l, err, errlen)
                                    : bind_inet(&sp, l, err, errlen);
    if (fd < 0)
        goto fail;
    l->evl = evconnlistener_new(base, on_accept, l, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                BACKLOG, fd);
    if (l->evl == NULL) {
        snprintf(err, errlen, "listen %s: %s", l->name, strerror(errno));
        close(fd);
        goto fail;
    }
    evconnlistener_set_error_cb(l->evl, on_accept_error);
    l->pause_ev = event_new(base, -1, 0, on_resume, l);
    log_info(0, "listening", "listen=%s", l->name);
    return l;
fail:
    if (l->path[0])
        unlink(l->path);
    free(l);
    return NULL;
}

struct mgw_listener *mgw_listener_free(struct mgw_listener *l)
{
    struct stat st;

    if (l == NULL)
        return NULL;
    evconnlistener_free(l->evl);
    event_free(l->pause_ev);
    /* Remove our socket file, but not one a newer process put in its place. */
    if (l->path[0] && stat(l->path, &st) == 0 && st.st_ino == l->ino)
        unlink(l->path);
    free(l);
    return NULL;
}
