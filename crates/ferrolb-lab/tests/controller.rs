//! The LB-IPAM controller against the in-process API stand-in (`kube_standin::ApiServer`); the
//! scenarios that need no stand-in counter run on a real kube-apiserver too (`real_*`, one server
//! shared by this binary, those tests one at a time: pools are cluster-wide; they print
//! `skipped: no kube-apiserver ...` and pass when `../shared/kube` is absent).
//! One scenario per test; objects come from the builder helpers below; every wait is a watch
//! (`kube::runtime::wait::await_condition`) with a generous deadline, never a fixed sleep.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ferrolb::api::{
    IpBlock, IpMode, LoadBalancerIPPool, LoadBalancerIPPoolSpec, ANN_IPS, ANN_REALLOCATE,
    COND_IPAM_SATISFIED, COND_NOT_COVERED, LB_CLASS,
};
use ferrolb::controller::{Context, Controller, ControllerConfig, LeaseTimings, Metrics};
use ferrolb::fixtures::ServiceBuilder;
use ferrolb::k8s::service::ingress_ips as ingress;
use ferrolb_lab::harness::wait_until_async;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use kube_standin::ApiServer;

/// Deadline for every wait (CI has 2 cores shared by many jobs).
const DEADLINE: Duration = Duration::from_secs(30);
const NS: &str = "demo";

/// Polls the sync condition `f` every `every` (the harness's [`wait_until_async`], so the
/// runtime keeps running the controllers meanwhile) until it gives a value; after [`DEADLINE`]
/// the test fails naming `what` and what `state` says now.
async fn poll<T>(
    what: &str,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    state: impl FnOnce() -> String,
) -> T {
    match wait_until_async(what, DEADLINE, every, || std::future::ready(Ok(f()))).await {
        Ok(v) => v,
        Err(e) => panic!("{e:#}; {}", state()),
    }
}

// ----- builders ------------------------------------------------------------------------------

/// The usual test Service `demo/<name>` (the one builder: [`ServiceBuilder`]).
fn svc(name: &str) -> ServiceBuilder {
    ServiceBuilder::load_balancer(NS, name)
}

struct PoolB(LoadBalancerIPPool);

fn pool(name: &str) -> PoolB {
    PoolB(LoadBalancerIPPool::new(
        name,
        LoadBalancerIPPoolSpec {
            blocks: vec![],
            ..Default::default()
        },
    ))
}

impl PoolB {
    fn cidr(mut self, c: &str) -> Self {
        self.0.spec.blocks.push(IpBlock {
            cidr: Some(c.into()),
            ..Default::default()
        });
        self
    }
    fn select(mut self, k: &str, v: &str) -> Self {
        self.0.spec.service_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..Default::default()
        });
        self
    }
    fn priority(mut self, p: i32) -> Self {
        self.0.spec.priority = Some(p);
        self
    }
    fn ns_select(mut self, k: &str, v: &str) -> Self {
        self.0.spec.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..Default::default()
        });
        self
    }
    fn build(self) -> LoadBalancerIPPool {
        self.0
    }
}

// ----- harness -------------------------------------------------------------------------------

struct Harness {
    /// The stand-in; `None` on the real server (then `client` is its admin).
    api: Option<ApiServer>,
    client: Client,
    /// Real-server tests run one at a time (pools and the controller's watches are cluster-wide).
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static REAL_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `$scenario` on the stand-in as test `$stand_in` and on the real server as `$real`.
macro_rules! on_both {
    ($scenario:ident, $stand_in:ident, $real:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $stand_in() {
            $scenario(Harness::new().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $real() {
            if let Some(h) = Harness::real().await {
                $scenario(h).await
            }
        }
    };
}

struct Replica {
    ctx: Context,
    registry: prometheus::Registry,
    handle: tokio::task::JoinHandle<ferrolb::controller::Result<()>>,
}

impl Replica {
    /// The Prometheus text exposition of this replica's registry.
    fn metrics_text(&self) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut buf,
        )
        .expect("encode metrics");
        String::from_utf8(buf).expect("utf-8 metrics")
    }

    /// Waits until the metrics text contains every line of `lines`.
    async fn wait_metrics(&self, lines: &[&str]) {
        let shows = |text: String| lines.iter().all(|l| text.lines().any(|x| x == *l));
        poll(
            &format!("the metrics to show {lines:?}"),
            Duration::from_millis(50),
            || shows(self.metrics_text()).then_some(()),
            || format!("metrics now:\n{}", self.metrics_text()),
        )
        .await
    }

    fn is_leader(&self) -> bool {
        self.ctx.metrics.is_leader.get() == 1
    }
    /// Graceful stop: the Lease is released.
    async fn stop(self) {
        self.ctx.shutdown.cancel();
        match tokio::time::timeout(DEADLINE, self.handle).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("controller did not stop cleanly: {other:?}"),
        }
    }
    /// As if the process died: nothing is released.
    fn kill(self) {
        self.handle.abort();
    }
}

fn test_timings() -> LeaseTimings {
    LeaseTimings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
    }
}

