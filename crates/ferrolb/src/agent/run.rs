//! The agent's wiring: watches → shared caches → eligibility → lease engine → announcer.
//!
//! - One watch per kind (kube-runtime reflectors): `L2AnnouncementPolicy`, Services, Nodes (all
//!   of them: the rendezvous candidates), EndpointSlices, `LoadBalancerIPPool`s (for policies
//!   limited to some pools, [`super::pools`]); Leases are watched by the lease engine
//!   (one label-selected watch). Any change wakes the loop, which recomputes eligibility after a
//!   short debounce, so a burst of events costs one recompute.
//! - The desired groups go to the lease engine (lease name = `lease_name(group key)`, labels and
//!   annotations naming the Services); the engine's per-lease events drive [`Holdings`], whose
//!   announced set is handed to the announcer (`set_held`). Only acquired (or sticky) groups are
//!   announced.
//! - The announcer's conflicts (another station's gratuitous ARP / NA for an address we
//!   announce) make a sticky group yield at once.
//! - SIGTERM/SIGINT: stop answering first, then release every held lease (so another node takes
//!   over at once), then exit 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::cache::{self, CachedNode, CachedService, CachedSlice};
use super::conflicts::{self, ForeignAnswerers};
use super::eligibility::{self, Desired, Options};
use super::holdings::{newly_announced, ConflictOutcome, Holdings, Transition};
use super::metrics::Metrics;
use super::report;
use super::trim;
use super::Args;
use crate::api::L2AnnouncementPolicy;
use crate::lease::{self, LeaseEvent, LeaseSet};

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
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    metrics
                        .api_errors
                        .with_label_values(&[&format!("watch_{kind}")])
                        .inc();
                    warn!(kind, error = %e, "watch error (retrying)");
                }
            }
        }
    });
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

