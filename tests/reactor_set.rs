//! `ReactorSet`: N reactors on one port through `SO_REUSEPORT`.
//!
//! Proves that connections land on every reactor (the kernel spreads them:
//! clients are opened until each reactor has one, within a bound; no test
//! says which reactor a given connection lands on); that the stats of the
//! reactors add up to the set's; that ids from different reactors are
//! distinct and name their reactor, so a send or a message through the
//! set's handle reaches the right connection; that a graceful stop drains
//! every reactor (a client with a reply still queued on each gets every
//! byte, then FIN); and that when one reactor stops, the whole set stops
//! and no listener of it is left open.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Sender;

use common::{
    DEADLINE, Reports, any_local_address, connect, pattern_bytes, read_to_eof, wait_until,
};
use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId, ReactorSet, SetHandle};

/// Reactors in each set: more than one, and more than this machine's two
/// cores would strictly need, so "every reactor" is not "both".
const REACTORS: usize = 3;

/// How many clients a test may open before every reactor must have one.
/// The kernel hashes each connection's addresses and ports to a listener:
/// with 3 listeners the chance that one gets none of 300 is about 3e-53.
const MAX_CLIENTS: usize = 300;

/// The reply to `big\n`: more than the socket buffers hold, so most of it
/// is still queued in the reactor when the stop begins.
const BIG: usize = 4 * 1024 * 1024;

/// What the handler tells the test.
#[derive(Debug)]
enum Seen {
    /// Reactor `reactor` accepted `id` from `peer`.
    Open {
        reactor: usize,
        id: ConnId,
        peer: SocketAddr,
    },
    /// Reactor `reactor` queued the big reply for `id`.
    Queued { reactor: usize, id: ConnId },
    /// Reactor `reactor`'s handler got a message.
    Message { reactor: usize, text: String },
}

/// Echoes, except `big\n` (the big reply) and `stop\n` (stops its reactor);
/// reports opens, big replies and messages.
struct Probe {
    reactor: usize,
    reports: Sender<Seen>,
}

impl Handler for Probe {
    type Conn = ();
    type Message = String;

    fn on_open(&mut self, _: &mut Context<'_>, id: ConnId, peer: &Addr, _: ListenerId) {
        let peer = peer.as_tcp().expect("a TCP peer");
        let _ = self.reports.send(Seen::Open {
            reactor: self.reactor,
            id,
            peer,
        });
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        match data {
            b"big\n" => {
                cx.send(id, &pattern_bytes(1, BIG))
                    .expect("queue the reply");
                let _ = self.reports.send(Seen::Queued {
                    reactor: self.reactor,
                    id,
                });
            }
            b"stop\n" => cx.stop(),
            _ => {
                let _ = cx.send(id, data);
            }
        }
        data.len()
    }

    fn on_message(&mut self, _: &mut Context<'_>, text: String) {
        let _ = self.reports.send(Seen::Message {
            reactor: self.reactor,
            text,
        });
    }
}

/// A set of [`REACTORS`] probes on a free port.
fn start_set(config: Config) -> (ReactorSet<String>, Reports<Seen>) {
    let (sender, reports) = Reports::new();
    let set = ReactorSet::builder(REACTORS, config)
        .bind(any_local_address(), move |reactor| Probe {
            reactor,
            reports: sender.clone(),
        })
        .expect("the set starts");
    assert_eq!(set.reactors(), REACTORS);
    (set, reports)
}

/// A client that landed on a known reactor.
struct Placed {
    stream: TcpStream,
    reactor: usize,
    id: ConnId,
}

/// Opens clients, each checked with one echo, until every reactor has one
/// ([`MAX_CLIENTS`] at most); returns one client per reactor, by index, and
/// the others, all still open.
fn one_client_per_reactor(
    addr: SocketAddr,
    reports: &mut Reports<Seen>,
) -> (Vec<Placed>, Vec<TcpStream>) {
    let mut placed: Vec<Option<Placed>> = (0..REACTORS).map(|_| None).collect();
    let mut others = Vec::new();
    for _ in 0..MAX_CLIENTS {
        if placed.iter().all(Option::is_some) {
            break;
        }
        let mut stream = connect(addr);
        stream.write_all(b"hi\n").expect("write");
        let mut back = [0; 3];
        stream.read_exact(&mut back).expect("the echo");
        assert_eq!(&back, b"hi\n");
        let port = stream.local_addr().expect("local address");
        let (reactor, id) = reports.wait_for("the client's open", |seen| match seen {
            Seen::Open { reactor, id, peer } if peer == port => Ok((reactor, id)),
            other => Err(other),
        });
        if placed[reactor].is_none() {
            placed[reactor] = Some(Placed {
                stream,
                reactor,
                id,
            });
        } else {
            others.push(stream);
        }
    }
    let placed: Vec<Placed> = placed
        .into_iter()
        .enumerate()
        .map(|(reactor, p)| {
            p.unwrap_or_else(|| panic!("reactor {reactor} got none of {MAX_CLIENTS} connections"))
        })
        .collect();
    (placed, others)
}

