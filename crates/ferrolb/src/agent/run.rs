//! The agent's wiring: watches → shared caches → [`Core`] → lease engine, announcer, API.
//! This is the thin tokio loop: it feeds the core its inputs (a cache snapshot after the
//! debounce, lease events, link changes, conflicts, the API server's return, shutdown) and
//! carries out the effects the core returns; every decision is the core's.
//!
//! - One watch per kind (kube-runtime reflectors): `L2AnnouncementPolicy`, Services, Nodes (all
//!   of them: the rendezvous candidates), EndpointSlices, `LoadBalancerIPPool`s (for policies
//!   limited to some pools, [`super::pools`]); Leases are watched by the lease engine
//!   (one label-selected watch). Any change wakes the loop, which recomputes eligibility after a
//!   short debounce, so a burst of events costs one recompute.
//! - The desired groups go to the lease engine (lease name = `lease_name(group key)`, labels and
//!   annotations naming the Services); the engine's per-lease events go back to the core, whose
//!   announced set is handed to the announcer (`set_held`). Only acquired (or sticky) groups are
//!   announced.
//! - The announcer's conflicts (another station's gratuitous ARP / NA for an address we
//!   announce) make a sticky group yield at once.
//! - SIGTERM/SIGINT: stop answering first, then release every held lease (so another node takes
//!   over at once), then exit 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::cache::{self, CachedNode, CachedService, CachedSlice};
use super::conflicts;
use super::core::{Core, Effect, Input, LeaseInput, Sighting, Snapshot};
use super::eligibility::{self, Options};
use super::l2status::Acquired;
use super::metrics::Metrics;
use super::report;
use super::trim;
use super::Args;
use crate::api::L2AnnouncementPolicy;
use crate::lease::{LeaseEvent, LeaseSet};

/// Starts a reflector for `api`, waking `notify` on every event. Objects are trimmed to what the
/// agent reads ([`trim`]) before they are cached. Watch errors are counted and retried with
/// kube-runtime's default backoff.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    trim: fn(&mut K),
    notify: Arc<Notify>,
    metrics: Metrics,
    kind: &'static str,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let wake = move |_| notify.notify_one();
    let task = tokio::spawn(async move { cache::drive(stream, &metrics, kind, wake).await });
    (store, task)
}

/// The shared caches (Services, Nodes and EndpointSlices narrowed to [`cache`]'s types).
struct Caches {
    policies: Store<L2AnnouncementPolicy>,
    services: cache::Store<CachedService>,
    nodes: cache::Store<CachedNode>,
    slices: cache::Store<CachedSlice>,
    /// Every node's published interface prefixes ([`super::subnets`]).
    prefixes: Store<k8s_openapi::api::coordination::v1::Lease>,
    pools: Store<crate::api::LoadBalancerIPPool>,
}

impl Caches {
    async fn wait_ready(&self) -> anyhow::Result<()> {
        self.policies.wait_until_ready().await?;
        self.services.wait_until_ready().await;
        self.nodes.wait_until_ready().await;
        self.slices.wait_until_ready().await;
        self.prefixes.wait_until_ready().await?;
        self.pools.wait_until_ready().await?;
        Ok(())
    }
}

/// The running agent: the decisions ([`Core`]) and the I/O that carries out its effects.
struct Agent {
    args: Args,
    client: Client,
    metrics: Metrics,
    caches: Caches,
    node_regexes: Vec<regex::Regex>,
    /// This node's interface prefixes, published for subnet-aware candidacy.
    subnets: super::subnets::Publisher,
    core: Core,
    leases: LeaseSet,
    announcer: crate::net::Announcer,
    /// How long the last recompute took (paces the next one).
    last_recompute: Duration,
    /// Policy name → the resourceVersion a status write of ours was based on. Until the watch
    /// brings a newer object, recomputes see the old one and must not write it again (the second
    /// write could only end in a 409). Cleared on a failed write so the next recompute retries.
    status_written: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// The `L2Announcement` writer (`None` with `--no-l2-announcements`).
    l2: Option<super::l2writer::L2Writer>,
    /// Recompute by then at the latest (the core's `Effect::RecomputeAt`: a `linkhold` wait).
    recompute_by: Option<tokio::time::Instant>,
}

