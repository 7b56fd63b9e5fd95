//! The `proxy` example as a program, between a test-side client and a
//! test-side backend: 64 MiB each way at once, checked by hash; half-close
//! passed through each way; a backend that does not read holds the proxy
//! to its bound (from the peak it logs on stop); a reset passed on as a
//! close; and a failed connect closes the client with one log line while
//! the proxy serves on.
//!
//! The binary is built with `cargo build --example proxy` into this test's
//! own target directory and profile (see `common::example`).

mod common;

use std::hash::Hasher;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::running::{Running, start_example, stop_with_sigterm as stop};
use common::{DEADLINE, connect, pattern_bytes};

/// Bytes each way in the big transfer.
const BIG: usize = 64 * 1024 * 1024;

/// The proxy's write high water mark and read chunk (the library's
/// defaults): a side pauses its peer once this much is queued for it, and
/// one read adds at most a chunk.
const HIGH_WATER: u64 = 64 * 1024;
const READ_CHUNK: u64 = 64 * 1024;

fn proxy_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("proxy"))
}

/// The proxy to `backend`, on a free port; `RUST_LOG` as given.
fn start_proxy(backend: SocketAddr, log: &str) -> (Running, SocketAddr) {
    let backend = backend.to_string();
    let args = ["--listen", "127.0.0.1:0", "--to", &backend];
    start_example(proxy_binary(), &args, log)
}

/// The number just before `label` in the proxy's stop line.
fn stop_figure(stderr: &str, label: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("stopped:") && l.contains("accepted,"))
        .unwrap_or_else(|| panic!("no stop line in {stderr:?}"));
    let (before, _) = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    before
        .split_whitespace()
        .next_back()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

/// Accepts one connection, waiting at most [`DEADLINE`].
fn accept(listener: &TcpListener) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let until = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
                stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < until, "no connection within {DEADLINE:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A backend listener on a free port.
fn backend() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    (listener, addr)
}

/// Hash of a byte stream, whatever its chunks (SipHash's `write` is a
/// stream, and it is the standard library's, fast in debug builds too).
fn hash(chunks: &[&[u8]]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for chunk in chunks {
        hasher.write(chunk);
    }
    hasher.finish()
}

/// On another thread: writes `data` in 64 KiB chunks, then half-closes.
fn send_then_half_close(mut stream: TcpStream, data: Arc<Vec<u8>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            stream.write_all(chunk).expect("write through the proxy");
        }
        stream.shutdown(Shutdown::Write).expect("half-close");
    })
}

/// On another thread: reads to EOF; returns the hash and the length.
fn receive_to_eof(mut stream: TcpStream) -> JoinHandle<(u64, usize)> {
    std::thread::spawn(move || {
        let mut hasher = std::hash::DefaultHasher::new();
        let mut buf = vec![0; 64 * 1024];
        let mut total = 0;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (hasher.finish(), total),
                Ok(n) => {
                    hasher.write(&buf[..n]);
                    total += n;
                }
                Err(e) => panic!("read through the proxy after {total} bytes: {e}"),
            }
        }
    })
}

#[test]
fn carries_64_mib_each_way_at_once_and_passes_both_half_closes() {
    let (listener, backend_addr) = backend();
    let (proxy, addr) = start_proxy(backend_addr, "info");
    let up = std::thread::spawn(|| Arc::new(pattern_bytes(1, BIG)));
    let down = Arc::new(pattern_bytes(2, BIG));
    let up = up.join().expect("pattern thread");

    let client = connect(addr);
    let server = accept(&listener);
    let client_reader = receive_to_eof(client.try_clone().expect("clone"));
    let server_reader = receive_to_eof(server.try_clone().expect("clone"));
    let client_writer = send_then_half_close(client, Arc::clone(&up));
    let server_writer = send_then_half_close(server, Arc::clone(&down));
    client_writer.join().expect("client writer");
    server_writer.join().expect("backend writer");
    // Each reader ends at the EOF the proxy passed on from the other end.
    let (at_backend, len) = server_reader.join().expect("backend reader");
    assert_eq!(len, BIG, "bytes the backend got");
    assert_eq!(at_backend, hash(&[&up]), "the backend got other bytes");
    let (at_client, len) = client_reader.join().expect("client reader");
    assert_eq!(len, BIG, "bytes the client got");
    assert_eq!(at_client, hash(&[&down]), "the client got other bytes");

    let stderr = stop(proxy);
    assert_eq!(
        stop_figure(&stderr, "bytes in") as usize,
        2 * BIG,
        "{stderr}"
    );
    let peak = stop_figure(&stderr, "bytes at most queued");
    assert!(peak < HIGH_WATER + READ_CHUNK, "peak {peak}: {stderr}");
}

#[test]
fn the_clients_half_close_reaches_the_backend_which_still_answers() {
    let (listener, backend_addr) = backend();
    let (proxy, addr) = start_proxy(backend_addr, "info");
    let mut client = connect(addr);
    let mut server = accept(&listener);
    client.write_all(b"request").expect("write");
    client.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    server.read_to_end(&mut got).expect("request, then EOF");
    assert_eq!(got, b"request");
    server.write_all(b"answer after your EOF").expect("write");
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("answer, then EOF");
    assert_eq!(got, b"answer after your EOF");
    stop(proxy);
}

