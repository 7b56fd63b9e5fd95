//! Output flow for pipelined requests: a Redis-like handler answers
//! `GET <n>\n` with a 4 KiB reply and stops consuming input at a low
//! output threshold of its own; a client pipelines 20,000 requests without
//! reading. The server stops reading while its answers wait, the unconsumed
//! requests are offered again as the output drains (the peer sends nothing
//! more), and every reply arrives in order with output bounded, including
//! when the client half-closes right after its last request.
//!
//! These tests fail with the flow of the commit before 884ff57, where input
//! a handler left unconsumed was offered again only if backpressure had
//! engaged at `write_high_water`: this handler never lets its output reach
//! the high water mark (at most 1 KiB or `write_low_water` plus one reply,
//! well under 64 KiB), so reading never stopped for output
//! (`backpressure_pauses` stayed 0, and the wait for it below would time
//! out); and once the client had sent everything, the requests left
//! unconsumed were never offered again, since no new bytes came to offer
//! them with: the client would wait for replies that never come (its read
//! times out). With the half-close, the server read on to the FIN while
//! requests were unconsumed, and the default `on_eof` closed the
//! connection over them: the client got EOF short of 20,000 replies.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::Sender;

use common::{Reports, Server, start, wait_until};
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId, Stats};

/// Requests a client pipelines.
const REQUESTS: u64 = 20_000;
/// Bytes of each reply: 20,000 of them (80 MiB) are far more than the
/// kernel buffers for one loopback connection whose client does not read,
/// so the server must come to hold output back.
const REPLY: usize = 4096;
/// The handler's own threshold: it answers while less than this is queued.
/// Well under `write_low_water` (16 KiB by default), let alone the high
/// water mark (64 KiB).
const LOW_THRESHOLD: usize = 1024;

/// The reply to `GET n`: `n` in decimal and a newline, then filler bytes
/// that depend on `n`, [`REPLY`] bytes in all.
fn reply(n: u64, out: &mut Vec<u8>) {
    out.clear();
    writeln!(out, "{n}").expect("write to a Vec");
    let start = out.len();
    out.extend((start..REPLY).map(|i| (n as u8).wrapping_mul(31).wrapping_add(i as u8)));
}

/// When the handler stops consuming input.
#[derive(Debug, Clone, Copy)]
enum Threshold {
    /// While `Context::pending_output` is at least this many bytes.
    Pending(usize),
    /// While `Context::output_backed_up` says so (more than
    /// `write_low_water` queued).
    BackedUp,
}

/// How a connection ended: the requests it answered and why it closed.
#[derive(Debug)]
struct Ended {
    answered: u64,
    reason: CloseReason,
}

/// Answers each `GET <n>\n` line with [`reply`]`(n)`, in order, while the
/// output is under its threshold; returns how much it consumed (whole
/// lines only), so the rest is offered again.
struct Pipeline {
    threshold: Threshold,
    buf: Vec<u8>,
    ended: Sender<Ended>,
}

impl Pipeline {
    fn full(&self, cx: &mut Context<'_, u64>, id: ConnId) -> bool {
        match self.threshold {
            Threshold::Pending(limit) => cx.pending_output(id) >= limit,
            Threshold::BackedUp => cx.output_backed_up(id),
        }
    }
}

impl Handler for Pipeline {
    /// Requests answered on the connection.
    type Conn = u64;
    type Message = ();

    fn on_open(&mut self, _: &mut Context<'_, u64>, _: ConnId, _: &Addr, _: ListenerId) -> u64 {
        0
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, u64>,
        id: ConnId,
        answered: &mut u64,
        data: &[u8],
    ) -> usize {
        let mut consumed = 0;
        while !self.full(cx, id) {
            let Some(end) = data[consumed..].iter().position(|&b| b == b'\n') else {
                break; // an unfinished line: wait for the rest
            };
            let line = &data[consumed..consumed + end];
            let n = line
                .strip_prefix(b"GET ")
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<u64>().ok());
            let Some(n) = n else {
                // Not a request: the client's check fails on the reset.
                cx.abort(id);
                return data.len();
            };
            reply(n, &mut self.buf);
            if cx.send(id, &self.buf).is_err() {
                return data.len();
            }
            *answered += 1;
            consumed += end + 1;
        }
        consumed
    }

    fn on_close(
        &mut self,
        _: &mut Context<'_, u64>,
        _: ConnId,
        answered: u64,
        reason: CloseReason,
    ) {
        let _ = self.ended.send(Ended { answered, reason });
    }
}

/// Starts a server with the default config and a [`Pipeline`] handler.
fn server(threshold: Threshold) -> (Server<Pipeline>, Reports<Ended>) {
    let (ended, reports) = Reports::new();
    let handler = Pipeline {
        threshold,
        buf: Vec::with_capacity(REPLY),
        ended,
    };
    (start(Config::default(), handler), reports)
}

