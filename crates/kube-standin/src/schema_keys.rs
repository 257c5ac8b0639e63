//! Merge metadata of the object types the API stand-in serves: which lists are merged by key
//! (strategic merge patch `patchMergeKey`/`patchStrategy`, server-side apply `listType`/
//! `listMapKey`), which maps and lists are atomic, which objects are declared structs.
//!
//! Built-in types are described by hand (only the parts that differ from the defaults);
//! custom resources are described by their structural OpenAPI v3 schema
//! ([`Schema::from_openapi`]), registered with [`register_crd`] when a CRD is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, RwLock};

use serde_json::{json, Map, Value};

/// Deepest schema nesting [`Schema::from_openapi`] follows; deeper parts become [`Schema::Any`].
const MAX_SCHEMA_DEPTH: usize = 64;

/// The shape of one value, as far as merging and field ownership are concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// A scalar (string, number, bool, int-or-string) or anything compared as a whole.
    Scalar,
    /// An object with declared fields. Undeclared keys are treated as [`Schema::Any`].
    Struct(BTreeMap<String, Schema>),
    /// An object with free-form keys (labels, annotations, capacity) whose values have `elem`.
    Map(Box<Schema>),
    /// An object or list owned and replaced as a whole (`x-kubernetes-map-type: atomic`,
    /// `structType=atomic`); strategic merge patch still merges it like a plain map.
    Atomic,
    /// A list.
    List(ListSchema),
    /// Unknown: objects are structs of `Any`, lists are atomic.
    Any,
}

/// How server-side apply treats a list (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Replaced and owned as a whole.
    Atomic,
    /// A set of scalars (`v:` path elements).
    Set,
    /// A map keyed by these item fields (`k:{...}` path elements).
    Map(Vec<String>),
}

/// How strategic merge patch treats a list (`patchStrategy` / `patchMergeKey`).
#[derive(Debug, Clone, PartialEq)]
pub enum SmpList {
    /// The patch replaces the list.
    Replace,
    /// Lists of scalars merged as sets.
    MergePrimitive,
    /// Lists of objects merged by this key.
    MergeKey(String),
}

/// A list's merge metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ListSchema {
    /// Server-side apply list type.
    pub kind: ListKind,
    /// Defaults of key fields (`protocol: TCP` for Service ports), used when an item omits one.
    pub key_defaults: Vec<(String, Value)>,
    /// Strategic merge patch strategy.
    pub smp: SmpList,
    /// The items' schema.
    pub elem: Box<Schema>,
}

impl Schema {
    /// The schema of field `key` of an object of this schema.
    pub fn field(&self, key: &str) -> &Schema {
        match self {
            Schema::Struct(fields) => fields.get(key).unwrap_or(&Schema::Any),
            Schema::Map(elem) => elem,
            _ => &Schema::Any,
        }
    }

    /// Whether `key` is a declared field (struct member) rather than a free-form map key.
    pub fn is_declared(&self, key: &str) -> bool {
        match self {
            Schema::Struct(fields) => fields.contains_key(key),
            // Unknown objects are treated as structs whose fields are all declared.
            Schema::Any => true,
            _ => false,
        }
    }

    /// Converts a structural OpenAPI v3 schema (as in a CRD) into a merge schema.
    pub fn from_openapi(schema: &Value) -> Schema {
        from_openapi_depth(schema, 0)
    }
}

