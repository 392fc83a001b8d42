# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""The engine behind miltergw.Milter: a pymilter-style milter class served as the gRPC
service miltergw.v1.Filter (proto/miltergw/v1/filter.proto).

- describe(): the Description, from a probe instance's negotiate() (decorators, flags,
  setsymlist).
- Session: one SMTP connection: Events in, callbacks called in order, Replies out.
- Demux: a multiplexed stream's sessions (Milter.multiplexed), each on a thread of its own.
- verdict_for(): a callback's return code -> Reply verdict.
- grpc_target(): pymilter socket names -> a gRPC listen address.
- run() / stop(): the server (sync grpc.server; each Session stream's callbacks run on a
  thread of their own), with grpc.health.v1 and server reflection.
"""
import os
import queue
import signal
import socket
import stat
import sys
import threading
import traceback
from concurrent import futures

import grpc

import miltergw
from miltergw import Milter as M
from miltergw import grpcstd
from miltergw.v1 import filter_pb2 as pb
from miltergw.v1 import filter_pb2_grpc as pb_grpc

SERVICE = "miltergw.v1.Filter"
E = pb.EventType

# callback, event type, Event oneof name, "no such event" bit, "no reply" bit
EVENTS = [
    ("connect", E.EVENT_TYPE_CONNECT, "connect", M.P_NOCONNECT, M.P_NR_CONN),
    ("hello", E.EVENT_TYPE_HELO, "helo", M.P_NOHELO, M.P_NR_HELO),
    ("envfrom", E.EVENT_TYPE_MAIL, "mail", M.P_NOMAIL, M.P_NR_MAIL),
    ("envrcpt", E.EVENT_TYPE_RCPT, "rcpt", M.P_NORCPT, M.P_NR_RCPT),
    ("data", E.EVENT_TYPE_DATA, "data", M.P_NODATA, M.P_NR_DATA),
    ("header", E.EVENT_TYPE_HEADER, "header", M.P_NOHDRS, M.P_NR_HDR),
    ("eoh", E.EVENT_TYPE_EOH, "eoh", M.P_NOEOH, M.P_NR_EOH),
    ("body", E.EVENT_TYPE_BODY, "body", M.P_NOBODY, M.P_NR_BODY),
    ("unknown", E.EVENT_TYPE_UNKNOWN, "unknown", M.P_NOUNKNOWN, M.P_NR_UNKN),
]
KIND_TYPE = {kind: et for _, et, kind, _, _ in EVENTS}
KIND_TYPE["eom"] = E.EVENT_TYPE_EOM

ACTIONS = [
    (M.ADDHDRS, pb.ACTION_ADD_HEADER),
    (M.CHGHDRS, pb.ACTION_CHANGE_HEADER),
    (M.CHGBODY, pb.ACTION_REPLACE_BODY),
    (M.ADDRCPT, pb.ACTION_ADD_RCPT),
    (M.DELRCPT, pb.ACTION_DELETE_RCPT),
    (M.QUARANTINE, pb.ACTION_QUARANTINE),
    (M.CHGFROM, pb.ACTION_CHANGE_FROM),
    (M.ADDRCPT_PAR, pb.ACTION_ADD_RCPT_WITH_ARGS),
]

# pymilter macro stages -> event types; the stages whose events carry macros
STAGES = {M.M_CONNECT: E.EVENT_TYPE_CONNECT, M.M_HELO: E.EVENT_TYPE_HELO,
          M.M_ENVFROM: E.EVENT_TYPE_MAIL, M.M_ENVRCPT: E.EVENT_TYPE_RCPT,
          M.M_DATA: E.EVENT_TYPE_DATA, M.M_EOH: E.EVENT_TYPE_EOH, M.M_EOM: E.EVENT_TYPE_EOM}
MACRO_KINDS = ["connect", "helo", "mail", "rcpt", "data", "eoh", "eom"]  # in SMTP order
MESSAGE_KINDS = MACRO_KINDS[2:]

# The answer to every event of a connection past max_sessions on a multiplexed stream.
REFUSED = pb.SmtpResponse(code=451, enhanced_status="4.3.2",
                          lines=["too many connections for this milter, try again later"])

RC_VERDICT = {M.CONTINUE: pb.VERDICT_CONTINUE, M.REJECT: pb.VERDICT_REJECT,
              M.DISCARD: pb.VERDICT_DISCARD, M.ACCEPT: pb.VERDICT_ACCEPT,
              M.TEMPFAIL: pb.VERDICT_TEMPFAIL, M.SKIP: pb.VERDICT_SKIP,
              M.NOREPLY: pb.VERDICT_CONTINUE}


def _warn(msg):
    sys.stderr.write("miltergw.Milter: %s\n" % msg)
    sys.stderr.flush()


def _bytes(v):
    if v is None:
        return b""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    return str(v).encode("utf-8", "surrogateescape")


def _text(v):
    """A proto3 string (valid UTF-8) from str or bytes."""
    if v is None:
        return ""
    if isinstance(v, str):
        v = v.encode("utf-8", "surrogateescape")
    return bytes(v).decode("utf-8", "replace")


def _params(params):
    """ESMTP parameters as pymilter takes them: None, "A=1 B=2" or a list."""
    if not params:
        return []
    if isinstance(params, (str, bytes)):
        return _text(params).split()
    return [_text(p) for p in params]


# ------------------------------------------------------------------------------------------
# Declaration


def protocol_to_description(name, actions, protocol, symlists):
    """The Description of a milter that negotiated `actions` (SMFIF bits) and `protocol`
    (SMFIP bits) and asked for `symlists` {M_stage: [names]}."""
    d = pb.Description(name=name, version=miltergw.__version__)
    for _, et, _, no, nr in EVENTS:
        if not protocol & no:
            d.events.append(et)
            if protocol & nr:
                d.observe_only.append(et)
    d.events.append(E.EVENT_TYPE_EOM)
    d.actions.extend(a for bit, a in ACTIONS if actions & bit)
    for stage in sorted(symlists):
        if stage in STAGES and symlists[stage]:
            d.macros.add(stage=STAGES[stage], names=symlists[stage])
    d.rejected_recipients = bool(protocol & M.P_RCPT_REJ)
    d.header_leading_space = bool(protocol & M.P_HDR_LEADSPC)
    return d


def effective_to_protocol(eff, leading_space=False):
    """The SMFIP bits a session runs with, from SessionStart.effective."""
    events = set(eff.events)
    if not events:
        events = {et for _, et, _, _, _ in EVENTS}
    silent = set(eff.observe_only)
    p = M.P_SKIP
    for _, et, _, no, nr in EVENTS:
        if et not in events:
            p |= no
        elif et in silent:
            p |= nr
    if eff.rejected_recipients:
        p |= M.P_RCPT_REJ
    if leading_space:
        p |= M.P_HDR_LEADSPC
    return p


def effective_to_actions(eff, flags):
    a = 0
    for bit, act in ACTIONS:
        if act in eff.actions:
            a |= bit
    return a | (flags & M.SETSYMLIST)


def describe(name, factory=None, flags=None):
    """Negotiate with a probe instance of `factory` as libmilter does with an MTA that
    offers every action and every protocol option; its answer as a Description.

    As with pymilter on libmilter 8.14+, the actions are those negotiate() leaves in
    opts[0]: Base.negotiate leaves every action offered, so set_flags() counts only when
    negotiate returns ALL_OPTS; a milter declares fewer actions by narrowing opts[0] in
    its own negotiate(). A Base subclass with the default negotiate() is probed without
    running its __init__."""
    factory = factory or M.factory
    flags = M._flags if flags is None else flags
    ctx = Context(None, negotiating=True)
    if (isinstance(factory, type) and issubclass(factory, M.Base)
            and factory.negotiate is M.Base.negotiate):
        m = factory.__new__(factory)  # no __init__: no side effects, no uniqueID() used
    else:
        m = factory()  # a custom negotiate may need the instance's state
    m._setctx(ctx)
    opts = [M.CURR_ACTS, M.ALL_PROTOCOL, 0, 0]
    rc = m.negotiate(opts)
    m._setctx(None)
    if rc == M.ALL_OPTS:  # the registered flags, every event answered
        d = protocol_to_description(name, flags & M.CURR_ACTS, M.P_SKIP, ctx.symlists)
    elif rc == M.CONTINUE:
        d = protocol_to_description(name, opts[0] & M.CURR_ACTS, opts[1], ctx.symlists)
    else:
        raise M.error("negotiate returned %r" % (rc,))
    d.multiplexed = bool(M.multiplexed)
    return d


# ------------------------------------------------------------------------------------------
# Replies


def verdict_for(kind, rc):
    """The Reply verdict for return code rc of the callback of event `kind` (an Event
    oneof name), or None when rc is not a return code (the exception policy applies)."""
    if isinstance(rc, bool) or not isinstance(rc, int) or rc not in RC_VERDICT:
        return None
    v = RC_VERDICT[rc]
    if v == pb.VERDICT_SKIP and kind != "body":
        return pb.VERDICT_CONTINUE  # as the MTA treats SKIP elsewhere
    if v == pb.VERDICT_DISCARD and kind in ("connect", "helo", "unknown"):
        # Postfix refuses DISCARD there and applies its default action; the gateway
        # would count it out of contract
        _warn("DISCARD returned by %s: answered TEMPFAIL" % kind)
        return pb.VERDICT_TEMPFAIL
    return v


def smtp_response(rcode, xcode, lines):
    """The SmtpResponse of setreply(rcode, xcode, *lines), checked as libmilter does."""
    code = str(rcode)
    if len(code) != 3 or not code.isdigit() or code[0] not in "45":
        raise M.error("cannot set reply: code %r is not 4xx or 5xx" % (rcode,))
    if xcode:
        x = str(xcode).split(".")
        if len(x) != 3 or not all(p.isdigit() for p in x) or x[0] != code[0]:
            raise M.error("cannot set reply: extended code %r does not match %s" % (xcode, code))
    # pymilter wants '%' doubled (libmilter's format); the MTA shows one: so does miltergw
    lines = [_text(s).replace("%%", "%") for s in lines if s is not None]
    if len(lines) > 32:
        raise M.error("cannot set reply: more than 32 lines")
    for s in lines:
        if "\r" in s or "\n" in s:
            raise M.error("cannot set reply: CR or LF in a line")
    return pb.SmtpResponse(code=int(code), enhanced_status=str(xcode or ""), lines=lines)


def untrapped_reply(verdict, name):
    """pymilter's reply when a callback raised and the exception policy refuses."""
    text = ["pymilter: untrapped exception in %.40s" % name]
    if verdict == pb.VERDICT_REJECT:
        return pb.SmtpResponse(code=554, enhanced_status="5.3.0", lines=text)
    if verdict == pb.VERDICT_TEMPFAIL:
        return pb.SmtpResponse(code=451, enhanced_status="4.3.0", lines=text)
    return None


