//! The engine's pure core, fed by hand: watch events, write results and instants in, effects
//! out. No clock, no API server, no tokio runtime.

use super::*;
use crate::lease::attach::{ANN_ATTACHED_TO, ATTACHED_DURATION_SECONDS};
use crate::lease::decide::Record;
use crate::lease::presence_name;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

const MS: Duration = Duration::from_millis(1);

/// The presence timings the attached scheme defaults to: 1 s / 600 ms / 200 ms.
fn cfg() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(200),
        rank_step: Duration::from_millis(100),
    }
}

fn lease(name: &str, holder: &str, rv: u64, duration: i32, attached: Option<&str>) -> Lease {
    let mut l = Lease::default();
    l.metadata.name = Some(name.into());
    l.metadata.namespace = Some("ns".into());
    l.metadata.resource_version = Some(rv.to_string());
    if let Some(p) = attached {
        l.metadata.annotations = Some(BTreeMap::from([(ANN_ATTACHED_TO.into(), p.into())]));
    }
    l.spec = Some(LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(duration),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    });
    l
}

/// What a successful write of `req` would return (the API server's answer), at `rv`.
fn answer(req: &WriteReq, me: &str, rv: u64) -> Lease {
    let mut l = req.object.clone().unwrap_or_default();
    l.metadata.name = Some(req.name.clone());
    l.metadata.resource_version = Some(rv.to_string());
    let prev = l.spec.as_ref().map(|_| Record::from_lease(&l));
    let action = match req.op {
        Op::Create => Action::Create,
        Op::Update(OpKind::Acquire(t)) => Action::Acquire { transitions: t },
        Op::Update(OpKind::Renew) => Action::Renew,
        Op::Update(_) | Op::Delete => Action::Release,
    };
    let mut c = cfg();
    if req.attached {
        c.lease_duration = Duration::from_secs(ATTACHED_DURATION_SECONDS as u64);
    }
    let now = crate::lease::micro_now();
    l.spec = spec_for_test(&action, me, prev.as_ref(), &now, &c);
    if !matches!(action, Action::Release) {
        let ann = l.metadata.annotations.get_or_insert_with(BTreeMap::new);
        ann.extend(req.annotations.clone());
    }
    l
}

fn spec_for_test(
    a: &Action,
    me: &str,
    prev: Option<&Record>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime,
    c: &LeaseConfig,
) -> Option<LeaseSpec> {
    crate::lease::decide::spec_for(a, me, prev, now, c)
}

/// An agent core for `me` whose Lease watch has listed `existing` at `t0`; told nothing yet.
fn synced(me: &str, existing: Vec<Lease>, t0: Instant) -> Engine {
    let opts = EngineOptions::agent("ns", me, cfg());
    let mut eng = Engine::new(opts, Arc::new(EngineStats::default()), t0);
    eng.on_watch(watcher::Event::Init, t0);
    for l in existing {
        eng.on_watch(watcher::Event::InitApply(l), t0);
    }
    eng.on_watch(watcher::Event::InitDone, t0);
    eng
}

/// What an agent wants: each of `names` (tagged `group-<name>`), candidates `cands`.
fn wants(names: &[&str], cands: &[&str]) -> BTreeMap<String, LeaseWant> {
    let cands = Arc::new(cands.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                LeaseWant {
                    candidates: cands.clone(),
                    tag: Some(Arc::from(format!("group-{n}"))),
                    ..LeaseWant::default()
                },
            )
        })
        .collect()
}

/// `holder`'s presence Lease (rv 10) and `n` address Leases attached to it (rvs from `rv`);
/// returns the address names and every Lease.
fn held_by(holder: &str, n: usize, rv: u64) -> (Vec<String>, Vec<Lease>) {
    let p = presence_name(holder);
    let addrs: Vec<String> = (0..n).map(|i| format!("ferrolb-{i:020x}")).collect();
    let mut existing = vec![lease(&p, holder, 10, 1, None)];
    for (i, a) in addrs.iter().enumerate() {
        existing.push(lease(
            a,
            holder,
            rv + i as u64,
            ATTACHED_DURATION_SECONDS,
            Some(&p),
        ));
    }
    (addrs, existing)
}

/// The address Leases `writes` take over (acquisitions), by name.
fn taken(writes: &[WriteReq]) -> BTreeSet<&str> {
    writes
        .iter()
        .filter(|r| matches!(r.op, Op::Update(OpKind::Acquire(_))))
        .map(|r| r.name.as_str())
        .collect()
}

/// `b` (candidates a, b) wanting three address Leases that live `a` holds, attached to a's
/// presence; returns b and the addresses.
fn b_beside_a_holding_three(t0: Instant) -> (Core, Vec<String>) {
    let (addrs, existing) = held_by("a", 3, 11);
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut b = Core::start("b", existing, &want, &["a", "b"], t0);
    assert!(b.writes().is_empty(), "a is alive");
    (b, addrs)
}

struct Core {
    eng: Engine,
    me: String,
    rv: u64,
}

impl Core {
    /// An agent core for `me`, its watch synced with `existing`, wanting `want` (candidates
    /// `cands`); its own presence Lease created (answer fed back) at `t0`.
    fn start(me: &str, existing: Vec<Lease>, want: &[&str], cands: &[&str], t0: Instant) -> Core {
        let mut eng = synced(me, existing, t0);
        eng.on_desired(wants(want, cands), t0);
        let mut core = Core {
            eng,
            me: me.into(),
            rv: 1000,
        };
        let w = core.writes();
        let p = presence_name(me);
        assert!(
            w.iter().any(|r| r.name == p && r.op == Op::Create),
            "presence created first: {w:?}"
        );
        core.answer_all(w, t0);
        core
    }

    fn writes(&mut self) -> Vec<WriteReq> {
        let mut out = Vec::new();
        self.eng.effects.retain(|e| match e {
            Effect::Write(w) => {
                out.push((**w).clone());
                false
            }
            _ => true,
        });
        out
    }

