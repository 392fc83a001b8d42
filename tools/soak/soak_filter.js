#!/usr/bin/env node
// SPDX-License-Identifier: GPL-2.0-or-later
// Soak filter (Node.js, grpc-js) for tools/soak.py:
//     node soak_filter.js --listen HOST:PORT --name NAME
// Stamps every message it lets through with `X-Soak-<Name>: <token>` (the token is the value
// of the message's X-Soak-Token header). Refusals it is designed to make:
//   Subject contains "reject-NAME"   -> REJECT 554 5.7.1 at end of message
//   a recipient whose local part is "later" -> TEMPFAIL 450 4.7.1 for that recipient
// Uses the grpc-js and proto-loader installed in examples/node (npm ci there). Prints
// `port=N` once listening; SIGTERM/SIGINT stop it (exit 0).
'use strict';
const path = require('path');
const { createRequire } = require('module');

const REPO = path.join(__dirname, '..', '..');
const req = createRequire(path.join(REPO, 'examples', 'node', 'package.json'));
const grpc = req('@grpc/grpc-js');
const protoLoader = req('@grpc/proto-loader');
const pb = grpc.loadPackageDefinition(protoLoader.loadSync('miltergw/v1/filter.proto', {
  includeDirs: [path.join(REPO, 'proto')],
  keepCase: true, longs: String, enums: String, oneofs: true, defaults: true,
})).miltergw.v1;

let listen = '127.0.0.1:0';
let name = 'node';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (argv[i] === '--listen') listen = argv[i + 1];
  else if (argv[i] === '--name') name = argv[i + 1];
  else { console.error('usage: soak_filter.js [--listen HOST:PORT] [--name NAME]'); process.exit(2); }
}
const hname = 'X-Soak-' + name.charAt(0).toUpperCase() + name.slice(1);

function session(call) {
  let silent = new Set(['EVENT_TYPE_HEADER']);
  let token = null;
  let subject = '';
  call.on('data', (e) => {
    const kind = e.event;
    if (kind === 'start') { silent = new Set(e.start.effective.observe_only); return; }
    if (kind === 'abort' || kind === 'mail') { token = null; subject = ''; }
    if (kind === 'abort') return;
    const reply = { event_id: e.event_id, verdict: 'VERDICT_CONTINUE', modifications: [] };
    if (kind === 'header') {
      const n = e.header.name.toLowerCase();
      if (n === 'x-soak-token') token = e.header.value.toString().trim();
      else if (n === 'subject') subject = e.header.value.toString().toLowerCase();
    } else if (kind === 'rcpt') {
      const local = e.rcpt.address.replace(/^<|>$/g, '').split('@')[0].toLowerCase();
      if (local === 'later') {
        Object.assign(reply, { verdict: 'VERDICT_TEMPFAIL',
          response: { code: 450, enhanced_status: '4.7.1', lines: [`soak ${name}: later`] } });
      }
    } else if (kind === 'eom') {
      if (subject.includes('reject-' + name)) {
        Object.assign(reply, { verdict: 'VERDICT_REJECT',
          response: { code: 554, enhanced_status: '5.7.1', lines: [`soak ${name} rejects`] } });
      } else if (token) {
        reply.modifications.push({ add_header: { name: hname, value: Buffer.from(token) } });
      }
      token = null;
      subject = '';
    }
    if (!silent.has('EVENT_TYPE_' + kind.toUpperCase())) call.write(reply);
  });
  call.on('end', () => call.end());
  call.on('error', () => {});
}

const server = new grpc.Server();
server.addService(pb.Filter.service, {
  Describe: (call, callback) => callback(null, {
    name: 'soak-' + name, version: '1.0',
    events: ['EVENT_TYPE_RCPT', 'EVENT_TYPE_HEADER', 'EVENT_TYPE_EOM'],
    observe_only: ['EVENT_TYPE_HEADER'], actions: ['ACTION_ADD_HEADER'],
  }),
  Session: session,
});
server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(`soak_filter.js: cannot listen on ${listen}: ${err.message}`); process.exit(1); }
  process.stdout.write(`port=${port}\n`);
});
const stop = () => {
  server.tryShutdown(() => process.exit(0));
  setTimeout(() => { server.forceShutdown(); process.exit(0); }, 1000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
