//! The election engine: one task, one Lease watch, many leases.
//!
//! The task owns a map lease name → what we want ([`LeaseWant`]), what we observed
//! ([`Observed`]) and the last object seen (for PUTs). It wakes on watch events, write results,
//! commands and timers (renewal due, lease expiry + rank wait, renew deadline) and runs the pure
//! [`decide`]/[`standing`] rules for the lease concerned. Writes run as separate tasks (bounded
//! concurrency) so a slow API server never blocks the timers that end our claim on a lease.
//!
//! Reads: only the watch (one LIST at start or after the watch expired, then WATCH). No GETs.
//! Writes: creates/acquisitions when a lease is free and wanted, one renewal per held lease per
//! retry period, releases, and the deletion of abandoned free leases (see `gc_after`).

mod api;
mod attached;
mod base;
mod driver;
mod outage;
mod takeover;
#[cfg(test)]
mod tests;
mod writes;

pub use api::*;
use driver::run;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
pub use takeover::{Takeover, TakeoverKind, Takeovers};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::client::WriteError;
use super::decide::{
    decide, standing, Action, Intent, LeaseConfig, Observed, Standing, WriteFailure,
};
use super::{
    balanced_assignment, rendezvous_first, rendezvous_rank, rendezvous_score, MAX_RANK_WAIT,
};
use crate::intern::Interner;

/// The write limit never goes below this ([`Engine::adapt_write_limit`]).
pub const MIN_WRITE_LIMIT: usize = 4;

enum Cmd {
    SetWants(BTreeMap<String, LeaseWant>),
    /// The caller stopped answering for the first N `Released` events it received.
    ReleasedApplied(u64),
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
    /// Fence a dead node's presence Lease (a preconditioned release of it, written by another
    /// node) before taking over the address Leases attached to it ([`super::attach`]).
    Fence,
}

/// What the engine's pure core asks its driver to do.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// Send this event to the engine's user.
    Event(LeaseEvent),
    /// The lease is now held (including sticky) or not: update the `held()` watch channel.
    Held { name: String, held: bool },
    /// Send this write; its result comes back through [`Engine::on_done`].
    Write(Box<WriteReq>),
}

/// One Lease write, fully described: the driver only sends it.
#[derive(Clone, Debug)]
pub(crate) struct WriteReq {
    pub name: String,
    pub op: Op,
    /// The resourceVersion precondition (updates carry it inside `object`).
    pub used_rv: Option<String>,
    /// The object an update starts from.
    pub object: Option<Lease>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// An attached address Lease: written with `leaseDurationSeconds` =
    /// [`super::attach::ATTACHED_DURATION_SECONDS`].
    pub attached: bool,
}

/// How long after the last watch error the watch counts as healthy again if no event arrived
/// (the watch backoff tops out at 2 s; a resumed watch on a quiet set shows nothing).
const WATCH_QUIET: Duration = Duration::from_secs(4);
/// A node seen taking an address Lease within this many retry periods is working through a
/// burst: lower-ranked takeovers wait for it ([`Engine::defer_behind_first`]).
const DEFER_BUSY: u32 = 2;
/// Such a wait lasts at most this many lease durations.
const DEFER_MAX: u32 = 3;
/// Unanswered presence renewals remembered (`Engine::presence_unanswered`).
const UNANSWERED_KEPT: usize = 32;

/// An API outage in progress, as this engine saw it.
struct Outage {
    since: Instant,
    failed_writes: u64,
    watch_errors: u64,
}

/// The result of a [`WriteReq`].
pub(crate) struct Done {
    pub name: String,
    pub op: Op,
    /// Local instant the write was sent.
    pub sent_at: Instant,
    /// Wall clock just before the write was built (its `renewTime` is this or a little later):
    /// tells which of our unanswered presence renewals a record seen in the watch came from.
    pub wall_sent: Option<MicroTime>,
    pub used_rv: Option<String>,
    pub result: Result<Option<Lease>, WriteError>,
}

struct Entry {
    desired: Option<LeaseWant>,
    /// The caller's tag from the last [`LeaseWant`] (kept after it stops being wanted).
    tag: Option<Arc<str>>,
    observed: Option<Observed>,
    /// The base of our next write while we hold it (compact: [`base::Base`]).
    object: Option<base::Base>,
    last_failure: Option<WriteFailure>,
    in_flight: bool,
    /// Our last successful write was a release.
    released_by_us: bool,
    /// A release of ours is on its way: reported `Released` before it was sent, and reported
    /// held again if it does not land ([`Engine::released_before_the_write`]).
    releasing: bool,
    reported: Reported,
    wake: Option<Instant>,
    /// Since when we hold it (reported Held).
    held_since: Option<Instant>,
    /// The last holder seen (kept when the lease is released).
    last_holder: Option<Arc<str>>,
    /// We released it to hand it over to its preferred node.
    handover_pending: bool,
    /// Waiting in one of the engine's write queues.
    queued: bool,
    /// The observed record's `ferrolb.io/attached-to` annotation (attached address Leases).
    attached_to: Option<Arc<str>>,
    /// The observed record carries [`super::attach::ANN_READS_ATTACHED`] (presence Leases).
    reads_attached: bool,
    /// The presence Lease under which this address Lease is indexed in `Engine::by_presence`.
    index_key: Option<Arc<str>>,
    /// What the Lease should say (labels, annotations) changed while we hold it: an attached
    /// Lease, which is not renewed, is rewritten once.
    rewrite: bool,
    /// Our load-bounded rank and the preferred node, while the lease is desired (set from the
    /// whole desired set at once: [`Engine::on_desired`]).
    rank: Option<(usize, Option<Arc<str>>)>,
    /// Cached rank for taking over from (holder): rank among candidates without it, and the
    /// node ranked first among them when it is not us. Set for most leases held by another
    /// node (every step of a desired lease computes it), so kept here, not in [`Rare`].
    takeover_rank: Option<(Arc<str>, usize, Option<Arc<str>>)>,
    /// What only a few entries have at a time ([`Rare`]); `None` when all of it is unset.
    rare: Option<Box<Rare>>,
}

