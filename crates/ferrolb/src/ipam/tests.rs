//! Allocator scenarios: one rule per test, built with the helpers below.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::service::{CrossNamespace, Sharing, StoredReq};
use super::*;
use crate::api::IpBlock;

// ----- builders ------------------------------------------------------------------------------

fn cidr(c: &str) -> IpBlock {
    IpBlock {
        cidr: Some(c.into()),
        ..Default::default()
    }
}

fn range(a: &str, z: &str) -> IpBlock {
    IpBlock {
        start: Some(a.into()),
        stop: Some(z.into()),
        ..Default::default()
    }
}

struct P(PoolDef);

impl P {
    fn new(name: &str, blocks: &[IpBlock]) -> Self {
        P(PoolDef::new(name, blocks))
    }
    fn labels(mut self, kv: &[(&str, &str)]) -> Self {
        let sel = LabelSelector {
            match_labels: Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        self.0.selector = selector::Selector::compile(&sel);
        self
    }
    fn selector(mut self, sel: LabelSelector) -> Self {
        self.0.selector = selector::Selector::compile(&sel);
        self
    }
    fn created(mut self, secs: i64) -> Self {
        self.0.created = Some(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap());
        self
    }
    fn disabled(mut self) -> Self {
        self.0.disabled = true;
        self
    }
    fn allow_first_last(mut self) -> Self {
        self.0.allow_first_last = true;
        for b in &mut self.0.blocks {
            b.usable = Some(b.range);
        }
        self
    }
    fn priority(mut self, p: i32) -> Self {
        self.0.priority = Some(p);
        self
    }
    fn namespaces(mut self, ns: &[&str]) -> Self {
        self.0.namespaces = ns.iter().map(|s| s.to_string()).collect();
        self
    }
    fn ns_labels(mut self, kv: &[(&str, &str)]) -> Self {
        let sel = LabelSelector {
            match_labels: Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        self.0.namespace_selector = selector::Selector::compile(&sel).map(Some);
        self
    }
    fn manual(mut self) -> Self {
        self.0.auto_assign = false;
        self
    }
    fn def(self) -> PoolDef {
        self.0
    }
}

struct S(ServiceReq);

impl S {
    fn new(ns: &str, name: &str) -> Self {
        S(ServiceReq::new(ns, name))
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.0.labels.insert(k.into(), v.into());
        self
    }
    fn v6(mut self) -> Self {
        self.0.families = vec![Family::V6];
        self.0.families_explicit = true;
        self
    }
    fn dual(mut self, policy: FamilyPolicy) -> Self {
        self.0.families = vec![Family::V4, Family::V6];
        self.0.families_explicit = true;
        self.0.policy = policy;
        self
    }
    fn request(mut self, ips: &[&str]) -> Self {
        self.0.requested = ips.iter().map(|s| s.parse().unwrap()).collect();
        self
    }
    fn share(mut self, key: &str) -> Self {
        self.0.sharing = Some(Sharing {
            key: key.into(),
            cross: CrossNamespace::SameOnly,
        });
        self
    }
    fn cross(mut self, c: CrossNamespace) -> Self {
        if let Some(s) = &mut self.0.sharing {
            s.cross = c;
        }
        self
    }
    fn port(mut self, port: i32, proto: &str) -> Self {
        self.0.ports = self.0.ports.iter().chain([(port, proto)]).collect();
        self
    }
    fn local(mut self, pods: &[(&str, &str)]) -> Self {
        self.0.etp_local = true;
        self.0.pod_selector = pods
            .iter()
            .map(|(k, v)| (Box::from(*k), Box::from(*v)))
            .collect();
        self
    }
    fn pools(mut self, names: &[&str]) -> Self {
        self.0.pools = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn reallocate(mut self) -> Self {
        self.0.reallocate = true;
        self
    }
    fn req(self) -> ServiceReq {
        self.0
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(o: &Outcome) -> Vec<String> {
    o.addresses.iter().map(|a| a.ip.to_string()).collect()
}

fn key(ns: &str, n: &str) -> ServiceKey {
    ServiceKey::new(ns, n)
}

// ----- scenarios -----------------------------------------------------------------------------

#[test]
fn lowest_free_address_skipping_reserved_network_address() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/30")]).def());
    let o1 = a.ensure(&S::new("ns", "a").req());
    let o2 = a.ensure(&S::new("ns", "b").req());
    let o3 = a.ensure(&S::new("ns", "c").req());
    assert_eq!(ips(&o1), ["198.51.100.1"]);
    assert_eq!(ips(&o2), ["198.51.100.2"]);
    assert_eq!(o3.reason, Reason::OutOfIPs, "{o3:?}");
    assert!(o3.addresses.is_empty());
    let st = a.pool_status("p").unwrap();
    assert_eq!((st.total, st.used, st.available), (2, 2, 0));
}

#[test]
fn allow_first_last_ips_uses_the_whole_cidr() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("p", &[cidr("198.51.100.0/30")])
            .allow_first_last()
            .def(),
    );
    let got: Vec<String> = (0..4)
        .map(|i| ips(&a.ensure(&S::new("ns", &format!("s{i}")).req()))[0].clone())
        .collect();
    assert_eq!(
        got,
        [
            "198.51.100.0",
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3"
        ]
    );
}

#[test]
fn freed_address_goes_to_the_waiting_service() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[range("198.51.100.10", "198.51.100.10")]).def());
    assert!(a.ensure(&S::new("ns", "a").req()).is_satisfied());
    assert_eq!(a.ensure(&S::new("ns", "b").req()).reason, Reason::OutOfIPs);
    a.take_changed();
    a.release(&key("ns", "a"));
    let changed = a.take_changed();
    assert_eq!(changed, [key("ns", "a"), key("ns", "b")]);
    assert_eq!(ips(&a.outcome(&key("ns", "b")).unwrap()), ["198.51.100.10"]);
}

#[test]
fn selector_and_virtual_labels_choose_the_pool() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("mesh", &[range("198.51.100.20", "198.51.100.20")])
            .labels(&[
                ("io.kubernetes.service.namespace", "kube-system"),
                ("io.kubernetes.service.name", "clustermesh-apiserver"),
            ])
            .def(),
    );
    a.set_pool(
        P::new("app", &[range("198.51.100.30", "198.51.100.39")])
            .labels(&[("lb-pool", "app")])
            .def(),
    );
    let mesh = a.ensure(&S::new("kube-system", "clustermesh-apiserver").req());
    assert_eq!(ips(&mesh), ["198.51.100.20"]);
    assert_eq!(mesh.addresses[0].pool, "mesh");
    let echo = a.ensure(&S::new("echo", "echo").label("lb-pool", "app").req());
    assert_eq!(ips(&echo), ["198.51.100.30"]);
    let other = a.ensure(&S::new("echo", "other").req());
    assert_eq!(other.reason, Reason::NoPool);
}

