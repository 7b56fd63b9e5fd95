//! What a handler can do through its `Context`, each call checked from the
//! peer's side: partial consumption, the input and output limits, pausing,
//! abort, graceful close, peer addresses, calls on closed ids, counters and
//! stopping the reactor.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{
    DEADLINE, Reports, any_local_address, connect, pattern, read_to_eof, start, write_pattern,
};
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId, Reactor, Stats,
};

/// What a handler saw or did, reported to the test thread.
#[derive(Debug)]
enum Seen {
    Open {
        id: ConnId,
        peer: SocketAddr,
        /// `Context::peer_addr` asked in `on_open`.
        peer_addr: Result<SocketAddr, Error>,
    },
    /// The outcome of a call the handler made, named by `what`.
    Call {
        id: ConnId,
        what: &'static str,
        result: Result<(), Error>,
    },
    /// `Context::pending_output` at some point the handler chose.
    Pending(ConnId, usize),
    /// `Context::stats` from inside a callback.
    Stats(ConnId, Box<Stats>),
    Close(Box<Closed>),
}

/// What `on_close` saw.
#[derive(Debug)]
struct Closed {
    id: ConnId,
    reason: CloseReason,
    /// `send`, `peer_addr` and `pending_output` on the id just closed, from
    /// inside `on_close`.
    send: Result<(), Error>,
    peer_addr: Result<SocketAddr, Error>,
    pending: usize,
}

/// What a probe's data callback gets besides the `Context`.
struct Tools<'a> {
    seen: &'a Sender<Seen>,
    /// Ids of every connection closed so far, oldest first.
    closed: &'a [ConnId],
}

type OnData = Box<dyn FnMut(&mut Context<'_>, ConnId, &[u8], &Tools<'_>) -> usize + Send>;

/// A handler whose `on_data` is a closure; it reports opens and closes.
struct Probe {
    seen: Sender<Seen>,
    closed: Vec<ConnId>,
    on_data: OnData,
}

impl Probe {
    fn new(
        on_data: impl FnMut(
            &mut Context<'_, <Probe as Handler>::Conn>,
            ConnId,
            &[u8],
            &Tools<'_>,
        ) -> usize
        + Send
        + 'static,
    ) -> (Probe, ProbeReports) {
        let (seen, reports) = ProbeReports::new();
        let probe = Probe {
            seen,
            closed: Vec::new(),
            on_data: Box::new(on_data),
        };
        (probe, reports)
    }
}

impl Handler for Probe {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) {
        let peer_addr = cx.peer_addr(id);
        let _ = self.seen.send(Seen::Open {
            id,
            peer: peer.as_tcp().expect("a TCP peer"),
            peer_addr: peer_addr.map(|a| a.as_tcp().expect("a TCP peer")),
        });
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let tools = Tools {
            seen: &self.seen,
            closed: &self.closed,
        };
        (self.on_data)(cx, id, data, &tools)
    }

    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        self.closed.push(id);
        let _ = self.seen.send(Seen::Close(Box::new(Closed {
            id,
            reason,
            send: cx.send(id, b"after close"),
            peer_addr: cx.peer_addr(id).map(|a| a.as_tcp().expect("a TCP peer")),
            pending: cx.pending_output(id),
        })));
    }
}

/// Sends everything back.
fn echo(cx: &mut Context<'_>, id: ConnId, data: &[u8]) -> usize {
    let _ = cx.send(id, data);
    data.len()
}

/// Where `data` stands against a one-word command: `Some(true)` it starts
/// with it, `Some(false)` it is an unfinished start of it (consume nothing,
/// wait for more), `None` it is something else.
fn command(data: &[u8], word: &[u8]) -> Option<bool> {
    if data.starts_with(word) {
        Some(true)
    } else if word.starts_with(data) {
        Some(false)
    } else {
        None
    }
}

/// The test thread's end of the probe's reports, with a log of the closes
/// taken from them.
struct ProbeReports {
    reports: Reports<Seen>,
    /// Every `on_close` taken by [`ProbeReports::close_reason`], as
    /// (id, reason), in the order taken.
    closes_taken: Vec<(ConnId, String)>,
}

