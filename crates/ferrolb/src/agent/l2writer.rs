//! The task that writes `L2Announcement` objects: thin I/O around [`super::l2status`].
//!
//! It never delays a takeover: it waits until the agent has seen no lease event for
//! [`SETTLE`] (a burst of acquisitions is over and their lease writes went first; at most
//! [`MAX_HOLD`] under constant churn), then sends one write at a time. Its queue is coalesced per
//! Service ([`Queue`]): a newer state replaces a queued one, a Service this node stopped
//! announcing is dropped. What to write is decided against a watch cache of the objects
//! ([`plan`]), so a restart or a relist writes nothing. That cache is narrow ([`L2Cache`]): per
//! object only what a write needs (uid and resourceVersion, the preconditions) and the status it
//! compares; every agent caches every `L2Announcement`, so whole objects (owner references,
//! timestamps, the reflector's keys) would cost every node memory per Service. Status writes carry the cached
//! resourceVersion; a 409 or 404 waits for the watch and decides again.
//!
//! A Service whose address another node took over is only dropped from the queue: the new
//! holder rewrites its object. A Service this node stops announcing otherwise (released, no
//! longer eligible) gets a grace
//! period (the lease duration: a node that takes over writes the object meanwhile); then, if
//! nothing was announced here since and the cached object still names this node
//! ([`plan_release`]), the object is deleted with its resourceVersion as precondition, so a
//! takeover written meanwhile is never deleted (409: decide again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::cache::{CachedService, Store};
use super::eligibility::ServiceRef;
use super::l2status::{plan, plan_release, Job, Queue, Want, Write};
use crate::api::{L2Announcement, L2AnnouncementSpec, L2AnnouncementStatus};

/// Quiet period after the last lease event before writing.
pub const SETTLE: Duration = Duration::from_millis(50);
/// The longest a write waits for lease activity to settle.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// Wait before deciding again after a 409/404 (the watch brings the newer object meanwhile).
const CONFLICT_WAIT: Duration = Duration::from_millis(200);
/// Wait before retrying after another error.
const ERROR_WAIT: Duration = Duration::from_secs(1);

struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    /// The last lease activity the agent reported.
    activity: Mutex<Instant>,
    /// How long a Service no longer announced here waits before its object is deleted.
    release_grace: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Handle of the writer task (cheap to clone).
#[derive(Clone)]
pub struct L2Writer {
    shared: Arc<Shared>,
}

impl L2Writer {
    /// Starts the object watch and the writer. `services` is the agent's Service cache (for the
    /// owner reference's uid; a Service gone from it gets no object). `release_grace`: how long
    /// the object of a Service no longer announced here is left for another node to take over
    /// before it is deleted (the lease duration).
    pub fn start(
        client: Client,
        node: String,
        services: Store<CachedService>,
        registry: &Registry,
        release_grace: Duration,
    ) -> anyhow::Result<(L2Writer, tokio::task::JoinHandle<()>)> {
        let writes = IntCounterVec::new(
            Opts::new(
                "ferrolb_agent_l2announcement_writes_total",
                "L2Announcement writes by this node, by result (created, status, deleted, conflict, error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(writes.clone()))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            activity: Mutex::new(Instant::now()),
            release_grace,
        });
        let task = tokio::spawn(run(client, node, services, shared.clone(), writes));
        Ok((L2Writer { shared }, task))
    }

    /// Queues the newest state of a Service's object.
    pub fn push(&self, w: Want) {
        lock(&self.shared.queue).push(w);
        self.shared.notify.notify_one();
    }

    /// Drops what is queued for a Service this node no longer announces; after the grace
    /// period its object is deleted if it still names this node.
    pub fn cancel(&self, s: &ServiceRef) {
        let n = lock(&self.shared.queue).cancel(s);
        release_after(&self.shared, s.clone(), n, self.shared.release_grace);
    }

    /// Drops what is queued for a Service another node took over; its object is left to the
    /// new holder (no deletion).
    pub fn drop_queued(&self, s: &ServiceRef) {
        lock(&self.shared.queue).forget(s);
    }

