//! Service helpers: the addresses in its status and spec, and whether its class is one we serve.
//!
//! Addresses are parsed after trimming surrounding whitespace, everywhere (agent, controller,
//! `plan`, `status`): whoever reads an ingress entry sees the same address, so the controller
//! never ignores an entry the agent announces.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};

use crate::api::{CILIUM_LB_CLASS, LB_CLASS};

/// One address as written in a Service; surrounding whitespace is ignored.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// Addresses parsed from strings ([`parse_ip`]), in order; unparsable entries are skipped.
pub fn parse_ips<'a, C: FromIterator<IpAddr>>(v: impl IntoIterator<Item = &'a str>) -> C {
    v.into_iter().filter_map(parse_ip).collect()
}

/// A Service's `status.loadBalancer.ingress`.
pub fn service_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

/// The addresses of ingress entries, in order (unparsable and hostname entries skipped).
pub fn ips_of(ingress: &[LoadBalancerIngress]) -> Vec<IpAddr> {
    parse_ips(ingress.iter().filter_map(|i| i.ip.as_deref()))
}

/// The addresses in a Service's `status.loadBalancer.ingress[].ip`, in order.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    ips_of(service_ingress(svc))
}

/// The addresses in a Service's `spec.externalIPs`, in order.
pub fn external_ips(svc: &Service) -> Vec<IpAddr> {
    parse_ips(
        svc.spec
            .iter()
            .flat_map(|s| s.external_ips.iter().flatten())
            .map(String::as_str),
    )
}

/// Whether a `loadBalancerClass` is one we serve: unset when `default_class`, ours, or
/// Cilium's when `cilium_class`.
pub fn class_served(class: Option<&str>, default_class: bool, cilium_class: bool) -> bool {
    match class {
        None => default_class,
        Some(LB_CLASS) => true,
        Some(CILIUM_LB_CLASS) => cilium_class,
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;

    fn svc(ingress: &[&str], external: &[&str]) -> Service {
        ServiceBuilder::default()
            .external_ips(external)
            .ingress(ingress)
            .ingress_hostname("lb.example")
            .build()
    }

    #[test]
    fn addresses_are_trimmed_in_order_and_junk_is_skipped() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let s = svc(
            &[
                " 198.51.100.7 ",
                "2001:db8::1",
                "not-an-ip",
                "198.51.100.1\n",
            ],
            &["203.0.113.5 ", "", "2001:db8::5"],
        );
        assert_eq!(
            ingress_ips(&s),
            [ip("198.51.100.7"), ip("2001:db8::1"), ip("198.51.100.1")]
        );
        assert_eq!(external_ips(&s), [ip("203.0.113.5"), ip("2001:db8::5")]);
        assert!(ingress_ips(&Service::default()).is_empty());
        assert!(external_ips(&Service::default()).is_empty());
    }

    #[test]
    fn classes_served() {
        assert!(class_served(None, true, false));
        assert!(!class_served(None, false, false));
        assert!(class_served(Some(LB_CLASS), false, false));
        assert!(!class_served(Some(CILIUM_LB_CLASS), true, false));
        assert!(class_served(Some(CILIUM_LB_CLASS), true, true));
        assert!(!class_served(Some("example.com/other"), true, true));
    }
}