/// The fields of an [`Entry`] that are set for few leases at a time — after a refused write, while
/// a takeover waits or a hand-over backs off, for presence Leases — kept out of line: every agent
/// has an entry for every address of the cluster (≈ 120 bytes less each).
#[derive(Default)]
struct Rare {
    /// No write before this (a refused or failed one).
    retry_after: Option<Instant>,
    /// The resourceVersion our last write was refused at (409): wait for the watch to show
    /// the winner.
    conflict_rv: Option<String>,
    /// Reported `Released` (the number of that event) and the release not written yet: it
    /// waits until the caller has applied it ([`EngineOptions::stop_before_release`]).
    awaiting_stop: Option<u64>,
    /// Since when our takeover waits for the node ranked first ([`Engine::defer_behind_first`]);
    /// cleared when the record changes.
    deferred_since: Option<Instant>,
    /// No hand-over before this (a previous one was not taken).
    no_handover_until: Option<Instant>,
    /// Another node's presence Lease: (holder, expired) as last judged; its attached address
    /// Leases are looked at again when this changes.
    presence_state: Option<(Option<String>, bool)>,
}

/// What [`Entry::rare`] reads for an entry with nothing out of line.
static NO_RARE: Rare = Rare {
    retry_after: None,
    conflict_rv: None,
    awaiting_stop: None,
    deferred_since: None,
    no_handover_until: None,
    presence_state: None,
};

impl Rare {
    fn is_empty(&self) -> bool {
        let Rare {
            retry_after,
            conflict_rv,
            awaiting_stop,
            deferred_since,
            no_handover_until,
            presence_state,
        } = self;
        retry_after.is_none()
            && conflict_rv.is_none()
            && awaiting_stop.is_none()
            && deferred_since.is_none()
            && no_handover_until.is_none()
            && presence_state.is_none()
    }
}

impl Entry {
    fn new() -> Self {
        Entry {
            desired: None,
            observed: None,
            object: None,
            last_failure: None,
            in_flight: false,
            released_by_us: false,
            releasing: false,
            reported: Reported::NotHeld,
            wake: None,
            held_since: None,
            last_holder: None,
            handover_pending: false,
            queued: false,
            attached_to: None,
            reads_attached: false,
            tag: None,
            index_key: None,
            rewrite: false,
            rank: None,
            takeover_rank: None,
            rare: None,
        }
    }

    /// The out-of-line fields (all unset when there are none).
    fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// The out-of-line fields, to set one.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Our last write was refused (409) at `rv`, the resourceVersion now observed: the watch
    /// has not shown the winner yet.
    fn refused_at(&self, rv: &Option<String>) -> bool {
        let refused = &self.rare().conflict_rv;
        refused.is_some() && refused == rv
    }

    /// Unsets out-of-line fields with `f` (nothing is allocated for it), and frees them once
    /// none is left set.
    fn clear_rare(&mut self, f: impl FnOnce(&mut Rare)) {
        if let Some(r) = self.rare.as_deref_mut() {
            f(r);
            if r.is_empty() {
                self.rare = None;
            }
        }
    }
}

/// When the unanswered presence renewal that wrote `renew_time` was sent: the last one
/// built before that time (our renewals go out one at a time), else — a clock step, or no
/// time in the record — the oldest unanswered one, which is never later. `None` when none
/// is unanswered.
fn landed_renewal_sent(
    unanswered: &[(Option<MicroTime>, Instant)],
    renew_time: Option<&MicroTime>,
) -> Option<Instant> {
    let oldest = unanswered.first().map(|(_, t)| *t);
    let Some(r) = renew_time else {
        return oldest;
    };
    unanswered
        .iter()
        .filter(|(w, _)| w.as_ref().is_some_and(|w| w.0 <= r.0))
        .max_by_key(|(w, _)| w.as_ref().map(|w| w.0))
        .map(|(_, t)| *t)
        .or(oldest)
}

fn rv_num(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|s| s.parse().ok())
}

