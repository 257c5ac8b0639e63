//! The Lease API calls: create, replace with a resourceVersion precondition, release, delete.
//!
//! Every write carries a precondition: a create fails with 409 AlreadyExists if someone else
//! created the lease first, an update fails with 409 Conflict if the lease changed since we saw
//! it. A 409 therefore always means "another writer won": callers re-observe (via their watch)
//! and never retry blindly.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::Api;

use super::decide::{spec_for, Action, LeaseConfig, Record, WriteFailure};

/// A failed write, classified for the election rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WriteError {
    pub kind: WriteFailure,
    pub message: String,
    /// HTTP status code, when the API server answered.
    pub code: Option<u16>,
}

impl WriteError {
    fn new(kind: WriteFailure, message: impl Into<String>) -> Self {
        WriteError {
            kind,
            message: message.into(),
            code: None,
        }
    }

    fn from_kube(e: &kube::Error) -> Self {
        WriteError {
            kind: classify(e),
            message: e.to_string(),
            code: match e {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
        }
    }
}

/// Classify a kube client error: 409/404 → Conflict, 5xx/429 and transport errors →
/// Unreachable, other API refusals → Rejected.
pub fn classify(err: &kube::Error) -> WriteFailure {
    match err {
        kube::Error::Api(status) => match status.code {
            404 | 409 => WriteFailure::Conflict,
            429 => WriteFailure::Unreachable,
            c if c >= 500 => WriteFailure::Unreachable,
            _ => WriteFailure::Rejected,
        },
        kube::Error::BuildRequest(_) => WriteFailure::Rejected,
        _ => WriteFailure::Unreachable,
    }
}

/// Current wall-clock time as a MicroTime, truncated to whole microseconds (the wire format has
/// exactly six fractional digits, see golden 67/71).
pub fn micro_now() -> MicroTime {
    let now = jiff::Timestamp::now();
    let micros = now.as_microsecond();
    MicroTime(jiff::Timestamp::from_microsecond(micros).unwrap_or(now))
}

/// Prefix of the label/annotation keys this module manages on Leases.
pub const OWN_PREFIX: &str = "ferrolb.io/";

fn merge_ours(target: &mut Option<BTreeMap<String, String>>, given: &BTreeMap<String, String>) {
    let map = target.get_or_insert_with(Default::default);
    map.retain(|k, _| !k.starts_with(OWN_PREFIX) || given.contains_key(k));
    map.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    if map.is_empty() {
        *target = None;
    }
}

/// Writes Leases in one namespace as one identity.
#[derive(Clone)]
pub struct LeaseWriter {
    api: Api<Lease>,
    me: String,
    cfg: LeaseConfig,
}

impl LeaseWriter {
    pub fn new(client: kube::Client, namespace: &str, me: &str, cfg: LeaseConfig) -> Self {
        LeaseWriter {
            api: Api::namespaced(client, namespace),
            me: me.to_string(),
            cfg,
        }
    }

    pub fn identity(&self) -> &str {
        &self.me
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    async fn bounded<T>(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, WriteError> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(WriteError::from_kube(&e)),
            Err(_) => Err(WriteError::new(
                WriteFailure::Unreachable,
                format!("no answer within {timeout:?}"),
            )),
        }
    }

    /// Create the lease with us as holder. 409 AlreadyExists → Conflict.
    pub async fn create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Lease, WriteError> {
        let now = micro_now();
        let mut lease = Lease::default();
        lease.metadata.name = Some(name.to_string());
        if !labels.is_empty() {
            lease.metadata.labels = Some(labels.clone());
        }
        if !annotations.is_empty() {
            lease.metadata.annotations = Some(annotations.clone());
        }
        lease.spec = spec_for(&Action::Create, &self.me, None, &now, &self.cfg);
        let result = self
            .bounded(timeout, self.api.create(&PostParams::default(), &lease))
            .await;
        result.map_err(|mut e| {
            // A 404 on create is a missing namespace, not a lost race.
            if e.code == Some(404) {
                e.kind = WriteFailure::Rejected;
            }
            e
        })
    }

