# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""pymilter's `Milter` API, served as a miltergw gRPC filter.

A milter written for pymilter (Debian python3-milter) runs as a miltergw filter when its

    import Milter

becomes

    import miltergw.Milter as Milter

(and `from Milter.utils import parse_addr` becomes `from miltergw.Milter.utils import ...`).
Nothing else changes: subclass `Milter.Base`, override the callbacks, mark them with
`@Milter.noreply` / `@Milter.nocallback`, set `Milter.factory`, call
`Milter.runmilter(name, socketname, timeout)`. Instead of libmilter's milter socket,
runmilter serves gRPC (`miltergw.v1.Filter`, plus grpc.health.v1 and server reflection) on
the address given: `inet:PORT@HOST`, `inet:PORT`, `inet6:PORT@ADDR`, `unix:PATH`,
`local:PATH` or gRPC's own `HOST:PORT`; point miltergw at it with
`--filter NAME=HOST:PORT` (or `unix:PATH`).

How the milter protocol maps onto the gateway's (sdk/python/README.md has the full table):
the callbacks you override, minus those marked @nocallback, are the events of the
filter's Description; those marked @noreply are its observe-only events; the actions are
`set_flags()` (default: all); `setsymlist()`/`@symlist` in negotiate become its macro
requests. Each SMTP connection (one gRPC Session stream) gets its own instance from
`factory()`, and its callbacks run in order on a thread of their own.
"""
import os
import re
import threading
from functools import wraps

__version__ = "1.0.5"  # the pymilter API version this module follows

# -- return codes and flags: the values of pymilter's `milter` module (libmilter's SMFIS_*,
# SMFIF_*, SMFIP_*), so code comparing or storing them behaves the same.
CONTINUE = 0
REJECT = 1
DISCARD = 2
ACCEPT = 3
TEMPFAIL = 4
NOREPLY = 7
SKIP = 8
ALL_OPTS = 10
SUCCESS = 0
FAILURE = -1

ADDHDRS = 0x01
CHGBODY = 0x02
MODBODY = CHGBODY
ADDRCPT = 0x04
DELRCPT = 0x08
CHGHDRS = 0x10
QUARANTINE = 0x20
CHGFROM = 0x40
ADDRCPT_PAR = 0x80
SETSYMLIST = 0x100
V1_ACTS = 0x0F
V2_ACTS = 0x3F
CURR_ACTS = 0x1FF

P_NOCONNECT = 0x1
P_NOHELO = 0x2
P_NOMAIL = 0x4
P_NORCPT = 0x8
P_NOBODY = 0x10
P_NOHDRS = 0x20
P_NOEOH = 0x40
P_NR_HDR = 0x80
P_NOUNKNOWN = 0x100
P_NODATA = 0x200
P_SKIP = 0x400
P_RCPT_REJ = 0x800
P_NR_CONN = 0x1000
P_NR_HELO = 0x2000
P_NR_MAIL = 0x4000
P_NR_RCPT = 0x8000
P_NR_DATA = 0x10000
P_NR_UNKN = 0x20000
P_NR_EOH = 0x40000
P_NR_BODY = 0x80000
P_HDR_LEADSPC = 0x100000
ALL_PROTOCOL = 0x1FFFFF  # every protocol bit above: what miltergw offers a filter

M_CONNECT = 0
M_HELO = 1
M_ENVFROM = 2
M_ENVRCPT = 3
M_DATA = 4
M_EOM = 5
M_EOH = 6

VERSION = 0x1000001  # libmilter's SMFI_VERSION that pymilter reports


class error(Exception):
    """What pymilter's milter.error is: an action the MTA would refuse (outside eom, a bad
    reply code, ...)."""


_seq_lock = threading.Lock()
_seq = 0


def uniqueID():
    """A unique sequence number (incremented on each call)."""
    global _seq
    with _seq_lock:
        _seq += 1
        return _seq


OPTIONAL_CALLBACKS = {
    "connect": (P_NR_CONN, P_NOCONNECT),
    "hello": (P_NR_HELO, P_NOHELO),
    "envfrom": (P_NR_MAIL, P_NOMAIL),
    "envrcpt": (P_NR_RCPT, P_NORCPT),
    "data": (P_NR_DATA, P_NODATA),
    "unknown": (P_NR_UNKN, P_NOUNKNOWN),
    "eoh": (P_NR_EOH, P_NOEOH),
    "body": (P_NR_BODY, P_NOBODY),
    "header": (P_NR_HDR, P_NOHDRS),
}

MACRO_CALLBACKS = {
    "connect": M_CONNECT, "hello": M_HELO, "envfrom": M_ENVFROM, "envrcpt": M_ENVRCPT,
    "data": M_DATA, "eom": M_EOM, "eoh": M_EOH,
}

_PERCENT = re.compile(r"%+")


def enable_protocols(klass, mask):
    """Class decorator helper: enable protocol options (P_RCPT_REJ, P_HDR_LEADSPC)."""
    klass._protocol_enabled = getattr(klass, "_protocol_enabled", 0) | mask
    return klass


def rejected_recipients(klass):
    """Class decorator: also see recipients the MTA refused (Description.rejected_recipients)."""
    return enable_protocols(klass, P_RCPT_REJ)


def header_leading_space(klass):
    """Class decorator: header values keep their leading space (header_leading_space)."""
    return enable_protocols(klass, P_HDR_LEADSPC)


def nocallback(func):
    """The filter does not want this event: it is left out of the Description's events.
    The method must still return CONTINUE (it may be called by a test harness)."""
    try:
        func.milter_protocol = OPTIONAL_CALLBACKS[func.__name__][1]
    except KeyError:
        raise ValueError("@nocallback applied to non-optional method: " + func.__name__)

    @wraps(func)
    def wrapper(self, *args):
        if func(self, *args) != CONTINUE:
            raise RuntimeError("%s return code must be CONTINUE with @nocallback" % func.__name__)
        return CONTINUE
    return wrapper


def noreply(func):
    """The filter receives this event but never answers it: it is observe-only in the
    Description, and the gateway does not wait for it. The method must return CONTINUE."""
    try:
        nr_mask = OPTIONAL_CALLBACKS[func.__name__][0]
    except KeyError:
        raise ValueError("@noreply applied to non-optional method: " + func.__name__)

    @wraps(func)
    def wrapper(self, *args):
        rc = func(self, *args)
        if self._protocol & nr_mask:
            if rc != CONTINUE:
                raise RuntimeError("%s return code must be CONTINUE with @noreply" % func.__name__)
            return NOREPLY
        return rc
    wrapper.milter_protocol = nr_mask
    return wrapper


def decode(strategy):
    """How envelope and header values are decoded: 'bytes' (unchanged bytes), 'strict',
    'ignore', 'replace' or the default 'surrogateescape'."""
    def setstrategy(func):
        func.error_strategy = strategy
        return func
    return setstrategy


def symlist(*syms):
    """The macros a callback uses: requested from the MTA for that stage (at most 5)."""
    def setsyms(func):
        if len(syms) > 5:
            raise ValueError("@symlist limited to 5 macros by MTA: " + func.__name__)
        if func.__name__ not in MACRO_CALLBACKS:
            raise ValueError("@symlist applied to non-symlist method: " + func.__name__)
        func._symlist = syms
        return func
    return setsyms


class DisabledAction(RuntimeError):
    """An action the filter did not declare (set_flags) or the MTA did not grant."""


def _decode_all(values, strategy):
    if strategy == "bytes":
        return list(values)
    try:
        return [v.decode("utf-8", strategy) for v in values]
    except UnicodeDecodeError:  # 'strict' and a bad byte: bytes, as pymilter does
        return list(values)


class Base(object):
    """A milter that does nothing: subclass it and override the callbacks you need. One
    instance per SMTP connection, made by `factory()`."""

    def _setctx(self, ctx):
        self._ctx = ctx
        self._actions = CURR_ACTS
        self._protocol = 0
        if ctx:
            ctx.setpriv(self)

    def log(self, *msg):
        pass

    @nocallback
    def connect(self, hostname, family, hostaddr):
        return CONTINUE

    @nocallback
    def hello(self, hostname):
        return CONTINUE

    def envfrom_bytes(self, *b):
        strategy = getattr(self.envfrom, "error_strategy", "surrogateescape")
        s = _decode_all(b, strategy)
        return self.envfrom(s[0], *s[1:])

    @nocallback
    def envfrom(self, f, *s):
        return CONTINUE

    def envrcpt_bytes(self, *b):
        strategy = getattr(self.envrcpt, "error_strategy", "surrogateescape")
        s = _decode_all(b, strategy)
        return self.envrcpt(s[0], *s[1:])

    @nocallback
    def envrcpt(self, to, *str):
        return CONTINUE

    @nocallback
    def data(self):
        return CONTINUE

    def header_bytes(self, fld, val):
        strategy = getattr(self.header, "error_strategy", "surrogateescape")
        if strategy == "bytes":
            return self.header(fld, val)
        return self.header(fld, _decode_all([val], strategy)[0])

    @nocallback
    def header(self, field, value):
        return CONTINUE

    @nocallback
    def eoh(self):
        return CONTINUE

    @nocallback
    def body(self, blk):
        return CONTINUE

    @nocallback
    def unknown(self, cmd):
        return CONTINUE

    def eom(self):
        return CONTINUE

    def abort(self):
        return CONTINUE

    def close(self):
        return CONTINUE

    @classmethod
    def protocol_mask(klass):
        """The protocol bits (P_NO*, P_NR*, P_RCPT_REJ, P_HDR_LEADSPC) this class turns
        off: a callback not marked @nocallback / @noreply wants its event / its reply;
        enable_protocols() turns P_RCPT_REJ / P_HDR_LEADSPC on. Computed from the class
        itself, so a subclass never inherits its parent's answer."""
        if "_protocol_mask" in klass.__dict__:  # set by hand, as pymilter allows
            return klass.__dict__["_protocol_mask"]
        p = P_RCPT_REJ | P_HDR_LEADSPC
        for name, (nr, nc) in OPTIONAL_CALLBACKS.items():
            ca = getattr(getattr(klass, name), "milter_protocol", 0)
            p |= (nr | nc) & ~ca
        return p & ~getattr(klass, "_protocol_enabled", 0)

    def negotiate(self, opts):
        """opts = [actions, protocol, 0, 0] offered; sets opts[1] to the protocol bits this
        milter wants (P_NO* for @nocallback, P_NR* for @noreply) and requests the macros
        of @symlist. Returns CONTINUE, or ALL_OPTS if anything went wrong."""
        try:
            self._actions, p, f1, f2 = opts
            for name, stage in MACRO_CALLBACKS.items():
                syms = getattr(getattr(self, name), "_symlist", None)
                if syms is not None:
                    self.setsymlist(stage, *syms)
            opts[1] = self._protocol = p & ~self.protocol_mask()
            opts[2] = 0
            opts[3] = 0
        except Exception:
            return ALL_OPTS
        return CONTINUE

    # -- calls usable from any callback
    def getsymval(self, sym):
        """The value of MTA macro `sym` ("i", "{auth_authen}"), or None."""
        return self._ctx.getsymval(sym)

    def setreply(self, rcode, xcode=None, msg=None, *ml):
        """The SMTP reply for a REJECT or TEMPFAIL returned by this callback: rcode "4xx" or
        "5xx" (its class must match the verdict, or the MTA's default reply is used),
        xcode "x.y.z" or None, then one or more text lines (several: a multi-line reply).
        A '%' must be doubled, as in pymilter."""
        for m in (msg,) + ml:
            if m is not None and 1 in [len(s) & 1 for s in _PERCENT.findall(m)]:
                raise ValueError("'%' must be doubled: " + m)
        return self._ctx.setreply(rcode, xcode, msg, *ml)

    def setsymlist(self, stage, *macros):
        """Request macros for a stage (M_CONNECT ... M_EOH); only in negotiate."""
        if not self._actions & SETSYMLIST:
            raise DisabledAction("SETSYMLIST")
        if len(macros) > 5:
            raise ValueError("setsymlist limited to 5 macros by MTA")
        names = []
        for m in macros:
            if isinstance(m, bytes):
                m = m.decode("utf-8", "replace")
            names += m.split()
        return self._ctx.setsymlist(stage, names)

    # -- calls usable from eom only
    def addheader(self, field, value, idx=-1):
        """Append a header, or insert it at position idx (0: first)."""
        if not self._actions & ADDHDRS:
            raise DisabledAction("ADDHDRS")
        return self._ctx.addheader(field, value, idx)

    def chgheader(self, field, idx, value):
        """Change the idx-th (1-based) header `field`; an empty or None value deletes it."""
        if not self._actions & CHGHDRS:
            raise DisabledAction("CHGHDRS")
        return self._ctx.chgheader(field, idx, value)

    def addrcpt(self, rcpt, params=None):
        """Add a recipient, optionally with ESMTP parameters (ADDRCPT_PAR)."""
        if not self._actions & ADDRCPT:
            raise DisabledAction("ADDRCPT")
        if params and not self._actions & ADDRCPT_PAR:
            raise DisabledAction("ADDRCPT_PAR")
        return self._ctx.addrcpt(rcpt, params)

    def delrcpt(self, rcpt):
        """Remove a recipient, as it arrived in envrcpt."""
        if not self._actions & DELRCPT:
            raise DisabledAction("DELRCPT")
        return self._ctx.delrcpt(rcpt)

    def replacebody(self, body):
        """Replace the body; call repeatedly with pieces of the new body."""
        if not self._actions & MODBODY:
            raise DisabledAction("MODBODY")
        return self._ctx.replacebody(body)

    def chgfrom(self, sender, params=None):
        """Change the envelope sender, optionally with ESMTP parameters."""
        if not self._actions & CHGFROM:
            raise DisabledAction("CHGFROM")
        return self._ctx.chgfrom(sender, params)

    def quarantine(self, reason):
        """Put the message on hold."""
        if not self._actions & QUARANTINE:
            raise DisabledAction("QUARANTINE")
        return self._ctx.quarantine(reason)

    def progress(self):
        """Tell the gateway to wait longer for this event's answer (restarts its deadline)."""
        return self._ctx.progress()


