//! The end of a connection: cut with a reset, ended clean, or ended as it
//! is; and the one place that counts it in the stop report.

use std::io;
use std::time::Duration;

use super::{ConnTable, live_mut};
use crate::conn::flag;
use crate::{CloseReason, ConnId};

impl ConnTable {
    /// A socket error ends the connection.
    #[cold]
    pub(crate) fn fail(&mut self, id: ConnId, error: io::Error) {
        let reason = CloseReason::from_io(error);
        self.end_as_is(id, reason);
    }

    /// Ends the connection at once with a reset (`SO_LINGER` 0), so the peer
    /// learns that what it has not received will not come.
    pub(crate) fn cut(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.get(id) {
            if let Err(e) = conn.socket.set_linger(Some(Duration::ZERO)) {
                log::debug!("conn {id}: SO_LINGER 0 before abort: {e}");
            }
            self.end(id, reason, Ending::Reset);
        }
    }

    /// Ends a connection whose close went as it should: output flushed,
    /// FIN sent, and the peer's FIN seen or nothing of the peer's unread.
    /// It keeps the reason of whoever closed first: the stop, the peer, or
    /// the handler.
    pub(crate) fn end_clean(&mut self, id: ConnId) {
        let Some(conn) = self.get(id) else {
            return;
        };
        let reason = if conn.has(flag::STOP_CLOSED) {
            CloseReason::Stopped
        } else if conn.has(flag::PEER_CLOSED_FIRST) {
            CloseReason::PeerClosed
        } else {
            CloseReason::Local
        };
        self.end(id, reason, Ending::Clean);
    }

    /// Ends the connection as it is, for `reason` (an error, a timeout).
    pub(crate) fn end_as_is(&mut self, id: ConnId, reason: CloseReason) {
        self.end(id, reason, Ending::AsItIs);
    }

    /// Marks the connection `Dead` (the slot is freed at the end of the
    /// turn), and counts it in the stop report if it was open when a stop
    /// began: the one place that does.
    fn end(&mut self, id: ConnId, reason: CloseReason, ending: Ending) {
        let Some(conn) = live_mut(&mut self.conns, id) else {
            return;
        };
        let dropped = conn.queued_output() as u64;
        let stopping = conn.has(flag::IN_STOP_REPORT);
        // Its idle check, close check and connect deadline, if armed, are
        // dead from now on (counted by the lifecycle it leaves).
        let armed = usize::from(self.limits.idle_timeout.is_some())
            + usize::from(conn.is_closing())
            + usize::from(conn.is_connecting());
        conn.mark_dead();
        let bufs = conn.bufs.take();
        self.timers.disarm(armed);
        self.stats.queued_output -= dropped;
        if stopping {
            let report = self.stop.report.get_or_insert_default();
            match (ending, &reason) {
                (Ending::Clean, _) => report.drained += 1,
                (Ending::Reset, CloseReason::Stopped) => report.forced += 1,
                _ => report.failed += 1,
            }
            report.unsent_bytes += dropped;
        }
        if let Some(bufs) = bufs {
            self.pool.put(bufs);
        }
        match &reason {
            CloseReason::Reset => {
                self.stats.resets += 1;
                log::debug!("conn {id}: reset by peer");
            }
            CloseReason::Io(e) => log::debug!("conn {id}: closed on error: {e}"),
            _ => {}
        }
        self.closed.push_back((id, reason));
        self.chores = true;
    }
}

/// How a connection ended, for the stop report (see `ConnTable::end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Closed as it should: `drained` in the report.
    Clean,
    /// Cut with a reset by us: forced if the stop cut it.
    Reset,
    /// Closed as it was, for an error or a timeout: failed.
    AsItIs,
}
