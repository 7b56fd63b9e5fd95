//! Outbound connections (`Context::connect`): to the reactor's own
//! listener, to a peer on another thread, over TCP and Unix sockets; bytes
//! sent while connecting arrive whole and in order; refused, timed out and
//! missing-path connects end in `on_close` with `ConnectFailed`; `close`,
//! `abort` and a stop on a connect still under way.
//!
//! Every peer is on loopback (127.0.0.1) or a Unix socket in the temp
//! directory; ports are the kernel's choice. The reactor under test is
//! driven on the test thread (`drive_until`, deadline-bounded), so the
//! handler's log of what it saw is read directly between turns.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{DEADLINE, any_local_address, drive_until, pattern_bytes, wait_until};
use socket2::{Domain, Socket, Type};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, ConnectError, Context, Error, Handler, ListenerId, Reactor,
};

/// A connect timeout no test waits for: a connect that ended only there
/// would fail the test's 30 s waits first.
const NEVER: Duration = Duration::from_secs(3600);

/// A connection's state in [`Tester`]; handed back in `on_close`, where
/// the tests check it is the one given to `connect`.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    /// Accepted from one of the reactor's listeners: echoes every byte.
    Echoer,
    /// Opened with `connect`: keeps what comes back. `tag` tells the state
    /// handed back in `on_close` is the one given to `connect`.
    Outbound { tag: u64, got: Vec<u8> },
}

impl Side {
    fn outbound(tag: u64) -> Side {
        Side::Outbound {
            tag,
            got: Vec::new(),
        }
    }
}

/// What [`Tester`] saw, in order.
#[derive(Debug)]
enum Seen {
    /// A test's start-up callback (see [`Tester::start`]) connected `id`.
    Started(ConnId),
    Opened(ConnId),
    Connected(ConnId),
    Data(ConnId, usize),
    Closed(ConnId, Side, CloseReason),
}

