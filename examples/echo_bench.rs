//! `echo_bench`: a load generator for echo servers on plain `mio`: one
//! thread, one epoll instance, no runtime. Its own cost per round trip is a
//! few syscalls and a `memcmp`, so on a core of its own it can keep a
//! single-threaded server busy, and what it measures is the server.
//!
//! ```text
//! echo_bench pingpong --addr A --conns N --size B --depth D --duration S [--rate R]
//! echo_bench stream   --addr A --conns N --chunk B --duration S
//! echo_bench churn    --addr A --conns N --duration S [--size B]
//! echo_bench idle     --addr A --conns N --hold S
//! every mode: [--json] [--connect-timeout S]
//! ```
//!
//! # Modes
//!
//! - `pingpong`: N connections, each with D messages of B bytes in flight;
//!   a message echoed in full is one round trip, and its connection sends
//!   the next one at once. `--rate R` paces sends on one global schedule of
//!   R round trips/s over all connections; a send the schedule cannot place
//!   (every connection already has D in flight) is counted as `skipped`, and
//!   the schedule never runs more than 50 ms behind (no catch-up bursts).
//! - `stream`: bulk: each connection keeps up to 1 MiB of `--chunk`-byte
//!   writes in flight and reads the echo back; a chunk echoed in full is a
//!   round trip (its latency includes the wait in that window). Read MB/s.
//! - `churn`: N workers, each in a loop: connect, send one B-byte message
//!   (default 64), read its echo, close. A cycle is a round trip and a
//!   connection; its latency runs from `connect` to the last byte echoed.
//! - `idle`: opens N connections, prints `connected N` (flushed), holds them
//!   without sending until `--hold` ends or SIGTERM/SIGINT, then closes
//!   them. A byte or a close from the server counts against it.
//!
//! # Verification
//!
//! Every connection sends its own deterministic byte stream: byte i of the
//! connection with serial number c is `P[(phase(c) + i) mod 65521]`, where P
//! is a fixed pseudo-random table and `phase(c) = 7919 c mod 65521`. Every
//! byte read back is compared with the byte expected at that offset of that
//! connection's stream, so an echo delivered to the wrong connection,
//! reordered, duplicated, truncated or corrupted fails the comparison (two
//! phases agree on n random bytes with probability 2^-8n; 65521 is prime, so
//! a shift by whole messages never lines a stream up with itself), and so do
//! more bytes back than were sent. A mismatch is counted and ends that
//! connection, whose stream is then out of step. Errors (failed connects,
//! resets, EOF before the echo is in) are counted and end the connection
//! too; messages still unanswered when the run ends are counted as
//! `unanswered`. Exit status: 1 if any of the three is not zero, 2 for bad
//! arguments or a failed set-up, else 0.
//!
//! # Output, signals and bounds
//!
//! Load modes print `started N` (flushed) once N connections are up, then at
//! the end a table (or with `--json` one JSON line) with round trips/s, MB/s
//! of echoed payload (10^6 bytes), connections/s and latency p50/p99/p999/max
//! in µs (from a reservoir of at most 2^20 samples; max is exact). SIGUSR1
//! prints `mark T COMPLETED` (seconds since start on the monotonic clock,
//! round trips completed so far), flushed, so a script can count the round
//! trips inside a window; SIGTERM/SIGINT end the load early. Only loopback
//! addresses (127.0.0.0/8, ::1) are accepted. Every phase has a deadline:
//! connecting `--connect-timeout` (default 30 s), the load `--duration`, and
//! the wait for the last replies at most 10 s more.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str = "\
usage: echo_bench MODE --addr HOST:PORT [options]

  pingpong --conns N --size BYTES --depth D --duration SECS [--rate RT_PER_S]
  stream   --conns N --chunk BYTES --duration SECS
  churn    --conns N --duration SECS [--size BYTES]
  idle     --conns N --hold SECS

  --addr HOST:PORT       server, loopback only (default 127.0.0.1:7890)
  --json                 one JSON line instead of the table
  --connect-timeout SECS deadline for opening the connections (default 30)

Every echoed byte is verified; exit status 1 on any mismatch, error or
unanswered message. SIGUSR1 prints `mark SECONDS ROUND_TRIPS`.";

