//! What the agent keeps of each watched object: only the fields eligibility and the Events read.
//!
//! Every agent caches every Service, EndpointSlice and Node of the cluster. Whole objects cost
//! far more than the decision needs — `managedFields` alone is a tree of maps per writer, Nodes
//! carry image lists and capacities, EndpointSlices carry ports, zones and target references.
//! The watch streams pass each object through these functions before it reaches the cache
//! (`WatchStreamExt::modify`), so the cache holds a few hundred bytes per object.
//! `eligibility`'s tests check that trimmed inputs give the same decisions as whole ones.

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition, NodeSpec,
    NodeStatus, Service, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::eligibility::LABEL_SERVICE_NAME_SLICE;
use crate::api::L2AnnouncementPolicy;

/// Identity, labels and resourceVersion; everything else in `metadata` goes.
fn meta(m: &mut ObjectMeta) {
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        labels: m.labels.take(),
        ..Default::default()
    };
}

/// A Service: type, class, traffic policy, external IPs, ingress addresses.
pub fn service(s: &mut Service) {
    meta(&mut s.metadata);
    s.spec = s.spec.take().map(|sp| ServiceSpec {
        type_: sp.type_,
        load_balancer_class: sp.load_balancer_class,
        external_traffic_policy: sp.external_traffic_policy,
        external_ips: sp.external_ips,
        ..Default::default()
    });
    s.status = s.status.take().and_then(|st| {
        let ingress: Vec<LoadBalancerIngress> = st
            .load_balancer?
            .ingress?
            .into_iter()
            .map(|i| LoadBalancerIngress {
                ip: i.ip,
                ..Default::default()
            })
            .collect();
        Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..Default::default()
        })
    });
}

/// An EndpointSlice: its Service label and the ready endpoints, each by node name — or, lacking
/// one, by its addresses (eligibility matches those against node addresses and pod CIDRs).
/// Endpoints that are not ready are dropped: eligibility skips them. Eligibility only asks
/// which nodes have a ready endpoint, so pods on the same node collapse into one entry (a slice
/// of 100 pods on 3 nodes keeps 3), and the list gives back the capacity it no longer uses.
pub fn endpoint_slice(e: &mut EndpointSlice) {
    meta(&mut e.metadata);
    e.metadata.labels = e.metadata.labels.take().map(|mut l| {
        l.retain(|k, _| k == LABEL_SERVICE_NAME_SLICE);
        l
    });
    e.ports = None;
    e.endpoints = e.endpoints.take().map(|eps| {
        let mut eps = eps
            .into_iter()
            .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .map(|ep| {
                let node_name = ep.node_name.filter(|n| !n.is_empty());
                Endpoint {
                    addresses: if node_name.is_some() {
                        Vec::new()
                    } else {
                        ep.addresses
                    },
                    node_name,
                    ..Default::default()
                }
            })
            .collect::<Vec<_>>();
        eps.sort_by(|a, b| (&a.node_name, &a.addresses).cmp(&(&b.node_name, &b.addresses)));
        eps.dedup_by(|a, b| a.node_name == b.node_name && a.addresses == b.addresses);
        // `collect` above reuses the original list's buffer: give the rest back.
        eps.shrink_to_fit();
        eps
    });
}

