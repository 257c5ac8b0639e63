//! Pure: which of this node's interfaces count for candidacy when links lose carrier.
//!
//! A node whose announcing interface lost carrier (or went down) cannot be heard on that
//! segment: it should hand the addresses it announces there over at once (issue 11, item 2). But
//! when a switch reboots, *every* node on the segment loses carrier together: releasing then only
//! changes every Lease for nothing (nobody can take over) and, once the switch is back, moves
//! addresses that should simply be re-announced by their holders. So each lost interface is
//! judged against the other candidates:
//!
//! - for [`LinkHold::settle`] after the loss, the node keeps standing on it (the other nodes'
//!   reports of their own carrier need that long to arrive: an rtnetlink event, one API write,
//!   one watch delivery);
//! - then, once some other candidate reports an interface with carrier *on the same segment*
//!   (the caller decides: a prefix overlapping the lost interface's, or the same name for an
//!   interface without prefixes — [`super::subnets`] publishes every node's interfaces, prefixes
//!   and which are down), it stops standing there (its Leases are released and that node takes
//!   over by the usual rank rules);
//! - while no other candidate has carrier there, it keeps standing (and holding): nothing
//!   answers anyway, and when carrier returns the announcer re-announces every held address at
//!   once, with no Lease change. If another candidate's carrier returns first, it stops then.
//!
//! Every change of the live list, of the others' reports, and the end of a settle wait is fed
//! to [`LinkHold::update`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// The interfaces candidacy uses, given the live ones.
#[derive(Debug, Clone)]
pub struct LinkHold {
    settle: Duration,
    /// Interfaces kept without carrier: since when (during the settle wait), or `None` once
    /// the wait is over (kept while no other candidate has carrier on that segment).
    lost: BTreeMap<String, Option<Instant>>,
    effective: Vec<String>,
}

impl LinkHold {
    /// Starts from the live list (at start-up there is nothing to hold on to).
    pub fn new(settle: Duration, live: &[String]) -> Self {
        LinkHold {
            settle,
            lost: BTreeMap::new(),
            effective: live.to_vec(),
        }
    }

    /// The interfaces eligibility should use (sorted).
    pub fn effective(&self) -> &[String] {
        &self.effective
    }

    /// The interfaces kept although they have no carrier (published as down, so that the other
    /// nodes can judge their own losses).
    pub fn down(&self) -> Vec<String> {
        self.lost.keys().cloned().collect()
    }

    /// How long a loss is kept before the others' reports are believed.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// When the earliest settle wait in progress ends (the caller decides again then).
    pub fn recheck_at(&self) -> Option<Instant> {
        self.lost.values().flatten().min().map(|t| *t + self.settle)
    }

