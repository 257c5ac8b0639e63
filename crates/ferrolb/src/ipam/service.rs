//! What a Service asks of the allocator: [`ServiceReq`], built from a
//! `k8s_openapi::api::core::v1::Service` by [`ServiceReq::from_service`], plus class filtering
//! ([`is_ours`]) and the sharing rules ([`ServiceReq::can_share_with`]).
//!
//! Annotation precedence: `ferrolb.io/...` first; when absent, the Cilium aliases in the order of
//! [`crate::api::CILIUM_ANN_IPS`] (`lbipam.cilium.io/...`, then legacy `io.cilium/...`); then,
//! only with [`ClassOptions::metallb_annotations`] (`--metallb-annotations`), the MetalLB ones
//! (`metallb.io/...`, then `metallb.universe.tf/...`): `loadBalancerIPs` → requested addresses,
//! `allow-shared-ip` → sharing key (across namespaces, as in MetalLB, unless
//! `ferrolb.io/sharing-cross-namespace` says otherwise), `address-pool` → pools.
//!
//! Families when `spec.ipFamilies` is empty (the real API server always fills it; hand-written
//! manifests for `plan` often do not): the families of the requested addresses if any, else
//! `IPv4` for SingleStack (or no policy) and `IPv4, IPv6` for PreferDualStack/RequireDualStack.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use litemap::LiteMap;
use smallvec::SmallVec;

use super::range::Family;
use super::selector::service_labels;
use crate::api::{
    ANN_IPS, ANN_POOLS, ANN_REALLOCATE, ANN_SHARING_CROSS_NS, ANN_SHARING_KEY, CILIUM_ANN_IPS,
    CILIUM_ANN_SHARING_CROSS_NS, CILIUM_ANN_SHARING_KEY, LABEL_SERVICE_NAME,
    LABEL_SERVICE_NAMESPACE, METALLB_ANN_IPS, METALLB_ANN_POOL, METALLB_ANN_SHARING_KEY,
};

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: std::sync::Arc<str>,
    /// Name.
    pub name: std::sync::Arc<str>,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Service object (namespace defaults to `default`).
    pub fn of(svc: &Service) -> Self {
        ServiceKey {
            namespace: svc
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default")
                .into(),
            name: svc.metadata.name.as_deref().unwrap_or_default().into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum FamilyPolicy {
    /// One address of `ipFamilies[0]`.
    #[default]
    SingleStack,
    /// One address of each listed family that some pool offers; satisfied with at least one.
    PreferDualStack,
    /// One address of each of both families, or nothing.
    RequireDualStack,
}

impl FamilyPolicy {
    /// Parses the Kubernetes spelling.
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "SingleStack" => Some(Self::SingleStack),
            "PreferDualStack" => Some(Self::PreferDualStack),
            "RequireDualStack" => Some(Self::RequireDualStack),
            _ => None,
        }
    }
}

/// Which Services are ours (`spec.loadBalancerClass`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassOptions {
    /// Serve Services without a `loadBalancerClass` (default true).
    pub default_class: bool,
    /// Also serve Cilium's `io.cilium/l2-announcer` class.
    pub cilium_class: bool,
    /// Also read MetalLB's Service annotations (`metallb.io/loadBalancerIPs`,
    /// `metallb.io/allow-shared-ip`, `metallb.io/address-pool` and their
    /// `metallb.universe.tf/...` spellings) as aliases of ours.
    pub metallb_annotations: bool,
}

impl Default for ClassOptions {
    fn default() -> Self {
        ClassOptions {
            default_class: true,
            cilium_class: false,
            metallb_annotations: false,
        }
    }
}

/// Whether ferrolb is responsible for `svc`: `type: LoadBalancer` and a class we serve
/// (unset when `default_class`, `ferrolb.io/l2-announcer`, or Cilium's when `cilium_class`).
pub fn is_ours(svc: &Service, opts: &ClassOptions) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    crate::k8s::service::class_served(
        spec.load_balancer_class.as_deref(),
        opts.default_class,
        opts.cilium_class,
    )
}

/// Namespaces allowed to share an address with a Service.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub enum CrossNamespace {
    /// Only its own namespace (annotation absent).
    #[default]
    SameOnly,
    /// These namespaces too.
    List(BTreeSet<String>),
    /// Any namespace (`*`).
    Any,
}

