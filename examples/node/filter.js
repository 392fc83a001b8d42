#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Copyright the miltergw authors.
//
// Example miltergw filter (grpc-js): node filter.js [--listen HOST:PORT] [--multiplexed] POLICY [ARGS...]
// Policies: see README.md. The proto is loaded at run time from ../../proto ($MILTERGW_PROTO_DIR).
// Also serves grpc.health.v1.Health and server reflection (std_services.js).
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const std = require('./std_services');

const PROTO_DIR = process.env.MILTERGW_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');
// filter.proto, and the health and reflection protocols (for reflection to describe them)
const definition = std.load(PROTO_DIR, 'miltergw/v1/filter.proto', {
  keepCase: true, longs: String, enums: String, oneofs: true, defaults: true,
});
const pb = grpc.loadPackageDefinition(definition).miltergw.v1;

// POLICY: [number of ARGS, events, observe-only events, actions] (EVENT_TYPE_*, ACTION_*)
const POLICIES = {
  'accept': [0, ['EOM'], [], []],
  'reject-subject': [1, ['HEADER', 'EOM'], ['HEADER'], []],
  'tempfail-rcpt': [1, ['RCPT'], [], []],
  'addheader': [2, ['EOM'], [], ['ADD_HEADER']],
  'rewrite-body': [1, ['EOM'], [], ['REPLACE_BODY']],
  'quarantine': [1, ['EOM'], [], ['QUARANTINE']],
  'chgfrom': [1, ['EOM'], [], ['CHANGE_FROM']],
  'addrcpt': [1, ['EOM'], [], ['ADD_RCPT']],
  'delrcpt': [1, ['RCPT', 'EOM'], ['RCPT'], ['DELETE_RCPT']],
  'discard': [0, ['EOM'], [], []],
  'macros': [0, ['CONNECT', 'MAIL', 'RCPT', 'DATA', 'EOH', 'EOM'],
    ['CONNECT', 'MAIL', 'RCPT', 'DATA', 'EOH'], ['ADD_HEADER']],
};
// Postfix replaces its default macro lists with what filters ask for: ask for all we want.
const MACROS = {
  CONNECT: ['j', '{daemon_name}', '{daemon_addr}', 'v', '_'],
  MAIL: ['{mail_addr}', '{mail_host}', '{mail_mailer}'],
  RCPT: ['{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}'],
  DATA: ['i'], EOH: ['i'], EOM: ['i'],
};
const types = (names) => names.map((n) => 'EVENT_TYPE_' + n);
const bare = (addr) => addr.trim().replace(/^<|>$/g, '').toLowerCase(); // for comparing
const angle = (addr) => (addr.startsWith('<') ? addr : `<${addr}>`);
const refuse = (reply, verdict, code, status, text) =>
  Object.assign(reply, { verdict, response: { code, enhanced_status: status, lines: [text] } });

// The state of one Session stream: one SMTP connection, any number of messages.
class Stream {
  constructor(policy, args) {
    this.policy = policy;
    this.args = args;
    this.silent = new Set(types(POLICIES[policy][2])); // events not to answer
    this.connMacros = {}; // CONNECT macros are sent once: keep them for the connection
    this.reset();
  }

  reset() { // forget the current message
    Object.assign(this, { hit: false, rcpts: [], msgMacros: {} });
  }

  // The reply to event e, or null if e needs none.
  handle(e) {
    const kind = e.event; // "connect", "mail", ... "eom", like the EventType names
    if (kind === 'start') { // answer according to the declaration in force
      this.silent = new Set(e.start.effective.observe_only);
      return null;
    }
    if (kind === 'abort' || kind === 'mail') this.reset();
    if (kind === 'abort') return null;
    Object.assign(kind === 'connect' || kind === 'helo' ? this.connMacros : this.msgMacros,
      e.macros);
    const reply = { event_id: e.event_id, verdict: 'VERDICT_CONTINUE', modifications: [] };
    if (kind === 'header' && e.header.name.toLowerCase() === 'subject') { // only reject-subject
      const unfolded = e.header.value.toString().replace(/\r?\n/g, ''); // folded: "a\n\tb"
      this.hit ||= unfolded.toLowerCase().includes(this.args[0].toLowerCase());
    } else if (kind === 'rcpt' && this.args.length && bare(e.rcpt.address) === bare(this.args[0])) {
      this.rcpts.push(e.rcpt.address);
      if (this.policy === 'tempfail-rcpt') {
        refuse(reply, 'VERDICT_TEMPFAIL', 451, '4.7.1', 'Recipient temporarily refused');
      }
    } else if (kind === 'eom') {
      this.endOfMessage(reply);
      this.reset();
    }
    return this.silent.has('EVENT_TYPE_' + kind.toUpperCase()) ? null : reply;
  }

