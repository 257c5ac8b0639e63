//! `metav1.Condition` bookkeeping, written once: `lastTransitionTime` changes only when
//! `status` flips; conditions of other writers are kept in place.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition a writer wants an object to carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondWant {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl CondWant {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        CondWant {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: None,
        }
    }

    /// `True` or `False`.
    pub fn status_str(&self) -> &'static str {
        if self.status {
            "True"
        } else {
            "False"
        }
    }

    /// The condition to write, given the one of the same type now on the object (if any):
    /// its `lastTransitionTime` is kept when the status did not change, else it is `now`.
    pub fn to_condition(&self, previous: Option<&Condition>, now: &Time) -> Condition {
        let status = self.status_str();
        Condition {
            type_: self.type_.clone(),
            status: status.to_string(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: self.observed_generation,
            last_transition_time: previous
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone()),
        }
    }

    /// The condition to write, looking its previous version up by type in `existing`.
    pub fn to_condition_in(&self, existing: &[Condition], now: &Time) -> Condition {
        self.to_condition(existing.iter().find(|c| c.type_ == self.type_), now)
    }
}

/// Merges `wants` into `existing`: conditions whose type is in `owned` but not in `wants` are
/// removed; others are kept in place. Returns the new list and whether anything but
/// `lastTransitionTime` bookkeeping changed.
pub fn merge_conditions(
    existing: &[Condition],
    wants: &[CondWant],
    owned: &[&str],
    now: &Time,
) -> (Vec<Condition>, bool) {
    let mut out = Vec::with_capacity(existing.len() + wants.len());
    let mut changed = false;
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    for c in existing {
        if let Some(w) = wants.iter().find(|w| w.type_ == c.type_) {
            if placed.contains(w.type_.as_str()) {
                changed = true; // duplicate entry of our type: drop it
                continue;
            }
            placed.insert(w.type_.as_str());
            let nc = w.to_condition(Some(c), now);
            if c.status != nc.status
                || c.reason != nc.reason
                || c.message != nc.message
                || c.observed_generation != nc.observed_generation
            {
                changed = true;
            }
            out.push(nc);
        } else if owned.contains(&c.type_.as_str()) {
            changed = true;
        } else {
            out.push(c.clone());
        }
    }
    for w in wants {
        if placed.contains(w.type_.as_str()) {
            continue;
        }
        changed = true;
        out.push(w.to_condition(None, now));
    }
    (out, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = t("2026-12-01T10:00:00Z");
        let t1 = t("2026-12-01T11:00:00Z");
        let w = CondWant::new("Valid", true, "Valid", "ok");
        let first = w.to_condition(None, &t0);
        assert_eq!(
            (first.status.as_str(), &first.last_transition_time),
            ("True", &t0)
        );
        let mut w2 = w.clone();
        w2.message = "still ok".into();
        let same = w2.to_condition_in(std::slice::from_ref(&first), &t1);
        assert_eq!(same.last_transition_time, t0, "same status keeps the time");
        assert_eq!(same.message, "still ok");
        let flipped = CondWant::new("Valid", false, "Invalid", "bad")
            .to_condition_in(std::slice::from_ref(&first), &t1);
        assert_eq!(flipped.last_transition_time, t1, "a flip takes now");
        let other = CondWant::new("Other", true, "R", "m").to_condition_in(&[first], &t1);
        assert_eq!(other.last_transition_time, t1, "only the same type counts");
    }
}
