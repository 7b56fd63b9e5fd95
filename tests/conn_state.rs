//! Connection state through the `Context`: a broadcast with
//! `for_each_conn`; `conn`/`conn_mut` reaching another connection's state
//! (and `None` for the callback's own and for a closed id); `on_timer` and
//! `on_message` reaching a connection's state by id; setting up before
//! `run` (a listener, a timer, an outbound connect with a send queued);
//! and ids of two reactors never mistaken for each other.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use common::{
    DEADLINE, Reports, any_local_address, connect, drive_until, echo_once, run_on_thread,
    wait_until,
};
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId};
use tcp_reactor::{Reactor, TimerId};

/// A client that reads lines.
struct LineClient {
    stream: TcpStream,
    lines: BufReader<TcpStream>,
}

impl LineClient {
    fn connect(addr: std::net::SocketAddr) -> LineClient {
        let stream = connect(addr);
        let lines = BufReader::new(stream.try_clone().expect("clone the stream"));
        LineClient { stream, lines }
    }

    #[track_caller]
    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write a line");
    }

    /// The next line, without its newline.
    #[track_caller]
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.lines.read_line(&mut line).expect("read a line");
        assert!(n > 0 && line.ends_with('\n'), "EOF instead of a line");
        line.pop();
        line
    }

    #[track_caller]
    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }
}

/// The complete lines at the front of `data`, and the bytes they take.
fn lines(data: &[u8]) -> (Vec<String>, usize) {
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = data[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    (lines, end)
}

/// A chat room: each line goes to every other connection, prefixed with
/// its sender's name.
struct Chat {
    next: u32,
    /// Sends made from `for_each_conn`.
    sends: Arc<AtomicU64>,
    /// `for_each_conn` visits of the sender itself, or with a state not
    /// the visited connection's.
    faults: Arc<AtomicU64>,
    names: HashMap<ConnId, String>,
}

impl Handler for Chat {
    /// The connection's name.
    type Conn = String;
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, String>,
        id: ConnId,
        _: &Addr,
        _: ListenerId,
    ) -> String {
        let name = format!("user{}", self.next);
        self.next += 1;
        self.names.insert(id, name.clone());
        cx.send(id, format!("welcome {name}\n").as_bytes())
            .expect("greet");
        name
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, String>,
        id: ConnId,
        name: &mut String,
        data: &[u8],
    ) -> usize {
        let (lines, used) = lines(data);
        for line in lines {
            let said = format!("{name}: {line}\n");
            cx.for_each_conn(|cx, other, other_name| {
                if other == id || self.names.get(&other) != Some(other_name) {
                    self.faults.fetch_add(1, Ordering::SeqCst);
                }
                self.sends.fetch_add(1, Ordering::SeqCst);
                let _ = cx.send(other, said.as_bytes());
            });
        }
        used
    }
}

#[test]
fn a_line_from_each_of_five_clients_reaches_the_four_others() {
    let sends = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let chat = Chat {
        next: 0,
        sends: Arc::clone(&sends),
        faults: Arc::clone(&faults),
        names: HashMap::new(),
    };
    let server = common::start(Config::default(), chat);
    let mut clients: Vec<(String, LineClient)> = (0..5)
        .map(|_| {
            let mut client = LineClient::connect(server.addr);
            let welcome = client.line();
            let name = welcome
                .strip_prefix("welcome ")
                .expect("a welcome")
                .to_owned();
            (name, client)
        })
        .collect();
    // Every client is open (welcomed) before anyone speaks.
    for (name, client) in &mut clients {
        client.send(&format!("hello from {name}"));
    }
    let names: Vec<String> = clients.iter().map(|(name, _)| name.clone()).collect();
    for (name, client) in &mut clients {
        let mut heard: Vec<String> = (0..4).map(|_| client.line()).collect();
        heard.sort();
        let mut expected: Vec<String> = names
            .iter()
            .filter(|other| *other != name)
            .map(|other| format!("{other}: hello from {other}"))
            .collect();
        expected.sort();
        assert_eq!(heard, expected, "what {name} heard");
    }
    // All five lines were broadcast (each client heard the four others):
    // one send per other connection, none to the speaker. A whole turn
    // after the last read ends every broadcast still under way.
    server.run_turns(1);
    assert_eq!(sends.load(Ordering::SeqCst), 5 * 4);
    assert_eq!(faults.load(Ordering::SeqCst), 0, "faulty visits");
}

