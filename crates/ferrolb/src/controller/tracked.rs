//! The controller's bookkeeping for one kind of object it writes the status of (Services,
//! LoadBalancerIPPools), written once for both: [`Tracked`] keeps the latest object of each key,
//! the resourceVersion of our last write (or re-read) that the watch has not delivered yet, and
//! the keys whose write must be (re)computed.
//!
//! Invariants: a relist ends every wait (it is a consistent, current view); a wait ends when the
//! watch delivers that exact resourceVersion, or after the timeout (a lost event must not block
//! an object forever); forgetting an object forgets its wait and its dirty mark.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::cache::CachedService;
use crate::api::LoadBalancerIPPool;
use crate::ipam::ServiceKey;

/// How long a write waits for the watch to deliver the resourceVersion it produced before the
/// controller stops waiting (a lost event must not block an object forever).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// An object the controller caches: its key, resourceVersion and uid.
pub trait Object {
    type Key: Ord + Clone;
    fn key(&self) -> Self::Key;
    fn resource_version(&self) -> Option<&str>;
    fn uid(&self) -> Option<&str>;
}

impl Object for CachedService {
    type Key = ServiceKey;
    fn key(&self) -> ServiceKey {
        self.key.clone()
    }
    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
    fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }
}

impl Object for LoadBalancerIPPool {
    type Key = String;
    fn key(&self) -> String {
        self.name_any()
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
    fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref()
    }
}

/// Cached objects of one kind, their pending versions and their dirty marks. See the module docs.
/// Objects enter and leave only through the [`State`](super::state::State) (which keeps the
/// allocator in step); the runner notes versions and takes and sets dirty marks.
#[derive(Debug)]
pub struct Tracked<V: Object> {
    objects: BTreeMap<V::Key, V>,
    /// resourceVersion we know before the watch does, and since when.
    pending: BTreeMap<V::Key, (String, Instant)>,
    dirty: BTreeSet<V::Key>,
    timeout: Duration,
}

impl<V: Object> Default for Tracked<V> {
    fn default() -> Self {
        Tracked::with_timeout(PENDING_TIMEOUT)
    }
}

impl<V: Object> Tracked<V> {
    /// An empty set whose waits for the watch end after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        Tracked {
            objects: BTreeMap::new(),
            pending: BTreeMap::new(),
            dirty: BTreeSet::new(),
            timeout,
        }
    }

    // ----- objects ---------------------------------------------------------------------------

    /// The cached object of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        V::Key: Borrow<Q>,
    {
        self.objects.get(key)
    }

    /// The cached keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &V::Key> {
        self.objects.keys()
    }

    /// The cached objects, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The cached resourceVersion of `key`.
    pub fn rv<Q: Ord + ?Sized>(&self, key: &Q) -> Option<String>
    where
        V::Key: Borrow<Q>,
    {
        Some(self.objects.get(key)?.resource_version()?.to_string())
    }

    /// Caches `obj` under `key` and marks it dirty.
    pub(super) fn store(&mut self, key: V::Key, obj: V) {
        self.objects.insert(key.clone(), obj);
        self.dirty.insert(key);
    }

    /// Forgets `key`: its object, its wait and its dirty mark.
    pub(super) fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        V::Key: Borrow<Q>,
    {
        self.pending.remove(key);
        self.dirty.remove(key);
        self.objects.remove(key)
    }

    /// Whether a delete of `obj` is stale: the cached object of its key has another uid (it was
    /// re-created).
    pub fn is_stale_delete(&self, obj: &V) -> bool {
        match (self.objects.get(&obj.key()), obj.uid()) {
            (Some(cur), Some(uid)) => cur.uid().is_some_and(|u| u != uid),
            _ => false,
        }
    }

    // ----- the watch and our writes ----------------------------------------------------------

    /// A (re)list arrived: every wait ends. Returns the cached keys `list` does not hold (to be
    /// deleted).
    pub(super) fn relist(&mut self, list: &[V]) -> Vec<V::Key> {
        self.pending.clear();
        let present: BTreeSet<V::Key> = list.iter().map(Object::key).collect();
        missing_keys(&self.objects, &present)
    }

    /// A watch event delivered `obj`: the wait for its key ends when it shows the version we
    /// know.
    pub(super) fn observe(&mut self, obj: &V) {
        let key = obj.key();
        if let Some((rv, _)) = self.pending.get(&key) {
            if obj.resource_version() == Some(rv.as_str()) {
                self.pending.remove(&key);
            }
        }
    }

    /// Records that we know `key` at `rv` before the watch does (a write produced it, or a
    /// re-read after a 409 returned it). `previous` is the version the write was based on: a
    /// write that changed nothing keeps the version and produces no event, so nothing is pending.
    pub fn note_version<Q>(&mut self, key: &Q, previous: Option<&str>, rv: Option<&str>)
    where
        Q: Ord + ?Sized + ToOwned<Owned = V::Key>,
        V::Key: Borrow<Q>,
    {
        if let Some(rv) = rv {
            if previous != Some(rv) {
                self.pending
                    .insert(key.to_owned(), (rv.to_string(), Instant::now()));
            }
        }
    }

    /// When a write for `key` waits for the watch: until this instant (None = not waiting).
    pub fn pending_until<Q: Ord + ?Sized>(&self, key: &Q) -> Option<Instant>
    where
        V::Key: Borrow<Q>,
    {
        self.pending
            .get(key)
            .map(|(_, at)| *at + self.timeout)
            .filter(|until| *until > Instant::now())
    }

    // ----- dirty marks -----------------------------------------------------------------------

    pub fn mark_dirty(&mut self, key: V::Key) {
        self.dirty.insert(key);
    }

    pub fn extend_dirty(&mut self, keys: impl IntoIterator<Item = V::Key>) {
        self.dirty.extend(keys);
    }

    /// Marks every cached object dirty.
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.objects.keys().cloned());
    }

    /// Drops `key`'s dirty mark (used when a write does not converge).
    pub fn forget_dirty<Q: Ord + ?Sized>(&mut self, key: &Q)
    where
        V::Key: Borrow<Q>,
    {
        self.dirty.remove(key);
    }

    pub fn clear_dirty(&mut self) {
        self.dirty.clear();
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The keys to look at, in order (and forgets them; re-mark on failure).
    pub fn take_dirty(&mut self) -> Vec<V::Key> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }
}

