#!/usr/bin/python3
"""libmiltergw-milter (sdk/libmilter): unchanged libmilter milters as miltergw filters.

Each test milter of sdk/libmilter/tests is first built against Debian's real libmilter
(-lmilter: it is a valid libmilter program), then the very same source is built with
`cc SRC $(pkg-config --cflags --libs miltergw-milter)` against the build tree's .pc file.
The second binary then runs behind miltergw through a real Postfix, and every callback and
every smfi_* call is checked on its effect: the SMTP client's replies, the delivered message
and envelope (smtp-sink), the hold queue, Postfix's maillog, and the lines the milters print
on stdout. Without Postfix, a gRPC client checks Describe (built from the callbacks, flags
and xxfi_negotiate), health, reflection, smfi_stop, and that connections run in parallel.

One private Postfix for the Postfix tests; each gets its own 127.0.0.N client address and
miltergw port. Processes are stopped by PID; the milters must exit 0 on SIGTERM.

Usage: /usr/bin/python3 test_sdk_libmilter.py --miltergw PATH --pkg-config-path DIR
       --milter-src DIR [unittest options]
"""
import argparse
import importlib.util
import os
import queue
import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import Proc, lf, make_message, queue_id, wait_for  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PKG_CONFIG_PATH = None  # --pkg-config-path
MILTER_SRC = None       # --milter-src
MILTERS = ("milter_basic", "milter_mods", "milter_negotiate", "milter_unsupported")
BIN = {}                # name -> binary built with pkg-config miltergw-milter
BODY = b"Hello,\r\nthis is the original body.\r\n.a dot line\r\n"


