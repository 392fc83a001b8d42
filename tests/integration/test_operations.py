#!/usr/bin/python3
"""Operations: miltergw run from a YAML file (-c FILE) behind a real Postfix.

Checks what an operator relies on: exact /metrics counters after a known sequence of mails,
/healthz and /readyz, SIGHUP reload under traffic (and a bad file that keeps the running
configuration), SIGTERM drain (a message in flight finishes, a connection between messages
carries one more, the exit follows the last session), TLS and mutual TLS to filters (and the failure policy when the
handshake cannot succeed), round_robin vs pick_first over a multi-address target, and
configuration errors from the binary (exit 2, FILE:LINE:).

One private Postfix for the whole module. Every test runs its own miltergw on a port
reserved in setUpModule; Postfix picks the milter by client address (`smtpd_milter_maps`
= cidr table: 127.0.0.N -> that test's miltergw) and each test sends from its own
127.0.0.N. The gateway's HTTP listener is on port 0; the real port comes from its
`msg=listening listen=http:HOST:PORT` line. After every test its miltergw must exit 0 on
SIGTERM (unless the test stopped it itself) with no `level=error` line, and its filters
exit 0.

Usage: /usr/bin/python3 test_operations.py --miltergw PATH --test-filter PATH
       [unittest options]
"""
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import MiltergwFile, TestFilter, make_message, wait_for, write_file, yaml_dump  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BODY = b"Hello,\r\nthis is an operations test.\r\n"

PF = None  # the module's PrivatePostfix
SLOTS = {}  # "Class.test_method" -> (127.0.0.N source address, miltergw port)


def _test_classes():
    return [c for c in globals().values()
            if isinstance(c, type) and issubclass(c, OpsCase) and c is not OpsCase]


def setUpModule():
    global PF
    if not mgwtest.TEST_FILTER:
        raise unittest.SkipTest("no --test-filter PATH given")
    PF, slots = mgwtest.postfix_with_milter_per_test(_test_classes(), mgwtest.make_tmpdir("ops"),
                                                     10, qualify=True)
    SLOTS.update(slots)


def tearDownModule():
    if PF is not None:
        PF.stop()



class OpsCase(unittest.TestCase):
    """Per test: a 127.0.0.N source address, a miltergw port, a temp dir, the filters and
    the gateway the test starts (stopped and checked in cleanup)."""

    def setUp(self):
        self.ip, self.gw_port = SLOTS["%s.%s" % (type(self).__name__, self._testMethodName)]
        self.dir = mgwtest.make_tmpdir("ops-%s" % self._testMethodName[:40])
        self.gw = None
        self.gw_stopped = False  # the test stopped the gateway itself and checked it
        self.filters = []
        self.config_path = os.path.join(self.dir, "miltergw.yaml")
        self.addCleanup(self._stop_processes)

    def _stop_processes(self):
        mgwtest.stop_and_check(self.gw, self.filters, self.gw_stopped)

    # -- processes
    def filter(self, *args, name="a"):
        f = TestFilter(args, tmpdir=self.dir, name=name)
        self.filters.append(f)
        return f

    def config(self, filters, **top):
        """The configuration dict: this test's milter port, HTTP on port 0, drain 10s."""
        cfg = {"listen": ["inet:127.0.0.1:%d" % self.gw_port],
               "http": {"listen": "127.0.0.1:0", "ready": "any"},
               "log": {"level": "info", "format": "logfmt"},
               "drain_timeout": "10s"}
        cfg.update(top)
        if filters:
            cfg["filters"] = filters
        return cfg

    def write_config(self, cfg):
        write_file(self.config_path, yaml_dump(cfg) + "\n")
        return self.config_path

    def gateway(self, cfg):
        self.write_config(cfg)
        self.gw = MiltergwFile(self.config_path, tmpdir=self.dir, port=self.gw_port)
        return self.gw

    # -- sending (from this test's source address)
    def session(self, messages, helo="client.example", ip=None):
        """Transactions in one SMTP session (mgwtest.smtp_session_at())."""
        return mgwtest.smtp_session_at(PF.host, PF.port, messages, helo, timeout=30,
                                       source_ip=ip or self.ip)

    def send_one(self, subject, from_="sender@example.org", to=("rcpt@example.com",)):
        msg, _, _ = make_message(subject, BODY)
        return self.session([(from_, list(to), msg)])[0]

    def wait_subjects(self, subjects, timeout=30):
        """Wait until a message with each Subject reached smtp-sink; {subject: SinkMessage}."""
        want = set(subjects)

        def found():
            got = {m.header("Subject"): m for m in PF.delivered() if m.header("Subject") in want}
            return got if len(got) == len(want) else None
        return wait_for(found, timeout, lambda: "delivery of %d messages; missing: %s\n%s"
                        % (len(want), sorted(want - {m.header("Subject") for m in PF.delivered()})[:10],
                           self.context()))

    def assertDeliveredReply(self, res):
        self.assertEqual(res["mail"][0], 250, "%r\n%s" % (res, self.context()))
        self.assertTrue(res["data"] and res["data"][0] == 250, "%r\n%s" % (res, self.context()))
        return mgwtest.queue_id(res["data"][1])

    def assertTempfailed(self, res):
        codes = [res["mail"][0]] + [c for c, _ in res["rcpt"]] + \
            ([res["data_cmd"]] if res["data_cmd"] not in (None, 354) else []) + \
            ([res["data"][0]] if res["data"] else [])
        self.assertIn(451, codes, "%r\n%s" % (res, self.context()))
        self.assertFalse(res["data"] and res["data"][0] == 250, "delivered: %r" % (res,))

    def context(self):
        parts = []
        if self.gw is not None:
            parts.append("miltergw log:\n" + self.gw.proc.log_tail(40))
        for f in self.filters:
            parts.append("filter %s output:\n%s\nrecords (tail):\n%s"
                         % (f.name, f.proc.log_tail(10), f.record_text()[-1500:]))
        parts.append("maillog tail:\n" + PF.maillog()[-2500:])
        return "\n\n".join(parts)


