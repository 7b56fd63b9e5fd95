#!/usr/bin/env python3
"""Load generator for the echo reactor (stdlib only: selectors, socket).

Modes
-----
pingpong --conns N --size B --rate RT_PER_S --duration S
    Opens N connections, prints `started N` (flushed), then sends B-byte
    messages at RT_PER_S round trips per second in total (paced on one
    global schedule, one message in flight per connection) and checks every
    echoed byte. Prints `completed N`, `mismatches N`, `errors N` and a few
    more lines at the end; exits 1 if any echo was wrong or lost.
    SIGUSR1 prints `mark T COMPLETED` (monotonic time, round trips completed
    so far), so a caller can count the round trips inside a window.

idle --conns N --hold S
    Opens N connections, prints `connected N` (flushed), then holds them
    open, sending nothing, for S seconds or until SIGTERM/SIGINT.

Traffic goes only to loopback addresses (refused otherwise). Every loop is
bounded in time: connecting, the load itself and holding all have deadlines.
"""

import argparse
import collections
import errno
import resource
import selectors
import signal
import socket
import sys
import time

# Filler bytes: message k on connection c is PATTERN[off:off + size] with
# off = (7 * k + 13 * c) % 251, so consecutive messages differ and a reply
# delivered to the wrong connection or out of order is caught.
PERIOD = 251


def die(msg):
    print(f"loadgen: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_addr(text):
    host, sep, port = text.rpartition(":")
    if not sep:
        die(f"--addr '{text}' is not HOST:PORT")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        die(f"--addr '{text}': {e}")
    family, _, _, _, sockaddr = infos[0]
    ip = sockaddr[0]
    if not (ip.startswith("127.") or ip == "::1"):
        die(f"refusing to send load to {ip}: loopback only")
    return family, sockaddr


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            print(f"loadgen: cannot raise open-file limit: {e}", file=sys.stderr)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need + 16:
        die(f"open-file limit {soft} is too low for {need} connections")


def open_connections(family, sockaddr, n, timeout, batch=100):
    """Opens n connections, `batch` at a time (the server's listen backlog is
    small), each batch waited for with a deadline. Returns the sockets."""
    deadline = time.monotonic() + timeout
    socks = []
    sel = selectors.DefaultSelector()
    try:
        while len(socks) < n:
            if time.monotonic() > deadline:
                die(f"connected only {len(socks)} of {n} within {timeout}s")
            pending = {}
            for _ in range(min(batch, n - len(socks))):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rc = s.connect_ex(sockaddr)
                if rc not in (0, errno.EINPROGRESS):
                    s.close()
                    die(f"connect: {errno.errorcode.get(rc, rc)} after {len(socks)} connections")
                pending[s.fileno()] = s
                sel.register(s, selectors.EVENT_WRITE)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    die(f"connected only {len(socks)} of {n} within {timeout}s")
                for key, _ in sel.select(min(left, 1.0)):
                    s = key.fileobj
                    sel.unregister(s)
                    del pending[s.fileno()]
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        s.close()
                        die(f"connect: {errno.errorcode.get(err, err)} after {len(socks)} connections")
                    socks.append(s)
    finally:
        sel.close()
    return socks


class Conn:
    __slots__ = ("sock", "idx", "seq", "expect", "got", "out", "sent_at", "busy")

    def __init__(self, sock, idx):
        self.sock = sock
        self.idx = idx
        self.seq = 0
        self.expect = b""   # the message in flight
        self.got = 0        # bytes of it echoed so far
        self.out = b""      # bytes of it the kernel has not taken yet
        self.sent_at = 0.0
        self.busy = False


def pingpong(args):
    family, sockaddr = parse_addr(args.addr)
    if args.conns < 1 or args.size < 1 or args.rate <= 0 or args.duration <= 0:
        die("--conns, --size, --rate and --duration must be positive")
    raise_fd_limit(args.conns)
    pattern = bytes(i % PERIOD for i in range(PERIOD + args.size))
    socks = open_connections(family, sockaddr, args.conns, args.connect_timeout)
    conns = [Conn(s, i) for i, s in enumerate(socks)]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)

    completed = 0
    mismatches = 0      # messages whose echo differed from what was sent
    errors = 0          # connections lost (EOF, reset, ...)
    skipped = 0         # sends dropped from the schedule (generator behind)
    latencies = []
    marks = []
    idle = collections.deque(conns)   # connections with no message in flight
    dead = set()

    def on_usr1(_signum, _frame):
        t = time.monotonic()
        marks.append((t, completed))
        print(f"mark {t:.6f} {completed}", flush=True)

    signal.signal(signal.SIGUSR1, on_usr1)
    print(f"started {len(conns)}", flush=True)

    total = int(args.rate * args.duration)  # bound on messages sent
    start = time.monotonic()
    end = start + args.duration
    hard_end = end + args.grace           # replies still in flight may land
    sent = 0                              # schedule slots used (sent or skipped)
    max_lag = max(1, int(args.rate * 0.05))  # never catch up more than 50 ms

    def lose(c, count=True):
        nonlocal errors
        if c.idx in dead:
            return
        dead.add(c.idx)
        errors += count
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def flush_out(c):
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            n = 0
        except OSError:
            lose(c)
            return
        c.out = c.out[n:]
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0), c)

    while True:
        now = time.monotonic()
        if now >= hard_end:
            break
        in_flight = len(conns) - len(idle) - len(dead)
        if (now >= end or sent >= total) and in_flight == 0:
            break
        # Messages due on the global schedule, sent on idle connections in
        # round-robin order.
        if now < end and sent < total:
            due = min(total, int((now - start) * args.rate) + 1)
            if due - sent > max_lag:
                skipped += due - sent - max_lag
                sent = due - max_lag
            while sent < due and idle:
                c = idle.pop()
                off = (7 * c.seq + 13 * c.idx) % PERIOD
                c.expect = pattern[off:off + args.size]
                c.got = 0
                c.out = c.expect
                c.busy = True
                c.sent_at = now
                sent += 1
                # Common case: the kernel takes it all, nothing to register.
                try:
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    lose(c)
                    continue
                if c.out:
                    sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            next_due = start + sent / args.rate
            timeout = max(0.0, next_due - now) if idle else end - now
            timeout = min(timeout, hard_end - now)
        else:
            timeout = hard_end - now
        for key, mask in sel.select(max(0.0, timeout)):
            c = key.data
            if c.idx in dead:
                continue
            if mask & selectors.EVENT_WRITE and c.out:
                flush_out(c)
                if c.idx in dead:
                    continue
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                lose(c)
                continue
            if not data:
                lose(c)
                continue
            if not c.busy or c.got + len(data) > len(c.expect):
                # Bytes nobody asked for: the stream is out of step.
                mismatches += 1
                lose(c, count=False)
                continue
            if data != c.expect[c.got:c.got + len(data)]:
                mismatches += 1
                lose(c, count=False)
                continue
            c.got += len(data)
            if c.got == len(c.expect):
                t = time.monotonic()
                latencies.append(t - c.sent_at)
                completed += 1
                c.seq += 1
                c.busy = False
                idle.appendleft(c)
    elapsed = time.monotonic() - start
    unanswered = len(conns) - len(idle) - len(dead)
    for c in conns:
        if c.idx not in dead:
            c.sock.close()
    sel.close()
    latencies.sort()

    def pct(p):
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6

    print(f"completed {completed}")
    print(f"mismatches {mismatches}")
    print(f"errors {errors}")
    print(f"unanswered {unanswered}")
    print(f"skipped {skipped}")
    print(f"elapsed {elapsed:.3f}")
    print(f"rate {completed / min(elapsed, args.duration):.1f}")
    print(f"latency_us p50 {pct(0.50):.0f} p99 {pct(0.99):.0f} max {pct(1.0):.0f}")
    sys.stdout.flush()
    return 0 if mismatches == 0 and errors == 0 and unanswered == 0 else 1


