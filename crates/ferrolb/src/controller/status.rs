//! Pure helpers that turn "what the Service / pool should show" into a minimal merge patch
//! carrying the resourceVersion precondition, or nothing when the object already shows it.
//!
//! Conditions follow `metav1.Condition`: `lastTransitionTime` changes only when `status`
//! flips; conditions of other writers are kept in place.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{json, Value};

use crate::api::{COND_IPAM_SATISFIED, COND_NOT_COVERED};
use crate::k8s::conditions::{merge_conditions, CondWant};
use crate::k8s::service::{ips_of, parse_ip, service_ingress};

/// Current time as a `metav1.Time` (whole seconds, like the real server writes).
pub fn now_time() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// What a status write is computed from: the resourceVersion (the precondition), the ingress
/// entries and the conditions. Borrowed from a whole Service or from the controller's cache.
#[derive(Clone, Copy, Debug)]
pub struct StatusView<'a> {
    pub resource_version: Option<&'a str>,
    pub ingress: &'a [LoadBalancerIngress],
    pub conditions: &'a [Condition],
}

impl<'a> StatusView<'a> {
    /// The view of a whole Service.
    pub fn of(svc: &'a Service) -> Self {
        StatusView {
            resource_version: svc.metadata.resource_version.as_deref(),
            ingress: service_ingress(svc),
            conditions: service_conditions(svc),
        }
    }
}

/// The Service's conditions.
pub fn service_conditions(svc: &Service) -> &[Condition] {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
}

/// Whether the Service carries our `ferrolb.io/IPAMRequestSatisfied` condition (= we managed it).
pub fn has_our_condition(svc: &Service) -> bool {
    carries_our_condition(service_conditions(svc))
}

/// Whether `conds` hold our `ferrolb.io/IPAMRequestSatisfied` condition.
pub fn carries_our_condition(conds: &[Condition]) -> bool {
    conds.iter().any(|c| c.type_ == COND_IPAM_SATISFIED)
}

/// What a Service's status should become.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per write
pub enum ServiceTarget {
    /// Ours: ingress is exactly `ips` (in order; those in `proxy` with `ipMode: Proxy`, the
    /// others `VIP`), our condition is `cond`, and `ferrolb.io/AddressNotCovered` is
    /// `not_covered` (`None` = absent).
    Managed {
        ips: Vec<IpAddr>,
        cond: CondWant,
        not_covered: Option<CondWant>,
        proxy: BTreeSet<IpAddr>,
    },
    /// No longer ours: remove these ingress addresses and our condition; keep the rest.
    Clear { ips: BTreeSet<IpAddr> },
}

/// A computed Service status change.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePatch {
    /// Merge patch for `/status`, with `metadata.resourceVersion` as precondition.
    pub patch: Value,
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// The condition as it will be, when it changed (None when unchanged or removed).
    pub new_cond: Option<CondWant>,
    /// `ferrolb.io/AddressNotCovered` as it will be, when it turns True (None otherwise).
    pub raised_not_covered: Option<CondWant>,
}

fn ip_mode(ip: &IpAddr, proxy: &BTreeSet<IpAddr>) -> &'static str {
    if proxy.contains(ip) {
        "Proxy"
    } else {
        "VIP"
    }
}

/// Whether `conds` holds `want` already (status, reason, message).
fn holds(conds: &[Condition], want: &CondWant) -> bool {
    conds.iter().any(|c| {
        c.type_ == want.type_
            && c.status == want.status_str()
            && c.reason == want.reason
            && c.message == want.message
    })
}

/// Computes the patch that brings `svc` to `target`, or `None` when it already shows it.
pub fn service_patch(svc: &Service, target: &ServiceTarget, now: &Time) -> Option<ServicePatch> {
    status_patch(StatusView::of(svc), target, now)
}

