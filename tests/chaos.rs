//! Chaos: a seeded, randomized stress test. Many non-blocking peers connect,
//! send random chunks, stall their reading, half-close, close, reset and
//! reconnect, all at once, while the handler, steered by the bytes it
//! receives, consumes partially, pauses and resumes (also from other
//! connections' callbacks), shuts down, closes, aborts, sends bursts past
//! the high water mark and sends to other connections.
//!
//! Every choice (peers' plans and bytes, the handler's actions for given
//! bytes) comes from a fixed seed; timing does not, so the test checks
//! invariants rather than exact outputs:
//!
//! - the reactor thread never panics and `run_once` never fails;
//! - `on_close` runs exactly once for every id `on_open` gave, no callback
//!   names an unknown id or arrives after `on_close`, the state handed to a
//!   callback is that id's, no `on_data` follows `on_eof` or the handler's
//!   `close`/`abort`, no `on_drain` follows a close or `shutdown_write`, and
//!   each `data` starts with what the last `on_data` left unconsumed;
//! - once every peer is gone: `active == 0`, `queued_output == 0`,
//!   `accepted == closed`, and the counters agree with the handler's count
//!   of opens, closes and close reasons;
//! - every peer that did a plain echo exchange (first byte "echo only",
//!   clean half-close) on a connection nothing else touched got exactly its
//!   bytes back, then EOF, and the server closed it as `PeerClosed`.
//!
//! The opcodes. A connection whose first byte is `E` is "echo only": the
//! handler echoes it and nothing else ever touches it; the next four bytes
//! are the peer's session number. Any other connection is "chaos": the first
//! uppercase byte of each `data` the handler is offered is an opcode
//! (clients start each chunk with one, wherever the reactor's reads split
//! the stream; payload bytes are lowercase letters, plain echo). The
//! handler's other choices come from a hash of the same bytes.
//!
//! Failures name the seed and, for a connection left open, the handler's
//! record of its latest callbacks and actions.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DEADLINE, start};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId};

/// First byte of an "echo only" connection.
const ECHO: u8 = b'E';
/// Echo half of the data, leave the rest unconsumed.
const PARTIAL: u8 = b'P';
/// Echo (all, or half by a hash of the data), then pause reading this
/// connection (resumed some callbacks later).
const PAUSE: u8 = b'S';
/// Echo, then resume the connection paused longest ago.
const RESUME: u8 = b'R';
/// Echo, then `shutdown_write`.
const SHUTDOWN: u8 = b'W';
/// Echo, then `close`.
const CLOSE: u8 = b'C';
/// `abort`.
const ABORT: u8 = b'A';
/// Echo, then send a burst past the high water mark (and more on drain).
const BURST: u8 = b'B';
/// Send the data to another chaos connection instead (and sometimes a
/// burst).
const CROSS: u8 = b'X';
/// Echo, then pause another chaos connection.
const PAUSE_OTHER: u8 = b'Q';
/// Echo, then close (or abort) this connection some callbacks later.
const DEFER: u8 = b'D';
/// Echo, then close or abort another chaos connection.
const KILL_OTHER: u8 = b'Z';
/// Resume every paused connection and run every deferred close at once.
const KICK: u8 = b'K';
/// Consume nothing until [`HOLD_UNTIL`] bytes wait, then echo them all
/// (past `max_input`: `InputLimit`).
const HOLD: u8 = b'H';
/// Bytes a `HOLD` waits for.
const HOLD_UNTIL: usize = 2000;

/// How chaos clients pick the first byte of a chunk: (byte, weight).
/// Lowercase means plain echo.
const OPCODES: [(u8, u64); 14] = [
    (b'a', 40),
    (PARTIAL, 8),
    (PAUSE, 8),
    (RESUME, 6),
    (SHUTDOWN, 3),
    (CLOSE, 3),
    (ABORT, 3),
    (BURST, 6),
    (CROSS, 8),
    (PAUSE_OTHER, 5),
    (DEFER, 3),
    (KILL_OTHER, 3),
    (KICK, 4),
    (HOLD, 3),
];

// ---------------------------------------------------------------------------
// The PRNG

/// xorshift64*, seeded through splitmix64 so that nearby seeds diverge.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn weighted(&mut self, table: &[(u8, u64)]) -> u8 {
        let total: u64 = table.iter().map(|&(_, w)| w).sum();
        let mut pick = self.next() % total;
        for &(byte, weight) in table {
            if pick < weight {
                return byte;
            }
            pick -= weight;
        }
        unreachable!("weights cover the range")
    }
}

