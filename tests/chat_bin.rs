//! The `chat` example as a program: 50 clients chatting (each line reaches
//! every other client exactly once, in its sender's order, prefixed with
//! the sender's address), a client that never reads (dropped with an
//! announcement the others see, the server's memory bounded, the others
//! chatting on), joins and leaves, and an over-long line.
//!
//! The binary is built with `cargo build --example chat` into this test's
//! own target directory and profile (see `common::example`).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use common::running::{Running, start_example, stop_with_sigterm as stop};
use common::{DEADLINE, connect};

/// `DROP_AFTER` in the example: output waiting for one client past which
/// it is dropped.
const DROP_AFTER: u64 = 256 * 1024;

fn chat_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("chat"))
}

fn start_chat() -> (Running, SocketAddr) {
    start_example(chat_binary(), &["--addr", "127.0.0.1:0"], "info")
}

/// A client reading lines (each read bounded by the connection's timeout).
struct Client {
    name: String,
    lines: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn join(addr: SocketAddr) -> Client {
        let stream = connect(addr);
        let name = stream.local_addr().expect("local address").to_string();
        let writer = stream.try_clone().expect("clone");
        Client {
            name,
            lines: BufReader::new(stream),
            writer,
        }
    }

    fn say(&mut self, text: &str) {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .expect("send a line");
    }

    /// The next line, without its `\n`; `None` at EOF.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = self.lines.read_line(&mut line).expect("read a line");
        (n > 0).then(|| line.trim_end_matches('\n').to_string())
    }

    /// Reads lines until one equals `wanted`; fails at EOF.
    #[track_caller]
    fn expect(&mut self, wanted: &str) {
        loop {
            match self.line() {
                Some(line) if line == wanted => return,
                Some(_) => {}
                None => panic!("{}: EOF before {wanted:?}", self.name),
            }
        }
    }
}

/// The most the kernel may buffer on a sending socket (`tcp_wmem`'s
/// maximum); 16 MiB where `/proc` does not say.
fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(16 * 1024 * 1024)
}

#[test]
fn fifty_clients_each_line_reaches_every_other_client_once_in_order() {
    const CLIENTS: usize = 50;
    const LINES: usize = 20;
    let (chat, addr) = start_chat();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::join(addr)).collect();
    // The first client hears every other one join: all are in the room.
    let names: Vec<String> = clients.iter().map(|c| c.name.clone()).collect();
    for name in &names[1..] {
        clients[0].expect(&format!("* {name} joined"));
    }
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let names = names.clone();
            std::thread::spawn(move || {
                for j in 0..LINES {
                    client.say(&format!("line {j} from {i}"));
                }
                // Next line number expected from each sender.
                let mut next: HashMap<String, usize> = HashMap::new();
                let mut received = 0;
                while received < (CLIENTS - 1) * LINES {
                    let line = client.line().expect("lines until all have come");
                    if line.starts_with('*') {
                        continue; // joins
                    }
                    let (sender, text) = line.split_once(": ").expect("'sender: text'");
                    assert_ne!(sender, client.name, "{i} got its own line back");
                    let k = names.iter().position(|n| n == sender).expect("a member");
                    let count = next.entry(sender.to_string()).or_default();
                    assert_eq!(
                        text,
                        format!("line {count} from {k}"),
                        "order from {sender}"
                    );
                    *count += 1;
                    received += 1;
                }
                assert_eq!(next.len(), CLIENTS - 1);
                assert!(next.values().all(|&n| n == LINES), "{next:?}");
                client
            })
        })
        .collect();
    let mut clients: Vec<Client> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    // A leave is announced to those who stay.
    let leaver = clients.pop().expect("a client");
    drop(leaver);
    clients[0].expect(&format!("* {} left", names[CLIENTS - 1]));
    drop(clients);
    stop(chat);
}

