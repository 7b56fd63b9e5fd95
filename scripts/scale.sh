#!/usr/bin/env bash
# Measures scaling out on one machine: `echo_reactor --threads 1`, against
# `echo_reactor --threads 2` (a ReactorSet: one SO_REUSEPORT listener per
# reactor) and `acceptor_echo --threads 2` (the alternative: one acceptor
# thread handing connections to 2 reactors). Prints one markdown table of
# medians over RUNS runs (range in brackets):
#
#  1. balance: BALANCE_CONNS idle connections (echo_bench idle), then
#     SIGTERM; each reactor's accepted count from the `stopped:` line; the
#     largest reactor's distance from an even share, in percent;
#  2. server CPU time (utime + stime of the whole process, /proc/PID/stat)
#     per round trip, echo_bench pingpong at a fixed RATE (100 conns, 64 B,
#     depth 1, DURATION s);
#  3. round trips/s without a cap (100 conns, 64 B, depth 1, and depth 16);
#  4. connections/s of churn (50 workers: connect, one 64 B echo, close).
#
# The one-reactor server runs on CPU 0; the two-reactor servers on CPUs 0
# and 1; echo_bench always on CPU 1. So on a 2-core machine the load
# generator competes with the second reactor: see the README's *Scaling*.
# Every echoed byte is verified by echo_bench; a run with a mismatch or an
# error makes the script exit 1. About 3 minutes with the defaults.
#
# usage: scripts/scale.sh
# knobs (environment): RUNS (3) RATE (20000) DURATION (5) BALANCE_CONNS
#   (1000) CARGO_TARGET_DIR (default: target) KEEP=DIR keeps raw outputs
set -euo pipefail

RUNS=${RUNS:-3}
RATE=${RATE:-20000}
DURATION=${DURATION:-5}
BALANCE_CONNS=${BALANCE_CONNS:-1000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples
WORK=$(mktemp -d /tmp/scale.XXXXXX)
RESULTS=$WORK/results.tsv # variant <tab> metric <tab> value
SCRIPT=scale.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
open_nap

(cd "$ROOT" && cargo build --release --quiet --example echo_reactor --example acceptor_echo --example echo_bench) ||
    die "cargo build failed"
CLK_TCK=$(getconf CLK_TCK)

# name <tab> CPUs <tab> command
VARIANTS=(
    "reactor x1	0	$BIN/echo_reactor --threads 1 --idle-timeout 0"
    "ReactorSet x2	0,1	$BIN/echo_reactor --threads 2 --idle-timeout 0"
    "acceptor + 2	0,1	$BIN/acceptor_echo --threads 2"
)

# Starts the variant's server on a free port; sets SERVER_PID, SERVER_ADDR.
start() {
    local cpus=$1 command=$2 prefix=$3 words
    read -ra words <<<"$command"
    taskset -c "$cpus" "${words[@]}" --addr 127.0.0.1:0 >"$prefix.out" 2>"$prefix.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for '^listening on ' "$prefix.out" 30 || die "server did not start: $(tail -3 "$prefix.err")"
    SERVER_ADDR=$(sed -n '1s/^listening on //p' "$prefix.out")
}

# Stops the server with SIGTERM; it must exit 0 and log its stopped: line.
stop() {
    local prefix=$1
    stop_pid "$SERVER_PID" TERM
    [[ $STOPPED_RC == 0 ]] || die "server exited $STOPPED_RC: $(tail -3 "$prefix.err")"
    wait_for 'stopped:' "$prefix.err" 5 || die "no stopped: line in $prefix.err"
}

# The server's user + system CPU time in clock ticks (fields 14 and 15).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }

# Runs echo_bench on CPU 1 against the server; prints its JSON line.
bench() {
    local out=$WORK/bench.$$.txt
    taskset -c 1 "$BIN/echo_bench" "$@" --addr "$SERVER_ADDR" --json >"$out" 2>&1 ||
        die "echo_bench $*: $(tail -3 "$out")"
    tail -1 "$out"
}

field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

for ((run = 1; run <= RUNS; run++)); do
    for variant in "${VARIANTS[@]}"; do
        IFS=$'\t' read -r name cpus command <<<"$variant"
        prefix=$WORK/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').$run
        echo "run $run: $name" >&2

        if [[ $command == *"--threads 2"* ]]; then
            start "$cpus" "$command" "$prefix.balance"
            bench idle --conns "$BALANCE_CONNS" --hold 0.5 >/dev/null
            stop "$prefix.balance"
            each=$(sed -n 's/.*(per reactor: \([0-9 ]*\)).*/\1/p' "$prefix.balance.err")
            record "$name" "balance: accepted per reactor" "$each"
            record "$name" "balance: largest share off even (%)" "$(python3 -c '
import sys
n = [int(x) for x in sys.argv[1:]]
even = sum(n) / len(n)
print(f"{max(abs(x - even) for x in n) / even * 100:.1f}")' $each)"
        fi

        start "$cpus" "$command" "$prefix"
        before=$(cpu_ticks)
        out=$(bench pingpong --conns 100 --size 64 --depth 1 --duration "$DURATION" --rate "$RATE")
        after=$(cpu_ticks)
        rts=$(field "$out" round_trips)
        record "$name" "server CPU µs / round trip at $RATE rt/s" \
            "$(python3 -c "print(f'{($after - $before) * 1e6 / $CLK_TCK / $rts:.2f}')")"
        out=$(bench pingpong --conns 100 --size 64 --depth 1 --duration 3)
        record "$name" "round trips/s, 100 conns depth 1, no cap" "$(field "$out" rt_per_s)"
        out=$(bench pingpong --conns 100 --size 64 --depth 16 --duration 3)
        record "$name" "round trips/s, 100 conns depth 16, no cap" "$(field "$out" rt_per_s)"
        out=$(bench churn --conns 50 --duration 3)
        record "$name" "connections/s, churn of 50" "$(field "$out" conns_per_s)"
        stop "$prefix"
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
variants = list(dict.fromkeys(r[0] for r in rows))
metrics = list(dict.fromkeys(r[1] for r in rows))
print("| metric | " + " | ".join(variants) + " |")
print("| --- |" + " ---: |" * len(variants))
for m in metrics:
    cells = []
    for v in variants:
        values = [r[2] for r in rows if r[0] == v and r[1] == m]
        if not values:
            cells.append("n/a")
        elif m.endswith("per reactor"):
            cells.append("; ".join(values))
        else:
            x = sorted(float(a) for a in values)
            med = statistics.median(x)
            fmt = (lambda y: f"{y:.0f}") if med >= 100 else (lambda y: f"{y:.2f}")
            cells.append(f"{fmt(med)} ({fmt(x[0])}–{fmt(x[-1])})")
    print(f"| {m} | " + " | ".join(cells) + " |")
EOF
