#!/usr/bin/python3
"""script_milter.py - a scriptable test milter on Debian's pymilter (python3-milter).

It speaks milter v6 through libmilter (the real library MTAs are tested against), records
every callback it gets as one JSON line in --record FILE, and does what its options say at
each stage. Used by tests/integration (see milters.py: ScriptMilter).

Usage:
  script_milter.py --socket inet:PORT@127.0.0.1 --record FILE [options]

Readiness: once the socket listens it prints `listening socket=SPEC pid=N` on stdout (and
writes the same line to --ready-file if given). SIGTERM/SIGINT/SIGHUP: exit 0 at once.

Record lines (JSON objects, one per line, each one write(2) on an O_APPEND fd):
  {"conn": N, "event": E, "t": monotonic seconds, "macros": {name: value}, ...}
  event  extra keys
  negotiate  offered_actions, offered_protocol, actions, protocol (what was requested)
  connect    hostname, family, addr
  helo       arg
  mail/rcpt  args (address first, then ESMTP parameters)
  data       -
  header     name, value
  eoh        -
  body       len, sha256 (of this chunk)
  eom        headers [[name, value]...], body_len, body_sha256 (whole body), mods (applied),
             errors (modifications libmilter refused, e.g. an action not negotiated)
  abort, close, unknown (arg)
  verdict    stage, verdict, reply (when a stage answered something other than continue)
Macros are those of --macros (names as the MTA sends them: i, j, {mail_addr}, ...) that
have a value at that callback.

Stage options (STAGE = connect helo mail rcpt data header eoh body eom):
  --at STAGE[/MATCH]=VERDICT[:CODE[:XCODE[:TEXT]]]
      VERDICT = continue accept reject tempfail discard skip; CODE/XCODE/TEXT go to
      setreply (a literal \\n in TEXT separates the lines of a multi-line reply). MATCH (optional) limits it to callbacks whose argument contains MATCH (the
      address for mail/rcpt, the header name for header, the HELO name for helo).
      Repeatable; the first matching rule wins.
  --hang-at STAGE   sleep (an hour) inside that callback: far past any deadline
  --die-at STAGE    os._exit(70) inside that callback: the process dies mid-message
EOM modifications, applied in the order given (repeatable):
  --addheader NAME:VALUE          --insheader IDX:NAME:VALUE
  --chgheader NAME:IDX:VALUE      (empty VALUE deletes the header)
  --addrcpt ADDR                  --addrcpt-par ADDR:PARAMS
  --delrcpt ADDR                  --chgfrom ADDR[:PARAMS]
  --replacebody TEXT              (\\n in TEXT is turned into CRLF; @FILE reads FILE)
  --quarantine REASON             --progress N (call smfi_progress N times)
  --slow-eom SECONDS:INTERVAL     at EOM, before the modifications, take SECONDS, calling
                                  smfi_progress every INTERVAL seconds meanwhile
  --copy-header NAME   at EOM add `X-Seen-NAME: <value of NAME as received>` ("(absent)")
Negotiation:
  --actions LIST       actions to request (names ADDHDRS,CHGBODY,ADDRCPT,DELRCPT,CHGHDRS,
                       QUARANTINE,CHGFROM,ADDRCPT_PAR,SETSYMLIST, or 0xHEX, or "offered",
                       the default). libmilter itself refuses (closes the connection) if
                       this asks for more than the MTA offered.
  --protocol LIST      protocol bits to request (NR_HDR, SKIP, HDR_LEADSPC, NOBODY, ...
                       or 0xHEX); default none. Same libmilter check.
  --symlist STAGE:MACROS  smfi_setsymlist (STAGE = connect helo mail rcpt data eoh eom;
                       MACROS space separated); needs SETSYMLIST negotiated.
  --macros LIST        comma-separated macro names to record (default: a Postfix set)
"""
import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time

import Milter
import milter

