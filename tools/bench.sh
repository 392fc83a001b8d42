#!/usr/bin/env bash
# bench.sh - miltergw throughput, CPU and memory, side by side with a libmilter null milter.
#
# On loopback, in one run, it starts:
#   libmilter    - tools/libmilter_null (Sendmail's libmilter, a thread per connection)
#   mgw-null     - miltergw without filters (a null milter)
#   mgw-filter   - miltergw with one C gRPC filter (tests/filter/mgw_test_filter, which
#                  declares every event and continues/accepts everything)
#   mgw-3filters - miltergw with three such filters, each its own process
#   mgw-milter   - miltergw with the libmilter null milter behind it as a milter backend
#                  (kind=milter): the cost of putting an existing milter behind the gateway
#   mgw-mux      - mgw-filter with the filter declaring multiplexed streams: the sessions of
#                  many connections share a gRPC call (filter.proto, Description.multiplexed)
#   mgw-3mux     - mgw-3filters, the same way
# and drives each with tools/mgw_load for DURATION seconds at each count in CONNS, first
# with mgw_load's default message, then with a realistic one (100 KB body, 5 recipients,
# 20 headers). Per row it prints messages/s, per-message latency, the server's CPU time
# per message (utime+stime from /proc/PID/stat, before/after), the filters' CPU per
# message, the gateway's CPU per answered event, and RSS. Then it opens IDLE negotiated
# connections to a fresh server and reports RSS per connection (also with a filter that
# wants only message events, mgw-msgfilter, whose stream waits for the first MAIL); then, at one connection,
# it compares latency with one and three filters that each take 5 ms per event (fan-out),
# and with a filter that is down. Last, it sets the results against the targets of
# PRODUCT.md ("Performance targets"). Everything it starts is stopped by PID on exit.
#
# Usage: tools/bench.sh [BUILD_DIR]       (default: build-bench, Release, built if needed)
#
# Environment: DURATION (5), CONNS ("1 16 100 1000"), IDLE ("1000 10000"), LATENCY (1),
#   WORKERS (miltergw --workers for every run; "" = its default, one per CPU), SCALING
#   ("1 2": a table of mgw-null and mgw-filter at SCALING_CONNS (100) connections with
#   each --workers count; "" skips it),
#   REALISTIC (1; 0 skips the realistic-message pass),
#   LOAD_ARGS (extra mgw_load options for both passes; the realistic pass's own shape
#     options come after them and win),
#   OUT (results directory, default ./bench-out: results.tsv, idle.tsv, and with gnuplot
#     chart.svg and chart-realistic.svg),
#   MILTERGW, MGW_LOAD, LIBMILTER_NULL, TEST_FILTER (binary paths, override BUILD_DIR).
# Needs: Linux /proc, bash, awk; gnuplot for the charts (optional).
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build-bench}
DURATION=${DURATION:-5}
CONNS=${CONNS-1 16 100 1000} # set to "" to skip the throughput runs
IDLE=${IDLE-1000 10000}      # set to "" to skip the idle-memory runs
LATENCY=${LATENCY:-1}        # 0 skips the fan-out / filter-down runs
REALISTIC=${REALISTIC:-1}    # 0 skips the realistic-message pass
LOAD_ARGS=${LOAD_ARGS:-}
WORKERS=${WORKERS:-}         # miltergw's --workers for every run; "" = its default
SCALING=${SCALING-1 2}       # worker counts for the scaling table; "" skips it
GW_WORKERS_ARG=${WORKERS:+--workers $WORKERS}
OUT=${OUT:-$PWD/bench-out}
MILTERGW=${MILTERGW:-$build/miltergw}
MGW_LOAD=${MGW_LOAD:-$build/tools/mgw_load}
LIBMILTER_NULL=${LIBMILTER_NULL:-$build/tools/libmilter_null}
TEST_FILTER=${TEST_FILTER:-$build/tests/filter/mgw_test_filter}
REALISTIC_ARGS="--body-bytes 100000 --rcpts 5 --headers 20"
SETUPS="libmilter mgw-null mgw-filter mgw-3filters mgw-milter mgw-mux mgw-3mux"

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

