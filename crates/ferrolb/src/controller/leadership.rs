//! Leader election of the controller replicas, on top of `crate::lease::LeaderElector`
//! (client-go semantics: resourceVersion-preconditioned writes, leadership dropped at the renew
//! deadline or at once on a 409 / another holder).
//!
//! Dropping a [`Leadership`] without [`Leadership::shutdown`] stops the elector without
//! releasing the Lease (as if the process had died): the other replica takes over after the
//! lease duration.

use tokio::sync::watch;

use super::runner::Context;
use super::{Error, Result};
use crate::lease::{LeaderElector, LeaseConfig};

/// This replica's view of the controller Lease.
pub struct Leadership {
    elector: Option<LeaderElector>,
    rx: watch::Receiver<bool>,
}

impl Leadership {
    /// Starts contending for the Lease named in `ctx.config`.
    pub fn start(ctx: &Context) -> Result<Self> {
        let cfg = &ctx.config;
        let lease_cfg = LeaseConfig {
            lease_duration: cfg.lease.lease_duration,
            renew_deadline: cfg.lease.renew_deadline,
            retry_period: cfg.lease.retry_period,
            ..LeaseConfig::default()
        };
        lease_cfg.validate().map_err(Error::Lease)?;
        let labels = [(
            "app.kubernetes.io/name".to_string(),
            "ferrolb-controller".to_string(),
        )]
        .into_iter()
        .collect();
        let elector = LeaderElector::start_with_labels(
            ctx.client.clone(),
            &cfg.lease_namespace,
            &cfg.lease_name,
            &cfg.identity,
            lease_cfg,
            labels,
        );
        let rx = elector.subscribe();
        Ok(Leadership {
            elector: Some(elector),
            rx,
        })
    }

    /// Whether this replica may write right now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when leadership may have changed (never, once the elector stopped).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Releases the Lease so another replica takes over at once.
    pub async fn shutdown(mut self) {
        if let Some(e) = self.elector.take() {
            let report = e.release().await;
            tracing::info!(?report, "controller lease released");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(e) = self.elector.take() {
            e.abort();
        }
    }
}