    fn events(&mut self) -> Vec<LeaseEvent> {
        let mut out = Vec::new();
        self.eng.effects.retain(|e| match e {
            Effect::Event(ev) => {
                out.push(ev.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Feeds a successful answer to each write (sent at `at`).
    fn answer_all(&mut self, writes: Vec<WriteReq>, at: Instant) {
        for w in writes {
            self.rv += 1;
            let l = answer(&w, &self.me, self.rv);
            self.eng.on_done(
                Done {
                    name: w.name.clone(),
                    op: w.op,
                    sent_at: at,
                    wall_sent: None,
                    used_rv: w.used_rv.clone(),
                    result: Ok(Some(l)),
                },
                at,
            );
        }
    }

    /// Runs the timers up to `until` in steps of `tick`, answering presence renewals at once
    /// (the API server is healthy); returns every write sent.
    fn run(&mut self, from: Instant, until: Instant, tick: Duration) -> Vec<WriteReq> {
        let mut all = Vec::new();
        let mut t = from;
        while t <= until {
            self.eng.on_timers(t);
            let w = self.writes();
            all.extend(w.iter().cloned());
            self.answer_all(w, t);
            t += tick;
        }
        all
    }

    /// Runs the timers from `*t` in 10 ms steps until our presence renewal goes out; returns
    /// it, `*t` left at the instant it was sent. Other writes are dropped unanswered.
    fn next_presence_write(&mut self, t: &mut Instant) -> WriteReq {
        let p = presence_name(&self.me);
        loop {
            *t += 10 * MS;
            self.eng.on_timers(*t);
            if let Some(w) = self.writes().into_iter().find(|r| r.name == p) {
                return w;
            }
        }
    }

    fn timers_for(&self, name: &str) -> usize {
        self.eng.timers.iter().filter(|(_, n)| n == name).count()
    }
}

/// A write of `w` answered "unreachable" (connection refused, timeout, 5xx) at `at`.
fn unreachable(a: &mut Core, w: &WriteReq, at: Instant) {
    a.eng.on_done(
        Done {
            name: w.name.clone(),
            op: w.op,
            sent_at: at,
            wall_sent: None,
            used_rv: w.used_rv.clone(),
            result: Err(WriteError {
                kind: WriteFailure::Unreachable,
                message: "no answer within 600ms".into(),
                code: None,
            }),
        },
        at,
    );
}

/// `a` (candidates a, b) wanting the one address `b` holds, b's presence seen at `t0`.
/// Returns a, b's presence name and the address.
fn beside_b_holding_one(t0: Instant) -> (Core, String, &'static str) {
    let pb = presence_name("b");
    let addr = "ferrolb-00000000000000000001";
    let existing = vec![
        lease(&pb, "b", 10, 1, None),
        lease(addr, "b", 11, ATTACHED_DURATION_SECONDS, Some(&pb)),
    ];
    let a = Core::start("a", existing, &[addr], &["a", "b"], t0);
    (a, pb, addr)
}

#[test]
fn a_dead_holders_presence_is_fenced_once_then_its_addresses_are_taken() {
    let t0 = Instant::now();
    let pb = presence_name("b");
    let (addrs, existing) = held_by("b", 20, 20);
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut a = Core::start("a", existing, &want, &["a", "b"], t0);
    // b is alive (its presence was just seen): nothing to do, and no timer per address.
    assert!(a.writes().is_empty());
    for n in &addrs {
        assert_eq!(a.timers_for(n), 0, "{n} has a timer of its own");
    }
    assert_eq!(a.timers_for(&pb), 1, "b's presence expiry");
    // b renews its presence twice: still nothing for the addresses.
    for (k, rv) in [(1u32, 60u64), (2, 61)] {
        let mut l = lease(&pb, "b", rv, 1, None);
        l.spec.as_mut().unwrap().renew_time = Some(crate::lease::micro_now());
        l.spec.as_mut().unwrap().lease_transitions = Some(k as i32);
        a.eng.on_watch(watcher::Event::Apply(l), t0 + 200 * k * MS);
    }
    let seen = t0 + 400 * MS;
    // Until b's presence has been seen unrenewed for its duration, only our presence is written.
    let w = a.run(seen, seen + 990 * MS, 10 * MS);
    assert!(
        w.iter().all(|r| r.name == presence_name("a")),
        "{:?}",
        w.iter().map(|r| (&r.name, r.op)).collect::<Vec<_>>()
    );
    // Then one fence, with the resourceVersion under which b's presence was seen unrenewed.
    a.eng.on_timers(seen + 1000 * MS);
    let w = a.writes();
    let fences: Vec<&WriteReq> = w.iter().filter(|r| r.name == pb).collect();
    assert_eq!(fences.len(), 1, "{w:?}");
    assert_eq!(fences[0].op, Op::Update(OpKind::Fence));
    assert_eq!(fences[0].used_rv.as_deref(), Some("61"));
    assert!(
        w.iter().all(|r| !addrs.contains(&r.name)),
        "no address before the fence"
    );
    let at = seen + 1000 * MS;
    a.answer_all(w, at);
    // The fence freed every address: a (rank 0 once b is left out) takes each with one
    // preconditioned write, attached to its own presence, with the one-day duration.
    let w = a.writes();
    let taken: BTreeSet<&str> = w
        .iter()
        .filter(|r| matches!(r.op, Op::Update(OpKind::Acquire(1))))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(taken.len(), addrs.len(), "{w:?}");
    for r in &w {
        assert!(r.attached);
        assert_eq!(
            r.annotations.get(ANN_ATTACHED_TO),
            Some(&presence_name("a"))
        );
        assert!(r
            .object
            .as_ref()
            .unwrap()
            .metadata
            .resource_version
            .is_some());
    }
    a.answer_all(w, at);
    let acquired = a
        .events()
        .into_iter()
        .filter(|e| matches!(e, LeaseEvent::Acquired { .. }))
        .count();
    assert_eq!(acquired, addrs.len());
    assert_eq!(EngineStats::get(&a.eng.stats.fences), 1);
    // The takeover as the L2Announcement reports it: b stopped serving its addresses at its
    // last presence renewal we saw (t0 + 400 ms), not when its address Leases were last
    // written (listed at t0: attached Leases are never renewed).
    for n in &addrs {
        let t = a.eng.stats.takeovers.take(n).expect("takeover noted");
        assert_eq!(t.kind, TakeoverKind::Expired);
        assert_eq!(t.from.as_deref(), Some("b"));
        assert_eq!(t.free_since, seen, "{n}");
    }
    // Steady state afterwards: 10 s of timers write our presence only, 5 times a second.
    let w = a.run(at, at + 10_000 * MS, 10 * MS);
    assert!(
        w.iter().all(|r| !addrs.contains(&r.name)),
        "{:?}",
        w.iter().map(|r| (&r.name, r.op)).collect::<Vec<_>>()
    );
    let renewals = w.iter().filter(|r| r.name == presence_name("a")).count();
    assert!((45..=52).contains(&renewals), "{renewals} presence writes");
    for n in &addrs {
        assert!(a.timers_for(n) <= 1, "{n}: at most the 12-hourly refresh");
    }
}

#[test]
fn a_fence_refused_with_409_takes_nothing() {
    let t0 = Instant::now();
    let (mut a, pb, addr) = beside_b_holding_one(t0);
    let _ = a.run(t0, t0 + 990 * MS, 10 * MS);
    a.eng.on_timers(t0 + 1000 * MS);
    let w = a.writes();
    let fence = w.iter().find(|r| r.name == pb).expect("fence").clone();
    // b renewed meanwhile (our watch was late): 409.
    a.eng.on_done(
        Done {
            name: pb.clone(),
            op: fence.op,
            sent_at: t0 + 1000 * MS,
            wall_sent: None,
            used_rv: fence.used_rv.clone(),
            result: Err(WriteError {
                kind: WriteFailure::Conflict,
                message: "409".into(),
                code: Some(409),
            }),
        },
        t0 + 1010 * MS,
    );
    let w = a.writes();
    assert!(w.iter().all(|r| r.name != addr && r.name != pb), "{w:?}");
    // The watch shows the renewal: b is alive, a waits again (no fence, no takeover).
    let mut l = lease(&pb, "b", 12, 1, None);
    l.spec.as_mut().unwrap().lease_transitions = Some(1);
    a.eng.on_watch(watcher::Event::Apply(l), t0 + 1020 * MS);
    let w = a.run(t0 + 1020 * MS, t0 + 1900 * MS, 10 * MS);
    assert!(w.iter().all(|r| r.name != addr && r.name != pb), "{w:?}");
    assert!(a.events().is_empty());
}

#[test]
fn losing_our_presence_stops_every_address_and_each_is_confirmed_before_answering_again() {
    let t0 = Instant::now();
    let addrs: Vec<String> = (0..3).map(|i| format!("ferrolb-{i:020x}")).collect();
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut a = Core::start("a", Vec::new(), &want, &["a"], t0);
    // Absent and wanted: created, attached.
    let w = a.writes();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().all(|r| r.op == Op::Create && r.attached));
    a.answer_all(w, t0);
    assert_eq!(a.events().len(), 3);
    // Our presence renewal is refused (409). Within our renew deadline that cannot be a fence
    // (a node fences only a presence it saw unrenewed for a lease duration): most likely our
    // own earlier write, landed late. Nothing stops until the watch shows who won.
    let _ = a.run(t0, t0 + 150 * MS, 10 * MS);
    a.eng.on_timers(t0 + 200 * MS);
    let w = a.writes();
    let renewal = w
        .iter()
        .find(|r| r.name == presence_name("a"))
        .expect("renewal")
        .clone();
    a.eng.on_done(
        Done {
            name: renewal.name.clone(),
            op: renewal.op,
            sent_at: t0 + 200 * MS,
            wall_sent: None,
            used_rv: renewal.used_rv.clone(),
            result: Err(WriteError {
                kind: WriteFailure::Conflict,
                message: "409".into(),
                code: Some(409),
            }),
        },
        t0 + 210 * MS,
    );
    assert_eq!(a.events(), Vec::new());
    // The watch shows our presence released (fenced): every address stops at once; we take
    // the presence back (a new epoch), then confirm each address with one preconditioned write
    // before answering it again.
    a.rv += 1;
    let mut fenced = lease(&presence_name("a"), "", a.rv, 1, None);
    fenced.spec.as_mut().unwrap().lease_transitions = Some(0);
    a.eng.on_watch(watcher::Event::Apply(fenced), t0 + 300 * MS);
    let ev = a.events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, LeaseEvent::Lost { .. }))
            .count(),
        3,
        "{ev:?}"
    );
    // (After the retry period that follows a refused write.)
    assert!(a.writes().is_empty());
    a.eng.on_timers(t0 + 410 * MS);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == presence_name("a") && matches!(r.op, Op::Update(OpKind::Acquire(_)))),
        "{w:?}"
    );
    assert!(w.iter().all(|r| !addrs.contains(&r.name)), "{w:?}");
    a.answer_all(w, t0 + 410 * MS);
    assert!(a.events().is_empty(), "nothing answered before confirming");
    let w = a.writes();
    assert_eq!(
        w.iter()
            .filter(|r| addrs.contains(&r.name) && r.op == Op::Update(OpKind::Renew))
            .count(),
        3,
        "{w:?}"
    );
    a.answer_all(w, t0 + 420 * MS);
    let ev = a.events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, LeaseEvent::Acquired { .. }))
            .count(),
        3,
        "{ev:?}"
    );
}

