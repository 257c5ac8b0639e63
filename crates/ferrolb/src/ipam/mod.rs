//! The pure allocator: pools, ranges, selectors, sharing. No I/O, no tokio.
//!
//! [`Allocator`] is a synchronous state machine fed with pools ([`PoolDef`]) and Services
//! ([`ServiceReq`]); the controller and `ferrolb plan` both drive it, so the rules live here only.
//!
//! # Driving it
//! ```
//! use ferrolb::ipam::{Allocator, PoolDef, ServiceReq, Reason};
//! use ferrolb::api::IpBlock;
//! let mut a = Allocator::new();
//! a.set_pool(PoolDef::new("app", &[IpBlock { cidr: Some("198.51.100.0/30".into()), ..Default::default() }]));
//! // After a restart: adopt every Service's status.loadBalancer.ingress first ...
//! // a.adopt(&req, &ips);
//! // ... then ensure every Service (adopted ones keep their addresses).
//! let out = a.ensure(&ServiceReq::new("default", "web"));
//! assert_eq!(out.reason, Reason::Satisfied);
//! assert_eq!(out.addresses[0].ip.to_string(), "198.51.100.1");
//! // Whose outcome changed (write their status):
//! let changed = a.take_changed();
//! # assert_eq!(changed.len(), 1);
//! ```
//!
//! # Rules and decisions
//! - **Addresses**: IPv4 and IPv6 as `u128` with a family tag. Used addresses are kept as merged
//!   intervals ([`range::UsedSet`]); a fresh allocation takes the **lowest free address** of the
//!   first eligible pool in the **order of choice** ([`PoolDef::order_key`]: pools with a
//!   `priority` first, lower first, then the others; ties by name), block order within the pool —
//!   a logarithmic search, never a scan. Eligible = enabled, not conflicting, selects the Service
//!   (`serviceSelector`), allows its namespace (`namespaces` / `namespaceSelector`, over the
//!   labels given with [`Allocator::set_namespace`]), and named by the Service (`ferrolb.io/pools`)
//!   or, when it names none, `autoAssign`. Same pools, Services and order of operations → same
//!   addresses.
//! - **Blocks**: `{cidr}` or `{start, stop}` (stop omitted = one address). The first and last
//!   address of a CIDR block are reserved unless `allowFirstLastIPs: Yes`; /31, /32, /127, /128
//!   and start/stop ranges never reserve. Invalid blocks are reported per field and the valid
//!   rest of the pool works (see [`pool`]).
//! - **Selectors**: `spec.serviceSelector` with the virtual labels
//!   `io.kubernetes.service.{namespace,name}`; unset selects everything; an invalid selector
//!   selects nothing (pool condition `InvalidSelector`).
//! - **Overlapping pools**: the newer pool (creationTimestamp, then name; unset timestamps are
//!   oldest) is `Conflict` (reason `CIDROverlap`, the message names the older pool) if it overlaps
//!   **any** older pool. Like Cilium, a conflicting pool allocates nothing new but **existing
//!   allocations in it are kept** (as for a disabled pool) — removing addresses that are in use
//!   because somebody created a second pool would be the more surprising outage. Because used
//!   addresses are tracked globally, the older pool never hands out an address that the
//!   conflicting pool's Services still hold.
//! - **Disabled pools**: no new allocations, existing ones kept.
//! - **Requested addresses** (`spec.loadBalancerIP`, `ferrolb.io/ips` or the Cilium aliases): all
//!   of them or nothing; the pool selector still applies (`PoolSelectorMismatch`); an address in
//!   no pool, only in a disabled/conflicting pool, or reserved is `NoPool`; held by an
//!   incompatible Service is `AlreadyAllocated`. Never silently replaced by another address.
//! - **Families**: SingleStack → `ipFamilies[0]`; PreferDualStack → each listed family some
//!   eligible pool can serve (satisfied with at least one); RequireDualStack → IPv4 and IPv6,
//!   else nothing. An unsatisfied Service holds **no** address.
//! - **Sharing**: see [`ServiceReq::can_share_with`]. A Service with a sharing key first joins
//!   the lowest existing compatible address (in an enabled, non-conflicting pool that selects it),
//!   else takes a fresh one.
//! - **Restart recovery**: [`Allocator::adopt`] re-claims a Service's existing addresses (before
//!   any [`Allocator::ensure`]). An address is adopted unless it is held by a Service it may not
//!   share with (then it is dropped, reported, and the following `ensure` allocates anew).
//! - **Pool edits never move an address** (unlike Cilium, #40358): when a pool shrinks, changes
//!   selectors or namespaces, is disabled or deleted, or a namespace is relabelled, held
//!   addresses are kept; those no pool covers any more (contains and selects the Service) are
//!   listed in [`Outcome::not_covered`] with the pool and field, counted in the pool's
//!   `not_covered`, and never handed to another Service. They are given up only when the
//!   Service asks: `ferrolb.io/reallocate: "true"` or a change of its own request (requested
//!   addresses, families, sharing; naming other pools is reported like a pool edit).
//! - **Retries**: unsatisfied or incomplete Services are retried (in key order) whenever pools
//!   change or an address is freed; [`Allocator::take_changed`] lists the Services whose outcome
//!   changed since the last call.
//! - **Counts**: total/used/available are `u128`; the CRD status saturates them to `i64`.
//!
//! # Cost
//! `cargo bench --bench ipam` (10k Services over 2001:db8:100::/112, 2001:db8:200::/64 and the
//! three IPv4 documentation /24s; the `ipam-cpu` group counts on-CPU time, the machine is shared).
//! Measured 2026-11-22 on the shared 2-core CI machine (load average 5-9 from other builds):
//! `ipam-cpu/ensure_10k_ipv6` ≈ 8.6 ms per 10,000 Services (≈ 1.16M allocations per CPU-second,
//! confidence interval 1.10-1.24M/s; before this pass ≈ 10-13 ms, 0.76-0.98M/s; before interning
//! ≈ 34 ms); the same run with every returned outcome read (message formatted):
//! ≈ 10.4 ms (≈ 0.96M/s). Wall clock: `ensure_10k_ipv6` ≈ 8.3 ms (1.2M/s),
//! `ensure_10k_prefer_dual_stack` ≈ 13.7 ms, `adopt_then_ensure_10k` ≈ 21.8 ms for 10k adoptions
//! plus 10k ensures, `release_and_ensure_in_10k` ≈ 3.0 µs per release + re-allocation.
//!
//! How: Services are interned to integer ids in a chunked slab (growing moves no entry; holders,
//! changed and waiting sets hold ids; the index holds well-mixed key hashes with same-hash chains,
//! so no key is cloned on the hot path). The stored request is compact (`service::StoredReq`:
//! the virtual `io.kubernetes.service.{namespace,name}` labels are answered from the key, families
//! and held addresses live inline), so a new Service costs three heap blocks (the shared request
//! and its two key strings) plus its share of the tables. [`Allocator::ensure`] returns an
//! [`Ensured`] that builds the public [`Outcome`] (address strings, message) only when read; the
//! controller never reads it (it writes statuses from [`Allocator::outcome`]). The address table
//! is an FxHash map (iterations sort first); `take_changed` sorts the changed ids by key once per
//! call.