#[test]
fn the_backends_half_close_reaches_the_client_which_still_sends() {
    let (listener, backend_addr) = backend();
    let (proxy, addr) = start_proxy(backend_addr, "info");
    let mut client = connect(addr);
    let mut server = accept(&listener);
    server.write_all(b"greeting").expect("write");
    server.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("greeting, then EOF");
    assert_eq!(got, b"greeting");
    client.write_all(b"still talking").expect("write after EOF");
    drop(client);
    let mut got = Vec::new();
    server
        .read_to_end(&mut got)
        .expect("client's bytes, then EOF");
    assert_eq!(got, b"still talking");
    stop(proxy);
}

#[test]
fn a_backend_that_does_not_read_pauses_the_client_within_the_bound() {
    let (listener, backend_addr) = backend();
    let (mut proxy, addr) = start_proxy(backend_addr, "trace");
    let data = Arc::new(pattern_bytes(3, 16 * 1024 * 1024));
    let client = connect(addr);
    let mut server = accept(&listener);
    let writer = send_then_half_close(client, Arc::clone(&data));
    // The backend reads nothing until the proxy has queued the high water
    // mark for it and paused reading from the client.
    proxy.wait_stderr("saying the client is paused", |l| l.contains("paused"));
    let mut got = Vec::new();
    server.read_to_end(&mut got).expect("everything, then EOF");
    writer.join().expect("client writer");
    assert!(got == *data, "the backend got other bytes");

    let stderr = stop(proxy);
    assert!(stop_figure(&stderr, "connected,") >= 1, "{stderr}");
    let peak = stop_figure(&stderr, "bytes at most queued");
    assert!(
        (HIGH_WATER..HIGH_WATER + READ_CHUNK).contains(&peak),
        "peak queued output {peak}: the high water mark, plus less than a read: {stderr}"
    );
    assert!(stop_figure(&stderr, "pauses for a peer") >= 1, "{stderr}");
}

#[test]
fn a_backend_reset_closes_the_client_after_what_was_sent() {
    let (listener, backend_addr) = backend();
    let (proxy, addr) = start_proxy(backend_addr, "info");
    let mut client = connect(addr);
    let server = accept(&listener);
    let mut server_end = server.try_clone().expect("clone");
    server_end.write_all(b"last words").expect("write");
    // SO_LINGER 0: close sends a reset.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(server);
    drop(server_end);
    let mut got = Vec::new();
    let end = client.read_to_end(&mut got);
    assert!(
        end.is_ok() || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{end:?}"
    );
    // The reset may have destroyed the bytes before the proxy read them;
    // what arrives is a prefix, never anything else.
    assert!(b"last words".starts_with(&got), "{got:?}");
    stop(proxy);
}

#[test]
fn a_failed_connect_closes_the_client_with_one_log_line_and_the_proxy_serves_on() {
    // A port nobody listens on: bound, then closed.
    let (listener, backend_addr) = backend();
    drop(listener);
    let (mut proxy, addr) = start_proxy(backend_addr, "info");
    let mut client = connect(addr);
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "{got:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let line = proxy.wait_stderr("about the failed connect", |l| l.contains("cannot connect"));
    assert!(line.contains(&backend_addr.to_string()), "{line}");
    assert!(line.contains("refused"), "{line}");

    // The backend comes up on that port: the next client gets through.
    let listener = TcpListener::bind(backend_addr).expect("the backend's port again");
    let mut client = connect(addr);
    let mut server = accept(&listener);
    client.write_all(b"ping").expect("write");
    let mut got = [0; 4];
    server.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
    server.write_all(b"pong").expect("write");
    client.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"pong");
    drop(client);
    drop(server);

    let stderr = stop(proxy);
    let failures = stderr.lines().filter(|l| l.contains("cannot connect"));
    assert_eq!(failures.count(), 1, "{stderr}");
    assert_eq!(stop_figure(&stderr, "connected,"), 1, "{stderr}");
}

#[test]
fn a_backend_that_writes_before_it_reads_is_still_read() {
    // The backend answers 32 MiB (more than the kernel buffers) before it
    // reads the 32 MiB request; the client sends and reads at once. The
    // proxy must read the answer while the request is backed up on the
    // backend's side, or both ends wait for ever.
    const LEN: usize = 32 * 1024 * 1024;
    let (listener, backend_addr) = backend();
    let (proxy, addr) = start_proxy(backend_addr, "info");
    let request = Arc::new(pattern_bytes(4, LEN));
    let answer = Arc::new(pattern_bytes(5, LEN));
    let client = connect(addr);
    let mut server = accept(&listener);
    let client_reader = receive_to_eof(client.try_clone().expect("clone"));
    let client_writer = send_then_half_close(client, Arc::clone(&request));
    let backend = {
        let answer = Arc::clone(&answer);
        std::thread::spawn(move || {
            server.write_all(&answer).expect("the whole answer first");
            server.shutdown(Shutdown::Write).expect("half-close");
            let mut got = Vec::with_capacity(LEN);
            server.read_to_end(&mut got).expect("then the request");
            got
        })
    };
    client_writer.join().expect("client writer");
    let got = backend.join().expect("backend");
    assert!(got == *request, "the backend got other bytes");
    let (at_client, len) = client_reader.join().expect("client reader");
    assert_eq!(len, LEN);
    assert_eq!(at_client, hash(&[&answer]));
    stop(proxy);
}