    /// The agent saw lease events now: writes wait until they settle.
    pub fn lease_activity(&self) {
        *lock(&self.shared.activity) = Instant::now();
    }
}

async fn run(
    client: Client,
    node: String,
    services: Store<CachedService>,
    shared: Arc<Shared>,
    writes: IntCounterVec,
) {
    let all: Api<L2Announcement> = Api::all(client.clone());
    let store = Arc::new(Mutex::new(L2Cache::new(&node)));
    let ready = Arc::new(Notify::new());
    let stream = watcher(all, watcher::Config::default()).default_backoff();
    {
        let (store, ready) = (store.clone(), ready.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        if lock(&store).on_watch(ev) {
                            ready.notify_one();
                        }
                    }
                    Err(e) => warn!(error = %e, "L2Announcement watch error (retrying)"),
                }
            }
        });
    }
    while !lock(&store).is_ready() {
        ready.notified().await;
    }
    loop {
        if lock(&shared.queue).is_empty() {
            shared.notify.notified().await;
            continue;
        }
        // Behind lease writes: wait for a quiet moment, then take the newest state queued.
        let started = Instant::now();
        loop {
            let quiet_at = *lock(&shared.activity) + SETTLE;
            let now = Instant::now();
            if now >= quiet_at || now >= started + MAX_HOLD {
                break;
            }
            tokio::time::sleep_until(quiet_at.min(started + MAX_HOLD)).await;
        }
        let job = lock(&shared.queue).pop();
        let want = match job {
            None => continue,
            Some(Job::Write(w)) => w,
            Some(Job::Release(s, n)) => {
                release(&client, &node, &store, &shared, &writes, s, n).await;
                continue;
            }
        };
        let sref = &want.service;
        let svc = services.get(&sref.namespace, &sref.name);
        let Some(svc) = svc else {
            debug!(service = %sref, "Service gone: no L2Announcement");
            continue;
        };
        let current = lock(&store).get(sref);
        let Some(write) = plan(&node, current.as_ref(), &want, svc.uid.as_deref()) else {
            continue;
        };
        let api: Api<L2Announcement> = Api::namespaced(client.clone(), &sref.namespace);
        let result = match &write {
            Write::Create(o) => match api.create(&PostParams::default(), o).await {
                Ok(created) if created.status != o.status => {
                    // The status subresource dropped it: write it now.
                    let mut s = created;
                    s.status = o.status.clone();
                    s.metadata.managed_fields = None;
                    api.replace_status(&sref.name, &PostParams::default(), &s)
                        .await
                        .map(|_| "created")
                }
                Ok(_) => Ok("created"),
                Err(e) => Err(e),
            },
            Write::Status(o) => api
                .replace_status(&sref.name, &PostParams::default(), o)
                .await
                .map(|_| "status"),
        };
        match result {
            Ok(kind) => {
                writes.with_label_values(&[kind]).inc();
                debug!(service = %sref, write = kind, "L2Announcement written");
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                writes.with_label_values(&["conflict"]).inc();
                debug!(service = %sref, code = e.code, "L2Announcement changed meanwhile: deciding again");
                requeue_after(&shared, want, CONFLICT_WAIT);
            }
            Err(e) => {
                writes.with_label_values(&["error"]).inc();
                warn!(service = %sref, error = %e, "writing L2Announcement failed (retrying)");
                requeue_after(&shared, want, ERROR_WAIT);
            }
        }
    }
}

