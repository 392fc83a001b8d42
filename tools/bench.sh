#!/usr/bin/env bash
# bench.sh - miltergw throughput, CPU and memory, side by side with a libmilter null milter.
#
# On loopback, in one run, it starts:
#   libmilter  - tools/libmilter_null (Sendmail's libmilter, a thread per connection)
#   mgw-null   - miltergw without filters (a null milter)
#   mgw-filter - miltergw with one C gRPC filter (tests/filter/mgw_test_filter, which
#                declares every event and continues/accepts everything)
# and drives each with tools/mgw_load for DURATION seconds at each count in CONNS. It
# prints messages/s, per-message latency, the server's CPU time per message (utime+stime
# from /proc/PID/stat, before/after) and RSS. Then it opens IDLE negotiated connections
# to a fresh miltergw and reports RSS per connection. Everything it starts is stopped by
# PID on exit.
#
# Usage: tools/bench.sh [BUILD_DIR]       (default: build-bench, Release, built if needed)
# Last, at one connection, it compares per-message latency with one and with three
# filters that each take 5 ms per event (fan-out), and with a filter that is down.
#
# Environment: DURATION (5), CONNS ("1 16 100 1000"), IDLE ("1000 10000"), LATENCY (1),
#   LOAD_ARGS (extra mgw_load options, e.g. "--body-bytes 20000"),
#   MILTERGW, MGW_LOAD, LIBMILTER_NULL, TEST_FILTER (binary paths, override BUILD_DIR).
# Needs: Linux /proc, bash, awk.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build-bench}
DURATION=${DURATION:-5}
CONNS=${CONNS-1 16 100 1000} # set to "" to skip the throughput runs
IDLE=${IDLE-1000 10000}      # set to "" to skip the idle-memory runs
LATENCY=${LATENCY:-1}        # 0 skips the fan-out / filter-down runs
LOAD_ARGS=${LOAD_ARGS:-}
MILTERGW=${MILTERGW:-$build/miltergw}
MGW_LOAD=${MGW_LOAD:-$build/tools/mgw_load}
LIBMILTER_NULL=${LIBMILTER_NULL:-$build/tools/libmilter_null}
TEST_FILTER=${TEST_FILTER:-$build/tests/filter/mgw_test_filter}

if [ ! -x "$MILTERGW" ] || [ ! -x "$MGW_LOAD" ] || [ ! -x "$TEST_FILTER" ]; then
    echo "== building $build (Release)"
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j "$(nproc)" >/dev/null
fi
for b in "$MILTERGW" "$MGW_LOAD" "$TEST_FILTER"; do
    if [ ! -x "$b" ]; then
        echo "bench.sh: missing $b (is add_subdirectory(tools) in CMakeLists.txt?)" >&2
        exit 1
    fi