impl CrossNamespace {
    fn allows(&self, ns: &str) -> bool {
        match self {
            CrossNamespace::SameOnly => false,
            CrossNamespace::List(l) => l.contains(ns),
            CrossNamespace::Any => true,
        }
    }
}

/// A Service's sharing settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sharing {
    /// The sharing key.
    pub key: String,
    /// Cross-namespace allowance.
    pub cross: CrossNamespace,
}

/// A small string map kept as one sorted vector (labels, pod selectors): a `BTreeMap`'s first
/// node costs ≈ 0.5 KiB even for the one or two entries a Service usually has.
pub type StrMap = LiteMap<Box<str>, Box<str>>;

fn boxed((k, v): (String, String)) -> (Box<str>, Box<str>) {
    (k.into_boxed_str(), v.into_boxed_str())
}

/// A Service's `(port, protocol)` pairs, sorted and without repeats, in one exact-size slice
/// (a `BTreeSet`'s first node costs ≈ 0.4 KiB for the one port a Service usually has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports(Box<[(i32, Box<str>)]>);

impl Ports {
    pub fn iter(&self) -> impl Iterator<Item = (i32, &str)> {
        self.0.iter().map(|(p, proto)| (*p, &**proto))
    }

    pub fn contains(&self, (port, proto): &(i32, &str)) -> bool {
        self.0
            .binary_search_by(|(p, pr)| (*p, &**pr).cmp(&(*port, *proto)))
            .is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<S: Into<Box<str>>> FromIterator<(i32, S)> for Ports {
    fn from_iter<I: IntoIterator<Item = (i32, S)>>(iter: I) -> Self {
        let mut v: Vec<(i32, Box<str>)> = iter.into_iter().map(|(p, s)| (p, s.into())).collect();
        v.sort_unstable();
        v.dedup();
        Ports(v.into_boxed_slice())
    }
}

/// Everything the allocator needs to know about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReq {
    /// namespace/name.
    pub key: ServiceKey,
    /// Labels including the virtual `io.kubernetes.service.{namespace,name}`.
    pub labels: BTreeMap<String, String>,
    /// Wanted families in order (never empty after `from_service`).
    pub families: Vec<Family>,
    /// `spec.ipFamilyPolicy`.
    pub policy: FamilyPolicy,
    /// Whether `spec.ipFamilies` was given explicitly (then requested addresses must be of a
    /// listed family).
    pub families_explicit: bool,
    /// Requested addresses (`spec.loadBalancerIP` + the ips annotation), deduplicated, in order.
    pub requested: Vec<IpAddr>,
    /// Set when the request is malformed: the Service gets `InvalidRequest` with this message.
    pub invalid: Option<String>,
    /// Sharing settings (`None` = never shares).
    pub sharing: Option<Sharing>,
    /// `(port, protocol)` pairs; protocol defaults to TCP.
    pub ports: Ports,
    /// `spec.externalTrafficPolicy == Local`.
    pub etp_local: bool,
    /// `spec.selector` (pod selector).
    pub pod_selector: StrMap,
    /// Pools asked for by name (`ferrolb.io/pools`); empty = any pool with `autoAssign`.
    pub pools: Vec<String>,
    /// `ferrolb.io/reallocate: "true"`: give up addresses no pool covers any more.
    pub reallocate: bool,
}

impl ServiceReq {
    /// A plain request: one IPv4 address, no sharing (builder base for tests and benches).
    pub fn new(namespace: &str, name: &str) -> Self {
        let key = ServiceKey::new(namespace, name);
        let mut labels = BTreeMap::new();
        labels.insert(
            crate::api::LABEL_SERVICE_NAMESPACE.to_string(),
            namespace.to_string(),
        );
        labels.insert(crate::api::LABEL_SERVICE_NAME.to_string(), name.to_string());
        ServiceReq {
            key,
            labels,
            families: vec![Family::V4],
            policy: FamilyPolicy::SingleStack,
            families_explicit: false,
            requested: Vec::new(),
            invalid: None,
            sharing: None,
            ports: Ports::default(),
            etp_local: false,
            pod_selector: StrMap::new(),
            pools: Vec::new(),
            reallocate: false,
        }
    }

