//! The thin tokio loop around the engine: the Lease watch (with its backoff), commands, write
//! results and timers in; shutdown.

use super::*;

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
    let writer = LeaseWriter::new(client, &opts.namespace, &opts.identity, opts.config.clone());
    let mut eng = Engine {
        opts,
        writer,
        entries: HashMap::new(),
        timers: BTreeSet::new(),
        initialized: false,
        init_buf: None,
        events,
        done_tx,
        queue_urgent: VecDeque::new(),
        queue_rest: VecDeque::new(),
        in_flight: 0,
        shutting_down: None,
        shutdown_waiters: Vec::new(),
        report: ShutdownReport::default(),
        stats,
        held_tx,
        ranks: HashMap::new(),
        last_seen: HashMap::new(),
        presence: None,
        next_handover: Instant::now(),
        watch_down: None,
        outage: None,
    };
    if eng.opts.presence {
        let name = crate::lease::presence_name(&eng.opts.identity);
        eng.presence = Some(name.clone());
        eng.on_desired(BTreeMap::new(), Instant::now());
    }
    let mut cmds_open = true;
    loop {
        let now = Instant::now();
        if eng.shutdown_complete(now) {
            break;
        }
        let next = eng.timers.first().map(|(t, _)| *t);
        let shutdown_deadline = eng.shutting_down;
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = earliest(earliest(next, shutdown_deadline), eng.watch_down);
        tokio::select! {
            Some(d) = done_rx.recv() => eng.on_done(d, Instant::now()),
            cmd = cmds.recv(), if cmds_open => {
                let now = Instant::now();
                match cmd {
                    Some(Cmd::SetDesired(d)) => eng.on_desired(d, now),
                    Some(Cmd::Shutdown(tx)) => start_shutdown(&mut eng, Some(tx), now),
                    None => {
                        cmds_open = false;
                        if eng.shutting_down.is_none() {
                            start_shutdown(&mut eng, None, now);
                        }
                    }
                }
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    let now = Instant::now();
                    eng.note_reachable(now);
                    // Restart the clocks before applying what the watch brings.
                    let resync = eng.watch_down.is_some();
                    if resync {
                        eng.restart_clocks(now);
                    }
                    eng.on_watch(ev, now);
                    if resync {
                        eng.on_watch_resync(now);
                    }
                }
                Some(Err(err)) => eng.on_watch_error(Instant::now(), &err.to_string()),
                None => {
                    tracing::warn!("lease watch ended");
                    break;
                }
            },
            _ = crate::sleep_until_opt(next) => {
                let now = Instant::now();
                if eng.watch_down.is_some_and(|t| t <= now) {
                    eng.on_watch_resync(now);
                }
                let mut due: Vec<String> = Vec::new();
                while let Some((t, _)) = eng.timers.first() {
                    if *t > now {
                        break;
                    }
                    if let Some((_, n)) = eng.timers.pop_first() {
                        if let Some(e) = eng.entries.get_mut(&n) {
                            e.wake = None;
                        }
                        due.push(n);
                    }
                }
                for n in due {
                    eng.step(&n, now);
                }
            }
        }
    }
    // Leases we still hold (could not release in time, or the watch ended): report them lost.
    let presence = eng.presence.clone();
    let still: Vec<String> = eng
        .entries
        .iter()
        .filter(|(n, e)| e.reported != Reported::NotHeld && presence.as_ref() != Some(*n))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &still {
        if let Some(e) = eng.entries.get_mut(n) {
            e.reported = Reported::NotHeld;
        }
        eng.emit(LeaseEvent::Lost {
            name: n.clone(),
            holder: None,
        });
        eng.publish_held(n, false);
    }
    eng.report.not_released = still;
    for tx in eng.shutdown_waiters.drain(..) {
        let _ = tx.send(eng.report.clone());
    }
}

fn start_shutdown(eng: &mut Engine, tx: Option<oneshot::Sender<ShutdownReport>>, now: Instant) {
    if let Some(tx) = tx {
        eng.shutdown_waiters.push(tx);
    }
    if eng.shutting_down.is_none() {
        eng.shutting_down = Some(now + eng.opts.config.renew_deadline);
        let names: Vec<String> = eng.entries.keys().cloned().collect();
        for n in names {
            eng.step(&n, now);
        }
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
