//! What this node answers for right now: a pure state machine fed by the desired groups
//! (eligibility), the lease engine's per-lease transitions and the announcer's conflicts.
//!
//! # Fencing and API outages (issue 4 §5)
//! - Only a group whose lease this node *acquired* is announced ([`Hold::Held`]).
//! - Lease lost (another holder seen, 409) or released → stop at once.
//! - Lease could have expired because renewals failed with the API server *unreachable*
//!   (connection refused, timeouts, 5xx): with sticky mode (default) keep announcing
//!   ([`Hold::Sticky`]) — no other node can have been told it holds the lease by an API server
//!   we cannot reach either, unless the API server is only unreachable *from us*; in that case the
//!   other node acquires the lease and sends its gratuitous ARP / unsolicited NA burst, which the
//!   announcer reports as a conflict, and we yield at once ([`Hold::Yielded`]) for the whole group.
//!   Without sticky mode the group stops like a lost lease.
//! - A conflict on a group we hold with a valid lease is not a reason to yield (the other station
//!   is the stale one: our own burst on acquiring made it yield). When it was an announcement,
//!   the agent core answers it with a burst of its own (`Core::defend`): a sticky holder whose
//!   link was down while we took over never heard our burst, and comes back announcing; it
//!   yields to our defence.
//! - A group that leaves the desired set (Service deleted, policy changed, node no longer
//!   eligible) stops at once, whatever its lease state.
//!
//! # Re-announcing after an API outage (issue 11 §3)
//! When the API server is reachable again, every address of a group whose lease is valid
//! ([`Hold::Held`], [`Holdings::confirmed`]) gets a gratuitous burst: whatever cut the node off
//! may have flushed clients' and switches' caches too. A sticky group is not re-announced on the
//! reconnect itself (its lease may have moved meanwhile) but when its renewal gets through
//! (sticky → held, [`Holdings::take_reconfirmed`]); one that turns out lost stops instead.
//! Neither happens after a *short* outage or sticky period (shorter than the lease duration,
//! `quiet`; [`Holdings::reannounce_after_outage`], [`Holdings::on_lease`]): a renewal that missed the renew deadline
//! on a busy API server is no reason to send thousands of gratuitous frames, nobody can have
//! taken over meanwhile (a renewal that gets through was not fenced), and what flushes caches
//! (a switch or link restarting) takes longer; a link that flaps is re-announced on its own
//! carrier events (`agent::linkhold`). Under load such hiccups came every few seconds and each
//! re-announced every held address (README, "Lab measurements", run F).

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::eligibility::Group;
use crate::net::announcer::Held;

/// What the lease engine reports for one lease (mapped from `crate::lease`'s events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// We hold it (acquired or renewed after a sticky period).
    Acquired,
    /// Another node holds it, or our write got a 409.
    Lost,
    /// Our lease could have expired and renewals fail because the API server is unreachable.
    ExpiredUnreachable,
    /// We released it (shutdown, or no longer desired).
    Released,
}

/// The state of one group on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// We hold the lease: announce.
    Held,
    /// Lease possibly expired, API unreachable, sticky: keep announcing until a conflict.
    Sticky,
    /// Was sticky and another station announced one of the addresses: silent until re-acquired.
    Yielded,
}

/// Result of a conflict report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictOutcome {
    /// We stopped announcing this group (it was sticky).
    Yielded(String),
    /// We hold a valid lease for it; the other station is stale.
    Ignored(String),
    /// We ride an API outage out sticky and another station answered our probe: our lease may
    /// have moved, so this is most likely its new holder, not a foreign answerer. Nothing
    /// yields to a probe answer (it may be a kube-proxy IPVS node), and nothing is reported.
    StickyAnswered(String),
    /// The address is not ours.
    NotOurs,
}

/// The agent's announcement state.
#[derive(Debug, Clone)]
pub struct Holdings {
    sticky: bool,
    desired: BTreeMap<Arc<str>, Arc<Group>>,
    state: BTreeMap<String, Hold>,
    /// Groups held again after a sticky period of at least `quiet`, not yet taken by
    /// [`Holdings::take_reconfirmed`].
    reconfirmed: BTreeSet<String>,
    /// When each sticky group went sticky.
    sticky_since: HashMap<String, Instant>,
    /// A sticky period shorter than this ends without a re-announcement (the lease duration).
    quiet: Duration,
}

impl Holdings {
    /// `quiet`: a group held again after being sticky for less than this is not re-announced.
    pub fn new(sticky: bool, quiet: Duration) -> Self {
        Holdings {
            sticky,
            desired: BTreeMap::new(),
            state: BTreeMap::new(),
            reconfirmed: BTreeSet::new(),
            sticky_since: HashMap::new(),
            quiet,
        }
    }

