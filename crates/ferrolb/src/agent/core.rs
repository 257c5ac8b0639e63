//! The agent's decisions as a synchronous state machine (like the controller's `State`): inputs
//! in ([`Input`]: the caches, lease events, link changes, conflicts, the API server back after an
//! outage, shutdown), effects out ([`Effect`]: lease wishes, the announced set, gratuitous
//! bursts, Events, `L2Announcement` wants, metrics). No I/O, no clock of its own (the caller
//! passes `now`), no runtime: `run` is the tokio loop that feeds it and carries out the effects.
//!
//! Invariants:
//! - The announced set (address → interfaces) exists once, here ([`Core::announced`]); it is
//!   diffed against [`Holdings::announced`] in one place (`Core::apply`), which alone emits
//!   [`Effect::Announce`] (besides [`Input::Shutdown`]'s empty set).
//! - The lease engine gets the desired groups ([`Effect::Leases`]) only when they changed.
//! - Which groups are held, sticky or yielded is [`Holdings`]' rule; which groups this node
//!   contends for is [`eligibility::compute`]'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::cache::{CachedNode, CachedService, CachedSlice};
use super::conflicts::{self, PairLimit};
use super::eligibility::{self, Desired, NodePrefixes, Options, ServiceRef};
use super::holdings::{ConflictOutcome, Holdings, Transition};
use super::l2status::{self, Acquired, Tracker, Want};
use super::linkhold::LinkHold;
use super::pools::PoolIndex;
use crate::api::L2AnnouncementPolicy;
use crate::lease::{self, LeaseEvent};

/// Address → interfaces announced on (each group's interface set shared, see
/// [`crate::net::announcer::Ifaces`]).
pub type Announced = crate::net::announcer::Held;

/// At most this many Events per second (a node taking over thousands of addresses at once must
/// not flood the API server; the announcements themselves are logged and counted regardless).
pub const MAX_EVENTS_PER_SECOND: u32 = 20;

/// What the caches hold right now (read by the caller from its watch caches).
pub struct Snapshot<'a> {
    pub policies: &'a [&'a L2AnnouncementPolicy],
    pub services: &'a [&'a CachedService],
    pub nodes: &'a [&'a CachedNode],
    pub slices: &'a [&'a CachedSlice],
    /// Every node's published interface prefixes (`subnets::node_prefixes`).
    pub node_prefixes: NodePrefixes,
    /// The `LoadBalancerIPPool`s, indexed.
    pub pools: PoolIndex,
    /// This node's selected interfaces without carrier (`subnets::Publisher::dark`).
    pub dark_interfaces: Vec<String>,
    /// Every other node's interfaces without carrier, as reported (`subnets::node_no_carrier`).
    pub no_carrier: BTreeMap<String, BTreeSet<String>>,
    /// This node's own carrier report has come back through the watch
    /// (`subnets::own_report_seen`).
    pub own_report_seen: bool,
}

/// One lease event as the engine reported it, with what the caller read beside it.
#[derive(Clone, Debug)]
pub struct LeaseInput {
    pub event: LeaseEvent,
    /// For `Acquired`: how the acquisition came about (`Acquired::failover` is `None` when we
    /// re-confirmed a record that already named us, e.g. after a restart).
    pub acquired: Option<Acquired>,
}

impl LeaseInput {
    /// An event without acquisition details (an `Acquired` counts as a re-confirmation).
    pub fn plain(event: LeaseEvent) -> Self {
        LeaseInput {
            event,
            acquired: None,
        }
    }
}

/// Another station seen claiming `ip` on `iface` (the announcer's [`crate::net::Conflict`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub ip: IpAddr,
    pub iface: String,
    pub mac: String,
    /// It answered our probe (no takeover announcement): nothing yields to it.
    pub probe_answer: bool,
}

impl From<&crate::net::Conflict> for Sighting {
    fn from(c: &crate::net::Conflict) -> Self {
        Sighting {
            ip: c.ip,
            iface: c.iface.clone(),
            mac: c.mac.to_string(),
            probe_answer: c.probe_answer,
        }
    }
}

