//! What the allocator answers: a Service's outcome and reason, adoption reports, pool states.

use super::*;
use crate::k8s::conditions::CondWant;

/// Why a Service has (or has not) its addresses. `as_str` is the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reason {
    /// Every wanted address assigned.
    Satisfied,
    /// No enabled, non-conflicting pool selects the Service (for the family / address).
    NoPool,
    /// The selecting pools are full.
    OutOfIPs,
    /// A requested (or shared) address is held by an incompatible Service.
    AlreadyAllocated,
    /// The pool holding a requested address does not select the Service.
    PoolSelectorMismatch,
    /// The request itself is malformed (annotation, loadBalancerIP, families).
    InvalidRequest,
}

impl Reason {
    /// Condition reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Satisfied => "Satisfied",
            Reason::NoPool => "NoPool",
            Reason::OutOfIPs => "OutOfIPs",
            Reason::AlreadyAllocated => "AlreadyAllocated",
            Reason::PoolSelectorMismatch => "PoolSelectorMismatch",
            Reason::InvalidRequest => "InvalidRequest",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One assigned address and the pool it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Assigned {
    /// The address.
    pub ip: IpAddr,
    /// Pool name.
    pub pool: String,
}

/// The allocator's verdict for one Service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// `Satisfied` or why not.
    pub reason: Reason,
    /// Human-readable detail (condition message).
    pub message: String,
    /// Assigned addresses (empty unless `Satisfied`), IPv4 first.
    pub addresses: Vec<Assigned>,
    /// Held addresses that no pool covers any more (kept; see `ferrolb.io/reallocate`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_covered: Vec<NotCovered>,
}

/// A held address no pool covers any more, and why (names the pool and field).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NotCovered {
    /// The address (still held).
    pub ip: IpAddr,
    /// e.g. `198.51.100.7: pool web no longer contains it (spec.blocks)`.
    pub why: String,
}

impl Outcome {
    /// Whether the Service got what it asked for.
    pub fn is_satisfied(&self) -> bool {
        self.reason == Reason::Satisfied
    }

    /// The addresses to write into `status.loadBalancer.ingress`.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|a| a.ip).collect()
    }

    pub(super) fn fail(reason: Reason, message: String) -> Self {
        Outcome {
            reason,
            message,
            addresses: Vec::new(),
            not_covered: Vec::new(),
        }
    }
}

/// What [`Allocator::ensure`] returns: the Service's [`Outcome`], built (addresses converted,
/// message formatted) only when it is read. Derefs to [`Outcome`], so `ensure(..).reason`,
/// `.addresses` and `.message` read like the owned value; [`Ensured::reason`],
/// [`Ensured::is_satisfied`] and [`Ensured::ips`] answer without building it. The controller
/// ignores the return value (it writes statuses from [`Allocator::outcome`] after
/// [`Allocator::take_changed`]), so it no longer pays for a message per `ensure`.
#[derive(Clone)]
pub struct Ensured {
    verdict: Verdict,
    uncovered: Vec<(Addr, String)>,
    shown: OnceLock<Outcome>,
}

impl Ensured {
    pub(super) fn new(verdict: Verdict) -> Self {
        Self::with(verdict, Vec::new())
    }

    pub(super) fn with(verdict: Verdict, uncovered: Vec<(Addr, String)>) -> Self {
        Ensured {
            verdict,
            uncovered,
            shown: OnceLock::new(),
        }
    }

    /// `Satisfied` or why not.
    pub fn reason(&self) -> Reason {
        match &self.verdict {
            Verdict::Satisfied(_) => Reason::Satisfied,
            Verdict::Failed(r, _) => *r,
        }
    }

    /// Whether the Service got what it asked for.
    pub fn is_satisfied(&self) -> bool {
        self.verdict.is_satisfied()
    }

    /// The addresses to write into `status.loadBalancer.ingress`.
    pub fn ips(&self) -> Vec<IpAddr> {
        match &self.verdict {
            Verdict::Satisfied(list) => list.iter().map(|(a, _)| a.to_ip()).collect(),
            Verdict::Failed(..) => Vec::new(),
        }
    }

    /// The owned [`Outcome`].
    pub fn into_outcome(self) -> Outcome {
        match self.shown.into_inner() {
            Some(o) => o,
            None => self.verdict.outcome_with(&self.uncovered),
        }
    }
}

impl Deref for Ensured {
    type Target = Outcome;
    fn deref(&self) -> &Outcome {
        self.shown
            .get_or_init(|| self.verdict.outcome_with(&self.uncovered))
    }
}