    /// Replaces the groups this node contends for (only `eligible_here` ones are kept).
    /// Returns the keys that were dropped while announced or held (stopped at once).
    pub fn set_desired<'a>(
        &mut self,
        groups: impl IntoIterator<Item = &'a Arc<Group>>,
    ) -> Vec<String> {
        // Updated in place: the entries of unchanged groups stay where they are (a map rebuilt
        // on every recompute would allocate every key again).
        // Inserted one by one, not collected: no vector of every pair and sort scratch beside it.
        let mut wanted: BTreeMap<&str, &Arc<Group>> = BTreeMap::new();
        for g in groups.into_iter().filter(|g| g.eligible_here) {
            wanted.insert(&g.key, g);
        }
        self.desired.retain(|k, _| wanted.contains_key(&**k));
        for (k, g) in wanted {
            match self.desired.get_mut(k) {
                Some(kept) if Arc::ptr_eq(kept, g) => {}
                Some(kept) => *kept = g.clone(),
                None => {
                    self.desired.insert(g.key.clone(), g.clone());
                }
            }
        }
        let gone: Vec<String> = self
            .state
            .keys()
            .filter(|k| !self.desired.contains_key(k.as_str()))
            .cloned()
            .collect();
        for k in &gone {
            self.forget(k);
        }
        gone
    }

    fn forget(&mut self, key: &str) {
        self.state.remove(key);
        self.reconfirmed.remove(key);
        self.sticky_since.remove(key);
    }

    /// Applies a lease transition for `key`, reported at `now`.
    pub fn on_lease(&mut self, key: &str, t: Transition, now: Instant) {
        match t {
            Transition::Acquired if self.desired.contains_key(key) => {
                let was = self.state.insert(key.to_string(), Hold::Held);
                let since = self.sticky_since.remove(key);
                if was == Some(Hold::Sticky)
                    && since.is_none_or(|t| now.saturating_duration_since(t) >= self.quiet)
                {
                    self.reconfirmed.insert(key.to_string());
                }
            }
            Transition::Acquired => {}
            Transition::Lost | Transition::Released => self.forget(key),
            Transition::ExpiredUnreachable => match self.state.get(key) {
                Some(Hold::Held) if self.sticky => {
                    self.state.insert(key.to_string(), Hold::Sticky);
                    self.sticky_since.insert(key.to_string(), now);
                }
                Some(Hold::Sticky) | Some(Hold::Yielded) => {}
                _ => self.forget(key),
            },
        }
    }

    /// Key of the desired group that contains `ip`.
    fn group_of(&self, ip: IpAddr) -> Option<String> {
        self.desired
            .values()
            .find(|g| g.addresses.contains(&ip))
            .map(|g| g.key.to_string())
    }

    /// Another station announced `ip`: a sticky group containing it yields.
    pub fn on_conflict(&mut self, ip: IpAddr) -> ConflictOutcome {
        let Some(key) = self.group_of(ip) else {
            return ConflictOutcome::NotOurs;
        };
        match self.state.get(&key) {
            Some(Hold::Sticky) => {
                self.state.insert(key.clone(), Hold::Yielded);
                self.sticky_since.remove(&key);
                ConflictOutcome::Yielded(key)
            }
            Some(Hold::Held) => ConflictOutcome::Ignored(key),
            _ => ConflictOutcome::NotOurs,
        }
    }

    /// Another station answered our ARP/NDP probe for `ip` (`net::Verdict::probe_answer`): it
    /// has the address, but it announced no takeover, so nothing yields, not even a sticky group
    /// (see `agent::conflicts`).
    pub fn on_probe_answer(&self, ip: IpAddr) -> ConflictOutcome {
        let Some(key) = self.group_of(ip) else {
            return ConflictOutcome::NotOurs;
        };
        match self.state.get(&key) {
            Some(Hold::Held) => ConflictOutcome::Ignored(key),
            Some(Hold::Sticky) => ConflictOutcome::StickyAnswered(key),
            _ => ConflictOutcome::NotOurs,
        }
    }

    /// The state of one group, if any.
    pub fn hold(&self, key: &str) -> Option<Hold> {
        self.state.get(key).copied()
    }

    /// The desired group for `key`.
    pub fn group(&self, key: &str) -> Option<&Group> {
        self.desired.get(key).map(Arc::as_ref)
    }

    /// The groups this node contends for, by key (shared: callers may keep them).
    pub fn desired_groups(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Group>)> {
        self.desired.iter()
    }

    /// Number of groups whose lease we hold (not counting sticky ones).
    pub fn held_count(&self) -> usize {
        self.state.values().filter(|h| **h == Hold::Held).count()
    }

    /// Number of groups announced in sticky mode.
    pub fn sticky_count(&self) -> usize {
        self.state.values().filter(|h| **h == Hold::Sticky).count()
    }

    /// The announcer's desired state: address → interfaces, for held and sticky groups.
    pub fn announced(&self) -> Held {
        self.addresses_of(|_, hold| matches!(hold, Hold::Held | Hold::Sticky))
    }

    /// Address → interfaces of the groups whose lease is valid (held, not sticky): what gets a
    /// gratuitous burst when the API server is reachable again after an outage.
    pub fn confirmed(&self) -> Held {
        self.addresses_of(|_, hold| hold == Hold::Held)
    }

    /// What to re-announce now that the API server answers again after an outage that lasted
    /// `lasted`: the [`Holdings::confirmed`] addresses, or nothing after an outage shorter than
    /// `quiet` (see the module doc).
    pub fn reannounce_after_outage(&self, lasted: Duration) -> Option<Held> {
        (lasted >= self.quiet).then(|| self.confirmed())
    }

    /// Address → interfaces of the groups held again after a sticky period since the last call
    /// (their renewal got through after an outage): they get a gratuitous burst too.
    pub fn take_reconfirmed(&mut self) -> Held {
        let keys = std::mem::take(&mut self.reconfirmed);
        self.addresses_of(|key, hold| hold == Hold::Held && keys.contains(key))
    }

    fn addresses_of(&self, pick: impl Fn(&str, Hold) -> bool) -> Held {
        let mut out = Held::new();
        for (key, hold) in &self.state {
            if !pick(key, *hold) {
                continue;
            }
            let Some(g) = self.desired.get(key.as_str()) else {
                continue;
            };
            for ip in &g.addresses {
                // The group's one interface set, shared; merged into a new set only for an
                // address that two groups announce on different interfaces.
                match out.entry(*ip) {
                    btree_map::Entry::Vacant(v) => {
                        v.insert(g.interfaces.clone());
                    }
                    btree_map::Entry::Occupied(mut o) => {
                        if !Arc::ptr_eq(o.get(), &g.interfaces) {
                            Arc::make_mut(o.get_mut()).extend(g.interfaces.iter().cloned());
                        }
                    }
                }
            }
        }
        out
    }

    /// Stops everything (shutdown): nothing is announced afterwards.
    pub fn clear(&mut self) {
        self.state.clear();
        self.reconfirmed.clear();
        self.sticky_since.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::eligibility::{group_key, ServiceRef};
    use super::*;

    fn group(ips: &[&str], ifaces: &[&str], here: bool) -> Arc<Group> {
        let addresses =
            super::super::eligibility::address_set(ips.iter().map(|s| s.parse().unwrap()));
        Arc::new(Group {
            key: group_key(&addresses).into(),
            addresses,
            services: [ServiceRef::new("default", "web")].into(),
            candidates: Arc::new(vec!["n1".into(), "n2".into()]),
            interfaces: Arc::new(ifaces.iter().map(|s| (*s).to_string()).collect()),
            eligible_here: here,
        })
    }
    fn ifaces(names: &[&str]) -> crate::net::announcer::Ifaces {
        Arc::new(names.iter().map(|s| (*s).to_string()).collect())
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_acquired_groups_are_announced() {
        let g1 = group(&["198.51.100.1"], &["eth0"], true);
        let g2 = group(
            &["198.51.100.2", "2001:db8:100::2"],
            &["eth0", "eth1"],
            true,
        );
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g1, &g2]);
        assert!(h.announced().is_empty());
        h.on_lease(&g2.key, Transition::Acquired, Instant::now());
        let a = h.announced();
        assert_eq!(a.len(), 2);
        assert_eq!(a[&ip("2001:db8:100::2")].len(), 2);
        assert!(!a.contains_key(&ip("198.51.100.1")));
        assert_eq!(h.held_count(), 1);
    }

    #[test]
    fn acquired_for_an_undesired_group_is_ignored() {
        let g = group(&["198.51.100.1"], &["eth0"], false);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        assert!(h.announced().is_empty());
    }

    #[test]
    fn lost_and_released_stop_at_once() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        for t in [Transition::Lost, Transition::Released] {
            let mut h = Holdings::new(true, Duration::ZERO);
            h.set_desired([&g]);
            h.on_lease(&g.key, Transition::Acquired, Instant::now());
            assert_eq!(h.announced().len(), 1);
            h.on_lease(&g.key, t, Instant::now());
            assert!(h.announced().is_empty(), "{t:?}");
        }
    }

    #[test]
    fn sticky_keeps_announcing_until_a_conflict() {
        let g = group(&["198.51.100.1", "198.51.100.2"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        assert_eq!(h.hold(&g.key), Some(Hold::Sticky));
        assert_eq!(h.announced().len(), 2);
        assert_eq!(
            h.on_conflict(ip("198.51.100.2")),
            ConflictOutcome::Yielded(g.key.to_string())
        );
        // The whole group (one lease) yields.
        assert!(h.announced().is_empty());
        // A later expiry report keeps it silent; re-acquiring announces again.
        h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        assert!(h.announced().is_empty());
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        assert_eq!(h.announced().len(), 2);
    }

    #[test]
    fn after_an_outage_held_groups_and_reconfirmed_sticky_ones_are_reannounced() {
        let held = group(&["198.51.100.1"], &["eth0"], true);
        let sticky = group(&["198.51.100.2"], &["eth1"], true);
        let lost = group(&["198.51.100.3"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&held, &sticky, &lost]);
        for g in [&held, &sticky, &lost] {
            h.on_lease(&g.key, Transition::Acquired, Instant::now());
        }
        assert!(
            h.take_reconfirmed().is_empty(),
            "first acquisitions are new, not reconfirmed"
        );
        for g in [&sticky, &lost] {
            h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        }
        // The API is back: only the valid lease is re-announced at once…
        let at_once = h.confirmed();
        assert_eq!(
            at_once,
            Held::from([(ip("198.51.100.1"), ifaces(&["eth0"]))])
        );
        // …the sticky groups when their renewal gets through; a lost one never.
        h.on_lease(&sticky.key, Transition::Acquired, Instant::now());
        h.on_lease(&lost.key, Transition::Lost, Instant::now());
        assert_eq!(
            h.take_reconfirmed(),
            Held::from([(ip("198.51.100.2"), ifaces(&["eth1"]))])
        );
        assert!(h.take_reconfirmed().is_empty(), "taken once");
        // Renewed while held: nothing to re-announce.
        h.on_lease(&held.key, Transition::Acquired, Instant::now());
        assert!(h.take_reconfirmed().is_empty());
        // Sticky, then the group leaves the desired set before the renewal: forgotten.
        h.on_lease(&sticky.key, Transition::ExpiredUnreachable, Instant::now());
        h.set_desired([&held]);
        h.on_lease(&sticky.key, Transition::Acquired, Instant::now());
        assert!(h.take_reconfirmed().is_empty());
    }

    #[test]
    fn no_sticky_stops_when_the_lease_could_have_expired() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(false, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        assert!(h.announced().is_empty());
        assert_eq!(h.hold(&g.key), None);
    }

    #[test]
    fn expiry_of_a_lease_we_never_held_announces_nothing() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        assert!(h.announced().is_empty());
    }

    #[test]
    fn conflict_on_a_valid_lease_is_ignored() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        assert_eq!(
            h.on_conflict(ip("198.51.100.1")),
            ConflictOutcome::Ignored(g.key.to_string())
        );
        assert_eq!(h.announced().len(), 1);
        assert_eq!(h.on_conflict(ip("198.51.100.9")), ConflictOutcome::NotOurs);
    }

    #[test]
    fn an_answer_to_our_probe_never_makes_a_group_yield() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        assert_eq!(
            h.on_probe_answer(ip("198.51.100.1")),
            ConflictOutcome::NotOurs
        );
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        h.on_lease(&g.key, Transition::ExpiredUnreachable, Instant::now());
        assert_eq!(h.hold(&g.key), Some(Hold::Sticky));
        assert_eq!(
            h.on_probe_answer(ip("198.51.100.1")),
            ConflictOutcome::StickyAnswered(g.key.to_string())
        );
        assert_eq!(h.hold(&g.key), Some(Hold::Sticky), "still announcing");
        assert_eq!(h.announced().len(), 1);
        assert_eq!(
            h.on_probe_answer(ip("198.51.100.9")),
            ConflictOutcome::NotOurs
        );
    }

    #[test]
    fn undesired_groups_stop_at_once() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        let gone = h.set_desired([]);
        assert_eq!(gone, vec![g.key.to_string()]);
        assert!(h.announced().is_empty());
    }

    #[test]
    fn interface_change_of_a_held_group_is_followed() {
        let g = group(&["198.51.100.1"], &["eth0"], true);
        let mut h = Holdings::new(true, Duration::ZERO);
        h.set_desired([&g]);
        h.on_lease(&g.key, Transition::Acquired, Instant::now());
        let g2 = group(&["198.51.100.1"], &["eth1"], true);
        assert!(h.set_desired([&g2]).is_empty());
        let a = h.announced();
        assert_eq!(a[&ip("198.51.100.1")], ifaces(&["eth1"]));
    }
}