#[test]
fn stored_request_answers_virtual_labels_from_the_key() {
    use crate::api::{LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE};
    let r = S::new("ns", "web").label("app", "web").req();
    let st = StoredReq::from_req(&r);
    assert_eq!(st.label(LABEL_SERVICE_NAMESPACE), Some("ns"));
    assert_eq!(st.label(LABEL_SERVICE_NAME), Some("web"));
    assert_eq!(st.label("app"), Some("web"));
    assert_eq!(st.label("tier"), None);
    assert!(st.same_as(&r));
    // Any difference in the labels (value, added, removed, virtual ones included) is a change.
    for other in [
        S::new("ns", "web").label("app", "api").req(),
        S::new("ns", "web")
            .label("app", "web")
            .label("tier", "x")
            .req(),
        S::new("ns", "web").req(),
        S::new("ns", "web")
            .label("app", "web")
            .label(LABEL_SERVICE_NAME, "other")
            .req(),
    ] {
        assert!(!st.same_as(&other), "{:?}", other.labels);
    }
    // A hand-built request whose virtual labels differ from the key (or are missing) is answered
    // from what it says, not from the key.
    let mut odd = S::new("ns", "web").label(LABEL_SERVICE_NAME, "other").req();
    odd.labels.remove(LABEL_SERVICE_NAMESPACE);
    let st = StoredReq::from_req(&odd);
    assert_eq!(st.label(LABEL_SERVICE_NAME), Some("other"));
    assert_eq!(st.label(LABEL_SERVICE_NAMESPACE), None);
    assert!(st.same_as(&odd));
    assert!(!st.same_as(&S::new("ns", "web").req()));
}

#[test]
fn shared_request_is_kept_by_reference_not_copied() {
    use std::sync::Arc;
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let shared = Arc::new(StoredReq::from_req(&S::new("ns", "web").req()));
    let ip: IpAddr = "198.51.100.7".parse().expect("ip");
    a.adopt_shared(&shared, &[ip]);
    let o = a.ensure_shared(&shared);
    assert!(o.is_satisfied());
    assert_eq!(ips(&o), ["198.51.100.7"]);
    // The allocator holds the caller's copy: one more reference, no second request.
    assert_eq!(Arc::strong_count(&shared), 2);
    let held = a
        .lookup(&shared.key)
        .and_then(|id| a.entry(id))
        .expect("entry");
    assert!(Arc::ptr_eq(&held.req, &shared));
    // An equal request in another Arc changes nothing; a changed one replaces the shared copy.
    let equal = Arc::new(StoredReq::from_req(&S::new("ns", "web").req()));
    assert!(a.ensure_shared(&equal).is_satisfied());
    assert_eq!(Arc::strong_count(&equal), 1);
    let changed = Arc::new(StoredReq::from_req(
        &S::new("ns", "web").label("app", "web").req(),
    ));
    assert!(a.ensure_shared(&changed).is_satisfied());
    assert_eq!(Arc::strong_count(&changed), 2);
    assert_eq!(Arc::strong_count(&shared), 1);
    // The plain entry point still answers the same.
    assert_eq!(
        ips(&a.ensure(&S::new("ns", "web").label("app", "web").req())),
        ["198.51.100.7"]
    );
}

#[test]
fn changed_labels_are_reevaluated_against_the_selector() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("app", &[cidr("198.51.100.0/24")])
            .labels(&[("lb-pool", "app")])
            .def(),
    );
    let r = S::new("ns", "a").label("lb-pool", "app").req();
    assert!(a.ensure(&r).is_satisfied());
    a.take_changed();
    assert!(a.ensure(&r).is_satisfied());
    assert!(
        a.take_changed().is_empty(),
        "an unchanged request changes nothing"
    );
    // Relabelling the Service does not move its address either: it is kept and reported.
    let o = a.ensure(&S::new("ns", "a").label("lb-pool", "other").req());
    assert_eq!(o.reason(), Reason::Satisfied);
    assert!(
        o.not_covered[0].why.contains("spec.serviceSelector"),
        "{o:?}"
    );
    assert_eq!(a.take_changed(), [key("ns", "a")]);
    assert_eq!(a.pool_status("app").unwrap().used, 1);
    assert_eq!(a.pool_status("app").unwrap().not_covered, 1);
    // With ferrolb.io/reallocate it is given up (and no pool selects it any more).
    let o = a.ensure(
        &S::new("ns", "a")
            .label("lb-pool", "other")
            .reallocate()
            .req(),
    );
    assert_eq!(o.reason(), Reason::NoPool);
    assert_eq!(a.pool_status("app").unwrap().used, 0);
    assert_eq!(a.pool_status("app").unwrap().not_covered, 0);
}

#[test]
fn ensure_result_agrees_with_the_outcome() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[range("198.51.100.10", "198.51.100.10")]).def());
    let ok = a.ensure(&S::new("ns", "a").req());
    let full = a.ensure(&S::new("ns", "b").req());
    for (k, e) in [(key("ns", "a"), &ok), (key("ns", "b"), &full)] {
        let o = a.outcome(&k).unwrap();
        assert_eq!(e.reason(), o.reason);
        assert_eq!(e.is_satisfied(), o.is_satisfied());
        assert_eq!(e.ips(), o.ips());
        assert_eq!(**e, *o);
        assert_eq!(e.clone().into_outcome(), *o);
    }
    assert_eq!(ok.message, "198.51.100.10 from pool p");
    assert_eq!(full.reason, Reason::OutOfIPs);
}

#[test]
fn match_expressions_select() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("p", &[cidr("198.51.100.0/24")])
            .selector(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["internal".into()]),
                }]),
                ..Default::default()
            })
            .def(),
    );
    assert!(a.ensure(&S::new("ns", "a").req()).is_satisfied());
    assert_eq!(
        a.ensure(&S::new("ns", "b").label("tier", "internal").req())
            .reason,
        Reason::NoPool
    );
}

#[test]
fn invalid_selector_selects_nothing_and_is_reported() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("p", &[cidr("198.51.100.0/24")])
            .selector(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "Near".into(),
                    values: None,
                }]),
                ..Default::default()
            })
            .def(),
    );
    assert_eq!(a.ensure(&S::new("ns", "a").req()).reason, Reason::NoPool);
    let st = a.pool_status("p").unwrap();
    let conds = st.conditions();
    let c = conds.iter().find(|c| c.0 == COND_INVALID_SELECTOR).unwrap();
    assert!(c.1);
    assert!(c.3.contains("matchExpressions[0].operator"), "{}", c.3);
}

#[test]
fn requested_address_honoured_and_never_replaced() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let o = a.ensure(&S::new("ns", "a").request(&["198.51.100.77"]).req());
    assert_eq!(ips(&o), ["198.51.100.77"]);
    // Taken by an incompatible Service.
    let o = a.ensure(&S::new("ns", "b").request(&["198.51.100.77"]).req());
    assert_eq!(o.reason, Reason::AlreadyAllocated);
    assert!(o.message.contains("ns/a"), "{}", o.message);
    assert!(o.addresses.is_empty());
    // Outside every pool.
    let o = a.ensure(&S::new("ns", "c").request(&["203.0.113.5"]).req());
    assert_eq!(o.reason, Reason::NoPool);
    // Reserved network address.
    let o = a.ensure(&S::new("ns", "d").request(&["198.51.100.0"]).req());
    assert_eq!(o.reason, Reason::NoPool);
    assert!(o.message.contains("reserved"), "{}", o.message);
    // Fresh allocations skip the requested one.
    let got: Vec<String> = (0..80)
        .map(|i| ips(&a.ensure(&S::new("x", &format!("s{i}")).req()))[0].clone())
        .collect();
    assert!(!got.contains(&"198.51.100.77".to_string()));
}

