//! An echo server on the reactor: every byte a client sends comes back.
//!
//! ```text
//! cargo run --release --example echo_reactor -- [--addr HOST:PORT]... [--unix PATH]...
//!     [--max-conns N] [--idle-timeout SECS] [--drain-timeout SECS] [--threads N]
//! ```
//!
//! `--threads N` (default 1) runs N reactors on N threads, each with its own
//! listener on the one `--addr` (`SO_REUSEPORT`: the kernel spreads the
//! connections), through `ReactorSet`. The first line is still `listening
//! on HOST:PORT`; a signal stops every reactor; the `stopped:` line adds up
//! every reactor's counters and stop report, and lists each reactor's
//! accepted connections.
//!
//! It listens on every `--addr` (TCP) and every `--unix` (a Unix domain
//! socket at PATH), all served by one loop; each flag may be repeated. With
//! neither flag it listens on 127.0.0.1:7890; with only `--unix`, on no TCP
//! address (the default is not added to what was asked for).
//!
//! Once every listener is up, stdout gets one line per listener: first
//! `listening on HOST:PORT` for each `--addr` in the order given (the real
//! bound address, also for port 0), then `listening on unix:PATH` for each
//! `--unix` in the order given. So with any `--addr` the first line is the
//! first `--addr`'s, wherever the flags stand on the command line, and
//! scripts that read only the first line keep working. A listener that
//! cannot be set up (address in use, a path in a missing directory, a file
//! that is not a socket) stops the program before it prints anything: one
//! line on stderr, exit code 1. Bad flags, and an address or path given
//! twice, exit 2.
//!
//! A Unix socket file left by a server that is gone is replaced; the file
//! this program creates is removed when it exits.
//!
//! Logs go to stderr (`RUST_LOG=debug` for more). SIGINT or SIGTERM stops
//! it gracefully (every connection gets its pending echo, up to the drain
//! timeout) and it exits 0; a second signal stops it at once. On stop it
//! logs one line: the counters and the stop report.

#[path = "common/addr_flag.rs"]
mod addr_flag;
#[path = "common/logger.rs"]
mod logger;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;
use std::time::Duration;

use tcp_reactor::{Addr, Config, Echo, Error, ListenerId, Reactor, ReactorSet, Stats, StopReport};

/// Connections on which nothing has moved for this long are closed, unless
/// `--idle-timeout` says otherwise: without a limit, silent peers could
/// take every slot and keep it.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where it listens when neither `--addr` nor `--unix` is given.
const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7890,
));

const USAGE: &str = "\
usage: echo_reactor [--addr HOST:PORT]... [--unix PATH]... [--max-conns N]
                    [--idle-timeout SECS] [--drain-timeout SECS] [--threads N]

Echoes every byte back on the connection it came from. SIGINT or SIGTERM
stops it gracefully (pending echoes are delivered); a second one at once.

  --addr HOST:PORT       TCP address to listen on; repeat for more (port 0 picks a free port)
  --unix PATH            Unix socket to listen on; repeat for more (a stale socket file
                         there is replaced; the file is removed on exit)
  --max-conns N          connections held at once (default: the open-file limit less a reserve)
  --idle-timeout SECS    close connections idle that long (default 300; 0: never)
  --drain-timeout SECS   how long a graceful stop waits for connections to drain (default 5)
  --threads N            N reactors on N threads, one listener each on the one --addr
                         (SO_REUSEPORT); --max-conns is then per reactor, by
                         default the open-file limit's share (default 1)
  -h, --help             print this help

With neither --addr nor --unix it listens on 127.0.0.1:7890; with only --unix,
on no TCP address. Once every listener is up it prints one line per listener:
'listening on HOST:PORT' for each --addr (the real port for port 0), then
'listening on unix:PATH' for each --unix, each kind in the order given; with
any --addr, the first line is the first --addr's. A listener that cannot be
set up (address in use, bad path) is a message on stderr and exit code 1,
before anything is printed; bad flags, or an address or path given twice,
exit 2.";