  endOfMessage(reply) {
    const [a, mods] = [this.args, reply.modifications];
    switch (this.policy) { // bytes fields take a Buffer: a string would be read as base64
      case 'accept': reply.verdict = 'VERDICT_ACCEPT'; break;
      case 'discard': reply.verdict = 'VERDICT_DISCARD'; break;
      case 'reject-subject':
        if (this.hit) {
          refuse(reply, 'VERDICT_REJECT', 550, '5.7.1', 'Subject contains forbidden word');
        }
        break;
      case 'addheader': mods.push({ add_header: { name: a[0], value: Buffer.from(a[1]) } }); break;
      case 'rewrite-body': { // lines end in CRLF, the last one too
        let body = a[0].replace(/\r?\n/g, '\r\n');
        if (body && !body.endsWith('\r\n')) body += '\r\n';
        mods.push({ replace_body: { body: Buffer.from(body) } });
        break;
      }
      case 'quarantine': mods.push({ quarantine: { reason: a[0] } }); break;
      case 'chgfrom': mods.push({ change_from: { address: angle(a[0]) } }); break;
      case 'addrcpt': mods.push({ add_recipient: { address: angle(a[0]) } }); break;
      case 'delrcpt': // exactly as the recipient arrived
        for (const r of this.rcpts) mods.push({ delete_recipient: { address: r } });
        break;
      case 'macros':
        for (const [name, value] of Object.entries({ ...this.connMacros, ...this.msgMacros })) {
          const hname = 'X-Macro-' + name.replace(/[^A-Za-z0-9_-]/g, ''); // {mail_addr}: mail_addr
          mods.push({ add_header: { name: hname, value: Buffer.from(value) } });
        }
    }
  }
}

function main(argv) {
  let listen = '127.0.0.1:50051';
  let multiplexed = false; // take many SMTP connections per stream (Description.multiplexed)
  for (;;) {
    if (argv[0] === '--listen') [listen, argv] = [argv[1], argv.slice(2)];
    else if (argv[0] === '--multiplexed') [multiplexed, argv] = [true, argv.slice(1)];
    else break;
  }
  const [policy, ...args] = argv;
  if (!Object.hasOwn(POLICIES, policy) || args.length !== POLICIES[policy][0]) {
    const list = Object.entries(POLICIES).map(([p, v]) => `${p} (${v[0]} args)`).join(', ');
    console.error('usage: filter.js [--listen HOST:PORT] [--multiplexed] POLICY [ARGS...]\n' +
      `POLICY: ${list}`);
    process.exit(2);
  }
  const [, events, observeOnly, actions] = POLICIES[policy];
  const server = new grpc.Server();
  server.addService(pb.Filter.service, {
    Describe: (call, callback) => callback(null, {
      name: `example-node-${policy}`, version: '1.0', events: types(events),
      observe_only: types(observeOnly), actions: actions.map((a) => 'ACTION_' + a),
      macros: policy !== 'macros' ? [] :
        Object.entries(MACROS).map(([stage, names]) => ({ stage: 'EVENT_TYPE_' + stage, names })),
      multiplexed,
    }),
    Session: (call) => { // replies in event order: answer each event as it comes
      // The state of each SMTP connection by its Event.session: one per stream ("0"), or
      // with --multiplexed many, each ended by its SessionEnd
      const streams = new Map();
      call.on('data', (e) => {
        if (e.event === 'end') {
          streams.delete(e.session);
          return;
        }
        if (!streams.has(e.session)) streams.set(e.session, new Stream(policy, args));
        const reply = streams.get(e.session).handle(e);
        if (reply) call.write({ ...reply, session: e.session }); // named back when multiplexed
      });
      call.on('end', () => call.end()); // the gateway half-closed: the connection is over
      call.on('error', () => {}); // cancelled by the gateway
    },
  });
  // health and reflection; SIGTERM/SIGINT: NOT_SERVING, then open streams get a second
  std.serve(server, definition, ['miltergw.v1.Filter'], 1000);
  server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`filter.js: cannot listen on ${listen}: ${err.message}`);
      process.exit(1);
    }
    process.stdout.write(`port=${port}\n`);
  });
}

main(process.argv.slice(2));
