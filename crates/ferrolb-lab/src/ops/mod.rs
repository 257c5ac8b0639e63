//! `ferrolb status` and `ferrolb doctor` (also `kubectl ferrolb status|doctor` when the binary is
//! invoked as `kubectl-ferrolb`): who announces what, and what is misconfigured, read from a live
//! cluster with the user's kubeconfig, as kubectl would.
//!
//! Both commands read a [`Snapshot`] of the objects ferrolb works from — pools, policies,
//! Services, the agents' Leases and Nodes — and compute their report from it with pure functions
//! (tested without a cluster), so `status --watch` can feed the same code from watch caches.
//!
//! **Who announces what** comes from [`Announcement`]s. Today they are read from the address
//! Leases (`ferrolb-<hash>`, label [`MANAGED_BY_LABEL`]`=`[`MANAGED_BY_VALUE`]): the holder is
//! the announcing node, `acquireTime` is "since", the annotations [`ANN_ADDRESSES`] and
//! [`ANN_SERVICES`] say what for. The interfaces are not in the Leases: `status` takes them from
//! the Service's `L2Announcement` (written by the holder) when it names the same node.
//!
//! Liveness of a Lease (renewed within its `leaseDurationSeconds`) is judged with this machine's
//! clock against the holder's `renewTime`, so clock offsets between this machine and the nodes
//! shift it; the agents themselves never compare clocks.

pub mod doctor;
pub mod status;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ferrolb::api::{L2AnnouncementPolicy, LoadBalancerIPPool, COND_IPAM_SATISFIED};
use ferrolb::ipam::pool::PoolDef;
use ferrolb::ipam::range::Addr;
use ferrolb::ipam::service::{is_ours, ClassOptions};
use ferrolb::lease::{
    ANN_ADDRESSES, ANN_NODE, ANN_SERVICES, LABEL_ROLE, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    ROLE_PRESENCE,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use serde::Serialize;

/// How to reach the cluster: the flags kubectl users expect.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the in-cluster account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Only Services of this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Services of every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Namespace of the agents' Leases (default: ferrolb's Leases in every namespace, found by
    /// their label).
    #[arg(long)]
    pub lease_namespace: Option<String>,
}

/// Output format of `status` and `doctor`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// One JSON document (with `--watch`: one per line, per change).
    Json,
}

/// The `status` and `doctor` subcommands, as `kubectl ferrolb` sees them.
#[derive(clap::Subcommand, Debug)]
pub enum OpsCmd {
    /// Pools, Services with their addresses and announcing node, pending Services and why.
    Status(status::Args),
    /// Check the cluster for misconfigurations; each finding with its fix. Exit 1 on findings.
    Doctor(doctor::Args),
}

/// `kubectl ferrolb ...`: the binary invoked as `kubectl-ferrolb` (a kubectl plugin).
#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl ferrolb",
    bin_name = "kubectl ferrolb",
    version,
    about = "ferrolb as a kubectl plugin: who announces what (status) and what is misconfigured (doctor)"
)]
pub struct PluginCli {
    #[command(flatten)]
    pub log: ferrolb::telemetry::LogArgs,
    #[command(subcommand)]
    pub cmd: OpsCmd,
}

/// Is this program running as the kubectl plugin (argv[0]'s file name is `kubectl-ferrolb`)?
pub fn invoked_as_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "kubectl-ferrolb" || n == "kubectl-ferrolb.exe")
}

/// `main` of `kubectl-ferrolb`: parses [`PluginCli`], runs it; errors are printed (exit 1).
pub fn plugin_main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = PluginCli::parse();
    ferrolb::telemetry::init_logging(&cli.log);
    let res = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.cmd)));
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a plugin subcommand.
pub async fn run(cmd: OpsCmd) -> ferrolb::CmdResult {
    match cmd {
        OpsCmd::Status(a) => status::run(a).await,
        OpsCmd::Doctor(a) => doctor::run(a).await,
    }
}

/// A client from the user's kubeconfig, and the namespace of its context (`default` if none).
pub async fn connect(args: &KubeArgs) -> anyhow::Result<(kube::Client, String)> {
    let config = ferrolb::k8s::config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let ns = config.default_namespace.clone();
    Ok((ferrolb::k8s::client_from(config)?, ns))
}

