//! Network-namespace topology and scenarios (`sudo ferrolb lab`).

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub async fn run(_args: Args) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}

/// Command-line flags of the hidden `ferrolb echo` backend.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {}

/// Runs the echo backend.
pub async fn run_echo(_args: EchoArgs) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}
