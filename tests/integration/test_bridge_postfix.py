#!/usr/bin/python3
"""Real Postfix -> miltergw -> gRPC test filters (mgw_test_filter) -> smtp-sink.

Checks the gRPC filter bridge end to end: verdicts, modifications, the merge of several
filters, failure policy, shadow mode, several messages per session, observe-only events.
Outcomes are checked where they matter: the SMTP client's reply, the delivered message and
envelope (smtp-sink dump), the hold queue, Postfix's maillog, the gateway's log and the
test filters' --record files.

One private Postfix per test class. Every test runs its own miltergw (its own filter set)
on a port reserved in setUpClass; Postfix picks the milter by client address
(`smtpd_milter_maps` = cidr table: 127.0.0.N -> that test's miltergw), and each test sends
from its own 127.0.0.N. After every test its miltergw must exit 0 on SIGTERM with no
`level=error` line, and its filters exit 0 (70 when told to crash). BridgeShutdown (no
Postfix) stops the gateway right after sessions end, where its streams are still closing.

Usage: /usr/bin/python3 test_bridge_postfix.py --miltergw PATH --test-filter PATH
       [unittest options]
"""
import os
import re
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import TestFilter, cstr, filter_arg, frame, lf, make_message, queue_id, wait_for  # noqa: E402

BODY = b"Hello,\r\nthis is the original body.\r\n.a dot line\r\n"

# SMFIP_NR_HDR: the MTA need not wait for an answer to each header.
NR_HDR = 0x80


class BridgeCase(mgwtest.GatewayProcesses, unittest.TestCase):
    """One Postfix for the class; per test: a 127.0.0.N source address, a miltergw on a
    reserved port, and the filters the test starts."""

    first_octet = 10  # 127.0.0.N source addresses of this class start here

    @classmethod
    def setUpClass(cls):
        if not mgwtest.TEST_FILTER:
            raise unittest.SkipTest("no --test-filter PATH given")
        cls.tmp = mgwtest.make_tmpdir("bridge")
        cls.pf, cls.slots = mgwtest.postfix_with_milter_per_test(cls, cls.tmp, cls.first_octet)

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()

    def setUp(self):
        self.ip, self.gw_port = self.slots[self._testMethodName]
        self.dir = mgwtest.make_tmpdir("bridge-%s" % self._testMethodName[:40])
        self.track_processes()

    # -- sending (from this test's source address, so Postfix uses this test's miltergw)
    def swaks(self, msg=None, to="rcpt@example.com", from_="sender@example.org"):
        """Returns (swaks exit status, transcript, seconds taken)."""
        t0 = time.monotonic()
        rc, out = self.pf.swaks(to=to, from_=from_, data=msg, extra=["--local-interface", self.ip])
        return rc, out, time.monotonic() - t0

    def session(self, messages, helo="client.example"):
        """Several transactions in one SMTP session (mgwtest.smtp_session_at(): per
        transaction "mail", "rcpt", "data_cmd", "data" and "t", when it was over)."""
        return mgwtest.smtp_session_at(self.pf.host, self.pf.port, messages, helo, timeout=30,
                                       source_ip=self.ip)

    # -- checks
    def mta_context(self):
        return "maillog tail:\n" + self.pf.maillog()[-2500:]

    def assertDelivered(self, transcript_or_reply):
        qid = queue_id(transcript_or_reply)
        return self.pf.wait_delivered_id(qid, timeout=30)

    def assertSwaksOk(self, rc, out):
        self.assertEqual(rc, 0, "swaks failed:\n%s\n\n%s" % (out, self.context()))

    def wait_gw_log(self, timeout=10, **kv):
        return self.gw.wait_log(timeout=timeout, **kv)

    def assertDiscarded(self, qid):
        """Postfix's cleanup threw message `qid` away (milter-discard): it never entered
        the queue and no smtp-sink dump names it."""
        self.pf.wait_maillog(r" %s: milter-discard: END-OF-MESSAGE " % re.escape(qid), 15)
        self.assertEqual([e for e in self.pf.queue() if e.get("queue_id") == qid], [])
        self.assertNotRegex(self.pf.maillog(), r" %s: (from=<|to=<)" % re.escape(qid))
        rx = re.compile(r"\bid %s\b" % re.escape(qid))
        found = [m for m in self.pf.delivered() if any(n == "Received" and rx.search(v) for n, v in m.headers)]
        self.assertEqual(found, [], "message %s was delivered" % qid)



def swaks_replies(transcript, command):
    """The server's reply lines (without the `<-  ` / `<** ` marker) to the first client
    line starting with `command` in a swaks transcript (e.g. "MAIL FROM", "RCPT TO", "."),
    or None if swaks never sent it."""
    lines = transcript.splitlines()
    for i, ln in enumerate(lines):
        m = re.match(r"^ -> (.*)$", ln)
        if m and m.group(1).startswith(command) and (command != "." or m.group(1) == "."):
            out = []
            for r in lines[i + 1:]:
                rm = re.match(r"^<(?:-|\*\*) +(.*)$", r)
                if rm:
                    out.append(rm.group(1))
                    if re.match(r"^\d{3} ", rm.group(1)):
                        break
                elif out or r.startswith(" -> "):
                    break
            return out
    return None


# =========================================================================================
# 1. One filter, one verdict