DIE_EXIT = 70
HANG_SECONDS = 3600
STAGES = ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom")
VERDICTS = {"continue": Milter.CONTINUE, "accept": Milter.ACCEPT, "reject": Milter.REJECT,
            "tempfail": Milter.TEMPFAIL, "discard": Milter.DISCARD, "skip": Milter.SKIP}
ACTION_BITS = {"ADDHDRS": 0x01, "CHGBODY": 0x02, "ADDRCPT": 0x04, "DELRCPT": 0x08,
               "CHGHDRS": 0x10, "QUARANTINE": 0x20, "CHGFROM": 0x40, "ADDRCPT_PAR": 0x80,
               "SETSYMLIST": 0x100}
PROTOCOL_BITS = {
    "NOCONNECT": 0x1, "NOHELO": 0x2, "NOMAIL": 0x4, "NORCPT": 0x8, "NOBODY": 0x10,
    "NOHDRS": 0x20, "NOEOH": 0x40, "NR_HDR": 0x80, "NOUNKNOWN": 0x100, "NODATA": 0x200,
    "SKIP": 0x400, "RCPT_REJ": 0x800, "NR_CONN": 0x1000, "NR_HELO": 0x2000,
    "NR_MAIL": 0x4000, "NR_RCPT": 0x8000, "NR_DATA": 0x10000, "NR_UNKN": 0x20000,
    "NR_EOH": 0x40000, "NR_BODY": 0x80000, "HDR_LEADSPC": 0x100000,
}
SYMLIST_STAGES = {"connect": Milter.M_CONNECT, "helo": Milter.M_HELO, "mail": Milter.M_ENVFROM,
                  "rcpt": Milter.M_ENVRCPT, "data": Milter.M_DATA, "eoh": Milter.M_EOH,
                  "eom": Milter.M_EOM}
DEFAULT_MACROS = "j,_,{daemon_name},{daemon_addr},{client_addr},{client_name},v,i,{auth_type}," \
                 "{auth_authen},{mail_addr},{mail_host},{mail_mailer},{rcpt_addr},{rcpt_host}," \
                 "{rcpt_mailer},{tls_version},{cipher}"

OPTS = None
_out_fd = None
_out_lock = threading.Lock()
_conn_seq = 0


def record(conn, event, **kv):
    rec = {"conn": conn.id if conn else 0, "event": event, "t": round(time.monotonic(), 6)}
    if conn is not None and event not in ("negotiate", "close"):
        rec["macros"] = conn.macros()
    rec.update(kv)
    line = (json.dumps(rec, sort_keys=True) + "\n").encode()
    with _out_lock:
        os.write(_out_fd, line)


def text(b):
    """bytes from libmilter -> str (undecodable bytes kept as surrogates, JSON-escaped)."""
    if isinstance(b, bytes):
        return b.decode("utf-8", "surrogateescape")
    return b


def parse_mask(value, table, what):
    mask = 0
    for name in value.replace("|", ",").split(","):
        name = name.strip()
        if not name:
            continue
        if name.lower().startswith("0x"):
            mask |= int(name, 16)
        elif name.upper() in table:
            mask |= table[name.upper()]
        else:
            raise SystemExit("script_milter: unknown %s %r" % (what, name))
    return mask