/// A connection's state in the peek test.
#[derive(Debug, Default)]
struct Peer {
    name: String,
    pokes: u32,
}

#[derive(Debug)]
enum Peeked {
    Poke {
        /// `conn` and `conn_mut` of the callback's own connection.
        own: (bool, bool),
        target: ConnId,
        /// The target's name through `conn`, and its pokes through
        /// `conn_mut` once incremented.
        name: Option<String>,
        pokes: Option<u32>,
        ids: Vec<ConnId>,
    },
    Closed {
        id: ConnId,
        /// `conn` of the id just closed, inside its `on_close`.
        conn: bool,
        state: Peer,
    },
}

/// Lines: `name X` names the connection; `poke N` pokes the N-th
/// connection opened (through `conn_mut`); `pokes` answers how often this
/// one was poked.
struct Peek {
    order: Vec<ConnId>,
    seen: Sender<Peeked>,
}

impl Handler for Peek {
    type Conn = Peer;
    type Message = ();

    fn on_open(&mut self, _: &mut Context<'_, Peer>, id: ConnId, _: &Addr, _: ListenerId) -> Peer {
        self.order.push(id);
        Peer::default()
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Peer>,
        id: ConnId,
        me: &mut Peer,
        data: &[u8],
    ) -> usize {
        let (lines, used) = lines(data);
        for line in lines {
            let reply = if let Some(name) = line.strip_prefix("name ") {
                me.name = name.to_owned();
                "ok".to_owned()
            } else if let Some(n) = line.strip_prefix("poke ") {
                let target = self.order[n.parse::<usize>().expect("an index")];
                let own = (cx.conn(id).is_some(), cx.conn_mut(id).is_some());
                let name = cx.conn(target).map(|p| p.name.clone());
                let pokes = cx.conn_mut(target).map(|p| {
                    p.pokes += 1;
                    p.pokes
                });
                let ids = cx.conn_ids().collect();
                let _ = self.seen.send(Peeked::Poke {
                    own,
                    target,
                    name,
                    pokes,
                    ids,
                });
                "poked".to_owned()
            } else if line == "pokes" {
                me.pokes.to_string()
            } else {
                panic!("unknown command {line:?}");
            };
            cx.send(id, format!("{reply}\n").as_bytes()).expect("reply");
        }
        used
    }

    fn on_close(&mut self, cx: &mut Context<'_, Peer>, id: ConnId, state: Peer, _: CloseReason) {
        let conn = cx.conn(id).is_some();
        let _ = self.seen.send(Peeked::Closed { id, conn, state });
    }
}

#[track_caller]
fn wait_poke(
    seen: &mut Reports<Peeked>,
) -> (bool, bool, ConnId, Option<String>, Option<u32>, Vec<ConnId>) {
    seen.wait_for("a poke", |s| match s {
        Peeked::Poke {
            own,
            target,
            name,
            pokes,
            ids,
        } => Ok((own.0, own.1, target, name, pokes, ids)),
        other => Err(other),
    })
}

