//! Regressions: each test pins a bug found in review, named after what
//! went wrong. All failed before their fix.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc::{self, Sender};

use common::{DEADLINE, connect, start};
use tcp_reactor::{CloseReason, Config, ConnId, Context, Error, Handler};

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

        fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: SocketAddr) {}

        fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
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

        fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: SocketAddr) {}

        fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
            let _ = cx.send(id, b"bye");
            cx.close(id);
            // E.g. a "pause everything while busy" sweep that also reaches a
            // connection it just closed.
            cx.pause_read(id);
            data.len()
        }

        fn on_close(&mut self, _cx: &mut Context<'_>, id: ConnId, _: (), reason: CloseReason) {
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

        fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: SocketAddr) {}

        fn on_data(
            &mut self,
            _cx: &mut Context<'_>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }

        fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            let _ = cx.send(id, b"bye");
            cx.shutdown_write(id);
        }

        fn on_close(&mut self, _cx: &mut Context<'_>, _id: ConnId, _: (), reason: CloseReason) {
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

        fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: SocketAddr) {}

        fn on_data(
            &mut self,
            _cx: &mut Context<'_>,
            _id: ConnId,
            _: &mut (),
            data: &[u8],
        ) -> usize {
            data.len()
        }

        fn on_eof(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            let _ = cx.send(id, &vec![7u8; REPLY]);
            cx.close(id);
        }

        fn on_drain(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut ()) {
            let probe = cx.send(id, b"").map_err(|e| match e {
                Error::UnknownConnection(_) => "UnknownConnection".to_string(),
                other => format!("{other:?}"),
            });
            let _ = self.seen.send(Seen::Drain(probe));
        }

        fn on_close(&mut self, _cx: &mut Context<'_>, _id: ConnId, _: (), reason: CloseReason) {
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
// FIN, so the peer took a truncated stream for a complete one.

mod stop {
    use super::*;

    const DUMP: usize = 8 * 1024 * 1024;

    struct DumpThenStop;

    impl Handler for DumpThenStop {
        type Conn = ();

        fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: SocketAddr) {}

        fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
            cx.send(id, &vec![9u8; DUMP]).expect("under max_output");
            cx.close(id); // graceful: flush, then FIN
            cx.stop();
            data.len()
        }
    }

    /// A graceful drain on stop (with a deadline) belongs to the time and
    /// control work; until then the promise is that a cut stream never
    /// looks complete: all of it then EOF, or a reset.
    #[test]
    fn stop_never_passes_a_truncated_stream_off_as_complete() {
        let server = start(Config::default(), DumpThenStop);
        let mut client = connect(server.addr);
        client.write_all(b"go").expect("write");
        // Read only once the reactor has stopped (output queued, then `stop`).
        let stats = server.wait_stats("the reactor stopped", |s| s.closed == 1 && s.active == 0);
        assert!(
            stats.peak_queued_output > 0,
            "nothing was queued: the test proves nothing"
        );
        let mut got = Vec::new();
        let end = client.read_to_end(&mut got);
        match end {
            Ok(_) => assert_eq!(got.len(), DUMP, "a clean EOF after a cut stream"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}
