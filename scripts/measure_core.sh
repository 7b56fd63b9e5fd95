#!/usr/bin/env bash
# Measures the reactor's two core figures on the echo_reactor example:
#
#  1. syscalls per echoed message: CONNS ping-pong clients at RATE round
#     trips/s in total; `strace -c -f -p` is attached to the server for
#     WINDOW seconds and its counts are divided by the round trips the load
#     generator completed inside that window (it prints a mark on SIGUSR1
#     when strace has attached and again just before strace detaches);
#  2. server RSS per idle connection: VmRSS with IDLE_CONNS idle connections
#     less VmRSS right after start-up, over IDLE_CONNS.
#
# The server runs pinned to CPU 0 (`taskset -c 0`, strace with it), the load
# generator to CPU 1. All traffic goes to 127.0.0.1; every wait has a
# deadline; every process started here is stopped on exit.
#
# usage: scripts/measure_core.sh            (RUNS=3 by default)
# knobs (environment): RUNS CONNS SIZE RATE WARMUP WINDOW IDLE_CONNS
#   CARGO_TARGET_DIR (default: target)  KEEP=DIR to keep raw outputs there
set -euo pipefail

RUNS=${RUNS:-3}
CONNS=${CONNS:-100}
SIZE=${SIZE:-64}
RATE=${RATE:-5000}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-4}
IDLE_CONNS=${IDLE_CONNS:-10000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples/echo_reactor
LOADGEN=$ROOT/scripts/loadgen.py
WORK=$(mktemp -d /tmp/measure_core.XXXXXX)
SCRIPT=measure_core
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# Polls until FILE is not empty, for at most SECONDS, every millisecond.
wait_nonempty() {
    local file=$1 seconds=$2 i
    for ((i = 0; i < seconds * 1000; i++)); do
        [[ -s $file ]] && return 0
        nap
    done
    return 1
}

# --- setup --------------------------------------------------------------
if ! command -v strace >/dev/null 2>&1; then
    echo "installing strace"
    apt-get update -qq && apt-get install -y -qq strace >/dev/null
fi
command -v taskset >/dev/null || die "taskset (util-linux) is missing"
(( $(nproc) >= 2 )) || die "needs 2 CPUs (server on 0, load generator on 1)"

echo "building the release example (target dir $TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --quiet --example echo_reactor)
[[ -x $BIN ]] || die "no binary at $BIN"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # loadgen raises its own too
echo "kernel $(uname -r), $(nproc) CPUs, open-file limit $(ulimit -n)"
echo "load: $CONNS ping-pong connections, $SIZE-byte messages, $RATE round trips/s," \
     "strace window ${WINDOW}s after ${WARMUP}s warm-up; idle: $IDLE_CONNS connections"
echo

open_nap

RESULTS=$WORK/results.tsv
: >"$RESULTS"

for ((run = 1; run <= RUNS; run++)); do
    dir=$WORK/run$run
    mkdir -p "$dir"

    # --- 1. syscalls per echoed message ----------------------------------
    start_server "$BIN" "$dir/server-pp"
    duration=$((WARMUP + WINDOW + 3))
    taskset -c 1 python3 "$LOADGEN" pingpong --addr "$SERVER_ADDR" --conns "$CONNS" \
        --size "$SIZE" --rate "$RATE" --duration "$duration" >"$dir/loadgen.out" 2>"$dir/loadgen.err" &
    lg=$!
    PIDS+=("$lg")
    wait_for '^started ' "$dir/loadgen.out" 60 || die "load generator did not start: $(cat "$dir/loadgen.err")"
    sleep "$WARMUP"
    taskset -c 0 strace -c -f -p "$SERVER_PID" -o "$dir/strace.txt" 2>"$dir/strace.err" &
    st=$!
    PIDS+=("$st")
    # strace writes "Process N attached" once it traces the server; the
    # first mark follows within about a millisecond.
    wait_nonempty "$dir/strace.err" 10 || die "strace did not attach"
    grep -q attached "$dir/strace.err" || die "strace did not attach: $(cat "$dir/strace.err")"
    kill -USR1 "$lg"
    sleep "$WINDOW"
    kill -USR1 "$lg"
    kill -INT "$st"
    wait "$st" || true
    forget_pid "$st"
    for ((i = 0; i < 100; i++)); do
        (($(grep -c '^mark ' "$dir/loadgen.out") >= 2)) && break
        sleep 0.05
    done
    lg_rc=0
    wait "$lg" || lg_rc=$?
    forget_pid "$lg"
    stop_pid "$SERVER_PID"
    [[ $lg_rc == 0 ]] || die "run $run: load generator failed ($lg_rc): $(cat "$dir/loadgen.out" "$dir/loadgen.err")"

    # --- 2. RSS per idle connection --------------------------------------
    start_server "$BIN" "$dir/server-idle"
    sleep 0.2
    rss0=$(vmrss_kib "$SERVER_PID")
    fd0=$(ls "/proc/$SERVER_PID/fd" | wc -l)
    hold=$((IDLE_CONNS / 100 + 60))
    taskset -c 1 python3 "$LOADGEN" idle --addr "$SERVER_ADDR" --conns "$IDLE_CONNS" \
        --hold "$hold" >"$dir/idle.out" 2>"$dir/idle.err" &
    idle=$!
    PIDS+=("$idle")
    wait_for "^connected $IDLE_CONNS\$" "$dir/idle.out" "$hold" \
        || die "run $run: idle clients did not connect: $(cat "$dir/idle.err")"
    # The client sees a connection before the server has accepted it: wait
    # until the server holds every descriptor.
    for ((i = 0; i < 600; i++)); do
        fds=$(ls "/proc/$SERVER_PID/fd" | wc -l)
        ((fds >= fd0 + IDLE_CONNS)) && break
        sleep 0.05
    done
    ((fds >= fd0 + IDLE_CONNS)) || die "run $run: server holds $((fds - fd0)) of $IDLE_CONNS connections"
    sleep 1
    rss1=$(vmrss_kib "$SERVER_PID")
    stop_pid "$idle"
    stop_pid "$SERVER_PID"

    python3 - "$dir" "$run" "$rss0" "$rss1" "$IDLE_CONNS" >>"$RESULTS" <<'EOF'
import sys
d, run, rss0, rss1, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
marks = [int(l.split()[2]) for l in open(f"{d}/loadgen.out") if l.startswith("mark ")]
assert len(marks) == 2, marks
msgs = marks[1] - marks[0]
calls = {}
for line in open(f"{d}/strace.txt"):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
per = lambda *names: sum(calls.get(s, 0) for s in names) / msgs
reads = per("read", "recvfrom", "recvmsg", "readv")
writes = per("write", "sendto", "sendmsg", "writev")
others = sum(v for k, v in calls.items() if k not in (
    "read", "recvfrom", "recvmsg", "readv", "write", "sendto", "sendmsg", "writev",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl"))
print("\t".join(map(str, [
    run, msgs, f"{reads:.4f}", f"{writes:.4f}",
    f"{per('epoll_wait', 'epoll_pwait', 'epoll_pwait2'):.4f}", f"{per('epoll_ctl'):.4f}",
    f"{others / msgs:.4f}", f"{(sum(calls.values())) / msgs:.4f}",
    rss0, rss1, f"{(rss1 - rss0) / n:.4f}",
    " ".join(f"{k}={v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])),
])))
EOF
    echo "run $run done: $(tail -n1 "$RESULTS" | cut -f2-11 | tr '\t' ' ')"
    sed -n '/^completed/,$p' "$dir/loadgen.out" | tr '\n' ';' | sed 's/^/  loadgen: /; s/;$/\n/'
    sed 's/^/  strace: /' "$dir/strace.txt"
done

echo
python3 - "$RESULTS" "$CONNS" "$RATE" "$IDLE_CONNS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
conns, rate, idle = sys.argv[2], sys.argv[3], sys.argv[4]
head = ["run", "msgs", "read/msg", "write/msg", "epoll_wait/msg", "epoll_ctl/msg",
        "other/msg", "all/msg", "RSS0 KiB", f"RSS@{idle} KiB", "KiB/conn"]
table = [r[:11] for r in rows]
med = ["median"] + [
    f"{statistics.median(float(r[i]) for r in rows):.4f}" if "." in rows[0][i]
    else f"{statistics.median(int(r[i]) for r in rows):.0f}"
    for i in range(1, 11)]
table.append(med)
w = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
fmt = lambda r: "  ".join(c.rjust(w[i]) for i, c in enumerate(r))
print(f"syscalls per echoed message ({conns} clients, {rate} rt/s) and server RSS per idle connection")
print(fmt(head))
for r in table:
    print(fmt(r))
m = {h: float(v) for h, v in zip(head[1:], med[1:])}
ok = lambda c: "met" if c else "MISSED"
print(f"targets: 1 read + 1 write per message: {ok(m['read/msg'] <= 1.01 and m['write/msg'] <= 1.01)};"
      f" 0 epoll_ctl after accept: {ok(m['epoll_ctl/msg'] == 0)};"
      f" RSS well under 1 KiB/conn: {ok(m['KiB/conn'] < 1)}")
EOF
