//! Backpressure: a peer that sends without reading is held to the write
//! high water mark in the server and pushed back by TCP flow control, not
//! buffered without bound; once it reads, every byte arrives intact.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{DEADLINE, Server, connect, echo_once, pattern_bytes, start};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use tcp_reactor::{Config, Echo, Stats};

/// How long a client poll waits before it looks whether the server, too,
/// stood still. Only decides when to look again; no assertion depends on it.
const QUIET: Duration = Duration::from_millis(25);

/// Whole loop turns the server must run without moving a byte (and no
/// client socket get an event) for the exchange to count as stalled. A
/// stalled reactor sleeps in `epoll_wait`; the test wakes it for these
/// turns (`Server::wake`), in which it serves whatever is pending.
const IDLE_TURNS: u64 = 3;

/// Bytes the kernel may buffer for one loopback connection whose client
/// never reads: the client's send buffer and the server's receive and send
/// buffers at their autotuning maxima (`tcp_wmem`, `tcp_rmem`), plus the
/// client's receive buffer at its initial size (it grows only as the client
/// reads). 40 MiB with `tcp_rmem` at 32 MiB; 16 MiB assumed where `/proc`
/// does not say.
fn kernel_buffering() -> usize {
    let sizes = |name: &str| -> Option<Vec<usize>> {
        let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok()?;
        let sizes: Vec<usize> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (sizes.len() == 3).then_some(sizes)
    };
    match (sizes("tcp_rmem"), sizes("tcp_wmem")) {
        (Some(rmem), Some(wmem)) => 2 * wmem[2] + rmem[2] + rmem[1],
        _ => 16 * 1024 * 1024,
    }
}

/// Peers sharing [`shared_pattern`] start `STRIDE * i` bytes apart: each
/// sends different bytes at each offset, so an echo from another connection
/// shows.
const STRIDE: usize = 4093;

/// The most one client writes without reading, 64 MiB or more: well above
/// what the kernel can hold for its connection, so a client that gets it
/// all taken was not pushed back; and pattern bytes for up to 200 peers
/// writing that much, [`STRIDE`] apart. Computed once for the file.
fn shared_pattern() -> &'static (usize, Vec<u8>) {
    static SHARED: OnceLock<(usize, Vec<u8>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let most = (64 * 1024 * 1024).max(kernel_buffering() + 16 * 1024 * 1024);
        (most, pattern_bytes(0xB0B, most + 200 * STRIDE))
    })
}

/// The most one client writes without reading (see [`shared_pattern`]).
fn most_unread() -> usize {
    shared_pattern().0
}

/// Peer `i`'s bytes: `len` bytes of [`shared_pattern`] from `i * STRIDE`.
fn peer_bytes(i: usize, len: usize) -> &'static [u8] {
    &shared_pattern().1[i * STRIDE..i * STRIDE + len]
}

/// One non-blocking client sending `data` and expecting it back, checking
/// every byte in order as it arrives.
struct Peer<'a> {
    name: String,
    stream: TcpStream,
    data: &'a [u8],
    sent: usize,
    received: usize,
    /// The last write stopped on `WouldBlock`: the kernel would take no more.
    write_blocked: bool,
    /// Times a write stopped on `WouldBlock`.
    would_blocks: u64,
    shut: bool,
    eof: bool,
}

