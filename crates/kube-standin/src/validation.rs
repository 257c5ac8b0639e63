//! Unknown-field detection (fieldValidation Warn/Strict/Ignore, golden 79-81) and OpenAPI v3
//! schema validation of custom resources (golden 78).

use super::resources::ResourceDef;
use serde_json::Value;

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Option<Value> {
    // decoded from the borrowed value: no copy of the request body
    T::deserialize(v)
        .ok()
        .and_then(|t| serde_json::to_value(t).ok())
}

/// The object as the typed Go struct would keep it (None when the kind is not typed here or
/// does not decode; then no unknown fields are reported).
fn typed(def: &ResourceDef, v: &Value) -> Option<Value> {
    use k8s_openapi::api;
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Service") => roundtrip::<api::core::v1::Service>(v),
        ("", "Namespace") => roundtrip::<api::core::v1::Namespace>(v),
        ("", "Node") => roundtrip::<api::core::v1::Node>(v),
        ("", "Endpoints") => roundtrip::<api::core::v1::Endpoints>(v),
        ("", "Event") => roundtrip::<api::core::v1::Event>(v),
        ("events.k8s.io", "Event") => roundtrip::<api::events::v1::Event>(v),
        ("discovery.k8s.io", "EndpointSlice") => roundtrip::<api::discovery::v1::EndpointSlice>(v),
        ("coordination.k8s.io", "Lease") => roundtrip::<api::coordination::v1::Lease>(v),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => roundtrip::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(v),
        _ => None,
    }
}

