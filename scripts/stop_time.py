#!/usr/bin/env python3
"""How long `echo_reactor` takes to exit after SIGINT, and what it delivered.

    python3 scripts/stop_time.py [--bin PATH] [--runs N]

Two scenarios, each run N times (default 5), medians printed:

- idle: 10 clients connected that send nothing; SIGINT; time until the
  process exits, its exit code, and the stop report it logs.
- mid-stream: one client streams 64 KiB writes and reads the echo on a
  thread; SIGINT while bytes are in flight; the client keeps sending until
  it sees the server's FIN, then half-closes and reads to the end. Time to
  exit, and whether every byte the server echoed before its FIN was a
  prefix of what was sent (nothing lost, nothing corrupted).

Loopback only; every wait is bounded (10 s per run).
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(ROOT, "target", "release", "examples", "echo_reactor")
LIMIT = 10.0  # seconds any one run may take


def start_server(binary):
    proc = subprocess.Popen(
        [binary, "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"listening on (\S+):(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"unexpected first line: {line!r}")
    return proc, (m.group(1), int(m.group(2)))


def wait_exit(proc, started):
    try:
        proc.wait(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return LIMIT, "killed", ""
    elapsed = time.monotonic() - started
    err = proc.stderr.read()
    report = re.search(r"drain: ([^(]*)", err)
    return elapsed, proc.returncode, report.group(1).strip() if report else err.strip()


def idle_run(binary):
    proc, addr = start_server(binary)
    clients = [socket.create_connection(addr, timeout=LIMIT) for _ in range(10)]
    # One echo proves all ten are accepted before the signal.
    for c in clients:
        c.sendall(b"x")
        c.recv(1)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    result = wait_exit(proc, started)
    for c in clients:
        c.close()
    return result


PERIOD = bytes(i * 7 % 251 for i in range(251))


def pattern(n, start=0):
    """Bytes `start..start + n` of the stream every client sends."""
    reps = n // 251 + 2
    return (PERIOD * reps)[start % 251 : start % 251 + n]


def stream_run(binary):
    proc, addr = start_server(binary)
    client = socket.create_connection(addr, timeout=LIMIT)
    received = bytearray()
    sent = [0]
    stop_sending = threading.Event()

    def reader():
        while True:
            try:
                chunk = client.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received.extend(chunk)
        stop_sending.set()

    def writer():
        block = pattern(65536 * 2)
        while not stop_sending.is_set():
            offset = sent[0] % 251
            try:
                client.sendall(block[offset : offset + 65536])
            except OSError:
                break
            sent[0] += 65536
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    r = threading.Thread(target=reader)
    w = threading.Thread(target=writer)
    r.start()
    w.start()
    # Signal once a few MiB have gone back and forth: mid-stream.
    deadline = time.monotonic() + LIMIT
    while len(received) < 4 << 20 and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    result = wait_exit(proc, started)
    r.join(LIMIT)
    stop_sending.set()
    w.join(LIMIT)
    client.close()
    intact = bytes(received) == pattern(len(received))
    return result + (len(received), sent[0], intact)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=DEFAULT_BIN)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    idle = [idle_run(args.bin) for _ in range(args.runs)]
    times = [r[0] for r in idle]
    print(f"idle x10: exit after {statistics.median(times) * 1000:.1f} ms median "
          f"({min(times) * 1000:.1f}-{max(times) * 1000:.1f}); "
          f"codes {sorted(set(str(r[1]) for r in idle))}; report: {idle[-1][2]}")

    stream = [stream_run(args.bin) for _ in range(args.runs)]
    times = [r[0] for r in stream]
    print(f"mid-stream: exit after {statistics.median(times) * 1000:.1f} ms median "
          f"({min(times) * 1000:.1f}-{max(times) * 1000:.1f}); "
          f"codes {sorted(set(str(r[1]) for r in stream))}; report: {stream[-1][2]}")
    for elapsed, code, report, got, sent, intact in stream:
        print(f"  {elapsed * 1000:7.1f} ms  echoed {got} of {sent} sent, "
              f"prefix intact: {intact}; {report}")


if __name__ == "__main__":
    main()
