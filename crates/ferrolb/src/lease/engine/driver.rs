//! The thin tokio loop around the engine's pure core: the Lease watch (with its backoff),
//! commands, write results and timers in; the core's effects (events, the held set, writes)
//! carried out; shutdown.

use super::*;
use crate::lease::attach::ATTACHED_DURATION_SECONDS;
use crate::lease::client::LeaseWriter;
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::Api;

pub(super) async fn run(
    client: kube::Client,
    opts: EngineOptions,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    stats: Arc<EngineStats>,
    held_tx: watch::Sender<BTreeSet<String>>,
) {
    let mut opts = opts;
    if let Err(e) = opts.config.validate() {
        // An unsafe configuration could let two nodes hold a lease: repair it, loudly.
        let c = &mut opts.config;
        c.lease_duration = c.lease_duration.max(Duration::from_secs(1));
        c.retry_period = c
            .retry_period
            .clamp(Duration::from_millis(10), c.lease_duration / 4);
        c.renew_deadline = c
            .renew_deadline
            .clamp(c.retry_period * 2, c.lease_duration * 3 / 4);
        tracing::error!(error = %e, config = ?opts.config, "invalid lease timings; using repaired ones");
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let wcfg = match &opts.scope {
        WatchScope::Labels(sel) => watcher::Config::default().labels(sel),
        WatchScope::Name(n) => watcher::Config::default().fields(&format!("metadata.name={n}")),
    };
    // Reconnect quickly after an outage (≤ 2 s): stale observations cost 409s and late takeovers.
    let backoff = WatchBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
    // The engine keeps the last object of every lease it holds (the base of its renewals);
    // `managedFields` is most of a Lease's size and our PUTs leave it out anyway.
    let mut stream = watcher(api, wcfg)
        .backoff(backoff)
        .modify(|l: &mut Lease| l.metadata.managed_fields = None)
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let writer = LeaseWriter::new(
        client.clone(),
        &opts.namespace,
        &opts.identity,
        opts.config.clone(),
    );
    // Attached address Leases are written with a one-day duration (see `attach`).
    let mut attached_cfg = opts.config.clone();
    attached_cfg.lease_duration = Duration::from_secs(ATTACHED_DURATION_SECONDS as u64);
    let attached_writer = LeaseWriter::new(client, &opts.namespace, &opts.identity, attached_cfg);
    let timeout = opts.config.renew_deadline;
    let io = Io {
        writer,
        attached_writer,
        done_tx,
        events,
        held_tx,
        timeout,
    };
    let mut eng = Engine::new(opts, stats, Instant::now());
    io.flush(&mut eng);
    let mut waiters: Vec<oneshot::Sender<ShutdownReport>> = Vec::new();
    let mut cmds_open = true;
    loop {
        let now = Instant::now();
        if eng.shutdown_complete(now) {
            break;
        }
        let next = eng.next_wake();
        tokio::select! {
            Some(d) = done_rx.recv() => eng.on_done(d, Instant::now()),
            cmd = cmds.recv(), if cmds_open => {
                let now = Instant::now();
                match cmd {
                    Some(Cmd::SetWants(d)) => eng.on_desired(d, now),
                    Some(Cmd::ReleasedApplied(n)) => eng.on_released_applied(n, now),
                    Some(Cmd::Shutdown(tx)) => {
                        waiters.push(tx);
                        eng.start_shutdown(now);
                    }
                    None => {
                        cmds_open = false;
                        eng.start_shutdown(now);
                    }
                }
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => eng.on_watch_delivery(ev, Instant::now()),
                Some(Err(err)) => eng.on_watch_error(Instant::now(), &err.to_string()),
                None => {
                    tracing::warn!("lease watch ended");
                    break;
                }
            },
            _ = crate::sleep_until_opt(next) => eng.on_timers(Instant::now()),
        }
        io.flush(&mut eng);
    }
    let report = eng.finish();
    io.flush(&mut eng);
    for tx in waiters {
        let _ = tx.send(report.clone());
    }
}

/// The driver's side of the effects: channels out and the writers.
struct Io {
    writer: LeaseWriter,
    attached_writer: LeaseWriter,
    done_tx: mpsc::UnboundedSender<Done>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    held_tx: watch::Sender<BTreeSet<String>>,
    timeout: Duration,
}

impl Io {
    /// Carries out what the core asked for, in order.
    fn flush(&self, eng: &mut Engine) {
        for eff in eng.effects.drain(..) {
            match eff {
                Effect::Event(ev) => {
                    let _ = self.events.send(ev);
                }
                Effect::Held { name, held } => {
                    self.held_tx.send_if_modified(|cur| {
                        if held {
                            cur.insert(name)
                        } else {
                            cur.remove(&name)
                        }
                    });
                }
                Effect::Write(req) => self.send(req),
            }
        }
    }

    /// Sends one write as a task of its own; its result comes back as a [`Done`].
    fn send(&self, req: Box<WriteReq>) {
        let writer = if req.attached {
            self.attached_writer.clone()
        } else {
            self.writer.clone()
        };
        let tx = self.done_tx.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let WriteReq {
                name,
                op,
                used_rv,
                object,
                labels,
                annotations,
                ..
            } = *req;
            let wall_sent = Some(crate::lease::micro_now());
            let sent_at = Instant::now();
            let result = match op {
                Op::Create => writer
                    .create(&name, &labels, &annotations, timeout)
                    .await
                    .map(Some),
                Op::Update(kind) => {
                    let action = match kind {
                        OpKind::Acquire(t) => Action::Acquire { transitions: t },
                        OpKind::Renew => Action::Renew,
                        OpKind::Release | OpKind::Clear | OpKind::Fence => Action::Release,
                    };
                    match &object {
                        Some(obj) => {
                            // The holder's release leaves the metadata as it is (only the
                            // holder writes what a lease serves). A clear or a fence, written by
                            // another node from a base rebuilt from the watched record, carries
                            // our labels (the watch's selector) so the Lease stays visible.
                            let release = kind == OpKind::Release;
                            let (l, a) = if release {
                                (None, None)
                            } else {
                                (Some(&labels), Some(&annotations))
                            };
                            writer.update(&action, obj, l, a, timeout).await.map(Some)
                        }
                        None => Err(WriteError {
                            kind: WriteFailure::Rejected,
                            message: "no observed object to update".into(),
                            code: None,
                        }),
                    }
                }
                Op::Delete => match used_rv.as_deref() {
                    Some(rv) => writer.delete(&name, rv, timeout).await.map(|_| None),
                    None => Err(WriteError {
                        kind: WriteFailure::Rejected,
                        message: "no resourceVersion to delete with".into(),
                        code: None,
                    }),
                },
            };
            let _ = tx.send(Done {
                name,
                op,
                sent_at,
                wall_sent,
                used_rv,
                result,
            });
        });
    }
}

/// Exponential watch reconnect backoff (doubling from `min` to `max`), reset on success.
struct WatchBackoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl WatchBackoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        WatchBackoff { min, max, cur: min }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.cur = self.min;
    }
}
