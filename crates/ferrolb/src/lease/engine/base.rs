//! What the engine keeps of a Lease this node holds, as the base of its next write ([`Base`]).
//!
//! A PUT starts from the object last seen, so metadata someone else put on a ferrolb Lease
//! survives our writes. The whole `Lease` costs ≈ 2.8 KiB (two B-tree maps of labels and
//! annotations, the metadata's strings, five fields of spec); an agent holding a third of 10,000
//! address Leases kept ≈ 9 MB of them. Almost always the object is exactly what the
//! observation already records (name, resourceVersion, the record) plus its uid, labels and
//! annotations: then those three are kept packed ([`Packed`]) and the object is rebuilt for the write
//! ([`Base::to_lease`]). Anything else on it (owner references, finalizers, fields of the spec a
//! [`Record`] does not carry, ...) keeps the whole object, so a write never drops it.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::lease::decide::Record;

/// A map of strings in two allocations: the keys and values one after the other in `text`,
/// where each ends at the next offset of `ends`. A held address Lease has about eight labels and
/// annotations: as boxed pairs they cost seventeen allocations (≈ 1 KiB with the allocator's
/// overhead), and an agent keeps one per held Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Packed {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl Packed {
    /// `None` when the text would not fit 32-bit offsets (then the whole object is kept).
    fn of(m: &BTreeMap<String, String>) -> Option<Packed> {
        let mut text = String::with_capacity(m.iter().map(|(k, v)| k.len() + v.len()).sum());
        let mut ends = Vec::with_capacity(2 * m.len());
        for (k, v) in m {
            for s in [k, v] {
                text.push_str(s);
                ends.push(u32::try_from(text.len()).ok()?);
            }
        }
        Some(Packed {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    fn map(&self) -> BTreeMap<String, String> {
        let mut start = 0;
        let mut strings = self.ends.iter().map(|&end| {
            let end = end as usize;
            // Offsets are the ends of whole strings pushed in `of`: char boundaries in range.
            let s = self.text.get(start..end).unwrap_or_default().to_string();
            start = end;
            s
        });
        let mut m = BTreeMap::new();
        while let (Some(k), Some(v)) = (strings.next(), strings.next()) {
            m.insert(k, v);
        }
        m
    }
}

/// uid, labels and annotations of a held Lease whose other fields the observation records.
#[derive(Clone, Debug)]
pub(super) struct Meta {
    uid: Option<Box<str>>,
    labels: Option<Packed>,
    annotations: Option<Packed>,
}

/// A held Lease's write base: compact when rebuilding it gives the same object.
#[derive(Clone, Debug)]
pub(super) enum Base {
    /// uid, labels and annotations; the rest comes from the observation.
    Meta(Box<Meta>),
    /// Something the observation does not carry: the object as seen.
    Whole(Box<Lease>),
}

/// `Some(None)` for no map, `None` when it cannot be packed.
fn pack(m: &Option<BTreeMap<String, String>>) -> Option<Option<Packed>> {
    match m {
        None => Some(None),
        Some(m) => Packed::of(m).map(Some),
    }
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
        let packed = if rebuilt_meta == *m && spec_kept {
            pack(&m.labels).zip(pack(&m.annotations))
        } else {
            None
        };
        if let Some((labels, annotations)) = packed {
            Base::Meta(Box::new(Meta {
                uid: m.uid.as_deref().map(Box::from),
                labels,
                annotations,
            }))
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
            Base::Meta(m) => Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    resource_version: resource_version.map(String::from),
                    uid: m.uid.as_deref().map(String::from),
                    labels: m.labels.as_ref().map(Packed::map),
                    annotations: m.annotations.as_ref().map(Packed::map),
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
        assert!(matches!(b, Base::Meta(_)), "{b:?}");
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

    #[test]
    fn packed_maps_give_back_what_they_were_made_of() {
        let cases = [
            BTreeMap::new(),
            BTreeMap::from([(String::new(), String::new())]),
            BTreeMap::from([
                ("a".to_string(), String::new()),
                (String::new(), "b".to_string()),
                (
                    "ferrolb.io/services".to_string(),
                    "demo/web,demo/ü".to_string(),
                ),
                ("ключ".to_string(), "значение\0,=".to_string()),
            ]),
        ];
        for m in cases {
            let p = Packed::of(&m).expect("fits");
            assert_eq!(p.map(), m);
            assert_eq!(p.ends.len(), 2 * m.len());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_packed_map_is_the_same_map(m in proptest::collection::btree_map(".*", ".*", 0..12)) {
            let p = Packed::of(&m).expect("fits");
            proptest::prop_assert_eq!(p.map(), m);
        }
    }
}
