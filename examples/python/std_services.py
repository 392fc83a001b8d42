# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""What gRPC users expect of every server, for a grpc.aio filter: the standard health
service (grpc.health.v1.Health: Check and Watch) and server reflection
(grpc.reflection.v1alpha and v1: enough for `grpcurl list` / `grpcurl describe`), and a
stop on SIGTERM/SIGINT that turns NOT_SERVING first.

Debian 12's python3-grpcio has neither grpc_health nor grpc_reflection: the messages and
servicers are generated, like the filter stubs, from the Python SDK's copies of the two
protocols (sdk/python/proto/miltergw/_std/*.proto; see README.md), and imported from
`miltergw._std` on the same path as `miltergw.v1`.

    server = grpc.aio.server()
    ...add the filter...
    health = std_services.add_to_server(server, ["miltergw.v1.Filter"])
    stop = std_services.stop_on_signals()
    await server.start()
    await std_services.serve_until_signal(server, health, stop, grace=1)
"""
import asyncio
import signal

import grpc
from google.protobuf import descriptor_pool
from miltergw._std import health_pb2, health_pb2_grpc
from miltergw._std import reflection_v1_pb2, reflection_v1_pb2_grpc
from miltergw._std import reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc

HEALTH = "grpc.health.v1.Health"
REFLECTION = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
Status = health_pb2.HealthCheckResponse


class Health(health_pb2_grpc.HealthServicer):
    """SERVING or NOT_SERVING for "" (the whole server) and each named service."""

    def __init__(self, services):
        self.status = {name: Status.SERVING for name in ["", *services]}
        self.closed = False
        self.changed = asyncio.Condition()

    async def set_all(self, status, close=False):
        """Set every known service to status; close=True then ends every Watch."""
        async with self.changed:
            self.status = dict.fromkeys(self.status, status)
            self.closed = self.closed or close
            self.changed.notify_all()

    async def Check(self, request, context):
        if request.service not in self.status:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service %r" % request.service)
        return Status(status=self.status[request.service])

    async def Watch(self, request, context):
        """The status now, then each change; ends (OK) after the last one once closed."""
        sent = None
        while True:
            async with self.changed:
                await self.changed.wait_for(
                    lambda: self.status.get(request.service, Status.SERVICE_UNKNOWN) != sent
                    or self.closed)
                now = self.status.get(request.service, Status.SERVICE_UNKNOWN)
            if now == sent:  # closed, nothing new
                return
            sent = now
            yield Status(status=now)


class Reflection:
    """ServerReflectionInfo (the same for v1 and v1alpha: same messages, other package) over
    the descriptors the generated modules put in the default pool."""

    def __init__(self, pb, services):
        self.pb, self.services = pb, sorted(services)
        self.pool = descriptor_pool.Default()

    @staticmethod
    def files(fd):
        """The serialized FileDescriptorProto of fd, then of its dependencies, each once."""
        out, seen, todo = [], set(), [fd]
        while todo:
            f = todo.pop(0)
            if f.name not in seen:
                seen.add(f.name)
                out.append(f.serialized_pb)
                todo.extend(f.dependencies)
        return out

    def answer(self, req):
        pb = self.pb
        resp = pb.ServerReflectionResponse(valid_host=req.host, original_request=req)
        kind = req.WhichOneof("message_request")
        try:
            if kind == "list_services":
                resp.list_services_response.service.extend(
                    pb.ServiceResponse(name=name) for name in self.services)
            elif kind == "file_by_filename":
                resp.file_descriptor_response.file_descriptor_proto.extend(
                    self.files(self.pool.FindFileByName(req.file_by_filename)))
            elif kind == "file_containing_symbol":
                resp.file_descriptor_response.file_descriptor_proto.extend(
                    self.files(self.pool.FindFileContainingSymbol(req.file_containing_symbol)))
            elif kind == "all_extension_numbers_of_type":  # no extensions in these files
                self.pool.FindMessageTypeByName(req.all_extension_numbers_of_type)
                resp.all_extension_numbers_response.base_type_name = req.all_extension_numbers_of_type
            else:  # file_containing_extension: there are none
                raise KeyError(kind)
        except KeyError as e:
            resp.ClearField("message_response")
            resp.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            resp.error_response.error_message = "not found: %s" % (e,)
        return resp

    async def ServerReflectionInfo(self, request_iterator, context):
        async for req in request_iterator:
            yield self.answer(req)


def add_to_server(server, services):
    """Serve health (SERVING) and reflection of services, health and reflection on server;
    returns the Health, for serve_until_signal."""
    health = Health(services)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    listed = [*services, HEALTH, *REFLECTION]
    reflection_v1_pb2_grpc.add_ServerReflectionServicer_to_server(
        Reflection(reflection_v1_pb2, listed), server)
    reflection_v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server(
        Reflection(reflection_v1alpha_pb2, listed), server)
    return health


def stop_on_signals():
    """An asyncio.Event that SIGTERM and SIGINT set. Make it before the server says it
    listens: a signal sent as soon as it does must stop it, not kill it mid-start."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signal(server, health, stop, grace=1.0):
    """Wait for `stop` (stop_on_signals()); then NOT_SERVING (every Watch gets it, then
    ends), then stop: no new calls, open streams get `grace` seconds to finish, the rest
    is cancelled."""
    await stop.wait()
    await health.set_all(Status.NOT_SERVING, close=True)
    await server.stop(grace)
