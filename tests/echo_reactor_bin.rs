//! The `echo_reactor` example as a program: its command line, the first
//! line it prints, echo over IPv4 and IPv6 loopback, idle timeouts, and
//! stopping on SIGINT and SIGTERM (gracefully, then at once); several
//! listeners (repeated `--addr`, `--unix`): their lines, their echo, their
//! socket files, and the listeners that cannot be set up.
//!
//! Socket states are observed in `/proc/net/tcp` (Linux, IPv4), never
//! guessed from elapsed time.
//!
//! The binary is built with `cargo build --example echo_reactor` into this
//! test's own target directory and profile (a no-op when `cargo test` has
//! already built it), so the program tested is always the current source.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::running::Running;
use socket2::{Domain, Protocol, Socket, Type};

/// The longest any wait on the program or a socket may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The example's path, built once per test binary.
fn echo_reactor() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("echo_reactor"))
}

/// `echo_reactor` as a [`Running`] program.
impl Running {
    /// The example with `args`, stdout and stderr piped.
    fn example(args: &[&str]) -> Running {
        Running::spawn(
            Command::new(echo_reactor())
                .args(args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }
}

/// Starts the example on `addr` and returns it with the address from its
/// first line, which must be exactly `listening on <host:port>` with the
/// same host and a real port.
fn serve(addr: &str) -> (Running, SocketAddr) {
    serve_with(addr, &[])
}

/// As [`serve`], with more flags after `--addr`.
fn serve_with(addr: &str, flags: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec!["--addr", addr];
    args.extend_from_slice(flags);
    let mut program = Running::example(&args);
    let line = program
        .next_line()
        .expect("a first line on stdout, not EOF");
    let bound = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line {line:?} is not 'listening on HOST:PORT'"));
    let bound: SocketAddr = bound
        .parse()
        .unwrap_or_else(|_| panic!("first line {line:?} does not end in HOST:PORT"));
    let asked: SocketAddr = addr.parse().expect("test address");
    assert_eq!(bound.ip(), asked.ip(), "{line:?}");
    assert_ne!(bound.port(), 0, "{line:?} must give the real port");
    assert_eq!(line, format!("listening on {bound}"), "exact first line");
    (program, bound)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the example");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// One request, its echo, on a connection kept open.
fn ping(addr: SocketAddr) {
    let mut stream = connect(addr);
    stream.write_all(b"ping\n").expect("write");
    let mut back = [0; 5];
    stream.read_exact(&mut back).expect("the echo");
    assert_eq!(&back, b"ping\n");
}

/// Streams `len` bytes from another thread, half-closes, and reads the whole
/// echo and then EOF on this one.
fn echo_then_half_close(addr: SocketAddr, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().expect("clone the client");
    let sent = data.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).expect("send");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .expect("the whole echo, then EOF");
    sender.join().expect("sender thread");
    assert_eq!(back.len(), data.len(), "echo length");
    assert!(back == data, "the echo differs from what was sent");
}

#[test]
fn ipv4_prints_its_address_and_echoes_including_after_a_half_close() {
    let (_program, addr) = serve("127.0.0.1:0");
    ping(addr);
    echo_then_half_close(addr, 3);
    echo_then_half_close(addr, 1 << 20);
    ping(addr);
}

#[test]
fn ipv6_prints_its_address_in_brackets_and_echoes() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        eprintln!("SKIPPED: this machine has no IPv6 loopback ([::1]:0 does not bind: {e})");
        let mut program = Running::example(&["--addr", "[::1]:0"]);
        let status = program.wait(DEADLINE);
        assert!(
            !status.success(),
            "without IPv6 loopback the example cannot serve [::1]"
        );
        return;
    }
    let (_program, addr) = serve("[::1]:0");
    assert!(addr.is_ipv6());
    ping(addr);
    echo_then_half_close(addr, 64 * 1024);
}

#[test]
fn an_unknown_flag_exits_2_with_one_line_on_stderr() {
    let mut program = Running::example(&["--no-such-flag"]);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(2), "{status}");
    let stderr = program.stderr();
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(
        stderr.contains("--no-such-flag"),
        "the message names the flag: {stderr:?}"
    );
    assert_eq!(program.rest_of_stdout(), "", "nothing on stdout");
}

