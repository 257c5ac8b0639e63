//! Generic object storage: one global resourceVersion, per-resource ordered maps and a bounded
//! per-resource event history that watches read from (a slow watcher never blocks a writer: it
//! only falls behind until its position leaves the history, then it gets 410 Expired).

use super::error::ApiError;
use super::resources::{Registry, ResourceDef};
use super::{defaults, managed_hook};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub etype: EventType,
    pub object: Arc<Value>,
    /// The object before the change (for selector transitions).
    pub prev: Option<Arc<Value>>,
    /// The object's JSON, encoded once for every watcher that needs it as stored.
    pub encoded: std::sync::OnceLock<Arc<str>>,
    /// The whole watch line of this event as stored (`{"type":etype,"object":...}` and a
    /// newline), built once and shared by every watcher that sends it as it is.
    pub line: std::sync::OnceLock<bytes::Bytes>,
}

/// Objects and history of one storage key.
pub struct Table {
    pub objects: BTreeMap<(String, String), Arc<Value>>,
    pub history: VecDeque<Arc<Event>>,
    /// Events with rv <= compacted may be missing from history.
    pub compacted: u64,
    /// Last rv committed to this table (watchers wait on changes).
    pub notify: tokio::sync::watch::Sender<u64>,
}

impl Table {
    fn new(start_rv: u64) -> Self {
        Self {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            // A table created on its first write has dropped nothing: a watch from any earlier
            // resourceVersion (e.g. of an empty LIST) must get that write, not 410.
            compacted: 0,
            notify: tokio::sync::watch::channel(start_rv).0,
        }
    }
    /// Events after `rv` (up to `max`), or Err(oldest available rv) when `rv` is too old.
    pub fn events_after(&self, rv: u64, max: usize) -> Result<Vec<Arc<Event>>, u64> {
        if rv < self.compacted {
            return Err(self
                .history
                .front()
                .map(|e| e.rv)
                .unwrap_or(self.compacted + 1));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..).take(max).cloned().collect())
    }
}

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteCtx {
    pub manager: String,
    pub dry_run: bool,
    pub now: String,
    /// `Update` or `Apply` (managedFields operation).
    pub operation: String,
    /// Warnings to return as `Warning: 299` headers.
    pub warnings: Vec<String>,
}

/// The whole server state (behind one mutex).
pub struct State {
    pub rv: u64,
    pub registry: Registry,
    pub tables: HashMap<String, Table>,
    pub history_limit: usize,
    /// Warnings of the last write (pruned unknown fields), drained by the HTTP layer.
    pub pending_warnings: Vec<String>,
    /// ClusterIPs and node ports held by stored Services, kept in step with every commit (a
    /// create must not scan 10k Services to find a free port).
    pub service_allocs: defaults::ServiceAllocs,
}

/// Current UTC time as a metav1.Time string (whole seconds).
pub fn now_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// The (namespace, name) key of an object.
pub fn obj_key(obj: &Value) -> (String, String) {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_string(),
        meta_str(obj, "name").unwrap_or_default().to_string(),
    )
}

/// The resourceVersion of an object as a number (0 when missing).
pub fn obj_rv(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().expect("object");
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("object")
}

const META_ORDER: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

const SERVICE_SPEC_ORDER: &[&str] = &[
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
];

const PORT_ORDER: &[&str] = &[
    "name",
    "protocol",
    "appProtocol",
    "port",
    "targetPort",
    "nodePort",
];

fn reorder(map: &mut Map<String, Value>, order: &[&str]) {
    let mut old = std::mem::take(map);
    for k in order {
        if let Some(v) = old.shift_remove(*k) {
            map.insert((*k).to_string(), v);
        }
    }
    for (k, v) in old {
        map.insert(k, v);
    }
}

