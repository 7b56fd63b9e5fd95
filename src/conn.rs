//! Per-connection state, one entry of the reactor's slab.
//!
//! An idle connection is a socket, a generation and a few flag bits: its
//! buffers live in one optional box that exists only while bytes wait
//! (input the handler left unconsumed, output the kernel would not take).

use std::io::{self, Read};

use socket2::Socket;

use crate::ConnId;

/// State bits of a connection. A `u16` rather than a dozen `bool`s keeps the
/// slab entry small (see `idle_connection_is_small`).
pub(crate) mod flag {
    /// An edge said readable and no read has seen the socket drained since.
    pub(crate) const READABLE: u16 = 1 << 0;
    /// The event also said read-closed, error or urgent data: read until
    /// EOF or `WouldBlock`, since no further edge will come for what is left.
    pub(crate) const DRAIN_TO_END: u16 = 1 << 1;
    /// `read` returned 0: the peer's FIN, authoritative (unlike RDHUP hints).
    pub(crate) const READ_CLOSED: u16 = 1 << 2;
    /// The peer's FIN came before any local close: the close reason is
    /// `PeerClosed`, not `Local`.
    pub(crate) const PEER_CLOSED_FIRST: u16 = 1 << 3;
    /// Send FIN once the queued output is flushed (`shutdown_write`, `close`).
    pub(crate) const SHUTDOWN_PENDING: u16 = 1 << 4;
    /// FIN sent: `shutdown(Write)` done.
    pub(crate) const WRITE_SHUT: u16 = 1 << 5;
    /// Graceful close asked: input is discarded, the slot is freed once
    /// output is flushed, FIN is sent and the peer's FIN is seen.
    pub(crate) const CLOSING: u16 = 1 << 6;
    /// The handler paused reading (`pause_read`).
    pub(crate) const USER_PAUSED: u16 = 1 << 7;
    /// Queued output reached the high water mark: reading stopped until it
    /// falls to the low water mark.
    pub(crate) const BACKPRESSURED: u16 = 1 << 8;
    /// In the ready queue: readable data is left that the turn's read budget
    /// did not cover.
    pub(crate) const IN_READY_QUEUE: u16 = 1 << 9;
    /// Closed; the slot is freed (and `on_close` runs) at the end of the turn.
    pub(crate) const DEAD: u16 = 1 << 10;
    /// Reading resumed (`resume_read`, or out of backpressure) while input
    /// the handler left unconsumed is waiting: offer it again without
    /// waiting for new bytes, which a request/response peer never sends.
    pub(crate) const REOFFER: u16 = 1 << 11;
    /// Open when a stop began: how it ends counts in the stop report.
    pub(crate) const STOPPING: u16 = 1 << 12;
    /// The stop closed it (rather than the handler or the peer, before the
    /// stop): a clean end is reported as `CloseReason::Stopped`.
    pub(crate) const STOP_CLOSED: u16 = 1 << 13;
    /// Bytes arrived (and were discarded) while closing: the peer is still
    /// sending, so the close lingers until it falls silent or sends its FIN
    /// (see `ConnTable::close`).
    pub(crate) const HEARD_WHILE_CLOSING: u16 = 1 << 14;
    /// An outbound connection whose `connect` has not finished: output is
    /// queued, nothing is read, and its first writable edge says whether it
    /// is established.
    pub(crate) const CONNECTING: u16 = 1 << 15;

    /// Any of these stops reads.
    pub(crate) const NO_READ: u16 = READ_CLOSED | USER_PAUSED | BACKPRESSURED | DEAD | CONNECTING;
    /// Any of these refuses new output.
    pub(crate) const NO_WRITE: u16 = SHUTDOWN_PENDING | WRITE_SHUT | CLOSING | DEAD;
}

/// Flags of every `send`: `MSG_NOSIGNAL` where it exists. Elsewhere
/// (Apple's systems) the socket gets `SO_NOSIGPIPE` when it is accepted.
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: libc::c_int = 0;

/// One `send` of `data` on `socket`. A peer that has gone raises `EPIPE` on
/// its connection, never `SIGPIPE` on the process (see `SEND_FLAGS`).
#[inline]
pub(crate) fn send(socket: &Socket, data: &[u8]) -> io::Result<usize> {
    socket.send_with_flags(data, SEND_FLAGS)
}

