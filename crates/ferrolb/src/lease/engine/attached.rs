//! Address Leases attached to their holder's presence Lease ([`crate::lease::attach`]), as the
//! agent's engine runs them: written on acquisition, hand-over and release only (plus the
//! 12-hourly refresh for previous-format readers); only presence Leases are renewed.
//!
//! - **Index**: presence Lease → the address Leases whose record names its node
//!   ([`Engine::reindex`]). A change of a presence Lease (another holder, released, absent, or
//!   seen unrenewed for its duration) looks at its attached address Leases again; a renewal of a
//!   live node's presence touches none of them. So no address Lease held by a live node has a
//!   timer: one timer per presence Lease (its expiry) stands for all its addresses. Timers per
//!   address exist only while one is being taken (rank waits) or handed over.
//! - **Fence**: an address whose holder's presence was seen unrenewed for its duration is taken
//!   only after one preconditioned release of that presence Lease ([`Engine::fence`]); one fence
//!   frees every address of the dead node.
//! - **Our own presence**: its standing is the standing of every address we hold
//!   ([`attach::attached_standing`]); when it changes, every address is looked at again; when it
//!   ends (`NotHolder`: fenced, refused, deadline passed without an outage) or a new epoch starts
//!   (presence created or taken back), confirmations end and each address is confirmed again
//!   with one preconditioned write before it is answered.

use super::*;
use crate::lease::attach::{self, decide_attached, judge, AddressSeen, LeaseView, Step};
use crate::lease::presence_name;

impl Engine {
    /// Our presence standing now (`Holder` when the engine keeps no presence Lease).
    pub(super) fn my_presence_standing(&self, now: Instant) -> Standing {
        let Some(p) = &self.presence else {
            return Standing::Holder;
        };
        let Some(e) = self.entries.get(p) else {
            return Standing::NotHolder;
        };
        let failure = e.last_failure.or(if e.in_flight {
            Some(WriteFailure::Unreachable)
        } else {
            None
        });
        let st = standing(
            self.me(),
            e.observed.as_ref(),
            now,
            &self.opts.config,
            failure,
        );
        let ours = e
            .observed
            .as_ref()
            .is_some_and(|o| o.confirmed && o.holder() == Some(self.me()));
        if st == Standing::NotHolder && ours && failure.is_none() && self.shutting_down.is_none() {
            // Our own confirmed record, nothing refused, nothing in flight, and still past the
            // renew deadline: the last renewal was answered (or its timer ran) later than that
            // — a saturated API server or a starved process. Like an outage: sticky, not lost.
            // Lost would stop every address at once and confirm each again with one write (a
            // 10k graceful burst in the lab: a survivor whose renewal was answered 600 ms late
            // dropped 1,000 addresses and wrote 1,000 confirmations into the saturation).
            return Standing::Unreachable;
        }
        st
    }

    /// Keeps `by_presence` in step with the observed record of address Lease `name`.
    pub(super) fn reindex(&mut self, name: &str) {
        if !self.attached_mode() || is_presence_name(name) {
            return;
        }
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        let key = match (&e.attached_to, e.observed.as_ref().and_then(|o| o.holder())) {
            (Some(_), Some(h)) => Some(self.names.intern(&presence_name(h))),
            _ => None,
        };
        if key == e.index_key {
            return;
        }
        let old = std::mem::replace(&mut e.index_key, key.clone());
        if let Some(old) = old {
            if let Some(set) = self.by_presence.get_mut(&old) {
                set.remove(name);
                if set.is_empty() {
                    self.by_presence.remove(&old);
                }
            }
        }
        if let Some(k) = key {
            self.by_presence
                .entry(k)
                .or_default()
                .insert(name.to_string());
        }
    }

