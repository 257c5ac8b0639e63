//! The election engine: one task, one Lease watch, many leases.
//!
//! The task owns a map lease name → what we want ([`Desired`]), what we observed
//! ([`Observed`]) and the last object seen (for PUTs). It wakes on watch events, write results,
//! commands and timers (renewal due, lease expiry + rank wait, renew deadline) and runs the pure
//! [`decide`]/[`standing`] rules for the lease concerned. Writes run as separate tasks (bounded
//! concurrency) so a slow API server never blocks the timers that end our claim on a lease.
//!
//! Reads: only the watch (one LIST at start or after the watch expired, then WATCH). No GETs.
//! Writes: creates/acquisitions when a lease is free and wanted, one renewal per held lease per
//! retry period, releases, and the deletion of abandoned free leases (see `gc_after`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::client::{LeaseWriter, WriteError};
use super::decide::{
    decide, standing, Action, Intent, LeaseConfig, Observed, Standing, WriteFailure,
};
use super::{balanced_assignment, rendezvous_rank, rendezvous_score, MAX_RANK_WAIT};

/// What the caller wants for one lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Labels to put on the Lease (e.g. which Services it serves; values ≤ 63 chars). Merged over
    /// the object's labels on create and on every write by the holder. Pairs, not a map: an
    /// agent keeps one `Desired` per address, and a map's node costs ~0.5 KiB even for 3 keys.
    /// A key given twice: the last one wins.
    pub labels: super::Pairs,
    /// Annotations (long lists, e.g. every Service namespace/name the address serves).
    pub annotations: super::Pairs,
    /// Nodes eligible for this lease, including this one. Used for the rendezvous rank (this
    /// node waits `min(rank, MAX_RANK_WAIT) × rank_step` before taking a free lease).
    /// Empty: no wait. Shared: many addresses have the same list.
    pub candidates: Arc<Vec<String>>,
}

/// A change of this node's standing on one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// We hold the lease (after a successful create/acquire/renew): announce.
    Acquired { name: String },
    /// We no longer hold it: another holder was seen, a write was refused (409/403...), or the
    /// renew deadline passed without an API outage to explain it. Stop announcing at once.
    Lost {
        name: String,
        /// The holder now recorded, when known.
        holder: Option<String>,
    },
    /// We held it, but renewals failed because the API server is unreachable and the renew
    /// deadline has passed: the lease may have expired for others. Sticky mode keeps
    /// announcing until another node's gratuitous ARP/NA is seen; strict mode stops now.
    /// Followed by `Acquired` (renewal got through again) or `Lost`.
    Unreachable { name: String },
    /// We released it (no longer wanted, or shutdown). Stop announcing.
    Released { name: String },
}

impl LeaseEvent {
    pub fn name(&self) -> &str {
        match self {
            LeaseEvent::Acquired { name }
            | LeaseEvent::Lost { name, .. }
            | LeaseEvent::Unreachable { name }
            | LeaseEvent::Released { name } => name,
        }
    }
}

/// Which Leases the engine watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Namespace-wide, by label selector (the agent's leases).
    Labels(String),
    /// One lease by name (`fieldSelector=metadata.name=NAME`).
    Name(String),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub namespace: String,
    /// Our holderIdentity (node name / pod name).
    pub identity: String,
    pub config: LeaseConfig,
    pub scope: WatchScope,
    /// Labels every lease we create/write carries (must match a `Labels` scope's selector).
    pub base_labels: BTreeMap<String, String>,
    /// Delete leases that nobody holds and we don't want after they have been free this long
    /// (`None`: never delete).
    pub gc_after: Option<Duration>,
    /// Concurrent writes in flight.
    pub max_concurrent_writes: usize,
    /// Keep a presence lease (`ferrolb-node-…`, renewed like any held lease) so other nodes
    /// know this one is alive even while it holds nothing (needed for `rebalance_after`).
    pub presence: bool,
    /// Hand a held lease over to its preferred node (rank 0 of the load-bounded assignment)
    /// once we have held it this long and that node is alive (`None`: never; stability only).
    /// At most one hand-over per retry period per node; a hand-over the preferred node does
    /// not take is not retried for ten times this period.
    pub rebalance_after: Option<Duration>,
}

impl EngineOptions {
    /// The agent's settings: label-selected watch on `app.kubernetes.io/managed-by=ferrolb`,
    /// abandoned leases deleted after 2 lease durations + the longest rank wait (a node that
    /// wants a free lease takes it within its rank wait).
    pub fn agent(namespace: &str, identity: &str, config: LeaseConfig) -> Self {
        let gc = config.lease_duration * 2 + config.rank_step * MAX_RANK_WAIT as u32;
        EngineOptions {
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            scope: WatchScope::Labels(super::MANAGED_BY_SELECTOR.to_string()),
            base_labels: BTreeMap::from([(
                super::MANAGED_BY_LABEL.to_string(),
                super::MANAGED_BY_VALUE.to_string(),
            )]),
            gc_after: Some(gc),
            max_concurrent_writes: 64,
            presence: true,
            rebalance_after: Some((config.lease_duration * 6).max(Duration::from_secs(30))),
            config,
        }
    }

    /// One lease watched by name (leader election), never deleted.
    pub fn single(namespace: &str, name: &str, identity: &str, config: LeaseConfig) -> Self {
        EngineOptions {
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            scope: WatchScope::Name(name.to_string()),
            base_labels: BTreeMap::new(),
            gc_after: None,
            max_concurrent_writes: 4,
            presence: false,
            rebalance_after: None,
            config,
        }
    }
}