# ------------------------------------------------------------------------------------------
# One SMTP connection


class Context:
    """What pymilter's milterContext is to a Base instance: macros, the reply, the
    modifications of the current end of message."""

    def __init__(self, session, negotiating=False):
        self.session = session
        self.negotiating = negotiating
        self.priv = None
        self.symlists = {}
        self.macros = {}  # Event oneof name -> {name: value}
        self.stage = None  # the Event oneof name being handled
        self.reply = None
        self.mods = []
        self.body = None  # bytearray once replacebody was called

    # milterContext API
    def setpriv(self, priv):
        old, self.priv = self.priv, priv
        return old

    def getpriv(self):
        return self.priv

    def getsymval(self, sym):
        order = [self.stage] if self.stage in self.macros else []
        order += [k for k in reversed(MACRO_KINDS) if k in self.macros and k != self.stage]
        for k in order:
            if sym in self.macros[k]:
                return self.macros[k][sym]
        return None

    def setreply(self, rcode, xcode, msg, *ml):
        self.reply = smtp_response(rcode, xcode, (msg,) + ml)
        return None

    def setsymlist(self, stage, names):
        if not self.negotiating:
            if self.session is not None and self.session.in_negotiate:
                return None  # per-session negotiate: the Description already has them
            raise M.error("setsymlist is only allowed in negotiate")
        if stage not in STAGES:
            raise ValueError("bad macro stage %r" % (stage,))
        self.symlists[stage] = list(names)
        return None

    def _eom(self, what):
        if self.stage != "eom":
            raise M.error("cannot %s outside eom" % what)

    def addheader(self, field, value, idx=-1):
        self._eom("add header")
        if idx is None or idx < 0:
            self.mods.append(pb.Modification(add_header=pb.AddHeader(
                name=_text(field), value=_bytes(value))))
        else:
            self.mods.append(pb.Modification(insert_header=pb.InsertHeader(
                index=idx, name=_text(field), value=_bytes(value))))

    def chgheader(self, field, idx, value):
        self._eom("change header")
        self.mods.append(pb.Modification(change_header=pb.ChangeHeader(
            name=_text(field), index=max(int(idx), 0), value=_bytes(value))))

    def addrcpt(self, rcpt, params=None):
        self._eom("add recipient")
        self.mods.append(pb.Modification(add_recipient=pb.AddRecipient(
            address=_text(rcpt), args=_params(params))))

    def delrcpt(self, rcpt):
        self._eom("delete recipient")
        self.mods.append(pb.Modification(delete_recipient=pb.DeleteRecipient(address=_text(rcpt))))

    def replacebody(self, body):
        self._eom("replace body")
        if self.body is None:
            self.body = bytearray()
            self.mods.append(pb.Modification(replace_body=pb.ReplaceBody()))
        self.body += _bytes(body)

    def chgfrom(self, sender, params=None):
        self._eom("change sender")
        self.mods.append(pb.Modification(change_from=pb.ChangeFrom(
            address=_text(sender), args=_params(params))))

    def quarantine(self, reason):
        self._eom("quarantine")
        self.mods.append(pb.Modification(quarantine=pb.Quarantine(reason=_text(reason))))

    def progress(self):
        if self.session is not None:
            self.session.progress()


