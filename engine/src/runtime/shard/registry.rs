//! A shard's connections: registration, lookup by cross-shard identity,
//! removal, and the count of running sessions.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use slab::Slab;

use super::*;
use crate::ops::metrics::ShardMetrics;
use crate::pubsub::channel_table::ConnKey;

impl Shard {
    // ----- connections -------------------------------------------------

    /// Registers a new connection; returns it with its cross-shard identity.
    pub fn add_conn(&self, make: impl FnOnce(ConnKey) -> Conn) -> (Rc<Conn>, ConnRef) {
        let (conn, cref) = self.conns.borrow_mut().insert(|key| Rc::new(make(key)));
        ShardMetrics::inc(&self.metrics.connections_accepted);
        self.node.connections.fetch_add(1, Ordering::Relaxed);
        (conn, cref)
    }

    pub(super) fn conn(&self, r: ConnRef) -> Option<Rc<Conn>> {
        self.conns.borrow().get_ref(r).cloned()
    }

    /// Forgets a connection: leaves all its channels.
    pub fn remove_conn(&self, conn: &Conn) {
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        for ch in subs {
            self.leave(&ch, conn.key);
        }
        self.drop_identity(conn);
        if self.conns.borrow_mut().remove(conn.key).is_some() {
            self.node.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A session (accepted WebSocket connection) started.
    pub(crate) fn session_started(&self) {
        self.sessions.set(self.sessions.get() + 1);
    }

    /// A session ended after its last flush.
    pub(crate) fn session_ended(&self) {
        self.sessions.set(self.sessions.get() - 1);
        if self.sessions.get() == 0 && self.shutdown.is_raised() {
            self.drained.notify();
        }
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.get()
    }
}

/// Connections by slab key, each with a serial so that a [`ConnRef`] held
/// across shards never finds a later connection that reused the key.
pub struct ConnRegistry<T> {
    slots: Slab<(u64, T)>,
    last_serial: u64,
}

impl<T> Default for ConnRegistry<T> {
    fn default() -> Self {
        ConnRegistry {
            slots: Slab::new(),
            last_serial: 0,
        }
    }
}

impl<T: Clone> ConnRegistry<T> {
    /// Adds the entry `make` builds for its key; returns it and its identity.
    pub fn insert(&mut self, make: impl FnOnce(ConnKey) -> T) -> (T, ConnRef) {
        self.last_serial += 1;
        let serial = self.last_serial;
        let entry = self.slots.vacant_entry();
        let key = entry.key() as ConnKey;
        let value = make(key);
        entry.insert((serial, value.clone()));
        (value, ConnRef { key, serial })
    }
}

impl<T> ConnRegistry<T> {
    /// The entry at `key`, whoever it is now.
    pub fn get(&self, key: ConnKey) -> Option<&T> {
        self.slots.get(key as usize).map(|(_, v)| v)
    }

    /// The entry `r` names, if it is still there.
    pub fn get_ref(&self, r: ConnRef) -> Option<&T> {
        match self.slots.get(r.key as usize) {
            Some((serial, v)) if *serial == r.serial => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, key: ConnKey) -> Option<T> {
        self.slots.try_remove(key as usize).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slots allocated (the most connections ever open at once, rounded up).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, (_, v))| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_key_is_not_the_old_connection() {
        let mut r = ConnRegistry::default();
        let (_, a) = r.insert(|k| k * 10);
        assert_eq!(r.get_ref(a), Some(&0));
        assert_eq!(r.remove(a.key), Some(0));
        let (_, b) = r.insert(|k| k * 10 + 1);
        assert_eq!(b.key, a.key, "the slab reuses the key");
        assert_ne!(b.serial, a.serial);
        assert_eq!(r.get_ref(a), None);
        assert_eq!(r.get_ref(b), Some(&1));
        assert_eq!(r.get(a.key), Some(&1));
    }

    #[test]
    fn len_iter_and_remove() {
        let mut r = ConnRegistry::default();
        let keys: Vec<_> = (0..3).map(|_| r.insert(|k| k).1.key).collect();
        assert_eq!(r.len(), 3);
        assert_eq!(r.remove(keys[1]), Some(1));
        assert_eq!(r.remove(keys[1]), None);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![0, 2]);
        r.remove(keys[0]);
        r.remove(keys[2]);
        assert_eq!(r.len(), 0);
    }
}
