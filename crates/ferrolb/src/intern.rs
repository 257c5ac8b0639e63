//! Shared copies of strings that repeat across many objects (namespaces, node names, label keys
//! and values, presence Lease names): one `Arc<str>` each, referred to by every object that
//! carries it.

use std::collections::HashSet;
use std::sync::Arc;

/// One `Arc<str>` per distinct string. Values no object refers to any more are dropped when the
/// set has doubled since the last sweep ([`Interner::prune`]), so it stays proportional to what
/// the caches hold.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<str>>,
    /// Size after the last sweep.
    swept: usize,
}

/// Below this many strings the interner does not sweep.
const MIN_SWEEP: usize = 1024;

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= (2 * self.swept).max(MIN_SWEEP) {
            self.prune();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// Drops the strings only the interner still holds.
    pub fn prune(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.set.shrink_to_fit();
        self.swept = self.set.len();
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether it holds no string.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