#[test]
fn help_exits_0_and_describes_the_flags() {
    for flag in ["--help", "-h"] {
        let mut program = Running::example(&[flag]);
        let status = program.wait(DEADLINE);
        assert!(status.success(), "{flag}: {status}");
        let help = program.rest_of_stdout();
        for option in [
            "--addr",
            "--unix",
            "--max-conns",
            "--idle-timeout",
            "--drain-timeout",
            "--threads",
        ] {
            assert!(
                help.contains(option),
                "{flag} output lacks {option}: {help}"
            );
        }
        assert_eq!(program.stderr(), "", "{flag}: nothing on stderr");
    }
}

// ---------------------------------------------------------------------------
// Stopping on signals, and idle timeouts.

/// `/proc/net/tcp`'s state of a listening socket.
const TCP_LISTEN: u8 = 0x0A;

/// One socket as `/proc/net/tcp` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpRow {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    /// Bytes written by the application and not yet acknowledged by the peer.
    tx_queue: u64,
    /// Bytes received and not yet read by the application.
    rx_queue: u64,
}

/// The IPv4 TCP sockets with `port` at either end, as of one read of
/// `/proc/net/tcp` (other sockets, thousands in `TIME_WAIT` on a busy
/// machine, are skipped before parsing).
fn tcp_table(port: u16) -> Vec<TcpRow> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = format!(":{port:04X} ");
    table
        .lines()
        .skip(1)
        .filter(|line| line.contains(&port))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            Some(TcpRow {
                local: common::proc_addr(fields.get(1)?)?,
                remote: common::proc_addr(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Both ends of the loopback connection between `client` and `server`, as
/// of one read of `/proc/net/tcp`: (client's socket, server's socket).
fn both_ends(client: SocketAddr, server: SocketAddr) -> Option<(TcpRow, TcpRow)> {
    let table = tcp_table(server.port());
    let find = |local, remote| {
        table
            .iter()
            .find(|row| row.local == local && row.remote == remote)
            .copied()
    };
    Some((find(client, server)?, find(server, client)?))
}

/// Whether anything listens on `addr`.
fn is_listening(addr: SocketAddr) -> bool {
    tcp_table(addr.port())
        .iter()
        .any(|row| row.local == addr && row.state == TCP_LISTEN)
}

/// A client whose receive buffer is tiny (set before connecting, so the
/// window it offers stays small): an echo it does not read piles up in the
/// server.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    set_mss(&socket, 536);
    socket
        .connect(&addr.into())
        .expect("connect to the example");
    let stream = TcpStream::from(socket);
    // Every write goes out at once: Nagle would hold a chunk's tail until
    // the server acknowledges, which it may delay.
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// Asks for `mss`-byte segments (`TCP_MAXSEG` before connecting, which the
/// SYN advertises).
fn set_mss(socket: &Socket, mss: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt on a socket we own, with a pointer to a
    // live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw const mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
}

/// Waits until the server has read every byte `client` sent (the client's
/// send queue and the server's receive queue are empty, thrice in a row, so
/// the state is settled), and returns the echo bytes the kernel holds:
/// queued at the server's socket or received and unread at the client's.
fn wait_until_server_read_all(client: SocketAddr, server: SocketAddr) -> u64 {
    let mut last = Vec::new();
    let mut held = 0;
    common::wait_until("the server to read all the client sent", || {
        let Some((c, s)) = both_ends(client, server) else {
            return false;
        };
        last.push((c, s));
        if last.len() > 3 {
            last.remove(0);
        }
        held = s.tx_queue + c.rx_queue;
        let settled = last.len() == 3 && last.iter().all(|x| *x == last[0]);
        settled && c.tx_queue == 0 && s.rx_queue == 0
    });
    held
}

/// The one `stopped:` line the program logs on stderr.
fn stop_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("echo_reactor INFO  stopped:"))
        .collect();
    assert_eq!(lines.len(), 1, "one stopped: line on stderr: {stderr}");
    lines[0]
}

/// What a `stopped:` line reports: the stop report's numbers (drained,
/// forced, failed, bytes unsent) and how many signals the program got. The
/// line must end exactly in `drain: <StopReport> (after N signal(s))`.
fn stop_report(line: &str) -> ([u64; 4], u64) {
    let malformed = || -> ! { panic!("malformed stop report in {line:?}") };
    let (_, tail) = line.split_once("; drain: ").unwrap_or_else(|| malformed());
    let (report, signals) = tail
        .strip_suffix(" signal(s))")
        .and_then(|t| t.split_once(" (after "))
        .unwrap_or_else(|| malformed());
    let signals = signals.parse().unwrap_or_else(|_| malformed());
    let mut numbers = report
        .split(", ")
        .map(|part| part.split(' ').next().and_then(|n| n.parse::<u64>().ok()));
    let numbers = [(); 4].map(|()| numbers.next().flatten().unwrap_or_else(|| malformed()));
    let [drained, forced, failed, unsent] = numbers;
    assert_eq!(
        report,
        format!("{drained} drained, {forced} forced, {failed} failed, {unsent} bytes unsent"),
        "the stop report's format"
    );
    (numbers, signals)
}

/// The number just before `label` in `line` (`12 bytes in` for ` bytes in`).
fn number_before(line: &str, label: &str) -> u64 {
    let (before, _) = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {label:?} in {line:?}"))
}

/// A connect to a port nobody listens on is refused, not queued.
fn assert_refused(addr: SocketAddr) {
    match TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "connect: {e}"),
        Ok(stream) => panic!(
            "a connect to {addr} succeeded ({:?}) after the stop",
            stream.local_addr()
        ),
    }
}

