//! The one error type of the public API.

use std::io;

use crate::{Addr, ConnId};

/// What can fail at the API surface.
///
/// Syscall failures inside the loop stay `io::Error`s; this type adds what
/// failed and where (which address would not bind, which connection is gone).
/// Nothing a peer does is returned from [`Reactor::run`](crate::Reactor::run):
/// peer faults close that one connection and reach the handler as a
/// [`CloseReason`](crate::CloseReason).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`Config`](crate::Config) breaks one of its rules; nothing was bound.
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// `bind(2)` failed, for example because the address is in use.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address that would not bind (boxed: a Unix address is large,
        /// and every `Result` of the API carries this type).
        addr: Box<Addr>,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// Another step of setting up the listener failed (`socket`,
    /// `setsockopt`, `listen`, `epoll_ctl`).
    #[error("{op} for listener {addr}: {source}")]
    Listener {
        /// The failing operation, named after its syscall.
        op: &'static str,
        /// The address the listener was for.
        addr: Box<Addr>,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// Creating or waiting on the poller failed: an OS fault, never a peer's.
    #[error("{op}: {source}")]
    Poll {
        /// The failing operation (`epoll_create`, `epoll_wait`).
        op: &'static str,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// Setting up the signal handlers of
    /// [`Reactor::stop_on_signals`](crate::Reactor::stop_on_signals) failed
    /// (the socket pair, or registering it).
    #[error("installing the SIGINT and SIGTERM handlers: {source}")]
    Signals {
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// Registering with the poller failed: a listener, or one of the
    /// program's sources ([`Context::register`](crate::Context::register)).
    #[error("{op}: {source}")]
    Register {
        /// The failing operation.
        op: &'static str,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// An outbound connection could not even be started: no socket, or the
    /// poller refused it (`EMFILE` and the like). Failures of the connect
    /// itself (refused, timed out) reach the handler instead, as
    /// [`CloseReason::ConnectFailed`](crate::CloseReason::ConnectFailed).
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where it was to go.
        addr: Box<Addr>,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// The reactor holds [`Config::max_connections`](crate::Config::max_connections)
    /// connections: no outbound one can be made until one closes.
    #[error("at max_connections: no connection can be made until one closes")]
    ConnectionLimit,

    /// The connection is closed (or closing) or the id never existed.
    #[error("connection {0} is closed or unknown")]
    UnknownConnection(ConnId),

    /// The connection was shut down for writing (`close`, `shutdown_write`);
    /// nothing more can be sent on it.
    #[error("connection {0} is shut down for writing")]
    WriteClosed(ConnId),

    /// Queuing these bytes would pass the connection's hard output cap
    /// ([`Config::max_output`](crate::Config::max_output)); the connection
    /// was aborted.
    #[error("connection {0} passed its output limit and was aborted")]
    OutputLimit(ConnId),

    /// The reactor has stopped (or was dropped): a [`Handle`](crate::Handle)
    /// call was refused.
    #[error("the reactor has stopped")]
    Stopped,

    /// A thread of a [`ReactorSet`](crate::ReactorSet) could not be set up:
    /// spawning it, or pinning it to its CPU (`sched_setaffinity`).
    #[error("reactor {reactor} of the set: {op}: {source}")]
    Thread {
        /// The reactor's index in the set.
        reactor: usize,
        /// The failing operation.
        op: &'static str,
        /// The OS reason.
        #[source]
        source: io::Error,
    },

    /// A reactor of a [`ReactorSet`](crate::ReactorSet) panicked (its
    /// handler, or its factory); the others were stopped.
    #[error("reactor {reactor} of the set panicked")]
    Panicked {
        /// The reactor's index in the set.
        reactor: usize,
    },

    /// A [`ReactorSet`](crate::ReactorSet) has no reactor with this index.
    #[error("the set has no reactor {0}")]
    NoSuchReactor(usize),

    /// A per-connection query failed (for example `getpeername` on a peer
    /// that already reset).
    #[error("{op} on connection {id}: {source}")]
    Connection {
        /// The connection.
        id: ConnId,
        /// The failing operation, named after its syscall.
        op: &'static str,
        /// The OS reason.
        #[source]
        source: io::Error,
    },
}
