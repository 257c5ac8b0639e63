//! `ferrolb status`, `ferrolb doctor` and the `kubectl ferrolb` plugin, run as processes (the
//! real binary) against the API stand-in served over HTTP with a kubeconfig, as a user would.
//!
//! Every doctor test starts from [`healthy`] (a cluster doctor must find nothing in), breaks
//! exactly one thing and expects exactly that finding and exit status 1. Leases are created the
//! way the agent writes them (names from `ferrolb::lease::lease_name` / `presence_name`, labels
//! and annotations from `ferrolb::lease::describe`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferrolb::api::{
    IpBlock, L2AnnouncementPolicy, L2AnnouncementPolicySpec, LoadBalancerIPPool,
    LoadBalancerIPPoolSpec, COND_IPAM_SATISFIED,
};
use ferrolb::fixtures::ServiceBuilder;
use ferrolb::lease::{
    describe, lease_name, presence_name, ANN_NODE, LABEL_ROLE, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    ROLE_PRESENCE,
};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, NodeAddress, NodeStatus, PodSpec, PodTemplateSpec,
    Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use kube_standin::ApiServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferrolb");
/// Deadline for waits (the test machine is a loaded 2-core box).
const DEADLINE: Duration = Duration::from_secs(60);
const WEB_IP: &str = "198.51.100.10";

struct Env {
    api: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    _task: tokio::task::JoinHandle<()>,
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn micro_ago(secs: i64) -> MicroTime {
    MicroTime(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs))
}

