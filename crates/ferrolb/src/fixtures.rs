//! Test fixtures shared by the product's unit tests and the lab's tests; compiled for
//! `cfg(test)` and with the `fixtures` feature only, never into the product.
//!
//! [`ServiceBuilder`] is the one way a test builds a `k8s_openapi` Service: start from
//! [`ServiceBuilder::default`] (nothing set), [`ServiceBuilder::named`] (metadata only) or
//! [`ServiceBuilder::load_balancer`] (the usual LoadBalancer Service), add what the test is
//! about, [`ServiceBuilder::build`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ANN_IPS, ANN_SHARING_KEY};

/// Builds a Service step by step.
#[derive(Debug, Clone, Default)]
pub struct ServiceBuilder(Service);

impl ServiceBuilder {
    /// `namespace/name`, nothing else (no spec, no status).
    pub fn named(namespace: &str, name: &str) -> Self {
        let mut s = Service::default();
        s.metadata.namespace = Some(namespace.into());
        s.metadata.name = Some(name.into());
        ServiceBuilder(s)
    }

    /// `namespace/name` of type LoadBalancer, selecting `app: name`, with one port 80/TCP named
    /// `p80`.
    pub fn load_balancer(namespace: &str, name: &str) -> Self {
        Self::named(namespace, name)
            .type_("LoadBalancer")
            .selector("app", name)
            .port("p80", 80, "TCP")
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn status(&mut self) -> &mut ServiceStatus {
        self.0.status.get_or_insert_with(Default::default)
    }

    fn ingress_list(&mut self) -> &mut Vec<LoadBalancerIngress> {
        self.status()
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
    }

    /// `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    /// `spec.loadBalancerClass`.
    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    /// One more `spec.selector` entry.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.spec()
            .selector
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// One more port; an empty `name` or `protocol` is left unset (the API server defaults the
    /// protocol to TCP).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: set(name),
                port,
                protocol: set(protocol),
                ..Default::default()
            });
        self
    }

    /// Replaces the ports with `(port, protocol)`s, each named `<protocol>-<port>` (`tcp-80`).
    pub fn ports(mut self, ports: &[(i32, &str)]) -> Self {
        self.spec().ports = None;
        ports.iter().fold(self, |b, (port, proto)| {
            b.port(&format!("{}-{port}", proto.to_lowercase()), *port, proto)
        })
    }

    /// `spec.ipFamilies` and `spec.ipFamilyPolicy`.
    pub fn families(mut self, families: &[&str], policy: &str) -> Self {
        self.spec().ip_families = Some(families.iter().map(|f| f.to_string()).collect());
        self.family_policy(policy)
    }

    /// `spec.ipFamilyPolicy` alone.
    pub fn family_policy(mut self, policy: &str) -> Self {
        self.spec().ip_family_policy = Some(policy.into());
        self
    }

    /// `spec.loadBalancerIP` (deprecated in Kubernetes, still read).
    pub fn load_balancer_ip(mut self, ip: &str) -> Self {
        self.spec().load_balancer_ip = Some(ip.into());
        self
    }

    /// `spec.externalIPs` (set even when empty).
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
        self
    }

    /// `spec.externalTrafficPolicy`.
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    /// One more annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// One more label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// The addresses asked for ([`ANN_IPS`]).
    pub fn ips(self, ips: &str) -> Self {
        self.annotation(ANN_IPS, ips)
    }

    /// The sharing key ([`ANN_SHARING_KEY`]).
    pub fn sharing(self, key: &str) -> Self {
        self.annotation(ANN_SHARING_KEY, key)
    }

    /// `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.into());
        self
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(mut self, rv: &str) -> Self {
        self.0.metadata.resource_version = Some(rv.into());
        self
    }

    /// `metadata.creationTimestamp`.
    pub fn created(mut self, at: jiff::Timestamp) -> Self {
        self.0.metadata.creation_timestamp = Some(Time(at));
        self
    }

    /// One more `status.loadBalancer.ingress` entry per address (the list exists even when
    /// `ips` is empty).
    pub fn ingress(self, ips: &[&str]) -> Self {
        self.ingress_with_mode(ips, None)
    }

    /// Same as [`ServiceBuilder::ingress`], each entry with `ipMode: VIP` (as the controller
    /// writes them).
    pub fn ingress_vip(self, ips: &[&str]) -> Self {
        self.ingress_with_mode(ips, Some("VIP"))
    }

    fn ingress_with_mode(mut self, ips: &[&str], mode: Option<&str>) -> Self {
        let list = self.ingress_list();
        list.extend(ips.iter().map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: mode.map(String::from),
            ..Default::default()
        }));
        self
    }

    /// One more `status.loadBalancer.ingress` entry with a hostname instead of an address.
    pub fn ingress_hostname(mut self, hostname: &str) -> Self {
        self.ingress_list().push(LoadBalancerIngress {
            hostname: Some(hostname.into()),
            ..Default::default()
        });
        self
    }

    /// One more `status.conditions` entry.
    pub fn condition(mut self, condition: Condition) -> Self {
        self.status()
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition);
        self
    }

    /// Replaces `status.conditions` (set even when `conditions` is empty).
    pub fn conditions(mut self, conditions: Vec<Condition>) -> Self {
        self.status().conditions = Some(conditions);
        self
    }

    pub fn build(self) -> Service {
        self.0
    }
}

