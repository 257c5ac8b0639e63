//! The chaos schedule: a pure function of (seed, duration, nodes) — the same seed always gives
//! the same faults at the same offsets, so a failing seed replays. ChaCha8 (`rand_chacha`) is
//! portable across platforms and versions, unlike `StdRng`.

use std::collections::BTreeMap;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One kind of fault (or Service churn step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL an agent; started again when the fault ends.
    AgentKill,
    /// SIGTERM an agent (graceful); started again when the fault ends.
    AgentTerm,
    /// SIGSTOP an agent (a paused process); SIGCONT when the fault ends.
    AgentStop,
    /// SIGTERM and start again at once.
    AgentRestart,
    /// SIGKILL one controller replica; started again when the fault ends.
    ControllerKill,
    /// SIGKILL both controller replicas; started again when the fault ends.
    ControllersKillBoth,
    /// The API server refuses every client.
    ApiOutage,
    /// The API server refuses one node's agent only (per-client fault).
    ApiOutageNode,
    /// Every API request delayed by `param` ms.
    ApiSlow,
    /// Every API request answered 503.
    Api5xx,
    /// A node's port on the bridge down (the node loses carrier, and the API server with it).
    NodeCut,
    /// A node's port flapping: down/up every `param` ms.
    LinkFlap,
    /// A lossy, slow link: the node's [`crate::wire::Wire`] drops `param` % of the frames
    /// (both ways, ARP and NDP too) and delays the rest by 20 ms ± 10 ms.
    LossDelay,
    /// Create churn Service `chaos-<target>` (with endpoints on every node).
    ChurnCreate,
    /// Delete churn Service `chaos-<target>`.
    ChurnDelete,
    /// Re-type churn Service `chaos-<target>` (LoadBalancer ⇄ ClusterIP).
    ChurnRetype,
    /// A second pool (its own block, selecting `chaos-pool: "yes"`) exists while the fault lasts.
    PoolEdit,
    /// The lab's policy also names an `^mgmt0$` interface while the fault lasts.
    PolicyEdit,
    /// The ready endpoint of the watched `externalTrafficPolicy: Local` Service (`local-1`)
    /// moves to node `target` (its EndpointSlice rewritten): the announcer must follow.
    EndpointMove,
    /// Churn Service `chaos-<target>` leaves our `loadBalancerClass` for a foreign one while the
    /// fault lasts, and comes back (each way through `ClusterIP`, as kube-apiserver requires:
    /// the class of a LoadBalancer Service is immutable).
    ChurnReclass,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::AgentKill,
        Kind::AgentTerm,
        Kind::AgentStop,
        Kind::AgentRestart,
        Kind::ControllerKill,
        Kind::ControllersKillBoth,
        Kind::ApiOutage,
        Kind::ApiOutageNode,
        Kind::ApiSlow,
        Kind::Api5xx,
        Kind::NodeCut,
        Kind::LinkFlap,
        Kind::LossDelay,
        Kind::ChurnCreate,
        Kind::ChurnDelete,
        Kind::ChurnRetype,
        Kind::PoolEdit,
        Kind::PolicyEdit,
        Kind::EndpointMove,
        Kind::ChurnReclass,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::AgentKill => "agent-kill",
            Kind::AgentTerm => "agent-term",
            Kind::AgentStop => "agent-stop",
            Kind::AgentRestart => "agent-restart",
            Kind::ControllerKill => "controller-kill",
            Kind::ControllersKillBoth => "controllers-kill-both",
            Kind::ApiOutage => "api-outage",
            Kind::ApiOutageNode => "api-outage-node",
            Kind::ApiSlow => "api-slow",
            Kind::Api5xx => "api-5xx",
            Kind::NodeCut => "node-cut",
            Kind::LinkFlap => "link-flap",
            Kind::LossDelay => "loss-delay",
            Kind::ChurnCreate => "churn-create",
            Kind::ChurnDelete => "churn-delete",
            Kind::ChurnRetype => "churn-retype",
            Kind::PoolEdit => "pool-edit",
            Kind::PolicyEdit => "policy-edit",
            Kind::EndpointMove => "endpoint-move",
            Kind::ChurnReclass => "churn-reclass",
        }
    }

    /// Targets a node (agent / its link / its API access).
    pub fn on_node(self) -> bool {
        matches!(
            self,
            Kind::AgentKill
                | Kind::AgentTerm
                | Kind::AgentStop
                | Kind::AgentRestart
                | Kind::ApiOutageNode
                | Kind::NodeCut
                | Kind::LinkFlap
                | Kind::LossDelay
        )
    }

    /// Affects the API server for every client.
    pub fn on_api(self) -> bool {
        matches!(self, Kind::ApiOutage | Kind::ApiSlow | Kind::Api5xx)
    }

    pub fn on_controller(self) -> bool {
        matches!(self, Kind::ControllerKill | Kind::ControllersKillBoth)
    }

    /// Service/pool/policy/endpoint churn (not counted against the concurrency limit).
    pub fn is_churn(self) -> bool {
        matches!(
            self,
            Kind::ChurnCreate
                | Kind::ChurnDelete
                | Kind::ChurnRetype
                | Kind::ChurnReclass
                | Kind::PoolEdit
                | Kind::PolicyEdit
                | Kind::EndpointMove
        )
    }

    /// May be aimed at the node holding a watched address (drawn half of the time; the node
    /// is found when the fault starts, see [`Planned::on_holder`]).
    pub fn holder_targetable(self) -> bool {
        matches!(
            self,
            Kind::AgentKill | Kind::AgentTerm | Kind::AgentStop | Kind::NodeCut | Kind::LinkFlap
        )
    }

    /// Relative weight in the draw (the faults that matter most drawn most often).
    fn weight(self) -> u32 {
        match self {
            Kind::AgentKill | Kind::AgentStop | Kind::ApiOutage | Kind::NodeCut => 6,
            Kind::ApiOutageNode | Kind::ChurnCreate | Kind::ChurnDelete => 5,
            Kind::AgentTerm | Kind::AgentRestart | Kind::ChurnRetype => 4,
            Kind::ControllerKill | Kind::LinkFlap | Kind::LossDelay | Kind::Api5xx => 3,
            Kind::EndpointMove => 4,
            Kind::ControllersKillBoth
            | Kind::ApiSlow
            | Kind::PoolEdit
            | Kind::PolicyEdit
            | Kind::ChurnReclass => 2,
        }
    }

    /// How long it lasts (ms, inclusive range); 0 = instantaneous.
    fn lasts_ms(self) -> (u64, u64) {
        match self {
            Kind::AgentKill | Kind::AgentTerm => (1_000, 8_000),
            Kind::AgentStop => (300, 6_000),
            Kind::AgentRestart
            | Kind::ChurnCreate
            | Kind::ChurnDelete
            | Kind::ChurnRetype
            | Kind::EndpointMove => (0, 0),
            Kind::ChurnReclass => (1_000, 8_000),
            Kind::ControllerKill | Kind::ControllersKillBoth => (1_000, 10_000),
            Kind::ApiOutage | Kind::NodeCut => (1_000, 8_000),
            Kind::ApiOutageNode => (1_000, 10_000),
            Kind::ApiSlow => (2_000, 10_000),
            Kind::Api5xx => (1_000, 6_000),
            Kind::LinkFlap => (2_000, 6_000),
            Kind::LossDelay | Kind::PoolEdit | Kind::PolicyEdit => (2_000, 10_000),
        }
    }
}

