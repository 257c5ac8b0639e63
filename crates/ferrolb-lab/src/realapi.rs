//! A real kube-apiserver (v1.36.2) and etcd (3.6) as a test and lab backend, from
//! `../shared/kube/` beside the repository (see its README).
//!
//! - [`KubeBins::locate`]: finds `kube-apiserver.xz`/`etcd.xz` (`$FERROLB_KUBE_DIR`, else
//!   `<workspace>/../shared/kube`), decompresses them once into `target/kube-bin/`
//!   (`$FERROLB_KUBE_CACHE` overrides) and checks them against `SHA256SUMS`. `Ok(None)` when the
//!   directory is absent: callers print [`SKIP`] and pass.
//! - [`RealApi`]: etcd + kube-apiserver inside a network namespace (its own `flt<PID>-<tag>kapi`,
//!   or the lab's api namespace), TLS from `--cert-dir`, a token file (admin in
//!   `system:masters`), RBAC, service-account keys. In-process clients reach it through a thread
//!   that entered the namespace (setns) and dials for them: no host interface is touched.
//!   Everything is killed and removed on drop; children also die with their spawning thread
//!   (`setpriv --pdeathsig KILL`), which lives as long as the `RealApi`.
//! - [`shared`]: one server per test binary (each start costs 5–40 s on 2 loaded cores); tests
//!   keep apart by namespace and object names.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt as _;
use sha2::Digest as _;

use crate::lab::procs::Proc;
use crate::netns::Netns;

/// What a test prints (and then passes) when the binaries are not there.
pub const SKIP: &str = "skipped: no kube-apiserver (../shared/kube absent)";

/// The port kube-apiserver listens on.
pub const PORT: u16 = 6443;

/// The directory holding `kube-apiserver.xz`, `etcd.xz` and `SHA256SUMS`, if present:
/// `$FERROLB_KUBE_DIR`, else `../shared/kube` relative to the workspace root.
pub fn shared_kube_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("FERROLB_KUBE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kube"),
    };
    dir.join("kube-apiserver.xz").is_file().then_some(dir)
}

/// The decompressed, checked binaries.
#[derive(Debug, Clone)]
pub struct KubeBins {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
}

impl KubeBins {
    /// `Ok(None)` when `../shared/kube` is absent; an error when it is there but broken
    /// (checksum mismatch, xz missing...).
    pub fn locate() -> anyhow::Result<Option<KubeBins>> {
        // One unpacking at a time in this process (other processes: see `unpack`).
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(src) = shared_kube_dir() else {
            return Ok(None);
        };
        let cache = match std::env::var_os("FERROLB_KUBE_CACHE") {
            Some(d) => PathBuf::from(d),
            None => target_dir().join("kube-bin"),
        };
        std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
        let sums = std::fs::read_to_string(src.join("SHA256SUMS"))
            .with_context(|| format!("reading {}/SHA256SUMS", src.display()))?;
        let etcd = unpack(&src, &cache, "etcd", &sums)?;
        let apiserver = unpack(&src, &cache, "kube-apiserver", &sums)?;
        Ok(Some(KubeBins { etcd, apiserver }))
    }
}

/// The build directory: `$CARGO_TARGET_DIR` (at run time, then at build time), else the
/// workspace's `target/`.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = option_env!("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// The expected SHA256 of `name` in a `sha256sum` listing.
fn expected_sum(sums: &str, name: &str) -> anyhow::Result<String> {
    sums.lines()
        .find_map(|l| {
            let (sum, file) = l.split_once(char::is_whitespace)?;
            (file.trim().trim_start_matches('*') == name).then(|| sum.to_ascii_lowercase())
        })
        .with_context(|| format!("SHA256SUMS lists no {name}"))
}

