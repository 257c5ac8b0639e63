//! What every node knows about the others' interface prefixes, for subnet-aware candidacy
//! (`L2AnnouncementPolicy.spec.subnetAware`, issue 11).
//!
//! # Design
//! Candidate lists must be the same on every node (every agent ranks the same list), so the
//! rule "a node stands for an address only when a selected interface carries a prefix containing
//! it; when no node has one, all stand as before" needs each node's prefixes on every node. Each
//! agent publishes its eligible interfaces and their configured prefixes (address/length, as
//! `ip addr` shows them) in one small object of its own: a `coordination.k8s.io` Lease
//! `ferrolb-ifaces-<16 hex of sha256(node)>` in the lease namespace, labelled
//! `ferrolb.io/role=interfaces`, annotated `ferrolb.io/node` and `ferrolb.io/prefixes`
//! (`{"eth0":["192.0.2.11/24","2001:db8:1::11/64"]}`). It has no holder and no spec: a Lease
//! only because the agent may already write Leases there (no new RBAC), and without the
//! `app.kubernetes.io/managed-by=ferrolb` label, so the lease engine neither watches nor
//! garbage-collects it. It is written at start and whenever the prefixes change (rtnetlink
//! address events), not periodically; every agent watches these objects (one more label-selected
//! watch) and [`node_prefixes`] turns them into [`NodePrefixes`] for
//! [`super::eligibility::compute`], which holds the rule itself. This node's own entry is always
//! its live view, not what the watch last showed.
//!
//! **Carrier** (issue 11's switch-reboot rule, [`super::linkhold`]): the object lists every
//! selected interface with its prefixes whether or not it has carrier (prefixes are
//! configuration, so candidate lists do not move when a switch reboots), and names the ones
//! without carrier (or administratively down) in `ferrolb.io/no-carrier` (`["eth0"]`), rewritten
//! on the rtnetlink event like the prefixes. An object without that annotation (an older agent,
//! which listed only interfaces with carrier) reports carrier on every interface it lists.
//!
//! A node whose object is missing (agent not started yet, or a version without this) has no
//! known prefix: it stands only through the fallback. Objects of deleted nodes stay until
//! removed by hand; they are harmless, since only nodes with a Node object are candidates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::eligibility::NodePrefixes;
use crate::lease::{ANN_NODE, LABEL_ROLE};

/// Value of [`LABEL_ROLE`] on the interface objects.
pub const ROLE_INTERFACES: &str = "interfaces";
/// Label selector of the agents' watch of interface objects.
pub const SELECTOR: &str = "ferrolb.io/role=interfaces";
/// Annotation: interface name → prefixes, JSON.
pub const ANN_PREFIXES: &str = "ferrolb.io/prefixes";

/// Annotation: the listed interfaces without carrier (or down), JSON list.
pub const ANN_NO_CARRIER: &str = "ferrolb.io/no-carrier";

/// One node's interfaces and their prefixes.
pub type Prefixes = BTreeMap<String, Vec<IpNetwork>>;

