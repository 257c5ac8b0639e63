//! Failover measurement, shared by `ferrolb lab`, `--measure` and the end-to-end tests.
//! A failover is timed from the signal to the first HTTP response through the VIP that comes
//! from another node, as seen by a prober in the client namespace (fresh connection every 20 ms).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::cluster::Cluster;
use super::probe::{self, now_ms, parse_probe, parse_tcpdump_garp, Stream};

/// One measured failover.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub kind: String,
    pub vip: IpAddr,
    pub from: String,
    pub to: String,
    pub millis: u64,
    /// The new holder's gratuitous ARP reached the client after the signal (IPv4 only).
    pub gratuitous_seen: bool,
}

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    }
}

/// Which node answers HTTP through `vip` right now (waits up to `within` for an answer).
pub fn current_holder(c: &Cluster, vip: IpAddr, within: Duration) -> anyhow::Result<String> {
    let prober = probe::prober(c.topo.client(), &c.cfg.exe, &url(vip), 20)?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(p) = prober
            .next(Duration::from_millis(500))
            .as_deref()
            .and_then(parse_probe)
        {
            if let Some(node) = p.node {
                return Ok(node);
            }
        }
    }
    bail!("nobody answered HTTP on {vip} within {within:?}")
}

/// Starts tcpdump on the client and returns once it captures.
fn arp_watch(c: &Cluster) -> anyhow::Result<Stream> {
    let mut cmd = c.topo.client().cmd("sh");
    cmd.args([
        "-c",
        "exec tcpdump -i eth0 -l -n -e -tt --immediate-mode arp 2>&1",
    ]);
    let s = Stream::spawn(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(l) = s.next(Duration::from_millis(500)) {
            if l.contains("listening on") {
                return Ok(s);
            }
        }
    }
    bail!("tcpdump did not start on the client")
}

/// Stops the agent of the node answering for `vip` with `sig` (`KILL` = crash, `TERM` =
/// graceful) and times the takeover.
pub fn failover(
    c: &mut Cluster,
    vip: IpAddr,
    sig: &str,
    within: Duration,
) -> anyhow::Result<Failover> {
    let kind = if sig == "KILL" {
        "crash (SIGKILL)"
    } else {
        "graceful (SIGTERM)"
    };
    timed_failover(c, vip, kind, within, |c, idx| c.stop_agent(idx, sig))
}

/// Does `act` to the node answering for `vip` (by index) and times the takeover: from just
/// before `act` to the first HTTP answer through `vip` from another node.
pub fn timed_failover(
    c: &mut Cluster,
    vip: IpAddr,
    kind: &str,
    within: Duration,
    act: impl FnOnce(&mut Cluster, usize) -> anyhow::Result<()>,
) -> anyhow::Result<Failover> {
    let from = current_holder(c, vip, Duration::from_secs(20))?;
    let idx = c
        .topo
        .nodes
        .iter()
        .position(|n| n.name == from)
        .context("holder is not a lab node")?;
    let watch = if vip.is_ipv4() {
        Some(arp_watch(c)?)
    } else {
        None
    };
    let prober = probe::prober(c.topo.client(), &c.cfg.exe, &url(vip), 20)?;
    // The prober must see the current holder before the signal: the clock starts at a known state.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match prober
            .next(Duration::from_millis(500))
            .as_deref()
            .and_then(parse_probe)
        {
            Some(p) if p.node.as_deref() == Some(from.as_str()) => break,
            _ if Instant::now() > deadline => bail!("prober never reached {from}"),
            _ => {}
        }
    }
    let t0 = now_ms();
    act(c, idx)?;
    let deadline = Instant::now() + within;
    let (to, t1) = loop {
        if Instant::now() > deadline {
            bail!("no other node answered {vip} within {within:?} after {kind} of {from}");
        }
        let Some(line) = prober.next(Duration::from_millis(500)) else {
            continue;
        };
        let Some(p) = parse_probe(&line) else {
            continue;
        };
        match p.node {
            Some(n) if n != from && p.at_ms >= t0 => break (n, p.at_ms),
            _ => {}
        }
    };
    let new_mac = c
        .topo
        .nodes
        .iter()
        .find(|n| n.name == to)
        .map(|n| n.mac.to_ascii_lowercase())
        .unwrap_or_default();
    let mut gratuitous_seen = false;
    if let Some(w) = watch {
        while let Some(line) = w.next(Duration::from_millis(200)) {
            if let Some(g) = parse_tcpdump_garp(&line) {
                if g.ip == vip && g.mac == new_mac && g.at_ms + 5 >= t0 {
                    gratuitous_seen = true;
                }
            }
        }
    }
    Ok(Failover {
        kind: kind.into(),
        vip,
        from,
        to,
        millis: t1.saturating_sub(t0),
        gratuitous_seen,
    })
}

/// p-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
