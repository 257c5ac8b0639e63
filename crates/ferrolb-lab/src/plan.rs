//! `ferrolb plan`: offline allocation report from manifests.
//!
//! ```text
//! ferrolb plan -f FILE... [-o table|json] [--cluster NAME=FILE ...] [--serve-cilium-class]
//! ```
//!
//! Reads multi-document YAML (or JSON) files — a directory means every `*.yaml`, `*.yml` and
//! `*.json` in it, `-` means stdin — holding `LoadBalancerIPPool`s, `L2AnnouncementPolicy`s and
//! `Service`s (also inside `kind: List`), `Namespace`s and `Node`s (the announcer candidates in
//! preference tiers). Other kinds are ignored with a note. It runs the same
//! allocator as the controller, through the controller's own rebuild (`Allocator::rebuild`):
//! pools first, then every Service's existing `status.loadBalancer.ingress` is adopted, then
//! every Service is ensured, oldest first (`creationTimestamp`, then namespace/name). Pools without `creationTimestamp` are aged by their position in the
//! input (earlier = older), which decides which of two overlapping pools is the conflicting one.
//!
//! `--cluster NAME=FILE` (repeatable; repeat a NAME to give it several files) plans several
//! clusters separately and then checks them against each other: two clusters whose pools overlap
//! would hand out the same address on a shared L2 segment (the "both clustermesh-apiservers on
//! one IP" failure). Files given with `-f` belong to the cluster `default` when `--cluster` is
//! also used.
//!
//! # Exit status
//! `0` no conflict; `2` a conflict: a pool overlapping an older pool in the same cluster, or
//! pools of two clusters overlapping; `1` unreadable input. Unsatisfied Services alone do not
//! change the exit status (they are listed with their reason).
//!
//! # `-o json` (stable shape; fields are only ever added)
//! ```json
//! {
//!   "ok": false,                        // no conflicts at all
//!   "conflicts": 1,                     // number of conflicts (in-cluster + cross-cluster)
//!   "clusters": [{
//!     "name": "default",
//!     "pools": [{"name": "app-pool", "total": 10, "used": 1, "available": 9, "disabled": false,
//!                "conflict": null | {"with": "older-pool", "message": "..."},
//!                "blockErrors": [{"field": "spec.blocks[1].cidr", "message": "..."}],
//!                "selectorError": null | "..."}],
//!     "services": [{"namespace": "echo", "name": "echo", "satisfied": true, "reason": "Satisfied",
//!                   "message": "...", "addresses": [{"ip": "198.51.100.230", "pool": "app-pool"}],
//!                   "adopted": ["198.51.100.230"], "notAdopted": [{"ip": "...", "why": "..."}],
//!                   "announcedBy": ["l2-policy"],
//!                   "announcers": [["n2"], ["n1", "n3"]]}],   // only with Nodes in the input
//!     "policies": [{"name": "l2-policy", "problems": ["spec.interfaces[0]: ..."]}],
//!     "notes": ["cluster-a.yaml: document 3: Deployment echo/echo ignored"]
//!   }],
//!   "crossCluster": [{"clusters": ["cluster-a", "cluster-b"], "pools": ["cluster-pool", "cluster-pool"],
//!                     "message": "..."}]
//! }
//! ```
//! Counts are saturated to 2^63-1 like the pool status.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use ferrolb::api::{L2AnnouncementPolicy, LoadBalancerIPPool};
use ferrolb::ipam::range::Range;
use ferrolb::ipam::{
    is_ours, Allocator, ClassOptions, PoolDef, RebuildService, ServiceKey, ServiceReq,
};
use ferrolb::k8s::service::ingress_ips;

