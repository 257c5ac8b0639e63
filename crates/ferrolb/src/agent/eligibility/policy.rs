//! The policies as [`super::compute`] reads them: each `L2AnnouncementPolicy` checked once
//! (selectors, preferred nodes, pools, interface regexes; every problem reported with its field
//! path), and which of them cover which address of a Service (the coverage rule of the module
//! doc of [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use regex::Regex;

use super::{class_is_ours, Options, PolicyProblem};
use crate::agent::cache::{CachedService, Interner, Labels};
use crate::agent::pools::PoolSelection;
use crate::api::L2AnnouncementPolicy;
use crate::ipam::selector::Selector;

/// Every problem of these policies (what [`super::compute`] reports in
/// [`super::Desired::problems`], without
/// needing Services or nodes), sorted. For offline tools such as `ferrolb plan`.
pub fn policy_problems(policies: &[&L2AnnouncementPolicy]) -> Vec<PolicyProblem> {
    let mut problems = Vec::new();
    compile_policies(policies, &mut problems);
    problems.sort();
    problems.dedup();
    problems
}

/// A policy with its selectors and regexes checked once.
pub(super) struct CompiledPolicy<'a> {
    pub(super) spec: &'a crate::api::L2AnnouncementPolicySpec,
    /// `None` when the selector is invalid (selects nothing).
    service_sel: Option<Selector>,
    node_sel: Option<Selector>,
    /// `spec.preferredNodes`: (weight, selector) of the valid entries; an invalid one is left out
    /// (it prefers nobody) and reported.
    preferred: Vec<(i64, Selector)>,
    /// `None` = no regexes given (all interfaces); `Some(list)` = the valid ones.
    regexes: Option<Vec<Regex>>,
    explicit_service_selector: bool,
    /// `spec.pools` / `spec.poolSelector`; `None` = every address, in a pool or not.
    pools: Option<PoolSelection>,
}

/// Compiles an interface regex, anchored, with a size limit (hostile input must not blow up).
pub fn compile_interface_regex(re: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid interface regex {re:?}: {e}"))
}

pub(super) fn compile_policies<'a>(
    policies: &'a [&'a L2AnnouncementPolicy],
    problems: &mut Vec<PolicyProblem>,
) -> Vec<CompiledPolicy<'a>> {
    let mut out = Vec::with_capacity(policies.len());
    for &p in policies {
        let name = p.metadata.name.clone().unwrap_or_default();
        let mut problem = |field: &str, message: String| {
            problems.push(PolicyProblem {
                policy: name.clone(),
                field: field.to_string(),
                message,
            })
        };
        let service_sel = match Selector::compile_opt(p.spec.service_selector.as_ref()) {
            Ok(sel) => Some(sel),
            Err(e) => {
                problem("spec.serviceSelector", e.to_string());
                None
            }
        };
        let node_sel = match Selector::compile_opt(p.spec.node_selector.as_ref()) {
            Ok(sel) => Some(sel),
            Err(e) => {
                problem("spec.nodeSelector", e.to_string());
                None
            }
        };
        let mut preferred = Vec::new();
        for (i, pn) in p.spec.preferred_nodes.iter().enumerate() {
            if !(1..=100).contains(&pn.weight) {
                problem(
                    &format!("spec.preferredNodes[{i}].weight"),
                    format!("weight {} is outside 1..100; entry ignored", pn.weight),
                );
                continue;
            }
            match Selector::compile(&pn.node_selector) {
                Ok(sel) => preferred.push((i64::from(pn.weight), sel)),
                Err(e) => problem(
                    &format!("spec.preferredNodes[{i}].nodeSelector"),
                    format!("{e}; entry ignored"),
                ),
            }
        }
        let (pools, pool_problems) = PoolSelection::compile(&p.spec);
        for (field, message) in pool_problems {
            problem(&field, message);
        }
        let regexes = if p.spec.interfaces.is_empty() {
            None
        } else {
            let mut v = Vec::new();
            for (i, re) in p.spec.interfaces.iter().enumerate() {
                match compile_interface_regex(re) {
                    Ok(r) => v.push(r),
                    Err(e) => problem(&format!("spec.interfaces[{i}]"), e),
                }
            }
            Some(v)
        };
        out.push(CompiledPolicy {
            spec: &p.spec,
            explicit_service_selector: service_sel.as_ref().is_some_and(|s| !s.is_everything()),
            service_sel,
            node_sel,
            preferred,
            regexes,
            pools,
        });
    }
    out
}

