//! `max_connections`: at the limit the reactor stops accepting; newcomers
//! wait in the kernel backlog and are served as earlier connections close.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{Plan, Server, connect, read_to_eof, run_echo_clients, start, wait_until};
use tcp_reactor::{Config, Echo, Stats};

const LIMIT: usize = 10;

/// Loop turns the reactor runs after the last change before we take "no
/// more accepted" for an answer: at the limit, a reactor that would accept
/// does so in the first turn after the listener's event.
const TURNS_TO_SETTLE: u64 = 5;

/// Fails the test if the reactor holds more than [`LIMIT`] connections.
#[track_caller]
fn within_limit(stats: &Stats) {
    assert!(
        stats.active <= LIMIT as u64,
        "more than {LIMIT} connections held: {stats:?}"
    );
    assert_eq!(
        stats.accepted - stats.closed,
        stats.active,
        "accepted, closed and active disagree: {stats:?}"
    );
}

/// Waits for `condition`, checking the limit in every snapshot seen.
#[track_caller]
fn wait_within_limit(
    server: &Server<Echo>,
    what: &str,
    mut condition: impl FnMut(&Stats) -> bool,
) -> Stats {
    server.wait_stats(what, |s| {
        within_limit(s);
        condition(s)
    })
}

/// Makes the reactor run [`TURNS_TO_SETTLE`] more turns (waking it: at the
/// limit, with every held client quiet, it has nothing to do) and returns
/// its counters then, checking the limit.
#[track_caller]
fn settle(server: &Server<Echo>) -> Stats {
    let stats = server.run_turns(TURNS_TO_SETTLE);
    within_limit(&stats);
    stats
}

/// Whether an echo (or anything) has arrived on `stream`, without waiting.
fn has_reply(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking peek");
    let mut byte = [0u8; 1];
    let arrived = match stream.peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    };
    stream.set_nonblocking(false).expect("blocking again");
    arrived
}

fn message(i: usize) -> Vec<u8> {
    format!("client {i} says hello").into_bytes()
}

/// Reads client `i`'s echo and checks it.
fn expect_echo(stream: &mut TcpStream, i: usize) {
    let want = message(i);
    let mut back = vec![0; want.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("client {i}: echo: {e}"));
    assert_eq!(back, want, "client {i}: wrong echo");
}

/// Closes gracefully and waits for the server's FIN, so the server has
/// closed its side (and freed the slot) when this returns.
fn close(mut stream: TcpStream, i: usize) {
    stream
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|e| panic!("client {i}: shutdown: {e}"));
    let rest = read_to_eof(&mut stream).unwrap_or_else(|e| panic!("client {i}: EOF: {e}"));
    assert!(rest.is_empty(), "client {i}: unexpected bytes {rest:?}");
}

#[test]
fn twenty_five_clients_ten_held_the_rest_wait_in_the_backlog_until_one_closes() {
    const CLIENTS: usize = 25;
    let server = start(Config::default().max_connections(LIMIT), Echo);

    // The first ten are accepted and served.
    let mut held: Vec<(usize, TcpStream)> = (0..LIMIT)
        .map(|i| {
            let mut stream = connect(server.addr);
            stream.write_all(&message(i)).expect("write");
            expect_echo(&mut stream, i);
            (i, stream)
        })
        .collect();
    wait_within_limit(&server, "ten accepted", |s| s.accepted == LIMIT as u64);

    // Fifteen more: the kernel completes their handshakes (connect returns)
    // and queues them; the reactor does not accept them.
    let mut waiting: Vec<(usize, TcpStream)> = (LIMIT..CLIENTS)
        .map(|i| {
            let mut stream = connect(server.addr);
            stream.write_all(&message(i)).expect("write");
            (i, stream)
        })
        .collect();
    let stats = settle(&server);
    assert_eq!(stats.accepted, LIMIT as u64, "{stats:?}");
    assert_eq!(stats.active, LIMIT as u64, "{stats:?}");
    assert_eq!(stats.closed, 0, "{stats:?}");
    for (i, stream) in &waiting {
        assert!(!has_reply(stream), "client {i} was served beyond the limit");
    }

    // Each close lets exactly one waiting client in, which gets its echo.
    let mut closed = 0;
    while !waiting.is_empty() {
        let (i, stream) = held.remove(0);
        close(stream, i);
        closed += 1;
        wait_until("a waiting client to get its echo", || {
            within_limit(&server.stats());
            waiting.iter().any(|(_, s)| has_reply(s))
        });
        let stats = settle(&server);
        assert_eq!(stats.closed, closed, "{stats:?}");
        assert_eq!(
            stats.accepted,
            LIMIT as u64 + closed,
            "one close must let in exactly one: {stats:?}"
        );
        let served: Vec<usize> = (0..waiting.len())
            .filter(|&k| has_reply(&waiting[k].1))
            .collect();
        assert_eq!(
            served.len(),
            1,
            "after {closed} closes, {} waiting clients were served",
            served.len()
        );
        let (j, mut stream) = waiting.remove(served[0]);
        expect_echo(&mut stream, j);
        held.push((j, stream));
    }

    // Every waiting client was served; the first ten are gone; all leave.
    let served: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
    assert_eq!(served.len(), LIMIT);
    assert!(served.iter().all(|&i| i >= LIMIT), "{served:?}");
    for (i, stream) in held {
        close(stream, i);
    }
    let stats = wait_within_limit(&server, "every connection closed", |s| s.active == 0);
    assert_eq!(stats.accepted, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.closed, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.resets, 0, "{stats:?}");
}

#[test]
fn sixty_clients_at_once_through_ten_slots_all_get_their_echo() {
    const CLIENTS: usize = 60;
    let server = start(Config::default().max_connections(LIMIT), Echo);
    let plans = vec![
        Plan {
            total: 20 * 1000,
            message: 1000,
            half_close: true,
        };
        CLIENTS
    ];
    let addr = server.addr;
    let clients = std::thread::spawn(move || run_echo_clients(addr, &plans));
    // Every snapshot while the clients run respects the limit.
    wait_until("the clients to finish", || {
        within_limit(&server.stats());
        clients.is_finished()
    });
    let outcomes = clients.join().expect("client thread");
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_exact(20 * 1000), "client {i}: {outcome:?}");
        assert!(outcome.eof, "client {i}: no EOF");
    }
    let stats = wait_within_limit(&server, "every connection closed", |s| s.active == 0);
    assert_eq!(stats.accepted, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.closed, CLIENTS as u64, "{stats:?}");
}