/// Period of the pattern table: the largest prime below 2^16.
const PERIOD: usize = 65_521;
/// Largest slice one read or write call handles. The pattern table is
/// `PERIOD + IO_MAX` long, so such a slice at any phase is contiguous and
/// is written, or compared, straight from the table.
const IO_MAX: usize = 64 * 1024;
/// Connects pending at once: a server's listen backlog is often 128, and a
/// SYN that overflows it is retried only after a second.
const CONNECTS_IN_FLIGHT: usize = 100;
/// Bytes a `stream` connection keeps in flight.
const STREAM_WINDOW: usize = 1 << 20;
/// Latency samples kept (reservoir sampling beyond that).
const MAX_SAMPLES: usize = 1 << 20;
/// The rate schedule never runs further behind than this.
const MAX_LAG_SECS: f64 = 0.05;
/// How long after `--duration` the last replies may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Longest single `epoll_wait`, so a signal that lands just before the wait
/// still gets its mark printed promptly.
const POLL_SLICE: Duration = Duration::from_millis(50);
/// Errors and mismatches described on stderr; the rest are only counted.
const SHOWN: u64 = 10;

// ---------------------------------------------------------------- arguments

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    PingPong,
    Stream,
    Churn,
    Idle,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::PingPong => "pingpong",
            Mode::Stream => "stream",
            Mode::Churn => "churn",
            Mode::Idle => "idle",
        })
    }
}

struct Args {
    mode: Mode,
    addr: SocketAddr,
    conns: usize,
    /// Message bytes (pingpong, churn) or chunk bytes (stream).
    size: usize,
    depth: usize,
    /// `--duration`, or `--hold` for idle.
    duration: Duration,
    rate: Option<f64>,
    json: bool,
    connect_timeout: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mode = match args.next().as_deref() {
        None | Some("-h" | "--help") => return Ok(None),
        Some("pingpong") => Mode::PingPong,
        Some("stream") => Mode::Stream,
        Some("churn") => Mode::Churn,
        Some("idle") => Mode::Idle,
        Some(other) => return Err(format!("unknown mode '{other}' (try --help)")),
    };
    let mut parsed = Args {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 7890)),
        conns: 100,
        size: if mode == Mode::Stream { IO_MAX } else { 64 },
        depth: 1,
        duration: Duration::from_secs(if mode == Mode::Idle { 60 } else { 3 }),
        rate: None,
        json: false,
        connect_timeout: Duration::from_secs(30),
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match (flag.as_str(), mode) {
            ("-h" | "--help", _) => return Ok(None),
            ("--json", _) => parsed.json = true,
            ("--addr", _) => parsed.addr = loopback_addr(&value("--addr")?)?,
            ("--conns", _) => parsed.conns = count("--conns", &value("--conns")?)?,
            ("--size", Mode::PingPong | Mode::Churn) => {
                parsed.size = count("--size", &value("--size")?)?;
            }
            ("--chunk", Mode::Stream) => parsed.size = count("--chunk", &value("--chunk")?)?,
            ("--depth", Mode::PingPong) => parsed.depth = count("--depth", &value("--depth")?)?,
            ("--rate", Mode::PingPong) => {
                parsed.rate = Some(positive("--rate", &value("--rate")?)?)
            }
            ("--duration", Mode::PingPong | Mode::Stream | Mode::Churn) => {
                parsed.duration = seconds("--duration", &value("--duration")?)?;
            }
            ("--hold", Mode::Idle) => parsed.duration = seconds("--hold", &value("--hold")?)?,
            ("--connect-timeout", _) => {
                parsed.connect_timeout =
                    seconds("--connect-timeout", &value("--connect-timeout")?)?;
            }
            (other, _) => return Err(format!("'{other}' is not an option of {mode} (try --help)")),
        }
    }
    Ok(Some(parsed))
}

/// Resolves `text` and refuses anything but loopback: this tool only ever
/// loads a server on the same machine.
fn loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = text
        .to_socket_addrs()
        .map_err(|e| format!("--addr '{text}': {e}"))?
        .next()
        .ok_or(format!("--addr '{text}' resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to load {}: loopback only (127.0.0.0/8 or ::1)",
            addr.ip()
        ));
    }
    Ok(addr)
}

fn count(name: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or(format!("{name}: '{text}' is not a positive whole number"))
}

