//! Write throughput of the API stand-in over real HTTP on loopback, as the lab's agents and
//! controllers reach `ferrolb dev-apiserver`:
//!
//! - lease updates: PUT with a resourceVersion precondition (as the agents renew), with 10
//!   watchers of the Leases (label selector, as the agents watch) reading every event, and
//!   without watchers;
//! - Service status merge patches (as the controller writes them);
//! - Service creates (IPv6 SingleStack, no node ports: as `lab --measure-services` creates them).
//!
//! **One core**: the server runs alone on its own OS thread with a current-thread tokio runtime
//! (accept loop, every connection and every watch task), so everything the server does happens
//! on that one thread. The clients (kube-rs, the same client the agents use) run on another
//! runtime in other threads. The figure is operations per second of the server thread's own
//! on-CPU time (`/proc/self/task/TID/schedstat`, nanoseconds), so the shared machine's load does
//! not count; the wall-clock rate is printed beside it (that one depends on the load and on the
//! clients, which share the machine's cores with the server).
//!
//! `cargo bench -p kube-standin --bench writes` (set `STANDIN_BENCH_N` for more writes per
//! case; `STANDIN_BENCH_ONLY=leases|patches|creates` for one case; under `cargo test` it runs
//! 50 of each as a smoke test).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_standin::ApiServer;
use serde_json::json;

/// Concurrent writers (the lab has one writer per agent and controller, each with several
/// requests in flight).
const WRITERS: usize = 16;
const LEASES: usize = 200;
const SERVICES: usize = 200;
const SELECTOR: &str = "app.kubernetes.io/managed-by=ferrolb";

/// The server on its own thread with a current-thread runtime.
struct ServerThread {
    url: String,
    /// /proc/self/task/TID of the server thread.
    task: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn start(server: ApiServer) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("standin-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    let (addr, task) = server
                        .serve("127.0.0.1:0".parse().expect("addr"))
                        .await
                        .expect("serve");
                    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
                    tx.send((addr, PathBuf::from("/proc").join(me)))
                        .expect("report address");
                    let _ = stop_rx.await;
                    task.abort();
                });
            })
            .expect("server thread");
        let (addr, task) = rx.recv().expect("server started");
        Self {
            url: format!("http://{addr}"),
            task,
            stop: Some(stop),
            join: Some(join),
        }
    }

    /// On-CPU time of the server thread so far.
    fn cpu(&self) -> Duration {
        let s = std::fs::read_to_string(self.task.join("schedstat")).expect("schedstat");
        let ns: u64 = s
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .expect("schedstat run time");
        Duration::from_nanos(ns)
    }

    async fn client(&self) -> kube::Client {
        let kc = ApiServer::kubeconfig(&self.url, "bench");
        let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&kc).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// One measured case.
struct Figure {
    ops: usize,
    server_cpu: Duration,
    wall: Duration,
}

impl Figure {
    fn print(&self, what: &str, extra: &str) {
        let per_cpu = self.ops as f64 / self.server_cpu.as_secs_f64();
        let per_wall = self.ops as f64 / self.wall.as_secs_f64();
        println!(
            "{what}: {per_cpu:.0} per server-CPU-second ({:.1} µs each), {per_wall:.0}/s wall clock ({} ops{extra})",
            self.server_cpu.as_secs_f64() * 1e6 / self.ops as f64,
            self.ops
        );
    }
}

