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
    /// Every address Lease the node held names another holder (the API server's view, polled
    /// every [`moved_poll`]), this long after the signal.
    pub all_moved_ms: Option<u64>,
    /// The agents' writes (create/update/patch/delete, every resource: address Leases, the
    /// fence, presence renewals, L2Announcements, Events) from the signal to the end of the
    /// burst's window (`window_ms`); `None` when the counters could not be read.
    pub agent_writes: Option<u64>,
    /// The same writes by (verb, resource), most first.
    pub agent_writes_by_kind: Vec<(String, String, u64)>,
    pub window_ms: u64,
}

impl Burst {
    /// "update leases 1200, create events 20, …" (empty when the counters were not read).
    pub fn writes_by_kind(&self) -> String {
        self.agent_writes_by_kind
            .iter()
            .map(|(verb, res, n)| format!("{verb} {res} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How often a burst's probes solicit a sampled address (Neighbor Solicitation from the
/// client) until another node answers.
pub const PROBE_EVERY: Duration = Duration::from_millis(25);

/// How often a burst lists the address Leases to see whether all of them moved, per 1,000
/// address Leases in the cluster (at least once): a LIST of 10k Leases every 250 ms is load
/// the burst itself has to compete with on the API server.
pub const MOVED_POLL: Duration = Duration::from_millis(250);

/// [`MOVED_POLL`] for `leases` address Leases.
pub fn moved_poll(leases: usize) -> Duration {
    MOVED_POLL * (leases / 1000).max(1) as u32
}

/// The agents' writes between two readings of the API server's request counters (clients
/// named `node…`; `*`: kube-apiserver's counters, which do not tell clients apart), by (verb,
/// resource), most first; kinds with none left out.
pub fn agent_writes_between(
    before: &[(String, String, String, f64)],
    after: &[(String, String, String, f64)],
) -> Vec<(String, String, u64)> {
    let by_kind = |v: &[(String, String, String, f64)]| -> BTreeMap<(String, String), f64> {
        let mut m = BTreeMap::new();
        for (verb, res, client, n) in v {
            if matches!(verb.as_str(), "create" | "update" | "patch" | "delete")
                && (client.starts_with("node") || client == "*")
            {
                *m.entry((verb.clone(), res.clone())).or_insert(0.0) += n;
            }
        }
        m
    };
    let b = by_kind(before);
    let mut out: Vec<(String, String, u64)> = by_kind(after)
        .into_iter()
        .map(|(k, a)| {
            let n = (a - b.get(&k).copied().unwrap_or(0.0)).max(0.0).round() as u64;
            (k.0, k.1, n)
        })
        .filter(|k| k.2 > 0)
        .collect();
    out.sort_by(|x, y| y.2.cmp(&x.2).then_with(|| (&x.0, &x.1).cmp(&(&y.0, &y.1))));
    out
}

/// Whether every Lease in `names` names a holder other than `node` in `now` (name → holder).
pub fn all_moved(
    names: &std::collections::BTreeSet<String>,
    node: &str,
    now: &BTreeMap<String, String>,
) -> bool {
    names
        .iter()
        .all(|n| now.get(n).is_some_and(|h| !h.is_empty() && h != node))
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
    let mut names_of: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let leases = address_leases(c).await?;
    let poll = moved_poll(leases.len());
    for (name, (_, holder, addrs)) in leases {
        if holder.is_empty() {
            continue;
        }
        names_of.entry(holder.clone()).or_default().insert(name);
        by_node
            .entry(holder)
            .or_default()
            .extend(addrs.into_iter().filter(IpAddr::is_ipv6));
    }
    let (node, addrs) = by_node
        .into_iter()
        .max_by_key(|(_, a)| a.len())
        .context("no node holds an IPv6 address")?;
    let names = names_of.remove(&node).unwrap_or_default();
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
    let before = c.api_requests().await.ok();
    let t0 = Instant::now();
    // Probed from the signal on, not from the process's exit: a graceful stop frees addresses
    // before it exits (up to a renew deadline later), and a burst measured from the exit
    // would count that time twice.
    let stopping = c.signal_agent(idx, sig)?;
    let cl: &Cluster = c;
    let client = cl.topo.client();
    let rt = tokio::runtime::Handle::current();
    let (times, all_moved_ms) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            // Meanwhile, from the API server: when every address Lease of the node has moved.
            let moved = s.spawn(|| {
                while t0.elapsed() < within {
                    let now: Option<BTreeMap<String, String>> = rt
                        .block_on(address_leases(cl))
                        .ok()
                        .map(|m| m.into_iter().map(|(n, (_, h, _))| (n, h)).collect());
                    if now.is_some_and(|now| all_moved(&names, &node, &now)) {
                        return Some(t0.elapsed().as_millis() as u64);
                    }
                    std::thread::sleep(poll);
                }
                None
            });
            let handles: Vec<_> = sampled
                .iter()
                .map(|ip| {
                    let others = &others;
                    s.spawn(move || {
                        while t0.elapsed() < within {
                            // One ndisc6 soliciting every PROBE_EVERY until the first answer:
                            // a process per solicitation cost more than the time resolved.
                            let left = within.saturating_sub(t0.elapsed());
                            let tries = (left.as_millis() / PROBE_EVERY.as_millis()).max(1);
                            let macs = probe::run_ndisc6(
                                client,
                                "eth0",
                                &ip.to_string(),
                                tries as u32,
                                PROBE_EVERY.as_millis() as u32,
                            )
                            .unwrap_or_default();
                            if macs.iter().any(|m| others.contains(m)) {
                                return Some(t0.elapsed().as_millis() as u64);
                            }
                        }
                        None
                    })
                })
                .collect();
            let times: Vec<Option<u64>> = handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect();
            (times, moved.join().ok().flatten())
        })
    });
    let after = c.api_requests().await.ok();
    let window_ms = t0.elapsed().as_millis() as u64;
    if let Some(mut p) = stopping {
        p.wait_exit(Duration::from_secs(15))?;
    }
    let by_kind = before.zip(after).map(|(b, a)| agent_writes_between(&b, &a));
    let agent_writes = by_kind.as_ref().map(|k| k.iter().map(|x| x.2).sum());
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
        all_moved_ms,
        agent_writes,
        agent_writes_by_kind: by_kind.unwrap_or_default(),
        window_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_writes_count_writes_of_nodes_only() {
        let row = |verb: &str, res: &str, client: &str, n: f64| {
            (verb.to_string(), res.to_string(), client.to_string(), n)
        };
        let before = vec![
            row("update", "leases", "node1", 100.0),
            row("list", "leases", "node1", 3.0),
            row("patch", "services", "controller-0", 5.0),
        ];
        let after = vec![
            row("update", "leases", "node1", 160.0),
            row("update", "leases", "node2", 40.0),
            row("create", "events", "node2", 2.0),
            row("list", "leases", "node1", 9.0),
            row("patch", "services", "controller-0", 500.0),
        ];
        assert_eq!(
            agent_writes_between(&before, &after),
            vec![
                ("update".to_string(), "leases".to_string(), 100),
                ("create".to_string(), "events".to_string(), 2),
            ]
        );
    }

    #[test]
    fn moved_means_every_lease_names_another_holder() {
        let names: std::collections::BTreeSet<String> =
            ["a", "b"].iter().map(|s| s.to_string()).collect();
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(n, h)| (n.to_string(), h.to_string()))
                .collect()
        };
        assert!(all_moved(
            &names,
            "node1",
            &m(&[("a", "node2"), ("b", "node3")])
        ));
        assert!(!all_moved(
            &names,
            "node1",
            &m(&[("a", "node2"), ("b", "node1")])
        ));
        assert!(
            !all_moved(&names, "node1", &m(&[("a", "node2"), ("b", "")])),
            "released, not taken"
        );
        assert!(!all_moved(&names, "node1", &m(&[("a", "node2")])), "gone");
    }
}
