//! Per-kind server behaviour: Service defaulting and IP/port allocation, Lease MicroTime parsing,
//! Event validation, CRD registration, custom resource schema defaults.

use super::error::ApiError;
use super::resources::{from_crd, ResourceDef};
use super::store::{now_time, State, WriteCtx};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// IPv4 ClusterIP range of the stand-in (project address plan: never on the wire).
pub const CLUSTER_IPV4_BASE: [u8; 3] = [203, 0, 113];
/// IPv6 ClusterIP range 2001:db8:fff::/108.
pub const CLUSTER_IPV6_BASE: u128 = 0x2001_0db8_0fff_0000_0000_0000_0000_0000;

/// Storage key of core/v1 Services.
pub const SERVICES_STORAGE: &str = "/services";

/// ClusterIPs and node ports (incl. healthCheckNodePort) of one Service object.
fn allocations_of(svc: &Value) -> (Vec<&str>, Vec<u64>) {
    let ips = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut ports: Vec<u64> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("nodePort"))
                .filter_map(Value::as_u64)
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
    {
        ports.push(p);
    }
    (ips, ports)
}

/// What all stored Services hold, with reference counts (kube-apiserver's allocators are bitmaps
/// beside the store; this is their stand-in, updated on every committed Service write).
#[derive(Debug, Default)]
pub struct ServiceAllocs {
    ips: HashMap<String, u32>,
    ports: HashMap<u64, u32>,
}

impl ServiceAllocs {
    pub fn add(&mut self, svc: &Value) {
        let (ips, ports) = allocations_of(svc);
        for ip in ips {
            *self.ips.entry(ip.to_string()).or_default() += 1;
        }
        for p in ports {
            *self.ports.entry(p).or_default() += 1;
        }
    }

    pub fn remove(&mut self, svc: &Value) {
        let (ips, ports) = allocations_of(svc);
        for ip in ips {
            if let Some(n) = self.ips.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.ips.remove(ip);
                }
            }
        }
        for p in ports {
            if let Some(n) = self.ports.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(&p);
                }
            }
        }
    }
}

/// Addresses and ports taken by *other* Services, plus those this request has just taken.
struct Used<'a> {
    all: &'a ServiceAllocs,
    /// The stored version of the Service being written: its holdings do not count as taken.
    own: (Vec<&'a str>, Vec<u64>),
    new_ips: BTreeSet<String>,
    new_ports: BTreeSet<u64>,
}

impl<'a> Used<'a> {
    fn new(state: &'a State, key: &(String, String)) -> Self {
        let own = state
            .tables
            .get(SERVICES_STORAGE)
            .and_then(|t| t.objects.get(key))
            .map(|o| allocations_of(o))
            .unwrap_or_default();
        Used {
            all: &state.service_allocs,
            own,
            new_ips: BTreeSet::new(),
            new_ports: BTreeSet::new(),
        }
    }

    fn ip_taken(&self, ip: &str) -> bool {
        let held = self.all.ips.get(ip).copied().unwrap_or(0);
        let mine = self.own.0.iter().filter(|o| **o == ip).count() as u32;
        held > mine || self.new_ips.contains(ip)
    }

    /// Takes `ip` if free; false when taken.
    fn take_ip(&mut self, ip: String) -> bool {
        !self.ip_taken(&ip) && self.new_ips.insert(ip)
    }

    fn take_port(&mut self, p: u64) -> bool {
        let held = self.all.ports.get(&p).copied().unwrap_or(0);
        let mine = self.own.1.iter().filter(|o| **o == p).count() as u32;
        held <= mine && self.new_ports.insert(p)
    }
}

