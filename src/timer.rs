//! Timers: the handler's own, and the reactor's deadlines on connections
//! (idle timeouts, lingering closes).
//!
//! All of them live in one binary heap ordered by deadline, then by the
//! order they were set. Setting a timer is a push, O(log n). Cancelling is
//! lazy, O(1): the handler's timer is taken out of a slab and its heap
//! entry, found dead when it reaches the top, is dropped then. A connection
//! deadline needs no cancelling at all: when it comes due the loop looks at
//! the connection as it is then (closed? active since?) and acts or not.
//! The heap counts its live entries (handler timers in the slab, and the
//! connection deadlines of connections not yet closed), so once every entry
//! left is dead the heap is emptied: a loop whose timers are all dead reads
//! no clock and sleeps without a timeout.
//!
//! Why a heap and not a timing wheel: a heap gives exact deadlines at any
//! range with no tick to choose, costs nothing while no timer is due (the
//! poll timeout is simply the top's deadline, so an idle loop never wakes),
//! and 100,000 armed timers cost the loop nothing per turn: only the top is
//! looked at. Dead entries are bounded: when they outnumber the live ones
//! the heap is rebuilt without them (O(n), amortised O(1) per push).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::ConnId;

/// Identifies one timer set with [`Context::set_timer`](crate::Context::set_timer)
/// or [`Context::set_interval`](crate::Context::set_interval), and never
/// another one: cancelling a timer that has fired (or was cancelled) does
/// nothing, even if its slot was reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    slot: u32,
    generation: u32,
}

impl fmt::Debug for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerId({}.{})", self.slot, self.generation)
    }
}

/// A time on the loop's clock: nanoseconds since the reactor was built
/// (a `u64` lasts 584 years). Deadlines are plain integers, so comparing
/// them and turning the nearest into a poll timeout costs a subtraction;
/// `Instant` arithmetic costs several times that, on every turn while
/// timers are armed.
pub(crate) type Tick = u64;

/// The loop's clock: read at most once per turn (after `epoll_wait`, and
/// only when something needs the time), and wherever a deadline is set. The
/// last reading is kept, so stamping a connection's activity costs a store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    /// The latest reading.
    pub(crate) now: Tick,
    /// `now` in whole milliseconds, wrapping after 49 days (users subtract
    /// with `wrapping_sub`).
    pub(crate) now_ms: u32,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            now: 0,
            now_ms: 0,
        }
    }

    /// Reads the time and keeps it. Every reading of the clock goes through
    /// here, so `now` is never older than the last deadline set from it.
    pub(crate) fn read(&mut self) -> Tick {
        let elapsed = self.epoch.elapsed();
        // In u64 arithmetic (`as_nanos` is u128): a u64 of nanoseconds
        // lasts 584 years.
        let now = elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()));
        self.now = now;
        // Truncation wraps the count after 49 days, as documented.
        self.now_ms = (now / 1_000_000) as u32;
        now
    }
}

/// `now + after`, saturating: a timeout too long for the clock (such as
/// `Duration::MAX`) means "never".
#[inline]
pub(crate) fn deadline_after(now: Tick, after: Duration) -> Tick {
    now.saturating_add(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX))
}

/// The sooner of two optional deadlines or timeouts (`None`: no limit).
#[inline]
pub(crate) fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The time left from `now` until `deadline`; zero once it has passed.
#[inline]
pub(crate) fn time_until(deadline: Tick, now: Tick) -> Duration {
    Duration::from_nanos(deadline.saturating_sub(now))
}

/// The shortest repeat period of [`Context::set_interval`](crate::Context::set_interval):
/// a zero period would fire on every turn and keep the loop from sleeping.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Heap entries beyond which dead ones are swept out (see `compact`).
const COMPACT_FLOOR: usize = 1024;

/// What comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A handler's timer (the slot and generation of its `TimerId`).
    User(TimerId),
    /// Check whether the connection has been idle for the idle timeout.
    Idle(ConnId),
    /// A graceful close's periodic check: cut it at `cut_at` (the close
    /// timeout), or end it clean once the peer has fallen silent.
    Close { id: ConnId, cut_at: Tick },
    /// An outbound connection not established by then fails.
    Connect(ConnId),
}

