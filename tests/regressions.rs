//! Regressions: each test pins a bug found in review, named after what
//! went wrong. All failed before their fix.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{self, Sender};

use common::{DEADLINE, connect, start};
use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId};

// tcp-reactor review: input left unconsumed when the handler paused was
// offered again only with the peer's next bytes, so a request/response
// connection stalled after resume_read.

mod resume {
    use super::*;

    /// Echoes whole lines. The line `pause\n` pauses the connection after it
    /// is echoed, leaving the rest of the input unconsumed; a connection whose
    /// data starts with `RESUME` resumes every paused connection.
    #[derive(Default)]
    struct PausingLines {
        paused: Vec<ConnId>,
    }

    impl Handler for PausingLines {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            if data.starts_with(b"RESUME") {
                for other in self.paused.drain(..) {
                    cx.resume_read(other);
                }
                let _ = cx.send(id, b"resumed");
                return 6;
            }
            let mut consumed = 0;
            while let Some(end) = data[consumed..].iter().position(|&b| b == b'\n') {
                let line = &data[consumed..consumed + end + 1];
                let _ = cx.send(id, line);
                consumed += line.len();
                if line == b"pause\n" {
                    cx.pause_read(id);
                    self.paused.push(id);
                    break;
                }
            }
            consumed
        }
    }

    #[test]
    fn input_left_when_pausing_is_offered_again_on_resume() {
        let server = start(Config::default(), PausingLines::default());
        let mut worker = connect(server.addr);
        // Two pipelined requests; the handler pauses after the first.
        worker.write_all(b"pause\nhello\n").expect("write");
        let mut first = [0; 6];
        worker.read_exact(&mut first).expect("first line echoed");
        assert_eq!(&first, b"pause\n");

        let mut control = connect(server.addr);
        control.write_all(b"RESUME").expect("write RESUME");
        let mut ack = [0; 7];
        control.read_exact(&mut ack).expect("RESUME acknowledged");

        worker
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        let mut second = [0; 6];
        let result = worker.read_exact(&mut second);
        if result.is_err() {
            // Prove the bytes were held, not lost: one more byte unblocks them.
            worker.write_all(b"x\n").expect("write one more line");
            let mut both = [0; 8];
            worker
                .read_exact(&mut both)
                .expect("held line plus new one");
            panic!(
                "`hello\\n` left unconsumed at pause_read was not offered after resume_read \
                 ({result:?}); it came only with the peer's next bytes: {:?}",
                String::from_utf8_lossy(&both)
            );
        }
        assert_eq!(&second, b"hello\n");
    }
}

// tcp-reactor review: pause_read after close stopped the reads a close needs
// to see the peer's FIN; on_close never ran and the slot leaked.

mod close_then_pause {
    use super::*;

    struct CloseThenPause {
        closed: Sender<(ConnId, String)>,
    }

    impl Handler for CloseThenPause {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            let _ = cx.send(id, b"bye");
            cx.close(id);
            // E.g. a "pause everything while busy" sweep that also reaches a
            // connection it just closed.
            cx.pause_read(id);
            data.len()
        }

        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _: (),
            reason: CloseReason,
        ) {
            let _ = self.closed.send((id, format!("{reason:?}")));
        }
    }

    #[test]
    fn pause_read_after_close_does_not_keep_the_connection_forever() {
        let (tx, rx) = mpsc::channel();
        let server = start(Config::default(), CloseThenPause { closed: tx });
        let mut client = connect(server.addr);
        client.write_all(b"hello").expect("write");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the server's FIN");
        assert_eq!(got, b"bye");
        client.shutdown(Shutdown::Write).expect("client FIN");

        // A working reactor sees our FIN within milliseconds.
        let closed = rx.recv_timeout(DEADLINE);
        let stats = server.stats();
        assert!(
            closed.is_ok(),
            "on_close never ran after both FINs; active = {} ({stats:?})",
            stats.active
        );
    }
}

// tcp-reactor review: FINs exchanged through shutdown_write (not close) left
// the connection in its slot forever.

mod half {
    use super::*;

    struct ByeOnEof {
        closed: Sender<String>,
    }

