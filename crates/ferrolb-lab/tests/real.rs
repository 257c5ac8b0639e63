//! Against a real kube-apiserver v1.36.2 + etcd 3.6 (`ferrolb_lab::realapi`, from
//! `../shared/kube/`): what only the real server can say. Each test prints
//! `skipped: no kube-apiserver (../shared/kube absent)` and passes when the binaries are absent,
//! and skips when not root (the server runs in a network namespace).

use ferrolb::fixtures::ServiceBuilder;
use ferrolb::k8s::service::ingress_ips;
use ferrolb_lab::harness::wait_until_async;
use ferrolb_lab::realapi::{self, RealApi, SKIP};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::time::Duration;

/// The shared server of this binary, or `None` (after printing why) when the test must skip.
async fn real() -> Option<&'static RealApi> {
    if !ferrolb_lab::netns::is_root() {
        eprintln!("skipped: not root (the real kube-apiserver runs in a network namespace)");
        return None;
    }
    let api = realapi::shared_async().await;
    if api.is_none() {
        eprintln!("{SKIP}");
    }
    api
}

/// A ServiceAccount token from the TokenRequest API (what the kubelet mounts into the pod).
async fn sa_token(admin: &kube::Client, ns: &str, sa: &str) -> String {
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .expect("a TokenRequest status")
        .token
        .expect("a token")
}

/// (verb, group, resource, subresource, namespace, name) asked of the real authorizer.
type Ask = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

async fn allowed(client: &kube::Client, ask: Ask) -> bool {
    let (verb, group, resource, sub, ns, name) = ask;
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: opt(verb),
                group: Some(group.to_string()),
                resource: opt(resource),
                subresource: opt(sub),
                namespace: opt(ns),
                name: opt(name),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SelfSubjectAccessReview {ask:?}: {e}"))
        .status
        .expect("a review status")
        .allowed
}

/// Every `ask` must get `want` from the authorizer; all mismatches are reported together.
async fn expect_all(who: &str, client: &kube::Client, want: bool, asks: &[Ask]) -> Vec<String> {
    let mut wrong = Vec::new();
    for ask in asks {
        if allowed(client, *ask).await != want {
            wrong.push(format!(
                "{who} {} {ask:?}",
                if want { "is refused" } else { "is allowed" }
            ));
        }
    }
    wrong
}

const SYS: &str = "ferrolb-system";
const LEASES: &str = "ferrolb-leases";
const FL: &str = "ferrolb.io";
const COORD: &str = "coordination.k8s.io";
/// How long the restart test waits for the cluster to settle.
const SECS_30: Duration = Duration::from_secs(30);

