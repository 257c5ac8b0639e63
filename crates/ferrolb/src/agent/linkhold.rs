//! Carrier loss on a holder: hand over, or keep the Lease through a segment-wide outage
//! (issue 11: a switch reboot must not change any Lease).
//!
//! # The rule
//! A group this node could announce only on interfaces without carrier (or down) is *dark*
//! here ([`super::eligibility::Desired::dark`], which also says whether another candidate
//! reports carrier on an interface that would announce it, from the interface objects of
//! [`super::subnets`]). Then:
//! - **Not held here** (no Lease, or yielded): this node does not contend for it.
//! - **Held, and another candidate reports carrier**: the node waits [`SETTLE`] from the moment
//!   the group went dark, so that the reports of a segment-wide outage (every node's carrier
//!   drops together when a switch reboots) reach it through the watch, and if another candidate
//!   still reports carrier then, it releases the Lease (the next node takes over by the usual
//!   rank rules). A single link dying is handed over [`SETTLE`] later than without the wait.
//! - **Held, and no other candidate reports carrier** (a switch reboot, or this node is the
//!   only candidate): the node keeps the Lease — no other node could answer either, and there
//!   is nothing to answer while the segment is down — and the announcer re-announces every held
//!   address at once when carrier returns. Should another candidate report carrier later while
//!   this node still has none, it waits [`RECOVER`] from that report for its own carrier (a
//!   switch brings its ports back one by one, link negotiation taking a second or more and not
//!   the same on every port), and releases only if its own port is still dark then.
//! - **Held, another candidate reports carrier, but this node's own report has not come back
//!   through the watch** ([`super::subnets::own_report_seen`]): kept, whatever the wait. The
//!   others' reports are only as fresh as the API round trip, and a node whose only way to the
//!   API server is the link that went dark (one NIC: the common case) hears nothing new — in a
//!   switch reboot it would still see every other node with carrier and release. Its own
//!   report coming back proves the round trip works; until then, if its link really died
//!   alone, the others take over when its presence Lease expires, as after a crash.
//! - **Sticky** (the API server unreachable and the Lease possibly expired): kept. The reports
//!   it would judge by are as old as the outage and a release could not be written anyway; the
//!   sticky rules (keep answering until another station announces the address) decide, as
//!   without carrier loss.
//!
//! A node whose agent publishes no interface object (not started, an older version) reports
//! nothing, so it never makes a holder give up; an older agent's object lists only interfaces
//! with carrier, which therefore count as reporting carrier.
//!
//! Pure: fed the desired set, this node's holds and the time, it returns the desired set the
//! engine and holdings get and when to look again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::eligibility::Desired;
use super::holdings::Hold;

/// How long a holder whose carrier went waits for the other candidates' reports before it
/// hands over (a segment-wide outage's reports arrive within it).
pub const SETTLE: Duration = Duration::from_millis(300);

/// What happens to one dark group on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DarkHold {
    /// Not held here: do not contend while dark.
    Stand,
    /// Held, another candidate reports carrier: keep until the wait ends.
    Settling,
    /// Held, no other candidate reports carrier: keep.
    Keep,
    /// Held, another candidate reports carrier, but this node's own report has not come back
    /// through the watch: the others' reports may be stale (the API server may be reachable
    /// only over the link that went dark), keep until it does.
    Unheard,
    /// Held while the API server is unreachable: keep (sticky rules apply).
    KeepSticky,
    /// Held, another candidate reports carrier after the wait: release.
    Release,
}

impl DarkHold {
    /// Whether this node keeps contending for (holding) the group.
    pub fn keeps(self) -> bool {
        matches!(
            self,
            DarkHold::Settling | DarkHold::Keep | DarkHold::KeepSticky | DarkHold::Unheard
        )
    }
}

/// The decision for one dark group: its hold here, whether another candidate reports carrier,
/// and how long it has been dark.
pub fn verdict(
    hold: Option<Hold>,
    others_live: bool,
    own_report_seen: bool,
    dark_for: Duration,
    settle: Duration,
) -> DarkHold {
    match hold {
        None | Some(Hold::Yielded) => DarkHold::Stand,
        Some(Hold::Sticky) => DarkHold::KeepSticky,
        Some(Hold::Held) if !others_live => DarkHold::Keep,
        Some(Hold::Held) if !own_report_seen => DarkHold::Unheard,
        Some(Hold::Held) if dark_for < settle => DarkHold::Settling,
        Some(Hold::Held) => DarkHold::Release,
    }
}