    impl Handler for ByeOnEof {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }

        fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
            let _ = cx.send(id, b"bye");
            cx.shutdown_write(id);
        }

        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: (),
            reason: CloseReason,
        ) {
            let _ = self.closed.send(format!("{reason:?}"));
        }
    }

    #[test]
    fn both_fins_exchanged_via_shutdown_write_frees_the_slot() {
        let (tx, rx) = mpsc::channel();
        let server = start(Config::default(), ByeOnEof { closed: tx });
        let mut client = connect(server.addr);
        client.write_all(b"hi").expect("write");
        client.shutdown(Shutdown::Write).expect("client FIN");
        let mut got = Vec::new();
        client
            .read_to_end(&mut got)
            .expect("bye then the server's FIN");
        assert_eq!(got, b"bye");
        drop(client); // the peer is entirely gone

        let closed = rx.recv_timeout(DEADLINE);
        let stats = server.stats();
        assert!(
            closed.is_ok(),
            "both FINs exchanged and the peer gone, but no on_close; active = {} ({stats:?})",
            stats.active
        );
    }
}

// tcp-reactor review: on_drain ran for a connection the same flush had just
// closed.

mod drain {
    use super::*;

    const REPLY: usize = 12 * 1024 * 1024; // well over what the kernel buffers

    #[derive(Debug)]
    enum Seen {
        /// `send(id, b"")` from inside `on_drain`: `UnknownConnection` means the
        /// id was already closed.
        Drain(Result<(), String>),
        Close(#[allow(dead_code)] String),
    }

    struct ReplyOnEof {
        seen: Sender<Seen>,
    }

    impl Handler for ReplyOnEof {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }

        fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
            let _ = cx.send(id, &vec![7u8; REPLY]);
            cx.close(id);
        }

        fn on_drain(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
            let probe = cx.send(id, b"").map_err(|e| match e {
                Error::UnknownConnection(_) => "UnknownConnection".to_string(),
                other => format!("{other:?}"),
            });
            let _ = self.seen.send(Seen::Drain(probe));
        }

        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: (),
            reason: CloseReason,
        ) {
            let _ = self.seen.send(Seen::Close(format!("{reason:?}")));
        }
    }

    #[test]
    fn on_drain_is_not_called_for_a_connection_already_closed() {
        let (tx, rx) = mpsc::channel();
        // Low water 0: reading resumes (and on_drain runs) only when the queue
        // is empty, i.e. exactly on the flush that sends the FIN.
        let config = Config::default()
            .write_high_water(64 * 1024)
            .write_low_water(0);
        let server = start(config, ReplyOnEof { seen: tx });
        let mut client = connect(server.addr);
        client.write_all(b"request").expect("write");
        client.shutdown(Shutdown::Write).expect("client FIN");
        // Read only once the reply is queued in user space.
        server.wait_stats("the reply backpressured", |s| s.backpressure_pauses > 0);
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("reply then EOF");
        assert_eq!(got.len(), REPLY);

        let mut seen = Vec::new();
        while let Ok(report) = rx.recv_timeout(DEADLINE) {
            let done = matches!(report, Seen::Close(_));
            seen.push(report);
            if done {
                break;
            }
        }
        assert!(
            matches!(seen.last(), Some(Seen::Close(_))),
            "no on_close: {seen:?}"
        );
        let dead_drains = seen
            .iter()
            .filter(|s| matches!(s, Seen::Drain(Err(e)) if e == "UnknownConnection"))
            .count();
        let stats = server.stats();
        assert!(
            stats.backpressure_pauses > 0,
            "nothing was backpressured: the test proves nothing ({stats:?})"
        );
        assert_eq!(dead_drains, 0, "on_drain ran on a closed id: {seen:?}");
    }
}

// tcp-reactor review: stop cut queued output and ended the stream with a
// FIN, so the peer took a truncated stream for a complete one. Since the
// graceful stop, queued output is delivered in full before the FIN.

mod stop {
    use super::*;

    const DUMP: usize = 8 * 1024 * 1024;

    struct DumpThenStop;

