//! The pure election core: what to do about one Lease, given what we last observed of it.
//!
//! Semantics follow client-go's `leaderelection` package:
//! - a lease is *valid* while `observed_at + leaseDurationSeconds > now`, where `observed_at` is
//!   the LOCAL instant at which the record was last seen to change. Remote timestamps
//!   (`renewTime`, `acquireTime`) are never compared with the local clock, so clock skew between
//!   nodes does not matter;
//! - a holder renews every `retry_period`; a holder whose last successful renewal is older than
//!   `renew_deadline` stops considering itself the holder;
//! - a free lease (absent, holder cleared, or expired) is taken with a resourceVersion
//!   precondition; a 409 means another writer won, and the caller re-observes instead of retrying.
//!
//! Nothing here performs I/O or reads a clock: every input is a value, so every rule is tested
//! by feeding values in.

use std::time::Duration;
use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// Election timings. See the module documentation of [`crate::lease`] for the defaults' rationale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease stays valid after a candidate last saw it change (`leaseDurationSeconds`,
    /// whole seconds on the wire; rounded up, at least 1 s).
    pub lease_duration: Duration,
    /// A holder that has not renewed successfully for this long stops claiming the lease.
    /// Must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Renewal interval of a holder, and the wait between failed attempts.
    pub retry_period: Duration,
    /// Extra wait per rendezvous rank before a candidate tries to take a free lease
    /// (rank 0 tries at once, rank r after `r * rank_step`).
    pub rank_step: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        // The agent's presence timings (issue 10; margins in the README's "Lease timings").
        LeaseConfig {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(200),
            rank_step: Duration::from_millis(100),
        }
    }
}

/// The one lease-timing rule, used by the agent, the controller, `doctor` and the lab
/// (client-go's, with its jitter factor 1.2): retry period > 0,
/// renew deadline > 1.2 × retry period, lease duration > renew deadline.
///
/// The 1.2 leaves a holder room for one jittered retry before its deadline; with only
/// `renew deadline > retry period` a single late renewal makes the holder give up.
pub fn validate_timings(
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
) -> Result<(), String> {
    if retry_period.is_zero() {
        return Err("retry period must be positive".into());
    }
    // renew > 1.2 × retry, in integers (no float rounding, no overflow).
    if renew_deadline.as_nanos() * 5 <= retry_period.as_nanos() * 6 {
        return Err(format!(
            "renew deadline ({renew_deadline:?}) must be longer than 1.2 × the retry period ({retry_period:?})"
        ));
    }
    if lease_duration <= renew_deadline {
        return Err(format!(
            "lease duration ({lease_duration:?}) must be longer than the renew deadline ({renew_deadline:?})"
        ));
    }
    if lease_duration > Duration::from_secs(i32::MAX as u64) {
        return Err("lease duration too long".into());
    }
    Ok(())
}

impl LeaseConfig {
    /// [`validate_timings`] on these timings.
    pub fn validate(&self) -> Result<(), String> {
        validate_timings(self.lease_duration, self.renew_deadline, self.retry_period)
    }

    /// `leaseDurationSeconds` as written on the wire (rounded up, at least 1).
    pub fn duration_seconds(&self) -> i32 {
        let ms = self.lease_duration.as_millis();
        let secs = ms.div_ceil(1000).max(1);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The leader-election fields of a Lease (client-go's `LeaderElectionRecord`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`; `None` and `""` both mean "nobody holds it".
    pub holder: Option<String>,
    pub lease_duration_seconds: Option<i32>,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub lease_transitions: Option<i32>,
}

impl Record {
    /// Read the record from a Lease.
    pub fn from_lease(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity,
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            lease_transitions: spec.lease_transitions,
        }
    }

    /// The holder, if any (an empty holderIdentity is nobody).
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }

    /// The record as a LeaseSpec (other LeaseSpec fields left unset).
    pub fn to_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: self.holder.clone(),
            lease_duration_seconds: self.lease_duration_seconds,
            acquire_time: self.acquire_time.clone(),
            renew_time: self.renew_time.clone(),
            lease_transitions: self.lease_transitions,
            ..LeaseSpec::default()
        }
    }
}

