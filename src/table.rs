//! The connection table: the slab of connections and what a handler's
//! [`Context`](crate::Context) and the loop both act on. This file keeps the
//! slots (insert, look up, remove); each of the other jobs has its own
//! file:
//!
//! | file | job |
//! | --- | --- |
//! | `table/write` | the write path: `send`, the output queue, `flush`, backpressure |
//! | `table/pool` | the buffer pool |
//! | `table/read_schedule` | read scheduling: the ready queue, pause and resume |
//! | `table/close` | the close protocol: `close`, the half-close, lingering, the close check |
//! | `table/deadlines` | the connect timeout and the idle check |
//! | `table/end` | how a connection ends, and the one place that counts the stop report |

mod close;
mod deadlines;
mod end;
mod pool;
mod read_schedule;
mod write;

use std::collections::VecDeque;
use std::time::Duration;

use slab::Slab;
use socket2::Socket;

use crate::conn::{Conn, Lifecycle};
use crate::id::Generations;
use crate::stop::{Stop, StopRequest};
use crate::timer::{Clock, Target, Timers, deadline_after};
use crate::{CloseReason, Config, ConnId, Stats};
use pool::BufferPool;

/// The byte limits the table enforces, copied out of [`Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) read_chunk: usize,
    /// What one read may take when nothing is queued either way: the read
    /// chunk, capped by the write high water mark and `max_input`.
    pub(crate) read_limit: usize,
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    /// `Config::output_pauses_reading`.
    pub(crate) output_pauses_reading: bool,
    pub(crate) max_input: usize,
    pub(crate) max_output: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) linger_timeout: Duration,
}

impl Limits {
    pub(crate) fn from_config(config: &Config) -> Limits {
        Limits {
            read_chunk: config.read_chunk,
            read_limit: config
                .read_chunk
                .min(config.write_high_water)
                .min(config.max_input),
            high_water: config.write_high_water,
            low_water: config.write_low_water,
            output_pauses_reading: config.output_pauses_reading,
            max_input: config.max_input,
            max_output: config.max_output,
            idle_timeout: config.idle_timeout,
            close_timeout: config.close_timeout,
            linger_timeout: config.linger_timeout,
        }
    }
}

/// All connections and the bookkeeping around them.
#[derive(Debug)]
pub(crate) struct ConnTable {
    pub(crate) conns: Slab<Conn>,
    pub(crate) stats: Stats,
    pub(crate) limits: Limits,
    /// Connections closed this turn, with why; their slots are freed and
    /// `on_close` runs at the end of the turn, so no event of this turn's
    /// batch can reach a slot's next tenant.
    pub(crate) closed: VecDeque<(ConnId, CloseReason)>,
    /// Connections with readable data left after their read budget ran out,
    /// or whose reading resumed; served next turn with a zero poll timeout
    /// (edge-triggered polling will not tell us about them again).
    pub(crate) ready: VecDeque<ConnId>,
    /// The stop: what was asked, how far it is, and its report.
    pub(crate) stop: Stop,
    pub(crate) timers: Timers,
    pub(crate) clock: Clock,
    /// Set whenever the loop has work beyond serving events: a connection
    /// in the ready queue, a closed connection to free, a stop asked for, accepts
    /// pending. A busy turn tests this one flag instead of each of them;
    /// the turn that does the work sets it again from what is left.
    pub(crate) chores: bool,
    pool: BufferPool,
    /// Where connection ids get their generation (tagged in a `ReactorSet`).
    pub(crate) generations: Generations,
}

impl ConnTable {
    pub(crate) fn new(config: &Config) -> ConnTable {
        let limits = Limits::from_config(config);
        ConnTable {
            conns: Slab::with_capacity(config.max_connections.min(1024)),
            stats: Stats::default(),
            limits,
            closed: VecDeque::new(),
            ready: VecDeque::new(),
            stop: Stop::default(),
            timers: Timers::default(),
            clock: Clock::new(),
            chores: false,
            pool: BufferPool::new(&limits),
            generations: Generations::default(),
        }
    }

