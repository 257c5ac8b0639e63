//! What the agent writes besides leases: `events.k8s.io/v1` Events on a Service (this node
//! starts announcing it; another station answers for its address, `agent::conflicts`), and the
//! `Valid` condition on `L2AnnouncementPolicy` status.
//!
//! # Who writes policy status
//! Policy problems (bad selector, bad interface regex) are the same on every node, so letting every
//! agent write them would be N racing writers. One agent is the *designated writer* of each
//! policy: the first node in rendezvous order (`crate::lease::rendezvous_rank` with key
//! `policy/<name>`) among the nodes whose `Ready` condition is `True` and that are not excluded
//! from load balancers. It writes only when the condition differs from what it computes, with the
//! cached object's resourceVersion as precondition (a 409 means the cache is stale: the watch
//! brings the new object and the next recompute decides again). Every agent logs the problems.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::cache::{CachedNode, CachedService};
use super::eligibility::{Desired, PolicyProblem, LABEL_EXCLUDE_LB};
use crate::api::{L2AnnouncementPolicy, L2AnnouncementPolicyStatus, AGENT_NAME};
use crate::k8s;
use crate::k8s::conditions::CondWant;

/// Condition type on `L2AnnouncementPolicy` status.
pub const COND_VALID: &str = "Valid";
/// Event reason when a node starts announcing a Service's addresses.
pub const REASON_ANNOUNCING: &str = "Announcing";
/// Event action.
pub const ACTION_ANNOUNCE: &str = "Announce";

/// `reportingInstance` of this node's agent.
pub fn reporting_instance(node: &str) -> String {
    format!("ferrolb-agent-{node}")
}

/// What an Event needs of the Service it regards: a whole Service or the agent's cached one.
pub trait Regarding {
    fn namespace(&self) -> Option<&str>;
    fn name(&self) -> Option<&str>;
    fn uid(&self) -> Option<&str>;
}

impl Regarding for Service {
    fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }
    fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }
    fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref()
    }
}

impl Regarding for CachedService {
    fn namespace(&self) -> Option<&str> {
        Some(&self.namespace)
    }
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }
    fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }
}

/// The Event "announcing ADDRS from NODE on IFACES" regarding `svc` (None when the Service has
/// no name/namespace).
pub fn announce_event(
    svc: &impl Regarding,
    node: &str,
    ips: &BTreeSet<IpAddr>,
    ifaces: &BTreeSet<String>,
    now: jiff::Timestamp,
) -> Option<Event> {
    let ips = ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let ifaces = ifaces.iter().cloned().collect::<Vec<_>>().join(", ");
    service_event(
        svc,
        node,
        EventKind {
            type_: "Normal",
            reason: REASON_ANNOUNCING,
            action: ACTION_ANNOUNCE,
        },
        format!("announcing {ips} from {node} on {ifaces}"),
        now,
    )
}

/// Type, reason and action of an agent Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub action: &'static str,
}

/// An Event from this node's agent regarding `svc` (None when the Service has no
/// name/namespace).
pub fn service_event(
    svc: &impl Regarding,
    node: &str,
    kind: EventKind,
    note: String,
    now: jiff::Timestamp,
) -> Option<Event> {
    let ns = svc.namespace()?.to_string();
    let name = svc.name()?.to_string();
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(ns),
        name: Some(name),
        uid: svc.uid().map(str::to_string),
        resource_version: None,
        field_path: None,
    };
    let text = k8s::events::EventText {
        type_: kind.type_,
        reason: kind.reason,
        action: kind.action,
        note: &note,
    };
    let by = k8s::events::Reporter {
        controller: AGENT_NAME,
        instance: &reporting_instance(node),
    };
    // Unique per node: the instant in nanoseconds.
    let unique = u64::try_from(now.as_nanosecond()).unwrap_or_default();
    Some(k8s::events::build(&regarding, text, by, now, unique))
}

