#!/usr/bin/python3
"""Real Postfix -> miltergw -> the C example filter (examples/c/policy_filter) -> smtp-sink.

Every policy of the example is checked on its outcome: the SMTP client's reply (swaks
transcript or smtplib), the delivered message and envelope (smtp-sink dump), the hold
queue (postqueue -j) and Postfix's maillog (milter-discard, milter-hold). A last test drives
many concurrent milter sessions straight at miltergw to exercise the example's helper library
(mgw_filter.c) with several worker threads. Multiplexed runs the example with --multiplexed
(mgw_filter.multiplexed): SMTP connections open at once share one Session stream, each
session with its own state and verdicts, a blocking session (session threads) holding back
no other, and every open session ending when the filter stops.

One private Postfix for the whole file. Each test gets its own 127.0.0.N source address and
miltergw port (Postfix picks the milter by client address through a cidr smtpd_milter_maps),
starts the example on a port of its own choosing (its first stdout line "port=N"), then
miltergw (which listens only once the filter answered Describe). After each test, miltergw
and the example must both exit 0 on SIGTERM and miltergw must have logged no level=error.

Usage: /usr/bin/python3 test_examples_c.py --miltergw PATH --example-c PATH [unittest options]
"""
import argparse
import os
import re
import smtplib
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import Proc, lf, make_message, queue_id, wait_for  # noqa: E402

EXAMPLE = None  # set from --example-c
BODY = b"Hello,\r\nthis is the original body.\r\n.a dot line\r\n"


class Example:
    """One policy_filter process on 127.0.0.1, port picked by itself."""

    def __init__(self, args, tmpdir):
        self.proc = Proc([EXAMPLE, "--listen", "127.0.0.1:0"] + list(args),
                         os.path.join(tmpdir, "example.log"), name="policy_filter").start()
        rx = re.compile(r"^port=(\d+)$", re.M)
        m = wait_for(lambda: rx.search(self.proc.log_text()) or not self.proc.alive(), 10,
                     lambda: "policy_filter to print port=N; output:\n%s" % self.proc.log_tail())
        if m is True or not hasattr(m, "group"):
            raise AssertionError("policy_filter exited with %s before listening:\n%s"
                                 % (self.proc.p.returncode, self.proc.log_tail()))
        first = self.proc.log_text().splitlines()[0]
        if not re.match(r"^port=\d+$", first):
            raise AssertionError("first output line is %r, not port=N" % first)
        self.port = int(m.group(1))
        self.target = "127.0.0.1:%d" % self.port


class ExampleCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = mgwtest.make_tmpdir("exc")
        cls.pf, cls.slots = mgwtest.postfix_with_milter_per_test(cls, cls.tmp, 100)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def setUp(self):
        self.ip, self.gw_port = self.slots[self._testMethodName]
        self.dir = mgwtest.make_tmpdir("exc-%s" % self._testMethodName[:40])
        self.gw = self.ex = None
        self.addCleanup(self._stop_processes)

    def _stop_processes(self):
        mgwtest.stop_gateway_and(self.gw, self.ex.proc if self.ex is not None else None, "policy_filter")

    def start(self, *policy_args, gw_args=()):
        self.ex = Example(policy_args, self.dir)
        self.gw = mgwtest.Miltergw(args=["--filter", "ex=" + self.ex.target] + list(gw_args),
                                   tmpdir=self.dir, port=self.gw_port)

    def context(self):
        return "\n\n".join([
            "miltergw log:\n" + (self.gw.proc.log_tail(30) if self.gw else ""),
            "policy_filter output:\n" + (self.ex.proc.log_tail(10) if self.ex else ""),
            "maillog tail:\n" + self.pf.maillog()[-2500:]])

    # -- sending, from this test's source address
    def swaks(self, msg, to="rcpt@example.com", from_="sender@example.org"):
        rc, out = self.pf.swaks(to=to, from_=from_, data=msg, extra=["--local-interface", self.ip])
        return rc, out

    def send_ok(self, msg, **kw):
        """Send one message that must be accepted; returns its smtp-sink dump."""
        rc, out = self.swaks(msg, **kw)
        self.assertEqual(rc, 0, "swaks failed:\n%s\n\n%s" % (out, self.context()))
        return self.pf.wait_delivered_id(queue_id(out), timeout=30)

    def session(self, messages):
        """Transactions in one SMTP session: [(from, [rcpts], message)] ->
        [{"rcpt": [(code, text)], "data": (code, text) or None}]."""
        results = []
        with smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.example", timeout=30,
                          source_address=(self.ip, 0)) as s:
            s.ehlo()
            for mail_from, rcpts, msg in messages:
                self.assertEqual(s.mail(mail_from)[0], 250)
                res = {"rcpt": [_txt(s.rcpt(r)) for r in rcpts], "data": None}
                if any(c == 250 for c, _ in res["rcpt"]):
                    res["data"] = _txt(s.data(msg))
                else:
                    s.rset()
                results.append(res)
        return results