class Session:
    """The events of one Session stream in, the milter's callbacks called in order, the
    replies out through emit(Reply)."""

    def __init__(self, emit, factory=None, flags=None, name="milter"):
        self.emit = emit
        self.name = name
        self.factory = factory
        self.flags = flags
        self.ctx = Context(self)
        self.m = None
        self.silent = set()
        self.current = None  # event_id awaiting our reply, while its callback runs
        self.in_negotiate = False
        self.closed = False
        self.in_message = False
        self.skipping = False  # body() returned SKIP: no more body() calls this message
        self.failed = False  # the callback raised: pymilter's reply for the exception policy
        # Past max_sessions on a multiplexed stream: no instance, every answer TEMPFAIL.
        self.refused = False

    def progress(self):
        if self.current is not None:
            self.emit(pb.Reply(event_id=self.current, verdict=pb.VERDICT_PROGRESS))

    def _call(self, fn, *args):
        """fn(*args) -> its return code; an exception -> None (policy applies)."""
        try:
            return fn(*args)
        except Exception:
            _warn("exception in %s:" % getattr(fn, "__name__", fn))
            traceback.print_exc()
            self.failed = True
            return None

    def _start(self, start):
        if self.refused:
            return
        factory = self.factory or M.factory
        flags = M._flags if self.flags is None else self.flags
        eff = start.effective
        self.silent = set(eff.observe_only)
        try:
            m = factory()
            m._setctx(self.ctx)
        except Exception:
            _warn("factory() failed; this connection gets the exception policy:")
            traceback.print_exc()
            return
        M._diag[0] += 1
        self.m = m
        actions = effective_to_actions(eff, flags)
        protocol = effective_to_protocol(eff, start.header_leading_space)
        self.in_negotiate = True
        try:
            self._call(m.negotiate, [actions, protocol, 0, 0])
        finally:
            self.in_negotiate = False
        m._actions, m._protocol = actions, protocol  # what the gateway granted

    def _dispatch(self, kind, ev):
        m = self.m
        if kind == "connect":
            c = ev.connect
            if c.family == pb.FAMILY_INET:
                family, addr = socket.AF_INET, (c.address, c.port)
            elif c.family == pb.FAMILY_INET6:
                a = c.address[5:] if c.address[:5].lower() == "ipv6:" else c.address
                family, addr = socket.AF_INET6, (a, c.port, 0, 0)
            elif c.family == pb.FAMILY_UNIX:
                family, addr = socket.AF_UNIX, c.address
            else:
                family, addr = socket.AF_UNSPEC, None
            return self._call(m.connect, c.hostname, family, addr)
        if kind == "helo":
            return self._call(m.hello, ev.helo.name)
        if kind == "mail":
            return self._call(m.envfrom_bytes, *[_bytes(s) for s in [ev.mail.address] + list(ev.mail.args)])
        if kind == "rcpt":
            return self._call(m.envrcpt_bytes, *[_bytes(s) for s in [ev.rcpt.address] + list(ev.rcpt.args)])
        if kind == "data":
            return self._call(m.data)
        if kind == "header":
            return self._call(m.header_bytes, ev.header.name, ev.header.value)
        if kind == "eoh":
            return self._call(m.eoh)
        if kind == "body":
            if self.skipping:  # already sent (content is pipelined): not shown, as in libmilter
                return M.SKIP
            rc = self._call(m.body, ev.body.data)
            self.skipping = rc == M.SKIP
            return rc
        if kind == "eom":
            return self._call(m.eom)
        if kind == "unknown":
            return self._call(m.unknown, ev.unknown.command)
        return M.CONTINUE

    def event(self, ev):
        kind = ev.WhichOneof("event")
        if kind == "batch":
            for e in ev.batch.events:
                self.event(e)
            return
        if kind == "start":
            self._start(ev.start)
            return
        ctx = self.ctx
        if kind == "mail":  # a new message: forget the previous one's macros
            for k in MESSAGE_KINDS:
                ctx.macros.pop(k, None)
            self.in_message = True
        if kind in ("mail", "abort", "eom"):
            self.skipping = False
        if kind in MACRO_KINDS and ev.macros:  # as libmilter: a stage's list replaces the last
            ctx.macros[kind] = dict(ev.macros)
        if kind == "abort":
            if self.m is not None:
                ctx.stage = "abort"
                self._call(self.m.abort)
            for k in MESSAGE_KINDS:
                ctx.macros.pop(k, None)
            self.in_message = False
            ctx.stage, ctx.reply = None, None
            return
        answer = KIND_TYPE.get(kind) not in self.silent
        if self.refused:
            if answer:
                self.emit(pb.Reply(event_id=ev.event_id, verdict=pb.VERDICT_TEMPFAIL,
                                   response=REFUSED))
            return
        ctx.stage, ctx.reply, ctx.mods, ctx.body = kind, None, [], None
        self.current = ev.event_id if answer else None
        self.failed = False
        try:
            rc = self._dispatch(kind, ev) if self.m is not None else None
            verdict = verdict_for(kind, rc)
            if verdict is None:
                if self.m is not None and rc is not None and not self.failed:
                    _warn("the %s callback must return int, not %r" % (kind, rc))
                verdict = RC_VERDICT[M._exception_policy]
                # pymilter's own reply for an untrapped exception
                ctx.reply = untrapped_reply(verdict, self.name)
            if not answer:
                if rc not in (M.NOREPLY, M.CONTINUE):
                    _warn("%s is @noreply but returned %r: ignored" % (kind, rc))
                return
            reply = pb.Reply(event_id=ev.event_id, verdict=verdict)
            if verdict in (pb.VERDICT_REJECT, pb.VERDICT_TEMPFAIL) and ctx.reply is not None:
                reply.response.CopyFrom(ctx.reply)
            if kind == "eom":
                for mod in ctx.mods:
                    if mod.WhichOneof("modification") == "replace_body":
                        mod.replace_body.body = bytes(ctx.body)
                reply.modifications.extend(ctx.mods)
            self.emit(reply)
        finally:
            self.current = None
            ctx.stage, ctx.reply, ctx.mods, ctx.body = None, None, [], None
            if kind == "eom":
                self.in_message = False

    def close(self):
        """The connection is over (half-close or a broken stream): close(), once."""
        if self.closed:
            return
        self.closed = True
        if self.m is not None:
            self.ctx.stage = "close"
            self._call(self.m.close)
            try:
                self.m._setctx(None)
            except Exception:
                pass
            M._diag[1] += 1
            self.m = None