/// What we last knew of one Lease, and since when (local time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `None`: the Lease does not exist.
    pub record: Option<Record>,
    /// `metadata.resourceVersion` of the observed object (`None` when absent).
    pub resource_version: Option<String>,
    /// LOCAL instant at which `record` was last seen to change (for our own successful writes:
    /// the instant the write was *sent*, which is conservative for the holder).
    pub observed_at: Instant,
    /// The holder named in `record` was put there by our own successful write (its answer),
    /// not merely seen: a record naming us that we never confirmed in this process (e.g. from
    /// before a restart) does not make us the holder until we renew it.
    pub confirmed: bool,
}

impl Observed {
    /// The next observation, given a fresh copy of the object (or `None` if it is absent) seen at
    /// `now`: `observed_at` only moves when the record (spec) changed, like client-go, so
    /// re-lists and label-only edits do not extend a lease.
    pub fn next(prev: Option<&Observed>, lease: Option<&Lease>, now: Instant) -> Observed {
        let record = lease.map(Record::from_lease);
        let resource_version = lease.and_then(|l| l.metadata.resource_version.clone());
        let observed_at = match prev {
            Some(p) if p.record == record => p.observed_at,
            _ => now,
        };
        // Confirmation survives record changes that keep the same holder (e.g. the watch echo
        // of our own renewal arriving before the write's answer), and ends with another holder.
        let holder = record.as_ref().and_then(|r| r.holder().map(str::to_string));
        let confirmed = match prev {
            Some(p) => p.confirmed && holder.is_some() && p.holder() == holder.as_deref(),
            None => false,
        };
        Observed {
            record,
            resource_version,
            observed_at,
            confirmed,
        }
    }

    /// The observation made from the answer to our own successful write sent at `sent_at`.
    pub fn written(lease: &Lease, sent_at: Instant) -> Observed {
        Observed {
            record: Some(Record::from_lease(lease)),
            resource_version: lease.metadata.resource_version.clone(),
            observed_at: sent_at,
            confirmed: true,
        }
    }

    /// The lease is absent (seen at `now`).
    pub fn absent(now: Instant) -> Observed {
        Observed {
            record: None,
            resource_version: None,
            observed_at: now,
            confirmed: false,
        }
    }

    /// The holder, if the lease exists and has one.
    pub fn holder(&self) -> Option<&str> {
        self.record.as_ref().and_then(|r| r.holder())
    }

    /// Lease duration the record itself asks for (client-go judges validity by it), falling back
    /// to ours; clamped to 1 s ..= 1 day so hostile values cannot overflow or pin a lease forever.
    pub fn duration(&self, cfg: &LeaseConfig) -> Duration {
        match self.record.as_ref().and_then(|r| r.lease_duration_seconds) {
            Some(s) => Duration::from_secs(s.clamp(1, 86_400) as u64),
            None => cfg.lease_duration,
        }
    }

    /// Local instant at which the lease stops being valid (client-go's `isLeaseValid`).
    pub fn expires_at(&self, cfg: &LeaseConfig) -> Instant {
        self.observed_at + self.duration(cfg)
    }

    /// Whether the lease is held by someone and still valid at `now`.
    pub fn is_valid(&self, now: Instant, cfg: &LeaseConfig) -> bool {
        self.holder().is_some() && now < self.expires_at(cfg)
    }

    /// The local instant from which the lease is free for anyone: when it was seen absent or
    /// released, or when its holder's lease ran out.
    pub fn free_since(&self, cfg: &LeaseConfig) -> Instant {
        match self.holder() {
            None => self.observed_at,
            Some(_) => self.expires_at(cfg),
        }
    }
}

/// What the caller wants for this lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Hold it. When it is free, wait `delay` (rank × step) after it became free before trying.
    Acquire { delay: Duration },
    /// Do not hold it: release it if we hold it, otherwise leave it alone.
    Release,
}

/// The next step for one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The lease does not exist: create it with us as holder (`leaseTransitions` 0).
    Create,
    /// Take it over: update with the observed resourceVersion as precondition, holder = me,
    /// acquireTime = renewTime = now, `leaseTransitions = transitions`.
    Acquire { transitions: i32 },
    /// We hold it and a renewal is due: update renewTime (and our duration) with the observed
    /// resourceVersion as precondition.
    Renew,
    /// We hold it and want to give it up: holder cleared, `leaseDurationSeconds = 1`, like
    /// client-go's ReleaseOnCancel.
    Release,
    /// We hold it; next renewal at the given instant.
    Hold { renew_at: Instant },
    /// Nothing to do before this instant (unless the record changes first).
    WaitUntil(Instant),
    /// Nothing to do until the record changes (someone else holds a valid lease and we only
    /// learn of its expiry... by the clock: see `WaitUntil`; this is for "no interest" / unknown).
    Idle,
}

