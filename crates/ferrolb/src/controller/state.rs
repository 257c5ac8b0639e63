//! The controller's synchronous state machine (linkerd policy-controller style).
//!
//! It is fed watch events (Services, LoadBalancerIPPools), keeps the latest object of each and,
//! while *active* (leading, after the initial lists), the allocator (`crate::ipam::Allocator`).
//! It answers, without I/O, which writes are needed: [`State::take_dirty`] lists the objects to
//! look at and [`State::service_write`] / [`State::pool_write`] compute the minimal merge patch
//! (with the resourceVersion precondition), the Events and the metric deltas, or `None` when the
//! object already shows the desired state. The bookkeeping of both kinds (cache, versions
//! waiting for the watch, dirty marks) is one [`Tracked`] set each, fed through the generic
//! [`State::replace`] / [`State::event`] / [`State::delete`].
//!
//! Activation ([`State::activate`]) is the restart/takeover path: all pools are loaded, then
//! **every** Service of ours re-adopts the addresses in its `status.loadBalancer.ingress`, and only
//! then are Services ensured (new allocations) — so nothing is reshuffled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::ResourceExt;
use serde_json::{json, Value};

pub use super::cache::CachedService;
use super::events::{action, reason, EventSpec, EventType};
use super::status::{now_time, status_patch, ServiceTarget};
use super::tracked::missing_keys;
pub use super::tracked::{Object, Tracked};
use crate::api::{
    IpMode, LoadBalancerIPPool, LoadBalancerIPPoolStatus, COND_IPAM_SATISFIED, COND_NOT_COVERED,
};
use crate::ipam::{
    Addr, Allocator, ClassOptions, Ensured, PoolDef, PoolState, RebuildService, StoredReq,
    COND_CONFLICT, COND_EXHAUSTED, COND_INVALID_BLOCKS, COND_INVALID_SELECTOR,
};
use crate::k8s::conditions::{merge_conditions, CondWant};

pub use crate::ipam::ServiceKey;

mod writes;

/// Which Services the controller serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub default_class: bool,
    pub serve_cilium_class: bool,
    /// Honour MetalLB's Service annotations as aliases (`--metallb-annotations`).
    pub metallb_annotations: bool,
}

impl Options {
    /// The allocator's class options.
    pub fn class(&self) -> ClassOptions {
        ClassOptions {
            default_class: self.default_class,
            cilium_class: self.serve_cilium_class,
            metallb_annotations: self.metallb_annotations,
        }
    }

    /// What the controller keeps of a Service (see [`CachedService`]).
    pub fn cache(&self, svc: k8s_openapi::api::core::v1::Service) -> CachedService {
        CachedService::new(svc, self)
    }
}

/// A Service status write.
#[derive(Clone, Debug)]
pub struct ServiceWrite {
    pub key: ServiceKey,
    /// Merge patch for `/status`, carrying `metadata.resourceVersion` (precondition).
    pub patch: Value,
    pub regarding: ObjectReference,
    pub events: Vec<EventSpec>,
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// Set when this write turns the request unsatisfied (metric label).
    pub failed_reason: Option<String>,
}

/// A pool status write.
#[derive(Clone, Debug)]
pub struct PoolWrite {
    pub name: String,
    /// Merge patch for `/status`, carrying `metadata.resourceVersion` (precondition).
    pub patch: Value,
    pub regarding: ObjectReference,
    pub events: Vec<EventSpec>,
}

/// Pool counts for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub total: u128,
    pub used: u128,
    pub available: u128,
}

/// Allocator-side state, only while active.
struct Active {
    alloc: Allocator,
    /// The definitions given to the allocator, to detect spec changes and test containment.
    defs: BTreeMap<String, PoolDef>,
    /// Inputs each pool definition was built from (spec, creation, generation).
    pool_inputs: BTreeMap<String, Value>,
    /// The request each of our Services was last ensured with (shared with the cache).
    reqs: BTreeMap<ServiceKey, Arc<StoredReq>>,
    /// Addresses we put on Services that left our class, until the clearing write lands.
    to_clear: BTreeMap<ServiceKey, BTreeSet<IpAddr>>,
    /// Our Services whose request is not satisfied: built once on activation, then kept up to
    /// date from the allocator's changed lists (every outcome change is reported there), so
    /// retrying them after a change costs what is waiting, not every Service.
    unsatisfied: BTreeSet<ServiceKey>,
}

impl Active {
    /// Updates [`Active::unsatisfied`] for Services whose outcome changed (or that were
    /// released).
    fn note_outcomes(&mut self, keys: &[ServiceKey]) {
        for k in keys {
            if self.alloc.is_unsatisfied(k) {
                self.unsatisfied.insert(k.clone());
            } else {
                self.unsatisfied.remove(k);
            }
        }
    }
}

