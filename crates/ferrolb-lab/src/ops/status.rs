//! `ferrolb status`: one view of pools, Services with their addresses and announcing node, and
//! the Services still waiting for an address, with the reason from their condition.
//!
//! `-o json` prints a [`Report`] (fields are only ever added). `--watch` keeps watch caches of
//! the same objects and prints the report again whenever a watch event changes it (renewals of a
//! Lease change nothing shown, so they print nothing).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use ferrolb::api::{L2AnnouncementPolicy, LoadBalancerIPPool};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde::Serialize;

use super::{
    announcements_from_leases, considered, ipam_condition, pool_defs, pool_of, service_key,
    Announcement, KubeArgs, Output, Scope, Snapshot,
};
use ferrolb::k8s::service::ingress_ips;

/// Flags of `ferrolb status`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Keep watching; print the status again whenever it changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pools: Vec<PoolRow>,
    /// Services with at least one address.
    pub services: Vec<ServiceRow>,
    /// Services without an address, with why.
    pub pending: Vec<PendingRow>,
    /// What could not be read.
    pub notes: Vec<String>,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRow {
    pub name: String,
    pub used: i64,
    pub total: i64,
    pub available: i64,
    pub disabled: bool,
    /// Conditions that are `True` (Conflict, Exhausted, InvalidBlocks, InvalidSelector).
    pub conditions: Vec<ConditionRow>,
}

/// A condition, shortened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionRow {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// A Service with addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<AddressRow>,
    /// The node announcing them (holder of the lease covering them), `None` when none does.
    pub node: Option<String>,
    /// The holder's lease was renewed within its duration (by this machine's clock).
    pub live: bool,
    /// Interfaces announced on, when the source says (see [`Announcement::interfaces`]).
    pub interfaces: Option<Vec<String>>,
    /// Since when the node announces (RFC 3339).
    pub since: Option<String>,
    /// Where the announcement was read from.
    pub source: Option<String>,
}

/// An address and its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressRow {
    pub ip: IpAddr,
    pub pool: Option<String>,
}

/// A Service without an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRow {
    pub namespace: String,
    pub name: String,
    /// The condition's reason, or `NotHandled` when no controller has written one.
    pub reason: String,
    pub message: String,
}

/// Reason shown for a Service no controller has written a condition on.
pub const REASON_NOT_HANDLED: &str = "NotHandled";

