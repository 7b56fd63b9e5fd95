//! Half-closes in both directions: a client that shuts down its write side
//! gets its whole echo and then EOF; a handler may keep a half-open
//! connection and talk on it after the peer's FIN; `Context::shutdown_write`
//! half-closes the server side while it goes on reading.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread;

use common::{Reports, connect, pattern, read_to_eof, start, write_pattern};
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId};

/// What a handler saw, reported to the test thread.
#[derive(Debug)]
enum Seen {
    Open(ConnId, SocketAddr),
    Data(ConnId, Vec<u8>),
    Eof(ConnId),
    /// The result of a `send` the handler made after `shutdown_write`.
    SendAfterShutdown(ConnId, Result<(), Error>),
    /// Output still queued when the handler closed.
    PendingAtClose(ConnId, usize),
    Close(ConnId, CloseReason),
}

/// The waits the tests make on the handler's reports.
impl Reports<Seen> {
    /// The id the reactor gave the client whose local address is `client`.
    #[track_caller]
    fn id_of(&mut self, client: &TcpStream) -> ConnId {
        let local = client.local_addr().expect("client local address");
        self.wait_for("on_open of the client", |seen| match seen {
            Seen::Open(id, peer) if peer == local => Ok(id),
            other => Err(other),
        })
    }

    /// Waits for `on_close` of `id` and returns its reason.
    #[track_caller]
    fn close_reason(&mut self, id: ConnId) -> CloseReason {
        self.wait_for("on_close", |seen| match seen {
            Seen::Close(closed, reason) if closed == id => Ok(reason),
            other => Err(other),
        })
    }

    /// Whether `on_close` already ran for `id` (reports received so far).
    fn closed_yet(&mut self, id: ConnId) -> bool {
        self.untaken()
            .iter()
            .any(|seen| matches!(seen, Seen::Close(closed, _) if *closed == id))
    }
}

/// Echoes, and reports opens and closes.
struct RecordingEcho {
    seen: Sender<Seen>,
}

impl Handler for RecordingEcho {
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
        let _ = cx.send(id, data);
        data.len()
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

/// Echoes; after the peer's FIN keeps the connection half-open until a
/// control connection sends `GO\n`, then sends [`TRAILER`] on every
/// half-open connection and closes it.
struct TrailerLater {
    seen: Sender<Seen>,
    half_open: Vec<ConnId>,
}

const TRAILER: &[u8] = b"-- trailer sent after your FIN --\n";
const GO: &[u8] = b"GO\n";

impl Handler for TrailerLater {
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
        if data.len() < GO.len() && GO.starts_with(data) {
            return 0; // maybe the start of a command: wait for the rest
        }
        if data.starts_with(GO) {
            for other in self.half_open.drain(..) {
                let _ = cx.send(other, TRAILER);
                cx.close(other);
            }
            let _ = cx.send(id, b"ok\n");
            return GO.len();
        }
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_eof(&mut self, _cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
        // No close: the connection stays half-open.
        self.half_open.push(id);
        let _ = self.seen.send(Seen::Eof(id));
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

/// Echoes the first line, then half-closes (`shutdown_write`) and tries to
/// send once more; afterwards reports what it receives and closes after
/// `bye\n`.
struct HalfCloser {
    seen: Sender<Seen>,
}

#[derive(Default)]
struct HalfState {
    shut: bool,
    received: Vec<u8>,
}

impl Handler for HalfCloser {
    type Conn = HalfState;
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) -> HalfState {
        let _ = self
            .seen
            .send(Seen::Open(id, peer.as_tcp().expect("a TCP peer")));
        HalfState::default()
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        state: &mut HalfState,
        data: &[u8],
    ) -> usize {
        if !state.shut {
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                return 0;
            };
            let _ = cx.send(id, &data[..=end]);
            cx.shutdown_write(id);
            state.shut = true;
            let late = cx.send(id, b"too late\n");
            let _ = self.seen.send(Seen::SendAfterShutdown(id, late));
            return end + 1;
        }
        state.received.extend_from_slice(data);
        let _ = self.seen.send(Seen::Data(id, data.to_vec()));
        if state.received.ends_with(b"bye\n") {
            cx.close(id);
        }
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: HalfState,
        reason: CloseReason,
    ) {
        let _ = self.seen.send(Seen::Close(id, reason));
    }
}

/// Answers only once the request is complete (the peer's FIN): a reply
/// larger than the socket buffers, sent from `on_eof`, then `close`.
struct ReplyOnEof {
    seen: Sender<Seen>,
    reply: Arc<[u8]>,
}

impl Handler for ReplyOnEof {
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
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        data.len()
    }

    fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
        let _ = cx.send(id, &self.reply);
        let _ = self
            .seen
            .send(Seen::PendingAtClose(id, cx.pending_output(id)));
        cx.close(id);
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

#[test]
fn client_half_close_gets_whole_echo_then_eof() {
    let (tx, mut reports) = Reports::new();
    let server = start(Config::default(), RecordingEcho { seen: tx });
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);

    let message = b"every byte sent before the FIN comes back";
    client.write_all(message).expect("write");
    client.shutdown(Shutdown::Write).expect("client half-close");
    let back = read_to_eof(&mut client).expect("the echo, then a clean EOF");
    assert_eq!(back, message);

    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");
}

/// Streams `total` pattern bytes, then half-closes; returns the count sent.
fn send_then_half_close(stream: TcpStream, seed: u64, total: u64) -> u64 {
    let sent = write_pattern(&stream, seed, total);
    stream
        .shutdown(Shutdown::Write)
        .expect("half-close after the payload");
    sent
}

/// Reads to EOF, checking every byte against the pattern; returns the count
/// and the offset of the first wrong byte.
fn receive_to_eof(mut stream: TcpStream, seed: u64) -> (u64, Option<u64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut mismatch = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, mismatch),
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let offset = received + i as u64;
                    if mismatch.is_none() && b != pattern(seed, offset) {
                        mismatch = Some(offset);
                    }
                }
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the echo after {received} bytes: {e}"),
        }
    }
}

#[test]
fn megabytes_sent_before_a_half_close_are_all_echoed() {
    const CLIENTS: u64 = 3;
    const TOTAL: u64 = 8 * 1024 * 1024; // far more than the socket buffers hold
    let (tx, mut reports) = Reports::new();
    let server = start(Config::default(), RecordingEcho { seen: tx });

    let mut ids = Vec::new();
    let mut threads = Vec::new();
    for seed in 0..CLIENTS {
        let client = connect(server.addr);
        ids.push(reports.id_of(&client));
        let writer = client.try_clone().expect("clone the client socket");
        threads.push((
            thread::spawn(move || send_then_half_close(writer, seed, TOTAL)),
            thread::spawn(move || receive_to_eof(client, seed)),
        ));
    }
    for (seed, (writer, reader)) in threads.into_iter().enumerate() {
        let sent = writer.join().expect("writer thread");
        let (received, mismatch) = reader.join().expect("reader thread");
        assert_eq!(sent, TOTAL, "client {seed}");
        assert_eq!(received, TOTAL, "client {seed}: echo then EOF");
        assert_eq!(mismatch, None, "client {seed}: first wrong byte");
    }
    for id in ids {
        let reason = reports.close_reason(id);
        assert!(
            matches!(reason, CloseReason::PeerClosed),
            "{id}: {reason:?}"
        );
    }
    let stats = server.wait_stats("all three connections closed", |s| s.closed == CLIENTS);
    assert_eq!(stats.bytes_in, CLIENTS * TOTAL, "{stats:?}");
    assert_eq!(stats.bytes_out, CLIENTS * TOTAL, "{stats:?}");
    assert_eq!(stats.queued_output, 0, "{stats:?}");
}