#[test]
fn an_unreachable_api_server_makes_addresses_sticky_not_lost() {
    let t0 = Instant::now();
    let addr = "ferrolb-00000000000000000001";
    let mut a = Core::start("a", Vec::new(), &[addr], &["a"], t0);
    let w = a.writes();
    a.answer_all(w, t0);
    // Every event carries the caller's tag back (the agent's group key).
    let tag = Some(Arc::from(format!("group-{addr}")));
    assert_eq!(
        a.events(),
        vec![LeaseEvent::Acquired {
            name: addr.into(),
            tag: tag.clone()
        }]
    );
    // Every presence renewal fails as unreachable from now on.
    let mut t = t0;
    while t < t0 + 700 * MS {
        t += 10 * MS;
        a.eng.on_timers(t);
        for w in a.writes() {
            unreachable(&mut a, &w, t);
        }
    }
    // Past the renew deadline (600 ms): Unreachable (sticky mode may ride it out), not Lost.
    assert_eq!(
        a.events(),
        vec![LeaseEvent::Unreachable {
            name: addr.into(),
            tag
        }]
    );
}

#[test]
fn presence_renewals_never_wait_behind_a_burst_of_address_writes() {
    let t0 = Instant::now();
    let addrs: Vec<String> = (0..3).map(|i| format!("ferrolb-{i:020x}")).collect();
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let opts = EngineOptions::agent("ns", "a", cfg());
    let mut a = Core::start("a", Vec::new(), &[], &["a"], t0);
    a.eng.opts = EngineOptions {
        max_concurrent_writes: 1,
        ..opts
    };
    a.eng.write_limit = 1;
    a.eng.on_desired(wants(&want, &["a"]), t0);
    // One create in flight (never answered: a slow API server), the others queued.
    let w = a.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    // The presence renewal is due: it is sent at once, not queued behind the creates.
    a.eng.on_timers(t0 + 200 * MS);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == presence_name("a") && r.op == Op::Update(OpKind::Renew)),
        "{w:?}"
    );
}

#[test]
fn a_restarted_holder_releases_nothing_before_it_knows_what_it_wants() {
    // "a" restarts while its presence and its address Lease are still valid: until the agent
    // says what it wants (its caches are syncing), the held address Lease is left alone; once
    // it is wanted, it is kept (one confirming renewal); once it is not, it is released.
    let t0 = Instant::now();
    let pa = presence_name("a");
    let addr = "ferrolb-00000000000000000001";
    let mut existing = vec![
        lease(&pa, "a", 10, 1, None),
        lease(addr, "a", 11, ATTACHED_DURATION_SECONDS, Some(&pa)),
    ];
    for l in &mut existing {
        // Written just before the restart, as the previous process left them.
        let spec = l.spec.as_mut().unwrap();
        spec.acquire_time = Some(crate::lease::micro_now());
        spec.renew_time = Some(crate::lease::micro_now());
    }
    let mut core = Core {
        eng: synced("a", existing, t0),
        me: "a".into(),
        rv: 1000,
    };
    let w = core.run(t0, t0 + 3 * cfg().lease_duration, 50 * MS);
    assert!(
        w.iter().all(|r| r.name != addr),
        "wrote the held address Lease before being told what is wanted: {w:?}"
    );
    assert!(
        w.iter().any(|r| r.name == pa),
        "the presence Lease is renewed meanwhile: {w:?}"
    );
    let t1 = t0 + 3 * cfg().lease_duration + MS;
    let cands = Arc::new(vec!["a".to_string(), "b".to_string()]);
    let want = BTreeMap::from([(
        addr.to_string(),
        LeaseWant {
            candidates: cands,
            ..LeaseWant::default()
        },
    )]);
    core.eng.on_desired(want, t1);
    let w = core.run(t1, t1 + cfg().lease_duration, 50 * MS);
    // Written before the restart, so confirmed with one renewal as its holder: no release, no
    // new acquisition (leaseTransitions unchanged).
    let to_addr: Vec<&WriteReq> = w.iter().filter(|r| r.name == addr).collect();
    assert!(
        to_addr.len() == 1 && to_addr[0].op == Op::Update(OpKind::Renew),
        "a wanted, held Lease is confirmed with exactly one renewal: {to_addr:?}"
    );
    let t2 = t1 + cfg().lease_duration + MS;
    core.eng.on_desired(BTreeMap::new(), t2);
    let w = core.run(t2, t2 + cfg().lease_duration, 50 * MS);
    assert!(
        w.iter()
            .any(|r| r.name == addr && r.op == Op::Update(OpKind::Release)),
        "an unwanted held Lease is released once the agent says so: {w:?}"
    );
}

/// A Lease as the watch shows it after its holder released it (holder cleared).
fn released(name: &str, rv: u64, attached: Option<&str>) -> Lease {
    let mut l = lease(name, "", rv, 1, attached);
    l.spec.as_mut().unwrap().holder_identity = None;
    l.spec.as_mut().unwrap().lease_transitions = Some(1);
    l
}

/// `a` holding three address Leases whose other candidate is `b`, b's presence Lease seen
/// live (marked as reading attached Leases or not); returns a and the addresses.
fn a_holding_three_beside_b(t0: Instant, b_reads_attached: bool) -> (Core, Vec<String>) {
    let pb = presence_name("b");
    let mut b = lease(&pb, "b", 10, 1, None);
    if b_reads_attached {
        b.metadata.annotations = Some(BTreeMap::from([(
            crate::lease::attach::ANN_READS_ATTACHED.into(),
            "true".into(),
        )]));
    }
    let addrs: Vec<String> = (0..3).map(|i| format!("ferrolb-{i:020x}")).collect();
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut a = Core::start("a", vec![b], &want, &["a", "b"], t0);
    // Past every rank wait (b never takes any): a creates all three.
    let w = a.run(t0, t0 + 400 * MS, 10 * MS);
    let created = w.iter().filter(|r| r.op == Op::Create).count();
    assert_eq!(created, 3, "{w:?}");
    let held = a
        .events()
        .iter()
        .filter(|e| matches!(e, LeaseEvent::Acquired { .. }))
        .count();
    assert_eq!(held, 3);
    (a, addrs)
}

#[test]
fn a_graceful_stop_beside_a_previous_format_node_releases_its_presence_only_after_its_addresses() {
    // b's presence does not say it reads attached Leases (an agent of the previous format):
    // it could not take an address attached to a released presence, so each is released. And
    // released together, the presence release could reach the other nodes first: they would
    // take the address Leases (still naming us) with a stale resourceVersion, lose with 409
    // to our own address release, and wait a retry period (graceful p99 220 ms in the lab).
    let t0 = Instant::now();
    let pa = presence_name("a");
    let (mut a, addrs) = a_holding_three_beside_b(t0, false);
    let t1 = t0 + 450 * MS;
    a.eng.start_shutdown(t1);
    let w = a.writes();
    let releases: BTreeSet<&str> = w
        .iter()
        .filter(|r| r.op == Op::Update(OpKind::Release))
        .map(|r| r.name.as_str())
        .collect();
    let expect: BTreeSet<&str> = addrs.iter().map(String::as_str).collect();
    assert_eq!(releases, expect, "every address released at once: {w:?}");
    assert!(
        w.iter().all(|r| r.name != pa),
        "presence released together with the addresses: {w:?}"
    );
    // Two of three answered: still not the presence.
    let mut w = w;
    let last = w.pop().unwrap();
    a.answer_all(w, t1 + 5 * MS);
    assert!(a.writes().iter().all(|r| r.name != pa));
    // The last one answered: now the presence, released.
    a.answer_all(vec![last], t1 + 10 * MS);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == pa && r.op == Op::Update(OpKind::Release)),
        "{w:?}"
    );
    a.answer_all(w, t1 + 15 * MS);
    assert!(a.eng.shutdown_complete(t1 + 15 * MS));
}