fn alloc_ip(used: &mut Used<'_>, v6: bool, seed: u64) -> Option<String> {
    if v6 {
        let size: u128 = 1 << 20;
        for i in 0..size.min(65536) {
            let off = ((seed as u128).wrapping_add(i)) % (size - 1) + 1;
            let ip = Ipv6Addr::from(CLUSTER_IPV6_BASE + off).to_string();
            if used.take_ip(ip.clone()) {
                return Some(ip);
            }
        }
        None
    } else {
        for i in 0..254u64 {
            let host = ((seed + i) % 254 + 1) as u8;
            let [a, b, c] = CLUSTER_IPV4_BASE;
            let ip = Ipv4Addr::new(a, b, c, host).to_string();
            if used.take_ip(ip.clone()) {
                return Some(ip);
            }
        }
        None
    }
}

fn alloc_port(used: &mut Used<'_>) -> Option<u64> {
    use rand::Rng;
    let start = rand::rng().random_range(30000..=32767u64);
    (0..2768u64)
        .map(|i| 30000 + (start - 30000 + i) % 2768)
        .find(|p| used.take_port(*p))
}

fn validate_service(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut causes = Vec::new();
    if let Some(ports) = obj.pointer("/spec/ports").and_then(Value::as_array) {
        for (i, p) in ports.iter().enumerate() {
            match p.get("port").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => causes.push((
                    "FieldValueInvalid",
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    format!("spec.ports[{i}].port"),
                )),
                None => causes.push((
                    "FieldValueRequired",
                    "Required value".to_string(),
                    format!("spec.ports[{i}].port"),
                )),
            }
            if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    causes.push((
                        "FieldValueNotSupported",
                        format!("Unsupported value: \"{proto}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
                        format!("spec.ports[{i}].protocol"),
                    ));
                }
            }
        }
    }
    if let Some(t) = obj.pointer("/spec/type").and_then(Value::as_str) {
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&t) {
            causes.push((
                "FieldValueNotSupported",
                format!("Unsupported value: \"{t}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                "spec.type".into(),
            ));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(def, name, causes))
    }
}

