"""milters.py - private instances of real milters for integration tests (stdlib + mgwtest).

Every milter listens on 127.0.0.1 at a port chosen free at run time, runs in the foreground
as a child of the test, and is stopped by its PID (stop(), and at exit / on SIGTERM through
mgwtest's cleanup registry, even when a test fails). Nothing here touches the system's
/etc/opendkim.conf, /etc/opendmarc.conf or any system daemon.

Provides:
  DkimKey(domain, selector, tmpdir=None, bits=2048)
      an RSA key made with opendkim-genkey: .private_path, .txt_record (the TXT value),
      .dns_name ("SELECTOR._domainkey.DOMAIN")
  OpenDkimSigner(key, authserv_id="dkim.mgwtest", extra_conf=None)
      opendkim in signing mode (Domain/KeyFile/Selector) for mail from 127.0.0.1
  OpenDkimVerifier(keys, authserv_id="dkim.mgwtest", extra_conf=None)
      opendkim in verifying mode; public keys come from a TestPublicKeys file written from
      `keys` (DkimKey objects or (dns name, TXT value) pairs): no DNS at all
  OpenDmarc(dns=None, authserv_id="dmarc.mgwtest", trusted_authserv_ids=("dkim.mgwtest",),
            extra_conf=None)
      opendmarc; DMARC records come from its TestDNSData file written from `dns`
      ({"_dmarc.example.org": "v=DMARC1; p=reject"}): no DNS at all
  ScriptMilter(*args, name="sm", macros=None)
      tests/integration/script_milter.py (pymilter) with `args` (its options); records()
      parses its JSON lines, find()/wait_record() look for events
  postfix_milters(*milters) -> "inet:127.0.0.1:P1, inet:127.0.0.1:P2" for smtpd_milters
  stop_all(milters)  SIGTERM to all, then stop() each (checks exit codes)
  milter_filter_arg(name, milter, **opts) -> "NAME=SPEC,kind=milter,k=v..." for miltergw
  milter_filter_yaml(name, milter, **opts) -> {"name", "kind": "milter", "target", ...}
  message_bytes(sink_message, drop=()) -> a delivered message as bytes to send again
  auth_results(sink_message, authserv_id) -> [Authentication-Results values of that id]

Each milter object has .port, .spec ("inet:127.0.0.1:PORT", Postfix and miltergw --filter
style), .libmilter_spec ("inet:PORT@127.0.0.1", Sendmail/miltertest style), .pid,
.alive(), .stop(expect=...), .log_text(). Every class also takes unix=True: then it
listens on a unix socket in its temp dir, .spec = .libmilter_spec = "unix:/path", .port
is None.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402
from mgwtest import Proc, free_port, port_listening, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT_MILTER = os.path.join(HERE, "script_milter.py")
OPENDKIM = shutil.which("opendkim", path="/usr/sbin:/usr/bin") or "/usr/sbin/opendkim"
OPENDMARC = shutil.which("opendmarc", path="/usr/sbin:/usr/bin") or "/usr/sbin/opendmarc"
OPENDKIM_GENKEY = shutil.which("opendkim-genkey", path="/usr/sbin:/usr/bin") or "/usr/sbin/opendkim-genkey"
# a TEST-NET address that never connects: used where a list must not contain 127.0.0.1
NOBODY_HOST = "192.0.2.254"


def safe_tmpdir(prefix):
    """A temp dir (mode 0755, removed at exit unless MGW_KEEP_TMP=1) on a path no other user
    can write to: OpenDKIM refuses a configuration or key file below a world-writable
    directory such as /tmp ("/tmp can be read or written by other users"). Root uses
    /run/miltergw-test, others ~/.cache/miltergw-test."""
    if os.geteuid() == 0:
        base = "/run/miltergw-test"
    else:
        base = os.path.join(os.path.expanduser("~"), ".cache", "miltergw-test")
    os.makedirs(base, mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    d = tempfile.mkdtemp(prefix="%s-" % prefix, dir=base)
    os.chmod(d, 0o755)

    def rm():
        if mgwtest.KEEP_TMP:
            sys.stderr.write("milters: keeping %s\n" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)

    mgwtest.register_cleanup(rm)
    return d


def missing_tools():
    """Names of what the real-milter tests need and this machine lacks (run
    tools/setup-debian.sh)."""
    out = [p for p in (OPENDKIM, OPENDMARC, OPENDKIM_GENKEY) if not os.access(p, os.X_OK)]
    probe = subprocess.run([mgwtest.PYTHON, "-c", "import Milter"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        out.append("python3-milter (%s -c 'import Milter')" % mgwtest.PYTHON)
    return out


def unix_listening(path):
    """True if a unix stream socket bound to `path` is listening (from /proc/net/unix,
    without connecting: a connection would start a milter session)."""
    try:
        with open("/proc/net/unix") as f:
            lines = f.readlines()[1:]
    except OSError:
        return os.path.exists(path)
    for ln in lines:
        f = ln.split()
        # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = accepting
        if len(f) >= 8 and f[7] == path and int(f[3], 16) & 0x10000:
            return True
    return False


class MilterProcess:
    """A milter child process listening on 127.0.0.1:self.port, or with unix=True on the
    unix socket self.socket_path (mode 0666 in a 0755 directory, so Postfix's smtpd, user
    postfix, can connect; self.port is then None)."""

    ready_timeout = 15
    # the exit code SIGTERM normally gives (None: do not check)
    expected_exit = 0

    def __init__(self, name, tmpdir=None, unix=False):
        self.name = name
        self.tmpdir = tmpdir or safe_tmpdir(name)
        self.unix = unix
        if unix:
            self.port = None
            self.socket_path = os.path.join(self.tmpdir, "%s.sock" % name)
            self.spec = "unix:" + self.socket_path
            self.libmilter_spec = "unix:" + self.socket_path
            self.where = self.socket_path
        else:
            self.socket_path = None
            self.port = free_port()
            self.spec = "inet:127.0.0.1:%d" % self.port
            self.libmilter_spec = "inet:%d@127.0.0.1" % self.port
            self.where = "127.0.0.1:%d" % self.port
        self.log_path = os.path.join(self.tmpdir, "%s.log" % name)
        self.proc = None

    def argv(self):
        raise NotImplementedError

    def listening(self):
        return unix_listening(self.socket_path) if self.unix else port_listening(self.port)

    def ready(self):
        return self.listening()

    def start(self):
        self.proc = Proc(self.argv(), self.log_path, name=self.name).start()
        wait_for(lambda: self.ready() or not self.proc.alive(), self.ready_timeout,
                 lambda: "%s to listen on %s; output:\n%s" % (self.name, self.where, self.proc.log_tail()))
        if not self.proc.alive() or not self.listening():
            raise AssertionError("%s exited with %r before listening; output:\n%s"
                                 % (self.name, self.proc.p.returncode, self.proc.log_tail()))
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, expect="default", timeout=10):
        """SIGTERM by PID (SIGKILL after timeout); check the exit code (expect=None: don't)."""
        if self.proc is None:
            return None
        rc = self.proc.stop(timeout=timeout)
        if expect == "default":
            expect = self.expected_exit
        if expect is not None and rc != expect:
            raise AssertionError("%s exit code %r, expected %r; output:\n%s"
                                 % (self.name, rc, expect, self.proc.log_tail()))
        return rc

    def wait_exit(self, timeout):
        return self.proc.wait_exit(timeout)

    def log_text(self):
        return self.proc.log_text() if self.proc else ""


def stop_all(milters):
    """Stop several milters by PID at once: SIGTERM to every one first, then stop() each
    (OpenDKIM and OpenDMARC notice a stop request only at libmilter's next 5 s poll, so
    one by one adds up).
    Raises one AssertionError naming every unexpected exit code, after stopping all."""
    for m in milters:
        if m.alive():
            try:
                os.kill(m.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    problems = []
    for m in milters:
        try:
            m.stop()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        raise AssertionError("\n\n".join(problems))


def postfix_milters(*milters):
    """The smtpd_milters value for milters called in this order."""
    return ", ".join(m.spec if isinstance(m, MilterProcess) else str(m) for m in milters)


def milter_filter_arg(name, milter, **opts):
    """The value of one miltergw `--filter` for a milter backend:
    NAME=SPEC,kind=milter[,key=value...]; opts e.g. phase=2, on_error="tempfail",
    timeout="5s", eom_timeout="30s", mode="shadow"."""
    spec = milter.spec if isinstance(milter, MilterProcess) else str(milter)
    return ",".join(["%s=%s" % (name, spec), "kind=milter"] + ["%s=%s" % kv for kv in opts.items()])


def milter_filter_yaml(name, milter, **opts):
    """The same as one entry of the YAML `filters:` list (for mgwtest.yaml_dump)."""
    spec = milter.spec if isinstance(milter, MilterProcess) else str(milter)
    entry = {"name": name, "kind": "milter", "target": spec}
    entry.update(opts)
    return entry


def write_conf(path, items):
    """An opendkim/opendmarc style configuration file from (name, value) pairs."""
    with open(path, "w") as f:
        for k, v in items:
            f.write("%s %s\n" % (k, v))


# ---------------------------------------------------------------------------------------
# OpenDKIM


class DkimKey:
    """An RSA signing key made by opendkim-genkey into tmpdir."""

    def __init__(self, domain="example.org", selector="mgw", tmpdir=None, bits=2048):
        self.domain, self.selector = domain, selector
        self.dir = tmpdir or safe_tmpdir("dkimkey")
        subprocess.run([OPENDKIM_GENKEY, "--bits=%d" % bits, "--domain=" + domain,
                        "--selector=" + selector, "--directory=" + self.dir],
                       check=True, stdin=subprocess.DEVNULL, timeout=60)
        self.private_path = os.path.join(self.dir, selector + ".private")
        os.chmod(self.private_path, 0o600)
        with open(os.path.join(self.dir, selector + ".txt")) as f:
            zone = f.read()
        # the zone stub is `sel._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=..." )`:
        # the record is the concatenation of its quoted strings
        self.txt_record = "".join(re.findall(r'"([^"]*)"', zone))
        if "p=" not in self.txt_record:
            raise AssertionError("no public key in %s:\n%s" % (self.dir, zone))
        self.dns_name = "%s._domainkey.%s" % (selector, domain)


class OpenDkim(MilterProcess):
    """opendkim -f -x CONF with Socket inet:PORT@127.0.0.1, no syslog, no pid file."""

    def __init__(self, name, conf, extra_conf=None, tmpdir=None, start=True, unix=False):
        super().__init__(name, tmpdir, unix=unix)
        self.conf_path = os.path.join(self.tmpdir, "%s.conf" % name)
        socket_spec = "local:" + self.socket_path if unix else self.libmilter_spec
        items = [("Socket", socket_spec), ("Syslog", "no"), ("UMask", "000" if unix else "022"),
                 ("Background", "no")] + list(conf) + list((extra_conf or {}).items())
        write_conf(self.conf_path, items)
        if start:
            self.start()

    def argv(self):
        return [OPENDKIM, "-f", "-x", self.conf_path]


class OpenDkimSigner(OpenDkim):
    """Signs mail whose From domain is key.domain coming from 127.0.0.1 (the default
    InternalHosts), relaxed/simple, with key.selector."""

    def __init__(self, key, authserv_id="dkim.mgwtest", name="opendkim-sign", extra_conf=None,
                 start=True, unix=False):
        self.key = key
        conf = [("Mode", "s"), ("Domain", key.domain), ("Selector", key.selector),
                ("KeyFile", key.private_path), ("Canonicalization", "relaxed/simple"),
                ("AuthservID", authserv_id)]
        self.authserv_id = authserv_id
        super().__init__(name, conf, extra_conf, start=start, unix=unix)


class OpenDkimVerifier(OpenDkim):
    """Verifies, adding `Authentication-Results: AUTHSERV_ID; dkim=...`. Public keys are
    read from a TestPublicKeys file (`DNSNAME TXT-VALUE` lines), never from DNS.
    InternalHosts is set to an address that never connects, so mail from 127.0.0.1 is
    treated as inbound."""

    def __init__(self, keys, authserv_id="dkim.mgwtest", name="opendkim-verify",
                 extra_conf=None, start=True, unix=False):
        self.authserv_id = authserv_id
        tmpdir = safe_tmpdir(name)
        self.keys_path = os.path.join(tmpdir, "%s.keys" % name)
        with open(self.keys_path, "w") as f:
            for k in keys:
                dns_name, txt = (k.dns_name, k.txt_record) if isinstance(k, DkimKey) else k
                f.write("%s %s\n" % (dns_name, txt))
        conf = [("Mode", "v"), ("AuthservID", authserv_id), ("TestPublicKeys", self.keys_path),
                ("InternalHosts", NOBODY_HOST), ("AlwaysAddARHeader", "yes")]
        super().__init__(name, conf, extra_conf, tmpdir=tmpdir, start=start, unix=unix)


# ---------------------------------------------------------------------------------------
# OpenDMARC


class OpenDmarc(MilterProcess):
    """opendmarc -f -c CONF. Trusts Authentication-Results whose authserv-id is in
    trusted_authserv_ids (OpenDKIM's) and adds its own with authserv_id. DMARC records are
    served from a TestDNSData file (`NAME VALUE` lines) built from `dns`; the DNS is never
    asked. IgnoreHosts names only an address that never connects (its default, 127.0.0.1,
    would make it ignore every test message)."""

    def __init__(self, dns=None, authserv_id="dmarc.mgwtest",
                 trusted_authserv_ids=("dkim.mgwtest",), name="opendmarc", extra_conf=None,
                 start=True, unix=False):
        super().__init__(name, unix=unix)
        self.authserv_id = authserv_id
        self.dns = dict(dns or {})
        self.dns_path = os.path.join(self.tmpdir, "%s.dns" % name)
        with open(self.dns_path, "w") as f:
            for k, v in self.dns.items():
                if "#" in v or "\n" in v:
                    raise ValueError("TestDNSData values cannot hold '#' or a newline: %r" % v)
                f.write("%s %s\n" % (k, v))
        self.ignore_path = os.path.join(self.tmpdir, "%s.ignore-hosts" % name)
        with open(self.ignore_path, "w") as f:
            f.write(NOBODY_HOST + "\n")
        self.conf_path = os.path.join(self.tmpdir, "%s.conf" % name)
        socket_spec = "local:" + self.socket_path if unix else self.libmilter_spec
        items = [("Socket", socket_spec), ("Syslog", "false"), ("UMask", "0" if unix else "022"),
                 ("AuthservID", authserv_id),
                 ("TrustedAuthservIDs", ",".join(trusted_authserv_ids)),
                 ("IgnoreHosts", self.ignore_path), ("TestDNSData", self.dns_path),
                 ("SPFSelfValidate", "false"), ("FailureReports", "false"),
                 ("RejectFailures", "false")] + list((extra_conf or {}).items())
        write_conf(self.conf_path, items)
        if start:
            self.start()

    def argv(self):
        return [OPENDMARC, "-f", "-c", self.conf_path]


# ---------------------------------------------------------------------------------------
# The scriptable pymilter test milter


class ScriptMilter(MilterProcess):
    """tests/integration/script_milter.py with `args` (see its --help). Ready when it
    printed `listening` and its port listens. A milter given --die-at is expected to exit
    with 70 (its os._exit code) when stopped; otherwise 0 (libmilter's SIGTERM handling)."""

    DIE_EXIT = 70

    def __init__(self, *args, name="sm", macros=None, start=True, unix=False):
        super().__init__("script-milter-%s" % name, unix=unix)
        self.args = [str(a) for a in args]
        if macros is not None:
            self.args += ["--macros", ",".join(macros)]
        self.record_path = os.path.join(self.tmpdir, "%s.rec" % self.name)
        self.expected_exit = self.DIE_EXIT if "--die-at" in self.args else 0
        if start:
            self.start()

    def argv(self):
        return [mgwtest.PYTHON, SCRIPT_MILTER, "--socket", self.libmilter_spec,
                "--record", self.record_path, "--name", self.name] + self.args

    def ready(self):
        return "listening socket=" in self.log_text() and self.listening()

    def stop(self, expect="default", timeout=10):
        # a milter meant to die may still be up (the stage never came): then SIGTERM -> 0
        if expect == "default" and self.expected_exit == self.DIE_EXIT and self.alive():
            expect = 0
        return super().stop(expect=expect, timeout=timeout)

    def records(self):
        """Every complete record line so far, as dicts, in order."""
        try:
            with open(self.record_path, "rb") as f:
                data = f.read().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in data.split("\n")[:-1] if l]

    def find(self, event=None, **kv):
        """Records of `event` (any if None) whose keys equal every given value."""
        return [r for r in self.records()
                if (event is None or r["event"] == event) and all(r.get(k) == v for k, v in kv.items())]

    def wait_record(self, event, timeout=15, count=1, **kv):
        """Wait until at least `count` records match find(event, **kv); returns them."""
        return wait_for(lambda: (lambda m: m if len(m) >= count else None)(self.find(event, **kv)),
                        timeout, lambda: "%d x %s record %r from %s; records:\n%s"
                        % (count, event, kv, self.name, self.record_text()[-3000:]))

    def record_text(self):
        try:
            with open(self.record_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def conns(self):
        """{connection number: [records in order]}."""
        out = {}
        for r in self.records():
            out.setdefault(r["conn"], []).append(r)
        return out


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def auth_results(msg, authserv_id):
    """The values of msg's Authentication-Results headers whose authserv-id is
    authserv_id, unfolded (whitespace runs made one space)."""
    out = []
    for n, v in msg.headers:
        if n.lower() != "authentication-results":
            continue
        flat = re.sub(r"\s+", " ", v).strip()
        if flat.split(";", 1)[0].strip().lower() == authserv_id.lower():
            out.append(flat)
    return out


def message_bytes(msg, drop=()):
    """A delivered SinkMessage as a message to send again (CRLF, folding kept), without the
    headers named in `drop` (case-insensitive): how a test passes a message signed by one
    MTA to another."""
    drop = {d.lower() for d in drop}
    head = b"".join(("%s: %s\r\n" % (n, v.replace("\n", "\r\n"))).encode("utf-8", "surrogateescape")
                    for n, v in msg.headers if n.lower() not in drop)
    return head + b"\r\n" + msg.body.replace(b"\n", b"\r\n")
