//! Stopping the reactor: the graceful drain and `stop_now`, seen from the
//! peers' side and in the `StopReport`.
//!
//! Proves that a graceful stop delivers every byte already queued, then
//! FIN, and counts the connection drained; that a peer that never reads is
//! cut with a reset once `drain_timeout` has passed (never earlier) and
//! counted forced with its unsent bytes; that the listener is closed as the
//! stop begins (new connects are refused) while old connections still
//! drain; that a quiet peer is drained at once, without waiting for its
//! FIN, and one resetting counts as failed; that `stop_now` returns at once, cutting
//! only connections with output left, also in the middle of a drain; that
//! a program driving `run_once` itself sees the stop complete and later
//! turns do nothing; and that bytes sent in the callback that stops are
//! delivered.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::mpsc::Sender;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    DEADLINE, Reports, any_local_address, connect, pattern_bytes, read_to_eof, wait_until,
};
use socket2::SockRef;
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Error, Handle, Handler, ListenerId, Reactor, Stats,
    StatsReader, StopReport,
};

/// The reply to `big`: far more than the kernel's socket buffers hold
/// (here at most a few MiB), so most of it waits in the reactor's queue
/// while the client does not read.
const BIG: usize = 8 * 1024 * 1024;

/// The `BIG` bytes of the reply, computed once per test binary.
fn big() -> &'static [u8] {
    static BIG_REPLY: OnceLock<Vec<u8>> = OnceLock::new();
    BIG_REPLY.get_or_init(|| pattern_bytes(0xB16, BIG))
}

/// A drain timeout no test waits for: drains end because peers close (or
/// by `stop_now`), and a stop that waited for this would fail the test's
/// 30 s wait for `run` to return.
const LONG_DRAIN: Duration = Duration::from_secs(60);

/// What [`Commands`] saw, reported to the test thread.
#[derive(Debug)]
enum Seen {
    Open(ConnId, SocketAddr),
    Close(ConnId, CloseReason),
}

/// Serves line commands: `big` sends [`big`]; `stop` sends `bye\n`, then
/// stops the reactor (`Context::stop`) in the same callback. Other lines
/// are ignored.
struct Commands {
    seen: Sender<Seen>,
}

impl Commands {
    fn new() -> (Commands, Reports<Seen>) {
        let (seen, reports) = Reports::new();
        (Commands { seen }, reports)
    }
}

impl Handler for Commands {
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
        // Whole lines only; an unfinished one is offered again with more.
        let mut consumed = 0;
        while let Some(end) = data[consumed..].iter().position(|&b| b == b'\n') {
            let line = &data[consumed..consumed + end];
            consumed += end + 1;
            let sent = match line {
                b"big" => cx.send(id, big()),
                b"stop" => {
                    let sent = cx.send(id, b"bye\n");
                    cx.stop();
                    sent
                }
                _ => Ok(()),
            };
            // A refused send fails the test: the reactor thread panics.
            sent.expect("the handler's send");
        }
        consumed
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        let _ = self.seen.send(Seen::Close(id, reason));
    }
}

/// The reactor thread's result: the reactor back, and what `run` returned.
type RunThread<H> = JoinHandle<(Reactor<H>, Result<StopReport, Error>)>;

/// A reactor whose `run` is on its own thread; the test keeps its handle.
struct Running<H: Handler> {
    addr: SocketAddr,
    handle: Handle<H::Message>,
    stats: StatsReader,
    thread: Option<RunThread<H>>,
}

/// Binds a reactor on `127.0.0.1:0` and calls `run` on a new thread.
fn run_on_thread<H>(config: Config, handler: H) -> Running<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send + 'static,
{
    let mut reactor = Reactor::bind(any_local_address(), config, handler).expect("bind on port 0");
    let addr = reactor.local_addr().expect("a TCP listener");
    let handle = reactor.handle();
    let stats = reactor.stats_reader();
    let thread = thread::spawn(move || {
        let result = reactor.run();
        (reactor, result)
    });
    Running {
        addr,
        handle,
        stats,
        thread: Some(thread),
    }
}

