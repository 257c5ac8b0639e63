//! `ferrolb doctor`: checks a live cluster for the misconfigurations behind "it doesn't ARP"
//! and prints each finding with its fix. Exit status: `0` no finding, `1` findings, `2` the
//! cluster could not be read.
//!
//! Checks (the `check` field of a [`Finding`]):
//! - `kube-proxy-strict-arp`: ConfigMap `kube-system/kube-proxy`, key `config.conf`, has
//!   `mode: ipvs` without `ipvs.strictARP: true` (every node's kernel then answers ARP for every
//!   Service address bound to `kube-ipvs0`).
//! - `pool-overlap`: two pools share addresses (the newer one allocates nothing new).
//! - `pool-node-address`: a pool contains a node's own address (`status.addresses`).
//! - `pool-invalid`: a pool block or selector the controller rejects.
//! - `policy-invalid`: a policy selector or interface regex the agents reject (the product's
//!   own policy compiler, [`ferrolb::agent::eligibility::compute`], decides).
//! - `policy-no-node`: a valid policy whose `nodeSelector` selects no node (nodes labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers` never count).
//! - `service-pending`: a Service of ferrolb's class without an address, with the reason from its
//!   condition (or no condition at all: no controller handled it).
//! - `service-unannounced`: a Service with an address that no node announces (no live holder of
//!   the Lease covering it), with why when it can be told (no policy selects it).
//! - `agent-missing`: a node some policy selects without a fresh presence Lease (no agent runs
//!   there, or it cannot reach the API server).
//! - `crd-missing` / `crd-stale`: a ferrolb CRD not served, or served with another schema,
//!   printer columns or names than this binary's ([`ferrolb::crds::all`]).
//! - `lease-timing`: the agent DaemonSet's lease flags are rejected by the agent, or leave less
//!   than one retry period between the renew deadline and the lease duration (the fencing
//!   margin: a holder that cannot renew must stop before anyone may take over).
//!
//! What is not checked (reported under `skipped`): which interfaces exist on the nodes (not
//! visible through the API; each agent exports `ferrolb_agent_policy_problems`), clock rates of
//! the nodes, and any check whose objects could not be read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb::agent::eligibility::{self, LABEL_EXCLUDE_LB};
use ferrolb::api::L2AnnouncementPolicy;
use ferrolb::ipam::range::Addr;
use ferrolb::ipam::selector::Selector;
use ferrolb::ipam::Reason;
use ferrolb::lease::{presence_name, LeaseConfig};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;

use super::{
    announcements_from_leases, considered, ipam_condition, lease_live, pool_defs, presence_by_node,
    service_key, KubeArgs, Output, Scope, Snapshot,
};
use ferrolb::k8s::service::ingress_ips;

/// Flags of `ferrolb doctor`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How to reach the cluster. Without `-n`, Services of every namespace are checked.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}

/// One problem and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Which check found it (see the module documentation).
    pub check: String,
    /// The object concerned, e.g. `LoadBalancerIPPool/b` or `Service demo/web`.
    pub object: String,
    pub problem: String,
    pub fix: String,
}

/// The result of `ferrolb doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// Checks that could not run, and why.
    pub skipped: Vec<String>,
}