#[test]
fn sigterm_delivers_the_pending_echo_then_fin_and_exits_0() {
    // Sent in chunks until the server holds echo of its own: the kernel
    // buffers on the way back (the server's send buffer, the client's tiny
    // receive buffer) are full. A chunk is well below the 64 KiB at which
    // the server stops reading, so it has read everything when it stops.
    const CHUNK: usize = 16 * 1024;
    const MAX: usize = 4 << 20;
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--drain-timeout", "30"]);
    let mut client = small_window_client(addr);
    let me = client.local_addr().expect("client address");
    let data = common::pattern_bytes(1, MAX);
    let mut sent = 0;
    let held_by_server = loop {
        assert!(
            sent < MAX,
            "{MAX} bytes sent and the server holds none of the echo"
        );
        client
            .write_all(&data[sent..sent + CHUNK])
            .expect("send, not reading yet");
        sent += CHUNK;
        // A graceful stop ignores input not read yet: wait until all is read.
        let in_kernel = wait_until_server_read_all(me, addr);
        // The kernel count may include echo bytes twice (received, not yet
        // acknowledged): low, never high, by less than the client's window.
        let held = (sent as u64).saturating_sub(in_kernel);
        if held > 0 {
            break held;
        }
    };
    let data = &data[..sent];
    eprintln!("at SIGTERM: {sent} bytes sent, {held_by_server} of the echo in the server");

    program.signal(libc::SIGTERM);
    let mut back = Vec::new();
    client
        .read_to_end(&mut back)
        .expect("the whole echo, then EOF (not a reset)");
    assert_eq!(back.len(), sent, "echo length");
    assert!(back == data, "the echo differs from what was sent");
    // We are quiet (nothing sent since the stop): once its echo is
    // flushed, the server needs nothing more of us, not even our FIN. It
    // exits while we are still connected.
    let status = program.wait(DEADLINE);
    assert_refused(addr);
    drop(client);
    assert_eq!(status.code(), Some(0), "{status}");
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(line.contains(" 1 accepted, 1 closed"), "{line}");
    assert!(
        line.contains(&format!("{sent} bytes in, {sent} bytes out")),
        "{line}"
    );
    assert_eq!(stop_report(line), ([1, 0, 0, 0], 1), "{line}");
}

#[test]
fn sigterm_with_ten_idle_clients_exits_at_once_all_drained() {
    // A drain timeout far beyond the test's deadline: a stop that waited
    // on quiet peers would fail here, not merely be slow.
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--drain-timeout", "600"]);
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    for client in &mut clients {
        // One echo each: all ten are accepted before the signal.
        client.write_all(b"x").expect("write");
        let mut back = [0; 1];
        client.read_exact(&mut back).expect("the echo");
    }
    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    for client in &mut clients {
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .expect("EOF from the server, not a reset");
        assert_eq!(rest, b"");
    }
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(
        line.contains(" 10 accepted, 10 closed (0 reset, 0 timed out)"),
        "{line}"
    );
    assert_eq!(stop_report(line), ([10, 0, 0, 0], 1), "{line}");
}

#[test]
fn the_program_runs_on_one_thread() {
    // Signals reach the loop through a socket pair, not a signal thread:
    // a single-threaded process keeps glibc's cheaper path on every read
    // and write.
    let (mut program, addr) = serve("127.0.0.1:0");
    let mut client = connect(addr);
    client.write_all(b"ping").expect("write");
    let mut back = [0; 4];
    client.read_exact(&mut back).expect("the echo");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", program.child.id()))
        .expect("the program's /proc entry")
        .count();
    assert_eq!(tasks, 1, "threads in echo_reactor");
    program.signal(libc::SIGINT);
    assert_eq!(program.wait(DEADLINE).code(), Some(0));
}