// ---------------------------------------------------------------------------
// The handler

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// No byte seen yet.
    Unknown,
    Echo,
    Chaos,
}

/// Per-connection state, checked to belong to the id it comes with.
#[derive(Debug)]
struct ConnState {
    id: ConnId,
    class: Class,
    /// The first five bytes of an echo connection: `E` and the session.
    header: Vec<u8>,
    echoed: u64,
    bytes_in: u64,
    bursts_left: u32,
    kicker: bool,
    /// What the last `on_data` left unconsumed: the next `data` must start
    /// with it.
    leftover: Vec<u8>,
}

/// What the handler knows of each id it was given, kept after `on_close`.
#[derive(Debug, Default)]
struct Record {
    eof: bool,
    closed: bool,
    /// The handler asked for `close`, `shutdown_write` or `abort`.
    write_closed: bool,
    /// The handler asked for `close` or `abort`: input is ignored from now.
    closing: bool,
    session: Option<u32>,
    /// The latest callbacks and actions, for a failure's report.
    history: Vec<String>,
}

/// Events of a connection's history kept for a failure's report.
const HISTORY: usize = 48;

/// How an echo connection ended, by session number.
#[derive(Debug)]
struct EchoEnd {
    reason: String,
    echoed: u64,
}

/// Sets the flag if the handler is dropped while its thread panics, so the
/// test thread notices a dead reactor at once rather than at a deadline.
#[derive(Debug)]
struct PanicFlag(Arc<AtomicBool>);

impl Drop for PanicFlag {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(Debug)]
struct ChaosHandler {
    /// Burst sizes, all past the high water mark; a hash of the data picks
    /// one.
    bursts: [usize; 4],
    records: HashMap<ConnId, Record>,
    /// Chaos connections that have not closed, in order of their first byte.
    live_chaos: Vec<ConnId>,
    /// Paused connections, with the tick after which they resume.
    paused: Vec<(ConnId, u64)>,
    /// Deferred closes: id, due tick, abort rather than close.
    deferred: Vec<(ConnId, u64, bool)>,
    /// Callbacks so far.
    tick: u64,
    violations: Vec<String>,
    echo_ends: HashMap<u32, EchoEnd>,
    ops: BTreeMap<char, u64>,
    reasons: BTreeMap<String, u64>,
    opened: u64,
    closed: u64,
    _panic_flag: PanicFlag,
}

impl ChaosHandler {
    fn new(bursts: [usize; 4], panicked: Arc<AtomicBool>) -> ChaosHandler {
        ChaosHandler {
            bursts,
            records: HashMap::new(),
            live_chaos: Vec::new(),
            paused: Vec::new(),
            deferred: Vec::new(),
            tick: 0,
            violations: Vec::new(),
            echo_ends: HashMap::new(),
            ops: BTreeMap::new(),
            reasons: BTreeMap::new(),
            opened: 0,
            closed: 0,
            _panic_flag: PanicFlag(panicked),
        }
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 100 {
            self.violations.push(what);
        }
    }

    /// The id is one `on_open` gave and `on_close` has not taken; the state
    /// is that id's.
    fn check(&mut self, id: ConnId, conn: &ConnState, what: &str) {
        match self.records.get(&id) {
            None => self.violation(format!("{what} for unknown id {id:?}")),
            Some(r) if r.closed => self.violation(format!("{what} for {id:?} after on_close")),
            Some(_) => {}
        }
        if conn.id != id {
            self.violation(format!("{what} for {id:?} with the state of {:?}", conn.id));
        }
    }

    /// Adds to the connection's history (at tick `self.tick`).
    fn note(&mut self, id: ConnId, what: impl std::fmt::Display) {
        let tick = self.tick;
        if let Some(r) = self.records.get_mut(&id) {
            if r.history.len() == HISTORY {
                r.history.remove(0);
            }
            r.history.push(format!("{tick}: {what}"));
        }
    }

    fn mark_write_closed(&mut self, id: ConnId, closing: bool) {
        if let Some(r) = self.records.get_mut(&id) {
            if !r.closed {
                r.write_closed = true;
                r.closing |= closing;
            }
        }
    }

    fn close(&mut self, cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>, id: ConnId) {
        self.note(id, "close");
        self.mark_write_closed(id, true);
        cx.close(id);
    }

    fn abort(&mut self, cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>, id: ConnId) {
        self.note(id, "abort");
        self.mark_write_closed(id, true);
        cx.abort(id);
    }

    fn shutdown_write(
        &mut self,
        cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>,
        id: ConnId,
    ) {
        self.note(id, "shutdown_write");
        self.mark_write_closed(id, false);
        cx.shutdown_write(id);
    }