/// The engine's pure core: watch events, desired sets, write results and the clock (`now`,
/// always a value) in; [`Effect`]s out (`effects`, drained by the driver). No I/O, no clock of
/// its own: every rule is unit-tested by feeding values in (`engine/tests.rs`).
pub(crate) struct Engine {
    opts: EngineOptions,
    /// Boxed: an entry is large and the table keeps up to twice as many slots as entries.
    entries: HashMap<String, Box<Entry>>,
    /// One copy of each node and presence Lease name the entries refer to (holders, ranks,
    /// attachments): an agent keeps an entry per address of the cluster, naming a few nodes.
    names: Interner,
    pub(crate) timers: BTreeSet<(Instant, String)>,
    initialized: bool,
    init_buf: Option<HashMap<String, Lease>>,
    /// What the driver must do, in order.
    pub(crate) effects: Vec<Effect>,
    /// Leases whose write waits for one of the `max_concurrent_writes` slots: renewals and
    /// releases first (keep what we hold), then creates, acquisitions and deletions. A queued
    /// lease is decided afresh when its turn comes; nothing is built for it before.
    queue_urgent: VecDeque<String>,
    queue_rest: VecDeque<String>,
    in_flight: usize,
    /// Writes allowed in flight now ([`Engine::adapt_write_limit`]).
    pub(crate) write_limit: usize,
    /// When the write limit was last halved.
    limit_cut_at: Option<Instant>,
    /// Deadline of a shutdown in progress.
    pub(crate) shutting_down: Option<Instant>,
    pub(crate) report: ShutdownReport,
    stats: Arc<EngineStats>,
    /// Last local instant each holder was seen renewing/acquiring some lease (liveness).
    last_seen: HashMap<String, Instant>,
    /// Last local instant each other node was seen taking an address Lease (its holder changed
    /// to it): a node working through a burst ([`Engine::defer_behind_first`]).
    last_took: HashMap<String, Instant>,
    /// Name of our presence lease (if `opts.presence`).
    presence: Option<String>,
    /// Earliest next hand-over: one per retry period, and none until a lease duration after the
    /// last disturbance ([`Engine::unsettled`]).
    next_handover: Instant,
    /// The watch failed and has not shown an event since: no expiry-based decisions (takeover,
    /// clearing, deletion) until it does, or until this instant passes without another error.
    pub(crate) watch_down: Option<Instant>,
    /// When the Lease watch last delivered an event (see [`Engine::note_reachable`]).
    watch_heard: Option<Instant>,
    /// The API outage in progress (logged once when it starts and once when it ends).
    outage: Option<Outage>,
    /// When a write of ours or the watch last failed as unreachable (see
    /// [`Engine::server_keeps_up`]).
    last_unreachable: Option<Instant>,
    /// Writes of our presence Lease not answered with success since the last one that was
    /// (wall clock before it was built, local instant it was sent), oldest first, at most
    /// [`UNANSWERED_KEPT`]: one that timed out at the client may still land, and seen in the
    /// watch, it counts from when it was sent ([`landed_renewal_sent`]).
    presence_unanswered: Vec<(Option<MicroTime>, Instant)>,
    /// Address Leases attached to a presence Lease (agents): presence name → address Leases
    /// whose record names that presence's node as holder. A presence change looks at these
    /// only; no address Lease held by a live node has a timer of its own.
    by_presence: HashMap<Arc<str>, BTreeSet<String>>,
    /// Our presence standing as last computed (attached mode).
    my_standing: Standing,
    /// The caller has said what it wants at least once ([`LeaseSet::set_desired`]). Until
    /// then a Lease we hold is not "unwanted": a restarted agent whose caches are still syncing
    /// must not release (or collect) what it held before the restart.
    desired_known: bool,
    /// Address Leases a graceful stop leaves to the release of our presence Lease
    /// ([`Engine::leave_to_presence`]): not written.
    left_to_presence: std::collections::HashSet<String>,
    /// `Released` events emitted so far.
    released_emitted: u64,
    /// Releases waiting for the caller to stop answering: (number of their `Released` event,
    /// lease), in order ([`Engine::on_released_applied`]).
    awaiting_stop: VecDeque<(u64, String)>,
}

impl Engine {
    /// A new core (the presence Lease, if any, is desired from the start).
    pub(crate) fn new(opts: EngineOptions, stats: Arc<EngineStats>, now: Instant) -> Engine {
        let presence = opts
            .presence
            .then(|| crate::lease::presence_name(&opts.identity));
        let write_limit = opts.max_concurrent_writes.max(1);
        let mut eng = Engine {
            opts,
            entries: HashMap::new(),
            names: Interner::default(),
            timers: BTreeSet::new(),
            initialized: false,
            init_buf: None,
            effects: Vec::new(),
            queue_urgent: VecDeque::new(),
            queue_rest: VecDeque::new(),
            in_flight: 0,
            write_limit,
            limit_cut_at: None,
            shutting_down: None,
            report: ShutdownReport::default(),
            stats,
            last_seen: HashMap::new(),
            last_took: HashMap::new(),
            presence_unanswered: Vec::new(),
            presence,
            next_handover: now,
            watch_down: None,
            watch_heard: None,
            outage: None,
            last_unreachable: None,
            by_presence: HashMap::new(),
            my_standing: Standing::NotHolder,
            desired_known: false,
            left_to_presence: Default::default(),
            released_emitted: 0,
            awaiting_stop: VecDeque::new(),
        };
        if eng.presence.is_some() {
            eng.on_desired(BTreeMap::new(), now);
            // Only the presence Lease is known to be wanted; the rest waits for the caller.
            eng.desired_known = false;
        }
        eng
    }

    fn me(&self) -> &str {
        &self.opts.identity
    }

    /// Address Leases are attached to presence Leases (the agent's engine).
    fn attached_mode(&self) -> bool {
        self.presence.is_some()
    }

    /// Timers due at `now`: looks at each lease concerned again.
    pub(crate) fn on_timers(&mut self, now: Instant) {
        if self.watch_down.is_some_and(|t| t <= now) {
            self.on_watch_resync(now);
        }
        let mut due: Vec<String> = Vec::new();
        while let Some((t, _)) = self.timers.first() {
            if *t > now {
                break;
            }
            if let Some((_, n)) = self.timers.pop_first() {
                if let Some(e) = self.entries.get_mut(&n) {
                    e.wake = None;
                }
                due.push(n);
            }
        }
        for n in due {
            self.step(&n, now);
        }
    }

