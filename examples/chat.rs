//! A line chat room: each line a client sends goes to every other client,
//! prefixed with the sender's address; joins and leaves are announced.
//!
//! ```text
//! cargo run --release --example chat -- [--addr HOST:PORT]
//! ```
//!
//! The first line on stdout is `listening on HOST:PORT` (default
//! 127.0.0.1:7892; port 0 picks a free one). Lines are cut by
//! [`tcp_reactor::framing::Lines`] (`\n` or `\r\n`), at most
//! [`MAX_LINE`] bytes: a longer one gets an error line back and its
//! sender is closed.
//!
//! A client that does not read is held by backpressure (the reactor stops
//! reading from it while its output is backed up) and, once more than
//! [`DROP_AFTER`] bytes wait for it, dropped with an announcement: it can
//! neither slow the room, whose lines go on to the others, nor grow the
//! server's memory. SIGINT or SIGTERM stops it; on stop it logs one line of
//! counters on stderr.

#[path = "common/logger.rs"]
mod logger;
#[path = "common/serve.rs"]
mod serve;

use std::net::SocketAddr;
use std::process::ExitCode;

use logger::StderrLogger;
use tcp_reactor::framing::Lines;
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId, Reactor};

/// The longest line a client may send, in bytes.
const MAX_LINE: usize = 4096;

/// Output waiting for one client past which it is dropped: the room's
/// lines are not held back for a client that does not read, and this is
/// the most memory one costs.
const DROP_AFTER: usize = 256 * 1024;

const DEFAULT_ADDR: &str = "127.0.0.1:7892";

const USAGE: &str = "\
usage: chat [--addr HOST:PORT]

A line chat room: each line a client sends goes to every other client as
'HOST:PORT: line'; joins and leaves are announced ('* HOST:PORT joined').
A line over 4096 bytes gets an error and closes its sender; a client with
more than 256 KiB waiting for it (it does not read) is dropped.

  --addr HOST:PORT   address to listen on (default 127.0.0.1:7892; port 0 picks one)
  -h, --help         print this help

The first line on stdout is 'listening on HOST:PORT'. SIGINT or SIGTERM
stops it. Bad flags exit 2; a listener that cannot be set up exits 1.";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut addr = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let text = args.next().ok_or("--addr needs a value")?;
                addr = Some(text.parse().map_err(|_| {
                    format!("--addr: '{text}' is not HOST:PORT (e.g. 127.0.0.1:7892)")
                })?);
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    match addr {
        Some(addr) => Ok(Some(addr)),
        None => DEFAULT_ADDR
            .parse()
            .map(Some)
            .map_err(|_| "the default address does not parse".to_string()),
    }
}

/// A client in the room.
struct Member {
    /// Its address, which prefixes its lines.
    name: String,
    /// Dropped for not reading: announced as such, not as leaving.
    dropped: bool,
}

/// The room: every connection is a member.
struct Chat {
    lines: Lines,
    /// Clients dropped for not reading.
    dropped: u64,
}

impl Chat {
    /// Sends `text` to every member but the one the current callback is
    /// about (`current`, the sender); drops each member with more than
    /// [`DROP_AFTER`] bytes waiting for it, and announces that to everyone
    /// left, `current` included.
    fn broadcast(&mut self, cx: &mut Context<'_, Member>, text: &[u8], current: Option<ConnId>) {
        let mut dropped = Vec::new();
        cx.for_each_conn(|cx, id, member| {
            if member.dropped {
                return;
            }
            if cx.pending_output(id) + text.len() > DROP_AFTER {
                // Cut at once: a close would hold its queue until flushed.
                member.dropped = true;
                cx.abort(id);
                dropped.push(member.name.clone());
            } else {
                // Refused only for a member already closing: nothing to do.
                let _ = cx.send(id, text);
            }
        });
        for name in dropped {
            self.dropped += 1;
            log::info!("{name} dropped (not reading)");
            let notice = format!("* {name} dropped (not reading)\n");
            if let Some(id) = current {
                let _ = cx.send(id, notice.as_bytes());
            }
            self.broadcast(cx, notice.as_bytes(), current);
        }
    }
}

impl Handler for Chat {
    type Conn = Member;
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Member>,
        _id: ConnId,
        peer: &Addr,
        _: ListenerId,
    ) -> Member {
        let name = peer.to_string();
        // The newcomer has no state yet, so the broadcast skips it.
        self.broadcast(cx, format!("* {name} joined\n").as_bytes(), None);
        Member {
            name,
            dropped: false,
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Member>,
        id: ConnId,
        member: &mut Member,
        data: &[u8],
    ) -> usize {
        let mut frames = self.lines.frames(data);
        let mut text = Vec::new();
        for frame in frames.by_ref() {
            match frame {
                Ok(line) => {
                    text.clear();
                    text.extend_from_slice(member.name.as_bytes());
                    text.extend_from_slice(b": ");
                    // The line fits: it was decoded under the same maximum.
                    let _ = self.lines.encode(line, &mut text);
                    self.broadcast(cx, &text, Some(id));
                }
                Err(error) => {
                    log::info!("{}: {error}; closing", member.name);
                    let _ = cx.send(id, format!("* error: {error}; closing\n").as_bytes());
                    cx.close(id);
                    return data.len();
                }
            }
        }
        // A partial line waits in the reactor's buffer for its end.
        frames.consumed()
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Member>,
        _id: ConnId,
        member: Member,
        reason: CloseReason,
    ) {
        log::debug!("{}: {reason}", member.name);
        if !member.dropped {
            self.broadcast(cx, format!("* {} left\n", member.name).as_bytes(), None);
        }
    }
}

fn main() -> ExitCode {
    let addr = match serve::args_or_exit("chat", USAGE, parse_args(std::env::args().skip(1))) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    StderrLogger::install("chat");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let chat = Chat {
        lines: Lines::new(MAX_LINE),
        dropped: 0,
    };
    let mut reactor = match Reactor::new(Config::default(), chat) {
        Ok(reactor) => reactor,
        Err(e) => {
            eprintln!("chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve(&mut reactor, addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("chat: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Listens, says so on stdout, and runs until stopped. `Err` is the
/// message for stderr.
fn serve(reactor: &mut Reactor<Chat>, addr: SocketAddr) -> Result<(), String> {
    let report = serve::listen_and_run(reactor, addr)?;
    let s = reactor.stats();
    log::info!(
        "stopped: {} accepted, {} dropped for not reading, {} bytes in, {} bytes out, \
         {} bytes at most queued for one connection; drain: {report}",
        s.accepted,
        reactor.handler().dropped,
        s.bytes_in,
        s.bytes_out,
        s.peak_queued_output
    );
    Ok(())
}