/// Which Services a command looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    /// kubectl's rule: `-A` → all, `-n NS` → NS, else `default_ns` (`None` = all).
    pub fn from_args(args: &KubeArgs, default_ns: Option<String>) -> Scope {
        if args.all_namespaces {
            return Scope::All;
        }
        match args.namespace.clone().or(default_ns) {
            Some(ns) => Scope::Namespace(ns),
            None => Scope::All,
        }
    }
}

/// The objects `status` and `doctor` read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pools: Vec<LoadBalancerIPPool>,
    pub policies: Vec<L2AnnouncementPolicy>,
    pub services: Vec<Service>,
    /// ferrolb's Leases: address Leases and presence Leases.
    pub leases: Vec<Lease>,
    pub nodes: Vec<Node>,
    /// The agents' `L2Announcement`s (who announces each Service, on which interfaces).
    pub l2announcements: Vec<ferrolb::api::L2Announcement>,
    /// What could not be read, and what that means for the report.
    pub notes: Vec<String>,
}

/// A list that may be missing (CRD not installed) or forbidden: empty, with a note.
async fn list_or_note<K>(
    api: Api<K>,
    lp: &ListParams,
    what: &str,
    notes: &mut Vec<String>,
) -> Vec<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            notes.push(format!(
                "{what}: not served by this cluster (are ferrolb's CRDs installed? `ferrolb doctor`)"
            ));
            Vec::new()
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            notes.push(format!("{what}: not allowed to list ({})", s.message));
            Vec::new()
        }
        Err(e) => {
            notes.push(format!("{what}: cannot list: {e}"));
            Vec::new()
        }
    }
}