/// A timer of the handler's, alive while it is in the slab.
#[derive(Debug)]
struct UserTimer {
    generation: u32,
    key: u64,
    /// `Some` for a repeating timer.
    every: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    deadline: Tick,
    /// Set order: breaks ties between equal deadlines, and tells timers set
    /// during this turn's firing apart (they wait for the next turn).
    seq: u64,
    target: Target,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the std max-heap pops the earliest deadline first.
    fn cmp(&self, other: &Entry) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// A due timer, as [`Timers::pop_due`] hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// A handler's timer: call `on_timer` with its id and key.
    User(TimerId, u64),
    /// See [`Target::Idle`].
    Idle(ConnId),
    /// See [`Target::Close`].
    Close { id: ConnId, cut_at: Tick },
    /// See [`Target::Connect`].
    Connect(ConnId),
}

/// Every armed timer of one reactor.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    user: Slab<UserTimer>,
    next_seq: u64,
    next_generation: u32,
    /// Heap length past which `compact` sweeps again.
    sweep_at: usize,
    /// Connection deadlines whose connection is still open (armed with
    /// `arm`, disarmed when their connection closes): with `user`, what
    /// tells a heap of dead entries from one with work in it.
    live_conn_deadlines: usize,
}

impl Timers {
    /// Whether no entry, live or dead, is in the heap (the loop then needs
    /// no clock and no poll timeout for timers).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The handler's timers armed now.
    #[cfg(test)]
    pub(crate) fn user_timers(&self) -> usize {
        self.user.len()
    }

