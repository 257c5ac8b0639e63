//! The agent's behaviour without root or a runtime: whole objects in (narrowed by the agent's
//! own cache types), effects out.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::agent::cache::Interner;
use crate::agent::eligibility::group_key;
use crate::agent::holdings::Hold;
use crate::api::L2AnnouncementPolicySpec;
use crate::fixtures::ServiceBuilder;
use crate::lease::engine::{Takeover, TakeoverKind};

const ME: &str = "n1";

/// The cluster as the caches hold it.
#[derive(Clone, Default)]
struct World {
    policies: Vec<L2AnnouncementPolicy>,
    services: Vec<Service>,
    nodes: Vec<Node>,
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn service(name: &str, ips: &[&str]) -> Service {
    ServiceBuilder::named("default", name)
        .uid(&format!("uid-{name}"))
        .type_("LoadBalancer")
        .ingress(ips)
        .build()
}

fn policy(name: &str) -> L2AnnouncementPolicy {
    L2AnnouncementPolicy::new(
        name,
        L2AnnouncementPolicySpec {
            load_balancer_ips: true,
            ..Default::default()
        },
    )
}

/// Two nodes, one policy for every LoadBalancer Service, one Service `web` on 198.51.100.10.
fn cluster() -> World {
    World {
        policies: vec![policy("all")],
        services: vec![service("web", &["198.51.100.10"])],
        nodes: vec![node(ME), node("n2")],
    }
}

impl World {
    /// Feeds the world to the core as `run` does after a watch event.
    fn feed(&self, core: &mut Core, now: Instant) -> Vec<Effect> {
        let mut i = Interner::default();
        let services: Vec<CachedService> = self
            .services
            .iter()
            .filter_map(|s| CachedService::new(s, &mut i))
            .collect();
        let nodes: Vec<CachedNode> = self
            .nodes
            .iter()
            .filter_map(|n| CachedNode::new(n, &mut i))
            .collect();
        let p: Vec<&L2AnnouncementPolicy> = self.policies.iter().collect();
        let s: Vec<&CachedService> = services.iter().collect();
        let n: Vec<&CachedNode> = nodes.iter().collect();
        let snapshot = Snapshot {
            policies: &p,
            services: &s,
            nodes: &n,
            slices: &[],
            node_prefixes: Default::default(),
            pools: Default::default(),
            dark_interfaces: Vec::new(),
            no_carrier: Default::default(),
            own_report_seen: true,
        };
        core.handle(Input::Caches(snapshot), now)
    }
}

/// The agent's default lease duration: an API outage or sticky period shorter than this
/// re-announces nothing.
const LEASE: Duration = Duration::from_secs(1);

fn core() -> Core {
    Core::new(
        ME,
        true,
        true,
        Options::default(),
        vec!["eth0".into()],
        LEASE,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The group key of the addresses (the tag the core gives the engine with their lease).
fn key_of(ips: &[&str]) -> String {
    group_key(&crate::agent::eligibility::address_set(
        ips.iter().map(|s| ip(s)),
    ))
}

/// What the engine reports for the lease of group `key`: its name and the core's tag.
fn tagged(key: &str) -> (String, Option<Arc<str>>) {
    (lease::lease_name(key), Some(Arc::from(key)))
}

fn reconfirmed(key: &str) -> LeaseEvent {
    let (name, tag) = tagged(key);
    LeaseEvent::Acquired { name, tag }
}

fn unreachable(key: &str) -> LeaseEvent {
    let (name, tag) = tagged(key);
    LeaseEvent::Unreachable { name, tag }
}

fn released(key: &str) -> LeaseEvent {
    let (name, tag) = tagged(key);
    LeaseEvent::Released { name, tag }
}

fn lost(key: &str, holder: &str) -> LeaseEvent {
    let (name, tag) = tagged(key);
    LeaseEvent::Lost {
        name,
        tag,
        holder: Some(holder.into()),
    }
}

fn takeover() -> Takeover {
    Takeover {
        kind: TakeoverKind::Expired,
        from: Some("n2".into()),
        free_since: tokio::time::Instant::now(),
        transitions: 1,
    }
}

/// The engine's `Acquired` for group `key`'s lease after a takeover.
fn acquired(key: &str) -> LeaseInput {
    let t = takeover();
    LeaseInput {
        event: reconfirmed(key),
        acquired: Some(Acquired::new(jiff::Timestamp::UNIX_EPOCH, Some(&t), 800)),
    }
}

/// Another station seen on eth0 claiming `addr` from `mac` (`probe_answer`: answering ours).
fn seen(addr: &str, mac: &str, probe_answer: bool) -> Input<'static> {
    Input::Conflict(Sighting {
        ip: ip(addr),
        iface: "eth0".into(),
        mac: mac.into(),
        probe_answer,
    })
}

fn ev(event: LeaseEvent) -> Input<'static> {
    Input::Leases(vec![LeaseInput::plain(event)])
}

fn set(entries: &[(&str, &[&str])]) -> Announced {
    entries
        .iter()
        .map(|(a, ifs)| {
            let ifs: BTreeSet<String> = ifs.iter().map(|s| s.to_string()).collect();
            (ip(a), Arc::new(ifs))
        })
        .collect()
}

/// The groups (by the tags the engine echoes) of the last `Effect::Leases`, if any; every
/// lease is named after its group.
fn wished(fx: &[Effect]) -> Option<BTreeSet<String>> {
    fx.iter().rev().find_map(|e| match e {
        Effect::Leases(w) => Some(
            w.iter()
                .map(|(name, want)| {
                    let key = want
                        .tag
                        .as_deref()
                        .expect("every lease is tagged with its group");
                    assert_eq!(*name, lease::lease_name(key));
                    key.to_string()
                })
                .collect(),
        ),
        _ => None,
    })
}

fn announce(fx: &[Effect]) -> Option<&Announced> {
    fx.iter().rev().find_map(|e| match e {
        Effect::Announce(a) => Some(&**a),
        _ => None,
    })
}

fn announce_events(fx: &[Effect]) -> Vec<&ServiceRef> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::AnnounceEvent { service, .. } => Some(service),
            _ => None,
        })
        .collect()
}