mkdir -p "$OUT"
tsv=$OUT/results.tsv
idle_tsv=$OUT/idle.tsv
printf 'setup\tshape\tconns\tmsgs_per_sec\tp50_ms\tp99_ms\tsrv_cpu_us_per_msg\tfilter_cpu_us_per_msg\tgw_us_per_event\trss_mb\tevents_per_msg\terrors\n' >"$tsv"
printf 'setup\tconns\tbase_rss_mb\trss_mb\tkb_per_conn\n' >"$idle_tsv"
rm -f "$OUT/chart.svg" "$OUT/chart-realistic.svg" "$OUT/scaling.tsv" # nothing stale may look current

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

# utime+stime of processes, in clock ticks, summed.
cpu_ticks() {
    local stat f pid sum=0
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        stat=${stat##*) } # the command name may contain spaces; fields start at "state"
        read -r -a f <<<"$stat"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# RSS once it has stopped moving (two equal readings 0.2 s apart, at most 5 s): a server
# that has just started or just answered a burst may still be allocating.
rss_settled_kb() {
    local prev cur i
    prev=$(rss_kb "$1")
    for ((i = 0; i < 25; i++)); do
        sleep 0.2
        cur=$(rss_kb "$1")
        [ "$cur" = "$prev" ] && break
        prev=$cur
    done
    echo "$prev"
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

# A result cell: the 1-decimal quotient a/b, or "-" when b is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else printf "-" }'
}

# Each start_* truncates its output file first: wait_for must not read the line of an
# earlier instance that used the same file.

# Start miltergw on an ephemeral port; sets gw_pid and gw_port. $1 = log name, rest = args.
start_miltergw() {
    local log=$work/$1.log
    shift
    : >"$log"
    # shellcheck disable=SC2086 # GW_WORKERS_ARG is empty or one option and its value
    "$MILTERGW" --listen inet:127.0.0.1:0 --max-connections 0 $GW_WORKERS_ARG "$@" 2>"$log" &
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
# $1 = name (its own output file, so that filters started together cannot mix their
# "port=" lines), rest = filter args.
start_filter() {
    local out=$work/filter-$1.out
    shift
    : >"$out"
    "$TEST_FILTER" --listen 127.0.0.1:0 "$@" >"$out" 2>>"$work/filter.log" &
    filter_pid=$!
    pids+=("$filter_pid")
    wait_for "$out" '^port='
    filter_port=$(sed -n 's/^port=//p' "$out")
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

# Another libmilter null milter, behind miltergw as its milter backend. $1 log name.
start_milter_backend() {
    mb_port=$(free_port)
    : >"$work/$1.log"
    "$LIBMILTER_NULL" "inet:$mb_port@127.0.0.1" 2>"$work/$1.log" &
    mb_pid=$!
    pids+=("$mb_pid")
    wait_for "$work/$1.log" listening
}

# A benchmark whose server died measures nothing: stop with its log. $1 label, rest pids.
check_alive() {
    local label=$1 pid
    shift
    for pid in "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench.sh: $label: process $pid exited; logs:" >&2
            tail -n 20 "$work"/*.log >&2 || true
            exit 1
        fi
    done
}

# The descriptor limit for the largest run, raised before anything starts so that the
# servers inherit it as well as mgw_load: both ends of every loopback connection count
# against one limit per process, plus some slack.
max_conns=0
for n in $CONNS $IDLE; do
    ((n > max_conns)) && max_conns=$n
done
need=$((max_conns + 256))
if (($(ulimit -n) < need)); then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
nofile=$(ulimit -n)

cpu_model=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
commit=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)
started_at=$(date '+%Y-%m-%d %H:%M')
echo "== machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}; $(uname -sr); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== miltergw $commit, $started_at; ${DURATION}s per run; connections: ${CONNS:-none}; mgw_load args: ${LOAD_ARGS:-defaults}"

# ---- throughput ----

# Every setup here accepts every message: any other verdict means a failing filter path
# (its on_error answering fast), and the row would measure that, not the gateway.
not_accepted() {
    local bad
    bad=$(($(field other_verdicts "$3") + $(field conn_verdicts "$3")))
    if ((bad > 0)); then
        load_failed=1
        echo "bench.sh: $1 at $2 connections: $bad messages not accepted; see the logs in $work" >&2
    fi
}

# One measured run, one row. $1 label, $2 shape name, $3 connections, $4 shape's mgw_load
# args, $5 server pid, $6 port, $7 number of filters, rest = filter pids.
run() {
    local label=$1 shape=$2 n=$3 args=$4 pid=$5 port=$6 nf=$7 out c0 c1 f0=0 f1=0
    local msgs events srv fcpu=- gwev rss
    shift 7
    if ((n + 64 > nofile)); then
        printf '%-12s %6s  skipped: ulimit -n is %s\n' "$label" "$n" "$nofile"
        return
    fi
    c0=$(cpu_ticks "$pid")
    (($#)) && f0=$(cpu_ticks "$@")
    # shellcheck disable=SC2086 # LOAD_ARGS and args are lists of options
    if ! out=$("$MGW_LOAD" --connect "inet:127.0.0.1:$port" --connections "$n" \
        --duration "$DURATION" $LOAD_ARGS $args 2>"$work/load.err"); then
        load_failed=1
        echo "bench.sh: mgw_load against $label at $n connections failed:" >&2
        cat "$work/load.err" >&2
    fi
    check_alive "$label" "$pid" "$@"
    not_accepted "$label" "$n" "$out"
    c1=$(cpu_ticks "$pid")
    (($#)) && f1=$(cpu_ticks "$@")
    msgs=$(field messages "$out")
    events=$(field events "$out")
    srv=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v m="$msgs" \
        'BEGIN { printf "%.1f", m ? t / hz * 1e6 / m : 0 }')
    (($#)) && fcpu=$(awk -v t=$((f1 - f0)) -v hz="$hz" -v m="$msgs" \
        'BEGIN { printf "%.1f", m ? t / hz * 1e6 / m : 0 }')
    # Each filter answers every event, so the gateway handles nf answers per event sent
    # (without a filter it answers each one itself).
    gwev=$(awk -v t=$((c1 - c0)) -v hz="$hz" -v e="$events" -v nf="$nf" \
        'BEGIN { d = e * (nf > 0 ? nf : 1); if (d) printf "%.2f", t / hz * 1e6 / d; else printf "-" }')
    rss=$(awk -v k="$(rss_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')
    printf '%-12s %6s %10s %8s %8s %14s %15s %11s %7s %6s\n' "$label" "$n" \
        "$(field msgs_per_sec "$out")" "$(field p50_ms "$out")" "$(field p99_ms "$out")" \
        "$srv" "$fcpu" "$gwev" "$rss" "$(field errors "$out")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$shape" "$n" \
        "$(field msgs_per_sec "$out")" "$(field p50_ms "$out")" "$(field p99_ms "$out")" \
        "$srv" "$fcpu" "$gwev" "$rss" "$(ratio "$events" "$msgs")" "$(field errors "$out")" \
        >>"$tsv"
}

# One table: fresh servers (so that RSS belongs to this message shape), every setup at
# each connection count in turn (so that they share the machine's conditions), servers
# stopped after. $1 shape name, $2 mgw_load shape args.
throughput() {
    local shape=$1 args=$2 n probe lm_pid=0 lm_port=0 null_pid null_port fgw_pid fgw_port
    local f1_pid three=() three_pids=() g3_pid g3_port i mg_pid=0 mg_port=0
    local x1_pid xgw_pid xgw_port xthree=() xthree_pids=() x3_pid x3_port
    if [ "$have_libmilter" = 1 ]; then
        start_libmilter
        start_milter_backend "$shape-milterbackend"
        start_miltergw "$shape-milter" --filter "m=inet:127.0.0.1:$mb_port,kind=milter"
        mg_pid=$gw_pid mg_port=$gw_port
    fi
    start_miltergw "$shape-null"
    null_pid=$gw_pid null_port=$gw_port
    start_filter "$shape-f1"
    f1_pid=$filter_pid
    start_miltergw "$shape-filter" --filter "f1=127.0.0.1:$filter_port"
    fgw_pid=$gw_pid fgw_port=$gw_port
    for i in 1 2 3; do
        start_filter "$shape-3f$i"
        three_pids+=("$filter_pid")
        three+=(--filter "f$i=127.0.0.1:$filter_port")
    done
    start_miltergw "$shape-3filters" "${three[@]}"
    g3_pid=$gw_pid g3_port=$gw_port
    start_filter "$shape-x1" --multiplexed
    x1_pid=$filter_pid
    start_miltergw "$shape-mux" --filter "f1=127.0.0.1:$filter_port"
    xgw_pid=$gw_pid xgw_port=$gw_port
    for i in 1 2 3; do
        start_filter "$shape-3x$i" --multiplexed
        xthree_pids+=("$filter_pid")
        xthree+=(--filter "f$i=127.0.0.1:$filter_port")
    done
    start_miltergw "$shape-3mux" "${xthree[@]}"
    x3_pid=$gw_pid x3_port=$gw_port

    # One message through the null gateway names the shape as mgw_load builds it.
    # shellcheck disable=SC2086 # LOAD_ARGS and args are lists of options
    probe=$("$MGW_LOAD" --connect "inet:127.0.0.1:$null_port" --messages 1 $LOAD_ARGS $args \
        2>"$work/load.err") || {
        echo "bench.sh: a first $shape message through mgw-null failed:" >&2
        cat "$work/load.err" >&2
        exit 1
    }
    shape_text[$shape]="$(field rcpts "$probe") rcpts, $(field headers "$probe") headers, $(field body_bytes "$probe")-byte body: $(field events "$probe") answered events"
    echo
    echo "== throughput, $shape message (${shape_text[$shape]};" \
        "mgw_load args: ${LOAD_ARGS:+$LOAD_ARGS }${args:-defaults})"
    echo "   (CPU: utime+stime per message of the server, and of its filters summed; gw_us/event:"
    echo "   the server's CPU per event answered to it, i.e. per event per filter with filters)"
    printf '%-12s %6s %10s %8s %8s %14s %15s %11s %7s %6s\n' setup conns msgs/s p50_ms p99_ms \
        srv_cpu_us/msg filt_cpu_us/msg gw_us/event rss_MB errors
    for n in $CONNS; do
        if [ "$have_libmilter" = 1 ]; then
            run libmilter "$shape" "$n" "$args" "$lm_pid" "$lm_port" 0
        fi
        run mgw-null "$shape" "$n" "$args" "$null_pid" "$null_port" 0
        run mgw-filter "$shape" "$n" "$args" "$fgw_pid" "$fgw_port" 1 "$f1_pid"
        run mgw-3filters "$shape" "$n" "$args" "$g3_pid" "$g3_port" 3 "${three_pids[@]}"
        if [ "$have_libmilter" = 1 ]; then
            run mgw-milter "$shape" "$n" "$args" "$mg_pid" "$mg_port" 1 "$mb_pid"
        fi
        run mgw-mux "$shape" "$n" "$args" "$xgw_pid" "$xgw_port" 1 "$x1_pid"
        run mgw-3mux "$shape" "$n" "$args" "$x3_pid" "$x3_port" 3 "${xthree_pids[@]}"
    done
    # Stop the servers so that the next pass and the idle runs have the machine.
    stop_all
}

declare -A shape_text # for the chart titles
if [ -n "$CONNS" ]; then
    throughput default ""
    if [ "$REALISTIC" != 0 ]; then
        throughput realistic "$REALISTIC_ARGS"
    fi
fi

# ---- scaling with worker loops ----

# The default message at SCALING_CONNS connections, miltergw with each --workers count
# in SCALING, fresh servers per count; rows go to scaling.tsv (setup = mgw-null/wN ...).
SCALING_CONNS=${SCALING_CONNS:-100}
if [ -n "$SCALING" ]; then
    echo
    echo "== scaling: default message, $SCALING_CONNS connections, miltergw --workers N" \
        "(the load generator and the filters share the same $(nproc) CPUs)"
    printf '%-12s %6s %10s %8s %8s %14s %15s %11s %7s %6s\n' setup conns msgs/s p50_ms p99_ms \
        srv_cpu_us/msg filt_cpu_us/msg gw_us/event rss_MB errors
    main_tsv=$tsv
    tsv=$OUT/scaling.tsv
    head -1 "$main_tsv" >"$tsv"
    for w in $SCALING; do
        GW_WORKERS_ARG="--workers $w"
        start_miltergw "scale-null-$w"
        run "mgw-null/w$w" default "$SCALING_CONNS" "" "$gw_pid" "$gw_port" 0
        start_filter "scale-f-$w"
        start_miltergw "scale-filter-$w" --filter "f1=127.0.0.1:$filter_port"
        run "mgw-filter/w$w" default "$SCALING_CONNS" "" "$gw_pid" "$gw_port" 1 "$filter_pid"
        stop_all
    done
    tsv=$main_tsv
    GW_WORKERS_ARG=${WORKERS:+--workers $WORKERS}
fi

# ---- idle memory ----

if [ -n "$IDLE" ]; then
    echo
    echo "== idle negotiated connections (CONNECT and HELO answered), fresh server per row"
    printf '%-14s %6s %12s %12s %14s\n' setup conns base_RSS_MB RSS_MB KB/conn
fi

# $1 label, $2 server pid, $3 port, $4 connections.
idle_row() {
    local label=$1 pid=$2 port=$3 n=$4 base after lpid ready i status=0 kb
    if ((n + 64 > nofile)); then
        printf '%-14s %6s  skipped: ulimit -n is %s\n' "$label" "$n" "$nofile"
        return
    fi
    base=$(rss_settled_kb "$pid")
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
    after=$(rss_settled_kb "$pid")
    ready=$(sed -n 's/^ready connections=//p' "$work/idle.out")
    kill -TERM "$lpid" 2>/dev/null || true
    wait "$lpid" 2>/dev/null || status=$?
    if [ "${ready:-0}" != "$n" ] || [ "$status" != 0 ]; then
        load_failed=1
        echo "bench.sh: $label: ${ready:-0} of $n idle connections set up, mgw_load exit $status:" >&2
        head -5 "$work/idle.out" "$work/idle.err" >&2
    fi
    kb=$(awk -v a="$after" -v b="$base" -v n="${ready:-0}" \
        'BEGIN { printf "%.2f", n ? (a - b) / n : 0 }')
    printf '%-14s %6s %12s %12s %14s\n' "$label" "$n" \
        "$(awk -v k="$base" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v k="$after" 'BEGIN { printf "%.1f", k / 1024 }')" "$kb"
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$n" \
        "$(awk -v k="$base" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v k="$after" 'BEGIN { printf "%.1f", k / 1024 }')" "$kb" >>"$idle_tsv"
}

for n in $IDLE; do
    start_miltergw idle-null
    idle_row mgw-null "$gw_pid" "$gw_port" "$n"
    stop_all
done
for n in $IDLE; do
    start_filter idle
    start_miltergw idle-filter --filter "f1=127.0.0.1:$filter_port"
    idle_row mgw-filter "$gw_pid" "$gw_port" "$n"
    stop_all
done
# The same filter declaring multiplexed streams: idle connections share calls.
for n in $IDLE; do
    start_filter idle --multiplexed
    start_miltergw idle-filter --filter "f1=127.0.0.1:$filter_port"
    idle_row mgw-mux "$gw_pid" "$gw_port" "$n"
    stop_all
done
# A filter that wants only the messages (no Connect, no Helo): its stream, and gRPC's
# per-call state, waits for the first MAIL, so an idle connection costs it nothing.
for n in $IDLE; do
    start_filter idle --events mail,rcpt,data,header,eoh,body,eom
    start_miltergw idle-filter --filter "f1=127.0.0.1:$filter_port"
    idle_row mgw-msgfilter "$gw_pid" "$gw_port" "$n"
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
    # shellcheck disable=SC2086 # LOAD_ARGS is a list of options
    if ! out=$("$MGW_LOAD" --connect "inet:127.0.0.1:$gw_port" --duration "$DURATION" \
        $LOAD_ARGS 2>"$work/load.err"); then
        load_failed=1
        echo "bench.sh: mgw_load against $label failed:" >&2
        cat "$work/load.err" >&2
    fi
    not_accepted "$label" 1 "$out"
    printf '%-34s %10s %8s %8s %6s\n' "$label" "$(field msgs_per_sec "$out")" \
        "$(field p50_ms "$out")" "$(field p99_ms "$out")" "$(field errors "$out")"
    kill "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
}

if [ "$LATENCY" != 0 ]; then
    echo
    echo "== per-message latency at 1 connection, default message"
    printf '%-34s %10s %8s %8s %6s\n' setup msgs/s p50_ms p99_ms errors
    slow=()
    for i in 1 2 3; do
        start_filter "slow$i" --delay-ms 5
        slow+=("--filter" "slow$i=127.0.0.1:$filter_port")
    done
    start_filter fast
    fast=$filter_port
    latency_row "1 filter, 5 ms per event" "${slow[@]:0:2}"
    latency_row "3 filters, 5 ms per event each" "${slow[@]}"
    latency_row "1 filter, no delay" --filter "f1=127.0.0.1:$fast"
    latency_row "same + 1 filter down (accept)" --filter "f1=127.0.0.1:$fast" \
        --filter "down=127.0.0.1:$(free_port),on_error=accept"
    stop_all
fi

# ---- against the targets ----

# From results.tsv and idle.tsv, so that the summary and the files cannot disagree.
if [ -n "$CONNS" ] || [ -n "$IDLE" ]; then
    echo
    echo "== against the targets (PRODUCT.md \"Performance targets\")"
    awk -F'\t' -v idle="$idle_tsv" '
    FNR == 1 { next }
    {
        k = $1 SUBSEP $2 SUBSEP $3
        rate[k] = $4; p50[k] = $5; gw[k] = $9; cpu[k] = $7; ev[k] = $11
        if (!(($2) in seen_shape)) { seen_shape[$2] = 1; shapes[++ns] = $2 }
        if (!(($2, $3) in seen_n)) { seen_n[$2, $3] = 1; ns_n[$2]++; conns[$2, ns_n[$2]] = $3 }
    }
    function share(setup, s, n, target,    k, l, v) {
        k = setup SUBSEP s SUBSEP n; l = "libmilter" SUBSEP s SUBSEP n
        if (!(k in rate) || !(l in rate) || rate[l] <= 0) return sprintf("%7s     ", "-")
        v = 100 * rate[k] / rate[l]
        if (target == "") return sprintf("%6.1f%%     ", v)
        return sprintf("%6.1f%% %-4s", v, v >= target ? "ok" : "MISS")
    }
    END {
        if (ns > 0) {
            print "   msgs/s as % of libmilter'"'"'s; targets at 16 and 1000 conns: one filter (mgw-filter,"
            print "   mgw-mux) >= 100%, three (mgw-3filters, mgw-3mux) >= 70%"
            printf "   %-10s %6s  %-12s %-12s %-12s %-12s %-12s\n", "message", "conns", "mgw-null", "mgw-filter", "mgw-3filters", "mgw-mux", "mgw-3mux"
            for (i = 1; i <= ns; i++) {
                s = shapes[i]
                for (j = 1; j <= ns_n[s]; j++) {
                    n = conns[s, j]; at = (n == 16 || n == 1000)
                    line = sprintf("   %-10s %6s %s %s %s %s %s", s, n, share("mgw-null", s, n, ""),
                        share("mgw-filter", s, n, at ? 100 : ""), share("mgw-3filters", s, n, at ? 70 : ""),
                        share("mgw-mux", s, n, at ? 100 : ""), share("mgw-3mux", s, n, at ? 70 : ""))
                    sub(/ +$/, "", line)
                    print line
                }
            }
            print "   latency at 1 conn, one filter p50 / mgw-null p50 (target <= 1.5x):"
            for (i = 1; i <= ns; i++) {
                s = shapes[i]; z = "mgw-null" SUBSEP s SUBSEP 1
                for (t = 1; t <= 2; t++) {
                    setup = t == 1 ? "mgw-filter" : "mgw-mux"; f = setup SUBSEP s SUBSEP 1
                    if ((f in p50) && (z in p50) && p50[z] > 0)
                        printf "   %-10s %-12s %5.2fx %s\n", s, setup, p50[f] / p50[z], p50[f] / p50[z] <= 1.5 ? "ok" : "MISS"
                    else if (t == 1)
                        printf "   %-10s no 1-connection run\n", s
                }
            }
            print "   gateway CPU per answered event, lowest-highest over the conns (target <= 10 us):"
            for (i = 1; i <= ns; i++) {
                s = shapes[i]
                for (t = 1; t <= 4; t++) {
                    setup = t == 1 ? "mgw-filter" : t == 2 ? "mgw-3filters" : t == 3 ? "mgw-mux" : "mgw-3mux"
                    lo = ""; hi = ""
                    for (j = 1; j <= ns_n[s]; j++) {
                        k = setup SUBSEP s SUBSEP conns[s, j]
                        if (!(k in gw) || gw[k] == "-") continue
                        if (lo == "" || gw[k] + 0 < lo) lo = gw[k] + 0
                        if (hi == "" || gw[k] + 0 > hi) hi = gw[k] + 0
                    }
                    if (lo != "")
                        printf "   %-10s %-12s %.2f-%.2f us %s\n", s, setup, lo, hi, hi <= 10 ? "ok" : "MISS"
                }
            }
            # What the filters add: the gateway CPU above that of mgw-null, per answered event,
            # at each connection count (mgw-null pays the milter side; a filter adds the rest).
            print "   gateway CPU per answered event above mgw-null (what the filters add), by conns:"
            for (i = 1; i <= ns; i++) {
                s = shapes[i]
                for (t = 1; t <= 4; t++) {
                    setup = t == 1 ? "mgw-filter" : t == 2 ? "mgw-3filters" : t == 3 ? "mgw-mux" : "mgw-3mux"
                    nf = (t == 2 || t == 4) ? 3 : 1; line = ""
                    for (j = 1; j <= ns_n[s]; j++) {
                        n = conns[s, j]; k = setup SUBSEP s SUBSEP n; z = "mgw-null" SUBSEP s SUBSEP n
                        if (!(k in cpu) || !(z in cpu) || ev[k] <= 0) continue
                        line = line sprintf(" %s:%.1f", n, (cpu[k] - cpu[z]) / (ev[k] * nf))
                    }
                    if (line != "")
                        printf "   %-10s %-12s%s us\n", s, setup, line
                }
            }
        }
        # The idle target is 10,000 connections in 100 MB: take the largest row of each
        # one-filter setup, and scale it to 10,000 if that row is smaller.
        while ((getline line < idle) > 0) {
            split(line, c, "\t")
            if ((c[1] == "mgw-filter" || c[1] == "mgw-mux") && c[2] + 0 > bn[c[1]]) {
                bn[c[1]] = c[2] + 0; base[c[1]] = c[3]; kb[c[1]] = c[5]
            }
        }
        for (t = 1; t <= 2; t++) {
            setup = t == 1 ? "mgw-filter" : "mgw-mux"
            if (!(setup in bn)) continue
            mb = base[setup] + 10000 * kb[setup] / 1024
            printf "   idle, %-10s (target: 10000 conns in <= 100 MB RSS): %.2f KB/conn, %.1f MB %s %s\n",
                setup, kb[setup], mb, bn[setup] == 10000 ? "at 10000" : "projected from " bn[setup], mb <= 100 ? "ok" : "MISS"
        }
    }' "$tsv"
fi

# ---- charts ----

# One SVG per message shape: msgs/s against connections, one line per setup.
chart() {
    local shape=$1 file=$2 setup plot="" sep=""
    for setup in $SETUPS; do
        awk -F'\t' -v s="$setup" -v sh="$shape" '$1 == s && $2 == sh { print $3, $4 }' "$tsv" \
            >"$work/plot-$shape-$setup.dat"
        [ -s "$work/plot-$shape-$setup.dat" ] || continue
        plot+="$sep'$work/plot-$shape-$setup.dat' using 1:2 with linespoints lw 2 pt 7 title '$setup'"
        sep=", "
    done
    [ -n "$plot" ] || return 0
    gnuplot <<EOF || echo "bench.sh: gnuplot failed: no $file" >&2
set terminal svg size 800,480 noenhanced font "sans,12" background rgb "white"
set output '$OUT/$file'
set title "msgs/s against MTA connections, ${DURATION}s per point; $shape message:\n${shape_text[$shape]}\n$(nproc) CPUs, $title_cpu, miltergw $commit, $started_at"
set logscale x
set xtics ($(echo "$CONNS" | awk '{ for (i = 1; i <= NF; i++) printf "%s%s", (i > 1 ? ", " : ""), $i }'))
set xrange [$(echo "$CONNS" | awk '{ lo = hi = $1; for (i = 2; i <= NF; i++) { if ($i < lo) lo = $i; if ($i > hi) hi = $i }
    printf "%g:%g", lo / 1.3, hi * 1.3 }')]
set xlabel "MTA connections (log scale)"
set ylabel "messages/s"
set yrange [0:*]
set grid
set key outside right top
plot $plot
EOF
}

# gnuplot reads the title in a double-quoted string, where quotes and backslashes matter.
title_cpu=${cpu_model//[\"\\]/}
if [ -n "$CONNS" ]; then
    if command -v gnuplot >/dev/null 2>&1; then
        chart default chart.svg
        if [ "$REALISTIC" != 0 ]; then
            chart realistic chart-realistic.svg
        fi
    else
        echo "bench.sh: gnuplot not found (apt-get install -y gnuplot-nox): no chart"
    fi
fi
written=""
for f in results.tsv idle.tsv scaling.tsv chart.svg chart-realistic.svg; do
    if [ -e "$OUT/$f" ]; then
        written+=" $f"
    fi
done
echo
echo "== results in $OUT:$written"

exit "$load_failed"
