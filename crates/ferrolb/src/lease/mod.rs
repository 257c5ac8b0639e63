//! Client-go style leases: the pure `decide(observed, now) -> action` and the API calls around it.
//!
//! We do not use `kube-leader-election`: it is pinned to kube 4 and writes leases without a
//! resourceVersion precondition, so two nodes can both "acquire". This module follows client-go's
//! `leaderelection` semantics instead:
//!
//! - **Record**: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`,
//!   `leaseTransitions` of a `coordination.k8s.io/v1` Lease; MicroTimes are written with exactly
//!   six fractional digits in UTC (`2026-11-22T07:57:14.123456Z`), as the real server requires.
//! - **Expiry** is judged from the LOCAL instant at which the record was last seen to change,
//!   never by comparing a remote `renewTime` with the local clock, so clock skew between nodes
//!   does not matter ([`decide::Observed`]).
//! - **Writes** carry resourceVersion preconditions (create → 409 AlreadyExists, update → 409
//!   Conflict). A 409 means another writer won: we wait for the watch to show the new record and
//!   never retry blindly.
//! - **Watch-driven**: candidates learn of renewals, releases and deletions from a Lease watch;
//!   expiry is a local timer. There are no polling GETs: in steady state an agent writes one
//!   presence renewal per retry period, whatever the number of addresses (the controller's
//!   leader one renewal of its Lease), and nobody reads.
//! - **Standing**: a holder whose last successful renewal is older than the renew deadline stops
//!   claiming the lease ([`decide::standing`]), distinguishing an unreachable API server
//!   (5xx, 429, timeouts, connection errors → [`Standing::Unreachable`], which the agent's sticky
//!   mode may ride out) from a refusal or another holder (→ [`Standing::NotHolder`], yield at
//!   once).
//! - **Release** on shutdown clears the holder and sets `leaseDurationSeconds: 1` (client-go's
//!   ReleaseOnCancel), so candidates take over as soon as their watch shows it.
//! - **Stop answering, then release**: a release decided while running (a hand-over, a lease no
//!   longer wanted) is reported [`LeaseEvent::Released`] first and written only once the agent
//!   said it stopped answering ([`EngineOptions::stop_before_release`],
//!   [`LeaseSet::released_applied`]); at shutdown the agent stops answering everything before
//!   the engine releases anything.
//!
//! **Attached address Leases** ([`attach`], issue 10): the agent's engine writes an address
//! Lease only when it changes hands (acquisition, hand-over, release; plus a refresh every 12 h
//! for previous-format readers). It carries `ferrolb.io/attached-to: <presence Lease>` and
//! `leaseDurationSeconds: 86400`, and is valid while its holder's presence Lease is; only
//! presence Leases are renewed. A node takes over the addresses of a node whose presence Lease
//! it has seen unrenewed for its duration after one preconditioned *fence* (release) of that
//! presence Lease. The rules have unit tests and a property-based simulation (watch delays,
//! 409s, partitions, crashes, pauses, clock drift, a previous-format agent in the mix); the
//! engine's pure core is unit-tested with them (`engine/tests.rs`). A graceful stop releases only
//! the presence Lease — one write frees every attached address — when every other candidate's
//! presence Lease says its agent reads attached Leases ([`attach::ANN_READS_ATTACHED`]);
//! otherwise each address Lease is released first. The controller's
//! [`LeaderElector`] keeps the client-go rules above (one renewed Lease).
//!
//! Two drivers share one engine ([`engine`]):
//! - [`LeaderElector`]: one lease (the controller's HA), watched by `fieldSelector
//!   metadata.name=NAME`, with `is_leader()` and a `watch::Receiver<bool>`;
//! - [`LeaseSet`]: the agent's many leases, ONE namespace-wide label-selected watch
//!   ([`MANAGED_BY_SELECTOR`]); the agent tells it the desired set, it reports per-lease
//!   [`LeaseEvent`]s.
//!
//! ## Balance: load-bounded rendezvous ranks
//! Every candidate orders the eligible nodes of a lease by rendezvous (highest-random-weight)
//! hashing of (lease name, node) ([`rendezvous_rank`], [`rendezvous_score`]). Plain rendezvous
//! only balances statistically, so [`balanced_ranks`] bounds the load: going through the leases
//! in name order, each goes to the first node in its order still below its fair share (rounded
//! up). Every node that knows the same desired set computes the same assignment. When a lease is
//! free (absent or released) a candidate waits `min(rank, MAX_RANK_WAIT) × rank_step` before
//! trying, so the preferred node takes it uncontested (no thundering herd, no 409 storm). When
//! taking over from an expired holder, that holder is left out of the ranking (it is presumably
//! dead), so the next node in its rendezvous order goes first.
//!
//! A rank wait is 100 ms; a burst (a node's thousands of addresses freed at once, a cluster's
//! Services created at once) keeps the first-ranked node's write queue busy for seconds. So a
//! lower-ranked node's takeover also waits while the node ranked first ([`rendezvous_first`]
//! of the same order) is seen taking other address Leases — within the last two retry periods —
//! and at most three lease durations past its rank wait (the first node may be busy and still
//! not take this one, e.g. while its view of the candidates differs). Only an address the first
//! node leaves is taken by the next; no write races the first node's (a 409 for one of the two).
//!
//! ## Events for the agent
//! [`LeaseEvent::Acquired`] (announce), [`LeaseEvent::Lost`] (another holder / 409 / refusal:
//! stop at once), [`LeaseEvent::Unreachable`] (renewals failed because the API server is
//! unreachable and the renew deadline passed: sticky mode keeps announcing until another node's
//! gratuitous ARP/NA is seen, strict mode stops; followed by `Acquired` when a renewal gets through
//! again, or `Lost`), [`LeaseEvent::Released`] (we released it: no longer wanted, hand-over, or
//! shutdown). Presence leases never produce events.
//!
//! **Rebalancing is gentle and optional** ([`EngineOptions::rebalance_after`], agent default
//! `max(6 × lease duration, 30 s)`, `None` = never). Stability comes first: a live holder keeps a
//! lease for at least that long, and then hands it over (releases it; the preferred node takes it
//! at once) only if the load-bounded assignment prefers another node AND that node shows signs of
//! life. Each agent keeps a *presence lease* (`ferrolb-node-…`, label `ferrolb.io/role=presence`,
//! one write per retry period) so a node that holds nothing — one that just joined or restarted
//! during a rolling update — is seen as alive. At most one hand-over per node per retry period,
//! and none while things are unsettled (an API outage, writes queued for a slot, a lease duration
//! after an outage ended, a fence or a takeover from an expired holder);
//! a hand-over the preferred node does not take is not retried for 10 × the hold time. Without
//! this, the node that starts first (or restarts last) would keep an unfair share forever, which
//! is how first-come elections (kube-vip #877) end up with most VIPs on one node. A hand-over costs
//! one watch round trip without an announcer plus the new holder's gratuitous ARP/NA.
//!
//! ## Garbage collection
//! A [`LeaseSet`] releases leases it no longer wants (holder cleared). A lease in its watch (this
//! includes presence leases of nodes that went away) that
//! nobody holds and this node does not want is deleted (with a resourceVersion precondition) once
//! it has been free for [`engine::EngineOptions::gc_after`]; a node that still wants it will have
//! taken it long before.
//!
//! ## Default timings
//! Agent: presence `lease_duration 1s`, `renew_deadline 600ms`, `retry_period 200ms`,
//! `rank_step 100ms`. Crash failover: the dead node's presence Lease seen unrenewed for 1 s, one
//! fence, one acquisition per address (rank 0 at once). Graceful failover: one watch round trip
//! (+ rank wait). The price is one presence write per node per 200 ms (5 writes/s per node),
//! whatever the number of addresses, zero reads. The renew deadline (600 ms) leaves 400 ms (two
//! retry periods) between the moment a holder that cannot renew stops answering and the
//! earliest moment another node may fence it; the margins (API latency, clock rate, pauses) are
//! discussed in the README ("Lease timings").

