//! Patch engines of the API stand-in: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes strategic merge patch, with kube-apiserver's error classes.
//!
//! All three work on `serde_json::Value` documents and are total: malformed or hostile patches
//! (wrong types, deep nesting, huge indexes) give a [`PatchError`], never a panic. On error the
//! target is left unchanged.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::schema_keys::{self, Schema, SmpList};

/// Why a patch could not be applied; each variant maps to an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchError {
    /// 422 Unprocessable Entity.
    Invalid(String),
    /// 409 Conflict.
    Conflict(String),
    /// 415 Unsupported Media Type.
    Unsupported(String),
    /// 400 Bad Request.
    BadRequest(String),
}

impl PatchError {
    /// The HTTP status code of this error.
    pub fn code(&self) -> u16 {
        match self {
            PatchError::Invalid(_) => 422,
            PatchError::Conflict(_) => 409,
            PatchError::Unsupported(_) => 415,
            PatchError::BadRequest(_) => 400,
        }
    }

    /// The `Status.reason` kube-apiserver uses for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::Invalid(_) => "Invalid",
            PatchError::Conflict(_) => "Conflict",
            PatchError::Unsupported(_) => "UnsupportedMediaType",
            PatchError::BadRequest(_) => "BadRequest",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            PatchError::Invalid(m)
            | PatchError::Conflict(m)
            | PatchError::Unsupported(m)
            | PatchError::BadRequest(m) => m,
        }
    }
}

impl PatchError {
    /// A `Status` body for this error, shaped as kube-apiserver sends it:
    /// - 400: message only, no details (like the decode errors of golden 71/79);
    /// - 415: golden 49 for a custom resource ([`CR_STRATEGIC_UNSUPPORTED`]), golden 40
    ///   (`details: {}`) otherwise;
    /// - 422: `NewGenericServerResponse(422, ...)` as the JSON patch handler builds it: a fixed
    ///   message and `details: {}` (no transcript here; the shape reported for a real v1.37;
    ///   the engine's own text stays available through [`PatchError::message`] for logs);
    /// - 409: message and reason only (callers with a resource should build their own).
    pub fn status(&self) -> Value {
        let (message, details) = match self {
            PatchError::BadRequest(msg) | PatchError::Conflict(msg) => (msg.clone(), None),
            PatchError::Unsupported(msg) if msg == CR_STRATEGIC_UNSUPPORTED => (msg.clone(), None),
            PatchError::Unsupported(_) => (
                "415: Unsupported Media Type".to_owned(),
                Some(Value::Object(Map::new())),
            ),
            PatchError::Invalid(_) => (
                "the server rejected our request due to an error in our request".to_owned(),
                Some(Value::Object(Map::new())),
            ),
        };
        let mut m = Map::new();
        m.insert("kind".into(), "Status".into());
        m.insert("apiVersion".into(), "v1".into());
        m.insert("metadata".into(), Value::Object(Map::new()));
        m.insert("status".into(), "Failure".into());
        m.insert("message".into(), message.into());
        m.insert("reason".into(), self.reason().into());
        if let Some(d) = details {
            m.insert("details".into(), d);
        }
        m.insert("code".into(), self.code().into());
        Value::Object(m)
    }
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl std::error::Error for PatchError {}

/// The 415 message kube-apiserver gives for a strategic merge patch on a custom resource (golden 49).
pub const CR_STRATEGIC_UNSUPPORTED: &str = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";

/// kube-apiserver's limit on the number of JSON patch operations.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Deepest nesting the patch engines follow.
pub const MAX_DEPTH: usize = 256;

/// JSON equality with numbers compared by value (`1` equals `1.0`) and object members in any
/// order. Iterative, so hostile nesting cannot overflow the stack.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    let mut stack = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                if x != y && (!(x.is_f64() || y.is_f64()) || x.as_f64() != y.as_f64()) {
                    return false;
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                stack.extend(x.iter().zip(y));
            }
            (Value::Object(x), Value::Object(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                for (k, v) in x {
                    match y.get(k) {
                        Some(w) => stack.push((v, w)),
                        None => return false,
                    }
                }
            }
            _ => {
                if a != b {
                    return false;
                }
            }
        }
    }
    true
}

/// The PATCH content types handled by [`patch_by_content_type`].
pub const JSON_PATCH: &str = "application/json-patch+json";
/// RFC 7386 merge patch.
pub const MERGE_PATCH: &str = "application/merge-patch+json";
/// Kubernetes strategic merge patch.
pub const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
/// Server-side apply (see `managed::server_side_apply`).
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Applies a non-apply PATCH body by its `Content-Type` (parameters such as `; charset=utf-8`
/// are ignored). Any other type, including plain `application/json` (golden 40), is
/// [`PatchError::Unsupported`] with an empty message, whose [`PatchError::status`] is golden
/// 40's body. Apply patches (`application/apply-patch+yaml`) are not handled here: they need
/// the field manager (`managed::server_side_apply`) and give [`PatchError::BadRequest`].
pub fn patch_by_content_type(
    target: &mut Value,
    body: &Value,
    content_type: &str,
    kind: &str,
) -> Result<(), PatchError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        JSON_PATCH => json_patch(target, body),
        MERGE_PATCH => {
            merge_patch(target, body);
            Ok(())
        }
        STRATEGIC_MERGE_PATCH => strategic_merge_patch(target, body, kind),
        APPLY_PATCH => Err(PatchError::BadRequest(
            "apply patches are handled by managed::server_side_apply".into(),
        )),
        _ => Err(PatchError::Unsupported(String::new())),
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7386 JSON merge patch
// ---------------------------------------------------------------------------------------------

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, everything
/// else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    merge_patch_depth(target, patch, 0);
}