#[test]
fn threads_2_spreads_clients_and_sigterm_stops_both_with_a_summed_summary() {
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--threads", "2"]);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", program.child.id()))
        .expect("the program's /proc entry")
        .count();
    assert_eq!(tasks, 3, "the main thread and one per reactor");
    // The kernel spreads connections over the two listeners: 200 clients
    // all landing on one has a chance of 2^-199. Each does one echo.
    let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(addr)).collect();
    for client in &mut clients {
        client.write_all(b"abc").expect("write");
        let mut back = [0; 3];
        client.read_exact(&mut back).expect("the echo");
        assert_eq!(&back, b"abc");
    }
    program.signal(libc::SIGTERM);
    for client in &mut clients {
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .expect("EOF from the server, not a reset");
        assert_eq!(rest, b"");
    }
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    assert_refused(addr);
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(
        line.contains(" 200 accepted (per reactor: "),
        "the total, then each reactor's: {line}"
    );
    let (_, each) = line
        .split_once("(per reactor: ")
        .and_then(|(a, b)| Some((a, b.split_once(')')?.0)))
        .unwrap_or_else(|| panic!("no per-reactor counts in {line:?}"));
    let each: Vec<u64> = each
        .split(' ')
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(each.len(), 2, "{line}");
    assert_eq!(each.iter().sum::<u64>(), 200, "{line}");
    assert!(each.iter().all(|&n| n > 0), "every reactor served: {line}");
    assert!(line.contains("600 bytes in, 600 bytes out"), "{line}");
    assert_eq!(stop_report(line), ([200, 0, 0, 0], 1), "{line}");
}

#[test]
fn threads_above_1_take_one_addr_only() {
    for args in [
        &[
            "--threads",
            "2",
            "--addr",
            "127.0.0.1:0",
            "--addr",
            "127.0.0.1:0",
        ][..],
        &["--threads", "2", "--unix", "/tmp/never-made.sock"],
        &["--threads", "0"],
        &["--threads", "257"],
    ] {
        let mut program = Running::example(args);
        let status = program.wait(DEADLINE);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}");
        assert_eq!(program.rest_of_stdout(), "", "{args:?}");
    }
}

#[test]
fn help_gives_the_300_s_idle_timeout_default_and_0_is_accepted() {
    let mut program = Running::example(&["--help"]);
    assert!(program.wait(DEADLINE).success());
    let help = program.rest_of_stdout();
    assert!(
        help.contains(
            "--idle-timeout SECS    close connections idle that long (default 300; 0: never)"
        ),
        "{help}"
    );
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--idle-timeout", "0"]);
    let mut client = connect(addr);
    client.write_all(b"ping").expect("write");
    let mut back = [0; 4];
    client.read_exact(&mut back).expect("the echo");
    program.signal(libc::SIGTERM);
    assert_eq!(program.wait(DEADLINE).code(), Some(0));
}

#[test]
fn sigint_stops_gracefully_too() {
    let (mut program, addr) = serve("127.0.0.1:0");
    let mut client = connect(addr);
    client.write_all(b"ping\n").expect("write");
    let mut back = [0; 5];
    client.read_exact(&mut back).expect("the echo");
    assert_eq!(&back, b"ping\n");

    program.signal(libc::SIGINT);
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("EOF from the server, not a reset");
    assert_eq!(rest, b"", "nothing after the echo but EOF");
    drop(client);

    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(line.contains(" 1 accepted, 1 closed"), "{line}");
    assert_eq!(stop_report(line), ([1, 0, 0, 0], 1), "{line}");
    assert_refused(addr);
}

