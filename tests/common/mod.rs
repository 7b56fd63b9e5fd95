//! Helpers shared by the integration tests: a reactor on its own thread,
//! bounded waits, a handler's reports to the test thread, and non-blocking
//! echo clients that verify every byte.
//!
//! Every wait here has a deadline; no test can hang, and none sleeps to
//! synchronise: a wait polls the condition it is waiting for.
#![allow(dead_code)] // each test binary uses a different part

pub mod example;
pub mod program;
pub mod running;

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream as StdStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tcp_reactor::{Config, Handle, Handler, Reactor, Stats, StatsReader};

/// The longest any single wait in a test may take before it fails: a guard
/// against hangs, not a speed limit, so generous enough for the longest
/// transfer (400 MiB each way in `tests/echo.rs`) on a loaded 2-core
/// machine (it took 40 s there once, at a load average of 8).
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Port 0 on loopback: the kernel picks a free port, so tests never collide.
pub fn any_local_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Waits until `condition` holds, failing the test after [`DEADLINE`].
#[track_caller]
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Turns the loop on this thread (10 ms waits) until `done` holds, failing
/// the test after [`DEADLINE`].
#[track_caller]
pub fn drive_until<H: Handler>(
    reactor: &mut Reactor<H>,
    what: &str,
    mut done: impl FnMut(&Reactor<H>) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(reactor) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        reactor
            .run_once(Some(Duration::from_millis(10)))
            .expect("run_once");
    }
}

/// The test thread's end of the reports a handler sends from the reactor's
/// thread. Reports a wait does not take are kept for later waits.
pub struct Reports<T> {
    rx: Receiver<T>,
    kept: Vec<T>,
}

impl<T: Debug> Reports<T> {
    /// The handler's end and the test thread's end.
    pub fn new() -> (Sender<T>, Reports<T>) {
        let (tx, rx) = mpsc::channel();
        (
            tx,
            Reports {
                rx,
                kept: Vec::new(),
            },
        )
    }

    /// Waits (at most [`DEADLINE`]) for the first report `pick` takes
    /// (`Ok`); reports it hands back (`Err`) are kept for later waits.
    #[track_caller]
    pub fn wait_for<R>(&mut self, what: &str, mut pick: impl FnMut(T) -> Result<R, T>) -> R {
        for i in 0..self.kept.len() {
            let report = self.kept.remove(i);
            match pick(report) {
                Ok(found) => return found,
                Err(report) => self.kept.insert(i, report),
            }
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(report) => match pick(report) {
                    Ok(found) => return found,
                    Err(report) => self.kept.push(report),
                },
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out waiting for {what}; other reports: {:?}",
                        self.kept
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "reactor gone while waiting for {what}; reports: {:?}",
                        self.kept
                    )
                }
            }
        }
    }

    /// Every report received so far and not taken by a wait, oldest first.
    /// Does not wait.
    pub fn untaken(&mut self) -> &[T] {
        self.kept.extend(self.rx.try_iter());
        &self.kept
    }
}

/// A reactor in [`Reactor::run`] on its own thread, as a program runs it:
/// between events it sleeps in `epoll_wait` with no timeout, so a wake-up
/// the reactor fails to arrange for itself (a timer, the end of an accept
/// pause) shows as a wait that never ends. Stopped through its
/// [`Handle`] (`stop_now`: every connection still open closes, its
/// `on_close` running with `CloseReason::Stopped`) and joined on drop.
pub struct Server<H: Handler> {
    pub addr: SocketAddr,
    pub stats: StatsReader,
    /// The reactor's handle: stops it, and [`Server::wake`] wakes it.
    pub handle: Handle<H::Message>,
    thread: Option<JoinHandle<Reactor<H>>>,
}

