#!/bin/sh
# Demo: build miltergw, start a private Postfix on loopback that uses it as its milter,
# send a handful of mails through it, print what happened to each, stop everything.
# Run tools/setup-debian.sh (as root) once before.
set -eu
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target miltergw >/dev/null
exec /usr/bin/python3 tools/demo.py --miltergw build/miltergw
