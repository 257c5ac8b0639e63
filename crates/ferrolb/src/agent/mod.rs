//! The per-node agent (`ferrolb agent --node-name NODE`, a hostNetwork DaemonSet): eligibility
//! (policies, nodes, endpoints), per-address elections, the announcer.
//!
//! - [`eligibility`]: pure — which address groups this node may announce, on which interfaces,
//!   and which nodes are the candidates of each group's lease.
//! - [`holdings`]: pure — lease transitions and conflicts → what is announced right now
//!   (fencing, sticky mode during API outages).
//! - [`core`](mod@core): pure — the agent's decisions as a state machine: caches, lease events,
//!   link changes, conflicts in; the announced set, lease wishes, Events, `L2Announcement` wants,
//!   metrics out.
//! - [`run`](mod@run): the wiring (watches, lease engine, announcer, signals) feeding the core
//!   and carrying out its effects.
//! - [`report`]: Events on Services, policy status conditions.
//! - [`trim`]: what the caches keep of each watched object.
//! - [`pools`]: pure — which pool an address belongs to, for policies limited to some pools.
//! - [`l2status`] (pure) and [`l2writer`]: the `L2Announcement` of each Service this node
//!   announces, written only when it changes.
//!
//! # API-server outages ("sticky", default on)
//! A holder that cannot renew because the API server is unreachable keeps announcing after its
//! lease could have expired, until it sees another station's gratuitous ARP / unsolicited NA for
//! one of the group's addresses; then it stops at once. A node only ever starts announcing after
//! *acquiring* the lease, and every acquisition starts with a gratuitous burst, so the sticky
//! holder yields as soon as a successor exists: VIPs survive an API outage without two nodes
//! answering for longer than one burst round trip. `--no-sticky` stops answering as soon as the
//! lease could have expired (client-go semantics).

pub mod cache;
pub mod conflicts;
pub mod core;
pub mod eligibility;
pub mod holdings;
pub mod l2status;
pub mod l2writer;
pub mod linkhold;
pub mod metrics;
pub mod pace;
pub mod pools;
pub mod report;
pub mod run;
pub mod subnets;
pub mod trim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// This node's name (the Node object; also the lease holderIdentity).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Kubeconfig file (default: in-cluster config, $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the per-address Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    pub lease_namespace: String,
    /// How long this node's presence Lease stays valid without renewal (crash failover time;
    /// whole seconds on the wire). Address Leases are attached to it, not renewed.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "1s")]
    pub lease_duration: Duration,
    /// A node that could not renew its presence Lease for this long stops answering.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "600ms")]
    pub renew_deadline: Duration,
    /// Renewal interval of the presence Lease.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "200ms")]
    pub retry_period: Duration,
    /// Wait per rendezvous rank before taking a free lease.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "100ms")]
    pub rank_step: Duration,
    /// Hand a lease over to the preferred node (load-bounded rendezvous order) after holding it
    /// this long, if that node is alive (`0s` = never). Default: the lease engine's
    /// (`max(6 × lease duration, 30s)`).
    #[arg(long, value_parser = crate::lease::parse_duration)]
    pub rebalance_after: Option<Duration>,
    /// Keep announcing while the API server is unreachable, until another node's gratuitous
    /// ARP/NA is seen (default).
    #[arg(long, overrides_with = "no_sticky")]
    pub sticky: bool,
    /// Stop announcing as soon as the lease could have expired.
    #[arg(long, overrides_with = "sticky")]
    pub no_sticky: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// Gratuitous ARP / unsolicited NA messages sent on taking over an address.
    #[arg(long, default_value_t = 5)]
    pub gratuitous_count: u32,
    /// Interval between gratuitous messages of a burst.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "1s")]
    pub gratuitous_interval: Duration,
    /// Periodic re-announcement of held addresses (0 = off).
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "0s")]
    pub reannounce_interval: Duration,
    /// Probe again for other stations answering for an address this long after taking it over
    /// (comma-separated; `0s` = no follow-up probes): catches kube-proxy binding the address
    /// to `kube-ipvs0` after the takeover burst. One frame per address per instant.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = crate::lease::parse_duration,
        default_value = "10s,30s,60s"
    )]
    pub probe_after: Vec<Duration>,
    /// Restrict this node's eligible interfaces to those matching these regexes (anchored,
    /// repeatable). Container/virtual interfaces (lo, veth*, cali*, ...) are always excluded.
    #[arg(long = "interfaces", value_name = "REGEX")]
    pub interfaces: Vec<String>,
    /// Also serve Services of class `io.cilium/l2-announcer`.
    #[arg(long)]
    pub serve_cilium_class: bool,
    /// Delay between a watch event and the recomputation (bursts coalesce). With many
    /// Services the delay grows to four times the last recomputation's duration (at most 2 s),
    /// so a stream of events cannot keep a core busy.
    #[arg(long, value_parser = crate::lease::parse_duration, default_value = "50ms")]
    pub debounce: Duration,
    /// Do not write `L2Announcement` objects (who announces each Service; written only on
    /// takeovers and interface changes).
    #[arg(long)]
    pub no_l2_announcements: bool,
}

