//! The in-memory Kubernetes API stand-in (`ferrolb dev-apiserver`).

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub async fn run(_args: Args) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}

pub mod managed;
pub mod patch;
pub mod schema_keys;