/// The priority level a request of `client` to `path` was given (API Priority and
/// Fairness: the `X-Kubernetes-PF-FlowSchema-UID` response header names the FlowSchema).
async fn flow_schema_uid(client: &kube::Client, path: &str) -> anyhow::Result<Option<String>> {
    let req = http::Request::get(path).body(kube::client::Body::from(Vec::new()))?;
    let resp = client.send(req).await?;
    Ok(resp
        .headers()
        .get("x-kubernetes-pf-flowschema-uid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

/// deploy/flowcontrol.yaml on a real server: the agent's Lease requests in the lease namespace
/// are classified by our FlowSchema (its own priority level); its other requests and other
/// clients' Lease requests are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_lease_requests_get_a_priority_level_of_their_own() {
    let Some(api) = real().await else { return };
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    api.kubectl(&["apply", "-k", deploy])
        .expect("kubectl apply -k deploy/ on the real server");
    let ours = api
        .kubectl(&[
            "get",
            "flowschema",
            "ferrolb-agent-leases",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect("our FlowSchema");
    let ours = ours.trim().to_string();
    assert!(!ours.is_empty());
    let admin = api.admin();
    let agent = api
        .client_with_token(&sa_token(&admin, SYS, "ferrolb-agent").await)
        .unwrap();
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{LEASES}/leases");
    // The server's APF configuration controller picks the new objects up asynchronously.
    wait_until_async(
        "the agent's Lease requests to be classified by ferrolb-agent-leases",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let uid = flow_schema_uid(&agent, &leases).await?;
            Ok((uid.as_deref() == Some(ours.as_str())).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for (who, client, path) in [
        ("the agent", &agent, "/api/v1/services".to_string()),
        ("the admin", &admin, leases.clone()),
    ] {
        let uid = flow_schema_uid(client, &path).await.unwrap();
        assert!(uid.is_some(), "APF headers on {path}");
        assert_ne!(
            uid.as_deref(),
            Some(ours.as_str()),
            "{who}'s request to {path} matched ferrolb-agent-leases"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_holds_against_the_real_authorizer() {
    let Some(api) = real().await else { return };
    // The manifests as users install them (CRDs, namespaces, RBAC, the controller's Lease, the
    // workloads, which nothing schedules here).
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let out = api
        .kubectl(&["apply", "-k", deploy])
        .expect("kubectl apply -k deploy/ on the real server");
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/ferrolb-agent"),
        "{out}"
    );
    let admin = api.admin();
    let agent = api
        .client_with_token(&sa_token(&admin, SYS, "ferrolb-agent").await)
        .unwrap();
    let ctrl = api
        .client_with_token(&sa_token(&admin, SYS, "ferrolb-controller").await)
        .unwrap();

    let mut wrong = Vec::new();
    // The agent: reads what decides announcements, writes policy status, Events, the
    // L2Announcements (create, status, delete) and its own Leases in ferrolb-leases; nothing else.
    wrong.extend(
        expect_all(
            "agent",
            &agent,
            true,
            &[
                ("list", "", "services", "", "", ""),
                ("watch", "", "services", "", "", ""),
                ("get", "", "nodes", "", "", "node1"),
                ("watch", "", "nodes", "", "", ""),
                ("list", "discovery.k8s.io", "endpointslices", "", "", ""),
                ("watch", FL, "l2announcementpolicies", "", "", ""),
                ("list", FL, "loadbalancerippools", "", "", ""),
                ("watch", FL, "loadbalancerippools", "", "", ""),
                ("update", FL, "l2announcementpolicies", "status", "", "p"),
                ("patch", FL, "l2announcementpolicies", "status", "", "p"),
                ("watch", FL, "l2announcements", "", "", ""),
                ("create", FL, "l2announcements", "", "default", ""),
                ("update", FL, "l2announcements", "status", "default", "s"),
                ("delete", FL, "l2announcements", "", "default", "s"),
                ("create", "events.k8s.io", "events", "", "default", ""),
                ("create", COORD, "leases", "", LEASES, ""),
                ("update", COORD, "leases", "", LEASES, "x"),
                ("delete", COORD, "leases", "", LEASES, "x"),
                ("watch", COORD, "leases", "", LEASES, ""),
            ],
        )
        .await,
    );
    wrong.extend(
        expect_all(
            "agent",
            &agent,
            false,
            &[
                ("create", "", "services", "", "default", ""),
                ("update", "", "services", "", "default", "s"),
                ("patch", "", "services", "", "default", "s"),
                ("delete", "", "services", "", "default", "s"),
                ("update", "", "services", "status", "default", "s"),
                ("patch", "", "services", "status", "default", "s"),
                ("create", FL, "loadbalancerippools", "", "", ""),
                ("update", FL, "loadbalancerippools", "", "", "p"),
                ("patch", FL, "loadbalancerippools", "status", "", "p"),
                ("delete", FL, "loadbalancerippools", "", "", "p"),
                ("create", FL, "l2announcementpolicies", "", "", ""),
                ("update", FL, "l2announcementpolicies", "", "", "p"),
                ("patch", FL, "l2announcementpolicies", "", "", "p"),
                ("delete", FL, "l2announcementpolicies", "", "", "p"),
                ("update", FL, "l2announcements", "", "default", "s"),
                ("patch", FL, "l2announcements", "", "default", "s"),
                ("create", "", "nodes", "", "", ""),
                ("update", "", "nodes", "", "", "node1"),
                ("patch", "", "nodes", "", "", "node1"),
                ("patch", "", "nodes", "status", "", "node1"),
                ("delete", "", "nodes", "", "", "node1"),
                ("update", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("patch", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("delete", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("create", COORD, "leases", "", SYS, ""),
                ("create", COORD, "leases", "", "default", ""),
            ],
        )
        .await,
    );
    // The controller: reads Services and pools, writes their status and Events, holds one
    // Lease by name; no access to the agents' Leases and no spec writes.
    wrong.extend(
        expect_all(
            "controller",
            &ctrl,
            true,
            &[
                ("watch", "", "services", "", "", ""),
                ("update", "", "services", "status", "default", "s"),
                ("patch", "", "services", "status", "default", "s"),
                ("watch", FL, "loadbalancerippools", "", "", ""),
                ("update", FL, "loadbalancerippools", "status", "", "p"),
                ("create", "events.k8s.io", "events", "", "default", ""),
                ("get", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("update", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("watch", COORD, "leases", "", SYS, "ferrolb-controller"),
            ],
        )
        .await,
    );
    wrong.extend(
        expect_all(
            "controller",
            &ctrl,
            false,
            &[
                ("get", COORD, "leases", "", LEASES, "x"),
                ("list", COORD, "leases", "", LEASES, ""),
                ("watch", COORD, "leases", "", LEASES, ""),
                ("create", COORD, "leases", "", LEASES, ""),
                ("update", COORD, "leases", "", LEASES, "x"),
                ("delete", COORD, "leases", "", LEASES, "x"),
                ("create", COORD, "leases", "", SYS, ""),
                ("update", COORD, "leases", "", SYS, "other"),
                ("delete", COORD, "leases", "", SYS, "ferrolb-controller"),
                ("create", "", "services", "", "default", ""),
                ("update", "", "services", "", "default", "s"),
                ("delete", "", "services", "", "default", "s"),
                ("update", FL, "loadbalancerippools", "", "", "p"),
                ("update", FL, "l2announcementpolicies", "status", "", "p"),
                ("update", "", "nodes", "", "", "node1"),
            ],
        )
        .await,
    );
    assert!(
        wrong.is_empty(),
        "RBAC differs from deploy/'s intent:\n{}",
        wrong.join("\n")
    );

    // Real requests, not only reviews: the server refuses and accepts them as reviewed.
    let svc = ServiceBuilder::named("default", "rbac-probe")
        .type_("LoadBalancer")
        .port("", 80, "")
        .build();
    let e = Api::<Service>::namespaced(agent.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .expect_err("the agent created a Service");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    let renew = Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "node1"}}));
    let e = Api::<Lease>::namespaced(agent.clone(), SYS)
        .patch("ferrolb-controller", &PatchParams::default(), &renew)
        .await
        .expect_err("the agent wrote the controller's Lease");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    let mut mine = Lease::default();
    mine.metadata.name = Some("rbac-probe".into());
    Api::<Lease>::namespaced(agent.clone(), LEASES)
        .create(&PostParams::default(), &mine)
        .await
        .expect("the agent creates a Lease in ferrolb-leases");
    let e = Api::<Lease>::namespaced(ctrl.clone(), LEASES)
        .get("rbac-probe")
        .await
        .expect_err("the controller read an agent Lease");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    let e = Api::<Lease>::namespaced(ctrl.clone(), LEASES)
        .delete("rbac-probe", &Default::default())
        .await
        .expect_err("the controller deleted an agent Lease");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    let hold = Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "controller-0"}}));
    let l = Api::<Lease>::namespaced(ctrl.clone(), SYS)
        .patch("ferrolb-controller", &PatchParams::default(), &hold)
        .await
        .expect("the controller writes its Lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("controller-0")
    );
}

/// Desired leases for `count` addresses with `nodes` as candidates (the agents' naming).
fn desired(
    count: usize,
    nodes: &[String],
) -> std::collections::BTreeMap<String, ferrolb::lease::LeaseWant> {
    (0..count)
        .map(|i| {
            let key = format!("198.51.100.{i}");
            (
                ferrolb::lease::lease_name(&key),
                ferrolb::lease::LeaseWant {
                    tag: Some(std::sync::Arc::from(key.as_str())),
                    meta: ferrolb::lease::LeaseMeta::Pairs {
                        labels: vec![("ferrolb.io/address".into(), key)],
                        annotations: Vec::new(),
                    },
                    candidates: std::sync::Arc::new(nodes.to_vec()),
                },
            )
        })
        .collect()
}

/// Lease name → holder, as the server has them.
async fn holders(
    client: &kube::Client,
    ns: &str,
) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels("ferrolb.io/role!=presence"))
        .await
        .expect("list leases")
        .items
        .into_iter()
        .map(|l| {
            let spec = l.spec.unwrap_or_default();
            (
                l.metadata.name.unwrap_or_default(),
                (
                    spec.holder_identity.unwrap_or_default(),
                    spec.renew_time.map(|t| t.0.to_string()),
                ),
            )
        })
        .collect()
}

/// Presence Lease name → renewTime, as the server has them.
async fn presence_renewals(
    client: &kube::Client,
    ns: &str,
) -> std::collections::BTreeMap<String, Option<String>> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels("ferrolb.io/role=presence"))
        .await
        .expect("list presence leases")
        .items
        .into_iter()
        .map(|l| {
            let t = l.spec.and_then(|s| s.renew_time).map(|t| t.0.to_string());
            (l.metadata.name.unwrap_or_default(), t)
        })
        .collect()
}

/// Waits (polling, up to `within`) until Service `ns/name` has an address; returns them.
async fn wait_address(
    client: &kube::Client,
    ns: &str,
    name: &str,
    within: Duration,
) -> Vec<std::net::IpAddr> {
    let api = &Api::<Service>::namespaced(client.clone(), ns);
    let every = Duration::from_millis(200);
    wait_until_async(
        &format!("{ns}/{name} to get an address"),
        within,
        every,
        || async {
            // Errors are expected right after a restart (429, 504...): retried until the deadline.
            let got = tokio::time::timeout(Duration::from_secs(10), api.get(name)).await;
            let ips = got.ok().and_then(Result::ok).map(|s| ingress_ips(&s));
            Ok(ips.filter(|ips| !ips.is_empty()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The API outage users see: kube-apiserver restarts (SIGKILL, then a new process over the same
/// etcd). Holders stay holders, nothing is deleted, renewals resume, and the engines' watches
/// resume: a graceful release after the restart is taken over long before the lease expires,
/// which only a watch can explain. A controller running through the restart keeps every address
/// and serves a Service created afterwards (its watches resumed). Runs on its own server (a restart would disturb the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_keeps_holders_and_watches_resume() {
    use ferrolb::lease::{EngineOptions, LeaseConfig, LeaseEvent, LeaseSet};
    if !ferrolb_lab::netns::is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let Some(bins) = realapi::KubeBins::locate().expect("../shared/kube is broken") else {
        eprintln!("{SKIP}");
        return;
    };
    let api = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || RealApi::start(bins, "kout"))
            .await
            .unwrap()
            .expect("start a real kube-apiserver"),
    );
    let admin = api.admin();
    let ns = "outage";
    // The controller's Lease lives apart from the agents' (as deploy/ has it).
    let ctl_ns = "outage-ctl";
    for name in [ns, ctl_ns] {
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(name.into());
        Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
            .create(&PostParams::default(), &n)
            .await
            .expect("create namespace");
    }
    // The controller, with the CRDs and a pool, addressing three Services.
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(admin.clone());
    for (_, crd) in ferrolb::crds::all() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("create CRD");
    }
    let pools: &Api<ferrolb::api::LoadBalancerIPPool> = &Api::all(admin.clone());
    let every = Duration::from_millis(100);
    wait_until_async("the pool CRD to be served", SECS_30, every, || async {
        Ok(pools.list(&Default::default()).await.ok())
    })
    .await
    .expect("pool CRD served");
    let pool: ferrolb::api::LoadBalancerIPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool",
        "metadata": {"name": "main"},
        "spec": {"blocks": [{"cidr": "198.51.100.0/24"}]}
    }))
    .unwrap();
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    let mut cc = ferrolb::controller::ControllerConfig::new("ctrl-a");
    cc.lease_namespace = ctl_ns.into();
    cc.lease = ferrolb::controller::LeaseTimings {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(1),
    };
    let registry = prometheus::Registry::new();
    let ctx = ferrolb::controller::Context::new(
        api.admin(),
        cc,
        ferrolb::controller::Metrics::new(&registry).unwrap(),
    );
    let ctl = tokio::spawn(ferrolb::controller::Controller::run(ctx.clone()));
    let svcs = Api::<Service>::namespaced(admin.clone(), ns);
    let mut addresses = std::collections::BTreeMap::new();
    for name in ["s1", "s2", "s3"] {
        svcs.create(
            &PostParams::default(),
            &ServiceBuilder::load_balancer(ns, name).build(),
        )
        .await
        .expect("create Service");
    }
    for name in ["s1", "s2", "s3"] {
        addresses.insert(
            name,
            wait_address(&admin, ns, name, Duration::from_secs(30)).await,
        );
    }

    // Long leases: a takeover within seconds can only come from a watched release.
    let cfg = LeaseConfig {
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(40),
        retry_period: Duration::from_secs(1),
        rank_step: Duration::from_millis(300),
    };
    let nodes: Vec<String> = vec!["node-a".into(), "node-b".into()];
    let want = desired(6, &nodes);
    let mut sets = Vec::new();
    let mut events = Vec::new();
    for node in &nodes {
        let (set, ev) = LeaseSet::start(api.admin(), EngineOptions::agent(ns, node, cfg.clone()));
        set.set_desired(want.clone());
        sets.push(set);
        events.push(ev);
    }
    let helds: Vec<_> = sets.iter().map(|s| s.held()).collect();
    let all_held = || helds.iter().map(|h| h.borrow().len()).sum::<usize>() == 6;
    let every = Duration::from_millis(50);
    wait_until_async("every lease to be held", SECS_30, every, || {
        std::future::ready(Ok(all_held().then_some(())))
    })
    .await
    .expect("leases all held");
    let before = holders(&admin, ns).await;
    assert_eq!(before.len(), 6, "{before:?}");
    // Address Leases are attached to the presence Leases (issue 10): only those are renewed.
    let presence_before = presence_renewals(&admin, ns).await;
    assert_eq!(presence_before.len(), 2, "{presence_before:?}");

    // The outage.
    let t0 = std::time::Instant::now();
    let restarting = api.clone();
    tokio::task::spawn_blocking(move || {
        restarting.stop_apiserver("KILL")?;
        restarting.start_apiserver()
    })
    .await
    .unwrap()
    .expect("restart kube-apiserver");
    eprintln!("kube-apiserver back (readyz ok) after {:.1?}", t0.elapsed());

    // Renewals resume: every presence Lease gets a renewTime newer than before; every address
    // Lease keeps its holder.
    let admin = api.admin();
    let (before, presence_before) = (&before, &presence_before);
    let every = Duration::from_millis(200);
    let renewed = || async {
        let Ok(now) = tokio::time::timeout(Duration::from_secs(10), holders(&admin, ns)).await
        else {
            return Ok(None);
        };
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "leases were deleted or created over the restart"
        );
        for (name, (holder, _)) in &now {
            assert_eq!(
                holder, &before[name].0,
                "{name} changed holder over the restart"
            );
        }
        let Ok(p) =
            tokio::time::timeout(Duration::from_secs(10), presence_renewals(&admin, ns)).await
        else {
            return Ok(None);
        };
        Ok((p.len() == presence_before.len()
            && p.iter()
                .all(|(name, t)| presence_before.get(name) != Some(t)))
        .then_some(()))
    };
    wait_until_async(
        "renewals to resume",
        Duration::from_secs(60),
        every,
        renewed,
    )
    .await
    .expect("renewals resumed");
    // Nobody reported a loss (Unreachable during the outage is fine).
    for (node, ev) in nodes.iter().zip(events.iter_mut()) {
        while let Ok(e) = ev.try_recv() {
            assert!(
                !matches!(e, LeaseEvent::Lost { .. } | LeaseEvent::Released { .. }),
                "{node}: {e:?}"
            );
        }
    }
    // Watches resumed: node-a leaves gracefully, node-b takes its leases within seconds (the
    // leases last 60 s).
    let a_held = helds[0].borrow().clone();
    assert!(!a_held.is_empty(), "node-a held nothing");
    let a = sets.remove(0);
    let t1 = tokio::time::Instant::now();
    let report = a.shutdown().await;
    assert_eq!(report.released.len(), a_held.len(), "{report:?}");
    let b_held = &helds[1];
    let took_over = || a_held.iter().all(|n| b_held.borrow().contains(n));
    let every = Duration::from_millis(50);
    let left = Duration::from_secs(20).saturating_sub(t1.elapsed());
    let took = wait_until_async(
        "node-b to take node-a's released leases",
        left,
        every,
        || std::future::ready(Ok(took_over().then_some(()))),
    )
    .await;
    if let Err(e) = took {
        // What the API server shows then: node-a's presence released? the Leases moved?
        let now = holders(&admin, ns).await;
        let b_now = b_held.borrow().clone();
        panic!("node-b's watch resumed: {e:#}\nLeases now: {now:?}\nnode-b holds: {b_now:?}");
    }
    eprintln!(
        "after the restart, node-b took node-a's released leases in {:.1?}",
        t1.elapsed()
    );
    for s in sets {
        s.abort();
    }
    // The controller kept every address and serves a Service created after the restart.
    svcs.create(
        &PostParams::default(),
        &ServiceBuilder::load_balancer(ns, "s4").build(),
    )
    .await
    .expect("create Service after the restart");
    let s4 = wait_address(&admin, ns, "s4", Duration::from_secs(60)).await;
    for (name, before) in &addresses {
        let now = wait_address(&admin, ns, name, Duration::from_secs(10)).await;
        assert_eq!(&now, before, "{name} changed address over the restart");
        assert!(
            !before.iter().any(|a| s4.contains(a)),
            "s4 got {name}'s address"
        );
    }
    ctx.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), ctl).await;
}