#[test]
fn a_graceful_stop_beside_nodes_that_read_attached_leases_releases_only_its_presence() {
    // One write frees all: b takes each address attached to a's released presence.
    let t0 = Instant::now();
    let pa = presence_name("a");
    let (mut a, addrs) = a_holding_three_beside_b(t0, true);
    let t1 = t0 + 450 * MS;
    a.eng.start_shutdown(t1);
    let released: BTreeSet<String> = a
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LeaseEvent::Released { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(
        released,
        addrs.iter().cloned().collect(),
        "reported released"
    );
    let w = a.writes();
    assert!(
        matches!(&w[..], [r] if r.name == pa && r.op == Op::Update(OpKind::Release)),
        "only the presence released: {w:?}"
    );
    assert!(!a.eng.shutdown_complete(t1 + MS), "before its answer");
    a.answer_all(w, t1 + 5 * MS);
    assert!(a.writes().is_empty());
    assert!(a.eng.shutdown_complete(t1 + 5 * MS));
    let report = a.eng.finish();
    let in_report: BTreeSet<String> = report.released.iter().cloned().collect();
    assert_eq!(in_report, addrs.iter().cloned().collect(), "{report:?}");
    assert!(report.not_released.is_empty(), "{report:?}");
    assert_eq!(a.events(), Vec::new(), "nothing reported held again");
}

#[test]
fn a_graceful_stop_whose_presence_release_fails_reports_the_addresses_not_released() {
    let t0 = Instant::now();
    let (mut a, addrs) = a_holding_three_beside_b(t0, true);
    let t1 = t0 + 450 * MS;
    a.eng.start_shutdown(t1);
    let w = a.writes();
    assert_eq!(w.len(), 1, "{w:?}");
    unreachable(&mut a, &w[0], t1 + 5 * MS);
    let report = a.eng.finish();
    let not: BTreeSet<String> = report.not_released.iter().cloned().collect();
    assert!(
        addrs.iter().all(|n| not.contains(n)),
        "still attached to our live presence: {report:?}"
    );
}

/// Every agent keeps an entry per address of the cluster: what only a refused write, a waiting
/// takeover or a hand-over back-off needs is allocated only then ([`super::Rare`]).
#[test]
fn addresses_held_by_a_live_node_keep_nothing_out_of_line() {
    let t0 = Instant::now();
    let (mut b, addrs) = b_beside_a_holding_three(t0);
    b.eng.on_timers(t0 + 100 * MS);
    assert!(b.writes().is_empty(), "a is alive");
    for n in &addrs {
        let e = &b.eng.entries[n];
        assert!(e.rare.is_none(), "{n}: nothing rare set");
        assert!(
            e.takeover_rank.is_some(),
            "{n}: its takeover rank is cached"
        );
    }
}

/// The other side: b sees a's presence released while a's address Leases still name a (a
/// graceful stop that left them to it) and takes each at once (b is the only other candidate).
#[test]
fn addresses_attached_to_a_released_presence_are_taken_at_once() {
    let t0 = Instant::now();
    let pa = presence_name("a");
    let (mut b, addrs) = b_beside_a_holding_three(t0);
    let t1 = t0 + 300 * MS;
    b.eng
        .on_watch(watcher::Event::Apply(released(&pa, 20, None)), t1);
    let w = b.writes();
    assert_eq!(
        taken(&w),
        addrs.iter().map(String::as_str).collect(),
        "every address taken at once: {w:?}"
    );
    assert!(
        w.iter().all(|r| r.name != pa),
        "no fence of a released presence: {w:?}"
    );
}

#[test]
fn an_address_seen_released_after_a_lost_race_is_taken_at_once() {
    // "b" sees a's presence released first (an agent of an earlier build released it with
    // its addresses), takes a's address with the resourceVersion that still names "a" and loses
    // with 409 to a's own release. When the watch shows that release, b is the next-ranked live
    // node: it takes the address at once, not a retry period later.
    let t0 = Instant::now();
    let pa = presence_name("a");
    let addr = "ferrolb-00000000000000000001";
    let existing = vec![
        lease(&pa, "a", 10, 1, None),
        lease(addr, "a", 11, ATTACHED_DURATION_SECONDS, Some(&pa)),
    ];
    let mut b = Core::start("b", existing, &[addr], &["a", "b"], t0);
    assert!(b.writes().is_empty());
    let t1 = t0 + 100 * MS;
    b.eng
        .on_watch(watcher::Event::Apply(released(&pa, 12, None)), t1);
    let w = b.writes();
    let take = w
        .iter()
        .find(|r| r.name == addr)
        .expect("a's presence released: b takes the address")
        .clone();
    assert_eq!(take.used_rv.as_deref(), Some("11"));
    b.eng.on_done(
        Done {
            name: addr.into(),
            op: take.op,
            sent_at: t1,
            wall_sent: None,
            used_rv: take.used_rv.clone(),
            result: Err(WriteError {
                kind: WriteFailure::Conflict,
                message: "409".into(),
                code: Some(409),
            }),
        },
        t1 + 5 * MS,
    );
    assert!(b.writes().iter().all(|r| r.name != addr));
    assert!(
        b.eng.entries[addr].rare().conflict_rv.is_some(),
        "the refused resourceVersion is noted (out of line)"
    );
    let t2 = t1 + 10 * MS;
    b.eng
        .on_watch(watcher::Event::Apply(released(addr, 13, Some(&pa))), t2);
    assert!(
        b.eng.entries[addr].rare.is_none(),
        "the winner seen: nothing left out of line, and its allocation freed"
    );
    let w = b.writes();
    let take = w.iter().find(|r| r.name == addr);
    assert!(
        take.is_some_and(|r| matches!(r.op, Op::Update(OpKind::Acquire(_)))
            && r.used_rv.as_deref() == Some("13")),
        "the release seen: taken at once with its resourceVersion: {w:?}"
    );
}

#[test]
fn a_stop_with_releases_still_unanswered_releases_its_presence_at_half_the_renew_deadline() {
    // More addresses than the API server releases in time: the presence goes out anyway,
    // half the renew deadline into the stop, so the rest are free at once (not after a fence).
    // (Beside a previous-format node: the addresses are released one by one.)
    let t0 = Instant::now();
    let pa = presence_name("a");
    let (mut a, _) = a_holding_three_beside_b(t0, false);
    let t1 = t0 + 450 * MS;
    a.eng.start_shutdown(t1);
    let w = a.writes();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().all(|r| r.name != pa), "{w:?}");
    // The address releases are never answered.
    let half = cfg().renew_deadline / 2;
    let mut t = t1;
    while t < t1 + half {
        a.eng.on_timers(t);
        assert!(
            a.writes().iter().all(|r| r.name != pa),
            "presence before {t:?}"
        );
        t += 10 * MS;
    }
    a.eng.on_timers(t1 + half);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == pa && r.op == Op::Update(OpKind::Release)),
        "{w:?}"
    );
}

/// `node`'s presence Lease `name` as the watch shows it after a renewal (resourceVersion `rv`,
/// a renewTime of its own).
fn renewal(name: &str, node: &str, rv: u64) -> Lease {
    let mut l = lease(name, node, rv, 1, None);
    let renew = jiff::Timestamp::from_second(1_800_000_000 + rv as i64).unwrap();
    l.spec.as_mut().unwrap().renew_time = Some(MicroTime(renew));
    l
}

/// [`beside_b_holding_one`], then `a` cut from the API server from `t0` + 100 ms until `back`:
/// every write of a's fails as unreachable, and `b` renews no more.
fn cut_off_until(t0: Instant, back: Instant) -> (Core, String, &'static str) {
    let (mut a, pb, addr) = beside_b_holding_one(t0);
    let mut t = t0 + 100 * MS;
    while t < back {
        a.eng.on_timers(t);
        for w in a.writes() {
            assert_ne!(
                w.name,
                pb,
                "a fence sent during our own outage, at {:?}",
                t - t0
            );
            unreachable(&mut a, &w, t);
        }
        t += 10 * MS;
    }
    (a, pb, addr)
}

/// Issue 10 §5, the one-NIC switch reboot: every node is cut from the API server at once, so
/// our watch goes quiet without an error while b's renewals stop too. We send no fence while
/// our own writes fail (our presence is not live then), and after our outage ends b gets a full
/// lease duration plus the renew deadline to renew (fenced at once before the grace existed);
/// only then is it fenced, once.
#[test]
fn no_fence_during_our_own_outage_and_a_grace_after_it() {
    let t0 = Instant::now();
    let back = t0 + 3_000 * MS;
    let (mut a, pb, _) = cut_off_until(t0, back);
    // Our link is back: our next write gets through and ends the outage.
    let mut fenced_at = None;
    let mut t = back;
    while t < back + 3_000 * MS && fenced_at.is_none() {
        a.eng.on_timers(t);
        let w = a.writes();
        if w.iter()
            .any(|r| r.name == pb && r.op == Op::Update(OpKind::Fence))
        {
            fenced_at = Some(t);
        }
        a.answer_all(w.into_iter().filter(|r| r.name != pb).collect(), t);
        t += 10 * MS;
    }
    let fenced_at = fenced_at.expect("b fenced in the end");
    let grace = cfg().lease_duration + cfg().renew_deadline;
    assert!(
        fenced_at >= back + grace,
        "fenced {:?} after our outage ended; b had {grace:?} to renew",
        fenced_at - back
    );
    assert!(fenced_at <= back + grace + cfg().retry_period + 20 * MS);
    assert_eq!(EngineStats::get(&a.eng.stats.fences), 1);
}

/// The grace is for b's renewal: one that arrives within it keeps b's Leases where they are.
#[test]
fn a_renewal_within_the_grace_after_our_outage_keeps_the_holder() {
    let t0 = Instant::now();
    let back = t0 + 3_000 * MS;
    let (mut a, pb, addr) = cut_off_until(t0, back);
    // Back; b's first renewal, stuck behind its own dead connection, arrives 1.4 s later (past
    // one lease duration, within the grace); then b renews every retry period again.
    let renewed = back + 1_400 * MS;
    let mut t = back;
    let mut sent = Vec::new();
    let mut rv = 50;
    while t < back + 4_000 * MS {
        if t >= renewed && (t - renewed).as_millis().is_multiple_of(200) {
            rv += 1;
            a.eng
                .on_watch_delivery(watcher::Event::Apply(renewal(&pb, "b", rv)), t);
        }
        a.eng.on_timers(t);
        let w = a.writes();
        sent.extend(w.iter().map(|r| (r.name.clone(), r.op)));
        a.answer_all(w, t);
        t += 10 * MS;
    }
    assert!(sent.iter().all(|(n, _)| *n != pb && n != addr), "{sent:?}");
}

