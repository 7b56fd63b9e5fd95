//! The `client` example as a program: against `echo_reactor` with stdin
//! from a pipe (each reply printed while stdin is still open, everything
//! echoed, exit 0 once stdin ends and the server closes) and from a regular
//! file (read on a thread), against a server that answers and closes first,
//! against a server that does not read (stdin paused, memory bounded, every
//! byte delivered once it reads), against a closed port (exit 1, one line
//! on stderr), and its flags.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// The size of the chunks written to the client's stdin.
const CHUNK: usize = 64 * 1024;

/// Chunk `n` of the stream: pattern bytes with `n` in the first eight, so a
/// lost, repeated or reordered chunk shows.
fn numbered_chunk(n: u64) -> Vec<u8> {
    let mut chunk = common::pattern_bytes(7, CHUNK);
    chunk[..8].copy_from_slice(&n.to_le_bytes());
    chunk
}

#[test]
fn a_server_that_does_not_read_pauses_stdin_and_then_gets_every_byte() {
    const TOTAL: u64 = 32 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut client = client(&addr.to_string(), Stdio::piped());
    let (mut server, _) = listener.accept().expect("the client connects");
    server
        .set_read_timeout(Some(common::DEADLINE))
        .expect("timeout");
    // Stdin gets 32 MiB from a thread, as fast as the client takes it.
    let written = Arc::new(AtomicU64::new(0));
    let mut stdin = client.take_stdin();
    let counter = Arc::clone(&written);
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < TOTAL {
            let chunk = numbered_chunk(sent / CHUNK as u64);
            if stdin.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
            counter.store(sent, Ordering::SeqCst);
        }
        // Dropping stdin is the client's EOF.
    });
    // The server reads nothing: the client stops taking stdin once its
    // output and the socket buffers are full. Wait until the writer makes
    // no progress for a while (or, if the client took everything, ends).
    let until = Instant::now() + common::DEADLINE;
    let mut last = u64::MAX;
    while written.load(Ordering::SeqCst) != last && !writer.is_finished() {
        assert!(Instant::now() < until, "the writer never settled");
        last = written.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
    }
    let held = written.load(Ordering::SeqCst);
    assert!(
        held < TOTAL,
        "the client took all {TOTAL} bytes from stdin while the server read none"
    );
    let rss = client.rss_kib();
    assert!(
        rss < 32 * 1024,
        "client RSS {rss} KiB with {held} bytes taken from stdin"
    );
    // Now the server reads: every byte arrives, in order, then the FIN.
    let mut received = 0u64;
    let mut buffer = vec![0; 256 * 1024];
    let mut expected = (0, numbered_chunk(0));
    loop {
        let n = server.read(&mut buffer).expect("read from the client");
        if n == 0 {
            break;
        }
        for (i, &byte) in buffer[..n].iter().enumerate() {
            let offset = received + i as u64;
            let chunk = offset / CHUNK as u64;
            if expected.0 != chunk {
                expected = (chunk, numbered_chunk(chunk));
            }
            if byte != expected.1[(offset % CHUNK as u64) as usize] {
                panic!("bytes differ at offset {offset}");
            }
        }
        received += n as u64;
    }
    writer.join().expect("writer thread");
    assert_eq!(received, TOTAL);
    drop(server);
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
