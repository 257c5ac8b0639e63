//! Request decoding and routing: one handler on hyper 1 types, used in-process and over TCP.

use super::body::Body;
use super::error::ApiError;
use super::resources::ResourceDef;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{normalize, now_time, obj_key, WriteCtx};
use super::{discovery, table, watch, Inner};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// A request that must not be answered (fault injection): the connection is closed.
#[derive(Debug)]
pub struct Hangup(pub &'static str);

impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection closed by fault injection ({})", self.0)
    }
}
impl std::error::Error for Hangup {}

/// Query parameters (last value wins).
pub type Query = HashMap<String, String>;

pub fn parse_query(q: Option<&str>) -> Query {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

/// Go's HTML-safe JSON encoding: `<`, `>`, `&` as \u003c, \u003e, \u0026.
pub fn encode_json(v: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    // Most objects have nothing to escape (0xE2 leads U+2028/U+2029 and other characters)
    if !bytes.iter().any(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2)) {
        bytes.push(b'\n');
        return bytes;
    }
    let s = String::from_utf8_lossy(&bytes);
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out.into_bytes()
}

pub fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = Response::new(Body::full(encode_json(v)));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    for w in warnings {
        let escaped = w.replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            h.append(header::WARNING, v);
        }
    }
    r
}

pub fn text_response(code: u16, content_type: &'static str, text: String) -> Response<Body> {
    let mut r = Response::new(Body::full(text));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    match &e.text {
        Some(t) => text_response(e.code, "text/plain; charset=utf-8", t.clone()),
        None => json_response(e.code, &e.body, &[]),
    }
}

/// Which resource a path names.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// What one request was, for the counters.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    pub verb: String,
    pub resource: String,
}

/// Identity of the caller: the bearer token (or "anonymous").
pub fn identity_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "anonymous".into())
}

fn resolve(inner: &Inner, segs: &[&str]) -> Result<Option<Target>, ApiError> {
    // segs: ["api","v1",...] or ["apis",G,V,...]
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(None),
    };
    let st = inner.lock();
    if !st.registry.has_group_version(group, version) {
        return Err(ApiError::page_not_found());
    }
    let find = |plural: &str| st.registry.find(group, version, plural);
    let (def, namespace, name, sub) = match rest {
        [] => return Ok(None),
        ["namespaces", ns, res, tail @ ..]
            if group.is_empty() && *res != "status" && *res != "finalize" || !group.is_empty() =>
        {
            let def = find(res).ok_or_else(ApiError::resource_not_found)?;
            if !def.namespaced {
                return Err(ApiError::resource_not_found());
            }
            match tail {
                [] => (def, Some(ns.to_string()), None, None),
                [n] => (def, Some(ns.to_string()), Some(n.to_string()), None),
                [n, s] => (
                    def,
                    Some(ns.to_string()),
                    Some(n.to_string()),
                    Some(s.to_string()),
                ),
                _ => return Err(ApiError::page_not_found()),
            }
        }
        [res, tail @ ..] => {
            let def = find(res).ok_or_else(ApiError::resource_not_found)?;
            match tail {
                [] => (def, None, None, None),
                [n] => (def, None, Some(n.to_string()), None),
                [n, s] => (def, None, Some(n.to_string()), Some(s.to_string())),
                _ => return Err(ApiError::page_not_found()),
            }
        }
    };
    if let Some(s) = &sub {
        if !(s == "status" && def.status) {
            return Err(ApiError::resource_not_found());
        }
    }
    if def.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::resource_not_found());
    }
    Ok(Some(Target {
        def,
        namespace,
        name,
        sub,
    }))
}