impl<'a> Peer<'a> {
    /// Connects to `server_addr`; with `socket_buffers`, the client's kernel
    /// send and receive buffers are fixed to about that size (no
    /// autotuning), so that less of the exchange hides in the client's kernel.
    fn connect(
        name: String,
        server_addr: SocketAddr,
        socket_buffers: Option<usize>,
        data: &'a [u8],
    ) -> Peer<'a> {
        let std_stream = match socket_buffers {
            None => connect(server_addr),
            Some(size) => {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                    .expect("client socket");
                socket.set_recv_buffer_size(size).expect("client SO_RCVBUF");
                socket.set_send_buffer_size(size).expect("client SO_SNDBUF");
                socket.connect(&server_addr.into()).expect("connect");
                socket.into()
            }
        };
        std_stream
            .set_nonblocking(true)
            .expect("client socket non-blocking");
        Peer {
            name,
            stream: TcpStream::from_std(std_stream),
            data,
            sent: 0,
            received: 0,
            write_blocked: false,
            would_blocks: 0,
            shut: false,
            eof: false,
        }
    }

    /// Writes until everything is sent or the kernel would block; after the
    /// last byte, half-closes when `shut_when_done`.
    fn write_some(&mut self, shut_when_done: bool) {
        self.write_blocked = false;
        while self.sent < self.data.len() {
            let chunk = &self.data[self.sent..(self.sent + 256 * 1024).min(self.data.len())];
            match self.stream.write(chunk) {
                Ok(0) => panic!("{}: write returned 0 at byte {}", self.name, self.sent),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    self.would_blocks += 1;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: write at byte {}: {e}", self.name, self.sent),
            }
        }
        if shut_when_done && !self.shut {
            self.shut = true;
            self.stream
                .shutdown(Shutdown::Write)
                .expect("half-close after the last byte");
        }
    }

    /// Reads what is there, checking each byte against what was sent at that
    /// offset; notes the server's EOF.
    fn read_some(&mut self, buf: &mut [u8]) {
        while !self.eof {
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    let end = self.received + n;
                    assert!(
                        end <= self.sent,
                        "{}: {end} bytes came back, only {} were sent",
                        self.name,
                        self.sent
                    );
                    if buf[..n] != self.data[self.received..end] {
                        let at = (0..n)
                            .find(|&i| buf[i] != self.data[self.received + i])
                            .map_or(self.received, |i| self.received + i);
                        panic!(
                            "{}: echo differs from what was sent at byte {at}",
                            self.name
                        );
                    }
                    self.received = end;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: read at byte {}: {e}", self.name, self.received),
            }
        }
    }

    /// Everything came back, followed by the server's EOF.
    fn done(&self) -> bool {
        self.eof && self.received == self.data.len()
    }
}

/// The counters that move while the server makes any progress.
fn progress(stats: &Stats) -> (u64, u64, u64) {
    (stats.bytes_in, stats.bytes_out, stats.queued_output)
}

