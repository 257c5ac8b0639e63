//! The agent's narrow caches: its own compact types for exactly what it reads of Services,
//! EndpointSlices and Nodes, filled straight from the watch streams.
//!
//! Every agent caches every Service, EndpointSlice and Node of the cluster, so the cost per
//! object is what decides an agent's memory at 10k addresses. k8s-openapi structs cost far more
//! than the decision needs even after trimming (an `ObjectMeta` and a `ServiceSpec` are hundreds
//! of bytes of `Option`s, each label map a ≈ 0.5 KiB B-tree node); here each object becomes:
//!
//! - [`CachedService`]: namespace, name, uid (Events, `L2Announcement` owner references), labels
//!   (policies' `serviceSelector`), whether it is `type: LoadBalancer`, its class,
//!   `externalTrafficPolicy: Local`, `spec.externalIPs` and `status.loadBalancer.ingress[].ip`
//!   parsed (unparsable entries are skipped, as eligibility always did);
//! - [`CachedSlice`]: namespace, name, its Service (`kubernetes.io/service-name`), the nodes with
//!   a ready endpoint (one entry per node: a slice of 100 pods on 3 nodes keeps 3) and the
//!   addresses of ready endpoints that name no node (matched against node addresses and pod
//!   CIDRs);
//! - [`CachedNode`]: name, labels, pod CIDRs, addresses, whether its `Ready` condition is `True`.
//!
//! Strings that repeat across objects — namespaces, node names, label keys and values, classes —
//! are interned ([`Interner`]: one `Arc<str>` per distinct value, shared by every object that
//! carries it). [`Store`] is the shared map the agent's loop reads (a snapshot of `Arc`s, so a
//! recompute never holds the lock) and [`Store::apply`] the pure handling of watch events
//! (relists replace the contents atomically at `InitDone`, as kube-runtime's reflector does).
//! No metadata-only watch fits here: every kind the agent narrows needs its spec or status.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource as _};
use tokio::sync::Notify;
use tracing::warn;

use super::eligibility::LABEL_SERVICE_NAME_SLICE;
use super::metrics::Metrics;
use crate::api::{LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE};
use crate::k8s;

pub use crate::intern::Interner;

/// Locks a mutex, taking over a poisoned one (the interner stays consistent: every critical
/// section is one insert or one sweep).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An object's labels: interned (key, value) pairs sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// From a label map (already sorted by key: a `BTreeMap`).
    pub fn new<'a>(
        labels: impl IntoIterator<Item = (&'a String, &'a String)>,
        interner: &mut Interner,
    ) -> Self {
        Labels(
            labels
                .into_iter()
                .map(|(k, v)| (interner.intern(k), interner.intern(v)))
                .collect(),
        )
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the agent keeps of a Service (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedService {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub uid: Option<Box<str>>,
    pub labels: Labels,
    /// `spec.type` is `LoadBalancer`.
    pub load_balancer: bool,
    /// `spec.loadBalancerClass`.
    pub class: Option<Arc<str>>,
    /// `spec.externalTrafficPolicy` is `Local`.
    pub etp_local: bool,
    /// `spec.externalIPs`, parsed.
    pub external_ips: Box<[IpAddr]>,
    /// `status.loadBalancer.ingress[].ip`, parsed.
    pub ingress: Box<[IpAddr]>,
}

impl CachedService {
    /// What the agent keeps of `svc`; `None` without a namespace or name (nothing reads those).
    pub fn new(svc: &Service, interner: &mut Interner) -> Option<Self> {
        let m = &svc.metadata;
        let namespace = interner.intern(m.namespace.as_deref()?);
        let name = Arc::from(m.name.as_deref()?);
        let spec = svc.spec.as_ref();
        let ingress = k8s::service::ingress_ips(svc).into();
        Some(CachedService {
            namespace,
            name,
            uid: m.uid.as_deref().map(Box::from),
            labels: Labels::new(m.labels.iter().flatten(), interner),
            load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
            class: spec
                .and_then(|s| s.load_balancer_class.as_deref())
                .map(|c| interner.intern(c)),
            etp_local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
            external_ips: k8s::service::external_ips(svc).into(),
            ingress,
        })
    }

    /// A label as selectors see it: the virtual labels `io.kubernetes.service.namespace` and
    /// `io.kubernetes.service.name` answer the Service's own (overriding real labels of the same
    /// key, as `ipam::selector::service_labels` does).
    pub fn label(&self, key: &str) -> Option<&str> {
        match key {
            LABEL_SERVICE_NAMESPACE => Some(&self.namespace),
            LABEL_SERVICE_NAME => Some(&self.name),
            _ => self.labels.get(key),
        }
    }
}

/// What the agent keeps of an EndpointSlice (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSlice {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<Arc<str>>,
    /// Nodes with a ready endpoint (`conditions.ready` not false), sorted, once each.
    pub nodes: Box<[Arc<str>]>,
    /// Addresses of the ready endpoints without a node name, parsed, sorted, once each.
    pub addresses: Box<[IpAddr]>,
}

impl CachedSlice {
    /// What the agent keeps of `e`; `None` without a namespace or name.
    pub fn new(e: &EndpointSlice, interner: &mut Interner) -> Option<Self> {
        let m = &e.metadata;
        let namespace = interner.intern(m.namespace.as_deref()?);
        let name = Arc::from(m.name.as_deref()?);
        let service = m
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME_SLICE))
            .map(|s| Arc::from(s.as_str()));
        let mut nodes: Vec<&str> = Vec::new();
        let mut addresses: Vec<IpAddr> = Vec::new();
        let ready = e
            .endpoints
            .iter()
            .flatten()
            .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for ep in ready {
            match ep.node_name.as_deref() {
                Some(n) if !n.is_empty() => nodes.push(n),
                _ => addresses.extend(ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok())),
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        addresses.sort_unstable();
        addresses.dedup();
        Some(CachedSlice {
            namespace,
            name,
            service,
            nodes: nodes.into_iter().map(|n| interner.intern(n)).collect(),
            addresses: addresses.into(),
        })
    }
}