/// The state machine. See the module docs.
pub struct State {
    opts: Options,
    /// Services and pools: cached objects, the versions our writes produced that the watch has
    /// not delivered yet (writes for them wait: they would only meet a 409), dirty marks.
    services: Tracked<CachedService>,
    pools: Tracked<LoadBalancerIPPool>,
    /// Labels of every Namespace (for pools' `spec.namespaceSelector`).
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    active: Option<Active>,
    removed_pools: Vec<String>,
}

/// A kind of object the watches deliver and the state tracks ([`CachedService`]s, pools): where
/// its [`Tracked`] set is and what applying or forgetting one does to the allocator.
pub trait Watched: Object + Sized {
    fn tracked(st: &State) -> &Tracked<Self>;
    fn tracked_mut(st: &mut State) -> &mut Tracked<Self>;
    /// Added or modified (or re-read after a conflict or a write).
    fn apply(self, st: &mut State);
    /// Deleted, or gone from a relist: forgotten, and what it held released.
    fn forget(st: &mut State, key: &Self::Key);
    /// The order the objects of a relist are applied in (default: as listed).
    fn relist_order(_list: &mut [Self]) {}
}

impl Watched for CachedService {
    fn tracked(st: &State) -> &Tracked<Self> {
        &st.services
    }
    fn tracked_mut(st: &mut State) -> &mut Tracked<Self> {
        &mut st.services
    }
    fn apply(self, st: &mut State) {
        st.apply_service(self)
    }
    fn forget(st: &mut State, key: &ServiceKey) {
        st.delete_service_key(key)
    }
    /// Oldest first, as the controller ensures them.
    fn relist_order(list: &mut [Self]) {
        list.sort_by_key(CachedService::creation_order);
    }
}

impl Watched for LoadBalancerIPPool {
    fn tracked(st: &State) -> &Tracked<Self> {
        &st.pools
    }
    fn tracked_mut(st: &mut State) -> &mut Tracked<Self> {
        &mut st.pools
    }
    fn apply(self, st: &mut State) {
        st.apply_pool(self)
    }
    fn forget(st: &mut State, name: &String) {
        st.delete_pool_name(name)
    }
}

fn pool_inputs(p: &LoadBalancerIPPool) -> Value {
    json!({
        "spec": serde_json::to_value(&p.spec).unwrap_or(Value::Null),
        "created": p.metadata.creation_timestamp,
        "generation": p.metadata.generation,
        "uid": p.metadata.uid,
    })
}

