//! Per-connection state, one entry of the reactor's slab.
//!
//! An idle connection is a socket, a generation, its lifecycle and a few
//! bits: its buffers live in one optional box that exists only while bytes
//! wait (input the handler left unconsumed, output the kernel would not
//! take).
//!
//! # Lifecycle
//!
//! Where a connection is in its life is one [`Lifecycle`]; every move
//! between them is a method of [`Conn`] below.
//!
//! ```text
//!      connect                          accept
//!         |                               |
//!         v          connect done         v
//!    Connecting -----------------------> Open -------- FIN both ways --------+
//!         |                               |            (two half-closes)     |
//!         | connect done, after           | close                            |
//!         | a close (close_asked)         v                                  |
//!         +----------------------------> Closing -- bytes heard --> Lingering  |
//!                                         |                            |     |
//!                  our FIN out, and the   |   the peer's FIN, or       |     |
//!                  peer's FIN seen or the |   silent for linger_timeout|     |
//!                  peer quiet             |   after our FIN            |     |
//!                                         v                            v     v
//!                                        Dead <------------------------------+
//! ```
//!
//! And from every state to `Dead`: a failed connect, a socket error,
//! `abort`, a limit, a timeout (connect, idle, close), `stop_now`, the
//! drain deadline.
//!
//! `Dead` is the end: the slot is freed and `on_close` runs at the end of
//! the turn (step 7), so no event of the turn's batch reaches a new tenant.
//!
//! Half-closes are not states but bits ([`flag::READ_CLOSED`],
//! [`flag::FIN_PENDING`], [`flag::FIN_SENT`]): an `Open` connection may be
//! half-closed either way, and is ended clean once both ways are.
//!
//! # Words
//!
//! One word per idea, in code and comments alike:
//!
//! - a read finds the socket **empty** (`WouldBlock`, a short read, EOF):
//!   nothing more to read until the next edge (`Conn::mark_empty`);
//! - **backpressure**: queued output at the high water mark stops reading;
//!   it **lifts** when a flush brings the output down to the low water mark
//!   (the handler hears `on_drain`);
//! - a stop's **drain**: after a graceful stop, connections close until the
//!   drain deadline; one that closed cleanly is **drained** in the report;
//! - a connection **ends** (`Dead`): **clean** (a close that went as it
//!   should), **cut** (with a reset), or **as it is** (an error, a timeout);
//! - input is **offered** to the handler (`on_data`); what it did not
//!   consume is **leftover**, offered again with the next bytes (and
//!   **reoffered** without them when reading resumes).

use std::io::{self, Read};

use socket2::Socket;

use crate::ConnId;

/// Where a connection is in its life (see the module docs).
///
/// `repr(u8)`, with `close_asked` beside the tag rather than in a niche of
/// it: each test of the lifecycle is then one byte compare (`is`, `at_rest`
/// and `send` test it on every round trip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Lifecycle {
    /// An outbound connection whose `connect` is under way: output is
    /// queued, nothing is read, and its first writable edge says whether it
    /// is established. `close_asked`: the handler closed it meanwhile; it
    /// is `Closing` as soon as the connect is done.
    Connecting { close_asked: bool },
    /// Established: reading and writing, perhaps half-closed.
    Open,
    /// Graceful close asked: input is discarded, output is flushed, then
    /// FIN; it ends once the peer's FIN is seen, or at once if the peer is
    /// quiet (see `ConnTable::close`).
    Closing,
    /// Closing, and bytes arrived (and were discarded) since the close
    /// began: the peer is still sending, so the close lingers until its FIN
    /// or until it falls silent for `linger_timeout`.
    Lingering,
    /// Ended; the slot is freed (and `on_close` runs) at the end of the
    /// turn.
    Dead,
}

/// The readiness and control bits of a connection, beside its
/// [`Lifecycle`]. A `u16` rather than a dozen `bool`s keeps the slab entry
/// small (see `idle_connection_is_small`).
pub(crate) mod flag {
    // Readiness: what the edges said, and what reading has seen since.

