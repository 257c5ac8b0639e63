//! core/v1 Events and events.k8s.io/v1 Events are one stored object seen through two APIs
//! (golden 75, 76): field names are mapped on read.

use serde_json::{json, Map, Value};

fn take(m: &Map<String, Value>, k: &str) -> Option<Value> {
    m.get(k).cloned()
}

/// events.k8s.io/v1 → core/v1.
pub fn to_core(obj: &Value) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut o = Map::new();
    o.insert("kind".into(), json!("Event"));
    o.insert("apiVersion".into(), json!("v1"));
    if let Some(md) = take(m, "metadata") {
        o.insert("metadata".into(), md);
    }
    o.insert(
        "involvedObject".into(),
        take(m, "regarding").unwrap_or(json!({})),
    );
    for (from, to) in [("reason", "reason"), ("note", "message")] {
        if let Some(v) = take(m, from) {
            o.insert(to.into(), v);
        }
    }
    o.insert(
        "source".into(),
        take(m, "deprecatedSource").unwrap_or(json!({})),
    );
    o.insert(
        "firstTimestamp".into(),
        take(m, "deprecatedFirstTimestamp").unwrap_or(Value::Null),
    );
    o.insert(
        "lastTimestamp".into(),
        take(m, "deprecatedLastTimestamp").unwrap_or(Value::Null),
    );
    if let Some(c) = take(m, "deprecatedCount").filter(|c| c.as_i64().unwrap_or(0) != 0) {
        o.insert("count".into(), c);
    }
    for (from, to) in [
        ("type", "type"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
    ] {
        if let Some(v) = take(m, from) {
            o.insert(to.into(), v);
        }
    }
    if !o.contains_key("eventTime") {
        o.insert("eventTime".into(), Value::Null);
    }
    Value::Object(o)
}

/// core/v1 → events.k8s.io/v1.
pub fn to_events_v1(obj: &Value) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut o = Map::new();
    o.insert("kind".into(), json!("Event"));
    o.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    if let Some(md) = take(m, "metadata") {
        o.insert("metadata".into(), md);
    }
    o.insert(
        "eventTime".into(),
        take(m, "eventTime").unwrap_or(Value::Null),
    );
    for (from, to) in [
        ("series", "series"),
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("action", "action"),
        ("reason", "reason"),
        ("involvedObject", "regarding"),
        ("related", "related"),
        ("message", "note"),
        ("type", "type"),
    ] {
        if let Some(v) = take(m, from) {
            o.insert(to.into(), v);
        }
    }
    o.insert(
        "deprecatedSource".into(),
        take(m, "source").unwrap_or(json!({})),
    );
    o.insert(
        "deprecatedFirstTimestamp".into(),
        take(m, "firstTimestamp").unwrap_or(Value::Null),
    );
    o.insert(
        "deprecatedLastTimestamp".into(),
        take(m, "lastTimestamp").unwrap_or(Value::Null),
    );
    if let Some(c) = take(m, "count").filter(|c| c.as_i64().unwrap_or(0) != 0) {
        o.insert("deprecatedCount".into(), c);
    }
    Value::Object(o)
}

/// The Go zero values an events.k8s.io/v1 Event is served with.
pub fn fill_events_v1(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry("deprecatedSource").or_insert_with(|| json!({}));
        m.entry("deprecatedFirstTimestamp").or_insert(Value::Null);
        m.entry("deprecatedLastTimestamp").or_insert(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_maps_names() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "eventTime": "2026-11-22T07:57:47.246813Z", "reportingController": "ferrolb.io/controller",
            "reportingInstance": "i", "action": "AllocateIP", "reason": "IPAllocated",
            "regarding": {"kind": "Service", "name": "api"}, "note": "Assigned", "type": "Normal"});
        let core = to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "api");
        assert_eq!(core["message"], "Assigned");
        assert_eq!(core["reportingComponent"], "ferrolb.io/controller");
        assert_eq!(core["source"], json!({}));
        assert!(core["firstTimestamp"].is_null());
        let back = to_events_v1(&core);
        assert_eq!(back["note"], "Assigned");
        assert_eq!(back["regarding"], ev["regarding"]);
        assert_eq!(back["reportingController"], ev["reportingController"]);
    }
}
