//! The allocator's internal representation (interned Services, address and pool entries) and
//! its bookkeeping: claiming and releasing addresses keeps every index consistent.

use super::*;

// ----- internal representation ---------------------------------------------------------------
//
// Services are interned: a [`ServiceKey`] is looked up once per public call (FxHash) and from
// then on the allocator works with a dense integer id ([`Sid`]) into a slab of entries. Address
// holders, the changed set and the waiting set hold ids, so the hot path clones no key. Outcomes
// are kept as a compact [`Verdict`] (pool names as shared `Arc<str>`); the public [`Outcome`]
// (with its message) is only built when asked for. Every iteration that is observable (retries,
// refreshes, error messages naming a holder, `take_changed`) sorts by key, as before.

/// Dense id of an interned Service (index into `Allocator::slots`).
pub(super) type Sid = u32;

/// Entries per [`Slab`] chunk.
pub(super) const CHUNK: usize = 256;

/// Service entries by id, in fixed-size chunks: growing never moves an entry (a plain `Vec` of
/// entries copied every entry on each doubling, a measurable share of allocating 10k Services).
#[derive(Debug, Default)]
pub(super) struct Slab {
    pub(super) chunks: Vec<Box<[Option<SvcEntry>]>>,
    /// Ids handed out so far (live or free).
    pub(super) len: usize,
}

impl Slab {
    pub(super) fn slot(&self, id: Sid) -> Option<&Option<SvcEntry>> {
        let i = id as usize;
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub(super) fn slot_mut(&mut self, id: Sid) -> Option<&mut Option<SvcEntry>> {
        let i = id as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    pub(super) fn get(&self, id: Sid) -> Option<&SvcEntry> {
        self.slot(id)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: Sid) -> Option<&mut SvcEntry> {
        self.slot_mut(id)?.as_mut()
    }

    /// Stores `e` under a new id.
    pub(super) fn push(&mut self, e: SvcEntry) -> Sid {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push((0..CHUNK).map(|_| None).collect());
        }
        let id = self.len as Sid;
        self.len += 1;
        if let Some(slot) = self.slot_mut(id) {
            *slot = Some(e);
        }
        id
    }

    /// Live entries with their ids, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Sid, &SvcEntry)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as Sid, s)))
    }
}

/// FxHash (as in rustc): a fast, non-cryptographic hasher for the in-memory indexes.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher {
    pub(super) hash: u64,
}

pub(super) const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    pub(super) fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(super) type FxBuild = BuildHasherDefault<FxHasher>;
pub(super) type FxMap<K, V> = HashMap<K, V, FxBuild>;
pub(super) type FxSet<K> = HashSet<K, FxBuild>;
/// Held addresses → pool and holders.
pub(super) type AddrTable = FxMap<Addr, AddrEntry>;

#[derive(Debug)]
pub(super) struct PoolEntry {
    /// `def.name`, shared with the address table and verdicts.
    pub(super) name: Arc<str>,
    pub(super) def: PoolDef,
    pub(super) conflict: Option<(String, String)>,
}

impl PoolEntry {
    pub(super) fn allocates(&self) -> bool {
        !self.def.disabled
            && self.conflict.is_none()
            && self.def.selector.is_ok()
            && self.def.namespace_selector.is_ok()
    }
    /// `spec.serviceSelector` selects the Service and the namespace rule allows its namespace.
    pub(super) fn selects(&self, req: &StoredReq, ns: &NsLabels) -> bool {
        self.def
            .selector
            .as_ref()
            .is_ok_and(|s| s.matches_with(|k| req.label(k)))
            && self
                .def
                .allows_namespace(&req.key.namespace, |k| ns_label(ns, &req.key.namespace, k))
    }

    /// Whether a Service without requested addresses may get a new address here: it names this
    /// pool, or names none and the pool has `autoAssign`.
    pub(super) fn offers_to(&self, req: &StoredReq) -> bool {
        if req.pools.is_empty() {
            self.def.auto_assign
        } else {
            self.named_by(req)
        }
    }

    pub(super) fn named_by(&self, req: &StoredReq) -> bool {
        req.pools.iter().any(|p| **p == *self.name)
    }
}

/// Labels of the known namespaces.
pub(super) type NsLabels = BTreeMap<String, BTreeMap<String, String>>;

