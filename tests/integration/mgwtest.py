"""mgwtest.py - machinery for miltergw integration tests (stdlib only, /usr/bin/python3).

Provides:
  free_port(), port_listening(port), wait_for(pred, timeout, what)
  Proc         a child process with its output captured to a file, stopped by PID
  Miltergw     the gateway under test (`--listen inet:127.0.0.1:PORT`), logfmt log helpers
  TestFilter   the flag-driven gRPC test filter (tests/filter/mgw_test_filter), its --record
               file parsed; filter_arg() builds a `--filter NAME=TARGET,...` value
  PrivatePostfix  a throw-away Postfix instance (smtpd on a loopback port, milter configured,
               everything relayed to smtp-sink which dumps each transaction to a directory)
  milter frame helpers (frame(), optneg(), MilterConn) for raw-socket tests
  main()       entry point of every test script: `--miltergw PATH` [`--test-filter PATH`]
               [`--multiplexed`: every TestFilter declares multiplexed streams], unittest,
               exit status

Rules kept here so that tests stay short: loopback only, ports chosen at run time, no
fixed sleeps (poll with a deadline), every child stopped by PID even on failure (finally +
atexit + SIGTERM handler), temp dirs removed unless MGW_KEEP_TMP=1.
"""
import argparse
import atexit
import json
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP_TMP = os.environ.get("MGW_KEEP_TMP") == "1"
PYTHON = "/usr/bin/python3"
POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postfix"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postqueue"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:/sbin:/bin") or "smtp-sink"
SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
MILTERTEST = shutil.which("miltertest") or "/usr/bin/miltertest"

# Set by main() from --miltergw.
MILTERGW = None
# Set by main() from --test-filter (or $MGW_TEST_FILTER): the mgw_test_filter binary.
TEST_FILTER = None
# Set by main() from --multiplexed: every TestFilter declares multiplexed streams, so a
# script's tests run through the gateway's shared calls (filter_mux.h) unchanged.
MULTIPLEXED = False

# ---------------------------------------------------------------------------------------
# Cleanup registry: everything started is undone at exit, on SIGTERM/SIGHUP too.

_cleanups = []  # list of (key, fn); run in reverse order


def register_cleanup(fn):
    """Register fn() to run at exit (reverse order); returns a key for unregister_cleanup."""
    key = object()
    _cleanups.append((key, fn))
    return key


def unregister_cleanup(key):
    _cleanups[:] = [(k, f) for k, f in _cleanups if k is not key]


def _run_cleanups():
    while _cleanups:
        _, fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # keep cleaning up
            sys.stderr.write("mgwtest: cleanup failed: %r\n" % (e,))


_got_signal = None


def _on_signal(signum, frame):
    # KeyboardInterrupt (not SystemExit, which unittest would record as a test error and
    # go on) unwinds every try/finally and unittest; main() and atexit clean up the rest.
    global _got_signal
    _got_signal = signum
    raise KeyboardInterrupt("signal %d" % signum)


atexit.register(_run_cleanups)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def make_tmpdir(prefix):
    """A temp dir under /tmp, mode 0755 (user postfix must traverse it); removed at exit
    unless MGW_KEEP_TMP=1."""
    d = tempfile.mkdtemp(prefix="mgwtest-%s-" % prefix, dir="/tmp")
    os.chmod(d, 0o755)

    def rm():
        if KEEP_TMP:
            sys.stderr.write("mgwtest: keeping %s\n" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)

    register_cleanup(rm)
    return d


# ---------------------------------------------------------------------------------------
# Ports and polling


_ports_given = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A TCP port on 127.0.0.1 that is free right now, for a server the test starts later.

    Chosen at random below the kernel's ephemeral range, never from it: a port there (what
    binding port 0 gives) can be taken as the local end of any outgoing connection (a gRPC
    channel, Postfix's smtp client) between the test choosing it and the server binding it,
    and miltergw then fails with "Address already in use" (seen in CI). Ports given out in
    this process are not given twice."""
    low, high = 10000, _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200 if high - low >= 1000 else 0):
        port = rng.randrange(low, high)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room below the range
        s.bind(("127.0.0.1", 0))
        _ports_given.add(s.getsockname()[1])
        return s.getsockname()[1]


def port_listening(port, host="127.0.0.1"):
    """True if something LISTENs on host:port, checked without connecting (a connection
    to Postfix would start an SMTP session and a milter session). IPv4 sockets are in
    /proc/net/tcp; dual-stack ones (gRPC servers bind that way) in /proc/net/tcp6, where
    127.0.0.1 shows as ::ffff:127.0.0.1."""
    try:
        with open("/proc/net/tcp") as f:
            lines = f.readlines()[1:]
        try:
            with open("/proc/net/tcp6") as f:
                lines6 = f.readlines()[1:]
        except OSError:
            lines6 = []
    except OSError:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((host, port)) == 0
    v4 = struct.unpack("<I", socket.inet_aton(host))[0]
    want = {"%08X:%04X" % (v4, port), "00000000:%04X" % port}
    want6 = {"0000000000000000FFFF0000%08X:%04X" % (v4, port), "0" * 32 + ":%04X" % port}
    for ln in lines:
        f = ln.split()
        if len(f) > 3 and f[3] == "0A" and f[1] in want:
            return True
    for ln in lines6:
        f = ln.split()
        if len(f) > 3 and f[3] == "0A" and f[1] in want6:
            return True
    return False


class WaitTimeout(AssertionError):
    pass


def wait_for(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns something truthy (returned); raise WaitTimeout naming
    `what` after `timeout` seconds. `what` may be a callable giving extra detail."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise WaitTimeout("timed out after %.1fs waiting for %s" % (timeout, detail))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child process, stdout+stderr captured to log_path, stopped by its PID."""

    def __init__(self, argv, log_path, env=None, cwd=None, name=None):
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.name = name or os.path.basename(self.argv[0])
        self.p = None
        self.returncode = None
        self._key = None

    def start(self):
        logf = open(self.log_path, "ab")
        try:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        finally:
            logf.close()
        self._key = register_cleanup(self.stop)
        return self

    @property
    def pid(self):
        return self.p.pid if self.p else None

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self, timeout=10, sig=signal.SIGTERM):
        """Send sig (SIGTERM), wait up to timeout, then SIGKILL. Returns the exit code
        (negative = killed by that signal, as in subprocess)."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                sys.stderr.write("mgwtest: %s (pid %d) ignored signal %d for %ss, killing\n"
                                 % (self.name, self.p.pid, sig, timeout))
                self.p.kill()
                self.p.wait(timeout)
        self.returncode = self.p.returncode
        if self._key is not None:
            unregister_cleanup(self._key)
            self._key = None
        return self.returncode

    def wait_exit(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout("%s (pid %d) did not exit within %ss" % (self.name, self.p.pid, timeout))

    def log_bytes(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def log_text(self):
        return self.log_bytes().decode("utf-8", "replace")

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])


# ---------------------------------------------------------------------------------------
# logfmt

_LOGFMT_RE = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    """Parse one logfmt line into a dict (quoted values unescaped)."""
    rec = {}
    for k, v in _LOGFMT_RE.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), v[1:-1])
        rec[k] = v
    return rec


class Miltergw:
    """The gateway under test. spec is `inet:127.0.0.1:PORT` for Postfix; sendmail_spec is
    `inet:PORT@127.0.0.1` for miltertest. A binary ending in .py is run with /usr/bin/python3
    (so the recorder can stand in)."""

    def __init__(self, binary=None, args=(), tmpdir=None, start=True, ready_timeout=15,
                 port=None):
        self.binary = binary or MILTERGW
        if not self.binary:
            raise RuntimeError("no miltergw binary (pass --miltergw PATH)")
        self.args = list(args)
        self.tmpdir = tmpdir or make_tmpdir("gw")
        # port: a port chosen beforehand (e.g. already written into a Postfix milter map)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.listen = "inet:%s:%d" % (self.host, self.port)
        self.spec = self.listen
        self.sendmail_spec = "inet:%d@%s" % (self.port, self.host)
        self.log_path = os.path.join(self.tmpdir, "miltergw.log")
        argv = [self.binary, "--listen", self.listen] + self.args
        if self.binary.endswith(".py"):
            argv = [PYTHON] + argv
        self.proc = Proc(argv, self.log_path, name="miltergw")
        self.ready_timeout = ready_timeout
        if start:
            self.start()

    def start(self):
        self.proc.start()
        wait_for(lambda: self.has_log(msg="listening") or not self.proc.alive(),
                 self.ready_timeout, "miltergw to log msg=listening")
        if not self.proc.alive():
            raise AssertionError("miltergw exited with %s before listening; log:\n%s"
                                 % (self.proc.p.returncode, self.proc.log_tail()))
        # the log line is written after listen(); double check without connecting
        wait_for(lambda: port_listening(self.port), 5, "miltergw port %d to listen" % self.port)
        return self

    def alive(self):
        return self.proc.alive()

    def stop(self, expect=0, timeout=10):
        """SIGTERM; assert the exit code is `expect` (default 0). Returns the exit code."""
        rc = self.proc.stop(timeout=timeout)
        if expect is not None and rc != expect:
            raise AssertionError("miltergw exit code %r, expected %r; log tail:\n%s"
                                 % (rc, expect, self.proc.log_tail()))
        return rc

    # -- log helpers
    def log_text(self):
        return self.proc.log_text()

    def log_lines(self, since=0):
        return self.log_text()[since:].splitlines()

    def log_mark(self):
        """Current log size (characters); pass as since= to look only at newer lines."""
        return len(self.log_text())

    def records(self, since=0):
        return [parse_logfmt(l) for l in self.log_lines(since)]

    def find_log(self, since=0, **kv):
        """Log records whose keys equal all given values (msg="session closed", ...)."""
        return [r for r in self.records(since)
                if all(r.get(k) == str(v) for k, v in kv.items())]

    def has_log(self, since=0, **kv):
        return bool(self.find_log(since, **kv))

    def wait_log(self, timeout=10, since=0, **kv):
        """Wait for a record matching kv; returns the list of matches."""
        return wait_for(lambda: self.find_log(since, **kv), timeout,
                        lambda: "miltergw log record %r; log tail:\n%s" % (kv, self.proc.log_tail()))

    def error_lines(self):
        return [l for l in self.log_lines() if re.search(r"\blevel=error\b", l)]


# ---------------------------------------------------------------------------------------
# The gRPC test filter (tests/filter/mgw_test_filter)

_REC_ESC_RE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def unescape_record(value):
    """A --record value (bytes outside 0x21-0x7e and backslash written as \\xHH) -> bytes."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return _REC_ESC_RE.sub(lambda m: bytes([int(m.group(1), 16)]), value)


