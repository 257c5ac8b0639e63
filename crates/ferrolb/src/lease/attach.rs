//! Address Leases attached to their holder's presence Lease (issue 10): the pure rules.
//!
//! Liveness comes from ONE heartbeat per node, the presence Lease `ferrolb-node-…` that every
//! agent renews each retry period; exclusivity from ONE resourceVersion-preconditioned write per
//! address when it changes hands. An *attached* address Lease names its holder and carries the
//! annotation [`ANN_ATTACHED_TO`] = the holder's presence Lease name; it is written on
//! acquisition, hand-over and release only (plus a [`REFRESH`] touch every 12 h, see below).
//!
//! ## Rules
//! - **Valid** while the holder's presence Lease names the same holder and is valid by
//!   client-go's rule (LOCAL instant the presence record was last seen to change + its
//!   `leaseDurationSeconds`, local monotonic clock), and until the address Lease is released.
//! - **Holder**: this node answers an attached address only while (a) its own last successful
//!   write of the address Lease named it, in this process, with no later change seen, and (b) its
//!   own presence standing is `Holder` (last successful presence renewal younger than the renew
//!   deadline). A presence renewal refused with 409 ends (b) at once; an unreachable API server
//!   past the renew deadline makes it `Unreachable` (sticky mode rides it out as before).
//!   After its presence was lost, the node re-confirms each address with one preconditioned
//!   write before answering it again.
//! - **Takeover** from a holder whose presence Lease has been seen unrenewed for its duration
//!   needs a *fence* first: one preconditioned write of the holder's presence Lease (holder
//!   cleared, `leaseDurationSeconds: 1`) with the resourceVersion under which it was seen
//!   unrenewed. The address Lease itself does not change while it is held, so its own
//!   resourceVersion cannot tell a stale view from a dead holder; the fence can: it fails with
//!   409 if the holder renewed its presence after what this node saw (a delayed or broken watch),
//!   and once it succeeded, no presence renewal of the holder can succeed any more, and the
//!   holder's last successful one was sent at least a lease duration ago (this node's clock) —
//!   so the holder stopped answering at its renew deadline, `lease duration − renew deadline`
//!   earlier. One fence per dead node frees all its addresses, whatever their number.
//! - **Free** (rank waits count from then): absent, released, or attached to a presence Lease
//!   that is absent, released (fenced, or its node shut down) or names another holder. The
//!   address itself is then taken with a resourceVersion-preconditioned write; rank waits stay,
//!   so the preferred node goes first.
//! - **Unmarked** address Leases (written by an agent of the previous format, which renews every
//!   retry period) are judged by the previous rules ([`super::decide`]): valid for their own
//!   `leaseDurationSeconds` after the last observed change.
//!
//! ## Rolling upgrades (previous format ↔ attached format)
//! An attached Lease is written with `leaseDurationSeconds` = [`ATTACHED_DURATION_SECONDS`]
//! (one day, the longest duration the previous format honours): a previous-format agent judges
//! it valid for a day after it last saw it change, so it never takes over an attached Lease
//! while it is held; the holder touches it every [`REFRESH`] (12 h) so that day never runs out
//! under a live holder. New agents ignore the duration of attached Leases and judge them by the
//! presence Lease. A previous-format agent's writes drop the marker (it rewrites every
//! `ferrolb.io/` annotation it does not know), so an unmarked Lease always means "renewed by
//! its holder", judged by the previous rules. Released Leases are free under both formats.

use std::time::Duration;
use tokio::time::Instant;

use super::decide::{Action, Intent, LeaseConfig, Observed, Standing, WriteFailure};

/// Annotation on an attached address Lease: the name of the holder's presence Lease.
pub const ANN_ATTACHED_TO: &str = "ferrolb.io/attached-to";

/// Annotation (value `"true"`) on the presence Lease of an agent that reads attached address
/// Leases: it takes over an address attached to a presence Lease that was released. A node
/// stopping gracefully releases only its presence Lease — one write frees all its addresses —
/// when every other candidate of an address carries it; otherwise (a previous-format agent, which
/// would wait out the day-long duration, or a candidate not seen alive) it releases the address
/// Lease itself first.
pub const ANN_READS_ATTACHED: &str = "ferrolb.io/reads-attached";

/// `leaseDurationSeconds` of an attached address Lease: one day, so that agents of the previous
/// format (which judge validity by it, clamped to one day) never take one over while it is held.
pub const ATTACHED_DURATION_SECONDS: i32 = 86_400;

/// The holder of an attached Lease rewrites it this often (half of
/// [`ATTACHED_DURATION_SECONDS`]), so a previous-format agent never sees it expire.
pub const REFRESH: Duration = Duration::from_secs(43_200);

/// How another node sees an address Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// Held and valid. Look again at this instant (the holder's presence, or for an unmarked
    /// Lease the Lease itself, could have expired by then), unless something changes first.
    Held { recheck_at: Instant },
    /// Attached to a presence Lease seen unrenewed for its duration: fence that presence Lease
    /// (preconditioned release) before anything else.
    FenceHolder,
    /// Free since this local instant.
    FreeSince(Instant),
}

