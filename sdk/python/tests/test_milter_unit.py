#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""Unit tests of the pure parts of miltergw.Milter: the Description the decorators and
negotiate() produce, return codes -> verdicts, setreply -> SmtpResponse, a Session fed
Events by hand (arguments, replies, modifications, SKIP, @noreply, the exception policy,
macros), socket names, Milter.utils, and that the shipped generated stubs are current.

Run: /usr/bin/python3 -m unittest discover -s sdk/python/tests  (from the repository)
"""
import os
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
sys.path.insert(0, SDK)

import miltergw.Milter as Milter  # noqa: E402
from miltergw import _server as S  # noqa: E402
from miltergw.Milter.utils import parse_addr, parse_header, parseaddr  # noqa: E402
from miltergw.v1 import filter_pb2 as pb  # noqa: E402

E = pb.EventType
ALL_EVENTS = [E.EVENT_TYPE_CONNECT, E.EVENT_TYPE_HELO, E.EVENT_TYPE_MAIL, E.EVENT_TYPE_RCPT,
              E.EVENT_TYPE_DATA, E.EVENT_TYPE_HEADER, E.EVENT_TYPE_EOH, E.EVENT_TYPE_BODY,
              E.EVENT_TYPE_UNKNOWN, E.EVENT_TYPE_EOM]


class OnlyEom(Milter.Base):
    def eom(self):
        return Milter.CONTINUE


class Mixed(Milter.Base):
    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    @Milter.symlist("{auth_authen}", "i")
    def envfrom(self, f, *params):
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self):
        return Milter.CONTINUE


class MixedAgain(Mixed):  # turns a callback off again
    @Milter.nocallback
    def envrcpt(self, to, *params):
        return Milter.CONTINUE


@Milter.rejected_recipients
@Milter.header_leading_space
class WithProtocols(Milter.Base):
    def envrcpt(self, to, *params):
        return Milter.CONTINUE


class Narrow(Milter.Base):
    def negotiate(self, opts):
        rc = Milter.Base.negotiate(self, opts)
        opts[0] &= Milter.ADDHDRS | Milter.CHGFROM
        return rc


class Everything(Milter.Base):
    def negotiate(self, opts):
        return Milter.ALL_OPTS


class DescriptionTest(unittest.TestCase):
    def test_base_and_only_eom(self):
        for cls in (Milter.Base, OnlyEom):
            d = S.describe("n", cls, Milter.CURR_ACTS)
            self.assertEqual(list(d.events), [E.EVENT_TYPE_EOM])
            self.assertEqual(list(d.observe_only), [])
            self.assertEqual(len(d.actions), 8)
            self.assertFalse(d.rejected_recipients or d.header_leading_space)
            self.assertEqual(d.name, "n")

    def test_decorators(self):
        d = S.describe("m", Mixed)
        self.assertEqual(list(d.events), [E.EVENT_TYPE_CONNECT, E.EVENT_TYPE_MAIL, E.EVENT_TYPE_RCPT,
                                          E.EVENT_TYPE_HEADER, E.EVENT_TYPE_EOM])
        self.assertEqual(list(d.observe_only), [E.EVENT_TYPE_CONNECT, E.EVENT_TYPE_HEADER])
        self.assertEqual([(m.stage, list(m.names)) for m in d.macros],
                         [(E.EVENT_TYPE_MAIL, ["{auth_authen}", "i"]), (E.EVENT_TYPE_EOM, ["i"])])
        d = S.describe("m", MixedAgain)
        self.assertNotIn(E.EVENT_TYPE_RCPT, d.events)
        self.assertIn(E.EVENT_TYPE_MAIL, d.events)

    def test_pymilter_logging_class(self):
        d = S.describe("m", Milter.Milter)
        six = [E.EVENT_TYPE_CONNECT, E.EVENT_TYPE_HELO, E.EVENT_TYPE_MAIL, E.EVENT_TYPE_RCPT,
               E.EVENT_TYPE_HEADER, E.EVENT_TYPE_EOH]
        self.assertEqual(list(d.events), six + [E.EVENT_TYPE_EOM])
        self.assertEqual(list(d.observe_only), six)

    def test_protocol_decorators(self):
        d = S.describe("m", WithProtocols)
        self.assertTrue(d.rejected_recipients)
        self.assertTrue(d.header_leading_space)
        class Sub(WithProtocols):  # inherited, and its own callbacks count
            def header(self, n, v):
                return Milter.CONTINUE
        d = S.describe("m", Sub)
        self.assertTrue(d.rejected_recipients)
        self.assertIn(E.EVENT_TYPE_HEADER, d.events)

    def test_actions_from_negotiate(self):
        d = S.describe("m", Narrow, Milter.CURR_ACTS)
        self.assertEqual(list(d.actions), [pb.ACTION_ADD_HEADER, pb.ACTION_CHANGE_FROM])
        # Base.negotiate keeps every action, whatever set_flags said (as pymilter does)
        self.assertEqual(len(S.describe("m", OnlyEom, Milter.ADDHDRS).actions), 8)
        # ALL_OPTS: every event answered, the registered flags
        d = S.describe("m", Everything, Milter.ADDHDRS | Milter.QUARANTINE)
        self.assertEqual(list(d.events), ALL_EVENTS)
        self.assertEqual(list(d.observe_only), [])
        self.assertEqual(list(d.actions), [pb.ACTION_ADD_HEADER, pb.ACTION_QUARANTINE])

    def test_probe_skips_init(self):
        made = []

        class Counting(Milter.Base):
            def __init__(self):
                made.append(1)
        S.describe("m", Counting)
        self.assertEqual(made, [])

    def test_decorator_misuse(self):
        with self.assertRaises(ValueError):
            Milter.noreply(lambda self: 0)
        with self.assertRaises(ValueError):
            Milter.symlist("a", "b", "c", "d", "e", "f")(Mixed.envfrom)

    def test_effective_roundtrip(self):
        d = S.describe("m", Mixed)
        p = S.effective_to_protocol(d)
        self.assertTrue(p & Milter.P_NR_CONN and p & Milter.P_NR_HDR and p & Milter.P_NOHELO)
        self.assertFalse(p & (Milter.P_NOMAIL | Milter.P_NORCPT | Milter.P_NR_RCPT))
        self.assertEqual(S.effective_to_actions(pb.Description(actions=[pb.ACTION_DELETE_RCPT]), 0),
                         Milter.DELRCPT)


class ReplyTest(unittest.TestCase):
    def test_verdicts(self):
        V = S.verdict_for
        self.assertEqual(V("rcpt", Milter.CONTINUE), pb.VERDICT_CONTINUE)
        self.assertEqual(V("rcpt", Milter.REJECT), pb.VERDICT_REJECT)
        self.assertEqual(V("eom", Milter.DISCARD), pb.VERDICT_DISCARD)
        self.assertEqual(V("eom", Milter.ACCEPT), pb.VERDICT_ACCEPT)
        self.assertEqual(V("mail", Milter.TEMPFAIL), pb.VERDICT_TEMPFAIL)
        self.assertEqual(V("body", Milter.SKIP), pb.VERDICT_SKIP)
        self.assertEqual(V("header", Milter.SKIP), pb.VERDICT_CONTINUE)
        self.assertEqual(V("eoh", Milter.NOREPLY), pb.VERDICT_CONTINUE)
        self.assertEqual(V("connect", Milter.DISCARD), pb.VERDICT_TEMPFAIL)
        for bad in (None, 99, "0", True, 1.0):
            self.assertIsNone(V("eom", bad))

    def test_smtp_response(self):
        r = S.smtp_response("550", "5.7.1", ["one", "two 100%% sure", None])
        self.assertEqual((r.code, r.enhanced_status, list(r.lines)), (550, "5.7.1", ["one", "two 100% sure"]))
        self.assertEqual(S.smtp_response(451, None, [None]).enhanced_status, "")
        for args in (("250", None, []), ("5x0", None, []), ("550", "4.7.1", []), ("550", "5.7", []),
                     ("550", None, ["a\r\nb"]), ("550", None, ["x"] * 33)):
            with self.assertRaises(Milter.error, msg=args):
                S.smtp_response(*args)

    def test_setreply_percent(self):
        m = Milter.Base()
        m._setctx(S.Context(None))
        with self.assertRaises(ValueError):
            m.setreply("550", "5.7.1", "100% sure")
        m.setreply("550", "5.7.1", "100%% sure", "second")
        self.assertEqual(list(m._ctx.reply.lines), ["100% sure", "second"])

    def test_untrapped(self):
        r = S.untrapped_reply(pb.VERDICT_REJECT, "x")
        self.assertEqual((r.code, r.enhanced_status, list(r.lines)),
                         (554, "5.3.0", ["pymilter: untrapped exception in x"]))
        self.assertEqual(S.untrapped_reply(pb.VERDICT_TEMPFAIL, "x").code, 451)
        self.assertIsNone(S.untrapped_reply(pb.VERDICT_CONTINUE, "x"))


class Recorder(Milter.Base):
    """Records its calls; what it does at eom is set by the test."""
    log = []
    at_eom = None

    def connect(self, hostname, family, hostaddr):
        self.log.append(("connect", hostname, family, hostaddr))
        return Milter.CONTINUE

    def hello(self, name):
        self.log.append(("hello", name))
        return Milter.CONTINUE

    def envfrom(self, f, *params):
        self.log.append(("envfrom", f) + params + (self.getsymval("{mail_addr}"), self.getsymval("j")))
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        self.log.append(("envrcpt", to) + params)
        if to == "<bad@x>":
            self.setreply("550", "5.1.1", "no", "really")
            return Milter.REJECT
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        self.log.append(("header", name, value))
        return Milter.CONTINUE

    def body(self, chunk):
        self.log.append(("body", chunk))
        return Milter.SKIP

    def unknown(self, cmd):
        self.log.append(("unknown", cmd))
        return Milter.CONTINUE

    def eom(self):
        self.log.append(("eom", self.getsymval("i")))
        return type(self).at_eom(self) if type(self).at_eom else Milter.CONTINUE

    def abort(self):
        self.log.append(("abort",))

    def close(self):
        self.log.append(("close",))


def ev(eid, macros=None, **kw):
    return pb.Event(event_id=eid, macros=macros or {}, **kw)


class SessionTest(unittest.TestCase):
    def setUp(self):
        Recorder.log = []
        Recorder.at_eom = None
        self.replies = []
        self.s = S.Session(self.replies.append, factory=Recorder, name="rec")
        d = S.describe("rec", Recorder)
        self.s.event(pb.Event(start=pb.SessionStart(effective=d)))

    def eom(self, eid=20):
        self.s.event(ev(eid, {"i": "QID"}, eom=pb.EndOfMessage()))
        return self.replies[-1]

    def test_callbacks_and_replies(self):
        s = self.s
        s.event(ev(1, {"j": "mx"}, connect=pb.Connect(hostname="[10.0.0.1]", family=pb.FAMILY_INET,
                                                     address="10.0.0.1", port=1234)))
        s.event(ev(2, connect=pb.Connect(hostname="h6", family=pb.FAMILY_INET6, address="IPv6:2001:db8::1", port=25)))
        s.event(ev(3, helo=pb.Helo(name="client")))
        s.event(ev(4, {"{mail_addr}": "a@b"}, mail=pb.MailFrom(address="<a@b>", args=["SIZE=10", "BODY=8BITMIME"])))
        s.event(ev(5, rcpt=pb.RcptTo(address="<bad@x>")))
        s.event(ev(6, header=pb.Header(name="Subject", value=b"caf\xe9")))
        s.event(ev(7, body=pb.BodyChunk(data=b"one")))
        s.event(ev(8, body=pb.BodyChunk(data=b"two")))
        s.event(ev(9, unknown=pb.Unknown(command="FOO")))
        log = Recorder.log
        self.assertEqual(log[0], ("connect", "[10.0.0.1]", socket.AF_INET, ("10.0.0.1", 1234)))
        self.assertEqual(log[1], ("connect", "h6", socket.AF_INET6, ("2001:db8::1", 25, 0, 0)))
        self.assertEqual(log[2], ("hello", "client"))
        self.assertEqual(log[3], ("envfrom", "<a@b>", "SIZE=10", "BODY=8BITMIME", "a@b", "mx"))
        self.assertEqual(log[5], ("header", "Subject", "caf\udce9"))  # surrogateescape
        self.assertEqual(log[6], ("body", b"one"))  # then SKIP: the second chunk is not shown
        self.assertEqual(log[7], ("unknown", "FOO"))
        ids = [r.event_id for r in self.replies]
        self.assertEqual(ids, [1, 2, 3, 4, 5, 7, 8, 9])  # header is @noreply: no reply
        rcpt = self.replies[4]
        self.assertEqual((rcpt.verdict, rcpt.response.code, list(rcpt.response.lines)),
                         (pb.VERDICT_REJECT, 550, ["no", "really"]))
        self.assertEqual([r.verdict for r in self.replies[5:7]], [pb.VERDICT_SKIP, pb.VERDICT_SKIP])
        self.assertEqual(self.eom().verdict, pb.VERDICT_CONTINUE)
        self.assertEqual(Recorder.log[-1], ("eom", "QID"))
        s.event(ev(21, abort=pb.Abort()))
        s.close()
        s.close()
        self.assertEqual(Recorder.log[-2:], [("abort",), ("close",)])

    def test_modifications(self):
        def at_eom(m):
            m.addheader("X-A", "1")
            m.addheader("X-I", b"2", 0)
            m.chgheader("X-C", 2, "new")
            m.chgheader("X-D", 1, None)
            m.addrcpt("<r@x>")
            m.addrcpt("<p@x>", "NOTIFY=NEVER ORCPT=rfc822;p@x")
            m.delrcpt("<d@x>")
            m.chgfrom("<f@x>", ["RET=HDRS"])
            m.replacebody(b"a\r\n")
            m.quarantine("why")
            m.replacebody("b\r\n")
            m.progress()
            return Milter.ACCEPT
        Recorder.at_eom = at_eom
        r = self.eom()
        self.assertEqual(self.replies[0].verdict, pb.VERDICT_PROGRESS)
        self.assertEqual(self.replies[0].event_id, 20)
        self.assertEqual(r.verdict, pb.VERDICT_ACCEPT)
        mods = [(m.WhichOneof("modification"), getattr(m, m.WhichOneof("modification"))) for m in r.modifications]
        kinds = [k for k, _ in mods]
        self.assertEqual(kinds, ["add_header", "insert_header", "change_header", "change_header",
                                 "add_recipient", "add_recipient", "delete_recipient", "change_from",
                                 "replace_body", "quarantine"])
        self.assertEqual((mods[1][1].index, mods[1][1].value), (0, b"2"))
        self.assertEqual((mods[2][1].index, mods[3][1].value), (2, b""))
        self.assertEqual(list(mods[5][1].args), ["NOTIFY=NEVER", "ORCPT=rfc822;p@x"])
        self.assertEqual(list(mods[7][1].args), ["RET=HDRS"])
        self.assertEqual(mods[8][1].body, b"a\r\nb\r\n")

    def test_actions_outside_eom_and_disabled(self):
        m = self.s.m
        with self.assertRaises(Milter.error):
            m.addheader("X", "y")
        m._actions = Milter.ADDHDRS
        with self.assertRaises(Milter.DisabledAction):
            m.chgfrom("<a@b>")
        with self.assertRaises(Milter.DisabledAction):
            m.addrcpt("<a@b>")

    def test_exception_policy(self):
        def boom(m):
            raise RuntimeError("bug")
        Recorder.at_eom = boom
        old = Milter._exception_policy
        try:
            sys.stderr, saved = open(os.devnull, "w"), sys.stderr
            for policy, want in ((Milter.TEMPFAIL, (pb.VERDICT_TEMPFAIL, 451)),
                                 (Milter.REJECT, (pb.VERDICT_REJECT, 554)),
                                 (Milter.CONTINUE, (pb.VERDICT_CONTINUE, 0)),
                                 (Milter.ACCEPT, (pb.VERDICT_ACCEPT, 0))):
                Milter.set_exception_policy(policy)
                r = self.eom()
                self.assertEqual((r.verdict, r.response.code), want)
            Recorder.at_eom = lambda m: None  # not a return code: the policy too
            Milter.set_exception_policy(Milter.TEMPFAIL)
            self.assertEqual(self.eom().verdict, pb.VERDICT_TEMPFAIL)
        finally:
            sys.stderr.close()
            sys.stderr = saved
            Milter._exception_policy = old
        with self.assertRaises(ValueError):
            Milter.set_exception_policy(Milter.DISCARD)

    def test_noreply_decorator_checks(self):
        m = self.s.m
        self.assertEqual(m.header("a", "b"), Milter.NOREPLY)  # negotiated: NOREPLY
        m._protocol = 0
        self.assertEqual(m.header("a", "b"), Milter.CONTINUE)  # not negotiated: as returned


class TargetTest(unittest.TestCase):
    def test_socket_names(self):
        T = S.grpc_target
        self.assertEqual(T("inet:8890@127.0.0.1"), "127.0.0.1:8890")
        self.assertEqual(T("inet:8890@localhost"), "localhost:8890")
        self.assertEqual(T("inet:8890"), "0.0.0.0:8890")
        self.assertEqual(T("inet6:8890"), "[::]:8890")
        self.assertEqual(T("inet6:8890@[2001:db8::1]"), "[2001:db8::1]:8890")
        self.assertEqual(T("inet6:8890@::1"), "[::1]:8890")
        self.assertEqual(T("unix:/run/m.sock", rmsock=False), "unix:/run/m.sock")
        self.assertEqual(T("local:/run/m.sock", rmsock=False), "unix:/run/m.sock")
        self.assertEqual(T("/run/m.sock", rmsock=False), "unix:/run/m.sock")
        self.assertEqual(T("127.0.0.1:50051"), "127.0.0.1:50051")
        self.assertEqual(T("[::1]:50051"), "[::1]:50051")
        with self.assertRaises(ValueError):
            T("inet:x@y")


class UtilsTest(unittest.TestCase):
    def test_parse_addr(self):
        for a, want in (("<user@example.com>", ["user", "example.com"]),
                        ("user@example.com", ["user", "example.com"]), ("<>", [""]),
                        ("<user>", ["user"]), ("<@route:u@x.org>", ["u", "x.org"]),
                        ('"a@b"@c.d', ["a@b", "c.d"]), ("<a@b@c>", ["a@b", "c"]), ("", [""])):
            self.assertEqual(parse_addr(a), want, a)

    def test_parseaddr(self):
        for t, want in (("Sender <sender@example.org>", ("Sender", "sender@example.org")),
                        ('"Doe, John" <j@d.e>', ("Doe, John", "j@d.e")),
                        ("j@d.e (John Doe)", ("John Doe", "j@d.e")), ("Jim <jim@x.org", ("Jim", "jim@x.org")),
                        ("<>", ("", "")), ("a@b, c@d", ("", "")), ("", ("", ""))):
            self.assertEqual(parseaddr(t), want, t)

    def test_parse_header(self):
        self.assertEqual(parse_header("=?utf-8?q?caf=C3=A9?= x"), "café x")
        self.assertEqual(parse_header("plain"), "plain")

    def test_helpers(self):
        self.assertEqual(Milter.param2dict(["SIZE=10", "body=8BITMIME", "SMTPUTF8"]),
                         {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None})
        self.assertEqual(Milter.dictfromlist(["SIZE=10", "X"]), {"SIZE": "10"})
        self.assertEqual(Milter.envcallback(lambda a, *p, **kw: (a, p, kw), ["<a>", "X", "SIZE=1"]),
                         ("<a>", ("X",), {"SIZE": "1"}))
        a, b = Milter.uniqueID(), Milter.uniqueID()
        self.assertEqual(b, a + 1)


class ConstantsTest(unittest.TestCase):
    def test_same_values_as_pymilter(self):
        try:
            import milter  # pymilter's C module (python3-milter)
        except ImportError:
            self.skipTest("python3-milter is not installed")
        names = [n for n in dir(milter) if n.isupper() and isinstance(getattr(milter, n), int)]
        self.assertGreater(len(names), 40)
        for n in names:
            self.assertEqual(getattr(Milter, n), getattr(milter, n), n)


class ServerTest(unittest.TestCase):
    """run() in a thread on 127.0.0.1:0, then Milter.stop(): Describe, Session, health,
    the max_sessions limit (no MTA, no gateway: the gRPC side only)."""

    def serve(self, factory, max_sessions=1000):
        import grpc
        import queue
        import threading
        from miltergw.v1 import filter_pb2_grpc
        from miltergw._std import health_pb2
        old = (Milter.factory, Milter.max_sessions)
        Milter.factory, Milter.max_sessions = factory, max_sessions
        ready = queue.Queue()
        t = threading.Thread(target=S.run, args=("unit", "127.0.0.1:0"), kwargs={"ready": ready.put})
        t.start()

        def done():
            Milter.stop()
            t.join(30)
            Milter.factory, Milter.max_sessions = old
            self.assertFalse(t.is_alive())
        self.addCleanup(done)
        port = ready.get(timeout=30)
        ch = grpc.insecure_channel("127.0.0.1:%d" % port)
        self.addCleanup(ch.close)
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb2.HealthCheckResponse.FromString)
        return grpc, filter_pb2_grpc.FilterStub(ch), check, health_pb2

    def test_session_over_grpc(self):
        grpc, stub, check, hpb = self.serve(Recorder)
        self.assertEqual(check(hpb.HealthCheckRequest(), timeout=10).status, hpb.HealthCheckResponse.SERVING)
        d = stub.Describe(pb.DescribeRequest(), timeout=10)
        self.assertEqual(d.name, "unit")
        Recorder.log = []
        events = [pb.Event(start=pb.SessionStart(effective=d)),
                  ev(1, helo=pb.Helo(name="h")), ev(2, rcpt=pb.RcptTo(address="<bad@x>")),
                  ev(3, header=pb.Header(name="A", value=b"b")), ev(4, {"i": "Q"}, eom=pb.EndOfMessage())]
        replies = list(stub.Session(iter(events), timeout=10))
        self.assertEqual([(r.event_id, r.verdict) for r in replies],
                         [(1, pb.VERDICT_CONTINUE), (2, pb.VERDICT_REJECT), (4, pb.VERDICT_CONTINUE)])
        self.assertEqual(Recorder.log[-1], ("close",))

    def test_max_sessions_refuses_at_once(self):
        grpc, stub, check, hpb = self.serve(Recorder, max_sessions=1)
        import queue
        q = queue.Queue()
        q.put(pb.Event(start=pb.SessionStart()))
        q.put(ev(1, helo=pb.Helo(name="h")))
        first = stub.Session(iter(q.get, None), timeout=30)
        self.assertEqual(next(first).event_id, 1)  # the first stream is open
        with self.assertRaises(grpc.RpcError) as e:
            list(stub.Session(iter([pb.Event(start=pb.SessionStart())]), timeout=10))
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        q.put(None)  # half-close the first one: it ends normally
        self.assertEqual(list(first), [])


class Gated(Milter.Base):
    """Per instance: its hello names, in order; a hello "wait" blocks until `gate` is set."""
    gate = None
    closed = []

    def __init__(self):
        self.seen = []

    def hello(self, name):
        self.seen.append(name)
        if name == "wait":
            type(self).gate.wait(30)
        return Milter.REJECT if name == "no" else Milter.CONTINUE

    def close(self):
        type(self).closed.append(tuple(self.seen))


class DemuxTest(unittest.TestCase):
    """A multiplexed stream's sessions (Milter.multiplexed), fed by hand."""

    def setUp(self):
        import queue
        import threading
        Gated.gate, Gated.closed = threading.Event(), []
        self.out = queue.Queue()
        self.d = S.Demux(self.out.put, factory=Gated, name="gated")
        self.addCleanup(self.d.close)
        self.eff = S.describe("gated", Gated)

    def start(self, sid):
        self.d.event(pb.Event(session=sid, start=pb.SessionStart(effective=self.eff)))

    def hello(self, sid, eid, name):
        self.d.event(pb.Event(session=sid, event_id=eid, helo=pb.Helo(name=name)))

    def replies(self, n):
        return [self.out.get(timeout=10) for _ in range(n)]

    def test_describes_multiplexed_when_asked(self):
        self.assertFalse(S.describe("x", Gated).multiplexed)
        old, Milter.multiplexed = Milter.multiplexed, True
        try:
            self.assertTrue(S.describe("x", Gated).multiplexed)
        finally:
            Milter.multiplexed = old

    def test_sessions_get_their_own_instance_in_order_and_replies_name_them(self):
        self.start(7)
        self.start(9)
        self.hello(7, 1, "a")
        self.hello(9, 1, "no")
        self.hello(7, 2, "b")
        got = sorted((r.session, r.event_id, r.verdict) for r in self.replies(3))
        self.assertEqual(got, [(7, 1, pb.VERDICT_CONTINUE), (7, 2, pb.VERDICT_CONTINUE),
                               (9, 1, pb.VERDICT_REJECT)])
        # A session ends with its SessionEnd (close() called); the stream with the rest.
        self.d.event(pb.Event(session=9, end=pb.SessionEnd(reason="")))
        self.d.close()
        self.assertEqual(sorted(Gated.closed), [("a", "b"), ("no",)])

    def test_a_blocked_session_holds_back_only_itself(self):
        self.start(1)
        self.start(2)
        self.hello(1, 1, "wait")
        self.hello(1, 2, "after")
        self.hello(2, 1, "other")
        r = self.replies(1)[0]
        self.assertEqual((r.session, r.event_id), (2, 1))
        Gated.gate.set()
        self.assertEqual([(r.session, r.event_id) for r in self.replies(2)], [(1, 1), (1, 2)])

    def test_batches_may_mix_sessions(self):
        self.start(3)
        self.start(4)
        self.d.event(pb.Event(batch=pb.EventBatch(events=[
            pb.Event(session=4, event_id=5, helo=pb.Helo(name="x")),
            pb.Event(session=3, event_id=6, helo=pb.Helo(name="y"))])))
        got = sorted((r.session, r.event_id) for r in self.replies(2))
        self.assertEqual(got, [(3, 6), (4, 5)])

    def test_past_max_sessions_every_answer_is_tempfail(self):
        old, Milter.max_sessions = Milter.max_sessions, 1
        self.addCleanup(setattr, Milter, "max_sessions", old)
        self.start(1)
        self.start(2)  # one too many: no instance, answered TEMPFAIL 451 4.3.2
        self.hello(2, 1, "x")
        r = self.replies(1)[0]
        self.assertEqual((r.session, r.verdict, r.response.code, r.response.enhanced_status),
                         (2, pb.VERDICT_TEMPFAIL, 451, "4.3.2"))
        self.d.event(pb.Event(session=1, end=pb.SessionEnd(reason="")))
        self.d.close()
        self.assertEqual(Gated.closed, [()])  # only the instance that was made
        # Its slot is free again.
        self.start(5)
        self.hello(5, 1, "z")
        self.assertEqual(self.replies(1)[0].verdict, pb.VERDICT_CONTINUE)


class StubsTest(unittest.TestCase):
    def test_generated_stubs_are_current(self):
        r = subprocess.run([sys.executable, os.path.join(SDK, "generate_stubs.py"), "--check"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout.decode())


if __name__ == "__main__":
    unittest.main()
