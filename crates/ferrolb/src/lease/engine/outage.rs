//! API outages as the engine sees them: logged once when they start and once when they end, and
//! never taken for expiries (issue 10 §5):
//! - clocks restart when the watch fails and again when it resyncs;
//! - when this node's own requests have failed (an outage seen through its writes: its watch
//!   may be silently stale, a dead link does not break a TCP stream) and get through again,
//!   every other node's Lease is given a full lease duration plus the renew deadline from then
//!   (the longest a renewal stuck behind the outage takes before its holder sends a fresh one)
//!   — unless the watch kept delivering (no gap over two retry periods, in which a live node
//!   renews twice): then we saw the others' renewals (our writes timed out on a busy server,
//!   theirs got through) and a node that renewed nothing is as dead as it looks. Without that
//!   exception, write timeouts every second on a saturated server held back the fence of a
//!   crashed node for 26 s at 10k addresses.
//!   During the outage this node fences nothing anyway: its own presence stops counting as live
//!   after the renew deadline, before any other presence it saw renewed can run out, and only a
//!   live node fences. So a one-NIC switch reboot, which cuts every node from the API server at
//!   once, moves no Lease: the first node back no longer fences the others before their
//!   renewals get through.

use super::*;

impl Engine {
    /// A write failed as unreachable, or the watch failed: an outage starts (logged once) or
    /// goes on (counted).
    pub(super) fn note_unreachable(&mut self, now: Instant, watch: bool, error: &str) {
        self.last_unreachable = Some(now);
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

    /// A write got an answer or the watch delivered: an outage in progress ends (logged once,
    /// and [`EngineStats::reconnected`] woken), and the other nodes' clocks restart with the
    /// grace the module doc gives. Returns whether an outage ended (the caller then looks at
    /// every lease again: a fence held back during the outage may be owed).
    pub(super) fn note_reachable(&mut self, now: Instant) -> bool {
        let Some(o) = self.outage.take() else {
            return false;
        };
        let lasted_ms = now.saturating_duration_since(o.since).as_millis() as u64;
        self.stats
            .last_outage_ms
            .store(lasted_ms, Ordering::Relaxed);
        tracing::info!(
            lasted_ms,
            failed_writes = o.failed_writes,
            watch_errors = o.watch_errors,
            "API server reachable again"
        );
        self.stats.reconnected.notify_one();
        self.unsettled(now);
        let gap = 2 * self.opts.config.retry_period;
        let watch_alive = self
            .watch_heard
            .is_some_and(|t| now.saturating_duration_since(t) <= gap);
        if !watch_alive {
            self.restart_clocks(now + self.opts.config.renew_deadline);
        }
        true
    }

    /// What the Lease watch delivered: the outage (if any) ends, clocks restart before the
    /// event is applied when the watch was down, and every lease is looked at again after a
    /// resync or the end of an outage.
    pub(crate) fn on_watch_delivery(&mut self, ev: watcher::Event<Lease>, now: Instant) {
        let ended = self.note_reachable(now);
        // After note_reachable: an outage ending now is judged by the deliveries before this one.
        self.watch_heard = Some(now);
        let resync = self.watch_down.is_some();
        if resync {
            self.restart_clocks(now);
        }
        self.on_watch(ev, now);
        if resync {
            self.on_watch_resync(now);
        } else if ended {
            self.step_all(now);
        }
    }

    /// Whether the API server is seen serving renewals, so that a presence Lease seen unrenewed
    /// for its duration (held by `other`) means a dead node, not a slow server: our own writes
    /// have not failed as unreachable for a lease duration, or a third node's renewal (anyone
    /// but us and `other`) was seen within two retry periods. A saturated server makes every
    /// node's renewals late, ours too; without this rule the survivors of a 10k crash burst,
    /// each seeing the other unrenewed while their watches still delivered, fenced each other
    /// and turned one burst into a cascade (README, "10,000 addresses after calm rebalancing…",
    /// run I). With a third node renewing, a crashed holder is still fenced on time while our
    /// own writes time out (`a_crashed_holder_is_fenced_on_time_when_our_writes_time_out_but_the_watch_shows_the_others`).
    pub(super) fn server_keeps_up(&self, other: Option<&str>, now: Instant) -> bool {
        let cfg = &self.opts.config;
        let calm = self
            .last_unreachable
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.lease_duration);
        calm || self.last_seen.iter().any(|(h, t)| {
            Some(h.as_str()) != other
                && h != self.me()
                && now.saturating_duration_since(*t) <= 2 * cfg.retry_period
        })
    }

    /// Looks at every lease again.
    pub(super) fn step_all(&mut self, now: Instant) {
        let all: Vec<String> = self.entries.keys().cloned().collect();
        for n in all {
            self.step(&n, now);
        }
    }

    /// The watch failed: until it shows an event again (or stays quiet for [`WATCH_QUIET`]),
    /// what it showed may be stale, so expiry clocks stop running.
    pub(super) fn on_watch_error(&mut self, now: Instant, error: &str) {
        self.stats.watch_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error, "lease watch error (retrying)");
        self.note_unreachable(now, true, error);
        self.restart_clocks(now);
        self.watch_down = Some(now + WATCH_QUIET);
    }

    /// The watch is back (an event arrived, or no error for [`WATCH_QUIET`]): expiry clocks
    /// restart now, and every lease is looked at again.
    pub(super) fn on_watch_resync(&mut self, now: Instant) {
        if self.watch_down.take().is_none() {
            return;
        }
        self.restart_clocks(now);
        self.step_all(now);
    }

    /// Outages are not expiries: every lease that is not ours is treated as if it had just been
    /// seen to change (`observed_at = now`; later than the present at an outage's end, for the
    /// grace), so nobody's lease runs out because of an outage this node saw itself. Our own held
    /// leases keep their clock: it is the instant our last successful write was sent, and moving
    /// it would extend our own claim.
    /// An address Lease attached to a presence Lease has no expiry of its own (its presence's
    /// clock, restarted here, stands for it): its clock is left alone, so a release seen after
    /// the outage (its presence released, the node shut down) frees it at once rather than a
    /// renew deadline later (a test against a real kube-apiserver restart, 40 s renew deadline:
    /// a graceful release not taken within 20 s).
    pub(super) fn restart_clocks(&mut self, now: Instant) {
        let me = self.opts.identity.as_str();
        for e in self.entries.values_mut() {
            if e.attached_to.is_some() {
                continue;
            }
            if let Some(o) = e.observed.as_mut() {
                let ours = o.confirmed && o.holder() == Some(me);
                if !ours && o.observed_at < now {
                    o.observed_at = now;
                }
            }
        }
    }
}