def build_all(tmp):
    """Both builds of every test milter; raises with the compiler's output on failure."""
    cc = shutil.which("cc") or "/usr/bin/cc"
    env = dict(os.environ, PKG_CONFIG_PATH=PKG_CONFIG_PATH)
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "miltergw-milter"], env=env,
                        capture_output=True, text=True, timeout=30)
    if pc.returncode != 0:
        raise AssertionError("pkg-config miltergw-milter failed:\n" + pc.stderr)
    for name in MILTERS + ("tag_milter",):
        src = os.path.join(MILTER_SRC, name + ".c")
        if name == "tag_milter":  # the worked example of docs/filter-guide.md
            src = os.path.join(MILTER_SRC, "..", "examples", name + ".c")
        for kind, flags in (("libmilter", ["-lmilter", "-pthread"]), ("miltergw", pc.stdout.split())):
            out = os.path.join(tmp, "%s.%s" % (name, kind))
            r = subprocess.run([cc, "-Wall", "-Wextra", "-Werror", "-o", out, src] + flags,
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise AssertionError("building %s against %s failed:\n%s" % (name, kind, r.stderr))
        BIN[name] = os.path.join(tmp, name + ".miltergw")


def setUpModule():
    build_all(mgwtest.make_tmpdir("sdklm-build"))


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


class Milter:
    """One test milter process listening on 127.0.0.1:PORT (libmilter's inet:PORT@HOST)."""

    def __init__(self, name, tmpdir, spec=None, option="-p"):
        self.port = mgwtest.free_port()
        self.target = "127.0.0.1:%d" % self.port
        spec = spec or "inet:%d@127.0.0.1" % self.port
        self.proc = Proc([BIN[name]] + ([option, spec] if option else [spec]),
                         os.path.join(tmpdir, name + ".log"), name=name).start()
        wait_for(lambda: mgwtest.port_listening(self.port) or not self.proc.alive(), 10,
                 lambda: "%s to listen on %d; output:\n%s" % (name, self.port, self.proc.log_tail()))
        if not self.proc.alive():
            raise AssertionError("%s exited with %s:\n%s" % (name, self.proc.p.returncode,
                                                            self.proc.log_tail()))

    def lines(self):
        return self.proc.log_text().splitlines()

    def wait_line(self, rx, timeout=10):
        r = re.compile(rx)
        return wait_for(lambda: next((ln for ln in self.lines() if r.search(ln)), None), timeout,
                        lambda: "milter line /%s/; output:\n%s" % (rx, self.proc.log_tail()))


def _txt(r):
    return r[0], r[1].decode("utf-8", "replace") if isinstance(r[1], bytes) else r[1]


class ThroughPostfix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = mgwtest.make_tmpdir("sdklm")
        cls.pf, cls.slots = mgwtest.postfix_with_milter_per_test(cls, cls.tmp, 150)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def setUp(self):
        self.ip, self.gw_port = self.slots[self._testMethodName]
        self.dir = mgwtest.make_tmpdir("sdklm-%s" % self._testMethodName[:40])
        self.gw = self.m = None
        self.addCleanup(self._stop_processes)

    def _stop_processes(self):
        mgwtest.stop_gateway_and(self.gw, self.m.proc if self.m is not None else None, "milter")

    def start(self, name, **opts):
        self.m = Milter(name, self.dir)
        self.gw = mgwtest.Miltergw(args=["--filter", mgwtest.filter_arg("m", self.m.target, **opts)],
                                   tmpdir=self.dir, port=self.gw_port)

    def context(self):
        return "\n\n".join([
            "miltergw log:\n" + (self.gw.proc.log_tail(30) if self.gw else ""),
            "milter output:\n" + (self.m.proc.log_tail(20) if self.m else ""),
            "maillog tail:\n" + self.pf.maillog()[-2500:]])

    def smtp(self):
        s = smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.example", timeout=30,
                         source_address=(self.ip, 0))
        s.ehlo()
        return s

    def transaction(self, s, mail_from, rcpts, msg):
        res = mgwtest.smtp_transaction(s, mail_from, rcpts, msg)
        return res

    # -- milter_basic: smfi_addheader, smfi_setreply, smfi_setmlreply, priv, close
    def test_01_basic_header_and_refused_recipients(self):
        self.start("milter_basic")
        msg, hdrs, body = make_message("basic one", BODY, headers=[("X-Extra", "1")])
        with self.smtp() as s:
            res = self.transaction(s, "sender@example.org",
                                   ["ok@example.com", "refuse@example.com", "later@example.com"], msg)
        self.assertEqual(res["rcpt"][0][0], 250, res)
        self.assertEqual(res["rcpt"][1], (550, "5.7.1 recipient refused by milter_basic"),
                         "%r\n%s" % (res, self.context()))
        self.assertEqual(res["rcpt"][2], (451, "4.7.1 not now,\n4.7.1 try again later"),
                         "%r\n%s" % (res, self.context()))
        self.assertEqual(res["data"][0], 250, res)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]), timeout=30)
        self.assertEqual(got.rcpts, ["ok@example.com"])
        self.assertEqual(got.headers[1:], hdrs + [("X-Milter-Basic", "headers=%d subject=<basic one>" % len(hdrs))])
        self.assertEqual(got.body, lf(body))

    # -- milter_mods: every callback, every modification, getsymval, priv, progress, quarantine
    def test_02_mods_every_call(self):
        # EOM takes 0.7 s with a progress report every 0.35 s: only PROGRESS replies
        # keep it within a 0.5 s end-of-message deadline.
        self.start("milter_mods", eom_timeout="500ms")
        m1, h1, b1 = make_message("mods one", BODY, headers=[("X-Remove-Me", "bye"), ("X-Keep", "k")])
        m2, h2, b2 = make_message("please quarantine", BODY)
        with self.smtp() as s:
            r1 = self.transaction(s, "sender@example.org", ["ok@example.com", "gone@example.com"], m1)
            r2 = self.transaction(s, "second@example.org", ["ok@example.com"], m2)
            s.mail("third@example.org")  # a message abandoned: xxfi_abort
            s.rcpt("ok@example.com")
            s.rset()
        self.assertEqual(r1["data"][0], 250, "%r\n%s" % (r1, self.context()))
        qid1 = queue_id(r1["data"][1])
        got = self.pf.wait_delivered_id(qid1, timeout=30)
        self.assertEqual(got.mail_from, "changed@example.net")
        self.assertEqual(sorted(got.rcpts), ["added@example.net", "addedpar@example.net", "ok@example.com"])
        self.assertEqual(got.body, b"Replaced body,\nin two pieces.\n")
        self.assertEqual(got.headers[1], ("X-Mods-Inserted", "at index 1"), got.headers)
        self.assertEqual(got.header("Subject"), "changed by milter_mods")
        self.assertIsNone(got.header("X-Remove-Me"))
        self.assertEqual(got.header("X-Keep"), "k")
        info = got.header("X-Mods-Info")
        want = ("msg=1 host=\\S+ family=inet addr=%s helo=client.example from=<sender@example.org> "
                "nargs=\\d+ rcpts=<ok@example.com>,<gone@example.com> headers=%d eoh=1 data=1 "
                "bodylen=%d$" % (re.escape(self.ip), len(h1), len(b1)))
        self.assertRegex(info, want)
        macros = got.header("X-Mods-Macros")
        self.assertEqual(macros, "i=%s j=mgwtest.localdomain mail_addr=sender@example.org "
                                 "rcpt_addr=gone@example.com daemon_name=%s"
                         % (qid1, re.search(r"daemon_name=(\S+)", macros).group(1)))
        self.assertNotIn("daemon_name=(none)", macros)
        self.assertEqual(got.header("X-Mods-Checks"),
                         "outside_eom=refused bad_code=refused negative_index=refused")
        # the second message: state kept across messages (smfi_getpriv), quarantined
        self.assertEqual(r2["data"][0], 250, "%r\n%s" % (r2, self.context()))
        qid2 = queue_id(r2["data"][1])
        wait_for(lambda: [e for e in self.pf.hold_queue() if e.get("queue_id") == qid2], 15,
                 lambda: "%s in the hold queue; queue: %r\n%s" % (qid2, self.pf.queue(), self.context()))
        self.pf.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE " % qid2, 15)
        self.m.wait_line(r"^EOM msg=2\+ ok=1$")
        self.assertIn("EOM msg=1 ok=1", self.m.lines())
        self.m.wait_line(r"^CLOSE msgs=3$")
        # xxfi_abort once for the abandoned message (at RSET, or at the end of the
        # connection if Postfix sent no abort then), before xxfi_close
        self.assertEqual([ln for ln in self.m.lines() if ln in ("ABORT", "CLOSE msgs=3")],
                         ["ABORT", "CLOSE msgs=3"], self.context())
        self.assertRegex(self.m.lines()[0], r"^milter_mods: libmilter API 1\.0\.1$")
        self.assertRegex("\n".join(self.m.lines()), r"CONNECT host=\S+ family=inet addr=%s\n" % re.escape(self.ip))

    # -- milter_negotiate: xxfi_negotiate, setsymlist, NR_*/NOREPLY, NOHELO, unknown, verdicts
    def test_03_negotiate_observe_only_and_verdicts(self):
        self.start("milter_negotiate")
        msg, hdrs, body = make_message("negotiate", BODY)
        with self.smtp() as s:
            self.assertEqual(_txt(s.docmd("XYZZY")),
                             (550, "5.5.1 unknown command refused by milter_negotiate"))
            ok = self.transaction(s, "plain@example.org", ["ok@example.com"], msg)
            tf = self.transaction(s, "tempfail@example.org", ["ok@example.com"], msg)
            dc = self.transaction(s, "discard@example.org", ["ok@example.com"], msg)
            ac = self.transaction(s, "accept@example.org", ["ok@example.com"], msg)
        self.assertEqual(ok["data"][0], 250, "%r\n%s" % (ok, self.context()))
        got = self.pf.wait_delivered_id(queue_id(ok["data"][1]), timeout=30)
        self.assertEqual(got.header("X-Negotiate"),
                         "headers=%d mail_addr=plain@example.org auth_type=(none)" % len(hdrs))
        self.assertEqual(tf["data"], (451, "4.3.2 try again later, says milter_negotiate"),
                         "%r\n%s" % (tf, self.context()))
        self.assertEqual(dc["data"][0], 250, dc)
        self.pf.wait_maillog(r" %s: milter-discard: END-OF-MESSAGE " % re.escape(queue_id(dc["data"][1])), 15)
        got = self.pf.wait_delivered_id(queue_id(ac["data"][1]), timeout=30)
        self.assertIsNone(got.header("X-Negotiate"))
        lines = self.m.lines()
        self.assertIn("NEGOTIATE f0=0x1ff f1=0x1fffff f2=0x0 f3=0x0", lines)
        self.assertIn("UNKNOWN XYZZY", lines)
        self.assertTrue(any(ln.startswith("CONNECT ") for ln in lines), lines)
        self.assertFalse([ln for ln in lines if ln.startswith("HELO")], lines)


    # -- the guide's worked example, as the guide runs it
    def test_04_guide_example(self):
        self.m = Milter("tag_milter", self.dir, option=None)  # the spec as its only argument
        self.gw = mgwtest.Miltergw(args=["--filter", "tag=" + self.m.target], tmpdir=self.dir,
                                   port=self.gw_port)
        msg, hdrs, body = make_message("guide", BODY)
        with self.smtp() as s:
            spam = self.transaction(s, "bad@spam.example", ["ok@example.com"], msg)
            ok = self.transaction(s, "good@example.org", ["ok@example.com"], msg)
        self.assertEqual(spam["mail"], (550, "5.7.1 Sender refused"), spam)
        qid = queue_id(ok["data"][1])
        got = self.pf.wait_delivered_id(qid, timeout=30)
        self.assertEqual(got.headers[1:], hdrs + [("X-Tagged-By", "tag_milter, queue id %s" % qid)])


