//! Prometheus metrics of the announcer. Labels are `ip` and `iface`, and only ever take values
//! of addresses we hold and interfaces we announce on (never values from received frames), so
//! hostile traffic cannot grow the label set.

use prometheus::{IntCounterVec, Opts, Registry};

/// The announcer's counters.
#[derive(Clone)]
pub struct Metrics {
    /// ARP requests received for an address we hold.
    pub arp_requests: IntCounterVec,
    /// Neighbor Solicitations received for an address we hold.
    pub ndp_requests: IntCounterVec,
    /// ARP replies and solicited Neighbor Advertisements sent.
    pub responses: IntCounterVec,
    /// Gratuitous ARP (both forms count as one each) and unsolicited NAs sent.
    pub gratuitous: IntCounterVec,
    /// Announcements of an address we hold by another MAC.
    pub conflicts: IntCounterVec,
    /// Probes for foreign answerers sent (with each announcement, and the follow-ups after a
    /// takeover, `net::probes`).
    pub probes: IntCounterVec,
    /// Differences the self-check found and repaired (nothing had been reported, yet the
    /// readers, multicast groups or answered set did not match what is held).
    pub repairs: prometheus::IntCounter,
}

fn counter(name: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &["ip", "iface"])
}

impl Metrics {
    /// Creates the counters and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            arp_requests: counter(
                "ferrolb_arp_requests_received_total",
                "ARP requests received for an announced address",
            )?,
            ndp_requests: counter(
                "ferrolb_ndp_requests_received_total",
                "NDP neighbor solicitations received for an announced address",
            )?,
            responses: counter(
                "ferrolb_responses_sent_total",
                "ARP replies and neighbor advertisements sent in answer to a request",
            )?,
            gratuitous: counter(
                "ferrolb_gratuitous_sent_total",
                "Gratuitous ARP frames and unsolicited neighbor advertisements sent",
            )?,
            conflicts: counter(
                "ferrolb_announce_conflicts_total",
                "Announcements of an address we hold seen from another MAC",
            )?,
            probes: counter(
                "ferrolb_announce_probes_sent_total",
                "Probes for other stations answering for an announced address (ARP probes, neighbor solicitations from the address)",
            )?,
            repairs: prometheus::IntCounter::new(
                "ferrolb_announce_repairs_total",
                "Differences between the held set and what is answered or joined, found and repaired by the self-check",
            )?,
        };
        registry.register(Box::new(m.repairs.clone()))?;
        for c in [
            &m.arp_requests,
            &m.ndp_requests,
            &m.responses,
            &m.gratuitous,
            &m.conflicts,
            &m.probes,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        Ok(m)
    }

    /// Drops the series of an address no longer held on `iface`.
    pub fn forget(&self, ip: &str, iface: &str) {
        for c in [
            &self.arp_requests,
            &self.ndp_requests,
            &self.responses,
            &self.gratuitous,
            &self.conflicts,
            &self.probes,
        ] {
            let _ = c.remove_label_values(&[ip, iface]);
        }
    }
}
