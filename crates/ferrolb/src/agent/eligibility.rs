//! What this node should announce: a pure function of the watched objects.
//!
//! [`compute`] takes the `L2AnnouncementPolicy`s, Services, all Nodes, EndpointSlices and this
//! node's eligible interface names and returns the desired announcement [`Group`]s: one group per
//! lease, i.e. per set of addresses that must be announced from one node, with the Services it
//! serves, the nodes that may hold it (the rendezvous candidates, identical on every node) and the
//! interfaces this node would answer on. Nothing here does I/O; the agent feeds its caches in.
//!
//! # Rules (and the decisions where the issue left a choice)
//! - A policy *covers* a (Service, address) pair when its `serviceSelector` selects the Service
//!   (with the virtual labels `io.kubernetes.service.namespace` / `io.kubernetes.service.name`) and
//!   the address is one of `status.loadBalancer.ingress[].ip` (policy `loadBalancerIPs`, Service
//!   `type: LoadBalancer` only) or of `spec.externalIPs` (policy `externalIPs`, any type).
//! - **Pools** (`spec.pools`, `spec.poolSelector`): a policy with either covers only addresses
//!   whose pool ([`super::pools`]: the oldest pool whose blocks contain the address, from
//!   [`Options::pools`]) it names or selects; an address in no pool is not covered by it.
//! - **Classes.** Ingress addresses of a LoadBalancer Service are considered when the Service is
//!   ours (no `loadBalancerClass`, or [`LB_CLASS`](crate::api::LB_CLASS), or [`CILIUM_LB_CLASS`](crate::api::CILIUM_LB_CLASS) when
//!   [`Options::serve_cilium_class`]). A Service of a *foreign* class is announced only when a
//!   policy selects it *explicitly*, i.e. with a `serviceSelector` that has at least one
//!   requirement: a catch-all policy must never make us answer for another implementation's
//!   addresses (two announcers = split brain), but an operator migrating from another
//!   implementation can opt in deliberately.
//! - **Grouping.** Services whose announced addresses overlap share ONE group (transitively, by
//!   union-find), so a shared address is only ever announced from one node. The group's key is
//!   the canonical address set (sorted, comma-separated); the lease name is derived from it.
//! - **Candidates.** A node may hold a group when, for *every* (Service, address) pair in it, some
//!   covering policy's `nodeSelector` selects the node and — for `externalTrafficPolicy: Local` —
//!   the node has a ready local endpoint of that Service. Requiring every pair (not any) means the
//!   holder never attracts traffic for a Local Service it would drop. Nodes labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers` are never candidates. The list is
//!   computed from shared objects only (no local state), so every agent ranks the same list.
//! - **Preferred nodes** (`spec.preferredNodes[] = {weight, nodeSelector}`): a node's preference
//!   under a policy is the sum of the weights of the entries selecting it (Kubernetes' preferred
//!   node affinity); for a group, the highest preference any covering policy that lets the node
//!   announce gives it. Candidates are split into tiers by preference, highest first, nodes with
//!   preference 0 last (the fallbacks), joined by [`crate::lease::TIER_BREAK`]; the lease ranks
//!   ([`crate::lease::rendezvous_rank`], [`crate::lease::balanced_assignment`]) put a higher tier
//!   first and use the rendezvous order within a tier, and balance only within the first tier.
//!   So a preferred node takes the address while it is alive, a fallback when no preferred node
//!   is, and the normal rebalancing hands it back when a preferred node returns. The rule lives
//!   here (who is preferred) and in the rank functions (what tiers mean), nowhere else.
//! - **Local endpoints** (ETP Local): an EndpointSlice endpoint of the Service
//!   (`kubernetes.io/service-name` label, same namespace) with `conditions.ready != false` whose
//!   `nodeName` is the node. Endpoints *without* `nodeName` (Cilium #48799 regressed on these):
//!   they count as local when one of their addresses lies in the node's `spec.podCIDRs` /
//!   `spec.podCIDR` or equals one of the node's `status.addresses`; otherwise they are not local.
//!   This never claims an endpoint for two nodes as long as pod CIDRs don't overlap.
//! - **Subnet-aware candidacy** (`spec.subnetAware`, default on): under such a policy a node
//!   counts for a (Service, address) pair only when one of the node's published interfaces
//!   ([`Options::node_prefixes`], see [`super::subnets`]) that the policy selects carries a
//!   prefix containing the address, and this node then announces only on those interfaces. When
//!   no node passes for a group, the group falls back to the rule without prefixes (every node
//!   the selectors allow, every selected interface) and the subnet-aware policies covering it
//!   list its addresses in [`Desired::subnet_fallbacks`] (their `SubnetMatch` condition). Only
//!   shared data decides, so every agent still computes the same candidate list.
//! - **Interfaces** (this node only): the union, over the covering policies that select this
//!   node, of the eligible interfaces their anchored regexes match; a policy without regexes
//!   takes every eligible interface. A node that would announce on no interface does not contend
//!   ([`Group::eligible_here`] is false) even though it stays in the candidate list.
//! - **Bad input** never panics and fails closed: an invalid selector selects nothing, an invalid
//!   regex matches nothing (a policy whose regexes are all invalid announces on no interface, it
//!   does *not* fall back to "all"); each problem is reported in [`Desired::problems`] with the
//!   field path, for the policy status condition / Event.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::cache::{CachedNode, CachedService, CachedSlice, Labels};
use super::pools::PoolIndex;

use crate::api::L2AnnouncementPolicy;

mod policy;

pub use policy::{compile_interface_regex, policy_problems, Policies};
use policy::{compile_policies, coverage, CompiledPolicy};

/// Node label that keeps a node out of every candidate list (as MetalLB and kube-proxy honour it).
pub const LABEL_EXCLUDE_LB: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// EndpointSlice label naming its Service.
pub const LABEL_SERVICE_NAME_SLICE: &str = "kubernetes.io/service-name";

/// Knobs that are not objects, and what agents publish about their nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Treat `io.cilium/l2-announcer` as our own class.
    pub serve_cilium_class: bool,
    /// Every node's eligible interfaces and their configured prefixes (address/length), as the
    /// agents publish them ([`super::subnets`]), this node's own included. A node missing here
    /// has no known prefix. Read only for `spec.subnetAware` policies.
    pub node_prefixes: NodePrefixes,
    /// The `LoadBalancerIPPool`s, for policies limited to some pools (`spec.pools`,
    /// `spec.poolSelector`). Read only for those.
    pub pools: PoolIndex,
    /// This node's interfaces that would be eligible but are down or without carrier (the
    /// agent's live view; empty outside the agent). A group this node could announce only on
    /// such interfaces is listed in [`Desired::dark`], see [`super::linkhold`].
    pub dark_interfaces: Vec<String>,
    /// Node → its published interfaces without carrier ([`super::subnets`]); a node with a
    /// published object reports carrier on every other interface it lists, a node missing
    /// from [`Options::node_prefixes`] reports nothing.
    pub no_carrier: BTreeMap<String, BTreeSet<String>>,
}

/// Node → interface name → prefixes configured on it (`192.0.2.11/24`).
pub type NodePrefixes = BTreeMap<String, BTreeMap<String, Vec<IpNetwork>>>;

/// Everything [`compute`] looks at. Slices are caches' snapshots ([`super::cache`]: what the
/// agent keeps of each object); order does not matter.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// This node's name.
    pub node_name: &'a str,
    pub policies: &'a [&'a L2AnnouncementPolicy],
    pub services: &'a [&'a CachedService],
    /// All nodes of the cluster (the candidate lists need them), including this one.
    pub nodes: &'a [&'a CachedNode],
    pub endpoint_slices: &'a [&'a CachedSlice],
    /// Names of this node's eligible interfaces (up, broadcast, not a bridge/bond member, not
    /// virtual; see `crate::net`).
    pub interfaces: &'a [String],
    pub options: &'a Options,
    /// The groups of the previous computation (a [`Desired::groups`], sorted by key): a group
    /// equal to one of them is returned as that `Arc`, and the fresh copy dropped at once. What
    /// the agent keeps per address is then allocated once, not again on every recompute, and a
    /// recompute's peak holds one copy of the unchanged groups, not two (issue 16). Empty: no
    /// reuse.
    pub prev: &'a [Arc<Group>],
}