fn merge_patch_depth(target: &mut Value, patch: &Value, depth: usize) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else if depth >= MAX_DEPTH {
            t.insert(k.clone(), strip_nulls(v));
        } else {
            let slot = t.entry(k.clone()).or_insert(Value::Null);
            merge_patch_depth(slot, v, depth + 1);
        }
    }
}

/// A copy of `v` without object members whose value is `null` (iterative, for hostile depth).
fn strip_nulls(v: &Value) -> Value {
    let mut out = v.clone();
    let mut stack = vec![&mut out];
    while let Some(cur) = stack.pop() {
        match cur {
            Value::Object(m) => {
                m.retain(|_, v| !v.is_null());
                stack.extend(m.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RFC 6902 JSON patch
// ---------------------------------------------------------------------------------------------

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
///
/// Like kube-apiserver: a body that is not a list of objects is 400; an operation that cannot
/// be applied (failed `test`, missing path, bad index, unknown op) is 422; more than
/// [`MAX_JSON_PATCH_OPERATIONS`] operations is refused (the real server answers 413; here 400).
/// Negative array indexes count from the end, as in the json-patch library kube-apiserver uses.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let Value::Array(list) = ops else {
        return Err(PatchError::BadRequest(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch".into(),
        ));
    };
    if list.iter().any(|o| !o.is_object()) {
        return Err(PatchError::BadRequest(
            "json: cannot unmarshal non-object into Go value of type jsonpatch.Operation".into(),
        ));
    }
    if list.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::BadRequest(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            list.len()
        )));
    }
    let mut doc = target.clone();
    for op in list {
        apply_op(&mut doc, op).map_err(PatchError::Invalid)?;
    }
    *target = doc;
    Ok(())
}

fn op_str<'a>(op: &'a Value, field: &str) -> Option<&'a str> {
    op.get(field).and_then(Value::as_str)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op_str(op, "op").unwrap_or("unknown");
    let path = || op_str(op, "path").ok_or_else(|| format!("{kind} operation missing path"));
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{kind} operation missing value"))
    };
    let from = || op_str(op, "from").ok_or_else(|| format!("{kind} operation missing from"));
    match kind {
        "add" => {
            let p = path()?;
            add(doc, &parse_pointer(p)?, value()?).map_err(|e| {
                format!("add operation does not apply: doc is missing path: \"{p}\": {e}")
            })
        }
        "remove" => {
            let p = path()?;
            remove(doc, &parse_pointer(p)?).map(drop).map_err(|e| {
                format!("remove operation does not apply: doc is missing path: \"{p}\": {e}")
            })
        }
        "replace" => {
            let p = path()?;
            replace(doc, &parse_pointer(p)?, value()?).map_err(|e| {
                format!("replace operation does not apply: doc is missing key: {p}: {e}")
            })
        }
        "move" => {
            let (f, p) = (from()?, path()?);
            let (ft, pt) = (parse_pointer(f)?, parse_pointer(p)?);
            if pt.len() > ft.len() && pt[..ft.len()] == ft[..] {
                return Err(format!("move operation: \"{p}\" is a child of \"{f}\""));
            }
            let v = remove(doc, &ft).map_err(|e| {
                format!("move operation does not apply: doc is missing from path: {f}: {e}")
            })?;
            add(doc, &pt, v).map_err(|e| {
                format!("move operation does not apply: doc is missing destination path: {p}: {e}")
            })
        }
        "copy" => {
            let (f, p) = (from()?, path()?);
            let v = get(doc, &parse_pointer(f)?).cloned().ok_or_else(|| {
                format!("copy operation does not apply: doc is missing from path: {f}")
            })?;
            add(doc, &parse_pointer(p)?, v).map_err(|e| {
                format!("copy operation does not apply: doc is missing destination path: {p}: {e}")
            })
        }
        "test" => {
            let p = path()?;
            let want = value()?;
            match get(doc, &parse_pointer(p)?) {
                Some(have) if json_eq(have, &want) => Ok(()),
                Some(_) => Err(format!("testing value {p} failed: test failed")),
                None if want.is_null() => Ok(()),
                None => Err(format!("testing value {p} failed: test failed")),
            }
        }
        other => Err(format!("Unexpected kind: {other}")),
    }
}

