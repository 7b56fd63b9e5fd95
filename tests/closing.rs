//! Closing and stopping that never wait on quiet peers, and the truth of
//! the stop report; dead timers that do not wake the loop; TCP keepalive.
//!
//! The lingering rule (see `Config::linger_timeout`): after a graceful
//! close has flushed its output and sent its FIN, a peer with nothing in
//! flight is closed at once; one still sending is read from and ignored
//! until its FIN, or until it has been silent for the linger timeout.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use common::{Reports, any_local_address, connect, drive_until, read_to_eof, start, wait_until};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Handler, Keepalive, ListenerId, Reactor,
};

/// A close timeout no test waits for: a close that ended only there would
/// fail the test's 30 s waits.
const NEVER: Duration = Duration::from_secs(600);

#[derive(Debug)]
enum Seen {
    Open(ConnId, SocketAddr),
    Closing(ConnId, Instant),
    Paused(ConnId),
    Close(ConnId, CloseReason, Instant),
}

/// Commands at the start of what a read delivers: `hello` is answered
/// with `Hello World` and closed (the tutorial's one-shot server); `close`
/// closes; `hold` pauses reading. Anything else is echoed.
struct Closer {
    seen: Sender<Seen>,
}

impl Closer {
    fn new() -> (Closer, Reports<Seen>) {
        let (seen, reports) = Reports::new();
        (Closer { seen }, reports)
    }

    fn close(&self, cx: &mut Context<'_, <Closer as Handler>::Conn>, id: ConnId) {
        let at = Instant::now();
        cx.close(id);
        let _ = self.seen.send(Seen::Closing(id, at));
    }
}

impl Handler for Closer {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) {
        let _ = self
            .seen
            .send(Seen::Open(id, peer.as_tcp().expect("a TCP peer")));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        if data.starts_with(b"hello") {
            cx.send(id, b"Hello World").expect("the reply");
            self.close(cx, id);
        } else if data.starts_with(b"close") {
            self.close(cx, id);
        } else if data.starts_with(b"hold") {
            cx.pause_read(id);
            let _ = self.seen.send(Seen::Paused(id));
        } else {
            cx.send(id, data).expect("the echo");
        }
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        let _ = self.seen.send(Seen::Close(id, reason, Instant::now()));
    }
}

#[track_caller]
fn id_of(reports: &mut Reports<Seen>, client: &TcpStream) -> ConnId {
    let local = client.local_addr().expect("client address");
    reports.wait_for("on_open of the client", |seen| match seen {
        Seen::Open(id, peer) if peer == local => Ok(id),
        other => Err(other),
    })
}

#[track_caller]
fn closing_at(reports: &mut Reports<Seen>, id: ConnId) -> Instant {
    reports.wait_for("the handler's close", |seen| match seen {
        Seen::Closing(cid, at) if cid == id => Ok(at),
        other => Err(other),
    })
}

/// Reads of 5 bytes and a close timeout no test waits for: `close` is
/// read alone, so the dots sent with it (see [`close_while_sending`]) are
/// still waiting when the close begins.
fn lingering(linger: Duration) -> Config {
    Config::default()
        .read_chunk(5)
        .linger_timeout(linger)
        .close_timeout(NEVER)
}

/// Has the server close while this client is still sending: `close`, then
/// dots it has not read yet. Returns when the close began, once our FIN
/// has arrived.
#[track_caller]
fn close_while_sending(client: &mut TcpStream, id: ConnId, reports: &mut Reports<Seen>) -> Instant {
    client.write_all(b"close.....").expect("write");
    let began = closing_at(reports, id);
    assert!(read_to_eof(client).expect("our FIN").is_empty());
    began
}

#[track_caller]
fn closed(reports: &mut Reports<Seen>, id: ConnId) -> (CloseReason, Instant) {
    reports.wait_for("on_close", |seen| match seen {
        Seen::Close(cid, reason, at) if cid == id => Ok((reason, at)),
        other => Err(other),
    })
}

