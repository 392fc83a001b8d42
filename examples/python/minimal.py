#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The smallest miltergw filter (grpc.aio): adds "X-Hello: world" to every message.
minimal.py [HOST:PORT] (default 127.0.0.1:50051). Stubs: $MILTERGW_STUBS or ./gen (README).
Also serves health and reflection (std_services.py); SIGTERM: NOT_SERVING, then stop."""
import asyncio
import os
import sys

sys.path.insert(0, os.environ.get("MILTERGW_STUBS")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
import grpc  # noqa: E402
from miltergw.v1 import filter_pb2 as pb, filter_pb2_grpc as pb_grpc  # noqa: E402
import std_services  # noqa: E402


class Minimal(pb_grpc.FilterServicer):
    async def Describe(self, request, context):  # only EOM, only adding headers
        return pb.Description(name="minimal-py", events=[pb.EVENT_TYPE_EOM],
                              actions=[pb.ACTION_ADD_HEADER])

    async def Session(self, events, context):  # one stream per SMTP connection
        async for ev in events:
            if ev.WhichOneof("event") == "eom":  # start and abort get no reply
                reply = pb.Reply(event_id=ev.event_id, verdict=pb.VERDICT_CONTINUE)
                reply.modifications.add(add_header=pb.AddHeader(name="X-Hello", value=b"world"))
                yield reply


async def main(listen):
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a busy port is an error
    pb_grpc.add_FilterServicer_to_server(Minimal(), server)
    health = std_services.add_to_server(server, ["miltergw.v1.Filter"])
    port = server.add_insecure_port(listen)
    stop = std_services.stop_on_signals()  # before port=N: a signal then must stop it
    await server.start()
    print("port=%d" % port, flush=True)
    await std_services.serve_until_signal(server, health, stop, grace=1)


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