    /// Decides again. `live`: this node's eligible interfaces with carrier now;
    /// `heard_elsewhere(iface)`: some other candidate reports an interface with carrier on the
    /// segment of this node's `iface`. Returns true when [`Self::effective`] changed.
    pub fn update(
        &mut self,
        live: &[String],
        heard_elsewhere: impl Fn(&str) -> bool,
        now: Instant,
    ) -> bool {
        self.lost.retain(|i, _| !live.contains(i));
        let mut next: Vec<String> = live.to_vec();
        for i in &self.effective {
            if live.contains(i) {
                continue;
            }
            let since = self.lost.entry(i.clone()).or_insert(Some(now));
            if since.is_some_and(|t| now >= t + self.settle) {
                *since = None;
            }
            if since.is_some() || !heard_elsewhere(i) {
                next.push(i.clone());
            } else {
                self.lost.remove(i);
            }
        }
        next.sort();
        next.dedup();
        let changed = next != self.effective;
        self.effective = next;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(300);

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lone_link_loss_releases_after_the_settle_wait_when_another_candidate_has_carrier() {
        let t0 = Instant::now();
        // eth0 on the service segment, mgmt0 elsewhere (still up).
        let mut h = LinkHold::new(SETTLE, &v(&["eth0", "mgmt0"]));
        let up = |_: &str| true;
        // eth0 loses carrier: kept for the settle wait, even though the others are up there.
        assert!(!h.update(&v(&["mgmt0"]), up, t0));
        assert_eq!(h.effective(), v(&["eth0", "mgmt0"]));
        assert_eq!(h.down(), v(&["eth0"]));
        assert_eq!(h.recheck_at(), Some(t0 + SETTLE));
        assert!(!h.update(&v(&["mgmt0"]), up, t0 + SETTLE - Duration::from_millis(1)));
        // The wait is over and another candidate has carrier on eth0's segment: stop there.
        assert!(h.update(&v(&["mgmt0"]), up, t0 + SETTLE));
        assert_eq!(h.effective(), v(&["mgmt0"]));
        assert!(h.down().is_empty());
        assert_eq!(h.recheck_at(), None);
        // Carrier back: stand there again at once.
        assert!(h.update(&v(&["eth0", "mgmt0"]), up, t0 + SETTLE * 10));
        assert_eq!(h.effective(), v(&["eth0", "mgmt0"]));
    }

    #[test]
    fn a_segment_wide_loss_keeps_standing_and_carrier_back_changes_nothing() {
        let t0 = Instant::now();
        let mut h = LinkHold::new(SETTLE, &v(&["eth0", "mgmt0"]));
        let live = v(&["mgmt0"]);
        // The others' reports still say up (not arrived yet), then down: only the answer after
        // the wait counts.
        assert!(!h.update(&live, |_| true, t0));
        let nobody = |_: &str| false;
        assert!(!h.update(&live, nobody, t0 + Duration::from_millis(50)));
        assert!(!h.update(&live, nobody, t0 + SETTLE));
        assert!(!h.update(&live, nobody, t0 + Duration::from_secs(5)));
        assert_eq!(h.effective(), v(&["eth0", "mgmt0"]));
        assert_eq!(h.down(), v(&["eth0"]));
        // Past the wait: no timer of its own (no busy loop); reports decide from here on.
        assert_eq!(h.recheck_at(), None);
        // The switch is back: same list, nothing for eligibility to redo.
        assert!(!h.update(&v(&["eth0", "mgmt0"]), nobody, t0 + Duration::from_secs(6)));
        assert!(h.down().is_empty());
    }

    #[test]
    fn another_candidates_carrier_back_first_makes_this_node_stop_standing() {
        let t0 = Instant::now();
        let mut h = LinkHold::new(SETTLE, &v(&["eth0"]));
        assert!(!h.update(&[], |_| false, t0));
        assert!(!h.update(&[], |_| false, t0 + Duration::from_secs(2)));
        // Another node's link on that segment came back, ours did not (our NIC died with the
        // switch).
        assert!(h.update(&[], |i| i == "eth0", t0 + Duration::from_secs(3)));
        assert!(h.effective().is_empty());
    }

    #[test]
    fn each_lost_interface_is_judged_on_its_own_segment() {
        let t0 = Instant::now();
        let mut h = LinkHold::new(SETTLE, &v(&["eth0", "eth1"]));
        // Both lose carrier; only eth1's segment has another node with carrier.
        assert!(!h.update(&[], |_| false, t0));
        assert!(h.update(&[], |i| i == "eth1", t0 + SETTLE));
        assert_eq!(h.effective(), v(&["eth0"]));
        assert_eq!(h.down(), v(&["eth0"]));
    }

    #[test]
    fn a_node_standing_nowhere_has_nothing_to_hold() {
        let t0 = Instant::now();
        let mut h = LinkHold::new(SETTLE, &[]);
        assert!(!h.update(&[], |_| false, t0));
        assert_eq!(h.recheck_at(), None);
        assert!(h.update(&v(&["eth0"]), |_| false, t0));
    }
}