impl ProbeReports {
    fn new() -> (Sender<Seen>, ProbeReports) {
        let (tx, reports) = Reports::new();
        let reports = ProbeReports {
            reports,
            closes_taken: Vec::new(),
        };
        (tx, reports)
    }

    /// [`Reports::wait_for`] on the probe's reports.
    #[track_caller]
    fn wait_for<T>(&mut self, what: &str, pick: impl FnMut(Seen) -> Result<T, Seen>) -> T {
        self.reports.wait_for(what, pick)
    }

    /// The id the reactor gave `client`, matched by its local address;
    /// checks `peer_addr` from `on_open` too.
    #[track_caller]
    fn id_of(&mut self, client: &TcpStream) -> ConnId {
        let local = client.local_addr().expect("client local address");
        self.wait_for("on_open of the client", |seen| match seen {
            Seen::Open { id, peer, .. } if peer == local => Ok(id),
            other => Err(other),
        })
    }

    /// Waits for the outcome of the call `what` on `id`.
    #[track_caller]
    fn call(&mut self, id: ConnId, what: &'static str) -> Result<(), Error> {
        self.wait_for(what, |seen| match seen {
            Seen::Call {
                id: cid,
                what: w,
                result,
            } if cid == id && w == what => Ok(result),
            other => Err(other),
        })
    }

    /// Waits for `on_close` of `id` and returns its reason, after checking
    /// that calls on the closed id are refused.
    #[track_caller]
    fn close_reason(&mut self, id: ConnId) -> CloseReason {
        let Closed {
            reason,
            send,
            peer_addr,
            pending,
            ..
        } = *self.wait_for("on_close", |seen| match seen {
            Seen::Close(closed) if closed.id == id => Ok(closed),
            other => Err(other),
        });
        self.closes_taken.push((id, format!("{reason:?}")));
        assert!(
            matches!(send, Err(Error::UnknownConnection(gone)) if gone == id),
            "send in on_close: {send:?}"
        );
        assert!(
            matches!(peer_addr, Err(Error::UnknownConnection(gone)) if gone == id),
            "peer_addr in on_close: {peer_addr:?}"
        );
        assert_eq!(pending, 0, "pending_output in on_close");
        reason
    }

    /// Every `on_close` reported so far, as (id, reason): those taken by
    /// [`ProbeReports::close_reason`], then those not taken yet.
    fn closes_so_far(&mut self) -> Vec<(ConnId, String)> {
        let untaken = self.reports.untaken().iter().filter_map(|seen| match seen {
            Seen::Close(closed) => Some((closed.id, format!("{:?}", closed.reason))),
            _ => None,
        });
        self.closes_taken.iter().cloned().chain(untaken).collect()
    }
}

/// One blocking echo round trip on an open client.
#[track_caller]
fn round_trip(client: &mut TcpStream, message: &[u8]) {
    client.write_all(message).expect("write");
    let mut back = vec![0; message.len()];
    client.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, message);
}

/// Reads until the connection ends; returns the bytes and how it ended.
fn read_until_end(client: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut all = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return (all, Ok(())),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (all, Err(e)),
        }
    }
}

/// Reads exactly `total` bytes in `chunk`-byte reads and checks them
/// against pattern `seed`.
#[track_caller]
fn read_pattern(stream: &mut TcpStream, seed: u64, total: u64, chunk: usize) {
    let mut buf = vec![0u8; chunk];
    let mut received = 0u64;
    while received < total {
        let n = (total - received).min(chunk as u64) as usize;
        match stream.read(&mut buf[..n]) {
            Ok(0) => panic!("EOF after {received} of {total} bytes"),
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let offset = received + i as u64;
                    assert_eq!(b, pattern(seed, offset), "byte {offset} of {total}");
                }
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {received} of {total} bytes: {e}"),
        }
    }
}

#[track_caller]
fn assert_reset(end: io::Result<()>) {
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset (ECONNRESET), got {other:?}"),
    }
}

