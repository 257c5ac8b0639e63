//! The task that writes `L2Announcement` objects: thin I/O around [`super::l2status`].
//!
//! It never delays a takeover: it waits until the agent has seen no lease event for
//! [`SETTLE`] (a burst of acquisitions is over and their lease writes went first; at most
//! [`MAX_HOLD`] under constant churn), then sends one write at a time. Its queue is coalesced per
//! Service ([`Queue`]): a newer state replaces a queued one, a Service this node stopped
//! announcing is dropped. What to write is decided against a watch cache of the objects
//! ([`plan`]), so a restart or a relist writes nothing. Status writes carry the cached
//! resourceVersion; a 409 or 404 waits for the watch and decides again.
//!
//! A Service this node stops announcing (released, lost, no longer eligible) gets a grace
//! period (the lease duration: a node that takes over writes the object meanwhile); then, if
//! nothing was announced here since and the cached object still names this node
//! ([`plan_release`]), the object is deleted with its resourceVersion as precondition, so a
//! takeover written meanwhile is never deleted (409: decide again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::cache::{CachedService, Store};
use super::eligibility::ServiceRef;
use super::l2status::{plan, plan_release, Job, Queue, Want, Write};
use crate::api::L2Announcement;

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
    let (store, writer) = reflector::store();
    // Without managedFields (a write drops them anyway, see `plan`): with every agent writing
    // status they are most of each object, and every agent caches every L2Announcement.
    let stream = watcher(all, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut L2Announcement| o.metadata.managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                warn!(error = %e, "L2Announcement watch error (retrying)");
            }
        }
    });
    if store.wait_until_ready().await.is_err() {
        return;
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
        let current = store.get(&ObjectRef::new(&sref.name).within(&sref.namespace));
        let Some(write) = plan(&node, current.as_deref(), &want, svc.uid.as_deref()) else {
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
    store: &reflector::Store<L2Announcement>,
    shared: &Arc<Shared>,
    writes: &IntCounterVec,
    s: ServiceRef,
    n: u64,
) {
    let current = store.get(&ObjectRef::new(&s.name).within(&s.namespace));
    let Some(rv) = plan_release(node, current.as_deref()) else {
        lock(&shared.queue).release_done(&s, n);
        return;
    };
    let api: Api<L2Announcement> = Api::namespaced(client.clone(), &s.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(rv),
            uid: current.and_then(|c| c.metadata.uid.clone()),
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
