//! `sudo ferrolb lab`: a whole cluster's L2 segment in network namespaces — the API stand-in, two
//! controllers, one agent and one echo backend per node, a client — with failover timed.
//! The same machinery is the end-to-end test suite (`tests/e2e.rs`) and the source of the
//! figures in the README (`--measure`).

pub mod baseline;
pub mod burst;
pub mod chaos;
pub mod cluster;
pub mod coldstart;
pub mod echo;
pub mod linkloss;
pub mod prefer;
pub mod probe;
pub mod procs;
pub mod scenario;
pub mod topo;
pub mod uds;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

pub use echo::{run as run_echo, EchoArgs};

use cluster::{Cluster, LabConfig, Timings};
use scenario::{failover, percentile, Failover};

/// The manifests the lab applies, embedded so the binary runs anywhere.
pub const EMBEDDED_MANIFESTS: &[(&str, &str)] = &[
    (
        "pools.yaml",
        include_str!("../../../../examples/lab/pools.yaml"),
    ),
    (
        "policy.yaml",
        include_str!("../../../../examples/lab/policy.yaml"),
    ),
    (
        "echo.yaml",
        include_str!("../../../../examples/lab/echo.yaml"),
    ),
];

/// Flags of `ferrolb lab`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of node namespaces (each runs an agent and an echo backend).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Number of echo Services (`echo`, `echo-2`, ...).
    #[arg(long, default_value_t = 1)]
    pub services: usize,
    /// Make the Services dual-stack and check NDP for their IPv6 addresses too.
    #[arg(long)]
    pub ipv6: bool,
    /// Lease duration handed to agents and controllers (the agent's default: presence Leases).
    #[arg(long, default_value = "1s")]
    pub lease_duration: String,
    /// Renew deadline.
    #[arg(long, default_value = "600ms")]
    pub renew_deadline: String,
    /// Retry period.
    #[arg(long, default_value = "200ms")]
    pub retry_period: String,
    /// The controllers' lease duration (leader election), if not `--lease-duration`: a large
    /// `--measure-services` wants a longer one than the agents' presence Leases.
    #[arg(long)]
    pub controller_lease_duration: Option<String>,
    /// The controllers' renew deadline, if not `--renew-deadline`.
    #[arg(long)]
    pub controller_renew_deadline: Option<String>,
    /// The controllers' retry period, if not `--retry-period`.
    #[arg(long)]
    pub controller_retry_period: Option<String>,
    /// Leave everything running and print how to explore it (Ctrl-C removes it). With --chaos:
    /// keep every process's logs after a run without violations too (a run with violations
    /// always keeps them).
    #[arg(long)]
    pub keep: bool,
    /// Print the results as JSON on stdout (narration goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Repeat failovers and measure API load, memory and ARP latency (see README).
    #[arg(long)]
    pub measure: bool,
    /// With --measure: failovers of each kind.
    #[arg(long, default_value_t = 10)]
    pub repeat: usize,
    /// With --measure: Services for the steady-state API load and memory figures.
    #[arg(long, default_value_t = 200)]
    pub measure_services: usize,
    /// Read manifests from this directory instead of the embedded examples/lab.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// A second policy prefers this node (`spec.preferredNodes`): it holds every address while
    /// it runs, so `--measure`'s bursts stop a node holding all `--measure-services` addresses
    /// (each burst waits until it holds 95 % of them again). See `lab::prefer`.
    #[arg(long)]
    pub prefer_node: Option<String>,
    /// With --measure: last, the poll-every-retry baseline for the API-load ratio, with this
    /// many Leases (client-go style: GET + PUT of each every retry period; `lab::baseline`).
    #[arg(long, default_value_t = 0)]
    pub baseline_leases: usize,
    /// The API server: `stand-in` (`ferrolb dev-apiserver`) or `kube` (kube-apiserver v1.36 +
    /// etcd from ../shared/kube, deploy/'s RBAC, ServiceAccount tokens).
    #[arg(long, value_enum, default_value = "stand-in")]
    pub api: cluster::ApiKind,
    /// Run the agents with `--no-l2-announcements` (no `L2Announcement` objects), e.g. to
    /// compare `--measure` bursts with and without them.
    #[arg(long)]
    pub no_l2_announcements: bool,
    /// Seeded random faults with the invariants checked from the outside (`lab::chaos`).
    #[arg(long)]
    pub chaos: bool,
    /// With --chaos: how long (e.g. 10m, 90s).
    #[arg(long, default_value = "10m")]
    pub duration: String,
    /// With --chaos: the schedule's seed (printed; the same seed replays the same schedule).
    #[arg(long)]
    pub seed: Option<u64>,
    /// With --chaos: only these fault kinds (comma-separated, e.g. agent-kill,api-outage).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
}

/// Machine-readable result of a lab run (`--json`).
#[derive(Debug, Serialize, Default)]
pub struct LabReport {
    pub nodes: usize,
    pub services: Vec<ServiceReport>,
    pub failovers: Vec<Failover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measure: Option<Measurements>,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Node answering ARP/NDP per address, and how many distinct MACs answered.
    pub announcers: Vec<(IpAddr, String, usize)>,
}

