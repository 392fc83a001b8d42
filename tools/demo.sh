#!/bin/sh
# Demo: build miltergw and the C example filter, start three example filters (Python, Node.js,
# C), miltergw and a private Postfix on loopback, send a handful of mails, print what happened
# to each, stop everything. Exit status 0 only if every outcome is what the filters should do.
# Run tools/setup-debian.sh (as root) once before.
set -eu
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target miltergw mgw_example_c >/dev/null
exec /usr/bin/python3 tools/demo.py --miltergw build/miltergw \
    --example-c build/examples/c/policy_filter