/// The keys of `map` that `present` does not hold, in order.
pub fn missing_keys<K: Ord + Clone, T>(map: &BTreeMap<K, T>, present: &BTreeSet<K>) -> Vec<K> {
    map.keys()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal object: key, resourceVersion, uid.
    #[derive(Clone, Debug, PartialEq)]
    struct Obj(&'static str, &'static str, &'static str);

    impl Object for Obj {
        type Key = String;
        fn key(&self) -> String {
            self.0.to_string()
        }
        fn resource_version(&self) -> Option<&str> {
            Some(self.1)
        }
        fn uid(&self) -> Option<&str> {
            Some(self.2)
        }
    }

    fn stored(objs: &[Obj]) -> Tracked<Obj> {
        let mut t = Tracked::default();
        for o in objs {
            t.store(o.key(), o.clone());
        }
        t
    }

    #[test]
    fn store_marks_dirty_and_take_forgets_the_marks() {
        let mut t = stored(&[Obj("b", "1", "u"), Obj("a", "1", "u")]);
        assert!(t.has_dirty());
        assert_eq!(t.take_dirty(), ["a", "b"]);
        assert!(!t.has_dirty());
        assert_eq!(t.take_dirty(), Vec::<String>::new());
        assert_eq!(t.len(), 2, "taking the marks keeps the objects");
        t.mark_all_dirty();
        t.forget_dirty(&"a".to_string());
        assert_eq!(t.take_dirty(), ["b"]);
        t.extend_dirty(["x".to_string()]);
        t.clear_dirty();
        assert!(!t.has_dirty());
    }

    #[test]
    fn a_wait_ends_with_the_version_we_know_not_with_an_older_one() {
        let mut t = stored(&[Obj("a", "5", "u")]);
        let a = "a".to_string();
        // A write that changed nothing keeps the version: nothing to wait for.
        t.note_version(&a, Some("5"), Some("5"));
        assert_eq!(t.pending_until(&a), None);
        t.note_version(&a, Some("5"), None);
        assert_eq!(t.pending_until(&a), None);
        t.note_version(&a, Some("5"), Some("6"));
        let until = t.pending_until(&a).expect("waiting");
        assert!(until > Instant::now() + PENDING_TIMEOUT - Duration::from_secs(5));
        t.observe(&Obj("a", "5", "u"));
        assert!(t.pending_until(&a).is_some(), "an older event is no news");
        t.observe(&Obj("a", "6", "u"));
        assert_eq!(t.pending_until(&a), None);
    }

    #[test]
    fn a_wait_ends_after_the_timeout() {
        let mut t: Tracked<Obj> = Tracked::with_timeout(Duration::ZERO);
        let a = "a".to_string();
        t.note_version(&a, Some("1"), Some("2"));
        assert_eq!(t.pending_until(&a), None);
    }

    #[test]
    fn a_relist_ends_every_wait_and_names_what_is_gone() {
        let mut t = stored(&[Obj("a", "1", "u"), Obj("b", "1", "u"), Obj("c", "1", "u")]);
        t.note_version(&"a".to_string(), Some("1"), Some("2"));
        let gone = t.relist(&[Obj("b", "3", "u")]);
        assert_eq!(gone, ["a", "c"]);
        assert_eq!(t.pending_until(&"a".to_string()), None);
    }

    #[test]
    fn remove_forgets_object_wait_and_mark() {
        let mut t = stored(&[Obj("a", "1", "u")]);
        let a = "a".to_string();
        t.note_version(&a, Some("1"), Some("2"));
        assert_eq!(t.remove(&a), Some(Obj("a", "1", "u")));
        assert_eq!(t.get(&a), None);
        assert_eq!(t.rv(&a), None);
        assert_eq!(t.pending_until(&a), None);
        assert!(!t.has_dirty());
        assert_eq!(t.remove(&a), None);
    }

    #[test]
    fn a_delete_of_a_re_created_object_is_stale() {
        let t = stored(&[Obj("a", "1", "new")]);
        assert!(t.is_stale_delete(&Obj("a", "1", "old")));
        assert!(!t.is_stale_delete(&Obj("a", "1", "new")));
        assert!(!t.is_stale_delete(&Obj("b", "1", "old")), "not cached");
        assert_eq!(t.rv(&"a".to_string()).as_deref(), Some("1"));
    }
}
