//! Watches: newline-delimited JSON events over a chunked body, read from the per-resource event
//! history (so writers never wait for watchers).

use super::body::Body;
use super::error::ApiError;
use super::http::{as_version, encode_json, Query, Selectors, Target};
use super::resources::ResourceDef;
use super::store::EventType;
use super::{table, Inner};
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bookmarks are sent this often (when there is something new), and ~2 s before the deadline.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut md = serde_json::Map::new();
    md.insert("resourceVersion".into(), json!(rv.to_string()));
    if initial_end {
        md.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    let mut o = serde_json::Map::new();
    if def.custom {
        o.insert("apiVersion".into(), json!(def.api_version()));
        o.insert("kind".into(), json!(def.kind));
        o.insert("metadata".into(), Value::Object(md));
        return Value::Object(o);
    }
    o.insert("kind".into(), json!(def.kind));
    o.insert("apiVersion".into(), json!(def.api_version()));
    o.insert("metadata".into(), Value::Object(md));
    match def.kind.as_str() {
        "Service" => {
            o.insert("spec".into(), json!({}));
            o.insert("status".into(), json!({"loadBalancer": {}}));
        }
        "Lease" | "Namespace" | "Node" | "CustomResourceDefinition" => {
            o.insert("spec".into(), json!({}));
            if def.kind != "Lease" {
                o.insert("status".into(), json!({}));
            }
        }
        _ => {}
    }
    Value::Object(o)
}

/// One watch line: `{"type":etype,"object":obj}` and a newline (`obj` already encoded).
fn watch_line(etype: &str, obj: &str) -> String {
    format!("{{\"type\":\"{etype}\",\"object\":{obj}}}\n")
}

struct Sender {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    def: Arc<ResourceDef>,
    table: bool,
    first: bool,
}

impl Sender {
    async fn send(&mut self, etype: &str, obj: &Value) -> bool {
        let obj = if self.table && etype != "ERROR" && etype != "BOOKMARK" {
            let t = table::watch_table(&self.def, obj, self.first);
            self.first = false;
            t
        } else {
            obj.clone()
        };
        let line = encode_json(&json!({"type": etype, "object": obj}));
        self.tx.send(Ok(Bytes::from(line))).await.is_ok()
    }
    /// Sends an event whose object is already encoded (no trailing newline).
    async fn send_encoded(&mut self, etype: &str, obj: &str) -> bool {
        self.send_line(Bytes::from(watch_line(etype, obj))).await
    }
    /// Sends a complete watch line.
    async fn send_line(&mut self, line: Bytes) -> bool {
        self.tx.send(Ok(line)).await.is_ok()
    }

    async fn abort(&self) {
        let _ = self
            .tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection cut by fault injection",
            )))
            .await;
    }
}