/// What the agent keeps of a Node (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedNode {
    pub name: Arc<str>,
    pub labels: Labels,
    /// `spec.podCIDRs` and `spec.podCIDR`, parsed.
    pub pod_cidrs: Box<[IpNetwork]>,
    /// `status.addresses[].address`, parsed.
    pub addresses: Box<[IpAddr]>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

impl CachedNode {
    /// What the agent keeps of `n`; `None` without a name.
    pub fn new(n: &Node, interner: &mut Interner) -> Option<Self> {
        let name = interner.intern(n.metadata.name.as_deref()?);
        let spec = n.spec.as_ref();
        let pod_cidrs = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .chain(spec.and_then(|s| s.pod_cidr.as_deref()))
            .filter_map(|c| c.parse().ok())
            .collect();
        let status = n.status.as_ref();
        Some(CachedNode {
            name,
            labels: Labels::new(n.metadata.labels.iter().flatten(), interner),
            pod_cidrs,
            addresses: status
                .and_then(|s| s.addresses.as_ref())
                .map(|v| v.iter().filter_map(|a| a.address.parse().ok()).collect())
                .unwrap_or_default(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        })
    }

    /// Whether `ip` is one of the node's addresses or lies in one of its pod CIDRs (for
    /// endpoints that name no node).
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.addresses.contains(&ip) || self.pod_cidrs.iter().any(|c| c.contains(ip))
    }
}

/// A kind the agent caches narrowly: built from its Kubernetes object, keyed by namespace and
/// name (cluster-scoped kinds: the empty namespace).
pub trait Narrow: Sized + Send + Sync + 'static {
    /// The Kubernetes object.
    type Object: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;
    fn narrow(o: &Self::Object, interner: &mut Interner) -> Option<Self>;
    /// (namespace, name).
    fn key(&self) -> (Arc<str>, Arc<str>);
}

