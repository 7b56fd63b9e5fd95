//! The event loop: poll, dispatch, serve, accept, close; one turn at a time.

mod accept;
mod outbound;
mod read;
#[cfg(feature = "signals")]
mod signals;
mod stop;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::time::Duration;

use mio::event::Event;
use mio::{Events, Poll};

use crate::conn::{Lifecycle, flag};
use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::handle::Command;
use crate::id::{EndpointKey, Generations, TokenKind, token_kind};
use crate::table::{live_mut, tenant_mut};
use crate::timer::{Due, earliest, time_until};
use crate::{
    Config, ConnId, Context, Error, Handle, Handler, ListenerOptions, SourceId, Stats, StatsReader,
    StopReport,
};

/// A single-threaded reactor: any number of listeners (TCP, Unix),
/// outbound connections and the program's own sources, served by one loop.
///
/// Build it with [`Reactor::new`] and set it up through
/// [`context`](Reactor::context) (listeners, connects, timers), or with
/// [`Reactor::bind`] for the one-listener server; then call
/// [`run`](Reactor::run) (blocks until stopped) or drive it yourself with
/// [`run_once`](Reactor::run_once). See the [crate documentation](crate)
/// for one loop turn step by step and the guarantees the handler can rely
/// on.
pub struct Reactor<H: Handler> {
    /// The `epoll_wait` output buffer, apart from the rest so a turn can
    /// iterate it while serving each event through `&mut Core`.
    events: Events,
    core: Core<H>,
}

/// Everything a loop turn works on.
struct Core<H: Handler> {
    handler: H,
    /// What callbacks reach through their `Context`: connections and their
    /// states, endpoints, the poller, the config.
    engine: Engine<H::Conn>,
    /// The one read buffer all connections share; handlers get slices of it.
    /// Exactly `Limits::read_limit` long, the most any read may take, so
    /// the common read takes all of it with no bounds check.
    scratch: Vec<u8>,
    stats_reader: StatsReader,
    handle: Handle<H::Message>,
    /// Commands taken from the handle, kept to reuse its capacity.
    commands: Vec<Command<H::Message>>,
    /// The listeners an accept step walks, kept to reuse its capacity.
    listener_keys: Vec<EndpointKey>,
    /// Set by `stop_on_signals`.
    #[cfg(feature = "signals")]
    signals: Option<signals::SignalPipe>,
}

impl<H: Handler> Reactor<H> {
    /// Checks `config` and builds a reactor with no listener: add them,
    /// and connections, timers, sources, through [`context`](Self::context),
    /// before `run` or from any callback.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`]; [`Error::Poll`] when the poller or the
    /// handle's waker cannot be made.
    pub fn new(config: Config, handler: H) -> Result<Reactor<H>, Error> {
        config.validate()?;
        let poll = Poll::new().map_err(|source| Error::Poll {
            op: "epoll_create",
            source,
        })?;
        let handle = Handle::new(poll.registry()).map_err(|source| Error::Poll {
            op: "eventfd (the handle's waker)",
            source,
        })?;
        let events = Events::with_capacity(config.event_capacity);
        let engine = Engine::new(config, poll);
        let scratch = vec![0; engine.table.limits.read_limit];
        Ok(Reactor {
            events,
            core: Core {
                handler,
                engine,
                scratch,
                stats_reader: StatsReader::default(),
                handle,
                commands: Vec::new(),
                listener_keys: Vec::new(),
                #[cfg(feature = "signals")]
                signals: None,
            },
        })
    }

    /// The one-listener server: [`new`](Self::new), then a TCP listener on
    /// `addr` with the config's listener options (`SO_REUSEADDR`,
    /// non-blocking, `listen(config.backlog)`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] before anything is bound;
    /// [`Error::Bind`] naming the address and the OS reason;
    /// [`Error::Listener`], [`Error::Register`] or [`Error::Poll`] for
    /// other setup failures.
    pub fn bind(addr: SocketAddr, config: Config, handler: H) -> Result<Reactor<H>, Error> {
        let mut reactor = Reactor::new(config, handler)?;
        let options = ListenerOptions::from_config(&reactor.core.engine.config);
        reactor.context().listen_with(addr, options)?;
        Ok(reactor)
    }