fn sort_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut val) in entries {
                sort_keys(&mut val);
                m.insert(k, val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// Puts keys in the order kube-apiserver serialises them: Go struct order for built-in types,
/// sorted keys (unstructured) for custom resources.
pub fn normalize(def: &ResourceDef, obj: &mut Value) {
    if def.custom {
        sort_keys(obj);
        return;
    }
    if let Some(m) = obj.as_object_mut() {
        reorder(m, &["kind", "apiVersion", "metadata"]);
        if let Some(Value::Object(md)) = m.get_mut("metadata") {
            reorder(md, META_ORDER);
            // Go omits empty maps (omitempty)
            for k in ["labels", "annotations"] {
                if md
                    .get(k)
                    .is_some_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
                {
                    md.shift_remove(k);
                }
            }
        }
        if def.kind == "Service" {
            if let Some(Value::Object(spec)) = m.get_mut("spec") {
                reorder(spec, SERVICE_SPEC_ORDER);
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        reorder(p, PORT_ORDER);
                    }
                }
            }
        }
    }
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_CHARS[rng.random_range(0..GENERATE_CHARS.len())] as char)
        .collect()
}

/// Equality ignoring resourceVersion and managedFields (a no-op write keeps the RV).
fn same_content(a: &Value, b: &Value) -> bool {
    // Compared in place (no copies): maps compare as sets of entries, as `Value`'s `==` does.
    fn eq_without(a: &Map<String, Value>, b: &Map<String, Value>, skip: &[&str]) -> bool {
        let kept =
            |m: &Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
        kept(a) == kept(b)
            && a.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .all(|(k, v)| b.get(k) == Some(v))
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let (ma, mb) = (a.get("metadata"), b.get("metadata"));
            let meta_eq = match (ma, mb) {
                (Some(Value::Object(x)), Some(Value::Object(y))) => {
                    eq_without(x, y, &["resourceVersion", "managedFields"])
                }
                (x, y) => x == y,
            };
            meta_eq && eq_without(a, b, &["metadata"])
        }
        _ => a == b,
    }
}

fn spec_part(def: &ResourceDef, v: &Value) -> Value {
    // everything but metadata and status
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("kind");
        m.remove("apiVersion");
    }
    let _ = def;
    c
}

impl State {
    pub fn new(history_limit: usize) -> Self {
        let mut s = Self {
            rv: 1,
            registry: Registry::with_builtins(),
            tables: HashMap::new(),
            history_limit: history_limit.max(1),
            pending_warnings: Vec::new(),
            service_allocs: Default::default(),
        };
        let def = s
            .registry
            .find("", "v1", "namespaces")
            .expect("namespaces registered");
        let ctx = WriteCtx {
            manager: "ferrolb-apiserver".into(),
            now: now_time(),
            operation: "Update".into(),
            ..Default::default()
        };
        let ctx = WriteCtx {
            manager: "kube-apiserver".into(),
            ..ctx
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let _ = s.create(&def, None, obj, &ctx);
        }
        // the `kubernetes` Service every cluster has (87)
        if let Some(svc) = s.registry.find("", "v1", "services") {
            let [a, b, c] = defaults::CLUSTER_IPV4_BASE;
            let obj = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": format!("{a}.{b}.{c}.1"), "sessionAffinity": "None",
                    "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
                    "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}]}});
            let _ = s.create(&svc, Some("default"), obj, &ctx);
        }
        s
    }