    fn pause(
        &mut self,
        cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>,
        id: ConnId,
        due: u64,
    ) {
        self.note(id, format_args!("pause_read until tick {due}"));
        cx.pause_read(id);
        self.paused.push((id, due));
    }

    fn resume(&mut self, cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>, id: ConnId) {
        self.note(id, "resume_read");
        cx.resume_read(id);
    }

    fn send(
        &mut self,
        cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>,
        id: ConnId,
        data: &[u8],
    ) {
        let result = cx.send(id, data);
        if data.len() > 1024 || result.is_err() {
            self.note(
                id,
                format_args!(
                    "send {} bytes: {result:?}, {} queued",
                    data.len(),
                    cx.pending_output(id)
                ),
            );
        }
    }

    /// Another live chaos connection, chosen by `salt`.
    fn other(&self, id: ConnId, salt: usize) -> Option<ConnId> {
        let others: Vec<ConnId> = self
            .live_chaos
            .iter()
            .copied()
            .filter(|&c| c != id)
            .collect();
        (!others.is_empty()).then(|| others[salt % others.len()])
    }

    /// Runs in every callback: resumes paused connections and runs
    /// deferred closes that are due, whichever connection the callback is
    /// for.
    fn housekeeping(&mut self, cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>) {
        self.tick += 1;
        let tick = self.tick;
        let mut i = 0;
        while i < self.paused.len() {
            if self.paused[i].1 <= tick {
                let (id, _) = self.paused.swap_remove(i);
                self.resume(cx, id);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.deferred.len() {
            if self.deferred[i].1 <= tick {
                let (id, _, abort) = self.deferred.swap_remove(i);
                if abort {
                    self.abort(cx, id);
                } else {
                    self.close(cx, id);
                }
            } else {
                i += 1;
            }
        }
    }

    fn kick(&mut self, cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>) {
        for (id, _) in std::mem::take(&mut self.paused) {
            self.resume(cx, id);
        }
        for (id, _, abort) in std::mem::take(&mut self.deferred) {
            if abort {
                self.abort(cx, id);
            } else {
                self.close(cx, id);
            }
        }
    }

    fn burst(&self, salt: usize) -> Vec<u8> {
        vec![b'b'; self.bursts[salt % self.bursts.len()] + salt / 4 % 64]
    }

    /// A chaos connection's data: its first uppercase byte (the opcode a
    /// chunk starts with, wherever the read split the stream) says what to
    /// do; without one, plain echo.
    fn chaos(
        &mut self,
        cx: &mut Context<'_, <ChaosHandler as Handler>::Conn>,
        id: ConnId,
        conn: &mut ConnState,
        data: &[u8],
    ) -> usize {
        let op = data
            .iter()
            .copied()
            .find(u8::is_ascii_uppercase)
            .unwrap_or(b'a');
        let len = data.len();
        // Every other choice: a hash of the bytes (FNV-1a).
        let salt = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) as usize
            >> 8;
        if op.is_ascii_uppercase() {
            *self.ops.entry(op as char).or_default() += 1;
        }
        let due = self.tick + 2 + (salt % 16) as u64;
        match op {
            HOLD if len < HOLD_UNTIL => return 0,
            PARTIAL => {
                let half = len / 2;
                self.send(cx, id, &data[..half]);
                return half;
            }
            PAUSE => {
                // Half the time leave half unconsumed: offered again on
                // resume. At least a byte is consumed, or a lone `S` would
                // pause the connection again at every resume, for ever.
                let take = if salt % 2 == 1 { (len / 2).max(1) } else { len };
                self.send(cx, id, &data[..take]);
                self.pause(cx, id, due);
                return take;
            }
            RESUME => {
                self.send(cx, id, data);
                if !self.paused.is_empty() {
                    let (other, _) = self.paused.remove(0);
                    self.resume(cx, other);
                }
            }
            SHUTDOWN => {
                self.send(cx, id, data);
                self.shutdown_write(cx, id);
            }
            CLOSE => {
                self.send(cx, id, data);
                self.close(cx, id);
            }
            ABORT => self.abort(cx, id),
            BURST => {
                self.send(cx, id, data);
                let burst = self.burst(salt);
                self.send(cx, id, &burst);
                conn.bursts_left = (salt % 3) as u32;
            }
            CROSS => match self.other(id, salt) {
                Some(other) => {
                    self.send(cx, other, data);
                    if salt % 4 == 0 {
                        let burst = self.burst(salt / 4);
                        self.send(cx, other, &burst);
                    }
                }
                None => {
                    self.send(cx, id, data);
                }
            },
            PAUSE_OTHER => {
                self.send(cx, id, data);
                if let Some(other) = self.other(id, salt) {
                    self.pause(cx, other, due);
                }
            }
            DEFER => {
                self.send(cx, id, data);
                self.deferred.push((id, due, salt % 2 == 0));
            }
            KILL_OTHER => {
                self.send(cx, id, data);
                if let Some(other) = self.other(id, salt) {
                    if salt % 2 == 0 {
                        self.abort(cx, other);
                    } else {
                        self.close(cx, other);
                    }
                }
            }
            KICK => {
                self.send(cx, id, data);
                self.kick(cx);
            }
            _ => {
                self.send(cx, id, data);
            }
        }
        len
    }
}

impl Handler for ChaosHandler {
    type Conn = ConnState;
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) -> ConnState {
        if self.records.contains_key(&id) {
            self.violation(format!("on_open for {id:?} a second time"));
        }
        self.records.insert(id, Record::default());
        self.note(id, "on_open");
        self.opened += 1;
        self.housekeeping(cx);
        ConnState {
            id,
            class: Class::Unknown,
            header: Vec::new(),
            echoed: 0,
            bytes_in: 0,
            bursts_left: 0,
            kicker: false,
            leftover: Vec::new(),
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: &mut ConnState,
        data: &[u8],
    ) -> usize {
        self.check(id, conn, "on_data");
        if self.records.get(&id).is_some_and(|r| r.eof) {
            self.violation(format!("on_data for {id:?} after on_eof"));
        }
        if self.records.get(&id).is_some_and(|r| r.closing) {
            self.violation(format!("on_data for {id:?} after close or abort"));
        }
        if data.is_empty() {
            self.violation(format!("on_data for {id:?} with no bytes"));
            return 0;
        }
        if !data.starts_with(&conn.leftover) {
            self.violation(format!(
                "on_data for {id:?}: {} bytes left unconsumed were not offered again",
                conn.leftover.len()
            ));
        }
        conn.bytes_in += data.len() as u64;
        if conn.class == Class::Unknown {
            if data[0] == ECHO {
                conn.class = Class::Echo;
            } else {
                conn.class = Class::Chaos;
                conn.kicker = data[0] == KICK;
                self.live_chaos.push(id);
            }
        }
        let consumed = match conn.class {
            Class::Echo => {
                if conn.header.len() < 5 {
                    let take = (5 - conn.header.len()).min(data.len());
                    conn.header.extend_from_slice(&data[..take]);
                    if conn.header.len() == 5 {
                        let session = u32::from_le_bytes(conn.header[1..5].try_into().unwrap());
                        if let Some(r) = self.records.get_mut(&id) {
                            r.session = Some(session);
                        }
                    }
                }
                self.send(cx, id, data);
                conn.echoed += data.len() as u64;
                data.len()
            }
            _ => self.chaos(cx, id, conn, data),
        };
        conn.leftover = data[consumed.min(data.len())..].to_vec();
        self.note(
            id,
            format_args!(
                "on_data {} bytes from {:?}, consumed {consumed}",
                data.len(),
                data[0] as char
            ),
        );
        self.housekeeping(cx);
        consumed
    }

    fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, conn: &mut ConnState) {
        self.check(id, conn, "on_eof");
        match self.records.get_mut(&id) {
            Some(r) if r.eof => self.violation(format!("on_eof for {id:?} a second time")),
            Some(r) => r.eof = true,
            None => {}
        }
        self.note(id, "on_eof");
        if conn.class != Class::Chaos || conn.kicker {
            self.close(cx, id);
        } else {
            match conn.bytes_in % 5 {
                0 => self.close(cx, id),
                1 => {
                    self.send(cx, id, b"bye");
                    self.close(cx, id);
                }
                // Both FINs exchanged: the connection is done.
                2 => self.shutdown_write(cx, id),
                3 => self.deferred.push((id, self.tick + 3, false)),
                _ => self.abort(cx, id),
            }
        }
        self.housekeeping(cx);
    }

