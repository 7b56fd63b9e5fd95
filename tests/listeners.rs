//! Listeners: one reactor serving TCP IPv4, TCP IPv6 and Unix listeners at
//! once and closing one of them while the others serve on; Unix socket
//! files (a stale one replaced, a live one and a regular file left alone,
//! the reactor's own removed when its listener closes, stops or is
//! dropped); adopting listeners the program bound (connections queued
//! before adoption included); and `ListenerOptions` (`only_v6`, backlog
//! bounds, `reuse_port`).

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::Sender;

use common::{
    DEADLINE, Reports, TempDir, any_local_address, has_ipv6_loopback, run_on_thread, wait_until,
};
use tcp_reactor::{Addr, Config, ConnId, Context, Error, Handler, ListenerId, ListenerOptions};
use tcp_reactor::{Reactor, Stats};

/// What the handler saw, reported to the test thread.
#[derive(Debug)]
enum Seen {
    Open {
        id: ConnId,
        /// Boxed, as `Error` boxes it: a Unix address is large.
        peer: Box<Addr>,
        listener: ListenerId,
    },
    /// A listener closed on a message.
    ListenerClosed {
        listener: ListenerId,
        /// `close_listener`'s answer, then that of a second call.
        was_open: bool,
        again: bool,
        /// `listener_addr` once closed.
        addr_after: Option<Box<Addr>>,
        /// `listeners()` once closed.
        open: Vec<ListenerId>,
    },
}

/// Echoes on every connection, reports each open, and closes the listener
/// a message names.
struct Multi {
    seen: Sender<Seen>,
}

impl Handler for Multi {
    /// The listener the connection came from.
    type Conn = ListenerId;
    /// A listener to close.
    type Message = ListenerId;

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, ListenerId>,
        id: ConnId,
        peer: &Addr,
        listener: ListenerId,
    ) -> ListenerId {
        let _ = self.seen.send(Seen::Open {
            id,
            peer: Box::new(peer.clone()),
            listener,
        });
        listener
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, ListenerId>,
        id: ConnId,
        _: &mut ListenerId,
        data: &[u8],
    ) -> usize {
        cx.send(id, data).expect("echo");
        data.len()
    }

    fn on_message(&mut self, cx: &mut Context<'_, ListenerId>, listener: ListenerId) {
        let was_open = cx.close_listener(listener);
        let again = cx.close_listener(listener);
        let _ = self.seen.send(Seen::ListenerClosed {
            listener,
            was_open,
            again,
            addr_after: cx.listener_addr(listener).map(Box::new),
            open: cx.listeners().collect(),
        });
    }
}

fn multi() -> (Multi, Reports<Seen>) {
    let (seen, reports) = Reports::new();
    (Multi { seen }, reports)
}

/// A blocking client of either kind, with read and write timeouts of
/// [`DEADLINE`].
enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Client {
    fn dial(addr: &Addr) -> io::Result<Client> {
        let client = match addr {
            Addr::Tcp(addr) => Client::Tcp(TcpStream::connect(addr)?),
            Addr::Unix(addr) => {
                let path = addr.as_pathname().expect("a Unix listener has a path");
                Client::Unix(UnixStream::connect(path)?)
            }
        };
        match &client {
            Client::Tcp(s) => {
                s.set_read_timeout(Some(DEADLINE))?;
                s.set_write_timeout(Some(DEADLINE))?;
            }
            Client::Unix(s) => {
                s.set_read_timeout(Some(DEADLINE))?;
                s.set_write_timeout(Some(DEADLINE))?;
            }
        }
        Ok(client)
    }

    /// The client's own address: what the server's `on_open` should see.
    fn local_addr(&self) -> Addr {
        match self {
            Client::Tcp(s) => Addr::Tcp(s.local_addr().expect("local address")),
            Client::Unix(s) => Addr::Unix(s.local_addr().expect("local address")),
        }
    }

    /// Sends `message` and checks it comes back whole.
    #[track_caller]
    fn round_trip(&mut self, message: &[u8]) {
        let mut back = vec![0; message.len()];
        let result = match self {
            Client::Tcp(s) => s.write_all(message).and_then(|()| s.read_exact(&mut back)),
            Client::Unix(s) => s.write_all(message).and_then(|()| s.read_exact(&mut back)),
        };
        result.expect("echo round trip");
        assert_eq!(back, message, "the echo differs from what was sent");
    }
}