/// Everything the checks look at (a [`Snapshot`] plus what only `doctor` reads).
#[derive(Debug, Clone)]
pub struct Inputs {
    pub snap: Snapshot,
    /// `kube-system/kube-proxy`; `Err` = why it could not be read (absent, forbidden).
    pub kube_proxy: Result<ConfigMap, String>,
    /// The served ferrolb CRDs by name; `Err` = why they could not be read.
    pub crds: Result<BTreeMap<String, CustomResourceDefinition>, String>,
    /// Agent DaemonSets; `Err` = why they could not be read.
    pub agents: Result<Vec<DaemonSet>, String>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            ok: true,
            findings: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

impl Report {
    fn add(&mut self, check: &str, object: String, problem: String, fix: String) {
        self.findings.push(Finding {
            check: check.to_string(),
            object,
            problem,
            fix,
        });
    }
}

/// Runs every check (pure).
pub fn check(inp: &Inputs, now: jiff::Timestamp) -> Report {
    let mut r = Report::default();
    check_kube_proxy(inp, &mut r);
    check_pools(inp, &mut r);
    let eligible = check_policies(inp, &mut r);
    check_services(inp, now, &mut r);
    check_agents(inp, &eligible, now, &mut r);
    check_crds(inp, &mut r);
    check_lease_timing(inp, &mut r);
    r.skipped.push(
        "interfaces on the nodes: not visible through the API (see each agent's ferrolb_agent_policy_problems metric and the policies' Valid condition)".into(),
    );
    r.skipped
        .push("clock rates of the nodes: not measurable from here".into());
    for n in &inp.snap.notes {
        r.skipped.push(n.clone());
    }
    r.findings.sort();
    r.findings.dedup();
    r.ok = r.findings.is_empty();
    r
}

fn check_kube_proxy(inp: &Inputs, r: &mut Report) {
    let cm = match &inp.kube_proxy {
        Ok(cm) => cm,
        Err(why) => {
            r.skipped.push(format!("kube-proxy mode: {why}"));
            return;
        }
    };
    let Some(conf) = cm.data.as_ref().and_then(|d| d.get("config.conf")) else {
        r.skipped
            .push("kube-proxy mode: ConfigMap kube-system/kube-proxy has no config.conf".into());
        return;
    };
    let v: serde_yaml::Value = match serde_yaml::from_str(conf) {
        Ok(v) => v,
        Err(e) => {
            r.skipped.push(format!(
                "kube-proxy mode: config.conf of kube-system/kube-proxy is not YAML: {e}"
            ));
            return;
        }
    };
    let mode = v.get("mode").and_then(|m| m.as_str()).unwrap_or_default();
    let strict = v
        .get("ipvs")
        .and_then(|i| i.get("strictARP"))
        .and_then(|s| s.as_bool())
        .unwrap_or(false);
    if mode.eq_ignore_ascii_case("ipvs") && !strict {
        r.add(
            "kube-proxy-strict-arp",
            "ConfigMap kube-system/kube-proxy".into(),
            "kube-proxy runs in IPVS mode without strictARP: every node's kernel answers ARP for every Service address bound to kube-ipvs0, so clients may reach any node, not the announcing one".into(),
            "set `ipvs.strictARP: true` in config.conf (kubectl -n kube-system edit configmap kube-proxy), then restart kube-proxy (kubectl -n kube-system rollout restart daemonset kube-proxy)".into(),
        );
    }
}

fn check_pools(inp: &Inputs, r: &mut Report) {
    let defs = pool_defs(&inp.snap.pools);
    for d in &defs {
        for e in &d.block_errors {
            r.add(
                "pool-invalid",
                format!("LoadBalancerIPPool/{}", d.name),
                format!("{}: {}", e.field, e.message),
                "correct or remove that block; the valid rest of the pool keeps working".into(),
            );
        }
        if let Err(e) = &d.selector {
            r.add(
                "pool-invalid",
                format!("LoadBalancerIPPool/{}", d.name),
                format!("spec.serviceSelector: {e}; the pool selects no Service"),
                "correct the serviceSelector".into(),
            );
        }
    }
    // Pairs of pools sharing addresses; the older (by creation, then name) one is reported
    // as the one kept, as the controller decides.
    let mut ordered: Vec<_> = defs.iter().collect();
    ordered.sort_by(|a, b| {
        (a.created.is_some(), a.created, &a.name).cmp(&(b.created.is_some(), b.created, &b.name))
    });
    for (i, newer) in ordered.iter().enumerate() {
        for older in &ordered[..i] {
            for nb in &newer.blocks {
                if let Some(ob) = older.blocks.iter().find(|ob| ob.range.overlaps(&nb.range)) {
                    r.add(
                        "pool-overlap",
                        format!("LoadBalancerIPPool/{}", newer.name),
                        format!(
                            "spec.blocks[{}] ({}) overlaps pool {} spec.blocks[{}] ({}); {} is the newer pool and allocates nothing new until the overlap is gone",
                            nb.index,
                            nb.range.display(),
                            older.name,
                            ob.index,
                            ob.range.display(),
                            newer.name
                        ),
                        format!(
                            "change the blocks of {} or {} so that no address is in both",
                            newer.name, older.name
                        ),
                    );
                }
            }
        }
    }
    for node in &inp.snap.nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        for a in node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            let Ok(ip) = a.address.parse::<IpAddr>() else {
                continue;
            };
            for d in &defs {
                if let Some(b) = d.block_containing(Addr::from_ip(ip)) {
                    r.add(
                        "pool-node-address",
                        format!("LoadBalancerIPPool/{}", d.name),
                        format!(
                            "spec.blocks[{}] ({}) contains {ip}, the {} of node {name}: a Service given it would be answered for by two stations",
                            b.index,
                            b.range.display(),
                            a.type_
                        ),
                        format!(
                            "take {ip} out of the pool (split the block into start/stop ranges around it)"
                        ),
                    );
                }
            }
        }
    }
}