class Demux:
    """A multiplexed stream (filter.proto Description.multiplexed): its events routed by
    Event.session to one Session each, run in order on a thread of its own as a stream of
    its own would be; the replies, named back with Reply.session, out through emit. A
    session ends with its SessionEnd, or with the stream (close). The same interface as
    Session."""

    # Sessions open on every multiplexed stream of the process, against M.max_sessions.
    _open = 0
    _lock = threading.Lock()

    def __init__(self, emit, factory=None, flags=None, name="milter"):
        self.emit = emit
        self.factory, self.flags, self.name = factory, flags, name
        self.sessions = {}  # Event.session -> its queue, while open
        self.threads = []  # every session's, ended ones too (at most 128 on a stream)

    def event(self, ev):
        """On the stream's reading thread, in stream order."""
        if ev.WhichOneof("event") == "batch":  # its events may name different sessions
            for e in ev.batch.events:
                self.event(e)
            return
        sid = ev.session
        if ev.WhichOneof("event") == "end":
            q = self.sessions.pop(sid, None)
            if q is not None:
                q.put(None)
            return
        q = self.sessions.get(sid)
        if q is None:
            q = self.sessions[sid] = self._open_session(sid)
        q.put(ev)

    def _open_session(self, sid):
        def emit(reply):
            reply.session = sid
            self.emit(reply)
        session = Session(emit, factory=self.factory, flags=self.flags, name=self.name)
        with Demux._lock:
            session.refused = Demux._open >= M.max_sessions
            if not session.refused:
                Demux._open += 1
        if session.refused:
            _warn("session %d: past max_sessions (%d): answered TEMPFAIL" % (sid, M.max_sessions))
        q = queue.Queue()

        def work():
            try:
                for ev in iter(q.get, None):
                    session.event(ev)
            finally:
                session.close()
                if not session.refused:
                    with Demux._lock:
                        Demux._open -= 1
        t = threading.Thread(target=work, name="milter-session", daemon=True)
        t.start()
        self.threads.append(t)
        return q

    def close(self):
        """The stream is over: every session still open ends, and this returns once every
        session's close() has run."""
        for q in self.sessions.values():
            q.put(None)
        self.sessions = {}
        for t in self.threads:
            t.join()


