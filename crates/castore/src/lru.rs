//! [`Lru`]: a map bounded by the total cost of its entries, the least recently
//! used evicted first. The in-memory caches of verified S3 chunks, of directories
//! (PostgreSQL), of path info lookups and of rendered narinfos share it, so that a
//! full cache drops what is cold instead of everything at once.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map whose entries' costs add up to at most `max_cost`.
///
/// Not synchronised: callers hold it in a mutex. Every operation is O(log n).
pub struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// stamp -> key, least recent use first.
    order: BTreeMap<u64, K>,
    next_stamp: u64,
    cost: usize,
    max_cost: usize,
}

struct Entry<V> {
    value: V,
    cost: usize,
    stamp: u64,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `max_cost` (0 keeps nothing).
    pub fn new(max_cost: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            cost: 0,
            max_cost,
        }
    }

    /// The value for `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        let entry = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.stamp, stamp);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(stamp, k);
        }
        Some(&entry.value)
    }

    /// The value for `key`, without counting as a use.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// Whether `key` is held (without counting as a use).
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Keeps `value` under `key` as the most recently used, replacing what was
    /// there, after evicting the least recently used entries until it fits. A
    /// value costing more than the whole bound is not kept (and evicts nothing);
    /// returns whether it was kept.
    pub fn insert(&mut self, key: K, value: V, cost: usize) -> bool {
        self.remove(&key);
        if cost > self.max_cost {
            return false;
        }
        while self.cost + cost > self.max_cost {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.cost -= e.cost;
            }
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.order.insert(stamp, key.clone());
        self.entries.insert(key, Entry { value, cost, stamp });
        self.cost += cost;
        true
    }

    /// Drops `key`'s entry; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.stamp);
        self.cost -= e.cost;
        Some(e.value)
    }

    /// The values, least recently used first (without counting as uses).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.order
            .values()
            .filter_map(|k| self.entries.get(k).map(|e| &e.value))
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sum of the held entries' costs.
    pub fn cost(&self) -> usize {
        self.cost
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_until_it_fits() {
        let mut l = Lru::new(10);
        assert!(l.insert('a', 1, 3));
        assert!(l.insert('b', 2, 3));
        assert!(l.insert('c', 3, 3));
        assert_eq!((l.len(), l.cost()), (3, 9));
        // A use makes 'a' the most recent: 'b' goes first.
        assert_eq!(l.get(&'a'), Some(&1));
        assert_eq!(l.values().copied().collect::<Vec<_>>(), [2, 3, 1]);
        assert!(l.insert('d', 4, 3));
        assert_eq!((l.len(), l.cost()), (3, 9));
        assert!(!l.contains_key(&'b'));
        // Two must go for a cost of 6: 'c', then 'a'.
        assert!(l.insert('e', 5, 6));
        assert_eq!((l.len(), l.cost()), (2, 9));
        assert!(l.contains_key(&'d') && l.contains_key(&'e'));
        assert!(!l.contains_key(&'c') && !l.contains_key(&'a'));
    }

    #[test]
    fn replacing_counts_the_new_cost_only() {
        let mut l = Lru::new(10);
        l.insert('a', 1, 4);
        l.insert('b', 2, 4);
        assert!(l.insert('a', 10, 6));
        assert_eq!((l.len(), l.cost()), (2, 10));
        assert_eq!(l.get(&'a'), Some(&10));
        assert_eq!(l.remove(&'b'), Some(2));
        assert_eq!((l.len(), l.cost()), (1, 6));
        assert_eq!(l.remove(&'b'), None);
    }

    #[test]
    fn too_costly_is_not_kept_and_evicts_nothing() {
        let mut l = Lru::new(10);
        l.insert('a', 1, 5);
        assert!(!l.insert('b', 2, 11));
        assert_eq!((l.len(), l.cost()), (1, 5));
        // Replacing with a value too costly drops the old one.
        assert!(!l.insert('a', 3, 11));
        assert!(l.is_empty());
        assert_eq!(l.cost(), 0);
        let mut none = Lru::new(0);
        assert!(!none.insert('a', 1, 1));
        assert!(none.is_empty());
    }

    #[test]
    fn many_uses_keep_the_order() {
        let mut l = Lru::new(100);
        for i in 0..100u32 {
            l.insert(i, i, 1);
        }
        // Use the even ones: the odd ones are now the least recent.
        for i in (0..100u32).step_by(2) {
            assert_eq!(l.get(&i), Some(&i));
        }
        for i in 100..150u32 {
            l.insert(i, i, 1);
        }
        assert_eq!((l.len(), l.cost()), (100, 100));
        assert!((0..100u32).all(|i| l.contains_key(&i) == (i % 2 == 0)));
    }
}