/// `a` holding one address Lease alone (candidates: a), answered and reported `Acquired`.
fn a_holding_one(t0: Instant) -> (Core, &'static str) {
    let addr = "ferrolb-00000000000000000001";
    let mut a = Core::start("a", Vec::new(), &[addr], &["a"], t0);
    let w = a.writes();
    a.answer_all(w, t0);
    assert!(matches!(a.events()[..], [LeaseEvent::Acquired { .. }]));
    (a, addr)
}

#[test]
fn a_release_is_reported_before_it_is_sent_so_nobody_takes_an_address_we_still_answer() {
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    // No longer wanted here (or handed over): the release goes out...
    a.eng.on_desired(BTreeMap::new(), t0 + MS);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == addr && r.op == Op::Update(OpKind::Release)),
        "{w:?}"
    );
    // ...and the caller was told before its answer came back: another node may take the
    // address the moment the watch shows the release, which can come before our answer.
    assert!(
        matches!(&a.events()[..], [LeaseEvent::Released { name, .. }] if name == addr),
        "Released before the write is answered"
    );
    // The answer adds nothing.
    a.answer_all(w, t0 + 2 * MS);
    assert_eq!(a.events(), Vec::new());
}

#[test]
fn a_release_that_does_not_land_is_reported_held_again() {
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    a.eng.on_desired(BTreeMap::new(), t0 + MS);
    let w: Vec<WriteReq> = a.writes().into_iter().filter(|r| r.name == addr).collect();
    assert!(matches!(&a.events()[..], [LeaseEvent::Released { .. }]));
    // The API server is gone: by our record we still hold it, so we answer again (and ride
    // the outage out as any holder would) rather than leave the address dark.
    unreachable(&mut a, &w[0], t0 + 2 * MS);
    assert!(
        matches!(&a.events()[..], [LeaseEvent::Acquired { name, .. }] if name == addr),
        "held again"
    );
}

#[test]
fn a_crashed_holder_is_fenced_on_time_when_our_writes_time_out_but_the_watch_shows_the_others() {
    // A saturated API server: our writes time out for a while, yet the watch keeps showing c's
    // presence renewals. b crashed at t0 and renews nothing: that is no outage of ours hiding
    // b's renewals, so b gets no grace and is fenced once its presence runs out.
    let t0 = Instant::now();
    let (mut a, pb, _) = beside_b_holding_one(t0);
    let pc = presence_name("c");
    let busy_until = t0 + 500 * MS;
    let mut fenced_at = None;
    let mut rv = 100;
    let mut t = t0 + 100 * MS;
    while t < t0 + 3_000 * MS && fenced_at.is_none() {
        if (t - t0).as_millis().is_multiple_of(200) {
            rv += 1;
            a.eng
                .on_watch_delivery(watcher::Event::Apply(renewal(&pc, "c", rv)), t);
        }
        a.eng.on_timers(t);
        let w = a.writes();
        if w.iter()
            .any(|r| r.name == pb && r.op == Op::Update(OpKind::Fence))
        {
            fenced_at = Some(t);
        }
        if t < busy_until {
            for r in &w {
                unreachable(&mut a, r, t);
            }
        } else {
            a.answer_all(w, t);
        }
        t += 10 * MS;
    }
    let fenced_at = fenced_at.expect("b fenced");
    assert!(
        fenced_at < t0 + cfg().lease_duration + 2 * cfg().retry_period,
        "fenced {:?} after b's last renewal (its lease: {:?})",
        fenced_at - t0,
        cfg().lease_duration
    );
}

/// `a` holding one address whose preferred node is `b` (alive), acquired at `t0`; b's presence
/// renewals are fed through the watch by [`run_beside_live_b`].
fn a_holding_one_preferred_by_b(t0: Instant) -> (Core, String) {
    let pb = presence_name("b");
    let addr = (0..64)
        .map(|i| format!("ferrolb-{i:020x}"))
        .find(|n| {
            let a = Core::start(
                "a",
                vec![lease(&pb, "b", 10, 1, None)],
                &[n],
                &["a", "b"],
                t0,
            );
            a.eng
                .entries
                .get(n)
                .and_then(|e| e.rank.as_ref())
                .is_some_and(|(_, p)| p.as_deref() == Some("b"))
        })
        .expect("some name prefers b");
    let mut a = Core::start(
        "a",
        vec![lease(&pb, "b", 10, 1, None)],
        &[&addr],
        &["a", "b"],
        t0,
    );
    // b's rank wait passes without b taking it: a creates it.
    let w = a.run(t0, t0 + 500 * MS, 10 * MS);
    assert!(
        w.iter().any(|r| r.name == addr && r.op == Op::Create),
        "{w:?}"
    );
    (a, addr)
}

/// Runs `a`'s timers from `from` to `until` (10 ms ticks) while b renews its presence every
/// 200 ms (fed with `on_watch`: a watch delivery would end our outage); `a`'s own writes fail as
/// unreachable inside `outage`, else succeed. Returns when `a` first sent a release of `addr`
/// (a hand-over), if it did.
fn run_beside_live_b(
    a: &mut Core,
    addr: &str,
    from: Instant,
    until: Instant,
    outage: std::ops::Range<Instant>,
) -> Option<Instant> {
    let pb = presence_name("b");
    let mut t = from;
    let mut rv = 5_000;
    while t <= until {
        if (t - from).as_millis().is_multiple_of(200) {
            rv += 1;
            a.eng
                .on_watch(watcher::Event::Apply(renewal(&pb, "b", rv)), t);
        }
        a.eng.on_timers(t);
        for w in a.writes() {
            if w.name == addr && w.op == Op::Update(OpKind::Release) {
                return Some(t);
            }
            if outage.contains(&t) {
                unreachable(a, &w, t);
            } else {
                a.answer_all(vec![w], t);
            }
        }
        t += 10 * MS;
    }
    None
}

#[test]
fn a_lease_is_handed_to_its_preferred_node_after_rebalance_after_but_not_right_after_an_outage() {
    let t0 = Instant::now();
    let after = EngineOptions::agent("ns", "a", cfg())
        .rebalance_after
        .unwrap();
    // Calm: handed over once it has been held for `rebalance_after`.
    let (mut a, addr) = a_holding_one_preferred_by_b(t0);
    let none = t0..t0;
    let at = run_beside_live_b(&mut a, &addr, t0 + 510 * MS, t0 + after + 2_000 * MS, none)
        .expect("handed over");
    assert!(
        at >= t0 + after && at <= t0 + after + 700 * MS,
        "{:?}",
        at - t0
    );
    // A short outage of our own writes (shorter than the renew deadline: nothing goes sticky)
    // just before the hand-over is due: none while it lasts, none for a lease duration after
    // it ended, then the hand-over.
    let (mut a, addr) = a_holding_one_preferred_by_b(t0);
    let (o0, o1) = (t0 + after - 200 * MS, t0 + after + 300 * MS);
    let at = run_beside_live_b(
        &mut a,
        &addr,
        t0 + 510 * MS,
        t0 + after + 3_000 * MS,
        o0..o1,
    )
    .expect("handed over after the outage");
    let calm = o1 + cfg().lease_duration;
    assert!(
        at >= calm && at <= calm + 300 * MS,
        "handed over {:?} after the outage ended",
        at - o1
    );
}

/// A saturated API server (issue 10, the 10k crash burst): our writes time out every other
/// moment (our presence stays live), the watch keeps delivering (no grace for the others), b is
/// dead and c alive, but nothing of either shows for 2.5 s. That is no proof that either died:
/// no fence until c's renewals show again, then b's alone.
#[test]
fn survivors_of_a_saturated_server_do_not_fence_each_other() {
    let t0 = Instant::now();
    let (mut a, pb, _) = beside_b_holding_one(t0);
    let pc = presence_name("c");
    let mut rv = 100;
    a.eng
        .on_watch_delivery(watcher::Event::Apply(renewal(&pc, "c", rv)), t0 + 10 * MS);
    let back = t0 + 2_500 * MS;
    let mut fenced: Vec<(String, Instant)> = Vec::new();
    let mut t = t0 + 100 * MS;
    while t < back + 2_000 * MS {
        if t >= back && (t - back).as_millis().is_multiple_of(200) {
            rv += 1;
            a.eng
                .on_watch_delivery(watcher::Event::Apply(renewal(&pc, "c", rv)), t);
        }
        if (t - t0).as_millis().is_multiple_of(100) {
            // The watch is alive: a free Lease nobody holds changes (no sign of b's or c's life).
            rv += 1;
            let free = lease("ferrolb-ffffffffffffffffffff", "", rv, 1, None);
            a.eng.on_watch_delivery(watcher::Event::Apply(free), t);
        }
        a.eng.on_timers(t);
        let w = a.writes();
        for r in &w {
            if r.op == Op::Update(OpKind::Fence) {
                fenced.push((r.name.clone(), t));
            }
        }
        // Our writes time out in every other 200 ms: answered late enough to miss, never long
        // enough for our own presence to lapse.
        if (t - t0).as_millis() % 400 < 200 {
            for r in &w {
                unreachable(&mut a, r, t);
            }
        } else {
            a.answer_all(w, t);
        }
        t += 10 * MS;
    }
    assert!(
        fenced.iter().all(|(n, at)| *n == pb && *at >= back),
        "{:?}",
        fenced
            .iter()
            .map(|(n, at)| (n.as_str(), *at - t0))
            .collect::<Vec<_>>()
    );
    let (_, at) = fenced.first().expect("b fenced once c was seen renewing");
    assert!(
        *at <= back + 2 * cfg().retry_period,
        "b fenced {:?} after c showed again",
        *at - back
    );
}

