//! Follow-up probes after a takeover (issue 11): when is the next probe for foreign answerers
//! due for each (address, interface) pair. Pure: the announcer's manager starts a schedule when
//! it starts a gratuitous burst, cancels it on release, and sends one probe per pair returned by
//! [`FollowUps::take_due`].
//!
//! Why: the burst's probes (one per announcement, [`super::announcer::probe_frame`]) see only
//! stations that have the address *during* the burst (5 × 1 s by default). kube-proxy in IPVS
//! mode binds a Service's address to `kube-ipvs0` when it syncs the Service, which can be
//! seconds after the takeover; without more probes such a late answerer is seen at the next
//! periodic re-announcement, if any (off by default). A few probes on a backoff after the burst
//! (default 10 s, 30 s, 60 s after the takeover, [`DEFAULT_AFTER`]) close that gap.
//!
//! Load: one probe frame (an ARP probe, or an NS to the address's solicited-node group) per
//! pair per instant — at most `after.len()` frames per takeover, fewer than the burst itself —
//! and nothing through the API server. Instants missed (the manager was busy) collapse into one
//! probe; a pair taken over again restarts its schedule rather than adding one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Default follow-up instants, counted from the takeover.
pub const DEFAULT_AFTER: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// Pending follow-up probes, keyed by `K` (the announcer's (address, interface) pair).
#[derive(Debug)]
pub struct FollowUps<K> {
    /// Instants after the start, ascending, without zero and duplicates.
    after: Vec<Duration>,
    /// Per key: when its schedule started and when its next probe is due.
    state: BTreeMap<K, (Instant, Instant)>,
    /// (due, key), ordered by due time: the next due is the first.
    queue: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Clone> FollowUps<K> {
    /// A schedule probing at each of `after` (counted from [`FollowUps::start`]); zero
    /// durations are dropped (the burst probes at once anyway), so an empty or all-zero list
    /// means no follow-ups.
    pub fn new(after: &[Duration]) -> Self {
        let mut after: Vec<Duration> = after.iter().copied().filter(|d| !d.is_zero()).collect();
        after.sort();
        after.dedup();
        FollowUps {
            after,
            state: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }

    /// `key` was taken over (or announced again) at `now`: (re)starts its schedule.
    pub fn start(&mut self, key: K, now: Instant) {
        let Some(&first) = self.after.first() else {
            return;
        };
        self.cancel(&key);
        let due = now + first;
        self.queue.insert((due, key.clone()));
        self.state.insert(key, (now, due));
    }

    /// `key` was released: no more probes for it.
    pub fn cancel(&mut self, key: &K) {
        if let Some((_, due)) = self.state.remove(key) {
            self.queue.remove(&(due, key.clone()));
        }
    }

    /// When the next probe is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The keys whose probe is due at `now` (each once, however many instants were missed),
    /// advancing their schedules; a key past its last instant is forgotten.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.queue.first() {
            if *due > now {
                break;
            }
            let Some((_, key)) = self.queue.pop_first() else {
                break;
            };
            let Some(&(start, _)) = self.state.get(&key) else {
                continue;
            };
            // The first instant still ahead of now.
            match self.after.iter().position(|a| start + *a > now) {
                Some(i) => {
                    let next = start + self.after[i];
                    self.queue.insert((next, key.clone()));
                    self.state.insert(key.clone(), (start, next));
                }
                None => {
                    self.state.remove(&key);
                }
            }
            out.push(key);
        }
        out
    }

    /// Keys with a probe still to come.
    pub fn pending(&self) -> usize {
        self.state.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn fu() -> FollowUps<&'static str> {
        FollowUps::new(&[S, 5 * S, 30 * S])
    }

    #[test]
    fn probes_at_each_instant_after_the_takeover_then_stops() {
        let mut f = fu();
        let t0 = Instant::now();
        f.start("a", t0);
        assert_eq!(f.next_due(), Some(t0 + S));
        assert!(
            f.take_due(t0 + S / 2).is_empty(),
            "not before the first instant"
        );
        assert_eq!(f.take_due(t0 + S), vec!["a"]);
        assert!(f.take_due(t0 + 2 * S).is_empty(), "once per instant");
        assert_eq!(f.next_due(), Some(t0 + 5 * S));
        assert_eq!(f.take_due(t0 + 5 * S), vec!["a"]);
        assert_eq!(f.next_due(), Some(t0 + 30 * S));
        assert_eq!(f.take_due(t0 + 30 * S), vec!["a"]);
        assert_eq!(f.next_due(), None, "no probe after the last instant");
        assert_eq!(f.pending(), 0);
        assert!(f.take_due(t0 + 3600 * S).is_empty());
    }

    #[test]
    fn missed_instants_collapse_into_one_probe() {
        let mut f = fu();
        let t0 = Instant::now();
        f.start("a", t0);
        // The manager was busy for 10 s: one probe, then the 30 s one.
        assert_eq!(f.take_due(t0 + 10 * S), vec!["a"]);
        assert_eq!(f.next_due(), Some(t0 + 30 * S));
        // Busy past the end: one probe, then nothing.
        let mut g = fu();
        g.start("b", t0);
        assert_eq!(g.take_due(t0 + 100 * S), vec!["b"]);
        assert_eq!((g.next_due(), g.pending()), (None, 0));
    }

    #[test]
    fn release_cancels_and_a_new_takeover_restarts_without_doubling() {
        let mut f = fu();
        let t0 = Instant::now();
        f.start("a", t0);
        f.start("b", t0 + S / 2);
        f.cancel(&"a");
        assert_eq!(f.take_due(t0 + 2 * S), vec!["b"]);
        // Taken over again at 3 s: its schedule counts from there, one entry only.
        f.start("b", t0 + 3 * S);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.next_due(), Some(t0 + 4 * S));
        assert_eq!(f.take_due(t0 + 4 * S), vec!["b"]);
        assert!(
            f.take_due(t0 + 5 * S).is_empty(),
            "the old 5.5 s instant is gone"
        );
        assert_eq!(f.take_due(t0 + 8 * S), vec!["b"]);
        // Cancelling an unknown key is harmless.
        f.cancel(&"zzz");
        assert_eq!(f.pending(), 1);
    }

    #[test]
    fn keys_come_due_in_time_order_and_memory_follows_the_held_set() {
        let mut f = fu();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let key: &'static str = Box::leak(format!("k{i}").into_boxed_str());
            f.start(key, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(f.pending(), 1000);
        assert_eq!(f.take_due(t0 + S + Duration::from_millis(499)).len(), 500);
        assert_eq!(f.next_due(), Some(t0 + S + Duration::from_millis(500)));
        let all = f.take_due(t0 + 31 * S);
        assert_eq!(all.len(), 1000, "each key once");
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn no_instants_means_no_follow_ups() {
        for after in [&[][..], &[Duration::ZERO][..]] {
            let mut f: FollowUps<&str> = FollowUps::new(after);
            f.start("a", Instant::now());
            assert_eq!((f.next_due(), f.pending()), (None, 0));
        }
        // Unsorted and duplicate instants are put in order.
        let mut f: FollowUps<&str> = FollowUps::new(&[5 * S, S, 5 * S]);
        let t0 = Instant::now();
        f.start("a", t0);
        assert_eq!(f.next_due(), Some(t0 + S));
        f.take_due(t0 + S);
        assert_eq!(f.next_due(), Some(t0 + 5 * S));
        f.take_due(t0 + 5 * S);
        assert_eq!(f.next_due(), None);
    }
}