def _txt(r):
    return r[0], r[1].decode("utf-8", "replace") if isinstance(r[1], bytes) else r[1]


def swaks_reply(transcript, command):
    """The last reply line of the server to the client line starting with `command`."""
    lines = transcript.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith(" -> ") and ln[4:].startswith(command) and (command != "." or ln[4:] == "."):
            for r in lines[i + 1:]:
                m = re.match(r"^<(?:-|\*\*) +(\d{3} .*)$", r)
                if m:
                    return m.group(1)
    return None


class Policies(ExampleCase):
    def test_01_accept(self):
        self.start("accept")
        msg, hdrs, body = make_message("accept", BODY)
        got = self.send_ok(msg)
        self.assertEqual(got.headers[1:], hdrs)
        self.assertEqual(got.body, lf(body))
        self.gw.wait_log(msg="verdict", event="CONNECT", verdict="accept", decided_by="ex")

    def test_02_reject_subject(self):
        self.start("reject-subject", "forbidden")
        cases = [  # subject, rejected?
            ("this is FoRbIdDeN here", True),
            ("a folded subject\n\twith the word FORBIDDEN on its second line", True),
            ("a folded subject\n\tthat is fine", False),
            ("forbid den is not the word", False),
        ]
        for subject, rejected in cases:
            msg, hdrs, body = make_message(subject, BODY, headers=[("X-Other", "forbidden")])
            if rejected:
                rc, out = self.swaks(msg)
                self.assertNotEqual(rc, 0, out)
                self.assertEqual(swaks_reply(out, "."), "550 5.7.1 Subject contains forbidden word",
                                 "%r\n%s\n%s" % (subject, out, self.context()))
            else:
                got = self.send_ok(msg)
                self.assertEqual(got.header("Subject"), subject)
                self.assertEqual(got.body, lf(body))

    def test_03_tempfail_rcpt(self):
        self.start("tempfail-rcpt", "later@example.com")
        msg, hdrs, body = make_message("tempfail rcpt", BODY)
        res = self.session([("sender@example.org", ["now@example.com", "<Later@Example.COM>"], msg)])[0]
        self.assertEqual(res["rcpt"][0][0], 250, res)
        self.assertEqual(res["rcpt"][1], (451, "4.7.1 Recipient temporarily refused"),
                         "%r\n%s" % (res, self.context()))
        self.assertEqual(res["data"][0], 250, res)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]), timeout=30)
        self.assertEqual(got.rcpts, ["now@example.com"])
        self.assertEqual(got.headers[1:], hdrs)

    def test_04_addheader(self):
        self.start("addheader", "X-Example-C", "added by the C example")
        msg, hdrs, body = make_message("addheader", BODY)
        got = self.send_ok(msg)
        self.assertEqual(got.headers[1:], hdrs + [("X-Example-C", "added by the C example")])
        self.assertEqual(got.body, lf(body))

    def test_05_rewrite_body(self):
        self.start("rewrite-body", "The body was replaced by the C example.")
        msg, hdrs, body = make_message("rewrite body", BODY)
        got = self.send_ok(msg)
        self.assertEqual(got.body, b"The body was replaced by the C example.\n")
        self.assertEqual(got.headers[1:], hdrs)

    def test_06_quarantine(self):
        self.start("quarantine", "held by the C example")
        msg, _, _ = make_message("quarantine", BODY)
        rc, out = self.swaks(msg)
        self.assertEqual(rc, 0, out)
        qid = queue_id(out)
        wait_for(lambda: [e for e in self.pf.hold_queue() if e.get("queue_id") == qid], 15,
                 lambda: "%s in the hold queue; queue: %r\n%s" % (qid, self.pf.queue(), self.context()))
        self.pf.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE " % qid, 15)
        self.assertNotRegex(self.pf.maillog(), r" %s: to=<" % qid)

    def test_07_chgfrom(self):
        self.start("chgfrom", "changed@example.net")
        got = self.send_ok(make_message("chgfrom", BODY)[0])
        self.assertEqual(got.mail_from, "changed@example.net")
        self.assertEqual(got.rcpts, ["rcpt@example.com"])

    def test_08_addrcpt(self):
        self.start("addrcpt", "added@example.net")
        got = self.send_ok(make_message("addrcpt", BODY)[0])
        self.assertEqual(sorted(got.rcpts), ["added@example.net", "rcpt@example.com"])
        self.assertEqual(got.mail_from, "sender@example.org")

    def test_09_delrcpt(self):
        self.start("delrcpt", "gone@example.com")
        got = self.send_ok(make_message("delrcpt", BODY)[0], to="kept@example.com,Gone@EXAMPLE.com")
        self.assertEqual(got.rcpts, ["kept@example.com"])

    def test_10_discard(self):
        self.start("discard")
        rc, out = self.swaks(make_message("discard", BODY)[0])
        self.assertEqual(rc, 0, out)
        self.assertRegex(swaks_reply(out, "."), r"^250 ")
        qid = queue_id(out)
        self.pf.wait_maillog(r" %s: milter-discard: END-OF-MESSAGE " % re.escape(qid), 15)
        self.assertEqual([e for e in self.pf.queue() if e.get("queue_id") == qid], [])
        self.assertNotRegex(self.pf.maillog(), r" %s: to=<" % re.escape(qid))
        rx = re.compile(r"\bid %s\b" % re.escape(qid))
        self.assertEqual([m for m in self.pf.delivered()
                          if any(n == "Received" and rx.search(v) for n, v in m.headers)], [])

    def test_11_macros(self):
        self.start("macros")
        m1, h1, _ = make_message("macros one", BODY)
        m2, h2, _ = make_message("macros two", BODY)
        res = self.session([("first@example.org", ["rcpt1@example.com"], m1),
                            ("second@example.org", ["rcpt2@example.com"], m2)])
        for n, (r, hdrs, sender, rcpt) in enumerate(zip(res, (h1, h2), ("first@example.org", "second@example.org"),
                                                        ("rcpt1@example.com", "rcpt2@example.com"))):
            self.assertEqual(r["data"][0], 250, r)
            qid = queue_id(r["data"][1])
            got = self.pf.wait_delivered_id(qid, timeout=30)
            added = [(k, v) for k, v in got.headers if k.startswith("X-Macro-")]
            names = [k for k, _ in added]
            self.assertEqual(got.headers[1:1 + len(hdrs)], hdrs)
            self.assertEqual(len(names), len(set(names)), "duplicate macro headers: %r" % added)
            d = dict(added)
            want = ["X-Macro-" + n for n in ("j", "daemon_name", "daemon_addr", "v", "_", "mail_addr",
                                             "mail_host", "mail_mailer", "rcpt_addr", "rcpt_host",
                                             "rcpt_mailer", "i")]
            self.assertEqual(sorted(d), sorted(want), "message %d: %r\n%s" % (n + 1, added, self.context()))
            self.assertEqual(d["X-Macro-j"], "mgwtest.localdomain")
            self.assertEqual(d["X-Macro-daemon_addr"], "127.0.0.1")
            self.assertIn(self.ip, d["X-Macro-_"])
            self.assertEqual(d["X-Macro-mail_addr"], sender)  # the second message's, not the first's
            self.assertEqual(d["X-Macro-rcpt_addr"], rcpt)
            self.assertEqual(d["X-Macro-i"], qid)
            self.assertEqual(d["X-Macro-mail_mailer"], "smtp")

    def test_12_concurrent_sessions(self):
        """Many simultaneous milter sessions (no Postfix) against the example with 4 worker
        threads: every session gets its own macros back, in order, nothing lost or mixed.
        Then SIGTERM while the sessions' streams are still open: a clean, quick exit 0."""
        self.start("--threads", "4", "macros")
        errors, conns = [], []

        def one(n):
            try:
                with mgwtest.MilterConn("127.0.0.1", self.gw_port) as c:
                    _, _, proto, _ = c.negotiate()
                    for m in range(3):
                        qid = "Q%dM%d" % (n, m)
                        stages = mgwtest.postfix_like_stages(qid)
                        if m:  # connect is once per connection
                            stages = [s for s in stages if s[0] not in ("connect", "helo")]
                        stages = [s if s[0] != "mail" else
                                  (s[0], s[1], [("{mail_addr}", "s%d.%d@example.org" % (n, m))]) + s[3:]
                                  for s in stages]
                        c.run_stages(proto, stages[:-1])
                        c.send(mgwtest.macro("E", [("i", qid)]) + mgwtest.frame("E"))
                        mods = []
                        while True:
                            cmd, data = c.read_reply(timeout=20)
                            if cmd != "h":
                                break
                            mods.append(tuple(x.decode() for x in data.split(b"\0")[:2]))
                        got = dict(mods)
                        if cmd != "c" or got.get("X-Macro-i") != qid or \
                                got.get("X-Macro-mail_addr") != "s%d.%d@example.org" % (n, m) or \
                                got.get("X-Macro-j") != "mx.example" or len(mods) != 8:
                            errors.append("session %d message %d: final %r, mods %r" % (n, m, cmd, mods))
                            return
                    conns.append(c.sock.dup())  # keep the milter connection, and so its stream, open
            except Exception as e:  # report, do not hang the others
                errors.append("session %d: %r" % (n, e))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [], self.context())
        try:
            t0 = time.monotonic()
            self.assertEqual(self.ex.proc.stop(), 0, self.ex.proc.log_tail())
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            for c in conns:
                c.close()