impl Narrow for CachedService {
    type Object = Service;
    fn narrow(o: &Service, interner: &mut Interner) -> Option<Self> {
        CachedService::new(o, interner)
    }
    fn key(&self) -> (Arc<str>, Arc<str>) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl Narrow for CachedSlice {
    type Object = EndpointSlice;
    fn narrow(o: &EndpointSlice, interner: &mut Interner) -> Option<Self> {
        CachedSlice::new(o, interner)
    }
    fn key(&self) -> (Arc<str>, Arc<str>) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl Narrow for CachedNode {
    type Object = Node;
    fn narrow(o: &Node, interner: &mut Interner) -> Option<Self> {
        CachedNode::new(o, interner)
    }
    fn key(&self) -> (Arc<str>, Arc<str>) {
        (Arc::from(""), self.name.clone())
    }
}

/// namespace → name → object.
type Map<T> = HashMap<Arc<str>, HashMap<Arc<str>, Arc<T>>>;

struct Shared<T> {
    map: RwLock<Map<T>>,
    /// A relist in progress: the objects listed so far (swapped in at `InitDone`).
    relist: Mutex<Option<Map<T>>>,
    interner: Arc<Mutex<Interner>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// A narrow cache shared between its watch task and its readers.
pub struct Store<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

fn insert<T: Narrow>(map: &mut Map<T>, obj: T) {
    let (ns, name) = obj.key();
    map.entry(ns).or_default().insert(name, Arc::new(obj));
}

impl<T: Narrow> Store<T> {
    /// An empty store (not ready until its first list has been applied) interning into
    /// `interner`.
    pub fn new(interner: Arc<Mutex<Interner>>) -> Self {
        Store {
            shared: Arc::new(Shared {
                map: RwLock::new(HashMap::new()),
                relist: Mutex::new(None),
                interner,
                ready: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Every object, in no particular order (the lock is held only to copy the `Arc`s).
    pub fn snapshot(&self) -> Vec<Arc<T>> {
        let map = self
            .shared
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().flat_map(|m| m.values().cloned()).collect()
    }

    /// One object by namespace (empty for cluster-scoped kinds) and name.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let map = self
            .shared
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(namespace)?.get(name).cloned()
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        let map = self
            .shared
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has been applied.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits until the first list has been applied.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `self`: this cannot fail while we wait.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Applies one watch event: `Apply`/`Delete` at once; a relist (`Init`, `InitApply`…,
    /// `InitDone`) is collected apart and replaces the contents at `InitDone`, so readers never
    /// see a half-listed cache. An object that cannot be narrowed (no name) is left out.
    pub fn apply(&self, ev: Event<T::Object>) {
        let sh = &*self.shared;
        let narrow = |o: &T::Object| T::narrow(o, &mut lock(&sh.interner));
        match ev {
            Event::Apply(o) => {
                if let Some(obj) = narrow(&o) {
                    insert(
                        &mut sh.map.write().unwrap_or_else(PoisonError::into_inner),
                        obj,
                    );
                }
            }
            Event::Delete(o) => {
                let m = o.meta();
                let ns = m.namespace.as_deref().unwrap_or("");
                if let Some(name) = m.name.as_deref() {
                    let mut map = sh.map.write().unwrap_or_else(PoisonError::into_inner);
                    if let Some(names) = map.get_mut(ns) {
                        names.remove(name);
                        if names.is_empty() {
                            map.remove(ns);
                        }
                    }
                }
            }
            Event::Init => *lock(&sh.relist) = Some(HashMap::new()),
            Event::InitApply(o) => {
                if let Some(obj) = narrow(&o) {
                    insert(lock(&sh.relist).get_or_insert_with(HashMap::new), obj);
                }
            }
            Event::InitDone => {
                let listed = lock(&sh.relist).take().unwrap_or_default();
                let old = std::mem::replace(
                    &mut *sh.map.write().unwrap_or_else(PoisonError::into_inner),
                    listed,
                );
                // What only the old contents referred to leaves the interner too.
                drop(old);
                lock(&sh.interner).prune();
                sh.ready.send_replace(true);
            }
        }
    }
}

/// Starts the watch task filling `store` from `api`, waking `notify` on every event. Watch
/// errors are counted (`api_errors{kind="watch_<kind>"}`) and retried with kube-runtime's
/// default backoff.
pub fn watch<T: Narrow>(
    api: Api<T::Object>,
    cfg: watcher::Config,
    store: Store<T>,
    notify: Arc<Notify>,
    metrics: Metrics,
    kind: &'static str,
) -> tokio::task::JoinHandle<()> {
    let stream = watcher::watcher(api, cfg).default_backoff();
    tokio::spawn(async move {
        drive(stream, &metrics, kind, |ev| {
            store.apply(ev);
            notify.notify_one();
        })
        .await
    })
}

/// Runs a watch stream (kube-runtime retries with backoff) to its end: `on_event` for every
/// event; errors are counted (`api_errors{kind="watch_<kind>"}`) and logged. Every watch of
/// the agent goes through here.
pub(super) async fn drive<E>(
    stream: impl futures::Stream<Item = Result<E, watcher::Error>>,
    metrics: &Metrics,
    kind: &str,
    mut on_event: impl FnMut(E),
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => on_event(ev),
            Err(e) => {
                metrics
                    .api_errors
                    .with_label_values(&[&format!("watch_{kind}")])
                    .inc();
                warn!(kind, error = %e, "watch error (retrying)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Service as a real API server returns it after the controller's status patch.
    fn full_service() -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "echo", "namespace": "demo", "uid": "6b1f1c3e-0000-4000-8000-000000000001",
                "resourceVersion": "4242", "generation": 1,
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "labels": {"app": "echo", "lb-pool": "app"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"echo\"}}"},
                "managedFields": [
                    {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                     "time": "2026-11-22T10:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:selector": {}, "f:type": {}}}}
                ]
            },
            "spec": {
                "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "loadBalancerClass": "ferrolb.io/l2-announcer",
                "externalIPs": ["198.51.100.77", "not-an-ip", " 198.51.100.78 "],
                "clusterIP": "203.0.113.10", "clusterIPs": ["203.0.113.10"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31000}],
                "selector": {"app": "echo"}
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "198.51.100.10", "ipMode": "VIP"}, {"hostname": "x.example"}]},
                "conditions": [{"type": "ferrolb.io/IPAMRequestSatisfied", "status": "True", "reason": "Satisfied",
                                "message": "198.51.100.10 from pool app", "lastTransitionTime": "2026-11-22T10:00:01Z"}]
            }
        }))
        .expect("valid Service")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn service_keeps_what_eligibility_and_events_read() {
        let mut i = Interner::default();
        let s = CachedService::new(&full_service(), &mut i).expect("named");
        assert_eq!((&*s.namespace, &*s.name), ("demo", "echo"));
        assert_eq!(
            s.uid.as_deref(),
            Some("6b1f1c3e-0000-4000-8000-000000000001")
        );
        assert_eq!(s.labels.get("app"), Some("echo"));
        assert_eq!(s.labels.get("lb-pool"), Some("app"));
        assert_eq!(s.labels.len(), 2);
        assert_eq!(s.label(LABEL_SERVICE_NAMESPACE), Some("demo"));
        assert_eq!(s.label(LABEL_SERVICE_NAME), Some("echo"));
        assert!(s.load_balancer && s.etp_local);
        assert_eq!(s.class.as_deref(), Some("ferrolb.io/l2-announcer"));
        assert_eq!(
            &*s.external_ips,
            [ip("198.51.100.77"), ip("198.51.100.78")],
            "garbage skipped, blanks trimmed"
        );
        assert_eq!(&*s.ingress, [ip("198.51.100.10")]);

        let mut bare = full_service();
        bare.spec = None;
        bare.status = None;
        bare.metadata.labels = None;
        let b = CachedService::new(&bare, &mut i).expect("named");
        assert!(!b.load_balancer && !b.etp_local && b.class.is_none());
        assert!(b.ingress.is_empty() && b.external_ips.is_empty() && b.labels.is_empty());
        bare.metadata.namespace = None;
        assert!(CachedService::new(&bare, &mut i).is_none());
    }