class Milter(Base):
    """A Base that logs the main callbacks to stdout (pymilter's compatibility class)."""

    def log(self, *msg):  # exactly pymilter's output: each item on a line of its own
        print("Milter:", end=None)
        for i in msg:
            print(i, end=None)
        print()

    @noreply
    def connect(self, hostname, family, hostaddr):
        self.log("connect from %s at %s" % (hostname, hostaddr))
        return CONTINUE

    @noreply
    def hello(self, hostname):
        self.log("hello from %s" % hostname)
        return CONTINUE

    @noreply
    def envfrom(self, f, *str):
        self.log("mail from", f, str)
        return CONTINUE

    @noreply
    def envrcpt(self, to, *str):
        self.log("rcpt to", to, str)
        return CONTINUE

    @noreply
    def header(self, field, value):
        self.log("%s: %s" % (field, value))
        return CONTINUE

    @noreply
    def eoh(self):
        self.log("eoh")
        return CONTINUE

    def eom(self):
        self.log("eom")
        return CONTINUE

    def abort(self):
        self.log("abort")
        return CONTINUE

    def close(self):
        self.log("close")
        return CONTINUE


# The connection factory: called for every SMTP connection (gRPC Session stream), and once
# at start to learn the Description. May be changed while running.
factory = Milter

