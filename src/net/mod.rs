//! ARP/NDP codecs (fuzzable), raw-socket I/O, interface selection.
//!
//! Layout follows MetalLB's internal/layer2: one file per protocol ([`arp`], [`ndp`]: pure
//! codecs and answer decisions), [`iface`] (discovery and selection), [`announcer`] (raw-socket
//! I/O, one reader thread per interface, gratuitous bursts, multicast membership) and
//! [`metrics`].

pub mod announcer;
pub mod arp;
pub mod iface;
pub mod metrics;
pub mod ndp;

pub use announcer::{Announcer, AnnouncerConfig, Conflict};
pub use iface::{eligible_interfaces, Iface};

/// Command-line flags of `ferrolb announce`.
#[derive(clap::Args, Debug, Clone)]
pub struct AnnounceArgs {
    /// Interface to answer on (repeatable). Default: every eligible interface (up,
    /// broadcast-capable, ARP-capable, not a bridge/bond member nor a container/virtual one).
    #[arg(long = "interface", short = 'i', value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Address to announce (repeatable; IPv4 and/or IPv6). It need not be on the interface.
    #[arg(long = "ip", value_name = "ADDR", required = true)]
    pub ips: Vec<std::net::IpAddr>,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9750).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Announcements in the gratuitous burst sent on start and when an interface comes up.
    #[arg(long, default_value_t = 5)]
    pub burst_count: u32,
    /// Milliseconds between the announcements of a burst.
    #[arg(long, default_value_t = 1000)]
    pub burst_interval_ms: u64,
    /// Also re-announce every held address every this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub reannounce_secs: u64,
}

/// Runs `ferrolb announce`: answers for fixed addresses until SIGTERM/SIGINT.
pub async fn run_announce(args: AnnounceArgs) -> crate::CmdResult {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    for ip in &args.ips {
        if !announcer::announceable(*ip) {
            anyhow::bail!("--ip {ip}: only unicast addresses can be announced");
        }
    }
    let ifaces: BTreeSet<String> = if args.interfaces.is_empty() {
        eligible_interfaces(&[])
            .into_iter()
            .map(|i| i.name)
            .collect()
    } else {
        args.interfaces.iter().cloned().collect()
    };
    if ifaces.is_empty() {
        anyhow::bail!("no eligible interface; name one with --interface");
    }
    let present: BTreeSet<String> = iface::interfaces().into_iter().map(|i| i.name).collect();
    for i in &ifaces {
        if !present.contains(i) {
            tracing::warn!(iface = %i, "interface does not exist (yet); will answer once it appears");
        }
    }
    let cfg = AnnouncerConfig {
        burst_count: args.burst_count,
        burst_interval: Duration::from_millis(args.burst_interval_ms.max(1)),
        reannounce_every: (args.reannounce_secs > 0)
            .then(|| Duration::from_secs(args.reannounce_secs)),
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let announcer = Announcer::new(cfg, &registry)?;
    let health = crate::telemetry::Health::default();
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let (bound, task) =
                crate::telemetry::serve_metrics(addr, registry.clone(), health.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
            tracing::info!(%bound, "serving metrics");
            Some(task)
        }
        None => None,
    };
    let mut conflicts = announcer.conflicts();
    let held: BTreeMap<std::net::IpAddr, BTreeSet<String>> =
        args.ips.iter().map(|ip| (*ip, ifaces.clone())).collect();
    announcer.set_held(held);
    announcer.settled().await;
    health.set_ready(true);
    tracing::info!(ips = ?args.ips, interfaces = ?ifaces, "announcer ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watching = true;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r?; break; }
            c = conflicts.recv(), if watching => match c {
                Ok(c) => tracing::warn!(ip = %c.ip, iface = %c.iface, mac = %c.mac, "conflict: another station announces this address"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "conflict reports dropped"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => watching = false,
            },
        }
    }
    tracing::info!("shutting down");
    announcer.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}
