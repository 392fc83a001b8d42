#!/usr/bin/python3
"""Example filters of three languages on ONE miltergw, and the minimal filters, end to end:
real Postfix -> miltergw -> filters -> smtp-sink.

Mixed: a Python, a Node.js and a C example filter (examples/{python,node,c}) behind one
miltergw, three `--filter` flags; the configuration order is the merge order. Checked on
the outcome through real Postfix: headers added by two filters arrive in configuration
order, a subject refused by the third gets its 550 and is not delivered, a recipient
refused by one filter gets 451 while the other recipient is delivered with the headers.

Minimal: examples/python/minimal.py, examples/node/minimal.js and examples/c/minimal_filter.c
each add X-Hello: world to every message and take an optional HOST:PORT; the Python and
Node.js ones also serve health (a Watch sees NOT_SERVING after SIGTERM, then they exit 0)
and server reflection.

One private Postfix for the file. Each test gets its own 127.0.0.N client address and
miltergw port (Postfix picks the milter by client address, cidr smtpd_milter_maps), starts
its filters, waits until miltergw has described each of them, sends mail, and finally
checks that miltergw logged no contract breach and no level=error line and that it (and
every example filter) exits 0 on SIGTERM. Python stubs are generated into a temp dir;
`npm ci` runs in examples/node if node_modules is missing; the Node parts are skipped only
if `node` is not installed.

Usage: /usr/bin/python3 test_examples_mixed.py --miltergw PATH --example-c PATH
       --minimal-c PATH [unittest options]
"""
import argparse
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import Proc, lf, make_message, queue_id, wait_for  # noqa: E402
from test_examples_py_node import CONTRACT_BREACH, ExampleFilter  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY_DIR = os.path.join(REPO, "examples", "python")
NODE_DIR = os.path.join(REPO, "examples", "node")
NODE = shutil.which("node")
EXAMPLE_C = MINIMAL_C = None  # set from --example-c, --minimal-c

BODY = b"Hello,\r\nthis is the original body.\r\n.a dot line\r\n"
SPAM = (550, "5.7.1 Subject contains forbidden word")
LATER = (451, "4.7.1 Recipient temporarily refused")


def generate_stubs(tmp):
    return mgwtest.generate_python_stubs(tmp)


def npm_ci():
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
        npm = shutil.which("npm")
        if not npm:
            raise AssertionError("node is installed but npm is not: cannot install examples/node")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       stdin=subprocess.DEVNULL, timeout=300)


def _txt(r):
    return r[0], r[1].decode("utf-8", "replace") if isinstance(r[1], bytes) else r[1]


class MixedCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = mgwtest.make_tmpdir("exmix")
        cls.stubs = generate_stubs(cls.tmp)
        if NODE:
            npm_ci()
        cls.pf, cls.slots = mgwtest.postfix_with_milter_per_test(cls, cls.tmp, 150)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def setUp(self):
        self.ip, self.gw_port = self.slots[self._testMethodName]
        self.dir = mgwtest.make_tmpdir("exmix-%s" % self._testMethodName[5:40])
        self.gw = None
        self.filters = []  # (name, ExampleFilter or Proc, exit codes accepted on SIGTERM)
        self.addCleanup(self._stop_processes)

    def _stop_processes(self):
        """miltergw first (its log is checked), then every filter; all by PID."""
        problems = []
        if self.gw is not None:
            # (modifications of a refused message are dropped by design, and logged)
            breaches = [ln for ln in self.gw.log_lines() if "reason=message_refused" not in ln and (
                any('msg="%s"' % m in ln for m in CONTRACT_BREACH) or "level=error" in ln)]
            if breaches:
                problems.append("miltergw complained:\n" + "\n".join(breaches))
            try:
                self.gw.stop(expect=0)
            except AssertionError as e:
                problems.append(str(e))
        for name, f, ok_codes in self.filters:
            rc = f.stop(check=False) if isinstance(f, ExampleFilter) else f.stop()
            if rc not in ok_codes:
                problems.append("filter %s exit code %r on SIGTERM" % (name, rc))
        if problems:
            raise AssertionError("\n\n".join(problems))

    # -- filters and gateway
    def example(self, name, lang, policy, *args, script="filter"):
        """Start an example filter (lang python, node or c) on a port of its choosing."""
        env = None
        if lang == "python":
            argv = [mgwtest.PYTHON, os.path.join(PY_DIR, script + ".py")]
            env = dict(os.environ, MILTERGW_STUBS=self.stubs)
        elif lang == "node":
            if NODE is None:
                self.skipTest("node is not installed")
            argv = [NODE, os.path.join(NODE_DIR, script + ".js")]
        else:
            argv = [EXAMPLE_C if script == "filter" else MINIMAL_C]
        if script == "filter":
            argv += ["--listen", "127.0.0.1:0", policy] + list(args)
            ok = (0,)
        else:  # minimal.(py|js) / minimal_filter [HOST:PORT]; the scripts stop on SIGTERM
            argv += ["127.0.0.1:0"]  # (NOT_SERVING first), the C helper library exits 0
            ok = (0,) if lang != "c" else (0, -signal.SIGTERM)
        f = ExampleFilter(argv, self.dir, name, env=env)
        self.filters.append((name, f, ok))
        return "%s=127.0.0.1:%d" % (name, f.port)

    def gateway(self, *filter_args):
        """miltergw with these `--filter` values, in this order; waits until it has
        described every filter (it listens only after that, or after 5 s without)."""
        args = [a for fa in filter_args for a in ("--filter", fa)]
        self.gw = mgwtest.Miltergw(args=args, tmpdir=self.dir, port=self.gw_port)
        for fa in filter_args:
            self.gw.wait_log(msg="filter described", filter=fa.split("=", 1)[0])

    def context(self):
        return "\n\n".join([
            "miltergw log:\n" + (self.gw.proc.log_tail(30) if self.gw else ""),
            "maillog tail:\n" + self.pf.maillog()[-2500:]])

    # -- sending, from this test's client address
    def session(self, messages):
        """Transactions in one SMTP session: [(from, [rcpts], message)] -> per transaction
        {"mail": (code, text), "rcpt": [(code, text)], "data": (code, text) or None}."""
        results = []
        with smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client.example", timeout=30,
                          source_address=(self.ip, 0)) as s:
            s.ehlo()
            for mail_from, rcpts, msg in messages:
                res = {"mail": _txt(s.mail(mail_from)), "rcpt": [], "data": None}
                if res["mail"][0] == 250:
                    res["rcpt"] = [_txt(s.rcpt(r)) for r in rcpts]
                if any(c == 250 for c, _ in res["rcpt"]):
                    try:
                        res["data"] = _txt(s.data(msg))
                    except smtplib.SMTPDataError as e:
                        res["data"] = _txt((e.smtp_code, e.smtp_error))
                else:
                    s.rset()
                results.append(res)
        return results

    def delivered(self, res):
        self.assertEqual(res["data"][0], 250, "%r\n%s" % (res, self.context()))
        return self.pf.wait_delivered_id(queue_id(res["data"][1]), timeout=30)

    def assertAdded(self, got, hdrs, body, added):
        """Postfix's Received, the original headers, then exactly `added`; body intact."""
        self.assertEqual(got.headers[0][0], "Received")
        self.assertEqual(got.headers[1:], list(hdrs) + list(added), self.context())
        self.assertEqual(got.body, lf(body))