impl Harness {
    async fn new() -> Self {
        let api = ApiServer::new();
        api.register_crd(&LoadBalancerIPPool::crd())
            .expect("register the pool CRD");
        let client = api.client_as("test");
        let nss: Api<Namespace> = Api::all(client.clone());
        for ns in [NS, "ferrolb-system"] {
            let n = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nss.create(&PostParams::default(), &n).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create namespace {ns}: {e}"),
            }
        }
        Harness {
            api: Some(api),
            client,
            _serial: None,
        }
    }

    /// The shared real kube-apiserver with the CRDs and namespaces, cleared of what earlier
    /// tests left (Services of [`NS`], pools, Events, the controller's Lease); `None` (after
    /// saying why) to skip.
    async fn real() -> Option<Self> {
        if !ferrolb_lab::netns::is_root() {
            eprintln!("skipped: not root (the real kube-apiserver runs in a network namespace)");
            return None;
        }
        let Some(real) = ferrolb_lab::realapi::shared_async().await else {
            eprintln!("{}", ferrolb_lab::realapi::SKIP);
            return None;
        };
        let serial = REAL_SERIAL.lock().await;
        let client = real.admin();
        let crds: Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = Api::all(client.clone());
        for (_, crd) in ferrolb::crds::all() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create CRD: {e}"),
            }
        }
        let nss: Api<Namespace> = Api::all(client.clone());
        for ns in [NS, "ferrolb-system"] {
            let n = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nss.create(&PostParams::default(), &n).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create namespace {ns}: {e}"),
            }
        }
        // The CRDs are served once Established: until then pools answer 404.
        let pools: Api<LoadBalancerIPPool> = Api::all(client.clone());
        let pools = &pools;
        wait_until_async(
            "the pool CRD to be served",
            DEADLINE,
            Duration::from_millis(100),
            move || async move { Ok(pools.list(&ListParams::default()).await.ok()) },
        )
        .await
        .expect("pool CRD served");
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        let _ = pools
            .delete_collection(&dp, &lp)
            .await
            .expect("delete pools");
        let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
        let _ = svcs
            .delete_collection(&dp, &lp)
            .await
            .expect("delete Services");
        let _ = Api::<Event>::namespaced(client.clone(), NS)
            .delete_collection(&dp, &lp)
            .await
            .expect("delete Events");
        match Api::<Lease>::namespaced(client.clone(), "ferrolb-system")
            .delete("ferrolb-controller", &dp)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete the controller Lease: {e}"),
        }
        Some(Harness {
            api: None,
            client,
            _serial: Some(serial),
        })
    }

    /// The stand-in, for what only it has (fault switches, request counters).
    fn stand_in(&self) -> &ApiServer {
        self.api
            .as_ref()
            .expect("a stand-in-only check in a real-server test")
    }

    fn start(&self, identity: &str) -> Replica {
        self.start_with(identity, |_| {})
    }

    fn start_with(&self, identity: &str, tweak: impl FnOnce(&mut ControllerConfig)) -> Replica {
        let mut cfg = ControllerConfig::new(identity);
        cfg.lease = test_timings();
        tweak(&mut cfg);
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        let client = match &self.api {
            Some(api) => api.client_as(identity),
            None => self.client.clone(),
        };
        let ctx = Context::new(client, cfg, metrics);
        let handle = tokio::spawn(Controller::run(ctx.clone()));
        Replica {
            ctx,
            registry,
            handle,
        }
    }

    fn svcs(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn pools(&self) -> Api<LoadBalancerIPPool> {
        Api::all(self.client.clone())
    }

    async fn create_pool(&self, p: PoolB) -> LoadBalancerIPPool {
        self.pools()
            .create(&PostParams::default(), &p.build())
            .await
            .expect("create pool")
    }

    async fn create_svc(&self, s: ServiceBuilder) -> Service {
        self.svcs()
            .create(&PostParams::default(), &s.build())
            .await
            .expect("create service")
    }

    /// Creates Service `name` and waits until it is satisfied.
    async fn wait_satisfied_after_create(&self, name: &str) -> Vec<IpAddr> {
        self.create_svc(svc(name)).await;
        self.wait_satisfied(name).await
    }

    /// Barrier for when no pool allocates: create a Service and wait until it is reported
    /// unsatisfied (the controller handles events in order), then delete it.
    async fn barrier_unsatisfied(&self, name: &str) {
        self.create_svc(svc(name)).await;
        self.wait_svc(name, "IPAMRequestSatisfied=False", |s| {
            our_cond(s).is_some_and(|c| c.status == "False")
        })
        .await;
        self.svcs()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete barrier");
    }

    /// Waits (watching) until the Service satisfies `pred`.
    async fn wait_svc(&self, name: &str, what: &str, pred: impl Fn(&Service) -> bool) -> Service {
        wait_obj(self.svcs(), "Service", name, what, pred, |s| s.status).await
    }

    /// Waits until the Service has a satisfied condition and returns its addresses.
    async fn wait_satisfied(&self, name: &str) -> Vec<IpAddr> {
        let s = self
            .wait_svc(name, "IPAMRequestSatisfied=True", |s| {
                our_cond(s).is_some_and(|c| c.status == "True") && !ingress(s).is_empty()
            })
            .await;
        ingress(&s)
    }

    /// Waits until the Service's condition is False with `reason`.
    async fn wait_unsatisfied(&self, name: &str, reason: &str) -> Service {
        self.wait_svc(name, &format!("IPAMRequestSatisfied=False/{reason}"), |s| {
            our_cond(s).is_some_and(|c| c.status == "False" && c.reason == reason)
        })
        .await
    }

    async fn wait_pool(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&LoadBalancerIPPool) -> bool,
    ) -> LoadBalancerIPPool {
        wait_obj(self.pools(), "pool", name, what, pred, |p| p.status).await
    }

    /// Events of `reason` about `name` (events.k8s.io/v1), waiting until at least one exists.
    async fn wait_event(&self, ns: &str, name: &str, reason: &str) -> Event {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let find = |list: Vec<Event>| {
            list.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
        };
        // Events have no event to await for their own creation without a watch per test;
        // poll with a deadline.
        let (api, find) = (&api, &find);
        wait_until_async(
            &format!("a {reason} Event about {name}"),
            DEADLINE,
            Duration::from_millis(100),
            move || async move { Ok(find(api.list(&ListParams::default()).await?.items)) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Barrier: create a fresh Service of ours and wait until it is served. The controller
    /// handles events in order, so everything created before it has been looked at.
    async fn barrier(&self, name: &str) -> Vec<IpAddr> {
        self.create_svc(svc(name)).await;
        let ips = self.wait_satisfied(name).await;
        self.svcs()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete barrier");
        ips
    }

    /// Waits until one of the replicas leads and returns its index.
    async fn wait_leader(&self, replicas: &[&Replica]) -> usize {
        let leader = || {
            let leaders: Vec<usize> = replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_leader())
                .map(|(i, _)| i)
                .collect();
            assert!(leaders.len() <= 1, "two replicas lead at once: {leaders:?}");
            match leaders[..] {
                [i] => Some(i),
                _ => None,
            }
        };
        poll("a leader", Duration::from_millis(50), leader, String::new).await
    }

    /// Write requests (create/update/patch/delete) a client identity made on `resource`.
    fn writes_by(&self, client: &str, resource: &str) -> u64 {
        self.api
            .as_ref()
            .expect("request counters are the stand-in's")
            .request_counts()
            .into_iter()
            .filter(|(c, verb, res, _)| {
                c == client
                    && res == resource
                    && matches!(verb.as_str(), "create" | "update" | "patch" | "delete")
            })
            .map(|(_, _, _, n)| n)
            .sum()
    }
}

fn our_cond(s: &Service) -> Option<Condition> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == COND_IPAM_SATISFIED)
        .cloned()
}

