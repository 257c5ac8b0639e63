//! What each `L2Announcement` should say, and whether a write is needed: pure.
//!
//! - [`wants`]: the held groups (from [`Holdings`]) → one [`Want`] per Service this node
//!   announces (Services sharing an address each get their own object).
//! - [`Tracker`]: remembers the last wants handed to the writer, so only changed ones (a
//!   takeover, other interfaces or addresses) are queued and Services no longer announced here are
//!   cancelled. Renewals change nothing here: they produce no lease event.
//! - [`plan`]: a want against the object as cached → `None` (it already says so: after a
//!   restart, a relist, or a write of ours) or the [`Write`] to send. The object is rewritten
//!   only when the node, the addresses or the interfaces differ; `since`, the transitions and
//!   the last failover are kept while the node stays the same.
//! - [`Queue`]: the writer's queue, coalesced per Service: a newer want replaces a queued one in
//!   place, a cancelled one is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::eligibility::{Group, ServiceRef};
use super::holdings::{Hold, Holdings};
use crate::api::{L2Announcement, L2AnnouncementSpec, L2AnnouncementStatus, L2Failover};
use crate::lease::engine::Takeover;

/// How this node came to hold one group's lease (kept by the agent per group key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// Wall-clock time of the acquisition (RFC 3339, milliseconds).
    pub at: String,
    /// The takeover, as the lease engine saw it (`None`: we re-confirmed our own record, e.g.
    /// after a restart).
    pub failover: Option<L2Failover>,
    /// `leaseTransitions` our takeover wrote.
    pub transitions: Option<i32>,
}

impl Acquired {
    /// From the engine's takeover note, `duration_ms` after it started (measured by the caller
    /// on its monotonic clock).
    pub fn new(at: jiff::Timestamp, takeover: Option<&Takeover>, duration_ms: i64) -> Acquired {
        Acquired {
            at: at.round(jiff::Unit::Millisecond).unwrap_or(at).to_string(),
            failover: takeover.map(|t| L2Failover {
                kind: t.kind.as_str().to_string(),
                from: t.from.clone(),
                duration_milliseconds: Some(duration_ms.max(0)),
            }),
            transitions: takeover.map(|t| t.transitions),
        }
    }
}

/// What one Service's object should say, as far as this node is concerned: the group it is
/// announced in (addresses, interfaces, lease — shared with the holdings, so a want costs no
/// allocation of its own: the agent keeps one per Service it announces, twice while queued) and
/// how that group's lease was acquired.
#[derive(Clone, Debug)]
pub struct Want {
    pub service: ServiceRef,
    pub group: Arc<Group>,
    pub acquired: Option<Arc<Acquired>>,
}

impl Want {
    /// The addresses, as the object lists them.
    pub fn addresses(&self) -> Vec<String> {
        self.group
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The interfaces, as the object lists them.
    pub fn interfaces(&self) -> Vec<String> {
        self.group.interfaces.iter().cloned().collect()
    }

    /// The group's lease.
    pub fn lease(&self) -> String {
        crate::lease::lease_name(&self.group.key)
    }
}

/// Two wants are the same when the object would say the same: not when the group differs
/// elsewhere (its candidates, the other Services sharing its address). The group key, and so
/// the lease name, is derived from the addresses.
impl PartialEq for Want {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service
            && self.acquired == other.acquired
            && (Arc::ptr_eq(&self.group, &other.group)
                || (self.group.addresses == other.group.addresses
                    && self.group.interfaces == other.group.interfaces))
    }
}

impl Eq for Want {}

/// One [`Want`] per Service of every group this node holds (or keeps sticky).
pub fn wants(
    holdings: &Holdings,
    acquired: &HashMap<String, Arc<Acquired>>,
) -> BTreeMap<ServiceRef, Want> {
    let mut out = BTreeMap::new();
    for (key, g) in holdings.desired_groups() {
        if !matches!(holdings.hold(key), Some(Hold::Held | Hold::Sticky)) {
            continue;
        }
        for s in &g.services {
            out.insert(
                s.clone(),
                Want {
                    service: s.clone(),
                    group: g.clone(),
                    acquired: acquired.get(&**key).cloned(),
                },
            );
        }
    }
    out
}