/// What the line handler saw.
#[derive(Debug, Default)]
struct LineLog {
    lines: Vec<Vec<u8>>,
    offers: usize,
    /// Offers that began with bytes left unconsumed the time before.
    offers_with_leftover: usize,
    /// Offers that did not begin with what was left unconsumed.
    bad_offers: usize,
}

#[test]
fn unfinished_lines_are_offered_again_with_the_next_bytes() {
    let log = Arc::new(Mutex::new(LineLog::default()));
    let handler_log = Arc::clone(&log);
    let mut leftover: Vec<u8> = Vec::new();
    // Consumes whole lines only and echoes them.
    let (probe, mut reports) = Probe::new(move |cx, id, data, _| {
        let mut log = handler_log.lock().expect("line log");
        log.offers += 1;
        if !leftover.is_empty() {
            log.offers_with_leftover += 1;
        }
        if !data.starts_with(&leftover) {
            log.bad_offers += 1;
        }
        let consumed = data
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        let lines = data[..consumed].split_inclusive(|&b| b == b'\n');
        log.lines.extend(lines.map(<[u8]>::to_vec));
        let _ = cx.send(id, &data[..consumed]);
        leftover = data[consumed..].to_vec();
        consumed
    });
    let server = start(Config::default().read_chunk(512), probe);
    let mut client = connect(server.addr);
    client.set_nodelay(true).expect("TCP_NODELAY");
    let id = reports.id_of(&client);
    let mut echo_reader = client.try_clone().expect("clone the client socket");
    let reader = thread::spawn(move || read_to_eof(&mut echo_reader));

    // Small writes, each read by the server before the next is sent, so
    // most reads end inside a line.
    let small: Vec<u8> = (0..60)
        .flat_map(|i| format!("line {i}: {}\n", "ab".repeat(i % 13)).into_bytes())
        .collect();
    let mut offset = 0;
    let mut unfinished = 0;
    for size in (1..=9).cycle() {
        if offset == small.len() {
            break;
        }
        let end = (offset + size).min(small.len());
        client
            .write_all(&small[offset..end])
            .expect("write a piece");
        if small[end - 1] != b'\n' {
            unfinished += 1;
        }
        offset = end;
        server.wait_stats("the server read the piece", |s| s.bytes_in == offset as u64);
    }

    // Then one large write of lines up to 6 KiB long: the 512-byte reads
    // split them anywhere.
    let large: Vec<u8> = (0..400usize)
        .flat_map(|i| {
            let len = if i % 50 == 0 { 6000 } else { (i * 7919) % 1500 };
            let mut line = format!("{i}:").into_bytes();
            line.extend((0..len).map(|j| b'a' + ((i + j) % 26) as u8));
            line.push(b'\n');
            line
        })
        .collect();
    client.write_all(&large).expect("write the large part");
    // A last line without its newline is never consumed, so never echoed.
    client
        .write_all(b"unfinished tail")
        .expect("write the tail");
    client.shutdown(Shutdown::Write).expect("client half-close");

    let echo = reader
        .join()
        .expect("reader thread")
        .expect("echo, then EOF");
    let mut expected = small.clone();
    expected.extend_from_slice(&large);
    assert!(
        echo == expected,
        "echo of {} bytes differs from the {} bytes of whole lines sent",
        echo.len(),
        expected.len()
    );
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");

    let log = log.lock().expect("line log");
    let expected_lines: Vec<Vec<u8>> = expected
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(log.lines.len(), expected_lines.len(), "line count");
    assert!(log.lines == expected_lines, "lines lost, split or repeated");
    assert_eq!(log.bad_offers, 0, "offers not starting with the leftover");
    assert!(
        log.offers_with_leftover >= unfinished,
        "{} offers carried a leftover; {unfinished} pieces ended inside a line ({log:?})",
        log.offers_with_leftover
    );
}

