//! Events off the write path: a status write that landed hands its Events to the [`Outbox`] and
//! the next status write starts at once; a task of its own publishes them
//! [`EVENT_CONCURRENCY`] at a time, each with the time its write landed as `eventTime`.
//!
//! Rate limit: every Event passes [`SpamFilter`] first (client-go's defaults: per object a
//! burst of 25, then one per 5 minutes; the first Event about an object always passes); those
//! it holds back are counted in `ferrolb_controller_events_dropped_total`, never queued.
//!
//! Nothing else is dropped: the queue is unbounded (it holds one entry per Event a landed write
//! asked for, never more than the writes themselves), Events already queued are still
//! published after leadership is lost (they describe writes that happened), and shutdown waits
//! (bounded) until the queue is empty. A failed publish is counted and logged, as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::{EventSpec, Recorder, SpamFilter};
use super::Metrics;

/// Event creates in flight at once.
pub const EVENT_CONCURRENCY: usize = 16;

struct Item {
    regarding: Arc<ObjectReference>,
    spec: EventSpec,
    at: jiff::Timestamp,
}

/// The queue of Events to publish and the task that publishes them.
pub struct Outbox {
    tx: mpsc::UnboundedSender<Item>,
    task: JoinHandle<()>,
    queued: Arc<AtomicUsize>,
    spam: std::sync::Mutex<SpamFilter>,
    dropped: prometheus::IntCounter,
}

impl Outbox {
    /// Starts the publishing task.
    pub fn start(recorder: Recorder, metrics: Metrics) -> Self {
        let dropped = metrics.events_dropped.clone();
        let (tx, rx) = mpsc::unbounded_channel::<Item>();
        let queued = Arc::new(AtomicUsize::new(0));
        let left = Arc::clone(&queued);
        let items =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let task = tokio::spawn(items.for_each_concurrent(EVENT_CONCURRENCY, move |item| {
            let recorder = recorder.clone();
            let metrics = metrics.clone();
            let left = Arc::clone(&left);
            async move {
                match recorder
                    .publish_at(&item.regarding, &item.spec, item.at)
                    .await
                {
                    Ok(()) => metrics.write("events", "ok"),
                    Err(e) => {
                        metrics.write("events", "error");
                        tracing::warn!(
                            error = %e,
                            kind = item.regarding.kind.as_deref().unwrap_or(""),
                            namespace = item.regarding.namespace.as_deref().unwrap_or(""),
                            name = item.regarding.name.as_deref().unwrap_or(""),
                            reason = item.spec.reason,
                            "could not publish Event"
                        );
                    }
                }
                left.fetch_sub(1, Ordering::Relaxed);
            }
        }));
        Outbox {
            tx,
            task,
            queued,
            spam: Default::default(),
            dropped,
        }
    }

    /// Queues the Events of one landed write (their `eventTime` is now).
    pub fn push(&self, regarding: &ObjectReference, events: &[EventSpec]) {
        if events.is_empty() {
            return;
        }
        let at = jiff::Timestamp::now();
        let now = std::time::Instant::now();
        let key = SpamFilter::key(regarding);
        let regarding = Arc::new(regarding.clone());
        for spec in events {
            let allowed = self
                .spam
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .allow(&key, now);
            if !allowed {
                self.dropped.inc();
                tracing::debug!(key, reason = spec.reason, "Event rate-limited");
                continue;
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
            let item = Item {
                regarding: Arc::clone(&regarding),
                spec: spec.clone(),
                at,
            };
            if self.tx.send(item).is_err() {
                // Only after the task ended (it never does while `self` lives).
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Events queued or in flight.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes what is queued (waiting at most `within`), then stops the task.
    pub async fn close(self, within: Duration) {
        let Outbox {
            tx, task, queued, ..
        } = self;
        drop(tx);
        let mut task = task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::warn!(
                left = queued.load(Ordering::Relaxed),
                "Events still unpublished at shutdown"
            );
            task.abort();
        }
    }
}