/// How long a holder that went dark in a segment-wide outage waits for its own carrier once
/// another candidate reports carrier again. Ports come back from a switch reboot one by one
/// (link negotiation takes a second or more, and not the same on every port): a holder whose
/// port is a little slower than another node's must not lose the Lease for it.
pub const RECOVER: Duration = Duration::from_secs(3);

/// One dark spell of a group on this node.
#[derive(Debug, Clone, Copy)]
struct Spell {
    /// When the group went dark here.
    since: Instant,
    /// No other candidate reported carrier at some point of the spell (a segment-wide outage).
    outage: bool,
    /// When another candidate last started reporting carrier during an outage spell.
    live_since: Option<Instant>,
}

/// When each dark group went dark, and the last verdicts (for logging changes only).
#[derive(Debug, Clone)]
pub struct LinkHold {
    settle: Duration,
    recover: Duration,
    spells: BTreeMap<String, Spell>,
    last: BTreeMap<String, DarkHold>,
}

impl Default for LinkHold {
    fn default() -> Self {
        Self::new(SETTLE)
    }
}

impl LinkHold {
    pub fn new(settle: Duration) -> Self {
        LinkHold {
            settle,
            recover: RECOVER.max(settle),
            spells: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// Applies the rule to `desired` (from [`super::eligibility::compute`]): dark groups this
    /// node does not keep stop being `eligible_here`. `hold` is this node's hold of a group
    /// (by key); `own_report_seen`: this node's own carrier report has come back through the
    /// watch ([`super::subnets::own_report_seen`]). Returns when to recompute (the end of a
    /// wait), if any; the echo of this node's report wakes the agent by itself.
    pub fn apply(
        &mut self,
        desired: &mut Desired,
        hold: impl Fn(&str) -> Option<Hold>,
        own_report_seen: bool,
        now: Instant,
    ) -> Option<Instant> {
        self.spells.retain(|k, _| desired.dark.contains_key(k));
        self.last.retain(|k, _| desired.dark.contains_key(k));
        let mut next: Option<Instant> = None;
        for g in desired.groups.iter_mut() {
            let Some(&others_live) = desired.dark.get(&*g.key) else {
                continue;
            };
            let spell = self.spells.entry(g.key.to_string()).or_insert(Spell {
                since: now,
                outage: false,
                live_since: None,
            });
            // The wait runs from the start of the spell; after a segment-wide outage, from the
            // moment another candidate reported carrier again, and longer (`recover`).
            if !others_live {
                spell.outage = true;
                spell.live_since = None;
            } else if spell.outage && spell.live_since.is_none() {
                spell.live_since = Some(now);
            }
            let (from, wait) = match spell.live_since {
                Some(t) => (t, self.recover),
                None => (spell.since, self.settle),
            };
            let v = verdict(
                hold(&g.key),
                others_live,
                own_report_seen,
                now.saturating_duration_since(from),
                wait,
            );
            if v == DarkHold::Settling {
                let at = from + wait;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            if self.last.insert(g.key.to_string(), v) != Some(v) && v != DarkHold::Stand {
                info!(group = %g.key, verdict = ?v, others_live, "announcing interfaces without carrier");
            }
            if !v.keeps() && g.eligible_here {
                Arc::make_mut(g).eligible_here = false;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::eligibility::Group;
    use std::collections::BTreeSet;

    fn group(key: &str) -> Arc<Group> {
        Arc::new(Group {
            key: key.into(),
            addresses: [key.parse().unwrap()].into(),
            services: vec![],
            candidates: Arc::new(vec!["n1".into(), "n2".into()]),
            interfaces: Arc::new(BTreeSet::from(["eth0".to_string()])),
            eligible_here: true,
        })
    }

    #[test]
    fn verdicts() {
        let s = SETTLE;
        let short = s / 3;
        assert_eq!(verdict(None, true, true, s * 9, s), DarkHold::Stand);
        assert_eq!(
            verdict(Some(Hold::Yielded), false, true, short, s),
            DarkHold::Stand
        );
        assert_eq!(
            verdict(Some(Hold::Sticky), true, true, s * 9, s),
            DarkHold::KeepSticky
        );
        assert_eq!(
            verdict(Some(Hold::Held), false, true, s * 9, s),
            DarkHold::Keep
        );
        assert_eq!(
            verdict(Some(Hold::Held), true, true, short, s),
            DarkHold::Settling
        );
        assert_eq!(
            verdict(Some(Hold::Held), true, true, s, s),
            DarkHold::Release
        );
        assert_eq!(
            verdict(Some(Hold::Held), true, false, s * 9, s),
            DarkHold::Unheard
        );
        assert!(DarkHold::Unheard.keeps());
        assert!(!DarkHold::Stand.keeps() && !DarkHold::Release.keeps());
        assert!(
            DarkHold::Keep.keeps() && DarkHold::Settling.keeps() && DarkHold::KeepSticky.keeps()
        );
    }

    /// A single link dying: held, the others report carrier → kept through the wait, released
    /// after it; a group not held here is not contended for; groups with carrier are untouched.
    #[test]
    fn a_lone_dark_holder_releases_after_the_wait() {
        let t0 = Instant::now();
        let mut lh = LinkHold::default();
        let desired = Desired {
            groups: vec![
                group("198.51.100.10"),
                group("198.51.100.11"),
                group("198.51.100.12"),
            ],
            dark: [
                ("198.51.100.10".to_string(), true),
                ("198.51.100.11".to_string(), true),
            ]
            .into(),
            ..Default::default()
        };
        let hold = |k: &str| (k != "198.51.100.11").then_some(Hold::Held);
        let mut d = desired.clone();
        let next = lh.apply(&mut d, hold, true, t0);
        assert_eq!(next, Some(t0 + SETTLE));
        let here: Vec<&str> = d.local().map(|g| &*g.key).collect();
        assert_eq!(here, ["198.51.100.10", "198.51.100.12"]);
        // A recompute during the wait does not restart it.
        let mut d = desired.clone();
        assert_eq!(
            lh.apply(&mut d, hold, true, t0 + SETTLE / 2),
            Some(t0 + SETTLE)
        );
        assert_eq!(d.local().count(), 2);
        let mut d = desired.clone();
        assert_eq!(lh.apply(&mut d, hold, true, t0 + SETTLE), None);
        let here: Vec<&str> = d.local().map(|g| &*g.key).collect();
        assert_eq!(here, ["198.51.100.12"]);
    }

    /// A segment-wide outage: the others' reports arrive during the wait → kept for as long as
    /// nobody else has carrier; someone else regaining carrier while this node still has none
    /// → released at once (the wait is long over); carrier back here → no longer dark.
    #[test]
    fn a_segment_wide_outage_keeps_the_lease() {
        let t0 = Instant::now();
        let mut lh = LinkHold::default();
        let with = |others_live: bool| Desired {
            groups: vec![group("198.51.100.10")],
            dark: [("198.51.100.10".to_string(), others_live)].into(),
            ..Default::default()
        };
        let held = |_: &str| Some(Hold::Held);
        let mut d = with(true);
        assert!(lh.apply(&mut d, held, true, t0).is_some());
        assert_eq!(d.local().count(), 1);
        for t in [SETTLE / 2, SETTLE, SETTLE * 20] {
            let mut d = with(false);
            assert_eq!(lh.apply(&mut d, held, true, t0 + t), None);
            assert_eq!(d.local().count(), 1, "kept {t:?} after carrier went");
        }
        // Another node's port comes back first: this one waits RECOVER for its own.
        let t_live = t0 + SETTLE * 21;
        let mut d = with(true);
        assert_eq!(lh.apply(&mut d, held, true, t_live), Some(t_live + RECOVER));
        assert_eq!(
            d.local().count(),
            1,
            "kept while its own port may still come back"
        );
        let mut d = with(true);
        assert_eq!(
            lh.apply(&mut d, held, true, t_live + RECOVER / 2),
            Some(t_live + RECOVER)
        );
        assert_eq!(d.local().count(), 1);
        // Carrier back here: the group is not dark, the next loss starts a new wait.
        let mut d = Desired {
            groups: vec![group("198.51.100.10")],
            ..Default::default()
        };
        assert_eq!(lh.apply(&mut d, held, true, t_live + RECOVER * 2 / 3), None);
        assert_eq!(d.local().count(), 1);
        let mut d = with(true);
        let t1 = t_live + RECOVER;
        assert_eq!(lh.apply(&mut d, held, true, t1), Some(t1 + SETTLE));
        assert_eq!(d.local().count(), 1);
    }

    /// After a segment-wide outage, a holder whose own port stays dark while another
    /// candidate's is back hands over once RECOVER has passed since that report (and the wait
    /// restarts if the other node loses carrier again meanwhile).
    #[test]
    fn after_an_outage_a_holder_still_dark_hands_over_after_the_recovery_wait() {
        let t0 = Instant::now();
        let mut lh = LinkHold::default();
        let with = |others_live: bool| Desired {
            groups: vec![group("198.51.100.10")],
            dark: [("198.51.100.10".to_string(), others_live)].into(),
            ..Default::default()
        };
        let held = |_: &str| Some(Hold::Held);
        let mut d = with(false);
        assert_eq!(lh.apply(&mut d, held, true, t0), None);
        let t1 = t0 + Duration::from_secs(5);
        let mut d = with(true);
        assert_eq!(lh.apply(&mut d, held, true, t1), Some(t1 + RECOVER));
        // The other node's port flaps: the outage is back, then its carrier again.
        let mut d = with(false);
        assert_eq!(lh.apply(&mut d, held, true, t1 + RECOVER / 2), None);
        let t2 = t1 + RECOVER * 3 / 4;
        let mut d = with(true);
        assert_eq!(lh.apply(&mut d, held, true, t2), Some(t2 + RECOVER));
        let mut d = with(true);
        lh.apply(&mut d, held, true, t1 + RECOVER);
        assert_eq!(
            d.local().count(),
            1,
            "the wait restarted at the second report"
        );
        let mut d = with(true);
        assert_eq!(lh.apply(&mut d, held, true, t2 + RECOVER), None);
        assert_eq!(
            d.local().count(),
            0,
            "still dark after the recovery wait: released"
        );
    }

    /// A holder whose only way to the API server is the link that went dark: its own report
    /// never comes back, so the others' reports (from before the outage, showing carrier) are
    /// not trusted — kept, without a timer (no busy wake-ups); once its report is seen (the
    /// API reachable over another link) the usual wait applies, from the carrier loss.
    #[test]
    fn a_holder_that_cannot_hear_its_own_report_keeps_the_lease() {
        let t0 = Instant::now();
        let mut lh = LinkHold::default();
        let with = || Desired {
            groups: vec![group("198.51.100.10")],
            dark: [("198.51.100.10".to_string(), true)].into(),
            ..Default::default()
        };
        let held = |_: &str| Some(Hold::Held);
        for t in [Duration::ZERO, SETTLE, SETTLE * 30] {
            let mut d = with();
            assert_eq!(lh.apply(&mut d, held, false, t0 + t), None, "{t:?}");
            assert_eq!(d.local().count(), 1, "kept {t:?} after carrier went");
        }
        let mut d = with();
        assert_eq!(lh.apply(&mut d, held, true, t0 + SETTLE * 31), None);
        assert_eq!(
            d.local().count(),
            0,
            "its report seen, the others live: released"
        );
        // Seen early: the wait still runs from the carrier loss.
        let mut lh = LinkHold::default();
        let mut d = with();
        lh.apply(&mut d, held, false, t0);
        let mut d = with();
        assert_eq!(
            lh.apply(&mut d, held, true, t0 + SETTLE / 3),
            Some(t0 + SETTLE)
        );
        assert_eq!(d.local().count(), 1);
    }

    /// Cut off from the API server (sticky): kept whatever the stale reports say.
    #[test]
    fn sticky_holds_are_kept() {
        let t0 = Instant::now();
        let mut lh = LinkHold::default();
        let mut d = Desired {
            groups: vec![group("198.51.100.10")],
            dark: [("198.51.100.10".to_string(), true)].into(),
            ..Default::default()
        };
        lh.apply(&mut d, |_| Some(Hold::Sticky), true, t0);
        let mut d2 = d.clone();
        assert_eq!(
            lh.apply(&mut d2, |_| Some(Hold::Sticky), true, t0 + SETTLE * 10),
            None
        );
        assert_eq!(d2.local().count(), 1);
    }
}