/// Runs `n` operations `op(i)` with [`WRITERS`] in flight, each index `i` in writer `i % WRITERS`
/// (so a writer owns its objects and its preconditions always hold).
async fn run_writers<F, Fut>(n: usize, op: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                op(i).await;
                i += WRITERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

fn micro_time(i: usize) -> String {
    format!(
        "2026-12-05T{:02}:{:02}:{:02}.{:06}Z",
        (i / 3_600_000_000) % 24,
        (i / 60_000_000) % 60,
        (i / 1_000_000) % 60,
        i % 1_000_000
    )
}

async fn leases(n: usize, watchers: usize) -> (Figure, usize) {
    let srv = ServerThread::start(ApiServer::new());
    let api: Api<Lease> = Api::namespaced(srv.client().await, "kube-node-lease");
    let mut rvs = Vec::new();
    for i in 0..LEASES {
        let l: Lease = serde_json::from_value(json!({
            "metadata": {"name": format!("ferrolb-198-51-100-{i}"),
                "labels": {"app.kubernetes.io/managed-by": "ferrolb", "ferrolb.io/kind": "address"},
                "annotations": {"ferrolb.io/address": format!("198.51.100.{i}")}},
            "spec": {"holderIdentity": format!("node-{}", i % 3), "leaseDurationSeconds": 5,
                "acquireTime": micro_time(0), "renewTime": micro_time(0), "leaseTransitions": 0}
        }))
        .expect("lease");
        rvs.push(
            api.create(&PostParams::default(), &l)
                .await
                .expect("create lease"),
        );
    }
    // Watchers consume and decode every event (a lagging watcher would be cheaper than a real
    // one); each is its own client, as each agent is.
    let seen = Arc::new(AtomicUsize::new(0));
    let mut watches = Vec::new();
    for _ in 0..watchers {
        let api: Api<Lease> = Api::namespaced(srv.client().await, "kube-node-lease");
        let seen = seen.clone();
        let rv = rvs
            .last()
            .and_then(|l| l.metadata.resource_version.clone())
            .expect("rv");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        watches.push(tokio::spawn(async move {
            let wp = WatchParams::default().labels(SELECTOR);
            let mut s = api.watch(&wp, &rv).await.expect("watch").boxed();
            let _ = ready_tx.send(());
            while let Some(ev) = s.next().await {
                if let Ok(WatchEvent::Modified(_)) = ev {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        ready_rx.await.expect("watch started");
    }
    let rvs: Arc<Vec<tokio::sync::Mutex<Lease>>> =
        Arc::new(rvs.into_iter().map(tokio::sync::Mutex::new).collect());
    let (c0, t0) = (srv.cpu(), Instant::now());
    let w_api = api.clone();
    run_writers(n, move |i| {
        let api = w_api.clone();
        let rvs = rvs.clone();
        async move {
            // Writer i % WRITERS owns the Leases k with k % WRITERS == i % WRITERS.
            let k = i % LEASES;
            let mut cur = rvs[k].lock().await;
            let mut l = cur.clone();
            l.spec.as_mut().expect("spec").renew_time =
                Some(serde_json::from_value(json!(micro_time(i + 1))).expect("microtime"));
            let name = l.metadata.name.clone().expect("name");
            *cur = api
                .replace(&name, &PostParams::default(), &l)
                .await
                .expect("update lease");
        }
    })
    .await;
    // The watchers must have received and decoded every event.
    let want = n * watchers;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) < want {
        assert!(
            Instant::now() < deadline,
            "watchers saw {} of {want} events",
            seen.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fig = Figure {
        ops: n,
        server_cpu: srv.cpu() - c0,
        wall: t0.elapsed(),
    };
    for w in watches {
        w.abort();
    }
    (fig, seen.load(Ordering::Relaxed))
}

async fn service_status(n: usize) -> Figure {
    let srv = ServerThread::start(ApiServer::new());
    let api: Api<Service> = Api::namespaced(srv.client().await, "default");
    for i in 0..SERVICES {
        api.create(&PostParams::default(), &service(&format!("svc-{i}")))
            .await
            .expect("create service");
    }
    let (c0, t0) = (srv.cpu(), Instant::now());
    run_writers(n, move |i| {
        let api = api.clone();
        async move {
            let name = format!("svc-{}", i % SERVICES);
            // every patch changes the Service (a no-op patch would be cheaper)
            let ip = format!("198.51.100.{}", (i / SERVICES) % 250);
            let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]},
                "conditions": [{"type": "ferrolb.io/IPAMRequestSatisfied", "status": "True",
                  "reason": "Satisfied", "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]}});
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("patch status");
        }
    })
    .await;
    Figure {
        ops: n,
        server_cpu: srv.cpu() - c0,
        wall: t0.elapsed(),
    }
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "echo"}},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
            "allocateLoadBalancerNodePorts": false, "selector": {"app": "echo"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("service")
}

async fn creates(n: usize) -> Figure {
    let srv = ServerThread::start(ApiServer::new());
    let api: Api<Service> = Api::namespaced(srv.client().await, "default");
    let (c0, t0) = (srv.cpu(), Instant::now());
    run_writers(n, move |i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &service(&format!("load-{i}")))
                .await
                .expect("create service");
        }
    })
    .await;
    Figure {
        ops: n,
        server_cpu: srv.cpu() - c0,
        wall: t0.elapsed(),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STANDIN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 20_000 } else { 50 });
    let only = std::env::var("STANDIN_BENCH_ONLY").unwrap_or_default();
    let run = |case: &str| only.is_empty() || only == case;
    // The clients' runtime (the server has its own thread and runtime).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    if run("leases") {
        let (fig, seen) = rt.block_on(leases(n, 10));
        assert_eq!(seen, n * 10, "every watcher sees every update");
        fig.print(
            "lease updates (PUT, RV precondition) with 10 watchers",
            &format!(", {seen} watch events delivered and decoded"),
        );
        let (fig, _) = rt.block_on(leases(n, 0));
        fig.print("lease updates without watchers", "");
    }
    if run("patches") {
        rt.block_on(service_status(n))
            .print("Service /status merge patches", "");
    }
    if run("creates") {
        rt.block_on(creates(n)).print("Service creates (IPv6)", "");
    }
    println!(
        "(server: one thread, current-thread runtime; clients: kube-rs over HTTP/1.1 on loopback, {WRITERS} writers in flight)"
    );
}
