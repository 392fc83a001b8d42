#!/usr/bin/python3
"""The milter test harness (milters.py, script_milter.py) against real Postfix directly:
Postfix -> OpenDKIM / OpenDMARC / the scriptable pymilter milter -> smtp-sink, no
miltergw in between. Proves the harness before miltergw's milter backends use it.

  - OpenDKIM signs (private key made at test time, selector mgw, d=example.org);
  - a signed message through OpenDKIM verifying then OpenDMARC (one Postfix, two
    smtpd_milters) gets `dkim=pass` and `dmarc=pass`, keys and DMARC record served from
    files (TestPublicKeys, TestDNSData), never from DNS; tampered and unsigned messages
    get deterministic fail results;
  - the script milter records what it saw (callbacks, macros, headers, body hash), answers
    what it is told at each stage, makes every EOM modification, hangs, dies, restricts
    actions, and refuses (closes) when it asks for actions the MTA did not offer.

Usage: /usr/bin/python3 test_milter_harness.py --miltergw PATH [unittest options]
(--miltergw is taken like every suite here; these tests do not start miltergw.)
Exits 77 (skipped) if opendkim, opendmarc or python3-milter is missing: run
tools/setup-debian.sh.
"""
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
import milters  # noqa: E402
from mgwtest import lf, make_message, queue_id  # noqa: E402
from milters import auth_results, message_bytes, sha256  # noqa: E402

BODY = (b"Hello,\r\n"
        b".a line that starts with a dot\r\n"
        b"\ttab-indented line   \r\n"
        b"\r\n"
        b"last line\r\n")


def send(pf, msg, to="rcpt@example.com", from_="sender@example.org"):
    """swaks one message; returns (queue id, transcript). Fails the test if not queued."""
    rc, transcript = pf.swaks(to=to, from_=from_, data=msg)
    if rc != 0:
        raise AssertionError("swaks exit %d:\n%s\nmaillog:\n%s" % (rc, transcript, pf.maillog()[-2000:]))
    return queue_id(transcript), transcript


