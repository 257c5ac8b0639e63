//! The announcer: answers ARP/NDP for held addresses from user space over raw `AF_PACKET`
//! sockets (one reader thread per interface), sends gratuitous ARP / unsolicited NA bursts when
//! an address is taken on an interface or an interface comes up (or when asked, [`Announcer::reannounce`]),
//! joins the solicited-node multicast group of each held IPv6 address, and reports other
//! stations announcing our addresses as [`Conflict`]s (each announcement goes with a probe,
//! [`arp::probe`] / [`ndp::probe`], so that kernels answering for our addresses show themselves).
//!
//! Threads, not tasks: the reply path is a blocking `poll`+`recvfrom` on a socket that a
//! classic BPF filter restricts to ARP and ICMPv6 NS/NA, then one `sendto` — no executor hop,
//! so replies stay fast under load (MetalLB #603). A manager thread owns the readers, the bursts
//! and the multicast memberships; it wakes on [`Announcer::set_held`], on every interface change
//! the kernel reports ([`super::links`]: new, gone, renamed, changed MAC, carrier lost or back —
//! no polling), and for a periodic self-check. An interface that comes back (carrier, or
//! re-created) gets a gratuitous burst for every address held on it at once, so clients and
//! switches whose caches were flushed hear every address again.
//!
//! The self-check ([`AnnouncerConfig::self_check`]) compares what is held with what the readers
//! answer and which solicited-node groups are joined, and repairs any difference (a reader
//! thread that died, a group that was dropped, an interface change that was missed); each repair
//! is logged and counted in `ferrolb_announce_repairs_total`.
//!
//! Nothing requires an IP address on the interface: frames are built from the held address and
//! the interface's MAC. Answers are only ever sent for an address held *on the receiving
//! interface* (the held map is consulted for every frame, so removal takes effect at once).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{debug, info, warn};

use super::arp::{self, MacAddr};
use super::iface::Iface;
use super::links::LinkWatch;
use super::metrics::{Kind, Metrics};
use super::ndp;
use super::probes::FollowUps;
use super::reader::{open_channel, ReadLoop, Reader};

/// The interfaces one address is announced on. Shared: every address of a group points at the
/// group's one set (`eligibility::Group::interfaces`), so a held address costs one map entry,
/// not a set of strings, in each copy of the held map (issue 16: ≈ 2 KB per held address went to
/// these sets before).
pub type Ifaces = Arc<BTreeSet<String>>;

/// Held addresses: which interfaces each address is announced on.
pub type Held = BTreeMap<IpAddr, Ifaces>;

/// Timings of the announcer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncerConfig {
    /// Announcements in a gratuitous burst (the first is sent at once). 0 disables bursts.
    pub gratuitous_count: u32,
    /// Interval between the announcements of a burst.
    pub gratuitous_interval: Duration,
    /// Re-announce every held address this often (one announcement), if set.
    pub reannounce_interval: Option<Duration>,
    /// How often the self-check runs (see the module doc). Interface changes do not wait
    /// for it: the kernel reports them.
    pub self_check: Duration,
    /// Follow-up probes for foreign answerers this long after each burst starts (a takeover),
    /// see [`super::probes`]; empty = none.
    pub probe_after: Vec<Duration>,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        AnnouncerConfig {
            gratuitous_count: 5,
            gratuitous_interval: Duration::from_secs(1),
            reannounce_interval: None,
            self_check: Duration::from_secs(10),
            probe_after: super::probes::DEFAULT_AFTER.to_vec(),
        }
    }
}

/// Another station announced an address we hold (gratuitous ARP, an ARP packet with that
/// sender address, or a Neighbor Advertisement for it) with a MAC that is not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub ip: IpAddr,
    pub iface: String,
    pub mac: MacAddr,
    /// The frame answered one of our probes (an ARP reply to 0.0.0.0, a Solicited NA) or was a
    /// probe itself (an NS for the address from the address): the station has the address,
    /// but it did not announce a takeover ([`super::Verdict::probe_answer`]).
    pub probe_answer: bool,
}