/// Waits for the open of a connection from `listener`; returns its id and
/// the peer address it was given.
#[track_caller]
fn wait_open(seen: &mut Reports<Seen>, listener: ListenerId) -> (ConnId, Addr) {
    seen.wait_for("a connection's on_open", |s| match s {
        Seen::Open {
            id,
            peer,
            listener: from,
        } if from == listener => Ok((id, *peer)),
        other => Err(other),
    })
}

/// Connects to `addr`, checks an echo, and checks `on_open` named
/// `listener` and gave a peer address of the listener's kind: the client's
/// own address for TCP, an unnamed Unix address for an unbound Unix client.
#[track_caller]
fn open_and_echo(seen: &mut Reports<Seen>, listener: ListenerId, addr: &Addr) -> Client {
    let mut client = Client::dial(addr).expect("connect to an open listener");
    client.round_trip(format!("hello {addr}").as_bytes());
    let (_, peer) = wait_open(seen, listener);
    match addr {
        Addr::Tcp(_) => assert_eq!(peer, client.local_addr(), "the TCP peer address"),
        Addr::Unix(_) => {
            assert!(matches!(peer, Addr::Unix(_)), "a Unix peer, got {peer}");
            assert_eq!(peer.as_path(), None, "an unbound Unix client is unnamed");
        }
    }
    client
}

/// Closes `listener` through a message; checks what the handler saw.
#[track_caller]
fn close_through_message(
    server: &common::Server<Multi>,
    seen: &mut Reports<Seen>,
    listener: ListenerId,
) -> Vec<ListenerId> {
    server
        .handle
        .send_message(listener)
        .expect("message the reactor");
    let (was_open, again, addr_after, open) = seen.wait_for("the listener to close", |s| match s {
        Seen::ListenerClosed {
            listener: closed,
            was_open,
            again,
            addr_after,
            open,
        } if closed == listener => Ok((was_open, again, addr_after, open)),
        other => Err(other),
    });
    assert!(was_open, "close_listener of an open listener returns true");
    assert!(!again, "closing it again returns false");
    assert_eq!(addr_after, None, "a closed listener has no address");
    assert!(!open.contains(&listener), "listeners() still lists it");
    open
}

/// One reactor, three listeners. Each echoes and names its listener in
/// `on_open`; closing one (on a message) refuses new connections to it,
/// keeps the connections it accepted, and leaves the others serving.
#[test]
fn tcp_v4_v6_and_unix_listeners_serve_one_loop_and_close_one_at_a_time() {
    let dir = TempDir::new("listeners");
    let path = dir.join("echo.sock");
    let (handler, mut seen) = multi();
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let mut cx = reactor.context();
    let v4 = cx.listen(any_local_address()).expect("listen on IPv4");
    let v6 = if has_ipv6_loopback() {
        Some(
            cx.listen(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
                .expect("listen on IPv6"),
        )
    } else {
        eprintln!("no IPv6 loopback on this machine: the IPv6 listener is skipped");
        None
    };
    let unix = cx
        .listen(Addr::unix(&path).expect("a Unix address"))
        .expect("listen on a Unix socket");

    let v4_addr = cx.listener_addr(v4).expect("IPv4 listener address");
    let v4_tcp = v4_addr.as_tcp().expect("a TCP address");
    assert!(v4_tcp.is_ipv4() && v4_tcp.port() != 0, "{v4_tcp}");
    let v6_addr = v6.map(|v6| cx.listener_addr(v6).expect("IPv6 listener address"));
    if let Some(addr) = &v6_addr {
        let tcp = addr.as_tcp().expect("a TCP address");
        assert!(tcp.is_ipv6() && tcp.port() != 0, "{tcp}");
    }
    let unix_addr = cx.listener_addr(unix).expect("Unix listener address");
    assert_eq!(unix_addr.as_path(), Some(path.as_path()));
    let mut expected: Vec<ListenerId> = [Some(v4), v6, Some(unix)].into_iter().flatten().collect();
    expected.sort();
    let mut listed: Vec<ListenerId> = cx.listeners().collect();
    listed.sort();
    assert_eq!(listed, expected, "listeners() lists each listener once");
    expected.dedup();
    assert_eq!(expected.len(), listed.len(), "listener ids are distinct");
    let server = run_on_thread(reactor);

    let mut v4_client = open_and_echo(&mut seen, v4, &v4_addr);
    let mut v6_client = v6.map(|v6| open_and_echo(&mut seen, v6, v6_addr.as_ref().unwrap()));
    let mut unix_client = open_and_echo(&mut seen, unix, &unix_addr);

    // Clients made along the way, kept open: no connection closes.
    let mut kept = Vec::new();

    // Close the IPv4 listener: TCP connects to it are refused at once.
    let open = close_through_message(&server, &mut seen, v4);
    assert_eq!(open.len(), expected.len() - 1, "only one listener closed");
    match Client::dial(&v4_addr) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a connect to a closed TCP listener succeeded"),
    }
    v4_client.round_trip(b"still served after its listener closed");
    if let (Some(v6), Some(addr)) = (v6, &v6_addr) {
        let mut fresh = open_and_echo(&mut seen, v6, addr);
        fresh.round_trip(b"again");
        kept.push(fresh);
    }
    let mut fresh_unix = open_and_echo(&mut seen, unix, &unix_addr);

    // Close the Unix listener: its socket file goes, so connects fail.
    let open = close_through_message(&server, &mut seen, unix);
    assert_eq!(open, v6.into_iter().collect::<Vec<_>>());
    assert!(!path.exists(), "the closed listener's socket file remains");
    assert!(
        Client::dial(&unix_addr).is_err(),
        "a connect to a closed Unix listener succeeded"
    );
    unix_client.round_trip(b"unix, still served");
    fresh_unix.round_trip(b"unix too");
    v4_client.round_trip(b"v4, still served");
    if let (Some(v6), Some(addr)) = (v6, &v6_addr) {
        v6_client
            .as_mut()
            .expect("IPv6 client")
            .round_trip(b"v6 old");
        let mut fresh = open_and_echo(&mut seen, v6, addr);
        fresh.round_trip(b"v6 new");
        kept.push(fresh);
    }

    let accepted = if v6.is_some() { 6 } else { 3 };
    let stats: Stats = server.wait_stats("every accept counted", |s| s.accepted >= accepted);
    assert_eq!(stats.accepted, accepted, "accepted counts every listener");
    assert_eq!(stats.closed, 0, "no connection closed");
}

