//! ARP/NDP codecs (fuzzable), raw-socket I/O, interface selection.

/// Command-line flags of `ferrolb announce`.
#[derive(clap::Args, Debug, Clone)]
pub struct AnnounceArgs {}

/// Runs `ferrolb announce`.
pub async fn run_announce(_args: AnnounceArgs) -> crate::CmdResult {
    anyhow::bail!("not yet implemented")
}