/// Decide the next step for one lease. `observed = None` means nothing is known yet (the watch
/// has not listed): do nothing.
pub fn decide(
    me: &str,
    observed: Option<&Observed>,
    now: Instant,
    cfg: &LeaseConfig,
    intent: Intent,
) -> Action {
    let Some(obs) = observed else {
        return Action::Idle;
    };
    let held_by_me = obs.holder() == Some(me);
    match intent {
        Intent::Release => {
            if held_by_me {
                Action::Release
            } else {
                Action::Idle
            }
        }
        Intent::Acquire { delay } => {
            let Some(record) = obs.record.as_ref() else {
                // Absent: create once we have waited our rank's delay since we saw it absent.
                let at = obs.observed_at + delay;
                return if now >= at {
                    Action::Create
                } else {
                    Action::WaitUntil(at)
                };
            };
            if held_by_me {
                let renew_at = obs.observed_at + cfg.retry_period;
                // A record naming us that we did not write ourselves: confirm it at once.
                return if now >= renew_at || !obs.confirmed {
                    Action::Renew
                } else {
                    Action::Hold { renew_at }
                };
            }
            if obs.is_valid(now, cfg) {
                // Someone else holds it; look again when it could have expired (plus our delay).
                return Action::WaitUntil(obs.expires_at(cfg) + delay);
            }
            let at = obs.free_since(cfg) + delay;
            if now < at {
                return Action::WaitUntil(at);
            }
            let transitions = record.lease_transitions.unwrap_or(0).saturating_add(1);
            Action::Acquire { transitions }
        }
    }
}

/// Why the last write for a lease failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The API server could not be reached or did not answer usefully: connection refused or
    /// reset, timeout, 5xx, 429. Nobody else can write either (as far as we know).
    Unreachable,
    /// 409 (stale resourceVersion / already exists) or 404: somebody else changed the lease.
    Conflict,
    /// Any other refusal (400, 403, 422...): the server is up and said no.
    Rejected,
}

/// Can we still claim to hold the lease?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// We hold it and renewed within the renew deadline.
    Holder,
    /// We held it, but could not renew within the renew deadline because the API server is
    /// unreachable; nothing shows that anyone else has it. The agent's sticky mode keeps
    /// announcing in this state until another node's gratuitous ARP/NA is seen.
    Unreachable,
    /// Not the holder: never was, another holder was seen, a write was refused with 409, or the
    /// deadline passed after a refusal.
    NotHolder,
}

/// client-go's "am I still the leader" rule, with the outage distinction sticky mode needs.
/// Only a record we wrote ourselves ([`Observed::confirmed`]) makes us the holder.
/// `last_failure` is the failure of the most recent write attempt, `None` if it succeeded
/// (or nothing failed since the last success).
pub fn standing(
    me: &str,
    observed: Option<&Observed>,
    now: Instant,
    cfg: &LeaseConfig,
    last_failure: Option<WriteFailure>,
) -> Standing {
    let Some(obs) = observed else {
        return Standing::NotHolder;
    };
    if obs.holder() != Some(me) || !obs.confirmed {
        return Standing::NotHolder;
    }
    match last_failure {
        Some(WriteFailure::Conflict) => return Standing::NotHolder,
        Some(WriteFailure::Rejected) | Some(WriteFailure::Unreachable) | None => {}
    }
    if now < obs.observed_at + cfg.renew_deadline {
        return Standing::Holder;
    }
    match last_failure {
        Some(WriteFailure::Unreachable) => Standing::Unreachable,
        // Deadline passed without an outage to explain it (e.g. 403s, or no attempt at all).
        _ => Standing::NotHolder,
    }
}

