//! The `Handle`: controlling a reactor from other threads.
//!
//! Proves that a handle is `Send + Sync + Clone`; that messages and sends
//! from many threads at once all arrive, exactly once and in each thread's
//! order (a sent chunk stays whole in the stream); that a send to a closed
//! connection is accepted and harmlessly dropped, never reaching the slot's
//! next tenant; that a stop queued before `run` makes `run` return with an
//! empty report; that a stopped or dropped reactor refuses every call with
//! `Error::Stopped`; and that `on_message` gets a `Context` that works.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Sender;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{DEADLINE, Reports, any_local_address, connect, pattern, read_to_eof, wait_until};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Error, Handle, Handler, ListenerId, Reactor,
    StopReport, TimerId,
};

/// The reactor thread's result: the reactor back, and what `run` returned.
type RunThread<H> = JoinHandle<(Reactor<H>, Result<StopReport, Error>)>;

/// A reactor whose `run` is on its own thread; the test keeps its handle.
struct Running<H: Handler> {
    addr: SocketAddr,
    handle: Handle<H::Message>,
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
    let thread = thread::spawn(move || {
        let result = reactor.run();
        (reactor, result)
    });
    Running {
        addr,
        handle,
        thread: Some(thread),
    }
}

impl<H: Handler> Running<H> {
    /// Waits (at most [`DEADLINE`]) for `run` to return; hands back the
    /// reactor and what `run` returned.
    #[track_caller]
    fn join(mut self) -> (Reactor<H>, Result<StopReport, Error>) {
        let thread = self.thread.take().expect("joined once");
        wait_until("run to return", || thread.is_finished());
        thread.join().expect("the reactor thread panicked")
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

/// What [`Hub`] saw or did, reported to the test thread.
#[derive(Debug)]
enum Seen {
    Open(ConnId, SocketAddr),
    Close(ConnId, CloseReason),
    /// What `Context::send` returned inside `on_message`.
    Sent(Result<(), Error>),
    /// `on_message` set a timer: its id.
    TimerSet(TimerId, u64),
    /// `on_timer` ran.
    Timer(TimerId, u64),
    /// `on_message` got a `Marker`: every command queued before it has run.
    Marker(u64),
}

/// What the tests ask of [`Hub`] through `Handle::send_message`.
#[derive(Debug)]
enum Msg {
    SendTo(ConnId, Vec<u8>),
    SetTimer(Duration, u64),
    Marker(u64),
    Stop,
}

/// Echoes, reports opens and closes, and obeys messages.
struct Hub {
    seen: Sender<Seen>,
}

impl Hub {
    fn new() -> (Hub, Reports<Seen>) {
        let (seen, reports) = Reports::new();
        (Hub { seen }, reports)
    }
}

impl Handler for Hub {
    type Conn = ();
    type Message = Msg;

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
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self::Conn>, message: Msg) {
        let report = match message {
            Msg::SendTo(id, bytes) => Seen::Sent(cx.send(id, &bytes)),
            Msg::SetTimer(after, key) => Seen::TimerSet(cx.set_timer(after, key), key),
            Msg::Marker(n) => Seen::Marker(n),
            Msg::Stop => {
                cx.stop();
                return;
            }
        };
        let _ = self.seen.send(report);
    }

    fn on_timer(&mut self, _cx: &mut Context<'_, Self::Conn>, timer: TimerId, key: u64) {
        let _ = self.seen.send(Seen::Timer(timer, key));
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

/// Waits until the loop has run every command this thread queued before
/// `Marker(n)`: commands run in queue order.
#[track_caller]
fn sync_with_loop(handle: &Handle<Msg>, reports: &mut Reports<Seen>, n: u64) {
    handle
        .send_message(Msg::Marker(n))
        .expect("send the marker");
    reports.wait_for("the marker", |seen| match seen {
        Seen::Marker(m) if m == n => Ok(()),
        other => Err(other),
    });
}

/// A graceful stop with one idle client: the client sees the server's FIN
/// and closes, so the drain completes. Returns the reactor (still alive)
/// and what `run` returned.
#[track_caller]
fn stop_with_idle_client<H: Handler>(
    running: Running<H>,
    mut client: TcpStream,
) -> (Reactor<H>, StopReport) {
    running.handle.stop();
    let rest = read_to_eof(&mut client).expect("the server's FIN after the stop");
    assert!(rest.is_empty(), "unexpected bytes before the FIN: {rest:?}");
    drop(client); // our FIN completes the drain
    let (reactor, result) = running.join();
    (reactor, result.expect("run returns Ok after a stop"))
}

#[test]
fn handle_is_send_sync_and_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Handle<Msg>>();
    assert_send_sync_clone::<Handle<(usize, u64)>>();
    // A message type that is `Send` but not `Sync` still gives a `Sync`
    // handle: messages only move through it.
    assert_send_sync_clone::<Handle<std::cell::Cell<u64>>>();
}

/// Records every message, per sending thread, in arrival order.
struct Recorder {
    received: Vec<Vec<u64>>,
}

impl Handler for Recorder {
    type Conn = ();
    type Message = (usize, u64);

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
    }

    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        data.len()
    }