    impl Handler for DumpThenStop {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            cx.send(id, &vec![9u8; DUMP]).expect("under max_output");
            cx.close(id); // graceful: flush, then FIN
            cx.stop();
            data.len()
        }
    }

    /// Output queued before a graceful stop is delivered whole, then EOF.
    #[test]
    fn stop_delivers_the_whole_stream_before_its_fin() {
        let server = start(Config::default(), DumpThenStop);
        let mut client = connect(server.addr);
        client.write_all(b"go").expect("write");
        // Read only once the stop is under way with output queued.
        let stats = server.wait_stats("the dump queued", |s| s.peak_queued_output > 0);
        assert!(stats.queued_output > 0, "{stats:?}");
        let mut got = Vec::new();
        client
            .read_to_end(&mut got)
            .expect("the whole dump, then EOF");
        assert_eq!(got.len(), DUMP);
        assert!(got.iter().all(|&b| b == 9));
        drop(client);
        server.wait_stats("the connection closed", |s| s.closed == 1);
    }
}

// Found in the second review: "one read budget per turn". `serve_ready_queue` serves the
// entries carried from the previous turn, but a carried connection that
// also has an event this turn is read in dispatch (one budget) and then
// again from the queue (a second budget), contrary to the comment "no
// connection gets two budgets in one turn".
mod one_read_budget_per_turn {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::common::{DEADLINE, any_local_address};
    use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId, Reactor};

    const CHUNK: usize = 16;

    /// Consumes everything, answers nothing.
    struct Sink;

    impl Handler for Sink {
        type Conn = ();
        type Message = ();
        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }
        fn on_data(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }
    }

    /// Runs turns (each with a short cap on its wait) until `done`, failing
    /// after DEADLINE; returns the bytes read by each turn that read any.
    fn turns_until(
        reactor: &mut Reactor<Sink>,
        mut done: impl FnMut(&Reactor<Sink>) -> bool,
    ) -> Vec<u64> {
        let deadline = Instant::now() + DEADLINE;
        let mut per_turn = Vec::new();
        while !done(reactor) {
            assert!(Instant::now() < deadline, "timed out driving the reactor");
            let before = reactor.stats().bytes_in;
            reactor
                .run_once(Some(Duration::from_millis(5)))
                .expect("run_once");
            let read = reactor.stats().bytes_in - before;
            if read > 0 {
                per_turn.push(read);
            }
        }
        per_turn
    }

    #[test]
    fn a_carried_connection_with_a_new_event_gets_one_budget_per_turn() {
        let config = Config::default().reads_per_turn(1).read_chunk(CHUNK);
        let mut reactor = Reactor::bind(any_local_address(), config, Sink).expect("bind");
        let mut client =
            std::net::TcpStream::connect(reactor.local_addr().expect("a TCP listener"))
                .expect("connect");
        turns_until(&mut reactor, |r| r.stats().accepted == 1);

        // 4 chunks: the first turn reads one and carries the connection over.
        client.write_all(&[1; 4 * CHUNK]).expect("write");
        let mut per_turn = turns_until(&mut reactor, |r| r.stats().bytes_in > 0);
        // New bytes raise a new edge while the connection is still queued.
        client.write_all(&[2; 4 * CHUNK]).expect("write more");
        per_turn.extend(turns_until(&mut reactor, |r| {
            r.stats().bytes_in == 8 * CHUNK as u64
        }));
        assert!(
            per_turn.iter().all(|&n| n <= CHUNK as u64),
            "with reads_per_turn 1 and read_chunk {CHUNK}, some turn read more than one \
             chunk from the one connection: bytes per turn {per_turn:?}"
        );
    }
}

// Found in the second review: `on_drain` ("reading has resumed and the handler may produce
// more") still runs for a connection the handler already closed, as long
// as the peer's FIN has not arrived: the fix only skips finished ones.
mod no_drain_for_a_closing_connection {
    use std::io::Read;
    use std::sync::mpsc::Sender;

