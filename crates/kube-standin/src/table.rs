//! `as=Table` responses (what `kubectl get` prints): Service columns, CRD printer columns, and a
//! generic NAME/AGE table for everything else.

use super::resources::ResourceDef;
use serde_json::{json, Map, Value};

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn col(name: &str, typ: &str, format: &str, desc: &str, priority: i64) -> Value {
    json!({"name": name, "type": typ, "format": format, "description": desc, "priority": priority})
}

/// Renders a creation time as kubectl ages ("37s", "5m", "3h", "2d").
pub fn age(ts: Option<&str>) -> Value {
    let Some(ts) = ts else { return Value::Null };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return Value::Null;
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    let s = if secs < 120 {
        format!("{secs}s")
    } else if secs < 3600 * 3 {
        let (m, s) = (secs / 60, secs % 60);
        if m < 10 && s > 0 {
            format!("{m}m{s}s")
        } else {
            format!("{m}m")
        }
    } else if secs < 86400 * 2 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    };
    json!(s)
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    if def.kind == "Service" && !def.custom {
        return vec![
            col("Name", "string", "name", NAME_DESC, 0),
            col("Type", "string", "", "type determines how the Service is exposed.", 0),
            col("Cluster-IP", "string", "", "clusterIP is the IP address of the service and is usually assigned randomly.", 0),
            col("External-IP", "string", "", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.", 0),
            col("Port(s)", "string", "", "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies", 0),
            col("Age", "string", "", AGE_DESC, 0),
            col("Selector", "string", "", "Route service traffic to pods with label keys and values matching this selector.", 1),
        ];
    }
    let mut cols = vec![col("Name", "string", "name", NAME_DESC, 0)];
    if !def.custom {
        match def.kind.as_str() {
            "Namespace" => {
                cols.push(col(
                    "Status",
                    "string",
                    "",
                    "The status of the namespace",
                    0,
                ));
                cols.push(col("Age", "string", "", AGE_DESC, 0));
                return cols;
            }
            "Lease" => {
                cols.push(col(
                    "Holder",
                    "string",
                    "",
                    "holderIdentity contains the identity of the holder of a current lease.",
                    0,
                ));
                cols.push(col("Age", "string", "", AGE_DESC, 0));
                return cols;
            }
            "Node" => {
                cols.push(col("Status", "string", "", "The status of the node", 0));
                cols.push(col("Roles", "string", "", "The roles of the node", 0));
                cols.push(col("Age", "string", "", AGE_DESC, 0));
                cols.push(col(
                    "Version",
                    "string",
                    "",
                    "Kubelet Version reported by the node.",
                    0,
                ));
                return cols;
            }
            _ => {}
        }
    }
    if def.custom && !def.printer_columns.is_empty() {
        for c in &def.printer_columns {
            cols.push(col(
                c.get("name").and_then(Value::as_str).unwrap_or(""),
                c.get("type").and_then(Value::as_str).unwrap_or("string"),
                c.get("format").and_then(Value::as_str).unwrap_or(""),
                c.get("description").and_then(Value::as_str).unwrap_or(""),
                c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            ));
        }
        return cols;
    }
    cols.push(col("Age", "string", "", AGE_DESC, 0));
    cols
}

