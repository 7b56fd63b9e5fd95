//! Serving a connection's input: one read per edge, the handler's share,
//! leftovers kept and offered again, the peer's FIN.

use std::io;
use std::mem::{self, MaybeUninit};

use crate::conn::flag;
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
                // Nothing waits either way: the whole room, straight into
                // the scratch buffer.
                None => limits.read_limit,
                Some(bufs) => {
                    let out_room = limits.high_water.saturating_sub(bufs.queued_output());
                    let in_room = limits.max_input.saturating_sub(bufs.input.len());
                    let limit = limits.read_chunk.min(out_room).min(in_room);
                    if limit == 0 {
                        if in_room == 0 {
                            self.input_full(id);
                        }
                        return;
                    }
                    if !bufs.input.is_empty() {
                        if !self.read_after_leftover(id, limit) {
                            return;
                        }
                        continue;
                    }
                    limit
                }
            };
            let result = conn.read(&mut self.scratch[..limit]);
            if !self.after_read(id, limit, result) {
                return;
            }
        }
    }

    /// Acts on what a read of at most `limit` bytes into the scratch buffer
    /// returned. Returns whether to read again: the read filled its limit,
    /// or the event said to read to the end, or it was interrupted.
    pub(super) fn after_read(
        &mut self,
        id: ConnId,
        limit: usize,
        result: io::Result<usize>,
    ) -> bool {
        let Some(conn) = live_mut(&mut self.engine.table.conns, id) else {
            return false;
        };
        match result {
            Ok(0) => {
                self.peer_eof(id);
                false
            }
            Ok(n) => {
                self.engine.table.stats.bytes_in += n as u64;
                conn.last_active = self.engine.table.clock.now_ms;
                let empty = n < limit && !conn.has(flag::READ_TO_END);
                if empty {
                    // Short read: the socket is empty. Edge-triggered polling will report
                    // bytes that arrive later; no read is spent to see
                    // WouldBlock.
                    conn.flags &= !flag::READABLE;
                }
                if conn.is_closing() {
                    // Discarded; but the peer is still sending, so the
                    // close lingers (see `ConnTable::close`).
                    conn.heard_while_closing();
                } else {
                    self.deliver(id, n);
                }
                // Empty: nothing more to read. A callback that resumed
                // reading has queued the connection to be read.
                !empty
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.mark_empty();
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                self.engine.table.fail(id, e);
                false
            }
        }
    }

    /// Hands `scratch[..n]` to the handler and keeps what it did not consume.
    // Always inlined: it is most of the work of an echo, and a call would
    // also keep the compiler from seeing that a send's fast path returned
    // `Ok` (the `Result` would be dropped out of line).
    #[inline(always)]
    pub(super) fn deliver(&mut self, id: ConnId, n: usize) {
        let index = id.index();
        let Some(mut state) = self.engine.states.get_mut(index).and_then(Option::take) else {
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
            self.keep_unconsumed(id, consumed, n);
        }
    }

    /// What the handler left unconsumed (`scratch[consumed..n]`) is kept
    /// and offered again; and if
    /// output is queued, reading waits for it (see `wait_for_output`).
    #[cold]
    #[inline(never)]
    fn keep_unconsumed(&mut self, id: ConnId, consumed: usize, n: usize) {
        if self.engine.table.get(id).is_some_and(|c| !c.is_closing()) {
            let rest = &self.scratch[consumed..n];
            self.engine.table.buffers(id).input.extend_from_slice(rest);
            self.engine.table.wait_for_output(id);
        }
    }

    /// Reading resumed with unconsumed input waiting (`REOFFER`): offer it
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
            self.offer_input(id, input);
        }
    }

    /// Offers `input` (the connection's unconsumed bytes, taken out of its
    /// buffer) to the handler and puts back what it did not consume.
    #[cold]
    #[inline(never)]
    fn offer_input(&mut self, id: ConnId, mut input: Vec<u8>) {
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

    /// The slow path: bytes are already waiting, so read straight after them
    /// and offer the handler the whole run. Returns whether to read again.
    #[cold]
    #[inline(never)]
    fn read_after_leftover(&mut self, id: ConnId, limit: usize) -> bool {
        let mut input = mem::take(&mut self.engine.table.buffers(id).input);
        let start = input.len();
        input.resize(start + limit, 0);
        let conn = &mut self.engine.table.conns[id.index()];
        let result = conn.read(&mut input[start..]);
        input.truncate(start + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => {
                self.engine.table.buffers(id).input = input;
                self.peer_eof(id);
                false
            }
            Ok(n) => {
                self.engine.table.stats.bytes_in += n as u64;
                conn.last_active = self.engine.table.clock.now_ms;
                if n < limit && !conn.has(flag::READ_TO_END) {
                    conn.flags &= !flag::READABLE;
                }
                self.offer_input(id, input);
                true
            }
            Err(e) => {
                self.engine.table.buffers(id).input = input;
                match e.kind() {
                    io::ErrorKind::Interrupted => true,
                    io::ErrorKind::WouldBlock => {
                        self.engine.table.conns[id.index()].mark_empty();
                        false
                    }
                    _ => {
                        self.engine.table.fail(id, e);
                        false
                    }
                }
            }
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