/// Defaults and allocations of a Service (13, 28, 45). `old` keeps allocated values on update.
fn default_service(
    state: &State,
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    validate_service(def, obj)?;
    let key = (
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    );
    let mut used = Used::new(state, &key);
    let o = obj.as_object_mut().expect("object");
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    let spec = spec.as_object_mut().expect("object");
    let stype = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    spec.insert("type".into(), json!(stype));
    let ospec = old.and_then(|o| o.get("spec"));
    // keep allocated values a PUT omitted (28)
    if let Some(os) = ospec {
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "healthCheckNodePort",
        ] {
            if !spec.contains_key(k) {
                if let Some(v) = os.get(k) {
                    if k != "healthCheckNodePort"
                        || spec.get("externalTrafficPolicy").and_then(Value::as_str)
                            == Some("Local")
                    {
                        spec.insert(k.into(), v.clone());
                    }
                }
            }
        }
    }
    if let (Some(os), Some(new_ip)) = (ospec, spec.get("clusterIP").and_then(Value::as_str)) {
        let old_ip = os.get("clusterIP").and_then(Value::as_str).unwrap_or("");
        if !old_ip.is_empty() && new_ip != old_ip && stype != "ExternalName" {
            let name = key.1.clone();
            return Err(ApiError::invalid(
                def,
                &name,
                vec![(
                    "FieldValueInvalid",
                    format!("Invalid value: []string{{\"{new_ip}\"}}: may not change once set"),
                    "spec.clusterIPs[0]".into(),
                )],
            ));
        }
    }
    if old.is_none() {
        if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str) {
            if !ip.is_empty() && ip != "None" && used.ip_taken(ip) {
                return Err(ApiError::invalid(
                    def,
                    &key.1,
                    vec![(
                        "FieldValueInvalid",
                        format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                        "spec.clusterIPs".into(),
                    )],
                ));
            }
        }
    }
    if stype != "ExternalName" {
        spec.entry("sessionAffinity").or_insert(json!("None"));
        if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            let sac = spec
                .entry("sessionAffinityConfig")
                .or_insert_with(|| json!({}));
            if let Some(m) = sac.as_object_mut() {
                let cip = m.entry("clientIP").or_insert_with(|| json!({}));
                if let Some(c) = cip.as_object_mut() {
                    c.entry("timeoutSeconds").or_insert(json!(10800));
                }
            }
        } else {
            spec.remove("sessionAffinityConfig");
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(json!(0));
                match p.get("targetPort") {
                    None | Some(Value::Null) => {
                        p.insert("targetPort".into(), port);
                    }
                    Some(v) if v.as_i64() == Some(0) => {
                        p.insert("targetPort".into(), port);
                    }
                    _ => {}
                }
                if !p.contains_key("nodePort") {
                    if let Some(oport) = ospec
                        .and_then(|s| s.get("ports"))
                        .and_then(Value::as_array)
                        .and_then(|a| {
                            a.iter().find(|op| {
                                op.get("port") == p.get("port")
                                    && op.get("protocol") == p.get("protocol")
                            })
                        })
                        .and_then(|op| op.get("nodePort"))
                    {
                        p.insert("nodePort".into(), oport.clone());
                    }
                }
            }
        }
        // IP families
        let policy = spec
            .get("ipFamilyPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut fams: Vec<String> = str_list(spec.get("ipFamilies"));
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        if fams.is_empty() {
            fams.push("IPv4".into());
        }
        let policy = policy.unwrap_or_else(|| "SingleStack".into());
        if policy != "SingleStack" && fams.len() == 1 {
            fams.push(if fams[0] == "IPv4" { "IPv6" } else { "IPv4" }.into());
        }
        if policy == "SingleStack" {
            fams.truncate(1);
        }
        spec.insert("ipFamilies".into(), json!(fams));
        spec.insert("ipFamilyPolicy".into(), json!(policy));
        if headless {
            spec.insert("clusterIPs".into(), json!(["None"]));
        } else {
            let mut ips: Vec<String> = str_list(spec.get("clusterIPs"));
            if ips.is_empty() {
                if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str) {
                    if !ip.is_empty() {
                        ips.push(ip.to_string());
                    }
                }
            }
            let seed = {
                use sha2::Digest;
                let h = sha2::Sha256::digest(format!("{}/{}", key.0, key.1));
                u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
            };
            for (i, fam) in fams.iter().enumerate() {
                if ips.len() > i {
                    continue;
                }
                match alloc_ip(&mut used, fam == "IPv6", seed) {
                    Some(ip) => ips.push(ip),
                    None => {
                        return Err(ApiError::internal(
                            "failed to allocate a serviceIP: range is full",
                        ))
                    }
                }
            }
            spec.insert("clusterIP".into(), json!(ips[0]));
            spec.insert("clusterIPs".into(), json!(ips));
        }
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    if stype == "NodePort" || stype == "LoadBalancer" {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
        let alloc_np = if stype == "LoadBalancer" {
            let v = spec
                .get("allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            spec.insert("allocateLoadBalancerNodePorts".into(), json!(v));
            v
        } else {
            true
        };
        if alloc_np {
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                        let np = alloc_port(&mut used)
                            .ok_or_else(|| ApiError::internal("range is full"))?;
                        p.insert("nodePort".into(), json!(np));
                    }
                }
            }
        }
        if stype == "LoadBalancer"
            && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
            && spec
                .get("healthCheckNodePort")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                == 0
        {
            let np = alloc_port(&mut used).ok_or_else(|| ApiError::internal("range is full"))?;
            spec.insert("healthCheckNodePort".into(), json!(np));
        }
    } else {
        spec.remove("externalTrafficPolicy");
        spec.remove("healthCheckNodePort");
        spec.remove("allocateLoadBalancerNodePorts");
        // node ports are released when a Service stops being NodePort/LoadBalancer
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
    }
    service_status(obj);
    Ok(())
}

