//! When the agent applies lease events: losses at once, acquisitions paced by what applying
//! costs.
//!
//! Applying a batch of lease events (`Core::apply`) rebuilds the announced set and the
//! `L2Announcement` wants from every held group: O(held groups). A node taking over thousands of
//! addresses gets its acquisitions a few at a time (each write's answer), and applying each
//! small batch made the takeover's own CPU cost quadratic: profiled during a 10k crash burst,
//! the rebuilds (`l2status::wants`, `Holdings::announced`, their allocations and comparisons)
//! were about half of the agent's time, on a machine where the API server needed the core.
//! So a batch of acquisitions waits until the last application is `FACTOR` × its cost in the
//! past (at most [`MAX_PAUSE`]), gathering the acquisitions that arrive meanwhile; a loss (lost,
//! released, unreachable) is applied at once, since a node must stop answering an address
//! another node now holds without delay.

use std::time::Duration;

use tokio::time::Instant;

use crate::lease::LeaseEvent;

/// The pause after an application, as a multiple of its cost.
pub const FACTOR: u32 = 4;
/// The longest an acquisition waits to be applied.
pub const MAX_PAUSE: Duration = Duration::from_millis(100);

/// The last application: when it ended and what it cost (`default()`: none yet).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pace {
    pub ended: Option<Instant>,
    pub cost: Duration,
}

impl Pace {
    /// When the `pending` events (not empty) are to be applied, seen at `now`.
    pub fn apply_at<'a>(
        &self,
        pending: impl IntoIterator<Item = &'a LeaseEvent>,
        now: Instant,
    ) -> Instant {
        let loss = pending
            .into_iter()
            .any(|e| !matches!(e, LeaseEvent::Acquired { .. }));
        match self.ended {
            Some(t) if !loss => (t + (self.cost * FACTOR).min(MAX_PAUSE)).max(now),
            _ => now,
        }
    }

    /// An application ended at `now` after `cost`.
    pub fn applied(&mut self, now: Instant, cost: Duration) {
        self.ended = Some(now);
        self.cost = cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired() -> LeaseEvent {
        LeaseEvent::Acquired {
            name: "a".into(),
            tag: None,
        }
    }

    #[test]
    fn acquisitions_wait_in_proportion_to_the_last_cost_losses_never() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pace::default();
        // Nothing applied yet: at once.
        assert_eq!(p.apply_at(&[acquired()], t0), t0);
        p.applied(t0, ms(10));
        // 4 × 10 ms after the last application.
        assert_eq!(p.apply_at(&[acquired()], t0 + ms(5)), t0 + ms(40));
        assert_eq!(p.apply_at(&[acquired()], t0 + ms(50)), t0 + ms(50));
        // A loss among them: at once.
        let lost = LeaseEvent::Lost {
            name: "b".into(),
            tag: None,
            holder: Some("n2".into()),
        };
        assert_eq!(p.apply_at(&[acquired(), lost], t0 + ms(5)), t0 + ms(5));
        let released = LeaseEvent::Released {
            name: "b".into(),
            tag: None,
        };
        assert_eq!(p.apply_at(&[released], t0 + ms(5)), t0 + ms(5));
        // Capped.
        p.applied(t0, ms(500));
        assert_eq!(p.apply_at(&[acquired()], t0), t0 + MAX_PAUSE);
    }
}