fn from_openapi_depth(s: &Value, depth: usize) -> Schema {
    let Some(o) = s.as_object() else {
        return Schema::Any;
    };
    if depth > MAX_SCHEMA_DEPTH {
        return Schema::Any;
    }
    if o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Schema::Scalar;
    }
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
    let atomic_map = o.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
    match ty {
        "object" => {
            if atomic_map {
                return Schema::Atomic;
            }
            if let Some(props) = o.get("properties").and_then(Value::as_object) {
                let fields = props
                    .iter()
                    .map(|(k, v)| (k.clone(), from_openapi_depth(v, depth + 1)))
                    .collect();
                return Schema::Struct(fields);
            }
            match o.get("additionalProperties") {
                Some(ap @ Value::Object(_)) => {
                    Schema::Map(Box::new(from_openapi_depth(ap, depth + 1)))
                }
                _ => Schema::Any,
            }
        }
        "array" => {
            let elem = o
                .get("items")
                .map(|i| from_openapi_depth(i, depth + 1))
                .unwrap_or(Schema::Any);
            let list_type = o
                .get("x-kubernetes-list-type")
                .and_then(Value::as_str)
                .unwrap_or("atomic");
            let keys: Vec<String> = o
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let kind = match list_type {
                "set" => ListKind::Set,
                "map" if !keys.is_empty() => ListKind::Map(keys.clone()),
                _ => ListKind::Atomic,
            };
            let key_defaults = keys
                .iter()
                .filter_map(|k| {
                    let d = o.get("items")?.get("properties")?.get(k)?.get("default")?;
                    Some((k.clone(), d.clone()))
                })
                .collect();
            let strategy = o
                .get("x-kubernetes-patch-strategy")
                .and_then(Value::as_str)
                .unwrap_or("");
            let smp = match (
                strategy.split(',').any(|s| s == "merge"),
                o.get("x-kubernetes-patch-merge-key")
                    .and_then(Value::as_str),
            ) {
                (true, Some(k)) => SmpList::MergeKey(k.to_owned()),
                (true, None) => SmpList::MergePrimitive,
                _ => SmpList::Replace,
            };
            Schema::List(ListSchema {
                kind,
                key_defaults,
                smp,
                elem: Box::new(elem),
            })
        }
        "" if o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {
            Schema::Any
        }
        "" => Schema::Any,
        _ => Schema::Scalar,
    }
}

/// What the stand-in knows about one kind.
#[derive(Debug, Clone)]
pub struct KindInfo {
    /// The merge schema of the whole object.
    pub schema: Schema,
    /// Whether strategic merge patch is allowed (built-in types only; CRs answer 415).
    pub strategic: bool,
    /// The Go zero value of the type as JSON (non-pointer structs such as `spec: {}`); the
    /// "old" object of a create when computing managed fields.
    pub zero: Value,
}

