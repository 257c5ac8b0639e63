//! Rolling upgrade (issue 10, item 6): an agent of the previous lease format and one of the
//! attached format never both answer one address.
//!
//! The new-format side is a real `ferrolb agent` process in a lab node namespace; the client
//! namespace asks with `arping`. The previous-format side is a test-only *old-format agent*: the
//! lease engine without a presence Lease (`EngineOptions { presence: false, .. }`), which is the
//! previous format exactly — every held address Lease renewed each retry period, judged valid
//! for its own `leaseDurationSeconds` after the last change seen (`lease::decide`), no
//! `ferrolb.io/attached-to` marker written. It runs in this process against the lab's API
//! stand-in and answers nothing on the segment, so any ARP answer comes from the new agent.
//!
//! One scenario, three phases:
//! 1. the old-format agent holds and renews the address Lease: for four lease durations the new
//!    agent never takes it (the Lease names the old holder at every look, no ARP answer);
//! 2. the old-format agent dies (its task aborted, no release): the new agent takes the Lease —
//!    not before a lease duration after the last renewal — attaches it to its presence Lease
//!    and answers ARP;
//! 3. a fresh old-format agent wanting the same address never counts the attached Lease as its
//!    own (its held set never contains it, the Lease keeps naming the new agent, only the new
//!    agent's MAC answers): it judges the attached Lease by its one-day `leaseDurationSeconds`
//!    (`lease::attach::ATTACHED_DURATION_SECONDS`), i.e. as held.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb::lease::attach::{ANN_ATTACHED_TO, ATTACHED_DURATION_SECONDS};
use ferrolb::lease::{
    lease_name, presence_name, EngineOptions, LeaseConfig, LeaseSet, LeaseWant, MANAGED_BY_LABEL,
};
use ferrolb_lab::harness::{wait_until, wait_until_async};
use ferrolb_lab::lab::cluster::{Cluster, LabConfig, SYSTEM_NS};
use ferrolb_lab::lab::{echo_service, probe};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

fn exe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferrolb"))
}

/// The previous format's timings in the lab (2 s / 1.5 s / 250 ms), the same as the new agent's
/// here (`lab::cluster::Timings::default`).
fn old_config() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(250),
        rank_step: Duration::from_millis(100),
    }
}

