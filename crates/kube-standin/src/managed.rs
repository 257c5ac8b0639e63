//! `metadata.managedFields` bookkeeping and server-side apply, modelled on
//! sigs.k8s.io/structured-merge-diff as kube-apiserver uses it.
//!
//! Field sets are trees of path elements, serialised as FieldsV1: `f:<field>`,
//! `k:{"port":80,"protocol":"TCP"}` for items of keyed lists, `v:<json>` for items of set lists,
//! `i:<n>` for positions, and `.` when a container itself is a member. Entries are identified by
//! (manager, operation, apiVersion for Update only, subresource), as in kube-apiserver.
//!
//! How the caller (the request handlers) uses this module:
//! - create / update / patch (non-apply): build the object to be stored (after defaulting,
//!   before the server allocates clusterIP/nodePorts, so allocated fields are not owned, README
//!   item 4), then call [`update_managed_fields`] with the live object (`None` on create). It
//!   takes ownership data from `new.metadata.managedFields` when the client sent some (main
//!   resource only), else from `old`.
//! - apply: [`server_side_apply`] returns the merged object with its managedFields, or the
//!   conflicts ([`ApplyConflict::status`] is the 409 body of golden 35).
//!
//! Built-in objects are compared as Go would see them: empty maps and lists count as absent
//! (`omitempty`), and a create starts from the type's zero value (`spec: {}`), so `spec` and
//! `status` get no `.` entry (golden 29).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::schema_keys::{self, ListKind, ListSchema, Schema};

/// Deepest nesting the walkers follow; deeper values are treated as single (atomic) fields.
const MAX_DEPTH: usize = 128;

/// Update entries kept before the oldest are merged into `ancient-changes` (kube-apiserver: 10).
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// A server-side apply conflict: (field path, conflicting manager) pairs.
#[derive(Debug, Clone)]
pub struct ApplyConflict {
    /// `(path, manager)`, e.g. `(".spec.ports[port=80,protocol=\"TCP\"].targetPort", "\"one\"")`.
    /// The manager is printed as kube-apiserver prints it: quoted, plus ` with subresource "status"`
    /// for subresource entries and ` using v1` for Update entries, so a cause's message is
    /// `format!("conflict with {manager}")`. Causes are sorted by manager, then path.
    pub causes: Vec<(String, String)>,
}

impl ApplyConflict {
    /// The Status message, e.g. `Apply failed with 2 conflicts: conflicts with "one":\n- .a\n- .b`.
    pub fn message(&self) -> String {
        if let [(path, manager)] = self.causes.as_slice() {
            return format!("Apply failed with 1 conflict: conflict with {manager}: {path}");
        }
        let mut lines = Vec::new();
        let mut last: Option<&str> = None;
        for (path, manager) in &self.causes {
            if last != Some(manager.as_str()) {
                lines.push(format!("conflicts with {manager}:"));
                last = Some(manager);
            }
            lines.push(format!("- {path}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.causes.len(),
            lines.join("\n")
        )
    }

    /// The whole 409 Status body, shaped like golden 35 (details has only causes).
    pub fn status(&self) -> Value {
        let causes: Vec<Value> = self
            .causes
            .iter()
            .map(|(path, manager)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": path})
            })
            .collect();
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message(), "reason": "Conflict", "details": {"causes": causes}, "code": 409
        })
    }
}

impl std::fmt::Display for ApplyConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApplyConflict {}

// ---------------------------------------------------------------------------------------------
// Path elements and field sets
// ---------------------------------------------------------------------------------------------

