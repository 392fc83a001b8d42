#!/usr/bin/python3
"""Real Postfix -> miltergw (null milter) -> smtp-sink: messages arrive unchanged.

Usage: /usr/bin/python3 test_frontend_postfix.py --miltergw PATH [unittest options]
"""
import os
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import lf, make_message, queue_id  # noqa: E402

BODY = (b"Hello,\r\n"
        b".a line that starts with a dot (dot-stuffed on the wire)\r\n"
        b"..two dots\r\n"
        b"\ttab-indented line with trailing spaces   \r\n"
        b"\r\n"
        b"last line\r\n")


class FrontendPostfix(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = mgwtest.Miltergw()
        try:
            cls.pf = mgwtest.PrivatePostfix(cls.gw.spec)
        except BaseException:
            cls.gw.stop(expect=None)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.pf.stop()
        if cls.gw.alive():
            cls.gw.stop(expect=None)

    def assertUnchanged(self, delivered, sent_headers, sent_body):
        """Delivered = Postfix's Received header + exactly the sender's headers, in order,
        folding kept; body byte-identical (modulo CRLF -> LF done by smtp-sink)."""
        self.assertEqual(delivered.headers[0][0], "Received", delivered.headers)
        self.assertIn("(Postfix)", delivered.headers[0][1])
        self.assertEqual(delivered.headers[1:], list(sent_headers))
        self.assertEqual(delivered.body, lf(sent_body))

    def send_swaks(self, msg, to="rcpt@example.com", from_="sender@example.org"):
        rc, transcript = self.pf.swaks(to=to, from_=from_, data=msg)
        self.assertEqual(rc, 0, transcript)
        return self.pf.wait_delivered_id(queue_id(transcript))

    def test_1_simple_swaks(self):
        msg, hdrs, body = make_message("simple swaks", BODY)
        got = self.send_swaks(msg)
        self.assertEqual(got.mail_from, "sender@example.org")
        self.assertEqual(got.rcpts, ["rcpt@example.com"])
        self.assertUnchanged(got, hdrs, body)

    def test_2_several_messages_one_session(self):
        sent = []
        for i in range(4):
            sent.append(make_message("session msg %d" % i, b"Message number %d.\r\n" % i + BODY,
                                     headers=[("X-Seq", str(i))]))
        results = self.pf.smtp_session(
            [("sender%d@example.org" % i, ["rcpt%d@example.com" % i], m) for i, (m, _, _) in enumerate(sent)])
        self.assertEqual(len(results), len(sent))
        for i, (res, (_, hdrs, body)) in enumerate(zip(results, sent)):
            self.assertEqual(res["mail"][0], 250, res)
            self.assertEqual([c for c, _ in res["rcpt"]], [250], res)
            self.assertEqual(res["data"][0], 250, res)
            got = self.pf.wait_delivered_id(queue_id(res["data"][1]))
            self.assertEqual(got.mail_from, "sender%d@example.org" % i)
            self.assertEqual(got.rcpts, ["rcpt%d@example.com" % i])
            self.assertUnchanged(got, hdrs, body)

    def test_3_large_body_300k(self):
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-%05d\r\n"
        body = b"".join(line % i for i in range(300 * 1024 // len(line % 0) + 1))
        self.assertGreater(len(body), 300 * 1024)
        msg, hdrs, body = make_message("large body", body)
        got = self.send_swaks(msg)
        self.assertEqual(len(got.body), len(lf(body)))
        self.assertUnchanged(got, hdrs, body)

    def test_4_folded_header(self):
        folded = ("X-Folded", "first part of the value\n\tsecond line after a tab\n    third line after spaces")
        msg, hdrs, body = make_message("folded header", BODY, headers=[folded, ("X-After", "after the folded one")])
        got = self.send_swaks(msg)
        self.assertEqual(got.header("X-Folded"), folded[1])
        self.assertUnchanged(got, hdrs, body)

    def test_5_several_recipients(self):
        rcpts = ["a@example.com", "b@example.com", "c@example.net", "d@sub.example.org", "e@example.com"]
        msg, hdrs, body = make_message("several recipients", BODY)
        got = self.send_swaks(msg, to=rcpts)
        self.assertEqual(sorted(got.rcpts), sorted(rcpts))
        self.assertUnchanged(got, hdrs, body)

    def test_6_port_probes_are_harmless(self):
        # a bare SMTP probe: Postfix still opens a milter session (OPTNEG, D C, C, QUIT)
        before = len(self.pf.maillog().splitlines())
        self.pf.probe()
        self.pf.wait_maillog(r"disconnect from .*commands=0/0", count=1 + sum(
            1 for l in self.pf.maillog().splitlines()[:before] if "commands=0/0" in l))
        # a bare probe of the gateway port itself
        with mgwtest.MilterConn(self.gw.host, self.gw.port):
            pass
        self.assertTrue(self.gw.alive(), "miltergw died after port probes:\n" + self.gw.proc.log_tail())
        msg, hdrs, body = make_message("after probes", BODY)
        got = self.send_swaks(msg)
        self.assertUnchanged(got, hdrs, body)
        self.assertTrue(self.gw.alive())

    def test_9_sigterm_clean_exit(self):
        self.pf.wait_queue_empty(30)
        warnings = [l for l in self.pf.maillog().splitlines() if "milter" in l and ("warning" in l or "error" in l)]
        self.assertEqual(warnings, [], "Postfix complained about the milter")
        self.gw.stop(expect=0)
        self.assertEqual(self.gw.error_lines(), [])


class SlowClient(unittest.TestCase):
    """A client slower than the idle timeout inside DATA: Postfix sends the milter nothing
    between DATA and the first header until the whole message has arrived."""

    def test_slow_data_is_filtered_not_timed_out(self):
        gw = mgwtest.Miltergw(args=("--idle-timeout", "1s"))
        try:
            pf = mgwtest.PrivatePostfix(gw.spec)
        except BaseException:
            gw.stop(expect=None)
            raise
        try:
            msg, hdrs, body = make_message("slow client", BODY)
            head, _, rest = msg.partition(b"\r\n\r\n")
            s = smtplib.SMTP(pf.host, pf.port, local_hostname="slow.example", timeout=30)
            try:
                s.ehlo()
                self.assertEqual(s.mail("sender@example.org")[0], 250)
                self.assertEqual(s.rcpt("rcpt@example.com")[0], 250)
                self.assertEqual(s.docmd("DATA")[0], 354)
                s.send(head + b"\r\n\r\n")
                time.sleep(2.5)  # the client is slow: this is the premise, not a wait
                s.send(rest + b"\r\n.\r\n")
                code, text = s.getreply()
                self.assertEqual(code, 250, text)
                s.quit()
            finally:
                s.close()
            got = pf.wait_delivered_id(queue_id(text.decode()))
            self.assertEqual(got.header("Subject"), "slow client")
            self.assertFalse(gw.has_log(reason="idle_timeout"), gw.proc.log_tail())
        finally:
            pf.stop()
            gw.stop(expect=None)


if __name__ == "__main__":
    mgwtest.main()
