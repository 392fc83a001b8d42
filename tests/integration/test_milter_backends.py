#!/usr/bin/python3
"""Existing milters behind miltergw (kind=milter filters), end to end:
real Postfix -> miltergw -> OpenDKIM / OpenDMARC / the scriptable pymilter milter (and the
gRPC test filter beside them) -> smtp-sink. Everything is checked where it shows: the SMTP
client's replies, the delivered message (smtp-sink dump), Postfix's maillog and hold queue,
the milters' own records, miltergw's log and /metrics.

  - MilterChain: the chain of the issue. A message pre-signed by OpenDKIM goes through
    phase 0 = an OpenDKIM signer + an OpenDKIM verifier (parallel), phase 1 = OpenDMARC,
    phase 2 = the gRPC test filter: dkim=pass, dmarc=pass, the gRPC filter saw both
    results, the signer's new signature is there. The same milters in ONE phase each see
    the original: OpenDMARC finds no DKIM result (dmarc=fail). Sign in phase 0, verify
    the new signature in phase 1.
  - MilterPhases: script milters in phases 0 and 1: phase 1 sees phase 0's edits, the
    sink gets the net of both (explicit expectations, and the same two milters chained
    in Postfix itself as the reference); refusals in phase 0 never reach phase 1;
    envelope changes, a 3 MB body, several messages per session, shadow and failing
    milters in phase 0.
  - MilterVerdicts: every verdict at every stage Postfix allows, setreply text (one and
    several lines), every modification, quarantine, progress on a slow end of message.
  - MilterFaults: a milter dying mid-message, hanging past its eom_timeout, asking for
    actions it was not offered or a newer version, down at start and back later.
  - MilterOperations: shadow mode, /metrics, SIGHUP switching a milter's target.

Two gateway bugs these tests found are fixed and pinned here: a milter's final verdict
before the end of message waited on until its timeout (MilterVerdicts.test_2,
MilterChain.test_4), and inserts of two phases swapped and put below Postfix's Received
(MilterPhases.test_2, test_9).

One private Postfix for the module: every test has its own 127.0.0.N source address and
miltergw port (cidr smtpd_milter_maps), its own milters and gateway, stopped by PID and
checked after the test (miltergw exit 0 on SIGTERM, no level=error line).

Usage: /usr/bin/python3 test_milter_backends.py --miltergw PATH --test-filter PATH
       [unittest options]
Exits 77 (skipped) if opendkim, opendmarc or python3-milter is missing.
"""
import os
import re
import smtplib
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
import milters  # noqa: E402
from mgwtest import (MiltergwFile, Miltergw, TestFilter, lf, make_message, queue_id,  # noqa: E402
                     wait_for, write_file, yaml_dump)
from milters import ScriptMilter, auth_results, message_bytes, milter_filter_arg, sha256  # noqa: E402

BODY = (b"Hello,\r\n"
        b".a line that starts with a dot\r\n"
        b"\ttab-indented line   \r\n"
        b"\r\n"
        b"last line\r\n")

PF = None  # the module's PrivatePostfix
SLOTS = {}  # "Class.test_method" -> (127.0.0.N source address, miltergw port)


def _test_classes():
    return [c for c in globals().values()
            if isinstance(c, type) and issubclass(c, BackendCase) and c is not BackendCase]


def setUpModule():
    global PF
    if not mgwtest.TEST_FILTER:
        raise unittest.SkipTest("no --test-filter PATH given")
    PF, slots = mgwtest.postfix_with_milter_per_test(_test_classes(), mgwtest.make_tmpdir("mbackends"),
                                                     10, qualify=True)
    SLOTS.update(slots)


def tearDownModule():
    if PF is not None:
        PF.stop()


class BackendCase(unittest.TestCase):
    maxDiff = None
    """Per test: a source address, a miltergw port, a temp dir; the milters, gRPC filters
    and gateway the test starts are stopped by PID and checked in cleanup."""

    def setUp(self):
        self.ip, self.gw_port = SLOTS["%s.%s" % (type(self).__name__, self._testMethodName)]
        self.dir = mgwtest.make_tmpdir("mb-%s" % self._testMethodName[:40])
        self.gw = None
        self.gw_stopped = False
        self.tfilters = []
        self.milters = []
        self.addCleanup(self._stop_processes)

    def _stop_processes(self):
        problems = []
        try:
            mgwtest.stop_and_check(self.gw, self.tfilters, self.gw_stopped)
        except AssertionError as e:
            problems.append(str(e))
        try:
            milters.stop_all(self.milters)
        except AssertionError as e:
            problems.append(str(e))
        if problems:
            raise AssertionError("\n\n".join(problems))

    # -- processes
    def milter(self, *args, name="sm", start=True):
        m = ScriptMilter(*args, name=name, start=start)
        self.milters.append(m)
        return m

    def tfilter(self, *args, name="tf"):
        f = TestFilter(args, tmpdir=self.dir, name=name)
        self.tfilters.append(f)
        return f

    def gateway(self, *filter_args, extra=()):
        argv = list(extra)
        for a in filter_args:
            argv += ["--filter", a]
        # a directory (and so a log) of its own for every gateway a test starts
        self.gw = Miltergw(args=argv, tmpdir=mgwtest.make_tmpdir("mb-gw"), port=self.gw_port)
        return self.gw

    def restart_gateway(self, *filter_args):
        """Stop this test's gateway (checked) and start another on the same port."""
        if self.gw is not None:
            mgwtest.stop_and_check(self.gw, [], False)
            self.gw = None
        return self.gateway(*filter_args)

    def gateway_file(self, cfg):
        path = os.path.join(self.dir, "miltergw.yaml")
        write_file(path, yaml_dump(cfg) + "\n")
        self.gw = MiltergwFile(path, tmpdir=self.dir, port=self.gw_port)
        return self.gw

    def config(self, filters, **top):
        cfg = {"listen": ["inet:127.0.0.1:%d" % self.gw_port],
               "http": {"listen": "127.0.0.1:0", "ready": "any"},
               "log": {"level": "info", "format": "logfmt"},
               "drain_timeout": "10s"}
        cfg.update(top)
        cfg["filters"] = filters
        return cfg

    # -- SMTP from this test's address
    def session(self, messages, helo="client.example"):
        return mgwtest.smtp_session_at(PF.host, PF.port, messages, helo, timeout=60, source_ip=self.ip)

    def send(self, msg, rcpts=("rcpt@example.com",), from_="sender@example.org"):
        """One session, one transaction: smtp_run()."""
        return smtp_run(self.ip, from_, list(rcpts), msg)

    def send_held_open(self, msg, until):
        """One transaction on an SMTP session kept open until until() is true (bounded
        wait), then QUIT: a shadow milter's answer arrives after the MTA was answered, and
        is lost if the MTA's connection ends first (docs/migrating.md)."""
        s = smtplib.SMTP(PF.host, PF.port, local_hostname="client.example", timeout=60,
                         source_address=(self.ip, 0))
        try:
            s.ehlo()
            res = mgwtest.smtp_transaction(s, "sender@example.org", ["rcpt@example.com"], msg)
            wait_for(until, 15, lambda: "the condition with the session open\n" + self.context())
            s.quit()
        finally:
            s.close()
        return res

    def delivered(self, res):
        self.assertTrue(res["data"] and res["data"][0] == 250, "%r\n%s" % (res, self.context()))
        return PF.wait_delivered_id(queue_id(res["data"][1]), timeout=60)

    def context(self):
        parts = []
        if self.gw is not None:
            parts.append("miltergw log:\n" + self.gw.proc.log_tail(40))
        for m in self.milters:
            parts.append("milter %s output:\n%s\nrecords (tail):\n%s"
                         % (m.name, m.proc.log_tail(10) if m.proc else "-", m.record_text()[-1500:]))
        for f in self.tfilters:
            parts.append("filter %s records (tail):\n%s" % (f.name, f.record_text()[-1500:]))
        parts.append("maillog tail:\n" + PF.maillog()[-2500:])
        return "\n\n".join(parts)

    def wait_gw_log(self, timeout=10, **kv):
        return self.gw.wait_log(timeout=timeout, **kv)


