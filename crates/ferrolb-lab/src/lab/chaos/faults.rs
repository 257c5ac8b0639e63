//! The injectors: each planned fault started and ended on the running lab, inside its own
//! namespaces only (signals to the lab's processes, the stand-in's fault rules, the bridge's
//! ports, the wires' loss and delay on them, the lab's API objects).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};

use super::schedule::{Kind, Planned};
use crate::lab::cluster::Cluster;
use crate::lab::{echo_service, uds};
use crate::wire::Impairment;

/// What must be undone when a fault ends.
#[derive(Debug, Default)]
pub struct Undo {
    /// Stand-in fault rule ids.
    rules: Vec<u64>,
    /// A flapping thread's stop flag.
    flap: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// The bridge port of node `i` (`Segment::add_member` names ports in order: api, client, nodes).
fn port(i: usize) -> String {
    format!("p{}", wired(i))
}

/// The segment member (and port, wire) index of node `i`: after the API server and the client.
pub fn wired(i: usize) -> usize {
    2 + i
}

fn node(p: &Planned) -> anyhow::Result<usize> {
    p.target.context("a node fault without a node")
}

/// Starts `p` (`dual_stack`: churn Services are created dual-stack, `--ipv6`).
pub async fn start(c: &mut Cluster, p: &Planned, dual_stack: bool) -> anyhow::Result<Undo> {
    let mut undo = Undo::default();
    match p.kind {
        Kind::AgentKill | Kind::AgentTerm | Kind::AgentRestart => {
            let i = node(p)?;
            if c.agents.get(i).is_none_or(Option::is_none) {
                bail!("agent of node {} is not running", i + 1);
            }
            let sig = if p.kind == Kind::AgentKill {
                "KILL"
            } else {
                "TERM"
            };
            tokio::task::block_in_place(|| c.stop_agent(i, sig))?;
            if p.kind == Kind::AgentRestart {
                c.start_agent(i)?;
            }
        }
        Kind::AgentStop => {
            let i = node(p)?;
            match c.agents.get(i).and_then(Option::as_ref) {
                Some(a) => a.signal("STOP")?,
                None => bail!("agent of node {} is not running", i + 1),
            }
        }
        Kind::ControllerKill | Kind::ControllersKillBoth => {
            for i in controllers(c, p) {
                if let Some(mut ctl) = c.controllers.get_mut(i).and_then(Option::take) {
                    ctl.signal("KILL")?;
                    tokio::task::block_in_place(|| ctl.wait_exit(Duration::from_secs(15)))?;
                }
            }
        }
        Kind::ApiOutage | Kind::ApiOutageNode | Kind::ApiSlow | Kind::Api5xx => {
            let mut rule = match p.kind {
                Kind::ApiSlow => {
                    serde_json::json!({"kind": "latency", "latencyMs": p.param.unwrap_or(300)})
                }
                Kind::Api5xx => serde_json::json!({"kind": "error", "code": 503}),
                _ => serde_json::json!({"kind": "refuse"}),
            };
            if p.kind == Kind::ApiOutageNode {
                // The agents' identity on the stand-in is their node name (their kubeconfig).
                rule["client"] = c.topo.nodes[node(p)?].name.clone().into();
            }
            // A safety net: the rule lapses on its own shortly after the planned end.
            rule["seconds"] = (p.lasts_ms as f64 / 1000.0 + 5.0).into();
            undo.rules.push(add_rule(c, rule).await?);
        }
        Kind::NodeCut => {
            c.topo
                .seg
                .bridge
                .ip(&["link", "set", &port(node(p)?), "down"])?;
        }
        Kind::LinkFlap => {
            let ns = c.topo.seg.bridge.name().to_string();
            let dev = port(node(p)?);
            let period = Duration::from_millis(p.param.unwrap_or(400));
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let h = std::thread::spawn(move || {
                let mut down = true;
                while !s.load(Ordering::Relaxed) {
                    let state = if down { "down" } else { "up" };
                    let _ = std::process::Command::new("ip")
                        .args(["-n", &ns, "link", "set", &dev, state])
                        .output();
                    down = !down;
                    std::thread::sleep(period);
                }
                let _ = std::process::Command::new("ip")
                    .args(["-n", &ns, "link", "set", &dev, "up"])
                    .output();
            });
            undo.flap = Some((stop, h));
        }
        Kind::LossDelay => c.topo.seg.impair(
            wired(node(p)?),
            Impairment {
                loss_pct: p.param.unwrap_or(10) as f64,
                delay: Duration::from_millis(20),
                jitter: Duration::from_millis(10),
            },
        )?,
        Kind::ChurnCreate => {
            let name = churn_name(p);
            let mut svc = echo_service(&name, dual_stack);
            // Odd churn Services are selected by the pool of `PoolEdit` while it exists.
            if p.target.unwrap_or(0) % 2 == 1 {
                svc["metadata"]["labels"]["chaos-pool"] = "yes".into();
            }
            c.create_json(&svc).await?;
            let all: Vec<usize> = (0..c.topo.nodes.len()).collect();
            c.create_endpoints("default", &name, &all).await?;
        }
        Kind::ChurnDelete => {
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(c.client.clone(), "default");
            match api.delete(&churn_name(p), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Kind::ChurnRetype => {
            let api: Api<k8s_openapi::api::core::v1::Service> =
                Api::namespaced(c.client.clone(), "default");
            let name = churn_name(p);
            let Some(svc) = api.get_opt(&name).await? else {
                return Ok(undo);
            };
            let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
            let patch = if is_lb {
                cluster_ip_patch()
            } else {
                serde_json::json!({"spec": {"type": "LoadBalancer"}})
            };
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Kind::PoolEdit => {
            let pool = serde_json::json!({
                "apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool",
                "metadata": {"name": "chaos-extra"},
                "spec": {"blocks": [{"start": "203.0.113.200", "stop": "203.0.113.220"}],
                         "serviceSelector": {"matchLabels": {"chaos-pool": "yes"}}}
            });
            c.create_json(&pool).await?;
        }
        Kind::PolicyEdit => {
            policy_interfaces(c, &["^eth0$", "^mgmt0$"]).await?;
        }
        Kind::EndpointMove => {
            c.set_endpoints("default", LOCAL_SERVICE, &[node(p)?])
                .await?;
        }
        Kind::ChurnReclass => {
            set_class(c, &churn_name(p), Some(FOREIGN_CLASS)).await?;
        }
    }
    Ok(undo)
}

/// Ends `p` (undoes what [`start`] did; instantaneous kinds have nothing to undo).
pub async fn end(c: &mut Cluster, p: &Planned, undo: Undo) -> anyhow::Result<()> {
    for id in undo.rules {
        let (code, body) = uds::request(
            &c.socket,
            http::Method::DELETE,
            &format!("/_ferrolb/faults/{id}"),
            None,
        )
        .await?;
        // 404: the safety-net expiry was first.
        if !code.is_success() && code.as_u16() != 404 {
            bail!("removing fault rule {id}: {code} {body}");
        }
    }
    if let Some((stop, h)) = undo.flap {
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::block_in_place(|| h.join());
    }
    match p.kind {
        Kind::AgentKill | Kind::AgentTerm => c.start_agent(node(p)?)?,
        Kind::AgentStop => {
            if let Some(a) = c.agents.get(node(p)?).and_then(Option::as_ref) {
                a.signal("CONT")?;
            }
        }
        Kind::ControllerKill | Kind::ControllersKillBoth => {
            for i in controllers(c, p) {
                if c.controllers.get(i).is_none_or(Option::is_none) {
                    c.start_controller(i)?;
                }
            }
        }
        Kind::NodeCut => {
            c.topo
                .seg
                .bridge
                .ip(&["link", "set", &port(node(p)?), "up"])?;
        }
        Kind::LossDelay => c.topo.seg.impair(wired(node(p)?), Impairment::default())?,
        // The revert may fall into an API fault that started meanwhile: retried for a while.
        Kind::PoolEdit => retry(|| delete_extra_pool(c)).await?,
        Kind::PolicyEdit => retry(|| policy_interfaces(c, &["^eth0$"])).await?,
        Kind::ChurnReclass => {
            let name = churn_name(p);
            retry(|| set_class(c, &name, None)).await?
        }
        _ => {}
    }
    Ok(())
}

/// The watched `externalTrafficPolicy: Local` Service whose endpoint [`Kind::EndpointMove`]
/// moves.
pub const LOCAL_SERVICE: &str = "local-1";

/// A `loadBalancerClass` no ferrolb controller or agent serves.
pub const FOREIGN_CLASS: &str = "example.com/other-lb";

/// The ClusterIP form of a churn Service (no node ports, no class).
fn cluster_ip_patch() -> serde_json::Value {
    serde_json::json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null,
        "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]}})
}

/// Moves LoadBalancer Service `name` to `class` (None: unset, ours), the way kube-apiserver
/// allows it: the class of a LoadBalancer Service is immutable, so through `ClusterIP`. A
/// Service that is gone, not a LoadBalancer, or in `class` already is left alone (churn
/// deleted or re-typed it meanwhile).
async fn set_class(c: &Cluster, name: &str, class: Option<&str>) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(c.client.clone(), "default");
    let Some(svc) = api.get_opt(name).await? else {
        return Ok(());
    };
    let spec = svc.spec.unwrap_or_default();
    if spec.type_.as_deref() != Some("LoadBalancer") || spec.load_balancer_class.as_deref() == class
    {
        return Ok(());
    }
    let pp = PatchParams::default();
    api.patch(name, &pp, &Patch::Merge(&cluster_ip_patch()))
        .await?;
    let back = serde_json::json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": class}});
    api.patch(name, &pp, &Patch::Merge(&back)).await?;
    Ok(())
}

/// Retries `f` every 500 ms for up to 30 s.
async fn retry<F, Fut>(mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn delete_extra_pool(c: &Cluster) -> anyhow::Result<()> {
    let ar = ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("ferrolb.io", "v1alpha1", "LoadBalancerIPPool"),
        "loadbalancerippools",
    );
    let api: Api<DynamicObject> = Api::all_with(c.client.clone(), &ar);
    match api.delete("chaos-extra", &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn controllers(c: &Cluster, p: &Planned) -> Vec<usize> {
    if p.kind == Kind::ControllersKillBoth {
        (0..c.cfg.controllers).collect()
    } else {
        p.target.into_iter().collect()
    }
}

fn churn_name(p: &Planned) -> String {
    format!("chaos-{}", p.target.unwrap_or(0) + 1)
}

/// Adds a stand-in fault rule; returns its id.
async fn add_rule(c: &Cluster, rule: serde_json::Value) -> anyhow::Result<u64> {
    if c.real.is_some() {
        bail!("API faults need the stand-in (--api stand-in)");
    }
    let (code, body) = uds::request(
        &c.socket,
        http::Method::POST,
        "/_ferrolb/faults",
        Some(rule.to_string()),
    )
    .await?;
    if !code.is_success() {
        bail!("fault injection answered {code}: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["id"].as_u64().context("no fault id in the answer")
}

/// Sets the lab policy's `spec.interfaces`.
async fn policy_interfaces(c: &Cluster, interfaces: &[&str]) -> anyhow::Result<()> {
    let ar = ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("ferrolb.io", "v1alpha1", "L2AnnouncementPolicy"),
        "l2announcementpolicies",
    );
    let api: Api<DynamicObject> = Api::all_with(c.client.clone(), &ar);
    let patch = serde_json::json!({"spec": {"interfaces": interfaces}});
    api.patch("lab", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
