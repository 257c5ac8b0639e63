//! A running lab cluster: the API stand-in, two controllers, one agent and one echo backend per
//! node, all real `ferrolb` processes inside the segment's namespaces. The lab and the end-to-end
//! tests drive it through a `kube::Client` over the stand-in's Unix socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};

use super::procs::{numbered_log, Proc};
use super::topo::Topology;
use super::uds;
use crate::wait::wait_until_async;

/// Lease timings handed to every agent (and the controllers).
#[derive(Debug, Clone)]
pub struct Timings {
    pub lease_duration: String,
    pub renew_deadline: String,
    pub retry_period: String,
}

/// `--lease-duration`, `--renew-deadline` and `--retry-period` flags (controller and agent
/// take the same ones).
fn timing_args(t: &Timings) -> [String; 6] {
    [
        "--lease-duration".into(),
        t.lease_duration.clone(),
        "--renew-deadline".into(),
        t.renew_deadline.clone(),
        "--retry-period".into(),
        t.retry_period.clone(),
    ]
}

impl Timings {
    /// The agents' and controllers' own check ([`ferrolb::lease::validate_timings`]), made
    /// before anything is started so a bad combination is one clear error, not a crash loop.
    pub fn validate(&self) -> anyhow::Result<()> {
        let d = |s: &String| ferrolb::lease::parse_duration(s).map_err(anyhow::Error::msg);
        ferrolb::lease::validate_timings(
            d(&self.lease_duration)?,
            d(&self.renew_deadline)?,
            d(&self.retry_period)?,
        )
        .map_err(anyhow::Error::msg)
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: "2s".into(),
            renew_deadline: "1500ms".into(),
            retry_period: "250ms".into(),
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Short tag that keeps namespaces of concurrent labs/tests apart (≤ 5 chars).
    pub tag: String,
    pub nodes: usize,
    pub controllers: usize,
    pub timings: Timings,
    /// The controllers' leader-election timings, when not the agents' (`timings`).
    pub controller_timings: Option<Timings>,
    /// Extra agent flags (e.g. `--no-sticky`).
    pub agent_args: Vec<String>,
    /// The `ferrolb` binary to run.
    pub exe: PathBuf,
    /// Where logs, kubeconfigs and the API socket go.
    pub dir: PathBuf,
    /// The API server: the stand-in (default) or a real kube-apiserver.
    pub api: ApiKind,
    /// Remove `dir` when the cluster is dropped, unless the thread is panicking (a failed test
    /// keeps its logs). `ferrolb lab` clears it: it removes the directory itself after a
    /// successful run and names it after a failed one.
    pub remove_dir_on_drop: bool,
}

/// Which API server the lab runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiKind {
    /// `ferrolb dev-apiserver`, the in-memory stand-in.
    #[default]
    StandIn,
    /// kube-apiserver v1.36 + etcd from `../shared/kube` (`crate::realapi`), with deploy/'s RBAC
    /// and ServiceAccount tokens for the controllers and agents.
    Kube,
}

impl LabConfig {
    pub fn new(tag: &str, nodes: usize, exe: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrolb-lab-{}-{tag}", std::process::id()));
        LabConfig {
            tag: tag.into(),
            nodes,
            controllers: 2,
            timings: Timings::default(),
            controller_timings: None,
            agent_args: vec![],
            exe,
            dir,
            api: ApiKind::StandIn,
            remove_dir_on_drop: true,
        }
    }
}

/// The running cluster. Dropping it stops every process and removes the namespaces.
pub struct Cluster {
    pub cfg: LabConfig,
    pub client: kube::Client,
    pub socket: PathBuf,
    pub agents: Vec<Option<Proc>>,
    pub controllers: Vec<Option<Proc>>,
    pub apiserver: Option<Proc>,
    echoes: Vec<Proc>,
    /// The real kube-apiserver with `--api kube` (dropped after the agents and controllers,
    /// before the namespaces).
    pub real: Option<crate::realapi::RealApi>,
    /// ServiceAccount tokens by account (`ferrolb-agent`, `ferrolb-controller`) with `--api kube`.
    tokens: std::collections::BTreeMap<String, String>,
    // Declared after the processes: dropped after them.
    pub topo: Topology,
    // Declared last: the directory goes once nothing writes into it.
    _dir_guard: DirGuard,
}

