// SPDX-License-Identifier: Apache-2.0
// Copyright the miltergw authors.
//
// What gRPC users expect of every server, for a grpc-js filter: the standard health service
// (grpc.health.v1.Health, Check and Watch, from the npm package grpc-health-check), server
// reflection (grpc.reflection.v1 and v1alpha from @grpc/reflection: `grpcurl list`,
// `grpcurl describe`), and a stop on SIGTERM/SIGINT that turns NOT_SERVING first.
//
//   const def = std.load(PROTO_DIR, 'miltergw/v1/filter.proto', loaderOptions);
//   const pb = grpc.loadPackageDefinition(def).miltergw.v1;
//   ...server.addService(pb.Filter.service, ...)
//   std.serve(server, def, ['miltergw.v1.Filter'], 1000);
'use strict';
const path = require('path');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation, protoPath: healthProto } = require('grpc-health-check');
const { ReflectionService } = require('@grpc/reflection');
const { FileDescriptorProto } = require('protobufjs/ext/descriptor');

// The .proto files both packages ship: health/v1/health.proto, grpc/reflection/v1*/...
const STD_DIRS = [path.resolve(path.dirname(healthProto), '..', '..'),
  path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto')];
const STD_FILES = ['health/v1/health.proto', 'grpc/reflection/v1/reflection.proto',
  'grpc/reflection/v1alpha/reflection.proto'];

// The package definition of `file` (under protoDir) and of the health and reflection
// protocols: reflection describes the services of the definition it is given.
function load(protoDir, file, options) {
  return protoLoader.loadSync([file, ...STD_FILES],
    { ...options, includeDirs: [protoDir, ...STD_DIRS] });
}

// The descriptors proto-loader derives (with protobufjs) name a map field's entry message
// after the field ("Macros"), where protobuf requires "MacrosEntry": other implementations
// (grpcurl, protoc-built clients) refuse such a file. Rename those entries, in a copy of the
// definition handed to reflection.
function fixMapEntries(bin) {
  const file = FileDescriptorProto.decode(bin);
  const fix = (msg) => {
    const renamed = new Map();
    for (const nested of msg.nestedType || []) {
      if (nested.options && nested.options.mapEntry && !nested.name.endsWith('Entry')) {
        renamed.set(nested.name, nested.name + 'Entry');
        nested.name += 'Entry';
      }
      fix(nested);
    }
    for (const field of msg.field || []) {
      if (renamed.has(field.typeName)) field.typeName = renamed.get(field.typeName);
    }
  };
  (file.messageType || []).forEach(fix);
  return Buffer.from(FileDescriptorProto.encode(file).finish());
}

function forReflection(definition) {
  return Object.fromEntries(Object.entries(definition).map(([name, def]) => [name,
    Array.isArray(def.fileDescriptorProtos)
      ? { ...def, fileDescriptorProtos: def.fileDescriptorProtos.map(fixMapEntries) } : def]));
}

// Serve health (SERVING for '' and each of `services`) and reflection of `definition` on
// `server`; on SIGTERM or SIGINT: NOT_SERVING (every Watch gets it, then ends), then shut
// down, giving open calls graceMs, and exit 0.
function serve(server, definition, services, graceMs) {
  const names = ['', ...services];
  const health = new HealthImplementation(Object.fromEntries(names.map((n) => [n, 'SERVING'])));
  const watches = new Set(); // open Watch calls, ended at the stop
  health.addToServer({
    addService: (service, impl) => server.addService(service, {
      ...impl,
      watch: (call) => {
        watches.add(call);
        call.on('cancelled', () => watches.delete(call));
        impl.watch(call);
      },
    }),
  });
  new ReflectionService(forReflection(definition)).addToServer(server);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const n of names) health.setStatus(n, 'NOT_SERVING'); // written to every Watch
    for (const call of watches) call.end(); // after that status
    server.tryShutdown(() => process.exit(0)); // no new calls; open ones may finish
    setTimeout(() => { server.forceShutdown(); process.exit(0); }, graceMs).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

module.exports = { load, serve };
