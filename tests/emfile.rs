//! Descriptor exhaustion (`EMFILE` from `accept`): the reactor pauses
//! accepting for `accept_backoff` rather than spinning, keeps serving, and
//! resumes by itself once descriptors are free again.
//!
//! This binary holds one test only: it lowers the process-wide open-file
//! limit, which would break any test running beside it.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{DEADLINE, Plan, run_echo_clients, start};
use rlimit::Resource;
use tcp_reactor::{Config, Echo};

/// `EMFILE`: the process has no descriptor left.
const EMFILE: i32 = 24;

/// Descriptors free under the lowered limit when the test starts filling
/// them: room for about 20 connections, each costing one descriptor on
/// either side.
const HEADROOM: u64 = 48;

/// Puts the original open-file limit back, also when the test fails.
struct RestoreLimit {
    soft: u64,
    hard: u64,
}

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        if let Err(e) = rlimit::setrlimit(Resource::NOFILE, self.soft, self.hard) {
            if !std::thread::panicking() {
                panic!("restore RLIMIT_NOFILE: {e}");
            }
        }
    }
}

fn descriptors_in_use() -> u64 {
    let entries = std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd");
    entries.count() as u64
}

fn client(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    Ok(stream)
}

#[test]
fn out_of_descriptors_accepting_pauses_without_spinning_and_resumes_by_itself() {
    let backoff = Duration::from_millis(50);
    // `max_connections` far above what the descriptors allow: only EMFILE
    // stops accepting.
    let config = Config::default()
        .max_connections(100_000)
        .accept_backoff(backoff);
    // In `Reactor::run`: the loop turns only when the reactor itself asks
    // to (events, the end of an accept pause), so counting turns measures
    // the reactor alone. Stopped through its handle, which needs no
    // descriptor.
    let server = start(config, Echo);

    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit(NOFILE)");
    let restore = RestoreLimit { soft, hard };
    let limit = descriptors_in_use() + HEADROOM;
    assert!(
        limit <= soft,
        "the soft limit {soft} is already below {limit}"
    );
    rlimit::setrlimit(Resource::NOFILE, limit, hard).expect("lower RLIMIT_NOFILE");

    // Descriptors held back, to be freed one at a time later.
    let mut spares: Vec<File> = (0..4)
        .map(|_| File::open("/dev/null").expect("open a spare descriptor"))
        .collect();

    // Clients and server share the limit: connect one client at a time
    // until the server cannot accept one. Each accepted connection costs two
    // descriptors; should the client side run out first, a spare makes room
    // for one more client. Linux reserves the new descriptor before it looks
    // at the backlog, so an accept that takes the last descriptor is followed
    // by EMFILE even with nothing waiting: an error alone does not mean a
    // client was left behind, only a client not accepted does.
    let mut clients: Vec<TcpStream> = Vec::new();
    loop {
        assert!(
            clients.len() < HEADROOM as usize,
            "{} clients and the server never hit EMFILE",
            clients.len()
        );
        let errors_before = server.stats().accept_errors;
        match client(server.addr) {
            Ok(stream) => {
                clients.push(stream);
                let n = clients.len() as u64;
                let stats = server.wait_stats("the accept or a failed retry", |s| {
                    s.accepted == n || s.accept_errors > errors_before
                });
                if stats.accepted < n {
                    assert_eq!(stats.accepted, n - 1, "{stats:?}");
                    break;
                }
            }
            Err(e) if e.raw_os_error() == Some(EMFILE) => {
                assert!(
                    spares.pop().is_some(),
                    "the client side keeps running out of descriptors first"
                );
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    // The last client waits in the kernel backlog; its request waits with it.
    let mut parked = clients
        .pop()
        .expect("the client the server could not accept");
    parked
        .write_all(b"waited in the backlog")
        .expect("write while in the backlog");
    assert!(
        clients.len() >= 12,
        "only {} connections fit",
        clients.len()
    );

    // No busy loop: while out of descriptors, accept is retried once per
    // backoff. Observe ten retries: they cannot come faster than that, and
    // the loop turns meanwhile only when a backoff ends, to retry (a
    // spinning loop turns thousands of times per retry; one that waits for
    // an event instead never retries at all). Both bounds hold however
    // slowly this thread or the reactor's runs: a late look only sees more
    // retries, each after its own backoff, and each in its own turn.
    let start_stats = server.stats();
    let started = Instant::now();
    let retries = 10;
    let end_stats = server.wait_stats("ten accept retries", |s| {
        s.accept_errors >= start_stats.accept_errors + retries
    });
    let elapsed = started.elapsed();
    let errors = end_stats.accept_errors - start_stats.accept_errors;
    let turns = end_stats.turns - start_stats.turns;
    eprintln!(
        "{} connections fit; {errors} accept errors and {turns} turns in {elapsed:?}",
        clients.len()
    );
    // The first error counted may have come just before `started` (the
    // snapshot taken then is published before the turn that made it).
    let min_elapsed = backoff * (errors as u32 - 2);
    assert!(
        elapsed >= min_elapsed,
        "{errors} accept errors in {elapsed:?}: retries come faster than the {backoff:?} backoff"
    );
    // One turn per retry; twice that allows for a wake-up a little before
    // the backoff's end (the poll timeout is in whole milliseconds), which
    // finds accepting still paused and waits for the rest.
    let max_turns = 2 * errors + 2;
    assert!(
        turns <= max_turns,
        "{turns} turns for {errors} accept retries (at most {max_turns} expected): the loop spins"
    );
    assert_eq!(
        end_stats.accepted, start_stats.accepted,
        "nothing can be accepted without descriptors"
    );

    // One descriptor comes free, no connection closes: the next retry
    // (the backoff timer alone) accepts the parked client, which gets its
    // echo.
    drop(spares.pop().expect("a spare descriptor is left"));
    let mut echo = [0; 21];
    parked
        .read_exact(&mut echo)
        .expect("the parked client's echo");
    assert_eq!(&echo, b"waited in the backlog");
    let stats = server.wait_stats("the parked client's accept", |s| {
        s.accepted > start_stats.accepted
    });
    assert_eq!(stats.accepted, start_stats.accepted + 1, "{stats:?}");
    assert_eq!(stats.closed, 0, "{stats:?}");

    // Connections close and free descriptors: new clients are served, each
    // getting its whole echo and then EOF after its half-close.
    let closing = 10;
    drop(clients.drain(..closing));
    let plans = vec![
        Plan {
            total: 64 * 1024,
            message: u64::MAX,
            half_close: true,
        };
        4
    ];
    let outcomes = run_echo_clients(server.addr, &plans);
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            outcome.is_exact(64 * 1024) && outcome.eof,
            "new client {i}: {outcome:?}"
        );
    }
    let stats = server.wait_stats("the closed clients' connections freed", |s| {
        s.closed >= closing as u64 + 4
    });
    assert_eq!(stats.accepted, start_stats.accepted + 1 + 4, "{stats:?}");

    // The connections held all along still work.
    for (i, stream) in clients.iter_mut().enumerate() {
        stream.write_all(b"still here").expect("write");
        let mut back = [0; 10];
        stream
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("held client {i}: {e}"));
        assert_eq!(&back, b"still here");
    }

    drop(clients);
    drop(parked);
    drop(restore);
    let (now_soft, now_hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit(NOFILE)");
    assert_eq!((now_soft, now_hard), (soft, hard), "limit restored");
    let reactor = server.stop();
    assert!(reactor.is_stopped());
}