/// Binds `path` with a new reactor (which is returned with the listener's
/// id).
fn listen_unix(path: &Path) -> (Reactor<Multi>, Reports<Seen>, Result<ListenerId, Error>) {
    let (handler, seen) = multi();
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let listener = reactor
        .context()
        .listen(Addr::unix(path).expect("a Unix address"));
    (reactor, seen, listener)
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[track_caller]
fn assert_addr_in_use(result: Result<ListenerId, Error>, path: &Path) {
    match result {
        Err(Error::Bind { addr, source }) => {
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{source}");
            assert_eq!(addr.as_path(), Some(path), "the error names the path");
        }
        other => panic!("expected Error::Bind with AddrInUse, got {other:?}"),
    }
}

/// A socket file nobody listens on (its server is gone) is removed and the
/// bind goes ahead; the reactor's own file goes again when it stops.
#[test]
fn a_stale_socket_file_is_replaced_and_the_new_one_removed_on_stop() {
    let dir = TempDir::new("stale");
    let path = dir.join("stale.sock");
    drop(UnixListener::bind(&path).expect("std bind"));
    assert!(is_socket(&path), "a closed std listener leaves its file");
    let refused = UnixStream::connect(&path).expect_err("nobody listens");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

    let (reactor, mut seen, listener) = listen_unix(&path);
    let listener = listener.expect("a stale socket file does not block the bind");
    assert!(is_socket(&path));
    let server = run_on_thread(reactor);
    let addr = Addr::unix(&path).expect("a Unix address");
    open_and_echo(&mut seen, listener, &addr).round_trip(b"served");

    let reactor = server.stop();
    assert!(reactor.is_stopped());
    assert!(!path.exists(), "the stopped reactor's socket file remains");
}

/// A socket file someone listens on is `AddrInUse`, and left working.
#[test]
fn a_live_socket_file_is_addr_in_use_and_left_alone() {
    let dir = TempDir::new("live");
    let path = dir.join("live.sock");
    let live = UnixListener::bind(&path).expect("std bind");

    let inode = fs::metadata(&path).expect("the socket file").ino();

    let (reactor, _seen, listener) = listen_unix(&path);
    assert_addr_in_use(listener, &path);
    assert_eq!(reactor_listeners(reactor), 0, "nothing registered");

    assert!(is_socket(&path), "the live socket file was removed");
    assert_eq!(
        fs::metadata(&path).expect("the socket file").ino(),
        inode,
        "the live socket file was replaced"
    );
    UnixStream::connect(&path).expect("the live listener still accepts");
    drop(live);
}

fn reactor_listeners(mut reactor: Reactor<Multi>) -> usize {
    reactor.context().listeners().count()
}

/// A regular file at the path is never removed: the bind fails and the
/// file keeps its content.
#[test]
fn a_regular_file_at_the_path_is_never_removed() {
    let dir = TempDir::new("regular");
    let path = dir.join("precious.txt");
    fs::write(&path, b"precious data").expect("write the file");

    let (reactor, _seen, listener) = listen_unix(&path);
    assert_addr_in_use(listener, &path);
    assert_eq!(reactor_listeners(reactor), 0, "nothing registered");
    assert_eq!(
        fs::read(&path).expect("the file is still there"),
        b"precious data"
    );
}

/// `close_listener` removes the socket file the listener created, but not
/// a file someone else put at the path since; dropping the reactor removes
/// its listeners' files too.
#[test]
fn closing_a_unix_listener_removes_its_own_socket_file_only() {
    let dir = TempDir::new("close");
    let path = dir.join("own.sock");
    let (mut reactor, _seen, listener) = listen_unix(&path);
    let listener = listener.expect("listen");
    assert!(is_socket(&path));
    let mut cx = reactor.context();
    assert!(cx.close_listener(listener));
    assert!(!path.exists(), "close_listener left the socket file");
    assert!(!cx.close_listener(listener), "closing twice");
    assert_eq!(cx.listeners().count(), 0);

    // Replaced behind the reactor's back: the new file is not its to remove.
    let listener = cx
        .listen(Addr::unix(&path).expect("a Unix address"))
        .expect("listen again at the same path");
    fs::remove_file(&path).expect("remove the reactor's file");
    let other = UnixListener::bind(&path).expect("another listener at the path");
    assert!(cx.close_listener(listener));
    assert!(is_socket(&path), "the other listener's file was removed");
    UnixStream::connect(&path).expect("the other listener still accepts");
    drop(other);

    // Dropped without a stop: the file goes with the reactor.
    let path = dir.join("dropped.sock");
    reactor
        .context()
        .listen(Addr::unix(&path).expect("a Unix address"))
        .expect("listen");
    assert!(is_socket(&path));
    drop(reactor);
    assert!(!path.exists(), "dropping the reactor left its socket file");
}

/// Listeners the test bound, adopted: connections queued before the
/// adoption are accepted, later ones too; the adopted Unix socket file is
/// the program's, left in place when the reactor stops.
#[test]
fn adopted_tcp_and_unix_listeners_serve_connections_made_before_adoption() {
    let dir = TempDir::new("adopt");
    let path = dir.join("adopted.sock");
    let tcp = TcpListener::bind(any_local_address()).expect("std TCP bind");
    let tcp_addr = tcp.local_addr().expect("TCP address");
    let unix = UnixListener::bind(&path).expect("std Unix bind");
    let unix_addr = Addr::unix(&path).expect("a Unix address");
    // Queued in the kernel's backlog before the reactor exists.
    let mut early_tcp = Client::dial(&Addr::Tcp(tcp_addr)).expect("early TCP connect");
    let mut early_unix = Client::dial(&unix_addr).expect("early Unix connect");

    let (handler, mut seen) = multi();
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let mut cx = reactor.context();
    let t = cx.adopt_tcp_listener(tcp).expect("adopt TCP");
    let u = cx.adopt_unix_listener(unix).expect("adopt Unix");
    assert_ne!(t, u);
    assert_eq!(cx.listener_addr(t), Some(Addr::Tcp(tcp_addr)));
    assert_eq!(cx.listener_addr(u), Some(unix_addr.clone()));
    assert_eq!(cx.listeners().count(), 2);
    let server = run_on_thread(reactor);
    assert_eq!(
        server.addr, tcp_addr,
        "local_addr is the adopted listener's"
    );

    early_tcp.round_trip(b"queued before adoption (TCP)");
    let (_, peer) = wait_open(&mut seen, t);
    assert_eq!(peer, early_tcp.local_addr());
    early_unix.round_trip(b"queued before adoption (Unix)");
    let (_, peer) = wait_open(&mut seen, u);
    assert!(matches!(peer, Addr::Unix(_)));

    open_and_echo(&mut seen, t, &Addr::Tcp(tcp_addr)).round_trip(b"after");
    open_and_echo(&mut seen, u, &unix_addr).round_trip(b"after");
    assert_eq!(
        server.wait_stats("4 accepts", |s| s.accepted >= 4).accepted,
        4
    );

    drop(server.stop());
    assert!(
        is_socket(&path),
        "the adopted listener's socket file was removed"
    );
}

/// `only_v6(true)` on `[::]` leaves IPv4 on that port free; `only_v6(false)`
/// takes it (and an IPv4 client reaches the IPv6 listener).
#[test]
fn only_v6_decides_whether_the_ipv4_wildcard_stays_free() {
    if !has_ipv6_loopback() {
        eprintln!("no IPv6 on this machine: only_v6 is not tested");
        return;
    }
    let (handler, _seen) = multi();
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let mut cx = reactor.context();
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));

    let only = cx
        .listen_with(any6, ListenerOptions::default().only_v6(true))
        .expect("listen on [::] IPv6 only");
    let port = cx
        .listener_addr(only)
        .and_then(|a| a.as_tcp())
        .unwrap()
        .port();
    let v4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .expect("0.0.0.0 on the port of an IPv6-only [::] listener is free");
    drop(v4);

    let dual = cx
        .listen_with(any6, ListenerOptions::default().only_v6(false))
        .expect("listen on [::] for both families");
    let port = cx
        .listener_addr(dual)
        .and_then(|a| a.as_tcp())
        .unwrap()
        .port();
    let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .expect_err("0.0.0.0 on the port of a dual-stack [::] listener is taken");
    assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("IPv4 reaches the dual-stack listener");
}