/// Decompresses `src/NAME.xz` into `cache/NAME` unless a checked copy is there already. The
/// stamp `NAME.sha256` records the sum and size of the checked copy.
fn unpack(src: &Path, cache: &Path, name: &str, sums: &str) -> anyhow::Result<PathBuf> {
    let want = expected_sum(sums, name)?;
    let dest = cache.join(name);
    let stamp = cache.join(format!("{name}.sha256"));
    if let (Ok(s), Ok(meta)) = (std::fs::read_to_string(&stamp), std::fs::metadata(&dest)) {
        if s.trim() == format!("{want} {}", meta.len()) {
            return Ok(dest);
        }
    }
    // Decompress to a private name and rename: concurrent test binaries may race here.
    let tmp = cache.join(format!("{name}.tmp.{}", random_token()));
    let mut child = Command::new("xz")
        .args(["-dc"])
        .arg(src.join(format!("{name}.xz")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running xz (install xz-utils)")?;
    let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    {
        let mut stdout = child.stdout.take().context("xz stdout")?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stdout.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("xz -dc {name}.xz failed ({status})");
    }
    let got = format!("{:x}", hasher.finalize());
    if got != want {
        let _ = std::fs::remove_file(&tmp);
        bail!("{name}: SHA256 {got} does not match SHA256SUMS ({want})");
    }
    drop(out);
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &dest)?;
    std::fs::write(&stamp, format!("{want} {size}\n"))?;
    Ok(dest)
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that spawns (and so is the parent-death anchor of) the server's processes; lives as
/// long as its sender.
struct Keeper {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl Keeper {
    fn start() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kube-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(Keeper { tx: Mutex::new(tx) })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Box::new(move || {
                let _ = rtx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("the keeper thread is gone"))?;
        rrx.recv().context("the keeper thread died")
    }
}

type DialReply = tokio::sync::oneshot::Sender<std::io::Result<TcpStream>>;

/// A thread inside the server's network namespace that opens TCP connections for in-process
/// clients (a socket stays in the namespace it was created in).
#[derive(Clone)]
struct Dialer {
    tx: mpsc::Sender<(SocketAddr, DialReply)>,
}

impl Dialer {
    fn start(ns_name: &str) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{ns_name}");
        let (tx, rx) = mpsc::channel::<(SocketAddr, DialReply)>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("kube-dialer".into())
            .spawn(move || {
                let entered = File::open(&path)
                    .and_then(|f| {
                        rustix::thread::move_into_link_name_space(
                            f.as_fd(),
                            Some(rustix::thread::LinkNameSpaceType::Network),
                        )
                        .map_err(std::io::Error::from)
                    })
                    .with_context(|| format!("entering {path}"));
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                for (addr, reply) in rx {
                    // Threads inherit the namespace: one per connection, so a slow connect
                    // never holds up the others.
                    std::thread::spawn(move || {
                        let _ =
                            reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
                    });
                }
            })?;
        ready_rx.recv().context("the dialer thread died")??;
        Ok(Dialer { tx })
    }
}

impl tower::Service<http::Uri> for Dialer {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tx = self.tx.clone();
        Box::pin(async move {
            let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| bad(format!("no host in {uri}")))?;
            let ip: Ipv4Addr = host
                .parse()
                .map_err(|_| bad(format!("{host}: the dialer takes IPv4 literals only")))?;
            let addr = SocketAddr::from((ip, uri.port_u16().unwrap_or(443)));
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            tx.send((addr, rtx))
                .map_err(|_| std::io::Error::other("the dialer thread is gone"))?;
            let s = rrx
                .await
                .map_err(|_| std::io::Error::other("the dialer dropped a request"))??;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(s)?))
        })
    }
}

/// Where the server runs.
enum Place {
    /// Its own namespace (tests): created here, removed on drop.
    Own(Netns),
    /// A namespace someone else owns (the lab's api namespace).
    In(String),
}

impl Place {
    fn name(&self) -> &str {
        match self {
            Place::Own(ns) => ns.name(),
            Place::In(n) => n,
        }
    }
}

