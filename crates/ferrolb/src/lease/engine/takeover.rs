//! How this node came to hold a lease, as it saw it: from whom, how, and since when the lease had
//! been free. Noted by the engine when it decides to create or take a lease, read once by the
//! caller when the matching [`LeaseEvent::Acquired`](super::LeaseEvent) arrives (the agent's
//! `L2Announcement` status and its Events use it). A re-confirmation of a record that already
//! names us (a restart within the lease duration) notes nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

/// How the previous holder stopped holding the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeoverKind {
    /// No Lease existed: we created it.
    Created,
    /// Another node held it and stopped renewing (crash, partition): taken after expiry.
    Expired,
    /// The holder released it (shutdown, hand-over, no longer eligible).
    Released,
}

impl TakeoverKind {
    /// The spelling used in status fields and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverKind::Created => "Created",
            TakeoverKind::Expired => "Expired",
            TakeoverKind::Released => "Released",
        }
    }
}

/// One takeover as the new holder saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub kind: TakeoverKind,
    /// The previous holder, when known.
    pub from: Option<String>,
    /// LOCAL instant since which the lease was, as far as we saw, no longer served by its
    /// previous holder: its last renewal we saw (expiry) or the release we saw; for a create,
    /// when we saw it absent.
    pub free_since: Instant,
    /// `leaseTransitions` our write sets.
    pub transitions: i32,
}

/// Takeovers noted by the engine and not yet read (lease name → takeover). Bounded by the
/// number of leases: a later decision replaces an earlier one that was refused.
#[derive(Debug, Default)]
pub struct Takeovers(Mutex<HashMap<String, Takeover>>);

impl Takeovers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Takeover>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that we are about to create or take `name`.
    pub fn note(&self, name: &str, t: Takeover) {
        self.lock().insert(name.to_string(), t);
    }

    /// The takeover behind our acquisition of `name`, once (`None`: we re-confirmed a record
    /// naming us, or nothing was noted).
    pub fn take(&self, name: &str) -> Option<Takeover> {
        self.lock().remove(name)
    }

    /// Forgets `name` (we no longer hold or want it).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_once_replaced_by_a_later_note() {
        let t = Takeovers::default();
        let now = Instant::now();
        let a = Takeover {
            kind: TakeoverKind::Expired,
            from: Some("n1".into()),
            free_since: now,
            transitions: 3,
        };
        t.note("l", a.clone());
        let b = Takeover {
            kind: TakeoverKind::Released,
            ..a.clone()
        };
        t.note("l", b.clone());
        assert_eq!(t.take("l"), Some(b));
        assert_eq!(t.take("l"), None);
        t.note("l", a);
        t.forget("l");
        assert_eq!(t.take("l"), None);
    }
}