fn decode_body(def: &ResourceDef, body: &[u8], ct: &str) -> Result<Value, ApiError> {
    if ct.contains("protobuf") || ct.contains("cbor") {
        // the stand-in speaks JSON (and YAML) only
        return Err(ApiError::status(
            415,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (this API stand-in does not decode {ct})"),
            Some(json!({})),
        ));
    }
    let v: Value = if ct.contains("yaml") {
        serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(&format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(&format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(&format!(
            "{} in version \"{}\" cannot be handled as a {}: body is not an object",
            def.kind, def.version, def.kind
        )));
    }
    Ok(v)
}

fn check_kind(def: &ResourceDef, v: &Value) -> Result<(), ApiError> {
    if let Some(k) = v.get("kind").and_then(Value::as_str) {
        if k != def.kind {
            return Err(ApiError::bad_request(&format!(
                "the API version in the data ({}) does not match the expected API version ({}) or kind {k} does not match {}",
                v.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
                def.api_version(),
                def.kind
            )));
        }
    }
    if let Some(av) = v.get("apiVersion").and_then(Value::as_str) {
        let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if group != def.group {
            return Err(ApiError::bad_request(&format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
    }
    Ok(())
}

/// The field manager of a write: `fieldManager=` or the User-Agent's product name.
fn manager_of<B>(req: &Request<B>, q: &Query) -> String {
    if let Some(m) = q.get("fieldManager") {
        return m.clone();
    }
    req.headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn strip_item(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.shift_remove("kind");
        m.shift_remove("apiVersion");
    }
    v
}

/// Re-labels an object stored under another served version.
pub fn as_version(def: &ResourceDef, obj: &Value) -> Value {
    if def.kind == "Event" && !def.custom {
        let stored = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if stored != def.api_version() {
            return if def.group.is_empty() {
                super::events::to_core(obj)
            } else {
                super::events::to_events_v1(obj)
            };
        }
    }
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        if m.get("apiVersion").and_then(Value::as_str) != Some(def.api_version().as_str()) {
            m.insert("apiVersion".into(), json!(def.api_version()));
        }
    }
    o
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, key: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: format!("/{key}\u{0}"),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<(u64, String), ApiError> {
    let bad =
        || ApiError::bad_request("continue key is not valid: illegal base64 data at input byte 0");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" {
        return Err(ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ));
    }
    let key = t
        .start
        .trim_start_matches('/')
        .trim_end_matches('\u{0}')
        .to_string();
    Ok((t.rv, key))
}

/// Parsed list/watch selectors.
pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn parse(def: &ResourceDef, q: &Query) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(&format!("unable to parse requirement: {e}")))?;
        let field = FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            &def.allowed_fields(),
        )
        .map_err(|e| ApiError::bad_request(&e))?;
        Ok(Self { label, field })
    }
    /// True when nothing is selected on (every object matches).
    pub fn is_empty(&self) -> bool {
        self.label.0.is_empty() && self.field.0.is_empty()
    }
    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches(obj.pointer("/metadata/labels")) && self.field.matches(obj)
    }
}

fn list(inner: &Inner, t: &Target, q: &Query) -> Result<Value, ApiError> {
    let sel = Selectors::parse(&t.def, q)?;
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .map(|l| l as usize)
        .unwrap_or(0);
    let st = inner.lock();
    let table_compacted = st
        .tables
        .get(&t.def.storage)
        .map(|t| t.compacted)
        .unwrap_or(0);
    let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rv, key) = decode_continue(c)?;
            if rv < table_compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            (rv, Some(key))
        }
        None => {
            let mut rv_out = st.rv;
            if let Some(rv) = q
                .get("resourceVersion")
                .filter(|r| !r.is_empty() && *r != "0")
            {
                let n: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(&format!("invalid resource version: {rv}"))
                })?;
                if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
                    if n < table_compacted {
                        return Err(ApiError::expired(
                            "The resourceVersion for the provided list is too old.",
                        ));
                    }
                    rv_out = n.min(st.rv);
                }
            }
            (rv_out, None)
        }
    };
    // continue pages and exact-RV lists are served from a snapshot at their RV
    let exact =
        after.is_some() || q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    let (list_rv, objs) = if exact && list_rv != st.rv {
        match st.list_at(&t.def, t.namespace.as_deref(), list_rv) {
            Some(o) => (list_rv, o),
            None => {
                return Err(ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ))
            }
        }
    } else {
        (list_rv, st.list(&t.def, t.namespace.as_deref()))
    };
    drop(st);
    let key_of = |o: &Value| {
        let (ns, name) = obj_key(o);
        if t.def.namespaced && t.namespace.is_none() {
            format!("{ns}/{name}")
        } else {
            name
        }
    };
    let mut items = Vec::new();
    let mut remaining = 0usize;
    let mut last_key = None;
    for o in objs {
        if let Some(a) = &after {
            if key_of(&o).as_str() <= a.as_str() {
                continue;
            }
        }
        let o = as_version(&t.def, &o);
        if !sel.matches(&o) {
            continue;
        }
        if limit > 0 && items.len() >= limit {
            remaining += 1;
            continue;
        }
        last_key = Some(key_of(&o));
        items.push(strip_item(o));
    }
    let mut md = Map::new();
    md.insert("resourceVersion".into(), json!(list_rv.to_string()));
    if remaining > 0 {
        if let Some(k) = last_key {
            md.insert("continue".into(), json!(encode_continue(list_rv, &k)));
            md.insert("remainingItemCount".into(), json!(remaining));
        }
    }
    Ok(json!({
        "kind": t.def.list_kind,
        "apiVersion": t.def.api_version(),
        "metadata": md,
        "items": items,
    }))
}

