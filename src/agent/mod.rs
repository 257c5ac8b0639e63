//! The per-node agent: eligibility (policies, nodes, endpoints), per-address elections, the announcer.

pub mod eligibility;
pub mod holdings;
pub mod metrics;
pub mod report;

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub async fn run(_args: Args) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}