/// The agent's engine (`EngineOptions::stop_before_release`): a hand-over is reported
/// `Released` and its write waits until the caller says it stopped answering. Reported before
/// the write was not enough: in the lab the new holder's probe, sent 6 ms after the release,
/// was answered by the old holder, whose run loop had not got to the event yet.
#[test]
fn a_hand_over_is_written_only_after_the_caller_stopped_answering() {
    let t0 = Instant::now();
    let after = EngineOptions::agent("ns", "a", cfg())
        .rebalance_after
        .unwrap();
    let (mut a, addr) = a_holding_one_preferred_by_b(t0);
    a.eng.opts.stop_before_release = true;
    let none = t0..t0;
    let end = t0 + after + 2_000 * MS;
    assert_eq!(
        run_beside_live_b(&mut a, &addr, t0 + 510 * MS, end, none),
        None,
        "a release written before the caller stopped answering"
    );
    let released = a
        .events()
        .into_iter()
        .filter(|e| matches!(e, LeaseEvent::Released { name, .. } if *name == addr))
        .count();
    assert_eq!(released, 1, "the hand-over is reported once");
    assert_eq!(a.eng.stats.handovers.load(Ordering::Relaxed), 1);
    // An acknowledgement that does not reach its event releases nothing.
    a.eng.on_released_applied(0, end);
    assert!(a.writes().iter().all(|w| w.name != addr));
    a.eng.on_released_applied(1, end);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == addr && r.op == Op::Update(OpKind::Release)),
        "{w:?}"
    );
    // Its answer adds nothing: the caller heard `Released` already.
    a.answer_all(w, end + MS);
    assert_eq!(a.events(), Vec::new());
}

/// A lease released, wanted again and released again: the first acknowledgement must not let
/// the second release out before the caller applied that one too.
#[test]
fn each_release_waits_for_its_own_acknowledgement() {
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    a.eng.opts.stop_before_release = true;
    let want = |a: &mut Core, t: Instant| {
        let cands = Arc::new(vec!["a".to_string()]);
        a.eng.on_desired(
            BTreeMap::from([(
                addr.to_string(),
                LeaseWant {
                    candidates: cands,
                    ..LeaseWant::default()
                },
            )]),
            t,
        );
    };
    a.eng.on_desired(BTreeMap::new(), t0 + MS);
    assert!(matches!(&a.events()[..], [LeaseEvent::Released { .. }]));
    assert!(a.writes().iter().all(|w| w.name != addr));
    // Wanted again before the release went out: the reported release is carried out once
    // the caller applied it, then the lease is taken again (and answered again).
    want(&mut a, t0 + 2 * MS);
    assert!(a.writes().iter().all(|w| w.name != addr));
    a.eng.on_released_applied(1, t0 + 3 * MS);
    let w = a.writes();
    assert!(
        w.iter()
            .any(|r| r.name == addr && r.op == Op::Update(OpKind::Release)),
        "{w:?}"
    );
    a.answer_all(w, t0 + 3 * MS);
    let w = a.run(t0 + 4 * MS, t0 + 100 * MS, 10 * MS);
    assert!(
        w.iter()
            .any(|r| r.name == addr && matches!(r.op, Op::Update(OpKind::Acquire(_)))),
        "{w:?}"
    );
    assert!(
        a.events()
            .iter()
            .any(|e| matches!(e, LeaseEvent::Acquired { name, .. } if name == addr)),
        "held again"
    );
    // Released again: event number 2. The stale acknowledgement (1) lets nothing out.
    a.eng.on_desired(BTreeMap::new(), t0 + 200 * MS);
    assert!(matches!(&a.events()[..], [LeaseEvent::Released { .. }]));
    a.eng.on_released_applied(1, t0 + 201 * MS);
    assert!(a.writes().iter().all(|w| w.name != addr));
    a.eng.on_released_applied(2, t0 + 202 * MS);
    assert!(a
        .writes()
        .iter()
        .any(|r| r.name == addr && r.op == Op::Update(OpKind::Release)));
}

/// Our presence renewal is slow (in flight past the renew deadline) and an address Lease is
/// looked at before the presence Lease's own timer: it goes sticky on its own. When the
/// renewal lands, every address is held again — also the one that went sticky alone (a 10k lab
/// run left ~half of each agent's addresses reported sticky for good this way).
#[test]
fn an_address_that_went_sticky_alone_is_held_again_when_our_presence_renewal_lands() {
    let t0 = Instant::now();
    let addrs: Vec<String> = (0..2).map(|i| format!("ferrolb-{i:020x}")).collect();
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut a = Core::start("a", Vec::new(), &want, &["a"], t0);
    let w = a.writes();
    a.answer_all(w, t0);
    assert_eq!(a.events().len(), 2);
    let pa = presence_name("a");
    // The next presence renewal goes out at the retry period and is not answered yet.
    let mut t = t0;
    let renewal = loop {
        t += 10 * MS;
        a.eng.on_timers(t);
        let w = a.writes();
        if let Some(r) = w.iter().find(|r| r.name == pa) {
            break r.clone();
        }
        assert!(t < t0 + 1_000 * MS, "no presence renewal");
    };
    // Past the renew deadline, the watch shows one address Lease again (its own record,
    // unchanged) before any timer runs: that address is looked at with our renewal in flight.
    let late = t0 + 650 * MS;
    let rv: u64 = a.rv;
    a.eng.on_watch(
        watcher::Event::Apply(lease(
            &addrs[0],
            "a",
            rv + 100,
            ATTACHED_DURATION_SECONDS,
            Some(&pa),
        )),
        late,
    );
    let ev = a.events();
    // (Whether it went sticky here or not, it must end up held.)
    // The renewal lands.
    a.answer_all(vec![renewal], late + 10 * MS);
    let mut ev = ev;
    ev.extend(a.events());
    let _ = a.run(late + 20 * MS, late + 300 * MS, 10 * MS);
    ev.extend(a.events());
    let last: BTreeMap<String, LeaseEvent> =
        ev.into_iter().map(|e| (e.name().to_string(), e)).collect();
    for n in &addrs {
        assert!(
            last.get(n)
                .is_none_or(|e| matches!(e, LeaseEvent::Acquired { .. })),
            "{n} left as {:?}",
            last.get(n)
        );
    }
}

/// A saturated API server answers late: the writes in flight halve (once per retry period),
/// and grow back one per fast answer.
#[test]
fn late_answers_halve_the_writes_in_flight_and_fast_ones_raise_them_again() {
    let t0 = Instant::now();
    let addrs: Vec<String> = (0..100).map(|i| format!("ferrolb-{i:020x}")).collect();
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut a = Core::start("a", Vec::new(), &[], &["a"], t0);
    a.eng.on_desired(wants(&want, &["a"]), t0);
    let max = EngineOptions::agent("ns", "a", cfg()).max_concurrent_writes;
    let w = a.writes();
    assert_eq!(w.len(), max, "{} creates sent at once", w.len());
    // Every one answered 300 ms later: past the retry period (our presence Lease, renewed at
    // t0, is still within its renew deadline).
    let late = t0 + 300 * MS;
    let done = |a: &mut Core, w: &WriteReq, sent: Instant, at: Instant| {
        a.rv += 1;
        let l = answer(w, "a", a.rv);
        a.eng.on_done(
            Done {
                name: w.name.clone(),
                op: w.op,
                sent_at: sent,
                wall_sent: None,
                used_rv: w.used_rv.clone(),
                result: Ok(Some(l)),
            },
            at,
        );
    };
    for r in &w {
        done(&mut a, r, t0, late);
    }
    assert_eq!(a.eng.write_limit, max / 2, "halved once, not per answer");
    let w2: Vec<WriteReq> = a
        .writes()
        .into_iter()
        .filter(|r| r.op == Op::Create)
        .collect();
    // 36 queued creates, at most 32 of them in flight at once.
    assert_eq!(
        w2.len(),
        max / 2,
        "the queued creates go out at the new limit"
    );
    assert_eq!(a.eng.in_flight, max / 2);
    // Answered within a quarter of the retry period: one more slot per answer.
    for r in &w2 {
        done(&mut a, r, late, late + 10 * MS);
    }
    assert_eq!(a.eng.write_limit, max, "back to the maximum");
}

