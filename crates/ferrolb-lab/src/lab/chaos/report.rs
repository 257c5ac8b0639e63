//! The chaos report: what was injected, what the observers saw, the violations — as a table
//! and as JSON (`--json`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::observe::{AnswererEvent, Bounds, Compared, Gap, Violation};
use super::schedule::Kind;
use crate::lab::scenario::percentile;

#[derive(Debug, Serialize, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: f64,
    pub nodes: usize,
    /// The Services watched throughout (name, addresses).
    pub services: Vec<(String, Vec<IpAddr>)>,
    /// lease duration / renew deadline / retry period handed to the agents.
    pub timings: String,
    pub bounds: Option<Bounds>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Faults that could not be injected (and why).
    pub injection_errors: Vec<String>,
    /// What this run could not do .
    pub notes: Vec<String>,
    /// The `ForeignAnswerer` Events (another station answered an agent's probe for an address
    /// it announces) and `AddressDefended` Events (another station announced an address an
    /// agent holds; it defended it) the agents wrote during the run — on any Service, the churn
    /// ones included, which the two-answerer capture does not ask for — each with the faults
    /// that allow a second answerer around it (`observe::event_excuse`); one without any is a
    /// `foreign-answerer-event` violation.
    pub answerer_events: Vec<EventRow>,
    pub observed: Observed,
    /// Every two-answerer interval seen (violation or not).
    pub two_answerers: Vec<DoubleRow>,
    /// Unavailability by the fault kinds that explain it (`none`: no fault did).
    pub unavailability: Vec<UnavailRow>,
    pub violations: Vec<Violation>,
    /// Per agent/controller process: RSS and fds first and last.
    pub resources: Vec<ResourceRow>,
}