/// Deletes the object of `s` (released here as release `n`) if it still names `node`.
async fn release(
    client: &Client,
    node: &str,
    store: &Mutex<L2Cache>,
    shared: &Arc<Shared>,
    writes: &IntCounterVec,
    s: ServiceRef,
    n: u64,
) {
    let current = lock(store).get(&s);
    let Some(rv) = plan_release(node, current.as_ref()) else {
        lock(&shared.queue).release_done(&s, n);
        return;
    };
    let api: Api<L2Announcement> = Api::namespaced(client.clone(), &s.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(rv),
            uid: current.and_then(|c| c.metadata.uid),
        }),
        ..Default::default()
    };
    match api.delete(&s.name, &dp).await {
        Ok(_) => {
            writes.with_label_values(&["deleted"]).inc();
            debug!(service = %s, "no longer announced by anyone: L2Announcement deleted");
            lock(&shared.queue).release_done(&s, n);
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            lock(&shared.queue).release_done(&s, n);
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Written meanwhile (a takeover?): decide again on the newer object.
            writes.with_label_values(&["conflict"]).inc();
            release_after(shared, s, n, CONFLICT_WAIT);
        }
        Err(e) => {
            writes.with_label_values(&["error"]).inc();
            warn!(service = %s, error = %e, "deleting L2Announcement failed (retrying)");
            release_after(shared, s, n, ERROR_WAIT);
        }
    }
}

/// What the writer keeps of one `L2Announcement`: its write preconditions and its status.
#[derive(Clone, Debug, PartialEq)]
struct Narrow {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    status: Option<Kept>,
}

/// The status of a cached object. The map holds one per Service of the cluster, mostly naming
/// another node, and of those [`plan`] reads only who announces, `leaseTransitions` and
/// `lastFailover` (a takeover's write starts afresh from what this node wants): that is all
/// that is kept of them. An object naming this node is kept whole (a rewrite keeps the rest).
#[derive(Clone, Debug, PartialEq)]
enum Kept {
    Ours(Box<L2AnnouncementStatus>),
    Other {
        node: Option<Box<str>>,
        lease_transitions: Option<i32>,
        last_failover: Option<Box<crate::api::L2Failover>>,
    },
}

impl Kept {
    fn of(node: &str, mut st: L2AnnouncementStatus) -> Kept {
        if st.node.as_deref() == Some(node) {
            st.addresses.shrink_to_fit();
            st.interfaces.shrink_to_fit();
            return Kept::Ours(Box::new(st));
        }
        Kept::Other {
            node: st.node.map(String::into_boxed_str),
            lease_transitions: st.lease_transitions,
            last_failover: st.last_failover.map(Box::new),
        }
    }

    fn status(&self) -> L2AnnouncementStatus {
        match self {
            Kept::Ours(st) => (**st).clone(),
            Kept::Other {
                node,
                lease_transitions,
                last_failover,
            } => L2AnnouncementStatus {
                node: node.as_deref().map(String::from),
                lease_transitions: *lease_transitions,
                last_failover: last_failover.as_deref().cloned(),
                ..Default::default()
            },
        }
    }
}

impl Narrow {
    fn of(node: &str, o: L2Announcement) -> (ServiceRef, Narrow) {
        let L2Announcement {
            metadata, status, ..
        } = o;
        let key = ServiceRef::new(
            metadata.namespace.as_deref().unwrap_or_default(),
            metadata.name.as_deref().unwrap_or_default(),
        );
        let n = Narrow {
            uid: metadata.uid.map(String::into_boxed_str),
            resource_version: metadata.resource_version.map(String::into_boxed_str),
            status: status.map(|st| Kept::of(node, st)),
        };
        (key, n)
    }
}

/// The writer's watch cache of `L2Announcement`s (see the module docs), fed by the watch's
/// events; a relist replaces it whole when it completes.
#[derive(Debug)]
pub struct L2Cache {
    /// This node (whose objects are kept whole).
    node: String,
    objects: HashMap<ServiceRef, Narrow>,
    /// The relist under way.
    relist: Option<HashMap<ServiceRef, Narrow>>,
    ready: bool,
}

impl L2Cache {
    /// An empty cache for the writer of `node`.
    pub fn new(node: &str) -> Self {
        L2Cache {
            node: node.to_string(),
            objects: HashMap::new(),
            relist: None,
            ready: false,
        }
    }