/// What a test does from inside a callback (the first timer's): its
/// connects, sends, closes. Returns the id of the connection it is about.
type Start = Box<dyn FnOnce(&mut Context<'_, Side>) -> ConnId>;

/// Accepted connections echo; outbound ones collect the echo and close
/// once they have `close_after` bytes back. Everything is logged.
#[derive(Default)]
struct Tester {
    seen: Vec<Seen>,
    start: Option<Start>,
    close_after: Option<usize>,
}

impl Tester {
    /// A tester whose first timer runs `start`.
    fn starting(start: impl FnOnce(&mut Context<'_, Side>) -> ConnId + 'static) -> Tester {
        Tester {
            start: Some(Box::new(start)),
            ..Tester::default()
        }
    }

    /// The connection the start-up callback was about, once it has run.
    fn started(&self) -> Option<ConnId> {
        self.seen.iter().find_map(|seen| match seen {
            Seen::Started(id) => Some(*id),
            _ => None,
        })
    }

    fn connects_of(&self, id: ConnId) -> usize {
        self.seen
            .iter()
            .filter(|seen| matches!(seen, Seen::Connected(i) if *i == id))
            .count()
    }

    /// Bytes `on_data` was given for `id`, in all.
    fn data_of(&self, id: ConnId) -> usize {
        self.seen
            .iter()
            .map(|seen| match seen {
                Seen::Data(i, n) if *i == id => *n,
                _ => 0,
            })
            .sum()
    }

    fn opens(&self) -> Vec<ConnId> {
        self.seen
            .iter()
            .filter_map(|seen| match seen {
                Seen::Opened(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn close_of(&self, id: ConnId) -> Option<(&Side, &CloseReason)> {
        self.seen.iter().find_map(|seen| match seen {
            Seen::Closed(i, side, reason) if *i == id => Some((side, reason)),
            _ => None,
        })
    }

    fn closes(&self) -> usize {
        self.seen
            .iter()
            .filter(|seen| matches!(seen, Seen::Closed(..)))
            .count()
    }

    /// Where in the log the first entry `pick` takes is.
    fn position(&self, pick: impl Fn(&Seen) -> bool) -> Option<usize> {
        self.seen.iter().position(pick)
    }
}

impl Handler for Tester {
    type Conn = Side;
    type Message = ();

    fn on_open(&mut self, _: &mut Context<'_, Side>, id: ConnId, _: &Addr, _: ListenerId) -> Side {
        self.seen.push(Seen::Opened(id));
        Side::Echoer
    }

    fn on_connect(&mut self, _: &mut Context<'_, Side>, id: ConnId, _: &mut Side) {
        self.seen.push(Seen::Connected(id));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Side>,
        id: ConnId,
        conn: &mut Side,
        data: &[u8],
    ) -> usize {
        self.seen.push(Seen::Data(id, data.len()));
        match conn {
            Side::Echoer => {
                // Reads stop at the write high water mark: this stays
                // under max_output.
                cx.send(id, data).expect("echo");
            }
            Side::Outbound { got, .. } => {
                got.extend_from_slice(data);
                if self.close_after.is_some_and(|n| got.len() >= n) {
                    cx.close(id);
                }
            }
        }
        data.len()
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Side>, _: tcp_reactor::TimerId, _: u64) {
        if let Some(start) = self.start.take() {
            let id = start(cx);
            self.seen.push(Seen::Started(id));
        }
    }

    fn on_close(&mut self, _: &mut Context<'_, Side>, id: ConnId, conn: Side, reason: CloseReason) {
        self.seen.push(Seen::Closed(id, conn, reason));
    }
}

/// A reactor with no listener, running `tester`'s start-up callback in its
/// first turn's timer step.
fn reactor_starting(config: Config, tester: Tester) -> Reactor<Tester> {
    let mut reactor = Reactor::new(config, tester).expect("reactor");
    reactor.context().set_timer(Duration::ZERO, 0);
    reactor
}

/// Drives `reactor` until the start-up callback has run, and returns the
/// id it was about.
#[track_caller]
fn started(reactor: &mut Reactor<Tester>) -> ConnId {
    drive_until(reactor, "the start-up callback", |r| {
        r.handler().started().is_some()
    });
    reactor.handler().started().expect("started")
}

/// Drives `reactor` until `id`'s `on_close` has run.
#[track_caller]
fn drive_until_closed(reactor: &mut Reactor<Tester>, id: ConnId) {
    drive_until(reactor, "the connection's on_close", |r| {
        r.handler().close_of(id).is_some()
    });
}

/// Drives `reactor` until `peer` (a thread that needs the reactor to make
/// progress) has finished, and returns what it returned.
#[track_caller]
fn drive_until_joined<T>(reactor: &mut Reactor<Tester>, peer: JoinHandle<T>) -> T {
    drive_until(reactor, "the peer thread", |_| peer.is_finished());
    peer.join().expect("peer thread panicked")
}

/// Accepts one connection on `listener` within [`DEADLINE`] (polling a
/// non-blocking accept), as a blocking stream with read and write timeouts.
#[track_caller]
fn accept_within(listener: &TcpListener) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                stream
                    .set_read_timeout(Some(DEADLINE))
                    .expect("read timeout");
                stream
                    .set_write_timeout(Some(DEADLINE))
                    .expect("write timeout");
                return stream;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "timed out waiting to accept");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A std listener on loopback and a thread that accepts one connection and
/// runs `serve` on it.
fn peer_thread<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind(any_local_address()).expect("bind peer");
    let addr = listener.local_addr().expect("peer address");
    let thread = std::thread::spawn(move || serve(accept_within(&listener)));
    (addr, thread)
}

/// A loopback port nothing listens on: bound by a std listener, which is
/// then dropped. (Another process could take it in between; the kernel
/// hands out ephemeral ports in a wide range, so that is not a concern on a
/// test machine.)
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind(any_local_address()).expect("bind");
    listener.local_addr().expect("address")
}

/// A loopback listener that completes no more handshakes: a connect to it
/// stays under way until it times out.
///
/// It is bound with `listen(0)` and never accepts. Linux drops a SYN
/// outright while the listener's accept queue is full
/// (`tcp_conn_request`: `sk_acceptq_is_full` → `LISTENOVERFLOWS`, drop);
/// the client retransmits after 1 s, 3 s, ... and each is dropped again,
/// for as long as the queue stays full. SYN cookies do not get around that:
/// they stand in for the SYN queue (half-open connections), and the accept
/// queue check comes after the cookie decision, so a SYN to a full accept
/// queue is dropped whatever `tcp_syncookies` says.
///
/// The queue is filled with blocking std connects that complete (they are
/// held, so their connections stay queued) until one does not complete
/// within [`PROBE_TIMEOUT`]: that one's SYN was dropped, so the queue is
/// full, which is checked rather than assumed from the backlog arithmetic
/// (with `listen(0)` Linux queues one connection, other kernels a few).
/// A kernel that never drops one (64 tries) fails the test loudly rather
/// than letting it pass without testing a connect under way.
struct Unanswered {
    addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<TcpStream>,
}

/// How long a probe connect to [`Unanswered`] may take before its SYN
/// counts as dropped. A loopback handshake takes microseconds; a dropped
/// SYN is retried only after 1 s (and dropped again), so a longer probe
/// costs time but never changes the verdict while the queue is full.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn unanswered() -> Unanswered {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener
        .bind(&any_local_address().into())
        .expect("bind on port 0");
    listener.listen(0).expect("listen(0)");
    let addr = listener
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    let mut queued = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
            Ok(stream) => queued.push(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Unanswered {
                    addr,
                    _listener: listener,
                    _queued: queued,
                };
            }
            Err(e) => panic!("probe connect to the full-backlog listener: {e}"),
        }
    }
    panic!(
        "64 connects to a listen(0) listener that never accepts all completed: \
         this kernel does not drop SYNs to a full accept queue, so no connect \
         stays under way on loopback"
    );
}

