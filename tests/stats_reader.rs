//! `StatsReader`, the counters for other threads. Nothing is published
//! while no reader exists (copying the counters every turn for nobody is
//! a fifth of an echo's cost); a reader taken late starts from the counters
//! as they are, and it and its clones follow the turns after.

mod common;

use std::io::{Read, Write};

use common::{any_local_address, connect, drive_until};
use tcp_reactor::{Config, Echo, Reactor};

/// Sends `data` and reads its echo back, turning the loop meanwhile.
fn echo(reactor: &mut Reactor<Echo>, client: &mut std::net::TcpStream, data: &[u8]) {
    let before = reactor.stats().bytes_out;
    client.write_all(data).expect("send");
    let want = before + data.len() as u64;
    drive_until(reactor, "the echo", |r| r.stats().bytes_out == want);
    let mut back = vec![0; data.len()];
    client.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, data);
}

#[test]
fn a_reader_taken_late_starts_from_the_current_counters_and_follows_later_turns() {
    let mut reactor = Reactor::bind(any_local_address(), Config::default(), Echo).expect("bind");
    let mut client = connect(reactor.local_addr().expect("a TCP listener"));
    echo(&mut reactor, &mut client, b"hello");

    // Nothing was published while there was no reader; this one must not
    // start from an empty snapshot.
    let reader = reactor.stats_reader();
    let first = reader.get();
    assert_eq!((first.accepted, first.bytes_in, first.bytes_out), (1, 5, 5));

    echo(&mut reactor, &mut client, b"again");
    drive_until(&mut reactor, "the reader to see the second echo", |_| {
        reader.get().bytes_out == 10
    });

    // A clone keeps publishing on after the reader it came from is gone.
    let clone = reader.clone();
    drop(reader);
    echo(&mut reactor, &mut client, b"third");
    drive_until(&mut reactor, "the clone to see the third echo", |_| {
        clone.get().bytes_out == 15
    });
    assert_eq!(clone.get().bytes_in, 15);
}