impl<H: Handler> Running<H> {
    /// Whether `run` has returned (or the reactor thread died).
    fn has_returned(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the published counters satisfy `condition`.
    #[track_caller]
    fn wait_stats(&self, what: &str, mut condition: impl FnMut(&Stats) -> bool) -> Stats {
        let mut last = self.stats.get();
        wait_until(what, || {
            last = self.stats.get();
            condition(&last)
        });
        last
    }

    /// Waits (at most [`DEADLINE`]) for `run` to return; returns its report
    /// and when the test saw it return.
    #[track_caller]
    fn join(mut self) -> (StopReport, Instant) {
        let thread = self.thread.take().expect("joined once");
        wait_until("run to return", || thread.is_finished());
        let returned = Instant::now();
        let (reactor, result) = thread.join().expect("the reactor thread panicked");
        let report = result.expect("run returns Ok after a stop");
        assert!(reactor.is_stopped());
        assert_eq!(reactor.stop_report(), Some(report));
        (report, returned)
    }
}

impl<H: Handler> Drop for Running<H> {
    /// A test that failed midway leaves no reactor running behind it.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.stop_now();
            // Not `wait_until`: a panic here, while a failed test unwinds,
            // would abort the whole binary. A reactor that will not stop is
            // left behind after the deadline.
            let deadline = Instant::now() + DEADLINE;
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if thread.is_finished() {
                let joined = thread.join();
                if !thread::panicking() {
                    let (_reactor, _result) = joined.expect("the reactor thread panicked");
                }
            }
        }
    }
}

/// The id the reactor gave `client`, matched by the client's local address.
#[track_caller]
fn id_of(reports: &mut Reports<Seen>, client: &TcpStream) -> ConnId {
    let local = client.local_addr().expect("client local address");
    reports.wait_for("on_open of the client", |seen| match seen {
        Seen::Open(id, peer) if peer == local => Ok(id),
        other => Err(other),
    })
}

/// Waits for `on_close` of `id`; returns its reason.
#[track_caller]
fn close_reason(reports: &mut Reports<Seen>, id: ConnId) -> CloseReason {
    reports.wait_for("on_close", |seen| match seen {
        Seen::Close(cid, reason) if cid == id => Ok(reason),
        other => Err(other),
    })
}

/// A client that asked for [`big`] and does not read: once this returns,
/// the reactor holds part of the reply in its own queue.
#[track_caller]
fn client_with_output_queued<H: Handler>(
    running: &Running<H>,
    reports: &mut Reports<Seen>,
) -> (TcpStream, ConnId) {
    let mut client = connect(running.addr);
    let id = id_of(reports, &client);
    client.write_all(b"big\n").expect("ask for the big reply");
    running.wait_stats("output queued in the reactor", |s| s.queued_output > 0);
    (client, id)
}

/// An idle client whose connection the reactor has opened.
#[track_caller]
fn idle_client<H: Handler>(
    running: &Running<H>,
    reports: &mut Reports<Seen>,
) -> (TcpStream, ConnId) {
    let client = connect(running.addr);
    let id = id_of(reports, &client);
    (client, id)
}

/// Waits for the server's FIN on an idle client, with nothing before it.
/// After a stop this says the drain has begun: the listener is closed, and
/// every connection is closing.
#[track_caller]
fn expect_fin(client: &mut TcpStream) {
    let rest = read_to_eof(client).expect("the server's FIN");
    assert!(
        rest.is_empty(),
        "bytes before the FIN: {} of them",
        rest.len()
    );
}

/// Reads until EOF or an error; returns the bytes and how the stream ended.
fn read_until_end(client: &mut TcpStream) -> (Vec<u8>, Result<(), io::ErrorKind>) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return (all, Ok(())),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (all, Err(e.kind())),
        }
    }
}

/// The client that asked for [`big`] was cut: it gets a correct prefix of
/// the reply (what its kernel had received), then a reset. A FIN there
/// would pass the cut stream off as complete: the client cannot tell a
/// short reply from a whole one.
#[track_caller]
fn assert_cut_with_reset(client: &mut TcpStream) {
    let (got, end) = read_until_end(client);
    assert!(
        got.len() < BIG,
        "the whole reply arrived: {} bytes",
        got.len()
    );
    assert!(
        got == big()[..got.len()],
        "the bytes received are not the reply's"
    );
    assert_eq!(
        end,
        Err(io::ErrorKind::ConnectionReset),
        "how the cut stream ended, after {} of {BIG} bytes",
        got.len()
    );
}

