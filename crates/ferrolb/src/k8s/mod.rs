//! What every part of ferrolb needs of Kubernetes, written once: the client constructor,
//! Service helpers (ingress and external addresses, the classes we serve), condition
//! bookkeeping and the Event builder.

pub mod conditions;
pub mod events;
pub mod service;

use std::path::Path;

use anyhow::Context as _;

/// The client configuration: `kubeconfig` if given (its current context, or `context`), else
/// the named `context` of the default kubeconfig, else the usual inference (in-cluster,
/// `$KUBECONFIG`, `~/.kube/config`).
pub async fn config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Config> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))
        }
        (None, Some(ctx)) => kube::Config::from_kubeconfig(&opts)
            .await
            .with_context(|| format!("loading context {ctx:?} of the default kubeconfig")),
        (None, None) => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig or run in a cluster"),
    }
}

/// A client from `--kubeconfig`, else the usual inference (see [`config`]).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    client_from(config(kubeconfig, None).await?)
}

/// A client for `config`.
pub fn client_from(config: kube::Config) -> anyhow::Result<kube::Client> {
    kube::Client::try_from(config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_unreadable_kubeconfig_is_a_clear_error() {
        let path = std::path::Path::new("/nonexistent/ferrolb-kubeconfig");
        let Err(err) = super::client(Some(path)).await else {
            panic!("a client from a missing kubeconfig");
        };
        assert!(
            format!("{err:#}").starts_with("reading kubeconfig /nonexistent/ferrolb-kubeconfig"),
            "{err:#}"
        );
    }
}
