#!/usr/bin/env bash
# Measures the proxy example: MB/s of 64 KiB chunks streamed through
# `proxy` to `echo_reactor`, against a direct connection to `echo_reactor`,
# and the proxy's CPU time per MB.
#
# The load is `echo_bench stream` (one connection, 64 KiB writes, up to
# 1 MiB in flight, every byte of the echo checked) for DURATION seconds per
# run; MB/s counts the echoed payload (10^6 bytes). Runs alternate direct
# and through the proxy, RUNS of each; the table gives medians (range in
# brackets). The proxy's CPU time is its utime + stime from /proc/PID/stat
# before and after each proxied run, over the MB echoed in that run: each
# such MB crosses the proxy twice (to the echo server and back).
#
# Pinning: echo_reactor and the proxy both on CPU 0, echo_bench alone on
# CPU 1. The load generator keeps a core to itself in both cases, and the
# direct run's server gets the same single core as the proxied pair: the
# ratio is what putting the proxy in the path costs one server core.
#
# All traffic goes to 127.0.0.1; each run is bounded by DURATION (and
# echo_bench's own deadlines); every process started here is stopped on
# exit. The machine may be shared: compare runs of one invocation.
#
# usage: scripts/proxy_bench.sh   knobs: RUNS (3) DURATION (5) CHUNK (65536)
#   CARGO_TARGET_DIR (default: target)  KEEP=DIR to keep raw outputs there
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CHUNK=${CHUNK:-65536}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples
WORK=$(mktemp -d /tmp/proxy_bench.XXXXXX)
SCRIPT=proxy_bench
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
open_nap

echo "building the release examples (target dir $TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet \
    --example echo_reactor --example proxy --example echo_bench)

# One JSON field of echo_bench's output line.
jfield() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }

# CPU time of PID so far, in clock ticks (utime + stime; the command name,
# field 2, may hold spaces, so count from after its closing parenthesis).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

start_server "$BIN/echo_reactor" "$WORK/echo"
ECHO_ADDR=$SERVER_ADDR
taskset -c 0 "$BIN/proxy" --listen 127.0.0.1:0 --to "$ECHO_ADDR" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_for '^listening on ' "$WORK/proxy.out" 60 || die "proxy did not start: $(tail -5 "$WORK/proxy.err")"
PROXY_ADDR=$(sed -n '1s/^listening on //p' "$WORK/proxy.out")
TICK=$(getconf CLK_TCK)
echo "echo_reactor on $ECHO_ADDR, proxy on $PROXY_ADDR (both CPU 0), echo_bench on CPU 1;" \
    "$RUNS runs of ${DURATION}s each way, ${CHUNK}-byte chunks"

RESULTS=$WORK/results.tsv
: >"$RESULTS"

# Runs echo_bench stream against ADDR; leaves its JSON line in FILE.
load() {
    local addr=$1 file=$2
    taskset -c 1 "$BIN/echo_bench" stream --addr "$addr" --conns 1 --chunk "$CHUNK" \
        --duration "$DURATION" --json >"$file.raw" 2>"$file.err" ||
        die "echo_bench failed against $addr: $(tail -3 "$file.err")"
    grep '^{' "$file.raw" >"$file"
    [[ $(jfield "$file" mismatches) == 0 && $(jfield "$file" errors) == 0 ]] ||
        die "echo_bench saw mismatches or errors against $addr: $(cat "$file")"
}

for ((run = 1; run <= RUNS; run++)); do
    load "$ECHO_ADDR" "$WORK/direct.$run"
    direct=$(jfield "$WORK/direct.$run" mb_per_s)
    before=$(cpu_ticks "$PROXY_PID")
    load "$PROXY_ADDR" "$WORK/proxy.$run"
    after=$(cpu_ticks "$PROXY_PID")
    proxied=$(jfield "$WORK/proxy.$run" mb_per_s)
    bytes=$(jfield "$WORK/proxy.$run" bytes)
    us_per_mb=$(awk -v t=$((after - before)) -v hz="$TICK" -v b="$bytes" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / (b / 1e6) }')
    printf 'direct\tmb_per_s\t%s\nproxy\tmb_per_s\t%s\nproxy\tcpu_us_per_mb\t%s\n' \
        "$direct" "$proxied" "$us_per_mb" >>"$RESULTS"
    printf '  run %s: direct %s MB/s, through the proxy %s MB/s, proxy CPU %s us/MB\n' \
        "$run" "$direct" "$proxied" "$us_per_mb"
done

# "MEDIAN MIN MAX" of METRIC for WHO.
median() {
    awk -F'\t' -v s="$1" -v m="$2" '$1 == s && $2 == m { print $3 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END {
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f (%.1f-%.1f)", m, v[1], v[NR] }'
}

direct=$(median direct mb_per_s)
proxied=$(median proxy mb_per_s)
echo
echo "| metric (median of $RUNS, range) | direct to echo_reactor | through proxy | proxy/direct |"
echo "| --- | --- | --- | --- |"
awk -v d="$direct" -v p="$proxied" -v c="$CHUNK" 'BEGIN {
    split(d, a, " "); split(p, b, " ")
    printf "| MB/s, %s-byte chunks | %s | %s | %.2f |\n", c, d, p, b[1] / a[1] }'
echo "| proxy CPU time per MB echoed (us) | | $(median proxy cpu_us_per_mb) | |"
stop_pid "$PROXY_PID"
grep 'stopped:' "$WORK/proxy.err" | sed 's/^/proxy: /' || true
