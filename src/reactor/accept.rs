//! Accepting connections: budgets, `max_connections`, the pause after
//! resource errors, and setting up each new socket.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::Interest;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use socket2::{Socket, TcpKeepalive};

use crate::stop::StopRequest;
use crate::timer::{Tick, deadline_after};
use crate::{Context, Handler, Keepalive};

use super::Core;

/// Where accepting stands. The listener is edge-triggered too: once told
/// readable, we must accept until `WouldBlock` or we are never told again.
#[derive(Debug, Default)]
pub(super) struct AcceptState {
    /// Connections may be waiting in the kernel backlog.
    pub(super) pending: bool,
    /// Accepting paused after a resource error (`EMFILE` ...) until then, or
    /// until a connection closes and frees a descriptor.
    pub(super) paused_until: Option<Tick>,
    /// A resource error was logged at warn level in this episode; repeats
    /// go to debug so a sustained `EMFILE` does not flood the logs.
    warned: bool,
}

impl<H: Handler> Core<H> {
    pub(super) fn below_max_connections(&self) -> bool {
        self.table.conns.len() < self.config.max_connections
    }

    /// Step 5: accept within the turn's budget, while below
    /// `max_connections` and not paused by a resource error.
    pub(super) fn accept_connections(&mut self) {
        let mut budget = self.config.accepts_per_turn;
        while self.accept.pending
            && budget > 0
            && self.below_max_connections()
            && self.table.stop_request == StopRequest::None
        {
            if let Some(until) = self.accept.paused_until {
                if self.table.clock.read() < until {
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
        // A backoff too long for the clock saturates: until a close.
        let now = self.table.clock.read();
        self.accept.paused_until = Some(deadline_after(now, backoff));
    }

    /// Sets up an accepted socket and gives it to the handler.
    fn open(&mut self, stream: TcpStream, peer: SocketAddr) {
        // Held as a socket2 socket from here on (see `Conn::socket`).
        let socket = Socket::from(OwnedFd::from(stream));
        if self.config.nodelay {
            if let Err(e) = socket.set_tcp_nodelay(true) {
                log::debug!("TCP_NODELAY for {peer}: {e}");
            }
        }
        if let Some(keepalive) = &self.config.keepalive {
            if let Err(e) = socket.set_tcp_keepalive(&tcp_keepalive(keepalive)) {
                log::debug!("TCP keepalive for {peer}: {e}");
            }
        }
        // Urgent data stays in the byte stream: no byte silently vanishes,
        // and the reactor never needs MSG_OOB.
        if let Err(e) = socket.set_out_of_band_inline(true) {
            log::debug!("SO_OOBINLINE for {peer}: {e}");
        }
        #[cfg(target_vendor = "apple")]
        if let Err(e) = socket.set_nosigpipe(true) {
            log::debug!("SO_NOSIGPIPE for {peer}: {e}");
        }
        let id = self.table.next_id();
        // Registered once for everything, never re-registered: edge-triggered
        // writable costs nothing while idle, and the hot path makes no
        // epoll_ctl call.
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            id.token(),
            interest(),
        ) {
            // ENOMEM or ENOSPC (max_user_watches): as short of resources as
            // EMFILE, and accepting more would only fail the same way.
            self.table.stats.accept_errors += 1;
            self.pause_accepting(&format!("epoll_ctl(ADD) for {peer} (dropped)"), &e);
            return;
        }
        let inserted = self.table.insert(socket);
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
/// finished rather than mistaken for drained.
fn interest() -> Interest {
    let both = Interest::READABLE | Interest::WRITABLE;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let both = both | Interest::PRIORITY;
    both
}