/// One step of a field path.
#[derive(Debug, Clone)]
pub enum PathElement {
    /// `f:name` / `.name`.
    Field(String),
    /// `k:{...}` / `[a=1,b="x"]`: a keyed list item, key fields sorted by name.
    Key(Vec<(String, Value)>),
    /// `v:<json>` / `[=<json>]`: a set list item.
    Value(Value),
    /// `i:<n>` / `[n]`: a list position.
    Index(i64),
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Bool(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// A total order on JSON values (numbers numerically, then by type).
pub fn cmp_value(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(p), Some(q)) => p.cmp(&q),
            _ => x
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = cmp_value(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for ((ka, va), (kb, vb)) in xs.iter().zip(&ys) {
                let c = ka.cmp(kb).then_with(|| cmp_value(va, vb));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The FieldsV1 key (`f:name`, `k:{...}`, `v:...`, `i:n`).
    pub fn to_fields_v1(&self) -> String {
        match self {
            PathElement::Field(n) => format!("f:{n}"),
            PathElement::Key(fields) => {
                let m: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", Value::Object(m))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a FieldsV1 key.
    pub fn from_fields_v1(s: &str) -> Option<PathElement> {
        let (kind, rest) = s.split_at_checked(2)?;
        match kind {
            "f:" => Some(PathElement::Field(rest.to_owned())),
            "k:" => match serde_json::from_str::<Value>(rest).ok()? {
                Value::Object(m) if !m.is_empty() => {
                    let mut fields: Vec<(String, Value)> = m.into_iter().collect();
                    fields.sort_by(|a, b| a.0.cmp(&b.0));
                    Some(PathElement::Key(fields))
                }
                _ => None,
            },
            "v:" => serde_json::from_str(rest).ok().map(PathElement::Value),
            "i:" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

impl std::fmt::Display for PathElement {
    /// The path notation of conflict messages: `.name`, `[port=80,protocol="TCP"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => a.len().cmp(&b.len()).then_with(|| {
                for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                    let c = ka.cmp(kb).then_with(|| cmp_value(va, vb));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                Ordering::Equal
            }),
            (PathElement::Value(a), PathElement::Value(b)) => cmp_value(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// A set of field paths, as a tree. The root's `member` is unused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the path leading here is itself in the set (`.` in FieldsV1).
    pub member: bool,
    /// Sub-paths.
    pub children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    fn child(&mut self, pe: PathElement) -> &mut FieldSet {
        self.children.entry(pe).or_default()
    }

    /// Inserts a path.
    pub fn insert(&mut self, path: &[PathElement]) {
        let mut cur = self;
        for pe in path {
            cur = cur.child(pe.clone());
        }
        cur.member = true;
    }

    /// Whether a path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        let mut cur = self;
        for pe in path {
            match cur.children.get(pe) {
                Some(c) => cur = c,
                None => return false,
            }
        }
        cur.member
    }

    /// Whether the set has a member at or below `path`.
    pub fn has_at_or_below(&self, path: &[PathElement]) -> bool {
        let mut cur = self;
        for pe in path {
            match cur.children.get(pe) {
                Some(c) => cur = c,
                None => return false,
            }
        }
        !cur.is_empty()
    }

    fn prune_empty(&mut self) {
        for c in self.children.values_mut() {
            c.prune_empty();
        }
        self.children.retain(|_, c| !c.is_empty());
    }

    /// `self ∪ other`.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (pe, c) in &other.children {
            self.child(pe.clone()).union(c);
        }
    }

    /// `self \ other` (members only; structure is pruned).
    pub fn difference(&mut self, other: &FieldSet) {
        if other.member {
            self.member = false;
        }
        for (pe, c) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                mine.difference(c);
            }
        }
        self.prune_empty();
    }

    /// `self ∩ other`.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// Removes every path at or below `prefix`.
    pub fn remove_subtree(&mut self, prefix: &[PathElement]) {
        let Some((last, parent)) = prefix.split_last() else {
            *self = FieldSet::default();
            return;
        };
        let mut cur = &mut *self;
        for pe in parent {
            match cur.children.get_mut(pe) {
                Some(c) => cur = c,
                None => return,
            }
        }
        cur.children.remove(last);
        self.prune_empty();
    }

    /// Every member path, in kube's iteration order (members of a level before deeper paths).
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        for (pe, c) in &self.children {
            if c.member {
                prefix.push(pe.clone());
                out.push(prefix.clone());
                prefix.pop();
            }
        }
        for (pe, c) in &self.children {
            if !c.children.is_empty() {
                prefix.push(pe.clone());
                c.collect(prefix, out);
                prefix.pop();
            }
        }
    }

    /// FieldsV1 JSON.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (pe, c) in &self.children {
            if !c.is_empty() {
                m.insert(pe.to_fields_v1(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    /// Parses FieldsV1 JSON (the root object).
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        Self::parse(v, 0)
    }

    fn parse(v: &Value, depth: usize) -> Option<FieldSet> {
        let m = v.as_object()?;
        if depth > MAX_DEPTH {
            return None;
        }
        let mut out = FieldSet::default();
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            let pe = PathElement::from_fields_v1(k)?;
            let mut child = Self::parse(c, depth + 1)?;
            if child.children.is_empty() {
                child.member = true;
            }
            out.children.insert(pe, child);
        }
        Some(out)
    }
}

/// A path in conflict-message notation (`.spec.ports[port=80,protocol="TCP"].targetPort`).
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// Walking values with their schema
// ---------------------------------------------------------------------------------------------

/// How a list is walked after validation against its items.
enum Mode {
    Atomic,
    Set,
    Keyed(Vec<String>),
}

/// The walking mode of a list: malformed keyed lists (item without key, duplicates) and sets
/// (non-scalar or duplicate items) fall back to atomic, so hostile input never fails.
fn list_mode(items: &[&Vec<Value>], ls: &ListSchema) -> Mode {
    match &ls.kind {
        ListKind::Atomic => Mode::Atomic,
        ListKind::Set => {
            for list in items {
                let mut seen = BTreeSet::new();
                for v in list.iter() {
                    if v.is_object() || v.is_array() || !seen.insert(PathElement::Value(v.clone()))
                    {
                        return Mode::Atomic;
                    }
                }
            }
            Mode::Set
        }
        ListKind::Map(keys) => {
            for list in items {
                let mut seen = BTreeSet::new();
                for item in list.iter() {
                    let fresh = key_pe(item, keys, ls).is_some_and(|pe| seen.insert(pe));
                    if !fresh {
                        return Mode::Atomic;
                    }
                }
            }
            Mode::Keyed(keys.clone())
        }
    }
}

fn key_pe(item: &Value, keys: &[String], ls: &ListSchema) -> Option<PathElement> {
    let m = item.as_object()?;
    let mut fields = Vec::with_capacity(keys.len());
    for k in keys {
        let v = match m.get(k) {
            Some(v) if !v.is_null() && !v.is_object() && !v.is_array() => v.clone(),
            Some(_) => return None,
            None => ls.key_defaults.iter().find(|(d, _)| d == k)?.1.clone(),
        };
        fields.push((k.clone(), v));
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Some(PathElement::Key(fields))
}

fn item_pe(item: &Value, index: usize, mode: &Mode, ls: &ListSchema) -> PathElement {
    match mode {
        Mode::Keyed(keys) => key_pe(item, keys, ls).unwrap_or(PathElement::Index(index as i64)),
        Mode::Set => PathElement::Value(item.clone()),
        Mode::Atomic => PathElement::Index(index as i64),
    }
}

/// Context of one walk.
struct Ctx {
    /// Treat empty maps and lists as absent (Go `omitempty`), for built-in types.
    omitempty: bool,
}

impl Ctx {
    /// `v` as Go would encode it: empty free-form maps, empty lists and nulls are omitted.
    fn present<'a>(&self, v: Option<&'a Value>, schema: &Schema) -> Option<&'a Value> {
        if !self.omitempty {
            return v;
        }
        match (v, schema) {
            (Some(Value::Object(m)), Schema::Map(_)) if m.is_empty() => None,
            (Some(Value::Array(a)), _) if a.is_empty() => None,
            (Some(Value::Null), _) => None,
            (other, _) => other,
        }
    }
}

/// Whether `v` is walked as a container under `schema` (otherwise it is one leaf field).
fn is_container(v: &Value, schema: &Schema) -> bool {
    match (v, schema) {
        (Value::Object(_), Schema::Struct(_) | Schema::Map(_) | Schema::Any) => true,
        (Value::Array(_), Schema::List(l)) => l.kind != ListKind::Atomic,
        _ => false,
    }
}

/// The field set an applied configuration sets (structured-merge-diff `ToFieldSet`).
fn to_field_set(v: &Value, schema: &Schema, out: &mut FieldSet, depth: usize) {
    if depth > MAX_DEPTH {
        out.member = true;
        return;
    }
    match (v, schema) {
        (Value::Object(m), Schema::Struct(_) | Schema::Map(_) | Schema::Any) => {
            for (k, child) in m {
                let cs = schema.field(k);
                let node = out.child(PathElement::Field(k.clone()));
                let empty_map = matches!(child, Value::Object(o) if o.is_empty());
                if child.is_null() || empty_map || !is_container(child, cs) {
                    node.member = true;
                } else {
                    to_field_set(child, cs, node, depth + 1);
                    if !schema.is_declared(k) {
                        node.member = true;
                    }
                }
            }
        }
        (Value::Array(items), Schema::List(ls)) => match list_mode(&[items], ls) {
            Mode::Atomic => out.member = true,
            mode => {
                for (i, item) in items.iter().enumerate() {
                    let node = out.child(item_pe(item, i, &mode, ls));
                    node.member = true;
                    if matches!(mode, Mode::Keyed(_)) && is_container(item, &ls.elem) {
                        to_field_set(item, &ls.elem, node, depth + 1);
                    }
                }
            }
        },
        _ => out.member = true,
    }
}

/// Added / removed / modified fields between two objects (structured-merge-diff `Compare`).
#[derive(Debug, Default)]
struct Comparison {
    added: FieldSet,
    removed: FieldSet,
    modified: FieldSet,
}

fn compare(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    schema: &Schema,
    ctx: &Ctx,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
    depth: usize,
) {
    let (l, r) = (ctx.present(lhs, schema), ctx.present(rhs, schema));
    if l.is_none() && r.is_none() {
        return;
    }
    let container = |v: Option<&Value>| v.is_none_or(|v| is_container(v, schema));
    let empty = |v: Option<&Value>| match v {
        None => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    let same_kind = match (l, r) {
        (Some(a), Some(b)) => a.is_object() == b.is_object() && a.is_array() == b.is_array(),
        _ => true,
    };
    let walk =
        depth <= MAX_DEPTH && same_kind && container(l) && container(r) && !(empty(l) && empty(r));
    let mode = match (l.or(r), schema) {
        (Some(Value::Array(_)), Schema::List(ls)) => {
            let lists: Vec<&Vec<Value>> = [l, r]
                .into_iter()
                .flatten()
                .filter_map(Value::as_array)
                .collect();
            Some(list_mode(&lists, ls))
        }
        _ => None,
    };
    let atomic_list = matches!(mode, Some(Mode::Atomic));
    if !walk || atomic_list {
        match (l, r) {
            (None, Some(_)) => c.added.insert(path),
            (Some(_), None) => c.removed.insert(path),
            (Some(a), Some(b)) if !crate::patch_engines::json_eq(a, b) => c.modified.insert(path),
            _ => {}
        }
        return;
    }
    match (l.or(r), schema, mode) {
        (Some(Value::Object(_)), _, _) => {
            let empty_map = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty_map);
            let rm = r.and_then(Value::as_object).unwrap_or(&empty_map);
            let keys: Vec<&String> = lm
                .keys()
                .chain(rm.keys().filter(|k| !lm.contains_key(*k)))
                .collect();
            for k in keys {
                path.push(PathElement::Field(k.clone()));
                compare(
                    lm.get(k),
                    rm.get(k),
                    schema.field(k),
                    ctx,
                    path,
                    c,
                    depth + 1,
                );
                path.pop();
            }
        }
        (Some(Value::Array(_)), Schema::List(ls), Some(mode)) => {
            let none = Vec::new();
            let la = l.and_then(Value::as_array).unwrap_or(&none);
            let ra = r.and_then(Value::as_array).unwrap_or(&none);
            let lp: Vec<(PathElement, &Value)> = la
                .iter()
                .enumerate()
                .map(|(i, v)| (item_pe(v, i, &mode, ls), v))
                .collect();
            let rp: Vec<(PathElement, &Value)> = ra
                .iter()
                .enumerate()
                .map(|(i, v)| (item_pe(v, i, &mode, ls), v))
                .collect();
            let elem: &Schema = if matches!(mode, Mode::Set) {
                &Schema::Scalar
            } else {
                &ls.elem
            };
            let lmap: BTreeMap<&PathElement, &Value> = lp.iter().map(|(p, v)| (p, *v)).collect();
            let rmap: BTreeMap<&PathElement, &Value> = rp.iter().map(|(p, v)| (p, *v)).collect();
            for (pe, rv) in &rp {
                let lv = lmap.get(pe).copied();
                path.push(pe.clone());
                compare_item(lv, Some(rv), elem, ctx, path, c, depth + 1);
                path.pop();
            }
            for (pe, lv) in &lp {
                if !rmap.contains_key(pe) {
                    path.push(pe.clone());
                    compare_item(Some(lv), None, elem, ctx, path, c, depth + 1);
                    path.pop();
                }
            }
        }
        _ => {}
    }
    if !path.is_empty() {
        match (l, r) {
            (None, Some(_)) => c.added.insert(path),
            (Some(_), None) => c.removed.insert(path),
            _ => {}
        }
    }
}

/// A list item: always a container path of its own (items are never "absent because empty").
fn compare_item(
    l: Option<&Value>,
    r: Option<&Value>,
    schema: &Schema,
    ctx: &Ctx,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
    depth: usize,
) {
    let walkable = [l, r]
        .into_iter()
        .flatten()
        .all(|v| is_container(v, schema))
        && depth <= MAX_DEPTH;
    if walkable {
        compare_children(l, r, schema, ctx, path, c, depth);
    } else if let (Some(a), Some(b)) = (l, r) {
        if !crate::patch_engines::json_eq(a, b) {
            c.modified.insert(path);
        }
    }
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    }
}

fn compare_children(
    l: Option<&Value>,
    r: Option<&Value>,
    schema: &Schema,
    ctx: &Ctx,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
    depth: usize,
) {
    let empty_map = Map::new();
    let lm = l.and_then(Value::as_object).unwrap_or(&empty_map);
    let rm = r.and_then(Value::as_object).unwrap_or(&empty_map);
    let keys: Vec<&String> = lm
        .keys()
        .chain(rm.keys().filter(|k| !lm.contains_key(*k)))
        .collect();
    for k in keys {
        path.push(PathElement::Field(k.clone()));
        compare(
            lm.get(k),
            rm.get(k),
            schema.field(k),
            ctx,
            path,
            c,
            depth + 1,
        );
        path.pop();
    }
}

/// Structured merge of an applied configuration into the live object (`TypedValue.Merge`).
fn merge(live: Option<&Value>, config: &Value, schema: &Schema, depth: usize) -> Value {
    let Some(live) = live else {
        return config.clone();
    };
    if depth > MAX_DEPTH {
        return config.clone();
    }
    match (live, config, schema) {
        (
            Value::Object(lm),
            Value::Object(cm),
            Schema::Struct(_) | Schema::Map(_) | Schema::Any,
        ) => {
            let mut out = lm.clone();
            for (k, cv) in cm {
                let merged = merge(lm.get(k), cv, schema.field(k), depth + 1);
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(la), Value::Array(ca), Schema::List(ls)) => match list_mode(&[la, ca], ls) {
            Mode::Atomic => config.clone(),
            mode => Value::Array(merge_list(la, ca, &mode, ls, depth)),
        },
        _ => config.clone(),
    }
}

/// structured-merge-diff's list merge order: live-only items stay in place, applied items
/// follow the applied order, applied-only items go before the next shared one.
fn merge_list(
    la: &[Value],
    ca: &[Value],
    mode: &Mode,
    ls: &ListSchema,
    depth: usize,
) -> Vec<Value> {
    let lpe: Vec<PathElement> = la
        .iter()
        .enumerate()
        .map(|(i, v)| item_pe(v, i, mode, ls))
        .collect();
    let cpe: Vec<PathElement> = ca
        .iter()
        .enumerate()
        .map(|(i, v)| item_pe(v, i, mode, ls))
        .collect();
    let cmap: BTreeMap<&PathElement, usize> = cpe.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let lmap: BTreeMap<&PathElement, usize> = lpe.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let in_c = |pe: &PathElement| cmap.get(pe).copied();
    let in_l = |pe: &PathElement| lmap.get(pe).copied();
    let mut shared: std::collections::VecDeque<&PathElement> =
        cpe.iter().filter(|p| in_l(p).is_some()).collect();
    let mut next_shared = shared.pop_front();
    let mut merged_c: BTreeSet<&PathElement> = BTreeSet::new();
    let mut out = Vec::with_capacity(la.len() + ca.len());
    let merge_item = |li: Option<usize>, ci: usize| -> Value {
        let elem: &Schema = if matches!(mode, Mode::Set) {
            &Schema::Scalar
        } else {
            &ls.elem
        };
        merge(li.map(|i| &la[i]), &ca[ci], elem, depth + 1)
    };
    let (mut li, mut ci) = (0, 0);
    while li < la.len() || ci < ca.len() {
        if li < la.len() && ci < ca.len() {
            let pe = &lpe[li];
            if *pe == cpe[ci] {
                merged_c.insert(pe);
                out.push(merge_item(Some(li), ci));
                li += 1;
                ci += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if in_c(pe).is_some() && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < la.len() {
            let pe = &lpe[li];
            if in_c(pe).is_none() {
                out.push(la[li].clone());
                li += 1;
                continue;
            } else if merged_c.contains(pe) {
                li += 1;
                continue;
            }
        }
        if ci < ca.len() {
            let pe = &cpe[ci];
            merged_c.insert(pe);
            out.push(merge_item(in_l(pe), ci));
            ci += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

/// Removes the value at `path` from `obj` (no-op when absent).
fn remove_path(obj: &mut Value, path: &[PathElement], schema: &Schema) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    let mut sch = schema;
    for pe in parent {
        let next = find_child(cur, pe, sch);
        let Some((idx_or_key, child_schema)) = next else {
            return;
        };
        sch = child_schema;
        cur = match (cur, idx_or_key) {
            (Value::Object(m), Slot::Key(k)) => match m.get_mut(&k) {
                Some(v) => v,
                None => return,
            },
            (Value::Array(a), Slot::Index(i)) => match a.get_mut(i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match (find_child(cur, last, sch), cur) {
        (Some((Slot::Key(k), _)), Value::Object(m)) => {
            m.shift_remove(&k);
        }
        (Some((Slot::Index(i), _)), Value::Array(a)) if i < a.len() => {
            a.remove(i);
        }
        _ => {}
    }
}

enum Slot {
    Key(String),
    Index(usize),
}

fn find_child<'s>(v: &Value, pe: &PathElement, schema: &'s Schema) -> Option<(Slot, &'s Schema)> {
    match (v, pe) {
        (Value::Object(m), PathElement::Field(k)) if m.contains_key(k) => {
            Some((Slot::Key(k.clone()), schema.field(k)))
        }
        (Value::Array(a), _) => {
            let ls = match schema {
                Schema::List(ls) => ls,
                _ => return None,
            };
            let i = match pe {
                PathElement::Key(_) => {
                    let ListKind::Map(keys) = &ls.kind else {
                        return None;
                    };
                    a.iter()
                        .position(|item| key_pe(item, keys, ls).as_ref() == Some(pe))?
                }
                PathElement::Value(x) => a.iter().position(|item| item == x)?,
                PathElement::Index(i) => usize::try_from(*i).ok().filter(|i| *i < a.len())?,
                PathElement::Field(_) => return None,
            };
            Some((Slot::Index(i), &ls.elem))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Managed fields entries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
}

impl Entry {
    fn id(&self) -> (String, String, String, String) {
        let av = if self.operation == "Apply" {
            String::new()
        } else {
            self.api_version.clone()
        };
        (
            self.manager.clone(),
            self.operation.clone(),
            av,
            self.subresource.clone(),
        )
    }

    /// How kube-apiserver names this manager in conflict messages.
    fn printed(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let set = match v.get("fieldsV1") {
            Some(f) => FieldSet::from_fields_v1(f)?,
            None => FieldSet::default(),
        };
        if v.get("fieldsType")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "FieldsV1")
        {
            return None;
        }
        Some(Entry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation")?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            set,
        })
    }
}

/// The managedFields of an object: `None` when absent, empty or undecodable; `Some(vec![])`
/// for the `[{}]` reset form.
fn decode(obj: Option<&Value>) -> Option<Vec<Entry>> {
    let list = obj?.pointer("/metadata/managedFields")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    if list.len() == 1 && list[0].as_object().is_some_and(Map::is_empty) {
        return Some(Vec::new());
    }
    let mut out: Vec<Entry> = Vec::new();
    for v in list {
        let e = Entry::from_json(v)?;
        // Duplicate identities merge, as kube's decoder does.
        match out.iter_mut().find(|o| o.id() == e.id()) {
            Some(o) => o.set.union(&e.set),
            None => out.push(e),
        }
    }
    Some(out)
}

fn time_seconds(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second())
}

fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| {
                let ta = a.time.as_ref().map_or(0, |t| time_seconds(&json!(t)));
                let tb = b.time.as_ref().map_or(0, |t| time_seconds(&json!(t)));
                ta.cmp(&tb)
            })
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

/// Merges the oldest Update entries into one `ancient-changes` entry when there are more than
/// [`MAX_UPDATE_MANAGERS`] (kube's capped manager).
fn cap_updates(entries: &mut Vec<Entry>, api_version: &str, now: &str) {
    let updates = entries.iter().filter(|e| e.operation == "Update").count();
    if updates <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut idx: Vec<usize> = (0..entries.len())
        .filter(|i| entries[*i].operation == "Update")
        .collect();
    idx.sort_by_key(|i| {
        entries[*i]
            .time
            .as_ref()
            .map_or(0, |t| time_seconds(&json!(t)))
    });
    let excess = updates - MAX_UPDATE_MANAGERS + 1;
    let mut merged = FieldSet::default();
    let mut drop: Vec<usize> = Vec::new();
    for &i in idx.iter().take(excess) {
        merged.union(&entries[i].set);
        drop.push(i);
    }
    drop.sort_unstable();
    for i in drop.into_iter().rev() {
        entries.remove(i);
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == "ancient-changes" && e.operation == "Update")
    {
        Some(e) => e.set.union(&merged),
        None => entries.push(Entry {
            manager: "ancient-changes".into(),
            operation: "Update".into(),
            api_version: api_version.into(),
            time: Some(now.into()),
            subresource: String::new(),
            set: merged,
        }),
    }
}

/// Fields never tracked (kube's stripMeta) and the fields the subresource resets.
fn filter(set: &mut FieldSet, subresource: Option<&str>) {
    let f = |s: &str| PathElement::Field(s.to_owned());
    set.remove_subtree(&[f("apiVersion")]);
    set.remove_subtree(&[f("kind")]);
    if let Some(meta) = set.children.get_mut(&f("metadata")) {
        meta.member = false;
    }
    for k in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.remove_subtree(&[f("metadata"), f(k)]);
    }
    match subresource {
        None | Some("") => set.remove_subtree(&[f("status")]),
        Some("status") => set.remove_subtree(&[f("spec")]),
        Some(_) => {}
    }
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.shift_remove("managedFields");
    }
    v
}

/// Whole-second UTC timestamp (`2026-11-22T07:52:01Z`) from any RFC 3339 `now`.
fn whole_seconds(now: &str) -> String {
    match now.parse::<jiff::Timestamp>() {
        Ok(t) => match jiff::Timestamp::from_second(t.as_second()) {
            Ok(s) => s.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Err(_) => now.to_owned(),
        },
        Err(_) => now.to_owned(),
    }
}

fn kind_schema(obj: &Value) -> (Schema, Value, bool) {
    match kind_info(obj) {
        Some(i) => (i.schema.clone(), i.zero.clone(), i.strategic),
        None => (Schema::Any, json!({}), false),
    }
}

/// What [`schema_keys`] knows of the object's kind (shared, not copied: every write needs it).
fn kind_info(obj: &Value) -> Option<std::sync::Arc<schema_keys::KindInfo>> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    schema_keys::lookup(av, kind)
}

/// Records in `new.metadata.managedFields` the fields `manager` changed from `old` to `new`
/// (`old` is `None` on create).
///
/// Ownership data comes from `new.metadata.managedFields` when the request carried a non-empty,
/// valid list and this is not a subresource write, else from `old` (as kube-apiserver does);
/// `[{}]` clears it. The manager's entry (identified by manager, operation, apiVersion and
/// subresource) gets the added and modified fields and `time = now` (whole seconds) when it
/// changed something; fields removed from the object leave every entry; fields it changed leave
/// every other entry. `status` is never tracked for the main resource, `spec` never for
/// `/status`.
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let now = whole_seconds(now);
    let sub = subresource.unwrap_or("");
    let from_new = if sub.is_empty() {
        decode(Some(new))
    } else {
        None
    };
    let mut entries = from_new.or_else(|| decode(old)).unwrap_or_default();

    let info = kind_info(new);
    let any = Schema::Any;
    let (schema, builtin) = info
        .as_ref()
        .map_or((&any, false), |i| (&i.schema, i.strategic));
    let ctx = Ctx { omitempty: builtin };
    let zero;
    let old_obj = match old {
        Some(o) => o,
        None => {
            zero = info.as_ref().map_or_else(|| json!({}), |i| i.zero.clone());
            &zero
        }
    };
    // Compared with their managedFields (no copies of the objects): whatever differs below
    // metadata.managedFields is removed by `filter` below, as it is never tracked.
    let mut c = Comparison::default();
    compare(
        Some(old_obj),
        Some(&*new),
        schema,
        &ctx,
        &mut Vec::new(),
        &mut c,
        0,
    );
    let mut changed = c.added.clone();
    changed.union(&c.modified);
    filter(&mut changed, subresource);
    filter(&mut c.removed, subresource);

    for e in entries.iter_mut() {
        e.set.difference(&changed);
        e.set.difference(&c.removed);
    }
    let me = Entry {
        manager: manager.to_owned(),
        operation: operation.to_owned(),
        api_version: api_version.to_owned(),
        time: Some(now.clone()),
        subresource: sub.to_owned(),
        set: FieldSet::default(),
    };
    let id = me.id();
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.id() == id) {
            Some(e) => {
                e.set.union(&changed);
                e.time = Some(now.clone());
                e.api_version = api_version.to_owned();
            }
            None => entries.push(Entry { set: changed, ..me }),
        }
    }
    cap_updates(&mut entries, api_version, &now);
    encode(new, entries);
}