impl CompiledPolicy<'_> {
    /// With the virtual labels ([`CachedService::label`]).
    pub(super) fn selects_service(&self, svc: &CachedService) -> bool {
        self.service_sel
            .as_ref()
            .is_some_and(|s| s.matches_with(|k| svc.label(k)))
    }
    pub(super) fn selects_node(&self, labels: &Labels) -> bool {
        self.node_sel
            .as_ref()
            .is_some_and(|s| s.matches_with(|k| labels.get(k)))
    }
    /// The node's preference under this policy: the sum of the weights of the
    /// `preferredNodes` entries selecting it (0 = a fallback).
    pub(super) fn preference(&self, labels: &Labels) -> i64 {
        self.preferred
            .iter()
            .filter(|(_, sel)| sel.matches_with(|k| labels.get(k)))
            .map(|(w, _)| *w)
            .sum()
    }
    pub(super) fn interfaces<'b>(
        &'b self,
        eligible: &'b [String],
    ) -> impl Iterator<Item = &'b String> {
        eligible
            .iter()
            .filter(move |name| self.selects_interface(name))
    }
    pub(super) fn selects_interface(&self, name: &str) -> bool {
        match self.regexes.as_ref() {
            None => true,
            Some(list) => list.iter().any(|r| r.is_match(name)),
        }
    }
    /// The interfaces of `ifaces` (one node's published ones) this policy selects that carry a
    /// prefix containing `addr`.
    pub(super) fn subnet_interfaces<'b>(
        &'b self,
        ifaces: Option<&'b BTreeMap<String, Vec<IpNetwork>>>,
        addr: IpAddr,
    ) -> impl Iterator<Item = &'b String> {
        ifaces
            .into_iter()
            .flatten()
            .filter_map(move |(name, nets)| {
                (self.selects_interface(name) && nets.iter().any(|n| n.contains(addr)))
                    .then_some(name)
            })
    }
}

/// The addresses of `svc` that the `selecting` policies (those whose `serviceSelector` selects
/// it, with their indices) announce, each with the indices of the policies covering it.
pub(super) fn coverage(
    selecting: &[(usize, &CompiledPolicy<'_>)],
    svc: &CachedService,
    options: &Options,
) -> BTreeMap<IpAddr, BTreeSet<usize>> {
    let mut by_addr: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    // The pool of an address, looked up only for policies limited to pools.
    let covers = |p: &CompiledPolicy<'_>, ip: IpAddr| {
        p.pools
            .as_ref()
            .is_none_or(|sel| sel.allows(options.pools.pool_of(ip)))
    };
    if svc.load_balancer {
        let ours = class_is_ours(svc, options);
        for (pi, p) in selecting {
            if p.spec.load_balancer_ips && (ours || p.explicit_service_selector) {
                for ip in svc.ingress.iter().filter(|ip| covers(p, **ip)) {
                    by_addr.entry(*ip).or_default().insert(*pi);
                }
            }
        }
    }
    for (pi, p) in selecting {
        if p.spec.external_ips {
            for ip in svc.external_ips.iter().filter(|ip| covers(p, **ip)) {
                by_addr.entry(*ip).or_default().insert(*pi);
            }
        }
    }
    by_addr
}

/// Policies checked once, to ask which of them announce a Service's addresses by the rule
/// [`super::compute`] uses — for offline tools such as `ferrolb plan`.
pub struct Policies<'a> {
    names: Vec<String>,
    compiled: Vec<CompiledPolicy<'a>>,
}

impl<'a> Policies<'a> {
    /// Checks `policies` (their problems are [`policy_problems`]).
    pub fn new(policies: &'a [&'a L2AnnouncementPolicy]) -> Self {
        Policies {
            names: policies
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect(),
            compiled: compile_policies(policies, &mut Vec::new()),
        }
    }

    /// Each announced address of `svc` (from its status and `spec.externalIPs`) with the names
    /// of the policies announcing it, in input order.
    /// The Service is narrowed as the agent's cache narrows it, so both read the same fields.
    pub fn covering(
        &self,
        svc: &k8s_openapi::api::core::v1::Service,
        options: &Options,
    ) -> BTreeMap<IpAddr, Vec<String>> {
        let Some(svc) = CachedService::new(svc, &mut Interner::default()) else {
            return BTreeMap::new();
        };
        let selecting: Vec<(usize, &CompiledPolicy<'_>)> = self
            .compiled
            .iter()
            .enumerate()
            .filter(|(_, p)| p.selects_service(&svc))
            .collect();
        coverage(&selecting, &svc, options)
            .into_iter()
            .map(|(ip, ps)| (ip, ps.into_iter().map(|i| self.names[i].clone()).collect()))
            .collect()
    }
}