    /// Reads a Service (without the MetalLB aliases). Never fails: a malformed request is
    /// recorded in `invalid`.
    pub fn from_service(svc: &Service) -> Self {
        Self::from_service_with(svc, &ClassOptions::default())
    }

    /// Reads a Service, with the MetalLB aliases when `opts.metallb_annotations`.
    pub fn from_service_with(svc: &Service, opts: &ClassOptions) -> Self {
        let metallb = |l: &'static [&'static str]| -> &'static [&'static str] {
            if opts.metallb_annotations {
                l
            } else {
                &[]
            }
        };
        let key = ServiceKey::of(svc);
        let labels = service_labels(svc);
        let ann = svc.metadata.annotations.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        let mut problems: Vec<String> = Vec::new();

        // Requested addresses.
        let mut requested: Vec<IpAddr> = Vec::new();
        let push = |ip: IpAddr, requested: &mut Vec<IpAddr>| {
            if !requested.contains(&ip) {
                requested.push(ip);
            }
        };
        if let Some(lbip) = spec.load_balancer_ip.as_deref().map(str::trim) {
            if !lbip.is_empty() {
                match lbip.parse::<IpAddr>() {
                    Ok(ip) => push(ip, &mut requested),
                    Err(_) => problems.push(format!(
                        "spec.loadBalancerIP: {lbip:?} is not an IP address"
                    )),
                }
            }
        }
        if let Some((name, value)) = annotation(&ann, ANN_IPS, CILIUM_ANN_IPS)
            .or_else(|| annotation_in(&ann, metallb(METALLB_ANN_IPS)))
        {
            for part in value.split(',').map(str::trim) {
                if part.is_empty() {
                    continue;
                }
                match part.parse::<IpAddr>() {
                    Ok(ip) => push(ip, &mut requested),
                    Err(_) => {
                        problems.push(format!("annotation {name}: {part:?} is not an IP address"))
                    }
                }
            }
        }

        // Families.
        let policy = match spec.ip_family_policy.as_deref() {
            None => FamilyPolicy::SingleStack,
            Some(p) => FamilyPolicy::from_k8s(p).unwrap_or_else(|| {
                problems.push(format!(
                    "spec.ipFamilyPolicy: {p:?} is not SingleStack, PreferDualStack or RequireDualStack"
                ));
                FamilyPolicy::SingleStack
            }),
        };
        let mut families: Vec<Family> = Vec::new();
        for (i, f) in spec.ip_families.iter().flatten().enumerate() {
            match Family::from_k8s(f) {
                Some(f) if !families.contains(&f) => families.push(f),
                Some(_) => problems.push(format!("spec.ipFamilies[{i}]: duplicate {f}")),
                None => problems.push(format!("spec.ipFamilies[{i}]: {f:?} is not IPv4 or IPv6")),
            }
        }
        let families_explicit = !families.is_empty();
        if families.is_empty() {
            for ip in &requested {
                let f = Family::of(ip);
                if !families.contains(&f) {
                    families.push(f);
                }
            }
        }
        if families.is_empty() {
            families = match policy {
                FamilyPolicy::SingleStack => vec![Family::V4],
                _ => vec![Family::V4, Family::V6],
            };
        }
        if policy == FamilyPolicy::SingleStack && families_explicit && families.len() > 1 {
            problems.push("spec.ipFamilies: SingleStack lists more than one family".into());
        }

        // Sharing.
        let sharing = annotation(&ann, ANN_SHARING_KEY, CILIUM_ANN_SHARING_KEY)
            .or_else(|| annotation_in(&ann, metallb(METALLB_ANN_SHARING_KEY)))
            .map(|(name, k)| (name, k.trim().to_string()))
            .filter(|(_, k)| !k.is_empty())
            .map(|(name, k)| {
                let cross =
                    match annotation(&ann, ANN_SHARING_CROSS_NS, CILIUM_ANN_SHARING_CROSS_NS) {
                        // MetalLB shares a key across namespaces.
                        None if METALLB_ANN_SHARING_KEY.contains(&name) => CrossNamespace::Any,
                        None => CrossNamespace::SameOnly,
                        Some((_, v)) => {
                            let set: BTreeSet<String> = v
                                .split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect();
                            if set.contains("*") {
                                CrossNamespace::Any
                            } else {
                                CrossNamespace::List(set)
                            }
                        }
                    };
                Sharing { key: k, cross }
            });

        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
            .collect();