/// Locks a mutex, taking over a poisoned one (the map it guards stays consistent: one insert or
/// remove per critical section).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Agent {
    /// Feeds one input to the core and carries out its effects.
    fn feed(&mut self, input: Input<'_>) {
        let effects = self.core.handle(input, std::time::Instant::now());
        self.carry_out(effects);
    }

    /// Recomputes eligibility from the caches (the core hands a changed result to the engine)
    /// and writes the policies' status conditions.
    fn recompute(&mut self) {
        let policies = self.caches.policies.state();
        let services = self.caches.services.snapshot();
        let nodes = self.caches.nodes.snapshot();
        let slices = self.caches.slices.snapshot();
        let p: Vec<&L2AnnouncementPolicy> = policies.iter().map(AsRef::as_ref).collect();
        let s: Vec<&CachedService> = services.iter().map(AsRef::as_ref).collect();
        let n: Vec<&CachedNode> = nodes.iter().map(AsRef::as_ref).collect();
        let e: Vec<&CachedSlice> = slices.iter().map(AsRef::as_ref).collect();
        let pools = self.caches.pools.state();
        let snapshot = Snapshot {
            policies: &p,
            services: &s,
            nodes: &n,
            slices: &e,
            node_prefixes: super::subnets::node_prefixes(
                &self.caches.prefixes.state(),
                &self.args.node_name,
                self.subnets.local(),
            ),
            pools: super::pools::PoolIndex::new(
                &pools.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            ),
            dark_interfaces: self.subnets.dark().iter().cloned().collect(),
            no_carrier: super::subnets::node_no_carrier(
                &self.caches.prefixes.state(),
                &self.args.node_name,
                self.subnets.dark(),
            ),
            own_report_seen: super::subnets::own_report_seen(
                &self.caches.prefixes.state(),
                &self.args.node_name,
                self.subnets.dark(),
            ),
        };
        let effects = self
            .core
            .handle(Input::Caches(snapshot), std::time::Instant::now());
        self.write_policy_statuses(&p, &n);
        self.carry_out(effects);
    }

    /// Carries out the core's effects, in order.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Leases(desired) => self.leases.set_desired(desired),
                Effect::Announce(set) => self.announcer.set_held(set),
                Effect::Reannounce(set) => self.announcer.reannounce(set),
                Effect::AnnounceEvent {
                    service,
                    addresses,
                    interfaces,
                } => self.post_event(service, |svc, node, now| {
                    report::announce_event(svc, node, &addresses, &interfaces, now)
                }),
                Effect::ForeignEvent {
                    service,
                    ip,
                    iface,
                    mac,
                    announced,
                } => self.post_event(service, |svc, node, now| {
                    conflicts::foreign_event(svc, node, ip, &iface, &mac, announced, now)
                }),
                Effect::L2Want(w) => {
                    if let Some(l2) = &self.l2 {
                        l2.push(w);
                    }
                }
                Effect::L2Cancel(s) => {
                    if let Some(l2) = &self.l2 {
                        l2.cancel(&s);
                    }
                }
                Effect::L2Drop(s) => {
                    if let Some(l2) = &self.l2 {
                        l2.drop_queued(&s);
                    }
                }
                Effect::L2LeaseActivity => {
                    if let Some(l2) = &self.l2 {
                        l2.lease_activity();
                    }
                }
                Effect::Recompute => self.recompute(),
                Effect::RecomputeAt(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    self.recompute_by = Some(self.recompute_by.map_or(at, |r| r.min(at)));
                }
                Effect::Metric(m) => self.metrics.record(m),
            }
        }
    }

    /// One lease event for the core, with the takeover the engine noted for an acquisition.
    fn lease_input(&self, event: LeaseEvent) -> LeaseInput {
        let stats = self.leases.stats();
        let acquired = match &event {
            LeaseEvent::Acquired { name, .. } => {
                let takeover = stats.takeovers.take(name);
                let ms = takeover
                    .as_ref()
                    .map(|t| t.free_since.elapsed().as_millis() as i64)
                    .unwrap_or(0);
                Some(Acquired::new(jiff::Timestamp::now(), takeover.as_ref(), ms))
            }
            LeaseEvent::Lost { name, .. } | LeaseEvent::Released { name, .. } => {
                stats.takeovers.forget(name);
                None
            }
            LeaseEvent::Unreachable { .. } => None,
        };
        LeaseInput { event, acquired }
    }

    /// Writes the policy statuses this node is the designated writer for
    /// ([`report::policy_status_updates`] decides), once per resourceVersion.
    fn write_policy_statuses(&self, policies: &[&L2AnnouncementPolicy], nodes: &[&CachedNode]) {
        let updates = report::policy_status_updates(
            policies,
            nodes,
            &self.args.node_name,
            self.core.desired(),
            jiff::Timestamp::now(),
        );
        for updated in updates {
            let name = updated.metadata.name.clone().unwrap_or_default();
            let rv = updated
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            {
                let mut written = lock(&self.status_written);
                if written.get(&name) == Some(&rv) {
                    // Our write based on this very object is in flight or done: wait for the
                    // watch to bring its result.
                    continue;
                }
                written.insert(name.clone(), rv);
            }
            let client = self.client.clone();
            let metrics = self.metrics.clone();
            let written = self.status_written.clone();
            tokio::spawn(async move {
                match report::write_policy_status(&client, &updated).await {
                    Ok(()) => info!(policy = %name, "policy status written"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        debug!(policy = %name, "policy status: stale, the watch will bring the new object")
                    }
                    Err(e) => {
                        lock(&written).remove(&name);
                        metrics
                            .api_errors
                            .with_label_values(&["policy_status"])
                            .inc();
                        warn!(policy = %name, error = %e, "writing policy status failed");
                    }
                }
            });
        }
    }

    /// Builds an Event on `service` (as it is in the cache now; none when it is gone) and posts
    /// it in the background.
    fn post_event(
        &self,
        service: eligibility::ServiceRef,
        build: impl FnOnce(
            &CachedService,
            &str,
            jiff::Timestamp,
        ) -> Option<k8s_openapi::api::events::v1::Event>,
    ) {
        let Some(svc) = self.caches.services.get(&service.namespace, &service.name) else {
            return;
        };
        if let Some(ev) = build(&svc, &self.args.node_name, jiff::Timestamp::now()) {
            self.spawn_event(service, ev);
        }
    }

    /// Posts `ev` in the background (best effort; failures are counted and logged).
    fn spawn_event(&self, sref: eligibility::ServiceRef, ev: k8s_openapi::api::events::v1::Event) {
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::k8s::events::post(&client, &ev).await {
                metrics.api_errors.with_label_values(&["event"]).inc();
                warn!(service = %sref, error = %e, "posting Event failed");
            }
        });
    }
}