/// etcd + kube-apiserver. Dropping it kills both and removes its directory (and namespace).
pub struct RealApi {
    // Field order = drop order: processes first, then the threads, the directory, the namespace.
    apiserver: Mutex<Option<Proc>>,
    etcd: Mutex<Option<Proc>>,
    keeper: Keeper,
    dialer: Dialer,
    bins: KubeBins,
    /// Address kube-apiserver binds and advertises (inside the namespace).
    pub ip: Ipv4Addr,
    admin_token: String,
    ca_pem: String,
    dir: tempfile::TempDir,
    place: Place,
}

impl std::fmt::Debug for RealApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealApi")
            .field("ns", &self.place.name())
            .field("ip", &self.ip)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Address of the server in a namespace of its own (a documentation address on `lo`).
const OWN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

impl RealApi {
    /// Starts etcd and kube-apiserver in a new namespace `flt<PID>-<tag>kapi`; returns when
    /// `/readyz` answers `ok`.
    pub fn start(bins: KubeBins, tag: &str) -> anyhow::Result<Self> {
        crate::netns::cleanup_stale();
        let ns = Netns::create(&format!("{tag}kapi"))?;
        ns.ip(&["addr", "add", &format!("{OWN_IP}/32"), "dev", "lo"])?;
        Self::start_at(bins, Place::Own(ns), OWN_IP)
    }

    /// Starts them inside an existing namespace (e.g. the lab's api namespace), binding `ip`.
    pub fn start_in(bins: KubeBins, ns_name: &str, ip: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_at(bins, Place::In(ns_name.to_string()), ip)
    }

