//! The alternative to `echo_reactor --threads N`, kept to measure against
//! it: one acceptor thread takes every connection from one listener and
//! hands them, in turn, to N reactors (each on its own thread) through
//! their `Handle`, where `Context::adopt_tcp_stream` serves them.
//!
//! ```text
//! cargo run --release --example acceptor_echo -- [--addr HOST:PORT] [--threads N]
//! ```
//!
//! Prints `listening on HOST:PORT` first; SIGINT or SIGTERM stops every
//! reactor gracefully, then it logs one `stopped:` line in `echo_reactor`'s
//! format, each reactor's accepted connections after the total, and exits
//! 0. (The acceptor thread, blocked in `accept`, ends with the process.)
//! The README's *Scaling* section has the figures and why `ReactorSet`
//! (a listener per reactor) is what the crate ships.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread::JoinHandle;

use tcp_reactor::{
    Addr, Config, ConnId, Context, Echo, Error, Handle, Handler, ListenerId, Reactor, Stats,
    StopReport,
};

const USAGE: &str = "usage: acceptor_echo [--addr HOST:PORT] [--threads N]";

/// `Echo`, plus the streams the acceptor hands over.
struct AdoptingEcho;

impl Handler for AdoptingEcho {
    type Conn = ();
    type Message = TcpStream;

    fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, _: &Addr, _: ListenerId) {}

    #[inline(always)]
    fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, conn: &mut (), data: &[u8]) -> usize {
        Echo.on_data(cx, id, conn, data)
    }

    fn on_message(&mut self, cx: &mut Context<'_>, stream: TcpStream) {
        if let Err(e) = cx.adopt_tcp_stream(stream, ()) {
            eprintln!("acceptor_echo: adopting a connection: {e}");
        }
    }
}

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 7890).into();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = value.parse().map_err(|_| format!("--addr: '{value}'"))?,
            "--threads" => {
                threads = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--threads: '{value}'"))?;
            }
            _ => return Err(format!("unknown argument '{flag}'\n{USAGE}")),
        }
    }
    Ok((addr, threads))
}

type Outcome = Result<(StopReport, Stats), Error>;

/// Starts one reactor with no listener on its own thread; returns its
/// handle and thread.
fn start_reactor() -> Result<(Handle<TcpStream>, JoinHandle<Outcome>), Error> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || -> Outcome {
        let mut reactor = Reactor::new(Config::default(), AdoptingEcho)?;
        reactor.stop_on_signals()?;
        let _ = sender.send(reactor.handle());
        let report = reactor.run()?;
        Ok((report, reactor.stats()))
    });
    match receiver.recv() {
        Ok(handle) => Ok((handle, thread)),
        Err(_) => Err(thread
            .join()
            .map_err(|_| Error::Panicked { reactor: 0 })?
            .err()
            .unwrap_or(Error::Stopped)),
    }
}

fn main() -> ExitCode {
    let (addr, threads) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("acceptor_echo: {message}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("acceptor_echo: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut handles = Vec::new();
    let mut reactors = Vec::new();
    for _ in 0..threads {
        match start_reactor() {
            Ok((handle, thread)) => {
                handles.push(handle);
                reactors.push(thread);
            }
            Err(e) => {
                eprintln!("acceptor_echo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match listener.local_addr() {
        Ok(bound) => println!("listening on {bound}"),
        Err(e) => {
            eprintln!("acceptor_echo: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The acceptor: blocking accepts, round robin. Ends with the process.
    std::thread::spawn(move || {
        let mut next = 0;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if handles[next].send_message(stream).is_err() {
                return; // stopped
            }
            next = (next + 1) % handles.len();
        }
    });
    let mut total = StopReport::default();
    let mut stats = Stats::default();
    let mut each = Vec::new();
    for thread in reactors {
        match thread.join() {
            Ok(Ok((report, reactor_stats))) => {
                total.add(&report);
                stats.add(&reactor_stats);
                each.push(reactor_stats.accepted.to_string());
            }
            Ok(Err(e)) => eprintln!("acceptor_echo: {e}"),
            Err(_) => eprintln!("acceptor_echo: a reactor panicked"),
        }
    }
    eprintln!(
        "acceptor_echo INFO  stopped: {} accepted (per reactor: {}), {} closed, {} bytes in, {} bytes out; drain: {total}",
        stats.accepted,
        each.join(" "),
        stats.closed,
        stats.bytes_in,
        stats.bytes_out
    );
    ExitCode::SUCCESS
}