struct Args {
    /// TCP listeners, in the order given.
    addrs: Vec<SocketAddr>,
    /// Unix listeners (addresses with a path), in the order given.
    unix: Vec<Addr>,
    max_conns: Option<usize>,
    /// `None`: never.
    idle_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    /// Reactors, each on its own thread.
    threads: usize,
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
        addrs: Vec::new(),
        unix: Vec::new(),
        max_conns: None,
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        drain_timeout: None,
        threads: 1,
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let text = value("--addr")?;
                let addr = addr_flag::parse_addr(&text)?;
                // Port 0 twice is two listeners on two free ports.
                if addr.port() != 0 && parsed.addrs.contains(&addr) {
                    return Err(format!("--addr: '{text}' is given twice"));
                }
                parsed.addrs.push(addr);
            }
            "--unix" => {
                let text = value("--unix")?;
                if text.is_empty() {
                    return Err("--unix: the path is empty".to_string());
                }
                let addr = Addr::unix(&text).map_err(|_| {
                    format!("--unix: '{text}' is too long for a Unix socket address")
                })?;
                if parsed.unix.contains(&addr) {
                    return Err(format!("--unix: '{text}' is given twice"));
                }
                parsed.unix.push(addr);
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
            "--threads" => {
                let text = value("--threads")?;
                parsed.threads =
                    text.parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or(format!(
                            "--threads: '{text}' is not a whole number from 1 to 256"
                        ))?;
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    if parsed.addrs.is_empty() && parsed.unix.is_empty() {
        parsed.addrs.push(DEFAULT_ADDR);
    }
    if parsed.threads > 1 && (parsed.addrs.len() != 1 || !parsed.unix.is_empty()) {
        return Err("--threads above 1 serves exactly one --addr and no --unix".to_string());
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
    logger::StderrLogger::install("echo_reactor");

    // Serving thousands of clients needs thousands of descriptors: raise the
    // soft open-file limit to the hard one, as Go and nginx do.
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).ok();
    let mut config = Config::default();
    if let Some(n) = args.max_conns {
        config = config.max_connections(n);
    }
    if args.threads > 1 && args.max_conns.is_none() {
        // The reactors share the process's descriptors.
        let share = (config.max_connections / args.threads).max(1);
        config = config.max_connections(share);
    }
    config = config.idle_timeout(args.idle_timeout);
    if let Some(drain) = args.drain_timeout {
        config = config.drain_timeout(drain);
    }
    let capacity = match fd_limit {
        Some(limit) => format!(
            "up to {} connections at once (open-file limit {limit})",
            config.max_connections
        ),
        None => format!("up to {} connections at once", config.max_connections),
    };

    if args.threads > 1 {
        return match serve_set(&args, config, &capacity) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("echo_reactor: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let mut reactor = match Reactor::new(config, Echo) {
        Ok(reactor) => reactor,
        Err(e) => {
            eprintln!("echo_reactor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = serve(&mut reactor, &args, &capacity);
    // A stop closes the listeners; on every other way out (a listener that
    // would not bind, a failed run) close them here: dropping the reactor
    // would leave the Unix socket files behind.
    let open: Vec<ListenerId> = reactor.context().listeners().collect();
    for listener in open {
        reactor.context().close_listener(listener);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("echo_reactor: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Listens on every address, says so on stdout, and runs until stopped.
/// `Err` is the message for stderr.
fn serve(reactor: &mut Reactor<Echo>, args: &Args, capacity: &str) -> Result<(), String> {
    // TCP first, then Unix, each in the order given: the first line is
    // the first `--addr`'s, wherever the flags stand.
    let wanted = args.addrs.iter().copied().map(Addr::Tcp);
    let wanted = wanted.chain(args.unix.iter().cloned());
    let mut lines = String::new();
    for addr in wanted {
        let mut cx = reactor.context();
        let id = cx
            .listen(addr.clone())
            .map_err(|e| listen_error(&addr, &e))?;
        let bound = cx
            .listener_addr(id)
            .ok_or_else(|| format!("{addr}: the listener's address is unknown"))?;
        lines.push_str(&listening_line(&bound));
        lines.push('\n');
    }
    // The first SIGINT or SIGTERM drains, a second one stops at once.
    reactor.stop_on_signals().map_err(|e| e.to_string())?;
    // Scripts and tests wait for the first line: all go out at once, only
    // when every listener is up and signals stop the program cleanly.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(stdout);
    log::info!("{capacity}");
    let report = reactor.run().map_err(|e| e.to_string())?;
    let stats = reactor.stats();
    log::info!(
        "{} (after {} signal(s))",
        summary(&stats, &report, &[]),
        stats.signals
    );
    Ok(())
}

/// `--threads N` above 1: N reactors on the one `--addr`, stopped together
/// by a signal. `Err` is the message for stderr.
fn serve_set(args: &Args, config: Config, capacity: &str) -> Result<(), String> {
    let addr = args.addrs[0];
    let set = ReactorSet::builder(args.threads, config)
        .stop_on_signals()
        .bind(addr, |_| Echo)
        .map_err(|e| listen_error(&Addr::Tcp(addr), &e))?;
    let line = listening_line(&Addr::Tcp(set.local_addr()));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(stdout);
    log::info!("{} reactors, each {capacity}", args.threads);
    let stopped = set.join().map_err(|e| e.to_string())?;
    let stats = stopped.stats();
    let accepted_by_each: Vec<u64> = stopped.reactors.iter().map(|r| r.stats.accepted).collect();
    log::info!(
        "{} (after {} signal(s))",
        summary(&stats, &stopped.report(), &accepted_by_each),
        stats.signals
    );
    Ok(())
}

/// `listening on HOST:PORT` for a TCP listener, `listening on unix:PATH`
/// for a Unix one.
fn listening_line(bound: &Addr) -> String {
    match bound {
        Addr::Tcp(addr) => format!("listening on {addr}"),
        Addr::Unix(_) => format!("listening on unix:{bound}"),
    }
}

/// The library's error, and for a Unix path held by a file that is not a
/// socket (which `AddrInUse` alone would not make clear), why.
fn listen_error(addr: &Addr, error: &Error) -> String {
    let mut message = error.to_string();
    if let (Error::Bind { source, .. }, Some(path)) = (error, addr.as_path()) {
        let not_a_socket =
            std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_socket());
        if source.kind() == std::io::ErrorKind::AddrInUse && not_a_socket {
            message.push_str(&format!(
                "; {} is not a socket, and is left alone",
                path.display()
            ));
        }
    }
    message
}

/// The one line logged on stop; with several reactors, each one's accepted
/// connections follow the total (`1000 accepted (per reactor: 503 497)`).
fn summary(stats: &Stats, report: &StopReport, accepted_by_each: &[u64]) -> String {
    let each = if accepted_by_each.len() > 1 {
        let each: Vec<String> = accepted_by_each.iter().map(u64::to_string).collect();
        format!(" (per reactor: {})", each.join(" "))
    } else {
        String::new()
    };
    format!(
        "stopped: {} accepted{each}, {} closed ({} reset, {} timed out), {} bytes in, {} bytes out; drain: {report}",
        stats.accepted,
        stats.closed,
        stats.resets,
        stats.timed_out,
        stats.bytes_in,
        stats.bytes_out
    )
}