    fn start_at(bins: KubeBins, place: Place, ip: Ipv4Addr) -> anyhow::Result<Self> {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrolb-kube-{}-", std::process::id()))
            .tempdir()?;
        crate::netns::run(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(dir.path().join("sa.key"))
                .arg("2048"),
        )
        .context("openssl genrsa (install openssl)")?;
        let admin_token = random_token();
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{admin_token},ferrolb-admin,ferrolb-admin-uid,\"system:masters\"\n"),
        )?;
        let keeper = Keeper::start()?;
        let dialer = Dialer::start(place.name())?;
        let mut api = RealApi {
            apiserver: Mutex::new(None),
            etcd: Mutex::new(None),
            keeper,
            dialer,
            bins,
            ip,
            admin_token,
            ca_pem: String::new(),
            dir,
            place,
        };
        api.start_etcd()?;
        api.start_apiserver()?;
        api.ca_pem = ca_of(&api.dir.path().join("certs/apiserver.crt"))?;
        Ok(api)
    }

    fn spawn(&self, name: &str, program: &Path, args: Vec<String>) -> anyhow::Result<Proc> {
        let ns = self.place.name().to_string();
        let name = name.to_string();
        let log = self.dir.path().join(format!("{name}.log"));
        let mut full: Vec<String> = vec!["netns".into(), "exec".into(), ns];
        full.push(program.display().to_string());
        full.extend(args);
        // `ip netns exec` execs the program: the Proc's PID is the server's.
        self.keeper
            .run(move || Proc::spawn(&name, None, Path::new("ip"), &full, &[], &log))?
    }

    fn start_etcd(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let args = vec![
            "--name".into(),
            "ferrolb".into(),
            "--data-dir".into(),
            d.join("etcd").display().to_string(),
            "--listen-client-urls".into(),
            "http://127.0.0.1:2379".into(),
            "--advertise-client-urls".into(),
            "http://127.0.0.1:2379".into(),
            "--listen-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        let mut p = self.spawn("etcd", &self.bins.etcd, args)?;
        p.wait_log("etcd ready", Duration::from_secs(60))?;
        *self.etcd.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(())
    }

    /// Starts kube-apiserver (again, after [`Self::stop_apiserver`]) and waits for `/readyz`.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let ip = self.ip;
        let sa = d.join("sa.key").display().to_string();
        let args: Vec<String> = vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={ip}"),
            format!("--advertise-address={ip}"),
            format!("--secure-port={PORT}"),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={sa}"),
            format!("--service-account-signing-key-file={sa}"),
            "--api-audiences=https://kubernetes.default.svc".into(),
            // Dual-stack, the stand-in's ranges: with IPv4 only, IPv6 Services are refused
            // ("not configured on this cluster") where the stand-in accepts them.
            "--service-cluster-ip-range=203.0.113.0/24,2001:db8:fff::/108".into(),
            "--profiling=false".into(),
        ];
        let n = std::fs::read_dir(d)?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("kube-apiserver")
            })
            .count();
        let p = self.spawn(&format!("kube-apiserver-{n}"), &self.bins.apiserver, args)?;
        *self.apiserver.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        self.wait_ready(Duration::from_secs(120))
    }

    /// Stops kube-apiserver with a signal (`KILL`, `TERM`) and waits until it exited; etcd
    /// keeps running.
    pub fn stop_apiserver(&self, sig: &str) -> anyhow::Result<()> {
        let p = self
            .apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut p) = p {
            p.signal(sig)?;
            // Graceful shutdown drains for more than 15 s.
            p.wait_exit(Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Polls `GET /readyz` (admin token, from inside the namespace) until it answers `ok`.
    pub fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url());
        let auth = format!("Authorization: Bearer {}", self.admin_token);
        let every = Duration::from_millis(250);
        crate::wait::try_wait_until("kube-apiserver to be ready", within, every, || {
            let out = Command::new("ip")
                .args(["netns", "exec", self.place.name(), "curl", "-sk"])
                .args(["--max-time", "5", "-H", &auth, &url])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(Some(()));
            }
            let mut g = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_mut() {
                None => bail!("kube-apiserver is not running"),
                Some(p) => {
                    if let Some(st) = p.try_status() {
                        bail!("kube-apiserver exited ({st})");
                    }
                }
            }
            Ok(None)
        })
        .map_err(|e| anyhow::anyhow!("{e}:\n{}", crate::harness::tail(&self.apiserver_log(), 40)))
    }

    /// The current kube-apiserver's log.
    pub fn apiserver_log(&self) -> String {
        self.apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Proc::log_text)
            .unwrap_or_default()
    }

    /// The network namespace the server runs in.
    pub fn ns_name(&self) -> &str {
        self.place.name()
    }

    /// `https://IP:6443`, reachable from inside the namespace (or the lab's segment).
    pub fn url(&self) -> String {
        format!("https://{}:{PORT}", self.ip)
    }

    /// The admin (`system:masters`) token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// An in-process client as the admin.
    pub fn admin(&self) -> kube::Client {
        self.client_with_token(&self.admin_token)
            .expect("a client for a server we started")
    }

    /// An in-process client presenting `token` (e.g. a ServiceAccount token).
    pub fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let mut cfg = kube::Config::new(self.url().parse()?);
        cfg.root_cert = Some(vec![pem_der(&self.ca_pem)?]);
        cfg.auth_info = serde_json::from_value(serde_json::json!({ "token": token }))?;
        let https = cfg.rustls_https_connector_with_connector(self.dialer.clone())?;
        let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
        let svc = tower::ServiceBuilder::new()
            .layer(cfg.base_uri_layer())
            .option_layer(cfg.auth_layer()?)
            .map_err(tower::BoxError::from)
            .service(http);
        Ok(kube::Client::new(svc, cfg.default_namespace))
    }

    /// A kubeconfig presenting `token`, verifying the server with its CA.
    pub fn kubeconfig(&self, user: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: real\n  context:\n    cluster: real\n    user: {user}\n    namespace: default\ncurrent-context: real\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// Writes the admin kubeconfig into the server's directory; returns its path.
    pub fn admin_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("admin.kubeconfig");
        std::fs::write(&path, self.kubeconfig("ferrolb-admin", &self.admin_token))?;
        Ok(path)
    }

    /// Runs kubectl (`$FERROLB_KUBECTL`, else `kubectl` on PATH) as the admin inside the
    /// namespace; returns stdout, fails with stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubectl = std::env::var("FERROLB_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let kc = self.admin_kubeconfig()?;
        let out = crate::netns::run(
            Command::new("ip")
                .args(["netns", "exec", self.place.name(), &kubectl, "--kubeconfig"])
                .arg(&kc)
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Removes `$TMPDIR/ferrolb-kube-<PID>-*` of processes that are gone (the shared server's
/// directory outlives its process: statics are never dropped).
fn remove_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ferrolb-kube-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A random token for the token file.
fn random_token() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// The CA out of `apiserver.crt` as kube-apiserver's `--cert-dir` writes it: the serving
/// certificate followed by the self-signed CA that issued it.
fn ca_of(crt: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(crt).with_context(|| format!("reading {}", crt.display()))?;
    let blocks: Vec<&str> = text
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
        .collect();
    match blocks.as_slice() {
        [_, ca, ..] => Ok(format!("{ca}\n")),
        _ => bail!("{}: expected a certificate and its CA", crt.display()),
    }
}

/// DER bytes of a single PEM certificate.
fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64.trim())?)
}

