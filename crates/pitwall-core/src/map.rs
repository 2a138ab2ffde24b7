//! [`SortedMap`]: the small ordered map a point keeps its tags and fields in.
//!
//! A point has a handful of tags and a few dozen fields at most, and every stage looks
//! them up by name many times per event. A sorted vector does that with one allocation
//! per map (a `BTreeMap` needs a node per eleven entries) and with lookups that stay in
//! one cache line or two; the keys are [`Name`]s, which keep names up to 24 bytes inline
//! so a decoded point allocates nothing per key. The API is the part of `BTreeMap`'s that
//! pitwall uses, with the same meaning (iteration in key order, `insert` replaces).

use std::borrow::Borrow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A tag or field name, or a tag value: a string that is stored inline up to 24 bytes.
pub type Name = compact_str::CompactString;

/// An ordered map on a sorted vector; see the module documentation.
#[derive(Clone, PartialEq)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        SortedMap {
            entries: Vec::with_capacity(n),
        }
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        // A linear scan beats a binary search on the few entries a point has.
        if self.entries.len() <= 8 {
            for (i, (k, _)) in self.entries.iter().enumerate() {
                match k.borrow().cmp(key) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => return Ok(i),
                    std::cmp::Ordering::Greater => return Err(i),
                }
            }
            return Err(self.entries.len());
        }
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// The value of `key`, trying position `*hint` first and leaving there where `key`
    /// was found: points of one measurement mostly share their layout, so a caller that
    /// looks up the same names point after point compares one key instead of searching.
    pub fn get_hinted<Q: Ord + ?Sized>(&self, key: &Q, hint: &mut usize) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        if let Some((k, v)) = self.entries.get(*hint)
            && k.borrow() == key
        {
            return Some(v);
        }
        let i = self.find(key).ok()?;
        *hint = i;
        Some(&self.entries[i].1)
    }

    /// The value of `key`, to change it, for a caller that looks up keys in ascending
    /// order: the search starts at `*from` (just after the previous, smaller key) and
    /// leaves `*from` just after `key`'s entry, or where `key` would go. Keys looked up
    /// in the map's order cost one comparison each.
    pub fn get_mut_ascending<Q: Ord + ?Sized>(
        &mut self,
        key: &Q,
        from: &mut usize,
    ) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let mut i = *from;
        while let Some((k, _)) = self.entries.get(i) {
            match k.borrow().cmp(key) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => {
                    *from = i + 1;
                    return Some(&mut self.entries[i].1);
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        *from = i;
        None
    }

    /// The value of `key`, to change it.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// True if `key` has a value.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`, returning the value it replaced. Appending keys in order
    /// (as every codec does) costs one comparison.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if self.entries.last().is_none_or(|(last, _)| *last < key) {
            self.entries.push((key, value));
            return None;
        }
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator + Clone {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The entries in key order, values changeable.
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator + Clone {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator + Clone {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in key order, changeable.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// The entries as a slice, in key order.
    pub fn as_slice(&self) -> &[(K, V)] {
        &self.entries
    }

    /// Sorts entries pushed out of order and keeps the last value of a repeated key (as
    /// inserting them one by one would).
    fn from_unsorted(mut entries: Vec<(K, V)>) -> Self {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of equal keys, the last pushed stays last, and is the one kept.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut deduped: Vec<(K, V)> = Vec::with_capacity(entries.len());
            for e in entries {
                match deduped.last_mut() {
                    Some(last) if last.0 == e.0 => *last = e,
                    _ => deduped.push(e),
                }
            }
            entries = deduped;
        }
        SortedMap { entries }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_unsorted(iter.into_iter().collect())
    }
}

impl<K: Ord, V> Extend<(K, V)> for SortedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<'a, K, V> IntoIterator for &'a mut SortedMap<K, V> {
    type Item = (&'a K, &'a mut V);
    type IntoIter =
        std::iter::Map<std::slice::IterMut<'a, (K, V)>, fn(&'a mut (K, V)) -> (&'a K, &'a mut V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }
}

impl<K: Ord + Borrow<Q>, V, Q: Ord + ?Sized> std::ops::Index<&Q> for SortedMap<K, V> {
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for this key in the map")
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SortedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SortedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = SortedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(8).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                Ok(SortedMap::from_unsorted(entries))
            }
        }
        d.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Any sequence of inserts and removes leaves the map equal to a BTreeMap's.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..24, any::<bool>(), any::<u16>()), 0..80)) {
            let mut ours = SortedMap::new();
            let mut theirs = BTreeMap::new();
            for (k, insert, v) in ops {
                let key = format!("k{k:02}");
                if insert {
                    prop_assert_eq!(ours.insert(Name::from(key.as_str()), v), theirs.insert(key.clone(), v));
                } else {
                    prop_assert_eq!(ours.remove(key.as_str()), theirs.remove(&key));
                }
                prop_assert_eq!(ours.len(), theirs.len());
                // A hinted lookup agrees with a plain one, whatever the hint.
                let mut hint = usize::from(k) % 7;
                for probe in [key.as_str(), "k05", "k00", "zz"] {
                    prop_assert_eq!(ours.get_hinted(probe, &mut hint), theirs.get(probe));
                }
            }
            let a: Vec<(String, u16)> = ours.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let b: Vec<(String, u16)> = theirs.into_iter().collect();
            prop_assert_eq!(a, b);
        }

        /// Ascending lookups, with inserts of the keys not found where they were not
        /// found (as a window pane takes a point's fields), agree with a BTreeMap's and
        /// leave the same map.
        #[test]
        fn ascending_lookups_agree(
            start in proptest::collection::btree_set(0u8..30, 0..15),
            probes in proptest::collection::btree_set(0u8..30, 0..15),
        ) {
            let mut ours: SortedMap<Name, u32> = start.iter().map(|k| (Name::from(format!("k{k:02}")), 0)).collect();
            let mut theirs: BTreeMap<String, u32> = start.iter().map(|k| (format!("k{k:02}"), 0)).collect();
            let mut at = 0;
            for p in &probes {
                let key = format!("k{p:02}");
                match ours.get_mut_ascending(key.as_str(), &mut at) {
                    Some(v) => {
                        *v += 1;
                        let t = theirs.get_mut(&key);
                        prop_assert!(t.is_some(), "found {key} the BTreeMap lacks");
                        if let Some(t) = t { *t += 1; }
                    }
                    None => {
                        prop_assert!(!theirs.contains_key(&key), "missed {key}");
                        ours.insert(Name::from(key.as_str()), 1);
                        theirs.insert(key, 1);
                        at += 1;
                    }
                }
            }
            let a: Vec<(String, u32)> = ours.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let b: Vec<(String, u32)> = theirs.into_iter().collect();
            prop_assert_eq!(a, b);
        }

        /// Collecting out of order sorts and keeps the last value of a repeated key.
        #[test]
        fn collect_keeps_the_last(pairs in proptest::collection::vec((0u8..12, any::<u16>()), 0..40)) {
            let ours: SortedMap<u8, u16> = pairs.iter().copied().collect();
            let theirs: BTreeMap<u8, u16> = pairs.iter().copied().collect();
            prop_assert_eq!(ours.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), theirs.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn json_objects_round_trip_with_repeated_keys_last_wins() {
        let m: SortedMap<Name, i64> = serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":2,"b":3}"#);
        assert_eq!(m["b"], 3);
    }
}
