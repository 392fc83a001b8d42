#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// The smallest miltergw filter (grpc-js): adds "X-Hello: world" to every message.
// node minimal.js [HOST:PORT] (default 127.0.0.1:50051); `npm ci` in this directory first.
// Also serves health and reflection (std_services.js); SIGTERM: NOT_SERVING, then stop.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const std = require('./std_services');

const definition = std.load(process.env.MILTERGW_PROTO_DIR || path.join(__dirname, '..', '..', 'proto'),
  'miltergw/v1/filter.proto', { keepCase: true, longs: String, enums: String, oneofs: true, defaults: true });
const pb = grpc.loadPackageDefinition(definition).miltergw.v1;

const server = new grpc.Server();
server.addService(pb.Filter.service, {
  Describe: (call, callback) => callback(null, { // only EOM, only adding headers
    name: 'minimal-node', events: ['EVENT_TYPE_EOM'], actions: ['ACTION_ADD_HEADER'],
  }),
  Session: (call) => { // one stream per SMTP connection
    call.on('data', (e) => {
      if (e.event !== 'eom') return; // start and abort get no reply
      call.write({ event_id: e.event_id, verdict: 'VERDICT_CONTINUE', modifications: [
        { add_header: { name: 'X-Hello', value: Buffer.from('world') } }] }); // bytes: a Buffer
    });
    call.on('end', () => call.end()); // the SMTP connection is over
    call.on('error', () => {}); // cancelled by the gateway
  },
});
// health and reflection; SIGTERM: NOT_SERVING, then open streams get a second
std.serve(server, definition, ['miltergw.v1.Filter'], 1000);
const listen = process.argv[2] || '127.0.0.1:50051';
server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(`cannot listen on ${listen}: ${err.message}`); process.exit(1); }
  console.log(`port=${port}`);
});
