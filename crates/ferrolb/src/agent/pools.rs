//! Which pool an announced address belongs to, for `L2AnnouncementPolicy` `spec.pools` and
//! `spec.poolSelector` (a policy that announces only some pools' addresses, as MetalLB's
//! `L2Advertisement.ipAddressPools` / `ipAddressPoolSelectors`).
//!
//! The agent watches the `LoadBalancerIPPool`s (a handful of small objects; [`trim`] keeps
//! name, labels, creation time and blocks) and attributes each address with the allocator's own
//! rule, [`crate::ipam::pool::containing_pool`]: the oldest pool whose usable blocks contain it.
//! When pools do not overlap (overlapping ones are in `Conflict`) that is the pool the
//! controller handed the address out from, and every agent attributes alike (shared objects
//! only). Why not read the pool off the Service: the controller writes only
//! `status.loadBalancer.ingress` and conditions (the pool is in a condition's human-readable
//! message, not a contract); an annotation would be a second, non-status write per allocation
//! (a metadata patch racing the users' own edits), and even the controller's record of an
//! address no pool contains any more does not survive its restart (adoption attributes by
//! blocks too). MetalLB's speakers decide `ipAddressPools` the same way, by the pools' ranges.
//!
//! Consequence (documented): an address no pool contains — kept by its Service after its pool
//! shrank or was deleted (condition `ferrolb.io/AddressNotCovered`), or an `externalIP` — has
//! no pool, so a policy that names pools does not announce it; policies without a pool
//! restriction still do.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{L2AnnouncementPolicySpec, LoadBalancerIPPool, LoadBalancerIPPoolSpec};
use crate::ipam::pool::containing_pool;
use crate::ipam::selector::Selector;
use crate::ipam::{Addr, PoolDef};

/// The pools the agent knows, for attributing addresses. Cheap to rebuild (pools are few).
#[derive(Debug, Clone, Default)]
pub struct PoolIndex {
    pools: Vec<(PoolDef, BTreeMap<String, String>)>,
}

/// Compared by what attribution and selection read (name, age, blocks, labels).
impl PartialEq for PoolIndex {
    fn eq(&self, other: &Self) -> bool {
        self.pools.len() == other.pools.len()
            && self.pools.iter().zip(&other.pools).all(|(a, b)| {
                a.0.name == b.0.name
                    && a.0.created == b.0.created
                    && a.0.blocks == b.0.blocks
                    && a.1 == b.1
            })
    }
}
impl Eq for PoolIndex {}

/// A pool an address belongs to: its name and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRef<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl PoolIndex {
    /// The index of these pools (order does not matter; nameless ones are skipped).
    pub fn new(pools: &[&LoadBalancerIPPool]) -> Self {
        let mut v: Vec<(PoolDef, BTreeMap<String, String>)> = pools
            .iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| !n.is_empty()))
            .map(|p| {
                (
                    PoolDef::from_crd(p).0,
                    p.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        PoolIndex { pools: v }
    }

    /// The index of pools already converted (`ferrolb plan` ages pools by input order).
    pub fn from_defs(pools: Vec<(PoolDef, BTreeMap<String, String>)>) -> Self {
        let mut pools = pools;
        pools.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        PoolIndex { pools }
    }

    /// Whether no pool is known.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The pool `ip` belongs to ([`containing_pool`]), if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<PoolRef<'_>> {
        let def = containing_pool(self.pools.iter().map(|(d, _)| d), Addr::from_ip(ip))?;
        self.pools
            .iter()
            .find(|(d, _)| std::ptr::eq(d, def))
            .map(|(d, labels)| PoolRef {
                name: &d.name,
                labels,
            })
    }
}

/// A policy's pool restriction (`spec.pools`, `spec.poolSelector`), checked once.
#[derive(Debug, Clone)]
pub struct PoolSelection {
    names: Vec<String>,
    /// `None`: unset, or invalid (then it selects no pool; reported).
    selector: Option<Selector>,
}

impl PoolSelection {
    /// The restriction of a policy: `Ok(None)` when it has none (every address, pool or not).
    /// Problems are `(field, message)`; what remains valid still applies (fail closed: an
    /// invalid selector selects no pool, the named pools still count).
    pub fn compile(spec: &L2AnnouncementPolicySpec) -> (Option<Self>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        if spec.pools.is_empty() && spec.pool_selector.is_none() {
            return (None, problems);
        }
        let mut names = Vec::new();
        for (i, n) in spec.pools.iter().enumerate() {
            let n = n.trim();
            if n.is_empty() {
                problems.push((
                    format!("spec.pools[{i}]"),
                    "empty pool name; entry ignored".to_string(),
                ));
            } else {
                names.push(n.to_string());
            }
        }
        let selector = match spec.pool_selector.as_ref().map(Selector::compile) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                problems.push((
                    "spec.poolSelector".to_string(),
                    format!("{e}; it selects no pool"),
                ));
                None
            }
        };
        (Some(PoolSelection { names, selector }), problems)
    }

    /// Whether an address of `pool` (`None`: no pool contains it) is selected.
    pub fn allows(&self, pool: Option<PoolRef<'_>>) -> bool {
        pool.is_some_and(|p| {
            self.names.iter().any(|n| n == p.name)
                || self.selector.as_ref().is_some_and(|s| s.matches(p.labels))
        })
    }
}

