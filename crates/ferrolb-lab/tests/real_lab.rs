//! The lab's agent failover scenario (`ferrolb_lab::lab::scenario::failover`, what `ferrolb lab`
//! and `tests/e2e.rs` run on the stand-in) and controller leader failover on a real kube-apiserver, with deploy/'s RBAC and the
//! controllers and agents on ServiceAccount tokens (`ferrolb lab --api kube`). Root only; prints
//! `skipped: no kube-apiserver (../shared/kube absent)` and passes without the binaries.

use std::net::IpAddr;
use std::time::Duration;

use ferrolb_lab::harness::wait_answering_macs;
use ferrolb_lab::lab::cluster::{ApiKind, Cluster, LabConfig};
use ferrolb_lab::lab::{echo_service, scenario};

fn exe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferrolb"))
}

/// Distinct MACs answering `ip` once someone answers (up to `within`).
fn answering_macs(c: &Cluster, ip: IpAddr, within: Duration) -> Vec<String> {
    wait_answering_macs(c.topo.client(), ip, within)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_crash_and_graceful_failover_under_rbac() {
    if !ferrolb_lab::netns::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if ferrolb_lab::realapi::shared_kube_dir().is_none() {
        eprintln!("{}", ferrolb_lab::realapi::SKIP);
        return;
    }
    let mut cfg = LabConfig::new("rlab", 3, exe());
    cfg.api = ApiKind::Kube;
    let mut c = Cluster::start_all(cfg)
        .await
        .expect("the lab on a real kube-apiserver");
    for (name, text) in ferrolb_lab::lab::EMBEDDED_MANIFESTS {
        if *name != "echo.yaml" {
            c.apply_yaml(text).await.expect(name);
        }
    }
    c.create_json(&echo_service("echo", false)).await.unwrap();
    c.create_endpoints("default", "echo", &[0, 1, 2])
        .await
        .unwrap();
    let ips = c
        .wait_ingress("default", "echo", Duration::from_secs(60))
        .await
        .expect("the controller (ServiceAccount token) addresses the Service");
    let vip = ips[0];
    c.topo.add_vip_on_nodes(vip).unwrap();
    let macs = tokio::task::block_in_place(|| answering_macs(&c, vip, Duration::from_secs(30)));
    assert_eq!(macs.len(), 1, "exactly one node answers {vip}: {macs:?}");
    // A crash (the lease must expire: 2 s) and a graceful stop (released at once).
    for (sig, bound) in [
        ("KILL", Duration::from_secs(10)),
        ("TERM", Duration::from_secs(5)),
    ] {
        let f = tokio::task::block_in_place(|| {
            scenario::failover(&mut c, vip, sig, Duration::from_secs(30))
        })
        .unwrap_or_else(|e| panic!("failover by SIG{sig}: {e:#}"));
        assert_ne!(f.from, f.to, "{f:?}");
        assert!(
            Duration::from_millis(f.millis) < bound,
            "SIG{sig} failover took {} ms",
            f.millis
        );
        let macs = tokio::task::block_in_place(|| answering_macs(&c, vip, Duration::from_secs(10)));
        assert_eq!(macs.len(), 1, "after SIG{sig}: {macs:?}");
        let answering = c
            .topo
            .node_by_mac(&macs[0])
            .map(|i| c.topo.nodes[i].name.clone());
        assert_eq!(answering.as_deref(), Some(f.to.as_str()), "after SIG{sig}");
        eprintln!("SIG{sig}: {} -> {} in {} ms", f.from, f.to, f.millis);
        // The stopped agent comes back (as in the lab).
        let i = c.topo.nodes.iter().position(|n| n.name == f.from).unwrap();
        c.start_agent(i).unwrap();
    }
    // Controller leader failover on the real server: kill one replica at a time (whichever
    // leads), a Service created meanwhile is addressed by the survivor, and then both at once.
    let mut before = vec![("echo".to_string(), ips.clone())];
    for (round, victim) in [0usize, 1].into_iter().enumerate() {
        if let Some(mut p) = c.controllers[victim].take() {
            p.signal("KILL").unwrap();
            p.wait_exit(Duration::from_secs(10)).unwrap();
        }
        let name = format!("after{round}");
        c.create_json(&echo_service(&name, false)).await.unwrap();
        c.create_endpoints("default", &name, &[0, 1, 2])
            .await
            .unwrap();
        let got = c
            .wait_ingress("default", &name, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{name} addressed by the surviving controller: {e:#}"));
        before.push((name, got));
        c.start_controller(victim).unwrap();
    }
    for i in 0..c.controllers.len() {
        if let Some(mut p) = c.controllers[i].take() {
            p.signal("KILL").unwrap();
            p.wait_exit(Duration::from_secs(10)).unwrap();
        }
    }
    for i in 0..c.controllers.len() {
        c.start_controller(i).unwrap();
    }
    c.create_json(&echo_service("after-restart", false))
        .await
        .unwrap();
    c.create_endpoints("default", "after-restart", &[0, 1, 2])
        .await
        .unwrap();
    c.wait_ingress("default", "after-restart", Duration::from_secs(60))
        .await
        .expect("addressed after both controllers restarted");
    // No address ever changed, through agent and controller failovers and restarts.
    for (name, ips) in &before {
        let now = c
            .wait_ingress("default", name, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(&now, ips, "{name} kept its address");
    }
}