pub mod pool;
pub mod range;
pub mod selector;
pub mod service;

mod allocate;
mod outcome;
mod rebuild;
mod reconfigure;
mod table;

pub use outcome::*;
pub use rebuild::RebuildService;
use table::*;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use smallvec::SmallVec;

pub use pool::{BlockError, PoolDef};
pub use range::{Addr, Family};
pub use service::{is_ours, ClassOptions, FamilyPolicy, ServiceKey, ServiceReq, StoredReq};

use crate::api::LoadBalancerIPPoolStatus;

/// Pool condition types.
pub const COND_CONFLICT: &str = "Conflict";
/// Pool has no available address left.
pub const COND_EXHAUSTED: &str = "Exhausted";
/// Some `spec.blocks[]` are invalid (the rest of the pool works).
pub const COND_INVALID_BLOCKS: &str = "InvalidBlocks";
/// `spec.serviceSelector` is invalid (the pool selects nothing).
pub const COND_INVALID_SELECTOR: &str = "InvalidSelector";

/// The allocator. See the module docs for the rules.
#[derive(Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, PoolEntry>,
    /// Pool names in the order of choice ([`PoolDef::order_key`]).
    order: Vec<Arc<str>>,
    /// Labels of the known namespaces (for `spec.namespaceSelector`).
    ns_labels: NsLabels,
    /// Services holding addresses that no pool covers any more.
    flagged: FxSet<Sid>,
    pool_used: BTreeMap<String, u128>,
    /// FxHash of a Service key → the newest id with that hash; older ids with the same hash are
    /// chained through `SvcEntry::same_hash` (so the index stores no copy of the key).
    /// Every iteration over Services sorts by key (determinism).
    index: FxMap<u64, Sid>,
    /// Number of live Services.
    live_count: usize,
    /// Service entries by id (`None` = free slot, listed in `free`).
    slots: Slab,
    free: Vec<Sid>,
    /// Held addresses (iterations over it sort first).
    addrs: AddrTable,
    used: range::UsedSet,
    /// sharing key → addresses with at least one holder using that key.
    by_sharing_key: BTreeMap<String, BTreeSet<Addr>>,
    /// Services (ids) whose outcome changed since the last `take_changed`.
    changed: FxSet<Sid>,
    /// Released Services since the last `take_changed`.
    changed_gone: FxSet<ServiceKey>,
    /// An address was freed since the last settle: retry every waiting Service.
    freed: bool,
    /// Sharing keys that gained a shareable address (or whose holders changed their request)
    /// since the last settle: retry the waiting Services with that key.
    sharing_dirty: BTreeSet<String>,
    /// Ensured Services that do not hold everything they ask for (retried by `settle`).
    waiting: FxSet<Sid>,
}

