//! ARP/NDP codecs (fuzzable), raw-socket I/O, interface selection.
//!
//! Layout follows MetalLB's internal/layer2: one file per protocol ([`arp`], [`ndp`]: pure
//! codecs and answer decisions), [`iface`] (discovery and selection), [`links`] (interface
//! changes from rtnetlink), [`announcer`] (raw-socket I/O, one reader thread per interface,
//! gratuitous bursts, self-check), [`mcast`] (solicited-node memberships over as many sockets as they need), [`probes`] (when the follow-up probes
//! for foreign answerers after a takeover are due) and [`metrics`].

pub mod announcer;
pub mod arp;
pub mod iface;
pub mod links;
mod mcast;
pub mod metrics;
pub mod ndp;
pub mod probes;
mod reader;
mod verdict;

pub use announcer::{Announcer, AnnouncerConfig, Conflict};
pub use iface::{eligible_interfaces, Iface};

pub use verdict::Verdict;

/// Command-line flags of `ferrolb announce`.
#[derive(clap::Args, Debug, Clone)]
pub struct AnnounceArgs {
    /// Interface to answer on (repeatable). Default: every eligible interface (up,
    /// broadcast-capable, ARP-capable, not a bridge/bond member nor a container/virtual one).
    #[arg(long = "interface", short = 'i', value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Address to announce (repeatable; IPv4 and/or IPv6). It need not be on the interface.
    #[arg(
        long = "ip",
        value_name = "ADDR",
        required_unless_present = "control_stdin"
    )]
    pub ips: Vec<std::net::IpAddr>,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9750).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Announcements in the gratuitous burst sent on start and when an interface comes up.
    #[arg(long, default_value_t = 5)]
    pub gratuitous_count: u32,
    /// Milliseconds between the announcements of a burst.
    #[arg(long, default_value_t = 1000)]
    pub gratuitous_interval_ms: u64,
    /// Also re-announce every held address every this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub reannounce_interval_secs: u64,
    /// Probe again for foreign answerers this many milliseconds after a takeover
    /// (comma-separated; 0 = no follow-up probes). See `net::probes`.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000,60000")]
    pub probe_after_ms: Vec<u64>,
    /// Seconds between two self-checks of what is answered and joined (see the announcer).
    #[arg(long, default_value_t = 10)]
    pub self_check_secs: u64,
    /// Testing aid: read the desired held set from stdin, one line per change, as
    /// whitespace-separated `ADDR@IFACE` items (an empty line releases everything); the line
    /// `!break IFACE` stops that interface's reader thread behind the announcer's back.
    #[arg(long, hide = true)]
    pub control_stdin: bool,
}

/// Parses a `--control-stdin` line (`ADDR@IFACE ...`).
pub fn parse_held_line(line: &str) -> anyhow::Result<announcer::Held> {
    let mut held = announcer::Held::new();
    for item in line.split_whitespace() {
        let (ip, ifname) = item
            .split_once('@')
            .ok_or_else(|| anyhow::anyhow!("{item:?}: expected ADDR@IFACE"))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|e| anyhow::anyhow!("{item:?}: bad address: {e}"))?;
        if ifname.is_empty() {
            anyhow::bail!("{item:?}: empty interface name");
        }
        std::sync::Arc::make_mut(held.entry(ip).or_default()).insert(ifname.to_string());
    }
    Ok(held)
}

/// Runs `ferrolb announce`: answers for fixed addresses until SIGTERM/SIGINT.
pub async fn run_announce(args: AnnounceArgs) -> crate::CmdResult {
    use std::collections::BTreeSet;
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
        gratuitous_count: args.gratuitous_count,
        gratuitous_interval: Duration::from_millis(args.gratuitous_interval_ms.max(1)),
        reannounce_interval: (args.reannounce_interval_secs > 0)
            .then(|| Duration::from_secs(args.reannounce_interval_secs)),
        self_check: Duration::from_secs(args.self_check_secs.max(1)),
        probe_after: args
            .probe_after_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
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
    let shared_ifaces = std::sync::Arc::new(ifaces.clone());
    let held: announcer::Held = args
        .ips
        .iter()
        .map(|ip| (*ip, shared_ifaces.clone()))
        .collect();
    announcer.set_held(held);
    announcer.settled().await;
    health.set_ready(true);
    tracing::info!(ips = ?args.ips, interfaces = ?ifaces, "announcer ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watching = true;
    let mut control = args.control_stdin.then(|| {
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(tokio::io::stdin()).lines()
    });
    loop {
        tokio::select! {
            line = async { control.as_mut()?.next_line().await.ok().flatten() }, if control.is_some() => match line {
                None => control = None,
                Some(line) if line.starts_with("!break ") => {
                    announcer.break_reader_for_test(line.trim_start_matches("!break ").trim());
                }
                Some(line) => match parse_held_line(&line) {
                    Ok(held) => {
                        announcer.set_held(held.clone());
                        announcer.settled().await;
                        tracing::info!(?held, "applied held set");
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring control line"),
                },
            },
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r?; break; }
            c = conflicts.recv(), if watching => match c {
                Ok(c) => tracing::warn!(ip = %c.ip, iface = %c.iface, mac = %c.mac, probe_answer = c.probe_answer, "conflict: another station announces this address"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "conflict reports dropped"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => watching = false,
            },
        }
    }
    tracing::info!("shutting down");
    announcer.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lines() {
        let h = parse_held_line("198.51.100.10@eth0 2001:db8:100::10@eth0 198.51.100.10@eth1")
            .expect("valid");
        assert_eq!(h.len(), 2);
        let v4: std::net::IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(
            h[&v4].iter().map(String::as_str).collect::<Vec<_>>(),
            ["eth0", "eth1"]
        );
        assert!(parse_held_line("").expect("empty").is_empty());
        assert!(parse_held_line("198.51.100.10").is_err());
        assert!(parse_held_line("198.51.100.300@eth0").is_err());
        assert!(parse_held_line("198.51.100.10@").is_err());
    }

    #[test]
    fn only_unicast_is_announceable() {
        for ok in ["198.51.100.10", "2001:db8:100::10", "fe80::1"] {
            assert!(announcer::announceable(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
        ] {
            assert!(!announcer::announceable(bad.parse().unwrap()), "{bad}");
        }
    }
}