    fn on_message(&mut self, _cx: &mut Context<'_, Self::Conn>, (thread, seq): (usize, u64)) {
        self.received[thread].push(seq);
    }
}

#[test]
fn messages_from_eight_threads_all_arrive_once_and_in_each_threads_order() {
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 10_000;
    let recorder = Recorder {
        received: vec![Vec::new(); THREADS],
    };
    let running = run_on_thread(Config::default(), recorder);

    let senders: Vec<_> = (0..THREADS)
        .map(|thread| {
            let handle = running.handle.clone();
            thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    handle
                        .send_message((thread, seq))
                        .expect("a running reactor takes messages");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("a sending thread panicked");
    }
    // Queued after every message: the loop runs all of them first.
    running.handle.stop();
    let (reactor, result) = running.join();
    let report = result.expect("run returns Ok after Handle::stop");
    assert_eq!(report, StopReport::default(), "no connection was open");

    let expected: Vec<u64> = (0..PER_THREAD).collect();
    for (thread, got) in reactor.handler().received.iter().enumerate() {
        // Equal to 0..N in order: none lost, none duplicated, none reordered.
        assert_eq!(got.len(), expected.len(), "thread {thread}: message count");
        if let Some(at) = got.iter().zip(&expected).position(|(g, e)| g != e) {
            panic!(
                "thread {thread}: message {at} is {}, expected {at}",
                got[at]
            );
        }
    }
}

/// Bytes per chunk that [`chunk`] builds.
const CHUNK: usize = 64;

/// Chunk `seq` of sending thread `thread`: the two numbers, then pattern
/// bytes that depend on both, so a chunk torn apart or mixed with another
/// is caught.
fn chunk(thread: u32, seq: u32) -> Vec<u8> {
    let seed = (u64::from(thread) << 32) | u64::from(seq);
    let mut bytes = Vec::with_capacity(CHUNK);
    bytes.extend_from_slice(&thread.to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend((8..CHUNK as u64).map(|i| pattern(seed, i)));
    bytes
}

#[test]
fn sends_from_eight_threads_reach_the_connection_whole_and_in_each_threads_order() {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 1_000;
    let (hub, mut reports) = Hub::new();
    let running = run_on_thread(Config::default(), hub);
    let mut client = connect(running.addr);
    let id = id_of(&mut reports, &client);

    let senders: Vec<_> = (0..THREADS)
        .map(|thread| {
            let handle = running.handle.clone();
            thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    handle
                        .send(id, chunk(thread, seq))
                        .expect("a running reactor takes sends");
                }
            })
        })
        .collect();

    // Read while the threads send: the stream is every chunk, each whole
    // (one `send` is written as one piece), threads interleaved.
    let total = (THREADS * PER_THREAD) as usize * CHUNK;
    let mut stream = vec![0u8; total];
    client
        .read_exact(&mut stream)
        .expect("every byte the threads sent");
    for sender in senders {
        sender.join().expect("a sending thread panicked");
    }

    let mut next = vec![0u32; THREADS as usize];
    for (n, got) in stream.chunks(CHUNK).enumerate() {
        let thread = u32::from_be_bytes(got[0..4].try_into().unwrap());
        let seq = u32::from_be_bytes(got[4..8].try_into().unwrap());
        assert!(thread < THREADS, "chunk {n}: no such thread {thread}");
        assert_eq!(got, chunk(thread, seq), "chunk {n} torn or mixed");
        assert_eq!(
            seq, next[thread as usize],
            "chunk {n}: thread {thread}'s chunks out of order (or lost, or twice)"
        );
        next[thread as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_THREAD), "counts: {next:?}");

    // Nothing more follows: after the stop the client sees the FIN at once.
    let (_reactor, report) = stop_with_idle_client(running, client);
    assert_eq!((report.drained, report.forced, report.failed), (1, 0, 0));
}