#[test]
fn connections_land_on_every_reactor_and_the_stats_add_up() {
    let (set, mut reports) = start_set(Config::default());
    let (placed, others) = one_client_per_reactor(set.local_addr(), &mut reports);
    let opened = (placed.len() + others.len()) as u64;

    // Each reactor publishes its counters once per turn, after the turn
    // that echoed: wait for them.
    wait_until("every reactor's counters", || {
        let total = set.total_stats();
        total.accepted == opened && total.bytes_in == 3 * opened
    });
    let each = set.stats();
    assert!(each.iter().all(|s| s.accepted >= 1), "{each:?}");
    let total = set.total_stats();
    assert_eq!(total.accepted, opened);
    assert_eq!(total.active, opened);
    assert_eq!(total.bytes_in, 3 * opened, "one 3-byte echo per client");
    assert_eq!(total.bytes_in, each.iter().map(|s| s.bytes_in).sum::<u64>());

    drop(others);
    drop(placed);
    set.handle().stop();
    let stopped = set.join().expect("the set stops");
    assert_eq!(stopped.reactors.len(), REACTORS);
    let stats = stopped.stats();
    assert_eq!(stats.accepted, opened);
    assert_eq!(stats.bytes_out, 3 * opened);
    assert_eq!(
        stats.closed,
        stopped.reactors.iter().map(|r| r.stats.closed).sum::<u64>()
    );
    assert_eq!(stats.closed, opened, "every connection ended");
    let report = stopped.report();
    assert_eq!(
        report.forced + report.failed + report.unsent_bytes,
        0,
        "{report}"
    );
}

#[test]
fn ids_of_different_reactors_are_distinct_and_name_their_reactor() {
    let (set, mut reports) = start_set(Config::default());
    let (placed, others) = one_client_per_reactor(set.local_addr(), &mut reports);
    let handle = set.handle();
    let ids: HashSet<ConnId> = placed.iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), REACTORS, "one distinct id per reactor");
    for p in &placed {
        assert_eq!(handle.reactor_of(p.id), Some(p.reactor), "{}", p.id);
    }
    drop((placed, others));
}

#[test]
fn a_send_through_the_set_handle_reaches_the_right_connection() {
    let (set, mut reports) = start_set(Config::default());
    let (mut placed, _others) = one_client_per_reactor(set.local_addr(), &mut reports);
    let handle: SetHandle<String> = set.handle();
    for p in &placed {
        handle
            .send(p.id, format!("for {}\n", p.id))
            .expect("the send is queued");
    }
    for p in &mut placed {
        let want = format!("for {}\n", p.id);
        let mut got = vec![0; want.len()];
        p.stream.read_exact(&mut got).expect("the bytes sent to it");
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    // A message for a connection reaches the handler of its reactor.
    for p in &placed {
        handle
            .send_message_for(p.id, format!("about {}", p.id))
            .expect("the message is queued");
        let text = format!("about {}", p.id);
        let reactor = reports.wait_for("the message", |seen| match seen {
            Seen::Message { reactor, text: t } if t == text => Ok(reactor),
            other => Err(other),
        });
        assert_eq!(reactor, p.reactor);
    }
    assert!(handle.send_message_to(REACTORS, String::new()).is_err());
}

#[test]
fn a_graceful_stop_drains_every_reactor() {
    let (set, mut reports) = start_set(Config::default().drain_timeout(DEADLINE));
    let (mut placed, others) = one_client_per_reactor(set.local_addr(), &mut reports);
    drop(others);
    // Each placed client asks for the big reply and reads none of it yet:
    // it is queued in its reactor when the stop begins.
    let mut queued = HashMap::new();
    for p in &mut placed {
        p.stream.write_all(b"big\n").expect("write");
        let (reactor, id) = reports.wait_for("the big reply queued", |seen| match seen {
            Seen::Queued { reactor, id } => Ok((reactor, id)),
            other => Err(other),
        });
        queued.insert(id, reactor);
    }
    assert_eq!(queued.len(), REACTORS);

    set.handle().stop();
    for p in &mut placed {
        assert_eq!(queued.get(&p.id), Some(&p.reactor));
        let got = read_to_eof(&mut p.stream).expect("the whole reply, then FIN");
        assert_eq!(got.len(), BIG, "reactor {}: bytes received", p.reactor);
        assert!(
            got == pattern_bytes(1, BIG),
            "reactor {}: the reply differs",
            p.reactor
        );
    }
    drop(placed);
    let stopped = set.join().expect("the set stops");
    let report = stopped.report();
    assert_eq!(
        report.forced + report.failed + report.unsent_bytes,
        0,
        "{report}"
    );
    for (index, reactor) in stopped.reactors.iter().enumerate() {
        assert!(
            reactor.report.drained >= 1,
            "reactor {index}: {}",
            reactor.report
        );
    }
}

#[test]
fn when_one_reactor_stops_the_whole_set_stops_and_no_listener_is_left() {
    let (set, mut reports) = start_set(Config::default());
    let addr = set.local_addr();
    let (mut placed, others) = one_client_per_reactor(addr, &mut reports);
    drop(others);
    // Reactor 0's handler stops its own reactor; the rest follow.
    placed[0].stream.write_all(b"stop\n").expect("write");
    for p in &mut placed {
        let got = read_to_eof(&mut p.stream).expect("FIN from every reactor");
        assert!(got.is_empty(), "reactor {}: {got:?}", p.reactor);
    }
    let stopped = set.join().expect("the set stops");
    assert_eq!(stopped.report().forced, 0);
    let refused = TcpStream::connect(addr);
    assert!(refused.is_err(), "a listener of the set is still open");
}

#[test]
fn a_set_of_zero_or_too_many_reactors_is_refused() {
    for reactors in [0, 257] {
        let built = ReactorSet::builder(reactors, Config::default())
            .bind(any_local_address(), |_| tcp_reactor::Echo);
        assert!(
            matches!(built, Err(tcp_reactor::Error::InvalidConfig(_))),
            "{reactors} reactors"
        );
    }
}

#[test]
fn pinned_reactors_serve_too() {
    let set = ReactorSet::builder(2, Config::default())
        .pin_to_cores(true)
        .bind(any_local_address(), |_| tcp_reactor::Echo)
        .expect("the pinned set starts");
    assert_eq!(common::echo_once(set.local_addr(), b"pinned"), b"pinned");
    set.handle().stop();
    set.join().expect("the set stops");
}
