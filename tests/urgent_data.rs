//! TCP urgent data (`MSG_OOB`): the reactor keeps it in the byte stream
//! (`SO_OOBINLINE`), so nothing is lost, and the urgent mark neither stalls
//! a read nor makes the loop spin.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, connect, pattern, start};
use socket2::SockRef;
use tcp_reactor::{Config, Echo};

/// How long the loop is watched for spinning after urgent data.
const WINDOW: Duration = Duration::from_millis(500);

/// Most turns allowed in [`WINDOW`]. The reactor runs in `Reactor::run`:
/// once the echo is out, an idle one sleeps in `epoll_wait` and makes no
/// turn at all (a few at most, for late acknowledgements); a loop woken
/// over and over by a level it never clears makes thousands. A slower
/// machine only makes fewer turns.
const MAX_TURNS: u64 = 1000;

fn send_urgent(stream: &TcpStream, byte: u8) {
    let sent = SockRef::from(stream)
        .send_out_of_band(&[byte])
        .expect("send MSG_OOB");
    assert_eq!(sent, 1, "urgent byte sent");
}

/// A client with Nagle off, so each write is its own segment and the
/// urgent byte arrives between ordinary ones.
fn urgent_client(server: &Server<Echo>) -> TcpStream {
    let client = connect(server.addr);
    client.set_nodelay(true).expect("TCP_NODELAY");
    client
}

/// Watches the reactor's turn counter for [`WINDOW`], failing as soon as
/// it passes [`MAX_TURNS`]. Then checks that the counter is live (turns
/// the test wakes the reactor for show in it), so that the bound measured
/// something.
#[track_caller]
fn assert_no_spin(server: &Server<Echo>) {
    let before = server.stats().turns;
    let start = Instant::now();
    loop {
        let turns = server.stats().turns - before;
        assert!(
            turns < MAX_TURNS,
            "{turns} loop turns in {:?} after urgent data: the loop spins",
            start.elapsed()
        );
        if start.elapsed() >= WINDOW {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Fails at its deadline if the published counter never moves.
    server.run_turns(1);
}

#[test]
fn urgent_byte_is_echoed_in_order_and_the_loop_stays_idle() {
    let server = start(Config::default(), Echo);
    let mut client = urgent_client(&server);

    let mut sent = 0u64;
    for round in 0..20u8 {
        client.write_all(b"abc").expect("write abc");
        send_urgent(&client, b'!');
        client.write_all(b"def").expect("write def");
        sent += 7;
        let mut back = [0; 7];
        client
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round {round}: echo of abc!def: {e}"));
        assert_eq!(&back, b"abc!def", "round {round}");
    }
    server.wait_stats("every byte read, the urgent ones included", |s| {
        s.bytes_in == sent && s.bytes_out == sent
    });

    assert_no_spin(&server);

    // The connection still works after the window.
    client
        .write_all(b"still here")
        .expect("write after urgent data");
    let mut back = [0; 10];
    client
        .read_exact(&mut back)
        .expect("echo after urgent data");
    assert_eq!(&back, b"still here");
}

#[test]
fn urgent_byte_as_the_last_byte_sent_is_not_lost_and_does_not_spin() {
    let server = start(Config::default(), Echo);
    let mut client = urgent_client(&server);

    client.write_all(b"xyz").expect("write xyz");
    send_urgent(&client, b'#');
    let mut back = [0; 4];
    client.read_exact(&mut back).expect("echo of xyz#");
    assert_eq!(&back, b"xyz#");

    // The urgent byte was the last thing sent: the mark is where the
    // reactor's last read ended.
    assert_no_spin(&server);
}

#[test]
fn urgent_byte_between_large_writes_loses_nothing() {
    // Tens of KiB on each side of the mark: reads stop at the mark and must
    // go on after it, across several reads and turns.
    let server = start(Config::default().read_chunk(4096).reads_per_turn(2), Echo);
    let mut client = urgent_client(&server);

    let before: Vec<u8> = (0..48 * 1024).map(|i| pattern(11, i)).collect();
    let after: Vec<u8> = (0..48 * 1024).map(|i| pattern(12, i)).collect();
    let mut expected = before.clone();
    expected.push(0xFF);
    expected.extend_from_slice(&after);

    for round in 0..5 {
        client.write_all(&before).expect("write before the mark");
        send_urgent(&client, 0xFF);
        client.write_all(&after).expect("write after the mark");
        let mut back = vec![0; expected.len()];
        client
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round {round}: echo around the mark: {e}"));
        assert!(back == expected, "round {round}: echo differs");
    }
    assert_no_spin(&server);
}