/// Server-side apply of `applied` onto `live` (`None`: the object is created) by `manager`.
///
/// Returns the merged object with its managedFields (the caller still resets what the
/// subresource may not change, fills server fields and validates), or the conflicts: another
/// manager (Apply or Update) owns a field this apply would change. With `force` ownership moves
/// to `manager` instead. Fields `manager` applied before and no longer applies are removed from
/// the object unless another manager owns them.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) -> Result<Value, ApplyConflict> {
    let now = whole_seconds(now);
    let sub = subresource.unwrap_or("");
    let (schema, zero, builtin) = kind_schema(applied);
    let ctx = Ctx { omitempty: builtin };
    let mut entries = decode(live).unwrap_or_default();
    if let (Some(l), true) = (live, entries.is_empty()) {
        // kube's skipNonAppliedManager: an object nobody manages yet gets its existing fields
        // assigned to "before-first-apply" (an Update entry) before the first apply.
        let mut owned = l.clone();
        let av = l
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(api_version)
            .to_owned();
        update_managed_fields(
            None,
            &mut owned,
            "before-first-apply",
            "Update",
            &av,
            None,
            &now,
        );
        entries = decode(Some(&owned)).unwrap_or_default();
    }
    let live_obj = live.map(without_managed_fields).unwrap_or(zero);
    let mut config = without_managed_fields(applied);
    strip_nulls(&mut config);

    let mut applied_set = FieldSet::default();
    to_field_set(&config, &schema, &mut applied_set, 0);
    filter(&mut applied_set, subresource);

    let me = Entry {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: api_version.to_owned(),
        time: None,
        subresource: sub.to_owned(),
        set: FieldSet::default(),
    };
    let id = me.id();
    let pos = entries.iter().position(|e| e.id() == id);
    let last_set = pos.map(|i| entries[i].set.clone()).unwrap_or_default();
    let previous_time = pos.and_then(|i| entries[i].time.clone());
    if let Some(i) = pos {
        entries.remove(i);
    }

    let mut merged = merge(Some(&live_obj), &config, &schema, 0);
    if live.is_none() {
        merged = order_like(merged, &config);
    }

    // Prune what this manager applied before and nobody owns any more.
    let mut owned = applied_set.clone();
    for e in &entries {
        owned.union(&e.set);
    }
    for p in last_set.paths() {
        if !owned.has(&p) {
            remove_path(&mut merged, &p, &schema);
        }
    }

    let mut c = Comparison::default();
    compare(
        Some(&live_obj),
        Some(&merged),
        &schema,
        &ctx,
        &mut Vec::new(),
        &mut c,
        0,
    );
    let mut changed = c.added.clone();
    changed.union(&c.modified);
    filter(&mut changed, subresource);
    filter(&mut c.removed, subresource);

    let mut causes: Vec<(String, String)> = Vec::new();
    for e in &entries {
        let conflict = e.set.intersection(&changed);
        for p in conflict.paths() {
            causes.push((path_string(&p), e.printed()));
        }
    }
    if !force && !causes.is_empty() {
        // Managers sorted; each manager's paths in kube's set iteration order (stable sort).
        causes.sort_by(|a, b| a.1.cmp(&b.1));
        return Err(ApplyConflict { causes });
    }
    for e in entries.iter_mut() {
        e.set.difference(&changed);
        e.set.difference(&c.removed);
    }
    let object_changed = !crate::patch_engines::json_eq(&live_obj, &merged);
    let time = if object_changed || previous_time.is_none() {
        Some(now.clone())
    } else {
        previous_time
    };
    entries.push(Entry {
        set: applied_set,
        time,
        ..me
    });
    encode(&mut merged, entries);
    Ok(merged)
}

