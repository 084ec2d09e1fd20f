//! A shard's index of channel -> local subscribers.
//!
//! Each shard owns one `ChannelTable` for the connections it serves; nothing
//! here is shared between threads. Fan-out walks a dense `IndexSet` of
//! connection keys, so delivering to 10,000 local subscribers is a linear
//! scan of 10,000 `u32`s; subscribe and unsubscribe are O(1).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::rc::Rc;

use indexmap::IndexSet;

/// A connection's key in its shard's connection slab.
pub type ConnKey = u32;

/// What a subscribe or unsubscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The table changed; `now` is the channel's local subscriber count.
    Changed { now: usize },
    /// Already subscribed / not subscribed: nothing changed.
    Unchanged,
}

/// channel -> local subscriber connections.
#[derive(Debug, Default)]
pub struct ChannelTable {
    channels: HashMap<Rc<str>, IndexSet<ConnKey>>,
    subscriptions: usize,
}

impl ChannelTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `conn` to `channel`. Returns the interned channel name (for the
    /// connection to keep) together with what changed.
    pub fn subscribe(&mut self, channel: &str, conn: ConnKey) -> (Rc<str>, Change) {
        let name = match self.channels.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None => Rc::from(channel),
        };
        let set = self.channels.entry(name.clone()).or_default();
        if set.insert(conn) {
            self.subscriptions += 1;
            let now = set.len();
            (name, Change::Changed { now })
        } else {
            (name, Change::Unchanged)
        }
    }

    /// Removes `conn` from `channel`; drops the channel when it empties.
    pub fn unsubscribe(&mut self, channel: &str, conn: ConnKey) -> Change {
        let Some(set) = self.channels.get_mut(channel) else {
            return Change::Unchanged;
        };
        if !set.swap_remove(&conn) {
            return Change::Unchanged;
        }
        self.subscriptions -= 1;
        let now = set.len();
        if now == 0 {
            self.channels.remove(channel);
            shrink_map(&mut self.channels);
        } else if set.capacity() > MIN_SHRINK_CAPACITY && now < set.capacity() / 4 {
            set.shrink_to(now * 2);
        }
        Change::Changed { now }
    }

    /// Bytes held by the table's own allocations, at capacity (not the
    /// channel names, which are shared with the connections).
    pub fn heap_size(&self) -> usize {
        let entry = std::mem::size_of::<(Rc<str>, IndexSet<ConnKey>)>() + 1;
        self.channels.capacity() * entry
            + self
                .channels
                .values()
                .map(|s| s.capacity() * (std::mem::size_of::<ConnKey>() * 2 + 8))
                .sum::<usize>()
    }

    /// The local subscribers of `channel`, in no particular order.
    pub fn subscribers(&self, channel: &str) -> Option<&IndexSet<ConnKey>> {
        self.channels.get(channel)
    }

    /// Local subscriber count of `channel`.
    pub fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, IndexSet::len)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Channels the map has room for without growing.
    pub fn channel_capacity(&self) -> usize {
        self.channels.capacity()
    }

    /// Total (connection, channel) pairs on this shard.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Every channel with its local subscriber count.
    pub fn iter_counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.channels.iter().map(|(k, v)| (&**k, v.len()))
    }
}

/// Collections at most this large are never shrunk (re-growing them
/// would cost more than they hold).
pub const MIN_SHRINK_CAPACITY: usize = 64;

/// Gives back a map's memory once it holds under a quarter of its
/// capacity (halving at least, so shrinking is amortized O(1) per
/// removal): a table that once held 100,000 channels does not keep their
/// room after they leave.
pub fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > MIN_SHRINK_CAPACITY && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_is_idempotent_and_counts() {
        let mut t = ChannelTable::new();
        assert_eq!(t.subscribe("a", 1).1, Change::Changed { now: 1 });
        assert_eq!(t.subscribe("a", 1).1, Change::Unchanged);
        assert_eq!(t.subscribe("a", 2).1, Change::Changed { now: 2 });
        assert_eq!(t.subscribe("b", 1).1, Change::Changed { now: 1 });
        assert_eq!(t.subscription_count(), 3);
        assert_eq!(t.channel_count(), 2);
        assert_eq!(t.count("a"), 2);
    }

    #[test]
    fn names_are_interned() {
        let mut t = ChannelTable::new();
        let (a1, _) = t.subscribe("chan", 1);
        let (a2, _) = t.subscribe("chan", 2);
        assert!(Rc::ptr_eq(&a1, &a2));
    }

    #[test]
    fn unsubscribe_removes_empty_channels() {
        let mut t = ChannelTable::new();
        t.subscribe("a", 1);
        t.subscribe("a", 2);
        assert_eq!(t.unsubscribe("a", 3), Change::Unchanged);
        assert_eq!(t.unsubscribe("zz", 1), Change::Unchanged);
        assert_eq!(t.unsubscribe("a", 1), Change::Changed { now: 1 });
        assert_eq!(t.unsubscribe("a", 2), Change::Changed { now: 0 });
        assert_eq!(t.channel_count(), 0);
        assert_eq!(t.subscription_count(), 0);
        assert!(t.subscribers("a").is_none());
    }

    #[test]
    fn emptied_tables_give_their_memory_back() {
        let mut t = ChannelTable::new();
        let empty = t.heap_size();
        for c in 0..10_000 {
            t.subscribe(&format!("c{c}"), 1);
        }
        for conn in 0..10_000 {
            t.subscribe("big", conn);
        }
        let full = t.heap_size();
        assert!(full > 500_000, "{full}");
        for conn in 1..10_000 {
            t.unsubscribe("big", conn);
        }
        for c in 0..10_000 {
            t.unsubscribe(&format!("c{c}"), 1);
        }
        assert_eq!(t.channel_count(), 1);
        assert!(
            t.heap_size() < empty + 16 * 1024,
            "{} after, {empty} empty",
            t.heap_size()
        );
    }

    #[test]
    fn subscribers_lists_each_once() {
        let mut t = ChannelTable::new();
        for c in 0..100 {
            t.subscribe("x", c);
        }
        for c in (0..100).step_by(2) {
            t.unsubscribe("x", c);
        }
        let mut got: Vec<_> = t.subscribers("x").unwrap().iter().copied().collect();
        got.sort_unstable();
        assert_eq!(got, (1..100).step_by(2).collect::<Vec<_>>());
    }
}
