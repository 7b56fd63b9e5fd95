#!/usr/bin/env bash
# A/B cost of the echo hot path: echo_reactor as of commit BASE against
# echo_reactor as of HEAD (default: the working tree), measured in one run
# with the methods of scripts/cost.sh (shared through scripts/lib.sh):
#
#  1. user-space instructions per round trip (callgrind, CG_RATE rt/s, 100
#     connections of 64 B, depth 1; a CG_SHORT s run and a CG_LONG s run,
#     the difference divided by the difference in round trips);
#  2. syscalls per round trip (strace -c over ST_WINDOW s at ST_RATE rt/s),
#     by kind, and the epoll_ctl calls in the window: with every connection
#     accepted before it, any is an epoll_ctl after accept;
#  3. idle RSS per connection with IDLE_CONNS idle connections.
#
# Each is measured RUNS times, alternating BASE, HEAD, BASE, HEAD, ... so
# that drift in the machine's load falls on both; the table gives the
# median of the runs, their range in brackets and the ratio HEAD/BASE of
# the medians.
#
# BASE (and HEAD, when given) is checked out with `git worktree add
# --detach` in a scratch directory removed on exit, and built in
# AB_TARGET/base (AB_TARGET/head), kept between runs so that only the crate
# itself is rebuilt; the working tree is built in CARGO_TARGET_DIR (default
# target). The binaries are copied to the scratch directory before any
# measurement, so a build running elsewhere cannot swap them mid-run.
#
# Both servers get the flags of ECHO_REACTOR_ARGS (default "--idle-timeout
# 0", as the issue's figures were measured) that both accept, as their
# --help lists them; any other is dropped with a note. Both are driven by
# HEAD's echo_bench (AB_BENCH=own: each by its own), so only the server
# differs. The servers run on CPU 0, echo_bench on CPU 1; all traffic goes
# to 127.0.0.1; every wait and every load has a deadline; every process
# started here is stopped on exit. About 2 minutes with the defaults, plus
# the builds.
#
# usage: scripts/ab_cost.sh BASE [HEAD]
# knobs (environment): RUNS (3) IDLE_CONNS (2000) CG_RATE (1000) CG_SHORT
#   (2) CG_LONG (6) ST_RATE (5000) ST_WARMUP (2) ST_WINDOW (4)
#   ECHO_REACTOR_ARGS ("--idle-timeout 0") AB_BENCH (head) AB_TARGET
#   (/tmp/ab_cost-target) CARGO_TARGET_DIR (default: target) KEEP=DIR keeps
#   raw outputs there (callgrind dumps included)
set -euo pipefail

RUNS=${RUNS:-3}
IDLE_CONNS=${IDLE_CONNS:-2000}
CG_RATE=${CG_RATE:-1000}
CG_SHORT=${CG_SHORT:-2}
CG_LONG=${CG_LONG:-6}
ST_RATE=${ST_RATE:-5000}
ST_WARMUP=${ST_WARMUP:-2}
ST_WINDOW=${ST_WINDOW:-4}
ECHO_REACTOR_ARGS=${ECHO_REACTOR_ARGS-"--idle-timeout 0"}
AB_BENCH=${AB_BENCH:-head}
AB_TARGET=${AB_TARGET:-/tmp/ab_cost-target}
BUILD_DEADLINE=3600 # seconds for one cargo build

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/ab_cost.XXXXXX)
RESULTS=$WORK/results.tsv
FAILURES=$WORK/failures.txt
SCRIPT=ab_cost.sh
SIDES=(base head)
WORKTREES=() # checked out here, removed on exit
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

remove_worktrees() {
    local tree
    for tree in "${WORKTREES[@]}"; do
        git -C "$ROOT" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    done
    git -C "$ROOT" worktree prune 2>/dev/null || true
}
trap 'remove_worktrees; cleanup' EXIT

usage() {
    sed -n 's/^# \{0,1\}//; /^usage:/,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
}

# The executable of server SIDE (base or head), copied into WORK.
server_exe() { echo "$WORK/$1/echo_reactor"; }