fn wants_table<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn ctx_for<B>(req: &Request<B>, q: &Query, operation: &str) -> WriteCtx {
    WriteCtx {
        manager: manager_of(req, q),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        now: now_time(),
        operation: operation.into(),
        warnings: vec![],
    }
}

fn status_success(def: &ResourceDef, obj: &Value) -> Value {
    let (_, name) = obj_key(obj);
    let mut d = Map::new();
    d.insert("name".into(), json!(name));
    if !def.group.is_empty() {
        d.insert("group".into(), json!(def.group));
    }
    d.insert("kind".into(), json!(def.plural));
    if let Some(u) = obj.pointer("/metadata/uid") {
        d.insert("uid".into(), u.clone());
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

/// Handles one API request (faults already applied).
pub async fn route(
    inner: &Arc<Inner>,
    req: Request<Bytes>,
    client: &str,
    acct: &mut Accounting,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let q = parse_query(req.uri().query());
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(r) = discovery::handle(inner, &req, &segs)? {
        acct.verb = "get".into();
        acct.resource = "discovery".into();
        return Ok(r);
    }
    let Some(t) = resolve(inner, &segs)? else {
        return Err(ApiError::page_not_found());
    };
    acct.resource = t.def.plural.clone();
    let def = t.def.clone();
    let ns = t.namespace.clone().unwrap_or_default();
    let is_status = t.sub.as_deref() == Some("status");
    let method = req.method().clone();
    match (&method, &t.name) {
        (&Method::GET, None) => {
            let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watching {
                acct.verb = "watch".into();
                let sel = Selectors::parse(&def, &q)?;
                return watch::start(
                    inner.clone(),
                    t,
                    q,
                    sel,
                    client.to_string(),
                    wants_table(&req),
                );
            }
            acct.verb = "list".into();
            let l = list(inner, &t, &q)?;
            if wants_table(&req) {
                return Ok(json_response(200, &table::list_table(&def, &l), &[]));
            }
            Ok(json_response(200, &l, &[]))
        }
        (&Method::GET, Some(name)) => {
            acct.verb = "get".into();
            let obj = inner
                .lock()
                .get(&def, &ns, name)
                .ok_or_else(|| ApiError::not_found(&def, name))?;
            let obj = as_version(&def, &obj);
            if wants_table(&req) {
                return Ok(json_response(200, &table::object_table(&def, &obj), &[]));
            }
            Ok(json_response(200, &obj, &[]))
        }
        (&Method::POST, None) => {
            acct.verb = "create".into();
            let mut body = decode_body(&def, req.body(), content_type(&req))?;
            check_kind(&def, &body)?;
            let warnings = field_validation(&def, &mut body, &q)?;
            let ctx = ctx_for(&req, &q, "Update");
            let obj = {
                let mut st = inner.lock();
                let r = st.create(&def, t.namespace.as_deref(), body, &ctx);
                st.pending_warnings.clear();
                r
            }?;
            Ok(json_response(201, &obj, &warnings))
        }
        (&Method::PUT, Some(name)) => {
            acct.verb = "update".into();
            let mut body = decode_body(&def, req.body(), content_type(&req))?;
            check_kind(&def, &body)?;
            let warnings = field_validation(&def, &mut body, &q)?;
            let pre = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            let ctx = ctx_for(&req, &q, "Update");
            let mut st = inner.lock();
            let obj = st.update(&def, &ns, name, body, is_status, pre.as_deref(), &ctx)?;
            Ok(json_response(200, &obj, &warnings))
        }
        (&Method::PATCH, Some(name)) => {
            acct.verb = "patch".into();
            super::patch_request::patch(inner, &req, &def, &ns, name, is_status, &q).await
        }
        (&Method::DELETE, Some(name)) => {
            acct.verb = "delete".into();
            let opts: Value = if req.body().is_empty() {
                json!({})
            } else {
                serde_json::from_slice(req.body()).map_err(|e| {
                    ApiError::bad_request(&format!(
                        "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: {e}"
                    ))
                })?
            };
            let s = |p: &str| opts.pointer(p).and_then(Value::as_str).map(str::to_string);
            let pre_uid = s("/preconditions/uid");
            let pre_rv = s("/preconditions/resourceVersion");
            let dry = q.get("dryRun").is_some_and(|d| d == "All")
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "All"));
            let obj =
                inner
                    .lock()
                    .delete(&def, &ns, name, pre_uid.as_deref(), pre_rv.as_deref(), dry)?;
            if def.delete_returns_object {
                let mut o = as_version(&def, &obj);
                normalize(&def, &mut o);
                Ok(json_response(200, &o, &[]))
            } else {
                Ok(json_response(200, &status_success(&def, &obj), &[]))
            }
        }
        (&Method::DELETE, None) => {
            acct.verb = "deletecollection".into();
            let sel = Selectors::parse(&def, &q)?;
            let mut st = inner.lock();
            let names: Vec<(String, String)> = st
                .list(&def, t.namespace.as_deref())
                .iter()
                .filter(|o| sel.matches(o))
                .map(|o| obj_key(o))
                .collect();
            let mut items = Vec::new();
            for (n_ns, n) in names {
                if let Ok(o) = st.delete(&def, &n_ns, &n, None, None, false) {
                    items.push(strip_item(o));
                }
            }
            let rv = st.rv;
            Ok(json_response(
                200,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `fieldValidation` (Warn by default): unknown fields are dropped with a Warning each, refused
/// with 400 under Strict (79-81), dropped silently under Ignore.
fn field_validation(
    def: &ResourceDef,
    body: &mut Value,
    q: &Query,
) -> Result<Vec<String>, ApiError> {
    let unknown = super::validation::unknown_fields(def, body);
    if unknown.is_empty() {
        return Ok(vec![]);
    }
    let mode = q
        .get("fieldValidation")
        .map(String::as_str)
        .unwrap_or("Warn");
    if mode == "Strict" {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(&format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            def.version,
            def.kind,
            list.join(", ")
        )));
    }
    for u in &unknown {
        super::validation::remove_path(body, u);
    }
    if mode == "Ignore" {
        return Ok(vec![]);
    }
    Ok(unknown
        .iter()
        .map(|u| format!("unknown field \"{u}\""))
        .collect())
}

pub fn content_type<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_is_byte_identical_to_kube_apiserver() {
        // golden 21: {"v":"meta.k8s.io/v1","rv":254,"start":"/api\u0000"}
        assert_eq!(
            encode_continue(254, "api"),
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MjU0LCJzdGFydCI6Ii9hcGlcdTAwMDAifQ"
        );
        // golden 87 (cluster-wide): start "/demo/api\u0000"
        assert_eq!(
            encode_continue(498, "demo/api"),
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDk4LCJzdGFydCI6Ii9kZW1vL2FwaVx1MDAwMCJ9"
        );
        assert_eq!(
            decode_continue(
                "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MjU0LCJzdGFydCI6Ii93ZWJcdTAwMDAifQ"
            )
            .unwrap(),
            (254, "web".to_string())
        );
        assert_eq!(decode_continue("!!!").unwrap_err().code, 400);
    }

    #[test]
    fn encoding_fast_path_and_line_separators() {
        // nothing to escape: serde_json's bytes and a newline
        let v = json!({"a": "plain é ü", "n": 1});
        let mut want = serde_json::to_vec(&v).unwrap();
        want.push(b'\n');
        assert_eq!(encode_json(&v), want);
        assert_eq!(
            String::from_utf8(encode_json(&json!({"s": "a\u{2028}b\u{2029}c—"}))).unwrap(),
            "{\"s\":\"a\\u2028b\\u2029c—\"}\n"
        );
    }

    #[test]
    fn html_safe_encoding_like_go() {
        let b = encode_json(&json!({"x": "<pending> & more"}));
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "{\"x\":\"\\u003cpending\\u003e \\u0026 more\"}\n"
        );
    }
}
