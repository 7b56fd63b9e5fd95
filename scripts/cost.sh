#!/usr/bin/env bash
# Measures what an echoed message costs on echo_reactor and, side by side in
# the same run, on tokio_echo (tokio's current-thread runtime, a task per
# connection), and prints one markdown table with the ratio reactor/tokio:
#
#  1. user-space instructions per round trip: the server under
#     `valgrind --tool=callgrind`, driven by echo_bench at CG_RATE round
#     trips/s (100 connections, 64 B, depth 1) for CG_SHORT s and, in a
#     fresh run, CG_LONG s; totals dumped with `callgrind_control -d`, then
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

# Runs echo_bench on CPU 1 in the foreground with a deadline; output to OUT.
# A failed run (mismatch, error, unanswered, timeout) is recorded.
bench() {
    local out=$1 rc=0
    shift
    timeout -k 5 "$BENCH_DEADLINE" taskset -c 1 "$BIN/echo_bench" "$@" \
        --addr "$SERVER_ADDR" --json >"$out" 2>"$out.err" || rc=$?
    check_bench "$out" "$rc" "$*"
}

check_bench() {
    local out=$1 rc=$2 what=$3
    if [[ $rc != 0 ]]; then
        echo "FAILED (exit $rc): echo_bench $what: $(tr '\n' ' ' <"$out.err")" | tee -a "$FAILURES"
    fi
}

# The value of KEY in the JSON line of FILE.
jfield() { sed -n 's/^{.*"'"$2"'":\([^,}]*\).*/\1/p' "$1"; }

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

# --- 1. instructions per round trip ---------------------------------------------

# Runs NAME under callgrind with SECS of load; sets CG_IR and CG_RT.
callgrind_run() {
    local name=$1 secs=$2 prefix=$WORK/cg-$1-$2 dump i
    start_server "$(server_exe "$name")" "$prefix" valgrind --tool=callgrind --callgrind-out-file="$prefix.cg.%p"
    bench "$prefix.bench" pingpong --conns 100 --size 64 --depth 1 --rate "$CG_RATE" --duration "$secs"
    # A signal may not end the server under valgrind: ask for a dump, wait
    # until it is complete (its totals line is written last), then kill.
    timeout 60 callgrind_control -d "$SERVER_PID" >"$prefix.control" 2>&1 || true
    dump=
    for ((i = 0; i < 600; i++)); do
        dump=$(grep -l '^totals:' "$prefix.cg.$SERVER_PID".* 2>/dev/null | head -n1 || true)
        [[ -n $dump ]] && break
        sleep 0.05
    done
    stop_pid "$SERVER_PID" KILL
    [[ -n $dump ]] || die "no callgrind dump for $name: $(cat "$prefix.control")"
    CG_IR=$(awk '/^totals:/ { print $2 }' "$dump")
    CG_RT=$(jfield "$prefix.bench" round_trips)
    [[ -n $CG_IR && -n $CG_RT ]] || die "no totals or round trips for $name under callgrind"
}

measure_instructions() {
    local name=$1 ir0 rt0
    callgrind_run "$name" "$CG_SHORT"
    ir0=$CG_IR rt0=$CG_RT
    callgrind_run "$name" "$CG_LONG"
    echo "  $name: Ir $ir0 for $rt0 round trips (${CG_SHORT}s), $CG_IR for $CG_RT (${CG_LONG}s)"
    record "$name" instructions "$(awk -v a="$ir0" -v b="$rt0" -v c="$CG_IR" -v d="$CG_RT" \
        'BEGIN { if (d > b) printf "%.1f", (c - a) / (d - b); else print "nan" }')"
}

# --- 2. syscalls per round trip ----------------------------------------------------

