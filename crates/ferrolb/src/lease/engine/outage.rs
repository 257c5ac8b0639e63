//! API outages as the engine sees them: logged once when they start and once when they end, and
//! never taken for expiries (clocks restart when the watch fails and again when it resyncs).

use super::*;

impl Engine {
    /// A write failed as unreachable, or the watch failed: an outage starts (logged once) or
    /// goes on (counted).
    pub(super) fn note_unreachable(&mut self, now: Instant, watch: bool, error: &str) {
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

    /// A write succeeded or the watch delivered: an outage in progress ends (logged once, and
    /// [`EngineStats::reconnected`] woken).
    pub(super) fn note_reachable(&mut self, now: Instant) {
        if let Some(o) = self.outage.take() {
            tracing::info!(
                lasted_ms = (now - o.since).as_millis() as u64,
                failed_writes = o.failed_writes,
                watch_errors = o.watch_errors,
                "API server reachable again"
            );
            self.stats.reconnected.notify_one();
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
        let all: Vec<String> = self.entries.keys().cloned().collect();
        for n in all {
            self.step(&n, now);
        }
    }

    /// Outages are not expiries: every lease that is not ours is treated as if it had just been
    /// seen to change (`observed_at = now`), so nobody's lease runs out because of an outage this
    /// node saw itself. Our own held leases keep their clock: it is the instant our last
    /// successful write was sent, and moving it would extend our own claim.
    pub(super) fn restart_clocks(&mut self, now: Instant) {
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
}
