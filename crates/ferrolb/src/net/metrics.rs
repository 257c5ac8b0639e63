//! Prometheus metrics of the announcer. Labels are `ip` and `iface`, and only ever take values
//! of addresses we hold and interfaces we announce on (never values from received frames), so
//! hostile traffic cannot grow the label set.
//!
//! The per-address counters are kept compactly (one map entry of six counters per held
//! address and interface) and turned into Prometheus series only when scraped, by our own
//! [`Collector`]: a `prometheus::IntCounterVec` child costs ≈ 0.5 KiB (its label pairs, strings
//! and descriptor hash), two or more of them per held address, ≈ 1 KiB per held address and
//! ≈ 3 MiB for an agent holding 3,300 of 10,000 addresses (issue 16). The exposition is the
//! same: a series appears with its first count and goes when its address is released.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::Registry;

/// What a per-address counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ARP requests received for an address we hold.
    ArpRequests,
    /// Neighbor Solicitations received for an address we hold.
    NdpRequests,
    /// ARP replies and solicited Neighbor Advertisements sent.
    Responses,
    /// Gratuitous ARP (both forms count as one each) and unsolicited NAs sent.
    Gratuitous,
    /// Announcements of an address we hold by another MAC.
    Conflicts,
    /// Probes for foreign answerers sent (with each announcement, and the follow-ups after a
    /// takeover, `net::probes`).
    Probes,
}

/// Every kind, in exposition order, with its metric name and help.
const KINDS: [(Kind, &str, &str); 6] = [
    (
        Kind::ArpRequests,
        "ferrolb_arp_requests_received_total",
        "ARP requests received for an announced address",
    ),
    (
        Kind::NdpRequests,
        "ferrolb_ndp_requests_received_total",
        "NDP neighbor solicitations received for an announced address",
    ),
    (
        Kind::Responses,
        "ferrolb_responses_sent_total",
        "ARP replies and neighbor advertisements sent in answer to a request",
    ),
    (
        Kind::Gratuitous,
        "ferrolb_gratuitous_sent_total",
        "Gratuitous ARP frames and unsolicited neighbor advertisements sent",
    ),
    (
        Kind::Conflicts,
        "ferrolb_announce_conflicts_total",
        "Announcements of an address we hold seen from another MAC",
    ),
    (
        Kind::Probes,
        "ferrolb_announce_probes_sent_total",
        "Probes for other stations answering for an announced address (ARP probes, neighbor solicitations from the address)",
    ),
];

// `Kind as usize` indexes the counters and `KINDS` names them: the two orders must agree.
const _: () = {
    let mut i = 0;
    while i < KINDS.len() {
        assert!(KINDS[i].0 as usize == i, "KINDS out of Kind's order");
        i += 1;
    }
};

/// The counters of one (address, interface).
#[derive(Default)]
struct Counts([AtomicU64; KINDS.len()]);

/// Address → its interfaces' counters (one interface, as a rule).
type Series = HashMap<IpAddr, Vec<(Box<str>, Counts)>>;

/// The announcer's counters.
#[derive(Clone)]
pub struct Metrics {
    series: Arc<RwLock<Series>>,
    /// Differences the self-check found and repaired (nothing had been reported, yet the
    /// readers, multicast groups or answered set did not match what is held).
    pub repairs: prometheus::IntCounter,
}

