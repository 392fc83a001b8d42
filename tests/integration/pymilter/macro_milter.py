#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""A pymilter milter in pymilter's documented style that extends the logging Milter.Milter
class, asks for specific macros with @Milter.symlist, turns a callback off again with
@Milter.nocallback and declares only the actions it uses in negotiate (with libmilter
8.14+, Milter.set_flags alone does not: Base.negotiate keeps every action the MTA offers).

Usage: macro_milter.py SOCKET

Adds X-Mail-Addr (the {mail_addr} macro at MAIL), X-Rcpt-Addrs (every {rcpt_addr}),
X-Queue-Id (the i macro at end of message) and X-Disabled (the DisabledAction raised by
chgfrom, which it did not declare) to every message.
"""
import sys

import Milter


class MacroMilter(Milter.Milter):  # connect ... eoh are @noreply (logged) there

    def __init__(self):
        self.id = Milter.uniqueID()
        self.rcpt_addrs = []

    def negotiate(self, opts):
        rc = Milter.Base.negotiate(self, opts)
        opts[0] &= Milter.ADDHDRS | Milter.SETSYMLIST
        self._actions = opts[0]
        return rc

    @Milter.nocallback
    def hello(self, heloname):
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.symlist("{mail_addr}", "{auth_type}")
    def envfrom(self, mailfrom, *params):
        self.mail_addr = self.getsymval("{mail_addr}")
        self.rcpt_addrs = []
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.symlist("{rcpt_addr}")
    def envrcpt(self, to, *params):
        self.rcpt_addrs.append(self.getsymval("{rcpt_addr}"))
        return Milter.CONTINUE

    @Milter.symlist("i")
    def eom(self):
        self.addheader("X-Mail-Addr", self.mail_addr)
        self.addheader("X-Rcpt-Addrs", " ".join(self.rcpt_addrs))
        self.addheader("X-Queue-Id", self.getsymval("i"))
        try:
            self.chgfrom("<other@example.net>")
        except Milter.DisabledAction as e:
            self.addheader("X-Disabled", str(e))
        return Milter.CONTINUE


def main():
    Milter.factory = MacroMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.SETSYMLIST)
    Milter.runmilter("macromilter", sys.argv[1], 240)


if __name__ == "__main__":
    main()