/// The handle of a running announcer; clones share it. The threads stop on
/// [`Announcer::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Announcer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    cmd: Mutex<Option<mpsc::Sender<Cmd>>>,
    manager: Mutex<Option<JoinHandle<()>>>,
    /// The process's one interface watcher (stopped with the announcer).
    links: Mutex<Option<LinkWatch>>,
    /// Counts interface changes, for [`Announcer::link_changes`].
    link_changes: tokio::sync::watch::Sender<u64>,
}

/// State the readers consult for every frame.
pub(super) struct Shared {
    /// Held addresses per interface.
    pub(super) by_iface: RwLock<HashMap<String, HashSet<IpAddr>>>,
    /// Held addresses as given to `set_held` (the manager diffs it; shared with the caller's
    /// map and the manager's last applied state, never copied).
    pub(super) held: RwLock<Arc<Held>>,
    /// Bumped by every `set_held`: the manager looks at `held` only when it moved.
    pub(super) generation: AtomicU64,
    /// MACs of every interface of this host (namespace): frames from them are ours, never a
    /// conflict (an address held on two interfaces of one segment announces on both).
    pub(super) own_macs: RwLock<HashSet<MacAddr>>,
    pub(super) metrics: Metrics,
    pub(super) conflicts: tokio::sync::broadcast::Sender<Conflict>,
}

impl Shared {
    pub(super) fn holds(&self, iface: &str, ip: IpAddr) -> bool {
        self.by_iface
            .read()
            .map(|m| m.get(iface).is_some_and(|s| s.contains(&ip)))
            .unwrap_or(false)
    }
}

enum Cmd {
    Wake,
    /// The kernel reported an interface change: re-read the interfaces.
    Links,
    Sync(tokio::sync::oneshot::Sender<()>),
    /// A full gratuitous burst for these (address, interface) pairs, where still held.
    Reannounce(Held),
    /// Test hook: stop one reader thread behind the manager's back (the self-check must notice).
    #[doc(hidden)]
    BreakReader(String),
}

/// True for addresses that may be announced (unicast, not loopback/unspecified).
pub fn announceable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    }
}

impl Announcer {
    /// Starts the manager thread and registers the metrics in `metrics`. Announces nothing
    /// until [`Announcer::set_held`].
    pub fn new(cfg: AnnouncerConfig, metrics: &prometheus::Registry) -> anyhow::Result<Self> {
        let metrics = Metrics::new(metrics).context("registering announcer metrics")?;
        let (conflicts, _) = tokio::sync::broadcast::channel(256);
        let shared = Arc::new(Shared {
            by_iface: RwLock::new(HashMap::new()),
            held: RwLock::new(Arc::default()),
            generation: AtomicU64::new(0),
            own_macs: RwLock::new(HashSet::new()),
            metrics,
            conflicts,
        });
        let (tx, rx) = mpsc::channel();
        let cfg_self_check = cfg.self_check;
        let (link_changes, _) = tokio::sync::watch::channel(0u64);
        let links = {
            let tx = tx.clone();
            let changes = link_changes.clone();
            LinkWatch::start(move |_| {
                changes.send_modify(|n| *n += 1);
                let _ = tx.send(Cmd::Links);
            })
            .context("watching interfaces (rtnetlink)")?
        };
        let followups = FollowUps::new(&cfg.probe_after);
        let mut mgr = Manager {
            cfg,
            followups,
            shared: shared.clone(),
            readers: HashMap::new(),
            last: Arc::default(),
            last_generation: u64::MAX,
            bursts: BTreeMap::new(),
            links_dirty: true,
            next_check: Instant::now() + cfg_self_check,
            next_reannounce: None,
        };
        let handle = std::thread::Builder::new()
            .name("ferrolb-announce".into())
            .spawn(move || mgr.run(rx))
            .context("spawning the announcer thread")?;
        Ok(Announcer {
            inner: Arc::new(Inner {
                shared,
                cmd: Mutex::new(Some(tx)),
                manager: Mutex::new(Some(handle)),
                links: Mutex::new(Some(links)),
                link_changes,
            }),
        })
    }