class Conn:
    """One MTA connection (libmilter context)."""

    def __init__(self, ctx):
        global _conn_seq
        with _out_lock:
            _conn_seq += 1
            self.id = _conn_seq
        self.ctx = ctx
        self.reset_message()

    def reset_message(self):
        self.headers = []
        self.body = hashlib.sha256()
        self.body_len = 0

    def macros(self):
        out = {}
        if self.ctx is None:
            return out
        for name in OPTS.macro_names:
            try:
                v = self.ctx.getsymval(name)
            except Exception:  # noqa: BLE001 - a macro the MTA did not send
                v = None
            if v is not None:
                out[name] = text(v)
        return out

    def stage(self, stage, arg=""):
        """Hang or die if told to; return the scripted verdict for this stage."""
        if stage in OPTS.die_at:
            record(self, "die", stage=stage)
            os._exit(DIE_EXIT)
        if stage in OPTS.hang_at:
            record(self, "hang", stage=stage)
            time.sleep(HANG_SECONDS)
        for st, match, verdict, reply in OPTS.rules:
            if st != stage or (match is not None and match.lower() not in arg.lower()):
                continue
            if reply:
                try:
                    self.ctx.setreply(*reply)
                except Exception as e:  # noqa: BLE001
                    record(self, "error", stage=stage, op="setreply", error=repr(e))
            record(self, "verdict", stage=stage, verdict=verdict, reply=list(reply))
            return VERDICTS[verdict]
        return Milter.CONTINUE


def conn_of(ctx):
    c = ctx.getpriv()
    if c is None:  # an MTA without SMFIC_OPTNEG callback support
        c = Conn(ctx)
        ctx.setpriv(c)
    return c


# ---------------------------------------------------------------------------------------
# libmilter callbacks


def cb_negotiate(ctx, opts):
    c = Conn(ctx)
    ctx.setpriv(c)
    offered_a, offered_p = opts[0], opts[1]
    actions = offered_a if OPTS.actions is None else OPTS.actions
    protocol = OPTS.protocol
    if OPTS.symlist:
        for stage, macros in OPTS.symlist:
            try:
                ctx.setsymlist(SYMLIST_STAGES[stage], macros)
            except Exception as e:  # noqa: BLE001
                record(c, "error", stage="negotiate", op="setsymlist", error=repr(e))
    opts[0], opts[1], opts[2], opts[3] = actions, protocol, 0, 0
    record(c, "negotiate", offered_actions=offered_a, offered_protocol=offered_p,
           actions=actions, protocol=protocol)
    return Milter.CONTINUE


def cb_connect(ctx, hostname, family, hostaddr):
    c = conn_of(ctx)
    addr = hostaddr if isinstance(hostaddr, str) else list(hostaddr) if hostaddr else None
    record(c, "connect", hostname=text(hostname), family=int(family), addr=addr)
    return c.stage("connect", text(hostname))


def cb_helo(ctx, name):
    c = conn_of(ctx)
    record(c, "helo", arg=text(name))
    return c.stage("helo", text(name))


def cb_mail(ctx, *args):
    c = conn_of(ctx)
    c.reset_message()
    a = [text(x) for x in args]
    record(c, "mail", args=a)
    return c.stage("mail", a[0] if a else "")


def cb_rcpt(ctx, *args):
    c = conn_of(ctx)
    a = [text(x) for x in args]
    record(c, "rcpt", args=a)
    return c.stage("rcpt", a[0] if a else "")


def cb_data(ctx):
    c = conn_of(ctx)
    record(c, "data")
    return c.stage("data")


def cb_header(ctx, name, value):
    c = conn_of(ctx)
    name, value = text(name), text(value)
    c.headers.append([name, value])
    record(c, "header", name=name, value=value)
    return c.stage("header", name)


def cb_eoh(ctx):
    c = conn_of(ctx)
    record(c, "eoh")
    return c.stage("eoh")


def cb_body(ctx, chunk):
    c = conn_of(ctx)
    c.body.update(chunk)
    c.body_len += len(chunk)
    record(c, "body", len=len(chunk), sha256=hashlib.sha256(chunk).hexdigest())
    return c.stage("body")