/// A fresh Unix socket path in the temp directory (not created).
fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "tcp-reactor-connect-{}-{n}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// The index of the first byte where `got` and `want` differ (or where the
/// shorter ends), for a readable failure.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or_else(|| (got.len() != want.len()).then(|| got.len().min(want.len())))
}

/// A reactor connects to its own listener at set-up (before `run`); the
/// accepted side echoes, the outbound side gets its bytes back through the
/// same loop, closes, and each side is counted once: `accepted` for the one,
/// `connected` for the other.
#[test]
fn connect_to_its_own_listener_echoes_through_the_same_loop() {
    const LEN: usize = 256 * 1024;
    let payload = pattern_bytes(1, LEN);
    let mut reactor = Reactor::new(
        Config::default(),
        Tester {
            close_after: Some(LEN),
            ..Tester::default()
        },
    )
    .expect("reactor");
    let mut cx = reactor.context();
    let listener = cx.listen(any_local_address()).expect("listen");
    let addr = cx.listener_addr(listener).expect("listener address");
    let id = cx.connect(addr, Side::outbound(1)).expect("connect");
    cx.send(id, &payload).expect("send while connecting");

    drive_until(&mut reactor, "both sides to close", |r| {
        r.handler().closes() == 2
    });

    let tester = reactor.handler();
    assert_eq!(
        tester.connects_of(id),
        1,
        "on_connect once: {:?}",
        tester.seen
    );
    let opened = tester.opens();
    assert_eq!(
        opened.len(),
        1,
        "one accepted connection: {:?}",
        tester.seen
    );
    assert_ne!(opened[0], id, "the outbound connection is not opened");
    let (side, reason) = tester.close_of(id).expect("outbound closed");
    let Side::Outbound { tag: 1, got } = side else {
        panic!("the outbound state handed back: {side:?}");
    };
    assert_eq!(
        first_difference(got, &payload),
        None,
        "the echo differs from what was sent ({} of {LEN} bytes back)",
        got.len()
    );
    assert!(matches!(reason, CloseReason::Local), "outbound: {reason}");
    let (side, reason) = tester.close_of(opened[0]).expect("accepted closed");
    assert_eq!(side, &Side::Echoer);
    assert!(
        matches!(reason, CloseReason::PeerClosed),
        "accepted: {reason}"
    );

    let stats = reactor.stats();
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(stats.connected, 1, "{stats:?}");
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
    assert_eq!((stats.active, stats.closed), (0, 2), "{stats:?}");
    // Each side wrote the payload once and read it once.
    assert_eq!(stats.bytes_out, 2 * LEN as u64, "{stats:?}");
    assert_eq!(stats.bytes_in, 2 * LEN as u64, "{stats:?}");
}