/// The longest a watch event waits for its recompute (the pacing's upper bound).
const MAX_RECOMPUTE_PAUSE: Duration = Duration::from_secs(2);

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(args: Args) -> crate::CmdResult {
    let engine_options = args.engine_options()?;
    let node_regexes = args
        .interfaces
        .iter()
        .map(|r| eligibility::compile_interface_regex(r).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("--interfaces")?;
    let client = crate::k8s::client(args.kubeconfig.as_deref()).await?;

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    let health = crate::telemetry::Health::default();
    let (metrics_addr, _metrics_task) =
        crate::telemetry::serve_metrics(args.metrics_addr, registry.clone(), health.clone())
            .await
            .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    info!(addr = %metrics_addr, "metrics, healthz and readyz listening");

    let announcer = crate::net::Announcer::new(args.announcer_config(), &registry)
        .context("starting the announcer")?;
    let mut conflicts = announcer.conflicts();

    let notify = Arc::new(Notify::new());
    let (policies, t1) = reflect(
        Api::<L2AnnouncementPolicy>::all(client.clone()),
        watcher::Config::default(),
        trim::policy,
        notify.clone(),
        metrics.clone(),
        "l2announcementpolicies",
    );
    // One interner for the narrow caches: node names, namespaces and label keys/values repeat
    // across kinds.
    let interner = Arc::new(std::sync::Mutex::new(cache::Interner::default()));
    let services = cache::Store::new(interner.clone());
    let t2 = cache::watch(
        Api::all(client.clone()),
        watcher::Config::default(),
        services.clone(),
        notify.clone(),
        metrics.clone(),
        "services",
    );
    let nodes = cache::Store::new(interner.clone());
    let t3 = cache::watch(
        Api::all(client.clone()),
        watcher::Config::default(),
        nodes.clone(),
        notify.clone(),
        metrics.clone(),
        "nodes",
    );
    let slices = cache::Store::new(interner);
    let t4 = cache::watch(
        Api::all(client.clone()),
        watcher::Config::default().labels(eligibility::LABEL_SERVICE_NAME_SLICE),
        slices.clone(),
        notify.clone(),
        metrics.clone(),
        "endpointslices",
    );
    let (prefixes, t5) = reflect(
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            client.clone(),
            &args.lease_namespace,
        ),
        watcher::Config::default().labels(super::subnets::SELECTOR),
        super::subnets::trim,
        notify.clone(),
        metrics.clone(),
        "leases_interfaces",
    );
    let (pools, t6) = reflect(
        Api::<crate::api::LoadBalancerIPPool>::all(client.clone()),
        watcher::Config::default(),
        super::pools::trim,
        notify.clone(),
        metrics.clone(),
        "loadbalancerippools",
    );
    let watch_tasks = [t1, t2, t3, t4, t5, t6];
    let caches = Caches {
        policies,
        services,
        nodes,
        slices,
        prefixes,
        pools,
    };

    let (leases, mut lease_events) = LeaseSet::start(client.clone(), engine_options);
    let l2_writer = match args.no_l2_announcements {
        true => None,
        false => Some(
            super::l2writer::L2Writer::start(
                client.clone(),
                args.node_name.clone(),
                caches.services.clone(),
                &registry,
                args.lease_duration,
            )?
            .0,
        ),
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;

    let (interfaces, dark) = super::subnets::interface_names(&node_regexes);
    let mut agent = Agent {
        subnets: super::subnets::Publisher::start(
            client.clone(),
            &args.lease_namespace,
            &args.node_name,
            &interfaces,
            &dark,
        ),
        core: Core::new(
            &args.node_name,
            args.sticky(),
            l2_writer.is_some(),
            Options {
                serve_cilium_class: args.serve_cilium_class,
                ..Default::default()
            },
            interfaces,
            args.lease_duration,
        ),
        node_regexes,
        status_written: Arc::default(),
        last_recompute: Duration::ZERO,
        l2: l2_writer,
        recompute_by: None,
        client,
        metrics,
        caches,
        leases,
        announcer,
        args,
    };
    info!(
        node = %agent.args.node_name,
        namespace = %agent.args.lease_namespace,
        interfaces = ?agent.core.interfaces(),
        sticky = agent.args.sticky(),
        "agent starting"
    );

    // Initial sync, interruptible by a signal.
    tokio::select! {
        r = agent.caches.wait_ready() => r.context("caches")?,
        _ = sigterm.recv() => return shutdown(agent, watch_tasks).await,
        _ = sigint.recv() => return shutdown(agent, watch_tasks).await,
    }
    agent.recompute();
    health.set_ready(true);
    info!("caches synced, agent ready");

    let mut engine_seen = [0u64; 9];
    let mut recompute_at: Option<tokio::time::Instant> = None;
    // Lease events not applied yet, and when they will be (`agent::pace`).
    let mut lease_batch: Vec<LeaseInput> = Vec::new();
    let mut lease_apply_at: Option<tokio::time::Instant> = None;
    let mut lease_pace = super::pace::Pace::default();
    // `Released` events applied so far (acknowledged to the engine).
    let mut released_applied: u64 = 0;
    // Interface changes come from the kernel through the announcer (rtnetlink), not a poll; the
    // engine's counters are copied into the metrics every 2 s.
    let mut links = agent.announcer.link_changes();
    let mut links_open = true;
    let engine_stats = agent.leases.stats();
    let mut stats_tick = tokio::time::interval(Duration::from_secs(2));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(at) = agent.recompute_by.take() {
            // A holder without carrier waiting for the other nodes' reports (`linkhold`).
            recompute_at = Some(recompute_at.map_or(at, |r| r.min(at)));
        }
        tokio::select! {
            _ = notify.notified(), if recompute_at.is_none() => {
                // Debounce (a burst of watch events settles into one recompute) and pace: a
                // recompute costs O(Services), so the next one waits at least four times as long
                // as the last took — with 10k Services a stream of events must not keep a core
                // busy. Lease events and conflicts are handled meanwhile.
                let pause = agent
                    .args
                    .debounce
                    .max(agent.last_recompute * 4)
                    .min(MAX_RECOMPUTE_PAUSE);
                recompute_at = Some(tokio::time::Instant::now() + pause);
            }
            _ = crate::sleep_until_opt(recompute_at) => {
                recompute_at = None;
                let t = tokio::time::Instant::now();
                agent.recompute();
                agent.last_recompute = t.elapsed();
            }
            _ = crate::sleep_until_opt(lease_apply_at), if !lease_batch.is_empty() => {
                lease_apply_at = None;
                let t = tokio::time::Instant::now();
                let released = lease_batch
                    .iter()
                    .filter(|l| matches!(l.event, LeaseEvent::Released { .. }))
                    .count() as u64;
                agent.feed(Input::Leases(std::mem::take(&mut lease_batch)));
                if released > 0 {
                    // The announcer stopped answering them (`set_held` returned): the engine
                    // may now write the releases (`EngineOptions::stop_before_release`).
                    released_applied += released;
                    agent.leases.released_applied(released_applied);
                }
                let end = tokio::time::Instant::now();
                lease_pace.applied(end, end - t);
            }
            ev = lease_events.recv() => match ev {
                Some(ev) => {
                    // Take every event already waiting and apply them together, acquisitions
                    // paced by what applying costs (`agent::pace`): a node acquiring thousands
                    // of leases must not rebuild its announced set per lease.
                    lease_batch.push(agent.lease_input(ev));
                    while let Ok(ev) = lease_events.try_recv() {
                        lease_batch.push(agent.lease_input(ev));
                    }
                    let now = tokio::time::Instant::now();
                    lease_apply_at =
                        Some(lease_pace.apply_at(lease_batch.iter().map(|l| &l.event), now));
                }
                None => {
                    warn!("lease engine stopped");
                    agent.metrics.election_errors.inc();
                    break;
                }
            },
            c = conflicts.recv() => match c {
                Ok(c) => agent.feed(Input::Conflict(Sighting::from(&c))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "conflict reports lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    conflicts = agent.announcer.conflicts();
                }
            },
            _ = engine_stats.reconnected.notified() => {
                let ms = engine_stats.last_outage_ms.load(std::sync::atomic::Ordering::Relaxed);
                agent.feed(Input::ApiReconnected { lasted: Duration::from_millis(ms) });
            }
            _ = stats_tick.tick() => {
                agent.metrics.sync_engine(&agent.leases.stats(), &mut engine_seen);
            }
            r = links.changed(), if links_open => {
                if r.is_err() {
                    links_open = false; // the announcer is gone; shutdown follows
                    continue;
                }
                let (interfaces, dark) = super::subnets::interface_names(&agent.node_regexes);
                let prefixes_changed = agent.subnets.refresh(&interfaces, &dark);
                agent.feed(Input::Links { interfaces, prefixes_changed });
            }
            _ = sigterm.recv() => { info!("SIGTERM"); break; }
            _ = sigint.recv() => { info!("SIGINT"); break; }
        }
    }
    shutdown(agent, watch_tasks).await
}

/// Stop answering, release every lease, exit 0.
async fn shutdown(
    mut agent: Agent,
    watch_tasks: [tokio::task::JoinHandle<()>; 6],
) -> crate::CmdResult {
    agent.feed(Input::Shutdown);
    for t in &watch_tasks {
        t.abort();
    }
    let report = agent.leases.shutdown().await;
    info!(
        released = report.released.len(),
        not_released = report.not_released.len(),
        "leases released"
    );
    agent.announcer.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}