def parse_record_line(line):
    """One --record line -> dict: id (int, or None for "-"), kind, session, every other
    key=value as str (unescaped; raw bytes in "<key>_bytes"), repeated "arg" as the list
    "args", macros "m.NAME=V" in the dict "macros"."""
    parts = line.rstrip("\n").split(" ")
    rec = {"id": None if parts[0] == "-" else int(parts[0]),
           "kind": parts[1] if len(parts) > 1 else "", "args": [], "macros": {}}
    for p in parts[2:]:
        k, sep, v = p.partition("=")
        if not sep:
            continue
        raw = unescape_record(v)
        text = raw.decode("utf-8", "surrogateescape")
        if k.startswith("m."):
            rec["macros"][unescape_record(k[2:]).decode("utf-8", "surrogateescape")] = text
        elif k == "arg":
            rec["args"].append(text)
        else:
            rec[k] = text
            rec[k + "_bytes"] = raw
    return rec


class TestFilter:
    """One mgw_test_filter process: `args` are its flags (see `mgw_test_filter --help`).
    Started on construction on 127.0.0.1 with a port of its own choosing (its first stdout
    line, `port=N`); `.target` is "127.0.0.1:N" for `--filter NAME=TARGET`. With record=True
    (default) it appends one line per event to `.record_path`; records() parses them.
    stop() sends SIGTERM by PID and checks the exit code: 0, or 70 (its _exit code) when it
    was given --crash-at and so was meant to crash."""

    CRASH_EXIT = 70

    def __init__(self, args=(), binary=None, tmpdir=None, name="tf", record=True, start=True,
                 ready_timeout=10):
        self.binary = binary or TEST_FILTER
        if not self.binary:
            raise RuntimeError("no test filter binary (pass --test-filter PATH)")
        self.args = [str(a) for a in args]
        self.name = name
        self.tmpdir = tmpdir or make_tmpdir("tf")
        self.log_path = os.path.join(self.tmpdir, "filter-%s.log" % name)
        self.record_path = os.path.join(self.tmpdir, "filter-%s.rec" % name) if record else None
        argv = [self.binary] + self.args
        if MULTIPLEXED:
            argv.append("--multiplexed")
        if self.record_path:
            argv += ["--record", self.record_path]
        self.proc = Proc(argv, self.log_path, name="mgw_test_filter[%s]" % name)
        self.meant_to_crash = "--crash-at" in self.args
        self.ready_timeout = ready_timeout
        self.port = None
        self.target = None
        if start:
            self.start()

    def start(self):
        self.proc.start()
        rx = re.compile(r"^port=(\d+)$", re.M)

        def port_line():
            m = rx.search(self.proc.log_text())
            return m or not self.proc.alive()
        m = wait_for(port_line, self.ready_timeout,
                     lambda: "test filter %s to print port=N; output:\n%s" % (self.name, self.proc.log_tail()))
        if m is True or not hasattr(m, "group"):
            raise AssertionError("test filter %s exited with %s before listening; output:\n%s"
                                 % (self.name, self.proc.p.returncode, self.proc.log_tail()))
        self.port = int(m.group(1))
        self.target = "127.0.0.1:%d" % self.port
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.alive()

    def stop(self, expect="auto", timeout=10):
        """SIGTERM by PID (a no-op if it already exited); check the exit code against
        `expect`: "auto" = 70 if it was given --crash-at, else 0; None = no check."""
        rc = self.proc.stop(timeout=timeout)
        if expect == "auto":
            expect = self.CRASH_EXIT if self.meant_to_crash else 0
        if expect is not None and rc != expect:
            raise AssertionError("test filter %s exit code %r, expected %r; output:\n%s"
                                 % (self.name, rc, expect, self.proc.log_tail()))
        return rc

    def wait_exit(self, timeout):
        return self.proc.wait_exit(timeout)

    def log_text(self):
        return self.proc.log_text()

    def records(self):
        """Every --record line so far, parsed (parse_record_line)."""
        if not self.record_path:
            raise RuntimeError("test filter %s runs without --record" % self.name)
        try:
            with open(self.record_path, "rb") as f:
                data = f.read().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return []
        # each line is one write(2): a line without its "\n" is not there yet
        return [parse_record_line(l) for l in data.split("\n")[:-1] if l]

    def find(self, kind=None, **kv):
        """Records of `kind` (any if None) whose fields equal every given value."""
        return [r for r in self.records()
                if (kind is None or r["kind"] == kind) and all(r.get(k) == str(v) for k, v in kv.items())]

    def wait_record(self, kind, timeout=10, count=1, **kv):
        """Wait until at least `count` records match (find()); returns them."""
        return wait_for(lambda: (lambda m: m if len(m) >= count else None)(self.find(kind, **kv)),
                        timeout, lambda: "%d x %s record %r from test filter %s; records:\n%s"
                        % (count, kind, kv, self.name, self.record_text()[-3000:]))

    def record_text(self):
        try:
            with open(self.record_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (FileNotFoundError, TypeError):
            return ""

    def sessions(self):
        """{session id: [records in order]} for every stream seen (start records name it)."""
        out = {}
        for r in self.records():
            if r.get("session", "-") != "-":
                out.setdefault(r["session"], []).append(r)
        return out


def filter_arg(name, target, **opts):
    """The value of one `--filter`: NAME=TARGET[,key=value...]. target may be a TestFilter.
    Keys: on_error, timeout, eom_timeout, mode, content, max_queue, max_message."""
    if isinstance(target, TestFilter):
        target = target.target
    return ",".join(["%s=%s" % (name, target)] + ["%s=%s" % kv for kv in opts.items()])


# ---------------------------------------------------------------------------------------
# Private Postfix + smtp-sink

_MASTER_CF = """\
# private test instance: no chroot, smtpd on a loopback port only
{smtpd_addr} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class IncompleteDump(ValueError):
    pass


class SinkMessage:
    """One transaction dumped by smtp-sink -d."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.raw = f.read()
        self.mail_from = None
        self.mail_args = None
        self.rcpts = []
        self.helo = None
        self.sink_headers = []  # smtp-sink's own records (X-Client-Addr ... its Received)
        self.headers = []  # [(name, value)] as delivered; value keeps folding ("\n\t...")
        self.body = b""  # LF line ends (smtp-sink drops every CR), dot-unstuffed
        self._parse()

    def _parse(self):
        lines = self.raw.split(b"\n")
        # the dump ends with an empty line after the message: "...last\n" + "\n"
        if not self.raw.endswith(b"\n"):
            raise IncompleteDump("%s: incomplete dump" % self.path)
        hdrs = []  # (name, value) raw
        i = 0
        while i < len(lines) and lines[i] != b"":
            ln = lines[i]
            if ln[:1] in (b" ", b"\t") and hdrs:
                n, v = hdrs[-1]
                hdrs[-1] = (n, v + "\n" + ln.decode("utf-8", "surrogateescape"))
            else:
                n, _, v = ln.decode("utf-8", "surrogateescape").partition(":")
                hdrs.append((n, v[1:] if v.startswith(" ") else v))
            i += 1
        body = b"\n".join(lines[i + 1:])
        # strip the empty line smtp-sink appends (the "\n" of the final ".\r\n")
        self.body = body[:-1] if body.endswith(b"\n") else body
        # split smtp-sink's records from the message headers: they end with its Received
        k = 0
        while k < len(hdrs) and hdrs[k][0].startswith("X-") and hdrs[k][0] in (
                "X-Client-Addr", "X-Client-Proto", "X-Helo-Args", "X-Mail-Args", "X-Rcpt-Args"):
            k += 1
        if k < len(hdrs) and hdrs[k][0] == "Received" and "(smtp-sink)" in hdrs[k][1]:
            k += 1
        self.sink_headers, self.headers = hdrs[:k], hdrs[k:]
        for n, v in self.sink_headers:
            if n == "X-Mail-Args":
                self.mail_args = v
                self.mail_from = _angle(v)
            elif n == "X-Rcpt-Args":
                self.rcpts.append(_angle(v))
            elif n == "X-Helo-Args":
                self.helo = v

    def header(self, name):
        """First value of header `name` (case-insensitive) or None."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_names(self):
        return [n for n, _ in self.headers]

    def __repr__(self):
        return "<SinkMessage %s from=%s rcpts=%s %d headers %d body bytes>" % (
            os.path.basename(self.path), self.mail_from, self.rcpts, len(self.headers), len(self.body))


def _angle(s):
    m = re.match(r"\s*<([^>]*)>", s)
    return m.group(1) if m else s.split()[0] if s.split() else ""


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port (not `avoid`), dumping every
    transaction to DIR/msg.* (read with SinkMessage). Shared by the private MTAs."""

    def __init__(self, base, host="127.0.0.1", avoid=()):
        self.dir = os.path.join(base, "sink")
        self.log_path = os.path.join(base, "smtp-sink.log")
        self.host = host
        self.port = free_port()
        while self.port in avoid:
            self.port = free_port()
        self.proc = None

    def start(self):
        os.makedirs(self.dir, mode=0o755)
        argv = [SMTP_SINK, "-4"]
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postfix")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            argv += ["-u", "postfix"]
        argv += ["-d", os.path.join(self.dir, "msg."), "%s:%d" % (self.host, self.port), "128"]
        self.proc = Proc(argv, self.log_path, name="smtp-sink").start()
        wait_for(lambda: port_listening(self.port) or not self.proc.alive(), 10,
                 "smtp-sink to listen on %d" % self.port)
        if not self.proc.alive():
            raise AssertionError("smtp-sink died: %s" % self.proc.log_text())
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()

    def files(self):
        """Dump paths, oldest first."""
        try:
            names = [n for n in os.listdir(self.dir) if n.startswith("msg.")]
        except FileNotFoundError:
            return []
        paths = [os.path.join(self.dir, n) for n in names]
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime_ns, p))

    def delivered(self):
        """Every complete dump. A dump smtp-sink is still writing (another message in
        flight) is not delivered yet and is left out."""
        out = []
        for p in self.files():
            try:
                out.append(SinkMessage(p))
            except IncompleteDump:
                pass
        return out

    def with_queue_id(self, qid):
        """The dumps whose Received header names MTA queue id `qid` ("id QID")."""
        rx = re.compile(r"\bid %s\b" % re.escape(qid))
        return [m for m in self.delivered() if any(n == "Received" and rx.search(v) for n, v in m.headers)]