class Mixed(MixedCase):
    def test_01_merge_headers_and_reject(self):
        self.gateway(self.example("py", "python", "addheader", "X-Py", "yes"),
                     self.example("node", "node", "addheader", "X-Node", "yes"),
                     self.example("c", "c", "reject-subject", "viagra"))
        spam, _, _ = make_message("Cheap VIAGRA", BODY)
        clean, hdrs, body = make_message("Lunch on Friday?", BODY)
        res = self.session([("alice@example.org", ["bob@example.com"], spam),
                            ("alice@example.org", ["bob@example.com"], clean)])
        self.assertEqual(res[0]["data"], SPAM, "%r\n%s" % (res, self.context()))
        self.gw.wait_log(msg="verdict", event="BODYEOB", verdict="reject", decided_by="c")
        got = self.delivered(res[1])
        self.assertAdded(got, hdrs, body, [("X-Py", "yes"), ("X-Node", "yes")])
        # refused at end of data, so never queued: nothing with that subject reached the sink
        self.assertEqual([m for m in self.pf.delivered() if m.header("Subject") == "Cheap VIAGRA"], [])

    def test_02_order_is_configuration_order(self):
        # the same languages, other order: the headers follow the --filter order
        self.gateway(self.example("node", "node", "addheader", "X-Node", "first"),
                     self.example("c", "c", "addheader", "X-C", "second"),
                     self.example("py", "python", "addheader", "X-Py", "third"))
        msgs = [make_message("order %d" % i, BODY) for i in range(2)]
        res = self.session([("alice@example.org", ["bob@example.com"], m) for m, _, _ in msgs])
        for r, (_, hdrs, body) in zip(res, msgs):
            self.assertAdded(self.delivered(r), hdrs, body,
                             [("X-Node", "first"), ("X-C", "second"), ("X-Py", "third")])

    def test_03_tempfail_one_recipient(self):
        self.gateway(self.example("py", "python", "addheader", "X-Py", "yes"),
                     self.example("node", "node", "tempfail-rcpt", "mallory@example.com"),
                     self.example("c", "c", "addheader", "X-C", "yes"))
        msg, hdrs, body = make_message("Team update", BODY)
        res = self.session([("alice@example.org", ["bob@example.com", "Mallory@Example.com"], msg)])[0]
        self.assertEqual(res["rcpt"], [(250, "2.1.5 Ok"), LATER], "%r\n%s" % (res, self.context()))
        self.gw.wait_log(msg="verdict", event="RCPT", verdict="tempfail", decided_by="node")
        got = self.delivered(res)
        self.assertEqual(got.rcpts, ["bob@example.com"])
        self.assertAdded(got, hdrs, body, [("X-Py", "yes"), ("X-C", "yes")])


class Minimal(MixedCase):
    def minimal(self, lang):
        self.gateway(self.example("minimal", lang, None, script="minimal"))
        msgs = [make_message("hello %s %d" % (lang, i), BODY) for i in range(2)]
        res = self.session([("alice@example.org", ["bob@example.com", "carol@example.net"], m)
                            for m, _, _ in msgs])
        for r, (_, hdrs, body) in zip(res, msgs):  # two messages on one stream
            got = self.delivered(r)
            self.assertEqual(sorted(got.rcpts), ["bob@example.com", "carol@example.net"])
            self.assertAdded(got, hdrs, body, [("X-Hello", "world")])
        if lang != "c":  # health and reflection too; SIGTERM: a Watch sees NOT_SERVING, exit 0
            f = self.filters[0][1]
            mgwtest.check_std_services(self, f.port, self.stubs, file_name=None if lang == "node"
                                       else "miltergw/v1/filter.proto")
            mgwtest.check_stop_watched(self, f, self.stubs)

    def test_python(self):
        self.minimal("python")

    def test_node(self):
        self.minimal("node")

    def test_c(self):
        self.minimal("c")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--example-c", default=os.environ.get("MGW_EXAMPLE_C"))
    ap.add_argument("--minimal-c", default=os.environ.get("MGW_MINIMAL_C"))
    args, rest = ap.parse_known_args()
    if not all(p and os.access(p, os.X_OK) for p in (args.example_c, args.minimal_c)):
        sys.stderr.write("usage: %s --miltergw PATH --example-c PATH --minimal-c PATH "
                         "[unittest options]\n" % sys.argv[0])
        sys.exit(2)
    EXAMPLE_C, MINIMAL_C = os.path.abspath(args.example_c), os.path.abspath(args.minimal_c)
    mgwtest.main(rest)
