#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The pymilter-compatible Python package (sdk/python, `miltergw.Milter`) end to end.

Debian's python3-milter ships no runnable example milter (python-milter-doc has
milter-nomix.py only as an HTML/LaTeX listing, and it does not run: it uses an undefined
self.R, logq and bt, and Python 2's map().count), so the milters here are three written in
pymilter's documented style, tests/integration/pymilter/*.py, the worked example of
docs/filter-guide.md, and a real one from Debian: dkimpy-milter (DKIM signing; unpacked
privately by tools/setup-debian.sh, skipped if missing), whose signature is verified. Each
runs twice:

  direct: the file as it is, under real pymilter (libmilter): Postfix -> the milter;
  gateway: the same file with `import Milter` changed to `import miltergw.Milter as Milter`
           (the only difference, checked; dkimpy-milter also has its
           `from Milter.utils import` changed), with the package pip-installed from sdk/python
           into a temporary directory: Postfix -> miltergw --filter NAME=127.0.0.1:PORT ->
           the milter as a gRPC filter.

and every test asserts the same outcome in both modes, at the SMTP client and at the
Postfix sink (smtp-sink): replies (multi-line ones too), headers added, inserted, changed
and deleted, recipients added (with parameters) and deleted, the sender changed, the body
replaced, hold queue, discard, SKIP, progress, the exception policy, macros with
@symlist, DisabledAction from set_flags, blocking callbacks not blocking other
connections. trace_milter.py records every callback with its arguments and macros; the two
traces of one scenario must be equal (instance ids, ports and queue ids normalised).
In gateway mode only: grpc.health.v1 Check and Watch (SERVING, NOT_SERVING once stopping)
and server reflection (list and describe, v1alpha and v1) through grpcio stubs, the
Description the decorators produce, and a unix socket name.

