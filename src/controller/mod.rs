//! The LB-IPAM controller: watches -> allocator -> Service/pool status, Events.

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub async fn run(_args: Args) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}