/// What the agent keeps of a pool: name, labels, creation time, blocks and the first/last-address
/// switch (what [`PoolIndex`] reads); selectors, status and the rest go.
pub fn trim(p: &mut LoadBalancerIPPool) {
    p.metadata = ObjectMeta {
        name: p.metadata.name.take(),
        uid: p.metadata.uid.take(),
        resource_version: p.metadata.resource_version.take(),
        labels: p.metadata.labels.take(),
        creation_timestamp: p.metadata.creation_timestamp.take(),
        ..Default::default()
    };
    p.spec = LoadBalancerIPPoolSpec {
        blocks: std::mem::take(&mut p.spec.blocks),
        allow_first_last_ips: p.spec.allow_first_last_ips,
        ..Default::default()
    };
    p.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IpBlock, YesNo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, Time,
    };

    fn pool(name: &str, cidr: &str, created: i64, labels: &[(&str, &str)]) -> LoadBalancerIPPool {
        let mut p = LoadBalancerIPPool::new(
            name,
            LoadBalancerIPPoolSpec {
                blocks: vec![IpBlock {
                    cidr: Some(cidr.into()),
                    ..Default::default()
                }],
                service_selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "x".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        p.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p
    }

    fn name_of(idx: &PoolIndex, ip: &str) -> Option<String> {
        idx.pool_of(ip.parse().unwrap()).map(|p| p.name.to_string())
    }

    #[test]
    fn an_address_belongs_to_the_oldest_pool_containing_it() {
        let a = pool("a", "198.51.100.0/28", 200, &[]);
        let b = pool("b", "198.51.100.16/28", 100, &[]);
        // Overlaps a (younger: a Conflict for the controller): a keeps its addresses.
        let c = pool("c", "198.51.100.0/27", 300, &[]);
        let idx = PoolIndex::new(&[&c, &a, &b]);
        assert_eq!(name_of(&idx, "198.51.100.5").as_deref(), Some("a"));
        assert_eq!(name_of(&idx, "198.51.100.20").as_deref(), Some("b"));
        // Network/broadcast addresses of a CIDR are not usable: in no pool.
        assert_eq!(name_of(&idx, "198.51.100.0"), None);
        assert_eq!(name_of(&idx, "203.0.113.1"), None);
        // Input order does not matter.
        assert_eq!(idx, PoolIndex::new(&[&b, &a, &c]));
        // Made older than a, c takes the shared addresses.
        let c_old = pool("c", "198.51.100.0/27", 50, &[]);
        let idx = PoolIndex::new(&[&c_old, &a, &b]);
        assert_eq!(name_of(&idx, "198.51.100.5").as_deref(), Some("c"));
        assert_ne!(idx, PoolIndex::new(&[&c, &a, &b]));
    }

    #[test]
    fn trimmed_pools_attribute_alike_and_keep_only_what_is_read() {
        let mut a = pool("a", "198.51.100.0/28", 200, &[("tier", "web")]);
        a.spec.allow_first_last_ips = YesNo::Yes;
        a.spec.priority = Some(3);
        let b = pool("b", "198.51.100.0/27", 100, &[]);
        let whole = PoolIndex::new(&[&a, &b]);
        let (mut ta, mut tb) = (a.clone(), b.clone());
        trim(&mut ta);
        trim(&mut tb);
        assert_eq!(PoolIndex::new(&[&ta, &tb]), whole);
        assert!(ta.spec.service_selector.is_none() && ta.spec.priority.is_none());
        assert_eq!(ta.spec.allow_first_last_ips, YesNo::Yes);
        assert_eq!(ta.metadata.labels, a.metadata.labels);
    }

    fn spec(pools: &[&str], sel: Option<LabelSelector>) -> L2AnnouncementPolicySpec {
        L2AnnouncementPolicySpec {
            pools: pools.iter().map(|s| s.to_string()).collect(),
            pool_selector: sel,
            ..Default::default()
        }
    }

    #[test]
    fn names_and_selector_are_ored_and_no_pool_is_never_selected() {
        let labels: BTreeMap<String, String> = [("tier".to_string(), "web".to_string())].into();
        let none = BTreeMap::new();
        let web = PoolRef {
            name: "web",
            labels: &labels,
        };
        let db = PoolRef {
            name: "db",
            labels: &none,
        };
        let other = PoolRef {
            name: "other",
            labels: &none,
        };
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        let (s, problems) = PoolSelection::compile(&spec(&["db"], Some(sel)));
        let s = s.expect("a restriction");
        assert!(problems.is_empty());
        assert!(s.allows(Some(web)) && s.allows(Some(db)));
        assert!(!s.allows(Some(other)));
        assert!(!s.allows(None));

        // An empty selector selects every pool, but still not "no pool".
        let (s, _) = PoolSelection::compile(&spec(&[], Some(LabelSelector::default())));
        let s = s.expect("a restriction");
        assert!(s.allows(Some(other)) && !s.allows(None));

        // Unset: no restriction at all.
        assert!(PoolSelection::compile(&spec(&[], None)).0.is_none());
    }

    #[test]
    fn bad_input_is_reported_by_field_and_fails_closed() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let (s, problems) = PoolSelection::compile(&spec(&["", "db"], Some(bad)));
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.pools[0]", "spec.poolSelector"]);
        let s = s.expect("still a restriction");
        let none = BTreeMap::new();
        let labels: BTreeMap<String, String> = [("tier".to_string(), "web".to_string())].into();
        assert!(s.allows(Some(PoolRef {
            name: "db",
            labels: &none
        })));
        assert!(!s.allows(Some(PoolRef {
            name: "web",
            labels: &labels
        })));
        assert!(!s.allows(Some(PoolRef {
            name: "",
            labels: &none
        })));
    }
}
