#!/usr/bin/python3
"""soak.py - fault-and-soak run of miltergw behind a real private Postfix.

    tools/soak.py --miltergw PATH --test-filter PATH [--duration 60] [--clients 6]
                  [--seed N] [--multiplexed] [--json OUT]

Many concurrent SMTP clients send uniquely tokened messages through a private Postfix
(mgwtest.PrivatePostfix, relaying to smtp-sink) -> miltergw -> three filters, all
`on_error: tempfail`: C (tests/filter mgw_test_filter with --echo-header and --control),
Python (tools/soak/soak_filter.py) and Node.js (tools/soak/soak_filter.js). Each filter
stamps X-Soak-<Name>: <token> on every message it lets through. Meanwhile a fault loop,
seeded, at random intervals: SIGKILL and restart a filter, SIGSTOP/SIGCONT a filter
(shorter or longer than its deadline), make the C filter slower than its deadline, make it
answer out of contract, SIGHUP the gateway with a changed file, restart the gateway with a
SIGTERM drain on the same port. At the end every message sent is reconciled (see
docs/reliability.md); the tool prints a table and exits 1 if a message was lost,
duplicated or delivered without every filter's stamp, if the gateway crashed or exited
non-zero, or if its log has a sanitizer report.

Built on tests/integration/mgwtest.py: loopback only, ports chosen at run time, every
process stopped by PID (also on failure or a signal), bounded waits, no fixed sleeps for
events (the random fault intervals are the only sleeps).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import mgwtest  # noqa: E402
from mgwtest import Proc, wait_for  # noqa: E402

NODE = shutil.which("node")
NODE_DIR = os.path.join(REPO, "examples", "node")
SANITIZER_PATTERNS = ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                      "WARNING: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")

# Deadlines given to every filter (normal config; the reload alternates with ALT).
TIMEOUT_MS, EOM_TIMEOUT_MS = 2000, 3000
ALT_TIMEOUT_MS, ALT_EOM_TIMEOUT_MS = 2500, 3500
DRAIN_TIMEOUT_S = 10
SLOW_MS = 5000
ON_ERROR = "tempfail"  # --on-error: anything else is a self-check that must fail  # the C filter's delay when made slow: above every deadline

# Message kinds: (name, weight). What the filters do with them is fixed by their flags.
KINDS = [("normal", 64), ("large", 8), ("multi-rcpt", 6), ("reject-py", 5), ("reject-node", 5),
         ("reject-c", 4), ("hold-py", 4), ("later-rcpt", 4)]
# The refusal each designed kind must get when every filter is well (code, stage).
DESIGNED = {"reject-py": 550, "reject-node": 554, "reject-c": 553, "later-rcpt": 450}
DOMAIN = "soak.example"


def log(fmt, *a):
    sys.stdout.write(("%7.1fs " % (time.monotonic() - T0)) + (fmt % a if a else fmt) + "\n")
    sys.stdout.flush()


T0 = time.monotonic()


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, TypeError):
        pass
    return None


# ---------------------------------------------------------------------------------------
# Filters


class SoakFilter:
    """One filter process on a fixed port (picked free at start), restartable on that port.
    Its output goes to one log file (appended across restarts); `port=N` on stdout after
    each start means it listens."""

    def __init__(self, name, argv_fn, tmpdir, env=None):
        self.name = name
        self.port = mgwtest.free_port()
        self.argv_fn = argv_fn
        self.env = env
        self.log_path = os.path.join(tmpdir, "filter-%s.log" % name)
        self.proc = None
        self.starts = 0
        self.unexpected_exits = []  # (time, returncode)
        self.paused = False

    @property
    def target(self):
        return "127.0.0.1:%d" % self.port

    def _log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, mark):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, timeout=30):
        mark = self._log_size()
        self.proc = Proc(self.argv_fn(self.port), self.log_path, env=self.env,
                         name="soak-filter[%s]" % self.name).start()
        self.starts += 1
        rx = re.compile(r"^port=(\d+)$", re.M)
        wait_for(lambda: rx.search(self.log_since(mark)) or not self.proc.alive(), timeout,
                 lambda: "filter %s to print port=N; log:\n%s" % (self.name, self.log_since(mark)[-2000:]))
        if not self.proc.alive():
            raise AssertionError("filter %s exited with %s at start; log:\n%s"
                                 % (self.name, self.proc.p.returncode, self.log_since(mark)[-2000:]))
        return self

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def kill(self):
        """SIGKILL by PID and reap it."""
        self.cont()
        self.proc.p.send_signal(signal.SIGKILL)
        self.proc.p.wait(10)
        self.proc.stop()  # reaped already: just unregisters the cleanup

    def stop(self):
        self.cont()
        return self.proc.stop() if self.proc else None

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def cont(self):
        if self.paused and self.proc is not None and self.proc.p.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


class CFilter(SoakFilter):
    """mgw_test_filter: every event, --echo-header X-Soak-C:X-Soak-Token, refuses the
    recipient refuse-c@ with 553, runtime delay/bogus toggles through --control + SIGUSR1."""

    def __init__(self, binary, tmpdir, multiplexed=False):
        self.control_path = os.path.join(tmpdir, "c-filter.control")
        mgwtest.write_file(self.control_path, "delay-ms=0 bogus=0\n")
        super().__init__("c", lambda port: [
            binary, "--listen", "127.0.0.1:%d" % port, "--name", "soak-c",
            "--echo-header", "X-Soak-C:X-Soak-Token", "--reject-rcpt", "refuse-c@" + DOMAIN,
            "--code", "553", "--xcode", "5.7.1", "--text", "soak c rejects",
            "--control", self.control_path] + (["--multiplexed"] if multiplexed else []), tmpdir)
        self.delay_ms = 0
        self.bogus = 0

    def control(self, delay_ms=None, bogus=None, timeout=10):
        """Change the runtime toggles; waits until the filter confirms them."""
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if bogus is not None:
            self.bogus = bogus
        words = "delay-ms=%d bogus=%d" % (self.delay_ms, self.bogus)
        mgwtest.write_file(self.control_path, words + "\n")
        mark = self._log_size()
        os.kill(self.proc.pid, signal.SIGUSR1)
        wait_for(lambda: ("control " + words) in self.log_since(mark), timeout,
                 "the C filter to confirm %s" % words)

    def start(self, timeout=30):
        super().start(timeout)
        if self.delay_ms or self.bogus:  # a restarted filter comes back well
            self.delay_ms = self.bogus = 0
            mgwtest.write_file(self.control_path, "delay-ms=0 bogus=0\n")
        return self


# ---------------------------------------------------------------------------------------
# Gateway


def gw_config(port, filters, alt=False):
    """The YAML file: three filters, on_error tempfail; alt = other deadlines, other order."""
    t, e = (ALT_TIMEOUT_MS, ALT_EOM_TIMEOUT_MS) if alt else (TIMEOUT_MS, EOM_TIMEOUT_MS)
    fl = [{"name": f.name, "target": f.target, "on_error": ON_ERROR,
           "timeout": "%dms" % t, "eom_timeout": "%dms" % e} for f in filters]
    if alt:
        fl.reverse()
    return mgwtest.yaml_dump({
        "listen": ["inet:127.0.0.1:%d" % port],
        "http": {"listen": "127.0.0.1:0"},
        "log": {"level": "info"},
        "drain_timeout": "%ds" % DRAIN_TIMEOUT_S,
        "filters": fl,
    }) + "\n"


class Gateway:
    """miltergw incarnations on one port (restarts keep it); RSS and exit per incarnation."""

    def __init__(self, binary, tmpdir, filters):
        self.binary = binary
        self.tmpdir = tmpdir
        self.filters = filters
        self.port = mgwtest.free_port()
        self.config_path = os.path.join(tmpdir, "miltergw.yaml")
        self.alt = False
        mgwtest.write_file(self.config_path, gw_config(self.port, filters))
        self.gw = None
        self.incarnations = []  # dicts: pid, log, rss_start_kb, rss_end_kb, rss_max_kb, rc, how
        self.lock = threading.Lock()

    def start(self):
        self.gw = mgwtest.MiltergwFile(self.config_path, binary=self.binary, tmpdir=self.tmpdir,
                                       port=self.port, ready_timeout=30)
        for f in self.filters:  # ready: every filter described (or 5 s passed)
            try:
                self.gw.wait_log(timeout=10, msg="filter described", filter=f.name)
            except mgwtest.WaitTimeout:
                log("warning: gateway started without describing filter %s", f.name)
        pid = self.gw.proc.pid
        r = rss_kb(pid)
        with self.lock:
            self.incarnations.append({"pid": pid, "log": self.gw.log_path, "rss_start_kb": r,
                                      "rss_end_kb": r, "rss_max_kb": r, "rc": None,
                                      "how": None, "started_s": round(time.monotonic() - T0, 1)})
        return self

    def sample(self):
        with self.lock:
            if not self.incarnations or self.gw is None or not self.gw.alive():
                return
            inc = self.incarnations[-1]
            r = rss_kb(inc["pid"])
            if r:
                inc["rss_end_kb"] = r
                inc["rss_max_kb"] = max(inc["rss_max_kb"] or 0, r)

    def alive(self):
        return self.gw is not None and self.gw.alive()

    def check_crash(self):
        """If the running incarnation died on its own, record it; returns True if so."""
        if self.gw is None or self.gw.alive():
            return False
        inc = self.incarnations[-1]
        if inc["how"] is None:
            inc["rc"] = self.gw.proc.p.returncode
            inc["how"] = "died"
            self.gw.proc.stop()
            log("GATEWAY DIED: pid %d exit %r; log tail:\n%s", inc["pid"], inc["rc"],
                self.gw.proc.log_tail(20))
            return True
        return False

    def drain_stop(self, timeout=DRAIN_TIMEOUT_S + 20):
        """SIGTERM (drain), wait for the exit; returns the exit code."""
        self.sample()
        inc = self.incarnations[-1]
        self.gw.signal(signal.SIGTERM)
        try:
            rc = self.gw.proc.wait_exit(timeout)
            inc["how"] = "drained"
        except mgwtest.WaitTimeout:
            log("gateway pid %d did not exit %ds after SIGTERM: killing", inc["pid"], timeout)
            rc = self.gw.proc.stop(timeout=1, sig=signal.SIGKILL)
            inc["how"] = "hung_on_drain"
        self.gw.proc.stop()
        inc["rc"] = rc
        return rc

    def reload(self):
        self.alt = not self.alt
        mgwtest.write_file(self.config_path, gw_config(self.port, self.filters, self.alt))
        return self.gw.reload(timeout=15)

    def logs(self):
        out = []
        for inc in self.incarnations:
            try:
                with open(inc["log"], "rb") as f:
                    out.append((inc, f.read().decode("utf-8", "replace")))
            except OSError:
                out.append((inc, ""))
        return out


# ---------------------------------------------------------------------------------------
# SMTP clients


class Message:
    __slots__ = ("token", "kind", "size", "rcpts", "mail", "rcpt_codes", "data_cmd", "final",
                 "outcome", "code", "qid", "error", "accepted_rcpts", "t")

    def __init__(self, token, kind, size, rcpts):
        self.token, self.kind, self.size, self.rcpts = token, kind, size, rcpts
        self.mail = None
        self.rcpt_codes = []
        self.data_cmd = None
        self.final = None
        self.outcome = "unsent"  # accepted | refused | indeterminate | unsent
        self.code = None  # the refusal code (int) or "conn"
        self.qid = None
        self.error = None
        self.accepted_rcpts = []
        self.t = round(time.monotonic() - T0, 2)


def build_message(token, kind, size):
    subject = "soak %s %s" % (token, kind)
    hdrs = [("From", "Soak <sender@%s>" % DOMAIN), ("To", "rcpt@%s" % DOMAIN),
            ("Subject", subject), ("Date", time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())),
            ("Message-ID", "<%s@%s>" % (token, DOMAIN)), ("X-Soak-Token", token)]
    head = "".join("%s: %s\r\n" % kv for kv in hdrs).encode()
    line = (token + " ").encode() * 8
    line = line[:76] + b"\r\n"
    body = b"soak message " + token.encode() + b"\r\n"
    body += line * max(0, (size - len(body)) // len(line))
    body += b".leading dot line\r\n"
    return head + b"\r\n" + body


def dot_stuff(msg):
    msg = re.sub(rb"(?m)^\.", b"..", msg)
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    return msg + b".\r\n"


def reply_text(r):
    return r[1].decode("utf-8", "replace") if isinstance(r[1], bytes) else r[1]


class Clients:
    def __init__(self, pf, n, seed, run_id):
        self.pf = pf
        self.n = n
        self.seed = seed
        self.run_id = run_id
        self.stop = threading.Event()
        self.messages = []
        self.lock = threading.Lock()
        self.seq = 0
        self.threads = []
        self.connect_errors = 0
        self.sessions = 0

    def next_token(self):
        with self.lock:
            self.seq += 1
            return "%s-%06d" % (self.run_id, self.seq)

    def start(self):
        for i in range(self.n):
            t = threading.Thread(target=self.client, args=(i,), daemon=True, name="client-%d" % i)
            t.start()
            self.threads.append(t)

    def join(self, timeout):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def new_message(self, rng):
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        token = self.next_token()
        size = rng.randint(300, 4000)
        rcpts = ["rcpt%d@%s" % (rng.randint(0, 99), DOMAIN)]
        if kind == "large":
            size = rng.choice([80_000, 300_000, 900_000, 1_600_000])
        elif kind == "multi-rcpt":
            rcpts += ["other%d@%s" % (rng.randint(0, 99), DOMAIN)]
        elif kind == "reject-c":
            rcpts = ["refuse-c@" + DOMAIN]
        elif kind == "later-rcpt":
            rcpts = ["later@" + DOMAIN] + rcpts
        m = Message(token, kind, size, rcpts)
        with self.lock:
            self.messages.append(m)
        return m

    def client(self, i):
        rng = random.Random("%s-client-%d" % (self.seed, i))
        while not self.stop.is_set():
            n_msgs = rng.choices([1, 2, 3, 5], [50, 25, 15, 10])[0]
            try:
                s = smtplib.SMTP(self.pf.host, self.pf.port, local_hostname="client%d.%s" % (i, DOMAIN),
                                 timeout=120)
            except (OSError, smtplib.SMTPException) as e:
                with self.lock:
                    self.connect_errors += 1
                log("client %d: connect failed: %r", i, e)
                self.stop.wait(0.5)  # back off; not waiting for an event
                continue
            with self.lock:
                self.sessions += 1
            try:
                s.ehlo()
                for _ in range(n_msgs):
                    if self.stop.is_set():
                        break
                    m = self.new_message(rng)
                    self.transaction(s, m)
                try:
                    s.quit()
                except (OSError, smtplib.SMTPException):
                    pass
            except (OSError, smtplib.SMTPException) as e:
                log("client %d: session error: %r", i, e)
            finally:
                try:
                    s.close()
                except OSError:
                    pass

    def transaction(self, s, m):
        """One message; refusals recorded, not raised. After the DATA payload has been sent,
        a lost connection leaves the outcome unknown (indeterminate)."""
        data = None
        try:
            m.mail = s.mail("sender@" + DOMAIN)
            if m.mail[0] != 250:
                m.outcome, m.code = "refused", m.mail[0]
                s.rset()
                return
            for r in m.rcpts:
                c = s.rcpt(r)
                m.rcpt_codes.append(c[0])
                if c[0] == 250:
                    m.accepted_rcpts.append(r)
            if not m.accepted_rcpts:
                m.outcome, m.code = "refused", m.rcpt_codes[0]
                s.rset()
                return
            data = dot_stuff(build_message(m.token, m.kind, m.size))
            s.putcmd("data")
            code, _ = s.getreply()
            m.data_cmd = code
            if code != 354:
                m.outcome, m.code = "refused", code
                s.rset()
                return
            m.outcome = "indeterminate"  # from here a lost connection leaves it unknown
            s.send(data)
            code, text = s.getreply()
            m.final = (code, text.decode("utf-8", "replace"))
            if code == 250:
                m.outcome = "accepted"
                q = re.findall(r"queued as ([0-9A-Za-z]+)", m.final[1])
                m.qid = q[-1] if q else None
            else:
                m.outcome, m.code = "refused", code
        except (OSError, smtplib.SMTPException) as e:
            m.error = repr(e)
            if m.outcome == "unsent":  # broke before any refusal or the data: not queued
                m.outcome, m.code = "refused", "conn"
            raise  # the session is in an unknown state: end it


# ---------------------------------------------------------------------------------------
# Faults


class Faults:
    KINDS = ("kill_filter", "pause_filter_short", "pause_filter_long", "slow_filter",
             "bogus_filter", "reload", "restart_gateway")

    def __init__(self, rng, gateway, filters, cfilter, kinds=None):
        self.kinds = list(kinds or self.KINDS)
        self.rng = rng
        self.gw = gateway
        self.filters = filters
        self.cfilter = cfilter
        self.counts = {k: 0 for k in self.KINDS}
        self.events = []
        self.problems = []
        self.bag = []

    def pick(self):
        # every kind once per round, in a seeded random order: a short run covers them all
        if not self.bag:
            self.bag = list(self.kinds)
            self.rng.shuffle(self.bag)
        return self.bag.pop()

    def note(self, kind, **kw):
        self.counts[kind] += 1
        ev = dict(t=round(time.monotonic() - T0, 1), kind=kind, **kw)
        self.events.append(ev)
        log("fault %s %s", kind, " ".join("%s=%s" % kv for kv in kw.items()))

    def inject(self, kind, stop):
        rng = self.rng
        if kind == "kill_filter":
            f = rng.choice(self.filters)
            down = rng.uniform(0, 2.0)
            mark = self.gw.gw.log_mark()
            f.kill()
            self.note(kind, filter=f.name, down_s=round(down, 2))
            stop.wait(down)  # random fault duration
            f.start()
            self.wait_described(f, mark)
        elif kind in ("pause_filter_short", "pause_filter_long"):
            f = rng.choice(self.filters)
            deadline = max(TIMEOUT_MS, ALT_EOM_TIMEOUT_MS if self.gw.alt else EOM_TIMEOUT_MS) / 1000
            d = rng.uniform(0.05, 0.5 * TIMEOUT_MS / 1000) if kind.endswith("short") \
                else rng.uniform(deadline + 0.5, deadline + 3.0)
            f.pause()
            self.note(kind, filter=f.name, paused_s=round(d, 2))
            try:
                time.sleep(d)  # the fault's random duration (not a wait for an event)
            finally:
                f.cont()
        elif kind == "slow_filter":
            d = rng.uniform(2.0, 6.0)
            self.cfilter.control(delay_ms=SLOW_MS)
            self.note(kind, filter="c", delay_ms=SLOW_MS, for_s=round(d, 2))
            stop.wait(d)
            self.cfilter.control(delay_ms=0)
        elif kind == "bogus_filter":
            d = rng.uniform(1.0, 4.0)
            self.cfilter.control(bogus=1)
            self.note(kind, filter="c", for_s=round(d, 2))
            stop.wait(d)
            self.cfilter.control(bogus=0)
        elif kind == "reload":
            rec = self.gw.reload()
            ok = rec.get("msg") == "configuration reloaded"
            self.note(kind, alt=int(self.gw.alt), result="ok" if ok else "failed")
            if not ok:
                self.problems.append("reload failed: %r" % (rec,))
        elif kind == "restart_gateway":
            pid = self.gw.gw.proc.pid
            t0 = time.monotonic()
            rc = self.gw.drain_stop()
            took = time.monotonic() - t0
            self.note(kind, pid=pid, exit=rc, drain_s=round(took, 2))
            if rc != 0:
                self.problems.append("gateway pid %d exited %r after SIGTERM (drain)" % (pid, rc))
            self.gw.start()

    def wait_described(self, f, mark, timeout=15):
        """After a filter restart: wait (bounded) until the gateway described it again, so
        the next fault does not land on a filter still coming back. Not a failure if it
        takes longer (gRPC reconnect backoff): noted, and the soak goes on."""
        t0 = time.monotonic()
        try:
            self.gw.gw.wait_log(timeout=timeout, since=mark, msg="filter described", filter=f.name)
            self.events[-1]["redescribed_s"] = round(time.monotonic() - t0, 2)
        except mgwtest.WaitTimeout:
            self.events[-1]["redescribed_s"] = None
            log("note: gateway did not describe filter %s again within %ds", f.name, timeout)

    def restore(self):
        for f in self.filters:
            f.cont()
        if self.cfilter.alive() and (self.cfilter.delay_ms or self.cfilter.bogus):
            self.cfilter.control(delay_ms=0, bogus=0)


# ---------------------------------------------------------------------------------------
# Reconciliation


def reconcile(clients, pf, filter_names):
    """Every message sent against the sink dumps and the hold queue."""
    by_token = {}
    foreign = 0
    for d in pf.delivered():
        tok = d.header("X-Soak-Token")
        if tok is None:
            foreign += 1
            continue
        by_token.setdefault(tok.strip(), []).append(d)
    queue = pf.queue()
    held_qids = {e["queue_id"] for e in queue if e.get("queue_name") == "hold"}
    queued_qids = {e["queue_id"] for e in queue if e.get("queue_name") != "hold"}
    want_hdrs = ["X-Soak-" + n.capitalize() for n in filter_names]
    r = {"sent": 0, "accepted": 0, "delivered": 0, "held": 0, "refused": {}, "indeterminate": 0,
         "indeterminate_delivered": 0, "lost": 0, "duplicated": 0, "unfiltered": 0,
         "wrong_rcpts": 0, "wrong_fate": 0, "refused_but_delivered": 0, "foreign_dumps": foreign,
         "unsent": 0, "still_queued": 0, "rcpt_refused": {}}
    defects = []

    def check_stamps(m, d):
        bad = []
        for h in want_hdrs:
            vals = [v.strip() for n, v in d.headers if n.lower() == h.lower()]
            if vals != [m.token]:
                bad.append("%s=%r" % (h, vals))
        return bad

    for m in clients.messages:
        if m.outcome == "unsent":
            r["unsent"] += 1
            continue
        r["sent"] += 1
        for c in m.rcpt_codes:
            if c != 250 and (m.outcome != "refused" or m.accepted_rcpts):
                r["rcpt_refused"][str(c)] = r["rcpt_refused"].get(str(c), 0) + 1
        dumps = by_token.get(m.token, [])
        if m.outcome == "refused":
            key = str(m.code)
            r["refused"][key] = r["refused"].get(key, 0) + 1
            if dumps:
                r["refused_but_delivered"] += 1
                defects.append(("refused_but_delivered", m, "code %s, %d dump(s)" % (m.code, len(dumps))))
            continue
        if m.outcome == "indeterminate":
            r["indeterminate"] += 1
            if len(dumps) > 1:
                r["duplicated"] += 1
                defects.append(("duplicated", m, "%d dumps" % len(dumps)))
            if dumps:
                r["indeterminate_delivered"] += 1
                bad = check_stamps(m, dumps[0])
                if bad:
                    r["unfiltered"] += 1
                    defects.append(("unfiltered", m, " ".join(bad)))
            continue
        # accepted (250 after the final dot)
        r["accepted"] += 1
        if m.kind in ("reject-py", "reject-node", "reject-c"):
            r["wrong_fate"] += 1
            defects.append(("wrong_fate", m, "designed to be refused, got 250"))
        if m.qid and m.qid in held_qids:
            r["held"] += 1
            if dumps:
                r["duplicated"] += 1
                defects.append(("duplicated", m, "held and delivered"))
            if m.kind != "hold-py":
                r["wrong_fate"] += 1
                defects.append(("wrong_fate", m, "held but not designed to be"))
            continue
        if not dumps and m.qid in queued_qids:
            r["still_queued"] += 1
            defects.append(("still_queued", m, "250 queued as %s, still in the queue" % m.qid))
            continue
        if not dumps:
            r["lost"] += 1
            defects.append(("lost", m, "250 queued as %s, neither delivered nor held" % m.qid))
            continue
        if m.kind == "hold-py":
            r["wrong_fate"] += 1
            defects.append(("wrong_fate", m, "designed to be held, delivered"))
        r["delivered"] += 1
        if len(dumps) > 1:
            # one transaction per dump; several recipients travel in one transaction
            r["duplicated"] += 1
            defects.append(("duplicated", m, "%d dumps" % len(dumps)))
        bad = check_stamps(m, dumps[0])
        if bad:
            r["unfiltered"] += 1
            defects.append(("unfiltered", m, " ".join(bad)))
        got = sorted(x for d in dumps for x in d.rcpts)
        if got != sorted(m.accepted_rcpts) and len(dumps) == 1:
            r["wrong_rcpts"] += 1
            defects.append(("wrong_rcpts", m, "delivered to %r, accepted %r" % (got, m.accepted_rcpts)))
    return r, defects


# ---------------------------------------------------------------------------------------
# Main


def gateway_log_summary(gateway):
    sanitizer, failures, errors = [], {}, 0
    for inc, text in gateway.logs():
        for ln in text.splitlines():
            if any(p in ln for p in SANITIZER_PATTERNS):
                sanitizer.append("pid %d: %s" % (inc["pid"], ln.strip()))
            if 'msg="filter failed"' in ln or 'msg="filter unavailable"' in ln:
                rec = mgwtest.parse_logfmt(ln)
                k = "%s/%s" % (rec.get("filter", "?"), rec.get("reason", "unavailable_at_start"))
                failures[k] = failures.get(k, 0) + 1
            elif 'msg="session closed"' in ln:
                rec = mgwtest.parse_logfmt(ln)
                if rec.get("reason") not in ("quit", "eof"):
                    k = "session closed/%s" % rec.get("reason", "?")
                    failures[k] = failures.get(k, 0) + 1
            if "level=error" in ln:
                errors += 1
    return sanitizer, failures, errors


def print_table(res, faults, gateway, extra):
    rows = [("messages sent", res["sent"]), ("  accepted (250)", res["accepted"]),
            ("  delivered to the sink", res["delivered"]), ("  held (quarantine)", res["held"])]
    for code in sorted(res["refused"], key=str):
        rows.append(("  refused %s" % code, res["refused"][code]))
    for code in sorted(res["rcpt_refused"], key=str):
        rows.append(("  (recipients refused %s, message went on)" % code, res["rcpt_refused"][code]))
    rows += [("  still queued at the end (must be 0)", res["still_queued"]),
             ("  indeterminate (connection lost after DATA)", res["indeterminate"]),
             ("    of which delivered", res["indeterminate_delivered"]),
             ("LOST (must be 0)", res["lost"]), ("DUPLICATED (must be 0)", res["duplicated"]),
             ("DELIVERED UNFILTERED (must be 0)", res["unfiltered"]),
             ("refused but delivered (must be 0)", res["refused_but_delivered"]),
             ("wrong fate (must be 0)", res["wrong_fate"]),
             ("wrong recipients (must be 0)", res["wrong_rcpts"]),
             ("sink dumps without a soak token", res["foreign_dumps"]),
             ("SMTP sessions / connect errors", "%d / %d" % (extra["sessions"], extra["connect_errors"]))]
    for k in Faults.KINDS:
        rows.append(("fault %s" % k, faults.counts[k]))
    for k, v in sorted(extra["filter_failures"].items()):
        rows.append(("gateway log: %s%s" % ("" if k.startswith("session") else "filter ", k), v))
    rows.append(("gateway level=error lines", extra["error_lines"]))
    rows.append(("sanitizer reports (must be 0)", len(extra["sanitizer"])))
    incs = list(enumerate(gateway.incarnations))
    if len(incs) > 6:
        g = gateway.incarnations
        rows.append(("gateway incarnations (all exit 0: %s)" % all(x["rc"] == 0 for x in g), len(g)))
        rows.append(("  RSS kB at start, min-max", "%s-%s" % (min(x["rss_start_kb"] or 0 for x in g),
                                                        max(x["rss_start_kb"] or 0 for x in g))))
        rows.append(("  RSS kB max of any", max(x["rss_max_kb"] or 0 for x in g)))
        rows.append(("  RSS kB at end, min-max", "%s-%s" % (min(x["rss_end_kb"] or 0 for x in g),
                                                      max(x["rss_end_kb"] or 0 for x in g))))
        incs = incs[:2] + incs[-2:]
    for i, inc in incs:
        rows.append(("gateway #%d pid %d RSS start/max/end kB" % (i + 1, inc["pid"]),
                     "%s / %s / %s  exit %s (%s)" % (inc["rss_start_kb"], inc["rss_max_kb"],
                                                   inc["rss_end_kb"], inc["rc"], inc["how"])))
    w = max(len(a) for a, _ in rows)
    print("\n" + "-" * (w + 30))
    for a, b in rows:
        print("%-*s  %s" % (w, a, b))
    print("-" * (w + 30))


def main():
    global T0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miltergw", default=os.environ.get("MILTERGW"), required=False)
    ap.add_argument("--test-filter", default=os.environ.get("MGW_TEST_FILTER"))
    ap.add_argument("--duration", type=float, default=60, help="seconds of traffic (default 60)")
    ap.add_argument("--clients", type=int, default=6, help="concurrent SMTP clients (default 6)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault loop and the clients")
    ap.add_argument("--fault-gap", type=float, nargs=2, default=(0.5, 4.0), metavar=("MIN", "MAX"),
                    help="random pause between faults, seconds (default 0.5 4)")
    ap.add_argument("--no-faults", action="store_true", help="traffic only (a baseline)")
    ap.add_argument("--faults", type=lambda v: v.split(","), default=None, metavar="KIND,...",
                    help="inject only these kinds (default all: %s); without restart_gateway "
                         "one gateway process lives the whole run (RSS over time)" % ",".join(Faults.KINDS))
    ap.add_argument("--on-error", choices=("tempfail", "accept"), default="tempfail",
                    help="filters' on_error (default tempfail); accept is a self-check of the "
                         "reconciliation: faults then let unfiltered mail through, and the run must fail")
    ap.add_argument("--multiplexed", action="store_true",
                    help="the C filter declares multiplexed streams (its faults then hit every "
                         "session sharing a call)")
    ap.add_argument("--json", help="write the results as JSON to this file")
    o = ap.parse_args()
    if not o.miltergw or not o.test_filter:
        ap.error("--miltergw and --test-filter are required")
    if NODE is None:
        sys.stderr.write("soak: node is not installed (the Node.js soak filter needs it): skipped\n")
        return 77
    for k in o.faults or ():
        if k not in Faults.KINDS:
            ap.error("--faults: unknown kind %r" % k)
    global ON_ERROR
    ON_ERROR = o.on_error
    seed = o.seed if o.seed is not None else random.SystemRandom().randrange(1 << 31)
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    T0 = time.monotonic()
    log("soak: seed=%d duration=%ss clients=%d multiplexed=%s miltergw=%s", seed, o.duration,
        o.clients, "yes" if o.multiplexed else "no", o.miltergw)
    try:
        return run(o, seed)
    except KeyboardInterrupt:
        log("soak: interrupted, cleaning up")
        mgwtest._run_cleanups()
        return 130


def run(o, seed):
    rng = random.Random(seed)
    run_id = "s%x" % (seed & 0xfffff)
    tmp = mgwtest.make_tmpdir("soak")
    stubs = mgwtest.generate_python_stubs(tmp)
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
        import subprocess
        npm = shutil.which("npm")
        if not npm:
            raise SystemExit("npm missing: cannot install examples/node")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       stdin=subprocess.DEVNULL, timeout=300)

    cf = CFilter(os.path.abspath(o.test_filter), tmp, o.multiplexed)
    py = SoakFilter("py", lambda port: [mgwtest.PYTHON, os.path.join(HERE, "soak", "soak_filter.py"),
                                        "--listen", "127.0.0.1:%d" % port, "--name", "py"],
                    tmp, env=dict(os.environ, MILTERGW_STUBS=stubs))
    nd = SoakFilter("node", lambda port: [NODE, os.path.join(HERE, "soak", "soak_filter.js"),
                                          "--listen", "127.0.0.1:%d" % port, "--name", "node"], tmp)
    filters = [cf, py, nd]
    for f in filters:
        f.start()
    gateway = Gateway(os.path.abspath(o.miltergw), tmp, filters)
    gateway.start()
    pf = mgwtest.PrivatePostfix("inet:127.0.0.1:%d" % gateway.port, extra_main_cf={
        "default_process_limit": "200"})
    log("soak: postfix smtpd %d, sink %d, gateway %d, filters %s", pf.port, pf.sink_port, gateway.port,
        " ".join("%s=%d" % (f.name, f.port) for f in filters))

    clients = Clients(pf, o.clients, seed, run_id)
    faults = Faults(rng, gateway, filters, cf, o.faults)
    stop = threading.Event()
    problems = []
    crashes = 0

    def sampler():
        while not stop.wait(1.0):
            gateway.sample()
    st = threading.Thread(target=sampler, daemon=True)
    st.start()

    clients.start()
    end = time.monotonic() + o.duration
    try:
        while time.monotonic() < end:
            gap = rng.uniform(*o.fault_gap)
            stop.wait(min(gap, max(0, end - time.monotonic())))
            if gateway.check_crash():
                crashes += 1
                gateway.start()
            for f in filters:
                if not f.alive():
                    f.unexpected_exits.append((round(time.monotonic() - T0, 1), f.proc.p.returncode))
                    log("filter %s died unexpectedly (exit %r); restarting", f.name, f.proc.p.returncode)
                    f.proc.stop()
                    f.start()
            if time.monotonic() >= end or o.no_faults:
                continue
            faults.inject(faults.pick(), stop)
    finally:
        faults.restore()
    log("soak: traffic ends; stopping clients")
    stuck = clients.join(timeout=180)
    if stuck:
        problems.append("SMTP clients still blocked after 180 s: %s" % stuck)
    if gateway.check_crash():
        crashes += 1
    log("soak: %d messages sent; waiting for the Postfix queue to drain", len(clients.messages))
    try:
        pf.wait_queue_empty(timeout=180, ignore_hold=True)
    except mgwtest.WaitTimeout as e:
        problems.append("Postfix queue did not drain: %s" % str(e)[:2000])
    stop.set()
    gateway.sample()
    if gateway.alive():
        rc = gateway.drain_stop()
        if rc != 0:
            problems.append("final gateway exit code %r after SIGTERM" % rc)
    for f in filters:
        rc = f.stop()
        if rc not in (0, -signal.SIGTERM):
            problems.append("filter %s exit code %r on SIGTERM" % (f.name, rc))
        if f.unexpected_exits:
            problems.append("filter %s died unexpectedly: %r" % (f.name, f.unexpected_exits))

    res, defects = reconcile(clients, pf, [f.name for f in filters])
    sanitizer, ffail, errors = gateway_log_summary(gateway)
    extra = {"sessions": clients.sessions, "connect_errors": clients.connect_errors,
             "filter_failures": ffail, "error_lines": errors, "sanitizer": sanitizer}
    print_table(res, faults, gateway, extra)
    for kind, m, detail in defects[:50]:
        print("DEFECT %s token=%s kind=%s sent_at=%ss qid=%s mail=%s rcpts=%s data=%s final=%s error=%s: %s"
              % (kind, m.token, m.kind, m.t, m.qid, m.mail and m.mail[0], m.rcpt_codes, m.data_cmd,
                 m.final, m.error, detail))
    for ln in sanitizer[:40]:
        print("SANITIZER " + ln)
    problems += faults.problems
    if crashes:
        problems.append("gateway crashed %d time(s) (see the log tails above)" % crashes)
    for inc in gateway.incarnations:
        if inc["how"] in ("died", "hung_on_drain") or (inc["rc"] not in (0, None)):
            problems.append("gateway pid %d: %s, exit %r, log %s" % (inc["pid"], inc["how"], inc["rc"], inc["log"]))
    failed = bool(res["lost"] or res["still_queued"] or res["duplicated"] or res["unfiltered"] or res["refused_but_delivered"]
                  or res["wrong_fate"] or res["wrong_rcpts"] or sanitizer or problems)
    problems = sorted(set(problems))
    for p in problems:
        print("PROBLEM " + p)
    if o.json:
        with open(o.json, "w") as fj:
            json.dump({"seed": seed, "duration_s": o.duration, "clients": o.clients,
                       "results": res, "faults": faults.counts, "fault_events": faults.events,
                       "gateway": gateway.incarnations, "filter_failures": ffail,
                       "gateway_error_lines": errors, "sanitizer": sanitizer, "problems": problems,
                       "defects": [{"kind": k, "token": m.token, "msg_kind": m.kind, "qid": m.qid,
                                    "detail": d} for k, m, d in defects],
                       "filter_starts": {f.name: f.starts for f in filters},
                       "passed": not failed}, fj, indent=1)
    if failed:
        print("soak: FAILED (seed %d)" % seed)
        keep_logs(tmp, pf)
    else:
        print("soak: passed (seed %d)" % seed)
    pf.stop()
    return 1 if failed else 0


def keep_logs(tmp, pf):
    """On failure keep the evidence: copy the run's logs next to the JSON/cwd (the temp dirs
    are removed at exit unless MGW_KEEP_TMP=1)."""
    if mgwtest.KEEP_TMP:
        return
    dest = os.path.abspath("soak-logs-%d" % os.getpid())
    try:
        shutil.copytree(tmp, dest, ignore=shutil.ignore_patterns("stubs"))
        shutil.copy(pf.maillog_path, dest)
        print("soak: logs copied to %s" % dest)
    except OSError as e:
        print("soak: could not copy logs: %r" % e)


if __name__ == "__main__":
    rc = main()
    mgwtest._run_cleanups()
    sys.exit(rc)
