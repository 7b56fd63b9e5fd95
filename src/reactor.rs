//! The event loop: poll, dispatch, serve, accept, close; one turn at a time.

use std::io::{self, Read};
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll};
use socket2::SockRef;

use crate::conn::flag;
use crate::id::LISTENER;
use crate::table::{ConnTable, live_mut};
use crate::{CloseReason, Config, ConnId, Context, Error, Handler, Stats, StatsReader, listener};

/// A single-threaded reactor serving every connection of one listener.
///
/// Build it with [`Reactor::bind`], then call [`run`](Reactor::run) (blocks
/// until stopped) or drive it yourself with [`run_once`](Reactor::run_once).
/// See the [crate documentation](crate) for one loop turn step by step and
/// the guarantees the handler can rely on.
pub struct Reactor<H: Handler> {
    handler: H,
    /// Handler state per connection, indexed like the slab. Kept apart from
    /// the slab so a callback can hold its own connection's state while its
    /// `Context` reaches every connection's socket.
    user: Vec<Option<H::Conn>>,
    table: ConnTable,
    poll: Poll,
    events: Events,
    /// `None` once stopped.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// The one read buffer all connections share; handlers get slices of it.
    scratch: Vec<u8>,
    config: Config,
    accept: AcceptState,
    stats_reader: StatsReader,
    stopped: bool,
}

/// Where accepting stands. The listener is edge-triggered too: once told
/// readable, we must accept until `WouldBlock` or we are never told again.
#[derive(Debug, Default)]
struct AcceptState {
    /// Connections may be waiting in the kernel backlog.
    pending: bool,
    /// Accepting paused after a resource error (`EMFILE` ...) until then, or
    /// until a connection closes and frees a descriptor.
    paused_until: Option<Instant>,
    /// A resource error was logged at warn level in this episode; repeats
    /// go to debug so a sustained `EMFILE` does not flood the logs.
    warned: bool,
}

