//! Ids and the `mio::Token`s they travel in.
//!
//! Every token is `(generation << 32) | slot`, and the slot says what kind
//! of source it is:
//!
//! | slot | what |
//! | --- | --- |
//! | `0 ..= 2^31 - 1` | a connection: its index in the connection slab |
//! | `2^31 ..= u32::MAX - 2` | an endpoint (a listener, or a program's own source): `slot - 2^31` indexes the endpoint slab |
//! | `u32::MAX - 1` | the signal pipe (`Reactor::stop_on_signals`) |
//! | `u32::MAX` | the [`Handle`](crate::Handle)'s waker |
//!
//! So a connection's event is told from the rest with one bit test, and
//! there is room for any number of each kind.
//!
//! `slab` hands out the most recently freed index first, so an event still
//! queued for a closed connection, or an id a program kept, could otherwise
//! reach the next tenant of its slot (tokio-rs/mio#172, #219); the
//! generation tells them apart. Generations come from one counter for the
//! whole process (each reactor takes them in blocks), so an id of one
//! reactor never names a live connection of another: a multi-reactor
//! program can mix ids in one map or log.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use mio::Token;

#[cfg(not(target_pointer_width = "64"))]
compile_error!(
    "tcp-reactor packs a 32-bit generation and a 32-bit slot into a token: it needs a 64-bit target"
);

/// The slot bit that marks an endpoint rather than a connection.
const ENDPOINT_BIT: u64 = 1 << 31;

/// Connection slots are below this (`Config::max_connections` is capped at
/// it); endpoint slots are below it too, once `ENDPOINT_BIT` is cleared,
/// which leaves the two highest slots to the tokens below.
pub(crate) const MAX_SLOTS: usize = (1 << 31) - 2;

/// The token of the [`Handle`](crate::Handle)'s waker.
pub(crate) const WAKER: Token = Token(u32::MAX as usize);

/// The token of the socket pair signal handlers write to.
pub(crate) const SIGNALS: Token = Token(u32::MAX as usize - 1);

/// What a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Conn(ConnId),
    Endpoint(EndpointKey),
    Waker,
    Signals,
}

/// Reads a token: one bit test tells a connection's from the rest.
#[inline(always)]
pub(crate) fn token_kind(token: Token) -> TokenKind {
    let raw = token.0 as u64;
    if raw & ENDPOINT_BIT == 0 {
        TokenKind::Conn(ConnId(raw))
    } else if token == WAKER {
        TokenKind::Waker
    } else if token == SIGNALS {
        TokenKind::Signals
    } else {
        TokenKind::Endpoint(EndpointKey(raw))
    }
}

/// Hands out generations: from one process-wide counter, in blocks, so
/// reactors on other threads rarely touch the shared cache line.
///
/// A reactor of a [`ReactorSet`](crate::ReactorSet) is *tagged*: its
/// generations carry its index in their top [`REACTOR_BITS`] bits, so the
/// set's handle reads from an id which reactor holds it. The other bits
/// still come from the shared counter, so a tagged id stays unique in the
/// process until that counter has moved 2^24 times (16 million
/// connections), an untagged one until 2^32.
#[derive(Debug)]
pub(crate) struct Generations {
    next: u32,
    end: u32,
    /// The bits of the counter a generation keeps: all of them, or all but
    /// the tag's.
    keep: u32,
    /// The reactor's index in its set, in the top bits; 0 untagged.
    tag: u32,
}

impl Default for Generations {
    fn default() -> Generations {
        Generations {
            next: 0,
            end: 0,
            keep: u32::MAX,
            tag: 0,
        }
    }
}

/// The top bits of a tagged generation: the reactor's index in its set.
pub(crate) const REACTOR_BITS: u32 = 8;

/// The most reactors one set can hold: one per tag.
pub(crate) const MAX_REACTORS: usize = 1 << REACTOR_BITS;

const TAG_SHIFT: u32 = 32 - REACTOR_BITS;

/// The next block of generations for any reactor in the process.
static NEXT_BLOCK: AtomicU32 = AtomicU32::new(1);

/// Generations one reactor takes from the shared counter at a time.
const BLOCK: u32 = 1024;

impl Generations {
    /// Generations that name reactor `index` of a set (below
    /// [`MAX_REACTORS`]).
    pub(crate) fn tagged(index: usize) -> Generations {
        debug_assert!(index < MAX_REACTORS);
        Generations {
            keep: u32::MAX >> REACTOR_BITS,
            tag: (index as u32) << TAG_SHIFT,
            ..Generations::default()
        }
    }

    /// A generation no other id of this process has (until the 32-bit
    /// counter wraps, after four billion connections; a tagged one, until
    /// its 24 bits wrap).
    #[inline]
    pub(crate) fn take(&mut self) -> u32 {
        if self.next == self.end {
            let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
            self.next = block.wrapping_mul(BLOCK);
            self.end = self.next.wrapping_add(BLOCK);
        }
        let generation = (self.next & self.keep) | self.tag;
        self.next = self.next.wrapping_add(1);
        generation
    }

