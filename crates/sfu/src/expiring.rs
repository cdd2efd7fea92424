//! Keys held until a deadline, then forgotten: bans of an identity from a room (kicks),
//! revoked access tokens. Clock-free: every call takes `now`, in whatever unit the
//! deadlines are (an `Instant`, Unix seconds).
//!
//! Bounded: expired keys are pruned at each insertion, and a set full of live keys
//! refuses a new one rather than forget an old one early (a ban or a revocation that
//! silently ended would be worse than an operator told "full").

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone)]
pub struct Expiring<K, T> {
    until: HashMap<K, T>,
    max: usize,
}

impl<K: Eq + Hash, T: Ord + Copy> Expiring<K, T> {
    /// A set of at most `max` live keys.
    pub fn new(max: usize) -> Self {
        Expiring {
            until: HashMap::new(),
            max,
        }
    }

    /// Holds `key` until `until` (a later deadline extends a held key, an earlier one
    /// never shortens it). False when `until` is not after `now` (nothing to hold), or
    /// the set is full of live keys (the key is not held).
    pub fn insert(&mut self, key: K, until: T, now: T) -> bool {
        if until <= now {
            return false;
        }
        self.prune(now);
        if let Some(t) = self.until.get_mut(&key) {
            *t = (*t).max(until);
            return true;
        }
        if self.until.len() >= self.max {
            return false;
        }
        self.until.insert(key, until);
        true
    }

    /// The deadline of `key`, while it holds at `now`.
    pub fn until(&self, key: &K, now: T) -> Option<T> {
        self.until.get(key).copied().filter(|t| *t > now)
    }

    /// Forgets `key` (an operator lifting a ban); whether it was held.
    pub fn remove(&mut self, key: &K) -> bool {
        self.until.remove(key).is_some()
    }

    /// Forgets every key whose deadline has passed at `now`.
    pub fn prune(&mut self, now: T) {
        self.until.retain(|_, t| *t > now);
    }

    /// Keys held (some may have expired since the last prune).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    /// The live keys at `now`, with their deadlines.
    pub fn live(&self, now: T) -> impl Iterator<Item = (&K, T)> {
        self.until
            .iter()
            .filter(move |(_, t)| **t > now)
            .map(|(k, t)| (k, *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_until_their_deadline() {
        let mut s: Expiring<&str, u64> = Expiring::new(10);
        assert!(s.insert("ada", 100, 0));
        // (key, now, held until)
        let cases: &[(&str, u64, Option<u64>)] = &[
            ("ada", 0, Some(100)),
            ("ada", 99, Some(100)),
            ("ada", 100, None),
            ("ada", 500, None),
            ("bob", 0, None),
        ];
        for (k, now, want) in cases {
            assert_eq!(s.until(k, *now), *want, "{k} at {now}");
        }
        // A later deadline extends; an earlier one does not shorten.
        assert!(s.insert("ada", 200, 50));
        assert!(s.insert("ada", 150, 60));
        assert_eq!(s.until(&"ada", 160), Some(200));
        // Nothing to hold: already past.
        assert!(!s.insert("bob", 10, 10));
        assert_eq!(s.until(&"bob", 0), None);
        assert!(s.remove(&"ada"));
        assert_eq!(s.until(&"ada", 0), None);
    }

    #[test]
    fn it_never_grows_past_its_bound() {
        let mut s: Expiring<u32, u64> = Expiring::new(3);
        assert!(s.insert(1, 10, 0));
        assert!(s.insert(2, 20, 0));
        assert!(s.insert(3, 30, 0));
        // Full of live keys: refused, and nothing held is forgotten.
        assert!(!s.insert(4, 40, 5));
        assert_eq!(s.len(), 3);
        assert_eq!(s.until(&1, 5), Some(10));
        // Once some expire, they are pruned and make room.
        assert!(s.insert(4, 40, 15));
        assert_eq!(s.len(), 3);
        assert_eq!(s.until(&1, 15), None);
        assert_eq!(s.live(15).count(), 3);
        s.prune(100);
        assert!(s.is_empty());
        // Many insertions over time stay within the bound.
        for i in 0..10_000u32 {
            s.insert(i, u64::from(i) + 2, u64::from(i));
            assert!(s.len() <= 3);
        }
    }
}