fn positive(name: &str, text: &str) -> Result<f64, String> {
    text.parse()
        .ok()
        .filter(|&x: &f64| x.is_finite() && x > 0.0)
        .ok_or(format!("{name}: '{text}' is not a positive number"))
}

fn seconds(name: &str, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(positive(name, text)?).map_err(|e| format!("{name}: {e}"))
}

// ------------------------------------------------------------------ pattern

/// The table every connection's byte stream is read from (see the module
/// documentation).
struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    fn new() -> Pattern {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let period: Vec<u8> = (0..PERIOD).map(|_| rng.next() as u8).collect();
        // The period repeated past its end, so that slices that wrap are
        // contiguous.
        let bytes = (0..PERIOD + IO_MAX).map(|i| period[i % PERIOD]).collect();
        Pattern { bytes }
    }

    /// Where connection number `serial` starts in the table.
    fn phase(serial: u64) -> u64 {
        serial.wrapping_mul(7919) % PERIOD as u64
    }

    /// Bytes `offset..offset + len` of the stream with `phase`; `len` is at
    /// most [`IO_MAX`].
    fn slice(&self, phase: u64, offset: u64, len: usize) -> &[u8] {
        let start = ((phase + offset) % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }
}

/// xorshift64*: deterministic, for the pattern and reservoir sampling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32
    }
}

// ------------------------------------------------------------------- tallies

/// Round-trip latencies: a uniform reservoir of at most [`MAX_SAMPLES`]
/// samples (memory stays bounded on long runs) and the exact maximum.
struct Latency {
    samples: Vec<u64>,
    seen: u64,
    max: u64,
    rng: Rng,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            samples: Vec::new(),
            seen: 0,
            max: 0,
            rng: Rng(0x2545_f491),
        }
    }

    fn record(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.seen += 1;
        self.max = self.max.max(nanos);
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(nanos);
        } else {
            let slot = (((self.rng.next() << 32) | self.rng.next()) % self.seen) as usize;
            if slot < MAX_SAMPLES {
                self.samples[slot] = nanos;
            }
        }
    }

    /// p50, p99, p999 and max in µs (nearest rank); `None` without samples.
    fn summary(&mut self) -> Option<[f64; 4]> {
        if self.samples.is_empty() {
            return None;
        }
        self.samples.sort_unstable();
        let n = self.samples.len();
        let rank = |p: f64| self.samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Some([rank(0.5), rank(0.99), rank(0.999), self.max].map(us))
    }
}

/// What the run counted.
struct Tally {
    round_trips: u64,
    bytes: u64,
    connections: u64,
    mismatches: u64,
    errors: u64,
    unanswered: u64,
    skipped: u64,
    latency: Latency,
}

/// Why a connection was given up.
enum Fault {
    Error(String),
    Mismatch(String),
}

impl Tally {
    fn new() -> Tally {
        Tally {
            round_trips: 0,
            bytes: 0,
            connections: 0,
            mismatches: 0,
            errors: 0,
            unanswered: 0,
            skipped: 0,
            latency: Latency::new(),
        }
    }

    /// Counts `fault` and describes the first few on stderr.
    fn count(&mut self, fault: Fault) {
        let (counter, kind, what) = match fault {
            Fault::Error(what) => (&mut self.errors, "error", what),
            Fault::Mismatch(what) => (&mut self.mismatches, "mismatch", what),
        };
        *counter += 1;
        if *counter <= SHOWN {
            eprintln!("echo_bench: {kind}: {what}");
        } else if *counter == SHOWN + 1 {
            eprintln!("echo_bench: more of kind {kind} are counted, not shown");
        }
    }

    fn failed(&self) -> bool {
        self.mismatches + self.errors + self.unanswered > 0
    }
}

// -------------------------------------------------------------- the session

/// The signals the run reacts to, as flags set by signal-hook's handlers
/// and read by the loop; the handlers also interrupt `epoll_wait`.
struct Signals {
    mark: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        let signals = Signals {
            mark: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for (signal, flag) in [
            (SIGUSR1, &signals.mark),
            (SIGTERM, &signals.stop),
            (SIGINT, &signals.stop),
        ] {
            signal_hook::flag::register(signal, Arc::clone(flag))
                .map_err(|e| format!("installing signal {signal}: {e}"))?;
        }
        Ok(signals)
    }
}