/// What the core is fed.
pub enum Input<'a> {
    /// The caches changed (after the caller's debounce): recompute eligibility.
    Caches(Snapshot<'a>),
    /// This node's eligible interface names after a link change; `prefixes_changed` when the
    /// prefixes it publishes changed.
    Links {
        interfaces: Vec<String>,
        prefixes_changed: bool,
    },
    /// Lease events, every one waiting (one announcer update for the batch).
    Leases(Vec<LeaseInput>),
    /// Another station claims an address.
    Conflict(Sighting),
    /// The API server is reachable again after an outage that lasted this long.
    ApiReconnected { lasted: Duration },
    /// SIGTERM/SIGINT: stop answering.
    Shutdown,
}

/// A metric update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metric {
    Recompute,
    PolicyProblems(i64),
    GroupsDesired(i64),
    LeaseTransition(&'static str),
    Conflict(&'static str),
    LeasesHeld(i64),
    LeasesSticky(i64),
    AddressesAnnounced(i64),
    Announcements(u64),
    ForeignAnswerer(&'static str),
    /// A gratuitous burst defending a held address against another station's announcement.
    Defence,
    EventRateLimited,
}

/// What the caller is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// The groups to contend for, by lease name (`LeaseSet::set_desired`).
    Leases(BTreeMap<String, lease::LeaseWant>),
    /// Answer for exactly these addresses (`Announcer::set_held`).
    Announce(Arc<Announced>),
    /// A gratuitous burst for these (`Announcer::reannounce`).
    Reannounce(Announced),
    /// Post an Event: this node started announcing these addresses of the Service.
    AnnounceEvent {
        service: ServiceRef,
        addresses: BTreeSet<IpAddr>,
        interfaces: BTreeSet<String>,
    },
    /// Recompute at this instant at the latest (the end of a `linkhold` wait).
    RecomputeAt(Instant),
    /// Post a Warning Event: another station answers for (or, `announced`, announced) an address
    /// of the Service we hold.
    ForeignEvent {
        service: ServiceRef,
        ip: IpAddr,
        iface: String,
        mac: String,
        announced: bool,
    },
    /// Queue the newest `L2Announcement` state of a Service.
    L2Want(Want),
    /// This node no longer announces the Service: drop its queued state; after a grace period
    /// its object is deleted if it still names this node.
    L2Cancel(ServiceRef),
    /// Another node took the Service's address over (our lease was lost to it, or our sticky
    /// group yielded to its announcement): drop the queued state and delete nothing — the new
    /// holder rewrites the object. (Deleting it made a takeover burst cost a delete and a create
    /// per Service instead of one update: 5,232 of 12,400 writes of a 10k crash burst.)
    L2Drop(ServiceRef),
    /// Lease events were seen now (`L2Announcement` writes wait until they settle).
    L2LeaseActivity,
    /// Recompute eligibility now (feed [`Input::Caches`]).
    Recompute,
    Metric(Metric),
}

/// One batch of lease events as logged: a line per kind, not per group (a node holding
/// thousands of addresses loses or rides out all of them at once).
#[derive(Default)]
struct LeaseTally {
    lost: Vec<String>,
    unreachable: Vec<String>,
}

impl LeaseTally {
    fn log(&self, sticky: bool) {
        if let Some(first) = self.lost.first() {
            info!(groups = self.lost.len(), first = %first, "leases lost: stopped announcing");
        }
        let Some(first) = self.unreachable.first() else {
            return;
        };
        let n = self.unreachable.len();
        if sticky {
            warn!(
                groups = n,
                first = %first,
                "API server unreachable and the leases may have expired: sticky, still announcing"
            );
        } else {
            warn!(
                groups = n,
                first = %first,
                "API server unreachable and the leases may have expired: stopped"
            );
        }
    }
}

/// The agent's state.
pub struct Core {
    node: String,
    sticky: bool,
    /// Whether `L2Announcement` wants are produced (`--no-l2-announcements` turns them off).
    l2: bool,
    options: Options,
    interfaces: Vec<String>,
    holdings: Holdings,
    /// The one announced set: what the announcer was last told.
    announced: Arc<Announced>,
    last: Desired,
    warned_no_node: bool,
    /// The engine and holdings have been given a desired set at least once.
    synced: bool,
    /// Groups acquired without a takeover since the last `apply` (a restart): no Event.
    reconfirmed: BTreeSet<String>,
    /// How each held group was acquired (for `L2Announcement`s).
    acquired: HashMap<String, Arc<Acquired>>,
    tracker: Tracker,
    /// Event rate limit: start of the current one-second window and Events posted in it.
    event_window: Option<(Instant, u32)>,
    /// Foreign answerers already reported (Events and metric rate-limited per address+MAC).
    foreign: PairLimit,
    /// Addresses defended against another station's announcement (rate limit per address+MAC).
    defences: PairLimit,
    /// Carrier loss on a holder: hand over or keep ([`super::linkhold`]).
    link_hold: LinkHold,
    /// Groups another node took over since the last `apply` (lost to a named holder, or
    /// yielded to its announcement): their Services get [`Effect::L2Drop`], not `L2Cancel`.
    taken_over: BTreeSet<String>,
}

impl Core {
    /// `interfaces`: this node's eligible interface names at start; `l2`: produce
    /// `L2Announcement` wants; `quiet_outage`: the lease duration (an API outage or sticky
    /// period shorter than this re-announces nothing).
    pub fn new(
        node: &str,
        sticky: bool,
        l2: bool,
        options: Options,
        interfaces: Vec<String>,
        quiet_outage: Duration,
    ) -> Self {
        Core {
            node: node.to_string(),
            sticky,
            l2,
            options,
            interfaces,
            holdings: Holdings::new(sticky, quiet_outage),
            announced: Arc::default(),
            last: Desired::default(),
            warned_no_node: false,
            synced: false,
            reconfirmed: BTreeSet::new(),
            acquired: HashMap::new(),
            tracker: Tracker::default(),
            event_window: None,
            foreign: PairLimit::default(),
            defences: PairLimit::new(conflicts::DEFEND_EVERY),
            link_hold: LinkHold::default(),
            taken_over: BTreeSet::new(),
        }
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Caches(s) => self.recompute(s, now, &mut out),
            Input::Links {
                interfaces,
                prefixes_changed,
            } => {
                if interfaces != self.interfaces {
                    info!(interfaces = ?interfaces, "eligible interfaces changed");
                    self.interfaces = interfaces;
                    out.push(Effect::Recompute);
                } else if prefixes_changed {
                    out.push(Effect::Recompute);
                }
            }
            Input::Leases(events) => {
                let mut tally = LeaseTally::default();
                for ev in events {
                    self.on_lease(ev, now, &mut tally, &mut out);
                }
                tally.log(self.sticky);
                out.push(Effect::L2LeaseActivity);
                self.apply(now, &mut out);
            }
            Input::Conflict(seen) => self.on_conflict(&seen, now, &mut out),
            Input::ApiReconnected { lasted } => {
                let lasted_ms = lasted.as_millis() as u64;
                match self.holdings.reannounce_after_outage(lasted) {
                    None => debug!(
                        lasted_ms,
                        "API server reachable again after a short outage: nothing to re-announce"
                    ),
                    Some(held) => {
                        info!(
                            addresses = held.len(),
                            lasted_ms, "API server reachable again: re-announcing held addresses"
                        );
                        out.push(Effect::Reannounce(held));
                    }
                }
            }
            Input::Shutdown => {
                self.holdings.clear();
                self.announced = Arc::default();
                out.push(Effect::Announce(Arc::default()));
            }
        }
        out
    }

    /// The last eligibility result.
    pub fn desired(&self) -> &Desired {
        &self.last
    }

    /// What the announcer was last told to answer for.
    pub fn announced(&self) -> &Announced {
        &self.announced
    }

    /// The groups' lease states.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// This node's eligible interface names as last reported.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Recomputes eligibility from the caches and hands a changed result to the engine.
    fn recompute(&mut self, s: Snapshot<'_>, now: Instant, out: &mut Vec<Effect>) {
        out.push(Effect::Metric(Metric::Recompute));
        let own_node_known = s.nodes.iter().any(|node| *node.name == *self.node);
        if !own_node_known && !self.warned_no_node {
            warn!(node = %self.node, "no Node object with this name: announcing nothing");
        }
        self.warned_no_node = !own_node_known;
        self.options.node_prefixes = s.node_prefixes;
        self.options.pools = s.pools;
        self.options.dark_interfaces = s.dark_interfaces;
        self.options.no_carrier = s.no_carrier;
        let mut desired = eligibility::compute(&eligibility::Inputs {
            node_name: &self.node,
            policies: s.policies,
            services: s.services,
            nodes: s.nodes,
            endpoint_slices: s.slices,
            interfaces: &self.interfaces,
            options: &self.options,
            prev: &self.last.groups,
        });
        // Groups this node could announce only on interfaces without carrier: kept or handed
        // over (`linkhold`).
        let holdings = &self.holdings;
        if let Some(at) =
            self.link_hold
                .apply(&mut desired, |k| holdings.hold(k), s.own_report_seen, now)
        {
            out.push(Effect::RecomputeAt(at));
        }
        desired.reuse_dark(&self.last.groups);
        self.on_desired(desired, now, out);
    }

    /// A new eligibility result.
    fn on_desired(&mut self, desired: Desired, now: Instant, out: &mut Vec<Effect>) {
        if desired.problems != self.last.problems {
            for pr in &desired.problems {
                warn!(policy = %pr.policy, field = %pr.field, "policy problem: {}", pr.message);
            }
        }
        out.push(Effect::Metric(Metric::PolicyProblems(
            desired.problems.len() as i64,
        )));
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
        // Inserted one by one: collecting would first gather every pair in a vector grown by
        // doubling and sort it with a scratch buffer as large (≈ 2.5 MB beside the map at 10k
        // groups, at the agent's heap peak).
        let mut to_engine: BTreeMap<String, lease::LeaseWant> = BTreeMap::new();
        for g in desired.local() {
            to_engine.insert(lease::lease_name(&g.key), lease_desired(g));
        }
        out.push(Effect::Metric(
            Metric::GroupsDesired(to_engine.len() as i64),
        ));
        if desired != self.last {
            debug!(
                groups = desired.groups.len(),
                local = to_engine.len(),
                "eligibility recomputed"
            );
        }
        out.push(Effect::Leases(to_engine));
        self.last = desired;
        self.apply(now, out);
    }

    fn on_lease(
        &mut self,
        ev: LeaseInput,
        now: Instant,
        tally: &mut LeaseTally,
        out: &mut Vec<Effect>,
    ) {
        let LeaseInput {
            event: ev,
            acquired,
        } = ev;
        let (t, label) = match &ev {
            LeaseEvent::Acquired { .. } => (Transition::Acquired, "acquired"),
            LeaseEvent::Lost { .. } => (Transition::Lost, "lost"),
            LeaseEvent::Unreachable { .. } => (Transition::ExpiredUnreachable, "unreachable"),
            LeaseEvent::Released { .. } => (Transition::Released, "released"),
        };
        out.push(Effect::Metric(Metric::LeaseTransition(label)));
        // The engine echoes the group key we gave it (`LeaseWant::tag`).
        let Some(key) = ev.tag().filter(|k| self.holdings.group(k).is_some()) else {
            debug!(lease = %ev.name(), event = label, "event for a lease no longer desired");
            return;
        };
        let key = key.to_string();
        match &ev {
            LeaseEvent::Lost { holder, .. } => {
                debug!(group = %key, holder = ?holder, "lease lost: stopped announcing");
                tally.lost.push(key.clone());
                if holder
                    .as_deref()
                    .is_some_and(|h| !h.is_empty() && h != self.node)
                {
                    self.taken_over.insert(key.clone());
                }
            }
            LeaseEvent::Unreachable { .. } => {
                debug!(group = %key, sticky = self.sticky, "lease may have expired, API unreachable");
                tally.unreachable.push(key.clone());
            }
            _ => debug!(group = %key, event = label, "lease event"),
        }
        match t {
            Transition::Acquired => {
                let acq =
                    acquired.unwrap_or_else(|| Acquired::new(jiff::Timestamp::UNIX_EPOCH, None, 0));
                let reconfirmed = acq.failover.is_none();
                // A renewal after a sticky period keeps the acquisition it continues.
                if !(reconfirmed && self.acquired.contains_key(&key)) {
                    self.acquired.insert(key.clone(), Arc::new(acq));
                }
                if reconfirmed {
                    self.reconfirmed.insert(key.clone());
                }
            }
            Transition::Lost | Transition::Released => {
                self.acquired.remove(&key);
            }
            Transition::ExpiredUnreachable => {}
        }
        self.holdings.on_lease(&key, t, now);
    }

    fn on_conflict(&mut self, seen: &Sighting, now: Instant, out: &mut Vec<Effect>) {
        let (ip, probe_answer) = (seen.ip, seen.probe_answer);
        // An answer to our ARP/NDP probe is no takeover announcement: nothing yields to it.
        let outcome = if probe_answer {
            self.holdings.on_probe_answer(ip)
        } else {
            self.holdings.on_conflict(ip)
        };
        let label = match &outcome {
            ConflictOutcome::Yielded(key) => {
                warn!(%ip, iface = %seen.iface, mac = %seen.mac, group = %key, "another station announces this address: sticky group yields");
                self.taken_over.insert(key.clone());
                "yielded"
            }
            ConflictOutcome::StickyAnswered(key) => {
                info!(%ip, iface = %seen.iface, mac = %seen.mac, group = %key, "another station answered our probe for an address we hold sticky (its lease may have moved): still announcing until a takeover is announced");
                "sticky_answered"
            }
            ConflictOutcome::Ignored(key) => {
                info!(%ip, iface = %seen.iface, mac = %seen.mac, group = %key, probe_answer, "another station claims an address whose lease we hold");
                if !probe_answer {
                    self.defend(seen, now, out);
                }
                self.on_foreign_answerer(seen, key, now, out);
                "ignored"
            }
            ConflictOutcome::NotOurs => "not_ours",
        };
        out.push(Effect::Metric(Metric::Conflict(label)));
        self.apply(now, out);
    }

    /// Another station announced (not: answered our probe) an address whose lease we hold: we
    /// defend it with a gratuitous burst of our own (RFC 5227 §2.4 (b)), at most once per
    /// address and MAC per [`conflicts::DEFEND_EVERY`]. The announcer was a stale holder coming
    /// back — sticky through an outage that also took its link, so it never heard our takeover
    /// burst — and our burst is the takeover announcement it yields to; it also puts the
    /// clients' caches, which its announcement just pointed at it, back on us.
    fn defend(&mut self, seen: &Sighting, now: Instant, out: &mut Vec<Effect>) {
        let Some(ifaces) = self.announced.get(&seen.ip) else {
            return;
        };
        if !self.defences.due(seen.ip, &seen.mac, now) {
            return;
        }
        info!(ip = %seen.ip, mac = %seen.mac, "defending an address whose lease we hold: gratuitous burst");
        out.push(Effect::Reannounce(Announced::from([(
            seen.ip,
            ifaces.clone(),
        )])));
        out.push(Effect::Metric(Metric::Defence));
    }

    /// Another station answers for an address whose lease (group `key`) we hold (we keep it
    /// and keep announcing): a Warning Event on its Services, rate-limited per address+MAC. Two
    /// kinds, two Events (`conflicts::foreign_event`): an answer to our probe is a foreign
    /// answerer (kube-proxy IPVS without strictARP, a host with the address; counted in
    /// `ferrolb_agent_foreign_answerers_total`); an announced takeover is most often a stale
    /// holder coming back, which we defended against ([`Core::defend`]).
    fn on_foreign_answerer(
        &mut self,
        seen: &Sighting,
        key: &str,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Sighting {
            ip,
            ref iface,
            ref mac,
            probe_answer,
        } = *seen;
        if !self.foreign.due(ip, mac, now) {
            return;
        }
        if probe_answer {
            out.push(Effect::Metric(Metric::ForeignAnswerer(conflicts::family(
                ip,
            ))));
            warn!(%ip, iface, mac, "another station answers for an address whose lease this node holds (kube-proxy IPVS without strictARP?)");
        } else {
            warn!(%ip, iface, mac, "another station announced an address whose lease this node holds (a stale holder coming back?): defended");
        }
        for sref in conflicts::services_of(self.holdings.group(key)) {
            if !self.event_allowed(&sref, now, out) {
                continue;
            }
            out.push(Effect::ForeignEvent {
                service: sref,
                ip,
                iface: iface.clone(),
                mac: mac.clone(),
                announced: !probe_answer,
            });
        }
    }

    /// Diffs the announced set (the one place): hands a changed set to the announcer, Events
    /// for new announcements; `L2Announcement` wants; bursts for groups renewed after an outage.
    fn apply(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.l2 {
            let changes = self
                .tracker
                .update(l2status::wants(&self.holdings, &self.acquired));
            let taken: BTreeSet<&ServiceRef> = self
                .taken_over
                .iter()
                .filter_map(|k| self.holdings.group(k))
                .flat_map(|g| g.services.iter())
                .collect();
            out.extend(changes.gone.into_iter().map(|s| {
                if taken.contains(&s) {
                    Effect::L2Drop(s)
                } else {
                    Effect::L2Cancel(s)
                }
            }));
            out.extend(changes.changed.into_iter().map(Effect::L2Want));
        }
        self.taken_over.clear();
        let reconfirmed = std::mem::take(&mut self.reconfirmed);
        let current = self.holdings.announced();
        out.push(Effect::Metric(Metric::LeasesHeld(
            self.holdings.held_count() as i64,
        )));
        out.push(Effect::Metric(Metric::LeasesSticky(
            self.holdings.sticky_count() as i64,
        )));
        let again = self.holdings.take_reconfirmed();
        if !again.is_empty() {
            info!(
                addresses = again.len(),
                "leases renewed after the API outage: re-announcing"
            );
            out.push(Effect::Reannounce(again));
        }
        if current == *self.announced {
            return;
        }
        let mut new = crate::net::announcer::pairs_not_in(&current, &self.announced);
        // Events only for changes: not for addresses re-confirmed after a restart.
        for key in reconfirmed {
            if let Some(g) = self.holdings.group(&key) {
                new.retain(|(ip, _)| !g.addresses.contains(ip));
            }
        }
        let current = Arc::new(current);
        out.push(Effect::Announce(current.clone()));
        out.push(Effect::Metric(Metric::AddressesAnnounced(
            current.len() as i64
        )));
        out.push(Effect::Metric(Metric::Announcements(new.len() as u64)));
        for (ip, iface) in &new {
            info!(%ip, iface = %iface, node = %self.node, "announcing");
        }
        self.announce_events(&new, now, out);
        self.announced = current;
    }

    /// One Event per Service whose addresses started being announced.
    fn announce_events(&mut self, new: &[(IpAddr, String)], now: Instant, out: &mut Vec<Effect>) {
        if new.is_empty() {
            return;
        }
        let mut per_service: BTreeMap<ServiceRef, (BTreeSet<IpAddr>, BTreeSet<String>)> =
            BTreeMap::new();
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
        for (sref, (addresses, interfaces)) in per_service {
            if !self.event_allowed(&sref, now, out) {
                continue;
            }
            out.push(Effect::AnnounceEvent {
                service: sref,
                addresses,
                interfaces,
            });
        }
    }

    /// The agent's Event rate limit ([`MAX_EVENTS_PER_SECOND`]): true when one more may be
    /// posted now (counted), false when the limit is reached (counted as rate limited).
    fn event_allowed(&mut self, sref: &ServiceRef, now: Instant, out: &mut Vec<Effect>) -> bool {
        let window = match self.event_window {
            Some((start, n)) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                (start, n)
            }
            _ => (now, 0),
        };
        if window.1 >= MAX_EVENTS_PER_SECOND {
            self.event_window = Some(window);
            out.push(Effect::Metric(Metric::EventRateLimited));
            debug!(service = %sref, "Event rate limit reached: not posting");
            return false;
        }
        self.event_window = Some((window.0, window.1 + 1));
        true
    }
}

/// What the lease engine should know about a group: its Services and addresses (described as
/// labels and annotations only when the Lease is written: `lease::LeaseMeta::Serves`), and the
/// rendezvous candidates.
fn lease_desired(g: &eligibility::Group) -> lease::LeaseWant {
    let key = g.key.clone();
    lease::LeaseWant {
        meta: lease::LeaseMeta::Serves {
            key: key.clone(),
            services: g
                .services
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect(),
        },
        candidates: g.candidates.clone(),
        tag: Some(key),
    }
}

#[cfg(test)]
mod tests;