/// A Service, by namespace and name (shared strings: an agent names every Service of the
/// cluster in its groups, queues and caches, and the cached Service already holds both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference of a cached Service, sharing its strings.
    pub fn of(svc: &CachedService) -> Self {
        ServiceRef {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One lease's worth of announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Canonical address set: the addresses sorted (IPv4 before IPv6), comma-separated.
    /// Shared with the lease engine's want for this group (its tag and description).
    pub key: Arc<str>,
    /// The addresses, sorted and distinct (a slice: a set's node would cost ≈ 0.2 KiB per group).
    pub addresses: Box<[IpAddr]>,
    /// The Services served, sorted, without duplicates (a list: usually one, and an agent keeps
    /// a group per address of the cluster — a set's node would cost ≈ 0.5 KiB each).
    pub services: Vec<ServiceRef>,
    /// Nodes that may hold this group's lease (the rendezvous candidates), sorted by name —
    /// in preference tiers separated by [`crate::lease::TIER_BREAK`] when a covering policy has
    /// `preferredNodes`. Shared between groups with the same list.
    pub candidates: Arc<Vec<String>>,
    /// Interfaces this node would announce on (empty when this node is not a candidate).
    /// Shared between groups with the same set.
    pub interfaces: Arc<BTreeSet<String>>,
    /// This node contends for the lease: it is a candidate and has at least one interface.
    pub eligible_here: bool,
}

/// Something wrong with a policy, for its status condition / an Event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyProblem {
    pub policy: String,
    /// Field path, e.g. `spec.interfaces[1]` or `spec.nodeSelector`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The result of [`compute`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every group some node may announce, sorted by key. Shared with the holdings (which keep
    /// the local ones): one copy per address in the agent, not two.
    pub groups: Vec<Arc<Group>>,
    /// Problems found in policies, sorted.
    pub problems: Vec<PolicyProblem>,
    /// Subnet-aware policies (`spec.subnetAware`) → the addresses they announce although no
    /// eligible node has a selected interface with a prefix containing them (the fallback: every
    /// eligible node stands, as without the rule). For the policy's `SubnetMatch` condition.
    pub subnet_fallbacks: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Groups this node is a candidate for but could announce only on interfaces without
    /// carrier ([`Options::dark_interfaces`]): group key → whether another candidate reports
    /// carrier on an interface that would announce it. They are `eligible_here` with those
    /// interfaces; [`super::linkhold`] decides whether this node keeps them.
    pub dark: BTreeMap<String, bool>,
}

impl Desired {
    /// The groups this node contends for.
    pub fn local(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.groups.iter().filter(|g| g.eligible_here)
    }

    /// Replaces each group that [`super::linkhold`] changed (the [`Desired::dark`] ones) by an
    /// equal group of `prev`, as [`compute`] does for the others: a group it made ineligible
    /// here differs from the fresh copy `compute` compared, but often equals the previous one.
    pub fn reuse_dark(&mut self, prev: &[Arc<Group>]) {
        if self.dark.is_empty() {
            return;
        }
        for g in self.groups.iter_mut() {
            if self.dark.contains_key(&*g.key) {
                if let Some(p) = previous(prev, g) {
                    *g = p.clone();
                }
            }
        }
    }

    /// Problems of one policy.
    pub fn problems_of<'a>(&'a self, policy: &'a str) -> impl Iterator<Item = &'a PolicyProblem> {
        self.problems.iter().filter(move |p| p.policy == policy)
    }
}

/// The group of `prev` (sorted by key) equal to `g`, if any: the one rule by which a
/// recompute keeps a previous group ([`Inputs::prev`]).
fn previous<'a>(prev: &'a [Arc<Group>], g: &Group) -> Option<&'a Arc<Group>> {
    let i = prev.binary_search_by(|p| (*p.key).cmp(&g.key)).ok()?;
    (*prev[i] == *g).then(|| &prev[i])
}

/// A [`Group::addresses`]: `ips` sorted (IPv4 before IPv6), each once.
pub fn address_set(ips: impl IntoIterator<Item = IpAddr>) -> Box<[IpAddr]> {
    let mut v: Vec<IpAddr> = ips.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v.into_boxed_slice()
}

/// The canonical key of an address set (sorted, comma-separated).
pub fn group_key(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a LoadBalancer Service's class is one we serve.
pub fn class_is_ours(svc: &CachedService, options: &Options) -> bool {
    // The agent has no --no-default-class: an unset class is always served.
    crate::k8s::service::class_served(svc.class.as_deref(), true, options.serve_cilium_class)
}

/// Nodes with a ready local endpoint, per Service (only computed for ETP Local Services).
/// (The slices keep only ready endpoints: by node name, or by address for those without one.)
fn local_endpoint_nodes<'a>(
    svc: &ServiceRef,
    slices: &[&'a CachedSlice],
    nodes: &[&'a CachedNode],
) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for slice in slices {
        if *slice.namespace != *svc.namespace {
            continue;
        }
        out.extend(slice.nodes.iter().map(|n| &**n));
        if slice.addresses.is_empty() {
            continue;
        }
        for node in nodes {
            if slice.addresses.iter().any(|a| node.owns(*a)) {
                out.insert(&node.name);
            }
        }
    }
    out
}

/// One announced (Service, address) pair and the policies covering it.
struct Pair {
    service: usize,
    address: IpAddr,
    /// Indices into the compiled policies.
    policies: Vec<usize>,
}

/// What decides a pair's candidate nodes: its covering policies and, for ETP Local, its Service.
type Signature<'a> = (&'a [usize], Option<usize>);