# ------------------------------------------------------------------------------------------
# gRPC


class FilterServicer(pb_grpc.FilterServicer):
    def __init__(self, name):
        self.name = name

    def Describe(self, request, context):
        try:
            return describe(self.name)
        except Exception as e:
            traceback.print_exc()
            context.abort(grpc.StatusCode.INTERNAL, "negotiate failed: %s" % e)

    def Session(self, request_iterator, context):
        out = queue.Queue()
        session = (Demux if M.multiplexed else Session)(out.put, name=self.name)

        def work():  # this stream's events in order: callbacks (or, multiplexed, routing)
            try:
                for ev in request_iterator:
                    session.event(ev)
            except grpc.RpcError:
                pass  # cancelled by the gateway or the server stopping
            except Exception:
                traceback.print_exc()
            finally:
                session.close()
                out.put(None)

        threading.Thread(target=work, name="milter-session", daemon=True).start()
        while True:
            reply = out.get()
            if reply is None:
                return
            yield reply


def grpc_target(socketname, rmsock=True):
    """A gRPC listen address from pymilter's socket names (inet:PORT@HOST, inet:PORT,
    inet6:PORT@ADDR, inet6:PORT, unix:PATH, local:PATH, /PATH) or gRPC's (HOST:PORT,
    [ADDR]:PORT, unix:PATH). With rmsock, a stale unix socket file is removed."""
    s = socketname.strip()
    scheme, sep, rest = s.partition(":")
    if s.startswith("/") or (sep and scheme in ("unix", "local")):
        path = s if s.startswith("/") else rest
        if path.startswith("//"):  # unix:///path
            path = path[2:]
        path = os.path.abspath(path)
        if rmsock:
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        return "unix:" + path
    if sep and scheme in ("inet", "inet6"):
        port, at, host = rest.partition("@")
        if not port.isdigit():
            raise ValueError("bad socket name %r: inet:PORT[@HOST]" % socketname)
        host = host.strip("[]")
        if not at:
            host = "::" if scheme == "inet6" else "0.0.0.0"
        if scheme == "inet6" and host.lower().startswith("ipv6:"):
            host = host[5:]
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, port)
    return s