/// Waits (watching, up to [`DEADLINE`]) until object `name` satisfies `pred`; on timeout panics
/// with `what` and the object's current status (`status` extracts it).
async fn wait_obj<K, S>(
    api: Api<K>,
    kind: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&K) -> bool,
    status: impl Fn(K) -> Option<S>,
) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    S: serde::Serialize,
{
    let cond = move |o: Option<&K>| o.is_some_and(&pred);
    match tokio::time::timeout(
        DEADLINE,
        kube::runtime::wait::await_condition(api.clone(), name, cond),
    )
    .await
    {
        Ok(Ok(Some(o))) => o,
        other => {
            let cur = api.get_opt(name).await.ok().flatten();
            panic!(
                "{kind} {name}: {what} not reached within {DEADLINE:?} ({:?}); status now: {}",
                other.err(),
                serde_json::to_string(&cur.and_then(status)).unwrap_or_default()
            )
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn in_cidr(a: IpAddr, cidr: &str) -> bool {
    let net: ipnetwork::IpNetwork = cidr.parse().expect("cidr literal");
    net.contains(a)
}

// ----- scenarios -----------------------------------------------------------------------------

on_both!(
    scenario_allocation,
    allocation_writes_status_condition_and_event,
    real_allocation
);

async fn scenario_allocation(h: Harness) {
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(
        svc("web")
            .label("team", "blue")
            .annotation("service.cilium.io/global", "true"),
    )
    .await;
    let s = h
        .wait_svc("web", "address and condition", |s| {
            !ingress(s).is_empty() && our_cond(s).is_some()
        })
        .await;
    // The lowest usable address (the network address is reserved).
    assert_eq!(ingress(&s), vec![ip("198.51.100.1")]);
    let ing = &s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.clone())
        .and_then(|lb| lb.ingress)
        .expect("ingress")[0];
    assert_eq!(ing.ip_mode.as_deref(), Some("VIP"));
    let c = our_cond(&s).expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Satisfied")
    );
    assert!(
        c.message.contains("198.51.100.1") && c.message.contains("app"),
        "{}",
        c.message
    );
    // Foreign labels/annotations are kept.
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("blue"));
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("service.cilium.io/global").map(String::as_str),
        Some("true")
    );
    // An events.k8s.io/v1 Event that the server accepted.
    let ev = h.wait_event(NS, "web", "IPAllocated").await;
    assert_eq!(
        ev.reporting_controller.as_deref(),
        Some("ferrolb.io/controller")
    );
    assert_eq!(ev.reporting_instance.as_deref(), Some("ctrl-a"));
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(ev.event_time.is_some());
    assert!(ev.note.unwrap_or_default().contains("198.51.100.1"));
    ctl.wait_metrics(&[
        "ferrolb_controller_allocations_total 1",
        "ferrolb_controller_is_leader 1",
        "ferrolb_controller_ready 1",
        "ferrolb_controller_unsatisfied_services 0",
        r#"ferrolb_pool_ips{pool="app",state="total"} 254"#,
        r#"ferrolb_pool_ips{pool="app",state="used"} 1"#,
        r#"ferrolb_pool_ips{pool="app",state="available"} 253"#,
    ])
    .await;
    assert!(ctl.ctx.health.is_ready());
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_on_delete_serves_the_waiting_service() {
    let h = Harness::new().await;
    h.create_pool(pool("one").cidr("198.51.100.7/32")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("first")).await;
    assert_eq!(h.wait_satisfied("first").await, vec![ip("198.51.100.7")]);
    h.create_svc(svc("second")).await;
    let s = h.wait_unsatisfied("second", "OutOfIPs").await;
    assert!(ingress(&s).is_empty());
    h.wait_event(NS, "second", "AllocationFailed").await;
    h.svcs()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(h.wait_satisfied("second").await, vec![ip("198.51.100.7")]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_our_type_or_class_clears_status_and_foreign_classes_are_untouched() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("web").class(LB_CLASS)).await;
    let ips = h.wait_satisfied("web").await;
    assert_eq!(ips.len(), 1);
    // Leave our type: ingress and condition are cleared, an IPReleased Event is written.
    let patch = serde_json::json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null,
        "allocateLoadBalancerNodePorts": null, "externalTrafficPolicy": null}});
    h.svcs()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("switch to ClusterIP");
    let s = h
        .wait_svc("web", "cleared", |s| {
            ingress(s).is_empty() && our_cond(s).is_none()
        })
        .await;
    assert_eq!(s.spec.and_then(|s| s.type_).as_deref(), Some("ClusterIP"));
    h.wait_event(NS, "web", "IPReleased").await;
    // A Service of a foreign class is never written to, even when it shows an address
    // from our pool; its address is not taken by us either.
    h.create_svc(svc("theirs").class("example.com/other")).await;
    let theirs_ip =
        serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}});
    h.svcs()
        .patch_status("theirs", &PatchParams::default(), &Patch::Merge(&theirs_ip))
        .await
        .expect("foreign controller writes its status");
    let before = h.svcs().get("theirs").await.expect("get");
    let barrier_ips = h.barrier("barrier").await;
    assert_eq!(barrier_ips.len(), 1);
    let after = h.svcs().get("theirs").await.expect("get");
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "foreign Service was written to"
    );
    assert!(our_cond(&after).is_none());
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_address_is_honoured_and_unsatisfiable_requests_are_reported() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/25")).await;
    h.create_pool(
        pool("restricted")
            .cidr("198.51.100.128/25")
            .select("tier", "edge"),
    )
    .await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("wants-50").ips("198.51.100.50")).await;
    assert_eq!(
        h.wait_satisfied("wants-50").await,
        vec![ip("198.51.100.50")]
    );
    // Outside every pool: reported, not replaced by another address.
    h.create_svc(svc("outside").ips("192.0.2.50")).await;
    let s = h.wait_unsatisfied("outside", "NoPool").await;
    assert!(ingress(&s).is_empty());
    // Held by another Service that does not share.
    h.create_svc(svc("taken").ips("198.51.100.50")).await;
    let s = h.wait_unsatisfied("taken", "AlreadyAllocated").await;
    assert!(ingress(&s).is_empty());
    // In a pool whose selector does not match.
    h.create_svc(svc("mismatch").ips("198.51.100.200")).await;
    let s = h.wait_unsatisfied("mismatch", "PoolSelectorMismatch").await;
    assert!(ingress(&s).is_empty());
    // Malformed annotation.
    h.create_svc(svc("garbage").ips("not-an-ip")).await;
    let s = h.wait_unsatisfied("garbage", "InvalidRequest").await;
    assert!(
        our_cond(&s).is_some_and(|c| c.message.contains(ANN_IPS)),
        "{:?}",
        our_cond(&s)
    );
    // Fixing the request is picked up.
    let fix = serde_json::json!({"metadata": {"annotations": {ANN_IPS: "198.51.100.60"}}});
    h.svcs()
        .patch("outside", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fix request");
    assert_eq!(h.wait_satisfied("outside").await, vec![ip("198.51.100.60")]);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_compatible_services_share_and_incompatible_ones_do_not() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    // DNS over TCP and UDP on one address.
    h.create_svc(svc("dns-tcp").sharing("dns").ports(&[(53, "TCP")]))
        .await;
    let a = h.wait_satisfied("dns-tcp").await;
    h.create_svc(svc("dns-udp").sharing("dns").ports(&[(53, "UDP")]))
        .await;
    let b = h.wait_satisfied("dns-udp").await;
    assert_eq!(a, b, "compatible Services share the address");
    // Same key, overlapping port: gets its own address.
    h.create_svc(svc("dns-tcp-2").sharing("dns").ports(&[(53, "TCP")]))
        .await;
    let c = h.wait_satisfied("dns-tcp-2").await;
    assert_ne!(a, c);
    // Asking explicitly for the shared address with an overlapping port: refused.
    h.create_svc(
        svc("clash")
            .sharing("dns")
            .ports(&[(53, "UDP")])
            .ips(&a[0].to_string()),
    )
    .await;
    let s = h.wait_unsatisfied("clash", "AlreadyAllocated").await;
    assert!(ingress(&s).is_empty());
    // Without a sharing key, never shared.
    h.create_svc(svc("loner").ports(&[(8080, "TCP")]).ips(&a[0].to_string()))
        .await;
    h.wait_unsatisfied("loner", "AlreadyAllocated").await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_policies() {
    let h = Harness::new().await;
    h.create_pool(pool("v4").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("require").families(&["IPv4", "IPv6"], "RequireDualStack"))
        .await;
    let s = h.wait_unsatisfied("require", "NoPool").await;
    assert!(
        ingress(&s).is_empty(),
        "RequireDualStack gets nothing without IPv6"
    );
    h.create_svc(svc("prefer").families(&["IPv4", "IPv6"], "PreferDualStack"))
        .await;
    let ips = h.wait_satisfied("prefer").await;
    assert_eq!(ips.len(), 1);
    assert!(ips[0].is_ipv4());
    // An IPv6 pool appears: the waiting Service is retried and gets both families.
    h.create_pool(pool("v6").cidr("2001:db8:100::/112")).await;
    let ips = h.wait_satisfied("require").await;
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips
        .iter()
        .any(|a| a.is_ipv4() && in_cidr(*a, "198.51.100.0/24")));
    assert!(ips
        .iter()
        .any(|a| a.is_ipv6() && in_cidr(*a, "2001:db8:100::/112")));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_overlapping_pool_is_marked_conflict() {
    let h = Harness::new().await;
    // Named so that name order contradicts age: only creationTimestamp says which is newer.
    let older = h
        .create_pool(pool("zz-older").cidr("198.51.100.0/25"))
        .await;
    let ctl = h.start("ctrl-a");
    h.wait_pool("zz-older", "status written", |p| p.status.is_some())
        .await;
    // creationTimestamp has whole seconds: make sure the second pool is created in a later one.
    let older_sec = older
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .expect("creationTimestamp");
    poll(
        "the second after the older pool's",
        Duration::from_millis(50),
        || (jiff::Timestamp::now().as_second() > older_sec).then_some(()),
        String::new,
    )
    .await;
    let newer = h
        .create_pool(pool("aa-newer").cidr("198.51.100.64/26"))
        .await;
    assert!(newer.metadata.creation_timestamp > older.metadata.creation_timestamp);
    let p = h
        .wait_pool("aa-newer", "Conflict=True", |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Conflict" && c.status == "True")
            })
        })
        .await;
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Conflict").cloned())
        .expect("conflict condition");
    assert_eq!(c.reason, "CIDROverlap");
    assert!(c.message.contains("zz-older"), "{}", c.message);
    let older = h.pools().get("zz-older").await.expect("older");
    let oc = older
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Conflict"))
        .expect("older has a Conflict condition");
    assert_eq!(oc.status, "False");
    h.wait_event("default", "aa-newer", "PoolConflict").await;
    // The conflicting pool allocates nothing: a request for an address only it would serve
    // under its own selection is not served from it.
    h.create_svc(svc("in-overlap")).await;
    let ips = h.wait_satisfied("in-overlap").await;
    assert!(
        ips.iter().all(|a| in_cidr(*a, "198.51.100.0/25")),
        "{ips:?}"
    );
    let p = h
        .wait_pool("zz-older", "1 used", |p| {
            p.status.as_ref().is_some_and(|s| s.ips_used == 1)
        })
        .await;
    assert_eq!(p.status.map(|s| s.ips_used), Some(1));
    let newer_used = h
        .pools()
        .get("aa-newer")
        .await
        .expect("get")
        .status
        .map(|s| s.ips_used);
    assert_eq!(newer_used, Some(0), "the conflicting pool allocated");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_status_counts_follow_allocations() {
    let h = Harness::new().await;
    let created = h.create_pool(pool("small").cidr("198.51.100.0/29")).await;
    let ctl = h.start("ctrl-a");
    let counts = |total: i64, used: i64| {
        move |p: &LoadBalancerIPPool| {
            p.status.as_ref().is_some_and(|s| {
                s.ips_total == total && s.ips_used == used && s.ips_available == total - used
            })
        }
    };
    let p = h.wait_pool("small", "6 total, 0 used", counts(6, 0)).await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.observed_generation),
        created.metadata.generation
    );
    h.create_svc(svc("a")).await;
    h.create_svc(svc("b")).await;
    h.wait_satisfied("a").await;
    h.wait_satisfied("b").await;
    h.wait_pool("small", "2 used", counts(6, 2)).await;
    h.svcs()
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    h.wait_pool("small", "1 used", counts(6, 1)).await;
    // Fill it: Exhausted.
    for n in ["c", "d", "e", "f", "g"] {
        h.create_svc(svc(n)).await;
    }
    let p = h.wait_pool("small", "6 used", counts(6, 6)).await;
    let ex = p
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Exhausted"))
        .expect("Exhausted condition");
    assert_eq!(ex.status, "True");
    ctl.stop().await;
}