fn has_metric(fx: &[Effect], m: Metric) -> bool {
    fx.contains(&Effect::Metric(m))
}

/// The cluster fed and the group's lease acquired after a takeover.
fn holding() -> (Core, String, Instant) {
    let now = Instant::now();
    let mut c = core();
    cluster().feed(&mut c, now);
    let key = key_of(&["198.51.100.10"]);
    c.handle(Input::Leases(vec![acquired(&key)]), now);
    assert_eq!(c.announced(), &set(&[("198.51.100.10", &["eth0"])]));
    (c, key, now)
}

#[test]
fn acquisition_announces_only_after_the_lease_is_ours_with_one_event() {
    let now = Instant::now();
    let mut c = core();
    let fx = cluster().feed(&mut c, now);
    let key = key_of(&["198.51.100.10"]);
    assert_eq!(wished(&fx), Some(BTreeSet::from([key.clone()])));
    assert!(
        announce(&fx).is_none(),
        "nothing is announced before the lease"
    );
    assert!(c.announced().is_empty());

    let fx = c.handle(Input::Leases(vec![acquired(&key)]), now);
    assert_eq!(
        announce(&fx),
        Some(&set(&[("198.51.100.10", &["eth0"])])),
        "{fx:?}"
    );
    assert_eq!(
        announce_events(&fx),
        vec![&ServiceRef::new("default", "web")]
    );
    assert!(fx.contains(&Effect::L2LeaseActivity));
    let want = fx.iter().find_map(|e| match e {
        Effect::L2Want(w) => Some(w),
        _ => None,
    });
    let want = want.expect("an L2Announcement want");
    assert_eq!(want.lease(), lease::lease_name(&key));
    assert_eq!(want.addresses(), vec!["198.51.100.10".to_string()]);
    assert!(want.acquired.as_ref().is_some_and(|a| a.failover.is_some()));
    assert!(has_metric(&fx, Metric::LeasesHeld(1)));
    assert!(has_metric(&fx, Metric::Announcements(1)));

    // The same caches again: nothing for the engine or the announcer.
    let fx = cluster().feed(&mut c, now);
    assert_eq!(wished(&fx), None);
    assert_eq!(announce(&fx), None);
}

