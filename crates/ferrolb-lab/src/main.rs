#![forbid(unsafe_code)]
//! `ferrolb`: one binary, one subcommand per part (see `ferrolb --help`).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferrolb",
    version,
    about = "Layer 2 LoadBalancer for bare-metal Kubernetes"
)]
struct Cli {
    #[command(flatten)]
    log: ferrolb::telemetry::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Assign addresses to LoadBalancer Services from LoadBalancerIPPools (leader-elected).
    Controller(ferrolb::controller::Args),
    /// Per-node announcer: elect per-address leases, answer ARP/NDP for the held ones.
    Agent(ferrolb::agent::Args),
    /// Offline: what each Service would get from the pools in the given manifests.
    Plan(ferrolb_lab::plan::Args),
    /// Print the CustomResourceDefinitions as YAML.
    Crds(ferrolb::crds::Args),
    /// Convert Cilium LB-IPAM / L2 announcement manifests into ferrolb ones.
    Convert(ferrolb_lab::convert::Args),
    /// In-memory Kubernetes API stand-in for tests and the lab.
    DevApiserver(kube_standin::Args),
    /// A whole cluster's L2 segment in network namespaces, with failover timed (needs root).
    Lab(ferrolb_lab::lab::Args),
    /// Answer ARP/NDP for fixed addresses on fixed interfaces, without Kubernetes
    /// (troubleshooting, and the packet tests).
    Announce(ferrolb::net::AnnounceArgs),
    /// Pools, Services with their addresses and announcing node, pending Services and why
    /// (also `kubectl ferrolb status` when installed as `kubectl-ferrolb`).
    Status(ferrolb_lab::ops::status::Args),
    /// Check a cluster for misconfigurations, each finding with its fix; exit 1 on findings
    /// (also `kubectl ferrolb doctor`).
    Doctor(ferrolb_lab::ops::doctor::Args),
    /// Tiny HTTP backend that answers with its name (the lab's echo Service).
    #[command(hide = true)]
    Echo(ferrolb_lab::lab::EchoArgs),
}

fn main() -> std::process::ExitCode {
    // Invoked as `kubectl-ferrolb` (a kubectl plugin): only the cluster commands.
    if std::env::args_os()
        .next()
        .is_some_and(|a| ferrolb_lab::ops::invoked_as_plugin(&a))
    {
        return ferrolb_lab::ops::plugin_main();
    }
    let cli = Cli::parse();
    ferrolb::telemetry::init_logging(&cli.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if matches!(cli.cmd, Cmd::Controller(_) | Cmd::Agent(_)) {
        // Whatever `TOKIO_WORKER_THREADS` or the node's core count say.
        runtime.worker_threads(ferrolb::daemon_worker_threads());
    }
    let rt = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Controller(a) => ferrolb::controller::run(a).await,
            Cmd::Agent(a) => ferrolb::agent::run(a).await,
            Cmd::Plan(a) => ferrolb_lab::plan::run(a).await,
            Cmd::Crds(a) => ferrolb::crds::run(a).await,
            Cmd::Convert(a) => ferrolb_lab::convert::run(a).await,
            Cmd::DevApiserver(a) => kube_standin::run(a).await,
            Cmd::Lab(a) => ferrolb_lab::lab::run(a).await,
            Cmd::Announce(a) => ferrolb::net::run_announce(a).await,
            Cmd::Status(a) => ferrolb_lab::ops::status::run(a).await,
            Cmd::Doctor(a) => ferrolb_lab::ops::doctor::run(a).await,
            Cmd::Echo(a) => ferrolb_lab::lab::run_echo(a).await,
        }
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
