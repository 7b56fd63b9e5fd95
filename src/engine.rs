//! The engine: everything a handler's [`Context`](crate::Context) and the
//! loop both act on. The connection table, the handler's state for each
//! connection, the endpoints (listeners, the program's sources), the
//! poller and the config. The loop keeps the handler and the read buffer
//! apart from it, so a callback can be given `&mut` to both.

use std::io;
use std::os::fd::AsRawFd;

use mio::unix::SourceFd;
use mio::{Interest, Poll};
use socket2::{Socket, TcpKeepalive};

use crate::endpoint::{Endpoint, Endpoints, ListenerEntry};
use crate::id::EndpointKey;
use crate::listener::Listener;
use crate::table::ConnTable;
use crate::{Config, ConnId, Error, Keepalive, ListenerId};

/// Where accepting stands, over all listeners.
#[derive(Debug, Default)]
pub(crate) struct AcceptState {
    /// Some listener may have connections waiting (see
    /// `ListenerEntry::pending`).
    pub(crate) pending: bool,
    /// Accepting paused after a resource error (`EMFILE` ...) until then, or
    /// until a connection closes and frees a descriptor.
    pub(crate) paused_until: Option<crate::timer::Tick>,
    /// A resource error was logged at warn level in this episode; repeats
    /// go to debug so a sustained `EMFILE` does not flood the logs.
    pub(crate) warned: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Engine<S> {
    pub(crate) table: ConnTable,
    /// The handler's state for each connection, indexed like the slab:
    /// `None` before `on_open` and after `on_close`, and while a callback
    /// about that connection holds it (it is moved out for the call, so the
    /// callback's `Context` can reach every other connection's state).
    pub(crate) states: Vec<Option<S>>,
    pub(crate) endpoints: Endpoints,
    pub(crate) poll: Poll,
    pub(crate) config: Config,
    pub(crate) accept: AcceptState,
}

/// How a new connection came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Accepted,
    /// `connect` begun; established once the socket turns writable.
    Connecting,
}

impl<S> Engine<S> {
    pub(crate) fn new(config: Config, poll: Poll) -> Engine<S> {
        Engine {
            table: ConnTable::new(&config),
            states: Vec::new(),
            endpoints: Endpoints::default(),
            poll,
            config,
            accept: AcceptState::default(),
        }
    }

    /// Whether another connection fits under `max_connections`.
    #[inline]
    pub(crate) fn below_max_connections(&self) -> bool {
        self.table.conns.len() < self.config.max_connections
    }

    /// Sets up a connected (or connecting) stream socket, registers it and
    /// takes a slot for it. `tcp` says whether TCP options apply.
    pub(crate) fn add_connection(
        &mut self,
        socket: Socket,
        tcp: bool,
        nodelay: bool,
        origin: Origin,
    ) -> io::Result<ConnId> {
        if tcp {
            if nodelay {
                if let Err(e) = socket.set_tcp_nodelay(true) {
                    log::debug!("TCP_NODELAY: {e}");
                }
            }
            if let Some(keepalive) = &self.config.keepalive {
                if let Err(e) = socket.set_tcp_keepalive(&tcp_keepalive(keepalive)) {
                    log::debug!("TCP keepalive: {e}");
                }
            }
            // Urgent data stays in the byte stream: no byte silently
            // vanishes, and the reactor never needs MSG_OOB.
            if let Err(e) = socket.set_out_of_band_inline(true) {
                log::debug!("SO_OOBINLINE: {e}");
            }
        }
        #[cfg(target_vendor = "apple")]
        if let Err(e) = socket.set_nosigpipe(true) {
            log::debug!("SO_NOSIGPIPE: {e}");
        }
        let id = self.table.next_id();
        // Registered once for everything, never re-registered: edge-triggered
        // writable costs nothing while idle, and the hot path makes no
        // epoll_ctl call. A connecting socket's first writable edge says
        // its connect is done.
        self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            id.token(),
            interest(),
        )?;
        let inserted = self.table.insert(socket, origin == Origin::Connecting);
        debug_assert_eq!(inserted, id);
        let index = id.index();
        if self.states.len() <= index {
            self.states.resize_with(index + 1, || None);
        }
        Ok(id)
    }

    /// Registers `listener` and starts accepting from it.
    pub(crate) fn add_listener(
        &mut self,
        mut listener: Listener,
        nodelay: bool,
    ) -> Result<ListenerId, Error> {
        if self.table.stop.is_requested() {
            return Err(Error::Stopped);
        }
        let register = |source| Error::Register {
            op: "epoll_ctl(ADD) for a listener",
            source,
        };
        let key = self
            .endpoints
            .next_key()
            .ok_or_else(|| register(io::Error::other("no endpoint slot left")))?;
        listener
            .register(self.poll.registry(), key.token())
            .map_err(register)?;
        let inserted = self.endpoints.insert(Endpoint::Listener(ListenerEntry {
            listener,
            nodelay,
            // Connections that queued before registration (an adopted
            // listener's) are reported by registration itself: epoll
            // reports readiness that exists when a descriptor is added.
            pending: false,
        }));
        debug_assert_eq!(inserted, key);
        Ok(ListenerId(key))
    }

    /// Closes one listener: the kernel refuses new connections to it from
    /// now on. Returns whether it was open.
    pub(crate) fn close_listener(&mut self, key: EndpointKey) -> bool {
        if self.endpoints.listener_mut(key).is_none() {
            return false;
        }
        if let Some(Endpoint::Listener(entry)) = self.endpoints.remove(key) {
            entry.listener.close(self.poll.registry());
        }
        true
    }

    /// Closes every listener (a stop).
    pub(crate) fn close_listeners(&mut self) {
        self.accept.pending = false;
        let keys: Vec<EndpointKey> = self.endpoints.listener_keys().collect();
        for key in keys {
            self.close_listener(key);
        }
    }
}

/// `SO_KEEPALIVE` with the probe times and count, where the OS lets them be
/// set per socket (everywhere but OpenBSD, which has the idle time only).
fn tcp_keepalive(keepalive: &Keepalive) -> TcpKeepalive {
    let params = TcpKeepalive::new().with_time(keepalive.idle);
    #[cfg(not(target_os = "openbsd"))]
    let params = params
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    params
}

/// Readable and writable, plus urgent data where the OS reports it apart
/// (Linux `EPOLLPRI`), so a read stopped short at the urgent mark is
/// read on rather than mistaken for the socket empty.
fn interest() -> Interest {
    let both = Interest::READABLE | Interest::WRITABLE;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let both = both | Interest::PRIORITY;
    both
}
