//! `Reactor::stop_on_signals` (feature `signals`): the first SIGTERM or
//! SIGINT stops the reactor gracefully, the second at once, and no thread
//! is started. One test in this binary: signal handlers are process-wide.

mod common;

use std::io::Write;
use std::thread;

use common::{any_local_address, connect, wait_until};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::raise;
use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId, Reactor};

/// Sends each new connection 8 MiB, more than the kernel holds: a client
/// that does not read keeps a graceful stop draining.
struct Flood;

impl Handler for Flood {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
        cx.send(id, &vec![7; 8 << 20]).expect("the flood");
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

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

#[test]
fn a_first_signal_drains_a_second_stops_at_once_and_no_thread_is_started() {
    let config = Config::default().drain_timeout(std::time::Duration::from_secs(600));
    let mut reactor = Reactor::bind(any_local_address(), config, Flood).expect("bind");
    let before = threads();
    reactor.stop_on_signals().expect("install the handlers");
    reactor
        .stop_on_signals()
        .expect("a second call does nothing");
    assert_eq!(threads(), before, "stop_on_signals started a thread");

    let addr = reactor.local_addr().expect("a TCP listener");
    let stats = reactor.stats_reader();
    let running = thread::spawn(move || {
        let report = reactor.run().expect("run");
        (reactor, report)
    });
    // A client that never reads: its output holds the drain open.
    let mut client = connect(addr);
    client.write_all(b"x").expect("write");
    wait_until("output queued", || stats.get().queued_output > 0);

    raise(SIGTERM).expect("raise SIGTERM");
    wait_until("the first signal taken", || stats.get().signals == 1);
    assert!(!running.is_finished(), "the drain cannot end: it waits");
    raise(SIGINT).expect("raise SIGINT");
    wait_until("run to return", || running.is_finished());
    let (reactor, report) = running.join().expect("the reactor thread");
    assert_eq!(reactor.stats().signals, 2);
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (0, 1, 0),
        "{report}"
    );
    assert!(report.unsent_bytes > 0, "{report}");
    drop(client);
}
