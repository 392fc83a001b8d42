#!/usr/bin/python3
"""The example filters (examples/python/filter.py, examples/node/filter.js) end to end:
real Postfix -> miltergw (--filter ex=127.0.0.1:PORT) -> the example -> smtp-sink.

One Postfix and one miltergw per language (test class). Each test restarts only the example
filter, with its policy, on the same pre-picked port, and waits until miltergw has asked the
new filter for its Description (the gateway re-describes a filter when its channel comes back)
before sending mail. Every policy is checked on its outcome: the SMTP replies the client
got, the delivered message and envelope (smtp-sink dump), the hold queue, Postfix's maillog.
After each test the filter must exit 0 on SIGTERM, and miltergw must not have logged that
the filter broke the contract (or any level=error line). Also: a dozen concurrent SMTP
sessions (one stream each), SIGTERM with a stream open, the command line (port 0, bad
usage, a port in use), and the standard gRPC services every example serves: health Check
and Watch (NOT_SERVING after SIGTERM, before the exit) and server reflection (list,
describe), with grpcio stubs generated from the Python SDK's copies of those protocols.

Python: stubs are generated with protoc into a temp dir. Node: `npm ci` runs in
examples/node if node_modules is missing; the Node tests are skipped only if `node` is not
installed.

Usage: /usr/bin/python3 test_examples_py_node.py --miltergw PATH [unittest options]
"""
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import lf, make_message, queue_id, wait_for  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY_DIR = os.path.join(REPO, "examples", "python")
NODE_DIR = os.path.join(REPO, "examples", "node")
NODE = shutil.which("node")

BODY = b"Hello,\r\nthis is the original body.\r\n.a line starting with a dot\r\n"
# miltergw log lines that mean the filter answered out of contract or was unusable
CONTRACT_BREACH = ("filter failed", "filter reply partly unusable", "modification dropped",
                   "filter unavailable", "filter describe failed")


class ExampleFilter:
    """One run of an example filter: stdout and stderr captured to files, the first stdout
    line must be `port=N`; stopped by PID (SIGTERM, then SIGKILL after a timeout)."""

    def __init__(self, argv, tmpdir, name, env=None, ready_timeout=20):
        self.out_path = os.path.join(tmpdir, name + ".out")
        self.err_path = os.path.join(tmpdir, name + ".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        self._key = mgwtest.register_cleanup(lambda: self.stop(check=False))
        first = wait_for(lambda: self._first_line() or self.p.poll() is not None, ready_timeout,
                         lambda: "%s to print port=N; stderr:\n%s" % (name, self.stderr()))
        if first is True:
            raise AssertionError("%s exited with %s before listening; stderr:\n%s"
                                 % (name, self.p.returncode, self.stderr()))
        m = re.fullmatch(r"port=(\d+)", first)
        if not m:
            raise AssertionError("%s: first stdout line is %r, not port=N" % (name, first))
        self.port = int(m.group(1))

    def _first_line(self):
        with open(self.out_path, "rb") as f:
            data = f.read()
        return data.split(b"\n", 1)[0].decode() if b"\n" in data else None

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, check=True, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout)
                if check:
                    raise AssertionError("filter ignored signal %d for %ss; stderr:\n%s"
                                         % (sig, timeout, self.stderr()))
        mgwtest.unregister_cleanup(self._key)
        if check and self.p.returncode != 0:
            raise AssertionError("filter exit code %r, expected 0; stderr:\n%s"
                                 % (self.p.returncode, self.stderr()))
        return self.p.returncode


def smtp_session(pf, transactions, helo="client.example"):
    """Several transactions in one SMTP session: [(mail from, [rcpts], message bytes)].
    Per transaction {"mail": (code, text), "rcpt": [(code, text)], "data": (code, text) or
    None}; text is str. Refusals are recorded, not raised."""
    def resp(r):
        return r[0], r[1].decode("utf-8", "replace")
    results = []
    with smtplib.SMTP(pf.host, pf.port, local_hostname=helo, timeout=30) as s:
        s.ehlo()
        for mail_from, rcpts, msg in transactions:
            res = {"mail": resp(s.mail(mail_from)), "rcpt": [], "data": None}
            if res["mail"][0] == 250:
                res["rcpt"] = [resp(s.rcpt(r)) for r in rcpts]
            if any(c == 250 for c, _ in res["rcpt"]):
                try:
                    res["data"] = resp(s.data(msg))
                except smtplib.SMTPDataError as e:
                    res["data"] = resp((e.smtp_code, e.smtp_error))
            else:
                s.rset()
            results.append(res)
    return results


