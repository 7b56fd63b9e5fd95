# Shared by scripts/cost.sh and scripts/measure_core.sh (sourced, not run):
# process bookkeeping that leaves nothing running on exit, a 1 ms nap
# without forking, bounded waits, and a server started pinned to CPU 0.
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
