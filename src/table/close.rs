//! The close protocol: a graceful close (flush, FIN, then free the slot
//! as soon as that cannot make the kernel reset the connection), the
//! half-close, the abort, the close check that lingers or cuts, and
//! `stop_now`'s close of one connection.

use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;

use super::ConnTable;
use crate::conn::{Conn, Lifecycle, flag};
use crate::timer::{Target, Tick, deadline_after};
use crate::{CloseReason, ConnId};

impl ConnTable {
    /// Graceful close: stop taking input, flush, FIN, then free the slot
    /// as soon as that cannot make the kernel reset the connection.
    ///
    /// The rule (nginx's `lingering_close auto`): closing a socket while
    /// the peer is still sending makes our kernel answer its late bytes
    /// with a reset, which can destroy output the peer has not read yet.
    /// So once the output is flushed and our FIN is out:
    ///
    /// - the peer's FIN already seen: done;
    /// - the peer quiet (nothing arrived since the close began, nothing
    ///   waiting to be read): done at once, with nothing to wait for;
    /// - the peer still sending: linger, reading and discarding, until its
    ///   FIN, or until it has sent nothing for `linger_timeout`.
    ///
    /// All of it within `close_timeout`, past which the close is cut with
    /// a reset (`TimedOut`): a peer that never reads, or never stops
    /// sending, cannot hold the slot forever.
    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        if !conn.begin_close() {
            return;
        }
        // Reading goes on, even if the handler had paused it: input is
        // discarded from now on, but what the peer sends must be seen.
        conn.flags &= !flag::USER_PAUSED;
        if let Some(bufs) = conn.bufs.as_mut() {
            bufs.input.clear();
        }
        let wants_read = conn.wants_read();
        // Armed before anything can end the close: a closing connection
        // always has its one close check pending (see `Timers::disarm`).
        let now = self.clock.read();
        let cut_at = deadline_after(now, self.limits.close_timeout);
        let check = deadline_after(now, self.limits.linger_timeout).min(cut_at);
        self.timers.arm(check, Target::Close { id, cut_at });
        if wants_read {
            self.push_ready(id);
        }
        self.progress_shutdown(id);
    }

    /// Half-close: FIN after the queued output; reading goes on.
    pub(crate) fn shutdown_write(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            conn.flags |= flag::FIN_PENDING;
            self.progress_shutdown(id);
        }
    }

    /// Closes at once with a reset, dropping queued output.
    pub(crate) fn abort(&mut self, id: ConnId) {
        self.cut(id, CloseReason::Aborted);
    }

    /// Moves a pending FIN, and a graceful close, forward as far as the
    /// queued output and the peer allow.
    pub(crate) fn progress_shutdown(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        if !conn.has(flag::FIN_PENDING) || conn.queued_output() > 0 || conn.is_connecting() {
            return;
        }
        if !conn.has(flag::FIN_SENT) {
            conn.flags |= flag::FIN_SENT;
            if let Err(e) = conn.socket.shutdown(Shutdown::Write) {
                self.fail(id, e);
                return;
            }
        }
        // FIN sent and FIN seen: nothing more can pass either way, whether
        // the handler called `close` or `shutdown_write`.
        if conn.has(flag::READ_CLOSED) {
            self.end_clean(id);
        } else if conn.lifecycle == Lifecycle::Closing {
            // Closing, not Lingering: the peer has sent nothing since the
            // close began. Unless something is waiting after all, there is
            // nothing to linger for.
            self.end_if_peer_quiet(id);
        }
    }

    /// Our FIN is out and the peer seems quiet: free the slot now if
    /// nothing waits to be read (closing then makes no reset); else linger,
    /// reading and discarding.
    fn end_if_peer_quiet(&mut self, id: ConnId) {
        match self.input_waiting(id) {
            Ok(false) => self.end_clean(id),
            Ok(true) => {
                let conn = &mut self.conns[id.index()];
                conn.heard_while_closing();
                conn.flags |= flag::READABLE;
                conn.last_active = self.clock.now_ms;
                self.push_ready(id);
            }
            Err(e) => self.fail(id, e),
        }
    }

    /// Whether bytes wait in the kernel for the connection, unread (its FIN
    /// alone does not count: closing over it sends no reset). One `peek`.
    fn input_waiting(&self, id: ConnId) -> io::Result<bool> {
        match self.conns[id.index()]
            .socket
            .peek(&mut [MaybeUninit::uninit()])
        {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // Unknown: assume something waits (the careful answer).
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// A close check came due (see `close`): cut the close if it has run
    /// out of time, end it clean if the peer has been silent for the linger
    /// timeout since our FIN, else check again later.
    pub(crate) fn check_close(&mut self, id: ConnId, cut_at: Tick) {
        // A connection that ended meanwhile disarmed its check.
        let Some(conn) = self.get(id) else {
            return;
        };
        let now = self.clock.now;
        if now >= cut_at {
            self.time_out(id, true);
            return;
        }
        let linger = self.limits.linger_timeout;
        let mut next = deadline_after(now, linger);
        if conn.has(flag::FIN_SENT) {
            match self.quiet_time_left(conn, linger) {
                None => {
                    self.end_if_peer_quiet(id);
                    if self.get(id).is_none() {
                        return;
                    }
                }
                Some(left) => next = deadline_after(now, left),
            }
        }
        self.timers
            .schedule(next.min(cut_at), Target::Close { id, cut_at });
    }

    /// `stop_now` for one connection: one last flush, then closed as it
    /// is if that loses nothing (no output left, no input unread that would
    /// make the kernel reset it), else cut with a reset and counted as
    /// forced.
    pub(crate) fn end_at_once(&mut self, id: ConnId) {
        if self.get(id).is_some_and(Conn::is_connecting) {
            self.cut(id, CloseReason::Stopped);
            return;
        }
        self.flush(id);
        let Some(conn) = self.get(id) else {
            return;
        };
        let cut = conn.queued_output() > 0 || !matches!(self.input_waiting(id), Ok(false));
        if cut {
            self.cut(id, CloseReason::Stopped);
        } else {
            self.end_clean(id);
        }
    }
}
