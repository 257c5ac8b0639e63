//! What the engine's users see: what they want per lease, the events they get, the options and
//! counters of an engine, a shutdown's report.

use super::*;

/// What the caller wants for one lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseWant {
    /// What the Lease says about itself (labels and annotations), built only when the Lease is
    /// written: an agent keeps one `LeaseWant` per address of the cluster, and most are never
    /// written by it.
    pub meta: LeaseMeta,
    /// Nodes eligible for this lease, including this one. Used for the rendezvous rank (this
    /// node waits `min(rank, MAX_RANK_WAIT) × rank_step` before taking a free lease).
    /// Empty: no wait. Shared: many addresses have the same list.
    pub candidates: Arc<Vec<String>>,
    /// The caller's own name for what this lease stands for (the agent: its group key),
    /// echoed in every [`LeaseEvent`] of this lease, so the caller needs no map back from lease
    /// names. The last one given is kept after the lease stops being wanted.
    pub tag: Option<Arc<str>>,
}

/// A Lease's labels and annotations, as wanted. Merged over the object's own on create and on
/// every write by the holder; a key given twice: the last one wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseMeta {
    /// Given as they are (a presence Lease, the controllers' leader Lease).
    Pairs {
        labels: crate::lease::Pairs,
        annotations: crate::lease::Pairs,
    },
    /// An address Lease: [`crate::lease::describe`]d from its address set (the canonical key)
    /// and the Services it serves, `(namespace, name)`, when it is written. Shared strings: the
    /// agent's groups hold the same ones.
    Serves {
        key: Arc<str>,
        services: Box<[(Arc<str>, Arc<str>)]>,
    },
}

impl Default for LeaseMeta {
    fn default() -> Self {
        LeaseMeta::Pairs {
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

impl LeaseMeta {
    /// Labels and annotations to write.
    pub fn pairs(&self) -> (crate::lease::Pairs, crate::lease::Pairs) {
        match self {
            LeaseMeta::Pairs {
                labels,
                annotations,
            } => (labels.clone(), annotations.clone()),
            LeaseMeta::Serves { key, services } => {
                let services: Vec<String> = services
                    .iter()
                    .map(|(ns, name)| format!("{ns}/{name}"))
                    .collect();
                crate::lease::describe(key, &services)
            }
        }
    }
}

/// A change of this node's standing on one lease. `tag` is the caller's [`LeaseWant::tag`]
/// (`None` for a lease it never named, e.g. one found held after a restart before it said what
/// it wants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// We hold the lease (after a successful create/acquire/renew): announce.
    Acquired { name: String, tag: Option<Arc<str>> },
    /// We no longer hold it: another holder was seen, a write was refused (409/403...), or the
    /// renew deadline passed without an API outage to explain it. Stop announcing at once.
    Lost {
        name: String,
        tag: Option<Arc<str>>,
        /// The holder now recorded, when known.
        holder: Option<String>,
    },
    /// We held it, but renewals failed because the API server is unreachable and the renew
    /// deadline has passed: the lease may have expired for others. Sticky mode keeps
    /// announcing until another node's gratuitous ARP/NA is seen; strict mode stops now.
    /// Followed by `Acquired` (renewal got through again) or `Lost`.
    Unreachable { name: String, tag: Option<Arc<str>> },
    /// We released it (no longer wanted, or shutdown). Stop announcing.
    Released { name: String, tag: Option<Arc<str>> },
}

impl LeaseEvent {
    pub fn name(&self) -> &str {
        match self {
            LeaseEvent::Acquired { name, .. }
            | LeaseEvent::Lost { name, .. }
            | LeaseEvent::Unreachable { name, .. }
            | LeaseEvent::Released { name, .. } => name,
        }
    }

    /// The caller's tag of the lease ([`LeaseWant::tag`]).
    pub fn tag(&self) -> Option<&str> {
        match self {
            LeaseEvent::Acquired { tag, .. }
            | LeaseEvent::Lost { tag, .. }
            | LeaseEvent::Unreachable { tag, .. }
            | LeaseEvent::Released { tag, .. } => tag.as_deref(),
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
    /// A release we decide on while running (a hand-over, a lease no longer wanted) is written
    /// only once the caller said it stopped answering for it ([`LeaseSet::released_applied`]):
    /// `Released` is emitted first, the write waits. Telling the caller before the write is not
    /// enough: the new holder can see the release and announce within one watch round trip,
    /// less than the caller may need to get to the event (measured in the lab: a hand-over's
    /// new holder probed 6 ms after the release and was answered by the old holder). Not at
    /// shutdown (the caller stops answering everything first). The agent sets it; a caller
    /// that never acknowledges must not.
    pub stop_before_release: bool,
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
            scope: WatchScope::Labels(crate::lease::MANAGED_BY_SELECTOR.to_string()),
            base_labels: BTreeMap::from([(
                crate::lease::MANAGED_BY_LABEL.to_string(),
                crate::lease::MANAGED_BY_VALUE.to_string(),
            )]),
            gc_after: Some(gc),
            max_concurrent_writes: 64,
            presence: true,
            rebalance_after: Some((config.lease_duration * 6).max(Duration::from_secs(30))),
            stop_before_release: false,
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
            stop_before_release: false,
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
    /// Takeovers that waited for the node ranked first while it took other addresses
    /// (`Engine::defer_behind_first`), counted once per wait.
    pub deferred: AtomicU64,
    /// Unwanted leases whose holder expired, cleared (holder removed) so they can be deleted.
    pub clears: AtomicU64,
    /// API outages seen (a write or the watch failing as unreachable after a success).
    pub outages: AtomicU64,
    /// Woken (one stored permit) each time an API outage ends: a write or the watch got
    /// through again. The agent re-announces the addresses whose leases it holds, unless the
    /// outage was short ([`EngineStats::last_outage_ms`]).
    pub reconnected: tokio::sync::Notify,
    /// How long the last API outage that ended lasted, in milliseconds (set before
    /// `reconnected` is woken).
    pub last_outage_ms: AtomicU64,
    /// How each lease we are creating or taking was taken over (read on `Acquired`).
    pub takeovers: Takeovers,
    /// Presence Leases of dead nodes fenced (one preconditioned release each) before their
    /// attached address Leases were taken over.
    pub fences: AtomicU64,
    /// Writes of this node's own presence Lease (creates, renewals, release); every other
    /// write counted here concerns an address Lease (or another node's presence: fences,
    /// clears, deletions).
    pub presence_writes: AtomicU64,
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