class DkimDmarc(unittest.TestCase):
    """Postfix A signs with OpenDKIM; Postfix B runs OpenDKIM (verify) then OpenDMARC."""

    @classmethod
    def setUpClass(cls):
        cls.key = milters.DkimKey(domain="example.org", selector="mgw")
        cls.signer = milters.OpenDkimSigner(cls.key)
        cls.verifier = milters.OpenDkimVerifier([cls.key])
        cls.dmarc = milters.OpenDmarc({"_dmarc.example.org": "v=DMARC1; p=reject"})
        cls.pf_sign = mgwtest.PrivatePostfix(milters.postfix_milters(cls.signer))
        cls.pf_verify = mgwtest.PrivatePostfix(milters.postfix_milters(cls.verifier, cls.dmarc))

    @classmethod
    def tearDownClass(cls):
        for pf in (cls.pf_sign, cls.pf_verify):
            pf.stop()
        milters.stop_all([cls.signer, cls.verifier, cls.dmarc])

    def signed(self, subject):
        msg, hdrs, body = make_message(subject, BODY)
        qid, _ = send(self.pf_sign, msg)
        return self.pf_sign.wait_delivered_id(qid)

    def verified(self, data):
        qid, _ = send(self.pf_verify, data)
        return self.pf_verify.wait_delivered_id(qid)

    def test_1_opendkim_signs(self):
        got = self.signed("dkim sign")
        sig = got.header("DKIM-Signature")
        self.assertIsNotNone(sig, got.headers)
        tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", sig).split(";") if "=" in t)
        self.assertEqual(tags["d"], "example.org")
        self.assertEqual(tags["s"], "mgw")
        self.assertEqual(tags["c"], "relaxed/simple")
        self.assertIn("from", tags["h"].lower().split(":"))
        # the signer is first: its header is on top, above Postfix's Received
        self.assertEqual(got.headers[0][0], "DKIM-Signature")
        self.assertEqual(got.body, lf(BODY))

    def test_2_signed_message_verifies_and_dmarc_passes(self):
        got = self.verified(message_bytes(self.signed("dkim verify")))
        dkim = auth_results(got, "dkim.mgwtest")
        dmarc = auth_results(got, "dmarc.mgwtest")
        self.assertEqual(len(dkim), 1, got.headers)
        self.assertRegex(dkim[0], r"^dkim\.mgwtest; dkim=pass \(2048-bit key\) header\.d=example\.org "
                                  r"header\.i=@example\.org header\.a=rsa-sha256 header\.s=mgw header\.b=")
        self.assertEqual(dmarc, ["dmarc.mgwtest; dmarc=pass (p=reject dis=none) header.from=example.org"],
                         got.headers)
        # OpenDMARC runs second and read OpenDKIM's header, so its header is added on top
        names = [n for n, _ in got.headers]
        self.assertEqual(names[:2], ["Authentication-Results", "Authentication-Results"])
        self.assertTrue(got.headers[0][1].startswith("dmarc.mgwtest;"), got.headers[0])

    def test_3_tampered_body_fails_both(self):
        signed = self.signed("dkim tampered")
        data = message_bytes(signed).replace(b"last line", b"last line, changed in transit")
        got = self.verified(data)
        dkim = auth_results(got, "dkim.mgwtest")
        self.assertEqual(len(dkim), 1, got.headers)
        self.assertRegex(dkim[0], r"^dkim\.mgwtest; dkim=fail reason=\"signature verification failed\" "
                                  r"\(2048-bit key\) header\.d=example\.org ")
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=fail (p=reject dis=none) header.from=example.org"])

    def test_4_unsigned_message_dmarc_fails(self):
        msg, _, _ = make_message("unsigned", BODY)
        got = self.verified(msg)
        self.assertEqual(auth_results(got, "dkim.mgwtest"), ["dkim.mgwtest; dkim=none; dkim-atps=neutral"])
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=fail (p=reject dis=none) header.from=example.org"])

    def test_5_sign_verify_dmarc_in_one_chain(self):
        """One Postfix, three smtpd_milters: a later milter sees what an earlier one added
        (the signature), so the verifier passes it; the signer listens on a unix socket."""
        signer = milters.OpenDkimSigner(self.key, name="opendkim-sign-unix", unix=True)
        try:
            self.assertTrue(signer.spec.startswith("unix:/"), signer.spec)
            pf = mgwtest.PrivatePostfix(milters.postfix_milters(signer, self.verifier, self.dmarc))
            try:
                msg, _, _ = make_message("one chain", BODY)
                qid, _ = send(pf, msg)
                got = pf.wait_delivered_id(qid)
            finally:
                pf.stop()
        finally:
            milters.stop_all([signer])
        self.assertIsNotNone(got.header("DKIM-Signature"))
        self.assertRegex(auth_results(got, "dkim.mgwtest")[0], r"; dkim=pass \(2048-bit key\) ")
        self.assertEqual(auth_results(got, "dmarc.mgwtest"),
                         ["dmarc.mgwtest; dmarc=pass (p=reject dis=none) header.from=example.org"])