#[test]
fn answer_and_close_frees_every_slot_while_polite_silent_clients_stay_connected() {
    // The tutorial's server: one reply, then close. Its clients read the
    // reply and keep their sockets open, sending nothing: none of them may
    // hold a descriptor (here for the 600 s close timeout).
    const CLIENTS: usize = 50;
    let (handler, mut reports) = Closer::new();
    let server = start(Config::default().close_timeout(NEVER), handler);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(server.addr)).collect();
    for client in &mut clients {
        client.write_all(b"hello").expect("write");
    }
    for client in &mut clients {
        let reply = read_to_eof(client).expect("the reply, then a clean FIN");
        assert_eq!(reply, b"Hello World");
    }
    let stats = server.wait_stats("every slot freed", |s| s.closed == CLIENTS as u64);
    assert_eq!(stats.active, 0, "{stats:?}");
    assert_eq!(stats.timed_out, 0, "{stats:?}");
    for _ in 0..CLIENTS {
        let reason = reports.wait_for("on_close", |seen| match seen {
            Seen::Close(_, reason, _) => Ok(reason),
            other => Err(other),
        });
        assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    }
    drop(clients);
}

#[test]
fn a_peer_still_sending_is_lingered_on_until_it_falls_silent() {
    const LINGER: Duration = Duration::from_millis(300);
    let (handler, mut reports) = Closer::new();
    let server = start(lingering(LINGER), handler);
    let mut client = connect(server.addr);
    let id = id_of(&mut reports, &client);
    let began = close_while_sending(&mut client, id, &mut reports);

    // The client sends nothing more and keeps its socket open: the close
    // ends once it has been silent for the linger timeout (its dots were
    // read in the turn the close began), never before.
    let (reason, at) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    assert!(
        at - began >= LINGER,
        "closed {:?} after the close began, within the linger timeout",
        at - began
    );
    let stats = server.wait_stats("the close counted", |s| s.closed == 1);
    assert_eq!(stats.timed_out, 0, "{stats:?}");
}

#[test]
fn a_lingering_close_ends_with_the_peer_s_fin() {
    // Lingering for 600 s unless the peer's FIN comes: only the FIN can
    // end this close within the test's deadline.
    let (handler, mut reports) = Closer::new();
    let server = start(lingering(NEVER), handler);
    let mut client = connect(server.addr);
    let id = id_of(&mut reports, &client);
    close_while_sending(&mut client, id, &mut reports);
    // More bytes while the server lingers: read and ignored.
    client
        .write_all(b"late bytes")
        .expect("write while lingering");
    server.wait_stats("the late bytes read", |s| s.bytes_in == 20);
    assert_eq!(server.stats().closed, 0, "closed while the peer sends");

    client.shutdown(Shutdown::Write).expect("our FIN");
    let (reason, _) = closed(&mut reports, id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    let mut byte = [0; 1];
    assert_eq!(client.read(&mut byte).expect("a clean end, no reset"), 0);
}

#[test]
fn stop_now_with_unread_input_is_forced_and_the_peer_sees_a_reset() {
    // Reads of 4 bytes: `hold` is read alone and pauses reading, so the
    // rest of that one write waits in the kernel, unread.
    let (handler, mut reports) = Closer::new();
    let server = start(Config::default().read_chunk(4), handler);
    let mut unread = connect(server.addr);
    let unread_id = id_of(&mut reports, &unread);
    let mut quiet = connect(server.addr);
    let quiet_id = id_of(&mut reports, &quiet);
    unread.write_all(b"hold, then more").expect("write");
    reports.wait_for("the pause", |seen| match seen {
        Seen::Paused(id) if id == unread_id => Ok(()),
        other => Err(other),
    });

    let reactor = server.stop(); // stop_now
    let report = reactor.stop_report().expect("stopped");
    // Closing over unread input makes the kernel send a reset: that is a
    // connection cut, not drained. The quiet one closes cleanly.
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (1, 1, 0),
        "{report}"
    );
    let mut buf = [0; 16];
    match unread.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("{n} bytes instead of a reset"),
    }
    assert!(read_to_eof(&mut quiet).expect("a clean FIN").is_empty());
    for id in [unread_id, quiet_id] {
        let (reason, _) = closed(&mut reports, id);
        assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    }
}

