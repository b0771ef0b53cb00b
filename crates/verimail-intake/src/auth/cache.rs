//! A small time-bounded cache of verified credentials.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries beyond this are dropped wholesale: credentials are few, and a
/// flood of unknown ones is never cached (only found ones are).
const MAX_ENTRIES: usize = 10_000;

pub struct Cache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// An entry past its TTL but at most `max_age` old: what a lookup that
    /// failed on infrastructure falls back to.
    pub fn get_stale(&self, key: &K, max_age: Duration) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, v)| v.clone())
    }

    pub fn remove(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Makes every entry miss `get` (it must be looked up again) while
    /// `get_stale` may still fall back on it: for when revocations may have
    /// been missed, but Postgres may also be away.
    pub fn expire_all(&self) {
        let Some(expired) = Instant::now().checked_sub(self.ttl) else {
            return self.clear();
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (at, _) in entries.values_mut() {
            *at = (*at).min(expired);
        }
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_for_the_ttl_only() {
        let cache = Cache::new(Duration::from_millis(30));
        cache.put("k", 1);
        assert_eq!(cache.get(&"k"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"k"), None);
    }

    #[test]
    fn stale_entries_are_kept_for_a_while_as_a_fallback() {
        let cache = Cache::new(Duration::from_millis(10));
        cache.put("k", 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(cache.get(&"k"), None);
        assert_eq!(cache.get_stale(&"k", Duration::from_secs(60)), Some(1));
        assert_eq!(cache.get_stale(&"k", Duration::from_millis(5)), None);
    }

    #[test]
    fn expired_entries_miss_but_remain_a_fallback() {
        let cache = Cache::new(Duration::from_secs(5));
        cache.put("k", 1);
        cache.expire_all();
        assert_eq!(cache.get(&"k"), None);
        assert_eq!(cache.get_stale(&"k", Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn a_zero_ttl_disables_caching() {
        let cache = Cache::new(Duration::ZERO);
        cache.put("k", 1);
        assert_eq!(cache.get(&"k"), None);
    }
}