class ScriptMilterCase(unittest.TestCase):
    """One private Postfix per test, calling the script milters the test starts."""

    def setUp(self):
        self.milters = []
        self.pf = None
        self.addCleanup(self.stop_all)

    def stop_all(self):
        if self.pf is not None:
            self.pf.stop()
        milters.stop_all(self.milters)

    def milter(self, *args, name="sm", unix=False):
        m = milters.ScriptMilter(*args, name=name, unix=unix)
        self.milters.append(m)
        return m

    def postfix(self, *ms, **cf):
        self.pf = mgwtest.PrivatePostfix(milters.postfix_milters(*ms), extra_main_cf=cf)
        return self.pf

    def session(self, rcpts, msg, from_="sender@example.org"):
        return self.pf.smtp_session([(from_, rcpts, msg)])[0]

    # -- recording

    def test_records_callbacks_macros_headers_and_body(self):
        sm = self.milter()
        self.postfix(sm)
        msg, hdrs, body = make_message("record me", BODY, headers=[("X-Folded", "one\n\ttwo")])
        res = self.session(["a@example.com", "b@example.com"], msg)
        self.assertEqual(res["data"][0], 250, res)
        qid = queue_id(res["data"][1])
        self.pf.wait_delivered_id(qid)
        sm.wait_record("close")
        events = [r["event"] for r in sm.records()]
        self.assertEqual(events[:6], ["negotiate", "connect", "helo", "mail", "rcpt", "rcpt"], events)
        self.assertEqual(events[-3:], ["eom", "eom_done", "close"], events)
        neg = sm.find("negotiate")[0]
        self.assertEqual(neg["offered_actions"], 0x1FF)  # Postfix offers every v6 action
        self.assertEqual(neg["actions"], 0x1FF)
        self.assertEqual(sm.find("connect")[0]["addr"], ["127.0.0.1", sm.find("connect")[0]["addr"][1]])
        self.assertEqual(sm.find("helo")[0]["arg"], "client.example")
        self.assertEqual(sm.find("mail")[0]["args"][0], "<sender@example.org>")
        self.assertEqual([r["args"][0] for r in sm.find("rcpt")], ["<a@example.com>", "<b@example.com>"])
        eom = sm.find("eom")[0]
        # exactly the sender's headers: Postfix does not show smtpd_milters its Received
        self.assertEqual([tuple(h) for h in eom["headers"]], [(n, v) for n, v in hdrs])
        self.assertEqual(eom["body_len"], len(BODY))
        self.assertEqual(eom["body_sha256"], sha256(BODY))
        self.assertEqual(eom["macros"]["i"], qid)
        self.assertEqual(eom["macros"]["{mail_addr}"], "sender@example.org")
        self.assertEqual(sm.find("mail")[0]["macros"]["{mail_addr}"], "sender@example.org")
        self.assertEqual(sm.find("rcpt")[1]["macros"]["{rcpt_addr}"], "b@example.com")
        self.assertIn("j", sm.find("connect")[0]["macros"])

    def test_unix_socket(self):
        sm = self.milter("--addheader", "X-Via:unix socket", unix=True)
        self.assertIsNone(sm.port)
        self.postfix(sm)
        msg, _, _ = make_message("unix", BODY)
        res = self.session(["r@example.com"], msg)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(got.header("X-Via"), "unix socket")
        self.assertEqual(sm.find("connect")[0]["addr"], ["127.0.0.1", sm.find("connect")[0]["addr"][1]])

    # -- verdicts

    def test_reject_one_recipient_with_reply(self):
        sm = self.milter("--at", "rcpt/bad=reject:550:5.7.1:go away")
        self.postfix(sm)
        msg, _, _ = make_message("reject rcpt", BODY)
        res = self.session(["good@example.com", "bad@example.com"], msg)
        self.assertEqual(res["rcpt"][0][0], 250, res)
        self.assertEqual(res["rcpt"][1][0], 550, res)
        self.assertIn("5.7.1 go away", res["rcpt"][1][1])
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(got.rcpts, ["good@example.com"])
        self.assertEqual(sm.find("verdict", stage="rcpt")[0]["verdict"], "reject")

    def test_tempfail_and_reject_at_eom(self):
        sm = self.milter("--at", "eom=tempfail:451:4.7.0:try later")
        self.postfix(sm)
        msg, _, _ = make_message("tempfail eom", BODY)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["data"][0], 451, res)
        self.assertIn("4.7.0 try later", res["data"][1])
        sm2 = self.milter("--at", "mail=reject:553:5.7.1:not you", name="sm2")
        self.pf.stop()
        self.postfix(sm2)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["mail"][0], 553, res)
        self.assertIn("5.7.1 not you", res["mail"][1])

    def test_discard_at_body(self):
        sm = self.milter("--at", "body=discard")
        self.postfix(sm)
        msg, _, _ = make_message("discard", BODY)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["data"][0], 250, res)  # accepted, then dropped by Postfix
        qid = queue_id(res["data"][1])
        # cleanup drops it: no queue file, nothing to the sink
        self.pf.wait_maillog(r" %s: milter-discard: END-OF-MESSAGE .*milter triggers DISCARD" % qid)
        self.pf.wait_queue_empty(timeout=10)
        self.assertEqual(self.pf.sink.with_queue_id(qid), [])
        self.assertEqual(sm.find("verdict")[0]["verdict"], "discard")

    # -- modifications

    def test_every_eom_modification(self):
        sm = self.milter(
            "--addheader", "X-Added:added value",
            "--insheader", "0:X-Inserted:at the top",
            "--chgheader", "Subject:1:changed subject",
            "--chgheader", "X-Delete-Me:1:",
            "--addrcpt", "<added@example.com>",
            "--addrcpt-par", "<added-par@example.com>:NOTIFY=NEVER",
            "--delrcpt", "<gone@example.com>",
            "--chgfrom", "<new-sender@example.org>",
            "--replacebody", "replaced body\\nsecond line\\n",
            "--progress", "2")
        self.postfix(sm)
        msg, _, _ = make_message("modify me", BODY, headers=[("X-Delete-Me", "bye")])
        res = self.session(["kept@example.com", "gone@example.com"], msg)
        self.assertEqual(res["data"][0], 250, res)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        done = sm.wait_record("eom_done")[0]
        self.assertEqual(done["errors"], [])
        self.assertEqual(got.headers[0], ("X-Inserted", "at the top"))
        self.assertEqual(got.headers[-1], ("X-Added", "added value"))
        self.assertEqual(got.header("Subject"), "changed subject")
        self.assertIsNone(got.header("X-Delete-Me"))
        self.assertEqual(got.mail_from, "new-sender@example.org")
        self.assertEqual(sorted(got.rcpts), ["added-par@example.com", "added@example.com", "kept@example.com"])
        self.assertEqual(got.body, b"replaced body\nsecond line\n")

    def test_quarantine_holds_the_message(self):
        sm = self.milter("--quarantine", "held by test")
        self.postfix(sm)
        msg, _, _ = make_message("quarantine", BODY)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["data"][0], 250, res)
        qid = queue_id(res["data"][1])
        # Postfix logs no reason, only the HOLD
        self.pf.wait_maillog(r" %s: milter-hold: END-OF-MESSAGE .*milter triggers HOLD action" % qid)
        held = mgwtest.wait_for(self.pf.hold_queue, 10, "a message in the hold queue")
        self.assertEqual([e["queue_id"] for e in held], [qid])

    def test_copy_header_sees_earlier_milters_header(self):
        """Postfix runs smtpd_milters in order over the message as edited so far: the second
        milter sees the header the first one added (and the original Subject)."""
        first = self.milter("--addheader", "X-Phase1:from the first milter", name="first")
        second = self.milter("--copy-header", "X-Phase1", "--copy-header", "Subject",
                             "--copy-header", "X-Nowhere", name="second")
        self.postfix(first, second)
        msg, _, _ = make_message("two phases", BODY)
        res = self.session(["r@example.com"], msg)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(got.header("X-Phase1"), "from the first milter")
        self.assertEqual(got.header("X-Seen-X-Phase1"), "from the first milter")
        self.assertEqual(got.header("X-Seen-Subject"), "two phases")
        self.assertEqual(got.header("X-Seen-X-Nowhere"), "(absent)")

    # -- failures

    def test_die_mid_message(self):
        sm = self.milter("--die-at", "body")
        self.postfix(sm)
        msg, _, _ = make_message("die", BODY)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["data"][0], 451, res)  # milter_default_action = tempfail
        self.assertEqual(sm.wait_exit(10), milters.ScriptMilter.DIE_EXIT)
        self.assertEqual(len(sm.find("die", stage="body")), 1)

    def test_hang_past_the_mta_deadline(self):
        sm = self.milter("--hang-at", "eom")
        self.postfix(sm, milter_content_timeout="2s")
        msg, _, _ = make_message("hang", BODY)
        res = self.session(["r@example.com"], msg)
        self.assertEqual(res["data"][0], 451, res)
        self.pf.wait_maillog(r"warning: milter %s: can't read SMFIC_BODYEOB reply packet header: "
                             r"Connection timed out" % re.escape(sm.spec))
        self.assertTrue(sm.alive())  # still asleep in its callback; stop() kills it by PID
        self.assertEqual(len(sm.find("hang", stage="eom")), 1)

    # -- negotiation

    def test_restricted_actions_refuse_the_rest(self):
        sm = self.milter("--actions", "ADDHDRS", "--addheader", "X-Ok:yes",
                         "--chgheader", "Subject:1:not allowed")
        self.postfix(sm)
        msg, _, _ = make_message("only addheader", BODY)
        res = self.session(["r@example.com"], msg)
        got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(sm.find("negotiate")[0]["actions"], 0x01)
        errors = sm.find("eom_done")[0]["errors"]
        self.assertEqual([e[0] for e in errors], ["chgheader"])
        self.assertEqual(got.header("X-Ok"), "yes")
        self.assertEqual(got.header("Subject"), "only addheader")

    def test_protocol_bits_requested(self):
        sm = self.milter("--protocol", "HDR_LEADSPC,NR_HDR,SKIP", "--at", "body=skip")
        self.postfix(sm)
        msg, _, _ = make_message("leading space", BODY, headers=[("X-Spaced", "  two spaces")])
        res = self.session(["r@example.com"], msg)
        self.pf.wait_delivered_id(queue_id(res["data"][1]))
        neg = sm.wait_record("negotiate")[0]
        self.assertEqual(neg["protocol"], 0x100000 | 0x80 | 0x400)
        spaced = [r for r in sm.find("header") if r["name"] == "X-Spaced"]
        self.assertEqual(spaced[0]["value"], "   two spaces")  # leading space kept
        self.assertEqual(sm.find("verdict", stage="body")[0]["verdict"], "skip")

    def test_symlist_limits_the_macros_postfix_sends(self):
        sm = self.milter("--symlist", "mail:{mail_addr} i")
        self.postfix(sm)
        msg, _, _ = make_message("symlist", BODY)
        res = self.session(["r@example.com"], msg)
        self.pf.wait_delivered_id(queue_id(res["data"][1]))
        self.assertEqual(sm.find("eom_done")[0]["errors"], [])
        mail = sm.find("mail")[0]["macros"]
        self.assertEqual(mail.get("{mail_addr}"), "sender@example.org")
        self.assertNotIn("{mail_mailer}", mail)  # in Postfix's default milter_mail_macros
        rcpt = sm.find("rcpt")[0]["macros"]
        self.assertEqual(rcpt.get("{rcpt_addr}"), "r@example.com")  # other stages unchanged

    def test_actions_not_offered_close_the_connection(self):
        """libmilter will not ask for an action the MTA did not offer: it closes the
        connection during negotiation instead of replying (raw MTA side here)."""
        sm = self.milter("--actions", "ADDHDRS,CHGHDRS")
        with mgwtest.MilterConn("127.0.0.1", sm.port) as c:
            with self.assertRaises(EOFError):
                c.negotiate(actions=0x01)
        with mgwtest.MilterConn("127.0.0.1", sm.port) as c:
            version, actions, protocol, _ = c.negotiate(actions=0x1FF)
            self.assertEqual((version, actions), (6, 0x11))
        negs = sm.wait_record("negotiate", count=2)
        self.assertEqual([n["offered_actions"] for n in negs], [0x01, 0x1FF])


if __name__ == "__main__":
    missing = milters.missing_tools()
    if missing:
        sys.stderr.write("skipped: missing %s (run tools/setup-debian.sh)\n" % ", ".join(missing))
        sys.exit(77)
    mgwtest.main()