/// What every mode shares: arguments, poller, pattern, signals, counters.
struct Bench {
    args: Args,
    poll: Poll,
    pattern: Pattern,
    signals: Signals,
    born: Instant,
    tally: Tally,
}

impl Bench {
    fn new(args: Args) -> Result<Bench, String> {
        let born = Instant::now();
        let signals = Signals::install()?;
        raise_fd_limit(args.conns)?;
        Ok(Bench {
            args,
            poll: Poll::new().map_err(|e| format!("epoll_create: {e}"))?,
            pattern: Pattern::new(),
            signals,
            born,
            tally: Tally::new(),
        })
    }

    fn stopping(&self) -> bool {
        self.signals.stop.load(Ordering::Relaxed)
    }

    /// One `epoll_wait` of at most `timeout`; prints a mark if SIGUSR1 came.
    fn wait(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        match self.poll.poll(events, Some(timeout.min(POLL_SLICE))) {
            Ok(()) => {}
            // A signal interrupted the wait: not an error, look at the flags.
            Err(e) if e.kind() == ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(format!("epoll_wait: {e}")),
        }
        if self.signals.mark.swap(false, Ordering::Relaxed) {
            let since = self.born.elapsed().as_secs_f64();
            say(&format!("mark {since:.6} {}", self.tally.round_trips))?;
        }
        Ok(())
    }

    /// Opens `args.conns` connections, at most [`CONNECTS_IN_FLIGHT`] pending
    /// at a time, each registered for reading and writing (edge-triggered,
    /// so no `epoll_ctl` is needed later) with its index as token. A failed
    /// connect is counted and leaves `None` in its place.
    fn open_connections(&mut self, events: &mut Events) -> Result<Vec<Option<TcpStream>>, String> {
        let n = self.args.conns;
        let deadline = Instant::now() + self.args.connect_timeout;
        let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(n);
        let mut up = vec![false; n];
        let mut pending = 0;
        while (conns.len() < n || pending > 0) && !self.stopping() {
            while pending < CONNECTS_IN_FLIGHT && conns.len() < n {
                let token = Token(conns.len());
                match connect(&self.poll, self.args.addr, token) {
                    Ok(stream) => {
                        conns.push(Some(stream));
                        pending += 1;
                    }
                    Err(e) => {
                        self.tally.count(Fault::Error(format!("connect: {e}")));
                        conns.push(None);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.wait(events, deadline - now)?;
            for event in events.iter() {
                let i = event.token().0;
                let Some(stream) = conns[i].as_ref().filter(|_| !up[i]) else {
                    continue;
                };
                match connect_result(stream) {
                    None => continue,
                    Some(Ok(())) => up[i] = true,
                    Some(Err(e)) => {
                        self.tally.count(Fault::Error(format!("connect: {e}")));
                        conns[i] = None;
                    }
                }
                pending -= 1;
            }
        }
        for (i, conn) in conns.iter_mut().enumerate() {
            if conn.is_some() && !up[i] {
                let what = format!(
                    "connect: not established within {:?}",
                    self.args.connect_timeout
                );
                self.tally.count(Fault::Error(what));
                *conn = None;
            }
        }
        Ok(conns)
    }
}

/// A non-blocking connect to `addr`, registered under `token`, no Nagle.
fn connect(poll: &Poll, addr: SocketAddr, token: Token) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
    Ok(stream)
}

/// The outcome of a pending connect after an event on it: `None` while it
/// is still in progress (mio's documented check).
fn connect_result(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == ErrorKind::NotConnected => None,
        Err(e) => Some(Err(e)),
    }
}

/// Thousands of connections need thousands of descriptors.
fn raise_fd_limit(conns: usize) -> Result<(), String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("raising the open-file limit: {e}"))?;
    let need = conns as u64 + 64;
    if limit < need {
        return Err(format!(
            "open-file limit {limit} is too low for {conns} connections (raise the hard limit)"
        ));
    }
    Ok(())
}

/// Writes a protocol line to stdout and flushes it: scripts wait for these.
fn say(line: &str) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))
}

// ------------------------------------------------- pingpong and stream runs

/// One connection's byte stream in `pingpong` and `stream`: offsets into
/// the stream that have been queued, written and echoed back.
struct Flow {
    stream: TcpStream,
    phase: u64,
    queued: u64,
    written: u64,
    received: u64,
    /// When each message in flight was queued, oldest first.
    sent_at: VecDeque<Instant>,
}