#[test]
fn a_restart_reconfirming_our_own_record_announces_without_an_event() {
    let now = Instant::now();
    let mut c = core();
    cluster().feed(&mut c, now);
    let key = key_of(&["198.51.100.10"]);
    let fx = c.handle(ev(reconfirmed(&key)), now);
    assert_eq!(announce(&fx), Some(&set(&[("198.51.100.10", &["eth0"])])));
    assert!(announce_events(&fx).is_empty(), "{fx:?}");
}

#[test]
fn loss_and_release_stop_at_once() {
    let web = ServiceRef::new("default", "web");
    // Lost to n2: n2 rewrites the L2Announcement, we delete nothing (L2Drop); released (or
    // lost with no holder named): deleted after the grace if it still names us (L2Cancel).
    type Gone = fn(&str) -> LeaseEvent;
    let gone: [(Gone, Effect); 2] = [
        (|k| lost(k, "n2"), Effect::L2Drop(web.clone())),
        (released, Effect::L2Cancel(web.clone())),
    ];
    for (gone, l2) in gone {
        let (mut c, key, now) = holding();
        let fx = c.handle(ev(gone(&key)), now);
        assert_eq!(announce(&fx), Some(&Announced::new()), "{fx:?}");
        assert!(fx.contains(&l2), "{fx:?}");
        let other = match l2 {
            Effect::L2Drop(s) => Effect::L2Cancel(s),
            Effect::L2Cancel(s) => Effect::L2Drop(s),
            e => e,
        };
        assert!(!fx.contains(&other), "{fx:?}");
        assert!(c.announced().is_empty());
        assert!(has_metric(&fx, Metric::LeasesHeld(0)));
    }
    // A later loss of another kind is judged afresh (the mark lasts one batch).
    let (mut c, key, now) = holding();
    c.handle(ev(lost(&key, "n2")), now);
    c.handle(ev(reconfirmed(&key)), now);
    let fx = c.handle(ev(released(&key)), now);
    assert!(fx.contains(&Effect::L2Cancel(web)), "{fx:?}");
}

#[test]
fn a_lease_event_for_a_lease_not_desired_changes_nothing() {
    let now = Instant::now();
    let mut c = core();
    cluster().feed(&mut c, now);
    let other = key_of(&["198.51.100.99"]);
    let fx = c.handle(Input::Leases(vec![acquired(&other)]), now);
    assert_eq!(announce(&fx), None);
    assert!(c.announced().is_empty());
}

#[test]
fn sticky_keeps_answering_through_an_api_outage_until_another_stations_gratuitous_arp() {
    let (mut c, key, now) = holding();
    let fx = c.handle(ev(unreachable(&key)), now);
    assert_eq!(announce(&fx), None, "still announcing");
    assert_eq!(
        c.holdings().hold(&c.desired().groups[0].key),
        Some(Hold::Sticky)
    );
    assert!(has_metric(&fx, Metric::LeasesSticky(1)));
    // The API server is back: a sticky group gets no burst yet (its lease may have moved).
    let fx = c.handle(Input::ApiReconnected { lasted: 2 * LEASE }, now);
    assert_eq!(fx, vec![Effect::Reannounce(Announced::new())]);
    // Another station answers our probe: no takeover, nothing yields, and nothing is reported
    // (our lease may have moved: it is most likely the new holder, not a foreign answerer).
    let probe = seen("198.51.100.10", "02:00:00:00:00:02", true);
    let fx = c.handle(probe, now);
    assert_eq!(announce(&fx), None);
    assert_eq!(c.announced().len(), 1);
    assert!(
        has_metric(&fx, Metric::Conflict("sticky_answered")),
        "{fx:?}"
    );
    assert!(
        !fx.iter().any(|e| matches!(
            e,
            Effect::ForeignEvent { .. } | Effect::Metric(Metric::ForeignAnswerer(_))
        )),
        "{fx:?}"
    );
    // Another station's gratuitous ARP: the sticky group yields at once.
    let garp = seen("198.51.100.10", "02:00:00:00:00:02", false);
    let fx = c.handle(garp, now);
    assert_eq!(announce(&fx), Some(&Announced::new()), "{fx:?}");
    assert!(has_metric(&fx, Metric::Conflict("yielded")));
    // The announcer took it over: it rewrites the L2Announcement, we delete nothing.
    assert!(fx.contains(&Effect::L2Drop(ServiceRef::new("default", "web"))));
    // Re-acquired (a takeover back): announced again with an Event.
    let fx = c.handle(Input::Leases(vec![acquired(&key)]), now);
    assert_eq!(announce(&fx), Some(&set(&[("198.51.100.10", &["eth0"])])));
    assert_eq!(announce_events(&fx).len(), 1);
}