/// status.loadBalancer {} and ingress ipMode VIP.
pub fn service_status(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let st = o.entry("status").or_insert_with(|| json!({}));
    if !st.is_object() {
        *st = json!({});
    }
    let lb = st
        .as_object_mut()
        .expect("object")
        .entry("loadBalancer")
        .or_insert_with(|| json!({}));
    if let Some(Value::Array(ing)) = lb.get_mut("ingress") {
        for i in ing.iter_mut().filter_map(Value::as_object_mut) {
            if i.contains_key("ip") && !i.contains_key("ipMode") {
                i.insert("ipMode".into(), json!("VIP"));
            }
        }
    }
}

/// Parses a MicroTime as Go's `2006-01-02T15:04:05.000000Z07:00`; returns the UTC form.
pub fn parse_micro_time(s: &str) -> Result<String, String> {
    static RE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")
            .ok()
    });
    let re = RE.as_ref().ok_or("time regex")?;
    let layout = "2006-01-02T15:04:05.000000Z07:00";
    let caps = re.captures(s).ok_or_else(|| {
        let detail = match s.find('.') {
            None => {
                let tail = s.get(19..).unwrap_or("");
                format!("cannot parse \"{tail}\" as \".000000\"")
            }
            Some(_) => "cannot parse time".to_string(),
        };
        format!("parsing time \"{s}\" as \"{layout}\": {detail}")
    })?;
    if &caps[4] == "Z" {
        return Ok(s.to_string());
    }
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("parsing time \"{s}\" as \"{layout}\": {e}"))?;
    Ok(ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

fn check_lease(obj: &mut Value) -> Result<(), ApiError> {
    for f in ["acquireTime", "renewTime"] {
        let Some(v) = obj.get("spec").and_then(|s| s.get(f)) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let s = v.as_str().ok_or_else(|| {
            ApiError::bad_request(&format!(
                "Lease in version \"v1\" cannot be handled as a Lease: json: cannot unmarshal {} into Go struct field LeaseSpec.spec.{f} of type string",
                if v.is_number() { "number" } else { "value" }
            ))
        })?;
        let norm = parse_micro_time(s).map_err(|e| {
            ApiError::bad_request(&format!(
                "Lease in version \"v1\" cannot be handled as a Lease: {e}"
            ))
        })?;
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert(f.into(), json!(norm));
        }
    }
    Ok(())
}

