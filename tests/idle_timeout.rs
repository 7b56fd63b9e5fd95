//! The reactor's own deadlines on connections, seen from the peer and the
//! handler: `idle_timeout` closes a connection on which nothing moved for
//! that long (never earlier; with a reset when output is still queued) and
//! leaves active ones alone, whichever side is talking; `close_timeout`
//! cuts a graceful close the peer does not complete (it never sends its
//! FIN, or never reads what is queued); both end as `TimedOut` and count in
//! `Stats::timed_out`. And an idle timeout of zero is refused.
//!
//! Timing rules: "no earlier than" is measured from an `Instant` the test
//! read before the activity it measures from (before `connect`, before the
//! last `write`): the reactor sees that activity later, so its deadline can
//! only be later. "Within" bounds are only sanity checks, wide (timeout +
//! 5 s): the reactor runs in `Reactor::run`, so a deadline it forgot to wake
//! up for shows as a wait that never ends. Speed is never asserted. A
//! connection kept active moves a byte fifty times per idle timeout, so
//! only a stall of most of a timeout could make it look idle. The only
//! sleeps pace a client or observe that something does *not* happen within
//! a bounded window.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, Instant};

use common::{Reports, any_local_address, connect, start, wait_until};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Echo, Error, Handler, ListenerId, Reactor, TimerId,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How far past its deadline a timeout may come before the test calls it
/// lost: a sanity check only, wide, for a loaded CI machine.
const SLACK: Duration = Duration::from_secs(5);

/// The idle timeout of the tests that keep a connection active: long
/// beside the [`PACE`] at which it talks, so that the test does not depend
/// on how promptly a loaded machine runs the client.
const ACTIVE_IDLE: Duration = Duration::from_secs(1);

/// How often a client kept active talks: fifty times per [`ACTIVE_IDLE`].
const PACE: Duration = Duration::from_millis(20);

/// How long a client is kept active: several idle timeouts.
const ACTIVE_FOR: Duration = Duration::from_secs(3);
const _: () = assert!(ACTIVE_FOR.as_millis() >= 3 * ACTIVE_IDLE.as_millis());

/// Output the kernel cannot take at once from a peer that never reads, so
/// that some stays queued in the reactor.
const FLOOD: usize = 8 << 20;

/// What the handler saw, reported to the test thread.
#[derive(Debug)]
enum Seen {
    /// `pending` is the output left queued after `on_open` sent its flood.
    Open { id: ConnId, pending: usize },
    /// The handler called `close`; `at` was read just before.
    Closing { id: ConnId, at: Instant },
    Close {
        id: ConnId,
        reason: CloseReason,
        at: Instant,
    },
}

/// Echoes, except `close`, which closes the connection gracefully, and
/// dots, which it drops without an answer. Can
/// flood each new connection, close it at once, or send it a byte every
/// `tick` for a while.
struct Watch {
    seen: Sender<Seen>,
    /// Bytes sent to each connection as it opens.
    flood: usize,
    /// Close each connection right after opening it (and flooding it).
    close_on_open: bool,
    /// Send each connection one byte every `.0`, `.1` times.
    ticks: Option<(Duration, u32)>,
    /// The connection and the ticks left, by interval.
    ticking: HashMap<TimerId, (ConnId, u32)>,
}

impl Watch {
    fn new(seen: Sender<Seen>) -> Watch {
        Watch {
            seen,
            flood: 0,
            close_on_open: false,
            ticks: None,
            ticking: HashMap::new(),
        }
    }

    fn close(&mut self, cx: &mut Context<'_, <Watch as Handler>::Conn>, id: ConnId) {
        let at = Instant::now();
        cx.close(id);
        let _ = self.seen.send(Seen::Closing { id, at });
    }
}

