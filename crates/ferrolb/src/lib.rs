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

/// The most async worker threads a long-running daemon (agent, controller) runs, however many
/// cores its node has. Each worker thread that allocates gets a malloc arena of its own that
/// keeps its high-water mark: with 16 workers (`TOKIO_WORKER_THREADS=16`, as tokio's default
/// gives a 16-core node) the lab's agents at 10,000 addresses peaked at 100–111 MiB against
/// 84–100 MiB with two (README, "Lab measurements"). Two are enough: the packet path has
/// threads of its own, and the controller's cold start uses the second one.
pub const DAEMON_WORKER_THREADS: usize = 2;

/// Worker threads for a daemon's runtime: the node's cores, at most [`DAEMON_WORKER_THREADS`].
pub fn daemon_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(DAEMON_WORKER_THREADS)
}

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
