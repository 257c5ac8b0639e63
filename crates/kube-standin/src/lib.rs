#![forbid(unsafe_code)]
//! The in-memory Kubernetes API stand-in (`ferrolb dev-apiserver`).
//!
//! One handler on hyper 1 types serves both an in-process [`kube::Client`] (a `tower::Service`,
//! no sockets: [`ApiServer::client`]) and plain HTTP ([`ApiServer::serve`], and
//! [`ApiServer::serve_unix`] for a Unix socket). It follows the golden transcripts of a real
//! kube-apiserver v1.36 (`tests/golden`, replayed by `tests/apiserver.rs`): one global
//! resourceVersion, 409 conflicts, `/status` subresources, label/field selectors, paging with
//! kube-apiserver's continue tokens, watches with bookmarks and 410 Expired from a bounded
//! per-resource event history (continue pages and exact-RV lists are snapshots rebuilt from it;
//! beyond it they get 410), Status error bodies, Service defaulting and ClusterIP/nodePort
//! allocation (ClusterIPs from 203.0.113.0/24 and 2001:db8:fff::/108), Lease MicroTime and
//! Event validation, CRDs that register their resources (schema defaults, pruning, validation),
//! patch types and server-side apply (engines in `patch_engines.rs`/`managed.rs`), discovery (legacy
//! and aggregated), OpenAPI v3 (and a minimal v2 protobuf document for old kubectl) and Table
//! output for kubectl.
//!
//! ```text
//! ferrolb dev-apiserver --listen 127.0.0.1:6443 --kubeconfig-out kc.yaml --crds crds/
//! kubectl --kubeconfig kc.yaml get svc -A
//! curl -s http://127.0.0.1:6443/metrics          # ferrolb_apiserver_requests_total{verb,resource,client,code}
//! curl -s -XPOST http://127.0.0.1:6443/_ferrolb/faults -d '{"kind":"refuse","seconds":10}'
//! curl -s -XPOST http://127.0.0.1:6443/_ferrolb/faults -d '{"kind":"error","code":503,"client":"node-a"}'
//! curl -s -XDELETE http://127.0.0.1:6443/_ferrolb/faults     # all faults off
//! ```
//!
//! Test hooks:
//! - request counters per client/verb/resource/code ([`ApiServer::request_count`],
//!   [`ApiServer::request_counts`], `/metrics`); verbs are get, list, watch, create, update,
//!   patch, delete, deletecollection (and `fault` for answers made by an error fault);
//! - fault injection ([`ApiServer::faults`], admin JSON at `/_ferrolb/faults`, `--fault JSON`;
//!   see [`faults`] for the JSON shape). The admin endpoint, `/metrics` and `/healthz` are never
//!   affected by faults.
//!
//! The client identity is the bearer token (`ApiServer::kubeconfig(url, identity)` writes it;
//! `client_as(identity)` sets it in-process); requests without one count as `anonymous`.
//!
//! Not implemented (differences a client could notice): protobuf/CBOR bodies (415), YAML
//! responses, authn/authz, finalizers and graceful deletion (deletes are immediate; deleting a
//! namespace deletes its objects at once), ownerReference garbage collection, the watch
//! cache's 429 after a restart, CRD conversion between versions (objects are relabelled only), `x-kubernetes-
//! validations` (CEL) rules.

pub mod body;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod events;
pub mod faults;
pub mod http;
pub mod managed;
pub mod patch_engines;
pub mod patch_request;
pub mod resources;
pub mod schema_keys;
pub mod selectors;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