# Builds echo_reactor and echo_bench (release) from the source tree SRC in
# the target dir TARGET and copies them to WORK/SIDE.
build_side() {
    local side=$1 src=$2 target=$3 name
    echo "building $side in $src (target dir $target)"
    (cd "$src" && CARGO_TARGET_DIR=$target timeout "$BUILD_DEADLINE" \
        cargo build --release --quiet --example echo_reactor --example echo_bench) ||
        die "build of $side failed"
    mkdir -p "$WORK/$side"
    for name in echo_reactor echo_bench; do
        [[ -x $target/release/examples/$name ]] || die "no binary at $target/release/examples/$name"
        cp "$target/release/examples/$name" "$WORK/$side/"
    done
}

# Checks out COMMIT in a detached worktree for SIDE, builds it there.
build_commit() {
    local side=$1 commit=$2 tree=$WORK/src-$1
    git -C "$ROOT" worktree add --detach --quiet "$tree" "$commit" || die "cannot check out $commit"
    WORKTREES+=("$tree")
    build_side "$side" "$tree" "$AB_TARGET/$side"
}

# The flags echo_reactor EXE lists in its --help, one a line.
flags_of() {
    timeout 10 "$1" --help 2>&1 | grep -o -- '--[a-z][a-z0-9-]*' | sort -u || true
}