/// Computes the desired announcements. Pure and deterministic.
pub fn compute(inputs: &Inputs<'_>) -> Desired {
    let mut problems = Vec::new();
    let policies = compile_policies(inputs.policies, &mut problems);

    let services: Vec<(&CachedService, ServiceRef)> = inputs
        .services
        .iter()
        .map(|&s| (s, ServiceRef::of(s)))
        .collect();

    // (Service, address) pairs and their covering policies.
    let mut pairs: Vec<Pair> = Vec::new();
    for (si, (svc, _)) in services.iter().enumerate() {
        let selecting: Vec<(usize, &CompiledPolicy<'_>)> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.selects_service(svc))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        for (address, policies) in coverage(&selecting, svc, inputs.options) {
            pairs.push(Pair {
                service: si,
                address,
                policies: policies.into_iter().collect(),
            });
        }
    }

    // Group pairs: union-find over Services linked by a shared address.
    let mut parent: Vec<usize> = (0..services.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut first_owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for pair in &pairs {
        match first_owner.get(&pair.address) {
            None => {
                first_owner.insert(pair.address, pair.service);
            }
            Some(&other) => {
                let (a, b) = (find(&mut parent, other), find(&mut parent, pair.service));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    // Pairs by group (root Service), in their order within a group: a sorted list of indices,
    // not a map of lists (10k small vectors at 10k addresses, all alive until the end).
    let mut grouped: Vec<(usize, usize)> = (0..pairs.len())
        .map(|i| (find(&mut parent, pairs[i].service), i))
        .collect();
    grouped.sort_unstable();

    // Per-node facts, computed once.
    let nodes: Vec<(&str, &Labels)> = inputs
        .nodes
        .iter()
        .map(|n| (&*n.name, &n.labels))
        .filter(|(_, labels)| !labels.contains_key(LABEL_EXCLUDE_LB))
        .collect();
    // The EndpointSlices of the ETP Local Services (the only ones whose endpoints matter).
    let slices_by_service: BTreeMap<(&str, &str), Vec<&CachedSlice>> = {
        let mut m: BTreeMap<(&str, &str), Vec<&CachedSlice>> = services
            .iter()
            .filter(|(svc, _)| svc.etp_local)
            .map(|(_, r)| ((&*r.namespace, &*r.name), Vec::new()))
            .collect();
        for &s in inputs.endpoint_slices {
            let Some(svc) = s.service.as_deref() else {
                continue;
            };
            if let Some(v) = m.get_mut(&(&*s.namespace, svc)) {
                v.push(s);
            }
        }
        m
    };
    // Which policy selects which node (policies × nodes selector evaluations, once), and the
    // interfaces each policy gives this node.
    let selects: Vec<Vec<bool>> = policies
        .iter()
        .map(|p| nodes.iter().map(|(_, l)| p.selects_node(l)).collect())
        .collect();
    // Each policy's preference for each node (`spec.preferredNodes`), evaluated once.
    let preference: Vec<Vec<i64>> = policies
        .iter()
        .map(|p| nodes.iter().map(|(_, l)| p.preference(l)).collect())
        .collect();
    let me = nodes.iter().position(|(n, _)| *n == inputs.node_name);
    let my_ifaces: Vec<BTreeSet<String>> = policies
        .iter()
        .enumerate()
        .map(|(pi, p)| match me {
            Some(m) if selects[pi][m] => p.interfaces(inputs.interfaces).cloned().collect(),
            _ => BTreeSet::new(),
        })
        .collect();
    // Nodes (indices into `nodes`) with a ready local endpoint, for each ETP Local Service.
    let mut local: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
    for pair in &pairs {
        if local.contains_key(&pair.service) || !services[pair.service].0.etp_local {
            continue;
        }
        let sref = &services[pair.service].1;
        let slices = slices_by_service
            .get(&(&*sref.namespace, &*sref.name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let names = local_endpoint_nodes(sref, slices, inputs.nodes);
        local.insert(
            pair.service,
            nodes.iter().map(|(n, _)| names.contains(*n)).collect(),
        );
    }

    // Subnet-aware candidacy: does node `ni` have, for policy `pi`, a selected interface with a
    // prefix containing `addr`? (Policies that are not subnet-aware: always yes.)
    let node_ifaces: Vec<Option<&BTreeMap<String, Vec<IpNetwork>>>> = nodes
        .iter()
        .map(|(n, _)| inputs.options.node_prefixes.get(*n))
        .collect();
    let on_subnet = |pi: usize, ni: usize, addr: IpAddr| {
        let p = &policies[pi];
        !p.spec.is_subnet_aware() || p.subnet_interfaces(node_ifaces[ni], addr).next().is_some()
    };
    let mut subnet_fallbacks: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    // This node's interfaces without carrier, per policy (as `my_ifaces`).
    let my_dark_ifaces: Vec<BTreeSet<String>> = if inputs.options.dark_interfaces.is_empty() {
        Vec::new()
    } else {
        policies
            .iter()
            .enumerate()
            .map(|(pi, p)| match me {
                Some(m) if selects[pi][m] => p
                    .interfaces(&inputs.options.dark_interfaces)
                    .cloned()
                    .collect(),
                _ => BTreeSet::new(),
            })
            .collect()
    };
    // Does node `ni` report carrier on an interface policy `pi` selects (with a prefix
    // containing `addr`, when given)? Only a published report counts.
    let no_carrier_none = BTreeSet::new();
    let reports_carrier = |pi: usize, ni: usize, addr: Option<IpAddr>| {
        let Some(ifaces) = node_ifaces[ni] else {
            return false;
        };
        let down = inputs
            .options
            .no_carrier
            .get(nodes[ni].0)
            .unwrap_or(&no_carrier_none);
        ifaces.iter().any(|(name, nets)| {
            !down.contains(name)
                && policies[pi].selects_interface(name)
                && addr.is_none_or(|a| nets.iter().any(|n| n.contains(a)))
        })
    };
    let mut dark: BTreeMap<String, bool> = BTreeMap::new();
    // Same (policies, ETP Local Service) signature and same nodes passing: same candidate list.
    type CandidateKey<'s> = (Vec<Signature<'s>>, Vec<bool>);
    let mut candidate_cache: BTreeMap<CandidateKey<'_>, Arc<Vec<String>>> = BTreeMap::new();
    let mut interface_cache: BTreeMap<BTreeSet<String>, Arc<BTreeSet<String>>> = BTreeMap::new();
    // Seeded with the previous groups' sets (each distinct `Arc` once), so a changed group
    // shares the set its unchanged neighbours keep.
    let mut seen_sets = std::collections::HashSet::new();
    for g in inputs.prev {
        if seen_sets.insert(Arc::as_ptr(&g.interfaces)) {
            interface_cache
                .entry(BTreeSet::clone(&g.interfaces))
                .or_insert_with(|| g.interfaces.clone());
        }
    }
    let mut groups = Vec::new();
    for run in grouped.chunk_by(|a, b| a.0 == b.0) {
        let members: Vec<&Pair> = run.iter().map(|&(_, i)| &pairs[i]).collect();
        let members = &members;
        let addresses = address_set(members.iter().map(|p| p.address));
        let mut service_refs: Vec<ServiceRef> = members
            .iter()
            .map(|p| services[p.service].1.clone())
            .collect();
        service_refs.sort();
        service_refs.dedup();
        service_refs.shrink_to_fit();
        let loose_ok = |ni: usize| {
            members.iter().all(|pair| {
                pair.policies.iter().any(|&pi| selects[pi][ni])
                    && local.get(&pair.service).is_none_or(|l| l[ni])
            })
        };
        let strict_ok = |ni: usize| {
            members.iter().all(|pair| {
                pair.policies
                    .iter()
                    .any(|&pi| selects[pi][ni] && on_subnet(pi, ni, pair.address))
                    && local.get(&pair.service).is_none_or(|l| l[ni])
            })
        };
        let aware = members.iter().any(|pair| {
            pair.policies
                .iter()
                .any(|&pi| policies[pi].spec.is_subnet_aware())
        });
        // Subnet-aware: the nodes with a containing prefix, if there are any; otherwise (the
        // fallback) every eligible node, as without the rule.
        let strict: Vec<bool> = (0..nodes.len())
            .map(|ni| if aware { strict_ok(ni) } else { loose_ok(ni) })
            .collect();
        let fallback = aware && !strict.iter().any(|b| *b);
        let ok: Vec<bool> = if fallback {
            (0..nodes.len()).map(loose_ok).collect()
        } else {
            strict
        };
        if fallback && ok.iter().any(|b| *b) {
            for pair in members {
                for &pi in &pair.policies {
                    if policies[pi].spec.is_subnet_aware() {
                        let name = inputs.policies[pi]
                            .metadata
                            .name
                            .clone()
                            .unwrap_or_default();
                        subnet_fallbacks
                            .entry(name)
                            .or_default()
                            .insert(pair.address);
                    }
                }
            }
        }
        let node_ok = |ni: usize| ok[ni];
        // Groups with the same (policies, ETP Local Service) signature have the same candidates:
        // compute and allocate each distinct list once.
        let mut signature: Vec<Signature<'_>> = members
            .iter()
            .map(|p| {
                (
                    p.policies.as_slice(),
                    local.contains_key(&p.service).then_some(p.service),
                )
            })
            .collect();
        signature.sort();
        signature.dedup();
        let candidates = candidate_cache
            .entry((signature, ok.clone()))
            .or_insert_with(|| {
                // Preference tiers: a node's preference is the highest any covering policy that
                // lets it announce gives it; higher first, 0 (no entry matches) last.
                let mut tiers: BTreeMap<std::cmp::Reverse<i64>, Vec<String>> = BTreeMap::new();
                for ni in (0..nodes.len()).filter(|&ni| node_ok(ni)) {
                    let pref = members
                        .iter()
                        .flat_map(|pair| pair.policies.iter())
                        .filter(|&&pi| selects[pi][ni])
                        .map(|&pi| preference[pi][ni])
                        .max()
                        .unwrap_or(0);
                    tiers
                        .entry(std::cmp::Reverse(pref))
                        .or_default()
                        .push(nodes[ni].0.to_string());
                }
                Arc::new(crate::lease::tiered_candidates(tiers.into_values()))
            })
            .clone();
        let here = me.is_some_and(node_ok);
        // The interfaces of `mine` (per policy) this node would announce the group on.
        let announce_on = |mine: &[BTreeSet<String>]| {
            let mut interfaces = BTreeSet::new();
            for pair in members {
                for &pi in &pair.policies {
                    let Some(m) = me.filter(|&m| selects[pi][m]) else {
                        continue;
                    };
                    if policies[pi].spec.is_subnet_aware() && !fallback {
                        // Only the selected interfaces whose prefixes contain the address.
                        interfaces.extend(
                            policies[pi]
                                .subnet_interfaces(node_ifaces[m], pair.address)
                                .filter(|i| mine[pi].contains(*i))
                                .cloned(),
                        );
                    } else {
                        interfaces.extend(mine[pi].iter().cloned());
                    }
                }
            }
            interfaces
        };
        let mut interfaces = if here {
            announce_on(&my_ifaces)
        } else {
            BTreeSet::new()
        };
        if here && interfaces.is_empty() && !my_dark_ifaces.is_empty() {
            // Only through interfaces without carrier (issue 11's switch reboot): kept or
            // released by `linkhold`, which needs to know whether another candidate could
            // answer instead.
            interfaces = announce_on(&my_dark_ifaces);
            if !interfaces.is_empty() {
                let others_live = (0..nodes.len()).any(|ni| {
                    Some(ni) != me
                        && ok[ni]
                        && members.iter().any(|pair| {
                            pair.policies.iter().any(|&pi| {
                                selects[pi][ni]
                                    && reports_carrier(
                                        pi,
                                        ni,
                                        (policies[pi].spec.is_subnet_aware() && !fallback)
                                            .then_some(pair.address),
                                    )
                            })
                        })
                });
                dark.insert(group_key(&addresses), others_live);
            }
        }
        let eligible_here = here && !interfaces.is_empty();
        let interfaces = interface_cache
            .entry(interfaces)
            .or_insert_with_key(|set| Arc::new(set.clone()))
            .clone();
        let group = Group {
            key: group_key(&addresses).into(),
            addresses,
            services: service_refs,
            candidates,
            eligible_here,
            interfaces,
        };
        groups.push(match previous(inputs.prev, &group) {
            Some(p) => p.clone(),
            None => Arc::new(group),
        });
    }
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    problems.sort();
    problems.dedup();
    Desired {
        groups,
        problems,
        subnet_fallbacks,
        dark,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cache::Interner;
    use crate::api::{L2AnnouncementPolicySpec, CILIUM_LB_CLASS, LB_CLASS};
    use crate::api::{LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE};
    use crate::fixtures::ServiceBuilder;
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus, Service};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };

    // ---- builders -------------------------------------------------------------------------

    /// `ns/name` of type LoadBalancer (the one builder: [`ServiceBuilder`]).
    fn svc(ns: &str, name: &str) -> ServiceBuilder {
        ServiceBuilder::named(ns, name).type_("LoadBalancer")
    }

    struct Pol(L2AnnouncementPolicy);
    fn policy(name: &str) -> Pol {
        Pol(L2AnnouncementPolicy::new(
            name,
            L2AnnouncementPolicySpec {
                load_balancer_ips: true,
                ..Default::default()
            },
        ))
    }
    fn eq_selector(k: &str, v: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }
    impl Pol {
        fn services(mut self, k: &str, v: &str) -> Self {
            self.0.spec.service_selector = Some(eq_selector(k, v));
            self
        }
        fn nodes(mut self, k: &str, v: &str) -> Self {
            self.0.spec.node_selector = Some(eq_selector(k, v));
            self
        }
        fn node_selector(mut self, s: LabelSelector) -> Self {
            self.0.spec.node_selector = Some(s);
            self
        }
        fn interfaces(mut self, res: &[&str]) -> Self {
            self.0.spec.interfaces = res.iter().map(|s| (*s).into()).collect();
            self
        }
        fn prefer(mut self, weight: i32, k: &str, v: &str) -> Self {
            self.0.spec.preferred_nodes.push(crate::api::PreferredNode {
                weight,
                node_selector: eq_selector(k, v),
            });
            self
        }
        fn prefer_selector(mut self, weight: i32, s: LabelSelector) -> Self {
            self.0.spec.preferred_nodes.push(crate::api::PreferredNode {
                weight,
                node_selector: s,
            });
            self
        }
        fn lb_ips(mut self, on: bool) -> Self {
            self.0.spec.load_balancer_ips = on;
            self
        }
        fn external_ips(mut self, on: bool) -> Self {
            self.0.spec.external_ips = on;
            self
        }
        fn pools(mut self, names: &[&str]) -> Self {
            self.0.spec.pools = names.iter().map(|s| (*s).into()).collect();
            self
        }
        fn pool_selector(mut self, s: LabelSelector) -> Self {
            self.0.spec.pool_selector = Some(s);
            self
        }
    }

    /// `LoadBalancerIPPool`s (name, CIDR, labels), aged in list order, as the agent indexes them.
    /// (name, CIDR, labels) of a test pool.
    type TestPool<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    fn pool_index(pools: &[TestPool<'_>]) -> PoolIndex {
        let objs: Vec<crate::api::LoadBalancerIPPool> = pools
            .iter()
            .enumerate()
            .map(|(i, (name, cidr, labels))| {
                let mut p = crate::api::LoadBalancerIPPool::new(
                    name,
                    crate::api::LoadBalancerIPPoolSpec {
                        blocks: vec![crate::api::IpBlock {
                            cidr: Some((*cidr).into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                );
                p.metadata.labels = Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                );
                p.metadata.creation_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::from_second(i as i64).unwrap(),
                    ));
                p
            })
            .collect();
        PoolIndex::new(&objs.iter().collect::<Vec<_>>())
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    fn node_with_net(name: &str, pod_cidr: &str, addr: &str) -> Node {
        let mut n = node(name, &[]);
        n.spec = Some(NodeSpec {
            pod_cidrs: Some(vec![pod_cidr.into()]),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: addr.into(),
            }]),
            ..Default::default()
        });
        n
    }

    fn ep(addr: &str, node: Option<&str>, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.into()],
            node_name: node.map(Into::into),
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn slice(ns: &str, service: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-abcde")),
                labels: Some([(LABEL_SERVICE_NAME_SLICE.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: None,
        }
    }

    struct World {
        me: String,
        policies: Vec<L2AnnouncementPolicy>,
        services: Vec<Service>,
        nodes: Vec<Node>,
        slices: Vec<EndpointSlice>,
        interfaces: Vec<String>,
        options: Options,
    }
    fn world(me: &str) -> World {
        World {
            me: me.into(),
            policies: vec![],
            services: vec![],
            nodes: vec![node("n1", &[]), node("n2", &[]), node("n3", &[])],
            slices: vec![],
            interfaces: vec!["eth0".into()],
            options: Options::default(),
        }
    }
    impl World {
        fn policy(mut self, p: Pol) -> Self {
            self.policies.push(p.0);
            self
        }
        fn service(mut self, s: ServiceBuilder) -> Self {
            self.services.push(s.build());
            self
        }
        fn nodes(mut self, nodes: Vec<Node>) -> Self {
            self.nodes = nodes;
            self
        }
        fn slice(mut self, s: EndpointSlice) -> Self {
            self.slices.push(s);
            self
        }
        fn interfaces(mut self, ifs: &[&str]) -> Self {
            self.interfaces = ifs.iter().map(|s| (*s).into()).collect();
            self
        }
        /// Every scenario is written with whole objects and decided on what the agent caches
        /// of them (`super::super::cache`), as the agent does.
        fn compute(&self) -> Desired {
            self.compute_after(&[])
        }

        /// [`compute`] with the groups of a previous computation to keep where unchanged.
        fn compute_after(&self, prev: &[Arc<Group>]) -> Desired {
            let mut i = Interner::default();
            let services: Vec<CachedService> = self
                .services
                .iter()
                .filter_map(|s| CachedService::new(s, &mut i))
                .collect();
            let nodes: Vec<CachedNode> = self
                .nodes
                .iter()
                .filter_map(|n| CachedNode::new(n, &mut i))
                .collect();
            let slices: Vec<CachedSlice> = self
                .slices
                .iter()
                .filter_map(|e| CachedSlice::new(e, &mut i))
                .collect();
            let mut policies = self.policies.clone();
            policies.iter_mut().for_each(super::super::trim::policy);
            let trimmed = compute(&Inputs {
                node_name: &self.me,
                policies: &policies.iter().collect::<Vec<_>>(),
                services: &services.iter().collect::<Vec<_>>(),
                nodes: &nodes.iter().collect::<Vec<_>>(),
                endpoint_slices: &slices.iter().collect::<Vec<_>>(),
                interfaces: &self.interfaces,
                options: &self.options,
                prev,
            });
            let whole = compute(&Inputs {
                node_name: &self.me,
                policies: &self.policies.iter().collect::<Vec<_>>(),
                services: &services.iter().collect::<Vec<_>>(),
                nodes: &nodes.iter().collect::<Vec<_>>(),
                endpoint_slices: &slices.iter().collect::<Vec<_>>(),
                interfaces: &self.interfaces,
                options: &self.options,
                prev,
            });
            assert_eq!(trimmed, whole, "trimmed policies decide differently");
            whole
        }
    }

    fn keys(d: &Desired) -> Vec<&str> {
        d.groups.iter().map(|g| &*g.key).collect()
    }
    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_string()).collect()
    }

    // ---- scenarios ------------------------------------------------------------------------

    #[test]
    fn policy_selects_service_by_virtual_name_label() {
        let d = world("n1")
            .policy(policy("p").services(LABEL_SERVICE_NAME, "web"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .service(svc("default", "other").ingress(&["198.51.100.11"]))
            .compute();
        assert_eq!(keys(&d), ["198.51.100.10"]);
        let g = &d.groups[0];
        assert_eq!(g.services, [ServiceRef::new("default", "web")]);
        assert_eq!(g.candidates.as_slice(), ["n1", "n2", "n3"]);
        assert_eq!(*g.interfaces, set(&["eth0"]));
        assert!(g.eligible_here);
        assert!(d.problems.is_empty());
    }

    #[test]
    fn a_recompute_keeps_the_unchanged_groups_and_only_those() {
        let w = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("default", "b").ingress(&["198.51.100.2"]))
            .service(svc("default", "c").ingress(&["198.51.100.3"]));
        let prev = w.compute();
        // b's address changes, c goes, d comes: a is unchanged.
        let w = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("default", "b").ingress(&["198.51.100.4"]))
            .service(svc("default", "d").ingress(&["198.51.100.0"]));
        let fresh = w.compute();
        let next = w.compute_after(&prev.groups);
        assert_eq!(next, fresh, "the same decisions");
        let kept: Vec<&str> = next
            .groups
            .iter()
            .filter(|g| prev.groups.iter().any(|p| Arc::ptr_eq(p, g)))
            .map(|g| &*g.key)
            .collect();
        assert_eq!(kept, ["198.51.100.1"]);
        // Same key, different contents (another Service joins the address): not kept.
        let w = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("other", "a").ingress(&["198.51.100.1"]));
        let joined = w.compute_after(&prev.groups);
        assert!(!Arc::ptr_eq(&joined.groups[0], &prev.groups[0]));
        assert_eq!(joined.groups[0].services.len(), 2);
    }

    #[test]
    fn a_recompute_shares_the_previous_interface_sets_and_keeps_dark_groups() {
        let w = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("default", "b").ingress(&["198.51.100.2"]));
        let prev = w.compute();
        // b's address changes: its new group gets the set a keeps, not an equal copy.
        let w2 = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("default", "b").ingress(&["198.51.100.3"]));
        let next = w2.compute_after(&prev.groups);
        assert!(Arc::ptr_eq(&next.groups[0], &prev.groups[0]));
        assert!(!Arc::ptr_eq(&next.groups[1], &prev.groups[1]));
        assert!(Arc::ptr_eq(
            &next.groups[1].interfaces,
            &prev.groups[0].interfaces
        ));

        // A group `linkhold` made ineligible here (a dark one) differs from the fresh copy
        // `compute` compares, but equals the previous one once `linkhold` has run again.
        let mut prev = w.compute();
        Arc::make_mut(&mut prev.groups[0]).eligible_here = false;
        let mut next = w.compute_after(&prev.groups);
        assert!(!Arc::ptr_eq(&next.groups[0], &prev.groups[0]));
        Arc::make_mut(&mut next.groups[0]).eligible_here = false;
        next.reuse_dark(&prev.groups);
        assert!(
            !Arc::ptr_eq(&next.groups[0], &prev.groups[0]),
            "not a dark group: left alone"
        );
        next.dark.insert(next.groups[0].key.to_string(), false);
        next.reuse_dark(&prev.groups);
        assert!(Arc::ptr_eq(&next.groups[0], &prev.groups[0]));
        assert!(Arc::ptr_eq(&next.groups[1], &prev.groups[1]));
    }

    #[test]
    fn virtual_namespace_label_selects_across_names() {
        let d = world("n1")
            .policy(policy("p").services(LABEL_SERVICE_NAMESPACE, "prod"))
            .service(svc("prod", "a").ingress(&["198.51.100.1"]))
            .service(svc("dev", "b").ingress(&["198.51.100.2"]))
            .compute();
        assert_eq!(keys(&d), ["198.51.100.1"]);
    }

    #[test]
    fn no_policy_means_nothing_announced() {
        let d = world("n1")
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert!(d.groups.is_empty());
    }

    #[test]
    fn node_selector_limits_candidates_and_this_node() {
        let w = world("n2")
            .nodes(vec![
                node("n1", &[("l2", "yes")]),
                node("n2", &[]),
                node("n3", &[("l2", "yes")]),
            ])
            .policy(policy("p").nodes("l2", "yes"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]));
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n3"]);
        assert!(!d.groups[0].eligible_here);
        assert!(d.groups[0].interfaces.is_empty());
        assert_eq!(d.local().count(), 0);
        let mut w = w;
        w.me = "n3".into();
        let d = w.compute();
        assert!(d.groups[0].eligible_here);
        assert_eq!(d.local().count(), 1);
    }

    #[test]
    fn preferred_nodes_form_tiers_by_summed_weight() {
        use crate::lease::{rendezvous_rank, TIER_BREAK};
        let d = world("n1")
            .nodes(vec![
                node("n1", &[]),
                node("n2", &[("rack", "a"), ("ssd", "yes")]),
                node("n3", &[("rack", "a")]),
                node("n4", &[("ssd", "yes")]),
                node("n5", &[("rack", "a"), ("ssd", "yes"), ("l2", "no")]),
            ])
            .policy(
                policy("p")
                    .node_selector(LabelSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "l2".into(),
                            operator: "DoesNotExist".into(),
                            values: None,
                        }]),
                        ..Default::default()
                    })
                    .prefer(10, "rack", "a")
                    .prefer(50, "ssd", "yes"),
            )
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        let g = &d.groups[0];
        // n2: 60; n4: 50; n3: 10; n1: 0 (fallback); n5 is not selected by the policy at all.
        assert_eq!(
            g.candidates.as_slice(),
            ["n2", TIER_BREAK, "n4", TIER_BREAK, "n3", TIER_BREAK, "n1"]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let lease = crate::lease::lease_name(&g.key);
        let ranks: Vec<usize> = ["n2", "n4", "n3", "n1"]
            .iter()
            .map(|n| rendezvous_rank(&lease, n, &g.candidates))
            .collect();
        assert_eq!(ranks, [0, 1, 2, 3]);
        assert_eq!(rendezvous_rank(&lease, "n5", &g.candidates), 4);
    }

    #[test]
    fn preference_is_the_highest_a_covering_policy_gives_and_only_where_it_selects() {
        use crate::lease::TIER_BREAK;
        let d = world("n1")
            .nodes(vec![
                node("n1", &[("zone", "a")]),
                node("n2", &[("zone", "b"), (HOSTNAME, "n2")]),
                node("n3", &[("zone", "b"), ("fast", "yes")]),
            ])
            // Policy a lets zone a announce and prefers fast nodes: n3 is not its node, so its
            // preference does not count for n3.
            .policy(policy("a").nodes("zone", "a").prefer(100, "fast", "yes"))
            // Policy b lets zone b announce and prefers n2.
            .policy(policy("b").nodes("zone", "b").prefer(5, HOSTNAME, "n2"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(
            d.groups[0].candidates.as_slice(),
            ["n2", TIER_BREAK, "n1", "n3"]
        );
    }
    const HOSTNAME: &str = "kubernetes.io/hostname";

    #[test]
    fn without_preferred_nodes_the_candidates_are_one_tier() {
        let d = world("n1")
            .policy(policy("p").prefer(10, "nobody", "matches"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2", "n3"]);
    }

    #[test]
    fn bad_preferred_node_entries_are_reported_by_field_and_ignored() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let d = world("n1")
            .nodes(vec![node("n1", &[]), node("n2", &[("zone", "a")])])
            .policy(
                policy("p")
                    .prefer_selector(10, bad)
                    .prefer(0, "zone", "a")
                    .prefer(7, "zone", "a"),
            )
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        let fields: Vec<&str> = d.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.preferredNodes[0].nodeSelector",
                "spec.preferredNodes[1].weight"
            ]
        );
        // The valid entry still applies; the node selection is untouched.
        assert_eq!(
            d.groups[0].candidates.as_slice(),
            ["n2", crate::lease::TIER_BREAK, "n1"]
        );
        assert!(d.groups[0].eligible_here);
    }

    /// Published prefixes: (node, interface, prefixes).
    fn prefixes(entries: &[(&str, &str, &[&str])]) -> NodePrefixes {
        let mut out = NodePrefixes::new();
        for (n, i, nets) in entries {
            out.entry(n.to_string()).or_default().insert(
                i.to_string(),
                nets.iter().map(|x| x.parse().unwrap()).collect(),
            );
        }
        out
    }

    #[test]
    fn subnet_aware_only_nodes_with_a_containing_prefix_stand() {
        let mut w = world("n3")
            .interfaces(&["eth0"])
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]));
        w.options.node_prefixes = prefixes(&[
            ("n1", "eth0", &["198.51.100.11/24", "2001:db8:1::11/64"]),
            ("n2", "eth0", &["198.51.100.12/24"]),
            ("n3", "eth0", &["192.0.2.13/24"]),
        ]);
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2"]);
        assert!(!d.groups[0].eligible_here, "n3 has no containing prefix");
        assert!(d.subnet_fallbacks.is_empty());
        w.me = "n1".into();
        let d = w.compute();
        assert!(d.groups[0].eligible_here);
        assert_eq!(*d.groups[0].interfaces, set(&["eth0"]));
        // Switched off: prefixes are not looked at.
        w.policies[0].spec.subnet_aware = Some(false);
        w.me = "n3".into();
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2", "n3"]);
        assert!(d.groups[0].eligible_here);
    }

    #[test]
    fn subnet_aware_announces_only_on_the_interfaces_with_the_prefix() {
        let mut w = world("n1")
            .interfaces(&["eth0", "eth1", "eth2"])
            .policy(policy("p").interfaces(&["eth[01]"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]));
        w.options.node_prefixes = prefixes(&[
            ("n1", "eth0", &["192.0.2.11/24"]),
            ("n1", "eth1", &["198.51.100.11/24"]),
            // Not selected by the policy: does not count.
            ("n2", "eth2", &["198.51.100.12/24"]),
        ]);
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1"]);
        assert_eq!(*d.groups[0].interfaces, set(&["eth1"]));
    }

    #[test]
    fn subnet_aware_falls_back_when_no_node_has_the_prefix_and_says_so() {
        let mut w = world("n2")
            .interfaces(&["eth0"])
            .policy(policy("p"))
            .policy(policy("off").services("app", "other"))
            .service(svc("default", "web").ingress(&["198.51.100.10", "2001:db8:100::10"]))
            .service(svc("default", "db").ingress(&["198.51.100.20"]));
        w.options.node_prefixes = prefixes(&[
            ("n1", "eth0", &["192.0.2.11/24", "2001:db8:100::11/64"]),
            ("n2", "eth0", &["192.0.2.12/24"]),
        ]);
        let d = w.compute();
        // web: n1 has the IPv6 prefix but not the IPv4 one: no node has both → fallback.
        // db: nobody → fallback. Every node stands, on every selected interface.
        for g in &d.groups {
            assert_eq!(g.candidates.as_slice(), ["n1", "n2", "n3"], "{}", g.key);
            assert!(g.eligible_here);
            assert_eq!(*g.interfaces, set(&["eth0"]));
        }
        let want: BTreeSet<IpAddr> = ["198.51.100.10", "198.51.100.20", "2001:db8:100::10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(d.subnet_fallbacks.len(), 1, "only the policy covering them");
        assert_eq!(d.subnet_fallbacks["p"], want);
    }

    /// Issue 11's switch reboot: this node's eth0 without carrier. The group stays
    /// eligible here on eth0 and is listed as dark, with whether another candidate reports
    /// carrier on an interface that would announce it (only published reports count).
    #[test]
    fn interfaces_without_carrier_make_a_group_dark_with_the_others_reports() {
        let mut w = world("n1")
            .interfaces(&[])
            .policy(policy("p").interfaces(&["eth0"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]));
        // Not subnet-aware here (every node a candidate whatever it publishes).
        w.policies[0].spec.subnet_aware = Some(false);
        w.options.dark_interfaces = vec!["eth0".into()];
        w.options.node_prefixes = prefixes(&[
            ("n1", "eth0", &["198.51.100.11/24"]),
            ("n2", "eth0", &["198.51.100.12/24"]),
            ("n2", "eth1", &["198.51.100.22/24"]),
            ("n3", "eth0", &["198.51.100.13/24"]),
        ]);
        let dark_of = |w: &World| {
            let d = w.compute();
            assert_eq!(d.groups.len(), 1);
            assert!(d.groups[0].eligible_here);
            assert_eq!(*d.groups[0].interfaces, set(&["eth0"]));
            assert_eq!(
                d.groups[0].candidates.as_slice(),
                ["n1", "n2", "n3"],
                "carrier never moves candidates"
            );
            d.dark.get("198.51.100.10").copied()
        };
        // n2 and n3 published no carrier loss: they have carrier.
        assert_eq!(dark_of(&w), Some(true));
        // A switch reboot: everyone reports eth0 without carrier (n2's eth1 is not selected).
        for n in ["n1", "n2", "n3"] {
            w.options
                .no_carrier
                .insert(n.into(), BTreeSet::from(["eth0".to_string()]));
        }
        assert_eq!(dark_of(&w), Some(false));
        // n3 back: it could answer.
        w.options.no_carrier.remove("n3");
        assert_eq!(dark_of(&w), Some(true));
        // A node that publishes nothing reports nothing.
        w.options.node_prefixes.remove("n3");
        assert_eq!(dark_of(&w), Some(false));
        // Subnet-aware: a live interface without a containing prefix does not count.
        let mut w = world("n1")
            .interfaces(&[])
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]));
        w.options.dark_interfaces = vec!["eth0".into()];
        w.options.node_prefixes = prefixes(&[
            ("n1", "eth0", &["198.51.100.11/24"]),
            ("n2", "eth0", &["198.51.100.12/24"]),
            ("n3", "eth1", &["192.0.2.13/24"]),
        ]);
        w.options.no_carrier = [("n2".to_string(), BTreeSet::from(["eth0".to_string()]))].into();
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2"]);
        assert_eq!(d.dark.get("198.51.100.10"), Some(&false));
        // Carrier back here: not dark.
        w.options.dark_interfaces.clear();
        w.interfaces = vec!["eth0".into()];
        let d = w.compute();
        assert!(d.dark.is_empty() && d.groups[0].eligible_here);
    }

    #[test]
    fn policies_limited_to_pools_announce_only_their_pools_addresses() {
        let mut w = world("n1")
            .interfaces(&["eth0", "eth1"])
            .nodes(vec![
                node("n1", &[("group", "a")]),
                node("n2", &[("group", "a")]),
                node("n3", &[("group", "b")]),
            ])
            .policy(
                policy("pa")
                    .pools(&["a"])
                    .nodes("group", "a")
                    .interfaces(&["eth0"]),
            )
            .policy(
                policy("pb")
                    .pool_selector(eq_selector("tier", "b"))
                    .nodes("group", "b")
                    .interfaces(&["eth1"]),
            )
            .service(svc("default", "web-a").ingress(&["198.51.100.5"]))
            .service(svc("default", "web-b").ingress(&["198.51.100.20"]))
            // In no pool: neither policy announces it.
            .service(svc("default", "web-x").ingress(&["203.0.113.5"]));
        w.options.pools = pool_index(&[
            ("a", "198.51.100.0/28", &[]),
            ("b", "198.51.100.16/28", &[("tier", "b")]),
        ]);
        let d = w.compute();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(keys(&d), ["198.51.100.20", "198.51.100.5"]);
        let g = |k: &str| d.groups.iter().find(|g| &*g.key == k).unwrap().clone();
        let (a, b) = (g("198.51.100.5"), g("198.51.100.20"));
        assert_eq!(a.candidates.as_slice(), ["n1", "n2"]);
        assert_eq!(*a.interfaces, set(&["eth0"]));
        assert!(a.eligible_here);
        assert_eq!(b.candidates.as_slice(), ["n3"]);
        assert!(!b.eligible_here);

        // Without pools known, a limited policy announces nothing; unlimited ones are unaffected.
        w.options.pools = PoolIndex::default();
        assert!(w.compute().groups.is_empty());
        let d = world("n1")
            .policy(policy("all"))
            .service(svc("default", "web-x").ingress(&["203.0.113.5"]))
            .compute();
        assert_eq!(keys(&d), ["203.0.113.5"]);
    }

    #[test]
    fn a_service_with_addresses_from_two_pools_needs_a_node_both_policies_allow() {
        let mut w = world("n2")
            .nodes(vec![
                node("n1", &[("v4", "1")]),
                node("n2", &[("v4", "1"), ("v6", "1")]),
                node("n3", &[("v6", "1")]),
            ])
            .policy(policy("p4").pools(&["v4"]).nodes("v4", "1"))
            .policy(policy("p6").pools(&["v6"]).nodes("v6", "1"))
            .service(svc("default", "web").ingress(&["198.51.100.5", "2001:db8:100::5"]));
        w.options.pools = pool_index(&[
            ("v4", "198.51.100.0/28", &[]),
            ("v6", "2001:db8:100::/120", &[]),
        ]);
        let d = w.compute();
        assert_eq!(keys(&d), ["198.51.100.5,2001:db8:100::5"]);
        // Each address is covered by one policy only: the holder must be allowed by both.
        assert_eq!(d.groups[0].candidates.as_slice(), ["n2"]);
    }

    #[test]
    fn bad_pool_selector_is_reported_and_selects_no_pool() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let mut w = world("n1")
            .policy(policy("p").pools(&["a"]).pool_selector(bad))
            .service(svc("default", "in-a").ingress(&["198.51.100.5"]))
            .service(svc("default", "in-b").ingress(&["198.51.100.20"]));
        w.options.pools = pool_index(&[
            ("a", "198.51.100.0/28", &[]),
            ("b", "198.51.100.16/28", &[("tier", "b")]),
        ]);
        let d = w.compute();
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert_eq!(d.problems[0].field, "spec.poolSelector");
        assert_eq!(policy_problems(&[&w.policies[0]]), d.problems);
        // The named pool still counts; the broken selector adds nothing.
        assert_eq!(keys(&d), ["198.51.100.5"]);
    }

    #[test]
    fn offline_coverage_is_the_same_rule() {
        let pols = [
            policy("a").pools(&["a"]).0,
            policy("all").0,
            policy("ext")
                .external_ips(true)
                .lb_ips(false)
                .pools(&["a"])
                .0,
        ];
        let refs: Vec<&L2AnnouncementPolicy> = pols.iter().collect();
        let options = Options {
            pools: pool_index(&[("a", "198.51.100.0/28", &[])]),
            ..Default::default()
        };
        let s = svc("default", "web")
            .ingress(&["198.51.100.5", "203.0.113.5"])
            .external_ips(&["198.51.100.6", "203.0.113.6"])
            .build();
        let cov = Policies::new(&refs).covering(&s, &options);
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        assert_eq!(cov[&ip("198.51.100.5")], ["a", "all"]);
        assert_eq!(cov[&ip("203.0.113.5")], ["all"]);
        assert_eq!(cov[&ip("198.51.100.6")], ["ext"]);
        assert!(!cov.contains_key(&ip("203.0.113.6")));
    }

    #[test]
    fn node_selector_match_expressions() {
        let sel = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
            ..Default::default()
        };
        let d = world("n1")
            .nodes(vec![
                node("n1", &[("zone", "a")]),
                node("n2", &[("zone", "c")]),
                node("n3", &[("zone", "b")]),
            ])
            .policy(policy("p").node_selector(sel))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n3"]);
    }

    #[test]
    fn excluded_nodes_are_never_candidates() {
        let d = world("n1")
            .nodes(vec![node("n1", &[(LABEL_EXCLUDE_LB, "")]), node("n2", &[])])
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n2"]);
        assert!(!d.groups[0].eligible_here);
    }

    #[test]
    fn lb_ips_versus_external_ips() {
        let s = || {
            svc("default", "web")
                .ingress(&["198.51.100.10"])
                .external_ips(&["198.51.100.20"])
        };
        let lb_only = world("n1").policy(policy("p")).service(s()).compute();
        assert_eq!(keys(&lb_only), ["198.51.100.10"]);

        let ext_only = world("n1")
            .policy(policy("p").lb_ips(false).external_ips(true))
            .service(s())
            .compute();
        assert_eq!(keys(&ext_only), ["198.51.100.20"]);

        let both = world("n1")
            .policy(policy("p").external_ips(true))
            .service(s())
            .compute();
        // One Service → one lease for all its addresses.
        assert_eq!(keys(&both), ["198.51.100.10,198.51.100.20"]);

        let neither = world("n1")
            .policy(policy("p").lb_ips(false))
            .service(s())
            .compute();
        assert!(neither.groups.is_empty());
    }

    #[test]
    fn external_ips_of_a_cluster_ip_service_but_not_stale_ingress() {
        let d = world("n1")
            .policy(policy("p").external_ips(true))
            .service(
                svc("default", "web")
                    .type_("ClusterIP")
                    .ingress(&["198.51.100.10"])
                    .external_ips(&["198.51.100.20"]),
            )
            .compute();
        assert_eq!(keys(&d), ["198.51.100.20"]);
    }

    #[test]
    fn dual_stack_service_is_one_group_ipv4_first() {
        let d = world("n1")
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["2001:db8:100::10", "198.51.100.10"]))
            .compute();
        assert_eq!(keys(&d), ["198.51.100.10,2001:db8:100::10"]);
    }

    #[test]
    fn interface_regexes_are_anchored_and_ored() {
        let d = world("n1")
            .interfaces(&["eth0", "eth1", "ens3", "xeth0"])
            .policy(policy("p").interfaces(&["eth[0-9]+", "ens"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(*d.groups[0].interfaces, set(&["eth0", "eth1"]));
    }

    #[test]
    fn no_regex_means_every_eligible_interface() {
        let d = world("n1")
            .interfaces(&["eth0", "ens3"])
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(*d.groups[0].interfaces, set(&["ens3", "eth0"]));
    }

    #[test]
    fn no_matching_interface_means_not_contending_but_still_candidate() {
        let d = world("n1")
            .interfaces(&["ens3"])
            .policy(policy("p").interfaces(&["eth0"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        let g = &d.groups[0];
        assert!(g.candidates.contains(&"n1".to_string()));
        assert!(!g.eligible_here);
    }

    #[test]
    fn several_policies_one_service_one_group_union_of_interfaces() {
        let d = world("n1")
            .interfaces(&["eth0", "eth1", "eth2"])
            .policy(policy("a").interfaces(&["eth0"]))
            .policy(policy("b").interfaces(&["eth2"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups.len(), 1);
        assert_eq!(*d.groups[0].interfaces, set(&["eth0", "eth2"]));
    }

    #[test]
    fn interfaces_only_from_policies_selecting_this_node() {
        let d = world("n1")
            .interfaces(&["eth0", "eth1"])
            .nodes(vec![node("n1", &[("a", "1")]), node("n2", &[("b", "1")])])
            .policy(policy("a").nodes("a", "1").interfaces(&["eth0"]))
            .policy(policy("b").nodes("b", "1").interfaces(&["eth1"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2"]);
        assert_eq!(*d.groups[0].interfaces, set(&["eth0"]));
    }

    #[test]
    fn services_sharing_an_address_share_one_group() {
        let d = world("n1")
            .policy(policy("p"))
            .service(svc("default", "dns-tcp").ingress(&["198.51.100.53"]))
            .service(svc("default", "dns-udp").ingress(&["198.51.100.53", "2001:db8:100::53"]))
            .service(svc("default", "web").ingress(&["198.51.100.80"]))
            .compute();
        assert_eq!(
            keys(&d),
            ["198.51.100.53,2001:db8:100::53", "198.51.100.80"]
        );
        assert_eq!(
            d.groups[0].services,
            [
                ServiceRef::new("default", "dns-tcp"),
                ServiceRef::new("default", "dns-udp")
            ]
        );
        // Groups with the same candidates and interfaces share one copy of each.
        assert!(Arc::ptr_eq(
            &d.groups[0].interfaces,
            &d.groups[1].interfaces
        ));
        assert!(Arc::ptr_eq(
            &d.groups[0].candidates,
            &d.groups[1].candidates
        ));
    }

    #[test]
    fn sharing_is_transitive() {
        let d = world("n1")
            .policy(policy("p"))
            .service(svc("default", "a").ingress(&["198.51.100.1"]))
            .service(svc("default", "c").ingress(&["198.51.100.2"]))
            .service(svc("default", "b").ingress(&["198.51.100.1", "198.51.100.2"]))
            .compute();
        assert_eq!(keys(&d), ["198.51.100.1,198.51.100.2"]);
        assert_eq!(d.groups[0].services.len(), 3);
    }

    #[test]
    fn etp_local_needs_a_ready_local_endpoint() {
        let w = world("n1")
            .policy(policy("p"))
            .service(
                svc("default", "web")
                    .ingress(&["198.51.100.10"])
                    .external_traffic_policy("Local"),
            )
            .slice(slice(
                "default",
                "web",
                vec![
                    ep("10.0.1.5", Some("n1"), Some(true)),
                    ep("10.0.2.5", Some("n2"), Some(false)),
                    ep("10.0.3.5", Some("n3"), None), // nil ready = ready
                ],
            ));
        let d = w.compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n3"]);
        assert!(d.groups[0].eligible_here);
    }

    #[test]
    fn etp_local_without_endpoints_has_no_candidates() {
        let d = world("n1")
            .policy(policy("p"))
            .service(
                svc("default", "web")
                    .ingress(&["198.51.100.10"])
                    .external_traffic_policy("Local"),
            )
            // A slice of a same-named Service in another namespace must not count.
            .slice(slice(
                "other",
                "web",
                vec![ep("10.0.1.5", Some("n1"), None)],
            ))
            .compute();
        assert_eq!(keys(&d), ["198.51.100.10"]);
        assert!(d.groups[0].candidates.is_empty());
        assert!(!d.groups[0].eligible_here);
    }

    #[test]
    fn etp_cluster_ignores_endpoints() {
        let d = world("n1")
            .policy(policy("p"))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n1", "n2", "n3"]);
    }

    #[test]
    fn etp_local_endpoints_without_node_name_match_pod_cidr_or_node_address() {
        let d = world("n1")
            .nodes(vec![
                node_with_net("n1", "10.244.1.0/24", "192.0.2.11"),
                node_with_net("n2", "10.244.2.0/24", "192.0.2.12"),
                node_with_net("n3", "10.244.3.0/24", "192.0.2.13"),
            ])
            .policy(policy("p"))
            .service(
                svc("default", "web")
                    .ingress(&["198.51.100.10"])
                    .external_traffic_policy("Local"),
            )
            .slice(slice(
                "default",
                "web",
                vec![
                    ep("10.244.2.7", None, Some(true)), // pod on n2
                    ep("192.0.2.13", None, None),       // hostNetwork pod on n3
                    ep("10.99.0.1", None, Some(true)),  // nobody's
                ],
            ))
            .compute();
        assert_eq!(d.groups[0].candidates.as_slice(), ["n2", "n3"]);
        assert!(!d.groups[0].eligible_here);
    }

    #[test]
    fn etp_local_in_a_shared_group_requires_every_service() {
        let d = world("n1")
            .policy(policy("p"))
            .service(
                svc("default", "a")
                    .ingress(&["198.51.100.10"])
                    .external_traffic_policy("Local"),
            )
            .service(svc("default", "b").ingress(&["198.51.100.10"]))
            .slice(slice(
                "default",
                "a",
                vec![ep("10.0.0.1", Some("n2"), Some(true))],
            ))
            .compute();
        assert_eq!(d.groups.len(), 1);
        assert_eq!(d.groups[0].candidates.as_slice(), ["n2"]);
    }

    #[test]
    fn bad_regex_is_reported_and_fails_closed() {
        let d = world("n1")
            .interfaces(&["eth0", "eth1"])
            .policy(policy("p").interfaces(&["eth(", "eth1"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].policy, "p");
        assert_eq!(d.problems[0].field, "spec.interfaces[0]");
        assert!(d.problems[0].message.contains("eth("), "{:?}", d.problems);
        // The valid regex still works.
        assert_eq!(*d.groups[0].interfaces, set(&["eth1"]));

        let all_bad = world("n1")
            .policy(policy("p").interfaces(&["[", "(?P<"]))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(all_bad.problems_of("p").count(), 2);
        // No fallback to "every interface".
        assert!(all_bad.groups[0].interfaces.is_empty());
        assert!(!all_bad.groups[0].eligible_here);
    }

    #[test]
    fn huge_regex_is_rejected_not_compiled() {
        let re = "(a{1000}){1000}";
        assert!(compile_interface_regex(re).is_err());
    }

    #[test]
    fn bad_selector_is_reported_and_selects_nothing() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let d = world("n1")
            .policy(policy("bad").node_selector(bad))
            .service(svc("default", "web").ingress(&["198.51.100.10"]))
            .compute();
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].field, "spec.nodeSelector");
        assert!(d.groups.iter().all(|g| g.candidates.is_empty()));
    }

    #[test]
    fn foreign_class_needs_an_explicit_selector() {
        let s = || {
            svc("default", "web")
                .class("example.com/other")
                .ingress(&["198.51.100.10"])
        };
        let catch_all = world("n1").policy(policy("p")).service(s()).compute();
        assert!(catch_all.groups.is_empty());
        let explicit = world("n1")
            .policy(policy("p").services("app", "web"))
            .service(s().label("app", "web"))
            .compute();
        assert_eq!(keys(&explicit), ["198.51.100.10"]);
        let ours = world("n1")
            .policy(policy("p"))
            .service(
                svc("default", "web")
                    .class(LB_CLASS)
                    .ingress(&["198.51.100.10"]),
            )
            .compute();
        assert_eq!(keys(&ours), ["198.51.100.10"]);
    }

    #[test]
    fn cilium_class_only_when_served() {
        let mut w = world("n1").policy(policy("p")).service(
            svc("default", "web")
                .class(CILIUM_LB_CLASS)
                .ingress(&["198.51.100.10"]),
        );
        assert!(w.compute().groups.is_empty());
        w.options.serve_cilium_class = true;
        assert_eq!(keys(&w.compute()), ["198.51.100.10"]);
    }

    #[test]
    fn garbage_addresses_are_skipped() {
        let d = world("n1")
            .policy(policy("p").external_ips(true))
            .service(
                svc("default", "web")
                    .ingress(&["not-an-ip", "198.51.100.10"])
                    .external_ips(&["999.1.1.1"]),
            )
            .compute();
        assert_eq!(keys(&d), ["198.51.100.10"]);
    }

    #[test]
    fn result_does_not_depend_on_input_order_or_on_who_computes() {
        let mut w = world("n1")
            .policy(policy("a").nodes("x", "1"))
            .policy(policy("b"))
            .service(svc("default", "s1").ingress(&["198.51.100.1"]))
            .service(svc("default", "s2").ingress(&["198.51.100.2", "198.51.100.1"]))
            .service(svc("kube-system", "s3").ingress(&["2001:db8:100::3"]));
        let d1 = w.compute();
        w.policies.reverse();
        w.services.reverse();
        w.nodes.reverse();
        let d2 = w.compute();
        assert_eq!(d1, d2);
        w.me = "n3".into();
        let d3 = w.compute();
        let strip = |d: &Desired| {
            d.groups
                .iter()
                .map(|g| (g.key.clone(), g.candidates.clone(), g.services.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&d1), strip(&d3));
    }
}