#[test]
fn a_second_sigterm_cuts_a_drain_that_cannot_finish() {
    const CHUNK: usize = 4096;
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--drain-timeout", "60"]);
    let client = small_window_client(addr);
    let me = client.local_addr().expect("client address");
    // The client streams and never reads: the server fills its socket, then
    // its own queue up to the high-water mark, then stops reading, and the
    // writer blocks. It ends when the server resets the connection.
    let written = Arc::new(AtomicU64::new(0));
    let (writer_done, writer_ended) = mpsc::channel();
    let mut writer = client.try_clone().expect("clone the client");
    let counter = Arc::clone(&written);
    std::thread::spawn(move || {
        let chunk = common::pattern_bytes(3, CHUNK);
        while writer.write_all(&chunk).is_ok() {
            counter.fetch_add(CHUNK as u64, Ordering::SeqCst);
        }
        let _ = writer_done.send(());
    });

    // Wait until the server has stopped reading (input waits in its socket)
    // with echo of its own held back, and that state has lasted: the
    // kernel may first take a little more of the echo (the client's tiny
    // buffer is compacted and its window reopens a bit), which moves bytes
    // out of the server's queue. What the server holds is what was written
    // less what the kernel holds; `written` lags by less than a chunk and
    // the kernel may count bytes twice (received, not yet acknowledged),
    // so the estimate is low, never high.
    const SETTLED: Duration = Duration::from_millis(500);
    let until = Instant::now() + DEADLINE;
    let mut same_since = None;
    let held_by_server = loop {
        let count = written.load(Ordering::SeqCst);
        if let Some((c, s)) = both_ends(me, addr) {
            let state = (count, c.tx_queue, c.rx_queue, s.tx_queue, s.rx_queue);
            match same_since {
                Some((before, _)) if before == state => {}
                _ => same_since = Some((state, Instant::now())),
            }
            let in_kernel = c.tx_queue + c.rx_queue + s.tx_queue + s.rx_queue;
            let held = count.saturating_sub(in_kernel);
            let settled = same_since.is_some_and(|(_, t)| t.elapsed() >= SETTLED);
            if settled && s.rx_queue > 0 && held > 0 {
                break held;
            }
        }
        assert!(
            Instant::now() < until,
            "the server never held back echo: (written, client tx, client rx, \
             server tx, server rx) = {same_since:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };

    program.signal(libc::SIGTERM);
    common::wait_until("the graceful stop to close the listener", || {
        !is_listening(addr)
    });
    assert!(
        program.still_running_after(Duration::from_millis(300)),
        "a drain the client never lets finish (drain timeout 60 s) ended early"
    );
    assert!(
        both_ends(me, addr).is_some(),
        "the server's end of the connection is still open while draining"
    );

    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    let ([drained, forced, failed, unsent], signals) = stop_report(line);
    // The second signal ended the drain (`stop_now`): one connection, counted
    // once, by the one last flush it got. What it still held then is what the
    // reset dropped: some of the echo, never above the 64 KiB at which it
    // stops reading, and possibly nothing, since the kernel may have room for
    // all of it by then without having said so (a socket reports writable
    // again only once a good part of its buffer is free). A connection with
    // output left, or with input unread in the kernel (the client never stops
    // writing), is cut and counted forced, so forced with 0 bytes unsent is a
    // true report; only an empty queue and no input waiting count as drained.
    assert_eq!((failed, signals), (0, 2), "{line}");
    assert_eq!(drained + forced, 1, "{line}");
    assert!(
        unsent <= 64 * 1024,
        "held {held_by_server} bytes of echo at the first signal: {line}"
    );
    if drained == 1 {
        assert_eq!(unsent, 0, "{line}");
    }
    // Nothing it did not read.
    assert!(
        number_before(line, " bytes out") + unsent <= number_before(line, " bytes in"),
        "{line}"
    );
    // Either way the server's socket closed with input unread: a reset.
    writer_ended
        .recv_timeout(DEADLINE)
        .expect("the client's writes fail once the server has reset it");
    drop(client);
}

#[test]
fn sigterm_with_no_clients_exits_0_and_stops_listening() {
    let (mut program, addr) = serve("127.0.0.1:0");
    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(line.contains(" 0 accepted, 0 closed"), "{line}");
    assert_eq!(stop_report(line), ([0, 0, 0, 0], 1), "{line}");
    assert_refused(addr);
    assert_eq!(program.rest_of_stdout(), "", "nothing after the first line");
}

/// Reads until the server closes: `Ok` at EOF, and a reset counts as
/// closed too. Returns when that happened.
fn wait_for_close(stream: &mut TcpStream) -> Instant {
    let mut buf = [0; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(n) => panic!("{n} unexpected bytes from an idle connection"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for the idle close: {e}"),
        }
    }
}

#[test]
fn idle_timeout_closes_quiet_connections_only() {
    const IDLE: Duration = Duration::from_secs(1);
    /// How often the active client talks: fifty times per timeout, so only
    /// a stall of most of a timeout could make it look idle.
    const PACE: Duration = Duration::from_millis(20);
    /// How long it talks: several timeouts.
    const ACTIVE_FOR: Duration = Duration::from_secs(3);
    let (mut program, addr) = serve_with("127.0.0.1:0", &["--idle-timeout", "1"]);

    // Active: an echo every PACE for several idle timeouts.
    let active = std::thread::spawn(move || {
        let mut stream = connect(addr);
        let start = Instant::now();
        let mut rounds = 0u32;
        let mut quiet_for = Duration::ZERO;
        let mut last_echo = start;
        loop {
            quiet_for = quiet_for.max(last_echo.elapsed());
            stream
                .write_all(b"tick")
                .expect("an active client is served");
            let mut back = [0; 4];
            stream.read_exact(&mut back).unwrap_or_else(|e| {
                panic!(
                    "an active client gets its echo (after {rounds} rounds, quiet for \
                     {quiet_for:?} at most): {e}"
                )
            });
            assert_eq!(&back, b"tick");
            last_echo = Instant::now();
            rounds += 1;
            if start.elapsed() > ACTIVE_FOR {
                return (stream, rounds);
            }
            // Pacing: this is how often the client talks.
            std::thread::sleep(PACE);
        }
    });

    // Silent from the start: no earlier than IDLE after its connect began.
    let before_connect = Instant::now();
    let mut silent = connect(addr);
    // Quiet after one echo: no earlier than IDLE after that activity began.
    let mut quiet = connect(addr);
    let before_ping = Instant::now();
    quiet.write_all(b"once").expect("write");
    let mut back = [0; 4];
    quiet.read_exact(&mut back).expect("the echo");
    assert_eq!(&back, b"once");

    let silent_closed = wait_for_close(&mut silent);
    let quiet_closed = wait_for_close(&mut quiet);
    assert!(
        silent_closed - before_connect >= IDLE,
        "a silent connection was closed {:?} after its connect began",
        silent_closed - before_connect
    );
    assert!(
        quiet_closed - before_ping >= IDLE,
        "a connection was closed {:?} after its last activity began",
        quiet_closed - before_ping
    );

    let (mut stream, rounds) = active.join().expect("the active client");
    assert!(rounds >= 2, "{rounds} echoes");
    stream
        .write_all(b"last")
        .expect("still served after several timeouts");
    stream
        .read_exact(&mut back)
        .expect("still served after several timeouts");
    assert_eq!(&back, b"last");

    // Closed by the client (the server's FIN after ours: it is done with
    // the connection), so the stop finds nothing to drain.
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after ours");
    assert_eq!(rest, b"");
    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(
        line.contains(" 3 accepted, 3 closed (0 reset, 2 timed out)"),
        "only the two quiet ones timed out: {line}"
    );
    assert_eq!(stop_report(line), ([0, 0, 0, 0], 1), "{line}");
}

#[test]
fn bad_timeouts_exit_2_with_one_line_on_stderr() {
    let cases: [&[&str]; 8] = [
        &["--idle-timeout", "abc"],
        &["--idle-timeout", "-1"],
        &["--idle-timeout"],
        // Numbers outside the library's 1 ms to 24 days.
        &["--idle-timeout", "0.0001"],
        &["--idle-timeout", "1e9"],
        &["--drain-timeout", "abc"],
        &["--drain-timeout", "0"],
        &["--drain-timeout", "NaN"],
    ];
    for args in cases {
        let mut program = Running::example(args);
        let status = program.wait(DEADLINE);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}");
        let stderr = program.stderr();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: stderr: {stderr:?}");
        assert!(
            stderr.starts_with("echo_reactor: ") && stderr.contains(args[0]),
            "{args:?}: the message names the flag: {stderr:?}"
        );
        assert_eq!(program.rest_of_stdout(), "", "{args:?}: nothing on stdout");
    }
}

// ---------------------------------------------------------------------------
// Several listeners: repeated --addr, and --unix.

/// A directory of the test's own for socket files, removed with whatever is
/// left in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Short: a socket path must fit in a socket address (about 107
        // bytes).
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("echo_reactor_bin-{}-{n}", std::process::id()));
        // Left by an earlier run whose pid this one reuses.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    /// `name` in the directory, as a string for the command line.
    fn join(&self, name: &str) -> String {
        let path = self.0.join(name);
        path.to_str().expect("a UTF-8 temp dir").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `path` is a socket file.
fn is_socket_file(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn unix_connect(path: &str) -> UnixStream {
    let stream = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to the example at {path}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

/// One request and its echo over the Unix socket at `path`, then a
/// half-close and the server's EOF.
fn unix_ping(path: &str) {
    let mut stream = unix_connect(path);
    stream.write_all(b"ping\n").expect("write");
    let mut back = [0; 5];
    stream.read_exact(&mut back).expect("the echo");
    assert_eq!(&back, b"ping\n");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after our FIN");
    assert_eq!(rest, b"");
}

/// The address of a `listening on HOST:PORT` line, which must name a real
/// port on `ip`.
fn tcp_line(line: &str, ip: &str) -> SocketAddr {
    let bound: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} is not 'listening on HOST:PORT'"));
    assert_eq!(bound.ip().to_string(), ip, "{line:?}");
    assert_ne!(bound.port(), 0, "{line:?} must give the real port");
    bound
}

/// Whether `[::1]` can be listened on here.
fn has_ipv6_loopback() -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("no IPv6 loopback ([::1]:0 does not bind: {e}): IPv4 only");
            false
        }
    }
}