done
have_libmilter=1
[ -x "$LIBMILTER_NULL" ] || { have_libmilter=0; echo "bench.sh: no $LIBMILTER_NULL: libmilter rows skipped" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mgw-bench.XXXXXX")
pids=()
# Stop (by PID) and reap everything this script started.
stop_all() {
    local pid i alive
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # libmilter takes a few seconds to notice; anything still alive after 10 s is killed.
    for ((i = 0; i < 100; i++)); do
        alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null && [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
                alive=1
            fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    stop_all
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hz=$(getconf CLK_TCK)
load_failed=0

# utime+stime of a process, in clock ticks.
cpu_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) } # the command name may contain spaces; fields start at "state"
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# Wait up to 10 s for a file to contain a pattern (a process's "listening" line).
wait_for() {
    local file=$1 pattern=$2 i
    for ((i = 0; i < 100; i++)); do
        if grep -q -- "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench.sh: timed out waiting for \"$pattern\" in $file:" >&2
    cat "$file" >&2
    exit 1
}

# A TCP port nobody listens on (libmilter cannot bind port 0 and report it).
free_port() {
    local port hex
    while :; do
        port=$((20000 + RANDOM % 12000))
        printf -v hex ':%04X ' "$port"
        if ! grep -q -- "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Each start_* truncates its output file first: wait_for must not read the line of an
# earlier instance that used the same file.

# Start miltergw on an ephemeral port; sets gw_pid and gw_port. $1 = log name, rest = args.
start_miltergw() {
    local log=$work/$1.log
    shift
    : >"$log"
    "$MILTERGW" --listen inet:127.0.0.1:0 --max-connections 0 "$@" 2>"$log" &
    gw_pid=$!
    pids+=("$gw_pid")
    wait_for "$log" 'msg=listening'
    gw_port=$(sed -n 's/.*msg=listening listen=inet:127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
}

# The value of key=value in a line of mgw_load output.
field() {
    local kv
    for kv in $2; do
        if [ "${kv%%=*}" = "$1" ]; then
            echo "${kv#*=}"
            return
        fi
    done
    echo 0
}

# Start the C test filter on an ephemeral port; sets filter_pid and filter_port.
start_filter() {
    : >"$work/filter.out"
    "$TEST_FILTER" --listen 127.0.0.1:0 "$@" >"$work/filter.out" 2>>"$work/filter.log" &
    filter_pid=$!
    pids+=("$filter_pid")
    wait_for "$work/filter.out" '^port='
    filter_port=$(sed -n 's/^port=//p' "$work/filter.out")
}

# Start the libmilter null milter on a free port; sets lm_pid and lm_port.
start_libmilter() {
    lm_port=$(free_port)
    : >"$work/libmilter.log"
    "$LIBMILTER_NULL" "inet:$lm_port@127.0.0.1" 2>"$work/libmilter.log" &
    lm_pid=$!
    pids+=("$lm_pid")
    wait_for "$work/libmilter.log" listening
}

# ---- servers ----

if [ "$have_libmilter" = 1 ]; then
    start_libmilter
fi

start_miltergw mgw-null
null_pid=$gw_pid null_port=$gw_port

start_filter
start_miltergw mgw-filter --filter "f1=127.0.0.1:$filter_port"
fgw_pid=$gw_pid fgw_port=$gw_port

# Raise the descriptor limit for the largest run (inherited by mgw_load); both ends of
# every loopback connection count against one limit per process, plus some slack.
max_conns=0
for n in $CONNS $IDLE; do
    ((n > max_conns)) && max_conns=$n
done
need=$((max_conns + 256))
if (($(ulimit -n) < need)); then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
nofile=$(ulimit -n)

# ---- throughput ----

echo "== machine: $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
echo "== $(uname -sr); ${DURATION}s per run; connections: $CONNS; mgw_load args: ${LOAD_ARGS:-defaults}"
if [ -n "$CONNS" ]; then
    echo "   (CPU: utime+stime of the server per message; mgw-filter also lists the filter's)"
    printf '%-11s %6s %10s %8s %8s %13s %13s %8s %6s\n' setup conns msgs/s p50_ms p99_ms \
        srv_cpu_us/msg filt_cpu_us/msg rss_MB errors
fi

# One measured run: $1 label, $2 server pid, $3 port spec, $4 connections, $5 filter pid/"-".
run() {
    local label=$1 pid=$2 spec=$3 n=$4 fpid=$5 out c0 c1 f0=0 f1=0 msgs fcpu
    if ((n + 64 > nofile)); then
        printf '%-11s %6s  skipped: ulimit -n is %s\n' "$label" "$n" "$nofile"
        return
    fi
    c0=$(cpu_ticks "$pid")
    [ "$fpid" != - ] && f0=$(cpu_ticks "$fpid")
    # shellcheck disable=SC2086 # LOAD_ARGS is a list of options
    if ! out=$("$MGW_LOAD" --connect "$spec" --connections "$n" --duration "$DURATION" \
        $LOAD_ARGS 2>"$work/load.err"); then
        load_failed=1
        echo "bench.sh: mgw_load against $label failed:" >&2
        cat "$work/load.err" >&2
    fi
    c1=$(cpu_ticks "$pid")
    [ "$fpid" != - ] && f1=$(cpu_ticks "$fpid")
    msgs=$(field messages "$out")
    fcpu=-
    if [ "$fpid" != - ]; then
        fcpu=$(awk -v t=$((f1 - f0)) -v hz="$hz" -v m="$msgs" \
            'BEGIN { printf "%.1f", m ? t / hz * 1e6 / m : 0 }')
    fi
    printf '%-11s %6s %10s %8s %8s %13s %13s %8s %6s\n' "$label" "$n" \
        "$(field msgs_per_sec "$out")" "$(field p50_ms "$out")" "$(field p99_ms "$out")" \
        "$(awk -v t=$((c1 - c0)) -v hz="$hz" -v m="$msgs" \
            'BEGIN { printf "%.1f", m ? t / hz * 1e6 / m : 0 }')" "$fcpu" \
        "$(awk -v k="$(rss_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(field errors "$out")"
    echo "$label $n $(field msgs_per_sec "$out")" >>"$work/rates"
}

for n in $CONNS; do
    if [ "$have_libmilter" = 1 ]; then
        run libmilter "$lm_pid" "inet:127.0.0.1:$lm_port" "$n" -
    fi
    run mgw-null "$null_pid" "inet:127.0.0.1:$null_port" "$n" -
    run mgw-filter "$fgw_pid" "inet:127.0.0.1:$fgw_port" "$n" "$filter_pid"
done

if [ "$have_libmilter" = 1 ] && [ -s "$work/rates" ]; then
    echo "== mgw-filter msgs/s as a share of libmilter's (target: >= 50% at 16, >= 100% at 1000)"
    awk '{ r[$1, $2] = $3; if (!seen[$2]++) order[++k] = $2 }
        END { for (i = 1; i <= k; i++) { n = order[i]
            if (r["libmilter", n] > 0 && (("mgw-filter", n) in r))
                printf "   %5s conns: %5.1f%%  (mgw-null: %5.1f%%)\n", n,
                    100 * r["mgw-filter", n] / r["libmilter", n],
                    100 * r["mgw-null", n] / r["libmilter", n] } }' "$work/rates"
fi

# Stop the throughput servers so the idle runs have the machine (and descriptors).
stop_all

# ---- idle memory ----

if [ -n "$IDLE" ]; then
    echo "== idle negotiated connections (CONNECT and HELO answered), fresh server per row"
    printf '%-11s %6s %12s %12s %14s\n' setup conns base_RSS_MB RSS_MB KB/conn
fi

# $1 label, $2 server pid, $3 port, $4 connections.
idle_row() {
    local label=$1 pid=$2 port=$3 n=$4 base after lpid ready i status=0
    if ((n + 64 > nofile)); then
        printf '%-11s %6s  skipped: ulimit -n is %s\n' "$label" "$n" "$nofile"
        return
    fi
    sleep 0.5
    base=$(rss_kb "$pid")
    : >"$work/idle.out"
    "$MGW_LOAD" --connect "inet:127.0.0.1:$port" --connections "$n" --messages 0 \
        --duration 120 >"$work/idle.out" 2>"$work/idle.err" &
    lpid=$!
    pids+=("$lpid")
    for ((i = 0; i < 600; i++)); do
        grep -q "^ready" "$work/idle.out" && break
        kill -0 "$lpid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1 # let the server finish its bookkeeping
    after=$(rss_kb "$pid")
    ready=$(sed -n 's/^ready connections=//p' "$work/idle.out")
    kill -TERM "$lpid" 2>/dev/null || true
    wait "$lpid" 2>/dev/null || status=$?
    if [ "${ready:-0}" != "$n" ] || [ "$status" != 0 ]; then
        load_failed=1
        echo "bench.sh: $label: ${ready:-0} of $n idle connections set up, mgw_load exit $status:" >&2
        head -5 "$work/idle.out" "$work/idle.err" >&2
    fi
    printf '%-11s %6s %12s %12s %14s\n' "$label" "$n" \
        "$(awk -v k="$base" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v k="$after" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v a="$after" -v b="$base" -v n="${ready:-0}" \
            'BEGIN { printf "%.2f", n ? (a - b) / n : 0 }')"
}

for n in $IDLE; do
    start_miltergw idle-null
    idle_row mgw-null "$gw_pid" "$gw_port" "$n"
    stop_all
done
for n in $IDLE; do
    start_filter
    start_miltergw idle-filter --filter "f1=127.0.0.1:$filter_port"
    idle_row mgw-filter "$gw_pid" "$gw_port" "$n"
    stop_all
done
if [ "$have_libmilter" = 1 ]; then
    for n in $IDLE; do
        start_libmilter
        idle_row libmilter "$lm_pid" "$lm_port" "$n"
        stop_all
    done
fi

# ---- fan-out and a filter that is down ----

# One connection for DURATION seconds; prints a row. $1 = label, rest = miltergw args.
latency_row() {
    local label=$1 out
    shift
    start_miltergw latency "$@"
    if ! out=$("$MGW_LOAD" --connect "inet:127.0.0.1:$gw_port" --duration "$DURATION" \
        2>"$work/load.err"); then
        load_failed=1
        echo "bench.sh: mgw_load against $label failed:" >&2
        cat "$work/load.err" >&2
    fi
    printf '%-34s %10s %8s %8s %6s\n' "$label" "$(field msgs_per_sec "$out")" \
        "$(field p50_ms "$out")" "$(field p99_ms "$out")" "$(field errors "$out")"
    kill "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
}

if [ "$LATENCY" != 0 ]; then
    echo "== per-message latency at 1 connection (a message is 15 answered events)"
    printf '%-34s %10s %8s %8s %6s\n' setup msgs/s p50_ms p99_ms errors
    slow=()
    for i in 1 2 3; do
        start_filter --delay-ms 5
        slow+=("--filter" "slow$i=127.0.0.1:$filter_port")
    done
    start_filter
    fast=$filter_port
    latency_row "1 filter, 5 ms per event" "${slow[@]:0:2}"
    latency_row "3 filters, 5 ms per event each" "${slow[@]}"
    latency_row "1 filter, no delay" --filter "f1=127.0.0.1:$fast"
    latency_row "same + 1 filter down (accept)" --filter "f1=127.0.0.1:$fast" \
        --filter "down=127.0.0.1:$(free_port),on_error=accept"
    stop_all
fi

exit "$load_failed"