/// An old-format agent for node `identity` wanting lease `name` (candidates `cands`).
fn old_format_agent(client: kube::Client, identity: &str, name: &str, cands: &[&str]) -> LeaseSet {
    let opts = EngineOptions {
        presence: false,
        rebalance_after: None,
        ..EngineOptions::agent(SYSTEM_NS, identity, old_config())
    };
    let (set, _events) = LeaseSet::start(client, opts);
    let candidates = Arc::new(cands.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    set.set_desired(BTreeMap::from([(
        name.to_string(),
        LeaseWant {
            candidates,
            ..LeaseWant::default()
        },
    )]));
    set
}

/// What Lease `name` says now.
#[derive(Debug, Clone)]
struct Seen {
    holder: String,
    marker: Option<String>,
    transitions: i32,
    /// Microseconds since the epoch (every process of the lab shares this machine's clock).
    renew: Option<i64>,
    acquire: Option<i64>,
    duration: i32,
}

async fn look(api: &Api<Lease>, name: &str) -> Option<Seen> {
    let l = api.get_opt(name).await.ok()??;
    let spec = l.spec.unwrap_or_default();
    Some(Seen {
        holder: spec.holder_identity.unwrap_or_default(),
        marker: l
            .metadata
            .annotations
            .unwrap_or_default()
            .get(ANN_ATTACHED_TO)
            .cloned(),
        transitions: spec.lease_transitions.unwrap_or(0),
        renew: spec.renew_time.map(|t| t.0.as_microsecond()),
        acquire: spec.acquire_time.map(|t| t.0.as_microsecond()),
        duration: spec.lease_duration_seconds.unwrap_or(0),
    })
}

/// MACs answering one ARP probe from the client.
fn arp_macs(c: &Cluster, ip: IpAddr) -> Vec<String> {
    tokio::task::block_in_place(|| probe::answering_macs(c.topo.client(), ip, 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_format_agent_and_an_attached_agent_never_both_hold_one_address() {
    if !ferrolb_lab::netns::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Two lab nodes; only node1 runs a (new-format) agent. node2 is the old-format agent.
    let cfg = LabConfig::new("mv", 2, exe());
    let mut c = Cluster::start_api(cfg).await.expect("API stand-in");
    c.create_json(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NS}}))
        .await
        .unwrap();
    c.create_nodes().await.unwrap();
    c.start_controller(0).unwrap();
    c.start_echoes().unwrap();
    for (name, text) in ferrolb_lab::lab::EMBEDDED_MANIFESTS {
        if *name != "echo.yaml" {
            c.apply_yaml(text).await.expect(name);
        }
    }
    c.create_json(&echo_service("echo", false)).await.unwrap();
    c.create_endpoints("default", "echo", &[0, 1])
        .await
        .unwrap();
    let ips = c
        .wait_ingress("default", "echo", Duration::from_secs(60))
        .await
        .unwrap();
    let vip = ips[0];
    c.topo.add_vip_on_nodes(vip).unwrap();
    let name = lease_name(&vip.to_string());
    let (n1, n2) = (c.topo.nodes[0].name.clone(), c.topo.nodes[1].name.clone());
    let n1_mac = c.topo.nodes[0].mac.to_ascii_lowercase();
    let cands = [n1.as_str(), n2.as_str()];
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), SYSTEM_NS);
    let lease_duration = old_config().lease_duration;

    // The old-format agent takes the address first.
    let old = old_format_agent(c.client.clone(), &n2, &name, &cands);
    let mut held = old.held();
    tokio::time::timeout(
        Duration::from_secs(20),
        held.wait_for(|h| h.contains(&name)),
    )
    .await
    .expect("the old-format agent takes the free address Lease")
    .unwrap();
    let first = look(&leases, &name).await.expect("the Lease exists");
    assert_eq!(first.holder, n2);
    assert_eq!(first.marker, None, "the old format writes no marker");
    assert_eq!(
        leases
            .get(&name)
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap_or_default()
            .get(MANAGED_BY_LABEL)
            .map(String::as_str),
        Some("ferrolb"),
        "in the agents' label-selected watch"
    );

    // Phase 1: the new agent starts while the old one renews; four lease durations later it
    // has taken nothing and answered nothing.
    c.start_agent(0).unwrap();
    let until = Instant::now() + 4 * lease_duration;
    let mut renewals = std::collections::BTreeSet::new();
    let mut arp_looks = 0;
    while Instant::now() < until {
        let s = look(&leases, &name).await.expect("the Lease exists");
        assert_eq!(
            s.holder, n2,
            "the new agent took a renewed old-format Lease: {s:?}"
        );
        assert_eq!(s.transitions, first.transitions, "{s:?}");
        assert_eq!(s.marker, None, "{s:?}");
        renewals.extend(s.renew);
        let macs = arp_macs(&c, vip);
        arp_looks += 1;
        assert!(
            macs.is_empty(),
            "{macs:?} answered ARP for {vip} while the old-format agent holds it"
        );
        assert!(
            held.borrow().contains(&name),
            "the old-format agent lost it"
        );
    }
    assert!(
        renewals.len() >= 3,
        "the old-format agent renews (saw {} renewTimes)",
        renewals.len()
    );
    assert!(arp_looks >= 2, "{arp_looks} ARP looks");

    // Phase 2: the old-format agent dies without releasing. The new agent takes the Lease once
    // it has seen it unrenewed for its duration, attaches it, and answers.
    let last_renew = &std::cell::Cell::new(look(&leases, &name).await.and_then(|s| s.renew));
    old.abort();
    let taken = wait_until_async(
        "the new agent to take the expired old-format Lease",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let s = look(&leases, &name).await.expect("the Lease exists");
            if s.holder == n2 {
                last_renew.set(last_renew.get().max(s.renew));
            }
            Ok((s.holder != n2 && !s.holder.is_empty()).then_some(s))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let last_renew = last_renew.get();
    assert_eq!(taken.holder, n1, "{taken:?}");
    assert_eq!(taken.marker, Some(presence_name(&n1)), "{taken:?}");
    assert_eq!(taken.duration, ATTACHED_DURATION_SECONDS, "{taken:?}");
    assert_eq!(taken.transitions, first.transitions + 1, "{taken:?}");
    let (acquired, renewed) = (taken.acquire.unwrap(), last_renew.unwrap());
    let gap = Duration::from_micros(acquired.saturating_sub(renewed).max(0) as u64);
    assert!(
        gap >= lease_duration,
        "taken {gap:?} after the last renewal seen: before the old Lease expired"
    );
    let macs = wait_until(
        "the new holder to answer",
        Duration::from_secs(20),
        Duration::ZERO,
        || Some(arp_macs(&c, vip)).filter(|m| !m.is_empty()),
    )
    .expect("the new holder answers");
    assert_eq!(macs, vec![n1_mac.clone()], "only the new holder answers");

    // Phase 3: a fresh old-format agent for node2 wants the address: it judges the attached
    // Lease held (one-day leaseDurationSeconds) and never takes it.
    let old2 = old_format_agent(c.client.clone(), &n2, &name, &cands);
    let mut held2 = old2.held();
    let ever = tokio::spawn({
        let name = name.clone();
        async move {
            loop {
                if held2.borrow_and_update().contains(&name) {
                    return true;
                }
                if held2.changed().await.is_err() {
                    return false;
                }
            }
        }
    });
    let until = Instant::now() + 4 * lease_duration;
    while Instant::now() < until {
        let s = look(&leases, &name).await.expect("the Lease exists");
        assert_eq!(
            s.holder, n1,
            "the old-format agent took an attached Lease: {s:?}"
        );
        assert_eq!(s.transitions, taken.transitions, "{s:?}");
        assert_eq!(
            arp_macs(&c, vip),
            vec![n1_mac.clone()],
            "only the attached holder answers"
        );
    }
    assert!(
        !ever.is_finished(),
        "the old-format agent counted the attached Lease as its own"
    );
    ever.abort();
    let report = old2.shutdown().await;
    assert!(report.released.is_empty(), "{report:?}");

    // Phase 4: the new agent stops gracefully beside an old-format agent that wants the
    // address. Its presence Lease release alone would not free the address for that agent (it
    // judges the attached Lease by its day-long duration), so the address Lease itself is
    // released and the old-format agent takes it at once.
    let old3 = old_format_agent(c.client.clone(), &n2, &name, &cands);
    let mut held3 = old3.held();
    let stopped = Instant::now();
    c.stop_agent(0, "TERM").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        held3.wait_for(|h| h.contains(&name)),
    )
    .await
    .expect("the old-format agent takes the address released at the graceful stop")
    .unwrap();
    let took = stopped.elapsed();
    let s = look(&leases, &name).await.expect("the Lease exists");
    assert_eq!(s.holder, n2, "{s:?}");
    assert!(
        took < lease_duration * 3,
        "taken {took:?} after the stop: not released by the stopping agent?"
    );
    old3.shutdown().await;
}