/// Starts a watch; the response is returned at once, events follow on the body.
pub fn start(
    inner: Arc<Inner>,
    t: Target,
    q: Query,
    sel: Selectors,
    client: String,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let def = t.def.clone();
    let send_initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let rv_match = q.get("resourceVersionMatch").cloned().unwrap_or_default();
    if send_initial && rv_match != "NotOlderThan" {
        return Err(ApiError::status(
            422,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            Some(json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": [{
                "reason": "FieldValueForbidden",
                "message": "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                "field": "resourceVersionMatch"}]})),
        ));
    }
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1800);
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let start_rv: Option<u64> =
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            None
        } else {
            Some(rv_param.parse().map_err(|_| {
                ApiError::bad_request(&format!("invalid resource version: {rv_param}"))
            })?)
        };
    // consistent snapshot + subscription under one lock
    let (initial, mut last, mut notify) = {
        let mut st = inner.lock();
        let global = st.rv;
        let tab = st.table(&def.storage);
        let notify = tab.notify.subscribe();
        match start_rv {
            Some(rv) => (None, rv, notify),
            None => {
                let objs = st.list(&def, t.namespace.as_deref());
                (Some(objs), global, notify)
            }
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let mut faults_rx = inner.faults.subscribe();
    let faults = inner.faults.clone();
    let ns_filter = t.namespace.clone();
    tokio::spawn(async move {
        let mut s = Sender {
            tx,
            def: def.clone(),
            table,
            first: true,
        };
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let pre_deadline = deadline.checked_sub(Duration::from_secs(2));
        let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
        let mut last_sent = last;
        if let Some(objs) = initial {
            for o in objs {
                let o = as_version(&def, &o);
                if sel.matches(&o) && !s.send("ADDED", &o).await {
                    return;
                }
            }
            if bookmarks {
                if !s.send("BOOKMARK", &bookmark(&def, last, true)).await {
                    return;
                }
                last_sent = last;
            }
        }
        let in_ns = |o: &Value| {
            ns_filter.as_deref().is_none_or(|n| {
                o.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    == n
            })
        };
        let api_version = def.api_version();
        // Objects stored under the watched version are matched and sent as they are (no copy).
        let stored_as_watched =
            |o: &Value| o.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str());
        let mut pre_done = pre_deadline.is_none();
        loop {
            // drain history after `last`
            loop {
                let batch = {
                    let st = inner.lock();
                    match st.tables.get(&def.storage) {
                        Some(tab) => tab.events_after(last, 512),
                        None => Ok(vec![]),
                    }
                };
                let evs = match batch {
                    Ok(e) => e,
                    Err(oldest) => {
                        let err = ApiError::status(
                            410,
                            "Expired",
                            &format!("too old resource version: {last} ({oldest})"),
                            None,
                        );
                        let _ = s.send("ERROR", &err.body).await;
                        return;
                    }
                };
                if evs.is_empty() {
                    break;
                }
                for e in evs {
                    last = e.rv;
                    if !in_ns(&e.object) {
                        continue;
                    }
                    let as_stored = !table && stored_as_watched(&e.object);
                    let converted;
                    let obj: &Value = if as_stored {
                        &e.object
                    } else {
                        converted = as_version(&def, &e.object);
                        &converted
                    };
                    let cur = sel.matches(obj);
                    let prev = e.prev.as_ref().is_some_and(|p| {
                        sel.is_empty()
                            || if stored_as_watched(p) {
                                sel.matches(p)
                            } else {
                                sel.matches(&as_version(&def, p))
                            }
                    });
                    let etype = match e.etype {
                        EventType::Added if cur => "ADDED",
                        EventType::Modified if cur && prev => "MODIFIED",
                        EventType::Modified if cur => "ADDED",
                        EventType::Modified if prev => "DELETED",
                        EventType::Deleted if prev => "DELETED",
                        _ => continue,
                    };
                    let sent = if as_stored {
                        let enc = || {
                            e.encoded.get_or_init(|| {
                                let mut b = encode_json(&e.object);
                                b.pop(); // the newline
                                Arc::from(String::from_utf8_lossy(&b).as_ref())
                            })
                        };
                        if etype == e.etype.as_str() {
                            // the usual case: one line for every watcher (no copy per watcher)
                            let line = e
                                .line
                                .get_or_init(|| Bytes::from(watch_line(etype, enc())))
                                .clone();
                            s.send_line(line).await
                        } else {
                            s.send_encoded(etype, enc()).await
                        }
                    } else {
                        s.send(etype, obj).await
                    };
                    if !sent {
                        return;
                    }
                    last_sent = e.rv;
                }
            }
            let wake_bookmark = if pre_done {
                next_bookmark
            } else {
                next_bookmark.min(pre_deadline.unwrap_or(deadline))
            };
            let fault_expiry = faults.next_expiry().map(Instant::from_std);
            tokio::select! {
                r = notify.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep_until(deadline) => { return; }
                _ = tokio::time::sleep_until(wake_bookmark) => {
                    if !pre_done && Instant::now() >= pre_deadline.unwrap_or(deadline) { pre_done = true; }
                    next_bookmark = Instant::now() + BOOKMARK_EVERY;
                    // `last` covers every event of this resource pulled so far, including
                    // ones the selectors filtered out.
                    if bookmarks && last > last_sent {
                        if !s.send("BOOKMARK", &bookmark(&def, last, false)).await { return; }
                        last_sent = last;
                    }
                }
                r = faults_rx.changed() => {
                    if r.is_err() { return; }
                    let v = faults.for_client(&client);
                    if v.refuse || v.drop { s.abort().await; return; }
                }
                _ = async { match fault_expiry { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
                _ = s.tx.closed() => { return; }
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}