type Fail = (Reason, String);

const NOT_YET: &str = "not yet allocated";

impl Allocator {
    /// Empty allocator.
    pub fn new() -> Self {
        Self::default()
    }

    // ----- service ids ---------------------------------------------------------------------

    fn entry(&self, id: Sid) -> Option<&SvcEntry> {
        self.slots.get(id)
    }

    /// Sets the verdict of a Service that was adopted but never ensured from what it holds:
    /// satisfied by its addresses, or not yet allocated.
    fn refresh_adopted_verdict(&mut self, id: Sid) {
        let Some(s) = self.entry(id) else {
            return;
        };
        let v = if s.addrs.is_empty() {
            Verdict::Failed(Reason::NoPool, NOT_YET.into())
        } else {
            satisfied(&s.addrs, &self.addrs)
        };
        if let Some(s) = self.entry_mut(id) {
            s.set_verdict(v);
        }
    }

    fn entry_mut(&mut self, id: Sid) -> Option<&mut SvcEntry> {
        self.slots.get_mut(id)
    }

    fn key_of(&self, id: Sid) -> Option<&ServiceKey> {
        self.entry(id).map(|s| &s.req.key)
    }

    /// Live entries with their ids (slab order, not key order).
    fn live(&self) -> impl Iterator<Item = (Sid, &SvcEntry)> {
        self.slots.iter()
    }

    /// Sorts ids by Service key (the order every observable iteration uses).
    fn sort_by_key(&self, ids: &mut [Sid]) {
        ids.sort_by(|a, b| self.key_of(*a).cmp(&self.key_of(*b)));
    }

    /// The id of a registered Service.
    fn lookup(&self, key: &ServiceKey) -> Option<Sid> {
        let mut id = *self.index.get(&key_hash(key))?;
        loop {
            let e = self.entry(id)?;
            if e.req.key == *key {
                return Some(id);
            }
            id = e.same_hash?;
        }
    }

    /// Removes a registered Service from the index (not from the slab).
    fn unindex(&mut self, key: &ServiceKey, id: Sid) {
        let h = key_hash(key);
        let next = self.entry(id).and_then(|e| e.same_hash);
        let Some(&head) = self.index.get(&h) else {
            return;
        };
        if head == id {
            match next {
                Some(n) => {
                    self.index.insert(h, n);
                }
                None => {
                    self.index.remove(&h);
                }
            }
            return;
        }
        let mut cur = head;
        while let Some(e) = self.entry(cur) {
            match e.same_hash {
                Some(n) if n == id => {
                    if let Some(e) = self.entry_mut(cur) {
                        e.same_hash = next;
                    }
                    return;
                }
                Some(n) => cur = n,
                None => return,
            }
        }
    }

