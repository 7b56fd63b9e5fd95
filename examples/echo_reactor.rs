//! An echo server on the reactor: every byte a client sends comes back.
//!
//! ```text
//! cargo run --release --example echo_reactor -- [--addr HOST:PORT] [--max-conns N]
//!     [--idle-timeout SECS] [--drain-timeout SECS]
//! ```
//!
//! The first line on stdout is `listening on HOST:PORT`, the real bound
//! address (also for port 0); logs go to stderr (`RUST_LOG=debug` for more).
//! SIGINT or SIGTERM stops it gracefully (every connection gets its pending
//! echo, up to the drain timeout) and it exits 0; a second signal stops it
//! at once. On stop it logs one line: the counters and the stop report.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tcp_reactor::{Config, Echo, Reactor, Stats, StopReport};

/// Connections on which nothing has moved for this long are closed, unless
/// `--idle-timeout` says otherwise: without a limit, silent peers could
/// take every slot and keep it.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

const USAGE: &str = "\
usage: echo_reactor [--addr HOST:PORT] [--max-conns N] [--idle-timeout SECS] [--drain-timeout SECS]

Echoes every byte back on the connection it came from. SIGINT or SIGTERM
stops it gracefully (pending echoes are delivered); a second one at once.

  --addr HOST:PORT       address to listen on (default 127.0.0.1:7890; port 0 picks a free port)
  --max-conns N          connections held at once (default: the open-file limit less a reserve)
  --idle-timeout SECS    close connections idle that long (default 300; 0: never)
  --drain-timeout SECS   how long a graceful stop waits for connections to drain (default 5)
  -h, --help             print this help";

struct Args {
    addr: SocketAddr,
    max_conns: Option<usize>,
    /// `None`: never.
    idle_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
}

/// Seconds, fractions allowed, as a positive `Duration`.
fn seconds(flag: &str, text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(format!(
            "{flag}: '{text}' is not a positive number of seconds"
        ))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 7890)),
        max_conns: None,
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        drain_timeout: None,
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let text = value("--addr")?;
                parsed.addr = text.parse().map_err(|_| {
                    format!("--addr: '{text}' is not HOST:PORT (e.g. 127.0.0.1:7890 or [::1]:0)")
                })?;
            }
            "--max-conns" => {
                let text = value("--max-conns")?;
                parsed.max_conns = Some(text.parse().ok().filter(|&n| n > 0).ok_or(format!(
                    "--max-conns: '{text}' is not a positive whole number"
                ))?);
            }
            "--idle-timeout" => {
                let text = value("--idle-timeout")?;
                if text.parse::<f64>() == Ok(0.0) {
                    parsed.idle_timeout = None;
                    continue;
                }
                let idle = seconds(&flag, &text)?;
                // The library's own rule (1 ms to 24 days), reported as a
                // bad flag rather than a failure to start.
                Config::default()
                    .idle_timeout(Some(idle))
                    .validate()
                    .map_err(|e| format!("--idle-timeout: {e}"))?;
                parsed.idle_timeout = Some(idle);
            }
            "--drain-timeout" => {
                parsed.drain_timeout = Some(seconds(&flag, &value("--drain-timeout")?)?);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("echo_reactor: {message}");
            return ExitCode::from(2);
        }
    };
    StderrLogger::install();

    // Serving thousands of clients needs thousands of descriptors: raise the
    // soft open-file limit to the hard one, as Go and nginx do.
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).ok();
    let mut config = Config::default();
    if let Some(n) = args.max_conns {
        config = config.max_connections(n);
    }
    config = config.idle_timeout(args.idle_timeout);
    if let Some(drain) = args.drain_timeout {
        config = config.drain_timeout(drain);
    }
    let max_connections = config.max_connections;

    let mut reactor = match Reactor::bind(args.addr, config, Echo) {
        Ok(reactor) => reactor,
        Err(e) => {
            eprintln!("echo_reactor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first SIGINT or SIGTERM drains, a second one stops at once.
    if let Err(e) = reactor.stop_on_signals() {
        eprintln!("echo_reactor: {e}");
        return ExitCode::FAILURE;
    }
    let mut stdout = std::io::stdout().lock();
    // Scripts and tests wait for this exact line; flush it at once.
    if writeln!(
        stdout,
        "listening on {}",
        reactor.local_addr().expect("a TCP listener")
    )
    .and_then(|()| stdout.flush())
    .is_err()
    {
        return ExitCode::FAILURE;
    }
    match fd_limit {
        Some(limit) => {
            log::info!("up to {max_connections} connections at once (open-file limit {limit})")
        }
        None => log::info!("up to {max_connections} connections at once"),
    }
    match reactor.run() {
        Ok(report) => {
            let stats = reactor.stats();
            log::info!(
                "{} (after {} signal(s))",
                summary(&stats, &report),
                stats.signals
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo_reactor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The one line logged on stop.
fn summary(stats: &Stats, report: &StopReport) -> String {
    format!(
        "stopped: {} accepted, {} closed ({} reset, {} timed out), {} bytes in, {} bytes out; drain: {report}",
        stats.accepted,
        stats.closed,
        stats.resets,
        stats.timed_out,
        stats.bytes_in,
        stats.bytes_out
    )
}

/// The smallest logger that does the job: `LEVEL message` on stderr, level
/// from `RUST_LOG` (error, warn, info, debug, trace; default info).
struct StderrLogger;

impl StderrLogger {
    fn install() {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(log::LevelFilter::Info);
        if log::set_logger(&StderrLogger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("echo_reactor {:5} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}