#[test]
fn every_listener_gets_its_line_tcp_first_each_echoes_and_sigterm_removes_the_socket_files() {
    let dir = TempDir::new();
    let (first_sock, second_sock) = (dir.join("a.sock"), dir.join("b.sock"));
    let ipv6 = has_ipv6_loopback();
    // A --unix first on the command line: the TCP lines come first anyway.
    let mut args = vec!["--unix", &first_sock, "--addr", "127.0.0.1:0"];
    args.extend(["--addr", "127.0.0.1:0", "--unix", &second_sock]);
    if ipv6 {
        args.extend(["--addr", "[::1]:0"]);
    }
    let mut program = Running::example(&args);
    let mut tcp = vec![
        tcp_line(&program.next_line().expect("line 1"), "127.0.0.1"),
        tcp_line(&program.next_line().expect("line 2"), "127.0.0.1"),
    ];
    assert_ne!(tcp[0], tcp[1], "two listeners on port 0, two ports");
    if ipv6 {
        tcp.push(tcp_line(&program.next_line().expect("line 3"), "::1"));
    }
    for path in [&first_sock, &second_sock] {
        assert_eq!(
            program.next_line().as_deref(),
            Some(format!("listening on unix:{path}").as_str()),
            "the Unix lines follow, in the order given"
        );
        assert!(is_socket_file(path), "{path} is a socket while it listens");
    }

    for &addr in &tcp {
        ping(addr);
        echo_then_half_close(addr, 64 * 1024);
    }
    unix_ping(&first_sock);
    unix_ping(&second_sock);
    let accepted = 2 * tcp.len() + 2;

    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(
        program.rest_of_stdout(),
        "",
        "one line per listener, no more"
    );
    for path in [&first_sock, &second_sock] {
        assert!(
            std::fs::symlink_metadata(path).is_err(),
            "{path} is removed on exit"
        );
        let refused = UnixStream::connect(path).expect_err("nothing listens after the stop");
        assert_eq!(refused.kind(), ErrorKind::NotFound, "{path}: {refused}");
    }
    for &addr in &tcp {
        assert_refused(addr);
    }
    let stderr = program.stderr();
    let line = stop_line(&stderr);
    assert!(
        line.contains(&format!(" {accepted} accepted, {accepted} closed")),
        "{line}"
    );
}

