//! Foreign answerers (issue 11 §5): another station (MAC) answering ARP/NDP for an address whose
//! lease this node holds. The usual cause is kube-proxy in IPVS mode without `strictARP`: it binds
//! every Service address to the dummy interface `kube-ipvs0`, and with `arp_ignore=0` every
//! node's kernel answers ARP for all of them, so clients reach whichever node answered last
//! (metallb#153, antrea#3785). A static address left on some host does the same.
//!
//! How they are seen: the announcer reports every frame from another MAC that claims one of our
//! addresses as a conflict (at most once per second per address and MAC, `net::reader`). Each
//! announcement of its gratuitous bursts goes with a probe, and so do a few follow-ups after a
//! takeover (`net::probes`: kube-proxy may bind the address later): for an IPv4 address an ARP
//! probe (sender 0.0.0.0, RFC 5227), which a kernel that has the address on any interface
//! answers when `arp_ignore=0` and not with kube-proxy's `strictARP` settings (`arp_ignore=1`);
//! for an IPv6 address an NS from the address itself (`net::ndp::probe`), which a kernel that has
//! the address on the receiving interface answers with a Solicited NA (Linux answers NS only for
//! addresses on that interface, so IPVS's `kube-ipvs0` does not show up for IPv6; a static
//! address left on a host's NIC does). The metric's `family` label says which.
//!
//! What this module decides (pure): whether a conflict that did not make this node yield deserves
//! a Warning Event on the group's Services and a count in `ferrolb_agent_foreign_answerers_total`:
//! once per address and MAC per [`FOREIGN_REPORT_EVERY`], never per frame, with bounded memory.
//! Which conflicts make a node yield stays `holdings`' rule: on a group whose lease is valid,
//! none (the lease decides; the node keeps announcing and keeps its Lease); a sticky group
//! (announced without a valid lease during an API outage) yields to another station's
//! gratuitous announcement, but never to an answer to our own probe, ARP or NDP
//! (`Holdings::on_probe_answer`, classified by the codecs: `net::Verdict::probe_answer`): a kernel
//! with the address configured announces no takeover.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;

use super::report::{self, EventKind};

/// One Event and one count per (address, MAC) at most this often.
pub const FOREIGN_REPORT_EVERY: Duration = Duration::from_secs(600);

/// A held address is defended against another station's announcement (a gratuitous burst of
/// our own) at most this often per address and MAC. RFC 5227 §2.4 says 10 s for a host's own
/// address; one second here, because the defence is what makes a stale holder yield and puts the
/// clients back on us, and a burst per second per address is bounded traffic even against a
/// station that never stops.
pub const DEFEND_EVERY: Duration = Duration::from_secs(1);

/// Event reason for another station answering for a held address.
pub const REASON_FOREIGN_ANSWERER: &str = "ForeignAnswerer";
/// Event reason for another station announcing a held address, which this node defended.
pub const REASON_ADDRESS_DEFENDED: &str = "AddressDefended";
/// Its action.
pub const ACTION_DEFEND: &str = "DefendAddress";
/// Event action.
pub const ACTION_DETECT: &str = "DetectForeignAnswerer";

/// (address, MAC) pairs remembered at most; beyond it the oldest is forgotten (a flood of made-up
/// MACs must not grow memory; the Event rate limit of the agent bounds what it writes).
const MAX_REMEMBERED: usize = 4096;

/// At most once per interval per (address, MAC), with bounded memory: the agent core keeps one
/// for its foreign-answerer reports ([`FOREIGN_REPORT_EVERY`], the default) and one for its
/// defences ([`DEFEND_EVERY`]).
#[derive(Debug)]
pub struct PairLimit {
    every: Duration,
    last: HashMap<(IpAddr, String), Instant>,
}

impl Default for PairLimit {
    fn default() -> Self {
        Self::new(FOREIGN_REPORT_EVERY)
    }
}

impl PairLimit {
    pub fn new(every: Duration) -> Self {
        PairLimit {
            every,
            last: HashMap::new(),
        }
    }

    /// Another station (`mac`) showed up for `ip`, whose lease this node holds: true when this
    /// is to be acted on now (reported, defended; the pair is marked), false when the same pair
    /// was acted on less than the interval ago.
    pub fn due(&mut self, ip: IpAddr, mac: &str, now: Instant) -> bool {
        let key = (ip, mac.to_ascii_lowercase());
        if let Some(t) = self.last.get(&key) {
            if now.saturating_duration_since(*t) < self.every {
                return false;
            }
        }
        if self.last.len() >= MAX_REMEMBERED && !self.last.contains_key(&key) {
            let every = self.every;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < every);
            if self.last.len() >= MAX_REMEMBERED {
                if let Some(oldest) = self
                    .last
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
                {
                    self.last.remove(&oldest);
                }
            }
        }
        self.last.insert(key, now);
        true
    }

    /// Pairs remembered (for tests and bounds).
    pub fn remembered(&self) -> usize {
        self.last.len()
    }
}

/// `family` label of `ferrolb_agent_foreign_answerers_total` (two values: bounded).
pub fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// What the Event says: the address, the other station's MAC and where it was seen, and the fix.
pub fn note(ip: IpAddr, iface: &str, mac: &str, node: &str) -> String {
    let proto = if ip.is_ipv4() { "ARP" } else { "NDP" };
    format!(
        "another station (MAC {mac}, seen on {node}'s {iface}) answers {proto} for {ip}, which {node} \
         announces: clients may reach it instead. If kube-proxy runs in IPVS mode, set strictARP: true \
         in its configuration (`ferrolb doctor` checks it); otherwise look for a host with {ip} configured"
    )
}

