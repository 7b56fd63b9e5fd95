//! The buffer pool: a connection holds buffers only while bytes wait, and
//! takes them from here, so one that needs them briefly costs no
//! allocation.

use super::ConnTable;
use crate::ConnId;
use crate::conn::Buffers;

/// Buffers kept for reuse, so a connection that needs one briefly does not
/// cost an allocation each time.
pub(super) const BUFFER_POOL_SIZE: usize = 64;

impl ConnTable {
    /// The connection's buffers, taken from the pool if it has none.
    pub(crate) fn buffers(&mut self, id: ConnId) -> &mut Buffers {
        let pool = &mut self.pool;
        let conn = &mut self.conns[id.index()];
        conn.bufs
            .get_or_insert_with(|| pool.pop().unwrap_or_default())
    }

    /// Gives the connection's buffers back to the pool once they hold nothing.
    pub(crate) fn release_buffers_if_empty(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.index()];
        if conn.bufs.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(bufs) = conn.bufs.take() {
                self.recycle(bufs);
            }
        }
    }

    pub(super) fn recycle(&mut self, mut bufs: Box<Buffers>) {
        if self.pool.len() < BUFFER_POOL_SIZE {
            bufs.input.clear();
            bufs.output.clear();
            bufs.output_start = 0;
            // A buffer that once held a burst keeps no more than a chunk
            // once it is pooled; memory follows work, not history.
            bufs.input.shrink_to(self.limits.read_chunk);
            bufs.output.shrink_to(self.limits.high_water);
            self.pool.push(bufs);
        }
    }
}