fn excluded(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_EXCLUDE_LB))
}

/// Policy checks; returns, per node that some valid policy selects, the policies selecting it.
fn check_policies(inp: &Inputs, r: &mut Report) -> BTreeMap<String, BTreeSet<String>> {
    let mut eligible: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &inp.snap.policies {
        let name = p.metadata.name.clone().unwrap_or_default();
        let problems = policy_problems(p);
        for pr in &problems {
            r.add(
                "policy-invalid",
                format!("L2AnnouncementPolicy/{name}"),
                pr.to_string(),
                if pr.field.starts_with("spec.interfaces") {
                    "correct the regex (anchored, Rust regex syntax); an invalid regex matches no interface".into()
                } else {
                    "correct the selector; an invalid selector selects nothing".into()
                },
            );
        }
        let Ok(sel) = Selector::compile_opt(p.spec.node_selector.as_ref()) else {
            continue; // reported above
        };
        let selected: Vec<String> = inp
            .snap
            .nodes
            .iter()
            .filter(|n| !excluded(n))
            .filter(|n| sel.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        if selected.is_empty() && !inp.snap.nodes.is_empty() {
            r.add(
                "policy-no-node",
                format!("L2AnnouncementPolicy/{name}"),
                format!(
                    "spec.nodeSelector selects none of the {} nodes (nodes labelled {LABEL_EXCLUDE_LB} never announce): its Services are announced by nobody",
                    inp.snap.nodes.len()
                ),
                "label the nodes that should announce (kubectl label node NODE KEY=VALUE) or change spec.nodeSelector".into(),
            );
        }
        if problems.is_empty() {
            for n in selected {
                eligible.entry(n).or_default().insert(name.clone());
            }
        }
    }
    eligible
}

/// The problems the agents find in a policy: the product's own compiler decides.
pub fn policy_problems(p: &L2AnnouncementPolicy) -> Vec<eligibility::PolicyProblem> {
    let policies = [p];
    let inputs = eligibility::Inputs {
        node_name: "",
        policies: &policies,
        services: &[],
        nodes: &[],
        endpoint_slices: &[],
        interfaces: &[],
        options: &eligibility::Options::default(),
        prev: &[],
    };
    eligibility::compute(&inputs).problems
}

fn pending_fix(reason: &str) -> &'static str {
    const FIXES: &[(Reason, &str)] = &[
        (Reason::NoPool, "create a LoadBalancerIPPool whose serviceSelector selects this Service and that has its IP family (kubectl get lbpool), or check that the selecting pool is not disabled or in Conflict"),
        (Reason::OutOfIPs, "add blocks to the pool or free addresses (kubectl get lbpool shows IPS AVAILABLE)"),
        (Reason::AlreadyAllocated, "request another address, or give both Services compatible sharing annotations (ferrolb.io/sharing-key)"),
        (Reason::PoolSelectorMismatch, "request an address from a pool that selects this Service, or change that pool's serviceSelector"),
        (Reason::InvalidRequest, "correct the annotation or field named in the message"),
    ];
    FIXES
        .iter()
        .find(|(r, _)| r.as_str() == reason)
        .map(|(_, f)| *f)
        .unwrap_or("see the condition message")
}

