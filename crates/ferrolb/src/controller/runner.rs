//! The async half of the controller: watches feed the [`State`] machine, leader election gates
//! the writes, writes carry resourceVersion preconditions, Events and metrics follow the writes.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::EventSpec;
use super::events::Recorder;
use super::outbox::Outbox;
use super::state::{
    CachedService, Object, Options, PoolWrite, ServiceKey, ServiceWrite, State, Tracked, Watched,
};
use super::{Error, Metrics, Result};
use crate::api::LoadBalancerIPPool;
use crate::telemetry::Health;

/// Lease timings of the controller's leader election (client-go semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// The holder stops acting as leader when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Interval between renewal / acquisition attempts.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// [`crate::lease::validate_timings`], the rule the agent follows too.
    pub fn validate(&self) -> std::result::Result<(), String> {
        crate::lease::validate_timings(self.lease_duration, self.renew_deadline, self.retry_period)
    }
}

/// Configuration of one controller replica.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Holder identity in the Lease; reportingInstance of Events.
    pub identity: String,
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease: LeaseTimings,
    /// Serve Services without a loadBalancerClass.
    pub default_class: bool,
    /// Also serve `io.cilium/l2-announcer`.
    pub serve_cilium_class: bool,
    /// Honour MetalLB's Service annotations as aliases.
    pub metallb_annotations: bool,
}

impl ControllerConfig {
    /// A configuration with the documented defaults and the given identity.
    pub fn new(identity: &str) -> Self {
        ControllerConfig {
            identity: identity.to_string(),
            lease_name: "ferrolb-controller".into(),
            lease_namespace: "ferrolb-system".into(),
            lease: LeaseTimings::default(),
            default_class: true,
            serve_cilium_class: false,
            metallb_annotations: false,
        }
    }
}

/// Everything the controller needs, passed around (kube-rs controller-rs style).
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub config: Arc<ControllerConfig>,
    pub metrics: Metrics,
    /// `/readyz` turns ready after the initial lists of Services and pools.
    pub health: Health,
    /// Cancel to stop the controller (it releases the Lease on the way out).
    pub shutdown: CancellationToken,
}