/// The wants last handed to the writer.
#[derive(Debug, Default)]
pub struct Tracker {
    last: BTreeMap<ServiceRef, Want>,
}

/// What changed since the last call of [`Tracker::update`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New or different wants: queue them.
    pub changed: Vec<Want>,
    /// Services this node no longer announces: drop what is queued for them.
    pub gone: Vec<ServiceRef>,
}

impl Tracker {
    pub fn update(&mut self, now: BTreeMap<ServiceRef, Want>) -> Changes {
        let mut c = Changes::default();
        for (s, w) in &now {
            if self.last.get(s) != Some(w) {
                c.changed.push(w.clone());
            }
        }
        for s in self.last.keys() {
            if !now.contains_key(s) {
                c.gone.push(s.clone());
            }
        }
        self.last = now;
        c
    }
}

/// A write the writer should send.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// No object yet: create it (status included; a server with the status subresource drops
    /// it on create, so the writer follows with a status write when the answer lacks it).
    Create(L2Announcement),
    /// Replace the status of the cached object (its resourceVersion is the precondition).
    Status(L2Announcement),
}

/// What the object should say now, given the cached one (`None` = no write needed).
/// `uid` is the Service's (for the owner reference; `None` leaves it out).
pub fn plan(
    node: &str,
    current: Option<&L2Announcement>,
    want: &Want,
    uid: Option<&str>,
) -> Option<Write> {
    let cur = current.and_then(|c| c.status.clone()).unwrap_or_default();
    let same_node = cur.node.as_deref() == Some(node);
    let (addresses, interfaces) = (want.addresses(), want.interfaces());
    let addresses_text = Some(addresses.join(","));
    let interfaces_text = Some(interfaces.join(","));
    if same_node
        && cur.addresses == addresses
        && cur.interfaces == interfaces
        && cur.addresses_text == addresses_text
        && cur.interfaces_text == interfaces_text
    {
        return None;
    }
    let status = if same_node {
        L2AnnouncementStatus {
            addresses,
            interfaces,
            addresses_text,
            interfaces_text,
            lease: Some(want.lease()),
            ..cur
        }
    } else {
        let acquired = want.acquired.as_deref();
        let failover = acquired.and_then(|a| a.failover.clone()).map(|mut f| {
            if f.from.is_none() {
                f.from = cur.node.clone();
            }
            f
        });
        L2AnnouncementStatus {
            addresses,
            node: Some(node.to_string()),
            interfaces,
            addresses_text,
            interfaces_text,
            since: acquired.map(|a| a.at.clone()),
            lease: Some(want.lease()),
            lease_transitions: acquired
                .and_then(|a| a.transitions)
                .or(cur.lease_transitions),
            last_failover: failover.or(cur.last_failover),
        }
    };
    match current {
        Some(c) => {
            let mut o = c.clone();
            o.metadata.managed_fields = None;
            o.status = Some(status);
            Some(Write::Status(o))
        }
        None => {
            let owner = uid.map(|uid| OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: want.service.name.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: None,
            });
            let mut o = L2Announcement::new(&want.service.name, L2AnnouncementSpec {});
            o.metadata = ObjectMeta {
                name: Some(want.service.name.to_string()),
                namespace: Some(want.service.namespace.to_string()),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            };
            o.status = Some(status);
            Some(Write::Create(o))
        }
    }
}

/// The object of a Service this node stopped announcing, if it still names this node: its
/// resourceVersion, the precondition of its deletion (`None`: nothing to do — no object, or
/// another node's, which that node keeps up to date).
///
/// Why deleted, not rewritten to say "nobody": an object exists exactly while a node announces
/// the Service (as MetalLB's ServiceL2Status, which its speakers delete when they stop
/// announcing), so `kubectl get l2a -A` lists what is answered on the LAN and nothing else, and no
/// reader has to tell a stale node name from a live one. Why a Service is not announced is
/// `ferrolb status`'s and `ferrolb doctor`'s answer (pending reasons, policies, Leases).
pub fn plan_release(node: &str, current: Option<&L2Announcement>) -> Option<String> {
    let c = current?;
    let names_us = c.status.as_ref().and_then(|s| s.node.as_deref()) == Some(node);
    if !names_us {
        return None;
    }
    c.metadata.resource_version.clone()
}

