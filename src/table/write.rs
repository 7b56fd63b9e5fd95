//! The write path: `send` (one write straight to the kernel when nothing
//! is queued), the output queue behind it, `flush` on a writable edge, and
//! backpressure (reading stops while output is queued above the high water
//! mark).

use std::io;

use socket2::Socket;

use super::{ConnTable, live_mut, tenant_mut};
use crate::conn::{self, Conn, flag};
use crate::{CloseReason, ConnId, Error};

impl ConnTable {
    /// Writes `data` at once if nothing is queued; queues what the kernel
    /// does not take. A socket error closes the connection (reported through
    /// `on_close`) and is not an error of the send.
    // Always inlined: a call would cost a third of what the fast path does.
    #[inline(always)]
    pub(crate) fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(conn) = tenant_mut(&mut self.conns, id) else {
            return Err(Error::UnknownConnection(id));
        };
        // One test for every reason not to write now: not `Open`
        // (`NOT_OPEN`), or shut down for writing (`NO_WRITE`).
        if conn.has(flag::NOT_OPEN | flag::NO_WRITE) {
            return self.send_unless_closed(id, data);
        }
        if conn.queued_output() > 0 || data.is_empty() {
            // Behind what is queued, to keep the order (or nothing to do).
            return self.queue_output(id, data);
        }
        // The common case, kept small enough to inline into a handler: one
        // write, and the kernel takes it all.
        match conn.write(data) {
            Ok(n) if n == data.len() => {
                conn.last_active = self.clock.now_ms;
                self.stats.bytes_out += n as u64;
                Ok(())
            }
            first => self.send_rest(id, data, first),
        }
    }

    /// `send` to a connection not `Open` or shut down for writing: refused
    /// once it is closing or closed, queued while it is connecting.
    #[cold]
    #[inline(never)]
    fn send_unless_closed(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(conn) = self.get(id) else {
            return Err(Error::UnknownConnection(id));
        };
        if conn.has(flag::NO_WRITE) {
            return Err(Error::WriteClosed(id));
        }
        // Not established yet: queued, flushed once it is.
        self.queue_output(id, data)
    }

    /// The first write of `send` did not take everything (`first` is what
    /// it returned): write on until the kernel is full, queue the rest.
    #[cold]
    #[inline(never)]
    fn send_rest(
        &mut self,
        id: ConnId,
        data: &[u8],
        first: io::Result<usize>,
    ) -> Result<(), Error> {
        let written = match first {
            Ok(0) => {
                self.fail(id, io::ErrorKind::WriteZero.into());
                return Ok(());
            }
            Ok(n) => n,
            // The kernel is full: all of it waits for the writable edge.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return self.queue_output(id, data);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                self.fail(id, e);
                return Ok(());
            }
        };
        let conn = &mut self.conns[id.index()];
        // After a partial write, try again until WouldBlock: only that
        // promises a writable edge (Linux gives one after a partial write
        // too; mio does not say so).
        let (more, error) = write_until_blocked(&conn.socket, &data[written..]);
        let written = written + more;
        if written > 0 {
            conn.last_active = self.clock.now_ms;
        }
        self.stats.bytes_out += written as u64;
        if let Some(e) = error {
            self.fail(id, e);
            return Ok(());
        }
        match &data[written..] {
            [] => Ok(()),
            rest => self.queue_output(id, rest),
        }
    }

    /// The kernel did not take everything: keep the rest until writable.
    #[cold]
    #[inline(never)]
    fn queue_output(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let limits = self.limits;
        let queued = self.get(id).map_or(0, Conn::queued_output);
        if queued + data.len() > limits.max_output {
            self.stats.limit_closes += 1;
            self.cut(id, CloseReason::OutputLimit);
            return Err(Error::OutputLimit(id));
        }
        let bufs = self.buffers(id);
        bufs.push_output(data);
        let queued = bufs.queued_output();
        self.stats.queued_output += data.len() as u64;
        self.stats.peak_queued_output = self.stats.peak_queued_output.max(queued as u64);
        if queued >= limits.high_water {
            if let Some(conn) = self.get_mut(id) {
                if !limits.output_pauses_reading {
                    // Reading goes on; only `on_drain` is owed.
                    conn.flags |= flag::DRAIN_OWED;
                } else if !conn.has(flag::BACKPRESSURED) {
                    conn.flags |= flag::BACKPRESSURED;
                    self.stats.backpressure_pauses += 1;
                }
            }
        }
        Ok(())
    }

    /// More than the low water mark is queued for `id`; if so, `on_drain`
    /// is owed (`DRAIN_OWED`) for when a flush brings it down to that mark.
    pub(crate) fn output_backed_up(&mut self, id: ConnId) -> bool {
        let low_water = self.limits.low_water;
        let Some(conn) = self.get_mut(id) else {
            return false;
        };
        let backed_up = conn.queued_output() > low_water;
        if backed_up {
            conn.flags |= flag::DRAIN_OWED;
        }
        backed_up
    }

    /// Writes queued output until it is gone or the kernel is full. Returns
    /// whether backpressure just lifted (the caller runs `on_drain` and
    /// reads again).
    #[cold]
    #[inline(never)]
    pub(crate) fn flush(&mut self, id: ConnId) -> bool {
        let Some(conn) = live_mut(&mut self.conns, id) else {
            return false;
        };
        let Some(bufs) = conn.bufs.as_mut() else {
            return false;
        };
        let (written, error) = write_until_blocked(&conn.socket, &bufs.output[bufs.output_start..]);
        bufs.output_start += written;
        let queued = bufs.queued_output();
        if written > 0 {
            conn.last_active = self.clock.now_ms;
        }
        if queued == 0 {
            bufs.output.clear();
            bufs.output_start = 0;
        }
        self.stats.bytes_out += written as u64;
        self.stats.queued_output -= written as u64;
        if let Some(e) = error {
            self.fail(id, e);
            return false;
        }
        let conn = &mut self.conns[id.index()];
        let owed = flag::BACKPRESSURED | flag::DRAIN_OWED;
        let lifted = conn.has(owed) && queued <= self.limits.low_water;
        if lifted {
            conn.flags &= !owed;
            if conn.has_input() && !conn.has(flag::READ_CLOSED) {
                conn.flags |= flag::REOFFER;
            }
        }
        if queued == 0 {
            self.release_buffers_if_empty(id);
            self.progress_shutdown(id);
        }
        // No `on_drain` ("produce more") for a connection that can take no
        // more: closing, shut down for writing, or ended by this flush.
        lifted && self.get(id).is_some_and(|c| !c.has(flag::NO_WRITE))
    }

    /// Output flow: the handler left input unconsumed while output is
    /// queued, which is how a handler of pipelined requests says "not
    /// until my answers have gone". Reading stops, as at the high water
    /// mark, until the output falls to the low water mark; then the input
    /// is offered again (`flush` sets `REOFFER`), without waiting for new
    /// bytes the peer may never send. Reading waiting for output also keeps
    /// a peer's pipeline from piling up as unconsumed input.
    pub(crate) fn wait_for_output(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        if conn.has_input() && conn.queued_output() > 0 && !conn.has(flag::BACKPRESSURED) {
            conn.flags |= flag::BACKPRESSURED;
            self.stats.backpressure_pauses += 1;
        }
    }
}

/// Writes `data` until all of it is taken or the kernel is full
/// (`WouldBlock`, which promises a writable edge). Returns the bytes written
/// and the socket error that stopped it, if any.
#[inline]
fn write_until_blocked(socket: &Socket, data: &[u8]) -> (usize, Option<io::Error>) {
    let mut written = 0;
    while written < data.len() {
        match conn::send(socket, &data[written..]) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}
