//! The LB-IPAM controller (`ferrolb controller`): watches -> allocator -> Service/pool status,
//! Events.
//!
//! Structure (kube-rs controller-rs / linkerd policy-controller style):
//! - [`state`]: the synchronous state machine. It is fed the watch events of Services and
//!   LoadBalancerIPPools, owns the allocator (`crate::ipam`) and says which writes are needed.
//!   It is tested by feeding objects in, without I/O.
//! - [`runner`]: the async part. Watches, leader election (`crate::lease`), writes with
//!   resourceVersion preconditions, Events, metrics, readiness.
//! - [`tracked`]: the bookkeeping of each kind of object the controller writes (cache, versions
//!   waiting for the watch, dirty marks), written once for Services and pools.
//! - [`error`], [`metrics`], [`events`]: the crate-local error type, Prometheus metrics and the
//!   `events.k8s.io/v1` recorder.
//!
//! Behaviour in short:
//! - Serves `type: LoadBalancer` Services whose `spec.loadBalancerClass` is `ferrolb.io/l2-announcer`,
//!   unset (unless `--no-default-class`), or `io.cilium/l2-announcer` (with `--serve-cilium-class`).
//!   Foreign classes are never written to. A Service that leaves our class or type gets the
//!   addresses we gave it and our condition removed (other conditions/ingress entries are kept).
//! - On start and on every leader takeover the state is rebuilt from a fresh LIST: every
//!   existing allocation in `status.loadBalancer.ingress` is adopted before anything new is
//!   allocated, so restarts and failovers never reshuffle addresses.
//! - Only the lease holder writes; a replica that loses the lease stops writing at once.
//! - Every write carries the resourceVersion it was computed from; a 409 makes the controller
//!   refetch the object and re-evaluate, it never overwrites blindly.
//!
//! Decisions worth knowing:
//! - Service and pool status are written with a JSON merge patch on `/status` that carries
//!   `metadata.resourceVersion` (a precondition on every API server), touching only
//!   `status.loadBalancer.ingress` and `status.conditions` (other writers' conditions are kept;
//!   labels/annotations are never sent). Ingress entries get `ipMode: VIP`.
//! - After a write (or a re-read after a 409) the controller knows a newer version than its
//!   watch. Until the watch delivers that version, further writes for the object wait (they
//!   would be based on an older version and only earn a 409). A relist ends every wait; a lost
//!   event ends it after [`tracked::PENDING_TIMEOUT`]. In steady state the controller sends no
//!   GET at all (tested: one status patch and one Event per allocation, nothing while idle).
//! - Pool status writes are coalesced (200 ms) since counts change with every allocation.
//! - Takeover relists Services and pools (one LIST each) instead of trusting a standby's cache
//!   that may not yet show the previous leader's last writes.
//! - A Service that leaves our class/type loses the addresses *we* gave it (those the allocator
//!   held, or after a restart those inside one of our pools) and our condition; other ingress
//!   entries and conditions stay. A Service of a foreign class that never carried our condition
//!   is never written to.
//! - Events (`events.k8s.io/v1`): `IPAllocated`, `IPReleased` (Normal), `AllocationFailed`
//!   (Warning, on a transition to unsatisfied or a new reason), `PoolConflict`, `PoolExhausted`,
//!   `InvalidBlocks`, `InvalidSelector` (Warning, when the condition turns True). Pool Events go
//!   to the `default` namespace.
//! - Lease timings default to client-go's 15s/10s/2s: the controller is not on the data path
//!   (addresses keep working while no replica leads), so a calm lease beats fast failover here.
//! - Known limit (shared with every lease-based controller): a write already in flight when the
//!   lease is lost can still land; the next leader's resourceVersion preconditions catch it
//!   (409, re-read) but cannot undo it. Requests are not fenced by a lease token.

pub mod cache;
pub mod error;
pub mod events;
pub mod leadership;
pub mod metrics;
pub mod outbox;
pub mod runner;
pub mod state;
pub mod status;
pub mod tracked;

use std::net::SocketAddr;
use std::time::Duration;

pub use error::{Error, Result};
pub use metrics::Metrics;
pub use runner::{Context, Controller, ControllerConfig, LeaseTimings};