/// Label `k` of namespace `name`: from its object when known; `kubernetes.io/metadata.name` is
/// always the name (the API server sets it on every namespace).
pub(super) fn ns_label<'a>(ns: &'a NsLabels, name: &'a str, k: &str) -> Option<&'a str> {
    let own = (k == crate::api::LABEL_NAMESPACE_NAME).then_some(name);
    match ns.get(name) {
        Some(l) => l.get(k).map(String::as_str).or(own),
        None => own,
    }
}

/// The Services holding one address (almost always exactly one: no allocation for that case).
#[derive(Debug, Default)]
pub(super) enum Holders {
    #[default]
    Empty,
    One(Sid),
    Many(Vec<Sid>),
}

impl Holders {
    pub(super) fn as_slice(&self) -> &[Sid] {
        match self {
            Holders::Empty => &[],
            Holders::One(id) => std::slice::from_ref(id),
            Holders::Many(v) => v,
        }
    }
    pub(super) fn contains(&self, id: Sid) -> bool {
        self.as_slice().contains(&id)
    }
    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
    pub(super) fn insert(&mut self, id: Sid) {
        match self {
            Holders::Empty => *self = Holders::One(id),
            Holders::One(x) if *x == id => {}
            Holders::One(x) => *self = Holders::Many(vec![*x, id]),
            Holders::Many(v) => {
                if !v.contains(&id) {
                    v.push(id);
                }
            }
        }
    }
    pub(super) fn remove(&mut self, id: Sid) {
        match self {
            Holders::One(x) if *x == id => *self = Holders::Empty,
            Holders::Many(v) => {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    *self = Holders::Empty;
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
pub(super) struct AddrEntry {
    pub(super) pool: Arc<str>,
    pub(super) holders: Holders,
    /// Sharing keys of the holders (mirrors `by_sharing_key`).
    pub(super) keys: BTreeSet<String>,
}

/// A Service's last computed outcome, compactly (the public [`Outcome`] is derived from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Satisfied with these addresses (sorted) from these pools.
    Satisfied(SmallVec<[(Addr, Arc<str>); 2]>),
    /// Not satisfied: reason and message.
    Failed(Reason, Cow<'static, str>),
}

impl Verdict {
    /// Whether the Service got what it asked for.
    pub(super) fn is_satisfied(&self) -> bool {
        matches!(self, Verdict::Satisfied(_))
    }

    /// The public outcome, with the held addresses no pool covers any more.
    pub(super) fn outcome_with(&self, uncovered: &[(Addr, String)]) -> Outcome {
        let mut o = self.outcome();
        o.not_covered = uncovered
            .iter()
            .map(|(a, why)| NotCovered {
                ip: a.to_ip(),
                why: why.clone(),
            })
            .collect();
        o
    }

    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Verdict::Failed(r, m) => Outcome::fail(*r, m.to_string()),
            Verdict::Satisfied(list) => {
                let addresses: Vec<Assigned> = list
                    .iter()
                    .map(|(a, p)| Assigned {
                        ip: a.to_ip(),
                        pool: p.to_string(),
                    })
                    .collect();
                let mut message = String::with_capacity(48 * addresses.len());
                for (i, a) in addresses.iter().enumerate() {
                    use std::fmt::Write;
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(message, "{sep}{} from pool {}", a.ip, a.pool);
                }
                Outcome {
                    reason: Reason::Satisfied,
                    message,
                    addresses,
                    not_covered: Vec::new(),
                }
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct SvcEntry {
    /// Shared so that recomputing does not deep-copy the request.
    pub(super) req: Arc<StoredReq>,
    /// Held addresses, sorted.
    pub(super) addrs: SmallVec<[Addr; 2]>,
    pub(super) verdict: Verdict,
    /// `ensure` ran at least once (adopted-only Services are not retried automatically).
    pub(super) ensured: bool,
    /// Held addresses that no pool covers any more, with why (kept: pool edits never move an
    /// address).
    pub(super) uncovered: Vec<(Addr, String)>,
    /// Next (older) Service whose key has the same index hash.
    pub(super) same_hash: Option<Sid>,
}

impl SvcEntry {
    pub(super) fn set_verdict(&mut self, v: Verdict) {
        self.verdict = v;
    }
}

impl Allocator {
    // ----- bookkeeping -------------------------------------------------------------------

    pub(super) fn claim(&mut self, id: Sid, a: Addr, pool: &Arc<str>) {
        let e = self.addrs.entry(a).or_insert_with(|| AddrEntry {
            pool: Arc::clone(pool),
            holders: Holders::Empty,
            keys: BTreeSet::new(),
        });
        let fresh = e.holders.is_empty();
        e.holders.insert(id);
        let sharing = e.holders.as_slice().len() > 1 || !e.keys.is_empty();
        if fresh {
            self.used.insert(a);
            match self.pool_used.get_mut(&**pool) {
                Some(n) => *n += 1,
                None => {
                    self.pool_used.insert(pool.to_string(), 1);
                }
            }
        }
        let mut has_key = false;
        if let Some(s) = self.slots.get_mut(id) {
            if let Err(i) = s.addrs.binary_search(&a) {
                s.addrs.insert(i, a);
            }
            has_key = s.req.sharing.is_some();
        }
        // Without any sharing key among the holders there is nothing to index.
        if sharing || has_key {
            self.reindex(a);
        }
    }

    /// Re-derives the sharing keys of `a` from its holders' current requests; a key that gains
    /// the address is marked for retrying its waiting Services.
    pub(super) fn reindex(&mut self, a: Addr) {
        let Some(e) = self.addrs.get(&a) else {
            return;
        };
        let now: BTreeSet<String> = e
            .holders
            .as_slice()
            .iter()
            .filter_map(|&h| self.entry(h))
            .filter_map(|s| s.req.sharing.as_ref().map(|s| s.key.clone()))
            .collect();
        if now == e.keys {
            return;
        }
        let before = e.keys.clone();
        for k in before.difference(&now) {
            if let Some(set) = self.by_sharing_key.get_mut(k) {
                set.remove(&a);
                if set.is_empty() {
                    self.by_sharing_key.remove(k);
                }
            }
        }
        for k in now.difference(&before) {
            self.by_sharing_key.entry(k.clone()).or_default().insert(a);
            self.sharing_dirty.insert(k.clone());
        }
        if let Some(e) = self.addrs.get_mut(&a) {
            e.keys = now;
        }
    }

    pub(super) fn unclaim(&mut self, id: Sid, a: Addr) {
        if let Some(s) = self.entry_mut(id) {
            s.addrs.retain(|x| *x != a);
        }
        let Some(e) = self.addrs.get_mut(&a) else {
            return;
        };
        e.holders.remove(id);
        if e.holders.is_empty() {
            let pool = Arc::clone(&e.pool);
            let keys = std::mem::take(&mut e.keys);
            for k in keys {
                if let Some(set) = self.by_sharing_key.get_mut(&k) {
                    set.remove(&a);
                    if set.is_empty() {
                        self.by_sharing_key.remove(&k);
                    }
                }
            }
            self.addrs.remove(&a);
            self.used.remove(a);
            if let Some(n) = self.pool_used.get_mut(&*pool) {
                *n = n.saturating_sub(1);
            }
            self.freed = true;
        } else {
            self.reindex(a);
            // The remaining holders may now accept Services they clashed with.
            let keys: Vec<String> = self
                .addrs
                .get(&a)
                .map(|e| e.keys.iter().cloned().collect())
                .unwrap_or_default();
            self.sharing_dirty.extend(keys);
        }
        if let Some(s) = self.entry(id) {
            if s.ensured {
                self.waiting.insert(id);
            } else {
                // Adopted-only Services have no ensure pass to refresh them.
                self.refresh_adopted_verdict(id);
                self.changed.insert(id);
            }
        }
    }

    pub(super) fn release_all(&mut self, id: Sid) {
        let held = self.entry(id).map(|s| s.addrs.clone()).unwrap_or_default();
        for a in held {
            self.unclaim(id, a);
        }
    }

    pub(super) fn move_addr(&mut self, a: Addr, from: &str, to: &Arc<str>) {
        if let Some(e) = self.addrs.get_mut(&a) {
            e.pool = Arc::clone(to);
            if let Some(n) = self.pool_used.get_mut(from) {
                *n = n.saturating_sub(1);
            }
            *self.pool_used.entry(to.to_string()).or_insert(0) += 1;
            for &h in e.holders.as_slice() {
                self.changed.insert(h);
            }
        }
    }
}