_running = {"event": None}
_running_lock = threading.Lock()


def stop():
    with _running_lock:
        ev = _running["event"]
    if ev is not None:
        ev.set()


def run(name, socketname, rmsock=True, ready=None):
    """Serve until a signal or stop(). ready(port) is called once listening."""
    target = grpc_target(socketname, rmsock)
    stopping = threading.Event()
    with _running_lock:
        if _running["event"] is not None:
            raise M.error("runmilter is already running")
        _running["event"] = stopping
    old = {}
    try:
        # a thread per open stream, never a wait for one: past max_sessions concurrent
        # calls a new stream is refused at once (RESOURCE_EXHAUSTED) and the gateway
        # applies the filter's on_error, instead of the stream starving in a queue
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=M.max_sessions + 8,
                                                        thread_name_prefix="milter-grpc"),
                             options=[("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=M.max_sessions)
        pb_grpc.add_FilterServicer_to_server(FilterServicer(name), server)
        health = grpcstd.Health([SERVICE])
        grpcstd.add_standard_services(server, health, [SERVICE])
        port = server.add_insecure_port(target)  # RuntimeError if it cannot listen
        if port == 0 and not target.startswith("unix:"):
            raise M.error("cannot listen on %s" % target)
        server.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: stopping.set())
        if ready is not None:
            ready(port)
        while not stopping.wait(0.5):
            pass
        health.set_all(False)  # NOT_SERVING from now on; Watch streams are told
        health.close()
        server.stop(M.stop_timeout).wait()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        with _running_lock:
            _running["event"] = None