class ExamplesMixin:
    """The checks, the same for every language. Subclasses set `lang` and implement
    prepare() (class level) and filter_argv(listen, policy, args)."""

    lang = None
    # --multiplexed: the filter takes many connections per stream; miltergw then runs one
    # worker loop, so that connections at the same time share one
    multiplexed = False

    @classmethod
    def setUpClass(cls):
        cls.tmp = mgwtest.make_tmpdir("ex-" + cls.lang + ("-mux" if cls.multiplexed else ""))
        cls.prepare()
        cls.runs = 0
        cls.filter_port = mgwtest.free_port()
        cls.gw_port = mgwtest.free_port()
        while cls.gw_port == cls.filter_port:
            cls.gw_port = mgwtest.free_port()
        cls.pf = mgwtest.PrivatePostfix("inet:127.0.0.1:%d" % cls.gw_port)
        cls.gw = None
        try:
            # miltergw listens only once the filter answered Describe: filter first
            cls.filt = cls.start_filter("accept")
            loops = ["--workers", "1"] if cls.multiplexed else []
            cls.gw = mgwtest.Miltergw(args=["--filter", "ex=127.0.0.1:%d" % cls.filter_port] + loops,
                                      tmpdir=cls.tmp, port=cls.gw_port)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        """Stop everything; the filter and miltergw must exit 0 on SIGTERM."""
        try:
            try:
                if getattr(cls, "filt", None) is not None:
                    cls.filt.stop()
            finally:
                if cls.gw is not None:
                    cls.gw.stop(expect=0)
        finally:
            cls.pf.stop()

    @classmethod
    def start_filter(cls, policy, *args, listen=None):
        cls.runs += 1
        argv = cls.filter_argv(listen or "127.0.0.1:%d" % cls.filter_port, policy, list(args))
        if cls.multiplexed:
            argv[-1 - len(args):-1 - len(args)] = ["--multiplexed"]  # before POLICY
        return ExampleFilter(argv, cls.tmp, "%s-%02d-%s" % (cls.lang, cls.runs, policy),
                             env=cls.filter_env())

    @classmethod
    def filter_env(cls):
        return None

    def use(self, policy, *args):
        """Restart the filter with this policy on the same port; wait until miltergw has
        described the new one on every worker loop (each has its own channel, which
        reconnects, and describes, on its own: a session on a loop still in backoff would
        find the filter unavailable)."""
        described = len(self.gw.find_log(msg="filter described"))
        loops = int(self.gw.wait_log(msg="started")[0]["workers"])
        if self.filt is not None:
            type(self).filt, old = None, self.filt
            old.stop()
        type(self).filt = self.start_filter(policy, *args)
        wait_for(lambda: len(self.gw.find_log(msg="filter described")) >= described + loops, 15,
                 lambda: "miltergw to describe the restarted filter on its %d loops; log:\n%s"
                 % (loops, self.gw.proc.log_tail()))
        self.mark = self.gw.log_mark()

    def setUp(self):
        self.mark = self.gw.log_mark()

    def tearDown(self):
        breaches = [l for l in self.gw.log_lines(self.mark)
                    if any('msg="%s"' % m in l for m in CONTRACT_BREACH) or "level=error" in l]
        self.assertEqual(breaches, [], "miltergw complained about the %s filter" % self.lang)
        self.assertTrue(self.gw.alive(), "miltergw died:\n" + self.gw.proc.log_tail())

    # -- helpers
    def swaks(self, msg, to="rcpt@example.com", from_="sender@example.org"):
        rc, transcript = self.pf.swaks(to=to, from_=from_, data=msg)
        return rc, transcript

    def deliver(self, msg, **kw):
        rc, transcript = self.swaks(msg, **kw)
        self.assertEqual(rc, 0, transcript)
        return self.pf.wait_delivered_id(queue_id(transcript))

    def assertUnchanged(self, got, hdrs, body):
        self.assertEqual(got.headers[0][0], "Received")
        self.assertEqual(got.headers[1:], list(hdrs))
        self.assertEqual(got.body, lf(body))

    def assertNotDelivered(self, subject):
        self.assertEqual([m for m in self.pf.delivered() if m.header("Subject") == subject], [])

    # -- the policies
    def test_accept(self):
        self.use("accept")
        msg, hdrs, body = make_message("accept me", BODY)
        got = self.deliver(msg)
        self.assertEqual((got.mail_from, got.rcpts), ("sender@example.org", ["rcpt@example.com"]))
        self.assertUnchanged(got, hdrs, body)

    def test_reject_subject(self):
        self.use("reject-subject", "Cheap")
        msgs = [make_message("Buy CHEAP pills now", BODY),
                make_message("an honest subject", BODY, headers=[("X-Note", "cheap, but not the subject")]),
                make_message("folded\n\tand then cheAP on the second line", BODY),
                make_message("another honest one", BODY)]
        res = smtp_session(self.pf, [("sender@example.org", ["rcpt@example.com"], m) for m, _, _ in msgs])
        want = (550, "5.7.1 Subject contains forbidden word")
        self.assertEqual([r["data"] for r in res[0::2]], [want, want])
        for r, (_, hdrs, body) in zip(res[1::2], msgs[1::2]):
            self.assertEqual(r["data"][0], 250, r)
            self.assertUnchanged(self.pf.wait_delivered_id(queue_id(r["data"][1])), hdrs, body)
        rc, transcript = self.swaks(make_message("cheap via swaks", BODY)[0])
        self.assertNotEqual(rc, 0)
        self.assertIn("<** 550 5.7.1 Subject contains forbidden word", transcript)
        self.pf.wait_queue_empty(30, ignore_hold=True)
        for _, hdrs, _ in msgs[0::2] + [make_message("cheap via swaks")]:
            self.assertNotDelivered(dict(hdrs)["Subject"])

    def test_tempfail_rcpt(self):
        self.use("tempfail-rcpt", "<Blocked@Example.COM>")
        msg, hdrs, body = make_message("tempfail one recipient", BODY)
        rcpts = ["ok@example.com", "blocked@example.com", "other@example.net"]
        res = smtp_session(self.pf, [("sender@example.org", rcpts, msg)])[0]
        self.assertEqual(res["rcpt"], [(250, "2.1.5 Ok"), (451, "4.7.1 Recipient temporarily refused"),
                                       (250, "2.1.5 Ok")])
        self.assertEqual(res["data"][0], 250, res)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(sorted(got.rcpts), ["ok@example.com", "other@example.net"])
        self.assertUnchanged(got, hdrs, body)

    def test_addheader(self):
        self.use("addheader", "X-Example-Filter", "checked by the %s example" % self.lang)
        msg, hdrs, body = make_message("add a header", BODY)
        got = self.deliver(msg)
        self.assertEqual(got.headers[-1], ("X-Example-Filter", "checked by the %s example" % self.lang))
        self.assertEqual(got.headers[1:-1], list(hdrs))
        self.assertEqual(got.body, lf(body))

    def test_rewrite_body(self):
        self.use("rewrite-body", "This body was replaced.\nSecond line.")
        msg, hdrs, _ = make_message("rewrite the body", BODY)
        got = self.deliver(msg)
        self.assertEqual(got.body, b"This body was replaced.\nSecond line.\n")
        self.assertEqual(got.headers[1:], list(hdrs))

    def test_quarantine(self):
        self.use("quarantine", "held by the example filter")
        msg, _, _ = make_message("hold me", BODY)
        rc, transcript = self.swaks(msg)
        self.assertEqual(rc, 0, transcript)
        qid = queue_id(transcript)
        self.pf.wait_maillog(r"%s: milter-hold: END-OF-MESSAGE .*milter triggers HOLD action" % qid)
        held = wait_for(lambda: [e for e in self.pf.hold_queue() if e["queue_id"] == qid], 30,
                        lambda: "%s in the hold queue: %r" % (qid, self.pf.queue()))
        self.assertEqual([r["address"] for r in held[0]["recipients"]], ["rcpt@example.com"])
        self.assertNotDelivered("hold me")

    def test_chgfrom(self):
        self.use("chgfrom", "new-sender@example.net")
        msg, hdrs, body = make_message("change the sender", BODY)
        got = self.deliver(msg)
        self.assertEqual(got.mail_from, "new-sender@example.net")
        self.assertUnchanged(got, hdrs, body)

    def test_addrcpt(self):
        self.use("addrcpt", "added@example.net")
        msg, hdrs, body = make_message("add a recipient", BODY)
        got = self.deliver(msg)
        self.assertEqual(sorted(got.rcpts), ["added@example.net", "rcpt@example.com"])
        self.assertUnchanged(got, hdrs, body)

    def test_delrcpt(self):
        self.use("delrcpt", "Gone@Example.com")
        msg, hdrs, body = make_message("delete a recipient", BODY)
        got = self.deliver(msg, to=["keep@example.com", "gone@example.com", "also@example.org"])
        self.assertEqual(sorted(got.rcpts), ["also@example.org", "keep@example.com"])
        self.assertUnchanged(got, hdrs, body)

    def test_discard(self):
        self.use("discard")
        msg, _, _ = make_message("discard me", BODY)
        rc, transcript = self.swaks(msg)
        self.assertEqual(rc, 0, transcript)
        self.assertRegex(transcript, r"\n<-  250 2\.0\.0 Ok: queued as")
        qid = queue_id(transcript)
        self.pf.wait_maillog(r"%s: milter-discard: END-OF-MESSAGE .*milter triggers DISCARD action" % qid)
        self.pf.wait_queue_empty(30, ignore_hold=True)
        self.assertEqual([l for l in self.pf.maillog().splitlines() if "%s: to=<" % qid in l], [])
        self.assertNotDelivered("discard me")

    def test_macros(self):
        self.use("macros")
        msgs = [make_message("macros one", BODY), make_message("macros two", BODY)]
        res = smtp_session(self.pf, [("first@example.org", ["a@example.com", "b@example.com"], msgs[0][0]),
                                     ("second@example.org", ["c@example.com"], msgs[1][0])])
        for r, (sender, last_rcpt), (_, hdrs, body) in zip(
                res, [("first@example.org", "b@example.com"), ("second@example.org", "c@example.com")], msgs):
            self.assertEqual(r["data"][0], 250, r)
            qid = queue_id(r["data"][1])
            got = self.pf.wait_delivered_id(qid)
            self.assertEqual(got.headers[1:len(hdrs) + 1], list(hdrs))
            self.assertEqual(got.body, lf(body))
            macros = {n[len("X-Macro-"):]: v for n, v in got.headers[len(hdrs) + 1:]}
            self.assertEqual(len(macros), len(got.headers) - len(hdrs) - 1, "duplicate macro header")
            self.assertEqual(sorted(macros), sorted(
                ["j", "daemon_name", "daemon_addr", "v", "_", "mail_addr", "mail_host", "mail_mailer",
                 "rcpt_addr", "rcpt_host", "rcpt_mailer", "i"]), got.headers)
            self.assertEqual(macros["j"], "mgwtest.localdomain")
            self.assertEqual(macros["daemon_addr"], "127.0.0.1")
            self.assertIn("Postfix", macros["v"])
            self.assertIn("127.0.0.1", macros["_"])
            self.assertEqual(macros["mail_addr"], sender)
            self.assertEqual(macros["rcpt_addr"], last_rcpt)
            self.assertEqual(macros["i"], qid)

    def test_declares_what_it_was_told(self):
        self.use("accept")
        described = self.gw.find_log(msg="filter described")
        self.assertEqual(described[-1].get("multiplexed"), "1" if self.multiplexed else "0",
                         described[-1])

    def test_concurrent_sessions(self):
        # SMTP connections served at the same time (a stream each, or sharing streams when
        # multiplexed); state kept per connection
        self.use("reject-subject", "forbidden")
        n, results, errors = 12, {}, []

        def client(i):
            try:
                msgs = [make_message("c%d forbidden" % i, BODY)[0], make_message("c%d fine" % i, BODY)[0]]
                results[i] = smtp_session(self.pf, [("s%d@example.org" % i, ["r%d@example.com" % i], m)
                                                    for m in msgs])
            except Exception as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), list(range(n)))
        for i in range(n):
            bad, good = results[i]
            self.assertEqual(bad["data"], (550, "5.7.1 Subject contains forbidden word"))
            self.assertEqual(good["data"][0], 250, good)
            got = self.pf.wait_delivered_id(queue_id(good["data"][1]))
            self.assertEqual((got.header("Subject"), got.rcpts), ("c%d fine" % i, ["r%d@example.com" % i]))

    def test_stop_with_open_stream(self):
        # SIGTERM while miltergw has a stream open to the filter: it still exits 0, promptly
        self.use("tempfail-rcpt", "nobody@example.com")
        with smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.example", timeout=30) as s:
            s.ehlo()
            self.assertEqual(s.mail("sender@example.org")[0], 250)
            self.assertEqual(s.rcpt("rcpt@example.com")[0], 250)  # the filter answered: stream open
            t0 = time.monotonic()
            type(self).filt, f = None, self.filt
            self.assertEqual(f.stop(), 0)
            self.assertLess(time.monotonic() - t0, 5)
            s.rset()
        wait_for(lambda: self.gw.find_log(self.mark, msg="filter failed"), 10,
                 "miltergw to notice the stream ended")
        self.mark = self.gw.log_mark()  # those complaints were expected

    def test_health_and_reflection(self):
        # what gRPC users expect: grpc.health.v1 (Check, Watch) and server reflection, next
        # to a working filter; on SIGTERM a Watch sees NOT_SERVING, then the filter exits 0
        self.use("addheader", "X-Health", "checked")
        mgwtest.check_std_services(self, self.filter_port, self.stubs, file_name=self.reflection_file)
        msg, hdrs, body = make_message("health and mail", BODY)
        got = self.deliver(msg)
        self.assertEqual(got.headers[1:], list(hdrs) + [("X-Health", "checked")])
        type(self).filt, f = None, self.filt
        mgwtest.check_stop_watched(self, f, self.stubs)
        self.use("accept")  # miltergw has a filter again (and its log is checked from here)

    def test_zz_command_line(self):
        self.use("accept")
        # port 0 picks a free port and prints it; SIGINT exits 0
        f = self.start_filter("addheader", "X-A", "b", listen="127.0.0.1:0")
        self.assertNotEqual(f.port, self.filter_port)
        self.assertEqual(f.stop(sig=signal.SIGINT), 0)
        # a bad usage, or a port already in use, is an error before port=N
        for listen, args in (("127.0.0.1:0", ["only-one-arg"]),
                             ("127.0.0.1:%d" % self.filter_port, ["X-A", "b"])):
            r = subprocess.run(self.filter_argv(listen, "addheader", args), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.filter_env(),
                               timeout=30)
            self.assertNotEqual(r.returncode, 0, (listen, args))
            self.assertNotIn(b"port=", r.stdout)


