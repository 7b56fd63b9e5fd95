//! A Redis-protocol (RESP2) key-value server on the reactor.
//!
//! ```text
//! cargo run --release --example kv -- [--addr HOST:PORT]
//! ```
//!
//! It listens on `--addr` (default 127.0.0.1:6380, beside Redis's 6379)
//! and prints `listening on HOST:PORT` (the real port for port 0) as its
//! first stdout line. `redis-cli -p 6380` and `redis-benchmark -p 6380`
//! work against it, and so does `nc` (inline commands).
//!
//! Commands: PING, ECHO, SET (EX, PX, NX, XX, KEEPTTL, GET), GET, DEL,
//! EXISTS, INCR, DECR, INCRBY, DECRBY, MGET, MSET, EXPIRE and PEXPIRE (NX,
//! XX, GT, LT), TTL, PTTL, DBSIZE, INFO (a few fields), SELECT 0, QUIT, `CONFIG GET` (what
//! `redis-benchmark` asks: `save`, `appendonly`) and `COMMAND` (what
//! `redis-cli` asks on start: no docs). Replies and errors are worded as
//! Redis 7 words them. Requests may be pipelined.
//!
//! Limits (Redis's are larger: 512 MB per argument, 1M arguments, a 1 GB
//! query buffer): an argument of at most 1 MiB, at most 65,536 arguments
//! per request, an inline line of at most 64 KiB (as Redis), a request of
//! at most 4 MiB (past it the connection is closed without a reply, as
//! Redis does past its query buffer limit), a reply of at most 16 MiB
//! (an MGET past it closes the connection). A request that breaks the
//! protocol is answered `-ERR Protocol error: ...` and the connection
//! closed once the replies before it are flushed; the others carry on.
//!
//! A client that pipelines requests and does not read its replies is held
//! by backpressure: once its replies back up, `kv` stops reading its
//! requests, so it costs a bounded amount of memory (about 64 KiB of
//! queued replies), and gets every reply once it reads.
//!
//! Keys with an expiry are removed when a command finds them expired, and
//! by a sweep every 100 ms (bounded work per sweep, as Redis's
//! `activeExpireCycle`), armed only while some key has an expiry: an idle
//! `kv` with no such key never wakes up. SIGINT or SIGTERM stops it
//! gracefully (replies owed are flushed); there is no persistence.

#[path = "../common/addr_flag.rs"]
mod addr_flag;
mod commands;
#[path = "../common/logger.rs"]
mod logger;
mod reply;
mod resp;
#[path = "../common/serve.rs"]
mod serve;
mod store;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId, Reactor, TimerId,
};

use commands::After;
use resp::{Parsed, Parser, ProtocolError, Resume};
use store::Store;

/// Where it listens without `--addr`: Redis's port plus one, so it can
/// run beside a Redis.
const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    6380,
));

/// Unconsumed input one connection may hold: a whole request must fit
/// (an argument is at most `resp::MAX_BULK_LEN`, 1 MiB), with room for
/// the pipeline behind it.
const MAX_INPUT: usize = 4 * 1024 * 1024;

/// Replies are gathered in one buffer and handed to the reactor in one
/// `send` (one `write`) per batch of pipelined requests, as Redis writes
/// a client's replies once per loop turn; past this many bytes they are
/// sent and backpressure is looked at before the next request.
const FLUSH_AT: usize = 16 * 1024;

/// A reply buffer grown past this (by a large MGET) is let go of after
/// use rather than kept.
const KEEP_REPLY_CAPACITY: usize = 1024 * 1024;

/// How often expired keys nobody reads are swept (Redis's `hz 10`).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The most time one sweep may take (Redis allows 25 % of its 100 ms
/// period; a millisecond keeps other clients' latency low).
const SWEEP_BUDGET: Duration = Duration::from_millis(1);

const USAGE: &str = "\
usage: kv [--addr HOST:PORT]

A Redis-protocol (RESP2) key-value server, in memory, on one thread.
Try it with redis-cli -p PORT, redis-benchmark -p PORT, or nc (inline
commands). SIGINT or SIGTERM stops it gracefully.

  --addr HOST:PORT   address to listen on (default 127.0.0.1:6380; port 0 picks a free port)
  -h, --help         print this help

Once listening it prints 'listening on HOST:PORT' (the real address).";

/// The server: the key space and the buffers every connection shares
/// (one request is served at a time, so one of each is enough).
struct Kv {
    store: Store,
    /// The last request's arguments.
    parser: Parser,
    /// Replies not yet handed to the reactor.
    replies: Vec<u8>,
    /// The expiry sweep, armed while some key has an expiry.
    sweep: Option<TimerId>,
}

/// One connection's state: where its unfinished request was left.
#[derive(Debug, Default)]
struct Client {
    resume: Resume,
}