#[test]
fn input_past_max_input_closes_only_the_hoarding_connection() {
    // Connections whose data starts with `H` are never consumed.
    let (probe, mut reports) = Probe::new(|cx, id, data, _| {
        if data.first() == Some(&b'H') {
            0
        } else {
            echo(cx, id, data)
        }
    });
    let server = start(Config::default().max_input(1024), probe);
    let mut others: Vec<TcpStream> = (0..4).map(|_| connect(server.addr)).collect();
    for (i, other) in others.iter_mut().enumerate() {
        round_trip(other, format!("before {i}").as_bytes());
    }

    let mut hoarder = connect(server.addr);
    let id = reports.id_of(&hoarder);
    let mut payload = vec![b'H'];
    payload.extend((0..4095).map(|i| pattern(9, i)));
    hoarder.write_all(&payload).expect("write 4 KiB");
    let (got, end) = read_until_end(&mut hoarder);
    assert!(got.is_empty(), "the hoarder got {} bytes", got.len());
    assert_reset(end);
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::InputLimit), "{reason:?}");

    for (i, other) in others.iter_mut().enumerate() {
        round_trip(other, format!("after {i}").as_bytes());
    }
    assert_eq!(
        reports.closes_so_far(),
        vec![(id, "InputLimit".to_string())],
        "only the hoarder closed"
    );
    let stats = server.wait_stats("the close counted", |s| s.closed == 1);
    assert_eq!(stats.limit_closes, 1, "{stats:?}");
    assert_eq!(stats.active, 4, "{stats:?}");
}

#[test]
fn data_sent_while_paused_is_delivered_after_resume_in_order() {
    const FIRST: &[u8] = b"first";
    const TOTAL: u64 = 1024 * 1024; // more than the kernel buffers while paused
    let mut echoed: HashMap<ConnId, usize> = HashMap::new();
    let mut paused: Vec<ConnId> = Vec::new();
    // Echoes; pauses a connection once `FIRST` is echoed. A connection
    // that starts with RESUME resumes every paused one.
    let (probe, mut reports) = Probe::new(move |cx, id, data, tools| {
        if !echoed.contains_key(&id) {
            match command(data, b"RESUME") {
                Some(false) => return 0,
                Some(true) => {
                    for other in paused.drain(..) {
                        cx.resume_read(other);
                    }
                    let _ = cx.send(id, b"resumed");
                    return b"RESUME".len();
                }
                None => {}
            }
        }
        let count = echoed.entry(id).or_default();
        let before = *count;
        *count += data.len();
        if before < FIRST.len() && *count >= FIRST.len() {
            cx.pause_read(id);
            paused.push(id);
            let _ = tools.seen.send(Seen::Call {
                id,
                what: "pause_read",
                result: Ok(()),
            });
        }
        echo(cx, id, data)
    });
    let server = start(Config::default(), probe);
    let mut worker = connect(server.addr);
    let id = reports.id_of(&worker);
    round_trip(&mut worker, FIRST);
    reports.call(id, "pause_read").expect("paused");

    let writer = {
        let stream = worker.try_clone().expect("clone the worker socket");
        thread::spawn(move || write_pattern(stream, 21, TOTAL))
    };
    // Twenty turns later the reactor has still read nothing more. (The
    // test wakes it for them: a paused connection gives it nothing to do.)
    let stats = server.run_turns(20);
    assert_eq!(
        stats.bytes_in,
        FIRST.len() as u64,
        "read while paused: {stats:?}"
    );

    let mut control = connect(server.addr);
    control.write_all(b"RESUME").expect("write RESUME");
    let mut ack = [0; 7];
    control.read_exact(&mut ack).expect("RESUME acknowledged");
    assert_eq!(&ack, b"resumed");

    read_pattern(&mut worker, 21, TOTAL, 64 * 1024);
    assert_eq!(writer.join().expect("writer thread"), TOTAL);
    round_trip(&mut worker, b"and after the resume");
    assert!(reports.closes_so_far().is_empty(), "nothing closed");
}