    /// The table of a storage key (created on first use).
    pub fn table(&mut self, storage: &str) -> &mut Table {
        let rv = self.rv;
        self.tables
            .entry(storage.to_string())
            .or_insert_with(|| Table::new(rv))
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.tables
            .get(&def.storage)
            .and_then(|t| t.objects.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    fn commit(
        &mut self,
        storage: &str,
        etype: EventType,
        obj: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let rv = obj_rv(&obj);
        let limit = self.history_limit;
        let t = self.table(storage);
        let key = obj_key(&obj);
        let replaced = match etype {
            EventType::Deleted => t.objects.remove(&key),
            _ => t.objects.insert(key, obj.clone()),
        };
        if storage == defaults::SERVICES_STORAGE {
            if let Some(old) = &replaced {
                self.service_allocs.remove(old);
            }
            if etype != EventType::Deleted {
                self.service_allocs.add(&obj);
            }
        }
        let t = self.table(storage);
        t.history.push_back(Arc::new(Event {
            rv,
            etype,
            object: obj,
            prev,
            encoded: std::sync::OnceLock::new(),
            line: std::sync::OnceLock::new(),
        }));
        while t.history.len() > limit {
            if let Some(e) = t.history.pop_front() {
                t.compacted = e.rv;
            }
        }
        t.notify.send_replace(rv);
    }

    /// Checks that a namespace exists (for namespaced creates).
    fn require_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let exists = self
            .tables
            .get("/namespaces")
            .is_some_and(|t| t.objects.contains_key(&(String::new(), ns.to_string())));
        if exists {
            Ok(())
        } else {
            Err(ApiError::not_found_plain("", "namespaces", ns))
        }
    }

    /// Creates an object (POST). `obj` has been decoded and validated for kind/apiVersion.
    pub fn create(
        &mut self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        }
        {
            let o = obj.as_object_mut().expect("object");
            o.insert("kind".into(), Value::String(def.kind.clone()));
            o.insert("apiVersion".into(), Value::String(def.api_version()));
        }
        let md = metadata_mut(&mut obj);
        if def.namespaced {
            let ns = ns.unwrap_or("default");
            match md.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {}
            }
            md.insert("namespace".into(), Value::String(ns.to_string()));
        } else {
            md.remove("namespace");
        }
        let name = match md.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match md.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => format!("{g}{}", random_suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        vec![(
                            "FieldValueRequired",
                            "Required value: name or generateName is required".into(),
                            "metadata.name".into(),
                        )],
                    ))
                }
            },
        };
        md.insert("name".into(), Value::String(name.clone()));
        let applied_mf = if ctx.operation == "Apply" {
            md.get("managedFields").cloned()
        } else {
            None
        };
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "selfLink",
            "managedFields",
        ] {
            md.remove(k);
        }
        let ns_s = if def.namespaced {
            ns.unwrap_or("default").to_string()
        } else {
            String::new()
        };
        if def.namespaced {
            self.require_namespace(&ns_s)?;
        }
        if self.get(def, &ns_s, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        if def.status {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        let user = obj.clone();
        let mut warnings = Vec::new();
        defaults::on_create_warn(self, def, &mut obj, Some(&mut warnings))?;
        self.pending_warnings = warnings;
        let md = metadata_mut(&mut obj);
        md.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        md.insert("creationTimestamp".into(), Value::String(ctx.now.clone()));
        if def.generation {
            md.insert("generation".into(), json!(1));
        }
        match applied_mf {
            Some(mf) => {
                metadata_mut(&mut obj).insert("managedFields".into(), mf);
            }
            None => managed_hook(None, &mut obj, &user, def, ctx, None),
        }
        defaults::after_managed(def, &mut obj);
        if ctx.dry_run {
            normalize(def, &mut obj);
            return Ok(obj);
        }
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        normalize(def, &mut obj);
        let arc = Arc::new(obj);
        self.commit(&def.storage, EventType::Added, arc.clone(), None);
        defaults::after_write(self, def, &arc);
        Ok((*arc).clone())
    }

    /// Updates an object (PUT, PATCH result, or a /status write).
    ///
    /// `precondition` is the resourceVersion the writer based its change on (empty/None =
    /// unconditional). Returns the stored object (unchanged, same RV, for a no-op).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        def: &Arc<ResourceDef>,
        ns: &str,
        name: &str,
        new: Value,
        status_sub: bool,
        precondition: Option<&str>,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(p) = precondition.filter(|p| !p.is_empty()) {
            if meta_str(&old, "resourceVersion") != Some(p) {
                return Err(ApiError::conflict(def, name));
            }
        }
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        }
        let mut merged: Value;
        let user: Value;
        if status_sub {
            user = Value::Null;
            merged = (*old).clone();
            let o = merged.as_object_mut().expect("object");
            match new.get("status") {
                Some(s) => {
                    o.insert("status".into(), s.clone());
                }
                None => {
                    o.remove("status");
                }
            }
            defaults::on_status(def, &mut merged)?;
            if ctx.operation == "Apply" {
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    metadata_mut(&mut merged).insert("managedFields".into(), mf.clone());
                }
            }
            if !def.custom {
                let md = metadata_mut(&mut merged);
                for k in ["labels", "annotations"] {
                    match new.get("metadata").and_then(|m| m.get(k)) {
                        Some(v) => {
                            md.insert(k.into(), v.clone());
                        }
                        None => {
                            md.remove(k);
                        }
                    }
                }
            }
        } else {
            merged = new;
            {
                let o = merged.as_object_mut().expect("object");
                o.insert("kind".into(), Value::String(def.kind.clone()));
                o.insert("apiVersion".into(), Value::String(def.api_version()));
                if def.status {
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
            }
            let md = metadata_mut(&mut merged);
            let body_name = md.get("name").and_then(Value::as_str).unwrap_or_default();
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(&format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            if def.namespaced {
                let body_ns = md
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            let omd = old.get("metadata").cloned().unwrap_or(json!({}));
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "generateName",
            ] {
                match omd.get(k) {
                    Some(v) if k != "generateName" || !md.contains_key(k) => {
                        md.insert(k.into(), v.clone());
                    }
                    Some(_) => {}
                    None => {
                        if k != "generateName" {
                            md.remove(k);
                        }
                    }
                }
            }
            let sent_mf = md
                .get("managedFields")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if !sent_mf {
                match omd.get("managedFields") {
                    Some(mf) => {
                        md.insert("managedFields".into(), mf.clone());
                    }
                    None => {
                        md.remove("managedFields");
                    }
                }
            }
            user = merged.clone();
            defaults::on_update(self, def, &old, &mut merged)?;
        }
        // keep rv of the old object for the comparison
        metadata_mut(&mut merged).insert(
            "resourceVersion".into(),
            old.pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null),
        );
        if def.generation && !status_sub && spec_part(def, &merged) != spec_part(def, &old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut merged).insert("generation".into(), json!(g + 1));
        }
        normalize(def, &mut merged);
        if same_content(&merged, &old) {
            return Ok((*old).clone());
        }
        managed_hook(
            Some(&old),
            &mut merged,
            &user,
            def,
            ctx,
            if status_sub { Some("status") } else { None },
        );
        if ctx.dry_run {
            return Ok(merged);
        }
        self.rv += 1;
        metadata_mut(&mut merged)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        normalize(def, &mut merged);
        let arc = Arc::new(merged);
        self.commit(&def.storage, EventType::Modified, arc.clone(), Some(old));
        defaults::after_write(self, def, &arc);
        Ok((*arc).clone())
    }

    /// Deletes an object; returns its last state with the delete's resourceVersion.
    pub fn delete(
        &mut self,
        def: &Arc<ResourceDef>,
        ns: &str,
        name: &str,
        pre_uid: Option<&str>,
        pre_rv: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(u) = pre_uid {
            let have = meta_str(&old, "uid").unwrap_or_default();
            if u != have {
                return Err(ApiError::precondition(
                    def,
                    name,
                    &format!("the UID in the precondition ({u}) does not match the UID in record ({have}). The object might have been deleted and then recreated"),
                ));
            }
        }
        if let Some(r) = pre_rv {
            let have = meta_str(&old, "resourceVersion").unwrap_or_default();
            if r != have {
                return Err(ApiError::precondition(
                    def,
                    name,
                    &format!("the ResourceVersion in the precondition ({r}) does not match the ResourceVersion in record ({have}). The object might have been modified"),
                ));
            }
        }
        let mut obj = (*old).clone();
        if dry_run {
            return Ok(obj);
        }
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let arc = Arc::new(obj);
        self.commit(&def.storage, EventType::Deleted, arc.clone(), Some(old));
        defaults::after_delete(self, def, &arc);
        Ok((*arc).clone())
    }

    /// Deletes every object of a storage key (CRD removal) or of a namespace.
    pub fn purge(&mut self, storage: &str, namespace: Option<&str>) {
        let keys: Vec<(String, String)> = match self.tables.get(storage) {
            Some(t) => t
                .objects
                .keys()
                .filter(|(ns, _)| namespace.is_none_or(|n| n == ns))
                .cloned()
                .collect(),
            None => return,
        };
        for k in keys {
            let Some(old) = self
                .tables
                .get(storage)
                .and_then(|t| t.objects.get(&k))
                .cloned()
            else {
                continue;
            };
            self.rv += 1;
            let mut obj = (*old).clone();
            metadata_mut(&mut obj)
                .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
            self.commit(storage, EventType::Deleted, Arc::new(obj), Some(old));
        }
    }

    /// The objects of a resource as they were at `rv` (undoing the history after it), in key
    /// order; None when the history no longer reaches back to `rv`.
    pub fn list_at(&self, def: &ResourceDef, ns: Option<&str>, rv: u64) -> Option<Vec<Arc<Value>>> {
        let Some(t) = self.tables.get(&def.storage) else {
            return Some(vec![]);
        };
        if rv < t.compacted {
            return None;
        }
        let start = t.history.partition_point(|e| e.rv <= rv);
        if start == t.history.len() {
            return Some(self.list(def, ns));
        }
        let mut objs: BTreeMap<(String, String), Arc<Value>> = t
            .objects
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|x| x == n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in t.history.range(start..).rev() {
            let key = obj_key(&e.object);
            if ns.is_some_and(|x| x != key.0) {
                continue;
            }
            match (e.etype, &e.prev) {
                (EventType::Added, _) => {
                    objs.remove(&key);
                }
                (_, Some(prev)) => {
                    objs.insert(key, prev.clone());
                }
                (_, None) => {}
            }
        }
        Some(objs.into_values().collect())
    }

    /// All objects of a resource in key order, optionally in one namespace.
    pub fn list(&self, def: &ResourceDef, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(t) = self.tables.get(&def.storage) else {
            return vec![];
        };
        match ns {
            Some(ns) => t
                .objects
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => t.objects.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_ignores_only_resource_version_and_managed_fields() {
        let a = json!({"kind": "Lease", "metadata": {"name": "l", "resourceVersion": "5",
            "managedFields": [{"manager": "a"}], "labels": {"x": "1", "y": "2"}},
            "spec": {"holderIdentity": "n1"}});
        // other RV, no managedFields, keys in another order: the same content
        let b = json!({"spec": {"holderIdentity": "n1"}, "metadata": {"labels": {"y": "2", "x": "1"},
            "resourceVersion": "9", "name": "l"}, "kind": "Lease"});
        assert!(same_content(&a, &b));
        assert!(same_content(&b, &a));
        let mut c = b.clone();
        c["metadata"]["labels"]["x"] = json!("3");
        assert!(!same_content(&a, &c));
        let mut d = b.clone();
        d["spec"]["leaseDurationSeconds"] = json!(5);
        assert!(!same_content(&a, &d), "an added field is a change");
        assert!(!same_content(&d, &a), "a removed field is a change");
        let mut e = b.clone();
        e["metadata"]["uid"] = json!("u");
        assert!(!same_content(&a, &e), "other metadata counts");
        let no_meta = json!({"kind": "Lease", "spec": {"holderIdentity": "n1"}});
        assert!(!same_content(&a, &no_meta));
        assert!(same_content(&no_meta, &no_meta.clone()));
    }
}
