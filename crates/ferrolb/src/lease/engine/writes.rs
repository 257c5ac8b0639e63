//! The engine's write path: which writes are sent (bounded concurrency, an urgent and a normal
//! queue when the slots are full; each becomes an [`Effect::Write`] the driver sends as a task
//! of its own), and how their results are folded back in.

use super::*;

impl Engine {
    pub(super) fn spawn_update(
        &mut self,
        name: &str,
        kind: OpKind,
        obs: &Observed,
        desired: Option<LeaseWant>,
    ) {
        self.spawn(
            name,
            Op::Update(kind),
            obs.resource_version.clone(),
            desired.unwrap_or_default(),
        );
    }

    pub(super) fn spawn(
        &mut self,
        name: &str,
        op: Op,
        used_rv: Option<String>,
        desired: LeaseWant,
    ) {
        if op == Op::Update(OpKind::Release) && self.release_waits_for_stop(name) {
            return;
        }
        if self.shutting_down.is_some() && self.left_to_presence.contains(name) {
            // Freed by the release of our presence Lease (`Engine::leave_to_presence`).
            return;
        }
        // Our presence renewals and fences never wait behind a burst of address writes: a
        // presence renewal stuck in the queue past the renew deadline would stop every address
        // this node answers, and one fence unlocks all of a dead node's addresses.
        let jumps_queue = self.presence.as_deref() == Some(name) || op == Op::Update(OpKind::Fence);
        let slot_free = jumps_queue || self.write_slot_free();
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if !slot_free {
            // Every slot is taken (a burst of creates, a slow API server): wait in line rather
            // than as a task holding a copy of the lease, its labels and a client each.
            if !e.queued {
                e.queued = true;
                // Presence renewals, releases and fences first: keep what we hold, hand over
                // what we give up, and unlock a dead node's addresses (one fence frees all).
                let urgent = matches!(
                    op,
                    Op::Update(OpKind::Renew | OpKind::Release | OpKind::Fence)
                );
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
        let release = op == Op::Update(OpKind::Release);
        if release {
            // Set before the write: the watch may show the release before its answer arrives.
            e.released_by_us = true;
        }
        self.in_flight += 1;
        if release {
            let _ = self.released_before_the_write(name);
        }
        // An address Lease this node takes or confirms is attached to our presence Lease.
        let attached = self.attached_mode()
            && !is_presence_name(name)
            && matches!(
                op,
                Op::Create | Op::Update(OpKind::Acquire(_) | OpKind::Renew)
            );
        let mut labels = self.opts.base_labels.clone();
        let (want_labels, want_annotations) = desired.meta.pairs();
        labels.extend(crate::lease::pairs_map(want_labels));
        let mut annotations = crate::lease::pairs_map(want_annotations);
        if matches!(op, Op::Update(OpKind::Clear | OpKind::Fence)) && is_presence_name(name) {
            // A write by another node starts from a base rebuilt from the watched record, without
            // the metadata: say again what the Lease is, or it would drop out of every agent's
            // label-selected watch (and its node could never take it back).
            labels.insert(
                crate::lease::LABEL_ROLE.to_string(),
                crate::lease::ROLE_PRESENCE.to_string(),
            );
            let holder = self
                .entries
                .get(name)
                .and_then(|e| e.observed.as_ref())
                .and_then(|o| o.holder().map(str::to_string));
            if let Some(h) = holder {
                annotations.insert(crate::lease::ANN_NODE.to_string(), h);
            }
        }
        if attached {
            if let Some(p) = &self.presence {
                annotations.insert(super::super::attach::ANN_ATTACHED_TO.to_string(), p.clone());
            }
        }
        let stats = &self.stats;
        match op {
            Op::Create => stats.creates.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Acquire(_)) => stats.acquires.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Renew) => stats.renews.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Release) => stats.releases.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Clear) => stats.clears.fetch_add(1, Ordering::Relaxed),
            Op::Update(OpKind::Fence) => stats.fences.fetch_add(1, Ordering::Relaxed),
            Op::Delete => stats.deletes.fetch_add(1, Ordering::Relaxed),
        };
        if self.presence.as_deref() == Some(name) {
            stats.presence_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.effects.push(Effect::Write(Box::new(WriteReq {
            name: name.to_string(),
            op,
            used_rv,
            object,
            labels,
            annotations,
            attached,
        })));
    }

    pub(crate) fn on_done(&mut self, d: Done, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.presence.as_deref() == Some(d.name.as_str()) {
            match &d.result {
                Ok(_) => self.presence_unanswered.clear(),
                Err(_) if self.presence_unanswered.len() < UNANSWERED_KEPT => self
                    .presence_unanswered
                    .push((d.wall_sent.clone(), d.sent_at)),
                // Full: the oldest kept stand for the rest (never later than theirs).
                Err(_) => {}
            }
        }
        self.adapt_write_limit(&d, now);
        let name = d.name.clone();
        self.on_result(d, now);
        self.drain_queue(now);
        self.after_shutdown_progress(&name, now);
    }

    /// Fewer than the current write limit (`max_concurrent_writes` at most, see
    /// [`Engine::adapt_write_limit`]) are in flight.
    pub(super) fn write_slot_free(&self) -> bool {
        self.in_flight < self.write_limit
    }

    /// The writes in flight follow the API server's answers, additive increase and
    /// multiplicative decrease as in TCP: a write answered after more than a retry period (or
    /// not at all) halves the limit, at most once per retry period and not below
    /// [`MIN_WRITE_LIMIT`]; one answered within a quarter of it raises the limit by one, up to
    /// `max_concurrent_writes`. Our presence renewals jump our own queue, but not the API
    /// server's: with 64 address writes of each node in flight on a saturated server (a 10k
    /// burst in the lab: every write answered after 600 ms or not at all) they missed the renew
    /// deadline, the addresses went sticky and were re-announced after each short outage, and
    /// the survivors fenced each other.
    fn adapt_write_limit(&mut self, d: &Done, now: Instant) {
        let max = self.opts.max_concurrent_writes.max(1);
        let retry = self.opts.config.retry_period;
        let took = now.saturating_duration_since(d.sent_at);
        let unanswered = matches!(&d.result, Err(e) if e.kind == WriteFailure::Unreachable);
        if unanswered || took > retry {
            if self.limit_cut_at.is_none_or(|t| now >= t + retry) {
                self.write_limit = (self.write_limit / 2).max(MIN_WRITE_LIMIT.min(max));
                self.limit_cut_at = Some(now);
            }
        } else if took < retry / 4 {
            self.write_limit = (self.write_limit + 1).min(max);
        }
    }

    /// Gives free write slots to queued leases, renewals and releases first.
    pub(super) fn drain_queue(&mut self, now: Instant) {
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

    /// A write's result: the outage bookkeeping, the lease's entry, then the next step — of
    /// every lease when the result ended an outage, else of this one.
    pub(super) fn on_result(&mut self, d: Done, now: Instant) {
        let outage_ended = match &d.result {
            Err(err) if err.kind == WriteFailure::Unreachable => {
                self.note_unreachable(now, false, &err.message);
                false
            }
            // Any answer (also a 409 or a refusal) means the API server is reachable.
            _ => self.note_reachable(now),
        };
        let name = d.name.clone();
        let failed = d.result.is_err();
        let known = self.record_result(d, now);
        // Only a release is written while `releasing` is set (one write per lease at a time).
        let released_early = self
            .entries
            .get_mut(&name)
            .is_some_and(|e| std::mem::take(&mut e.releasing));
        if released_early && failed {
            self.release_did_not_land(&name, now);
        }
        if outage_ended {
            self.step_all(now);
        } else if known {
            self.step(&name, now);
        }
    }

    /// Records a write's result in its lease's entry; false when the lease has no entry.
    fn record_result(&mut self, d: Done, now: Instant) -> bool {
        let cfg = self.opts.config.clone();
        let own_presence = self.presence.as_deref() == Some(d.name.as_str());
        let me = self.opts.identity.as_str();
        let Some(e) = self.entries.get_mut(&d.name) else {
            return false;
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
                e.clear_rare(|r| {
                    r.conflict_rv = None;
                    r.retry_after = None;
                });
                if matches!(
                    d.op,
                    Op::Create | Op::Update(OpKind::Acquire(_) | OpKind::Renew)
                ) {
                    e.rewrite = false;
                }
                if !matches!(d.op, Op::Update(OpKind::Release | OpKind::Clear)) {
                    e.released_by_us = false;
                }
                if !newer_known {
                    e.observed = Some(Observed::written(&lease, d.sent_at));
                    e.attached_to = super::attached_to_of(&mut self.names, &lease);
                    e.object = Some(super::base::Base::of(&lease));
                    self.reindex(&d.name);
                }
                let new_epoch = matches!(d.op, Op::Create | Op::Update(OpKind::Acquire(_)));
                if new_epoch && self.presence.as_deref() == Some(d.name.as_str()) {
                    // Our presence Lease (re)created or taken back: a new presence epoch.
                    self.unconfirm_mine();
                }
            }
            Ok(None) => {
                // Deleted.
                e.observed = Some(Observed::absent(now));
                e.object = None;
                e.attached_to = None;
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
                        e.rare_mut().retry_after = Some(now + cfg.lease_duration);
                    }
                    (WriteFailure::Conflict, Op::Update(OpKind::Renew))
                        if own_presence
                            && e.observed.as_ref().and_then(|o| o.holder()) == Some(me) =>
                    {
                        // Our presence, by the record we saw, refused with 409: most likely
                        // against a renewal of ours that timed out at the client and landed
                        // (a saturated API server). Not a loss until the watch shows another
                        // holder: meanwhile the write counts as unanswered (held until the
                        // renew deadline, then sticky as in an outage). A node that fenced us
                        // saw our last renewal at least a lease duration before, so our renew
                        // deadline had passed by then anyway.
                        e.last_failure = Some(WriteFailure::Unreachable);
                        let r = e.rare_mut();
                        r.conflict_rv = d.used_rv.clone();
                        r.retry_after = Some(now + cfg.retry_period);
                    }
                    (WriteFailure::Conflict, _) => {
                        let r = e.rare_mut();
                        r.conflict_rv = d.used_rv.clone();
                        r.retry_after = Some(now + cfg.retry_period);
                    }
                    _ => e.rare_mut().retry_after = Some(now + cfg.retry_period),
                }
                if d.op == Op::Update(OpKind::Release) {
                    e.released_by_us = false;
                }
            }
        }
        self.reindex(&d.name);
        true
    }
}
