//! The lab's backend and prober (hidden `ferrolb echo`): the backend answers every HTTP request
//! with its node name; the prober fetches a URL on a fixed cadence over fresh connections and
//! prints `<epoch_ms> ok <body>` / `<epoch_ms> err <reason>` lines.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::probe::now_ms;

/// Flags of the hidden `ferrolb echo` command.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Serve: the name to answer with.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve: addresses to listen on (repeatable).
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Probe this URL instead of serving.
    #[arg(long)]
    pub probe: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    #[arg(long, default_value_t = 200)]
    pub timeout_ms: u64,
}

/// Runs the backend or the prober.
pub async fn run(args: EchoArgs) -> ferrolb::CmdResult {
    if let Some(url) = args.probe {
        probe_loop(&url, args.interval_ms, args.timeout_ms).await
    } else {
        let name = args.name.unwrap_or_else(|| "echo".into());
        if args.listen.is_empty() {
            anyhow::bail!("--listen is required to serve");
        }
        let mut tasks = Vec::new();
        for addr in args.listen {
            let listener = bind(addr)?;
            let name = name.clone();
            tasks.push(tokio::spawn(serve(listener, name)));
        }
        for t in tasks {
            t.await?;
        }
        Ok(std::process::ExitCode::SUCCESS)
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(sock.into())?)
}

async fn serve(listener: tokio::net::TcpListener, name: String) {
    let body = Bytes::from(format!("{name}\n"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let b = body.clone();
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(b))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn probe_loop(url: &str, interval_ms: u64, timeout_ms: u64) -> ferrolb::CmdResult {
    let uri: http::Uri = url.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host in {url}"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let addr = SocketAddr::new(host.parse()?, port);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let res = tokio::time::timeout(Duration::from_millis(timeout_ms), fetch(addr, &uri)).await;
        let line = match res {
            Ok(Ok(body)) => format!("{} ok {}", now_ms(), body.trim()),
            Ok(Err(e)) => format!("{} err {e}", now_ms()),
            Err(_) => format!("{} err timeout", now_ms()),
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(std::process::ExitCode::SUCCESS);
        }
    }
}

async fn fetch(addr: SocketAddr, uri: &http::Uri) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(uri.path())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
