//! Link-loss failover for `--measure` (issue 11): the holder's announcing link goes down
//! (`ip link set eth0 down` in its namespace) while its agent still reaches the API server over a
//! management link, and the takeover is timed like crash and graceful failovers
//! ([`super::scenario::timed_failover`]: from the link going down to the first HTTP answer through
//! the VIP from another node). Without the management link the holder would lose the API server
//! with its link and the figure would be a crash's (lease expiry), not a hand-over's.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;

use super::cluster::Cluster;
use super::scenario::{percentile, timed_failover, Failover};
use super::Say;
use crate::netns;

/// The management segment: a bridge in the API server's namespace, 203.0.113.254/24 on it,
/// node i at 203.0.113.(i+1) (so up to 253 nodes; the lab allows 200).
const MGMT_BRIDGE: &str = "brm";
const MGMT_API: &str = "203.0.113.254";
const MGMT_MAC: &str = "02:fe:00:00:00:fe";

/// Gives every node a management link to the API server's namespace and routes the API server's
/// address over it, then restarts the agents so that their connections use it. Each node keeps
/// its IPv6 addresses on `eth0` while it is down (`keep_addr_on_down`), as a real node would
/// with static addressing.
pub fn management_links(c: &mut Cluster) -> anyhow::Result<()> {
    let api = c.topo.api();
    // A fixed MAC: the nodes' links join one by one, and a bridge MAC that moved to a lower
    // port MAC left earlier nodes sending to the old one — an agent restarted below then waited
    // 30 s for its first API connection (the uneven split of `--measure` runs).
    netns::bridge(api, MGMT_BRIDGE, MGMT_MAC).context("management bridge")?;
    api.ip(&["addr", "add", &format!("{MGMT_API}/24"), "dev", MGMT_BRIDGE])?;
    for i in 0..c.topo.nodes.len() {
        let (ns, api) = (c.topo.node_ns(i), c.topo.api());
        let port = format!("m{i}");
        netns::veth(ns, "mgmt0", api, &port).context("management link")?;
        api.ip(&["link", "set", &port, "master", MGMT_BRIDGE])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("203.0.113.{}/24", i + 1),
            "dev",
            "mgmt0",
        ])?;
        ns.ip(&[
            "route",
            "add",
            &format!("{}/32", c.topo.api_ipv4),
            "via",
            MGMT_API,
        ])?;
        ns.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1")?;
    }
    for i in 0..c.topo.nodes.len() {
        c.stop_agent(i, "TERM")?;
        c.start_agent(i)?;
    }
    Ok(())
}

/// One link-loss failover of `vip`: the holder's `eth0` goes down, another node must answer;
/// the link comes back afterwards (the node stands again; no immediate steal).
pub fn link_loss(c: &mut Cluster, vip: IpAddr, within: Duration) -> anyhow::Result<Failover> {
    let f = tokio::task::block_in_place(|| {
        timed_failover(c, vip, "link loss (eth0 down)", within, |c, idx| {
            c.topo
                .node_ns(idx)
                .ip(&["link", "set", "eth0", "down"])
                .map(|_| ())
        })
    });
    // Whatever happened, the link comes back (a no-op on nodes whose link is up).
    for i in 0..c.topo.nodes.len() {
        c.topo.node_ns(i).ip(&["link", "set", "eth0", "up"])?;
    }
    f
}

/// `repeat` link-loss failovers for `--measure`: sets up the management links, then prints
/// p50/p95/p99 and returns the times (ms, sorted).
pub(super) fn measure(
    c: &mut Cluster,
    vip: IpAddr,
    repeat: usize,
    within: Duration,
    say: &Say,
) -> anyhow::Result<Vec<u64>> {
    say.line(format!(
        "[measure] {repeat} link-loss failovers (the holder's eth0 down; the API server over a management link)"
    ));
    management_links(c)?;
    let mut ms = Vec::with_capacity(repeat);
    for i in 0..repeat {
        ms.push(link_loss(c, vip, within)?.millis);
        say.progress(
            &format!("link loss {}/{repeat}", i + 1),
            std::time::Instant::now(),
        );
    }
    say.clear();
    ms.sort_unstable();
    say.line(format!(
        "      {:<9} p50 {:>6} ms  p95 {:>6} ms  p99 {:>6} ms  (n={})",
        "link loss",
        percentile(&ms, 50.0).unwrap_or(0),
        percentile(&ms, 95.0).unwrap_or(0),
        percentile(&ms, 99.0).unwrap_or(0),
        ms.len()
    ));
    Ok(ms)
}