    #[test]
    fn virtual_labels_override_real_ones() {
        let mut svc = full_service();
        svc.metadata.labels = Some(
            [(LABEL_SERVICE_NAME.to_string(), "other".to_string())]
                .into_iter()
                .collect(),
        );
        let s = CachedService::new(&svc, &mut Interner::default()).unwrap();
        assert_eq!(s.label(LABEL_SERVICE_NAME), Some("echo"));
    }

    #[test]
    fn repeated_strings_are_stored_once() {
        let mut i = Interner::default();
        let services: Vec<CachedService> = (0..100)
            .map(|n| {
                let mut s = full_service();
                s.metadata.name = Some(format!("echo-{n}"));
                CachedService::new(&s, &mut i).unwrap()
            })
            .collect();
        // demo, app, echo, lb-pool, the class: one copy each.
        assert_eq!(i.len(), 5, "{i:?}");
        assert!(Arc::ptr_eq(&services[0].namespace, &services[99].namespace));
        assert!(Arc::ptr_eq(
            &services[0].labels.0[0].0,
            &services[99].labels.0[0].0
        ));
        // What no object refers to any more is swept.
        drop(services);
        i.prune();
        assert!(i.is_empty());
    }

    #[test]
    fn endpoint_slice_keeps_ready_endpoints_by_node_or_address() {
        let full: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-abcde", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "echo", "endpointslice.kubernetes.io/managed-by": "x"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "nodeName": "n1"},
                {"addresses": ["192.0.2.12"], "conditions": {"ready": true}, "nodeName": "n2", "zone": "a",
                 "hostname": "pod-2", "targetRef": {"kind": "Pod", "name": "echo-2", "namespace": "demo", "uid": "u"}},
                {"addresses": ["10.244.3.7"], "conditions": {}},
                {"addresses": ["10.244.3.8"], "nodeName": ""}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .expect("valid EndpointSlice");
        let e = CachedSlice::new(&full, &mut Interner::default()).unwrap();
        assert_eq!(e.service.as_deref(), Some("echo"));
        assert_eq!(
            e.nodes.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["n2"],
            "the endpoint that is not ready is dropped"
        );
        assert_eq!(&*e.addresses, [ip("10.244.3.7"), ip("10.244.3.8")]);
    }

