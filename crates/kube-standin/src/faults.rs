//! Fault injection: refuse/drop connections, answer 500/503, add latency — globally or for one
//! client identity, optionally for a period. Switchable while clients run.
//!
//! Admin JSON (`/_ferrolb/faults`):
//! - `GET` → `{"faults":[{"id":1,"kind":"refuse","client":null,"remainingSeconds":4.2}, ...]}`
//! - `POST` a rule → `{"id": N}`. A rule is
//!   `{"kind":"refuse"|"drop"|"error"|"latency"|"restart", "code":503, "latencyMs":200, "client":"node-a", "seconds":5}`;
//!   `code` (500 or 503, default 503) only for `error`, `latencyMs` only for `latency`; `client` and
//!   `seconds` are optional (all clients / until removed; a `restart` lasts 8 s by default).
//! - `DELETE /_ferrolb/faults` removes all rules, `DELETE /_ferrolb/faults/N` removes one.
//!
//! The admin endpoint itself and `/metrics`, `/healthz` are never affected by faults.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Over HTTP: new connections are refused (for all clients: the listener is closed; for one
    /// client: its requests' connections are closed without an answer). Open watches of the
    /// affected clients are cut. In-process: requests fail with a connection error.
    Refuse,
    /// Requests are read, then the connection is closed without answering; watches are cut.
    Drop,
    /// Answer with an error Status (`code` 500 or 503).
    Error,
    /// Delay every request by `latency_ms` before handling it.
    Latency,
    /// Answer like a kube-apiserver restarting over the same etcd, for `seconds` (default 8),
    /// keeping every object: the first quarter it is down (connections refused, open watches
    /// cut), then `403` (the authorizer has not synced), then `429` (the watch cache fills),
    /// then `504`; a watch resumed from a resourceVersion gets `410 Expired` after the down
    /// quarter. What a real restart showed (issue 18), in one fixed order.
    Restart,
}

/// The phase of a [`FaultKind::Restart`] window at `fraction` (0..1) of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPhase {
    Down,
    Forbidden,
    TooManyRequests,
    GatewayTimeout,
}

impl RestartPhase {
    pub fn at(fraction: f64) -> Self {
        match fraction {
            f if f < 0.25 => RestartPhase::Down,
            f if f < 0.5 => RestartPhase::Forbidden,
            f if f < 0.75 => RestartPhase::TooManyRequests,
            _ => RestartPhase::GatewayTimeout,
        }
    }

    /// The HTTP code answered in this phase (`None`: connections are refused).
    pub fn code(self) -> Option<u16> {
        match self {
            RestartPhase::Down => None,
            RestartPhase::Forbidden => Some(403),
            RestartPhase::TooManyRequests => Some(429),
            RestartPhase::GatewayTimeout => Some(504),
        }
    }
}

/// One fault rule as given by a test or the admin endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// HTTP code for `Error` (500 or 503; default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Delay for `Latency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Only this client identity (bearer token / `client_as` name); None = all clients.
    #[serde(default)]
    pub client: Option<String>,
    /// Active for this many seconds from now; None = until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl FaultSpec {
    /// Refuse connections (all clients, until removed).
    pub fn refuse() -> Self {
        Self::new(FaultKind::Refuse)
    }
    /// Accept, then hang up without answering.
    pub fn drop_requests() -> Self {
        Self::new(FaultKind::Drop)
    }
    /// Answer `code` (500/503) with a Status body.
    pub fn error(code: u16) -> Self {
        Self {
            code: Some(code),
            ..Self::new(FaultKind::Error)
        }
    }
    /// A restart of `d` (see [`FaultKind::Restart`]).
    pub fn restart(d: Duration) -> Self {
        Self {
            seconds: Some(d.as_secs_f64()),
            ..Self::new(FaultKind::Restart)
        }
    }
    /// Delay each request.
    pub fn latency(d: Duration) -> Self {
        Self {
            latency_ms: Some(d.as_millis() as u64),
            ..Self::new(FaultKind::Latency)
        }
    }
    fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            code: None,
            latency_ms: None,
            client: None,
            seconds: None,
        }
    }
    /// Only for one client identity.
    pub fn for_client(mut self, client: &str) -> Self {
        self.client = Some(client.to_string());
        self
    }
    /// Only for a period starting now.
    pub fn for_duration(mut self, d: Duration) -> Self {
        self.seconds = Some(d.as_secs_f64());
        self
    }
}

#[derive(Debug, Clone)]
struct Rule {
    id: u64,
    spec: FaultSpec,
    added: Instant,
    until: Option<Instant>,
}

#[derive(Default)]
struct FaultsInner {
    rules: Mutex<(u64, Vec<Rule>)>,
    changed: tokio::sync::Notify,
    gen: tokio::sync::watch::Sender<u64>,
}

/// Handle on the server's fault rules (cheap to clone).
#[derive(Clone, Default)]
pub struct Faults(Arc<FaultsInner>);

/// What the request path should do for a given client right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientFaults {
    pub refuse: bool,
    pub drop: bool,
    pub error: Option<u16>,
    pub latency: Duration,
    /// A restart is past its down phase: watches resumed from a resourceVersion get 410.
    pub expire_watches: bool,
}