#[test]
fn a_sticky_lease_renewed_after_the_outage_gets_a_burst_and_no_event() {
    let (mut c, key, now) = holding();
    c.handle(ev(unreachable(&key)), now);
    let fx = c.handle(ev(reconfirmed(&key)), now + LEASE);
    assert!(
        fx.contains(&Effect::Reannounce(set(&[("198.51.100.10", &["eth0"])]))),
        "{fx:?}"
    );
    assert_eq!(announce(&fx), None, "the set did not change");
    assert!(announce_events(&fx).is_empty());
    // Once held again, a reconnect bursts it at once.
    let fx = c.handle(Input::ApiReconnected { lasted: LEASE }, now + LEASE);
    assert_eq!(
        fx,
        vec![Effect::Reannounce(set(&[("198.51.100.10", &["eth0"])]))]
    );
}

#[test]
fn a_short_outage_or_sticky_period_re_announces_nothing() {
    // A renewal that missed the renew deadline on a busy API server and got through within the
    // lease duration: nobody can have taken over, no cache was flushed.
    let (mut c, key, now) = holding();
    c.handle(ev(unreachable(&key)), now);
    let back = now + LEASE - Duration::from_millis(1);
    let fx = c.handle(ev(reconfirmed(&key)), back);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Reannounce(_))),
        "{fx:?}"
    );
    assert_eq!(announce(&fx), None, "still announced");
    assert_eq!(c.announced().len(), 1);
    let short = LEASE - Duration::from_millis(1);
    assert!(c
        .handle(Input::ApiReconnected { lasted: short }, back)
        .is_empty());
    // The next sticky period is judged afresh: a long one is re-announced.
    let later = back + 10 * LEASE;
    c.handle(ev(unreachable(&key)), later);
    let fx = c.handle(ev(reconfirmed(&key)), later + 2 * LEASE);
    assert!(
        fx.contains(&Effect::Reannounce(set(&[("198.51.100.10", &["eth0"])]))),
        "{fx:?}"
    );
}

#[test]
fn no_sticky_stops_when_the_lease_could_have_expired() {
    let now = Instant::now();
    let mut c = Core::new(
        ME,
        false,
        true,
        Options::default(),
        vec!["eth0".into()],
        LEASE,
    );
    cluster().feed(&mut c, now);
    let key = key_of(&["198.51.100.10"]);
    c.handle(Input::Leases(vec![acquired(&key)]), now);
    let fx = c.handle(ev(unreachable(&key)), now);
    assert_eq!(announce(&fx), Some(&Announced::new()));
}