    /// Takes a slot for a new connection and returns its id. A connection
    /// still `connecting` is counted once established (`established`).
    pub(crate) fn insert(&mut self, socket: Socket, connecting: bool) -> ConnId {
        let generation = self.generations.take();
        if connecting {
            // `connect` may be called outside a turn (before `run`), when
            // the clock was not read: stamps and deadlines need it now.
            self.clock.read();
        }
        let conn = Conn::new(socket, generation, self.clock.now_ms, connecting);
        if !connecting {
            self.stats.accepted += 1;
        }
        let id = ConnId::new(self.conns.insert(conn), generation);
        self.stats.active += 1;
        if let Some(idle) = self.limits.idle_timeout {
            // The clock was read this turn: it is, whenever idle timeouts
            // are on.
            let deadline = deadline_after(self.clock.now, idle);
            self.timers.arm(deadline, Target::Idle(id));
        }
        id
    }

    /// The next slot `insert` will take, to register the socket under its
    /// token before the slot exists.
    pub(crate) fn next_id(&mut self) -> ConnId {
        ConnId::new(self.conns.vacant_key(), self.generations.peek())
    }

    /// The connect of `id` is done: it is a connection like any other
    /// from now on. Its connect deadline is dead.
    pub(crate) fn established(&mut self, id: ConnId) {
        if let Some(conn) = live_mut(&mut self.conns, id) {
            conn.connect_done();
            conn.last_active = self.clock.now_ms;
            self.stats.connected += 1;
            self.timers.disarm(1);
        }
    }

    /// An outbound connection was never established.
    pub(crate) fn connect_failed(&mut self, id: ConnId, error: crate::ConnectError) {
        self.stats.connect_failures += 1;
        log::debug!("conn {id}: connect failed: {error}");
        self.cut(id, CloseReason::ConnectFailed(error));
    }

    /// The ids of the connections not closed, in slot order.
    pub(crate) fn live_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns
            .iter()
            .filter(|(_, conn)| conn.lifecycle != Lifecycle::Dead)
            .map(|(index, conn)| ConnId::new(index, conn.generation))
    }

    /// The first connection not closed at slot `start` or after.
    pub(crate) fn live_id_from(&self, start: usize) -> Option<ConnId> {
        (start..self.conns.capacity()).find_map(|index| {
            let conn = self
                .conns
                .get(index)
                .filter(|c| c.lifecycle != Lifecycle::Dead)?;
            Some(ConnId::new(index, conn.generation))
        })
    }

    /// The live connection with this id: not closed, not another tenant of
    /// its slot.
    #[inline]
    pub(crate) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.index()).filter(|c| c.is(id))
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        live_mut(&mut self.conns, id)
    }

    /// Asks for a stop; a stronger request than the one pending wins
    /// (`stop_now` over `stop`), a weaker one changes nothing.
    pub(crate) fn request_stop(&mut self, request: StopRequest) {
        self.stop.request = self.stop.request.max(request);
        self.chores |= request != StopRequest::None;
    }

    /// Removes the slot of a connection that ended (`Dead`).
    pub(crate) fn remove(&mut self, id: ConnId) {
        let index = id.index();
        if self
            .conns
            .get(index)
            .is_some_and(|c| c.generation == id.generation())
        {
            // Dropping the stream closes the socket, which also takes it out
            // of the epoll set.
            drop(self.conns.remove(index));
            self.stats.active -= 1;
            self.stats.closed += 1;
        }
    }
}

/// The live connection with this id, borrowing only the slab (so the caller
/// can still reach the table's other fields).
#[inline]
pub(crate) fn live_mut(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.index()).filter(|c| c.is(id))
}

/// The slot's tenant that `id` names, whatever its lifecycle (`Dead`
/// included). For the hot paths, which test for `Open` anyway: that test
/// also tells the live from the dead, and saves one.
#[inline]
pub(crate) fn tenant_mut(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(id.index())
        .filter(|c| c.generation == id.generation())
}