impl std::fmt::Debug for Ensured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Ensured {
    fn eq(&self, other: &Ensured) -> bool {
        **self == **other
    }
}

impl PartialEq<Outcome> for Ensured {
    fn eq(&self, other: &Outcome) -> bool {
        **self == *other
    }
}

impl From<Ensured> for Outcome {
    fn from(e: Ensured) -> Outcome {
        e.into_outcome()
    }
}

/// What [`Allocator::adopt`] did with each address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Addresses re-claimed.
    pub kept: Vec<Assigned>,
    /// Addresses not re-claimed, with why.
    pub dropped: Vec<(IpAddr, String)>,
}

/// A pool's computed state: counts and conditions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolState {
    /// Pool name.
    pub name: String,
    /// Usable addresses.
    pub total: u128,
    /// Addresses assigned from this pool.
    pub used: u128,
    /// `total - used`.
    pub available: u128,
    /// `spec.disabled`.
    pub disabled: bool,
    /// The older pool this one overlaps, if any (then it allocates nothing new).
    pub conflict_with: Option<String>,
    /// Conflict detail (which blocks overlap).
    pub conflict_message: Option<String>,
    /// Invalid blocks.
    pub block_errors: Vec<BlockError>,
    /// Why `serviceSelector` is invalid.
    pub selector_error: Option<String>,
    /// Why `namespaceSelector` is invalid (`spec.namespaceSelector.…: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector_error: Option<String>,
    /// Addresses attributed to this pool that Services keep although it no longer covers them.
    pub not_covered: u128,
    /// `metadata.generation` of the definition.
    #[serde(skip)]
    pub generation: Option<i64>,
}

impl PoolState {
    /// Whether new allocations may come from this pool.
    pub fn allocates(&self) -> bool {
        !self.disabled
            && self.conflict_with.is_none()
            && self.selector_error.is_none()
            && self.namespace_selector_error.is_none()
    }

    /// Conditions as `(type, status, reason, message)`. `Conflict` and `Exhausted` are always
    /// present (the `Conflicting` printer column reads `Conflict`); `InvalidBlocks` and
    /// `InvalidSelector` only when true.
    pub fn conditions(&self) -> Vec<(&'static str, bool, String, String)> {
        let mut c = Vec::new();
        match &self.conflict_with {
            Some(other) => c.push((
                COND_CONFLICT,
                true,
                "CIDROverlap".to_string(),
                self.conflict_message
                    .clone()
                    .unwrap_or_else(|| format!("overlaps pool {other}")),
            )),
            None => c.push((
                COND_CONFLICT,
                false,
                "NoConflict".to_string(),
                "no overlap with older pools".to_string(),
            )),
        }
        if self.available == 0 {
            c.push((
                COND_EXHAUSTED,
                true,
                "NoAvailableIPs".to_string(),
                format!("all {} usable addresses are in use", self.total),
            ));
        } else {
            c.push((
                COND_EXHAUSTED,
                false,
                "IPsAvailable".to_string(),
                format!("{} of {} addresses available", self.available, self.total),
            ));
        }
        if !self.block_errors.is_empty() {
            let msg = self
                .block_errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            c.push((COND_INVALID_BLOCKS, true, "InvalidBlocks".to_string(), msg));
        }
        let bad: Vec<String> = self
            .selector_error
            .iter()
            .map(|e| format!("spec.serviceSelector.{e}"))
            .chain(self.namespace_selector_error.iter().cloned())
            .collect();
        if !bad.is_empty() {
            c.push((
                COND_INVALID_SELECTOR,
                true,
                "InvalidSelector".to_string(),
                bad.join("; "),
            ));
        }
        c
    }

    /// The CRD status: counts saturated to `i64`; a condition keeps its `lastTransitionTime` from
    /// `prev` when its status did not change, else gets `now`.
    pub fn to_status(
        &self,
        prev: Option<&LoadBalancerIPPoolStatus>,
        now: Time,
    ) -> LoadBalancerIPPoolStatus {
        let sat = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
        let conditions = self
            .conditions()
            .into_iter()
            .map(|(ty, status, reason, message)| {
                let mut want = CondWant::new(ty, status, &reason, message);
                want.observed_generation = self.generation;
                want.to_condition_in(prev.map_or(&[][..], |p| &p.conditions[..]), &now)
            })
            .collect();
        LoadBalancerIPPoolStatus {
            observed_generation: self.generation,
            ips_total: sat(self.total),
            ips_used: sat(self.used),
            ips_available: sat(self.available),
            ips_not_covered: sat(self.not_covered),
            conditions,
        }
    }
}