fn check_event(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if def.group != "events.k8s.io" {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if obj.get("eventTime").is_none_or(Value::is_null) {
        return Err(ApiError::invalid(
            def,
            &name,
            vec![(
                "FieldValueRequired",
                "Required value".into(),
                "eventTime".into(),
            )],
        ));
    }
    if let Some(t) = obj.get("eventTime").and_then(Value::as_str) {
        let norm = parse_micro_time(t).map_err(|e| {
            ApiError::bad_request(&format!(
                "Event in version \"v1\" cannot be handled as a Event: {e}"
            ))
        })?;
        obj.as_object_mut()
            .expect("object")
            .insert("eventTime".into(), json!(norm));
    }
    let s = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut causes = Vec::new();
    let rc = s("reportingController");
    if rc.is_empty() {
        causes.push((
            "FieldValueRequired",
            "Required value".to_string(),
            "reportingController".to_string(),
        ));
        causes.push((
            "FieldValueInvalid",
            "Invalid value: \"\": name part must be non-empty".into(),
            "reportingController".into(),
        ));
        causes.push(("FieldValueInvalid", "Invalid value: \"\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into(), "reportingController".into()));
    }
    for f in ["reportingInstance", "action", "reason"] {
        if s(f).is_empty() {
            causes.push(("FieldValueRequired", "Required value".into(), f.into()));
        }
    }
    let t = s("type");
    if !t.is_empty() && t != "Normal" && t != "Warning" {
        causes.push((
            "FieldValueNotSupported",
            format!("Unsupported value: \"{t}\": supported values: \"Normal\", \"Warning\""),
            "type".into(),
        ));
    }
    if causes.is_empty() {
        super::events::fill_events_v1(obj);
        Ok(())
    } else {
        Err(ApiError::invalid(def, &name, causes))
    }
}

/// Applies `default` values of an OpenAPI v3 schema (recursively into present objects).
pub fn apply_schema_defaults(schema: &Value, obj: &mut Value) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        if let (Some(items), Some(arr)) = (schema.get("items"), obj.as_array_mut()) {
            for it in arr {
                apply_schema_defaults(items, it);
            }
        }
        return;
    };
    let Some(o) = obj.as_object_mut() else { return };
    for (k, ps) in props {
        if k == "metadata" || k == "apiVersion" || k == "kind" {
            continue;
        }
        if !o.contains_key(k) {
            if let Some(d) = ps.get("default") {
                o.insert(k.clone(), d.clone());
            }
        }
        if let Some(child) = o.get_mut(k) {
            apply_schema_defaults(ps, child);
        }
    }
}

/// Removes fields not in the schema (structural pruning); returns the pruned paths.
pub fn prune(schema: &Value, obj: &mut Value, path: &str, out: &mut Vec<String>) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        if let Some(o) = obj.as_object_mut() {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if path.is_empty() && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match props.get(&k) {
                    Some(ps) => {
                        if let Some(c) = o.get_mut(&k) {
                            prune(ps, c, &p, out);
                        }
                    }
                    None => {
                        o.remove(&k);
                        out.push(p);
                    }
                }
            }
        }
    } else if let Some(ap) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        if let Some(o) = obj.as_object_mut() {
            for (k, c) in o.iter_mut() {
                let p = format!("{path}.{k}");
                prune(ap, c, &p, out);
            }
        }
    } else if let Some(items) = schema.get("items") {
        if let Some(a) = obj.as_array_mut() {
            for (i, c) in a.iter_mut().enumerate() {
                prune(items, c, &format!("{path}[{i}]"), out);
            }
        }
    }
}

fn custom_resource(
    def: &ResourceDef,
    obj: &mut Value,
    ctx_warn: Option<&mut Vec<String>>,
) -> Result<(), ApiError> {
    if let Some(schema) = &def.schema {
        let mut pruned = Vec::new();
        prune(schema, obj, "", &mut pruned);
        if let Some(w) = ctx_warn {
            w.extend(pruned.into_iter().map(|p| format!("unknown field \"{p}\"")));
        }
        apply_schema_defaults(schema, obj);
        check_custom(def, obj)?;
    }
    Ok(())
}

/// Schema validation of a custom resource (422 with causes, golden 78).
pub fn check_custom(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let causes = super::validation::validate_custom(def, obj);
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(ApiError::invalid(def, name, causes))
}

/// Kind-specific work before a create is stored (defaults, validation); pruned unknown fields
/// of custom resources are added to `warn`.
pub fn on_create_warn(
    state: &mut State,
    def: &Arc<ResourceDef>,
    obj: &mut Value,
    warn: Option<&mut Vec<String>>,
) -> Result<(), ApiError> {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let labels = md.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
        }
        ("", "services") => default_service(state, def, obj, None)?,
        ("coordination.k8s.io", "leases") => check_lease(obj)?,
        (_, "events") => check_event(def, obj)?,
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            from_crd(obj).map_err(|e| crd_invalid(def, obj, &e))?;
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("conversion")
                    .or_insert_with(|| json!({"strategy": "None"}));
            }
            let o = obj.as_object_mut().expect("object");
            o.insert(
                "status".into(),
                json!({"conditions": null, "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": []}),
            );
            let stored: Vec<Value> = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                        .filter_map(|v| v.get("name").cloned())
                        .collect()
                })
                .unwrap_or_default();
            if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
                st.insert("storedVersions".into(), Value::Array(stored));
            }
        }
        _ if def.custom => custom_resource(def, obj, warn)?,
        _ => {}
    }
    Ok(())
}

fn crd_invalid(def: &ResourceDef, obj: &Value, e: &str) -> ApiError {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (field, msg) = e.split_once(": ").unwrap_or(("spec", e));
    ApiError::invalid(
        def,
        name,
        vec![("FieldValueInvalid", msg.to_string(), field.to_string())],
    )
}

