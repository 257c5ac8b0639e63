//! `L2AnnouncementPolicy` choices seen on the wire: real agent processes in node namespaces on
//! one bridge, the API stand-in, and a client namespace that looks with the kernel's own tools
//! (arping, the neighbour table). Needs root (skips otherwise).
//!
//! - `spec.preferredNodes`: a preferred node takes the address while it is alive, a fallback
//!   when it dies, and the address goes back after the rebalancing delay when it returns.
//! - `spec.subnetAware`: a node whose only selected interface has no prefix containing the VIP
//!   never stands for it while another node does; an address no node has a prefix for is
//!   announced anyway, and the policy's `SubnetMatch` condition says so.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrolb_lab::harness::{arping_macs, scenario, wait_until, TestCluster};
use ferrolb_lab::netns;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_ferrolb");
/// The agents' lease duration in these tests (`AgentSpec::new`).
const LEASE: Duration = Duration::from_secs(2);

fn skip() -> bool {
    if !netns::is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// Polls arping from the client until exactly `node` answers for `ip`.
fn wait_only(c: &TestCluster, ip: &str, node: &str, timeout: Duration) -> anyhow::Result<()> {
    let mac = c.macs[node].clone();
    wait_until(
        &format!("{node} alone to answer for {ip}"),
        timeout,
        Duration::from_millis(20),
        || {
            let m = arping_macs(c.client(), "eth0", ip, 1).ok()?;
            (m == BTreeSet::from([mac.clone()])).then_some(())
        },
    )
}

#[test]
fn a_preferred_node_announces_while_alive_a_fallback_when_it_dies_and_it_gets_it_back(
) -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    const VIP: &str = "198.51.100.40";
    const REBALANCE: Duration = Duration::from_secs(4);
    let names = ["n1", "n2", "n3"];
    // Prefer the node the plain rendezvous order puts LAST, so the test cannot pass by luck.
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let lease = ferrolb::lease::lease_name(VIP);
    let preferred = *names
        .iter()
        .find(|n| ferrolb::lease::rendezvous_rank(&lease, n, &all) == names.len() - 1)
        .context("a last-ranked node")?;
    const PREFERRED: &[(&str, &str)] = &[("ferrolb.io/preferred", "yes")];
    let nodes: Vec<(&str, &[(&str, &str)])> = names
        .iter()
        .map(|n| (*n, if *n == preferred { PREFERRED } else { &[] }))
        .collect();
    let dir = tempfile::tempdir()?;
    let mut c = TestCluster::new(Path::new(BIN), dir.path(), "po1", &nodes)?;
    let rebalance = format!("{}s", REBALANCE.as_secs());
    let flags = ["--rebalance-after", rebalance.as_str()];
    scenario(&mut c, |c| {
        c.policy(
            "preferring",
            json!({"preferredNodes": [
                {"weight": 50, "nodeSelector": {"matchLabels": {"ferrolb.io/preferred": "yes"}}}
            ]}),
        )?;
        c.service("web", &[VIP])?;
        for n in std::iter::once(preferred).chain(names.iter().copied().filter(|n| *n != preferred))
        {
            c.start_agent(n, &flags)?;
        }
        // The preferred node takes it, and keeps it past the rebalancing delay: without the
        // preference the load-bounded order would have handed it to another node by then.
        wait_only(c, VIP, preferred, Duration::from_secs(20))?;
        std::thread::sleep(REBALANCE + Duration::from_secs(1));
        assert_eq!(
            arping_macs(c.client(), "eth0", VIP, 2)?,
            BTreeSet::from([c.macs[preferred].clone()]),
            "the preferred node stopped answering with every agent up"
        );

        // It dies: a fallback takes over within the lease duration (+ rank wait).
        c.client_resolve(VIP);
        let preferred_mac = c.macs[preferred].clone();
        c.agents.get_mut(preferred).context("agent")?.kill();
        let fallback_mac = wait_until(
            "a fallback to take over",
            LEASE + Duration::from_secs(8),
            Duration::from_millis(10),
            || c.client_neighbour(VIP).filter(|m| *m != preferred_mac),
        )?;
        let took_over = Instant::now();
        let fallback = c.node_of_mac(&fallback_mac).context("unknown MAC")?;
        assert_ne!(fallback, preferred);
        assert_eq!(
            arping_macs(c.client(), "eth0", VIP, 2)?,
            BTreeSet::from([fallback_mac.clone()])
        );

        // It returns at once: the fallback keeps the address for the rebalancing delay, then
        // hands it back.
        c.start_agent(preferred, &flags)?;
        wait_only(
            c,
            VIP,
            preferred,
            REBALANCE + LEASE + Duration::from_secs(15),
        )?;
        let back_after = took_over.elapsed();
        eprintln!(
            "{preferred} preferred: {fallback} took over, {preferred} got it back {back_after:?} later"
        );
        // Not before the fallback had held it for the rebalancing delay (1 s margin for the
        // gratuitous ARP's way to the client and our polling).
        assert!(
            back_after + Duration::from_secs(1) >= REBALANCE,
            "handed back after {back_after:?}, before the rebalancing delay {REBALANCE:?}"
        );
        assert_eq!(
            arping_macs(c.client(), "eth0", VIP, 2)?,
            BTreeSet::from([preferred_mac])
        );
        Ok(())
    })
}

