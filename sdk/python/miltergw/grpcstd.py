# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""The standard services every miltergw SDK server also serves, for the sync `grpc.server`:

- `Health`: grpc.health.v1.Health, Check and Watch. SERVING while the filter runs,
  NOT_SERVING once it is stopping. Known services: "" (the server) and every service
  name passed to `Health(...)`.
- `Reflection`: grpc.reflection.v1alpha and grpc.reflection.v1 ServerReflection, enough for
  `grpcurl list` and `grpcurl describe`: it serves the FileDescriptorProtos of the files
  defining the listed services (and their dependencies) from the default descriptor pool.

Debian 12's python3-grpcio has neither grpc_health nor grpc_reflection; the messages come
from `grpc_health.v1` when it is installed, otherwise from the package's own copies of the
two .proto files (miltergw/_std, generated).

    server = grpc.server(...)
    health = grpcstd.Health(["miltergw.v1.Filter"])
    grpcstd.add_standard_services(server, health, ["miltergw.v1.Filter"])
    ...
    health.set_all(False)   # NOT_SERVING, wakes every Watch
"""
import threading

import grpc
from google.protobuf import descriptor_pool

try:  # the upstream modules if present (pip grpcio-health-checking)
    from grpc_health.v1 import health_pb2  # type: ignore
except ImportError:
    from miltergw._std import health_pb2
from miltergw._std import reflection_v1_pb2, reflection_v1alpha_pb2

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection",
                       "grpc.reflection.v1.ServerReflection")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health:
    """The status of "" and of each named service; Check and Watch handlers."""

    def __init__(self, services=(), serving=True):
        self._cond = threading.Condition()
        self._status = {name: SERVING if serving else NOT_SERVING for name in ("",) + tuple(services)}
        self._version = 0
        self._closed = False

    def set(self, service, serving):
        with self._cond:
            self._status[service] = SERVING if serving else NOT_SERVING
            self._version += 1
            self._cond.notify_all()

    def set_all(self, serving):
        with self._cond:
            for name in self._status:
                self._status[name] = SERVING if serving else NOT_SERVING
            self._version += 1
            self._cond.notify_all()

    def close(self):
        """End every Watch (after the last status was sent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def status(self, service):
        with self._cond:
            return self._status.get(service)

    def Check(self, request, context):
        st = self.status(request.service)
        if st is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service %r" % request.service)
        return health_pb2.HealthCheckResponse(status=st)

    def Watch(self, request, context):
        last = None
        while True:
            with self._cond:
                st = self._status.get(request.service, SERVICE_UNKNOWN)
                if st == last:
                    if self._closed or not context.is_active():
                        return
                    self._cond.wait(1.0)  # and look at context.is_active() again
                    continue
                last = st
            yield health_pb2.HealthCheckResponse(status=st)

    def handler(self):
        ser = health_pb2.HealthCheckResponse.SerializeToString
        de = health_pb2.HealthCheckRequest.FromString
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(self.Check, de, ser),
            "Watch": grpc.unary_stream_rpc_method_handler(self.Watch, de, ser),
        })


class Reflection:
    """ServerReflectionInfo for the given fully qualified service names."""

    def __init__(self, services, pool=None):
        self.services = sorted(services)
        self.pool = pool or descriptor_pool.Default()

    def _files(self, fd):
        """fd and its transitive dependencies, fd first, each once."""
        out, seen, todo = [], set(), [fd]
        while todo:
            f = todo.pop(0)
            if f.name in seen:
                continue
            seen.add(f.name)
            out.append(f.serialized_pb)
            todo.extend(f.dependencies)
        return out

    def answer(self, pb, req):
        resp = pb.ServerReflectionResponse(valid_host=req.host, original_request=req)
        kind = req.WhichOneof("message_request")
        try:
            if kind == "list_services":
                resp.list_services_response.service.extend(
                    pb.ServiceResponse(name=n) for n in self.services)
            elif kind == "file_by_filename":
                resp.file_descriptor_response.file_descriptor_proto.extend(
                    self._files(self.pool.FindFileByName(req.file_by_filename)))
            elif kind == "file_containing_symbol":
                resp.file_descriptor_response.file_descriptor_proto.extend(
                    self._files(self.pool.FindFileContainingSymbol(req.file_containing_symbol)))
            elif kind == "all_extension_numbers_of_type":
                self.pool.FindMessageTypeByName(req.all_extension_numbers_of_type)
                resp.all_extension_numbers_response.base_type_name = req.all_extension_numbers_of_type
            else:  # extensions: none of our files defines any
                raise KeyError(kind)
        except KeyError as e:
            resp.ClearField("message_response")
            resp.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            resp.error_response.error_message = "not found: %s" % (e,)
        return resp

    def _info(self, pb):
        def info(request_iterator, context):
            for req in request_iterator:
                yield self.answer(pb, req)
        return info

    def handlers(self):
        out = []
        for name, pb in zip(REFLECTION_SERVICES, (reflection_v1alpha_pb2, reflection_v1_pb2)):
            out.append(grpc.method_handlers_generic_handler(name, {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                    self._info(pb), pb.ServerReflectionRequest.FromString,
                    pb.ServerReflectionResponse.SerializeToString)}))
        return out


def add_standard_services(server, health, services):
    """Serve `health` and reflection of `services` plus the standard services themselves."""
    server.add_generic_rpc_handlers([health.handler()] + Reflection(
        list(services) + [HEALTH_SERVICE] + list(REFLECTION_SERVICES)).handlers())