pub mod attach;
pub mod client;
pub mod decide;
pub mod elector;
pub mod engine;

pub use client::{classify, micro_now, LeaseWriter, WriteError};
pub use decide::{
    decide, spec_for, standing, validate_timings, Action, Intent, LeaseConfig, Observed, Record,
    Standing, WriteFailure,
};
pub use elector::LeaderElector;
pub use engine::{
    EngineOptions, EngineStats, LeaseEvent, LeaseMeta, LeaseSet, LeaseWant, ShutdownReport,
    WatchScope,
};

use sha2::{Digest, Sha256};

/// Label every ferrolb-managed Lease carries (and the agent's watch selects on).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "ferrolb";
/// Label selector of the agent's Lease watch.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=ferrolb";
/// Ranks beyond this wait no longer (bounded worst-case takeover delay in big clusters).
pub const MAX_RANK_WAIT: usize = 8;

/// Collision-free lease name for a key (the agent's canonical address set):
/// `ferrolb-` + the first 20 hex digits (80 bits) of sha256(key).
pub fn lease_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut name = String::with_capacity(8 + 20);
    name.push_str("ferrolb-");
    for b in digest.iter().take(10) {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Rendezvous score of `node` for `key` (higher = more preferred). Stable across processes and
/// versions: the first 8 bytes of sha256(key NUL node), big endian.
pub fn rendezvous_score(key: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Separates preference tiers in a candidate list: `["a", TIER_BREAK, "b", "c"]` prefers `a`
/// and keeps `b` and `c` as fallbacks. Never a node name (node names are not empty). A list
/// without it is one tier, which is what every list was before preferred nodes
/// (`L2AnnouncementPolicy.spec.preferredNodes`); the agent's eligibility builds tiered lists
/// with [`tiered_candidates`], and every rank below reads them with [`candidate_tiers`].
pub const TIER_BREAK: &str = "";

/// A candidate list from tiers, most preferred first: empty tiers dropped, each tier sorted by
/// name and deduplicated, tiers joined by [`TIER_BREAK`].
pub fn tiered_candidates(tiers: impl IntoIterator<Item = Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for mut tier in tiers {
        tier.retain(|n| n != TIER_BREAK);
        tier.sort();
        tier.dedup();
        if tier.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(TIER_BREAK.to_string());
        }
        out.extend(tier);
    }
    out
}

/// The nodes of a candidate list with their tier (0 = most preferred), in list order, each node
/// once (its first tier counts). Leading, trailing and repeated breaks are harmless (a list with
/// some nodes filtered out stays valid).
pub fn candidate_tiers(list: &[String]) -> Vec<(usize, &str)> {
    let mut seen = std::collections::HashSet::new();
    let mut tier = 0;
    let mut out = Vec::with_capacity(list.len());
    for n in list {
        if n == TIER_BREAK {
            tier += 1;
        } else if seen.insert(n.as_str()) {
            out.push((tier, n.as_str()));
        }
    }
    out
}

/// The order of a node in a lease's candidate list: lower tier first, then higher rendezvous
/// score, then (ties, astronomically unlikely) the greater name. The one rule every rank uses.
fn order_key<'a>(
    key: &str,
    tier: usize,
    node: &'a str,
) -> (usize, std::cmp::Reverse<(u64, &'a str)>) {
    (tier, std::cmp::Reverse((rendezvous_score(key, node), node)))
}

/// Rank of `me` among `nodes` for `key`: 0 = most preferred. Nodes of a more preferred tier
/// ([`TIER_BREAK`]) come first; within a tier, rendezvous order. Duplicates in `nodes` are
/// ignored; if `me` is not in `nodes` it ranks after all of them.
pub fn rendezvous_rank(key: &str, me: &str, nodes: &[String]) -> usize {
    let tiers = candidate_tiers(nodes);
    let Some(my_tier) = tiers.iter().find(|(_, n)| *n == me).map(|(t, _)| *t) else {
        // `me` is not a candidate: after everyone.
        return tiers.len();
    };
    let my = order_key(key, my_tier, me);
    tiers
        .iter()
        .filter(|(t, n)| *n != me && order_key(key, *t, n) < my)
        .count()
}

/// The node of `nodes` ranked first for `key` (rank 0 by [`rendezvous_rank`]'s rule).
pub fn rendezvous_first<'a>(key: &str, nodes: &'a [String]) -> Option<&'a str> {
    candidate_tiers(nodes)
        .into_iter()
        .min_by_key(|(t, n)| order_key(key, *t, n))
        .map(|(_, n)| n)
}