_flags = CURR_ACTS
_exception_policy = TEMPFAIL
# Seconds runmilter lets open sessions finish after SIGTERM/SIGINT/SIGHUP or stop().
stop_timeout = 5.0
# The most concurrent gRPC calls (SMTP connections, plus health Watch calls) served, each on
# threads of its own created on demand; one more is refused (RESOURCE_EXHAUSTED) and the
# gateway applies the filter's on_error to that connection. Set before runmilter.
max_sessions = 1000
# Take the SMTP connections on few gRPC streams (filter.proto Description.multiplexed): the
# gateway then opens a stream per up to 128 connections instead of one each, which saves it
# about 12 KB per idle connection and both sides a stream's work per connection. Nothing
# changes for the milter: each connection still gets its own instance, its callbacks in
# order on a thread of its own. max_sessions then counts connections: one more has every
# event answered TEMPFAIL (451 4.3.2). Set before runmilter, or run an unchanged milter
# with MILTERGW_MULTIPLEXED=1 in its environment.
multiplexed = os.environ.get("MILTERGW_MULTIPLEXED", "") not in ("", "0")
_diag = [0, 0]  # instances created, instances closed


def set_flags(flags):
    """The actions registered for this milter (ADDHDRS|CHGBODY|...; default all). As in
    pymilter on libmilter 8.14+, they count only when negotiate() returns ALL_OPTS: the
    Description's actions are what negotiate() leaves in opts[0] (Base.negotiate: all
    of them). Narrow opts[0] in negotiate() to declare fewer."""
    global _flags
    _flags = flags


