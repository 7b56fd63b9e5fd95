//! Ids and tokens of closed connections never reach another connection:
//! an event already in this turn's batch for a connection the handler just
//! aborted is dropped, and a slot's next tenant is out of reach of every
//! call naming the previous one.
//!
//! Both tests drive the reactor with `run_once` from the test thread, so
//! what lands in which turn is under the test's control.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::{DEADLINE, any_local_address, connect, proc_addr, wait_until};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId, Reactor,
};

/// One `run_once` wait: short, so a condition that is not met yet is
/// re-checked often; the overall wait is bounded by [`DEADLINE`].
const TURN: Duration = Duration::from_millis(20);

/// Runs turns until `condition` holds for the handler, failing after
/// [`DEADLINE`].
#[track_caller]
fn turn_until<H: Handler>(reactor: &mut Reactor<H>, what: &str, condition: impl Fn(&H) -> bool) {
    common::drive_until(reactor, what, |reactor| condition(reactor.handler()));
}

/// `(slot index, generation)` read back from the documented `Display` of an
/// id, `index.generation`.
fn slot_of(id: ConnId) -> (usize, u32) {
    let text = id.to_string();
    let (index, generation) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("ConnId displays as index.generation, got {text:?}"));
    (
        index.parse().expect("slot index is a number"),
        generation.parse().expect("generation is a number"),
    )
}

/// Bytes received but not yet read by the socket whose local address is
/// `local` and peer `remote`, from `/proc/net/tcp` (IPv4 only); `None` while
/// the kernel lists no such socket.
fn unread_bytes(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5
            || proc_addr(fields[1]) != Some(local)
            || proc_addr(fields[2]) != Some(remote)
        {
            return None;
        }
        let (_tx, rx) = fields[4].split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Echoes, and on the first bytes it gets from any connection aborts the
/// other one: that one's readable event is then still in the batch being
/// dispatched.
#[derive(Default)]
struct AbortOther {
    opened: Vec<ConnId>,
    peers: Vec<SocketAddr>,
    /// Every `on_data` call, in order.
    data: Vec<(ConnId, Vec<u8>)>,
    /// `(aborting connection, aborted connection)`, set once.
    aborted: Option<(ConnId, ConnId)>,
    /// Every `on_close` call: the id and the reason's `Debug`.
    closes: Vec<(ConnId, String)>,
}

impl AbortOther {
    fn peer_of(&self, id: ConnId) -> SocketAddr {
        let i = self
            .opened
            .iter()
            .position(|&o| o == id)
            .expect("an opened id");
        self.peers[i]
    }
}

impl Handler for AbortOther {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) {
        self.opened.push(id);
        self.peers.push(peer.as_tcp().expect("a TCP peer"));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        self.data.push((id, data.to_vec()));
        if self.aborted.is_none() {
            if let Some(&other) = self.opened.iter().find(|&&o| o != id) {
                cx.abort(other);
                self.aborted = Some((id, other));
            }
        }
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
        self.closes.push((id, format!("{reason:?}")));
    }
}

#[test]
fn an_event_in_the_same_batch_for_a_connection_aborted_in_it_is_dropped() {
    // Two events fill a batch: `full_event_batches` then proves both
    // connections' readable events came out of the same `epoll_wait`.
    let config = Config::default().event_capacity(2);
    let mut reactor =
        Reactor::bind(any_local_address(), config, AbortOther::default()).expect("bind on port 0");
    let server = reactor.local_addr().expect("a TCP listener");

    let mut a = connect(server);
    let mut b = connect(server);
    turn_until(&mut reactor, "both connections opened", |h| {
        h.opened.len() == 2
    });
    // Take the writable edges of the fresh registrations out of the way,
    // so the next batch holds only what the test sends.
    for _ in 0..3 {
        reactor
            .run_once(Some(Duration::ZERO))
            .expect("an idle turn");
    }
    assert!(reactor.handler().data.is_empty(), "nothing was sent yet");
    let full_batches = reactor.stats().full_event_batches;

    a.write_all(b"A").expect("client A writes");
    b.write_all(b"B").expect("client B writes");
    // Both bytes sit unread in the server's sockets before the next turn,
    // so both readable events are in its one batch.
    for client in [&a, &b] {
        let peer = client.local_addr().expect("client address");
        wait_until("the server side to hold the byte unread", || {
            unread_bytes(server, peer).is_some_and(|n| n >= 1)
        });
    }

    reactor
        .run_once(Some(DEADLINE))
        .expect("the turn with both events");
    assert_eq!(
        reactor.stats().full_event_batches,
        full_batches + 1,
        "both readable events must have come in one batch"
    );
    let handler = reactor.handler();
    let (survivor, victim) = handler
        .aborted
        .expect("the first on_data aborted the other");
    assert_eq!(
        handler.data.len(),
        1,
        "only the survivor's bytes may be delivered: {:?}",
        handler.data
    );
    assert_eq!(handler.data[0].0, survivor);
    assert_eq!(
        handler.closes,
        vec![(victim, "Aborted".to_string())],
        "the aborted connection closes once, as Aborted, in the same turn"
    );

    // More turns: nothing queued for the victim may surface later either.
    for _ in 0..5 {
        reactor.run_once(Some(TURN)).expect("a later turn");
    }
    let handler = reactor.handler();
    assert!(
        handler.data.iter().all(|(id, _)| *id != victim),
        "on_data reached the aborted connection: {:?}",
        handler.data
    );
    assert_eq!(handler.closes.len(), 1, "{:?}", handler.closes);
    let stats = reactor.stats();
    assert_eq!((stats.active, stats.closed), (1, 1), "{stats:?}");

    // The survivor got its own echo; the victim's client got a reset.
    let client_of = |id: ConnId| {
        let peer = handler.peer_of(id);
        [&a, &b]
            .into_iter()
            .find(|c| c.local_addr().expect("client address") == peer)
            .expect("a client for each connection")
    };
    let mut echo = [0; 1];
    client_of(survivor)
        .read_exact(&mut echo)
        .expect("the survivor's echo");
    assert_eq!(echo.to_vec(), handler.data[0].1);
    let mut rest = [0; 1];
    match client_of(victim).read(&mut rest) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("the aborted connection's client read {n} bytes instead of a reset"),
    }
}