/// Parse a duration flag: `15s`, `500ms`, `1.5s`, `2m`, `1h`, compounds such as `1m30s`, the
/// units `ns`, `us`/`µs`, `ms`, `s`/`sec`/`secs`, `m`/`min`, `h`, or a bare number of seconds
/// (`3`, `1.5`). The result must not exceed 10^9 seconds.
/// For clap: `#[arg(long, value_parser = ferrolb::lease::parse_duration)]`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    const MAX_SECS: f64 = 1e9;
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let is_num = |c: char| c.is_ascii_digit() || c == '.';
    let mut total = 0.0_f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !is_num(c)).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number (e.g. 15s, 500ms, 2m, 1m30s)")
        })?;
        let unit_len = tail.find(is_num).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit.trim() {
            // A bare number of seconds is only accepted on its own, not inside a compound.
            "" if rest.len() == t.len() => 1.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit after {num:?} (ms, s, m, h)"
                ))
            }
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        let part = value * scale;
        if !part.is_finite() || !(0.0..=MAX_SECS).contains(&part) {
            return Err(format!("invalid duration {s:?}: out of range"));
        }
        total += part;
        rest = tail;
    }
    if total > MAX_SECS {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Label marking a node's presence lease (value [`ROLE_PRESENCE`]).
pub const LABEL_ROLE: &str = "ferrolb.io/role";
/// Value of [`LABEL_ROLE`] on presence leases.
pub const ROLE_PRESENCE: &str = "presence";
/// Annotation: the node a presence lease belongs to.
pub const ANN_NODE: &str = "ferrolb.io/node";

/// Name of a node's presence lease: `ferrolb-node-` + 16 hex digits of sha256(node).
pub fn presence_name(node: &str) -> String {
    let digest = Sha256::digest(node.as_bytes());
    let mut name = String::from("ferrolb-node-");
    for b in digest.iter().take(8) {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Label: how many Services a lease serves.
pub const LABEL_SERVICE_COUNT: &str = "ferrolb.io/service-count";
/// Label: namespace of the Service a lease serves (only when it serves exactly one).
pub const LABEL_SERVICE_NAMESPACE: &str = "ferrolb.io/service-namespace";
/// Label: name of the Service a lease serves (only when it serves exactly one).
pub const LABEL_SERVICE_NAME: &str = "ferrolb.io/service-name";
/// Annotation: every `namespace/name` a lease serves, comma-separated, sorted.
pub const ANN_SERVICES: &str = "ferrolb.io/services";
/// Annotation: the addresses a lease stands for (the lease key), as given.
pub const ANN_ADDRESSES: &str = "ferrolb.io/addresses";

/// Labels or annotations as `(key, value)` pairs. Keys are nearly always our own constants:
/// borrowed, so an agent does not keep five copies of them per address.
pub type Pairs = Vec<(std::borrow::Cow<'static, str>, String)>;

/// `pairs` as a map (as an object's labels or annotations; a key given twice: the last wins).
pub fn pairs_map(pairs: Pairs) -> std::collections::BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v))
        .collect()
}

/// Labels and annotations describing what a lease serves: `services` as `namespace/name`,
/// `key` = the canonical address set. Label values stay valid (≤ 63 chars); the full lists go
/// into annotations. Returned as `(key, value)` pairs (see [`LeaseWant`]).
pub fn describe(key: &str, services: &[String]) -> (Pairs, Pairs) {
    let mut svcs: Vec<&str> = services.iter().map(String::as_str).collect();
    svcs.sort_unstable();
    svcs.dedup();
    let mut labels: Pairs = vec![(LABEL_SERVICE_COUNT.into(), svcs.len().to_string())];
    if let [one] = svcs.as_slice() {
        if let Some((ns, name)) = one.split_once('/') {
            // Namespace and Service names are DNS labels (≤ 63): valid label values as they are.
            if is_label_value(ns) && is_label_value(name) {
                labels.push((LABEL_SERVICE_NAMESPACE.into(), ns.to_string()));
                labels.push((LABEL_SERVICE_NAME.into(), name.to_string()));
            }
        }
    }
    let annotations = vec![
        (ANN_SERVICES.into(), svcs.join(",")),
        (ANN_ADDRESSES.into(), key.to_string()),
    ];
    (labels, annotations)
}

/// Is `v` a valid Kubernetes label value?
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

/// Load-bounded rendezvous ranks of `me` for a set of leases (name → eligible nodes).
///
/// Plain rendezvous hashing spreads addresses only statistically (with 100 addresses on 3 nodes
/// the busiest node often gets 40+). Here every lease, in name order, goes to the first node in
/// its rendezvous order whose load is still below its fair share (rounded up; the fair share of a
/// node is the sum of `1 / candidates` over the leases it is eligible for); the rest keep their
/// rendezvous order. Every node that knows the same set computes the same assignment, so the
/// preferred node takes each free lease uncontested and max ÷ mean stays ≈ 1 (≤ ceil(mean) ÷
/// mean). Nodes that know different sets may disagree; that costs a 409, never correctness.
/// With preference tiers ([`TIER_BREAK`]) a lease goes to a node of its most preferred tier
/// (fair shares count only those nodes), and the other tiers follow in their own order: the
/// balance applies within the preferred nodes, the rest are fallbacks.
/// A lease whose candidate list lacks `me` ranks `me` last (the number of candidates); an empty
/// candidate list ranks everyone 0 (no ordering).
pub fn balanced_ranks<C: AsRef<Vec<String>>>(
    me: &str,
    leases: &std::collections::BTreeMap<String, C>,
) -> std::collections::BTreeMap<String, usize> {
    let assigned = balanced_assignment(
        me,
        leases
            .iter()
            .map(|(k, c)| (k.as_str(), c.as_ref().as_slice())),
    );
    leases
        .keys()
        .cloned()
        .zip(assigned.into_iter().map(|(rank, _)| rank))
        .collect()
}

/// [`balanced_ranks`] plus the preferred node (rank 0) of every lease with candidates: one
/// `(rank, preferred)` per lease of `leases`, in their order, which must be name order (the
/// order in which every node goes through them, so all agree). Two passes over `leases`
/// instead of a kept copy of every lease's candidate order: an agent with 10k leases runs this
/// on every change of its desired set, and its copies were the largest part of its peak.
pub fn balanced_assignment<'a>(
    me: &str,
    leases: impl Iterator<Item = (&'a str, &'a [String])> + Clone,
) -> Vec<(usize, Option<&'a str>)> {
    use std::collections::HashMap;
    // The top tier of a lease's candidates (the only nodes the balance chooses from).
    fn top_tier(tiers: &[(usize, &str)]) -> Option<usize> {
        tiers.iter().map(|(t, _)| *t).min()
    }
    let mut share: HashMap<&str, f64> = HashMap::new();
    debug_assert!(
        leases
            .clone()
            .zip(leases.clone().skip(1))
            .all(|((a, _), (b, _))| a < b),
        "balanced_assignment needs the leases in name order"
    );
    for (_, cands) in leases.clone() {
        let tiers = candidate_tiers(cands);
        let Some(top) = top_tier(&tiers) else {
            continue;
        };
        let first = tiers.iter().filter(|(t, _)| *t == top).count();
        let w = 1.0 / first as f64;
        for (_, n) in tiers.iter().filter(|(t, _)| *t == top) {
            *share.entry(n).or_default() += w;
        }
    }
    let cap: HashMap<&str, usize> = share
        .iter()
        .map(|(n, s)| (*n, (s - 1e-9).ceil().max(1.0) as usize))
        .collect();
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (name, cands) in leases {
        // Every candidate in order, and how many of them are in the most preferred tier.
        let mut order = candidate_tiers(cands);
        let Some(top) = top_tier(&order) else {
            out.push((0, None));
            continue;
        };
        let first = order.iter().filter(|(t, _)| *t == top).count();
        order.sort_by_cached_key(|(t, n)| order_key(name, *t, n));
        let chosen = order[..first]
            .iter()
            .map(|(_, n)| *n)
            .find(|n| load.get(n).copied().unwrap_or(0) < cap.get(n).copied().unwrap_or(1))
            .unwrap_or(order[0].1);
        *load.entry(chosen).or_default() += 1;
        let rank = if chosen == me {
            0
        } else {
            match order
                .iter()
                .filter(|(_, n)| *n != chosen)
                .position(|(_, n)| *n == me)
            {
                Some(p) => p + 1,
                None => order.len(),
            }
        };
        out.push((rank, Some(chosen)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lease_names_are_hashed_and_distinct() {
        // Cilium's `ns-name` concatenation collides for these; hashes do not.
        let a = lease_name("foo/bar-baz");
        let b = lease_name("foo-bar/baz");
        assert_ne!(a, b);
        assert!(a.starts_with("ferrolb-"));
        assert_eq!(a.len(), 28);
        assert!(a[8..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, lease_name("foo/bar-baz"), "deterministic");
        let names: std::collections::BTreeSet<_> = (0..10_000)
            .map(|i| lease_name(&format!("198.51.100.{i}")))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn ranks_are_a_permutation() {
        let nodes: Vec<String> = (0..7).map(|i| format!("node-{i}")).collect();
        for key in ["a", "b", "198.51.100.7"] {
            let mut ranks: Vec<usize> = nodes
                .iter()
                .map(|n| rendezvous_rank(key, n, &nodes))
                .collect();
            ranks.sort();
            assert_eq!(ranks, (0..7).collect::<Vec<_>>(), "{key}");
        }
        assert_eq!(rendezvous_rank("a", "stranger", &nodes), 7);
        let dup = vec!["x".to_string(), "x".to_string(), "y".to_string()];
        assert!(rendezvous_rank("k", "y", &dup) <= 1);
    }

    #[test]
    fn the_first_is_the_node_of_rank_zero() {
        let mut nodes: Vec<String> = (0..5).map(|i| format!("node-{i}")).collect();
        for key in ["a", "b", "198.51.100.7", "2001:db8::9"] {
            let first = rendezvous_first(key, &nodes).unwrap().to_string();
            assert_eq!(rendezvous_rank(key, &first, &nodes), 0, "{key}");
        }
        // A more preferred tier goes first whatever the scores say.
        nodes.insert(0, "z".into());
        nodes.insert(1, TIER_BREAK.into());
        assert_eq!(rendezvous_first("a", &nodes), Some("z"));
        assert_eq!(rendezvous_first("a", &[]), None);
    }

    #[test]
    fn rank_zero_spreads_evenly() {
        let nodes: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
        let mut count = [0usize; 3];
        for i in 0..3000 {
            let key = lease_name(&format!("198.51.100.{i}"));
            let first = nodes
                .iter()
                .position(|n| rendezvous_rank(&key, n, &nodes) == 0)
                .unwrap();
            count[first] += 1;
        }
        for c in count {
            assert!((900..=1100).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn removing_a_node_only_moves_its_keys() {
        let nodes: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
        let fewer: Vec<String> = nodes[..3].to_vec();
        for i in 0..500 {
            let key = format!("k{i}");
            let winner = |set: &[String]| {
                set.iter()
                    .find(|n| rendezvous_rank(&key, n, set) == 0)
                    .cloned()
                    .unwrap()
            };
            let w = winner(&nodes);
            if w != "n3" {
                assert_eq!(winner(&fewer), w);
            }
        }
    }

    #[test]
    fn balanced_ranks_bound_the_load() {
        use std::collections::BTreeMap;
        for count in [10usize, 100, 200, 1000] {
            for n_nodes in [2usize, 3, 5] {
                let nodes: Vec<String> = (0..n_nodes).map(|i| format!("node-{i}")).collect();
                let leases: BTreeMap<String, Vec<String>> = (0..count)
                    .map(|i| (lease_name(&format!("198.51.100.{i}")), nodes.clone()))
                    .collect();
                let per_node: Vec<BTreeMap<String, usize>> =
                    nodes.iter().map(|n| balanced_ranks(n, &leases)).collect();
                let mut load = vec![0usize; n_nodes];
                for name in leases.keys() {
                    // ranks form a permutation: exactly one node ranks 0 for every lease
                    let mut ranks: Vec<usize> = per_node.iter().map(|r| r[name]).collect();
                    let first = ranks.iter().position(|r| *r == 0).unwrap();
                    load[first] += 1;
                    ranks.sort();
                    assert_eq!(ranks, (0..n_nodes).collect::<Vec<_>>(), "{name}");
                }
                let mean = count as f64 / n_nodes as f64;
                let max = *load.iter().max().unwrap() as f64;
                assert!(max <= mean.ceil(), "{count}/{n_nodes}: {load:?}");
            }
        }
    }

    #[test]
    fn balanced_ranks_with_uneven_eligibility() {
        use std::collections::BTreeMap;
        // 60 leases for all of a,b,c; 60 more only for a,b: c should get ~20, a and b ~50.
        let all: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = all[..2].to_vec();
        let mut leases = BTreeMap::new();
        for i in 0..120 {
            let c = if i < 60 { all.clone() } else { two.clone() };
            leases.insert(lease_name(&format!("k{i}")), c);
        }
        let mut load = BTreeMap::new();
        for me in &all {
            let r = balanced_ranks(me, &leases);
            *load.entry(me.clone()).or_insert(0) += r.values().filter(|v| **v == 0).count();
        }
        assert_eq!(load.values().sum::<usize>(), 120, "{load:?}");
        assert!(
            load["c"] <= 20 && load["a"] <= 50 && load["b"] <= 50,
            "{load:?}"
        );
        // Not a candidate: last.
        let r = balanced_ranks("zz", &leases);
        assert!(r.values().all(|v| *v >= 2));
    }

    #[test]
    fn tiers_come_before_rendezvous_order() {
        let nodes: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        for i in 0..200 {
            let key = lease_name(&format!("198.51.100.{i}"));
            // Whatever the plain order, the preferred tier ranks first.
            let list = tiered_candidates([
                vec!["n3".to_string()],
                vec!["n1".to_string(), "n4".to_string()],
                vec!["n0".to_string(), "n2".to_string()],
            ]);
            assert_eq!(rendezvous_rank(&key, "n3", &list), 0);
            let mut mid: Vec<usize> = ["n1", "n4"]
                .iter()
                .map(|n| rendezvous_rank(&key, n, &list))
                .collect();
            mid.sort();
            assert_eq!(mid, [1, 2]);
            // Within a tier, the plain rendezvous order of that tier decides.
            let plain = vec!["n1".to_string(), "n4".to_string()];
            assert_eq!(
                rendezvous_rank(&key, "n1", &list) - 1,
                rendezvous_rank(&key, "n1", &plain)
            );
            let mut last: Vec<usize> = ["n0", "n2"]
                .iter()
                .map(|n| rendezvous_rank(&key, n, &list))
                .collect();
            last.sort();
            assert_eq!(last, [3, 4]);
            assert_eq!(rendezvous_rank(&key, "stranger", &list), 5);
            // Without breaks: exactly the plain order.
            for n in &nodes {
                let sorted = tiered_candidates([nodes.clone()]);
                assert_eq!(
                    rendezvous_rank(&key, n, &sorted),
                    rendezvous_rank(&key, n, &nodes)
                );
            }
        }
        // Filtering a node out (the engine leaves out a dead holder) keeps the tiers.
        let list = tiered_candidates([
            vec!["a".to_string()],
            vec!["b".to_string(), "c".to_string()],
        ]);
        let without_a: Vec<String> = list.iter().filter(|n| *n != "a").cloned().collect();
        let mut r: Vec<usize> = ["b", "c"]
            .iter()
            .map(|n| rendezvous_rank("k", n, &without_a))
            .collect();
        r.sort();
        assert_eq!(r, [0, 1]);
        assert_eq!(tiered_candidates([vec![], vec!["x".to_string()]]), ["x"]);
    }

    #[test]
    fn balanced_assignment_balances_within_the_preferred_tier() {
        use std::collections::BTreeMap;
        // 90 leases: a and b preferred, c a fallback. c never gets one while a and b are
        // candidates, and a/b split them evenly.
        let list = tiered_candidates([
            vec!["a".to_string(), "b".to_string()],
            vec!["c".to_string()],
        ]);
        let leases: BTreeMap<String, Vec<String>> = (0..90)
            .map(|i| (lease_name(&format!("k{i}")), list.clone()))
            .collect();
        let mut load = BTreeMap::new();
        for me in ["a", "b", "c"] {
            let r = balanced_ranks(me, &leases);
            load.insert(me, r.values().filter(|v| **v == 0).count());
            if me == "c" {
                assert!(r.values().all(|v| *v == 2), "the fallback ranks last");
            }
        }
        assert_eq!(load, BTreeMap::from([("a", 45), ("b", 45), ("c", 0)]));
        // Every node computes the same preferred node.
        let all = || leases.iter().map(|(k, c)| (k.as_str(), c.as_slice()));
        let a = balanced_assignment("a", all());
        let c = balanced_assignment("c", all());
        assert_eq!(a.len(), leases.len());
        for ((_, pref), (_, pref_c)) in a.iter().zip(&c) {
            assert_eq!(pref_c, pref);
            assert!(matches!(pref, Some("a" | "b")), "{pref:?}");
        }
        // Without a (it died: the engine filters it out), b is preferred and c follows.
        let no_a: Vec<String> = list.iter().filter(|n| *n != "a").cloned().collect();
        let leases: BTreeMap<String, Vec<String>> =
            leases.keys().map(|k| (k.clone(), no_a.clone())).collect();
        assert!(balanced_ranks("b", &leases).values().all(|v| *v == 0));
        assert!(balanced_ranks("c", &leases).values().all(|v| *v == 1));
    }

    #[test]
    fn describe_keeps_labels_valid() {
        let map = |v: Pairs| -> std::collections::BTreeMap<String, String> {
            let n = v.len();
            let m = pairs_map(v);
            assert_eq!(m.len(), n, "a key given twice");
            m
        };
        let (l, a) = describe("198.51.100.7", &["demo/web".into(), "demo/web".into()]);
        let (l, a) = (map(l), map(a));
        assert_eq!(l[LABEL_SERVICE_COUNT], "1");
        assert_eq!(l[LABEL_SERVICE_NAME], "web");
        assert_eq!(l[LABEL_SERVICE_NAMESPACE], "demo");
        assert_eq!(a[ANN_SERVICES], "demo/web");
        let many: Vec<String> = (0..40).map(|i| format!("team-{i}/dns-{i}")).collect();
        let (l, a) = describe("198.51.100.8", &many);
        let (l, a) = (map(l), map(a));
        assert_eq!(l[LABEL_SERVICE_COUNT], "40");
        assert!(!l.contains_key(LABEL_SERVICE_NAME));
        assert!(l.values().all(|v| is_label_value(v)));
        assert_eq!(a[ANN_SERVICES].split(',').count(), 40);
        assert!(!is_label_value(&"x".repeat(64)));
        assert!(!is_label_value("a/b"));
        assert!(is_label_value("a.b-c_d"));
    }

    #[test]
    fn a_serves_meta_writes_what_describe_says() {
        // Tuples sort differently from "ns/name" strings ('-' < '/'): the written order is the
        // strings', as `describe` gives it.
        let services: [(&str, &str); 3] = [("a", "x"), ("a-b", "x"), ("a", "x")];
        let meta = LeaseMeta::Serves {
            key: "198.51.100.7,2001:db8::7".into(),
            services: services
                .iter()
                .map(|(ns, n)| (Arc::from(*ns), Arc::from(*n)))
                .collect(),
        };
        let strings: Vec<String> = services.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        let (labels, annotations) = meta.pairs();
        assert_eq!(
            (labels, annotations.clone()),
            describe("198.51.100.7,2001:db8::7", &strings)
        );
        assert_eq!(pairs_map(annotations)[ANN_SERVICES], "a-b/x,a/x");
        let given = LeaseMeta::Pairs {
            labels: vec![(LABEL_ROLE.into(), ROLE_PRESENCE.into())],
            annotations: Vec::new(),
        };
        assert_eq!(
            given.pairs(),
            (vec![(LABEL_ROLE.into(), ROLE_PRESENCE.into())], Vec::new())
        );
    }

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2 min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        for bad in [
            "",
            "s",
            "5x",
            "-1s",
            "1e400s",
            "abc",
            "ten seconds",
            "1e308h",
            "1m30",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