fn check_services(inp: &Inputs, now: jiff::Timestamp, r: &mut Report) {
    let anns = announcements_from_leases(&inp.snap.leases, now);
    // The agents' own coverage rule (service selector, class, pools), not a copy.
    let policy_refs: Vec<&L2AnnouncementPolicy> = inp.snap.policies.iter().collect();
    let covering = eligibility::Policies::new(&policy_refs);
    let pool_refs: Vec<&ferrolb::api::LoadBalancerIPPool> = inp.snap.pools.iter().collect();
    let options = eligibility::Options {
        pools: ferrolb::agent::pools::PoolIndex::new(&pool_refs),
        ..Default::default()
    };
    let mut svcs: Vec<&Service> = inp.snap.services.iter().filter(|s| considered(s)).collect();
    svcs.sort_by_key(|s| service_key(s));
    for svc in svcs {
        let key = service_key(svc);
        let ips = ingress_ips(svc);
        if ips.is_empty() {
            match ipam_condition(svc) {
                Some(c) if c.status != "True" => r.add(
                    "service-pending",
                    format!("Service {key}"),
                    format!("no address: {}: {}", c.reason, c.message),
                    pending_fix(&c.reason).into(),
                ),
                Some(_) => {}
                None => r.add(
                    "service-pending",
                    format!("Service {key}"),
                    "no address and no ferrolb.io/IPAMRequestSatisfied condition: no ferrolb controller has handled it".into(),
                    "check that the controller runs and leads (kubectl -n ferrolb-system get lease ferrolb-controller; kubectl -n ferrolb-system logs deploy/ferrolb-controller), and the Service's loadBalancerClass".into(),
                ),
            }
            continue;
        }
        let announced = anns.iter().any(|a| {
            a.live && (a.services.contains(&key) || ips.iter().any(|ip| a.addresses.contains(ip)))
        });
        if announced {
            continue;
        }
        let mut selecting: Vec<String> = covering
            .covering(svc, &options)
            .into_iter()
            .filter(|(ip, _)| ips.contains(ip))
            .flat_map(|(_, names)| names)
            .collect();
        selecting.sort();
        selecting.dedup();
        let list = ips
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if selecting.is_empty() {
            r.add(
                "service-unannounced",
                format!("Service {key}"),
                format!("{list}: announced by no node; no L2AnnouncementPolicy selects this Service (with loadBalancerIPs: true, and its pools or poolSelector matching the address's pool)"),
                "create an L2AnnouncementPolicy whose serviceSelector selects it (e.g. examples/ or the chart's defaultPolicy)".into(),
            );
        } else {
            r.add(
                "service-unannounced",
                format!("Service {key}"),
                format!(
                    "{list}: announced by no node (no live holder of its Lease), although policy {} selects it",
                    selecting.join(", ")
                ),
                "check that agents run on the nodes those policies select (agent-missing findings), that those nodes have an interface the policy allows, and for externalTrafficPolicy: Local that a ready endpoint runs on one of them".into(),
            );
        }
    }
}

fn check_agents(
    inp: &Inputs,
    eligible: &BTreeMap<String, BTreeSet<String>>,
    now: jiff::Timestamp,
    r: &mut Report,
) {
    let presence = presence_by_node(&inp.snap.leases);
    let by_name: BTreeMap<&str, &k8s_openapi::api::coordination::v1::Lease> = inp
        .snap
        .leases
        .iter()
        .filter_map(|l| Some((l.metadata.name.as_deref()?, l)))
        .collect();
    for (node, policies) in eligible {
        let lease = presence
            .get(node)
            .copied()
            .or_else(|| by_name.get(presence_name(node).as_str()).copied());
        // Fresh: renewed within twice its duration (tolerates this machine's clock being off by
        // up to one lease duration).
        let fresh = lease.is_some_and(|l| {
            let secs = l
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(0)
                .max(1);
            lease_live(l, now, jiff::SignedDuration::from_secs(i64::from(secs)))
        });
        if fresh {
            continue;
        }
        let what = match lease {
            None => format!("no presence Lease {}", presence_name(node)),
            Some(l) => format!(
                "presence Lease {} not renewed since {}",
                presence_name(node),
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| "ever".into())
            ),
        };
        r.add(
            "agent-missing",
            format!("Node/{node}"),
            format!(
                "selected by policy {} but no agent reports from it ({what})",
                policies.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            format!("check the agent pod on {node} (kubectl get pods -A -l app.kubernetes.io/component=agent -o wide --field-selector spec.nodeName={node}): the DaemonSet's tolerations and nodeSelector, its logs, and that it reaches the API server"),
        );
    }
}

/// Numbers compared by value (`0` and `0.0` are equal), everything else structurally; returns
/// the first differing JSON path.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64() != y.as_f64()).then(|| path.to_string())
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(&p, u, v),
                    _ => Some(p),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v)),
        _ => (a != b).then(|| path.to_string()),
    }
}