measure_syscalls() {
    local name=$1 prefix=$WORK/st-$1 bench_pid strace_pid i marks
    start_server "$(server_exe "$name")" "$prefix"
    taskset -c 1 "$BIN/echo_bench" pingpong --addr "$SERVER_ADDR" --conns 100 --size 64 --depth 1 \
        --rate "$ST_RATE" --duration "$((ST_WARMUP + ST_WINDOW + 3))" --json \
        >"$prefix.bench" 2>"$prefix.bench.err" &
    bench_pid=$!
    PIDS+=("$bench_pid")
    wait_for '^started ' "$prefix.bench" 60 || die "echo_bench did not start: $(cat "$prefix.bench.err")"
    sleep "$ST_WARMUP"
    taskset -c 0 strace -f -c -p "$SERVER_PID" -o "$prefix.strace" 2>"$prefix.strace.err" &
    strace_pid=$!
    PIDS+=("$strace_pid")
    # strace says "Process N attached" once it traces the server.
    wait_for attached "$prefix.strace.err" 10 || die "strace did not attach: $(cat "$prefix.strace.err")"
    kill -USR1 "$bench_pid"
    sleep "$ST_WINDOW"
    kill -USR1 "$bench_pid"
    kill -INT "$strace_pid"
    wait_exit "$strace_pid" 10
    for ((i = 0; i < 2000; i++)); do
        (($(grep -c '^mark ' "$prefix.bench") >= 2)) && break
        nap
    done
    wait_exit "$bench_pid" "$BENCH_DEADLINE"
    check_bench "$prefix.bench" "$STOPPED_RC" "pingpong under strace ($name)"
    stop_pid "$SERVER_PID"
    marks=$(awk '/^mark / { n[++k] = $3 } END { if (k >= 2) print n[2] - n[1]; else print 0 }' "$prefix.bench")
    ((marks > 0)) || die "no round trips counted in the strace window of $name"
    echo "  $name: $marks round trips in the ${ST_WINDOW}s window; $(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "%s=%s ", $NF, $4 }' "$prefix.strace")"
    awk -v name="$name" -v rt="$marks" '
        $1 ~ /^[0-9.]+$/ && $NF != "total" { calls[$NF] = $4; all += $4; names = names $NF " " }
        END {
            r = calls["read"] + calls["recvfrom"] + calls["recvmsg"] + calls["readv"]
            w = calls["write"] + calls["sendto"] + calls["sendmsg"] + calls["writev"]
            e = calls["epoll_wait"] + calls["epoll_pwait"] + calls["epoll_pwait2"]
            printf "%s\tsys_read\t%.3f\n%s\tsys_write\t%.3f\n", name, r / rt, name, w / rt
            printf "%s\tsys_epoll_wait\t%.3f\n%s\tsys_epoll_ctl\t%.3f\n", name, e / rt, name, calls["epoll_ctl"] / rt
            printf "%s\tsys_total\t%.3f\n%s\tsys_names\t%s\n", name, all / rt, name, names
        }' "$prefix.strace" >>"$RESULTS"
}

# --- 3. idle memory ------------------------------------------------------------

fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

measure_idle() {
    local name=$1 prefix=$WORK/idle-$1 rss0 rss1 fd0 fds i idle_pid hold
    start_server "$(server_exe "$name")" "$prefix"
    sleep 0.2
    rss0=$(vmrss_kib "$SERVER_PID")
    fd0=$(fd_count "$SERVER_PID")
    hold=$((IDLE_CONNS / 100 + 60))
    taskset -c 1 "$BIN/echo_bench" idle --addr "$SERVER_ADDR" --conns "$IDLE_CONNS" --hold "$hold" --json \
        >"$prefix.bench" 2>"$prefix.bench.err" &
    idle_pid=$!
    PIDS+=("$idle_pid")
    wait_for "^connected $IDLE_CONNS\$" "$prefix.bench" "$hold" \
        || die "idle clients did not connect to $name: $(cat "$prefix.bench" "$prefix.bench.err")"
    # A client sees its connection before the server has accepted it: wait
    # until the server holds every descriptor.
    for ((i = 0; i < 600; i++)); do
        fds=$(fd_count "$SERVER_PID")
        ((fds >= fd0 + IDLE_CONNS)) && break
        sleep 0.05
    done
    ((fds >= fd0 + IDLE_CONNS)) || die "$name holds $((fds - fd0)) of $IDLE_CONNS connections"
    sleep 1
    rss1=$(vmrss_kib "$SERVER_PID")
    stop_pid "$idle_pid"
    check_bench "$prefix.bench" "$STOPPED_RC" "idle ($name)"
    stop_pid "$SERVER_PID"
    echo "  $name: VmRSS $rss0 KiB at start, $rss1 KiB with $IDLE_CONNS idle connections"
    record "$name" idle_kib "$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')"
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

# "MEDIAN MIN MAX" of the recorded values of METRIC for SERVER ("n/a" if
# none).
median() {
    awk -F'\t' -v s="$1" -v m="$2" '$1 == s && $2 == m && $3 != "" { print $3 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR] }'
}

# One table row: the medians, with the range of the runs when there were
# several, and the ratio of the medians.
row() {
    local label=$1 metric=$2 a b
    a=$(median echo_reactor "$metric")
    b=$(median tokio_echo "$metric")
    awk -v l="$label" -v a="$a" -v b="$b" '
        function num(x) { return x ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/ }
        function fmt(x) {
            if (!num(x)) return x
            return x >= 1000 ? sprintf("%.0f", x) : x >= 10 ? sprintf("%.1f", x) : sprintf("%.3f", x)
        }
        function cell(s, v) {
            split(s, v, " ")
            return v[2] == v[3] ? fmt(v[1]) : fmt(v[1]) " (" fmt(v[2]) "–" fmt(v[3]) ")"
        }
        BEGIN {
            split(a, x, " "); split(b, y, " ")
            r = (num(x[1]) && num(y[1]) && y[1] != 0) ? sprintf("%.3g", x[1] / y[1]) : "n/a"
            printf "| %s | %s | %s | %s |\n", l, cell(a), cell(b), r
        }'
}

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