    fn on_drain(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, conn: &mut ConnState) {
        self.check(id, conn, "on_drain");
        self.note(id, "on_drain");
        if self.records.get(&id).is_some_and(|r| r.write_closed) {
            self.violation(format!(
                "on_drain for {id:?} after close, shutdown_write or abort"
            ));
        }
        if conn.class == Class::Chaos && conn.bursts_left > 0 {
            conn.bursts_left -= 1;
            let burst = self.burst(conn.bytes_in as usize);
            self.send(cx, id, &burst);
        }
        self.housekeeping(cx);
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: ConnState,
        reason: CloseReason,
    ) {
        self.check(id, &conn, "on_close");
        let reason = format!("{reason:?}");
        self.note(id, format_args!("on_close {reason}"));
        let kind = reason.split('(').next().unwrap_or_default().to_string();
        *self.reasons.entry(kind).or_default() += 1;
        self.closed += 1;
        let session = match self.records.get_mut(&id) {
            Some(r) => {
                r.closed = true;
                r.session
            }
            None => None,
        };
        if let (Class::Echo, Some(session)) = (conn.class, session) {
            let end = EchoEnd {
                reason,
                echoed: conn.echoed,
            };
            if self.echo_ends.insert(session, end).is_some() {
                self.violation(format!("echo session {session} closed twice"));
            }
        }
        self.live_chaos.retain(|&c| c != id);
        self.paused.retain(|&(c, _)| c != id);
        self.deferred.retain(|&(c, _, _)| c != id);
        self.housekeeping(cx);
    }
}

