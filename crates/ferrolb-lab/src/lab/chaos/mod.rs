//! `ferrolb lab --chaos` (issue 15): minutes of seeded random faults on the lab's segment with
//! the invariants checked from the outside.
//!
//! - [`schedule`]: the faults, a pure function of the seed (same seed → same schedule);
//! - [`faults`]: the injectors (signals, the stand-in's fault rules, bridge ports, the wires' loss and delay,
//!   Service/pool/policy churn), inside the lab's namespaces only;
//! - [`observe`]: the checkers — two answerers (ARP capture on the bridge), unavailability (the
//!   client's HTTP probes) against the bound the active faults allow, stability (the API
//!   objects), resources (/proc);
//! - [`report`]: the table and the JSON.
//!
//! The runner here is the thin loop: start the observers, play the schedule, poll the API and
//! /proc between faults, then judge what was recorded.

pub mod faults;
pub mod observe;
pub mod report;
pub mod schedule;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube::api::Api;

use super::cluster::{ingress_ips, Cluster, LabConfig};
use super::probe::{self, now_ms, parse_probe, Stream};
use observe::{AnswererEvent, Bounds, ProcSamples, Stability, SvcView, Violation, Window};
use report::{ChaosReport, DoubleRow, EventRow, ResourceRow};
use schedule::{Kind, Plan, Planned};

/// What one chaos run does.
#[derive(Debug, Clone)]
pub struct Opts {
    pub seed: u64,
    pub duration: Duration,
    /// Services watched throughout (`steady-1` …).
    pub services: usize,
    /// Also watch an `externalTrafficPolicy: Local` Service ([`faults::LOCAL_SERVICE`]) with
    /// one ready endpoint, which [`Kind::EndpointMove`] moves between nodes.
    pub local: bool,
    /// Dual-stack Services (watched and churn), NDP asked and captured besides ARP (`--ipv6`).
    pub ipv6: bool,
    /// Kinds that may be drawn (empty: all).
    pub kinds: Vec<Kind>,
    pub max_concurrent: usize,
    /// The agents' `--rank-step` (their default, 100 ms, unless the lab passes another).
    pub rank_step_ms: u64,
}

impl Opts {
    pub fn new(seed: u64, duration: Duration) -> Self {
        Opts {
            seed,
            duration,
            services: 2,
            local: true,
            ipv6: false,
            kinds: vec![],
            max_concurrent: 3,
            rank_step_ms: 100,
        }
    }
}

/// Parses `agent-kill,api-outage` into kinds.
pub fn parse_kinds(s: &[String]) -> anyhow::Result<Vec<Kind>> {
    s.iter()
        .flat_map(|x| x.split(','))
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name() == x.trim())
                .with_context(|| {
                    format!(
                        "unknown fault kind {x:?}; kinds: {}",
                        Kind::ALL.map(|k| k.name()).join(", ")
                    )
                })
        })
        .collect()
}

/// Lines from a child process parsed into records by a thread, until stopped.
struct Collector<T> {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
    data: Arc<Mutex<Vec<T>>>,
}

impl<T: Send + 'static> Collector<T> {
    fn spawn(s: Stream, parse: impl Fn(&str) -> Option<T> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(Vec::new()));
        let (st, d) = (stop.clone(), data.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(line) = s.next(Duration::from_millis(200)) {
                    if let Some(v) = parse(&line) {
                        d.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                }
            }
            // Dropping `s` kills the child.
        });
        Collector { stop, handle, data }
    }

    fn finish(self) -> Vec<T> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        std::mem::take(&mut *self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The client's HTTP probes through one address: (epoch ms, the answering node or None).
type ProbeCollector = Collector<(u64, Option<String>)>;

/// arping processes per address (see `run_on`).
const ARPINGS: usize = 4;

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    }
}

/// tcpdump of every ARP frame on the bridge (`br0` in the bridge namespace sees every port's
/// frames) — and with `ndp` every Neighbor Solicitation and Advertisement — once it captures.
fn bridge_capture(c: &Cluster, ndp: bool) -> anyhow::Result<Stream> {
    let filter = if ndp {
        "'arp or (icmp6 and (ip6[40] == 135 or ip6[40] == 136))'"
    } else {
        "arp"
    };
    let mut cmd = c.topo.seg.bridge.cmd("sh");
    cmd.args([
        "-c",
        &format!("exec tcpdump -i br0 -l -n -e -tt --immediate-mode {filter} 2>&1"),
    ]);
    let s = Stream::spawn(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(l) = s.next(Duration::from_millis(500)) {
            if l.contains("listening on") {
                return Ok(s);
            }
        }
    }
    bail!("tcpdump did not start on the bridge")
}