/// `b` beside live `c` (candidates a, b, c), `a` holding `n` addresses; a's presence seen
/// released at `t1` (a graceful stop that left them to it). Returns b, the addresses b ranks
/// first for among {b, c}, and those c does.
fn b_beside_c_after_a_stopped(
    n: usize,
    t0: Instant,
    t1: Instant,
) -> (Core, Vec<String>, Vec<String>) {
    let (addrs, mut existing) = held_by("a", n, 20);
    existing.push(lease(&presence_name("c"), "c", 15, 1, None));
    let want: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let mut b = Core::start("b", existing, &want, &["a", "b", "c"], t0);
    assert!(b.writes().is_empty(), "a is alive");
    b.eng.on_watch(
        watcher::Event::Apply(released(&presence_name("a"), 900, None)),
        t1,
    );
    let bc = ["b".to_string(), "c".to_string()];
    let (mine, cs): (Vec<String>, Vec<String>) = addrs
        .into_iter()
        .partition(|a| crate::lease::rendezvous_first(a, &bc) == Some("b"));
    assert!(mine.len() >= 3 && cs.len() >= 3, "{mine:?} {cs:?}");
    (b, mine, cs)
}

/// Runs `b`'s timers from `from` to `until` (10 ms ticks) with c's presence renewed every
/// 200 ms and `takes` (instant, address) shown as taken by c; answers b's writes. Returns b's
/// address writes with their instants.
fn run_beside_c(
    b: &mut Core,
    from: Instant,
    until: Instant,
    takes: &[(Instant, String)],
) -> Vec<(Instant, WriteReq)> {
    let pc = presence_name("c");
    let mut out = Vec::new();
    let mut t = from;
    let mut rv = 5_000;
    while t <= until {
        if (t - from).as_millis().is_multiple_of(200) {
            rv += 1;
            b.eng
                .on_watch(watcher::Event::Apply(renewal(&pc, "c", rv)), t);
        }
        for (_, addr) in takes.iter().filter(|(at, _)| *at == t) {
            rv += 1;
            b.eng.on_watch(
                watcher::Event::Apply(lease(addr, "c", rv, ATTACHED_DURATION_SECONDS, Some(&pc))),
                t,
            );
        }
        b.eng.on_timers(t);
        let w = b.writes();
        out.extend(
            w.iter()
                .filter(|r| !is_presence_name(&r.name))
                .map(|r| (t, r.clone())),
        );
        b.answer_all(w, t);
        t += 10 * MS;
    }
    out
}

#[test]
fn a_lower_ranked_survivor_waits_while_the_first_ranked_one_works_through_a_burst() {
    // a stops, leaving its addresses to its presence release. b takes the ones it ranks first
    // for at once; for c's it waits its rank wait (100 ms) and then as long as c is seen taking
    // addresses (c works through its queue), and takes what c left once c has taken nothing
    // for two retry periods. Without the wait, b raced c for every one of c's addresses that
    // c's queue had not reached within 100 ms (a 409 for one of the two each time).
    let t0 = Instant::now();
    let t1 = t0 + 300 * MS;
    let (mut b, mine, cs) = b_beside_c_after_a_stopped(24, t0, t1);
    let first = b.writes();
    assert_eq!(
        taken(&first),
        mine.iter().map(String::as_str).collect(),
        "b's own at once"
    );
    b.answer_all(first, t1);
    // c takes one of its addresses 50 ms and another 300 ms after the release, then stalls.
    let takes = vec![
        (t1 + 50 * MS, cs[0].clone()),
        (t1 + 300 * MS, cs[1].clone()),
    ];
    let w = run_beside_c(&mut b, t1, t1 + 690 * MS, &takes);
    assert!(
        w.is_empty(),
        "c was seen taking addresses within 400 ms: b waits for it: {w:?}"
    );
    assert_eq!(
        EngineStats::get(&b.eng.stats.deferred),
        cs.len() as u64 - 1,
        "every address of c's not taken by its rank wait's end waited"
    );
    // c's last take at t1 + 300 ms: b goes at t1 + 700 ms, for every address c left.
    let w = run_beside_c(&mut b, t1 + 700 * MS, t1 + 800 * MS, &[]);
    let late: BTreeSet<&str> = w
        .iter()
        .filter(|(at, r)| *at == t1 + 700 * MS && matches!(r.op, Op::Update(OpKind::Acquire(_))))
        .map(|(_, r)| r.name.as_str())
        .collect();
    assert_eq!(
        late,
        cs[2..].iter().map(String::as_str).collect(),
        "the rest taken once c stalled: {w:?}"
    );
}

#[test]
fn a_first_ranked_node_that_stays_busy_without_taking_ours_holds_us_back_three_lease_durations_at_most(
) {
    // c keeps taking addresses b does not want (another pool's, say) but none of a's: b waits
    // for it at most three lease durations past its rank wait, then takes c's share too.
    let t0 = Instant::now();
    let t1 = t0 + 300 * MS;
    let (mut b, _mine, cs) = b_beside_c_after_a_stopped(24, t0, t1);
    let first = b.writes();
    b.answer_all(first, t1);
    let others: Vec<(Instant, String)> = (0..40)
        .map(|i| {
            (
                t1 + (50 + 100 * i) * MS,
                format!("ferrolb-{:020x}", 0xc000 + i),
            )
        })
        .collect();
    let w = run_beside_c(&mut b, t1, t1 + 3_090 * MS, &others);
    assert!(w.is_empty(), "{w:?}");
    let w = run_beside_c(&mut b, t1 + 3_100 * MS, t1 + 3_200 * MS, &[]);
    let late: BTreeSet<&str> = w
        .iter()
        .filter(|(at, r)| *at == t1 + 3_100 * MS && matches!(r.op, Op::Update(OpKind::Acquire(_))))
        .map(|(_, r)| r.name.as_str())
        .collect();
    assert_eq!(
        late,
        cs.iter().map(String::as_str).collect(),
        "taken 3 lease durations after the first wait (rank wait end, t1 + 100 ms): {w:?}"
    );
}

#[test]
fn a_new_address_whose_preferred_node_is_busy_creating_others_is_left_to_it() {
    // A cluster's Services created at once: c, preferred for the new address, is seen creating
    // other address Leases; b (second) does not create it when its rank wait ends but leaves
    // it to c — which creates it. Before, most first acquisitions at 10,000 Services went to
    // a node the assignment did not prefer and were moved by hand-overs for minutes.
    let t0 = Instant::now();
    let bc = ["b".to_string(), "c".to_string()];
    let addr = (0..)
        .map(|i| format!("ferrolb-{i:020x}"))
        .find(|a| crate::lease::rendezvous_first(a, &bc) == Some("c"))
        .unwrap();
    let existing = vec![lease(&presence_name("c"), "c", 15, 1, None)];
    let mut b = Core::start("b", existing, &[addr.as_str()], &["b", "c"], t0);
    let busy: Vec<(Instant, String)> = (0..3)
        .map(|i| {
            (
                t0 + (20 + 150 * i) * MS,
                format!("ferrolb-{:020x}", 0xc000 + i),
            )
        })
        .collect();
    let mut takes = busy.clone();
    takes.push((t0 + 500 * MS, addr.clone()));
    let w = run_beside_c(&mut b, t0, t0 + 1_500 * MS, &takes);
    assert!(w.is_empty(), "left to c, which created it: {w:?}");
    assert_eq!(EngineStats::get(&b.eng.stats.deferred), 1);
    // Without c's activity b creates it after its rank wait.
    let mut b = Core::start(
        "b",
        vec![lease(&presence_name("c"), "c", 15, 1, None)],
        &[addr.as_str()],
        &["b", "c"],
        t0,
    );
    let w = run_beside_c(&mut b, t0, t0 + 200 * MS, &[]);
    assert!(
        w.iter()
            .any(|(at, r)| r.name == addr && r.op == Op::Create && *at == t0 + 100 * MS),
        "{w:?}"
    );
}

