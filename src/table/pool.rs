//! The buffer pool: a connection holds buffers only while bytes wait, and
//! takes them from here, so one that needs them briefly costs no
//! allocation.

use super::{ConnTable, Limits};
use crate::ConnId;
use crate::conn::Buffers;

/// Buffers kept for reuse, so a connection that needs one briefly does not
/// cost an allocation each time.
const BUFFER_POOL_SIZE: usize = 64;

/// Emptied buffers, kept for the next connection that needs some.
#[derive(Debug)]
pub(crate) struct BufferPool {
    /// Boxed because connections hold their buffers boxed: a pooled box
    /// moves into a connection as it is, with no allocation.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Buffers>>,
    /// The most capacity a pooled buffer keeps: a read chunk of input, a
    /// write high water mark of output.
    keep_input: usize,
    keep_output: usize,
}

impl BufferPool {
    /// An empty pool, for buffers that serve these limits.
    pub(super) fn new(limits: &Limits) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            keep_input: limits.read_chunk,
            keep_output: limits.high_water,
        }
    }

    /// Empty buffers: pooled ones if there are any, else new ones.
    fn take(&mut self) -> Box<Buffers> {
        self.free.pop().unwrap_or_default()
    }

    /// Takes buffers back, emptied, unless the pool is full.
    pub(super) fn put(&mut self, mut bufs: Box<Buffers>) {
        if self.free.len() < BUFFER_POOL_SIZE {
            bufs.input.clear();
            bufs.output.clear();
            bufs.output_start = 0;
            // A buffer that once held a burst keeps no more than a chunk
            // once it is pooled; memory follows work, not history.
            bufs.input.shrink_to(self.keep_input);
            bufs.output.shrink_to(self.keep_output);
            self.free.push(bufs);
        }
    }
}

impl ConnTable {
    /// The connection's buffers, taken from the pool if it has none.
    pub(crate) fn buffers(&mut self, id: ConnId) -> &mut Buffers {
        let pool = &mut self.pool;
        let conn = &mut self.conns[id.index()];
        conn.bufs.get_or_insert_with(|| pool.take())
    }

    /// Gives the connection's buffers back to the pool once they hold nothing.
    pub(crate) fn release_buffers_if_empty(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.index()];
        if conn.bufs.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(bufs) = conn.bufs.take() {
                self.pool.put(bufs);
            }
        }
    }
}