/// Binds a reactor on `127.0.0.1:0` and runs it (`Reactor::run`) on a new
/// thread.
pub fn start<H>(config: Config, handler: H) -> Server<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send + 'static,
    H::Message: Send,
{
    let mut reactor = Reactor::bind(any_local_address(), config, handler).expect("bind on port 0");
    let addr = reactor.local_addr().expect("a TCP listener");
    let stats = reactor.stats_reader();
    let handle = reactor.handle();
    let thread = std::thread::spawn(move || {
        reactor
            .run()
            .expect("run must not fail for anything a peer does");
        reactor
    });
    Server {
        addr,
        stats,
        handle,
        thread: Some(thread),
    }
}

impl<H: Handler> Server<H> {
    /// The reactor's latest published counters.
    pub fn stats(&self) -> Stats {
        self.stats.get()
    }

    /// Waits until the published counters satisfy `condition`; returns them.
    #[track_caller]
    pub fn wait_stats(&self, what: &str, mut condition: impl FnMut(&Stats) -> bool) -> Stats {
        let mut last = self.stats();
        wait_until(what, || {
            last = self.stats();
            condition(&last)
        });
        last
    }

    /// Whether the reactor thread is still running (it has not panicked,
    /// failed or stopped).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the reactor at once (`Handle::stop_now`: connections still
    /// open close as `Stopped`), waits (at most [`DEADLINE`]) for `run` to
    /// return, and hands the reactor back for inspection.
    #[track_caller]
    pub fn stop(mut self) -> Reactor<H> {
        self.handle.stop_now();
        let thread = self.thread.take().expect("server thread");
        wait_until("the reactor to stop", || thread.is_finished());
        thread.join().expect("reactor thread panicked")
    }
}

impl<H: Handler> Server<H>
where
    H::Message: Default,
{
    /// Wakes the reactor for one turn: a message of the handler's
    /// `Default`, which the handler must ignore (`Echo` and handlers with
    /// `Message = ()` and no `on_message` do). Wake-ups queued while the
    /// loop is busy make one turn between them.
    #[track_caller]
    pub fn wake(&self) {
        self.handle
            .send_message(H::Message::default())
            .expect("wake the reactor: it has stopped");
    }

    /// As [`Server::wait_stats`], waking the reactor (see [`Server::wake`])
    /// while the condition does not hold, for conditions that need turns
    /// with nothing to do: the reactor would otherwise sleep through them.
    #[track_caller]
    pub fn wait_stats_waking(
        &self,
        what: &str,
        mut condition: impl FnMut(&Stats) -> bool,
    ) -> Stats {
        let mut last = self.stats();
        wait_until(what, || {
            last = self.stats();
            let done = condition(&last);
            if !done {
                self.wake();
            }
            done
        });
        last
    }

    /// Makes the reactor run `n` whole turns that all begin after this call
    /// (woken, see [`Server::wake`]; anything else pending is served in
    /// them too), and returns the counters published after the last.
    ///
    /// A snapshot is published before each wait, so one seen now may be a
    /// turn or more behind a turn already under way; a snapshot that
    /// differs from it was published after this call, and every turn after
    /// that one begins later still.
    #[track_caller]
    pub fn run_turns(&self, n: u64) -> Stats {
        let seen = self.stats().turns;
        let base = self
            .wait_stats_waking("a turn after the call", |s| s.turns > seen)
            .turns;
        self.wait_stats_waking("the turns asked for", |s| s.turns >= base + n)
    }
}

impl<H: Handler> Drop for Server<H> {
    /// Stops the reactor at once and joins its thread, within [`DEADLINE`]:
    /// a reactor that will not stop fails the test rather than hang it (or,
    /// while a failed test unwinds, is left behind: a panic then would
    /// abort the whole binary).
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.handle.stop_now();
        let deadline = Instant::now() + DEADLINE;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if std::thread::panicking() {
            if thread.is_finished() {
                let _ = thread.join();
            }
            return;
        }
        assert!(
            thread.is_finished(),
            "the reactor did not stop within {DEADLINE:?} of stop_now"
        );
        thread.join().expect("reactor thread panicked");
    }
}