/// One snapshot of the LoadBalancer Services and the pools.
async fn snapshot(c: &Cluster) -> anyhow::Result<(Vec<SvcView>, Vec<ferrolb::ipam::PoolDef>)> {
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::all(c.client.clone());
    let pools: Api<ferrolb::api::LoadBalancerIPPool> = Api::all(c.client.clone());
    let list = Default::default();
    let (s, p) = tokio::time::timeout(Duration::from_secs(3), async {
        futures::try_join!(svcs.list(&list), pools.list(&list))
    })
    .await
    .context("API snapshot timed out")??;
    let views = s
        .items
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .map(|s| SvcView {
            key: format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            ),
            labels: ferrolb::ipam::selector::service_labels(s),
            ips: ingress_ips(s),
            not_covered: s
                .status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == ferrolb::api::COND_NOT_COVERED && c.status == "True")
                }),
        })
        .collect();
    let defs = p
        .items
        .iter()
        .map(|p| ferrolb::ipam::PoolDef::from_crd(p).0)
        .collect();
    Ok((views, defs))
}

/// The agents' own `ForeignAnswerer` and `AddressDefended` Events (name → Event): an agent saw
/// another station answer ARP/NDP for an address it announces, or announce one, and defended
/// it.
async fn foreign_answerers(c: &Cluster) -> anyhow::Result<BTreeMap<String, AnswererEvent>> {
    use ferrolb::agent::conflicts::{REASON_ADDRESS_DEFENDED, REASON_FOREIGN_ANSWERER};
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::all(c.client.clone());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| {
            let defended = match e.reason.as_deref() {
                Some(REASON_FOREIGN_ANSWERER) => false,
                Some(REASON_ADDRESS_DEFENDED) => true,
                _ => return None,
            };
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.series.as_ref().map(|s| s.last_observed_time.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            let (mac, reporter, address) = observe::parse_event_note(e.note.as_deref()?)?;
            let other = c
                .topo
                .node_by_mac(&mac)
                .and_then(|i| c.topo.nodes.get(i))
                .map_or(mac, |n| n.name.clone());
            Some((
                e.metadata.name.unwrap_or_default(),
                AnswererEvent {
                    at_ms: u64::try_from(at.as_millisecond()).unwrap_or(0),
                    defended,
                    service: e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    address,
                    reporter,
                    other,
                },
            ))
        })
        .collect())
}

/// The node that answered the client's last HTTP probe through `vip` within the last second
/// (the echo backend names its node): the holder as clients see it — found without the API
/// server, which a fault may have taken away at that moment.
fn holder_of(probes: &[(IpAddr, ProbeCollector)], vip: usize) -> Option<String> {
    let (_, p) = probes.get(vip)?;
    let data = p.data.lock().unwrap_or_else(|e| e.into_inner());
    let (at, node) = data.iter().rev().find(|x| x.1.is_some())?;
    (now_ms().saturating_sub(*at) <= 1_000)
        .then(|| node.clone())
        .flatten()
}

/// The node a node fault hits: the holder of a watched address for a holder-targeted fault
/// (when it carries no other fault), else the planned node, else — when that one carries a
/// fault (a holder-targeted fault went there) — the lowest free node. The schedule keeps at
/// most nodes − 1 node faults at once, so one is free; None if not (the fault is skipped).
fn resolve_node(
    planned: usize,
    holder: Option<usize>,
    busy: &BTreeMap<usize, usize>,
    nodes: usize,
) -> Option<(usize, bool)> {
    if let Some(h) = holder.filter(|h| !busy.contains_key(h)) {
        return Some((h, true));
    }
    if !busy.contains_key(&planned) && planned < nodes {
        return Some((planned, false));
    }
    (0..nodes)
        .find(|i| !busy.contains_key(i))
        .map(|i| (i, false))
}

