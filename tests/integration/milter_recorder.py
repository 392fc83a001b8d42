#!/usr/bin/python3
"""milter_recorder.py - a tiny null milter that records every raw frame it receives.

Used (1) to capture what a real MTA sends, as seed corpus for the decoder fuzzer, and
(2) as a stand-in for miltergw while developing the integration harness: it takes the
same `--listen SPEC` option, logs logfmt to stderr (`msg=listening`, `msg="session
closed" reason=...`) and exits 0 on SIGTERM.

Behaviour: negotiates with 'O' version 6, actions 0, protocol 0; answers 'c' to every
command that needs a reply, 'a' to 'E', nothing to 'D', 'A', 'Q', 'K'. Every frame
received (length prefix included) is appended to --out, if given.

Standard library only. Usage:
    milter_recorder.py --listen inet:127.0.0.1:PORT [--out FILE]
"""
import argparse
import datetime
import os
import signal
import socket
import struct
import sys
import threading

MAX_FRAME = 1048576 + 5
KNOWN_CMDS = set(b"ODCHMRTLNBEUAQK")
NEED_REPLY = set(b"CHMRTLNBU")


def log(level, msg, **kv):
    ts = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    parts = ["ts=" + ts, "level=" + level, "msg=" + _fmt(msg)]
    parts += ["%s=%s" % (k, _fmt(v)) for k, v in kv.items()]
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()


def _fmt(v):
    s = str(v)
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class Recorder:
    def __init__(self, out=None):
        self.out = out
        self.lock = threading.Lock()
        self.nconn = 0

    def record(self, frame):
        if self.out is None:
            return
        with self.lock:
            with open(self.out, "ab") as f:
                f.write(frame)

    def serve_conn(self, conn, peer):
        with self.lock:
            self.nconn += 1
            cid = self.nconn
        reason = self._session(conn)
        try:
            conn.close()
        except OSError:
            pass
        log("info", "session closed", conn=cid, peer="%s:%s" % peer[:2], reason=reason)

    def _session(self, conn):
        buf = b""
        negotiated = False
        in_mail = False

        def recv_exact(n):
            nonlocal buf
            while len(buf) < n:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            data, buf = buf[:n], buf[n:]
            return data

        while True:
            try:
                hdr = recv_exact(4)
                if hdr is None:
                    return "truncated" if buf else "eof"
                (length,) = struct.unpack("!I", hdr)
                if length == 0:
                    return "frame_empty"
                if length > MAX_FRAME:
                    return "frame_too_big"
                payload = recv_exact(length)
                if payload is None:
                    return "truncated"
            except OSError as e:
                return "io_error:%s" % e.__class__.__name__
            self.record(hdr + payload)
            cmd = payload[0]
            if cmd not in KNOWN_CMDS:
                return "unknown_command"
            letter = chr(cmd)
            if not well_formed(letter, payload[1:]):
                return "malformed"
            if letter == "O":
                if negotiated:
                    return "out_of_order"
                negotiated = True
                reply = b"O" + struct.pack("!III", 6, 0, 0)
            elif not negotiated:
                return "out_of_order"
            elif letter in "DA":
                if letter == "A":
                    in_mail = False
                continue
            elif letter == "Q":
                return "quit"
            elif letter == "K":
                negotiated = False
                in_mail = False
                continue
            elif letter == "E":
                in_mail = False
                reply = b"a"
            else:
                if letter == "M":
                    in_mail = True
                elif letter in "RTLNB" and not in_mail:
                    return "out_of_order"
                reply = b"c"
            try:
                conn.sendall(struct.pack("!I", len(reply)) + reply)
            except OSError as e:
                return "io_error:%s" % e.__class__.__name__


def well_formed(letter, data):
    """Rough payload shape check (the recorder is only a stand-in for miltergw)."""
    if letter == "O":
        return len(data) == 12
    if letter == "C":
        host, nul, rest = data.partition(b"\0")
        if not nul or not rest:
            return False
        if rest[:1] == b"U":
            return True
        return len(rest) >= 4 and rest.endswith(b"\0") and rest[:1] in (b"4", b"6", b"L")
    if letter == "D":
        return len(data) == 1 or (len(data) > 1 and data.endswith(b"\0"))
    if letter in "HMRLU":
        return len(data) > 0 and data.endswith(b"\0")
    return True


def parse_listen(spec):
    if spec.startswith("inet:"):
        host, _, port = spec[5:].rpartition(":")
        return socket.AF_INET, (host or "127.0.0.1", int(port))
    if spec.startswith("inet6:"):
        host, _, port = spec[6:].rpartition(":")
        return socket.AF_INET6, (host.strip("[]"), int(port))
    if spec.startswith("unix:"):
        return socket.AF_UNIX, spec[5:]
    raise SystemExit("bad --listen spec: %r" % spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True, help="inet:HOST:PORT, inet6:[ADDR]:PORT, unix:PATH")
    ap.add_argument("--out", help="append every received raw frame to this file")
    args = ap.parse_args()

    fam, addr = parse_listen(args.listen)
    srv = socket.socket(fam, socket.SOCK_STREAM)
    if fam != socket.AF_UNIX:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(addr)
    if fam == socket.AF_UNIX:
        os.chmod(addr, 0o666)
    srv.listen(64)
    rec = Recorder(args.out)

    def on_term(signum, frame):
        log("info", "shutting down", signal=signum)
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log("info", "listening", listen=args.listen)
    while True:
        conn, peer = srv.accept()
        if fam == socket.AF_UNIX:
            peer = ("unix", "")
        threading.Thread(target=rec.serve_conn, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    main()