/// Parses an RFC 6901 JSON pointer into unescaped reference tokens.
fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {p:?}: must start with /"));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("invalid JSON pointer {p:?}: bad escape")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// Resolves an array index token; `allow_end` admits `len` (and `-`) for insertion.
fn array_index(tok: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    let valid = !tok.is_empty()
        && tok.len() <= 20
        && tok
            .strip_prefix('-')
            .unwrap_or(tok)
            .bytes()
            .all(|b| b.is_ascii_digit())
        && tok != "-";
    let n: i64 = if valid {
        tok.parse()
            .map_err(|_| format!("invalid array index {tok:?}"))?
    } else {
        return Err(format!("invalid array index {tok:?}"));
    };
    let len_i = i64::try_from(len).map_err(|_| "array too long".to_owned())?;
    let idx = if n < 0 {
        n.checked_add(len_i).ok_or("index out of range")?
    } else {
        n
    };
    let max = if allow_end { len_i } else { len_i - 1 };
    if idx < 0 || idx > max {
        return Err(format!("Unable to access invalid index: {n}"));
    }
    usize::try_from(idx).map_err(|_| format!("invalid array index {tok:?}"))
}

fn get<'a>(doc: &'a Value, toks: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(array_index(t, a.len(), false).ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn get_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or("missing value")?,
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                a.get_mut(i).ok_or("missing value")?
            }
            _ => return Err("missing value".into()),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, toks: &[String], v: Value) -> Result<(), String> {
    let Some((last, parent)) = toks.split_last() else {
        *doc = v;
        return Ok(());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, v);
            Ok(())
        }
        _ => Err("missing value".into()),
    }
}

fn remove(doc: &mut Value, toks: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = toks.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => m.shift_remove(last).ok_or_else(|| "missing value".into()),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err("missing value".into()),
    }
}

fn replace(doc: &mut Value, toks: &[String], v: Value) -> Result<(), String> {
    let slot = get_mut(doc, toks)?;
    *slot = v;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------------

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const SET_ORDER: &str = "$setElementOrder/";

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::BadRequest(msg.into())
}

/// Applies a Kubernetes strategic merge patch to an object of `kind` (e.g. `"Service"`).
///
/// Lists are merged by their `patchMergeKey` (Service `spec.ports` by `port`, conditions by
/// `type`, `ownerReferences` by `uid`, Node `status.addresses` by `type`), scalar lists with
/// `patchStrategy=merge` as sets, and every other list is replaced. Merged lists put the
/// new items first (golden 31; items already live keep their live order) unless
/// `$setElementOrder/<list>` gives the order. Supported directives: `$patch: replace|delete`
/// (in maps and list items), `$retainKeys`, `$deleteFromPrimitiveList/<list>`,
/// `$setElementOrder/<list>`; `null` deletes a key. `$patch: merge` is refused as
/// kube-apiserver refuses it (apimachinery: "unknown patch type" in a map, "merging lists
/// cannot yet be specified" in a list).
///
/// Errors: malformed directives are [`PatchError::BadRequest`] (400) as kube-apiserver maps
/// apimachinery's format errors; the errors kube-apiserver passes on unmapped (missing merge
/// key, unknown `$patch`, mixed list element types), which it answers with 500, are also 400
/// here. A kind registered as a custom resource gives [`PatchError::Unsupported`] (415,
/// golden 49); a kind the stand-in does not know at all is patched with every list replaced.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), PatchError> {
    let av = target
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let info = schema_keys::lookup(av, kind).or_else(|| schema_keys::lookup_kind(kind));
    let schema = match info {
        Some(i) if !i.strategic => {
            return Err(PatchError::Unsupported(CR_STRATEGIC_UNSUPPORTED.into()))
        }
        Some(i) => i.schema.clone(),
        None => Schema::Any,
    };
    let Value::Object(p) = patch else {
        return Err(bad(
            "json: cannot unmarshal non-object into Go value of type map[string]interface {}",
        ));
    };
    let original = match target {
        Value::Object(m) => Some(m.clone()),
        _ => None,
    };
    let merged = smp_map(original, p, &schema, 0)?;
    *target = Value::Object(merged);
    Ok(())
}

fn smp_map(
    original: Option<Map<String, Value>>,
    patch: &Map<String, Value>,
    schema: &Schema,
    depth: usize,
) -> Result<Map<String, Value>, PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("strategic merge patch nested too deeply"));
    }
    let mut out = original.unwrap_or_default();
    if let Some(d) = patch.get(DIRECTIVE) {
        match d.as_str() {
            Some("replace") => {
                let mut rest = patch.clone();
                rest.shift_remove(DIRECTIVE);
                return smp_map(None, &rest, schema, depth + 1);
            }
            Some("delete") => return Ok(Map::new()),
            // kube-apiserver refuses `$patch: merge` in a map (apimachinery's
            // handleDirectiveInMergeMap knows only replace and delete).
            _ => {
                return Err(bad(format!(
                    "unknown patch type: {} in map: {}",
                    d.as_str().map_or_else(|| d.to_string(), str::to_owned),
                    Value::Object(patch.clone())
                )))
            }
        }
    }
    if let Some(rk) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = rk
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("invalid patch format of retainKeys"))?;
        for (k, v) in patch {
            if !v.is_null() && !k.starts_with('$') && !keys.contains(&k.as_str()) {
                return Err(bad("invalid patch format of retainKeys"));
            }
        }
        out.retain(|k, _| keys.contains(&k.as_str()));
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(list) = k.strip_prefix(DELETE_PRIMITIVE) {
            let del = v
                .as_array()
                .ok_or_else(|| bad("invalid patch format of primitive list"))?;
            if let Some(Value::Array(items)) = out.get_mut(list) {
                items.retain(|i| !del.iter().any(|d| json_eq(i, d)));
            }
        } else if let Some(list) = k.strip_prefix(SET_ORDER) {
            let order = v
                .as_array()
                .ok_or_else(|| bad("invalid patch format of setElementOrder list"))?;
            orders.push((list, order));
        }
    }
    for (k, pv) in patch {
        if k == DIRECTIVE
            || k == RETAIN_KEYS
            || k.starts_with(DELETE_PRIMITIVE)
            || k.starts_with(SET_ORDER)
        {
            continue;
        }
        let sub = schema.field(k);
        if pv.is_null() {
            out.shift_remove(k);
            continue;
        }
        let order = orders
            .iter()
            .find(|(l, _)| *l == k.as_str())
            .map(|(_, o)| *o);
        let merged = smp_value(out.shift_remove(k), pv, sub, order, depth + 1)?;
        out.insert(k.clone(), merged);
    }
    // `$setElementOrder` for a list the patch does not touch reorders the live list.
    for (list, order) in orders {
        if patch.contains_key(list) {
            continue;
        }
        if let Some(Value::Array(items)) = out.get(list) {
            let items = items.clone();
            let merged = smp_list(items, &[], schema.field(list), Some(order), depth + 1)?;
            out.insert(list.to_owned(), Value::Array(merged));
        }
    }
    Ok(out)
}

