#!/usr/bin/python3
"""Demo: real mail through a private Postfix and miltergw, summarised as a table.

Starts miltergw and a private Postfix (loopback, free ports, relaying to smtp-sink), sends
a few mails with swaks and smtplib, and prints, for each, what the SMTP client was told and
what was delivered. Everything started here is stopped by PID at the end, also on error.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import mgwtest  # noqa: E402
from mgwtest import make_message, queue_id  # noqa: E402


def row(cols, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--miltergw", required=True)
    args = ap.parse_args()
    mgwtest.MILTERGW = os.path.abspath(args.miltergw)

    gw = mgwtest.Miltergw()
    pf = None
    results = []
    try:
        pf = mgwtest.PrivatePostfix(gw.spec)
        print("miltergw listening on %s; Postfix on 127.0.0.1:%d; smtp-sink on 127.0.0.1:%d\n"
              % (gw.spec, pf.port, pf.sink_port))
        mails = [
            ("clean mail", "alice@example.org", ["bob@example.com"],
             make_message("Lunch on Friday?", b"Shall we meet at noon?\r\n")[0]),
            ("three recipients", "alice@example.org",
             ["bob@example.com", "carol@example.com", "dave@example.com"],
             make_message("Team update", b"Release is on track.\r\n")[0]),
            ("300 KB body", "reports@example.org", ["archive@example.com"],
             make_message("Monthly report", (b"y" * 78 + b"\r\n") * 3800)[0]),
        ]
        for label, frm, to, data in mails:
            status, transcript = pf.swaks(to=to, from_=frm, data=data)
            qid = queue_id(transcript)
            msg = pf.wait_delivered_id(qid) if status == 0 and qid else None
            results.append((label, "250 queued as %s" % qid if status == 0 else "swaks exit %d" % status,
                            "yes (%d rcpt, %d body bytes)" % (len(msg.rcpts), len(msg.body)) if msg else "no"))
        # Two messages in one SMTP session: one milter connection, two transactions.
        session = pf.smtp_session([
            ("alice@example.org", ["bob@example.com"], make_message("first of two", b"one\r\n")[0]),
            ("alice@example.org", ["bob@example.com"], make_message("second of two", b"two\r\n")[0]),
        ])
        for i, res in enumerate(session):
            code, text = res["data"]
            qid = queue_id(text)
            msg = pf.wait_delivered_id(qid) if code == 250 and qid else None
            results.append(("same session, message %d" % (i + 1), "%d %s" % (code, text[:30]),
                            "yes (%d body bytes)" % len(msg.body) if msg else "no"))
        pf.probe()
        results.append(("bare port probe", "connection closed", "nothing to deliver"))
    finally:
        if pf is not None:
            pf.stop()
        code = gw.stop(expect=None)

    widths = [26, 34, 30]
    print(row(("mail", "SMTP client was told", "delivered"), widths))
    print(row(("-" * 26, "-" * 34, "-" * 30), widths))
    for r in results:
        print(row(r, widths))
    print("\nmiltergw exited with %s after SIGTERM; %d log lines, no errors: %s"
          % (code, len(gw.log_lines()), not gw.error_lines()))
    print("(no filter is configured yet, so miltergw acts as a null milter: every event "
          "continues and every message is accepted; filters come with the gRPC bridge)")
    return 0 if all(r[2] != "no" for r in results) and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