on_both!(
    scenario_restart_no_reshuffle,
    restart_adopts_existing_addresses_without_reshuffle,
    real_restart_no_reshuffle
);

async fn scenario_restart_no_reshuffle(h: Harness) {
    h.create_pool(pool("main").cidr("198.51.100.0/24")).await;
    let first = h.start("ctrl-a");
    let mut before = BTreeMap::new();
    for n in ["s1", "s2", "s3"] {
        h.create_svc(svc(n)).await;
    }
    for n in ["s1", "s2", "s3"] {
        before.insert(n, h.wait_satisfied(n).await);
    }
    first.stop().await;
    // While no controller runs: a pool that sorts first by name appears (a controller that
    // allocated before adopting would move everything into it), one Service goes, two come.
    h.create_pool(pool("aaa-new").cidr("198.51.100.128/25"))
        .await;
    h.svcs()
        .delete("s1", &DeleteParams::default())
        .await
        .expect("delete");
    h.create_svc(svc("s4")).await;
    h.create_svc(svc("s5")).await;
    let second = h.start("ctrl-b");
    let s4 = h.wait_satisfied("s4").await;
    let s5 = h.wait_satisfied("s5").await;
    for n in ["s2", "s3"] {
        let now = ingress(&h.svcs().get(n).await.expect("get"));
        assert_eq!(now, before[n], "{n} was reshuffled");
    }
    let mut all: Vec<IpAddr> = vec![];
    for n in ["s2", "s3", "s4", "s5"] {
        all.extend(ingress(&h.svcs().get(n).await.expect("get")));
    }
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "duplicate allocation: {all:?}");
    assert!(s4.iter().chain(&s5).all(|a| in_cidr(*a, "198.51.100.0/24")));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_failover_keeps_every_address() {
    let h = Harness::new().await;
    h.create_pool(pool("main").cidr("198.51.100.0/24")).await;
    let a = h.start("ctrl-a");
    let b = h.start("ctrl-b");
    let leader = h.wait_leader(&[&a, &b]).await;
    let (lead, standby) = if leader == 0 { (a, b) } else { (b, a) };
    let lead_id = lead.ctx.config.identity.clone();
    let standby_id = standby.ctx.config.identity.clone();
    let mut before = BTreeMap::new();
    for n in ["x1", "x2", "x3"] {
        h.create_svc(svc(n)).await;
    }
    for n in ["x1", "x2", "x3"] {
        before.insert(n, h.wait_satisfied(n).await);
    }
    h.wait_pool("main", "3 used", |p| {
        p.status.as_ref().is_some_and(|s| s.ips_used == 3)
    })
    .await;
    let lease: Lease = Api::<Lease>::namespaced(h.client.clone(), "ferrolb-system")
        .get("ferrolb-controller")
        .await
        .expect("controller lease exists");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(lead_id.as_str())
    );
    assert!(h.writes_by(&lead_id, "services") >= 3);
    // Counters move when the server has answered; the watch may show the object a bit earlier.
    poll(
        "the leader to write a pool status",
        Duration::from_millis(20),
        || (h.writes_by(&lead_id, "loadbalancerippools") > 0).then_some(()),
        String::new,
    )
    .await;
    assert_eq!(
        h.writes_by(&standby_id, "services"),
        0,
        "standby wrote Services"
    );
    assert_eq!(
        h.writes_by(&standby_id, "loadbalancerippools"),
        0,
        "standby wrote pools"
    );
    assert_eq!(
        h.writes_by(&standby_id, "events"),
        0,
        "standby wrote Events"
    );
    assert!(
        standby.ctx.health.is_ready(),
        "standby is ready after its initial sync"
    );

    // Failover (the leader dies without releasing): the standby takes over after the lease
    // expires, adopts every address, and serves new Services.
    lead.kill();
    h.create_svc(svc("x4")).await;
    let x4 = h.wait_satisfied("x4").await;
    assert!(standby.is_leader());
    for n in ["x1", "x2", "x3"] {
        let now = ingress(&h.svcs().get(n).await.expect("get"));
        assert_eq!(now, before[n], "{n} changed on failover");
    }
    assert!(
        before.values().all(|v| v != &x4),
        "x4 got an address in use"
    );
    poll(
        "the new leader to write a Service",
        Duration::from_millis(20),
        || (h.writes_by(&standby_id, "services") > 0).then_some(()),
        String::new,
    )
    .await;
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_are_refetched_never_overwritten() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.wait_leader(&[&ctl]).await;
    // Every request of the controller is delayed, so while another writer keeps changing the
    // Service, each status write the controller computed is stale by the time it lands.
    let slow = h.stand_in().faults().add(
        kube_standin::faults::FaultSpec::latency(Duration::from_millis(400)).for_client("ctrl-a"),
    );
    h.create_svc(svc("busy").annotation("owner.example.com/note", "keep me"))
        .await;
    let conflicts = || {
        ctl.ctx
            .metrics
            .writes
            .with_label_values(&["services", "conflict"])
            .get()
    };
    // Until one conflicted, each poll updates the Service behind the controller's back.
    let mut n = 0u32;
    let (touched, harness, conflicts) = (&mut n, &h, &conflicts);
    wait_until_async(
        "a write of the controller to conflict",
        DEADLINE,
        Duration::from_millis(50),
        move || {
            let conflicted = conflicts() > 0;
            if !conflicted {
                *touched += 1;
            }
            let p = serde_json::json!({"metadata": {"labels": {"touched": touched.to_string()}}});
            async move {
                if conflicted {
                    return Ok(Some(()));
                }
                harness
                    .svcs()
                    .patch("busy", &PatchParams::default(), &Patch::Merge(&p))
                    .await?;
                Ok(None)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    h.stand_in().faults().remove(slow);
    let ips = h.wait_satisfied("busy").await;
    assert_eq!(ips, vec![ip("198.51.100.1")]);
    let s = h.svcs().get("busy").await.expect("get");
    let labels = s.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("touched"),
        Some(&n.to_string()),
        "the other writer's last change survived"
    );
    let ann = s.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get("owner.example.com/note").map(String::as_str),
        Some("keep me")
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cilium_class_and_annotation_aliases_when_asked() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let ctl = h.start_with("ctrl-a", |c| {
        c.serve_cilium_class = true;
        c.default_class = false;
    });
    h.create_svc(
        svc("from-cilium")
            .class("io.cilium/l2-announcer")
            .annotation("lbipam.cilium.io/ips", "198.51.100.77"),
    )
    .await;
    assert_eq!(
        h.wait_satisfied("from-cilium").await,
        vec![ip("198.51.100.77")]
    );
    h.create_svc(
        svc("legacy")
            .class(LB_CLASS)
            .annotation("io.cilium/lb-ipam-ips", "198.51.100.78"),
    )
    .await;
    assert_eq!(h.wait_satisfied("legacy").await, vec![ip("198.51.100.78")]);
    // Sharing through the Cilium alias.
    h.create_svc(
        svc("share-a")
            .class(LB_CLASS)
            .annotation("lbipam.cilium.io/sharing-key", "k")
            .ports(&[(53, "TCP")]),
    )
    .await;
    h.create_svc(
        svc("share-b")
            .class(LB_CLASS)
            .annotation("lbipam.cilium.io/sharing-key", "k")
            .ports(&[(53, "UDP")]),
    )
    .await;
    assert_eq!(
        h.wait_satisfied("share-a").await,
        h.wait_satisfied("share-b").await
    );
    // --no-default-class: a Service without a class is left alone.
    let unclassed = h.create_svc(svc("unclassed")).await;
    h.create_svc(svc("barrier").class(LB_CLASS)).await;
    h.wait_satisfied("barrier").await;
    let now = h.svcs().get("unclassed").await.expect("get");
    assert_eq!(
        now.metadata.resource_version,
        unclassed.metadata.resource_version
    );
    assert!(our_cond(&now).is_none() && ingress(&now).is_empty());
    ctl.stop().await;
}

/// Plain HTTP/1.1 GET on loopback; returns (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_over_http_reports_ready_and_releases_the_lease_on_sigterm() {
    let h = Harness::new().await;
    h.create_pool(pool("app").cidr("198.51.100.0/24")).await;
    let (addr, _server) = h
        .stand_in()
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve the stand-in over HTTP");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        ApiServer::kubeconfig(&format!("http://{addr}"), "bin-ctrl"),
    )
    .expect("write kubeconfig");
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr")
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrolb"))
        .args(["controller", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--identity",
            "bin-ctrl",
            "--lease-namespace",
            "ferrolb-system",
        ])
        .args([
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "500ms",
        ])
        .args(["--metrics-addr", &metrics_addr.to_string()])
        // As tokio's default on a 16-core node: a daemon runs no more than its own cap.
        .env("TOKIO_WORKER_THREADS", "16")
        .kill_on_drop(true)
        .spawn()
        .expect("start ferrolb controller");
    h.create_svc(svc("web")).await;
    assert_eq!(h.wait_satisfied("web").await, vec![ip("198.51.100.1")]);
    let workers = std::fs::read_dir(format!("/proc/{}/task", child.id().expect("pid")))
        .expect("the controller's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count();
    assert!(
        (1..=ferrolb::DAEMON_WORKER_THREADS).contains(&workers),
        "{workers} async worker threads"
    );
    // /readyz and /metrics over HTTP.
    let every = Duration::from_millis(100);
    wait_until_async("/readyz to answer 200", DEADLINE, every, || async {
        Ok(matches!(http_get(metrics_addr, "/readyz").await, Ok((200, _))).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The counters move right after the write's response; the test may see the status first.
    let want = [
        "ferrolb_controller_is_leader 1",
        "ferrolb_controller_allocations_total 1",
    ];
    let shows = |body: &str| want.iter().all(|w| body.lines().any(|l| l == *w));
    let metrics = || async {
        let (code, body) = http_get(metrics_addr, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(code, 200);
        body
    };
    let shown = wait_until_async(
        "/metrics to show the leader's first allocation",
        DEADLINE,
        every,
        || async { Ok(shows(&metrics().await).then_some(())) },
    )
    .await;
    if let Err(e) = shown {
        panic!("{e:#}; /metrics now:\n{}", metrics().await);
    }
    // SIGTERM: clean exit, Lease released so a standby could take over at once.
    let pid = child.id().expect("pid").to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(st.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("controller exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    let lease = Api::<Lease>::namespaced(h.client.clone(), "ferrolb-system")
        .get("ferrolb-controller")
        .await
        .expect("lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.is_empty(),
        "lease still held by {holder:?} after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_stops_writing_and_the_standby_takes_over() {
    let h = Harness::new().await;
    h.create_pool(pool("main").cidr("198.51.100.0/24")).await;
    let a = h.start("ctrl-a");
    // Let ctrl-a win the election before ctrl-b starts.
    h.wait_leader(&[&a]).await;
    let b = h.start("ctrl-b");
    h.create_svc(svc("before")).await;
    let before = h.wait_satisfied("before").await;
    // ctrl-a's requests all fail (as if partitioned from the API server).
    let cut = h
        .stand_in()
        .faults()
        .add(kube_standin::faults::FaultSpec::error(503).for_client("ctrl-a"));
    poll(
        "the handover from a to b",
        Duration::from_millis(50),
        || (!a.is_leader() && b.is_leader()).then_some(()),
        || format!("a leads {}, b leads {}", a.is_leader(), b.is_leader()),
    )
    .await;
    // ctrl-a can reach the API again, but must not write: it is no longer the holder.
    h.stand_in().faults().remove(cut);
    let a_writes = |h: &Harness| {
        ["services", "loadbalancerippools", "events"]
            .iter()
            .map(|r| h.writes_by("ctrl-a", r))
            .sum::<u64>()
    };
    let a_before = a_writes(&h);
    h.create_svc(svc("after")).await;
    let after = h.wait_satisfied("after").await;
    assert_ne!(after, before);
    assert_eq!(
        ingress(&h.svcs().get("before").await.expect("get")),
        before,
        "the handover moved an address"
    );
    h.wait_pool("main", "2 used", |p| {
        p.status.as_ref().is_some_and(|s| s.ips_used == 2)
    })
    .await;
    assert_eq!(a_writes(&h), a_before, "the deposed leader wrote");
    assert!(!a.is_leader());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_load_is_one_status_write_and_one_event_per_allocation_and_nothing_when_idle() {
    let h = Harness::new().await;
    h.create_pool(pool("main").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.wait_leader(&[&ctl]).await;
    h.wait_pool("main", "status", |p| p.status.is_some()).await;
    const N: usize = 20;
    for i in 0..N {
        h.create_svc(svc(&format!("load-{i:02}"))).await;
    }
    for i in 0..N {
        h.wait_satisfied(&format!("load-{i:02}")).await;
    }
    h.wait_pool("main", "all used", |p| {
        p.status.as_ref().is_some_and(|s| s.ips_used == N as i64)
    })
    .await;
    let count = |verb: &str, res: &str| {
        h.stand_in()
            .request_counts()
            .into_iter()
            .filter(|(c, v, r, _)| c == "ctrl-a" && v == verb && r == res)
            .map(|(_, _, _, n)| n)
            .sum::<u64>()
    };
    // Events are published right after each status write; wait until all are counted.
    poll(
        &format!("{N} Events"),
        Duration::from_millis(20),
        || (count("create", "events") >= N as u64).then_some(()),
        || format!("only {} Events", count("create", "events")),
    )
    .await;
    let snapshot = |h: &Harness| {
        let mut v: Vec<(String, String, u64)> = h
            .stand_in()
            .request_counts()
            .into_iter()
            .filter(|(c, _, r, _)| c == "ctrl-a" && r != "leases")
            .map(|(_, v, r, n)| (v, r, n))
            .collect();
        v.sort();
        v
    };
    // The server counts a request when it has answered it, which can be just after the watch
    // showed its effect: let one lease renewal pass before taking the snapshot.
    let renewals = count("update", "leases");
    poll(
        "a lease renewal",
        Duration::from_millis(50),
        || (count("update", "leases") > renewals).then_some(()),
        String::new,
    )
    .await;
    let busy = snapshot(&h);
    eprintln!("controller requests for {N} Services (excluding its Lease): {busy:?}");
    assert_eq!(
        count("patch", "services"),
        N as u64,
        "one status write per Service"
    );
    assert_eq!(
        count("create", "events"),
        N as u64,
        "one Event per allocation"
    );
    assert_eq!(count("get", "services"), 0, "no polling, no conflicts here");
    assert!(
        count("list", "services") <= 2,
        "lists: initial + takeover relist"
    );
    assert!(count("list", "loadbalancerippools") <= 2);
    // Idle: while the Lease is renewed three more times, nothing else is requested.
    let renewals = count("update", "leases");
    poll(
        "three lease renewals",
        Duration::from_millis(50),
        || (count("update", "leases") >= renewals + 3).then_some(()),
        String::new,
    )
    .await;
    assert_eq!(snapshot(&h), busy, "requests while idle");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_blocks_are_reported_and_fixing_them_is_observed() {
    let h = Harness::new().await;
    let created = h
        .create_pool(
            pool("mixed")
                .cidr("198.51.100.0/30")
                .cidr("198.51.100.300/24"),
        )
        .await;
    let ctl = h.start("ctrl-a");
    let cond_of = |p: &LoadBalancerIPPool, ty: &str| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == ty).cloned())
    };
    let p = h
        .wait_pool("mixed", "InvalidBlocks=True", |p| {
            cond_of(p, "InvalidBlocks").is_some_and(|c| c.status == "True")
        })
        .await;
    let c = cond_of(&p, "InvalidBlocks").expect("condition");
    assert!(c.message.contains("spec.blocks[1].cidr"), "{}", c.message);
    assert_eq!(
        p.status.as_ref().map(|s| s.ips_total),
        Some(2),
        "the valid /30 still counts"
    );
    h.wait_event("default", "mixed", "InvalidBlocks").await;
    // The valid rest of the pool still serves.
    h.create_svc(svc("web")).await;
    assert_eq!(h.wait_satisfied("web").await, vec![ip("198.51.100.1")]);
    // Fix the spec: generation moves on, the controller observes it and clears the condition.
    let fix = serde_json::json!({"spec": {"blocks": [{"cidr": "198.51.100.0/30"}, {"cidr": "198.51.100.128/25"}]}});
    let fixed = h
        .pools()
        .patch("mixed", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fix pool");
    assert!(fixed.metadata.generation > created.metadata.generation);
    let gen = fixed.metadata.generation;
    let p = h
        .wait_pool("mixed", "observedGeneration follows", |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == gen)
        })
        .await;
    assert!(cond_of(&p, "InvalidBlocks").is_none_or(|c| c.status == "False"));
    assert_eq!(p.status.as_ref().map(|s| s.ips_total), Some(2 + 126));
    assert_eq!(
        ingress(&h.svcs().get("web").await.expect("get")),
        vec![ip("198.51.100.1")],
        "fixing the pool moved an address"
    );
    ctl.stop().await;
}

fn not_covered_cond(s: &Service) -> Option<Condition> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == COND_NOT_COVERED)
        .cloned()
}

/// Events of `reason` about `name` (to count them).
async fn events_about(h: &Harness, name: &str, reason: &str) -> usize {
    let api: Api<Event> = Api::namespaced(h.client.clone(), NS);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .count()
}

/// Replaces a pool's spec (an edit as `kubectl edit` makes it).
async fn edit_pool(h: &Harness, name: &str, f: impl FnOnce(&mut LoadBalancerIPPoolSpec)) {
    let mut p = h.pools().get(name).await.expect("get pool");
    f(&mut p.spec);
    h.pools()
        .replace(name, &PostParams::default(), &p)
        .await
        .expect("replace pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shrunk_disabled_deleted_and_recreated_never_moves_an_address() {
    let h = Harness::new().await;
    h.create_pool(pool("p").cidr("198.51.100.0/24")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("web")).await;
    h.create_svc(svc("api")).await;
    let web = h.wait_satisfied("web").await;
    let api = h.wait_satisfied("api").await;

    // Shrunk: both addresses are outside now. Kept, condition + one Event, pool counts them.
    edit_pool(&h, "p", |s| {
        s.blocks[0].cidr = Some("198.51.100.128/25".into())
    })
    .await;
    let s = h
        .wait_svc("web", "AddressNotCovered=True", |s| {
            not_covered_cond(s).is_some_and(|c| c.status == "True")
        })
        .await;
    assert_eq!(ingress(&s), web, "the address moved after the pool shrank");
    let c = not_covered_cond(&s).expect("condition");
    assert!(
        c.message.contains("pool p") && c.message.contains("spec.blocks"),
        "{}",
        c.message
    );
    assert!(c.message.contains(ANN_REALLOCATE), "{}", c.message);
    assert_eq!(our_cond(&s).expect("ours").status, "True");
    let ev = h.wait_event(NS, "web", "AddressNotCovered").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("spec.blocks"));
    h.wait_pool("p", "ipsNotCovered 2", |p| {
        p.status
            .as_ref()
            .is_some_and(|st| st.ips_not_covered == 2 && st.ips_used == 0)
    })
    .await;
    // A new Service gets an address of the shrunk pool, never a kept one.
    let fresh = h.wait_satisfied_after_create("fresh").await;
    assert!(in_cidr(fresh[0], "198.51.100.128/25"), "{fresh:?}");

    // Disabled: nothing moves. The probe Service is created only once the controller has seen
    // the edit (the pool's observedGeneration): Kubernetes orders nothing across two watches,
    // and a loaded controller handled a Service created right after the edit before the pool
    // event (it got an address of the still-enabled pool; failed once beside two CPU hogs).
    edit_pool(&h, "p", |s| s.disabled = true).await;
    h.wait_pool("p", "the disabling observed", |p| {
        p.metadata.generation.is_some()
            && p.status.as_ref().and_then(|st| st.observed_generation) == p.metadata.generation
    })
    .await;
    h.barrier_unsatisfied("probe-disabled").await;
    assert_eq!(ingress(&h.svcs().get("web").await.expect("get")), web);
    assert_eq!(ingress(&h.svcs().get("api").await.expect("get")), api);

    // Deleted: nothing moves; the condition names the deleted pool.
    h.pools()
        .delete("p", &DeleteParams::default())
        .await
        .expect("delete pool");
    let s = h
        .wait_svc("api", "condition names the deleted pool", |s| {
            not_covered_cond(s).is_some_and(|c| c.message.contains("pool p was deleted"))
        })
        .await;
    assert_eq!(ingress(&s), api);
    assert_eq!(ingress(&h.svcs().get("web").await.expect("get")), web);

    // Re-created as it was: covered again, condition gone, still the same addresses.
    h.create_pool(pool("p").cidr("198.51.100.0/24")).await;
    let s = h
        .wait_svc("web", "AddressNotCovered gone", |s| {
            not_covered_cond(s).is_none() && our_cond(s).is_some_and(|c| c.status == "True")
        })
        .await;
    assert_eq!(ingress(&s), web);
    let s = h
        .wait_svc("api", "AddressNotCovered gone", |s| {
            not_covered_cond(s).is_none()
        })
        .await;
    assert_eq!(ingress(&s), api);
    h.wait_pool("p", "ipsNotCovered 0, used 3", |p| {
        p.status
            .as_ref()
            .is_some_and(|st| st.ips_not_covered == 0 && st.ips_used == 3)
    })
    .await;
    // Exactly one AddressNotCovered Event per Service for the whole episode... per raise:
    // raised once at the shrink, kept True through disable and delete.
    assert_eq!(events_about(&h, "web", "AddressNotCovered").await, 1);
    assert_eq!(events_about(&h, "api", "AddressNotCovered").await, 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reallocate_annotation_readdresses_only_when_asked() {
    let h = Harness::new().await;
    h.create_pool(pool("old").cidr("198.51.100.0/28")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("web")).await;
    let before = h.wait_satisfied("web").await;
    h.create_pool(pool("new").cidr("203.0.113.0/28")).await;
    h.pools()
        .delete("old", &DeleteParams::default())
        .await
        .expect("delete pool");
    h.wait_svc("web", "AddressNotCovered=True", |s| {
        not_covered_cond(s).is_some_and(|c| c.status == "True")
    })
    .await;
    assert_eq!(ingress(&h.svcs().get("web").await.expect("get")), before);
    let patch = serde_json::json!({"metadata": {"annotations": {ANN_REALLOCATE: "true"}}});
    h.svcs()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let s = h
        .wait_svc("web", "new address from pool new", |s| {
            ingress(s)
                .first()
                .is_some_and(|a| in_cidr(*a, "203.0.113.0/28"))
                && not_covered_cond(s).is_none()
        })
        .await;
    assert_eq!(ingress(&s).len(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_relabelled_new_services_follow_existing_keep_their_addresses() {
    let h = Harness::new().await;
    let nss: Api<Namespace> = Api::all(h.client.clone());
    let label = |tier: &str| serde_json::json!({"metadata": {"labels": {"tier": tier}}});
    nss.patch(NS, &PatchParams::default(), &Patch::Merge(&label("gold")))
        .await
        .expect("label namespace");
    h.create_pool(
        pool("gold")
            .cidr("198.51.100.0/28")
            .priority(0)
            .ns_select("tier", "gold"),
    )
    .await;
    h.create_pool(pool("rest").cidr("203.0.113.0/28")).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("first")).await;
    let first = h.wait_satisfied("first").await;
    assert!(in_cidr(first[0], "198.51.100.0/28"), "{first:?}");
    nss.patch(NS, &PatchParams::default(), &Patch::Merge(&label("silver")))
        .await
        .expect("relabel namespace");
    let s = h
        .wait_svc("first", "AddressNotCovered=True", |s| {
            not_covered_cond(s).is_some_and(|c| c.status == "True")
        })
        .await;
    assert_eq!(ingress(&s), first, "an existing Service moved");
    assert!(not_covered_cond(&s)
        .expect("cond")
        .message
        .contains("spec.namespaceSelector"));
    h.create_svc(svc("second")).await;
    let second = h.wait_satisfied("second").await;
    assert!(in_cidr(second[0], "203.0.113.0/28"), "{second:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_annotations_are_honoured_only_with_the_flag() {
    let h = Harness::new().await;
    h.create_pool(pool("auto").cidr("198.51.100.0/28")).await;
    let mut manual = pool("manual").cidr("203.0.113.0/28");
    manual.0.spec.auto_assign = Some(false);
    h.create_pool(manual).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("plain").annotation("metallb.io/address-pool", "manual"))
        .await;
    let plain = h.wait_satisfied("plain").await;
    assert!(in_cidr(plain[0], "198.51.100.0/28"), "{plain:?}");
    ctl.stop().await;
    // With --metallb-annotations: the pool by name and the requested address are honoured.
    let ctl = h.start_with("ctrl-b", |c| c.metallb_annotations = true);
    h.create_svc(svc("named").annotation("metallb.io/address-pool", "manual"))
        .await;
    let named = h.wait_satisfied("named").await;
    assert!(in_cidr(named[0], "203.0.113.0/28"), "{named:?}");
    h.create_svc(svc("asks").annotation("metallb.universe.tf/loadBalancerIPs", "198.51.100.9"))
        .await;
    assert_eq!(h.wait_satisfied("asks").await, vec![ip("198.51.100.9")]);
    // The Service served before the flag keeps its address (reported: its pool is not the one
    // it names now).
    let s = h
        .wait_svc("plain", "AddressNotCovered=True", |s| {
            not_covered_cond(s).is_some_and(|c| c.message.contains("ferrolb.io/pools"))
        })
        .await;
    assert_eq!(ingress(&s), plain);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_ip_mode_proxy_is_written_into_ingress() {
    let h = Harness::new().await;
    let mut p = pool("behind-proxy").cidr("198.51.100.0/28");
    p.0.spec.ip_mode = Some(IpMode::Proxy);
    h.create_pool(p).await;
    let ctl = h.start("ctrl-a");
    h.create_svc(svc("web")).await;
    let s = h
        .wait_svc("web", "ipMode Proxy", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| i.len() == 1 && i[0].ip_mode.as_deref() == Some("Proxy"))
        })
        .await;
    assert!(in_cidr(ingress(&s)[0], "198.51.100.0/28"));
    // Switched back to VIP: the entry is rewritten, the address stays.
    edit_pool(&h, "behind-proxy", |s| s.ip_mode = None).await;
    let s2 = h
        .wait_svc("web", "ipMode VIP", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| i.len() == 1 && i[0].ip_mode.as_deref() == Some("VIP"))
        })
        .await;
    assert_eq!(ingress(&s2), ingress(&s));
    ctl.stop().await;
}

/// Measurement, not a test: `cargo test --test controller measure -- --ignored --nocapture`
/// prints how long one controller takes to serve N Services created at once, and the API
/// requests it made. (Figures depend on the machine; nothing is asserted about time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn measure_convergence_and_api_load() {
    let n: usize = std::env::var("FERROLB_MEASURE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let h = Harness::new().await;
    h.create_pool(pool("v4").cidr("198.51.100.0/24")).await;
    h.create_pool(pool("v6").cidr("2001:db8:100::/112")).await;
    let ctl = h.start("ctrl-a");
    h.wait_leader(&[&ctl]).await;
    let start = tokio::time::Instant::now();
    for i in 0..n {
        let b = if i < 200 {
            svc(&format!("m-{i:05}"))
        } else {
            svc(&format!("m-{i:05}")).families(&["IPv6"], "SingleStack")
        };
        h.create_svc(b).await;
    }
    let created = start.elapsed();
    let done = || ctl.ctx.metrics.allocations.get() as usize;
    let every = Duration::from_millis(20);
    let all = wait_until_async("every allocation", Duration::from_secs(600), every, || {
        std::future::ready(Ok((done() >= n).then_some(())))
    })
    .await;
    if let Err(e) = all {
        panic!("{e:#}; only {} of {n} allocated", done());
    }
    let converged = start.elapsed();
    h.wait_pool("v4", "v4 counts", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.ips_used == n.min(200) as i64)
    })
    .await;
    let pools_done = start.elapsed();
    eprintln!("pool status caught up {pools_done:?} after the first create");
    let mut reqs: Vec<(String, String, u64)> = h
        .stand_in()
        .request_counts()
        .into_iter()
        .filter(|(c, _, _, _)| c == "ctrl-a")
        .map(|(_, v, r, n)| (v, r, n))
        .collect();
    reqs.sort();
    eprintln!(
        "{n} Services: created in {created:?}, all allocated {converged:?} after the first create; controller requests: {reqs:?}"
    );
    ctl.stop().await;
}
