//! The tutorial's client grown up: a line client on the reactor, as an
//! outbound connection.
//!
//! ```text
//! cargo run --release --example client -- [--addr HOST:PORT]
//! ```
//!
//! It connects to HOST:PORT (default 127.0.0.1:7890), sends what is typed
//! on stdin, and prints every reply as it arrives, also while you type.
//! When stdin ends it half-closes (shuts down its sending side), prints
//! every reply still coming, and exits 0 when the server closes. Works
//! against `echo_reactor`, `hello_server`, `nc -l` and any line server.
//!
//! Stdin is one of the loop's own sources when it can be polled (a
//! terminal, a pipe, a socket): set non-blocking and registered with
//! [`mio::unix::SourceFd`]. A regular file (`client < file`) cannot be
//! polled; then a thread reads it and hands each chunk to the loop through
//! the reactor's [`Handle`], waiting until the connection has taken it. In
//! both cases reading stdin pauses while the output to the server is
//! backed up, so a server that does not read holds the client's memory to
//! the reactor's high water mark.
//!
//! Exit codes: 0 when the server closed (or a signal stopped the client);
//! 1 when the connect failed (one line on stderr, e.g. `client: connect
//! 127.0.0.1:7890: connection refused`), the connection was reset, or
//! stdout could not be written; 2 for bad flags. SIGINT or SIGTERM close
//! the connection gracefully; a second one at once.

#[path = "common/addr_flag.rs"]
mod addr_flag;
#[path = "common/logger.rs"]
mod logger;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, SyncSender};

use mio::Interest;
use mio::unix::SourceFd;
use mio::unix::pipe;
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Handle, Handler, ListenerId, Reactor, SourceId,
};

const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7890));

/// The most read from stdin at once.
const CHUNK: usize = 64 * 1024;

const USAGE: &str = "\
usage: client [--addr HOST:PORT]

Connects to HOST:PORT, sends what is typed on stdin and prints every reply
as it arrives. When stdin ends it half-closes, prints the replies still
coming, and exits 0 when the server closes.

  --addr HOST:PORT   server to connect to (default 127.0.0.1:7890)
  -h, --help         print this help

A failed connect is one line on stderr and exit code 1; bad flags exit 2.";