impl Metrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            series: Arc::default(),
            repairs: prometheus::IntCounter::new(
                "ferrolb_announce_repairs_total",
                "Differences between the held set and what is answered or joined, found and repaired by the self-check",
            )?,
        };
        registry.register(Box::new(m.repairs.clone()))?;
        registry.register(Box::new(PerAddress::new(m.series.clone())?))?;
        Ok(m)
    }

    /// Counts one `kind` for `ip` on `iface`.
    pub fn inc(&self, kind: Kind, ip: IpAddr, iface: &str) {
        let i = kind as usize;
        {
            let s = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = find(&s, ip, iface) {
                c.0[i].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        {
            let mut s = self.series.write().unwrap_or_else(PoisonError::into_inner);
            let v = s.entry(ip).or_default();
            let at = match v.iter().position(|(n, _)| &**n == iface) {
                Some(at) => at,
                None => {
                    // One interface per address as a rule: room for exactly one more (a first
                    // push would otherwise reserve four, 256 bytes per held address).
                    v.reserve_exact(1);
                    v.push((iface.into(), Counts::default()));
                    v.len() - 1
                }
            };
            v[at].1 .0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of `kind` for `ip` on `iface` (0 without a series).
    pub fn get(&self, kind: Kind, ip: IpAddr, iface: &str) -> u64 {
        let s = self.series.read().unwrap_or_else(PoisonError::into_inner);
        find(&s, ip, iface).map_or(0, |c| c.0[kind as usize].load(Ordering::Relaxed))
    }

    /// Drops the series of an address no longer held on `iface`.
    pub fn forget(&self, ip: IpAddr, iface: &str) {
        let mut s = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = s.get_mut(&ip) {
            v.retain(|(n, _)| &**n != iface);
            if v.is_empty() {
                s.remove(&ip);
            }
        }
    }
}

fn find<'a>(s: &'a Series, ip: IpAddr, iface: &str) -> Option<&'a Counts> {
    s.get(&ip)?
        .iter()
        .find(|(n, _)| &**n == iface)
        .map(|(_, c)| c)
}

/// The per-address counters as Prometheus sees them: built at each scrape.
struct PerAddress {
    series: Arc<RwLock<Series>>,
    descs: Vec<Desc>,
}

impl PerAddress {
    fn new(series: Arc<RwLock<Series>>) -> prometheus::Result<Self> {
        let descs = KINDS
            .iter()
            .map(|(_, name, help)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["ip".into(), "iface".into()],
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(PerAddress { series, descs })
    }
}

impl Collector for PerAddress {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut families: Vec<MetricFamily> = KINDS
            .iter()
            .map(|(_, name, help)| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(MetricType::COUNTER);
                f
            })
            .collect();
        for ((ip, iface), counts) in series
            .iter()
            .flat_map(|(ip, v)| v.iter().map(move |(n, c)| ((ip, n), c)))
        {
            for (i, f) in families.iter_mut().enumerate() {
                // A series exists from its first count on, as with a counter vector.
                let v = counts.0[i].load(Ordering::Relaxed);
                if v == 0 {
                    continue;
                }
                let label = |name: &str, value: String| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(name.to_string());
                    l.set_value(value);
                    l
                };
                let mut c = proto::Counter::default();
                c.set_value(v as f64);
                let mut m = proto::Metric::default();
                // Label pairs sorted by name, as the prometheus crate makes them.
                m.set_label(vec![
                    label("iface", iface.to_string()),
                    label("ip", ip.to_string()),
                ]);
                m.set_counter(c);
                f.mut_metric().push(m);
            }
        }
        // A family without series is not exposed (a counter vector without children is not).
        families.retain(|f| !f.get_metric().is_empty());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_are_exposed_per_address_and_forgotten_on_release() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        m.inc(Kind::Gratuitous, ip("198.51.100.1"), "eth0");
        m.inc(Kind::Gratuitous, ip("198.51.100.1"), "eth0");
        m.inc(Kind::Probes, ip("198.51.100.1"), "eth0");
        m.inc(Kind::Gratuitous, ip("2001:db8::1"), "eth1");
        assert_eq!(m.get(Kind::Gratuitous, ip("198.51.100.1"), "eth0"), 2);
        assert_eq!(m.get(Kind::Gratuitous, ip("198.51.100.1"), "eth1"), 0);
        assert_eq!(m.get(Kind::Responses, ip("198.51.100.1"), "eth0"), 0);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("ferrolb_gratuitous_sent_total{iface=\"eth0\",ip=\"198.51.100.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ferrolb_gratuitous_sent_total{iface=\"eth1\",ip=\"2001:db8::1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrolb_announce_probes_sent_total{iface=\"eth0\",ip=\"198.51.100.1\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferrolb_gratuitous_sent_total counter"),
            "{text}"
        );
        // No series without a count: nothing was received or answered.
        assert!(!text.contains("ferrolb_responses_sent_total"), "{text}");

        m.forget(ip("198.51.100.1"), "eth0");
        assert_eq!(m.get(Kind::Gratuitous, ip("198.51.100.1"), "eth0"), 0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(!text.contains("198.51.100.1"), "{text}");
        assert!(text.contains("2001:db8::1"), "{text}");
    }

    #[test]
    fn an_address_on_one_interface_keeps_room_for_one() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        m.inc(Kind::Gratuitous, ip("198.51.100.1"), "eth0");
        m.inc(Kind::Probes, ip("198.51.100.1"), "eth0");
        m.inc(Kind::Gratuitous, ip("198.51.100.1"), "eth1");
        m.inc(Kind::Gratuitous, ip("198.51.100.2"), "eth0");
        let s = m.series.read().unwrap();
        assert_eq!(
            s[&ip("198.51.100.2")].capacity(),
            1,
            "one interface, one slot"
        );
        assert_eq!(s[&ip("198.51.100.1")].len(), 2);
        assert_eq!(
            s[&ip("198.51.100.1")].capacity(),
            2,
            "a second interface, a second slot"
        );
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let a = IpAddr::from([198, 51, 100, (i % 8) as u8]);
                        m.inc(Kind::Responses, a, if t % 2 == 0 { "eth0" } else { "eth1" });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = (0..8u8)
            .flat_map(|i| ["eth0", "eth1"].map(|n| (i, n)))
            .map(|(i, n)| m.get(Kind::Responses, IpAddr::from([198, 51, 100, i]), n))
            .sum();
        assert_eq!(total, 4000);
    }
}