/// Write counters of one engine (for metrics and tests).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub creates: AtomicU64,
    pub acquires: AtomicU64,
    pub renews: AtomicU64,
    pub releases: AtomicU64,
    pub deletes: AtomicU64,
    /// Writes refused with 409/404 (another writer won).
    pub conflicts: AtomicU64,
    /// Writes that failed otherwise (unreachable / rejected).
    pub failures: AtomicU64,
    /// Watch stream errors (the watcher retries with backoff).
    pub watch_errors: AtomicU64,
    /// Held leases released to hand them over to their preferred node (rebalancing).
    pub handovers: AtomicU64,
    /// Unwanted leases whose holder expired, cleared (holder removed) so they can be deleted.
    pub clears: AtomicU64,
    /// API outages seen (a write or the watch failing as unreachable after a success).
    pub outages: AtomicU64,
}

impl EngineStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Outcome of a shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Leases released (holder cleared).
    pub released: Vec<String>,
    /// Leases we held but could not release in time (they will expire).
    pub not_released: Vec<String>,
}

enum Cmd {
    SetDesired(BTreeMap<String, Desired>),
    Shutdown(oneshot::Sender<ShutdownReport>),
}

/// How we last reported a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reported {
    NotHeld,
    Held,
    Sticky,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Update(OpKind),
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Acquire(i32),
    Renew,
    Release,
    /// Clear the holder of an unwanted lease whose holder expired (a preconditioned release
    /// written by a node that is not the holder), so that garbage collection may delete it.
    Clear,
}

/// How long after the last watch error the watch counts as healthy again if no event arrived
/// (the watch backoff tops out at 2 s; a resumed watch on a quiet set shows nothing).
const WATCH_QUIET: Duration = Duration::from_secs(4);

/// An API outage in progress, as this engine saw it.
struct Outage {
    since: Instant,
    failed_writes: u64,
    watch_errors: u64,
}

struct Done {
    name: String,
    op: Op,
    sent_at: Instant,
    used_rv: Option<String>,
    result: Result<Option<Lease>, WriteError>,
}

struct Entry {
    desired: Option<Desired>,
    observed: Option<Observed>,
    object: Option<Lease>,
    last_failure: Option<WriteFailure>,
    in_flight: bool,
    retry_after: Option<Instant>,
    conflict_rv: Option<String>,
    /// Our last successful write was a release.
    released_by_us: bool,
    reported: Reported,
    wake: Option<Instant>,
    /// Cached rank for taking over from (holder): rank among candidates without it.
    takeover_rank: Option<(String, usize)>,
    /// Since when we hold it (reported Held).
    held_since: Option<Instant>,
    /// The last holder seen (kept when the lease is released).
    last_holder: Option<String>,
    /// We released it to hand it over to its preferred node.
    handover_pending: bool,
    /// No hand-over before this (a previous one was not taken).
    no_handover_until: Option<Instant>,
    /// Waiting in one of the engine's write queues.
    queued: bool,
}

impl Entry {
    fn new() -> Self {
        Entry {
            desired: None,
            observed: None,
            object: None,
            last_failure: None,
            in_flight: false,
            retry_after: None,
            conflict_rv: None,
            released_by_us: false,
            reported: Reported::NotHeld,
            wake: None,
            takeover_rank: None,
            held_since: None,
            last_holder: None,
            handover_pending: false,
            no_handover_until: None,
            queued: false,
        }
    }
}

fn rv_num(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|s| s.parse().ok())
}

struct Engine {
    opts: EngineOptions,
    writer: LeaseWriter,
    entries: HashMap<String, Entry>,
    timers: BTreeSet<(Instant, String)>,
    initialized: bool,
    init_buf: Option<HashMap<String, Lease>>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    /// Leases whose write waits for one of the `max_concurrent_writes` slots: renewals and
    /// releases first (keep what we hold), then creates, acquisitions and deletions. A queued
    /// lease is decided afresh when its turn comes; nothing is built for it before.
    queue_urgent: VecDeque<String>,
    queue_rest: VecDeque<String>,
    in_flight: usize,
    /// Deadline of a shutdown in progress.
    shutting_down: Option<Instant>,
    shutdown_waiters: Vec<oneshot::Sender<ShutdownReport>>,
    report: ShutdownReport,
    stats: Arc<EngineStats>,
    held_tx: watch::Sender<BTreeSet<String>>,
    /// Our load-bounded rank and the preferred node per desired lease.
    ranks: HashMap<String, (usize, Option<String>)>,
    /// Last local instant each holder was seen renewing/acquiring some lease (liveness).
    last_seen: HashMap<String, Instant>,
    /// Name of our presence lease (if `opts.presence`).
    presence: Option<String>,
    /// Earliest next hand-over.
    next_handover: Instant,
    /// The watch failed and has not shown an event since: no expiry-based decisions (takeover,
    /// clearing, deletion) until it does, or until this instant passes without another error.
    watch_down: Option<Instant>,
    /// The API outage in progress (logged once when it starts and once when it ends).
    outage: Option<Outage>,
}

impl Engine {
    fn me(&self) -> &str {
        &self.opts.identity
    }