    /// Makes this reactor number `index` of a [`ReactorSet`](crate::ReactorSet)
    /// (below `id::MAX_REACTORS`): the ids it hands out carry `index`, so
    /// the set's handle can route them. Called before any connection.
    pub(crate) fn join_set(&mut self, index: usize) {
        self.core.engine.table.generations = Generations::tagged(index);
    }

    /// A [`Context`] for setting up before `run` (or between `run_once`
    /// calls): listeners, outbound connections, sources, timers, sends.
    /// Whatever a callback may do.
    pub fn context(&mut self) -> Context<'_, H::Conn> {
        Context::new(&mut self.core.engine)
    }

    /// The address of the first open TCP listener (the one
    /// [`bind`](Self::bind) made); with port 0, the real port. `None`
    /// without one (see [`Context::listener_addr`] for the others).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let endpoints = &self.core.engine.endpoints;
        endpoints
            .listener_keys()
            .find_map(|key| match endpoints.get(key) {
                Some(Endpoint::Listener(entry)) => {
                    entry.listener.local_addr().ok().and_then(|a| a.as_tcp())
                }
                _ => None,
            })
    }

    /// The counters as of now.
    pub fn stats(&self) -> Stats {
        self.core.engine.table.stats
    }

    /// A reader of the counters for other threads (updated once per turn).
    pub fn stats_reader(&self) -> StatsReader {
        self.core
            .stats_reader
            .new_reader(&self.core.engine.table.stats)
    }

    /// The handler, for a program that drives the loop with `run_once`.
    pub fn handler(&self) -> &H {
        &self.core.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.core.handler
    }

    /// A handle to control this reactor from other threads: stop it, send
    /// to a connection, message the handler. Clone it freely.
    pub fn handle(&self) -> Handle<H::Message> {
        self.core.handle.clone()
    }

    /// Whether the reactor has stopped: a stop (from [`Context::stop`], or
    /// a [`Handle`]) has finished draining.
    pub fn is_stopped(&self) -> bool {
        self.core.engine.table.stop.is_stopped()
    }

    /// What the stop achieved, once the reactor has stopped.
    pub fn stop_report(&self) -> Option<StopReport> {
        let stop = &self.core.engine.table.stop;
        stop.is_stopped().then(|| stop.report.unwrap_or_default())
    }

    /// Runs turns until the reactor stops ([`Context::stop`],
    /// [`Handle::stop`], or their `stop_now`), and reports what the stop
    /// achieved.
    ///
    /// # Errors
    ///
    /// Only [`Error::Poll`], when `epoll_wait` itself fails (an OS fault;
    /// `EINTR` is retried). Nothing a peer does makes `run` return.
    pub fn run(&mut self) -> Result<StopReport, Error> {
        while !self.is_stopped() {
            self.run_once(None)?;
        }
        Ok(self.core.engine.table.stop.report.unwrap_or_default())
    }

    /// Runs one turn, waiting at most `timeout` for events (`None`: until
    /// something happens). The wait is shorter when the reactor has work of
    /// its own: connections with data left over, a timer due, accepts to
    /// retry, a stop to finish. Does nothing once stopped.
    ///
    /// A signal delivered to this thread while it waits (`EINTR`) ends the
    /// turn early with nothing done, so a program driving the loop can act
    /// on what its signal handlers recorded, without a signal thread.
    /// [`run`](Self::run) just waits again.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let core = &mut self.core;
        if core.engine.table.stop.is_stopped() {
            return Ok(());
        }
        let timeout = core.poll_timeout(timeout);
        // Before a long wait the snapshot must go out: readers would
        // otherwise see a stale one for as long as the loop sleeps.
        core.stats_reader.publish(&core.engine.table.stats, timeout);
        if core.wait_for_events(&mut self.events, timeout)? {
            core.serve_turn(&self.events);
        }
        Ok(())
    }
}