    /// Sets the desired state: which addresses are held on which interfaces. Addresses that
    /// cannot be announced (unspecified, loopback, multicast, broadcast) are dropped with a
    /// warning. Removed (address, interface) pairs stop being answered before this returns;
    /// new pairs get a gratuitous burst (sent by the manager thread right after). The map is
    /// kept as given (not copied) unless something had to be dropped.
    pub fn set_held(&self, held: impl Into<Arc<Held>>) {
        let mut clean: Arc<Held> = held.into();
        if clean
            .iter()
            .any(|(ip, ifaces)| !announceable(*ip) || ifaces.is_empty())
        {
            for ip in clean.keys().filter(|ip| !announceable(**ip)) {
                warn!(%ip, "not announcing an address that is not unicast");
            }
            Arc::make_mut(&mut clean).retain(|ip, ifaces| announceable(*ip) && !ifaces.is_empty());
        }
        let mut by_iface: HashMap<String, HashSet<IpAddr>> = HashMap::new();
        for (ip, ifaces) in clean.iter() {
            for i in ifaces.iter() {
                by_iface.entry(i.clone()).or_default().insert(*ip);
            }
        }
        let sh = &self.inner.shared;
        if let (Ok(mut h), Ok(mut b)) = (sh.held.write(), sh.by_iface.write()) {
            *h = clean;
            *b = by_iface;
            sh.generation.fetch_add(1, Ordering::Release);
        }
        self.send(Cmd::Wake);
    }

    /// Starts a full gratuitous burst now for every pair of `pairs` that is held (pairs that
    /// are not held are skipped; a burst stops early if its pair is released). For events the
    /// announcer cannot see itself, e.g. the API server reachable again after an outage.
    pub fn reannounce(&self, pairs: Held) {
        if !pairs.is_empty() {
            self.send(Cmd::Reannounce(pairs));
        }
    }

    /// The currently held addresses.
    pub fn held(&self) -> Held {
        self.inner
            .shared
            .held
            .read()
            .map(|h| Held::clone(&h))
            .unwrap_or_default()
    }

    /// Changes whenever the kernel reports an interface change (link up/down, carrier, address
    /// added/removed, interface added/removed/renamed): the agent re-reads its eligible
    /// interfaces on it instead of polling.
    pub fn link_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.link_changes.subscribe()
    }

    /// Test hook: stops the reader thread of `iface` without telling the manager, as a crashed
    /// thread would; the next self-check must restart it.
    #[doc(hidden)]
    pub fn break_reader_for_test(&self, iface: &str) {
        self.send(Cmd::BreakReader(iface.to_string()));
    }

    /// Conflicts seen from now on.
    pub fn conflicts(&self) -> tokio::sync::broadcast::Receiver<Conflict> {
        self.inner.shared.conflicts.subscribe()
    }

    /// Waits until the manager has applied the latest [`Announcer::set_held`]: sockets on
    /// every existing named interface are open (so requests are answered) and the first
    /// announcement of new pairs is sent.
    pub async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.send(Cmd::Sync(tx)) {
            let _ = rx.await;
        }
    }

    /// Stops answering at once, closes the sockets (leaving multicast groups) and stops the
    /// threads. Idempotent.
    pub async fn shutdown(&self) {
        let sh = &self.inner.shared;
        if let (Ok(mut h), Ok(mut b)) = (sh.held.write(), sh.by_iface.write()) {
            *h = Arc::default();
            b.clear();
        }
        if let Ok(mut c) = self.inner.cmd.lock() {
            c.take();
        }
        if let Ok(mut l) = self.inner.links.lock() {
            l.take();
        }
        let handle = self.inner.manager.lock().ok().and_then(|mut m| m.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    fn send(&self, c: Cmd) -> bool {
        self.inner
            .cmd
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.send(c).is_ok()))
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    next: Instant,
    remaining: u32,
}

struct Manager {
    cfg: AnnouncerConfig,
    shared: Arc<Shared>,
    readers: HashMap<String, Reader>,
    /// Held state applied last time (shared with `Shared::held` until the next `set_held`).
    last: Arc<Held>,
    /// `Shared::generation` of `last` (`u64::MAX`: nothing applied yet).
    last_generation: u64,
    bursts: BTreeMap<(IpAddr, String), Burst>,
    /// Follow-up probes after takeovers (started with each burst, see [`super::probes`]).
    followups: FollowUps<(IpAddr, String)>,
    /// An interface change was reported since the last sync.
    links_dirty: bool,
    next_check: Instant,
    next_reannounce: Option<Instant>,
}