class PrivatePostfix:
    """A private Postfix: smtpd on 127.0.0.1:<free port> with `smtpd_milters = milter_spec`,
    relaying everything to smtp-sink on another free port, which dumps each transaction
    into self.sink_dir. Start on construction; stop() (also at exit) stops both."""

    def __init__(self, milter_spec, default_action="tempfail", extra_main_cf=None, start=True,
                 start_timeout=30):
        self.milter_spec = milter_spec
        self.default_action = default_action
        self.extra_main_cf = dict(extra_main_cf or {})
        self.base = make_tmpdir("pf")
        self.config_dir = os.path.join(self.base, "etc")
        self.queue_dir = os.path.join(self.base, "spool")
        self.data_dir = os.path.join(self.base, "data")
        self.maillog_path = os.path.join(self.base, "maillog")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.sink = SmtpSink(self.base, self.host, avoid=(self.port,))
        self.sink_dir, self.sink_port = self.sink.dir, self.sink.port
        self.started = False
        self.start_timeout = start_timeout
        self._key = None
        if start:
            self.start()

    # -- configuration
    def main_cf(self):
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "meta_directory": self.config_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mgwtest.localdomain",
            "mydomain": "localdomain",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": "[127.0.0.1]:%d" % self.sink_port,
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": "/tmp",
            "smtpd_milters": self.milter_spec,
            "milter_protocol": "6",
            "milter_default_action": self.default_action,
            "smtpd_peername_lookup": "no",
            "in_flow_delay": "0",
            "biff": "no",
            "message_size_limit": "52428800",
            "smtputf8_enable": "no",
            # retry quickly if the sink hiccups; no bounces to nowhere for ages
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0",
        }
        cf.update(self.extra_main_cf)
        return "".join("%s = %s\n" % kv for kv in cf.items())

    def _write_config(self):
        os.makedirs(self.config_dir, mode=0o755)
        for d in (self.queue_dir, self.data_dir):
            os.makedirs(d, mode=0o755)
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(self.main_cf())
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(_MASTER_CF.format(smtpd_addr="%s:%d" % (self.host, self.port)))
        # meta files postfix(1) and post-install want next to main.cf
        for name in ("dynamicmaps.cf", "postfix-files"):
            src = os.path.join("/etc/postfix", name)
            if os.path.exists(src):
                shutil.copy(src, self.config_dir)
        for name in ("dynamicmaps.cf.d", "postfix-files.d"):
            os.makedirs(os.path.join(self.config_dir, name), mode=0o755, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postfix")
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)

    def postfix_cmd(self, *args, check=True, timeout=60):
        r = subprocess.run([POSTFIX, "-c", self.config_dir] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out = r.stdout.decode("utf-8", "replace")
        if check and r.returncode != 0:
            raise AssertionError("postfix %s failed (%d):\n%s\nmaillog:\n%s"
                                 % (" ".join(args), r.returncode, out, self.maillog()[-3000:]))
        return r.returncode, out

    # -- lifecycle
    def start(self):
        self._write_config()
        self._key = register_cleanup(self.stop)
        self.sink.start()
        self.postfix_cmd("start")
        self.started = True
        wait_for(lambda: port_listening(self.port), self.start_timeout,
                 lambda: "postfix smtpd to listen on %d; maillog:\n%s" % (self.port, self.maillog()[-3000:]))
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        try:
            if self.started:
                pid = self.master_pid()
                self.postfix_cmd("stop", check=False)
                if pid:
                    try:
                        wait_for(lambda: not _pid_alive(pid), 15, "postfix master %d to exit" % pid)
                    except WaitTimeout:
                        _kill_pid(pid)
                # any daemon of this instance still around (e.g. master was killed)
                for p in _pids_with_env("MAIL_CONFIG", self.config_dir):
                    _kill_pid(p)
                self.started = False
        finally:
            self.sink.stop()
            if self._key is not None:
                unregister_cleanup(self._key)
                self._key = None

    # -- sending
    def swaks(self, to="rcpt@example.com", from_="sender@example.org", data=None, extra=(),
              timeout=60):
        """Send one message with swaks. `to` may be a list. `data` (bytes/str: whole message,
        headers + body) is passed via a file. Returns (exit status, transcript)."""
        if not isinstance(to, str):
            to = ",".join(to)
        argv = [SWAKS, "--server", self.host, "--port", str(self.port), "--from", from_,
                "--to", to, "--helo", "client.example", "--timeout", "30"]
        if data is not None:
            if isinstance(data, str):
                data = data.encode()
            # swaks always sends CRLF "." CRLF after the data: drop one final line end so
            # the message arrives exactly as given
            if data.endswith(b"\r\n"):
                data = data[:-2]
            elif data.endswith(b"\n"):
                data = data[:-1]
            path = os.path.join(self.base, "swaks-data-%d.eml" % time.monotonic_ns())
            with open(path, "wb") as f:
                f.write(data)
            argv += ["--data", "@" + path]
        argv += list(extra)
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def smtp_session(self, messages, helo="client.example", timeout=60):
        """Send several messages in ONE SMTP session. messages: list of
        (mail_from, [rcpts], message bytes). Returns a list of dicts per message:
        {'mail': (code, text), 'rcpt': [(code, text)...], 'data': (code, text) or None}."""
        results = []
        with smtplib.SMTP(self.host, self.port, local_hostname=helo, timeout=timeout) as s:
            s.ehlo()
            for mail_from, rcpts, msg in messages:
                res = {"mail": None, "rcpt": [], "data": None}
                res["mail"] = _resp(s.mail(mail_from))
                if res["mail"][0] == 250:
                    for r in rcpts:
                        res["rcpt"].append(_resp(s.rcpt(r)))
                    if any(c == 250 for c, _ in res["rcpt"]):
                        if isinstance(msg, str):
                            msg = msg.encode()
                        res["data"] = _resp(s.data(msg))
                    else:
                        s.rset()
                else:
                    s.rset()
                results.append(res)
        return results

    def probe(self):
        """Connect to the SMTP port and close without a command (a bare port probe)."""
        with socket.create_connection((self.host, self.port), timeout=10):
            pass

    # -- results
    def sink_files(self):
        return self.sink.files()

    def sent_count(self):
        return len(re.findall(r" status=sent ", self.maillog()))

    def wait_delivered(self, n, timeout=60):
        """Wait until at least n messages reached the sink (Postfix logged status=sent,
        which happens after smtp-sink closed the dump) and return them as SinkMessages,
        oldest first."""
        wait_for(lambda: self.sent_count() >= n and len(self.sink_files()) >= n, timeout,
                 lambda: "%d delivered messages (sent=%d, dumps=%d); maillog tail:\n%s"
                 % (n, self.sent_count(), len(self.sink_files()), self.maillog()[-3000:]))
        return self.delivered()

    def wait_delivered_id(self, queue_id, timeout=60):
        """Wait until Postfix finished queue file `queue_id` (logged `removed`), check that
        it was sent (not bounced/deferred) and return the smtp-sink dump of it (found by the
        `id QUEUE_ID` of Postfix's Received header)."""
        self.wait_maillog(r" %s: removed$" % re.escape(queue_id), timeout)
        lines = [l for l in self.maillog().splitlines() if " %s: to=<" % queue_id in l]
        bad = [l for l in lines if " status=sent " not in l]
        if bad or not lines:
            raise AssertionError("queue id %s not (only) sent:\n%s" % (queue_id, "\n".join(lines)))
        found = self.sink.with_queue_id(queue_id)
        if len(found) != 1:
            raise AssertionError("expected one sink dump for %s, found %d" % (queue_id, len(found)))
        return found[0]

    def delivered(self):
        """Every complete dump (SmtpSink.delivered())."""
        return self.sink.delivered()

    def queue(self):
        """Queue entries as dicts (postqueue -j): queue_name, queue_id, sender, recipients..."""
        r = subprocess.run([POSTQUEUE, "-c", self.config_dir, "-j"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if r.returncode != 0:
            raise AssertionError("postqueue -j failed: %s" % r.stderr.decode("utf-8", "replace"))
        return [json.loads(l) for l in r.stdout.decode().splitlines() if l.strip()]

    def hold_queue(self):
        return [e for e in self.queue() if e.get("queue_name") == "hold"]

    def wait_queue_empty(self, timeout=60, ignore_hold=False):
        def empty():
            q = self.queue()
            if ignore_hold:
                q = [e for e in q if e.get("queue_name") != "hold"]
            return not q
        wait_for(empty, timeout, lambda: "empty queue; queue: %r" % (self.queue(),))

    def maillog(self):
        try:
            with open(self.maillog_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_maillog(self, pattern, timeout=30, count=1):
        """Wait until regex `pattern` matches at least `count` maillog lines; returns them."""
        rx = re.compile(pattern)

        def found():
            m = [l for l in self.maillog().splitlines() if rx.search(l)]
            return m if len(m) >= count else None
        return wait_for(found, timeout, lambda: "maillog /%s/ x%d; tail:\n%s" % (pattern, count, self.maillog()[-3000:]))


def queue_id(text):
    """The queue id from an SMTP reply or a swaks transcript ("queued as 3F2A1C0D1E")."""
    m = re.findall(r"queued as ([0-9A-Za-z]+)", text)
    if not m:
        raise AssertionError("no 'queued as' in: %s" % text[-2000:])
    return m[-1]


def _resp(r):
    code, text = r
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is not alive
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_pid(pid):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            wait_for(lambda: not _pid_alive(pid), 5, "pid %d to exit" % pid)
            return
        except WaitTimeout:
            continue


def _pids_with_env(name, value):
    """PIDs whose environment holds name=value exactly (daemons of one Postfix instance)."""
    want = ("%s=%s" % (name, value)).encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                if want in f.read().split(b"\0"):
                    pids.append(int(d))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


# ---------------------------------------------------------------------------------------
# Messages


def make_message(subject, body=b"Hello.\r\n", headers=(), msgid=True):
    """A message (bytes, CRLF) with From/To/Subject/Date/Message-ID + extra headers.
    Returns (message bytes, [(name, value)] headers as written, body bytes)."""
    hdrs = [("From", "Sender <sender@example.org>"), ("To", "rcpt@example.com"),
            ("Subject", subject), ("Date", "Mon, 23 Nov 2026 22:50:00 +0000")]
    if msgid:
        hdrs.append(("Message-ID", "<%s.%d@mgwtest.example>" % (re.sub(r"\W", "", subject), time.monotonic_ns())))
    hdrs += list(headers)
    head = b"".join(("%s: %s\r\n" % (n, v.replace("\n", "\r\n"))).encode() for n, v in hdrs)
    if isinstance(body, str):
        body = body.encode()
    return head + b"\r\n" + body, hdrs, body


def lf(b):
    """CRLF -> LF, what smtp-sink writes."""
    return b.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------------------------------
# Raw milter frames

SMFI_VERSION = 6
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF


def frame(cmd, data=b""):
    """One milter frame: u32 length (cmd + data), cmd byte, data."""
    if isinstance(cmd, str):
        cmd = cmd.encode()
    return struct.pack("!I", len(cmd) + len(data)) + cmd + data


def optneg(version=SMFI_VERSION, actions=ALL_ACTIONS, protocol=ALL_PROTOCOL):
    return frame("O", struct.pack("!III", version, actions, protocol))


def macro(stage, pairs):
    return frame("D", stage.encode() + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs))


def cstr(*parts):
    return b"".join((p.encode() if isinstance(p, str) else p) + b"\0" for p in parts)


def connect_frame(host="[127.0.0.1]", addr="127.0.0.1", port=40000):
    return frame("C", cstr(host) + b"4" + struct.pack("!H", port) + cstr(addr))


# Protocol bits (SMFIP_*) used to follow what the milter negotiated.
SMFIP = {
    "NOCONNECT": 0x1, "NOHELO": 0x2, "NOMAIL": 0x4, "NORCPT": 0x8, "NOBODY": 0x10,
    "NOHDRS": 0x20, "NOEOH": 0x40, "NR_HDR": 0x80, "NOUNKNOWN": 0x100, "NODATA": 0x200,
    "SKIP": 0x400, "RCPT_REJ": 0x800, "NR_CONN": 0x1000, "NR_HELO": 0x2000,
    "NR_MAIL": 0x4000, "NR_RCPT": 0x8000, "NR_DATA": 0x10000, "NR_UNKN": 0x20000,
    "NR_EOH": 0x40000, "NR_BODY": 0x80000, "HDR_LEADSPC": 0x100000,
}

# One Postfix-like transaction: (stage name, macro stage letter or None, frame, NO bit, NR bit)
def postfix_like_stages(queue_id="4ABC123DEF"):
    return [
        ("connect", "C", [("j", "mx.example"), ("{daemon_name}", "mx.example"),
                          ("{daemon_addr}", "127.0.0.1"), ("v", "Postfix 3.7.11"),
                          ("_", "unknown [127.0.0.1]")],
         connect_frame(), SMFIP["NOCONNECT"], SMFIP["NR_CONN"]),
        ("helo", "H", [], frame("H", cstr("client.example")), SMFIP["NOHELO"], SMFIP["NR_HELO"]),
        ("mail", "M", [("{mail_addr}", "sender@example.org")],
         frame("M", cstr("<sender@example.org>", "BODY=8BITMIME")), SMFIP["NOMAIL"], SMFIP["NR_MAIL"]),
        ("rcpt", "R", [("{rcpt_addr}", "rcpt@example.com")],
         frame("R", cstr("<rcpt@example.com>")), SMFIP["NORCPT"], SMFIP["NR_RCPT"]),
        ("data", "T", [("i", queue_id)], frame("T"), SMFIP["NODATA"], SMFIP["NR_DATA"]),
        ("header", "L", [("i", queue_id)], frame("L", cstr("Subject", "raw frame test")),
         SMFIP["NOHDRS"], SMFIP["NR_HDR"]),
        ("header", "L", [("i", queue_id)], frame("L", cstr("X-Folded", "one\n\ttwo")),
         SMFIP["NOHDRS"], SMFIP["NR_HDR"]),
        ("eoh", "N", [("i", queue_id)], frame("N"), SMFIP["NOEOH"], SMFIP["NR_EOH"]),
        ("body", "B", [("i", queue_id)], frame("B", b"Hello.\r\n.dot line\r\n"),
         SMFIP["NOBODY"], SMFIP["NR_BODY"]),
        ("eom", "E", [("i", queue_id)], frame("E"), 0, 0),
    ]


class MilterConn:
    """A raw milter client connection (the MTA side) for frame-level tests."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout("no data from milter within %ss" % self.timeout)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise WaitTimeout("no data from milter within %ss" % self.timeout)
        if not chunk:
            raise EOFError("milter closed the connection")
        self.buf += chunk

    def read_frame(self, timeout=None):
        """Returns (cmd letter, data bytes)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < 4:
            self._fill(deadline)
        (n,) = struct.unpack("!I", self.buf[:4])
        if n == 0 or n > 64 * 1024 * 1024:
            raise AssertionError("bad reply frame length %d" % n)
        while len(self.buf) < 4 + n:
            self._fill(deadline)
        fr, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return chr(fr[0]), fr[1:]

    def command(self, data, timeout=None):
        """Send data and read one reply frame."""
        self.send(data)
        return self.read_frame(timeout)

    def negotiate(self, version=SMFI_VERSION, actions=ALL_ACTIONS, protocol=ALL_PROTOCOL):
        cmd, data = self.command(optneg(version, actions, protocol))
        if cmd != "O" or len(data) < 12:
            raise AssertionError("bad negotiation reply %r %r" % (cmd, data))
        return struct.unpack("!III", data[:12]) + (data[12:],)

    def read_reply(self, timeout=None):
        """Next reply frame, skipping PROGRESS ('p') keepalives."""
        while True:
            cmd, data = self.read_frame(timeout)
            if cmd != "p":
                return cmd, data

    def run_stages(self, protocol, stages):
        """Send stages (from postfix_like_stages()), each preceded by its macros, honouring
        the negotiated protocol bits: a stage with its NO bit is not sent, one with its NR
        bit gets no reply. Returns [(stage, reply letter or None)]."""
        out = []
        for name, mstage, macros, fr, nobit, nrbit in stages:
            if mstage:
                self.send(macro(mstage, macros))
            if protocol & nobit:
                continue
            self.send(fr)
            if protocol & nrbit:
                out.append((name, None))
                continue
            cmd, _ = self.read_reply()
            out.append((name, cmd))
        return out

    def wait_eof(self, timeout=10):
        """Read until the peer closes; returns the bytes received meanwhile. Raises
        WaitTimeout if it stays open."""
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout("milter did not close the connection within %ss" % timeout)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# ---------------------------------------------------------------------------------------
# Entry point


def main(argv=None):
    """Parse --miltergw PATH (and unittest options), run the tests of __main__, exit."""
    global MILTERGW, TEST_FILTER, MULTIPLEXED
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--miltergw", default=os.environ.get("MILTERGW"),
                    help="path of the miltergw binary (or milter_recorder.py)")
    ap.add_argument("--test-filter", default=os.environ.get("MGW_TEST_FILTER"),
                    help="path of the mgw_test_filter binary (tests that use TestFilter)")
    ap.add_argument("--multiplexed", action="store_true",
                    help="every TestFilter declares multiplexed streams")
    args, rest = ap.parse_known_args(argv if argv is not None else sys.argv[1:])
    MULTIPLEXED = args.multiplexed
    if args.test_filter:
        TEST_FILTER = os.path.abspath(args.test_filter)
    if not args.miltergw:
        sys.stderr.write("usage: %s --miltergw PATH [unittest options]\n" % sys.argv[0])
        sys.exit(2)
    MILTERGW = os.path.abspath(args.miltergw)
    if not os.access(MILTERGW, os.X_OK) and not MILTERGW.endswith(".py"):
        sys.stderr.write("miltergw binary not executable: %s\n" % MILTERGW)
        sys.exit(2)
    try:
        prog = unittest.main(module="__main__", argv=[sys.argv[0], "-v"] + rest, exit=False)
        ok = prog.result.wasSuccessful()
    except KeyboardInterrupt:
        sys.stderr.write("mgwtest: interrupted%s, cleaning up\n"
                         % (" by signal %d" % _got_signal if _got_signal else ""))
        _run_cleanups()
        sys.exit(128 + (_got_signal or signal.SIGINT))
    _run_cleanups()
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------
# Operations: miltergw run from a YAML file, its HTTP endpoints, metrics, TLS material


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if re.match(r"^[A-Za-z0-9_./-]+$", s) and s.lower() not in ("true", "false", "yes", "no", "null", "on", "off", "~"):
        return s
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar


def yaml_dump(obj, indent=0):
    """Block-style YAML for dicts, lists and scalars (one key a line, so a file:line in a
    config error points somewhere useful). Strings that need it are double-quoted."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append("%s%s:" % (pad, k))
                lines.append(yaml_dump(v, indent + 1))
            elif isinstance(v, dict):
                lines.append("%s%s: {}" % (pad, k))
            elif isinstance(v, list):
                lines.append("%s%s: []" % (pad, k))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = yaml_dump(item, indent + 1).split("\n")
                sub[0] = pad + "- " + sub[0][len(pad) + 2:]
                lines.extend(sub)
            else:
                lines.append("%s- %s" % (pad, _yaml_scalar(item) if not isinstance(item, (dict, list))
                                         else ("{}" if isinstance(item, dict) else "[]")))
    else:
        lines.append(pad + _yaml_scalar(obj))
    return "\n".join(lines)


def write_file(path, text, mode=0o644):
    """Write text atomically (temp file + rename in the same directory), so a process
    reading it (a SIGHUP reload) never sees half of it."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def http_get(host, port, path, timeout=5):
    """GET http://host:port/path -> (status, body text). No proxies, no redirects."""
    import http.client
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


_PROM_RE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$')
_PROM_LABEL_RE = re.compile(r'([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Prometheus text format -> {(name, ((label, value), ...) sorted): float}."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = _PROM_RE.match(ln)
        if not m:
            raise AssertionError("unparsable metrics line: %r" % ln)
        labels = tuple(sorted((k, re.sub(r"\\(.)", r"\1", v)) for k, v in _PROM_LABEL_RE.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class MiltergwFile(Miltergw):
    """miltergw run as `miltergw -c CONFIG [args]`: listeners, HTTP and filters come from
    the file (written by the test, e.g. with yaml_dump()). `port` is the milter port the
    file's `listen` uses (for port_listening), or None. Started on construction: waits for
    msg=started (the milter listeners are open). If the file has an http.listen (port 0
    is fine), .http_port is the real port from the `msg=listening listen=http:H:P` line."""

    def __init__(self, config_path, binary=None, args=(), tmpdir=None, start=True,
                 ready_timeout=15, port=None):
        self.binary = binary or MILTERGW
        if not self.binary:
            raise RuntimeError("no miltergw binary (pass --miltergw PATH)")
        self.config_path = config_path
        self.args = list(args)
        self.tmpdir = tmpdir or make_tmpdir("gw")
        self.port = port
        self.host = "127.0.0.1"
        self.listen = "inet:%s:%d" % (self.host, port) if port else None
        self.spec = self.listen
        self.log_path = os.path.join(self.tmpdir, "miltergw-%d.log" % time.monotonic_ns())
        self.proc = Proc([self.binary, "-c", config_path] + self.args, self.log_path, name="miltergw")
        self.ready_timeout = ready_timeout
        self.http_host = None
        self.http_port = None
        if start:
            self.start()

    def start(self):
        self.proc.start()
        wait_for(lambda: self.has_log(msg="started") or not self.proc.alive(),
                 self.ready_timeout, lambda: "miltergw to log msg=started; log:\n%s" % self.proc.log_tail())
        if not self.proc.alive():
            raise AssertionError("miltergw exited with %s before starting; log:\n%s"
                                 % (self.proc.p.returncode, self.proc.log_tail()))
        for r in self.find_log(msg="listening"):
            m = re.match(r"^http:(.*):(\d+)$", r.get("listen", ""))
            if m:
                self.http_host, self.http_port = m.group(1).strip("[]"), int(m.group(2))
        if self.port:
            wait_for(lambda: port_listening(self.port), 5, "miltergw port %d to listen" % self.port)
        return self

    def signal(self, sig):
        self.proc.p.send_signal(sig)

    def reload(self, timeout=10):
        """SIGHUP and wait for `configuration reloaded` or `reload failed` after it; returns
        that log record."""
        mark = self.log_mark()
        self.signal(signal.SIGHUP)
        return wait_for(lambda: [r for r in self.records(mark)
                                 if r.get("msg") in ("configuration reloaded",
                                                     "reload failed, keeping the running configuration")],
                        timeout, lambda: "reload result in the log; tail:\n%s" % self.proc.log_tail())[0]

    def http(self, path, timeout=5):
        if self.http_port is None:
            raise AssertionError("miltergw has no HTTP listener")
        return http_get(self.http_host, self.http_port, path, timeout)

    def metrics(self):
        status, body = self.http("/metrics")
        if status != 200:
            raise AssertionError("/metrics answered %d: %s" % (status, body))
        return parse_prometheus(body)

    def metric(self, name, metrics=None, **labels):
        """The value of one series (None if absent); metrics: a parse to reuse."""
        m = self.metrics() if metrics is None else metrics
        return m.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def make_tls_files(d, server_name="filter.test"):
    """A test PKI under directory d, made with openssl: ca.pem/ca.key, server.pem/server.key
    (CN and SAN DNS:server_name, serverAuth, signed by ca), client.pem/client.key (clientAuth,
    signed by ca) and other-ca.pem/other-ca.key (an unrelated CA). EC P-256, valid 2 days.
    Returns {name: path}."""
    def run(*argv):
        r = subprocess.run(["openssl"] + list(argv), cwd=d, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise AssertionError("openssl %s failed:\n%s" % (" ".join(argv), r.stdout.decode("utf-8", "replace")))

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2",
            "-subj", "/CN=mgwtest %s" % ca, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    exts = {
        "server": "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                  "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s\n" % server_name,
        "client": "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                  "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:gateway.test\n",
    }
    for name, ext in exts.items():
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext)
        cn = server_name if name == "server" else "gateway.test"
        run("req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem")
    files = {}
    for name in ("ca", "other-ca", "server", "client"):
        for ext in ("pem", "key"):
            p = os.path.join(d, "%s.%s" % (name, ext))
            os.chmod(p, 0o644)
            files["%s.%s" % (name, ext)] = p
    return files


def postfix_with_milter_per_test(test_classes, tmpdir, first_octet, qualify=False):
    """One private Postfix for a test class (or a list of them) in which every test method
    gets its own miltergw: test i sends from client address 127.0.0.(first_octet + i), and
    Postfix picks the milter by client address (a cidr smtpd_milter_maps) at a gateway
    port reserved here. Returns (postfix, {test: (client address, gateway port)}), a test
    named by its method, or with `qualify` by "Class.method"."""
    if isinstance(test_classes, type):
        test_classes = [test_classes]
    names = [("%s.%s" % (c.__name__, n)) if qualify else n
             for c in sorted(test_classes, key=lambda c: c.__name__)
             for n in unittest.TestLoader().getTestCaseNames(c)]
    slots, used = {}, set()
    for i, name in enumerate(names):
        port = free_port()
        while port in used:
            port = free_port()
        used.add(port)
        slots[name] = ("127.0.0.%d" % (first_octet + i), port)
    map_path = os.path.join(tmpdir, "milter_map.cidr")
    with open(map_path, "w") as f:
        for ip, port in slots.values():
            f.write("%s inet:127.0.0.1:%d\n" % (ip, port))
    os.chmod(map_path, 0o644)
    pf = PrivatePostfix("", extra_main_cf={"smtpd_milter_maps": "cidr:" + map_path})
    return pf, slots


class GatewayProcesses:
    """unittest.TestCase mixin: one test's test filters and its miltergw (on self.gw_port,
    with GATEWAY_ARGS first), stopped by PID and checked after the test. Call
    track_processes() from setUp once self.dir exists."""

    GATEWAY_ARGS = ()

    def track_processes(self):
        self.gw = None
        self.filters = []
        self.addCleanup(lambda: stop_and_check(self.gw, self.filters, False))

    def filter(self, *args, name="a"):
        f = TestFilter(args, tmpdir=self.dir, name=name)
        self.filters.append(f)
        return f

    def mta_context(self):
        """The MTA's logs for context(); the subclass says."""
        return ""

    def context(self):
        """Logs to append to a failure message: the gateway's, each filter's, the MTA's."""
        parts = []
        if self.gw is not None:
            parts.append("miltergw log:\n" + self.gw.proc.log_tail(40))
        for f in self.filters:
            parts.append("filter %s output:\n%s\nrecords:\n%s"
                         % (f.name, f.proc.log_tail(10), f.record_text()[-2000:]))
        parts.append(self.mta_context())
        return "\n\n".join(parts)

    def gateway(self, *filter_args, extra=()):
        argv = list(self.GATEWAY_ARGS) + list(extra)
        for a in filter_args:
            argv += ["--filter", a]
        self.gw = Miltergw(args=argv, tmpdir=self.dir, port=self.gw_port)
        return self.gw


def stop_gateway_and(gw, proc, label):
    """After a test: stop its miltergw (exit 0, no level=error line) and the one process it
    filtered through (`proc`, a Proc, exit 0 on SIGTERM), by PID; either may be None.
    Raises one AssertionError naming every problem."""
    problems = []
    if gw is not None:
        try:
            gw.stop(expect=0)
        except AssertionError as e:
            problems.append(str(e))
        if gw.error_lines():
            problems.append("level=error in the miltergw log:\n" + "\n".join(gw.error_lines()))
    if proc is not None:
        rc = proc.stop()
        if rc != 0:
            problems.append("%s exit code %r on SIGTERM; output:\n%s" % (label, rc, proc.log_tail()))
    if problems:
        raise AssertionError("\n\n".join(problems))


def stop_and_check(gw, filters, gw_already_stopped=False):
    """Stop a test's gateway (expecting exit 0 on SIGTERM) and its test filters by PID,
    then fail with everything that went wrong: a bad exit code, a `level=error` line in
    the gateway's log. Meant for addCleanup()."""
    problems = []
    if gw is not None:
        if not gw_already_stopped:
            try:
                gw.stop(expect=0)
            except AssertionError as e:
                problems.append(str(e))
        errors = gw.error_lines()
        if errors:
            problems.append("level=error in the miltergw log:\n" + "\n".join(errors))
    for f in filters:
        try:
            f.stop()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        raise AssertionError("\n\n".join(problems))


def generate_python_stubs(tmp):
    """The Python stubs of filter.proto and of the health and reflection protocols the
    examples also serve (the Python SDK's copies, sdk/python/proto/miltergw/_std), made as
    examples/python/README.md says, into tmp/stubs; returns that directory."""
    protoc, plugin = shutil.which("protoc") or "/usr/bin/protoc", "/usr/bin/grpc_python_plugin"
    for path in (protoc, plugin):
        if not os.access(path, os.X_OK):
            raise RuntimeError("%s missing: run tools/setup-debian.sh" % path)
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    stubs = os.path.join(tmp, "stubs")
    os.mkdir(stubs)
    std = os.path.join(repo, "sdk", "python", "proto")
    subprocess.run([protoc, "-I", os.path.join(repo, "proto"), "-I", std, "--python_out=" + stubs,
                    "--grpc_out=" + stubs, "--plugin=protoc-gen-grpc=" + plugin,
                    os.path.join(repo, "proto", "miltergw", "v1", "filter.proto")]
                   + [os.path.join(std, "miltergw", "_std", f) for f in
                      ("health.proto", "reflection_v1alpha.proto", "reflection_v1.proto")],
                   check=True, timeout=60)
    return stubs


STD_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection")


def std_stubs(stubs):
    """The generated modules of generate_python_stubs(): a namespace with filter_pb2,
    health_pb2(_grpc), reflection_v1(alpha)_pb2(_grpc); grpc is imported only here."""
    import importlib
    import types
    if stubs not in sys.path:
        sys.path.insert(0, stubs)
    m = types.SimpleNamespace(grpc=importlib.import_module("grpc"),
                              filter_pb2=importlib.import_module("miltergw.v1.filter_pb2"))
    for name in ("health_pb2", "health_pb2_grpc", "reflection_v1_pb2", "reflection_v1_pb2_grpc",
                 "reflection_v1alpha_pb2", "reflection_v1alpha_pb2_grpc"):
        setattr(m, name, importlib.import_module("miltergw._std." + name))
    return m


def check_std_services(tc, port, stubs, service="miltergw.v1.Filter",
                       file_name="miltergw/v1/filter.proto"):
    """What a gRPC user expects of the filter on 127.0.0.1:port: health Check answers SERVING
    for "" and `service`, NOT_FOUND for an unknown one; reflection (v1 and v1alpha) lists
    `service`, health and reflection, and `describe` of `service` (file containing symbol)
    returns filter.proto's descriptor: the files load into a fresh descriptor pool (as a
    client such as grpcurl loads them) and define what filter.proto defines. The file is
    named `file_name` (None: any name; grpc-js reflection names files after the package)."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    m = std_stubs(stubs)
    hpb = m.health_pb2
    want = descriptor_pb2.FileDescriptorProto()
    m.filter_pb2.DESCRIPTOR.CopyToProto(want)

    def shape(fd):  # what a client needs of the file: names, fields, methods
        return (fd.package,
                [(mt.name, [(f.name, f.number, f.type, f.label, f.type_name.lstrip("."))
                            for f in mt.field]) for mt in fd.message_type],
                [(e.name, [(v.name, v.number) for v in e.value]) for e in fd.enum_type],
                [(sv.name, [(md.name, md.input_type.lstrip("."), md.output_type.lstrip("."),
                             md.client_streaming, md.server_streaming) for md in sv.method])
                 for sv in fd.service])
    with m.grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        health = m.health_pb2_grpc.HealthStub(ch)
        for name in ("", service):
            got = health.Check(hpb.HealthCheckRequest(service=name), timeout=10)
            tc.assertEqual(got.status, hpb.HealthCheckResponse.SERVING, "health of %r" % name)
        with tc.assertRaises(m.grpc.RpcError) as cm:
            health.Check(hpb.HealthCheckRequest(service="no.such.Service"), timeout=10)
        tc.assertEqual(cm.exception.code(), m.grpc.StatusCode.NOT_FOUND)
        for pb, pb_grpc in ((m.reflection_v1_pb2, m.reflection_v1_pb2_grpc),
                            (m.reflection_v1alpha_pb2, m.reflection_v1alpha_pb2_grpc)):
            reqs = [pb.ServerReflectionRequest(list_services=""),
                    pb.ServerReflectionRequest(file_containing_symbol=service),
                    pb.ServerReflectionRequest(file_containing_symbol="no.such.Symbol")]
            resps = list(pb_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter(reqs), timeout=10))
            tc.assertEqual(len(resps), 3, pb.__name__)
            tc.assertEqual(sorted(s.name for s in resps[0].list_services_response.service),
                           sorted([service, *STD_SERVICES]), pb.__name__)
            files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                     for b in resps[1].file_descriptor_response.file_descriptor_proto]
            tc.assertTrue(files, "%s: describe %s: %s" % (pb.__name__, service, resps[1]))
            if file_name is not None:
                tc.assertEqual(files[0].name, file_name)
            pool = descriptor_pool.DescriptorPool()
            for f in reversed(files):  # dependencies first
                pool.Add(f)
            got = descriptor_pb2.FileDescriptorProto()
            pool.FindFileContainingSymbol(service).CopyToProto(got)
            tc.assertEqual(shape(got), shape(want), pb.__name__)
            tc.assertEqual(resps[2].WhichOneof("message_response"), "error_response", pb.__name__)
            tc.assertEqual(resps[2].error_response.error_code, m.grpc.StatusCode.NOT_FOUND.value[0])


def check_stop_watched(tc, filt, stubs, service="miltergw.v1.Filter"):
    """Health Watch of "" and `service` on the running filter `filt` (an object with .port
    and .stop(), which sends SIGTERM): each sees SERVING, then NOT_SERVING after SIGTERM
    (from the still running filter, over its stream), and the filter exits 0."""
    m = std_stubs(stubs)
    hpb = m.health_pb2
    serving, not_serving = hpb.HealthCheckResponse.SERVING, hpb.HealthCheckResponse.NOT_SERVING
    with m.grpc.insecure_channel("127.0.0.1:%d" % filt.port) as ch:
        health = m.health_pb2_grpc.HealthStub(ch)
        watches = [iter(health.Watch(hpb.HealthCheckRequest(service=n), timeout=20))
                   for n in ("", service)]
        for w in watches:
            tc.assertEqual(next(w).status, serving)
        filt.p.send_signal(signal.SIGTERM)
        for name, w in zip(("", service), watches):
            seen, end = [], None
            try:
                for r in w:
                    seen.append(r.status)
            except m.grpc.RpcError as e:  # the server may cut the stream when it stops
                end = e.code()
            tc.assertEqual(seen[:1], [not_serving], "Watch of %r after SIGTERM (end: %s)" % (name, end))
    try:
        filt.p.wait(10)  # the one SIGTERM is enough; stop() only checks the exit status
    except subprocess.TimeoutExpired:
        pass
    tc.assertEqual(filt.stop(), 0)


def smtp_text(reply):
    """(code, text) of an smtplib reply, text as str."""
    code, text = reply
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def smtp_transaction(s, mail_from, rcpts, msg):
    """One transaction on an open smtplib connection, tolerant of refusals: returns
    {'mail': (code, text), 'rcpt': [(code, text)...], 'data_cmd': 354 or the refusal
    code of DATA, or None, 'data': (code, text) of the final '.', or None}."""
    res = {"mail": smtp_text(s.mail(mail_from)), "rcpt": [], "data_cmd": None, "data": None}
    if res["mail"][0] != 250:
        s.rset()
        return res
    for r in rcpts:
        res["rcpt"].append(smtp_text(s.rcpt(r)))
    if not any(c == 250 for c, _ in res["rcpt"]):
        s.rset()
        return res
    try:
        res["data"] = smtp_text(s.data(msg))
        res["data_cmd"] = 354
    except smtplib.SMTPDataError as e:
        res["data_cmd"] = e.smtp_code
        s.rset()
    return res


def smtp_connections(test, host, port, n, source_ip):
    """n SMTP connections to host:port open at once, from source_ip, EHLO answered on each
    (checked with test's assertions); each is closed at test's cleanup."""
    out = []
    for i in range(n):
        c = smtplib.SMTP(host, port, timeout=30, source_address=(source_ip, 0))
        test.addCleanup(c.close)
        test.assertEqual(c.ehlo("client%d.example" % i)[0], 250)
        out.append(c)
    return out


def smtp_session_at(host, port, messages, helo="client.example", timeout=60, source_ip=None):
    """Several transactions in ONE SMTP session: [(from, [rcpts], message bytes)] ->
    [smtp_transaction() result, plus "t": time.monotonic() when it was over]. QUIT at the
    end (or just close if the server is gone)."""
    results = []
    s = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout,
                     source_address=(source_ip, 0) if source_ip else None)
    try:
        s.ehlo()
        for mail_from, rcpts, msg in messages:
            res = smtp_transaction(s, mail_from, rcpts, msg)
            res["t"] = time.monotonic()
            results.append(res)
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            s.close()
    return results