/// A connect to a peer on another thread, which greets first and then
/// echoes: the greeting and the echo come back; `on_connect` runs exactly
/// once, before any `on_data` for the connection (the greeting may arrive
/// with the very event that says it is established). It counts as
/// `connected`, never `accepted`, in a reactor that has a listener of its
/// own.
#[test]
fn connect_to_a_peer_thread_runs_on_connect_once_before_any_data() {
    const GREETING: &[u8] = b"hello from the peer\n";
    let message = pattern_bytes(2, 100_000);
    let expected: Vec<u8> = [GREETING, &message].concat();
    let (addr, peer) = peer_thread(|mut stream| {
        stream.write_all(GREETING).expect("greet");
        // Echo until the reactor's FIN.
        let mut buf = [0; 16 * 1024];
        let mut echoed = 0;
        loop {
            match stream.read(&mut buf).expect("peer read") {
                0 => return echoed,
                n => {
                    stream.write_all(&buf[..n]).expect("peer echo");
                    echoed += n;
                }
            }
        }
    });

    let to_send = message.clone();
    let tester = Tester {
        close_after: Some(expected.len()),
        ..Tester::starting(move |cx| {
            let id = cx.connect(addr, Side::outbound(2)).expect("connect");
            cx.send(id, &to_send).expect("send while connecting");
            id
        })
    };
    let mut reactor = Reactor::bind(any_local_address(), Config::default(), tester)
        .expect("a reactor with a listener");
    reactor.context().set_timer(Duration::ZERO, 0);
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);
    let echoed = drive_until_joined(&mut reactor, peer);
    assert_eq!(echoed, message.len(), "what the peer echoed");

    let tester = reactor.handler();
    assert_eq!(
        tester.connects_of(id),
        1,
        "on_connect once: {:?}",
        tester.seen
    );
    let connected_at = tester
        .position(|seen| matches!(seen, Seen::Connected(i) if *i == id))
        .expect("on_connect");
    let first_data = tester
        .position(|seen| matches!(seen, Seen::Data(i, _) if *i == id))
        .expect("on_data");
    assert!(
        connected_at < first_data,
        "on_connect after on_data: {:?}",
        tester.seen
    );
    assert!(
        tester.opens().is_empty(),
        "nothing accepted: {:?}",
        tester.seen
    );
    let (side, reason) = tester.close_of(id).expect("closed");
    let Side::Outbound { tag: 2, got } = side else {
        panic!("the state handed back: {side:?}");
    };
    assert_eq!(first_difference(got, &expected), None, "greeting and echo");
    assert_eq!(tester.data_of(id), expected.len(), "bytes given to on_data");
    assert!(matches!(reason, CloseReason::Local), "{reason}");

    let stats = reactor.stats();
    assert_eq!(stats.connected, 1, "{stats:?}");
    assert_eq!(stats.accepted, 0, "{stats:?}");
    assert_eq!(stats.connect_failures, 0, "{stats:?}");
    assert_eq!(stats.bytes_out, message.len() as u64, "{stats:?}");
    assert_eq!(stats.bytes_in, expected.len() as u64, "{stats:?}");
}

/// 1 MiB sent in the very callback that called `connect`, before the
/// connection can be established: all of it is queued, and the peer gets
/// every byte, in order, once it is.
#[test]
fn bytes_sent_while_connecting_arrive_complete_and_in_order() {
    const LEN: usize = 1024 * 1024;
    let payload = pattern_bytes(3, LEN);
    let (addr, peer) = peer_thread(|mut stream| {
        let mut got = vec![0; LEN];
        stream.read_exact(&mut got).expect("peer read");
        got
        // Dropped: the peer's FIN ends the connection.
    });
    let to_send = payload.clone();
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| {
            let id = cx.connect(addr, Side::outbound(3)).expect("connect");
            assert_eq!(cx.pending_output(id), 0);
            cx.send(id, &to_send).expect("send while connecting");
            // Nothing can be written before the connection is
            // established: the whole payload waits in the queue.
            assert_eq!(cx.pending_output(id), LEN, "queued while connecting");
            id
        }),
    );
    let id = started(&mut reactor);
    let got = drive_until_joined(&mut reactor, peer);
    assert_eq!(
        first_difference(&got, &payload),
        None,
        "what the peer read differs from what was sent"
    );
    drive_until_closed(&mut reactor, id);

    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 1, "{:?}", tester.seen);
    let (_, reason) = tester.close_of(id).expect("closed");
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason}");
    let stats = reactor.stats();
    assert_eq!(stats.bytes_out, LEN as u64, "{stats:?}");
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    assert_eq!(stats.connected, 1, "{stats:?}");
    // The whole payload was queued at once, before establishment.
    assert!(stats.peak_queued_output >= LEN as u64, "{stats:?}");
}

