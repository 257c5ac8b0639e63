//! Pools and namespaces in the allocator: definitions, conflicts between overlapping pools,
//! revalidation of held addresses when pools or namespace labels change, pool status.

use super::*;

impl Allocator {
    // ----- pools -------------------------------------------------------------------------

    /// Adds or replaces a pool. Recomputes conflicts, releases or moves addresses that no longer
    /// fit, retries waiting Services. Returns [`Allocator::take_changed`].
    pub fn set_pool(&mut self, def: PoolDef) -> Vec<ServiceKey> {
        let name = def.name.clone();
        // Keep the shared name of a replaced pool (verdicts compare it by value anyway).
        let shared = match self.pools.get(&name) {
            Some(p) => Arc::clone(&p.name),
            None => Arc::from(name.as_str()),
        };
        self.pools.insert(
            name,
            PoolEntry {
                name: shared,
                def,
                conflict: None,
            },
        );
        self.pools_changed()
    }

    /// Removes a pool (its addresses are released unless another pool contains and selects
    /// them). Returns [`Allocator::take_changed`].
    pub fn remove_pool(&mut self, name: &str) -> Vec<ServiceKey> {
        if self.pools.remove(name).is_none() {
            return self.take_changed();
        }
        self.pools_changed()
    }

    /// Sets the labels of namespace `name` (for `spec.namespaceSelector`; unknown namespaces
    /// carry only `kubernetes.io/metadata.name`). Services of that namespace are re-evaluated:
    /// waiting ones may now get an address, held addresses are never taken away (they are
    /// reported when no pool covers them any more). Returns [`Allocator::take_changed`].
    pub fn set_namespace(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Vec<ServiceKey> {
        if self.ns_labels.get(name) == Some(&labels) {
            return self.take_changed();
        }
        self.ns_labels.insert(name.to_string(), labels);
        self.namespace_changed(name)
    }

    /// Forgets a namespace's labels (it was deleted). Returns [`Allocator::take_changed`].
    pub fn remove_namespace(&mut self, name: &str) -> Vec<ServiceKey> {
        if self.ns_labels.remove(name).is_none() {
            return self.take_changed();
        }
        self.namespace_changed(name)
    }

    pub(super) fn namespace_changed(&mut self, name: &str) -> Vec<ServiceKey> {
        self.reensure(|s| &*s.req.key.namespace == name)
    }

    /// Ensures again every ensured Service that `which` picks (in the allocator's Service
    /// order), settles, and returns [`Allocator::take_changed`].
    fn reensure(&mut self, which: impl Fn(&SvcEntry) -> bool) -> Vec<ServiceKey> {
        let mut ids: Vec<Sid> = self
            .live()
            .filter(|(_, s)| s.ensured && which(s))
            .map(|(id, _)| id)
            .collect();
        self.sort_by_key(&mut ids);
        for id in ids {
            self.ensure_id(id);
        }
        self.settle();
        self.take_changed()
    }

    /// Names of the known pools, sorted.
    pub fn pools(&self) -> Vec<String> {
        self.pools.keys().cloned().collect()
    }

    /// Counts and conditions of a pool.
    pub fn pool_status(&self, name: &str) -> Option<PoolState> {
        let p = self.pools.get(name)?;
        let total = p.def.total();
        // Addresses kept although this pool no longer covers them: counted apart, and not as
        // used when they are outside its blocks.
        let mut not_covered: BTreeSet<Addr> = BTreeSet::new();
        let mut outside: BTreeSet<Addr> = BTreeSet::new();
        for &id in &self.flagged {
            for (a, _) in self.entry(id).map_or(&[][..], |s| &s.uncovered[..]) {
                if self.addrs.get(a).is_some_and(|e| *e.pool == *name) {
                    not_covered.insert(*a);
                    if p.def.usable_block(*a).is_none() {
                        outside.insert(*a);
                    }
                }
            }
        }
        let used = self
            .pool_used
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(outside.len() as u128);
        Some(PoolState {
            name: name.to_string(),
            total,
            used,
            available: total.saturating_sub(used),
            disabled: p.def.disabled,
            conflict_with: p.conflict.as_ref().map(|c| c.0.clone()),
            conflict_message: p.conflict.as_ref().map(|c| c.1.clone()),
            block_errors: p.def.block_errors.clone(),
            selector_error: p.def.selector.as_ref().err().map(|e| e.to_string()),
            namespace_selector_error: p
                .def
                .namespace_selector
                .as_ref()
                .err()
                .map(|e| format!("spec.namespaceSelector.{e}")),
            not_covered: not_covered.len() as u128,
            generation: p.def.generation,
        })
    }

    /// States of every pool, by name.
    pub fn pool_states(&self) -> Vec<PoolState> {
        self.pools
            .keys()
            .filter_map(|n| self.pool_status(n))
            .collect()
    }

    pub(super) fn pools_changed(&mut self) -> Vec<ServiceKey> {
        let mut order: Vec<&PoolEntry> = self.pools.values().collect();
        order.sort_by(|a, b| a.def.order_key().cmp(&b.def.order_key()));
        self.order = order.iter().map(|p| Arc::clone(&p.name)).collect();
        self.recompute_conflicts();
        self.revalidate_addresses();
        // Every Service's outcome may change (conflicts, selectors): refresh held ones too.
        self.reensure(|_| true)
    }

    pub(super) fn recompute_conflicts(&mut self) {
        let mut order: Vec<&PoolEntry> = self.pools.values().collect();
        order.sort_by(|a, b| a.def.age_key().cmp(&b.def.age_key()));
        let mut result: Vec<(String, Option<(String, String)>)> = Vec::new();
        for (i, p) in order.iter().enumerate() {
            let mut conflict = None;
            'older: for q in &order[..i] {
                for b in &p.def.blocks {
                    for c in &q.def.blocks {
                        if b.range.overlaps(&c.range) {
                            conflict = Some((
                                q.def.name.clone(),
                                format!(
                                    "spec.blocks[{}] ({}) overlaps spec.blocks[{}] ({}) of the older pool {}",
                                    b.index,
                                    b.range.display(),
                                    c.index,
                                    c.range.display(),
                                    q.def.name
                                ),
                            ));
                            break 'older;
                        }
                    }
                }
            }
            result.push((p.def.name.clone(), conflict));
        }
        for (name, c) in result {
            if let Some(p) = self.pools.get_mut(&name) {
                p.conflict = c;
            }
        }
    }