/// Name of a node's interface object.
pub fn object_name(node: &str) -> String {
    let digest = Sha256::digest(node.as_bytes());
    let mut name = String::from("ferrolb-ifaces-");
    for b in digest.iter().take(8) {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// The prefixes configured on the interfaces named in `eligible` (of the current network
/// namespace).
pub fn local_prefixes(eligible: &[String]) -> Prefixes {
    let mut out = Prefixes::new();
    for i in pnet_datalink::interfaces() {
        if eligible.contains(&i.name) {
            let mut nets: Vec<IpNetwork> = i
                .ips
                .iter()
                .filter_map(|n| IpNetwork::new(n.ip(), n.prefix()).ok())
                .collect();
            nets.sort();
            nets.dedup();
            out.insert(i.name.clone(), nets);
        }
    }
    for name in eligible {
        out.entry(name.clone()).or_default();
    }
    out
}

/// The selected interfaces of the current network namespace, split by carrier: (with carrier,
/// without carrier or administratively down). See [`split_by_carrier`].
pub fn interface_names(regexes: &[regex::Regex]) -> (Vec<String>, Vec<String>) {
    split_by_carrier(&crate::net::iface::interfaces(), regexes)
}

/// `all` split into the interfaces `regexes` select ([`crate::net::iface::select`]) that are up
/// with carrier, and those it would select if they were: each sorted, without duplicates.
pub fn split_by_carrier(
    all: &[crate::net::Iface],
    regexes: &[regex::Regex],
) -> (Vec<String>, Vec<String>) {
    let names = |v: Vec<crate::net::Iface>| {
        let mut n: Vec<String> = v.into_iter().map(|i| i.name).collect();
        n.sort();
        n.dedup();
        n
    };
    let live = names(crate::net::iface::select(all, regexes));
    let forced_up: Vec<crate::net::Iface> = all
        .iter()
        .map(|i| crate::net::Iface {
            up: true,
            ..i.clone()
        })
        .collect();
    let mut dark = names(crate::net::iface::select(&forced_up, regexes));
    dark.retain(|n| !live.contains(n));
    (live, dark)
}

/// The object publishing `prefixes` for `node`, `no_carrier` naming those of its interfaces
/// without carrier.
pub fn object(
    namespace: &str,
    node: &str,
    prefixes: &Prefixes,
    no_carrier: &BTreeSet<String>,
) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(object_name(node));
    l.metadata.namespace = Some(namespace.to_string());
    l.metadata.labels = Some([(LABEL_ROLE.to_string(), ROLE_INTERFACES.to_string())].into());
    l.metadata.annotations = Some(annotations(node, prefixes, no_carrier));
    l
}

fn annotations(
    node: &str,
    prefixes: &Prefixes,
    no_carrier: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let text: BTreeMap<&String, Vec<String>> = prefixes
        .iter()
        .map(|(i, nets)| (i, nets.iter().map(ToString::to_string).collect()))
        .collect();
    [
        (ANN_NODE.to_string(), node.to_string()),
        (
            ANN_PREFIXES.to_string(),
            serde_json::to_string(&text).unwrap_or_default(),
        ),
        (
            ANN_NO_CARRIER.to_string(),
            serde_json::to_string(no_carrier).unwrap_or_default(),
        ),
    ]
    .into()
}

/// The interfaces of a published object without carrier (none when the annotation is missing
/// or unparsable: an older agent listed only interfaces with carrier).
pub fn parse_no_carrier(l: &Lease) -> BTreeSet<String> {
    l.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_NO_CARRIER))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Every publishing node's interfaces without carrier, with this node's live view (`me`,
/// `mine`) instead of its published one. Nodes without an object are missing (they report
/// nothing, see [`super::eligibility::Options::no_carrier`]).
pub fn node_no_carrier(
    objects: &[Arc<Lease>],
    me: &str,
    mine: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = objects
        .iter()
        .filter_map(|l| parse(l).map(|(node, _)| (node, parse_no_carrier(l))))
        .collect();
    out.insert(me.to_string(), mine.clone());
    out
}

/// Has this node's own carrier report come back through the watch? True when its published
/// object (among `objects`) names every interface of `mine` (its live interfaces without
/// carrier) as without carrier. Until then the API round trip is not known to work: the
/// others' reports may be as stale as ours is unpublished (a node whose only link is the one
/// that went dark cannot hear of anything), see [`super::linkhold`].
pub fn own_report_seen(objects: &[Arc<Lease>], me: &str, mine: &BTreeSet<String>) -> bool {
    objects.iter().any(|l| {
        parse(l).is_some_and(|(node, _)| node == me) && parse_no_carrier(l).is_superset(mine)
    })
}

/// Reads one published object: (node, prefixes). Unparsable prefixes are skipped; an object
/// without the annotations is `None`.
pub fn parse(l: &Lease) -> Option<(String, Prefixes)> {
    let ann = l.metadata.annotations.as_ref()?;
    let node = ann.get(ANN_NODE)?.clone();
    let text: BTreeMap<String, Vec<String>> = serde_json::from_str(ann.get(ANN_PREFIXES)?).ok()?;
    let prefixes = text
        .into_iter()
        .map(|(i, nets)| (i, nets.iter().filter_map(|n| n.parse().ok()).collect()))
        .collect();
    Some((node, prefixes))
}

/// Every node's prefixes from the watched objects, with this node's live view (`me`, `mine`)
/// instead of its published one.
pub fn node_prefixes(objects: &[Arc<Lease>], me: &str, mine: &Prefixes) -> NodePrefixes {
    let mut out: NodePrefixes = objects.iter().filter_map(|l| parse(l)).collect();
    out.insert(me.to_string(), mine.clone());
    out
}

/// Keeps only what [`parse`] reads (for the watch cache).
pub fn trim(l: &mut Lease) {
    l.metadata.managed_fields = None;
    l.spec = None;
}

/// This node's published prefixes: re-read on interface changes, written when they change.
pub struct Publisher {
    client: Client,
    namespace: String,
    node: String,
    local: Prefixes,
    /// This node's selected interfaces without carrier.
    dark: BTreeSet<String>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    /// Reads the prefixes of `eligible` (with carrier) and `dark` (without) and publishes them.
    pub fn start(
        client: Client,
        namespace: &str,
        node: &str,
        eligible: &[String],
        dark: &[String],
    ) -> Self {
        let mut p = Publisher {
            client,
            namespace: namespace.to_string(),
            node: node.to_string(),
            local: local_prefixes(&[eligible, dark].concat()),
            dark: dark.iter().cloned().collect(),
            task: None,
        };
        p.publish();
        p
    }

    /// This node's live view.
    pub fn local(&self) -> &Prefixes {
        &self.local
    }

    /// This node's selected interfaces without carrier.
    pub fn dark(&self) -> &BTreeSet<String> {
        &self.dark
    }

    /// Re-reads the prefixes; when they or the carrier changed, publishes them and returns true.
    pub fn refresh(&mut self, eligible: &[String], dark: &[String]) -> bool {
        let now = local_prefixes(&[eligible, dark].concat());
        let dark: BTreeSet<String> = dark.iter().cloned().collect();
        if now == self.local && dark == self.dark {
            return false;
        }
        debug!(prefixes = ?now, no_carrier = ?dark, "interface prefixes or carrier changed");
        self.local = now;
        self.dark = dark;
        self.publish();
        true
    }

    /// Writes the object (create, or merge-patch the annotations), retrying every 5 s until it
    /// succeeds; a newer publication replaces a pending one.
    fn publish(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let obj = object(&self.namespace, &self.node, &self.local, &self.dark);
        let name = object_name(&self.node);
        self.task = Some(tokio::spawn(async move {
            loop {
                let r = match api.create(&PostParams::default(), &obj).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let patch = serde_json::json!({"metadata": {
                            "labels": obj.metadata.labels,
                            "annotations": obj.metadata.annotations,
                        }});
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map(|_| ())
                    }
                    r => r.map(|_| ()),
                };
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, "publishing interface prefixes failed (retrying in 5s)")
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_objects_round_trip_and_own_view_wins() {
        let mine: Prefixes = [("eth0".to_string(), vec!["192.0.2.11/24".parse().unwrap()])].into();
        let theirs: Prefixes = [
            (
                "eth0".to_string(),
                vec![
                    "198.51.100.12/24".parse().unwrap(),
                    "2001:db8:1::12/64".parse().unwrap(),
                ],
            ),
            ("eth1".to_string(), vec![]),
        ]
        .into();
        let down: BTreeSet<String> = ["eth1".to_string()].into();
        let o = object("ferrolb-leases", "n2", &theirs, &down);
        assert_eq!(o.metadata.name.as_deref(), Some(object_name("n2").as_str()));
        assert!(object_name("n2").starts_with("ferrolb-ifaces-"));
        assert_ne!(object_name("n1"), object_name("n2"));
        // Not a managed lease: the lease engine must not see (or collect) it.
        assert!(!o
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(crate::lease::MANAGED_BY_LABEL));
        assert_eq!(parse(&o), Some(("n2".to_string(), theirs.clone())));
        assert_eq!(parse_no_carrier(&o), down);
        let stale = object("ferrolb-leases", "n1", &Prefixes::new(), &down);
        let objects = [Arc::new(o), Arc::new(stale)];
        let all = node_prefixes(&objects, "n1", &mine);
        assert_eq!(all["n2"], theirs);
        assert_eq!(all["n1"], mine);
        let carrier = node_no_carrier(&objects, "n1", &BTreeSet::new());
        assert_eq!(carrier["n2"], down);
        assert!(carrier["n1"].is_empty(), "own live view wins");
        // An older agent's object (no carrier annotation): carrier on every listed interface.
        let mut old = object("ferrolb-leases", "n4", &theirs, &down);
        old.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANN_NO_CARRIER);
        assert!(parse_no_carrier(&old).is_empty());
        // Garbage is skipped, not a panic.
        let mut bad = object("ferrolb-leases", "n3", &theirs, &down);
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_PREFIXES.into(), "{not json".into());
        assert_eq!(parse(&bad), None);
        assert_eq!(parse(&Lease::default()), None);
    }

    #[test]
    fn own_report_seen_only_when_the_watch_shows_it() {
        let p: Prefixes = [("eth0".to_string(), vec![]), ("eth1".to_string(), vec![])].into();
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<String>>()
        };
        let dark = set(&["eth0"]);
        let mine_before = Arc::new(object("ns", "n1", &p, &set(&[])));
        let mine_after = Arc::new(object("ns", "n1", &p, &set(&["eth0"])));
        let theirs = Arc::new(object("ns", "n2", &p, &set(&["eth0", "eth1"])));
        assert!(!own_report_seen(&[], "n1", &dark));
        assert!(!own_report_seen(
            &[mine_before.clone(), theirs.clone()],
            "n1",
            &dark
        ));
        assert!(own_report_seen(
            &[mine_after.clone(), theirs.clone()],
            "n1",
            &dark
        ));
        assert!(!own_report_seen(
            &[mine_after],
            "n1",
            &set(&["eth0", "eth1"])
        ));
        // Another node's object says nothing about ours.
        assert!(!own_report_seen(&[theirs], "n1", &dark));
    }

    #[test]
    fn interfaces_split_by_carrier() {
        let mac = Some(crate::net::iface::MacAddr(2, 0, 0, 0, 0, 1));
        let iface = |name: &str, index, up| crate::net::Iface {
            name: name.into(),
            index,
            mac,
            up,
            broadcast: true,
            loopback: false,
            noarp: false,
            has_master: false,
        };
        let all = [
            iface("eth0", 2, false),
            iface("eth1", 3, true),
            iface("mgmt0", 4, false),
            crate::net::Iface {
                loopback: true,
                ..iface("lo", 1, true)
            },
        ];
        let re = |s: &str| regex::Regex::new(s).unwrap();
        assert_eq!(
            split_by_carrier(&all, &[re("eth.*")]),
            (vec!["eth1".to_string()], vec!["eth0".to_string()])
        );
        // Without carrier but not selected: not reported at all.
        assert_eq!(
            split_by_carrier(&all, &[re("eth1")]),
            (vec!["eth1".to_string()], vec![])
        );
        let (live, dark) = split_by_carrier(&all, &[]);
        assert_eq!(live, ["eth1"]);
        assert_eq!(dark, ["eth0", "mgmt0"]);
    }
}