#[test]
fn requested_address_respects_the_pool_selector() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("app", &[cidr("198.51.100.0/24")])
            .labels(&[("lb-pool", "app")])
            .def(),
    );
    let o = a.ensure(&S::new("ns", "a").request(&["198.51.100.9"]).req());
    assert_eq!(o.reason, Reason::PoolSelectorMismatch);
    assert!(o.message.contains("app"));
    // Relabel: now satisfied, and the old outcome counts as changed.
    a.take_changed();
    let o = a.ensure(
        &S::new("ns", "a")
            .label("lb-pool", "app")
            .request(&["198.51.100.9"])
            .req(),
    );
    assert_eq!(ips(&o), ["198.51.100.9"]);
    assert_eq!(a.take_changed(), [key("ns", "a")]);
}

#[test]
fn requested_address_family_must_be_listed() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("2001:db8:100::/112")]).def());
    let mut r = S::new("ns", "a").request(&["2001:db8:100::5"]).req();
    r.families = vec![Family::V4];
    r.families_explicit = true;
    assert_eq!(a.ensure(&r).reason, Reason::InvalidRequest);
}

#[test]
fn malformed_request_is_invalid_and_holds_nothing() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    assert!(a.ensure(&S::new("ns", "a").req()).is_satisfied());
    let mut r = S::new("ns", "a").req();
    r.invalid = Some("annotation ferrolb.io/ips: \"x\" is not an IP address".into());
    let o = a.ensure(&r);
    assert_eq!(o.reason, Reason::InvalidRequest);
    assert!(o.message.contains("ferrolb.io/ips"));
    assert_eq!(a.pool_status("p").unwrap().used, 0);
}

#[test]
fn dual_stack_policies() {
    let mut a = Allocator::new();
    a.set_pool(P::new("v4", &[cidr("198.51.100.0/24")]).def());
    let single6 = a.ensure(&S::new("ns", "s6").v6().req());
    assert_eq!(single6.reason, Reason::NoPool);
    let prefer = a.ensure(&S::new("ns", "p").dual(FamilyPolicy::PreferDualStack).req());
    assert_eq!(ips(&prefer), ["198.51.100.1"]);
    let require = a.ensure(&S::new("ns", "r").dual(FamilyPolicy::RequireDualStack).req());
    assert_eq!(require.reason, Reason::NoPool);
    assert!(require.addresses.is_empty(), "all or nothing");
    assert_eq!(a.pool_status("v4").unwrap().used, 1);
    // An IPv6 pool appears: the waiting ones are retried, PreferDualStack completes.
    let changed = a.set_pool(P::new("v6", &[cidr("2001:db8:100::/112")]).def());
    assert_eq!(changed, [key("ns", "p"), key("ns", "r"), key("ns", "s6")]);
    assert_eq!(
        ips(&a.outcome(&key("ns", "r")).unwrap()),
        ["198.51.100.2", "2001:db8:100::2"]
    );
    // Retried in key order: ns/p before ns/r before ns/s6.
    assert_eq!(
        ips(&a.outcome(&key("ns", "p")).unwrap()),
        ["198.51.100.1", "2001:db8:100::1"]
    );
    assert_eq!(
        ips(&a.outcome(&key("ns", "s6")).unwrap()),
        ["2001:db8:100::3"]
    );
}

#[test]
fn sharing_compatible_services_share_one_address() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let dns_tcp = a.ensure(
        &S::new("kube-system", "dns-tcp")
            .share("dns")
            .port(53, "TCP")
            .req(),
    );
    let dns_udp = a.ensure(
        &S::new("kube-system", "dns-udp")
            .share("dns")
            .port(53, "UDP")
            .req(),
    );
    assert_eq!(ips(&dns_tcp), ips(&dns_udp), "TCP and UDP on 53 share");
    // Same port and protocol: a new address.
    let clash = a.ensure(
        &S::new("kube-system", "dns-tcp2")
            .share("dns")
            .port(53, "TCP")
            .req(),
    );
    assert!(clash.is_satisfied());
    assert_ne!(ips(&clash), ips(&dns_tcp));
    assert_eq!(a.holders(ip("198.51.100.1")).len(), 2);
    assert_eq!(a.pool_status("p").unwrap().used, 2);
}

#[test]
fn requested_shared_address_checks_every_rule() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let base = || {
        S::new("a", "web")
            .share("k")
            .port(80, "TCP")
            .request(&["198.51.100.50"])
    };
    assert!(a.ensure(&base().req()).is_satisfied());
    let cases: Vec<(&str, ServiceReq)> = vec![
        (
            "no key",
            S::new("a", "x1")
                .port(443, "TCP")
                .request(&["198.51.100.50"])
                .req(),
        ),
        (
            "other key",
            S::new("a", "x2")
                .share("z")
                .port(443, "TCP")
                .request(&["198.51.100.50"])
                .req(),
        ),
        (
            "same port",
            S::new("a", "x3")
                .share("k")
                .port(80, "TCP")
                .request(&["198.51.100.50"])
                .req(),
        ),
        (
            "other namespace",
            S::new("b", "x4")
                .share("k")
                .port(443, "TCP")
                .request(&["198.51.100.50"])
                .req(),
        ),
        (
            "etp differs",
            S::new("a", "x5")
                .share("k")
                .port(443, "TCP")
                .local(&[("app", "web")])
                .request(&["198.51.100.50"])
                .req(),
        ),
    ];
    for (what, r) in cases {
        let o = a.ensure(&r);
        assert_eq!(o.reason, Reason::AlreadyAllocated, "{what}: {o:?}");
    }
    let ok = a.ensure(
        &S::new("a", "ok")
            .share("k")
            .port(443, "TCP")
            .request(&["198.51.100.50"])
            .req(),
    );
    assert!(ok.is_satisfied());
}

#[test]
fn cross_namespace_sharing_needs_both_sides() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let one = a.ensure(
        &S::new("a", "one")
            .share("k")
            .cross(CrossNamespace::Any)
            .port(80, "TCP")
            .req(),
    );
    // b allows a, a allows everyone: shared.
    let two = a.ensure(
        &S::new("b", "two")
            .share("k")
            .cross(CrossNamespace::List(["a".to_string()].into()))
            .port(81, "TCP")
            .req(),
    );
    assert_eq!(ips(&one), ips(&two));
    // c does not allow cross-namespace: its own address.
    let three = a.ensure(&S::new("c", "three").share("k").port(82, "TCP").req());
    assert_ne!(ips(&three), ips(&one));
}