fn diff_unknown(orig: &Value, rt: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, rt) {
        (Value::Object(o), Value::Object(r)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match r.get(k) {
                    None => out.push(p),
                    Some(rv) => diff_unknown(v, rv, &p, out),
                }
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            for (i, (v, rv)) in o.iter().zip(r).enumerate() {
                diff_unknown(v, rv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Paths of fields the type does not declare, in body order (`spec.ports[0].targetport`).
pub fn unknown_fields(def: &ResourceDef, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if def.custom {
        if let Some(schema) = &def.schema {
            let mut copy = body.clone();
            super::defaults::prune(schema, &mut copy, "", &mut out);
        }
        return out;
    }
    // kind/apiVersion are checked elsewhere
    if let Some(rt) = typed(def, body) {
        diff_unknown(body, &rt, "", &mut out);
    }
    out
}

/// Removes a dotted path with `[i]` indexes.
pub fn remove_path(v: &mut Value, path: &str) {
    let mut segs: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            segs.push(rest[..i].to_string());
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').unwrap_or(r.len());
                segs.push(format!("#{}", &r[..end]));
                rest = r.get(end + 1..).unwrap_or("");
            }
        } else {
            segs.push(rest.to_string());
        }
    }
    let mut cur = v;
    for (n, s) in segs.iter().enumerate() {
        let last = n + 1 == segs.len();
        if let Some(i) = s.strip_prefix('#') {
            let Ok(i) = i.parse::<usize>() else { return };
            let Some(next) = cur.get_mut(i) else { return };
            cur = next;
        } else if last {
            if let Some(m) = cur.as_object_mut() {
                m.shift_remove(s.as_str());
            }
            return;
        } else {
            let Some(next) = cur.get_mut(s.as_str()) else {
                return;
            };
            cur = next;
        }
    }
}

/// Schema patterns compiled once (schemas are few, writes are many).
fn cached_regex(p: &str) -> Option<regex::Regex> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static CACHE: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 1024 {
        c.clear();
    }
    c.entry(p.to_string())
        .or_insert_with(|| regex::Regex::new(p).ok())
        .clone()
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// One validation failure: (reason, message, field, rank) — rank orders type errors first.
type Cause = (&'static str, String, String, u8);

fn validate(schema: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    if v.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            // Go decodes null as the zero value; treat as absent
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let have = go_type(v);
        let ok = int_or_string && (have == "integer" || have == "string")
            || have == t
            || (t == "number" && have == "integer");
        if !ok {
            out.push((
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{have}\": {path} in body must be of type {t}: \"{have}\""
                ),
                path.to_string(),
                0,
            ));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            let allowed: Vec<String> = e.iter().map(show).collect();
            out.push((
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {}: supported values: {}",
                    show(v),
                    allowed.join(", ")
                ),
                path.to_string(),
                1,
            ));
        }
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if let Some(c) = m.get(k) {
                        if path.is_empty() && (k == "metadata" || k == "apiVersion" || k == "kind")
                        {
                            continue;
                        }
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        validate(ps, c, &p, out);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, c) in m {
                    validate(ap, c, &format!("{path}.{k}"), out);
                }
            }
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if m.get(r).is_none_or(Value::is_null) {
                        let p = if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        };
                        out.push(("FieldValueRequired", "Required value".into(), p, 2));
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (a.len() as u64) < min {
                    out.push((
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {}: {path} in body should have at least {min} items",
                            a.len()
                        ),
                        path.to_string(),
                        2,
                    ));
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if (a.len() as u64) > max {
                    out.push((
                        "FieldValueTooMany",
                        format!("Too many: {}: must have at most {max} items", a.len()),
                        path.to_string(),
                        2,
                    ));
                }
            }
            if let Some(items) = schema.get("items") {
                for (i, c) in a.iter().enumerate() {
                    validate(items, c, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    out.push((
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"),
                        path.to_string(),
                        2,
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    out.push((
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"),
                        path.to_string(),
                        2,
                    ));
                }
            }
        }
        Value::String(s) => {
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if let Some(re) = cached_regex(p) {
                    if !re.is_match(s) {
                        out.push((
                            "FieldValueInvalid",
                            format!("Invalid value: \"{s}\": {path} in body should match '{p}'"),
                            path.to_string(),
                            2,
                        ));
                    }
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if (s.chars().count() as u64) < min {
                    out.push((
                        "FieldValueInvalid",
                        format!("Invalid value: \"{s}\": {path} in body should be at least {min} chars long"),
                        path.to_string(),
                        2,
                    ));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if (s.chars().count() as u64) > max {
                    out.push((
                        "FieldValueTooLong",
                        format!("Too long: may not be more than {max} bytes"),
                        path.to_string(),
                        2,
                    ));
                }
            }
        }
        _ => {}
    }
}

/// Validates a custom resource against its version's schema: causes in kube-apiserver's
/// order (type errors, then unsupported values, then the rest).
pub fn validate_custom(def: &ResourceDef, obj: &Value) -> Vec<(&'static str, String, String)> {
    let Some(schema) = &def.schema else {
        return vec![];
    };
    let mut out = Vec::new();
    validate(schema, obj, "", &mut out);
    out.sort_by_key(|c| c.3);
    out.into_iter().map(|(r, m, f, _)| (r, m, f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remove_nested_paths() {
        let mut v = json!({"spec": {"ports": [{"port": 80, "targetport": 1}], "x": 1}});
        remove_path(&mut v, "spec.ports[0].targetport");
        remove_path(&mut v, "spec.x");
        assert_eq!(v, json!({"spec": {"ports": [{"port": 80}]}}));
    }

    #[test]
    fn schema_causes_in_order() {
        let def = ResourceDef {
            schema: Some(
                json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                    "blocks": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                    "disabled": {"type": "boolean"},
                    "mode": {"type": "string", "enum": ["Yes", "No"]}
                }}}}),
            ),
            ..crate::resources::builtins()[0].clone()
        };
        let c = validate_custom(
            &def,
            &json!({"spec": {"blocks": [], "disabled": "yes", "mode": "Maybe"}}),
        );
        let fields: Vec<&str> = c.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(fields, ["spec.disabled", "spec.mode", "spec.blocks"]);
        assert_eq!(
            c[0].1,
            "Invalid value: \"string\": spec.disabled in body must be of type boolean: \"string\""
        );
        assert_eq!(
            c[1].1,
            "Unsupported value: \"Maybe\": supported values: \"Yes\", \"No\""
        );
        assert_eq!(
            c[2].1,
            "Invalid value: 0: spec.blocks in body should have at least 1 items"
        );
    }
}
