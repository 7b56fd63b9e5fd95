//! An example program run by a test: a child process whose stdout lines
//! and stderr are read by threads, so every wait on it has a deadline;
//! killed and reaped when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A child process, killed and reaped when dropped; its output is read by
/// threads so a wait on it can have a deadline.
pub struct Running {
    pub child: Child,
    stdout_lines: Option<Receiver<String>>,
    stderr_lines: Receiver<String>,
    /// Stderr lines read so far (by [`Running::wait_stderr`]).
    stderr_seen: Vec<String>,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command.spawn().expect("spawn");
        let stdout_lines = child.stdout.take().map(line_reader);
        let stderr_lines = match child.stderr.take() {
            Some(stderr) => line_reader(stderr),
            None => mpsc::channel().1, // not piped: disconnected, no lines
        };
        Running {
            child,
            stdout_lines,
            stderr_lines,
            stderr_seen: Vec::new(),
        }
    }

    /// The next line on stdout, waiting at most [`DEADLINE`]; `None` at EOF.
    pub fn next_line(&mut self) -> Option<String> {
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
    pub fn rest_of_stdout(&mut self) -> String {
        let mut all = String::new();
        while let Some(line) = self.next_line() {
            all.push_str(&line);
            all.push('\n');
        }
        all
    }

    /// Everything the program wrote to stderr, once it has closed it
    /// (bounded by [`DEADLINE`]).
    pub fn stderr(&mut self) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("stderr not closed within {DEADLINE:?}")
                }
            }
        }
        self.stderr_seen.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Waits (at most [`DEADLINE`]) for a line on stderr that `wanted`
    /// accepts, and returns it; the lines before it are kept for
    /// [`Running::stderr`].
    #[track_caller]
    pub fn wait_stderr(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line {what}: {e:?}; so far: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// Waits for the program to exit, failing after `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
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

    /// Whether the program is still running after `window`: polls for an
    /// exit until then. Observing absence needs a bounded window.
    pub fn still_running_after(&mut self, window: Duration) -> bool {
        let until = Instant::now() + window;
        while Instant::now() < until {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` to the program, which must not have been reaped yet.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) only takes integers and touches no memory of this
        // process. The pid is our own child, reaped only by `wait`, which the
        // tests call after their last signal, so it names no other process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already exited is fine; either way reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_reader(stdout: impl Read + Send + 'static) -> Receiver<String> {
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

/// The address in a first line `listening on HOST:PORT`, which must be
/// exactly that, with a real port.
#[track_caller]
pub fn listening_addr(line: &str) -> SocketAddr {
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("first line {line:?} is not 'listening on HOST:PORT'"));
    assert_ne!(addr.port(), 0, "{line:?} must give the real port");
    addr
}

/// Starts the example `binary` with `args` and `RUST_LOG=log`, and returns
/// it with the address of its first line (`listening on HOST:PORT`).
pub fn start_example(binary: &Path, args: &[&str], log: &str) -> (Running, SocketAddr) {
    let mut program = Running::spawn(
        Command::new(binary)
            .args(args)
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let line = program.next_line().expect("a first line on stdout");
    let addr = listening_addr(&line);
    (program, addr)
}

/// Stops the program with SIGTERM and returns its stderr, after checking
/// it exited 0.
#[track_caller]
pub fn stop_with_sigterm(mut program: Running) -> String {
    program.signal(libc::SIGTERM);
    let status = program.wait(DEADLINE);
    assert!(status.success(), "{status}");
    program.stderr()
}
