#!/bin/sh
# Install everything miltergw needs to build, test and run its demo on Debian 12.
# Run as root. Postfix is installed unconfigured: the tests and the demo run private
# instances of it and never touch a system one.
set -eu
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# OpenDKIM, OpenDMARC and pymilter are real milters for the milter-backend tests
# (tests/integration/milters.py), which run private instances of them on free loopback
# ports with their own configuration: the packaged daemons must not run. Their maintainer
# scripts start them through invoke-rc.d (on unix sockets under /run, no port), so unless
# the image already has a policy-rc.d, one that denies every start is in place for the
# install, and whatever still got started is stopped by the PID of its pid file.
# opendmarc would also try to create a MySQL database through dbconfig-common: declined.
echo "opendmarc opendmarc/dbconfig-install boolean false" | debconf-set-selections
MGW_POLICY_RC=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# tools/setup-debian.sh: no service starts during install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    MGW_POLICY_RC=/usr/sbin/policy-rc.d
    trap 'rm -f "$MGW_POLICY_RC"' EXIT
fi
apt-get update
apt-get install -y --no-install-recommends \
    build-essential cmake pkg-config clang libclang-rt-14-dev \
    libevent-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
    libgrpc-dev libcmocka-dev libcyaml-dev libyaml-dev \
    postfix swaks miltertest libmilter-dev \
    opendkim opendkim-tools opendmarc python3-milter \
    python3 python3-grpcio python3-protobuf protobuf-compiler-grpc \
    python3-pip python3-setuptools python3-wheel \
    procps ca-certificates \
    podman buildah skopeo runc slirp4netns catatonit debootstrap shellcheck
if [ -n "$MGW_POLICY_RC" ]; then
    rm -f "$MGW_POLICY_RC"
    trap - EXIT
fi
for pidfile in /run/opendkim/opendkim.pid /run/opendmarc/opendmarc.pid; do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")" || true
    fi
done
# The Node.js example filter needs node and npm; many images ship them already (and a
# packaged node that bundles npm conflicts with Debian's npm), so only install if absent.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends nodejs npm
fi
# Sendmail for the Sendmail integration tests (tests/integration/test_sendmail.py).
# Debian's sendmail-bin conflicts with postfix (both provide mail-transport-agent), so it
# is never installed: its .debs are downloaded into a cache and unpacked with dpkg-deb -x
# into a private prefix (no maintainer scripts run, no init script, no /etc/mail, no
# /usr/sbin/sendmail); tests/integration/mgwsendmail.py runs that binary with a generated
# sendmail.cf. m4 builds the .cf from sendmail-cf; liblockfile1 and libwrap0 are runtime
# libraries of the sendmail binary that apt would otherwise have pulled in; util-linux
# provides unshare (the test daemon gets a qualified hostname in its own UTS namespace).
apt-get install -y --no-install-recommends m4 liblockfile1 libwrap0 libdb5.3 libldap-2.5-0 \
    libnsl2 libsasl2-2 libssl3 util-linux
SENDMAIL_DEBS=/var/cache/miltergw-test/debs
SENDMAIL_PREFIX=/opt/miltergw-test/sendmail
mkdir -p "$SENDMAIL_DEBS" "$SENDMAIL_PREFIX"
# apt-get download writes into the current directory (as _apt if it can, hence the chmod)
chmod 0755 "$SENDMAIL_DEBS"
for pkg in sendmail-base sendmail-cf sendmail-bin; do
    if ! ls "$SENDMAIL_DEBS/${pkg}_"*.deb >/dev/null 2>&1; then
        (cd "$SENDMAIL_DEBS" && apt-get download "$pkg")
    fi
done
# Unpack (again) every time: idempotent, and picks up a newer cached .deb
for deb in "$SENDMAIL_DEBS"/sendmail-base_*.deb "$SENDMAIL_DEBS"/sendmail-cf_*.deb \
           "$SENDMAIL_DEBS"/sendmail-bin_*.deb; do
    dpkg-deb -x "$deb" "$SENDMAIL_PREFIX"
done
test -x "$SENDMAIL_PREFIX/usr/libexec/sendmail/sendmail"
test -f "$SENDMAIL_PREFIX/usr/share/sendmail/cf/m4/cf.m4"
# dkimpy-milter, a real pymilter milter, for tests/integration/test_sdk_python.py (run
# under pymilter and, its imports changed, behind miltergw with sdk/python). Unpacked into
# a private prefix like Sendmail, never installed: its package would add a user and start
# a system service. libsodium23 is the runtime library of python3-nacl.
apt-get install -y --no-install-recommends libsodium23
DKIMPY_PREFIX=/opt/miltergw-test/dkimpy
mkdir -p "$DKIMPY_PREFIX"
for pkg in dkimpy-milter python3-dkim python3-authres python3-nacl python3-dnspython; do
    if ! ls "$SENDMAIL_DEBS/${pkg}_"*.deb >/dev/null 2>&1; then
        (cd "$SENDMAIL_DEBS" && apt-get download "$pkg")
    fi
    for deb in "$SENDMAIL_DEBS/${pkg}_"*.deb; do
        dpkg-deb -x "$deb" "$DKIMPY_PREFIX"
    done
done
test -f "$DKIMPY_PREFIX/usr/lib/python3/dist-packages/dkimpy_milter/__init__.py"
