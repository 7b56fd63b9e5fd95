//! Counters the reactor keeps, and a reader for other threads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A snapshot of the reactor's counters.
///
/// Counters only grow, except `active` and `queued_output`, which are
/// current values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted since start, from every listener.
    pub accepted: u64,
    /// Outbound connections ([`Context::connect`](crate::Context::connect))
    /// established since start.
    pub connected: u64,
    /// Outbound connections that were never established (refused,
    /// unreachable, timed out).
    pub connect_failures: u64,
    /// Connections open now, accepted and outbound (those still connecting
    /// included).
    pub active: u64,
    /// Connections closed since start, for any reason.
    pub closed: u64,
    /// Of those, closed by a reset or broken pipe from the peer.
    pub resets: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Times reading from a connection stopped for its output: queued
    /// output reached the high water mark, or the handler left input
    /// unconsumed while output was queued.
    pub backpressure_pauses: u64,
    /// Failed `accept` calls: resource errors (`EMFILE` ...) that paused
    /// accepting, and connections aborted before they were accepted; also
    /// accepted sockets dropped because `epoll_ctl` could not register them.
    pub accept_errors: u64,
    /// Output bytes queued in user space now, over all connections (bytes
    /// the kernel would not take yet).
    pub queued_output: u64,
    /// The most output one connection ever had queued at once.
    pub peak_queued_output: u64,
    /// Connections closed for sending more than `max_input` the handler
    /// would not consume, or for passing `max_output`.
    pub limit_closes: u64,
    /// Connections closed with [`CloseReason::TimedOut`](crate::CloseReason::TimedOut):
    /// idle too long, or a graceful close the peer did not complete in time.
    pub timed_out: u64,
    /// Handler timers fired (each `on_timer` call).
    pub timers_fired: u64,
    /// Loop turns (one `epoll_wait` each).
    pub turns: u64,
    /// Turns whose `epoll_wait` filled the whole events buffer: light
    /// connections may then wait a turn (see `Config::event_capacity`).
    pub full_event_batches: u64,
    /// SIGINT and SIGTERM signals received through
    /// `Reactor::stop_on_signals` (feature `signals`).
    pub signals: u64,
}

impl Stats {
    /// Adds `other`'s counters to these, as for the reactors of a
    /// [`ReactorSet`](crate::ReactorSet): every counter and current value
    /// is summed, except `peak_queued_output`, the larger of the two, and
    /// `signals`, the larger too (each reactor of a set counts the same
    /// signals of the process).
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            accepted,
            connected,
            connect_failures,
            active,
            closed,
            resets,
            bytes_in,
            bytes_out,
            backpressure_pauses,
            accept_errors,
            queued_output,
            peak_queued_output,
            limit_closes,
            timed_out,
            timers_fired,
            turns,
            full_event_batches,
            signals,
        } = *other;
        self.accepted += accepted;
        self.connected += connected;
        self.connect_failures += connect_failures;
        self.active += active;
        self.closed += closed;
        self.resets += resets;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        self.backpressure_pauses += backpressure_pauses;
        self.accept_errors += accept_errors;
        self.queued_output += queued_output;
        self.peak_queued_output = self.peak_queued_output.max(peak_queued_output);
        self.limit_closes += limit_closes;
        self.timed_out += timed_out;
        self.timers_fired += timers_fired;
        self.turns += turns;
        self.full_event_batches += full_event_batches;
        self.signals = self.signals.max(signals);
    }
}

impl<'a> std::iter::Sum<&'a Stats> for Stats {
    /// The counters of several reactors as one (see [`Stats::add`]).
    fn sum<I: Iterator<Item = &'a Stats>>(iter: I) -> Stats {
        iter.fold(Stats::default(), |mut total, stats| {
            total.add(stats);
            total
        })
    }
}

/// Reads the reactor's [`Stats`] from any thread.
///
/// The reactor publishes a snapshot once per loop turn, just before it
/// waits for events, so what a reader sees is at most one turn old and
/// always consistent with itself. Publishing does not wait for readers: if
/// a reader holds the lock at that moment, that turn's snapshot is skipped;
/// except the snapshot before a wait with no timeout, or one of a
/// millisecond or more, which waits for the reader's copy to end, so a
/// loop that sleeps never leaves a stale one behind.
/// While no reader exists nothing is published (it would cost every turn
/// for nobody); [`Reactor::stats_reader`](crate::Reactor::stats_reader)
/// hands out a reader holding the counters as they are.
#[derive(Debug, Clone, Default)]
pub struct StatsReader {
    shared: Arc<Mutex<Stats>>,
}

impl StatsReader {
    /// The latest published snapshot.
    pub fn get(&self) -> Stats {
        match self.shared.lock() {
            Ok(stats) => *stats,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Publishes `stats` before a wait of `wait` (`None`: no limit). Before
    /// a wait of a millisecond or more it waits for a reader holding the
    /// lock (it only copies a snapshot): the snapshot might otherwise stay
    /// stale for the whole wait. Before a shorter one it skips this
    /// snapshot rather than wait. Costs one load while nobody holds a
    /// reader: the reactor's own copy is then the only one, and nobody
    /// could see the snapshot.
    #[inline]
    pub(crate) fn publish(&self, stats: &Stats, wait: Option<Duration>) {
        if Arc::strong_count(&self.shared) > 1 {
            let must = wait.is_none_or(|wait| wait >= Duration::from_millis(1));
            self.publish_to_readers(stats, must);
        }
    }

    #[inline(never)]
    fn publish_to_readers(&self, stats: &Stats, must: bool) {
        let shared = match self.shared.try_lock() {
            Ok(shared) => Some(shared),
            Err(_) if must => Some(
                self.shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            Err(_) => None,
        };
        if let Some(mut shared) = shared {
            *shared = *stats;
        }
    }

    /// A new reader, holding the latest counters from the start (they were
    /// not published while there was no reader).
    pub(crate) fn new_reader(&self, stats: &Stats) -> StatsReader {
        let reader = self.clone();
        reader.publish_to_readers(stats, true);
        reader
    }
}
