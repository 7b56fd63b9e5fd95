//! `Echo`: the handler behind the `echo_reactor` example, also used by the
//! tests and benchmarks.

use crate::{Addr, ConnId, Context, Handler, ListenerId};

/// Sends every byte back on the connection it came from.
///
/// After the peer's FIN it flushes what is still queued, then closes (the
/// default [`Handler::on_eof`]): a half-closing client gets its whole echo.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _: ListenerId,
    ) {
        log::debug!("conn {id}: open from {peer}");
    }

    // Always inlined into the loop: a call costs a fifth of the echo.
    #[inline(always)]
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _conn: &mut (),
        data: &[u8],
    ) -> usize {
        // The reactor reads no more than the room left under the write high
        // water mark, so this cannot pass `max_output`; a closed
        // connection's error is reported through `on_close`.
        let _ = cx.send(id, data);
        data.len()
    }
}