        // Pools by name.
        let mut pools: Vec<String> = Vec::new();
        if let Some((name, value)) = annotation(&ann, ANN_POOLS, &[])
            .or_else(|| annotation_in(&ann, metallb(METALLB_ANN_POOL)))
        {
            for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if part.len() > 253
                    || !part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    })
                {
                    problems.push(format!("annotation {name}: {part:?} is not a pool name"));
                } else if !pools.iter().any(|p| p == part) {
                    pools.push(part.to_string());
                }
            }
            if pools.is_empty() && !problems.iter().any(|p| p.contains(name)) {
                problems.push(format!("annotation {name}: names no pool"));
            }
        }
        let reallocate = match ann.get(ANN_REALLOCATE).map(|v| v.trim()) {
            None | Some("false") | Some("") => false,
            Some("true") => true,
            Some(other) => {
                problems.push(format!(
                    "annotation {ANN_REALLOCATE}: {other:?} is not \"true\" or \"false\""
                ));
                false
            }
        };

        ServiceReq {
            key,
            labels,
            families,
            policy,
            families_explicit,
            requested,
            pools,
            reallocate,
            invalid: (!problems.is_empty()).then(|| problems.join("; ")),
            sharing,
            ports,
            etp_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            pod_selector: spec
                .selector
                .unwrap_or_default()
                .into_iter()
                .map(boxed)
                .collect(),
        }
    }

    /// Whether this Service and `other` may hold the same address: same sharing key, same
    /// namespace unless both allow the other's namespace, no common `(port, protocol)` (so DNS
    /// over TCP and UDP on port 53 can share), same externalTrafficPolicy, and for `Local`
    /// identical non-empty pod selectors. `Err` explains why not.
    pub fn can_share_with(&self, other: &ServiceReq) -> Result<(), String> {
        share_check(&self.share_view(), &other.share_view())
    }
}

/// The parts of a request the sharing rules look at (shared by [`ServiceReq`] and the
/// allocator's stored form).
struct ShareView<'a> {
    key: &'a ServiceKey,
    sharing: Option<&'a Sharing>,
    ports: &'a Ports,
    etp_local: bool,
    pod_selector: &'a StrMap,
}

/// `share_view()` of both request forms, which keep these fields under the same names.
macro_rules! impl_share_view {
    ($($req:ty),*) => {$(
        impl $req {
            fn share_view(&self) -> ShareView<'_> {
                ShareView {
                    key: &self.key,
                    sharing: self.sharing.as_ref(),
                    ports: &self.ports,
                    etp_local: self.etp_local,
                    pod_selector: &self.pod_selector,
                }
            }
        }
    )*};
}

impl_share_view!(ServiceReq, StoredReq);

/// [`ServiceReq::can_share_with`] on views.
fn share_check(me: &ShareView<'_>, other: &ShareView<'_>) -> Result<(), String> {
    let (Some(a), Some(b)) = (me.sharing, other.sharing) else {
        return Err(format!(
            "{} has no sharing key in common with {}",
            other.key, me.key
        ));
    };
    if a.key != b.key {
        return Err(format!(
            "{} uses sharing key {:?}, not {:?}",
            other.key, b.key, a.key
        ));
    }
    if me.key.namespace != other.key.namespace
        && !(a.cross.allows(&other.key.namespace) && b.cross.allows(&me.key.namespace))
    {
        return Err(format!(
            "{} is in another namespace and sharing-cross-namespace does not allow it on both Services",
            other.key
        ));
    }
    if let Some((port, proto)) = me.ports.iter().find(|p| other.ports.contains(p)) {
        return Err(format!("{} also uses port {port}/{proto}", other.key));
    }
    if me.etp_local != other.etp_local {
        return Err(format!(
            "{} has a different externalTrafficPolicy",
            other.key
        ));
    }
    if me.etp_local && (me.pod_selector.is_empty() || me.pod_selector != other.pod_selector) {
        return Err(format!(
            "{} has externalTrafficPolicy Local with a different (or empty) pod selector",
            other.key
        ));
    }
    Ok(())
}