def cb_eom(ctx):
    c = conn_of(ctx)
    record(c, "eom", headers=c.headers, body_len=c.body_len, body_sha256=c.body.hexdigest())
    if "eom" in OPTS.die_at or "eom" in OPTS.hang_at:
        c.stage("eom")
    if OPTS.slow_eom:
        secs, _, every = OPTS.slow_eom.partition(":")
        end = time.monotonic() + float(secs)
        n = 0
        while time.monotonic() < end:
            ctx.progress()
            n += 1
            time.sleep(min(float(every), max(0.0, end - time.monotonic())))
        record(c, "slow_eom", progress=n)
    applied, errors = [], []
    mods = list(OPTS.mods)
    for name in OPTS.copy_header:
        value = next((v for n, v in c.headers if n.lower() == name.lower()), "(absent)")
        mods.append(("addheader", "X-Seen-%s:%s" % (name, value)))
    for op, val in mods:
        try:
            apply_mod(ctx, op, val)
            applied.append([op, val])
        except Exception as e:  # noqa: BLE001 - libmilter refused: recorded for the test
            errors.append([op, val, repr(e)])
    record(c, "eom_done", mods=applied, errors=errors)
    verdict = c.stage("eom")
    c.reset_message()
    return verdict


def apply_mod(ctx, op, val):
    if op == "addheader":
        name, _, value = val.partition(":")
        ctx.addheader(name, value, -1)
    elif op == "insheader":
        idx, name, value = split_n(val, 3)
        ctx.addheader(name, value, int(idx))
    elif op == "chgheader":
        name, idx, value = split_n(val, 3)
        ctx.chgheader(name, int(idx), value)
    elif op == "addrcpt":
        ctx.addrcpt(val, None)
    elif op == "addrcpt_par":
        addr, _, params = val.partition(":")
        ctx.addrcpt(addr, params)
    elif op == "delrcpt":
        ctx.delrcpt(val)
    elif op == "chgfrom":
        addr, _, params = val.partition(":")
        ctx.chgfrom(addr, params or None)
    elif op == "replacebody":
        if val.startswith("@"):
            with open(val[1:], "rb") as f:
                body = f.read()
        else:
            body = val.replace("\\n", "\r\n").encode()
        ctx.replacebody(body)
    elif op == "quarantine":
        ctx.quarantine(val)
    elif op == "progress":
        for _ in range(int(val)):
            ctx.progress()
    else:
        raise ValueError("unknown modification %s" % op)


def split_n(val, n):
    parts = val.split(":", n - 1)
    if len(parts) != n:
        raise ValueError("expected %d ':'-separated fields in %r" % (n, val))
    return parts


def cb_abort(ctx):
    c = conn_of(ctx)
    record(c, "abort")
    c.reset_message()
    return Milter.CONTINUE


def cb_close(ctx):
    c = ctx.getpriv()
    if c is not None:
        record(c, "close")
        c.ctx = None
        ctx.setpriv(None)
    return Milter.CONTINUE


def cb_unknown(ctx, cmd):
    c = conn_of(ctx)
    record(c, "unknown", arg=text(cmd))
    return Milter.CONTINUE


# ---------------------------------------------------------------------------------------


class _Mod(argparse.Action):
    """Keep every modification option in one list, in command-line order."""

    def __call__(self, parser, ns, values, option_string=None):
        ns.mods.append((self.dest, values))