/// One connection's slab entry.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The connection's socket, held as a plain socket2 `Socket`: its
    /// `recv` and `send` go straight to libc, which costs a third of what
    /// mio's and std's layers add to each call.
    pub(crate) socket: Socket,
    /// The generation in this connection's tokens and ids; events and ids
    /// with another generation belong to an earlier tenant of the slot.
    pub(crate) generation: u32,
    pub(crate) flags: u16,
    /// When a read or write last moved bytes, in the loop clock's
    /// milliseconds (`Clock::now_ms`): what the idle timeout and a
    /// lingering close check.
    /// Stamped from the clock read once per turn, so activity costs a store.
    pub(crate) last_active: u32,
    /// Present only while bytes wait in either direction.
    pub(crate) bufs: Option<Box<Buffers>>,
}

/// Bytes waiting on one connection.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// Input the handler has not consumed yet; offered again with the next
    /// bytes.
    pub(crate) input: Vec<u8>,
    /// Output the kernel has not taken yet; `output[output_start..]` is
    /// still to send.
    pub(crate) output: Vec<u8>,
    pub(crate) output_start: usize,
}

impl Buffers {
    #[inline]
    pub(crate) fn queued_output(&self) -> usize {
        self.output.len() - self.output_start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty() && self.queued_output() == 0
    }

    /// Appends to the output, first dropping the sent prefix once it is at
    /// least half the buffer, so the copy is amortised O(1) per byte.
    pub(crate) fn push_output(&mut self, data: &[u8]) {
        if self.output_start > 0 && self.output_start * 2 >= self.output.len() {
            self.output.drain(..self.output_start);
            self.output_start = 0;
        }
        self.output.extend_from_slice(data);
    }
}

impl Conn {
    pub(crate) fn new(socket: Socket, generation: u32, now_ms: u32) -> Conn {
        Conn {
            socket,
            generation,
            flags: 0,
            last_active: now_ms,
            bufs: None,
        }
    }

    /// One `recv` into `buf`.
    #[inline]
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }

    /// One `send` of `data`.
    #[inline]
    pub(crate) fn write(&self, data: &[u8]) -> io::Result<usize> {
        send(&self.socket, data)
    }

    #[inline]
    pub(crate) fn has(&self, bits: u16) -> bool {
        self.flags & bits != 0
    }

    #[inline]
    pub(crate) fn queued_output(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.queued_output())
    }

    #[inline]
    pub(crate) fn has_input(&self) -> bool {
        self.bufs.as_ref().is_some_and(|b| !b.input.is_empty())
    }

    /// An edge said readable and nothing stops reading.
    #[inline]
    pub(crate) fn wants_read(&self) -> bool {
        self.has(flag::READABLE) && !self.has(flag::NO_READ)
    }

    /// A read saw `WouldBlock` or EOF: nothing is left until the next edge.
    #[inline]
    pub(crate) fn mark_drained(&mut self) {
        self.flags &= !(flag::READABLE | flag::DRAIN_TO_END);
    }

    /// Whether this is the live connection `id` names: the same tenant of
    /// the slot, and not closed.
    #[inline]
    pub(crate) fn is(&self, id: ConnId) -> bool {
        self.generation == id.generation() && !self.has(flag::DEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_is_small() {
        // The per-connection memory target is 0.1 KiB: the slab entry is
        // the whole of it while a connection is idle.
        // mio adds an 8-byte selector id to each socket in debug builds.
        let limit = if cfg!(debug_assertions) { 40 } else { 24 };
        let size = std::mem::size_of::<Conn>();
        assert!(size <= limit, "a connection's slab entry is {size} bytes");
    }

    #[test]
    fn push_output_compacts_the_sent_prefix() {
        let mut bufs = Buffers::default();
        bufs.push_output(b"abcdef");
        bufs.output_start = 4;
        bufs.push_output(b"gh");
        assert_eq!(bufs.output_start, 0);
        assert_eq!(bufs.output, b"efgh");
        assert_eq!(bufs.queued_output(), 4);
    }
}