/// The spec to write for an action (wall-clock `now` given as a MicroTime), starting from the
/// observed record. Returns `None` for actions that write nothing.
pub fn spec_for(
    action: &Action,
    me: &str,
    previous: Option<&Record>,
    now: &MicroTime,
    cfg: &LeaseConfig,
) -> Option<LeaseSpec> {
    let prev = previous.cloned().unwrap_or_default();
    let record = match action {
        Action::Create => Record {
            holder: Some(me.to_string()),
            lease_duration_seconds: Some(cfg.duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: Some(0),
        },
        Action::Acquire { transitions } => Record {
            holder: Some(me.to_string()),
            lease_duration_seconds: Some(cfg.duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: Some(*transitions),
        },
        Action::Renew => Record {
            holder: Some(me.to_string()),
            lease_duration_seconds: Some(cfg.duration_seconds()),
            acquire_time: prev.acquire_time.clone().or_else(|| Some(now.clone())),
            renew_time: Some(now.clone()),
            lease_transitions: Some(prev.lease_transitions.unwrap_or(0)),
        },
        Action::Release => Record {
            holder: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: Some(prev.lease_transitions.unwrap_or(0)),
        },
        Action::Hold { .. } | Action::WaitUntil(_) | Action::Idle => return None,
    };
    Some(record.to_spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
            rank_step: Duration::from_millis(250),
        }
    }

    fn mt(s: &str) -> MicroTime {
        MicroTime(s.parse().expect("timestamp"))
    }

    fn held(holder: &str, at: Instant, renew: &str) -> Observed {
        Observed {
            record: Some(Record {
                holder: Some(holder.into()),
                lease_duration_seconds: Some(5),
                acquire_time: Some(mt("2026-11-22T07:57:14.123456Z")),
                renew_time: Some(mt(renew)),
                lease_transitions: Some(3),
            }),
            resource_version: Some("10".into()),
            observed_at: at,
            confirmed: true,
        }
    }

    const ACQ: Intent = Intent::Acquire {
        delay: Duration::ZERO,
    };
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_known_means_idle() {
        let now = Instant::now();
        assert_eq!(decide("a", None, now, &cfg(), ACQ), Action::Idle);
        assert_eq!(standing("a", None, now, &cfg(), None), Standing::NotHolder);
    }

    #[test]
    fn absent_lease_is_created_after_rank_delay() {
        let t0 = Instant::now();
        let obs = Observed {
            record: None,
            resource_version: None,
            observed_at: t0,
            confirmed: false,
        };
        assert_eq!(decide("a", Some(&obs), t0, &cfg(), ACQ), Action::Create);
        let delay = Intent::Acquire {
            delay: Duration::from_millis(500),
        };
        assert_eq!(
            decide("a", Some(&obs), t0, &cfg(), delay),
            Action::WaitUntil(t0 + Duration::from_millis(500))
        );
        assert_eq!(
            decide(
                "a",
                Some(&obs),
                t0 + Duration::from_millis(500),
                &cfg(),
                delay
            ),
            Action::Create
        );
    }

    #[test]
    fn scenario_table() {
        let t0 = Instant::now();
        let c = cfg();
        let renew = "2026-11-22T07:57:20.000000Z";
        let released = Observed {
            record: Some(Record {
                holder: Some(String::new()),
                lease_duration_seconds: Some(1),
                lease_transitions: Some(4),
                ..Record::default()
            }),
            resource_version: Some("11".into()),
            observed_at: t0,
            confirmed: false,
        };
        let no_transitions = Observed {
            record: Some(Record {
                holder: Some("b".into()),
                lease_duration_seconds: None,
                ..Record::default()
            }),
            resource_version: Some("12".into()),
            observed_at: t0,
            confirmed: false,
        };
        let d = |ms| Intent::Acquire {
            delay: Duration::from_millis(ms),
        };
        // (name, observed, now, intent, expected)
        let table: Vec<(&str, Observed, Instant, Intent, Action)> = vec![
            (
                "other holder valid: wait for expiry",
                held("b", t0, renew),
                t0 + 2 * S,
                ACQ,
                Action::WaitUntil(t0 + 5 * S),
            ),
            (
                "other holder valid, ranked: expiry + delay",
                held("b", t0, renew),
                t0,
                d(500),
                Action::WaitUntil(t0 + 5 * S + Duration::from_millis(500)),
            ),
            (
                "other holder expired: acquire, transitions + 1",
                held("b", t0, renew),
                t0 + 5 * S,
                ACQ,
                Action::Acquire { transitions: 4 },
            ),
            (
                "other holder expired, rank delay not over",
                held("b", t0, renew),
                t0 + 5 * S,
                d(250),
                Action::WaitUntil(t0 + 5 * S + Duration::from_millis(250)),
            ),
            (
                "released: acquire at once for rank 0",
                released.clone(),
                t0,
                ACQ,
                Action::Acquire { transitions: 5 },
            ),
            (
                "released: rank 2 waits from the release",
                released.clone(),
                t0 + Duration::from_millis(100),
                d(500),
                Action::WaitUntil(t0 + Duration::from_millis(500)),
            ),
            (
                "released and not wanted: idle",
                released.clone(),
                t0,
                Intent::Release,
                Action::Idle,
            ),
            (
                "held by me, renewal not due",
                held("a", t0, renew),
                t0 + Duration::from_millis(300),
                ACQ,
                Action::Hold { renew_at: t0 + S },
            ),
            (
                "held by me, renewal due",
                held("a", t0, renew),
                t0 + S,
                ACQ,
                Action::Renew,
            ),
            (
                "held by me, release wanted",
                held("a", t0, renew),
                t0,
                Intent::Release,
                Action::Release,
            ),
            (
                "held by other, release wanted: never touch",
                held("b", t0, renew),
                t0 + 10 * S,
                Intent::Release,
                Action::Idle,
            ),
            (
                "no duration in record: ours (5 s) applies",
                no_transitions.clone(),
                t0 + 4 * S,
                ACQ,
                Action::WaitUntil(t0 + 5 * S),
            ),
            (
                "no transitions in record: 0 + 1",
                no_transitions,
                t0 + 5 * S,
                ACQ,
                Action::Acquire { transitions: 1 },
            ),
        ];
        for (name, obs, now, intent, want) in table {
            assert_eq!(decide("a", Some(&obs), now, &c, intent), want, "{name}");
        }
    }

    #[test]
    fn remote_timestamps_do_not_matter_clock_skew() {
        // The remote renewTime says the lease was renewed a year in the future / past: expiry is
        // judged only by when WE saw the record change.
        let t0 = Instant::now();
        let c = cfg();
        for renew in [
            "2027-11-22T07:57:20.000000Z",
            "2025-11-22T07:57:20.000000Z",
            "1970-01-01T00:00:00.000000Z",
        ] {
            let obs = held("b", t0, renew);
            assert_eq!(
                decide("a", Some(&obs), t0 + 4 * S, &c, ACQ),
                Action::WaitUntil(t0 + 5 * S),
                "{renew}"
            );
            assert_eq!(
                decide("a", Some(&obs), t0 + 5 * S, &c, ACQ),
                Action::Acquire { transitions: 4 },
                "{renew}"
            );
            // Same for our own standing.
            let mine = held("a", t0, renew);
            assert_eq!(
                standing("a", Some(&mine), t0 + 2 * S, &c, None),
                Standing::Holder
            );
        }
    }

    #[test]
    fn observed_at_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let mut lease = Lease::default();
        lease.metadata.name = Some("x".into());
        lease.metadata.resource_version = Some("5".into());
        lease.spec = Some(
            held("b", t0, "2026-11-22T07:57:20.000000Z")
                .record
                .unwrap()
                .to_spec(),
        );
        let first = Observed::next(None, Some(&lease), t0);
        assert_eq!(first.observed_at, t0);
        assert!(!first.confirmed, "seen, not written by us");
        // Re-list / label change: new RV, same spec -> observed_at unchanged.
        lease.metadata.resource_version = Some("6".into());
        lease
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("k".into(), "v".into());
        let second = Observed::next(Some(&first), Some(&lease), t0 + 3 * S);
        assert_eq!(second.observed_at, t0);
        assert_eq!(second.resource_version.as_deref(), Some("6"));
        // Renewal: spec changed -> observed_at = now.
        lease.spec.as_mut().unwrap().renew_time = Some(mt("2026-11-22T07:57:21.000000Z"));
        let third = Observed::next(Some(&second), Some(&lease), t0 + 4 * S);
        assert_eq!(third.observed_at, t0 + 4 * S);
        // Our own write makes us the confirmed holder; the watch echo of a later renewal keeps
        // it; another holder ends it.
        lease.spec.as_mut().unwrap().holder_identity = Some("a".into());
        let mine = Observed::written(&lease, t0 + 4 * S);
        assert!(mine.confirmed);
        lease.spec.as_mut().unwrap().renew_time = Some(mt("2026-11-22T07:57:22.000000Z"));
        let echo = Observed::next(Some(&mine), Some(&lease), t0 + 5 * S);
        assert!(echo.confirmed);
        assert_eq!(echo.observed_at, t0 + 5 * S);
        lease.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let taken = Observed::next(Some(&echo), Some(&lease), t0 + 5 * S);
        assert!(!taken.confirmed);
        lease.spec.as_mut().unwrap().holder_identity = Some("a".into());
        let back = Observed::next(Some(&taken), Some(&lease), t0 + 5 * S);
        assert!(
            !back.confirmed,
            "seeing our name again is not a confirmation"
        );
        // Deleted.
        let gone = Observed::next(Some(&third), None, t0 + 5 * S);
        assert_eq!(gone.record, None);
        assert_eq!(gone.observed_at, t0 + 5 * S);
    }

    #[test]
    fn standing_rules() {
        let t0 = Instant::now();
        let c = cfg();
        let mine = held("a", t0, "2026-11-22T07:57:20.000000Z");
        let within = t0 + 2 * S;
        let after = t0 + 3 * S;
        assert_eq!(
            standing("a", Some(&mine), within, &c, None),
            Standing::Holder
        );
        assert_eq!(
            standing(
                "a",
                Some(&mine),
                within,
                &c,
                Some(WriteFailure::Unreachable)
            ),
            Standing::Holder
        );
        assert_eq!(
            standing("a", Some(&mine), within, &c, Some(WriteFailure::Conflict)),
            Standing::NotHolder,
            "a 409 yields at once"
        );
        assert_eq!(
            standing("a", Some(&mine), after, &c, Some(WriteFailure::Unreachable)),
            Standing::Unreachable
        );
        assert_eq!(
            standing("a", Some(&mine), after, &c, Some(WriteFailure::Rejected)),
            Standing::NotHolder
        );
        assert_eq!(
            standing("a", Some(&mine), after, &c, None),
            Standing::NotHolder
        );
        let other = held("b", t0, "2026-11-22T07:57:20.000000Z");
        assert_eq!(
            standing(
                "a",
                Some(&other),
                within,
                &c,
                Some(WriteFailure::Unreachable)
            ),
            Standing::NotHolder,
            "another holder seen: yield even during an outage"
        );
    }

    #[test]
    fn specs_written_for_actions() {
        let now = mt("2026-11-22T08:00:00.000001Z");
        let c = cfg();
        let prev = held("b", Instant::now(), "2026-11-22T07:57:20.000000Z")
            .record
            .unwrap();
        let create = spec_for(&Action::Create, "a", None, &now, &c).unwrap();
        assert_eq!(create.holder_identity.as_deref(), Some("a"));
        assert_eq!(create.lease_transitions, Some(0));
        assert_eq!(create.lease_duration_seconds, Some(5));
        let acq = spec_for(
            &Action::Acquire { transitions: 4 },
            "a",
            Some(&prev),
            &now,
            &c,
        )
        .unwrap();
        assert_eq!(acq.lease_transitions, Some(4));
        assert_eq!(acq.acquire_time, Some(now.clone()));
        let mut mine = prev.clone();
        mine.holder = Some("a".into());
        let renew = spec_for(&Action::Renew, "a", Some(&mine), &now, &c).unwrap();
        assert_eq!(
            renew.acquire_time, prev.acquire_time,
            "renew keeps acquireTime"
        );
        assert_eq!(renew.renew_time, Some(now.clone()));
        assert_eq!(renew.lease_transitions, Some(3));
        let rel = spec_for(&Action::Release, "a", Some(&mine), &now, &c).unwrap();
        assert_eq!(rel.holder_identity.as_deref(), Some(""));
        assert_eq!(rel.lease_duration_seconds, Some(1));
        assert_eq!(rel.lease_transitions, Some(3));
        assert!(spec_for(&Action::Idle, "a", None, &now, &c).is_none());
    }

    #[test]
    fn config_validation_and_wire_duration() {
        assert!(cfg().validate().is_ok());
        let mut bad = cfg();
        bad.renew_deadline = Duration::from_secs(6);
        assert!(bad.validate().is_err());
        bad = cfg();
        bad.retry_period = Duration::from_secs(3);
        assert!(bad.validate().is_err());
        // The pinned rule: renew deadline > 1.2 × retry period (client-go's), not just > retry.
        let ok = |l, r, t| {
            validate_timings(
                Duration::from_millis(l),
                Duration::from_millis(r),
                Duration::from_millis(t),
            )
        };
        assert_eq!(ok(1000, 600, 200), Ok(()));
        assert_eq!(ok(1000, 241, 200), Ok(()));
        assert_eq!(
            ok(1000, 240, 200),
            Err("renew deadline (240ms) must be longer than 1.2 × the retry period (200ms)".into())
        );
        assert!(ok(1000, 220, 200).is_err(), "> retry but not > 1.2 × retry");
        assert_eq!(
            ok(600, 600, 200),
            Err("lease duration (600ms) must be longer than the renew deadline (600ms)".into())
        );
        assert!(ok(1000, 600, 0).is_err());
        let huge = Duration::from_secs(u64::MAX);
        assert!(
            validate_timings(huge, huge / 2, huge / 4).is_err(),
            "no overflow"
        );
        let mut c = cfg();
        c.lease_duration = Duration::from_millis(1500);
        assert_eq!(c.duration_seconds(), 2);
        c.lease_duration = Duration::from_millis(10);
        assert_eq!(c.duration_seconds(), 1);
    }

    #[test]
    fn hostile_durations_are_clamped() {
        let t0 = Instant::now();
        let mut obs = held("b", t0, "2026-11-22T07:57:20.000000Z");
        obs.record.as_mut().unwrap().lease_duration_seconds = Some(i32::MAX);
        assert_eq!(obs.duration(&cfg()), Duration::from_secs(86_400));
        obs.record.as_mut().unwrap().lease_duration_seconds = Some(-5);
        assert_eq!(obs.duration(&cfg()), Duration::from_secs(1));
    }

    /// A simulated cluster: N nodes running `decide` against a store with resourceVersion
    /// preconditions, watch deliveries delayed at random, nodes crashing, being cut off from
    /// the API and coming back. Invariant: at no instant do two nodes both have standing
    /// `Holder` (no split brain), and the lease never goes unheld for long while a live,
    /// connected candidate exists.
    #[test]
    fn simulated_cluster_never_has_two_holders() {
        use rand::{Rng, SeedableRng};
        let c = cfg();
        let tick = Duration::from_millis(50);
        for seed in 0..80u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n = 3 + (seed % 3) as usize;
            let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
            let t0 = Instant::now();
            let mut store: Option<(Record, u64)> = None;
            let mut rv = 0u64;
            struct Node {
                obs: Option<Observed>,
                fail: Option<WriteFailure>,
                alive: bool,
                cut_off: bool,
                inbox: Vec<(Instant, Option<(Record, u64)>)>,
                next_try: Instant,
            }
            let mut nodes: Vec<Node> = (0..n)
                .map(|_| Node {
                    obs: Some(Observed {
                        record: None,
                        resource_version: None,
                        observed_at: t0,
                        confirmed: false,
                    }),
                    fail: None,
                    alive: true,
                    cut_off: false,
                    inbox: Vec::new(),
                    next_try: t0,
                })
                .collect();
            let mut unheld_since: Option<Instant> = Some(t0);
            for step in 0..600u32 {
                let now = t0 + tick * step;
                // Chaos: crash / revive / cut off / reconnect someone now and then.
                if rng.random_ratio(1, 40) {
                    let i = rng.random_range(0..n);
                    match rng.random_range(0..4) {
                        0 => nodes[i].alive = false,
                        1 => {
                            if !nodes[i].alive {
                                // Restart: fresh state, watch lists the current object.
                                nodes[i] = Node {
                                    obs: Some(Observed {
                                        record: store.as_ref().map(|s| s.0.clone()),
                                        resource_version: store.as_ref().map(|s| s.1.to_string()),
                                        observed_at: now,
                                        confirmed: false,
                                    }),
                                    fail: None,
                                    alive: true,
                                    cut_off: false,
                                    inbox: Vec::new(),
                                    next_try: now,
                                };
                            }
                        }
                        2 => nodes[i].cut_off = true,
                        _ => nodes[i].cut_off = false,
                    }
                }
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                for &i in &order {
                    if !nodes[i].alive {
                        continue;
                    }
                    // Watch deliveries due (none while cut off: the watch is down too).
                    if !nodes[i].cut_off {
                        let due: Vec<_> = {
                            let inbox = &mut nodes[i].inbox;
                            let (d, keep): (Vec<_>, Vec<_>) =
                                inbox.drain(..).partition(|(t, _)| *t <= now);
                            *inbox = keep;
                            d
                        };
                        for (_, rec) in due {
                            let prev = nodes[i].obs.clone();
                            let stale = match (&rec, &prev) {
                                (Some((_, r)), Some(p)) => p
                                    .resource_version
                                    .as_deref()
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .is_some_and(|pv| pv > *r),
                                _ => false,
                            };
                            if stale {
                                continue;
                            }
                            let record = rec.as_ref().map(|r| r.0.clone());
                            let mut lease = Lease {
                                spec: record.as_ref().map(Record::to_spec),
                                ..Lease::default()
                            };
                            lease.metadata.resource_version = rec.as_ref().map(|r| r.1.to_string());
                            let l = rec.as_ref().map(|_| &lease);
                            nodes[i].obs = Some(Observed::next(prev.as_ref(), l, now));
                        }
                    }
                    if now < nodes[i].next_try {
                        continue;
                    }
                    let rank = super::super::rendezvous_rank("lease", &names[i], &names);
                    let intent = Intent::Acquire {
                        delay: c.rank_step * rank as u32,
                    };
                    let action = decide(&names[i], nodes[i].obs.as_ref(), now, &c, intent);
                    let writes = matches!(
                        action,
                        Action::Create | Action::Acquire { .. } | Action::Renew
                    );
                    if !writes {
                        continue;
                    }
                    if nodes[i].cut_off {
                        nodes[i].fail = Some(WriteFailure::Unreachable);
                        nodes[i].next_try = now + c.retry_period;
                        continue;
                    }
                    let obs_rv = nodes[i]
                        .obs
                        .as_ref()
                        .and_then(|o| o.resource_version.clone());
                    let store_rv = store.as_ref().map(|s| s.1.to_string());
                    let ok = match action {
                        Action::Create => store.is_none(),
                        _ => store.is_some() && obs_rv == store_rv,
                    };
                    if !ok {
                        nodes[i].fail = Some(WriteFailure::Conflict);
                        nodes[i].next_try = now + c.retry_period;
                        continue;
                    }
                    let mt = MicroTime(jiff::Timestamp::UNIX_EPOCH);
                    let prev = store.as_ref().map(|s| s.0.clone());
                    let spec = spec_for(&action, &names[i], prev.as_ref(), &mt, &c).unwrap();
                    rv += 1;
                    let mut rec = Record::from_lease(&Lease {
                        spec: Some(spec),
                        ..Lease::default()
                    });
                    // Distinct renewTimes per write, like real clocks.
                    rec.renew_time = Some(MicroTime(
                        jiff::Timestamp::from_microsecond(rv as i64).unwrap(),
                    ));
                    store = Some((rec.clone(), rv));
                    nodes[i].obs = Some(Observed {
                        record: Some(rec.clone()),
                        resource_version: Some(rv.to_string()),
                        observed_at: now,
                        confirmed: true,
                    });
                    nodes[i].fail = None;
                    for (j, other) in nodes.iter_mut().enumerate() {
                        if j != i {
                            let lag = Duration::from_millis(rng.random_range(0..400));
                            other.inbox.push((now + lag, Some((rec.clone(), rv))));
                        }
                    }
                }
                // Invariant: at most one node believes it holds the lease.
                let holders: Vec<&String> = (0..n)
                    .filter(|&i| nodes[i].alive)
                    .filter(|&i| {
                        standing(&names[i], nodes[i].obs.as_ref(), now, &c, nodes[i].fail)
                            == Standing::Holder
                    })
                    .map(|i| &names[i])
                    .collect();
                assert!(holders.len() <= 1, "seed {seed} t={step}: {holders:?}");
                // Liveness: with a live connected node, the lease is not unheld for long
                // (duration + max rank wait + watch lag + retries).
                let someone_can = (0..n).any(|i| nodes[i].alive && !nodes[i].cut_off);
                if holders.is_empty() && someone_can {
                    let since = *unheld_since.get_or_insert(now);
                    assert!(
                        now - since
                            <= c.lease_duration * 2
                                + c.rank_step * n as u32
                                + Duration::from_secs(2),
                        "seed {seed} t={step}: unheld since {:?}",
                        since - t0
                    );
                } else {
                    unheld_since = None;
                }
            }
        }
    }
}