/// Kind-specific work before an update (main resource) is stored.
pub fn on_update(
    state: &mut State,
    def: &Arc<ResourceDef>,
    old: &Value,
    obj: &mut Value,
) -> Result<(), ApiError> {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "services") => default_service(state, def, obj, Some(old))?,
        ("coordination.k8s.io", "leases") => check_lease(obj)?,
        (_, "events") => check_event(def, obj)?,
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            from_crd(obj).map_err(|e| crd_invalid(def, obj, &e))?;
        }
        _ if def.custom => custom_resource(def, obj, None)?,
        _ => {}
    }
    Ok(())
}

/// Server-set fields that no manager owns (set after managedFields are computed).
pub fn after_managed(def: &ResourceDef, obj: &mut Value) {
    if def.group.is_empty() && def.plural == "namespaces" {
        let Some(o) = obj.as_object_mut() else { return };
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(sp) = spec.as_object_mut() {
            sp.entry("finalizers")
                .or_insert_with(|| json!(["kubernetes"]));
        }
        o.insert("status".into(), json!({"phase": "Active"}));
    }
}

/// Kind-specific work on a /status write.
pub fn on_status(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if def.group.is_empty() && def.plural == "services" {
        service_status(obj);
    }
    if def.custom {
        if let Some(schema) = &def.schema {
            let mut pruned = Vec::new();
            prune(schema, obj, "", &mut pruned);
            apply_schema_defaults(schema, obj);
        }
        check_custom(def, obj)?;
    }
    Ok(())
}

/// After a committed write: a CRD registers its resources and becomes Established.
pub fn after_write(state: &mut State, def: &Arc<ResourceDef>, obj: &Arc<Value>) {
    if def.group != "apiextensions.k8s.io" || def.plural != "customresourcedefinitions" {
        return;
    }
    let Ok(defs) = from_crd(obj) else { return };
    super::schema_keys::register_crd(obj);
    let storage = defs[0].storage.clone();
    state.registry.set_custom(&storage, defs.clone());
    let established = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Established")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    if established {
        return;
    }
    let now = now_time();
    let d = &defs[0];
    let mut accepted = serde_json::Map::new();
    accepted.insert("plural".into(), json!(d.plural));
    accepted.insert("singular".into(), json!(d.singular));
    if !d.short_names.is_empty() {
        accepted.insert("shortNames".into(), json!(d.short_names));
    }
    accepted.insert("kind".into(), json!(d.kind));
    accepted.insert("listKind".into(), json!(d.list_kind));
    if !d.categories.is_empty() {
        accepted.insert("categories".into(), json!(d.categories));
    }
    let mut status = obj.get("status").cloned().unwrap_or(json!({}));
    if let Some(st) = status.as_object_mut() {
        st.insert(
            "conditions".into(),
            json!([
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
            ]),
        );
        st.insert("acceptedNames".into(), Value::Object(accepted));
    }
    let (_, name) = super::store::obj_key(obj);
    let ctx = WriteCtx {
        manager: "kube-apiserver".into(),
        now,
        operation: "Update".into(),
        ..Default::default()
    };
    let _ = state.update(def, "", &name, json!({"status": status}), true, None, &ctx);
}

/// After a committed delete: a CRD's resources go away; a namespace takes its objects along.
pub fn after_delete(state: &mut State, def: &Arc<ResourceDef>, obj: &Arc<Value>) {
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        if let Ok(defs) = from_crd(obj) {
            let storage = defs[0].storage.clone();
            state.purge(&storage, None);
            state.registry.remove_storage(&storage);
        }
    } else if def.group.is_empty() && def.plural == "namespaces" {
        let (_, ns) = super::store::obj_key(obj);
        let storages: Vec<String> = state
            .registry
            .defs
            .iter()
            .filter(|d| d.namespaced)
            .map(|d| d.storage.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for s in storages {
            state.purge(&s, Some(&ns));
        }
    }
}

