//! `Config::output_pauses_reading(false)`, what a proxy needs: a connection
//! whose own output is backed up is still read, and `on_drain` still comes
//! when that output falls to the low water mark.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc::Sender;

use common::{Reports, connect, pattern_bytes, start};
use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId};

/// What the server sends each client as soon as it connects: far above
/// the high water mark, so most of it waits in the output queue.
const GREETING: usize = 4 * 1024 * 1024;

/// What the client sends without reading the greeting.
const UPLOAD: usize = 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Report {
    /// Bytes read from the client so far, and the output still queued then.
    Read {
        total: usize,
        queued: usize,
    },
    Drained,
}

/// Greets with [`GREETING`] bytes, reads everything, reports.
struct Greeter {
    reports: Sender<Report>,
}

impl Handler for Greeter {
    type Conn = usize; // bytes read
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, usize>,
        id: ConnId,
        _: &Addr,
        _: ListenerId,
    ) -> usize {
        cx.send(id, &pattern_bytes(7, GREETING))
            .expect("greeting queued");
        0
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, usize>,
        id: ConnId,
        total: &mut usize,
        data: &[u8],
    ) -> usize {
        *total += data.len();
        let queued = cx.pending_output(id);
        let _ = self.reports.send(Report::Read {
            total: *total,
            queued,
        });
        data.len()
    }

    fn on_drain(&mut self, _: &mut Context<'_, usize>, _: ConnId, _: &mut usize) {
        let _ = self.reports.send(Report::Drained);
    }
}

#[test]
fn a_connection_with_backed_up_output_is_still_read_and_on_drain_comes() {
    let (tx, mut reports) = Reports::new();
    let config = Config::default().output_pauses_reading(false);
    let high_water = config.write_high_water;
    let server = start(config, Greeter { reports: tx });
    let mut client = connect(server.addr);
    client
        .write_all(&pattern_bytes(8, UPLOAD))
        .expect("the upload goes out");
    // The client has read nothing: the greeting is still queued above the
    // high water mark, and yet the whole upload reaches the handler.
    let queued_at_end = reports.wait_for("the whole upload read", |r| match r {
        Report::Read { total, queued } if total == UPLOAD => Ok(queued),
        other => Err(other),
    });
    assert!(
        queued_at_end >= high_water,
        "the greeting should still be backed up ({queued_at_end} bytes queued)"
    );
    let mut greeting = vec![0; GREETING];
    client
        .read_exact(&mut greeting)
        .expect("the whole greeting");
    assert!(greeting == pattern_bytes(7, GREETING), "greeting intact");
    reports.wait_for("on_drain", |r| match r {
        Report::Drained => Ok(()),
        other => Err(other),
    });
    let drains = reports
        .untaken()
        .iter()
        .filter(|r| **r == Report::Drained)
        .count();
    assert_eq!(drains, 0, "on_drain once: {:?}", reports.untaken());
}