/// The label selector of ferrolb's Leases.
pub fn lease_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// The Lease API to read: one namespace, or every namespace.
pub fn lease_api(client: &kube::Client, args: &KubeArgs) -> Api<Lease> {
    match &args.lease_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The `L2Announcement` API for a scope (they live in their Service's namespace).
pub fn l2a_api(client: &kube::Client, scope: &Scope) -> Api<ferrolb::api::L2Announcement> {
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// The Service API for a scope.
pub fn service_api(client: &kube::Client, scope: &Scope) -> Api<Service> {
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

impl Snapshot {
    /// Lists everything once. Services must be readable (that is an error); the rest is noted
    /// when missing or forbidden.
    pub async fn load(
        client: &kube::Client,
        args: &KubeArgs,
        scope: &Scope,
    ) -> anyhow::Result<Self> {
        let mut notes = Vec::new();
        let all = ListParams::default();
        let services = service_api(client, scope)
            .list(&all)
            .await
            .map_err(|e| anyhow::anyhow!("cannot list Services: {e}"))?
            .items;
        let pools = list_or_note(
            Api::all(client.clone()),
            &all,
            "LoadBalancerIPPools",
            &mut notes,
        )
        .await;
        let policies = list_or_note(
            Api::all(client.clone()),
            &all,
            "L2AnnouncementPolicies",
            &mut notes,
        )
        .await;
        let leases = list_or_note(
            lease_api(client, args),
            &ListParams::default().labels(&lease_selector()),
            "Leases",
            &mut notes,
        )
        .await;
        let nodes = list_or_note(Api::all(client.clone()), &all, "Nodes", &mut notes).await;
        let l2announcements =
            list_or_note(l2a_api(client, scope), &all, "L2Announcements", &mut notes).await;
        Ok(Snapshot {
            pools,
            policies,
            services,
            leases,
            nodes,
            l2announcements,
            notes,
        })
    }
}

/// Who announces a set of addresses (see the module documentation for the sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    /// The addresses announced together (one lease).
    pub addresses: Vec<IpAddr>,
    /// `namespace/name` of the Services they serve.
    pub services: Vec<String>,
    /// The announcing node (holder); `None` when nobody holds it.
    pub node: Option<String>,
    /// The interfaces it announces on; `None` when the source does not say (Leases don't).
    pub interfaces: Option<Vec<String>>,
    /// Since when this node announces (RFC 3339, the Lease's `acquireTime`).
    pub since: Option<String>,
    /// Renewed within its duration, by this machine's clock.
    pub live: bool,
    /// How often the lease changed hands.
    pub transitions: Option<i32>,
    /// Where this came from, e.g. `Lease ferrolb-leases/ferrolb-0123…`.
    pub source: String,
}

fn is_presence(lease: &Lease) -> bool {
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ROLE))
        .is_some_and(|r| r == ROLE_PRESENCE)
}

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether a Lease was renewed within its duration at `now` (this machine's clock).
pub fn lease_live(lease: &Lease, now: jiff::Timestamp, slack: jiff::SignedDuration) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return false;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let until = renew.0 + jiff::SignedDuration::from_secs(secs) + slack;
    until >= now
}

/// The holder of a Lease (`None` when empty).
pub fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The addresses an address Lease stands for (its `ferrolb.io/addresses` annotation), `None`
/// without the annotation.
pub fn addresses(lease: &Lease) -> Option<Vec<IpAddr>> {
    Some(
        annotation(lease, ANN_ADDRESSES)?
            .split(',')
            .filter_map(|a| a.trim().parse().ok())
            .collect(),
    )
}

/// Announcements read from the address Leases (presence Leases are skipped).
pub fn announcements_from_leases(leases: &[Lease], now: jiff::Timestamp) -> Vec<Announcement> {
    let mut out: Vec<Announcement> = leases
        .iter()
        .filter(|l| !is_presence(l))
        .filter_map(|l| {
            let addresses = addresses(l)?;
            let services = annotation(l, ANN_SERVICES)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let spec = l.spec.as_ref();
            let node = holder(l).map(str::to_string);
            Some(Announcement {
                addresses,
                services,
                live: node.is_some() && lease_live(l, now, jiff::SignedDuration::ZERO),
                node,
                interfaces: None,
                since: spec
                    .and_then(|s| s.acquire_time.as_ref())
                    .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                transitions: spec.and_then(|s| s.lease_transitions),
                source: format!(
                    "Lease {}/{}",
                    l.metadata.namespace.as_deref().unwrap_or_default(),
                    l.metadata.name.as_deref().unwrap_or_default()
                ),
            })
        })
        .collect();
    out.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    out
}

/// Presence Leases by node name (the [`ANN_NODE`] annotation, else the holder).
pub fn presence_by_node(leases: &[Lease]) -> BTreeMap<String, &Lease> {
    leases
        .iter()
        .filter(|l| is_presence(l))
        .filter_map(|l| {
            let node = annotation(l, ANN_NODE).or_else(|| holder(l))?;
            Some((node.to_string(), l))
        })
        .collect()
}

/// `namespace/name` of a Service.
pub fn service_key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Services `status` and `doctor` consider ferrolb's: LoadBalancer Services without a class
/// or of class `ferrolb.io/l2-announcer`, and any Service carrying ferrolb's condition (so
/// `io.cilium/l2-announcer` Services count once a controller with `--serve-cilium-class` has
/// handled them, and not while Cilium still serves them during a migration).
pub fn considered(svc: &Service) -> bool {
    is_ours(
        svc,
        &ClassOptions {
            default_class: true,
            cilium_class: false,
            metallb_annotations: false,
        },
    ) || ipam_condition(svc).is_some()
}

/// The Service's `ferrolb.io/IPAMRequestSatisfied` condition.
pub fn ipam_condition(svc: &Service) -> Option<&Condition> {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == COND_IPAM_SATISFIED))
}

/// The pools as the allocator sees them, in name order.
pub fn pool_defs(pools: &[LoadBalancerIPPool]) -> Vec<PoolDef> {
    let mut defs: Vec<PoolDef> = pools.iter().map(|p| PoolDef::from_crd(p).0).collect();
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    defs
}

/// The pool an address belongs to: the first pool (name order, as the allocator tries them)
/// with a block containing it.
pub fn pool_of(ip: IpAddr, defs: &[PoolDef]) -> Option<&str> {
    let a = Addr::from_ip(ip);
    defs.iter()
        .find(|d| d.block_containing(a).is_some())
        .map(|d| d.name.as_str())
}