/// Command-line flags of `ferrolb plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Manifest files or directories (`-` = stdin).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// `NAME=FILE`: plan cluster NAME from FILE (repeatable) and check clusters against each other.
    #[arg(long = "cluster", value_name = "NAME=FILE")]
    pub clusters: Vec<String>,
    /// Do not serve Services without a `loadBalancerClass` (as `ferrolb controller --no-default-class`).
    #[arg(long)]
    pub no_default_class: bool,
    /// Also serve `loadBalancerClass: io.cilium/l2-announcer` (as the controller flag).
    #[arg(long)]
    pub serve_cilium_class: bool,
    /// Read MetalLB's Service annotations as aliases (as the controller flag; on by itself
    /// when the input holds MetalLB objects).
    #[arg(long)]
    pub metallb_annotations: bool,
}

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// The JSON document described in the module docs.
    Json,
}

/// The objects of one cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterInput {
    /// Cluster name.
    pub name: String,
    /// Pools in input order.
    pub pools: Vec<LoadBalancerIPPool>,
    /// Policies in input order.
    pub policies: Vec<L2AnnouncementPolicy>,
    /// Services in input order.
    pub services: Vec<Service>,
    /// Namespaces (their labels, for pools' `namespaceSelector`).
    pub namespaces: Vec<Namespace>,
    /// Nodes (their labels: the announcer candidates in preference order).
    pub nodes: Vec<k8s_openapi::api::core::v1::Node>,
    /// Whether MetalLB objects were in the input (converted in memory).
    pub metallb: bool,
    /// MetalLB `IPAddressPool`s read so far (name, labels), for `L2Advertisement`s that follow.
    pub metallb_pools: Vec<(String, BTreeMap<String, String>)>,
    /// Notes about ignored documents.
    pub notes: Vec<String>,
}

/// The report (also the `-o json` document).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// No conflicts.
    pub ok: bool,
    /// Number of conflicts.
    pub conflicts: usize,
    /// Per cluster.
    pub clusters: Vec<ClusterReport>,
    /// Overlaps between clusters.
    pub cross_cluster: Vec<CrossConflict>,
}

/// One cluster's plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// Cluster name.
    pub name: String,
    /// Pools by name.
    pub pools: Vec<PoolReport>,
    /// Services of ours, by namespace/name.
    pub services: Vec<ServiceReport>,
    /// Policies by name.
    pub policies: Vec<PolicyReport>,
    /// Ignored documents, skipped Services, warnings.
    pub notes: Vec<String>,
}

/// One pool's counts and problems.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// Name.
    pub name: String,
    /// Usable addresses (saturated).
    pub total: i64,
    /// Assigned.
    pub used: i64,
    /// Available.
    pub available: i64,
    /// `spec.disabled`.
    pub disabled: bool,
    /// Overlap with an older pool of the same cluster.
    pub conflict: Option<PoolConflict>,
    /// Invalid blocks.
    pub block_errors: Vec<FieldProblem>,
    /// Invalid `serviceSelector`.
    pub selector_error: Option<String>,
    /// Invalid `namespaceSelector` (field and message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector_error: Option<String>,
    /// `spec.priority`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// A pool conflict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolConflict {
    /// The older pool.
    pub with: String,
    /// Which blocks overlap.
    pub message: String,
}

/// A problem in one field.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldProblem {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One Service's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether it gets what it asks for.
    pub satisfied: bool,
    /// Condition reason (`Satisfied`, `NoPool`, ...).
    pub reason: String,
    /// Condition message.
    pub message: String,
    /// Assigned addresses.
    pub addresses: Vec<AddressReport>,
    /// Addresses from `status.loadBalancer.ingress` that were re-adopted.
    pub adopted: Vec<String>,
    /// Addresses from status that could not be adopted.
    pub not_adopted: Vec<NotAdopted>,
    /// Kept addresses that no pool covers any more (`{"ip", "why"}`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_covered: Vec<NotAdopted>,
    /// Policies that announce its addresses.
    pub announced_by: Vec<String>,
    /// When Nodes are in the input: the nodes that may announce its addresses, in preference
    /// tiers (most preferred first; `spec.preferredNodes`), each tier sorted by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub announcers: Vec<Vec<String>>,
}

/// An assigned address.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AddressReport {
    /// Address.
    pub ip: String,
    /// Pool.
    pub pool: String,
}

/// A status address that was not re-adopted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotAdopted {
    /// Address.
    pub ip: String,
    /// Why.
    pub why: String,
}