// ---------------------------------------------------------------------------
// The peers

/// How a session ends once it has sent what it planned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Shut down writing, read to EOF.
    HalfClose,
    /// Close the socket (a reset if unread bytes are left).
    Close,
    /// `SO_LINGER` 0, then close: a reset.
    Reset,
}

/// The sizes a profile's peers use.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    echo_bytes: u64,
    echo_huge: u64,
    chaos_bytes: u64,
    chunk: u64,
}

/// How long a chaos peer waits for the server's EOF after its own.
const CHAOS_PATIENCE: Duration = Duration::from_millis(150);

/// One connection of a peer, from connect to close.
#[derive(Debug)]
struct Session {
    number: u32,
    echo: bool,
    ending: Ending,
    stream: TcpStream,
    /// Bytes to send before the ending.
    limit: u64,
    sent: u64,
    chunk: Vec<u8>,
    chunk_sent: usize,
    /// Every byte sent (echo sessions only).
    sent_log: Vec<u8>,
    /// Every byte received (echo sessions only).
    received: Vec<u8>,
    received_count: u64,
    eof: bool,
    error: Option<io::ErrorKind>,
    shut_at: Option<Instant>,
    stall_until: Option<Instant>,
    chunk_max: u64,
}

/// What a finished session leaves for the final checks.
#[derive(Debug)]
struct Finished {
    number: u32,
    /// An echo-only session with a clean half-close: its echo must be exact.
    clean_echo: bool,
    sent_log: Vec<u8>,
    received: Vec<u8>,
    eof: bool,
    error: Option<io::ErrorKind>,
}

fn connect(addr: SocketAddr, small_receive_buffer: bool) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    if small_receive_buffer {
        // Set before connecting so the window is small from the start: less
        // of the server's output fits in flight, more backs up in its queue.
        socket
            .set_recv_buffer_size(2048)
            .expect("SO_RCVBUF for a client");
    }
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect to the reactor (if its thread panicked, see above)");
    socket.set_nonblocking(true).expect("non-blocking client");
    TcpStream::from_std(socket.into())
}

impl Session {
    fn start(
        number: u32,
        rng: &mut Rng,
        addr: SocketAddr,
        sizes: Sizes,
        poll: &Poll,
        token: Token,
    ) -> Session {
        let echo = rng.chance(45);
        let ending = match rng.next() % 10 {
            0..=5 => Ending::HalfClose,
            6 | 7 => Ending::Close,
            _ => Ending::Reset,
        };
        let most = if echo {
            sizes.echo_bytes
        } else {
            sizes.chaos_bytes
        };
        // Mostly short exchanges; some long, a few huge: more than loopback
        // buffers hold, so that they back up.
        let total = if echo && rng.chance(3) {
            sizes.echo_huge
        } else if rng.chance(30) {
            rng.range(1, most)
        } else {
            rng.range(1, most / 8)
        };
        let limit = match ending {
            Ending::HalfClose => total,
            // Cut somewhere, possibly before the first byte.
            _ => rng.range(0, total),
        };
        let mut stream = connect(addr, rng.chance(40));
        poll.registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .expect("register a client");
        Session {
            number,
            echo,
            ending,
            stream,
            limit,
            sent: 0,
            chunk: Vec::new(),
            chunk_sent: 0,
            sent_log: Vec::new(),
            received: Vec::new(),
            received_count: 0,
            eof: false,
            error: None,
            shut_at: None,
            stall_until: None,
            chunk_max: sizes.chunk,
        }
    }