/// A Node: labels, pod CIDRs, addresses and its `Ready` condition (not images, capacity, info).
pub fn node(n: &mut Node) {
    meta(&mut n.metadata);
    n.spec = n.spec.take().map(|sp| NodeSpec {
        pod_cidr: sp.pod_cidr,
        pod_cidrs: sp.pod_cidrs,
        ..Default::default()
    });
    n.status = n.status.take().map(|st| NodeStatus {
        addresses: st.addresses.map(|v| {
            v.into_iter()
                .map(|a| NodeAddress {
                    address: a.address,
                    type_: a.type_,
                })
                .collect()
        }),
        conditions: st.conditions.map(|v| {
            v.into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// A policy is kept whole (its status is written back from it) except `managedFields`.
pub fn policy(p: &mut L2AnnouncementPolicy) {
    p.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Service as a real API server returns it after the controller's status patch.
    fn full_service() -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "echo", "namespace": "demo", "uid": "6b1f1c3e-0000-4000-8000-000000000001",
                "resourceVersion": "4242", "generation": 1,
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "labels": {"app": "echo", "lb-pool": "app"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"echo\"}}"},
                "managedFields": [
                    {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                     "time": "2026-11-22T10:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:selector": {}, "f:type": {}}}},
                    {"manager": "ferrolb-controller", "operation": "Update", "apiVersion": "v1",
                     "time": "2026-11-22T10:00:01Z", "fieldsType": "FieldsV1", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}}
                ]
            },
            "spec": {
                "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                "loadBalancerClass": "ferrolb.io/l2-announcer",
                "externalIPs": ["198.51.100.77"],
                "clusterIP": "203.0.113.10", "clusterIPs": ["203.0.113.10"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31000}],
                "selector": {"app": "echo"}, "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster", "healthCheckNodePort": 32000
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "198.51.100.10", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]}]},
                "conditions": [{"type": "ferrolb.io/IPAMRequestSatisfied", "status": "True", "reason": "Satisfied",
                                "message": "198.51.100.10 from pool app", "lastTransitionTime": "2026-11-22T10:00:01Z"}]
            }
        }))
        .expect("valid Service")
    }

    #[test]
    fn service_keeps_what_eligibility_and_events_read() {
        let full = full_service();
        let mut s = full.clone();
        service(&mut s);
        assert_eq!(s.metadata.name.as_deref(), Some("echo"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(s.metadata.uid, full.metadata.uid);
        assert_eq!(s.metadata.labels, full.metadata.labels);
        assert!(s.metadata.managed_fields.is_none());
        assert!(s.metadata.annotations.is_none());
        let spec = s.spec.as_ref().expect("spec kept");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some("ferrolb.io/l2-announcer")
        );
        assert_eq!(spec.external_ips, Some(vec!["198.51.100.77".to_string()]));
        assert!(spec.ports.is_none() && spec.selector.is_none() && spec.cluster_ip.is_none());
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .expect("ingress kept");
        assert_eq!(ingress.len(), 1);
        assert_eq!(ingress[0].ip.as_deref(), Some("198.51.100.10"));
        assert!(ingress[0].ports.is_none());
        let before = serde_json::to_vec(&full).expect("json").len();
        let after = serde_json::to_vec(&s).expect("json").len();
        assert!(
            after * 3 < before,
            "trimmed Service is {after} bytes of {before}"
        );
    }

    #[test]
    fn service_without_status_or_ingress_stays_without() {
        let mut s = full_service();
        s.status = Some(ServiceStatus::default());
        service(&mut s);
        assert!(s.status.is_none());
        let mut s = full_service();
        s.status = None;
        s.spec = None;
        service(&mut s);
        assert!(s.status.is_none() && s.spec.is_none());
    }

    #[test]
    fn endpoint_slice_keeps_ready_endpoints_by_node_or_address() {
        let full: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-abcde", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "echo", "endpointslice.kubernetes.io/managed-by": "x"},
                         "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                            "fieldsType": "FieldsV1", "fieldsV1": {"f:endpoints": {}}}]},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "nodeName": "n1"},
                {"addresses": ["192.0.2.12"], "conditions": {"ready": true}, "nodeName": "n2", "zone": "a",
                 "hostname": "pod-2", "targetRef": {"kind": "Pod", "name": "echo-2", "namespace": "demo", "uid": "u"}},
                {"addresses": ["10.244.3.7"], "conditions": {}}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .expect("valid EndpointSlice");
        let mut e = full.clone();
        endpoint_slice(&mut e);
        assert_eq!(
            e.metadata.labels,
            Some([(LABEL_SERVICE_NAME_SLICE.to_string(), "echo".to_string())].into())
        );
        assert!(e.metadata.managed_fields.is_none() && e.ports.is_none());
        assert_eq!(e.address_type, "IPv4");
        let eps = e.endpoints.as_ref().expect("endpoints");
        assert_eq!(eps.len(), 2, "the endpoint that is not ready is dropped");
        // Sorted by node name, endpoints without one first.
        assert_eq!(eps[0].node_name, None);
        assert_eq!(eps[0].addresses, vec!["10.244.3.7".to_string()]);
        assert_eq!(eps[1].node_name.as_deref(), Some("n2"));
        assert!(
            eps[1].addresses.is_empty() && eps[1].zone.is_none() && eps[1].target_ref.is_none()
        );
    }

    #[test]
    fn endpoints_on_one_node_collapse_into_one() {
        // 60 ready pods over three nodes, 6 of them not ready, 4 without a node name (two with
        // the same address).
        let mut eps: Vec<serde_json::Value> = (0..60)
            .map(|i| {
                serde_json::json!({"addresses": [format!("10.244.{}.{}", i % 3, i)],
                    "conditions": {"ready": i % 10 != 0}, "nodeName": format!("n{}", i % 3)})
            })
            .collect();
        for a in ["10.244.9.1", "10.244.9.1", "10.244.9.2", "10.244.9.3"] {
            eps.push(serde_json::json!({"addresses": [a]}));
        }
        let mut e: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "demo",
                         "labels": {LABEL_SERVICE_NAME_SLICE: "web"}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .expect("valid EndpointSlice");
        endpoint_slice(&mut e);
        let eps = e.endpoints.expect("endpoints");
        let nodes: Vec<Option<&str>> = eps.iter().map(|ep| ep.node_name.as_deref()).collect();
        assert_eq!(
            nodes,
            [None, None, None, Some("n0"), Some("n1"), Some("n2")],
            "{eps:?}"
        );
        let addrs: Vec<&str> = eps[..3].iter().map(|ep| ep.addresses[0].as_str()).collect();
        assert_eq!(addrs, ["10.244.9.1", "10.244.9.2", "10.244.9.3"]);
        assert!(eps.capacity() < 10, "capacity {} kept", eps.capacity());
    }

    #[test]
    fn node_keeps_labels_cidrs_addresses_and_ready() {
        let full: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "x"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.11"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
                ],
                "images": [{"names": ["registry.example/big@sha256:00"], "sizeBytes": 1}],
                "capacity": {"cpu": "2"}
            }
        }))
        .expect("valid Node");
        let mut n = full.clone();
        node(&mut n);
        assert_eq!(n.metadata.labels, full.metadata.labels);
        assert!(n.metadata.annotations.is_none());
        let spec = n.spec.as_ref().expect("spec");
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert!(spec.provider_id.is_none());
        let st = n.status.as_ref().expect("status");
        assert_eq!(
            st.addresses,
            full.status.as_ref().and_then(|s| s.addresses.clone())
        );
        let conds = st.conditions.as_ref().expect("conditions");
        assert_eq!(conds.len(), 1);
        assert_eq!(
            (conds[0].type_.as_str(), conds[0].status.as_str()),
            ("Ready", "True")
        );
        assert!(st.images.is_none() && st.capacity.is_none());
    }
}