class GrpcDirect(unittest.TestCase):
    """The milters' gRPC side without Postfix: Describe, health, reflection, smfi_stop,
    parallel connections, unsupported start-ups."""

    @classmethod
    def setUpClass(cls):
        try:
            import grpc
        except ImportError:
            raise unittest.SkipTest("python3-grpcio not installed")
        cls.grpc = grpc
        cls.tmp = mgwtest.make_tmpdir("sdklm-grpc")
        stubs = mgwtest.generate_python_stubs(cls.tmp)
        sys.path.insert(0, stubs)
        from miltergw.v1 import filter_pb2
        cls.pb = filter_pb2
        std = os.path.join(cls.tmp, "std")
        os.mkdir(std)
        subprocess.run(["protoc", "-I", os.path.join(REPO, "examples", "c", "proto"), "--python_out=" + std,
                        "grpc/health/v1/health.proto", "grpc/reflection/v1alpha/reflection.proto"],
                       check=True, timeout=60)
        # loaded by path: a package named "grpc" would shadow grpcio
        cls.health = load_module(os.path.join(std, "grpc/health/v1/health_pb2.py"), "mgw_health_pb2")
        cls.refl = load_module(os.path.join(std, "grpc/reflection/v1alpha/reflection_pb2.py"),
                               "mgw_reflection_pb2")

    def setUp(self):
        self.dir = mgwtest.make_tmpdir("sdklm-g-%s" % self._testMethodName[:40])
        self.m = None

    def tearDown(self):
        if self.m is not None and self.m.proc.alive():
            self.m.proc.stop()

    def start(self, name, spec=None):
        self.m = Milter(name, self.dir, spec)
        self.ch = self.grpc.insecure_channel(self.m.target)
        self.addCleanup(self.ch.close)

    def describe(self):
        pb = self.pb
        call = self.ch.unary_unary("/miltergw.v1.Filter/Describe",
                                   request_serializer=pb.DescribeRequest.SerializeToString,
                                   response_deserializer=pb.Description.FromString)
        return call(pb.DescribeRequest(filter_name="t"), timeout=5)

    def health_check(self, service=""):
        h = self.health
        call = self.ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=h.HealthCheckRequest.SerializeToString,
                                   response_deserializer=h.HealthCheckResponse.FromString)
        return call(h.HealthCheckRequest(service=service), timeout=5).status

    def session(self):
        """An open Session stream: (send(event), replies iterator, close())."""
        pb = self.pb
        q = queue.Queue()

        def events():
            while True:
                ev = q.get()
                if ev is None:
                    return
                yield ev
        call = self.ch.stream_stream("/miltergw.v1.Filter/Session",
                                     request_serializer=pb.Event.SerializeToString,
                                     response_deserializer=pb.Reply.FromString)
        replies = call(events(), timeout=30)
        return q.put, replies, lambda: q.put(None)

    def start_event(self, desc):
        return self.pb.Event(start=self.pb.SessionStart(session_id="S1", effective=desc))

    def test_04_describe_from_callbacks_and_negotiate(self):
        pb = self.pb
        self.start("milter_negotiate")
        d = self.describe()
        self.assertEqual(d.name, "milter_negotiate")
        self.assertEqual(list(d.events), [pb.EVENT_TYPE_CONNECT, pb.EVENT_TYPE_MAIL, pb.EVENT_TYPE_HEADER,
                                          pb.EVENT_TYPE_EOM, pb.EVENT_TYPE_UNKNOWN])
        self.assertEqual(list(d.observe_only), [pb.EVENT_TYPE_CONNECT, pb.EVENT_TYPE_HEADER])
        self.assertEqual(list(d.actions), [pb.ACTION_ADD_HEADER])
        self.assertEqual([(m.stage, list(m.names)) for m in d.macros],
                         [(pb.EVENT_TYPE_MAIL, ["{mail_addr}", "{auth_type}"])])
        self.m.proc.stop()
        self.start("milter_mods")
        d = self.describe()
        self.assertEqual(list(d.events), list(range(pb.EVENT_TYPE_CONNECT, pb.EVENT_TYPE_EOM + 1)))
        self.assertEqual(list(d.observe_only), [])
        self.assertEqual(sorted(d.actions), sorted([
            pb.ACTION_ADD_HEADER, pb.ACTION_CHANGE_HEADER, pb.ACTION_REPLACE_BODY, pb.ACTION_ADD_RCPT,
            pb.ACTION_ADD_RCPT_WITH_ARGS, pb.ACTION_DELETE_RCPT, pb.ACTION_QUARANTINE,
            pb.ACTION_CHANGE_FROM]))

    def test_05_health_reflection_and_smfi_stop(self):
        pb, h = self.pb, self.health
        self.start("milter_negotiate")
        self.assertEqual(self.health_check(), h.HealthCheckResponse.SERVING)
        self.assertEqual(self.health_check("miltergw.v1.Filter"), h.HealthCheckResponse.SERVING)
        with self.assertRaises(self.grpc.RpcError) as cm:
            self.health_check("no.such.Service")
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.NOT_FOUND)

        # reflection, as grpcurl list / describe use it
        r = self.refl
        call = self.ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                     request_serializer=r.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=r.ServerReflectionResponse.FromString)
        answers = list(call(iter([r.ServerReflectionRequest(list_services=""),
                                  r.ServerReflectionRequest(file_containing_symbol="miltergw.v1.Filter"),
                                  r.ServerReflectionRequest(file_by_filename="grpc/health/v1/health.proto"),
                                  r.ServerReflectionRequest(file_containing_symbol="no.Such")]), timeout=5))
        self.assertEqual(sorted(s.name for s in answers[0].list_services_response.service),
                         ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                          "grpc.reflection.v1alpha.ServerReflection", "miltergw.v1.Filter"])
        from google.protobuf import descriptor_pb2
        fd = descriptor_pb2.FileDescriptorProto.FromString(answers[1].file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual((fd.name, fd.package, [s.name for s in fd.service]),
                         ("miltergw/v1/filter.proto", "miltergw.v1", ["Filter"]))
        self.assertEqual([m.name for m in fd.service[0].method], ["Describe", "Session"])
        fd = descriptor_pb2.FileDescriptorProto.FromString(answers[2].file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual(fd.package, "grpc.health.v1")
        self.assertEqual(answers[3].error_response.error_code, 5)

        # smfi_stop from a callback: NOT_SERVING while the open connection finishes, also
        # on a Watch stream (what a gateway's round_robin follows)
        watch = self.ch.unary_stream("/grpc.health.v1.Health/Watch",
                                     request_serializer=h.HealthCheckRequest.SerializeToString,
                                     response_deserializer=h.HealthCheckResponse.FromString)
        statuses = watch(h.HealthCheckRequest(service=""), timeout=30)
        self.assertEqual(next(statuses).status, h.HealthCheckResponse.SERVING)
        d = self.describe()
        send, replies, close = self.session()
        send(self.start_event(d))
        send(pb.Event(event_id=1, unknown=pb.Unknown(command="XSTOP")))
        rep = next(replies)
        self.assertEqual((rep.event_id, rep.verdict), (1, pb.VERDICT_CONTINUE))
        wait_for(lambda: self.health_check() == h.HealthCheckResponse.NOT_SERVING, 5,
                 "health NOT_SERVING after smfi_stop")
        self.assertEqual(next(statuses).status, h.HealthCheckResponse.NOT_SERVING)
        send2, replies2, close2 = self.session()
        with self.assertRaises(self.grpc.RpcError) as cm:
            next(replies2)
        self.assertEqual(cm.exception.code(), self.grpc.StatusCode.UNAVAILABLE)
        close2()
        self.assertTrue(self.m.proc.alive(), "smfi_main returned while a connection was open")
        close()
        self.assertEqual(list(replies), [])
        self.assertEqual(self.m.proc.wait_exit(10), 0, self.m.proc.log_tail())
        self.assertIn("smfi_main returned 0", self.m.lines())

    def test_06_connections_in_parallel(self):
        """milter_mods' xxfi_eom blocks 0.7 s: two connections' end of message overlap."""
        pb = self.pb
        self.start("milter_mods")
        d = self.describe()
        sessions = [self.session() for _ in range(2)]
        for send, _, _ in sessions:
            send(self.start_event(d))
            send(pb.Event(event_id=1, connect=pb.Connect(hostname="h", family=pb.FAMILY_INET,
                                                         address="192.0.2.1", port=25)))
            send(pb.Event(event_id=2, mail=pb.MailFrom(address="<a@example.org>")))
            send(pb.Event(event_id=3, eom=pb.EndOfMessage()))
        t0 = time.monotonic()
        done = []

        def collect(replies):
            finals = [r for r in (next(replies) for _ in range(5)) if r.verdict != pb.VERDICT_PROGRESS]
            done.append((time.monotonic() - t0, [(r.event_id, r.verdict) for r in finals],
                         [m.WhichOneof("modification") for m in finals[-1].modifications]))
        threads = [threading.Thread(target=collect, args=(s[1],)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(len(done), 2, done)
        for elapsed, finals, mods in done:
            self.assertEqual(finals, [(1, pb.VERDICT_CONTINUE), (2, pb.VERDICT_CONTINUE),
                                      (3, pb.VERDICT_CONTINUE)])
            self.assertEqual(mods, ["add_header"] * 3 + [
                "insert_header", "change_header", "change_header", "change_from", "add_recipient",
                "add_recipient", "delete_recipient", "replace_body"])
        self.assertLess(max(e for e, _, _ in done), 1.3, "end of message ran one after the other: %r" % done)
        for _, _, close in sessions:
            close()

    def test_07_connection_specs(self):
        """smfi_setconn's forms: libmilter's inet6:PORT@HOST and unix:PATH, gRPC's HOST:PORT."""
        port, port6 = mgwtest.free_port(), mgwtest.free_port()
        for spec, target in (("127.0.0.1:%d" % port, "127.0.0.1:%d" % port),
                             ("inet6:%d@::1" % port6, "ipv6:[::1]:%d" % port6),
                             ("unix:%s/m.sock" % self.dir, "unix:%s/m.sock" % self.dir),
                             ("local:%s/l.sock" % self.dir, "unix:%s/l.sock" % self.dir)):
            p = Proc([BIN["milter_negotiate"], "-p", spec], os.path.join(self.dir, "spec.log")).start()
            try:
                with self.grpc.insecure_channel(target) as ch:
                    self.grpc.channel_ready_future(ch).result(timeout=10)
                    desc = ch.unary_unary("/miltergw.v1.Filter/Describe",
                                          response_deserializer=self.pb.Description.FromString)(b"", timeout=5)
                    self.assertEqual(desc.name, "milter_negotiate", spec)
            finally:
                self.assertEqual(p.stop(), 0, spec)

    def test_08_unsupported_fails_at_start(self):
        cases = [("flags", "smfi_register failed", r"smfi_register: .*unsupported xxfi_flags bits 0x10000"),
                 ("mds", "smfi_main failed", r"xxfi_negotiate: asks for protocol steps 0x20000000"),
                 ("conn", "smfi_setconn failed", r"smfi_setconn: \"inet:notaport@127.0.0.1\""),
                 ("symlist", "smfi_main failed", r"smfi_setsymlist: used without SMFIF_SETSYMLIST")]
        for mode, line, rx in cases:
            r = subprocess.run([BIN["milter_unsupported"], mode, "127.0.0.1:%d" % mgwtest.free_port()],
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 3, "%s: %r" % (mode, r))
            self.assertEqual(r.stdout.strip(), line, mode)
            self.assertRegex(r.stderr, rx, mode)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--pkg-config-path")
    ap.add_argument("--milter-src", default=os.path.join(REPO, "sdk", "libmilter", "tests"))
    args, rest = ap.parse_known_args()
    if not args.pkg_config_path:
        sys.stderr.write("usage: %s --miltergw PATH --pkg-config-path DIR [--milter-src DIR]\n" % sys.argv[0])
        sys.exit(2)
    PKG_CONFIG_PATH = os.path.abspath(args.pkg_config_path)
    MILTER_SRC = os.path.abspath(args.milter_src)
    mgwtest.main(rest)