impl State {
    pub fn new(opts: Options) -> Self {
        State {
            opts,
            services: Tracked::default(),
            pools: Tracked::default(),
            namespaces: BTreeMap::new(),
            active: None,
            removed_pools: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Drops the allocator state (lost leadership, or about to relist). Caches are kept.
    pub fn deactivate(&mut self) {
        self.active = None;
        self.services.clear_dirty();
        self.pools.clear_dirty();
    }

    /// The options the cache entries are built with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Builds the allocator from the caches: pools, then adopt every existing allocation, then
    /// ensure every Service of ours. Marks everything dirty. Returns the number of our Services.
    pub fn activate(&mut self) -> usize {
        let mut act = Active {
            alloc: Allocator::new(),
            defs: BTreeMap::new(),
            pool_inputs: BTreeMap::new(),
            reqs: BTreeMap::new(),
            to_clear: BTreeMap::new(),
            unsatisfied: BTreeSet::new(),
        };
        for (name, labels) in &self.namespaces {
            act.alloc.set_namespace(name, labels.clone());
        }
        let mut defs = Vec::with_capacity(self.pools.len());
        for p in self.pools.values() {
            let name = p.name_any();
            let (def, _errors) = PoolDef::from_crd(p);
            act.defs.insert(name.clone(), def.clone());
            act.pool_inputs.insert(name.clone(), pool_inputs(p));
            defs.push(def);
        }
        // Pools, then adopt every existing address, then ensure, oldest Service first.
        let ours = self.services.values().filter_map(|s| {
            s.req.as_ref().map(|req| RebuildService {
                req,
                created: s.created,
                ingress: s.ingress_ips(),
            })
        });
        let reports = act.alloc.rebuild(defs, ours);
        for (key, report) in &reports {
            for (ip, why) in &report.dropped {
                tracing::warn!(service = %key, %ip, why = %why, "existing address not adopted");
            }
        }
        for s in self.services.values() {
            if let Some(req) = &s.req {
                act.reqs.insert(req.key.clone(), Arc::clone(req));
            }
        }
        let _ = act.alloc.take_changed();
        act.unsatisfied = act
            .reqs
            .keys()
            .filter(|k| act.alloc.is_unsatisfied(k))
            .cloned()
            .collect();
        // Services that left our class while no replica was active: clear what we put there.
        for s in self.services.values() {
            if !s.is_ours() && s.has_our_condition() {
                let ips: BTreeSet<IpAddr> = s
                    .ingress_ips()
                    .into_iter()
                    .filter(|ip| {
                        let a = Addr::from_ip(*ip);
                        act.defs.values().any(|d| d.block_containing(a).is_some())
                    })
                    .collect();
                act.to_clear.insert(s.key.clone(), ips);
            }
        }
        let n = act.reqs.len();
        self.active = Some(act);
        self.services.mark_all_dirty();
        self.pools.mark_all_dirty();
        n
    }

    // ----- feeding ---------------------------------------------------------------------------

    /// A (re)list of Services or pools: everything not in `list` is deleted, then the listed
    /// objects are applied (Services oldest first). A list is a consistent, current view: no
    /// write waits for the watch any more.
    pub fn replace<O: Watched>(&mut self, mut list: Vec<O>) {
        for key in O::tracked_mut(self).relist(&list) {
            O::forget(self, &key);
        }
        O::relist_order(&mut list);
        for obj in list {
            obj.apply(self);
        }
    }

    /// A Service or pool event from the watch. Ends the wait for the watch when it shows our
    /// last write / re-read of the object.
    pub fn event<O: Watched>(&mut self, obj: O) {
        O::tracked_mut(self).observe(&obj);
        obj.apply(self);
    }

    /// A Service or pool was deleted. Ignored when the cached object has another uid
    /// (re-created).
    pub fn delete<O: Watched>(&mut self, obj: &O) {
        if !O::tracked(self).is_stale_delete(obj) {
            O::forget(self, &obj.key());
        }
    }

    /// The Services or pools: cached objects, pending versions, dirty marks.
    pub fn tracked<O: Watched>(&self) -> &Tracked<O> {
        O::tracked(self)
    }

    /// Like [`State::tracked`], to note versions and mark or take dirty keys.
    pub fn tracked_mut<O: Watched>(&mut self) -> &mut Tracked<O> {
        O::tracked_mut(self)
    }

    /// A Service was added or modified (or re-read after a conflict or a write).
    pub fn apply_service(&mut self, mut svc: CachedService) {
        let key = svc.key.clone();
        if key.name.is_empty() {
            return;
        }
        share_unchanged_req(&mut svc, self.active.as_ref(), self.services.get(&key));
        let had_condition = svc.has_our_condition();
        let ingress = svc.ingress_ips();
        let mut changed: Vec<ServiceKey> = Vec::new();
        if let Some(act) = self.active.as_mut() {
            if let Some(req) = svc.req.clone() {
                act.to_clear.remove(&key);
                if act.reqs.get(&key).map(|r| &**r) != Some(&*req) {
                    if !act.reqs.contains_key(&key) && !ingress.is_empty() {
                        // New to us but already carrying addresses (e.g. moved into our class,
                        // or restored): keep them if they are valid and free.
                        let _ = act.alloc.adopt_shared(&req, &ingress);
                    }
                    act.alloc.ensure_shared(&req);
                    act.reqs.insert(key.clone(), req);
                    // A changed Service may unblock others (ports, sharing, selectors): retry
                    // the unsatisfied ones, as Cilium does on every Service change.
                    retry_unsatisfied(act, &key);
                    changed = act.alloc.take_changed();
                    act.note_outcomes(&changed);
                    self.pools.mark_all_dirty();
                }
            } else {
                // Cleared already (neither our condition nor our addresses left): from now on
                // the Service belongs to whoever serves its class.
                if let Some(ips) = act.to_clear.get(&key) {
                    if !had_condition && !ingress.iter().any(|ip| ips.contains(ip)) {
                        act.to_clear.remove(&key);
                    }
                }
                if act.reqs.remove(&key).is_some() {
                    let held: BTreeSet<IpAddr> = act
                        .alloc
                        .outcome(&key)
                        .map(|o| o.ips().into_iter().collect())
                        .unwrap_or_default();
                    act.alloc.release(&key);
                    changed = act.alloc.take_changed();
                    act.note_outcomes(&changed);
                    act.to_clear.insert(key.clone(), held);
                    self.pools.mark_all_dirty();
                } else if had_condition && !act.to_clear.contains_key(&key) {
                    let ips: BTreeSet<IpAddr> = ingress
                        .iter()
                        .filter(|ip| {
                            let a = Addr::from_ip(**ip);
                            act.defs.values().any(|d| d.block_containing(a).is_some())
                        })
                        .copied()
                        .collect();
                    act.to_clear.insert(key.clone(), ips);
                }
            }
        }
        self.services.store(key, svc);
        self.services.extend_dirty(changed);
    }

    /// Forgets a Service by key and releases its addresses.
    pub fn delete_service_key(&mut self, key: &ServiceKey) {
        self.services.remove(key);
        if let Some(act) = self.active.as_mut() {
            act.to_clear.remove(key);
            if act.reqs.remove(key).is_some() {
                act.alloc.release(key);
                let changed = act.alloc.take_changed();
                act.note_outcomes(&changed);
                act.unsatisfied.remove(key);
                self.services
                    .extend_dirty(changed.into_iter().filter(|k| k != key));
                self.pools.mark_all_dirty();
            }
        }
    }

    /// A pool was added or modified (spec changes reach the allocator; status-only changes
    /// just refresh the cached object).
    pub fn apply_pool(&mut self, pool: LoadBalancerIPPool) {
        let name = pool.name_any();
        if name.is_empty() {
            return;
        }
        if let Some(act) = self.active.as_mut() {
            let inputs = pool_inputs(&pool);
            if act.pool_inputs.get(&name) != Some(&inputs) {
                let (def, _errors) = PoolDef::from_crd(&pool);
                let old_mode = act.defs.get(&name).map(|d| d.ip_mode);
                if old_mode.is_some_and(|m| m != def.ip_mode) {
                    // ipMode is not part of an outcome: rewrite this pool's Services' ingress.
                    let users: Vec<ServiceKey> = act
                        .reqs
                        .keys()
                        .filter(|k| {
                            act.alloc
                                .outcome(k)
                                .is_some_and(|o| o.addresses.iter().any(|a| a.pool == name))
                        })
                        .cloned()
                        .collect();
                    self.services.extend_dirty(users);
                }
                act.defs.insert(name.clone(), def.clone());
                act.pool_inputs.insert(name.clone(), inputs);
                let changed = act.alloc.set_pool(def);
                act.note_outcomes(&changed);
                self.services.extend_dirty(changed);
                // Conflicts and counts of other pools may change too.
                self.pools.mark_all_dirty();
            }
        }
        self.pools.store(name, pool);
    }

    /// Forgets a pool by name and releases it in the allocator.
    pub fn delete_pool_name(&mut self, name: &str) {
        self.pools.remove(name);
        self.removed_pools.push(name.to_string());
        if let Some(act) = self.active.as_mut() {
            act.defs.remove(name);
            act.pool_inputs.remove(name);
            let changed = act.alloc.remove_pool(name);
            act.note_outcomes(&changed);
            self.services.extend_dirty(changed);
            self.pools.mark_all_dirty();
        }
    }

    /// A (re)list of Namespaces.
    pub fn replace_namespaces(&mut self, list: Vec<Namespace>) {
        let names: BTreeSet<String> = list.iter().map(|n| n.name_any()).collect();
        for n in missing_keys(&self.namespaces, &names) {
            self.delete_namespace_name(&n);
        }
        for n in list {
            self.apply_namespace(&n);
        }
    }

    /// A Namespace was added or modified: only its labels matter. Services in it are
    /// re-evaluated (waiting ones may get an address; held addresses are never taken away).
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let name = ns.name_any();
        if name.is_empty() {
            return;
        }
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        if self.namespaces.get(&name) == Some(&labels) {
            return;
        }
        self.namespaces.insert(name.clone(), labels.clone());
        if let Some(act) = self.active.as_mut() {
            let changed = act.alloc.set_namespace(&name, labels);
            act.note_outcomes(&changed);
            if !changed.is_empty() {
                self.services.extend_dirty(changed);
                self.pools.mark_all_dirty();
            }
        }
    }

    /// A Namespace was deleted.
    pub fn delete_namespace_name(&mut self, name: &str) {
        if self.namespaces.remove(name).is_none() {
            return;
        }
        if let Some(act) = self.active.as_mut() {
            let changed = act.alloc.remove_namespace(name);
            act.note_outcomes(&changed);
            if !changed.is_empty() {
                self.services.extend_dirty(changed);
                self.pools.mark_all_dirty();
            }
        }
    }

    // ----- writes ----------------------------------------------------------------------------

    /// The objects to look at (and forgets them; re-mark on failure).
    pub fn take_dirty(&mut self) -> (Vec<ServiceKey>, Vec<String>) {
        (self.services.take_dirty(), self.pools.take_dirty())
    }

    /// The outcome the allocator holds for a Service of ours.
    pub fn outcome(&self, key: &ServiceKey) -> Option<Ensured> {
        self.active.as_ref()?.alloc.outcome(key)
    }

    // ----- reporting ---------------------------------------------------------------------

    /// Services of ours whose request is not satisfied.
    pub fn unsatisfied_count(&self) -> usize {
        let Some(act) = self.active.as_ref() else {
            return 0;
        };
        act.unsatisfied
            .iter()
            .filter(|k| act.alloc.is_unsatisfied(k))
            .count()
    }

    /// Counts of every pool.
    pub fn pool_counts(&self) -> Vec<(String, Counts)> {
        let Some(act) = self.active.as_ref() else {
            return Vec::new();
        };
        act.alloc
            .pool_states()
            .into_iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Counts {
                        total: s.total,
                        used: s.used,
                        available: s.available,
                    },
                )
            })
            .collect()
    }

    /// Pools deleted since the last call (to drop their gauges).
    pub fn removed_pools_for_metrics(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removed_pools)
    }

    /// The cached Service (tests, debugging).
    pub fn service(&self, key: &ServiceKey) -> Option<&CachedService> {
        self.services.get(key)
    }
}