# =========================================================================================
# Metrics: exact counters after a known sequence of mails


class OpsMetrics(OpsCase):
    FILTERS = ("main", "rej", "quar", "disc", "slow")

    def test_exact_counters(self):
        main = self.filter("--add-header", "X-Main:yes", "--tempfail-rcpt", "later@example.com",
                           "--code", "451", "--xcode", "4.7.1", "--text", "later", name="main")
        rej = self.filter("--only-from", "rej@example.org", "--reject-at", "mail", "--code", "550",
                          "--xcode", "5.7.1", "--text", "sender refused", name="rej")
        quar = self.filter("--only-from", "quar@example.org", "--quarantine", "held for review",
                           name="quar")
        disc = self.filter("--only-from", "disc@example.org", "--discard-at", "eom", name="disc")
        slow = self.filter("--only-from", "slow@example.org", "--delay-at", "eom", "--delay-ms", "3000",
                           name="slow")
        self.gateway(self.config([
            {"name": "main", "target": main.target},
            {"name": "rej", "target": rej.target},
            {"name": "quar", "target": quar.target},
            {"name": "disc", "target": disc.target},
            {"name": "slow", "target": slow.target, "on_error": "accept", "eom_timeout": "1s"},
        ]))
        gw = self.gw
        # every filter described and its channel READY before any mail
        wait_for(lambda: all(gw.metric("miltergw_filter_channel_ready", filter=n) == 1
                             for n in self.FILTERS), 10, lambda: "every channel READY\n" + self.context())

        # 8 SMTP sessions, one transaction each
        sent = {}
        for i in range(3):
            sent["ok%d" % i] = self.send_one("metrics ok %d" % i)
        sent["rej"] = self.send_one("metrics rej", from_="rej@example.org")
        sent["tmp"] = self.send_one("metrics tempfail rcpt", to=("now@example.com", "later@example.com"))
        sent["quar"] = self.send_one("metrics quarantine", from_="quar@example.org")
        sent["disc"] = self.send_one("metrics discard", from_="disc@example.org")
        sent["slow"] = self.send_one("metrics slow", from_="slow@example.org")

        ctx = lambda: "%r\n%s" % (sent, self.context())  # noqa: E731
        for k in ("ok0", "ok1", "ok2", "tmp", "quar", "disc", "slow"):
            self.assertDeliveredReply(sent[k])
        self.assertEqual(sent["rej"]["mail"], (550, "5.7.1 sender refused"), ctx())
        self.assertEqual([c for c, _ in sent["tmp"]["rcpt"]], [250, 451], ctx())
        got = self.wait_subjects(["metrics ok 0", "metrics ok 1", "metrics ok 2",
                                  "metrics tempfail rcpt", "metrics slow"])
        for subj, m in got.items():
            self.assertEqual(m.header("X-Main"), "yes", subj)
        self.assertEqual(got["metrics tempfail rcpt"].rcpts, ["now@example.com"])
        qid = mgwtest.queue_id(sent["quar"]["data"][1])
        wait_for(lambda: [e for e in PF.hold_queue() if e.get("queue_id") == qid], 15,
                 lambda: "%s in the hold queue\n%s" % (qid, self.context()))
        PF.wait_maillog(r" %s: milter-discard: " % mgwtest.queue_id(sent["disc"]["data"][1]), 15)
        gw.wait_log(msg="filter failed", filter="slow", reason="timeout", event="BODYEOB")

        # the gateway counts a session closed when Postfix's QUIT arrives: wait for all 8
        wait_for(lambda: gw.metric("miltergw_sessions_closed_total", reason="quit") == 8
                 and gw.metric("miltergw_sessions_open") == 0, 15,
                 lambda: "8 sessions closed by quit; metrics:\n%s\n%s" % (gw.http("/metrics")[1][:3000], ctx()))
        m = gw.metrics()
        v = lambda name, **labels: gw.metric(name, metrics=m, **labels)  # noqa: E731
        problems = []

        def expect(want, name, **labels):
            got = v(name, **labels)
            if got != want:
                problems.append("%s%r = %r, expected %r" % (name, labels, got, want))

        expect(8, "miltergw_sessions_total")
        expect(0, "miltergw_sessions_open")
        for reason in ("quit", "eof", "truncated", "idle_timeout", "io_error", "frame_empty",
                       "frame_too_big", "unknown_command", "malformed", "out_of_order",
                       "unsupported_version", "shutdown", "other"):
            expect(8 if reason == "quit" else 0, "miltergw_sessions_closed_total", reason=reason)
        # count_message(): every end of message, plus refusals before it (the MAIL reject);
        # the recipient-level tempfail is not a message verdict (that message was delivered
        # to its other recipient: continue); the slow filter failed open (accept ranks
        # below continue); a quarantined delivery counts as quarantine instead of continue
        for verdict, want in (("accept", 0), ("continue", 5), ("reject", 1), ("tempfail", 0),
                              ("discard", 1), ("quarantine", 1)):
            expect(want, "miltergw_messages_total", verdict=verdict)
        for name in ("miltergw_bytes_in_total", "miltergw_bytes_out_total"):
            if not (v(name) or 0) > 0:
                problems.append("%s = %r, expected > 0" % (name, v(name)))
        expect(0, "miltergw_config_reloads_total", result="ok")
        expect(0, "miltergw_config_reloads_total", result="failed")
        expect(0, "miltergw_draining")
        # Every filter declares every event and gets each one (fan-out happens before any
        # answer): 8 connect/helo/mail, 8 rcpt (3 ok + 2 + quar + disc + slow; none after
        # the MAIL reject), 7 data/eoh/body/eom (all but the rejected one).
        hdrs = None
        for f in self.FILTERS:
            for ev, want in (("connect", 8), ("helo", 8), ("mail", 8), ("rcpt", 8), ("data", 7),
                             ("eoh", 7), ("body", 7), ("eom", 7), ("unknown", 0)):
                expect(want, "miltergw_filter_events_total", filter=f, event=ev)
            h = v("miltergw_filter_events_total", filter=f, event="header")
            hdrs = h if hdrs is None else hdrs
            if h != hdrs or not h or h % 7:
                problems.append("filter_events_total{%s,header} = %r (others %r; 7 messages)" % (f, h, hdrs))
            expect(1, "miltergw_filter_channel_ready", filter=f)
            for kind in ("unavailable", "stream_broken", "stream_closed", "timeout", "out_of_contract",
                         "queue_full"):
                expect(1 if (f, kind) == ("slow", "timeout") else 0,
                       "miltergw_filter_errors_total", filter=f, kind=kind)
            expect(1 if f == "slow" else 0, "miltergw_filter_failure_policy_total", filter=f,
                   action="fail_open")
            expect(0, "miltergw_filter_failure_policy_total", filter=f, action="fail_closed")
            # answers observed: 95 answered events (8 x connect helo mail rcpt, 7 x data eoh
            # body eom, 35 headers), slow's timed-out EOM not among them; the discard settles
            # its EOM at once, and that session ends, so another filter's answers to that
            # message's content and EOM may come too late to be observed (a busy machine
            # showed all of them late: the filters answer pipelined content at their pace)
            answered = 8 * 4 + 7 * 4 + (hdrs or 0) - (1 if f == "slow" else 0)
            low = answered if f == "disc" else answered - ((hdrs or 0) // 7 + 3)
            count = v("miltergw_filter_latency_seconds_count", filter=f)
            if count is None or not low <= count <= answered:
                problems.append("filter_latency_seconds_count{%s} = %r, expected %d..%d" % (f, count, low, answered))
        # the headers each filter saw: as many per message as main's record shows
        main_hdrs = len(main.find("header"))
        expect(float(main_hdrs), "miltergw_filter_events_total", filter="main", event="header")
        # aborts are Postfix's to send (here only at the RSET after the MAIL reject): every
        # filter whose stream is still up gets each one, as its own record shows
        for f in (main, rej, quar, disc):
            expect(float(len(f.find("abort"))), "miltergw_filter_events_total", filter=f.name, event="abort")
        if problems:
            self.fail("metrics differ:\n  " + "\n  ".join(problems) + "\n\n" + ctx())


class OpsMetricsMessageEnds(OpsCase):
    """A message accepted or discarded before its end: one filter (reloaded for each
    stage, so that no other filter keeps the MTA talking) answers ACCEPT or DISCARD at
    MAIL, RCPT, DATA or end of message. messages_total must count each message once,
    under that verdict (metrics.h: "every message counts once")."""

    STAGES = ("mail", "rcpt", "data", "eom")

    def test_accept_and_discard_before_the_end(self):
        fs = {(verdict, st): self.filter("--%s-at" % verdict, st, name="%s-%s" % (verdict, st))
              for verdict in ("accept", "discard") for st in self.STAGES}
        gw = self.gateway(self.config([{"name": "x", "target": fs["accept", "mail"].target}]))
        missed = []
        for (verdict, st), f in fs.items():
            self.write_config(self.config([{"name": "x", "target": f.target}]))
            self.assertEqual(gw.reload().get("msg"), "configuration reloaded", self.context())
            before = gw.metric("miltergw_messages_total", verdict=verdict)
            res = self.send_one("%s at %s" % (verdict, st))
            self.assertDeliveredReply(res)  # (a discarded message gets 250 too)
            gw.wait_log(msg="verdict", event={"mail": "MAIL", "rcpt": "RCPT", "data": "DATA",
                                              "eom": "BODYEOB"}[st], verdict=verdict)
            # a verdict before the end has Postfix close the milter connection: wait for it
            wait_for(lambda: gw.metric("miltergw_sessions_open") == 0, 10, "the session to close")
            if gw.metric("miltergw_messages_total", verdict=verdict) != before + 1:
                missed.append("%s at %s" % (verdict, st))
        m = gw.metrics()
        self.assertEqual(missed, [], "messages not counted in miltergw_messages_total:\n%s"
                         % "\n".join(l for l in gw.http("/metrics")[1].splitlines() if "messages_total{" in l))
        self.assertEqual(gw.metric("miltergw_messages_total", metrics=m, verdict="accept"), 4)
        self.assertEqual(gw.metric("miltergw_messages_total", metrics=m, verdict="discard"), 4)


# =========================================================================================
# Health endpoints


class OpsHealth(OpsCase):

    def test_1_healthz_readyz_any(self):
        f = self.filter("--add-header", "X-H:yes")
        gw = self.gateway(self.config([{"name": "a", "target": f.target}]))
        self.assertEqual(gw.http("/healthz"), (200, "ok\n"))
        wait_for(lambda: gw.http("/readyz") == (200, "ready\n"), 10,
                 lambda: "/readyz 200; got %r\n%s" % (gw.http("/readyz"), self.context()))
        self.assertEqual(gw.metric("miltergw_filter_channel_ready", filter="a"), 1)
        self.assertEqual(gw.http("/nothing-here")[0], 404)
        # the only filter goes away: not ready, with the reason; still healthy
        f.stop()
        wait_for(lambda: gw.http("/readyz")[0] == 503, 15,
                 lambda: "/readyz 503 after the filter stopped; got %r\n%s" % (gw.http("/readyz"), self.context()))
        self.assertEqual(gw.http("/readyz"), (503, "not ready: 0 of 1 filter channels ready\n"))
        self.assertEqual(gw.http("/healthz"), (200, "ok\n"))
        self.assertEqual(gw.metric("miltergw_filter_channel_ready", filter="a"), 0)

    def test_2_readyz_all_and_none(self):
        f = self.filter()
        dead = "127.0.0.1:%d" % mgwtest.free_port()
        filters = [{"name": "up", "target": f.target}, {"name": "down", "target": dead, "on_error": "accept"}]
        cfg = self.config(filters)
        cfg["http"]["ready"] = "all"
        gw = self.gateway(cfg)
        wait_for(lambda: gw.metric("miltergw_filter_channel_ready", filter="up") == 1, 10,
                 lambda: "channel up READY\n" + self.context())
        self.assertEqual(gw.http("/readyz"), (503, "not ready: 1 of 2 filter channels ready\n"))
        # any: one READY is enough (through a reload, which also applies http.ready)
        cfg["http"]["ready"] = "any"
        self.write_config(cfg)
        self.assertEqual(gw.reload().get("msg"), "configuration reloaded", self.context())
        wait_for(lambda: gw.http("/readyz") == (200, "ready\n"), 10,
                 lambda: "/readyz 200 with ready: any; got %r\n%s" % (gw.http("/readyz"), self.context()))
        cfg["http"]["ready"] = "none"
        cfg["filters"] = [{"name": "down", "target": dead, "on_error": "accept"}]
        self.write_config(cfg)
        self.assertEqual(gw.reload().get("msg"), "configuration reloaded", self.context())
        wait_for(lambda: gw.http("/readyz") == (200, "ready\n"), 10,
                 lambda: "/readyz 200 with ready: none; got %r\n%s" % (gw.http("/readyz"), self.context()))


# =========================================================================================
# Reload under traffic


class OpsWorkers(OpsCase):
    """`workers: N` runs sessions on N loops, connections given in turn; the connection
    limit, the session ids and the metrics are the process's, not a loop's."""

    def greet(self, c):
        c.negotiate()
        self.assertEqual(c.command(mgwtest.connect_frame())[0], "c")

    def test_connections_go_to_every_loop_in_turn_under_one_limit(self):
        f = self.filter()
        gw = self.gateway(self.config([{"name": "a", "target": f.target}], workers=3,
                                      log={"level": "debug", "format": "logfmt"},
                                      limits={"max_connections": 5}))
        conns = []
        self.addCleanup(lambda: [c.close() for c in conns])
        for _ in range(5):
            c = mgwtest.MilterConn("127.0.0.1", self.gw_port)
            conns.append(c)
            self.greet(c)  # adopted and answered: the next one comes after it
        opened = gw.find_log(msg="session opened")
        self.assertEqual([r["worker"] for r in opened], ["0", "1", "2", "0", "1"], self.context())
        self.assertEqual(len({r["sid"] for r in opened}), 5, opened)

        # The sixth would be the second on loop 2, which has one: the limit is the process's.
        extra = mgwtest.MilterConn("127.0.0.1", self.gw_port)
        self.addCleanup(extra.close)
        with self.assertRaises((EOFError, ConnectionError)):
            extra.negotiate()
        gw.wait_log(msg="connection refused", reason="max_connections")

        for c in conns:
            self.assertEqual(c.command(mgwtest.frame("M", mgwtest.cstr("<s@example.org>")))[0], "c")
        f.wait_record("mail", count=5)
        self.assertEqual(len(f.sessions()), 5, f.record_text())
        self.assertEqual(gw.metric("miltergw_sessions_open"), 5)

        # A session that ends on one loop frees a place for a connection on another.
        conns.pop(0).close()
        wait_for(lambda: gw.metric("miltergw_sessions_open") == 4, 10, "sessions_open 4")
        c = mgwtest.MilterConn("127.0.0.1", self.gw_port)
        conns.append(c)
        self.greet(c)
        for c in conns:
            c.close()
        wait_for(lambda: gw.metric("miltergw_sessions_open") == 0, 10, "sessions_open 0")
        self.assertEqual(gw.metric("miltergw_sessions_total"), 6)

    def test_a_reload_keeps_the_loops_and_switches_every_one(self):
        fa = self.filter(name="a")
        fb = self.filter(name="b")
        log = {"level": "debug", "format": "logfmt"}
        gw = self.gateway(self.config([{"name": "a", "target": fa.target}], workers=2, log=log))
        self.write_config(self.config([{"name": "b", "target": fb.target}], workers=3, log=log))
        mark = gw.log_mark()
        rec = gw.reload()
        self.assertEqual(rec["msg"], "configuration reloaded", self.context())
        self.assertTrue(gw.find_log(since=mark, msg="worker count changes need a restart",
                                    workers="2"), self.context())
        for _ in range(3):  # loops 0, 1, 0: each of them on the new filter
            with mgwtest.MilterConn("127.0.0.1", self.gw_port) as c:
                self.greet(c)
        opened = gw.find_log(since=mark, msg="session opened")
        self.assertEqual([r["worker"] for r in opened], ["0", "1", "0"], self.context())
        fb.wait_record("connect", count=3)
        self.assertEqual(fa.find("connect"), [], fa.record_text())


class OpsReload(OpsCase):
    WORKERS = 4
    MIN_MAILS = 40

    def test_reload_under_traffic(self):
        fa = self.filter("--add-header", "X-A:yes", name="a")
        fb = self.filter("--add-header", "X-B:yes", name="b")
        gw = self.gateway(self.config([{"name": "a", "target": fa.target}]))
        wait_for(lambda: gw.metric("miltergw_filter_channel_ready", filter="a") == 1, 10, "channel a READY")

        lock = threading.Lock()
        done = []  # (subject, monotonic time the SMTP connection was opened, result or exception)
        stop = threading.Event()
        counter = [0]

        def worker(w):
            while not stop.is_set():
                with lock:
                    counter[0] += 1
                    subject = "reload %d" % counter[0]
                msg, _, _ = make_message(subject, BODY)
                t_open = time.monotonic()
                try:
                    res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
                except Exception as e:  # recorded, asserted below
                    res = e
                with lock:
                    done.append((subject, t_open, res))

        def count_after(t):
            with lock:
                return sum(1 for _, t_open, _ in done if t_open > t)

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(self.WORKERS)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(done) >= 8, 30, lambda: "8 mails before the reload\n" + self.context())
            # swap the filter list: a -> b
            self.write_config(self.config([{"name": "b", "target": fb.target}]))
            rec = gw.reload()
            t_reloaded = time.monotonic()  # the log line was seen by now
            self.assertEqual(rec.get("msg"), "configuration reloaded", self.context())
            self.assertEqual(rec.get("filters"), "1")
            wait_for(lambda: count_after(t_reloaded) >= 12, 30, "12 mails after the reload")
            # a broken file: refused with file:line, the running configuration stays
            write_file(self.config_path, yaml_dump(self.config(
                [{"name": "b", "target": fb.target, "timeout": "10x"}])) + "\n")
            rec = gw.reload()
            t_failed = time.monotonic()
            self.assertEqual(rec.get("msg"), "reload failed, keeping the running configuration",
                             self.context())
            self.assertEqual(rec.get("level"), "error")
            self.assertRegex(rec.get("error", ""), r"^%s:\d+: filters\[0\]\.timeout: "
                             % re.escape(self.config_path), rec)
            wait_for(lambda: count_after(t_failed) >= 8 and len(done) >= self.MIN_MAILS, 30,
                     "8 mails after the failed reload and %d in all" % self.MIN_MAILS)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "a sender thread hangs")

        bad = [(s, r) for s, _, r in done
               if isinstance(r, Exception) or r["mail"][0] != 250 or [c for c, _ in r["rcpt"]] != [250]
               or not r["data"] or r["data"][0] != 250]
        self.assertEqual(bad, [], "mails not accepted during the reloads\n" + self.context())
        got = self.wait_subjects([s for s, _, _ in done], timeout=60)
        which = {}
        for s, t_open, _ in done:
            m = got[s]
            a, b = m.header("X-A"), m.header("X-B")
            self.assertTrue((a is None) != (b is None), "%s: X-A=%r X-B=%r (exactly one expected)" % (s, a, b))
            which[s] = "b" if b else "a"
            if t_open > t_reloaded:
                self.assertEqual(which[s], "b", "%s: SMTP session opened after `configuration reloaded` "
                                 "was logged, but filter a added its header" % s)
        n_a = sum(1 for x in which.values() if x == "a")
        n_b = len(which) - n_a
        self.assertGreater(n_a, 0)
        self.assertGreater(n_b, 0)

        # the error line is a reload failure, not a gateway fault: leave it out of the
        # cleanup's level=error check, which looks at the rest
        m = gw.metrics()
        self.assertEqual(gw.metric("miltergw_config_reloads_total", metrics=m, result="ok"), 1)
        self.assertEqual(gw.metric("miltergw_config_reloads_total", metrics=m, result="failed"), 1)
        # filter a left with the reload: its series are gone; b saw exactly the X-B mails
        self.assertIsNone(gw.metric("miltergw_filter_events_total", metrics=m, filter="a", event="eom"))
        self.assertEqual(gw.metric("miltergw_filter_events_total", metrics=m, filter="b", event="eom"), n_b)
        self.assertEqual(len(fb.find("eom")), n_b)
        self.assertEqual(len(fa.find("eom")), n_a)
        self.gw.stop(expect=0)
        self.gw_stopped = True
        errors = [l for l in self.gw.error_lines() if "msg=\"reload failed" not in l]
        self.gw = None
        self.assertEqual(errors, [])


