//! Stopping: what was asked for, how far it has got, and what it achieved.

use std::fmt;

use crate::timer::Tick;

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

/// How far a stop has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum StopPhase {
    /// No stop has begun (one may have been asked for this turn).
    #[default]
    Running,
    /// A graceful stop began: listeners are closed, connections are
    /// closing; those left at `deadline` are cut.
    Draining { deadline: Tick },
    /// Every connection is gone: `run` returns.
    Stopped,
}

/// The one place the stop lives: the request (from `Context`, a `Handle`
/// or a signal), the phase, and the report that `ConnTable::end` counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stop {
    pub(crate) request: StopRequest,
    pub(crate) phase: StopPhase,
    /// Counts how connections end, from the start of a stop.
    pub(crate) report: Option<StopReport>,
}

impl Stop {
    /// Whether a stop has been asked for (it may not have begun yet).
    pub(crate) fn is_requested(&self) -> bool {
        self.request != StopRequest::None
    }

    /// The strongest stop that has begun.
    pub(crate) fn begun(&self) -> StopRequest {
        match self.phase {
            StopPhase::Running => StopRequest::None,
            StopPhase::Draining { .. } => StopRequest::Graceful,
            StopPhase::Stopped => StopRequest::Now,
        }
    }

    /// A stop was asked for that has not begun: the next turn starts it.
    pub(crate) fn is_new_request(&self) -> bool {
        self.request > self.begun()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.phase == StopPhase::Stopped
    }

    /// The drain's deadline, while draining.
    pub(crate) fn drain_deadline(&self) -> Option<Tick> {
        match self.phase {
            StopPhase::Draining { deadline } => Some(deadline),
            _ => None,
        }
    }
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
    /// [`stop_now`](crate::Context::stop_now) with output still queued,
    /// input unread, or a connect still under way.
    pub forced: u64,
    /// Connections that ended otherwise while draining.
    pub failed: u64,
    /// Bytes handed to `send` that were never written: dropped with the
    /// forced and failed connections.
    pub unsent_bytes: u64,
}

impl StopReport {
    /// Adds `other`'s counts to these, as for the reactors of a
    /// [`ReactorSet`](crate::ReactorSet).
    pub fn add(&mut self, other: &StopReport) {
        self.drained += other.drained;
        self.forced += other.forced;
        self.failed += other.failed;
        self.unsent_bytes += other.unsent_bytes;
    }
}

impl<'a> std::iter::Sum<&'a StopReport> for StopReport {
    /// The reports of several reactors as one (see [`StopReport::add`]).
    fn sum<I: Iterator<Item = &'a StopReport>>(iter: I) -> StopReport {
        iter.fold(StopReport::default(), |mut total, report| {
            total.add(report);
            total
        })
    }
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
