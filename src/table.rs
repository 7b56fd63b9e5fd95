//! The connection table: the slab of connections, and everything a
//! handler's [`Context`](crate::Context) and the loop both act on: send,
//! flush, close, abort, timers and the stop.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::time::Duration;

use slab::Slab;
use socket2::Socket;

use crate::conn::{self, Buffers, Conn, flag};
use crate::id::Generations;
use crate::stop::{Stop, StopRequest};
use crate::timer::{Clock, Target, Tick, Timers, deadline_after};
use crate::{CloseReason, Config, ConnId, Error, Stats};

/// Buffers kept for reuse, so a connection that needs one briefly does not
/// cost an allocation each time.
const BUFFER_POOL_SIZE: usize = 64;

/// The byte limits the table enforces, copied out of [`Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) read_chunk: usize,
    /// What one read may take when nothing is queued either way: the read
    /// chunk, capped by the write high water mark and `max_input`.
    pub(crate) read_limit: usize,
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
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
    /// in the ready queue, a close to finish, a stop asked for, accepts
    /// pending. A busy turn tests this one flag instead of each of them;
    /// the turn that does the work sets it again from what is left.
    pub(crate) chores: bool,
    /// Boxed because connections hold their buffers boxed: a pooled box
    /// moves into a connection as it is, with no allocation.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Buffers>>,
    generations: Generations,
}