use self::body::Body;
use self::error::ApiError;
use self::faults::{FaultSpec, Faults};
use self::http::{error_response, json_response, text_response, Accounting, Hangup};
use self::resources::ResourceDef;
use self::store::{State, WriteCtx};
use ::http::{Method, Request, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::faults::{ClientFaults, FaultKind};

/// Default number of events kept per resource for watches.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Shared server internals.
pub struct Inner {
    state: Mutex<State>,
    pub(crate) faults: Faults,
    counters: Mutex<HashMap<(String, String, String, u16), u64>>,
}

impl Inner {
    /// Locks the state (a poisoned lock is recovered: the state is always left consistent).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Strips server-allocated Service fields the request did not carry (they are not owned by
/// the writer: README item 4).
fn strip_allocated(obj: &mut Value, user: &Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for k in [
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "healthCheckNodePort",
    ] {
        if user.pointer(&format!("/spec/{k}")).is_none() {
            spec.remove(k);
        }
    }
    // ports are matched by (port, protocol), their merge key, not by position
    let user_ports: Vec<&Value> = user
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut() {
            let sent = user_ports.iter().any(|u| {
                u.get("port") == p.get("port")
                    && u.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    && u.get("nodePort").is_some()
            });
            if !sent {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
    }
}

/// managedFields bookkeeping of a non-apply write (apply computes its own).
pub(crate) fn managed_hook(
    old: Option<&Value>,
    new: &mut Value,
    user: &Value,
    def: &ResourceDef,
    ctx: &WriteCtx,
    sub: Option<&str>,
) {
    if ctx.operation == "Apply" || ctx.manager.is_empty() {
        return;
    }
    if def.kind != "Service" || def.custom {
        // Nothing to strip: the fields are computed on the object itself (no copies).
        managed::update_managed_fields(
            old,
            new,
            &ctx.manager,
            &ctx.operation,
            &def.api_version(),
            sub,
            &ctx.now,
        );
        return;
    }
    let mut view = new.clone();
    let mut old_view = old.cloned();
    strip_allocated(&mut view, user);
    if let Some(o) = old_view.as_mut() {
        strip_allocated(o, user);
    }
    managed::update_managed_fields(
        old_view.as_ref(),
        &mut view,
        &ctx.manager,
        &ctx.operation,
        &def.api_version(),
        sub,
        &ctx.now,
    );
    let mf = view.pointer("/metadata/managedFields").cloned();
    if let Some(md) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        match mf {
            Some(mf) if mf.as_array().is_some_and(|a| !a.is_empty()) => {
                md.insert("managedFields".into(), mf);
            }
            _ => {
                md.remove("managedFields");
            }
        }
    }
}

/// The API stand-in. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ApiServer {
    /// A server with the built-in resources and the `default`, `kube-system`, `kube-public`
    /// and `kube-node-lease` namespaces.
    pub fn new() -> Self {
        Self::with_history_limit(DEFAULT_HISTORY)
    }

    /// Like [`ApiServer::new`], keeping only `n` watch events per resource (older RVs → 410).
    pub fn with_history_limit(n: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(n)),
                faults: Faults::default(),
                counters: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Registers (creates or replaces) a CustomResourceDefinition, as if created through the API.
    pub fn register_crd(
        &self,
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> anyhow::Result<()> {
        let mut v = serde_json::to_value(crd)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), json!("apiextensions.k8s.io/v1"));
            o.insert("kind".into(), json!("CustomResourceDefinition"));
        }
        self.register_crd_value(v)
    }

    /// [`ApiServer::register_crd`] from a JSON/YAML value.
    pub fn register_crd_value(&self, mut v: Value) -> anyhow::Result<()> {
        let mut st = self.inner.lock();
        let def = st
            .registry
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .ok_or_else(|| anyhow::anyhow!("CRD resource missing"))?;
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ctx = WriteCtx {
            manager: "ferrolb".into(),
            now: store::now_time(),
            operation: "Update".into(),
            ..Default::default()
        };
        let res = if st.get(&def, "", &name).is_some() {
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            st.update(&def, "", &name, v, false, None, &ctx)
        } else {
            st.create(&def, None, v, &ctx)
        };
        res.map(|_| ()).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.body
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("invalid CRD")
            )
        })
    }

    /// An in-process client (identity `default`). Must be called inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        self.client_as("default")
    }

    /// An in-process client whose requests carry `identity` (for per-client faults/counters).
    pub fn client_as(&self, identity: &str) -> kube::Client {
        let inner = self.inner.clone();
        let identity = identity.to_string();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let inner = inner.clone();
            let identity = identity.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| Box::new(e) as BoxError)?
                    .to_bytes();
                let req = Request::from_parts(parts, bytes);
                handle(&inner, req, &identity)
                    .await
                    .map_err(|h| -> BoxError {
                        Box::new(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            h,
                        ))
                    })
            }
        });
        kube::Client::new(svc, "default")
    }

    /// Serves HTTP on `addr` (port 0 = any); returns the bound address and the server task.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = bind(addr)?;
        let local = listener.local_addr()?;
        let inner = self.inner.clone();
        let task = tokio::spawn(accept_loop(inner, listener, local));
        Ok((local, task))
    }

    /// Serves the same API on a Unix socket (e.g. for the admin endpoint and `/metrics` when the
    /// TCP listener lives in another network namespace). Faults never close this listener.
    pub fn serve_unix(
        &self,
        path: &std::path::Path,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let inner = self.inner.clone();
        Ok(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_conn(inner.clone(), stream));
            }
        }))
    }

    /// A kubeconfig (YAML) for `server_url`, with `identity` as the bearer token.
    pub fn kubeconfig(server_url: &str, identity: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrolb-dev\n  cluster:\n    server: {server_url}\ncontexts:\n- name: ferrolb-dev\n  context:\n    cluster: ferrolb-dev\n    user: {identity}\n    namespace: default\ncurrent-context: ferrolb-dev\nusers:\n- name: {identity}\n  user:\n    token: {identity}\n"
        )
    }

    /// The fault injection handle.
    pub fn faults(&self) -> Faults {
        self.inner.faults.clone()
    }

    /// Requests with this verb (get/list/watch/create/update/patch/delete) on this resource
    /// (plural), all clients and codes.
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        self.inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((_, v, r, _), _)| v == verb && r == resource)
            .map(|(_, n)| *n)
            .sum()
    }

    /// (client, verb, resource, count) for every combination seen.
    pub fn request_counts(&self) -> Vec<(String, String, String, u64)> {
        let mut m: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
        for ((c, v, r, _), n) in self
            .inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *m.entry((c.clone(), v.clone(), r.clone())).or_default() += n;
        }
        m.into_iter().map(|((c, v, r), n)| (c, v, r, n)).collect()
    }

    /// Sends one raw request through the handler (tests, tools): returns status, headers and
    /// the whole body (do not use for watches: the body only ends with the watch).
    pub async fn call(
        &self,
        req: Request<Bytes>,
        identity: &str,
    ) -> Result<(u16, ::http::HeaderMap, Bytes), String> {
        let resp = handle(&self.inner, req, identity)
            .await
            .map_err(|h| h.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }
}

