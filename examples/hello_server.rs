//! The tutorial's one-shot server, on the reactor: each client gets
//! `Hello World` and is closed.
//!
//! ```text
//! cargo run --release --example hello_server -- [--addr HOST:PORT]
//! ```
//!
//! For each client it reads one message (the first bytes that arrive, at
//! most 1024: the tutorial's `recv(1024)`), prints `PEER: TEXT` on stdout
//! (the text as lossy UTF-8, a trailing newline trimmed), replies
//! `Hello World` and closes once the reply is flushed. Clients are served
//! at once, not one after another. A client that half-closes without a
//! word gets `PEER: ` (an empty message, as `recv` returning `b''`) and its
//! reply too.
//!
//! The first stdout line is `listening on HOST:PORT` (the real port for
//! port 0); default address 127.0.0.1:7890. Bad flags exit 2; an address
//! that cannot be bound exits 1. Logs go to stderr (`RUST_LOG=debug` for
//! more). SIGINT or SIGTERM stops it gracefully and it exits 0; a second
//! signal stops it at once.

#[path = "common/addr_flag.rs"]
mod addr_flag;
#[path = "common/logger.rs"]
mod logger;
#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId, Reactor};

/// The tutorial's `recv(1024)`: the most of a message that is read.
const MESSAGE_MAX: usize = 1024;

/// The reply every client gets.
const REPLY: &[u8] = b"Hello World";

/// Clients that connect and say nothing are closed after this long: a
/// one-shot server should not hold a slot for ever for a silent peer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7890));

const USAGE: &str = "\
usage: hello_server [--addr HOST:PORT]

Reads one message from each client (at most 1024 bytes), prints
'PEER: TEXT' on stdout, replies 'Hello World' and closes. Many clients at
once. SIGINT or SIGTERM stops it gracefully; a second one at once.

  --addr HOST:PORT   address to listen on (default 127.0.0.1:7890; port 0 picks a free port)
  -h, --help         print this help

The first line on stdout is 'listening on HOST:PORT'. Bad flags exit 2; an
address that cannot be bound exits 1.";

/// The handler: one message in, one line out, one reply back.
struct Hello;

/// What the server keeps per client.
struct Client {
    /// Who it is, as printed.
    peer: String,
    /// Whether its message has been answered (later bytes are not read).
    answered: bool,
}

impl Hello {
    /// Prints `PEER: TEXT`, replies and closes: the whole protocol.
    fn answer(cx: &mut Context<'_, Client>, id: ConnId, client: &mut Client, message: &[u8]) {
        client.answered = true;
        let text = String::from_utf8_lossy(message);
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        let mut stdout = std::io::stdout().lock();
        // One line per client, flushed at once: a reader of the pipe sees
        // each as it happens.
        if let Err(e) = writeln!(stdout, "{}: {text}", client.peer).and_then(|()| stdout.flush()) {
            log::error!("writing to stdout: {e}");
        }
        if let Err(e) = cx.send(id, REPLY) {
            log::debug!("{}: reply not sent: {e}", client.peer);
        }
        // Graceful: the reply is flushed before the FIN.
        cx.close(id);
    }
}

impl Handler for Hello {
    type Conn = Client;
    type Message = ();

    fn on_open(
        &mut self,
        _: &mut Context<'_, Client>,
        _: ConnId,
        peer: &Addr,
        _: ListenerId,
    ) -> Client {
        Client {
            peer: peer.to_string(),
            answered: false,
        }
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Client>,
        id: ConnId,
        client: &mut Client,
        data: &[u8],
    ) -> usize {
        if !client.answered {
            Hello::answer(cx, id, client, &data[..data.len().min(MESSAGE_MAX)]);
        }
        data.len()
    }

    fn on_eof(&mut self, cx: &mut Context<'_, Client>, id: ConnId, client: &mut Client) {
        if client.answered {
            cx.close(id);
        } else {
            Hello::answer(cx, id, client, b"");
        }
    }
}

fn main() -> ExitCode {
    let parsed = addr_flag::addr_only(std::env::args().skip(1), DEFAULT_ADDR);
    let addr = match serve::args_or_exit("hello_server", USAGE, parsed) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    logger::StderrLogger::install("hello_server");
    // Many clients at once need descriptors: raise the soft open-file limit
    // to the hard one, as echo_reactor does.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hello_server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Listens, says so on stdout, and runs until stopped. `Err` is the
/// message for stderr.
fn serve(addr: SocketAddr) -> Result<(), String> {
    let config = Config::default().idle_timeout(Some(IDLE_TIMEOUT));
    let mut reactor = Reactor::new(config, Hello).map_err(|e| e.to_string())?;
    let report = serve::listen_and_run(&mut reactor, addr)?;
    let stats = reactor.stats();
    log::info!(
        "stopped: {} clients served, {} reset; drain: {report}",
        stats.accepted,
        stats.resets
    );
    Ok(())
}