def idle_mode(args):
    family, sockaddr = parse_addr(args.addr)
    if args.conns < 1 or args.hold <= 0:
        die("--conns and --hold must be positive")
    raise_fd_limit(args.conns)
    stop = []

    def on_term(_signum, _frame):
        stop.append(True)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    socks = open_connections(family, sockaddr, args.conns, args.connect_timeout)
    print(f"connected {len(socks)}", flush=True)
    end = time.monotonic() + args.hold
    while not stop and time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    for s in socks:
        s.close()
    print("released", flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    pp = sub.add_parser("pingpong", help="paced ping-pong with verified echoes")
    pp.add_argument("--addr", required=True, help="server HOST:PORT (loopback only)")
    pp.add_argument("--conns", type=int, default=100)
    pp.add_argument("--size", type=int, default=64, help="message size in bytes")
    pp.add_argument("--rate", type=float, default=5000, help="round trips per second, all connections together")
    pp.add_argument("--duration", type=float, default=10, help="seconds of sending")
    pp.add_argument("--grace", type=float, default=2, help="seconds to wait for the last replies")
    pp.add_argument("--connect-timeout", type=float, default=30)
    pi = sub.add_parser("idle", help="hold idle connections open")
    pi.add_argument("--addr", required=True, help="server HOST:PORT (loopback only)")
    pi.add_argument("--conns", type=int, default=10000)
    pi.add_argument("--hold", type=float, default=60, help="seconds to hold (or until SIGTERM)")
    pi.add_argument("--connect-timeout", type=float, default=60)
    args = p.parse_args()
    if args.mode == "pingpong":
        return pingpong(args)
    return idle_mode(args)


if __name__ == "__main__":
    sys.exit(main())