#[test]
fn a_connection_closed_before_the_stop_keeps_its_reason_and_counts_as_drained() {
    // It lingers (its peer was still sending when it closed) when the stop
    // begins; its peer's FIN ends it.
    let (handler, mut reports) = Closer::new();
    let server = start(lingering(NEVER).drain_timeout(NEVER), handler);
    let mut closed_first = connect(server.addr);
    let first_id = id_of(&mut reports, &closed_first);
    let mut open = connect(server.addr);
    let open_id = id_of(&mut reports, &open);
    close_while_sending(&mut closed_first, first_id, &mut reports);

    server.handle.stop();
    // The open one is quiet: the stop closes it at once.
    assert!(read_to_eof(&mut open).expect("FIN").is_empty());
    let (reason, _) = closed(&mut reports, open_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    assert!(!server.handle.is_stopped(), "the lingering close holds it");

    closed_first.shutdown(Shutdown::Write).expect("FIN");
    let (reason, _) = closed(&mut reports, first_id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    wait_until("the stop to end", || server.handle.is_stopped());
    let report = server.stop().stop_report().expect("stopped");
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.failed,
            report.unsent_bytes
        ),
        (2, 0, 0, 0),
        "{report}"
    );
}

#[test]
fn a_loop_whose_timers_are_all_dead_sleeps_without_a_timeout() {
    // A finished close leaves its close check in the timer heap, and a
    // closed connection its idle check: both dead. They must not wake the
    // loop (the close check would, 20 ms after the close began).
    let config = Config::default()
        .linger_timeout(Duration::from_millis(20))
        .idle_timeout(Some(Duration::from_millis(50)));
    let (handler, _reports) = Closer::new();
    let mut reactor = Reactor::bind(any_local_address(), config, handler).expect("bind");
    let mut client = connect(reactor.local_addr().expect("a TCP listener"));
    client.write_all(b"close").expect("write");
    drive_until(&mut reactor, "the close to finish", |r| {
        r.stats().closed == 1
    });

    // Nothing is due: this turn waits its whole timeout. (epoll_wait never
    // returns early without an event or a signal, so the bound holds on a
    // loaded machine too.)
    const WAIT: Duration = Duration::from_millis(500);
    let turns = reactor.stats().turns;
    let started = Instant::now();
    reactor.run_once(Some(WAIT)).expect("run_once");
    let waited = started.elapsed();
    assert!(
        waited >= WAIT,
        "the loop woke after {waited:?}, before its {WAIT:?} timeout"
    );
    assert_eq!(reactor.stats().turns, turns + 1);
    drop(client);
}

/// The server end's keepalive timer, from `/proc/net/tcp`: `None` if no
/// timer of that kind runs, else its expiry in clock ticks (1/100 s).
/// Column `tr` is 2 exactly when the socket's keepalive timer is pending.
fn keepalive_timer(server: SocketAddr, client: SocketAddr) -> Option<Option<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = common::proc_addr(fields.get(1)?)?;
        let remote = common::proc_addr(fields.get(2)?)?;
        if local != server || remote != client {
            return None;
        }
        let (tr, when) = fields.get(5)?.split_once(':')?;
        Some(
            (tr == "02")
                .then(|| u64::from_str_radix(when, 16).ok())
                .flatten(),
        )
    })
}

#[test]
fn accepted_connections_get_tcp_keepalive_as_configured() {
    const IDLE: u64 = 77;
    let keepalive = Keepalive::new(Duration::from_secs(IDLE), Duration::from_secs(5), 4);
    for (config, expected) in [
        (Config::default().keepalive(Some(keepalive)), true),
        (Config::default().keepalive(None), false),
    ] {
        let (handler, mut reports) = Closer::new();
        let server = start(config, handler);
        let client = connect(server.addr);
        let me = client.local_addr().expect("client address");
        id_of(&mut reports, &client); // accepted: its options are set
        let mut seen = None;
        wait_until("the server end in /proc/net/tcp", || {
            seen = keepalive_timer(server.addr, me);
            seen.is_some()
        });
        let timer = seen.flatten();
        if expected {
            // Armed for IDLE seconds of silence, counting down.
            let when = timer.expect("a keepalive timer on the server end");
            assert!(
                when <= IDLE * 100 && when > (IDLE - 30) * 100,
                "keepalive due in {when} ticks"
            );
        } else {
            assert_eq!(timer, None, "a keepalive timer with keepalive off");
        }
        drop(client);
    }
}
