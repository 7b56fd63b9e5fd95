//! The `client` example as a program: against `echo_reactor` with stdin
//! from a pipe (each reply printed while stdin is still open, everything
//! echoed, exit 0 once stdin ends and the server closes) and from a regular
//! file (read on a thread), against a server that answers and closes first,
//! against a closed port (exit 1, one line on stderr), and its flags.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use common::program::Program;

fn binary(name: &'static str) -> &'static Path {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    static ECHO: OnceLock<PathBuf> = OnceLock::new();
    static HELLO: OnceLock<PathBuf> = OnceLock::new();
    let cell = match name {
        "client" => &CLIENT,
        "echo_reactor" => &ECHO,
        "hello_server" => &HELLO,
        other => panic!("no example {other} here"),
    };
    cell.get_or_init(|| common::example::build(name))
}

fn client(addr: &str, stdin: Stdio) -> Program {
    Program::spawn(binary("client"), &["--addr", addr], stdin)
}

/// `n` numbered lines.
fn script(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("line {i} of the script\n").into_bytes())
        .collect()
}

#[test]
fn against_echo_reactor_every_line_comes_back_as_it_is_typed_and_stdin_end_exits_0() {
    let (_server, addr) = Program::server(binary("echo_reactor"), &["--addr", "127.0.0.1:0"]);
    let mut client = client(&addr.to_string(), Stdio::piped());
    // One line at a time: each reply is printed while stdin is still open.
    for i in 0..20 {
        let line = format!("typed line {i}\n");
        client
            .stdin()
            .write_all(line.as_bytes())
            .expect("type a line");
        client.stdin().flush().expect("flush");
        assert_eq!(client.stdout_bytes(line.len()), line.as_bytes());
    }
    // Then a burst, and the end of stdin.
    let burst = script(5000);
    client.stdin().write_all(&burst).expect("the burst");
    client.close_stdin();
    let rest = client.rest_of_stdout();
    assert_eq!(rest.len(), burst.len(), "every byte echoed");
    assert!(rest == burst, "the echo differs from what was sent");
    assert!(client.wait().success(), "exit 0 once the server closed");
    assert_eq!(client.stderr(), "");
}

#[test]
fn stdin_from_a_regular_file_is_read_on_a_thread_and_all_echoed() {
    let (_server, addr) = Program::server(binary("echo_reactor"), &["--addr", "127.0.0.1:0"]);
    let dir = common::TempDir::new("client-stdin");
    let path = dir.join("script.txt");
    // Larger than a chunk and than the socket buffers: more than one credit.
    let lines = script(40_000);
    std::fs::write(&path, &lines).expect("write the script");
    let file = std::fs::File::open(&path).expect("open the script");
    let mut client = client(&addr.to_string(), Stdio::from(file));
    let out = client.rest_of_stdout();
    assert_eq!(out.len(), lines.len(), "every byte echoed");
    assert!(out == lines, "the echo differs from the file");
    assert!(client.wait().success());
    assert_eq!(client.stderr(), "");
}

#[test]
fn a_server_that_answers_and_closes_first_ends_the_client_with_exit_0() {
    let (_server, addr) = Program::server(binary("hello_server"), &["--addr", "127.0.0.1:0"]);
    let mut client = client(&addr.to_string(), Stdio::piped());
    client.stdin().write_all(b"hi\n").expect("type a line");
    client.stdin().flush().expect("flush");
    // Stdin stays open: the server's close alone ends the client.
    assert_eq!(client.rest_of_stdout(), b"Hello World");
    assert!(client.wait().success());
    assert_eq!(client.stderr(), "");
}

#[test]
fn a_closed_port_is_one_line_on_stderr_and_exit_1() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut client = client(&addr, Stdio::piped());
    assert_eq!(client.wait().code(), Some(1));
    assert_eq!(
        client.stderr(),
        format!("client: connect {addr}: connection refused\n")
    );
    assert_eq!(client.rest_of_stdout(), b"");
}

#[test]
fn bad_flags_exit_2_and_help_exits_0() {
    for args in [&["--nope"][..], &["--addr"], &["--addr", "not-an-address"]] {
        let mut client = Program::spawn(binary("client"), args, Stdio::null());
        assert_eq!(client.wait().code(), Some(2), "{args:?}");
        let stderr = client.stderr();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.starts_with("client: "), "{stderr:?}");
    }
    let mut client = Program::spawn(binary("client"), &["--help"], Stdio::null());
    assert!(client.wait().success());
    let help = String::from_utf8(client.rest_of_stdout()).expect("UTF-8 help");
    assert!(
        help.starts_with("usage: client [--addr HOST:PORT]"),
        "{help}"
    );
}