impl Handler for Watch {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
        if self.flood > 0 {
            cx.send(id, &vec![0x5a; self.flood]).expect("flood");
        }
        let pending = cx.pending_output(id);
        let _ = self.seen.send(Seen::Open { id, pending });
        if self.close_on_open {
            self.close(cx, id);
        }
        if let Some((every, count)) = self.ticks {
            let timer = cx.set_interval(every, id.as_u64());
            self.ticking.insert(timer, (id, count));
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        // Dots are read and dropped, unanswered.
        let rest: Vec<u8> = data.iter().copied().filter(|&b| b != b'.').collect();
        if rest == b"close" {
            self.close(cx, id);
        } else if !rest.is_empty() {
            let _ = cx.send(id, &rest);
        }
        data.len()
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self::Conn>, timer: TimerId, _key: u64) {
        let Some((id, left)) = self.ticking.get_mut(&timer) else {
            return;
        };
        let _ = cx.send(*id, b"t");
        *left -= 1;
        if *left == 0 {
            cx.cancel_timer(timer);
            self.ticking.remove(&timer);
        }
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        let at = Instant::now();
        let _ = self.seen.send(Seen::Close { id, reason, at });
    }
}

#[track_caller]
fn opened(reports: &mut Reports<Seen>) -> (ConnId, usize) {
    reports.wait_for("on_open", |seen| match seen {
        Seen::Open { id, pending } => Ok((id, pending)),
        other => Err(other),
    })
}

#[track_caller]
fn closing(reports: &mut Reports<Seen>, id: ConnId) -> Instant {
    reports.wait_for("the handler's close", |seen| match seen {
        Seen::Closing { id: closed, at } if closed == id => Ok(at),
        other => Err(other),
    })
}

#[track_caller]
fn closed(reports: &mut Reports<Seen>, id: ConnId) -> (CloseReason, Instant) {
    reports.wait_for("on_close", |seen| match seen {
        Seen::Close {
            id: closed,
            reason,
            at,
        } if closed == id => Ok((reason, at)),
        other => Err(other),
    })
}

/// Reads until EOF or an error (bounded by the client's read timeout);
/// returns the bytes read and how it ended.
fn read_until_end(stream: &mut TcpStream) -> (u64, io::Result<()>) {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Err(e)),
        }
    }
}

#[track_caller]
fn assert_reset(end: &io::Result<()>, what: &str) {
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected a reset (ECONNRESET), got {other:?}"),
    }
}

/// What the active client of the first test saw.
struct ActiveClient {
    started: Instant,
    rounds: u32,
    /// The longest time from one echo's arrival to the next write: how
    /// quiet the client was at most while active (well below the timeout
    /// unless the machine stalled it).
    longest_gap: Duration,
    /// Read just before its last write.
    last_write: Instant,
    /// When the echo of its last write had come back.
    last_echo: Instant,
    /// How the connection ended, and when the client saw it.
    end: io::Result<usize>,
    ended: Instant,
}

/// Sends a small message and reads its echo every [`PACE`] for
/// [`ACTIVE_FOR`], then goes quiet until the connection ends.
fn active_client(addr: SocketAddr) -> ActiveClient {
    let mut client = connect(addr);
    let started = Instant::now();
    let mut rounds = 0;
    let mut longest_gap = Duration::ZERO;
    let mut previous_echo = started;
    loop {
        let last_write = Instant::now();
        longest_gap = longest_gap.max(last_write - previous_echo);
        client.write_all(b"ping").expect("write while active");
        let mut echo = [0; 4];
        client.read_exact(&mut echo).unwrap_or_else(|e| {
            panic!(
                "echo while active: the connection must still be open \
                 (after {rounds} rounds; quiet for {longest_gap:?} at most): {e}"
            )
        });
        assert_eq!(&echo, b"ping");
        let last_echo = Instant::now();
        previous_echo = last_echo;
        rounds += 1;
        if last_echo - started >= ACTIVE_FOR {
            let end = client.read(&mut [0; 1]);
            return ActiveClient {
                started,
                rounds,
                longest_gap,
                last_write,
                last_echo,
                end,
                ended: Instant::now(),
            };
        }
        // Pacing: this is how often the client talks.
        thread::sleep(PACE);
    }
}