impl<H: Handler> Core<H> {
    /// Steps 3 to 8 of a turn, once `epoll_wait` has filled `events`.
    fn serve_turn(&mut self, events: &Events) {
        // The end of step 2: the clock, read once for the turn.
        if self.needs_clock() {
            self.engine.table.clock.read();
        }
        let carried = self.engine.table.ready.len();
        // 3. Dispatch.
        self.dispatch_events(events);
        // Most turns of a busy loop have nothing more to do: a test of the
        // chores flag (before and after the timers, which may close
        // connections or ask for a stop) and one of the timer heap.
        // 4. Ready queue, 5. accept.
        if self.engine.table.chores {
            self.serve_ready_and_accept(carried);
        }
        // 6. Timers.
        if !self.engine.table.timers.is_empty() {
            self.fire_timers();
        }
        // 7. Close, 8. stop.
        if self.engine.table.chores {
            self.close_and_stop();
        }
    }

    /// Steps 4 and 5. Out of line, like `close_and_stop`, so the event loop
    /// keeps its values in registers (inlined, the rarely taken steps cost
    /// the echo path about ten instructions).
    #[inline(never)]
    fn serve_ready_and_accept(&mut self, carried: usize) {
        if carried > 0 {
            self.serve_ready_queue(carried);
        }
        if self.engine.accept.pending {
            self.accept_connections();
        }
    }

    /// Steps 7 and 8, then what is left to do next turn.
    #[inline(never)]
    fn close_and_stop(&mut self) {
        if !self.engine.table.closed.is_empty() {
            self.free_closed();
        }
        if self.engine.table.stop.is_requested() {
            self.progress_stop();
        }
        self.engine.table.chores = !self.engine.table.ready.is_empty()
            || !self.engine.table.closed.is_empty()
            || self.engine.accept.pending
            || self.engine.table.stop.is_requested();
    }

    /// Step 1: zero if there is work already, else until the nearest
    /// deadline (a timer, the end of an accept pause, the drain deadline),
    /// else no limit; never more than the caller's `timeout`.
    fn poll_timeout(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        // Most turns: no work carried over and no deadline of our own (a
        // drain deadline or an accept pause exists only with chores).
        if !self.engine.table.chores {
            if self.engine.table.timers.is_empty() {
                return timeout;
            }
            // Only timers: until the nearest (the clock was read this turn,
            // as it is on every turn while timers are armed).
            let until_timer = self
                .engine
                .table
                .timers
                .next_deadline()
                .map(|next| time_until(next, self.engine.table.clock.now));
            return earliest(until_timer, timeout);
        }
        self.own_poll_timeout(timeout)
    }

    #[inline(never)]
    fn own_poll_timeout(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        let accept_waits = self.engine.accept.pending && self.engine.below_max_connections();
        let own = if !self.engine.table.ready.is_empty()
            || self.engine.table.stop.is_new_request()
            || (accept_waits && self.engine.accept.paused_until.is_none())
        {
            Some(Duration::ZERO)
        } else {
            let pause = self.engine.accept.paused_until.filter(|_| accept_waits);
            // Timers need the clock read every turn (`needs_clock`); the
            // end of a pause or of a drain is measured from now.
            let drain_deadline = self.engine.table.stop.drain_deadline();
            let now = if pause.is_some() || drain_deadline.is_some() {
                self.engine.table.clock.read()
            } else {
                self.engine.table.clock.now
            };
            let next = earliest(
                earliest(self.engine.table.timers.next_deadline(), pause),
                drain_deadline,
            );
            next.map(|next| time_until(next, now))
        };
        earliest(own, timeout)
    }

    /// Whether this turn needs the time: for timers, and for activity
    /// stamps when idle timeouts are on. Otherwise the clock is not read
    /// (the end of an accept pause or of a drain reads it where it is
    /// checked).
    fn needs_clock(&self) -> bool {
        !self.engine.table.timers.is_empty() || self.engine.config.idle_timeout.is_some()
    }