/// Builds the report (pure).
pub fn build(snap: &Snapshot, now: jiff::Timestamp) -> Report {
    let defs = pool_defs(&snap.pools);
    let mut pools: Vec<PoolRow> = snap
        .pools
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            PoolRow {
                name: p.metadata.name.clone().unwrap_or_default(),
                used: st.ips_used,
                total: st.ips_total,
                available: st.ips_available,
                disabled: p.spec.disabled,
                conditions: st
                    .conditions
                    .iter()
                    .filter(|c| c.status == "True")
                    .map(|c| ConditionRow {
                        type_: c.type_.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));

    let anns = announcements_from_leases(&snap.leases, now);
    // Index: by Service, then by address (a lease written before its Service list was known).
    let mut by_service: BTreeMap<&str, Vec<&Announcement>> = BTreeMap::new();
    let mut by_address: BTreeMap<IpAddr, Vec<&Announcement>> = BTreeMap::new();
    for a in &anns {
        for s in &a.services {
            by_service.entry(s.as_str()).or_default().push(a);
        }
        for ip in &a.addresses {
            by_address.entry(*ip).or_default().push(a);
        }
    }

    let mut services = Vec::new();
    let mut pending = Vec::new();
    let mut svcs: Vec<&Service> = snap.services.iter().filter(|s| considered(s)).collect();
    svcs.sort_by_key(|s| service_key(s));
    for svc in svcs {
        let key = service_key(svc);
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ips = ingress_ips(svc);
        if ips.is_empty() {
            let (reason, message) = match ipam_condition(svc) {
                Some(c) => (c.reason.clone(), c.message.clone()),
                None => (
                    REASON_NOT_HANDLED.to_string(),
                    "no ferrolb.io/IPAMRequestSatisfied condition: no ferrolb controller has handled this Service (is one running and leading?)".to_string(),
                ),
            };
            pending.push(PendingRow {
                namespace: ns,
                name,
                reason,
                message,
            });
            continue;
        }
        // The announcement covering the Service: one naming it whose addresses include its
        // addresses, preferring a live holder; else one covering any of its addresses.
        let candidates: Vec<&Announcement> = match by_service.get(key.as_str()) {
            Some(v) => v.clone(),
            None => ips
                .iter()
                .filter_map(|ip| by_address.get(ip))
                .flatten()
                .copied()
                .collect(),
        };
        let ann = candidates
            .iter()
            .max_by_key(|a| {
                (
                    a.live,
                    a.node.is_some(),
                    ips.iter().all(|ip| a.addresses.contains(ip)),
                )
            })
            .copied();
        let interfaces = ann
            .and_then(|a| a.interfaces.clone())
            .or_else(|| l2a_interfaces(snap, &ns, &name, ann.and_then(|a| a.node.as_deref())));
        services.push(ServiceRow {
            namespace: ns,
            name,
            addresses: ips
                .iter()
                .map(|ip| AddressRow {
                    ip: *ip,
                    pool: pool_of(*ip, &defs).map(str::to_string),
                })
                .collect(),
            node: ann.and_then(|a| a.node.clone()),
            live: ann.is_some_and(|a| a.live),
            interfaces,
            since: ann.and_then(|a| a.since.clone()),
            source: ann.map(|a| a.source.clone()),
        });
    }
    Report {
        pools,
        services,
        pending,
        notes: snap.notes.clone(),
    }
}

/// The interfaces the Service's `L2Announcement` names, when it names the same node as the
/// Lease (an object left from an earlier holder says nothing about this one).
fn l2a_interfaces(
    snap: &Snapshot,
    ns: &str,
    name: &str,
    node: Option<&str>,
) -> Option<Vec<String>> {
    let node = node?;
    snap.l2announcements
        .iter()
        .find(|o| {
            o.metadata.namespace.as_deref() == Some(ns) && o.metadata.name.as_deref() == Some(name)
        })
        .and_then(|o| o.status.as_ref())
        .filter(|s| s.node.as_deref() == Some(node) && !s.interfaces.is_empty())
        .map(|s| s.interfaces.clone())
}

fn dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// The report as tables.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let mut t = super::table(&[
        "pool",
        "used",
        "total",
        "available",
        "disabled",
        "conditions",
    ]);
    for p in &r.pools {
        let conds = p
            .conditions
            .iter()
            .map(|c| format!("{} ({})", c.type_, c.message))
            .collect::<Vec<_>>()
            .join("; ");
        t.add_row(vec![
            p.name.clone(),
            p.used.to_string(),
            p.total.to_string(),
            p.available.to_string(),
            p.disabled.to_string(),
            dash(Some(&conds)),
        ]);
    }
    if r.pools.is_empty() {
        out.push_str("no LoadBalancerIPPools\n");
    } else {
        out.push_str(&super::render(&t));
    }
    out.push('\n');
    let mut t = super::table(&[
        "service",
        "addresses",
        "pool",
        "node",
        "interfaces",
        "since",
    ]);
    for s in &r.services {
        let pools: Vec<String> = s
            .addresses
            .iter()
            .map(|a| dash(a.pool.as_deref()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let node = match (&s.node, s.live) {
            (Some(n), true) => n.clone(),
            (Some(n), false) => format!("{n} (lease expired)"),
            (None, _) => "- (no holder)".to_string(),
        };
        t.add_row(vec![
            format!("{}/{}", s.namespace, s.name),
            s.addresses
                .iter()
                .map(|a| a.ip.to_string())
                .collect::<Vec<_>>()
                .join(","),
            pools.join(","),
            node,
            s.interfaces
                .as_ref()
                .map(|i| i.join(","))
                .unwrap_or_else(|| "-".into()),
            dash(s.since.as_deref()),
        ]);
    }
    if r.services.is_empty() {
        out.push_str("no Services with an address\n");
    } else {
        out.push_str(&super::render(&t));
    }
    if !r.pending.is_empty() {
        out.push('\n');
        let mut t = super::table(&["pending service", "reason", "message"]);
        for p in &r.pending {
            t.add_row(vec![
                format!("{}/{}", p.namespace, p.name),
                p.reason.clone(),
                p.message.clone(),
            ]);
        }
        out.push_str(&super::render(&t));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn print(r: &Report, output: Output, watch: bool) -> anyhow::Result<()> {
    let text = match output {
        Output::Json if watch => serde_json::to_string(r)? + "\n",
        Output::Json => serde_json::to_string_pretty(r)? + "\n",
        Output::Table if watch => format!(
            "--- {}\n{}",
            jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            render_table(r)
        ),
        Output::Table => render_table(r),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Runs `ferrolb status`.
pub async fn run(args: Args) -> ferrolb::CmdResult {
    let (client, ctx_ns) = super::connect(&args.kube).await?;
    let scope = Scope::from_args(&args.kube, Some(ctx_ns));
    if args.watch {
        return watch(client, &args, &scope).await;
    }
    let snap = Snapshot::load(&client, &args.kube, &scope).await?;
    print(&build(&snap, jiff::Timestamp::now()), args.output, false)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Watch events reduced to (resource index, "initial list done").
type Events = futures::stream::BoxStream<'static, (usize, Result<bool, watcher::Error>)>;

/// A watch stream reduced to "something changed" / "initial list done", with its cache.
fn cached<K>(api: Api<K>, cfg: watcher::Config, idx: usize) -> (Store<K>, Events)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff())
        .map(move |ev| (idx, ev.map(|e| matches!(e, watcher::Event::InitDone))))
        .boxed();
    (reader, stream)
}

fn cloned<K>(s: &Store<K>) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    s.state().iter().map(|a| (**a).clone()).collect()
}

/// `--watch`: re-render on watch events (bursts coalesced), print only changes.
async fn watch(client: kube::Client, args: &Args, scope: &Scope) -> ferrolb::CmdResult {
    let cfg = watcher::Config::default();
    let (pools, s0) = cached(
        Api::<LoadBalancerIPPool>::all(client.clone()),
        cfg.clone(),
        0,
    );
    let (policies, s1) = cached(
        Api::<L2AnnouncementPolicy>::all(client.clone()),
        cfg.clone(),
        1,
    );
    let (services, s2) = cached(super::service_api(&client, scope), cfg.clone(), 2);
    let (leases, s3) = cached(
        super::lease_api(&client, &args.kube),
        cfg.clone().labels(&super::lease_selector()),
        3,
    );
    let (nodes, s4) = cached(Api::<Node>::all(client.clone()), cfg.clone(), 4);
    let (l2as, s5) = cached(super::l2a_api(&client, scope), cfg, 5);
    let mut events = futures::stream::select_all([s0, s1, s2, s3, s4, s5]);
    let mut ready = [false; 6];
    let mut errors: BTreeMap<usize, String> = BTreeMap::new();
    let mut last: Option<Report> = None;
    while let Some(first) = events.next().await {
        // Take what has already arrived, then what arrives within a short debounce window, so a
        // burst of events renders once.
        let mut batch = vec![first];
        let debounce = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(debounce);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(ev) => batch.push(ev),
                    None => break,
                },
                _ = &mut debounce => break,
            }
        }
        while let Some(Some(ev)) = events.next().now_or_never() {
            batch.push(ev);
        }
        for (idx, ev) in batch {
            match ev {
                Ok(done) => {
                    ready[idx] |= done;
                    errors.remove(&idx);
                }
                Err(e) => {
                    let what = [
                        "pools",
                        "policies",
                        "Services",
                        "Leases",
                        "Nodes",
                        "L2Announcements",
                    ][idx];
                    // A resource that cannot be watched (CRD missing, forbidden) counts as
                    // listed-empty so the others still render; the error is shown as a note.
                    ready[idx] = true;
                    errors.insert(idx, format!("{what}: watch failed: {e}"));
                }
            }
        }
        if !ready.iter().all(|r| *r) {
            continue;
        }
        let snap = Snapshot {
            pools: cloned(&pools),
            policies: cloned(&policies),
            services: cloned(&services),
            leases: cloned(&leases),
            nodes: cloned(&nodes),
            l2announcements: cloned(&l2as),
            notes: errors.values().cloned().collect(),
        };
        let report = build(&snap, jiff::Timestamp::now());
        if last.as_ref() != Some(&report) {
            print(&report, args.output, true)?;
            last = Some(report);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb::api::{IpBlock, LoadBalancerIPPoolSpec, COND_IPAM_SATISFIED};
    use ferrolb::fixtures::{condition, ServiceBuilder};
    use ferrolb::lease::{ANN_ADDRESSES, ANN_SERVICES, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn svc(name: &str, ips: &[&str], cond: Option<(&str, &str)>) -> Service {
        let b = ServiceBuilder::named("demo", name)
            .type_("LoadBalancer")
            .ingress(ips);
        match cond {
            Some((status, reason)) => b.condition(condition(
                COND_IPAM_SATISFIED,
                status,
                reason,
                &format!("because {reason}"),
                ts("2026-12-04T10:00:00Z"),
            )),
            None => b,
        }
        .build()
    }

    #[test]
    fn services_get_pool_and_holder_pending_get_reasons() {
        let pool = LoadBalancerIPPool::new(
            "lab-v4",
            LoadBalancerIPPoolSpec {
                blocks: vec![IpBlock {
                    cidr: Some("198.51.100.0/24".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("ferrolb-abc".into()),
                namespace: Some("ferrolb-leases".into()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                annotations: Some(
                    [
                        (ANN_ADDRESSES.to_string(), "198.51.100.10".to_string()),
                        (ANN_SERVICES.to_string(), "demo/web".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("node2".into()),
                lease_duration_seconds: Some(5),
                acquire_time: Some(MicroTime(ts("2026-12-04T10:00:01.5Z"))),
                renew_time: Some(MicroTime(ts("2026-12-04T10:04:59Z"))),
                ..Default::default()
            }),
        };
        let snap = Snapshot {
            pools: vec![pool],
            services: vec![
                svc("web", &["198.51.100.10"], Some(("True", "Satisfied"))),
                svc("full", &[], Some(("False", "OutOfIPs"))),
                svc("new", &[], None),
            ],
            leases: vec![lease],
            ..Default::default()
        };
        let r = build(&snap, ts("2026-12-04T10:05:00Z"));
        assert_eq!(
            r.services[0].interfaces, None,
            "no L2Announcement: not known"
        );
        // The L2Announcement of the holder names the interfaces; one of another node does not.
        let l2a = |node: &str| {
            let mut o =
                ferrolb::api::L2Announcement::new("web", ferrolb::api::L2AnnouncementSpec {});
            o.metadata.namespace = Some("demo".into());
            o.status = Some(ferrolb::api::L2AnnouncementStatus {
                node: Some(node.into()),
                interfaces: vec!["eth0".into()],
                ..Default::default()
            });
            o
        };
        let mut snap = snap;
        snap.l2announcements = vec![l2a("node1")];
        let r = build(&snap, ts("2026-12-04T10:05:00Z"));
        assert_eq!(r.services[0].interfaces, None, "an earlier holder's object");
        snap.l2announcements = vec![l2a("node2")];
        let r = build(&snap, ts("2026-12-04T10:05:00Z"));
        assert_eq!(r.services.len(), 1);
        let web = &r.services[0];
        assert_eq!(web.interfaces, Some(vec!["eth0".to_string()]));
        assert_eq!(web.node.as_deref(), Some("node2"));
        assert!(web.live);
        assert_eq!(web.since.as_deref(), Some("2026-12-04T10:00:01Z"));
        assert_eq!(web.addresses[0].pool.as_deref(), Some("lab-v4"));
        assert_eq!(r.pending.len(), 2);
        assert_eq!(r.pending[0].name, "full");
        assert_eq!(r.pending[0].reason, "OutOfIPs");
        assert_eq!(r.pending[1].reason, REASON_NOT_HANDLED);
        let text = render_table(&r);
        assert!(text.contains("demo/web"), "{text}");
        assert!(text.contains("node2"), "{text}");
        assert!(text.contains("OutOfIPs"), "{text}");
        // Ten seconds later without a renewal the holder's lease has expired: shown as such.
        let r = build(&snap, ts("2026-12-04T10:05:10Z"));
        assert!(!r.services[0].live);
        assert!(render_table(&r).contains("node2 (lease expired)"));
    }
}
