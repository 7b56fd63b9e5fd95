//! A peer that resets while its connection still waits in the kernel
//! backlog: by the time the reactor accepts it, `getpeername` can fail and
//! the first read or write meets the reset. That connection closes alone;
//! the one queued behind it is served.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use common::{DEADLINE, connect, start};
use socket2::SockRef;
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Echo, Handler, ListenerId};

/// What the handler saw of one connection.
#[derive(Debug)]
enum Seen {
    /// `peer_addr` asked in `on_open`: the address, or the error's text.
    Open(ConnId, Result<Addr, String>),
    Close(ConnId, String),
}

/// Echo that reports what `peer_addr` says on open and why each
/// connection closed.
struct Probe(Sender<Seen>);

impl Handler for Probe {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
        let addr = cx.peer_addr(id).map_err(|e| e.to_string());
        let _ = self.0.send(Seen::Open(id, addr));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: &mut (),
        data: &[u8],
    ) -> usize {
        Echo.on_data(cx, id, conn, data)
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _conn: (),
        reason: CloseReason,
    ) {
        let _ = self.0.send(Seen::Close(id, format!("{reason:?}")));
    }
}

#[test]
fn a_peer_that_resets_in_the_backlog_is_closed_alone() {
    let (tx, rx) = mpsc::channel();
    // One slot: the reset connection has to wait in the backlog.
    let server = start(Config::default().max_connections(1), Probe(tx));

    let mut holder = connect(server.addr);
    holder.write_all(b"hold").expect("holder write");
    let mut echo = [0; 4];
    holder.read_exact(&mut echo).expect("holder echo");
    server.wait_stats("the holder accepted", |s| s.accepted == 1);

    // Connects (the kernel completes the handshake), sends, and resets,
    // all before the reactor may accept it.
    let doomed = connect(server.addr);
    let doomed_port = doomed.local_addr().expect("doomed address").port();
    (&doomed).write_all(b"never echoed").expect("doomed write");
    SockRef::from(&doomed)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(doomed);

    let mut later = connect(server.addr);
    later.write_all(b"later").expect("later write");

    // Free the slot: the reactor accepts the reset connection, then the one
    // behind it.
    drop(holder);
    let mut back = [0; 5];
    later
        .read_exact(&mut back)
        .expect("the client behind the reset one is served");
    assert_eq!(&back, b"later");

    // The reset connection is either refused by accept (ECONNABORTED) or
    // accepted, then closed as reset; the holder closed normally.
    let stats = server.wait_stats("holder and doomed connection closed", |s| {
        s.closed + s.accept_errors >= 2 && s.active == 1
    });
    assert_eq!(stats.active, 1, "{stats:?}");
    // Two closes to collect: the holder's and the doomed connection's
    // (unless accept refused it, then one).
    let expected_closes = stats.closed as usize;
    let mut opens = Vec::new();
    let mut closes = Vec::new();
    while closes.len() < expected_closes {
        match rx.recv_timeout(DEADLINE).expect("handler reports") {
            Seen::Open(id, addr) => opens.push((id, addr)),
            Seen::Close(id, reason) => closes.push((id, reason)),
        }
    }
    while let Ok(Seen::Open(id, addr)) = rx.try_recv() {
        opens.push((id, addr));
    }
    let doomed_open = opens.iter().find(|(_, addr)| {
        addr.as_ref()
            .map_or(true, |a| a.as_tcp().is_none_or(|a| a.port() == doomed_port))
    });
    match doomed_open {
        // Accepted after the reset: getpeername may fail (ENOTCONN), which
        // is an error value, not a panic; the connection closes as reset.
        Some((id, _)) => {
            let reason = closes
                .iter()
                .find(|(closed, _)| closed == id)
                .map(|(_, reason)| reason.as_str());
            assert_eq!(reason, Some("Reset"), "opens {opens:?} closes {closes:?}");
            assert_eq!(stats.resets, 1, "{stats:?}");
        }
        None => assert!(stats.accept_errors >= 1, "{stats:?}"),
    }
    drop(later);
    server.wait_stats("every connection closed", |s| s.active == 0);
}