    /// Draws the next chunk, and perhaps a reading stall to start now.
    fn next_chunk(&mut self, rng: &mut Rng, now: Instant) {
        let left = self.limit - self.sent;
        let size = rng.range(1, self.chunk_max).min(left) as usize;
        self.chunk.clear();
        self.chunk_sent = 0;
        if self.echo {
            if self.sent == 0 {
                self.chunk.push(ECHO);
                self.chunk.extend_from_slice(&self.number.to_le_bytes());
            }
            while self.chunk.len() < size {
                let word = rng.next().to_le_bytes();
                let n = word.len().min(size - self.chunk.len());
                self.chunk.extend_from_slice(&word[..n]);
            }
            // The header goes whole even into a cut session's first chunk.
            self.limit = self.limit.max(self.sent + self.chunk.len() as u64);
        } else {
            let op = rng.weighted(&OPCODES);
            self.chunk.push(op);
            while self.chunk.len() < size {
                self.chunk.push(b'a' + (rng.next() % 26) as u8);
            }
            if op == BURST {
                // Asked for a burst: stall so that it backs up.
                self.stall(now, rng.range(20, 40));
            }
        }
        if rng.chance(if self.echo { 10 } else { 25 }) {
            self.stall(now, rng.range(2, 40));
        }
    }

    /// Stops reading for `ms` milliseconds from `now` (or longer, if a
    /// stall already runs longer).
    fn stall(&mut self, now: Instant, ms: u64) {
        let until = now + Duration::from_millis(ms);
        self.stall_until = Some(self.stall_until.map_or(until, |u| u.max(until)));
    }

    fn write_some(&mut self, rng: &mut Rng, now: Instant) {
        while self.error.is_none() {
            if self.chunk_sent == self.chunk.len() {
                if self.sent >= self.limit {
                    return;
                }
                self.next_chunk(rng, now);
            }
            match self.stream.write(&self.chunk[self.chunk_sent..]) {
                Ok(n) => {
                    if self.echo {
                        self.sent_log
                            .extend_from_slice(&self.chunk[self.chunk_sent..self.chunk_sent + n]);
                    }
                    self.chunk_sent += n;
                    self.sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.error = Some(e.kind()),
            }
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) {
        while !self.eof && self.error.is_none() {
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    if self.echo {
                        self.received.extend_from_slice(&buf[..n]);
                    }
                    self.received_count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.error = Some(e.kind()),
            }
        }
    }

    /// Moves the session on as far as it goes without blocking. Returns
    /// whether it is over (the caller then drops the socket).
    fn step(&mut self, rng: &mut Rng, now: Instant, buf: &mut [u8]) -> bool {
        if self.stall_until.is_some_and(|until| now >= until) {
            self.stall_until = None;
        }
        if self.shut_at.is_none() {
            self.write_some(rng, now);
        }
        if self.error.is_none()
            && self.shut_at.is_none()
            && self.sent >= self.limit
            && self.chunk_sent == self.chunk.len()
        {
            match self.ending {
                Ending::HalfClose => {
                    if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                        self.error = Some(e.kind());
                    }
                    self.shut_at = Some(now);
                }
                Ending::Close => return true,
                Ending::Reset => {
                    SockRef::from(&self.stream)
                        .set_linger(Some(Duration::ZERO))
                        .expect("SO_LINGER 0");
                    return true;
                }
            }
        }
        if self.stall_until.is_none() {
            self.read_some(buf);
        }
        if self.error.is_some() {
            return true;
        }
        match self.shut_at {
            Some(_) if self.eof => true,
            // A chaos peer's server may have paused reading, or deferred
            // its close: it does not wait forever.
            Some(at) => !self.echo && now.duration_since(at) > CHAOS_PATIENCE,
            None => false,
        }
    }

    fn finish(self) -> Finished {
        Finished {
            number: self.number,
            clean_echo: self.echo && self.ending == Ending::HalfClose,
            sent_log: self.sent_log,
            received: self.received,
            eof: self.eof,
            error: self.error,
        }
    }
}

/// A peer: runs its sessions one after another (reconnecting), drawing
/// every choice from its own generator, so what it does depends on the seed
/// alone, not on how its sessions interleave with other peers'.
struct Peer {
    rng: Rng,
    session: Option<Session>,
    next_start: Instant,
    /// Sessions started so far.
    started: u32,
}

/// A short connection that sends `K`: resumes everything paused and runs
/// every deferred close, for the end of a run when nothing else calls back.
fn kick(addr: SocketAddr) {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect a kicker (if the reactor thread panicked, see above)");
    let _ = stream.write_all(&[KICK]);
}

// ---------------------------------------------------------------------------
// A run

