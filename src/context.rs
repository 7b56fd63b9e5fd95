//! What a handler callback may do: the `Context` it is given.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::stop::StopRequest;
use crate::table::ConnTable;
use crate::timer::{MIN_INTERVAL, deadline_after};
use crate::{ConnId, Error, Stats, TimerId};

/// Lets a [`Handler`](crate::Handler) callback act on any connection of its
/// reactor.
///
/// Effects are immediate where they can be (`send` writes to the socket at
/// once when nothing is queued) and deferred where they must be: a closed
/// connection's `on_close` runs after the current callback returns.
/// Calls naming a connection that has closed are refused (`send`) or
/// ignored (`close`, `abort`, ...); they never reach another connection.
#[derive(Debug)]
pub struct Context<'a> {
    table: &'a mut ConnTable,
}

impl<'a> Context<'a> {
    #[inline]
    pub(crate) fn new(table: &'a mut ConnTable) -> Context<'a> {
        Context { table }
    }

    /// Sends `data` to connection `id`: written to the socket at once when
    /// nothing is queued, the rest queued and flushed when the socket is
    /// writable. A socket error closes the connection (reported through
    /// `on_close`), it does not fail the send.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] for a closed id, [`Error::WriteClosed`]
    /// after `close` or `shutdown_write`, [`Error::OutputLimit`] when the
    /// queue would pass `max_output` (the connection is then aborted).
    #[inline]
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        self.table.send(id, data)
    }

    /// Closes gracefully: input is ignored from now on, queued output is
    /// flushed, then FIN; the slot is freed when the peer's FIN arrives.
    pub fn close(&mut self, id: ConnId) {
        self.table.close(id);
    }

    /// Closes at once: queued output is dropped and the peer gets a reset.
    pub fn abort(&mut self, id: ConnId) {
        self.table.abort(id);
    }

    /// Half-closes: FIN once queued output is flushed; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) {
        self.table.shutdown_write(id);
    }

    /// Stops reading from `id` until [`resume_read`](Self::resume_read);
    /// the kernel buffers what arrives and TCP flow control slows the peer.
    pub fn pause_read(&mut self, id: ConnId) {
        self.table.pause_read(id);
    }

    /// Resumes reading from `id`; bytes that arrived meanwhile are read on
    /// the next loop turn.
    pub fn resume_read(&mut self, id: ConnId) {
        self.table.resume_read(id);
    }

    /// Bytes queued for `id` that the kernel has not taken yet (0 for a
    /// closed id).
    pub fn pending_output(&self, id: ConnId) -> usize {
        self.table.get(id).map_or(0, |c| c.queued_output())
    }

    /// The peer's address, asked of the kernel (`getpeername`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] for a closed id; [`Error::Connection`]
    /// when the kernel has no address, for example after the peer reset.
    pub fn peer_addr(&self, id: ConnId) -> Result<SocketAddr, Error> {
        let conn = self.table.get(id).ok_or(Error::UnknownConnection(id))?;
        let address = conn.socket.peer_addr().and_then(|address| {
            address
                .as_socket()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
        });
        address.map_err(|source| Error::Connection {
            id,
            op: "getpeername",
            source,
        })
    }

    /// The reactor's counters as of now.
    pub fn stats(&self) -> Stats {
        self.table.stats
    }

    /// Sets a one-shot timer: [`Handler::on_timer`](crate::Handler::on_timer)
    /// runs with `key` once `after` has passed, in a turn's timer step
    /// (after its I/O). A timer set from `on_timer` waits for the next turn,
    /// even with a zero delay. `key` is yours: a connection's
    /// [`ConnId::as_u64`], an index, a kind of job.
    pub fn set_timer(&mut self, after: Duration, key: u64) -> TimerId {
        let deadline = deadline_after(self.table.clock.read(), after);
        self.table.timers.set(deadline, key, None)
    }

    /// Sets a repeating timer: `on_timer` runs with `key` every `every`
    /// (at least 1 ms) until [`cancel_timer`](Self::cancel_timer). A loop
    /// that falls behind skips the periods it missed rather than firing
    /// them in a burst.
    pub fn set_interval(&mut self, every: Duration, key: u64) -> TimerId {
        let every = every.max(MIN_INTERVAL);
        let deadline = deadline_after(self.table.clock.read(), every);
        self.table.timers.set(deadline, key, Some(every))
    }

    /// Cancels a timer so it never fires (again). Returns whether it was
    /// armed: `false` for a one-shot timer that has fired, or one already
    /// cancelled.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.table.timers.cancel(timer)
    }

    /// Stops the reactor gracefully, at the end of this loop turn: it stops
    /// accepting and closes the listener, then closes every connection
    /// gracefully (input ignored, queued output flushed, FIN, the peer's
    /// FIN awaited) for up to [`Config::drain_timeout`](crate::Config::drain_timeout),
    /// cuts those still draining then, runs `on_close` for each (reason
    /// [`CloseReason::Stopped`](crate::CloseReason::Stopped)) and returns
    /// from `run` with a [`StopReport`](crate::StopReport). Timers keep
    /// firing and messages keep arriving while connections drain.
    pub fn stop(&mut self) {
        self.table.request_stop(StopRequest::Graceful);
    }

    /// Stops the reactor at the end of this loop turn without draining:
    /// each connection gets one last non-blocking flush and is closed, with
    /// a reset if output is still queued. Also ends a graceful stop early.
    pub fn stop_now(&mut self) {
        self.table.request_stop(StopRequest::Now);
    }

    /// Whether a stop has been asked for (new work is pointless: no new
    /// connection will come, and the open ones are closing).
    pub fn is_stopping(&self) -> bool {
        self.table.stop_request != StopRequest::None
    }
}
