//! How one Service gets its addresses: requested addresses, families, the pool order, sharing
//! compatibility and coverage (the rules in the module docs, applied).

use super::*;

impl Allocator {
    /// Recomputes one registered Service's allocation and records a changed outcome.
    pub(super) fn ensure_id(&mut self, id: Sid) {
        let Some(s) = self.entry(id) else {
            return;
        };
        let req = Arc::clone(&s.req);
        let res = self.compute(id, &req);
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        if s.ensured && !complete(s) {
            self.waiting.insert(id);
        } else {
            self.waiting.remove(&id);
        }
        let same = match (&res, &s.verdict) {
            (Ok(()), Verdict::Satisfied(list)) => {
                list.len() == s.addrs.len()
                    && list.iter().zip(&s.addrs).all(|((a, p), b)| {
                        a == b
                            && self
                                .addrs
                                .get(b)
                                .map_or(p.is_empty(), |e| Arc::ptr_eq(&e.pool, p) || e.pool == *p)
                    })
            }
            (Err((r, m)), Verdict::Failed(r2, m2)) => r == r2 && *m == *m2,
            _ => false,
        };
        if !same {
            let v = match res {
                Ok(()) => satisfied(&s.addrs, &self.addrs),
                Err((r, m)) => Verdict::Failed(r, Cow::Owned(m)),
            };
            s.set_verdict(v);
            self.changed.insert(id);
        }
    }

    /// Allocates for `req` (registered as `id`); `Ok` = satisfied with what it now holds.
    pub(super) fn compute(&mut self, id: Sid, req: &StoredReq) -> Result<(), Fail> {
        if let Some(m) = &req.invalid {
            self.release_all(id);
            self.set_uncovered(id, Vec::new());
            return Err((Reason::InvalidRequest, m.clone()));
        }
        // Drop held addresses that no longer fit.
        let wanted = wanted_families(req);
        let held = match self.entry(id) {
            Some(s) if !s.addrs.is_empty() => s.addrs.clone(),
            _ => SmallVec::new(),
        };
        let mut seen_families: [bool; 2] = [false; 2];
        let mut uncovered: Vec<(Addr, String)> = Vec::new();
        for a in held {
            let fi = fam_index(a.family);
            let mut keep = self.wanted_still(id, req, a).is_ok()
                && if req.requested.is_empty() {
                    wanted.contains(&a.family) && !seen_families[fi]
                } else {
                    true
                };
            if keep {
                // Pool edits never move an address: it is kept (and reported) unless the
                // Service asks to be re-addressed.
                if let Err(why) = self.coverage(req, a) {
                    if req.reallocate {
                        keep = false;
                    } else {
                        uncovered.push((a, why));
                    }
                }
            }
            if keep {
                seen_families[fi] = true;
            } else {
                self.unclaim(id, a);
            }
        }
        self.set_uncovered(id, uncovered);
        let res = if req.requested.is_empty() {
            self.allocate_families(id, req, &wanted)
        } else {
            self.allocate_requested(id, req)
        };
        if res.is_err() {
            self.release_all(id);
            self.set_uncovered(id, Vec::new());
        }
        res
    }

