//! Accepting connections: budgets, `max_connections`, the pause after
//! resource errors, and setting up each new socket.

use std::io;
use std::mem;

use socket2::Socket;

use crate::engine::Origin;
use crate::id::EndpointKey;
use crate::timer::deadline_after;
use crate::{Addr, Context, Handler, ListenerId};

use super::Core;

impl<H: Handler> Core<H> {
    /// Step 5: accept from each listener with connections waiting, within
    /// the turn's budget for each, while below `max_connections` and not
    /// paused by a resource error.
    pub(super) fn accept_connections(&mut self) {
        let mut keys = mem::take(&mut self.listener_keys);
        keys.clear();
        keys.extend(self.engine.endpoints.listener_keys());
        let mut pending = false;
        for &key in &keys {
            self.accept_from(key);
            pending |= self
                .engine
                .endpoints
                .listener_mut(key)
                .is_some_and(|entry| entry.pending);
        }
        self.engine.accept.pending = pending;
        self.listener_keys = keys;
    }

    fn accept_from(&mut self, key: EndpointKey) {
        let mut budget = self.engine.config.accepts_per_turn;
        while budget > 0
            && self.engine.below_max_connections()
            && !self.engine.table.stop.is_requested()
        {
            if let Some(until) = self.engine.accept.paused_until {
                if self.engine.table.clock.read() < until {
                    return;
                }
                self.engine.accept.paused_until = None;
            }
            let Some(entry) = self.engine.endpoints.listener_mut(key) else {
                return;
            };
            if !entry.pending {
                return;
            }
            budget -= 1;
            match entry.listener.accept() {
                Ok((socket, peer)) => {
                    let (tcp, nodelay) = (entry.listener.is_tcp(), entry.nodelay);
                    self.engine.accept.warned = false;
                    self.open(socket, peer, tcp && nodelay, tcp, ListenerId(key));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => entry.pending = false,
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
        self.engine.table.stats.accept_errors += 1;
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
        let backoff = self.engine.config.accept_backoff;
        if self.engine.accept.warned {
            log::debug!("{op}: {e}; pausing accepts for {backoff:?}");
        } else {
            log::warn!("{op}: {e}; pausing accepts for {backoff:?} or until a connection closes");
            self.engine.accept.warned = true;
        }
        // A backoff too long for the clock saturates: until a close.
        let now = self.engine.table.clock.read();
        self.engine.accept.paused_until = Some(deadline_after(now, backoff));
    }

    /// Sets up an accepted socket and gives it to the handler.
    fn open(&mut self, socket: Socket, peer: Addr, nodelay: bool, tcp: bool, listener: ListenerId) {
        let id = match self
            .engine
            .add_connection(socket, tcp, nodelay, Origin::Accepted)
        {
            Ok(id) => id,
            Err(e) => {
                // ENOMEM or ENOSPC (max_user_watches): as short of resources
                // as EMFILE, and accepting more would only fail the same way.
                self.engine.table.stats.accept_errors += 1;
                self.pause_accepting(&format!("epoll_ctl(ADD) for {peer} (dropped)"), &e);
                return;
            }
        };
        let state = self
            .handler
            .on_open(&mut Context::new(&mut self.engine), id, &peer, listener);
        self.engine.states[id.index()] = Some(state);
    }
}