    /// Step 2: `epoll_wait`. Returns `false` when a signal interrupted it
    /// (`EINTR`): the turn ends there, with nothing done and not counted,
    /// so a program driving the loop sees the flags its signal handlers
    /// set; `run` simply waits again.
    fn wait_for_events(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> Result<bool, Error> {
        match self.engine.poll.poll(events, timeout) {
            Ok(()) => {
                self.engine.table.stats.turns += 1;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                // The next wait is measured from now: otherwise each signal
                // would restart a timer's whole remaining wait.
                if self.needs_clock() {
                    self.engine.table.clock.read();
                }
                Ok(false)
            }
            Err(source) => Err(Error::Poll {
                op: "epoll_wait",
                source,
            }),
        }
    }

    /// Step 3: each event serves its connection at once: flush queued
    /// output first, then read within the budget.
    fn dispatch_events(&mut self, events: &Events) {
        let mut count = 0;
        for event in events.iter() {
            count += 1;
            // A connection's token is told from the rest with one bit test.
            match token_kind(event.token()) {
                TokenKind::Conn(id) => self.connection_event(id, event),
                TokenKind::Endpoint(key) => self.endpoint_event(key, event),
                TokenKind::Waker => self.run_commands(),
                TokenKind::Signals => self.signals_received(),
            }
        }
        if count == events.capacity() {
            self.engine.table.stats.full_event_batches += 1;
        }
    }

    /// Step 3 for one connection: a plain readable edge on a connection at
    /// rest is read at once (the fast path); any other event completes a
    /// connect under way, notes what the edge said, flushes queued output,
    /// then reads within the budget.
    fn connection_event(&mut self, id: ConnId, event: &Event) {
        // A stale event for an earlier tenant of the slot finds nothing.
        let Some(conn) = tenant_mut(&mut self.engine.table.conns, id) else {
            return;
        };
        // The common case, served with this one slab lookup: a plain
        // readable edge, on a connection at rest: open, no bit set (nothing
        // paused, half-closed, or waiting in the ready queue) and no buffer
        // (nothing queued either way, so nothing to flush).
        if conn.at_rest() && is_plain_readable(event) {
            if self.read_once::<true>(id, self.scratch.len()) {
                self.read_connection(id, self.engine.config.reads_per_turn - 1);
            }
            return;
        }
        if conn.lifecycle == Lifecycle::Dead {
            // Closed this turn: the event is stale, and dropped.
            return;
        }
        if conn.is_connecting() && !self.connect_event(id) {
            return;
        }
        let Some(conn) = live_mut(&mut self.engine.table.conns, id) else {
            return;
        };
        if event.is_readable() {
            conn.flags |= flag::READABLE;
        }
        // After a read-closed, error or urgent-data event, a short read
        // does not mean the socket is empty, and no further edge will come.
        if event.is_read_closed() || event.is_error() || event.is_priority() {
            conn.flags |= flag::READABLE | flag::READ_TO_END;
        }
        if event.is_error() {
            // Ask for the error rather than wait for a read to surface it:
            // reading may be paused, or over (after EOF), and the connection
            // would linger.
            if let Ok(Some(e)) = conn.socket.take_error() {
                self.engine.table.fail(id, e);
                return;
            }
        }
        let queued_to_read = conn.has(flag::IN_READY_QUEUE);
        if event.is_writable() && conn.queued_output() > 0 && self.engine.table.flush(id) {
            self.backpressure_lifted(id);
        }
        // A connection already in the ready queue is read from there: one
        // read budget per turn, however it became ready.
        if !queued_to_read {
            self.read_connection(id, self.engine.config.reads_per_turn);
        }
    }

    /// An event for a listener (connections wait: accept in step 5) or for
    /// one of the program's sources (passed to the handler). An event for
    /// an endpoint closed earlier in this batch finds nothing and is
    /// dropped.
    #[cold]
    fn endpoint_event(&mut self, key: EndpointKey, event: &Event) {
        match self.engine.endpoints.get_mut(key) {
            Some(Endpoint::Listener(entry)) => {
                entry.pending = true;
                self.engine.accept.pending = true;
                self.engine.table.chores = true;
            }
            Some(Endpoint::Source) => {
                self.handler
                    .on_source(&mut Context::new(&mut self.engine), SourceId(key), event);
            }
            None => {}
        }
    }

    /// Step 4: connections whose read budget ran out last turn, or whose
    /// reading resumed, are read now: the first `carried` of the queue, the
    /// ones queued before this turn's events. Those queued during this turn
    /// wait for the next, so no connection gets two budgets in one turn.
    fn serve_ready_queue(&mut self, carried: usize) {
        for _ in 0..carried {
            let Some(id) = self.engine.table.ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.engine.table.get_mut(id) {
                conn.flags &= !flag::IN_READY_QUEUE;
                self.read_connection(id, self.engine.config.reads_per_turn);
            }
        }
    }

    /// Runs what handles have asked for: a stop, then queued commands in
    /// order.
    // Out of line: see `serve_ready_and_accept`.
    #[inline(never)]
    fn run_commands(&mut self) {
        self.engine
            .table
            .request_stop(self.handle.take_stop_request());
        let mut commands = mem::take(&mut self.commands);
        self.handle.take_commands(&mut commands);
        for command in commands.drain(..) {
            match command {
                Command::Send(id, data) => {
                    if let Err(e) = self.engine.table.send(id, &data) {
                        log::debug!("send from a handle dropped: {e}");
                    }
                }
                Command::Message(message) => {
                    self.handler
                        .on_message(&mut Context::new(&mut self.engine), message);
                }
            }
        }
        self.commands = commands;
    }

    /// Step 6: fire what is due: the handler's timers, idle checks, close
    /// checks. Timers set meanwhile wait for the next turn.
    fn fire_timers(&mut self) {
        let now = self.engine.table.clock.now;
        if !self.engine.table.timers.any_due(now) {
            self.engine.table.sweep_timers();
            return;
        }
        let before = self.engine.table.timers.next_seq();
        while let Some(due) = self.engine.table.timers.pop_due(now, before) {
            match due {
                Due::User(timer, key) => {
                    self.engine.table.stats.timers_fired += 1;
                    self.handler
                        .on_timer(&mut Context::new(&mut self.engine), timer, key);
                }
                Due::Idle(id) => self.engine.table.check_idle(id),
                Due::Close { id, cut_at } => self.engine.table.check_close(id, cut_at),
                Due::Connect(id) => self.engine.table.check_connect(id),
            }
        }
        self.engine.table.sweep_timers();
    }

    /// Step 7: free the slots of connections closed this turn and hand each
    /// handler state back through `on_close`. Runs after the whole batch, so
    /// no event of it reached a slot's next tenant.
    fn free_closed(&mut self) {
        while let Some((id, reason)) = self.engine.table.closed.pop_front() {
            self.engine.table.remove(id);
            // A descriptor is free: accepting may succeed again at once.
            self.engine.accept.paused_until = None;
            if let Some(state) = self
                .engine
                .states
                .get_mut(id.index())
                .and_then(Option::take)
            {
                self.handler
                    .on_close(&mut Context::new(&mut self.engine), id, state, reason);
            }
        }
    }
}

#[cfg(not(feature = "signals"))]
impl<H: Handler> Core<H> {
    /// Without the `signals` feature nothing is registered under the
    /// signal token.
    fn signals_received(&mut self) {}
}

/// Readable, and none of what makes a short read ambiguous: read-closed,
/// error or urgent data (see `flag::READ_TO_END`).
#[inline]
fn is_plain_readable(event: &Event) -> bool {
    event.is_readable() && !(event.is_read_closed() || event.is_error() || event.is_priority())
}

impl<H: Handler> Drop for Reactor<H> {
    /// Handles refuse every call once the reactor is gone, and listeners
    /// close as `close_listener` closes them: a Unix socket file the
    /// reactor created is removed.
    fn drop(&mut self) {
        self.core.handle.close();
        self.core.engine.close_listeners();
    }
}

impl<H: Handler> std::fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("local_addr", &self.local_addr())
            .field("connections", &self.core.engine.table.conns.len())
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}