fn strip_nulls(v: &mut Value) {
    let mut stack = vec![v];
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
}

/// `v` with its top-level keys in the order of `like` first (a created object reads like the
/// applied configuration: `apiVersion`, `kind`, `metadata`, ...).
fn order_like(v: Value, like: &Value) -> Value {
    let (Value::Object(mut m), Some(l)) = (v.clone(), like.as_object()) else {
        return v;
    };
    let mut out = Map::new();
    for k in l.keys() {
        if let Some(x) = m.shift_remove(k) {
            out.insert(k.clone(), x);
        }
    }
    out.extend(m);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch_engines::{json_eq, json_patch, merge_patch, strategic_merge_patch};

    // Request and response bodies of the golden transcripts (/work/shared/kube-golden), compact.
    const RESP_13: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"240","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a"},"annotations":{"ferrolb.io/pool":"pool-a"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:51:07Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{".":{},"f:ferrolb.io/pool":{}},"f:labels":{".":{},"f:app":{},"f:env":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"None","externalTrafficPolicy":"Cluster","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const RESP_28: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"262","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","tier":"edge"},"annotations":{"ferrolb.io/pool":"pool-a"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:51:47Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{".":{},"f:ferrolb.io/pool":{}},"f:labels":{".":{},"f:app":{},"f:env":{},"f:tier":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"None","externalTrafficPolicy":"Cluster","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_29: &str = r#"{"metadata":{"labels":{"version":"v2"},"annotations":{"ferrolb.io/pool":null}},"spec":{"sessionAffinity":"ClientIP"}}"#;
    const RESP_29: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"265","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","tier":"edge","version":"v2"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:52:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{},"f:env":{},"f:tier":{},"f:version":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:sessionAffinityConfig":{".":{},"f:clientIP":{".":{},"f:timeoutSeconds":{}}},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"ClientIP","externalTrafficPolicy":"Cluster","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}},"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_30: &str = r#"[{"op":"test","path":"/spec/type","value":"LoadBalancer"},{"op":"add","path":"/metadata/labels/patched-by","value":"json-patch"},{"op":"replace","path":"/spec/ports/0/targetPort","value":8081},{"op":"remove","path":"/metadata/labels/version"}]"#;
    const RESP_30: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"266","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","patched-by":"json-patch","tier":"edge"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:52:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{},"f:env":{},"f:patched-by":{},"f:tier":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:sessionAffinityConfig":{".":{},"f:clientIP":{".":{},"f:timeoutSeconds":{}}},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8081,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"ClientIP","externalTrafficPolicy":"Cluster","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}},"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_31: &str =
        r#"{"spec":{"ports":[{"name":"https","protocol":"TCP","port":443,"targetPort":8443}]}}"#;
    const RESP_31: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"268","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","patched-by":"json-patch","tier":"edge"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:52:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{},"f:env":{},"f:patched-by":{},"f:tier":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}},"k:{\"port\":443,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:sessionAffinityConfig":{".":{},"f:clientIP":{".":{},"f:timeoutSeconds":{}}},"f:type":{}}}}]},"spec":{"ports":[{"name":"https","protocol":"TCP","port":443,"targetPort":8443,"nodePort":30150},{"name":"http","protocol":"TCP","port":80,"targetPort":8081,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"ClientIP","externalTrafficPolicy":"Cluster","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}},"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_32: &str = r#"{"spec":{"ports":[{"port":443,"$patch":"delete"}]}}"#;
    const RESP_32: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"272","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","patched-by":"json-patch","tier":"edge"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:52:01Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{},"f:env":{},"f:patched-by":{},"f:tier":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:sessionAffinityConfig":{".":{},"f:clientIP":{".":{},"f:timeoutSeconds":{}}},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8081,"nodePort":32419}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"ClientIP","externalTrafficPolicy":"Cluster","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}},"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_33: &str =
        r#"{"spec":{"ports":[{"name":"https","protocol":"TCP","port":443,"targetPort":8443}]}}"#;
    const RESP_33: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"demo","uid":"8c1f23b2-b280-46a2-9960-8ce03a6a88b7","resourceVersion":"275","creationTimestamp":"2026-11-22T07:51:07Z","labels":{"app":"web","env":"a","patched-by":"json-patch","tier":"edge"},"managedFields":[{"manager":"curl","operation":"Update","apiVersion":"v1","time":"2026-11-22T07:52:09Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{},"f:env":{},"f:patched-by":{},"f:tier":{}}},"f:spec":{"f:allocateLoadBalancerNodePorts":{},"f:externalTrafficPolicy":{},"f:internalTrafficPolicy":{},"f:loadBalancerClass":{},"f:ports":{".":{},"k:{\"port\":443,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:sessionAffinityConfig":{".":{},"f:clientIP":{".":{},"f:timeoutSeconds":{}}},"f:type":{}}}}]},"spec":{"ports":[{"name":"https","protocol":"TCP","port":443,"targetPort":8443,"nodePort":31747}],"selector":{"app":"web"},"clusterIP":"10.96.154.179","clusterIPs":["10.96.154.179"],"type":"LoadBalancer","sessionAffinity":"ClientIP","externalTrafficPolicy":"Cluster","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}},"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"loadBalancerClass":"ferrolb.io/l2","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_34: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"lb-ssa","namespace":"demo","labels":{"app":"lb-ssa","env":"a"}},"spec":{"type":"LoadBalancer","externalTrafficPolicy":"Cluster","selector":{"app":"lb-ssa"},"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080}]}}"#;
    const RESP_34: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"lb-ssa","namespace":"demo","uid":"d20bee53-a4f9-4d6e-ad57-977cfe1cd4c9","resourceVersion":"278","creationTimestamp":"2026-11-22T07:52:14Z","labels":{"app":"lb-ssa","env":"a"},"managedFields":[{"manager":"one","operation":"Apply","apiVersion":"v1","time":"2026-11-22T07:52:14Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:app":{},"f:env":{}}},"f:spec":{"f:externalTrafficPolicy":{},"f:ports":{"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:type":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080,"nodePort":30338}],"selector":{"app":"lb-ssa"},"clusterIP":"10.96.90.218","clusterIPs":["10.96.90.218"],"type":"LoadBalancer","sessionAffinity":"None","externalTrafficPolicy":"Cluster","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_35: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"lb-ssa","namespace":"demo","labels":{"env":"b"}},"spec":{"externalTrafficPolicy":"Local"}}"#;
    const RESP_35: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Apply failed with 2 conflicts: conflicts with \"one\":\n- .metadata.labels.env\n- .spec.externalTrafficPolicy","reason":"Conflict","details":{"causes":[{"reason":"FieldManagerConflict","message":"conflict with \"one\"","field":".metadata.labels.env"},{"reason":"FieldManagerConflict","message":"conflict with \"one\"","field":".spec.externalTrafficPolicy"}]},"code":409}"#;
    const REQ_36: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"lb-ssa","namespace":"demo","labels":{"env":"b"}},"spec":{"externalTrafficPolicy":"Local"}}"#;
    const RESP_36: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"lb-ssa","namespace":"demo","uid":"d20bee53-a4f9-4d6e-ad57-977cfe1cd4c9","resourceVersion":"282","creationTimestamp":"2026-11-22T07:52:14Z","labels":{"app":"lb-ssa","env":"b"},"managedFields":[{"manager":"one","operation":"Apply","apiVersion":"v1","time":"2026-11-22T07:52:14Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:ports":{"k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:name":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:type":{}}}},{"manager":"two","operation":"Apply","apiVersion":"v1","time":"2026-11-22T07:52:18Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:env":{}}},"f:spec":{"f:externalTrafficPolicy":{}}}}]},"spec":{"ports":[{"name":"http","protocol":"TCP","port":80,"targetPort":8080,"nodePort":30338}],"selector":{"app":"lb-ssa"},"clusterIP":"10.96.90.218","clusterIPs":["10.96.90.218"],"type":"LoadBalancer","sessionAffinity":"None","externalTrafficPolicy":"Local","healthCheckNodePort":31741,"ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","allocateLoadBalancerNodePorts":true,"internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
    const REQ_86: &str = r#"{"apiVersion":"ferrolb.io/v1alpha1","kind":"LoadBalancerIPPool","metadata":{"name":"pool-c"},"status":{"observedGeneration":1,"ipsTotal":16,"ipsAvailable":16,"ipsUsed":0,"conditions":[{"type":"Ready","status":"True","observedGeneration":1,"lastTransitionTime":"2026-11-22T08:01:00Z","reason":"Allocatable","message":"pool has free addresses"}]}}"#;
    const RESP_86: &str = r#"{"apiVersion":"ferrolb.io/v1alpha1","kind":"LoadBalancerIPPool","metadata":{"creationTimestamp":"2026-11-22T07:59:11Z","generation":1,"managedFields":[{"apiVersion":"ferrolb.io/v1alpha1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:blocks":{},"f:serviceSelector":{"f:matchLabels":{"f:app":{}}}}},"manager":"kubectl","operation":"Apply","time":"2026-11-22T07:59:11Z"},{"apiVersion":"ferrolb.io/v1alpha1","fieldsType":"FieldsV1","fieldsV1":{"f:status":{"f:conditions":{"k:{\"type\":\"Ready\"}":{".":{},"f:lastTransitionTime":{},"f:message":{},"f:observedGeneration":{},"f:reason":{},"f:status":{},"f:type":{}}},"f:ipsAvailable":{},"f:ipsTotal":{},"f:ipsUsed":{},"f:observedGeneration":{}}},"manager":"ferrolb-controller","operation":"Apply","subresource":"status","time":"2026-11-22T08:00:49Z"}],"name":"pool-c","resourceVersion":"497","uid":"5a2dd996-a804-4d9f-a43d-93bcd5016f00"},"spec":{"allowFirstLastIPs":"No","blocks":[{"cidr":"203.0.113.0/28"}],"disabled":false,"serviceSelector":{"matchLabels":{"app":"kubectl-made"}}},"status":{"conditions":[{"lastTransitionTime":"2026-11-22T08:01:00Z","message":"pool has free addresses","observedGeneration":1,"reason":"Allocatable","status":"True","type":"Ready"}],"ipsAvailable":16,"ipsTotal":16,"ipsUsed":0,"observedGeneration":1}}"#;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).expect("fixture is JSON")
    }

    fn mf(obj: &Value) -> Value {
        obj.pointer("/metadata/managedFields")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The object a handler would store before allocation: the golden response without the
    /// fields kube-apiserver's REST layer allocates (clusterIP(s), ipFamilies, ipFamilyPolicy,
    /// nodePorts) and without server metadata.
    fn unallocated(resp: &Value) -> Value {
        let mut o = resp.clone();
        let spec = o["spec"].as_object_mut().expect("spec");
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "healthCheckNodePort",
        ] {
            spec.shift_remove(k);
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                p.as_object_mut().expect("port").shift_remove("nodePort");
            }
        }
        o
    }

    /// Built-in types are encoded in Go struct order, so managedFields must match byte for byte.
    fn assert_mf_bytes(have: &Value, want: &Value) {
        assert_eq!(
            serde_json::to_string(&mf(have)).unwrap(),
            serde_json::to_string(&mf(want)).unwrap()
        );
    }

    fn assert_json_eq(have: &Value, want: &Value) {
        assert!(
            json_eq(have, want),
            "have:\n{}\nwant:\n{}",
            serde_json::to_string_pretty(have).unwrap(),
            serde_json::to_string_pretty(want).unwrap()
        );
    }

    #[test]
    fn golden_13_create_records_defaulted_not_allocated_fields() {
        let mut new = unallocated(&v(RESP_13));
        new["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("managedFields");
        update_managed_fields(
            None,
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:51:07.654321Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_13)));
        // Entry keys in Go struct order.
        let keys: Vec<&String> = new["metadata"]["managedFields"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(
            keys,
            [
                "manager",
                "operation",
                "apiVersion",
                "time",
                "fieldsType",
                "fieldsV1"
            ]
        );
        // Byte-exact FieldsV1 order too (sorted path elements, "." first).
        assert_eq!(
            serde_json::to_string(&mf(&new)).unwrap(),
            serde_json::to_string(&mf(&v(RESP_13))).unwrap()
        );
    }

    #[test]
    fn golden_29_merge_patch_update_drops_deleted_annotation_and_adds_defaults() {
        let old = v(RESP_28);
        let mut new = old.clone();
        merge_patch(&mut new, &v(REQ_29));
        // Server defaulting triggered by sessionAffinity: ClientIP.
        new["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:52:01Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_29)));
        assert_mf_bytes(&new, &v(RESP_29));
    }

    #[test]
    fn golden_30_to_33_patch_sequence_managed_fields() {
        // 30: JSON patch.
        let old = v(RESP_29);
        let mut new = old.clone();
        json_patch(&mut new, &v(REQ_30)).expect("golden 30 applies");
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:52:01Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_30)));
        assert_mf_bytes(&new, &v(RESP_30));

        // 31: strategic merge adds port 443 (nodePort allocated afterwards, not owned).
        let old = v(RESP_30);
        let mut new = old.clone();
        strategic_merge_patch(&mut new, &v(REQ_31), "Service").expect("golden 31 applies");
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:52:01Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_31)));
        assert_mf_bytes(&new, &v(RESP_31));

        // 32: $patch: delete only removes fields, so the entry keeps its old time.
        let old = v(RESP_31);
        let mut new = old.clone();
        strategic_merge_patch(&mut new, &v(REQ_32), "Service").expect("golden 32 applies");
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:52:08Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_32)));
        assert_mf_bytes(&new, &v(RESP_32));
        assert_eq!(
            new["metadata"]["managedFields"][0]["time"],
            "2026-11-22T07:52:01Z"
        );
        let mut want = v(RESP_32);
        want["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        assert_json_eq(&new, &want);

        // 33: merge patch replaces the ports list.
        let old = v(RESP_32);
        let mut new = old.clone();
        merge_patch(&mut new, &v(REQ_33));
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T07:52:09Z",
        );
        assert_json_eq(&mf(&new), &mf(&v(RESP_33)));
        assert_mf_bytes(&new, &v(RESP_33));
    }

    #[test]
    fn golden_34_apply_creates_with_applied_fields_only() {
        let out = server_side_apply(
            None,
            &v(REQ_34),
            "one",
            false,
            "v1",
            None,
            "2026-11-22T07:52:14Z",
        )
        .expect("no conflict");
        assert_json_eq(&mf(&out), &mf(&v(RESP_34)));
        assert_eq!(
            serde_json::to_string(&mf(&out)).unwrap(),
            serde_json::to_string(&mf(&v(RESP_34))).unwrap()
        );
        assert_eq!(out["spec"]["ports"], v(REQ_34)["spec"]["ports"]);
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "lb-ssa", "env": "a"})
        );
        let keys: Vec<&String> = out.as_object().unwrap().keys().take(3).collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata"]);
    }

    #[test]
    fn golden_35_conflict_causes_and_status_body() {
        let live = v(RESP_34);
        let err = server_side_apply(
            Some(&live),
            &v(REQ_35),
            "two",
            false,
            "v1",
            None,
            "2026-11-22T07:52:14Z",
        )
        .unwrap_err();
        assert_eq!(
            err.causes,
            vec![
                (".metadata.labels.env".to_owned(), "\"one\"".to_owned()),
                (
                    ".spec.externalTrafficPolicy".to_owned(),
                    "\"one\"".to_owned()
                )
            ]
        );
        assert_eq!(err.status(), v(RESP_35));
    }

    #[test]
    fn golden_36_force_moves_ownership() {
        let live = v(RESP_34);
        let out = server_side_apply(
            Some(&live),
            &v(REQ_36),
            "two",
            true,
            "v1",
            None,
            "2026-11-22T07:52:18Z",
        )
        .expect("forced");
        assert_json_eq(&mf(&out), &mf(&v(RESP_36)));
        assert_mf_bytes(&out, &v(RESP_36));
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "lb-ssa", "env": "b"})
        );
        assert_eq!(out["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(out["spec"]["ports"], live["spec"]["ports"]);
    }

    #[test]
    fn golden_86_status_apply_on_custom_resource() {
        crate::schema_keys::tests::register_repo_crds();
        let want = v(RESP_86);
        // pool-c before 86: no status, only kubectl's entry.
        let mut live = want.clone();
        live.as_object_mut().unwrap().shift_remove("status");
        let entries: Vec<Value> = mf(&want)
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["manager"] == "kubectl")
            .cloned()
            .collect();
        live["metadata"]["managedFields"] = Value::Array(entries);
        let out = server_side_apply(
            Some(&live),
            &v(REQ_86),
            "ferrolb-controller",
            true,
            "ferrolb.io/v1alpha1",
            Some("status"),
            "2026-11-22T08:00:49Z",
        )
        .expect("applies");
        assert_json_eq(&mf(&out), &mf(&want));
        assert_json_eq(&out["status"], &want["status"]);
        assert_json_eq(&out["spec"], &want["spec"]);
    }

    #[test]
    fn kubectl_server_side_apply_creates_pool_like_golden() {
        // kubectl-apply-server-side.txt's input file; the kubectl entry is shown in golden 86.
        let cfg = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "LoadBalancerIPPool", "metadata": {"name": "pool-c"},
            "spec": {"blocks": [{"cidr": "203.0.113.0/28"}], "serviceSelector": {"matchLabels": {"app": "kubectl-made"}}}});
        let out = server_side_apply(
            None,
            &cfg,
            "kubectl",
            false,
            "ferrolb.io/v1alpha1",
            None,
            "2026-11-22T07:59:11Z",
        )
        .unwrap();
        let want: Vec<Value> = mf(&v(RESP_86))
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["manager"] == "kubectl")
            .cloned()
            .collect();
        assert_json_eq(&mf(&out), &Value::Array(want));
        assert_eq!(out["spec"], cfg["spec"]);
    }

    #[test]
    fn apply_prunes_fields_the_manager_stopped_applying_unless_owned_by_others() {
        let cfg = |ports: Value, labels: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": labels},
                "spec": {"type": "LoadBalancer", "ports": ports}})
        };
        let p80 = json!({"port": 80, "targetPort": 8080});
        let p443 = json!({"port": 443, "targetPort": 8443});
        let t0 = "2026-11-22T08:00:00Z";
        let live = server_side_apply(
            None,
            &cfg(json!([p80, p443]), json!({"a": "1", "b": "2"})),
            "one",
            false,
            "v1",
            None,
            t0,
        )
        .unwrap();
        // Another manager also sets label b (same value: shared ownership, no conflict).
        let live = server_side_apply(Some(&live), &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"b": "2"}}}), "two", false, "v1", None, t0).unwrap();
        let out = server_side_apply(
            Some(&live),
            &cfg(json!([p80]), json!({"a": "1"})),
            "one",
            false,
            "v1",
            None,
            t0,
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}])
        );
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        let one = &out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "one")
            .unwrap()["fieldsV1"];
        assert!(one.pointer("/f:metadata/f:labels/f:b").is_none());
        assert!(one
            .pointer("/f:spec/f:ports/k:{\"port\":443,\"protocol\":\"TCP\"}")
            .is_none());
        assert!(one
            .pointer("/f:spec/f:ports/k:{\"port\":80,\"protocol\":\"TCP\"}/f:targetPort")
            .is_some());
    }

    #[test]
    fn update_takes_ownership_from_appliers_and_apply_then_conflicts_with_updater() {
        let live = v(RESP_34);
        let mut new = live.clone();
        new["spec"]["ports"][0]["targetPort"] = json!(9090);
        update_managed_fields(
            Some(&live),
            &mut new,
            "kubectl-edit",
            "Update",
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        );
        let entries = new["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["manager"], "one");
        assert!(entries[0]["fieldsV1"]
            .pointer("/f:spec/f:ports/k:{\"port\":80,\"protocol\":\"TCP\"}/f:targetPort")
            .is_none());
        assert_eq!(entries[1]["manager"], "kubectl-edit");
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {"f:targetPort": {}}}}})
        );
        // "one" re-applies targetPort 8080: conflict with the Update manager.
        let err = server_side_apply(
            Some(&new),
            &v(REQ_34),
            "one",
            false,
            "v1",
            None,
            "2026-11-22T08:00:01Z",
        )
        .unwrap_err();
        assert_eq!(
            err.causes,
            vec![(
                ".spec.ports[port=80,protocol=\"TCP\"].targetPort".to_owned(),
                "\"kubectl-edit\" using v1".to_owned()
            )]
        );
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .spec.ports[port=80,protocol=\"TCP\"].targetPort"
        );
        // Re-applying the same values as live is no conflict and keeps the apply time.
        let same = server_side_apply(
            Some(&live),
            &v(REQ_34),
            "one",
            false,
            "v1",
            None,
            "2026-11-22T09:00:00Z",
        )
        .unwrap();
        assert_eq!(
            same["metadata"]["managedFields"][0]["time"],
            "2026-11-22T07:52:14Z"
        );
    }

    #[test]
    fn status_subresource_updates_track_status_only() {
        let old = v(RESP_34);
        let mut new = old.clone();
        new["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.7", "ipMode": "VIP"}]},
            "conditions": [{"type": "ferrolb.io/IPAMRequestSatisfied", "status": "True"}]});
        new["spec"]["type"] = json!("ClusterIP");
        update_managed_fields(
            Some(&old),
            &mut new,
            "ferrolb",
            "Update",
            "v1",
            Some("status"),
            "2026-11-22T08:00:00Z",
        );
        let e = new["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "ferrolb")
            .cloned()
            .unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"ferrolb.io/IPAMRequestSatisfied\"}": {".": {}, "f:status": {}, "f:type": {}}},
                "f:loadBalancer": {"f:ingress": {}}}})
        );
    }

    #[test]
    fn managed_fields_sent_by_the_client_are_used_and_reset_form_clears() {
        let old = v(RESP_34);
        // A client that echoes managedFields back unchanged: same result as without.
        let mut new = old.clone();
        new["metadata"]["labels"]["x"] = json!("y");
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        );
        assert_eq!(
            new["metadata"]["managedFields"].as_array().unwrap().len(),
            2
        );
        // `[{}]` clears; the change itself is still recorded.
        let mut new = old.clone();
        new["metadata"]["managedFields"] = json!([{}]);
        new["metadata"]["labels"]["x"] = json!("y");
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        );
        assert_eq!(
            new["metadata"]["managedFields"],
            json!([{"manager": "curl", "operation": "Update", "apiVersion": "v1", "time": "2026-11-22T08:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}}])
        );
        // Garbage falls back to the live object's.
        let mut new = old.clone();
        new["metadata"]["managedFields"] = json!([{"manager": 5, "fieldsV1": {"zz": 1}}]);
        update_managed_fields(
            Some(&old),
            &mut new,
            "curl",
            "Update",
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        );
        assert_json_eq(&mf(&new), &mf(&old));
    }

    #[test]
    fn update_entries_are_capped() {
        let mut obj =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        for i in 0..15 {
            let old = obj.clone();
            obj["data"][format!("k{i}")] = json!("v");
            update_managed_fields(
                Some(&old),
                &mut obj,
                &format!("m{i:02}"),
                "Update",
                "v1",
                None,
                &format!("2026-11-22T08:00:{i:02}Z"),
            );
        }
        let entries = obj["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), MAX_UPDATE_MANAGERS);
        let ancient = entries
            .iter()
            .find(|e| e["manager"] == "ancient-changes")
            .expect("ancient-changes");
        assert!(ancient["fieldsV1"].pointer("/f:data/f:k0").is_some());
        assert!(ancient["fieldsV1"].pointer("/f:data/f:k5").is_some());
    }

    #[test]
    fn fields_v1_round_trip_and_path_notation() {
        let f = mf(&v(RESP_31))[0]["fieldsV1"].clone();
        let set = FieldSet::from_fields_v1(&f).expect("parses");
        assert_eq!(set.to_fields_v1(), f);
        let paths: Vec<String> = set.paths().iter().map(|p| path_string(p)).collect();
        assert!(paths.contains(&".spec.ports[port=443,protocol=\"TCP\"].targetPort".to_owned()));
        assert_eq!(PathElement::Value(json!("x")).to_string(), "[=\"x\"]");
        assert_eq!(
            PathElement::from_fields_v1("v:\"x\""),
            Some(PathElement::Value(json!("x")))
        );
        for bad in [
            json!({"x:1": {}}),
            json!({"k:notjson": {}}),
            json!({"f:a": 3}),
            json!([1]),
            json!({"i:x": {}}),
        ] {
            assert!(FieldSet::from_fields_v1(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn conflicts_list_members_before_deeper_paths_and_group_by_manager() {
        let base = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 1}]}});
        let live =
            server_side_apply(None, &base, "a", false, "v1", None, "2026-11-22T08:00:00Z").unwrap();
        let live = server_side_apply(Some(&live), &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"x": "1"}}}), "b", false, "v1", None, "2026-11-22T08:00:00Z").unwrap();
        let hostile = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"x": "2"}},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "targetPort": 2}]}});
        let err = server_side_apply(
            Some(&live),
            &hostile,
            "c",
            false,
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = err
            .causes
            .iter()
            .map(|(p, m)| (p.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (".spec.type", "\"a\""),
                (".spec.ports[port=80,protocol=\"TCP\"].targetPort", "\"a\""),
                (".metadata.labels.x", "\"b\""),
            ]
        );
        assert_eq!(
            err.message(),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.type\n- .spec.ports[port=80,protocol=\"TCP\"].targetPort\nconflicts with \"b\":\n- .metadata.labels.x"
        );
    }

    #[test]
    fn node_addresses_keyed_by_type_unless_duplicated_and_lease_create() {
        let node = |addrs: Value| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"addresses": addrs}});
        let mut n = node(
            json!([{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": "n1"}]),
        );
        update_managed_fields(
            None,
            &mut n,
            "kubelet",
            "Update",
            "v1",
            Some("status"),
            "2026-11-22T08:00:00Z",
        );
        let f = &n["metadata"]["managedFields"][0]["fieldsV1"]["f:status"]["f:addresses"];
        assert!(f.get("k:{\"type\":\"Hostname\"}").is_some(), "{f}");
        let mut n = node(
            json!([{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "InternalIP", "address": "192.0.2.11"}]),
        );
        update_managed_fields(
            None,
            &mut n,
            "kubelet",
            "Update",
            "v1",
            Some("status"),
            "2026-11-22T08:00:00Z",
        );
        assert_eq!(
            n["metadata"]["managedFields"][0]["fieldsV1"]["f:status"]["f:addresses"],
            json!({})
        );

        // A Lease created by a leader elector: spec is a Go struct (no "." entry).
        let mut lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "demo"},
            "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 15, "renewTime": "2026-11-22T07:57:14.123456Z"}});
        update_managed_fields(
            None,
            &mut lease,
            "ferrolb-agent",
            "Update",
            "coordination.k8s.io/v1",
            None,
            "2026-11-22T07:57:14.123456Z",
        );
        assert_eq!(
            lease["metadata"]["managedFields"],
            json!([{"manager": "ferrolb-agent", "operation": "Update", "apiVersion": "coordination.k8s.io/v1", "time": "2026-11-22T07:57:14Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}, "f:renewTime": {}}}}])
        );
    }

    #[test]
    fn apply_to_unmanaged_object_conflicts_with_before_first_apply() {
        let mut live = v(RESP_34);
        live["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("managedFields");
        let err = server_side_apply(
            Some(&live),
            &v(REQ_35),
            "two",
            false,
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        )
        .unwrap_err();
        assert_eq!(
            err.causes,
            vec![
                (
                    ".metadata.labels.env".to_owned(),
                    "\"before-first-apply\" using v1".to_owned()
                ),
                (
                    ".spec.externalTrafficPolicy".to_owned(),
                    "\"before-first-apply\" using v1".to_owned()
                ),
            ]
        );
        let out = server_side_apply(
            Some(&live),
            &v(REQ_35),
            "two",
            true,
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        )
        .unwrap();
        let managers: Vec<&Value> = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["manager"])
            .collect();
        assert_eq!(managers, [&json!("two"), &json!("before-first-apply")]);
    }

    #[test]
    fn large_keyed_lists_use_indexed_lookups() {
        let n = 5000;
        let ports: Vec<Value> = (0..n)
            .map(|i| json!({"port": i, "targetPort": i + 1}))
            .collect();
        let cfg = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big"}, "spec": {"ports": ports}});
        let live = server_side_apply(None, &cfg, "one", false, "v1", None, "2026-11-22T08:00:00Z")
            .unwrap();
        let mut patched = live.clone();
        let patch = json!({"spec": {"ports": [{"port": n, "targetPort": 1}, {"port": 0, "$patch": "delete"}]}});
        strategic_merge_patch(&mut patched, &patch, "Service").unwrap();
        assert_eq!(
            patched["spec"]["ports"].as_array().unwrap().len(),
            n as usize
        );
        assert_eq!(patched["spec"]["ports"][0]["port"], n);
        update_managed_fields(
            Some(&live),
            &mut patched,
            "two",
            "Update",
            "v1",
            None,
            "2026-11-22T08:00:01Z",
        );
        let two = patched["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "two")
            .unwrap();
        assert_eq!(
            two["fieldsV1"]["f:spec"]["f:ports"]
                .as_object()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn hostile_objects_never_panic() {
        let mut deep = json!(1);
        for _ in 0..400 {
            deep = json!({"a": deep});
        }
        let mut ports = Vec::new();
        for i in 0..50 {
            ports.push(json!({"port": i % 3, "name": i}));
        }
        let weird = [
            json!({"apiVersion": "v1", "kind": "Service", "spec": deep.clone()}),
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": ports}}),
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"name": "nokey"}, 7, null]}}),
            json!({"apiVersion": "v1", "kind": "Service", "spec": {"ports": {"not": "a list"}}, "metadata": {"finalizers": [{"a": 1}, "x", "x"]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": "nope"}),
            json!([1, 2, 3]),
            json!("scalar"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"managedFields": [{"operation": "Update", "fieldsV1": deep.clone()}]}}),
        ];
        for a in &weird {
            for b in &weird {
                let mut n = b.clone();
                update_managed_fields(Some(a), &mut n, "m", "Update", "v1", None, "garbage-time");
                let _ =
                    server_side_apply(Some(a), b, "m", false, "v1", None, "2026-11-22T08:00:00Z");
                let _ = server_side_apply(
                    Some(a),
                    b,
                    "m",
                    true,
                    "v1",
                    Some("status"),
                    "2026-11-22T08:00:00Z",
                );
            }
        }
        // Keyed items without their key make the list atomic rather than failing.
        let out = server_side_apply(
            None,
            &weird[2],
            "m",
            false,
            "v1",
            None,
            "2026-11-22T08:00:00Z",
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"],
            json!({})
        );
    }
}