    /// An edge said readable and no read has found the socket empty since.
    pub(crate) const READABLE: u16 = 1 << 0;
    /// The event also said read-closed, error or urgent data: read until
    /// EOF or `WouldBlock`, since no further edge will come for what is
    /// left; a short read does not prove the socket empty.
    pub(crate) const READ_TO_END: u16 = 1 << 1;

    // Read scheduling.

    /// In the ready queue: to be read next turn (readable data is left that
    /// the turn's read budget did not cover, or reading resumed).
    pub(crate) const IN_READY_QUEUE: u16 = 1 << 2;
    /// Reading resumed (`resume_read`, or backpressure lifted) while
    /// leftover input is waiting: offer it again without waiting for new
    /// bytes, which a request/response peer never sends.
    pub(crate) const REOFFER: u16 = 1 << 3;

    // What stops reading.

    /// The handler paused reading (`pause_read`).
    pub(crate) const USER_PAUSED: u16 = 1 << 4;
    /// Backpressure: queued output reached the high water mark (or input
    /// was left unconsumed behind queued output): reading stopped until a
    /// flush brings the output down to the low water mark.
    pub(crate) const BACKPRESSURED: u16 = 1 << 5;

    // Half-closes.

    /// `read` returned 0: the peer's FIN, authoritative (unlike RDHUP hints).
    pub(crate) const READ_CLOSED: u16 = 1 << 6;
    /// Send FIN once the queued output is flushed (`shutdown_write`, and
    /// every `close`).
    pub(crate) const FIN_PENDING: u16 = 1 << 7;
    /// FIN sent: `shutdown(Write)` done.
    pub(crate) const FIN_SENT: u16 = 1 << 8;

    // Who closed first, and the stop: what the close reason and the stop
    // report say.

    /// The peer's FIN came before any local close: the close reason is
    /// `PeerClosed`, not `Local`.
    pub(crate) const PEER_CLOSED_FIRST: u16 = 1 << 9;
    /// The stop closed it (rather than the handler or the peer, before the
    /// stop): a clean end is reported as `CloseReason::Stopped`.
    pub(crate) const STOP_CLOSED: u16 = 1 << 10;
    /// Open when a stop began: how it ends counts in the stop report.
    pub(crate) const IN_STOP_REPORT: u16 = 1 << 11;
    /// `on_drain` is owed when a flush brings the queued output down to
    /// the low water mark, as after `BACKPRESSURED`, but reading goes on
    /// meanwhile: the output reached the high water mark on a connection
    /// whose reading does not stop for it (`Config::output_pauses_reading`
    /// off), or the handler saw `Context::output_backed_up` say `true`.
    pub(crate) const DRAIN_OWED: u16 = 1 << 12;

    // The lifecycle, mirrored.

    /// The lifecycle is not `Open`. Kept by `Conn::set_lifecycle`, the one
    /// place the lifecycle changes, so that the hot paths (`at_rest`,
    /// `send`) test one word rather than the word and the lifecycle.
    pub(crate) const NOT_OPEN: u16 = 1 << 13;

    /// Any of these stops reads (and so do the lifecycles `Connecting` and
    /// `Dead`).
    pub(crate) const NO_READ: u16 = READ_CLOSED | USER_PAUSED | BACKPRESSURED;
    /// Any of these refuses new output. A graceful close sets `FIN_PENDING`,
    /// so this covers `Closing` and `Lingering` too.
    pub(crate) const NO_WRITE: u16 = FIN_PENDING | FIN_SENT;

    /// Every bit above, each once: two branches that each add a bit cannot
    /// give two flags the same one unnoticed (the build fails).
    const _DISTINCT: () = {
        let all = [
            READABLE,
            READ_TO_END,
            IN_READY_QUEUE,
            REOFFER,
            USER_PAUSED,
            BACKPRESSURED,
            READ_CLOSED,
            FIN_PENDING,
            FIN_SENT,
            PEER_CLOSED_FIRST,
            STOP_CLOSED,
            IN_STOP_REPORT,
            DRAIN_OWED,
            NOT_OPEN,
        ];
        let mut seen = 0u16;
        let mut i = 0;
        while i < all.len() {
            assert!(
                all[i].count_ones() == 1 && seen & all[i] == 0,
                "flag bits overlap"
            );
            seen |= all[i];
            i += 1;
        }
    };
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
    /// Where it is in its life.
    pub(crate) lifecycle: Lifecycle,
    /// Readiness and control bits (see [`flag`]).
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
    /// A connection accepted (`Open`) or being connected (`Connecting`).
    pub(crate) fn new(socket: Socket, generation: u32, now_ms: u32, connecting: bool) -> Conn {
        let lifecycle = if connecting {
            Lifecycle::Connecting { close_asked: false }
        } else {
            Lifecycle::Open
        };
        let mut conn = Conn {
            socket,
            generation,
            lifecycle: Lifecycle::Open,
            flags: 0,
            last_active: now_ms,
            bufs: None,
        };
        conn.set_lifecycle(lifecycle);
        conn
    }