#[test]
fn local_traffic_policy_needs_identical_pod_selectors() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let x = a.ensure(
        &S::new("a", "x")
            .share("k")
            .port(80, "TCP")
            .local(&[("app", "web")])
            .req(),
    );
    let y = a.ensure(
        &S::new("a", "y")
            .share("k")
            .port(81, "TCP")
            .local(&[("app", "web")])
            .req(),
    );
    let z = a.ensure(
        &S::new("a", "z")
            .share("k")
            .port(82, "TCP")
            .local(&[("app", "db")])
            .req(),
    );
    let e = a.ensure(&S::new("a", "e").share("k").port(83, "TCP").local(&[]).req());
    assert_eq!(ips(&x), ips(&y));
    assert_ne!(ips(&x), ips(&z));
    assert_ne!(ips(&x), ips(&e));
}

#[test]
fn overlapping_newer_pool_conflicts_and_allocates_nothing() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("old", &[range("198.51.100.10", "198.51.100.10")])
            .created(100)
            .def(),
    );
    a.set_pool(P::new("new", &[cidr("198.51.100.0/28")]).created(200).def());
    let st = a.pool_status("new").unwrap();
    assert_eq!(st.conflict_with.as_deref(), Some("old"));
    let (ty, status, reason, msg) = st.conditions().remove(0);
    assert_eq!(
        (ty, status, reason.as_str()),
        (COND_CONFLICT, true, "CIDROverlap")
    );
    assert!(msg.contains("old"), "{msg}");
    assert!(a.pool_status("old").unwrap().conflict_with.is_none());
    assert!(a.ensure(&S::new("ns", "a").req()).is_satisfied());
    // The only allocating pool is full; the conflicting one gives nothing.
    assert_eq!(a.ensure(&S::new("ns", "b").req()).reason, Reason::OutOfIPs);
    // Resolve the conflict: b is retried and served from "new".
    let changed = a.remove_pool("old");
    assert!(changed.contains(&key("ns", "b")));
    assert_eq!(a.outcome(&key("ns", "b")).unwrap().addresses[0].pool, "new");
}

#[test]
fn conflicting_pool_keeps_existing_allocations() {
    let mut a = Allocator::new();
    a.set_pool(P::new("b", &[cidr("198.51.100.0/28")]).created(200).def());
    let held = a.ensure(&S::new("ns", "a").req());
    assert_eq!(ips(&held), ["198.51.100.1"]);
    // An older pool covering the same range appears (e.g. restored from backup).
    a.set_pool(P::new("a", &[cidr("198.51.100.0/24")]).created(100).def());
    assert_eq!(
        a.pool_status("b").unwrap().conflict_with.as_deref(),
        Some("a")
    );
    assert_eq!(ips(&a.outcome(&key("ns", "a")).unwrap()), ["198.51.100.1"]);
    // New allocations come from the older pool and skip the held address.
    let o = a.ensure(&S::new("ns", "c").req());
    assert_eq!(ips(&o), ["198.51.100.2"]);
    assert_eq!(o.addresses[0].pool, "a");
}

#[test]
fn disabled_pool_keeps_existing_allocations_only() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    assert!(a.ensure(&S::new("ns", "a").req()).is_satisfied());
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).disabled().def());
    assert_eq!(ips(&a.outcome(&key("ns", "a")).unwrap()), ["198.51.100.1"]);
    assert_eq!(a.ensure(&S::new("ns", "b").req()).reason, Reason::NoPool);
    // The verdict read without building an outcome says the same.
    assert!(!a.is_unsatisfied(&key("ns", "a")));
    assert!(a.is_unsatisfied(&key("ns", "b")));
    assert!(!a.is_unsatisfied(&key("ns", "unknown")));
    let o = a.ensure(&S::new("ns", "c").request(&["198.51.100.9"]).req());
    assert_eq!(o.reason, Reason::NoPool);
    assert!(o.message.contains("disabled"));
}

#[test]
fn pool_edits_never_move_an_address_and_report_what_is_not_covered() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    a.ensure(&S::new("ns", "a").label("team", "x").req());
    a.ensure(&S::new("ns", "b").label("team", "y").req());
    a.take_changed();
    // Selector change: b keeps its address, reported as not covered (pool and field named).
    let changed = a.set_pool(
        P::new("p", &[cidr("198.51.100.0/24")])
            .labels(&[("team", "x")])
            .def(),
    );
    assert_eq!(changed, [key("ns", "b")]);
    let o = a.outcome(&key("ns", "b")).unwrap();
    assert_eq!(o.reason, Reason::Satisfied);
    assert_eq!(ips(&o), ["198.51.100.2"]);
    assert_eq!(o.not_covered.len(), 1);
    assert!(o.not_covered[0].why.contains("pool p"), "{o:?}");
    assert!(
        o.not_covered[0].why.contains("spec.serviceSelector"),
        "{o:?}"
    );
    let st = a.pool_status("p").unwrap();
    assert_eq!((st.used, st.not_covered), (2, 1), "{st:?}");
    // A new Service that p still selects never gets b's address.
    assert_eq!(
        ips(&a.ensure(&S::new("ns", "c").label("team", "x").req())),
        ["198.51.100.3"]
    );
    // Shrink: a's address is outside the pool now, kept, not counted as used.
    a.set_pool(
        P::new("p", &[cidr("198.51.100.128/25")])
            .labels(&[("team", "x")])
            .def(),
    );
    let o = a.outcome(&key("ns", "a")).unwrap();
    assert_eq!(ips(&o), ["198.51.100.1"]);
    assert!(o.not_covered[0].why.contains("spec.blocks"), "{o:?}");
    let st = a.pool_status("p").unwrap();
    assert_eq!((st.used, st.not_covered), (0, 3), "{st:?}");
    // Delete: everything kept; re-create the original: covered again, nothing moved.
    a.remove_pool("p");
    let o = a.outcome(&key("ns", "a")).unwrap();
    assert_eq!(ips(&o), ["198.51.100.1"]);
    assert!(o.not_covered[0].why.contains("pool p was deleted"), "{o:?}");
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    for (n, want) in [
        ("a", "198.51.100.1"),
        ("b", "198.51.100.2"),
        ("c", "198.51.100.3"),
    ] {
        let o = a.outcome(&key("ns", n)).unwrap();
        assert_eq!(ips(&o), [want], "{n}");
        assert!(o.not_covered.is_empty(), "{n}: {o:?}");
    }
    let st = a.pool_status("p").unwrap();
    assert_eq!((st.used, st.not_covered), (3, 0));
    // Disabled: kept, and covered (a disabled pool keeps its allocations).
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).disabled().def());
    assert!(a.outcome(&key("ns", "a")).unwrap().not_covered.is_empty());
    assert_eq!(ips(&a.outcome(&key("ns", "a")).unwrap()), ["198.51.100.1"]);
}