#[test]
fn an_idle_connection_is_closed_no_earlier_than_the_timeout_and_an_active_one_stays_open() {
    const IDLE: Duration = ACTIVE_IDLE;
    let (seen, mut reports) = Reports::new();
    let server = start(Config::default().idle_timeout(Some(IDLE)), Watch::new(seen));

    // The quiet client never sends a byte: its only activity is the
    // connect. It connects alone, so the turn that accepts it began after
    // `quiet_before`.
    let quiet_before = Instant::now();
    let mut quiet = connect(server.addr);
    let (quiet_id, _) = opened(&mut reports);

    // The active client talks every PACE for several idle periods, then
    // goes quiet.
    let addr = server.addr;
    let active = thread::spawn(move || active_client(addr));

    let quiet_end = quiet.read(&mut [0; 1]);
    let quiet_ended = Instant::now();
    assert!(
        matches!(quiet_end, Ok(0)),
        "quiet client: expected EOF (nothing was queued), got {quiet_end:?}"
    );
    let quiet_idle = quiet_ended - quiet_before;
    assert!(
        quiet_idle >= IDLE,
        "quiet client closed {quiet_idle:?} after connecting, before {IDLE:?}"
    );
    assert!(
        quiet_idle <= IDLE + SLACK,
        "quiet client closed only after {quiet_idle:?}"
    );
    let (reason, _) = closed(&mut reports, quiet_id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");

    let client = active.join().expect("active client");
    let (active_id, _) = opened(&mut reports);
    // Open across several idle periods while it talked...
    assert!(client.last_echo - client.started >= ACTIVE_FOR);
    assert!(
        client.rounds >= 2,
        "{} rounds, quiet for {:?} at most",
        client.rounds,
        client.longest_gap
    );
    // ...then closed, no earlier than IDLE after its last activity.
    assert!(
        matches!(client.end, Ok(0)),
        "active client: expected EOF, got {:?}",
        client.end
    );
    let idle = client.ended - client.last_write;
    assert!(
        idle >= IDLE,
        "active client closed {idle:?} after its last write, before {IDLE:?}"
    );
    let idle = client.ended - client.last_echo;
    assert!(
        idle <= IDLE + SLACK,
        "active client closed only after {idle:?}"
    );
    let (reason, _) = closed(&mut reports, active_id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");

    let stats = server.wait_stats("both closes counted", |s| s.closed == 2);
    assert_eq!(stats.timed_out, 2);
}

#[test]
fn writes_alone_keep_a_connection_active() {
    const IDLE: Duration = ACTIVE_IDLE;
    const TICKS: u32 = (ACTIVE_FOR.as_millis() / PACE.as_millis()) as u32;
    let (seen, mut reports) = Reports::new();
    let mut handler = Watch::new(seen);
    // The server sends a byte every PACE for several idle periods; the
    // client never sends, only reads. The ticks are timers on the reactor's
    // own clock, so only a stall of the reactor thread itself, of most of
    // a timeout, could leave the connection idle that long.
    handler.ticks = Some((PACE, TICKS));
    let server = start(Config::default().idle_timeout(Some(IDLE)), handler);
    let mut client = connect(server.addr);
    let (id, _) = opened(&mut reports);

    let mut ticks = [0; TICKS as usize];
    client
        .read_exact(&mut ticks)
        .expect("every tick: the connection must stay open while the server writes");
    assert_eq!(ticks, [b't'; TICKS as usize]);
    let last_tick = Instant::now();
    // Then nothing moves, and it times out.
    let (received, end) = read_until_end(&mut client);
    let waited = last_tick.elapsed();
    assert_eq!(received, 0);
    assert!(end.is_ok(), "expected EOF, got {end:?}");
    assert!(waited <= IDLE + SLACK, "closed only after {waited:?}");
    let (reason, _) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");
    assert_eq!(
        server.wait_stats("the close", |s| s.closed == 1).timed_out,
        1
    );
}

#[test]
fn reads_alone_keep_a_connection_active() {
    const IDLE: Duration = ACTIVE_IDLE;
    let (seen, mut reports) = Reports::new();
    let server = start(Config::default().idle_timeout(Some(IDLE)), Watch::new(seen));
    let mut client = connect(server.addr);
    let (id, _) = opened(&mut reports);

    // For several idle periods the client sends a dot every PACE, which the
    // server reads and never answers: only reads move bytes.
    let started = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut last_dot = started;
    while started.elapsed() < ACTIVE_FOR {
        let now = Instant::now();
        longest_gap = longest_gap.max(now - last_dot);
        client.write_all(b".").expect("write while active");
        last_dot = Instant::now();
        // Pacing: this is how often the client talks.
        thread::sleep(PACE);
    }
    // Still open: a ping is echoed.
    let last_write = Instant::now();
    client.write_all(b"ping").expect("write");
    let mut echo = [0; 4];
    client.read_exact(&mut echo).unwrap_or_else(|e| {
        panic!(
            "echo: the connection must still be open (the client was quiet for \
             {longest_gap:?} at most): {e}"
        )
    });
    assert_eq!(&echo, b"ping");
    // Then it goes quiet and times out.
    let (received, end) = read_until_end(&mut client);
    let idle = last_write.elapsed();
    assert_eq!(received, 0);
    assert!(end.is_ok(), "expected EOF, got {end:?}");
    assert!(
        idle >= IDLE,
        "closed {idle:?} after the last write, before {IDLE:?}"
    );
    let (reason, _) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");
    assert_eq!(
        server.wait_stats("the close", |s| s.closed == 1).timed_out,
        1
    );
}

#[test]
fn a_peer_that_never_reads_queued_output_is_timed_out_with_a_reset() {
    const IDLE: Duration = Duration::from_millis(300);
    let (seen, mut reports) = Reports::new();
    let mut handler = Watch::new(seen);
    handler.flood = FLOOD;
    let server = start(Config::default().idle_timeout(Some(IDLE)), handler);

    let before = Instant::now();
    let mut client = connect(server.addr);
    let (id, pending) = opened(&mut reports);
    assert!(
        pending > 0,
        "the kernel took all {FLOOD} bytes: nothing is queued"
    );

    // The client reads nothing: output stops moving once the kernel's
    // buffers are full, and the connection goes idle.
    let (reason, at) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");
    let idle = at - before;
    assert!(
        idle >= IDLE,
        "timed out {idle:?} after connecting, before {IDLE:?}"
    );
    assert_eq!(
        server.wait_stats("the close", |s| s.closed == 1).timed_out,
        1
    );

    // Output was left queued: the stream was cut with a reset, not ended
    // with a FIN that would pass it off as complete.
    let (received, end) = read_until_end(&mut client);
    assert!(received < FLOOD as u64);
    assert_reset(&end, "reading after the idle timeout");
}

#[test]
fn a_close_that_lingers_past_close_timeout_is_cut() {
    const CLOSE: Duration = Duration::from_millis(300);
    // Reads of 5 bytes: `close` is read alone, and the dots sent with it
    // are still waiting when the close begins. The peer is sending, so the
    // close lingers; it would wait 60 s for the peer to fall silent, but
    // the close timeout comes first.
    let config = Config::default()
        .close_timeout(CLOSE)
        .linger_timeout(Duration::from_secs(60))
        .read_chunk(5);
    let (seen, mut reports) = Reports::new();
    let server = start(config, Watch::new(seen));

    let mut client = connect(server.addr);
    let (id, _) = opened(&mut reports);
    client.write_all(b"close.....").expect("write");
    let closing_at = closing(&mut reports, id);
    // Nothing was queued: the server's FIN comes at once.
    let (received, end) = read_until_end(&mut client);
    assert_eq!(received, 0);
    assert!(end.is_ok(), "expected the server's FIN, got {end:?}");

    // The client keeps its socket open and never sends its FIN.
    let (reason, at) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");
    let waited = at - closing_at;
    assert!(
        waited >= CLOSE,
        "cut {waited:?} after close(), before {CLOSE:?}"
    );
    assert!(waited <= CLOSE + SLACK, "cut only after {waited:?}");
    assert_eq!(
        server.wait_stats("the close", |s| s.closed == 1).timed_out,
        1
    );

    // The server's socket is gone: the client's writes fail.
    let mut failure = None;
    wait_until("a write to fail", || match client.write(b"x") {
        Ok(_) => false,
        Err(e) => {
            failure = Some(e.kind());
            true
        }
    });
    assert!(
        matches!(
            failure,
            Some(io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
        ),
        "{failure:?}"
    );
}

#[test]
fn a_close_whose_output_the_peer_never_reads_is_cut_at_close_timeout_with_a_reset() {
    const CLOSE: Duration = Duration::from_millis(300);
    let (seen, mut reports) = Reports::new();
    let mut handler = Watch::new(seen);
    handler.flood = FLOOD;
    handler.close_on_open = true;
    let server = start(Config::default().close_timeout(CLOSE), handler);

    let mut client = connect(server.addr);
    let (id, pending) = opened(&mut reports);
    assert!(
        pending > 0,
        "the kernel took all {FLOOD} bytes: nothing is queued"
    );
    let closing_at = closing(&mut reports, id);

    // The client reads nothing: the close cannot flush, so it never gets
    // to its FIN.
    let (reason, at) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::TimedOut), "{reason:?}");
    let waited = at - closing_at;
    assert!(
        waited >= CLOSE,
        "cut {waited:?} after close(), before {CLOSE:?}"
    );
    assert!(waited <= CLOSE + SLACK, "cut only after {waited:?}");
    assert_eq!(
        server.wait_stats("the close", |s| s.closed == 1).timed_out,
        1
    );

    let (received, end) = read_until_end(&mut client);
    assert!(received < FLOOD as u64);
    assert_reset(&end, "reading after the close timeout");
}

#[test]
fn a_completed_close_is_not_timed_out_nor_is_the_next_tenant_of_its_slot() {
    const CLOSE: Duration = Duration::from_millis(300);
    let (seen, mut reports) = Reports::new();
    let server = start(Config::default().close_timeout(CLOSE), Watch::new(seen));

    // The first client completes the close at once: FIN for FIN.
    let mut first = connect(server.addr);
    let (first_id, _) = opened(&mut reports);
    first.write_all(b"close").expect("write");
    let closing_at = closing(&mut reports, first_id);
    let (_, end) = read_until_end(&mut first);
    assert!(end.is_ok(), "expected the server's FIN, got {end:?}");
    drop(first);
    let (reason, _) = closed(&mut reports, first_id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");

    // The next connection takes the freed slot and is still open when the
    // first one's close deadline passes: that deadline must not touch it.
    let mut second = connect(server.addr);
    let (second_id, _) = opened(&mut reports);
    // `ConnId`'s Display is `slot.generation`.
    let slot = |id: ConnId| id.to_string().split('.').next().map(str::to_owned);
    assert_eq!(
        slot(second_id),
        slot(first_id),
        "expected the slot to be reused"
    );
    let past_deadline = closing_at + CLOSE + ms(200);
    // Observing absence: the only sleep.
    thread::sleep(past_deadline.saturating_duration_since(Instant::now()));
    second.write_all(b"still open?").expect("write");
    let mut echo = [0; 11];
    second
        .read_exact(&mut echo)
        .expect("echo after the old deadline");
    assert_eq!(&echo, b"still open?");
    // The echo came from a turn that began past the old deadline, but its
    // timers run after the echo is sent: wait until whole turns have run,
    // so anything the old deadline did has been counted and reported.
    let stats = server.run_turns(1);
    assert_eq!(stats.timed_out, 0, "{stats:?}");
    assert!(
        !reports
            .untaken()
            .iter()
            .any(|seen| matches!(seen, Seen::Close { .. })),
        "{:?}",
        reports.untaken()
    );
}

#[test]
fn an_idle_timeout_outside_1_ms_to_24_days_is_invalid_config() {
    let day = Duration::from_secs(24 * 3600);
    for bad in [
        Duration::ZERO,
        ms(0) + Duration::from_micros(999),
        24 * day + ms(1),
    ] {
        let config = Config::default().idle_timeout(Some(bad));
        match Reactor::bind(any_local_address(), config, Echo) {
            Err(Error::InvalidConfig(rule)) => {
                assert!(rule.contains("idle_timeout"), "{bad:?}: {rule}")
            }
            other => panic!("idle_timeout {bad:?}: expected InvalidConfig, got {other:?}"),
        }
    }
    for good in [ms(1), 24 * day] {
        let config = Config::default().idle_timeout(Some(good));
        assert!(
            Reactor::bind(any_local_address(), config, Echo).is_ok(),
            "idle_timeout {good:?} should be valid"
        );
    }
}
