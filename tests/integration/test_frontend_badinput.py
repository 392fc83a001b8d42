#!/usr/bin/python3
"""Hostile or broken milter input on raw TCP sockets: miltergw closes that connection,
logs `msg="session closed" reason=<cause>`, and other connections keep working.

Usage: /usr/bin/python3 test_frontend_badinput.py --miltergw PATH [unittest options]
"""
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import MilterConn, connect_frame, cstr, frame, optneg  # noqa: E402

REASONS = {"frame_empty", "frame_too_big", "unknown_command", "malformed", "out_of_order", "truncated"}
CLOSE_TIMEOUT = 10


class FrontendBadInput(unittest.TestCase):
    def setUp(self):
        self.gw = mgwtest.Miltergw()
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        self.gw.stop(expect=0)

    def conn(self):
        c = MilterConn(self.gw.host, self.gw.port, timeout=CLOSE_TIMEOUT)
        self.conns.append(c)
        return c

    def check_bad(self, reason, bad_bytes, negotiate=False, prefix=b"", half_close=False):
        """Open an idle connection and one mid-transaction, then the bad one: send
        (optional negotiation, prefix, then) bad_bytes; expect it closed and logged with
        `reason`; then the idle connection does a full session and the other finishes its
        transaction."""
        idle = self.conn()
        busy = self.conn()
        ver, act, proto, _ = busy.negotiate()
        stages = mgwtest.postfix_like_stages("BUSY000001")
        first = busy.run_stages(proto, stages[:3])  # connect, helo, mail
        mark = self.gw.log_mark()

        bad = self.conn()
        if negotiate:
            bad.negotiate()
        bad.send(prefix + bad_bytes)
        if half_close:
            bad.sock.shutdown(socket.SHUT_WR)
        bad.wait_eof(CLOSE_TIMEOUT)
        recs = self.gw.wait_log(CLOSE_TIMEOUT, since=mark, msg="session closed", reason=reason)
        self.assertEqual(len(recs), 1, recs)
        lines = [l for l in self.gw.log_lines(since=mark)
                 if 'msg="session closed"' in l and re.search(r"\breason=%s\b" % reason, l)]
        self.assertEqual(len(lines), 1, self.gw.log_lines(since=mark))
        self.assertTrue(self.gw.alive(), "miltergw died:\n" + self.gw.proc.log_tail())

        # the idle connection, opened before the bad one, now does a whole session
        self.full_session(idle)
        # the busy one finishes its transaction
        rest = busy.run_stages(proto, stages[3:])
        self.check_replies(first + rest)
        busy.send(frame("A"))
        busy.send(frame("Q"))
        busy.wait_eof(CLOSE_TIMEOUT)

    def check_replies(self, replies):
        self.assertTrue(replies, "no stage was exchanged")
        for stage, reply in replies:
            if stage == "eom":
                self.assertEqual(reply, "a", replies)
            else:
                self.assertIn(reply, ("c", None), replies)  # None: no reply (NR_* negotiated)
        self.assertEqual(replies[-1][0], "eom")

    def full_session(self, c):
        ver, act, proto, rest = c.negotiate()
        self.assertTrue(2 <= ver <= 6, ver)
        self.assertEqual(act & ~mgwtest.ALL_ACTIONS, 0, hex(act))
        self.assertEqual(proto & ~mgwtest.ALL_PROTOCOL, 0, hex(proto))
        replies = c.run_stages(proto, mgwtest.postfix_like_stages("IDLE000001"))
        self.check_replies(replies)
        c.send(frame("A") + frame("A") + frame("Q"))
        c.wait_eof(CLOSE_TIMEOUT)

    # -- the cases

    def test_truncated_frame_then_eof(self):
        # header promises 100 bytes; 11 arrive, then EOF
        self.check_bad("truncated", struct.pack("!I", 100) + b"L" + b"X-Trunc\0abc",
                       negotiate=True, half_close=True)

    def test_truncated_length_then_eof(self):
        self.check_bad("truncated", b"\x00\x00", negotiate=True, half_close=True)

    def test_frame_length_zero(self):
        self.check_bad("frame_empty", b"\x00\x00\x00\x00")

    def test_frame_length_zero_after_negotiation(self):
        self.check_bad("frame_empty", b"\x00\x00\x00\x00", negotiate=True)

    def test_frame_too_big(self):
        # only the length field and one byte: must be refused without waiting for 2 GB
        self.check_bad("frame_too_big", struct.pack("!I", 0x7FFFFFFF) + b"B")

    def test_frame_too_big_max_u32(self):
        self.check_bad("frame_too_big", b"\xff\xff\xff\xff", negotiate=True)

    def test_unknown_command(self):
        self.check_bad("unknown_command", frame("Z", b"whatever\0"), negotiate=True)

    def test_unknown_command_reply_letter(self):
        # 'c' is a reply, not a command an MTA may send
        self.check_bad("unknown_command", frame("c"), negotiate=True)

    def test_malformed_optneg(self):
        self.check_bad("malformed", frame("O", struct.pack("!I", 6)))

    def test_malformed_connect(self):
        # family '4' but neither port nor address
        self.check_bad("malformed", frame("C", cstr("[127.0.0.1]") + b"4"), negotiate=True)

    def test_rcpt_right_after_negotiation(self):
        self.check_bad("out_of_order", frame("R", cstr("<rcpt@example.com>")), negotiate=True)

    def test_connect_before_optneg(self):
        self.check_bad("out_of_order", connect_frame())

    def test_second_optneg(self):
        self.check_bad("out_of_order", optneg(), negotiate=True)

    def test_garbage_after_negotiation(self):
        # an HTTP request: "GET " read as a length is 0x47455420, far over the maximum
        self.check_bad("frame_too_big", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", negotiate=True)

    def test_bare_probe_and_immediate_close(self):
        # not an error: nothing is logged at error level and others keep working
        idle = self.conn()
        probe = self.conn()
        probe.close()
        self.full_session(idle)
        self.assertEqual(self.gw.error_lines(), [])


class UnixSocketFile(unittest.TestCase):
    """A socket file at the listen path: replaced only when nobody listens on it."""

    def setUp(self):
        self.dir = mgwtest.make_tmpdir("unixsock")
        self.path = os.path.join(self.dir, "milter.sock")

    def test_live_socket_with_a_full_backlog_is_not_removed(self):
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(self.path)
        live.listen(0)
        pending = []
        try:
            try:
                while len(pending) < 100:  # fill the backlog: the next connect gets EAGAIN
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.setblocking(False)
                    pending.append(c)
                    c.connect(self.path)
                self.fail("the backlog never filled")
            except BlockingIOError:
                pass
            # A refusal is immediate; a wrong "stale" verdict starts a gateway that runs.
            try:
                p = subprocess.run([mgwtest.MILTERGW, "--listen", "unix:" + self.path],
                                   timeout=10, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            except subprocess.TimeoutExpired:
                self.fail("miltergw started on a live socket: it removed the live one")
            self.assertNotEqual(p.returncode, 0, p.stdout)
            self.assertIn("not removing it", p.stdout)
            self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode), "the socket file is gone")
        finally:
            for c in pending:
                c.close()
            live.close()

    def test_stale_socket_is_replaced(self):
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(self.path)
        dead.close()  # the file stays and nobody listens: ECONNREFUSED
        proc = mgwtest.Proc([mgwtest.MILTERGW, "--listen", "unix:" + self.path],
                            os.path.join(self.dir, "gw.log"), name="miltergw")
        proc.start()
        try:
            mgwtest.wait_for(lambda: b"msg=listening" in proc.log_bytes(), 10, "listening")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(self.path)
            probe.close()
        finally:
            self.assertEqual(proc.stop(), 0, proc.log_tail())


if __name__ == "__main__":
    mgwtest.main()
