//! The agent's own Prometheus metrics (the announcer registers its packet counters itself).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::lease::engine::EngineStats;

/// Metrics of the agent's control loop.
#[derive(Clone)]
pub struct Metrics {
    /// Leases this node holds (valid, renewed).
    pub leases_held: IntGauge,
    /// Groups announced in sticky mode (lease possibly expired, API unreachable).
    pub leases_sticky: IntGauge,
    /// Lease transitions seen, by kind (acquired, lost, expired_unreachable, released).
    pub lease_transitions: IntCounterVec,
    /// Election errors: failed lease writes (other than lost races) and Lease watch errors.
    pub election_errors: IntCounter,
    /// Addresses this node currently answers for.
    pub addresses_announced: IntGauge,
    /// (address, interface) announcements started.
    pub announcements: IntCounter,
    /// Groups this node contends for.
    pub groups_desired: IntGauge,
    /// Conflicts reported by the announcer, by outcome (yielded, ignored, sticky_answered,
    /// not_ours).
    pub conflicts: IntCounterVec,
    /// Other stations answering for an address whose lease this node holds, by address family
    /// (once per address, MAC and `agent::conflicts::FOREIGN_REPORT_EVERY`).
    pub foreign_answerers: IntCounterVec,
    /// Gratuitous bursts defending a held address against another station's announcement.
    pub defences: IntCounter,
    /// Eligibility recomputations.
    pub recomputes: IntCounter,
    /// Problems found in L2AnnouncementPolicies.
    pub policy_problems: IntGauge,
    /// Kubernetes API errors of the agent's own writes (Events, policy status) and watches.
    pub api_errors: IntCounterVec,
    /// Lease writes by the lease engine, by outcome (create, acquire, renew, release, delete,
    /// conflict, failure): the agent's API load.
    pub lease_writes: IntCounterVec,
    /// Takeovers that waited, past their rank wait, for the node ranked first while it was
    /// taking other addresses (a burst it worked through).
    pub takeovers_deferred: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let g = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let m = IntGauge::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let c = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let m = IntCounter::new(name, help)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let cv = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let m = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        Ok(Metrics {
            leases_held: g("ferrolb_agent_leases_held", "Leases this node holds.")?,
            leases_sticky: g(
                "ferrolb_agent_leases_sticky",
                "Groups announced in sticky mode while the API server is unreachable.",
            )?,
            lease_transitions: cv(
                "ferrolb_agent_lease_transitions_total",
                "Lease state transitions seen by this node.",
                &["transition"],
            )?,
            election_errors: c(
                "ferrolb_agent_election_errors_total",
                "Lease election errors (API errors other than conflicts).",
            )?,
            addresses_announced: g(
                "ferrolb_agent_addresses_announced",
                "Addresses this node answers ARP/NDP for.",
            )?,
            announcements: c(
                "ferrolb_agent_announcements_total",
                "Announcements of an address on an interface started by this node.",
            )?,
            groups_desired: g(
                "ferrolb_agent_groups_desired",
                "Address groups (leases) this node contends for.",
            )?,
            conflicts: cv(
                "ferrolb_agent_conflicts_total",
                "Other stations announcing an address this node announces, by outcome.",
                &["outcome"],
            )?,
            foreign_answerers: cv(
                "ferrolb_agent_foreign_answerers_total",
                "Other stations (MACs) answering ARP/NDP for an address whose lease this node holds, by family; once per address and MAC per 10 minutes (kube-proxy IPVS without strictARP?).",
                &["family"],
            )?,
            defences: c(
                "ferrolb_agent_defences_total",
                "Gratuitous bursts defending an address whose lease this node holds against another station's announcement of it (at most once per address and MAC per second).",
            )?,
            recomputes: c(
                "ferrolb_agent_recomputes_total",
                "Eligibility recomputations.",
            )?,
            policy_problems: g(
                "ferrolb_agent_policy_problems",
                "Problems found in L2AnnouncementPolicies (bad selectors, regexes).",
            )?,
            api_errors: cv(
                "ferrolb_agent_api_errors_total",
                "Kubernetes API errors of the agent's watches and writes.",
                &["op"],
            )?,
            lease_writes: cv(
                "ferrolb_agent_lease_writes_total",
                "Lease writes of this node by outcome (create, acquire, renew, release, delete, conflict, failure).",
                &["op"],
            )?,
            takeovers_deferred: c(
                "ferrolb_agent_takeovers_deferred_total",
                "Takeovers that waited, past their rank wait, for the node ranked first while it took other addresses.",
            )?,
        })
    }

    /// Records one of the agent core's metric updates.
    pub fn record(&self, m: super::core::Metric) {
        use super::core::Metric as M;
        match m {
            M::Recompute => self.recomputes.inc(),
            M::PolicyProblems(n) => self.policy_problems.set(n),
            M::GroupsDesired(n) => self.groups_desired.set(n),
            M::LeaseTransition(l) => self.lease_transitions.with_label_values(&[l]).inc(),
            M::Conflict(l) => self.conflicts.with_label_values(&[l]).inc(),
            M::LeasesHeld(n) => self.leases_held.set(n),
            M::LeasesSticky(n) => self.leases_sticky.set(n),
            M::AddressesAnnounced(n) => self.addresses_announced.set(n),
            M::Announcements(n) => self.announcements.inc_by(n),
            M::ForeignAnswerer(f) => self.foreign_answerers.with_label_values(&[f]).inc(),
            M::Defence => self.defences.inc(),
            M::EventRateLimited => self
                .api_errors
                .with_label_values(&["event_rate_limited"])
                .inc(),
        }
    }

    /// Carries the lease engine's counters over (call periodically; counts only what is new).
    pub fn sync_engine(&self, stats: &EngineStats, last: &mut [u64; 9]) {
        let now = [
            EngineStats::get(&stats.creates),
            EngineStats::get(&stats.acquires),
            EngineStats::get(&stats.renews),
            EngineStats::get(&stats.releases),
            EngineStats::get(&stats.deletes),
            EngineStats::get(&stats.conflicts),
            EngineStats::get(&stats.failures),
            EngineStats::get(&stats.watch_errors),
            EngineStats::get(&stats.deferred),
        ];
        const OPS: [&str; 7] = [
            "create", "acquire", "renew", "release", "delete", "conflict", "failure",
        ];
        for (i, op) in OPS.iter().enumerate() {
            let d = now[i].saturating_sub(last[i]);
            if d > 0 {
                self.lease_writes.with_label_values(&[op]).inc_by(d);
            }
        }
        // Election errors: failed writes (not conflicts: those are lost races) and watch errors.
        let errors = now[6].saturating_sub(last[6]) + now[7].saturating_sub(last[7]);
        self.election_errors.inc_by(errors);
        self.takeovers_deferred
            .inc_by(now[8].saturating_sub(last[8]));
        *last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn engine_counters_are_carried_over_once() {
        let reg = Registry::new();
        let m = Metrics::new(&reg).unwrap();
        let stats = EngineStats::default();
        let mut last = [0u64; 9];
        stats.renews.store(5, Ordering::Relaxed);
        stats.conflicts.store(2, Ordering::Relaxed);
        stats.failures.store(1, Ordering::Relaxed);
        stats.deferred.store(4, Ordering::Relaxed);
        m.sync_engine(&stats, &mut last);
        m.sync_engine(&stats, &mut last); // nothing new: no double counting
        assert_eq!(m.lease_writes.with_label_values(&["renew"]).get(), 5);
        assert_eq!(m.lease_writes.with_label_values(&["conflict"]).get(), 2);
        assert_eq!(m.election_errors.get(), 1);
        assert_eq!(m.takeovers_deferred.get(), 4);
        stats.renews.store(7, Ordering::Relaxed);
        stats.watch_errors.store(3, Ordering::Relaxed);
        m.sync_engine(&stats, &mut last);
        assert_eq!(m.lease_writes.with_label_values(&["renew"]).get(), 7);
        assert_eq!(m.election_errors.get(), 4);
    }
}