/// The inodes of the sockets the process `pid` holds (`socket:[N]` links
/// in `/proc/PID/fd`).
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the program's /proc fd directory")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inodes of the sockets a `/proc/net` table lists (column `column`),
/// with the rest of each row; an absent table (no IPv6) lists none.
fn proc_net_inodes(table: &str, column: usize) -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|row| {
            let inode = row.split_whitespace().nth(column)?.parse().ok()?;
            Some((inode, row.to_string()))
        })
        .collect()
}

#[test]
fn with_only_unix_it_listens_on_no_tcp_address() {
    let dir = TempDir::new();
    let path = dir.join("only.sock");
    let mut program = Running::example(&["--unix", &path]);
    assert_eq!(
        program.next_line().as_deref(),
        Some(format!("listening on unix:{path}").as_str()),
        "the first line is the Unix listener's"
    );
    unix_ping(&path);
    // The program's sockets, and how the kernel lists them: the socket
    // file's (a control that the lookup works), and not one TCP socket,
    // so not the default 127.0.0.1:7890 either.
    let mine = socket_inodes(program.child.id());
    let unix = proc_net_inodes("unix", 6);
    assert!(
        unix.iter()
            .any(|(inode, row)| mine.contains(inode) && row.ends_with(&path)),
        "the program holds the socket at {path}: {mine:?}"
    );
    for table in ["tcp", "tcp6"] {
        let tcp: Vec<_> = proc_net_inodes(table, 9)
            .into_iter()
            .filter(|(inode, _)| mine.contains(inode))
            .collect();
        assert!(tcp.is_empty(), "TCP sockets of the program: {tcp:?}");
    }
    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(program.rest_of_stdout(), "", "one listener, one line");
    assert!(!is_socket_file(&path), "{path} is removed on exit");
}

