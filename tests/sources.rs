//! The program's own sources: a UDP socket registered with
//! `Context::register` before `run` echoes datagrams from `on_source` in
//! the same loop as TCP echo connections; once deregistered it gets no
//! more `on_source` calls (counted by the handler, a TCP round trip
//! proving turns passed), a second deregister is refused, and registered
//! again it gets a new id and the datagram that waited meanwhile.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use common::{DEADLINE, Reports, any_local_address, connect, echo_once, run_on_thread};
use mio::Interest;
use mio::event::Event;
use mio::net::UdpSocket;
use tcp_reactor::{Addr, Config, ConnId, Context, Error, Handler, ListenerId, Reactor, SourceId};

/// What the handler counts, read by the test thread.
#[derive(Debug, Default)]
struct Counts {
    /// `on_source` calls.
    calls: AtomicU64,
    /// Datagrams echoed.
    datagrams: AtomicU64,
    /// `on_source` calls for an id that is not the socket's current one,
    /// and socket errors other than `WouldBlock`.
    faults: AtomicU64,
}

#[derive(Debug)]
enum Msg {
    Deregister,
    Register,
}

#[derive(Debug)]
enum Seen {
    Deregistered {
        first: Result<(), Error>,
        /// A second deregister of the same id.
        second: Result<(), Error>,
    },
    Registered(Result<SourceId, Error>),
}

/// Echoes TCP connections, and datagrams on its UDP socket.
struct UdpEcho {
    socket: Option<UdpSocket>,
    source: Option<SourceId>,
    counts: Arc<Counts>,
    seen: Sender<Seen>,
}

impl Handler for UdpEcho {
    type Conn = ();
    type Message = Msg;

    fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, _: &Addr, _: ListenerId) {}

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        cx.send(id, data).expect("echo");
        data.len()
    }

    fn on_source(&mut self, _cx: &mut Context<'_>, source: SourceId, event: &Event) {
        // Counted first, like the datagrams: what a client sees is counted.
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        if Some(source) != self.source {
            self.counts.faults.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if !event.is_readable() {
            return;
        }
        let socket = self.socket.as_ref().expect("the socket");
        let mut buf = [0; 2048];
        // Edge-triggered: read until WouldBlock, or no new event comes for
        // what is left.
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    // Counted before the echo: a client that has it back
                    // sees it counted.
                    self.counts.datagrams.fetch_add(1, Ordering::SeqCst);
                    if socket.send_to(&buf[..n], from).is_err() {
                        self.counts.faults.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.counts.faults.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, cx: &mut Context<'_>, message: Msg) {
        let socket = self.socket.as_mut().expect("the socket");
        match message {
            Msg::Deregister => {
                let id = self.source.take().expect("registered");
                let first = cx.deregister(id, socket);
                let second = cx.deregister(id, socket);
                let _ = self.seen.send(Seen::Deregistered { first, second });
            }
            Msg::Register => {
                let result = cx.register(socket, Interest::READABLE);
                self.source = result.as_ref().ok().copied();
                let _ = self.seen.send(Seen::Registered(result));
            }
        }
    }
}

/// A UDP client of the reactor's socket, with a receive timeout of
/// [`DEADLINE`].
fn udp_client(server: SocketAddr) -> StdUdpSocket {
    let client = StdUdpSocket::bind(any_local_address()).expect("client bind");
    client.connect(server).expect("client connect");
    client.set_read_timeout(Some(DEADLINE)).expect("timeout");
    client
}

#[track_caller]
fn recv_exactly(client: &StdUdpSocket, expected: &[u8]) {
    let mut buf = [0; 2048];
    let n = client.recv(&mut buf).expect("the echoed datagram");
    assert_eq!(&buf[..n], expected, "the datagram echoed");
}

#[track_caller]
fn tcp_round_trip(client: &mut std::net::TcpStream, message: &[u8]) {
    use std::io::{Read, Write};
    client.write_all(message).expect("write");
    let mut back = vec![0; message.len()];
    client.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, message);
}

