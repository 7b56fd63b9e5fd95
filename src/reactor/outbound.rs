//! Outbound connections, as the loop sees them: a connect under way is
//! done (established or failed) at its first writable (or error) edge.

use crate::connect::{self, ConnectError};
use crate::table::live_mut;
use crate::{ConnId, Handler};

use super::Core;

impl<H: Handler> Core<H> {
    /// An event came for a connection whose connect was under way. Returns
    /// whether it is now established (the event is then served as any
    /// other connection's).
    #[cold]
    pub(super) fn connect_event(&mut self, id: ConnId) -> bool {
        let Some(conn) = live_mut(&mut self.engine.table.conns, id) else {
            return false;
        };
        match connect::result(&conn.socket) {
            // Not yet (a spurious edge): the next one will say.
            Ok(false) => false,
            Err(error) => {
                self.engine
                    .table
                    .connect_failed(id, ConnectError::from_io(error));
                false
            }
            Ok(true) => {
                self.engine.table.established(id);
                self.with_state(id, |handler, cx, state| handler.on_connect(cx, id, state));
                // What was sent while connecting goes out now; a close asked
                // for meanwhile goes on (FIN once flushed).
                if self.engine.table.flush(id) {
                    self.backpressure_lifted(id);
                }
                self.engine.table.progress_shutdown(id);
                self.engine.table.get(id).is_some()
            }
        }
    }
}