/// The allocator's stored copy of a [`ServiceReq`], kept compactly: the virtual labels
/// `io.kubernetes.service.{namespace,name}` are answered from the key instead of being stored
/// (when they equal it, which [`ServiceReq::new`] and [`ServiceReq::from_service`] guarantee),
/// and the families live inline. A typical Service costs three heap blocks (the `Arc` and the two
/// key strings) instead of nine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReq {
    pub key: ServiceKey,
    /// Labels without the virtual ones that `virt_ns` / `virt_name` stand for.
    labels: StrMap,
    /// `labels[LABEL_SERVICE_NAMESPACE] == key.namespace` in the original request.
    virt_ns: bool,
    /// `labels[LABEL_SERVICE_NAME] == key.name` in the original request.
    virt_name: bool,
    pub families: SmallVec<[Family; 2]>,
    pub policy: FamilyPolicy,
    pub families_explicit: bool,
    pub requested: Vec<IpAddr>,
    pub invalid: Option<String>,
    pub sharing: Option<Sharing>,
    pub ports: Ports,
    pub etp_local: bool,
    pub pod_selector: StrMap,
    pub pools: Vec<String>,
    pub reallocate: bool,
}

impl StoredReq {
    /// The compact copy of `r`.
    pub fn from_req(r: &ServiceReq) -> Self {
        let virt_ns =
            r.labels.get(LABEL_SERVICE_NAMESPACE).map(String::as_str) == Some(&*r.key.namespace);
        let virt_name = r.labels.get(LABEL_SERVICE_NAME).map(String::as_str) == Some(&*r.key.name);
        let labels = r
            .labels
            .iter()
            .filter(|(k, _)| {
                !(virt_ns && k.as_str() == LABEL_SERVICE_NAMESPACE
                    || virt_name && k.as_str() == LABEL_SERVICE_NAME)
            })
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
            .collect();
        StoredReq {
            key: r.key.clone(),
            labels,
            virt_ns,
            virt_name,
            families: SmallVec::from_slice(&r.families),
            policy: r.policy,
            families_explicit: r.families_explicit,
            requested: r.requested.clone(),
            invalid: r.invalid.clone(),
            sharing: r.sharing.clone(),
            ports: r.ports.clone(),
            etp_local: r.etp_local,
            pod_selector: r.pod_selector.clone(),
            pools: r.pools.clone(),
            reallocate: r.reallocate,
        }
    }

    /// The value of label `k` as in the original request's `labels`.
    pub fn label(&self, k: &str) -> Option<&str> {
        if self.virt_ns && k == LABEL_SERVICE_NAMESPACE {
            return Some(&self.key.namespace);
        }
        if self.virt_name && k == LABEL_SERVICE_NAME {
            return Some(&self.key.name);
        }
        self.labels.get(k).map(|v| &**v)
    }

    /// Whether this is a copy of a request equal to `r`.
    pub fn same_as(&self, r: &ServiceReq) -> bool {
        let n_labels = self.labels.len() + usize::from(self.virt_ns) + usize::from(self.virt_name);
        self.key == r.key
            && self.policy == r.policy
            && self.families_explicit == r.families_explicit
            && self.etp_local == r.etp_local
            && self.families[..] == r.families[..]
            && self.requested == r.requested
            && self.invalid == r.invalid
            && self.sharing == r.sharing
            && self.ports == r.ports
            && self.pod_selector == r.pod_selector
            && self.pools == r.pools
            && self.reallocate == r.reallocate
            && n_labels == r.labels.len()
            && r.labels
                .iter()
                .all(|(k, v)| self.label(k) == Some(v.as_str()))
    }

    /// [`ServiceReq::can_share_with`] between stored requests.
    pub fn can_share_with(&self, other: &StoredReq) -> Result<(), String> {
        share_check(&self.share_view(), &other.share_view())
    }
}

/// First present annotation among `names`, with the name it was found under.
fn annotation_in<'a>(
    ann: &'a BTreeMap<String, String>,
    names: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    names
        .iter()
        .find_map(|k| ann.get(*k).map(|v| (*k, v.as_str())))
}

