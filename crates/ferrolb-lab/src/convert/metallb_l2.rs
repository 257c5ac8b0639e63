//! MetalLB `L2Advertisement` → ferrolb `L2AnnouncementPolicy`s.
//!
//! | MetalLB | ferrolb |
//! |---|---|
//! | `nodeSelectors[]` (ORed) | `nodeSelector`; several → one policy per selector (a node any of them selects may announce, as in MetalLB) |
//! | `serviceSelectors[]` (ORed) | `serviceSelector`; several → one policy per selector |
//! | `interfaces[]` (interface names) | `interfaces[]` (anchored regexes: each name escaped) |
//! | `preferredNodeSelectors[] = {weight, preference}` | `preferredNodes[] = {weight, nodeSelector}` (the same rule: weights of matching entries sum, higher first, the rest fall back) |
//! | `ipAddressPools[]` | `pools[]` (same names: pools convert under their own names) |
//! | `ipAddressPoolSelectors[]` (ORed, and ORed with `ipAddressPools`) | `poolSelector`; several on one label key merge into one `In`, otherwise one policy per selector |
//!
//! Always written: `loadBalancerIPs: true`, `externalIPs: false` (MetalLB announces only
//! LoadBalancer addresses). Several policies selecting one Service give one lease whose
//! candidates are the union of their nodes and whose holder announces on the union of their
//! interfaces — which is what several MetalLB advertisements (or several selectors of one)
//! mean. The split policies are named `NAME-1`, `NAME-2`, … (one policy keeps `NAME`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{check_selector, converted_metadata, merge_ored_selectors, Cx, Severity};
use ferrolb::api;

/// A MetalLB `IPAddressPool` of the input: name and labels (for `ipAddressPoolSelectors`).
pub type PoolLabels = (String, BTreeMap<String, String>);

/// The `IPAddressPool`s among `docs` (name, labels), for resolving pool selections.
pub fn pools_of(docs: &[Value]) -> Vec<PoolLabels> {
    docs.iter()
        .filter(|d| {
            d["kind"] == "IPAddressPool"
                && d["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("metallb.io/"))
        })
        .filter_map(|d| {
            let name = d["metadata"]["name"].as_str()?.to_string();
            let labels = d["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Some((name, labels))
        })
        .collect()
}

/// A list of selectors (`field` names it), each checked; `None` entries mean "unset".
fn selectors(src: &Map<String, Value>, key: &str, cx: &mut Cx<'_>) -> Vec<Value> {
    match src.get(key) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                check_selector(s, &format!("spec.{key}[{i}]"), cx);
                s.clone()
            })
            .collect(),
        Some(_) => {
            cx.push(
                Severity::Unconvertible,
                &format!("spec.{key}"),
                "not a list of label selectors; left out",
            );
            vec![]
        }
    }
}