#[test]
fn a_client_that_never_reads_is_dropped_and_the_room_carries_on_in_bounded_memory() {
    const LINE: usize = 1000;
    // What the talker pushes through the room in all: more than the kernel
    // can buffer for the silent client (so it must be dropped), and far
    // more than the server could hold for it under the RSS bound below.
    let pushed = kernel_send_buffer_max().max(16 * 1024 * 1024) + 32 * 1024 * 1024;
    let (chat, addr) = start_chat();
    let pid = chat.child.id();
    // Never reads; a small receive buffer makes the server's queue for it
    // fill sooner.
    let silent = {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        TcpStream::from(socket)
    };
    let silent_name = silent.local_addr().expect("address").to_string();
    let mut talker = Client::join(addr);
    let mut listener = Client::join(addr);
    talker.expect(&format!("* {} joined", listener.name));

    let dropped = format!("* {silent_name} dropped (not reading)");
    let seen_drop = std::sync::Arc::new(AtomicBool::new(false));
    // The listener reads everything, noting the drop announcement.
    let listening = {
        let seen_drop = seen_drop.clone();
        let dropped = dropped.clone();
        let talker_name = talker.name.clone();
        std::thread::spawn(move || {
            let prefix = format!("{talker_name}: ");
            let mut lines = 0;
            while lines < pushed / LINE {
                let line = listener.line().expect("the talker's lines");
                if line == dropped {
                    seen_drop.store(true, Ordering::SeqCst);
                } else if line.starts_with(&prefix) {
                    assert_eq!(line.len(), prefix.len() + LINE - 1, "a whole line");
                    lines += 1;
                }
            }
            listener
        })
    };
    let text = "x".repeat(LINE - 1);
    let mut writer = talker.writer.try_clone().expect("clone");
    let talking = std::thread::spawn(move || {
        for _ in 0..pushed / LINE {
            writer
                .write_all(format!("{text}\n").as_bytes())
                .expect("the room takes the talker's lines");
        }
    });
    talker.expect(&dropped);
    talking.join().expect("talker");
    let mut listener = listening.join().expect("listener");
    assert!(
        seen_drop.load(Ordering::SeqCst),
        "the listener saw the drop"
    );

    // The room's memory: whatever the silent client was sent is not kept.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(
        rss_kib < 16 * 1024,
        "chat RSS {rss_kib} KiB after {pushed} bytes through the room"
    );
    // The silent client is gone: reading what reached it ends in EOF or
    // a reset.
    let mut silent = silent;
    silent.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut sink = vec![0; 1 << 16];
    loop {
        match silent.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // The others chat on.
    talker.say("still here");
    listener.expect(&format!("{}: still here", talker.name));

    drop((talker, listener));
    let stderr = stop(chat);
    let stop_line = stderr
        .lines()
        .find(|l| l.contains("stopped:"))
        .unwrap_or_else(|| panic!("no stop line: {stderr}"));
    let figure = |label: &str| -> u64 {
        let (before, _) = stop_line.split_once(label).expect("label");
        before
            .split_whitespace()
            .next_back()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    };
    assert_eq!(figure("dropped for not reading"), 1, "{stop_line}");
    let peak = figure("bytes at most queued");
    assert!(peak <= DROP_AFTER, "{stop_line}");
}

#[test]
fn an_over_long_line_gets_an_error_and_closes_only_its_sender() {
    let (chat, addr) = start_chat();
    let mut rude = Client::join(addr);
    let mut other = Client::join(addr);
    rude.expect(&format!("* {} joined", other.name));
    rude.say(&"y".repeat(5000));
    assert_eq!(
        rude.line().as_deref(),
        Some("* error: line longer than 4096 bytes; closing")
    );
    assert_eq!(rude.line(), None, "then EOF");
    other.expect(&format!("* {} left", rude.name));
    other.say("anyone?");
    let mut third = Client::join(addr);
    other.expect(&format!("* {} joined", third.name));
    other.say("hello third");
    third.expect(&format!("{}: hello third", other.name));
    stop(chat);
}