#[test]
fn conn_and_conn_mut_reach_other_connections_but_not_their_own_or_closed_ones() {
    let (seen, mut reports) = Reports::new();
    let server = common::start(
        Config::default(),
        Peek {
            order: Vec::new(),
            seen,
        },
    );
    let mut alice = LineClient::connect(server.addr);
    assert_eq!(alice.ask("name alice"), "ok");
    let mut bob = LineClient::connect(server.addr);
    assert_eq!(bob.ask("name bob"), "ok");

    // Alice pokes bob (connection 1): his state, through hers.
    assert_eq!(alice.ask("poke 1"), "poked");
    let (own, own_mut, bob_id, name, pokes, ids) = wait_poke(&mut reports);
    assert!(!own && !own_mut, "conn/conn_mut of the callback's own id");
    assert_eq!(name.as_deref(), Some("bob"));
    assert_eq!(pokes, Some(1));
    assert_eq!(ids.len(), 2, "conn_ids: {ids:?}");
    assert!(ids.contains(&bob_id));
    // The change reached bob's own state, as his callbacks see it.
    assert_eq!(bob.ask("pokes"), "1");
    assert_eq!(alice.ask("pokes"), "0");

    // And the other way round.
    assert_eq!(bob.ask("poke 0"), "poked");
    let (own, own_mut, alice_id, name, pokes, _) = wait_poke(&mut reports);
    assert!(!own && !own_mut);
    assert_eq!(name.as_deref(), Some("alice"));
    assert_eq!(pokes, Some(1));
    assert_ne!(alice_id, bob_id);
    assert_eq!(alice.ask("pokes"), "1");

    // Bob leaves: his state comes back in on_close, and is gone for `conn`.
    drop(bob);
    let (conn, state) = reports.wait_for("bob's on_close", |s| match s {
        Peeked::Closed { id, conn, state } if id == bob_id => Ok((conn, state)),
        other => Err(other),
    });
    assert!(!conn, "conn of the id being closed, in its on_close");
    assert_eq!((state.name.as_str(), state.pokes), ("bob", 1));
    assert_eq!(alice.ask("poke 1"), "poked");
    let (_, _, target, name, pokes, ids) = wait_poke(&mut reports);
    assert_eq!(target, bob_id);
    assert_eq!((name, pokes), (None, None), "a closed id's state");
    assert_eq!(ids, vec![alice_id], "conn_ids once bob closed");

    // A newcomer may take bob's slot: the old id still reaches nothing.
    let mut carol = LineClient::connect(server.addr);
    assert_eq!(carol.ask("name carol"), "ok");
    assert_eq!(alice.ask("poke 1"), "poked");
    let (_, _, _, name, pokes, ids) = wait_poke(&mut reports);
    assert_eq!((name, pokes), (None, None), "bob's id after a newcomer");
    assert_eq!(ids.len(), 2);
    assert_eq!(carol.ask("pokes"), "0", "the newcomer was not poked");
}

/// A connection's counters in the timer and message test.
#[derive(Debug, Default)]
struct Counters {
    ticks: u32,
    bumps: u32,
}

#[derive(Debug)]
enum Reached {
    Open(ConnId),
    Closed(ConnId),
    /// `on_timer` or `on_message` found no state for this (closed) id.
    TimerFoundNothing(ConnId),
    MessageFoundNothing(ConnId),
}

/// Each connection gets a timer keyed by its id; `on_timer` and
/// `on_message` (naming a connection) count in its state and tell it.
struct Reach {
    timers: HashMap<u64, ConnId>,
    seen: Sender<Reached>,
}

impl Reach {
    fn arm(&mut self, cx: &mut Context<'_, Counters>, id: ConnId, after: Duration) -> TimerId {
        let key = id.as_u64();
        self.timers.insert(key, id);
        cx.set_timer(after, key)
    }
}

impl Handler for Reach {
    type Conn = Counters;
    /// The connection to bump.
    type Message = ConnId;

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Counters>,
        id: ConnId,
        _: &Addr,
        _: ListenerId,
    ) -> Counters {
        self.arm(cx, id, Duration::from_millis(1));
        let _ = self.seen.send(Reached::Open(id));
        Counters::default()
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Counters>,
        id: ConnId,
        me: &mut Counters,
        data: &[u8],
    ) -> usize {
        let (lines, used) = lines(data);
        for line in lines {
            assert_eq!(line, "state?");
            let reply = format!("ticks={} bumps={}\n", me.ticks, me.bumps);
            cx.send(id, reply.as_bytes()).expect("reply");
        }
        used
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Counters>, _: TimerId, key: u64) {
        let id = self.timers.remove(&key).expect("a timer this handler set");
        match cx.conn_mut(id) {
            Some(counters) => {
                counters.ticks += 1;
                let tick = format!("tick {}\n", counters.ticks);
                cx.send(id, tick.as_bytes()).expect("tell the connection");
            }
            None => {
                let _ = self.seen.send(Reached::TimerFoundNothing(id));
            }
        }
    }

    fn on_message(&mut self, cx: &mut Context<'_, Counters>, id: ConnId) {
        match cx.conn_mut(id) {
            Some(counters) => {
                counters.bumps += 1;
                let bump = format!("bump {}\n", counters.bumps);
                cx.send(id, bump.as_bytes()).expect("tell the connection");
            }
            None => {
                let _ = self.seen.send(Reached::MessageFoundNothing(id));
            }
        }
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Counters>,
        id: ConnId,
        _: Counters,
        _: CloseReason,
    ) {
        let _ = self.seen.send(Reached::Closed(id));
        // A timer for the id just closed: it must find nothing.
        self.arm(cx, id, Duration::ZERO);
    }
}