#[test]
fn a_node_without_the_vips_subnet_never_stands_for_it_while_another_node_does() -> anyhow::Result<()>
{
    if skip() {
        return Ok(());
    }
    // 198.51.100.0/24 is configured on n1's and n2's eth0 only; n3's eth0 has just its
    // 192.0.2.13/24. n3 is also the preferred node, so without the subnet rule it would take
    // the address: the test cannot pass by luck.
    const VIP: &str = "198.51.100.50";
    // No node has a prefix containing this one: announced through the fallback.
    const ELSEWHERE: &str = "203.0.113.50";
    const PREFERRED: &[(&str, &str)] = &[("ferrolb.io/preferred", "yes")];
    let dir = tempfile::tempdir()?;
    let mut c = TestCluster::new(
        Path::new(BIN),
        dir.path(),
        "po2",
        &[("n1", &[]), ("n2", &[]), ("n3", PREFERRED)],
    )?;
    scenario(&mut c, |c| {
        for (n, a) in [("n1", "198.51.100.11/24"), ("n2", "198.51.100.12/24")] {
            c.node_ns(n).ip(&["addr", "add", a, "dev", "eth0"])?;
        }
        c.policy(
            "subnets",
            json!({"preferredNodes": [
                {"weight": 50, "nodeSelector": {"matchLabels": {"ferrolb.io/preferred": "yes"}}}
            ]}),
        )?;
        c.service("web", &[VIP])?;
        c.service("other", &[ELSEWHERE])?;
        for n in ["n3", "n1", "n2"] {
            c.start_agent(n, &[])?;
        }
        let n3_mac = c.macs["n3"].clone();
        // The fallback address is announced (by the preferred n3: every node stands for it).
        wait_only(c, ELSEWHERE, "n3", Duration::from_secs(20))?;
        // The VIP: n1 or n2, alone. n3 started first, so until n1's or n2's interfaces Lease
        // is published no node is known to have the subnet and n3 may stand for it through the
        // fallback (on a loaded machine the others start later): wait for the hand-over to a
        // subnet node, which never comes if n3 keeps standing once they are there.
        let (holder, holder_mac) = wait_until(
            "n1 or n2 alone to answer for the VIP",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || {
                let m = arping_macs(c.client(), "eth0", VIP, 1).ok()?;
                let [mac] = m.into_iter().collect::<Vec<_>>().try_into().ok()?;
                let node = c.node_of_mac(&mac)?;
                (node != "n3").then_some((node, mac))
            },
        )?;
        let macs = arping_macs(c.client(), "eth0", VIP, 3)?;
        assert_eq!(macs, BTreeSet::from([holder_mac.clone()]));

        // The holder dies: the other subnet node takes over, n3 still does not.
        c.client_resolve(VIP);
        c.agents.get_mut(&holder).context("agent")?.kill();
        let new_mac = wait_until(
            "the other node on the subnet to take over",
            LEASE + Duration::from_secs(8),
            Duration::from_millis(10),
            || c.client_neighbour(VIP).filter(|m| *m != holder_mac),
        )?;
        assert_ne!(
            new_mac, n3_mac,
            "n3 took over an address it has no subnet for"
        );
        let macs = arping_macs(c.client(), "eth0", VIP, 3)?;
        assert_eq!(macs, BTreeSet::from([new_mac]));

        // The policy status says which address went through the fallback.
        let cond = wait_until(
            "the SubnetMatch condition",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let p = c
                    .api()
                    .get("/apis/ferrolb.io/v1alpha1/l2announcementpolicies/subnets")
                    .ok()?;
                p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "SubnetMatch")
                    .cloned()
            },
        )?;
        assert_eq!(cond["status"], "False", "{cond}");
        assert_eq!(cond["reason"], "NoNodeOnSubnet");
        let msg = cond["message"].as_str().unwrap_or_default();
        assert!(msg.contains(ELSEWHERE) && !msg.contains(VIP), "{msg}");
        Ok(())
    })
}