fn metrics_text(inner: &Inner) -> String {
    let mut out = String::from("# HELP ferrolb_apiserver_requests_total API requests served, by verb, resource, client and code.\n# TYPE ferrolb_apiserver_requests_total counter\n");
    let c = inner.counters.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = c.iter().collect();
    rows.sort();
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    for ((client, verb, res, code), n) in rows {
        out.push_str(&format!(
            "ferrolb_apiserver_requests_total{{verb=\"{}\",resource=\"{}\",client=\"{}\",code=\"{code}\"}} {n}\n",
            esc(verb),
            esc(res),
            esc(client)
        ));
    }
    out
}

fn admin(inner: &Inner, req: &Request<Bytes>, path: &str) -> Response<Body> {
    let f = &inner.faults;
    let rest = path
        .trim_start_matches("/_ferrolb/faults")
        .trim_matches('/');
    match (req.method(), rest) {
        (&Method::GET, "") => {
            let list: Vec<Value> = f
                .list()
                .into_iter()
                .map(|(id, s)| {
                    let mut v = serde_json::to_value(&s).unwrap_or(json!({}));
                    if let Some(m) = v.as_object_mut() {
                        m.insert("id".into(), json!(id));
                    }
                    v
                })
                .collect();
            json_response(200, &json!({"faults": list}), &[])
        }
        (&Method::POST, "") => match serde_json::from_slice::<FaultSpec>(req.body()) {
            Ok(s) => json_response(201, &json!({"id": f.add(s)}), &[]),
            Err(e) => json_response(400, &json!({"error": e.to_string()}), &[]),
        },
        (&Method::DELETE, "") => {
            f.clear();
            json_response(200, &json!({"faults": []}), &[])
        }
        (&Method::DELETE, id) => match id.parse::<u64>() {
            Ok(id) if f.remove(id) => json_response(200, &json!({"removed": id}), &[]),
            _ => json_response(404, &json!({"error": "no such fault"}), &[]),
        },
        _ => json_response(405, &json!({"error": "method not allowed"}), &[]),
    }
}

/// Handles one request end to end: admin paths, faults, routing, counters.
pub async fn handle(
    inner: &Arc<Inner>,
    req: Request<Bytes>,
    client: &str,
) -> Result<Response<Body>, Hangup> {
    let path = req.uri().path().to_string();
    if path.starts_with("/_ferrolb/faults") {
        return Ok(admin(inner, &req, &path));
    }
    if path == "/metrics" {
        return Ok(text_response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(inner),
        ));
    }
    let v = inner.faults.for_client(client);
    if v.refuse {
        return Err(Hangup("refuse"));
    }
    if v.drop {
        return Err(Hangup("drop"));
    }
    if !v.latency.is_zero() {
        tokio::time::sleep(v.latency).await;
    }
    let mut acct = Accounting::default();
    let query = req.uri().query().unwrap_or_default();
    let param = |k: &str| {
        query.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
    };
    let resumed_watch = matches!(param("watch").as_deref(), Some("true" | "1"))
        && param("resourceVersion").is_some_and(|rv| !rv.is_empty() && rv != "0");
    let resp = if v.expire_watches && resumed_watch {
        // After a restart the watch cache starts over: a watch from an old resourceVersion
        // is answered 410 and the client relists.
        acct.verb = "fault".into();
        acct.resource = path.clone();
        let rv = param("resourceVersion").unwrap_or_default();
        error_response(&ApiError::status(
            410,
            "Expired",
            &format!("too old resource version: {rv} (restarted)"),
            Some(json!({})),
        ))
    } else if let Some(code) = v.error {
        acct.verb = "fault".into();
        acct.resource = path.clone();
        let (reason, msg) = match code {
            500 => ("InternalError", "Internal error occurred: injected fault"),
            403 => (
                "Forbidden",
                "forbidden: the authorizer has not synced yet (restarting; injected fault)",
            ),
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later (restarting; injected fault)",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted (restarting; injected fault)",
            ),
            _ => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request (injected fault)",
            ),
        };
        let mut resp = error_response(&ApiError::status(code, reason, msg, Some(json!({}))));
        if code == 429 {
            resp.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        }
        resp
    } else {
        match http::route(inner, req, client, &mut acct).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    };
    if !acct.verb.is_empty() {
        let code = resp.status().as_u16();
        *inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((client.to_string(), acct.verb, acct.resource, code))
            .or_default() += 1;
    }
    Ok(resp)
}

fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(sock.into())?)
}

async fn accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener, local: SocketAddr) {
    let mut listener = Some(listener);
    let mut faults_rx = inner.faults.subscribe();
    loop {
        if inner.faults.refuse_all() {
            // close the listening socket: connections are refused by the kernel
            listener = None;
            let expiry = inner.faults.next_expiry();
            tokio::select! {
                r = faults_rx.changed() => { if r.is_err() { return; } }
                _ = async { match expiry { Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await, None => std::future::pending().await } } => {}
            }
            continue;
        }
        if listener.is_none() {
            match bind(local) {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-open the listener; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        tokio::select! {
            r = faults_rx.changed() => { if r.is_err() { return; } }
            acc = l.accept() => {
                let Ok((stream, _)) = acc else { continue };
                tokio::spawn(serve_conn(inner.clone(), stream));
            }
        }
    }
}

/// Serves one connection (HTTP/1.1 or h2c) with [`handle`].
async fn serve_conn<S>(inner: Arc<Inner>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let inner = inner.clone();
        async move {
            let client = http::identity_of(&req);
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Err(std::io::Error::other(e)),
            };
            let req = Request::from_parts(parts, bytes);
            match handle(&inner, req, &client).await {
                Ok(r) => Ok(r),
                Err(h) => Err(std::io::Error::other(h)),
            }
        }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig pointing at this server here.
    #[arg(long)]
    pub kubeconfig_out: Option<std::path::PathBuf>,
    /// Also serve on this Unix socket (admin endpoint and /metrics reachable from another
    /// network namespace; never closed by faults).
    #[arg(long)]
    pub listen_unix: Option<std::path::PathBuf>,
    /// Identity (bearer token) written into the kubeconfig.
    #[arg(long, default_value = "admin")]
    pub identity: String,
    /// Register every CustomResourceDefinition found in the YAML files of this directory.
    #[arg(long)]
    pub crds: Option<std::path::PathBuf>,
    /// A fault rule active from the start (JSON as for `/_ferrolb/faults`, e.g.
    /// `{"kind":"latency","latencyMs":50}`); repeatable.
    #[arg(long = "fault", value_name = "JSON")]
    pub faults: Vec<String>,
    /// Watch events kept per resource (older resourceVersions get 410 Expired).
    #[arg(long, default_value_t = DEFAULT_HISTORY)]
    pub history: usize,
}

/// Runs the subcommand.
pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    use serde::Deserialize;
    let server = ApiServer::with_history_limit(args.history);
    for f in &args.faults {
        let spec: FaultSpec =
            serde_json::from_str(f).map_err(|e| anyhow::anyhow!("--fault {f}: {e}"))?;
        server.faults().add(spec);
    }
    if let Some(dir) = &args.crds {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        entries.sort();
        for p in entries {
            let text = std::fs::read_to_string(&p)?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v =
                    Value::deserialize(doc).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                if v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                    server
                        .register_crd_value(v)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                }
            }
        }
    }
    let (addr, task) = server.serve(args.listen).await?;
    let _unix = match &args.listen_unix {
        Some(p) => {
            let t = server.serve_unix(p)?;
            println!(
                "ferrolb dev-apiserver also listening on unix:{}",
                p.display()
            );
            Some(t)
        }
        None => None,
    };
    let url = format!("http://{addr}");
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, ApiServer::kubeconfig(&url, &args.identity))?;
    }
    println!("ferrolb dev-apiserver listening on {url}");
    tokio::select! {
        _ = task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(std::process::ExitCode::SUCCESS)
}
