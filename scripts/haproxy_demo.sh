#!/usr/bin/env bash
# Past one machine: two echo_reactor instances behind HAProxy (TCP mode,
# scripts/haproxy/echo.cfg), all on loopback. Sends verified load through
# HAProxy (scripts/haproxy_load.py: sessions of 64-byte ping-pongs, every
# echo checked), stops instance A gracefully (SIGTERM) in the middle of
# it, and shows that
#
#  - no client saw a corrupted stream (0 mismatches, 0 errors: sessions on
#    A end with a clean EOF after an exact echo, or complete),
#  - new connections go to the survivor: A's final count of accepted
#    connections against B's, HAProxy's view of both servers, and the
#    sessions started after the stop, all served.
#
# Not part of `cargo test`: it needs haproxy (installed with apt-get when
# missing). Free ports are picked by the kernel for the two instances;
# HAProxy gets one too. Every process started here is stopped on exit.
#
# usage: scripts/haproxy_demo.sh
# knobs (environment): DURATION (8) STOP_AFTER (3) WORKERS (20)
#   CARGO_TARGET_DIR (default: target) KEEP=DIR keeps raw outputs
set -euo pipefail

DURATION=${DURATION:-8}
STOP_AFTER=${STOP_AFTER:-3}
WORKERS=${WORKERS:-20}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/examples
WORK=$(mktemp -d /tmp/haproxy_demo.XXXXXX)
SCRIPT=haproxy_demo.sh
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
open_nap

if ! command -v haproxy >/dev/null; then
    echo "installing haproxy" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >"$WORK/apt.txt" 2>&1 ||
        die "apt-get install haproxy failed: $(tail -3 "$WORK/apt.txt")"
fi
(cd "$ROOT" && cargo build --release --quiet --example echo_reactor) || die "cargo build failed"

# A free loopback port: bound and released at once (HAProxy needs one in
# its config; the echo instances report their own).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts echo instance NAME; sets ADDR_NAME and PID_NAME.
start_echo() {
    local name=$1
    "$BIN/echo_reactor" --addr 127.0.0.1:0 --drain-timeout 10 >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    wait_for '^listening on ' "$WORK/$name.out" 30 || die "echo $name did not start"
    printf -v "PID_$name" '%s' "$pid"
    printf -v "ADDR_$name" '%s' "$(sed -n '1s/^listening on //p' "$WORK/$name.out")"
}

# HAProxy's view of the two servers: status, current and total sessions.
haproxy_servers() {
    python3 - "$WORK/haproxy.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
lines = data.decode().splitlines()
head = lines[0].lstrip("# ").split(",")
for line in lines[1:]:
    row = dict(zip(head, line.split(",")))
    if row.get("pxname") == "echo_reactors" and row.get("svname") in ("a", "b"):
        print(f"  server {row['svname']}: {row['status']}, {row['scur']} sessions now, {row['stot']} in all")
EOF
}

start_echo A
start_echo B
FRONT=127.0.0.1:$(free_port)
echo "echo A on $ADDR_A (pid $PID_A), echo B on $ADDR_B (pid $PID_B), HAProxy on $FRONT"
FRONT=$FRONT ECHO_A=$ADDR_A ECHO_B=$ADDR_B STATS_SOCKET=$WORK/haproxy.sock \
    haproxy -f "$ROOT/scripts/haproxy/echo.cfg" -db >"$WORK/haproxy.out" 2>"$WORK/haproxy.err" &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
# Whether HAProxy's view of the servers has all of PATTERNS.
servers_are() {
    local view pattern
    view=$(haproxy_servers 2>/dev/null) || return 1
    for pattern in "$@"; do [[ $view == *"$pattern"* ]] || return 1; done
}
for ((i = 0; i < 3000; i++)); do
    servers_are "a: UP" "b: UP" && break
    nap
done
servers_are "a: UP" "b: UP" || die "HAProxy did not see both servers up: $(tail -3 "$WORK/haproxy.err")"
echo "HAProxy sees both servers up:"
haproxy_servers

python3 "$ROOT/scripts/haproxy_load.py" --addr "$FRONT" --workers "$WORKERS" \
    --duration "$DURATION" >"$WORK/load.out" 2>&1 &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
wait_for '^started' "$WORK/load.out" 10 || die "the load did not start"
for ((i = 0; i < STOP_AFTER * 1000; i++)); do nap; done

echo "after ${STOP_AFTER} s of load: SIGTERM to echo A"
kill -USR1 "$LOAD_PID"
kill -TERM "$PID_A"
wait_exit "$PID_A" 15
echo "echo A exited with code $STOPPED_RC:"
sed -n 's/^echo_reactor INFO  /  /p' "$WORK/A.err" | grep stopped:
for ((i = 0; i < 1000; i++)); do
    servers_are "a: DOWN" && break
    nap
done
echo "HAProxy, after the stop:"
haproxy_servers

wait_exit "$LOAD_PID" $((DURATION + 40))
LOAD_RC=$STOPPED_RC
echo "the load ($WORKERS workers, sessions of 20 verified 64-byte echoes, ${DURATION} s), exit code $LOAD_RC:"
sed 's/^/  /' "$WORK/load.out"
echo "HAProxy, at the end:"
haproxy_servers

stop_pid "$PID_B" TERM
echo "echo B exited with code $STOPPED_RC:"
sed -n 's/^echo_reactor INFO  /  /p' "$WORK/B.err" | grep stopped:
stop_pid "$HAPROXY_PID" TERM

after=$(sed -n 's/^after mark: //p' "$WORK/load.out")
[[ $LOAD_RC == 0 ]] || die "a client saw a corrupted stream or an error"
[[ $after =~ ^([0-9]+)\ complete ]] && ((BASH_REMATCH[1] > 0)) ||
    die "no session started after the stop completed: $after"
echo "OK: no client saw a corrupted stream; sessions started after the stop were all served, by B"
