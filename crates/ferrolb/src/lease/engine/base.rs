//! What the engine keeps of a Lease this node holds, as the base of its next write ([`Base`]).
//!
//! A PUT starts from the object last seen, so metadata someone else put on a ferrolb Lease
//! survives our writes. The whole `Lease` costs ≈ 2.8 KiB (two B-tree maps of labels and
//! annotations, the metadata's strings, five fields of spec); an agent holding a third of 10,000
//! address Leases kept ≈ 9 MB of them. Almost always the object is exactly what the
//! observation already records (name, resourceVersion, the record) plus its uid, labels and
//! annotations: then those three are kept as boxed pairs and the object is rebuilt for the write
//! ([`Base::to_lease`]). Anything else on it (owner references, finalizers, fields of the spec a
//! [`Record`] does not carry, ...) keeps the whole object, so a write never drops it.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::lease::decide::Record;

type BoxPairs = Box<[(Box<str>, Box<str>)]>;

/// A held Lease's write base: compact when rebuilding it gives the same object.
#[derive(Clone, Debug)]
pub(super) enum Base {
    /// uid, labels and annotations; the rest comes from the observation.
    Meta {
        uid: Option<Box<str>>,
        labels: Option<BoxPairs>,
        annotations: Option<BoxPairs>,
    },
    /// Something the observation does not carry: the object as seen.
    Whole(Box<Lease>),
}

fn pairs(m: &Option<std::collections::BTreeMap<String, String>>) -> Option<BoxPairs> {
    m.as_ref().map(|m| {
        m.iter()
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
            .collect()
    })
}

fn map(p: &Option<BoxPairs>) -> Option<std::collections::BTreeMap<String, String>> {
    p.as_ref().map(|p| {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

impl Base {
    /// The base of `l` (with `managedFields` dropped: a write never sends them).
    pub(super) fn of(l: &Lease) -> Base {
        let m = &l.metadata;
        // Fields a rebuilt object has: name, namespace, resourceVersion, uid, labels,
        // annotations, the record's spec. `creationTimestamp` is the server's (ignored on
        // update) and `managedFields` are never sent.
        let rebuilt_meta = ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            resource_version: m.resource_version.clone(),
            uid: m.uid.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            creation_timestamp: m.creation_timestamp.clone(),
            managed_fields: m.managed_fields.clone(),
            ..ObjectMeta::default()
        };
        let spec_kept = l
            .spec
            .as_ref()
            .is_some_and(|s| *s == Record::from_lease(l).to_spec());
        if rebuilt_meta == *m && spec_kept {
            Base::Meta {
                uid: m.uid.as_deref().map(Box::from),
                labels: pairs(&m.labels),
                annotations: pairs(&m.annotations),
            }
        } else {
            let mut whole = l.clone();
            whole.metadata.managed_fields = None;
            Base::Whole(Box::new(whole))
        }
    }

    /// The object to write from: `name` in `namespace` at `resource_version` with `record`.
    pub(super) fn to_lease(
        &self,
        name: &str,
        namespace: &str,
        resource_version: Option<&str>,
        record: Option<&Record>,
    ) -> Lease {
        match self {
            Base::Whole(l) => (**l).clone(),
            Base::Meta {
                uid,
                labels,
                annotations,
            } => Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    resource_version: resource_version.map(String::from),
                    uid: uid.as_deref().map(String::from),
                    labels: map(labels),
                    annotations: map(annotations),
                    ..ObjectMeta::default()
                },
                spec: record.map(Record::to_spec),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        ManagedFieldsEntry, MicroTime, OwnerReference, Time,
    };
    use std::collections::BTreeMap;

    fn lease() -> Lease {
        let t = MicroTime(jiff::Timestamp::from_second(1_700_000_000).expect("ts"));
        Lease {
            metadata: ObjectMeta {
                name: Some("ferrolb-0123".into()),
                namespace: Some("ferrolb-system".into()),
                resource_version: Some("42".into()),
                uid: Some("u-1".into()),
                creation_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".into(),
                    "ferrolb".into(),
                )])),
                annotations: Some(BTreeMap::from([
                    ("ferrolb.io/services".into(), "demo/web".into()),
                    ("example.com/note".into(), "kept".into()),
                ])),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("node1".into()),
                lease_duration_seconds: Some(86400),
                acquire_time: Some(t.clone()),
                renew_time: Some(t),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    fn rebuilt(b: &Base, l: &Lease) -> Lease {
        b.to_lease(
            l.metadata.name.as_deref().unwrap_or_default(),
            l.metadata.namespace.as_deref().unwrap_or_default(),
            l.metadata.resource_version.as_deref(),
            Some(&Record::from_lease(l)),
        )
    }

    #[test]
    fn an_ordinary_lease_is_kept_compactly_and_rebuilt_as_it_was_written_from() {
        let l = lease();
        let b = Base::of(&l);
        assert!(matches!(b, Base::Meta { .. }), "{b:?}");
        let r = rebuilt(&b, &l);
        // What a PUT of the whole object would have sent, less what the server owns
        // (managedFields are never sent; creationTimestamp is ignored on update).
        let mut want = l.clone();
        want.metadata.managed_fields = None;
        want.metadata.creation_timestamp = None;
        assert_eq!(r, want);
    }

    #[test]
    fn anything_a_rebuild_would_drop_keeps_the_whole_object() {
        let mut owned = lease();
        owned.metadata.owner_references = Some(vec![OwnerReference {
            name: "x".into(),
            ..Default::default()
        }]);
        let mut preferred = lease();
        if let Some(s) = preferred.spec.as_mut() {
            s.preferred_holder = Some("node2".into());
        }
        let mut finalized = lease();
        finalized.metadata.finalizers = Some(vec!["example.com/f".into()]);
        for l in [owned, preferred, finalized] {
            let b = Base::of(&l);
            assert!(matches!(b, Base::Whole(_)), "{b:?}");
            let mut want = l.clone();
            want.metadata.managed_fields = None;
            assert_eq!(rebuilt(&b, &l), want);
        }
    }
}