#[test]
fn stop_delivers_all_queued_output_then_fin() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (mut client, id) = client_with_output_queued(&running, &mut reports);
    let (mut witness, witness_id) = idle_client(&running, &mut reports);

    running.handle.stop();
    // The drain has begun while the client had read nothing: its reply was
    // still queued.
    expect_fin(&mut witness);
    assert!(
        !running.has_returned(),
        "run returned with a reply undelivered"
    );

    let got = read_to_eof(&mut client).expect("the whole reply, then the server's FIN");
    assert_eq!(got.len(), BIG, "bytes received");
    assert!(got == big(), "the reply's bytes differ");
    drop(client); // our FIN completes the drain for this one
    drop(witness);

    let (report, _) = running.join();
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
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    let reason = close_reason(&mut reports, witness_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn stop_cuts_a_peer_that_never_reads_at_the_drain_deadline_and_not_before() {
    let drain_timeout = Duration::from_millis(300);
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(drain_timeout), handler);
    let (mut client, id) = client_with_output_queued(&running, &mut reports);

    let stop_asked = Instant::now();
    running.handle.stop();
    let (report, returned) = running.join();
    let took = returned - stop_asked;
    // The deadline is set when the loop starts the stop, after this clock
    // read: run cannot return earlier. The upper bound is only a sanity
    // check, far above the deadline.
    assert!(took >= drain_timeout, "run returned after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "run returned after {took:?}"
    );
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (0, 1, 0),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");
    assert!(report.unsent_bytes <= BIG as u64, "{report}");
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");

    assert_cut_with_reset(&mut client);
}