#[derive(Debug, Clone)]
struct Profile {
    config: Config,
    peers: u32,
    /// Sessions (connections) each peer runs in turn.
    sessions_per_peer: u32,
    sizes: Sizes,
    /// Sizes of a handler's bursts, past the high water mark. Loopback
    /// send buffers autotune to megabytes at once, so only bursts bigger
    /// than that back up in the reactor's queue when the peer stalls.
    bursts: [usize; 4],
}

fn small_buffers() -> Profile {
    let config = Config::default()
        .read_chunk(7)
        .write_high_water(64)
        .write_low_water(16)
        .reads_per_turn(1)
        .max_output(8 << 20);
    Profile {
        config,
        peers: 50,
        sessions_per_peer: 4,
        sizes: Sizes {
            echo_bytes: 32 * 1024,
            echo_huge: 64 * 1024,
            chaos_bytes: 32 * 1024,
            chunk: 300,
        },
        // The biggest can pass max_output: OutputLimit.
        bursts: [1024, 48 * 1024, 5 << 20, 16 << 20],
    }
}

fn defaults() -> Profile {
    Profile {
        config: Config::default(),
        peers: 50,
        sessions_per_peer: 4,
        sizes: Sizes {
            echo_bytes: 256 * 1024,
            echo_huge: 6 << 20,
            chaos_bytes: 256 * 1024,
            chunk: 16 * 1024,
        },
        bursts: [80 * 1024, 160 * 1024, 5 << 20, 6 << 20],
    }
}

