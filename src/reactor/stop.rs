//! Stopping: a graceful drain with a deadline, or at once; then the report.

use crate::conn::flag;
use crate::stop::{StopPhase, StopRequest};
use crate::timer::deadline_after;
use crate::{CloseReason, ConnId, Handler};

use super::Core;

impl<H: Handler> Core<H> {
    /// Step 8: start the stop asked for this turn, and end a drain that is
    /// over (every connection gone) or out of time.
    pub(super) fn progress_stop(&mut self) {
        let stop = self.engine.table.stop;
        if stop.is_new_request() {
            match stop.request {
                StopRequest::Graceful => self.begin_drain(),
                StopRequest::Now => self.stop_at_once(),
                StopRequest::None => {}
            }
        }
        let Some(deadline) = self.engine.table.stop.drain_deadline() else {
            return;
        };
        if self.engine.table.clock.read() >= deadline {
            for id in self.open_connections() {
                self.engine.table.cut(id, CloseReason::Stopped);
            }
            self.free_closed();
        }
        if self.engine.table.conns.is_empty() {
            self.complete_stop();
        }
    }

    /// Graceful stop: no more accepting; every connection closes gracefully
    /// (flush, FIN, linger only while the peer is sending; see
    /// `ConnTable::close`) until the drain deadline. Connections with
    /// nothing in flight close in this very turn.
    fn begin_drain(&mut self) {
        let open = self.begin_stop();
        let now = self.engine.table.clock.read();
        let deadline = deadline_after(now, self.engine.config.drain_timeout);
        self.engine.table.stop.phase = StopPhase::Draining { deadline };
        log::debug!("stopping: draining {} connections", open.len());
        for id in open {
            self.engine.table.close(id);
        }
        self.free_closed();
    }

    /// `stop_now`: one last non-blocking flush each, then close, with a
    /// reset where output is left or input unread.
    fn stop_at_once(&mut self) {
        for id in self.begin_stop() {
            self.engine.table.end_at_once(id);
        }
        self.free_closed();
        self.complete_stop();
    }

    /// What both kinds of stop start with: the listeners close, the report
    /// starts counting, and every open connection is marked as counted in
    /// it; those the handler or the peer had not begun to close are marked
    /// as closed by the stop (their reason is `Stopped`). Returns the open
    /// connections.
    fn begin_stop(&mut self) -> Vec<ConnId> {
        self.engine.close_listeners();
        self.engine.table.stop.report.get_or_insert_default();
        let open = self.open_connections();
        for &id in &open {
            if let Some(conn) = self.engine.table.get_mut(id) {
                conn.flags |= flag::IN_STOP_REPORT;
                if !conn.is_closing() {
                    conn.flags |= flag::STOP_CLOSED;
                }
            }
        }
        open
    }

    fn complete_stop(&mut self) {
        self.engine.table.stop.phase = StopPhase::Stopped;
        self.engine.table.timers.clear();
        self.handle.close();
        self.stats_reader.publish(&self.engine.table.stats, None);
        if let Some(report) = self.engine.table.stop.report {
            log::debug!("stopped: {report}");
        }
    }

    /// The connections not closed yet.
    fn open_connections(&self) -> Vec<ConnId> {
        self.engine.table.live_ids().collect()
    }
}
