//! Fairness and small buffers: a flooding client does not starve light
//! ones, and buffers a few bytes long still carry every byte.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{DEADLINE, Plan, pattern, run_echo_clients, start, wait_until, write_pattern};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tcp_reactor::{Config, Echo};

/// What the flooding client saw.
#[derive(Debug, Default)]
struct FloodOutcome {
    sent: u64,
    received: u64,
    first_mismatch: Option<u64>,
    error: Option<io::ErrorKind>,
    /// It ran into [`DEADLINE`] before being told to stop.
    timed_out: bool,
}

/// A client on its own thread that writes as fast as the server lets it
/// and reads the echo, until told to stop.
struct Flood {
    stop: Arc<AtomicBool>,
    /// Echoed bytes received so far.
    received: Arc<AtomicU64>,
    thread: JoinHandle<FloodOutcome>,
}

const FLOOD_SEED: u64 = 0xF100D;

impl Flood {
    fn start(addr: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let received = Arc::clone(&received);
            thread::spawn(move || flood(addr, &stop, &received))
        };
        Flood {
            stop,
            received,
            thread,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn finish(self) -> FloodOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flood thread")
    }
}

fn flood(addr: SocketAddr, stop: &AtomicBool, shared_received: &AtomicU64) -> FloodOutcome {
    let std_stream = StdStream::connect(addr).expect("flood connect");
    std_stream.set_nonblocking(true).expect("non-blocking");
    let mut stream = TcpStream::from_std(std_stream);
    let mut poll = Poll::new().expect("flood poll");
    poll.registry()
        .register(
            &mut stream,
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .expect("register the flood client");
    let mut events = Events::with_capacity(8);
    let mut out = vec![0u8; 64 * 1024];
    let mut input = vec![0u8; 64 * 1024];
    let mut outcome = FloodOutcome::default();
    let deadline = Instant::now() + DEADLINE;
    while !stop.load(Ordering::Relaxed) && outcome.error.is_none() {
        if Instant::now() >= deadline {
            outcome.timed_out = true;
            break;
        }
        // Both directions until WouldBlock, then wait for an edge (briefly,
        // to see the stop flag).
        loop {
            for (i, b) in out.iter_mut().enumerate() {
                *b = pattern(FLOOD_SEED, outcome.sent + i as u64);
            }
            match stream.write(&out) {
                Ok(n) => outcome.sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    outcome.error = Some(e.kind());
                    break;
                }
            }
        }
        loop {
            match stream.read(&mut input) {
                Ok(0) => {
                    outcome.error = Some(io::ErrorKind::UnexpectedEof);
                    break;
                }
                Ok(n) => {
                    for (i, &b) in input[..n].iter().enumerate() {
                        let offset = outcome.received + i as u64;
                        if outcome.first_mismatch.is_none() && b != pattern(FLOOD_SEED, offset) {
                            outcome.first_mismatch = Some(offset);
                        }
                    }
                    outcome.received += n as u64;
                    shared_received.store(outcome.received, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    outcome.error = Some(e.kind());
                    break;
                }
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .expect("flood poll");
    }
    outcome
}

#[test]
fn light_clients_finish_while_one_client_floods() {
    const LIGHT: usize = 20;
    const MESSAGE: u64 = 64;
    const ROUNDS: u64 = 50;
    let config = Config::default().reads_per_turn(1).read_chunk(4096);
    let server = start(config, Echo);

    let flood = Flood::start(server.addr);
    // The flood is under way before the light clients start.
    wait_until("the flood to get 1 MiB of echo", || {
        flood.received() >= 1024 * 1024
    });
    let flood_before = flood.received();

    let started = Instant::now();
    let plans = vec![
        Plan {
            total: MESSAGE * ROUNDS,
            message: MESSAGE,
            half_close: false,
        };
        LIGHT
    ];
    let outcomes = run_echo_clients(server.addr, &plans);
    let light_time = started.elapsed();
    let flood_during = flood.received() - flood_before;
    let flood_running = !flood.thread.is_finished();

    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            outcome.is_exact(MESSAGE * ROUNDS),
            "light client {i}: {outcome:?}"
        );
    }
    assert!(
        flood_running,
        "the flood ended before the light clients finished"
    );
    assert!(
        flood_during > 0,
        "the flood made no progress while the light clients ran"
    );

    let outcome = flood.finish();
    assert!(!outcome.timed_out, "the flood ran into the deadline");
    assert_eq!(outcome.error, None, "flood: {outcome:?}");
    assert_eq!(outcome.first_mismatch, None, "flood: {outcome:?}");
    assert!(outcome.received <= outcome.sent, "flood: {outcome:?}");
    eprintln!(
        "{LIGHT} light clients x {ROUNDS} round trips: {light_time:?}; \
         the flood got {flood_during} bytes of echo meanwhile ({} in all)",
        outcome.received
    );
    let stats = server.stats();
    assert_eq!(stats.accepted, 1 + LIGHT as u64, "{stats:?}");
}

const TINY_HIGH_WATER: usize = 13;

/// Reads of at most 7 bytes, and at most 13 bytes queued per connection:
/// partial reads always, partial writes whenever the kernel is full.
fn tiny_buffers() -> Config {
    Config::default()
        .read_chunk(7)
        .write_high_water(TINY_HIGH_WATER)
        .write_low_water(5)
}

#[test]
fn tiny_buffers_everywhere_still_echo_every_byte() {
    const CLIENTS: usize = 10;
    const TOTAL: u64 = 1024 * 1024;
    let server = start(tiny_buffers(), Echo);
    let plans = vec![
        Plan {
            total: TOTAL,
            message: u64::MAX,
            half_close: true,
        };
        CLIENTS
    ];
    let outcomes = run_echo_clients(server.addr, &plans);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_exact(TOTAL), "client {i}: {outcome:?}");
        assert!(outcome.eof, "client {i}: no EOF after its echo");
    }
    let all = CLIENTS as u64 * TOTAL;
    let stats = server.wait_stats("every connection closed", |s| s.closed == CLIENTS as u64);
    assert_eq!(stats.bytes_in, all, "{stats:?}");
    assert_eq!(stats.bytes_out, all, "{stats:?}");
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    // Reads take only the room left under the high water mark.
    assert!(
        stats.peak_queued_output <= TINY_HIGH_WATER as u64,
        "{stats:?}"
    );
}

