#!/usr/bin/python3
"""capture_postfix_corpus.py - record what a real Postfix sends to a milter, as fuzz seeds.

Runs a private Postfix whose milter is milter_recorder.py, sends ONE SMTP session with two
messages (a few headers incl. a folded one, two recipients each), and writes into
tests/fuzz/corpus/milter_decode/ (or --outdir):
    postfix-session.bin   the whole raw byte stream Postfix sent on the milter connection
    postfix-<L>.bin       for each command letter L seen: every frame of that letter, in
                          order (a valid stream made only of L frames)

Usage: /usr/bin/python3 tests/integration/capture_postfix_corpus.py [--outdir DIR]
"""
import argparse
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgwtest  # noqa: E402

DEFAULT_OUT = os.path.join(mgwtest.HERE, "..", "fuzz", "corpus", "milter_decode")


def split_frames(data):
    frames = []
    i = 0
    while i + 4 <= len(data):
        (n,) = struct.unpack("!I", data[i:i + 4])
        frames.append(data[i:i + 4 + n])
        i += 4 + n
    if i != len(data):
        raise SystemExit("recorded stream has %d trailing bytes" % (len(data) - i))
    return frames


def capture(outdir):
    tmp = mgwtest.make_tmpdir("capture")
    rec_out = os.path.join(tmp, "stream.bin")
    gw = mgwtest.Miltergw(os.path.join(mgwtest.HERE, "milter_recorder.py"), ["--out", rec_out], tmpdir=tmp)
    pf = mgwtest.PrivatePostfix(gw.spec)
    try:
        folded = ("X-Folded", "first part of a folded value\n\tsecond line after a tab\n  third line after spaces")
        msgs = []
        for i, subj in enumerate(("corpus one", "corpus two")):
            msg, _, _ = mgwtest.make_message(
                subj, body=b"Line one of message %d.\r\n.a line starting with a dot\r\n\r\nlast line\r\n" % i,
                headers=[folded, ("X-Mailer", "mgwtest capture")])
            msgs.append(("sender@example.org", ["alice@example.com", "bob@example.net"], msg))
        res = pf.smtp_session(msgs)
        for r in res:
            if not r["data"] or r["data"][0] != 250:
                raise SystemExit("message not accepted: %r" % (r,))
        pf.wait_delivered(2)
        gw.wait_log(msg="session closed", timeout=30)
    finally:
        pf.stop()
        gw.stop()
    with open(rec_out, "rb") as f:
        data = f.read()
    frames = split_frames(data)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "postfix-session.bin"), "wb") as f:
        f.write(data)
    by_letter = {}
    for fr in frames:
        by_letter.setdefault(chr(fr[4]), []).append(fr)
    for letter, frs in sorted(by_letter.items()):
        with open(os.path.join(outdir, "postfix-%s.bin" % letter), "wb") as f:
            f.write(b"".join(frs))
    print("captured %d bytes, %d frames: %s" % (len(data), len(frames), "".join(chr(fr[4]) for fr in frames)))
    print("letters: %s -> %s" % (" ".join("%s:%d" % (k, len(v)) for k, v in sorted(by_letter.items())),
                                 os.path.abspath(outdir)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", default=DEFAULT_OUT)
    capture(ap.parse_args().outdir)


if __name__ == "__main__":
    main()
