//! Peers that reset mid-stream (SO_LINGER 0, then close) close their own
//! connection and nothing else: other clients keep getting exact echoes, the
//! counters add up, and the server goes on serving.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::{DEADLINE, connect, echo_once, pattern, pattern_bytes, start};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tcp_reactor::{Config, Echo};

/// Resets the connection: `SO_LINGER` 0 makes the close send RST and throw
/// away whatever is still queued either way.
fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(stream);
}

/// A connected, non-blocking client socket.
fn connect_nonblocking(addr: SocketAddr) -> TcpStream {
    let stream = connect(addr);
    stream.set_nonblocking(true).expect("non-blocking client");
    TcpStream::from_std(stream)
}

/// A client that keeps an echo exchange going, with at most [`WINDOW`]
/// bytes in flight, checking every byte that comes back, until told to
/// stop; then it half-closes and expects the rest of its echo and EOF.
struct Steady {
    name: String,
    stream: TcpStream,
    seed: u64,
    sent: u64,
    received: u64,
    stopping: bool,
    shut: bool,
    eof: bool,
}

/// Echo bytes a steady client leaves outstanding at most.
const WINDOW: u64 = 64 * 1024;

impl Steady {
    fn write_some(&mut self, buf: &mut [u8]) {
        while !self.shut {
            if self.stopping {
                self.shut = true;
                self.stream
                    .shutdown(Shutdown::Write)
                    .expect("half-close a steady client");
                return;
            }
            let in_flight = self.sent - self.received;
            if in_flight >= WINDOW {
                return;
            }
            // Messages of varying sizes, 1 to 8 KiB.
            let size = 1 + (self.sent.wrapping_mul(7) ^ self.seed) % 8192;
            let n = size.min(WINDOW - in_flight) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(self.seed, self.sent + i as u64);
            }
            match self.stream.write(&buf[..n]) {
                Ok(written) => self.sent += written as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: write at byte {}: {e}", self.name, self.sent),
            }
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) {
        while !self.eof {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    assert!(
                        self.shut && self.received == self.sent,
                        "{}: EOF after {} of {} bytes (half-closed: {})",
                        self.name,
                        self.received,
                        self.sent,
                        self.shut
                    );
                }
                Ok(n) => {
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let offset = self.received + i as u64;
                        assert_eq!(
                            b,
                            pattern(self.seed, offset),
                            "{}: echo differs from what was sent at byte {offset}",
                            self.name
                        );
                    }
                    self.received += n as u64;
                    assert!(
                        self.received <= self.sent,
                        "{}: {} bytes came back, only {} were sent",
                        self.name,
                        self.received,
                        self.sent
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: read at byte {}: {e}", self.name, self.received),
            }
        }
    }
}

/// How a resetting client leaves.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// Writes [`FIRST`] bytes, and resets as soon as the echo starts
    /// arriving, reading none of it: echo in flight towards it, its own
    /// bytes still in flight towards the server.
    Unread,
    /// Writes [`FIRST`] bytes, reads [`PART`] of the echo, writes [`MORE`]
    /// bytes and resets at once.
    PartlyRead,
}

const FIRST: usize = 256 * 1024;
const PART: usize = 64 * 1024;
const MORE: usize = 64 * 1024;

/// A client that resets its connection mid-stream.
struct Resetter<'a> {
    name: String,
    /// `None` once reset.
    stream: Option<TcpStream>,
    exit: Exit,
    data: &'a [u8],
    sent: usize,
    received: usize,
}

