//! `lab --prefer-node NODE` (issue 10): one node holds every address, so `--measure`'s bursts
//! stop a node holding all `--measure-services` addresses (the issue's "a node holding 1,000
//! addresses") rather than its share of them.
//!
//! How: a second `L2AnnouncementPolicy` like the lab's, with `spec.preferredNodes` selecting
//! NODE by `kubernetes.io/hostname`. NODE is then the first tier of every address's candidates
//! (`agent::eligibility`): it takes each address while it runs, the other nodes are the
//! fallbacks, and the normal rebalancing hands addresses back to it after it restarts. Before
//! each burst [`wait_concentrated`] waits until NODE holds (nearly) every address again.

use std::time::{Duration, Instant};

use super::cluster::Cluster;

/// The policy that makes `node` the preferred holder of every lab address (the lab policy's
/// selectors, plus `preferredNodes`).
pub fn prefer_policy(node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ferrolb.io/v1alpha1",
        "kind": "L2AnnouncementPolicy",
        "metadata": {"name": format!("lab-prefer-{node}")},
        "spec": {
            "nodeSelector": {"matchLabels": {"ferrolb.io/lab": "true"}},
            "interfaces": ["^eth0$"],
            "loadBalancerIPs": true,
            "preferredNodes": [
                {"weight": 100, "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}}}
            ]
        }
    })
}

/// Of `holders` (the holder of each address Lease, `""` for none), how many `node` holds.
pub fn held_by(holders: &[String], node: &str) -> usize {
    holders.iter().filter(|h| h.as_str() == node).count()
}

/// Whether `node` holds at least `share` of the `total` addresses (rounded up; at least one).
pub fn concentrated(held: usize, total: usize, share: f64) -> bool {
    let want = ((total as f64) * share).ceil().max(1.0) as usize;
    held >= want
}

/// Waits until `node` holds at least `share` of the agents' address Leases (every `every`,
/// up to `within`); returns (held by `node`, address Leases) as last seen.
pub async fn wait_concentrated(
    c: &Cluster,
    node: &str,
    share: f64,
    within: Duration,
    every: Duration,
) -> anyhow::Result<(usize, usize)> {
    let start = Instant::now();
    loop {
        let holders: Vec<String> = c
            .address_leases()
            .await?
            .iter()
            .map(|l| crate::ops::holder(l).unwrap_or_default().to_string())
            .collect();
        let held = held_by(&holders, node);
        if concentrated(held, holders.len(), share) || start.elapsed() >= within {
            return Ok((held, holders.len()));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_prefers_the_node_by_hostname_and_keeps_the_lab_selectors() {
        let p = prefer_policy("node1");
        let lab: serde_json::Value = serde_yaml::from_str(
            super::super::EMBEDDED_MANIFESTS
                .iter()
                .find(|(n, _)| *n == "policy.yaml")
                .unwrap()
                .1,
        )
        .unwrap();
        for k in ["nodeSelector", "interfaces", "loadBalancerIPs"] {
            assert_eq!(p["spec"][k], lab["spec"][k], "{k}");
        }
        let pref = &p["spec"]["preferredNodes"][0];
        assert_eq!(
            pref["nodeSelector"]["matchLabels"]["kubernetes.io/hostname"],
            "node1"
        );
        assert_eq!(pref["weight"], 100);
        // Valid for the CRD's schema type.
        let typed: ferrolb::api::L2AnnouncementPolicy = serde_json::from_value(p).unwrap();
        assert_eq!(typed.spec.preferred_nodes.len(), 1);
    }

    #[test]
    fn concentration_counts_the_nodes_leases() {
        let h: Vec<String> = ["node1", "node1", "node2", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(held_by(&h, "node1"), 2);
        assert!(concentrated(2, 4, 0.5));
        assert!(!concentrated(2, 4, 0.75));
        assert!(
            !concentrated(0, 0, 0.95),
            "nothing to hold is not concentrated"
        );
        assert!(concentrated(950, 1000, 0.95));
        assert!(!concentrated(949, 1000, 0.95));
    }
}