    /// Records which held addresses no pool covers any more (marks the Service changed when
    /// that differs from before).
    pub(super) fn set_uncovered(&mut self, id: Sid, list: Vec<(Addr, String)>) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        if s.uncovered == list {
            return;
        }
        s.uncovered = list;
        if s.uncovered.is_empty() {
            self.flagged.remove(&id);
        } else {
            self.flagged.insert(id);
        }
        self.changed.insert(id);
    }

    pub(super) fn allocate_requested(&mut self, id: Sid, req: &StoredReq) -> Result<(), Fail> {
        let mut plan: Vec<(Addr, Arc<str>)> = Vec::new();
        for ip in &req.requested {
            let a = Addr::from_ip(*ip);
            if self.entry(id).is_some_and(|s| s.addrs.contains(&a)) {
                continue;
            }
            if req.families_explicit && !req.families.contains(&a.family) {
                return Err((
                    Reason::InvalidRequest,
                    format!(
                        "requested {ip} is {} but spec.ipFamilies lists only {}",
                        a.family,
                        req.families
                            .iter()
                            .map(|f| f.as_k8s())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let Some(e) = self.addrs.get(&a) {
                self.check_compatible(id, req, a, e)?;
                if self
                    .pools
                    .get(&*e.pool)
                    .is_none_or(|p| p.def.usable_block(a).is_none())
                {
                    return Err((
                        Reason::NoPool,
                        format!("requested {ip} is kept by a Service although no pool contains it"),
                    ));
                }
                if !req.pools.is_empty() && !req.pools.iter().any(|p| **p == *e.pool) {
                    return Err((
                        Reason::PoolSelectorMismatch,
                        format!(
                            "requested {ip} is in pool {}, not among the pools the Service names ({})",
                            e.pool,
                            req.pools.join(", ")
                        ),
                    ));
                }
                if !self
                    .pools
                    .get(&*e.pool)
                    .is_some_and(|p| p.selects(req, &self.ns_labels))
                {
                    return Err((
                        Reason::PoolSelectorMismatch,
                        format!("pool {} holding {ip} does not select the Service", e.pool),
                    ));
                }
                plan.push((a, Arc::clone(&e.pool)));
                continue;
            }
            let containing: Vec<&PoolEntry> = self
                .pools
                .values()
                .filter(|p| p.def.usable_block(a).is_some())
                .collect();
            if containing.is_empty() {
                let reserved = self
                    .pools
                    .values()
                    .find(|p| p.def.block_containing(a).is_some());
                return Err((
                    Reason::NoPool,
                    match reserved {
                        Some(p) => format!(
                            "requested {ip} is a reserved first/last address of pool {} (set allowFirstLastIPs: Yes)",
                            p.def.name
                        ),
                        None => format!("no pool contains requested {ip}"),
                    },
                ));
            }
            let selecting: Vec<&&PoolEntry> = containing
                .iter()
                .filter(|p| p.selects(req, &self.ns_labels))
                .filter(|p| req.pools.is_empty() || p.named_by(req))
                .collect();
            if selecting.is_empty() && !req.pools.is_empty() {
                return Err((
                    Reason::PoolSelectorMismatch,
                    format!(
                        "requested {ip} is in pool {}, which is not among the pools the Service names ({}) or does not select it",
                        containing[0].def.name,
                        req.pools.join(", ")
                    ),
                ));
            }
            if selecting.is_empty() {
                return Err((
                    Reason::PoolSelectorMismatch,
                    format!(
                        "pool {} contains requested {ip} but does not select the Service",
                        containing[0].def.name
                    ),
                ));
            }
            match selecting.iter().find(|p| p.allocates()) {
                Some(p) => plan.push((a, Arc::clone(&p.name))),
                None => {
                    let p = selecting[0];
                    let why = if p.def.disabled {
                        "is disabled"
                    } else {
                        "conflicts with an older pool"
                    };
                    return Err((
                        Reason::NoPool,
                        format!("pool {} containing requested {ip} {why}", p.def.name),
                    ));
                }
            }
        }
        for (a, pool) in plan {
            self.claim(id, a, &pool);
        }
        Ok(())
    }

    pub(super) fn allocate_families(
        &mut self,
        id: Sid,
        req: &StoredReq,
        wanted: &[Family],
    ) -> Result<(), Fail> {
        let mut first_error: Option<(Family, Fail)> = None;
        // Families never compete for an address, so pick every family first and claim only
        // when the policy is satisfied (nothing is claimed and rolled back). A family listed
        // twice picks the same address twice: one slot per family.
        let mut picks: [Option<(Addr, Arc<str>)>; 2] = [None, None];
        let mut have = 0usize;
        let mut picked = 0usize;
        for &f in wanted {
            if self
                .entry(id)
                .is_some_and(|s| s.addrs.iter().any(|a| a.family == f))
            {
                have += 1;
                continue;
            }
            match self.pick(id, req, f) {
                Ok(p) => {
                    picked += 1;
                    picks[fam_index(f)] = Some(p);
                }
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some((f, e));
                    }
                }
            }
        }
        let ok = match req.policy {
            FamilyPolicy::PreferDualStack => have + picked > 0,
            _ => first_error.is_none(),
        };
        if ok {
            for (a, pool) in picks.into_iter().flatten() {
                self.claim(id, a, &pool);
            }
            return Ok(());
        }
        let Some((f, (reason, msg))) = first_error else {
            // PreferDualStack with nothing wanted: no family to allocate for.
            return Err((
                Reason::InvalidRequest,
                "no address family to allocate".to_string(),
            ));
        };
        let msg = if req.policy == FamilyPolicy::RequireDualStack {
            format!("RequireDualStack: no {f} address: {msg}")
        } else {
            msg
        };
        Err((reason, msg))
    }

    /// Chooses an address of family `f` for `req`: a compatible shared one, else a fresh one.
    pub(super) fn pick(
        &self,
        id: Sid,
        req: &StoredReq,
        f: Family,
    ) -> Result<(Addr, Arc<str>), Fail> {
        if let Some(sh) = &req.sharing {
            if let Some(set) = self.by_sharing_key.get(&sh.key) {
                for &a in set.iter().filter(|a| a.family == f) {
                    let Some(e) = self.addrs.get(&a) else {
                        continue;
                    };
                    if e.holders.contains(id) {
                        continue;
                    }
                    let Some(p) = self.pools.get(&*e.pool) else {
                        continue;
                    };
                    // Only an address its pool still contains (a kept, uncovered one is
                    // never handed to another Service).
                    if p.allocates()
                        && p.def.usable_block(a).is_some()
                        && p.offers_to(req)
                        && p.selects(req, &self.ns_labels)
                        && self.check_compatible(id, req, a, e).is_ok()
                    {
                        return Ok((a, Arc::clone(&e.pool)));
                    }
                }
            }
        }
        let mut eligible = false;
        for name in &self.order {
            let Some(p) = self.pools.get(&**name) else {
                continue;
            };
            if !p.allocates() || !p.offers_to(req) || !p.selects(req, &self.ns_labels) {
                continue;
            }
            for b in &p.def.blocks {
                let Some(u) = b.usable.filter(|u| u.family == f) else {
                    continue;
                };
                eligible = true;
                if let Some(v) = self.used.first_free(&u) {
                    return Ok((
                        Addr {
                            family: f,
                            value: v,
                        },
                        Arc::clone(&p.name),
                    ));
                }
            }
        }
        if eligible {
            Err((
                Reason::OutOfIPs,
                format!("every pool that selects the Service is out of {f} addresses"),
            ))
        } else if !req.pools.is_empty() {
            let missing: Vec<&str> = req
                .pools
                .iter()
                .filter(|n| !self.pools.contains_key(n.as_str()))
                .map(String::as_str)
                .collect();
            let mut m = format!(
                "no enabled, non-conflicting pool with {f} addresses among the pools the Service names ({}) selects it",
                req.pools.join(", ")
            );
            if !missing.is_empty() {
                m.push_str(&format!("; no pool named {}", missing.join(", ")));
            }
            Err((Reason::NoPool, m))
        } else {
            Err((
                Reason::NoPool,
                format!("no enabled, non-conflicting pool with {f} addresses and autoAssign selects the Service"),
            ))
        }
    }

    /// Whether `req` (registered as `me`) may join the holders of `a`; the error names the
    /// first incompatible holder in key order.
    pub(super) fn check_compatible(
        &self,
        me: Sid,
        req: &StoredReq,
        a: Addr,
        e: &AddrEntry,
    ) -> Result<(), Fail> {
        let mut first: Option<(&ServiceKey, String)> = None;
        for &h in e.holders.as_slice() {
            if h == me {
                continue;
            }
            let Some(other) = self.entry(h) else {
                continue;
            };
            if other.req.key == req.key {
                continue;
            }
            if first.as_ref().is_some_and(|(k, _)| *k < &other.req.key) {
                continue;
            }
            if let Err(why) = req.can_share_with(&other.req) {
                first = Some((&other.req.key, why));
            }
        }
        match first {
            None => Ok(()),
            Some((h, why)) => Err((
                Reason::AlreadyAllocated,
                format!("{a} is allocated to {h}: {why}"),
            )),
        }
    }

    /// Whether held address `a` still fits what the Service itself asks for (requested
    /// addresses, sharing). Pools by name are judged by `coverage` (kept and reported). A Service whose own request changed gives the address
    /// up; pool edits never do (see [`Allocator::coverage`]).
    pub(super) fn wanted_still(&self, id: Sid, req: &StoredReq, a: Addr) -> Result<(), Fail> {
        let e = self
            .addrs
            .get(&a)
            .ok_or((Reason::NoPool, format!("{a} is not held")))?;
        if !req.requested.is_empty() && !req.requested.contains(&a.to_ip()) {
            return Err((Reason::InvalidRequest, format!("{a} is not requested")));
        }
        self.check_compatible(id, req, a, e)
    }

    /// Whether some pool still covers held address `a` for `req`: contains it (usable part) and
    /// selects the Service (service selector and namespace rule); disabled and conflicting pools
    /// count (they keep existing allocations). `Err` names the pool and the field that no longer
    /// covers it.
    pub(super) fn coverage(&self, req: &StoredReq, a: Addr) -> Result<(), String> {
        let covers = |p: &PoolEntry| {
            p.def.usable_block(a).is_some()
                && p.selects(req, &self.ns_labels)
                && (req.pools.is_empty() || p.named_by(req))
        };
        let cur = self.addrs.get(&a).map(|e| Arc::clone(&e.pool));
        let cur_pool = cur.as_ref().and_then(|n| self.pools.get(&**n));
        if cur_pool.is_some_and(covers) || self.pools.values().any(covers) {
            return Ok(());
        }
        let name = cur.as_deref().unwrap_or("");
        Err(match cur_pool {
            None if name.is_empty() => format!("{a} is in no pool"),
            None => format!("{a}: pool {name} was deleted"),
            Some(p) if p.def.usable_block(a).is_none() => {
                format!("{a}: pool {name} no longer contains it (spec.blocks)")
            }
            Some(p) if p.def.selector.is_err() => {
                format!("{a}: pool {name} has an invalid spec.serviceSelector")
            }
            Some(p) if !p.def.selector.as_ref().is_ok_and(|s| s.matches_with(|k| req.label(k))) => {
                format!("{a}: pool {name} no longer selects the Service (spec.serviceSelector)")
            }
            Some(p) if !p.selects(req, &self.ns_labels) => format!(
                "{a}: pool {name} no longer allows namespace {} (spec.namespaces / spec.namespaceSelector)",
                req.key.namespace
            ),
            Some(_) => format!(
                "{a}: pool {name} is not among the pools the Service names (ferrolb.io/pools: {})",
                req.pools.join(", ")
            ),
        })
    }
}