fn smp_value(
    original: Option<Value>,
    patch: &Value,
    schema: &Schema,
    order: Option<&Vec<Value>>,
    depth: usize,
) -> Result<Value, PatchError> {
    match (original, patch) {
        (Some(Value::Object(o)), Value::Object(p)) => {
            Ok(Value::Object(smp_map(Some(o), p, schema, depth)?))
        }
        (None, Value::Object(p)) => Ok(Value::Object(smp_map(None, p, schema, depth)?)),
        (Some(Value::Array(o)), Value::Array(p)) => {
            Ok(Value::Array(smp_list(o, p, schema, order, depth)?))
        }
        (_, Value::Array(p)) => Ok(Value::Array(smp_list(Vec::new(), p, schema, order, depth)?)),
        (_, other) => Ok(other.clone()),
    }
}

/// The merge key value of a list item, if it is an object that has the key.
fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.as_object()?.get(key)
}

/// A canonical string for a list item's identity (its merge key value, or the item itself),
/// with integral numbers normalised so `80` and `80.0` match as with [`json_eq`].
fn ident(item: &Value, key: Option<&str>) -> Option<String> {
    let v = match key {
        Some(k) => key_of(item, k)?,
        None => item,
    };
    Some(match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    })
}

/// Position of the first item with each identity.
fn index_of(items: &[Value], key: Option<&str>) -> HashMap<String, usize> {
    let mut m = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(id) = ident(item, key) {
            m.entry(id).or_insert(i);
        }
    }
    m
}

fn position_in(index: &HashMap<String, usize>, probe: &Value, key: Option<&str>) -> Option<usize> {
    index.get(&ident(probe, key)?).copied()
}

