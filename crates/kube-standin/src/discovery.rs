//! Discovery (`/version`, `/api`, `/apis`, group/version resource lists, legacy and aggregated
//! v2 forms) and the OpenAPI documents kubectl asks for.

use super::body::Body;
use super::error::ApiError;
use super::http::{json_response, text_response};
use super::resources::ResourceDef;
use super::Inner;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;

const AGG_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn wants_aggregated(req: &Request<Bytes>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}

fn agg_resource(d: &ResourceDef) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), json!(d.plural));
    let rk = if d.custom {
        json!({"group": d.group, "version": d.version, "kind": d.kind})
    } else {
        json!({"group": "", "version": "", "kind": d.kind})
    };
    m.insert("responseKind".into(), rk.clone());
    m.insert(
        "scope".into(),
        json!(if d.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }),
    );
    m.insert("singularResource".into(), json!(d.singular));
    m.insert("verbs".into(), json!(d.verbs()));
    if !d.short_names.is_empty() {
        m.insert("shortNames".into(), json!(d.short_names));
    }
    if !d.categories.is_empty() {
        m.insert("categories".into(), json!(d.categories));
    }
    if d.status {
        m.insert(
            "subresources".into(),
            json!([{"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]}]),
        );
    }
    Value::Object(m)
}

/// An opaque hash of the storage version (8 bytes of SHA-256, base64), like kube-apiserver's.
fn storage_version_hash(d: &ResourceDef) -> String {
    use base64::Engine;
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{}/{}/{}", d.group, d.version, d.kind));
    base64::engine::general_purpose::STANDARD.encode(&h[..8])
}

fn legacy_resources(d: &ResourceDef) -> Vec<Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(d.plural));
    m.insert("singularName".into(), json!(d.singular));
    m.insert("namespaced".into(), json!(d.namespaced));
    m.insert("kind".into(), json!(d.kind));
    m.insert("verbs".into(), json!(d.verbs()));
    if !d.short_names.is_empty() {
        m.insert("shortNames".into(), json!(d.short_names));
    }
    if !d.categories.is_empty() {
        m.insert("categories".into(), json!(d.categories));
    }
    m.insert("storageVersionHash".into(), json!(storage_version_hash(d)));
    let mut out = vec![Value::Object(m)];
    if d.status {
        out.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
    }
    out
}

fn aggregated(inner: &Inner, core: bool) -> Value {
    let st = inner.lock();
    let mut items = Vec::new();
    for (g, versions) in st.registry.groups() {
        if core != g.is_empty() {
            continue;
        }
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| {
                let res: Vec<Value> = st
                    .registry
                    .defs
                    .iter()
                    .filter(|d| d.group == g && &d.version == v)
                    .map(|d| agg_resource(d))
                    .collect();
                json!({"version": v, "resources": res, "freshness": "Current"})
            })
            .collect();
        let md = if g.is_empty() {
            json!({})
        } else {
            json!({"name": g})
        };
        items.push(json!({"metadata": md, "versions": vs}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn group_json(g: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

fn wants_protobuf(req: &Request<Bytes>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf"))
}

fn pb_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    let mut n = bytes.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// A minimal OpenAPI v2 document in gnostic's protobuf encoding (`swagger`, `info`), which is
/// what older kubectl (1.20) downloads for client-side validation; with no definitions it
/// validates nothing client-side and leaves validation to the server.
fn openapi_v2_protobuf() -> Vec<u8> {
    let mut info = Vec::new();
    pb_field(&mut info, 1, b"Kubernetes");
    pb_field(&mut info, 2, b"v1.36.2");
    let mut doc = Vec::new();
    pb_field(&mut doc, 1, b"2.0");
    pb_field(&mut doc, 2, &info);
    doc
}

fn agg_response(v: &Value) -> Response<Body> {
    let mut r = json_response(200, v, &[]);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AGG_CT));
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// Minimal OpenAPI v3 document for one group/version (enough for kubectl's field validation).
fn openapi_v3_doc(defs: &[Arc<ResourceDef>]) -> Value {
    let mut schemas = Map::new();
    for d in defs {
        let name = format!(
            "{}.{}.{}",
            if d.group.is_empty() {
                "io.k8s.api.core"
            } else {
                d.group.as_str()
            },
            d.version,
            d.kind
        );
        let mut s = d.schema.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        if let Some(m) = s.as_object_mut() {
            m.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": d.group, "version": d.version, "kind": d.kind}]),
            );
            if let Some(Value::Object(p)) = m.get_mut("properties") {
                p.insert(
                    "metadata".into(),
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            }
        }
        schemas.insert(name, s);
    }
    // kubectl checks that the PATCH operation of the kind takes `fieldValidation` (server-side
    // validation); without it it falls back to client-side validation with OpenAPI v2 protobuf.
    let mut paths = Map::new();
    for d in defs {
        let prefix = if d.group.is_empty() {
            format!("/api/{}", d.version)
        } else {
            format!("/apis/{}/{}", d.group, d.version)
        };
        let item = if d.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{prefix}/{}/{{name}}", d.plural)
        };
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}
        ]);
        let op = |verb: &str| {
            json!({"description": format!("{verb} the specified {}", d.kind),
                "parameters": params, "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": gvk})
        };
        paths.insert(item, json!({"put": op("put"), "patch": op("patch")}));
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.2"}, "paths": paths, "components": {"schemas": schemas}})
}

