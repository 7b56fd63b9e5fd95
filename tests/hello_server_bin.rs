//! The `hello_server` example as a program: 500 clients connected at once
//! and served out of order, each getting exactly `Hello World` then EOF,
//! and one `PEER: TEXT` line each on stdout; the 1024-byte message cap;
//! trailing newlines trimmed, lossy UTF-8; a client that says nothing;
//! SIGTERM; flags.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use common::DEADLINE;
use common::program::Program;

const CLIENTS: usize = 500;

fn hello_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("hello_server"))
}

fn serve() -> (Program, SocketAddr) {
    Program::server(hello_server(), &["--addr", "127.0.0.1:0"])
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to hello_server");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// Everything the server sends, up to its FIN.
fn reply(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("the reply, then EOF");
    all
}

/// Sends `message`, returns the reply and the server's stdout line.
fn one_client(server: &mut Program, addr: SocketAddr, message: &[u8]) -> (Vec<u8>, String) {
    let mut stream = connect(addr);
    stream.write_all(message).expect("send");
    let back = reply(&mut stream);
    let peer = stream.local_addr().expect("client address");
    let line = server.next_line().expect("a line for the client");
    let text = line
        .strip_prefix(&format!("{peer}: "))
        .unwrap_or_else(|| panic!("{line:?} does not start with '{peer}: '"));
    (back, text.to_string())
}

#[test]
fn five_hundred_clients_at_once_each_get_hello_world_and_a_line() {
    // 500 client sockets in this process; the server raises its own limit.
    let _ = rlimit::increase_nofile_limit(4 * CLIENTS as u64);
    let (mut server, addr) = serve();
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(addr)).collect();
    // The last connected speaks first: a server serving one client after
    // another would wait on the first, silent one.
    for (i, stream) in clients.iter_mut().enumerate().rev() {
        stream
            .write_all(format!("hello from client {i}\n").as_bytes())
            .expect("send");
    }
    let mut expected = HashMap::new();
    for (i, stream) in clients.iter_mut().enumerate() {
        assert_eq!(reply(stream), b"Hello World", "client {i}");
        let peer = stream.local_addr().expect("client address");
        expected.insert(peer.to_string(), format!("hello from client {i}"));
    }
    for _ in 0..CLIENTS {
        let line = server.next_line().expect("one line per client");
        let (peer, text) = line
            .rsplit_once(": ")
            .unwrap_or_else(|| panic!("{line:?} is not 'PEER: TEXT'"));
        let wanted = expected
            .remove(peer)
            .unwrap_or_else(|| panic!("{line:?}: no such client, or a second line"));
        assert_eq!(text, wanted, "{line:?}");
    }
    assert!(expected.is_empty());
    server.terminate();
    assert!(server.wait().success(), "SIGTERM exits 0");
    assert_eq!(server.next_line(), None, "no line but one per client");
}

#[test]
fn a_message_is_read_up_to_1024_bytes() {
    let (mut server, addr) = serve();
    let (back, text) = one_client(&mut server, addr, &[b'a'; 3000]);
    assert_eq!(back, b"Hello World");
    assert_eq!(text, "a".repeat(1024));
}

#[test]
fn a_trailing_newline_is_trimmed_and_bad_utf8_replaced() {
    let (mut server, addr) = serve();
    let (back, text) = one_client(&mut server, addr, b"caf\xe9 ok\r\n");
    assert_eq!(back, b"Hello World");
    assert_eq!(text, "caf\u{fffd} ok");
    let (_, text) = one_client(&mut server, addr, b"plain\n");
    assert_eq!(text, "plain");
}

#[test]
fn a_client_that_half_closes_without_a_word_gets_its_reply() {
    let (mut server, addr) = serve();
    let mut stream = connect(addr);
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(reply(&mut stream), b"Hello World");
    let peer = stream.local_addr().expect("client address");
    assert_eq!(server.next_line(), Some(format!("{peer}: ")));
}

#[test]
fn bad_flags_exit_2_and_help_exits_0() {
    for args in [&["--nope"][..], &["--addr"], &["--addr", "nowhere"]] {
        let mut server = Program::spawn(hello_server(), args, Stdio::null());
        assert_eq!(server.wait().code(), Some(2), "{args:?}");
        let stderr = server.stderr();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.starts_with("hello_server: "), "{stderr:?}");
    }
    let mut server = Program::spawn(hello_server(), &["-h"], Stdio::null());
    assert!(server.wait().success());
    let help = String::from_utf8(server.rest_of_stdout()).expect("UTF-8 help");
    assert!(
        help.starts_with("usage: hello_server [--addr HOST:PORT]"),
        "{help}"
    );
}