/// A connect to a port nothing listens on: `on_close` with
/// `ConnectFailed(Refused)` and the state given to `connect`; no
/// `on_connect`; counted in `connect_failures`, not `connected`.
#[test]
fn connect_refused_ends_in_on_close_with_the_state() {
    let addr = closed_port();
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| cx.connect(addr, Side::outbound(4)).expect("connect")),
    );
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);

    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 0, "{:?}", tester.seen);
    let (side, reason) = tester.close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(4), "the state handed back");
    assert!(
        matches!(reason, CloseReason::ConnectFailed(ConnectError::Refused)),
        "{reason:?}"
    );
    assert_eq!(reason.to_string(), "connect failed: connection refused");
    let stats = reactor.stats();
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(stats.connected, 0, "{stats:?}");
    assert_eq!((stats.active, stats.closed), (0, 1), "{stats:?}");
}

/// A connect that is never answered (see [`Unanswered`]) fails with
/// `ConnectFailed(TimedOut)` at the timeout given to `connect_within`, not
/// at the config's (an hour: the test would time out first).
#[test]
fn connect_within_times_out_on_a_listener_that_never_answers() {
    let target = unanswered();
    let addr = target.addr;
    let mut reactor = reactor_starting(
        Config::default().connect_timeout(NEVER),
        Tester::starting(move |cx| {
            cx.connect_within(addr, Duration::from_millis(200), Side::outbound(5))
                .expect("connect")
        }),
    );
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);

    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 0, "{:?}", tester.seen);
    let (side, reason) = tester.close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(5), "the state handed back");
    assert!(
        matches!(reason, CloseReason::ConnectFailed(ConnectError::TimedOut)),
        "{reason:?}"
    );
    assert_eq!(reason.to_string(), "connect failed: connect timed out");
    let stats = reactor.stats();
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(stats.connected, 0, "{stats:?}");
    assert_eq!(stats.active, 0, "{stats:?}");
}

/// `connect(Addr::unix(path))` to the reactor's own Unix listener: the
/// echo comes back through the same loop, and each side closes cleanly.
#[test]
fn unix_connect_to_its_own_listener_echoes() {
    const LEN: usize = 200_000;
    let payload = pattern_bytes(6, LEN);
    let path = socket_path("echo");
    let mut reactor = Reactor::new(
        Config::default(),
        Tester {
            close_after: Some(LEN),
            ..Tester::default()
        },
    )
    .expect("reactor");
    let mut cx = reactor.context();
    cx.listen(Addr::unix(&path).expect("path"))
        .expect("listen on a Unix socket");
    let id = cx
        .connect(Addr::unix(&path).expect("path"), Side::outbound(6))
        .expect("connect");
    cx.send(id, &payload).expect("send");

    drive_until(&mut reactor, "both sides to close", |r| {
        r.handler().closes() == 2
    });
    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 1, "{:?}", tester.seen);
    let (side, reason) = tester.close_of(id).expect("outbound closed");
    let Side::Outbound { tag: 6, got } = side else {
        panic!("the state handed back: {side:?}");
    };
    assert_eq!(first_difference(got, &payload), None, "the Unix echo");
    assert!(matches!(reason, CloseReason::Local), "{reason}");
    let accepted = tester.opens();
    assert_eq!(accepted.len(), 1, "{:?}", tester.seen);
    let (_, reason) = tester.close_of(accepted[0]).expect("accepted closed");
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason}");
    let stats = reactor.stats();
    assert_eq!((stats.accepted, stats.connected), (1, 1), "{stats:?}");
    drop(reactor);
    let _ = std::fs::remove_file(&path);
}