/// The most the kernel lets a socket's send buffer grow to
/// (`net.ipv4.tcp_wmem`, third field); 4 MiB, the usual value, if unknown.
fn kernel_send_buffer_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 * 1024 * 1024)
}

#[test]
fn tiny_buffers_with_a_stalled_reader_queue_then_drain_exactly() {
    // More than the server's send buffer and our receive buffer hold, so
    // while we do not read, the server's writes come up short, its output
    // queues and reading from us stops (backpressure).
    let total = kernel_send_buffer_max() + 2 * 1024 * 1024;
    let server = start(tiny_buffers(), Echo);
    let mut client = common::connect(server.addr);
    let writer = {
        let stream = client.try_clone().expect("clone the client socket");
        thread::spawn(move || {
            let sent = write_pattern(&stream, 77, total);
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            sent
        })
    };
    let stalled = server.wait_stats("backpressure while the client reads nothing", |s| {
        s.backpressure_pauses >= 1
    });
    assert!(stalled.bytes_in < total, "{stalled:?}");

    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let offset = received + i as u64;
                    assert_eq!(b, pattern(77, offset), "byte {offset} of the echo");
                }
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the echo after {received} bytes: {e}"),
        }
    }
    assert_eq!(writer.join().expect("writer thread"), total);
    assert_eq!(received, total, "echo then EOF");
    let stats = server.wait_stats("the connection closed", |s| s.closed == 1);
    assert_eq!(
        (stats.bytes_in, stats.bytes_out),
        (total, total),
        "{stats:?}"
    );
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    // The queue reached the high water mark and never passed it.
    assert_eq!(
        stats.peak_queued_output, TINY_HIGH_WATER as u64,
        "{stats:?}"
    );
}