impl Kv {
    /// Hands the gathered replies to the reactor. Returns `false` when the
    /// connection cannot take them (closed, or cut at the output limit).
    fn flush(&mut self, cx: &mut Context<'_, Client>, id: ConnId) -> bool {
        if self.replies.is_empty() {
            return true;
        }
        let sent = cx.send(id, &self.replies).is_ok();
        self.replies.clear();
        if self.replies.capacity() > KEEP_REPLY_CAPACITY {
            self.replies = Vec::with_capacity(2 * FLUSH_AT);
        }
        sent
    }

    /// Arms the expiry sweep if a key has an expiry and it is not armed.
    fn arm_sweep(&mut self, cx: &mut Context<'_, Client>) {
        if self.sweep.is_none() && self.store.volatile_keys() > 0 {
            self.sweep = Some(cx.set_interval(SWEEP_EVERY, 0));
        }
    }

    /// Answers a protocol error and closes the connection once the
    /// replies before it are flushed, as Redis does.
    fn protocol_error(&mut self, cx: &mut Context<'_, Client>, id: ConnId, error: ProtocolError) {
        log::debug!("{id}: protocol error: {error}");
        let message = format!("ERR Protocol error: {error}");
        reply::error(&mut self.replies, message.as_bytes());
        self.flush(cx, id);
        cx.close(id);
    }
}

impl Handler for Kv {
    type Conn = Client;
    type Message = ();

    fn on_open(
        &mut self,
        _: &mut Context<'_, Client>,
        _: ConnId,
        _: &Addr,
        _: ListenerId,
    ) -> Client {
        Client::default()
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Client>,
        id: ConnId,
        client: &mut Client,
        data: &[u8],
    ) -> usize {
        // Output backed up: take nothing now; the reactor offers the
        // input again once the output has drained (crate docs, "Output
        // flow").
        if cx.output_backed_up(id) {
            return 0;
        }
        let mut used = 0;
        while used < data.len() {
            if self.replies.len() >= FLUSH_AT {
                if !self.flush(cx, id) {
                    return data.len();
                }
                if cx.output_backed_up(id) {
                    break;
                }
            }
            let input = &data[used..];
            match self.parser.parse(input, &mut client.resume) {
                Ok(Parsed::Request { len }) => {
                    used += len;
                    let args = self.parser.args(input);
                    let stats = || cx.stats();
                    match commands::execute(&mut self.store, args, &mut self.replies, stats) {
                        After::Continue => {}
                        After::Close => {
                            self.flush(cx, id);
                            cx.close(id);
                            return data.len();
                        }
                        After::Abort => {
                            log::debug!("{id}: a reply past the output limit; cut");
                            self.replies.clear();
                            cx.abort(id);
                            return data.len();
                        }
                    }
                }
                Ok(Parsed::Nothing { len }) => used += len,
                Ok(Parsed::Incomplete) => break,
                Err(error) => {
                    self.protocol_error(cx, id, error);
                    return data.len();
                }
            }
        }
        self.flush(cx, id);
        self.arm_sweep(cx);
        used
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Client>, timer: TimerId, _key: u64) {
        let removed = self.store.sweep(SWEEP_BUDGET);
        if removed > 0 {
            log::trace!("sweep: {removed} expired keys removed");
        }
        if self.store.volatile_keys() == 0 && cx.cancel_timer(timer) {
            self.sweep = None;
        }
    }

    fn on_close(
        &mut self,
        _: &mut Context<'_, Client>,
        id: ConnId,
        _: Client,
        reason: CloseReason,
    ) {
        log::debug!("{id} closed: {reason}");
    }
}

fn main() -> ExitCode {
    let parsed = addr_flag::addr_only(std::env::args().skip(1), DEFAULT_ADDR);
    let addr = match serve::args_or_exit("kv", USAGE, parsed) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    logger::StderrLogger::install("kv");
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kv: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Listens, says so on stdout, and serves until stopped. `Err` is the
/// message for stderr.
fn serve(addr: SocketAddr) -> Result<(), String> {
    // As Redis (maxclients 10000 needs the descriptors): raise the soft
    // open-file limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let config = Config::default().max_input(MAX_INPUT);
    let kv = Kv {
        store: Store::new(),
        parser: Parser::new(),
        replies: Vec::with_capacity(2 * FLUSH_AT),
        sweep: None,
    };
    let mut reactor = Reactor::new(config, kv).map_err(|e| e.to_string())?;
    let report = serve::listen_and_run(&mut reactor, addr)?;
    let stats = reactor.stats();
    log::info!(
        "stopped: {} accepted, {} bytes in, {} bytes out; drain: {report}",
        stats.accepted,
        stats.bytes_in,
        stats.bytes_out
    );
    Ok(())
}