/// What the Event says when another station announced `ip` (a gratuitous frame, not an answer
/// to our probe) and this node defended it.
pub fn defended_note(ip: IpAddr, iface: &str, mac: &str, node: &str) -> String {
    let proto = if ip.is_ipv4() {
        "gratuitous ARP"
    } else {
        "unsolicited NA"
    };
    format!(
        "another station (MAC {mac}, seen on {node}'s {iface}) announced {ip} ({proto}), which {node} \
         holds: {node} defended it with a burst of its own. A node that held {ip} before and was cut \
         off (link and API server) does this once when it comes back, then yields; if it repeats, \
         look for a host with {ip} configured"
    )
}

/// The Warning Event on `svc` for another station on `ip`: a foreign answerer, or (`announced`)
/// an announcement this node defended against.
pub fn foreign_event(
    svc: &impl report::Regarding,
    node: &str,
    ip: IpAddr,
    iface: &str,
    mac: &str,
    announced: bool,
    now: jiff::Timestamp,
) -> Option<Event> {
    let (reason, action, note) = if announced {
        (
            REASON_ADDRESS_DEFENDED,
            ACTION_DEFEND,
            defended_note(ip, iface, mac, node),
        )
    } else {
        (
            REASON_FOREIGN_ANSWERER,
            ACTION_DETECT,
            note(ip, iface, mac, node),
        )
    };
    report::service_event(
        svc,
        node,
        EventKind {
            type_: "Warning",
            reason,
            action,
        },
        note,
        now,
    )
}

/// The Services of a group to put the Event on, deduplicated (a group usually has one).
pub fn services_of(
    group: Option<&super::eligibility::Group>,
) -> BTreeSet<super::eligibility::ServiceRef> {
    group
        .map(|g| g.services.iter().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;
    use k8s_openapi::api::core::v1::Service;

    const MAC: &str = "02:00:00:00:00:0c";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_report_per_address_and_mac_per_interval_never_per_frame() {
        let mut f = PairLimit::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let vip = ip("198.51.100.10");
        assert!(f.due(vip, MAC, t0));
        // The same station again (every probe, every second): nothing new.
        for s in 1..600 {
            assert!(!f.due(vip, MAC, t0 + Duration::from_secs(s)), "{s}");
        }
        // Same MAC in upper case is the same station.
        assert!(!f.due(vip, "02:00:00:00:00:0C", t0 + Duration::from_secs(10)));
        // Another MAC, or another address: reported on their own.
        assert!(f.due(vip, "02:00:00:00:00:0d", t0 + Duration::from_secs(1)));
        assert!(f.due(ip("198.51.100.11"), MAC, t0 + Duration::from_secs(1)));
        // Ten minutes later, still there: reported again.
        assert!(f.due(vip, MAC, t0 + Duration::from_secs(600)));
        assert!(!f.due(vip, MAC, t0 + Duration::from_secs(601)));
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_made_up_macs() {
        let mut f = PairLimit::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let vip = ip("198.51.100.10");
        for i in 0..(MAX_REMEMBERED as u32 + 500) {
            let mac = format!(
                "02:00:{:02x}:{:02x}:{:02x}:00",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            );
            assert!(f.due(vip, &mac, t0 + Duration::from_millis(i as u64)));
        }
        assert!(f.remembered() <= MAX_REMEMBERED, "{}", f.remembered());
        // The most recent ones are still remembered.
        let last = MAX_REMEMBERED as u32 + 499;
        let mac = format!(
            "02:00:{:02x}:{:02x}:{:02x}:00",
            last >> 16,
            (last >> 8) & 0xff,
            last & 0xff
        );
        assert!(!f.due(vip, &mac, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_event_is_a_warning_naming_the_mac_the_interface_and_the_fix() {
        let svc = ServiceBuilder::named("demo", "web").uid("u-1").build();
        let now: jiff::Timestamp = "2026-12-05T08:00:00.5Z".parse().unwrap();
        let ev = foreign_event(&svc, "n1", ip("198.51.100.10"), "eth0", MAC, false, now).unwrap();
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["reason"], "ForeignAnswerer");
        assert_eq!(v["action"], "DetectForeignAnswerer");
        assert_eq!(v["reportingController"], "ferrolb.io/agent");
        assert_eq!(v["reportingInstance"], "ferrolb-agent-n1");
        assert_eq!(v["regarding"]["kind"], "Service");
        assert_eq!(v["regarding"]["name"], "web");
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert_eq!(v["eventTime"], "2026-12-05T08:00:00.500000Z");
        let note = v["note"].as_str().unwrap();
        for want in [
            MAC,
            "eth0",
            "198.51.100.10",
            "ARP",
            "strictARP: true",
            "ferrolb doctor",
        ] {
            assert!(note.contains(want), "{want} missing from {note}");
        }
        // events.k8s.io/v1 limits note to 1 KiB.
        assert!(note.len() < 1024, "{}", note.len());
        assert!(foreign_event(
            &Service::default(),
            "n1",
            ip("2001:db8::1"),
            "eth0",
            MAC,
            false,
            now
        )
        .is_none());
        assert_eq!(family(ip("2001:db8::1")), "ipv6");
        // An announcement we defended: another reason, a note that does not blame kube-proxy.
        let ev = foreign_event(&svc, "n1", ip("2001:db8::1"), "eth0", MAC, true, now).unwrap();
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["reason"], "AddressDefended");
        assert_eq!(v["action"], "DefendAddress");
        let note = v["note"].as_str().unwrap();
        for want in [
            MAC,
            "eth0",
            "2001:db8::1",
            "unsolicited NA",
            "defended",
            "cut off",
        ] {
            assert!(note.contains(want), "{want} missing from {note}");
        }
        assert!(!note.contains("strictARP"), "{note}");
        assert!(note.len() < 1024, "{}", note.len());
    }
}