/// A backlog of 0, or one past a C int, is refused before anything is
/// bound; 1 is fine.
#[test]
fn a_backlog_out_of_range_is_invalid_config() {
    let dir = TempDir::new("backlog");
    let path = dir.join("never.sock");
    let (handler, _seen) = multi();
    let mut reactor = Reactor::new(Config::default(), handler).expect("reactor");
    let mut cx = reactor.context();
    for backlog in [0, i32::MAX as u32 + 1, u32::MAX] {
        let options = ListenerOptions::default().backlog(backlog);
        let tcp = cx.listen_with(any_local_address(), options);
        assert!(
            matches!(tcp, Err(Error::InvalidConfig(_))),
            "TCP, backlog {backlog}: {tcp:?}"
        );
        let unix = cx.listen_with(Addr::unix(&path).expect("a Unix address"), options);
        assert!(
            matches!(unix, Err(Error::InvalidConfig(_))),
            "Unix, backlog {backlog}: {unix:?}"
        );
        assert!(!path.exists(), "a refused Unix listener created its file");
    }
    assert_eq!(cx.listeners().count(), 0, "nothing registered");
    let one = ListenerOptions::default().backlog(1);
    cx.listen_with(any_local_address(), one)
        .expect("a backlog of 1");
    cx.listen_with(Addr::unix(&path).expect("a Unix address"), one)
        .expect("a backlog of 1");
    assert_eq!(cx.listeners().count(), 2);
}