/// Another station answering our probe for a held address (kube-proxy IPVS without strictARP,
/// a host with the address): we keep answering, and report it once per address and MAC.
#[test]
fn a_conflict_on_a_valid_lease_keeps_answering_and_reports_the_foreign_answerer_once() {
    let (mut c, _name, now) = holding();
    let conflict = || seen("198.51.100.10", "02:00:00:00:00:02", true);
    let fx = c.handle(conflict(), now);
    assert_eq!(announce(&fx), None, "the lease decides: we keep answering");
    assert!(has_metric(&fx, Metric::Conflict("ignored")));
    assert!(has_metric(&fx, Metric::ForeignAnswerer("ipv4")));
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::ForeignEvent { .. }))
            .count(),
        1
    );
    let fx = c.handle(conflict(), now + Duration::from_secs(5));
    assert!(has_metric(&fx, Metric::Conflict("ignored")));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::ForeignEvent { .. })),
        "reported once per address and MAC per interval"
    );
    assert_eq!(c.announced().len(), 1);
    // An address that is not ours.
    let fx = c.handle(seen("198.51.100.77", "02:00:00:00:00:02", false), now);
    assert!(has_metric(&fx, Metric::Conflict("not_ours")));
}

/// A stale holder comes back announcing (sticky through an outage that took its link too, it
/// never heard our takeover burst): we defend with a burst of our own, which it yields to; once
/// per address and MAC per second, and never for an answer to our own probe.
#[test]
fn another_stations_announcement_of_a_held_address_is_defended_once_per_second() {
    let (mut c, _name, now) = holding();
    let conflict = |mac: &str, probe_answer: bool| seen("198.51.100.10", mac, probe_answer);
    let ours = set(&[("198.51.100.10", &["eth0"])]);
    let defences = |fx: &[Effect]| {
        fx.iter()
            .filter(|e| matches!(e, Effect::Reannounce(_)))
            .count()
    };
    // An answer to our probe announces no takeover: nothing to defend against.
    let fx = c.handle(conflict("02:00:00:00:00:02", true), now);
    assert_eq!(defences(&fx), 0, "{fx:?}");
    assert!(!has_metric(&fx, Metric::Defence));
    // An announcement: one burst for that address on its interfaces, and an Event saying so
    // (not a foreign answerer: a stale holder announces, kube-proxy's kernel answers).
    let fx = c.handle(conflict("02:00:00:00:00:09", false), now);
    assert!(fx.contains(&Effect::Reannounce(ours.clone())), "{fx:?}");
    assert!(has_metric(&fx, Metric::Defence));
    assert!(!has_metric(&fx, Metric::ForeignAnswerer("ipv4")), "{fx:?}");
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::ForeignEvent {
                announced: true,
                ..
            }
        )),
        "{fx:?}"
    );
    assert_eq!(announce(&fx), None, "we keep answering");
    // Again within the second: not again; another MAC: defended; after the second: again.
    let soon = now + Duration::from_millis(500);
    assert_eq!(
        defences(&c.handle(conflict("02:00:00:00:00:09", false), soon)),
        0
    );
    let fx = c.handle(conflict("02:00:00:00:00:03", false), soon);
    assert!(fx.contains(&Effect::Reannounce(ours.clone())), "{fx:?}");
    let later = now + Duration::from_millis(1_100);
    let fx = c.handle(conflict("02:00:00:00:00:09", false), later);
    assert!(fx.contains(&Effect::Reannounce(ours)), "{fx:?}");
    // A sticky group yields instead of defending.
    let (mut c, key, now) = holding();
    c.handle(ev(unreachable(&key)), now);
    let fx = c.handle(conflict("02:00:00:00:00:02", false), now);
    assert_eq!(defences(&fx), 0, "{fx:?}");
    assert!(has_metric(&fx, Metric::Conflict("yielded")));
}

