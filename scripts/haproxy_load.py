#!/usr/bin/env python3
"""Verified echo load through a load balancer (stdlib only), for
scripts/haproxy_demo.sh.

    haproxy_load.py --addr HOST:PORT --workers N --duration S --messages M

N threads each run sessions back to back until S seconds have passed: a
session connects, sends M messages of 64 bytes one at a time, checks each
echo byte for byte, and closes. A session may end early with a clean EOF
after an exact prefix of its echo (its backend stopped gracefully: it
flushed what it had read, then sent FIN); that is counted as `drained`,
not as an error. Any byte that differs from what was sent is a
`mismatch`; a reset, a refused connect or a timeout is an `error`.

SIGUSR1 prints `mark T` (the monotonic time) and the sessions are counted
from then on apart (`after mark: ...`), so a caller can tell what happened
to sessions started after it stopped a backend. Prints one line per
counter at the end; exits 1 on any mismatch or error. Loopback only; every
socket operation has a timeout.
"""

import argparse
import signal
import socket
import sys
import threading
import time

SIZE = 64
PERIOD = 251


def message(worker, session, k):
    off = (7 * k + 13 * worker + 31 * session) % PERIOD
    return bytes((off + i) % 256 for i in range(SIZE))


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.before = {"complete": 0, "drained": 0, "mismatches": 0, "errors": 0}
        self.after = dict(self.before)
        self.mark = None
        self.first_error = None

    def add(self, started, what, detail=None):
        with self.lock:
            side = self.after if self.mark is not None and started >= self.mark else self.before
            side[what] += 1
            if detail and self.first_error is None:
                self.first_error = detail


def recv_exact(sock, n):
    """Up to n bytes; fewer only at EOF."""
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def session(addr, worker, number, messages, counts):
    started = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for k in range(messages):
                out = message(worker, number, k)
                try:
                    sock.sendall(out)
                except (BrokenPipeError, ConnectionResetError):
                    # The backend closed after its drain: a clean end if
                    # every echo so far was exact (it was, or we returned).
                    counts.add(started, "drained")
                    return
                back = recv_exact(sock, SIZE)
                if back != out[: len(back)]:
                    counts.add(started, "mismatches", f"worker {worker} session {number} message {k}")
                    return
                if len(back) < SIZE:
                    counts.add(started, "drained")
                    return
        counts.add(started, "complete")
    except OSError as e:
        counts.add(started, "errors", f"worker {worker} session {number}: {e!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    if not (host.startswith("127.") or host in ("[::1]", "::1")):
        sys.exit("haproxy_load: loopback only")
    addr = (host.strip("[]"), int(port))
    counts = Counts()

    def on_usr1(_signum, _frame):
        counts.mark = time.monotonic()
        print(f"mark {counts.mark:.3f}", flush=True)

    signal.signal(signal.SIGUSR1, on_usr1)
    deadline = time.monotonic() + args.duration

    def worker(w):
        n = 0
        while time.monotonic() < deadline:
            session(addr, w, n, args.messages, counts)
            n += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    print(f"started {args.workers}", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.duration + 30)
    for label, side in (("before mark", counts.before), ("after mark", counts.after)):
        print(f"{label}: " + ", ".join(f"{v} {k}" for k, v in side.items()))
    if counts.first_error:
        print(f"first failure: {counts.first_error}")
    total = {k: counts.before[k] + counts.after[k] for k in counts.before}
    print("total: " + ", ".join(f"{v} {k}" for k, v in total.items()), flush=True)
    sys.exit(1 if total["mismatches"] or total["errors"] else 0)


if __name__ == "__main__":
    main()