impl Flow {
    /// Writes queued bytes until done or the kernel's buffer is full (the
    /// next writable edge resumes).
    fn flush(&mut self, pattern: &Pattern) -> Result<(), Fault> {
        while self.written < self.queued {
            let len = (self.queued - self.written).min(IO_MAX as u64) as usize;
            match self
                .stream
                .write(pattern.slice(self.phase, self.written, len))
            {
                Ok(0) => return Err(Fault::Error("write returned 0".into())),
                Ok(n) => self.written += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::Error(format!("write: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads all the kernel holds (edge-triggered: until a short read or
    /// WouldBlock), checks each byte and records the messages completed;
    /// returns how many completed.
    fn receive(
        &mut self,
        pattern: &Pattern,
        buf: &mut [u8],
        size: u64,
        tally: &mut Tally,
    ) -> Result<u64, Fault> {
        let mut completed = 0;
        loop {
            let n = match self.stream.read(buf) {
                Ok(0) => return Err(Fault::Error(self.lost("EOF"))),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(completed),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fault::Error(self.lost(&e.to_string()))),
            };
            check(pattern, self.phase, self.received, self.written, &buf[..n])?;
            let now = Instant::now();
            let before = self.received / size;
            self.received += n as u64;
            tally.bytes += n as u64;
            for _ in before..self.received / size {
                if let Some(sent) = self.sent_at.pop_front() {
                    tally.latency.record(now - sent);
                }
                tally.round_trips += 1;
                completed += 1;
            }
            // A short read emptied the socket; more data will raise a new
            // edge, so the read that would only say WouldBlock is skipped
            // (a third of the client's syscalls in ping-pong).
            if n < buf.len() {
                return Ok(completed);
            }
        }
    }

    fn lost(&self, why: &str) -> String {
        format!(
            "{why} with {} of {} bytes echoed",
            self.received, self.written
        )
    }
}

/// Checks bytes read at stream offset `received` against the pattern; no
/// more than `written` bytes can honestly have come back.
fn check(
    pattern: &Pattern,
    phase: u64,
    received: u64,
    written: u64,
    got: &[u8],
) -> Result<(), Fault> {
    if received + got.len() as u64 > written {
        return Err(Fault::Mismatch(format!(
            "{} bytes back at offset {received} run past the {written} sent",
            got.len()
        )));
    }
    if got != pattern.slice(phase, received, got.len()) {
        let expected = pattern.slice(phase, received, got.len());
        let at = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(Fault::Mismatch(format!(
            "byte at stream offset {} is {:#04x}, expected {:#04x}",
            received + at as u64,
            got[at],
            expected[at]
        )));
    }
    Ok(())
}

/// The global send schedule of `--rate`; without a rate every free slot is
/// used at once.
struct Pacer {
    rate: Option<f64>,
    start: Instant,
    issued: u64,
}

impl Pacer {
    /// How many messages may have been issued by `now`, counting as skipped
    /// the sends that would put the schedule more than `MAX_LAG_SECS` behind.
    fn allowed(&mut self, now: Instant, tally: &mut Tally) -> u64 {
        let Some(rate) = self.rate else {
            return u64::MAX;
        };
        let due = ((now - self.start).as_secs_f64() * rate) as u64 + 1;
        let max_lag = ((rate * MAX_LAG_SECS) as u64).max(1);
        if due - self.issued.min(due) > max_lag {
            tally.skipped += due - self.issued - max_lag;
            self.issued = due - max_lag;
        }
        due
    }

    /// When the next send is due (`None`: no schedule).
    fn next_due(&self) -> Option<Instant> {
        let rate = self.rate?;
        Some(self.start + Duration::from_secs_f64(self.issued as f64 / rate))
    }
}

/// `pingpong` (`size`-byte messages, `depth` in flight) and `stream`
/// (chunks with a window of `depth` chunks).
fn run_flows(bench: &mut Bench) -> Result<Duration, String> {
    let (size, depth) = (bench.args.size, bench.args.depth);
    let mut events = Events::with_capacity(1024);
    let mut flows: Vec<Option<Flow>> = bench
        .open_connections(&mut events)?
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            conn.map(|stream| Flow {
                stream,
                phase: Pattern::phase(i as u64),
                queued: 0,
                written: 0,
                received: 0,
                sent_at: VecDeque::with_capacity(depth),
            })
        })
        .collect();
    let mut live = flows.iter().flatten().count();
    say(&format!("started {live}"))?;

    // One entry per free message slot, round-robin over the connections.
    let mut free: VecDeque<usize> = (0..depth)
        .flat_map(|_| (0..flows.len()).filter(|&i| flows[i].is_some()))
        .collect();
    let mut buf = vec![0; IO_MAX];
    // Connections with newly queued bytes, written once per turn.
    let mut touched = Vec::new();
    let mut is_touched = vec![false; flows.len()];
    let start = Instant::now();
    let end = start + bench.args.duration;
    let hard_end = end + DRAIN_LIMIT;
    let mut pacer = Pacer {
        rate: bench.args.rate,
        start,
        issued: 0,
    };
    let mut in_flight: u64 = 0;
    loop {
        let now = Instant::now();
        let sending = now < end && !bench.stopping() && live > 0;
        if (!sending && in_flight == 0) || now >= hard_end {
            break;
        }
        if sending {
            // Queue the messages due on free slots, then write.
            let allowed = pacer.allowed(now, &mut bench.tally);
            while pacer.issued < allowed {
                let Some(i) = free.pop_front() else { break };
                let Some(flow) = flows[i].as_mut() else {
                    continue;
                };
                flow.queued += size as u64;
                flow.sent_at.push_back(now);
                pacer.issued += 1;
                in_flight += 1;
                if !is_touched[i] {
                    is_touched[i] = true;
                    touched.push(i);
                }
            }
            for i in touched.drain(..) {
                is_touched[i] = false;
                if let Some(Err(fault)) = flows[i].as_mut().map(|f| f.flush(&bench.pattern)) {
                    in_flight -= drop_flow(&mut flows[i], fault, &mut bench.tally, &mut live);
                }
            }
        }
        let timeout = match pacer.next_due() {
            Some(due) if sending && !free.is_empty() => due.saturating_duration_since(now),
            _ if sending => end - now,
            _ => hard_end - now,
        };
        bench.wait(&mut events, timeout)?;
        for event in events.iter() {
            let i = event.token().0;
            let Some(flow) = flows[i].as_mut() else {
                continue;
            };
            let mut result = flow.flush(&bench.pattern);
            if result.is_ok() && (event.is_readable() || event.is_read_closed() || event.is_error())
            {
                result = flow
                    .receive(&bench.pattern, &mut buf, size as u64, &mut bench.tally)
                    .map(|done| {
                        in_flight -= done;
                        free.extend((0..done).map(|_| i));
                    });
            }
            if let Err(fault) = result {
                in_flight -= drop_flow(&mut flows[i], fault, &mut bench.tally, &mut live);
            }
        }
    }
    bench.tally.unanswered = in_flight;
    Ok(start.elapsed())
}

/// Counts `fault`, closes the connection; returns its messages in flight.
fn drop_flow(slot: &mut Option<Flow>, fault: Fault, tally: &mut Tally, live: &mut usize) -> u64 {
    tally.count(fault);
    *live -= 1;
    // Closing the only descriptor also removes it from the epoll set.
    slot.take().map_or(0, |flow| flow.sent_at.len() as u64)
}

// ---------------------------------------------------------------- churn run

/// One churn cycle: a fresh connection, one message, its echo.
struct Cycle {
    stream: TcpStream,
    phase: u64,
    began: Instant,
    connected: bool,
    written: usize,
    received: usize,
}

impl Cycle {
    fn start(poll: &Poll, addr: SocketAddr, worker: usize, serial: u64) -> Result<Cycle, Fault> {
        let stream = connect(poll, addr, Token(worker))
            .map_err(|e| Fault::Error(format!("connect: {e}")))?;
        Ok(Cycle {
            stream,
            phase: Pattern::phase(serial),
            began: Instant::now(),
            connected: false,
            written: 0,
            received: 0,
        })
    }

    /// Advances the cycle after an event; `Ok(true)` once the echo is in.
    fn advance(&mut self, pattern: &Pattern, buf: &mut [u8], size: usize) -> Result<bool, Fault> {
        if !self.connected {
            match connect_result(&self.stream) {
                None => return Ok(false),
                Some(Err(e)) => return Err(Fault::Error(format!("connect: {e}"))),
                Some(Ok(())) => self.connected = true,
            }
        }
        while self.written < size {
            let len = (size - self.written).min(IO_MAX);
            match self
                .stream
                .write(pattern.slice(self.phase, self.written as u64, len))
            {
                Ok(0) => return Err(Fault::Error("write returned 0".into())),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::Error(format!("write: {e}"))),
            }
        }
        loop {
            let n = match self.stream.read(buf) {
                Ok(0) => {
                    return Err(Fault::Error(format!(
                        "EOF after {} of {size} bytes",
                        self.received
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fault::Error(format!("read: {e}"))),
            };
            let (received, written) = (self.received as u64, self.written as u64);
            check(pattern, self.phase, received, written, &buf[..n])?;
            self.received += n;
            if self.received == size {
                return Ok(true);
            }
            if n < buf.len() {
                return Ok(false); // emptied: the rest raises a new edge
            }
        }
    }
}

/// `churn`: workers connect, exchange one message, close, repeat. A worker
/// whose cycle fails stops: every failure is counted, none is retried in a
/// tight loop.
fn run_churn(bench: &mut Bench) -> Result<Duration, String> {
    let size = bench.args.size;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0; IO_MAX];
    let mut serial = 0;
    let mut workers: Vec<Option<Cycle>> = Vec::with_capacity(bench.args.conns);
    for worker in 0..bench.args.conns {
        workers.push(next_cycle(bench, worker, &mut serial));
    }
    let mut active = workers.iter().flatten().count();
    say(&format!("started {active}"))?;
    let start = Instant::now();
    let end = start + bench.args.duration;
    let hard_end = end + DRAIN_LIMIT;
    while active > 0 {
        let now = Instant::now();
        if now >= hard_end {
            break;
        }
        let timeout = if now < end { end - now } else { hard_end - now };
        bench.wait(&mut events, timeout)?;
        let sending = Instant::now() < end && !bench.stopping();
        for event in events.iter() {
            let worker = event.token().0;
            let Some(cycle) = workers[worker].as_mut() else {
                continue;
            };
            let succeeded = match cycle.advance(&bench.pattern, &mut buf, size) {
                Ok(false) => continue,
                Ok(true) => {
                    let tally = &mut bench.tally;
                    tally.latency.record(cycle.began.elapsed());
                    tally.round_trips += 1;
                    tally.connections += 1;
                    tally.bytes += size as u64;
                    true
                }
                Err(fault) => {
                    bench.tally.count(fault);
                    false
                }
            };
            // The old socket is closed (and so leaves the epoll set) before
            // the next one is registered under the same token.
            workers[worker] = None;
            if succeeded && sending {
                workers[worker] = next_cycle(bench, worker, &mut serial);
            }
            if workers[worker].is_none() {
                active -= 1;
            }
        }
    }
    bench.tally.unanswered = active as u64;
    Ok(start.elapsed())
}

fn next_cycle(bench: &mut Bench, worker: usize, serial: &mut u64) -> Option<Cycle> {
    *serial += 1;
    Cycle::start(&bench.poll, bench.args.addr, worker, *serial)
        .map_err(|fault| bench.tally.count(fault))
        .ok()
}

// ----------------------------------------------------------------- idle run

/// `idle`: open, announce, hold until `--hold` ends or SIGTERM/SIGINT.
fn run_idle(bench: &mut Bench) -> Result<Duration, String> {
    let mut events = Events::with_capacity(1024);
    let mut conns = bench.open_connections(&mut events)?;
    // Events that came while others were still connecting were not looked
    // at; a read on each tells whether the server already closed or spoke.
    let mut buf = [0; 512];
    for conn in conns.iter_mut() {
        if let Some(Err(fault)) = conn.as_mut().map(|s| check_quiet(s, &mut buf)) {
            bench.tally.count(fault);
            *conn = None;
        }
    }
    let held = conns.iter().flatten().count();
    say(&format!("connected {held}"))?;
    let start = Instant::now();
    let end = start + bench.args.duration;
    while !bench.stopping() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        bench.wait(&mut events, end - now)?;
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if let Some(Err(fault)) = conn.as_mut().map(|s| check_quiet(s, &mut buf)) {
                bench.tally.count(fault);
                *conn = None;
            }
        }
    }
    bench.tally.connections = conns.iter().flatten().count() as u64;
    Ok(start.elapsed())
}

/// An idle connection must have nothing to read and not be closed.
fn check_quiet(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), Fault> {
    let result = loop {
        match stream.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => break other,
        }
    };
    match result {
        Ok(0) => Err(Fault::Error("idle connection closed by the server".into())),
        Ok(n) => Err(Fault::Mismatch(format!(
            "{n} unexpected bytes on an idle connection"
        ))),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(Fault::Error(format!("idle connection: {e}"))),
    }
}