#[test]
fn closing_a_paused_connection_still_reads_to_the_peers_fin() {
    let mut paused: Vec<ConnId> = Vec::new();
    // Echoes a connection's first bytes, then pauses it. A connection that
    // sends CLOSE closes every paused one.
    let (probe, mut reports) = Probe::new(move |cx, id, data, _| match command(data, b"CLOSE") {
        Some(false) => 0,
        Some(true) => {
            for other in paused.drain(..) {
                cx.close(other);
            }
            let _ = cx.send(id, b"closed");
            b"CLOSE".len()
        }
        None => {
            cx.pause_read(id);
            paused.push(id);
            echo(cx, id, data)
        }
    });
    let server = start(Config::default(), probe);
    let mut worker = connect(server.addr);
    let id = reports.id_of(&worker);
    round_trip(&mut worker, b"hello");
    // Unread while paused; the close must discard it, not wait on it.
    worker
        .write_all(b"unread input")
        .expect("write while paused");

    let mut control = connect(server.addr);
    control.write_all(b"CLOSE").expect("write CLOSE");
    let mut ack = [0; 6];
    control.read_exact(&mut ack).expect("CLOSE acknowledged");
    assert_eq!(&ack, b"closed");

    // The server's FIN arrives; then ours must be seen although the
    // handler had paused reading.
    let (rest, end) = read_until_end(&mut worker);
    assert!(rest.is_empty() && end.is_ok(), "{rest:?} {end:?}");
    worker.shutdown(Shutdown::Write).expect("client FIN");
    assert!(matches!(reports.close_reason(id), CloseReason::Local));
}

#[test]
fn abort_resets_the_peer_and_drops_queued_output() {
    const DUMP: usize = 8 * 1024 * 1024;
    let dump: Arc<[u8]> = (0..DUMP as u64).map(|i| pattern(4, i)).collect();
    let to_send = Arc::clone(&dump);
    // `abort` aborts at once; `dump` queues 8 MiB first.
    let (probe, mut reports) = Probe::new(move |cx, id, data, tools| {
        let word: &[u8] = if data.first() == Some(&b'd') {
            b"dump"
        } else {
            b"abort"
        };
        match command(data, word) {
            Some(false) => 0,
            Some(true) => {
                if word == b"dump" {
                    let result = cx.send(id, &to_send);
                    let _ = tools.seen.send(Seen::Call {
                        id,
                        what: "dump",
                        result,
                    });
                    let _ = tools.seen.send(Seen::Pending(id, cx.pending_output(id)));
                }
                cx.abort(id);
                let result = cx.send(id, b"after abort");
                let _ = tools.seen.send(Seen::Call {
                    id,
                    what: "send after abort",
                    result,
                });
                data.len()
            }
            None => echo(cx, id, data),
        }
    });
    let server = start(Config::default(), probe);

    let mut client = connect(server.addr);
    let id = reports.id_of(&client);
    round_trip(&mut client, b"hello");
    client.write_all(b"abort").expect("write abort");
    let (got, end) = read_until_end(&mut client);
    assert!(got.is_empty(), "got {} bytes before the reset", got.len());
    assert_reset(end);
    let after = reports.call(id, "send after abort");
    assert!(
        matches!(after, Err(Error::UnknownConnection(gone)) if gone == id),
        "{after:?}"
    );
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");

    // With output queued: the peer gets part of it, then the reset.
    let mut dumped = connect(server.addr);
    let id = reports.id_of(&dumped);
    dumped.write_all(b"dump").expect("write dump");
    reports.call(id, "dump").expect("8 MiB is under max_output");
    let pending = reports.wait_for("pending output", |seen| match seen {
        Seen::Pending(pid, n) if pid == id => Ok(n),
        other => Err(other),
    });
    assert!(pending > 0, "nothing was queued: the test proves nothing");
    let (got, end) = read_until_end(&mut dumped);
    assert_reset(end);
    assert!(
        got.len() < DUMP,
        "all {DUMP} bytes arrived: queued output was not dropped"
    );
    assert!(got == dump[..got.len()], "what arrived is not a prefix");
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");
    let stats = server.wait_stats("both closes counted", |s| s.closed == 2);
    assert_eq!(stats.queued_output, 0, "dropped output still counted");
}