/// `reuse_port(true)` lets two reactors listen on one port, and the kernel
/// hands connections to both; without it the second bind is `AddrInUse`.
#[test]
fn reuse_port_lets_two_reactors_share_a_port() {
    let reuse = ListenerOptions::default().reuse_port(true);
    let (handler, _seen_a) = multi();
    let mut a = Reactor::new(Config::default(), handler).expect("reactor A");
    let la = a
        .context()
        .listen_with(any_local_address(), reuse)
        .expect("A listens");
    let addr = a
        .context()
        .listener_addr(la)
        .and_then(|a| a.as_tcp())
        .unwrap();

    let (handler, _seen_c) = multi();
    let mut c = Reactor::new(Config::default(), handler).expect("reactor C");
    let refused = c.context().listen_with(addr, ListenerOptions::default());
    match refused {
        Err(Error::Bind { source, .. }) => {
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{source}")
        }
        other => panic!("a second bind without SO_REUSEPORT: {other:?}"),
    }

    let (handler, _seen_b) = multi();
    let mut b = Reactor::new(Config::default(), handler).expect("reactor B");
    b.context()
        .listen_with(addr, reuse)
        .expect("B listens on A's port with SO_REUSEPORT");
    let a = run_on_thread(a);
    let b = run_on_thread(b);
    assert_eq!((a.addr, b.addr), (addr, addr));

    // The kernel spreads connections by a hash of their addresses: new
    // clients (new source ports) reach both before long.
    let mut clients = 0u64;
    wait_until("both reactors to accept", || {
        let mut client = Client::dial(&Addr::Tcp(addr)).expect("connect");
        client.round_trip(b"which reactor?");
        clients += 1;
        a.stats().accepted > 0 && b.stats().accepted > 0
    });
    let both = a.stats().accepted + b.stats().accepted;
    assert!(both <= clients, "{both} accepts for {clients} clients");
    wait_until("every client counted once", || {
        a.stats().accepted + b.stats().accepted == clients
    });
}