#[test]
fn stop_refuses_new_connections_while_old_ones_drain() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (mut old, old_id) = client_with_output_queued(&running, &mut reports);
    // An idle one closes at once: its FIN says the stop has begun.
    let (mut idle, _) = idle_client(&running, &mut reports);

    running.handle.stop();
    expect_fin(&mut idle); // the listener was closed before this FIN was sent
    match TcpStream::connect(running.addr) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a connect after the stop began was accepted"),
    }
    // The old connection still holds the stop open: its reply is not
    // flushed until it reads.
    assert!(
        !running.has_returned(),
        "run returned before the old peer had its reply"
    );
    assert!(!running.handle.is_stopped());

    let got = read_to_eof(&mut old).expect("the whole reply, then FIN");
    assert!(got == big(), "the reply differs ({} bytes)", got.len());
    let (report, _) = running.join();
    // The refused connect never became a connection.
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
    let reason = close_reason(&mut reports, old_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn a_quiet_peer_is_drained_at_once_without_waiting_for_its_fin() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (mut client, id) = idle_client(&running, &mut reports);

    running.handle.stop();
    // Nothing in flight either way: the stop needs nothing more of this
    // peer, and `run` returns while it is still connected (a stop waiting
    // for its FIN would fail this join, long before the 60 s drain ends).
    let (report, _) = running.join();
    expect_fin(&mut client);
    drop(client);
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.failed,
            report.unsent_bytes
        ),
        (1, 0, 0, 0),
        "{report}"
    );
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn a_peer_that_resets_during_the_drain_counts_as_failed() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (resetter, reset_id) = client_with_output_queued(&running, &mut reports);
    let (mut witness, witness_id) = client_with_output_queued(&running, &mut reports);
    let (mut idle, _) = idle_client(&running, &mut reports);

    running.handle.stop();
    expect_fin(&mut idle); // the drain has begun
    // SO_LINGER 0: closing sends a reset instead of a FIN.
    SockRef::from(&resetter)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(resetter);
    let reason = close_reason(&mut reports, reset_id);
    assert!(matches!(reason, CloseReason::Reset), "{reason:?}");
    assert!(
        !running.has_returned(),
        "run returned before the witness closed"
    );

    let got = read_to_eof(&mut witness).expect("the whole reply, then FIN");
    assert!(got == big(), "the reply differs ({} bytes)", got.len());
    let (report, _) = running.join();
    // The reset one failed with its queued reply unsent; the witness and
    // the idle one drained.
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (2, 0, 1),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");
    let reason = close_reason(&mut reports, witness_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn stop_now_returns_at_once_and_cuts_only_connections_with_output_left() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (mut reader, reader_id) = client_with_output_queued(&running, &mut reports);
    let (mut idle, idle_id) = idle_client(&running, &mut reports);

    let asked = Instant::now();
    running.handle.stop_now();
    // No drain: run returns without waiting for either peer (join fails
    // after 30 s, long before the 60 s drain timeout would end a drain).
    let (report, returned) = running.join();
    let took = returned - asked;
    assert!(took < LONG_DRAIN / 3, "stop_now took {took:?}");
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (1, 1, 0),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");

    // The idle one was closed cleanly, the other cut.
    expect_fin(&mut idle);
    assert_cut_with_reset(&mut reader);
    let reason = close_reason(&mut reports, reader_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    let reason = close_reason(&mut reports, idle_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn stop_now_during_a_graceful_drain_ends_it_early() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let (mut reader, reader_id) = client_with_output_queued(&running, &mut reports);
    let (mut witness, witness_id) = idle_client(&running, &mut reports);

    running.handle.stop();
    expect_fin(&mut witness); // draining, and neither peer will finish it
    assert!(!running.has_returned());

    let asked = Instant::now();
    running.handle.stop_now();
    let (report, returned) = running.join();
    let took = returned - asked;
    assert!(took < LONG_DRAIN / 3, "stop_now took {took:?}");
    // The witness had nothing queued (it only lacked our FIN): drained.
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (1, 1, 0),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");
    assert_cut_with_reset(&mut reader);
    let reason = close_reason(&mut reports, reader_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
    let reason = close_reason(&mut reports, witness_id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}

#[test]
fn a_program_driving_run_once_sees_the_stop_complete_and_later_turns_do_nothing() {
    let (handler, mut reports) = Commands::new();
    let config = Config::default().drain_timeout(LONG_DRAIN);
    let mut reactor = Reactor::bind(any_local_address(), config, handler).expect("bind on port 0");
    let handle = reactor.handle();

    // The connect completes in the kernel's backlog; the reactor accepts it
    // in one of the turns below.
    let mut client = connect(reactor.local_addr().expect("a TCP listener"));
    client.write_all(b"stop\n").expect("ask the server to stop");
    client.set_nonblocking(true).expect("non-blocking client");
    let mut client = Some(client);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];

    // The embedding program's loop: one turn, then its own work (here, the
    // client's side), until the reactor says it has stopped.
    let deadline = Instant::now() + DEADLINE;
    while !reactor.is_stopped() {
        assert!(Instant::now() < deadline, "the stop never completed");
        assert_eq!(
            reactor.stop_report(),
            None,
            "a report before the stop ended"
        );
        reactor
            .run_once(Some(Duration::from_millis(10)))
            .expect("run_once");
        if let Some(stream) = client.as_mut() {
            match stream.read(&mut buf) {
                // The server's FIN: close, which completes the drain.
                Ok(0) => client = None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
    // A quiet peer: the stop completed without waiting for its FIN. What
    // the server sent is all there, then its FIN.
    if let Some(mut stream) = client.take() {
        stream.set_nonblocking(false).expect("blocking client");
        got.extend(read_to_eof(&mut stream).expect("the rest, then FIN"));
    }
    assert_eq!(got, b"bye\n");
    let report = reactor.stop_report().expect("a report once stopped");
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.failed,
            report.unsent_bytes
        ),
        (1, 0, 0, 0),
        "{report}"
    );
    assert!(handle.is_stopped());
    let id = reports.wait_for("on_open", |seen| match seen {
        Seen::Open(id, _) => Ok(id),
        other => Err(other),
    });
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");

    // Turns after the stop return Ok and do nothing: no poll, no callback.
    let before = reactor.stats();
    for _ in 0..3 {
        reactor
            .run_once(Some(Duration::from_millis(10)))
            .expect("run_once after the stop");
    }
    assert_eq!(reactor.stats(), before);
    assert!(reactor.is_stopped());
    assert_eq!(reactor.stop_report(), Some(report));
    assert!(
        reports.untaken().is_empty(),
        "callbacks after the stop: {:?}",
        reports.untaken()
    );
}

#[test]
fn data_sent_before_stop_in_the_same_callback_is_delivered() {
    let (handler, mut reports) = Commands::new();
    let running = run_on_thread(Config::default().drain_timeout(LONG_DRAIN), handler);
    let mut client = connect(running.addr);
    let id = id_of(&mut reports, &client);

    // One write: usually one callback handles both lines, so the big reply
    // (mostly queued) and `bye` are sent right before `cx.stop()`.
    client
        .write_all(b"big\nstop\n")
        .expect("write the commands");
    let got = read_to_eof(&mut client).expect("the replies, then the server's FIN");
    assert_eq!(got.len(), BIG + 4, "bytes received");
    assert!(got[..BIG] == *big(), "the big reply's bytes differ");
    assert_eq!(&got[BIG..], b"bye\n");
    drop(client);

    let (report, _) = running.join();
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.failed,
            report.unsent_bytes
        ),
        (1, 0, 0, 0),
        "{report}"
    );
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}
