//! PATCH: content-type dispatch to the patch engines, preconditions, status isolation, apply.
//!
//! The engines (JSON merge patch, JSON patch, strategic merge patch, server-side apply with
//! managedFields) live in `patch_engines.rs`/`managed.rs`; this file decodes the request, checks
//! preconditions and hands the result to the store (status isolation, defaulting, RV).

use super::body::Body;
use super::error::ApiError;
use super::http::{content_type, json_response, Query};
use super::patch_engines::{self, PatchError};
use super::resources::ResourceDef;
use super::store::{now_time, WriteCtx};
use super::{managed, Inner};
use bytes::Bytes;
use http::{header, Request, Response};
use serde_json::{json, Value};
use std::sync::Arc;

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

fn patch_error(def: &ResourceDef, name: &str, e: &PatchError) -> ApiError {
    match e {
        PatchError::Unsupported(_) => unsupported(def),
        PatchError::BadRequest(m) => ApiError::bad_request(m),
        PatchError::Invalid(m) => ApiError::status(
            422,
            "Invalid",
            m,
            Some(json!({"name": name, "kind": def.kind})),
        ),
        PatchError::Conflict(m) => ApiError::status(
            409,
            "Conflict",
            m,
            Some(json!({"name": name, "kind": def.plural})),
        ),
    }
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
    let force = q.get("force").is_some_and(|f| f == "true");
    let sub = if is_status { Some("status") } else { None };
    let mut st = inner.lock();
    let live = st.get(def, ns, name);
    if kind == "apply" {
        let mut applied = patch;
        if let Some(o) = applied.as_object_mut() {
            o.entry("apiVersion")
                .or_insert_with(|| json!(def.api_version()));
            o.entry("kind").or_insert_with(|| json!(def.kind));
        } else {
            return Err(ApiError::bad_request("apply patch must be an object"));
        }
        let pre = applied
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if live.is_none() && is_status {
            return Err(ApiError::not_found(def, name));
        }
        let mut merged = managed::server_side_apply(
            live.as_deref(),
            &applied,
            &ctx.manager,
            force,
            &def.api_version(),
            sub,
            &ctx.now,
        )
        .map_err(|c| {
            let body = c.status();
            ApiError {
                code: 409,
                body,
                text: None,
            }
        })?;
        if let Some(md) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
            md.insert("name".into(), json!(name));
        }
        return match live {
            None => {
                let created = st.create(
                    def,
                    if def.namespaced { Some(ns) } else { None },
                    merged,
                    &ctx,
                )?;
                Ok(json_response(201, &created, &[]))
            }
            Some(_) => {
                let obj = st.update(def, ns, name, merged, is_status, pre.as_deref(), &ctx)?;
                Ok(json_response(200, &obj, &[]))
            }
        };
    }
    let Some(live) = live else {
        return Err(ApiError::not_found(def, name));
    };
    let mut target = (*live).clone();
    // managedFields are the server's: a patch works on the object without them
    if let Some(md) = target.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("managedFields");
    }
    let res = match kind {
        "merge" => {
            patch_engines::merge_patch(&mut target, &patch);
            Ok(())
        }
        "strategic" => patch_engines::strategic_merge_patch(&mut target, &patch, &def.kind),
        _ => patch_engines::json_patch(&mut target, &patch),
    };
    res.map_err(|e| patch_error(def, name, &e))?;
    // a resourceVersion inside the patch is a precondition
    let pre = target
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let obj = st.update(def, ns, name, target, is_status, pre.as_deref(), &ctx)?;
    Ok(json_response(200, &obj, &[]))
}