# =========================================================================================
# 1 and 2. The chain of the issue: OpenDKIM, OpenDMARC and a gRPC filter in phases


class MilterChain(BackendCase):
    """keys: `mgw` signs the message before (a private Postfix with OpenDKIM), `gw` is the
    key of the signer behind miltergw (so its new signature is told apart)."""

    @classmethod
    def setUpClass(cls):
        cls.key = milters.DkimKey(domain="example.org", selector="mgw")
        cls.gw_key = milters.DkimKey(domain="example.org", selector="gw")
        cls.presigner = milters.OpenDkimSigner(cls.key, authserv_id="presign.mgwtest", name="opendkim-presign")
        # every test sends from its own 127.0.0.N: all of them are the signer's own hosts
        hosts = os.path.join(milters.safe_tmpdir("internal-hosts"), "internal-hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.0/8\n")
        cls.signer = milters.OpenDkimSigner(cls.gw_key, authserv_id="sign.mgwtest",
                                            extra_conf={"InternalHosts": hosts})
        # the same key with OpenDKIM's default InternalHosts (127.0.0.1 only): mail from
        # 127.0.0.N is inbound to it, and it neither signs nor verifies it
        cls.outbound_signer = milters.OpenDkimSigner(cls.gw_key, authserv_id="sign.mgwtest",
                                                     name="opendkim-sign-outbound")
        cls.verifier = milters.OpenDkimVerifier([cls.key, cls.gw_key])
        cls.dmarc = milters.OpenDmarc({"_dmarc.example.org": "v=DMARC1; p=reject"})
        cls.pf_sign = mgwtest.PrivatePostfix(milters.postfix_milters(cls.presigner))
        try:
            msg, _, _ = make_message("the chain of the issue", BODY)
            rc, out = cls.pf_sign.swaks(data=msg)
            if rc != 0:
                raise AssertionError("pre-signing failed:\n%s" % out)
            signed = cls.pf_sign.wait_delivered_id(queue_id(out))
        finally:
            cls.pf_sign.stop()
        if signed.header("DKIM-Signature") is None:
            raise AssertionError("the pre-signing Postfix did not sign: %r" % signed.headers)
        cls.signed = message_bytes(signed)

    @classmethod
    def tearDownClass(cls):
        milters.stop_all([cls.presigner, cls.signer, cls.outbound_signer, cls.verifier, cls.dmarc])

    def grpc_echo(self, stamp="X-Seen-AR:Authentication-Results"):
        """The gRPC test filter, stamping each message with the last header it received of
        one name (--echo-header keeps one NAME:SRC), recording every header it got."""
        return self.tfilter("--echo-header", stamp, name="echo")

    @staticmethod
    def sig_selectors(msg):
        return sorted(re.search(r"\bs=([^;\s]+)", re.sub(r"\s+", "", v)).group(1)
                      for n, v in msg.headers if n.lower() == "dkim-signature")

    def check_chain(self, got, echo, signatures):
        """dkim=pass by the verifier for the pre-signed message (selector mgw), dmarc=pass
        by OpenDMARC, and the gRPC filter in the last phase saw both results."""
        ctx = lambda: "%r\n%s" % (got.headers, self.context())  # noqa: E731
        dkim = auth_results(got, "dkim.mgwtest")
        self.assertEqual(len(dkim), 1, ctx())
        self.assertRegex(dkim[0], r"^dkim\.mgwtest; dkim=pass \(2048-bit key\) header\.d=example\.org "
                                  r"header\.i=@example\.org header\.a=rsa-sha256 header\.s=mgw header\.b=")
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=pass (p=reject dis=none) header.from=example.org"], ctx())
        self.assertEqual(self.sig_selectors(got), signatures, ctx())
        # the last phase was replayed the message as the earlier ones left it: both results
        # among its headers; its stamp is the last Authentication-Results it saw
        seen = [(r["name"], re.sub(r"\s+", " ", r.get("value", "")).strip()) for r in echo.find("header")]
        seen_ar = [v for n, v in seen if n.lower() == "authentication-results"]
        self.assertEqual(len(seen_ar), 2, seen)
        self.assertTrue(any(v.startswith("dkim.mgwtest; dkim=pass (2048-bit key) header.d=example.org")
                            for v in seen_ar), seen)
        self.assertIn("dmarc.mgwtest; dmarc=pass (p=reject dis=none) header.from=example.org", seen_ar, seen)
        stamp = re.sub(r"\s+", " ", got.header("X-Seen-AR") or "").strip()
        self.assertEqual(stamp, seen_ar[-1], ctx())
        self.assertEqual(got.body, lf(BODY))

    def test_1_phases_sign_verify_dmarc_grpc(self):
        """The chain of the issue: phase 0 = signer + verifier, phase 1 = OpenDMARC,
        phase 2 = the gRPC filter; a message pre-signed with key mgw."""
        echo = self.grpc_echo()
        self.gateway(milter_filter_arg("sign", self.signer, phase=0),
                     milter_filter_arg("verify", self.verifier, phase=0),
                     milter_filter_arg("dmarc", self.dmarc, phase=1),
                     mgwtest.filter_arg("echo", echo, phase=2))
        res = self.send(self.signed)
        got = self.delivered(res)
        # the verifier (parallel to the signer) saw only the original signature; the
        # signer's new one (key gw) is on the delivered message
        self.check_chain(got, echo, ["gw", "mgw"])
        seen_sigs = [r for r in echo.find("header") if r["name"].lower() == "dkim-signature"]
        self.assertEqual(len(seen_sigs), 2, self.context())
        self.assertEqual(self.gw.find_log(msg="filter failed"), [], self.context())
        self.assertLess(res["t"], 5.0, res)

    def test_2_one_phase_each_sees_the_original(self):
        """The same milters in one phase: each sees the message as received. OpenDMARC
        finds no DKIM result (dmarc=fail), the gRPC filter no Authentication-Results.
        """
        echo = self.grpc_echo()
        self.gateway(milter_filter_arg("sign", self.signer),
                     milter_filter_arg("verify", self.verifier),
                     milter_filter_arg("dmarc", self.dmarc),
                     mgwtest.filter_arg("echo", echo))
        got = self.delivered(self.send(self.signed))
        ctx = lambda: "%r\n%s" % (got.headers, self.context())  # noqa: E731
        dkim = auth_results(got, "dkim.mgwtest")
        self.assertEqual(len(dkim), 1, ctx())
        self.assertRegex(dkim[0], r"^dkim\.mgwtest; dkim=pass \(2048-bit key\) .*header\.s=mgw ")
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=fail (p=reject dis=none) header.from=example.org"], ctx())
        self.assertEqual([r for r in echo.find("header") if r["name"].lower() == "authentication-results"], [])
        self.assertIsNone(got.header("X-Seen-AR"), ctx())
        self.assertEqual(len([r for r in echo.find("header") if r["name"].lower() == "dkim-signature"]), 1)
        self.assertEqual(self.sig_selectors(got), ["gw", "mgw"], ctx())
        self.assertEqual(self.gw.find_log(msg="filter failed"), [], self.context())

    def test_3_sign_then_verify_in_later_phases(self):
        """An unsigned message: phase 0 signs (key gw), phase 1 verifies that new signature
        on the message as replayed by the gateway, phase 2 OpenDMARC, phase 3 gRPC."""
        echo = self.grpc_echo("X-Seen-Sig:DKIM-Signature")
        self.gateway(milter_filter_arg("sign", self.signer, phase=0),
                     milter_filter_arg("verify", self.verifier, phase=1),
                     milter_filter_arg("dmarc", self.dmarc, phase=2),
                     mgwtest.filter_arg("echo", echo, phase=3))
        msg, _, _ = make_message("signed in phase 0", BODY)
        res = self.send(msg)
        got = self.delivered(res)
        ctx = lambda: "%r\n%s" % (got.headers, self.context())  # noqa: E731
        self.assertEqual(self.sig_selectors(got), ["gw"], ctx())
        dkim = auth_results(got, "dkim.mgwtest")
        self.assertEqual(len(dkim), 1, ctx())
        self.assertRegex(dkim[0], r"^dkim\.mgwtest; dkim=pass \(2048-bit key\) header\.d=example\.org "
                                  r"header\.i=@example\.org header\.a=rsa-sha256 header\.s=gw header\.b=")
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=pass (p=reject dis=none) header.from=example.org"], ctx())
        self.assertRegex(re.sub(r"\s+", "", got.header("X-Seen-Sig") or ""), r"\bs=gw;", ctx())
        self.assertEqual(self.gw.find_log(msg="filter failed"), [], self.context())


    def test_4_signer_accepts_inbound_mail(self):
        """OpenDKIM signing only (Mode s) and a message from a client that is not one of its
        InternalHosts: it answers ACCEPT at the end of headers (checked against Postfix
        alone, which delivers the message at once, unsigned).

        The ACCEPT comes while the body and end of message are already streamed to
        OpenDKIM; libmilter answers neither (it is done with the message), and the gateway
        knows it (milter_client.c, ends_message): the message is delivered at once, not
        tempfailed after the filter's timeout. Same with the script milter:
        MilterVerdicts.test_2_verdicts_during_content."""
        self.gateway(milter_filter_arg("sign", self.outbound_signer, timeout="3s"),
                     milter_filter_arg("verify", self.verifier))
        msg, _, _ = make_message("inbound to the signer", BODY)
        res = self.send(msg)
        got = self.delivered(res)
        self.assertEqual(self.sig_selectors(got), [], got.headers)
        self.assertEqual(auth_results(got, "dkim.mgwtest"), ["dkim.mgwtest; dkim=none; dkim-atps=neutral"])
        self.assertLess(res["t"], 2.0, res)