/// A Unix connect to a path with no socket: `ConnectFailed` (no such file,
/// or refused), with a reason that says so in words.
#[test]
fn unix_connect_to_a_missing_path_fails() {
    let path = socket_path("missing");
    let addr = Addr::unix(&path).expect("path");
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| cx.connect(addr, Side::outbound(7)).expect("connect")),
    );
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);

    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 0, "{:?}", tester.seen);
    let (side, reason) = tester.close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(7), "the state handed back");
    match reason {
        CloseReason::ConnectFailed(ConnectError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        }
        CloseReason::ConnectFailed(ConnectError::Refused) => {}
        other => panic!("expected ConnectFailed, got {other:?}"),
    }
    let text = reason.to_string();
    let detail = text
        .strip_prefix("connect failed: ")
        .unwrap_or_else(|| panic!("the reason's text: {text:?}"));
    assert!(
        detail.contains("No such file") || detail.contains("refused"),
        "the reason's text: {text:?}"
    );
    assert_eq!(reactor.stats().connect_failures, 1);
}

/// `close` on a connect still under way, right after a send: once it is
/// established the queued bytes are flushed, then FIN. The peer reads them
/// all, then EOF; the handler's reason is `Local`. A send after the close
/// is refused.
#[test]
fn close_while_connecting_flushes_then_fins_once_established() {
    const LEN: usize = 300_000;
    let payload = pattern_bytes(8, LEN);
    let (addr, peer) = peer_thread(|mut stream| {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("peer reads to EOF");
        got
    });
    let to_send = payload.clone();
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| {
            let id = cx.connect(addr, Side::outbound(8)).expect("connect");
            cx.send(id, &to_send).expect("send while connecting");
            cx.close(id);
            assert!(
                matches!(cx.send(id, b"late"), Err(Error::WriteClosed(i)) if i == id),
                "a send after close"
            );
            // Still connecting: nothing written yet, nothing dropped.
            assert_eq!(cx.pending_output(id), LEN);
            id
        }),
    );
    let id = started(&mut reactor);
    let got = drive_until_joined(&mut reactor, peer);
    assert_eq!(
        first_difference(&got, &payload),
        None,
        "the peer must read every queued byte, then EOF"
    );
    drive_until_closed(&mut reactor, id);
    let (side, reason) = reactor.handler().close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(8));
    assert!(matches!(reason, CloseReason::Local), "{reason}");
    let stats = reactor.stats();
    assert_eq!(stats.connected, 1, "{stats:?}");
    assert_eq!(stats.bytes_out, LEN as u64, "{stats:?}");
    assert_eq!(stats.active, 0, "{stats:?}");
}

/// `close` on a connect that then fails: the handler hears why it ended
/// (`ConnectFailed`), not a clean `Local` close.
#[test]
fn close_while_connecting_to_a_closed_port_reports_the_failure() {
    let addr = closed_port();
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| {
            let id = cx.connect(addr, Side::outbound(9)).expect("connect");
            cx.send(id, b"never sent").expect("send while connecting");
            cx.close(id);
            id
        }),
    );
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);
    let (side, reason) = reactor.handler().close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(9));
    assert!(
        matches!(reason, CloseReason::ConnectFailed(ConnectError::Refused)),
        "{reason:?}"
    );
    let stats = reactor.stats();
    assert_eq!(
        (stats.connect_failures, stats.connected),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.queued_output, 0, "{stats:?}");
}