#[test]
fn close_flushes_queued_output_before_its_fin() {
    const BIG: u64 = 12 * 1024 * 1024; // several times what the kernel holds
    let big: Vec<u8> = (0..BIG).map(|i| pattern(5, i)).collect();
    let (probe, mut reports) = Probe::new(move |cx, id, data, tools| match command(data, b"big") {
        Some(false) => 0,
        Some(true) => {
            let result = cx.send(id, &big);
            let _ = tools.seen.send(Seen::Call {
                id,
                what: "send big",
                result,
            });
            let _ = tools.seen.send(Seen::Pending(id, cx.pending_output(id)));
            cx.close(id);
            let result = cx.send(id, b"after close");
            let _ = tools.seen.send(Seen::Call {
                id,
                what: "send after close",
                result,
            });
            data.len()
        }
        None => echo(cx, id, data),
    });
    let server = start(Config::default(), probe);
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);
    client.write_all(b"big").expect("write big");
    reports
        .call(id, "send big")
        .expect("12 MiB is under max_output");
    let pending = reports.wait_for("pending output", |seen| match seen {
        Seen::Pending(pid, n) if pid == id => Ok(n),
        other => Err(other),
    });
    assert!(pending > 0, "nothing was queued: the test proves nothing");
    let after = reports.call(id, "send after close");
    assert!(
        matches!(after, Err(Error::WriteClosed(closed)) if closed == id),
        "{after:?}"
    );

    // Small reads: the server flushes as the client makes room.
    read_pattern(&mut client, 5, BIG, 4096);
    let (rest, end) = read_until_end(&mut client);
    end.expect("a clean EOF after the output");
    assert!(rest.is_empty(), "{} bytes after the output", rest.len());

    // We are a quiet peer (nothing sent since the close began): the slot
    // is freed once the output is flushed, without waiting for our FIN.
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    let stats = server.wait_stats("the close counted", |s| s.closed == 1);
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    assert!(stats.bytes_out >= BIG, "{stats:?}");
}

#[test]
fn peer_addr_is_the_clients_local_address() {
    let (probe, mut reports) = Probe::new(|cx, id, data, _| echo(cx, id, data));
    let server = start(Config::default(), probe);
    let clients: Vec<TcpStream> = (0..3).map(|_| connect(server.addr)).collect();
    for client in &clients {
        let local = client.local_addr().expect("client local address");
        let peer_addr = reports.wait_for("on_open", |seen| match seen {
            Seen::Open {
                peer, peer_addr, ..
            } if peer == local => Ok(peer_addr),
            other => Err(other),
        });
        assert_eq!(peer_addr.expect("getpeername on an open connection"), local);
    }
}

/// The slot index of an id, from its `index.generation` display form.
fn slot(id: ConnId) -> String {
    let shown = id.to_string();
    let (index, _generation) = shown
        .split_once('.')
        .unwrap_or_else(|| panic!("ConnId displays as index.generation, got {shown}"));
    index.to_string()
}

#[test]
fn calls_on_a_closed_id_are_refused_and_never_reach_the_next_tenant() {
    // `poke\n` makes every call on every closed id, then answers.
    let (probe, mut reports) = Probe::new(|cx, id, data, tools| match command(data, b"poke\n") {
        Some(false) => 0,
        Some(true) => {
            for &gone in tools.closed {
                let result = cx.send(gone, b"ghost\n");
                let _ = tools.seen.send(Seen::Call {
                    id: gone,
                    what: "send to a closed id",
                    result,
                });
                let result = cx.peer_addr(gone).map(|_| ());
                let _ = tools.seen.send(Seen::Call {
                    id: gone,
                    what: "peer_addr of a closed id",
                    result,
                });
                cx.pause_read(gone);
                cx.shutdown_write(gone);
                cx.close(gone);
                cx.abort(gone);
            }
            let _ = cx.send(id, b"poked\n");
            b"poke\n".len()
        }
        None => echo(cx, id, data),
    });
    let server = start(Config::default(), probe);

    let mut first = connect(server.addr);
    let first_id = reports.id_of(&first);
    round_trip(&mut first, b"first tenant");
    first.shutdown(Shutdown::Write).expect("client half-close");
    assert!(read_to_eof(&mut first).expect("clean EOF").is_empty());
    // `close_reason` also checks that send and peer_addr on the id are
    // refused inside on_close.
    let reason = reports.close_reason(first_id);
    assert!(matches!(reason, CloseReason::PeerClosed), "{reason:?}");
    drop(first);

    let mut second = connect(server.addr);
    let second_id = reports.id_of(&second);
    assert_ne!(second_id, first_id);
    assert_eq!(slot(second_id), slot(first_id), "the freed slot is reused");
    second.write_all(b"poke\n").expect("write poke");
    let mut answer = [0; 6];
    second.read_exact(&mut answer).expect("answer to poke");
    assert_eq!(
        &answer, b"poked\n",
        "the ghost write reached the new tenant"
    );
    let ghost = reports.call(first_id, "send to a closed id");
    assert!(
        matches!(ghost, Err(Error::UnknownConnection(gone)) if gone == first_id),
        "{ghost:?}"
    );
    let ghost = reports.call(first_id, "peer_addr of a closed id");
    assert!(
        matches!(ghost, Err(Error::UnknownConnection(gone)) if gone == first_id),
        "{ghost:?}"
    );
    // pause/shutdown/close/abort on the old id did not touch the new one.
    round_trip(&mut second, b"second tenant still open and reading");
    assert_eq!(
        reports.closes_so_far(),
        vec![(first_id, "PeerClosed".to_string())]
    );
}