    /// Registers a new Service and returns its id.
    fn intern(&mut self, req: Arc<StoredReq>, verdict: Verdict, ensured: bool) -> Sid {
        let h = key_hash(&req.key);
        let e = SvcEntry {
            req,
            addrs: SmallVec::new(),
            verdict,
            ensured,
            uncovered: Vec::new(),
            same_hash: self.index.get(&h).copied(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.slots.slot_mut(id) {
                    *slot = Some(e);
                }
                id
            }
            None => self.slots.push(e),
        };
        self.index.insert(h, id);
        self.live_count += 1;
        id
    }

    // ----- services ----------------------------------------------------------------------

    /// Restart recovery: re-claims `ips` (from `status.loadBalancer.ingress`) for `req` without
    /// allocating anything new. Call for every Service before the first [`Allocator::ensure`].
    pub fn adopt(&mut self, req: &ServiceReq, ips: &[IpAddr]) -> AdoptReport {
        self.adopt_shared(&Arc::new(StoredReq::from_req(req)), ips)
    }

    /// [`Allocator::adopt`] for a request already in its compact form, kept by reference (the
    /// controller's cache and the allocator share one copy).
    pub fn adopt_shared(&mut self, stored: &Arc<StoredReq>, ips: &[IpAddr]) -> AdoptReport {
        let mut report = AdoptReport::default();
        let id = match self.lookup(&stored.key) {
            Some(id) => {
                if let Some(s) = self.entry_mut(id) {
                    s.req = Arc::clone(stored);
                }
                id
            }
            None => self.intern(
                Arc::clone(stored),
                Verdict::Failed(Reason::NoPool, NOT_YET.into()),
                false,
            ),
        };
        let req = &**stored;
        for ip in ips {
            let a = Addr::from_ip(*ip);
            if self.entry(id).is_some_and(|s| s.addrs.contains(&a)) {
                continue;
            }
            let r = self.adopt_one(req, a);
            match r {
                Ok(pool) => {
                    if let Some(cur) = self.addrs.get(&a).map(|e| Arc::clone(&e.pool)) {
                        if cur != pool {
                            self.move_addr(a, &cur, &pool);
                        }
                    }
                    self.claim(id, a, &pool);
                    report.kept.push(Assigned {
                        ip: *ip,
                        pool: pool.to_string(),
                    });
                }
                Err(why) => report.dropped.push((*ip, why)),
            }
        }
        if let Some(s) = self.entry(id) {
            if s.ensured {
                // Already managed: the next `ensure` recomputes (and reports) its outcome.
                if !report.kept.is_empty() {
                    self.changed.insert(id);
                }
            } else {
                self.refresh_adopted_verdict(id);
            }
        }
        report
    }

    /// The pool an adopted address is attributed to; `Err` only when it is held by a Service
    /// it may not share with.
    fn adopt_one(&self, req: &StoredReq, a: Addr) -> Result<Arc<str>, String> {
        if let Some(e) = self.addrs.get(&a) {
            let mut holders: Vec<Sid> = e.holders.as_slice().to_vec();
            self.sort_by_key(&mut holders);
            for &h in &holders {
                if let Some(other) = self.entry(h) {
                    req.can_share_with(&other.req)
                        .map_err(|w| format!("{a} is already held: {w}"))?;
                }
            }
            // The address moves to the canonical pool of the enlarged holder set (the same rule
            // as after pool changes), so adoption order does not decide the attribution.
            let mut reqs: Vec<&StoredReq> = holders
                .iter()
                .filter_map(|&h| self.entry(h).map(|s| &*s.req))
                .collect();
            reqs.push(req);
            return Ok(self
                .first_candidate_pool(a, &reqs)
                .unwrap_or_else(|| Arc::clone(&e.pool)));
        }
        // An address no pool covers is kept too (an address never changes under a Service
        // unless the user asks); `ensure` reports it. It is attributed to a pool containing it
        // when there is one.
        Ok(self
            .first_candidate_pool(a, &[req])
            .or_else(|| self.containing_pool(a))
            .unwrap_or_else(|| Arc::from("")))
    }

