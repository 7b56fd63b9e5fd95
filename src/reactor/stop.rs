//! Stopping: a graceful drain with a deadline, or at once; then the report.

use crate::conn::flag;
use crate::stop::StopRequest;
use crate::timer::deadline_after;
use crate::{CloseReason, ConnId, Handler};

use super::Core;

impl<H: Handler> Core<H> {
    /// Step 8: start the stop asked for this turn, and end a drain that is
    /// over (every connection gone) or out of time.
    pub(super) fn progress_stop(&mut self) {
        if self.table.stop_request > self.stopping {
            match self.table.stop_request {
                StopRequest::Graceful => self.begin_drain(),
                StopRequest::Now => self.stop_at_once(),
                StopRequest::None => {}
            }
        }
        if self.stopping != StopRequest::Graceful || self.stopped {
            return;
        }
        let out_of_time = self
            .drain_deadline
            .is_some_and(|deadline| self.table.clock.read() >= deadline);
        if out_of_time {
            for id in self.open_connections() {
                self.table.drop_connection(id, CloseReason::Stopped);
            }
            self.finish_closes();
        }
        if self.table.conns.is_empty() {
            self.complete_stop();
        }
    }

    /// Graceful stop: no more accepting; every connection closes gracefully
    /// (flush, FIN, linger only while the peer is sending; see
    /// `ConnTable::close`) until the drain deadline. Connections with
    /// nothing in flight close in this very turn.
    fn begin_drain(&mut self) {
        let open = self.begin_stop(StopRequest::Graceful);
        let now = self.table.clock.read();
        self.drain_deadline = Some(deadline_after(now, self.config.drain_timeout));
        log::debug!("stopping: draining {} connections", open.len());
        for id in open {
            self.table.close(id);
        }
        self.finish_closes();
    }

    /// `stop_now`: one last non-blocking flush each, then close, with a
    /// reset where output is left or input unread.
    fn stop_at_once(&mut self) {
        for id in self.begin_stop(StopRequest::Now) {
            self.table.end_at_once(id);
        }
        self.finish_closes();
        self.complete_stop();
    }

    /// What both kinds of stop start with: the listener closes, the report
    /// starts counting, and every open connection is marked as counted in
    /// it; those the handler or the peer had not begun to close are marked
    /// as closed by the stop (their reason is `Stopped`). Returns the open
    /// connections.
    fn begin_stop(&mut self, kind: StopRequest) -> Vec<ConnId> {
        self.stopping = kind;
        self.close_listener();
        self.table.stop_report.get_or_insert_default();
        let open = self.open_connections();
        for &id in &open {
            if let Some(conn) = self.table.get_mut(id) {
                conn.flags |= flag::STOPPING;
                if !conn.has(flag::CLOSING) {
                    conn.flags |= flag::STOP_CLOSED;
                }
            }
        }
        open
    }

    fn complete_stop(&mut self) {
        self.stopped = true;
        self.drain_deadline = None;
        self.table.timers.clear();
        self.handle.close();
        self.stats_reader.publish(&self.table.stats, None);
        if let Some(report) = self.table.stop_report {
            log::debug!("stopped: {report}");
        }
    }

    /// Stops accepting for good: the kernel refuses new connections from
    /// now on instead of queueing them in a backlog nobody reads.
    fn close_listener(&mut self) {
        self.accept.pending = false;
        if let Some(mut listener) = self.listener.take() {
            if let Err(e) = self.poll.registry().deregister(&mut listener) {
                log::debug!("epoll_ctl(DEL) for the listener: {e}");
            }
        }
    }

    /// The connections not closed yet.
    fn open_connections(&self) -> Vec<ConnId> {
        self.table
            .conns
            .iter()
            .filter(|(_, conn)| !conn.has(flag::DEAD))
            .map(|(index, conn)| ConnId::new(index, conn.generation))
            .collect()
    }
}
