#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Network checks for tests/deploy/run.sh, on 127.0.0.1 only.

  milter_probe.py negotiate PORT
      one OPTNEG as Postfix sends it (version 6, actions 0x1FF, protocol 0x1FFFFF);
      the answer must be an OPTNEG ('O').
  milter_probe.py drain PORT HTTP_PORT COMMAND...
      starts a message (CONNECT HELO MAIL RCPT), runs COMMAND (e.g. `podman stop ...`)
      and checks, while COMMAND waits, that miltergw drains: it stops accepting milter
      connections, /readyz answers 503, COMMAND has not finished; then completes the
      message (DATA header EOH body EOM must still be answered, EOM with accept or
      continue) and checks that COMMAND then finishes with status 0 well within the
      drain timeout.
  probe.py http PORT PATH STATUS [SECONDS]
      GET PATH until it answers STATUS (at most SECONDS, default 30), as a kubelet probe.
  probe.py smtp PORT FROM TO MESSAGE_ID [CODE]
      sends one message over SMTP; it must be accepted (250), or with CODE refused with
      that code at the end of DATA.
Standard library only; every socket has a timeout."""
import http.client
import smtplib
import socket
import struct
import subprocess
import sys
import time

HOST = "127.0.0.1"


def frame(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def read_frame(s):
    hdr = b""
    while len(hdr) < 5:
        chunk = s.recv(5 - len(hdr))
        if not chunk:
            raise AssertionError("connection closed by miltergw")
        hdr += chunk
    n, cmd = struct.unpack(">Ic", hdr)
    data = b""
    while len(data) < n - 1:
        chunk = s.recv(n - 1 - len(data))
        if not chunk:
            raise AssertionError("connection closed inside a frame")
        data += chunk
    return cmd, data


def optneg(s, protocol):
    s.sendall(frame(b"O", struct.pack(">III", 6, 0x1FF, protocol)))
    cmd, data = read_frame(s)
    if cmd != b"O" or len(data) < 12:
        raise AssertionError("OPTNEG answered with %r %r" % (cmd, data))
    return struct.unpack(">III", data[:12])


def step(s, cmd, data, want=(b"c",)):
    """Send one command; skip modification requests; return the final reply code."""
    s.sendall(frame(cmd, data))
    while True:
        rc, _ = read_frame(s)
        if rc in want:
            return rc
        if rc not in b"+-hmiecrbqlf":  # modifications come before the final answer
            raise AssertionError("%r answered with %r, wanted one of %r" % (cmd, rc, want))


def http_status(port, path):
    c = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


def negotiate(port):
    with socket.create_connection((HOST, port), timeout=10) as s:
        version, actions, protocol = optneg(s, 0x1FFFFF)
    print("ok - OPTNEG answered: version %d actions 0x%x protocol 0x%x" % (version, actions, protocol))


def drain(port, http_port, command):
    s = socket.create_connection((HOST, port), timeout=10)
    # Protocol 0: this client supports no "no reply" flags, so every command is answered.
    optneg(s, 0)
    step(s, b"C", b"client.example\0" + b"4" + struct.pack(">H", 40000) + b"192.0.2.1\0")
    step(s, b"H", b"client.example\0")
    step(s, b"M", b"<sender@example.org>\0")
    step(s, b"R", b"<demo@example.test>\0")
    print("ok - a message is in progress; running: %s" % " ".join(command))
    t0 = time.monotonic()
    stopper = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    # SIGTERM closes the listeners: new milter connections are refused.
    deadline = t0 + 10
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            break
        if time.monotonic() > deadline:
            raise AssertionError("milter listener still accepting 10 s after the stop")
        time.sleep(0.1)
    print("ok - milter listener closed after %.1f s" % (time.monotonic() - t0))
    status = http_status(http_port, "/readyz")
    if status != 503:
        raise AssertionError("/readyz answered %d while draining, wanted 503" % status)
    print("ok - /readyz answers 503 while draining")
    time.sleep(1)
    if stopper.poll() is not None:
        raise AssertionError("the container stopped with a message still in progress")
    print("ok - still running with a message in progress")
    step(s, b"T", b"")
    step(s, b"L", b"Subject\0drain test\0")
    step(s, b"N", b"")
    step(s, b"B", b"hello\r\n")
    verdict = step(s, b"E", b"", want=(b"a", b"c"))
    print("ok - end of message answered %r during the drain" % verdict.decode())
    s.close()
    rc = stopper.wait(timeout=30)
    elapsed = time.monotonic() - t0
    if rc != 0:
        raise AssertionError("%s exited %d" % (command[0], rc))
    print("ok - stopped %.1f s after SIGTERM, once the message was done" % elapsed)


def http_wait(port, path, want, seconds):
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        try:
            status = http_status(port, path)
        except OSError as e:
            status = str(e)
        if status == want:
            print("ok - GET %s answered %d" % (path, want))
            return
        time.sleep(0.5)
    raise AssertionError("GET %s: %s after %d s, wanted %d" % (path, status, seconds, want))


def smtp(port, sender, rcpt, msgid, want=None):
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: miltergw deploy test\r\nMessage-ID: %s\r\n"
           "\r\nSent by tests/deploy/probe.py.\r\n" % (sender, rcpt, msgid))
    with smtplib.SMTP(HOST, port, timeout=30) as s:
        s.ehlo("deploy-test.example")
        try:
            refused = s.sendmail(sender, [rcpt], msg.encode())
        except smtplib.SMTPDataError as e:
            if want is not None and e.smtp_code == want:
                print("ok - SMTP refused %s at end of DATA: %d %s" % (msgid, e.smtp_code, e.smtp_error.decode()))
                return
            raise
        if refused:
            raise AssertionError("recipient refused: %r" % refused)
        if want is not None:
            raise AssertionError("accepted, wanted %d" % want)
    print("ok - SMTP accepted %s" % msgid)


def main(argv):
    if len(argv) == 3 and argv[1] == "negotiate":
        negotiate(int(argv[2]))
    elif len(argv) in (5, 6) and argv[1] == "http":
        http_wait(int(argv[2]), argv[3], int(argv[4]), int(argv[5]) if len(argv) == 6 else 30)
    elif len(argv) in (6, 7) and argv[1] == "smtp":
        smtp(int(argv[2]), argv[3], argv[4], argv[5], int(argv[6]) if len(argv) == 7 else None)
    elif len(argv) > 4 and argv[1] == "drain":
        drain(int(argv[2]), int(argv[3]), argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (AssertionError, OSError, smtplib.SMTPException, subprocess.TimeoutExpired) as e:
        sys.exit("not ok - %s" % e)
