//! What a handler callback may do: the `Context` it is given.

use std::io;
use std::time::Duration;

use mio::Interest;
use mio::event::Source;

use crate::connect::{self, ConnectError, Started};
use crate::endpoint::Endpoint;
use crate::engine::{Engine, Origin};
use crate::listener::Listener;
use crate::stop::StopRequest;
use crate::timer::{MIN_INTERVAL, deadline_after};
use crate::{Addr, ConnId, Error, ListenerId, ListenerOptions, SourceId, Stats, TimerId};

/// Lets a [`Handler`](crate::Handler) callback act on the whole reactor: any connection
/// (its socket and its state), the listeners, outbound connections, the
/// program's own sources, timers and the stop. [`Reactor::context`](crate::Reactor::context)
/// gives one before `run`, for setting up.
///
/// Effects are immediate where they can be (`send` writes to the socket at
/// once when nothing is queued) and deferred where they must be: a closed
/// connection's `on_close` runs after the current callback returns.
/// Calls naming a connection that has closed are refused (`send`) or
/// ignored (`close`, `abort`, ...); they never reach another connection.
pub struct Context<'a, S = ()> {
    engine: &'a mut Engine<S>,
}

impl<S> std::fmt::Debug for Context<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("connections", &self.engine.table.conns.len())
            .finish_non_exhaustive()
    }
}