    use crate::common::{Reports, connect, start};
    use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId};

    const REPLY: usize = 12 * 1024 * 1024;

    #[derive(Debug)]
    enum Seen {
        /// `send(id, b"x")` from inside `on_drain`.
        Drain(String),
        Close(#[allow(dead_code)] String),
    }

    /// Greets with a big reply and closes at once (flush, then FIN).
    struct GreetAndClose {
        seen: Sender<Seen>,
    }

    impl Handler for GreetAndClose {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
            cx.send(id, &vec![5u8; REPLY]).expect("under max_output");
            cx.close(id);
        }

        fn on_data(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }

        fn on_drain(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
            let probe = match cx.send(id, b"x") {
                Ok(()) => "Ok".to_string(),
                Err(Error::WriteClosed(_)) => "WriteClosed".to_string(),
                Err(Error::UnknownConnection(_)) => "UnknownConnection".to_string(),
                Err(other) => format!("{other:?}"),
            };
            let _ = self.seen.send(Seen::Drain(probe));
        }

        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: (),
            reason: CloseReason,
        ) {
            let _ = self.seen.send(Seen::Close(format!("{reason:?}")));
        }
    }

    #[test]
    fn on_drain_is_not_called_for_a_connection_the_handler_closed() {
        let (tx, mut reports) = Reports::new();
        let server = start(Config::default(), GreetAndClose { seen: tx });
        let mut client = connect(server.addr);
        server.wait_stats("the greeting backpressured", |s| s.backpressure_pauses > 0);
        // Read everything up to the server's FIN, without sending ours yet: the
        // connection is closing, alive, and fully drained.
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("greeting then FIN");
        assert_eq!(got.len(), REPLY);
        drop(client); // now our FIN: the server finishes the close
        reports.wait_for("on_close", |s| match s {
            Seen::Close(reason) => Ok(reason),
            other => Err(other),
        });
        let drains: Vec<String> = reports
            .untaken()
            .iter()
            .filter_map(|s| match s {
                Seen::Drain(probe) => Some(probe.clone()),
                _ => None,
            })
            .collect();
        assert!(
            drains.is_empty(),
            "on_drain ran after close(); a send from it got {drains:?}"
        );
    }
}

// Found in the second review: a peer that sends exactly `max_input` bytes, which the handler
// holds unconsumed, is closed with `InputLimit` although it sent no more.
// The read that fills `in_room` exactly keeps READABLE set (n == limit),
// and the next loop pass sees `in_room == 0` and calls it an overflow
// without checking that anything more is waiting.
mod exactly_max_input_is_not_an_overflow {
    use std::io::{Read, Write};
    use std::sync::mpsc::Sender;

    use crate::common::{Reports, connect, start};
    use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId};

    const MAX_INPUT: usize = 10;

    #[derive(Debug)]
    enum Seen {
        Held(usize),
        Close(String),
    }

    /// Holds everything on a connection whose data starts with `H` (an
    /// unfinished frame); echoes anything else.
    struct Holder {
        seen: Sender<Seen>,
    }

    impl Handler for Holder {
        type Conn = ();
        type Message = ();

        fn on_open(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _peer: &Addr,
            _listener: ListenerId,
        ) {
        }

        fn on_data(
            &mut self,
            cx: &mut Context<'_, Self::Conn>,
            id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            if data.first() == Some(&b'H') {
                let _ = self.seen.send(Seen::Held(data.len()));
                return 0;
            }
            let _ = cx.send(id, data);
            data.len()
        }

        fn on_close(
            &mut self,
            _cx: &mut Context<'_, Self::Conn>,
            _id: ConnId,
            _: (),
            reason: CloseReason,
        ) {
            let _ = self.seen.send(Seen::Close(format!("{reason:?}")));
        }
    }

    #[test]
    fn exactly_max_input_unconsumed_bytes_is_not_an_overflow() {
        let (tx, mut reports) = Reports::new();
        let server = start(Config::default().max_input(MAX_INPUT), Holder { seen: tx });
        let mut holder = connect(server.addr);
        holder
            .write_all(b"H123456789")
            .expect("write max_input bytes"); // 10 bytes
        let held = reports.wait_for("the bytes held", |s| match s {
            Seen::Held(n) if n == MAX_INPUT => Ok(n),
            other => Err(other),
        });
        assert_eq!(held, MAX_INPUT);
        // Sync: a connection opened now is read no earlier than the turn after
        // the one that read the holder, whose closes (if any) ran at its end.
        let mut probe = connect(server.addr);
        probe.write_all(b"ping").expect("probe write");
        let mut pong = [0; 4];
        probe.read_exact(&mut pong).expect("probe echo");
        let closes: Vec<String> = reports
            .untaken()
            .iter()
            .filter_map(|s| match s {
                Seen::Close(reason) => Some(reason.clone()),
                _ => None,
            })
            .collect();
        let stats = server.stats();
        assert!(
            closes.is_empty(),
            "the peer sent exactly max_input ({MAX_INPUT}) bytes and nothing more, \
             yet was closed: {closes:?} ({stats:?})"
        );
    }
}

