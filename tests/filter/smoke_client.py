#!/usr/bin/python3
# smoke_client.py - a tiny miltergw.v1.Filter client: Describe, then one scripted session.
# SPDX-License-Identifier: GPL-2.0-or-later
#
# For poking at a filter service by hand (grpcurl is not packaged on Debian 12) and as a
# library for scripted checks. Needs Debian's python3-grpcio, python3-protobuf and
# protobuf-compiler-grpc; run it with /usr/bin/python3. Stubs are generated from the proto at
# start into a temporary directory, so nothing generated is kept.
#
#   smoke_client.py --target 127.0.0.1:PORT            # a running filter
#   smoke_client.py --filter-bin build/.../mgw_test_filter -- --reject-at rcpt
#
# Prints the Description, then one line per reply: "<event_id> <event kind> <VERDICT> ...".
import argparse
import os
import queue
import subprocess
import sys
import tempfile

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'proto')


def load_stubs(proto_dir=PROTO_DIR):
    """Generates and imports filter_pb2 / filter_pb2_grpc; returns (pb2, pb2_grpc)."""
    out = tempfile.mkdtemp(prefix='mgw-pystubs-')
    subprocess.run(['protoc', '-I', proto_dir, '--python_out', out, '--grpc_out', out,
                    '--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin',
                    'miltergw/v1/filter.proto'], check=True)
    sys.path.insert(0, out)
    from miltergw.v1 import filter_pb2, filter_pb2_grpc  # noqa: E402
    return filter_pb2, filter_pb2_grpc


def start_filter(binary, flags):
    """Starts the test filter; returns (process, target) once it printed port=N."""
    proc = subprocess.Popen([binary] + list(flags), stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().strip()
    if not first.startswith('port='):
        proc.kill()
        raise RuntimeError('filter did not print port=N (got %r)' % first)
    return proc, '127.0.0.1:' + first[5:]


class Session:
    """One Session stream. send() events; recv() replies (None once the stream ended)."""

    def __init__(self, pb2, stub, timeout=10.0):
        self.pb2 = pb2
        self.out = queue.Queue()
        self.next_id = 1
        self.kinds = {}
        self.call = stub.Session(iter(self.out.get, None), timeout=timeout)

    def send(self, kind, macros=None, **fields):
        """Sends Event(<kind>=<Message>(**fields)); returns its event_id."""
        ev = self.pb2.Event(event_id=self.next_id, macros=macros or {})
        getattr(ev, kind).CopyFrom(getattr(self.pb2, EVENT_TYPES[kind])(**fields))
        self.kinds[self.next_id] = kind
        self.next_id += 1
        self.out.put(ev)
        return ev.event_id

    def recv(self):
        try:
            return next(self.call)
        except StopIteration:
            return None

    def close(self):
        """Half-closes the stream (the gateway's QUIT)."""
        self.out.put(None)


EVENT_TYPES = {
    'start': 'SessionStart', 'connect': 'Connect', 'helo': 'Helo', 'mail': 'MailFrom',
    'rcpt': 'RcptTo', 'data': 'Data', 'header': 'Header', 'eoh': 'EndOfHeaders',
    'body': 'BodyChunk', 'eom': 'EndOfMessage', 'abort': 'Abort', 'unknown': 'Unknown',
}

# One SMTP connection carrying one message.
SCRIPT = [
    ('start', {}, dict(session_id='smoke-1', gateway_version='smoke', filter_name='f1')),
    ('connect', {'j': 'mx.example.org'}, dict(hostname='client.example.net', family=3,
                                              address='192.0.2.1', port=40000)),
    ('helo', {}, dict(name='client.example.net')),
    ('mail', {'{mail_addr}': 'a@example.net'}, dict(address='<a@example.net>', args=['SIZE=10'])),
    ('rcpt', {'{rcpt_addr}': 'b@example.org'}, dict(address='<b@example.org>')),
    ('rcpt', {'{rcpt_addr}': 'c@example.org'}, dict(address='<c@example.org>')),
    ('data', {}, {}),
    ('header', {}, dict(name='Subject', value=b'hello\n\tworld')),
    ('header', {}, dict(name='From', value=b'<a@example.net>')),
    ('eoh', {}, {}),
    ('body', {}, dict(data=b'line 1\r\nline 2\r\n')),
    ('eom', {'i': 'ABC123'}, {}),
]


def run_script(pb2, stub, script=SCRIPT, answered=None, timeout=10.0):
    """Sends the script ping-pong style; returns [(event_id, kind, Reply), ...].

    answered(kind) says whether a final reply is expected (default: every kind but start and
    abort); when it is, the client waits for it (and any PROGRESS) before going on, like the
    gateway, which waits for the MTA's next command.
    """
    answered = answered or (lambda kind: kind not in ('start', 'abort'))
    s = Session(pb2, stub, timeout)
    got = []
    for kind, macros, fields in script:
        eid = s.send(kind, macros, **fields)
        if not answered(kind):
            continue
        while True:
            r = s.recv()
            if r is None:
                return got
            got.append((r.event_id, s.kinds.get(r.event_id, '?'), r))
            if r.verdict != pb2.VERDICT_PROGRESS or r.event_id != eid:
                break
    s.close()
    while True:
        r = s.recv()
        if r is None:
            return got
        got.append((r.event_id, s.kinds.get(r.event_id, '?'), r))


def describe_reply(pb2, r):
    text = '%d %s' % (r.event_id, pb2.Verdict.Name(r.verdict))
    if r.HasField('response'):
        text += ' code=%d xcode=%s lines=%r' % (r.response.code, r.response.enhanced_status,
                                                list(r.response.lines))
    for m in r.modifications:
        text += ' mod=%s(%s)' % (m.WhichOneof('modification'),
                                 str(getattr(m, m.WhichOneof('modification'))).replace('\n', ' '))
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--target', help='host:port or unix:path of a running filter')
    ap.add_argument('--filter-bin', help='start this filter binary with the flags after --')
    ap.add_argument('flags', nargs='*', help='flags for --filter-bin')
    a = ap.parse_args()
    import grpc
    pb2, pb2_grpc = load_stubs()
    proc = None
    target = a.target
    if a.filter_bin:
        proc, target = start_filter(a.filter_bin, a.flags)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb2_grpc.FilterStub(ch)
            d = stub.Describe(pb2.DescribeRequest(gateway_version='smoke', filter_name='f1'),
                              timeout=5)
            print('describe:', str(d).replace('\n', ' '))
            for eid, kind, r in run_script(pb2, stub):
                print(kind, describe_reply(pb2, r))
    finally:
        if proc:
            proc.terminate()
            rc = proc.wait(10)
            print('filter exit status', rc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