/// Interface names the node may announce on, filtered by `--interfaces` when given.
fn eligible_interface_names(node_regexes: &[regex::Regex]) -> Vec<String> {
    let mut v: Vec<String> = crate::net::eligible_interfaces(node_regexes)
        .into_iter()
        .map(|i| i.name)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What the lease engine should know about a group: labels/annotations naming its Services and
/// addresses (`lease::describe`), and the rendezvous candidates.
fn lease_desired(g: &eligibility::Group) -> lease::Desired {
    let services: Vec<String> = g.services.iter().map(|s| s.to_string()).collect();
    let (labels, annotations) = lease::describe(&g.key, &services);
    lease::Desired {
        labels,
        annotations,
        candidates: g.candidates.clone(),
    }
}

/// The running agent's state owned by the main loop.
struct Agent {
    args: Args,
    client: Client,
    metrics: Metrics,
    caches: Caches,
    options: Options,
    node_regexes: Vec<regex::Regex>,
    interfaces: Vec<String>,
    /// This node's interface prefixes, published for subnet-aware candidacy.
    subnets: super::subnets::Publisher,
    holdings: Holdings,
    /// lease name → group key, for the groups given to the engine.
    names: BTreeMap<String, String>,
    leases: LeaseSet,
    announcer: crate::net::Announcer,
    announced: BTreeMap<IpAddr, BTreeSet<String>>,
    last: Desired,
    warned_no_node: bool,
    /// The engine and holdings have been given a desired set at least once.
    synced: bool,
    /// How long the last recompute took (paces the next one).
    last_recompute: Duration,
    /// Event rate limit: start of the current one-second window and Events posted in it.
    event_window: (tokio::time::Instant, u32),
    /// Foreign answerers already reported (Events and metric rate-limited per address+MAC).
    foreign: ForeignAnswerers,
    /// Policy name → the resourceVersion a status write of ours was based on. Until the watch
    /// brings a newer object, recomputes see the old one and must not write it again (the second
    /// write could only end in a 409). Cleared on a failed write so the next recompute retries.
    status_written: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// `L2Announcement`s (see `l2writer`).
    l2: super::l2writer::L2Status,
    /// Groups acquired without a takeover since the last `apply` (a restart): no Event.
    reconfirmed: BTreeSet<String>,
}

/// Locks a mutex, taking over a poisoned one (the map it guards stays consistent: one insert or
/// remove per critical section).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// At most this many Events per second (a node taking over thousands of addresses at once must
/// not flood the API server; the announcements themselves are logged and counted regardless).
const MAX_EVENTS_PER_SECOND: u32 = 20;

impl Agent {
    /// Recomputes eligibility from the caches and pushes the result to the engine.
    fn recompute(&mut self) {
        self.metrics.recomputes.inc();
        let policies = self.caches.policies.state();
        let services = self.caches.services.snapshot();
        let nodes = self.caches.nodes.snapshot();
        let slices = self.caches.slices.snapshot();
        let p: Vec<&L2AnnouncementPolicy> = policies.iter().map(AsRef::as_ref).collect();
        let s: Vec<&CachedService> = services.iter().map(AsRef::as_ref).collect();
        let n: Vec<&CachedNode> = nodes.iter().map(AsRef::as_ref).collect();
        let e: Vec<&CachedSlice> = slices.iter().map(AsRef::as_ref).collect();
        let own_node_known = n.iter().any(|node| *node.name == *self.args.node_name);
        if !own_node_known && !self.warned_no_node {
            warn!(node = %self.args.node_name, "no Node object with this name: announcing nothing");
        }
        self.warned_no_node = !own_node_known;
        self.options.node_prefixes = super::subnets::node_prefixes(
            &self.caches.prefixes.state(),
            &self.args.node_name,
            self.subnets.local(),
        );
        let pools = self.caches.pools.state();
        self.options.pools =
            super::pools::PoolIndex::new(&pools.iter().map(AsRef::as_ref).collect::<Vec<_>>());
        let desired = eligibility::compute(&eligibility::Inputs {
            node_name: &self.args.node_name,
            policies: &p,
            services: &s,
            nodes: &n,
            endpoint_slices: &e,
            interfaces: &self.interfaces,
            options: &self.options,
        });
        if desired.problems != self.last.problems {
            for pr in &desired.problems {
                warn!(policy = %pr.policy, field = %pr.field, "policy problem: {}", pr.message);
            }
        }
        self.metrics
            .policy_problems
            .set(desired.problems.len() as i64);
        self.write_policy_statuses(&p, &n, &desired);

        if self.synced && desired == self.last {
            // Nothing changed for the engine or the announcer (a Service's unrelated fields, a
            // status write of ours): skip the O(groups) hand-over below.
            return;
        }
        self.synced = true;
        let gone = self.holdings.set_desired(desired.local());
        for k in &gone {
            info!(group = %k, "no longer eligible: stopped announcing");
        }
        self.names = desired
            .local()
            .map(|g| (lease::lease_name(&g.key), g.key.clone()))
            .collect();
        let to_engine: BTreeMap<String, lease::Desired> = desired
            .local()
            .map(|g| (lease::lease_name(&g.key), lease_desired(g)))
            .collect();
        self.metrics.groups_desired.set(to_engine.len() as i64);
        if desired != self.last {
            debug!(
                groups = desired.groups.len(),
                local = to_engine.len(),
                "eligibility recomputed"
            );
        }
        self.leases.set_desired(to_engine);
        self.last = desired;
        self.apply();
    }

    /// Writes the `Valid` condition of the policies this node is the designated writer for.
    fn write_policy_statuses(
        &self,
        policies: &[&L2AnnouncementPolicy],
        nodes: &[&CachedNode],
        desired: &Desired,
    ) {
        let writers = report::status_writers(nodes);
        if writers.is_empty() {
            return;
        }
        let now = jiff::Timestamp::now();
        for p in policies {
            let Some(name) = p.metadata.name.as_deref() else {
                continue;
            };
            let key = format!("policy/{name}");
            if lease::rendezvous_rank(&key, &self.args.node_name, &writers) != 0
                || !writers.contains(&self.args.node_name)
            {
                continue;
            }
            let problems: Vec<_> = desired.problems_of(name).collect();
            let conds = [
                report::policy_condition(p, &problems, now),
                report::subnet_condition(p, desired.subnet_fallbacks.get(name), now),
            ];
            if conds.iter().all(|c| report::condition_current(p, c)) {
                continue;
            }
            let rv = p.metadata.resource_version.clone().unwrap_or_default();
            {
                let mut written = lock(&self.status_written);
                if written.get(name) == Some(&rv) {
                    // Our write based on this very object is in flight or done: wait for the
                    // watch to bring its result.
                    continue;
                }
                written.insert(name.to_string(), rv);
            }
            let updated = conds
                .into_iter()
                .fold((*p).clone(), |u, c| report::with_condition(&u, c));
            let client = self.client.clone();
            let metrics = self.metrics.clone();
            let written = self.status_written.clone();
            let name = name.to_string();
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

    fn on_lease_event(&mut self, ev: LeaseEvent) {
        let (t, label) = match &ev {
            LeaseEvent::Acquired { .. } => (Transition::Acquired, "acquired"),
            LeaseEvent::Lost { .. } => (Transition::Lost, "lost"),
            LeaseEvent::Unreachable { .. } => (Transition::ExpiredUnreachable, "unreachable"),
            LeaseEvent::Released { .. } => (Transition::Released, "released"),
        };
        self.metrics
            .lease_transitions
            .with_label_values(&[label])
            .inc();
        let Some(key) = self.names.get(ev.name()).cloned() else {
            debug!(lease = %ev.name(), event = label, "event for a lease no longer desired");
            return;
        };
        match &ev {
            LeaseEvent::Lost { holder, .. } => {
                info!(group = %key, holder = ?holder, "lease lost: stopped announcing")
            }
            LeaseEvent::Unreachable { .. } if self.args.sticky() => warn!(
                group = %key,
                "API server unreachable and the lease may have expired: sticky, still announcing"
            ),
            LeaseEvent::Unreachable { .. } => {
                warn!(group = %key, "API server unreachable and the lease may have expired: stopped")
            }
            _ => debug!(group = %key, event = label, "lease event"),
        }
        if self.l2.on_lease(&key, &ev, &self.leases.stats()) {
            self.reconfirmed.insert(key.clone());
        }
        self.holdings.on_lease(&key, t);
    }

    fn on_conflict(&mut self, ip: IpAddr, iface: &str, mac: &str, probe_answer: bool) {
        // An answer to our ARP/NDP probe is no takeover announcement: nothing yields to it.
        let outcome = if probe_answer {
            self.holdings.on_probe_answer(ip)
        } else {
            self.holdings.on_conflict(ip)
        };
        let label = match &outcome {
            ConflictOutcome::Yielded(key) => {
                warn!(%ip, iface, mac, group = %key, "another station announces this address: sticky group yields");
                "yielded"
            }
            ConflictOutcome::Ignored(key) => {
                info!(%ip, iface, mac, group = %key, "another station announces an address whose lease we hold");
                self.on_foreign_answerer(ip, iface, mac, key);
                "ignored"
            }
            ConflictOutcome::NotOurs => "not_ours",
        };
        self.metrics.conflicts.with_label_values(&[label]).inc();
        self.apply();
    }

    /// Another station answers for an address whose lease we hold (we keep it and keep
    /// announcing): a Warning Event on its Services and a count, rate-limited per address+MAC.
    fn on_foreign_answerer(&mut self, ip: IpAddr, iface: &str, mac: &str, key: &str) {
        if !self.foreign.due(ip, mac, std::time::Instant::now()) {
            return;
        }
        self.metrics
            .foreign_answerers
            .with_label_values(&[conflicts::family(ip)])
            .inc();
        warn!(%ip, iface, mac, "another station answers for an address whose lease this node holds (kube-proxy IPVS without strictARP?)");
        let now = jiff::Timestamp::now();
        for sref in conflicts::services_of(self.holdings.group(key)) {
            if !self.event_allowed(&sref) {
                continue;
            }
            let Some(svc) = self.caches.services.get(&sref.namespace, &sref.name) else {
                continue;
            };
            let node = &self.args.node_name;
            if let Some(ev) = conflicts::foreign_event(&*svc, node, ip, iface, mac, now) {
                self.spawn_event(sref, ev);
            }
        }
    }

    /// The API server is reachable again after an outage: a gratuitous burst for every address
    /// whose lease is valid (sticky ones follow when renewed, see `holdings`).
    fn on_api_reconnected(&mut self) {
        let held = self.holdings.confirmed();
        info!(
            addresses = held.len(),
            "API server reachable again: re-announcing held addresses"
        );
        self.announcer.reannounce(held);
    }

    /// Hands the announced set to the announcer when it changed; Events for new announcements.
    fn apply(&mut self) {
        self.l2.update(&self.holdings);
        let reconfirmed = std::mem::take(&mut self.reconfirmed);
        let now = self.holdings.announced();
        self.metrics
            .leases_held
            .set(self.holdings.held_count() as i64);
        self.metrics
            .leases_sticky
            .set(self.holdings.sticky_count() as i64);
        let again = self.holdings.take_reconfirmed();
        if !again.is_empty() {
            info!(
                addresses = again.len(),
                "leases renewed after the API outage: re-announcing"
            );
            self.announcer.reannounce(again);
        }
        if now == self.announced {
            return;
        }
        let mut new = newly_announced(&self.announced, &now);
        // Events only for changes: not for addresses re-confirmed after a restart.
        for key in reconfirmed {
            if let Some(g) = self.holdings.group(&key) {
                new.retain(|(ip, _)| !g.addresses.contains(ip));
            }
        }
        self.announcer.set_held(now.clone());
        self.metrics.addresses_announced.set(now.len() as i64);
        self.metrics.announcements.inc_by(new.len() as u64);
        for (ip, iface) in &new {
            info!(%ip, iface = %iface, node = %self.args.node_name, "announcing");
        }
        self.post_events(&new);
        self.announced = now;
    }

    /// One Event per Service whose addresses started being announced.
    fn post_events(&mut self, new: &[(IpAddr, String)]) {
        if new.is_empty() {
            return;
        }
        let mut per_service: BTreeMap<
            eligibility::ServiceRef,
            (BTreeSet<IpAddr>, BTreeSet<String>),
        > = BTreeMap::new();
        let mut ifaces_of: BTreeMap<IpAddr, Vec<&String>> = BTreeMap::new();
        for (ip, iface) in new {
            ifaces_of.entry(*ip).or_default().push(iface);
        }
        for g in self.last.local() {
            for ip in &g.addresses {
                let Some(ifaces) = ifaces_of.get(ip) else {
                    continue;
                };
                for s in &g.services {
                    let e = per_service.entry(s.clone()).or_default();
                    e.0.insert(*ip);
                    e.1.extend(ifaces.iter().map(|i| (*i).clone()));
                }
            }
        }
        let now = jiff::Timestamp::now();
        for (sref, (ips, ifaces)) in per_service {
            if !self.event_allowed(&sref) {
                continue;
            }
            let Some(svc) = self.caches.services.get(&sref.namespace, &sref.name) else {
                continue;
            };
            let Some(ev) = report::announce_event(&*svc, &self.args.node_name, &ips, &ifaces, now)
            else {
                continue;
            };
            self.spawn_event(sref, ev);
        }
    }

    /// The agent's Event rate limit ([`MAX_EVENTS_PER_SECOND`]): true when one more may be
    /// posted now (counted), false when the limit is reached (counted as rate limited).
    fn event_allowed(&mut self, sref: &eligibility::ServiceRef) -> bool {
        let t = tokio::time::Instant::now();
        if t.duration_since(self.event_window.0) >= Duration::from_secs(1) {
            self.event_window = (t, 0);
        }
        if self.event_window.1 >= MAX_EVENTS_PER_SECOND {
            self.metrics
                .api_errors
                .with_label_values(&["event_rate_limited"])
                .inc();
            debug!(service = %sref, "Event rate limit reached: not posting");
            return false;
        }
        self.event_window.1 += 1;
        true
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

    let interfaces = eligible_interface_names(&node_regexes);
    let mut agent = Agent {
        options: Options {
            serve_cilium_class: args.serve_cilium_class,
            ..Default::default()
        },
        subnets: super::subnets::Publisher::start(
            client.clone(),
            &args.lease_namespace,
            &args.node_name,
            &interfaces,
        ),
        interfaces,
        node_regexes,
        holdings: Holdings::new(args.sticky()),
        names: BTreeMap::new(),
        announced: BTreeMap::new(),
        last: Desired::default(),
        warned_no_node: false,
        synced: false,
        status_written: Arc::default(),
        last_recompute: Duration::ZERO,
        event_window: (tokio::time::Instant::now(), 0),
        foreign: ForeignAnswerers::default(),
        l2: super::l2writer::L2Status::new(l2_writer),
        reconfirmed: BTreeSet::new(),
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
        interfaces = ?agent.interfaces,
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

    let mut engine_seen = [0u64; 8];
    let mut recompute_at: Option<tokio::time::Instant> = None;
    // Interface changes come from the kernel through the announcer (rtnetlink), not a poll; the
    // engine's counters are copied into the metrics every 2 s.
    let mut links = agent.announcer.link_changes();
    let mut links_open = true;
    let engine_stats = agent.leases.stats();
    let mut stats_tick = tokio::time::interval(Duration::from_secs(2));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
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
            ev = lease_events.recv() => match ev {
                Some(ev) => {
                    // Take every event already waiting, then update the announcer once: a node
                    // acquiring thousands of leases must not rebuild its announced set per lease.
                    agent.on_lease_event(ev);
                    while let Ok(ev) = lease_events.try_recv() {
                        agent.on_lease_event(ev);
                    }
                    agent.l2.lease_activity();
                    agent.apply();
                }
                None => {
                    warn!("lease engine stopped");
                    agent.metrics.election_errors.inc();
                    break;
                }
            },
            c = conflicts.recv() => match c {
                Ok(c) => agent.on_conflict(c.ip, &c.iface, &c.mac.to_string(), c.probe_answer),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "conflict reports lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    conflicts = agent.announcer.conflicts();
                }
            },
            _ = engine_stats.reconnected.notified() => agent.on_api_reconnected(),
            _ = stats_tick.tick() => {
                agent.metrics.sync_engine(&agent.leases.stats(), &mut engine_seen);
            }
            r = links.changed(), if links_open => {
                if r.is_err() {
                    links_open = false; // the announcer is gone; shutdown follows
                    continue;
                }
                let ifaces = eligible_interface_names(&agent.node_regexes);
                let prefixes_changed = agent.subnets.refresh(&ifaces);
                if ifaces != agent.interfaces {
                    info!(interfaces = ?ifaces, "eligible interfaces changed");
                    agent.interfaces = ifaces;
                    agent.recompute();
                } else if prefixes_changed {
                    agent.recompute();
                }
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
    agent.holdings.clear();
    agent.announcer.set_held(BTreeMap::new());
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