def set_exception_policy(code):
    """The answer when a callback raises (or returns something that is not a return code):
    TEMPFAIL (default), REJECT, CONTINUE or ACCEPT. The traceback goes to stderr."""
    global _exception_policy
    if code not in (TEMPFAIL, REJECT, CONTINUE, ACCEPT):
        raise ValueError("exception policy must be TEMPFAIL, REJECT, CONTINUE or ACCEPT")
    _exception_policy = code


def getdiag():
    """(instances created, instances closed)."""
    return tuple(_diag)


def getversion():
    """The libmilter version pymilter would report: the API this module implements."""
    return (1, 0, 1)


def dictfromlist(args):
    """ESMTP parameters with a value as a dictionary (deprecated; see param2dict)."""
    kw = {}
    for s in args:
        pos = s.find("=")
        if pos > 0:
            kw[s[:pos].upper()] = s[pos + 1:]
    return kw


def param2dict(str):
    """ESMTP parameters ["NAME=VALUE", "NAME"] as {"NAME": "VALUE", "NAME": None}."""
    out = {}
    for s in str:
        k, sep, v = s.partition("=")
        out[k.upper()] = v if sep else None
    return out


def envcallback(c, args):
    """Call c(address, *plain_params, **NAME=VALUE params)."""
    kw, pargs = {}, [args[0]]
    for s in args[1:]:
        pos = s.find("=")
        if pos > 0:
            kw[s[:pos].upper()] = s[pos + 1:]
        else:
            pargs.append(s)
    return c(*pargs, **kw)


def runmilter(name, socketname, timeout=0, rmsock=True):
    """Serve the milter as a miltergw gRPC filter named `name` on `socketname` until
    SIGTERM, SIGHUP or SIGINT (or stop()); then report NOT_SERVING, let open sessions
    finish for `stop_timeout` seconds and return. `timeout` is accepted and unused (the
    gateway's per-filter timeout applies); `rmsock` removes a stale unix socket file."""
    from miltergw import _server
    _server.run(name, socketname, rmsock=rmsock)


def stop():
    """Stop a running runmilter (from another thread or a callback)."""
    from miltergw import _server
    _server.stop()
