//! A handler that produces output on its own (here from `on_open`, as it
//! might from a timer, a source or a message) and stops as soon as
//! `Context::output_backed_up` says so is told when to go on: `on_drain`
//! runs once the output falls to the low water mark, even though it never
//! reached the high water mark (before, only the high water mark owed an
//! `on_drain`, and such a producer stalled for ever).

mod common;

use std::io::Read;

use common::{connect, pattern_bytes, start};
use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId};

/// Bytes the producer sends to each client.
const TOTAL: usize = 8 * 1024 * 1024;
/// One chunk; well below the high water mark, so the producer stops at
/// `output_backed_up` long before backpressure would stop reading.
const CHUNK: usize = 4096;

struct Producer {
    data: Vec<u8>,
}

impl Producer {
    /// Sends chunks until the output backs up or everything is sent; the
    /// state is how far it got.
    fn produce(&self, cx: &mut Context<'_, usize>, id: ConnId, sent: &mut usize) {
        while *sent < TOTAL && !cx.output_backed_up(id) {
            let end = (*sent + CHUNK).min(TOTAL);
            if cx.send(id, &self.data[*sent..end]).is_err() {
                return;
            }
            *sent = end;
        }
        if *sent == TOTAL {
            cx.close(id);
        }
    }
}

impl Handler for Producer {
    type Conn = usize;
    type Message = ();

    fn on_open(&mut self, _: &mut Context<'_, usize>, _: ConnId, _: &Addr, _: ListenerId) -> usize {
        0
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, usize>,
        id: ConnId,
        sent: &mut usize,
        data: &[u8],
    ) -> usize {
        // The client's one byte says "start".
        self.produce(cx, id, sent);
        data.len()
    }

    fn on_drain(&mut self, cx: &mut Context<'_, usize>, id: ConnId, sent: &mut usize) {
        self.produce(cx, id, sent);
    }
}

#[test]
fn a_producer_stopped_by_output_backed_up_hears_on_drain_and_finishes() {
    let data = pattern_bytes(7, TOTAL);
    let config = Config::default();
    assert!(config.write_high_water > config.write_low_water + CHUNK);
    let server = start(config, Producer { data: data.clone() });
    let mut client = connect(server.addr);
    std::io::Write::write_all(&mut client, b"go").expect("start");
    let mut received = Vec::with_capacity(TOTAL);
    // Read until the server's FIN (it closes after the last byte); the
    // read timeout (the tests' deadline) fails a stalled producer.
    client
        .read_to_end(&mut received)
        .expect("every byte, then EOF");
    assert_eq!(received.len(), TOTAL, "bytes received");
    assert!(received == data, "the bytes, in order");
}
