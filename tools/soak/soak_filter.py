#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Soak filter (Python, grpc.aio) for tools/soak.py:
    soak_filter.py --listen HOST:PORT --name NAME

Stamps every message it lets through with `X-Soak-<Name>: <token>` (the token is the value
of the message's X-Soak-Token header), so the soak tool can check that every delivered
message carries the edit this filter asked for. Refusals it is designed to make:
  Subject contains "reject-NAME"  -> REJECT 550 5.7.1 at end of message
  Subject contains "hold-NAME"    -> quarantine (Postfix hold queue), header added too
Prints `port=N` once listening; SIGTERM/SIGINT stop it (exit 0).
Stubs are imported from $MILTERGW_STUBS (mgwtest.generate_python_stubs)."""
import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.environ.get("MILTERGW_STUBS", "."))
import grpc  # noqa: E402
from miltergw.v1 import filter_pb2 as pb, filter_pb2_grpc as pb_grpc  # noqa: E402

HEADER, EOM = pb.EventType.Value("EVENT_TYPE_HEADER"), pb.EventType.Value("EVENT_TYPE_EOM")


class Filter(pb_grpc.FilterServicer):
    def __init__(self, name):
        self.name = name
        self.hname = "X-Soak-" + name.capitalize()

    async def Describe(self, request, context):
        return pb.Description(name="soak-" + self.name, version="1.0", events=[HEADER, EOM],
                              observe_only=[HEADER],
                              actions=[pb.ACTION_ADD_HEADER, pb.ACTION_QUARANTINE])

    async def Session(self, request_iterator, context):
        silent, token, subject = {HEADER}, None, ""
        async for ev in request_iterator:
            kind = ev.WhichOneof("event")
            if kind == "start":
                silent = set(ev.start.effective.observe_only)
                continue
            if kind in ("abort", "mail"):
                token, subject = None, ""
                if kind == "abort":
                    continue
            if kind == "header":
                n = ev.header.name.lower()
                if n == "x-soak-token":
                    token = ev.header.value.decode("utf-8", "replace").strip()
                elif n == "subject":
                    subject = ev.header.value.decode("utf-8", "replace").lower()
            reply = pb.Reply(event_id=ev.event_id, verdict=pb.VERDICT_CONTINUE)
            if kind == "eom":
                if "reject-" + self.name in subject:
                    reply.verdict = pb.VERDICT_REJECT
                    reply.response.CopyFrom(pb.SmtpResponse(
                        code=550, enhanced_status="5.7.1", lines=["soak %s rejects" % self.name]))
                else:
                    if token:
                        reply.modifications.add(add_header=pb.AddHeader(
                            name=self.hname, value=token.encode()))
                    if "hold-" + self.name in subject:
                        reply.modifications.add(quarantine=pb.Quarantine(reason="soak hold"))
                token, subject = None, ""
            ev_type = pb.EventType.Value("EVENT_TYPE_" + kind.upper())
            if ev_type not in silent:
                yield reply


async def serve(listen, name):
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_FilterServicer_to_server(Filter(name), server)
    port = server.add_insecure_port(listen)
    stop = asyncio.Event()  # before port=N: a signal sent as soon as it is out must stop it
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await server.start()
    print("port=%d" % port, flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main():
    ap = argparse.ArgumentParser(description="miltergw soak filter (Python)")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--name", default="py")
    o = ap.parse_args()
    asyncio.run(serve(o.listen, o.name))


if __name__ == "__main__":
    main()