impl ConnTable {
    pub(crate) fn new(config: &Config) -> ConnTable {
        ConnTable {
            conns: Slab::with_capacity(config.max_connections.min(1024)),
            stats: Stats::default(),
            limits: Limits::from_config(config),
            closed: VecDeque::new(),
            ready: VecDeque::new(),
            stop: Stop::default(),
            timers: Timers::default(),
            clock: Clock::new(),
            chores: false,
            pool: Vec::new(),
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
        let mut conn = Conn::new(socket, generation, self.clock.now_ms);
        if connecting {
            conn.flags |= flag::CONNECTING;
        } else {
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

    /// A connection under way is asked to be established within `timeout`.
    pub(crate) fn arm_connect_timeout(&mut self, id: ConnId, timeout: Duration) {
        let deadline = deadline_after(self.clock.read(), timeout);
        self.timers.arm(deadline, Target::Connect(id));
    }

    /// The connect of `id` has finished: it is a connection like any other
    /// from now on. Its connect deadline is dead.
    pub(crate) fn established(&mut self, id: ConnId) {
        if let Some(conn) = live_mut(&mut self.conns, id) {
            conn.flags &= !flag::CONNECTING;
            conn.last_active = self.clock.now_ms;
            self.stats.connected += 1;
            self.timers.disarm(1);
        }
    }

    /// A connect deadline came due: a connection still under way fails.
    pub(crate) fn check_connect(&mut self, id: ConnId) {
        if self.get(id).is_some_and(|c| c.has(flag::CONNECTING)) {
            self.connect_failed(id, crate::ConnectError::TimedOut);
        }
    }

    /// An outbound connection was never established.
    pub(crate) fn connect_failed(&mut self, id: ConnId, error: crate::ConnectError) {
        self.stats.connect_failures += 1;
        log::debug!("conn {id}: connect failed: {error}");
        self.drop_connection(id, CloseReason::ConnectFailed(error));
    }

    /// The ids of the connections not closed, in slot order.
    pub(crate) fn live_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns
            .iter()
            .filter(|(_, conn)| !conn.has(flag::DEAD))
            .map(|(index, conn)| ConnId::new(index, conn.generation))
    }

    /// The first connection not closed at slot `start` or after.
    pub(crate) fn live_id_from(&self, start: usize) -> Option<ConnId> {
        (start..self.conns.capacity()).find_map(|index| {
            let conn = self.conns.get(index).filter(|c| !c.has(flag::DEAD))?;
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

    /// Writes `data` at once if nothing is queued; queues what the kernel
    /// does not take. A socket error closes the connection (reported through
    /// `on_close`) and is not an error of the send.
    // Always inlined: a call would cost a third of what the fast path does.
    #[inline(always)]
    pub(crate) fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        let Some(conn) = live_mut(&mut self.conns, id) else {
            return Err(Error::UnknownConnection(id));
        };
        if conn.has(flag::NO_WRITE | flag::CONNECTING) {
            if conn.has(flag::NO_WRITE) {
                return Err(Error::WriteClosed(id));
            }
            // Not established yet: queued, flushed once it is.
            return self.queue_output(id, data);
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
            self.drop_connection(id, CloseReason::OutputLimit);
            return Err(Error::OutputLimit(id));
        }
        let bufs = self.buffers(id);
        bufs.push_output(data);
        let queued = bufs.queued_output();
        self.stats.queued_output += data.len() as u64;
        self.stats.peak_queued_output = self.stats.peak_queued_output.max(queued as u64);
        if queued >= limits.high_water {
            if let Some(conn) = self.get_mut(id) {
                if !conn.has(flag::BACKPRESSURED) {
                    conn.flags |= flag::BACKPRESSURED;
                    self.stats.backpressure_pauses += 1;
                }
            }
        }
        Ok(())
    }

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

    fn recycle(&mut self, mut bufs: Box<Buffers>) {
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

    /// Writes queued output until it is gone or the kernel is full. Returns
    /// whether the connection just came out of backpressure (the caller runs
    /// `on_drain` and reads again).
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
        let drained = conn.has(flag::BACKPRESSURED) && queued <= self.limits.low_water;
        if drained {
            conn.flags &= !flag::BACKPRESSURED;
            if conn.has_input() && !conn.has(flag::READ_CLOSED) {
                conn.flags |= flag::REOFFER;
            }
        }
        if queued == 0 {
            self.release_buffers_if_empty(id);
            self.progress_shutdown(id);
        }
        // No `on_drain` ("produce more") for a connection that can take no
        // more: closing, shut down for writing, or finished by this flush.
        drained && self.get(id).is_some_and(|c| !c.has(flag::NO_WRITE))
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

    /// Graceful close: stop taking input, flush, FIN, then free the slot
    /// as soon as that cannot make the kernel reset the connection.
    ///
    /// The rule (nginx's `lingering_close auto`): closing a socket while
    /// the peer is still sending makes our kernel answer its late bytes
    /// with a reset, which can destroy output the peer has not read yet.
    /// So once the output is flushed and our FIN is out:
    ///
    /// - the peer's FIN already seen: done;
    /// - the peer quiet (nothing arrived since the close began, nothing
    ///   waiting to be read): done at once, with nothing to wait for;
    /// - the peer still sending: linger, reading and discarding, until its
    ///   FIN, or until it has sent nothing for `linger_timeout`.
    ///
    /// All of it within `close_timeout`, past which the close is cut with
    /// a reset (`TimedOut`): a peer that never reads, or never stops
    /// sending, cannot hold the slot forever.
    pub(crate) fn close(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        if conn.has(flag::CLOSING) {
            return;
        }
        conn.flags |= flag::CLOSING | flag::SHUTDOWN_PENDING;
        // Reading goes on, even if the handler had paused it: input is
        // discarded from now on, but what the peer sends must be seen.
        conn.flags &= !flag::USER_PAUSED;
        if let Some(bufs) = conn.bufs.as_mut() {
            bufs.input.clear();
        }
        let wants_read = conn.wants_read();
        // Armed before anything can finish the close: a closing connection
        // always has its one close check pending (see `Timers::disarm`).
        let now = self.clock.read();
        let cut_at = deadline_after(now, self.limits.close_timeout);
        let check = deadline_after(now, self.limits.linger_timeout).min(cut_at);
        self.timers.arm(check, Target::Close { id, cut_at });
        if wants_read {
            self.push_ready(id);
        }
        self.progress_shutdown(id);
    }

    /// Half-close: FIN after the queued output; reading goes on.
    pub(crate) fn shutdown_write(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            conn.flags |= flag::SHUTDOWN_PENDING;
            self.progress_shutdown(id);
        }
    }

    /// Closes at once with a reset, dropping queued output.
    pub(crate) fn abort(&mut self, id: ConnId) {
        self.drop_connection(id, CloseReason::Aborted);
    }

    /// Moves a pending FIN, and a graceful close, forward as far as the
    /// queued output and the peer allow.
    pub(crate) fn progress_shutdown(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        if !conn.has(flag::SHUTDOWN_PENDING)
            || conn.queued_output() > 0
            || conn.has(flag::CONNECTING)
        {
            return;
        }
        if !conn.has(flag::WRITE_SHUT) {
            conn.flags |= flag::WRITE_SHUT;
            if let Err(e) = conn.socket.shutdown(Shutdown::Write) {
                self.fail(id, e);
                return;
            }
        }
        // FIN sent and FIN seen: nothing more can pass either way, whether
        // the handler called `close` or `shutdown_write`.
        if conn.has(flag::READ_CLOSED) {
            self.finish_clean(id);
        } else if conn.has(flag::CLOSING) && !conn.has(flag::HEARD_WHILE_CLOSING) {
            // The peer has sent nothing since the close began: unless
            // something is waiting after all, there is nothing to linger for.
            self.finish_if_peer_quiet(id);
        }
    }

    /// Our FIN is out and the peer seems quiet: free the slot now if
    /// nothing waits to be read (closing then makes no reset); else linger,
    /// reading and discarding.
    fn finish_if_peer_quiet(&mut self, id: ConnId) {
        match self.input_waiting(id) {
            Ok(false) => self.finish_clean(id),
            Ok(true) => {
                let conn = &mut self.conns[id.index()];
                conn.flags |= flag::HEARD_WHILE_CLOSING | flag::READABLE;
                conn.last_active = self.clock.now_ms;
                self.push_ready(id);
            }
            Err(e) => self.fail(id, e),
        }
    }

    /// Whether bytes wait in the kernel for the connection, unread (its FIN
    /// alone does not count: closing over it sends no reset). One `peek`.
    fn input_waiting(&self, id: ConnId) -> io::Result<bool> {
        match self.conns[id.index()]
            .socket
            .peek(&mut [MaybeUninit::uninit()])
        {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            // Unknown: assume something waits (the careful answer).
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// A close check came due (see `close`): cut the close if it has run
    /// out of time, finish it if the peer has been silent for the linger
    /// timeout since our FIN, else check again later.
    pub(crate) fn check_close(&mut self, id: ConnId, cut_at: Tick) {
        // A connection that finished meanwhile disarmed its check.
        let Some(conn) = self.get(id) else {
            return;
        };
        let now = self.clock.now;
        if now >= cut_at {
            self.time_out(id, true);
            return;
        }
        let linger = self.limits.linger_timeout;
        let mut next = deadline_after(now, linger);
        if conn.has(flag::WRITE_SHUT) {
            match self.quiet_time_left(conn, linger) {
                None => {
                    self.finish_if_peer_quiet(id);
                    if self.get(id).is_none() {
                        return;
                    }
                }
                Some(left) => next = deadline_after(now, left),
            }
        }
        self.timers
            .schedule(next.min(cut_at), Target::Close { id, cut_at });
    }

    /// A socket error ends the connection.
    #[cold]
    pub(crate) fn fail(&mut self, id: ConnId, error: io::Error) {
        let reason = CloseReason::from_io(error);
        self.finish(id, reason);
    }

    /// Ends the connection at once with a reset (`SO_LINGER` 0), so the peer
    /// learns that what it has not received will not come.
    pub(crate) fn drop_connection(&mut self, id: ConnId, reason: CloseReason) {
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
    pub(crate) fn finish_clean(&mut self, id: ConnId) {
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
    pub(crate) fn finish(&mut self, id: ConnId, reason: CloseReason) {
        self.end(id, reason, Ending::AsItIs);
    }

    /// Marks the connection closed (the slot is freed at the end of the
    /// turn), and counts it in the stop report if it was open when a stop
    /// began: the one place that does.
    fn end(&mut self, id: ConnId, reason: CloseReason, ending: Ending) {
        let Some(conn) = live_mut(&mut self.conns, id) else {
            return;
        };
        conn.flags |= flag::DEAD;
        let dropped = conn.queued_output() as u64;
        let stopping = conn.has(flag::STOPPING);
        // Its idle check and close check, if armed, are dead from now on.
        let armed = usize::from(self.limits.idle_timeout.is_some())
            + usize::from(conn.has(flag::CLOSING))
            + usize::from(conn.has(flag::CONNECTING));
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
            self.recycle(bufs);
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

    /// Asks for a stop; a stronger request than the one pending wins
    /// (`stop_now` over `stop`), a weaker one changes nothing.
    pub(crate) fn request_stop(&mut self, request: StopRequest) {
        self.stop.request = self.stop.request.max(request);
        self.chores |= request != StopRequest::None;
    }

    /// `stop_now` for one connection: one last flush, then closed as it
    /// is if that loses nothing (no output left, no input unread that would
    /// make the kernel reset it), else cut with a reset and counted as
    /// forced.
    pub(crate) fn end_at_once(&mut self, id: ConnId) {
        if self.get(id).is_some_and(|c| c.has(flag::CONNECTING)) {
            self.drop_connection(id, CloseReason::Stopped);
            return;
        }
        self.flush(id);
        let Some(conn) = self.get(id) else {
            return;
        };
        let cut = conn.queued_output() > 0 || !matches!(self.input_waiting(id), Ok(false));
        if cut {
            self.drop_connection(id, CloseReason::Stopped);
        } else {
            self.finish_clean(id);
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
        let quiet = if conn.has(flag::CONNECTING) {
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
    fn quiet_time_left(&self, conn: &Conn, limit: Duration) -> Option<Duration> {
        let limit_ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
        // Stamps are whole milliseconds: "more than limit_ms" is never early.
        let quiet_ms = self.clock.now_ms.wrapping_sub(conn.last_active);
        (quiet_ms <= limit_ms).then(|| Duration::from_millis(u64::from(limit_ms - quiet_ms) + 1))
    }

    /// Ends a connection whose time ran out: with a reset if `cut` (output
    /// queued, or a close that never completed), else closed as it is.
    /// During a stop's drain this counts as failed in the report: the
    /// connection did not drain, and `on_close` learns why.
    fn time_out(&mut self, id: ConnId, cut: bool) {
        self.stats.timed_out += 1;
        if cut {
            self.drop_connection(id, CloseReason::TimedOut);
        } else {
            self.finish(id, CloseReason::TimedOut);
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
                .is_some_and(|c| c.is(id) && c.has(flag::CLOSING)),
            Target::Connect(id) => conns
                .get(id.index())
                .is_some_and(|c| c.is(id) && c.has(flag::CONNECTING)),
            Target::User(_) => true,
        });
    }

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
            if !conn.has(flag::CLOSING) {
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

    /// Removes the slot of a connection that `finish` marked dead.
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

/// How a connection ended, for the stop report (see `ConnTable::end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Closed as it should: drained.
    Clean,
    /// Cut with a reset by us: forced if the stop cut it.
    Reset,
    /// Closed as it was, for an error or a timeout: failed.
    AsItIs,
}

/// The live connection with this id, borrowing only the slab (so the caller
/// can still reach the table's other fields).
#[inline]
pub(crate) fn live_mut(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.index()).filter(|c| c.is(id))
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
