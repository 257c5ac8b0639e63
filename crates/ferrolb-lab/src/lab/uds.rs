//! A `kube::Client` over a Unix socket. The lab runs in the host's namespace and the API server
//! inside the segment; a filesystem socket is the one path between them that touches no host
//! interface.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client whose every request opens a connection to the API server's Unix socket.
pub fn client(path: PathBuf) -> kube::Client {
    let svc = tower::service_fn(move |mut req: http::Request<kube::client::Body>| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&path).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("ferrolb-lab"),
            );
            let resp = sender.send_request(req).await?;
            Ok::<_, BoxError>(resp)
        }
    });
    kube::Client::new(svc, "default")
}

/// One raw HTTP exchange over the socket (for the stand-in's admin and metrics endpoints).
pub async fn request(
    path: &std::path::Path,
    method: http::Method,
    uri: &str,
    body: Option<String>,
) -> anyhow::Result<(http::StatusCode, String)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(TokioIo::new(stream))
            .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "ferrolb-lab")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