#[test]
fn on_timer_and_on_message_reach_a_connections_state_by_its_id() {
    let (seen, mut reports) = Reports::new();
    let server = common::start(
        Config::default(),
        Reach {
            timers: HashMap::new(),
            seen,
        },
    );
    let mut client = LineClient::connect(server.addr);
    let id = reports.wait_for("the open", |s| match s {
        Reached::Open(id) => Ok(id),
        other => Err(other),
    });
    assert_eq!(client.line(), "tick 1", "on_timer reached the state");
    server.handle.send_message(id).expect("message");
    assert_eq!(client.line(), "bump 1", "on_message reached the state");
    server.handle.send_message(id).expect("message");
    assert_eq!(client.line(), "bump 2");
    assert_eq!(
        client.ask("state?"),
        "ticks=1 bumps=2",
        "as on_data sees it"
    );

    drop(client);
    reports.wait_for("the close", |s| match s {
        Reached::Closed(closed) if closed == id => Ok(()),
        other => Err(other),
    });
    reports.wait_for("the timer of a closed id", |s| match s {
        Reached::TimerFoundNothing(closed) if closed == id => Ok(()),
        other => Err(other),
    });
    server.handle.send_message(id).expect("message");
    reports.wait_for("a message naming a closed id", |s| match s {
        Reached::MessageFoundNothing(closed) if closed == id => Ok(()),
        other => Err(other),
    });
    let stats = server.wait_stats("both timers counted", |s| s.timers_fired >= 2);
    assert_eq!(stats.timers_fired, 2);
}

#[derive(Debug)]
enum Early {
    Connected(ConnId),
    Timer(u64),
    Open(ConnId),
}

/// Echoes on every connection, outbound ones too; reports connects, opens
/// and timers.
struct SetUp {
    seen: Sender<Early>,
}

impl Handler for SetUp {
    /// What the connection is: "outbound" or "accepted".
    type Conn = &'static str;
    type Message = ();

    fn on_open(
        &mut self,
        _: &mut Context<'_, &'static str>,
        id: ConnId,
        _: &Addr,
        _: ListenerId,
    ) -> &'static str {
        let _ = self.seen.send(Early::Open(id));
        "accepted"
    }

    fn on_connect(
        &mut self,
        _: &mut Context<'_, &'static str>,
        id: ConnId,
        role: &mut &'static str,
    ) {
        assert_eq!(*role, "outbound");
        let _ = self.seen.send(Early::Connected(id));
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, &'static str>,
        id: ConnId,
        _: &mut &'static str,
        data: &[u8],
    ) -> usize {
        cx.send(id, data).expect("echo");
        data.len()
    }

    fn on_timer(&mut self, _: &mut Context<'_, &'static str>, _: TimerId, key: u64) {
        let _ = self.seen.send(Early::Timer(key));
    }
}