/// Runs the example with `args`, which must fail with `code` before
/// printing anything, and returns its one line on stderr.
fn fails_with(args: &[&str], code: i32) -> String {
    let mut program = Running::example(args);
    let status = program.wait(DEADLINE);
    assert_eq!(status.code(), Some(code), "{args:?}: {status}");
    assert_eq!(program.rest_of_stdout(), "", "{args:?}: nothing on stdout");
    let stderr = program.stderr();
    assert_eq!(stderr.lines().count(), 1, "{args:?}: stderr: {stderr:?}");
    assert!(stderr.starts_with("echo_reactor: "), "{args:?}: {stderr:?}");
    stderr
}

#[test]
fn an_address_or_path_given_twice_and_bad_paths_exit_2_naming_the_flag() {
    let dir = TempDir::new();
    let path = dir.join("twice.sock");
    // A port this test holds: were the repeat not caught, the bind would
    // fail (exit 1), never listen on a port of someone else's.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let held = held.local_addr().expect("its address").to_string();
    let too_long = dir.join(&"x".repeat(120));
    // The arguments, and what the one line on stderr must say.
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--addr", &held, "--addr", &held],
            &["--addr", "given twice"],
        ),
        (
            &["--unix", &path, "--unix", &path],
            &["--unix", "given twice"],
        ),
        (&["--unix", ""], &["--unix", "empty"]),
        (&["--unix", &too_long], &["--unix", "too long"]),
        (&["--unix"], &["--unix", "needs a value"]),
    ];
    for (args, says) in cases {
        let stderr = fails_with(args, 2);
        for words in says {
            assert!(
                stderr.contains(words),
                "{args:?}: says {words:?}: {stderr:?}"
            );
        }
    }
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "nothing was bound at {path}"
    );
}

#[test]
fn a_listener_that_cannot_be_set_up_exits_1_before_printing_and_leaves_no_socket_file() {
    let dir = TempDir::new();
    let bound_first = dir.join("first.sock");

    // A TCP port in use, after one that binds.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_addr = held.local_addr().expect("its address").to_string();
    let stderr = fails_with(&["--addr", "127.0.0.1:0", "--addr", &held_addr], 1);
    assert!(
        stderr.contains(&format!("bind {held_addr}")) && stderr.contains("in use"),
        "{stderr:?}"
    );

    // A Unix path in a directory that does not exist, after one that binds:
    // the socket file made first is removed.
    let missing = dir.join("no-such-dir/x.sock");
    let stderr = fails_with(&["--unix", &bound_first, "--unix", &missing], 1);
    assert!(stderr.contains(&format!("bind {missing}")), "{stderr:?}");
    assert!(
        std::fs::symlink_metadata(&bound_first).is_err(),
        "{bound_first}, bound before the failure, is removed"
    );

    // A file that is not a socket: left alone, and the message says why.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").expect("write the file");
    let stderr = fails_with(&["--unix", &file], 1);
    assert!(
        stderr.contains(&format!("bind {file}")) && stderr.contains("not a socket"),
        "{stderr:?}"
    );
    assert_eq!(
        std::fs::read(&file).expect("the file is still there"),
        b"keep me"
    );

    // A socket another server listens on: in use, and left to it.
    let live = dir.join("live.sock");
    let other = UnixListener::bind(&live).expect("bind the other server");
    let stderr = fails_with(&["--unix", &live], 1);
    assert!(
        stderr.contains(&format!("bind {live}")) && stderr.contains("in use"),
        "{stderr:?}"
    );
    // Non-blocking, so this cannot wait: a Unix connect is queued on the
    // listener before it returns.
    other.set_nonblocking(true).expect("O_NONBLOCK");
    let _client = unix_connect(&live);
    other
        .accept()
        .expect("the other server still gets connections");
}