static SHARED: OnceLock<Result<Option<RealApi>, String>> = OnceLock::new();

/// The one real server of this process (started at the first call, blocking; never stopped:
/// its processes die with the process, and a detached reaper removes its namespace and
/// directory once the process has exited, crash or not). `None` when the binaries are absent. Panics when they are present but
/// the server does not start: that is a failure, not a skip.
pub fn shared() -> Option<&'static RealApi> {
    let r = SHARED.get_or_init(|| {
        let t0 = Instant::now();
        let r = match KubeBins::locate() {
            Ok(None) => Ok(None),
            Ok(Some(bins)) => RealApi::start(bins, "kshr")
                .map(Some)
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Ok(Some(api)) = &r {
            eprintln!(
                "real kube-apiserver ready in {:.1?} ({})",
                t0.elapsed(),
                api.ns_name()
            );
            reap_after_exit(api.ns_name(), api.dir.path());
        }
        r
    });
    match r {
        Ok(api) => api.as_ref(),
        Err(e) => panic!("the real kube-apiserver did not start: {e}"),
    }
}

/// Starts a detached shell (its own session, so it outlives this process) that waits for this
/// process to exit and then deletes the namespace `ns` and the directory `dir`: a static is
/// never dropped, and a test binary may be killed.
fn reap_after_exit(ns: &str, dir: &std::path::Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; ip netns del '{ns}' 2>/dev/null; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    let spawned = std::process::Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !spawned.is_ok_and(|s| s.success()) {
        eprintln!("warning: no reaper for {ns}; the next run's stale cleanup removes it");
    }
}

/// [`shared`] from async code (the first call blocks for the start).
pub async fn shared_async() -> Option<&'static RealApi> {
    tokio::task::spawn_blocking(shared)
        .await
        .expect("starting the real kube-apiserver panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_found_by_name() {
        let sums = "aa  kube-apiserver\nBB *etcd\ncc  etcd.xz\n";
        assert_eq!(expected_sum(sums, "etcd").unwrap(), "bb");
        assert_eq!(expected_sum(sums, "kube-apiserver").unwrap(), "aa");
        assert!(expected_sum(sums, "kubectl").is_err());
    }

    #[test]
    fn the_ca_is_the_second_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let crt = dir.path().join("apiserver.crt");
        std::fs::write(
            &crt,
            "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nREVG\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca = ca_of(&crt).unwrap();
        assert_eq!(pem_der(&ca).unwrap(), b"DEF");
        std::fs::write(
            &crt,
            "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(ca_of(&crt).is_err());
    }
}