/// A job of the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Make the Service's object say this.
    Write(Want),
    /// The Service is no longer announced here (since the release numbered `.1`): delete its
    /// object if it still names this node ([`plan_release`]).
    Release(ServiceRef, u64),
}

impl Job {
    pub fn service(&self) -> &ServiceRef {
        match self {
            Job::Write(w) => &w.service,
            Job::Release(s, _) => s,
        }
    }
}

/// The writer's queue: one job per Service, the newest wins, first queued first out.
/// It also remembers the newest want of every Service still announced here, so a retry of an
/// older or cancelled want is dropped, and the last release of every Service no longer
/// announced here, so a release is carried out only if nothing was announced since.
#[derive(Debug, Default)]
pub struct Queue {
    order: VecDeque<ServiceRef>,
    pending: HashMap<ServiceRef, Job>,
    latest: HashMap<ServiceRef, Want>,
    released: HashMap<ServiceRef, u64>,
    releases: u64,
}

impl Queue {
    /// Queues `w`, replacing a queued job of the same Service (which keeps its place).
    pub fn push(&mut self, w: Want) {
        self.latest.insert(w.service.clone(), w.clone());
        self.released.remove(&w.service);
        self.put(Job::Write(w));
    }

    fn put(&mut self, j: Job) {
        let s = j.service().clone();
        if self.pending.insert(s.clone(), j).is_none() {
            self.order.push_back(s);
        }
    }

    /// Queues `w` again if it is still its Service's newest want and nothing is queued for it.
    pub fn retry(&mut self, w: Want) {
        if self.is_current(&w) && !self.pending.contains_key(&w.service) {
            self.push(w);
        }
    }

    /// Whether `w` is the newest want of its Service (not superseded, not cancelled).
    pub fn is_current(&self, w: &Want) -> bool {
        self.latest.get(&w.service) == Some(w)
    }

    /// `s` is no longer announced here: drops what is queued for it and forgets its want.
    /// Returns the number of this release, for [`Queue::release_due`] (after a grace period in
    /// which another node may take over and rewrite the object).
    pub fn cancel(&mut self, s: &ServiceRef) -> u64 {
        if matches!(self.pending.get(s), Some(Job::Write(_))) {
            self.pending.remove(s);
        }
        self.latest.remove(s);
        self.releases += 1;
        self.released.insert(s.clone(), self.releases);
        self.releases
    }

    /// Another node took `s` over: nothing of ours is queued or released for it any more.
    pub fn forget(&mut self, s: &ServiceRef) {
        self.pending.remove(s);
        self.latest.remove(s);
        self.released.remove(s);
    }

    /// The grace period of release `n` of `s` is over (or its deletion must be decided again):
    /// queues the release, unless `s` was announced here since or released again later.
    pub fn release_due(&mut self, s: &ServiceRef, n: u64) {
        if self.released.get(s) == Some(&n) && !self.pending.contains_key(s) {
            self.put(Job::Release(s.clone(), n));
        }
    }

    /// Release `n` of `s` is carried out (deleted, or nothing to delete).
    pub fn release_done(&mut self, s: &ServiceRef, n: u64) {
        if self.released.get(s) == Some(&n) {
            self.released.remove(s);
        }
    }

    pub fn pop(&mut self) -> Option<Job> {
        while let Some(s) = self.order.pop_front() {
            if let Some(j) = self.pending.remove(&s) {
                return Some(j);
            }
        }
        None
    }

    /// Jobs queued.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::eligibility::Group;
    use crate::agent::holdings::Transition;
    use std::sync::Arc;

    fn group(key_ips: &[&str], services: &[(&str, &str)], ifaces: &[&str]) -> Arc<Group> {
        let addresses =
            crate::agent::eligibility::address_set(key_ips.iter().map(|s| s.parse().unwrap()));
        Arc::new(Group {
            key: crate::agent::eligibility::group_key(&addresses).into(),
            addresses,
            services: services
                .iter()
                .map(|(n, s)| ServiceRef::new(n, s))
                .collect(),
            candidates: Arc::new(vec!["n1".into(), "n2".into()]),
            interfaces: Arc::new(ifaces.iter().map(|s| s.to_string()).collect()),
            eligible_here: true,
        })
    }