#[test]
fn reallocate_gives_up_an_uncovered_address_only_when_asked() {
    let mut a = Allocator::new();
    a.set_pool(P::new("old", &[cidr("198.51.100.0/28")]).def());
    a.ensure(&S::new("ns", "a").req());
    a.set_pool(P::new("new", &[cidr("203.0.113.0/28")]).def());
    a.remove_pool("old");
    assert_eq!(ips(&a.outcome(&key("ns", "a")).unwrap()), ["198.51.100.1"]);
    let o = a.ensure(&S::new("ns", "a").reallocate().req());
    assert_eq!(ips(&o), ["203.0.113.1"]);
    assert!(o.not_covered.is_empty());
    assert!(a.holders(ip("198.51.100.1")).is_empty());
}

#[test]
fn priority_decides_the_pool_then_the_name() {
    let mut a = Allocator::new();
    a.set_pool(P::new("a-none", &[cidr("192.0.2.0/28")]).def());
    a.set_pool(
        P::new("b-ten", &[cidr("198.51.100.0/28")])
            .priority(10)
            .def(),
    );
    a.set_pool(
        P::new("c-five", &[cidr("203.0.113.0/30")])
            .priority(5)
            .def(),
    );
    a.set_pool(
        P::new("d-five", &[cidr("203.0.113.16/30")])
            .priority(5)
            .def(),
    );
    let pools: Vec<String> = (0..7)
        .map(|i| {
            a.ensure(&S::new("ns", &format!("s{i}")).req()).addresses[0]
                .pool
                .clone()
        })
        .collect();
    assert_eq!(
        pools,
        ["c-five", "c-five", "d-five", "d-five", "b-ten", "b-ten", "b-ten"]
    );
    // Without priorities: name order, as before.
    let mut a = Allocator::new();
    a.set_pool(P::new("z", &[cidr("192.0.2.0/28")]).def());
    a.set_pool(P::new("m", &[cidr("198.51.100.0/28")]).def());
    assert_eq!(a.ensure(&S::new("ns", "x").req()).addresses[0].pool, "m");
}

#[test]
fn namespaces_and_namespace_labels_restrict_a_pool() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("team", &[cidr("198.51.100.0/28")])
            .priority(1)
            .namespaces(&["alpha"])
            .ns_labels(&[("tier", "gold")])
            .def(),
    );
    a.set_pool(P::new("rest", &[cidr("203.0.113.0/28")]).def());
    a.set_namespace("beta", labels(&[("tier", "gold")]));
    let pool_of = |a: &mut Allocator, ns: &str, n: &str| {
        a.ensure(&S::new(ns, n).req()).addresses[0].pool.clone()
    };
    assert_eq!(pool_of(&mut a, "alpha", "x"), "team", "listed namespace");
    assert_eq!(
        pool_of(&mut a, "beta", "x"),
        "team",
        "namespace matching the selector"
    );
    assert_eq!(pool_of(&mut a, "gamma", "x"), "rest", "neither");
    // The name label is always there, like on a real API server.
    a.set_pool(
        P::new("byname", &[cidr("192.0.2.0/28")])
            .priority(0)
            .ns_labels(&[("kubernetes.io/metadata.name", "gamma")])
            .def(),
    );
    assert_eq!(pool_of(&mut a, "gamma", "y"), "byname");
    // Relabelling a namespace: existing Services keep their addresses (reported), new ones
    // follow the new labels.
    let before = ips(&a.outcome(&key("beta", "x")).unwrap());
    a.take_changed();
    let changed = a.set_namespace("beta", labels(&[("tier", "silver")]));
    assert_eq!(changed, [key("beta", "x")]);
    let o = a.outcome(&key("beta", "x")).unwrap();
    assert_eq!(ips(&o), before);
    assert!(
        o.not_covered[0].why.contains("spec.namespaceSelector"),
        "{o:?}"
    );
    assert_eq!(pool_of(&mut a, "beta", "y"), "rest");
    // Requested addresses obey the namespace rule too.
    let o = a.ensure(&S::new("gamma", "z").request(&["198.51.100.9"]).req());
    assert_eq!(o.reason, Reason::PoolSelectorMismatch, "{o:?}");
    // An invalid namespace selector: the pool selects nothing and says so.
    let mut bad = P::new("bad", &[cidr("192.0.2.64/28")]).priority(0).def();
    bad.namespace_selector = selector::Selector::compile(&LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Sometimes".into(),
            values: None,
        }]),
        ..Default::default()
    })
    .map(Some);
    a.set_pool(bad);
    let st = a.pool_status("bad").unwrap();
    assert!(!st.allocates());
    let conds = st.conditions();
    let inv = conds
        .iter()
        .find(|c| c.0 == COND_INVALID_SELECTOR)
        .expect("InvalidSelector");
    assert!(
        inv.3
            .contains("spec.namespaceSelector.matchExpressions[0].operator"),
        "{inv:?}"
    );
    assert_ne!(pool_of(&mut a, "alpha", "w"), "bad");
}

#[test]
fn auto_assign_false_serves_only_services_that_ask_for_it() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("manual", &[cidr("198.51.100.0/28")])
            .priority(0)
            .manual()
            .def(),
    );
    a.set_pool(P::new("auto", &[cidr("203.0.113.0/28")]).def());
    assert_eq!(
        a.ensure(&S::new("ns", "plain").req()).addresses[0].pool,
        "auto"
    );
    assert_eq!(
        a.ensure(&S::new("ns", "named").pools(&["manual"]).req())
            .addresses[0]
            .pool,
        "manual"
    );
    let o = a.ensure(&S::new("ns", "asks").request(&["198.51.100.9"]).req());
    assert_eq!(o.addresses[0].pool, "manual");
    // With only the manual pool, a plain Service gets nothing.
    a.remove_pool("auto");
    let o = a.ensure(&S::new("ns", "plain2").req());
    assert_eq!(o.reason, Reason::NoPool);
    assert!(o.message.contains("autoAssign"), "{o:?}");
}

#[test]
fn pools_by_name_limit_the_choice_and_never_move_a_held_address() {
    let mut a = Allocator::new();
    a.set_pool(P::new("a", &[cidr("192.0.2.0/28")]).def());
    a.set_pool(P::new("b", &[cidr("198.51.100.0/28")]).def());
    a.set_pool(
        P::new("c", &[cidr("203.0.113.0/28")])
            .labels(&[("team", "c")])
            .def(),
    );
    assert_eq!(
        a.ensure(&S::new("ns", "x").pools(&["b"]).req()).addresses[0].pool,
        "b"
    );
    // A named pool that does not select the Service is not used.
    let o = a.ensure(&S::new("ns", "y").pools(&["c", "nope"]).req());
    assert_eq!(o.reason, Reason::NoPool);
    assert!(o.message.contains("no pool named nope"), "{o:?}");
    // A requested address outside the named pools is refused.
    let o = a.ensure(
        &S::new("ns", "z")
            .pools(&["b"])
            .request(&["192.0.2.5"])
            .req(),
    );
    assert_eq!(o.reason, Reason::PoolSelectorMismatch, "{o:?}");
    // The Service naming other pools keeps its address (reported) until it asks to move.
    let o = a.ensure(&S::new("ns", "x").pools(&["a"]).req());
    assert_eq!(o.addresses[0].pool, "b");
    assert!(o.not_covered[0].why.contains("ferrolb.io/pools"), "{o:?}");
    let o = a.ensure(&S::new("ns", "x").pools(&["a"]).reallocate().req());
    assert_eq!(o.addresses[0].pool, "a");
    assert!(o.not_covered.is_empty());
}