    /// After a pool change: every held address is attributed to its canonical pool (the first
    /// pool that contains it and selects every holder); without one it stays with its pool (or
    /// moves to a pool that at least contains it, when its own no longer does). Nothing is
    /// released: the holders' next `ensure` reports addresses no pool covers any more.
    pub(super) fn revalidate_addresses(&mut self) {
        let mut addrs: Vec<Addr> = self.addrs.keys().copied().collect();
        addrs.sort_unstable();
        for a in addrs {
            let Some(entry) = self.addrs.get(&a) else {
                continue;
            };
            let mut holders: Vec<Sid> = entry.holders.as_slice().to_vec();
            self.sort_by_key(&mut holders);
            let cur = Arc::clone(&entry.pool);
            let reqs: Vec<Arc<StoredReq>> = holders
                .iter()
                .filter_map(|&h| self.entry(h).map(|s| Arc::clone(&s.req)))
                .collect();
            let reqs: Vec<&StoredReq> = reqs.iter().map(|r| &**r).collect();
            // The canonical pool of an address is the first candidate (non-conflicting first,
            // then oldest), so that the attribution after a restart (adoption) is the same.
            // Pool edits never take an address away: without a pool that covers every holder
            // the address stays where it is (the holders' `ensure` reports it as not covered),
            // unless the only containing pool is another one (a pool was deleted, another
            // contains it): then it is attributed to that one.
            let target = self.first_candidate_pool(a, &reqs).or_else(|| {
                if self
                    .pools
                    .get(&*cur)
                    .is_some_and(|p| p.def.usable_block(a).is_some())
                {
                    return None;
                }
                self.containing_pool(a)
            });
            if let Some(t) = target {
                if t != cur {
                    self.move_addr(a, &cur, &t);
                }
            }
        }
    }

    /// The pool `a` belongs to by blocks alone ([`pool::containing_pool`]).
    pub(super) fn containing_pool(&self, a: Addr) -> Option<Arc<str>> {
        pool::containing_pool(self.pools.values().map(|p| &p.def), a)
            .and_then(|d| self.pools.get(&d.name))
            .map(|p| Arc::clone(&p.name))
    }

    /// The first of the pools whose usable blocks contain `a` and that select all of `reqs`:
    /// non-conflicting first, then by age.
    pub(super) fn first_candidate_pool(&self, a: Addr, reqs: &[&StoredReq]) -> Option<Arc<str>> {
        self.pools
            .values()
            .filter(|p| {
                p.def.usable_block(a).is_some()
                    && reqs.iter().all(|r| p.selects(r, &self.ns_labels))
            })
            .min_by(|x, y| {
                (x.conflict.is_some(), x.def.age_key())
                    .cmp(&(y.conflict.is_some(), y.def.age_key()))
            })
            .map(|p| Arc::clone(&p.name))
    }
}
