//! Prometheus metrics of the controller, registered on a caller-provided `Registry`
//! (served by `crate::telemetry::serve_metrics` at `/metrics`).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `ferrolb_controller_allocations_total` | counter | | addresses assigned to Services (status writes that added an address) |
//! | `ferrolb_controller_releases_total` | counter | | addresses taken back from Services |
//! | `ferrolb_controller_allocation_failures_total` | counter | `reason` | Services that became unsatisfied, by reason |
//! | `ferrolb_controller_unsatisfied_services` | gauge | | Services of our class without a satisfied request right now |
//! | `ferrolb_pool_ips` | gauge | `pool`, `state` (`total`/`used`/`available`) | pool address counts (f64: IPv6 pools exceed 2^53, precision is lost, not range) |
//! | `ferrolb_controller_writes_total` | counter | `resource`, `result` (`ok`/`conflict`/`error`) | API writes |
//! | `ferrolb_controller_reconcile_errors_total` | counter | `kind` | failed reconcile steps |
//! | `ferrolb_controller_is_leader` | gauge | | 1 while this replica holds the controller Lease |
//! | `ferrolb_controller_ready` | gauge | | 1 once both initial lists were received |
//! | `ferrolb_controller_events_dropped_total` | counter | | Events not published by the spam filter (`events::SpamFilter`: 25 per object, then 1 per 5 min) |

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Handles to every controller metric.
#[derive(Clone)]
pub struct Metrics {
    pub allocations: IntCounter,
    pub releases: IntCounter,
    pub allocation_failures: IntCounterVec,
    pub unsatisfied: IntGauge,
    pub pool_ips: GaugeVec,
    pub writes: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub is_leader: IntGauge,
    pub ready: IntGauge,
    pub events_dropped: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            allocations: IntCounter::new(
                "ferrolb_controller_allocations_total",
                "Addresses assigned to Services",
            )?,
            releases: IntCounter::new(
                "ferrolb_controller_releases_total",
                "Addresses taken back from Services",
            )?,
            allocation_failures: IntCounterVec::new(
                Opts::new(
                    "ferrolb_controller_allocation_failures_total",
                    "Services that became unsatisfied, by reason",
                ),
                &["reason"],
            )?,
            unsatisfied: IntGauge::new(
                "ferrolb_controller_unsatisfied_services",
                "Services of our class whose address request is not satisfied",
            )?,
            pool_ips: GaugeVec::new(
                Opts::new("ferrolb_pool_ips", "Addresses of a pool by state"),
                &["pool", "state"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "ferrolb_controller_writes_total",
                    "API writes by resource and result",
                ),
                &["resource", "result"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "ferrolb_controller_reconcile_errors_total",
                    "Failed reconcile steps by kind",
                ),
                &["kind"],
            )?,
            is_leader: IntGauge::new(
                "ferrolb_controller_is_leader",
                "1 while this replica holds the controller Lease",
            )?,
            ready: IntGauge::new(
                "ferrolb_controller_ready",
                "1 once the initial lists of Services and pools were received",
            )?,
            events_dropped: IntCounter::new(
                "ferrolb_controller_events_dropped_total",
                "Events not published by the spam filter (per object: a burst of 25, then 1 per 5 minutes)",
            )?,
        };
        registry.register(Box::new(m.allocations.clone()))?;
        registry.register(Box::new(m.releases.clone()))?;
        registry.register(Box::new(m.allocation_failures.clone()))?;
        registry.register(Box::new(m.unsatisfied.clone()))?;
        registry.register(Box::new(m.pool_ips.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.events_dropped.clone()))?;
        Ok(m)
    }

    /// Sets the `ferrolb_pool_ips` gauges of one pool.
    pub fn set_pool(&self, pool: &str, total: u128, used: u128, available: u128) {
        for (state, v) in [("total", total), ("used", used), ("available", available)] {
            self.pool_ips
                .with_label_values(&[pool, state])
                .set(v as f64);
        }
    }

    /// Drops the gauges of a deleted pool.
    pub fn remove_pool(&self, pool: &str) {
        for state in ["total", "used", "available"] {
            let _ = self.pool_ips.remove_label_values(&[pool, state]);
        }
    }

    pub fn write(&self, resource: &str, result: &str) {
        self.writes.with_label_values(&[resource, result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let reg = Registry::new();
        let m = Metrics::new(&reg).expect("register");
        m.allocations.inc();
        m.set_pool("p", 1u128 << 64, 3, (1u128 << 64) - 3);
        m.write("services", "ok");
        let names: Vec<String> = reg.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.contains(&"ferrolb_controller_allocations_total".to_string()));
        assert!(names.contains(&"ferrolb_pool_ips".to_string()));
        assert!(names.contains(&"ferrolb_controller_writes_total".to_string()));
        // Registering twice on one registry is refused (duplicate), not silently accepted.
        assert!(Metrics::new(&reg).is_err());
        m.remove_pool("p");
        let fam = reg
            .gather()
            .into_iter()
            .find(|f| f.name() == "ferrolb_pool_ips");
        assert!(fam.map(|f| f.get_metric().is_empty()).unwrap_or(true));
    }
}
