//! What the controller keeps of each Service ([`CachedService`]): exactly what the state machine
//! reads, taken from the watch stream before anything is buffered, instead of whole
//! `k8s_openapi` Services (metadata with managedFields, the full spec, every label map).
//!
//! - identity and the write precondition: namespace/name, uid, resourceVersion, creation time
//!   (allocation order);
//! - whether the Service is ours (type and class under the controller's [`Options`]) and, only
//!   then, its allocation request ([`ServiceReq`], built by the allocator's one reader of
//!   Services, [`ServiceReq::from_service_with`], kept in the allocator's compact form
//!   [`StoredReq`]; shared with the active state and the allocator itself through an `Arc`, so
//!   one copy serves the cache, the state machine and the allocator);
//! - `status.loadBalancer.ingress` and `status.conditions` as found: a write keeps other
//!   writers' entries and conditions, so those are kept whole, as one compact JSON string
//!   decoded only when a write is computed; the ingress addresses and whether our condition is
//!   there, which every event reads, are kept decoded beside it.
//!
//! A Service that is not ours costs its key, uid, resourceVersion and status; its spec,
//! labels and annotations are dropped at once.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::state::Options;
use super::status::{carries_our_condition, StatusView};
use crate::ipam::{is_ours, ServiceKey, ServiceReq, StoredReq};
use crate::k8s::service::ips_of;

/// The controller's copy of one Service. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedService {
    pub key: ServiceKey,
    pub uid: Option<Box<str>>,
    pub resource_version: Option<Box<str>>,
    pub created: Option<jiff::Timestamp>,
    /// The allocation request when the Service is ours; `None` when it is not.
    pub req: Option<Arc<StoredReq>>,
    /// The addresses in `status.loadBalancer.ingress`, in order (what adoption and clearing
    /// read on every event).
    ips: Box<[IpAddr]>,
    /// Whether `status.conditions` holds our `ferrolb.io/IPAMRequestSatisfied` condition.
    our_condition: bool,
    /// `status.loadBalancer.ingress` and `status.conditions` whole, as compact JSON (`None`
    /// when both are empty), decoded only when a write is computed: one allocation instead of
    /// a dozen strings per Service.
    status: Option<Box<str>>,
}

/// What [`CachedService::status`] keeps of a Service's status, and how it is stored.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct KeptStatus {
    #[serde(default, rename = "i", skip_serializing_if = "Vec::is_empty")]
    ingress: Vec<LoadBalancerIngress>,
    #[serde(default, rename = "c", skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
}