/// The `Valid` condition a policy should carry given its problems.
pub fn policy_condition(
    policy: &L2AnnouncementPolicy,
    problems: &[&PolicyProblem],
    now: jiff::Timestamp,
) -> Condition {
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "Valid",
            "selectors and interface regexes are valid".to_string(),
        )
    } else {
        (
            "False",
            "InvalidSpec",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    policy_cond(
        policy,
        CondWant::new(COND_VALID, status == "True", reason, message),
        now,
    )
}

/// Condition type on `L2AnnouncementPolicy` status: subnet-aware candidacy held for every
/// address (`True`), or some were announced through the fallback (`False`, reason
/// [`REASON_NO_NODE_ON_SUBNET`], the message lists them).
pub const COND_SUBNET_MATCH: &str = "SubnetMatch";
/// `SubnetMatch` reason when no eligible node has a selected interface whose prefix contains
/// some of the policy's addresses.
pub const REASON_NO_NODE_ON_SUBNET: &str = "NoNodeOnSubnet";

/// The `SubnetMatch` condition a policy should carry; `fallbacks` = its addresses announced
/// without a containing prefix (see `eligibility::Desired::subnet_fallbacks`).
pub fn subnet_condition(
    policy: &L2AnnouncementPolicy,
    fallbacks: Option<&BTreeSet<IpAddr>>,
    now: jiff::Timestamp,
) -> Condition {
    let (status, reason, message) = match fallbacks.filter(|f| !f.is_empty()) {
        _ if !policy.spec.is_subnet_aware() => (
            "True",
            "NotSubnetAware",
            "spec.subnetAware is false: interface prefixes are not looked at".to_string(),
        ),
        None => (
            "True",
            "OnSubnet",
            "addresses are announced only from nodes with a selected interface whose prefix \
             contains them"
                .to_string(),
        ),
        Some(f) => {
            let mut list: Vec<String> = f.iter().take(20).map(IpAddr::to_string).collect();
            if f.len() > 20 {
                list.push(format!("and {} more", f.len() - 20));
            }
            (
                "False",
                REASON_NO_NODE_ON_SUBNET,
                format!(
                    "no eligible node has a selected interface with a prefix containing {}: \
                     announced from every eligible node (without an address on the interface)",
                    list.join(", ")
                ),
            )
        }
    };
    policy_cond(
        policy,
        CondWant::new(COND_SUBNET_MATCH, status == "True", reason, message),
        now,
    )
}

/// `want` as written on `policy` (its generation observed; lastTransitionTime kept unless the
/// status flips).
fn policy_cond(
    policy: &L2AnnouncementPolicy,
    mut want: CondWant,
    now: jiff::Timestamp,
) -> Condition {
    want.observed_generation = policy.metadata.generation;
    let existing = policy
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    want.to_condition_in(existing, &Time(now))
}

/// Whether the policy's status already says `cond` (ignoring lastTransitionTime).
pub fn condition_current(policy: &L2AnnouncementPolicy, cond: &Condition) -> bool {
    policy.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == cond.type_
                && c.status == cond.status
                && c.reason == cond.reason
                && c.message == cond.message
                && c.observed_generation == cond.observed_generation
        })
    })
}

/// The policy object with `cond` set in its status (other conditions kept).
pub fn with_condition(policy: &L2AnnouncementPolicy, cond: Condition) -> L2AnnouncementPolicy {
    let mut p = policy.clone();
    let status = p
        .status
        .get_or_insert_with(L2AnnouncementPolicyStatus::default);
    status.observed_generation = policy.metadata.generation;
    status.conditions.retain(|c| c.type_ != cond.type_);
    status.conditions.push(cond);
    p.metadata.managed_fields = None;
    p
}

/// Nodes that may write policy status: Ready and not excluded, sorted.
pub fn status_writers(nodes: &[&CachedNode]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| !n.labels.contains_key(LABEL_EXCLUDE_LB) && n.ready)
        .map(|n| n.name.to_string())
        .collect();
    out.sort();
    out
}

