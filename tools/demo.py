#!/usr/bin/python3
"""Demo: real mail through a private Postfix, miltergw and two gRPC filters.

Starts two filter services (the project's C test filter: "tagger" adds a header to every
message, "policy" refuses one recipient), miltergw in front of them, and a private Postfix
(loopback, free ports, relaying to smtp-sink). Sends a few mails with swaks and smtplib and
prints, for each, what the SMTP client was told and what was delivered. Everything started
here is stopped by PID at the end, also on error.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import mgwtest  # noqa: E402
from mgwtest import make_message, queue_id  # noqa: E402


def start_filter(binary, name, flags):
    return name, mgwtest.TestFilter(["--name", name] + flags, binary=binary, name=name,
                                    record=False)


def told(transcript):
    """The SMTP replies that mattered: refusals at RCPT, then the final reply to DATA."""
    lines = [ln[4:].strip() for ln in transcript.splitlines() if ln.startswith("<~~ ") or
             ln.startswith("<** ") or ln.startswith(" <-") or ln.startswith("<-")]
    refusals = [ln for ln in lines if ln[:1] in "45"]
    final = lines[-2] if len(lines) >= 2 else "?"
    return "; ".join(refusals + ([final] if not refusals or final[:1] == "2" else []))[:52]


def delivered(msg):
    if msg is None:
        return "no"
    tag = msg.header("X-Scanned-By")
    return "%d rcpt, %d B%s" % (len(msg.rcpts), len(msg.body),
                                ", X-Scanned-By: %s" % tag if tag else "")


def row(cols, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--miltergw", required=True)
    ap.add_argument("--test-filter", required=True)
    args = ap.parse_args()
    mgwtest.MILTERGW = os.path.abspath(args.miltergw)

    filters = []
    gw = pf = None
    results = []
    try:
        filters.append(start_filter(args.test_filter, "tagger",
                                    ["--add-header", "X-Scanned-By:miltergw demo tagger"]))
        filters.append(start_filter(args.test_filter, "policy",
                                    ["--reject-rcpt", "mallory@example.com", "--code", "550",
                                     "--xcode", "5.7.1", "--text", "Recipient refused by policy"]))
        gw = mgwtest.Miltergw(args=[a for name, f in filters
                                    for a in ("--filter", "%s=%s" % (name, f.target))])
        pf = mgwtest.PrivatePostfix(gw.spec)
        print("filters: tagger on %s, policy on %s\nmiltergw on %s; Postfix on 127.0.0.1:%d; "
              "smtp-sink on 127.0.0.1:%d\n" % (filters[0][1].target, filters[1][1].target,
                                                 gw.spec, pf.port, pf.sink_port))
        mails = [
            ("clean mail", "alice@example.org", ["bob@example.com"],
             make_message("Lunch on Friday?", b"Shall we meet at noon?\r\n")[0]),
            ("three recipients, one refused", "alice@example.org",
             ["bob@example.com", "mallory@example.com", "dave@example.com"],
             make_message("Team update", b"Release is on track.\r\n")[0]),
            ("only a refused recipient", "alice@example.org", ["mallory@example.com"],
             make_message("Hello Mallory", b"Hi.\r\n")[0]),
            ("300 KB body", "reports@example.org", ["archive@example.com"],
             make_message("Monthly report", (b"y" * 78 + b"\r\n") * 3800)[0]),
        ]
        for label, frm, to, data in mails:
            status, transcript = pf.swaks(to=to, from_=frm, data=data)
            qid = queue_id(transcript) if "queued as" in transcript else None
            msg = pf.wait_delivered_id(qid) if status == 0 and qid else None
            results.append((label, told(transcript), delivered(msg)))
        # Two messages in one SMTP session: one milter connection, two transactions.
        session = pf.smtp_session([
            ("alice@example.org", ["bob@example.com"], make_message("first of two", b"one\r\n")[0]),
            ("alice@example.org", ["bob@example.com"], make_message("second of two", b"two\r\n")[0]),
        ])
        for i, res in enumerate(session):
            code, text = res["data"]
            qid = queue_id(text) if "queued as" in text else None
            msg = pf.wait_delivered_id(qid) if code == 250 and qid else None
            results.append(("same session, message %d" % (i + 1), "%d %s" % (code, text[:30]),
                            delivered(msg)))
        pf.probe()
        results.append(("bare port probe", "connection closed", "-"))
    finally:
        if pf is not None:
            pf.stop()
        code = gw.stop(expect=None) if gw is not None else None
        for _, f in filters:
            f.stop()

    widths = [30, 52, 52]
    print(row(("mail", "SMTP client was told", "delivered"), widths))
    print(row(("-" * 30, "-" * 52, "-" * 52), widths))
    for r in results:
        print(row(r, widths))
    print("\nmiltergw exited with %s after SIGTERM; %d log lines, no errors: %s"
          % (code, len(gw.log_lines()), not gw.error_lines()))
    ok = (code == 0 and "X-Scanned-By" in results[0][2] and "550 5.7.1" in results[2][1]
          and results[2][2] == "no" and "2 rcpt" in results[1][2])
    print("demo %s" % ("ok" if ok else "FAILED: not what the filters should have done"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
