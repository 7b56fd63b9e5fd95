//! The key space: byte-string keys to byte-string values, each with an
//! optional expiry.
//!
//! Expiry is Redis's: a key past its deadline is gone for every command
//! that looks at it (and is removed then: lazily, on access), and a
//! periodic [`Store::sweep`] removes the ones nobody looks at again, with a
//! bounded amount of work per call, as Redis's `activeExpireCycle` does.
//!
//! The map is `hashbrown`'s, for `entry_ref`: one hash and one probe to
//! read, update or remove a key, and the key is copied only when it is
//! inserted. Its default hasher (foldhash) is seeded at random per map,
//! so clients cannot pick keys that collide.

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;

/// `expires_at` of a key with no expiry.
const NEVER: u64 = u64::MAX;

/// `slot` of a key with no expiry.
const NO_SLOT: usize = usize::MAX;

/// Slots a sweep looks at per round (Redis's `ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP`).
const SWEEP_ROUND: usize = 20;

/// A sweep goes on with another round while more than this many of a
/// round's keys had expired (a quarter, as Redis did before 6.0's
/// `active-expire-effort`).
const SWEEP_AGAIN_ABOVE: usize = SWEEP_ROUND / 4;

/// The most rounds in one sweep: 1,280 slots at most per call.
const SWEEP_MAX_ROUNDS: usize = 64;

/// One key's value.
#[derive(Debug)]
pub struct Entry {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// Deadline, in milliseconds since the store was made; [`NEVER`].
    expires_at: u64,
    /// Where the key is in [`Volatile`]'s slots, if it has an expiry.
    slot: usize,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            value: Vec::new(),
            expires_at: NEVER,
            slot: NO_SLOT,
        }
    }

    /// Whether it is past its deadline (reads the clock only for a key
    /// that has one).
    fn is_expired(&self, clock: &Clock) -> bool {
        self.expires_at != NEVER && self.expires_at <= clock.now_ms()
    }

    /// Gives it deadline `at` ([`NEVER`]: none), listing or unlisting its
    /// key among those that have one.
    fn set_deadline(&mut self, at: u64, key: &[u8], volatile: &mut Volatile) {
        self.expires_at = at;
        match (at == NEVER, self.slot == NO_SLOT) {
            (false, true) => self.slot = volatile.add(key),
            (true, false) => {
                volatile.remove(self.slot);
                self.slot = NO_SLOT;
            }
            _ => {}
        }
    }

    /// Replaces the value with `bytes`, keeping the allocation unless it
    /// is much larger than needed (a big value overwritten by a small one
    /// gives its memory back).
    fn set_value(&mut self, bytes: &[u8]) {
        if self.value.capacity() > 2 * bytes.len() + 64 {
            self.value = bytes.to_vec();
        } else {
            self.value.clear();
            self.value.extend_from_slice(bytes);
        }
    }
}

/// Milliseconds since the store was made: a monotonic clock, so expiry is
/// not fooled by changes of the wall clock.
#[derive(Debug)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }
}

/// The keys that have an expiry, for the sweep to visit: slots, each a
/// copy of a key or free. A key's entry knows its slot, so removing it is
/// O(1) and moves nothing (no other entry has to be told of a move).
#[derive(Debug, Default)]
struct Volatile {
    slots: Vec<Option<Box<[u8]>>>,
    /// Free slots, reused first.
    free: Vec<usize>,
    /// The next slot the sweep looks at.
    cursor: usize,
}