#[derive(Debug, Serialize, Default)]
pub struct Measurements {
    pub crash_ms: Vec<u64>,
    pub graceful_ms: Vec<u64>,
    /// The holder's eth0 down, the API server still reachable (`linkloss`).
    pub link_loss_ms: Vec<u64>,
    pub steady_api_requests_per_s: f64,
    pub steady_api_reads_per_s: f64,
    pub steady_window_s: f64,
    /// The agents' requests per second in the steady window by (verb, resource), busiest first.
    pub steady_requests_by_kind: Vec<(String, String, f64)>,
    pub addresses: usize,
    pub agent_peak_rss_kib: Vec<u64>,
    /// Agents' resident memory at the end of the steady window (peak includes start-up bursts).
    pub agent_rss_kib: Vec<u64>,
    pub controller_peak_rss_kib: Vec<u64>,
    /// Address leases each agent held when the figures were taken (`ferrolb_agent_leases_held`).
    pub agent_leases_held: Vec<u64>,
    /// Seconds from the first create until every address lease had a holder (None: not reached
    /// within the wait; the figures are then taken at whatever was held).
    pub all_held_after_s: Option<f64>,
    pub arp_ours_median_ms: f64,
    pub arp_kernel_median_ms: f64,
    /// The controller's cold start with the load Services (see `lab::coldstart`).
    pub controller: coldstart::Figures,
    /// Address Leases written in the steady window (lower bound; see `burst.rs`).
    pub steady_address_lease_writes: Option<usize>,
    /// Seconds from the first create until the agents wrote no address Lease for
    /// [`SETTLE_QUIET`] after the rebalancing could start (`lab::settle`; None: not within
    /// [`SETTLE_MAX`], the window then starts anyway).
    pub settled_after_s: Option<f64>,
    /// A node holding many addresses killed / stopped: first and last sampled address back.
    pub bursts: Vec<burst::Burst>,
    /// `--baseline-leases`: what the poll-every-retry baseline achieved.
    pub baseline: Option<baseline::Baseline>,
}

/// Narration: to stderr with --json (stdout stays machine-readable), else stdout.
struct Say {
    json: bool,
}

impl Say {
    fn line(&self, s: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", s.as_ref());
        } else {
            println!("{}", s.as_ref());
        }
    }
    /// Whether the stream the progress line goes to (stderr with --json, else stdout) is a
    /// terminal.
    fn tty(&self) -> bool {
        use std::io::IsTerminal;
        if self.json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        }
    }
    fn progress(&self, what: &str, since: Instant) {
        if !self.tty() {
            return;
        }
        const SPIN: [char; 4] = ['|', '/', '-', '\\'];
        let t = since.elapsed();
        let c = SPIN[(t.as_millis() / 150) as usize % 4];
        let s = format!("\r      {what} {c} {:.1}s ", t.as_secs_f64());
        if self.json {
            eprint!("{s}");
            let _ = std::io::stderr().flush();
        } else {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
    }
    fn clear(&self) {
        if !self.tty() {
            return;
        }
        let s = format!("\r{:60}\r", "");
        if self.json {
            eprint!("{s}");
        } else {
            print!("{s}");
        }
    }
}

/// Not root: runs this same command line again through `sudo` (replacing this process), or says
/// why it cannot. Returns only on failure.
fn rerun_with_sudo() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let why = "the lab creates network namespaces and needs root";
    let sudo = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("sudo"))
            .find(|p| p.is_file())
    });
    let Some(sudo) = sudo else {
        return anyhow::anyhow!("{why}, and sudo is not installed: run it as root");
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::anyhow!("{why}; cannot locate the ferrolb binary for sudo: {e}"),
    };
    eprintln!("{why}: running it through sudo");
    let err = std::process::Command::new(&sudo)
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("{why}; running {} failed: {err}", sudo.display())
}

/// Runs `ferrolb lab`.
pub async fn run(args: Args) -> ferrolb::CmdResult {
    if !crate::netns::is_root() {
        return Err(rerun_with_sudo());
    }
    if args.nodes < 2 {
        bail!("--nodes must be at least 2 (a failover needs somewhere to go)");
    }
    if args.nodes > 200 {
        bail!("--nodes is at most 200");
    }
    install_tools(args.ipv6)?;
    let removed = crate::netns::cleanup_stale();
    let say = Say { json: args.json };
    if !removed.is_empty() {
        say.line(format!(
            "removed {} namespaces left by a crashed run",
            removed.len()
        ));
    }
    let exe = std::env::current_exe().context("locating the ferrolb binary")?;
    let mut cfg = LabConfig::new("lab", args.nodes, exe);
    cfg.api = args.api;
    cfg.remove_dir_on_drop = false;
    let lab_dir = cfg.dir.clone();
    cfg.timings = Timings {
        lease_duration: args.lease_duration.clone(),
        renew_deadline: args.renew_deadline.clone(),
        retry_period: args.retry_period.clone(),
    };
    cfg.controller_timings = controller_timings(&args);
    cfg.timings.validate().context("agent lease timings")?;
    if let Some(t) = &cfg.controller_timings {
        t.validate().context("controller lease timings")?;
    }
    cfg.agent_args.extend(agent_args(&args));
    if args.chaos {
        return chaos::run(args, cfg, say).await;
    }
    // Ctrl-C / SIGTERM end the run; dropping the cluster cleans up.
    let work = main_job(args.clone(), cfg, say);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaned up")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated; cleaned up")),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logs of every process: {}", lab_dir.display());
            return Err(e);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The tools the lab drives, with the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("arping", "iputils-arping"),
    ("tcpdump", "tcpdump"),
    ("setpriv", "util-linux"),
];