#[test]
fn address_moves_to_another_selecting_pool_instead_of_churning() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("small", &[cidr("198.51.100.0/28")])
            .created(100)
            .def(),
    );
    a.ensure(&S::new("ns", "a").req());
    // A bigger pool is added (conflicting, newer), then the small one removed: the address moves.
    a.set_pool(P::new("big", &[cidr("198.51.100.0/24")]).created(200).def());
    a.remove_pool("small");
    let o = a.outcome(&key("ns", "a")).unwrap();
    assert_eq!(ips(&o), ["198.51.100.1"]);
    assert_eq!(o.addresses[0].pool, "big");
    assert_eq!(a.pool_status("big").unwrap().used, 1);
}

#[test]
fn restart_adoption_reproduces_allocations() {
    let pools = || {
        vec![
            P::new("p", &[cidr("198.51.100.0/24")]).def(),
            P::new("q", &[cidr("2001:db8:100::/112")]).def(),
        ]
    };
    let mut a = Allocator::new();
    for p in pools() {
        a.set_pool(p);
    }
    let reqs: Vec<ServiceReq> = (0..20)
        .map(|i| {
            let s = S::new("ns", &format!("s{i}"));
            if i % 3 == 0 {
                s.dual(FamilyPolicy::RequireDualStack)
            } else {
                s
            }
            .req()
        })
        .collect();
    for r in &reqs {
        a.ensure(r);
    }
    a.release(&key("ns", "s4")); // a hole below later allocations
    let before: Vec<(ServiceKey, Vec<IpAddr>)> = a
        .services()
        .map(|k| (k.clone(), a.outcome(k).unwrap().ips()))
        .collect();
    // Restart: new allocator, pools, adopt in reverse order, then ensure everything.
    let mut b = Allocator::new();
    for p in pools() {
        b.set_pool(p);
    }
    for (k, ips) in before.iter().rev() {
        let r = reqs.iter().find(|r| &r.key == k).unwrap();
        let rep = b.adopt(r, ips);
        assert!(rep.dropped.is_empty());
    }
    // A new Service must not take an adopted address, even though it is ensured first.
    let newcomer = b.ensure(&S::new("ns", "new").req());
    assert_eq!(ips(&newcomer), ["198.51.100.5"], "the hole left by s4");
    for (k, ips) in &before {
        let r = reqs.iter().find(|r| &r.key == k).unwrap();
        assert_eq!(&b.ensure(r).ips(), ips, "{k}");
    }
}

#[test]
fn restart_reports_no_changes_for_unchanged_services() {
    // After a restart, re-adopted Services whose outcome is unchanged must not be reported as
    // changed: the controller would otherwise rewrite every Service's status.
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    let reqs: Vec<ServiceReq> = (0..5)
        .map(|i| S::new("ns", &format!("s{i}")).req())
        .collect();
    let held: Vec<Vec<IpAddr>> = reqs.iter().map(|r| a.ensure(r).ips()).collect();
    let mut b = Allocator::new();
    b.set_pool(P::new("p", &[cidr("198.51.100.0/24")]).def());
    for (r, ips) in reqs.iter().zip(&held) {
        b.adopt(r, ips);
    }
    for r in &reqs {
        b.ensure(r);
    }
    assert_eq!(b.take_changed(), Vec::<ServiceKey>::new());
    // Adopting again for an already managed Service keeps its outcome.
    let before = b.outcome(&reqs[0].key).map(Outcome::from);
    b.adopt(&reqs[0], &held[0]);
    assert_eq!(b.outcome(&reqs[0].key).map(Outcome::from), before);
    assert_eq!(b.take_changed(), Vec::<ServiceKey>::new());
}

#[test]
fn adoption_keeps_uncovered_addresses_and_drops_only_incompatible_ones() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new("app", &[cidr("198.51.100.0/24")])
            .labels(&[("lb-pool", "app")])
            .def(),
    );
    // Addresses no pool covers are adopted too (never moved after a restart) and reported.
    let r = S::new("ns", "a").req();
    let rep = a.adopt(&r, &[ip("198.51.100.7"), ip("203.0.113.7")]);
    assert_eq!(rep.kept.len(), 2, "{rep:?}");
    assert!(rep.dropped.is_empty());
    let o = a.ensure(&r);
    assert_eq!(ips(&o), ["198.51.100.7"], "one IPv4 address wanted");
    assert!(
        o.not_covered[0].why.contains("spec.serviceSelector"),
        "{o:?}"
    );
    a.release(&r.key);
    // Two incompatible Services claiming one address: the first adopter keeps it.
    let x = S::new("ns", "x").label("lb-pool", "app").req();
    let y = S::new("ns", "y").label("lb-pool", "app").req();
    assert_eq!(a.adopt(&x, &[ip("198.51.100.7")]).kept.len(), 1);
    assert_eq!(a.adopt(&y, &[ip("198.51.100.7")]).dropped.len(), 1);
    assert_eq!(ips(&a.ensure(&x)), ["198.51.100.7"]);
    assert_eq!(ips(&a.ensure(&y)), ["198.51.100.1"]);
}

#[test]
fn pool_status_saturates_for_huge_ranges() {
    let mut a = Allocator::new();
    a.set_pool(
        P::new(
            "v6",
            &[cidr("2001:db8:200::/64"), cidr("2001:db8:300::/40")],
        )
        .def(),
    );
    let st = a.pool_status("v6").unwrap();
    assert_eq!(st.total, (1u128 << 64) - 2 + (1u128 << 88) - 2);
    let status = st.to_status(None, Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    assert_eq!(status.ips_total, i64::MAX);
    assert_eq!(status.ips_available, i64::MAX);
    assert_eq!(status.ips_used, 0);
    assert!(a.ensure(&S::new("ns", "a").v6().req()).is_satisfied());
    assert_eq!(a.pool_status("v6").unwrap().used, 1);
}

#[test]
fn status_conditions_keep_transition_time_when_unchanged() {
    let mut a = Allocator::new();
    a.set_pool(P::new("p", &[range("198.51.100.1", "198.51.100.1")]).def());
    let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
    let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
    let s0 = a.pool_status("p").unwrap().to_status(None, t0.clone());
    a.ensure(&S::new("ns", "a").req());
    let s1 = a.pool_status("p").unwrap().to_status(Some(&s0), t1.clone());
    let get = |s: &crate::api::LoadBalancerIPPoolStatus, ty: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .cloned()
            .unwrap()
    };
    assert_eq!(get(&s1, COND_CONFLICT).last_transition_time, t0);
    let ex = get(&s1, COND_EXHAUSTED);
    assert_eq!((ex.status.as_str(), ex.last_transition_time), ("True", t1));
    assert_eq!((s1.ips_total, s1.ips_used, s1.ips_available), (1, 1, 0));
}

