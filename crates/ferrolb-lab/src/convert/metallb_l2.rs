//! MetalLB `L2Advertisement` → ferrolb `L2AnnouncementPolicy`s.
//!
//! | MetalLB | ferrolb |
//! |---|---|
//! | `nodeSelectors[]` (ORed) | `nodeSelector`; several → one policy per selector (a node any of them selects may announce, as in MetalLB) |
//! | `serviceSelectors[]` (ORed) | `serviceSelector`; several → one policy per selector |
//! | `interfaces[]` (interface names) | `interfaces[]` (anchored regexes: each name escaped) |
//! | `preferredNodeSelectors[] = {weight, preference}` | `preferredNodes[] = {weight, nodeSelector}` (the same rule: weights of matching entries sum, higher first, the rest fall back) |
//! | `ipAddressPools[]`, `ipAddressPoolSelectors[]` | none: a ferrolb policy selects Services, not pools. Selecting every pool of the input (or leaving both unset) converts exactly; otherwise the policy announces every selected Service's addresses and the pools it would wrongly cover are reported (exit 2) |
//!
//! Always written: `loadBalancerIPs: true`, `externalIPs: false` (MetalLB announces only
//! LoadBalancer addresses). Several policies selecting one Service give one lease whose
//! candidates are the union of their nodes and whose holder announces on the union of their
//! interfaces — which is what several MetalLB advertisements (or several selectors of one)
//! mean. The split policies are named `NAME-1`, `NAME-2`, … (one policy keeps `NAME`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{check_selector, converted_metadata, Cx, Severity};
use ferrolb::api;
use ferrolb::ipam::selector::Selector;

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
    pool_selection(src, pools, cx);
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

    // One policy per (serviceSelector, nodeSelector) combination: ORed selectors become several
    // policies, which ferrolb unions in the same way.
    let opt = |v: Vec<Value>| -> Vec<Option<Value>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.into_iter().map(Some).collect()
        }
    };
    let combos: Vec<(Option<Value>, Option<Value>)> = opt(service_sels)
        .into_iter()
        .flat_map(|s| {
            opt(node_sels.clone())
                .into_iter()
                .map(move |n| (s.clone(), n))
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
                "several serviceSelectors/nodeSelectors (ORed in MetalLB) written as {} policies \
                 {name}-1…{name}-{}, which ferrolb unions the same way",
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
        .map(|(i, (svc, node))| {
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
            json!({
                "apiVersion": format!("{}/v1alpha1", api::GROUP),
                "kind": "L2AnnouncementPolicy",
                "metadata": meta,
                "spec": Value::Object(spec),
            })
        })
        .collect()
}

/// Reports what the pool selection means for the converted policy (which cannot select pools).
fn pool_selection(src: &Map<String, Value>, pools: &[PoolLabels], cx: &mut Cx<'_>) {
    let names: Vec<String> = match src.get("ipAddressPools") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            cx.push(
                Severity::Unconvertible,
                "spec.ipAddressPools",
                "not a list of pool names",
            );
            vec![]
        }
    };
    let sels = selectors(src, "ipAddressPoolSelectors", cx);
    if names.is_empty() && sels.is_empty() {
        // Every pool, as in MetalLB: exact.
        return;
    }
    let mut compiled = Vec::new();
    for (i, s) in sels.iter().enumerate() {
        match serde_json::from_value(s.clone())
            .ok()
            .and_then(|s| Selector::compile(&s).ok())
        {
            Some(sel) => compiled.push(sel),
            None => cx.push(
                Severity::Unconvertible,
                &format!("spec.ipAddressPoolSelectors[{i}]"),
                "not a valid label selector; cannot tell which pools it selects",
            ),
        }
    }
    let selected = |(name, labels): &PoolLabels| {
        names.contains(name) || compiled.iter().any(|s| s.matches(labels))
    };
    let left_out: Vec<&str> = pools
        .iter()
        .filter(|p| !selected(p))
        .map(|(n, _)| n.as_str())
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !pools.iter().any(|(p, _)| p == *n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        cx.push(
            Severity::Warning,
            "spec.ipAddressPools",
            format!(
                "pool(s) {} not in the input: cannot check that this advertisement covers every pool",
                missing.join(", ")
            ),
        );
    }
    if pools.is_empty() && !sels.is_empty() {
        cx.push(
            Severity::Unconvertible,
            "spec.ipAddressPoolSelectors",
            "no IPAddressPool in the input to resolve the selectors against; ferrolb policies \
             select Services, not pools: the converted policy announces every selected \
             Service's addresses",
        );
    } else if !left_out.is_empty() {
        cx.push(
            Severity::Unconvertible,
            if names.is_empty() {
                "spec.ipAddressPoolSelectors"
            } else {
                "spec.ipAddressPools"
            },
            format!(
                "ferrolb policies select Services, not pools: the converted policy also \
                 announces addresses from pool(s) {} (MetalLB does not through this \
                 advertisement); restrict it with a serviceSelector (e.g. on \
                 io.kubernetes.service.namespace) if that matters",
                left_out.join(", ")
            ),
        );
    }
}