/// A policy's problems.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyReport {
    /// Name.
    pub name: String,
    /// Invalid selectors or interface regexes.
    pub problems: Vec<String>,
}

/// Pools of two clusters overlapping.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CrossConflict {
    /// The two clusters.
    pub clusters: [String; 2],
    /// The two pools.
    pub pools: [String; 2],
    /// Overlap and colliding Services.
    pub message: String,
}

// ----- input -----------------------------------------------------------------------------------

/// Reads manifests into `into`. `-` is stdin; a directory is every YAML/JSON file in it, sorted.
pub fn load(path: &Path, into: &mut ClusterInput) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        return parse_documents("<stdin>", &s, into);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        for f in files {
            load(&f, into)?;
        }
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_documents(&path.display().to_string(), &text, into)
}

/// Parses a multi-document YAML (or JSON) text.
pub fn parse_documents(origin: &str, text: &str, into: &mut ClusterInput) -> anyhow::Result<()> {
    use serde::Deserialize;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let v = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("{origin}: document {n} is not valid YAML"))?;
        if v.is_null() {
            continue;
        }
        let v: serde_json::Value = serde_json::to_value(&v)
            .with_context(|| format!("{origin}: document {n} cannot be represented as JSON"))?;
        add_object(origin, n, v, into)?;
    }
    Ok(())
}

