#![forbid(unsafe_code)]
//! ferrolb: a Layer 2 LoadBalancer for bare-metal Kubernetes.
//!
//! Modules hold one concern each; the decisions (`ipam`, `lease::decide`, agent eligibility,
//! packet codecs) are pure and tested by feeding values in, apart from the I/O around them.

pub mod agent;
pub mod api;
pub mod controller;
pub mod crds;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod intern;
pub mod ipam;
pub mod k8s;
pub mod lease;
pub mod net;
pub mod telemetry;

/// Exit code of a subcommand; errors are reported by `main`.
pub type CmdResult = anyhow::Result<std::process::ExitCode>;

/// Sleeps until `t`, or forever when there is nothing to wait for (a `select!` branch for an
/// optional deadline).
pub(crate) async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