impl Manager {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        let mut pending_syncs = Vec::new();
        loop {
            self.tick();
            for s in pending_syncs.drain(..) {
                let _: Result<(), ()> = tokio::sync::oneshot::Sender::send(s, ());
            }
            let now = Instant::now();
            let mut due = self.next_check;
            if let Some(b) = self.bursts.values().map(|b| b.next).min() {
                due = due.min(b);
            }
            if let Some(r) = self.next_reannounce {
                due = due.min(r);
            }
            if let Some(p) = self.followups.next_due() {
                due = due.min(p);
            }
            match rx.recv_timeout(due.saturating_duration_since(now)) {
                Ok(c) => self.take(c, &mut pending_syncs),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Coalesce whatever else is queued.
            loop {
                match rx.try_recv() {
                    Ok(c) => self.take(c, &mut pending_syncs),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.stop_all();
                        return;
                    }
                }
            }
        }
        self.stop_all();
    }

    fn take(&mut self, c: Cmd, pending_syncs: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        match c {
            Cmd::Wake => {}
            Cmd::Links => self.links_dirty = true,
            Cmd::Sync(s) => pending_syncs.push(s),
            Cmd::Reannounce(pairs) => {
                let now = Instant::now();
                for (ip, ifaces) in pairs {
                    for i in ifaces.iter() {
                        if self.shared.holds(i, ip) {
                            self.schedule(ip, i, now);
                        }
                    }
                }
            }
            Cmd::BreakReader(name) => {
                if let Some(r) = self.readers.get_mut(&name) {
                    r.stop.store(true, Ordering::SeqCst);
                    if let Some(t) = r.thread.take() {
                        let _ = t.join();
                    }
                }
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, r) in self.readers.drain() {
            r.stop();
        }
    }

    /// One round: apply a new held set (diff, interfaces, multicast groups) when it moved, an
    /// interface changed or the self-check is due, then send the bursts that are due. Rounds
    /// where nothing moved cost nothing per held address (a burst round with 10k held addresses
    /// must not copy them all).
    fn tick(&mut self) {
        let now = Instant::now();
        let generation = self.shared.generation.load(Ordering::Acquire);
        let check_due = now >= self.next_check;
        if generation != self.last_generation || self.links_dirty || check_due {
            let held = self
                .shared
                .held
                .read()
                .map(|h| Arc::clone(&h))
                .unwrap_or_default();
            let moved = generation != self.last_generation || self.links_dirty;
            self.last_generation = generation;
            self.links_dirty = false;
            let changed = held != self.last;
            // Dead reader threads restarted: a repair, whatever woke us.
            let mut repairs = self.sync_interfaces(&held, now);
            if changed {
                self.apply_diff(&held, now);
            }
            let joins = self.sync_multicast(&held);
            if check_due {
                repairs += self.check_answered();
                if !moved {
                    // Nothing was reported since the last round, yet the groups differed.
                    repairs += joins;
                }
                self.next_check = now + self.cfg.self_check;
            }
            if repairs > 0 {
                warn!(repairs, "self-check repaired the announcer's state");
                self.shared.metrics.repairs.inc_by(repairs as u64);
            }
            self.last = held;
        }
        if let Some(every) = self.cfg.reannounce_interval {
            let due = *self.next_reannounce.get_or_insert(now + every);
            if now >= due {
                for (ip, ifaces) in self.last.iter() {
                    for i in ifaces.iter() {
                        self.bursts.entry((*ip, i.clone())).or_insert(Burst {
                            next: now,
                            remaining: 1,
                        });
                    }
                }
                self.next_reannounce = Some(now + every);
            }
        }
        self.send_due(now);
    }

    fn schedule(&mut self, ip: IpAddr, iface: &str, now: Instant) {
        if self.cfg.gratuitous_count == 0 {
            return;
        }
        self.followups.start((ip, iface.to_string()), now);
        self.bursts.insert(
            (ip, iface.to_string()),
            Burst {
                next: now,
                remaining: self.cfg.gratuitous_count,
            },
        );
    }

    /// Opens/closes readers to match the interfaces named in `held`; schedules bursts on
    /// interfaces that appear or come up.
    /// Returns how many readers it restarted because their thread had died (repairs).
    fn sync_interfaces(&mut self, held: &Held, now: Instant) -> usize {
        let mut repairs = 0;
        let wanted: BTreeSet<&String> = held.values().flat_map(|i| i.iter()).collect();
        let stale: Vec<String> = self
            .readers
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for n in stale {
            if let Some(r) = self.readers.remove(&n) {
                debug!(iface = %n, "closing");
                r.stop();
            }
        }
        if wanted.is_empty() {
            return repairs;
        }
        let all: HashMap<String, pnet_datalink::NetworkInterface> = pnet_datalink::interfaces()
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        if let Ok(mut own) = self.shared.own_macs.write() {
            *own = all.values().filter_map(|i| i.mac).collect();
        }
        for name in wanted {
            let Some(ni) = all.get(name.as_str()) else {
                if let Some(r) = self.readers.remove(name.as_str()) {
                    info!(iface = %name, "interface gone");
                    r.stop();
                }
                continue;
            };
            let snap = Iface::from_flags(&ni.name, ni.index, ni.mac, ni.flags, false);
            let Some(mac) = snap.mac else {
                continue;
            };
            let up = snap.up;
            let keep = self.readers.get(name.as_str()).is_some_and(|r| {
                r.index == ni.index
                    && r.mac == mac
                    && r.thread.as_ref().is_some_and(|t| !t.is_finished())
            });
            if keep {
                let came_up = self
                    .readers
                    .get_mut(name.as_str())
                    .map(|r| {
                        let came_up = up && !r.up;
                        r.up = up;
                        came_up
                    })
                    .unwrap_or(false);
                if came_up {
                    info!(iface = %name, "interface came up; announcing");
                    self.schedule_iface(held, name, now);
                }
                continue;
            }
            if let Some(old) = self.readers.remove(name.as_str()) {
                let died = old.index == ni.index
                    && old.mac == mac
                    && old.thread.as_ref().is_none_or(|t| t.is_finished());
                if died {
                    warn!(iface = %name, "reader thread had stopped; restarting it");
                    repairs += 1;
                }
                old.stop();
            }
            match self.start_reader(ni, mac, up) {
                Ok(r) => {
                    info!(iface = %name, %mac, up, "listening");
                    self.readers.insert(name.clone(), r);
                    if up {
                        self.schedule_iface(held, name, now);
                    }
                }
                Err(e) => warn!(iface = %name, error = %format!("{e:#}"), "cannot listen"),
            }
        }
        repairs
    }

    /// Self-check: the per-interface map the readers answer from must be exactly what is held
    /// (both read under their locks, in `set_held`'s order, so a concurrent `set_held` is never
    /// undone). Returns 1 when it was not (and rewrites it).
    fn check_answered(&self) -> usize {
        let sh = &self.shared;
        let (Ok(held), Ok(mut by_iface)) = (sh.held.read(), sh.by_iface.write()) else {
            return 0;
        };
        let mut want: HashMap<String, HashSet<IpAddr>> = HashMap::new();
        for (ip, ifaces) in held.iter() {
            for i in ifaces.iter() {
                want.entry(i.clone()).or_default().insert(*ip);
            }
        }
        if *by_iface == want {
            return 0;
        }
        *by_iface = want;
        1
    }

    fn schedule_iface(&mut self, held: &Held, name: &str, now: Instant) {
        let ips: Vec<IpAddr> = held
            .iter()
            .filter(|(_, i)| i.contains(name))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in ips {
            self.schedule(ip, name, now);
        }
    }

    fn start_reader(
        &self,
        ni: &pnet_datalink::NetworkInterface,
        mac: MacAddr,
        up: bool,
    ) -> anyhow::Result<Reader> {
        let (tx, rx) = open_channel(ni)?;
        let tx = Arc::new(Mutex::new(tx));
        let stop = Arc::new(AtomicBool::new(false));
        let rl = ReadLoop {
            name: ni.name.clone(),
            mac,
            shared: self.shared.clone(),
            tx: tx.clone(),
            stop: stop.clone(),
            reported: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("ferrolb-rx-{}", ni.name))
            .spawn(move || rl.run(rx))
            .context("spawning a reader thread")?;
        Ok(Reader {
            index: ni.index,
            mac,
            up,
            stop,
            tx,
            thread: Some(thread),
            mcast: super::mcast::Memberships::new(ni.index),
        })
    }

    fn apply_diff(&mut self, held: &Held, now: Instant) {
        for (ip, n) in pairs_not_in(&self.last, held) {
            self.bursts.remove(&(ip, n.clone()));
            self.followups.cancel(&(ip, n.clone()));
            self.shared.metrics.forget(ip, &n);
            info!(%ip, iface = %n, "released");
        }
        for (ip, n) in pairs_not_in(held, &self.last) {
            info!(%ip, iface = %n, "holding");
            if self.readers.get(&n).is_some_and(|r| r.up) {
                self.schedule(ip, &n, now);
            }
        }
    }

    /// Joins/leaves solicited-node groups so each reader's interface receives the multicast
    /// NS for its held IPv6 addresses (and switches report them with MLD).
    /// Returns how many groups it joined or left.
    fn sync_multicast(&mut self, held: &Held) -> usize {
        let mut actions = 0;
        for (name, r) in self.readers.iter_mut() {
            let want: BTreeSet<Ipv6Addr> = held
                .iter()
                .filter(|(_, i)| i.contains(name))
                .filter_map(|(ip, _)| match ip {
                    IpAddr::V6(v6) => Some(ndp::solicited_node(*v6)),
                    IpAddr::V4(_) => None,
                })
                .collect();
            if r.mcast.is(&want) {
                continue;
            }
            let synced = r.mcast.sync(&want);
            if let Some(e) = &synced.error {
                // One line per interface and round, not one per group.
                warn!(iface = %name, groups = synced.failed, error = %e, "cannot join solicited-node groups");
            }
            actions += synced.changed;
        }
        actions
    }

    fn send_due(&mut self, now: Instant) {
        let due: Vec<(IpAddr, String)> = self
            .bursts
            .iter()
            .filter(|(_, b)| b.next <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let (ip, name) = &key;
            let Some(b) = self.bursts.get_mut(&key) else {
                continue;
            };
            b.remaining = b.remaining.saturating_sub(1);
            b.next = now + self.cfg.gratuitous_interval;
            let done = b.remaining == 0;
            if done {
                self.bursts.remove(&key);
            }
            let Some(r) = self.readers.get(name) else {
                continue;
            };
            if !r.up || !self.shared.holds(name, *ip) {
                continue;
            }
            for f in gratuitous_frames(*ip, r.mac) {
                if r.send(&f) {
                    self.shared.metrics.inc(Kind::Gratuitous, *ip, name);
                }
            }
            // With each announcement a probe: a station that answers it is a foreign answerer
            // (reported as a conflict by the reader).
            self.probe(*ip, name);
            debug!(%ip, iface = %name, "gratuitous announcement sent");
        }
        // Follow-up probes after a takeover: kube-proxy may bind the address after the burst.
        for (ip, name) in self.followups.take_due(now) {
            if self.probe(ip, &name) {
                debug!(%ip, iface = %name, "follow-up probe sent");
            }
        }
    }

    /// Sends one probe for foreign answerers of `ip` on `name` if it is up and `ip` held there.
    fn probe(&self, ip: IpAddr, name: &str) -> bool {
        let Some(r) = self.readers.get(name) else {
            return false;
        };
        if !r.up || !self.shared.holds(name, ip) || !r.send(&probe_frame(ip, r.mac)) {
            return false;
        }
        self.shared.metrics.inc(Kind::Probes, ip, name);
        true
    }
}

