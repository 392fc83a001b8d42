#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""Regenerate the Python modules the miltergw package ships pre-generated:

  miltergw/v1/filter_pb2.py, filter_pb2_grpc.py   from ../../proto/miltergw/v1/filter.proto
  miltergw/_std/health_pb2.py, reflection_v1alpha_pb2.py, reflection_v1_pb2.py
                                                 from proto/miltergw/_std/*.proto

with protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc), or
with `python3 -m grpc_tools.protoc` if those are missing.

  generate_stubs.py            write them into the package (after editing a .proto)
  generate_stubs.py --check    exit 1 and name the files that differ from a fresh run
  generate_stubs.py --out DIR  write them under DIR instead
"""
import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_PROTO = os.path.join(HERE, "..", "..", "proto")
SDK_PROTO = os.path.join(HERE, "proto")
STD = ["health.proto", "reflection_v1alpha.proto", "reflection_v1.proto"]
# (generated file, relative to the package root's parent)
FILES = ["miltergw/v1/filter_pb2.py", "miltergw/v1/filter_pb2_grpc.py"] + [
    "miltergw/_std/%s_pb2.py" % p[:-len(".proto")] for p in STD]


def protoc_argv():
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if protoc and plugin:
        return [protoc, "--plugin=protoc-gen-grpc_python=" + plugin]
    return [sys.executable, "-m", "grpc_tools.protoc"]


def generate(out):
    base = protoc_argv()
    subprocess.run(base + ["-I", REPO_PROTO, "--python_out=" + out, "--grpc_python_out=" + out,
                           "miltergw/v1/filter.proto"], cwd=REPO_PROTO, check=True)
    subprocess.run(base + ["-I", SDK_PROTO, "--python_out=" + out]
                   + ["miltergw/_std/" + p for p in STD], cwd=SDK_PROTO, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out")
    o = ap.parse_args()
    if o.out:
        generate(o.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        stale = [f for f in FILES if not os.path.exists(os.path.join(HERE, f))
                 or not filecmp.cmp(os.path.join(tmp, f), os.path.join(HERE, f), shallow=False)]
        if o.check:
            for f in stale:
                print("stale: sdk/python/%s (run sdk/python/generate_stubs.py)" % f)
            return 1 if stale else 0
        for f in FILES:
            shutil.copyfile(os.path.join(tmp, f), os.path.join(HERE, f))
        print("generated: " + ", ".join(FILES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
