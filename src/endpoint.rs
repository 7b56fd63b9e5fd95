//! Endpoints: what the reactor polls besides connections. Its listeners,
//! and the program's own sources (a UDP socket, a pipe, stdin), each under
//! a token of the endpoint part of the token space (see `id`).

use slab::Slab;

use crate::id::{EndpointKey, Generations, MAX_SLOTS};
use crate::listener::Listener;

/// One listener and what accepting from it needs to know.
#[derive(Debug)]
pub(crate) struct ListenerEntry {
    pub(crate) listener: Listener,
    /// `TCP_NODELAY` for its connections (TCP listeners only).
    pub(crate) nodelay: bool,
    /// Connections may be waiting in its backlog. The listener is
    /// edge-triggered too: once told readable, it is accepted from until
    /// `WouldBlock`, or it would never be told again.
    pub(crate) pending: bool,
}

/// What an endpoint slot holds.
#[derive(Debug)]
pub(crate) enum Endpoint {
    Listener(ListenerEntry),
    /// A program's source: the program owns it and does its I/O; the
    /// reactor only passes its readiness on (`Handler::on_source`).
    Source,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    endpoint: Endpoint,
}

/// Every endpoint of one reactor.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    slots: Slab<Slot>,
    generations: Generations,
}

impl Endpoints {
    /// The key the next `insert` will return, to register the source under
    /// its token before the slot is taken. `None` when the endpoint part of
    /// the token space is full.
    pub(crate) fn next_key(&mut self) -> Option<EndpointKey> {
        let index = self.slots.vacant_key();
        (index < MAX_SLOTS).then(|| EndpointKey::new(index, self.generations.peek()))
    }

    pub(crate) fn insert(&mut self, endpoint: Endpoint) -> EndpointKey {
        let generation = self.generations.take();
        let index = self.slots.insert(Slot {
            generation,
            endpoint,
        });
        EndpointKey::new(index, generation)
    }

    pub(crate) fn get(&self, key: EndpointKey) -> Option<&Endpoint> {
        self.slots
            .get(key.index())
            .filter(|slot| slot.generation == key.generation())
            .map(|slot| &slot.endpoint)
    }

    pub(crate) fn get_mut(&mut self, key: EndpointKey) -> Option<&mut Endpoint> {
        self.slots
            .get_mut(key.index())
            .filter(|slot| slot.generation == key.generation())
            .map(|slot| &mut slot.endpoint)
    }

    pub(crate) fn remove(&mut self, key: EndpointKey) -> Option<Endpoint> {
        self.get(key)?;
        Some(self.slots.remove(key.index()).endpoint)
    }

    /// The listener under `key`.
    pub(crate) fn listener_mut(&mut self, key: EndpointKey) -> Option<&mut ListenerEntry> {
        match self.get_mut(key) {
            Some(Endpoint::Listener(entry)) => Some(entry),
            _ => None,
        }
    }

    /// The keys of every listener, in slot order.
    pub(crate) fn listener_keys(&self) -> impl Iterator<Item = EndpointKey> + '_ {
        self.slots
            .iter()
            .filter(|(_, slot)| matches!(slot.endpoint, Endpoint::Listener(_)))
            .map(|(index, slot)| EndpointKey::new(index, slot.generation))
    }
}