fn add_object(
    origin: &str,
    n: usize,
    v: serde_json::Value,
    into: &mut ClusterInput,
) -> anyhow::Result<()> {
    let api = v.get("apiVersion").and_then(|x| x.as_str()).unwrap_or("");
    let kind = v.get("kind").and_then(|x| x.as_str()).unwrap_or("");
    let name = v
        .pointer("/metadata/name")
        .and_then(|x| x.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    let at = format!("{origin}: document {n}");
    match (api, kind) {
        ("ferrolb.io/v1alpha1", "LoadBalancerIPPool") => into.pools.push(
            serde_json::from_value(v)
                .with_context(|| format!("{at}: LoadBalancerIPPool {name} is malformed"))?,
        ),
        ("ferrolb.io/v1alpha1", "L2AnnouncementPolicy") => into.policies.push(
            serde_json::from_value(v)
                .with_context(|| format!("{at}: L2AnnouncementPolicy {name} is malformed"))?,
        ),
        ("v1", "Service") => into.services.push(
            serde_json::from_value(v)
                .with_context(|| format!("{at}: Service {name} is malformed"))?,
        ),
        ("v1", "Namespace") => into.namespaces.push(
            serde_json::from_value(v)
                .with_context(|| format!("{at}: Namespace {name} is malformed"))?,
        ),
        ("v1", "Node") => into.nodes.push(
            serde_json::from_value(v).with_context(|| format!("{at}: Node {name} is malformed"))?,
        ),
        (_, "List") => {
            let items = v
                .get("items")
                .and_then(|x| x.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                add_object(origin, n, item, into)?;
            }
        }
        (a, _) if a.starts_with("metallb.io/") => {
            // MetalLB manifests are converted in memory (as `ferrolb convert` would), and the
            // MetalLB Service annotations are read as aliases.
            into.metallb = true;
            let mut conv = crate::convert::Conversion {
                metallb_pools: std::mem::take(&mut into.metallb_pools),
                ..Default::default()
            };
            crate::convert::convert_documents(&at, vec![v], &mut conv);
            into.metallb_pools = std::mem::take(&mut conv.metallb_pools);
            for f in &conv.findings {
                into.notes.push(f.to_string());
            }
            for o in conv.objects {
                add_object(origin, n, o, into)?;
            }
        }
        (a, k) if a.starts_with("cilium.io/") => into.notes.push(format!(
            "{at}: {k} {name} ignored (a Cilium kind: convert it with `ferrolb convert`)"
        )),
        ("", _) | (_, "") => bail!("{at}: not a Kubernetes object (apiVersion and kind required)"),
        (a, k) => into.notes.push(format!("{at}: {k} {name} ({a}) ignored")),
    }
    Ok(())
}

// ----- planning --------------------------------------------------------------------------------

/// Plans every cluster and checks them against each other.
pub fn plan(clusters: &[ClusterInput], class: &ClassOptions) -> Report {
    let mut out = Vec::new();
    let mut ranges: Vec<(String, String, Vec<Range>)> = Vec::new();
    let mut conflicts = 0;
    for c in clusters {
        let (rep, pool_ranges) = plan_cluster(c, class);
        conflicts += rep.pools.iter().filter(|p| p.conflict.is_some()).count();
        for (pool, r) in pool_ranges {
            ranges.push((c.name.clone(), pool, r));
        }
        out.push(rep);
    }
    let mut cross = Vec::new();
    for (i, (ca, pa, ra)) in ranges.iter().enumerate() {
        for (cb, pb, rb) in &ranges[i + 1..] {
            if ca == cb {
                continue;
            }
            let Some((x, y)) = ra
                .iter()
                .find_map(|x| rb.iter().find(|y| x.overlaps(y)).map(|y| (x, y)))
            else {
                continue;
            };
            let mut message = format!(
                "pool {pa} of cluster {ca} ({}) overlaps pool {pb} of cluster {cb} ({}): both clusters may hand out the same address",
                x.display(),
                y.display()
            );
            let collisions = colliding_services(&out, ca, cb);
            if !collisions.is_empty() {
                message.push_str(&format!("; already colliding: {}", collisions.join(", ")));
            }
            cross.push(CrossConflict {
                clusters: [ca.clone(), cb.clone()],
                pools: [pa.clone(), pb.clone()],
                message,
            });
        }
    }
    conflicts += cross.len();
    Report {
        ok: conflicts == 0,
        conflicts,
        clusters: out,
        cross_cluster: cross,
    }
}

fn colliding_services(reports: &[ClusterReport], a: &str, b: &str) -> Vec<String> {
    let ips = |name: &str| -> BTreeMap<String, String> {
        reports
            .iter()
            .filter(|r| r.name == name)
            .flat_map(|r| &r.services)
            .flat_map(|s| {
                s.addresses
                    .iter()
                    .map(move |ad| (ad.ip.clone(), format!("{}/{}", s.namespace, s.name)))
            })
            .collect()
    };
    let (ia, ib) = (ips(a), ips(b));
    ia.iter()
        .filter_map(|(ip, sa)| {
            ib.get(ip)
                .map(|sb| format!("{ip} is {sa} in {a} and {sb} in {b}"))
        })
        .collect()
}

fn plan_cluster(
    c: &ClusterInput,
    class: &ClassOptions,
) -> (ClusterReport, Vec<(String, Vec<Range>)>) {
    let mut notes = c.notes.clone();
    let mut alloc = Allocator::new();
    for n in &c.namespaces {
        if let Some(name) = n.metadata.name.as_deref() {
            alloc.set_namespace(name, n.metadata.labels.clone().unwrap_or_default());
        }
    }
    let mut pool_ranges = Vec::new();
    // What the agent knows of the pools (for policies limited to some pools).
    let mut pool_index: BTreeMap<String, (PoolDef, BTreeMap<String, String>)> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let mut defs = Vec::new();
    for (i, p) in c.pools.iter().enumerate() {
        let (mut def, _) = PoolDef::from_crd(p);
        if def.name.is_empty() {
            notes.push(format!(
                "a LoadBalancerIPPool without metadata.name (#{}) ignored",
                i + 1
            ));
            continue;
        }
        if seen.insert(def.name.clone(), i).is_some() {
            notes.push(format!(
                "LoadBalancerIPPool {} appears more than once; the last one wins",
                def.name
            ));
        }
        if def.created.is_none() {
            // Input order is age order: earlier documents are older.
            def.created = k8s_openapi::jiff::Timestamp::from_second(i as i64).ok();
        }
        pool_ranges.retain(|(n, _): &(String, Vec<Range>)| *n != def.name);
        pool_ranges.push((
            def.name.clone(),
            def.blocks.iter().map(|b| b.range).collect(),
        ));
        pool_index.insert(
            def.name.clone(),
            (def.clone(), p.metadata.labels.clone().unwrap_or_default()),
        );
        defs.push(def);
    }
    let options = ferrolb::agent::eligibility::Options {
        serve_cilium_class: class.cilium_class,
        pools: ferrolb::agent::pools::PoolIndex::from_defs(pool_index.into_values().collect()),
        ..Default::default()
    };

    // Services of ours, deduplicated by key (the last document wins), in key order.
    let mut svcs: BTreeMap<ServiceKey, &Service> = BTreeMap::new();
    for s in &c.services {
        let key = ServiceKey::of(s);
        if !is_ours(s, class) {
            let spec = s.spec.as_ref();
            let ty = spec.and_then(|x| x.type_.as_deref()).unwrap_or("ClusterIP");
            let why = match spec.and_then(|x| x.load_balancer_class.as_deref()) {
                _ if ty != "LoadBalancer" => format!("type {ty}"),
                Some(cls) => format!("loadBalancerClass {cls} is not served"),
                None => "Services without loadBalancerClass are not served".to_string(),
            };
            notes.push(format!("Service {key} skipped: {why}"));
            continue;
        }
        if svcs.insert(key.clone(), s).is_some() {
            notes.push(format!(
                "Service {key} appears more than once; the last one wins"
            ));
        }
    }
    let reqs: BTreeMap<ServiceKey, ServiceReq> = svcs
        .iter()
        .map(|(k, s)| (k.clone(), ServiceReq::from_service_with(s, class)))
        .collect();
    let stored: BTreeMap<&ServiceKey, std::sync::Arc<ferrolb::ipam::StoredReq>> = reqs
        .iter()
        .map(|(k, r)| {
            (
                k,
                std::sync::Arc::new(ferrolb::ipam::StoredReq::from_req(r)),
            )
        })
        .collect();

    // The controller's rebuild (pools → adopt → ensure, oldest Service first).
    let adoption = alloc.rebuild(
        defs,
        svcs.iter().map(|(k, s)| RebuildService {
            req: &stored[k],
            created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ingress: ingress_ips(s),
        }),
    );

    // Policies.
    let mut policies = Vec::new();
    let mut pol: Vec<&L2AnnouncementPolicy> = c.policies.iter().collect();
    pol.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for p in &pol {
        let name = p.metadata.name.clone().unwrap_or_default();
        // The agent's own checks (selectors, interface regexes, preferredNodes), not a copy.
        let problems: Vec<String> = ferrolb::agent::eligibility::policy_problems(&[p])
            .iter()
            .map(ToString::to_string)
            .collect();
        policies.push(PolicyReport { name, problems });
    }
    // Which policies announce a Service's addresses: the agent's own rule (selectors, classes,
    // pools), on the Service as it would look with its planned addresses.
    let covering = ferrolb::agent::eligibility::Policies::new(&pol);

    let mut services = Vec::new();
    let mut planned_services: Vec<Service> = Vec::new();
    for (k, s) in &svcs {
        let Some(o) = alloc.outcome(k) else {
            continue;
        };
        let mut planned = (*s).clone();
        planned.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(
                    o.ips()
                        .iter()
                        .map(|ip| k8s_openapi::api::core::v1::LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        let mut announced_by: Vec<String> = Vec::new();
        for names in covering.covering(&planned, &options).into_values() {
            for n in names {
                if !announced_by.contains(&n) {
                    announced_by.push(n);
                }
            }
        }
        announced_by.sort();
        planned_services.push(planned);
        if o.is_satisfied() && announced_by.is_empty() && !c.policies.is_empty() {
            notes.push(format!(
                "Service {k}: no L2AnnouncementPolicy announces its addresses"
            ));
        }
        let rep = adoption.get(k);
        services.push(ServiceReport {
            namespace: k.namespace.to_string(),
            name: k.name.to_string(),
            satisfied: o.is_satisfied(),
            reason: o.reason.as_str().to_string(),
            message: o.message.clone(),
            addresses: o
                .addresses
                .iter()
                .map(|a| AddressReport {
                    ip: a.ip.to_string(),
                    pool: a.pool.clone(),
                })
                .collect(),
            adopted: rep
                .map(|r| r.kept.iter().map(|a| a.ip.to_string()).collect())
                .unwrap_or_default(),
            not_adopted: rep
                .map(|r| {
                    r.dropped
                        .iter()
                        .map(|(ip, why)| NotAdopted {
                            ip: ip.to_string(),
                            why: why.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            not_covered: o
                .not_covered
                .iter()
                .map(|n| NotAdopted {
                    ip: n.ip.to_string(),
                    why: n.why.clone(),
                })
                .collect(),
            announced_by,
            announcers: Vec::new(),
        });
    }
    if !c.nodes.is_empty() {
        announcer_tiers(c, &pol, &planned_services, &options, &mut services);
        notes.push(
            "announcers: from the Nodes' labels only; the agents also need each node's \
             interface prefixes for subnetAware policies (read from live agents, so here every \
             node the selectors allow stands) and ready local endpoints for \
             externalTrafficPolicy: Local"
                .to_string(),
        );
    }

    let epoch = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let pools = alloc
        .pool_states()
        .into_iter()
        .map(|st| {
            let status = st.to_status(None, epoch.clone());
            PoolReport {
                name: st.name.clone(),
                total: status.ips_total,
                used: status.ips_used,
                available: status.ips_available,
                disabled: st.disabled,
                conflict: st.conflict_with.clone().map(|with| PoolConflict {
                    with,
                    message: st.conflict_message.clone().unwrap_or_default(),
                }),
                block_errors: st
                    .block_errors
                    .iter()
                    .map(|e| FieldProblem {
                        field: e.field.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
                selector_error: st.selector_error.clone(),
                namespace_selector_error: st.namespace_selector_error.clone(),
                priority: c
                    .pools
                    .iter()
                    .rev()
                    .find(|p| p.metadata.name.as_deref() == Some(st.name.as_str()))
                    .and_then(|p| p.spec.priority),
            }
        })
        .collect();
    (
        ClusterReport {
            name: c.name.clone(),
            pools,
            services,
            policies,
            notes,
        },
        pool_ranges,
    )
}

/// The candidate nodes of each Service's addresses, in preference tiers, by the agents' own
/// computation ([`ferrolb::agent::eligibility::compute`]) on the planned addresses.
fn announcer_tiers(
    c: &ClusterInput,
    policies: &[&L2AnnouncementPolicy],
    planned: &[Service],
    options: &ferrolb::agent::eligibility::Options,
    services: &mut [ServiceReport],
) {
    use ferrolb::agent::cache::{CachedNode, CachedService, Interner};
    use ferrolb::agent::eligibility;
    // Narrowed as the agent's caches narrow them, so plan reads what the agent reads.
    let mut interner = Interner::default();
    let svcs: Vec<CachedService> = planned
        .iter()
        .filter_map(|s| CachedService::new(s, &mut interner))
        .collect();
    let nodes: Vec<CachedNode> = c
        .nodes
        .iter()
        .filter_map(|n| CachedNode::new(n, &mut interner))
        .collect();
    let svc_refs: Vec<&CachedService> = svcs.iter().collect();
    let node_refs: Vec<&CachedNode> = nodes.iter().collect();
    let desired = eligibility::compute(&eligibility::Inputs {
        node_name: "",
        policies,
        services: &svc_refs,
        nodes: &node_refs,
        endpoint_slices: &[],
        interfaces: &[],
        options,
        prev: &[],
    });
    for g in &desired.groups {
        let tiers: Vec<Vec<String>> = g
            .candidates
            .split(|n| n == ferrolb::lease::TIER_BREAK)
            .map(<[String]>::to_vec)
            .filter(|t| !t.is_empty())
            .collect();
        for sref in &g.services {
            if let Some(r) = services
                .iter_mut()
                .find(|r| *r.namespace == *sref.namespace && *r.name == *sref.name)
            {
                r.announcers = tiers.clone();
            }
        }
    }
}

// ----- output ----------------------------------------------------------------------------------

impl Report {
    /// Human-readable tables.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let multi = self.clusters.len() > 1;
        for c in &self.clusters {
            if multi {
                o.push_str(&format!("=== cluster {}\n", c.name));
            }
            let mut rows = vec![vec![
                "POOL".to_string(),
                "TOTAL".into(),
                "USED".into(),
                "AVAILABLE".into(),
                "DISABLED".into(),
                "CONFLICT".into(),
            ]];
            for p in &c.pools {
                rows.push(vec![
                    p.name.clone(),
                    p.total.to_string(),
                    p.used.to_string(),
                    p.available.to_string(),
                    p.disabled.to_string(),
                    p.conflict
                        .as_ref()
                        .map_or("-".to_string(), |x| format!("with {}", x.with)),
                ]);
            }
            o.push_str(&table(&rows));
            for p in &c.pools {
                if let Some(x) = &p.conflict {
                    o.push_str(&format!("CONFLICT pool {}: {}\n", p.name, x.message));
                }
                for e in &p.block_errors {
                    o.push_str(&format!(
                        "INVALID pool {}: {}: {}\n",
                        p.name, e.field, e.message
                    ));
                }
                if let Some(e) = &p.selector_error {
                    o.push_str(&format!(
                        "INVALID pool {}: spec.serviceSelector.{e}\n",
                        p.name
                    ));
                }
            }
            o.push('\n');
            let mut rows = vec![vec![
                "SERVICE".to_string(),
                "ADDRESSES".into(),
                "POOL".into(),
                "STATUS".into(),
                "ANNOUNCED BY".into(),
            ]];
            let with_nodes = c.services.iter().any(|s| !s.announcers.is_empty());
            if with_nodes {
                rows[0].push("NODES (preferred first)".into());
            }
            for s in &c.services {
                let dash = |v: Vec<String>| {
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                let mut pools: Vec<String> = s.addresses.iter().map(|a| a.pool.clone()).collect();
                pools.dedup();
                let mut row = vec![
                    format!("{}/{}", s.namespace, s.name),
                    dash(s.addresses.iter().map(|a| a.ip.clone()).collect()),
                    dash(pools),
                    s.reason.clone(),
                    dash(s.announced_by.clone()),
                ];
                if with_nodes {
                    row.push(if s.announcers.is_empty() {
                        "-".to_string()
                    } else {
                        s.announcers
                            .iter()
                            .map(|t| t.join(","))
                            .collect::<Vec<_>>()
                            .join(" > ")
                    });
                }
                rows.push(row);
            }
            o.push_str(&table(&rows));
            for s in c.services.iter().filter(|s| !s.satisfied) {
                o.push_str(&format!(
                    "UNSATISFIED {}/{}: {}: {}\n",
                    s.namespace, s.name, s.reason, s.message
                ));
            }
            for s in &c.services {
                for n in &s.not_adopted {
                    o.push_str(&format!(
                        "NOT ADOPTED {}/{}: {}: {}\n",
                        s.namespace, s.name, n.ip, n.why
                    ));
                }
                for n in &s.not_covered {
                    o.push_str(&format!(
                        "NOT COVERED {}/{}: kept, {}\n",
                        s.namespace, s.name, n.why
                    ));
                }
            }
            for p in c.policies.iter().filter(|p| !p.problems.is_empty()) {
                for pr in &p.problems {
                    o.push_str(&format!("INVALID policy {}: {pr}\n", p.name));
                }
            }
            for n in &c.notes {
                o.push_str(&format!("note: {n}\n"));
            }
            o.push('\n');
        }
        for x in &self.cross_cluster {
            o.push_str(&format!(
                "CONFLICT between clusters {} and {}: {}\n",
                x.clusters[0], x.clusters[1], x.message
            ));
        }
        if self.ok {
            o.push_str("no conflicts\n");
        } else {
            o.push_str(&format!("{} conflict(s)\n", self.conflicts));
        }
        o
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut o = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        o.push_str(line.trim_end());
        o.push('\n');
    }
    o
}

/// Builds the cluster inputs from the flags.
pub fn inputs(args: &Args) -> anyhow::Result<Vec<ClusterInput>> {
    let mut clusters: Vec<ClusterInput> = Vec::new();
    let get = |name: &str, clusters: &mut Vec<ClusterInput>| -> usize {
        match clusters.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                clusters.push(ClusterInput {
                    name: name.to_string(),
                    ..Default::default()
                });
                clusters.len() - 1
            }
        }
    };
    for f in &args.files {
        let i = get("default", &mut clusters);
        load(f, &mut clusters[i])?;
    }
    for spec in &args.clusters {
        let (name, file) = spec
            .split_once('=')
            .filter(|(n, f)| !n.is_empty() && !f.is_empty())
            .ok_or_else(|| anyhow!("--cluster {spec:?}: expected NAME=FILE"))?;
        let i = get(name, &mut clusters);
        load(Path::new(file), &mut clusters[i])?;
    }
    if clusters.is_empty() {
        bail!("nothing to plan: give manifests with -f FILE or --cluster NAME=FILE");
    }
    Ok(clusters)
}

/// Runs `ferrolb plan`.
pub async fn run(args: Args) -> ferrolb::CmdResult {
    let clusters = inputs(&args)?;
    let class = ClassOptions {
        default_class: !args.no_default_class,
        cilium_class: args.serve_cilium_class,
        metallb_annotations: args.metallb_annotations || clusters.iter().any(|c| c.metallb),
    };
    let report = plan(&clusters, &class);
    let text = match args.output {
        Output::Table => report.to_table(),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod rebuild_order_tests {
    use super::*;
    use ferrolb::controller::state::{Options, State};
    use ferrolb::fixtures::ServiceBuilder;

    fn manifest<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("manifest")
    }

    /// Three Services, two addresses, one held: whoever is ensured first gets the other. Name order
    /// (a, b, c) and creation order (c, b, a) disagree; "b" holds 198.51.100.3 in its status.
    fn input() -> ClusterInput {
        let pool = manifest(serde_json::json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool",
            "metadata": {"name": "small", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"blocks": [{"start": "198.51.100.2", "stop": "198.51.100.3"}]}
        }));
        let svc = |name: &str, created: &str, ingress: &[&str]| -> Service {
            ServiceBuilder::named("default", name)
                .created(created.parse().expect("timestamp"))
                .type_("LoadBalancer")
                .port("", 80, "")
                .ingress(ingress)
                .build()
        };
        ClusterInput {
            name: "c".into(),
            pools: vec![pool],
            services: vec![
                svc("a", "2026-03-01T00:00:00Z", &[]),
                svc("b", "2026-02-01T00:00:00Z", &["198.51.100.3"]),
                svc("c", "2026-01-15T00:00:00Z", &[]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn plan_and_controller_assign_the_same_addresses_oldest_service_first() {
        let c = input();
        let class = ClassOptions::default();
        let (report, _) = plan_cluster(&c, &class);
        let planned: BTreeMap<String, Vec<String>> = report
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.addresses.iter().map(|a| a.ip.clone()).collect(),
                )
            })
            .collect();

        let opts = Options {
            default_class: true,
            serve_cilium_class: false,
            metallb_annotations: false,
        };
        let mut state = State::new(opts);
        state.replace(c.pools.clone());
        state.replace(c.services.iter().map(|s| opts.cache(s.clone())).collect());
        assert_eq!(state.activate(), 3);
        let controller: BTreeMap<String, Vec<String>> = ["a", "b", "c"]
            .into_iter()
            .map(|n| {
                let o = state
                    .outcome(&ServiceKey::new("default", n))
                    .expect("outcome");
                (
                    n.to_string(),
                    o.addresses.iter().map(|a| a.ip.to_string()).collect(),
                )
            })
            .collect();

        assert_eq!(planned, controller);
        // The pinned order: b keeps its address, c (older) gets the free one, a gets none.
        assert_eq!(planned["b"], ["198.51.100.3"]);
        assert_eq!(planned["c"].len(), 1);
        assert!(planned["a"].is_empty(), "{planned:?}");
    }
}