    /// Registers or updates a Service and allocates what it asks for. Addresses it already holds
    /// are kept while they still fit the request. Returns its outcome; other Services affected
    /// (e.g. waiting ones that got a freed address) show up in [`Allocator::take_changed`].
    pub fn ensure(&mut self, req: &ServiceReq) -> Ensured {
        self.ensure_with(
            &req.key,
            req.sharing.as_ref(),
            |s| s.same_as(req),
            || Arc::new(StoredReq::from_req(req)),
        )
    }

    /// [`Allocator::ensure`] for a request already in its compact form, kept by reference (the
    /// controller's cache and the allocator share one copy instead of each keeping its own).
    pub fn ensure_shared(&mut self, req: &Arc<StoredReq>) -> Ensured {
        self.ensure_with(
            &req.key,
            req.sharing.as_ref(),
            |s| std::ptr::eq(s, &**req) || *s == **req,
            || Arc::clone(req),
        )
    }

    /// The one body of [`Allocator::ensure`] and [`Allocator::ensure_shared`]: `same` tells
    /// whether the stored request equals the new one, `make` gives the new one to store.
    fn ensure_with(
        &mut self,
        key: &ServiceKey,
        sharing: Option<&service::Sharing>,
        same: impl Fn(&StoredReq) -> bool,
        make: impl FnOnce() -> Arc<StoredReq>,
    ) -> Ensured {
        let id = match self.lookup(key) {
            Some(id) => {
                let Some(s) = self.slots.get_mut(id) else {
                    return Ensured::new(Verdict::Failed(Reason::NoPool, NOT_YET.into()));
                };
                let changed_req = !same(&s.req);
                if s.ensured && !changed_req && complete(s) {
                    return Ensured::with(s.verdict.clone(), s.uncovered.clone());
                }
                // A changed request of a sharing Service may make it compatible with waiters.
                if changed_req {
                    for sh in [s.req.sharing.as_ref(), sharing].into_iter().flatten() {
                        self.sharing_dirty.insert(sh.key.clone());
                    }
                    s.req = make();
                }
                s.ensured = true;
                if changed_req {
                    for a in s.addrs.clone() {
                        self.reindex(a);
                    }
                }
                id
            }
            // Never equal to a computed verdict (those carry a message), so the first
            // computation always reports the new Service as changed.
            None => self.intern(make(), Verdict::Failed(Reason::NoPool, "".into()), true),
        };
        self.ensure_id(id);
        self.settle();
        match self.entry(id) {
            Some(s) => Ensured::with(s.verdict.clone(), s.uncovered.clone()),
            None => Ensured::new(Verdict::Failed(Reason::NoPool, NOT_YET.into())),
        }
    }

    /// Forgets a Service (deleted, or no longer ours) and frees its addresses.
    pub fn release(&mut self, key: &ServiceKey) {
        let Some(id) = self.lookup(key) else {
            return;
        };
        let held = self.entry(id).map(|s| s.addrs.clone()).unwrap_or_default();
        for a in held {
            self.unclaim(id, a);
        }
        self.unindex(key, id);
        self.live_count = self.live_count.saturating_sub(1);
        if let Some(slot) = self.slots.slot_mut(id) {
            *slot = None;
            self.free.push(id);
        }
        self.waiting.remove(&id);
        self.flagged.remove(&id);
        self.changed.remove(&id);
        self.changed_gone.insert(key.clone());
        self.settle();
    }

    /// The current outcome of a Service, built when read (like [`Allocator::ensure`]'s): the
    /// allocator keeps no formatted copy per Service, and [`Ensured::is_satisfied`] answers
    /// without building one.
    pub fn outcome(&self, key: &ServiceKey) -> Option<Ensured> {
        let s = self.entry(self.lookup(key)?)?;
        Some(Ensured::with(s.verdict.clone(), s.uncovered.clone()))
    }

    /// Whether a known Service did not get what it asked for (`false` for an unknown one). Reads
    /// the verdict: builds no [`Ensured`].
    pub fn is_unsatisfied(&self, key: &ServiceKey) -> bool {
        self.lookup(key)
            .and_then(|id| self.entry(id))
            .is_some_and(|s| !s.verdict.is_satisfied())
    }

