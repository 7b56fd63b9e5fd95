//! Fairness and small buffers: a flooding client does not starve light
//! ones, and buffers a few bytes long still carry every byte.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;

use common::{
    Plan, any_local_address, connect, drive_until, pattern, pattern_bytes, run_echo_clients, start,
    write_pattern,
};
use tcp_reactor::{Addr, Config, ConnId, Context, Echo, Handler, ListenerId, Reactor};

/// The fairness test's read budget: at most this many reads of
/// [`READ_CHUNK`] bytes from one connection per turn.
const READS_PER_TURN: usize = 1;
const READ_CHUNK: usize = 4096;
/// The most one connection may be given in one turn.
const BUDGET: u64 = (READS_PER_TURN * READ_CHUNK) as u64;

/// What [`SinkOrEcho`] delivered, turn by turn, as the reactor counts
/// turns (`Stats::turns` inside the callback).
#[derive(Debug, Default)]
struct Deliveries {
    /// The first connection accepted: the flood.
    flood: Option<ConnId>,
    /// Bytes delivered to the flood's `on_data`, by turn.
    flood_by_turn: BTreeMap<u64, u64>,
    /// Bytes delivered to the light connections' `on_data`, all together,
    /// by turn.
    light_by_turn: BTreeMap<u64, u64>,
    /// Bytes delivered to each light connection in all.
    light_total: HashMap<ConnId, u64>,
    /// Each connection's id, by its peer's address.
    ids: HashMap<SocketAddr, ConnId>,
}

/// A sink for the first connection (the flood: consumed and counted, no
/// echo, so nothing the flood's client does not read piles up) and an echo
/// for every other; records what each got in which turn.
#[derive(Debug, Default)]
struct SinkOrEcho {
    log: Deliveries,
}

impl Handler for SinkOrEcho {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) {
        self.log.flood.get_or_insert(id);
        self.log.ids.insert(peer.as_tcp().expect("a TCP peer"), id);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let turn = cx.stats().turns;
        let n = data.len() as u64;
        if self.log.flood == Some(id) {
            *self.log.flood_by_turn.entry(turn).or_default() += n;
        } else {
            *self.log.light_by_turn.entry(turn).or_default() += n;
            *self.log.light_total.entry(id).or_default() += n;
            cx.send(id, data).expect("echo a light message");
        }
        data.len()
    }
}

/// Writes `chunk` over and over to the non-blocking `stream` until the
/// kernel takes no more; returns the bytes written.
fn top_up(stream: &mut TcpStream, chunk: &[u8]) -> u64 {
    let mut written = 0;
    loop {
        match stream.write(chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return written,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("flood write after {written} bytes: {e}"),
        }
    }
}

/// Light client `client`'s message in round `round`: its own bytes.
fn light_message(client: usize, round: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| pattern(client as u64 + 1, (round * len + k) as u64))
        .collect()
}