/// How much the observers saw (a run that saw nothing proves nothing).
#[derive(Debug, Serialize, Default)]
pub struct Observed {
    pub probes: usize,
    pub probe_failures: usize,
    pub arp_requests: usize,
    pub arp_replies: usize,
    pub snapshots: usize,
    pub snapshot_errors: usize,
    /// Frames the nodes' wires carried and dropped during the run (`loss-delay`).
    pub wire_frames: u64,
    pub wire_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct DoubleRow {
    pub address: IpAddr,
    pub start_ms: u64,
    pub length_ms: u64,
    pub rounds: usize,
    pub nodes: Vec<String>,
    pub bound_ms: u64,
    pub faults: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct UnavailRow {
    pub kind: String,
    pub n: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// One agent Event about another station, and the faults that excuse it (empty: none did).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    #[serde(flatten)]
    pub event: AnswererEvent,
    pub faults: Vec<String>,
}

impl EventRow {
    pub fn reason(&self) -> &'static str {
        if self.event.defended {
            "AddressDefended"
        } else {
            "ForeignAnswerer"
        }
    }
}

/// Events by the fault kind that excuses them (`none`: a violation): (kind, ForeignAnswerer,
/// AddressDefended); an Event counts under every kind around it.
pub fn events_by_kind(rows: &[EventRow]) -> Vec<(String, usize, usize)> {
    let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in rows {
        let mut kinds: Vec<&str> = r
            .faults
            .iter()
            .map(|l| l.split(' ').next().unwrap_or(l))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() {
            kinds.push("none");
        }
        for k in kinds {
            let e = by.entry(k.to_string()).or_default();
            if r.event.defended {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    by.into_iter().map(|(k, (f, d))| (k, f, d)).collect()
}

/// One agent or controller incarnation: its first and last samples, and what the growth rule
/// compares (`observe::growth`: the highest of the first third after the warm-up with the
/// lowest of the last third; absent when it lived too short to be judged).
#[derive(Debug, Serialize)]
pub struct ResourceRow {
    pub process: String,
    pub pid: u32,
    pub lived_s: u64,
    pub rss_first_kib: u64,
    pub rss_last_kib: u64,
    pub fds_first: u64,
    pub fds_last: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared: Option<Compared>,
}

/// Unavailability rows: each gap counted under every kind that explains it, or `none`.
pub fn unavailability(gaps: &[(Gap, Vec<Kind>)]) -> Vec<UnavailRow> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (g, kinds) in gaps {
        if kinds.is_empty() {
            by.entry("none".into()).or_default().push(g.length_ms());
        }
        for k in kinds {
            by.entry(k.name().into()).or_default().push(g.length_ms());
        }
    }
    by.into_iter()
        .map(|(kind, mut v)| {
            v.sort_unstable();
            UnavailRow {
                kind,
                n: v.len(),
                p50_ms: percentile(&v, 50.0).unwrap_or(0),
                p99_ms: percentile(&v, 99.0).unwrap_or(0),
                max_ms: v.last().copied().unwrap_or(0),
            }
        })
        .collect()
}

fn secs(start: u64, at: u64) -> String {
    format!("+{:.1}s", at.saturating_sub(start) as f64 / 1000.0)
}

/// The report as text lines (the table).
pub fn table(r: &ChaosReport, start_ms: u64) -> Vec<String> {
    let mut out = vec![
        String::new(),
        format!(
            "chaos: seed {}, {:.0} s, {} nodes, timings {}; Services {}",
            r.seed,
            r.duration_s,
            r.nodes,
            r.timings,
            r.services
                .iter()
                .map(|(n, ips)| format!(
                    "{n} {}",
                    ips.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        format!(
            "observed: {} HTTP probes ({} failed), {} ARP/NDP requests / {} replies on the bridge, {} API snapshots ({} failed), {} frames through the wires ({} dropped)",
            r.observed.probes,
            r.observed.probe_failures,
            r.observed.arp_requests,
            r.observed.arp_replies,
            r.observed.snapshots,
            r.observed.snapshot_errors,
            r.observed.wire_frames + r.observed.wire_dropped,
            r.observed.wire_dropped
        ),
        String::new(),
        format!("  {:<24} {:>8}", "fault", "injected"),
    ];
    for (k, n) in &r.faults {
        out.push(format!("  {k:<24} {n:>8}"));
    }
    for e in &r.injection_errors {
        out.push(format!("  not injected: {e}"));
    }
    for n in &r.notes {
        out.push(format!("  note: {n}"));
    }
    out.push(String::new());
    out.push(format!(
        "  {:<24} {:>5} {:>9} {:>9} {:>9}",
        "unavailability by fault", "n", "p50 ms", "p99 ms", "max ms"
    ));
    for u in &r.unavailability {
        out.push(format!(
            "  {:<24} {:>5} {:>9} {:>9} {:>9}",
            u.kind, u.n, u.p50_ms, u.p99_ms, u.max_ms
        ));
    }
    out.push(String::new());
    if r.two_answerers.is_empty() {
        out.push("  two answerers: none seen".into());
    } else {
        out.push(format!(
            "  two answerers: {} interval(s), longest {} ms",
            r.two_answerers.len(),
            r.two_answerers
                .iter()
                .map(|d| d.length_ms)
                .max()
                .unwrap_or(0)
        ));
        for d in &r.two_answerers {
            out.push(format!(
                "    {} {} {} ms over {} round(s), {} (bound {} ms; {})",
                secs(start_ms, d.start_ms),
                d.address,
                d.length_ms,
                d.rounds,
                d.nodes.join("+"),
                d.bound_ms,
                if d.faults.is_empty() {
                    "no fault excuses it".to_string()
                } else {
                    d.faults.join(", ")
                }
            ));
        }
    }
    out.push(String::new());
    if r.answerer_events.is_empty() {
        out.push("  agents' ForeignAnswerer / AddressDefended Events: none".into());
    } else {
        out.push(format!(
            "  {:<24} {:>16} {:>16}",
            "agents' Events by fault", "ForeignAnswerer", "AddressDefended"
        ));
        for (k, f, d) in events_by_kind(&r.answerer_events) {
            out.push(format!("  {k:<24} {f:>16} {d:>16}"));
        }
        // The rows count an Event under every fault around it; the total counts it once.
        let defended = r
            .answerer_events
            .iter()
            .filter(|e| e.event.defended)
            .count();
        out.push(format!(
            "  {:<24} {:>16} {:>16}{}",
            "total (each Event once)",
            r.answerer_events.len() - defended,
            defended,
            if r.answerer_events.len() > 40 {
                " (the first 40 below)"
            } else {
                ""
            }
        ));
        for e in r.answerer_events.iter().take(40) {
            out.push(format!(
                "    {} {} {} {}: {} about {} ({})",
                secs(start_ms, e.event.at_ms),
                e.reason(),
                e.event.service,
                e.event
                    .address
                    .map_or_else(|| "?".to_string(), |a| a.to_string()),
                e.event.reporter,
                e.event.other,
                if e.faults.is_empty() {
                    "no fault allows it".to_string()
                } else {
                    e.faults.join(", ")
                }
            ));
        }
    }
    let mut judged: Vec<&ResourceRow> = r
        .resources
        .iter()
        .filter(|x| x.compared.is_some())
        .collect();
    judged.sort_by_key(|x| std::cmp::Reverse(x.lived_s));
    out.push(String::new());
    out.push(format!(
        "  resources: {} incarnation(s) sampled, {} lived long enough to be judged; the longest-lived \
         (the rule compares the highest of the first third after the 20 s warm-up with the lowest of \
         the last third):",
        r.resources.len(),
        judged.len()
    ));
    out.push(format!(
        "  {:<20} {:>6} {:>10} {:>10} {:>14} {:>14} {:>7} {:>7}",
        "process (pid)",
        "lived",
        "RSS first",
        "RSS last",
        "RSS max 1st/3",
        "RSS min 3rd/3",
        "fd max",
        "fd min"
    ));
    for x in judged.iter().take(8) {
        let c = x.compared.as_ref().expect("judged");
        out.push(format!(
            "  {:<20} {:>5}s {:>7} KiB {:>6} KiB {:>10} KiB {:>10} KiB {:>7} {:>7}",
            format!("{} ({})", x.process, x.pid),
            x.lived_s,
            x.rss_first_kib,
            x.rss_last_kib,
            c.rss_early_max_kib,
            c.rss_late_min_kib,
            c.fds_early_max,
            c.fds_late_min
        ));
    }
    out.push(String::new());
    if r.violations.is_empty() {
        out.push("  violations: none".into());
    } else {
        out.push(format!("  violations: {}", r.violations.len()));
        for v in &r.violations {
            out.push(format!(
                "    {} {} {}: {} [active: {}]",
                secs(start_ms, v.at_ms),
                v.kind,
                v.subject,
                v.detail,
                if v.active.is_empty() {
                    "-".to_string()
                } else {
                    v.active.join(", ")
                }
            ));
        }
    }
    out.push(format!(
        "  replay: ferrolb lab --chaos --seed {} --duration {}s --nodes {}",
        r.seed, r.duration_s as u64, r.nodes
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_counted_under_every_excusing_kind_or_none() {
        let row = |defended: bool, faults: &[&str]| EventRow {
            event: AnswererEvent {
                at_ms: 0,
                defended,
                service: "s".into(),
                address: None,
                reporter: "node1".into(),
                other: "node2".into(),
            },
            faults: faults.iter().map(|s| s.to_string()).collect(),
        };
        let rows = [
            row(true, &["node-cut node2", "node-cut holder node2"]),
            row(false, &["node-cut node2", "agent-stop node1"]),
            row(false, &[]),
        ];
        assert_eq!(
            events_by_kind(&rows),
            vec![
                ("agent-stop".to_string(), 1, 0),
                ("node-cut".to_string(), 1, 1),
                ("none".to_string(), 1, 0),
            ]
        );
        // The table's total counts each Event once (the rows above sum to 3 / 1).
        let r = ChaosReport {
            answerer_events: rows.to_vec(),
            ..ChaosReport::default()
        };
        let t = table(&r, 0);
        let total = t
            .iter()
            .find(|l| l.contains("total (each Event once)"))
            .expect("a total line");
        let n: Vec<&str> = total.split_whitespace().rev().take(2).collect();
        assert_eq!(n, ["1", "2"], "{total}");
    }

    #[test]
    fn unavailability_rows_by_kind_with_none() {
        let ip: IpAddr = "198.51.100.10".parse().unwrap();
        let gap = |len: u64| Gap {
            address: ip,
            start_ms: 1_000,
            end_ms: 1_000 + len,
            holder: None,
            failures: 1,
            open: false,
        };
        let rows = unavailability(&[
            (gap(100), vec![]),
            (gap(900), vec![Kind::AgentKill]),
            (gap(1_100), vec![Kind::AgentKill, Kind::ApiOutage]),
        ]);
        assert_eq!(
            rows,
            vec![
                UnavailRow {
                    kind: "agent-kill".into(),
                    n: 2,
                    p50_ms: 900,
                    p99_ms: 1_100,
                    max_ms: 1_100
                },
                UnavailRow {
                    kind: "api-outage".into(),
                    n: 1,
                    p50_ms: 1_100,
                    p99_ms: 1_100,
                    max_ms: 1_100
                },
                UnavailRow {
                    kind: "none".into(),
                    n: 1,
                    p50_ms: 100,
                    p99_ms: 100,
                    max_ms: 100
                },
            ]
        );
    }
}
