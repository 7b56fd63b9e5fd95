# shellcheck shell=bash
# Shared by scripts/cost.sh, scripts/ab_cost.sh and scripts/measure_core.sh
# (sourced, not run): process bookkeeping that leaves nothing running on
# exit, a 1 ms nap without forking, bounded waits, a server started pinned
# to CPU 0, and (for cost.sh and ab_cost.sh) the three cost measurements of
# a server and the table rows built from them.
# The sourcing script sets SCRIPT (its name, for messages) and WORK (a
# scratch directory, removed on exit; KEEP=DIR keeps a copy) first.

PIDS=() # every process started, until it is stopped

# Stops PID: SIGTERM (unless SIGNAL says otherwise), up to 5 s to exit,
# then SIGKILL; reaps it and leaves its exit status in STOPPED_RC.
stop_pid() {
    local pid=$1 signal=${2:-TERM}
    # stderr off for the whole stop: bash prints its "Killed" job notice as
    # soon as it reaps the child, before any `wait`.
    {
        kill "-$signal" "$pid" || true
        wait_exit "$pid" 5
    } 2>/dev/null
}

# Waits at most SECONDS for PID to exit, then kills it; reaps it and leaves
# its exit status in STOPPED_RC.
wait_exit() {
    local pid=$1 seconds=$2 i
    for ((i = 0; i < seconds * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    STOPPED_RC=0
    { wait "$pid"; } 2>/dev/null || STOPPED_RC=$?
    forget_pid "$pid"
}

forget_pid() {
    local pid=$1 i
    for i in "${!PIDS[@]}"; do
        [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'
    done
    return 0
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        { kill -KILL "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && echo "raw outputs kept in $KEEP"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "$SCRIPT: $*" >&2; exit 1; }

# Opens the FIFO `nap` reads from; call once before any wait.
open_nap() {
    mkfifo "$WORK/nap.fifo"
    exec {NAP_FD}<>"$WORK/nap.fifo"
}

# Sleeps about a millisecond without forking (a read that times out on a
# FIFO nobody writes to), so the strace window edges are precise.
nap() { read -r -t 0.001 -u "$NAP_FD" 2>/dev/null || true; }

# Polls every millisecond until grep finds PATTERN in FILE, at most SECONDS.
wait_for() {
    local pattern=$1 file=$2 seconds=$3 i
    for ((i = 0; i < seconds * 1000; i++)); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        nap
    done
    return 1
}

vmrss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Starts the server EXE on CPU 0 (`--addr 127.0.0.1:0`, and for
# echo_reactor the words of ECHO_REACTOR_ARGS) with output files
# PREFIX.out/.err, under the WRAPPER command if one is given (valgrind);
# sets SERVER_PID and SERVER_ADDR once it prints its address.
start_server() {
    local exe=$1 prefix=$2 extra=()
    shift 2
    if [[ $(basename "$exe") == echo_reactor ]]; then
        read -ra extra <<<"${ECHO_REACTOR_ARGS:-}"
    fi
    taskset -c 0 "$@" "$exe" --addr 127.0.0.1:0 "${extra[@]}" >"$prefix.out" 2>"$prefix.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for '^listening on ' "$prefix.out" 60 ||
        die "$(basename "$exe") did not start: $(tail -5 "$prefix.err")"
    # The first line is the --addr above; flags in ECHO_REACTOR_ARGS may add
    # listeners, one line each after it.
    SERVER_ADDR=$(sed -n '1s/^listening on //p' "$prefix.out")
}

# --- measuring a server (scripts/cost.sh, scripts/ab_cost.sh) ------------------
#
# The sourcing script also sets RESULTS and FAILURES (files in WORK),
# BENCH_EXE (echo_bench), BENCH_DEADLINE (seconds), the knobs CG_RATE
# CG_SHORT CG_LONG (part 1), ST_RATE ST_WARMUP ST_WINDOW (part 2) and
# IDLE_CONNS (part 3), and defines `server_exe NAME`, the executable of the
# server it calls NAME; RUN_TAG, if set, ends the names of the raw output
# files (so repeated runs keep theirs). Every figure is appended to RESULTS
# as "NAME <tab> metric <tab> value".

# Runs echo_bench on CPU 1 in the foreground with a deadline; output to OUT.
# A failed run (mismatch, error, unanswered, timeout) is recorded.
bench() {
    local out=$1 rc=0
    shift
    timeout -k 5 "$BENCH_DEADLINE" taskset -c 1 "$BENCH_EXE" "$@" \
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

# --- cost 1. instructions per round trip ---------------------------------------------

# Calls to epoll_wait (epoll_pwait ...) in the callgrind dump FILE: the
# `calls=` lines under a `cfn=` naming it, by name or by the number
# (`(N)`) that its first `fn=` or `cfn=` gave it.
cg_wait_calls() {
    awk '
        /^c?fn=/ {
            id = $1; sub(/^c?fn=/, "", id)
            if (NF > 1) { name[id] = $2 } else if (!(id in name)) { name[id] = id }
            if ($1 ~ /^cfn=/) cur = name[id]
            next
        }
        /^calls=/ { if (cur ~ /^epoll_(p?wait|pwait2)$/) { split($1, c, "="); n += c[2] } next }
        /^(fl|fi|fe|ob|cob|cfi|cfl)=/ { cur = "" }
        END { print n + 0 }' "$1"
}

# Runs NAME under callgrind with SECS of load; sets CG_IR, CG_RT and
# CG_WAITS (its epoll_wait calls).
callgrind_run() {
    local name=$1 secs=$2 prefix=$WORK/cg-$1-$2${RUN_TAG:-} dump i fd0
    start_server "$(server_exe "$name")" "$prefix" valgrind --tool=callgrind --callgrind-out-file="$prefix.cg.%p"
    fd0=$(fd_count "$SERVER_PID")
    bench "$prefix.bench" pingpong --conns 100 --size 64 --depth 1 --rate "$CG_RATE" --duration "$secs"
    # echo_bench has closed its connections, but the server, slowed down by
    # valgrind, may still be closing its ends: a dump taken then would
    # count some of the 100 closes and not others (up to ~10 instructions
    # per round trip either way). Wait until it holds none, at most 30 s.
    for ((i = 0; i < 600; i++)); do
        (($(fd_count "$SERVER_PID") <= fd0)) && break
        sleep 0.05
    done
    ((i < 600)) || echo "  $name: still holds $(($(fd_count "$SERVER_PID") - fd0)) connections 30 s after the load; dumped anyway"
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
    CG_WAITS=$(cg_wait_calls "$dump")
    [[ -n $CG_IR && -n $CG_RT ]] || die "no totals or round trips for $name under callgrind"
}

measure_instructions() {
    local name=$1 ir0 rt0 waits0
    callgrind_run "$name" "$CG_SHORT"
    ir0=$CG_IR rt0=$CG_RT waits0=$CG_WAITS
    callgrind_run "$name" "$CG_LONG"
    echo "  $name: Ir $ir0 for $rt0 round trips (${CG_SHORT}s), $CG_IR for $CG_RT (${CG_LONG}s)"
    record "$name" instructions "$(awk -v a="$ir0" -v b="$rt0" -v c="$CG_IR" -v d="$CG_RT" \
        'BEGIN { if (d > b) printf "%.1f", (c - a) / (d - b); else print "nan" }')"
    # How the round trips fell into epoll_wait batches, the same way: each
    # wait costs instructions of its own, so this explains part of the
    # spread of the figure above; and the differences themselves ("round
    # trips, waits, Ir"), for a fit that separates the two.
    record "$name" cg_waits "$(awk -v a="$waits0" -v b="$rt0" -v c="$CG_WAITS" -v d="$CG_RT" \
        'BEGIN { if (d > b) printf "%.3f", (c - a) / (d - b); else print "nan" }')"
    record "$name" cg_delta "$((CG_RT - rt0)) $((CG_WAITS - waits0)) $((CG_IR - ir0))"
}

# --- cost 2. syscalls per round trip ----------------------------------------------------

measure_syscalls() {
    local name=$1 prefix=$WORK/st-$1${RUN_TAG:-} bench_pid strace_pid i marks
    start_server "$(server_exe "$name")" "$prefix"
    taskset -c 1 "$BENCH_EXE" pingpong --addr "$SERVER_ADDR" --conns 100 --size 64 --depth 1 \
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
            printf "%s\tsys_epoll_ctl_calls\t%d\n", name, calls["epoll_ctl"]
        }' "$prefix.strace" >>"$RESULTS"
}

# --- cost 3. idle memory ------------------------------------------------------------

fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

measure_idle() {
    local name=$1 prefix=$WORK/idle-$1${RUN_TAG:-} rss0 rss1 fd0 fds i idle_pid hold
    start_server "$(server_exe "$name")" "$prefix"
    sleep 0.2
    rss0=$(vmrss_kib "$SERVER_PID")
    fd0=$(fd_count "$SERVER_PID")
    hold=$((IDLE_CONNS / 100 + 60))
    taskset -c 1 "$BENCH_EXE" idle --addr "$SERVER_ADDR" --conns "$IDLE_CONNS" --hold "$hold" --json \
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

# "MEDIAN MIN MAX" of the recorded values of METRIC for SERVER ("n/a" if
# none).
median() {
    awk -F'\t' -v s="$1" -v m="$2" '$1 == s && $2 == m && $3 != "" { print $3 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR] }'
}

# One table row for servers A and B: LABEL, the medians of METRIC, with
# the range of the runs when there were several, and the ratio of the
# medians: A/B (3 significant digits), or B/A (4 decimals) if the fifth
# argument is b/a.
row_ab() {
    local a_name=$1 b_name=$2 label=$3 metric=$4 ratio=${5:-a/b} a b
    a=$(median "$a_name" "$metric")
    b=$(median "$b_name" "$metric")
    awk -v l="$label" -v a="$a" -v b="$b" -v ratio="$ratio" '
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
            if (ratio == "b/a")
                r = (num(x[1]) && num(y[1]) && x[1] != 0) ? sprintf("%.4f", y[1] / x[1]) : "n/a"
            else
                r = (num(x[1]) && num(y[1]) && y[1] != 0) ? sprintf("%.3g", x[1] / y[1]) : "n/a"
            printf "| %s | %s | %s | %s |\n", l, cell(a), cell(b), r
        }'
}