#[test]
fn send_to_a_closed_connection_is_accepted_dropped_and_harmless() {
    let (hub, mut reports) = Hub::new();
    let running = run_on_thread(Config::default(), hub);

    let gone_client = connect(running.addr);
    let gone = id_of(&mut reports, &gone_client);
    drop(gone_client);
    let reason = close_reason(&mut reports, gone);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");

    // The handle cannot know the connection is gone: the send is queued
    // (Ok) and the loop drops it.
    running
        .handle
        .send(gone, &b"ghost"[..])
        .expect("a send to a closed id is accepted");

    // A new connection may take the closed one's slot; a send to the old id
    // must not reach it.
    let mut client = connect(running.addr);
    let id = id_of(&mut reports, &client);
    assert_ne!(id, gone);
    running
        .handle
        .send(gone, b"ghost".to_vec())
        .expect("a send to a closed id is accepted");
    sync_with_loop(&running.handle, &mut reports, 1); // both ghosts have run

    // The reactor still serves, and the client's stream is its echo alone:
    // a ghost would have come before it.
    client.write_all(b"ping").expect("write");
    let mut echo = [0u8; 4];
    client.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, b"ping");
    let (_reactor, report) = stop_with_idle_client(running, client);
    assert_eq!((report.drained, report.forced, report.failed), (1, 0, 0));
}

#[test]
fn stop_before_run_makes_run_return_with_an_empty_report() {
    let (hub, _reports) = Hub::new();
    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), hub).expect("bind on port 0");
    let handle = reactor.handle();
    handle.stop();
    assert!(!handle.is_stopped(), "queued, not run yet");

    let thread = thread::spawn(move || {
        let result = reactor.run();
        (reactor, result)
    });
    wait_until("run to return", || thread.is_finished());
    let (reactor, result) = thread.join().expect("the reactor thread panicked");
    let report = result.expect("run returns Ok");
    assert_eq!(report, StopReport::default());
    assert_eq!(
        (
            report.drained,
            report.forced,
            report.failed,
            report.unsent_bytes
        ),
        (0, 0, 0, 0)
    );
    assert!(reactor.is_stopped());
    assert_eq!(reactor.stop_report(), Some(report));
    assert!(handle.is_stopped());
}

/// Every call on a handle of a reactor that is gone is refused, and the
/// ones that return nothing do not panic.
#[track_caller]
fn assert_refuses_everything(handle: &Handle<Msg>, id: ConnId) {
    assert!(handle.is_stopped());
    let message = handle.send_message(Msg::Marker(0));
    assert!(matches!(message, Err(Error::Stopped)), "{message:?}");
    let send = handle.send(id, &b"late"[..]);
    assert!(matches!(send, Err(Error::Stopped)), "{send:?}");
    handle.stop();
    handle.stop_now();
    // Clones share the state, including one made after the stop.
    let clone = handle.clone();
    assert!(clone.is_stopped());
    assert!(matches!(clone.send_message(Msg::Stop), Err(Error::Stopped)));
}