/// A blocking client with a read and write timeout of [`DEADLINE`], for
/// simple exchanges.
pub fn connect(addr: SocketAddr) -> StdStream {
    let stream = StdStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    stream
}

/// Reads until EOF (bounded by the read timeout of [`connect`]).
pub fn read_to_eof(stream: &mut StdStream) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    Ok(all)
}

/// Byte `offset` of client `seed`'s deterministic stream. Every byte value,
/// NUL and 0xFF included, occurs.
pub fn pattern(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

/// `len` pattern bytes of stream `seed`, computed once, so that writing and
/// checking cost a copy and a compare rather than a `pattern` call per byte.
pub fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, i)).collect()
}

/// Writes `total` bytes of pattern `seed` to a blocking socket (or anything
/// else one writes to); returns the count written.
pub fn write_pattern(mut out: impl Write, seed: u64, total: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(seed, sent + i as u64);
        }
        out.write_all(&buf[..n]).expect("stream the pattern");
        sent += n as u64;
    }
    sent
}

/// Parses `/proc/net/tcp`'s `0100007F:1F90`: the address as the raw
/// network-order word printed in host order, then the port.
pub fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((ip.to_ne_bytes(), port)))
}

/// FNV-1a over a stream, to compare what came back with what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What one echo client does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Bytes to send in all.
    pub total: u64,
    /// Bytes per message; a message is sent only once the previous one came
    /// back whole (ping-pong). `u64::MAX` streams without waiting.
    pub message: u64,
    /// Half-close (shutdown write) after sending everything, and expect the
    /// server's EOF after the echo.
    pub half_close: bool,
}

/// What one echo client saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub sent: u64,
    pub received: u64,
    /// Offset of the first byte that differed from what was sent, if any.
    pub first_mismatch: Option<u64>,
    pub sent_hash: u64,
    pub received_hash: u64,
    pub eof: bool,
    pub error: Option<io::ErrorKind>,
}

impl Outcome {
    /// Everything sent came back, byte for byte.
    pub fn is_exact(&self, total: u64) -> bool {
        self.sent == total
            && self.received == total
            && self.first_mismatch.is_none()
            && self.sent_hash == self.received_hash
            && self.error.is_none()
    }
}

struct EchoClient {
    stream: TcpStream,
    seed: u64,
    plan: Plan,
    outcome: Outcome,
    sent_hash: Fnv,
    received_hash: Fnv,
    shut: bool,
}

impl EchoClient {
    /// Finished: failed, saw EOF (early or expected), or has its whole echo
    /// and expects no EOF.
    fn done(&self) -> bool {
        self.outcome.error.is_some()
            || self.outcome.eof
            || (self.outcome.received >= self.plan.total && !self.plan.half_close)
    }

    fn write_some(&mut self, buf: &mut [u8]) {
        while self.outcome.sent < self.plan.total {
            let in_flight = self.outcome.sent - self.outcome.received;
            if self.plan.message != u64::MAX && in_flight > 0 {
                return; // ping-pong: wait for the echo of this message
            }
            let left = self.plan.total - self.outcome.sent;
            let room = if self.plan.message == u64::MAX {
                left
            } else {
                self.plan.message.min(left)
            };
            let n = room.min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(self.seed, self.outcome.sent + i as u64);
            }
            match self.stream.write(&buf[..n]) {
                Ok(written) => {
                    self.sent_hash.update(&buf[..written]);
                    self.outcome.sent += written as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.outcome.error = Some(e.kind());
                    return;
                }
            }
        }
        if self.plan.half_close && !self.shut {
            self.shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                self.outcome.error = Some(e.kind());
            }
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) {
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.outcome.eof = true;
                    return;
                }
                Ok(n) => {
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let offset = self.outcome.received + i as u64;
                        if self.outcome.first_mismatch.is_none() && b != pattern(self.seed, offset)
                        {
                            self.outcome.first_mismatch = Some(offset);
                        }
                    }
                    self.received_hash.update(&buf[..n]);
                    self.outcome.received += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.outcome.error = Some(e.kind());
                    return;
                }
            }
        }
    }
}