fn smp_list(
    original: Vec<Value>,
    patch: &[Value],
    schema: &Schema,
    order: Option<&Vec<Value>>,
    depth: usize,
) -> Result<Vec<Value>, PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("strategic merge patch nested too deeply"));
    }
    let (strategy, elem) = match schema {
        Schema::List(l) => (&l.smp, &*l.elem),
        _ => (&SmpList::Replace, &Schema::Any),
    };
    let all_objects = patch.iter().all(Value::is_object);
    let all_scalars = patch.iter().all(|v| !v.is_object() && !v.is_array());
    let key = match strategy {
        SmpList::Replace => {
            // Replaced lists still lose their directives.
            return patch
                .iter()
                .map(|v| smp_value(None, v, elem, None, depth + 1))
                .collect();
        }
        SmpList::MergeKey(k) if all_objects => Some(k.as_str()),
        SmpList::MergeKey(_) | SmpList::MergePrimitive => {
            // Scalars only: apimachinery refuses mixed element types (and so any directive item).
            if !all_scalars {
                return Err(bad(format!(
                    "list element types are not identical: {}",
                    Value::Array(patch.to_vec())
                )));
            }
            let scalars = patch.to_vec();
            let mut merged = original.clone();
            let mut seen: HashSet<String> = merged.iter().filter_map(|m| ident(m, None)).collect();
            for s in &scalars {
                if ident(s, None).is_some_and(|id| seen.insert(id)) {
                    merged.push(s.clone());
                }
            }
            return order_items(merged, &original, &scalars, order, None);
        }
    };
    let key = key.unwrap_or_default();
    // Special elements first: `$patch: replace` replaces the list, `$patch: delete` deletes by key.
    let mut merged = original.clone();
    let mut plain: Vec<&Map<String, Value>> = Vec::new();
    for item in patch {
        let Value::Object(m) = item else { continue };
        match m.get(DIRECTIVE) {
            None => {
                if !m.contains_key(key) {
                    return Err(bad(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                }
                plain.push(m);
            }
            Some(d) => match d.as_str() {
                Some("replace") => {
                    return patch
                        .iter()
                        .filter(|v| v.get(DIRECTIVE).is_none())
                        .map(|v| smp_value(None, v, elem, None, depth + 1))
                        .collect();
                }
                Some("delete") => {
                    let kv = m.get(key).ok_or_else(|| {
                        bad(format!(
                            "map: {item} does not contain declared merge key: {key}"
                        ))
                    })?;
                    let gone = ident(kv, None);
                    merged.retain(|i| ident(i, Some(key)) != gone);
                }
                Some("merge") => {
                    return Err(bad("merging lists cannot yet be specified in the patch"));
                }
                _ => {
                    return Err(bad(format!(
                        "unknown patch type: {} in map: {item}",
                        d.as_str().map_or_else(|| d.to_string(), str::to_owned)
                    )))
                }
            },
        }
    }
    let mut patch_items = Vec::new();
    let mut index = index_of(&merged, Some(key));
    for m in plain {
        let probe = Value::Object(m.clone());
        match position_in(&index, &probe, Some(key)) {
            Some(i) => {
                let orig = match std::mem::take(&mut merged[i]) {
                    Value::Object(o) => Some(o),
                    _ => None,
                };
                merged[i] = Value::Object(smp_map(orig, m, elem, depth + 1)?);
            }
            None => {
                if let Some(id) = ident(&probe, Some(key)) {
                    index.insert(id, merged.len());
                }
                merged.push(Value::Object(smp_map(None, m, elem, depth + 1)?));
            }
        }
        patch_items.push(probe);
    }
    order_items(merged, &original, &patch_items, order, Some(key))
}

/// Orders a merged list like apimachinery's `normalizeElementOrder`: the items named by the
/// patch (or by `$setElementOrder`) in that order, the server-only items in their live order,
/// interleaved by their live positions; new items go before the server-only ones.
fn order_items(
    merged: Vec<Value>,
    original: &[Value],
    patch_items: &[Value],
    order: Option<&Vec<Value>>,
    key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    let wanted: &[Value] = match order {
        Some(o) => {
            if let Some(k) = key {
                if o.iter().any(|e| key_of(e, k).is_none()) {
                    return Err(bad("invalid patch format of setElementOrder list"));
                }
            }
            // Every item of the patch list must appear in the order list, in the same order.
            let order_index = index_of(o, key);
            let mut last = None;
            for p in patch_items {
                match position_in(&order_index, p, key) {
                    Some(i) if last.is_none_or(|l| i > l) => last = Some(i),
                    _ => return Err(bad("invalid patch format of setElementOrder list")),
                }
            }
            o
        }
        None => patch_items,
    };
    let wanted_index = index_of(wanted, key);
    let original_index = index_of(original, key);
    let mut patched: Vec<(usize, Value)> = Vec::new();
    let mut server: Vec<Value> = Vec::new();
    for item in merged {
        match position_in(&wanted_index, &item, key) {
            Some(i) => patched.push((i, item)),
            None => server.push(item),
        }
    }
    patched.sort_by_key(|(i, _)| *i);
    let idx = |v: &Value| position_in(&original_index, v, key).map_or(-1, |i| i as i64);
    let mut out = Vec::with_capacity(patched.len() + server.len());
    let mut left = patched.into_iter().map(|(_, v)| v).peekable();
    let mut right = server.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => {
                // apimachinery's mergeSortedSlice(serverOnly, patch, live): a server-only item
                // goes first only when both are in the live list and it came first there.
                let (pi, si) = (idx(l), idx(r));
                if pi >= 0 && si >= 0 && si < pi {
                    out.extend(right.next());
                } else {
                    out.extend(left.next());
                }
            }
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (None, None) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The Service `web` as golden 30 returns it (managedFields left out).
    fn web_after_30() -> Value {
        json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "demo", "uid": "8c1f23b2-b280-46a2-9960-8ce03a6a88b7",
                "resourceVersion": "266", "creationTimestamp": "2026-11-22T07:51:07Z",
                "labels": {"app": "web", "env": "a", "patched-by": "json-patch", "tier": "edge"}},
            "spec": {
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8081, "nodePort": 32419}],
                "selector": {"app": "web"}, "clusterIP": "10.96.154.179", "clusterIPs": ["10.96.154.179"],
                "type": "LoadBalancer", "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Cluster",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}}, "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack", "allocateLoadBalancerNodePorts": true,
                "loadBalancerClass": "ferrolb.io/l2", "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}}
        })
    }

    #[test]
    fn merge_patch_golden_29_null_deletes_and_empty_map_stays_for_the_encoder() {
        let mut obj = json!({
            "metadata": {"labels": {"app": "web", "env": "a", "tier": "edge"}, "annotations": {"ferrolb.io/pool": "pool-a"}},
            "spec": {"sessionAffinity": "None", "ports": [{"port": 80}]}
        });
        let patch = json!({"metadata": {"labels": {"version": "v2"}, "annotations": {"ferrolb.io/pool": null}},
            "spec": {"sessionAffinity": "ClientIP"}});
        merge_patch(&mut obj, &patch);
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app": "web", "env": "a", "tier": "edge", "version": "v2"})
        );
        assert_eq!(obj["metadata"]["annotations"], json!({}));
        assert_eq!(obj["spec"]["sessionAffinity"], "ClientIP");
        assert_eq!(obj["spec"]["ports"], json!([{"port": 80}]));
    }

    #[test]
    fn merge_patch_golden_33_replaces_lists() {
        let mut obj = web_after_30();
        let patch = json!({"spec": {"ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}]}});
        merge_patch(&mut obj, &patch);
        assert_eq!(
            obj["spec"]["ports"],
            json!([{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}])
        );
        assert_eq!(obj["spec"]["type"], "LoadBalancer");
    }

    #[test]
    fn json_eq_numbers_order_and_depth() {
        assert!(json_eq(
            &json!({"a": 1, "b": [1.0, "x"]}),
            &json!({"b": [1, "x"], "a": 1.0})
        ));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        let mut deep_a = json!(1);
        let mut deep_b = json!(2);
        for _ in 0..100_000 {
            deep_a = Value::Array(vec![deep_a]);
            deep_b = Value::Array(vec![deep_b]);
        }
        assert!(!json_eq(&deep_a, &deep_b));
        // Drop iteratively too (serde_json's own Drop recurses).
        for mut d in [deep_a, deep_b] {
            while let Value::Array(mut inner) = d {
                d = inner.pop().unwrap_or(Value::Null);
            }
        }
    }

    #[test]
    fn merge_patch_rfc7386_cases() {
        // From RFC 7386 appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut t, p, want) in cases {
            merge_patch(&mut t, &p);
            assert_eq!(t, want, "patch {p}");
        }
    }

    #[test]
    fn json_patch_golden_30() {
        let mut obj = web_after_30();
        obj["metadata"]["labels"] =
            json!({"app": "web", "env": "a", "tier": "edge", "version": "v2"});
        obj["spec"]["ports"][0]["targetPort"] = json!(8080);
        let ops = json!([
            {"op": "test", "path": "/spec/type", "value": "LoadBalancer"},
            {"op": "add", "path": "/metadata/labels/patched-by", "value": "json-patch"},
            {"op": "replace", "path": "/spec/ports/0/targetPort", "value": 8081},
            {"op": "remove", "path": "/metadata/labels/version"}
        ]);
        json_patch(&mut obj, &ops).expect("golden 30 applies");
        assert_eq!(obj, web_after_30());
    }

    #[test]
    fn json_patch_failed_test_is_422_and_leaves_target_unchanged() {
        let mut obj = web_after_30();
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/x", "value": "y"},
            {"op": "test", "path": "/spec/type", "value": "ClusterIP"}
        ]);
        let err = json_patch(&mut obj, &ops).unwrap_err();
        assert_eq!(
            err,
            PatchError::Invalid("testing value /spec/type failed: test failed".into())
        );
        assert_eq!(err.code(), 422);
        assert_eq!(obj, web_after_30());
    }

    #[test]
    fn json_patch_move_copy_escapes_and_append() {
        let mut doc = json!({"a/b": {"c~d": 1}, "list": [1, 2], "x": {}});
        let ops = json!([
            {"op": "copy", "from": "/a~1b/c~0d", "path": "/x/copied"},
            {"op": "move", "from": "/list/0", "path": "/list/-"},
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "add", "path": "/list/-1", "value": 9},
            {"op": "test", "path": "/x/copied", "value": 1.0}
        ]);
        json_patch(&mut doc, &ops).expect("applies");
        assert_eq!(
            doc,
            json!({"a/b": {"c~d": 1}, "list": [0, 2, 9, 1], "x": {"copied": 1}})
        );
    }

    #[test]
    fn json_patch_hostile_inputs_are_errors() {
        let base = json!({"a": [1, 2, 3], "o": {"k": 1}});
        let bad_ops = [
            json!([{"op": "add", "path": "/a/99999999999999999999999", "value": 1}]),
            json!([{"op": "add", "path": "/a/4", "value": 1}]),
            json!([{"op": "remove", "path": "/a/-4"}]),
            json!([{"op": "remove", "path": "/a/-"}]),
            json!([{"op": "replace", "path": "/o/missing", "value": 1}]),
            json!([{"op": "remove", "path": "/o/k/deeper"}]),
            json!([{"op": "move", "from": "/o", "path": "/o/k/inner"}]),
            json!([{"op": "add", "path": "no-slash", "value": 1}]),
            json!([{"op": "add", "path": "/o/~2", "value": 1}]),
            json!([{"op": "frobnicate", "path": "/o"}]),
            json!([{"op": "add", "path": "/o/x"}]),
            json!([{"op": "remove", "path": ""}]),
            json!([{"path": "/o"}]),
            json!([{"op": "add", "path": "/a/+1", "value": 1}]),
        ];
        for ops in bad_ops {
            let mut doc = base.clone();
            let err = json_patch(&mut doc, &ops).expect_err(&ops.to_string());
            assert_eq!(err.code(), 422, "{ops}: {err}");
            assert_eq!(doc, base);
        }
        let mut doc = base.clone();
        assert_eq!(
            json_patch(&mut doc, &json!({"op": "add"}))
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(json_patch(&mut doc, &json!([1])).unwrap_err().code(), 400);
        let many = Value::Array(vec![
            json!({"op": "test", "path": "/a/0", "value": 1});
            MAX_JSON_PATCH_OPERATIONS + 1
        ]);
        assert_eq!(json_patch(&mut doc, &many).unwrap_err().code(), 400);
        assert_eq!(doc, base);
    }

    #[test]
    fn strategic_golden_31_merges_ports_by_port_new_first() {
        let mut obj = web_after_30();
        let patch = json!({"spec": {"ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(
            obj["spec"]["ports"],
            json!([
                {"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443},
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8081, "nodePort": 32419}
            ])
        );
        // Everything else untouched.
        let mut rest = obj.clone();
        rest["spec"]["ports"] = web_after_30()["spec"]["ports"].clone();
        assert_eq!(rest, web_after_30());
    }

    #[test]
    fn strategic_golden_32_patch_delete_removes_by_key() {
        let mut obj = web_after_30();
        obj["spec"]["ports"] = json!([
            {"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443, "nodePort": 30150},
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8081, "nodePort": 32419}
        ]);
        let patch = json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(obj, web_after_30());
    }

    #[test]
    fn strategic_kubectl_client_side_apply_with_set_element_order() {
        // The body quoted in kubectl-apply-client-side-update.txt.
        let mut obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "client-applied", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "old"}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 31000}]}});
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "new\n"}, "labels": {"tier": "edge"}},
            "spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": 9090}]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(
            obj["spec"]["ports"],
            json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 9090, "nodePort": 31000}])
        );
        assert_eq!(obj["metadata"]["labels"], json!({"tier": "edge"}));
        assert_eq!(
            obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "new\n"
        );
        assert!(obj["spec"].get("$setElementOrder/ports").is_none());
    }

    #[test]
    fn strategic_primitive_list_with_order_and_delete_directives() {
        // What kubectl's three-way patch sends for a merge list of scalars.
        let mut obj =
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"finalizers": ["a", "c"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["b", "a"],
            "$deleteFromPrimitiveList/finalizers": ["c"], "finalizers": ["b"]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(obj["metadata"], json!({"finalizers": ["b", "a"]}));
        // Duplicates are not added twice.
        let patch = json!({"metadata": {"finalizers": ["a", "a"]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(obj["metadata"]["finalizers"], json!(["b", "a"]));
    }

    #[test]
    fn strategic_set_element_order_reorders_and_keeps_server_only_items() {
        let mut obj = json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": [
            {"port": 1, "name": "a"}, {"port": 2, "name": "b"}, {"port": 3, "name": "c"}]}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 4}, {"port": 3}, {"port": 1}],
            "ports": [{"port": 4, "name": "d"}]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        let names: Vec<_> = obj["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].clone())
            .collect();
        // apimachinery's order: d is new (first); b is server-only and before c in the live list.
        assert_eq!(names, vec![json!("d"), json!("b"), json!("c"), json!("a")]);
    }

    #[test]
    fn strategic_conditions_owner_refs_atomic_lists_and_directives() {
        let mut obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"ownerReferences": [{"uid": "u1", "name": "a"}], "finalizers": ["f1"]},
            "spec": {"externalIPs": ["192.0.2.1", "192.0.2.2"], "selector": {"app": "x", "tier": "y"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]},
                "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}});
        let patch = json!({
            "metadata": {"ownerReferences": [{"uid": "u2", "name": "b"}], "finalizers": ["f2"],
                "$deleteFromPrimitiveList/finalizers": ["f1"]},
            "spec": {"externalIPs": ["192.0.2.3"], "selector": {"tier": null}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]},
                "conditions": [{"type": "B", "status": "True"}]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(
            obj["metadata"]["ownerReferences"],
            json!([{"uid": "u2", "name": "b"}, {"uid": "u1", "name": "a"}])
        );
        assert_eq!(obj["metadata"]["finalizers"], json!(["f2"]));
        assert_eq!(obj["spec"]["externalIPs"], json!(["192.0.2.3"]));
        assert_eq!(obj["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(
            obj["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "198.51.100.2"}])
        );
        assert_eq!(
            obj["status"]["conditions"],
            // Existing items keep their live order; only new ones go first.
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "True"}])
        );

        // $patch: replace on a map and on a list; $retainKeys.
        let patch = json!({"spec": {"$patch": "replace", "type": "ClusterIP"},
            "status": {"conditions": [{"$patch": "replace"}, {"type": "C", "status": "True"}]},
            "metadata": {"$retainKeys": ["finalizers"], "finalizers": ["f3"]}});
        strategic_merge_patch(&mut obj, &patch, "Service").expect("applies");
        assert_eq!(obj["spec"], json!({"type": "ClusterIP"}));
        assert_eq!(
            obj["status"]["conditions"],
            json!([{"type": "C", "status": "True"}])
        );
        assert_eq!(obj["metadata"], json!({"finalizers": ["f3", "f2"]}));
    }

    #[test]
    fn strategic_node_addresses_by_type_and_unknown_kinds_replace_lists() {
        let mut node = json!({"apiVersion": "v1", "kind": "Node", "status": {"addresses": [
            {"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": "n1"}]}});
        let patch =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}});
        strategic_merge_patch(&mut node, &patch, "Node").expect("applies");
        assert_eq!(
            node["status"]["addresses"],
            json!([
            {"type": "InternalIP", "address": "192.0.2.11"}, {"type": "Hostname", "address": "n1"}])
        );

        let mut thing = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"items": [{"type": "a"}]}});
        let patch = json!({"spec": {"items": [{"type": "b"}]}});
        strategic_merge_patch(&mut thing, &patch, "Widget").expect("applies");
        assert_eq!(thing["spec"]["items"], json!([{"type": "b"}]));
    }

    #[test]
    fn strategic_on_custom_resource_is_415_like_golden_49() {
        crate::schema_keys::tests::register_repo_crds();
        let mut pool =
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool", "spec": {}});
        let err = strategic_merge_patch(
            &mut pool,
            &json!({"spec": {"disabled": true}}),
            "LoadBalancerIPPool",
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::Unsupported(CR_STRATEGIC_UNSUPPORTED.into())
        );
        assert_eq!(pool["spec"], json!({}));
    }

    #[test]
    fn status_bodies_match_golden_40_and_49() {
        let golden_49 = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": CR_STRATEGIC_UNSUPPORTED, "reason": "UnsupportedMediaType", "code": 415});
        assert_eq!(
            PatchError::Unsupported(CR_STRATEGIC_UNSUPPORTED.into()).status(),
            golden_49
        );
        let golden_40 = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "415: Unsupported Media Type", "reason": "UnsupportedMediaType", "details": {}, "code": 415});
        assert_eq!(PatchError::Unsupported(String::new()).status(), golden_40);
        let bad = PatchError::BadRequest("x".into()).status();
        assert_eq!(bad["code"], 400);
        assert!(bad.get("details").is_none());
        let invalid = PatchError::Invalid("testing value /a failed: test failed".into()).status();
        assert_eq!(
            invalid,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the server rejected our request due to an error in our request",
                "reason": "Invalid", "details": {}, "code": 422})
        );
    }

    #[test]
    fn dispatch_by_content_type() {
        let mut obj = web_after_30();
        let patch = json!({"spec": {"ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}]}});
        patch_by_content_type(
            &mut obj,
            &patch,
            "application/strategic-merge-patch+json; charset=utf-8",
            "Service",
        )
        .unwrap();
        assert_eq!(obj["spec"]["ports"].as_array().unwrap().len(), 2);
        patch_by_content_type(&mut obj, &patch, "application/merge-patch+json", "Service").unwrap();
        assert_eq!(obj["spec"]["ports"].as_array().unwrap().len(), 1);
        let ops = json!([{"op": "replace", "path": "/spec/type", "value": "ClusterIP"}]);
        patch_by_content_type(&mut obj, &ops, "Application/JSON-Patch+JSON", "Service").unwrap();
        assert_eq!(obj["spec"]["type"], "ClusterIP");
        let err =
            patch_by_content_type(&mut obj, &patch, "application/json", "Service").unwrap_err();
        assert_eq!(err.status()["message"], "415: Unsupported Media Type");
        assert_eq!(
            patch_by_content_type(&mut obj, &patch, APPLY_PATCH, "Service")
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn strategic_hostile_inputs_are_errors() {
        let base = web_after_30();
        let bad = [
            (json!({"spec": {"ports": [{"name": "no-key"}]}}), 400),
            (json!({"spec": {"ports": [{"$patch": "delete"}]}}), 400),
            (
                json!({"spec": {"ports": [{"port": 80, "$patch": "explode"}]}}),
                400,
            ),
            (json!({"spec": {"$patch": 7}}), 400),
            (
                json!({"spec": {"$patch": "merge", "type": "ClusterIP"}}),
                400,
            ),
            (
                json!({"spec": {"ports": [{"port": 80, "$patch": "merge"}]}}),
                400,
            ),
            (
                json!({"metadata": {"finalizers": [{"$patch": "replace"}]}}),
                400,
            ),
            (
                json!({"spec": {"$setElementOrder/ports": "x", "ports": []}}),
                400,
            ),
            (
                json!({"spec": {"$setElementOrder/ports": [{"name": "x"}], "ports": []}}),
                400,
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": {"a": 1}}}),
                400,
            ),
            (json!({"spec": {"$retainKeys": [1]}}), 400),
            (json!({"spec": {"$retainKeys": ["type"], "ports": []}}), 400),
            (
                json!({"spec": {"$setElementOrder/ports": [{"port": 1}], "ports": [{"port": 2}]}}),
                400,
            ),
            (json!({"metadata": {"finalizers": [{"a": 1}, "x"]}}), 400),
            (json!(["not", "an", "object"]), 400),
        ];
        for (patch, code) in bad {
            let mut obj = base.clone();
            let err =
                strategic_merge_patch(&mut obj, &patch, "Service").expect_err(&patch.to_string());
            assert_eq!(err.code(), code, "{patch}: {err}");
            assert_eq!(obj, base);
        }
        // Deep nesting: an error, not a stack overflow.
        let mut deep = json!(1);
        for _ in 0..(MAX_DEPTH + 10) {
            deep = json!({"a": deep});
        }
        let mut obj = base.clone();
        assert_eq!(
            strategic_merge_patch(&mut obj, &deep, "Service")
                .unwrap_err()
                .code(),
            400
        );
        // Wrong types replace rather than panic.
        let mut obj = base.clone();
        strategic_merge_patch(&mut obj, &json!({"spec": {"ports": "eighty"}}), "Service")
            .expect("scalar replaces list");
        assert_eq!(obj["spec"]["ports"], "eighty");
    }
}