impl Faults {
    /// Adds a rule; returns its id.
    pub fn add(&self, mut spec: FaultSpec) -> u64 {
        if spec.kind == FaultKind::Restart && spec.seconds.is_none() {
            spec.seconds = Some(8.0);
        }
        let until = spec
            .seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Instant::now() + Duration::from_secs_f64(s.min(1e9)));
        let id = {
            let mut g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
            g.0 += 1;
            let id = g.0;
            g.1.push(Rule {
                id,
                spec,
                added: Instant::now(),
                until,
            });
            id
        };
        self.bump();
        id
    }
    /// Removes one rule; true if it existed.
    pub fn remove(&self, id: u64) -> bool {
        let removed = {
            let mut g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
            let before = g.1.len();
            g.1.retain(|r| r.id != id);
            before != g.1.len()
        };
        self.bump();
        removed
    }
    /// Removes every rule.
    pub fn clear(&self) {
        self.0
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clear();
        self.bump();
    }
    /// Shortcut: refuse all connections until `clear`/`remove`.
    pub fn refuse(&self) -> u64 {
        self.add(FaultSpec::refuse())
    }
    /// Active rules as (id, spec with `seconds` = remaining time).
    pub fn list(&self) -> Vec<(u64, FaultSpec)> {
        let now = Instant::now();
        let g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
        g.1.iter()
            .filter(|r| r.until.is_none_or(|u| u > now))
            .map(|r| {
                let mut s = r.spec.clone();
                s.seconds = r.until.map(|u| (u - now).as_secs_f64());
                (r.id, s)
            })
            .collect()
    }
    fn bump(&self) {
        self.0.gen.send_modify(|g| *g += 1);
        self.0.changed.notify_waiters();
    }
    /// Subscribes to rule changes (used to cut open watches when a fault starts).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.gen.subscribe()
    }
    /// The earliest expiry of a time-limited rule, if any (to wake up watchers/listeners).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let now = Instant::now();
        let g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
        g.1.iter()
            .filter_map(|r| r.until)
            .filter(|u| *u > now)
            .min()
    }
    /// What applies to `client` now.
    pub fn for_client(&self, client: &str) -> ClientFaults {
        let now = Instant::now();
        let mut v = ClientFaults::default();
        let mut g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
        g.1.retain(|r| r.until.is_none_or(|u| u > now));
        for r in &g.1 {
            if r.spec.client.as_deref().is_some_and(|c| c != client) {
                continue;
            }
            match r.spec.kind {
                FaultKind::Refuse => v.refuse = true,
                FaultKind::Drop => v.drop = true,
                FaultKind::Error => {
                    v.error = Some(match r.spec.code {
                        Some(500) => 500,
                        _ => 503,
                    })
                }
                FaultKind::Latency => {
                    v.latency += Duration::from_millis(r.spec.latency_ms.unwrap_or(0))
                }
                FaultKind::Restart => {
                    let total = r.until.map_or(Duration::ZERO, |u| u - r.added);
                    let fraction = (now - r.added).as_secs_f64() / total.as_secs_f64().max(1e-9);
                    let phase = RestartPhase::at(fraction);
                    match phase.code() {
                        None => v.refuse = true,
                        Some(code) => {
                            v.error = Some(code);
                            v.expire_watches = true;
                        }
                    }
                }
            }
        }
        v
    }
    /// True when some rule refuses connections for every client (the listener is closed).
    pub(crate) fn refuse_all(&self) -> bool {
        let now = Instant::now();
        let g = self.0.rules.lock().unwrap_or_else(|e| e.into_inner());
        g.1.iter().any(|r| {
            let down = match r.spec.kind {
                FaultKind::Refuse => true,
                FaultKind::Restart => r.until.is_some_and(|u| {
                    let f = (now - r.added).as_secs_f64() / (u - r.added).as_secs_f64().max(1e-9);
                    RestartPhase::at(f) == RestartPhase::Down
                }),
                _ => false,
            };
            down && r.spec.client.is_none() && r.until.is_none_or(|u| u > now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_expiry() {
        let f = Faults::default();
        let id = f.add(FaultSpec::error(500).for_client("a"));
        assert_eq!(f.for_client("a").error, Some(500));
        assert_eq!(f.for_client("b").error, None);
        f.add(FaultSpec::refuse().for_duration(Duration::from_millis(0)));
        assert!(!f.for_client("b").refuse, "expired at once");
        assert!(f.remove(id));
        assert_eq!(f.for_client("a"), ClientFaults::default());
    }

    #[test]
    fn restart_phases_in_order() {
        let at = |f| RestartPhase::at(f).code();
        assert_eq!(
            [at(0.0), at(0.3), at(0.6), at(0.9)],
            [None, Some(403), Some(429), Some(504)]
        );
        let f = Faults::default();
        f.add(FaultSpec::restart(Duration::from_secs(60)));
        let v = f.for_client("x");
        assert!(v.refuse && !v.expire_watches, "{v:?}");
        assert!(f.refuse_all());
        let s: FaultSpec = serde_json::from_str(r#"{"kind":"restart"}"#).unwrap();
        let g = Faults::default();
        g.add(s);
        assert_eq!(g.list()[0].1.seconds.map(|s| s.round()), Some(8.0));
    }

    #[test]
    fn spec_json_shape() {
        let s: FaultSpec =
            serde_json::from_str(r#"{"kind":"latency","latencyMs":20,"client":"x","seconds":2}"#)
                .unwrap();
        assert_eq!(s.kind, FaultKind::Latency);
        assert_eq!(s.latency_ms, Some(20));
    }
}
