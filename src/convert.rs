//! `ferrolb convert`: Cilium LB-IPAM / L2 announcement manifests to ferrolb ones.

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub async fn run(_args: Args) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}