impl CachedService {
    /// What the controller keeps of `svc` under `opts` (the whole object is dropped here).
    pub fn new(svc: Service, opts: &Options) -> Self {
        let class = opts.class();
        let req = is_ours(&svc, &class).then(|| {
            Arc::new(StoredReq::from_req(&ServiceReq::from_service_with(
                &svc, &class,
            )))
        });
        // One key shared by the request, the cache and the maps that index them.
        let key = req
            .as_ref()
            .map_or_else(|| ServiceKey::of(&svc), |r| r.key.clone());
        let Service {
            metadata, status, ..
        } = svc;
        let (ingress, conditions) = match status {
            Some(st) => (
                st.load_balancer
                    .and_then(|lb| lb.ingress)
                    .unwrap_or_default(),
                st.conditions.unwrap_or_default(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let kept = KeptStatus {
            ingress,
            conditions,
        };
        let status = if kept.ingress.is_empty() && kept.conditions.is_empty() {
            None
        } else {
            // Serializing decoded API types into a string cannot fail.
            serde_json::to_string(&kept)
                .ok()
                .map(String::into_boxed_str)
        };
        CachedService {
            key,
            uid: metadata.uid.map(String::into_boxed_str),
            resource_version: metadata.resource_version.map(String::into_boxed_str),
            created: metadata.creation_timestamp.map(|t| t.0),
            req,
            ips: ips_of(&kept.ingress).into_boxed_slice(),
            our_condition: carries_our_condition(&kept.conditions),
            status,
        }
    }

    /// Whether the controller serves this Service (type LoadBalancer, a class it serves).
    pub fn is_ours(&self) -> bool {
        self.req.is_some()
    }

    /// The addresses in its ingress, in order.
    pub fn ingress_ips(&self) -> Vec<IpAddr> {
        self.ips.to_vec()
    }

    /// Whether it carries our `ferrolb.io/IPAMRequestSatisfied` condition.
    pub fn has_our_condition(&self) -> bool {
        self.our_condition
    }

    /// `f` of what its status writes are computed from (the kept status, decoded for the call).
    pub fn with_status_view<R>(&self, f: impl FnOnce(StatusView<'_>) -> R) -> R {
        let kept = self
            .status
            .as_deref()
            .map_or_else(KeptStatus::default, |json| {
                // Written by `new` from the same types; a failure would be a bug, never input.
                serde_json::from_str(json).unwrap_or_else(|e| {
                    tracing::error!(service = %self.key, error = %e, "cached status unreadable");
                    KeptStatus::default()
                })
            });
        f(StatusView {
            resource_version: self.resource_version.as_deref(),
            ingress: &kept.ingress,
            conditions: &kept.conditions,
        })
    }

    /// Allocation order: oldest first, then by key.
    pub fn creation_order(&self) -> (Option<jiff::Timestamp>, ServiceKey) {
        (self.created, self.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{condition, ServiceBuilder};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn opts() -> Options {
        Options {
            default_class: true,
            serve_cilium_class: false,
            metallb_annotations: false,
        }
    }

    fn svc(type_: &str, class: Option<&str>) -> Service {
        let b = ServiceBuilder::named("demo", "web")
            .uid("u1")
            .resource_version("7")
            .created(jiff::Timestamp::from_second(1_700_000_000).expect("ts"))
            .label("app", "web")
            .ips("198.51.100.9")
            .annotation("unrelated.example.com/x", &"y".repeat(100))
            .type_(type_)
            .port("", 53, "UDP")
            .selector("app", "web")
            .ingress_vip(&["198.51.100.9"])
            .ingress_hostname("lb.example.com")
            .condition(condition(
                crate::api::COND_IPAM_SATISFIED,
                "True",
                "Satisfied",
                "allocated",
                jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut s = match class {
            Some(c) => b.class(c),
            None => b,
        }
        .build();
        s.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        s
    }

    #[test]
    fn ours_keeps_the_same_request_the_allocator_reads_from_the_whole_service() {
        let mut whole = svc("LoadBalancer", None);
        // Another writer's entry and condition, with every field set: kept exactly.
        let st = whole.status.get_or_insert_with(Default::default);
        st.load_balancer
            .get_or_insert_with(Default::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: Some("2001:db8::7".into()),
                ip_mode: Some("Proxy".into()),
                ports: Some(vec![k8s_openapi::api::core::v1::PortStatus {
                    port: 443,
                    protocol: "TCP".into(),
                    error: Some("example".into()),
                }]),
                ..Default::default()
            });
        st.conditions.get_or_insert_with(Vec::new).push(Condition {
            type_: "example.com/Other".into(),
            status: "False".into(),
            reason: "Elsewhere".into(),
            message: "another writer's".into(),
            observed_generation: Some(3),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_700_000_123).expect("ts"),
            ),
        });
        let want = ServiceReq::from_service_with(&whole, &opts().class());
        let c = CachedService::new(whole.clone(), &opts());
        assert!(c.is_ours());
        assert!(c.req.as_deref().is_some_and(|r| r.same_as(&want)));
        assert_eq!(c.key, ServiceKey::new("demo", "web"));
        assert_eq!(c.uid.as_deref(), Some("u1"));
        assert_eq!(c.resource_version.as_deref(), Some("7"));
        assert_eq!(
            c.created,
            whole.metadata.creation_timestamp.as_ref().map(|t| t.0)
        );
        // Status as found: the hostname entry and the condition are kept whole.
        assert!(c.has_our_condition());
        assert_eq!(c.ingress_ips(), crate::k8s::service::ingress_ips(&whole));
        let w = StatusView::of(&whole);
        c.with_status_view(|v| {
            assert_eq!(v.ingress.len(), 3);
            assert_eq!(v.conditions.len(), 2);
            assert_eq!(v.resource_version, w.resource_version);
            assert_eq!(v.ingress, w.ingress);
            assert_eq!(v.conditions, w.conditions);
        });
    }

    #[test]
    fn a_service_without_status_keeps_none() {
        let mut whole = svc("LoadBalancer", None);
        whole.status = None;
        let c = CachedService::new(whole, &opts());
        assert!(c.status.is_none());
        assert!(c.ingress_ips().is_empty() && !c.has_our_condition());
        c.with_status_view(|v| {
            assert!(v.ingress.is_empty() && v.conditions.is_empty());
            assert_eq!(v.resource_version, Some("7"));
        });
    }

    #[test]
    fn not_ours_keeps_no_request() {
        for (t, class) in [
            ("ClusterIP", None),
            ("LoadBalancer", Some("example.com/other")),
            ("LoadBalancer", Some(crate::api::CILIUM_LB_CLASS)),
        ] {
            let c = CachedService::new(svc(t, class), &opts());
            assert!(!c.is_ours(), "{t} {class:?}");
            assert!(c.req.is_none());
            // Its status is still known (a Service that left our class gets cleared).
            assert!(c.has_our_condition());
        }
        let cilium = Options {
            serve_cilium_class: true,
            ..opts()
        };
        assert!(CachedService::new(
            svc("LoadBalancer", Some(crate::api::CILIUM_LB_CLASS)),
            &cilium
        )
        .is_ours());
    }
}