/// What a node that does not hold it may conclude about an address Lease.
///
/// `addr`: the observed address Lease; `attached_to`: its [`ANN_ATTACHED_TO`] annotation
/// (`None`: previous format); `presence`: the observed presence Lease it names (`None`: never
/// seen — treated as absent since the address Lease was observed, the watch being synced).
pub fn judge(
    addr: &Observed,
    attached_to: Option<&str>,
    presence: Option<&Observed>,
    now: Instant,
    cfg: &LeaseConfig,
) -> LeaseView {
    let Some(holder) = addr.holder() else {
        return LeaseView::FreeSince(addr.observed_at);
    };
    if attached_to.is_none() {
        // Previous format: renewed by its holder, valid for its duration after a change.
        return if addr.is_valid(now, cfg) {
            LeaseView::Held {
                recheck_at: addr.expires_at(cfg),
            }
        } else {
            LeaseView::FreeSince(addr.expires_at(cfg))
        };
    }
    let Some(p) = presence else {
        return LeaseView::FreeSince(addr.observed_at);
    };
    if p.holder() != Some(holder) {
        // Absent, released (fenced, shut down) or naming another node: the holder is gone.
        return LeaseView::FreeSince(addr.observed_at.max(p.observed_at));
    }
    if p.is_valid(now, cfg) {
        LeaseView::Held {
            recheck_at: p.expires_at(cfg),
        }
    } else {
        LeaseView::FenceHolder
    }
}

/// The next step for an attached address Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A write of the address Lease, or waiting ([`Action`] as for the previous format; `Renew`
    /// here means "confirm" or the 12-hourly refresh, never a periodic renewal).
    Act(Action),
    /// Fence the holder's presence Lease first (see [`LeaseView::FenceHolder`]).
    Fence,
}

/// What this node has seen of one attached-format address Lease.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddressSeen<'a> {
    /// The address Lease (`None`: not seen yet).
    pub lease: Option<&'a Observed>,
    /// Its `ferrolb.io/attached-to` marker.
    pub attached_to: Option<&'a str>,
    /// Its holder's presence Lease, when the holder is another node.
    pub holder_presence: Option<&'a Observed>,
}

/// Decide the next step for one attached-format address Lease (what this node writes). Writes
/// that make us the holder are only taken while our own presence standing is `Holder`.
pub fn decide_attached(
    me: &str,
    seen: AddressSeen<'_>,
    my_presence: Standing,
    now: Instant,
    cfg: &LeaseConfig,
    intent: Intent,
) -> Step {
    let AddressSeen {
        lease: addr,
        attached_to,
        holder_presence: presence,
    } = seen;
    let Some(obs) = addr else {
        return Step::Act(Action::Idle);
    };
    let held_by_me = obs.holder() == Some(me);
    let delay = match intent {
        Intent::Release => {
            return Step::Act(if held_by_me {
                Action::Release
            } else {
                Action::Idle
            });
        }
        Intent::Acquire { delay } => delay,
    };
    let live = my_presence == Standing::Holder;
    if held_by_me {
        // Ours by record. Unconfirmed (written before a restart, or before our presence was
        // lost) or an unmarked record of ours: confirm with one write. Else only the 12-hourly
        // refresh for previous-format readers.
        if !obs.confirmed || attached_to.is_none() {
            return Step::Act(if live { Action::Renew } else { Action::Idle });
        }
        let refresh_at = obs.observed_at + REFRESH;
        return Step::Act(if now >= refresh_at && live {
            Action::Renew
        } else {
            Action::Hold {
                renew_at: refresh_at,
            }
        });
    }
    let Some(record) = obs.record.as_ref() else {
        let at = obs.observed_at + delay;
        return Step::Act(match (now >= at, live) {
            (true, true) => Action::Create,
            (true, false) => Action::Idle,
            (false, _) => Action::WaitUntil(at),
        });
    };
    match judge(obs, attached_to, presence, now, cfg) {
        LeaseView::Held { recheck_at } => Step::Act(Action::WaitUntil(recheck_at + delay)),
        // The fence waits the rank delay too: the preferred node fences and takes over first.
        LeaseView::FenceHolder => {
            let since = presence.map_or(now, |p| p.expires_at(cfg));
            if now >= since + delay {
                if live {
                    Step::Fence
                } else {
                    Step::Act(Action::Idle)
                }
            } else {
                Step::Act(Action::WaitUntil(since + delay))
            }
        }
        LeaseView::FreeSince(t) => {
            let at = t + delay;
            if now < at {
                Step::Act(Action::WaitUntil(at))
            } else if live {
                let transitions = record.lease_transitions.unwrap_or(0).saturating_add(1);
                Step::Act(Action::Acquire { transitions })
            } else {
                Step::Act(Action::Idle)
            }
        }
    }
}

/// Has our presence epoch ended, given a new observation of our own presence Lease? It has
/// when the record no longer names us (fenced, released, deleted). The caller then clears
/// [`Observed::confirmed`] on every attached address Lease it holds — as it does when its
/// presence standing becomes `NotHolder`, and when it (re)creates or re-acquires its presence
/// Lease: an address confirmed in an earlier epoch may have been taken after a fence this node
/// has not seen yet, so it is confirmed again with one preconditioned write before it is
/// answered.
pub fn epoch_ended(me: &str, my_presence: &Observed) -> bool {
    my_presence.holder() != Some(me)
}

/// Can we answer an attached address Lease we hold? Only a record we wrote ourselves in this
/// presence epoch ([`Observed::confirmed`], cleared by the engine when our presence is lost)
/// counts; then our presence standing decides (sticky mode follows `Unreachable` as before).
pub fn attached_standing(
    me: &str,
    addr: Option<&Observed>,
    my_presence: Standing,
    last_failure: Option<WriteFailure>,
) -> Standing {
    let Some(obs) = addr else {
        return Standing::NotHolder;
    };
    if obs.holder() != Some(me) || !obs.confirmed {
        return Standing::NotHolder;
    }
    if last_failure == Some(WriteFailure::Conflict) {
        return Standing::NotHolder;
    }
    my_presence
}

#[cfg(test)]
mod tests;
