//! TEMPORARY naive table (replaced by the trie from branch `trie`): same interface.
#![allow(dead_code, clippy::type_complexity)]
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::AtomicUsize;

use ferrite_core::filter_matches;

pub(crate) enum Match<'a, K, V> {
    Direct { key: &'a K, value: &'a V },
    Shared { group: &'a str, members: &'a [(K, V)], next: &'a AtomicUsize },
}

pub(crate) fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    rest.split_once('/')
}

pub(crate) struct SubscriptionTable<K, V> {
    direct: Vec<(String, K, V)>,
    shared: HashMap<(String, String), (Vec<(K, V)>, AtomicUsize)>,
}

impl<K: Clone + Eq + Hash, V: Clone> Default for SubscriptionTable<K, V> {
    fn default() -> Self {
        Self { direct: Vec::new(), shared: HashMap::new() }
    }
}

impl<K: Clone + Eq + Hash, V: Clone> SubscriptionTable<K, V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn subscribe(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> Option<V> {
        match group {
            None => {
                if let Some(e) = self.direct.iter_mut().find(|(f, k, _)| f == filter && *k == key) {
                    return Some(std::mem::replace(&mut e.2, value));
                }
                self.direct.push((filter.to_owned(), key, value));
                None
            }
            Some(g) => {
                let entry = self
                    .shared
                    .entry((g.to_owned(), filter.to_owned()))
                    .or_insert_with(|| (Vec::new(), AtomicUsize::new(0)));
                if let Some(e) = entry.0.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut e.1, value));
                }
                entry.0.push((key, value));
                None
            }
        }
    }
    pub(crate) fn unsubscribe(&mut self, filter: &str, group: Option<&str>, key: &K) -> Option<V> {
        match group {
            None => {
                let i = self.direct.iter().position(|(f, k, _)| f == filter && k == key)?;
                Some(self.direct.swap_remove(i).2)
            }
            Some(g) => {
                let k = (g.to_owned(), filter.to_owned());
                let entry = self.shared.get_mut(&k)?;
                let i = entry.0.iter().position(|(m, _)| m == key)?;
                let v = entry.0.remove(i).1;
                if entry.0.is_empty() {
                    self.shared.remove(&k);
                }
                Some(v)
            }
        }
    }
    pub(crate) fn for_each_match(&self, topic: &str, mut visit: impl FnMut(Match<'_, K, V>)) {
        for (f, k, v) in &self.direct {
            if filter_matches(f, topic) {
                visit(Match::Direct { key: k, value: v });
            }
        }
        for ((g, f), (members, next)) in &self.shared {
            if filter_matches(f, topic) {
                visit(Match::Shared { group: g, members, next });
            }
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.direct.len() + self.shared.values().map(|m| m.0.len()).sum::<usize>()
    }
}

pub(crate) struct RetainedTable<V> {
    map: HashMap<String, V>,
}
impl<V> Default for RetainedTable<V> {
    fn default() -> Self {
        Self { map: HashMap::new() }
    }
}
impl<V> RetainedTable<V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    pub(crate) fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        self.map.insert(topic.to_owned(), value)
    }
    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        self.map.remove(topic)
    }
    pub(crate) fn for_each_matching(&self, filter: &str, mut visit: impl FnMut(&str, &V)) {
        for (t, v) in &self.map {
            if filter_matches(filter, t) {
                visit(t, v);
            }
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