/// Handles non-resource paths; None when the path is a resource path.
pub fn handle(
    inner: &Arc<Inner>,
    req: &Request<Bytes>,
    segs: &[&str],
) -> Result<Option<Response<Body>>, ApiError> {
    if req.method() != Method::GET {
        return match segs {
            ["api", _, _, ..] | ["apis", _, _, _, ..] => Ok(None),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    let r = match segs {
        ["version"] => json_response(
            200,
            &json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
                "gitVersion": "v1.36.2", "gitCommit": "98b35193b2ac7a23a673325f5e9b830ecd5ba406", "gitTreeState": "clean",
                "buildDate": "2026-08-21T00:00:00Z", "goVersion": "go1.27.3-X:nojsonv2", "compiler": "gc",
                "platform": "linux/amd64"}),
            &[],
        ),
        ["api"] => {
            if wants_aggregated(req) {
                agg_response(&aggregated(inner, true))
            } else {
                json_response(
                    200,
                    &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
                    &[],
                )
            }
        }
        ["apis"] => {
            if wants_aggregated(req) {
                agg_response(&aggregated(inner, false))
            } else {
                let groups: Vec<Value> = inner
                    .lock()
                    .registry
                    .groups()
                    .iter()
                    .filter(|(g, _)| !g.is_empty())
                    .map(|(g, vs)| group_json(g, vs))
                    .collect();
                json_response(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                    &[],
                )
            }
        }
        ["apis", g] => {
            let groups = inner.lock().registry.groups();
            let Some((_, vs)) = groups.iter().find(|(n, _)| n == g) else {
                return Err(ApiError::page_not_found());
            };
            let mut v = group_json(g, vs);
            if let Some(m) = v.as_object_mut() {
                let mut o = Map::new();
                o.insert("kind".into(), json!("APIGroup"));
                o.insert("apiVersion".into(), json!("v1"));
                for (k, x) in std::mem::take(m) {
                    o.insert(k, x);
                }
                *m = o;
            }
            json_response(200, &v, &[])
        }
        ["api", v] | ["apis", _, v] => {
            let g = if segs[0] == "api" { "" } else { segs[1] };
            let st = inner.lock();
            if !st.registry.has_group_version(g, v) {
                return Err(ApiError::page_not_found());
            }
            let res: Vec<Value> = st
                .registry
                .defs
                .iter()
                .filter(|d| d.group == g && d.version == *v)
                .flat_map(|d| legacy_resources(d))
                .collect();
            let gv = if g.is_empty() {
                v.to_string()
            } else {
                format!("{g}/{v}")
            };
            json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}),
                &[],
            )
        }
        ["openapi", "v3"] => {
            let st = inner.lock();
            let mut paths = Map::new();
            for (g, vs) in st.registry.groups() {
                for v in vs {
                    let p = if g.is_empty() {
                        format!("api/{v}")
                    } else {
                        format!("apis/{g}/{v}")
                    };
                    paths.insert(
                        p.clone(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", st.rv)}),
                    );
                }
            }
            let body = serde_json::to_string(&json!({"paths": paths})).unwrap_or_default();
            text_response(200, "text/plain; charset=utf-8", body)
        }
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(ApiError::page_not_found()),
            };
            let st = inner.lock();
            let defs: Vec<Arc<ResourceDef>> = st
                .registry
                .defs
                .iter()
                .filter(|d| d.group == g && d.version == v)
                .cloned()
                .collect();
            if defs.is_empty() {
                return Err(ApiError::page_not_found());
            }
            json_response(200, &openapi_v3_doc(&defs), &[])
        }
        ["openapi", "v2"] if wants_protobuf(req) => {
            let mut r = Response::new(Body::full(openapi_v2_protobuf()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            r
        }
        ["openapi", "v2"] => json_response(
            200,
            &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.36.2"}, "paths": {}, "definitions": {}}),
            &[],
        ),
        ["healthz"] | ["readyz"] | ["livez"] => {
            text_response(200, "text/plain; charset=utf-8", "ok".into())
        }
        _ => return Ok(None),
    };
    Ok(Some(r))
}