// Found in the second review: the REOFFER fix re-offers unconsumed input after the peer's
// FIN was read and `on_eof` ran, so `on_data` runs after `on_eof` ("no more
// bytes will arrive") with bytes the handler already saw and left.
mod no_data_after_eof {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::sync::mpsc::Sender;

    use crate::common::{Reports, connect, start};
    use tcp_reactor::{Addr, CloseReason, Config, ConnId, Context, Handler, ListenerId};

    #[derive(Debug)]
    enum Seen {
        /// `on_data`: the bytes offered, and whether `on_eof` had already run.
        Data {
            data: Vec<u8>,
            after_eof: bool,
        },
        Eof,
        Drain,
        Close(String),
    }

    /// Consumes whole lines only (a trailing partial line is left unconsumed).
    fn whole_lines(data: &[u8]) -> usize {
        data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
    }

    mod drain {
        use super::*;

        /// Well over what the kernel buffers: the reply backpressures.
        const REPLY: usize = 12 * 1024 * 1024;

        /// A server that answers the peer's FIN with a big reply, keeping the
        /// connection half-open until the reply drained, then stops.
        struct BigReplyOnEof {
            seen: Sender<Seen>,
        }

        impl Handler for BigReplyOnEof {
            /// `on_eof` ran.
            type Conn = bool;
            type Message = ();

            fn on_open(
                &mut self,
                _cx: &mut Context<'_, Self::Conn>,
                _id: ConnId,
                _peer: &Addr,
                _listener: ListenerId,
            ) -> bool {
                false
            }

            fn on_data(
                &mut self,
                _cx: &mut Context<'_, Self::Conn>,
                _id: ConnId,
                eof: &mut bool,
                data: &[u8],
            ) -> usize {
                let _ = self.seen.send(Seen::Data {
                    data: data.to_vec(),
                    after_eof: *eof,
                });
                whole_lines(data)
            }

            fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, eof: &mut bool) {
                *eof = true;
                let _ = self.seen.send(Seen::Eof);
                cx.send(id, &vec![b'r'; REPLY]).expect("under max_output");
            }

            fn on_drain(&mut self, cx: &mut Context<'_, Self::Conn>, _id: ConnId, _eof: &mut bool) {
                let _ = self.seen.send(Seen::Drain);
                // The end of this turn is the sync point: any re-offer of this
                // turn has been reported before on_close (Stopped).
                cx.stop();
            }

            fn on_close(
                &mut self,
                _cx: &mut Context<'_, Self::Conn>,
                _id: ConnId,
                _: bool,
                reason: CloseReason,
            ) {
                let _ = self.seen.send(Seen::Close(format!("{reason:?}")));
            }
        }