/// Records opens, closes and data, echoes, and on every open and every
/// `on_data` tries each call of [`Context`] on every id that has closed.
#[derive(Default)]
struct StaleCaller {
    opened: Vec<ConnId>,
    closed: Vec<(ConnId, String)>,
    /// What `send` to a closed id returned.
    stale_sends: Vec<(ConnId, Result<(), Error>)>,
    /// `pending_output` and `peer_addr` for closed ids.
    stale_queries: Vec<(ConnId, usize, Result<SocketAddr, Error>)>,
}

impl StaleCaller {
    fn poke_the_dead(&mut self, cx: &mut Context<'_, <StaleCaller as Handler>::Conn>) {
        let dead: Vec<ConnId> = self.closed.iter().map(|(id, _)| *id).collect();
        for old in dead {
            let sent = cx.send(old, b"meant for the closed connection");
            self.stale_sends.push((old, sent));
            self.stale_queries.push((
                old,
                cx.pending_output(old),
                cx.peer_addr(old).map(|a| a.as_tcp().expect("a TCP peer")),
            ));
            cx.pause_read(old);
            cx.shutdown_write(old);
            cx.close(old);
            cx.abort(old);
        }
    }
}

impl Handler for StaleCaller {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
        self.opened.push(id);
        self.poke_the_dead(cx);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        self.poke_the_dead(cx);
        cx.send(id, data).expect("echo to a live connection");
        data.len()
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        self.closed.push((id, format!("{reason:?}")));
    }
}

#[test]
fn calls_with_a_closed_id_never_reach_the_next_tenant_of_its_slot() {
    let mut reactor = Reactor::bind(
        any_local_address(),
        Config::default(),
        StaleCaller::default(),
    )
    .expect("bind on port 0");
    let server = reactor.local_addr().expect("a TCP listener");

    // `old` takes a slot, a bystander the next one.
    let old_client = connect(server);
    turn_until(&mut reactor, "the first connection opened", |h| {
        h.opened.len() == 1
    });
    let mut bystander = connect(server);
    turn_until(&mut reactor, "the bystander opened", |h| {
        h.opened.len() == 2
    });
    let old = reactor.handler().opened[0];
    let bystander_id = reactor.handler().opened[1];

    // `old` closes (its peer's FIN, then the default graceful close).
    drop(old_client);
    turn_until(&mut reactor, "the first connection closed", |h| {
        h.closed.len() == 1
    });
    assert_eq!(reactor.handler().closed[0].0, old);

    // The next connection takes the freed slot, under a new generation.
    let mut new_client = connect(server);
    turn_until(&mut reactor, "the new connection opened", |h| {
        h.opened.len() == 3
    });
    let new = reactor.handler().opened[2];
    assert_ne!(new, old);
    let ((old_slot, old_generation), (new_slot, new_generation)) = (slot_of(old), slot_of(new));
    assert_eq!(new_slot, old_slot, "{new} should reuse the slot of {old}");
    assert_ne!(new_generation, old_generation, "{new} vs {old}");
    assert_ne!(slot_of(bystander_id).0, new_slot);

    // Both live connections send, then half-close; each is served to the end.
    new_client.write_all(b"new").expect("new client writes");
    new_client
        .shutdown(Shutdown::Write)
        .expect("new client half-closes");
    bystander.write_all(b"bystander").expect("bystander writes");
    bystander
        .shutdown(Shutdown::Write)
        .expect("bystander half-closes");
    turn_until(&mut reactor, "both live connections closed", |h| {
        h.closed.len() == 3
    });

    // What was meant for the old id went nowhere: each live peer got its own
    // echo and then EOF, not one byte more.
    let mut got = Vec::new();
    new_client
        .read_to_end(&mut got)
        .expect("the new connection's echo and EOF");
    assert_eq!(got, b"new", "the slot's new tenant got bytes not its own");
    let mut got = Vec::new();
    bystander
        .read_to_end(&mut got)
        .expect("the bystander's echo and EOF");
    assert_eq!(got, b"bystander");

    let handler = reactor.handler();
    for (id, reason) in &handler.closed {
        assert!(
            reason == "PeerClosed",
            "{id} closed as {reason}: calls for the old id reached it"
        );
    }
    // Tried from on_open of the new connection and from each on_data.
    let tries = handler.stale_sends.iter().filter(|(id, _)| *id == old);
    assert!(tries.count() >= 3, "{:?}", handler.stale_sends);
    for (id, sent) in &handler.stale_sends {
        match sent {
            Err(Error::UnknownConnection(refused)) => assert_eq!(refused, id),
            other => panic!("send to closed {id} returned {other:?}"),
        }
    }
    for (id, pending, peer) in &handler.stale_queries {
        assert_eq!(*pending, 0, "pending_output of closed {id}");
        assert!(
            matches!(peer, Err(Error::UnknownConnection(refused)) if refused == id),
            "peer_addr of closed {id}: {peer:?}"
        );
    }
    let stats = reactor.stats();
    assert_eq!((stats.accepted, stats.closed, stats.active), (3, 3, 0));
    assert_eq!(stats.bytes_out, stats.bytes_in, "{stats:?}");
}