/// The string items of a JSON array (non-strings skipped; absent or not an array = empty).
pub(crate) fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation index follows creates, updates and deletes: a freed node port and
    /// ClusterIP can be taken again, a held one cannot, and an update keeps its own.
    #[test]
    fn service_allocations_follow_every_commit() {
        let mut st = State::new(100);
        let def = st.registry.find("", "v1", "services").expect("services");
        let ctx = WriteCtx {
            manager: "test".into(),
            now: now_time(),
            operation: "Update".into(),
            ..Default::default()
        };
        let svc = |name: &str, ip: Option<&str>| {
            let mut o = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
            if let Some(ip) = ip {
                o["spec"]["clusterIP"] = json!(ip);
            }
            o
        };
        let a = st
            .create(&def, Some("default"), svc("a", None), &ctx)
            .expect("a");
        let a_ip = a["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .to_string();
        let a_port = a["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("nodePort");
        assert!(st.service_allocs.ips.contains_key(&a_ip));
        assert_eq!(st.service_allocs.ports.get(&a_port), Some(&1));

        let e = st
            .create(&def, Some("default"), svc("b", Some(&a_ip)), &ctx)
            .expect_err("a's ClusterIP is taken");
        assert!(
            format!("{e:?}").contains("provided IP is already allocated"),
            "{e:?}"
        );

        // An update (here: a label) keeps a's own ClusterIP and node port.
        let mut a2 = a.clone();
        a2["metadata"]["labels"] = json!({"x": "y"});
        let a2 = st
            .update(&def, "default", "a", a2, false, None, &ctx)
            .expect("update");
        assert_eq!(a2["spec"]["ports"][0]["nodePort"].as_u64(), Some(a_port));
        assert_eq!(st.service_allocs.ports.get(&a_port), Some(&1));

        st.delete(&def, "default", "a", None, None, false)
            .expect("delete");
        assert!(!st.service_allocs.ips.contains_key(&a_ip));
        assert!(!st.service_allocs.ports.contains_key(&a_port));
        let b = st
            .create(&def, Some("default"), svc("b", Some(&a_ip)), &ctx)
            .expect("the freed ClusterIP can be requested again");
        assert_eq!(b["spec"]["clusterIP"].as_str(), Some(a_ip.as_str()));
    }

    #[test]
    fn micro_time_strict() {
        assert_eq!(
            parse_micro_time("2026-11-22T07:58:05.000000Z").unwrap(),
            "2026-11-22T07:58:05.000000Z"
        );
        assert_eq!(
            parse_micro_time("2026-11-22T09:58:05.123456+02:00").unwrap(),
            "2026-11-22T07:58:05.123456Z"
        );
        let e = parse_micro_time("2026-11-22T07:58:05Z").unwrap_err();
        assert!(e.contains("cannot parse \"Z\" as \".000000\""), "{e}");
        assert!(parse_micro_time("2026-11-22T07:58:05.1Z").is_err());
        assert!(parse_micro_time("2026-11-22T07:58:05.123456789Z").is_err());
        assert!(parse_micro_time("2026-11-22 07:58:05.123456Z").is_err());
    }

    #[test]
    fn schema_defaults_and_pruning() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "disabled": {"type": "boolean", "default": false},
                "blocks": {"type": "array", "items": {"type": "object", "properties": {"cidr": {"type": "string"}}}}
            }}
        }});
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"blocks": [{"cidr": "198.51.100.0/24", "bogus": 1}], "extra": true}});
        let mut pruned = Vec::new();
        prune(&schema, &mut o, "", &mut pruned);
        apply_schema_defaults(&schema, &mut o);
        assert_eq!(pruned, vec!["spec.blocks[0].bogus", "spec.extra"]);
        assert_eq!(o["spec"]["disabled"], json!(false));
        assert_eq!(o["metadata"]["name"], json!("a"));
    }
}