/// Fairness, counted by the reactor rather than timed: the test drives the
/// loop with `run_once` (what one turn does is the question) and the
/// handler records the bytes each connection got in each turn.
///
/// One client floods: before every round it fills its socket until the
/// kernel takes no more, so the reactor always has far more of its bytes
/// than one turn's budget. In each round twenty light clients send one
/// 64-byte message each, and the loop turns until every one has been
/// delivered and echoed. Fair means: every light client gets its exact
/// echo; the flood never gets more than its budget
/// (`reads_per_turn x read_chunk`) in a turn; and light messages are served
/// in turns in which the flood also got its whole budget, that is while its
/// bytes were still waiting, not only once it had been drained.
///
/// An unfair reactor fails it: one that reads a connection until
/// `WouldBlock`, or serves a carried-over connection twice in a turn, gives
/// the flood more than its budget in a turn (running this test with
/// `reads_per_turn(1000)` in the config, and the budget assertion
/// unchanged, fails it that way); one that serves carried-over connections
/// before new events and keeps at them while they have bytes serves the
/// light clients only once the flood is drained (no shared turn), or never
/// (the round's deadline).
#[test]
fn light_clients_finish_while_one_client_floods() {
    const LIGHT: usize = 20;
    const MESSAGE: usize = 64;
    const ROUNDS: usize = 50;
    let config = Config::default()
        .reads_per_turn(READS_PER_TURN)
        .read_chunk(READ_CHUNK);
    let mut reactor =
        Reactor::bind(any_local_address(), config, SinkOrEcho::default()).expect("bind on port 0");
    let addr = reactor.local_addr().expect("a TCP listener");

    // The flood connects first: the handler takes the first connection for
    // the flood.
    let mut flood = connect(addr);
    flood.set_nonblocking(true).expect("non-blocking flood");
    drive_until(&mut reactor, "the flood's connection", |r| {
        r.stats().accepted == 1
    });
    // Light clients are blocking (with the read and write timeouts of
    // `connect`): a 64-byte write to an empty socket never waits, and each
    // echo is read only once the reactor has handed all of it to the kernel.
    let mut lights: Vec<TcpStream> = (0..LIGHT).map(|_| connect(addr)).collect();
    drive_until(&mut reactor, "the light clients' connections", |r| {
        r.stats().accepted == 1 + LIGHT as u64
    });
    let ids: Vec<ConnId> = lights
        .iter()
        .map(|light| {
            let local = light.local_addr().expect("light client address");
            reactor.handler().log.ids[&local]
        })
        .collect();

    let chunk = pattern_bytes(0xF100D, 64 * 1024);
    let mut flood_sent = 0;
    for round in 0..ROUNDS {
        flood_sent += top_up(&mut flood, &chunk);
        for (i, light) in lights.iter_mut().enumerate() {
            light
                .write_all(&light_message(i, round, MESSAGE))
                .expect("a light client's message");
        }
        let want = ((round + 1) * MESSAGE) as u64;
        drive_until(
            &mut reactor,
            "every light message of the round delivered and echoed",
            |r| {
                let log = &r.handler().log;
                r.stats().queued_output == 0
                    && ids
                        .iter()
                        .all(|id| log.light_total.get(id).copied().unwrap_or(0) == want)
            },
        );
        for (i, light) in lights.iter_mut().enumerate() {
            let mut back = [0u8; MESSAGE];
            light
                .read_exact(&mut back)
                .unwrap_or_else(|e| panic!("light client {i}, round {round}: echo: {e}"));
            assert!(
                back[..] == light_message(i, round, MESSAGE)[..],
                "light client {i}, round {round}: the echo differs from the message"
            );
        }
    }

    let log = &reactor.handler().log;
    let over_budget: Vec<(u64, u64)> = log
        .flood_by_turn
        .iter()
        .filter(|&(_, &n)| n > BUDGET)
        .map(|(&turn, &n)| (turn, n))
        .collect();
    assert!(
        over_budget.is_empty(),
        "the flood got more than its budget of {BUDGET} bytes (reads_per_turn \
         {READS_PER_TURN} x read_chunk {READ_CHUNK}) in these turns (turn, bytes): {over_budget:?}"
    );
    let light_turns = log.light_by_turn.len();
    let shared_turns = log
        .light_by_turn
        .keys()
        .filter(|turn| log.flood_by_turn.get(turn) == Some(&BUDGET))
        .count();
    let flood_got: u64 = log.flood_by_turn.values().sum();
    eprintln!(
        "{LIGHT} light clients x {ROUNDS} rounds served in {light_turns} turns, {shared_turns} \
         of them with the flood's whole budget; the flood got {flood_got} of the {flood_sent} \
         bytes it sent in {} turns",
        log.flood_by_turn.len()
    );
    assert!(
        shared_turns >= 1,
        "light messages were served only in turns in which the flood's bytes had run out \
         ({light_turns} turns served them): the flood was served first"
    );
    assert!(flood_got <= flood_sent);
    assert_eq!(reactor.stats().accepted, 1 + LIGHT as u64);
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
