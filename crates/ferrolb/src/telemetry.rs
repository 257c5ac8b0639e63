//! Logging (text or JSON) and the small HTTP endpoint every long-running part serves:
//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tracing_subscriber::EnvFilter;

/// Global logging flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "FERROLB_LOG_JSON")]
    pub log_json: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,ferrolb=debug`.
    #[arg(long, global = true, env = "FERROLB_LOG", default_value = "info")]
    pub log_level: String,
}

/// Installs the global tracing subscriber (logs go to stderr). Safe to call once.
pub fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if args.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Readiness flag shared between a component and its `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics` from `registry`, `/healthz` (always 200 while the process runs) and
/// `/readyz` (200 once `health` is ready) on `addr` until the task is dropped.
/// Returns the bound address (useful with port 0).
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: prometheus::Registry,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = respond(req.uri().path(), &registry, &health);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn respond(path: &str, registry: &prometheus::Registry, health: &Health) -> Response<Full<Bytes>> {
    let (code, ctype, body) = match path {
        "/metrics" => {
            let mut buf = Vec::new();
            let enc = prometheus::TextEncoder::new();
            match prometheus::Encoder::encode(&enc, &registry.gather(), &mut buf) {
                Ok(()) => (StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string().into_bytes(),
                ),
            }
        }
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", b"ok".to_vec()),
        "/readyz" if health.is_ready() => (StatusCode::OK, "text/plain", b"ok".to_vec()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"not ready".to_vec(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