# =========================================================================================
# Drain on SIGTERM


class OpsDrain(OpsCase):

    def test_1_message_in_flight_finishes(self):
        f = self.filter("--delay-at", "eom", "--delay-ms", "1500", "--add-header", "X-Drain:done")
        gw = self.gateway(self.config([{"name": "a", "target": f.target}]))
        wait_for(lambda: gw.http("/readyz")[0] == 200, 10, "/readyz 200")
        result = {}

        def send():
            try:
                result["res"] = self.send_one("drain in flight")
            except Exception as e:
                result["res"] = e
            result["t"] = time.monotonic()

        th = threading.Thread(target=send, daemon=True)
        th.start()
        try:
            f.wait_record("eom", timeout=15)
            t_term = time.monotonic()
            gw.signal(signal.SIGTERM)
            status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(gw.http("/readyz")), 1,
                                    lambda: "/readyz 503 right after SIGTERM\n" + self.context())
            self.assertEqual(body, "not ready: draining\n")
            self.assertNotIn("res", result, "the message was over before /readyz was checked")
            self.assertEqual(gw.metric("miltergw_draining"), 1)
        finally:
            th.join(30)
        res = result.get("res")
        self.assertNotIsInstance(res, Exception, repr(res))
        self.assertDeliveredReply(res)
        self.assertGreaterEqual(result["t"] - t_term, 1.0, "the answer came before the filter's delay")
        rc = gw.proc.wait_exit(10)
        took = time.monotonic() - t_term
        self.gw_stopped = True
        self.assertEqual(rc, 0, self.context())
        self.assertLess(took, 10, "exit beyond drain_timeout")
        self.assertTrue(gw.has_log(msg="drained"), self.context())
        self.assertFalse(gw.has_log(msg="drain timeout"), self.context())
        m = self.wait_subjects(["drain in flight"])["drain in flight"]
        self.assertEqual(m.header("X-Drain"), "done")

    def test_2_connection_between_messages_carries_another_then_exit(self):
        # A drain must not close an SMTP session between messages: Postfix would give its
        # next message milter_default_action (451). It goes on until the client quits.
        f = self.filter("--add-header", "X-Drain:done")
        gw = self.gateway(self.config([{"name": "a", "target": f.target}]))
        s = smtplib.SMTP(PF.host, PF.port, local_hostname="idle.example", timeout=30,
                         source_address=(self.ip, 0))
        try:
            s.ehlo()
            f.wait_record("helo", timeout=10)
            self.assertEqual(gw.metric("miltergw_sessions_open"), 1)
            gw.signal(signal.SIGTERM)
            wait_for(lambda: gw.has_log(msg="stopping"), 5, "the stopping log line")
            msg, _, _ = make_message("after the drain began", BODY)
            refused = s.sendmail("sender@example.org", ["rcpt@example.com"], msg)
            self.assertEqual(refused, {})
            self.assertTrue(gw.proc.alive(), "exited with an SMTP session open\n" + self.context())
            t0 = time.monotonic()
            s.quit()
            rc = gw.proc.wait_exit(5)
            took = time.monotonic() - t0
            self.gw_stopped = True
        finally:
            s.close()
        self.assertEqual(rc, 0, self.context())
        self.assertLess(took, 2, "the exit waited beyond the last session\n" + self.context())
        self.assertTrue(gw.has_log(msg="drained"), self.context())
        self.assertFalse(gw.has_log(msg="drain timeout"), self.context())
        m = self.wait_subjects(["after the drain began"])["after the drain began"]
        self.assertEqual(m.header("X-Drain"), "done")