#[test]
fn identical_inputs_give_identical_outcomes() {
    let run = || {
        let mut a = Allocator::new();
        a.set_pool(P::new("b", &[cidr("198.51.100.0/26")]).def());
        a.set_pool(P::new("a", &[cidr("198.51.100.64/26")]).def());
        for i in 0..50 {
            a.ensure(&S::new("ns", &format!("s{i}")).req());
            if i % 7 == 0 {
                a.release(&key("ns", &format!("s{}", i / 2)));
            }
        }
        a.services()
            .map(|k| (k.clone(), a.outcome(k).unwrap().clone()))
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    // Name order: pool "a" serves first.
    assert_eq!(first[0].1.addresses[0].pool, "a");
}

// ----- property: random operation sequences ---------------------------------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Pool {
            id: usize,
            blocks: Vec<usize>,
            team: Option<&'static str>,
            disabled: bool,
            created: i64,
            /// `(priority, namespaces, namespace selector tier, autoAssign)`.
            scope: (
                Option<i32>,
                Option<&'static str>,
                Option<&'static str>,
                bool,
            ),
        },
        /// Relabels namespace x or y with `tier`.
        Ns(&'static str, Option<&'static str>),
        RemovePool(usize),
        Svc {
            id: usize,
            ns: &'static str,
            team: Option<&'static str>,
            share: Option<(&'static str, bool)>,
            ports: Vec<(i32, &'static str)>,
            request: Option<usize>,
            family: usize,
            local: Option<&'static str>,
            named: Option<usize>,
        },
        Release(usize),
    }

    /// Overlapping blocks so that pools conflict and share ranges.
    const BLOCKS: &[(&str, Option<&str>)] = &[
        ("198.51.100.0/29", None),
        ("198.51.100.4/30", None),
        ("198.51.100.8/31", None),
        ("198.51.100.6", Some("198.51.100.12")),
        ("198.51.100.20", None),
        ("2001:db8:100::/126", None),
        ("2001:db8:100::2", Some("2001:db8:100::5")),
    ];
    const REQUESTS: &[&str] = &[
        "198.51.100.1",
        "198.51.100.5",
        "198.51.100.20",
        "198.51.100.200",
        "2001:db8:100::3",
    ];

    fn op() -> impl Strategy<Value = Op> {
        let pool = (
            0..4usize,
            proptest::collection::vec(0..BLOCKS.len(), 1..3),
            proptest::option::of(prop_oneof![Just("a"), Just("b")]),
            proptest::bool::weighted(0.15),
            0..5i64,
            (
                proptest::option::of(0..3i32),
                proptest::option::weighted(0.3, prop_oneof![Just("x"), Just("y")]),
                proptest::option::weighted(0.3, prop_oneof![Just("gold"), Just("silver")]),
                proptest::bool::weighted(0.8),
            ),
        )
            .prop_map(|(id, blocks, team, disabled, created, scope)| Op::Pool {
                id,
                blocks,
                team,
                disabled,
                created,
                scope,
            });
        let svc = (
            0..10usize,
            prop_oneof![Just("x"), Just("y")],
            proptest::option::of(prop_oneof![Just("a"), Just("b")]),
            proptest::option::of((prop_oneof![Just("k1"), Just("k2")], any::<bool>())),
            proptest::sample::subsequence(vec![(53, "TCP"), (53, "UDP"), (80, "TCP")], 0..3),
            proptest::option::weighted(0.25, 0..REQUESTS.len()),
            0..5usize,
            proptest::option::weighted(0.2, prop_oneof![Just("web"), Just("")]),
            proptest::option::weighted(0.2, 0..5usize),
        )
            .prop_map(
                |(id, ns, team, share, ports, request, family, local, named)| Op::Svc {
                    id,
                    ns,
                    team,
                    share,
                    ports,
                    request,
                    family,
                    local,
                    named,
                },
            );
        let relabel = (
            prop_oneof![Just("x"), Just("y")],
            proptest::option::of(prop_oneof![Just("gold"), Just("silver")]),
        )
            .prop_map(|(ns, tier)| Op::Ns(ns, tier));
        prop_oneof![
            1 => relabel,
            3 => pool,
            1 => (0..4usize).prop_map(Op::RemovePool),
            6 => svc,
            2 => (0..10usize).prop_map(Op::Release),
        ]
    }

    fn pool_def(
        id: usize,
        blocks: &[usize],
        team: Option<&str>,
        disabled: bool,
        created: i64,
        scope: (Option<i32>, Option<&str>, Option<&str>, bool),
    ) -> PoolDef {
        let raw: Vec<IpBlock> = blocks
            .iter()
            .map(|&i| match BLOCKS[i] {
                (c, None) if c.contains('/') => cidr(c),
                (a, None) => IpBlock {
                    start: Some(a.into()),
                    ..Default::default()
                },
                (a, Some(z)) => range(a, z),
            })
            .collect();
        let mut p = P::new(&format!("pool{id}"), &raw).created(1000 + created);
        if let Some(t) = team {
            p = p.labels(&[("team", t)]);
        }
        if disabled {
            p = p.disabled();
        }
        let (priority, ns, tier, auto) = scope;
        if let Some(pr) = priority {
            p = p.priority(pr);
        }
        if let Some(ns) = ns {
            p = p.namespaces(&[ns]);
        }
        if let Some(t) = tier {
            p = p.ns_labels(&[("tier", t)]);
        }
        if !auto {
            p = p.manual();
        }
        p.def()
    }

    fn svc_req(op: &Op) -> ServiceReq {
        let Op::Svc {
            id,
            ns,
            team,
            share,
            ports,
            request,
            family,
            local,
            named,
        } = op.clone()
        else {
            unreachable!()
        };
        let mut s = S::new(ns, &format!("s{id}"));
        if let Some(t) = team {
            s = s.label("team", t);
        }
        if let Some((k, cross)) = share {
            s = s.share(k);
            if cross {
                s = s.cross(CrossNamespace::Any);
            }
        }
        for (p, proto) in ports {
            s = s.port(p, proto);
        }
        if let Some(r) = request {
            s = s.request(&[REQUESTS[r]]);
        }
        s = match family {
            0 | 1 => s,
            2 => s.v6(),
            3 => s.dual(FamilyPolicy::PreferDualStack),
            _ => s.dual(FamilyPolicy::RequireDualStack),
        };
        if let Some(l) = local {
            s = s.local(if l.is_empty() { &[] } else { &[("app", "web")] });
        }
        if let Some(n) = named {
            s = s.pools(&[&format!("pool{n}")]);
        }
        s.req()
    }

    /// Whether pool `def` may give a *new* address to `r` (the property of the issue): it
    /// selects the Service, allows its namespace (with the namespace's current labels), and the
    /// Service names it, or names none and the pool auto-assigns (or the address is requested).
    fn may_give(def: &PoolDef, r: &ServiceReq, ns: &NsLabels, requested: bool) -> bool {
        def.selector.as_ref().unwrap().matches(&r.labels)
            && def.allows_namespace(&r.key.namespace, |k| ns_label(ns, &r.key.namespace, k))
            && if r.pools.is_empty() {
                requested || def.auto_assign
            } else {
                r.pools.contains(&def.name)
            }
    }

    fn check(
        a: &Allocator,
        pools: &BTreeMap<usize, PoolDef>,
        reqs: &BTreeMap<ServiceKey, ServiceReq>,
        ns: &NsLabels,
        before: &BTreeMap<ServiceKey, Vec<IpAddr>>,
    ) {
        let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceReq>> = BTreeMap::new();
        let mut per_pool: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut not_covered: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (k, r) in reqs {
            let o = a.outcome(k).expect("every ensured Service has an outcome");
            if !o.is_satisfied() {
                assert!(o.addresses.is_empty(), "{k}: unsatisfied but holds {o:?}");
            }
            let held_before = before.get(k).cloned().unwrap_or_default();
            for asg in &o.addresses {
                by_ip.entry(asg.ip).or_default().push(r);
                if let Some(nc) = o.not_covered.iter().find(|n| n.ip == asg.ip) {
                    // Kept after a pool edit: only ever an address the Service already held.
                    assert!(
                        held_before.contains(&asg.ip),
                        "{k}: {} given although no pool covers it ({})",
                        asg.ip,
                        nc.why
                    );
                    assert!(!r.reallocate);
                    assert!(a.holders(asg.ip).contains(k));
                    not_covered
                        .entry(asg.pool.clone())
                        .or_default()
                        .insert(asg.ip);
                    let inside = pools.values().any(|p| {
                        p.name == asg.pool && p.usable_block(Addr::from_ip(asg.ip)).is_some()
                    });
                    if inside {
                        per_pool.entry(asg.pool.clone()).or_default().insert(asg.ip);
                    }
                    continue;
                }
                per_pool.entry(asg.pool.clone()).or_default().insert(asg.ip);
                if !held_before.contains(&asg.ip) {
                    // THE property: a new address only from a pool that may give it.
                    let def = pools
                        .values()
                        .find(|p| p.name == asg.pool)
                        .unwrap_or_else(|| panic!("{k}: new {} from a missing pool", asg.ip));
                    assert!(
                        may_give(def, r, ns, r.requested.contains(&asg.ip)),
                        "{k}: new {} from pool {} that does not allow it",
                        asg.ip,
                        def.name
                    );
                }
                // Not reported: some pool contains it and selects the Service.
                assert!(
                    pools
                        .values()
                        .any(|p| p.usable_block(Addr::from_ip(asg.ip)).is_some()
                            && p.selector.as_ref().unwrap().matches(&r.labels)
                            && p.allows_namespace(&r.key.namespace, |x| ns_label(
                                ns,
                                &r.key.namespace,
                                x
                            ))),
                    "{k}: {} held, not reported, but no pool covers it",
                    asg.ip
                );
                assert!(a.holders(asg.ip).contains(k));
            }
        }
        for (ip, rs) in &by_ip {
            for (i, x) in rs.iter().enumerate() {
                for y in &rs[i + 1..] {
                    assert!(
                        x.can_share_with(y).is_ok() && y.can_share_with(x).is_ok(),
                        "{ip} held by incompatible {} and {}",
                        x.key,
                        y.key
                    );
                }
            }
            assert_eq!(a.holders(*ip).len(), rs.len());
        }
        for p in pools.values() {
            let used = per_pool.get(&p.name).map_or(0, |s| s.len() as u128);
            let st = a.pool_status(&p.name).unwrap();
            assert_eq!(st.used, used, "pool {}", p.name);
            let nc = not_covered.get(&p.name).map_or(0, |s| s.len() as u128);
            assert_eq!(st.not_covered, nc, "pool {} not covered", p.name);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

        #[test]
        fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
            let mut a = Allocator::new();
            let mut pools: BTreeMap<usize, PoolDef> = BTreeMap::new();
            let mut reqs: BTreeMap<ServiceKey, ServiceReq> = BTreeMap::new();
            let mut ns: NsLabels = BTreeMap::new();
            for op in &ops {
                let before: BTreeMap<ServiceKey, Vec<IpAddr>> = reqs
                    .keys()
                    .map(|k| (k.clone(), a.outcome(k).map(|o| o.ips()).unwrap_or_default()))
                    .collect();
                match op {
                    Op::Ns(name, tier) => {
                        let l = tier.map(|t| labels(&[("tier", t)])).unwrap_or_default();
                        ns.insert(name.to_string(), l.clone());
                        a.set_namespace(name, l);
                    }
                    Op::Pool { id, blocks, team, disabled, created, scope } => {
                        let d = pool_def(*id, blocks, *team, *disabled, *created, *scope);
                        pools.insert(*id, d.clone());
                        a.set_pool(d);
                    }
                    Op::RemovePool(id) => {
                        pools.remove(id);
                        a.remove_pool(&format!("pool{id}"));
                    }
                    Op::Svc { .. } => {
                        let r = svc_req(op);
                        // A Service lives in one namespace: re-creating it elsewhere is a release.
                        if let Some(old) = reqs.keys().find(|k| k.name == r.key.name && k.namespace != r.key.namespace).cloned() {
                            reqs.remove(&old);
                            a.release(&old);
                        }
                        a.ensure(&r);
                        reqs.insert(r.key.clone(), r);
                    }
                    Op::Release(id) => {
                        let gone: Vec<ServiceKey> = reqs.keys().filter(|k| *k.name == format!("s{id}")).cloned().collect();
                        for k in gone {
                            reqs.remove(&k);
                            a.release(&k);
                        }
                    }
                }
                check(&a, &pools, &reqs, &ns, &before);
            }
            // Simulated restart: same pools, adopt everything (reverse key order: the order of
            // adoption must not matter), then ensure everything.
            let mut b = Allocator::new();
            for (name, l) in &ns {
                b.set_namespace(name, l.clone());
            }
            for p in pools.values() {
                b.set_pool(p.clone());
            }
            for (k, r) in reqs.iter().rev() {
                let rep = b.adopt(r, &a.outcome(k).unwrap().ips());
                prop_assert!(rep.dropped.is_empty(), "{k}: adoption dropped {:?}", rep.dropped);
            }
            for (k, r) in &reqs {
                let o = b.ensure(r);
                prop_assert_eq!(o.ips(), a.outcome(k).unwrap().ips(), "{} after restart", k);
            }
            let held: BTreeMap<ServiceKey, Vec<IpAddr>> = reqs
                .keys()
                .map(|k| (k.clone(), a.outcome(k).map(|o| o.ips()).unwrap_or_default()))
                .collect();
            check(&b, &pools, &reqs, &ns, &held);
        }
    }
}