impl Resetter<'_> {
    /// Writes up to `end` bytes of its data, until the kernel would block.
    fn write_to(&mut self, end: usize) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while self.sent < end {
            match stream.write(&self.data[self.sent..end]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: write at byte {}: {e}", self.name, self.sent),
            }
        }
    }

    /// Checks what has come back, up to `end` bytes of echo, and consumes it
    /// (`consume`) or only looks at it. Returns how many bytes are there.
    fn check_echo(&mut self, end: usize, consume: bool, buf: &mut [u8]) -> usize {
        let Some(stream) = self.stream.as_mut() else {
            return 0;
        };
        let want = (end - self.received).min(buf.len());
        let result = loop {
            let result = if consume {
                stream.read(&mut buf[..want])
            } else {
                stream.peek(&mut buf[..want])
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => break result,
            }
        };
        match result {
            Ok(0) => panic!("{}: EOF from the server mid-stream", self.name),
            Ok(n) => {
                let at = self.received;
                assert!(
                    at + n <= self.sent,
                    "{}: more echo than was sent",
                    self.name
                );
                assert!(
                    buf[..n] == self.data[at..at + n],
                    "{}: echo differs from what was sent after byte {at}",
                    self.name
                );
                if consume {
                    self.received += n;
                }
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{}: read at byte {}: {e}", self.name, self.received),
        }
    }

    /// Moves the client on after an event; returns whether it has reset.
    fn step(&mut self, buf: &mut [u8]) -> bool {
        self.write_to(FIRST);
        let leave = match self.exit {
            Exit::Unread => self.check_echo(FIRST, false, buf) > 0,
            Exit::PartlyRead => {
                while self.received < PART && self.check_echo(PART, true, buf) > 0 {}
                if self.received == PART {
                    self.write_to(FIRST + MORE);
                }
                self.received == PART
            }
        };
        if leave {
            if let Some(stream) = self.stream.take() {
                reset(stream);
            }
        }
        self.stream.is_none()
    }
}