/// One address announced on one interface.
pub type Pair = (IpAddr, String);

/// The (address, interface) pairs of `of` that `but` does not have, in address order (what a
/// change of the held map releases, or newly announces, with the arguments swapped). Walks `of`
/// once and allocates only for the difference; an address whose interface set is the same
/// `Arc` in both is skipped without looking inside, so a change of one address among 10k held
/// ones costs no copy of all pairs.
pub fn pairs_not_in(of: &Held, but: &Held) -> Vec<Pair> {
    let mut out = Vec::new();
    for (ip, ifaces) in of {
        let other = but.get(ip);
        if other.is_some_and(|o| Arc::ptr_eq(o, ifaces)) {
            continue;
        }
        out.extend(
            ifaces
                .iter()
                .filter(|n| !other.is_some_and(|o| o.contains(*n)))
                .map(|n| (*ip, n.clone())),
        );
    }
    out
}

/// The probe for foreign answerers of `ip` sent from `mac`: an ARP probe from 0.0.0.0
/// ([`arp::probe`]; a kernel with the address on any interface answers it with `arp_ignore=0`)
/// or an NS from the address itself ([`ndp::probe`]; a kernel with the address on the receiving
/// interface answers it with a Solicited NA).
pub fn probe_frame(ip: IpAddr, mac: MacAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => arp::encode(&arp::probe(mac, v4)).to_vec(),
        IpAddr::V6(v6) => ndp::encode(&ndp::probe(mac, v6)),
    }
}