#[test]
fn link_down_stops_standing_and_link_up_stands_again() {
    let (mut c, key, now) = holding();
    let world = cluster();
    // eth0 goes down: no eligible interface left.
    let fx = c.handle(
        Input::Links {
            interfaces: vec![],
            prefixes_changed: false,
        },
        now,
    );
    assert_eq!(fx, vec![Effect::Recompute]);
    let fx = world.feed(&mut c, now);
    assert_eq!(wished(&fx), Some(BTreeSet::new()), "no longer contending");
    assert_eq!(announce(&fx), Some(&Announced::new()), "stopped answering");
    // The engine releases the lease it no longer wants: nothing changes any more.
    let fx = c.handle(ev(released(&key)), now);
    assert_eq!(announce(&fx), None);
    // Same interfaces again: nothing to recompute.
    let fx = c.handle(
        Input::Links {
            interfaces: vec![],
            prefixes_changed: false,
        },
        now,
    );
    assert!(fx.is_empty());
    // eth0 is back (and eth1 with it): contending again, announced once acquired.
    let fx = c.handle(
        Input::Links {
            interfaces: vec!["eth0".into(), "eth1".into()],
            prefixes_changed: false,
        },
        now,
    );
    assert_eq!(fx, vec![Effect::Recompute]);
    let fx = world.feed(&mut c, now);
    assert_eq!(wished(&fx), Some(BTreeSet::from([key.clone()])));
    assert_eq!(announce(&fx), None);
    let fx = c.handle(Input::Leases(vec![acquired(&key)]), now);
    assert_eq!(
        announce(&fx),
        Some(&set(&[("198.51.100.10", &["eth0", "eth1"])]))
    );
}

#[test]
fn an_interface_change_of_a_held_group_is_followed_without_a_new_lease() {
    let (mut c, _name, now) = holding();
    c.handle(
        Input::Links {
            interfaces: vec!["eth0".into(), "eth1".into()],
            prefixes_changed: false,
        },
        now,
    );
    let fx = cluster().feed(&mut c, now);
    assert_eq!(
        announce(&fx),
        Some(&set(&[("198.51.100.10", &["eth0", "eth1"])]))
    );
    assert_eq!(
        announce_events(&fx).len(),
        1,
        "an Event for the new interface"
    );
}

#[test]
fn a_service_leaving_stops_at_once() {
    let (mut c, _name, now) = holding();
    let mut world = cluster();
    world.services.clear();
    let fx = world.feed(&mut c, now);
    assert_eq!(wished(&fx), Some(BTreeSet::new()));
    assert_eq!(announce(&fx), Some(&Announced::new()));
    assert!(fx.contains(&Effect::L2Cancel(ServiceRef::new("default", "web"))));
}

#[test]
fn without_its_node_object_the_agent_announces_nothing() {
    let now = Instant::now();
    let mut c = core();
    let mut world = cluster();
    world
        .nodes
        .retain(|n| n.metadata.name.as_deref() != Some(ME));
    let fx = world.feed(&mut c, now);
    assert_eq!(wished(&fx), Some(BTreeSet::new()));
}

#[test]
fn events_are_rate_limited_per_second() {
    let now = Instant::now();
    let mut c = core();
    let mut world = cluster();
    let n = MAX_EVENTS_PER_SECOND as usize + 5;
    world.services = (0..n)
        .map(|i| service(&format!("s{i}"), &[&format!("198.51.100.{}", i + 1)]))
        .collect();
    let fx = world.feed(&mut c, now);
    let names: Vec<LeaseInput> = wished(&fx).unwrap().iter().map(|l| acquired(l)).collect();
    assert_eq!(names.len(), n);
    let fx = c.handle(Input::Leases(names), now);
    assert_eq!(announce_events(&fx).len(), MAX_EVENTS_PER_SECOND as usize);
    assert_eq!(
        fx.iter()
            .filter(|e| **e == Effect::Metric(Metric::EventRateLimited))
            .count(),
        5
    );
    assert_eq!(c.announced().len(), n, "announcing is never rate limited");
}

#[test]
fn shutdown_stops_answering() {
    let (mut c, _name, now) = holding();
    let fx = c.handle(Input::Shutdown, now);
    assert_eq!(fx, vec![Effect::Announce(Arc::default())]);
    assert!(c.announced().is_empty());
}

// ---- every order of the same events ends in the same state (Cilium's l2announcer test) ----

/// One change to the cluster or the node.
#[derive(Clone, Copy, Debug)]
enum Change {
    Policy,
    OwnNode,
    Web,
    DualStack,
    Eth1Up,
    WebSharedAddress,
}

const CHANGES: [Change; 6] = [
    Change::Policy,
    Change::OwnNode,
    Change::Web,
    Change::DualStack,
    Change::Eth1Up,
    Change::WebSharedAddress,
];