    /// The next instant the core wants to be woken at (timers, shutdown deadline, watch quiet).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(t, _)| *t),
            self.shutting_down,
            self.watch_down,
        ]
        .into_iter()
        .flatten()
        .min()
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
        if matches!(ev, LeaseEvent::Released { .. }) {
            self.released_emitted += 1;
        }
        self.effects.push(Effect::Event(ev));
    }

    fn publish_held(&mut self, name: &str, held: bool) {
        if self.presence.as_deref() == Some(name) {
            return;
        }
        self.effects.push(Effect::Held {
            name: name.to_string(),
            held,
        });
    }

    /// Record an observation of `name` (None: absent), unless it is older than what we know.
    fn observe(&mut self, name: &str, lease: Option<&Lease>, now: Instant) {
        let me = self.opts.identity.clone();
        let own_presence = self.presence.as_deref() == Some(name);
        let e = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| Box::new(Entry::new()));
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
        let mut next = Observed::next(e.observed.as_ref(), lease, now);
        if own_presence && next.observed_at == now && next.holder() == Some(me.as_str()) {
            // A renewal of ours that we saw fail (timed out at the client) landed after all:
            // it counts from when it was sent, not from when the watch shows it.
            let renewed = next.record.as_ref().and_then(|r| r.renew_time.as_ref());
            if let Some(sent) = landed_renewal_sent(&self.presence_unanswered, renewed) {
                next.observed_at = next.observed_at.min(sent);
            }
        }
        let prev_holder = e.observed.as_ref().and_then(|o| o.holder());
        let took = next
            .holder()
            .filter(|h| *h != me && prev_holder != Some(*h));
        if took.is_some() || next.record != e.observed.as_ref().and_then(|o| o.record.clone()) {
            e.clear_rare(|r| r.deferred_since = None);
        }
        if let Some(h) = took.filter(|_| !is_presence_name(name)) {
            self.last_took.insert(h.to_string(), now);
        }
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
            e.last_holder = Some(self.names.intern(h));
        }
        if next.record != e.observed.as_ref().and_then(|o| o.record.clone()) {
            // The record moved on: a failure of an older write says nothing about it.
            if e.last_failure == Some(WriteFailure::Conflict) && !is_presence_name(name) {
                // Our create of an address Lease lost a race (409) and waits "for the watch to
                // show it, a lease duration at the latest": here it is. Without this, a node
                // that lost the first create race could not take the Lease for a lease
                // duration, even once its holder released it (a flaky test against a real
                // kube-apiserver: 60 s leases, a graceful release not taken within 20 s).
                e.clear_rare(|r| r.retry_after = None);
            }
            if next.holder() != Some(me.as_str()) {
                e.last_failure = None;
            }
        }
        if e.rare().conflict_rv.is_some()
            && !e.refused_at(&next.resource_version)
            && !is_presence_name(name)
        {
            // Our write of an address Lease lost a race (409) and the watch now shows what won:
            // decide on that at once rather than a retry period later (e.g. the release that
            // beat our takeover). Presence Leases keep the retry period after a refusal.
            e.clear_rare(|r| {
                r.conflict_rv = None;
                r.retry_after = None;
            });
        }
        // The object is the base of our writes: keep it only for leases this node holds, and
        // compactly ([`base::Base`]: uid, labels and annotations; the rest is the observation).
        // An agent watches every address lease of the cluster and holds a share of them; copies
        // of the others cost ≈ 2.8 KiB each (19 MB per agent with 10k addresses on 3 nodes). A
        // takeover writes from a base rebuilt from the observation (`write_base`); a delete
        // needs only the resourceVersion.
        let keep = next.holder() == Some(me.as_str());
        e.observed = Some(next);
        e.object = if keep {
            lease.map(base::Base::of)
        } else {
            None
        };
        e.attached_to = lease.and_then(|l| attached_to_of(&mut self.names, l));
        e.reads_attached = lease.is_some_and(reads_attached);
        self.reindex(name);
    }

    /// The object a PUT of `name` starts from: the last one seen while we hold it, or — for a
    /// takeover — one rebuilt from the observation (name, resourceVersion, the record), with our
    /// labels and annotations merged over it by the writer. So a takeover does not carry over
    /// metadata that someone else added to a ferrolb lease (its own keys are rewritten anyway).
    fn write_base(&self, name: &str) -> Option<Lease> {
        let e = self.entries.get(name)?;
        if let Some(o) = &e.object {
            let obs = e.observed.as_ref();
            return Some(o.to_lease(
                name,
                &self.opts.namespace,
                obs.and_then(|o| o.resource_version.as_deref()),
                obs.and_then(|o| o.record.as_ref()),
            ));
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

    /// Notes how we are taking `name` over (read by the caller on `Acquired`).
    fn note_takeover(&self, name: &str, obs: &Observed, transitions: i32) {
        let me = self.me();
        let (kind, from) = match (obs.record.as_ref(), obs.holder()) {
            (None, _) => (TakeoverKind::Created, None),
            (Some(_), Some(h)) => (TakeoverKind::Expired, Some(h.to_string())),
            (Some(_), None) => {
                let last = self.entries.get(name).and_then(|e| e.last_holder.clone());
                (TakeoverKind::Released, last.as_deref().map(String::from))
            }
        };
        // An attached address Lease is never renewed: its record was last written when its
        // holder took it (maybe hours ago). It stopped being served when the holder's presence
        // Lease stopped being renewed: the last renewal of anything by that holder we saw.
        let attached = self
            .entries
            .get(name)
            .is_some_and(|e| e.attached_to.is_some());
        let free_since = match (kind, from.as_deref()) {
            (TakeoverKind::Expired, Some(h)) if attached => self
                .last_seen
                .get(h)
                .map_or(obs.observed_at, |t| (*t).max(obs.observed_at)),
            _ => obs.observed_at,
        };
        let from = from.filter(|h| h != me);
        self.stats.takeovers.note(
            name,
            Takeover {
                kind,
                from,
                free_since,
                transitions,
            },
        );
    }

    fn rank_delay(&mut self, name: &str, desired: &LeaseWant, obs: &Observed) -> Duration {
        if desired.candidates.is_empty() {
            return Duration::ZERO;
        }
        let (rank, _) = self.rank_and_first(name, desired, obs);
        self.opts.config.rank_step * rank.min(MAX_RANK_WAIT) as u32
    }

    /// Our rank for taking `name` and the node ranked first when it is not us (rank 0: `None`).
    /// Absent or released: the load-bounded assignment decides who goes first — unless the
    /// preferred node is the one that just released it (it is shutting down or no longer
    /// eligible): then the others go in rendezvous order without it. Held by another (expired)
    /// node: rank among the others (it is presumably dead), cached per holder (this runs on
    /// every renewal we observe).
    fn rank_and_first(
        &mut self,
        name: &str,
        desired: &LeaseWant,
        obs: &Observed,
    ) -> (usize, Option<String>) {
        let me = self.opts.identity.clone();
        let without = |skip: &str| -> Vec<String> {
            desired
                .candidates
                .iter()
                .filter(|n| n.as_str() != skip)
                .cloned()
                .collect()
        };
        let ranked = |nodes: &[String]| -> (usize, Option<String>) {
            let r = rendezvous_rank(name, &me, nodes);
            let first = rendezvous_first(name, nodes).filter(|f| *f != me);
            (r, first.map(str::to_string))
        };
        let holder = obs.holder().filter(|h| *h != me);
        let Some(holder) = holder else {
            let e = self.entries.get(name);
            let last = e.and_then(|e| e.last_holder.clone());
            return match e.and_then(|e| e.rank.as_ref()) {
                Some((_, Some(pref)))
                    if obs.record.is_some() && last.as_deref() == Some(&**pref) =>
                {
                    ranked(&without(pref))
                }
                Some((r, pref)) => (*r, pref.as_deref().filter(|p| *p != me).map(String::from)),
                None => ranked(&desired.candidates),
            };
        };
        if let Some(e) = self.entries.get(name) {
            if let Some((h, r, first)) = &e.takeover_rank {
                if **h == *holder {
                    return (*r, first.as_deref().map(String::from));
                }
            }
        }
        let (rank, first) = ranked(&without(holder));
        let cached = (
            self.names.intern(holder),
            rank,
            first.as_deref().map(|f| self.names.intern(f)),
        );
        if let Some(e) = self.entries.get_mut(name) {
            e.takeover_rank = Some(cached);
        }
        (rank, first)
    }

    /// A takeover by a node not ranked first waits, past its rank wait, while the node ranked
    /// first is seen taking other addresses ([`Engine::last_took`]): that node is working
    /// through a burst (a node's addresses freed at once, a cluster's Services created at once)
    /// and takes this one when its queue gets there. Rank waits alone (100 ms apart) are far
    /// shorter than such a queue: at 10,000 addresses most takeovers of the second-ranked node
    /// raced the first-ranked one's (a 409 for one of them), and most first acquisitions went
    /// to a node the assignment did not prefer (then moved by hand-overs, minutes at 10k).
    /// Waits until the first node has taken nothing for [`DEFER_BUSY`] retry periods, and at
    /// most [`DEFER_MAX`] lease durations from the first wait (a first node that keeps busy
    /// but does not take this one, e.g. it sees other candidates for a moment, delays it by
    /// that much at most). `None`: go now.
    fn defer_behind_first(
        &mut self,
        name: &str,
        desired: &LeaseWant,
        obs: &Observed,
        now: Instant,
    ) -> Option<Instant> {
        if desired.candidates.is_empty() {
            return None;
        }
        let (rank, first) = self.rank_and_first(name, desired, obs);
        let first = first.filter(|_| rank > 0)?;
        let busy_until = *self.last_took.get(&first)? + self.opts.config.retry_period * DEFER_BUSY;
        let cap = self.opts.config.lease_duration * DEFER_MAX;
        let e = self.entries.get_mut(name)?;
        if now >= busy_until {
            return None;
        }
        let first_wait = e.rare().deferred_since.is_none();
        let until = (*e.rare_mut().deferred_since.get_or_insert(now) + cap).min(busy_until);
        if now >= until {
            return None;
        }
        if first_wait {
            self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        }
        Some(until)
    }

    pub(crate) fn step(&mut self, name: &str, now: Instant) {
        // Another node's presence Lease: wake at its expiry (its attached addresses' timer).
        let mut presence_expiry = None;
        if self.attached_mode() && self.presence.as_deref() != Some(name) {
            if is_presence_name(name) {
                presence_expiry = self.step_other_presence(name, now);
            } else {
                self.step_address(name, now);
                return;
            }
        }
        let cfg = self.opts.config.clone();
        let me = self.opts.identity.clone();
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
        if let Some(t) = presence_expiry {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        self.report_standing(name, st, now);
        if self.presence.as_deref() == Some(name) {
            self.after_my_presence(now);
        }

        // 2. The next write, if any.
        let Some((obs, desired, intent)) = self.write_preamble(name, wake, now) else {
            return;
        };
        if self.presence_release_waits(name, now) {
            let at = self.presence_release_latest();
            self.set_wake(name, at.map(|t| wake.map_or(t, |w| w.min(t))).or(wake));
            return;
        }
        let action = decide(&me, Some(&obs), now, &cfg, intent);
        self.act(name, action, &obs, desired, wake, now);
    }

    /// Records this node's standing on `name` and reports a change (event, held set).
    fn report_standing(&mut self, name: &str, st: Standing, now: Instant) {
        let me = self.opts.identity.clone();
        let shutting_down = self.shutting_down.is_some();
        let left = self.left_to_presence.contains(name);
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        let new_rep = match st {
            // We said it is released; the write's answer decides what comes next.
            _ if e.releasing => Reported::NotHeld,
            // Left to our presence release at a graceful stop.
            _ if left => Reported::NotHeld,
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
                e.rare_mut().no_handover_until = Some(now + back_off);
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
        let tag = e.tag.clone();
        let owned = name.to_string();
        let ev = match (old_rep, new_rep) {
            (a, b) if a == b => None,
            (_, Reported::Held) => Some(LeaseEvent::Acquired { name: owned, tag }),
            (_, Reported::Sticky) => Some(LeaseEvent::Unreachable { name: owned, tag }),
            (_, Reported::NotHeld) if released_by_us => {
                Some(LeaseEvent::Released { name: owned, tag })
            }
            (_, Reported::NotHeld) => Some(LeaseEvent::Lost {
                name: owned,
                tag,
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
    }

    /// A release of an address Lease we hold is being sent (a hand-over, a lease no longer
    /// wanted): the caller hears `Released` now and stops answering before the write, so that
    /// no node can take the address while we still answer it — at most one answerer, also
    /// while our write's answer is on its way. A release that does not land is reported held
    /// again ([`Engine::release_did_not_land`]). Not for our presence Lease, and not at
    /// shutdown (the agent stops answering everything first, and the shutdown report counts
    /// releases by their answers).
    /// Returns whether it reported one now.
    pub(super) fn released_before_the_write(&mut self, name: &str) -> bool {
        if self.shutting_down.is_some() || self.presence.as_deref() == Some(name) {
            return false;
        }
        let Some(e) = self.entries.get_mut(name) else {
            return false;
        };
        if e.reported != Reported::Held {
            return false;
        }
        e.releasing = true;
        self.report_released(name);
        true
    }

    /// Reports `name` released before any answer says so (the write is on its way, or our
    /// presence release frees it): `Released` to the caller, out of the held set.
    pub(super) fn report_released(&mut self, name: &str) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.reported = Reported::NotHeld;
        e.held_since = None;
        let ev = LeaseEvent::Released {
            name: name.to_string(),
            tag: e.tag.clone(),
        };
        self.emit(ev);
        self.publish_held(name, false);
    }

    /// Whether a release of `name` waits for the caller to stop answering
    /// ([`EngineOptions::stop_before_release`]): reported `Released` now, or earlier and not yet
    /// acknowledged. Never at shutdown.
    pub(super) fn release_waits_for_stop(&mut self, name: &str) -> bool {
        if !self.opts.stop_before_release || self.shutting_down.is_some() {
            return false;
        }
        if self
            .entries
            .get(name)
            .is_some_and(|e| e.rare().awaiting_stop.is_some())
        {
            return true;
        }
        if !self.released_before_the_write(name) {
            return false;
        }
        let n = self.released_emitted;
        if let Some(e) = self.entries.get_mut(name) {
            e.rare_mut().awaiting_stop = Some(n);
        }
        self.awaiting_stop.push_back((n, name.to_string()));
        true
    }

    /// The caller has applied the first `applied` `Released` events (it no longer answers
    /// for them): their releases go out.
    pub(crate) fn on_released_applied(&mut self, applied: u64, now: Instant) {
        while self
            .awaiting_stop
            .front()
            .is_some_and(|(n, _)| *n <= applied)
        {
            let Some((n, name)) = self.awaiting_stop.pop_front() else {
                break;
            };
            // A later `Released` of the same lease waits for its own acknowledgement.
            let due = self
                .entries
                .get_mut(&name)
                .filter(|e| e.rare().awaiting_stop == Some(n))
                .map(|e| e.clear_rare(|r| r.awaiting_stop = None))
                .is_some();
            if due {
                self.step(&name, now);
            }
        }
    }

    /// The answer to a release sent after [`Engine::released_before_the_write`] was no
    /// success: by our record we still hold the Lease, so it is reported held again (the
    /// caller answers again; the next look judges our standing: sticky through an outage,
    /// lost if another holder shows).
    pub(super) fn release_did_not_land(&mut self, name: &str, now: Instant) {
        let Some(e) = self.entries.get(name) else {
            return;
        };
        let held = e
            .observed
            .as_ref()
            .and_then(|o| o.holder())
            .is_some_and(|h| h == self.opts.identity);
        if held {
            self.report_standing(name, Standing::Holder, now);
        }
    }

    /// Before any write for `name`: nothing while a write is in flight, a retry is not due yet,
    /// nothing is known, or our last write with the observed resourceVersion was refused (wait
    /// for the watch to show the winner); otherwise the observation, what we want, and the
    /// intent (with the rank wait, and hand-overs for rebalancing).
    fn write_preamble(
        &mut self,
        name: &str,
        wake: Option<Instant>,
        now: Instant,
    ) -> Option<(Observed, Option<LeaseWant>, Intent)> {
        let cfg = self.opts.config.clone();
        let shutting_down = self.shutting_down.is_some();
        let e = self.entries.get_mut(name)?;
        if e.in_flight {
            self.set_wake(name, wake);
            return None;
        }
        if let Some(t) = e.rare().retry_after {
            if now < t {
                let w = Some(wake.map_or(t, |w| w.min(t)));
                self.set_wake(name, w);
                return None;
            }
            e.clear_rare(|r| r.retry_after = None);
        }
        let Some(obs) = e.observed.clone() else {
            self.set_wake(name, wake);
            return None;
        };
        if e.refused_at(&obs.resource_version) {
            // Our write with this RV was refused: wait for the watch to show the winner.
            self.set_wake(name, wake);
            return None;
        }
        let desired = e.desired.clone();
        // Reported released, the write waiting for the caller to stop answering (or queued):
        // it is carried out whatever is wanted now; wanted again, it is taken again after.
        let committed = e.releasing;
        if desired.is_none() && !shutting_down && !self.desired_known {
            // Not told yet what is wanted: no release, clear or deletion on a guess.
            self.set_wake(name, wake);
            return None;
        }
        let mut intent = match (&desired, shutting_down) {
            _ if committed => Intent::Release,
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
        Some((obs, desired, intent))
    }

    /// Carries out `action` for `name` (a write, a timer, or garbage collection when idle).
    fn act(
        &mut self,
        name: &str,
        mut action: Action,
        obs: &Observed,
        desired: Option<LeaseWant>,
        wake: Option<Instant>,
        now: Instant,
    ) {
        let obs = obs.clone();
        let min = |a: Option<Instant>, b: Instant| Some(a.map_or(b, |a| a.min(b)));
        if self.watch_down.is_some() && matches!(action, Action::Create | Action::Acquire { .. }) {
            // The watch failed and has not shown the current state since: taking a lease now
            // could rest on a stale view. The resync looks at every lease again.
            action = Action::WaitUntil(now + WATCH_QUIET);
        }
        match action {
            Action::Create => {
                if let Some(d) = desired {
                    self.note_takeover(name, &obs, 0);
                    self.spawn(name, Op::Create, None, d);
                }
            }
            Action::Acquire { transitions } => {
                if obs.holder().is_some_and(|h| h != self.me()) {
                    // Taken from an expired holder: a failover is under way.
                    self.unsettled(now);
                }
                self.note_takeover(name, &obs, transitions);
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
                        self.spawn(name, op, obs.resource_version.clone(), LeaseWant::default())
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
    /// Something disturbed the cluster now (an API outage ended, a dead node was fenced, a lease
    /// was taken from an expired holder): no hand-over for a lease duration, so rebalancing does
    /// not add writes to a burst of takeovers or renewals catching up.
    pub(super) fn unsettled(&mut self, now: Instant) {
        let calm = now + self.opts.config.lease_duration;
        self.next_handover = self.next_handover.max(calm);
    }

    fn should_hand_over(&self, name: &str, now: Instant) -> bool {
        let Some(after) = self.opts.rebalance_after else {
            return false;
        };
        if now < self.next_handover || self.presence.as_deref() == Some(name) {
            return false;
        }
        // Rebalancing waits for calm: not during an API outage nor while writes wait for a slot
        // (a takeover burst), whose own writes come first and which a hand-over would only
        // lengthen (a release and an acquisition more per address, on a server already behind).
        if self.outage.is_some() || !self.queue_urgent.is_empty() || !self.queue_rest.is_empty() {
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
        if e.rare().no_handover_until.is_some_and(|t| now < t) {
            return false;
        }
        let Some((rank, Some(preferred))) = &e.rank else {
            return false;
        };
        if *rank == 0 || &**preferred == self.me() {
            return false;
        }
        // Only to a node that shows signs of life (it renewed something, e.g. its presence
        // lease, within one lease duration).
        self.last_seen
            .get(&**preferred)
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
        let free_since = match self.attached_free_since(name, obs) {
            Some(Some(t)) => t,
            // Attached to a live (or not yet fenced) holder's presence: not garbage.
            Some(None) => return None,
            None => obs.free_since(cfg),
        };
        // Spread deletions over a second so one node usually deletes and the rest see it.
        let jitter = Duration::from_millis(rendezvous_score(name, self.me()) % 1000);
        let op = if obs.holder().is_some() {
            Op::Update(OpKind::Clear)
        } else {
            Op::Delete
        };
        Some((free_since + after + jitter, op))
    }

    pub(crate) fn on_watch(&mut self, ev: watcher::Event<Lease>, now: Instant) {
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
                    self.after_shutdown_progress(&n, now);
                }
            }
            watcher::Event::Delete(l) => {
                if let Some(n) = l.metadata.name.clone() {
                    self.observe(&n, None, now);
                    self.step(&n, now);
                    self.after_shutdown_progress(&n, now);
                }
            }
        }
    }

    pub(crate) fn on_desired(&mut self, desired: BTreeMap<String, LeaseWant>, now: Instant) {
        // The first word from the caller: Leases left alone until now are looked at again.
        let first = !self.desired_known;
        self.desired_known = true;
        let assigned = balanced_assignment(
            &self.opts.identity,
            desired
                .iter()
                .map(|(n, d)| (n.as_str(), d.candidates.as_slice())),
        );
        // The preferred nodes are a few names shared by all leases: the engine's interner.
        let ranks: Vec<(usize, Option<Arc<str>>)> = assigned
            .into_iter()
            .map(|(rank, preferred)| (rank, preferred.map(|p| self.names.intern(p))))
            .collect();
        let mut ranks = ranks.into_iter();
        let mut desired = desired;
        // Our presence Lease joins the desired set here, without a rank (unless the caller
        // named it, then with the caller's).
        let unranked = self
            .presence
            .clone()
            .filter(|p| !desired.contains_key(p.as_str()));
        if let Some(p) = &self.presence {
            desired.insert(
                p.clone(),
                LeaseWant {
                    meta: LeaseMeta::Pairs {
                        labels: vec![(super::LABEL_ROLE.into(), super::ROLE_PRESENCE.to_string())],
                        annotations: vec![
                            (super::ANN_NODE.into(), self.opts.identity.clone()),
                            (super::attach::ANN_READS_ATTACHED.into(), "true".into()),
                        ],
                    },
                    candidates: Arc::default(),
                    tag: None,
                },
            );
        }
        let mut touched: Vec<String> = Vec::new();
        for (n, e) in self.entries.iter_mut() {
            if desired.contains_key(n) {
                continue;
            }
            e.rank = None;
            if e.desired.is_some() {
                e.desired = None;
                touched.push(n.clone());
            } else if first {
                touched.push(n.clone());
            }
        }
        for (n, d) in desired {
            let rank = if unranked.as_ref() == Some(&n) {
                None
            } else {
                ranks.next()
            };
            let initialized = self.initialized;
            let e = self
                .entries
                .entry(n.clone())
                .or_insert_with(|| Box::new(Entry::new()));
            if e.observed.is_none() && initialized {
                // The watch is synced and has not shown it: it does not exist.
                e.observed = Some(Observed::absent(now));
            }
            e.rank = rank;
            if e.desired.as_ref() != Some(&d) {
                e.rewrite = e.desired.as_ref().is_some_and(|old| old.meta != d.meta);
                e.takeover_rank = None;
                e.tag.clone_from(&d.tag);
                e.desired = Some(d);
                touched.push(n);
            }
        }
        for n in touched {
            self.step(&n, now);
        }
    }

    pub(crate) fn shutdown_complete(&self, now: Instant) -> bool {
        let me = self.me();
        let Some(deadline) = &self.shutting_down else {
            return false;
        };
        if now >= *deadline {
            return true;
        }
        // A Lease left to our presence release is done when that is (the presence entry).
        self.in_flight == 0
            && self.entries.iter().all(|(n, e)| {
                e.reported == Reported::NotHeld
                    && (self.left_to_presence.contains(n)
                        || e.observed.as_ref().is_none_or(|o| o.holder() != Some(me)))
            })
    }
}

impl Engine {
    /// Begin releasing everything (deadline: one renew deadline from now).
    pub(crate) fn start_shutdown(&mut self, now: Instant) {
        if self.shutting_down.is_none() {
            self.shutting_down = Some(now + self.opts.config.renew_deadline);
            self.leave_to_presence(now);
            let names: Vec<String> = self.entries.keys().cloned().collect();
            for n in names {
                self.step(&n, now);
            }
        }
    }

    /// The engine stops: leases still held (not released in time, or the watch ended) are
    /// reported lost. Returns the shutdown report.
    pub(crate) fn finish(&mut self) -> ShutdownReport {
        let presence = self.presence.clone();
        let mut still: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, e)| e.reported != Reported::NotHeld && presence.as_ref() != Some(*n))
            .map(|(n, _)| n.clone())
            .collect();
        still.sort();
        // Left to our presence release: released if that landed.
        let me = self.opts.identity.clone();
        let presence_released = presence
            .as_ref()
            .and_then(|p| self.entries.get(p))
            .and_then(|e| e.observed.as_ref())
            .is_none_or(|o| o.holder() != Some(me.as_str()));
        let mut left: Vec<String> = self.left_to_presence.iter().cloned().collect();
        left.sort();
        if presence_released {
            self.report.released.extend(left);
        } else {
            still.extend(left);
        }
        for n in &still {
            let mut tag = None;
            if let Some(e) = self.entries.get_mut(n) {
                e.reported = Reported::NotHeld;
                tag = e.tag.clone();
            }
            self.emit(LeaseEvent::Lost {
                name: n.clone(),
                tag,
                holder: None,
            });
            self.publish_held(n, false);
        }
        self.report.not_released = still;
        self.report.clone()
    }
}

/// Is `name` a presence Lease (`ferrolb-node-…`)? Address Lease names are `ferrolb-` + hex
/// digits, so they never start like this.
pub(crate) fn is_presence_name(name: &str) -> bool {
    name.starts_with("ferrolb-node-")
}

/// A presence Lease says its agent reads attached address Leases
/// ([`super::attach::ANN_READS_ATTACHED`]).
fn reads_attached(l: &Lease) -> bool {
    l.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::attach::ANN_READS_ATTACHED))
        .is_some_and(|v| v == "true")
}

/// The [`super::attach::ANN_ATTACHED_TO`] annotation of a Lease.
fn attached_to_of(names: &mut Interner, l: &Lease) -> Option<Arc<str>> {
    let p = l
        .metadata
        .annotations
        .as_ref()?
        .get(super::attach::ANN_ATTACHED_TO)?;
    Some(names.intern(p))
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
    pub fn set_desired(&self, desired: BTreeMap<String, LeaseWant>) {
        let _ = self.cmds.send(Cmd::SetWants(desired));
    }

    /// The caller stopped answering for the first `applied` [`LeaseEvent::Released`] events it
    /// received (a count over the engine's life): with [`EngineOptions::stop_before_release`]
    /// their release writes go out now.
    pub fn released_applied(&self, applied: u64) {
        let _ = self.cmds.send(Cmd::ReleasedApplied(applied));
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