/// Evaluates a simple JSONPath like `.spec.blocks[0].cidr` or `.status.conditions[?(@.type=="X")].status`.
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inside = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if let Some(filter) = inside.strip_prefix("?(@.") {
                let filter = filter.trim_end_matches(')');
                let (k, v) = filter.split_once("==")?;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|e| e.get(k.trim()).and_then(Value::as_str) == Some(v))?;
            } else {
                cur = cur.get(inside.parse::<usize>().ok()?)?;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

fn cell_value(v: Option<&Value>, typ: &str) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if typ == "date" => age(Some(s)),
        Some(Value::String(s)) => json!(s),
        Some(Value::Number(n)) => json!(n),
        Some(Value::Bool(b)) => json!(b),
        Some(other) => json!(other.to_string()),
    }
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    if def.kind == "Service" && !def.custom {
        let spec = obj.get("spec").cloned().unwrap_or(json!({}));
        let s = |k: &str| {
            spec.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let typ = s("type");
        let mut ext: Vec<String> = obj
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| {
                        i.get("ip")
                            .or_else(|| i.get("hostname"))
                            .and_then(Value::as_str)
                    })
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(e) = spec.get("externalIPs").and_then(Value::as_array) {
            ext.extend(e.iter().filter_map(Value::as_str).map(str::to_string));
        }
        let external = if !ext.is_empty() {
            ext.join(",")
        } else if typ == "LoadBalancer" {
            "<pending>".into()
        } else if typ == "ExternalName" {
            s("externalName")
        } else {
            "<none>".into()
        };
        let ports: Vec<String> = spec
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                        match p.get("nodePort").and_then(Value::as_i64) {
                            Some(np) => format!("{port}:{np}/{proto}"),
                            None => format!("{port}/{proto}"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "<none>".into());
        let cip = if s("clusterIP").is_empty() {
            "<none>".into()
        } else {
            s("clusterIP")
        };
        return vec![
            name,
            json!(typ),
            json!(cip),
            json!(external),
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            }),
            age(created),
            json!(selector),
        ];
    }
    let mut out = vec![name];
    if !def.custom {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_string);
        match def.kind.as_str() {
            "Namespace" => {
                out.push(json!(s("/status/phase").unwrap_or_default()));
                out.push(age(created));
                return out;
            }
            "Lease" => {
                out.push(json!(s("/spec/holderIdentity").unwrap_or_default()));
                out.push(age(created));
                return out;
            }
            "Node" => {
                let ready = obj
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                    })
                    .and_then(|c| c.get("status").and_then(Value::as_str))
                    .map(|st| if st == "True" { "Ready" } else { "NotReady" })
                    .unwrap_or("Unknown");
                let roles: Vec<String> = obj
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|l| {
                        l.keys()
                            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!(ready));
                out.push(json!(if roles.is_empty() {
                    "<none>".to_string()
                } else {
                    roles.join(",")
                }));
                out.push(age(created));
                out.push(json!(
                    s("/status/nodeInfo/kubeletVersion").unwrap_or_default()
                ));
                return out;
            }
            _ => {}
        }
    }
    if def.custom && !def.printer_columns.is_empty() {
        for c in &def.printer_columns {
            let path = c.get("jsonPath").and_then(Value::as_str).unwrap_or("");
            let typ = c.get("type").and_then(Value::as_str).unwrap_or("string");
            out.push(cell_value(json_path(obj, path), typ));
        }
        return out;
    }
    out.push(age(created));
    out
}

fn row(def: &ResourceDef, obj: &Value) -> Value {
    let mut md = obj.get("metadata").cloned().unwrap_or(json!({}));
    if def.custom {
        if let Some(m) = md.as_object_mut() {
            let mut e: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            e.sort_by(|a, b| a.0.cmp(&b.0));
            m.extend(e);
        }
    }
    json!({"cells": cells(def, obj), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": md}})
}

/// Table for a list response.
pub fn list_table(def: &ResourceDef, list: &Value) -> Value {
    let mut md = Map::new();
    if let Some(m) = list.get("metadata").and_then(Value::as_object) {
        md = m.clone();
    }
    let rows: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|o| row(def, o)).collect())
        .unwrap_or_default();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": columns(def), "rows": rows})
}

/// Table for one object (GET with as=Table).
pub fn object_table(def: &ResourceDef, obj: &Value) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(json!(""));
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns(def), "rows": [row(def, obj)]})
}

/// Table object of one watch event: column definitions only on the first event (84).
pub fn watch_table(def: &ResourceDef, obj: &Value, first: bool) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(json!(""));
    let cols = if first {
        json!(columns(def))
    } else {
        Value::Null
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": cols, "rows": [row(def, obj)]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_and_namespace_rows() {
        let reg = crate::resources::builtins();
        let lease = reg.iter().find(|d| d.kind == "Lease").unwrap();
        let t = object_table(
            lease,
            &json!({"metadata": {"name": "vip", "resourceVersion": "7"}, "spec": {"holderIdentity": "node-a"}}),
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Holder");
        assert_eq!(t["rows"][0]["cells"], json!(["vip", "node-a", null]));
        let ns = reg.iter().find(|d| d.kind == "Namespace").unwrap();
        let w = watch_table(
            ns,
            &json!({"metadata": {"name": "demo"}, "status": {"phase": "Active"}}),
            false,
        );
        assert!(
            w["columnDefinitions"].is_null(),
            "only the first watch event has columns"
        );
        assert_eq!(w["rows"][0]["cells"][1], "Active");
    }

    #[test]
    fn jsonpath_filters() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "B", "status": "True"}]}, "spec": {"blocks": [{"cidr": "x"}]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"B\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.blocks[0].cidr"), Some(&json!("x")));
        assert_eq!(json_path(&o, ".spec.nope"), None);
    }
}