#[test]
fn send_after_shutdown_write_is_write_closed() {
    let (probe, mut reports) = Probe::new(|cx, id, data, tools| match command(data, b"shut") {
        Some(false) => 0,
        Some(true) => {
            cx.shutdown_write(id);
            let result = cx.send(id, b"too late");
            let _ = tools.seen.send(Seen::Call {
                id,
                what: "send after shutdown_write",
                result,
            });
            data.len()
        }
        None => echo(cx, id, data),
    });
    let server = start(Config::default(), probe);
    let mut client = connect(server.addr);
    let id = reports.id_of(&client);
    round_trip(&mut client, b"echo first");
    client.write_all(b"shut").expect("write shut");
    let rest = read_to_eof(&mut client).expect("the server's FIN");
    assert!(rest.is_empty(), "{} bytes after shutdown_write", rest.len());
    let result = reports.call(id, "send after shutdown_write");
    assert!(
        matches!(result, Err(Error::WriteClosed(closed)) if closed == id),
        "{result:?}"
    );
    client.shutdown(Shutdown::Write).expect("client half-close");
    // The server's FIN went first: a local close.
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
}

#[test]
fn stats_from_the_context_count_connections_and_bytes() {
    let (probe, mut reports) = Probe::new(|cx, id, data, tools| match command(data, b"stats\n") {
        Some(false) => 0,
        Some(true) => {
            let _ = tools.seen.send(Seen::Stats(id, Box::new(cx.stats())));
            data.len()
        }
        None => echo(cx, id, data),
    });
    let server = start(Config::default(), probe);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(server.addr)).collect();
    let mut echoed = 0u64;
    for (i, client) in clients.iter_mut().enumerate() {
        let message = vec![b'a' + i as u8; 10 * (i + 1)];
        round_trip(client, &message);
        echoed += message.len() as u64;
    }
    let id = reports.id_of(&clients[0]);
    clients[0].write_all(b"stats\n").expect("write stats");
    let stats = reports.wait_for("stats", |seen| match seen {
        Seen::Stats(sid, stats) if sid == id => Ok(*stats),
        other => Err(other),
    });
    assert_eq!(stats.accepted, 3, "{stats:?}");
    assert_eq!(stats.active, 3, "{stats:?}");
    assert_eq!(stats.closed, 0, "{stats:?}");
    // The bytes just read are counted before on_data runs.
    assert_eq!(stats.bytes_in, echoed + 6, "{stats:?}");
    assert_eq!(stats.bytes_out, echoed, "{stats:?}");
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    assert!(stats.turns > 0, "{stats:?}");
}