/// `abort` on a connect still under way: `on_close` with `Aborted` (not a
/// connect failure), the queued bytes dropped: the peer's listener, which
/// accepts whatever arrives, gets none of them. The peer thread stops at
/// a sentinel connection made after the abort.
#[test]
fn abort_while_connecting_drops_the_queued_bytes() {
    const SENTINEL: &[u8] = b"sentinel";
    let listener = TcpListener::bind(any_local_address()).expect("bind peer");
    let addr = listener.local_addr().expect("peer address");
    let peer = std::thread::spawn(move || {
        // What each connection before the sentinel delivered (a reset one
        // delivered nothing).
        let mut before = Vec::new();
        loop {
            let mut stream = accept_within(&listener);
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got);
            if got == SENTINEL {
                return before;
            }
            before.push(got);
        }
    });
    let mut reactor = reactor_starting(
        Config::default(),
        Tester::starting(move |cx| {
            let id = cx.connect(addr, Side::outbound(10)).expect("connect");
            cx.send(id, &pattern_bytes(10, 100_000))
                .expect("send while connecting");
            cx.abort(id);
            id
        }),
    );
    let id = started(&mut reactor);
    drive_until_closed(&mut reactor, id);
    let tester = reactor.handler();
    assert_eq!(tester.connects_of(id), 0, "{:?}", tester.seen);
    let (side, reason) = tester.close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(10));
    assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");
    let stats = reactor.stats();
    assert_eq!(
        (stats.connected, stats.connect_failures),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!((stats.active, stats.queued_output), (0, 0), "{stats:?}");
    assert_eq!(stats.bytes_out, 0, "{stats:?}");

    let mut sentinel = common::connect(addr);
    sentinel.write_all(SENTINEL).expect("sentinel");
    sentinel.shutdown(Shutdown::Write).expect("sentinel FIN");
    wait_until("the peer thread", || peer.is_finished());
    let before = peer.join().expect("peer thread panicked");
    assert!(
        before.iter().all(Vec::is_empty),
        "an aborted connect delivered bytes: {:?}",
        before.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// `stop_now` while a connect is under way: the stop cuts it, the report
/// counts it as forced, and `on_close` hands its state back as `Stopped`.
#[test]
fn stop_now_cuts_a_connect_under_way() {
    let target = unanswered();
    let mut reactor =
        Reactor::new(Config::default().connect_timeout(NEVER), Tester::default()).expect("reactor");
    let id = reactor
        .context()
        .connect(target.addr, Side::outbound(11))
        .expect("connect");
    reactor.run_once(Some(Duration::ZERO)).expect("a turn");
    let stats = reactor.stats();
    assert_eq!((stats.active, stats.connected), (1, 0), "still connecting");

    reactor.context().stop_now();
    drive_until(&mut reactor, "the stop", Reactor::is_stopped);
    let report = reactor.stop_report().expect("stopped");
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (0, 1, 0),
        "{report}"
    );
    let (side, reason) = reactor.handler().close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(11), "the state handed back");
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    let stats = reactor.stats();
    assert_eq!(
        (stats.connected, stats.connect_failures, stats.active),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// A graceful stop while a connect is under way: the connection cannot
/// drain (it never gets established), so the drain deadline cuts it: forced
/// in the report, `Stopped` in `on_close`, its queued bytes counted as
/// unsent. A connect asked for during the drain is refused.
#[test]
fn graceful_stop_cuts_a_connect_under_way_at_the_drain_deadline() {
    let target = unanswered();
    let mut reactor = Reactor::new(
        Config::default()
            .connect_timeout(NEVER)
            .drain_timeout(Duration::from_millis(200)),
        Tester::default(),
    )
    .expect("reactor");
    let mut cx = reactor.context();
    let id = cx
        .connect(target.addr, Side::outbound(12))
        .expect("connect");
    cx.send(id, b"queued while connecting").expect("send");
    reactor.run_once(Some(Duration::ZERO)).expect("a turn");

    reactor.context().stop();
    reactor.run_once(Some(Duration::ZERO)).expect("a turn");
    assert!(
        matches!(
            reactor.context().connect(target.addr, Side::outbound(13)),
            Err(Error::Stopped)
        ),
        "a connect while stopping"
    );
    drive_until(&mut reactor, "the stop", Reactor::is_stopped);
    let report = reactor.stop_report().expect("stopped");
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (0, 1, 0),
        "{report}"
    );
    assert_eq!(
        report.unsent_bytes,
        b"queued while connecting".len() as u64,
        "{report}"
    );
    let (side, reason) = reactor.handler().close_of(id).expect("closed");
    assert_eq!(side, &Side::outbound(12), "the state handed back");
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    assert_eq!(reactor.stats().connect_failures, 0);
}