    /// Moves to `lifecycle`, and mirrors "not `Open`" in `flag::NOT_OPEN`.
    #[inline]
    fn set_lifecycle(&mut self, lifecycle: Lifecycle) {
        self.lifecycle = lifecycle;
        if lifecycle == Lifecycle::Open {
            self.flags &= !flag::NOT_OPEN;
        } else {
            self.flags |= flag::NOT_OPEN;
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
        self.has(flag::READABLE) && !self.has(flag::NO_READ) && self.reads()
    }

    /// A read found the socket empty (`WouldBlock`, EOF): nothing is left
    /// until the next edge.
    #[inline]
    pub(crate) fn mark_empty(&mut self) {
        self.flags &= !(flag::READABLE | flag::READ_TO_END);
    }

    /// Whether this is the live connection `id` names: the same tenant of
    /// the slot, and not `Dead`.
    #[inline]
    pub(crate) fn is(&self, id: ConnId) -> bool {
        self.generation == id.generation() && self.lifecycle != Lifecycle::Dead
    }

    /// At rest: `Open`, no bit set and no buffer, so nothing is queued
    /// either way, paused, half-closed or scheduled. The common case, which
    /// the loop serves with the fewest tests.
    #[inline]
    pub(crate) fn at_rest(&self) -> bool {
        // `NOT_OPEN` stands for the lifecycle test.
        self.flags == 0 && self.bufs.is_none()
    }

    /// Its `connect` is under way.
    #[inline]
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Connecting { .. })
    }

    /// A graceful close was asked: `Closing`, `Lingering`, or a connect
    /// under way that is to close once done. Its close check is armed.
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::Closing | Lifecycle::Lingering | Lifecycle::Connecting { close_asked: true }
        )
    }

    /// Reading is possible in its lifecycle: established and not ended
    /// (a closing connection reads on, discarding, to see the peer's FIN).
    #[inline]
    fn reads(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::Open | Lifecycle::Closing | Lifecycle::Lingering
        )
    }

    /// `Connecting` to `Open` (or to `Closing`, if a close was asked
    /// meanwhile).
    pub(crate) fn connect_done(&mut self) {
        if let Lifecycle::Connecting { close_asked } = self.lifecycle {
            self.set_lifecycle(if close_asked {
                Lifecycle::Closing
            } else {
                Lifecycle::Open
            });
        }
    }

    /// A graceful close begins: `Open` to `Closing` (a connect under way
    /// closes once done), with FIN pending. Returns `false` if a close had
    /// already begun.
    pub(crate) fn begin_close(&mut self) -> bool {
        match self.lifecycle {
            Lifecycle::Open => self.set_lifecycle(Lifecycle::Closing),
            Lifecycle::Connecting { close_asked: false } => {
                self.set_lifecycle(Lifecycle::Connecting { close_asked: true });
            }
            _ => return false,
        }
        self.flags |= flag::FIN_PENDING;
        true
    }

    /// Bytes arrived while closing: the peer is still sending, so the close
    /// lingers (`Closing` to `Lingering`).
    #[inline]
    pub(crate) fn heard_while_closing(&mut self) {
        if self.lifecycle == Lifecycle::Closing {
            self.set_lifecycle(Lifecycle::Lingering);
        }
    }

    /// The end, from any state.
    #[inline]
    pub(crate) fn mark_dead(&mut self) {
        self.set_lifecycle(Lifecycle::Dead);
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