/// What the stdin thread hands the loop (when stdin cannot be polled).
enum Input {
    Chunk(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Where stdin's bytes come from.
enum Stdin {
    /// Not read yet: the connection is not established.
    Waiting,
    /// Polled by the loop (a terminal, a pipe, a socket).
    Polled {
        stdin: pipe::Receiver,
        source: SourceId,
    },
    /// Read by a thread, for a regular file; the thread reads its next
    /// chunk once it gets a credit.
    Thread { credit: SyncSender<()> },
    /// Ended (or never to be read again).
    Done,
}

struct Client {
    server: SocketAddr,
    /// The connection to the server, once `connect` returned it.
    conn: Option<ConnId>,
    stdin: Stdin,
    /// The reactor's handle, for the stdin thread.
    handle: Option<Handle<Input>>,
    buffer: Vec<u8>,
    /// Whether something went wrong: the exit code is 1.
    failed: bool,
    /// The reactor's write high water mark: see [`Client::output_full`].
    high_water: usize,
}

impl Client {
    /// Starts reading stdin: polled if it can be, else on a thread.
    fn start_stdin(&mut self, cx: &mut Context<'_>) {
        // A duplicate of fd 0: the same open file, owned here, so it can be
        // read without `unsafe` and is closed on drop (fd 0 stays open).
        let polled = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map(pipe::Receiver::from);
        if let Ok(stdin) = polled {
            let fd = stdin.as_raw_fd();
            match cx.register(&mut SourceFd(&fd), Interest::READABLE) {
                Ok(source) => match stdin.set_nonblocking(true) {
                    Ok(()) => {
                        self.stdin = Stdin::Polled { stdin, source };
                        self.pump_stdin(cx);
                        return;
                    }
                    Err(e) => {
                        log::debug!("stdin cannot be made non-blocking ({e}): read on a thread");
                        let _ = cx.deregister(source, &mut SourceFd(&fd));
                    }
                },
                // EPERM: a regular file, which epoll refuses.
                Err(e) => log::debug!("stdin cannot be polled ({e}): read on a thread"),
            }
        }
        self.start_stdin_thread();
    }

    fn start_stdin_thread(&mut self) {
        let Some(handle) = self.handle.clone() else {
            self.stdin = Stdin::Done;
            return;
        };
        // One credit at a time: at most one chunk is in flight.
        let (credit, credits) = mpsc::sync_channel(1);
        std::thread::spawn(move || read_stdin_on_thread(&handle, &credits));
        self.stdin = Stdin::Thread { credit };
    }

    /// Reads polled stdin until it would block, or the output to the server
    /// backs up (`on_drain` calls again), or it ends.
    fn pump_stdin(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = self.conn else { return };
        let Stdin::Polled { stdin, .. } = &mut self.stdin else {
            return;
        };
        self.buffer.resize(CHUNK, 0);
        let ended = loop {
            if cx.pending_output(conn) >= self.high_water {
                break false; // see output_full
            }
            match stdin.read(&mut self.buffer) {
                Ok(0) => break true,
                Ok(n) => {
                    let _ = cx.send(conn, &self.buffer[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("reading stdin: {e}");
                    break true;
                }
            }
        };
        if ended {
            self.end_of_stdin(cx);
        }
    }

    /// Stdin ended: no more reading, and the server gets our FIN.
    fn end_of_stdin(&mut self, cx: &mut Context<'_>) {
        if let Stdin::Polled { stdin, source } = std::mem::replace(&mut self.stdin, Stdin::Done) {
            let _ = cx.deregister(source, &mut SourceFd(&stdin.as_raw_fd()));
            // Leave the terminal or pipe blocking, as shells expect it.
            let _ = stdin.set_nonblocking(false);
        }
        if let Some(conn) = self.conn {
            cx.shutdown_write(conn);
        }
    }

    /// Whether to stop taking stdin until `on_drain`: the queued output is
    /// at the high water mark. Not `output_backed_up` (above the low water
    /// mark): `on_drain` comes only after the queue reached the high water
    /// mark, so a producer that stopped below it would never be called
    /// back. The queue stays under the mark plus one chunk.
    fn output_full(&self, cx: &Context<'_>, conn: ConnId) -> bool {
        cx.pending_output(conn) >= self.high_water
    }

    /// Lets the stdin thread read its next chunk.
    fn give_credit(&self) {
        if let Stdin::Thread { credit } = &self.stdin {
            let _ = credit.try_send(());
        }
    }
}

/// Reads stdin (blocking) and hands it to the loop, one chunk per credit.
fn read_stdin_on_thread(handle: &Handle<Input>, credits: &Receiver<()>) {
    let mut stdin = io::stdin().lock();
    let mut buffer = vec![0; CHUNK];
    loop {
        let input = match stdin.read(&mut buffer) {
            Ok(0) => Input::End,
            Ok(n) => Input::Chunk(buffer[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Input::Failed(e),
        };
        let more = matches!(input, Input::Chunk(_));
        // Refused once the reactor stopped: nothing left to do.
        if handle.send_message(input).is_err() || !more || credits.recv().is_err() {
            return;
        }
    }
}

impl Handler for Client {
    type Conn = ();
    type Message = Input;

    // Only outbound connections here: no listener.
    fn on_open(&mut self, cx: &mut Context<'_>, id: ConnId, _: &Addr, _: ListenerId) {
        cx.abort(id);
    }

    fn on_connect(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut ()) {
        self.start_stdin(cx);
    }

    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
        let mut stdout = io::stdout().lock();
        if let Err(e) = stdout.write_all(data).and_then(|()| stdout.flush()) {
            eprintln!("client: writing to stdout: {e}");
            self.failed = true;
            cx.abort(id);
        }
        data.len()
    }

    fn on_drain(&mut self, cx: &mut Context<'_>, _: ConnId, _: &mut ()) {
        self.pump_stdin(cx);
        self.give_credit();
    }

    fn on_source(&mut self, cx: &mut Context<'_>, _: SourceId, _: &mio::event::Event) {
        self.pump_stdin(cx);
    }

    fn on_message(&mut self, cx: &mut Context<'_>, input: Input) {
        let Some(conn) = self.conn else { return };
        match input {
            Input::Chunk(bytes) => {
                let _ = cx.send(conn, &bytes);
                // Backed up: the credit waits for on_drain.
                if !self.output_full(cx, conn) {
                    self.give_credit();
                }
            }
            Input::End => self.end_of_stdin(cx),
            Input::Failed(e) => {
                log::warn!("reading stdin: {e}");
                self.end_of_stdin(cx);
            }
        }
    }

    fn on_close(&mut self, cx: &mut Context<'_>, _: ConnId, _: (), reason: CloseReason) {
        let server = self.server;
        match reason {
            CloseReason::PeerClosed | CloseReason::Local | CloseReason::Stopped => {}
            CloseReason::ConnectFailed(e) => {
                eprintln!("client: connect {server}: {e}");
                self.failed = true;
            }
            CloseReason::Aborted => self.failed = true, // said why already
            other => {
                eprintln!("client: {server}: {other}");
                self.failed = true;
            }
        }
        self.conn = None;
        self.end_of_stdin(cx);
        cx.stop();
    }
}

fn main() -> ExitCode {
    let server = match addr_flag::addr_only(std::env::args().skip(1), DEFAULT_ADDR) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("client: {message}");
            return ExitCode::from(2);
        }
    };
    logger::StderrLogger::install("client");
    match run(server) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Connects and runs until the connection is over: `Ok(true)` if it went
/// well. `Err` is the message for stderr.
fn run(server: SocketAddr) -> Result<bool, String> {
    let config = Config::default();
    let client = Client {
        server,
        conn: None,
        stdin: Stdin::Waiting,
        handle: None,
        buffer: Vec::new(),
        failed: false,
        high_water: config.write_high_water,
    };
    let mut reactor = Reactor::new(config, client).map_err(|e| e.to_string())?;
    let handle = reactor.handle();
    reactor.handler_mut().handle = Some(handle);
    let conn = reactor
        .context()
        .connect(server, ())
        .map_err(|e| format!("connect {server}: {e}"))?;
    reactor.handler_mut().conn = Some(conn);
    reactor.stop_on_signals().map_err(|e| e.to_string())?;
    reactor.run().map_err(|e| e.to_string())?;
    Ok(!reactor.handler().failed)
}