impl Args {
    /// Sticky mode in effect (`--no-sticky` turns it off).
    pub fn sticky(&self) -> bool {
        !self.no_sticky
    }

    /// Lease timings, validated.
    pub fn lease_config(&self) -> anyhow::Result<crate::lease::LeaseConfig> {
        let cfg = crate::lease::LeaseConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            rank_step: self.rank_step,
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }

    /// The lease engine's settings.
    pub fn engine_options(&self) -> anyhow::Result<crate::lease::EngineOptions> {
        let mut opts = crate::lease::EngineOptions::agent(
            &self.lease_namespace,
            &self.node_name,
            self.lease_config()?,
        );
        if let Some(d) = self.rebalance_after {
            opts.rebalance_after = (!d.is_zero()).then_some(d);
        }
        // The run loop acknowledges every `Released` it applied (the announcer stopped).
        opts.stop_before_release = true;
        Ok(opts)
    }

    /// The announcer's settings.
    pub fn announcer_config(&self) -> crate::net::AnnouncerConfig {
        crate::net::AnnouncerConfig {
            gratuitous_count: self.gratuitous_count,
            gratuitous_interval: self.gratuitous_interval,
            reannounce_interval: (!self.reannounce_interval.is_zero())
                .then_some(self.reannounce_interval),
            probe_after: self.probe_after.clone(),
            ..Default::default()
        }
    }
}

/// Runs the subcommand.
pub async fn run(args: Args) -> crate::CmdResult {
    if args.node_name.trim().is_empty() {
        anyhow::bail!("--node-name (or NODE_NAME) must not be empty");
    }
    run::run(args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_sticky_toggles() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let t = T::try_parse_from([
            "x",
            "--node-name",
            "n1",
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "500ms",
        ])
        .unwrap();
        assert!(t.a.sticky());
        assert_eq!(t.a.retry_period, Duration::from_millis(500));
        assert!(t.a.lease_config().is_ok());
        assert!(t.a.engine_options().unwrap().rebalance_after.is_some());
        let t = T::try_parse_from(["x", "--node-name", "n1", "--no-sticky"]).unwrap();
        assert!(!t.a.sticky());
        let t = T::try_parse_from(["x", "--node-name", "n1", "--rebalance-after", "0s"]).unwrap();
        assert_eq!(t.a.engine_options().unwrap().rebalance_after, None);
        let t = T::try_parse_from(["x", "--node-name", "n1", "--rebalance-after", "2m"]).unwrap();
        assert_eq!(
            t.a.engine_options().unwrap().rebalance_after,
            Some(Duration::from_secs(120))
        );
        let t = T::try_parse_from(["x", "--node-name", "n1", "--no-sticky", "--sticky"]).unwrap();
        assert!(t.a.sticky());
        let bad = T::try_parse_from([
            "x",
            "--node-name",
            "n1",
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "2s",
        ])
        .unwrap();
        assert!(bad.a.lease_config().is_err());
    }

    #[test]
    fn agent_and_controller_refuse_the_same_timings_with_the_same_message() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        // 220ms > 200ms, but not > 1.2 × 200ms: the agent used to accept what the controller refused.
        let flags = [
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "220ms",
            "--retry-period",
            "200ms",
        ];
        let agent = T::try_parse_from(["x", "--node-name", "n1"].into_iter().chain(flags)).unwrap();
        let err = agent.a.lease_config().unwrap_err().to_string();
        assert_eq!(
            err,
            "renew deadline (220ms) must be longer than 1.2 × the retry period (200ms)"
        );
        #[derive(clap::Parser)]
        struct C {
            #[command(flatten)]
            a: crate::controller::Args,
        }
        let ctl = C::try_parse_from(["x"].into_iter().chain(flags)).unwrap();
        assert_eq!(ctl.a.lease_timings().unwrap_err(), err);
        let ok = [
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "241ms",
            "--retry-period",
            "200ms",
        ];
        let agent = T::try_parse_from(["x", "--node-name", "n1"].into_iter().chain(ok)).unwrap();
        assert!(agent.a.lease_config().is_ok());
        assert!(C::try_parse_from(["x"].into_iter().chain(ok))
            .unwrap()
            .a
            .lease_timings()
            .is_ok());
    }

    #[test]
    fn follow_up_probes_default_and_override() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let t = T::try_parse_from(["x", "--node-name", "n1"]).unwrap();
        assert_eq!(
            t.a.announcer_config().probe_after,
            crate::net::probes::DEFAULT_AFTER.to_vec()
        );
        let t =
            T::try_parse_from(["x", "--node-name", "n1", "--probe-after", "1s,5s,30s"]).unwrap();
        assert_eq!(
            t.a.announcer_config().probe_after,
            [1, 5, 30].map(Duration::from_secs).to_vec()
        );
        let t = T::try_parse_from(["x", "--node-name", "n1", "--probe-after", "0s"]).unwrap();
        assert!(
            crate::net::probes::FollowUps::<u8>::new(&t.a.announcer_config().probe_after)
                .next_due()
                .is_none()
        );
        assert!(T::try_parse_from(["x", "--node-name", "n1", "--probe-after", "soon"]).is_err());
    }
}
