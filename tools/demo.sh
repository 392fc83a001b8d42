#!/bin/sh
# Demo: build miltergw and the C test filter, start two filter services, miltergw and a
# private Postfix on loopback, send a handful of mails, print what happened to each, stop
# everything.
# Run tools/setup-debian.sh (as root) once before.
set -eu
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target miltergw mgw_test_filter >/dev/null
exec /usr/bin/python3 tools/demo.py --miltergw build/miltergw \
    --test-filter build/tests/filter/mgw_test_filter
