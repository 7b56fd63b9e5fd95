//! The `echo_reactor` example as a program: its command line, the first
//! line it prints, and echo over IPv4 and IPv6 loopback.
//!
//! The binary is built with `cargo build --example echo_reactor` into this
//! test's own target directory and profile (a no-op when `cargo test` has
//! already built it), so the program tested is always the current source.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The longest any wait on the program or a socket may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The longest building the example may take.
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

/// The example's path, built once per test binary.
fn echo_reactor() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_example)
}

/// `current_exe` is `<target>/[<triple>/]<profile dir>/deps/<test>`; the
/// example goes to `<profile dir>/examples/echo_reactor`.
fn build_example() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <profile>/deps");
    let profile_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    // `debug` is where the dev and test profiles build.
    let profile = if profile_name == "debug" {
        "dev"
    } else {
        profile_name
    };
    let mut target_dir = profile_dir.parent().expect("target directory");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", "echo_reactor", "--profile"])
        .arg(profile);
    // Cross builds add a `<triple>` level; cargo tags the target root.
    if !target_dir.join("CACHEDIR.TAG").exists() {
        if let (Some(root), Some(triple)) = (target_dir.parent(), target_dir.file_name()) {
            cargo.arg("--target").arg(triple);
            target_dir = root;
        }
    }
    cargo
        .arg("--target-dir")
        .arg(target_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut build = Running::spawn(&mut cargo);
    let status = build.wait(BUILD_DEADLINE);
    let errors = build.stderr();
    assert!(
        status.success(),
        "cargo build --example echo_reactor: {status}\n{errors}"
    );
    let binary = profile_dir
        .join("examples")
        .join(format!("echo_reactor{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// A child process, killed and reaped when dropped; its output is read by
/// threads so a wait on it can have a deadline.
struct Running {
    child: Child,
    stdout_lines: Option<Receiver<String>>,
    stderr: Option<Receiver<String>>,
}

impl Running {
    fn spawn(command: &mut Command) -> Running {
        let mut child = command.spawn().expect("spawn");
        let stdout_lines = child.stdout.take().map(line_reader);
        let stderr = child.stderr.take().map(whole_reader);
        Running {
            child,
            stdout_lines,
            stderr,
        }
    }

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

    /// The next line on stdout, waiting at most [`DEADLINE`]; `None` at EOF.
    fn next_line(&mut self) -> Option<String> {
        let lines = self.stdout_lines.as_ref().expect("stdout is piped");
        match lines.recv_timeout(DEADLINE) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line on stdout within {DEADLINE:?}")
            }
        }
    }

    /// Every remaining stdout line, until EOF (bounded by [`DEADLINE`]).
    fn rest_of_stdout(&mut self) -> String {
        let mut all = String::new();
        while let Some(line) = self.next_line() {
            all.push_str(&line);
            all.push('\n');
        }
        all
    }

    /// Everything the program wrote to stderr, once it has closed it
    /// (bounded by [`DEADLINE`]).
    fn stderr(&mut self) -> String {
        let stderr = self.stderr.take().expect("stderr is piped, read once");
        stderr
            .recv_timeout(DEADLINE)
            .expect("stderr closed within the deadline")
    }

    /// Waits for the program to exit, failing after `deadline`.
    fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the program did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already exited is fine; either way reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_reader(stdout: ChildStdout) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

fn whole_reader(mut stderr: ChildStderr) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = send.send(all);
    });
    receive
}

/// Starts the example on `addr` and returns it with the address from its
/// first line, which must be exactly `listening on <host:port>` with the
/// same host and a real port.
fn serve(addr: &str) -> (Running, SocketAddr) {
    let mut program = Running::example(&["--addr", addr]);
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
        for option in ["--addr", "--max-conns"] {
            assert!(
                help.contains(option),
                "{flag} output lacks {option}: {help}"
            );
        }
        assert_eq!(program.stderr(), "", "{flag}: nothing on stderr");
    }
}