#[test]
fn handler_keeps_connection_half_open_and_sends_a_trailer_after_eof() {
    let (tx, mut reports) = Reports::new();
    let handler = TrailerLater {
        seen: tx,
        half_open: Vec::new(),
    };
    let server = start(Config::default(), handler);
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);

    let payload = b"payload, then my FIN";
    client.write_all(payload).expect("write");
    client.shutdown(Shutdown::Write).expect("client half-close");
    let mut echo = vec![0; payload.len()];
    client
        .read_exact(&mut echo)
        .expect("echo before the trailer");
    assert_eq!(echo, payload);
    reports.wait_for("on_eof", |seen| match seen {
        Seen::Eof(eof) if eof == id => Ok(()),
        other => Err(other),
    });

    // on_eof ran and neither sent nor closed: nothing more is on its way,
    // not even a FIN.
    client.set_nonblocking(true).expect("non-blocking");
    match client.read(&mut [0; 64]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("half-open connection: expected nothing yet, got {other:?}"),
    }
    client.set_nonblocking(false).expect("blocking again");
    assert!(!reports.closed_yet(id), "closed while half-open");

    let mut control = connect(server.addr);
    control.write_all(GO).expect("write GO");
    let mut ok = [0; 3];
    control.read_exact(&mut ok).expect("GO acknowledged");
    assert_eq!(&ok, b"ok\n");

    let rest = read_to_eof(&mut client).expect("trailer, then a clean EOF");
    assert_eq!(rest, TRAILER);
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");
}

#[test]
fn shutdown_write_sends_fin_but_keeps_reading() {
    let (tx, mut reports) = Reports::new();
    let server = start(Config::default(), HalfCloser { seen: tx });
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);

    client.write_all(b"hello\n").expect("write the first line");
    let first = read_to_eof(&mut client).expect("echo, then the server's FIN");
    assert_eq!(first, b"hello\n");
    let late = reports.wait_for("the send after shutdown_write", |seen| match seen {
        Seen::SendAfterShutdown(sid, result) if sid == id => Ok(result),
        other => Err(other),
    });
    assert!(
        matches!(late, Err(Error::WriteClosed(closed)) if closed == id),
        "{late:?}"
    );

    // Our direction is still open: the server goes on receiving.
    let more = b"still talking after your FIN\nbye\n";
    client
        .write_all(&more[..10])
        .expect("write after the server's FIN");
    client
        .write_all(&more[10..])
        .expect("write after the server's FIN");
    let mut received = Vec::new();
    while received.len() < more.len() {
        let chunk = reports.wait_for("bytes sent after the server's FIN", |seen| match seen {
            Seen::Data(did, bytes) if did == id => Ok(bytes),
            other => Err(other),
        });
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, more);

    // The handler closed on `bye`, with everything we sent read: nothing
    // to linger for, so the slot is freed without waiting for our FIN.
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    let mut byte = [0; 1];
    assert_eq!(
        client.read(&mut byte).expect("a clean end, not a reset"),
        0,
        "nothing after the server's FIN"
    );
}

#[test]
fn reply_sent_after_the_peers_fin_is_flushed_before_closing() {
    const REPLY: u64 = 8 * 1024 * 1024; // more than the kernel takes at once
    let reply: Arc<[u8]> = (0..REPLY).map(|i| pattern(31, i)).collect();
    let (tx, mut reports) = Reports::new();
    let handler = ReplyOnEof {
        seen: tx,
        reply: Arc::clone(&reply),
    };
    let server = start(Config::default(), handler);
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);

    client.write_all(b"the whole request").expect("write");
    client.shutdown(Shutdown::Write).expect("client half-close");
    let pending = reports.wait_for("the close in on_eof", |seen| match seen {
        Seen::PendingAtClose(pid, n) if pid == id => Ok(n),
        other => Err(other),
    });
    assert!(
        pending > 0,
        "nothing was queued at close: the test proves nothing"
    );
    let (received, mismatch) = receive_to_eof(client, 31);
    assert_eq!(received, REPLY, "the whole reply, then EOF");
    assert_eq!(mismatch, None, "first wrong byte");
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");
}
