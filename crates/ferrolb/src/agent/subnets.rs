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
//! A node whose object is missing (agent not started yet, or a version without this) has no
//! known prefix: it stands only through the fallback. Objects of deleted nodes stay until
//! removed by hand; they are harmless, since only nodes with a Node object are candidates.

use std::collections::BTreeMap;
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

/// The object publishing `prefixes` for `node`.
pub fn object(namespace: &str, node: &str, prefixes: &Prefixes) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(object_name(node));
    l.metadata.namespace = Some(namespace.to_string());
    l.metadata.labels = Some([(LABEL_ROLE.to_string(), ROLE_INTERFACES.to_string())].into());
    l.metadata.annotations = Some(annotations(node, prefixes));
    l
}

fn annotations(node: &str, prefixes: &Prefixes) -> BTreeMap<String, String> {
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
    ]
    .into()
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
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    /// Reads the prefixes of `eligible` and publishes them.
    pub fn start(client: Client, namespace: &str, node: &str, eligible: &[String]) -> Self {
        let mut p = Publisher {
            client,
            namespace: namespace.to_string(),
            node: node.to_string(),
            local: local_prefixes(eligible),
            task: None,
        };
        p.publish();
        p
    }

    /// This node's live view.
    pub fn local(&self) -> &Prefixes {
        &self.local
    }

    /// Re-reads the prefixes; when they changed, publishes them and returns true.
    pub fn refresh(&mut self, eligible: &[String]) -> bool {
        let now = local_prefixes(eligible);
        if now == self.local {
            return false;
        }
        debug!(prefixes = ?now, "interface prefixes changed");
        self.local = now;
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
        let obj = object(&self.namespace, &self.node, &self.local);
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
        let o = object("ferrolb-leases", "n2", &theirs);
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
        let stale = object("ferrolb-leases", "n1", &Prefixes::new());
        let all = node_prefixes(&[Arc::new(o), Arc::new(stale)], "n1", &mine);
        assert_eq!(all["n2"], theirs);
        assert_eq!(all["n1"], mine);
        // Garbage is skipped, not a panic.
        let mut bad = object("ferrolb-leases", "n3", &theirs);
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_PREFIXES.into(), "{not json".into());
        assert_eq!(parse(&bad), None);
        assert_eq!(parse(&Lease::default()), None);
    }
}