    fn want(svc: &str, ifaces: &[&str], acquired: Option<Acquired>) -> Want {
        want_on(&["198.51.100.10"], svc, ifaces, acquired)
    }

    fn want_on(ips: &[&str], svc: &str, ifaces: &[&str], acquired: Option<Acquired>) -> Want {
        Want {
            service: ServiceRef::new("demo", svc),
            group: group(ips, &[("demo", svc)], ifaces),
            acquired: acquired.map(Arc::new),
        }
    }

    fn taken(kind: &str, from: Option<&str>, ms: i64, transitions: i32) -> Acquired {
        Acquired {
            at: "2026-12-05T07:00:00.123Z".into(),
            failover: Some(L2Failover {
                kind: kind.into(),
                from: from.map(str::to_string),
                duration_milliseconds: Some(ms),
            }),
            transitions: Some(transitions),
        }
    }

    fn stored(w: Write) -> L2Announcement {
        let mut o = match w {
            Write::Create(o) | Write::Status(o) => o,
        };
        o.metadata.resource_version = Some("7".into());
        o
    }

    #[test]
    fn wants_one_per_service_of_held_groups_only() {
        let shared = group(
            &["198.51.100.10"],
            &[("demo", "dns-tcp"), ("demo", "dns-udp")],
            &["eth0"],
        );
        let other = group(&["198.51.100.11"], &[("demo", "web")], &["eth0", "eth1"]);
        let mut h = Holdings::new(true, std::time::Duration::ZERO);
        h.set_desired([&shared, &other]);
        assert!(wants(&h, &HashMap::new()).is_empty(), "nothing held yet");
        h.on_lease(&shared.key, Transition::Acquired, std::time::Instant::now());
        let acq = HashMap::from([(
            shared.key.to_string(),
            Arc::new(taken("Expired", Some("n2"), 1900, 4)),
        )]);
        let w = wants(&h, &acq);
        assert_eq!(
            w.len(),
            2,
            "one object per Service sharing the address: {w:?}"
        );
        let tcp = &w[&ServiceRef::new("demo", "dns-tcp")];
        assert_eq!(tcp.addresses(), vec!["198.51.100.10".to_string()]);
        assert_eq!(tcp.interfaces(), vec!["eth0".to_string()]);
        assert_eq!(tcp.lease(), crate::lease::lease_name(&shared.key));
        assert_eq!(tcp.acquired, acq.get(&*shared.key).cloned());
        assert!(
            Arc::ptr_eq(&tcp.group, &shared),
            "the holdings' group, not a copy"
        );
        assert!(!w.contains_key(&ServiceRef::new("demo", "web")));
    }

    #[test]
    fn a_want_changes_with_what_the_object_says_only() {
        let a = want("a", &["eth0"], None);
        // Another Service joins the address, the candidates change: the object says the same.
        let mut joined = (*group(
            &["198.51.100.10"],
            &[("demo", "a"), ("demo", "b")],
            &["eth0"],
        ))
        .clone();
        joined.candidates = Arc::new(vec!["n3".into()]);
        let same = Want {
            group: Arc::new(joined),
            ..a.clone()
        };
        assert_eq!(same, a);
        assert_ne!(want("a", &["eth1"], None), a, "interfaces");
        assert_ne!(
            want_on(&["198.51.100.11"], "a", &["eth0"], None),
            a,
            "addresses"
        );
        assert_ne!(
            want("a", &["eth0"], Some(taken("Created", None, 3, 0))),
            a,
            "acquisition"
        );
    }

    #[test]
    fn tracker_reports_only_changes_and_gone_services() {
        let mut t = Tracker::default();
        let a = want("a", &["eth0"], None);
        let b = want("b", &["eth0"], None);
        let c = t.update(BTreeMap::from([
            (a.service.clone(), a.clone()),
            (b.service.clone(), b.clone()),
        ]));
        assert_eq!(c.changed.len(), 2);
        // The same again (a recompute, a renewal): nothing.
        let c = t.update(BTreeMap::from([
            (a.service.clone(), a.clone()),
            (b.service.clone(), b.clone()),
        ]));
        assert_eq!(c, Changes::default());
        // a's interfaces change, b is no longer announced here.
        let a2 = want("a", &["eth0", "eth1"], None);
        let c = t.update(BTreeMap::from([(a2.service.clone(), a2.clone())]));
        assert_eq!(c.changed, vec![a2]);
        assert_eq!(c.gone, vec![b.service]);
    }