# =========================================================================================
# 3. Phases and modifications


P0_MODS = ("--addheader", "X-P0-Added:added by p0",
           "--insheader", "0:X-P0-Top:inserted by p0 at 0",
           "--chgheader", "X-Change:1:changed by p0",
           "--chgheader", "X-Delete-Me:1:",
           "--chgheader", "X-Multi:2:second changed by p0",
           "--replacebody", "p0 body\\nline two\\n")
P1_MODS = ("--copy-header", "X-P0-Added", "--copy-header", "X-Change",
           "--copy-header", "X-Delete-Me", "--copy-header", "X-P0-Top",
           "--addheader", "X-P1-Added:added by p1",
           "--insheader", "1:X-P1-Ins:inserted by p1 at 1",
           "--chgheader", "X-Keep:1:changed by p1")
EXTRA_HEADERS = [("X-Keep", "kept"), ("X-Change", "original"), ("X-Delete-Me", "bye"),
                 ("X-Multi", "one"), ("X-Folded", "first part\n\tsecond part"),
                 ("X-Spaced", "  two leading spaces, trailing ones  "), ("X-Multi", "two")]


class MilterPhases(BackendCase):

    def chain_reference(self, msg):
        """The same two milters chained in a private Postfix (no miltergw): the reference."""
        m0 = self.milter(*P0_MODS, name="ref-p0")
        m1 = self.milter(*P1_MODS, name="ref-p1")
        pf = mgwtest.PrivatePostfix(milters.postfix_milters(m0, m1))
        try:
            res = pf.smtp_session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
            return pf.wait_delivered_id(queue_id(res["data"][1]))
        finally:
            pf.stop()

    def test_1_net_of_two_phases(self):
        p0 = self.milter(*P0_MODS, name="p0")
        p1 = self.milter(*P1_MODS, "--replacebody", "p1 body\\n", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, hdrs, _ = make_message("phases", BODY, headers=EXTRA_HEADERS)
        got = self.delivered(self.send(msg))
        ctx = lambda: "%r\n%s" % (got.headers, self.context())  # noqa: E731

        # phase 1 was shown the message as phase 0 left it
        eom1 = p1.wait_record("eom")[0]
        seen = [tuple(h) for h in eom1["headers"]]
        self.assertEqual(eom1["body_sha256"], sha256(b"p0 body\r\nline two\r\n"), ctx())
        self.assertIn(("X-P0-Added", "added by p0"), seen)
        self.assertIn(("X-P0-Top", "inserted by p0 at 0"), seen)
        self.assertNotIn("X-Delete-Me", [n for n, _ in seen])
        self.assertEqual([v for n, v in seen if n == "X-Multi"], ["one", "second changed by p0"])
        # ... exactly, in order: p0's insert at 0 on top, its add at the end; untouched
        # headers (folded, spaced) exactly as phase 0 got them from Postfix
        orig = [tuple(h) for h in p0.wait_record("eom")[0]["headers"]]
        self.assertEqual(len(orig), len(hdrs), orig)
        want_seen = [("X-P0-Top", "inserted by p0 at 0")]
        for n, v in orig:
            if n == "X-Delete-Me":
                continue
            if n == "X-Change":
                v = "changed by p0"
            if (n, v) == ("X-Multi", "two"):
                v = "second changed by p0"
            want_seen.append((n, v))
        want_seen.append(("X-P0-Added", "added by p0"))
        self.assertEqual(seen, want_seen, ctx())
        self.assertEqual(p1.find("eom_done")[0]["errors"], [])

        # the sink: the net of both phases. Everything but the two inserted headers in
        # order here; their places are test_2's (a gateway bug)
        want = [("X-P0-Top", "inserted by p0 at 0"), ("X-P1-Ins", "inserted by p1 at 1"),
                ("Received", "-")]
        for n, v in want_seen[1:]:
            want.append((n, "changed by p1" if n == "X-Keep" else v))
        want += [("X-P1-Added", "added by p1"), ("X-Seen-X-P0-Added", "added by p0"),
                 ("X-Seen-X-Change", "changed by p0"), ("X-Seen-X-Delete-Me", "(absent)"),
                 ("X-Seen-X-P0-Top", "inserted by p0 at 0")]
        got_h = [(n, "-" if n == "Received" else v) for n, v in got.headers]
        inserted = ("X-P0-Top", "X-P1-Ins")
        self.assertEqual(sorted(got_h), sorted(want), ctx())
        self.assertEqual([h for h in got_h if h[0] not in inserted],
                         [h for h in want if h[0] not in inserted], ctx())
        # phase 1 replaced the body phase 0 had replaced: the last replacement is delivered
        self.assertEqual(got.body, b"p1 body\n", ctx())
        v = self.wait_gw_log(msg="verdict", event="BODYEOB")[-1]
        self.assertEqual(v.get("verdict"), "continue", v)

    def test_2_same_as_a_postfix_chain(self):
        """Two phases give the message two smtpd_milters give in Postfix itself.

        Phase 0 inserts X-P0-Top at index 0, phase 1 (shown X-P0-Top at 0) inserts X-P1-Ins
        at index 1. Postfix's own chain delivers X-P0-Top, X-P1-Ins, Received, From...: an
        index counts Postfix's hidden Received, and index 0 goes above it. The gateway
        keeps such headers apart (msg_edit.h, HIDDEN HEADERS) and nets them last, at 0
        and 1, so the message is the same (it once swapped them and put both below
        Received)."""
        p0 = self.milter(*P0_MODS, name="p0")
        p1 = self.milter(*P1_MODS, name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        # a Message-ID of its own: Postfix adds one only for clients on its own address
        msg, _, _ = make_message("same as chain", BODY, msgid=False,
                                 headers=[("Message-ID", "<same.as.chain@mgwtest.example>")] + EXTRA_HEADERS)
        got = self.delivered(self.send(msg))
        ref = self.chain_reference(msg)
        # Postfix's own Received header is compared by its place only
        strip = lambda m: [(n, v if n != "Received" else "-") for n, v in m.headers]  # noqa: E731
        self.assertEqual(strip(got), strip(ref), self.context())
        self.assertEqual(got.body, ref.body)
        self.assertEqual(got.body, b"p0 body\nline two\n")

    def test_3_refusal_at_rcpt_never_reaches_phase_1(self):
        p0 = self.milter("--at", "rcpt/bad=reject:550:5.7.1:p0 refuses bad", name="p0")
        p1 = self.milter("--addheader", "X-P1:yes", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("rcpt refused in p0", BODY)
        res = self.send(msg, rcpts=("good@example.com", "bad@example.com"))
        self.assertEqual(res["rcpt"], [(250, "2.1.5 Ok"), (550, "5.7.1 p0 refuses bad")], self.context())
        got = self.delivered(res)
        self.assertEqual(got.rcpts, ["good@example.com"])
        self.assertEqual(got.header("X-P1"), "yes")
        p1.wait_record("close")
        self.assertEqual([r["args"][0] for r in p1.find("rcpt")], ["<good@example.com>"], self.context())
        self.assertEqual([r["args"][0] for r in p0.find("rcpt")], ["<good@example.com>", "<bad@example.com>"])

    def test_4_refusal_at_eom_never_reaches_phase_1(self):
        p0 = self.milter("--at", "eom=reject:554:5.7.1:p0 rejects the message", name="p0")
        p1 = self.milter("--addheader", "X-P1:yes", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("eom refused in p0", BODY)
        res = self.send(msg)
        self.assertEqual(res["data"], (554, "5.7.1 p0 rejects the message"), self.context())
        p0.wait_record("close")
        p1.wait_record("close")
        events1 = [r["event"] for r in p1.records()]
        # envelope events went on to phase 1; the content and end of message never did
        self.assertIn("rcpt", events1)
        for ev in ("header", "eoh", "body", "eom"):
            self.assertNotIn(ev, events1, self.context())
        self.wait_gw_log(msg="verdict", event="BODYEOB", verdict="reject", decided_by="p0")


    def test_5_envelope_changes_across_phases(self):
        """Sender and recipient changes are not replayed as events to a later phase (as in
        a Postfix chain); the MTA gets the net of both phases."""
        p0 = self.milter("--chgfrom", "<p0-sender@example.org>", "--addrcpt", "<p0-added@example.com>",
                         "--delrcpt", "<p0-gone@example.com>", name="p0")
        p1 = self.milter("--addrcpt-par", "<p1-added@example.com>:NOTIFY=NEVER",
                         "--delrcpt", "<p1-gone@example.com>", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("envelope across phases", BODY)
        res = self.send(msg, rcpts=("kept@example.com", "p0-gone@example.com", "p1-gone@example.com"))
        got = self.delivered(res)
        self.assertEqual(got.mail_from, "p0-sender@example.org", self.context())
        self.assertEqual(sorted(got.rcpts), ["kept@example.com", "p0-added@example.com", "p1-added@example.com"],
                         self.context())
        # phase 1 saw the original envelope events only, and both milters' changes worked
        self.assertEqual([r["args"][0] for r in p1.find("mail")], ["<sender@example.org>"])
        self.assertEqual([r["args"][0] for r in p1.find("rcpt")],
                         ["<kept@example.com>", "<p0-gone@example.com>", "<p1-gone@example.com>"])
        self.assertEqual(p0.find("eom_done")[0]["errors"], [])
        self.assertEqual(p1.find("eom_done")[0]["errors"], [])

    def test_6_large_body_replayed(self):
        """A body over limits.phase_memory (1 MiB) is replayed to phase 1 from the gateway's
        temporary file, byte for byte; phase 0's header reaches phase 1 too."""
        body = b"".join(b"%07d the quick brown fox jumps over the lazy dog .......\r\n" % i
                        for i in range(48000))  # about 3 MB
        self.assertGreater(len(body), 2 * 1024 * 1024)
        p0 = self.milter("--addheader", "X-P0:big", name="p0")
        p1 = self.milter("--copy-header", "X-P0", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("large body", body)
        got = self.delivered(self.send(msg))
        eom1 = p1.wait_record("eom")[0]
        self.assertEqual((eom1["body_len"], eom1["body_sha256"]), (len(body), sha256(body)))
        eom0 = p0.wait_record("eom")[0]
        self.assertEqual((eom0["body_len"], eom0["body_sha256"]), (len(body), sha256(body)))
        self.assertEqual(got.header("X-P0"), "big")
        self.assertEqual(got.header("X-Seen-X-P0"), "big")
        self.assertEqual(sha256(got.body), sha256(lf(body)))

    def test_7_later_phase_refuses_after_earlier_edits(self):
        """Phase 0 edits, phase 1 rejects the message: the MTA gets phase 1's reject and
        text (and nothing is delivered); a quarantine in phase 0 with phase 1 continuing
        holds the next message."""
        p0 = self.milter("--addheader", "X-P0:edited", "--replacebody", "p0 body\\n", name="p0")
        p1 = self.milter("--at", "eom=reject:554:5.7.1:phase 1 says no", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("phase 1 refuses", BODY)
        res = self.send(msg)
        self.assertEqual(res["eom"], (554, "5.7.1 phase 1 says no"), self.context())
        eom1 = p1.wait_record("eom")[0]
        self.assertIn(["X-P0", "edited"], eom1["headers"])
        self.assertEqual(eom1["body_sha256"], sha256(b"p0 body\r\n"))
        self.wait_gw_log(msg="verdict", event="BODYEOB", verdict="reject", decided_by="p1")

    def test_8_quarantine_in_phase_0(self):
        p0 = self.milter("--quarantine", "phase 0 holds it", name="p0")
        p1 = self.milter("--addheader", "X-P1:yes", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("quarantine in phase 0", BODY)
        res = self.send(msg)
        self.assertEqual(res["eom"][0], 250, res)
        qid = queue_id(res["eom"][1])
        PF.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE .*milter triggers HOLD action" % qid, 15)
        wait_for(lambda: [e for e in PF.hold_queue() if e.get("queue_id") == qid], 15,
                 lambda: "%s in the hold queue\n%s" % (qid, self.context()))
        # phase 1 was still asked (a quarantine is no refusal)
        p1.wait_record("eom_done")

    def test_9_insert_at_0_with_a_later_phase(self):
        """Phase 0 inserts a header at index 0, phase 1 only adds one. With one phase (and
        in Postfix's own chain) the header goes on top, above Postfix's Received
        (test_3_every_modification of MilterVerdicts).

        With a second phase the net sent to Postfix is SMFIR_INSHEADER index 0 too (it once
        was 1, and the header landed below Received: Received, X-P0-Top, From...)."""
        p0 = self.milter("--insheader", "0:X-P0-Top:p0 at 0", name="p0")
        p1 = self.milter("--addheader", "X-P1:yes", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("insert at 0, two phases", BODY)
        got = self.delivered(self.send(msg))
        self.assertEqual(got.headers[0], ("X-P0-Top", "p0 at 0"), got.headers)
        self.assertEqual(got.headers[-1], ("X-P1", "yes"), got.headers)

    def test_10_several_messages_in_one_session(self):
        """Three transactions on one SMTP connection (one milter connection per phase): the
        second is refused at MAIL by phase 0 and never reaches phase 1; the others each
        get phase 0's edit, seen by phase 1."""
        p0 = self.milter("--at", "mail/refuse=reject:550:5.7.1:p0 refuses this sender",
                         "--addheader", "X-P0:edited", name="p0")
        p1 = self.milter("--copy-header", "X-P0", "--copy-header", "Subject", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0), milter_filter_arg("p1", p1, phase=1))
        msgs = [make_message("session message %d" % i, BODY)[0] for i in range(3)]
        res = self.session([("sender@example.org", ["a@example.com"], msgs[0]),
                            ("refuse@example.org", ["b@example.com"], msgs[1]),
                            ("sender@example.org", ["c@example.com"], msgs[2])])
        self.assertEqual(res[1]["mail"], (550, "5.7.1 p0 refuses this sender"), self.context())
        for i in (0, 2):
            got = self.delivered({"data": res[i]["data"]})
            self.assertEqual(got.header("X-P0"), "edited")
            self.assertEqual(got.header("X-Seen-X-P0"), "edited")
            self.assertEqual(got.header("X-Seen-Subject"), "session message %d" % i)
        p1.wait_record("close")
        self.assertEqual([r["args"][0] for r in p1.find("mail")], ["<sender@example.org>", "<sender@example.org>"])
        self.assertEqual(len(p1.find("eom")), 2)
        # one milter connection per phase for the SMTP session (the others are probes)
        for m in (p0, p1):
            self.assertEqual(len([c for c in m.conns().values() if any(r["event"] == "connect" for r in c)]), 1)

    def test_11_shadow_in_phase_0_is_not_shown_to_phase_1(self):
        """A shadow milter's modifications are not applied: a later phase does not see them
        either, nor does its reject stop the message."""
        p0 = self.milter("--addheader", "X-Shadow:would add", "--at", "eom=reject:554:5.7.1:shadow no", name="p0")
        p1 = self.milter("--copy-header", "X-Shadow", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0, mode="shadow"), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("shadow in phase 0", BODY)
        got = self.delivered(self.send_held_open(
            msg, lambda: self.gw.find_log(msg="shadow verdict", filter="p0", event="BODYEOB")))
        self.assertIsNone(got.header("X-Shadow"), got.headers)
        self.assertEqual(got.header("X-Seen-X-Shadow"), "(absent)", got.headers)
        self.wait_gw_log(msg="shadow verdict", filter="p0", verdict="reject", applied="no")

    def test_12_failing_phase_0_milter_fails_open(self):
        """Phase 0 dies mid-message with on_error=accept: phase 1 still gets the message (as
        received) and its edit is delivered."""
        p0 = self.milter("--die-at", "body", "--addheader", "X-P0:never", name="p0")
        p1 = self.milter("--addheader", "X-P1:yes", "--copy-header", "X-P0", name="p1")
        self.gateway(milter_filter_arg("p0", p0, phase=0, on_error="accept"), milter_filter_arg("p1", p1, phase=1))
        msg, _, _ = make_message("phase 0 dies", BODY)
        res = self.send(msg)
        got = self.delivered(res)
        self.assertIsNone(got.header("X-P0"))
        self.assertEqual(got.header("X-P1"), "yes", self.context())
        self.assertEqual(got.header("X-Seen-X-P0"), "(absent)")
        self.assertEqual(p0.wait_exit(10), ScriptMilter.DIE_EXIT)
        self.wait_gw_log(msg="filter failed", filter="p0", on_error="accept")
        self.assertLess(res["t"], 5.0, res)


# =========================================================================================
# 4. Every verdict and modification kind through a milter backend


# (stage, milter --at, what the client sees): (command, code, text) of the first refusal,
# "delivered" (with the milter's EOM header unless it accepted earlier), or "discarded".
# Postfix answers a refused connection with its own greeting (the milter's text is logged).
VERDICT_CASES = [
    ("connect", "connect=reject:550:5.7.1:no connection", ("connect", 554, None)),
    ("connect", "connect=tempfail:451:4.7.1:later, connection", ("mail", 451, "4.7.1 later, connection")),
    ("connect", "connect=accept", "delivered"),
    ("helo", "helo=reject:550:5.7.1:bad helo", ("mail", 550, "5.7.1 bad helo")),
    ("helo", "helo=tempfail:451:4.7.1:helo later", ("mail", 451, "4.7.1 helo later")),
    ("mail", "mail=reject:553:5.7.1:not you", ("mail", 553, "5.7.1 not you")),
    ("mail", "mail=tempfail:451:4.7.1:you later", ("mail", 451, "4.7.1 you later")),
    ("mail", "mail=accept", "delivered"),
    ("mail", "mail=discard", "discarded"),
    ("rcpt", "rcpt=reject:550:5.7.1:no such user", ("rcpt", 550, "5.7.1 no such user")),
    ("rcpt", "rcpt=tempfail:450:4.7.1:mailbox busy", ("rcpt", 450, "4.7.1 mailbox busy")),
    ("rcpt", "rcpt=accept", "delivered"),
    ("rcpt", "rcpt=discard", "discarded"),
    ("data", "data=reject:554:5.7.1:no data", ("data", 554, "5.7.1 no data")),
    ("data", "data=tempfail:451:4.7.1:data later", ("data", 451, "4.7.1 data later")),
    ("data", "data=discard", "discarded"),
    ("body", "body=reject:554:5.7.1:bad body", ("eom", 554, "5.7.1 bad body")),
    ("body", "body=tempfail:451:4.7.1:body later", ("eom", 451, "4.7.1 body later")),
    ("body", "body=discard", "discarded"),
    ("body", "body=skip", "delivered"),
    ("eom", "eom=continue", "delivered"),
    ("eom", "eom=accept", "delivered"),
    ("eom", "eom=reject:554:5.7.1:message refused", ("eom", 554, "5.7.1 message refused")),
    ("eom", "eom=tempfail:451:4.7.1:message later", ("eom", 451, "4.7.1 message later")),
    ("eom", "eom=discard", "discarded"),
    ("eom", "eom=reject:550:5.7.1:first line\\nsecond line\\nthird line",
     ("eom", 550, "5.7.1 first line\n5.7.1 second line\n5.7.1 third line")),
    ("rcpt", "rcpt=reject:550:5.7.1:one\\ntwo", ("rcpt", 550, "5.7.1 one\n5.7.1 two")),
]
# A final verdict to a content event that is not the last one sent before the end of
# message: see MilterVerdicts.test_2_verdicts_during_content (a gateway bug). BIG: a body
# Postfix sends in several chunks.
BIG = b"".join(b"line %06d of a body sent in several chunks\r\n" % i for i in range(5000))
CONTENT_CASES = [
    ("header", "header/Subject=reject:554:5.7.1:bad subject", ("eom", 554, "5.7.1 bad subject"), BODY),
    ("header", "header/Subject=tempfail:451:4.7.1:subject later", ("eom", 451, "4.7.1 subject later"), BODY),
    ("header", "header/Subject=discard", "discarded", BODY),
    ("header", "header/Subject=accept", "delivered", BODY),
    ("eoh", "eoh=reject:554:5.7.1:no eoh", ("eom", 554, "5.7.1 no eoh"), BODY),
    ("eoh", "eoh=tempfail:451:4.7.1:eoh later", ("eom", 451, "4.7.1 eoh later"), BODY),
    ("eoh", "eoh=discard", "discarded", BODY),
    ("eoh", "eoh=accept", "delivered", BODY),
    ("body", "body=accept", "delivered", BODY),
    ("body", "body=reject:554:5.7.1:big body", ("eom", 554, "5.7.1 big body"), BIG),
    ("body", "body=accept", "delivered", BIG),
]


def smtp_run(ip, from_, rcpts, msg, timeout=60):
    """One SMTP session with one transaction from source address ip, every reply kept:
    {"connect", "ehlo", "mail", "rcpt": [...], "data_cmd", "eom"} as (code, text), None
    where the command was not sent; "t" = seconds it took."""
    res = {"connect": None, "ehlo": None, "mail": None, "rcpt": [], "data_cmd": None, "eom": None}
    t0 = time.monotonic()
    s = smtplib.SMTP(local_hostname="client.example", timeout=timeout, source_address=(ip, 0))
    try:
        res["connect"] = mgwtest.smtp_text(s.connect(PF.host, PF.port))
        if res["connect"][0] != 220:
            return res
        res["ehlo"] = mgwtest.smtp_text(s.ehlo())
        res["mail"] = mgwtest.smtp_text(s.mail(from_))
        if res["mail"][0] == 250:
            res["rcpt"] = [mgwtest.smtp_text(s.rcpt(r)) for r in rcpts]
            if any(c == 250 for c, _ in res["rcpt"]):
                res["data_cmd"] = mgwtest.smtp_text(s.docmd("DATA"))
                if res["data_cmd"][0] == 354:
                    q = smtplib.quotedata(msg.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
                    if not q.endswith(b"\r\n"):
                        q += b"\r\n"
                    s.send(q + b".\r\n")
                    res["eom"] = mgwtest.smtp_text(s.getreply())
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
    finally:
        s.close()
        res["t"] = time.monotonic() - t0
        res["data"] = res["eom"]
    return res


def first_refusal(res):
    """(command, code, text) of the first reply that is not a success, or None."""
    for cmd in ("connect", "ehlo", "mail"):
        if res[cmd] is not None and res[cmd][0] >= 400:
            return (cmd,) + tuple(res[cmd])
    for c, t in res["rcpt"]:
        if c >= 400:
            return ("rcpt", c, t)
    for cmd in ("data_cmd", "eom"):
        if res[cmd] is not None and res[cmd][0] >= 400:
            return ("data" if cmd == "data_cmd" else cmd,) + tuple(res[cmd])
    return None


class MilterVerdicts(BackendCase):

    def run_case(self, i, stage, rule, want, body=BODY, **filter_opts):
        m = self.milter("--at", rule, "--addheader", "X-Milter:%d" % i, name="v%d" % i)
        try:
            self.restart_gateway(milter_filter_arg("sm", m, **filter_opts))
            self.wait_gw_log(msg="milter reachable", filter="sm")
            msg, _, _ = make_message("verdict %d %s" % (i, rule), body)
            res = smtp_run(self.ip, "sender@example.org", ["rcpt@example.com"], msg)
            ref = first_refusal(res)
            if os.environ.get("MGW_DEBUG_VERDICTS"):
                sys.stderr.write("CASE %s -> %r t=%.2f\n" % (rule, ref, res["t"]))
            ctx = lambda: "%s: %r\n%s" % (rule, res, self.context())  # noqa: E731
            if want == "delivered":
                self.assertIsNone(ref, ctx())
                got = PF.wait_delivered_id(queue_id(res["eom"][1]), timeout=30)
                # accepted before the end of message: no modifications from it any more
                early_accept = "=accept" in rule and stage != "eom"
                self.assertEqual(got.header("X-Milter"), None if early_accept else str(i), ctx())
                self.assertEqual(got.body, lf(body))
            elif want == "discarded":
                self.assertIsNone(ref, ctx())
                qid = queue_id(res["eom"][1])
                PF.wait_maillog(r" (%s|NOQUEUE): milter-discard: .* from unknown\[%s\]"
                                % (re.escape(qid), re.escape(self.ip)), 15)
                self.assertEqual(PF.sink.with_queue_id(qid), [], ctx())
                self.assertNotRegex(PF.maillog(), r" %s: to=<" % re.escape(qid))
            else:
                self.assertIsNotNone(ref, ctx())
                self.assertEqual(ref[:2], want[:2], ctx())
                if want[2] is not None:
                    self.assertEqual(ref[2].replace("\r", ""), want[2], ctx())
            self.assertTrue(m.find("verdict", stage=stage), m.record_text())
            self.assertEqual(self.gw.find_log(msg="filter failed"), [], ctx())
            # nothing waited for a timeout
            self.assertLess(res["t"], 2.5, ctx())
            return res
        finally:
            milters.stop_all([m])
            self.milters.remove(m)

    def test_1_every_verdict_at_every_stage(self):
        for i, (stage, rule, want) in enumerate(VERDICT_CASES):
            with self.subTest(rule=rule):
                self.run_case(i, stage, rule, want)
        # SKIP on the first of several body chunks: the rest is not waited for
        with self.subTest(rule="body=skip", body_len=len(BIG)):
            self.run_case(len(VERDICT_CASES), "body", "body=skip", "delivered", body=BIG)

    def test_2_verdicts_during_content(self):
        """A milter answering a header, the end of headers or a body chunk (not the last)
        with a final verdict: REJECT, TEMPFAIL, DISCARD, ACCEPT, or SKIP on a body in
        several chunks. Postfix pipelines content to the gateway, which streams it to the
        milter, so the events after that one are already sent; libmilter ignores the
        rest of a message it decided (no reply to them). The gateway answers them for it
        (milter_client.c, ends_message), so each case ends at once, as in Postfix's own
        chain, which never sends a milter events after its final answer: a refusal with
        its code and text, an ACCEPT or SKIP delivering, no filter failure logged."""
        failed = []
        for i, (stage, rule, want, body) in enumerate(CONTENT_CASES):
            with self.subTest(rule=rule, body_len=len(body)):
                try:
                    self.run_case(100 + i, stage, rule, want, body=body, timeout="3s", eom_timeout="3s")
                except AssertionError:
                    failed.append(rule)
                    raise
        if os.environ.get("MGW_DEBUG_VERDICTS"):
            sys.stderr.write("content cases failing: %r\n" % failed)

    def test_3_every_modification(self):
        sm = self.milter(
            "--addheader", "X-Added:added value",
            "--insheader", "0:X-Inserted:at the top",
            "--chgheader", "Subject:1:changed subject",
            "--chgheader", "X-Delete-Me:1:",
            "--addrcpt", "<added@example.com>",
            "--addrcpt-par", "<added-par@example.com>:NOTIFY=NEVER",
            "--delrcpt", "<gone@example.com>",
            "--chgfrom", "<new-sender@example.org>",
            "--replacebody", "replaced body\\nsecond line\\n")
        self.gateway(milter_filter_arg("sm", sm))
        msg, _, _ = make_message("modify me", BODY, headers=[("X-Delete-Me", "bye")])
        res = self.send(msg, rcpts=("kept@example.com", "gone@example.com"))
        got = self.delivered(res)
        self.assertEqual(sm.wait_record("eom_done")[0]["errors"], [])
        self.assertEqual(got.headers[0], ("X-Inserted", "at the top"), got.headers)
        self.assertEqual(got.headers[-1], ("X-Added", "added value"))
        self.assertEqual(got.header("Subject"), "changed subject")
        self.assertIsNone(got.header("X-Delete-Me"))
        self.assertEqual(got.mail_from, "new-sender@example.org")
        self.assertEqual(sorted(got.rcpts), ["added-par@example.com", "added@example.com", "kept@example.com"])
        self.assertEqual(got.body, b"replaced body\nsecond line\n")
        # the ESMTP parameter of addrcpt_par reached Postfix (it logs NOTIFY=NEVER recipients
        # without a DSN); at least the recipient was added with it, without an error
        v = self.wait_gw_log(msg="verdict", event="BODYEOB")[-1]
        self.assertEqual(v.get("mods"), "9", v)

    def test_4_quarantine_holds_the_message(self):
        sm = self.milter("--quarantine", "held by the milter")
        self.gateway(milter_filter_arg("sm", sm))
        msg, _, _ = make_message("quarantine", BODY)
        res = self.send(msg)
        self.assertEqual(res["data"][0], 250, res)
        qid = queue_id(res["data"][1])
        PF.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE .*milter triggers HOLD action" % qid, 15)
        wait_for(lambda: [e for e in PF.hold_queue() if e.get("queue_id") == qid], 15,
                 lambda: "%s in the hold queue\n%s" % (qid, self.context()))

    def test_5_progress_keeps_a_slow_eom_alive(self):
        sm = self.milter("--slow-eom", "3:0.3", "--addheader", "X-Slow:done")
        self.gateway(milter_filter_arg("sm", sm, eom_timeout="1s", on_error="tempfail"))
        msg, _, _ = make_message("slow eom", BODY)
        t0 = time.monotonic()
        res = self.send(msg)
        took = time.monotonic() - t0
        got = self.delivered(res)
        self.assertGreaterEqual(took, 3.0)
        self.assertEqual(got.header("X-Slow"), "done")
        self.assertGreaterEqual(sm.find("slow_eom")[0]["progress"], 5)
        self.assertEqual(self.gw.find_log(msg="filter failed"), [], self.context())


# =========================================================================================
# 5. Faults


class FakeMilter:
    """A raw-socket milter on 127.0.0.1: answers OPTNEG with `probe_actions` when offered
    every action (miltergw's probes: one per worker loop) and with `session_actions`
    otherwise (a session, offered what the MTA granted), then reads until EOF. With
    `eom_frames` it answers every event of a session CONTINUE and the end of message with
    those frames first. Records (connection number, offered version, actions, protocol)."""

    def __init__(self, probe_actions, session_actions, session_version=6, eom_frames=None):
        self.probe_actions, self.session_actions = probe_actions, session_actions
        self.session_version = session_version
        self.eom_frames = eom_frames
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.offers = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        n = 0
        while not self.closed.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self.conn, args=(c, n), daemon=True).start()

    def conn(self, c, n):
        try:
            c.settimeout(30)
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + struct.unpack("!I", buf[:4])[0]:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            ln = struct.unpack("!I", buf[:4])[0]
            fr = buf[4:4 + ln]
            if fr[:1] != b"O":
                return
            ver, act, proto = struct.unpack("!III", fr[1:13])
            self.offers.append((n, ver, act, proto))
            probe = act == mgwtest.ALL_ACTIONS
            c.sendall(mgwtest.optneg(6 if probe else self.session_version,
                                     self.probe_actions if probe else self.session_actions, 0))
            buf = buf[4 + ln:]
            while True:
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
                    ln = struct.unpack("!I", buf[:4])[0]
                    cmd, buf = buf[4:5], buf[4 + ln:]
                    if probe or self.eom_frames is None or cmd in b"DAQK":
                        continue
                    out = b"".join(self.eom_frames) if cmd == b"E" else b""
                    c.sendall(out + struct.pack("!I", 1) + b"c")
                d = c.recv(65536)
                if not d:
                    return
                buf += d
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.closed.set()
        self.sock.close()


class MilterFaults(BackendCase):

    def test_1_dies_mid_message_tempfail(self):
        sm = self.milter("--die-at", "body")
        self.gateway(milter_filter_arg("sm", sm, on_error="tempfail"))
        msg, _, _ = make_message("dies, tempfail", BODY)
        res = self.send(msg)
        self.assertEqual(res["data"][0], 451, "%r\n%s" % (res, self.context()))
        self.assertEqual(sm.wait_exit(10), ScriptMilter.DIE_EXIT)
        rec = self.wait_gw_log(msg="filter failed", filter="sm")[0]
        self.assertEqual(rec.get("on_error"), "tempfail", rec)
        self.wait_gw_log(msg="verdict", verdict="tempfail", decided_by="sm", failure_policy="yes")

    def test_2_dies_mid_message_accept(self):
        sm = self.milter("--die-at", "body", "--addheader", "X-Never:added")
        self.gateway(milter_filter_arg("sm", sm, on_error="accept"))
        msg, _, _ = make_message("dies, accept", BODY)
        got = self.delivered(self.send(msg))
        self.assertIsNone(got.header("X-Never"))
        self.assertEqual(got.body, lf(BODY))
        self.assertEqual(sm.wait_exit(10), ScriptMilter.DIE_EXIT)
        rec = self.wait_gw_log(msg="filter failed", filter="sm")[0]
        self.assertEqual(rec.get("on_error"), "accept", rec)

    def test_3_hangs_past_eom_timeout(self):
        sm = self.milter("--hang-at", "eom")
        self.gateway(milter_filter_arg("sm", sm, eom_timeout="1s", on_error="tempfail"))
        msg, _, _ = make_message("hangs", BODY)
        t0 = time.monotonic()
        res = self.send(msg)
        took = time.monotonic() - t0
        self.assertEqual(res["data"][0], 451, "%r\n%s" % (res, self.context()))
        self.assertLess(took, 6.0, "the transaction took %.1fs with eom_timeout=1s" % took)
        self.wait_gw_log(msg="filter failed", filter="sm", reason="timeout", event="BODYEOB")
        self.assertTrue(sm.alive())
        self.assertEqual(len(sm.find("hang", stage="eom")), 1)

    def test_4_negotiates_actions_not_offered(self):
        fake = FakeMilter(probe_actions=0x01, session_actions=0x01 | 0x10)
        self.addCleanup(fake.stop)
        self.gateway(milter_filter_arg("fake", fake.spec, on_error="tempfail", timeout="10s"))
        self.wait_gw_log(msg="milter reachable", filter="fake")
        msg, _, _ = make_message("out of contract", BODY)
        res = self.send(msg)
        took = res["t"]
        ref = first_refusal(res)
        self.assertIsNotNone(ref, "delivered: %r\n%s" % (res, self.context()))
        self.assertEqual(ref[1] // 100, 4, res)
        self.assertLess(took, 5.0)
        # the probes were offered everything; the session only what Postfix granted the
        # gateway: the union of the declarations (ADDHDRS) and SETSYMLIST
        sessions = [act for _, _, act, _ in fake.offers if act != mgwtest.ALL_ACTIONS]
        self.assertEqual(sessions, [0x101], fake.offers)
        rec = self.wait_gw_log(msg="milter negotiation refused", filter="fake")[0]
        self.assertEqual(rec.get("detail"), "the milter asked for actions 0x11, only 0x101 were offered "
                                            "(what the MTA granted)", rec)
        self.wait_gw_log(msg="filter failed", filter="fake", reason="out_of_contract", on_error="tempfail")

    def test_4b_modifications_held_to_what_the_session_negotiated(self):
        """A milter declares ADDHDRS and CHGHDRS at the probe, so Postfix grants both, but
        asks for ADDHDRS only in the session, then changes a header anyway: the change is
        dropped (libmilter would have refused the call), the added header is applied."""
        def frame(cmd, payload):
            return struct.pack("!I", len(payload) + 1) + cmd + payload
        fake = FakeMilter(probe_actions=0x01 | 0x10, session_actions=0x01, eom_frames=[
            frame(b"m", struct.pack("!I", 1) + b"Subject\0changed\0"),
            frame(b"h", b"X-Fake\0added\0")])
        self.addCleanup(fake.stop)
        self.gateway(milter_filter_arg("fake", fake.spec))
        self.wait_gw_log(msg="milter reachable", filter="fake")
        msg, _, _ = make_message("held to its session", BODY)
        got = self.delivered(self.send(msg))
        self.assertEqual(got.header("X-Fake"), "added", got.headers)
        self.assertEqual(got.header("Subject"), "held to its session", got.headers)
        self.wait_gw_log(msg="modification dropped", filter="fake", mod="CHGHEADER",
                         reason="undeclared_action")

    def test_5_negotiates_a_newer_version(self):
        """A milter answering the session's OPTNEG with version 7: out of contract, its
        on_error (reject here) answers the MTA."""
        fake = FakeMilter(probe_actions=0x01, session_actions=0x01, session_version=7)
        self.addCleanup(fake.stop)
        self.gateway(milter_filter_arg("fake", fake.spec, on_error="reject"))
        self.wait_gw_log(msg="milter reachable", filter="fake")
        msg, _, _ = make_message("newer version", BODY)
        res = self.send(msg)
        ref = first_refusal(res)
        self.assertIsNotNone(ref, "delivered: %r\n%s" % (res, self.context()))
        self.assertEqual(ref[1] // 100, 5, res)
        self.assertLess(res["t"], 5.0, res)
        rec = self.wait_gw_log(msg="milter negotiation refused", filter="fake")[0]
        self.assertEqual(rec.get("detail"), "milter protocol version 7 (2 to 6 spoken)", rec)
        self.wait_gw_log(msg="filter failed", filter="fake", reason="out_of_contract", on_error="reject")

    def test_6_down_at_start_then_back(self):
        sm = self.milter("--addheader", "X-Back:yes", start=False)
        self.gateway(milter_filter_arg("sm", sm, on_error="tempfail", timeout="20s"))
        self.wait_gw_log(msg="milter unreachable", filter="sm")
        msg, _, _ = make_message("milter down", BODY)
        t0 = time.monotonic()
        res = self.send(msg)
        took = time.monotonic() - t0
        self.assertNotIn(250, [res["data"][0]] if res["data"] else [], res)
        self.assertEqual(first_refusal(res)[1] // 100, 4, res)
        self.assertLess(took, 3.0, "the transaction took %.1fs with the milter known down" % took)
        self.wait_gw_log(msg="filter unavailable", filter="sm", on_error="tempfail")
        sm.start()
        self.wait_gw_log(timeout=40, msg="milter reachable", filter="sm")
        msg, _, _ = make_message("milter back", BODY)
        got = self.delivered(self.send(msg))
        self.assertEqual(got.header("X-Back"), "yes")

    def test_7_goes_down_between_sessions_and_back(self):
        """A milter that worked stops between two SMTP sessions: the next session gets its
        on_error at once (its connection is refused), the link is marked down, and once
        the milter listens again on the same port the probe finds it and mail flows."""
        sm = self.milter("--addheader", "X-Up:yes")
        self.gateway(milter_filter_arg("sm", sm, on_error="tempfail", timeout="20s"))
        m1, _, _ = make_message("before the outage", BODY)
        self.assertEqual(self.delivered(self.send(m1)).header("X-Up"), "yes")
        sm.stop()
        m2, _, _ = make_message("during the outage", BODY)
        res = self.send(m2)
        ref = first_refusal(res)
        self.assertIsNotNone(ref, "delivered: %r\n%s" % (res, self.context()))
        self.assertEqual(ref[1] // 100, 4, res)
        self.assertLess(res["t"], 3.0, res)
        self.wait_gw_log(msg="milter unreachable", filter="sm")
        sm.start()
        self.wait_gw_log(timeout=40, msg="milter reachable", filter="sm")
        m3, _, _ = make_message("after the outage", BODY)
        self.assertEqual(self.delivered(self.send(m3)).header("X-Up"), "yes")

    def test_8_hangs_at_mail_then_later_messages_do_not_wait(self):
        """A milter hanging at MAIL with timeout=1s and on_error=accept: the first message
        waits that second and is delivered; the next message of the same SMTP session
        finds the filter failed and does not wait at all."""
        sm = self.milter("--hang-at", "mail", "--addheader", "X-Never:1")
        self.gateway(milter_filter_arg("sm", sm, timeout="1s", on_error="accept"))
        msgs = [make_message("hang at mail %d" % i, BODY)[0] for i in range(2)]
        t0 = time.monotonic()
        res = self.session([("sender@example.org", ["a@example.com"], msgs[0]),
                            ("sender@example.org", ["b@example.com"], msgs[1])])
        first = res[0]["t"] - t0
        second = res[1]["t"] - res[0]["t"]
        for r in res:
            self.assertIsNone(self.delivered(r).header("X-Never"))
        self.assertLess(first, 4.0, res)
        self.assertLess(second, 0.8, "the second message took %.2fs" % second)
        self.wait_gw_log(msg="filter failed", filter="sm", reason="timeout", event="MAIL", on_error="accept")
        self.assertEqual(len(sm.find("hang", stage="mail")), 1)


# =========================================================================================
# 6. Operations


class MilterOperations(BackendCase):

    def test_1_shadow_milter(self):
        sm = self.milter("--at", "eom=reject:554:5.7.1:shadow says no", "--addheader", "X-Shadow:yes")
        self.gateway(milter_filter_arg("sm", sm, mode="shadow"))
        msg, _, _ = make_message("shadow", BODY)
        got = self.delivered(self.send_held_open(
            msg, lambda: self.gw.find_log(msg="shadow verdict", filter="sm", event="BODYEOB")))
        self.assertIsNone(got.header("X-Shadow"))
        rec = self.wait_gw_log(msg="shadow verdict", filter="sm", verdict="reject")[0]
        self.assertEqual(rec.get("applied"), "no", rec)

    def test_2_metrics(self):
        sm = self.milter("--addheader", "X-Metrics:yes", "--at", "rcpt/nobody=reject:550:5.1.1:nobody")
        dier = self.milter("--die-at", "eom", name="dier")
        self.gateway_file(self.config([milters.milter_filter_yaml("sm", sm),
                                       milters.milter_filter_yaml("dier", dier, on_error="accept")]))
        gw = self.gw
        wait_for(lambda: gw.metric("miltergw_filter_channel_ready", filter="sm") == 1
                 and gw.metric("miltergw_filter_channel_ready", filter="dier") == 1, 10, "sm and dier ready")
        m1, _, _ = make_message("metrics one", BODY)
        m2, _, _ = make_message("metrics two", BODY)
        res = self.session([("sender@example.org", ["a@example.com", "nobody@example.com"], m1),
                            ("sender@example.org", ["b@example.com"], m2)])
        for r in res:
            self.assertEqual(self.delivered(r).header("X-Metrics"), "yes")
        self.assertEqual(res[0]["rcpt"][1], (550, "5.1.1 nobody"))
        wait_for(lambda: gw.metric("miltergw_sessions_open") == 0
                 and gw.metric("miltergw_sessions_closed_total", reason="quit") == 1, 15, "the session closed")
        m = gw.metrics()
        v = lambda name, **labels: gw.metric(name, metrics=m, **labels)  # noqa: E731
        got = {ev: v("miltergw_filter_events_total", filter="sm", event=ev)
               for ev in ("connect", "helo", "mail", "rcpt", "data", "eoh", "eom")}
        self.assertEqual(got, {"connect": 1, "helo": 1, "mail": 2, "rcpt": 3, "data": 2, "eoh": 2, "eom": 2},
                         gw.http("/metrics")[1][:4000])
        self.assertEqual(v("miltergw_filter_events_total", filter="sm", event="header"),
                         2 * 5)  # From To Subject Date Message-ID
        self.assertEqual(v("miltergw_messages_total", verdict="continue"), 2)
        self.assertEqual(v("miltergw_filter_channel_ready", filter="sm"), 1)
        kinds = ("unavailable", "stream_broken", "stream_closed", "timeout", "out_of_contract", "queue_full")
        for kind in kinds:
            self.assertEqual(v("miltergw_filter_errors_total", filter="sm", kind=kind), 0, kind)
        # the milter that died at the first end of message: one error, failed open once;
        # the session's second message found it failed (no new connection)
        errors = {k: v("miltergw_filter_errors_total", filter="dier", kind=k) for k in kinds}
        self.assertEqual(sum(errors.values()), 1, errors)
        self.assertEqual(v("miltergw_filter_failure_policy_total", filter="dier", action="fail_open") >= 1, True,
                         gw.http("/metrics")[1][:6000])
        self.assertEqual(v("miltergw_filter_failure_policy_total", filter="dier", action="fail_closed"), 0)
        self.assertEqual(dier.wait_exit(10), ScriptMilter.DIE_EXIT)
        self.assertEqual(v("miltergw_filter_latency_seconds_count", filter="sm") > 0, True)
        # the milter's connections: one for the probe, one for the SMTP session
        self.assertEqual(len(sm.find("connect")), 1)

    def test_3_sighup_switches_a_milters_target(self):
        a = self.milter("--addheader", "X-Which:a", name="a")
        b = self.milter("--addheader", "X-Which:b", name="b")
        gw = self.gateway_file(self.config([milters.milter_filter_yaml("sm", a)]))
        m1, _, _ = make_message("before reload", BODY)
        self.assertEqual(self.delivered(self.send(m1)).header("X-Which"), "a")
        write_file(gw.config_path, yaml_dump(self.config([milters.milter_filter_yaml("sm", b)])) + "\n")
        rec = gw.reload()
        self.assertEqual(rec.get("msg"), "configuration reloaded", self.context())
        gw.wait_log(msg="milter reachable", filter="sm", target=b.spec)
        m2, _, _ = make_message("after reload", BODY)
        self.assertEqual(self.delivered(self.send(m2)).header("X-Which"), "b")
        self.assertEqual(len(a.find("eom")), 1)
        self.assertEqual(len(b.find("eom")), 1)

    def test_4_unix_socket_milter(self):
        """A milter on a unix socket (target unix:/path, as Postfix writes it)."""
        sm = ScriptMilter("--addheader", "X-Via:unix", name="unix", unix=True)
        self.milters.append(sm)
        self.assertTrue(sm.spec.startswith("unix:/"), sm.spec)
        self.gateway(milter_filter_arg("sm", sm))
        self.wait_gw_log(msg="milter reachable", filter="sm", target=sm.spec)
        msg, _, _ = make_message("unix socket", BODY)
        self.assertEqual(self.delivered(self.send(msg)).header("X-Via"), "unix")
        self.assertEqual(len(sm.find("eom")), 1)


if __name__ == "__main__":
    missing = milters.missing_tools()
    if missing:
        sys.stderr.write("skipped: missing %s (run tools/setup-debian.sh)\n" % ", ".join(missing))
        sys.exit(77)
    mgwtest.main()