/// Re-ensures every unsatisfied Service of ours except `skip` (key order, deterministic).
/// An unchanged request (most updates are our own status writes) keeps the copy the cache, the
/// state and the allocator already share, instead of each update leaving a second one behind.
fn share_unchanged_req(svc: &mut CachedService, act: Option<&Active>, old: Option<&CachedService>) {
    let Some(new) = svc.req.as_ref() else {
        return;
    };
    let kept = act
        .and_then(|a| a.reqs.get(&svc.key))
        .or_else(|| old.and_then(|o| o.req.as_ref()));
    if let Some(kept) = kept {
        if !Arc::ptr_eq(kept, new) && **kept == **new {
            svc.req = Some(Arc::clone(kept));
        }
    }
}

fn retry_unsatisfied(act: &mut Active, skip: &ServiceKey) {
    let waiting: Vec<ServiceKey> = act
        .unsatisfied
        .iter()
        .filter(|k| *k != skip)
        .filter(|k| act.alloc.is_unsatisfied(k))
        .cloned()
        .collect();
    for k in waiting {
        if let Some(req) = act.reqs.get(&k) {
            act.alloc.ensure_shared(req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IpBlock, LoadBalancerIPPoolSpec};
    use crate::fixtures::ServiceBuilder;
    use k8s_openapi::api::core::v1::{Service, ServicePort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ts(sec: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_700_000_000 + sec).expect("ts"))
    }

    /// `ns/name`, created `created` seconds into these tests, IPv4 single-stack, port 80/TCP.
    fn lb(ns: &str, name: &str, created: i64) -> ServiceBuilder {
        ServiceBuilder::named(ns, name)
            .uid(&format!("uid-{ns}-{name}"))
            .resource_version("1")
            .created(ts(created).0)
            .type_("LoadBalancer")
            .port("", 80, "TCP")
            .families(&["IPv4"], "SingleStack")
    }

    fn pool(name: &str, cidr: &str, created: i64) -> LoadBalancerIPPool {
        let mut p = LoadBalancerIPPool::new(
            name,
            LoadBalancerIPPoolSpec {
                blocks: vec![IpBlock {
                    cidr: Some(cidr.into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.generation = Some(1);
        p.metadata.resource_version = Some("1".into());
        p.metadata.creation_timestamp = Some(ts(created));
        p
    }

    fn opts() -> Options {
        Options {
            default_class: true,
            serve_cilium_class: false,
            metallb_annotations: false,
        }
    }

    fn key(ns: &str, n: &str) -> ServiceKey {
        ServiceKey::new(ns, n)
    }

    /// RFC 7386 merge of `patch` into `target[field]`.
    fn merge(target: &mut Value, patch: &Value, field: &str) {
        fn m(t: &mut Value, p: &Value) {
            match p {
                Value::Object(po) => {
                    if !t.is_object() {
                        *t = Value::Object(Default::default());
                    }
                    if let Value::Object(to) = t {
                        for (k, v) in po {
                            if v.is_null() {
                                to.remove(k);
                            } else {
                                m(to.entry(k.clone()).or_insert(Value::Null), v);
                            }
                        }
                    }
                }
                other => *t = other.clone(),
            }
        }
        if let Value::Object(o) = target {
            m(o.entry(field.to_string()).or_insert(Value::Null), patch);
        }
    }

    /// The state with the whole Services it was fed (the state keeps only what it reads; the
    /// tests edit and re-apply whole objects, as the API server would send them).
    struct T {
        st: State,
        objs: BTreeMap<ServiceKey, Service>,
    }

    impl std::ops::Deref for T {
        type Target = State;
        fn deref(&self) -> &State {
            &self.st
        }
    }

    impl std::ops::DerefMut for T {
        fn deref_mut(&mut self) -> &mut State {
            &mut self.st
        }
    }

    impl T {
        fn new(opts: Options) -> Self {
            T {
                st: State::new(opts),
                objs: BTreeMap::new(),
            }
        }
        fn cache(&mut self, svc: Service) -> CachedService {
            self.objs.insert(ServiceKey::of(&svc), svc.clone());
            self.st.options().cache(svc)
        }
        fn apply_service(&mut self, svc: Service) {
            let c = self.cache(svc);
            self.st.apply_service(c);
        }
        fn service_event(&mut self, svc: Service) {
            let c = self.cache(svc);
            self.st.event(c);
        }
        fn replace_services(&mut self, list: Vec<Service>) {
            self.objs.clear();
            let list = list.into_iter().map(|s| self.cache(s)).collect();
            self.st.replace(list);
        }
        fn delete_service(&mut self, svc: &Service) {
            let key = ServiceKey::of(svc);
            let c = self.st.options().cache(svc.clone());
            self.st.delete(&c);
            if self.st.service(&key).is_none() {
                self.objs.remove(&key);
            }
        }
        /// The whole Service as last fed (present while the state caches it).
        fn service(&self, key: &ServiceKey) -> Option<&Service> {
            self.st.service(key).and(self.objs.get(key))
        }
    }

    /// Applies a write's patch to the cached object as the server would (status only).
    fn apply_patch(state: &mut T, w: &ServiceWrite) {
        let svc = state.service(&w.key).expect("cached").clone();
        let mut v = serde_json::to_value(&svc).expect("json");
        merge(&mut v, &w.patch["status"], "status");
        let mut out: Service = serde_json::from_value(v).expect("service");
        out.metadata.resource_version = Some(format!(
            "{}",
            out.metadata
                .resource_version
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0)
                + 1
        ));
        state.apply_service(out);
    }

    fn started(services: Vec<Service>, pools: Vec<LoadBalancerIPPool>) -> T {
        let mut st = T::new(opts());
        st.replace(pools);
        st.replace_services(services);
        st.activate();
        st
    }

    fn writes(st: &mut State) -> BTreeMap<ServiceKey, ServiceWrite> {
        let (svcs, _) = st.take_dirty();
        svcs.iter()
            .filter_map(|k| st.service_write(k).map(|w| (k.clone(), w)))
            .collect()
    }

    #[test]
    fn adopts_existing_addresses_before_allocating() {
        // `newer` already holds .1 (lowest address); `older` has nothing yet. Without adopt-first
        // the older Service would be ensured first and take .1.
        let st_services = vec![
            lb("demo", "older", 0).build(),
            lb("demo", "newer", 10)
                .ingress_vip(&["198.51.100.1"])
                .build(),
        ];
        let mut st = started(st_services, vec![pool("p", "198.51.100.0/24", 0)]);
        let ws = writes(&mut st);
        let older = ws.get(&key("demo", "older")).expect("older gets a write");
        assert_eq!(
            older.added,
            vec!["198.51.100.2".parse::<IpAddr>().expect("ip")]
        );
        let newer = ws
            .get(&key("demo", "newer"))
            .expect("condition write for newer");
        assert!(
            newer.added.is_empty(),
            "adopted address is not re-added: {:?}",
            newer.added
        );
        assert!(newer.removed.is_empty());
        assert_eq!(
            newer.patch["status"]["conditions"][0]["reason"],
            "Satisfied"
        );
        assert!(newer.patch["status"].get("loadBalancer").is_none());
    }

    #[test]
    fn new_service_gets_address_condition_and_event() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        st.apply_service(lb("demo", "web", 0).resource_version("7").build());
        let ws = writes(&mut st);
        let w = ws.get(&key("demo", "web")).expect("write");
        assert_eq!(w.patch["metadata"]["resourceVersion"], "7");
        assert_eq!(
            w.patch["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.51.100.1"
        );
        assert_eq!(w.events.len(), 1);
        assert_eq!(w.events[0].reason, reason::IP_ALLOCATED);
        assert!(
            w.events[0].note.contains("198.51.100.1 from pool p"),
            "{}",
            w.events[0].note
        );
        // After the write lands, nothing more to do.
        apply_patch(&mut st, w);
        assert!(writes(&mut st).is_empty());
    }

    #[test]
    fn inactive_state_never_writes() {
        let mut st = T::new(opts());
        st.replace(vec![pool("p", "198.51.100.0/24", 0)]);
        st.apply_service(lb("demo", "web", 0).build());
        assert!(st.service_write(&key("demo", "web")).is_none());
        assert!(st.pool_write("p").is_none());
        st.activate();
        assert!(st.service_write(&key("demo", "web")).is_some());
        st.deactivate();
        assert!(st.service_write(&key("demo", "web")).is_none());
    }

    #[test]
    fn foreign_class_is_never_touched() {
        let mut st = started(
            vec![lb("demo", "other", 0)
                .class("example.com/other")
                .ingress_vip(&["198.51.100.7"])
                .build()],
            vec![pool("p", "198.51.100.0/24", 0)],
        );
        assert!(writes(&mut st).is_empty());
        // Its address is not adopted either: a Service of ours may get .1 and .7 is not blocked
        // by a foreign Service (we don't own it).
        st.apply_service(lb("demo", "web", 1).build());
        let ws = writes(&mut st);
        assert_eq!(ws.len(), 1);
        assert!(ws.contains_key(&key("demo", "web")));
    }

    #[test]
    fn leaving_class_clears_our_address_and_condition() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        st.apply_service(lb("demo", "web", 0).build());
        let ws = writes(&mut st);
        apply_patch(&mut st, &ws[&key("demo", "web")]);
        let cur = st.service(&key("demo", "web")).expect("svc").clone();
        let mut moved = cur.clone();
        if let Some(s) = moved.spec.as_mut() {
            s.load_balancer_class = Some("example.com/other".into());
        }
        st.apply_service(moved);
        let ws = writes(&mut st);
        let w = ws.get(&key("demo", "web")).expect("clearing write");
        assert!(
            w.patch["status"]["loadBalancer"]["ingress"].is_null(),
            "{}",
            w.patch
        );
        assert!(w.patch["status"]["conditions"].is_null());
        assert_eq!(
            w.removed,
            vec!["198.51.100.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(w.events[0].reason, reason::IP_RELEASED);
        apply_patch(&mut st, w);
        assert!(writes(&mut st).is_empty(), "cleared once, then left alone");
        // Its new controller may even hand out the same address later: not ours to touch.
        let mut foreign = st.service(&key("demo", "web")).expect("svc").clone();
        foreign.status = lb("demo", "web", 0)
            .ingress_vip(&["198.51.100.1"])
            .build()
            .status;
        st.apply_service(foreign);
        assert!(
            writes(&mut st).is_empty(),
            "a foreign class's status was touched"
        );
        // The freed address goes to the next Service.
        st.apply_service(lb("demo", "next", 5).build());
        let ws = writes(&mut st);
        assert_eq!(
            ws[&key("demo", "next")].added,
            vec!["198.51.100.1".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn type_change_clears_too() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        st.apply_service(lb("demo", "web", 0).build());
        let ws = writes(&mut st);
        apply_patch(&mut st, &ws[&key("demo", "web")]);
        let mut cur = st.service(&key("demo", "web")).expect("svc").clone();
        if let Some(s) = cur.spec.as_mut() {
            s.type_ = Some("ClusterIP".into());
        }
        st.apply_service(cur);
        let ws = writes(&mut st);
        assert_eq!(ws[&key("demo", "web")].removed.len(), 1);
    }

    #[test]
    fn delete_frees_address_for_waiting_service() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.5/32", 0)]);
        st.apply_service(lb("demo", "a", 0).build());
        st.apply_service(lb("demo", "b", 1).build());
        let ws = writes(&mut st);
        assert_eq!(ws[&key("demo", "a")].added.len(), 1);
        let b = &ws[&key("demo", "b")];
        assert_eq!(b.failed_reason.as_deref(), Some("OutOfIPs"));
        assert!(b
            .events
            .iter()
            .any(|e| e.reason == reason::ALLOCATION_FAILED));
        apply_patch(&mut st, &ws[&key("demo", "a")]);
        apply_patch(&mut st, b);
        let a = st.service(&key("demo", "a")).expect("a").clone();
        st.delete_service(&a);
        let ws = writes(&mut st);
        let b = ws.get(&key("demo", "b")).expect("b is retried");
        assert_eq!(b.added, vec!["198.51.100.5".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn a_change_of_one_service_retries_the_unsatisfied_ones() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        let mut a = lb("demo", "a", 0).build();
        let ann = BTreeMap::from([
            (crate::api::ANN_IPS.to_string(), "198.51.100.9".to_string()),
            (crate::api::ANN_SHARING_KEY.to_string(), "k".to_string()),
        ]);
        a.metadata.annotations = Some(ann.clone());
        let mut b = lb("demo", "b", 1).build();
        b.metadata.annotations = Some(ann);
        st.apply_service(a.clone());
        st.apply_service(b);
        let ws = writes(&mut st);
        assert_eq!(
            ws[&key("demo", "b")].failed_reason.as_deref(),
            Some("AlreadyAllocated")
        );
        for w in ws.values() {
            apply_patch(&mut st, w);
        }
        // `a` moves to another port: `b` may now share the address.
        let mut a2 = st.service(&key("demo", "a")).expect("a").clone();
        if let Some(spec) = a2.spec.as_mut() {
            spec.ports = Some(vec![ServicePort {
                port: 81,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]);
        }
        st.apply_service(a2);
        let ws = writes(&mut st);
        let b = ws.get(&key("demo", "b")).expect("b retried");
        assert_eq!(b.added, vec!["198.51.100.9".parse::<IpAddr>().expect("ip")]);
    }

    #[test]
    fn writes_wait_until_the_watch_shows_our_last_write() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        let k = key("demo", "web");
        st.service_event(lb("demo", "web", 0).resource_version("5").build());
        // A no-op write keeps the version: nothing to wait for.
        st.tracked_mut::<CachedService>()
            .note_version(&k, Some("5"), Some("5"));
        assert!(st.tracked::<CachedService>().pending_until(&k).is_none());
        // Our write produced version 6; an older event (5) does not end the wait, 6 does.
        st.tracked_mut::<CachedService>()
            .note_version(&k, Some("5"), Some("6"));
        assert!(st.tracked::<CachedService>().pending_until(&k).is_some());
        st.service_event(lb("demo", "web", 0).resource_version("5").build());
        assert!(st.tracked::<CachedService>().pending_until(&k).is_some());
        st.service_event(lb("demo", "web", 0).resource_version("6").build());
        assert!(st.tracked::<CachedService>().pending_until(&k).is_none());
        // A relist is current by definition.
        st.tracked_mut::<CachedService>()
            .note_version(&k, Some("6"), Some("9"));
        st.replace_services(vec![lb("demo", "web", 0).resource_version("9").build()]);
        assert!(st.tracked::<CachedService>().pending_until(&k).is_none());
        // Pools alike.
        st.tracked_mut::<LoadBalancerIPPool>()
            .note_version("p", Some("1"), Some("2"));
        assert!(st
            .tracked::<LoadBalancerIPPool>()
            .pending_until("p")
            .is_some());
        let mut p2 = pool("p", "198.51.100.0/24", 0);
        p2.metadata.resource_version = Some("2".into());
        st.event(p2);
        assert!(st
            .tracked::<LoadBalancerIPPool>()
            .pending_until("p")
            .is_none());
    }

    #[test]
    fn stale_delete_of_recreated_service_is_ignored() {
        let mut st = started(vec![], vec![pool("p", "198.51.100.0/24", 0)]);
        let old = lb("demo", "web", 0).build();
        let mut recreated = lb("demo", "web", 5).build();
        recreated.metadata.uid = Some("uid-new".into());
        st.apply_service(recreated);
        st.delete_service(&old);
        assert!(st.service(&key("demo", "web")).is_some());
        assert!(st.outcome(&key("demo", "web")).is_some());
    }

    /// The kept set of unsatisfied Services equals a scan of every outcome.
    fn assert_unsatisfied_tracked(st: &State) {
        let act = st.active.as_ref().expect("active");
        let scan: BTreeSet<ServiceKey> = act
            .reqs
            .keys()
            .filter(|k| act.alloc.is_unsatisfied(k))
            .cloned()
            .collect();
        assert_eq!(act.unsatisfied, scan);
    }

    #[test]
    fn unsatisfied_services_are_tracked_through_every_kind_of_change() {
        // Two addresses for five Services: three wait.
        let mut st = started(
            vec![lb("demo", "a", 0).build(), lb("demo", "b", 1).build()],
            vec![pool("p", "198.51.100.4/31", 0)],
        );
        assert_unsatisfied_tracked(&st);
        for (i, n) in ["c", "d", "e"].iter().enumerate() {
            st.apply_service(lb("demo", n, 2 + i as i64).build());
            assert_unsatisfied_tracked(&st);
        }
        assert_eq!(st.unsatisfied_count(), 3);
        // A delete frees an address for a waiting one.
        let a = st.service(&key("demo", "a")).expect("a").clone();
        st.delete_service(&a);
        assert_unsatisfied_tracked(&st);
        assert_eq!(st.unsatisfied_count(), 2);
        // Leaving our class frees one too.
        let mut b = st.service(&key("demo", "b")).expect("b").clone();
        if let Some(s) = b.spec.as_mut() {
            s.load_balancer_class = Some("example.com/other".into());
        }
        st.apply_service(b);
        assert_unsatisfied_tracked(&st);
        assert_eq!(st.unsatisfied_count(), 1);
        // A bigger pool satisfies everyone; deleting it leaves them kept but uncovered or
        // waiting, as the allocator says.
        st.apply_pool(pool("q", "198.51.100.16/28", 5));
        assert_unsatisfied_tracked(&st);
        assert_eq!(st.unsatisfied_count(), 0);
        st.delete_pool_name("p");
        assert_unsatisfied_tracked(&st);
        st.apply_namespace(&Namespace {
            metadata: ObjectMeta {
                name: Some("demo".into()),
                labels: Some(BTreeMap::from([("team".into(), "x".into())])),
                ..Default::default()
            },
            ..Default::default()
        });
        assert_unsatisfied_tracked(&st);
        st.delete_namespace_name("demo");
        assert_unsatisfied_tracked(&st);
    }

    #[test]
    fn newer_overlapping_pool_is_marked_conflict_with_event() {
        let mut st = started(
            vec![],
            vec![
                pool("old", "198.51.100.0/24", 0),
                pool("new", "198.51.100.128/25", 10),
            ],
        );
        let (_, pools) = st.take_dirty();
        assert_eq!(pools.len(), 2);
        let w = st.pool_write("new").expect("pool status write");
        let conds = w.patch["status"]["conditions"]
            .as_array()
            .expect("conditions");
        let conflict = conds
            .iter()
            .find(|c| c["type"] == "Conflict")
            .expect("Conflict");
        assert_eq!(conflict["status"], "True");
        assert!(conflict["message"].as_str().unwrap_or("").contains("old"));
        assert!(w.events.iter().any(|e| e.reason == reason::POOL_CONFLICT));
        let w_old = st.pool_write("old").expect("old pool status");
        assert_eq!(w_old.patch["status"]["ipsTotal"], 254);
        assert_eq!(w_old.patch["status"]["ipsUsed"], 0);
        assert_eq!(w_old.patch["status"]["observedGeneration"], 1);
        assert!(w_old.events.is_empty());
    }
}