        #[test]
        fn input_left_at_eof_is_not_offered_again_when_the_reply_drains() {
            let (tx, mut reports) = Reports::new();
            let server = start(Config::default(), BigReplyOnEof { seen: tx });
            let mut client = connect(server.addr);
            client.write_all(b"line\npartial").expect("write");
            client.shutdown(Shutdown::Write).expect("client FIN");
            reports.wait_for("on_eof", |s| match s {
                Seen::Eof => Ok(()),
                other => Err(other),
            });
            server.wait_stats("the reply backpressured", |s| s.backpressure_pauses > 0);
            // Read the reply (the stop may cut its last bytes with a reset).
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got);
            reports.wait_for("on_close", |s| match s {
                Seen::Close(reason) => Ok(reason),
                other => Err(other),
            });
            let after_eof: Vec<String> = reports
                .untaken()
                .iter()
                .filter_map(|s| match s {
                    Seen::Data {
                        data,
                        after_eof: true,
                    } => Some(String::from_utf8_lossy(data).into_owned()),
                    _ => None,
                })
                .collect();
            assert!(
                reports.untaken().iter().any(|s| matches!(s, Seen::Drain)),
                "no on_drain: the test proves nothing; reports: {:?}",
                reports.untaken()
            );
            assert!(
                after_eof.is_empty(),
                "on_data ran after on_eof with input the handler had already left: {after_eof:?}; \
                 all reports: {:?}",
                reports.untaken()
            );
        }
    }

    mod resume {
        use super::*;

        /// Pauses a connection in `on_eof` (say, a server that pauses every
        /// connection while busy); a connection sending `RESUME` resumes every
        /// paused one, and one sending `STOP` stops the reactor.
        struct PauseOnEof {
            seen: Sender<Seen>,
            paused: Vec<ConnId>,
        }

        impl Handler for PauseOnEof {
            type Conn = bool;
            type Message = ();

            fn on_open(
                &mut self,
                _cx: &mut Context<'_, Self::Conn>,
                _id: ConnId,
                _peer: &Addr,
                _listener: ListenerId,
            ) -> bool {
                false
            }

            fn on_data(
                &mut self,
                cx: &mut Context<'_, Self::Conn>,
                id: ConnId,
                eof: &mut bool,
                data: &[u8],
            ) -> usize {
                if data.starts_with(b"RESUME") {
                    for other in self.paused.drain(..) {
                        cx.resume_read(other);
                    }
                    let _ = cx.send(id, b"ok");
                    return data.len();
                }
                if data.starts_with(b"STOP") {
                    cx.stop();
                    return data.len();
                }
                let _ = self.seen.send(Seen::Data {
                    data: data.to_vec(),
                    after_eof: *eof,
                });
                whole_lines(data)
            }

            fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, eof: &mut bool) {
                *eof = true;
                let _ = self.seen.send(Seen::Eof);
                cx.pause_read(id);
                self.paused.push(id);
            }

            fn on_close(
                &mut self,
                _cx: &mut Context<'_, Self::Conn>,
                _id: ConnId,
                _: bool,
                reason: CloseReason,
            ) {
                let _ = self.seen.send(Seen::Close(format!("{reason:?}")));
            }
        }

        #[test]
        fn input_left_at_eof_is_not_offered_again_on_resume() {
            let (tx, mut reports) = Reports::new();
            let server = start(
                Config::default(),
                PauseOnEof {
                    seen: tx,
                    paused: Vec::new(),
                },
            );
            let mut worker = connect(server.addr);
            worker.write_all(b"line\npartial").expect("write");
            worker.shutdown(Shutdown::Write).expect("worker FIN");
            reports.wait_for("on_eof", |s| match s {
                Seen::Eof => Ok(()),
                other => Err(other),
            });
            let mut control = connect(server.addr);
            control.write_all(b"RESUME").expect("RESUME");
            let mut ok = [0; 2];
            control.read_exact(&mut ok).expect("RESUME acknowledged");
            // The resumed connection is served in the turn after RESUME's; STOP
            // is read no earlier than that turn's dispatch, and the stop takes
            // effect at its end, after the ready queue was served.
            control.write_all(b"STOP").expect("STOP");
            reports.wait_for("on_close", |s| match s {
                Seen::Close(reason) => Ok(reason),
                other => Err(other),
            });
            let after_eof: Vec<String> = reports
                .untaken()
                .iter()
                .filter_map(|s| match s {
                    Seen::Data {
                        data,
                        after_eof: true,
                    } => Some(String::from_utf8_lossy(data).into_owned()),
                    _ => None,
                })
                .collect();
            assert!(
                after_eof.is_empty(),
                "on_data ran after on_eof (resume_read re-offered): {after_eof:?}; all reports: {:?}",
                reports.untaken()
            );
        }
    }
}