// ------------------------------------------------------------------- output

enum Value {
    Int(u64),
    Num(f64),
    Text(String),
    Null,
}

impl Value {
    fn json(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Num(x) if x.is_finite() => format!("{x:.3}"),
            Value::Num(_) | Value::Null => "null".into(),
            Value::Text(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        }
    }

    fn text(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Num(x) => format!("{x:.1}"),
            Value::Text(s) => s.clone(),
            Value::Null => "-".into(),
        }
    }
}

/// The figures of a finished run, in print order.
fn report(bench: &mut Bench, elapsed: Duration) -> Vec<(&'static str, Value)> {
    let args = &bench.args;
    let tally = &mut bench.tally;
    let secs = elapsed.as_secs_f64();
    let per_sec = |n: u64| Value::Num(n as f64 / secs);
    let mut fields = vec![
        ("mode", Value::Text(args.mode.to_string())),
        ("addr", Value::Text(args.addr.to_string())),
        ("conns", Value::Int(args.conns as u64)),
    ];
    if args.mode == Mode::Idle {
        fields.push(("held", Value::Int(tally.connections)));
        fields.push(("hold_s", Value::Num(secs)));
    } else {
        let size_key = if args.mode == Mode::Stream {
            "chunk"
        } else {
            "size"
        };
        fields.extend([
            (size_key, Value::Int(args.size as u64)),
            ("depth", Value::Int(args.depth as u64)),
            ("rate", args.rate.map_or(Value::Null, Value::Num)),
            ("elapsed_s", Value::Num(secs)),
            ("round_trips", Value::Int(tally.round_trips)),
            ("rt_per_s", per_sec(tally.round_trips)),
            ("bytes", Value::Int(tally.bytes)),
            ("mb_per_s", Value::Num(tally.bytes as f64 / secs / 1e6)),
            ("connections", Value::Int(tally.connections)),
            ("conns_per_s", per_sec(tally.connections)),
        ]);
        let latency = tally.latency.summary();
        for (i, key) in ["p50_us", "p99_us", "p999_us", "max_us"]
            .into_iter()
            .enumerate()
        {
            fields.push((key, latency.map_or(Value::Null, |l| Value::Num(l[i]))));
        }
        fields.push(("skipped", Value::Int(tally.skipped)));
        fields.push(("unanswered", Value::Int(tally.unanswered)));
    }
    fields.push(("mismatches", Value::Int(tally.mismatches)));
    fields.push(("errors", Value::Int(tally.errors)));
    fields
}

fn render(fields: &[(&str, Value)], json: bool) -> String {
    if json {
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("\"{key}\":{}", value.json()))
            .collect();
        return format!("{{{}}}", body.join(","));
    }
    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {}", value.text()))
        .collect();
    lines.join("\n")
}

// --------------------------------------------------------------------- main

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("echo_bench: {message}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("echo_bench: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let mut bench = Bench::new(args)?;
    if bench.args.mode == Mode::Stream {
        // The stream window in chunks, reported as the depth.
        bench.args.depth = (STREAM_WINDOW / bench.args.size).max(2);
    }
    let elapsed = match bench.args.mode {
        Mode::PingPong | Mode::Stream => run_flows(&mut bench)?,
        Mode::Churn => run_churn(&mut bench)?,
        Mode::Idle => run_idle(&mut bench)?,
    };
    let fields = report(&mut bench, elapsed);
    say(&render(&fields, bench.args.json))?;
    let tally = &bench.tally;
    if tally.failed() {
        eprintln!(
            "echo_bench: FAILED: {} mismatches, {} errors, {} unanswered",
            tally.mismatches, tally.errors, tally.unanswered
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
