//! The event loop: poll, dispatch, serve, accept, close; one turn at a time.

mod accept;
mod read;

use accept::AcceptState;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll};

use crate::conn::flag;
use crate::id::LISTENER;
use crate::table::ConnTable;
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
        let queued_to_read = conn.has(flag::IN_READY_QUEUE);
        if event.is_writable() && conn.queued_output() > 0 && self.table.flush(id) {
            self.drained(id);
        }
        // A connection already in the ready queue is read from there: one
        // read budget per turn, however it became ready.
        if !queued_to_read {
            self.read_connection(id);
        }
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

impl<H: Handler> std::fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.table.conns.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}
