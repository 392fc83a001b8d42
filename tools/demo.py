#!/usr/bin/python3
"""Demo: real mail through a private Postfix, miltergw and three filters in three languages.

Starts, on loopback with free ports, the project's example filters (examples/):
  py    Python   reject-subject viagra             refuses a message whose Subject has the word
  node  Node.js  tempfail-rcpt mallory@example.com  refuses that recipient, for now (4xx)
  c     C        addheader X-Scanned-By miltergw-demo   tags every delivered message
then miltergw with the three (`--filter` order = merge order) and a private Postfix relaying to
smtp-sink. Sends a handful of mails and prints, for each, what the SMTP client was told and
what was delivered; checks every outcome against what the filters should do (exit status 0
only if all are right). Everything started here is stopped by PID at the end, also on error.

Needs: python3-grpcio, protobuf-compiler-grpc (the Python stubs are generated into a temp
dir), node and npm (`npm ci` runs in examples/node if node_modules is missing).
"""
import argparse
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import mgwtest  # noqa: E402
from mgwtest import make_message, queue_id, wait_for  # noqa: E402

SCANNED = ("X-Scanned-By", "miltergw-demo")
FILTERS = [  # name, language, policy and arguments
    ("py", "python", ["reject-subject", "viagra"]),
    ("node", "node", ["tempfail-rcpt", "mallory@example.com"]),
    ("c", "c", ["addheader"] + list(SCANNED)),
]
SPAM = "550 5.7.1 Subject contains forbidden word"
LATER = "451 4.7.1 Recipient temporarily refused"


class Failed(Exception):
    pass


def prepare(tmp):
    """Python stubs into tmp; node_modules for the Node example. Returns the stubs dir."""
    try:
        stubs = mgwtest.generate_python_stubs(tmp)
    except RuntimeError as e:
        raise Failed(str(e))
    node_dir = os.path.join(REPO, "examples", "node")
    if not (shutil.which("node") and shutil.which("npm")):
        raise Failed("node and npm are needed for the Node.js example: run tools/setup-debian.sh")
    if not os.path.isdir(os.path.join(node_dir, "node_modules")):
        print("npm ci in examples/node (once) ...", flush=True)
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=300)
        if r.returncode != 0:
            raise Failed("npm ci failed:\n" + r.stdout.decode("utf-8", "replace")[-3000:])
    return stubs


def start_filter(name, lang, policy, example_c, stubs, tmp):
    """One example filter on 127.0.0.1, port of its choosing (its `port=N` line)."""
    env = None
    if lang == "python":
        argv = [mgwtest.PYTHON, os.path.join(REPO, "examples", "python", "filter.py")]
        env = dict(os.environ, MILTERGW_STUBS=stubs)
    elif lang == "node":
        argv = [shutil.which("node"), os.path.join(REPO, "examples", "node", "filter.js")]
    else:
        argv = [example_c]
    proc = mgwtest.Proc(argv + ["--listen", "127.0.0.1:0"] + policy,
                        os.path.join(tmp, "filter-%s.log" % name), env=env, name="filter " + name)
    proc.start()
    rx = re.compile(r"^port=(\d+)$", re.M)
    m = wait_for(lambda: rx.search(proc.log_text()) or not proc.alive(), 20,
                 lambda: "filter %s to print port=N; output:\n%s" % (name, proc.log_tail()))
    if m is True:
        raise Failed("filter %s exited with %s:\n%s" % (name, proc.p.returncode, proc.log_tail()))
    return proc, "%s=127.0.0.1:%s" % (name, m.group(1))