/// The peers write without reading until the exchange stalls, and return
/// the server's counters then. Stalled means: every peer has sent
/// everything or is blocked and no writable event let one write more,
/// `stalled` holds for the server's counters, and meanwhile the server ran
/// [`IDLE_TURNS`] whole loop turns without moving a byte (its counters are
/// published once per turn, so an unchanged snapshot alone could just be
/// one long turn; the test wakes the server for those turns). Every
/// snapshot seen is passed to `check` first.
fn write_until_stalled(
    server: &Server<Echo>,
    poll: &mut Poll,
    peers: &mut [Peer<'_>],
    mut check: impl FnMut(&Stats),
    stalled: impl Fn(&Stats) -> bool,
) -> Stats {
    let mut events = Events::with_capacity(1024);
    let deadline = Instant::now() + DEADLINE;
    let mut quiet_since: Option<Stats> = None;
    for peer in peers.iter_mut() {
        peer.write_some(false);
    }
    loop {
        let now = server.stats();
        check(&now);
        assert!(
            Instant::now() < deadline,
            "the no-reading phase did not stall before the deadline: {now:?}"
        );
        let all_blocked = peers
            .iter()
            .all(|p| p.write_blocked || p.sent == p.data.len());
        if !all_blocked || !stalled(&now) {
            quiet_since = None;
        } else if let Some(since) = quiet_since.filter(|s| progress(s) == progress(&now)) {
            if now.turns >= since.turns + IDLE_TURNS {
                return now;
            }
            server.wake();
        } else {
            quiet_since = Some(now);
            server.wake();
        }
        poll.poll(&mut events, Some(QUIET)).expect("client poll");
        for event in events.iter() {
            let peer = &mut peers[event.token().0];
            if event.is_writable() && peer.sent < peer.data.len() {
                quiet_since = None;
                peer.write_some(false);
            }
        }
    }
}

/// Every peer reads all of its echo while writing the rest, then
/// half-closes, until each has everything back and the server's EOF. Every
/// snapshot seen is passed to `check`.
fn read_and_write_to_the_end(
    server: &Server<Echo>,
    poll: &mut Poll,
    peers: &mut [Peer<'_>],
    mut check: impl FnMut(&Stats),
) {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + DEADLINE;
    // Edges that came while a peer was not reading were consumed by the
    // first phase: serve every peer once before waiting for new ones.
    for peer in peers.iter_mut() {
        peer.read_some(&mut buf);
        peer.write_some(true);
    }
    let mut left = peers.iter().filter(|p| !p.done()).count();
    while left > 0 {
        check(&server.stats());
        let now = Instant::now();
        assert!(
            now < deadline,
            "{left} peers without their whole echo at the deadline"
        );
        poll.poll(&mut events, Some((deadline - now).min(QUIET)))
            .expect("client poll");
        for event in events.iter() {
            let peer = &mut peers[event.token().0];
            if peer.done() {
                continue;
            }
            peer.read_some(&mut buf);
            peer.write_some(true);
            assert!(
                !peer.eof || peer.done(),
                "{}: EOF after {} of {} bytes",
                peer.name,
                peer.received,
                peer.data.len()
            );
            if peer.done() {
                left -= 1;
            }
        }
    }
}

fn register(poll: &Poll, peers: &mut [Peer<'_>]) {
    for (i, peer) in peers.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut peer.stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .expect("register client socket");
    }
}

#[test]
fn a_client_writing_64_mib_without_reading_is_held_at_the_high_water_mark() {
    // 64 MiB, or more where the kernel could buffer that much.
    let total = most_unread();
    let config = Config::default();
    let high_water = config.write_high_water as u64;
    let server = start(config, Echo);
    let data = peer_bytes(0, total);
    let mut poll = Poll::new().expect("client poll");
    let mut peers = [Peer::connect("client".into(), server.addr, None, data)];
    register(&poll, &mut peers);

    let bounded = |stats: &Stats| {
        assert!(
            stats.queued_output <= high_water,
            "queued output passed the high water mark ({high_water}): {stats:?}"
        );
        assert!(
            stats.peak_queued_output <= high_water,
            "peak queued output passed the high water mark ({high_water}): {stats:?}"
        );
        assert_eq!(
            stats.bytes_in,
            stats.bytes_out + stats.queued_output,
            "echo read bytes that were neither written nor queued: {stats:?}"
        );
    };

    // Phase 1: write, never read. The server echoes until the client's
    // receive buffer and its own send buffer are full, queues up to the high
    // water mark, stops reading; then its receive buffer and the client's
    // send buffer fill and the client's writes block for good.
    let stalled = write_until_stalled(&server, &mut poll, &mut peers, bounded, |s| {
        s.backpressure_pauses >= 1 && s.queued_output == high_water
    });
    let client = &peers[0];
    assert!(client.would_blocks >= 1, "the client never hit WouldBlock");
    assert!(
        client.sent < total,
        "all {total} bytes were taken from a client that reads nothing: no flow control"
    );
    assert!(stalled.bytes_in <= client.sent as u64, "{stalled:?}");
    assert_eq!(client.received, 0, "the client has not read yet");
    assert_eq!(stalled.active, 1, "{stalled:?}");
    eprintln!(
        "stalled after the client wrote {} bytes without reading; server: {stalled:?}",
        client.sent
    );

    // Phase 2: read everything while writing the rest; half-close at the end.
    read_and_write_to_the_end(&server, &mut poll, &mut peers, bounded);
    assert_eq!(peers[0].received, total);

    let end = server.wait_stats("the connection to close after the echo", |s| {
        s.active == 0 && s.closed == 1
    });
    bounded(&end);
    assert!(end.backpressure_pauses >= 1, "{end:?}");
    assert_eq!(end.peak_queued_output, high_water, "{end:?}");
    assert_eq!(end.bytes_in, total as u64, "{end:?}");
    assert_eq!(end.bytes_out, total as u64, "{end:?}");
    assert_eq!(end.queued_output, 0, "{end:?}");
    assert_eq!(end.resets, 0, "{end:?}");
}

#[test]
fn two_hundred_peers_that_do_not_read_hold_at_most_their_high_water_each() {
    const PEERS: usize = 200;
    // Small fixed client buffers keep the peers' own kernels from hiding
    // megabytes each (and the test fast); the server's are untouched.
    const CLIENT_BUFFERS: usize = 64 * 1024;
    // Each peer writes until its writes block, not a fixed amount: the
    // kernel alone absorbs several MiB per connection (the server's send
    // buffer autotunes up to `tcp_wmem`'s 4 MiB, its receive buffer further),
    // and a server that never has to queue could not fail this test. So
    // every peer goes on until flow control stops it, up to this much.
    let cap = most_unread();
    let config = Config::default();
    let high_water = config.write_high_water as u64;
    let server = start(config, Echo);
    let mut poll = Poll::new().expect("client poll");
    let mut peers: Vec<Peer<'_>> = (0..PEERS)
        .map(|i| {
            let data = peer_bytes(i, cap);
            Peer::connect(format!("peer {i}"), server.addr, Some(CLIENT_BUFFERS), data)
        })
        .collect();
    register(&poll, &mut peers);
    server.wait_stats("all peers accepted", |s| s.active == PEERS as u64);

    let all_held = PEERS as u64 * high_water;
    let bounded = |stats: &Stats| {
        assert!(
            stats.queued_output <= stats.active * high_water,
            "queued output passed {} connections x the high water mark ({high_water}): {stats:?}",
            stats.active
        );
        assert!(
            stats.active <= PEERS as u64 + 1,
            "more connections than the test opened: {stats:?}"
        );
        assert!(
            stats.peak_queued_output <= high_water,
            "one connection's queued output passed the high water mark ({high_water}): {stats:?}"
        );
        assert_eq!(
            stats.bytes_in,
            stats.bytes_out + stats.queued_output,
            "echo read bytes that were neither written nor queued: {stats:?}"
        );
    };

    // Phase 1: every peer writes, none reads, until nothing moves and the
    // server holds every connection at the high water mark.
    let stalled = write_until_stalled(&server, &mut poll, &mut peers, bounded, |s| {
        s.queued_output == all_held
    });
    for peer in &peers {
        assert!(
            peer.write_blocked && peer.sent < cap,
            "{}: all {cap} bytes taken while it read nothing: no flow control",
            peer.name
        );
    }
    assert_eq!(stalled.active, PEERS as u64, "{stalled:?}");
    assert!(
        stalled.backpressure_pauses >= PEERS as u64,
        "not every connection reached the high water mark: {stalled:?}"
    );
    let taken: usize = peers.iter().map(|p| p.sent).sum();
    let mut sent: Vec<usize> = peers.iter().map(|p| p.sent).collect();
    sent.sort_unstable();
    eprintln!(
        "stalled: the peers wrote {taken} bytes without reading (each: least {}, median {}, \
         most {}); server: {stalled:?}",
        sent[0],
        sent[PEERS / 2],
        sent[PEERS - 1]
    );

    // Meanwhile a newcomer is served as usual, small and large.
    assert_eq!(echo_once(server.addr, b"still there?"), b"still there?");
    let large = pattern_bytes(0xF4E5, 256 * 1024);
    assert_eq!(echo_once(server.addr, &large), large);
    let after = server.wait_stats("the newcomers to close", |s| {
        s.closed == 2 && s.active == PEERS as u64
    });
    bounded(&after);
    assert_eq!(
        after.queued_output, all_held,
        "the held connections moved while the peers read nothing: {after:?}"
    );

    // Phase 2: every peer reads back all it wrote, intact, then half-closes.
    for peer in &mut peers {
        peer.data = &peer.data[..peer.sent];
    }
    read_and_write_to_the_end(&server, &mut poll, &mut peers, bounded);
    let end = server.wait_stats("every peer's connection to close", |s| s.active == 0);
    bounded(&end);
    assert_eq!(end.closed, PEERS as u64 + 2, "{end:?}");
    assert_eq!(end.resets, 0, "{end:?}");
    assert_eq!(end.queued_output, 0, "{end:?}");
    let echoed = (taken + "still there?".len() + large.len()) as u64;
    assert_eq!(end.bytes_in, echoed, "{end:?}");
    assert_eq!(end.bytes_out, echoed, "{end:?}");
}