impl Volatile {
    fn add(&mut self, key: &[u8]) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(key.into());
                slot
            }
            None => {
                self.slots.push(Some(key.into()));
                self.slots.len() - 1
            }
        }
    }

    /// Frees `slot` ([`NO_SLOT`]: nothing to do).
    fn remove(&mut self, slot: usize) {
        if slot == NO_SLOT {
            return;
        }
        if let Some(held) = self.slots.get_mut(slot) {
            if held.take().is_some() {
                self.free.push(slot);
            }
        }
        if self.free.len() == self.slots.len() {
            // None left: give the memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
            self.cursor = 0;
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// What a write does to a key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry (a plain `SET`, `MSET`).
    Clear,
    /// Keep the key's expiry (`SET ... KEEPTTL`).
    Keep,
    /// Expire this many milliseconds from now (at least 1).
    In(u64),
}

/// When a `SET` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    Always,
    /// Only if the key does not exist (`NX`).
    Absent,
    /// Only if it exists (`XX`).
    Present,
}

/// When an `EXPIRE` applies: Redis 7's flags, each a further condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireIf {
    /// `NX`: the key has no expiry.
    pub nx: bool,
    /// `XX`: the key has an expiry.
    pub xx: bool,
    /// `GT`: the new expiry is later (no expiry counts as infinite).
    pub gt: bool,
    /// `LT`: the new expiry is sooner (no expiry counts as infinite).
    pub lt: bool,
}

impl ExpireIf {
    /// Whether a key whose deadline is `current` may get deadline `at`.
    fn holds(self, current: u64, at: u64) -> bool {
        let has_expiry = current != NEVER;
        let refused = (self.nx && has_expiry)
            || (self.xx && !has_expiry)
            || (self.gt && (!has_expiry || at <= current))
            || (self.lt && at >= current);
        !refused
    }
}

/// A key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No such key.
    Missing,
    /// The key has no expiry.
    Persistent,
    /// It expires in this many milliseconds.
    Ms(u64),
}

/// The key space.
#[derive(Debug)]
pub struct Store {
    map: HashMap<Vec<u8>, Entry>,
    volatile: Volatile,
    clock: Clock,
}

impl Store {
    /// An empty store; its clock starts now.
    pub fn new() -> Store {
        Store {
            map: HashMap::new(),
            volatile: Volatile::default(),
            clock: Clock {
                epoch: Instant::now(),
            },
        }
    }

    /// The live value of `key`; an expired key is removed here.
    pub fn get(&mut self, key: &[u8]) -> Option<&mut Entry> {
        live_entry(&mut self.map, &mut self.volatile, &self.clock, key)
    }

    /// The live entry of `key`, made empty (no value, no expiry) if there
    /// was none; `true` with it if it is new.
    pub fn get_or_insert(&mut self, key: &[u8]) -> (&mut Entry, bool) {
        let Store {
            map,
            volatile,
            clock,
        } = self;
        match map.entry_ref(key) {
            EntryRef::Vacant(vacant) => (vacant.insert(Entry::new()), true),
            EntryRef::Occupied(found) => {
                let entry = found.into_mut();
                if entry.is_expired(clock) {
                    entry.value.clear();
                    entry.set_deadline(NEVER, key, volatile);
                    (entry, true)
                } else {
                    (entry, false)
                }
            }
        }
    }

    /// `SET`: writes `value` under `key` if `condition` holds, with
    /// `expiry`. Returns whether it wrote.
    pub fn set(&mut self, key: &[u8], value: &[u8], condition: Condition, expiry: Expiry) -> bool {
        let Store {
            map,
            volatile,
            clock,
        } = self;
        let entry = match map.entry_ref(key) {
            EntryRef::Vacant(vacant) => {
                if condition == Condition::Present {
                    return false;
                }
                vacant.insert(Entry::new())
            }
            EntryRef::Occupied(found) => {
                let live = !found.get().is_expired(clock);
                match (condition, live) {
                    (Condition::Absent, true) => return false,
                    (Condition::Present, false) => {
                        let (_, entry) = found.remove_entry();
                        volatile.remove(entry.slot);
                        return false;
                    }
                    _ => {}
                }
                let entry = found.into_mut();
                if !live {
                    // An expired key is a new key: it keeps no deadline.
                    entry.set_deadline(NEVER, key, volatile);
                }
                entry
            }
        };
        entry.set_value(value);
        match expiry {
            Expiry::Keep => {}
            Expiry::Clear => entry.set_deadline(NEVER, key, volatile),
            Expiry::In(ms) => entry.set_deadline(deadline(clock, ms), key, volatile),
        }
        true
    }