#[test]
fn a_udp_socket_echoes_beside_tcp_and_falls_silent_once_deregistered() {
    let counts = Arc::new(Counts::default());
    let (seen, mut reports) = Reports::new();
    let handler = UdpEcho {
        socket: None,
        source: None,
        counts: Arc::clone(&counts),
        seen,
    };
    let mut socket = UdpSocket::bind(any_local_address()).expect("UDP bind");
    let udp_addr = socket.local_addr().expect("UDP address");
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let mut cx = reactor.context();
    cx.listen(any_local_address()).expect("TCP listener");
    let source = cx
        .register(&mut socket, Interest::READABLE)
        .expect("register the UDP socket");
    let handler = reactor.handler_mut();
    handler.socket = Some(socket);
    handler.source = Some(source);
    let server = run_on_thread(reactor);

    let udp = udp_client(udp_addr);
    let mut tcp = [connect(server.addr), connect(server.addr)];
    let mut sent = 0u64;
    for i in 0..40 {
        let datagram = format!("datagram {i}");
        udp.send(datagram.as_bytes()).expect("send a datagram");
        sent += 1;
        recv_exactly(&udp, datagram.as_bytes());
        tcp_round_trip(&mut tcp[i % 2], format!("tcp {i}").as_bytes());
        if i % 10 == 9 {
            // A burst read in one `on_source` call or several: each comes
            // back, in order (loopback keeps it).
            let burst: Vec<String> = (0..8).map(|j| format!("burst {i}.{j}")).collect();
            for datagram in &burst {
                udp.send(datagram.as_bytes()).expect("send a datagram");
                sent += 1;
            }
            tcp_round_trip(&mut tcp[(i + 1) % 2], b"between the burst and its echo");
            for datagram in &burst {
                recv_exactly(&udp, datagram.as_bytes());
            }
        }
    }
    assert_eq!(counts.datagrams.load(Ordering::SeqCst), sent);
    assert_eq!(counts.faults.load(Ordering::SeqCst), 0, "faults");
    let calls = counts.calls.load(Ordering::SeqCst);
    assert!(
        (1..=sent).contains(&calls),
        "{calls} on_source calls for {sent} datagrams"
    );
    assert_eq!(server.stats().closed, 0, "the TCP clients stayed open");

    // Deregistered: a second try is refused, as for any unknown id.
    server
        .handle
        .send_message(Msg::Deregister)
        .expect("message the reactor");
    let (first, second) = reports.wait_for("the deregistration", |s| match s {
        Seen::Deregistered { first, second } => Ok((first, second)),
        other => Err(other),
    });
    first.expect("deregister");
    match second {
        Err(Error::Register { source, .. }) => assert_eq!(source.kind(), ErrorKind::NotFound),
        other => panic!("a second deregister: {other:?}"),
    }
    // Every call so far ran before the handler reported.
    let calls = counts.calls.load(Ordering::SeqCst);

    // A datagram now raises no `on_source`: the TCP round trips after it
    // (one on a new connection, accepted in a later turn still) prove the
    // loop turned with it queued on the socket.
    udp.send(b"while deregistered").expect("send a datagram");
    tcp_round_trip(&mut tcp[0], b"a turn");
    assert_eq!(echo_once(server.addr, b"more turns"), b"more turns");
    tcp_round_trip(&mut tcp[1], b"and another");
    assert_eq!(
        counts.calls.load(Ordering::SeqCst),
        calls,
        "on_source ran for a deregistered source"
    );
    assert_eq!(counts.datagrams.load(Ordering::SeqCst), sent);

    // Registered again: a new id, and the datagram that waited is served.
    server
        .handle
        .send_message(Msg::Register)
        .expect("message the reactor");
    let again = reports.wait_for("the registration", |s| match s {
        Seen::Registered(result) => Ok(result),
        other => Err(other),
    });
    let again = again.expect("register again");
    assert_ne!(again, source, "a new registration gets a new id");
    recv_exactly(&udp, b"while deregistered");
    assert_eq!(counts.datagrams.load(Ordering::SeqCst), sent + 1);
    assert!(counts.calls.load(Ordering::SeqCst) > calls);
    assert_eq!(counts.faults.load(Ordering::SeqCst), 0, "faults");
}