/// Applies one change, then lets the core decide, and plays a lease engine that acquires every
/// lease wished and releases every one no longer wished (as ours does once its rank wait is
/// over, with no other node contending).
fn step(c: &mut Core, world: &mut World, ifaces: &mut Vec<String>, change: Change, now: Instant) {
    match change {
        Change::Policy => world.policies.push(policy("all")),
        Change::OwnNode => world.nodes.push(node(ME)),
        Change::Web => world.services.push(service("web", &["198.51.100.10"])),
        Change::DualStack => world
            .services
            .push(service("dual", &["198.51.100.20", "2001:db8::20"])),
        Change::Eth1Up => {
            ifaces.push("eth1".into());
            ifaces.sort();
        }
        Change::WebSharedAddress => world.services.push(service("web-udp", &["198.51.100.10"])),
    }
    let mut fx = c.handle(
        Input::Links {
            interfaces: ifaces.clone(),
            prefixes_changed: false,
        },
        now,
    );
    fx.extend(world.feed(c, now));
    engine(c, &fx, now);
}

/// The fake engine: acquisitions for new wishes, releases for dropped ones.
fn engine(c: &mut Core, fx: &[Effect], now: Instant) {
    let Some(wishes) = wished(fx) else {
        return;
    };
    let held: BTreeSet<String> = c
        .holdings()
        .desired_groups()
        .map(|(k, _)| k)
        .filter(|k| c.holdings().hold(k).is_some())
        .map(|k| k.to_string())
        .collect();
    let mut events: Vec<LeaseInput> = wishes.difference(&held).map(|key| acquired(key)).collect();
    events.extend(
        held.difference(&wishes)
            .map(|key| LeaseInput::plain(released(key))),
    );
    // Like the real engine, no event when nothing changed: a change the engine does not see
    // (other interfaces for a held group) must reach the announcer on its own.
    if !events.is_empty() {
        c.handle(Input::Leases(events), now);
    }
}

/// What must not depend on the order.
#[derive(Debug, PartialEq)]
struct End {
    announced: Announced,
    desired: Desired,
    held: Vec<(String, Option<Hold>)>,
}

fn run_order(order: &[Change]) -> End {
    let now = Instant::now();
    let mut c = core();
    let mut world = World {
        nodes: vec![node("n2")],
        ..Default::default()
    };
    let mut ifaces = vec!["eth0".to_string()];
    for ch in order {
        step(&mut c, &mut world, &mut ifaces, *ch, now);
    }
    End {
        announced: c.announced().clone(),
        desired: c.desired().clone(),
        held: c
            .holdings()
            .desired_groups()
            .map(|(k, _)| (k.to_string(), c.holdings().hold(k)))
            .collect(),
    }
}

/// Every permutation of `items` (Heap's algorithm).
fn permutations<T: Copy>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Copy>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        go(k - 1, a, out);
        for i in 0..k - 1 {
            if k.is_multiple_of(2) {
                a.swap(i, k - 1);
            } else {
                a.swap(0, k - 1);
            }
            go(k - 1, a, out);
        }
    }
    let mut a = items.to_vec();
    let mut out = Vec::new();
    go(a.len(), &mut a, &mut out);
    out
}

#[test]
fn every_order_of_the_same_events_ends_in_the_same_state() {
    let orders = permutations(&CHANGES);
    assert_eq!(orders.len(), 720);
    let first = run_order(&orders[0]);
    // Not a trivial end: both groups held, every address on both interfaces.
    assert_eq!(
        first.announced,
        set(&[
            ("198.51.100.10", &["eth0", "eth1"]),
            ("198.51.100.20", &["eth0", "eth1"]),
            ("2001:db8::20", &["eth0", "eth1"]),
        ])
    );
    assert_eq!(first.held.len(), 2);
    assert!(first.held.iter().all(|(_, h)| *h == Some(Hold::Held)));
    for order in &orders[1..] {
        assert_eq!(run_order(order), first, "order {order:?}");
    }
}
