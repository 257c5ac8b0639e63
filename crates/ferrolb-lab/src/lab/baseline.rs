//! `lab --measure --baseline-leases N` (issue 10): the poll-every-retry baseline for the
//! API-load ratio, run against the same API server in the same lab.
//!
//! What it models: client-go's `leaderelection` with one Lease per address (what kube-vip and
//! Cilium's L2 announcements do per Service): every retry period each holder GETs its Lease and
//! PUTs it back with a new `renewTime` (resourceVersion precondition). So the wanted load is
//! N reads + N writes per retry period, whatever happens; ferrolb's previous engine did the same
//! writes without the reads (watch instead of GET). The generator holds N Leases in a namespace
//! of its own (`ferrolb-baseline`, no ferrolb labels: no agent sees them), runs for a window,
//! and reports what it achieved: requests per second by kind, and the longest gap between two
//! successful renewals of one Lease (a gap past the lease duration is a Lease that would have
//! expired: a spurious failover under client-go's rules).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, PostParams};
use serde::Serialize;

/// Namespace of the baseline's Leases.
pub const NAMESPACE: &str = "ferrolb-baseline";

/// What the baseline achieved.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Baseline {
    pub leases: usize,
    pub retry_period_ms: u64,
    pub window_s: f64,
    /// Requests per second the rule asks for (2 × leases ÷ retry period).
    pub wanted_per_s: f64,
    pub reads_per_s: f64,
    pub writes_per_s: f64,
    /// Failed requests (any error, including 409s) per second.
    pub errors_per_s: f64,
    /// Longest time between two successful renewals of one Lease.
    pub max_gap_ms: u64,
    /// Leases whose renewals were ever further apart than `lease_duration`.
    pub leases_past_duration: usize,
}

/// The requests the rule asks for per second: one GET and one PUT per Lease per retry period.
pub fn wanted_per_s(leases: usize, retry: Duration) -> f64 {
    2.0 * leases as f64 / retry.as_secs_f64().max(1e-9)
}

fn lease(name: &str, holder: &str, duration_s: i32) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(name.to_string());
    l.metadata.namespace = Some(NAMESPACE.to_string());
    l.spec = Some(LeaseSpec {
        holder_identity: Some(holder.to_string()),
        lease_duration_seconds: Some(duration_s),
        acquire_time: Some(ferrolb::lease::micro_now()),
        renew_time: Some(ferrolb::lease::micro_now()),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    });
    l
}

/// Runs the baseline: `leases` Leases (held by `holders` identities in turn), each renewed
/// client-go style every `retry`, for `window`. The namespace must exist.
pub async fn run(
    client: kube::Client,
    leases: usize,
    holders: usize,
    retry: Duration,
    lease_duration: Duration,
    window: Duration,
) -> anyhow::Result<Baseline> {
    let api: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let duration_s = lease_duration.as_secs().max(1) as i32;
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Create them first (not counted), 16 at a time.
    use futures::StreamExt;
    futures::stream::iter(0..leases)
        .map(|i| {
            let api = api.clone();
            async move {
                let l = lease(
                    &format!("baseline-{i}"),
                    &format!("node{}", i % holders.max(1) + 1),
                    duration_s,
                );
                match api.create(&PostParams::default(), &l).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let start = tokio::time::Instant::now();
    let end = start + window;
    let mut tasks = Vec::with_capacity(leases);
    for i in 0..leases {
        let (api, reads, writes, errors) =
            (api.clone(), reads.clone(), writes.clone(), errors.clone());
        // Spread the holders' phases over one retry period, as independent processes would be.
        let phase = retry.mul_f64(i as f64 / leases.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let name = format!("baseline-{i}");
            let mut tick = tokio::time::interval_at(start + phase, retry);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_ok = Instant::now();
            let mut max_gap = Duration::ZERO;
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end {
                    break;
                }
                // client-go's tryAcquireOrRenew: GET, then UPDATE with the resourceVersion.
                let got = api.get(&name).await;
                let mut l = match got {
                    Ok(l) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                        l
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if let Some(spec) = l.spec.as_mut() {
                    spec.renew_time = Some(ferrolb::lease::micro_now());
                }
                l.metadata.managed_fields = None;
                match api.replace(&name, &PostParams::default(), &l).await {
                    Ok(_) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                        max_gap = max_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            max_gap.max(last_ok.elapsed().min(window))
        }));
    }
    let mut max_gap = Duration::ZERO;
    let mut past = 0;
    for t in tasks {
        let g = t.await.unwrap_or(window);
        max_gap = max_gap.max(g);
        if g > lease_duration {
            past += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let per_s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / secs;
    Ok(Baseline {
        leases,
        retry_period_ms: retry.as_millis() as u64,
        window_s: secs,
        wanted_per_s: wanted_per_s(leases, retry),
        reads_per_s: per_s(&reads),
        writes_per_s: per_s(&writes),
        errors_per_s: per_s(&errors),
        max_gap_ms: max_gap.as_millis() as u64,
        leases_past_duration: past,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_asks_one_read_and_one_write_per_lease_per_retry_period() {
        assert_eq!(wanted_per_s(1000, Duration::from_millis(200)), 10_000.0);
        assert_eq!(wanted_per_s(100, Duration::from_secs(2)), 100.0);
    }
}