/// Samples RSS and fds of every running agent and controller.
fn sample(c: &Cluster, procs: &mut BTreeMap<u32, ProcSamples>) {
    let at = now_ms();
    let all = c.agents.iter().chain(c.controllers.iter()).flatten();
    for p in all {
        let pid = p.pid();
        let (Some(rss), Some(fds)) = (p.rss_kib(), observe::fd_count(pid)) else {
            continue;
        };
        procs
            .entry(pid)
            .or_insert_with(|| ProcSamples {
                name: p.name.clone(),
                pid,
                samples: vec![],
            })
            .samples
            .push((at, rss, fds));
    }
}

fn ms(s: &str) -> anyhow::Result<u64> {
    Ok(ferrolb::lease::parse_duration(s)
        .map_err(anyhow::Error::msg)?
        .as_millis() as u64)
}

/// The frame counts of every wire of the segment, summed.
fn wire_totals(c: &Cluster) -> crate::wire::WireStats {
    let mut t = crate::wire::WireStats::default();
    for w in c.topo.seg.wires.values() {
        let s = w.stats();
        t.forwarded += s.forwarded;
        t.dropped += s.dropped;
        t.send_errors += s.send_errors;
    }
    t
}

/// Runs one chaos schedule on a running lab (pools and policy applied). Returns the report and
/// the wall-clock start (epoch ms) the report's times are relative to.
pub async fn run_on(
    c: &mut Cluster,
    o: &Opts,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<(ChaosReport, u64)> {
    let nodes = c.topo.nodes.len();
    let bounds = Bounds::new(
        ms(&c.cfg.timings.lease_duration)?,
        ms(&c.cfg.timings.retry_period)?,
        nodes,
        o.rank_step_ms,
    );
    let node_names: Vec<String> = c.topo.nodes.iter().map(|n| n.name.clone()).collect();
    // The watched Services.
    let all: Vec<usize> = (0..nodes).collect();
    let mut services = Vec::new();
    let mut vips = Vec::new();
    for i in 0..o.services {
        let name = format!("steady-{}", i + 1);
        c.create_json(&super::echo_service(&name, o.ipv6)).await?;
        c.create_endpoints("default", &name, &all).await?;
        let ips = c
            .wait_ingress("default", &name, Duration::from_secs(60))
            .await?;
        for ip in &ips {
            c.topo.add_vip_on_nodes(*ip)?;
        }
        vips.extend(ips.iter().copied());
        services.push((name, ips));
    }
    let mut local_vips = Vec::new();
    if o.local {
        // One ready endpoint (node1's), moved by `endpoint-move`.
        let name = faults::LOCAL_SERVICE;
        let mut svc = super::echo_service(name, o.ipv6);
        svc["spec"]["externalTrafficPolicy"] = "Local".into();
        c.create_json(&svc).await?;
        c.create_endpoints("default", name, &[0]).await?;
        let ips = c
            .wait_ingress("default", name, Duration::from_secs(60))
            .await?;
        for ip in &ips {
            c.topo.add_vip_on_nodes(*ip)?;
        }
        vips.extend(ips.iter().copied());
        local_vips.extend(ips.iter().copied());
        services.push((name.to_string(), ips));
    }
    // Every LoadBalancer Service keeps its address unless the user changes it: the watched
    // ones throughout, the churn ones between the changes the schedule asks for (see
    // `Stability::forget` below).
    let stable: Vec<String> = services
        .iter()
        .map(|(n, _)| format!("default/{n}"))
        .chain((1..=schedule::CHURN_SERVICES).map(|i| format!("default/chaos-{i}")))
        .collect();
    // Observers.
    let client_ip = IpAddr::V4(c.topo.client_ipv4);
    let client_mac = c.topo.client().mac("eth0")?;
    let capture = Collector::spawn(bridge_capture(c, o.ipv6)?, move |l| {
        observe::parse_arp(l, client_ip).or_else(|| observe::parse_ndp(l, &client_mac))
    });
    let mut arpings = Vec::new();
    let mut probers = Vec::new();
    for vip in &vips {
        if vip.is_ipv6() {
            // ndisc6 asks once and returns with the first answer (or after 150 ms): a loop asks
            // about every 250 ms, like the 4 arpings below.
            let mut cmd = c.topo.client().cmd("sh");
            cmd.args([
                "-c",
                &format!(
                    "while :; do ndisc6 -q -r 1 -w 150 {vip} eth0 >/dev/null 2>&1; sleep 0.2; done"
                ),
            ]);
            arpings.push(Stream::spawn(cmd)?);
        }
        // iputils arping asks once a second at most: 4 of them, 250 ms apart, ask every 250 ms.
        for k in (0..ARPINGS).filter(|_| vip.is_ipv4()) {
            let mut cmd = c.topo.client().cmd("sh");
            cmd.args([
                "-c",
                &format!(
                    "sleep {:.2}; exec arping -b -i 1 -I eth0 {vip}",
                    k as f64 / ARPINGS as f64
                ),
            ]);
            arpings.push(Stream::spawn(cmd)?);
        }
        let p = probe::prober(c.topo.client(), &c.cfg.exe, &url(*vip), 100)?;
        probers.push((
            *vip,
            Collector::spawn(p, |l| parse_probe(l).map(|p| (p.at_ms, p.node))),
        ));
    }
    if o.kinds.is_empty() || o.kinds.contains(&Kind::LossDelay) {
        // Every node's link gets its wire now, idle until a loss-delay fault: moving a port
        // while faults run would be a fault of its own.
        for i in 0..nodes {
            c.topo
                .seg
                .wire_member(faults::wired(i), o.seed.wrapping_add(i as u64))?;
        }
    }
    let wires_before = wire_totals(c);
    // Every address answers before the first fault.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (vip, p) in &probers {
        while !p
            .data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|x| x.1.is_some())
        {
            if Instant::now() > deadline {
                bail!("{vip} did not answer HTTP within 60 s before the chaos started");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let notes = Vec::new();
    let foreign_before = foreign_answerers(c).await.unwrap_or_default();
    let kinds = if o.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        o.kinds.clone()
    };
    let plan = schedule::generate(&Plan {
        seed: o.seed,
        duration_ms: o.duration.as_millis() as u64,
        nodes,
        controllers: c.cfg.controllers,
        kinds,
        max_concurrent: o.max_concurrent,
    });
    say(format!(
        "chaos: seed {}, {} faults planned over {:?} (replay: --seed {})",
        o.seed,
        plan.len(),
        o.duration,
        o.seed
    ));
    // Events: (offset, 0 = end / 1 = start, index); ends first at the same offset.
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        events.push((p.at_ms, 1, i));
        if p.lasts_ms > 0 {
            events.push((p.end_ms(), 0, i));
        }
    }
    events.sort_unstable();
    let t0 = Instant::now();
    let start_ms = now_ms();
    let duration_ms = o.duration.as_millis() as u64;
    let mut active: BTreeMap<usize, (Window, faults::Undo, Planned)> = BTreeMap::new();
    // Node → the plan index of the fault it carries (node faults as resolved).
    let mut busy: BTreeMap<usize, usize> = BTreeMap::new();
    let (mut at_holder, mut holder_fallback) = (0usize, 0usize);
    let mut windows: Vec<Window> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut stability = Stability::default();
    let mut violations: Vec<Violation> = Vec::new();
    let mut procs: BTreeMap<u32, ProcSamples> = BTreeMap::new();
    let (mut snapshots, mut snapshot_errors) = (0, 0);
    let (mut next_poll, mut next_sample) = (0u64, 0u64);
    let mut ei = 0;
    let window_of = |p: &Planned| Window {
        label: p.label(&node_names),
        kind: p.kind,
        node: p
            .target
            .filter(|_| p.kind.on_node())
            .and_then(|i| node_names.get(i).cloned()),
        start_ms: now_ms(),
        end_ms: 0,
    };
    loop {
        let now = t0.elapsed().as_millis() as u64;
        if let Some(&(at, what, i)) = events.get(ei) {
            if at <= now {
                ei += 1;
                if what == 1 {
                    let mut p = plan[i].clone();
                    if p.kind.on_node() {
                        let holder = if p.on_holder && !vips.is_empty() {
                            holder_of(&probers, (p.at_ms as usize) % vips.len())
                                .and_then(|n| node_names.iter().position(|x| *x == n))
                        } else {
                            None
                        };
                        let Some((node, hit)) =
                            resolve_node(p.target.unwrap_or(0), holder, &busy, nodes)
                        else {
                            errors.push(format!("no free node for {}", p.label(&node_names)));
                            continue;
                        };
                        if p.on_holder {
                            if hit {
                                at_holder += 1;
                            } else {
                                holder_fallback += 1;
                            }
                        }
                        p.on_holder = hit;
                        p.target = Some(node);
                        if p.lasts_ms > 0 {
                            busy.insert(node, i);
                        }
                    }
                    if matches!(
                        p.kind,
                        Kind::ChurnCreate
                            | Kind::ChurnDelete
                            | Kind::ChurnRetype
                            | Kind::ChurnReclass
                    ) {
                        stability.forget(&format!("default/chaos-{}", p.target.unwrap_or(0) + 1));
                    }
                    let p = &p;
                    let mut w = window_of(p);
                    say(format!(
                        "  {:>7.1}s  {} for {:.1}s",
                        now as f64 / 1000.0,
                        w.label,
                        p.lasts_ms as f64 / 1000.0
                    ));
                    match faults::start(c, p, o.ipv6).await {
                        Ok(undo) => {
                            *injected.entry(p.kind.name().into()).or_default() += 1;
                            if p.lasts_ms == 0 {
                                if let Err(e) = faults::end(c, p, undo).await {
                                    errors.push(format!("ending {}: {e:#}", w.label));
                                }
                                w.end_ms = now_ms();
                                windows.push(w);
                            } else {
                                active.insert(i, (w, undo, p.clone()));
                            }
                        }
                        Err(e) => {
                            busy.retain(|_, j| *j != i);
                            errors.push(format!("starting {}: {e:#}", w.label))
                        }
                    }
                } else if let Some((mut w, undo, p)) = active.remove(&i) {
                    if p.kind == Kind::ChurnReclass {
                        stability.forget(&format!("default/chaos-{}", p.target.unwrap_or(0) + 1));
                    }
                    if let Err(e) = faults::end(c, &p, undo).await {
                        errors.push(format!("ending {}: {e:#}", w.label));
                    }
                    busy.retain(|_, j| *j != i);
                    w.end_ms = now_ms();
                    windows.push(w);
                }
                continue;
            }
        }
        if now >= next_poll {
            next_poll = now + 2_000;
            match snapshot(c).await {
                Ok((svcs, pools)) => {
                    snapshots += 1;
                    let at = now_ms();
                    for mut v in stability.check(at, &stable, &svcs, &pools) {
                        v.active = active.values().map(|(w, _, _)| w.label.clone()).collect();
                        say(format!(
                            "  VIOLATION {} {}: {}",
                            v.kind, v.subject, v.detail
                        ));
                        violations.push(v);
                    }
                }
                Err(_) => snapshot_errors += 1,
            }
        }
        if now >= next_sample {
            next_sample = now + 5_000;
            sample(c, &mut procs);
        }
        if now >= duration_ms && ei >= events.len() {
            break;
        }
        let next = [
            events.get(ei).map_or(u64::MAX, |e| e.0),
            next_poll,
            next_sample,
            duration_ms,
        ]
        .into_iter()
        .min()
        .unwrap_or(duration_ms);
        let now = t0.elapsed().as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(next.saturating_sub(now).max(1))).await;
    }
    // Anything still active (none by the schedule's rules) ends now.
    for (_, (mut w, undo, p)) in std::mem::take(&mut active) {
        if let Err(e) = faults::end(c, &p, undo).await {
            errors.push(format!("ending {}: {e:#}", w.label));
        }
        w.end_ms = now_ms();
        windows.push(w);
    }
    windows.sort_by_key(|w| w.start_ms);
    drop(arpings);
    let arp = capture.finish();
    let probes: Vec<(IpAddr, observe::Probes)> =
        probers.into_iter().map(|(v, p)| (v, p.finish())).collect();
    // Judge.
    let mut r = ChaosReport {
        seed: o.seed,
        duration_s: o.duration.as_secs_f64(),
        nodes,
        services,
        timings: format!(
            "{}/{}/{}",
            c.cfg.timings.lease_duration, c.cfg.timings.renew_deadline, c.cfg.timings.retry_period
        ),
        faults: injected,
        injection_errors: errors,
        notes,
        ..Default::default()
    };
    let wires = wire_totals(c);
    r.observed.wire_frames = wires.forwarded - wires_before.forwarded;
    r.observed.wire_dropped = wires.dropped - wires_before.dropped;
    r.observed.snapshots = snapshots;
    r.observed.snapshot_errors = snapshot_errors;
    r.observed.arp_requests = arp
        .iter()
        .filter(|a| vips.contains(&a.1) && a.2 == observe::ArpEv::Request)
        .count();
    r.observed.arp_replies = arp
        .iter()
        .filter(|a| vips.contains(&a.1) && a.2 != observe::ArpEv::Request)
        .count();
    let node_of = |mac: &str| {
        c.topo
            .node_by_mac(mac)
            .map_or(mac.to_string(), |i| node_names[i].clone())
    };
    for vip in &vips {
        let evs: Vec<(u64, observe::ArpEv)> = arp
            .iter()
            .filter(|a| a.1 == *vip)
            .map(|a| (a.0, a.2.clone()))
            .collect();
        for d in observe::doubles(*vip, &evs) {
            let names: Vec<String> = d.macs.iter().map(|m| node_of(m)).collect();
            let (bound, why) = observe::double_bound(&d, &names, &windows, &bounds);
            if bound == 0 || d.length_ms() > bound {
                violations.push(Violation {
                    at_ms: d.start_ms,
                    kind: "two-answerers".into(),
                    subject: vip.to_string(),
                    detail: format!(
                        "{} and {} answered for {} ms over {} round(s) (bound {} ms)",
                        names.first().cloned().unwrap_or_default(),
                        names[1..].join(", "),
                        d.length_ms(),
                        d.rounds,
                        bound
                    ),
                    active: observe::active_at(&windows, d.start_ms, d.end_ms),
                });
            }
            r.two_answerers.push(DoubleRow {
                address: *vip,
                start_ms: d.start_ms,
                length_ms: d.length_ms(),
                rounds: d.rounds,
                nodes: names,
                bound_ms: bound,
                faults: why,
            });
        }
    }
    let mut gap_rows = Vec::new();
    for (vip, series) in &probes {
        r.observed.probes += series.len();
        r.observed.probe_failures += series.iter().filter(|p| p.1.is_none()).count();
        let local = local_vips.contains(vip);
        for g in observe::gaps(*vip, series) {
            let (bound, kinds) = observe::gap_bound_for(&g, &windows, &bounds, local);
            if g.open || g.length_ms() > bound {
                violations.push(Violation {
                    at_ms: g.start_ms,
                    kind: "unavailability".into(),
                    subject: vip.to_string(),
                    detail: format!(
                        "{} ms without an HTTP answer after {} ({} failed probes{}; bound {} ms)",
                        g.length_ms(),
                        g.holder.as_deref().unwrap_or("?"),
                        g.failures,
                        if g.open {
                            ", still failing at the end"
                        } else {
                            ""
                        },
                        bound
                    ),
                    active: observe::active_at(&windows, g.start_ms, g.end_ms),
                });
            }
            gap_rows.push((g, kinds));
        }
    }
    r.unavailability = report::unavailability(&gap_rows);
    for p in procs.values() {
        violations.extend(observe::growth(p));
        if let (Some(f), Some(l)) = (p.samples.first(), p.samples.last()) {
            r.resources.push(ResourceRow {
                process: p.name.clone(),
                pid: p.pid,
                lived_s: (l.0 - f.0) / 1000,
                rss_first_kib: f.1,
                rss_last_kib: l.1,
                fds_first: f.2,
                fds_last: l.2,
                compared: observe::compared(p),
            });
        }
    }
    if at_holder + holder_fallback > 0 {
        r.notes.push(format!(
            "holder-targeted node faults: {at_holder} hit the node that answered for the address, \
             {holder_fallback} the planned node (no answer in the last second, or the holder \
             carried another fault)"
        ));
    }
    match foreign_answerers(c).await {
        Ok(now) => {
            for (_, e) in now
                .into_iter()
                .filter(|(name, _)| !foreign_before.contains_key(name))
            {
                let excuse = observe::event_excuse(&e, &windows, &bounds);
                if excuse.is_empty() {
                    violations.push(Violation {
                        at_ms: e.at_ms,
                        kind: "foreign-answerer-event".into(),
                        subject: e
                            .address
                            .map_or_else(|| e.service.clone(), |a| a.to_string()),
                        detail: format!(
                            "{} wrote {} on {} about {} with no fault that allows a second \
                             answerer on either node",
                            e.reporter,
                            if e.defended {
                                "AddressDefended"
                            } else {
                                "ForeignAnswerer"
                            },
                            e.service,
                            e.other
                        ),
                        active: observe::active_at(&windows, e.at_ms, e.at_ms),
                    });
                }
                r.answerer_events.push(EventRow {
                    event: e,
                    faults: excuse.into_iter().map(|x| x.0).collect(),
                });
            }
            r.answerer_events.sort_by_key(|e| e.event.at_ms);
        }
        Err(e) => r.notes.push(format!("listing the agents' Events: {e:#}")),
    }
    violations.sort_by_key(|v| v.at_ms);
    r.violations = violations;
    r.bounds = Some(bounds);
    Ok((r, start_ms))
}