/// First present annotation among `ours` and `aliases`, with the name it was found under.
fn annotation<'a>(
    ann: &'a BTreeMap<String, String>,
    ours: &'static str,
    aliases: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    std::iter::once(ours)
        .chain(aliases.iter().copied())
        .find_map(|k| ann.get(k).map(|v| (k, v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CILIUM_LB_CLASS, LB_CLASS};
    use crate::fixtures::ServiceBuilder;

    #[test]
    fn ports_are_sorted_without_repeats_and_found_by_pair() {
        let p: Ports = [(80, "TCP"), (53, "UDP"), (80, "TCP"), (53, "TCP")]
            .into_iter()
            .collect();
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            [(53, "TCP"), (53, "UDP"), (80, "TCP")]
        );
        assert!(p.contains(&(53, "UDP")));
        assert!(!p.contains(&(80, "UDP")));
        assert!(!p.contains(&(443, "TCP")));
        assert_eq!(p.len(), 3);
        assert!(Ports::default().is_empty());
    }

    /// `demo/a` of type LoadBalancer.
    fn lb() -> ServiceBuilder {
        ServiceBuilder::named("demo", "a").type_("LoadBalancer")
    }

    #[test]
    fn class_filtering() {
        let with = |class: Option<&str>, ty: &str| {
            let b = ServiceBuilder::named("demo", "a").type_(ty);
            match class {
                Some(c) => b.class(c),
                None => b,
            }
            .build()
        };
        let def = ClassOptions::default();
        let no_default = ClassOptions {
            default_class: false,
            cilium_class: false,
            metallb_annotations: false,
        };
        let cilium = ClassOptions {
            default_class: true,
            cilium_class: true,
            metallb_annotations: false,
        };
        assert!(is_ours(&with(None, "LoadBalancer"), &def));
        assert!(!is_ours(&with(None, "LoadBalancer"), &no_default));
        assert!(is_ours(&with(Some(LB_CLASS), "LoadBalancer"), &no_default));
        assert!(!is_ours(&with(Some(LB_CLASS), "ClusterIP"), &def));
        assert!(!is_ours(
            &with(Some("example.com/other"), "LoadBalancer"),
            &def
        ));
        assert!(!is_ours(&with(Some(CILIUM_LB_CLASS), "LoadBalancer"), &def));
        assert!(is_ours(
            &with(Some(CILIUM_LB_CLASS), "LoadBalancer"),
            &cilium
        ));
        assert!(!is_ours(&Service::default(), &def));
    }

    #[test]
    fn from_service_reads_everything() {
        let r = ServiceReq::from_service(
            &ServiceBuilder::named("kube-system", "dns")
                .label("app", "dns")
                .ips("198.51.100.53, 2001:db8:100::53")
                .sharing("dns")
                .annotation("ferrolb.io/sharing-cross-namespace", "a, b")
                .type_("LoadBalancer")
                .load_balancer_ip("198.51.100.53")
                .families(&["IPv6", "IPv4"], "PreferDualStack")
                .external_traffic_policy("Local")
                .selector("k8s-app", "dns")
                .port("", 53, "UDP")
                .port("", 53, "")
                .build(),
        );
        assert_eq!(r.key, ServiceKey::new("kube-system", "dns"));
        assert_eq!(r.labels["app"], "dns");
        assert_eq!(r.labels[crate::api::LABEL_SERVICE_NAME], "dns");
        assert_eq!(
            r.requested,
            [
                "198.51.100.53".parse::<IpAddr>().unwrap(),
                "2001:db8:100::53".parse().unwrap()
            ]
        );
        assert_eq!(r.families, [Family::V6, Family::V4]);
        assert!(r.families_explicit);
        assert_eq!(r.policy, FamilyPolicy::PreferDualStack);
        assert_eq!(r.invalid, None);
        let sh = r.sharing.unwrap();
        assert_eq!(sh.key, "dns");
        assert_eq!(
            sh.cross,
            CrossNamespace::List(["a".to_string(), "b".to_string()].into())
        );
        assert!(r.ports.contains(&(53, "TCP")) && r.ports.contains(&(53, "UDP")));
        assert!(r.etp_local);
        assert_eq!(r.pod_selector.get("k8s-app").map(|v| &**v), Some("dns"));
    }

    #[test]
    fn cilium_aliases_are_honoured_and_ours_win() {
        let r = ServiceReq::from_service(
            &lb()
                .annotation("io.cilium/lb-ipam-ips", "198.51.100.7")
                .annotation("lbipam.cilium.io/sharing-key", "k")
                .annotation("lbipam.cilium.io/sharing-cross-namespace", "*")
                .build(),
        );
        assert_eq!(r.requested, ["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            r.families,
            [Family::V4],
            "derived from the requested address"
        );
        assert_eq!(r.sharing.unwrap().cross, CrossNamespace::Any);
        let r = ServiceReq::from_service(
            &lb()
                .ips("198.51.100.8")
                .annotation("lbipam.cilium.io/ips", "198.51.100.7")
                .build(),
        );
        assert_eq!(r.requested, ["198.51.100.8".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn metallb_aliases_only_when_asked_and_ours_win() {
        let s = ServiceBuilder::named("shop", "a")
            .type_("LoadBalancer")
            .annotation("metallb.universe.tf/loadBalancerIPs", "198.51.100.7")
            .annotation("metallb.io/allow-shared-ip", "dns")
            .annotation("metallb.io/address-pool", "public")
            .build();
        let off = ServiceReq::from_service(&s);
        assert!(off.requested.is_empty() && off.sharing.is_none() && off.pools.is_empty());
        let on = ClassOptions {
            metallb_annotations: true,
            ..ClassOptions::default()
        };
        let r = ServiceReq::from_service_with(&s, &on);
        assert_eq!(r.requested, ["198.51.100.7".parse::<IpAddr>().unwrap()]);
        let sh = r.sharing.unwrap();
        assert_eq!(sh.key, "dns");
        assert_eq!(
            sh.cross,
            CrossNamespace::Any,
            "MetalLB shares across namespaces"
        );
        assert_eq!(r.pools, ["public"]);
        let mut s2 = s.clone();
        let ann = s2.metadata.annotations.as_mut().unwrap();
        ann.insert("ferrolb.io/ips".into(), "198.51.100.8".into());
        ann.insert("ferrolb.io/pools".into(), "private, other".into());
        let r = ServiceReq::from_service_with(&s2, &on);
        assert_eq!(r.requested, ["198.51.100.8".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.pools, ["private", "other"]);
    }

    #[test]
    fn bad_pools_and_reallocate_annotations_are_invalid_requests() {
        let r = ServiceReq::from_service(
            &lb()
                .annotation("ferrolb.io/pools", "Bad_Name, ok")
                .annotation("ferrolb.io/reallocate", "yes please")
                .build(),
        );
        let m = r.invalid.unwrap();
        assert!(
            m.contains("annotation ferrolb.io/pools: \"Bad_Name\""),
            "{m}"
        );
        assert!(m.contains("annotation ferrolb.io/reallocate"), "{m}");
        let r = ServiceReq::from_service(&lb().annotation("ferrolb.io/pools", " , ").build());
        assert!(r.invalid.unwrap().contains("names no pool"));
    }

    #[test]
    fn malformed_requests_name_the_source() {
        let r = ServiceReq::from_service(
            &lb()
                .annotation("lbipam.cilium.io/ips", "198.51.100.7,banana")
                .load_balancer_ip("300.1.1.1")
                .family_policy("Sometimes")
                .build(),
        );
        let m = r.invalid.unwrap();
        assert!(
            m.contains("annotation lbipam.cilium.io/ips: \"banana\""),
            "{m}"
        );
        assert!(m.contains("spec.loadBalancerIP"), "{m}");
        assert!(m.contains("spec.ipFamilyPolicy"), "{m}");
    }

    #[test]
    fn family_defaults_without_ip_families() {
        let r = |policy: Option<&str>| {
            let b = lb();
            ServiceReq::from_service(
                &match policy {
                    Some(p) => b.family_policy(p),
                    None => b,
                }
                .build(),
            )
        };
        assert_eq!(r(None).families, [Family::V4]);
        assert_eq!(
            r(Some("RequireDualStack")).families,
            [Family::V4, Family::V6]
        );
        assert!(!r(Some("PreferDualStack")).families_explicit);
    }
}