    fn set_wake(&mut self, name: &str, wake: Option<Instant>) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if e.wake == wake {
            return;
        }
        if let Some(old) = e.wake.take() {
            self.timers.remove(&(old, name.to_string()));
        }
        if let Some(w) = wake {
            self.timers.insert((w, name.to_string()));
        }
        e.wake = wake;
    }

    fn emit(&mut self, ev: LeaseEvent) {
        if self.presence.as_deref() == Some(ev.name()) {
            return;
        }
        tracing::debug!(lease = ev.name(), event = ?ev, "lease state change");
        let _ = self.events.send(ev);
    }

    fn publish_held(&mut self, name: &str, held: bool) {
        if self.presence.as_deref() == Some(name) {
            return;
        }
        self.held_tx.send_if_modified(|cur| {
            if held {
                cur.insert(name.to_string())
            } else {
                cur.remove(name)
            }
        });
    }

    /// Record an observation of `name` (None: absent), unless it is older than what we know.
    fn observe(&mut self, name: &str, lease: Option<&Lease>, now: Instant) {
        let me = self.opts.identity.clone();
        let e = self
            .entries
            .entry(name.to_string())
            .or_insert_with(Entry::new);
        if let (Some(l), Some(prev)) = (lease, e.observed.as_ref()) {
            if let (Some(new), Some(old)) = (
                rv_num(l.metadata.resource_version.as_deref()),
                rv_num(prev.resource_version.as_deref()),
            ) {
                if new < old {
                    return;
                }
            }
        }
        let next = Observed::next(e.observed.as_ref(), lease, now);
        if next.observed_at == now {
            if let Some(h) = next.holder() {
                if h != me {
                    self.last_seen.insert(h.to_string(), now);
                }
            }
        }
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if next.holder().is_some_and(|h| h != me) {
            e.handover_pending = false;
        }
        if let Some(h) = next.holder() {
            e.last_holder = Some(h.to_string());
        }
        if next.record != e.observed.as_ref().and_then(|o| o.record.clone()) {
            // The record moved on: a failure of an older write says nothing about it.
            if next.holder() != Some(me.as_str()) {
                e.last_failure = None;
            }
        }
        // The whole object is the base of our renewals: keep it only for leases this node holds.
        // An agent watches every address lease of the cluster and holds a share of them; copies
        // of the others cost ≈ 2.8 KiB each (19 MB per agent with 10k addresses on 3 nodes). A
        // takeover writes from a base rebuilt from the observation (`write_base`); a delete
        // needs only the resourceVersion.
        let keep = next.holder() == Some(me.as_str());
        e.observed = Some(next);
        e.object = if keep { lease.cloned() } else { None };
    }

    /// The object a PUT of `name` starts from: the last one seen while we hold it, or — for a
    /// takeover — one rebuilt from the observation (name, resourceVersion, the record), with our
    /// labels and annotations merged over it by the writer. So a takeover does not carry over
    /// metadata that someone else added to a ferrolb lease (its own keys are rewritten anyway).
    fn write_base(&self, name: &str) -> Option<Lease> {
        let e = self.entries.get(name)?;
        if let Some(o) = &e.object {
            return Some(o.clone());
        }
        let obs = e.observed.as_ref()?;
        let record = obs.record.as_ref()?;
        let mut base = Lease::default();
        base.metadata.name = Some(name.to_string());
        base.metadata.namespace = Some(self.opts.namespace.clone());
        base.metadata.resource_version = Some(obs.resource_version.clone()?);
        base.spec = Some(record.to_spec());
        Some(base)
    }

    fn rank_delay(&mut self, name: &str, desired: &Desired, obs: &Observed) -> Duration {
        if desired.candidates.is_empty() {
            return Duration::ZERO;
        }
        let step = self.opts.config.rank_step;
        let me = self.opts.identity.clone();
        let holder = obs.holder().filter(|h| *h != me);
        let Some(holder) = holder else {
            // Absent or released: the load-bounded assignment decides who goes first — unless
            // the preferred node is the one that just released it (it is shutting down or no
            // longer eligible): then the others go in rendezvous order without it.
            let last = self.entries.get(name).and_then(|e| e.last_holder.clone());
            let r = match self.ranks.get(name) {
                Some((_, Some(pref))) if obs.record.is_some() && last.as_ref() == Some(pref) => {
                    let others: Vec<String> = desired
                        .candidates
                        .iter()
                        .filter(|n| *n != pref)
                        .cloned()
                        .collect();
                    rendezvous_rank(name, &me, &others)
                }
                Some((r, _)) => *r,
                None => rendezvous_rank(name, &me, &desired.candidates),
            };
            return step * r.min(MAX_RANK_WAIT) as u32;
        };
        // Taking over from an expired holder: rank among the others (it is presumably dead).
        // Cached per holder: this runs on every renewal we observe.
        if let Some(e) = self.entries.get(name) {
            if let Some((h, r)) = &e.takeover_rank {
                if h == holder {
                    return step * (*r).min(MAX_RANK_WAIT) as u32;
                }
            }
        }
        let nodes: Vec<String> = desired
            .candidates
            .iter()
            .filter(|n| n.as_str() != holder)
            .cloned()
            .collect();
        let rank = rendezvous_rank(name, &me, &nodes);
        let holder = holder.to_string();
        if let Some(e) = self.entries.get_mut(name) {
            e.takeover_rank = Some((holder, rank));
        }
        step * rank.min(MAX_RANK_WAIT) as u32
    }

    fn step(&mut self, name: &str, now: Instant) {
        let cfg = self.opts.config.clone();
        let me = self.opts.identity.clone();
        let shutting_down = self.shutting_down.is_some();
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };

        // 1. Standing, reported on change. A write still in flight past the deadline counts as
        //    the API server not answering.
        let failure = e.last_failure.or(if e.in_flight {
            Some(WriteFailure::Unreachable)
        } else {
            None
        });
        let st = standing(&me, e.observed.as_ref(), now, &cfg, failure);
        let mut wake: Option<Instant> = None;
        if st == Standing::Holder {
            wake = e
                .observed
                .as_ref()
                .map(|o| o.observed_at + cfg.renew_deadline);
        }
        let new_rep = match st {
            Standing::Holder => Reported::Held,
            Standing::Unreachable if e.reported != Reported::NotHeld => Reported::Sticky,
            _ => Reported::NotHeld,
        };
        let old_rep = e.reported;
        e.reported = new_rep;
        if new_rep == Reported::Held && old_rep != Reported::Held {
            if old_rep == Reported::NotHeld {
                e.held_since = Some(now);
            }
            if e.handover_pending {
                // We handed it over and nobody took it: don't try again for a long while.
                e.handover_pending = false;
                let back_off = self.opts.rebalance_after.unwrap_or_default() * 10;
                e.no_handover_until = Some(now + back_off);
            }
        }
        if new_rep == Reported::NotHeld {
            e.held_since = None;
        }
        let holder_now = e
            .observed
            .as_ref()
            .and_then(|o| o.holder())
            .filter(|h| *h != me)
            .map(str::to_string);
        let released_by_us = e.released_by_us;
        let ev = match (old_rep, new_rep) {
            (a, b) if a == b => None,
            (_, Reported::Held) => Some(LeaseEvent::Acquired { name: name.into() }),
            (_, Reported::Sticky) => Some(LeaseEvent::Unreachable { name: name.into() }),
            (_, Reported::NotHeld) if released_by_us => {
                Some(LeaseEvent::Released { name: name.into() })
            }
            (_, Reported::NotHeld) => Some(LeaseEvent::Lost {
                name: name.into(),
                holder: holder_now,
            }),
        };
        let is_presence = self.presence.as_deref() == Some(name);
        if let (Some(LeaseEvent::Released { .. }), true, false) = (&ev, shutting_down, is_presence)
        {
            self.report.released.push(name.to_string());
        }
        if let Some(ev) = ev {
            self.emit(ev);
            self.publish_held(name, new_rep != Reported::NotHeld);
        }

        // 2. The next write, if any.
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if e.in_flight {
            self.set_wake(name, wake);
            return;
        }
        if let Some(t) = e.retry_after {
            if now < t {
                let w = Some(wake.map_or(t, |w| w.min(t)));
                self.set_wake(name, w);
                return;
            }
            e.retry_after = None;
        }
        let Some(obs) = e.observed.clone() else {
            self.set_wake(name, wake);
            return;
        };
        if e.conflict_rv.is_some() && e.conflict_rv == obs.resource_version {
            // Our write with this RV was refused: wait for the watch to show the winner.
            self.set_wake(name, wake);
            return;
        }
        let desired = e.desired.clone();
        let mut intent = match (&desired, shutting_down) {
            (Some(d), false) => Intent::Acquire {
                delay: self.rank_delay(name, d, &obs),
            },
            _ => Intent::Release,
        };
        if matches!(intent, Intent::Acquire { .. }) && self.should_hand_over(name, now) {
            tracing::info!(lease = name, "handing the lease over to its preferred node");
            intent = Intent::Release;
            self.next_handover = now + cfg.retry_period;
            if let Some(e) = self.entries.get_mut(name) {
                e.handover_pending = true;
            }
            self.stats.handovers.fetch_add(1, Ordering::Relaxed);
        }
        let mut action = decide(&me, Some(&obs), now, &cfg, intent);
        let min = |a: Option<Instant>, b: Instant| Some(a.map_or(b, |a| a.min(b)));
        if self.watch_down.is_some() && matches!(action, Action::Create | Action::Acquire { .. }) {
            // The watch failed and has not shown the current state since: taking a lease now
            // could rest on a stale view. The resync looks at every lease again.
            action = Action::WaitUntil(now + WATCH_QUIET);
        }
        match action {
            Action::Create => {
                if let Some(d) = desired {
                    self.spawn(name, Op::Create, None, d);
                }
            }
            Action::Acquire { transitions } => {
                self.spawn_update(name, OpKind::Acquire(transitions), &obs, desired)
            }
            Action::Renew => self.spawn_update(name, OpKind::Renew, &obs, desired),
            Action::Release => self.spawn_update(name, OpKind::Release, &obs, desired),
            Action::Hold { renew_at } => self.set_wake(name, min(wake, renew_at)),
            Action::WaitUntil(t) => self.set_wake(name, min(wake, t)),
            Action::Idle => {
                let gc_at = self.gc_at(name, desired.is_some(), &obs);
                match gc_at {
                    // Not while the watch is down (the resync looks again).
                    Some(_) if self.watch_down.is_some() => self.set_wake(name, wake),
                    Some((t, op)) if now >= t => {
                        self.spawn(name, op, obs.resource_version.clone(), Desired::default())
                    }
                    Some((t, _)) => self.set_wake(name, min(wake, t)),
                    None => {
                        self.set_wake(name, wake);
                        // Forget leases that are gone and unwanted.
                        let forget = desired.is_none()
                            && obs.record.is_none()
                            && self
                                .entries
                                .get(name)
                                .is_some_and(|e| !e.in_flight && e.reported == Reported::NotHeld);
                        if forget {
                            self.set_wake(name, None);
                            self.entries.remove(name);
                        }
                    }
                }
            }
        }
    }

    /// Rebalancing: should we release this held lease so its preferred node takes it?
    fn should_hand_over(&self, name: &str, now: Instant) -> bool {
        let Some(after) = self.opts.rebalance_after else {
            return false;
        };
        if now < self.next_handover || self.presence.as_deref() == Some(name) {
            return false;
        }
        let Some(e) = self.entries.get(name) else {
            return false;
        };
        if e.reported != Reported::Held || e.in_flight {
            return false;
        }
        if e.held_since.is_none_or(|t| now < t + after) {
            return false;
        }
        if e.no_handover_until.is_some_and(|t| now < t) {
            return false;
        }
        let Some((rank, Some(preferred))) = self.ranks.get(name) else {
            return false;
        };
        if *rank == 0 || preferred == self.me() {
            return false;
        }
        // Only to a node that shows signs of life (it renewed something, e.g. its presence
        // lease, within one lease duration).
        self.last_seen
            .get(preferred)
            .is_some_and(|t| now < *t + self.opts.config.lease_duration)
    }

    /// When and how an unwanted lease is garbage-collected: a lease with no holder is deleted
    /// once it has been free for `gc_after`; a lease whose holder expired that long ago is first
    /// cleared (holder removed, resourceVersion precondition), never deleted while it names a
    /// holder. Expiry here is judged like any takeover: from this node's own observation, with
    /// clocks restarted after an outage it saw ([`Engine::restart_clocks`]).
    fn gc_at(&self, name: &str, desired: bool, obs: &Observed) -> Option<(Instant, Op)> {
        let after = self.opts.gc_after?;
        if desired || self.shutting_down.is_some() || obs.record.is_none() {
            return None;
        }
        let cfg = &self.opts.config;
        let free_since = obs.free_since(cfg);
        // Spread deletions over a second so one node usually deletes and the rest see it.
        let jitter = Duration::from_millis(rendezvous_score(name, self.me()) % 1000);
        let op = if obs.holder().is_some() {
            Op::Update(OpKind::Clear)
        } else {
            Op::Delete
        };
        Some((free_since + after + jitter, op))
    }

    fn spawn_update(&mut self, name: &str, kind: OpKind, obs: &Observed, desired: Option<Desired>) {
        self.spawn(
            name,
            Op::Update(kind),
            obs.resource_version.clone(),
            desired.unwrap_or_default(),
        );
    }

    fn spawn(&mut self, name: &str, op: Op, used_rv: Option<String>, desired: Desired) {
        let slot_free = self.write_slot_free();
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if !slot_free {
            // Every slot is taken (a burst of creates, a slow API server): wait in line rather
            // than as a task holding a copy of the lease, its labels and a client each.
            if !e.queued {
                e.queued = true;
                let urgent = matches!(op, Op::Update(OpKind::Renew | OpKind::Release));
                if urgent {
                    self.queue_urgent.push_back(name.to_string());
                } else {
                    self.queue_rest.push_back(name.to_string());
                }
            }
            // The standing still follows the clock: a holder whose renewal waits past its
            // renew deadline stops claiming the lease then.
            let wake = match (&e.observed, e.reported) {
                (Some(o), Reported::Held) => Some(o.observed_at + self.opts.config.renew_deadline),
                _ => None,
            };
            self.set_wake(name, wake);
            return;
        }
        let object = match op {
            Op::Update(_) => self.write_base(name),
            Op::Create | Op::Delete => None,
        };
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.in_flight = true;
        if op == Op::Update(OpKind::Release) {
            // Set before the write: the watch may show the release before its answer arrives.
            e.released_by_us = true;
        }
        self.in_flight += 1;
        let mut labels = self.opts.base_labels.clone();
        labels.extend(desired.labels);
        let annotations: BTreeMap<String, String> = desired.annotations.into_iter().collect();
        let writer = self.writer.clone();
        let tx = self.done_tx.clone();
        let stats = self.stats.clone();
        let timeout = self.opts.config.renew_deadline;
        let name = name.to_string();
        match op {
            Op::Create => stats.creates.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Acquire(_)) => stats.acquires.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Renew) => stats.renews.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Release) => stats.releases.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Clear) => stats.clears.fetch_add(1, Ordering::Relaxed),
            Op::Delete => stats.deletes.fetch_add(1, Ordering::Relaxed),
        };
        tokio::spawn(async move {
            let sent_at = Instant::now();
            let result = match op {
                Op::Create => writer
                    .create(&name, &labels, &annotations, timeout)
                    .await
                    .map(Some),
                Op::Update(kind) => {
                    let action = match kind {
                        OpKind::Acquire(t) => Action::Acquire { transitions: t },
                        OpKind::Renew => Action::Renew,
                        OpKind::Release | OpKind::Clear => Action::Release,
                    };
                    match &object {
                        Some(obj) => {
                            // A release leaves the metadata as it is (only the holder writes
                            // what a lease serves).
                            let release = matches!(kind, OpKind::Release | OpKind::Clear);
                            let (l, a) = if release {
                                (None, None)
                            } else {
                                (Some(&labels), Some(&annotations))
                            };
                            writer.update(&action, obj, l, a, timeout).await.map(Some)
                        }
                        None => Err(WriteError {
                            kind: WriteFailure::Rejected,
                            message: "no observed object to update".into(),
                            code: None,
                        }),
                    }
                }
                Op::Delete => match used_rv.as_deref() {
                    Some(rv) => writer.delete(&name, rv, timeout).await.map(|_| None),
                    None => Err(WriteError {
                        kind: WriteFailure::Rejected,
                        message: "no resourceVersion to delete with".into(),
                        code: None,
                    }),
                },
            };
            let _ = tx.send(Done {
                name,
                op,
                sent_at,
                used_rv,
                result,
            });
        });
    }

    fn on_done(&mut self, d: Done, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.on_result(d, now);
        self.drain_queue(now);
    }

    /// Fewer than `max_concurrent_writes` (at least one) writes are in flight.
    fn write_slot_free(&self) -> bool {
        self.in_flight < self.opts.max_concurrent_writes.max(1)
    }

    /// Gives free write slots to queued leases, renewals and releases first.
    fn drain_queue(&mut self, now: Instant) {
        while self.write_slot_free() {
            let Some(name) = self
                .queue_urgent
                .pop_front()
                .or_else(|| self.queue_rest.pop_front())
            else {
                break;
            };
            match self.entries.get_mut(&name) {
                Some(e) => e.queued = false,
                None => continue,
            }
            self.step(&name, now);
        }
    }

    fn on_result(&mut self, d: Done, now: Instant) {
        let cfg = self.opts.config.clone();
        match &d.result {
            Err(err) if err.kind == WriteFailure::Unreachable => {
                self.note_unreachable(now, false, &err.message)
            }
            // Any answer (also a 409 or a refusal) means the API server is reachable.
            _ => self.note_reachable(now),
        }
        let Some(e) = self.entries.get_mut(&d.name) else {
            return;
        };
        e.in_flight = false;
        match d.result {
            Ok(Some(lease)) => {
                let newer_known = match (
                    rv_num(lease.metadata.resource_version.as_deref()),
                    rv_num(
                        e.observed
                            .as_ref()
                            .and_then(|o| o.resource_version.as_deref()),
                    ),
                ) {
                    (Some(new), Some(known)) => known > new,
                    _ => false,
                };
                e.last_failure = None;
                e.conflict_rv = None;
                e.retry_after = None;
                if !matches!(d.op, Op::Update(OpKind::Release | OpKind::Clear)) {
                    e.released_by_us = false;
                }
                if !newer_known {
                    e.observed = Some(Observed::written(&lease, d.sent_at));
                    let mut lease = lease;
                    lease.metadata.managed_fields = None;
                    e.object = Some(lease);
                }
            }
            Ok(None) => {
                // Deleted.
                e.observed = Some(Observed::absent(now));
                e.object = None;
                e.last_failure = None;
            }
            Err(err) => {
                match err.kind {
                    WriteFailure::Conflict => {
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(lease = %d.name, op = ?d.op, error = %err.message, "lease write lost a race");
                    }
                    WriteFailure::Unreachable => {
                        // Counted and logged per outage, not per request.
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(lease = %d.name, op = ?d.op, error = %err.message, "lease write failed: API server unreachable");
                    }
                    WriteFailure::Rejected => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(lease = %d.name, op = ?d.op, error = %err.message, "lease write refused");
                    }
                }
                e.last_failure = Some(err.kind);
                match (err.kind, &d.op) {
                    (WriteFailure::Conflict, Op::Create) => {
                        // Exists but our watch has not shown it (yet): wait for it, then retry
                        // after a lease duration at the latest.
                        e.retry_after = Some(now + cfg.lease_duration);
                    }
                    (WriteFailure::Conflict, _) => {
                        e.conflict_rv = d.used_rv.clone();
                        e.retry_after = Some(now + cfg.retry_period);
                    }
                    _ => e.retry_after = Some(now + cfg.retry_period),
                }
                if d.op == Op::Update(OpKind::Release) {
                    e.released_by_us = false;
                }
            }
        }
        self.step(&d.name, now);
    }

    fn on_watch(&mut self, ev: watcher::Event<Lease>, now: Instant) {
        match ev {
            watcher::Event::Init => self.init_buf = Some(HashMap::new()),
            watcher::Event::InitApply(l) => {
                if let (Some(buf), Some(n)) = (self.init_buf.as_mut(), l.metadata.name.clone()) {
                    buf.insert(n, l);
                }
            }
            watcher::Event::InitDone => {
                let mut buf = self.init_buf.take().unwrap_or_default();
                let names: Vec<String> = self.entries.keys().cloned().collect();
                for n in &names {
                    let l = buf.remove(n);
                    self.observe(n, l.as_ref(), now);
                }
                for (n, l) in buf {
                    self.observe(&n, Some(&l), now);
                }
                self.initialized = true;
                let all: Vec<String> = self.entries.keys().cloned().collect();
                for n in all {
                    self.step(&n, now);
                }
            }
            watcher::Event::Apply(l) => {
                if let Some(n) = l.metadata.name.clone() {
                    self.observe(&n, Some(&l), now);
                    self.step(&n, now);
                }
            }
            watcher::Event::Delete(l) => {
                if let Some(n) = l.metadata.name.clone() {
                    self.observe(&n, None, now);
                    self.step(&n, now);
                }
            }
        }
    }

    fn on_desired(&mut self, desired: BTreeMap<String, Desired>, now: Instant) {
        let cands: BTreeMap<String, Arc<Vec<String>>> = desired
            .iter()
            .map(|(n, d)| (n.clone(), d.candidates.clone()))
            .collect();
        self.ranks = balanced_assignment(&self.opts.identity, &cands)
            .into_iter()
            .collect();
        let mut desired = desired;
        if let Some(p) = &self.presence {
            desired.insert(
                p.clone(),
                Desired {
                    labels: vec![(
                        super::LABEL_ROLE.to_string(),
                        super::ROLE_PRESENCE.to_string(),
                    )],
                    annotations: vec![(super::ANN_NODE.to_string(), self.opts.identity.clone())],
                    candidates: Arc::default(),
                },
            );
        }
        let mut touched: Vec<String> = Vec::new();
        for (n, e) in self.entries.iter_mut() {
            if e.desired.is_some() && !desired.contains_key(n) {
                e.desired = None;
                touched.push(n.clone());
            }
        }
        for (n, d) in desired {
            let initialized = self.initialized;
            let e = self.entries.entry(n.clone()).or_insert_with(Entry::new);
            if e.observed.is_none() && initialized {
                // The watch is synced and has not shown it: it does not exist.
                e.observed = Some(Observed::absent(now));
            }
            if e.desired.as_ref() != Some(&d) {
                e.takeover_rank = None;
                e.desired = Some(d);
                touched.push(n);
            }
        }
        for n in touched {
            self.step(&n, now);
        }
    }

    /// A write failed as unreachable, or the watch failed: an outage starts (logged once) or
    /// goes on (counted).
    fn note_unreachable(&mut self, now: Instant, watch: bool, error: &str) {
        let o = self.outage.get_or_insert_with(|| {
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error,
                "API server unreachable: riding the outage out (leases are not judged expired \
                 because of it; one line when it ends)"
            );
            Outage {
                since: now,
                failed_writes: 0,
                watch_errors: 0,
            }
        });
        if watch {
            o.watch_errors += 1;
        } else {
            o.failed_writes += 1;
        }
    }

    /// A write succeeded or the watch delivered: an outage in progress ends (logged once).
    fn note_reachable(&mut self, now: Instant) {
        if let Some(o) = self.outage.take() {
            tracing::info!(
                lasted_ms = (now - o.since).as_millis() as u64,
                failed_writes = o.failed_writes,
                watch_errors = o.watch_errors,
                "API server reachable again"
            );
        }
    }

    /// The watch failed: until it shows an event again (or stays quiet for [`WATCH_QUIET`]),
    /// what it showed may be stale, so expiry clocks stop running.
    fn on_watch_error(&mut self, now: Instant, error: &str) {
        self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error, "lease watch error (retrying)");
        self.note_unreachable(now, true, error);
        self.restart_clocks(now);
        self.watch_down = Some(now + WATCH_QUIET);
    }

    /// The watch is back (an event arrived, or no error for [`WATCH_QUIET`]): expiry clocks
    /// restart now, and every lease is looked at again.
    fn on_watch_resync(&mut self, now: Instant) {
        if self.watch_down.take().is_none() {
            return;
        }
        self.restart_clocks(now);
        let all: Vec<String> = self.entries.keys().cloned().collect();
        for n in all {
            self.step(&n, now);
        }
    }

    /// Outages are not expiries: every lease that is not ours is treated as if it had just been
    /// seen to change (`observed_at = now`), so nobody's lease runs out because of an outage this
    /// node saw itself. Our own held leases keep their clock: it is the instant our last
    /// successful write was sent, and moving it would extend our own claim.
    fn restart_clocks(&mut self, now: Instant) {
        let me = self.opts.identity.as_str();
        for e in self.entries.values_mut() {
            if let Some(o) = e.observed.as_mut() {
                let ours = o.confirmed && o.holder() == Some(me);
                if !ours && o.observed_at < now {
                    o.observed_at = now;
                }
            }
        }
    }

    fn shutdown_complete(&self, now: Instant) -> bool {
        let me = self.me();
        let Some(deadline) = &self.shutting_down else {
            return false;
        };
        if now >= *deadline {
            return true;
        }
        self.in_flight == 0
            && self.entries.values().all(|e| {
                e.reported == Reported::NotHeld
                    && e.observed.as_ref().is_none_or(|o| o.holder() != Some(me))
            })
    }
}