/// A condition of `type_` with `status` and `reason`, message `message`, last changed at
/// `at` (no observed generation).
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    at: jiff::Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_load_balancer_service() {
        let s = ServiceBuilder::load_balancer("demo", "web").build();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                         "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}
            })
        );
    }

    #[test]
    fn each_setter_fills_its_field() {
        let at = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let s = ServiceBuilder::named("demo", "web")
            .class("c")
            .ips("198.51.100.1")
            .sharing("k")
            .label("l", "v")
            .uid("u")
            .resource_version("7")
            .created(at)
            .ports(&[(53, "UDP"), (53, "TCP")])
            .port("", 54, "")
            .load_balancer_ip("198.51.100.1")
            .families(&["IPv6"], "SingleStack")
            .external_ips(&[])
            .external_traffic_policy("Local")
            .ingress(&["198.51.100.1"])
            .ingress_vip(&["198.51.100.2"])
            .ingress_hostname("lb.example")
            .condition(condition("T", "True", "R", "m", at))
            .build();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["metadata"]["annotations"][ANN_IPS], "198.51.100.1");
        assert_eq!(v["metadata"]["annotations"][ANN_SHARING_KEY], "k");
        assert_eq!(v["metadata"]["labels"]["l"], "v");
        assert_eq!(v["metadata"]["uid"], "u");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"]["loadBalancerClass"], "c");
        assert_eq!(
            v["spec"]["ports"],
            serde_json::json!([{"name": "udp-53", "port": 53, "protocol": "UDP"},
                               {"name": "tcp-53", "port": 53, "protocol": "TCP"},
                               {"port": 54}])
        );
        assert_eq!(v["spec"]["ipFamilies"], serde_json::json!(["IPv6"]));
        assert_eq!(v["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(v["spec"]["loadBalancerIP"], "198.51.100.1");
        assert_eq!(v["spec"]["externalIPs"], serde_json::json!([]));
        assert_eq!(v["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(
            v["status"]["loadBalancer"]["ingress"],
            serde_json::json!([{"ip": "198.51.100.1"}, {"ip": "198.51.100.2", "ipMode": "VIP"},
                               {"hostname": "lb.example"}])
        );
        assert_eq!(v["status"]["conditions"][0]["reason"], "R");
        assert!(ServiceBuilder::default().build().spec.is_none());
        let none = ServiceBuilder::default().conditions(vec![]).build();
        assert_eq!(none.status.unwrap().conditions, Some(vec![]));
    }
}