/// What of a CRD must match: names, scope, and per version the schema, subresources and
/// printer columns (name, type, jsonPath).
fn crd_essentials(crd: &CustomResourceDefinition) -> Value {
    let s = &crd.spec;
    let versions: Vec<Value> = s
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "served": v.served,
                "schema": v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()),
                "subresources": v.subresources,
                "columns": v.additional_printer_columns.as_ref().map(|cols| cols.iter().map(|c| serde_json::json!({
                    "name": c.name, "type": c.type_, "jsonPath": c.json_path
                })).collect::<Vec<_>>()),
            })
        })
        .collect();
    serde_json::json!({
        "group": s.group,
        "scope": s.scope,
        "names": {"kind": s.names.kind, "plural": s.names.plural, "shortNames": s.names.short_names},
        "versions": versions,
    })
}

fn check_crds(inp: &Inputs, r: &mut Report) {
    let served = match &inp.crds {
        Ok(m) => m,
        Err(why) => {
            r.skipped.push(format!("CRDs: {why}"));
            return;
        }
    };
    for (_, want) in ferrolb::crds::all() {
        let name = want.metadata.name.clone().unwrap_or_default();
        let Some(have) = served.get(&name) else {
            r.add(
                "crd-missing",
                format!("CustomResourceDefinition/{name}"),
                "not installed: the controller and agents cannot list it".into(),
                "apply the CRDs of this version: ferrolb crds | kubectl apply -f - (or kubectl apply -f crds/)".into(),
            );
            continue;
        };
        if let Some(path) = first_difference("spec", &crd_essentials(&want), &crd_essentials(have))
        {
            r.add(
                "crd-stale",
                format!("CustomResourceDefinition/{name}"),
                format!("differs from this ferrolb version's at {path}"),
                "apply the CRDs of this version (Helm installs CRDs only on first install): ferrolb crds | kubectl apply -f -".into(),
            );
        }
    }
}

/// The agent's flags from a container's `args` (the first one being the `agent` subcommand).
fn agent_args(args: &[String]) -> Result<ferrolb::agent::Args, String> {
    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        _log: ferrolb::telemetry::LogArgs,
        #[command(flatten)]
        agent: ferrolb::agent::Args,
    }
    use clap::Parser;
    let argv = std::iter::once("agent").chain(args.iter().skip(1).map(String::as_str));
    Agent::try_parse_from(argv)
        .map(|a| a.agent)
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}

/// The lease-timing finding for a configuration, if any (pure).
pub fn timing_problem(cfg: &LeaseConfig) -> Option<String> {
    if let Err(e) = cfg.validate() {
        return Some(format!("the agent refuses these timings: {e}"));
    }
    let margin = cfg.lease_duration.saturating_sub(cfg.renew_deadline);
    if margin < cfg.retry_period {
        return Some(format!(
            "fencing margin {margin:?} (lease duration {:?} − renew deadline {:?}) is shorter than one retry period ({:?}): a holder that cannot renew may still answer when another node takes over, and a slow clock on it widens that",
            cfg.lease_duration, cfg.renew_deadline, cfg.retry_period
        ));
    }
    None
}

fn check_lease_timing(inp: &Inputs, r: &mut Report) {
    let dss = match &inp.agents {
        Ok(d) => d,
        Err(why) => {
            r.skipped.push(format!("lease timing: {why}"));
            return;
        }
    };
    let mut seen = 0;
    for ds in dss {
        let obj = format!(
            "DaemonSet {}/{}",
            ds.metadata.namespace.as_deref().unwrap_or_default(),
            ds.metadata.name.as_deref().unwrap_or_default()
        );
        let containers = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.as_slice())
            .unwrap_or_default();
        for c in containers {
            let Some(args) = c
                .args
                .as_ref()
                .filter(|a| a.first().is_some_and(|f| f == "agent"))
            else {
                continue;
            };
            seen += 1;
            match agent_args(args) {
                Ok(a) => {
                    let cfg = LeaseConfig {
                        lease_duration: a.lease_duration,
                        renew_deadline: a.renew_deadline,
                        retry_period: a.retry_period,
                        rank_step: a.rank_step,
                    };
                    if let Some(problem) = timing_problem(&cfg) {
                        r.add(
                            "lease-timing",
                            obj.clone(),
                            problem,
                            "use lease duration > renew deadline + retry period, e.g. the defaults 5s/3s/1s, or 15s/10s/2s for lower API load (--lease-duration/--renew-deadline/--retry-period; chart: agent.lease.*)".into(),
                        );
                    }
                }
                Err(e) => r.skipped.push(format!(
                    "lease timing of {obj}: cannot read its agent flags: {e}"
                )),
            }
        }
    }
    if seen == 0 {
        r.skipped.push(
            "lease timing: no agent DaemonSet found (label app.kubernetes.io/component=agent, container args starting with `agent`)".into(),
        );
    }
}