const API_PORT: u16 = 6443;
/// Namespace of the leases.
pub const SYSTEM_NS: &str = "ferrolb-system";
/// Namespace of the agents' Leases on the real server (deploy/'s RBAC keeps them apart).
pub const AGENT_LEASE_NS: &str = "ferrolb-leases";

/// Names the nodes whose agents run under heaptrack's preload library (`FERROLB_LAB_HEAPTRACK=node2`,
/// `node1,node3`, or `all`: agents slowed alike take their usual shares of the addresses).
pub const HEAPTRACK_ENV: &str = "FERROLB_LAB_HEAPTRACK";
/// Where Debian's `heaptrack` package puts its preload library.
const HEAPTRACK_PRELOAD: &str = "/usr/lib/heaptrack/libheaptrack_preload.so";

/// Removes the lab directory when dropped (see [`LabConfig::remove_dir_on_drop`]).
struct DirGuard {
    dir: PathBuf,
    remove: bool,
}

impl DirGuard {
    fn of(cfg: &LabConfig) -> Self {
        DirGuard {
            dir: cfg.dir.clone(),
            remove: cfg.remove_dir_on_drop,
        }
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab logs kept: {}", self.dir.display());
        } else if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// The agents' address Leases (ferrolb's Leases without presence Leases and the
    /// controllers' leader Lease), as the API server lists them now.
    pub async fn address_leases(
        &self,
    ) -> anyhow::Result<Vec<k8s_openapi::api::coordination::v1::Lease>> {
        use ferrolb::lease::{LABEL_ROLE, MANAGED_BY_SELECTOR, ROLE_PRESENCE};
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), SYSTEM_NS);
        let selector = format!("{MANAGED_BY_SELECTOR},{LABEL_ROLE}!={ROLE_PRESENCE}");
        Ok(api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|l| {
                !l.metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .contains("controller")
            })
            .collect())
    }

    /// Builds the segment and starts the API server (with the CRDs), nothing else yet.
    pub async fn start_api(cfg: LabConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)?;
        if cfg.api == ApiKind::Kube {
            return Self::start_real_api(cfg).await;
        }
        let topo = Topology::build(&cfg.tag, cfg.nodes)?;
        let socket = cfg.dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let api_args: Vec<String> = vec![
            "dev-apiserver".into(),
            "--listen".into(),
            format!("{}:{API_PORT}", topo.api_ipv4),
            "--listen-unix".into(),
            socket.display().to_string(),
        ];
        let apiserver = Proc::spawn(
            "apiserver",
            Some(topo.api()),
            &cfg.exe,
            &api_args,
            &[],
            &cfg.dir.join("apiserver.log"),
        )?;
        let client = uds::client(socket.clone());
        let dir_guard = DirGuard::of(&cfg);
        let mut c = Cluster {
            cfg,
            client,
            socket,
            agents: vec![],
            controllers: vec![],
            apiserver: Some(apiserver),
            echoes: vec![],
            real: None,
            tokens: Default::default(),
            topo,
            _dir_guard: dir_guard,
        };
        c.wait_api(Duration::from_secs(20)).await?;
        c.install_crds().await?;
        Ok(c)
    }

    /// `--api kube`: etcd + kube-apiserver in the api namespace, the CRDs, deploy/'s namespaces
    /// and RBAC, and ServiceAccount tokens (TokenRequest) for the controllers and agents.
    async fn start_real_api(cfg: LabConfig) -> anyhow::Result<Self> {
        let Some(bins) = crate::realapi::KubeBins::locate()? else {
            bail!(
                "--api kube: no kube-apiserver (../shared/kube absent; FERROLB_KUBE_DIR points elsewhere)"
            );
        };
        let topo = Topology::build(&cfg.tag, cfg.nodes)?;
        let (ns, ip) = (topo.api().name().to_string(), topo.api_ipv4);
        let real =
            tokio::task::spawn_blocking(move || crate::realapi::RealApi::start_in(bins, &ns, ip))
                .await??;
        let client = real.admin();
        let dir_guard = DirGuard::of(&cfg);
        let mut c = Cluster {
            cfg,
            client,
            socket: PathBuf::new(),
            agents: vec![],
            controllers: vec![],
            apiserver: None,
            echoes: vec![],
            real: Some(real),
            tokens: Default::default(),
            topo,
            _dir_guard: dir_guard,
        };
        c.install_crds().await?;
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let files: Vec<String> = ["namespace.yaml", "rbac-controller.yaml", "rbac-agent.yaml"]
            .iter()
            .map(|f| deploy.join(f).display().to_string())
            .collect();
        let real = c.real.as_ref().expect("just set");
        let mut args = vec!["apply"];
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        tokio::task::block_in_place(|| real.kubectl(&args)).context("applying deploy/'s RBAC")?;
        for sa in ["ferrolb-agent", "ferrolb-controller"] {
            let tr = k8s_openapi::api::authentication::v1::TokenRequest {
                spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                    audiences: Some(vec!["https://kubernetes.default.svc".into()]),
                    expiration_seconds: Some(24 * 3600),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let token = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
                c.client.clone(),
                SYSTEM_NS,
            )
            .create_token_request(sa, &PostParams::default(), &tr)
            .await
            .with_context(|| format!("TokenRequest for {sa}"))?
            .status
            .and_then(|s| s.token)
            .with_context(|| format!("no token for {sa}"))?;
            c.tokens.insert(sa.to_string(), token);
        }
        // The CRDs are served once Established.
        let pools: Api<ferrolb::api::LoadBalancerIPPool> = Api::all(c.client.clone());
        let pools = &pools;
        wait_until_async(
            "the ferrolb CRDs to be served",
            Duration::from_secs(30),
            Duration::from_millis(100),
            move || async move { Ok(pools.list(&Default::default()).await.ok()) },
        )
        .await?;
        Ok(c)
    }

    /// Where the agents keep their Leases.
    pub fn agent_lease_ns(&self) -> &'static str {
        if self.real.is_some() {
            AGENT_LEASE_NS
        } else {
            SYSTEM_NS
        }
    }

    async fn wait_api(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((code, _)) =
                uds::request(&self.socket, http::Method::GET, "/version", None).await
            {
                if code.is_success() {
                    return Ok(());
                }
            }
            if let Some(p) = self.apiserver.as_mut() {
                if !p.running() {
                    bail!("the API server exited:\n{}", p.log_text());
                }
            }
            if Instant::now() > deadline {
                bail!("the API server did not answer within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn install_crds(&self) -> anyhow::Result<()> {
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(self.client.clone());
        for (_, crd) in ferrolb::crds::all() {
            crds.create(&PostParams::default(), &crd)
                .await
                .context("creating a CRD")?;
        }
        Ok(())
    }

    /// Writes a kubeconfig for `identity` pointing at the API server inside the segment.
    pub fn kubeconfig(&self, identity: &str) -> anyhow::Result<PathBuf> {
        let path = self.cfg.dir.join(format!("{identity}.kubeconfig"));
        if let Some(real) = &self.real {
            // Controllers and agents run as their ServiceAccounts; anyone else as the admin.
            let token = if identity.starts_with("controller") {
                self.tokens.get("ferrolb-controller")
            } else if identity == "admin" {
                None
            } else {
                self.tokens.get("ferrolb-agent")
            };
            let token = token.map_or(real.admin_token(), String::as_str);
            std::fs::write(&path, real.kubeconfig(identity, token))?;
            return Ok(path);
        }
        let url = format!("http://{}:{API_PORT}", self.topo.api_ipv4);
        std::fs::write(&path, kube_standin::ApiServer::kubeconfig(&url, identity))?;
        Ok(path)
    }

    /// Creates the Node objects a kubelet would, labelled for the lab's policy.
    pub async fn create_nodes(&self) -> anyhow::Result<()> {
        for n in &self.topo.nodes {
            let node = serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"ferrolb.io/lab": "true", "kubernetes.io/hostname": n.name}},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": n.ipv4.to_string()},
                    {"type": "InternalIP", "address": n.ipv6.to_string()},
                    {"type": "Hostname", "address": n.name}]}
            });
            self.create_json(&node).await?;
        }
        Ok(())
    }

    /// Creates any object given as JSON (kind → resource by the few kinds the lab uses).
    pub async fn create_json(&self, obj: &serde_json::Value) -> anyhow::Result<()> {
        let dynobj: DynamicObject = serde_json::from_value(obj.clone())?;
        let (ar, namespaced) = api_resource(obj)?;
        let api: Api<DynamicObject> = match (namespaced, dynobj.metadata.namespace.as_deref()) {
            (true, ns) => Api::namespaced_with(self.client.clone(), ns.unwrap_or("default"), &ar),
            (false, _) => Api::all_with(self.client.clone(), &ar),
        };
        match api.create(&PostParams::default(), &dynobj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("creating {} {:?}", ar.kind, dynobj.metadata.name))
            }
        }
    }

    /// Applies every document of a multi-document YAML string.
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            self.create_json(&v).await?;
        }
        Ok(())
    }

    /// An EndpointSlice with one ready endpoint on each of `nodes` for Service `ns/name`.
    /// The ready endpoints of an EndpointSlice on `nodes` (each node's own address).
    pub fn endpoint_list(&self, nodes: &[usize]) -> Vec<serde_json::Value> {
        nodes
            .iter()
            .filter_map(|&i| self.topo.nodes.get(i))
            .map(|n| {
                serde_json::json!({"addresses": [n.ipv4.to_string()], "conditions": {"ready": true}, "nodeName": n.name})
            })
            .collect()
    }

    /// Rewrites the endpoints of the slice [`Cluster::create_endpoints`] made: ready on `nodes`
    /// only (an endpoint moving to another node).
    pub async fn set_endpoints(&self, ns: &str, name: &str, nodes: &[usize]) -> anyhow::Result<()> {
        let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({"endpoints": self.endpoint_list(nodes)});
        api.patch(
            &format!("{name}-lab"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("moving the endpoints of {ns}/{name}"))?;
        Ok(())
    }

    pub async fn create_endpoints(
        &self,
        ns: &str,
        name: &str,
        nodes: &[usize],
    ) -> anyhow::Result<()> {
        let endpoints = self.endpoint_list(nodes);
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-lab"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "ferrolb-lab"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        });
        self.create_json(&slice).await
    }

    /// Starts controller replica `i` in the API namespace.
    pub fn start_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let id = format!("controller-{i}");
        let kc = self.kubeconfig(&id)?;
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--kubeconfig".into(),
            kc.display().to_string(),
            "--identity".into(),
            id.clone(),
            "--lease-namespace".into(),
            SYSTEM_NS.into(),
            "--metrics-addr".into(),
            format!("{}:{}", self.topo.api_ipv4, 9100 + i),
        ];
        let t = self
            .cfg
            .controller_timings
            .as_ref()
            .unwrap_or(&self.cfg.timings);
        args.extend(timing_args(t));
        let log = numbered_log(&self.cfg.dir, &id);
        let p = Proc::spawn(&id, Some(self.topo.api()), &self.cfg.exe, &args, &[], &log)?;
        if self.controllers.len() <= i {
            self.controllers.resize_with(i + 1, || None);
        }
        self.controllers[i] = Some(p);
        Ok(())
    }

    /// Starts (or restarts) the agent of node `i` in its namespace.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.topo.nodes[i].clone();
        let kc = self.kubeconfig(&node.name)?;
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--node-name".into(),
            node.name.clone(),
            "--kubeconfig".into(),
            kc.display().to_string(),
            "--lease-namespace".into(),
            self.agent_lease_ns().into(),
            "--metrics-addr".into(),
            format!("{}:9100", node.ipv4),
        ];
        args.extend(timing_args(&self.cfg.timings));
        args.extend(self.cfg.agent_args.iter().cloned());
        let log = numbered_log(&self.cfg.dir, &format!("agent-{}", node.name));
        // A heap profile of one node's agent from its first allocation (a developer's knob,
        // README "A heap profile of an agent"): heaptrack's preload library writes its raw trace
        // beside the log; `heaptrack_interpret` turns it into a profile afterwards. Set by
        // `env`, the last program before the agent: the library unsets LD_PRELOAD in the first
        // process it loads into (`ip` would take it).
        let profiled = std::env::var(HEAPTRACK_ENV)
            .is_ok_and(|v| v.split(',').any(|n| n == node.name || n == "all"));
        let (program, args) = if profiled {
            let raw = log.with_extension("heaptrack.raw");
            let mut a = vec![
                format!("LD_PRELOAD={HEAPTRACK_PRELOAD}"),
                format!("DUMP_HEAPTRACK_OUTPUT={}", raw.display()),
                self.cfg.exe.display().to_string(),
            ];
            a.extend(args);
            (std::path::PathBuf::from("env"), a)
        } else {
            (self.cfg.exe.clone(), args)
        };
        let p = Proc::spawn(
            &format!("agent {}", node.name),
            Some(self.topo.node_ns(i)),
            &program,
            &args,
            &[],
            &log,
        )?;
        if self.agents.len() <= i {
            self.agents.resize_with(i + 1, || None);
        }
        self.agents[i] = Some(p);
        Ok(())
    }

    /// Starts the echo backend of every node (listening on any address, port 80).
    pub fn start_echoes(&mut self) -> anyhow::Result<()> {
        for i in 0..self.topo.nodes.len() {
            let name = self.topo.nodes[i].name.clone();
            let args: Vec<String> = vec![
                "echo".into(),
                "--name".into(),
                name.clone(),
                "--listen".into(),
                "0.0.0.0:80".into(),
                "--listen".into(),
                "[::]:80".into(),
            ];
            let log = self.cfg.dir.join(format!("echo-{name}.log"));
            self.echoes.push(Proc::spawn(
                &format!("echo {name}"),
                Some(self.topo.node_ns(i)),
                &self.cfg.exe,
                &args,
                &[],
                &log,
            )?);
        }
        Ok(())
    }

    /// Everything for a ready cluster: nodes, controllers, agents, backends.
    pub async fn start_all(cfg: LabConfig) -> anyhow::Result<Self> {
        let mut c = Cluster::start_api(cfg).await?;
        c.create_json(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NS}}))
            .await?;
        c.create_nodes().await?;
        for i in 0..c.cfg.controllers {
            c.start_controller(i)?;
        }
        for i in 0..c.topo.nodes.len() {
            c.start_agent(i)?;
        }
        c.start_echoes()?;
        Ok(c)
    }

    /// Stops agent `i` with a signal (`KILL` or `TERM`); returns when the process is gone.
    pub fn stop_agent(&mut self, i: usize, sig: &str) -> anyhow::Result<()> {
        if let Some(mut p) = self.signal_agent(i, sig)? {
            p.wait_exit(Duration::from_secs(15))?;
        }
        Ok(())
    }

    /// Sends agent `i` a signal and hands its process over without waiting for it to exit (a
    /// graceful stop takes up to the renew deadline; what it frees meanwhile is measured).
    pub fn signal_agent(&mut self, i: usize, sig: &str) -> anyhow::Result<Option<Proc>> {
        let Some(p) = self.agents.get_mut(i).and_then(Option::take) else {
            return Ok(None);
        };
        p.signal(sig)?;
        Ok(Some(p))
    }

    /// Waits until Service `ns/name` has load-balancer addresses; returns them.
    pub async fn wait_ingress(
        &self,
        ns: &str,
        name: &str,
        within: Duration,
    ) -> anyhow::Result<Vec<IpAddr>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let api = &api;
        wait_until_async(
            &format!("Service {ns}/{name} to get an address"),
            within,
            Duration::from_millis(100),
            move || async move {
                let svc = api.get_opt(name).await?;
                Ok(svc.map(|s| ingress_ips(&s)).filter(|ips| !ips.is_empty()))
            },
        )
        .await
    }

    /// The stand-in's request counters (`/metrics` over the Unix socket), as
    /// `(verb, resource, client) -> count`.
    pub async fn api_requests(&self) -> anyhow::Result<Vec<(String, String, String, f64)>> {
        if self.real.is_some() {
            return self.real_api_requests().await;
        }
        let (code, body) = uds::request(&self.socket, http::Method::GET, "/metrics", None).await?;
        if !code.is_success() {
            bail!("/metrics answered {code}");
        }
        Ok(parse_request_counters(&body))
    }

    /// Agent `i`'s Prometheus text, fetched with curl from the client namespace (the agents
    /// serve metrics on their node address, inside the segment).
    pub fn agent_metrics(&self, i: usize) -> anyhow::Result<String> {
        let url = format!("http://{}:9100/metrics", self.topo.nodes[i].ipv4);
        self.topo
            .client()
            .exec("curl", &["-sf", "--max-time", "5", &url])
    }

    /// Switches a fault on the stand-in (its admin endpoint); `None` clears all faults.
    pub async fn fault(&self, spec: Option<serde_json::Value>) -> anyhow::Result<()> {
        let (code, body) = match spec {
            Some(s) => {
                uds::request(
                    &self.socket,
                    http::Method::POST,
                    "/_ferrolb/faults",
                    Some(s.to_string()),
                )
                .await?
            }
            None => {
                uds::request(&self.socket, http::Method::DELETE, "/_ferrolb/faults", None).await?
            }
        };
        if !code.is_success() {
            bail!("fault injection answered {code}: {body}");
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

impl Cluster {
    /// kube-apiserver's own `apiserver_request_total` with `--api kube`, as
    /// `(verb, resource, "*", count)`: it does not tell clients apart, so `*` is everyone
    /// (agents, controllers, the lab, kube-apiserver's own loopback clients).
    async fn real_api_requests(&self) -> anyhow::Result<Vec<(String, String, String, f64)>> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.client.request_text(req).await?;
        Ok(parse_apiserver_request_total(&text))
    }
}

/// Parses kube-apiserver's `apiserver_request_total{...,resource="leases",...,verb="PUT"} 3` into
/// `(verb, resource, "*", count)` with kube-style verbs (`update`, `get`, `watch`...), summed over
/// the other labels.
pub fn parse_apiserver_request_total(text: &str) -> Vec<(String, String, String, f64)> {
    let mut sums: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for (labels, value) in super::probe::prom_samples(text, "apiserver_request_total") {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let verb = get("verb").to_ascii_lowercase();
        let verb = match verb.as_str() {
            "put" => "update".to_string(),
            "post" => "create".to_string(),
            _ => verb,
        };
        *sums.entry((verb, get("resource"))).or_default() += value;
    }
    sums.into_iter()
        .map(|((v, r), n)| (v, r, "*".to_string(), n))
        .collect()
}

/// `status.loadBalancer.ingress[].ip` of a Service (the controller's own reader).
pub use ferrolb::k8s::service::ingress_ips;

fn api_resource(obj: &serde_json::Value) -> anyhow::Result<(ApiResource, bool)> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "Node" => ("nodes", false),
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "LoadBalancerIPPool" => ("loadbalancerippools", false),
        "L2AnnouncementPolicy" => ("l2announcementpolicies", false),
        other => bail!("the lab does not apply kind {other:?}"),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Parses `ferrolb_apiserver_requests_total{verb="get",resource="leases",client="node1",...} 3`.
pub fn parse_request_counters(text: &str) -> Vec<(String, String, String, f64)> {
    super::probe::prom_samples(text, "ferrolb_apiserver_requests_total")
        .into_iter()
        .map(|(labels, value)| {
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            (get("verb"), get("resource"), get("client"), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_refuses_the_timings_agents_and_controllers_refuse() {
        let t = |l: &str, r: &str, p: &str| super::Timings {
            lease_duration: l.into(),
            renew_deadline: r.into(),
            retry_period: p.into(),
        };
        assert!(super::Timings::default().validate().is_ok());
        let e = t("1s", "220ms", "200ms")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.2 × the retry period"), "{e}");
        assert!(t("1s", "soon", "200ms").validate().is_err());
    }

    #[test]
    fn apiserver_request_total_lines() {
        let text = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"coordination.k8s.io\",resource=\"leases\",scope=\"resource\",subresource=\"\",verb=\"PUT\",version=\"v1\"} 7\n\
            apiserver_request_total{code=\"409\",component=\"apiserver\",dry_run=\"\",group=\"coordination.k8s.io\",resource=\"leases\",scope=\"resource\",subresource=\"\",verb=\"PUT\",version=\"v1\"} 2\n\
            apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"services\",scope=\"namespace\",subresource=\"\",verb=\"POST\",version=\"v1\"} 1\n";
        let v = super::parse_apiserver_request_total(text);
        assert_eq!(
            v,
            vec![
                ("create".into(), "services".into(), "*".into(), 1.0),
                ("update".into(), "leases".into(), "*".into(), 9.0),
            ]
        );
    }

    #[test]
    fn request_counter_lines() {
        let text = "# HELP x\nferrolb_apiserver_requests_total{client=\"node1\",code=\"200\",resource=\"leases\",verb=\"update\"} 7\nother 1\n";
        let v = super::parse_request_counters(text);
        assert_eq!(
            v,
            vec![("update".into(), "leases".into(), "node1".into(), 7.0)]
        );
    }
}