/// Number of churn Services (`chaos-1` …).
pub const CHURN_SERVICES: usize = 4;

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Offset from the start of the run.
    pub at_ms: u64,
    pub kind: Kind,
    /// Node index, controller index or churn Service index, by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    /// How long it lasts (0: instantaneous).
    pub lasts_ms: u64,
    /// Kind-specific: latency ms (`ApiSlow`), loss % (`LossDelay`), flap period ms (`LinkFlap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<u64>,
    /// Aimed at the node that holds watched address number `at_ms % addresses` when it starts
    /// (the runner finds it; `target` is the fallback when no node answers for it then, or
    /// when that node carries another fault).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_holder: bool,
}

impl Planned {
    pub fn end_ms(&self) -> u64 {
        self.at_ms + self.lasts_ms
    }

    /// `agent-kill node2 4.1s`-style label.
    pub fn label(&self, node_names: &[String]) -> String {
        let target = match (self.target, self.kind) {
            (Some(i), k) if k.on_node() => node_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("node#{i}")),
            (Some(i), k) if k.on_controller() => format!("controller-{i}"),
            (Some(i), Kind::EndpointMove) => format!(
                "local-1 to {}",
                node_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("node#{i}"))
            ),
            (Some(i), _) => format!("chaos-{}", i + 1),
            (None, _) => String::new(),
        };
        let mut s = self.kind.name().to_string();
        if self.on_holder {
            s.push_str(" holder");
        }
        if !target.is_empty() {
            s.push(' ');
            s.push_str(&target);
        }
        if let Some(p) = self.param {
            s.push_str(&format!(" ({p})"));
        }
        s
    }
}