    /// `DEL` of one key: whether a live key was removed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(entry) => {
                self.volatile.remove(entry.slot);
                !entry.is_expired(&self.clock)
            }
            None => false,
        }
    }

    /// `EXPIRE`: gives a live `key` an expiry `ms` milliseconds from now
    /// (`None`: a deadline already past, which removes the key) if `when`
    /// holds. Returns whether it did.
    pub fn expire(&mut self, key: &[u8], ms: Option<u64>, when: ExpireIf) -> bool {
        let volatile = &mut self.volatile;
        let Some(entry) = live_entry(&mut self.map, volatile, &self.clock, key) else {
            return false;
        };
        let at = ms.map_or(0, |ms| deadline(&self.clock, ms));
        if !when.holds(entry.expires_at, at) {
            return false;
        }
        if ms.is_none() {
            return self.remove(key);
        }
        entry.set_deadline(at, key, volatile);
        true
    }

    /// `TTL` / `PTTL`.
    pub fn ttl(&mut self, key: &[u8]) -> Ttl {
        let now = self.clock.now_ms();
        match self.get(key) {
            None => Ttl::Missing,
            Some(entry) if entry.expires_at == NEVER => Ttl::Persistent,
            Some(entry) => Ttl::Ms(entry.expires_at.saturating_sub(now)),
        }
    }

    /// How many keys there are, counting expired ones not removed yet.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// How many keys have an expiry (some may have expired already).
    pub fn volatile_keys(&self) -> usize {
        self.volatile.len()
    }

    /// Removes expired keys that nobody asked for: looks at rounds of
    /// [`SWEEP_ROUND`] slots from where the last sweep stopped, going on
    /// while a quarter of a round had expired, for at most
    /// [`SWEEP_MAX_ROUNDS`] rounds or `budget` of time. Returns how many
    /// keys it removed.
    pub fn sweep(&mut self, budget: Duration) -> usize {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let mut removed = 0;
        for _ in 0..SWEEP_MAX_ROUNDS {
            let mut expired_here = 0;
            for _ in 0..SWEEP_ROUND {
                let slots = self.volatile.slots.len();
                if slots == 0 {
                    return removed;
                }
                let slot = self.volatile.cursor % slots;
                self.volatile.cursor = slot + 1;
                let Some(key) = &self.volatile.slots[slot] else {
                    continue;
                };
                let expired = self
                    .map
                    .get(&**key)
                    .is_some_and(|entry| entry.expires_at <= now);
                if expired {
                    if let Some(entry) = self.map.remove(&**key) {
                        self.volatile.remove(entry.slot);
                    }
                    expired_here += 1;
                }
            }
            removed += expired_here;
            if expired_here <= SWEEP_AGAIN_ABOVE || started.elapsed() >= budget {
                break;
            }
        }
        removed
    }
}

/// The live entry of `key` in `map` (an expired one is removed): the
/// body of [`Store::get`], for callers that hold the volatile list too.
fn live_entry<'a>(
    map: &'a mut HashMap<Vec<u8>, Entry>,
    volatile: &mut Volatile,
    clock: &Clock,
    key: &[u8],
) -> Option<&'a mut Entry> {
    match map.entry_ref(key) {
        EntryRef::Vacant(_) => None,
        EntryRef::Occupied(found) => {
            if found.get().is_expired(clock) {
                let (_, entry) = found.remove_entry();
                volatile.remove(entry.slot);
                None
            } else {
                Some(found.into_mut())
            }
        }
    }
}

/// The deadline `ms` from now.
fn deadline(clock: &Clock, ms: u64) -> u64 {
    clock.now_ms().saturating_add(ms).min(NEVER - 1)
}