Usage: /usr/bin/python3 test_sdk_python.py --miltergw PATH [unittest options]
"""
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import lf, make_message, queue_id, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SDK = os.path.join(REPO, "sdk", "python")
MILTERS = os.path.join(HERE, "pymilter")
BODY = b"Hello,\r\nthis is the original body.\r\n.a line starting with a dot\r\n"
CONTRACT_BREACH = ("filter failed", "filter reply partly unusable", "modification dropped",
                   "filter unavailable", "filter describe failed")

_pkg = {}  # the pip-installed package: {"dir": site dir}


def installed_sdk():
    """sdk/python pip-installed (no index, no build isolation: Debian's setuptools) into a
    temporary directory, once; returns the directory to put on PYTHONPATH."""
    if "dir" not in _pkg:
        tmp = mgwtest.make_tmpdir("sdkpy-pip")
        src = os.path.join(tmp, "src")
        shutil.copytree(SDK, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        target = os.path.join(tmp, "site")
        r = subprocess.run([mgwtest.PYTHON, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                            "--no-index", "--target", target, src], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        if r.returncode != 0:
            raise AssertionError("pip install sdk/python failed:\n" + r.stdout.decode("utf-8", "replace"))
        _pkg["dir"] = target
    return _pkg["dir"]


def converted(name, tmp):
    """tests/integration/pymilter/NAME with its one `import Milter` line changed."""
    with open(os.path.join(MILTERS, name)) as f:
        text = f.read()
    old, new = "\nimport Milter\n", "\nimport miltergw.Milter as Milter\n"
    if text.count(old) != 1 or "Milter." not in text:
        raise AssertionError("%s: expected exactly one `import Milter` line" % name)
    out = os.path.join(tmp, "gw-" + name)
    with open(out, "w") as f:
        f.write(text.replace(old, new))
    return out


class MilterProc:
    """A milter process (pymilter or miltergw.Milter), output to a file, stopped by PID; it
    must exit 0 on SIGTERM."""

    def __init__(self, argv, tmp, name, env=None, port=None, unix=None):
        self.name = name
        self.proc = mgwtest.Proc(argv, os.path.join(tmp, name + ".log"), env=env, name=name)
        self.proc.start()
        self._key = mgwtest.register_cleanup(lambda: self.stop(check=False))
        if port is not None:
            ready = lambda: mgwtest.port_listening(port)  # noqa: E731
        else:
            ready = lambda: os.path.exists(unix)  # noqa: E731
        wait_for(lambda: ready() or not self.proc.alive(), 20, "%s to listen" % name)
        if not self.proc.alive():
            raise AssertionError("%s exited before listening:\n%s" % (name, self.proc.log_text()))

    def log(self):
        return self.proc.log_text()

    def stop(self, check=True):
        if self.proc.alive():
            self.proc.p.send_signal(signal.SIGTERM)
            try:
                self.proc.p.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.p.kill()
                self.proc.p.wait(10)
                if check:
                    raise AssertionError("%s ignored SIGTERM:\n%s" % (self.name, self.log()))
        mgwtest.unregister_cleanup(self._key)
        rc = self.proc.p.returncode
        if check and rc != 0:
            raise AssertionError("%s exit code %r:\n%s" % (self.name, rc, self.log()))
        return rc


class Stack:
    """One milter file in one mode: the milter, (miltergw,) Postfix."""

    def __init__(self, mode, milter, args=(), tmp=None, pf_extra=None):
        self.mode, self.tmp = mode, tmp or mgwtest.make_tmpdir("sdkpy-" + mode)
        self.port = mgwtest.free_port()
        sock = "inet:%d@127.0.0.1" % self.port
        env = dict(os.environ)
        if os.path.isabs(milter):  # already in the form for this mode
            path = milter
            milter = os.path.basename(milter)
        elif mode == "direct":
            path = os.path.join(MILTERS, milter)
        else:
            path = converted(milter, self.tmp)
        if mode != "direct":
            env["PYTHONPATH"] = installed_sdk()
        if mode == "gateway-mux":  # the unchanged milter, its connections on shared streams
            env["MILTERGW_MULTIPLEXED"] = "1"
        self.gw = self.pf = self.milter = None
        try:
            self.milter = MilterProc([mgwtest.PYTHON, path, sock] + list(args), self.tmp,
                                     "%s-%s" % (mode, milter[:-3]), env=env, port=self.port)
            if mode == "direct":
                spec = "inet:127.0.0.1:%d" % self.port
            else:
                # multiplexed: one worker loop, so that connections at once share a stream
                loops = ["--workers", "1"] if mode == "gateway-mux" else []
                self.gw = mgwtest.Miltergw(args=["--filter", "py=127.0.0.1:%d" % self.port] + loops,
                                           tmpdir=self.tmp)
                spec = self.gw.spec
            self.pf = mgwtest.PrivatePostfix(spec, extra_main_cf=pf_extra)
        except BaseException:
            self.stop(check=False)
            raise

    def mark(self):
        return self.gw.log_mark() if self.gw else 0

    def gateway_complaints(self, mark):
        if not self.gw:
            return []
        return [l for l in self.gw.log_lines(mark)
                if any('msg="%s"' % m in l for m in CONTRACT_BREACH) or "level=error" in l]

    def stop(self, check=True):
        errors = []
        for what in (lambda: self.pf and self.pf.stop(),
                     lambda: self.gw and self.gw.stop(expect=0),
                     lambda: self.milter and self.milter.stop(check=check)):
            try:
                what()
            except AssertionError as e:
                errors.append(str(e))
        if errors and check:
            raise AssertionError("\n".join(errors))


def session(pf, transactions, helo="client.example", before=()):
    """One SMTP session; `before`: raw commands sent after EHLO, their replies returned.
    Per transaction {"mail", "rcpt": [...], "data_cmd", "data"} (mgwtest.smtp_transaction)."""
    out = {"before": [], "tx": []}
    with smtplib.SMTP(pf.host, pf.port, local_hostname=helo, timeout=60) as s:
        out["ehlo"] = mgwtest.smtp_text(s.ehlo())
        for cmd in before:
            out["before"].append(mgwtest.smtp_text(s.docmd(cmd)))
        for mail_from, rcpts, msg in transactions:
            out["tx"].append(mgwtest.smtp_transaction(s, mail_from, rcpts, msg))
    return out


# ------------------------------------------------------------------------------------------
# The policy milter: every verdict and every modification, in both modes


class PolicyMixin:
    mode = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = mgwtest.make_tmpdir("sdkpy-policy-" + cls.mode)
        cls.release = os.path.join(cls.tmp, "release")
        cls.st = Stack(cls.mode, "policy_milter.py", [cls.release], tmp=cls.tmp)
        cls.pf = cls.st.pf

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def setUp(self):
        self.mark = self.st.mark()

    def tearDown(self):
        self.assertEqual(self.st.gateway_complaints(self.mark), [])

    def one(self, subject, rcpts=("rcpt@example.com",), sender="sender@example.org", headers=(),
            body=BODY):
        msg, hdrs, body = make_message(subject, body, headers=headers)
        r = session(self.pf, [(sender, list(rcpts), msg)])["tx"][0]
        return r, hdrs, body

    def delivered(self, r):
        self.assertEqual(r["data"][0], 250, r)
        return self.pf.wait_delivered_id(queue_id(r["data"][1]))

    def test_continue_and_body_chunks(self):
        r, hdrs, body = self.one("plain")
        got = self.delivered(r)
        self.assertEqual(got.headers[1:], list(hdrs) + [("X-Policy-Body", "1 %d" % len(body))])
        self.assertEqual(got.body, lf(body))

    def test_skip_body(self):
        # a body of several chunks: SKIP after the first one
        body = b"".join(b"line %06d of a long body, long enough for several chunks\r\n" % i
                        for i in range(4000))
        r, _, _ = self.one("skip body", body=body)
        got = self.delivered(r)
        chunks, size = got.header("X-Policy-Body").split()
        self.assertEqual(chunks, "1")
        self.assertLess(int(size), len(body))
        self.assertEqual(got.body, lf(body))
        r, _, _ = self.one("all of it", body=body)
        chunks, size = self.delivered(r).header("X-Policy-Body").split()
        self.assertGreater(int(chunks), 1)
        self.assertEqual(int(size), len(body))

    def test_helo_reject(self):
        # Postfix (smtpd_delay_reject = yes) answers EHLO and refuses the commands after it
        res = session(self.pf, [("sender@example.org", ["rcpt@example.com"], b"x")], helo="bad.helo.example")
        self.assertEqual(res["ehlo"][0], 250)
        tx = res["tx"][0]
        self.assertIn((550, "5.7.1 Go away, bad.helo.example"), [tx["mail"]] + tx["rcpt"], tx)
        self.pf.wait_maillog(r"milter-reject: EHLO from .*: 550 5\.7\.1 Go away, bad\.helo\.example")

    def test_mail_refusals(self):
        res = session(self.pf, [("reject-sender@example.org", ["rcpt@example.com"], b"x"),
                                ("tempfail@example.org", ["rcpt@example.com"], b"x")])["tx"]
        self.assertEqual(res[0]["mail"], (550, "5.7.1 Sender refused\n5.7.1 by the policy milter"))
        self.assertEqual(res[1]["mail"], (451, "4.7.1 Sender deferred"))

    def test_rcpt_refusals(self):
        r, hdrs, body = self.one("rcpts", rcpts=["ok@example.com", "blocked@example.com", "later@example.com"])
        self.assertEqual(r["rcpt"], [(250, "2.1.5 Ok"), (550, "5.1.1 No such user here"),
                                     (450, "4.2.1 Mailbox busy, try later")])
        self.assertEqual(self.delivered(r).rcpts, ["ok@example.com"])

    def test_data_reject(self):
        r, _, _ = self.one("no data", sender="nodata@example.org")
        self.assertEqual(r["data_cmd"], 554)
        self.assertIsNone(r["data"])

    def test_unknown_command(self):
        res = session(self.pf, [], before=["FOOBAR something"])
        self.assertEqual(res["before"], [(550, "5.5.1 Unknown command refused by policy")])

    def test_eoh_reject(self):
        r, _, _ = self.one("reject at eoh")
        self.assertEqual(r["data"], (550, "5.7.1 Headers refused"))

    def test_eom_verdicts(self):
        cases = {"reject": (550, "5.7.1 Message refused\n5.7.1 by the policy milter\n5.7.1 100% sure"),
                 "tempfail": (451, "4.7.1 Try again later")}
        for subject, want in cases.items():
            r, _, _ = self.one(subject)
            self.assertEqual(r["data"], want, subject)
        # the exception policy (set_exception_policy(REJECT)), with pymilter's reply
        r, _, _ = self.one("raise")
        self.assertEqual(r["data"], (554, "5.3.0 pymilter: untrapped exception in policymilter"))
        wait_for(lambda: "a bug in the milter" in self.st.milter.log(), 10, "the traceback on stderr")
        # accept: delivered without the milter's header; discard: never delivered
        r, hdrs, body = self.one("accept")
        got = self.delivered(r)
        self.assertEqual(got.headers[1:], list(hdrs))
        r, _, _ = self.one("discard")
        self.assertEqual(r["data"][0], 250, r)
        qid = queue_id(r["data"][1])
        self.pf.wait_maillog(r"%s: milter-discard: END-OF-MESSAGE" % qid)
        self.pf.wait_queue_empty(30, ignore_hold=True)
        self.assertEqual([m for m in self.pf.delivered() if m.header("Subject") == "discard"], [])

    def test_addheader(self):
        r, hdrs, body = self.one("addheader")
        got = self.delivered(r)
        # Received (index 0), X-Inserted at index 1, then the message's, then the appended
        self.assertEqual(got.headers[0][0], "Received")
        self.assertEqual(got.headers[1:], [("X-Inserted", "first")] + list(hdrs) + [
            ("X-Policy-Body", "1 %d" % len(body)), ("X-Appended", "last")])

    def test_chgheader(self):
        r, hdrs, body = self.one("chgheader", headers=[("X-Change", "old"), ("X-Delete", "bye"),
                                                      ("X-Multi", "one"), ("X-Multi", "two")])
        got = self.delivered(r)
        want = [(n, v) for n, v in hdrs if n != "X-Delete"]
        want = [("X-Change", "changed value") if n == "X-Change" else (n, v) for n, v in want]
        want[[i for i, (n, v) in enumerate(want) if (n, v) == ("X-Multi", "two")][0]] = ("X-Multi", "second changed")
        self.assertEqual(got.headers[1:], want + [("X-Policy-Body", "1 %d" % len(body))])

    def test_addrcpt(self):
        r, _, _ = self.one("addrcpt")
        got = self.delivered(r)
        self.assertEqual(sorted(got.rcpts), ["added-par@example.net", "added@example.net", "rcpt@example.com"])
        log = self.pf.maillog()
        self.assertRegex(log, r"to=<added-par@example\.net>.*status=sent")

    def test_delrcpt(self):
        r, _, _ = self.one("delrcpt", rcpts=["keep@example.com", "gone@example.com", "gone2@example.org"])
        self.assertEqual(self.delivered(r).rcpts, ["keep@example.com"])

    def test_chgfrom(self):
        r, hdrs, body = self.one("chgfrom")
        got = self.delivered(r)
        self.assertEqual(got.mail_from, "new-sender@example.net")

    def test_replacebody(self):
        r, hdrs, _ = self.one("replacebody")
        got = self.delivered(r)
        self.assertEqual(got.body, b"New body, line 1.\nNew body, line 2.\n")

    def test_quarantine(self):
        r, _, _ = self.one("quarantine")
        self.assertEqual(r["data"][0], 250, r)
        qid = queue_id(r["data"][1])
        self.pf.wait_maillog(r"%s: milter-hold: END-OF-MESSAGE .*milter triggers HOLD action" % qid)
        wait_for(lambda: [e for e in self.pf.hold_queue() if e["queue_id"] == qid], 30, "held")

    def test_progress(self):
        r, _, _ = self.one("progress")
        self.assertEqual(self.delivered(r).header("Subject"), "progress")

    def test_blocking_callback_blocks_only_its_connection(self):
        # one connection's eom blocks (calling progress()) until the release file exists;
        # a second connection meanwhile goes through; then the first one finishes
        result = {}

        def slow():
            result["slow"] = self.one("slow")[0]
        t = threading.Thread(target=slow)
        t.start()
        try:
            r, _, _ = self.one("meanwhile")
            self.assertEqual(self.delivered(r).header("Subject"), "meanwhile")
            self.assertTrue(t.is_alive(), "the slow message did not wait for its milter")
        finally:
            with open(self.release, "w"):
                pass
            t.join(60)
        self.assertEqual(self.delivered(result["slow"]).header("Subject"), "slow")
        os.unlink(self.release)


class PolicyDirect(PolicyMixin, unittest.TestCase):
    mode = "direct"


class PolicyGateway(PolicyMixin, unittest.TestCase):
    mode = "gateway"


class PolicyGatewayMux(PolicyMixin, unittest.TestCase):
    """The same milter, unchanged, run with MILTERGW_MULTIPLEXED=1: the gateway gives it the
    sessions of many connections on one stream; every verdict and modification, and a
    blocked callback holding back only its own connection, come out the same."""
    mode = "gateway-mux"

    def test_the_gateway_multiplexes(self):
        described = self.st.gw.find_log(msg="filter described")
        self.assertTrue(described, self.st.gw.log_text())
        self.assertEqual({r.get("multiplexed") for r in described}, {"1"})


# ------------------------------------------------------------------------------------------
# The macro milter: Milter.Milter subclass, @symlist, @nocallback, set_flags, DisabledAction


class MacroMixin:
    mode = None

    def test_macros_flags(self):
        st = Stack(self.mode, "macro_milter.py")
        try:
            mark = st.mark()
            msgs = [make_message("m1", BODY)[0], make_message("m2", BODY)[0]]
            res = session(st.pf, [("first@example.org", ["a@example.com", "b@example.com"], msgs[0]),
                                  ("second@example.org", ["c@example.com"], msgs[1])])["tx"]
            for r, sender, rcpts in zip(res, ["first@example.org", "second@example.org"],
                                        ["a@example.com b@example.com", "c@example.com"]):
                self.assertEqual(r["data"][0], 250, r)
                qid = queue_id(r["data"][1])
                got = st.pf.wait_delivered_id(qid)
                self.assertEqual(got.headers[-4:], [("X-Mail-Addr", sender), ("X-Rcpt-Addrs", rcpts),
                                                    ("X-Queue-Id", qid), ("X-Disabled", "CHGFROM")])
            # Milter.Milter logs its @noreply callbacks to stdout, pymilter's way (hello is
            # @nocallback here, envfrom and envrcpt are overridden)
            wait_for(lambda: "Milter:\nSubject: m2\n" in st.milter.log(), 10,
                     lambda: "the log lines; log:\n" + st.milter.log())
            self.assertIn("Milter:\nconnect from [127.0.0.1] at ('127.0.0.1', ", st.milter.log())
            self.assertIn("Milter:\neoh\n", st.milter.log())
            self.assertNotIn("hello from", st.milter.log())
            self.assertEqual(st.gateway_complaints(mark), [])
        finally:
            st.stop()


class MacroDirect(MacroMixin, unittest.TestCase):
    mode = "direct"


class MacroGateway(MacroMixin, unittest.TestCase):
    mode = "gateway"


# ------------------------------------------------------------------------------------------
# The worked example of docs/filter-guide.md, as printed there, in both modes


def guide_example(tmp, mode):
    """The Python block of the guide's pymilter section; for direct mode with the import
    changed back to pymilter's."""
    with open(os.path.join(REPO, "docs", "filter-guide.md")) as f:
        text = f.read()
    section = text.split("## Python: pymilter-compatible package", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    if mode == "direct":
        code = code.replace("\nimport miltergw.Milter as Milter\n", "\nimport Milter\n")
    os.makedirs(os.path.join(tmp, "guide"), exist_ok=True)
    path = os.path.join(tmp, "guide", "tagmilter.py")
    with open(path, "w") as f:
        f.write(code)
    return path


class GuideMixin:
    mode = None

    def test_guide_example(self):
        tmp = mgwtest.make_tmpdir("sdkpy-guide-" + self.mode)
        path = guide_example(tmp, self.mode)
        st = Stack(self.mode, path, tmp=tmp)
        try:
            mark = st.mark()
            msgs = [make_message(s, BODY) for s in ("plain", "please [hold] this", "[scrub] me")]
            res = session(st.pf, [("sender@example.org", ["ok@example.com", "blocked@example.com"], m)
                                  for m, _, _ in msgs])["tx"]
            self.assertEqual(res[0]["rcpt"], [(250, "2.1.5 Ok"), (550, "5.7.1 This mailbox takes no mail\n"
                                                                  "5.7.1 from 127.0.0.1")])
            qids = [queue_id(r["data"][1]) for r in res]
            got = st.pf.wait_delivered_id(qids[0])
            self.assertEqual(got.rcpts, ["ok@example.com"])
            self.assertEqual(got.headers[1:], list(msgs[0][1]) + [("X-Tagged", "queue id %s" % qids[0])])
            self.assertEqual(got.body, lf(BODY))
            st.pf.wait_maillog(r"%s: milter-hold: END-OF-MESSAGE" % qids[1])
            got = st.pf.wait_delivered_id(qids[2])
            self.assertEqual(got.body, b"This body was removed.\n")
            self.assertEqual(st.gateway_complaints(mark), [])
        finally:
            st.stop()


class GuideDirect(GuideMixin, unittest.TestCase):
    mode = "direct"


class GuideGateway(GuideMixin, unittest.TestCase):
    mode = "gateway"


# ------------------------------------------------------------------------------------------
# dkimpy-milter: a real pymilter milter from Debian, unpacked privately by
# tools/setup-debian.sh; behind miltergw its two Milter imports are changed


DKIMPY = os.environ.get("MGW_DKIMPY_PREFIX", "/opt/miltergw-test/dkimpy")
DKIMPY_SITE = os.path.join(DKIMPY, "usr", "lib", "python3", "dist-packages")


class DkimpyMixin:
    mode = None

    def dkimpy(self, tmp, port):
        """dkimpy-milter signing for example.org with a fresh key; returns (MilterProc,
        the public key's DNS TXT record)."""
        os.chmod(tmp, 0o755)  # it drops privileges to nobody after reading its key
        subprocess.run([mgwtest.PYTHON, os.path.join(DKIMPY, "usr", "bin", "dknewkey"), "--ktype", "rsa",
                        "sel1"], cwd=tmp, env=dict(os.environ, PYTHONPATH=DKIMPY_SITE), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        conf = os.path.join(tmp, "dkimpy-milter.conf")
        mgwtest.write_file(conf, "Syslog no\nMode s\nSocket inet:%d@127.0.0.1\nDomain example.org\n"
                           "KeyFile %s\nSelector sel1\nUserID nobody:nogroup\nAuthservID mgwtest.localdomain\n"
                           % (port, os.path.join(tmp, "sel1.key")))
        path = DKIMPY_SITE
        if self.mode != "direct":
            pkgs = os.path.join(tmp, "pkgs")
            shutil.copytree(os.path.join(DKIMPY_SITE, "dkimpy_milter"), os.path.join(pkgs, "dkimpy_milter"))
            init = os.path.join(pkgs, "dkimpy_milter", "__init__.py")
            with open(init) as f:
                text = f.read()
            for old, new in (("\nimport Milter\n", "\nimport miltergw.Milter as Milter\n"),
                             ("\nfrom Milter.utils import ", "\nfrom miltergw.Milter.utils import ")):
                self.assertEqual(text.count(old), 1, old)
                text = text.replace(old, new)
            self.assertNotRegex(text, r"\n(import|from) Milter\b")
            with open(init, "w") as f:
                f.write(text)
            path = ":".join([pkgs, installed_sdk(), DKIMPY_SITE])
        m = MilterProc([mgwtest.PYTHON, "-m", "dkimpy_milter", conf], tmp, "dkimpy-" + self.mode,
                       env=dict(os.environ, PYTHONPATH=path), port=port)
        with open(os.path.join(tmp, "sel1.dns"), "rb") as f:
            return m, f.read()

    def test_dkimpy_milter_signs(self):
        if not os.path.exists(os.path.join(DKIMPY_SITE, "dkimpy_milter", "__init__.py")):
            self.skipTest("dkimpy-milter not unpacked in %s: run tools/setup-debian.sh" % DKIMPY)
        tmp = mgwtest.make_tmpdir("sdkpy-dkimpy-" + self.mode)
        port = mgwtest.free_port()
        milter, txt = self.dkimpy(tmp, port)
        gw = pf = None
        try:
            spec = "inet:127.0.0.1:%d" % port
            if self.mode != "direct":
                gw = mgwtest.Miltergw(args=["--filter", "dkim=127.0.0.1:%d" % port], tmpdir=tmp)
                spec = gw.spec
            pf = mgwtest.PrivatePostfix(spec)
            # signed (From example.org), with a stale A-R header of ours removed (chgheader);
            # not signed (From elsewhere)
            ours = make_message("sign me", BODY, headers=[
                ("Authentication-Results", "mgwtest.localdomain; dkim=pass header.d=example.org")])
            other, ohdrs, obody = make_message("do not sign", BODY)
            other = other.replace(b"From: Sender <sender@example.org>", b"From: Other <o@example.net>")
            res = session(pf, [("sender@example.org", ["rcpt@example.com"], ours[0]),
                               ("o@example.net", ["rcpt@example.com"], other)])["tx"]
            got = pf.wait_delivered_id(queue_id(res[0]["data"][1]))
            self.assertEqual(got.headers[0][0], "DKIM-Signature")  # inserted at index 0
            self.assertIn("d=example.org;", got.headers[0][1])
            self.assertEqual(got.headers[2:], [h for h in ours[1] if h[0] != "Authentication-Results"])
            sys.path.insert(0, DKIMPY_SITE)
            try:
                import dkim
            finally:
                sys.path.remove(DKIMPY_SITE)
            with open(got.path, "rb") as f:
                raw = f.read()
            msg = raw[raw.index(b"DKIM-Signature:"):].rstrip(b"\n") + b"\n"
            self.assertTrue(dkim.verify(msg.replace(b"\n", b"\r\n"),
                                        dnsfunc=lambda name, timeout=5: txt if name == b"sel1._domainkey.example.org." else None))
            got = pf.wait_delivered_id(queue_id(res[1]["data"][1]))
            self.assertEqual(got.headers[0][0], "Received")
            self.assertNotIn("DKIM-Signature", got.header_names())
            if gw:
                self.assertEqual([l for l in gw.log_lines() if any('msg="%s"' % m in l for m in CONTRACT_BREACH)], [])
        finally:
            for stop in (lambda: pf and pf.stop(), lambda: gw and gw.stop(expect=0), milter.stop):
                stop()


class DkimpyDirect(DkimpyMixin, unittest.TestCase):
    mode = "direct"


class DkimpyGateway(DkimpyMixin, unittest.TestCase):
    mode = "gateway"


# ------------------------------------------------------------------------------------------
# The trace milter: every callback with its arguments, the same in both modes


def trace_scenario(pf):
    # fixed Message-IDs: the two runs must see the same headers; one raw Latin-1 byte
    msg1, _, _ = make_message("trace one", BODY, msgid=False, headers=[
        ("Message-ID", "<trace.one@mgwtest.example>"), ("X-Folded", "first\n\tsecond"),
        ("X-Eight-Bit", "caf\xe9")])
    msg1 = msg1.replace("caf\xe9".encode(), b"caf\xe9")
    big = b"".join(b"body line %06d, making the body span several chunks\r\n" % i for i in range(3000))
    msg2, _, _ = make_message("trace two", big, msgid=False,
                              headers=[("Message-ID", "<trace.two@mgwtest.example>")])
    session(pf, [("sender@example.org", ["a@example.com", "b@example.com"], msg1)],
            before=["FOOBAR arg"])
    with smtplib.SMTP(pf.host, pf.port, local_hostname="client.example", timeout=60) as s:
        s.ehlo()
        s.mail("abandoned@example.org")
        s.rset()
        mgwtest.smtp_transaction(s, "second@example.org", ["c@example.com"], msg2)
    with smtplib.SMTP(pf.host, pf.port, local_hostname="quiet.example", timeout=60) as s:
        s.ehlo()


def normalise(lines):
    """Instance ids and queue ids by order of appearance, client ports removed."""
    ids, qids, out = {}, {}, []
    for rec in lines:
        rec = list(rec)
        rec[1] = ids.setdefault(rec[1], len(ids) + 1)
        if rec[0] == "connect":
            rec[4] = [rec[4][0], "PORT"] + rec[4][2:]
        macros = dict(rec[-1])
        if "i" in macros:
            macros["i"] = "Q%d" % qids.setdefault(macros["i"], len(qids) + 1)
        rec[-1] = macros
        out.append(rec)
    return out


class TraceTest(unittest.TestCase):
    def run_mode(self, mode):
        tmp = mgwtest.make_tmpdir("sdkpy-trace-" + mode)
        trace = os.path.join(tmp, "trace.jsonl")
        st = Stack(mode, "trace_milter.py", [trace], tmp=tmp)
        try:
            mark = st.mark()
            trace_scenario(st.pf)
            st.pf.wait_delivered(2)

            def closes():
                with open(trace) as f:
                    return f.read().count('["close"') >= 3
            wait_for(closes, 20, lambda: "three close() calls in %s" % trace)
            self.assertEqual(st.gateway_complaints(mark), [])
            x_trace = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(sorted(
                (m.header("Subject"), m.header("X-Trace")) for m in st.pf.delivered())), 30,
                "both messages in the sink")
        finally:
            st.stop()
        with open(trace) as f:
            return [json.loads(l) for l in f], x_trace

    def test_same_callbacks_as_pymilter(self):
        direct, xd = self.run_mode("direct")
        gw, xg = self.run_mode("gateway")
        nd, ng = normalise(direct), normalise(gw)
        names = [r[0] for r in nd]
        # the scenario reached every callback
        for cb in ("connect", "hello", "unknown", "envfrom", "envrcpt", "data", "header", "eoh",
                   "body", "eom", "abort", "close"):
            self.assertIn(cb, names)
        self.assertIn(["header", 1, "X-Folded", "first\n\tsecond"], [r[:4] for r in nd])
        self.assertGreater(names.count("body"), 2)
        self.assertEqual(ng, nd)
        self.assertEqual(xg, xd)


# ------------------------------------------------------------------------------------------
# gRPC: Describe, health, reflection, socket names (gateway mode only)


def grpc_modules():
    sys.path.insert(0, installed_sdk())
    import grpc  # noqa: F401
    from miltergw.v1 import filter_pb2, filter_pb2_grpc
    from miltergw._std import health_pb2, reflection_v1alpha_pb2, reflection_v1_pb2
    return grpc, filter_pb2, filter_pb2_grpc, health_pb2, reflection_v1alpha_pb2, reflection_v1_pb2


class GrpcServices(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        (cls.grpc, cls.fpb, cls.fpb_grpc, cls.hpb, cls.rpb_alpha, cls.rpb_v1) = grpc_modules()
        cls.tmp = mgwtest.make_tmpdir("sdkpy-grpc")

    def start(self, milter, socketname, args=()):
        env = dict(os.environ, PYTHONPATH=installed_sdk())
        m = re.match(r"inet:(\d+)@", socketname)
        return MilterProc([mgwtest.PYTHON, converted(milter, self.tmp), socketname] + list(args),
                          self.tmp, "grpc-" + milter[:-3], env=env,
                          port=int(m.group(1)) if m else None,
                          unix=None if m else socketname.split(":", 1)[1])

    def channel(self, target):
        ch = self.grpc.insecure_channel(target)
        self.grpc.channel_ready_future(ch).result(timeout=10)
        self.addCleanup(ch.close)
        return ch

    def health_call(self, ch, method, stream=False):
        kind = ch.unary_stream if stream else ch.unary_unary
        return kind("/grpc.health.v1.Health/" + method,
                    request_serializer=self.hpb.HealthCheckRequest.SerializeToString,
                    response_deserializer=self.hpb.HealthCheckResponse.FromString)

    def test_describe_from_decorators(self):
        port = mgwtest.free_port()
        m = self.start("policy_milter.py", "inet:%d@127.0.0.1" % port, [os.path.join(self.tmp, "r")])
        try:
            stub = self.fpb_grpc.FilterStub(self.channel("127.0.0.1:%d" % port))
            d = stub.Describe(self.fpb.DescribeRequest(filter_name="x"), timeout=10)
            E = self.fpb.EventType
            self.assertEqual(d.name, "policymilter")
            self.assertEqual(sorted(d.events), sorted(E.Value("EVENT_TYPE_" + n) for n in (
                "CONNECT", "HELO", "MAIL", "RCPT", "DATA", "HEADER", "EOH", "BODY", "UNKNOWN", "EOM")))
            self.assertEqual(list(d.observe_only), [E.Value("EVENT_TYPE_HEADER")])
            self.assertEqual(len(d.actions), 8)  # set_flags default: all, as in pymilter
        finally:
            m.stop()

    def test_health_and_reflection(self):
        port = mgwtest.free_port()
        m = self.start("macro_milter.py", "inet:%d@127.0.0.1" % port)
        stopped = False
        try:
            ch = self.channel("127.0.0.1:%d" % port)
            check = self.health_call(ch, "Check")
            SERVING = self.hpb.HealthCheckResponse.SERVING
            for svc in ("", "miltergw.v1.Filter"):
                self.assertEqual(check(self.hpb.HealthCheckRequest(service=svc), timeout=10).status, SERVING)
            with self.assertRaises(self.grpc.RpcError) as e:
                check(self.hpb.HealthCheckRequest(service="no.such.Service"), timeout=10)
            self.assertEqual(e.exception.code(), self.grpc.StatusCode.NOT_FOUND)

            # reflection, both versions: list, then describe the Filter service and a message
            from google.protobuf import descriptor_pb2
            for version, rpb in (("v1alpha", self.rpb_alpha), ("v1", self.rpb_v1)):
                info = ch.stream_stream("/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % version,
                                        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                        response_deserializer=rpb.ServerReflectionResponse.FromString)
                reqs = [rpb.ServerReflectionRequest(list_services=""),
                        rpb.ServerReflectionRequest(file_containing_symbol="miltergw.v1.Filter"),
                        rpb.ServerReflectionRequest(file_containing_symbol="miltergw.v1.Event"),
                        rpb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
                        rpb.ServerReflectionRequest(file_by_filename="miltergw/v1/filter.proto"),
                        rpb.ServerReflectionRequest(file_containing_symbol="no.Such")]
                resps = list(info(iter(reqs), timeout=10))
                self.assertEqual(len(resps), len(reqs))
                self.assertEqual(sorted(s.name for s in resps[0].list_services_response.service),
                                 ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                  "grpc.reflection.v1alpha.ServerReflection", "miltergw.v1.Filter"])
                for r in resps[1:3] + resps[4:5]:
                    fd = descriptor_pb2.FileDescriptorProto.FromString(
                        r.file_descriptor_response.file_descriptor_proto[0])
                    self.assertEqual((fd.name, fd.package), ("miltergw/v1/filter.proto", "miltergw.v1"))
                    svc = [s for s in fd.service if s.name == "Filter"][0]
                    self.assertEqual(sorted(mt.name for mt in svc.method), ["Describe", "Session"])
                    self.assertIn("Event", [mt.name for mt in fd.message_type])
                fd = descriptor_pb2.FileDescriptorProto.FromString(
                    resps[3].file_descriptor_response.file_descriptor_proto[0])
                self.assertEqual(fd.package, "grpc.health.v1")
                self.assertEqual([s.name for s in fd.service], ["Health"])
                self.assertEqual(resps[5].error_response.error_code, self.grpc.StatusCode.NOT_FOUND.value[0])

            # Watch: SERVING now, NOT_SERVING once the milter is stopping, then the end
            watch = self.health_call(ch, "Watch", stream=True)(
                self.hpb.HealthCheckRequest(service="miltergw.v1.Filter"), timeout=30)
            self.assertEqual(next(watch).status, SERVING)
            m.proc.p.send_signal(signal.SIGTERM)
            self.assertEqual(next(watch).status, self.hpb.HealthCheckResponse.NOT_SERVING)
            self.assertEqual(m.proc.p.wait(20), 0)
            stopped = True
        finally:
            if not stopped:
                m.stop(check=False)
            else:
                m.stop()

    def test_unix_socket(self):
        path = os.path.join(self.tmp, "milter.sock")
        m = self.start("macro_milter.py", "unix:" + path)
        try:
            check = self.health_call(self.channel("unix:" + path), "Check")
            self.assertEqual(check(self.hpb.HealthCheckRequest(), timeout=10).status,
                             self.hpb.HealthCheckResponse.SERVING)
        finally:
            m.stop()


if __name__ == "__main__":
    mgwtest.main()
