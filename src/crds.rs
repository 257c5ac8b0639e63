//! `ferrolb crds`: the CustomResourceDefinitions generated from [`crate::api`].

use kube::CustomResourceExt;

use crate::api::{L2AnnouncementPolicy, LoadBalancerIPPool};

/// Command-line flags of `ferrolb crds`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Write one file per CRD into this directory instead of printing a multi-document stream.
    #[arg(long)]
    pub out_dir: Option<std::path::PathBuf>,
}

/// Every CRD, with the file name it is kept under in `crds/`.
pub fn all() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    vec![
        (
            "loadbalancerippools.ferrolb.io.yaml",
            LoadBalancerIPPool::crd(),
        ),
        (
            "l2announcementpolicies.ferrolb.io.yaml",
            L2AnnouncementPolicy::crd(),
        ),
    ]
}

/// One CRD rendered as YAML, exactly as `crds/` holds it.
pub fn render(crd: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(crd)?)
}

/// Runs `ferrolb crds`.
pub async fn run(args: Args) -> crate::CmdResult {
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, crd) in all() {
                std::fs::write(dir.join(file), render(&crd)?)?;
            }
        }
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (_, crd) in all() {
                // A closed pipe (`| head`) ends the output quietly instead of panicking.
                if write!(out, "---\n{}", render(&crd)?).is_err() {
                    break;
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
