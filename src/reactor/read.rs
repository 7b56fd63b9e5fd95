//! Serving a connection's input: one read per edge, the handler's share,
//! leftovers kept and offered again, the peer's FIN.

use std::io;
use std::mem::{self, MaybeUninit};

use crate::conn::{Conn, flag};
use crate::table::live_mut;
use crate::{CloseReason, ConnId, Context, Handler};

use super::Core;

impl<H: Handler> Core<H> {
    /// Backpressure lifted (a flush brought the queued output down to the
    /// low water mark): tell the handler (`on_drain`); reading resumes (and
    /// leftover input is reoffered) in `read_connection`.
    #[cold]
    pub(super) fn backpressure_lifted(&mut self, id: ConnId) {
        self.with_state(id, |handler, cx, state| handler.on_drain(cx, id, state));
    }

    /// Calls `f` with the handler, a `Context` and `id`'s state, moved out
    /// of its slot for the call (so the `Context` can reach every other
    /// connection's state) and put back after. Nothing for a connection
    /// with no state (before `on_open`, after `on_close`).
    #[inline(always)]
    pub(super) fn with_state<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Context<'_, H::Conn>, &mut H::Conn) -> R,
    ) -> Option<R> {
        let index = id.index();
        let mut state = self.engine.states.get_mut(index).and_then(Option::take)?;
        let result = f(
            &mut self.handler,
            &mut Context::new(&mut self.engine),
            &mut state,
        );
        // `states` never shrinks: the slot is still there.
        if let Some(slot) = self.engine.states.get_mut(index) {
            *slot = Some(state);
        }
        Some(result)
    }

    /// Reads while the connection has data, nothing stops reading and the
    /// turn's budget lasts; one read per edge unless a read fills its buffer.
    pub(super) fn read_connection(&mut self, id: ConnId, mut budget: usize) {
        loop {
            let Some(conn) = live_mut(&mut self.engine.table.conns, id) else {
                return;
            };
            if conn.has(flag::REOFFER) {
                // Clears the flag: this runs once.
                self.reoffer_input(id);
                continue;
            }
            if !conn.wants_read() {
                return;
            }
            if budget == 0 {
                self.engine.table.push_ready(id);
                return;
            }
            budget -= 1;
            let limits = &self.engine.table.limits;
            let limit = match conn.bufs.as_deref() {
                // Nothing waits either way: the whole room.
                None => limits.read_limit,
                Some(bufs) => {
                    let out_room = if limits.output_pauses_reading {
                        limits.high_water.saturating_sub(bufs.queued_output())
                    } else {
                        limits.read_chunk
                    };
                    let in_room = limits.max_input.saturating_sub(bufs.input.len());
                    let limit = limits.read_chunk.min(out_room).min(in_room);
                    if limit == 0 {
                        if in_room == 0 {
                            self.input_full(id);
                        }
                        return;
                    }
                    limit
                }
            };
            if !self.read_once::<false>(id, limit) {
                return;
            }
        }
    }

    /// One read of at most `limit` bytes into the scratch buffer, and what
    /// follows from it: the bytes are counted and stamped, the socket noted
    /// empty or not, and the bytes offered to the handler (after any
    /// leftover), or discarded while closing; or the peer's FIN is taken,
    /// or the error. Returns whether to read again: the read filled its
    /// limit, or the event said to read to the end, or it was interrupted.
    ///
    /// The one after-read step of every read: the fast path of
    /// `connection_event` (`AT_REST`), `read_connection`'s budgeted reads,
    /// and so the reads behind leftover input. Every read goes into the
    /// scratch buffer: no limit is longer (`read_limit` caps them all).
    ///
    /// `AT_REST` says the caller found the connection at rest
    /// (`Conn::at_rest`) just before: open, no bit set, no buffer. The tests
    /// that cannot then succeed (read to the end? closing? leftover?) are
    /// left out at compile time, so the fast path costs what it did when it
    /// was written apart. The read is made here, with the connection
    /// looked up once: the caller's lookup and this one fold together, and
    /// nothing is looked up again after the `recv`.
    // Always inlined: the fast path is most of an echo's work, and a call
    // would also keep the compiler from seeing what `AT_REST` leaves out.
    #[inline(always)]
    pub(super) fn read_once<const AT_REST: bool>(&mut self, id: ConnId, limit: usize) -> bool {
        let Some(conn) = live_mut(&mut self.engine.table.conns, id) else {
            return false;
        };
        match conn.read(&mut self.scratch[..limit]) {
            Ok(0) => {
                self.peer_eof(id);
                false
            }
            Ok(n) => {
                self.engine.table.stats.bytes_in += n as u64;
                conn.last_active = self.engine.table.clock.now_ms;
                // Short read: the socket is empty. Edge-triggered polling
                // will report bytes that arrive later; no read is spent to
                // see WouldBlock. Unless the event said to read to the end
                // (at rest, it did not: `is_plain_readable`).
                let empty = n < limit && (AT_REST || !conn.has(flag::READ_TO_END));
                if !empty {
                    // The read filled its limit (or the event said to read
                    // to the end): more to read.
                    conn.flags |= flag::READABLE;
                } else if !AT_REST {
                    // (At rest, READABLE is clear already.)
                    conn.flags &= !flag::READABLE;
                }
                if !AT_REST && conn.is_closing() {
                    // Discarded; but the peer is still sending, so the
                    // close lingers (see `ConnTable::close`).
                    conn.heard_while_closing();
                } else if empty {
                    // The common case. It returns on its own, so nothing
                    // is kept across the handler's call; and a callback
                    // that resumed reading has queued the connection to be
                    // read.
                    self.offer::<AT_REST>(id, n);
                    return false;
                } else {
                    self.offer_filled(id, n);
                }
                !empty
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.mark_empty();
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // Still readable: read again.
                conn.flags |= flag::READABLE;
                true
            }
            Err(e) => {
                self.engine.table.fail(id, e);
                false
            }
        }
    }

    /// Offers `scratch[..n]` to the handler and keeps what it did not
    /// consume; after the leftover, if there is one (never `AT_REST`).
    // Always inlined: it is most of the work of an echo, and a call would
    // also keep the compiler from seeing that a send's fast path returned
    // `Ok` (the `Result` would be dropped out of line).
    #[inline(always)]
    fn offer<const AT_REST: bool>(&mut self, id: ConnId, n: usize) {
        if !AT_REST && self.engine.table.get(id).is_some_and(Conn::has_input) {
            self.offer_after_leftover(id, n);
            return;
        }
        let index = id.index();
        // Tested, then taken: one compare and one store (a bare `take`
        // loads, stores and then compares).
        let Some(slot) = self.engine.states.get_mut(index).filter(|s| s.is_some()) else {
            return;
        };
        let Some(mut state) = slot.take() else {
            return;
        };
        let data = &self.scratch[..n];
        let consumed = self
            .handler
            .on_data(&mut Context::new(&mut self.engine), id, &mut state, data)
            .min(n);
        // `states` never shrinks: the slot is still there.
        if let Some(slot) = self.engine.states.get_mut(index) {
            *slot = Some(state);
        }
        if consumed < n {
            self.keep_leftover(id, consumed, n);
        }
    }

    /// `offer` for a read that filled its limit, out of line: the fast
    /// path inlines `offer` once, for the short read of a request.
    #[inline(never)]
    fn offer_filled(&mut self, id: ConnId, n: usize) {
        self.offer::<false>(id, n);
    }

    /// What the handler left unconsumed (`scratch[consumed..n]`) is kept
    /// and offered again; and if output is queued, reading waits for it
    /// (see `wait_for_output`).
    #[cold]
    #[inline(never)]
    fn keep_leftover(&mut self, id: ConnId, consumed: usize, n: usize) {
        if self.engine.table.get(id).is_some_and(|c| !c.is_closing()) {
            let rest = &self.scratch[consumed..n];
            self.engine.table.buffers(id).input.extend_from_slice(rest);
            self.engine.table.wait_for_output(id);
        }
    }

    /// Bytes just read (`scratch[..n]`) follow leftover input: the handler
    /// is offered the whole run, leftover first.
    #[cold]
    #[inline(never)]
    fn offer_after_leftover(&mut self, id: ConnId, n: usize) {
        let mut input = mem::take(&mut self.engine.table.buffers(id).input);
        input.extend_from_slice(&self.scratch[..n]);
        self.offer_leftover(id, input);
    }

    /// Reading resumed with leftover input waiting (`REOFFER`): offer it
    /// again now, since the peer may be waiting for an answer and send
    /// nothing more.
    #[cold]
    fn reoffer_input(&mut self, id: ConnId) {
        let Some(conn) = self.engine.table.get_mut(id) else {
            return;
        };
        if !conn.has(flag::REOFFER) {
            return;
        }
        conn.flags &= !flag::REOFFER;
        // After the peer's FIN, `on_eof` has said the last word on input.
        let stopped = flag::USER_PAUSED | flag::BACKPRESSURED | flag::READ_CLOSED;
        if conn.has_input() && !conn.has(stopped) && !conn.is_closing() {
            let input = mem::take(&mut self.engine.table.buffers(id).input);
            self.offer_leftover(id, input);
        }
    }

    /// Offers `input` (leftover taken out of the connection's buffer,
    /// perhaps with new bytes after it) to the handler and puts back what
    /// it did not consume.
    #[cold]
    #[inline(never)]
    fn offer_leftover(&mut self, id: ConnId, mut input: Vec<u8>) {
        let consumed = self.with_state(id, |handler, cx, state| {
            handler.on_data(cx, id, state, &input)
        });
        input.drain(..consumed.unwrap_or(0).min(input.len()));
        // Put the leftover back unless the connection closed meanwhile.
        if self.engine.table.get(id).is_some_and(|c| !c.is_closing()) {
            self.engine.table.buffers(id).input = input;
            self.engine.table.release_buffers_if_empty(id);
            self.engine.table.wait_for_output(id);
        }
    }

    /// The handler holds `max_input` unconsumed bytes. Only a byte more is
    /// an overflow: peek for one (the last read may have taken exactly the
    /// room left, and then nothing more may come).
    #[cold]
    fn input_full(&mut self, id: ConnId) {
        let conn = &mut self.engine.table.conns[id.index()];
        match conn.socket.peek(&mut [MaybeUninit::uninit()]) {
            Ok(0) => self.peer_eof(id),
            Ok(_) => self.input_overflow(id),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.mark_empty(),
            // Still readable: peek again next turn.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.engine.table.push_ready(id),
            Err(e) => self.engine.table.fail(id, e),
        }
    }

    /// The peer sent more than `max_input` that the handler would not
    /// consume: its fault, so its connection alone is closed.
    #[cold]
    fn input_overflow(&mut self, id: ConnId) {
        log::debug!(
            "conn {id}: more than {} bytes of unconsumed input",
            self.engine.table.limits.max_input
        );
        self.engine.table.stats.limit_closes += 1;
        self.engine.table.cut(id, CloseReason::InputLimit);
    }

    /// `read` returned 0: the peer's FIN.
    fn peer_eof(&mut self, id: ConnId) {
        let Some(conn) = self.engine.table.get_mut(id) else {
            return;
        };
        conn.flags |= flag::READ_CLOSED;
        conn.mark_empty();
        if conn.is_closing() {
            self.engine.table.progress_shutdown(id);
            return;
        }
        if !conn.has(flag::FIN_PENDING) {
            conn.flags |= flag::PEER_CLOSED_FIRST;
        }
        self.with_state(id, |handler, cx, state| handler.on_eof(cx, id, state));
        // Our FIN may already be out (`shutdown_write`): then both ways are
        // closed and the connection is done.
        self.engine.table.progress_shutdown(id);
    }
}