impl<'a, S> Context<'a, S> {
    #[inline]
    pub(crate) fn new(engine: &'a mut Engine<S>) -> Context<'a, S> {
        Context { engine }
    }

    /// Sends `data` to connection `id`: written to the socket at once when
    /// nothing is queued, the rest queued and flushed when the socket is
    /// writable (for an outbound connection not yet established, once it
    /// is). A socket error closes the connection (reported through
    /// `on_close`), it does not fail the send.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] for a closed id, [`Error::WriteClosed`]
    /// after `close` or `shutdown_write`, [`Error::OutputLimit`] when the
    /// queue would pass `max_output` (the connection is then aborted).
    #[inline]
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<(), Error> {
        self.engine.table.send(id, data)
    }

    /// Closes gracefully: input is ignored from now on, queued output is
    /// flushed, then FIN; the slot is freed as soon as that cannot make
    /// the kernel reset the connection (see the crate docs, *Closing*).
    pub fn close(&mut self, id: ConnId) {
        self.engine.table.close(id);
    }

    /// Closes at once: queued output is dropped and the peer gets a reset.
    pub fn abort(&mut self, id: ConnId) {
        self.engine.table.abort(id);
    }

    /// Half-closes: FIN once queued output is flushed; reading goes on.
    pub fn shutdown_write(&mut self, id: ConnId) {
        self.engine.table.shutdown_write(id);
    }

    /// Stops reading from `id` until [`resume_read`](Self::resume_read);
    /// the kernel buffers what arrives and TCP flow control slows the peer.
    pub fn pause_read(&mut self, id: ConnId) {
        self.engine.table.pause_read(id);
    }

    /// Resumes reading from `id`; bytes that arrived meanwhile are read on
    /// the next loop turn.
    pub fn resume_read(&mut self, id: ConnId) {
        self.engine.table.resume_read(id);
    }

    /// Bytes queued for `id` that the kernel has not taken yet (0 for a
    /// closed id).
    pub fn pending_output(&self, id: ConnId) -> usize {
        self.engine.table.get(id).map_or(0, |c| c.queued_output())
    }

    /// Whether `id`'s output is backed up: more than
    /// [`Config::write_low_water`](crate::Config::write_low_water) bytes
    /// wait for the kernel. A handler answering pipelined requests stops
    /// consuming input while this is true; the rest is offered again once
    /// it is false, without new bytes from the peer (see the crate docs,
    /// *Output flow*).
    ///
    /// When it answers `true`, [`Handler::on_drain`](crate::Handler::on_drain)
    /// is owed: it runs once the output falls to the low water mark, so a
    /// handler that stopped producing here (from input, a timer, a source
    /// or a message) is always told when to go on.
    pub fn output_backed_up(&mut self, id: ConnId) -> bool {
        self.engine.table.output_backed_up(id)
    }

    /// The peer's address, asked of the kernel (`getpeername`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] for a closed id; [`Error::Connection`]
    /// when the kernel has no address, for example after the peer reset.
    pub fn peer_addr(&self, id: ConnId) -> Result<Addr, Error> {
        let conn = self
            .engine
            .table
            .get(id)
            .ok_or(Error::UnknownConnection(id))?;
        let address = conn.socket.peer_addr().and_then(|address| {
            if let Some(tcp) = address.as_socket() {
                Ok(Addr::Tcp(tcp))
            } else {
                address.as_unix().map(Addr::Unix).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "an unknown address family")
                })
            }
        });
        address.map_err(|source| Error::Connection {
            id,
            op: "getpeername",
            source,
        })
    }

    /// The handler's state for connection `id`: `None` for a closed id,
    /// before its `on_open` has returned, and for the connection the
    /// current callback is about (its state is the callback's `conn`
    /// argument).
    pub fn conn(&self, id: ConnId) -> Option<&S> {
        self.engine.table.get(id)?;
        self.engine.states.get(id.index())?.as_ref()
    }

    /// The handler's state for connection `id`, mutably (see
    /// [`conn`](Self::conn)).
    pub fn conn_mut(&mut self, id: ConnId) -> Option<&mut S> {
        self.engine.table.get(id)?;
        self.engine.states.get_mut(id.index())?.as_mut()
    }

    /// The ids of the live connections (accepted, outbound, closing ones
    /// too, until their `on_close`), in slot order.
    pub fn conn_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.engine.table.live_ids()
    }

    /// Calls `f` with the id and state of each live connection that has
    /// one (every connection but the one the current callback is about),
    /// and a `Context` to act with: a broadcast, a sweep. Connections made
    /// or closed inside `f` may or may not be visited.
    ///
    /// ```
    /// # use tcp_reactor::{Context, Handler, ConnId};
    /// # struct Chat;
    /// # impl Chat {
    /// fn broadcast(cx: &mut Context<'_, String>, line: &[u8]) {
    ///     cx.for_each_conn(|cx, id, _name| {
    ///         // A peer that cannot take it is its own problem.
    ///         let _ = cx.send(id, line);
    ///     });
    /// }
    /// # }
    /// # impl Handler for Chat {
    /// #     type Conn = String;
    /// #     type Message = ();
    /// #     fn on_open(&mut self, _: &mut Context<'_, String>, _: ConnId, _: &tcp_reactor::Addr, _: tcp_reactor::ListenerId) -> String { String::new() }
    /// #     fn on_data(&mut self, _: &mut Context<'_, String>, _: ConnId, _: &mut String, d: &[u8]) -> usize { d.len() }
    /// # }
    /// ```
    pub fn for_each_conn(&mut self, mut f: impl FnMut(&mut Context<'_, S>, ConnId, &mut S)) {
        let mut next = 0;
        while let Some(id) = self.engine.table.live_id_from(next) {
            next = id.index() + 1;
            let Some(mut state) = self
                .engine
                .states
                .get_mut(id.index())
                .and_then(Option::take)
            else {
                continue;
            };
            f(self, id, &mut state);
            if let Some(slot) = self.engine.states.get_mut(id.index()) {
                *slot = Some(state);
            }
        }
    }

    /// Listens on `addr` (TCP, or a Unix socket with [`Addr::unix`]) with
    /// the options of the reactor's [`Config`](crate::Config) (see
    /// [`ListenerOptions::from_config`]). Connections from it come to
    /// [`Handler::on_open`](crate::Handler::on_open) with its id.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] (the address is in use, ...), [`Error::Listener`] or
    /// [`Error::Register`] for other setup failures, [`Error::Stopped`]
    /// once a stop was asked for.
    pub fn listen(&mut self, addr: impl Into<Addr>) -> Result<ListenerId, Error> {
        let options = ListenerOptions::from_config(&self.engine.config);
        self.listen_with(addr, options)
    }

    /// Listens on `addr` with `options` (backlog, `SO_REUSEPORT`, ...).
    ///
    /// For a Unix socket path: a socket file left there by a process that
    /// is gone (a connect to it is refused) is removed first; a live one is
    /// [`Error::Bind`] with `AddrInUse`; a file that is not a socket is
    /// never removed. The socket file is removed again when the listener
    /// closes (by [`close_listener`](Self::close_listener), a stop, or the
    /// reactor's drop), if it is still the one this listener created.
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen), and [`Error::InvalidConfig`] for a
    /// backlog of 0 or above `i32::MAX`.
    pub fn listen_with(
        &mut self,
        addr: impl Into<Addr>,
        options: ListenerOptions,
    ) -> Result<ListenerId, Error> {
        if self.engine.table.stop.is_requested() {
            return Err(Error::Stopped);
        }
        let listener = match addr.into() {
            Addr::Tcp(addr) => Listener::bind_tcp(addr, &options)?,
            Addr::Unix(addr) => Listener::bind_unix(&addr, &options)?,
        };
        self.engine.add_listener(listener, options.nodelay)
    }

    /// Serves a TCP listener the program bound itself (socket activation,
    /// or bind before dropping privileges). It is made non-blocking; its
    /// connections get `TCP_NODELAY` as [`Config::nodelay`](crate::Config::nodelay) says.
    ///
    /// # Errors
    ///
    /// [`Error::Register`] when it cannot be made non-blocking or polled;
    /// [`Error::Stopped`] once a stop was asked for.
    pub fn adopt_tcp_listener(
        &mut self,
        listener: std::net::TcpListener,
    ) -> Result<ListenerId, Error> {
        let listener = Listener::adopt_tcp(listener).map_err(|source| Error::Register {
            op: "fcntl(O_NONBLOCK) for an adopted listener",
            source,
        })?;
        let nodelay = self.engine.config.nodelay;
        self.engine.add_listener(listener, nodelay)
    }

    /// Serves a TCP connection accepted elsewhere (by an acceptor thread,
    /// or handed over by another process) as if this reactor had accepted
    /// it, with `state` as its handler state: `on_open` is not called. It
    /// is made non-blocking and gets the accepted sockets' options
    /// (`TCP_NODELAY` as [`Config::nodelay`](crate::Config::nodelay) says,
    /// keepalive); bytes already waiting on it are read on the next turn.
    /// Counted in [`Stats::accepted`].
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once a stop was asked for;
    /// [`Error::ConnectionLimit`] at `max_connections`; [`Error::Register`]
    /// when it cannot be made non-blocking or polled. The stream is closed
    /// then.
    pub fn adopt_tcp_stream(
        &mut self,
        stream: std::net::TcpStream,
        state: S,
    ) -> Result<ConnId, Error> {
        let engine = &mut *self.engine;
        if engine.table.stop.is_requested() {
            return Err(Error::Stopped);
        }
        if !engine.below_max_connections() {
            return Err(Error::ConnectionLimit);
        }
        let register = |source| Error::Register {
            op: "adopting a TCP stream",
            source,
        };
        stream.set_nonblocking(true).map_err(register)?;
        let socket = socket2::Socket::from(std::os::fd::OwnedFd::from(stream));
        let nodelay = engine.config.nodelay;
        let id = engine
            .add_connection(socket, true, nodelay, Origin::Accepted)
            .map_err(register)?;
        engine.states[id.index()] = Some(state);
        Ok(id)
    }

    /// Serves a Unix listener the program bound itself. Its socket file is
    /// the program's: the reactor never removes it.
    ///
    /// # Errors
    ///
    /// As [`adopt_tcp_listener`](Self::adopt_tcp_listener).
    pub fn adopt_unix_listener(
        &mut self,
        listener: std::os::unix::net::UnixListener,
    ) -> Result<ListenerId, Error> {
        let listener = Listener::adopt_unix(listener).map_err(|source| Error::Register {
            op: "fcntl(O_NONBLOCK) for an adopted listener",
            source,
        })?;
        self.engine.add_listener(listener, false)
    }

    /// Closes one listener; the reactor and the other listeners go on, and
    /// connections it accepted stay open. Returns whether it was open.
    pub fn close_listener(&mut self, listener: ListenerId) -> bool {
        self.engine.close_listener(listener.0)
    }

    /// The address a listener listens on (with port 0, the port the kernel
    /// chose); `None` once it is closed.
    pub fn listener_addr(&self, listener: ListenerId) -> Option<Addr> {
        match self.engine.endpoints.get(listener.0) {
            Some(Endpoint::Listener(entry)) => entry.listener.local_addr().ok(),
            _ => None,
        }
    }

    /// The open listeners, in the order of their slots.
    pub fn listeners(&self) -> impl Iterator<Item = ListenerId> + '_ {
        self.engine.endpoints.listener_keys().map(ListenerId)
    }

    /// Opens an outbound connection to `addr` (TCP, or a Unix socket with
    /// [`Addr::unix`]), with `state` as its handler state, within
    /// [`Config::connect_timeout`](crate::Config::connect_timeout).
    ///
    /// Returns its id at once, before it is established, so a proxy can
    /// pair it with the accepted side; what is sent to it meanwhile is
    /// queued and flushed once it is. [`Handler::on_connect`](crate::Handler::on_connect) runs when it
    /// is established; if it never is, [`Handler::on_close`](crate::Handler::on_close) gets
    /// [`CloseReason::ConnectFailed`](crate::CloseReason::ConnectFailed)
    /// with why (refused, unreachable, timed out), never a callback inside
    /// this call. Established, it is a connection like any other: the same
    /// buffers, limits, timers and closing; counted in
    /// [`Stats::connected`](crate::Stats::connected), not `accepted`.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no socket could be made or polled (`EMFILE`
    /// ...); [`Error::ConnectionLimit`] at
    /// [`Config::max_connections`](crate::Config::max_connections);
    /// [`Error::Stopped`] once a stop was asked for.
    pub fn connect(&mut self, addr: impl Into<Addr>, state: S) -> Result<ConnId, Error> {
        let timeout = self.engine.config.connect_timeout;
        self.connect_within(addr, timeout, state)
    }

    /// As [`connect`](Self::connect), with its own connect timeout (at
    /// least 1 ms).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub fn connect_within(
        &mut self,
        addr: impl Into<Addr>,
        timeout: Duration,
        state: S,
    ) -> Result<ConnId, Error> {
        let addr = addr.into();
        let engine = &mut *self.engine;
        if engine.table.stop.is_requested() {
            return Err(Error::Stopped);
        }
        if !engine.below_max_connections() {
            return Err(Error::ConnectionLimit);
        }
        let failed = |source| Error::Connect {
            addr: Box::new(addr.clone()),
            source,
        };
        let (socket, started) = connect::start(&addr).map_err(failed)?;
        let tcp = matches!(addr, Addr::Tcp(_));
        let nodelay = engine.config.nodelay;
        let id = engine
            .add_connection(socket, tcp, nodelay, Origin::Connecting)
            .map_err(failed)?;
        engine.states[id.index()] = Some(state);
        match started {
            // Established or under way alike: the writable edge that
            // registration reports says which, and `on_connect` runs then.
            Started::Connected | Started::InProgress => {
                let timeout = timeout.max(Duration::from_millis(1));
                engine.table.arm_connect_timeout(id, timeout);
            }
            Started::Failed(error) => {
                // Armed and at once disarmed by the failure: the count of
                // live deadlines stays right.
                engine.table.arm_connect_timeout(id, timeout);
                engine
                    .table
                    .connect_failed(id, ConnectError::from_io(error));
            }
        }
        Ok(id)
    }

    /// Registers one of the program's own sources (a UDP socket, a pipe,
    /// stdin where the OS can poll it: any [`mio::event::Source`]) for
    /// `interest`, edge-triggered. [`Handler::on_source`](crate::Handler::on_source) gets its events
    /// with the returned id. The reactor never reads or writes it: the
    /// program does, until `WouldBlock`, and keeps it alive while it is
    /// registered (a closed descriptor leaves the poller by itself).
    ///
    /// # Errors
    ///
    /// [`Error::Register`] when the poller refuses it (already registered,
    /// or not pollable, as a regular file).
    pub fn register<T: Source + ?Sized>(
        &mut self,
        source: &mut T,
        interest: Interest,
    ) -> Result<SourceId, Error> {
        let engine = &mut *self.engine;
        let register = |source| Error::Register {
            op: "epoll_ctl(ADD) for a source",
            source,
        };
        let key = engine
            .endpoints
            .next_key()
            .ok_or_else(|| register(io::Error::other("no endpoint slot left")))?;
        engine
            .poll
            .registry()
            .register(source, key.token(), interest)
            .map_err(register)?;
        let inserted = engine.endpoints.insert(Endpoint::Source);
        debug_assert_eq!(inserted, key);
        Ok(SourceId(key))
    }

    /// Takes a source out of the poller: no more `on_source` calls for it.
    ///
    /// # Errors
    ///
    /// [`Error::Register`] for an id that is not registered, or when the
    /// poller refuses (the source is not the one registered under it).
    pub fn deregister<T: Source + ?Sized>(
        &mut self,
        id: SourceId,
        source: &mut T,
    ) -> Result<(), Error> {
        let engine = &mut *self.engine;
        if !matches!(engine.endpoints.get(id.0), Some(Endpoint::Source)) {
            return Err(Error::Register {
                op: "epoll_ctl(DEL) for a source",
                source: io::Error::new(io::ErrorKind::NotFound, format!("no source {id}")),
            });
        }
        engine
            .poll
            .registry()
            .deregister(source)
            .map_err(|source| Error::Register {
                op: "epoll_ctl(DEL) for a source",
                source,
            })?;
        engine.endpoints.remove(id.0);
        Ok(())
    }

    /// The reactor's counters as of now.
    pub fn stats(&self) -> Stats {
        self.engine.table.stats
    }

    /// Sets a one-shot timer: [`Handler::on_timer`](crate::Handler::on_timer) runs with `key` once
    /// `after` has passed, in a turn's timer step (after its I/O). A timer
    /// set from `on_timer` waits for the next turn, even with a zero delay.
    /// `key` is yours: a connection's [`ConnId::as_u64`], an index, a kind
    /// of job.
    pub fn set_timer(&mut self, after: Duration, key: u64) -> TimerId {
        let table = &mut self.engine.table;
        let deadline = deadline_after(table.clock.read(), after);
        table.timers.set(deadline, key, None)
    }

    /// Sets a repeating timer: `on_timer` runs with `key` every `every`
    /// (at least 1 ms) until [`cancel_timer`](Self::cancel_timer). A loop
    /// that falls behind skips the periods it missed rather than firing
    /// them in a burst.
    pub fn set_interval(&mut self, every: Duration, key: u64) -> TimerId {
        let every = every.max(MIN_INTERVAL);
        let table = &mut self.engine.table;
        let deadline = deadline_after(table.clock.read(), every);
        table.timers.set(deadline, key, Some(every))
    }

    /// Cancels a timer so it never fires (again). Returns whether it was
    /// armed: `false` for a one-shot timer that has fired, or one already
    /// cancelled.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.engine.table.timers.cancel(timer)
    }

    /// Stops the reactor gracefully, at the end of this loop turn: it closes
    /// every listener, then closes every connection gracefully (input
    /// ignored, queued output flushed, FIN) for up to
    /// [`Config::drain_timeout`](crate::Config::drain_timeout), cuts those
    /// still draining then, runs `on_close` for each (reason
    /// [`CloseReason::Stopped`](crate::CloseReason::Stopped)) and returns
    /// from `run` with a [`StopReport`](crate::StopReport). Timers keep
    /// firing and messages keep arriving while connections drain; new
    /// listeners and connects are refused.
    pub fn stop(&mut self) {
        self.engine.table.request_stop(StopRequest::Graceful);
    }

    /// Stops the reactor at the end of this loop turn without draining:
    /// each connection gets one last non-blocking flush and is closed, with
    /// a reset if output is still queued. Also ends a graceful stop early.
    pub fn stop_now(&mut self) {
        self.engine.table.request_stop(StopRequest::Now);
    }

    /// Whether a stop has been asked for (new work is pointless: no new
    /// connection will come, and the open ones are closing).
    pub fn is_stopping(&self) -> bool {
        self.engine.table.stop.is_requested()
    }
}
