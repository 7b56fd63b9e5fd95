//! Read scheduling: the ready queue (connections to read next turn) and
//! the handler's pause and resume.

use super::ConnTable;
use crate::ConnId;
use crate::conn::flag;

impl ConnTable {
    /// Queues the connection to be read next turn, once.
    pub(crate) fn push_ready(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.has(flag::IN_READY_QUEUE) {
                conn.flags |= flag::IN_READY_QUEUE;
                self.ready.push_back(id);
                self.chores = true;
            }
        }
    }

    /// Pauses reading, unless the connection is closing: a close reads on
    /// to the peer's FIN, and pausing it would hold the slot forever.
    pub(crate) fn pause_read(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.is_closing() {
                conn.flags |= flag::USER_PAUSED;
            }
        }
    }

    /// Resumes reading: input left unconsumed is offered again, and data
    /// that arrived while paused (which raised no new edge) is read, on the
    /// next turn.
    pub(crate) fn resume_read(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            if !conn.has(flag::USER_PAUSED) {
                return;
            }
            conn.flags &= !flag::USER_PAUSED;
            if conn.has_input() && !conn.has(flag::READ_CLOSED) {
                conn.flags |= flag::REOFFER;
            }
            if conn.wants_read() || conn.has(flag::REOFFER) {
                self.push_ready(id);
            }
        }
    }
}