/// Installs missing tools with apt-get (the lab runs as root anyway), or says what is missing.
fn install_tools(ipv6: bool) -> anyhow::Result<()> {
    let mut tools: Vec<(&str, &str)> = TOOLS.to_vec();
    if ipv6 {
        tools.push(("ndisc6", "ndisc6"));
    }
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(t, _)| which(t).is_none())
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "missing tools; install the packages {} (Debian names)",
            missing.join(" ")
        );
    }
    eprintln!(
        "installing what the lab needs: {} (apt-get)",
        missing.join(" ")
    );
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let mut c = std::process::Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        crate::netns::run(&mut c).map(|_| ())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.exists())
}

fn manifests(args: &Args) -> anyhow::Result<Vec<(String, String)>> {
    match &args.manifests {
        None => Ok(EMBEDDED_MANIFESTS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()),
        Some(dir) => {
            let mut v = Vec::new();
            for e in std::fs::read_dir(dir)? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    v.push((p.display().to_string(), std::fs::read_to_string(&p)?));
                }
            }
            v.sort();
            Ok(v)
        }
    }
}

/// The echo Service `name` as JSON (dual-stack with `ipv6`).
pub fn echo_service(name: &str, ipv6: bool) -> serde_json::Value {
    let mut svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "echo"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "echo"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]}
    });
    if ipv6 {
        svc["spec"]["ipFamilyPolicy"] = "RequireDualStack".into();
        svc["spec"]["ipFamilies"] = serde_json::json!(["IPv4", "IPv6"]);
    }
    svc
}

async fn wait_with_progress<T, F, Fut>(
    say: &Say,
    what: &str,
    within: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let r = crate::wait::wait_until_async(what, within, Duration::from_millis(100), || {
        let poll = f();
        async move {
            let v = poll.await?;
            if v.is_none() {
                say.progress(what, start);
            }
            Ok(v)
        }
    })
    .await;
    say.clear();
    r
}