/// The policy statuses this node is to write now: for each policy whose designated writer it is
/// (rank 0 of `policy/<name>` among the [`status_writers`]), the object with its `Valid` and
/// `SubnetMatch` conditions as `desired` says they should be — only where the status does not
/// say so already. One writer per policy, so the nodes never fight over a status.
pub fn policy_status_updates(
    policies: &[&L2AnnouncementPolicy],
    nodes: &[&CachedNode],
    me: &str,
    desired: &Desired,
    now: jiff::Timestamp,
) -> Vec<L2AnnouncementPolicy> {
    let writers = status_writers(nodes);
    if !writers.iter().any(|w| w == me) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in policies {
        let Some(name) = p.metadata.name.as_deref() else {
            continue;
        };
        if crate::lease::rendezvous_rank(&format!("policy/{name}"), me, &writers) != 0 {
            continue;
        }
        let problems: Vec<_> = desired.problems_of(name).collect();
        let conds = [
            policy_condition(p, &problems, now),
            subnet_condition(p, desired.subnet_fallbacks.get(name), now),
        ];
        if conds.iter().all(|c| condition_current(p, c)) {
            continue;
        }
        out.push(
            conds
                .into_iter()
                .fold((*p).clone(), |u, c| with_condition(&u, c)),
        );
    }
    out
}