/// Converts one `L2Advertisement`; `pools` are the input's `IPAddressPool`s.
pub fn convert(obj: Map<String, Value>, pools: &[PoolLabels], cx: &mut Cx<'_>) -> Vec<Value> {
    let metadata = converted_metadata(&obj, cx);
    let empty = Map::new();
    let src = match obj.get("spec") {
        Some(Value::Object(s)) => s,
        _ => &empty,
    };
    for k in src.keys() {
        if !matches!(
            k.as_str(),
            "ipAddressPools"
                | "ipAddressPoolSelectors"
                | "nodeSelectors"
                | "serviceSelectors"
                | "interfaces"
                | "preferredNodeSelectors"
        ) {
            cx.push(
                Severity::Unconvertible,
                &format!("spec.{k}"),
                "unknown L2Advertisement field; ferrolb has no equivalent; left out",
            );
        }
    }
    let (pool_names, pool_sels) = pool_selection(src, pools, cx);
    let node_sels = selectors(src, "nodeSelectors", cx);
    let service_sels = selectors(src, "serviceSelectors", cx);

    let mut interfaces: Vec<Value> = Vec::new();
    match src.get("interfaces") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                match it.as_str().map(str::trim) {
                    Some(name) if !name.is_empty() => {
                        interfaces.push(Value::String(regex::escape(name)));
                    }
                    _ => cx.push(
                        Severity::Unconvertible,
                        &format!("spec.interfaces[{i}]"),
                        "expected an interface name; left out",
                    ),
                }
            }
        }
        Some(_) => cx.push(
            Severity::Unconvertible,
            "spec.interfaces",
            "not a list; left out",
        ),
    }

    let mut preferred: Vec<Value> = Vec::new();
    match src.get("preferredNodeSelectors") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let field = format!("spec.preferredNodeSelectors[{i}]");
                let weight = it["weight"].as_i64();
                let pref = it.get("preference").filter(|p| p.is_object());
                match (weight, pref) {
                    (Some(w), Some(p)) if (1..=100).contains(&w) => {
                        check_selector(p, &format!("{field}.preference"), cx);
                        preferred.push(json!({"weight": w, "nodeSelector": p}));
                    }
                    (Some(w), Some(_)) => cx.push(
                        Severity::Unconvertible,
                        &format!("{field}.weight"),
                        format!("weight {w} is outside 1..100; left out"),
                    ),
                    _ => cx.push(
                        Severity::Unconvertible,
                        &field,
                        "expected {weight, preference}; left out",
                    ),
                }
            }
        }
        Some(_) => cx.push(
            Severity::Unconvertible,
            "spec.preferredNodeSelectors",
            "not a list; left out",
        ),
    }

    // One policy per (serviceSelector, nodeSelector, poolSelector) combination: ORed selectors
    // become several policies, which ferrolb unions in the same way. The pool names go into
    // every policy (a union of unions).
    let opt = |v: Vec<Value>| -> Vec<Option<Value>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.into_iter().map(Some).collect()
        }
    };
    let combos: Vec<(Option<Value>, Option<Value>, Option<Value>)> = opt(service_sels)
        .into_iter()
        .flat_map(|s| {
            let pool_sels = pool_sels.clone();
            opt(node_sels.clone()).into_iter().flat_map(move |n| {
                let s = s.clone();
                opt(pool_sels.clone())
                    .into_iter()
                    .map(move |p| (s.clone(), n.clone(), p))
            })
        })
        .collect();
    let name = metadata["name"]
        .as_str()
        .unwrap_or("l2advertisement")
        .to_string();
    if combos.len() > 1 {
        cx.push(
            Severity::Warning,
            "spec",
            format!(
                "several serviceSelectors/nodeSelectors/ipAddressPoolSelectors (ORed in MetalLB) \
                 written as {} policies {name}-1…{name}-{}, which ferrolb unions the same way",
                combos.len(),
                combos.len()
            ),
        );
    }
    if obj.get("status").is_some_and(|s| !s.is_null()) {
        cx.push(Severity::Warning, "status", "MetalLB's status dropped");
    }
    let total = combos.len();
    combos
        .into_iter()
        .enumerate()
        .map(|(i, (svc, node, pool_sel))| {
            let mut meta = metadata.clone();
            if total > 1 {
                meta["name"] = Value::String(format!("{name}-{}", i + 1));
            }
            let mut spec = Map::new();
            if let Some(s) = svc {
                spec.insert("serviceSelector".into(), s);
            }
            if let Some(n) = node {
                spec.insert("nodeSelector".into(), n);
            }
            if !interfaces.is_empty() {
                spec.insert("interfaces".into(), Value::Array(interfaces.clone()));
            }
            spec.insert("loadBalancerIPs".into(), Value::Bool(true));
            spec.insert("externalIPs".into(), Value::Bool(false));
            if !preferred.is_empty() {
                spec.insert("preferredNodes".into(), Value::Array(preferred.clone()));
            }
            if !pool_names.is_empty() {
                spec.insert("pools".into(), json!(pool_names));
            }
            if let Some(p) = pool_sel {
                spec.insert("poolSelector".into(), p);
            }
            json!({
                "apiVersion": format!("{}/v1alpha1", api::GROUP),
                "kind": "L2AnnouncementPolicy",
                "metadata": meta,
                "spec": Value::Object(spec),
            })
        })
        .collect()
}

/// `ipAddressPools` → pool names, `ipAddressPoolSelectors` → the selectors to write (several on
/// one label key merged into one `In`, one selecting everything makes `{}`; otherwise one per
/// policy). Both empty = every pool, as in
/// MetalLB (and as a policy without `pools`/`poolSelector`).
fn pool_selection(
    src: &Map<String, Value>,
    pools: &[PoolLabels],
    cx: &mut Cx<'_>,
) -> (Vec<String>, Vec<Value>) {
    let mut names: Vec<String> = Vec::new();
    match src.get("ipAddressPools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                match v.as_str().map(str::trim) {
                    Some(n) if !n.is_empty() => {
                        if !names.iter().any(|x| x == n) {
                            names.push(n.to_string());
                        }
                    }
                    _ => cx.push(
                        Severity::Unconvertible,
                        &format!("spec.ipAddressPools[{i}]"),
                        "expected a pool name; left out",
                    ),
                }
            }
        }
        Some(_) => cx.push(
            Severity::Unconvertible,
            "spec.ipAddressPools",
            "not a list of pool names; left out",
        ),
    }
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !pools.is_empty() && !pools.iter().any(|(p, _)| p == *n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        cx.push(
            Severity::Warning,
            "spec.ipAddressPools",
            format!(
                "pool(s) {} not in the input: converted by name all the same",
                missing.join(", ")
            ),
        );
    }
    let sels = selectors(src, "ipAddressPoolSelectors", cx);
    let sels = match sels.len() {
        0 | 1 => sels,
        n => match merge_ored_selectors(&sels) {
            Some(merged) => {
                cx.push(
                    Severity::Warning,
                    "spec.ipAddressPoolSelectors",
                    format!("{n} selectors (ORed in MetalLB) merged into one poolSelector"),
                );
                vec![merged]
            }
            None => sels,
        },
    };
    (names, sels)
}