async fn run(
    client: kube::Client,
    opts: EngineOptions,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    stats: Arc<EngineStats>,
    held_tx: watch::Sender<BTreeSet<String>>,
) {
    let mut opts = opts;
    if let Err(e) = opts.config.validate() {
        // An unsafe configuration could let two nodes hold a lease: repair it, loudly.
        let c = &mut opts.config;
        c.lease_duration = c.lease_duration.max(Duration::from_secs(1));
        c.retry_period = c
            .retry_period
            .clamp(Duration::from_millis(10), c.lease_duration / 4);
        c.renew_deadline = c
            .renew_deadline
            .clamp(c.retry_period * 2, c.lease_duration * 3 / 4);
        tracing::error!(error = %e, config = ?opts.config, "invalid lease timings; using repaired ones");
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let wcfg = match &opts.scope {
        WatchScope::Labels(sel) => watcher::Config::default().labels(sel),
        WatchScope::Name(n) => watcher::Config::default().fields(&format!("metadata.name={n}")),
    };
    // Reconnect quickly after an outage (≤ 2 s): stale observations cost 409s and late takeovers.
    let backoff = WatchBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
    // The engine keeps the last object of every lease it holds (the base of its renewals);
    // `managedFields` is most of a Lease's size and our PUTs leave it out anyway.
    let mut stream = watcher(api, wcfg)
        .backoff(backoff)
        .modify(|l: &mut Lease| l.metadata.managed_fields = None)
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let writer = LeaseWriter::new(client, &opts.namespace, &opts.identity, opts.config.clone());
    let mut eng = Engine {
        opts,
        writer,
        entries: HashMap::new(),
        timers: BTreeSet::new(),
        initialized: false,
        init_buf: None,
        events,
        done_tx,
        queue_urgent: VecDeque::new(),
        queue_rest: VecDeque::new(),
        in_flight: 0,
        shutting_down: None,
        shutdown_waiters: Vec::new(),
        report: ShutdownReport::default(),
        stats,
        held_tx,
        ranks: HashMap::new(),
        last_seen: HashMap::new(),
        presence: None,
        next_handover: Instant::now(),
        watch_down: None,
        outage: None,
    };
    if eng.opts.presence {
        let name = super::presence_name(&eng.opts.identity);
        eng.presence = Some(name.clone());
        eng.on_desired(BTreeMap::new(), Instant::now());
    }
    let mut cmds_open = true;
    loop {
        let now = Instant::now();
        if eng.shutdown_complete(now) {
            break;
        }
        let next = eng.timers.first().map(|(t, _)| *t);
        let shutdown_deadline = eng.shutting_down;
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = earliest(earliest(next, shutdown_deadline), eng.watch_down);
        tokio::select! {
            Some(d) = done_rx.recv() => eng.on_done(d, Instant::now()),
            cmd = cmds.recv(), if cmds_open => {
                let now = Instant::now();
                match cmd {
                    Some(Cmd::SetDesired(d)) => eng.on_desired(d, now),
                    Some(Cmd::Shutdown(tx)) => start_shutdown(&mut eng, Some(tx), now),
                    None => {
                        cmds_open = false;
                        if eng.shutting_down.is_none() {
                            start_shutdown(&mut eng, None, now);
                        }
                    }
                }
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    let now = Instant::now();
                    eng.note_reachable(now);
                    // Restart the clocks before applying what the watch brings.
                    let resync = eng.watch_down.is_some();
                    if resync {
                        eng.restart_clocks(now);
                    }
                    eng.on_watch(ev, now);
                    if resync {
                        eng.on_watch_resync(now);
                    }
                }
                Some(Err(err)) => eng.on_watch_error(Instant::now(), &err.to_string()),
                None => {
                    tracing::warn!("lease watch ended");
                    break;
                }
            },
            _ = crate::sleep_until_opt(next) => {
                let now = Instant::now();
                if eng.watch_down.is_some_and(|t| t <= now) {
                    eng.on_watch_resync(now);
                }
                let mut due: Vec<String> = Vec::new();
                while let Some((t, _)) = eng.timers.first() {
                    if *t > now {
                        break;
                    }
                    if let Some((_, n)) = eng.timers.pop_first() {
                        if let Some(e) = eng.entries.get_mut(&n) {
                            e.wake = None;
                        }
                        due.push(n);
                    }
                }
                for n in due {
                    eng.step(&n, now);
                }
            }
        }
    }
    // Leases we still hold (could not release in time, or the watch ended): report them lost.
    let presence = eng.presence.clone();
    let still: Vec<String> = eng
        .entries
        .iter()
        .filter(|(n, e)| e.reported != Reported::NotHeld && presence.as_ref() != Some(*n))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &still {
        if let Some(e) = eng.entries.get_mut(n) {
            e.reported = Reported::NotHeld;
        }
        eng.emit(LeaseEvent::Lost {
            name: n.clone(),
            holder: None,
        });
        eng.publish_held(n, false);
    }
    eng.report.not_released = still;
    for tx in eng.shutdown_waiters.drain(..) {
        let _ = tx.send(eng.report.clone());
    }
}

