//! A TCP forwarder: every connection accepted on `--listen` is paired with
//! an outbound connection to `--to`, and bytes flow both ways.
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:7891 --to 127.0.0.1:7890
//! ```
//!
//! The first line on stdout is `listening on HOST:PORT` (the real port for
//! port 0). Logs go to stderr (`RUST_LOG=debug` for more). SIGINT or
//! SIGTERM stops it gracefully; on stop it logs one line of counters.
//!
//! - **Both directions, half-close passed through.** The peer's FIN on one
//!   side becomes a `shutdown_write` on the other, sent once what was read
//!   before it has been flushed; the other direction keeps flowing.
//! - **Backpressure across the pair.** A side whose queued output reaches
//!   the write high water mark pauses reading on the other side; its
//!   `on_drain` resumes it. So each direction holds at most the high water
//!   mark plus one read in user space, whatever the peers do.
//! - **A failed connect** to the backend closes the client connection, with
//!   one log line. A close or reset of one side closes the other, after
//!   flushing what was already read from the first.

use std::net::SocketAddr;
use std::process::ExitCode;

#[path = "common/logger.rs"]
mod logger;
#[path = "common/serve.rs"]
mod serve;

use logger::StderrLogger;
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId, Reactor};

const USAGE: &str = "\
usage: proxy --listen HOST:PORT --to HOST:PORT

Forwards every TCP connection accepted on --listen to --to, both ways, with
half-close passed through and backpressure across each pair. SIGINT or
SIGTERM stops it gracefully; a second one at once.

  --listen HOST:PORT   address to listen on (port 0 picks a free port)
  --to HOST:PORT       the backend each connection is forwarded to
  -h, --help           print this help

The first line on stdout is 'listening on HOST:PORT'. Bad flags exit 2; a
listener that cannot be set up exits 1.";

struct Args {
    listen: SocketAddr,
    to: SocketAddr,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut listen, mut to) = (None, None);
    while let Some(flag) = args.next() {
        let mut address = |name: &str| -> Result<SocketAddr, String> {
            let text = args.next().ok_or(format!("{name} needs a value"))?;
            text.parse()
                .map_err(|_| format!("{name}: '{text}' is not HOST:PORT (e.g. 127.0.0.1:7890)"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = Some(address("--listen")?),
            "--to" => to = Some(address("--to")?),
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    match (listen, to) {
        (Some(listen), Some(to)) => Ok(Some(Args { listen, to })),
        (None, _) => Err("--listen HOST:PORT is required (try --help)".to_string()),
        (_, None) => Err("--to HOST:PORT is required (try --help)".to_string()),
    }
}

/// One side of a pair, as its state in the reactor.
struct Side {
    /// The other side; `None` when the outbound connection could not even
    /// be started (this side is then closing).
    peer: Option<ConnId>,
    /// Who this side is, for log lines: the client's address on the
    /// accepted side, the backend's on the outbound one.
    name: Addr,
}

/// Pairs each accepted connection with an outbound one to `backend`.
struct Proxy {
    backend: SocketAddr,
    /// Queued output at which a side pauses reading from its peer: the
    /// write high water mark, where the reactor also promises `on_drain`.
    high_water: usize,
    /// Times a side paused reading for its peer's output.
    pauses: u64,
}

impl Handler for Proxy {
    type Conn = Side;
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Side>,
        id: ConnId,
        peer: &Addr,
        _: ListenerId,
    ) -> Side {
        let outbound = Side {
            peer: Some(id),
            name: Addr::Tcp(self.backend),
        };
        // The id comes at once, before the connect is done: what the
        // client sends meanwhile is queued on it.
        match cx.connect(self.backend, outbound) {
            Ok(backend) => Side {
                peer: Some(backend),
                name: peer.clone(),
            },
            Err(e) => {
                log::warn!("{peer}: cannot connect to {}: {e}", self.backend);
                cx.close(id);
                Side {
                    peer: None,
                    name: peer.clone(),
                }
            }
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Side>,
        id: ConnId,
        side: &mut Side,
        data: &[u8],
    ) -> usize {
        let Some(peer) = side.peer else {
            return data.len();
        };
        if cx.send(peer, data).is_err() {
            // The peer is closing or gone: its `on_close` closes this side.
            cx.close(id);
            return data.len();
        }
        // Past the high water mark the peer's `on_drain` is sure to come,
        // and resumes this side; until then the kernel holds what this
        // side's peer sends, and TCP slows it down.
        if cx.pending_output(peer) >= self.high_water {
            log::trace!("{}: paused for {peer}", side.name);
            self.pauses += 1;
            cx.pause_read(id);
        }
        data.len()
    }

    fn on_drain(&mut self, cx: &mut Context<'_, Side>, _id: ConnId, side: &mut Side) {
        if let Some(peer) = side.peer {
            cx.resume_read(peer);
        }
    }

    fn on_eof(&mut self, cx: &mut Context<'_, Side>, id: ConnId, side: &mut Side) {
        match side.peer {
            // FIN passed on once what came before it is flushed; the other
            // direction goes on until the peer's own FIN.
            Some(peer) => cx.shutdown_write(peer),
            None => cx.close(id),
        }
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Side>,
        _id: ConnId,
        side: Side,
        reason: CloseReason,
    ) {
        let Some(peer) = side.peer else {
            return;
        };
        if let CloseReason::ConnectFailed(e) = &reason {
            // This is the outbound side: its peer is the client.
            let client = cx
                .conn(peer)
                .map_or("a client".to_string(), |c| c.name.to_string());
            log::warn!("{client}: cannot connect to {}: {e}; closing", side.name);
        } else {
            log::debug!("{}: {reason}", side.name);
        }
        // After flushing what this side sent it.
        cx.close(peer);
    }
}

fn main() -> ExitCode {
    let args = match serve::args_or_exit("proxy", USAGE, parse_args(std::env::args().skip(1))) {
        Ok(args) => args,
        Err(code) => return code,
    };
    StderrLogger::install("proxy");
    // Each client costs two descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Reading from a side never stops for that side's own output: it goes
    // to the other side, whose output pauses it instead (see `on_data`).
    // Stopping both ways would deadlock a backend that writes before it
    // reads: the proxy would not read its answer until it read the request.
    let config = Config::default().output_pauses_reading(false);
    let proxy = Proxy {
        backend: args.to,
        high_water: config.write_high_water,
        pauses: 0,
    };
    let mut reactor = match Reactor::new(config, proxy) {
        Ok(reactor) => reactor,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(&mut reactor, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Listens, says so on stdout, and runs until stopped. `Err` is the
/// message for stderr.
fn serve(reactor: &mut Reactor<Proxy>, args: &Args) -> Result<(), String> {
    log::info!("forwarding each connection to {}", args.to);
    let report = serve::listen_and_run(reactor, args.listen)?;
    let s = reactor.stats();
    // Tests read the peak: it shows what one connection ever held.
    log::info!(
        "stopped: {} accepted, {} connected, {} connect failures, {} bytes in, {} bytes out, \
         {} pauses for a peer's output, {} bytes at most queued for one connection; drain: {report}",
        s.accepted,
        s.connected,
        s.connect_failures,
        s.bytes_in,
        s.bytes_out,
        reactor.handler().pauses,
        s.peak_queued_output
    );
    Ok(())
}
