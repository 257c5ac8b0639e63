//! What the controller writes: the minimal Service and pool status patches (with their
//! resourceVersion preconditions), the Events and the metric deltas that go with them, computed
//! from the [`State`] without I/O.

use super::*;

impl State {
    /// The Service status write needed for `key`, if any (only while active).
    pub fn service_write(&self, key: &ServiceKey) -> Option<ServiceWrite> {
        let act = self.active.as_ref()?;
        let svc = self.services.get(key)?;
        let now = now_time();
        // Read once: the target and the Events below share one built outcome.
        let outcome = act.alloc.outcome(key);
        let target = if act.reqs.contains_key(key) {
            let o = outcome.as_ref()?;
            let not_covered = (!o.not_covered.is_empty()).then(|| {
                CondWant::new(
                    COND_NOT_COVERED,
                    true,
                    "PoolChanged",
                    format!(
                        "kept, but no pool that selects the Service covers it any more: {}; set the annotation {}: \"true\" to get a new address",
                        o.not_covered
                            .iter()
                            .map(|n| n.why.as_str())
                            .collect::<Vec<_>>()
                            .join("; "),
                        crate::api::ANN_REALLOCATE
                    ),
                )
            });
            let proxy: BTreeSet<IpAddr> = o
                .addresses
                .iter()
                .filter(|a| {
                    act.defs
                        .get(&a.pool)
                        .is_some_and(|d| d.ip_mode == IpMode::Proxy)
                })
                .map(|a| a.ip)
                .collect();
            ServiceTarget::Managed {
                ips: o.ips(),
                not_covered,
                proxy,
                cond: CondWant::new(
                    COND_IPAM_SATISFIED,
                    o.is_satisfied(),
                    o.reason.as_str(),
                    if o.is_satisfied() {
                        format!("allocated {}", o.message)
                    } else {
                        o.message.clone()
                    },
                ),
            }
        } else if let Some(ips) = act.to_clear.get(key) {
            ServiceTarget::Clear { ips: ips.clone() }
        } else {
            return None;
        };
        let p = svc.with_status_view(|v| status_patch(v, &target, &now))?;
        let mut events = Vec::new();
        if !p.added.is_empty() {
            let detail = outcome
                .as_ref()
                .map(|o| {
                    o.addresses
                        .iter()
                        .filter(|a| p.added.contains(&a.ip))
                        .map(|a| format!("{} from pool {}", a.ip, a.pool))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            events.push(EventSpec {
                type_: EventType::Normal,
                reason: reason::IP_ALLOCATED,
                action: action::ALLOCATE,
                note: format!("Assigned {detail}"),
            });
        }
        if !p.removed.is_empty() {
            let list = p
                .removed
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let why = match &target {
                ServiceTarget::Clear { .. } => {
                    "the Service is no longer of type LoadBalancer with a class ferrolb serves"
                        .to_string()
                }
                ServiceTarget::Managed { cond, .. } if !cond.status => cond.message.clone(),
                ServiceTarget::Managed { .. } => {
                    "no longer fits the request or its pool".to_string()
                }
            };
            events.push(EventSpec {
                type_: EventType::Normal,
                reason: reason::IP_RELEASED,
                action: action::RELEASE,
                note: format!("Released {list}: {why}"),
            });
        }
        if let Some(c) = &p.raised_not_covered {
            events.push(EventSpec {
                type_: EventType::Warning,
                reason: reason::ADDRESS_NOT_COVERED,
                action: action::ALLOCATE,
                note: c.message.clone(),
            });
        }
        let mut failed_reason = None;
        if let Some(c) = &p.new_cond {
            if !c.status {
                failed_reason = Some(c.reason.clone());
                events.push(EventSpec {
                    type_: EventType::Warning,
                    reason: reason::ALLOCATION_FAILED,
                    action: action::ALLOCATE,
                    note: format!("{}: {}", c.reason, c.message),
                });
            }
        }
        Some(ServiceWrite {
            key: key.clone(),
            patch: p.patch,
            regarding: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(key.namespace.to_string()),
                name: Some(key.name.to_string()),
                uid: svc.uid.as_deref().map(String::from),
                resource_version: None,
                ..Default::default()
            },
            events,
            added: p.added,
            removed: p.removed,
            failed_reason,
        })
    }

    /// The pool status write needed for `name`, if any (only while active).
    pub fn pool_write(&self, name: &str) -> Option<PoolWrite> {
        let act = self.active.as_ref()?;
        let pool = self.pools.get(name)?;
        let st = act.alloc.pool_status(name)?;
        let now = now_time();
        let prev = pool.status.as_ref();
        let desired = st.to_status(prev, now.clone());
        let empty = LoadBalancerIPPoolStatus::default();
        let cur = prev.unwrap_or(&empty);
        // Compare ignoring lastTransitionTime bookkeeping (to_status keeps it when unchanged).
        let wants: Vec<CondWant> = desired
            .conditions
            .iter()
            .map(|c| CondWant {
                type_: c.type_.clone(),
                status: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: c.observed_generation,
            })
            .collect();
        let owned = [
            COND_CONFLICT,
            COND_EXHAUSTED,
            COND_INVALID_BLOCKS,
            COND_INVALID_SELECTOR,
        ];
        let (_, cond_changed) = merge_conditions(&cur.conditions, &wants, &owned, &now);
        let counts_changed = cur.ips_total != desired.ips_total
            || cur.ips_used != desired.ips_used
            || cur.ips_available != desired.ips_available
            || cur.observed_generation != desired.observed_generation;
        if !cond_changed && !counts_changed {
            return None;
        }
        let events = pool_events(&st, cur);
        let rv = pool.metadata.resource_version.clone().unwrap_or_default();
        let status = serde_json::to_value(&desired).unwrap_or(Value::Null);
        Some(PoolWrite {
            name: name.to_string(),
            patch: json!({"metadata": {"resourceVersion": rv}, "status": status}),
            regarding: ObjectReference {
                api_version: Some("ferrolb.io/v1alpha1".into()),
                kind: Some("LoadBalancerIPPool".into()),
                name: Some(name.to_string()),
                uid: pool.metadata.uid.clone(),
                ..Default::default()
            },
            events,
        })
    }
}

/// Events for transitions of a pool's conditions (compared with its current status).
fn pool_events(st: &PoolState, cur: &LoadBalancerIPPoolStatus) -> Vec<EventSpec> {
    let was_true = |ty: &str| {
        cur.conditions
            .iter()
            .any(|c| c.type_ == ty && c.status == "True")
    };
    let mut ev = Vec::new();
    for (ty, status, _reason, message) in st.conditions() {
        if !status || was_true(ty) {
            continue;
        }
        let (r, t) = match ty {
            COND_CONFLICT => (reason::POOL_CONFLICT, EventType::Warning),
            COND_EXHAUSTED => (reason::POOL_EXHAUSTED, EventType::Warning),
            COND_INVALID_BLOCKS => (reason::POOL_INVALID, EventType::Warning),
            COND_INVALID_SELECTOR => (reason::POOL_INVALID_SELECTOR, EventType::Warning),
            _ => continue,
        };
        ev.push(EventSpec {
            type_: t,
            reason: r,
            action: action::CHECK_POOL,
            note: message,
        });
    }
    ev
}