impl<H: Handler> Reactor<H> {
    /// Checks `config`, binds a listener to `addr` (`SO_REUSEADDR`,
    /// non-blocking, `listen(config.backlog)`) and builds the reactor.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] before anything is bound;
    /// [`Error::Bind`] naming the address and the OS reason;
    /// [`Error::Listener`] or [`Error::Poll`] for other setup failures.
    pub fn bind(addr: SocketAddr, config: Config, handler: H) -> Result<Reactor<H>, Error> {
        config.validate()?;
        let (mut listener, local_addr) = listener::bind(addr, &config)?;
        let poll = Poll::new().map_err(|source| Error::Poll {
            op: "epoll_create",
            source,
        })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|source| Error::Listener {
                op: "epoll_ctl",
                addr,
                source,
            })?;
        Ok(Reactor {
            handler,
            user: Vec::new(),
            table: ConnTable::new(&config),
            poll,
            events: Events::with_capacity(config.event_capacity),
            listener: Some(listener),
            local_addr,
            scratch: vec![0; config.read_chunk],
            config,
            accept: AcceptState::default(),
            stats_reader: StatsReader::default(),
            stopped: false,
        })
    }

    /// The address the listener is bound to; with port 0, the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters as of now.
    pub fn stats(&self) -> Stats {
        self.table.stats
    }

    /// A reader of the counters for other threads (updated once per turn).
    pub fn stats_reader(&self) -> StatsReader {
        self.stats_reader.clone()
    }

    /// The handler, for a program that drives the loop with `run_once`.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Whether the reactor has stopped (after [`Context::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Runs turns until a handler calls [`Context::stop`].
    ///
    /// # Errors
    ///
    /// Only [`Error::Poll`], when `epoll_wait` itself fails (an OS fault;
    /// `EINTR` is retried). Nothing a peer does makes `run` return.
    pub fn run(&mut self) -> Result<(), Error> {
        while !self.stopped {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Runs one turn, waiting at most `timeout` for events (`None`: until
    /// something happens). The wait is shorter when the reactor has work of
    /// its own: connections with data left over, accepts to retry.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if self.stopped {
            return Ok(());
        }
        let timeout = self.poll_timeout(timeout);
        self.stats_reader.publish(&self.table.stats);
        self.wait_for_events(timeout)?;
        let carried = self.table.ready.len();
        self.dispatch_events();
        self.serve_ready_queue(carried);
        self.accept_connections();
        self.finish_closes();
        if self.table.stop_requested {
            self.shut_down();
        }
        Ok(())
    }

    /// Step 1: zero if there is work already, else until the accept pause
    /// ends, else no limit; never more than the caller's `timeout`.
    fn poll_timeout(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        let own = if !self.table.ready.is_empty() || self.table.stop_requested {
            Some(Duration::ZERO)
        } else if !self.accept.pending || !self.below_max_connections() {
            None
        } else {
            match self.accept.paused_until {
                Some(until) => Some(until.saturating_duration_since(Instant::now())),
                None => Some(Duration::ZERO),
            }
        };
        match (own, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Step 2: `epoll_wait`, retried on `EINTR`.
    fn wait_for_events(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        loop {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Poll {
                        op: "epoll_wait",
                        source,
                    });
                }
            }
        }
        self.table.stats.turns += 1;
        Ok(())
    }

    /// Step 3: each event serves its connection at once: flush queued
    /// output first, then read within the budget.
    fn dispatch_events(&mut self) {
        // The events buffer is moved out for the loop so connections can be
        // served through `&mut self`; an empty `Events` does not allocate.
        let events = mem::replace(&mut self.events, Events::with_capacity(0));
        let mut count = 0;
        for event in events.iter() {
            count += 1;
            if event.token() == LISTENER {
                self.accept.pending = true;
            } else {
                self.connection_event(ConnId::from_token(event.token()), event);
            }
        }
        if count == events.capacity() {
            self.table.stats.full_event_batches += 1;
        }
        self.events = events;
    }

    fn connection_event(&mut self, id: ConnId, event: &Event) {
        // A stale event (the connection closed this turn, or its slot has a
        // new tenant) finds no live connection with this id and is dropped.
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if event.is_readable() {
            conn.flags |= flag::READABLE;
        }
        // After a read-closed, error or urgent-data event, a short read
        // does not mean drained and no further edge will come.
        if event.is_read_closed() || event.is_error() || event.is_priority() {
            conn.flags |= flag::READABLE | flag::DRAIN_TO_END;
        }
        if event.is_error() {
            // Ask for the error rather than wait for a read to surface it:
            // reading may be paused, or over (after EOF), and the connection
            // would linger.
            if let Ok(Some(e)) = conn.stream.take_error() {
                self.table.fail(id, e);
                return;
            }
        }
        if event.is_writable() && conn.queued_output() > 0 && self.table.flush(id) {
            self.drained(id);
        }
        self.read_connection(id);
    }

    /// Queued output fell to the low water mark: tell the handler; reading
    /// resumes (and unconsumed input is offered again) in `read_connection`.
    #[cold]
    fn drained(&mut self, id: ConnId) {
        if let Some(user) = self.user.get_mut(id.index()).and_then(Option::as_mut) {
            self.handler
                .on_drain(&mut Context::new(&mut self.table), id, user);
        }
    }

    /// Reads while the connection has data, nothing stops reading and the
    /// turn's budget lasts; one read per edge unless a read fills its buffer.
    fn read_connection(&mut self, id: ConnId) {
        self.reoffer_input(id);
        let mut budget = self.config.reads_per_turn;
        loop {
            let Some(conn) = live_mut(&mut self.table.conns, id) else {
                return;
            };
            if !conn.wants_read() {
                return;
            }
            if budget == 0 {
                self.table.push_ready(id);
                return;
            }
            budget -= 1;
            let limits = self.table.limits;
            let queued = conn.queued_output();
            let out_room = limits.high_water.saturating_sub(queued);
            let in_room = limits
                .max_input
                .saturating_sub(conn.bufs.as_ref().map_or(0, |b| b.input.len()));
            let limit = limits.read_chunk.min(out_room).min(in_room);
            if limit == 0 {
                if in_room == 0 {
                    self.input_overflow(id);
                }
                return;
            }
            if conn.has_input() {
                if !self.read_after_leftover(id, limit) {
                    return;
                }
                continue;
            }
            match conn.stream.read(&mut self.scratch[..limit]) {
                Ok(0) => return self.peer_eof(id),
                Ok(n) => {
                    self.table.stats.bytes_in += n as u64;
                    if n < limit && !conn.has(flag::DRAIN_TO_END) {
                        // Short read: drained. Edge-triggered polling will
                        // report bytes that arrive later; no read is spent
                        // to see WouldBlock.
                        conn.flags &= !flag::READABLE;
                    }
                    if !conn.has(flag::CLOSING) {
                        self.deliver(id, n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.flags &= !(flag::READABLE | flag::DRAIN_TO_END);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.table.fail(id, e),
            }
        }
    }

    /// Hands `scratch[..n]` to the handler and keeps what it did not consume.
    fn deliver(&mut self, id: ConnId, n: usize) {
        let Some(user) = self.user.get_mut(id.index()).and_then(Option::as_mut) else {
            return;
        };
        let data = &self.scratch[..n];
        let consumed = self
            .handler
            .on_data(&mut Context::new(&mut self.table), id, user, data)
            .min(n);
        if consumed < n && self.table.get(id).is_some_and(|c| !c.has(flag::CLOSING)) {
            self.table
                .buffers(id)
                .input
                .extend_from_slice(&data[consumed..]);
        }
    }

    /// Reading resumed with unconsumed input waiting: offer it again now,
    /// since the peer may be waiting for an answer and send nothing more.
    fn reoffer_input(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if !conn.has(flag::REOFFER) {
            return;
        }
        conn.flags &= !flag::REOFFER;
        let stopped = flag::USER_PAUSED | flag::BACKPRESSURED | flag::CLOSING;
        if conn.has_input() && !conn.has(stopped) {
            let input = mem::take(&mut self.table.buffers(id).input);
            self.offer_input(id, input);
        }
    }

    /// Offers `input` (the connection's unconsumed bytes, taken out of its
    /// buffer) to the handler and puts back what it did not consume.
    #[cold]
    #[inline(never)]
    fn offer_input(&mut self, id: ConnId, mut input: Vec<u8>) {
        if let Some(user) = self.user.get_mut(id.index()).and_then(Option::as_mut) {
            let consumed = self
                .handler
                .on_data(&mut Context::new(&mut self.table), id, user, &input)
                .min(input.len());
            input.drain(..consumed);
        }
        // Put the leftover back unless the connection closed meanwhile.
        if self.table.get(id).is_some_and(|c| !c.has(flag::CLOSING)) {
            self.table.buffers(id).input = input;
            self.table.release_buffers_if_empty(id);
        }
    }

    /// The slow path: bytes are already waiting, so read straight after them
    /// and offer the handler the whole run. Returns whether to read again.
    #[cold]
    #[inline(never)]
    fn read_after_leftover(&mut self, id: ConnId, limit: usize) -> bool {
        let mut input = mem::take(&mut self.table.buffers(id).input);
        let start = input.len();
        input.resize(start + limit, 0);
        let conn = &mut self.table.conns[id.index()];
        let result = conn.stream.read(&mut input[start..]);
        input.truncate(start + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => {
                self.table.buffers(id).input = input;
                self.peer_eof(id);
                false
            }
            Ok(n) => {
                self.table.stats.bytes_in += n as u64;
                if n < limit && !conn.has(flag::DRAIN_TO_END) {
                    conn.flags &= !flag::READABLE;
                }
                self.offer_input(id, input);
                true
            }
            Err(e) => {
                self.table.buffers(id).input = input;
                match e.kind() {
                    io::ErrorKind::Interrupted => true,
                    io::ErrorKind::WouldBlock => {
                        let conn = &mut self.table.conns[id.index()];
                        conn.flags &= !(flag::READABLE | flag::DRAIN_TO_END);
                        false
                    }
                    _ => {
                        self.table.fail(id, e);
                        false
                    }
                }
            }
        }
    }

    /// The peer sent more than `max_input` that the handler would not
    /// consume: its fault, so its connection alone is closed.
    #[cold]
    fn input_overflow(&mut self, id: ConnId) {
        log::debug!(
            "conn {id}: more than {} bytes of unconsumed input",
            self.table.limits.max_input
        );
        self.table.stats.limit_closes += 1;
        self.table.drop_connection(id, CloseReason::InputLimit);
    }

    /// `read` returned 0: the peer's FIN.
    fn peer_eof(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        conn.flags |= flag::READ_CLOSED;
        conn.flags &= !(flag::READABLE | flag::DRAIN_TO_END);
        if conn.has(flag::CLOSING) {
            self.table.progress_shutdown(id);
            return;
        }
        if !conn.has(flag::SHUTDOWN_PENDING) {
            conn.flags |= flag::PEER_CLOSED_FIRST;
        }
        if let Some(user) = self.user.get_mut(id.index()).and_then(Option::as_mut) {
            self.handler
                .on_eof(&mut Context::new(&mut self.table), id, user);
        }
        // Our FIN may already be out (`shutdown_write`): then both ways are
        // closed and the connection is done.
        self.table.progress_shutdown(id);
    }

    /// Step 4: connections whose read budget ran out last turn, or whose
    /// reading resumed, are read now: the first `carried` of the queue, the
    /// ones queued before this turn's events. Those queued during this turn
    /// wait for the next, so no connection gets two budgets in one turn.
    fn serve_ready_queue(&mut self, carried: usize) {
        for _ in 0..carried {
            let Some(id) = self.table.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.table.get_mut(id) {
                conn.flags &= !flag::IN_READY_QUEUE;
                self.read_connection(id);
            }
        }
    }

    fn below_max_connections(&self) -> bool {
        self.table.conns.len() < self.config.max_connections
    }

    /// Step 5: accept within the turn's budget, while below
    /// `max_connections` and not paused by a resource error.
    fn accept_connections(&mut self) {
        let mut budget = self.config.accepts_per_turn;
        while self.accept.pending
            && budget > 0
            && self.below_max_connections()
            && !self.table.stop_requested
        {
            if let Some(until) = self.accept.paused_until {
                if Instant::now() < until {
                    return;
                }
                self.accept.paused_until = None;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            budget -= 1;
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accept.warned = false;
                    self.open(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.accept.pending = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.accept_failed(e),
            }
        }
    }

    /// A connection that vanished before `accept` is skipped; anything else
    /// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, the unforeseen) pauses
    /// accepting for `accept_backoff`. Spinning on it would starve the very
    /// connections whose closing frees descriptors (tokio-rs/tokio#4782);
    /// returning it would kill the server for a peer's flood.
    #[cold]
    fn accept_failed(&mut self, e: io::Error) {
        self.table.stats.accept_errors += 1;
        let peer_gone = matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::NetworkDown
        );
        if peer_gone {
            log::debug!("accept: {e}; skipped");
            return;
        }
        self.pause_accepting("accept", &e);
    }

    /// Pauses accepting for `accept_backoff`, or until a connection closes.
    #[cold]
    fn pause_accepting(&mut self, op: &str, e: &io::Error) {
        let backoff = self.config.accept_backoff;
        if self.accept.warned {
            log::debug!("{op}: {e}; pausing accepts for {backoff:?}");
        } else {
            log::warn!("{op}: {e}; pausing accepts for {backoff:?} or until a connection closes");
            self.accept.warned = true;
        }
        // A backoff too long to add to the clock means "until a close".
        let now = Instant::now();
        let until = now
            .checked_add(backoff)
            .unwrap_or_else(|| now + UNTIL_A_CLOSE);
        self.accept.paused_until = Some(until);
    }

    /// Sets up an accepted socket and gives it to the handler.
    fn open(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if self.config.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("TCP_NODELAY for {peer}: {e}");
            }
        }
        // Urgent data stays in the byte stream: no byte silently vanishes,
        // and the reactor never needs MSG_OOB.
        if let Err(e) = SockRef::from(&stream).set_out_of_band_inline(true) {
            log::debug!("SO_OOBINLINE for {peer}: {e}");
        }
        let id = self.table.next_id();
        // Registered once for everything, never re-registered: edge-triggered
        // writable costs nothing while idle, and the hot path makes no
        // epoll_ctl call.
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, id.token(), interest())
        {
            // ENOMEM or ENOSPC (max_user_watches): as short of resources as
            // EMFILE, and accepting more would only fail the same way.
            self.table.stats.accept_errors += 1;
            self.pause_accepting(&format!("epoll_ctl(ADD) for {peer} (dropped)"), &e);
            return;
        }
        let inserted = self.table.insert(stream);
        debug_assert_eq!(inserted, id);
        let index = id.index();
        if self.user.len() <= index {
            self.user.resize_with(index + 1, || None);
        }
        let state = self
            .handler
            .on_open(&mut Context::new(&mut self.table), id, peer);
        self.user[index] = Some(state);
    }

    /// Step 6: free the slots of connections closed this turn and hand each
    /// handler state back through `on_close`. Runs after the whole batch, so
    /// no event of it reached a slot's next tenant.
    fn finish_closes(&mut self) {
        while let Some((id, reason)) = self.table.closed.pop_front() {
            self.table.remove(id);
            // A descriptor is free: accepting may succeed again at once.
            self.accept.paused_until = None;
            if let Some(state) = self.user.get_mut(id.index()).and_then(Option::take) {
                self.handler
                    .on_close(&mut Context::new(&mut self.table), id, state, reason);
            }
        }
    }

    /// Stop: close the listener, give queued output one last non-blocking
    /// try, close every connection.
    fn shut_down(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            if let Err(e) = self.poll.registry().deregister(&mut listener) {
                log::debug!("epoll_ctl(DEL) for the listener: {e}");
            }
        }
        let open: Vec<ConnId> = self
            .table
            .conns
            .iter()
            .map(|(index, conn)| ConnId::new(index, conn.generation))
            .collect();
        for id in open {
            self.table.flush(id);
            if self.table.get(id).is_some_and(|c| c.queued_output() > 0) {
                // Output that cannot be delivered: a reset tells the peer
                // the stream is cut, where a FIN would pass it as complete.
                self.table.drop_connection(id, CloseReason::Stopped);
            } else {
                self.table.finish(id, CloseReason::Stopped);
            }
        }
        self.finish_closes();
        self.stopped = true;
        self.stats_reader.publish(&self.table.stats);
    }
}

/// The pause after a resource error when `accept_backoff` is too long to
/// add to the clock: in effect, until a connection closes.
const UNTIL_A_CLOSE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Readable and writable, plus urgent data where the OS reports it apart
/// (Linux `EPOLLPRI`), so a read stopped short at the urgent mark is
/// finished rather than mistaken for drained.
fn interest() -> Interest {
    let both = Interest::READABLE | Interest::WRITABLE;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let both = both | Interest::PRIORITY;
    both
}

impl<H: Handler> std::fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.table.conns.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}