/// Runs one non-blocking echo client per plan against `addr`, all at once on
/// this thread, until each has its whole echo back (and the server's EOF
/// when it half-closed) or [`DEADLINE`] passes. Returns what each saw.
pub fn run_echo_clients(addr: SocketAddr, plans: &[Plan]) -> Vec<Outcome> {
    let mut poll = Poll::new().expect("client poll");
    let mut events = Events::with_capacity(1024);
    let mut clients: Vec<EchoClient> = plans
        .iter()
        .enumerate()
        .map(|(i, &plan)| {
            let std_stream = StdStream::connect(addr).expect("connect");
            std_stream.set_nonblocking(true).expect("non-blocking");
            let mut stream = TcpStream::from_std(std_stream);
            poll.registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("register client");
            EchoClient {
                stream,
                seed: i as u64 * 7919 + 1,
                plan,
                outcome: Outcome::default(),
                sent_hash: Fnv::default(),
                received_hash: Fnv::default(),
                shut: false,
            }
        })
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + DEADLINE;
    let mut left = clients.iter().filter(|c| !c.done()).count();
    // Kick every client once: edges for sockets writable before
    // registration have been delivered, but a ping-pong client only writes
    // when it decides to.
    for client in &mut clients {
        client.write_some(&mut buf);
    }
    while left > 0 {
        let now = Instant::now();
        assert!(
            now < deadline,
            "{left} echo clients unfinished at the deadline"
        );
        poll.poll(&mut events, Some(deadline - now))
            .expect("client poll");
        for event in events.iter() {
            let client = &mut clients[event.token().0];
            if client.done() {
                continue;
            }
            if event.is_readable() {
                client.read_some(&mut buf);
            }
            client.write_some(&mut buf);
            if client.done() {
                left -= 1;
            }
        }
    }
    clients
        .into_iter()
        .map(|mut c| {
            c.outcome.sent_hash = c.sent_hash.0;
            c.outcome.received_hash = c.received_hash.0;
            c.outcome
        })
        .collect()
}

/// Sends `data` on a fresh blocking connection and returns the echo.
pub fn echo_once(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(data).expect("write");
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).expect("read echo");
    back
}

/// Runs a reactor the test built and set up itself ([`Reactor::new`], then
/// listeners, sources or connects through [`Reactor::context`]) on a new
/// thread, as [`start`] runs a bound one. `addr` is its first TCP
/// listener's address ([`Reactor::local_addr`]), or port 0 on loopback
/// when it has none.
pub fn run_on_thread<H>(mut reactor: Reactor<H>) -> Server<H>
where
    H: Handler + Send + 'static,
    H::Conn: Send + 'static,
    H::Message: Send,
{
    let addr = reactor.local_addr().unwrap_or_else(any_local_address);
    let stats = reactor.stats_reader();
    let handle = reactor.handle();
    let thread = std::thread::spawn(move || {
        reactor
            .run()
            .expect("run must not fail for anything a peer does");
        reactor
    });
    Server {
        addr,
        stats,
        handle,
        thread: Some(thread),
    }
}

/// A fresh directory under [`std::env::temp_dir`] with a name no other test
/// (or process) uses, for Unix socket files; removed with what it holds
/// when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    #[track_caller]
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("tcp-reactor-{tag}-{}-{n}", std::process::id());
            let path = std::env::temp_dir().join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return TempDir(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating {}: {e}", path.display()),
            }
        }
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this machine has an IPv6 loopback (a std listener can bind
/// `[::1]:0`); tests of IPv6 skip, saying so, without one.
pub fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
}