/// What to plan for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub duration_ms: u64,
    pub nodes: usize,
    pub controllers: usize,
    /// Kinds that may be drawn (all by default).
    pub kinds: Vec<Kind>,
    /// At most this many non-churn faults at once.
    pub max_concurrent: usize,
}

/// Quiet time at the start (the observers settle) and at the end (everything recovers).
pub const LEAD_IN_MS: u64 = 3_000;
pub const TAIL_MS: u64 = 8_000;
/// A target rests this long after its fault ends before it is hit again.
pub const REST_MS: u64 = 3_000;

/// The schedule for `plan`, sorted by start. Rules: at most `max_concurrent` faults at once
/// (churn apart); a node, a controller replica, the API server carries one fault at a time;
/// at least one node is untouched at any time; every fault ends `TAIL_MS` before the end.
pub fn generate(plan: &Plan) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let kinds: Vec<Kind> = if plan.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        plan.kinds.clone()
    };
    let total_weight: u32 = kinds.iter().map(|k| k.weight()).sum();
    let last_end = plan.duration_ms.saturating_sub(TAIL_MS);
    let mut out: Vec<Planned> = Vec::new();
    let mut t = LEAD_IN_MS;
    loop {
        t += rng.random_range(500..=3_000u64);
        if t >= last_end || total_weight == 0 {
            break;
        }
        // A few draws; the first that fits the rules is kept.
        for _ in 0..6 {
            let mut w = rng.random_range(0..total_weight);
            let kind = *kinds
                .iter()
                .find(|k| {
                    if w < k.weight() {
                        true
                    } else {
                        w -= k.weight();
                        false
                    }
                })
                .expect("w < total weight");
            let (lo, hi) = kind.lasts_ms();
            let lasts = rng.random_range(lo..=hi).min(last_end - t);
            let target = match kind {
                k if k.on_node() => Some(rng.random_range(0..plan.nodes.max(1))),
                Kind::ControllerKill => Some(rng.random_range(0..plan.controllers.max(1))),
                Kind::ChurnCreate | Kind::ChurnDelete | Kind::ChurnRetype | Kind::ChurnReclass => {
                    Some(rng.random_range(0..CHURN_SERVICES))
                }
                Kind::EndpointMove => Some(rng.random_range(0..plan.nodes.max(1))),
                _ => None,
            };
            let param = match kind {
                Kind::ApiSlow => Some(rng.random_range(100..=600u64)),
                Kind::LossDelay => Some(rng.random_range(5..=30u64)),
                Kind::LinkFlap => Some(rng.random_range(200..=800u64)),
                _ => None,
            };
            let on_holder = kind.holder_targetable() && rng.random_bool(0.5);
            let p = Planned {
                at_ms: t,
                kind,
                target,
                lasts_ms: lasts,
                param,
                on_holder,
            };
            if fits(plan, &out, &p) {
                out.push(p);
                break;
            }
        }
    }
    out
}

/// Whether `p` may start given the faults already planned (see [`generate`]).
fn fits(plan: &Plan, planned: &[Planned], p: &Planned) -> bool {
    let busy = |q: &&Planned| q.at_ms <= p.at_ms && q.end_ms() + REST_MS > p.at_ms;
    let active: Vec<&Planned> = planned.iter().filter(busy).collect();
    if p.kind.is_churn() {
        // Nobody edits objects while the API server refuses or fails every request (the lab's
        // own client is refused too); one pool edit and one policy edit at a time (each
        // reverts its own change); one class change per churn Service at a time.
        let api_down = active
            .iter()
            .any(|q| matches!(q.kind, Kind::ApiOutage | Kind::Api5xx));
        return !api_down
            && (!matches!(p.kind, Kind::PoolEdit | Kind::PolicyEdit)
                || !active.iter().any(|q| q.kind == p.kind))
            && (p.kind != Kind::ChurnReclass
                || !active
                    .iter()
                    .any(|q| q.kind == p.kind && q.target == p.target));
    }
    let faults: Vec<&&Planned> = active.iter().filter(|q| !q.kind.is_churn()).collect();
    if faults.len() >= plan.max_concurrent {
        return false;
    }
    if p.kind.on_node() {
        let mut nodes: Vec<usize> = faults
            .iter()
            .filter(|q| q.kind.on_node())
            .filter_map(|q| q.target)
            .collect();
        if nodes.contains(&p.target.unwrap_or(usize::MAX)) {
            return false;
        }
        nodes.push(p.target.unwrap_or(0));
        nodes.sort_unstable();
        nodes.dedup();
        return nodes.len() < plan.nodes;
    }
    if p.kind.on_api() {
        return !faults.iter().any(|q| q.kind.on_api());
    }
    if p.kind.on_controller() {
        return !faults.iter().any(|q| q.kind.on_controller());
    }
    true
}