#[test]
fn a_listener_a_timer_and_a_connect_with_a_send_set_up_before_run() {
    let upstream = TcpListener::bind(any_local_address()).expect("upstream bind");
    let upstream_addr = upstream.local_addr().expect("upstream address");
    let (seen, mut reports) = Reports::new();
    let mut reactor = Reactor::new(Config::default(), SetUp { seen }).expect("reactor");
    let mut cx = reactor.context();
    let listener = cx.listen(any_local_address()).expect("listen");
    let addr = cx
        .listener_addr(listener)
        .and_then(|a| a.as_tcp())
        .expect("listener address");
    cx.set_timer(Duration::from_millis(1), 42);
    let out = cx.connect(upstream_addr, "outbound").expect("connect");
    cx.send(out, b"queued before run").expect("send before run");
    assert_eq!(cx.conn(out), Some(&"outbound"));
    assert_eq!(cx.conn_ids().collect::<Vec<_>>(), vec![out]);
    assert_eq!(cx.pending_output(out), 17, "queued until established");
    let server = run_on_thread(reactor);

    upstream.set_nonblocking(true).expect("non-blocking");
    let mut accepted = None;
    wait_until("the outbound connection at the upstream", || {
        match upstream.accept() {
            Ok((stream, _)) => accepted = Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        accepted.is_some()
    });
    let mut upstream_side = accepted.expect("accepted");
    upstream_side.set_nonblocking(false).expect("blocking");
    upstream_side
        .set_read_timeout(Some(DEADLINE))
        .expect("timeout");
    let mut got = [0; 17];
    upstream_side
        .read_exact(&mut got)
        .expect("the bytes sent before run");
    assert_eq!(&got, b"queued before run");
    reports.wait_for("on_connect", |s| match s {
        Early::Connected(id) if id == out => Ok(()),
        other => Err(other),
    });
    // Established, it is a connection like any other: it echoes.
    upstream_side.write_all(b"pong").expect("write upstream");
    let mut back = [0; 4];
    upstream_side
        .read_exact(&mut back)
        .expect("the echo upstream");
    assert_eq!(&back, b"pong");

    reports.wait_for("the timer set before run", |s| match s {
        Early::Timer(42) => Ok(()),
        other => Err(other),
    });
    assert_eq!(
        echo_once(addr, b"the listener set up before run"),
        b"the listener set up before run"
    );
    reports.wait_for("the accepted connection's open", |s| match s {
        Early::Open(id) if id != out => Ok(()),
        other => Err(other),
    });
    let stats = server.wait_stats("the counts", |s| {
        s.connected == 1 && s.accepted == 1 && s.timers_fired == 1
    });
    assert_eq!(
        (stats.connected, stats.accepted, stats.timers_fired),
        (1, 1, 1)
    );
}

/// Records the ids it opens; echoes.
#[derive(Default)]
struct Recorder {
    opened: Vec<ConnId>,
}

impl Handler for Recorder {
    type Conn = ();
    type Message = ();

    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, _: &Addr, _: ListenerId) {
        self.opened.push(id);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        cx.send(id, data).expect("echo");
        data.len()
    }
}

/// The slot of an id, from its `index.generation` display.
fn slot(id: ConnId) -> String {
    id.to_string()
        .split_once('.')
        .expect("index.generation")
        .0
        .to_owned()
}

#[test]
fn an_id_of_one_reactor_is_refused_by_another_even_for_the_same_slot() {
    let mut a = Reactor::bind(any_local_address(), Config::default(), Recorder::default())
        .expect("reactor A");
    let mut b = Reactor::bind(any_local_address(), Config::default(), Recorder::default())
        .expect("reactor B");
    let mut client_a = connect(a.local_addr().expect("A's address"));
    let mut client_b = connect(b.local_addr().expect("B's address"));
    drive_until(&mut a, "A's accept", |r| r.handler().opened.len() == 1);
    drive_until(&mut b, "B's accept", |r| r.handler().opened.len() == 1);
    let (id_a, id_b) = (a.handler().opened[0], b.handler().opened[0]);

    // Both in slot 0 of their reactor, yet different ids.
    assert_eq!((slot(id_a), slot(id_b)), ("0".to_owned(), "0".to_owned()));
    assert_ne!(id_a, id_b);
    assert_ne!(id_a.as_u64(), id_b.as_u64());

    let mut cx = b.context();
    match cx.send(id_a, b"not yours") {
        Err(Error::UnknownConnection(refused)) => assert_eq!(refused, id_a),
        other => panic!("B sending to A's id: {other:?}"),
    }
    assert!(cx.conn(id_a).is_none(), "B has no state for A's id");
    assert!(cx.conn(id_b).is_some());
    assert_eq!(cx.conn_ids().collect::<Vec<_>>(), vec![id_b]);
    cx.send(id_b, b"from B").expect("B's own id");
    let mut cx = a.context();
    match cx.send(id_b, b"not yours") {
        Err(Error::UnknownConnection(refused)) => assert_eq!(refused, id_b),
        other => panic!("A sending to B's id: {other:?}"),
    }
    cx.send(id_a, b"from A").expect("A's own id");

    // Each client got its own reactor's bytes, and nothing else.
    let mut got = [0; 6];
    client_b.read_exact(&mut got).expect("B's bytes");
    assert_eq!(&got, b"from B");
    client_a.read_exact(&mut got).expect("A's bytes");
    assert_eq!(&got, b"from A");
    client_a.write_all(b"ping").expect("write");
    let mut back = [0; 4];
    drive_until(&mut a, "A's echo", |r| r.stats().bytes_out >= 10);
    client_a.read_exact(&mut back).expect("A's echo");
    assert_eq!(&back, b"ping", "no stray bytes from B's send");
}
