//! Smoke test of the `echo_bench` example against an in-process reactor
//! serving `Echo`: a short ping-pong and a short stream run must complete
//! round trips with no mismatch and no error, and a non-loopback address
//! must be refused before any connection is tried.
//!
//! The binary is built with `cargo build --example echo_bench` into this
//! test's own target directory and profile (a no-op when `cargo test` has
//! already built it), by `common::example::build`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use tcp_reactor::{Config, Echo};

/// The longest a bench run may take (it bounds itself to about a second).
const DEADLINE: Duration = Duration::from_secs(60);

/// The example's path, built once per test binary.
fn echo_bench() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("echo_bench"))
}

/// A program run to its end, killed if it overruns its deadline.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn run(command: &mut Command, deadline: Duration) -> Finished {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Threads read the pipes so a full pipe cannot stall the child.
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let status = wait_or_kill(&mut child, deadline);
        let collect = |output: Receiver<String>| {
            output
                .recv_timeout(DEADLINE)
                .expect("output closed after exit")
        };
        Finished {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        }
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    let mut pipe = pipe.expect("piped");
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = pipe.read_to_string(&mut all);
        let _ = send.send(all);
    });
    receive
}

fn wait_or_kill(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{child:?} did not exit within {deadline:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the bench with `args` and returns its stdout, stderr and status.
fn bench(args: &[&str]) -> Finished {
    Finished::run(Command::new(echo_bench()).args(args), DEADLINE)
}

/// The value of `"key":` in a flat, hand-formatted JSON line.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let tag = format!("\"{key}\":");
    let start = json
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + tag.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

fn number(json: &str, key: &str) -> f64 {
    let text = field(json, key);
    text.parse()
        .unwrap_or_else(|_| panic!("{key} is {text:?}, not a number, in {json}"))
}

/// Runs a load mode against a fresh reactor and checks its JSON report.
fn run_against_echo(args: &[&str]) -> String {
    let server = common::start(Config::default(), Echo);
    let addr = server.addr.to_string();
    let mut all = vec![args[0], "--addr", &addr];
    all.extend(&args[1..]);
    all.push("--json");
    let run = bench(&all);
    drop(server);
    let context = format!(
        "echo_bench {all:?}: {}\nstdout:\n{}\nstderr:\n{}",
        run.status, run.stdout, run.stderr
    );
    assert!(run.status.success(), "{context}");
    let json = run
        .stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line; {context}"))
        .to_string();
    assert!(json.ends_with('}'), "{context}");
    assert!(number(&json, "round_trips") > 0.0, "{context}");
    assert!(number(&json, "bytes") > 0.0, "{context}");
    for key in ["mismatches", "errors", "unanswered"] {
        assert_eq!(field(&json, key), "0", "{key}; {context}");
    }
    json
}

#[test]
fn pingpong_completes_round_trips_with_every_echo_verified() {
    let json = run_against_echo(&[
        "pingpong",
        "--conns",
        "4",
        "--size",
        "64",
        "--depth",
        "2",
        "--duration",
        "0.3",
    ]);
    assert_eq!(field(&json, "mode"), "\"pingpong\"");
    assert_eq!(
        number(&json, "bytes"),
        number(&json, "round_trips") * 64.0,
        "every round trip echoes one 64-byte message: {json}"
    );
    assert!(number(&json, "p50_us") > 0.0, "{json}");
}

#[test]
fn stream_echoes_chunks_with_every_byte_verified() {
    let json = run_against_echo(&[
        "stream",
        "--conns",
        "2",
        "--chunk",
        "65536",
        "--duration",
        "0.3",
    ]);
    assert_eq!(field(&json, "mode"), "\"stream\"");
    assert!(number(&json, "mb_per_s") > 0.0, "{json}");
}

#[test]
fn an_address_that_is_not_loopback_is_refused_before_any_connect() {
    // 0.0.0.0 would reach this machine anyway if it were not refused.
    let run = bench(&["pingpong", "--addr", "0.0.0.0:9", "--duration", "0.1"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("loopback only"), "{}", run.stderr);
    assert_eq!(run.stdout, "", "nothing on stdout");
}