def parse_args(argv):
    ap = argparse.ArgumentParser(description="scriptable pymilter test milter")
    ap.add_argument("--socket", required=True, help="libmilter socket, inet:PORT@127.0.0.1")
    ap.add_argument("--record", required=True, help="JSON lines file, appended to")
    ap.add_argument("--ready-file", help="also write the readiness line there")
    ap.add_argument("--name", default="script_milter")
    ap.add_argument("--timeout", type=int, default=0, help="libmilter I/O timeout (s)")
    ap.add_argument("--macros", default=DEFAULT_MACROS)
    ap.add_argument("--at", action="append", default=[], metavar="STAGE[/MATCH]=VERDICT[:CODE[:XCODE[:TEXT]]]")
    ap.add_argument("--hang-at", action="append", default=[], choices=STAGES)
    ap.add_argument("--die-at", action="append", default=[], choices=STAGES)
    ap.set_defaults(mods=[])
    for opt in ("addheader", "insheader", "chgheader", "addrcpt", "addrcpt-par", "delrcpt",
                "chgfrom", "replacebody", "quarantine", "progress"):
        ap.add_argument("--" + opt, dest=opt.replace("-", "_"), action=_Mod)
    ap.add_argument("--copy-header", action="append", default=[])
    ap.add_argument("--slow-eom", metavar="SECONDS:INTERVAL")
    ap.add_argument("--actions", default="offered")
    ap.add_argument("--protocol", default="")
    ap.add_argument("--symlist", action="append", default=[], metavar="STAGE:MACROS")
    a = ap.parse_args(argv)
    a.macro_names = [m for m in a.macros.split(",") if m]
    a.actions = None if a.actions == "offered" else parse_mask(a.actions, ACTION_BITS, "action")
    a.protocol = parse_mask(a.protocol, PROTOCOL_BITS, "protocol bit")
    a.rules = []
    for spec in a.at:
        lhs, sep, rhs = spec.partition("=")
        if not sep:
            ap.error("--at %r: expected STAGE=VERDICT" % spec)
        stage, _, match = lhs.partition("/")
        fields = rhs.split(":", 3)
        verdict = fields[0].lower()
        if stage not in STAGES or verdict not in VERDICTS:
            ap.error("--at %r: unknown stage or verdict" % spec)
        reply = tuple(f if f else None for f in fields[1:])
        if len(reply) == 3 and reply[2] and "\\n" in reply[2]:
            reply = reply[:2] + tuple(reply[2].split("\\n"))
        a.rules.append((stage, match or None, verdict, reply))
    sl = []
    for spec in a.symlist:
        stage, _, macros = spec.partition(":")
        if stage not in SYMLIST_STAGES:
            ap.error("--symlist %r: unknown stage" % spec)
        sl.append((stage, macros))
    a.symlist = sl
    return a


def main(argv=None):
    global OPTS, _out_fd
    OPTS = parse_args(sys.argv[1:] if argv is None else argv)
    _out_fd = os.open(OPTS.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    milter.set_connect_callback(cb_connect)
    milter.set_helo_callback(cb_helo)
    milter.set_envfrom_callback(cb_mail)
    milter.set_envrcpt_callback(cb_rcpt)
    milter.set_header_callback(cb_header)
    milter.set_eoh_callback(cb_eoh)
    milter.set_body_callback(cb_body)
    milter.set_eom_callback(cb_eom)
    milter.set_abort_callback(cb_abort)
    milter.set_close_callback(cb_close)
    # a callback that raises answers tempfail (and the test sees it in the output)
    milter.set_exception_policy(Milter.TEMPFAIL)
    milter.setconn(OPTS.socket)
    if OPTS.timeout > 0:
        milter.settimeout(OPTS.timeout)
    milter.register(OPTS.name, data=cb_data, unknown=cb_unknown, negotiate=cb_negotiate)
    milter.opensocket(True)
    for prefix in ("unix:", "local:"):
        if OPTS.socket.startswith(prefix):  # let the MTA's user (postfix) connect
            os.chmod(OPTS.socket[len(prefix):], 0o666)
    line = "listening socket=%s pid=%d\n" % (OPTS.socket, os.getpid())
    if OPTS.ready_file:
        with open(OPTS.ready_file + ".tmp", "w") as f:
            f.write(line)
        os.rename(OPTS.ready_file + ".tmp", OPTS.ready_file)
    sys.stdout.write(line)
    sys.stdout.flush()
    # libmilter notices SIGTERM only at its next poll (up to 5 s later). Its main loop runs
    # in a thread here, so the signal reaches this (main) thread's Python handler at once,
    # and every record is already written: exit 0 straight away.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os._exit(0))
    result = {}

    def run():
        try:
            milter.main()
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=run, name="libmilter", daemon=True)
    t.start()
    while t.is_alive():
        t.join(1)
    if "error" in result:
        sys.stderr.write("script_milter: %r\n" % (result["error"],))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