    /// A new presence epoch, or ours ended: no address Lease naming us counts as ours until
    /// we have confirmed it with a write of our own.
    pub(super) fn unconfirm_mine(&mut self) {
        let me = self.opts.identity.clone();
        for (n, e) in self.entries.iter_mut() {
            if is_presence_name(n) {
                continue;
            }
            if let Some(o) = e.observed.as_mut() {
                if o.holder() == Some(me.as_str()) {
                    o.confirmed = false;
                }
            }
        }
    }

    /// After our presence Lease was looked at: a change of its standing is the change of every
    /// address we hold (and of every address we may take: only a live node takes).
    pub(super) fn after_my_presence(&mut self, now: Instant) {
        if !self.attached_mode() {
            return;
        }
        let st = self.my_presence_standing(now);
        if st == self.my_standing {
            return;
        }
        tracing::debug!(from = ?self.my_standing, to = ?st, "presence standing changed");
        self.my_standing = st;
        if st == Standing::NotHolder {
            self.unconfirm_mine();
        }
        let names: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !is_presence_name(n))
            .cloned()
            .collect();
        for n in names {
            self.step_address(&n, now);
        }
    }

    /// Another node's presence Lease was looked at: when its holder or expiry changed (or a
    /// fence is still owed), look at its attached address Leases again. Returns the wake-up for
    /// its expiry while it is valid.
    pub(super) fn step_other_presence(&mut self, name: &str, now: Instant) -> Option<Instant> {
        let cfg = self.opts.config.clone();
        let e = self.entries.get_mut(name)?;
        let obs = e.observed.as_ref()?;
        let holder = obs.holder().map(str::to_string);
        let valid = obs.is_valid(now, &cfg);
        let expiry = valid.then(|| obs.expires_at(&cfg));
        let state = (holder.clone(), holder.is_some() && !valid);
        let owed = state.1 && !e.in_flight;
        let changed = e.rare().presence_state.as_ref() != Some(&state);
        e.rare_mut().presence_state = Some(state);
        if changed || owed {
            let attached: Vec<String> = self
                .by_presence
                .get(name)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for n in attached {
                self.step_address(&n, now);
            }
        }
        if owed && !self.server_keeps_up(holder.as_deref(), now) {
            // A fence held back while the server may be what keeps its renewals away
            // ([`Engine::server_keeps_up`]): look again in a retry period.
            return Some(now + cfg.retry_period);
        }
        expiry
    }

    /// One address Lease, attached format (the agent's engine).
    pub(super) fn step_address(&mut self, name: &str, now: Instant) {
        let cfg = self.opts.config.clone();
        let me = self.opts.identity.clone();
        let mine = self.my_presence_standing(now);
        if mine != self.my_standing {
            // Our presence standing changed with the clock and this address is looked at
            // first: every address follows it, this one included. Judged alone, it would go
            // sticky (or lost) without the others, and nothing would look at it again when the
            // standing comes back (a 10k lab run left half of each agent's addresses sticky).
            self.after_my_presence(now);
            return;
        }
        let Some(e) = self.entries.get(name) else {
            return;
        };
        let st = attach::attached_standing(&me, e.observed.as_ref(), mine, e.last_failure);
        self.report_standing(name, st, now);
        let wake = self.handover_wake(name, now);
        let Some((obs, desired, intent)) = self.write_preamble(name, wake, now) else {
            return;
        };
        let attached_to = self.entries.get(name).and_then(|e| e.attached_to.clone());
        let holder_presence = obs.holder().filter(|h| *h != me).map(presence_name);
        let p_obs = holder_presence
            .as_ref()
            .and_then(|p| self.entries.get(p))
            .and_then(|e| e.observed.clone());
        let seen = AddressSeen {
            lease: Some(&obs),
            attached_to: attached_to.as_deref(),
            holder_presence: p_obs.as_ref(),
        };
        let mut step = decide_attached(&me, seen, mine, now, &cfg, intent);
        if let (Step::Act(Action::Create | Action::Acquire { .. }), Some(d)) = (&step, &desired) {
            if let Some(t) = self.defer_behind_first(name, d, &obs, now) {
                step = Step::Act(Action::WaitUntil(t));
            }
        }
        let rewrite = self.entries.get(name).is_some_and(|e| e.rewrite);
        if rewrite && mine == Standing::Holder && matches!(step, Step::Act(Action::Hold { .. })) {
            // What the Lease says changed (its Services): one write, as the holder.
            step = Step::Act(Action::Renew);
        }
        match step {
            Step::Fence => {
                self.set_wake(name, wake);
                if let Some(p) = holder_presence {
                    self.fence(&p, now);
                }
            }
            Step::Act(Action::WaitUntil(_))
                if attached_to.is_some()
                    && matches!(
                        judge(&obs, attached_to.as_deref(), p_obs.as_ref(), now, &cfg),
                        LeaseView::Held { .. }
                    ) =>
            {
                // Held by a live node: its presence Lease's expiry timer stands for this one.
                self.set_wake(name, wake);
            }
            Step::Act(a) => self.act(name, a, &obs, desired, wake, now),
        }
    }

    /// Fence presence Lease `p` (a dead node's): one preconditioned release with the
    /// resourceVersion under which it was seen unrenewed. Not while the watch is down, nor
    /// twice at once, nor again with a resourceVersion already refused.
    pub(super) fn fence(&mut self, p: &str, now: Instant) {
        if self.watch_down.is_some() || self.shutting_down.is_some() {
            return;
        }
        let Some(e) = self.entries.get(p) else {
            return;
        };
        if e.in_flight || e.queued || e.rare().retry_after.is_some_and(|t| now < t) {
            return;
        }
        let Some(obs) = e.observed.clone() else {
            return;
        };
        if obs.holder().is_none() || e.refused_at(&obs.resource_version) {
            return;
        }
        if !self.server_keeps_up(obs.holder(), now) {
            // Held back: its presence's step looks again in a retry period.
            return;
        }
        tracing::info!(
            presence = p,
            holder = obs.holder(),
            "fencing the presence Lease of a node seen unrenewed for its duration"
        );
        self.unsettled(now);
        self.spawn(
            p,
            Op::Update(OpKind::Fence),
            obs.resource_version.clone(),
            LeaseWant::default(),
        );
    }

    /// When a held address Lease should be looked at again for a hand-over (rebalancing): only
    /// addresses whose preferred node is another one have such a timer.
    fn handover_wake(&self, name: &str, now: Instant) -> Option<Instant> {
        let after = self.opts.rebalance_after?;
        let e = self.entries.get(name)?;
        if e.reported != Reported::Held {
            return None;
        }
        let (rank, pref) = e.rank.as_ref()?;
        if *rank == 0 || pref.as_deref().is_none_or(|p| p == self.me()) {
            return None;
        }
        let mut t = (e.held_since? + after).max(self.next_handover);
        if let Some(u) = e.rare().no_handover_until {
            t = t.max(u);
        }
        if t <= now {
            // Due but not handed over now (its preferred node shows no sign of life): later.
            t = now + after;
        }
        Some(t)
    }

    /// Garbage collection of an attached address Lease: `None` when the previous rules apply
    /// (not attached, or no holder), `Some(None)` while its holder's presence names that holder
    /// (alive, or dead but not fenced yet: the presence Lease is collected first), else
    /// `Some(Some(t))`: free since `t`.
    pub(super) fn attached_free_since(
        &self,
        name: &str,
        obs: &Observed,
    ) -> Option<Option<Instant>> {
        if !self.attached_mode() || is_presence_name(name) {
            return None;
        }
        self.entries.get(name)?.attached_to.as_ref()?;
        let holder = obs.holder()?;
        let p = self
            .entries
            .get(&presence_name(holder))
            .and_then(|e| e.observed.as_ref());
        match p {
            Some(p) if p.holder() == Some(holder) => Some(None),
            Some(p) => Some(Some(obs.observed_at.max(p.observed_at))),
            None => Some(Some(obs.observed_at)),
        }
    }

    /// A graceful stop releases our presence Lease only once no address Lease names us any
    /// more (nor has a write in flight or queued). A presence seen released frees every
    /// address attached to it: seen before the address releases, it would send the other nodes
    /// after address records that still name us, with resourceVersions our own releases are
    /// about to replace (409, then a retry period: graceful failover p99 220 ms instead of one
    /// watch round trip). It waits half the renew deadline at most: a node stopping with more
    /// addresses than it can release before its shutdown deadline (a debug build with 950
    /// addresses in the lab) must still free the rest at once, not leave them to a fence after
    /// its presence expired.
    pub(super) fn presence_release_waits(&self, name: &str, now: Instant) -> bool {
        if self.shutting_down.is_none() || self.presence.as_deref() != Some(name) {
            return false;
        }
        if self.presence_release_latest().is_some_and(|t| now >= t) {
            return false;
        }
        let me = self.me();
        self.entries.iter().any(|(n, e)| {
            !is_presence_name(n)
                && !self.left_to_presence.contains(n)
                && (e.in_flight
                    || e.queued
                    || e.observed.as_ref().is_some_and(|o| o.holder() == Some(me)))
        })
    }

    /// A graceful stop begins: the address Leases attached to our presence Lease whose every
    /// other candidate runs an agent that reads attached Leases (its live presence Lease says
    /// so: [`attach::ANN_READS_ATTACHED`]) are not released one by one — the release of our
    /// presence Lease frees them all in one write, and the others take them with their rank
    /// waits. Releasing each first doubled a stopping node's burst of writes (its releases,
    /// then the others' acquisitions) and held the presence release back behind them. The
    /// rest (a candidate of the previous format, or one not seen alive, which could never
    /// take an attached Lease from a released presence) are released as before. Reported
    /// `Released` now: the caller stopped answering everything before the stop.
    pub(super) fn leave_to_presence(&mut self, now: Instant) {
        let Some(p) = self.presence.clone() else {
            return;
        };
        let cfg = self.opts.config.clone();
        let me = self.me().to_string();
        let others_read_attached = |d: &LeaseWant| {
            d.candidates.iter().filter(|c| **c != me).all(|c| {
                self.entries
                    .get(&crate::lease::presence_name(c))
                    .is_some_and(|e| {
                        e.reads_attached
                            && e.observed.as_ref().is_some_and(|o| {
                                o.holder() == Some(c.as_str()) && o.is_valid(now, &cfg)
                            })
                    })
            })
        };
        let left: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, e)| {
                !is_presence_name(n)
                    && !e.in_flight
                    && e.attached_to.as_deref() == Some(p.as_str())
                    && e.observed
                        .as_ref()
                        .is_some_and(|o| o.holder() == Some(me.as_str()))
                    && e.desired.as_ref().is_some_and(&others_read_attached)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in left {
            if self
                .entries
                .get(&n)
                .is_some_and(|e| e.reported != Reported::NotHeld)
            {
                self.report_released(&n);
            }
            self.left_to_presence.insert(n);
        }
    }

    /// The latest instant of a graceful stop at which our presence Lease is released.
    pub(super) fn presence_release_latest(&self) -> Option<Instant> {
        let rd = self.opts.config.renew_deadline;
        self.shutting_down.map(|deadline| deadline - rd + rd / 2)
    }

    /// During a graceful stop, a change of an address Lease (a write answered, the watch
    /// showing a release) may let our presence release go out.
    pub(super) fn after_shutdown_progress(&mut self, name: &str, now: Instant) {
        if self.shutting_down.is_none() || is_presence_name(name) {
            return;
        }
        if let Some(p) = self.presence.clone() {
            if !self.presence_release_waits(&p, now) {
                self.step(&p, now);
            }
        }
    }
}