/// `ferrolb lab --chaos`: a lab with the pools and policy, one chaos run, the table (and JSON).
pub(super) async fn run(args: super::Args, cfg: LabConfig, say: super::Say) -> ferrolb::CmdResult {
    let duration = ferrolb::lease::parse_duration(&args.duration)
        .map_err(anyhow::Error::msg)
        .context("--duration")?;
    let seed = args
        .seed
        .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()));
    let mut o = Opts::new(seed, duration);
    o.services = args.services.max(1);
    o.kinds = parse_kinds(&args.faults)?;
    o.ipv6 = args.ipv6;
    let lab_dir = cfg.dir.clone();
    say.line(format!(
        "ferrolb lab --chaos: seed {seed}, {duration:?}, {} nodes, {} watched Service(s), lease {}/{}/{}",
        args.nodes, o.services, args.lease_duration, args.renew_deadline, args.retry_period
    ));
    let work = async {
        let mut c = Cluster::start_all(cfg).await?;
        for (name, text) in super::manifests(&args)? {
            if !name.ends_with("echo.yaml") {
                c.apply_yaml(&text)
                    .await
                    .with_context(|| format!("applying {name}"))?;
            }
        }
        let line = |s: String| say.line(s);
        let (r, start) = run_on(&mut c, &o, &line).await?;
        anyhow::Ok((r, start))
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (seed {seed}); cleaned up")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated (seed {seed}); cleaned up")),
    };
    let (r, start) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("logs of every process: {}", lab_dir.display());
            return Err(e);
        }
    };
    for l in report::table(&r, start) {
        say.line(l);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    if r.violations.is_empty() {
        if args.keep {
            say.line(format!(
                "logs of every process (--keep): {}",
                lab_dir.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&lab_dir);
        }
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        say.line(format!("logs of every process: {}", lab_dir.display()));
        Ok(std::process::ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_by_name() {
        let k = parse_kinds(&["agent-kill,api-outage".into(), "node-cut".into()]).unwrap();
        assert_eq!(k, vec![Kind::AgentKill, Kind::ApiOutage, Kind::NodeCut]);
        assert!(parse_kinds(&["agent-explode".into()]).is_err());
        assert!(parse_kinds(&[]).unwrap().is_empty());
        let k = parse_kinds(&["endpoint-move,churn-reclass".into()]).unwrap();
        assert_eq!(k, vec![Kind::EndpointMove, Kind::ChurnReclass]);
    }

    #[test]
    fn node_faults_go_to_the_holder_when_it_is_free() {
        let mut busy = BTreeMap::new();
        assert_eq!(resolve_node(0, Some(2), &busy, 3), Some((2, true)));
        assert_eq!(resolve_node(0, None, &busy, 3), Some((0, false)));
        busy.insert(2, 7);
        assert_eq!(
            resolve_node(0, Some(2), &busy, 3),
            Some((0, false)),
            "the holder carries a fault: the planned node"
        );
        assert_eq!(
            resolve_node(2, None, &busy, 3),
            Some((0, false)),
            "a holder-targeted fault took the planned node: the lowest free one"
        );
        busy.insert(0, 8);
        busy.insert(1, 9);
        assert_eq!(resolve_node(0, Some(1), &busy, 3), None, "no node free");
    }
}