    /// Applies one watch event; `true` when this made the cache ready (first list complete).
    pub fn on_watch(&mut self, ev: watcher::Event<L2Announcement>) -> bool {
        match ev {
            watcher::Event::Apply(o) => {
                let (k, n) = Narrow::of(&self.node, o);
                self.objects.insert(k, n);
            }
            watcher::Event::Delete(o) => {
                let (k, _) = Narrow::of(&self.node, o);
                self.objects.remove(&k);
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (k, n) = Narrow::of(&self.node, o);
                self.relist.get_or_insert_with(HashMap::new).insert(k, n);
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.objects.shrink_to_fit();
                let first = !self.ready;
                self.ready = true;
                return first;
            }
        }
        false
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The cached object of Service `s`, as much of it as a write needs: namespace, name, uid,
    /// resourceVersion and status (a status write changes nothing else, and the writer never
    /// sends anything else).
    pub fn get(&self, s: &ServiceRef) -> Option<L2Announcement> {
        let n = self.objects.get(s)?;
        let mut o = L2Announcement::new(&s.name, L2AnnouncementSpec {});
        o.metadata = ObjectMeta {
            name: Some(s.name.to_string()),
            namespace: Some(s.namespace.to_string()),
            uid: n.uid.as_deref().map(String::from),
            resource_version: n.resource_version.as_deref().map(String::from),
            ..Default::default()
        };
        o.status = n.status.as_ref().map(Kept::status);
        Some(o)
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is cached.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Queues release `n` of `s` after `wait` (void if `s` was announced here since).
fn release_after(shared: &Arc<Shared>, s: ServiceRef, n: u64, wait: Duration) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        lock(&shared.queue).release_due(&s, n);
        shared.notify.notify_one();
    });
}