async fn main_job(args: Args, cfg: LabConfig, say: Say) -> anyhow::Result<LabReport> {
    let t = Instant::now();
    say.line(format!(
        "ferrolb lab: {} nodes, {} Service(s), lease {}/{}/{} (duration/renew deadline/retry)",
        args.nodes, args.services, args.lease_duration, args.renew_deadline, args.retry_period
    ));
    let server = match cfg.api {
        cluster::ApiKind::StandIn => "API stand-in",
        cluster::ApiKind::Kube => "kube-apiserver v1.36 + etcd, deploy/'s RBAC",
    };
    say.line(format!(
        "[1/6] building the segment: bridge, api, client and node namespaces; starting the {server}"
    ));
    let mut c = Cluster::start_all(cfg).await?;
    say.line(format!(
        "      {server} on {}:6443 (namespace {}), nodes {} ({:.1}s)",
        c.topo.api_ipv4,
        c.topo.api().name(),
        c.topo
            .nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.ipv4))
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs_f64()
    ));
    say.line(format!(
        "[2/6] started {} controllers, {} agents, {} echo backends",
        c.cfg.controllers, args.nodes, args.nodes
    ));
    say.line("[3/6] applying manifests");
    for (name, text) in manifests(&args)? {
        // The embedded echo.yaml is replaced by generated Services when --ipv6/--services ask.
        if name.ends_with("echo.yaml") && (args.ipv6 || args.services != 1) {
            continue;
        }
        c.apply_yaml(&text)
            .await
            .with_context(|| format!("applying {name}"))?;
        say.line(format!("      {name}"));
    }
    if let Some(node) = &args.prefer_node {
        c.create_json(&prefer::prefer_policy(node)).await?;
        say.line(format!(
            "      policy lab-prefer-{node} (preferredNodes: {node})"
        ));
    }
    let names: Vec<String> = (0..args.services)
        .map(|i| {
            if i == 0 {
                "echo".to_string()
            } else {
                format!("echo-{}", i + 1)
            }
        })
        .collect();
    for n in &names {
        if args.ipv6 || args.services != 1 {
            c.create_json(&echo_service(n, args.ipv6)).await?;
        }
        let all: Vec<usize> = (0..args.nodes).collect();
        c.create_endpoints("default", n, &all).await?;
    }
    say.line("[4/6] waiting for the controller to assign addresses");
    let mut report = LabReport {
        nodes: args.nodes,
        ..Default::default()
    };
    let mut vips = Vec::new();
    for n in &names {
        let want = if args.ipv6 { 2 } else { 1 };
        let ips = wait_with_progress(
            &say,
            &format!("default/{n}"),
            Duration::from_secs(60),
            || {
                let c = &c;
                async move {
                    let ips = c
                        .wait_ingress("default", n, Duration::from_millis(1))
                        .await
                        .unwrap_or_default();
                    Ok((ips.len() >= want).then_some(ips))
                }
            },
        )
        .await?;
        say.line(format!(
            "      default/{n} -> {}",
            ips.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for ip in &ips {
            c.topo.add_vip_on_nodes(*ip)?;
        }
        vips.push((n.clone(), ips));
    }
    say.line("[5/6] who answers (the client's own arping/ndisc6, then curl through the VIP)");
    for (n, ips) in &vips {
        let mut announcers = Vec::new();
        for ip in ips {
            let macs = wait_with_progress(&say, &format!("{ip}"), Duration::from_secs(30), || {
                let c = &c;
                let ip = *ip;
                async move {
                    let macs: Vec<String> = tokio::task::block_in_place(|| match ip {
                        IpAddr::V4(_) => probe::arping(c.topo.client(), ip, 2)
                            .into_iter()
                            .map(|r| r.mac)
                            .collect(),
                        IpAddr::V6(_) => probe::ndisc6(c.topo.client(), ip, 2),
                    });
                    Ok((!macs.is_empty()).then_some(macs))
                }
            })
            .await?;
            let mut distinct = macs.clone();
            distinct.sort();
            distinct.dedup();
            let node = c
                .topo
                .node_by_mac(&distinct[0])
                .map(|i| c.topo.nodes[i].name.clone())
                .unwrap_or("?".into());
            let proto = if ip.is_ipv4() { "ARP" } else { "NDP" };
            say.line(format!(
                "      {ip}: {proto} answered by {} MAC(s): {} = {node}",
                distinct.len(),
                distinct.join(", ")
            ));
            let via = tokio::task::block_in_place(|| {
                scenario::current_holder(&c, *ip, Duration::from_secs(20))
            })?;
            say.line(format!(
                "      curl {} -> {via}",
                if ip.is_ipv4() {
                    format!("http://{ip}/")
                } else {
                    format!("http://[{ip}]/")
                }
            ));
            announcers.push((*ip, node, distinct.len()));
        }
        report.services.push(ServiceReport {
            name: n.clone(),
            addresses: ips.clone(),
            announcers,
        });
    }
    let vip = vips[0].1[0];
    say.line(format!("[6/6] failover of {vip}"));
    let within = failover_wait(&args);
    // First a crash (SIGKILL), then a graceful stop (SIGTERM); the stopped agent comes back.
    for signal in ["KILL", "TERM"] {
        let f = failover_and_restart(&mut c, vip, signal, within)?;
        say_failover(&say, &f);
        report.failovers.push(f);
    }
    say.line("");
    say.line(format!(
        "  {:<20} {:<7} {:<7} {:>10}  {}",
        "failover", "from", "to", "time", "gratuitous ARP at client"
    ));
    for f in &report.failovers {
        say.line(format!(
            "  {:<20} {:<7} {:<7} {:>8.2} s  {}",
            f.kind,
            f.from,
            f.to,
            f.millis as f64 / 1000.0,
            if f.vip.is_ipv6() {
                "n/a (IPv6)"
            } else if f.gratuitous_seen {
                "yes"
            } else {
                "no"
            }
        ));
    }
    if args.measure {
        report.measure = Some(measure(&mut c, &args, &say, vip).await?);
    }
    if args.keep {
        say.line("");
        say.line(format!(
            "Everything keeps running. Logs and kubeconfigs: {}",
            c.dir().display()
        ));
        say.line(format!(
            "  sudo ip netns exec {} kubectl --kubeconfig {} get svc,lbpool,leases -A",
            c.topo.api().name(),
            c.kubeconfig("admin")?.display()
        ));
        say.line(format!(
            "  sudo ip netns exec {} arping -c 3 -I eth0 {vip}",
            c.topo.client().name()
        ));
        say.line(format!(
            "  sudo ip netns exec {} curl -s http://{vip}/",
            c.topo.client().name()
        ));
        say.line("Press Ctrl-C to remove it all.");
        std::future::pending::<()>().await;
    }
    let _ = std::fs::remove_dir_all(c.dir());
    say.line(format!(
        "done in {:.1}s; namespaces removed",
        t.elapsed().as_secs_f64()
    ));
    Ok(report)
}

/// One failover of `vip` by stopping its holder's agent with `signal`; the stopped agent is
/// started again afterwards.
fn failover_and_restart(
    c: &mut Cluster,
    vip: IpAddr,
    signal: &str,
    within: Duration,
) -> anyhow::Result<Failover> {
    let f = tokio::task::block_in_place(|| failover(c, vip, signal, within))?;
    let stopped = c
        .topo
        .nodes
        .iter()
        .position(|n| n.name == f.from)
        .unwrap_or(0);
    c.start_agent(stopped)?;
    Ok(f)
}

fn say_failover(say: &Say, f: &Failover) {
    say.line(format!(
        "      {}: {} -> {} answers after {:.2} s (gratuitous ARP seen by the client: {})",
        f.kind,
        f.from,
        f.to,
        f.millis as f64 / 1000.0,
        if f.gratuitous_seen { "yes" } else { "no" }
    ));
}

/// The controllers' timings when any `--controller-*` flag is given (the rest from the agents'
/// flags); `None`: the same as the agents'.
/// Agent flags that follow from the lab's flags.
fn agent_args(args: &Args) -> Vec<String> {
    let mut v = vec![];
    if args.no_l2_announcements {
        v.push("--no-l2-announcements".to_string());
    }
    v
}

fn controller_timings(args: &Args) -> Option<Timings> {
    let given = [
        &args.controller_lease_duration,
        &args.controller_renew_deadline,
        &args.controller_retry_period,
    ];
    if given.iter().all(|o| o.is_none()) {
        return None;
    }
    let or = |o: &Option<String>, d: &String| o.clone().unwrap_or_else(|| d.clone());
    Some(Timings {
        lease_duration: or(&args.controller_lease_duration, &args.lease_duration),
        renew_deadline: or(&args.controller_renew_deadline, &args.renew_deadline),
        retry_period: or(&args.controller_retry_period, &args.retry_period),
    })
}

/// A steady window needs this long without an address Lease write.
pub const SETTLE_QUIET: Duration = Duration::from_secs(10);
/// The longest the steady window waits for rebalancing to end.
pub const SETTLE_MAX: Duration = Duration::from_secs(600);

/// Waits until rebalancing has ended: no hand-over can start before every lease has been held
/// for the agents' `rebalance_after` (`EngineOptions::agent`'s), then until the agents write
/// no address Lease for [`SETTLE_QUIET`]. Returns when (seconds after `started`, which is
/// `since`: "the first create", "the restart").
async fn settle(c: &Cluster, args: &Args, started: Instant, since: &str, say: &Say) -> Option<f64> {
    let lease = ferrolb::lease::parse_duration(&args.lease_duration).unwrap_or_default();
    let cfg = ferrolb::lease::LeaseConfig {
        lease_duration: lease,
        ..Default::default()
    };
    let rebalance = ferrolb::lease::EngineOptions::agent("", "", cfg)
        .rebalance_after
        .unwrap_or_default();
    let t0 = Instant::now();
    say.line(format!(
        "      waiting for rebalancing to end (hand-overs start {rebalance:?} after the last acquisition)"
    ));
    tokio::time::sleep(rebalance + lease).await;
    // From the agents' own counters, not by listing every address Lease: a LIST of 10k Leases
    // every few seconds kept the stand-in busy long enough to delay presence renewals past
    // their deadline (periodic sticky episodes every ≈ 6 s in a 10k run).
    let mut before = agents_lease_changes(c);
    while t0.elapsed() < SETTLE_MAX {
        tokio::time::sleep(SETTLE_QUIET).await;
        let now = agents_lease_changes(c);
        let moved = now.saturating_sub(before);
        if moved == 0 {
            let at = started.elapsed().as_secs_f64();
            say.line(format!(
                "      settled: no address Lease written for {SETTLE_QUIET:?}, {at:.1} s after {since} ({:?} per agent)",
                agents_held(c)
            ));
            return Some(at);
        }
        before = now;
    }
    say.line(format!(
        "      not settled within {SETTLE_MAX:?}: address Leases still change hands; the window starts anyway"
    ));
    None
}

async fn measure(
    c: &mut Cluster,
    args: &Args,
    say: &Say,
    vip: IpAddr,
) -> anyhow::Result<Measurements> {
    let mut m = Measurements::default();
    say.line(format!(
        "[measure] {} crash and {} graceful failovers",
        args.repeat, args.repeat
    ));
    let within = failover_wait(args);
    for i in 0..args.repeat {
        for sig in ["KILL", "TERM"] {
            let f = failover_and_restart(c, vip, sig, within)?;
            if sig == "KILL" {
                m.crash_ms.push(f.millis);
            } else {
                m.graceful_ms.push(f.millis);
            }
        }
        say.progress(&format!("round {}/{}", i + 1, args.repeat), Instant::now());
    }
    say.clear();
    m.crash_ms.sort_unstable();
    m.graceful_ms.sort_unstable();
    for (name, v) in [("crash", &m.crash_ms), ("graceful", &m.graceful_ms)] {
        say.line(format!(
            "      {name:<9} p50 {:>6} ms  p95 {:>6} ms  p99 {:>6} ms  (n={})",
            percentile(v, 50.0).unwrap_or(0),
            percentile(v, 95.0).unwrap_or(0),
            percentile(v, 99.0).unwrap_or(0),
            v.len()
        ));
    }
    m.link_loss_ms = linkloss::measure(c, vip, args.repeat, within, say)?;
    // Steady-state API load with S Services.
    let s = args.measure_services;
    say.line(format!("[measure] steady-state API load with {s} Services"));
    let have = args.services;
    let all: Vec<usize> = (0..args.nodes).collect();
    // IPv6 SingleStack: the lab's /64 has room for any S (its IPv4 pool has 241 addresses).
    // Created 16 at a time (one at a time, 10k Services took longer than the run's budget).
    let track = coldstart::Tracker::start(c, "default", "load-", s.saturating_sub(have)).await?;
    let started = Instant::now();
    let cl: &Cluster = c;
    futures::stream::iter(have..s)
        .map(|i| {
            let all = &all;
            async move {
                let n = format!("load-{}", i + 1);
                let mut svc = echo_service(&n, false);
                svc["spec"]["ipFamilyPolicy"] = "SingleStack".into();
                svc["spec"]["ipFamilies"] = serde_json::json!(["IPv6"]);
                // No NodePorts: a cluster has only 2,768 and `--measure-services` may be 10k.
                svc["spec"]["allocateLoadBalancerNodePorts"] = false.into();
                cl.create_json(&svc).await?;
                cl.create_endpoints("default", &n, all).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    say.line(format!(
        "      created {} Services + EndpointSlices in {:.1} s",
        s.saturating_sub(have),
        started.elapsed().as_secs_f64()
    ));
    m.controller = track
        .wait(started, Duration::from_secs(120 + s as u64 / 50))
        .await;
    m.controller.controller_peak_rss_kib = coldstart::controller_peak_rss(c);
    say.line(coldstart::summary(&m.controller));
    // Every address has a lease of its own: wait until the agents hold all of them (their own
    // gauges), so memory is taken with every address announced somewhere.
    let held_wait = Duration::from_secs(120 + s as u64 / 10);
    let wait_start = Instant::now();
    let mut last_line = wait_start;
    loop {
        let held = agents_held(c);
        let total: u64 = held.iter().sum();
        if total as usize >= s {
            m.all_held_after_s = Some(started.elapsed().as_secs_f64());
            say.clear();
            say.line(format!(
                "      all {s} address leases held {:.1} s after the first create ({held:?} per agent)",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if wait_start.elapsed() > held_wait {
            say.clear();
            say.line(format!(
                "      only {total} of {s} address leases held after waiting {held_wait:?} ({held:?} per agent); figures below are at that point"
            ));
            break;
        }
        if say.tty() {
            say.progress(&format!("leases held {total}/{s}"), wait_start);
        } else if last_line.elapsed() >= Duration::from_secs(30) {
            last_line = Instant::now();
            say.line(format!(
                "      leases held {total}/{s} after {:.0} s ({held:?} per agent)",
                wait_start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The window is the steady state: after the rebalancing hand-overs (`rebalance_after`
    // from the last acquisition on, one per node per retry period) have moved the first-come
    // split to the load-bounded one.
    m.settled_after_s = settle(c, args, started, "the first create", say).await;
    let versions = burst::address_lease_versions(c).await.ok();
    let before = c.api_requests().await?;
    let window = Duration::from_secs(20);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let after = c.api_requests().await?;
    if let (Some(v0), Ok(v1)) = (versions, burst::address_lease_versions(c).await) {
        m.steady_address_lease_writes = Some(burst::address_writes_between(&v0, &v1));
    }
    let secs = t.elapsed().as_secs_f64();
    m.steady_window_s = secs;
    m.addresses = s;
    m.steady_requests_by_kind = requests_by_kind(&before, &after, secs);
    let rate = |reads_only: bool| -> f64 {
        m.steady_requests_by_kind
            .iter()
            .filter(|(verb, _, _)| !reads_only || verb == "get" || verb == "list")
            // Not `sum()`: an empty f64 sum is -0.0, printed "-0.00".
            .fold(0.0, |a, k| a + k.2)
    };
    m.steady_api_requests_per_s = rate(false);
    m.steady_api_reads_per_s = rate(true);
    // kube-apiserver's counters do not tell clients apart: with --api kube the figure is
    // everyone's (agents, controllers, the lab and the server's own loopback clients).
    let who = if c.real.is_some() {
        "all clients (kube-apiserver's apiserver_request_total)"
    } else {
        "agents"
    };
    say.line(format!(
        "      {who}: {:.1} requests/s for {s} addresses = {:.1} per 1000 addresses/s; reads (GET/LIST) {:.2}/s",
        m.steady_api_requests_per_s,
        m.steady_api_requests_per_s * 1000.0 / s as f64,
        m.steady_api_reads_per_s
    ));
    let kinds: Vec<String> = m
        .steady_requests_by_kind
        .iter()
        .map(|(verb, resource, r)| format!("{verb} {resource} {r:.1}/s"))
        .collect();
    say.line(format!("      by kind: {}", kinds.join(", ")));
    if let Some(w) = m.steady_address_lease_writes {
        say.line(format!(
            "      address Leases written in the window: {w} (the other lease writes are presence renewals)"
        ));
    }
    let each = |procs: &[Option<procs::Proc>], read: fn(&procs::Proc) -> Option<u64>| -> Vec<u64> {
        procs.iter().flatten().filter_map(read).collect()
    };
    m.agent_peak_rss_kib = each(&c.agents, procs::Proc::peak_rss_kib);
    m.agent_rss_kib = each(&c.agents, procs::Proc::rss_kib);
    m.controller_peak_rss_kib = each(&c.controllers, procs::Proc::peak_rss_kib);
    m.agent_leases_held = agents_held(c);
    say.line(format!(
        "      peak RSS: agents {:?} KiB, controllers {:?} KiB; agents' RSS now {:?} KiB",
        m.agent_peak_rss_kib, m.controller_peak_rss_kib, m.agent_rss_kib
    ));
    // ARP reply latency: our responder (VIP) vs the kernel (a node's own address), same run.
    let node_ip = IpAddr::V4(c.topo.nodes[0].ipv4);
    let (ours, kernel) = tokio::task::block_in_place(|| {
        (
            probe::arping(c.topo.client(), vip, 50),
            probe::arping(c.topo.client(), node_ip, 50),
        )
    });
    m.arp_ours_median_ms = median(ours.iter().map(|r| r.rtt_ms).collect());
    m.arp_kernel_median_ms = median(kernel.iter().map(|r| r.rtt_ms).collect());
    say.line(format!(
        "      ARP reply latency (median of 50): ours {:.3} ms, kernel {:.3} ms, ratio {:.2}",
        m.arp_ours_median_ms,
        m.arp_kernel_median_ms,
        m.arp_ours_median_ms / m.arp_kernel_median_ms.max(1e-9)
    ));
    let mut restarted: Option<Instant> = None;
    for sig in ["KILL", "TERM"] {
        if let Some(at) = restarted.filter(|_| args.prefer_node.is_none()) {
            // The stopped agent was restarted after the previous burst: it relists every kind
            // and takes its share back by hand-overs. A burst started meanwhile would time
            // that recovery, not a failover of a settled cluster.
            settle(c, args, at, "the restart", say).await;
        }
        if let Some(node) = &args.prefer_node {
            // Handed back one address per retry period per node after a restart: wait.
            let wait = Duration::from_secs(120 + s as u64 / 2);
            let (held, total) =
                prefer::wait_concentrated(c, node, 0.95, wait, Duration::from_secs(2)).await?;
            say.line(format!(
                "      {node} holds {held} of {total} address Leases before the SIG{sig} burst"
            ));
        }
        match burst::burst(c, sig, 20, within).await {
            Ok(b) => {
                say.line(format!(
                    "      burst {}: {} held {} addresses; {} of {} sampled answered again via another node, first after {:?} ms, last after {:?} ms",
                    b.kind, b.node, b.held, b.answered, b.sampled, b.first_ms, b.last_ms
                ));
                say.line(format!(
                    "            all its address Leases moved after {:?} ms; agents' writes {:?} in {} ms ({})",
                    b.all_moved_ms,
                    b.agent_writes,
                    b.window_ms,
                    b.agent_writes.map_or("n/a".to_string(), |w| format!(
                        "{:.0}/s",
                        w as f64 * 1000.0 / b.window_ms.max(1) as f64
                    ))
                ));
                if !b.agent_writes_by_kind.is_empty() {
                    say.line(format!("            by kind: {}", b.writes_by_kind()));
                }
                m.bursts.push(b);
            }
            Err(e) => say.line(format!("      burst SIG{sig}: {e:#}")),
        }
        restarted = Some(Instant::now());
    }
    if args.baseline_leases > 0 {
        m.baseline = Some(run_baseline(c, args, say, m.steady_api_requests_per_s).await?);
    }
    Ok(m)
}

/// `--baseline-leases`: the poll-every-retry baseline, reported beside the agents' steady load.
async fn run_baseline(
    c: &Cluster,
    args: &Args,
    say: &Say,
    agents_per_s: f64,
) -> anyhow::Result<baseline::Baseline> {
    let n = args.baseline_leases;
    let retry = ferrolb::lease::parse_duration(&args.retry_period).map_err(anyhow::Error::msg)?;
    let lease = ferrolb::lease::parse_duration(&args.lease_duration).map_err(anyhow::Error::msg)?;
    say.line(format!(
        "[measure] poll-every-retry baseline: {n} Leases, GET + PUT of each every {} (client-go style)",
        args.retry_period
    ));
    c.create_json(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": baseline::NAMESPACE}}))
        .await?;
    let b = baseline::run(
        c.client.clone(),
        n,
        args.nodes,
        retry,
        lease,
        Duration::from_secs(20),
    )
    .await?;
    say.line(format!(
        "      wanted {:.0} requests/s; achieved reads {:.1}/s, writes {:.1}/s, errors {:.1}/s over {:.1} s",
        b.wanted_per_s, b.reads_per_s, b.writes_per_s, b.errors_per_s, b.window_s
    ));
    say.line(format!(
        "      longest gap between two renewals of one Lease {} ms; {} of {n} Leases went longer than the lease duration ({})",
        b.max_gap_ms, b.leases_past_duration, args.lease_duration
    ));
    say.line(format!(
        "      writes: baseline {:.1}/s vs the agents' steady {:.1}/s for {} addresses (ratio {:.1})",
        b.writes_per_s,
        agents_per_s,
        args.measure_services,
        b.writes_per_s / agents_per_s.max(1e-9)
    ));
    Ok(b)
}

/// The agents' (clients named `node…`; `*` = every client, on the real server) request rates
/// between two counter readings, by
/// (verb, resource), busiest first; kinds without requests in the window are left out.
fn requests_by_kind(
    before: &[(String, String, String, f64)],
    after: &[(String, String, String, f64)],
    secs: f64,
) -> Vec<(String, String, f64)> {
    let mut delta: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for (sign, v) in [(-1.0, before), (1.0, after)] {
        for (verb, resource, client, n) in v {
            // `*`: kube-apiserver's own counters, which have no client label.
            if client.starts_with("node") || client == "*" {
                *delta.entry((verb.clone(), resource.clone())).or_default() += sign * n;
            }
        }
    }
    let mut out: Vec<(String, String, f64)> = delta
        .into_iter()
        .filter(|(_, d)| *d > 0.0)
        .map(|((verb, resource), d)| (verb, resource, d / secs.max(1e-9)))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

/// How long a failover may take before the lab calls it failed: 30 s, or twice the lease
/// duration and 10 s more when leases are longer (a crashed holder's lease must expire first).
fn failover_wait(args: &Args) -> Duration {
    let lease = ferrolb::lease::parse_duration(&args.lease_duration).unwrap_or_default();
    (lease * 2 + Duration::from_secs(10)).max(Duration::from_secs(30))
}

/// `read` applied to the metrics text of every running agent (empty when it cannot be read).
fn each_agent_metrics<T>(c: &Cluster, read: impl Fn(&str) -> T) -> Vec<T> {
    (0..c.agents.len())
        .filter(|i| c.agents[*i].is_some())
        .map(|i| read(&tokio::task::block_in_place(|| c.agent_metrics(i)).unwrap_or_default()))
        .collect()
}

/// `ferrolb_agent_leases_held` of every running agent (0 when its metrics cannot be read).
fn agents_held(c: &Cluster) -> Vec<u64> {
    each_agent_metrics(c, |t| {
        gauge(t, "ferrolb_agent_leases_held").unwrap_or(0.0) as u64
    })
}

/// The agents' address Lease writes so far (`ferrolb_agent_lease_writes_total`, every outcome
/// but presence renewals): a hand-over, a takeover or a lost race moves it.
fn agents_lease_changes(c: &Cluster) -> u64 {
    each_agent_metrics(c, |t| {
        ["create", "acquire", "release", "delete", "conflict"]
            .iter()
            .filter_map(|op| {
                gauge(
                    t,
                    &format!("ferrolb_agent_lease_writes_total{{op=\"{op}\"}}"),
                )
            })
            .sum::<f64>() as u64
    })
    .into_iter()
    .sum()
}

/// The value of the sample named exactly `name` in Prometheus text: an unlabelled metric, or
/// one labelled sample as printed (`metric{label="value"}`).
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            lab: Args,
        }
        let argv = std::iter::once("lab").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().lab
    }

    #[test]
    fn controllers_take_the_agents_timing_unless_a_controller_flag_is_given() {
        assert!(controller_timings(&parse(&[])).is_none());
        let t = controller_timings(&parse(&[
            "--lease-duration",
            "2s",
            "--controller-lease-duration",
            "15s",
            "--controller-retry-period",
            "2s",
        ]))
        .unwrap();
        assert_eq!(
            (
                t.lease_duration.as_str(),
                t.renew_deadline.as_str(),
                t.retry_period.as_str()
            ),
            ("15s", "600ms", "2s"),
            "the renew deadline not given falls back to the agents' (default 600ms)"
        );
    }

    #[test]
    fn no_l2_announcements_reaches_the_agents() {
        assert!(agent_args(&parse(&[])).is_empty());
        assert_eq!(
            agent_args(&parse(&["--no-l2-announcements"])),
            vec!["--no-l2-announcements".to_string()]
        );
    }

    #[test]
    fn requests_by_kind_counts_agents_only_busiest_first() {
        let row = |verb: &str, res: &str, client: &str, n: f64| {
            (verb.to_string(), res.to_string(), client.to_string(), n)
        };
        let before = vec![
            row("update", "leases", "node1", 100.0),
            row("update", "leases", "node2", 50.0),
            row("create", "events", "node1", 10.0),
            row("patch", "services", "controller-0", 5.0),
        ];
        let after = vec![
            row("update", "leases", "node1", 140.0),
            row("update", "leases", "node2", 70.0),
            row("create", "events", "node1", 10.0),
            row("create", "events", "node3", 4.0),
            row("patch", "services", "controller-0", 500.0),
        ];
        let got = requests_by_kind(&before, &after, 2.0);
        assert_eq!(
            got,
            vec![
                ("update".to_string(), "leases".to_string(), 30.0),
                ("create".to_string(), "events".to_string(), 2.0),
            ]
        );
    }

    #[test]
    fn gauge_reads_one_labelled_sample() {
        let text = "ferrolb_agent_lease_writes_total{op=\"acquire\"} 602\n\
                    ferrolb_agent_lease_writes_total{op=\"renew\"} 7149\n";
        let name = |op: &str| format!("ferrolb_agent_lease_writes_total{{op=\"{op}\"}}");
        assert_eq!(gauge(text, &name("acquire")), Some(602.0));
        assert_eq!(gauge(text, &name("release")), None);
    }

    #[test]
    fn gauge_reads_the_unlabelled_sample_only() {
        let text = "# HELP ferrolb_agent_leases_held x\n\
                    # TYPE ferrolb_agent_leases_held gauge\n\
                    ferrolb_agent_leases_held_total 9\n\
                    ferrolb_agent_leases_held 3412\n";
        assert_eq!(gauge(text, "ferrolb_agent_leases_held"), Some(3412.0));
        assert_eq!(gauge(text, "ferrolb_agent_groups_desired"), None);
    }
}