# Keeps the flags of ECHO_REACTOR_ARGS (each with the values after it) that
# both servers accept.
common_args() {
    local base_flags head_flags words word keep=1 kept=() dropped=()
    base_flags=$(flags_of "$(server_exe base)")
    head_flags=$(flags_of "$(server_exe head)")
    read -ra words <<<"$ECHO_REACTOR_ARGS"
    for word in "${words[@]}"; do
        if [[ $word == -* ]]; then
            keep=0
            if grep -qxF -- "${word%%=*}" <<<"$base_flags" && grep -qxF -- "${word%%=*}" <<<"$head_flags"; then
                keep=1
            fi
        fi
        if ((keep)); then kept+=("$word"); else dropped+=("$word"); fi
    done
    if ((${#dropped[@]})); then
        echo "note: not passed (not accepted by both servers): ${dropped[*]}" >&2
    fi
    echo "${kept[*]}"
}

# The table row of instructions per round trip at equal batching. How many
# round trips one epoll_wait returns varies from run to run under callgrind,
# and each wait costs instructions of its own (the loop turn, mio, libc),
# which spreads the callgrind figure by several per cent. A least-squares
# fit over every run of both sides, dIr = b_side * dRT + c * dWaits (the
# cost of a wait, c, shared), separates the two; the row gives b_side +
# c * w, w the mean of the waits per round trip of all runs, so the figures
# are on the scale of the first row. Needs RUNS >= 2.
fit_row() {
    awk -F'\t' -v label="user instructions / rt at equal batching (fit over all runs; see ab_cost.sh)" '
        $2 == "cg_delta" {
            split($3, v, " ")
            rt = v[1]; w = v[2]; ir = v[3]
            if (rt <= 0) next
            k = $1 == "base" ? 1 : 2
            rr[k] += rt * rt; rw[k] += rt * w; ri[k] += rt * ir
            ww += w * w; wi += w * ir; wsum += w / rt; n++
        }
        END {
            den = ww - (rr[1] ? rw[1] ^ 2 / rr[1] : 0) - (rr[2] ? rw[2] ^ 2 / rr[2] : 0)
            if (n < 4 || !rr[1] || !rr[2] || den <= 1e-9 * ww) {
                printf "| %s | n/a | n/a | n/a |\n", label
                exit
            }
            c = (wi - rw[1] * ri[1] / rr[1] - rw[2] * ri[2] / rr[2]) / den
            wbar = wsum / n
            for (k = 1; k <= 2; k++) f[k] = (ri[k] - rw[k] * c) / rr[k] + c * wbar
            printf "| %s (%.0f Ir / wait, at %.3f waits / rt) | %.1f | %.1f | %.4f |\n", \
                label, c, wbar, f[1], f[2], f[2] / f[1]
        }' "$RESULTS"
}

# --- main --------------------------------------------------------------------

(($# >= 1 && $# <= 2)) || usage
[[ $1 != -h && $1 != --help ]] || usage
BASE_COMMIT=$(git -C "$ROOT" rev-parse --verify --quiet "$1^{commit}") || die "not a commit: $1"
BASE_LABEL="BASE $(git -C "$ROOT" rev-parse --short "$BASE_COMMIT")"
if (($# == 2)); then
    HEAD_COMMIT=$(git -C "$ROOT" rev-parse --verify --quiet "$2^{commit}") || die "not a commit: $2"
    HEAD_LABEL="HEAD $(git -C "$ROOT" rev-parse --short "$HEAD_COMMIT")"
else
    HEAD_COMMIT=
    HEAD_LABEL="HEAD $(git -C "$ROOT" rev-parse --short HEAD)"
    [[ -z $(git -C "$ROOT" status --porcelain) ]] || HEAD_LABEL+=" + working tree"
fi

missing=()
for tool in valgrind callgrind_control strace; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "installing valgrind strace (missing: ${missing[*]})"
    if ! { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq valgrind strace >/dev/null; }; then
        die "could not install valgrind strace"
    fi
fi
for tool in taskset timeout awk git cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done
(($(nproc) >= 2)) || die "needs 2 CPUs (server on 0, echo_bench on 1)"

build_commit base "$BASE_COMMIT"
if [[ -n $HEAD_COMMIT ]]; then
    build_commit head "$HEAD_COMMIT"
else
    build_side head "$ROOT" "${CARGO_TARGET_DIR:-$ROOT/target}"
fi
remove_worktrees
WORKTREES=()
ECHO_REACTOR_ARGS=$(common_args)

BENCH_DEADLINE=$((CG_LONG + 100)) # load, drain, connect
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
((IDLE_CONNS + 100 <= $(ulimit -n))) || die "open-file limit $(ulimit -n) is too low for $IDLE_CONNS idle connections"
open_nap
: >"$RESULTS"
: >"$FAILURES"
echo "$BASE_LABEL against $HEAD_LABEL; echo_reactor $ECHO_REACTOR_ARGS; echo_bench of" \
    "$([[ $AB_BENCH == own ]] && echo "each side" || echo HEAD); kernel $(uname -r), $(nproc) CPUs," \
    "RUNS=$RUNS; load: $(uptime | sed 's/.*load average/load average/')"

# BENCH_EXE for SIDE.
use_bench() {
    if [[ $AB_BENCH == own ]]; then BENCH_EXE=$WORK/$1/echo_bench; else BENCH_EXE=$WORK/head/echo_bench; fi
}

for ((run = 1; run <= RUNS; run++)); do
    RUN_TAG=-$run
    echo "run $run of $RUNS"
    echo "1. instructions per round trip (callgrind)"
    for side in "${SIDES[@]}"; do
        use_bench "$side"
        measure_instructions "$side"
    done
    echo "2. syscalls per round trip (strace)"
    for side in "${SIDES[@]}"; do
        use_bench "$side"
        measure_syscalls "$side"
    done
    echo "3. idle memory"
    for side in "${SIDES[@]}"; do
        use_bench "$side"
        measure_idle "$side"
    done
done

echo
for side in "${SIDES[@]}"; do
    echo "syscalls seen in $side: $(awk -F'\t' -v s="$side" '$1 == s && $2 == "sys_names" { print $3; exit }' "$RESULTS")"
done
echo "load after the runs: $(uptime | sed 's/.*load average/load average/')"
echo
echo "| metric (median of $RUNS runs, range in brackets) | $BASE_LABEL | $HEAD_LABEL | HEAD/BASE |"
echo "| --- | ---: | ---: | ---: |"
row_ba() { row_ab base head "$@" b/a; }
row_ba "user instructions / round trip (callgrind, $CG_RATE rt/s, 100 conns)" instructions
row_ba "epoll_wait calls / rt under callgrind (batching: each wait adds instructions)" cg_waits
fit_row
row_ba "syscalls / rt: read" sys_read
row_ba "syscalls / rt: write" sys_write
row_ba "syscalls / rt: epoll_wait" sys_epoll_wait
row_ba "syscalls / rt: epoll_ctl" sys_epoll_ctl
row_ba "syscalls / rt: all ($ST_RATE rt/s, 100 conns)" sys_total
row_ba "epoll_ctl calls in the ${ST_WINDOW}s window (all connections accepted before it)" sys_epoll_ctl_calls
row_ba "idle RSS KiB / connection ($IDLE_CONNS conns)" idle_kib
if [[ -s $FAILURES ]]; then
    echo
    echo "FAILED runs (figures above include them where they printed any):"
    cat "$FAILURES"
    exit 1
fi