class BridgeVerdicts(BridgeCase):
    first_octet = 10

    def test_1_reject_at_mail_with_custom_text(self):
        self.filter("--reject-at", "mail", "--code", "550", "--xcode", "5.7.1",
                    "--text", "Sender blocked by test filter")
        self.gateway(filter_arg("a", self.filters[0]))
        msg, _, _ = make_message("reject at mail", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(swaks_replies(out, "MAIL FROM"), ["550 5.7.1 Sender blocked by test filter"],
                         out + "\n" + self.context())
        self.wait_gw_log(msg="verdict", event="MAIL", verdict="reject", decided_by="a", failure_policy="no")

    def test_2_tempfail_one_recipient_only(self):
        self.filter("--tempfail-rcpt", "<later@example.com>", "--code", "451", "--xcode", "4.7.1",
                    "--text", "Try this one later")
        self.gateway(filter_arg("a", self.filters[0]))
        msg, hdrs, body = make_message("tempfail one rcpt", BODY)
        res = self.session([("sender@example.org", ["now@example.com", "later@example.com"], msg)])[0]
        self.assertEqual(res["mail"][0], 250, res)
        self.assertEqual(res["rcpt"][0][0], 250, res)
        self.assertEqual(res["rcpt"][1], (451, "4.7.1 Try this one later"), "%r\n%s" % (res, self.context()))
        self.assertEqual(res["data"][0], 250, res)
        got = self.assertDelivered(res["data"][1])
        self.assertEqual(got.rcpts, ["now@example.com"])
        self.assertEqual(got.headers[1:], hdrs)
        self.assertEqual(got.body, lf(body))

    def test_3_reject_at_header_after_data(self):
        # Pipelined (the default): Postfix streams the headers; the refusal of the first
        # one is the answer at end of message, whatever the filter said to what it was
        # sent meanwhile (the end of message too, if it got there first).
        f = self.filter("--reject-at", "header", "--code", "550", "--xcode", "5.7.1",
                        "--text", "Header rejected by test filter")
        self.gateway(filter_arg("a", f))
        self.reject_at_header(refused_at="HEADER", event="BODYEOB")

    def test_3b_reject_at_header_strict(self):
        self.filter("--reject-at", "header", "--code", "550", "--xcode", "5.7.1",
                    "--text", "Header rejected by test filter")
        self.gateway(filter_arg("a", self.filters[0], content="strict"))
        self.reject_at_header(refused_at="-", event="HEADER")

    def reject_at_header(self, refused_at, event):
        msg, _, _ = make_message("reject at header", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(swaks_replies(out, "MAIL FROM")[-1][:3], "250", out)
        self.assertEqual(swaks_replies(out, "RCPT TO")[-1][:3], "250", out)
        self.assertEqual(swaks_replies(out, "DATA")[-1][:3], "354", out)
        self.assertEqual(swaks_replies(out, "."), ["550 5.7.1 Header rejected by test filter"],
                         out + "\n" + self.context())
        self.wait_gw_log(msg="verdict", event=event, verdict="reject", decided_by="a",
                         refused_at=refused_at)

    def test_4_discard(self):
        self.filter("--discard-at", "eom")
        self.gateway(filter_arg("a", self.filters[0]))
        msg, _, _ = make_message("discard", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertRegex(swaks_replies(out, ".")[-1], r"^250 ")
        self.assertDiscarded(queue_id(out))
        self.wait_gw_log(msg="verdict", event="BODYEOB", verdict="discard", decided_by="a")

    def test_5_accept_at_connect_retires_filter(self):
        f = self.filter("--accept-at", "connect", "--add-header", "X-Never:applied")
        self.gateway(filter_arg("a", f))
        msg, hdrs, body = make_message("accept at connect", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.assertEqual(got.body, lf(body))
        sessions = f.sessions()
        self.assertEqual(len(sessions), 1, f.record_text())
        kinds = [r["kind"] for r in next(iter(sessions.values()))]
        self.assertEqual(kinds[:2], ["start", "connect"], kinds)
        self.assertEqual([k for k in kinds[2:] if k not in ("abort", "close")], [],
                         "filter got events after accepting at connect: %r" % kinds)

    def test_6_quarantine(self):
        self.filter("--quarantine", "held by the test filter")
        self.gateway(filter_arg("a", self.filters[0]))
        msg, _, _ = make_message("quarantine", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertRegex(swaks_replies(out, ".")[-1], r"^250 ")
        qid = queue_id(out)
        held = wait_for(lambda: [e for e in self.pf.hold_queue() if e.get("queue_id") == qid], 15,
                        lambda: "%s in the hold queue; queue: %r\n%s" % (qid, self.pf.queue(), self.context()))
        self.assertEqual(held[0]["queue_name"], "hold")
        # (Postfix logs no reason text: "milter triggers HOLD action")
        self.pf.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE " % qid, 15)


# =========================================================================================
# 2. One filter, one modification


class BridgeModifications(BridgeCase):
    first_octet = 40

    def send_one(self, *filter_flags, to="rcpt@example.com", extra_headers=(), mods="1"):
        f = self.filter(*filter_flags)
        self.gateway(filter_arg("a", f))
        msg, hdrs, body = make_message("mods %s" % self._testMethodName, BODY, headers=extra_headers)
        rc, out, _ = self.swaks(msg, to=to)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        # mods = milter frames sent to the MTA (a replaced body goes as one per chunk)
        self.wait_gw_log(msg="verdict", event="BODYEOB", verdict="continue", mods=mods)
        self.assertFalse(self.gw.has_log(msg="modification dropped"), self.context())
        return got, hdrs, body

    def test_1_add_header(self):
        got, hdrs, body = self.send_one("--add-header", "X-Added:added by filter a")
        self.assertEqual(got.headers[1:], hdrs + [("X-Added", "added by filter a")])
        self.assertEqual(got.body, lf(body))

    def test_2_insert_header(self):
        got, hdrs, body = self.send_one("--insert-header", "1:X-Inserted:just below Received")
        self.assertEqual(got.headers[0][0], "Received")
        self.assertEqual(got.headers[1:], [("X-Inserted", "just below Received")] + hdrs)

    def test_3_change_header(self):
        got, hdrs, body = self.send_one("--change-header", "Subject:1:changed subject")
        want = [(n, "changed subject" if n == "Subject" else v) for n, v in hdrs]
        self.assertEqual(got.headers[1:], want)

    def test_4_delete_header(self):
        got, hdrs, body = self.send_one("--change-header", "X-Remove:1:",
                                        extra_headers=[("X-Remove", "remove me"), ("X-Keep", "keep me")])
        self.assertEqual(got.headers[1:], [h for h in hdrs if h[0] != "X-Remove"])

    def test_5_replace_body(self):
        got, hdrs, body = self.send_one("--replace-body", "Replaced body.\\r\\n.dot line kept\\r\\n")
        self.assertEqual(got.body, b"Replaced body.\n.dot line kept\n")
        self.assertEqual(got.headers[1:], hdrs)

    def test_6_change_from(self):
        got, hdrs, body = self.send_one("--change-from", "<changed@example.net>")
        self.assertEqual(got.mail_from, "changed@example.net")
        self.assertEqual(got.rcpts, ["rcpt@example.com"])

    def test_7_add_recipient(self):
        got, hdrs, body = self.send_one("--add-rcpt", "<added@example.net>")
        self.assertEqual(sorted(got.rcpts), ["added@example.net", "rcpt@example.com"])

    def test_8_delete_recipient(self):
        got, hdrs, body = self.send_one("--del-rcpt", "<gone@example.com>",
                                        to=["kept@example.com", "gone@example.com"])
        self.assertEqual(got.rcpts, ["kept@example.com"])


    def test_9_undeclared_action_dropped(self):
        # the filter declares no actions but sends an AddHeader: dropped, logged, delivered
        f = self.filter("--actions", "none", "--add-header", "X-Undeclared:never")
        self.gateway(filter_arg("a", f))
        msg, hdrs, body = make_message("undeclared", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.wait_gw_log(msg="modification dropped", filter="a", mod="ADDHEADER", reason="undeclared_action")

    def test_10_replace_body_larger_than_one_chunk(self):
        # 100 kB: more than one 65535-byte milter body frame
        lines = ["replacement line %06d abcdefghijklmnopqrstuvwxyz0123456789" % i for i in range(1600)]
        new = "".join(ln + "\\r\\n" for ln in lines)  # the filter unescapes \r\n
        want = "".join(ln + "\n" for ln in lines).encode()  # smtp-sink drops the CRs
        self.assertGreater(len(want), 65535 + 1000)
        got, hdrs, body = self.send_one("--replace-body", new, mods="2")
        self.assertEqual(len(got.body), len(want))
        self.assertEqual(got.body, want)


# =========================================================================================
# 3. Three filters at once: the merge


class BridgeMerge(BridgeCase):
    first_octet = 60

    def three(self, a, b, c):
        fa = self.filter(*a, name="a")
        fb = self.filter(*b, name="b")
        fc = self.filter(*c, name="c")
        self.gateway(filter_arg("a", fa), filter_arg("b", fb), filter_arg("c", fc))
        return fa, fb, fc

    def test_1_reject_beats_accept(self):
        self.three(["--accept-at", "mail"],
                   ["--reject-at", "mail", "--code", "550", "--xcode", "5.7.1", "--text", "b says no"],
                   [])
        msg, _, _ = make_message("reject beats accept", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(swaks_replies(out, "MAIL FROM"), ["550 5.7.1 b says no"], out + "\n" + self.context())
        self.wait_gw_log(msg="verdict", event="MAIL", verdict="reject", decided_by="b")

    def test_2_discard_beats_reject(self):
        self.three(["--reject-at", "eom", "--code", "550", "--xcode", "5.7.1", "--text", "a says no"],
                   ["--discard-at", "eom"],
                   [])
        msg, _, _ = make_message("discard beats reject", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertRegex(swaks_replies(out, ".")[-1], r"^250 ")
        self.assertDiscarded(queue_id(out))
        self.wait_gw_log(msg="verdict", event="BODYEOB", verdict="discard", decided_by="b")

    def test_3_header_edits_of_two_filters_in_filter_order(self):
        self.three(["--add-header", "X-Order:first (a)", "--insert-header", "1:X-Top:a"],
                   ["--add-header", "X-Order:second (b)", "--insert-header", "1:X-Top:b"],
                   ["--change-header", "Subject:1:changed by c"])
        msg, hdrs, body = make_message("header edits", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        # insertions at one position in filter order, as if applied one after another: the
        # later one ends up above (policy.h rule 6b); appends in filter order (6c)
        want = ([("X-Top", "b"), ("X-Top", "a")]
                + [(n, "changed by c" if n == "Subject" else v) for n, v in hdrs]
                + [("X-Order", "first (a)"), ("X-Order", "second (b)")])
        self.assertEqual(got.headers[0][0], "Received")
        self.assertEqual(got.headers[1:], want, self.context())
        self.assertEqual(got.body, lf(body))
        self.wait_gw_log(msg="verdict", event="BODYEOB", mods="5")

    def test_4_body_conflict_first_filter_wins(self):
        self.three(["--replace-body", "Body from a.\\r\\n"],
                   ["--replace-body", "Body from b.\\r\\n"],
                   [])
        msg, hdrs, body = make_message("body conflict", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.body, b"Body from a.\n")
        self.assertEqual(got.headers[1:], hdrs)
        self.wait_gw_log(msg="modification dropped", filter="b", mod="REPLBODY", reason="body_conflict")
        self.assertFalse(self.gw.has_log(msg="modification dropped", filter="a"), self.context())


    def test_5_discard_answers_at_once(self):
        # nothing outranks a discard: the MTA is answered without waiting for the slow
        # filter a. a's late answer to that EOM is still owed on its stream: it must be
        # consumed as late, not taken for (or flagged against) the next message's events.
        fa, fb, fc = self.three(["--reject-at", "eom", "--delay-at", "eom", "--delay-ms", "1500"],
                                ["--discard-at", "eom"],
                                [])
        m1, _, _ = make_message("discard at once 1", BODY)
        m2, _, _ = make_message("discard at once 2", BODY)
        t0 = time.monotonic()
        r1, r2 = self.session([("s1@example.org", ["rcpt@example.com"], m1),
                               ("s2@example.org", ["rcpt@example.com"], m2)])
        self.assertEqual(r1["data"][0], 250, "%r\n%s" % (r1, self.context()))
        self.assertLess(r1["t"] - t0, 1.3, "the discard waited for the slow filter")
        self.assertDiscarded(queue_id(r1["data"][1]))
        self.assertEqual(r2["mail"][0], 250, "%r\n%s" % (r2, self.context()))
        self.assertEqual(r2["data"][0], 250, "%r\n%s" % (r2, self.context()))
        self.assertDiscarded(queue_id(r2["data"][1]))
        self.assertEqual(len(self.gw.find_log(msg="verdict", event="BODYEOB", verdict="discard", decided_by="b")), 2,
                         self.context())
        self.assertFalse(self.gw.has_log(msg="filter failed"), self.context())

    def test_6_accept_at_rcpt_does_not_silence_eom_only_filter(self):
        # policy.h rule 4: a accepts at RCPT (allow-list), b wants only EOM and rejects there
        self.three(["--accept-at", "rcpt"],
                   ["--events", "eom", "--reject-at", "eom", "--code", "550", "--xcode", "5.7.1",
                    "--text", "b rejects at eom"],
                   ["--events", "mail"])
        msg, _, _ = make_message("keeper", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(swaks_replies(out, "RCPT TO")[-1][:3], "250", out)
        self.assertEqual(swaks_replies(out, "."), ["550 5.7.1 b rejects at eom"], out + "\n" + self.context())

    def test_7_header_conflict_first_wins(self):
        self.three(["--change-header", "Subject:1:subject from a"],
                   ["--change-header", "subject:1:subject from b", "--add-header", "X-From-B:kept"],
                   [])
        msg, hdrs, body = make_message("header conflict", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        want = [(n, "subject from a" if n == "Subject" else v) for n, v in hdrs] + [("X-From-B", "kept")]
        self.assertEqual(got.headers[1:], want, self.context())
        self.wait_gw_log(msg="modification dropped", filter="b", mod="CHGHEADER", reason="header_conflict")

    def test_8_delete_refers_to_original_envelope(self):
        # b deletes a recipient that only a adds: deletes go first (policy.h rule 6d), so
        # the added recipient stays
        self.three(["--add-rcpt", "<new@example.net>"],
                   ["--del-rcpt", "<new@example.net>", "--del-rcpt", "<old@example.com>"],
                   [])
        msg, hdrs, body = make_message("rcpt order", BODY)
        rc, out, _ = self.swaks(msg, to=["keep@example.com", "old@example.com"])
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(sorted(got.rcpts), ["keep@example.com", "new@example.net"], self.context())


# =========================================================================================
# 4. Failure policy


class BridgeFailure(BridgeCase):
    first_octet = 80

    def dead_target(self):
        """127.0.0.1:PORT with nothing listening."""
        return "127.0.0.1:%d" % mgwtest.free_port()

    def test_1_down_at_start_on_error_accept(self):
        self.gateway(filter_arg("a", self.dead_target(), on_error="accept"))
        msg, hdrs, body = make_message("down accept", BODY)
        rc, out, took = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.assertEqual(got.body, lf(body))
        self.assertLess(took, 5, out)
        self.wait_gw_log(msg="filter unavailable", filter="a")

    def test_2_down_at_start_on_error_tempfail_fast(self):
        self.gateway(filter_arg("a", self.dead_target(), on_error="tempfail"))
        msg, _, _ = make_message("down tempfail", BODY)
        rc, out, took = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertRegex("\n".join(swaks_replies(out, "MAIL FROM") or []), r"^451 4\.7\.1 ",
                         out + "\n" + self.context())
        self.assertLess(took, 5, "a filter known down must cost no waiting\n" + out)
        self.wait_gw_log(msg="filter unavailable", filter="a")

    def test_3_crash_mid_stream_tempfails_rcpt(self):
        f = self.filter("--crash-at", "rcpt")
        self.gateway(filter_arg("a", f))
        msg, _, _ = make_message("crash at rcpt", BODY)
        res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
        self.assertEqual(res["mail"][0], 250, res)
        self.assertEqual(len(res["rcpt"]), 1, res)
        self.assertEqual(res["rcpt"][0][0], 451, "%r\n%s" % (res, self.context()))
        self.assertEqual(f.wait_exit(10), TestFilter.CRASH_EXIT)
        rec = self.wait_gw_log(msg="filter failed", filter="a")[0]
        self.assertEqual(rec.get("event"), "RCPT", rec)
        self.assertIn(rec.get("reason"), ("stream_closed", "stream_broken", "unavailable"), rec)
        self.wait_gw_log(msg="verdict", event="RCPT", verdict="tempfail", decided_by="a", failure_policy="yes")
        # the next SMTP session finds the filter down: tempfail, and quickly
        rc, out, took = self.swaks(msg)
        self.assertNotEqual(rc, 0, out)
        self.assertRegex("\n".join(swaks_replies(out, "MAIL FROM") or []), r"^451 4\.7\.1 ",
                         out + "\n" + self.context())
        self.assertLess(took, 5, out)

    def test_4_slower_than_timeout(self):
        f = self.filter("--delay-at", "mail", "--delay-ms", "2000")
        self.gateway(filter_arg("a", f, on_error="reject", timeout="300ms"))
        msg, _, _ = make_message("too slow", BODY)
        t0 = time.monotonic()
        res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
        took = time.monotonic() - t0
        self.assertEqual(res["mail"][0] // 100, 5, "%r\n%s" % (res, self.context()))
        self.assertLess(took, 1.8, "the 300ms deadline did not cut the 2s delay short")
        rec = self.wait_gw_log(msg="filter failed", filter="a", reason="timeout")[0]
        self.assertEqual(rec.get("event"), "MAIL", rec)
        self.wait_gw_log(msg="verdict", event="MAIL", verdict="reject", decided_by="a", failure_policy="yes")

    def test_5_out_of_contract_reply_on_error_accept(self):
        f = self.filter("--bogus-reply", "--add-header", "X-Never:applied")
        self.gateway(filter_arg("a", f, on_error="accept"))
        msg, hdrs, body = make_message("bogus accept", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.wait_gw_log(msg="filter failed", filter="a", reason="out_of_contract")

    def test_6_out_of_contract_at_rcpt_default_tempfail(self):
        f = self.filter("--bogus-at", "rcpt")
        self.gateway(filter_arg("a", f))
        msg, _, _ = make_message("bogus at rcpt", BODY)
        res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
        self.assertEqual(res["mail"][0], 250, res)
        self.assertEqual(res["rcpt"][0][0], 451, "%r\n%s" % (res, self.context()))
        rec = self.wait_gw_log(msg="filter failed", filter="a", reason="out_of_contract")[0]
        self.assertEqual(rec.get("event"), "RCPT", rec)

    def test_6a_answered_twice_fails_at_the_next_event(self):
        # The second answer to MAIL is owed to nothing: the stream fails as out of
        # contract by the next event (the gateway may receive it only with that event's
        # reply), which then gets the default on_error, tempfail.
        f = self.filter("--twice-at", "mail")
        self.gateway(filter_arg("a", f))
        msg, _, _ = make_message("answered twice", BODY)
        res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
        self.assertEqual(res["mail"][0], 250, res)
        self.assertEqual(res["rcpt"][0][0], 451, "%r\n%s" % (res, self.context()))
        self.wait_gw_log(msg="filter failed", filter="a", reason="out_of_contract")

    def test_7_eom_uses_eom_timeout(self):
        # 1 s at end of message: beyond `timeout` (300ms) but within `eom_timeout` (2s)
        f = self.filter("--delay-at", "eom", "--delay-ms", "1000", "--add-header", "X-Slow:yes")
        self.gateway(filter_arg("a", f, timeout="300ms", eom_timeout="2s"))
        msg, hdrs, body = make_message("slow eom", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs + [("X-Slow", "yes")])
        self.assertFalse(self.gw.has_log(msg="filter failed"), self.context())

    def test_8_progress_within_deadline(self):
        # --progress sends one PROGRESS at once at EOM, then the answer after the delay
        f = self.filter("--progress", "--delay-at", "eom", "--delay-ms", "500", "--add-header", "X-Progress:yes")
        self.gateway(filter_arg("a", f, eom_timeout="1s"))
        msg, hdrs, body = make_message("progress", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs + [("X-Progress", "yes")])
        self.assertFalse(self.gw.has_log(msg="filter failed"), self.context())

    def test_9_progress_restarts_deadline_does_not_add(self):
        # The test filter's only PROGRESS comes at once, so it restarts the 1s deadline at
        # ~0s (filter.proto: "restarts that event's deadline"): a 1.5s answer still misses it.
        f = self.filter("--progress", "--delay-at", "eom", "--delay-ms", "1500")
        self.gateway(filter_arg("a", f, eom_timeout="1s", on_error="accept"))
        msg, hdrs, body = make_message("progress too slow", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertDelivered(out)
        rec = self.wait_gw_log(msg="filter failed", filter="a", reason="timeout")[0]
        self.assertEqual(rec.get("event"), "BODYEOB", rec)


# =========================================================================================
# 5-7. Shadow mode, several messages per session, observe-only


class BridgeMisc(BridgeCase):
    first_octet = 100

    def test_1_shadow_reject_not_applied(self):
        f = self.filter("--reject-at", "mail", "--add-header", "X-Shadow:never")
        self.gateway(filter_arg("a", f, mode="shadow"))
        msg, hdrs, body = make_message("shadow", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.assertEqual(got.body, lf(body))
        self.wait_gw_log(msg="shadow verdict", filter="a", event="MAIL", verdict="reject", applied="no")
        # it still received the rest of the message
        f.wait_record("eom")

    def test_2_shadow_next_to_a_real_filter(self):
        shadow = self.filter("--discard-at", "eom", name="shadow")
        real = self.filter("--add-header", "X-Real:applied", name="real")
        self.gateway(filter_arg("shadow", shadow, mode="shadow"), filter_arg("real", real))
        msg, hdrs, body = make_message("shadow and real", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs + [("X-Real", "applied")])
        self.wait_gw_log(msg="shadow verdict", filter="shadow", event="BODYEOB", verdict="discard")

    def test_3_several_messages_one_stream(self):
        f = self.filter("--add-header", "X-Seen:yes")
        self.gateway(filter_arg("a", f))
        sent = [make_message("session msg %d" % i, b"Message %d.\r\n" % i) for i in range(2)]
        results = self.session([("s%d@example.org" % i, ["r%d@example.com" % i], m)
                                for i, (m, _, _) in enumerate(sent)])
        for i, (res, (_, hdrs, body)) in enumerate(zip(results, sent)):
            self.assertEqual(res["data"][0], 250, "%r\n%s" % (res, self.context()))
            got = self.assertDelivered(res["data"][1])
            self.assertEqual(got.mail_from, "s%d@example.org" % i)
            self.assertEqual(got.rcpts, ["r%d@example.com" % i])
            self.assertEqual(got.headers[1:], hdrs + [("X-Seen", "yes")])
            self.assertEqual(got.body, lf(body))
        sessions = f.sessions()
        self.assertEqual(len(sessions), 1, f.record_text())
        sid, recs = next(iter(sessions.items()))
        kinds = [r["kind"] for r in recs]
        self.assertEqual(kinds.count("start"), 1, kinds)
        self.assertEqual(kinds.count("mail"), 2, kinds)
        self.assertEqual(kinds.count("eom"), 2, kinds)
        ids = [r["id"] for r in recs if r["id"] is not None]
        self.assertEqual(ids, sorted(ids), "event ids must increase within a stream")
        self.assertEqual(len(set(ids)), len(ids), "event ids must be unique within a stream")
        self.assertEqual(len(self.gw.find_log(msg="verdict", event="BODYEOB")), 2, self.context())

    def test_4_observe_only_headers(self):
        f = self.filter("--observe", "header")
        self.gateway(filter_arg("a", f))
        msg, hdrs, body = make_message("observe headers", BODY, headers=[("X-Observed", "seen")])
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        seen = f.wait_record("header", name="X-Observed")
        self.assertEqual(seen[0]["value"], "seen")
        self.assertEqual([r["name"] for r in f.find("header")], [n for n, _ in hdrs])
        start = f.wait_record("start")[0]
        self.assertTrue(int(start["protocol"], 16) & NR_HDR,
                        "the only filter observes headers: NR_HDR expected, start record %r" % start)

    def test_5_large_body_through_filter(self):
        f = self.filter("--add-header", "X-Big:yes")
        self.gateway(filter_arg("a", f))
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-%05d\r\n"
        big = b"".join(line % i for i in range(300 * 1024 // len(line % 0) + 1))
        msg, hdrs, body = make_message("large body", big)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs + [("X-Big", "yes")])
        self.assertEqual(got.body, lf(body))
        chunks = f.find("body")
        self.assertGreater(len(chunks), 1, "expected several body chunks")
        self.assertEqual(b"".join(r["data_bytes"] for r in chunks), body)
        self.assertTrue(all(int(r["len"]) <= 65535 for r in chunks), [r["len"] for r in chunks])


    def test_5b_more_than_max_queue_per_connection_is_fine(self):
        # max_queue bounds what waits for the filter, not what a connection ever sent.
        f = self.filter("--add-header", "X-Seen:yes")
        self.gateway(filter_arg("a", f))
        line = b"%07d the quick brown fox jumps over the lazy dog 0123456789\r\n"
        big = b"".join(line % i for i in range(1024 * 1024 // len(line % 0)))
        sent = [make_message("volume %d" % i, big) for i in range(6)]
        results = self.session([("s@example.org", ["r@example.com"], m) for m, _, _ in sent])
        for res in results:
            self.assertTrue(res["data"] and res["data"][0] == 250, "%r\n%s" % (res, self.context()))
        self.assertFalse(self.gw.has_log(msg="filter failed"), self.context())

    def test_6_bad_header_name_is_dropped_the_rest_applies(self):
        # An empty CHGHEADER name would make Postfix drop the milter ("null change header
        # name") and lose every later frame, the other filter's quarantine included.
        a = self.filter("--change-header", ":1:x", "--add-header", "X Bad:1", name="a")
        b = self.filter("--quarantine", "held by b", name="b")
        self.gateway(filter_arg("a", a), filter_arg("b", b))
        msg, _, _ = make_message("bad header name", BODY)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        qid = queue_id(out)
        wait_for(lambda: [e for e in self.pf.hold_queue() if e.get("queue_id") == qid], 15,
                 lambda: "%s held; queue %r\n%s" % (qid, self.pf.queue(), self.context()))
        drops = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(
            self.gw.find_log(msg="modification dropped", filter="a", reason="invalid")), 10,
            lambda: "two invalid drops\n" + self.context())
        self.assertEqual(sorted(d.get("mod") for d in drops), ["ADDHEADER", "CHGHEADER"], drops)
        self.assertNotIn("null change header name", self.pf.maillog())

    def test_7_shadow_filter_never_delays_the_answer(self):
        shadow = self.filter("--reject-at", "mail", "--delay-ms", "2500", name="shadow")
        real = self.filter("--add-header", "X-Real:applied", name="real")
        self.gateway(filter_arg("shadow", shadow, mode="shadow"), filter_arg("real", real))
        msg, hdrs, _ = make_message("shadow slow", BODY)
        rc, out, took = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertLess(took, 2.0, "a slow shadow filter delayed the mail\n" + out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs + [("X-Real", "applied")])
        # its verdict is still logged, when it comes
        self.wait_gw_log(timeout=15, msg="shadow verdict", filter="shadow", event="MAIL",
                         verdict="reject", applied="no")

    def test_8_shadow_filter_has_deadlines(self):
        shadow = self.filter("--delay-ms", "3000", name="shadow")
        self.gateway(filter_arg("shadow", shadow, mode="shadow", timeout="300ms"))
        msg, hdrs, _ = make_message("shadow deadline", BODY)
        rc, out, took = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        self.assertLess(took, 2.0, out)
        got = self.assertDelivered(out)
        self.assertEqual(got.headers[1:], hdrs)
        self.wait_gw_log(msg="filter failed", filter="shadow", reason="timeout")


    def stopped_filter_big_message(self, f):
        f.wait_record("describe")
        os.kill(f.pid, signal.SIGSTOP)
        try:
            line = b"%07d the quick brown fox jumps over the lazy dog 0123456789\r\n"
            big = b"".join(line % i for i in range(6 * 1024 * 1024 // len(line % 0)))
            msg, _, _ = make_message("stopped filter", big)
            t0 = time.monotonic()
            res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
            took = time.monotonic() - t0
        finally:
            os.kill(f.pid, signal.SIGCONT)
        return res, took

    def test_9_a_stopped_filter_holds_the_mta_until_its_send_deadline(self):
        # Headers and body are pipelined: Postfix streams them without waiting, and the
        # stream's queue past half its max_queue stops the gateway reading from Postfix
        # (back-pressure) rather than growing. A filter that takes nothing fails after
        # `timeout` ("took no event"), and its on_error answers the message. A max_queue
        # this small needs a frame cap to match (one frame's event must fit).
        f = self.filter("--events", "header,body,eom", "--add-header", "X-Seen:yes")
        self.gateway(filter_arg("a", f, eom_timeout="30s", timeout="3s", max_queue="256KiB"),
                     extra=["--max-frame", "65536", "--log-level", "debug"])
        res, took = self.stopped_filter_big_message(f)
        self.assertTrue(res["data"] and res["data"][0] == 451, "%r\n%s" % (res, self.context()))
        self.assertLess(took, 25, "waited for eom_timeout instead of the send deadline")
        self.wait_gw_log(msg="filter failed", filter="a", reason="timeout")
        self.assertEqual(self.gw.find_log(msg="filter failed", reason="queue_full"), [],
                         self.context())
        self.gw.wait_log(msg="reading paused")

    def test_9c_a_stopped_shadow_filter_fails_at_its_cap_and_never_holds_the_mta(self):
        # The MTA never waits for a shadow filter, not even for its transport: its queue
        # is capped by max_queue, past which it fails; the mail goes through at once.
        f = self.filter("--events", "header,body,eom")
        self.gateway(filter_arg("a", f, mode="shadow", timeout="20s", max_queue="256KiB"),
                     extra=["--max-frame", "65536", "--log-level", "debug"])
        res, took = self.stopped_filter_big_message(f)
        self.assertTrue(res["data"] and res["data"][0] == 250, "%r\n%s" % (res, self.context()))
        self.assertLess(took, 15, "waited for the shadow filter's deadline")
        rec = self.wait_gw_log(msg="filter failed", filter="a", reason="queue_full")[0]
        self.assertIn("max_queue 262144", rec.get("detail", ""), rec)
        self.assertEqual(self.gw.find_log(msg="reading paused"), [], self.context())

    def test_9b_the_smallest_max_queue_taken_passes_full_body_chunks(self):
        # The config takes max_queue down to one full frame's event (max_frame + 1 KiB,
        # rounded up to KiB): at that floor a healthy filter still gets every full 65535-byte
        # chunk (an event of 65546 bytes; 64KiB failed every long body with queue_full).
        f = self.filter("--events", "header,body,eom", "--add-header", "X-Seen:yes")
        self.gateway(filter_arg("a", f, max_queue="65KiB"), extra=["--max-frame", "65536"])
        body = b"y" * 998 + b"\r\n"
        body = body * (300 * 1024 // len(body))
        msg, _, _ = make_message("full chunks at the smallest max_queue", body)
        rc, out, _ = self.swaks(msg)
        self.assertSwaksOk(rc, out)
        got = self.assertDelivered(out)
        self.assertIn(("X-Seen", "yes"), got.headers)
        self.assertEqual(got.body, lf(body))
        chunks = f.find("body")
        self.assertIn(65535, [int(r["len"]) for r in chunks], "no full chunk was sent")
        self.assertFalse(self.gw.has_log(msg="filter failed"), self.context())

    def test_10_a_reply_beyond_max_message_gets_the_failure_policy(self):
        f = self.filter("--replace-body", "x" * (100 * 1024), "--actions", "replace-body")
        self.gateway(filter_arg("a", f, max_message="64KiB"))
        msg, _, _ = make_message("too big a reply", BODY)
        res = self.session([("sender@example.org", ["rcpt@example.com"], msg)])[0]
        self.assertTrue(res["data"] and res["data"][0] == 451, "%r\n%s" % (res, self.context()))
        rec = self.wait_gw_log(msg="filter failed", filter="a")[0]
        self.assertEqual(rec.get("event"), "BODYEOB", rec)


# =========================================================================================
# The bridge against a raw milter client: what no Postfix sends, but Sendmail or a
# misbehaving filter may


class BridgeMultiplexed(BridgeCase):
    """A filter that declares multiplexed streams (filter.proto, Description.multiplexed):
    SMTP connections that start together share one Session call, every event and reply
    names its session, and each session keeps its own fate: one that misses a deadline ends
    alone, while the call's failure fails them all."""

    first_octet = 140

    def gateway(self, *filter_args, extra=()):
        """One worker loop: calls are shared within a loop, and the tests count them."""
        return super().gateway(*filter_args, extra=("--workers", "1") + tuple(extra))

    def connections(self, n):
        """n SMTP connections to Postfix open at once (EHLO answered on each)."""
        return mgwtest.smtp_connections(self, self.pf.host, self.pf.port, n, self.ip)

    def send(self, c, subject, from_="sender@example.org", to="rcpt@example.com"):
        """One message on an open connection; returns its queue id."""
        msg, _, _ = make_message(subject, BODY)
        self.assertEqual(c.mail(from_)[0], 250, self.context())
        self.assertEqual(c.rcpt(to)[0], 250, self.context())
        code, resp = c.data(msg)
        self.assertEqual(code, 250, "%r\n%s" % (resp, self.context()))
        return queue_id(resp.decode())

    def test_1_connections_at_once_share_one_call(self):
        f = self.filter("--multiplexed", "--add-header", "X-Mux:yes")
        self.gateway(filter_arg("a", f))
        conns = self.connections(4)
        qids = [self.send(c, "mux %d" % i) for i, c in enumerate(conns)]
        for c in conns:
            c.quit()
        for q in qids:
            got = self.pf.wait_delivered_id(q, timeout=30)
            self.assertIn(("X-Mux", "yes"), got.headers, q)
        starts = f.wait_record("start", count=4)
        self.assertEqual(len({r["session"] for r in starts}), 4, f.record_text())
        self.assertEqual(len({r["call"] for r in starts}), 1, f.record_text())
        # each session ended on its own (SessionEnd), and then the call
        f.wait_record("close", count=4, how="end")
        self.assertEqual(f.find("close", how="halfclose"), [], f.record_text())

    def test_2_a_session_that_misses_its_deadline_ends_alone(self):
        f = self.filter("--multiplexed", "--only-from", "slow@example.org", "--delay-at", "mail",
                        "--delay-ms", "3000")
        self.gateway(filter_arg("a", f, timeout="500ms"))
        slow, fast = self.connections(2)
        code, _ = slow.mail("slow@example.org")
        self.assertEqual(code, 451, self.context())
        rec = self.wait_gw_log(msg="filter failed", filter="a", reason="timeout")[0]
        self.assertEqual(rec.get("event"), "MAIL", rec)
        f.wait_record("close", how="end", reason="timeout")
        # the other session, on the same call, goes on while the slow answer is still due
        qid = self.send(fast, "fast")
        fast.quit()
        self.pf.wait_delivered_id(qid, timeout=30)
        starts = f.find("start")
        self.assertEqual(len({r["call"] for r in starts}), 1, f.record_text())
        self.assertFalse(self.gw.has_log(msg="multiplexed stream failed"), self.context())
        self.assertEqual(len(self.gw.find_log(msg="filter failed")), 1, self.context())

    def test_3_the_call_failing_fails_every_session_on_it(self):
        f = self.filter("--multiplexed", "--crash-at", "rcpt")
        self.gateway(filter_arg("a", f))
        a, b = self.connections(2)
        self.assertEqual(a.mail("sender@example.org")[0], 250)
        self.assertEqual(a.rcpt("rcpt@example.com")[0], 451, self.context())
        self.assertEqual(f.wait_exit(10), TestFilter.CRASH_EXIT)
        rec = self.wait_gw_log(msg="multiplexed stream failed", filter="a")[0]
        self.assertEqual(rec.get("sessions"), "2", rec)
        # the idle session failed with it: its next event gets the failure policy at once
        t0 = time.monotonic()
        self.assertEqual(b.mail("sender@example.org")[0], 451, self.context())
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(len(self.gw.find_log(msg="filter failed", filter="a")), 2, self.context())

    def test_4_many_idle_connections_share_few_calls(self):
        # 130 milter connections straight to the gateway, each answered CONNECT and HELO:
        # at most 128 sessions on one call, so two calls or a few more on a slow machine.
        f = self.filter("--multiplexed")
        gw = self.gateway(filter_arg("a", f))
        conns = []
        try:
            for _ in range(130):
                c = mgwtest.MilterConn(gw.host, gw.port)
                conns.append(c)
                c.negotiate()
                self.assertEqual(c.command(mgwtest.connect_frame())[0], "c")
                self.assertEqual(c.command(frame("H", cstr("client.example")))[0], "c")
            starts = f.wait_record("start", count=130)
        finally:
            for c in conns:
                c.close()
        calls = {}
        for r in starts:
            calls[r["call"]] = calls.get(r["call"], 0) + 1
        self.assertLessEqual(max(calls.values()), 128, calls)
        self.assertLess(len(calls), 20, calls)
        f.wait_record("close", count=130, how="end")


class BridgeRawMilter(unittest.TestCase):

    def setUp(self):
        if not mgwtest.TEST_FILTER:
            self.skipTest("no --test-filter PATH given")
        self.tmp = mgwtest.make_tmpdir("bridge-raw")
        self.procs = []

    def start(self, filters, gw_args=(), **opts):
        """filters: [(name, [flags])], gw_args: more miltergw options; returns (miltergw,
        {name: TestFilter})."""
        fs = {}
        argv = []
        for name, flags in filters:
            f = TestFilter(flags, tmpdir=self.tmp, name=name)
            self.addCleanup(f.stop, expect=None)
            fs[name] = f
            argv += ["--filter", filter_arg(name, f, **opts.get(name, {}))]
        gw = mgwtest.Miltergw(args=argv + list(gw_args), tmpdir=self.tmp)
        self.addCleanup(gw.stop, expect=None)
        return gw, fs

    def greet(self, c):
        c.negotiate()
        self.assertEqual(c.command(mgwtest.connect_frame())[0], "c")
        self.assertEqual(c.command(frame("H", cstr("client.example")))[0], "c")

    def test_1_filter_status_details_are_escaped_in_the_log(self):
        forged = 'x" level=info msg=forged\nts=2026-01-01T00:00:00Z level=info msg=forged2'
        gw, _ = self.start([("a", ["--fail-at", "mail", "--fail-status", "13:" + forged])],
                           a={"on_error": "reject"})
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "r")
        rec = gw.wait_log(msg="filter failed", filter="a")[0]
        self.assertIn("msg=forged", rec.get("detail", ""), rec)
        self.assertEqual([r for r in gw.records() if r.get("msg", "").startswith("forged")], [],
                         gw.proc.log_tail())
        self.assertFalse(any(l.startswith("ts=2026-01-01") for l in gw.log_lines()), gw.proc.log_tail())

    def test_2_final_verdict_on_eob_with_data_ends_the_message(self):
        # Sendmail may put the last body bytes in the EOB and send no ABORT after a
        # refusal: the next message must reach the filter that accepted the last one.
        gw, fs = self.start([("a", ["--accept-at", "rcpt"]), ("b", ["--reject-at", "body"])])
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<one@example.org>")))[0], "c")
            self.assertEqual(c.command(frame("R", cstr("<r@example.com>")))[0], "c")
            self.assertEqual(c.command(frame("T"))[0], "c")
            c.send(frame("N"))  # NR_EOH negotiated (content is pipelined): no answer
            self.assertEqual(c.command(frame("E", b"the last body bytes\r\n"))[0], "r")
            self.assertEqual(c.command(frame("M", cstr("<two@example.org>")))[0], "c")
        got = fs["a"].wait_record("mail", count=2)
        self.assertEqual([r["addr"] for r in got], ["<one@example.org>", "<two@example.org>"])

    def test_3_too_many_unanswered_events_apply_the_failure_policy(self):
        # "slow" owes a reply for every RCPT that "d" discarded at once; past the limit
        # (MGW_OWED_MAX, 4096) the gateway gives up on it, and its on_error decides that
        # RCPT. The frames go out in one write and the answers are read after: the
        # gateway takes one command at a time anyway.
        owed_max = 4096
        gw, fs = self.start([("slow", ["--events", "rcpt", "--delay-ms", "100000"]),
                             ("d", ["--discard-at", "rcpt", "--only-from", "<spam@example.org>"])],
                            slow={"on_error": "reject", "timeout": "120s"})
        with mgwtest.MilterConn(gw.host, gw.port, timeout=60) as c:
            self.greet(c)
            c.send(b"".join(frame("M", cstr("<spam@example.org>")) +
                            frame("R", cstr("<r%d@example.com>" % i)) + frame("A")
                            for i in range(owed_max)))
            for i in range(owed_max):
                self.assertEqual(c.read_frame()[0], "c")
                self.assertEqual(c.read_frame()[0], "d")
            self.assertEqual(c.command(frame("M", cstr("<ham@example.org>")))[0], "c")
            self.assertEqual(c.command(frame("R", cstr("<r@example.com>")))[0], "r")
        rec = gw.wait_log(msg="filter failed", filter="slow")[0]
        self.assertEqual(rec.get("reason"), "out_of_contract", rec)

    def test_5_streamed_content_goes_in_batches_to_filters_that_take_them(self):
        # The whole content in one write: while the first header is on its way to the
        # filters, the rest queue up behind it; "a" (batches declared) gets them as one
        # EventBatch and answers with Reply batches, "b" (--no-batches) one by one. Both
        # see the same events in the same order, and both answers count.
        gw, fs = self.start([("a", ["--add-header", "X-A:1"]),
                             ("b", ["--no-batches", "--add-header", "X-B:2"])])
        names = ["X-H%02d" % i for i in range(20)]
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "c")
            self.assertEqual(c.command(frame("R", cstr("<r@example.com>")))[0], "c")
            self.assertEqual(c.command(frame("T"))[0], "c")
            c.send(b"".join(frame("L", cstr(n, "value of " + n)) for n in names) +
                   frame("N") + frame("B", b"body\r\n") + frame("E"))
            got = [c.read_frame() for _ in range(3)]
        self.assertEqual([cmd for cmd, _ in got], ["h", "h", "c"], got)
        self.assertEqual([d for _, d in got[:2]], [cstr("X-A", "1"), cstr("X-B", "2")])
        for name, batched in (("a", True), ("b", False)):
            recs = fs[name].find("header")
            self.assertEqual([r["name"] for r in recs], names, fs[name].record_text())
            self.assertEqual(any("batch" in r for r in recs), batched, fs[name].record_text())

    def test_6_a_filter_still_answering_when_the_mta_leaves_is_no_failure(self):
        # "d" discards at MAIL, which answers the MTA at once; the MTA leaves while "a" is
        # still working on MAIL. Its stream (or session) lingers, then ends after 5 s: that
        # is not "a" failing, and nothing is logged as one.
        gw, fs = self.start([("d", ["--discard-at", "mail"]),
                             ("a", ["--delay-at", "mail", "--delay-ms", "8000"])])
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "d")
            fs["a"].wait_record("mail")
            c.send(frame("Q"))
        # cancelled (its own stream), or a SessionEnd (multiplexed)
        fs["a"].wait_record("close", timeout=15)
        gw.stop()  # every completion is in by the time it exits
        self.assertEqual(gw.find_log(msg="filter failed"), [], gw.proc.log_tail())

    def test_4_abort_reaches_a_filter_that_accepted_the_connection(self):
        # filter.proto: Abort goes to every filter, retired ones included.
        gw, fs = self.start([("a", ["--accept-at", "connect"]), ("b", [])])
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "c")
            c.send(frame("A"))
            self.assertEqual(c.command(frame("M", cstr("<t@example.org>")))[0], "c")
        fs["b"].wait_record("mail", count=2)
        fs["a"].wait_record("abort")
        self.assertEqual(fs["a"].find("mail"), [], fs["a"].record_text())

    def test_7_a_stream_waiting_for_a_channel_that_fails_fails_at_once(self):
        # A stream made while its channel is reconnecting waits for it (WAIT_FOR_READY).
        # When the channel then fails, the filter is known down and must cost no more
        # waiting: on_error at once, not at the send deadline (30 s here). The window is
        # the moment just after a filter dies, so the test makes it often: a filter that
        # crashes at RCPT, and at once the next connection (on the other loop, whose
        # channel learns of the death on its own). Without the fix about one round in
        # eight waits the 30 s.
        for rnd in range(12):
            name = "r%d" % rnd  # a filter of its own per round (its files, its port)
            gw, fs = self.start([(name, ["--crash-at", "rcpt"])],
                                **{name: {"timeout": "30s", "on_error": "tempfail"}})
            with mgwtest.MilterConn(gw.host, gw.port) as c:
                c.negotiate()
                self.assertEqual(c.command(mgwtest.connect_frame())[0], "c")
                self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "c")
                self.assertEqual(c.command(frame("R", cstr("<r@example.org>")))[0], "t")
            t0 = time.monotonic()
            with mgwtest.MilterConn(gw.host, gw.port, timeout=40) as c:
                c.negotiate()
                self.assertEqual(c.command(mgwtest.connect_frame())[0], "t")
            self.assertLess(time.monotonic() - t0, 5, "round %d\n%s" % (rnd, gw.log_text()[-3000:]))
            gw.stop(expect=None)

    def test_6_a_filter_gets_its_stream_at_its_first_event(self):
        # filter.proto: a stream opens when the filter's first event comes, so a
        # connection that brings a filter nothing costs it no stream (and the gateway no
        # gRPC call), and has nothing for it to abandon (no Abort either).
        gw, fs = self.start([("a", []), ("b", ["--events", "mail,eom"])])
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            c.send(frame("A"))
        fs["a"].wait_record("close")
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "c")
        fs["b"].wait_record("mail")
        fs["a"].wait_record("close", count=2)
        a_sessions = list(fs["a"].sessions())
        self.assertEqual(len(a_sessions), 2, fs["a"].record_text())
        b_sessions = fs["b"].sessions()
        self.assertEqual(list(b_sessions), a_sessions[1:], fs["b"].record_text())
        kinds = [r["kind"] for r in b_sessions[a_sessions[1]]]
        self.assertEqual(kinds[:2], ["start", "mail"], fs["b"].record_text())
        self.assertEqual(fs["b"].find("abort"), [], fs["b"].record_text())

    def test_8_an_mta_that_closes_while_an_answer_is_owed_gets_it_first(self):
        # The gateway reads on while a filter works (no epoll_ctl per answered event):
        # a frame that comes anyway, and the end of the connection, must still wait for
        # the answer, and the frame be handled before the end (as when reading paused).
        gw, fs = self.start([("a", ["--delay-ms", "300", "--delay-at", "mail"])])
        c = mgwtest.MilterConn(gw.host, gw.port)
        try:
            self.greet(c)
            c.send(frame("M", cstr("<s@example.org>")) + frame("R", cstr("<r@example.com>")))
            c.sock.shutdown(socket.SHUT_WR)
            self.assertEqual([c.read_frame()[0] for _ in range(2)], ["c", "c"])
            self.assertRaises(EOFError, c.read_frame)
        finally:
            c.sock.close()
        rec = gw.wait_log(msg="session closed")[0]
        self.assertEqual(rec.get("reason"), "eof", gw.proc.log_tail())
        self.assertEqual([r["addr"] for r in fs["a"].wait_record("rcpt")], ["<r@example.com>"])

    def test_9_the_idle_timer_does_not_run_out_while_a_filter_answers(self):
        # The idle timeout is the MTA's silence between messages; waiting for a filter's
        # answer to HELO is ours, however long it takes within the filter's deadline.
        gw, _ = self.start([("a", ["--delay-ms", "1500", "--delay-at", "helo"])],
                           gw_args=["--idle-timeout", "1s"])
        with mgwtest.MilterConn(gw.host, gw.port) as c:
            self.greet(c)
            self.assertEqual(c.command(frame("M", cstr("<s@example.org>")))[0], "c")
        self.assertFalse(gw.has_log(reason="idle_timeout"), gw.proc.log_tail())


# =========================================================================================
# Shutdown right after a session (no Postfix: a raw milter client, to hit the moment when
# the filter streams are still finishing)


class BridgeShutdown(unittest.TestCase):
    ROUNDS = 10

    def test_sigterm_just_after_a_session(self):
        if not mgwtest.TEST_FILTER:
            self.skipTest("no --test-filter PATH given")
        tmp = mgwtest.make_tmpdir("bridge-shutdown")
        f = TestFilter(["--reject-at", "mail"], tmpdir=tmp)
        self.addCleanup(f.stop)
        bad = []
        for i in range(self.ROUNDS):
            d = os.path.join(tmp, "round%d" % i)
            os.mkdir(d)
            gw = mgwtest.Miltergw(args=["--filter", filter_arg("a", f)], tmpdir=d)
            try:
                with mgwtest.MilterConn(gw.host, gw.port) as c:
                    c.negotiate()
                    c.send(mgwtest.macro("C", [("j", "mx.example")]))
                    self.assertEqual(c.command(mgwtest.connect_frame())[0], "c")
                    self.assertEqual(c.command(mgwtest.frame("H", mgwtest.cstr("client.example")))[0], "c")
                    self.assertEqual(c.command(mgwtest.frame("M", mgwtest.cstr("<s@example.org>")))[0], "r")
                    # end the session the way Postfix does and stop the gateway at once
                    c.send(mgwtest.frame("A") + mgwtest.frame("A") + mgwtest.frame("Q"))
            finally:
                rc = gw.stop(expect=None)
            errors = gw.error_lines()
            if rc != 0 or errors:
                bad.append("round %d: exit %r; log tail:\n%s" % (i, rc, gw.proc.log_tail(6)))
        if bad:
            self.fail("miltergw stopped badly right after a session in %d of %d rounds:\n%s"
                      % (len(bad), self.ROUNDS, "\n".join(bad)))


if __name__ == "__main__":
    mgwtest.main()
