#!/usr/bin/env bash
# Measures the `kv` example against redis-server with redis-benchmark and
# prints one markdown table: requests/s of each, and the ratio kv/redis.
#
#   redis-benchmark -t ping,set,get,incr,mset -n 200000 -c 50 -P 1 --csv
#   redis-benchmark -t ping,set,get,incr,mset -n 200000 -c 50 -P 16 --csv
#
# against `kv` (built here with `cargo build --release --example kv`) and
# against `redis-server --save '' --appendonly no` (no persistence, as kv
# has none), each on a free loopback port and pinned to CPU 0
# (`taskset -c 0`), redis-benchmark pinned to CPU 1. RUNS runs, each with
# a fresh pair of servers; within a run each test is run against kv, then
# redis, test by test (so the two figures of a row are taken seconds
# apart, under the same load). The median of the runs in each cell, with
# the range of the runs in brackets.
#
# redis-server and redis-benchmark come from Debian's redis-server and
# redis-tools; they are installed with apt-get when missing (root needed
# then). `cargo test` never needs them.
#
# Every process started here is stopped on exit; every benchmark run is
# bounded by RUN_DEADLINE seconds (a run that times out or fails is
# reported and makes the script exit 1). About 2 minutes with the
# defaults. The machine's load (`uptime`) is printed before and after:
# other work on the machine skews the figures.
#
# usage: scripts/kv_bench.sh
# knobs (environment): RUNS (3) REQUESTS (200000) CLIENTS (50) TESTS
#   (ping,set,get,incr,mset) PIPELINES ("1 16") RUN_DEADLINE (120)
#   NICE (unset; e.g. -10 runs both servers and the benchmark at that
#   niceness, root only, so that builds sharing the machine disturb less)
#   CARGO_TARGET_DIR (default: target) KEEP=DIR keeps raw outputs there
set -euo pipefail

RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-ping,set,get,incr,mset}
PIPELINES=${PIPELINES:-"1 16"}
RUN_DEADLINE=${RUN_DEADLINE:-120}
PRIORITY=()
if [[ -n ${NICE:-} ]]; then
    PRIORITY=(nice -n "$NICE")
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KV_EXE=$TARGET/release/examples/kv
WORK=$(mktemp -d /tmp/kv_bench.XXXXXX)
RESULTS=$WORK/results.tsv # server <tab> test <tab> requests/s
FAILURES=$WORK/failures.txt
SCRIPT=kv_bench.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
: >"$RESULTS"
: >"$FAILURES"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "installing redis-server and redis-tools (apt-get) ..."
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools >/dev/null
fi
command -v taskset >/dev/null || die "taskset (util-linux) is needed"

echo "building kv (release) ..."
(cd "$ROOT" && cargo build --release --quiet --example kv)
open_nap

# A free TCP port on 127.0.0.1 (redis-server takes a port, not port 0):
# the kernel picks one for a socket that is closed at once.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

declare -A ADDR SERVER_PIDS # per server: its address, its pid

# Starts SERVER (kv or redis) on CPU 0; sets ADDR[SERVER] and SERVER_PIDS[SERVER].
start() {
    local server=$1 prefix=$2 port
    case $server in
    kv)
        start_server "$KV_EXE" "$prefix" "${PRIORITY[@]}"
        ;;
    redis)
        port=$(free_port)
        taskset -c 0 "${PRIORITY[@]}" redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --dir "$WORK" --logfile '' --daemonize no >"$prefix.out" 2>"$prefix.err" &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        wait_for 'Ready to accept connections' "$prefix.out" 30 ||
            die "redis-server did not start: $(tail -5 "$prefix.out" "$prefix.err")"
        SERVER_ADDR=127.0.0.1:$port
        ;;
    esac
    ADDR[$server]=$SERVER_ADDR
    SERVER_PIDS[$server]=$SERVER_PID
}

# One redis-benchmark run of TEST (a -t word) against SERVER, on CPU 1,
# pipelining P; records the requests/s of each test it reports.
bench_run() {
    local server=$1 test=$2 p=$3 out=$4 rc=0 addr=${ADDR[$1]}
    timeout -k 5 "$RUN_DEADLINE" taskset -c 1 "${PRIORITY[@]}" redis-benchmark \
        -h "${addr%:*}" -p "${addr##*:}" -t "$test" -n "$REQUESTS" -c "$CLIENTS" -P "$p" --csv \
        >"$out" 2>"$out.err" || rc=$?
    if [[ $rc != 0 ]] || [[ $(wc -l <"$out") -lt 2 ]]; then
        echo "FAILED (exit $rc): $server $test -P $p: $(tr '\n' ' ' <"$out.err" | head -c 300)" |
            tee -a "$FAILURES"
        return 0
    fi
    # "test","rps",... one line per test after the header.
    awk -F'"' -v s="$server" -v p="$p" 'NR > 1 && $2 != "" {
        printf "%s\t%s -P %s\t%s\n", s, $2, p, $4 }' "$out" >>"$RESULTS"
}

IFS=, read -ra TEST_LIST <<<"$TESTS"
echo "load before: $(uptime)"
for ((run = 1; run <= RUNS; run++)); do
    start kv "$WORK/kv.$run"
    start redis "$WORK/redis.$run"
    for p in $PIPELINES; do
        echo "run $run/$RUNS: -P $p: ${TEST_LIST[*]}, each against kv then redis"
        for test in "${TEST_LIST[@]}"; do
            for server in kv redis; do
                bench_run "$server" "$test" "$p" "$WORK/$server.$run.$test.P$p.csv"
            done
        done
    done
    stop_pid "${SERVER_PIDS[kv]}"
    stop_pid "${SERVER_PIDS[redis]}"
done
echo "load after: $(uptime)"

echo
echo "kv against redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), $(date -u +%F)," \
    "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown):" \
    "redis-benchmark -t $TESTS -n $REQUESTS -c $CLIENTS -P {$PIPELINES} --csv," \
    "servers on CPU 0, redis-benchmark on CPU 1${NICE:+, all at nice $NICE}," \
    "median of $RUNS runs (range), kv and redis alternating test by test:"
echo
echo "| test | kv requests/s | redis-server requests/s | kv/redis |"
echo "| --- | ---: | ---: | ---: |"
# Tests in the order redis-benchmark ran them, -P 1 first.
for p in $PIPELINES; do
    awk -F'\t' -v p=" -P $p" '$1 == "kv" && substr($2, length($2) - length(p) + 1) == p &&
        !seen[$2]++ { print $2 }' "$RESULTS" |
        while IFS= read -r test; do
            row_ab kv redis "$test" "$test"
        done
done

if [[ -s $FAILURES ]]; then
    echo
    echo "$(wc -l <"$FAILURES") failed run(s):"
    cat "$FAILURES"
    exit 1
fi
