#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""A pymilter milter in pymilter's documented style that uses every reply and every
message modification, chosen by the message's Subject (or the envelope).

Usage: policy_milter.py SOCKET RELEASEFILE

  HELO bad.helo.example        550 5.7.1 at HELO
  MAIL FROM <reject-sender@..> multi-line 550 at MAIL; <tempfail@...>: 451 at MAIL
  MAIL FROM <nodata@...>       554 at DATA
  RCPT TO <blocked@...>        550 5.1.1 for that recipient; <later@...>: 450 4.2.1
  an unknown SMTP command      550 5.5.1
  Subject: reject at eoh       550 at end of headers
  Subject: reject / tempfail / discard / accept / raise      at end of message
  Subject: addheader / chgheader / addrcpt / delrcpt / chgfrom / replacebody /
           quarantine / progress / skip body / slow         modifications at end of message
Every delivered message gets "X-Policy-Body: <body callbacks> <body bytes>".
"slow" blocks in eom (calling progress()) until RELEASEFILE exists.
"""
import os
import sys
import time

import Milter

RELEASE = None


class PolicyMilter(Milter.Base):

    def __init__(self):
        self.id = Milter.uniqueID()

    def connect(self, hostname, family, hostaddr):
        self.client = hostaddr
        return Milter.CONTINUE

    def hello(self, heloname):
        if heloname == "bad.helo.example":
            self.setreply("550", "5.7.1", "Go away, %s" % heloname)
            return Milter.REJECT
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        self.mailfrom = mailfrom
        self.params = Milter.param2dict(params)
        self.rcpts = []
        self.subject = ""
        self.chunks = 0
        self.bodylen = 0
        if mailfrom == "<reject-sender@example.org>":
            self.setreply("550", "5.7.1", "Sender refused", "by the policy milter")
            return Milter.REJECT
        if mailfrom == "<tempfail@example.org>":
            self.setreply("451", "4.7.1", "Sender deferred")
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        if to.lower() == "<blocked@example.com>":
            self.setreply("550", "5.1.1", "No such user here")
            return Milter.REJECT
        if to.lower() == "<later@example.com>":
            self.setreply("450", "4.2.1", "Mailbox busy, try later")
            return Milter.TEMPFAIL
        self.rcpts.append(to)
        return Milter.CONTINUE

    def data(self):
        if self.mailfrom == "<nodata@example.org>":
            self.setreply("554", "5.7.0", "No data from you")
            return Milter.REJECT
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, hval):
        if name.lower() == "subject":
            self.subject = hval
        return Milter.CONTINUE

    def eoh(self):
        if self.subject == "reject at eoh":
            self.setreply("550", "5.7.1", "Headers refused")
            return Milter.REJECT
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks += 1
        self.bodylen += len(chunk)
        if self.subject == "skip body":
            return Milter.SKIP
        return Milter.CONTINUE

    def unknown(self, cmd):
        self.setreply("550", "5.5.1", "Unknown command refused by policy")
        return Milter.REJECT

    def eom(self):
        s = self.subject
        if s == "reject":
            self.setreply("550", "5.7.1", "Message refused", "by the policy milter", "100%% sure")
            return Milter.REJECT
        if s == "tempfail":
            self.setreply("451", "4.7.1", "Try again later")
            return Milter.TEMPFAIL
        if s == "discard":
            return Milter.DISCARD
        if s == "accept":
            return Milter.ACCEPT
        if s == "raise":
            raise RuntimeError("a bug in the milter")
        self.addheader("X-Policy-Body", "%d %d" % (self.chunks, self.bodylen))
        if s == "addheader":
            self.addheader("X-Appended", "last")
            self.addheader("X-Inserted", "first", 1)
        elif s == "chgheader":
            self.chgheader("X-Change", 1, "changed value")
            self.chgheader("X-Delete", 1, "")
            self.chgheader("X-Multi", 2, "second changed")
        elif s == "addrcpt":
            self.addrcpt("<added@example.net>")
            self.addrcpt("<added-par@example.net>", "NOTIFY=NEVER")
        elif s == "delrcpt":
            for r in self.rcpts:
                if r.startswith("<gone"):
                    self.delrcpt(r)
        elif s == "chgfrom":
            self.chgfrom("<new-sender@example.net>")
        elif s == "replacebody":
            self.replacebody(b"New body, line 1.\r\n")
            self.replacebody("New body, line 2.\r\n")
        elif s == "quarantine":
            self.quarantine("held by the policy milter")
        elif s == "progress":
            for _ in range(3):
                self.progress()
        elif s == "slow":
            while not os.path.exists(RELEASE):
                self.progress()
                time.sleep(0.05)
        return Milter.CONTINUE


def main():
    global RELEASE
    socketname, RELEASE = sys.argv[1], sys.argv[2]
    Milter.factory = PolicyMilter
    Milter.set_exception_policy(Milter.REJECT)
    print("policy milter startup", flush=True)
    Milter.runmilter("policymilter", socketname, 240)
    print("policy milter shutdown", flush=True)


if __name__ == "__main__":
    main()