# =========================================================================================
# TLS to filters


TLS_DETAIL = re.compile(r"ssl|tls|handshake|certificat|x509|alert", re.I)


class OpsTls(OpsCase):
    """One TLS filter and one mutual-TLS filter for the class; a gateway per test."""

    @classmethod
    def setUpClass(cls):
        cls.pki_dir = mgwtest.make_tmpdir("ops-pki")
        cls.pki = mgwtest.make_tls_files(cls.pki_dir, "filter.test")
        cls.tls = TestFilter(["--tls-cert", cls.pki["server.pem"], "--tls-key", cls.pki["server.key"],
                              "--add-header", "X-Tls:yes"], tmpdir=cls.pki_dir, name="tls")
        cls.mtls = TestFilter(["--tls-cert", cls.pki["server.pem"], "--tls-key", cls.pki["server.key"],
                               "--tls-client-ca", cls.pki["ca.pem"], "--add-header", "X-Mtls:yes"],
                              tmpdir=cls.pki_dir, name="mtls")

    @classmethod
    def tearDownClass(cls):
        problems = []
        for f in (cls.tls, cls.mtls):
            try:
                f.stop()
            except AssertionError as e:
                problems.append(str(e))
        if problems:
            raise AssertionError("\n".join(problems))

    def context(self):
        return super().context() + "\n\nfilter outputs:\n%s\n%s" % (self.tls.proc.log_tail(10),
                                                                     self.mtls.proc.log_tail(10))

    def tls_gateway(self, target, tls, on_error="tempfail"):
        f = {"name": "a", "target": target, "on_error": on_error}
        if tls is not None:
            f["tls"] = tls
        return self.gateway(self.config([f]))

    def deliver(self, subject):
        res = self.send_one(subject)
        self.assertDeliveredReply(res)
        return self.wait_subjects([subject])[subject]

    def assertFailureLogged(self, tls_detail=True):
        """A warning that names filter a: describe failed / unavailable / failed, and (if
        tls_detail) some line about filter a with a TLS-ish detail."""
        want = ("filter describe failed", "filter unavailable", "filter failed")
        recs = wait_for(lambda: [r for r in self.gw.records() if r.get("filter") == "a" and r.get("msg") in want],
                        10, lambda: "a filter failure line\n" + self.context())
        if tls_detail:
            details = [r.get("detail", "") for r in self.gw.records() if r.get("filter") == "a"]
            self.assertTrue(any(TLS_DETAIL.search(d) for d in details),
                            "no line about filter a says what went wrong with TLS: %r\n%s"
                            % (details, self.context()))
        return recs

    def test_1_tls(self):
        self.tls_gateway(self.tls.target, {"ca": self.pki["ca.pem"], "server_name": "filter.test"})
        m = self.deliver("tls ok")
        self.assertEqual(m.header("X-Tls"), "yes", self.context())
        self.assertTrue(self.gw.has_log(msg="filter described", filter="a"), self.context())

    def test_2_mutual_tls(self):
        self.tls_gateway(self.mtls.target, {"ca": self.pki["ca.pem"], "cert": self.pki["client.pem"],
                                            "key": self.pki["client.key"], "server_name": "filter.test"})
        m = self.deliver("mtls ok")
        self.assertEqual(m.header("X-Mtls"), "yes", self.context())

    def test_3_wrong_ca_on_error_accept(self):
        self.tls_gateway(self.tls.target, {"ca": self.pki["other-ca.pem"], "server_name": "filter.test"},
                         on_error="accept")
        m = self.deliver("tls wrong ca accept")
        self.assertIsNone(m.header("X-Tls"))
        self.assertFailureLogged()

    def test_4_wrong_ca_on_error_tempfail(self):
        self.tls_gateway(self.tls.target, {"ca": self.pki["other-ca.pem"], "server_name": "filter.test"})
        self.assertTempfailed(self.send_one("tls wrong ca tempfail"))
        self.assertFailureLogged()

    # Without a client certificate the TLS 1.3 handshake completes on the client side
    # before the server refuses it: gRPC reports only "Socket closed", so no TLS detail
    # is asked for in these two.
    def test_5_mtls_without_client_cert(self):
        self.tls_gateway(self.mtls.target, {"ca": self.pki["ca.pem"], "server_name": "filter.test"})
        self.assertTempfailed(self.send_one("mtls no client cert tempfail"))
        self.assertFailureLogged(tls_detail=False)
        self.assertEqual(self.gw.metric("miltergw_filter_channel_ready", filter="a"), 0)

    def test_6_mtls_without_client_cert_on_error_accept(self):
        self.tls_gateway(self.mtls.target, {"ca": self.pki["ca.pem"], "server_name": "filter.test"},
                         on_error="accept")
        m = self.deliver("mtls no client cert accept")
        self.assertIsNone(m.header("X-Mtls"))
        self.assertFailureLogged(tls_detail=False)

    def test_7_plaintext_gateway_tls_filter(self):
        self.tls_gateway(self.tls.target, None, on_error="accept")
        m = self.deliver("plaintext to tls accept")
        self.assertIsNone(m.header("X-Tls"))
        self.assertFailureLogged(tls_detail=False)