/// [`service_patch`] on a [`StatusView`].
pub fn status_patch(
    svc: StatusView<'_>,
    target: &ServiceTarget,
    now: &Time,
) -> Option<ServicePatch> {
    let current = ips_of(svc.ingress);
    let existing_ingress: Vec<Value> = svc
        .ingress
        .iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect();
    let conds = svc.conditions;
    let mut raised_not_covered = None;
    let (ingress, new_conds, cond_changed, want_ips, new_cond) = match target {
        ServiceTarget::Managed {
            ips,
            cond,
            not_covered,
            proxy,
        } => {
            let ingress: Vec<Value> = ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": ip_mode(ip, proxy)}))
                .collect();
            let wants: Vec<CondWant> = std::iter::once(cond.clone())
                .chain(not_covered.clone())
                .collect();
            let (nc, changed) =
                merge_conditions(conds, &wants, &[COND_IPAM_SATISFIED, COND_NOT_COVERED], now);
            if let Some(w) = not_covered {
                let was_true = conds
                    .iter()
                    .any(|c| c.type_ == COND_NOT_COVERED && c.status == "True");
                if w.status && !was_true {
                    raised_not_covered = Some(w.clone());
                }
            }
            (
                ingress,
                nc,
                changed,
                ips.clone(),
                (changed && !holds(conds, cond)).then(|| cond.clone()),
            )
        }
        ServiceTarget::Clear { ips } => {
            let ingress: Vec<Value> = existing_ingress
                .iter()
                .filter(|v| {
                    v.get("ip")
                        .and_then(|ip| ip.as_str())
                        .and_then(parse_ip)
                        .map(|ip| !ips.contains(&ip))
                        .unwrap_or(true)
                })
                .cloned()
                .collect();
            let (nc, changed) =
                merge_conditions(conds, &[], &[COND_IPAM_SATISFIED, COND_NOT_COVERED], now);
            let keep: Vec<IpAddr> = current
                .iter()
                .filter(|ip| !ips.contains(ip))
                .copied()
                .collect();
            (ingress, nc, changed, keep, None)
        }
    };
    let ingress_changed = match target {
        ServiceTarget::Managed { proxy, .. } => {
            current != want_ips
                || existing_ingress.len() != want_ips.len()
                // ipMode is written explicitly (KEP-1860) with every write; a different one is
                // fixed. A missing one means VIP to Kubernetes, and an API server with the
                // feature off drops the field: rewriting it would never converge.
                || existing_ingress.iter().any(|v| {
                    let ip = v
                        .get("ip")
                        .and_then(|ip| ip.as_str())
                        .and_then(parse_ip);
                    let have = v.get("ipMode").and_then(|m| m.as_str()).unwrap_or("VIP");
                    ip.is_some_and(|ip| have != ip_mode(&ip, proxy))
                })
        }
        ServiceTarget::Clear { .. } => ingress.len() != existing_ingress.len(),
    };
    if !ingress_changed && !cond_changed {
        return None;
    }
    let added: Vec<IpAddr> = want_ips
        .iter()
        .filter(|ip| !current.contains(ip))
        .copied()
        .collect();
    let removed: Vec<IpAddr> = current
        .iter()
        .filter(|ip| !want_ips.contains(ip))
        .copied()
        .collect();
    let rv = svc.resource_version.unwrap_or_default().to_string();
    let mut status = serde_json::Map::new();
    if ingress_changed {
        status.insert(
            "loadBalancer".into(),
            if ingress.is_empty() {
                json!({"ingress": null})
            } else {
                json!({"ingress": ingress})
            },
        );
    }
    if cond_changed {
        status.insert(
            "conditions".into(),
            if new_conds.is_empty() {
                Value::Null
            } else {
                serde_json::to_value(&new_conds).unwrap_or(Value::Null)
            },
        );
    }
    Some(ServicePatch {
        patch: json!({"metadata": {"resourceVersion": rv}, "status": Value::Object(status)}),
        added,
        removed,
        new_cond,
        raised_not_covered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("time"))
    }

    fn svc(ips: &[&str], conds: Vec<Condition>) -> Service {
        ServiceBuilder::named("demo", "web")
            .resource_version("42")
            .ingress_vip(ips)
            .conditions(conds)
            .build()
    }

    fn cond(type_: &str, status: &str, reason: &str, msg: &str, ltt: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: msg.into(),
            observed_generation: None,
            last_transition_time: t(ltt),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn fresh_service_gets_ingress_condition_and_rv_precondition() {
        let s = svc(
            &[],
            vec![cond(
                "other.io/Ready",
                "True",
                "Fine",
                "",
                "2026-01-01T00:00:00Z",
            )],
        );
        let target = ServiceTarget::Managed {
            ips: vec![ip("198.51.100.10")],
            cond: CondWant::new(COND_IPAM_SATISFIED, true, "Satisfied", "allocated"),
            not_covered: None,
            proxy: BTreeSet::new(),
        };
        let now = t("2026-11-22T08:00:00Z");
        let p = service_patch(&s, &target, &now).expect("a write is needed");
        assert_eq!(p.patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            p.patch["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.51.100.10"
        );
        assert_eq!(
            p.patch["status"]["loadBalancer"]["ingress"][0]["ipMode"],
            "VIP"
        );
        let conds = p.patch["status"]["conditions"]
            .as_array()
            .expect("conditions");
        assert_eq!(conds.len(), 2, "the foreign condition is kept: {conds:?}");
        assert_eq!(conds[0]["type"], "other.io/Ready");
        assert_eq!(conds[1]["type"], COND_IPAM_SATISFIED);
        assert_eq!(conds[1]["lastTransitionTime"], "2026-11-22T08:00:00Z");
        assert_eq!(p.added, vec![ip("198.51.100.10")]);
        assert!(p.removed.is_empty());
    }

    #[test]
    fn up_to_date_service_needs_no_write() {
        let s = svc(
            &["198.51.100.10"],
            vec![cond(
                COND_IPAM_SATISFIED,
                "True",
                "Satisfied",
                "allocated",
                "2026-01-01T00:00:00Z",
            )],
        );
        let target = ServiceTarget::Managed {
            ips: vec![ip("198.51.100.10")],
            cond: CondWant::new(COND_IPAM_SATISFIED, true, "Satisfied", "allocated"),
            not_covered: None,
            proxy: BTreeSet::new(),
        };
        assert_eq!(service_patch(&s, &target, &t("2026-11-22T08:00:00Z")), None);
    }

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let s = svc(
            &[],
            vec![cond(
                COND_IPAM_SATISFIED,
                "False",
                "NoPool",
                "old",
                "2026-01-01T00:00:00Z",
            )],
        );
        let target = ServiceTarget::Managed {
            ips: vec![],
            cond: CondWant::new(COND_IPAM_SATISFIED, false, "OutOfIPs", "new"),
            not_covered: None,
            proxy: BTreeSet::new(),
        };
        let p = service_patch(&s, &target, &t("2026-11-22T08:00:00Z")).expect("reason changed");
        assert_eq!(
            p.patch["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(p.patch["status"]["conditions"][0]["reason"], "OutOfIPs");
        assert!(
            p.patch["status"].get("loadBalancer").is_none(),
            "ingress untouched: {}",
            p.patch
        );
        assert!(p.new_cond.is_some());
    }

    #[test]
    fn clear_removes_only_our_addresses_and_condition() {
        let s = svc(
            &["198.51.100.10", "192.0.2.99"],
            vec![
                cond(
                    COND_IPAM_SATISFIED,
                    "True",
                    "Satisfied",
                    "x",
                    "2026-01-01T00:00:00Z",
                ),
                cond("other.io/Ready", "True", "Fine", "", "2026-01-01T00:00:00Z"),
            ],
        );
        let target = ServiceTarget::Clear {
            ips: [ip("198.51.100.10")].into_iter().collect(),
        };
        let p = service_patch(&s, &target, &t("2026-11-22T08:00:00Z")).expect("write");
        let ing = p.patch["status"]["loadBalancer"]["ingress"]
            .as_array()
            .expect("ingress");
        assert_eq!(ing.len(), 1);
        assert_eq!(ing[0]["ip"], "192.0.2.99");
        let conds = p.patch["status"]["conditions"].as_array().expect("conds");
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0]["type"], "other.io/Ready");
        assert_eq!(p.removed, vec![ip("198.51.100.10")]);
        // Everything cleared -> explicit nulls so the merge patch deletes the keys.
        let s2 = svc(
            &["198.51.100.10"],
            vec![cond(
                COND_IPAM_SATISFIED,
                "True",
                "Satisfied",
                "x",
                "2026-01-01T00:00:00Z",
            )],
        );
        let p2 = service_patch(&s2, &target, &t("2026-11-22T08:00:00Z")).expect("write");
        assert!(p2.patch["status"]["loadBalancer"]["ingress"].is_null());
        assert!(p2.patch["status"]["conditions"].is_null());
        assert!(p2.patch["status"].get("conditions").is_some());
        // A foreign Service without our condition or addresses: nothing to do.
        let s3 = svc(&["192.0.2.99"], vec![]);
        assert_eq!(
            service_patch(&s3, &target, &t("2026-11-22T08:00:00Z")),
            None
        );
    }

    #[test]
    fn merge_conditions_removes_owned_and_dedups() {
        let existing = vec![
            cond(
                "Conflict",
                "True",
                "CIDROverlap",
                "a",
                "2026-01-01T00:00:00Z",
            ),
            cond(
                "Conflict",
                "True",
                "CIDROverlap",
                "a",
                "2026-01-01T00:00:00Z",
            ),
            cond(
                "Exhausted",
                "False",
                "IPsAvailable",
                "",
                "2026-01-01T00:00:00Z",
            ),
        ];
        let wants = vec![CondWant::new("Conflict", true, "CIDROverlap", "a")];
        let (out, changed) = merge_conditions(
            &existing,
            &wants,
            &["Conflict", "Exhausted"],
            &t("2026-11-22T08:00:00Z"),
        );
        assert!(changed);
        assert_eq!(out.len(), 1);
        let (out2, changed2) = merge_conditions(
            &out,
            &wants,
            &["Conflict", "Exhausted"],
            &t("2026-11-22T09:00:00Z"),
        );
        assert!(!changed2);
        assert_eq!(out2, out);
    }
}
