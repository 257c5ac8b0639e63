//! PATCH: content-type dispatch to the patch engines, preconditions, status isolation, apply.
//!
//! The engines (JSON merge patch, JSON patch, strategic merge patch, server-side apply with
//! managedFields) live in `patch.rs`/`managed.rs` (owned by the patch engineer); until they are
//! merged, [`engines`] holds interim versions (merge patch exact; strategic merge approximated
//! by merge patch; apply = merge of the applied object without conflict detection).

use super::body::Body;
use super::error::ApiError;
use super::http::{content_type, json_response, Query};
use super::resources::ResourceDef;
use super::store::{now_time, WriteCtx};
use super::Inner;
use bytes::Bytes;
use http::{header, Request, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// Interim engines (replaced by `patch.rs`/`managed.rs` when they land).
pub mod engines {
    use serde_json::Value;

    /// RFC 7386 JSON merge patch.
    pub fn merge_patch(target: &mut Value, patch: &Value) {
        match patch {
            Value::Object(p) => {
                if !target.is_object() {
                    *target = Value::Object(Default::default());
                }
                let t = target.as_object_mut().expect("object");
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    /// RFC 6902 JSON patch (add, remove, replace, move, copy, test).
    pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
        let ops = ops.as_array().ok_or("json patch must be an array")?;
        for op in ops {
            let kind = op.get("op").and_then(Value::as_str).ok_or("missing op")?;
            let path = op
                .get("path")
                .and_then(Value::as_str)
                .ok_or("missing path")?;
            match kind {
                "add" | "replace" => {
                    let v = op.get("value").cloned().ok_or("missing value")?;
                    set(target, path, v, kind == "add")?;
                }
                "remove" => {
                    remove(target, path)?;
                }
                "test" => {
                    let v = op.get("value").ok_or("missing value")?;
                    if target.pointer(path) != Some(v) {
                        return Err(format!("testing value {path} failed"));
                    }
                }
                "move" | "copy" => {
                    let from = op
                        .get("from")
                        .and_then(Value::as_str)
                        .ok_or("missing from")?;
                    let v = target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("missing value at {from}"))?;
                    if kind == "move" {
                        remove(target, from)?;
                    }
                    set(target, path, v, true)?;
                }
                other => return Err(format!("Unexpected kind: {other}")),
            }
        }
        Ok(())
    }

    fn unescape(s: &str) -> String {
        s.replace("~1", "/").replace("~0", "~")
    }

    fn split(path: &str) -> Result<(String, String), String> {
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("invalid path {path}"))?;
        Ok((parent.to_string(), unescape(last)))
    }

    fn set(target: &mut Value, path: &str, v: Value, add: bool) -> Result<(), String> {
        if path.is_empty() {
            *target = v;
            return Ok(());
        }
        let (parent, last) = split(path)?;
        let p = target
            .pointer_mut(&parent)
            .ok_or_else(|| format!("doc is missing path: \"{path}\""))?;
        match p {
            Value::Object(m) => {
                if !add && !m.contains_key(&last) {
                    return Err(format!(
                        "replace operation does not apply: doc is missing key: {path}"
                    ));
                }
                m.insert(last, v);
            }
            Value::Array(a) => {
                if last == "-" && add {
                    a.push(v);
                } else {
                    let i: usize = last.parse().map_err(|_| format!("invalid index {last}"))?;
                    if add && i <= a.len() {
                        a.insert(i, v);
                    } else if !add && i < a.len() {
                        a[i] = v;
                    } else {
                        return Err(format!("index out of bounds: {i}"));
                    }
                }
            }
            _ => return Err(format!("doc is missing path: \"{path}\"")),
        }
        Ok(())
    }

    fn remove(target: &mut Value, path: &str) -> Result<(), String> {
        let (parent, last) = split(path)?;
        let p = target
            .pointer_mut(&parent)
            .ok_or_else(|| format!("doc is missing path: \"{path}\""))?;
        match p {
            Value::Object(m) => m.shift_remove(&last).map(|_| ()).ok_or_else(|| {
                format!("remove operation does not apply: doc is missing path: \"{path}\"")
            }),
            Value::Array(a) => {
                let i: usize = last.parse().map_err(|_| format!("invalid index {last}"))?;
                if i < a.len() {
                    a.remove(i);
                    Ok(())
                } else {
                    Err(format!("index out of bounds: {i}"))
                }
            }
            _ => Err(format!("doc is missing path: \"{path}\"")),
        }
    }
}

fn unsupported(def: &ResourceDef) -> ApiError {
    if def.custom {
        ApiError::status(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            None,
        )
    } else {
        ApiError::status(
            415,
            "UnsupportedMediaType",
            "415: Unsupported Media Type",
            Some(json!({})),
        )
    }
}

fn bad_patch(def: &ResourceDef, name: &str, e: &str) -> ApiError {
    ApiError::status(
        422,
        "Invalid",
        &format!("{} \"{name}\" is invalid: {e}", def.kind),
        Some(json!({"name": name, "kind": def.kind})),
    )
}

/// Handles a PATCH request.
pub async fn patch(
    inner: &Arc<Inner>,
    req: &Request<Bytes>,
    def: &Arc<ResourceDef>,
    ns: &str,
    name: &str,
    is_status: bool,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let ct = content_type(req)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let kind = match ct.as_str() {
        "application/merge-patch+json" => "merge",
        "application/json-patch+json" => "json",
        "application/strategic-merge-patch+json" if !def.custom => "strategic",
        "application/apply-patch+yaml" | "application/apply-patch+json" => "apply",
        _ => return Err(unsupported(def)),
    };
    let patch: Value = if kind == "apply" {
        serde_yaml::from_slice(req.body())
            .map_err(|e| ApiError::bad_request(&format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(req.body())
            .map_err(|e| ApiError::bad_request(&format!("error decoding patch: {e}")))?
    };
    let user_agent_manager = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split('/').next().unwrap_or(ua).to_string());
    let manager = q
        .get("fieldManager")
        .cloned()
        .or(if kind == "apply" {
            None
        } else {
            user_agent_manager
        })
        .unwrap_or_default();
    if kind == "apply" && manager.is_empty() {
        return Err(ApiError::status(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{
                "reason": "FieldValueRequired",
                "message": "Required value: is required for apply patch",
                "field": "fieldManager"}]})),
        ));
    }
    let ctx = WriteCtx {
        manager,
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        now: now_time(),
        operation: if kind == "apply" { "Apply" } else { "Update" }.into(),
        warnings: vec![],
    };
    let mut st = inner.lock();
    let live = st.get(def, ns, name);
    let Some(live) = live else {
        if kind == "apply" && !is_status {
            let mut obj = patch.clone();
            if let Some(o) = obj.as_object_mut() {
                let md = o.entry("metadata").or_insert_with(|| json!({}));
                if let Some(m) = md.as_object_mut() {
                    m.insert("name".into(), json!(name));
                }
            }
            let created =
                st.create(def, if def.namespaced { Some(ns) } else { None }, obj, &ctx)?;
            return Ok(json_response(201, &created, &[]));
        }
        return Err(ApiError::not_found(def, name));
    };
    let mut target = (*live).clone();
    match kind {
        "merge" | "strategic" | "apply" => engines::merge_patch(&mut target, &patch),
        _ => engines::json_patch(&mut target, &patch).map_err(|e| bad_patch(def, name, &e))?,
    }
    // a resourceVersion inside the patch is a precondition
    let pre = target
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let obj = st.update(def, ns, name, target, is_status, pre.as_deref(), &ctx)?;
    Ok(json_response(200, &obj, &[]))
}
