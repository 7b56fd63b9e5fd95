//! An example program run by a test: built with [`super::example::build`],
//! spawned with piped stdio, its output read by threads so that every wait
//! on it has a deadline, killed and reaped when dropped.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A running example program.
pub struct Program {
    child: Child,
    stdout: Receiver<Vec<u8>>,
    /// Stdout bytes received and not yet taken.
    pending: Vec<u8>,
    stderr: Option<Receiver<String>>,
}

impl Program {
    /// Runs `binary` with `args`; stdout and stderr piped, stdin as given.
    pub fn spawn(binary: &Path, args: &[&str], stdin: Stdio) -> Program {
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the example");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (chunks, stdout_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buffer = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                if chunks.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let (whole, stderr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            let _ = stderr.read_to_string(&mut all);
            let _ = whole.send(all);
        });
        Program {
            child,
            stdout: stdout_rx,
            pending: Vec::new(),
            stderr: Some(stderr_rx),
        }
    }

    /// Runs a server program with `args` (stdin null) and returns it with
    /// the address of its first line, which must be exactly
    /// `listening on HOST:PORT` with a real port.
    pub fn server(binary: &Path, args: &[&str]) -> (Program, SocketAddr) {
        let mut program = Program::spawn(binary, args, Stdio::null());
        let line = program
            .next_line()
            .expect("a first line on stdout, not EOF");
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("first line {line:?} is not 'listening on HOST:PORT'"));
        assert_ne!(addr.port(), 0, "{line:?} must give the real port");
        (program, addr)
    }

    /// The program's stdin (when spawned with `Stdio::piped()`).
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("stdin is piped")
    }

    /// The program's stdin, to write from another thread (when spawned
    /// with `Stdio::piped()`).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is piped, taken once")
    }

    /// The program's resident memory, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the program's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// Closes the program's stdin: it reads EOF.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the next stdout chunk into `pending`; false at EOF.
    fn receive(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(chunk) => {
                self.pending.extend_from_slice(&chunk);
                true
            }
            Err(RecvTimeoutError::Disconnected) => false,
            Err(RecvTimeoutError::Timeout) => panic!("stdout: nothing new within {DEADLINE:?}"),
        }
    }

    /// The next line on stdout, without its `\n`, waiting at most
    /// [`DEADLINE`]; a last line without `\n` at EOF; `None` at EOF.
    pub fn next_line(&mut self) -> Option<String> {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.receive(until) {
                let rest = std::mem::take(&mut self.pending);
                return (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned());
            }
        }
    }

    /// Exactly `n` more stdout bytes, waiting at most [`DEADLINE`]; fails
    /// at EOF.
    pub fn stdout_bytes(&mut self, n: usize) -> Vec<u8> {
        let until = Instant::now() + DEADLINE;
        while self.pending.len() < n {
            assert!(
                self.receive(until),
                "stdout ended after {} of {n} bytes",
                self.pending.len()
            );
        }
        self.pending.drain(..n).collect()
    }

    /// Every remaining stdout byte, until EOF (bounded by [`DEADLINE`]).
    pub fn rest_of_stdout(&mut self) -> Vec<u8> {
        let until = Instant::now() + DEADLINE;
        while self.receive(until) {}
        std::mem::take(&mut self.pending)
    }

    /// Everything the program wrote to stderr, once it closed it.
    pub fn stderr(&mut self) -> String {
        let stderr = self.stderr.take().expect("stderr is read once");
        stderr
            .recv_timeout(DEADLINE)
            .expect("stderr closed within the deadline")
    }

    /// Waits for the program to exit, failing after [`DEADLINE`].
    pub fn wait(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the program did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends SIGTERM to the program, which must not have been reaped yet.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) only takes integers and touches no memory of this
        // process; the pid is our own child, reaped only by `wait` or drop,
        // so it names no other process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill({pid}): {}", std::io::Error::last_os_error());
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // Already exited is fine; either way reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