    /// Heap entries, dead ones included.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.heap.len()
    }

    /// The sequence number the next entry will get: entries below it were
    /// set before now.
    #[inline]
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Arms a handler's timer firing at `deadline`, then every `every`.
    pub(crate) fn set(&mut self, deadline: Tick, key: u64, every: Option<Duration>) -> TimerId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let slot = self.user.insert(UserTimer {
            generation,
            key,
            every,
        });
        // A slot index past u32 would need four billion armed timers.
        let id = TimerId {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            generation,
        };
        self.schedule(deadline, Target::User(id));
        id
    }

    /// Disarms a handler's timer. Returns whether it was armed.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let slot = id.slot as usize;
        let live = self
            .user
            .get(slot)
            .is_some_and(|t| t.generation == id.generation);
        if live {
            self.user.remove(slot);
        }
        live
    }

    /// Arms a connection deadline: a connection's first idle check, or its
    /// first close check. Each is re-armed with `schedule` while it
    /// matters, and `disarm`ed when its connection closes.
    pub(crate) fn arm(&mut self, deadline: Tick, target: Target) {
        self.live_conn_deadlines += 1;
        self.schedule(deadline, target);
    }

    /// A connection closed with `count` deadlines armed: their entries are
    /// dead from now on.
    pub(crate) fn disarm(&mut self, count: usize) {
        self.live_conn_deadlines -= count;
    }

    /// Pushes an entry: a handler's timer, or the next check of an armed
    /// connection deadline.
    pub(crate) fn schedule(&mut self, deadline: Tick, target: Target) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry {
            deadline,
            seq,
            target,
        });
    }

    /// The earliest deadline of a live handler timer or a connection
    /// deadline (connection deadlines are not checked one by one; one that
    /// turns out moot costs one early wake-up). Drops cancelled timers on
    /// top, and every entry once none is live.
    pub(crate) fn next_deadline(&mut self) -> Option<Tick> {
        if self.user.is_empty() && self.live_conn_deadlines == 0 {
            self.heap.clear();
            return None;
        }
        while let Some(top) = self.heap.peek() {
            if self.is_cancelled(top.target) {
                self.heap.pop();
            } else {
                return Some(top.deadline);
            }
        }
        None
    }

    /// Whether the earliest entry, live or dead, is due at `now`: the one
    /// test a turn makes while nothing is due.
    #[inline]
    pub(crate) fn any_due(&self, now: Tick) -> bool {
        self.heap.peek().is_some_and(|top| top.deadline <= now)
    }

    /// Takes the earliest entry due at `now` and set before sequence number
    /// `before` (so a timer set while timers fire, even with zero delay,
    /// waits for the next turn instead of starving the loop). A repeating
    /// timer is armed again for its next period; one that fell more than a
    /// period behind skips the periods it missed rather than firing in a
    /// burst.
    pub(crate) fn pop_due(&mut self, now: Tick, before: u64) -> Option<Due> {
        loop {
            let top = self.heap.peek()?;
            if top.deadline > now || top.seq >= before {
                return None;
            }
            let entry = self.heap.pop()?;
            match entry.target {
                Target::Idle(id) => return Some(Due::Idle(id)),
                Target::Close { id, cut_at } => return Some(Due::Close { id, cut_at }),
                Target::Connect(id) => return Some(Due::Connect(id)),
                Target::User(id) => {
                    if self.is_cancelled(entry.target) {
                        continue;
                    }
                    let slot = id.slot as usize;
                    let timer = &self.user[slot];
                    let key = timer.key;
                    match timer.every {
                        Some(every) => {
                            let mut next = deadline_after(entry.deadline, every);
                            if next <= now {
                                next = deadline_after(now, every);
                            }
                            self.schedule(next, entry.target);
                        }
                        None => {
                            self.user.remove(slot);
                        }
                    }
                    return Some(Due::User(id, key));
                }
            }
        }
    }

    /// Sweeps dead entries out (cancelled handler timers, and connection
    /// deadlines `is_live` rejects because their connection closed) once the
    /// heap has doubled since the last sweep. Keeps the heap's memory within
    /// twice what is armed, whatever the churn of connections and cancelled
    /// timers, at an amortised O(1) per push.
    #[inline]
    pub(crate) fn compact(&mut self, is_live: impl Fn(Target) -> bool) {
        if self.heap.len() > self.sweep_at.max(COMPACT_FLOOR) {
            self.sweep(is_live);
        }
    }

    #[cold]
    fn sweep(&mut self, is_live: impl Fn(Target) -> bool) {
        let user = &self.user;
        self.heap.retain(|entry| match entry.target {
            Target::User(id) => user
                .get(id.slot as usize)
                .is_some_and(|t| t.generation == id.generation),
            target => is_live(target),
        });
        self.sweep_at = 2 * self.heap.len();
    }

    /// Drops every timer (the reactor stopped).
    pub(crate) fn clear(&mut self) {
        self.heap.clear();
        self.user.clear();
        self.live_conn_deadlines = 0;
    }

    fn is_cancelled(&self, target: Target) -> bool {
        match target {
            Target::User(id) => self
                .user
                .get(id.slot as usize)
                .is_none_or(|t| t.generation != id.generation),
            Target::Idle(_) | Target::Close { .. } | Target::Connect(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` milliseconds on the clock.
    fn ms(n: u64) -> Tick {
        n * 1_000_000
    }

    /// Fires everything due at `now`, as one turn does.
    fn fire(timers: &mut Timers, now: Tick) -> Vec<Due> {
        let before = timers.next_seq();
        std::iter::from_fn(|| timers.pop_due(now, before)).collect()
    }

    #[test]
    fn fires_in_deadline_order_then_in_set_order() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        let late = timers.set(t0 + ms(30), 1, None);
        let early = timers.set(t0 + ms(10), 2, None);
        let tie_a = timers.set(t0 + ms(20), 3, None);
        let tie_b = timers.set(t0 + ms(20), 4, None);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(fire(&mut timers, t0 + ms(5)), vec![]);
        assert_eq!(
            fire(&mut timers, t0 + ms(30)),
            vec![
                Due::User(early, 2),
                Due::User(tie_a, 3),
                Due::User(tie_b, 4),
                Due::User(late, 1)
            ]
        );
        assert_eq!(timers.user_timers(), 0);
        assert!(timers.is_empty());
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_cancels_once() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        let a = timers.set(t0 + ms(10), 1, None);
        let b = timers.set(t0 + ms(20), 2, None);
        assert!(timers.cancel(a));
        assert!(!timers.cancel(a));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(fire(&mut timers, t0 + ms(50)), vec![Due::User(b, 2)]);
        assert!(!timers.cancel(b), "b has fired");
    }

    #[test]
    fn an_old_id_never_cancels_the_slot_s_next_timer() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        let old = timers.set(t0 + ms(10), 1, None);
        assert_eq!(fire(&mut timers, t0 + ms(10)), vec![Due::User(old, 1)]);
        let new = timers.set(t0 + ms(20), 2, None);
        assert!(!timers.cancel(old));
        assert_eq!(fire(&mut timers, t0 + ms(20)), vec![Due::User(new, 2)]);
    }

    #[test]
    fn an_interval_repeats_until_cancelled_and_skips_missed_periods() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        let tick = timers.set(t0 + ms(10), 7, Some(Duration::from_millis(10)));
        assert_eq!(fire(&mut timers, t0 + ms(10)), vec![Due::User(tick, 7)]);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(20)));
        // Fell 45 ms behind: fires once, next period counted from now.
        assert_eq!(fire(&mut timers, t0 + ms(65)), vec![Due::User(tick, 7)]);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(75)));
        assert!(timers.cancel(tick));
        assert_eq!(fire(&mut timers, t0 + ms(1000)), vec![]);
    }

    #[test]
    fn a_timer_set_while_firing_waits_for_the_next_turn() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        timers.set(t0, 1, None);
        let before = timers.next_seq();
        assert!(matches!(timers.pop_due(t0, before), Some(Due::User(_, 1))));
        // Set from the callback with zero delay.
        timers.set(t0, 2, None);
        assert_eq!(timers.pop_due(t0, before), None);
        assert!(matches!(
            fire(&mut timers, t0).as_slice(),
            [Due::User(_, 2)]
        ));
    }

    #[test]
    fn dead_entries_are_swept_once_they_outnumber_the_live() {
        let t0: Tick = 5;
        let mut timers = Timers::default();
        for i in 0..10_000 {
            let id = timers.set(t0 + ms(60_000), i, None);
            assert!(timers.cancel(id));
            timers.compact(|_| true);
        }
        assert!(
            timers.entries() <= 2 * COMPACT_FLOOR,
            "{}",
            timers.entries()
        );
        // Connection deadlines are kept while `is_live` says so.
        let conn = ConnId::new(3, 1);
        for _ in 0..2000 {
            timers.schedule(t0 + ms(60_000), Target::Idle(conn));
        }
        timers.compact(|_| true);
        assert_eq!(timers.entries(), 2000);
        // The next sweep comes once the heap has doubled.
        for _ in 0..2001 {
            timers.schedule(t0 + ms(60_000), Target::Idle(conn));
        }
        timers.compact(|_| false);
        assert_eq!(timers.entries(), 0);
    }

    #[test]
    fn a_heap_whose_entries_are_all_dead_is_emptied_and_sets_no_timeout() {
        let mut timers = Timers::default();
        let conn = ConnId::new(3, 1);
        let close_check = Target::Close {
            id: conn,
            cut_at: ms(30_000),
        };
        timers.arm(ms(100), close_check);
        let timer = timers.set(ms(50), 1, None);
        assert_eq!(timers.next_deadline(), Some(ms(50)));
        assert!(timers.cancel(timer));
        // The close check is live while its connection is open.
        assert_eq!(timers.next_deadline(), Some(ms(100)));
        // Re-armed checks stay one live deadline.
        timers.schedule(ms(200), close_check);
        timers.disarm(1); // the connection closed
        assert_eq!(timers.next_deadline(), None);
        assert!(timers.is_empty(), "{} entries left", timers.entries());
    }
}
