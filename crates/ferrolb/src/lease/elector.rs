//! `LeaderElector`: client-go style leader election on one Lease (the controller's HA).
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use ferrolb::lease::{LeaderElector, LeaseConfig};
//! let elector = LeaderElector::start(client, "ferrolb-system", "ferrolb-controller", "pod-a",
//!                                    LeaseConfig::default());
//! let mut leader = elector.subscribe();
//! // wait until we lead
//! while !*leader.borrow_and_update() { if leader.changed().await.is_err() { return; } }
//! // ... write while elector.is_leader() ...
//! elector.release().await; // on shutdown: the other replica takes over at once
//! # }
//! ```
//!
//! Leadership is `true` only while we hold the lease and our last successful renewal is younger
//! than the renew deadline; it turns `false` at the deadline even if a write is still hanging,
//! on a 409 / another holder at once, and after `release()`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::decide::LeaseConfig;
use super::engine::{
    EngineOptions, EngineStats, LeaseEvent, LeaseMeta, LeaseSet, LeaseWant, ShutdownReport,
};

/// Leader election on one Lease.
pub struct LeaderElector {
    set: LeaseSet,
    leader: watch::Receiver<bool>,
    forward: tokio::task::JoinHandle<()>,
}

impl LeaderElector {
    /// Start contending for `namespace/name` as `identity` (spawns tasks; needs a runtime).
    /// The lease is created if absent.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        config: LeaseConfig,
    ) -> LeaderElector {
        Self::start_with_labels(client, namespace, name, identity, config, BTreeMap::new())
    }

    /// Like [`start`](Self::start), with labels for the Lease.
    pub fn start_with_labels(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        config: LeaseConfig,
        labels: BTreeMap<String, String>,
    ) -> LeaderElector {
        let opts = EngineOptions::single(namespace, name, identity, config);
        let (set, events) = LeaseSet::start(client, opts);
        set.set_desired(BTreeMap::from([(
            name.to_string(),
            LeaseWant {
                meta: LeaseMeta::Pairs {
                    labels: labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                    annotations: Vec::new(),
                },
                ..LeaseWant::default()
            },
        )]));
        let (tx, rx) = watch::channel(false);
        let forward = tokio::spawn(forward(events, tx));
        LeaderElector {
            set,
            leader: rx,
            forward,
        }
    }

    /// Are we the leader right now?
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Write counters (creates, acquires, renews, conflicts...).
    pub fn stats(&self) -> Arc<EngineStats> {
        self.set.stats()
    }

    /// Step down: release the lease (holder cleared, so another replica takes over at once) and
    /// stop. Leadership is `false` when this returns.
    pub async fn release(self) -> ShutdownReport {
        let report = self.set.shutdown().await;
        let _ = self.forward.await;
        report
    }

    /// Release when `token` is cancelled (spawns a task); returns a receiver of the leadership.
    pub fn release_on(self, token: CancellationToken) -> watch::Receiver<bool> {
        let rx = self.subscribe();
        tokio::spawn(async move {
            token.cancelled().await;
            self.release().await;
        });
        rx
    }

    /// Stop without releasing (as if killed): the lease expires after its duration.
    pub fn abort(self) {
        self.set.abort();
        self.forward.abort();
    }
}

async fn forward(mut events: mpsc::UnboundedReceiver<LeaseEvent>, tx: watch::Sender<bool>) {
    while let Some(ev) = events.recv().await {
        let leading = matches!(ev, LeaseEvent::Acquired { .. });
        tx.send_if_modified(|cur| {
            if *cur != leading {
                *cur = leading;
                true
            } else {
                false
            }
        });
    }
    tx.send_replace(false);
}
