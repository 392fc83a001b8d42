#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""Example miltergw filter (grpc.aio): filter.py [--listen HOST:PORT] [--multiplexed] POLICY [ARGS...].
Policies: see README.md. Generated stubs are imported from $MILTERGW_STUBS (default ./gen).
Also serves grpc.health.v1.Health and server reflection (std_services.py)."""
import argparse
import asyncio
import os
import re
import sys

sys.path.insert(0, os.environ.get("MILTERGW_STUBS")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
import grpc  # noqa: E402
try:
    from miltergw.v1 import filter_pb2 as pb, filter_pb2_grpc as pb_grpc
    import std_services  # health and reflection; needs the stubs of miltergw._std too
except ImportError as e:
    sys.exit("filter.py: %s: generate the stubs first (see README.md)" % e)

CONNECT, MAIL, RCPT, DATA, HEADER, EOH, EOM = (pb.EventType.Value("EVENT_TYPE_" + n) for n in (
    "CONNECT", "MAIL", "RCPT", "DATA", "HEADER", "EOH", "EOM"))

# POLICY: (number of ARGS, events, observe-only events, actions)
POLICIES = {
    "accept": (0, [EOM], [], []),
    "reject-subject": (1, [HEADER, EOM], [HEADER], []),
    "tempfail-rcpt": (1, [RCPT], [], []),
    "addheader": (2, [EOM], [], [pb.ACTION_ADD_HEADER]),
    "rewrite-body": (1, [EOM], [], [pb.ACTION_REPLACE_BODY]),
    "quarantine": (1, [EOM], [], [pb.ACTION_QUARANTINE]),
    "chgfrom": (1, [EOM], [], [pb.ACTION_CHANGE_FROM]),
    "addrcpt": (1, [EOM], [], [pb.ACTION_ADD_RCPT]),
    "delrcpt": (1, [RCPT, EOM], [RCPT], [pb.ACTION_DELETE_RCPT]),
    "discard": (0, [EOM], [], []),
    "macros": (0, [CONNECT, MAIL, RCPT, DATA, EOH, EOM], [CONNECT, MAIL, RCPT, DATA, EOH],
               [pb.ACTION_ADD_HEADER]),
}
# Postfix replaces its default macro lists with what filters ask for: ask for all we want.
MACROS = {CONNECT: ["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
          MAIL: ["{mail_addr}", "{mail_host}", "{mail_mailer}"],
          RCPT: ["{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
          DATA: ["i"], EOH: ["i"], EOM: ["i"]}


def bare(addr):  # for comparing addresses: no angle brackets, any case
    return addr.strip().strip("<>").lower()


def angle(addr):
    return addr if addr.startswith("<") else "<%s>" % addr


def refuse(reply, verdict, code, status, text):
    reply.verdict = verdict
    reply.response.CopyFrom(pb.SmtpResponse(code=code, enhanced_status=status, lines=[text]))


class Stream:
    """The state of one Session stream: one SMTP connection, any number of messages."""

    def __init__(self, policy, args):
        self.policy, self.args = policy, args
        self.silent = set(POLICIES[policy][2])  # events not to answer
        self.conn_macros = {}  # CONNECT macros are sent once: keep them for the connection
        self.reset()

    def reset(self):  # forget the current message
        self.hit, self.rcpts, self.msg_macros = False, [], {}

    def handle(self, ev):
        """The Reply to ev, or None if ev needs none."""
        kind = ev.WhichOneof("event")  # "connect", "mail", ... "eom", like EventType names
        if kind == "start":  # answer according to the declaration in force
            self.silent = set(ev.start.effective.observe_only)
            return None
        if kind in ("abort", "mail"):
            self.reset()
            if kind == "abort":
                return None
        (self.conn_macros if kind in ("connect", "helo") else self.msg_macros).update(ev.macros)
        reply = pb.Reply(event_id=ev.event_id, verdict=pb.VERDICT_CONTINUE)
        if kind == "header" and ev.header.name.lower() == "subject":  # only reject-subject
            unfolded = re.sub(rb"\r?\n", b"", ev.header.value).lower()  # folded: "a\n\tb"
            self.hit = self.hit or self.args[0].lower().encode() in unfolded
        elif kind == "rcpt" and self.args and bare(ev.rcpt.address) == bare(self.args[0]):
            self.rcpts.append(ev.rcpt.address)
            if self.policy == "tempfail-rcpt":
                refuse(reply, pb.VERDICT_TEMPFAIL, 451, "4.7.1", "Recipient temporarily refused")
        elif kind == "eom":
            self.end_of_message(reply)
            self.reset()
        return None if pb.EventType.Value("EVENT_TYPE_" + kind.upper()) in self.silent else reply

    def end_of_message(self, reply):
        p, a, mods = self.policy, self.args, reply.modifications
        if p in ("accept", "discard"):
            reply.verdict = pb.VERDICT_ACCEPT if p == "accept" else pb.VERDICT_DISCARD
        elif p == "reject-subject" and self.hit:
            refuse(reply, pb.VERDICT_REJECT, 550, "5.7.1", "Subject contains forbidden word")
        elif p == "addheader":
            mods.add(add_header=pb.AddHeader(name=a[0], value=a[1].encode()))
        elif p == "rewrite-body":  # lines end in CRLF, the last one too
            body = re.sub(r"\r?\n", "\r\n", a[0])
            body += "" if body.endswith("\r\n") or not body else "\r\n"
            mods.add(replace_body=pb.ReplaceBody(body=body.encode()))
        elif p == "quarantine":
            mods.add(quarantine=pb.Quarantine(reason=a[0]))
        elif p == "chgfrom":
            mods.add(change_from=pb.ChangeFrom(address=angle(a[0])))
        elif p == "addrcpt":
            mods.add(add_recipient=pb.AddRecipient(address=angle(a[0])))
        elif p == "delrcpt":  # exactly as the recipient arrived
            for r in self.rcpts:
                mods.add(delete_recipient=pb.DeleteRecipient(address=r))
        elif p == "macros":
            for name, value in {**self.conn_macros, **self.msg_macros}.items():
                name = "X-Macro-" + re.sub(r"[^A-Za-z0-9_-]", "", name)  # {mail_addr}: mail_addr
                mods.add(add_header=pb.AddHeader(name=name, value=value.encode()))


class Filter(pb_grpc.FilterServicer):
    def __init__(self, policy, args, multiplexed=False):
        self.policy, self.args, self.multiplexed = policy, args, multiplexed

    async def Describe(self, request, context):
        _, events, observe_only, actions = POLICIES[self.policy]
        macros = [pb.MacroRequest(stage=s, names=n) for s, n in MACROS.items()]
        return pb.Description(name="example-py-" + self.policy, version="1.0", events=events,
                              observe_only=observe_only, actions=actions,
                              macros=macros if self.policy == "macros" else [],
                              multiplexed=self.multiplexed)

    async def Session(self, request_iterator, context):
        # The state of each SMTP connection by its Event.session: one per stream (session
        # 0), or with --multiplexed many, each ended by its SessionEnd
        streams = {}
        async for ev in request_iterator:  # replies in event order: answer each in turn
            if ev.WhichOneof("event") == "end":
                streams.pop(ev.session, None)
                continue
            stream = streams.get(ev.session)
            if stream is None:
                stream = streams[ev.session] = Stream(self.policy, self.args)
            reply = stream.handle(ev)
            if reply is not None:
                reply.session = ev.session  # a multiplexed stream's replies name it back
                yield reply


async def serve(listen, policy, args, multiplexed=False):
    # grpc.aio, not the thread-pool server (it needs one thread per open stream); no
    # SO_REUSEPORT, so that a port already in use is an error, not a second server
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_FilterServicer_to_server(Filter(policy, args, multiplexed), server)
    health = std_services.add_to_server(server, ["miltergw.v1.Filter"])
    port = server.add_insecure_port(listen)  # RuntimeError if it cannot listen
    stop = std_services.stop_on_signals()  # before port=N: a signal then must stop it
    await server.start()
    print("port=%d" % port, flush=True)
    # SIGTERM/SIGINT: NOT_SERVING (health watchers see it), then stop; open streams get 1 s
    await std_services.serve_until_signal(server, health, stop, grace=1)


def main():
    ap = argparse.ArgumentParser(description="Example miltergw filter service.")
    ap.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any free)")
    ap.add_argument("--multiplexed", action="store_true",
                    help="take many SMTP connections per stream (Description.multiplexed)")
    ap.add_argument("policy", choices=POLICIES)
    ap.add_argument("args", nargs="*", metavar="ARG")
    o = ap.parse_args()
    if len(o.args) != POLICIES[o.policy][0]:
        ap.error("%s takes %d argument(s)" % (o.policy, POLICIES[o.policy][0]))
    asyncio.run(serve(o.listen, o.policy, o.args, o.multiplexed))


if __name__ == "__main__":
    main()