/// Writes the policy's status with its resourceVersion as precondition.
pub async fn write_policy_status(
    client: &kube::Client,
    updated: &L2AnnouncementPolicy,
) -> kube::Result<()> {
    let api: kube::Api<L2AnnouncementPolicy> = kube::Api::all(client.clone());
    let name = updated.metadata.name.clone().unwrap_or_default();
    api.replace_status(&name, &kube::api::PostParams::default(), updated)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::L2AnnouncementPolicySpec;
    use crate::fixtures::ServiceBuilder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn announce_event_has_every_required_field() {
        let svc = ServiceBuilder::named("demo", "web").uid("u-1").build();
        let ips: BTreeSet<IpAddr> = ["198.51.100.10".parse().unwrap()].into();
        let ifaces: BTreeSet<String> = ["eth0".to_string()].into();
        let ev = announce_event(&svc, "n1", &ips, &ifaces, ts("2026-11-22T07:57:47.246813Z"))
            .expect("event");
        let v = serde_json::to_value(&ev).unwrap();
        // The fields golden 74 lists as required, and eventTime (golden 73) with 6 digits.
        assert_eq!(v["eventTime"], "2026-11-22T07:57:47.246813Z");
        assert_eq!(v["reportingController"], "ferrolb.io/agent");
        assert_eq!(v["reportingInstance"], "ferrolb-agent-n1");
        assert_eq!(v["action"], "Announce");
        assert_eq!(v["reason"], "Announcing");
        assert_eq!(v["type"], "Normal");
        assert_eq!(v["note"], "announcing 198.51.100.10 from n1 on eth0");
        assert_eq!(v["regarding"]["kind"], "Service");
        assert_eq!(v["regarding"]["uid"], "u-1");
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert!(v["metadata"]["name"].as_str().unwrap().starts_with("web."));
    }

    #[test]
    fn event_time_keeps_six_digits_on_whole_seconds() {
        let svc = ServiceBuilder::named("demo", "web").build();
        let ev = announce_event(
            &svc,
            "n1",
            &BTreeSet::new(),
            &BTreeSet::new(),
            ts("2026-11-22T07:57:47Z"),
        )
        .unwrap();
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["eventTime"], "2026-11-22T07:57:47.000000Z");
    }

    fn pol() -> L2AnnouncementPolicy {
        let mut p = L2AnnouncementPolicy::new("p", L2AnnouncementPolicySpec::default());
        p.metadata.generation = Some(3);
        p
    }

    #[test]
    fn condition_reflects_problems_and_keeps_transition_time() {
        let p = pol();
        let prob = PolicyProblem {
            policy: "p".into(),
            field: "spec.interfaces[0]".into(),
            message: "invalid interface regex \"(\"".into(),
        };
        let t1 = ts("2026-11-22T08:00:00Z");
        let c = policy_condition(&p, &[&prob], t1);
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, "InvalidSpec");
        assert!(c.message.contains("spec.interfaces[0]"));
        assert_eq!(c.observed_generation, Some(3));
        assert!(!condition_current(&p, &c));
        let p2 = with_condition(&p, c.clone());
        assert!(condition_current(&p2, &c));
        // Same status later: transition time kept.
        let c2 = policy_condition(&p2, &[&prob], ts("2026-11-22T09:00:00Z"));
        assert_eq!(c2.last_transition_time, Time(t1));
        // Fixed: True, new transition time.
        let c3 = policy_condition(&p2, &[], ts("2026-11-22T09:00:00Z"));
        assert_eq!(c3.status, "True");
        assert_eq!(c3.last_transition_time, Time(ts("2026-11-22T09:00:00Z")));
        assert!(!condition_current(&p2, &c3));
    }

    fn node(name: &str) -> CachedNode {
        use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
        let n = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        CachedNode::new(&n, &mut crate::agent::cache::Interner::default()).unwrap()
    }

    /// One designated writer per policy (the same on every node), and only a status that differs
    /// from what the policy should say is written.
    #[test]
    fn one_writer_per_policy_and_only_a_status_that_differs() {
        let now = ts("2026-11-22T08:00:00Z");
        let names = ["a", "b", "c", "d", "e", "f"];
        let policies: Vec<L2AnnouncementPolicy> = names
            .iter()
            .map(|n| L2AnnouncementPolicy::new(n, L2AnnouncementPolicySpec::default()))
            .collect();
        let refs: Vec<&L2AnnouncementPolicy> = policies.iter().collect();
        let nodes = [node("n1"), node("n2"), node("n3")];
        let node_refs: Vec<&CachedNode> = nodes.iter().collect();
        let mut desired = Desired::default();
        desired.problems.push(PolicyProblem {
            policy: "a".into(),
            field: "spec.interfaces[0]".into(),
            message: "invalid interface regex \"(\"".into(),
        });
        let by_node: Vec<Vec<L2AnnouncementPolicy>> = ["n1", "n2", "n3"]
            .iter()
            .map(|me| policy_status_updates(&refs, &node_refs, me, &desired, now))
            .collect();
        // Every policy exactly once across the nodes.
        let mut written: Vec<String> = by_node
            .iter()
            .flatten()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        written.sort();
        assert_eq!(written, names.map(String::from).to_vec());
        assert!(
            by_node.iter().filter(|w| !w.is_empty()).count() >= 2,
            "spread: {written:?}"
        );
        // What is written says what the policy should: `a` invalid, the others valid.
        let a = by_node
            .iter()
            .flatten()
            .find(|p| p.metadata.name.as_deref() == Some("a"))
            .unwrap();
        let valid = a
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == COND_VALID)
            .unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", "InvalidSpec")
        );
        // Once the watch brings the written objects back, nothing more to write.
        let after: Vec<L2AnnouncementPolicy> = by_node.into_iter().flatten().collect();
        let after_refs: Vec<&L2AnnouncementPolicy> = after.iter().collect();
        for me in ["n1", "n2", "n3"] {
            let later = ts("2026-11-22T09:00:00Z");
            assert!(policy_status_updates(&after_refs, &node_refs, me, &desired, later).is_empty());
        }
        // A node that is no writer (excluded, not Ready, or unknown) writes nothing.
        assert!(policy_status_updates(&refs, &node_refs, "n9", &desired, now).is_empty());
    }
}
