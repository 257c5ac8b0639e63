//! The resource registry: which group/version/resource exist, with their discovery data.

use serde_json::Value;
use std::sync::Arc;

/// One served group/version/resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource.
    pub status: bool,
    /// A custom resource (CRD-defined): sorted keys, Status body on delete, 415 for strategic merge.
    pub custom: bool,
    /// metadata.generation is kept (bumped on spec changes).
    pub generation: bool,
    /// DELETE answers with the deleted object (else a Status Success).
    pub delete_returns_object: bool,
    /// Field selector labels accepted beyond metadata.name/metadata.namespace.
    pub field_labels: Vec<String>,
    /// Storage table key: the same objects can be served under several versions.
    pub storage: String,
    /// openAPIV3Schema of a CRD version (for defaults and pruning).
    pub schema: Option<Value>,
    /// additionalPrinterColumns of a CRD version.
    pub printer_columns: Vec<Value>,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `services` or `leases.coordination.k8s.io` (used in messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// Field selector labels this resource accepts.
    pub fn allowed_fields(&self) -> Vec<String> {
        let mut v = vec!["metadata.name".to_string()];
        if self.namespaced {
            v.push("metadata.namespace".to_string());
        }
        v.extend(self.field_labels.iter().cloned());
        v
    }
    /// The verbs shown in discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.custom {
            // the order kube-apiserver lists for custom resources (11)
            return vec![
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        status,
        custom: false,
        generation: false,
        delete_returns_object: false,
        field_labels: vec![],
        storage: format!("{group}/{plural}"),
        schema: None,
        printer_columns: vec![],
    }
}

/// The built-in resources the stand-in serves.
pub fn builtins() -> Vec<ResourceDef> {
    let mut ns = builtin(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        true,
    );
    ns.delete_returns_object = true;
    ns.field_labels = vec!["status.phase".into()];
    let mut svc = builtin(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        true,
    );
    svc.delete_returns_object = true;
    svc.categories = vec!["all".into()];
    svc.field_labels = vec!["spec.clusterIP".into(), "spec.type".into()];
    let mut node = builtin("", "v1", "nodes", "node", "Node", false, &["no"], true);
    node.field_labels = vec!["spec.unschedulable".into()];
    let ep = builtin(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
    );
    let ev_fields: Vec<String> = [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cev = builtin("", "v1", "events", "event", "Event", true, &["ev"], false);
    cev.field_labels = ev_fields.clone();
    // one storage for both Event APIs (golden 76)
    cev.storage = "events.k8s.io/events".into();
    let mut eev = builtin(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        false,
    );
    eev.field_labels = ev_fields;
    let eps = builtin(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        false,
    );
    let lease = builtin(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        false,
    );
    let mut crd = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    );
    crd.generation = true;
    crd.categories = vec!["api-extensions".into()];
    // What an install of ferrolb itself consists of (deploy/, the Helm chart), so that kubectl
    // can map and apply it: workloads, their identities and RBAC, config.
    let mut deploy = builtin(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        true,
    );
    deploy.generation = true;
    let mut ds = builtin(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        true,
    );
    ds.generation = true;
    let sa = builtin(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    );
    let cm = builtin(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        false,
    );
    let rbac = "rbac.authorization.k8s.io";
    let role = builtin(rbac, "v1", "roles", "role", "Role", true, &[], false);
    let rb = builtin(
        rbac,
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        false,
    );
    let cr = builtin(
        rbac,
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        false,
    );
    let crb = builtin(
        rbac,
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    );
    // API Priority and Fairness (deploy/flowcontrol.yaml): stored, not enforced.
    let fc = "flowcontrol.apiserver.k8s.io";
    let fs = builtin(
        fc,
        "v1",
        "flowschemas",
        "flowschema",
        "FlowSchema",
        false,
        &[],
        true,
    );
    let plc = builtin(
        fc,
        "v1",
        "prioritylevelconfigurations",
        "prioritylevelconfiguration",
        "PriorityLevelConfiguration",
        false,
        &[],
        true,
    );
    vec![
        ns, svc, node, ep, cev, eev, eps, lease, crd, deploy, ds, sa, cm, role, rb, cr, crb, fs,
        plc,
    ]
}

/// Builds the resource definitions of a CustomResourceDefinition (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceDef>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let group = s(spec.get("group")).ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = s(names.get("plural")).ok_or("spec.names.plural: Required value")?;
    let kind = s(names.get("kind")).ok_or("spec.names.kind: Required value")?;
    let singular = s(names.get("singular")).unwrap_or_else(|| kind.to_lowercase());
    let list_kind = s(names.get("listKind")).unwrap_or_else(|| format!("{kind}List"));
    let short_names = super::defaults::str_list(names.get("shortNames"));
    let categories = super::defaults::str_list(names.get("categories"));
    let namespaced = match s(spec.get("scope")).as_deref() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => return Err(format!("spec.scope: Unsupported value: {other:?}")),
    };
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let version = s(v.get("name")).ok_or("spec.versions[].name: Required value")?;
        let status = v.pointer("/subresources/status").is_some();
        let field_labels = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceDef {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status,
            custom: true,
            generation: true,
            delete_returns_object: false,
            field_labels,
            storage: format!("{group}/{plural}"),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        });
    }
    if out.is_empty() {
        return Err("spec.versions: Invalid value: must have at least one served version".into());
    }
    Ok(out)
}

/// All served resources, in registration order (discovery order).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        Self {
            defs: builtins().into_iter().map(Arc::new).collect(),
        }
    }
    /// Looks a resource up by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }
    /// True when the group/version is served.
    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.defs
            .iter()
            .any(|d| d.group == group && d.version == version)
    }
    /// Groups in order, with their versions in order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for d in &self.defs {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    if !vs.contains(&d.version) {
                        vs.push(d.version.clone())
                    }
                }
                None => out.push((d.group.clone(), vec![d.version.clone()])),
            }
        }
        out
    }
    /// Replaces the definitions of one storage key (a CRD re-registered) or adds them.
    pub fn set_custom(&mut self, storage: &str, defs: Vec<ResourceDef>) {
        self.defs.retain(|d| d.storage != storage);
        self.defs.extend(defs.into_iter().map(Arc::new));
    }
    /// Removes a CRD's definitions.
    pub fn remove_storage(&mut self, storage: &str) {
        self.defs.retain(|d| d.storage != storage);
    }
}