/// A table in kubectl's style (no borders, upper-case headers).
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    t
}

/// A rendered table without trailing spaces.
pub fn render(t: &comfy_table::Table) -> String {
    let mut s: String = t
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renew: &str, ann: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("ferrolb-0123".into()),
                namespace: Some("ferrolb-leases".into()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(5),
                acquire_time: Some(MicroTime(ts("2026-12-04T10:00:00Z"))),
                renew_time: Some(MicroTime(ts(renew))),
                lease_transitions: Some(2),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn announcements_come_from_address_leases_only() {
        let now = ts("2026-12-04T10:05:00Z");
        let held = lease(
            Some("node2"),
            "2026-12-04T10:04:58Z",
            &[
                (ANN_ADDRESSES, "198.51.100.10,2001:db8::1"),
                (ANN_SERVICES, "default/echo"),
            ],
        );
        let stale = lease(
            Some("node3"),
            "2026-12-04T10:04:00Z",
            &[
                (ANN_ADDRESSES, "198.51.100.11"),
                (ANN_SERVICES, "default/b"),
            ],
        );
        let mut presence = lease(
            Some("node1"),
            "2026-12-04T10:04:59Z",
            &[(ANN_NODE, "node1")],
        );
        presence
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_ROLE.into(), ROLE_PRESENCE.into());
        let got = announcements_from_leases(&[held, stale, presence.clone()], now);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].node.as_deref(), Some("node2"));
        assert!(got[0].live);
        assert_eq!(got[0].services, vec!["default/echo".to_string()]);
        assert_eq!(got[0].addresses.len(), 2);
        assert_eq!(got[0].since.as_deref(), Some("2026-12-04T10:00:00Z"));
        assert_eq!(got[0].interfaces, None);
        assert_eq!(got[1].node.as_deref(), Some("node3"));
        assert!(!got[1].live, "renewed 60 s ago with a 5 s duration");
        let p = presence_by_node(std::slice::from_ref(&presence));
        assert!(p.contains_key("node1"));
    }

    #[test]
    fn considered_services_follow_the_class_and_our_condition() {
        use ferrolb::api::{CILIUM_LB_CLASS, LB_CLASS};
        use ferrolb::fixtures::{condition, ServiceBuilder};
        let svc = |class: Option<&str>, cond: bool| {
            let mut b = ServiceBuilder::default().type_("LoadBalancer");
            if let Some(c) = class {
                b = b.class(c);
            }
            if cond {
                let at = ts("2026-12-04T10:00:00Z");
                b = b.condition(condition(COND_IPAM_SATISFIED, "True", "Satisfied", "", at));
            }
            b.build()
        };
        assert!(considered(&svc(None, false)));
        assert!(considered(&svc(Some(LB_CLASS), false)));
        // Cilium's class: only once a ferrolb controller serving it wrote its condition.
        assert!(!considered(&svc(Some(CILIUM_LB_CLASS), false)));
        assert!(considered(&svc(Some(CILIUM_LB_CLASS), true)));
        assert!(!considered(&svc(Some("example.com/other"), false)));
    }

    #[test]
    fn plugin_name_is_recognised_by_file_name() {
        assert!(invoked_as_plugin("/usr/local/bin/kubectl-ferrolb".as_ref()));
        assert!(invoked_as_plugin("kubectl-ferrolb".as_ref()));
        assert!(!invoked_as_plugin("/usr/bin/ferrolb".as_ref()));
        assert!(!invoked_as_plugin("kubectl-ferrolb-old".as_ref()));
    }

    #[test]
    fn scope_follows_kubectl() {
        let mut a = KubeArgs::default();
        assert_eq!(
            Scope::from_args(&a, Some("demo".into())),
            Scope::Namespace("demo".into())
        );
        a.namespace = Some("x".into());
        assert_eq!(
            Scope::from_args(&a, Some("demo".into())),
            Scope::Namespace("x".into())
        );
        a.namespace = None;
        a.all_namespaces = true;
        assert_eq!(Scope::from_args(&a, Some("demo".into())), Scope::All);
    }
}