fn start_shutdown(eng: &mut Engine, tx: Option<oneshot::Sender<ShutdownReport>>, now: Instant) {
    if let Some(tx) = tx {
        eng.shutdown_waiters.push(tx);
    }
    if eng.shutting_down.is_none() {
        eng.shutting_down = Some(now + eng.opts.config.renew_deadline);
        let names: Vec<String> = eng.entries.keys().cloned().collect();
        for n in names {
            eng.step(&n, now);
        }
    }
}

/// Exponential watch reconnect backoff (doubling from `min` to `max`), reset on success.
struct WatchBackoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl WatchBackoff {
    fn new(min: Duration, max: Duration) -> Self {
        WatchBackoff { min, max, cur: min }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.cur = self.min;
    }
}

/// The agent's multi-lease engine. See the [module documentation](super) for semantics.
pub struct LeaseSet {
    cmds: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<EngineStats>,
    held: watch::Receiver<BTreeSet<String>>,
}

impl LeaseSet {
    /// Start the engine (spawns its task; needs a tokio runtime). Events arrive on the returned
    /// receiver in order.
    pub fn start(
        client: kube::Client,
        opts: EngineOptions,
    ) -> (LeaseSet, mpsc::UnboundedReceiver<LeaseEvent>) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (held_tx, held_rx) = watch::channel(BTreeSet::new());
        let stats = Arc::new(EngineStats::default());
        let task = tokio::spawn(run(client, opts, cmd_rx, ev_tx, stats.clone(), held_tx));
        (
            LeaseSet {
                cmds: cmd_tx,
                task,
                stats,
                held: held_rx,
            },
            ev_rx,
        )
    }

    /// Replace the set of leases this node wants (name → what). Leases no longer in the set
    /// are released if held.
    pub fn set_desired(&self, desired: BTreeMap<String, Desired>) {
        let _ = self.cmds.send(Cmd::SetDesired(desired));
    }

    /// Names of the leases currently held (including sticky ones), as a watch channel.
    pub fn held(&self) -> watch::Receiver<BTreeSet<String>> {
        self.held.clone()
    }

    /// Write counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Release every held lease (holder cleared, so others take over at once), then stop.
    /// Gives up after the renew deadline if the API server does not answer.
    pub async fn shutdown(self) -> ShutdownReport {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Shutdown(tx));
        let report = rx.await.unwrap_or_default();
        let _ = self.task.await;
        report
    }

    /// Stop at once without releasing anything (as if the process had been killed).
    pub fn abort(self) {
        let LeaseSet { cmds, task, .. } = self;
        task.abort();
        // A closed command channel means "shut down" (release everything), which a killed
        // process never does: keep it open until the task has really stopped (on a
        // multi-threaded runtime it may still be running an iteration on another worker).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = task.await;
                drop(cmds);
            });
        }
    }
}