/// Gratuitous frames for `ip` at `mac` as the announcer sends them (ARP request and reply
/// forms for IPv4, one unsolicited NA for IPv6).
pub fn gratuitous_frames(ip: IpAddr, mac: MacAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => [arp::Op::Request, arp::Op::Reply]
            .into_iter()
            .map(|op| arp::encode(&arp::gratuitous(op, mac, v4)).to_vec())
            .collect(),
        IpAddr::V6(v6) => vec![ndp::encode(&ndp::unsolicited_na(mac, v6))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(entries: &[(&str, &[&str])]) -> Held {
        entries
            .iter()
            .map(|(ip, ifs)| {
                let set: BTreeSet<String> = ifs.iter().map(|s| s.to_string()).collect();
                (ip.parse().unwrap(), Arc::new(set))
            })
            .collect()
    }

    fn pair(ip: &str, iface: &str) -> Pair {
        (ip.parse().unwrap(), iface.to_string())
    }

    #[test]
    fn pairs_not_in_is_the_pairwise_difference() {
        let before = held(&[("198.51.100.1", &["eth0"]), ("198.51.100.3", &["eth0"])]);
        let after = held(&[
            ("198.51.100.1", &["eth0", "eth1"]),
            ("198.51.100.2", &["eth0"]),
            ("198.51.100.3", &["eth0"]),
        ]);
        assert_eq!(
            pairs_not_in(&after, &before),
            vec![pair("198.51.100.1", "eth1"), pair("198.51.100.2", "eth0")]
        );
        assert!(pairs_not_in(&before, &after).is_empty());
        // Moved from one interface to another: released on one, announced on the other.
        let moved = held(&[("198.51.100.1", &["eth1"]), ("198.51.100.3", &["eth0"])]);
        assert_eq!(
            pairs_not_in(&before, &moved),
            vec![pair("198.51.100.1", "eth0")]
        );
        assert_eq!(
            pairs_not_in(&moved, &before),
            vec![pair("198.51.100.1", "eth1")]
        );
    }

    #[test]
    fn pairs_not_in_finds_nothing_for_a_shared_set_or_an_equal_copy() {
        let shared = Arc::new(BTreeSet::from(["eth0".to_string()]));
        let a: Held = [("198.51.100.1".parse().unwrap(), shared.clone())].into();
        let b: Held = [("198.51.100.1".parse().unwrap(), shared)].into();
        assert!(pairs_not_in(&a, &b).is_empty());
        // An equal set that is not the same `Arc` compares by content.
        let c = held(&[("198.51.100.1", &["eth0"])]);
        assert!(pairs_not_in(&a, &c).is_empty());
        assert!(pairs_not_in(&c, &a).is_empty());
    }
}