fn st(fields: Vec<(&str, Schema)>) -> Schema {
    Schema::Struct(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn atomic_list() -> Schema {
    Schema::List(ListSchema {
        kind: ListKind::Atomic,
        key_defaults: Vec::new(),
        smp: SmpList::Replace,
        elem: Box::new(Schema::Any),
    })
}

fn keyed_list(ssa_keys: &[&str], smp_key: &str, elem: Schema) -> Schema {
    Schema::List(ListSchema {
        kind: ListKind::Map(ssa_keys.iter().map(|k| (*k).to_owned()).collect()),
        key_defaults: Vec::new(),
        smp: SmpList::MergeKey(smp_key.to_owned()),
        elem: Box::new(elem),
    })
}

fn string_map() -> Schema {
    Schema::Map(Box::new(Schema::Scalar))
}

fn conditions() -> Schema {
    keyed_list(&["type"], "type", Schema::Any)
}

/// `metav1.ObjectMeta`.
pub fn object_meta() -> Schema {
    st(vec![
        ("labels", string_map()),
        ("annotations", string_map()),
        (
            "finalizers",
            Schema::List(ListSchema {
                kind: ListKind::Set,
                key_defaults: Vec::new(),
                smp: SmpList::MergePrimitive,
                elem: Box::new(Schema::Scalar),
            }),
        ),
        ("ownerReferences", keyed_list(&["uid"], "uid", Schema::Any)),
        ("managedFields", atomic_list()),
    ])
}

fn service() -> Schema {
    let port = st(vec![
        ("name", Schema::Scalar),
        ("protocol", Schema::Scalar),
        ("appProtocol", Schema::Scalar),
        ("port", Schema::Scalar),
        ("targetPort", Schema::Scalar),
        ("nodePort", Schema::Scalar),
    ]);
    let ports = Schema::List(ListSchema {
        kind: ListKind::Map(vec!["port".into(), "protocol".into()]),
        key_defaults: vec![("protocol".into(), json!("TCP"))],
        smp: SmpList::MergeKey("port".into()),
        elem: Box::new(port),
    });
    st(vec![
        ("metadata", object_meta()),
        (
            "spec",
            st(vec![
                ("ports", ports),
                ("selector", Schema::Atomic),
                ("clusterIPs", atomic_list()),
                ("externalIPs", atomic_list()),
                ("ipFamilies", atomic_list()),
                ("loadBalancerSourceRanges", atomic_list()),
            ]),
        ),
        (
            "status",
            st(vec![
                ("loadBalancer", st(vec![("ingress", atomic_list())])),
                ("conditions", conditions()),
            ]),
        ),
    ])
}

fn node() -> Schema {
    // No listType: apply derives a map keyed by `type` from patchMergeKey; several addresses may
    // share a type, and such a list is then handled as atomic (see managed.rs).
    let addresses = keyed_list(&["type"], "type", Schema::Any);
    st(vec![
        ("metadata", object_meta()),
        (
            "spec",
            st(vec![
                (
                    "podCIDRs",
                    Schema::List(ListSchema {
                        kind: ListKind::Set,
                        key_defaults: Vec::new(),
                        smp: SmpList::MergePrimitive,
                        elem: Box::new(Schema::Scalar),
                    }),
                ),
                ("taints", atomic_list()),
            ]),
        ),
        (
            "status",
            st(vec![
                ("conditions", conditions()),
                ("addresses", addresses),
                ("capacity", string_map()),
                ("allocatable", string_map()),
                ("images", atomic_list()),
                ("volumesInUse", atomic_list()),
                ("volumesAttached", atomic_list()),
            ]),
        ),
    ])
}

fn plain() -> Schema {
    st(vec![("metadata", object_meta())])
}

fn builtins() -> HashMap<(String, String), KindInfo> {
    let mut m = HashMap::new();
    let mut add = |api_version: &str, kind: &str, schema: Schema, zero: Value| {
        m.insert(
            (api_version.to_owned(), kind.to_owned()),
            KindInfo {
                schema,
                strategic: true,
                zero,
            },
        );
    };
    add(
        "v1",
        "Service",
        service(),
        json!({"metadata": {}, "spec": {}, "status": {"loadBalancer": {}}}),
    );
    add(
        "v1",
        "Node",
        node(),
        json!({"metadata": {}, "spec": {}, "status": {"daemonEndpoints": {"kubeletEndpoint": {}}, "nodeInfo": {}}}),
    );
    add(
        "v1",
        "Namespace",
        st(vec![
            ("metadata", object_meta()),
            ("spec", st(vec![("finalizers", atomic_list())])),
        ]),
        json!({"metadata": {}, "spec": {}, "status": {}}),
    );
    add(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        st(vec![
            ("metadata", object_meta()),
            ("endpoints", atomic_list()),
            ("ports", atomic_list()),
        ]),
        json!({"metadata": {}}),
    );
    add(
        "coordination.k8s.io/v1",
        "Lease",
        plain(),
        json!({"metadata": {}, "spec": {}}),
    );
    add(
        "v1",
        "Event",
        plain(),
        json!({"metadata": {}, "involvedObject": {}, "source": {}}),
    );
    add(
        "events.k8s.io/v1",
        "Event",
        plain(),
        json!({"metadata": {}, "regarding": {}, "deprecatedSource": {}}),
    );
    add(
        "v1",
        "ConfigMap",
        st(vec![("metadata", object_meta()), ("data", string_map())]),
        json!({"metadata": {}}),
    );
    m
}

fn crd_info(crd: &Value) -> Vec<((String, String), KindInfo)> {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = crd
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    versions
        .iter()
        .filter_map(|v| {
            let name = v.get("name")?.as_str()?;
            let mut schema = v
                .pointer("/schema/openAPIV3Schema")
                .map(Schema::from_openapi)
                .unwrap_or(Schema::Any);
            if let Schema::Struct(fields) = &mut schema {
                fields.insert("metadata".into(), object_meta());
            }
            let info = KindInfo {
                schema,
                strategic: false,
                zero: Value::Object(Map::new()),
            };
            Some(((format!("{group}/{name}"), kind.to_owned()), info))
        })
        .collect()
}

type Registry = HashMap<(String, String), Arc<KindInfo>>;

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    let m: HashMap<_, _> = builtins()
        .into_iter()
        .map(|(k, v)| (k, Arc::new(v)))
        .collect();
    RwLock::new(m)
});

