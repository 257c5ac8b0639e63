//! `Status` error bodies, shaped exactly like kube-apiserver's (see kube-golden README §2).

use super::resources::ResourceDef;
use serde_json::{json, Map, Value};

/// An error answer: HTTP code and a Status body (or a text/plain body).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
    /// Plain-text body instead of JSON (unknown API group: `404 page not found`).
    pub text: Option<String>,
}

fn details(name: &str, group: &str, kind: &str) -> Map<String, Value> {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(kind));
    d
}

impl ApiError {
    /// A Failure Status.
    pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Self {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(message));
        if !reason.is_empty() {
            m.insert("reason".into(), json!(reason));
        }
        if let Some(d) = details {
            m.insert("details".into(), d);
        }
        m.insert("code".into(), json!(code));
        Self {
            code,
            body: Value::Object(m),
            text: None,
        }
    }
    /// 404 text/plain (unknown path or group).
    pub fn page_not_found() -> Self {
        Self {
            code: 404,
            body: Value::Null,
            text: Some("404 page not found\n".into()),
        }
    }
    /// 404 for an unknown resource inside a served group/version (83).
    pub fn resource_not_found() -> Self {
        Self::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::not_found_plain(&def.group, &def.plural, name)
    }
    pub fn not_found_plain(group: &str, plural: &str, name: &str) -> Self {
        let q = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        Self::status(
            404,
            "NotFound",
            &format!("{q} \"{name}\" not found"),
            Some(Value::Object(details(name, group, plural))),
        )
    }
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", def.qualified()),
            Some(Value::Object(details(name, &def.group, &def.plural))),
        )
    }
    /// 409 on a stale resourceVersion (27, 38, 70).
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                def.qualified()
            ),
            Some(Value::Object(details(name, &def.group, &def.plural))),
        )
    }
    /// 409 on a failed delete precondition (53, 54): details.kind is the Kind.
    pub fn precondition(def: &ResourceDef, name: &str, msg: &str) -> Self {
        Self::status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                def.kind
            ),
            Some(Value::Object(details(name, &def.group, &def.kind))),
        )
    }
    /// 400 without details (decode errors, bad selectors).
    pub fn bad_request(msg: &str) -> Self {
        Self::status(400, "BadRequest", msg, None)
    }
    /// 422 Invalid with causes (reason, message, field); details.kind is the Kind (77); custom
    /// resources also carry the group (78), built-in types do not (73).
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<(&str, String, String)>) -> Self {
        let summary: Vec<String> = causes.iter().map(|(_, m, f)| format!("{f}: {m}")).collect();
        let joined = if summary.len() == 1 {
            summary[0].clone()
        } else {
            format!("[{}]", summary.join(", "))
        };
        let group = if def.custom { def.group.as_str() } else { "" };
        let mut d = details(name, group, &def.kind);
        d.insert(
            "causes".into(),
            Value::Array(
                causes
                    .iter()
                    .map(|(r, m, f)| json!({"reason": r, "message": m, "field": f}))
                    .collect(),
            ),
        );
        let what = if group.is_empty() {
            def.kind.clone()
        } else {
            format!("{}.{group}", def.kind)
        };
        Self::status(
            422,
            "Invalid",
            &format!("{what} \"{name}\" is invalid: {joined}"),
            Some(Value::Object(d)),
        )
    }
    /// 410 Expired (list at a compacted RV).
    pub fn expired(msg: &str) -> Self {
        Self::status(410, "Expired", msg, None)
    }
    pub fn internal(msg: &str) -> Self {
        Self::status(
            500,
            "InternalError",
            &format!("Internal error occurred: {msg}"),
            Some(json!({"causes": [{"message": msg}]})),
        )
    }
    pub fn method_not_allowed() -> Self {
        Self::status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }
}