/// Command-line flags of `ferrolb controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Path of a kubeconfig file. Without it: $KUBECONFIG, ~/.kube/config, then the in-cluster
    /// service account (kube::Config::infer).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Identity of this replica in the controller Lease and in Events' reportingInstance.
    /// Default: $POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Name of the coordination.k8s.io Lease that elects the active replica.
    #[arg(long, default_value = "ferrolb-controller")]
    pub lease_name: String,
    /// Namespace of that Lease. Default: $POD_NAMESPACE, else `ferrolb-system`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    pub lease_namespace: String,
    /// How long a Lease is valid without renewal (e.g. `15s`, `1500ms`, `1m`).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// The holder gives up leadership when it could not renew for this long (< lease duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// Interval between renewal / acquisition attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Serve Services whose loadBalancerClass is unset (the default).
    #[arg(long, overrides_with = "no_default_class")]
    pub default_class: bool,
    /// Do not serve Services whose loadBalancerClass is unset (only `ferrolb.io/l2-announcer`).
    #[arg(long, overrides_with = "default_class")]
    pub no_default_class: bool,
    /// Also serve `loadBalancerClass: io.cilium/l2-announcer` (migration from Cilium).
    #[arg(long)]
    pub serve_cilium_class: bool,
    /// Also read MetalLB's Service annotations (metallb.io/loadBalancerIPs, allow-shared-ip,
    /// address-pool, and their metallb.universe.tf/ spellings) as aliases of ours (migration
    /// from MetalLB).
    #[arg(long)]
    pub metallb_annotations: bool,
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz (`off` disables it).
    #[arg(long, default_value = "0.0.0.0:9090", value_parser = parse_listen_addr)]
    pub metrics_addr: ListenAddr,
}

/// A listen address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

fn parse_listen_addr(s: &str) -> std::result::Result<ListenAddr, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(ListenAddr(None)),
        other => other
            .parse::<SocketAddr>()
            .map(|a| ListenAddr(Some(a)))
            .map_err(|e| format!("invalid listen address {other:?} (want HOST:PORT or off): {e}")),
    }
}

/// The controller's duration flags share the lease module's parser.
pub use crate::lease::parse_duration;

impl Args {
    /// Whether Services without a loadBalancerClass are served.
    pub fn serves_default_class(&self) -> bool {
        !self.no_default_class
    }

    /// The lease timings after checking they make sense together (client-go's rules:
    /// duration > renew deadline > 1.2 × retry period).
    pub fn lease_timings(&self) -> std::result::Result<LeaseTimings, String> {
        let t = LeaseTimings {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        t.validate()?;
        Ok(t)
    }
}

/// This replica's default identity: $POD_NAME, else the host name, else a random one.
pub fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME") {
        if !p.trim().is_empty() {
            return p.trim().to_string();
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    format!("ferrolb-controller-{}", uuid::Uuid::new_v4().simple())
}

/// Runs the subcommand: builds a client and runs the controller until SIGINT/SIGTERM.
pub async fn run(args: Args) -> crate::CmdResult {
    let timings = args
        .lease_timings()
        .map_err(|e| anyhow::anyhow!("invalid lease timings: {e}"))?;
    let client = crate::k8s::client(args.kubeconfig.as_deref()).await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let config = ControllerConfig {
        identity,
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        lease: timings,
        default_class: args.serves_default_class(),
        serve_cilium_class: args.serve_cilium_class,
        metallb_annotations: args.metallb_annotations,
    };
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let ctx = Context::new(client, config, metrics);
    if let ListenAddr(Some(addr)) = args.metrics_addr {
        let (bound, _task) = crate::telemetry::serve_metrics(addr, registry, ctx.health.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    Controller::run(ctx).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn defaults_are_sane() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        let a = cli.args;
        assert_eq!(a.lease_name, "ferrolb-controller");
        assert!(a.serves_default_class());
        assert!(!a.serve_cilium_class);
        assert!(!a.metallb_annotations);
        let t = a.lease_timings().expect("default timings are valid");
        assert_eq!(t.lease_duration, Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        assert_eq!(
            a.metrics_addr,
            ListenAddr(Some("0.0.0.0:9090".parse().expect("addr")))
        );
    }

    #[test]
    fn flags_parse_and_are_checked() {
        let cli = Cli::try_parse_from([
            "x",
            "--no-default-class",
            "--serve-cilium-class",
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "500ms",
            "--metrics-addr",
            "off",
            "--identity",
            "replica-a",
        ])
        .expect("parse");
        assert!(!cli.args.serves_default_class());
        assert!(cli.args.serve_cilium_class);
        assert_eq!(cli.args.metrics_addr, ListenAddr(None));
        assert!(cli.args.lease_timings().is_ok());
        // The last of --default-class / --no-default-class wins.
        let cli =
            Cli::try_parse_from(["x", "--no-default-class", "--default-class"]).expect("parse");
        assert!(cli.args.serves_default_class());
        // renew deadline must be shorter than the lease duration.
        let cli = Cli::try_parse_from(["x", "--lease-duration", "5s", "--renew-deadline", "5s"])
            .expect("parse");
        assert!(cli.args.lease_timings().is_err());
        assert!(Cli::try_parse_from(["x", "--lease-duration", "soon"]).is_err());
        assert!(Cli::try_parse_from(["x", "--metrics-addr", "nowhere"]).is_err());
    }
}