class Multiplexed(ExampleCase):
    """policy_filter --multiplexed behind miltergw with one worker loop, so that SMTP
    connections share a Session call. miltergw makes a session's part of the call at the
    first event the filter gets, and a call takes sessions for about a second: each test
    has its connections reach the filter together (their DATA at once, Postfix holding back
    the events it needs no answer for until then). The example prints "start", "end" (and
    "delay") lines naming each session and its stream (mgw_session_stream())."""

    serving = ()  # more options for the example, before the policy

    def start(self, *policy_args):
        super().start("--multiplexed", *self.serving, *policy_args, gw_args=("--workers", "1"))

    def connections(self, n):
        """n SMTP connections to Postfix open at once (EHLO answered on each)."""
        return mgwtest.smtp_connections(self, self.pf.host, self.pf.port, n, self.ip)

    def envelopes(self, conns, senders, rcpts):
        """MAIL FROM on every connection, then RCPT TO on every one."""
        for c, a in zip(conns, senders):
            self.assertEqual(c.mail(a)[0], 250, self.context())
        for c, a in zip(conns, rcpts):
            self.assertEqual(c.rcpt(a)[0], 250, self.context())

    def data_at_once(self, conns, subjects):
        """Every connection's DATA at the same time: [(code, text)]."""
        results = [None] * len(conns)
        go = threading.Barrier(len(conns))

        def data(i):
            try:
                go.wait(10)
                results[i] = _txt(conns[i].data(make_message(subjects[i], BODY)[0]))
            except Exception as e:  # reported by the caller, without hanging the others
                results[i] = (0, repr(e))

        threads = [threading.Thread(target=data, args=(i,)) for i in range(len(conns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    def lines(self, what):
        """[(session id, stream)] of the example's "WHAT session=ID stream=N" lines."""
        rx = re.compile(r"^%s session=(\S+) stream=(\d+)" % what, re.M)
        return rx.findall(self.ex.proc.log_text())

    def wait_lines(self, what, count):
        return wait_for(lambda: len(self.lines(what)) >= count and self.lines(what), 15,
                        lambda: "%d %r lines; output:\n%s" % (count, what, self.ex.proc.log_tail()))

    def one_stream(self, n):
        """The n sessions started so far (n distinct ids) share one stream."""
        starts = self.wait_lines("start", n)
        self.assertEqual(len({sid for sid, _ in starts}), n, starts)
        self.assertEqual(len({stream for _, stream in starts}), 1,
                         "sessions on several streams: %r\n%s" % (starts, self.context()))
        return starts

    def test_1_connections_share_a_stream_each_with_its_own_state(self):
        # `macros` keeps per-session state (Connect's macros, the message's).
        self.start("macros")
        conns = self.connections(4)
        senders = ["s%d@example.org" % i for i in range(4)]
        rcpts = ["r%d@example.com" % i for i in range(4)]
        self.envelopes(conns, senders, rcpts)
        results = self.data_at_once(conns, ["mux %d" % i for i in range(4)])
        for i, (code, text) in enumerate(results):
            self.assertEqual(code, 250, "connection %d: %s\n%s" % (i, text, self.context()))
            got = self.pf.wait_delivered_id(queue_id(text), timeout=30)
            added = [(k, v) for k, v in got.headers if k.startswith("X-Macro-")]
            d = dict(added)
            self.assertEqual(len(d), len(added), "duplicate macro headers: %r" % added)
            self.assertEqual((d.get("X-Macro-mail_addr"), d.get("X-Macro-rcpt_addr"), d.get("X-Macro-i")),
                             (senders[i], rcpts[i], queue_id(text)),
                             "connection %d: %r\n%s" % (i, added, self.context()))
            self.assertEqual(d.get("X-Macro-j"), "mgwtest.localdomain", added)
        starts = self.one_stream(4)
        # A session ends at its own SessionEnd (on_close), while the stream goes on.
        self.assertEqual(self.lines("end"), [])
        conns[0].quit()
        ends = self.wait_lines("end", 1)
        self.assertIn(ends[0], starts)
        self.assertEqual(len(self.lines("end")), 1, self.ex.proc.log_tail())
        for c in conns[1:]:
            c.quit()
        self.assertEqual(sorted(self.wait_lines("end", 4)), sorted(starts))

    def test_2_with_worker_threads_sessions_keep_their_own_verdicts(self):
        # Half of the messages carry the forbidden word: each session's Subject flag (set
        # at HEADER, read at EOM) must stay its own while four workers run the sessions.
        self.start("--threads", "4", "reject-subject", "forbidden")
        conns = self.connections(6)
        self.envelopes(conns, ["sender@example.org"] * 6, ["rcpt@example.com"] * 6)
        subjects = ["FoRbIdDeN number %d" % i if i % 2 == 0 else "clean number %d" % i for i in range(6)]
        for i, (code, text) in enumerate(self.data_at_once(conns, subjects)):
            if i % 2 == 0:
                self.assertEqual((code, text), (550, "5.7.1 Subject contains forbidden word"),
                                 "%r\n%s" % (subjects[i], self.context()))
            else:
                self.assertEqual(code, 250, "%r: %s\n%s" % (subjects[i], text, self.context()))
                got = self.pf.wait_delivered_id(queue_id(text), timeout=30)
                self.assertEqual(got.header("Subject"), subjects[i])
        self.one_stream(6)
        for c in conns:
            c.quit()
        self.wait_lines("end", 6)

    def test_3_a_blocking_session_holds_back_no_other(self):
        # With session threads, slow's callback sleeps 5 s at MAIL FROM; fast, on the same
        # stream, sends a whole message meanwhile.
        self.blocking_session("--session-threads")

    def test_4_with_worker_threads_a_blocking_session_holds_back_no_other(self):
        # The same without session threads: the other worker runs fast's session.
        self.blocking_session("--threads", "2")

    def blocking_session(self, *serving):
        self.start(*serving, "--delay-mail", "slow@example.org", "5000", "addheader", "X-Mux", "yes")
        slow, fast = self.connections(2)
        out = {}

        def slow_mail():
            t0 = time.monotonic()
            try:
                out["code"] = slow.mail("slow@example.org")[0]
            except Exception as e:
                out["code"] = repr(e)
            out["secs"] = time.monotonic() - t0

        t = threading.Thread(target=slow_mail)
        t.start()
        self.addCleanup(t.join, 30)
        self.wait_lines("delay", 1)  # its callback is blocked now
        t0 = time.monotonic()
        self.envelopes([fast], ["fast@example.org"], ["rcpt@example.com"])
        code, text = _txt(fast.data(make_message("fast", BODY)[0]))
        fast_secs = time.monotonic() - t0
        self.assertEqual(code, 250, "%s\n%s" % (text, self.context()))
        self.assertTrue(t.is_alive(), "slow's MAIL FROM was answered after %r s, before the fast "
                        "message was through (%.1f s)\n%s" % (out.get("secs"), fast_secs, self.context()))
        self.assertLess(fast_secs, 4, self.context())
        self.one_stream(2)
        got = self.pf.wait_delivered_id(queue_id(text), timeout=30)
        self.assertIn(("X-Mux", "yes"), got.headers)
        t.join(30)
        self.assertEqual(out.get("code"), 250, "%r\n%s" % (out, self.context()))
        self.assertGreater(out["secs"], 4.5, out)
        self.assertEqual(slow.rcpt("rcpt@example.com")[0], 250, self.context())
        code, text = _txt(slow.data(make_message("slow", BODY)[0]))
        self.assertEqual(code, 250, "%s\n%s" % (text, self.context()))
        got = self.pf.wait_delivered_id(queue_id(text), timeout=30)
        self.assertIn(("X-Mux", "yes"), got.headers)
        fast.quit()
        slow.quit()
        self.wait_lines("end", 2)

    def test_5_stopping_the_filter_ends_every_open_session(self):
        # Three connections still open when the example gets SIGTERM: its stream is
        # cancelled, and each session on it ends (on_close) before a clean exit.
        self.start("addheader", "X-Mux", "yes")
        conns = self.connections(3)
        self.envelopes(conns, ["sender@example.org"] * 3, ["rcpt@example.com"] * 3)
        for i, (code, text) in enumerate(self.data_at_once(conns, ["open %d" % i for i in range(3)])):
            self.assertEqual(code, 250, "%s\n%s" % (text, self.context()))
        starts = self.one_stream(3)
        self.assertEqual(self.lines("end"), [])
        self.assertEqual(self.ex.proc.stop(), 0, self.ex.proc.log_tail())
        self.assertEqual(sorted(self.lines("end")), sorted(starts), self.ex.proc.log_tail())

    def test_6_concurrent_sessions(self):
        # Policies.test_12 (40 milter connections straight at miltergw, three messages
        # each, then SIGTERM with the streams open) on multiplexed streams.
        Policies.test_12_concurrent_sessions(self)

    def test_7_concurrent_sessions_with_session_threads(self):
        self.serving = ("--session-threads",)
        Policies.test_12_concurrent_sessions(self)


class Unimplemented(unittest.TestCase):
    def test_unknown_method_is_unimplemented(self):
        try:
            import grpc
        except ImportError:
            raise unittest.SkipTest("python3-grpcio not installed")
        tmp = mgwtest.make_tmpdir("exc-unimpl")
        ex = Example(["accept"], tmp)
        try:
            with grpc.insecure_channel(ex.target) as ch:
                describe = ch.unary_unary("/miltergw.v1.Filter/Describe")(b"", timeout=5)
                self.assertIsInstance(describe, bytes)
                with self.assertRaises(grpc.RpcError) as cm:
                    ch.unary_unary("/miltergw.v1.Filter/NoSuchMethod")(b"", timeout=5)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
                # health: HealthCheckResponse{status: SERVING} is the bytes 08 01
                check = ch.unary_unary("/grpc.health.v1.Health/Check")
                self.assertEqual(check(b"", timeout=5), b"\x08\x01")
                self.assertEqual(check(b"\x0a\x12miltergw.v1.Filter", timeout=5), b"\x08\x01")
                # reflection: list_services (field 7) answers with every service name
                refl = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                answers = list(refl(iter([b"\x3a\x00"]), timeout=5))
                self.assertEqual(len(answers), 1)
                for name in (b"miltergw.v1.Filter", b"grpc.health.v1.Health",
                             b"grpc.reflection.v1alpha.ServerReflection"):
                    self.assertIn(name, answers[0])
        finally:
            self.assertEqual(ex.proc.stop(), 0, ex.proc.log_tail())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--example-c", default=os.environ.get("MGW_EXAMPLE_C"))
    args, rest = ap.parse_known_args()
    if not args.example_c or not os.access(args.example_c, os.X_OK):
        sys.stderr.write("usage: %s --miltergw PATH --example-c PATH [unittest options]\n" % sys.argv[0])
        sys.exit(2)
    EXAMPLE = os.path.abspath(args.example_c)
    mgwtest.main(rest)