def smtp(pf, transactions):
    """Transactions in one SMTP session: [(from, [rcpts], message)] -> per transaction
    {"rcpt": [(rcpt, "code text")], "data": "code text" or None}."""
    def txt(code, text):
        return "%d %s" % (code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
    results = []
    with smtplib.SMTP(pf.host, pf.port, local_hostname="client.example", timeout=30) as s:
        s.ehlo()
        for mail_from, rcpts, msg in transactions:
            res = {"mail": txt(*s.mail(mail_from)), "rcpt": [], "data": None}
            res["rcpt"] = [(r, txt(*s.rcpt(r))) for r in rcpts]
            if any(t.startswith("250") for _, t in res["rcpt"]):
                try:
                    res["data"] = txt(*s.data(msg))
                except smtplib.SMTPDataError as e:
                    res["data"] = txt(e.smtp_code, e.smtp_error)
            else:
                s.rset()
            results.append(res)
    return results


class T:
    """One SMTP transaction and what the filters should make of it: the RCPT replies
    (`refused`: {address: reply}, 250 for the others) and the DATA reply; if that is 250, the
    message must be delivered to the accepted recipients, tagged by the C filter."""

    def __init__(self, frm, to, subject, body, refused=None, data="250"):
        self.frm, self.to, self.subject, self.body = frm, to, subject, body
        self.refused, self.data = refused or {}, data
        self.deliver_to = [r for r in to if r not in self.refused] if data == "250" else None


def outcome(pf, t, res):
    """Rows for the report (what the client was told, what was delivered), and what is not
    as the filters should have made it."""
    rows = [("RCPT TO:<%s>" % r, reply) for r, reply in res["rcpt"]]
    rows.append(("DATA", res["data"] or "(not sent: no recipient accepted)"))
    got = None
    if res["data"] and res["data"].startswith("250"):
        got = pf.wait_delivered_id(queue_id(res["data"]), timeout=30)
        rows += [("delivered to", ", ".join(got.rcpts)),
                 ("  with " + SCANNED[0], got.header(SCANNED[0]) or "(no such header)"),
                 ("  body", "%d bytes" % len(got.body))]
    else:
        rows.append(("delivered to", "nobody"))
    bad = []
    for r, reply in res["rcpt"]:
        want = t.refused.get(r, "250")
        if not reply.startswith(want):
            bad.append("RCPT %s: %r, want %r" % (r, reply, want))
    if not (res["data"] or "").startswith(t.data):
        bad.append("DATA: %r, want %r" % (res["data"], t.data))
    if t.deliver_to is None and got is not None:
        bad.append("delivered, should not be")
    if t.deliver_to is not None and (got is None or sorted(got.rcpts) != sorted(t.deliver_to)
                                     or got.header(SCANNED[0]) != SCANNED[1]):
        bad.append("delivered to %s with %s: %s, want to %s with %s" % (
            got and got.rcpts, SCANNED[0], got and got.header(SCANNED[0]), t.deliver_to,
            SCANNED[1]))
    return rows, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miltergw", required=True, help="the miltergw binary")
    ap.add_argument("--example-c", required=True, help="the C example filter (policy_filter)")
    args = ap.parse_args()
    mgwtest.MILTERGW = os.path.abspath(args.miltergw)
    example_c = os.path.abspath(args.example_c)
    t0 = time.monotonic()

    # (label, [transactions sent in one SMTP session])
    bob, mallory = "bob@example.com", "mallory@example.com"
    mails = [
        ("clean mail", [T("alice@example.org", [bob], "Lunch on Friday?", b"At noon?\r\n")]),
        ("spam subject", [T("spammer@example.net", [bob], "Cheap VIAGRA", b"Buy now!\r\n",
                            data=SPAM)]),
        ("refused + good recipient", [T("alice@example.org", [mallory, bob], "Team update",
                                        b"Release is on track.\r\n", refused={mallory: LATER})]),
        ("three recipients, 200 KB", [T("reports@example.org",
                                        [bob, "carol@example.com", "dave@example.net"],
                                        "Monthly report", (b"z" * 78 + b"\r\n") * 2500)]),
        ("one session, two mails", [T("carol@example.com", [bob], "viagra, second try",
                                      b"Still cheap.\r\n", data=SPAM),
                                    T("carol@example.com", [bob], "Minutes of the meeting",
                                      b"Attached below.\r\n")]),
    ]

    procs, gw, pf = [], None, None
    report, problems = [], []
    try:
        tmp = mgwtest.make_tmpdir("demo")
        stubs = prepare(tmp)
        targets = []
        for name, lang, policy in FILTERS:
            proc, target = start_filter(name, lang, policy, example_c, stubs, tmp)
            procs.append((name, proc))
            targets.append(target)
        gw = mgwtest.Miltergw(args=[a for t in targets for a in ("--filter", t)], tmpdir=tmp)
        for name, _, _ in FILTERS:
            gw.wait_log(msg="filter described", filter=name)
        pf = mgwtest.PrivatePostfix(gw.spec)
        print("filters (merge order):")
        for (name, lang, policy), target in zip(FILTERS, targets):
            print("  %-5s %-7s on %-16s %s"
                  % (name, lang, target.split("=", 1)[1], " ".join(policy)))
        print("miltergw on %s; Postfix on 127.0.0.1:%d relaying to smtp-sink on 127.0.0.1:%d\n"
              % (gw.spec, pf.port, pf.sink_port))

        for n, (label, txns) in enumerate(mails, 1):
            results = smtp(pf, [(t.frm, t.to, make_message(t.subject, t.body)[0]) for t in txns])
            for i, (t, res) in enumerate(zip(txns, results)):
                title = "mail %d: %s" % (n, label)
                if len(txns) > 1:
                    title += " (%d of %d)" % (i + 1, len(txns))
                rows, bad = outcome(pf, t, res)
                report.append((title, "%s -> %s, Subject: %s" % (t.frm, ", ".join(t.to), t.subject),
                               rows, bad))
                problems += ["%s: %s" % (title, b) for b in bad]
        # refused at end of data: never queued, so nothing of them may reach the sink
        leaked = [m.header("Subject") for m in pf.delivered()
                  if re.search(r"viagra", m.header("Subject") or "", re.I)]
        if leaked:
            problems.append("refused mails were delivered: %r" % leaked)
        errors = gw.error_lines()
        if errors:
            problems.append("miltergw logged errors:\n" + "\n".join(errors))
    except (Failed, AssertionError, subprocess.SubprocessError, OSError,
            smtplib.SMTPException) as e:
        problems.append("demo aborted: %s" % e)
    finally:
        if pf is not None:
            pf.stop()
        if gw is not None:
            rc = gw.stop(expect=None)
            if rc != 0:
                problems.append("miltergw exit code %r after SIGTERM, want 0" % rc)
        for name, proc in reversed(procs):
            rc = proc.stop()
            if rc != 0:
                problems.append("filter %s exit code %r after SIGTERM, want 0" % (name, rc))

    width = max([len(k) for _, _, rows, _ in report for k, _ in rows] + [20])
    for title, what, rows, bad in report:
        print("%s\n  %s" % (title, what))
        for k, v in rows + [("as the filters should?", "yes" if not bad else "NO: " + "; ".join(bad))]:
            print("    %-*s  %s" % (width, k, v))
        print()
    print("everything stopped; %.1f s" % (time.monotonic() - t0))
    if problems:
        print("demo FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("demo ok: every outcome is what the filters should produce")
    return 0


if __name__ == "__main__":
    sys.exit(main())