fn run(seed: u64, profile: Profile) {
    let began = Instant::now();
    let panicked = Arc::new(AtomicBool::new(false));
    let handler = ChaosHandler::new(profile.bursts, Arc::clone(&panicked));
    let server = start(profile.config.clone(), handler);
    let addr = server.addr;
    let alive = || {
        assert!(
            !panicked.load(Ordering::SeqCst),
            "seed {seed}: the reactor thread panicked"
        );
    };

    let mut poll = Poll::new().expect("client poll");
    let mut events = Events::with_capacity(256);
    let mut peers: Vec<Peer> = (0..profile.peers)
        .map(|i| Peer {
            rng: Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(i))),
            session: None,
            next_start: began,
            started: 0,
        })
        .collect();
    let per_peer = profile.sessions_per_peer;
    let mut buf = vec![0u8; 64 * 1024];
    let mut connects = 0u64;
    let mut finished = Vec::new();
    let deadline = began + DEADLINE;
    loop {
        alive();
        let now = Instant::now();
        let mut running = 0;
        for (index, peer) in peers.iter_mut().enumerate() {
            if peer.session.is_none() && peer.started < per_peer && now >= peer.next_start {
                let number = index as u32 * per_peer + peer.started;
                let session = Session::start(
                    number,
                    &mut peer.rng,
                    addr,
                    profile.sizes,
                    &poll,
                    Token(index),
                );
                peer.session = Some(session);
                peer.started += 1;
                connects += 1;
            }
            let Some(session) = peer.session.as_mut() else {
                continue;
            };
            if session.step(&mut peer.rng, now, &mut buf) {
                let session = peer.session.take().expect("a running session");
                finished.push(session.finish());
                peer.next_start = now + Duration::from_millis(peer.rng.range(0, 5));
            } else {
                running += 1;
            }
        }
        if running == 0 && peers.iter().all(|p| p.started == per_peer) {
            break;
        }
        if now >= deadline {
            let stuck: Vec<String> = peers
                .iter()
                .filter_map(|p| p.session.as_ref())
                .map(|s| {
                    format!(
                        "session {} (echo {}, {:?}): sent {}/{}, received {}, eof {}, shut {}",
                        s.number,
                        s.echo,
                        s.ending,
                        s.sent,
                        s.limit,
                        s.received_count,
                        s.eof,
                        s.shut_at.is_some()
                    )
                })
                .collect();
            panic!(
                "seed {seed}: peers unfinished at the deadline: {stuck:#?}; stats {:?}",
                server.stats()
            );
        }
        poll.poll(&mut events, Some(Duration::from_millis(1)))
            .expect("client poll");
    }
    let peers_done = began.elapsed();

    // Every peer is gone. Connections the handler paused or whose close it
    // deferred wait for a callback: kick until all have closed, and until
    // every connection made (kickers too) was accepted.
    let deadline = Instant::now() + DEADLINE;
    let mut last_kick = Instant::now();
    let mut kicks = 0;
    let stats = loop {
        alive();
        let stats = server.stats();
        if stats.active == 0 && stats.accepted + stats.accept_errors == connects {
            break stats;
        }
        if Instant::now() >= deadline {
            // The stop closes what is still open, as `Stopped`: those are
            // the connections left open.
            let reactor = server.stop();
            let handler = reactor.handler();
            let open: Vec<String> = handler
                .records
                .iter()
                .filter(|(_, r)| {
                    !r.closed
                        || r.history
                            .last()
                            .is_some_and(|h| h.ends_with("on_close Stopped"))
                })
                .map(|(id, r)| format!("{id:?}: {r:#?}"))
                .collect();
            panic!(
                "seed {seed}: connections left open after every peer closed: {stats:?}\n\
                 {reactor:?}\npaused {:?}\ndeferred {:?}\n{}",
                handler.paused,
                handler.deferred,
                open.join("\n")
            );
        }
        if last_kick.elapsed() >= Duration::from_millis(20) {
            kick(addr);
            kicks += 1;
            connects += 1;
            last_kick = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let reactor = server.stop();
    alive();
    let mut final_stats = reactor.stats();
    // The stop's own turn counts; nothing else may have moved.
    assert!(
        final_stats.turns > stats.turns,
        "seed {seed}: {final_stats:?}"
    );
    final_stats.turns = stats.turns;
    assert_eq!(
        final_stats, stats,
        "seed {seed}: the reactor moved on after it was idle"
    );
    assert_eq!(stats.active, 0, "seed {seed}: {stats:?}");
    assert_eq!(stats.queued_output, 0, "seed {seed}: {stats:?}");
    assert_eq!(stats.accepted, stats.closed, "seed {seed}: {stats:?}");

    let handler = reactor.handler();
    assert!(
        handler.violations.is_empty(),
        "seed {seed}: callback order broken: {:#?}",
        handler.violations
    );
    assert_eq!(handler.opened, stats.accepted, "seed {seed}: on_open count");
    assert_eq!(handler.closed, stats.closed, "seed {seed}: on_close count");
    let reasons = |kind: &str| handler.reasons.get(kind).copied().unwrap_or(0);
    assert_eq!(
        reasons("Reset"),
        stats.resets,
        "seed {seed}: Reset closes against the resets counter"
    );
    assert_eq!(
        reasons("InputLimit") + reasons("OutputLimit"),
        stats.limit_closes,
        "seed {seed}: limit closes against the counter"
    );
    let unclosed: Vec<ConnId> = handler
        .records
        .iter()
        .filter(|(_, r)| !r.closed)
        .map(|(&id, _)| id)
        .collect();
    assert!(
        unclosed.is_empty(),
        "seed {seed}: no on_close for {unclosed:?}"
    );

    let mut clean = 0;
    for f in finished.iter().filter(|f| f.clean_echo) {
        clean += 1;
        let n = f.number;
        assert_eq!(f.error, None, "seed {seed}: echo session {n} failed");
        assert!(
            f.received == f.sent_log,
            "seed {seed}: echo session {n} sent {} bytes, got {} back (first difference at {:?})",
            f.sent_log.len(),
            f.received.len(),
            f.sent_log.iter().zip(&f.received).position(|(a, b)| a != b)
        );
        assert!(f.eof, "seed {seed}: echo session {n} got no EOF");
        let end = handler
            .echo_ends
            .get(&n)
            .unwrap_or_else(|| panic!("seed {seed}: echo session {n}: no on_close"));
        assert!(
            end.reason.starts_with("PeerClosed"),
            "seed {seed}: echo session {n} closed as {}",
            end.reason
        );
        assert_eq!(
            end.echoed,
            f.sent_log.len() as u64,
            "seed {seed}: echo session {n}: bytes echoed by the handler"
        );
    }
    assert!(clean > 0, "seed {seed}: no clean echo session ran");
    eprintln!(
        "chaos seed {seed}: {} sessions ({clean} exact echoes checked), {kicks} kicks, \
         peers done in {peers_done:?}, all closed in {:?}\n  ops {:?}\n  closes {:?}\n  {stats:?}",
        finished.len(),
        began.elapsed(),
        handler.ops,
        handler.reasons,
    );
}

#[test]
fn chaos_small_buffers_seed_1() {
    run(1, small_buffers());
}

#[test]
fn chaos_defaults_seed_2() {
    run(2, defaults());
}

#[test]
fn chaos_small_buffers_and_limits_seed_3() {
    // Also few events per epoll_wait and few accepts per turn (readiness
    // spreads over turns), and a max_input that held input passes.
    let mut profile = small_buffers();
    profile.config = profile
        .config
        .event_capacity(16)
        .accepts_per_turn(2)
        .max_input(HOLD_UNTIL / 2);
    run(3, profile);
}