    #[test]
    fn a_new_object_is_created_owned_by_its_service() {
        let w = want("web", &["eth0"], Some(taken("Created", None, 3, 0)));
        let Some(Write::Create(o)) = plan("n1", None, &w, Some("uid-1")) else {
            panic!("expected a create");
        };
        assert_eq!(o.metadata.name.as_deref(), Some("web"));
        assert_eq!(o.metadata.namespace.as_deref(), Some("demo"));
        let owner = &o.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "web", "uid-1")
        );
        let s = o.status.unwrap();
        assert_eq!(s.node.as_deref(), Some("n1"));
        assert_eq!(s.interfaces, vec!["eth0".to_string()]);
        assert_eq!(s.since.as_deref(), Some("2026-12-05T07:00:00.123Z"));
        assert_eq!(s.lease_transitions, Some(0));
        assert_eq!(s.last_failover.unwrap().kind, "Created");
    }

    #[test]
    fn nothing_is_written_when_the_object_already_says_it() {
        let w = want(
            "web",
            &["eth0"],
            Some(taken("Expired", Some("n2"), 1900, 3)),
        );
        let obj = stored(plan("n1", None, &w, Some("u")).unwrap());
        // A restart: re-confirmed our own lease, no takeover → still no write.
        let restarted = want("web", &["eth0"], None);
        assert_eq!(plan("n1", Some(&obj), &restarted, Some("u")), None);
        assert_eq!(plan("n1", Some(&obj), &w, Some("u")), None);
    }

    #[test]
    fn a_takeover_rewrites_node_since_transitions_and_failover() {
        let w1 = want("web", &["eth0"], Some(taken("Created", None, 3, 0)));
        let obj = stored(plan("n1", None, &w1, Some("u")).unwrap());
        let mut w2 = want("web", &["eth0"], Some(taken("Expired", None, 1960, 1)));
        Arc::make_mut(w2.acquired.as_mut().unwrap()).at = "2026-12-05T07:05:00Z".into();
        let Some(Write::Status(o)) = plan("n2", Some(&obj), &w2, Some("u")) else {
            panic!("expected a status write");
        };
        assert_eq!(
            o.metadata.resource_version.as_deref(),
            Some("7"),
            "precondition"
        );
        let s = o.status.unwrap();
        assert_eq!(s.node.as_deref(), Some("n2"));
        assert_eq!(s.since.as_deref(), Some("2026-12-05T07:05:00Z"));
        assert_eq!(s.lease_transitions, Some(1));
        let f = s.last_failover.unwrap();
        assert_eq!(f.kind, "Expired");
        // The engine did not know the previous holder: the object did.
        assert_eq!(f.from.as_deref(), Some("n1"));
        assert_eq!(f.duration_milliseconds, Some(1960));
    }

    #[test]
    fn an_interface_change_keeps_since_and_failover() {
        let w1 = want("web", &["eth0"], Some(taken("Released", Some("n2"), 40, 5)));
        let obj = stored(plan("n1", None, &w1, Some("u")).unwrap());
        let w2 = want("web", &["eth0", "eth1"], None);
        let Some(Write::Status(o)) = plan("n1", Some(&obj), &w2, Some("u")) else {
            panic!("expected a status write");
        };
        let s = o.status.unwrap();
        assert_eq!(s.interfaces, vec!["eth0".to_string(), "eth1".to_string()]);
        assert_eq!(s.since.as_deref(), Some("2026-12-05T07:00:00.123Z"));
        assert_eq!(s.lease_transitions, Some(5));
        assert_eq!(s.last_failover.unwrap().duration_milliseconds, Some(40));
    }

    #[test]
    fn the_queue_coalesces_per_service_and_drops_cancelled_wants() {
        let mut q = Queue::default();
        q.push(want("a", &["eth0"], None));
        q.push(want("b", &["eth0"], None));
        let a2 = want("a", &["eth1"], None);
        q.push(a2.clone());
        assert_eq!(q.len(), 2);
        // A retry of an older want does not overwrite the newer one.
        q.retry(want("a", &["eth0"], None));
        assert_eq!(
            q.pop(),
            Some(Job::Write(a2.clone())),
            "the newest want, at a's place"
        );
        let b = want("b", &["eth0"], None);
        q.cancel(&b.service);
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
        // A retry after a failed write: only while it is still the newest want.
        q.retry(a2.clone());
        assert_eq!(q.pop(), Some(Job::Write(a2.clone())));
        q.retry(b.clone());
        assert!(
            q.is_empty(),
            "b was cancelled: its retry must not come back"
        );
        assert!(!q.is_current(&want("a", &["eth0"], None)));
        assert!(q.is_current(&a2));
    }

    #[test]
    fn printer_column_text_follows_the_lists_and_old_objects_get_it() {
        let w = want_on(
            &["198.51.100.10", "2001:db8::10"],
            "web",
            &["eth0", "eth1"],
            Some(taken("Created", None, 3, 0)),
        );
        let obj = stored(plan("n1", None, &w, Some("u")).unwrap());
        let s = obj.status.clone().unwrap();
        assert_eq!(
            s.addresses_text.as_deref(),
            Some("198.51.100.10,2001:db8::10")
        );
        assert_eq!(s.interfaces_text.as_deref(), Some("eth0,eth1"));
        assert_eq!(plan("n1", Some(&obj), &w, Some("u")), None);
        // An object written before the text fields existed: rewritten once, nothing else moves.
        let mut old = obj.clone();
        let st = old.status.as_mut().unwrap();
        st.addresses_text = None;
        st.interfaces_text = None;
        let Some(Write::Status(o)) = plan("n1", Some(&old), &w, Some("u")) else {
            panic!("expected a status write");
        };
        assert_eq!(o.status, obj.status);
    }

    #[test]
    fn a_release_deletes_only_an_object_that_still_names_this_node() {
        let w = want("web", &["eth0"], Some(taken("Created", None, 3, 0)));
        let ours = stored(plan("n1", None, &w, Some("u")).unwrap());
        assert_eq!(plan_release("n1", Some(&ours)), Some("7".to_string()));
        // Another node took over meanwhile (its object): not ours to delete.
        assert_eq!(plan_release("n2", Some(&ours)), None);
        assert_eq!(plan_release("n1", None), None);
        let mut empty = ours.clone();
        empty.status = None;
        assert_eq!(plan_release("n1", Some(&empty)), None);
    }

    #[test]
    fn a_release_is_queued_only_if_nothing_was_announced_since() {
        let mut q = Queue::default();
        let a = want("a", &["eth0"], None);
        q.push(a.clone());
        let n = q.cancel(&a.service);
        assert!(q.is_empty(), "the queued write is dropped");
        q.release_due(&a.service, n);
        assert_eq!(q.pop(), Some(Job::Release(a.service.clone(), n)));
        // Retried after a conflict, then done: a later due of the same release does nothing.
        q.release_due(&a.service, n);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(Job::Release(a.service.clone(), n)));
        q.release_done(&a.service, n);
        q.release_due(&a.service, n);
        assert!(q.is_empty());

        // Announced again within the grace period: the release is void.
        let n = q.cancel(&a.service);
        q.push(a.clone());
        q.release_due(&a.service, n);
        assert_eq!(q.pop(), Some(Job::Write(a.clone())));
        assert_eq!(q.pop(), None);

        // Released twice: only the last release's grace period counts.
        let first = q.cancel(&a.service);
        q.push(a.clone());
        let second = q.cancel(&a.service);
        q.release_due(&a.service, first);
        assert!(q.is_empty(), "{q:?}");
        q.release_due(&a.service, second);
        assert_eq!(q.pop(), Some(Job::Release(a.service.clone(), second)));

        // A want pushed while a release is queued replaces it (at its place).
        let b = want("b", &["eth0"], None);
        let n = q.cancel(&a.service);
        q.release_due(&a.service, n);
        q.push(b.clone());
        q.push(a.clone());
        assert_eq!(q.pop(), Some(Job::Write(a.clone())));
        assert_eq!(q.pop(), Some(Job::Write(b)));
    }
}