/// Faults per kind in a schedule.
pub fn count_by_kind(s: &[Planned]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for p in s {
        *m.entry(p.kind.name()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64) -> Plan {
        Plan {
            seed,
            duration_ms: 600_000,
            nodes: 3,
            controllers: 2,
            kinds: vec![],
            max_concurrent: 3,
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a = generate(&plan(42));
        assert_eq!(a, generate(&plan(42)));
        assert_ne!(a, generate(&plan(43)));
        assert!(a.len() > 100, "10 minutes hold many faults: {}", a.len());
    }

    #[test]
    fn every_kind_is_drawn_in_ten_minutes() {
        let counts = count_by_kind(&generate(&plan(7)));
        for k in Kind::ALL {
            assert!(counts.contains_key(k.name()), "{} never drawn", k.name());
        }
    }

    #[test]
    fn the_rules_hold_at_every_start() {
        for seed in 0..20 {
            let p = plan(seed);
            let s = generate(&p);
            for (i, f) in s.iter().enumerate() {
                assert!(f.end_ms() <= p.duration_ms - TAIL_MS, "{f:?}");
                let active: Vec<&Planned> = s[..i]
                    .iter()
                    .filter(|q| !q.kind.is_churn() && q.end_ms() > f.at_ms)
                    .collect();
                if f.kind.is_churn() {
                    assert!(
                        !active
                            .iter()
                            .any(|q| matches!(q.kind, Kind::ApiOutage | Kind::Api5xx)),
                        "no churn while the API server refuses: {f:?}"
                    );
                    continue;
                }
                assert!(active.len() < p.max_concurrent, "seed {seed}: {f:?}");
                if f.kind.on_node() {
                    let mut hit: Vec<usize> = active
                        .iter()
                        .filter(|q| q.kind.on_node())
                        .filter_map(|q| q.target)
                        .collect();
                    assert!(!hit.contains(&f.target.unwrap()), "seed {seed}: {f:?}");
                    hit.push(f.target.unwrap());
                    hit.sort_unstable();
                    hit.dedup();
                    assert!(hit.len() < p.nodes, "a node stays untouched: {f:?}");
                }
                if f.kind.on_api() {
                    assert!(!active.iter().any(|q| q.kind.on_api()), "{f:?}");
                }
            }
            // Sorted by start.
            assert!(s.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        }
    }

    #[test]
    fn holder_targets_only_for_node_faults_and_class_changes_one_at_a_time() {
        for seed in 0..10 {
            let s = generate(&plan(seed));
            assert!(s.iter().all(|f| !f.on_holder || f.kind.holder_targetable()));
            for (i, f) in s.iter().enumerate() {
                if f.kind == Kind::ChurnReclass {
                    assert!(f.lasts_ms > 0 && f.target.is_some(), "{f:?}");
                    assert!(
                        !s[..i].iter().any(|q| q.kind == f.kind
                            && q.target == f.target
                            && q.end_ms() + REST_MS > f.at_ms),
                        "seed {seed}: {f:?}"
                    );
                }
                if f.kind == Kind::EndpointMove {
                    assert!(f.target.is_some_and(|t| t < 3) && f.lasts_ms == 0);
                }
            }
        }
        let s = generate(&plan(7));
        let holder = s.iter().filter(|f| f.on_holder).count();
        let targetable = s.iter().filter(|f| f.kind.holder_targetable()).count();
        assert!(
            holder > targetable / 4 && holder < targetable * 3 / 4,
            "about half: {holder} of {targetable}"
        );
        let f = s.iter().find(|f| f.on_holder).unwrap();
        assert!(f
            .label(&["a".into(), "b".into(), "c".into()])
            .contains(" holder "));
    }

    #[test]
    fn only_the_kinds_asked_for() {
        let mut p = plan(1);
        p.kinds = vec![Kind::AgentKill, Kind::ApiOutage];
        let s = generate(&p);
        assert!(!s.is_empty());
        assert!(s
            .iter()
            .all(|f| matches!(f.kind, Kind::AgentKill | Kind::ApiOutage)));
    }
}