    #[test]
    fn endpoints_on_one_node_collapse_into_one() {
        // 60 ready pods over three nodes, 6 of them not ready, 4 without a node name (two with
        // the same address).
        let mut eps: Vec<serde_json::Value> = (0..60)
            .map(|i| {
                serde_json::json!({"addresses": [format!("10.244.{}.{}", i % 3, i)],
                    "conditions": {"ready": i % 10 != 0}, "nodeName": format!("n{}", i % 3)})
            })
            .collect();
        for a in ["10.244.9.1", "10.244.9.1", "10.244.9.2", "10.244.9.3"] {
            eps.push(serde_json::json!({"addresses": [a]}));
        }
        let e: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "demo",
                         "labels": {LABEL_SERVICE_NAME_SLICE: "web"}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .expect("valid EndpointSlice");
        let e = CachedSlice::new(&e, &mut Interner::default()).unwrap();
        let nodes: Vec<&str> = e.nodes.iter().map(|n| &**n).collect();
        assert_eq!(nodes, ["n0", "n1", "n2"]);
        assert_eq!(
            &*e.addresses,
            [ip("10.244.9.1"), ip("10.244.9.2"), ip("10.244.9.3")]
        );
    }

    #[test]
    fn node_keeps_labels_cidrs_addresses_and_ready() {
        let full: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"], "providerID": "x"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.11"}, {"type": "Hostname", "address": "n1"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"}
                ],
                "images": [{"names": ["registry.example/big@sha256:00"], "sizeBytes": 1}]
            }
        }))
        .expect("valid Node");
        let mut i = Interner::default();
        let n = CachedNode::new(&full, &mut i).unwrap();
        assert_eq!(&*n.name, "n1");
        assert_eq!(n.labels.get("kubernetes.io/hostname"), Some("n1"));
        assert!(n.ready);
        assert_eq!(&*n.addresses, [ip("192.0.2.11")]);
        assert!(n.owns(ip("10.244.1.9")) && n.owns(ip("fd00:1::9")) && n.owns(ip("192.0.2.11")));
        assert!(!n.owns(ip("10.244.2.9")));
        let mut not_ready = full.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .status = "Unknown".into();
        assert!(!CachedNode::new(&not_ready, &mut i).unwrap().ready);
    }

    fn named(ns: &str, name: &str) -> Service {
        let mut s = full_service();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s
    }

    #[tokio::test]
    async fn a_relist_replaces_the_contents_at_once_and_deletes_remove() {
        let store: Store<CachedService> = Store::new(Arc::default());
        assert!(!store.is_ready());
        store.apply(Event::Init);
        store.apply(Event::InitApply(named("demo", "a")));
        store.apply(Event::InitApply(named("demo", "b")));
        assert!(
            store.is_empty(),
            "nothing shows before the list is complete"
        );
        store.apply(Event::InitDone);
        store.wait_until_ready().await;
        assert_eq!(store.len(), 2);
        store.apply(Event::Apply(named("other", "c")));
        store.apply(Event::Delete(named("demo", "a")));
        assert!(store.get("demo", "a").is_none());
        assert_eq!(&*store.get("other", "c").expect("applied").name, "c");
        // A relist after a watch gap: what the new list lacks is gone.
        store.apply(Event::Init);
        store.apply(Event::InitApply(named("demo", "b")));
        assert_eq!(store.len(), 2, "old contents kept while relisting");
        store.apply(Event::InitDone);
        let mut names: Vec<String> = store
            .snapshot()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["b"]);
        assert!(store.is_ready());
    }

    /// The point of the narrow types: a typical Service costs a fraction of the trimmed
    /// k8s-openapi struct it replaces (measured by serialised size there; here by the struct and
    /// its own allocations).
    #[test]
    fn a_cached_service_is_small() {
        let mut i = Interner::default();
        let s = CachedService::new(&full_service(), &mut i).unwrap();
        let own = std::mem::size_of::<CachedService>()
            + s.name.len()
            + s.uid.as_deref().map_or(0, str::len)
            + s.labels.len() * std::mem::size_of::<(Arc<str>, Arc<str>)>()
            + (s.ingress.len() + s.external_ips.len()) * std::mem::size_of::<IpAddr>();
        assert!(own < 400, "{own} bytes");
        assert!(
            std::mem::size_of::<Service>() > 2 * std::mem::size_of::<CachedService>(),
            "{} vs {}",
            std::mem::size_of::<Service>(),
            std::mem::size_of::<CachedService>()
        );
    }
}
