//! Setting up the listener: what `Reactor::bind` reports when it cannot,
//! that it checks the config before touching the network, the real port for
//! port 0, and `SO_REUSEADDR` letting a restarted server bind its port while
//! a connection of the previous one sits in `TIME_WAIT`.

mod common;

use std::error::Error as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{DEADLINE, any_local_address, connect, proc_addr, start, wait_until};
use tcp_reactor::{Addr, Config, ConnId, Context, Echo, Error, Handler, ListenerId, Reactor};

/// A handler that never gets a connection.
#[derive(Debug, Default)]
struct Idle;

impl Handler for Idle {
    type Conn = ();
    type Message = ();
    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
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
}

/// Checks `result` is `Error::Bind` for `addr` with an "address in use"
/// reason, and that its message names both.
#[track_caller]
fn assert_addr_in_use(result: Result<Reactor<Idle>, Error>, addr: SocketAddr) {
    let error = result.expect_err("binding an address in use must fail");
    let message = error.to_string();
    match &error {
        Error::Bind {
            addr: reported,
            source,
        } => {
            assert_eq!(**reported, addr);
            assert_eq!(source.kind(), ErrorKind::AddrInUse, "{source:?}");
            assert!(source.raw_os_error().is_some(), "{source:?} is the OS's");
            assert!(
                message.contains(&addr.to_string()),
                "{message:?} does not name {addr}"
            );
            // The OS reason, as strerror words it ("Address already in use").
            assert!(
                message.contains(&source.to_string()) && message.contains("in use"),
                "{message:?} does not give the OS reason"
            );
            assert!(
                error.source().is_some(),
                "the io::Error is reachable as the source"
            );
        }
        other => panic!("expected Error::Bind for {addr}, got {other:?}"),
    }
}

#[test]
fn binding_an_address_in_use_names_the_address_and_the_os_reason() {
    // Taken by another reactor...
    let first = Reactor::bind(any_local_address(), Config::default(), Idle).expect("first bind");
    let addr = first.local_addr().expect("a TCP listener");
    assert_addr_in_use(Reactor::bind(addr, Config::default(), Idle), addr);

    // ... and by a plain std listener.
    let std_listener = TcpListener::bind(any_local_address()).expect("std bind");
    let addr = std_listener.local_addr().expect("std listener address");
    assert_addr_in_use(Reactor::bind(addr, Config::default(), Idle), addr);
}

/// The config rules broken in these tests, each with a word its message
/// must contain.
fn invalid_configs() -> [(Config, &'static str); 2] {
    [
        (Config::default().backlog(0), "backlog"),
        (
            Config::default()
                .write_high_water(1024)
                .write_low_water(4096),
            "write_low_water",
        ),
    ]
}

#[track_caller]
fn assert_invalid(result: Result<Reactor<Idle>, Error>, rule: &str) {
    match result {
        Err(Error::InvalidConfig(message)) => {
            assert!(message.contains(rule), "{message:?} should name {rule}");
        }
        other => panic!("expected InvalidConfig naming {rule}, got {other:?}"),
    }
}

#[test]
fn an_invalid_config_is_refused_before_anything_binds() {
    // On an address in use: a config checked first gives InvalidConfig,
    // not the Bind error that trying to bind would give.
    let taken = TcpListener::bind(any_local_address()).expect("std bind");
    let taken_addr = taken.local_addr().expect("std listener address");
    for (config, rule) in invalid_configs() {
        assert_invalid(Reactor::bind(taken_addr, config, Idle), rule);
    }

    // On a free port: after the refusals the port is still free.
    let free_addr = {
        let probe = TcpListener::bind(any_local_address()).expect("probe bind");
        probe.local_addr().expect("probe address")
    };
    for (config, rule) in invalid_configs() {
        assert_invalid(Reactor::bind(free_addr, config, Idle), rule);
    }
    let reactor = Reactor::bind(free_addr, Config::default(), Idle)
        .expect("the port stayed free: nothing was bound for the invalid configs");
    assert_eq!(reactor.local_addr().expect("a TCP listener"), free_addr);
}

#[test]
fn port_zero_reports_the_port_the_kernel_chose() {
    let reactor = Reactor::bind(any_local_address(), Config::default(), Echo).expect("bind");
    let addr = reactor.local_addr().expect("a TCP listener");
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0, "local_addr must report the real port");
    // It is the port really listened on: a second bind there fails, and a
    // client reaches the reactor there.
    assert!(
        TcpListener::bind(addr).is_err(),
        "{addr} should be taken by the reactor"
    );
    let mut reactor = reactor;
    assert_eq!(echo_by_turns(&mut reactor, b"port"), b"port");
}

/// Sends `data` from a new client to `reactor`, drives the reactor from
/// this thread until it has echoed as much, and returns what came back.
fn echo_by_turns(reactor: &mut Reactor<Echo>, data: &[u8]) -> Vec<u8> {
    let mut client = connect(reactor.local_addr().expect("a TCP listener"));
    client.write_all(data).expect("client writes");
    let target = reactor.stats().bytes_out + data.len() as u64;
    let deadline = Instant::now() + DEADLINE;
    while reactor.stats().bytes_out < target {
        assert!(Instant::now() < deadline, "timed out waiting for the echo");
        reactor
            .run_once(Some(Duration::from_millis(20)))
            .expect("run_once must not fail for anything a peer does");
    }
    let mut back = vec![0; data.len()];
    client.read_exact(&mut back).expect("read the echo");
    back
}

/// Closes every connection first, after a greeting, so `TIME_WAIT` ends up
/// on the server's side of the connection.
#[derive(Debug, Default)]
struct CloseFirst;

impl Handler for CloseFirst {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
        cx.send(id, b"bye").expect("greeting");
        cx.close(id);
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
}

/// Whether `/proc/net/tcp` lists a connection in `TIME_WAIT` whose local
/// address is `local`.
fn time_wait_on(local: SocketAddr) -> bool {
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[3] == TIME_WAIT && proc_addr(fields[1]) == Some(local)
    })
}

#[test]
fn a_restarted_server_rebinds_its_port_despite_time_wait_only_with_reuse_address() {
    let server = start(Config::default(), CloseFirst);
    let addr = server.addr;
    let mut client = connect(addr);
    let mut greeting = Vec::new();
    client
        .read_to_end(&mut greeting)
        .expect("the greeting, then the server's FIN");
    assert_eq!(greeting, b"bye");
    drop(client); // our FIN: the server's close completes
    server.wait_stats("the server to close the connection", |s| s.closed == 1);
    wait_until("the server side's TIME_WAIT", || time_wait_on(addr));
    drop(server.stop()); // the listener is gone, the TIME_WAIT stays

    // Without SO_REUSEADDR the old connection holds the port...
    let refused = Reactor::bind(addr, Config::default().reuse_address(false), Idle);
    assert!(
        time_wait_on(addr),
        "TIME_WAIT must outlast the test's binds"
    );
    assert_addr_in_use(refused, addr);

    // ... with it (the default) the restarted server binds at once and serves.
    let mut restarted = Reactor::bind(addr, Config::default(), Echo)
        .expect("SO_REUSEADDR rebinds a port in TIME_WAIT");
    assert!(time_wait_on(addr), "the rebind happened during TIME_WAIT");
    assert_eq!(echo_by_turns(&mut restarted, b"again"), b"again");
}