#[test]
fn two_hundred_clients_reset_mid_stream_while_others_get_exact_echoes() {
    const STEADY: usize = 20;
    const RESETTERS: usize = 200;
    /// Resetting clients connected at once.
    const AT_ONCE: usize = 40;
    /// Resetter `i` sends `bytes[i * STRIDE..]`: each sends different bytes
    /// at each offset, so an echo from another connection shows.
    const STRIDE: usize = 4093;
    let server = start(Config::default(), Echo);
    let bytes = pattern_bytes(0x5E7, FIRST + MORE + RESETTERS * STRIDE);
    let mut poll = Poll::new().expect("client poll");
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];

    let mut steady: Vec<Steady> = (0..STEADY)
        .map(|i| {
            let mut stream = connect_nonblocking(server.addr);
            poll.registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("register steady client");
            Steady {
                name: format!("steady client {i}"),
                stream,
                seed: 1000 + i as u64,
                sent: 0,
                received: 0,
                stopping: false,
                shut: false,
                eof: false,
            }
        })
        .collect();
    for client in &mut steady {
        client.write_some(&mut buf);
    }

    let mut resetters: Vec<Resetter<'_>> = Vec::with_capacity(RESETTERS);
    let mut reset_count = 0;
    let mut steady_left = STEADY;
    let deadline = Instant::now() + DEADLINE;
    while steady_left > 0 {
        // Keep AT_ONCE resetting clients connected until all have come.
        while resetters.len() < RESETTERS && resetters.len() - reset_count < AT_ONCE {
            let i = resetters.len();
            let mut client = connect_nonblocking(server.addr);
            poll.registry()
                .register(
                    &mut client,
                    Token(STEADY + i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("register resetting client");
            let mut resetter = Resetter {
                name: format!("resetting client {i}"),
                stream: Some(client),
                exit: if i % 2 == 0 {
                    Exit::Unread
                } else {
                    Exit::PartlyRead
                },
                data: &bytes[i * STRIDE..i * STRIDE + FIRST + MORE],
                sent: 0,
                received: 0,
            };
            resetter.write_to(FIRST);
            resetters.push(resetter);
        }
        if reset_count == RESETTERS && !steady[0].stopping {
            // All resets are done: the steady clients wind down.
            for client in &mut steady {
                client.stopping = true;
                client.write_some(&mut buf);
            }
        }

        let now = Instant::now();
        assert!(
            now < deadline,
            "deadline passed: {reset_count} of {RESETTERS} resets done, {steady_left} steady \
             clients unfinished; server: {:?}",
            server.stats()
        );
        poll.poll(&mut events, Some(deadline - now))
            .expect("client poll");
        for event in events.iter() {
            let token = event.token().0;
            if token < STEADY {
                let client = &mut steady[token];
                if client.eof {
                    continue;
                }
                client.read_some(&mut buf);
                client.write_some(&mut buf);
                if client.eof {
                    steady_left -= 1;
                }
            } else {
                let resetter = &mut resetters[token - STEADY];
                if resetter.stream.is_some() && resetter.step(&mut buf) {
                    reset_count += 1;
                }
            }
        }
    }

    for client in &steady {
        assert!(
            client.eof && client.received == client.sent,
            "{}",
            client.name
        );
        assert!(client.sent > 0, "{} sent nothing", client.name);
    }
    let echoed: u64 = steady.iter().map(|c| c.sent).sum();
    let total = (STEADY + RESETTERS) as u64;
    let stats = server.wait_stats("every connection to close", |s| {
        s.active == 0 && s.closed == total
    });
    eprintln!("steady clients got {echoed} bytes back; server: {stats:?}");
    assert_eq!(stats.accepted, total, "{stats:?}");
    assert_eq!(
        stats.resets, RESETTERS as u64,
        "each reset closes its connection as a reset, nothing else does: {stats:?}"
    );
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    assert_eq!(stats.limit_closes, 0, "{stats:?}");

    // The server goes on: a newcomer is served, small and large.
    assert_eq!(echo_once(server.addr, b"anyone home?"), b"anyone home?");
    let large = pattern_bytes(0xA11, 256 * 1024);
    assert_eq!(echo_once(server.addr, &large), large);
    let stats = server.wait_stats("the newcomers to close", |s| {
        s.active == 0 && s.closed == total + 2
    });
    assert_eq!(stats.resets, RESETTERS as u64, "{stats:?}");
}

#[test]
fn resetting_connections_held_at_the_high_water_mark_frees_their_output() {
    const PEERS: usize = 20;
    /// Far more than the kernel buffers for one connection (tens of MiB at
    /// most): a peer that gets this much taken was never pushed back.
    const CAP: usize = 512 * 1024 * 1024;
    let config = Config::default();
    let high_water = config.write_high_water as u64;
    let server = start(config, Echo);
    // Nothing is read back here, so any bytes will do.
    let chunk = pattern_bytes(0xD0, 256 * 1024);
    let mut poll = Poll::new().expect("client poll");
    let mut events = Events::with_capacity(1024);
    let mut peers: Vec<(TcpStream, usize)> = (0..PEERS)
        .map(|i| {
            // Small fixed client buffers: less hides in the peers' kernels.
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                .expect("client socket");
            socket
                .set_recv_buffer_size(64 * 1024)
                .expect("client SO_RCVBUF");
            socket
                .set_send_buffer_size(64 * 1024)
                .expect("client SO_SNDBUF");
            socket.connect(&server.addr.into()).expect("connect");
            socket.set_nonblocking(true).expect("non-blocking client");
            let mut stream = TcpStream::from_std(socket.into());
            poll.registry()
                .register(&mut stream, Token(i), Interest::WRITABLE)
                .expect("register peer");
            (stream, 0)
        })
        .collect();
    let write = |i: usize, (stream, sent): &mut (TcpStream, usize)| {
        loop {
            match stream.write(&chunk) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("peer {i}: write at byte {sent}: {e}"),
            }
            assert!(*sent < CAP, "peer {i}: wrote {sent} bytes, never blocked");
        }
    };
    for (i, peer) in peers.iter_mut().enumerate() {
        write(i, peer);
    }

    // Write without reading until the server holds every connection at the
    // high water mark: output queued both in the kernel and in the reactor.
    let held = PEERS as u64 * high_water;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = server.stats();
        assert!(
            stats.queued_output <= held,
            "more than {PEERS} x the high water mark queued: {stats:?}"
        );
        if stats.queued_output == held {
            break;
        }
        let now = Instant::now();
        assert!(now < deadline, "the server never held all peers: {stats:?}");
        poll.poll(
            &mut events,
            Some((deadline - now).min(Duration::from_millis(10))),
        )
        .expect("client poll");
        for event in events.iter() {
            let i = event.token().0;
            write(i, &mut peers[i]);
        }
    }

    for (stream, _) in peers {
        reset(stream);
    }
    let stats = server.wait_stats("every reset connection to close", |s| {
        s.active == 0 && s.closed == PEERS as u64
    });
    assert_eq!(stats.resets, PEERS as u64, "{stats:?}");
    assert_eq!(
        stats.queued_output, 0,
        "output queued for reset connections still counted: {stats:?}"
    );
    assert!(stats.backpressure_pauses >= PEERS as u64, "{stats:?}");

    let large = pattern_bytes(0xD1, 256 * 1024);
    assert_eq!(echo_once(server.addr, &large), large);
}