/// Prints the report as text.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.findings {
        out.push_str(&format!(
            "[{}] {}: {}\n    fix: {}\n",
            f.check, f.object, f.problem, f.fix
        ));
    }
    for s in &r.skipped {
        out.push_str(&format!("skipped: {s}\n"));
    }
    if r.ok {
        out.push_str("no findings\n");
    } else {
        out.push_str(&format!("{} finding(s)\n", r.findings.len()));
    }
    out
}

fn why(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 404 => "not found".into(),
        kube::Error::Api(s) if s.code == 403 => format!("not allowed to read ({})", s.message),
        e => format!("cannot read: {e}"),
    }
}

/// Reads what the checks need.
pub async fn gather(client: &kube::Client, args: &KubeArgs) -> anyhow::Result<Inputs> {
    let scope = Scope::from_args(args, None);
    let snap = Snapshot::load(client, args, &scope).await?;
    let kube_proxy = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("kube-proxy")
        .await
        .map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => {
                "no ConfigMap kube-system/kube-proxy (no kube-proxy, or not installed by kubeadm)"
                    .to_string()
            }
            e => format!("ConfigMap kube-system/kube-proxy: {}", why(e)),
        });
    let crd_api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut crds = Ok(BTreeMap::new());
    for (_, want) in ferrolb::crds::all() {
        let name = want.metadata.name.clone().unwrap_or_default();
        match crd_api.get_opt(&name).await {
            Ok(Some(c)) => {
                if let Ok(m) = crds.as_mut() {
                    m.insert(name, c);
                }
            }
            Ok(None) => {}
            Err(e) => {
                crds = Err(format!("CustomResourceDefinition {name}: {}", why(&e)));
                break;
            }
        }
    }
    let agents = Api::<DaemonSet>::all(client.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("DaemonSets: {}", why(&e)));
    Ok(Inputs {
        snap,
        kube_proxy,
        crds,
        agents,
    })
}

/// Runs `ferrolb doctor`.
pub async fn run(args: Args) -> ferrolb::CmdResult {
    let inputs = match async {
        let (client, _) = super::connect(&args.kube).await?;
        gather(&client, &args.kube).await
    }
    .await
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let report = check(&inputs, jiff::Timestamp::now());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", render_text(&report)),
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(d: u64, rd: u64, rp: u64) -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(d),
            renew_deadline: Duration::from_millis(rd),
            retry_period: Duration::from_millis(rp),
            rank_step: Duration::from_millis(250),
        }
    }

    #[test]
    fn lease_timing_rules() {
        assert_eq!(timing_problem(&LeaseConfig::default()), None);
        assert_eq!(timing_problem(&cfg(15_000, 10_000, 2_000)), None);
        assert!(timing_problem(&cfg(3_000, 3_000, 1_000))
            .unwrap()
            .contains("refuses"));
        let thin = timing_problem(&cfg(3_000, 2_900, 1_000)).unwrap();
        assert!(thin.contains("fencing margin"), "{thin}");
    }

    #[test]
    fn agent_flags_are_parsed_by_the_agent_parser() {
        let a = agent_args(&[
            "agent".into(),
            "--log-json".into(),
            "--node-name=$(NODE_NAME)".into(),
            "--lease-duration=15s".into(),
            "--renew-deadline".into(),
            "10s".into(),
        ])
        .unwrap();
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.renew_deadline, Duration::from_secs(10));
        assert_eq!(a.retry_period, Duration::from_millis(200), "the default");
        assert!(agent_args(&["agent".into(), "--node-name=x".into(), "--bogus".into()]).is_err());
    }

    #[test]
    fn numbers_compare_by_value() {
        let a = serde_json::json!({"x": {"minimum": 0}, "y": [1, 2]});
        let b = serde_json::json!({"x": {"minimum": 0.0}, "y": [1, 2]});
        assert_eq!(first_difference("spec", &a, &b), None);
        let c = serde_json::json!({"x": {"minimum": 1}, "y": [1, 2]});
        assert_eq!(
            first_difference("spec", &a, &c).as_deref(),
            Some("spec.x.minimum")
        );
    }
}
