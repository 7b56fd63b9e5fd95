//! How a stop was asked for, and what it achieved.

use std::fmt;

/// What has been asked of the reactor; a later, stronger request wins.
/// The discriminants are what a `Handle` stores in its atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub(crate) enum StopRequest {
    #[default]
    None = 0,
    /// Stop accepting, let connections drain up to `Config::drain_timeout`.
    Graceful = 1,
    /// Close everything at once.
    Now = 2,
}

/// What a stop achieved, returned by [`Reactor::run`](crate::Reactor::run)
/// (and [`Reactor::stop_report`](crate::Reactor::stop_report)).
///
/// Every connection open when the stop began is counted once: `drained`
/// if it ended cleanly, `forced` if the stop cut it, `failed` if it ended
/// otherwise while draining (the peer reset it, an error, the idle or close
/// timeout).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// Connections closed cleanly: all queued output written, FIN sent
    /// (and, for a graceful stop, the peer's FIN seen).
    pub drained: u64,
    /// Connections cut with a reset: still draining at
    /// [`Config::drain_timeout`](crate::Config::drain_timeout), or closed by
    /// [`stop_now`](crate::Context::stop_now) with output still queued.
    pub forced: u64,
    /// Connections that ended otherwise while draining.
    pub failed: u64,
    /// Bytes handed to `send` that were never written: dropped with the
    /// forced and failed connections.
    pub unsent_bytes: u64,
}

impl fmt::Display for StopReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} drained, {} forced, {} failed, {} bytes unsent",
            self.drained, self.forced, self.failed, self.unsent_bytes
        )
    }
}