    /// Known Services, sorted.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        let mut keys: Vec<&ServiceKey> = self.live().map(|(_, s)| &s.req.key).collect();
        keys.sort();
        keys.into_iter()
    }

    /// Services holding `ip`.
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .addrs
            .get(&Addr::from_ip(ip))
            .map(|e| {
                e.holders
                    .as_slice()
                    .iter()
                    .filter_map(|&h| self.key_of(h).cloned())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Services whose outcome changed (or that were released) since the last call, sorted.
    pub fn take_changed(&mut self) -> Vec<ServiceKey> {
        let ids = std::mem::take(&mut self.changed);
        let mut out: Vec<ServiceKey> = std::mem::take(&mut self.changed_gone).into_iter().collect();
        out.extend(ids.into_iter().filter_map(|id| self.key_of(id).cloned()));
        out.sort();
        out.dedup();
        out
    }

    /// Retries waiting/incomplete Services (in key order) while addresses were freed or new
    /// sharing opportunities appeared, until nothing changes.
    fn settle(&mut self) {
        // Every productive round completes at least one Service, so this terminates; the bound
        // is a guard only.
        let mut rounds = self.live_count + 2;
        while (self.freed || !self.sharing_dirty.is_empty()) && rounds > 0 {
            rounds -= 1;
            let all = std::mem::take(&mut self.freed);
            let keys = std::mem::take(&mut self.sharing_dirty);
            let mut waiting: Vec<Sid> = self
                .waiting
                .iter()
                .copied()
                .filter(|&id| {
                    self.entry(id).is_some_and(|s| {
                        all || s
                            .req
                            .sharing
                            .as_ref()
                            .is_some_and(|sh| keys.contains(&sh.key))
                    })
                })
                .collect();
            self.sort_by_key(&mut waiting);
            for id in waiting {
                self.ensure_id(id);
            }
        }
        self.freed = false;
        self.sharing_dirty.clear();
    }
}

/// Index hash of a Service key.
fn key_hash(key: &ServiceKey) -> u64 {
    use std::hash::BuildHasher;
    // FxHash leaves the low bits of the result poorly mixed (they depend only on the low bits of
    // the last words hashed, e.g. the constant "svc-" of "svc-1234"), and the index map buckets
    // by the low bits: finish with the murmur3 mixer so that every bit depends on every input bit.
    let mut h = FxBuild::default().hash_one(key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    // The unit tests fold the hash to 3 bits so that every test (the property test included)
    // exercises the same-hash chains, which real 64-bit hashes almost never need.
    if cfg!(test) {
        h & 7
    } else {
        h
    }
}

fn fam_index(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Families to allocate for a request without requested addresses.
fn wanted_families(req: &StoredReq) -> Cow<'_, [Family]> {
    match req.policy {
        FamilyPolicy::SingleStack => Cow::Borrowed(&req.families[..req.families.len().min(1)]),
        FamilyPolicy::PreferDualStack => Cow::Borrowed(&req.families[..]),
        FamilyPolicy::RequireDualStack => {
            if [Family::V4, Family::V6]
                .iter()
                .all(|f| req.families.contains(f))
            {
                return Cow::Borrowed(&req.families[..]);
            }
            let mut f = req.families.to_vec();
            for x in [Family::V4, Family::V6] {
                if !f.contains(&x) {
                    f.push(x);
                }
            }
            Cow::Owned(f)
        }
    }
}

/// Whether a Service holds everything it asks for (used to decide retries).
fn complete(s: &SvcEntry) -> bool {
    if s.req.invalid.is_some() {
        return true;
    }
    if !s.req.requested.is_empty() {
        return s
            .req
            .requested
            .iter()
            .all(|ip| s.addrs.contains(&Addr::from_ip(*ip)));
    }
    let has = |f: Family| s.addrs.iter().any(|a| a.family == f);
    match s.req.policy {
        FamilyPolicy::SingleStack => s.req.families.first().is_none_or(|f| has(*f)),
        FamilyPolicy::PreferDualStack => s.req.families.iter().all(|f| has(*f)),
        FamilyPolicy::RequireDualStack => has(Family::V4) && has(Family::V6),
    }
}

fn satisfied(addrs: &[Addr], table: &AddrTable) -> Verdict {
    Verdict::Satisfied(
        addrs
            .iter()
            .map(|a| {
                (
                    *a,
                    table
                        .get(a)
                        .map_or_else(|| Arc::from(""), |e| Arc::clone(&e.pool)),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