/// Queues `want` again after `wait`, unless a newer one for its Service arrived by then.
fn requeue_after(shared: &Arc<Shared>, want: Want, wait: Duration) {
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        lock(&shared.queue).retry(want);
        shared.notify.notify_one();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    fn obj(ns: &str, name: &str, rv: &str, node: &str) -> L2Announcement {
        let mut o = L2Announcement::new(name, L2AnnouncementSpec {});
        o.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some(rv.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: name.into(),
                uid: "svc-uid".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("ferrolb-agent".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        o.status = Some(L2AnnouncementStatus {
            addresses: vec!["198.51.100.7".into()],
            node: Some(node.into()),
            interfaces: vec!["eth0".into()],
            addresses_text: Some("198.51.100.7".into()),
            interfaces_text: Some("eth0".into()),
            lease: Some(format!("ferrolb-{name}")),
            ..Default::default()
        });
        o
    }

    #[test]
    fn keeps_what_a_write_needs_and_plans_as_with_the_whole_object() {
        let mut c = L2Cache::new("n1");
        assert!(!c.is_ready());
        assert!(!c.on_watch(watcher::Event::Init));
        assert!(!c.on_watch(watcher::Event::InitApply(obj("demo", "web", "5", "n1"))));
        assert!(!c.is_ready(), "not ready before the list completes");
        assert!(c.on_watch(watcher::Event::InitDone));
        assert!(c.is_ready());
        let s = ServiceRef::new("demo", "web");
        let got = c.get(&s).expect("cached");
        let whole = obj("demo", "web", "5", "n1");
        assert_eq!(got.metadata.name, whole.metadata.name);
        assert_eq!(got.metadata.namespace, whole.metadata.namespace);
        assert_eq!(got.metadata.uid, whole.metadata.uid);
        assert_eq!(
            got.metadata.resource_version,
            whole.metadata.resource_version
        );
        assert_eq!(got.status, whole.status);
        assert!(got.metadata.owner_references.is_none());
        assert!(got.metadata.managed_fields.is_none());
        // Same decisions as on the whole object.
        assert_eq!(plan_release("n1", Some(&got)), Some("5".to_string()));
        assert_eq!(plan_release("n2", Some(&got)), None);
        // Updates and deletes.
        c.on_watch(watcher::Event::Apply(obj("demo", "web", "9", "n2")));
        let got = c.get(&s).expect("cached");
        assert_eq!(got.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(plan_release("n1", Some(&got)), None);
        c.on_watch(watcher::Event::Delete(obj("demo", "web", "9", "n2")));
        assert!(c.get(&s).is_none());
        assert!(c.is_empty());
    }

    /// Of another node's object only what a takeover's write reads is kept: the write planned
    /// from the cache is the one planned from the whole object, with and without a takeover
    /// record of our own.
    #[test]
    fn another_nodes_object_is_kept_small_and_plans_the_same_writes() {
        use crate::agent::l2status::{Acquired, Want};
        use crate::api::L2Failover;
        let mut whole = obj("demo", "web", "7", "n2");
        if let Some(st) = whole.status.as_mut() {
            st.since = Some("2026-12-07T05:00:00Z".into());
            st.lease_transitions = Some(4);
            st.last_failover = Some(L2Failover {
                kind: "Expired".into(),
                from: Some("n3".into()),
                duration_milliseconds: Some(812),
            });
        }
        let mut c = L2Cache::new("n1");
        c.on_watch(watcher::Event::Init);
        c.on_watch(watcher::Event::InitApply(whole.clone()));
        c.on_watch(watcher::Event::InitDone);
        let got = c.get(&ServiceRef::new("demo", "web")).expect("cached");
        let st = got.status.as_ref().expect("a status");
        assert_eq!(st.node.as_deref(), Some("n2"));
        assert!(st.addresses.is_empty() && st.lease.is_none() && st.since.is_none());
        let status_of = |w: Option<Write>| match w {
            Some(Write::Status(o) | Write::Create(o)) => o.status,
            None => None,
        };
        let takeover = Acquired {
            at: "2026-12-07T05:01:00Z".into(),
            failover: Some(L2Failover {
                kind: "Expired".into(),
                from: None,
                duration_milliseconds: Some(640),
            }),
            transitions: Some(5),
        };
        for acquired in [None, Some(takeover)] {
            let addresses: Box<[std::net::IpAddr]> = Box::new(["198.51.100.7".parse().unwrap()]);
            let want = Want {
                service: ServiceRef::new("demo", "web"),
                group: Arc::new(crate::agent::eligibility::Group {
                    key: crate::agent::eligibility::group_key(&addresses).into(),
                    addresses,
                    services: vec![ServiceRef::new("demo", "web")],
                    candidates: Arc::default(),
                    interfaces: Arc::new(["eth1".to_string()].into()),
                    eligible_here: true,
                }),
                acquired: acquired.map(Arc::new),
            };
            let from_cache = status_of(plan("n1", Some(&got), &want, Some("svc-uid")));
            let from_whole = status_of(plan("n1", Some(&whole), &want, Some("svc-uid")));
            assert!(from_cache.is_some());
            assert_eq!(from_cache, from_whole);
        }
        // The same object naming this node is kept whole.
        c.on_watch(watcher::Event::Apply(obj("demo", "web", "8", "n1")));
        let got = c.get(&ServiceRef::new("demo", "web")).expect("cached");
        assert_eq!(got.status, obj("demo", "web", "8", "n1").status);
    }

    #[test]
    fn a_relist_replaces_the_cache_when_it_completes() {
        let mut c = L2Cache::new("n1");
        c.on_watch(watcher::Event::Init);
        c.on_watch(watcher::Event::InitApply(obj("demo", "a", "1", "n1")));
        c.on_watch(watcher::Event::InitApply(obj("demo", "b", "2", "n1")));
        c.on_watch(watcher::Event::InitDone);
        assert_eq!(c.len(), 2);
        // A relist after a watch error: the old objects answer until it completes.
        c.on_watch(watcher::Event::Init);
        c.on_watch(watcher::Event::InitApply(obj("demo", "b", "3", "n2")));
        assert_eq!(c.len(), 2);
        assert!(!c.on_watch(watcher::Event::InitDone), "ready already");
        assert_eq!(c.len(), 1);
        assert!(c.get(&ServiceRef::new("demo", "a")).is_none());
        assert_eq!(
            c.get(&ServiceRef::new("demo", "b"))
                .and_then(|o| o.metadata.resource_version),
            Some("3".to_string())
        );
    }
}
