//! Write throughput of the API stand-in, measured in CPU time so a busy machine does not skew it:
//! lease updates (PUT with a resourceVersion precondition, as the agents renew) with 10
//! watchers of every Lease, and Service status patches (as the controller writes them).
//!
//! Everything runs on one thread (a current-thread runtime, in-process client), so "per
//! CPU-second" is "on one core", client-side serialization included.
//!
//! `cargo bench -p kube-standin --bench writes` (set `STANDIN_BENCH_N` for more writes; under
//! `cargo test` it runs 50 of each as a smoke test).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_standin::ApiServer;
use serde_json::json;

/// CPU time of this process (all threads), from /proc/self/stat (utime + stime, clock ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = stat.rsplit(')').next().expect("stat fields");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// A client of `server`: in-process (no sockets), or over HTTP on loopback as the lab's
/// processes talk to `ferrolb dev-apiserver` (then the client's HTTP work counts too).
async fn client(server: &ApiServer, http: bool) -> kube::Client {
    if !http {
        return server.client();
    }
    let (addr, _task) = server.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let kc = ApiServer::kubeconfig(&format!("http://{addr}"), "bench");
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&kc).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn leases(n: usize, watchers: usize, http: bool) -> (f64, usize) {
    let server = ApiServer::new();
    let api: Api<Lease> = Api::namespaced(client(&server, http).await, "default");
    let names: Vec<String> = (0..100).map(|i| format!("bench-{i}")).collect();
    let mut rvs = Vec::new();
    for name in &names {
        let l: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "ferrolb"}},
            "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 5}
        }))
        .unwrap();
        let c = api.create(&PostParams::default(), &l).await.unwrap();
        rvs.push(c);
    }
    // Watchers consume every event (a lagging watcher would be cheaper than a real one).
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..watchers {
        let api = api.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let wp = WatchParams::default().labels("app.kubernetes.io/managed-by=ferrolb");
            let mut s = api.watch(&wp, "0").await.unwrap().boxed();
            while let Some(ev) = s.next().await {
                if let Ok(WatchEvent::Modified(_)) = ev {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    tokio::task::yield_now().await;
    let t0 = cpu_time();
    for i in 0..n {
        let k = i % rvs.len();
        let mut l = rvs[k].clone();
        l.spec.as_mut().unwrap().lease_transitions = Some(i as i32);
        rvs[k] = api
            .replace(&names[k], &PostParams::default(), &l)
            .await
            .unwrap();
    }
    // Let the watchers drain what was sent.
    while seen.load(std::sync::atomic::Ordering::Relaxed) < n * watchers {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu = (cpu_time() - t0).as_secs_f64();
    (
        n as f64 / cpu,
        seen.load(std::sync::atomic::Ordering::Relaxed),
    )
}

async fn service_status(n: usize) -> f64 {
    let server = ApiServer::new();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let count = 200;
    for i in 0..count {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}")},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
        }))
        .unwrap();
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let t0 = cpu_time();
    for i in 0..n {
        let name = format!("svc-{}", i % count);
        let ip = format!("198.51.100.{}", i % 250);
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]},
            "conditions": [{"type": "ferrolb.io/IPAMRequestSatisfied", "status": "True",
              "reason": "Satisfied", "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    n as f64 / (cpu_time() - t0).as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a quick smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STANDIN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 5000 } else { 50 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for http in [false, true] {
        let how = if http {
            "HTTP on loopback"
        } else {
            "in-process"
        };
        let (rate, seen) = rt.block_on(leases(n, 10, http));
        assert_eq!(seen, n * 10, "every watcher sees every update");
        println!("lease updates with 10 watchers, {how}: {rate:.0} per CPU-second ({n} updates, {seen} watch events delivered)");
        let (rate0, _) = rt.block_on(leases(n, 0, http));
        println!("lease updates without watchers, {how}: {rate0:.0} per CPU-second");
    }
    let rate = rt.block_on(service_status(n));
    println!("Service status merge patches: {rate:.0} per CPU-second ({n} patches)");
}
