//! Connection deadlines: the connect timeout, the idle check, and the
//! sweep of deadlines whose connection has gone.

use std::time::Duration;

use super::ConnTable;
use crate::conn::Conn;
use crate::timer::{Target, deadline_after};
use crate::{CloseReason, ConnId};

impl ConnTable {
    /// A connection under way is asked to be established within `timeout`.
    pub(crate) fn arm_connect_timeout(&mut self, id: ConnId, timeout: Duration) {
        let deadline = deadline_after(self.clock.read(), timeout);
        self.timers.arm(deadline, Target::Connect(id));
    }

    /// A connect deadline came due: a connection still under way fails.
    pub(crate) fn check_connect(&mut self, id: ConnId) {
        if self.get(id).is_some_and(Conn::is_connecting) {
            self.connect_failed(id, crate::ConnectError::TimedOut);
        }
    }

    /// An idle check came due: close the connection if no read or write
    /// has moved bytes for the idle timeout, else check again when it
    /// would have been quiet that long.
    pub(crate) fn check_idle(&mut self, id: ConnId) {
        let (Some(idle), Some(conn)) = (self.limits.idle_timeout, self.get(id)) else {
            return;
        };
        // A connection under way has its connect timeout instead.
        let quiet = if conn.is_connecting() {
            Some(idle)
        } else {
            self.quiet_time_left(conn, idle)
        };
        match quiet {
            None => {
                let cut = conn.queued_output() > 0;
                self.time_out(id, cut);
            }
            Some(left) => self
                .timers
                .schedule(deadline_after(self.clock.now, left), Target::Idle(id)),
        }
    }

    /// How long until no read or write will have moved bytes on `conn` for
    /// `limit`, by its activity stamp; `None` once that is so.
    pub(super) fn quiet_time_left(&self, conn: &Conn, limit: Duration) -> Option<Duration> {
        let limit_ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
        // Stamps are whole milliseconds: "more than limit_ms" is never early.
        let quiet_ms = self.clock.now_ms.wrapping_sub(conn.last_active);
        (quiet_ms <= limit_ms).then(|| Duration::from_millis(u64::from(limit_ms - quiet_ms) + 1))
    }

    /// Ends a connection whose time ran out: with a reset if `cut` (output
    /// queued, or a close that never completed), else closed as it is.
    /// During a stop's drain this counts as failed in the report: the
    /// connection did not drain, and `on_close` learns why.
    pub(super) fn time_out(&mut self, id: ConnId, cut: bool) {
        self.stats.timed_out += 1;
        if cut {
            self.cut(id, CloseReason::TimedOut);
        } else {
            self.end_as_is(id, CloseReason::TimedOut);
        }
    }

    /// Sweeps timer entries of closed connections out of the heap, when
    /// enough have piled up (see `Timers::compact`).
    #[inline]
    pub(crate) fn sweep_timers(&mut self) {
        let conns = &self.conns;
        self.timers.compact(|target| match target {
            Target::Idle(id) => conns.get(id.index()).is_some_and(|c| c.is(id)),
            Target::Close { id, .. } => conns
                .get(id.index())
                .is_some_and(|c| c.is(id) && c.is_closing()),
            Target::Connect(id) => conns
                .get(id.index())
                .is_some_and(|c| c.is(id) && c.is_connecting()),
            Target::User(_) => true,
        });
    }
}