impl Env {
    async fn new() -> Env {
        let api = ApiServer::new();
        for (_, crd) in ferrolb::crds::all() {
            api.register_crd(&crd).expect("register CRD");
        }
        let (addr, task) = api
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .expect("serve the stand-in");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            ApiServer::kubeconfig(&format!("http://{addr}"), "ops-test"),
        )
        .unwrap();
        let client = api.client_as("seed");
        let nss: Api<Namespace> = Api::all(client.clone());
        for ns in ["demo", "ferrolb-system", "ferrolb-leases"] {
            nss.create(
                &PostParams::default(),
                &Namespace {
                    metadata: meta(ns),
                    ..Default::default()
                },
            )
            .await
            .expect("create namespace");
        }
        Env {
            api,
            client,
            dir,
            kubeconfig,
            _task: task,
        }
    }

    /// Runs the binary with `args` (plus `--kubeconfig`); returns (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = Command::new(BIN);
        c.args(args).arg("--kubeconfig").arg(&self.kubeconfig);
        output(c).await
    }

    /// `doctor -o json`: (exit code, the findings' check names, the report).
    async fn doctor(&self) -> (i32, Vec<String>, Value) {
        let (code, out, err) = self.run(&["doctor", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("doctor -o json printed no JSON ({e}): {out}\n{err}"));
        let checks = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["check"].as_str().unwrap().to_string())
            .collect();
        (code, checks, v)
    }

    async fn create_node(&self, name: &str, announce: bool, ip: &str) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut l = vec![("kubernetes.io/hostname", name)];
        if announce {
            l.push(("ferrolb.io/announce", "yes"));
        }
        let node = Node {
            metadata: ObjectMeta {
                labels: labels(&l),
                ..meta(name)
            },
            ..Default::default()
        };
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        };
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    async fn create_pool(&self, name: &str, blocks: Vec<IpBlock>) {
        let pools: Api<LoadBalancerIPPool> = Api::all(self.client.clone());
        pools
            .create(
                &PostParams::default(),
                &LoadBalancerIPPool::new(
                    name,
                    LoadBalancerIPPoolSpec {
                        blocks,
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
    }

    async fn create_policy(&self, name: &str, node_label: (&str, &str), interfaces: &[&str]) {
        let policies: Api<L2AnnouncementPolicy> = Api::all(self.client.clone());
        let spec = L2AnnouncementPolicySpec {
            node_selector: Some(LabelSelector {
                match_labels: labels(&[node_label]),
                ..Default::default()
            }),
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            load_balancer_ips: true,
            ..Default::default()
        };
        policies
            .create(
                &PostParams::default(),
                &L2AnnouncementPolicy::new(name, spec),
            )
            .await
            .unwrap();
    }

    /// A LoadBalancer Service in `demo` with the status the controller would write.
    async fn create_service(&self, name: &str, ip: Option<&str>, cond: Option<(&str, &str)>) {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), "demo");
        let svc = ServiceBuilder::named("demo", name)
            .type_("LoadBalancer")
            .port("", 80, "TCP")
            .build();
        svcs.create(&PostParams::default(), &svc).await.unwrap();
        let ingress: Vec<Value> = ip.iter().map(|ip| json!({ "ip": ip })).collect();
        let conditions: Vec<Value> = cond
            .iter()
            .map(|(status, reason)| {
                json!({
                    "type": COND_IPAM_SATISFIED,
                    "status": status,
                    "reason": reason,
                    "message": format!("test condition {reason}"),
                    "lastTransitionTime": "2026-12-04T10:00:00Z",
                })
            })
            .collect();
        svcs.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "status": { "loadBalancer": { "ingress": ingress }, "conditions": conditions }
            })),
        )
        .await
        .unwrap();
    }

    /// The address Lease of `ips` as the agent writes it, held by `holder`.
    async fn create_address_lease(&self, ips: &str, services: &[&str], holder: &str) {
        let (l, a) = describe(
            ips,
            &services.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        let mut lbl = ferrolb::lease::pairs_map(l);
        lbl.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(ips)),
                labels: Some(lbl),
                annotations: Some(ferrolb::lease::pairs_map(a)),
                ..Default::default()
            },
            spec: Some(held_by(holder, 120)),
        };
        self.leases()
            .create(&PostParams::default(), &lease)
            .await
            .unwrap();
    }

    /// A node's presence Lease as its agent writes it.
    async fn create_presence(&self, node: &str) {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(presence_name(node)),
                labels: labels(&[
                    (MANAGED_BY_LABEL, MANAGED_BY_VALUE),
                    (LABEL_ROLE, ROLE_PRESENCE),
                ]),
                annotations: labels(&[(ANN_NODE, node)]),
                ..Default::default()
            },
            spec: Some(held_by(node, 0)),
        };
        self.leases()
            .create(&PostParams::default(), &lease)
            .await
            .unwrap();
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), "ferrolb-leases")
    }

    async fn set_kube_proxy(&self, conf: &str) {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), "kube-system");
        let cm = ConfigMap {
            metadata: meta("kube-proxy"),
            data: labels(&[("config.conf", conf)]),
            ..Default::default()
        };
        match cms.get_opt("kube-proxy").await.unwrap() {
            Some(_) => {
                cms.patch(
                    "kube-proxy",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "data": { "config.conf": conf } })),
                )
                .await
                .unwrap();
            }
            None => {
                cms.create(&PostParams::default(), &cm).await.unwrap();
            }
        }
    }

    /// The agent DaemonSet as `deploy/agent.yaml` has it, with extra agent flags.
    async fn create_agent_daemonset(&self, extra: &[&str]) {
        let sel = labels(&[
            ("app.kubernetes.io/name", "ferrolb"),
            ("app.kubernetes.io/component", "agent"),
        ]);
        let mut args = vec![
            "agent".to_string(),
            "--node-name=$(NODE_NAME)".into(),
            "--lease-namespace=ferrolb-leases".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let ds = DaemonSet {
            metadata: ObjectMeta {
                labels: sel.clone(),
                ..meta("ferrolb-agent")
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: sel.clone(),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: sel,
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "agent".into(),
                            image: Some("ferrolb".into()),
                            args: Some(args),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        };
        Api::<DaemonSet>::namespaced(self.client.clone(), "ferrolb-system")
            .create(&PostParams::default(), &ds)
            .await
            .unwrap();
    }
}

fn held_by(holder: &str, acquired_ago: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        // Long, so a loaded machine cannot make the seeded holders look dead.
        lease_duration_seconds: Some(300),
        acquire_time: Some(micro_ago(acquired_ago)),
        renew_time: Some(micro_ago(0)),
        lease_transitions: Some(0),
        ..Default::default()
    }
}