#[test]
fn our_own_presence_renewal_landing_after_its_timeout_is_not_a_lost_presence() {
    // A saturated API server (a 10k graceful burst in the lab): our presence renewal times out
    // at the client ("no answer within 600ms") but lands later. The next renewal, sent with the
    // resourceVersion we last saw, gets 409 — against our own write. That is no sign another
    // node took our presence: until the watch shows who won, the addresses ride it out as in an
    // outage, and when it shows our own record, we go on holding them. Before, the 409 made our
    // presence NotHolder at once: every address was reported lost (both survivors stopped
    // answering thousands of addresses) and confirmed again with one write each.
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    let p = presence_name("a");
    let mut t = t0;
    let w1 = a.next_presence_write(&mut t);
    // It lands at the server (the answer we will never get), then the client gives up.
    a.rv += 1;
    let landed = answer(&w1, "a", a.rv);
    unreachable(&mut a, &w1, t + 600 * MS);
    t += 600 * MS;
    let w2 = a.next_presence_write(&mut t);
    assert_eq!(
        w2.used_rv, w1.used_rv,
        "the watch has not shown the landed write yet"
    );
    a.eng.on_done(
        Done {
            name: p.clone(),
            op: w2.op,
            sent_at: t,
            wall_sent: None,
            used_rv: w2.used_rv.clone(),
            result: Err(WriteError {
                kind: WriteFailure::Conflict,
                message: "409".into(),
                code: Some(409),
            }),
        },
        t + 5 * MS,
    );
    let ev = a.events();
    assert!(
        !ev.iter().any(|e| matches!(e, LeaseEvent::Lost { .. })),
        "a 409 against our own landed renewal loses nothing: {ev:?}"
    );
    // The watch shows our landed renewal: we hold on, no address is confirmed again, and the
    // next renewal goes out with the new resourceVersion.
    t += 20 * MS;
    a.eng.on_watch(watcher::Event::Apply(landed.clone()), t);
    let mut sent = Vec::new();
    let until = t + 1_000 * MS;
    while t < until {
        t += 10 * MS;
        a.eng.on_timers(t);
        let w = a.writes();
        sent.extend(w.iter().cloned());
        a.answer_all(w, t);
    }
    assert!(
        sent.iter().all(|r| r.name != addr),
        "no address confirmed again: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|r| r.name == p && r.used_rv == landed.metadata.resource_version),
        "{sent:?}"
    );
    let ev = a.events();
    assert!(
        !ev.iter().any(|e| matches!(e, LeaseEvent::Lost { .. })),
        "{ev:?}"
    );
}

#[test]
fn a_landed_renewal_counts_from_when_that_renewal_was_sent() {
    // Two renewals in a row time out at the client and land. Seen in the watch, each counts
    // from when it was sent (its renewTime says which it was), not from the first: the second
    // brings the presence back within its renew deadline, so the address is held again, not
    // left sticky until an answer gets through.
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    let wall0 = crate::lease::micro_now().0;
    let at = |ms: i64| {
        MicroTime(
            wall0
                .checked_add(jiff::SignedDuration::from_millis(ms))
                .unwrap(),
        )
    };
    let mut t = t0;
    let send = |a: &mut Core, t: &mut Instant| -> (WriteReq, Instant) {
        let w = a.next_presence_write(t);
        (w, *t)
    };
    let timed_out = |a: &mut Core, w: &WriteReq, sent: Instant, wall: MicroTime| {
        a.eng.on_done(
            Done {
                name: w.name.clone(),
                op: w.op,
                sent_at: sent,
                wall_sent: Some(wall),
                used_rv: w.used_rv.clone(),
                result: Err(WriteError {
                    kind: WriteFailure::Unreachable,
                    message: "no answer within 600ms".into(),
                    code: None,
                }),
            },
            sent + 600 * MS,
        );
    };
    let (w1, s1) = send(&mut a, &mut t);
    let wall1 = at((s1 - t0).as_millis() as i64);
    t = s1 + 600 * MS;
    timed_out(&mut a, &w1, s1, wall1.clone());
    let (w2, s2) = send(&mut a, &mut t);
    let wall2 = at((s2 - t0).as_millis() as i64);
    timed_out(&mut a, &w2, s2, wall2.clone());
    assert!(
        a.events()
            .iter()
            .any(|e| matches!(e, LeaseEvent::Unreachable { .. })),
        "past the renew deadline: sticky"
    );
    // Both landed; the watch shows the second (renewTime a few µs after it was built).
    a.rv += 1;
    let mut landed = answer(&w2, "a", a.rv);
    let r = MicroTime(
        wall2
            .0
            .checked_add(jiff::SignedDuration::from_micros(3))
            .unwrap(),
    );
    landed.spec.as_mut().unwrap().renew_time = Some(r);
    let seen = s2 + 100 * MS;
    assert!(seen < s2 + cfg().renew_deadline);
    a.eng.on_watch(watcher::Event::Apply(landed), seen);
    let ev = a.events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, LeaseEvent::Acquired { name, .. } if name == addr)),
        "held again: the second renewal was sent {:?} ago: {ev:?}",
        seen - s2
    );
}

#[test]
fn a_renewal_answered_after_the_renew_deadline_leaves_the_addresses_sticky_not_lost() {
    // A saturated API server: our presence renewal succeeds, but its answer is handled after
    // the renew deadline (the answer came late, or the process was starved). The record is ours
    // and confirmed; nothing was refused. Sticky until the next renewal lands in time — not
    // lost (which stopped every address and confirmed each again with one write).
    let t0 = Instant::now();
    let (mut a, addr) = a_holding_one(t0);
    let p = presence_name("a");
    let mut t = t0;
    let w = a.next_presence_write(&mut t);
    let sent = t;
    // Answered, but handled 700 ms after it was sent.
    a.rv += 1;
    let l = answer(&w, "a", a.rv);
    let late = sent + 700 * MS;
    a.eng.on_timers(late);
    a.eng.on_done(
        Done {
            name: p.clone(),
            op: w.op,
            sent_at: sent,
            wall_sent: None,
            used_rv: w.used_rv.clone(),
            result: Ok(Some(l)),
        },
        late,
    );
    let ev = a.events();
    assert!(
        !ev.iter().any(|e| matches!(e, LeaseEvent::Lost { .. })),
        "{ev:?}"
    );
    // The next renewal goes out at once and lands in time: held again, no confirmation write.
    let mut sent_after = Vec::new();
    let mut t = late;
    while t < late + 500 * MS {
        a.eng.on_timers(t);
        let w = a.writes();
        sent_after.extend(w.iter().cloned());
        a.answer_all(w, t);
        t += 10 * MS;
    }
    assert!(sent_after.iter().any(|r| r.name == p), "{sent_after:?}");
    assert!(
        sent_after.iter().all(|r| r.name != addr),
        "no address confirmed again: {sent_after:?}"
    );
    let ev = a.events();
    assert!(
        !ev.iter().any(|e| matches!(e, LeaseEvent::Lost { .. })),
        "{ev:?}"
    );
    assert!(
        matches!(ev.last(), Some(LeaseEvent::Acquired { name, .. }) if name == addr),
        "held again: {ev:?}"
    );
}

#[test]
fn a_lost_create_race_does_not_hold_back_a_takeover_once_the_watch_showed_the_winner() {
    // b and a create the same address Lease at once; a wins, b's create gets 409 ("wait for
    // the watch to show it, a lease duration at the latest"). The watch shows a's Lease; later
    // a stops and its presence is released: b takes the address at once, not a lease duration
    // after its lost create.
    let t0 = Instant::now();
    let pa = presence_name("a");
    let addr = "ferrolb-00000000000000000001";
    let mut b = Core::start("b", vec![lease(&pa, "a", 10, 1, None)], &[addr], &["b"], t0);
    let w = b.writes();
    let create = w
        .iter()
        .find(|r| r.name == addr)
        .expect("b creates it")
        .clone();
    b.eng.on_done(
        Done {
            name: addr.into(),
            op: create.op,
            sent_at: t0,
            wall_sent: None,
            used_rv: None,
            result: Err(WriteError {
                kind: WriteFailure::Conflict,
                message: "409 AlreadyExists".into(),
                code: Some(409),
            }),
        },
        t0 + 5 * MS,
    );
    b.eng.on_watch(
        watcher::Event::Apply(lease(addr, "a", 11, ATTACHED_DURATION_SECONDS, Some(&pa))),
        t0 + 10 * MS,
    );
    assert!(
        b.writes().iter().all(|r| r.name != addr),
        "held by a, alive"
    );
    let t1 = t0 + 300 * MS;
    b.eng
        .on_watch(watcher::Event::Apply(released(&pa, 20, None)), t1);
    let w = b.writes();
    assert!(
        w.iter()
            .any(|r| r.name == addr && matches!(r.op, Op::Update(OpKind::Acquire(_)))),
        "a's presence released: b takes the address at once: {w:?}"
    );
}

#[test]
fn a_release_seen_after_an_outage_is_taken_at_once() {
    // An outage ends without a live watch: other nodes' clocks restart with the grace (a renew
    // deadline ahead), so nobody's Lease runs out because of an outage we saw ourselves. That
    // grace is about expiry. a's presence then shows up released (a graceful stop): its
    // addresses are free at once, not a renew deadline later.
    let t0 = Instant::now();
    let pa = presence_name("a");
    let (mut b, addrs) = b_beside_a_holding_three(t0);
    let t1 = t0 + 100 * MS;
    b.eng.on_watch_error(t1, "connection refused");
    let mut t = t1 + 500 * MS;
    let w = b.next_presence_write(&mut t);
    b.answer_all(vec![w], t);
    let seen = t + 10 * MS;
    b.eng
        .on_watch_delivery(watcher::Event::Apply(released(&pa, 50, None)), seen);
    let w = b.writes();
    assert_eq!(
        taken(&w),
        addrs.iter().map(String::as_str).collect(),
        "taken at once: {w:?}"
    );
}