#[test]
fn a_stopped_reactor_refuses_every_handle_call() {
    let (hub, mut reports) = Hub::new();
    let running = run_on_thread(Config::default(), hub);
    let handle = running.handle.clone();
    let client = connect(running.addr);
    let id = id_of(&mut reports, &client);
    assert!(!handle.is_stopped());

    let (reactor, report) = stop_with_idle_client(running, client);
    assert_eq!((report.drained, report.forced, report.failed), (1, 0, 0));
    // Stopped, not dropped: the reactor is still here.
    assert!(reactor.is_stopped());
    assert_refuses_everything(&handle, id);
    drop(reactor);
    assert_refuses_everything(&handle, id);
}

/// An id of a connection of some reactor: the type has no public
/// constructor.
fn some_conn_id() -> ConnId {
    let (hub, mut reports) = Hub::new();
    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), hub).expect("bind on port 0");
    let client = connect(reactor.local_addr().expect("a TCP listener"));
    let local = client.local_addr().expect("client local address");
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the connection was never opened");
        reactor
            .run_once(Some(Duration::from_millis(10)))
            .expect("run_once");
        if let Some(Seen::Open(id, _)) = reports
            .untaken()
            .iter()
            .find(|seen| matches!(seen, Seen::Open(_, peer) if *peer == local))
        {
            return *id;
        }
    }
}

#[test]
fn a_reactor_dropped_without_running_refuses_every_handle_call() {
    let id = some_conn_id();
    let (hub, _reports) = Hub::new();
    let reactor =
        Reactor::bind(any_local_address(), Config::default(), hub).expect("bind on port 0");
    let handle = reactor.handle();
    assert!(!handle.is_stopped());
    handle
        .send_message(Msg::Marker(0))
        .expect("queued while the reactor exists");
    drop(reactor);
    assert_refuses_everything(&handle, id);
}

#[test]
fn on_message_gets_a_working_context() {
    let (hub, mut reports) = Hub::new();
    let running = run_on_thread(Config::default(), hub);
    let mut client = connect(running.addr);
    let id = id_of(&mut reports, &client);

    // Context::send from on_message reaches the client.
    let greeting = b"hello from on_message".to_vec();
    running
        .handle
        .send_message(Msg::SendTo(id, greeting.clone()))
        .expect("send_message");
    let sent = reports.wait_for("the send's result", |seen| match seen {
        Seen::Sent(result) => Ok(result),
        other => Err(other),
    });
    assert!(sent.is_ok(), "Context::send in on_message: {sent:?}");
    let mut got = vec![0u8; greeting.len()];
    client
        .read_exact(&mut got)
        .expect("the bytes on_message sent");
    assert_eq!(got, greeting);

    // Context::set_timer from on_message arms a timer that fires.
    running
        .handle
        .send_message(Msg::SetTimer(Duration::from_millis(5), 42))
        .expect("send_message");
    let set = reports.wait_for("the timer's id", |seen| match seen {
        Seen::TimerSet(timer, 42) => Ok(timer),
        other => Err(other),
    });
    let fired = reports.wait_for("the timer to fire", |seen| match seen {
        Seen::Timer(timer, 42) => Ok(timer),
        other => Err(other),
    });
    assert_eq!(fired, set);

    // Context::stop from on_message stops the reactor gracefully.
    running
        .handle
        .send_message(Msg::Stop)
        .expect("send_message");
    let rest = read_to_eof(&mut client).expect("the server's FIN after the stop");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    drop(client);
    let (_reactor, result) = running.join();
    let report = result.expect("run returns Ok");
    assert_eq!((report.drained, report.forced, report.failed), (1, 0, 0));
    let reason = close_reason(&mut reports, id);
    assert!(matches!(reason, CloseReason::Stopped), "{reason:?}");
}
