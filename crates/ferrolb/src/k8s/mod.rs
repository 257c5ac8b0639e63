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

/// The daemons' client (agent, controller): from `--kubeconfig`, else the usual inference (see
/// [`config`]), keeping at most [`MAX_IDLE_CONNECTIONS`] idle (see [`daemon_client_from`]).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    daemon_client_from(config(kubeconfig, None).await?)
}

/// Idle connections a daemon keeps to the API server after a burst of requests.
pub const MAX_IDLE_CONNECTIONS: usize = 8;

/// kube's client as [`kube::Client::try_from`] builds it (TLS, timeouts, retries of server
/// errors, authentication, extra headers), but its connection pool keeps at most
/// [`MAX_IDLE_CONNECTIONS`] idle connections. kube's client speaks HTTP/1.1 only, one
/// connection per request in flight, and hyper's pool keeps every one of them for 90 s after
/// its last use: after a takeover burst (up to 64 lease writes in flight, beside the watches
/// and the `L2Announcement` writer) each agent held 74–93 connections to the API server, and
/// their buffers were ≈ 3.3 MB of its heap at 10,000 addresses (issue 16). The connections a
/// burst needs are still opened; the ones beyond the limit are closed when they fall idle.
///
/// A proxy or an exec plugin (whose client certificate kube's client is rebuilt for when it
/// expires) keeps kube's own construction.
pub fn daemon_client_from(config: kube::Config) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt as _;
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return client_from(config);
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let tls = config
        .rustls_https_connector_with_connector(http)
        .context("building the Kubernetes client's TLS connector")?;
    let mut connector = hyper_timeout::TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(
            config
                .auth_layer()
                .context("building the Kubernetes client's authentication")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("building the Kubernetes client's headers")?,
        )
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A client for `config`.
pub fn client_from(config: kube::Config) -> anyhow::Result<kube::Client> {
    kube::Client::try_from(config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A local HTTP/1.1 server answering every GET with a ConfigMap after `delay` (so requests
    /// overlap), counting the connections it has open.
    async fn counting_server(
        delay: std::time::Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::watch::Receiver<usize>,
        Arc<AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open_tx, open_rx) = tokio::sync::watch::channel(0usize);
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            let open_tx = Arc::new(open_tx);
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                acc.fetch_add(1, Ordering::SeqCst);
                open_tx.send_modify(|n| *n += 1);
                let open_tx = open_tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"default","resourceVersion":"1"}}"#;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        (addr, open_rx, accepted)
    }

    /// Sends `n` GETs at once through the client `make` builds for the server at `addr`, and
    /// checks every answer; returns the ConfigMap API for more.
    async fn burst(
        addr: std::net::SocketAddr,
        make: fn(kube::Config) -> anyhow::Result<kube::Client>,
        n: usize,
    ) -> kube::Api<k8s_openapi::api::core::v1::ConfigMap> {
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(make(config).unwrap(), "default");
        let gets = (0..n).map(|_| api.get("x"));
        for r in futures::future::join_all(gets).await {
            assert_eq!(r.unwrap().metadata.name.as_deref(), Some("x"));
        }
        api
    }

    #[tokio::test]
    async fn the_daemon_client_keeps_few_idle_connections_after_a_burst() {
        let (addr, mut open, accepted) =
            counting_server(std::time::Duration::from_millis(200)).await;
        let n = 32;
        let api = burst(addr, super::daemon_client_from, n).await;
        assert!(
            accepted.load(Ordering::SeqCst) >= n / 2,
            "the burst ran in parallel: {} connections",
            accepted.load(Ordering::SeqCst)
        );
        // The connections beyond the limit are closed as they fall idle.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            open.wait_for(|n| *n <= super::MAX_IDLE_CONNECTIONS),
        )
        .await
        .expect("idle connections closed down to the limit")
        .unwrap();
        // And the client still works on what it kept.
        assert!(api.get("x").await.is_ok());
    }

    #[tokio::test]
    async fn kube_default_client_keeps_every_connection_of_a_burst() {
        // What the daemon client changes: kube's own keeps them all idle (90 s).
        let (addr, open, _) = counting_server(std::time::Duration::from_millis(200)).await;
        // Every connection was accepted before its answer; none is closed while kept idle.
        let _api = burst(addr, super::client_from, 32).await;
        assert!(
            *open.borrow() > super::MAX_IDLE_CONNECTIONS,
            "kube's client kept {} open",
            *open.borrow()
        );
    }

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
