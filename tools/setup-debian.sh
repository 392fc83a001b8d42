#!/bin/sh
# Install everything miltergw needs to build, test and run its demo on Debian 12.
# Run as root. Postfix is installed unconfigured: the tests and the demo run private
# instances of it and never touch a system one.
set -eu
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update
apt-get install -y --no-install-recommends \
    build-essential cmake pkg-config clang libclang-rt-14-dev \
    libevent-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
    libgrpc-dev libcmocka-dev libcyaml-dev libyaml-dev \
    postfix swaks miltertest libmilter-dev \
    python3 python3-grpcio python3-protobuf protobuf-compiler-grpc \
    procps ca-certificates \
    podman buildah skopeo runc slirp4netns catatonit debootstrap shellcheck
# The Node.js example filter needs node and npm; many images ship them already (and a
# packaged node that bundles npm conflicts with Debian's npm), so only install if absent.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends nodejs npm
fi