impl Context {
    pub fn new(client: Client, config: ControllerConfig, metrics: Metrics) -> Self {
        Context {
            client,
            config: Arc::new(config),
            metrics,
            health: Health::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

type WatchStream<K> =
    Pin<Box<dyn Stream<Item = std::result::Result<Event<K>, watcher::Error>> + Send>>;

/// The watches, with the buffers that make a (re)list atomic. Services are narrowed to what
/// the controller keeps ([`CachedService`]) as they arrive, before anything is buffered.
struct Feeds {
    services: WatchStream<CachedService>,
    pools: WatchStream<LoadBalancerIPPool>,
    /// Namespaces, for their labels (pools' `spec.namespaceSelector`).
    namespaces: WatchStream<Namespace>,
    svc_init: InitialList<CachedService>,
    pool_init: InitialList<LoadBalancerIPPool>,
    ns_init: InitialList<Namespace>,
}

/// One watch's initial list: its items are buffered until the list is complete, then handed
/// over whole (so the state replaces its cache at once); afterwards events pass through.
struct InitialList<K> {
    buf: Option<Vec<K>>,
    synced: bool,
}

/// What a watch event means for the state.
enum Change<K> {
    Replace(Vec<K>),
    Apply(K),
    Delete(K),
}

impl<K> InitialList<K> {
    fn new() -> Self {
        InitialList {
            buf: None,
            synced: false,
        }
    }

    fn take(&mut self, ev: Event<K>) -> Option<Change<K>> {
        match ev {
            Event::Init => {
                self.buf = Some(Vec::new());
                None
            }
            Event::InitApply(k) => {
                self.buf.get_or_insert_with(Vec::new).push(k);
                None
            }
            Event::InitDone => {
                self.synced = true;
                Some(Change::Replace(self.buf.take().unwrap_or_default()))
            }
            Event::Apply(k) => Some(Change::Apply(k)),
            Event::Delete(k) => Some(Change::Delete(k)),
        }
    }
}

/// A watch event with its object narrowed by `f`.
fn map_event<K, T>(ev: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match ev {
        Event::Apply(k) => Event::Apply(f(k)),
        Event::Delete(k) => Event::Delete(f(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(f(k)),
        Event::InitDone => Event::InitDone,
    }
}

impl Feeds {
    fn start(client: &Client, opts: Options) -> Self {
        let services = watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map_ok(move |ev| map_event(ev, |s| opts.cache(s)))
        .boxed();
        let pools = watcher::watcher(
            Api::<LoadBalancerIPPool>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        // Only labels are used (Namespace objects are small: a plain watch).
        let namespaces = watcher::watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        Feeds {
            services,
            pools,
            namespaces,
            svc_init: InitialList::new(),
            pool_init: InitialList::new(),
            ns_init: InitialList::new(),
        }
    }

    fn synced(&self) -> bool {
        self.svc_init.synced && self.pool_init.synced && self.ns_init.synced
    }
}

/// Retry bookkeeping for writes that failed for reasons other than a conflict (API down, 5xx),
/// one queue per kind.
#[derive(Default)]
struct Retries {
    services: RetryQueue<ServiceKey>,
    pools: RetryQueue<String>,
}

impl Retries {
    fn backoff(attempt: u32) -> Duration {
        let ms = 200u64.saturating_mul(1u64 << attempt.min(8));
        Duration::from_millis(ms.min(30_000))
    }

    fn next_due(&self) -> Option<Instant> {
        self.services
            .next_due()
            .into_iter()
            .chain(self.pools.next_due())
            .min()
    }

    /// Marks every due retry dirty in `state` (the attempt count is kept until a write succeeds).
    fn fire(&mut self, state: &mut State) {
        self.services.fire(state.tracked_mut::<CachedService>());
        self.pools.fire(state.tracked_mut::<LoadBalancerIPPool>());
    }

    fn clear(&mut self) {
        self.services.clear();
        self.pools.clear();
    }
}

/// When each key of one kind is due for another write attempt, and how many it has had.
struct RetryQueue<K> {
    due: BTreeMap<K, (Instant, u32)>,
}

impl<K> Default for RetryQueue<K> {
    fn default() -> Self {
        RetryQueue {
            due: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> RetryQueue<K> {
    /// The next attempt after a failure, with a growing backoff.
    fn schedule(&mut self, key: K) {
        let attempt = self.due.get(&key).map(|(_, a)| *a + 1).unwrap_or(0);
        self.due
            .insert(key, (Instant::now() + Retries::backoff(attempt), attempt));
    }

    /// An attempt at `at` that is no failure (the write waits for the watch).
    fn schedule_at(&mut self, key: K, at: Instant) {
        let attempt = self.due.get(&key).map(|(_, a)| *a).unwrap_or(0);
        self.due.insert(key, (at, attempt));
    }

    /// Nothing (more) to retry for `key`.
    fn done(&mut self, key: &K) {
        self.due.remove(key);
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|(t, _)| *t).min()
    }

    fn fire<V: Object<Key = K>>(&mut self, tracked: &mut Tracked<V>) {
        let now = Instant::now();
        for (k, (t, _)) in self.due.iter_mut() {
            if *t <= now {
                tracked.mark_dirty(k.clone());
                *t = now + Duration::from_secs(3600);
            }
        }
    }

    fn clear(&mut self) {
        self.due.clear();
    }
}

/// The controller. See the module docs of [`crate::controller`].
pub struct Controller;

impl Controller {
    /// Runs until `ctx.shutdown` is cancelled. Returns an error only for unrecoverable
    /// problems (leader election could not start); API errors are retried.
    pub async fn run(ctx: Context) -> Result<()> {
        let cfg = ctx.config.clone();
        let mut election = super::leadership::Leadership::start(&ctx)?;
        let mut state = State::new(super::state::Options {
            default_class: cfg.default_class,
            serve_cilium_class: cfg.serve_cilium_class,
            metallb_annotations: cfg.metallb_annotations,
        });
        let outbox = Outbox::start(
            Recorder::new(ctx.client.clone(), &cfg.identity),
            ctx.metrics.clone(),
        );
        let mut feeds = Feeds::start(&ctx.client, *state.options());
        let mut retries = Retries::default();
        let mut leading = false;
        let mut pool_due: Option<Instant> = None;
        tracing::info!(identity = %cfg.identity, lease = %format!("{}/{}", cfg.lease_namespace, cfg.lease_name), "controller starting");

        loop {
            // Leadership changes take effect before anything else.
            let now_leading = election.is_leader();
            if now_leading != leading {
                leading = now_leading;
                ctx.metrics.is_leader.set(i64::from(leading));
                state.deactivate();
                if !leading {
                    // Gauges only the active replica can know.
                    ctx.metrics.pool_ips.reset();
                    ctx.metrics.unsatisfied.set(0);
                }
                retries.clear();
                if leading {
                    // Rebuild from fresh lists (a consistent read), never from a cache that may
                    // not yet show the previous leader's last writes.
                    tracing::info!("became leader: relisting Services and pools before any write");
                    feeds = Feeds::start(&ctx.client, *state.options());
                } else {
                    tracing::warn!("not the leader (any more): writes stopped");
                }
            }
            if leading && !state.is_active() && feeds.synced() {
                let n = state.activate();
                tracing::info!(services = n, "state rebuilt: existing allocations adopted");
            }
            if leading && state.is_active() {
                flush::<CachedService>(&ctx, &mut state, &outbox, &election, &mut retries).await;
                if state.tracked::<LoadBalancerIPPool>().has_dirty() {
                    let due = *pool_due.get_or_insert_with(|| Instant::now() + POOL_DEBOUNCE);
                    if due <= Instant::now() {
                        pool_due = None;
                        flush::<LoadBalancerIPPool>(
                            &ctx,
                            &mut state,
                            &outbox,
                            &election,
                            &mut retries,
                        )
                        .await;
                    }
                }
            } else {
                pool_due = None;
            }
            update_gauges(&ctx.metrics, &mut state);

            let next_retry = retries.next_due();
            // Writes left over (conflict rounds exhausted, leadership flapped): come back soon.
            let wake_soon =
                leading && state.is_active() && state.tracked::<CachedService>().has_dirty();
            if ctx.shutdown.is_cancelled() {
                break;
            }
            // Not `biased`: a burst of Service events must not starve the pool watch.
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = election.changed() => {}
                ev = feeds.services.next() => {
                    // Take what else has already arrived before writing: a burst of Service
                    // events becomes one batch of concurrent writes, not one round trip per
                    // event.
                    let mut more = on_services_item(&ctx, &mut state, &mut feeds, ev)?;
                    for _ in 0..MAX_EVENTS_PER_ROUND {
                        if !more {
                            break;
                        }
                        let Some(ev) = feeds.services.next().now_or_never() else {
                            break;
                        };
                        more = on_services_item(&ctx, &mut state, &mut feeds, ev)?;
                    }
                }
                ev = feeds.pools.next() => match ev {
                    Some(Ok(ev)) => on_event(&mut state, &mut feeds.pool_init, ev),
                    Some(Err(e)) => {
                        count_error(&ctx, "watch_pools");
                        tracing::warn!(error = %e, "watching LoadBalancerIPPools failed (is the CRD installed?); retrying with backoff");
                    }
                    None => return Err(Error::WatchEnded("loadbalancerippools")),
                },
                ev = feeds.namespaces.next() => match ev {
                    Some(Ok(ev)) => on_namespace_event(&mut state, &mut feeds, ev),
                    Some(Err(e)) => {
                        count_error(&ctx, "watch_namespaces");
                        tracing::warn!(error = %e, "watching Namespaces failed; retrying with backoff");
                    }
                    None => return Err(Error::WatchEnded("namespaces")),
                },
                _ = crate::sleep_until_opt(next_retry) => retries.fire(&mut state),
                _ = crate::sleep_until_opt(pool_due) => {}
                _ = tokio::time::sleep(Duration::from_millis(50)), if wake_soon => {}
            }
            if feeds.synced() && !ctx.health.is_ready() {
                ctx.health.set_ready(true);
                ctx.metrics.ready.set(1);
                tracing::info!("initial lists received: ready");
            }
        }
        ctx.metrics.is_leader.set(0);
        election.shutdown().await;
        // Events of writes that landed are still published (bounded wait).
        outbox.close(Duration::from_secs(5)).await;
        Ok(())
    }
}

/// One item of the Services watch: an event goes to the state (`Ok(true)`: more may be taken
/// at once), an error is counted and logged (`Ok(false)`: the watcher retries with backoff), the
/// end of the stream ends the controller.
fn on_services_item(
    ctx: &Context,
    state: &mut State,
    feeds: &mut Feeds,
    item: Option<std::result::Result<Event<CachedService>, watcher::Error>>,
) -> Result<bool> {
    match item {
        Some(Ok(ev)) => {
            on_event(state, &mut feeds.svc_init, ev);
            Ok(true)
        }
        Some(Err(e)) => {
            count_error(ctx, "watch_services");
            tracing::warn!(error = %e, "watching Services failed; retrying with backoff");
            Ok(false)
        }
        None => Err(Error::WatchEnded("services")),
    }
}

/// One event of the Services or pools watch.
fn on_event<O: Watched>(state: &mut State, init: &mut InitialList<O>, ev: Event<O>) {
    match init.take(ev) {
        Some(Change::Replace(list)) => state.replace(list),
        Some(Change::Apply(o)) => state.event(o),
        Some(Change::Delete(o)) => state.delete(&o),
        None => {}
    }
}

fn on_namespace_event(state: &mut State, feeds: &mut Feeds, ev: Event<Namespace>) {
    use kube::ResourceExt;
    match feeds.ns_init.take(ev) {
        Some(Change::Replace(list)) => state.replace_namespaces(list),
        Some(Change::Apply(n)) => state.apply_namespace(&n),
        Some(Change::Delete(n)) => state.delete_namespace_name(&n.name_any()),
        None => {}
    }
}

fn update_gauges(metrics: &Metrics, state: &mut State) {
    for name in state.removed_pools_for_metrics() {
        metrics.remove_pool(&name);
    }
    if !state.is_active() {
        return;
    }
    metrics.unsatisfied.set(state.unsatisfied_count() as i64);
    for (name, c) in state.pool_counts() {
        metrics.set_pool(&name, c.total, c.used, c.available);
    }
}

/// How many times one object is refetched after 409s within one flush.
const MAX_CONFLICT_ROUNDS: usize = 5;

/// Pool status writes are coalesced: counts change with every allocation, one write per pool
/// after a burst is enough.
const POOL_DEBOUNCE: Duration = Duration::from_millis(200);

/// Service events taken in one round when they have already arrived (then the writes run).
const MAX_EVENTS_PER_ROUND: usize = 1000;

/// Service status writes in flight at once. Each write is a merge patch with the Service's
/// resourceVersion as precondition and touches one Service, so they are independent; one at a
/// time, a busy API server's round trip capped a restart at a few dozen Services per second.
const SERVICE_WRITE_CONCURRENCY: usize = 16;

/// A kind of object whose status the controller writes (Services, pools): how it is read and
/// patched on the server, and what one of its writes carries.
trait Written: Watched<Key: std::fmt::Display + Send + Sync> + Send {
    /// The object as the server sends it.
    type Server: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send;
    type Write: Send;
    /// The `resource` label of `ferrolb_controller_writes_total`.
    const RESOURCE: &'static str;
    /// How logs name the kind.
    const NOUN: &'static str;
    /// How many writes of a round are computed before they run, and how many run at once.
    /// Pool writes are computed one at a time, each after the one before landed (a pool re-read
    /// after a 409 may change the others' status); a round's Service writes are computed first
    /// and run [`SERVICE_WRITE_CONCURRENCY`] at a time.
    const AHEAD: usize;
    const CONCURRENCY: usize;
    /// The write the state machine asks for (see [`State::service_write`]).
    fn write(state: &State, key: &Self::Key) -> Option<Self::Write>;
    fn api(client: &Client, key: &Self::Key) -> Api<Self::Server>;
    fn name(key: &Self::Key) -> &str;
    /// What the state keeps of a server object.
    fn narrow(state: &State, obj: Self::Server) -> Self;
    fn patch(w: &Self::Write) -> &serde_json::Value;
    /// The object the write's Events are about, and the Events.
    fn events(w: &Self::Write) -> (&ObjectReference, &[EventSpec]);
    fn retries(r: &mut Retries) -> &mut RetryQueue<Self::Key>;
    /// Metrics of a write that landed, beyond its count.
    fn count_landed(_metrics: &Metrics, _w: &Self::Write) {}
}

impl Written for CachedService {
    type Server = Service;
    type Write = ServiceWrite;
    const RESOURCE: &'static str = "services";
    const NOUN: &'static str = "Service";
    const AHEAD: usize = usize::MAX;
    const CONCURRENCY: usize = SERVICE_WRITE_CONCURRENCY;
    fn write(state: &State, key: &ServiceKey) -> Option<ServiceWrite> {
        state.service_write(key)
    }
    fn api(client: &Client, key: &ServiceKey) -> Api<Service> {
        Api::namespaced(client.clone(), &key.namespace)
    }
    fn name(key: &ServiceKey) -> &str {
        &key.name
    }
    fn narrow(state: &State, obj: Service) -> Self {
        state.options().cache(obj)
    }
    fn patch(w: &ServiceWrite) -> &serde_json::Value {
        &w.patch
    }
    fn events(w: &ServiceWrite) -> (&ObjectReference, &[EventSpec]) {
        (&w.regarding, &w.events)
    }
    fn retries(r: &mut Retries) -> &mut RetryQueue<ServiceKey> {
        &mut r.services
    }
    fn count_landed(metrics: &Metrics, w: &ServiceWrite) {
        metrics.allocations.inc_by(w.added.len() as u64);
        metrics.releases.inc_by(w.removed.len() as u64);
        if let Some(r) = &w.failed_reason {
            metrics.allocation_failures.with_label_values(&[r]).inc();
        }
    }
}

impl Written for LoadBalancerIPPool {
    type Server = LoadBalancerIPPool;
    type Write = PoolWrite;
    const RESOURCE: &'static str = "loadbalancerippools";
    const NOUN: &'static str = "pool";
    const AHEAD: usize = 1;
    const CONCURRENCY: usize = 1;
    fn write(state: &State, name: &String) -> Option<PoolWrite> {
        state.pool_write(name)
    }
    fn api(client: &Client, _name: &String) -> Api<LoadBalancerIPPool> {
        Api::all(client.clone())
    }
    fn name(name: &String) -> &str {
        name
    }
    fn narrow(_state: &State, obj: LoadBalancerIPPool) -> Self {
        obj
    }
    fn patch(w: &PoolWrite) -> &serde_json::Value {
        &w.patch
    }
    fn events(w: &PoolWrite) -> (&ObjectReference, &[EventSpec]) {
        (&w.regarding, &w.events)
    }
    fn retries(r: &mut Retries) -> &mut RetryQueue<String> {
        &mut r.pools
    }
}

/// Performs every Service or pool status write the state machine asks for, while (and only
/// while) leading, [`Written::CONCURRENCY`] at a time. Results are applied to the state one by
/// one, in completion order, and the Events of each write that landed go to the [`Outbox`]
/// (published by a task of their own, off this path).
async fn flush<K: Written>(
    ctx: &Context,
    state: &mut State,
    outbox: &Outbox,
    election: &super::leadership::Leadership,
    retries: &mut Retries,
) {
    for _round in 0..MAX_CONFLICT_ROUNDS {
        let keys = state.tracked_mut::<K>().take_dirty();
        if keys.is_empty() {
            return;
        }
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let mut batch = Vec::new();
            for key in keys.by_ref().take(K::AHEAD) {
                if !election.is_leader() || ctx.shutdown.is_cancelled() {
                    state.tracked_mut::<K>().mark_dirty(key);
                    continue;
                }
                if let Some(until) = state.tracked::<K>().pending_until(&key) {
                    // The watch has not shown our last write yet: what we would compute now is
                    // based on an older version. Its event re-marks the object; the retry is a
                    // safety net in case that event never comes.
                    K::retries(retries).schedule_at(key, until.into());
                    continue;
                }
                let Some(w) = K::write(state, &key) else {
                    K::retries(retries).done(&key);
                    continue;
                };
                let based_on = state.tracked::<K>().rv(&key);
                batch.push((key, w, based_on));
            }
            let mut writes =
                futures::stream::iter(batch.into_iter().map(|(key, w, based_on)| async move {
                    // Stop launching writes once leadership is gone (those in flight carry
                    // their resourceVersion precondition).
                    if !election.is_leader() || ctx.shutdown.is_cancelled() {
                        return Err(key);
                    }
                    let result = patch_status::<K>(ctx, &key, &w).await;
                    Ok(Sent {
                        key,
                        write: w,
                        based_on,
                        result,
                    })
                }))
                .buffer_unordered(K::CONCURRENCY);
            while let Some(sent) = writes.next().await {
                match sent {
                    Ok(sent) => landed::<K>(ctx, state, outbox, retries, sent).await,
                    Err(unsent) => state.tracked_mut::<K>().mark_dirty(unsent),
                }
            }
        }
    }
}

/// One status write that was sent: what it wrote, on which resourceVersion of ours, and the
/// server's answer.
struct Sent<K: Written> {
    key: K::Key,
    write: K::Write,
    based_on: Option<String>,
    result: Result<K::Server>,
}

/// The result of one status write: on success the Events go out and the server's answer is
/// applied; a conflict (or a vanished object) re-reads; other errors retry with backoff.
async fn landed<K: Written>(
    ctx: &Context,
    state: &mut State,
    outbox: &Outbox,
    retries: &mut Retries,
    sent: Sent<K>,
) {
    let Sent {
        key,
        write: w,
        based_on,
        result,
    } = sent;
    match result {
        Ok(updated) => {
            let (regarding, events) = K::events(&w);
            outbox.push(regarding, events);
            K::retries(retries).done(&key);
            ctx.metrics.write(K::RESOURCE, "ok");
            K::count_landed(&ctx.metrics, &w);
            state.tracked_mut::<K>().note_version(
                &key,
                based_on.as_deref(),
                updated.meta().resource_version.as_deref(),
            );
            K::narrow(state, updated).apply(state);
            // The server's answer must show what we wrote; if it does not (a field the server
            // drops or rewrites), don't write again and again: say so instead.
            if K::write(state, &key).is_some() {
                state.tracked_mut::<K>().forget_dirty(&key);
                count_error(ctx, "status_not_converging");
                tracing::error!(
                    object = %key,
                    "{noun} status still differs right after a successful write; not retrying until the {noun} changes",
                    noun = K::NOUN
                );
            }
        }
        Err(e) if e.is_conflict() || e.is_not_found() => {
            ctx.metrics.write(K::RESOURCE, "conflict");
            tracing::debug!(object = %key, error = %e, "{} changed or vanished under the write: re-reading", K::NOUN);
            refetch::<K>(ctx, state, &key, retries).await;
        }
        Err(e) => {
            ctx.metrics.write(K::RESOURCE, "error");
            count_error(ctx, e.metric_label());
            tracing::warn!(error = %e, object = %key, "{} status write failed; will retry", K::NOUN);
            K::retries(retries).schedule(key);
        }
    }
}

/// Bumps `ferrolb_controller_reconcile_errors_total{kind}`.
fn count_error(ctx: &Context, kind: &str) {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[kind])
        .inc();
}

/// Patch parameters of the status writes (field manager derived from the controller name).
fn status_patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::api::CONTROLLER_NAME.replace('/', "-")),
        ..Default::default()
    }
}

/// A JSON merge patch on the object's `/status`.
async fn patch_status<K: Written>(ctx: &Context, key: &K::Key, w: &K::Write) -> Result<K::Server> {
    let pp = status_patch_params();
    Ok(K::api(&ctx.client, key)
        .patch_status(K::name(key), &pp, &Patch::Merge(K::patch(w)))
        .await?)
}

/// After a 409: read the current object and let the state machine re-evaluate it.
async fn refetch<K: Written>(
    ctx: &Context,
    state: &mut State,
    key: &K::Key,
    retries: &mut Retries,
) {
    match K::api(&ctx.client, key).get_opt(K::name(key)).await {
        Ok(Some(obj)) => {
            let cached = state.tracked::<K>().rv(key);
            state.tracked_mut::<K>().note_version(
                key,
                cached.as_deref(),
                obj.meta().resource_version.as_deref(),
            );
            K::narrow(state, obj).apply(state);
            state.tracked_mut::<K>().mark_dirty(key.clone());
        }
        Ok(None) => K::forget(state, key),
        Err(e) => {
            count_error(ctx, "refetch");
            tracing::warn!(error = %e, object = %key, "refetch of a {} after a conflict failed; will retry", K::NOUN);
            K::retries(retries).schedule(key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timings_follow_client_go_rules() {
        assert!(LeaseTimings::default().validate().is_ok());
        let bad = LeaseTimings {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert!(bad.validate().is_err());
        let bad = LeaseTimings {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_secs(2),
        };
        assert!(bad.validate().is_err());
        let bad = LeaseTimings {
            retry_period: Duration::ZERO,
            ..LeaseTimings::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_retry_queue_fires_due_keys_once_and_counts_only_failures() {
        let mut q: RetryQueue<String> = RetryQueue::default();
        let mut pools: Tracked<LoadBalancerIPPool> = Tracked::default();
        q.schedule("a".into());
        q.schedule("a".into());
        assert_eq!(q.due["a"].1, 1, "the second failure is attempt 1");
        let now = Instant::now();
        q.schedule_at("b".into(), now);
        assert_eq!(q.next_due(), Some(now));
        q.fire(&mut pools);
        assert_eq!(pools.take_dirty(), ["b"], "only the due key is marked");
        q.fire(&mut pools);
        assert!(
            !pools.has_dirty(),
            "a fired retry waits for the next failure"
        );
        q.schedule_at("a".into(), now);
        assert_eq!(q.due["a"].1, 1, "waiting for the watch is no failure");
        q.done(&"a".to_string());
        assert!(!q.due.contains_key("a"));
        q.clear();
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn retry_backoff_grows_and_is_capped() {
        assert_eq!(Retries::backoff(0), Duration::from_millis(200));
        assert_eq!(Retries::backoff(1), Duration::from_millis(400));
        assert!(Retries::backoff(5) > Retries::backoff(4));
        assert_eq!(Retries::backoff(30), Duration::from_secs(30));
    }
}