#[test]
fn policies_limited_to_pools_announce_each_services_address_only_from_their_nodes(
) -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    // Pool a (198.51.100.0/28) is announced by policy pa from n1; pool b (198.51.100.16/28) by
    // policy pb from n2 and n3. pb prefers its nodes more than pa prefers n1, so if the pool
    // restriction were ignored (both policies covering both Services), n2 or n3 would take web-a:
    // the test cannot pass by luck.
    const VIP_A: &str = "198.51.100.5";
    const VIP_B: &str = "198.51.100.20";
    // In no pool: neither policy announces it.
    const NO_POOL: &str = "203.0.113.30";
    let dir = tempfile::tempdir()?;
    let mut c = TestCluster::new(
        Path::new(BIN),
        dir.path(),
        "po3",
        &[
            ("n1", &[("group", "a")]),
            ("n2", &[("group", "b")]),
            ("n3", &[("group", "b")]),
        ],
    )?;
    scenario(&mut c, |c| {
        for (name, cidr, tier) in [
            ("a", "198.51.100.0/28", "gold"),
            ("b", "198.51.100.16/28", "silver"),
        ] {
            c.api().create(
                "/apis/ferrolb.io/v1alpha1/loadbalancerippools",
                &json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool",
                        "metadata": {"name": name, "labels": {"tier": tier}},
                        "spec": {"blocks": [{"cidr": cidr}]}}),
            )?;
        }
        c.policy(
            "pa",
            json!({"pools": ["a"], "interfaces": ["eth0"],
                   "nodeSelector": {"matchLabels": {"group": "a"}},
                   "preferredNodes": [{"weight": 10, "nodeSelector": {"matchLabels": {"group": "a"}}}]}),
        )?;
        c.policy(
            "pb",
            json!({"poolSelector": {"matchLabels": {"tier": "silver"}}, "interfaces": ["eth.*"],
                   "nodeSelector": {"matchLabels": {"group": "b"}},
                   "preferredNodes": [{"weight": 90, "nodeSelector": {"matchLabels": {"group": "b"}}}]}),
        )?;
        c.service("web-a", &[VIP_A])?;
        c.service("web-b", &[VIP_B])?;
        c.service("web-x", &[NO_POOL])?;
        for n in ["n1", "n2", "n3"] {
            c.start_agent(n, &[])?;
        }
        wait_only(c, VIP_A, "n1", Duration::from_secs(20))?;
        let b_holder = wait_until(
            "n2 or n3 to answer for web-b",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || {
                let m = arping_macs(c.client(), "eth0", VIP_B, 1).ok()?;
                let [mac] = m.into_iter().collect::<Vec<_>>().try_into().ok()?;
                c.node_of_mac(&mac)
            },
        )?;
        assert_ne!(b_holder, "n1", "n1's policy does not name pool b");
        // Steady: still only its policy's nodes, and nobody for the address in no pool.
        assert_eq!(
            arping_macs(c.client(), "eth0", VIP_A, 3)?,
            BTreeSet::from([c.macs["n1"].clone()])
        );
        assert_eq!(
            arping_macs(c.client(), "eth0", VIP_B, 2)?,
            BTreeSet::from([c.macs[&b_holder].clone()])
        );
        assert!(
            arping_macs(c.client(), "eth0", NO_POOL, 3)?.is_empty(),
            "an address in no pool was announced by a policy limited to pools"
        );
        // n1 dies: web-a has no other node in its policy, so nobody answers — pb's nodes do
        // not take pool a's address.
        c.agents.get_mut("n1").context("agent")?.kill();
        // An absence: wait past the lease duration (+ rank waits) a takeover would need.
        std::thread::sleep(LEASE + Duration::from_secs(4));
        assert!(
            arping_macs(c.client(), "eth0", VIP_A, 3)?.is_empty(),
            "a node of the other policy took pool a's address"
        );
        Ok(())
    })
}