# =========================================================================================
# Load balancing over a multi-address target


class OpsLoadBalancing(OpsCase):
    CONNECTIONS = 10

    def run_lb(self, policy):
        f1 = self.filter("--add-header", "X-Lb:1", name="one")
        f2 = self.filter("--add-header", "X-Lb:2", name="two")
        conf = {"name": "lb", "target": "ipv4:127.0.0.1:%d,127.0.0.1:%d" % (f1.port, f2.port)}
        if policy:
            conf["load_balancing"] = policy
        gw = self.gateway(self.config([conf]))
        wait_for(lambda: gw.metric("miltergw_filter_channel_ready", filter="lb") == 1, 10, "channel READY")
        subjects = []
        for i in range(self.CONNECTIONS):
            subject = "lb %s %d" % (policy or "default", i)
            self.assertDeliveredReply(self.send_one(subject))
            subjects.append(subject)
        got = self.wait_subjects(subjects)
        self.assertTrue(all(m.header("X-Lb") in ("1", "2") for m in got.values()))
        return len(f1.find("start")), len(f2.find("start"))

    def test_1_round_robin_spreads_streams(self):
        n1, n2 = self.run_lb("round_robin")
        self.assertEqual(n1 + n2, self.CONNECTIONS, self.context())
        self.assertGreater(n1, 0, "round_robin: filter one got no stream\n" + self.context())
        self.assertGreater(n2, 0, "round_robin: filter two got no stream\n" + self.context())

    def test_2_pick_first_uses_one_address(self):
        n1, n2 = self.run_lb(None)  # the default
        self.assertEqual(n1 + n2, self.CONNECTIONS, self.context())
        self.assertEqual(min(n1, n2), 0, "pick_first spread streams: %d / %d\n%s" % (n1, n2, self.context()))

    def test_3_a_filter_turning_not_serving_drains_under_traffic(self):
        """A pod being drained: its filter reports NOT_SERVING (grpc.health.v1) while SMTP
        sessions are on it. Those finish on it; new sessions go to the other filter only;
        no message is refused and none is lost."""
        ctl = os.path.join(self.dir, "control-one")
        write_file(ctl, "delay-ms=150\n")
        f1 = self.filter("--add-header", "X-Lb:1", "--control", ctl, name="one")
        f2 = self.filter("--add-header", "X-Lb:2", name="two")
        f1.proc.p.send_signal(signal.SIGUSR1)  # slow: sessions are still on it at the switch
        wait_for(lambda: "control delay-ms=150" in f1.log_text(), 10, "filter one slowed")
        conf = {"name": "lb", "target": "ipv4:127.0.0.1:%d,127.0.0.1:%d" % (f1.port, f2.port),
                "load_balancing": "round_robin"}
        gw = self.gateway(self.config([conf]))
        wait_for(lambda: gw.metric("miltergw_filter_channel_ready", filter="lb") == 1, 10, "channel READY")
        wait_for(lambda: "health watch sent status=1" in f1.log_text(), 10, "gateway watching one")
        subjects, results, lock = [], [], threading.Lock()

        def long_session(k):
            msgs = []
            for i in range(4):
                subject = "drain before %d.%d" % (k, i)
                msgs.append(("sender@example.org", ["rcpt@example.com"], make_message(subject, BODY)[0]))
                with lock:
                    subjects.append(subject)
            res = self.session(msgs)
            with lock:
                results.extend(res)
        threads = [threading.Thread(target=long_session, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            # Round robin put some of the four sessions on filter one: switch while they run.
            wait_for(lambda: len(f1.find("start")) >= 1 and len(f1.find("mail")) >= 1, 20,
                     lambda: "a session on filter one\n" + self.context())
            write_file(ctl, "delay-ms=150 health=not-serving\n")
            f1.proc.p.send_signal(signal.SIGUSR1)
            wait_for(lambda: "health watch sent status=2" in f1.log_text(), 10, "one not serving")
            on_one = len(f1.find("start"))

            # The gateway's picker follows the health stream asynchronously: wait until new
            # sessions land on filter two (the event), then every later one must. One probe
            # per worker loop (connections go to the loops in turn): with multiplexed
            # streams each loop has its own open call, which takes new sessions for up to
            # a second whichever filter it is on, so every loop's must be on two.
            loops = int(gw.find_log(msg="started")[0]["workers"])

            def lands_on_two():
                before = len(f2.find("start"))
                for _ in range(loops):
                    s = "drain probe %d" % len(subjects)
                    subjects.append(s)
                    self.assertDeliveredReply(self.send_one(s))
                return len(f2.find("start")) == before + loops
            wait_for(lands_on_two, 20, lambda: "a new session on filter two\n" + self.context())
            on_one = len(f1.find("start"))
            after = ["drain after %d" % i for i in range(6)]
            for s in after:
                subjects.append(s)
                self.assertDeliveredReply(self.send_one(s))
        finally:
            for t in threads:
                t.join(60)
        self.assertEqual(len(f1.find("start")), on_one,
                         "a NOT_SERVING filter got new sessions\n" + self.context())
        for r in results:  # the sessions that were on filter one when it turned finished there
            self.assertDeliveredReply(r)
        got = self.wait_subjects(subjects)
        self.assertTrue(all(got[s].header("X-Lb") == "2" for s in after), self.context())
        self.assertTrue(any(m.header("X-Lb") == "1" for s, m in got.items() if s.startswith("drain before")),
                        "no session was on filter one when it turned\n" + self.context())


# =========================================================================================
# Configuration errors through the binary (no Postfix, no filter)


class OpsConfigErrors(unittest.TestCase):

    def setUp(self):
        self.dir = mgwtest.make_tmpdir("ops-config")

    def run_gw(self, *args):
        r = subprocess.run([mgwtest.MILTERGW] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")

    def bad(self, text, line, problem):
        """The file is refused (also by --check-config): exit 2, and stderr is one line
        `miltergw: PATH:LINE: ` + `problem` (a regex: KEY: what is wrong)."""
        path = os.path.join(self.dir, "bad-%d.yaml" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(text)
        for extra in ((), ("--check-config",)):
            rc, out, err = self.run_gw("-c", path, *extra)
            self.assertEqual(rc, 2, "%s %r: exit %d\nstdout: %s\nstderr: %s" % (path, extra, rc, out, err))
            self.assertRegex(err, r"\Amiltergw: %s:%d: %s\n\Z" % (re.escape(path), line, problem))

    def test_1_bad_files_exit_2_with_file_line(self):
        head = 'listen:\n  - "inet:127.0.0.1:8890"\n'
        self.bad(head + 'limits:\n  max_frame: 12\n', 4, r"limits\.max_frame: .+")
        self.bad(head + 'filters:\n  - name: a\n    target: "127.0.0.1:1"\n    timeout: 10x\n', 6,
                 r"filters\[0\]\.timeout: .*10x.*")
        self.bad(head + 'http:\n  listen: "127.0.0.1:0"\n  colour: blue\n', 5, r"http: unknown key \"colour\".*")
        self.bad(head + 'filters:\n  - name: a\n    target: "127.0.0.1:1"\n    tls:\n      cert: /x/c.pem\n', 7,
                 r"filters\[0\]\.tls\.cert: .*key.*")
        self.bad(head + 'filters:\n  - name: a\n    target: "127.0.0.1:1"\n  - name: a\n    target: "127.0.0.1:2"\n',
                 6, r"filters\[1\]\.name: .+")
        self.bad(head + 'listen:\n  - "inet:127.0.0.1:8891"\n', 3, r"listen: duplicate key.*")

    def test_2_unreadable_file_exit_2(self):
        path = os.path.join(self.dir, "missing.yaml")
        rc, out, err = self.run_gw("-c", path)
        self.assertEqual(rc, 2, err)
        self.assertIn(path, err)

    def test_3_check_config_example(self):
        rc, out, err = self.run_gw("-c", os.path.join(REPO, "miltergw.example.yaml"), "--check-config")
        self.assertEqual(rc, 0, "stdout: %s\nstderr: %s" % (out, err))
        self.assertIn("configuration ok: 1 listener(s), 2 filter(s)", out)


if __name__ == "__main__":
    mgwtest.main()