class PythonExamples(ExamplesMixin, unittest.TestCase):
    lang = "python"
    reflection_file = "miltergw/v1/filter.proto"

    @classmethod
    def prepare(cls):
        cls.stubs = mgwtest.generate_python_stubs(cls.tmp)

    @classmethod
    def filter_env(cls):
        return dict(os.environ, MILTERGW_STUBS=cls.stubs)

    @classmethod
    def filter_argv(cls, listen, policy, args):
        return [mgwtest.PYTHON, os.path.join(PY_DIR, "filter.py"), "--listen", listen, policy] + args


class NodeExamples(ExamplesMixin, unittest.TestCase):
    lang = "node"
    reflection_file = None  # grpc-js reflection names files after their package

    @classmethod
    def prepare(cls):
        cls.stubs = mgwtest.generate_python_stubs(cls.tmp)  # the client side of health/reflection
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
            npm = shutil.which("npm")
            if not npm:
                raise AssertionError("node is installed but npm is not: cannot install examples/node")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                           stdin=subprocess.DEVNULL, timeout=300)

    @classmethod
    def filter_argv(cls, listen, policy, args):
        return [NODE, os.path.join(NODE_DIR, "filter.js"), "--listen", listen, policy] + args


class PythonExamplesMux(PythonExamples):
    multiplexed = True


class NodeExamplesMux(NodeExamples):
    multiplexed = True


if NODE is None:
    NodeExamples = unittest.skip("node is not installed: the Node example is not tested")(NodeExamples)
    NodeExamplesMux = unittest.skip("node is not installed: the Node example is not tested")(NodeExamplesMux)


if __name__ == "__main__":
    mgwtest.main()
