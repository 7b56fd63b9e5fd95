#!/usr/bin/env bash
# Measures what an echoed message costs on echo_reactor and, side by side in
# the same run, on tokio_echo (tokio's current-thread runtime, a task per
# connection), and prints one markdown table with the ratio reactor/tokio:
#
#  1. user-space instructions per round trip: the server under
#     `valgrind --tool=callgrind`, driven by echo_bench at CG_RATE round
#     trips/s (100 connections, 64 B, depth 1) for CG_SHORT s and, in a
#     fresh run, CG_LONG s; totals dumped with `callgrind_control -d` once
#     the server has closed every connection of the load, then
#     (Ir long - Ir short) / (round trips long - short), so start-up and
#     connection set-up cancel out. Round trips are the ones the bench
#     reports as completed (and verified). With a C compiler, the same for
#     scripts/c_echo.c, a minimal C epoll echo server: the floor.
#  2. syscalls per round trip: `strace -f -c -p` attached for ST_WINDOW s
#     at ST_RATE round trips/s (100 connections, 64 B); echo_bench prints
#     `mark T COMPLETED` on SIGUSR1 as strace attaches and before it
#     detaches, so only round trips inside the window are counted. The
#     median of RUNS such windows.
#  3. idle memory: server VmRSS with IDLE_CONNS idle connections less VmRSS
#     after start-up, per connection.
#  4. throughput without a rate cap, the median of RUNS runs of DURATION s
#     each: ping-pong 1 conn (with latency), 100 conns depth 1 and 16, 1000
#     conns of 512 B, 10 conns streaming 64 KiB chunks, churn of 50 workers.
#
# The server runs on CPU 0 (`taskset -c 0`, valgrind and strace with it),
# echo_bench on CPU 1. All traffic goes to 127.0.0.1; every wait has a
# deadline; every process started here is stopped on exit. echo_bench
# verifies every echoed byte: a run with a mismatch or error is reported and
# makes the script exit 1. About 5 minutes with the defaults.
#
# usage: scripts/cost.sh
# knobs (environment): RUNS (3) DURATION (3) IDLE_CONNS (10000) CG_RATE
#   (1000) CG_SHORT (2) CG_LONG (6) ST_RATE (5000) ST_WARMUP (2)
#   ST_WINDOW (4) CARGO_TARGET_DIR (default: target) KEEP=DIR keeps raw
#   outputs there
set -euo pipefail

# ECHO_REACTOR_ARGS: extra flags for echo_reactor, e.g. "--idle-timeout 0"
# (its default idle timeout arms a timer per connection, which makes every
# turn read the clock).
RUNS=${RUNS:-3}
DURATION=${DURATION:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
CG_RATE=${CG_RATE:-1000}
CG_SHORT=${CG_SHORT:-2}
CG_LONG=${CG_LONG:-6}
ST_RATE=${ST_RATE:-5000}
ST_WARMUP=${ST_WARMUP:-2}
ST_WINDOW=${ST_WINDOW:-4}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples
BENCH_EXE=$BIN/echo_bench
SERVERS=(echo_reactor tokio_echo)
WORK=$(mktemp -d /tmp/cost.XXXXXX)
RESULTS=$WORK/results.tsv # server <tab> metric <tab> value, one per measurement
FAILURES=$WORK/failures.txt
SCRIPT=cost.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# The executable of server NAME: an example, or the C floor built here.
server_exe() {
    if [[ $1 == c_echo ]]; then echo "$WORK/c_echo"; else echo "$BIN/$1"; fi
}

# --- 4. throughput ---------------------------------------------------------------

# key|echo_bench arguments; the figures kept from each are chosen below.
LOADS=(
    "c1|pingpong --conns 1 --size 64 --depth 1"
    "c100|pingpong --conns 100 --size 64 --depth 1"
    "c100d16|pingpong --conns 100 --size 64 --depth 16"
    "c1000|pingpong --conns 1000 --size 512 --depth 1"
    "stream|stream --conns 10 --chunk 65536"
    "churn|churn --conns 50"
)

measure_throughput() {
    local run=$1 name=$2 key=$3 args=$4 out
    out=$WORK/tp-$name-$key-$run
    start_server "$(server_exe "$name")" "$out.server"
    # shellcheck disable=SC2086 # args is a word list
    bench "$out.bench" $args --duration "$DURATION"
    stop_pid "$SERVER_PID"
    case $key in
        c1)
            record "$name" c1_rt "$(jfield "$out.bench" rt_per_s)"
            record "$name" c1_p50 "$(jfield "$out.bench" p50_us)"
            record "$name" c1_p99 "$(jfield "$out.bench" p99_us)"
            ;;
        stream) record "$name" stream_mb "$(jfield "$out.bench" mb_per_s)" ;;
        churn) record "$name" churn_cps "$(jfield "$out.bench" conns_per_s)" ;;
        *) record "$name" "${key}_rt" "$(jfield "$out.bench" rt_per_s)" ;;
    esac
    local f=$out.bench
    printf '  run %s %-12s %-8s rt/s %s  MB/s %s  conns/s %s  p50 %s us  p99 %s us  mismatches %s  errors %s\n' \
        "$run" "$name" "$key" "$(jfield "$f" rt_per_s)" "$(jfield "$f" mb_per_s)" "$(jfield "$f" conns_per_s)" \
        "$(jfield "$f" p50_us)" "$(jfield "$f" p99_us)" "$(jfield "$f" mismatches)" "$(jfield "$f" errors)"
}

