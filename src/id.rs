//! Connection ids and the `mio::Token`s they travel in.
//!
//! A token is `(generation << 32) | slab index`. `slab` hands out the most
//! recently freed index first, so an event still queued for a closed
//! connection could otherwise reach the new one in that slot
//! (tokio-rs/mio#172, #219); the generation tells them apart.

use std::fmt;

use mio::Token;

#[cfg(not(target_pointer_width = "64"))]
compile_error!(
    "tcp-reactor packs a 32-bit generation and a 32-bit slot into a token: it needs a 64-bit target"
);

/// Slot indices from this one up are never a connection's
/// (`Config::max_connections` is capped at it): with generation `u32::MAX`
/// their tokens are the reactor's own sources, below.
pub(crate) const FIRST_RESERVED_SLOT: u32 = u32::MAX - 2;

/// The token of the listening socket.
pub(crate) const LISTENER: Token = Token(usize::MAX);

/// The token of the [`Handle`](crate::Handle)'s waker.
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// The token of the pipe signal handlers write to (`Reactor::stop_on_signals`).
/// The lowest reserved token: every token below it is a connection's.
pub(crate) const SIGNALS: Token = Token(usize::MAX - 2);

/// Identifies one connection for its whole life, and never another one.
///
/// Ids are cheap to copy and stay valid to pass around after the connection
/// closes: every call with a closed connection's id is refused (or ignored)
/// rather than reaching whatever connection later took its slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    #[inline]
    pub(crate) fn new(index: usize, generation: u32) -> ConnId {
        ConnId(((generation as u64) << 32) | index as u64)
    }

    #[inline]
    pub(crate) fn from_token(token: Token) -> ConnId {
        ConnId(token.0 as u64)
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

    /// The id as one number, for logs and maps. Stable for the connection's
    /// life; unique among connections of one reactor.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_keeps_index_and_generation() {
        let id = ConnId::new(123_456, 0xdead_beef);
        let back = ConnId::from_token(id.token());
        assert_eq!(back.index(), 123_456);
        assert_eq!(back.generation(), 0xdead_beef);
        assert_ne!(id.token(), LISTENER);
    }

    #[test]
    fn every_connection_token_is_below_the_reserved_ones() {
        let last = ConnId::new(FIRST_RESERVED_SLOT as usize - 1, u32::MAX);
        assert!(last.token() < SIGNALS && SIGNALS < WAKER && WAKER < LISTENER);
    }

    #[test]
    fn same_slot_other_generation_is_another_id() {
        assert_ne!(ConnId::new(7, 1), ConnId::new(7, 2));
    }
}