/// Registers (or replaces) the schemas of every version of a CustomResourceDefinition object.
pub fn register_crd(crd: &Value) {
    let infos = crd_info(crd);
    if let Ok(mut m) = REGISTRY.write() {
        for (k, info) in infos {
            m.insert(k, Arc::new(info));
        }
    }
}

/// What is known about `kind` in `api_version` (e.g. `"v1"`, `"Service"`).
pub fn lookup(api_version: &str, kind: &str) -> Option<Arc<KindInfo>> {
    REGISTRY
        .read()
        .ok()?
        .get(&(api_version.to_owned(), kind.to_owned()))
        .cloned()
}

/// Like [`lookup`] for a kind name alone (first match, built-in core types preferred).
pub fn lookup_kind(kind: &str) -> Option<Arc<KindInfo>> {
    let m = REGISTRY.read().ok()?;
    if let Some(i) = m.get(&("v1".to_owned(), kind.to_owned())) {
        return Some(i.clone());
    }
    let mut hits: Vec<_> = m.iter().filter(|((_, k), _)| k == kind).collect();
    hits.sort_by(|a, b| a.0.cmp(b.0));
    hits.first().map(|(_, v)| (*v).clone())
}

/// The schema of an object, from its `apiVersion` and `kind` ([`Schema::Any`] when unknown).
pub fn schema_of(obj: &Value) -> (Schema, Value) {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let info = lookup(av, kind).or_else(|| {
        if av.is_empty() {
            lookup_kind(kind)
        } else {
            None
        }
    });
    match info {
        Some(i) => (i.schema.clone(), i.zero.clone()),
        None => (Schema::Any, Value::Object(Map::new())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Registers the ferrolb CRDs committed in the repository's `crds/` (the stand-in takes
    /// custom resources from their CRD objects only; these unit tests use real ones).
    pub(crate) fn register_repo_crds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        for e in std::fs::read_dir(&dir).expect("the repository's crds/ directory") {
            let text =
                std::fs::read_to_string(e.expect("a crds/ entry").path()).expect("a CRD file");
            let v: Value = serde_yaml::from_str(&text).expect("CRD YAML");
            register_crd(&v);
        }
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_protocol() {
        let info = lookup("v1", "Service").expect("Service registered");
        let Schema::List(ports) = info.schema.field("spec").field("ports") else {
            panic!("ports is not a list");
        };
        assert_eq!(
            ports.kind,
            ListKind::Map(vec!["port".into(), "protocol".into()])
        );
        assert_eq!(ports.smp, SmpList::MergeKey("port".into()));
        assert!(info.strategic);
    }

    #[test]
    fn ferrolb_crds_come_from_their_openapi_schema() {
        register_repo_crds();
        let info = lookup("ferrolb.io/v1alpha1", "LoadBalancerIPPool").expect("pool registered");
        assert!(!info.strategic);
        let Schema::List(conds) = info.schema.field("status").field("conditions") else {
            panic!("conditions is not a list");
        };
        assert_eq!(conds.kind, ListKind::Map(vec!["type".into()]));
        let Schema::List(blocks) = info.schema.field("spec").field("blocks") else {
            panic!("blocks is not a list");
        };
        assert_eq!(blocks.kind, ListKind::Atomic);
        assert!(info.schema.field("spec").is_declared("serviceSelector"));
    }

    #[test]
    fn hostile_openapi_schema_does_not_recurse_forever() {
        let mut s = json!({"type": "string"});
        for _ in 0..200 {
            s = json!({"type": "object", "properties": {"a": s}});
        }
        let schema = Schema::from_openapi(&s);
        assert!(matches!(schema, Schema::Struct(_)));
    }
}
