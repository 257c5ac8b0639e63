//! `lab --measure`, issue 10: a node holding many addresses dies (SIGKILL) or stops (SIGTERM);
//! how long until the FIRST and the LAST of a sample of its addresses answer again (an NDP
//! answer from another node's MAC, asked from the client namespace); and how many address
//! Leases are written in a steady-state window (attached Leases: none; the agents' writes are
//! then presence renewals).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::cluster::Cluster;
use super::probe;

/// One burst failover.
#[derive(Debug, Clone, Serialize)]
pub struct Burst {
    /// `crash (SIGKILL)` or `graceful (SIGTERM)`.
    pub kind: String,
    pub node: String,
    /// Addresses the node held.
    pub held: usize,
    pub sampled: usize,
    /// Sampled addresses answered by another node within the wait.
    pub answered: usize,
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
}

/// Address Lease name → (resourceVersion, holder, addresses).
async fn address_leases(
    c: &Cluster,
) -> anyhow::Result<BTreeMap<String, (String, String, Vec<IpAddr>)>> {
    Ok(c.address_leases()
        .await?
        .into_iter()
        .map(|l| {
            let holder = crate::ops::holder(&l).unwrap_or_default().to_string();
            let addrs = crate::ops::addresses(&l).unwrap_or_default();
            (
                l.metadata.name.unwrap_or_default(),
                (
                    l.metadata.resource_version.unwrap_or_default(),
                    holder,
                    addrs,
                ),
            )
        })
        .collect())
}

/// The resourceVersion of every address Lease now (for [`address_writes_between`]).
pub async fn address_lease_versions(c: &Cluster) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(address_leases(c)
        .await?
        .into_iter()
        .map(|(n, (rv, _, _))| (n, rv))
        .collect())
}

/// Address Leases written (created, changed or deleted) between two readings: a lower bound
/// of the address Lease writes in between (each changed Lease was written at least once).
pub fn address_writes_between(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> usize {
    let changed = after
        .iter()
        .filter(|(n, rv)| before.get(*n) != Some(*rv))
        .count();
    let gone = before.keys().filter(|n| !after.contains_key(*n)).count();
    changed + gone
}

/// Signals the agent of the node holding the most IPv6 addresses (`KILL` or `TERM`), then asks
/// `sample` of its addresses by NDP from the client until another node answers each; restarts
/// the agent afterwards.
pub async fn burst(
    c: &mut Cluster,
    sig: &str,
    sample: usize,
    within: Duration,
) -> anyhow::Result<Burst> {
    let mut by_node: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for (_, (_, holder, addrs)) in address_leases(c).await? {
        if holder.is_empty() {
            continue;
        }
        by_node
            .entry(holder)
            .or_default()
            .extend(addrs.into_iter().filter(IpAddr::is_ipv6));
    }
    let (node, addrs) = by_node
        .into_iter()
        .max_by_key(|(_, a)| a.len())
        .context("no node holds an IPv6 address")?;
    let idx = c
        .topo
        .nodes
        .iter()
        .position(|n| n.name == node)
        .context("holder is not a lab node")?;
    let others: Vec<String> = c
        .topo
        .nodes
        .iter()
        .filter(|n| n.name != node)
        .map(|n| probe::norm_mac(&n.mac))
        .collect();
    let step = (addrs.len() / sample.max(1)).max(1);
    let sampled: Vec<IpAddr> = addrs.iter().step_by(step).take(sample).copied().collect();
    let t0 = Instant::now();
    c.stop_agent(idx, sig)?;
    let client = c.topo.client();
    let times: Vec<Option<u64>> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = sampled
                .iter()
                .map(|ip| {
                    let others = &others;
                    s.spawn(move || {
                        while t0.elapsed() < within {
                            let out = client
                                .cmd("ndisc6")
                                .args(["-m", "-r", "1", "-w", "50", &ip.to_string(), "eth0"])
                                .output();
                            let macs = out
                                .map(|o| probe::parse_ndisc6(&String::from_utf8_lossy(&o.stdout)))
                                .unwrap_or_default();
                            if macs.iter().any(|m| others.contains(m)) {
                                return Some(t0.elapsed().as_millis() as u64);
                            }
                        }
                        None
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect()
        })
    });
    c.start_agent(idx)?;
    let got: Vec<u64> = times.iter().flatten().copied().collect();
    Ok(Burst {
        kind: if sig == "KILL" {
            "crash (SIGKILL)".into()
        } else {
            "graceful (SIGTERM)".into()
        },
        node,
        held: addrs.len(),
        sampled: sampled.len(),
        answered: got.len(),
        first_ms: got.iter().min().copied(),
        last_ms: got.iter().max().copied(),
    })
}