async fn output(mut c: Command) -> (i32, String, String) {
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .expect("run the ferrolb binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cluster `doctor` finds nothing wrong with: one announcing node with a running agent, one
/// pool, one policy, one Service with its address announced, current CRDs, kube-proxy in
/// iptables mode, the agent DaemonSet with default timings.
async fn healthy() -> Env {
    let env = Env::new().await;
    env.create_node("node1", true, "192.0.2.11").await;
    env.create_pool(
        "lab-v4",
        vec![IpBlock {
            cidr: Some("198.51.100.0/24".into()),
            ..Default::default()
        }],
    )
    .await;
    env.create_policy("lab", ("ferrolb.io/announce", "yes"), &["eth0"])
        .await;
    env.create_service("web", Some(WEB_IP), Some(("True", "Satisfied")))
        .await;
    env.create_address_lease(WEB_IP, &["demo/web"], "node1")
        .await;
    env.create_presence("node1").await;
    env.set_kube_proxy("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n")
        .await;
    env.create_agent_daemonset(&[]).await;
    env
}

/// Asserts doctor reports exactly `checks` (in order) and exits 1.
async fn expect_findings(env: &Env, checks: &[&str]) -> Value {
    let (code, got, v) = env.doctor().await;
    assert_eq!(got, checks, "doctor found: {v:#}");
    assert_eq!(code, 1, "exit status with findings: {v:#}");
    assert_eq!(v["ok"], false);
    for f in v["findings"].as_array().unwrap() {
        assert!(
            !f["fix"].as_str().unwrap().is_empty(),
            "finding without a fix: {f}"
        );
    }
    v
}

// ----- doctor --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_nothing_in_a_healthy_cluster() {
    let env = healthy().await;
    let (code, checks, v) = env.doctor().await;
    assert!(checks.is_empty(), "findings in a healthy cluster: {v:#}");
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    // Nothing was skipped for lack of objects: only the two checks that cannot run anywhere.
    let skipped: Vec<&str> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    let (code, text, _) = env.run(&["doctor"]).await;
    assert_eq!(code, 0);
    assert!(text.contains("no findings"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_kube_proxy_ipvs_without_strict_arp() {
    let env = healthy().await;
    env.set_kube_proxy("mode: ipvs\nipvs:\n  strictARP: false\n")
        .await;
    let v = expect_findings(&env, &["kube-proxy-strict-arp"]).await;
    assert!(v["findings"][0]["fix"]
        .as_str()
        .unwrap()
        .contains("strictARP: true"));
    env.set_kube_proxy("mode: ipvs\nipvs:\n  strictARP: true\n")
        .await;
    let (code, checks, _) = env.doctor().await;
    assert!(checks.is_empty() && code == 0, "{checks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_pools_overlapping_each_other() {
    let env = healthy().await;
    env.create_pool(
        "late",
        vec![IpBlock {
            cidr: Some("198.51.100.128/25".into()),
            ..Default::default()
        }],
    )
    .await;
    let v = expect_findings(&env, &["pool-overlap"]).await;
    let f = &v["findings"][0];
    assert_eq!(f["object"], "LoadBalancerIPPool/late");
    assert!(f["problem"].as_str().unwrap().contains("lab-v4"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_pool_containing_a_node_address() {
    let env = healthy().await;
    env.create_pool(
        "nodes",
        vec![IpBlock {
            start: Some("192.0.2.10".into()),
            stop: Some("192.0.2.20".into()),
            ..Default::default()
        }],
    )
    .await;
    let v = expect_findings(&env, &["pool-node-address"]).await;
    let p = v["findings"][0]["problem"].as_str().unwrap();
    assert!(p.contains("192.0.2.11") && p.contains("node1"), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_pool_with_an_invalid_block() {
    let env = healthy().await;
    env.create_pool(
        "typo",
        vec![IpBlock {
            cidr: Some("203.0.113.0/33".into()),
            ..Default::default()
        }],
    )
    .await;
    let v = expect_findings(&env, &["pool-invalid"]).await;
    assert!(v["findings"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("spec.blocks[0].cidr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_policy_selecting_no_node() {
    let env = healthy().await;
    env.create_policy("mars", ("topology.kubernetes.io/zone", "mars"), &[])
        .await;
    let v = expect_findings(&env, &["policy-no-node"]).await;
    assert_eq!(v["findings"][0]["object"], "L2AnnouncementPolicy/mars");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_policy_with_an_invalid_interface_regex() {
    let env = healthy().await;
    env.create_policy("typo", ("ferrolb.io/announce", "yes"), &["eth[0"])
        .await;
    let v = expect_findings(&env, &["policy-invalid"]).await;
    let f = &v["findings"][0];
    assert_eq!(f["object"], "L2AnnouncementPolicy/typo");
    assert!(
        f["problem"]
            .as_str()
            .unwrap()
            .contains("spec.interfaces[0]"),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_pending_services_and_why() {
    let env = healthy().await;
    env.create_service("full", None, Some(("False", "OutOfIPs")))
        .await;
    env.create_service("orphan", None, None).await;
    let v = expect_findings(&env, &["service-pending", "service-pending"]).await;
    let objs: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    assert_eq!(objs, ["Service demo/full", "Service demo/orphan"]);
    assert!(v["findings"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("OutOfIPs"));
    assert!(v["findings"][1]["problem"]
        .as_str()
        .unwrap()
        .contains("no ferrolb controller"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_service_announced_by_nobody() {
    let env = healthy().await;
    env.leases()
        .delete(&lease_name(WEB_IP), &DeleteParams::default())
        .await
        .unwrap();
    let v = expect_findings(&env, &["service-unannounced"]).await;
    let p = v["findings"][0]["problem"].as_str().unwrap();
    assert!(
        p.contains(WEB_IP) && p.contains("policy lab selects it"),
        "{p}"
    );
}

/// A policy limited to another pool does not count as selecting the Service (the agents'
/// coverage rule, pools included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_service_whose_pool_no_policy_announces() {
    let env = healthy().await;
    let policies: Api<L2AnnouncementPolicy> = Api::all(env.client.clone());
    policies
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pools": ["elsewhere"]}})),
        )
        .await
        .unwrap();
    env.leases()
        .delete(&lease_name(WEB_IP), &DeleteParams::default())
        .await
        .unwrap();
    let v = expect_findings(&env, &["service-unannounced"]).await;
    let p = v["findings"][0]["problem"].as_str().unwrap();
    assert!(
        p.contains(WEB_IP) && p.contains("no L2AnnouncementPolicy selects"),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_agent_missing_on_a_selected_node() {
    let env = healthy().await;
    env.create_node("node2", true, "192.0.2.12").await;
    let v = expect_findings(&env, &["agent-missing"]).await;
    assert_eq!(v["findings"][0]["object"], "Node/node2");
    // A presence Lease from node2 makes it healthy again.
    env.create_presence("node2").await;
    let (code, checks, _) = env.doctor().await;
    assert!(checks.is_empty() && code == 0, "{checks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_crd_missing() {
    let env = healthy().await;
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(env.client.clone());
    crds.delete(
        "l2announcementpolicies.ferrolb.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    let v = expect_findings(&env, &["crd-missing"]).await;
    assert_eq!(
        v["findings"][0]["object"],
        "CustomResourceDefinition/l2announcementpolicies.ferrolb.io"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_crd_stale() {
    let env = healthy().await;
    // An older pool CRD: one printer column fewer and a field missing from the schema.
    let (_, mut crd) = ferrolb::crds::all()
        .into_iter()
        .find(|(f, _)| f.starts_with("loadbalancerippools"))
        .unwrap();
    let v = &mut crd.spec.versions[0];
    v.additional_printer_columns.as_mut().unwrap().pop();
    let mut schema = serde_json::to_value(&v.schema).unwrap();
    schema["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("allowFirstLastIPs");
    v.schema = serde_json::from_value(schema).unwrap();
    env.api.register_crd(&crd).unwrap();
    let v = expect_findings(&env, &["crd-stale"]).await;
    assert_eq!(
        v["findings"][0]["object"],
        "CustomResourceDefinition/loadbalancerippools.ferrolb.io"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_lease_timing_breaking_the_fencing_margin() {
    let env = healthy().await;
    Api::<DaemonSet>::namespaced(env.client.clone(), "ferrolb-system")
        .delete("ferrolb-agent", &DeleteParams::default())
        .await
        .unwrap();
    env.create_agent_daemonset(&["--lease-duration=3s", "--renew-deadline", "2900ms"])
        .await;
    let v = expect_findings(&env, &["lease-timing"]).await;
    assert!(v["findings"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("fencing margin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_cannot_reach_the_cluster_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &kc,
        ApiServer::kubeconfig(&format!("http://127.0.0.1:{port}"), "nobody"),
    )
    .unwrap();
    let mut c = Command::new(BIN);
    c.args(["doctor", "--kubeconfig"]).arg(&kc);
    let (code, _, err) = output(c).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("error:"), "{err}");
}

// ----- status --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_pools_services_holders_and_pending() {
    let env = healthy().await;
    env.create_service("full", None, Some(("False", "OutOfIPs")))
        .await;
    let (code, out, err) = env.run(&["status", "-A", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pools"][0]["name"], "lab-v4");
    let web = &v["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["addresses"][0]["ip"], WEB_IP);
    assert_eq!(web["addresses"][0]["pool"], "lab-v4");
    assert_eq!(web["node"], "node1");
    assert_eq!(web["live"], true);
    assert!(web["since"].as_str().unwrap().ends_with('Z'));
    assert!(web["source"]
        .as_str()
        .unwrap()
        .contains(&lease_name(WEB_IP)));
    assert_eq!(v["pending"][0]["name"], "full");
    assert_eq!(v["pending"][0]["reason"], "OutOfIPs");

    let (code, text, _) = env.run(&["status", "-n", "demo"]).await;
    assert_eq!(code, 0);
    for needle in [
        "lab-v4",
        "demo/web",
        WEB_IP,
        "node1",
        "demo/full",
        "OutOfIPs",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    // Another namespace: pools only.
    let (code, text, _) = env.run(&["status", "-n", "default"]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("lab-v4") && !text.contains("demo/web"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_takeover() {
    let env = healthy().await;
    let mut child = Command::new(BIN)
        .args(["status", "-A", "-o", "json", "--watch", "--kubeconfig"])
        .arg(&env.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let first = wait_for(&lines, |v| v["services"][0]["node"] == "node1");
    assert_eq!(first["services"].as_array().unwrap().len(), 1);
    // node2 takes the lease over, as an agent would (new holder, new acquireTime).
    env.leases()
        .patch(
            &lease_name(WEB_IP),
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": {
                "holderIdentity": "node2",
                "acquireTime": micro_ago(0),
                "renewTime": micro_ago(0),
                "leaseTransitions": 1,
            }})),
        )
        .await
        .unwrap();
    let next = wait_for(&lines, |v| v["services"][0]["node"] == "node2");
    assert_ne!(first["services"][0]["since"], next["services"][0]["since"]);
    let _ = child.kill();
    let _ = child.wait();
}

fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a JSON line satisfying `pred`.
fn wait_for(rx: &mpsc::Receiver<String>, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let v: Value = serde_json::from_str(&l).unwrap_or(Value::Null);
                if pred(&v) {
                    return v;
                }
                seen.push(l);
            }
            Err(_) => break,
        }
    }
    panic!("no matching status line; saw {seen:#?}");
}

// ----- the kubectl plugin --------------------------------------------------------------------

/// A directory with `kubectl-ferrolb` → the binary.
fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("plugins");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("kubectl-ferrolb")).unwrap();
    bin
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoked_as_kubectl_ferrolb_it_is_the_plugin() {
    let env = healthy().await;
    let bin = plugin_dir(env.dir.path());
    let mut c = Command::new(bin.join("kubectl-ferrolb"));
    c.args(["status", "-A", "-o", "json"])
        .env("KUBECONFIG", &env.kubeconfig);
    let (code, out, err) = output(c).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"][0]["node"], "node1");
    // Only the cluster commands: the others are not subcommands of the plugin.
    let mut c = Command::new(bin.join("kubectl-ferrolb"));
    c.arg("lab");
    let (code, _, err) = output(c).await;
    assert_ne!(code, 0);
    assert!(err.contains("kubectl ferrolb"), "{err}");
}

fn find_kubectl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERROLB_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_the_plugin() {
    let Some(kubectl) = find_kubectl() else {
        eprintln!("skipped: no kubectl (set FERROLB_KUBECTL or put kubectl on PATH)");
        return;
    };
    let env = healthy().await;
    let bin = plugin_dir(env.dir.path());
    let kubectl_cmd = |args: &[&str]| {
        let mut c = Command::new(&kubectl);
        c.args(args)
            .env("PATH", path_with(&bin))
            .env("KUBECONFIG", &env.kubeconfig)
            .env("HOME", env.dir.path());
        c
    };
    let (code, out, err) = output(kubectl_cmd(&["plugin", "list"])).await;
    assert!(out.contains("kubectl-ferrolb"), "{code} {out} {err}");
    let (code, out, err) = output(kubectl_cmd(&["ferrolb", "doctor", "-o", "json"])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    let (code, out, err) = output(kubectl_cmd(&["ferrolb", "status", "-A"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo/web") && out.contains("node1"), "{out}");
    // A finding makes `kubectl ferrolb doctor` fail too.
    env.set_kube_proxy("mode: ipvs\n").await;
    let (code, out, _) = output(kubectl_cmd(&["ferrolb", "doctor"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[kube-proxy-strict-arp]"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_uses_the_kubeconfig_context_like_kubectl() {
    let env = healthy().await;
    // The stand-in's kubeconfig, with a second context made current that points nowhere.
    let good = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&good).unwrap();
    let server = format!("http://127.0.0.1:{port}");
    kc["clusters"].as_sequence_mut().unwrap().push(
        serde_yaml::from_str(&format!("{{name: gone, cluster: {{server: '{server}'}}}}")).unwrap(),
    );
    kc["contexts"].as_sequence_mut().unwrap().push(
        serde_yaml::from_str(
            "{name: gone, context: {cluster: gone, user: ops-test, namespace: demo}}",
        )
        .unwrap(),
    );
    kc["current-context"] = "gone".into();
    let path = env.dir.path().join("two-contexts");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let run = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["status", "-o", "json", "--kubeconfig"])
            .arg(&path)
            .args(extra);
        output(c)
    };
    let (code, _, err) = run(&[]).await;
    assert_ne!(code, 0, "the current context points nowhere: {err}");
    let (code, out, err) = run(&["--context", "ferrolb-dev", "-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"][0]["node"], "node1");
}