# --- the table -----------------------------------------------------------------

# One table row: echo_reactor against tokio_echo (see row_ab in lib.sh).
row() { row_ab echo_reactor tokio_echo "$@"; }

print_table() {
    echo "| metric (median of runs, range in brackets) | echo_reactor | tokio_echo | reactor/tokio |"
    echo "| --- | ---: | ---: | ---: |"
    row "user instructions / round trip (callgrind, $CG_RATE rt/s, 100 conns, lower is better)" instructions
    row "syscalls / rt: read (read, recvfrom, ...)" sys_read
    row "syscalls / rt: write (write, sendto, ...)" sys_write
    row "syscalls / rt: epoll_wait" sys_epoll_wait
    row "syscalls / rt: epoll_ctl" sys_epoll_ctl
    row "syscalls / rt: all ($ST_RATE rt/s, 100 conns, lower is better)" sys_total
    row "idle RSS KiB / connection ($IDLE_CONNS conns, lower is better)" idle_kib
    row "1 conn 64 B depth 1: round trips/s" c1_rt
    row "1 conn 64 B depth 1: latency p50 µs" c1_p50
    row "1 conn 64 B depth 1: latency p99 µs" c1_p99
    row "100 conns 64 B depth 1: round trips/s" c100_rt
    row "100 conns 64 B depth 16: round trips/s" c100d16_rt
    row "1000 conns 512 B depth 1: round trips/s" c1000_rt
    row "10 conns stream 64 KiB chunks: MB/s" stream_mb
    row "churn 50 workers: connections/s" churn_cps
}

# --- main --------------------------------------------------------------------

missing=()
for tool in valgrind callgrind_control strace taskset timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "cost.sh: missing ${missing[*]}; install with: apt-get install -y valgrind strace util-linux coreutils gawk" >&2
    exit 1
fi
BENCH_DEADLINE=$(((DURATION > CG_LONG ? DURATION : CG_LONG) + 100)) # load, drain, connect
(($(nproc) >= 2)) || die "needs 2 CPUs (server on 0, echo_bench on 1)"

echo "building the release examples (target dir $TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet --examples)
for name in "${SERVERS[@]}" echo_bench; do
    [[ -x $BIN/$name ]] || die "no binary at $BIN/$name"
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
((IDLE_CONNS + 100 <= $(ulimit -n))) || die "open-file limit $(ulimit -n) is too low for $IDLE_CONNS idle connections"
open_nap
: >"$RESULTS"
: >"$FAILURES"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), kernel $(uname -r)," \
    "$(nproc) CPUs, open-file limit $(ulimit -n), tcp_tw_reuse $(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null || echo "?")," \
    "RUNS=$RUNS DURATION=${DURATION}s"

echo "1. instructions per round trip (callgrind)"
for name in "${SERVERS[@]}"; do measure_instructions "$name"; done
# The floor: a minimal C epoll echo server, when a C compiler is at hand.
if command -v cc >/dev/null 2>&1 && cc -O2 -o "$WORK/c_echo" "$ROOT/scripts/c_echo.c"; then
    measure_instructions c_echo
else
    echo "  c_echo: skipped (no C compiler)"
fi
# How the load falls into epoll_wait batches varies from run to run (a
# faster server waits more often, each wait returning fewer events): the
# median of RUNS windows.
echo "2. syscalls per round trip (strace, $RUNS runs)"
for ((run = 1; run <= RUNS; run++)); do
    for name in "${SERVERS[@]}"; do measure_syscalls "$name"; done
done
echo "3. idle memory"
for name in "${SERVERS[@]}"; do measure_idle "$name"; done
echo "4. throughput ($RUNS runs of ${DURATION}s, servers interleaved)"
for ((run = 1; run <= RUNS; run++)); do
    for load in "${LOADS[@]}"; do
        for name in "${SERVERS[@]}"; do
            measure_throughput "$run" "$name" "${load%%|*}" "${load#*|}"
        done
    done
done

echo
for name in "${SERVERS[@]}"; do
    echo "syscalls seen in $name: $(awk -F'\t' -v s="$name" '$1 == s && $2 == "sys_names" { print $3; exit }' "$RESULTS")"
done
echo
print_table
floor=$(median c_echo instructions)
if [[ $floor != n/a ]]; then
    awk -v f="${floor%% *}" -v r="$(median echo_reactor instructions | cut -d' ' -f1)" 'BEGIN {
        printf "\nfloor: scripts/c_echo.c (minimal C epoll echo), same method: %.1f instructions / round trip; echo_reactor/C = %.2f\n", f, r / f }'
fi
if [[ -s $FAILURES ]]; then
    echo
    echo "FAILED runs (figures above include them where they printed any):"
    cat "$FAILURES"
    exit 1
fi