#[test]
fn stop_makes_run_return_ok_and_closes_every_connection_as_stopped() {
    let (probe, mut reports) = Probe::new(|cx, id, data, _| match command(data, b"stop") {
        Some(false) => 0,
        Some(true) => {
            cx.stop();
            data.len()
        }
        None => echo(cx, id, data),
    });
    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), probe).expect("bind on port 0");
    let addr = reactor.local_addr().expect("a TCP listener");
    let (done_tx, done_rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let result = reactor.run();
        let _ = done_tx.send(());
        (result, reactor)
    });

    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    let mut ids = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        ids.push(reports.id_of(client));
        round_trip(client, format!("client {i}").as_bytes());
    }
    clients[0].write_all(b"stop").expect("write stop");
    // Each client gets the server's FIN, with nothing stray before it, and
    // closes: that lets the graceful stop finish at once.
    for (i, client) in clients.iter_mut().enumerate() {
        let rest = read_to_eof(client).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(rest.is_empty(), "client {i}: {} stray bytes", rest.len());
    }
    drop(clients);
    done_rx
        .recv_timeout(DEADLINE)
        .expect("run returns after stop");
    let (result, reactor) = runner.join().expect("reactor thread");
    let report = result.expect("run returns Ok after Context::stop");
    assert!(reactor.is_stopped());
    assert_eq!(
        (report.drained, report.forced, report.failed),
        (3, 0, 0),
        "{report:?}"
    );
    assert_eq!(reactor.stop_report(), Some(report));

    for id in ids {
        let reason = reports.close_reason(id);
        assert!(matches!(reason, CloseReason::Stopped), "{id}: {reason:?}");
    }
    let stats = reactor.stats();
    assert_eq!((stats.active, stats.closed), (0, 3), "{stats:?}");
    // The listener is closed.
    match TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => panic!("connect after stop: expected refused, got {other:?}"),
    }
}

#[test]
fn sending_past_max_output_fails_and_aborts_the_connection() {
    const MAX_OUTPUT: usize = 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let chunk: Vec<u8> = (0..CHUNK as u64).map(|i| pattern(6, i)).collect();
    // `flood` sends until `send` fails (at most 64 MiB), to a client that
    // does not read.
    let (probe, mut reports) =
        Probe::new(move |cx, id, data, tools| match command(data, b"flood") {
            Some(false) => 0,
            Some(true) => {
                let mut sent = 0usize;
                let mut result = Ok(());
                while sent < 64 * 1024 * 1024 {
                    result = cx.send(id, &chunk);
                    if result.is_err() {
                        break;
                    }
                    sent += CHUNK;
                }
                let _ = tools.seen.send(Seen::Pending(id, sent));
                let _ = tools.seen.send(Seen::Call {
                    id,
                    what: "flood",
                    result,
                });
                data.len()
            }
            None => echo(cx, id, data),
        });
    let server = start(Config::default().max_output(MAX_OUTPUT), probe);
    let mut bystander = connect(server.addr);
    round_trip(&mut bystander, b"before the flood");

    let mut client = connect(server.addr);
    let id = reports.id_of(&client);
    client.write_all(b"flood").expect("write flood");
    let result = reports.call(id, "flood");
    assert!(
        matches!(result, Err(Error::OutputLimit(over)) if over == id),
        "{result:?}"
    );
    let accepted = reports.wait_for("bytes sent before the limit", |seen| match seen {
        Seen::Pending(pid, n) if pid == id => Ok(n),
        other => Err(other),
    });
    assert!(
        accepted >= MAX_OUTPUT,
        "send failed after only {accepted} bytes"
    );
    let reason = reports.close_reason(id);
    assert!(matches!(reason, CloseReason::OutputLimit), "{reason:?}");
    let (got, end) = read_until_end(&mut client);
    assert_reset(end);
    assert!(got.len() <= accepted, "{} bytes arrived", got.len());

    round_trip(&mut bystander, b"after the flood");
    let stats = server.wait_stats("the close counted", |s| s.closed == 1);
    assert_eq!(stats.limit_closes, 1, "{stats:?}");
    assert_eq!(stats.queued_output, 0, "{stats:?}");
    assert!(stats.peak_queued_output <= MAX_OUTPUT as u64, "{stats:?}");
}