    /// The generation `take` will return next, without taking it.
    pub(crate) fn peek(&mut self) -> u32 {
        let generation = self.take();
        self.next = self.next.wrapping_sub(1);
        generation
    }
}

/// Identifies one connection for its whole life, and never another one.
///
/// Ids are cheap to copy and stay valid to pass around after the connection
/// closes: every call with a closed connection's id is refused (or ignored)
/// rather than reaching whatever connection later took its slot. Ids are
/// unique across every reactor of the process (up to four billion
/// connections; 16 million for a [`ReactorSet`](crate::ReactorSet)'s,
/// whose ids carry their reactor's index): an id handed to another reactor
/// is refused there too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    #[inline]
    pub(crate) fn new(index: usize, generation: u32) -> ConnId {
        ConnId((u64::from(generation) << 32) | index as u64)
    }

    #[inline]
    pub(crate) fn token(self) -> Token {
        Token(self.0 as usize)
    }

    /// The slab index of the connection's slot.
    #[inline]
    pub(crate) fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    /// The generation the slot had when this connection took it.
    #[inline]
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The index of the reactor that holds it, if a [`ReactorSet`](crate::ReactorSet)
    /// made that reactor (the top bits of its generation); meaningless for
    /// an id of a reactor made alone.
    #[inline]
    pub(crate) fn reactor_index(self) -> usize {
        (self.generation() >> TAG_SHIFT) as usize
    }

    /// The id as one number, for logs and maps: stable for the
    /// connection's life, unique in the process.
    #[inline]
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index(), self.generation())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

/// An endpoint's slot and generation, as its token carries them: the
/// inside of a [`ListenerId`] or a [`SourceId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EndpointKey(u64);

impl EndpointKey {
    pub(crate) fn new(index: usize, generation: u32) -> EndpointKey {
        EndpointKey((u64::from(generation) << 32) | ENDPOINT_BIT | index as u64)
    }

    pub(crate) fn token(self) -> Token {
        Token(self.0 as usize)
    }

    pub(crate) fn index(self) -> usize {
        (self.0 & (ENDPOINT_BIT - 1)) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointKey({self})")
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index(), self.generation())
    }
}

/// Identifies one listener of a reactor (see
/// [`Context::listen`](crate::Context::listen)), and never another one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub(crate) EndpointKey);

/// Identifies one of the program's own sources registered with
/// [`Context::register`](crate::Context::register), and never another one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub(crate) EndpointKey);

macro_rules! endpoint_id_fmt {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

endpoint_id_fmt!(ListenerId);
endpoint_id_fmt!(SourceId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_keeps_index_and_generation() {
        let id = ConnId::new(123_456, 0xdead_beef);
        let TokenKind::Conn(back) = token_kind(id.token()) else {
            panic!("a connection's token read as another kind");
        };
        assert_eq!((back.index(), back.generation()), (123_456, 0xdead_beef));
    }

    #[test]
    fn every_kind_of_token_reads_back_as_its_kind() {
        let last_conn = ConnId::new(MAX_SLOTS - 1, u32::MAX);
        assert_eq!(token_kind(last_conn.token()), TokenKind::Conn(last_conn));
        let endpoint = EndpointKey::new(MAX_SLOTS - 1, u32::MAX);
        assert_eq!(token_kind(endpoint.token()), TokenKind::Endpoint(endpoint));
        assert_eq!(endpoint.index(), MAX_SLOTS - 1);
        let first = EndpointKey::new(0, 0);
        assert_eq!(token_kind(first.token()), TokenKind::Endpoint(first));
        assert_eq!(token_kind(WAKER), TokenKind::Waker);
        assert_eq!(token_kind(SIGNALS), TokenKind::Signals);
    }

    #[test]
    fn same_slot_other_generation_is_another_id() {
        assert_ne!(ConnId::new(7, 1), ConnId::new(7, 2));
    }

    #[test]
    fn two_reactors_never_hand_out_the_same_generation() {
        let (mut a, mut b) = (Generations::default(), Generations::default());
        let from_a: Vec<u32> = (0..3000).map(|_| a.take()).collect();
        let from_b: Vec<u32> = (0..3000).map(|_| b.take()).collect();
        assert!(from_a.iter().all(|g| !from_b.contains(g)));
        let next = a.peek();
        assert_eq!(next, a.take());
    }

    #[test]
    fn tagged_generations_name_their_reactor_and_stay_distinct() {
        let mut tagged: Vec<Generations> = (0..3).map(Generations::tagged).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3000 {
            for (index, generations) in tagged.iter_mut().enumerate() {
                let peeked = generations.peek();
                let generation = generations.take();
                assert_eq!(peeked, generation);
                let id = ConnId::new(5, generation);
                assert_eq!(id.reactor_index(), index);
                assert!(seen.insert(generation), "generation {generation} twice");
            }
        }
        let last = Generations::tagged(MAX_REACTORS - 1).take();
        assert_eq!(ConnId::new(0, last).reactor_index(), MAX_REACTORS - 1);
    }
}