/// One client pipelines [`REQUESTS`] requests and reads nothing until the
/// server has stopped reading for its output; then reads every reply,
/// checking each byte for byte (so the order too), and nothing after them
/// but the server's FIN. With `half_close` the client sends its FIN right
/// after the last request, else after the last reply. Returns the server's
/// final counters and how its connection ended.
fn pipeline(threshold: Threshold, half_close: bool) -> (Stats, Ended, usize) {
    let (server, mut ended) = server(threshold);
    let stream = common::connect(server.addr);
    let requests: Vec<u8> = (0..REQUESTS)
        .flat_map(|n| format!("GET {n}\n").into_bytes())
        .collect();
    let request_bytes = requests.len();

    // The requests are written from a thread of their own, all of them and
    // without reading: the kernel may not hold them all once the server
    // stops reading, and this thread would then block (up to its write
    // timeout) until the reader below lets the server go on.
    let mut writer_stream = stream.try_clone().expect("clone the client");
    let writer = std::thread::spawn(move || {
        writer_stream
            .write_all(&requests)
            .expect("pipeline the requests");
        if half_close {
            writer_stream
                .shutdown(Shutdown::Write)
                .expect("FIN after the last request");
        }
    });

    // No reading until the server has held its answers back: it left
    // requests unconsumed while output was queued, and stopped reading.
    let paused = server.wait_stats("the server to stop reading for its output", |s| {
        s.backpressure_pauses >= 1
    });
    assert_eq!(paused.closed, 0, "{paused:?}");

    let mut reader = BufReader::with_capacity(64 * 1024, &stream);
    let mut got = vec![0; REPLY];
    let mut want = Vec::with_capacity(REPLY);
    for n in 0..REQUESTS {
        reader
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("reply {n} of {REQUESTS}: {e}"));
        reply(n, &mut want);
        if got != want {
            let end = got.iter().position(|&b| b == b'\n').unwrap_or(16).min(16);
            panic!(
                "reply {n} is not the answer to GET {n}: it starts with {:?}",
                String::from_utf8_lossy(&got[..end])
            );
        }
    }
    wait_until("the writer thread", || writer.is_finished());
    writer.join().expect("writer thread panicked");
    if !half_close {
        stream.shutdown(Shutdown::Write).expect("FIN");
    }
    let mut extra = Vec::new();
    reader
        .read_to_end(&mut extra)
        .expect("the server's FIN after the last reply");
    assert!(
        extra.is_empty(),
        "{} bytes after the last reply",
        extra.len()
    );

    let ended = ended.wait_for("the server's on_close", Ok);
    let stats = server.wait_stats("the connection to be closed", |s| s.closed == 1);
    (stats, ended, request_bytes)
}

/// What every variant asserts of the server: it read every request and
/// wrote every reply, nothing was reset or cut by a limit, reading stopped
/// for output at least once, and the queued output stayed bounded by the
/// handler's threshold plus one reply.
///
/// The bound: the handler sends one reply only while the queue is under its
/// threshold, so the queue never passes `threshold - 1 + REPLY` (for
/// `output_backed_up`, `write_low_water + REPLY`). The reactor is what makes
/// such a handler work: since reading stops whenever input is left
/// unconsumed while output is queued, and the input is offered again once
/// the output falls to the low water mark, the handler need not answer
/// everything it reads (which a 64 KiB read of 10-byte requests would turn
/// into 26 MiB of replies). The bound is also under `write_high_water`, so
/// every pause counted came from that rule, not from the high water mark.
fn assert_flow(stats: &Stats, request_bytes: usize, bound: usize) {
    let config = Config::default();
    assert_eq!(stats.bytes_in, request_bytes as u64, "{stats:?}");
    assert_eq!(stats.bytes_out, REQUESTS * REPLY as u64, "{stats:?}");
    assert_eq!((stats.resets, stats.limit_closes), (0, 0), "{stats:?}");
    assert!(stats.backpressure_pauses >= 1, "{stats:?}");
    assert!(
        stats.peak_queued_output <= bound as u64,
        "queued output passed the handler's threshold plus one reply ({bound}): {stats:?}"
    );
    assert!(bound < config.write_high_water);
    assert_eq!(stats.queued_output, 0, "{stats:?}");
}

/// The handler stops at 1 KiB queued (`pending_output`), far below the
/// reactor's own marks: every request is still answered, in order.
#[test]
fn pipelined_requests_under_a_low_output_threshold_all_get_answered() {
    let (stats, ended, request_bytes) = pipeline(Threshold::Pending(LOW_THRESHOLD), false);
    assert_eq!(ended.answered, REQUESTS, "{ended:?}");
    assert!(matches!(ended.reason, CloseReason::PeerClosed), "{ended:?}");
    assert_flow(&stats, request_bytes, LOW_THRESHOLD - 1 + REPLY);
}

/// The handler stops while `output_backed_up` (more than
/// `write_low_water` queued): the same.
#[test]
fn pipelined_requests_under_output_backed_up_all_get_answered() {
    let (stats, ended, request_bytes) = pipeline(Threshold::BackedUp, false);
    assert_eq!(ended.answered, REQUESTS, "{ended:?}");
    assert!(matches!(ended.reason, CloseReason::PeerClosed), "{ended:?}");
    assert_flow(
        &stats,
        request_bytes,
        Config::default().write_low_water + REPLY,
    );
}

/// The client sends its FIN right after its last request. Reading stops
/// while output is backed up with requests unconsumed, so the FIN is not
/// read until the pipeline has been answered: all 20,000 replies arrive
/// before the server closes (`PeerClosed`, after answering them all).
#[test]
fn a_half_close_after_the_last_request_still_gets_every_reply() {
    let (stats, ended, request_bytes) = pipeline(Threshold::Pending(LOW_THRESHOLD), true);
    assert_eq!(
        ended.answered, REQUESTS,
        "the server closed before answering every request: {ended:?}"
    );
    assert!(matches!(ended.reason, CloseReason::PeerClosed), "{ended:?}");
    assert_flow(&stats, request_bytes, LOW_THRESHOLD - 1 + REPLY);
}

/// The same half-close with `output_backed_up` as the threshold.
#[test]
fn a_half_close_under_output_backed_up_still_gets_every_reply() {
    let (stats, ended, request_bytes) = pipeline(Threshold::BackedUp, true);
    assert_eq!(ended.answered, REQUESTS, "{ended:?}");
    assert!(matches!(ended.reason, CloseReason::PeerClosed), "{ended:?}");
    assert_flow(
        &stats,
        request_bytes,
        Config::default().write_low_water + REPLY,
    );
}
