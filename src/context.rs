//! What a handler callback may do: the `Context` it is given.

use std::net::SocketAddr;

use crate::table::ConnTable;
use crate::{ConnId, Error, Stats};

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
        conn.stream.peer_addr().map_err(|source| Error::Connection {
            id,
            op: "getpeername",
            source,
        })
    }

    /// The reactor's counters as of now.
    pub fn stats(&self) -> Stats {
        self.table.stats
    }

    /// Asks the reactor to stop: at the end of this loop turn it stops
    /// accepting, closes every connection (`on_close` with
    /// [`CloseReason::Stopped`](crate::CloseReason::Stopped)) and `run`
    /// returns.
    pub fn stop(&mut self) {
        self.table.stop_requested = true;
    }
}