    /// Acquire / renew / release: PUT the observed object with the new spec and its
    /// resourceVersion as precondition. `labels`/`annotations` (if given) are merged over the
    /// object's: given keys win, keys under our prefix `ferrolb.io/` that are not given any more
    /// are removed (e.g. a service label when the lease now serves two), other keys are kept.
    pub async fn update(
        &self,
        action: &Action,
        current: &Lease,
        labels: Option<&BTreeMap<String, String>>,
        annotations: Option<&BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<Lease, WriteError> {
        let name = current
            .metadata
            .name
            .clone()
            .ok_or_else(|| WriteError::new(WriteFailure::Rejected, "lease without a name"))?;
        if current.metadata.resource_version.is_none() {
            return Err(WriteError::new(
                WriteFailure::Rejected,
                "refusing to write a lease without a resourceVersion precondition",
            ));
        }
        let now = micro_now();
        let record = Record::from_lease(current);
        let spec = spec_for(action, &self.me, Some(&record), &now, &self.cfg).ok_or_else(|| {
            WriteError::new(WriteFailure::Rejected, format!("{action:?} writes nothing"))
        })?;
        let mut lease = current.clone();
        lease.metadata.managed_fields = None;
        if let Some(l) = labels {
            merge_ours(&mut lease.metadata.labels, l);
        }
        if let Some(a) = annotations {
            merge_ours(&mut lease.metadata.annotations, a);
        }
        let mut merged = lease.spec.take().unwrap_or_default();
        merged.holder_identity = spec.holder_identity;
        merged.lease_duration_seconds = spec.lease_duration_seconds;
        merged.acquire_time = spec.acquire_time;
        merged.renew_time = spec.renew_time;
        merged.lease_transitions = spec.lease_transitions;
        lease.spec = Some(merged);
        self.bounded(
            timeout,
            self.api.replace(&name, &PostParams::default(), &lease),
        )
        .await
    }

    /// Delete a lease nobody holds, with a resourceVersion precondition (409 if it changed).
    pub async fn delete(
        &self,
        name: &str,
        resource_version: &str,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(resource_version.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.bounded(timeout, self.api.delete(name, &dp))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_has_exactly_six_fraction_digits() {
        let re = regex::Regex::new(r#"^"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"$"#).unwrap();
        for ts in [
            "2026-11-22T07:58:05Z",
            "2026-11-22T07:58:05.1Z",
            "2026-11-22T07:58:05.123456789Z",
        ] {
            let t = MicroTime(ts.parse().unwrap());
            let s = serde_json::to_string(&t).unwrap();
            assert!(re.is_match(&s), "{ts} -> {s}");
        }
        let s = serde_json::to_string(&micro_now()).unwrap();
        assert!(re.is_match(&s), "{s}");
        let back: MicroTime = serde_json::from_str(&s).unwrap();
        assert_eq!(
            back.0.as_microsecond() * 1000,
            back.0.as_nanosecond() as i64
        );
    }

    #[test]
    fn error_classification() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert_eq!(classify(&api(409)), WriteFailure::Conflict);
        assert_eq!(classify(&api(404)), WriteFailure::Conflict);
        assert_eq!(classify(&api(503)), WriteFailure::Unreachable);
        assert_eq!(classify(&api(500)), WriteFailure::Unreachable);
        assert_eq!(classify(&api(429)), WriteFailure::Unreachable);
        assert_eq!(classify(&api(403)), WriteFailure::Rejected);
        assert_eq!(classify(&api(400)), WriteFailure::Rejected);
    }

    #[test]
    fn our_stale_keys_are_dropped_foreign_ones_kept() {
        let mut target = Some(BTreeMap::from([
            ("ferrolb.io/service-name".to_string(), "web".to_string()),
            ("ferrolb.io/service-count".to_string(), "1".to_string()),
            ("team".to_string(), "blue".to_string()),
        ]));
        let given = BTreeMap::from([("ferrolb.io/service-count".to_string(), "2".to_string())]);
        merge_ours(&mut target, &given);
        let t = target.unwrap();
        assert_eq!(
            t.get("ferrolb.io/service-count").map(String::as_str),
            Some("2")
        );
        assert!(!t.contains_key("ferrolb.io/service-name"));
        assert_eq!(t.get("team").map(String::as_str), Some("blue"));
        let mut empty = Some(BTreeMap::from([(
            "ferrolb.io/x".to_string(),
            "1".to_string(),
        )]));
        merge_ours(&mut empty, &BTreeMap::new());
        assert_eq!(empty, None);
    }
}
