#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""A pymilter milter in pymilter's documented style that records every callback.

Usage: trace_milter.py SOCKET TRACEFILE   (SOCKET as pymilter takes it: inet:PORT@HOST)

Every callback is overridden (so every milter step is negotiated) and appends one JSON
line [callback, args..., {macros}] to TRACEFILE; eom adds the header
"X-Trace: <number of callbacks of this connection so far>". The test suite runs this very
file under pymilter (libmilter) and, with only its import changed, under miltergw, and
compares the two traces.
"""
import json
import sys
import threading

import Milter

TRACE = None
LOCK = threading.Lock()
MACROS = ("j", "{daemon_name}", "_", "i", "{mail_addr}", "{rcpt_addr}", "{auth_type}")


class TraceMilter(Milter.Base):

    def __init__(self):
        self.id = Milter.uniqueID()
        self.n = 0

    def record(self, name, *args):
        self.n += 1
        macros = {m: self.getsymval(m) for m in MACROS}
        line = [name, self.id] + [a.decode("latin-1") if isinstance(a, bytes) else a for a in args]
        line.append({k: v for k, v in macros.items() if v is not None})
        with LOCK:
            with open(TRACE, "a") as f:
                f.write(json.dumps(line) + "\n")

    def connect(self, hostname, family, hostaddr):
        self.record("connect", hostname, family, hostaddr)
        return Milter.CONTINUE

    def hello(self, heloname):
        self.record("hello", heloname)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        self.record("envfrom", mailfrom, *params)
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        self.record("envrcpt", to, *params)
        return Milter.CONTINUE

    def data(self):
        self.record("data")
        return Milter.CONTINUE

    def header(self, name, hval):
        self.record("header", name, hval)
        return Milter.CONTINUE

    def eoh(self):
        self.record("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        self.record("body", type(chunk).__name__, len(chunk))
        return Milter.CONTINUE

    def unknown(self, cmd):
        self.record("unknown", cmd)
        return Milter.CONTINUE

    def eom(self):
        self.record("eom")
        self.addheader("X-Trace", str(self.n))
        return Milter.CONTINUE

    def abort(self):
        self.record("abort")
        return Milter.CONTINUE

    def close(self):
        self.record("close")
        return Milter.CONTINUE


def main():
    global TRACE
    socketname, TRACE = sys.argv[1], sys.argv[2]
    Milter.factory = TraceMilter
    Milter.set_flags(Milter.ADDHDRS)
    print("trace milter startup", flush=True)
    Milter.runmilter("tracemilter", socketname, 240)
    print("trace milter shutdown", flush=True)


if __name__ == "__main__":
    main()
