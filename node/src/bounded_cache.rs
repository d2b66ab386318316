//! A bounded in-memory map that keeps its hot entries: two generations of at most `N` entries
//! each. When the current generation is full it becomes the old one (the previous old one is
//! dropped); a hit in the old generation moves the entry back to the current one. So it never
//! holds more than `2 * N` entries, and an entry used once per `N` insertions stays.
//!
//! The one mechanism behind the gateway's caches (rendered narinfos, the NAR route's trust
//! answers) and the store's set of verified blobs.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// See the module docs. Shared between threads (one lock, held only for a map operation).
#[derive(Debug)]
pub struct BoundedCache<K, V, const N: usize> {
    inner: Mutex<Generations<K, V>>,
}

#[derive(Debug)]
struct Generations<K, V> {
    current: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K, V, const N: usize> Default for BoundedCache<K, V, N> {
    fn default() -> Self {
        BoundedCache { inner: Mutex::new(Generations { current: HashMap::new(), old: HashMap::new() }) }
    }
}

impl<K: Hash + Eq, V: Clone, const N: usize> BoundedCache<K, V, N> {
    fn lock(&self) -> MutexGuard<'_, Generations<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key` (a hit in the old generation moves it to the current one).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut g = self.lock();
        if let Some(v) = g.current.get(key) {
            return Some(v.clone());
        }
        let (k, v) = g.old.remove_entry(key)?;
        g.insert(k, v.clone(), N);
        Some(v)
    }

    /// Remember `value` for `key` (replacing what was there).
    pub fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value, N);
    }

    /// Forget `key`.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut g = self.lock();
        g.current.remove(key);
        g.old.remove(key);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.old.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V> Generations<K, V> {
    fn insert(&mut self, key: K, value: V, per_generation: usize) {
        if self.current.len() >= per_generation && !self.current.contains_key(&key) {
            self.old = std::mem::take(&mut self.current);
        }
        self.old.remove(&key);
        self.current.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_hot_entries_and_forgets() {
        let c: BoundedCache<u64, u64, 100> = BoundedCache::default();
        c.insert(u64::MAX, 7);
        for i in 0..1000 {
            c.insert(i, i);
            assert!(c.len() <= 200, "at {i}: {}", c.len());
            if i % 50 == 0 {
                assert_eq!(c.get(&u64::MAX), Some(7), "a hot entry stays (at {i})");
            }
        }
        assert_eq!(c.get(&0), None, "a cold entry is dropped");
        c.insert(u64::MAX, 8);
        assert_eq!(c.get(&u64::MAX), Some(8));
        c.remove(&u64::MAX);
        assert_eq!(c.get(&u64::MAX), None);
    }
}
