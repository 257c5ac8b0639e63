//! End-to-end suite on the lab's machinery (root; namespaces are created and removed per test).

use std::net::IpAddr;
use std::time::Duration;

use ferrolb_lab::lab::{probe, topo::Topology};
use ferrolb_lab::netns::is_root;

fn exe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferrolb"))
}

/// The lab's data path without ferrolb's control plane: echo backends answer through a VIP on
/// `lo`, the client's prober sees the node that got the frame, and the kernel never answers ARP
/// for the VIP by itself (so only our responder can make a VIP reachable).
#[test]
fn lab_data_path_and_kernel_silence() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let topo = Topology::build("dp", 2).unwrap();
    let vip: IpAddr = "198.51.100.77".parse().unwrap();
    topo.add_vip_on_nodes(vip).unwrap();
    let mut echoes = Vec::new();
    for i in 0..2 {
        let mut cmd = topo.node_ns(i).cmd(exe().to_str().unwrap());
        cmd.args([
            "echo",
            "--name",
            &topo.nodes[i].name,
            "--listen",
            "0.0.0.0:80",
        ]);
        echoes.push(probe::Stream::spawn(cmd).unwrap());
    }
    // Nobody announces the VIP: the kernel must stay silent because of arp_ignore.
    assert!(
        probe::arping(topo.client(), vip, 2).is_empty(),
        "kernel answered ARP for a VIP on lo"
    );
    // Point the client at node2 by hand; traffic must then land on node2.
    topo.client()
        .ip(&[
            "neigh",
            "replace",
            &vip.to_string(),
            "lladdr",
            &topo.nodes[1].mac,
            "dev",
            "eth0",
        ])
        .unwrap();
    let prober = probe::prober(topo.client(), &exe(), "http://198.51.100.77/", 20).unwrap();
    let mut got = None;
    for _ in 0..100 {
        if let Some(p) = prober
            .next(Duration::from_secs(1))
            .as_deref()
            .and_then(probe::parse_probe)
        {
            if p.node.is_some() {
                got = p.node;
                break;
            }
        }
    }
    assert_eq!(got.as_deref(), Some("node2"));
}

mod cluster {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use ferrolb_lab::harness::{wait_answering_macs, wait_until, wait_until_async};
    use ferrolb_lab::lab::cluster::{ingress_ips, Cluster, LabConfig};
    use ferrolb_lab::lab::{echo_service, probe, scenario};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};

    /// One cluster at a time: failover bounds are about ferrolb, not about two labs fighting
    /// over two cores.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
        SERIAL.lock().await
    }

    async fn start(tag: &str, nodes: usize) -> Option<Cluster> {
        if !ferrolb_lab::netns::is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let cfg = LabConfig::new(tag, nodes, super::exe());
        let c = Cluster::start_all(cfg).await.expect("lab cluster starts");
        // The lab's pools and policy; Services are created by each test.
        for (name, text) in ferrolb_lab::lab::EMBEDDED_MANIFESTS {
            if *name != "echo.yaml" {
                c.apply_yaml(text).await.expect(name);
            }
        }
        Some(c)
    }

    /// Creates echo Service `name` with endpoints on `nodes` and returns its addresses, made
    /// deliverable on every node.
    async fn service(c: &Cluster, name: &str, nodes: &[usize], ipv6: bool) -> Vec<IpAddr> {
        c.create_json(&echo_service(name, ipv6)).await.unwrap();
        c.create_endpoints("default", name, nodes).await.unwrap();
        let want = if ipv6 { 2 } else { 1 };
        let ips = wait_until_async(
            &format!("{name} to get {want} addresses"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let ips = c
                    .wait_ingress("default", name, Duration::from_secs(60))
                    .await?;
                Ok((ips.len() >= want).then_some(ips))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        for ip in &ips {
            c.topo.add_vip_on_nodes(*ip).unwrap();
        }
        ips
    }

    /// Distinct MACs answering `ip`, once some node answers (waits up to `within`).
    fn answering_macs(c: &Cluster, ip: IpAddr, within: Duration) -> Vec<String> {
        wait_answering_macs(c.topo.client(), ip, within)
    }

    fn node_of(c: &Cluster, mac: &str) -> String {
        c.topo
            .node_by_mac(mac)
            .map(|i| c.topo.nodes[i].name.clone())
            .unwrap_or_else(|| format!("unknown MAC {mac}"))
    }

    /// The agents' address leases (not their per-node presence leases, not the controller's).
    async fn leases(c: &Cluster) -> Vec<Lease> {
        c.address_leases().await.unwrap()
    }

    fn lease_duration(c: &Cluster) -> Duration {
        let s = &c.cfg.timings.lease_duration;
        Duration::from_millis(s.trim_end_matches('s').parse::<u64>().unwrap() * 1000)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allocation_one_mac_per_vip_and_ndp() {
        let _g = serial().await;
        let Some(c) = start("al", 3).await else {
            return;
        };
        let ips = service(&c, "echo", &[0, 1, 2], true).await;
        assert_eq!(
            ips.len(),
            2,
            "dual-stack Service gets one address per family: {ips:?}"
        );
        assert!(ips.iter().any(|i| i.is_ipv4()) && ips.iter().any(|i| i.is_ipv6()));
        let v4 = ips.iter().find(|i| i.is_ipv4()).copied().unwrap();
        let v6 = ips.iter().find(|i| i.is_ipv6()).copied().unwrap();
        assert!(
            v4.to_string().starts_with("198.51.100."),
            "{v4} from lab-v4"
        );
        let macs = answering_macs(&c, v4, Duration::from_secs(20));
        assert_eq!(
            macs.len(),
            1,
            "exactly one MAC answers ARP for {v4}: {macs:?}"
        );
        let macs6 = answering_macs(&c, v6, Duration::from_secs(20));
        assert_eq!(
            macs6.len(),
            1,
            "exactly one MAC answers NDP for {v6}: {macs6:?}"
        );
        assert_eq!(
            macs, macs6,
            "one lease per Service address set: both families on one node"
        );
        // A passing test leaves nothing behind: the logs' directory goes with the cluster.
        let dir = c.cfg.dir.clone();
        assert!(
            dir.is_dir(),
            "{} holds the logs while running",
            dir.display()
        );
        drop(c);
        assert!(!dir.exists(), "{} removed with the cluster", dir.display());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_and_graceful_failover_bounds() {
        let _g = serial().await;
        let Some(mut c) = start("fo", 3).await else {
            return;
        };
        let ips = service(&c, "echo", &[0, 1, 2], false).await;
        let vip = ips[0];
        let lease = lease_duration(&c);
        let f = tokio::task::block_in_place(|| {
            scenario::failover(&mut c, vip, "KILL", Duration::from_secs(30))
        })
        .unwrap();
        assert!(
            f.millis <= (lease + Duration::from_secs(1)).as_millis() as u64,
            "crash failover {} ms > lease duration + 1 s",
            f.millis
        );
        assert!(
            f.gratuitous_seen,
            "the new holder's gratuitous ARP reached the client"
        );
        assert_ne!(f.from, f.to);
        let g = tokio::task::block_in_place(|| {
            scenario::failover(&mut c, vip, "TERM", Duration::from_secs(30))
        })
        .unwrap();
        assert!(g.millis <= 1000, "graceful failover {} ms > 1 s", g.millis);
        let macs = answering_macs(&c, vip, Duration::from_secs(5));
        assert_eq!(macs.len(), 1, "{macs:?}");
        assert_eq!(node_of(&c, &macs[0]), g.to);
    }

    /// Issue 11: the holder's `eth0` goes down (`ip link set eth0 down` in its namespace) while
    /// its agent still reaches the API server over a management link: another node answers HTTP
    /// through the VIP within 1 s (the lab's timed failover: from the link going down to the
    /// first echo answer from another node; figure printed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn link_loss_another_node_answers_http_within_one_second() {
        let _g = serial().await;
        let Some(mut c) = start("ll", 3).await else {
            return;
        };
        let ips = service(&c, "echo", &[0, 1, 2], false).await;
        let vip = ips[0];
        tokio::task::block_in_place(|| ferrolb_lab::lab::linkloss::management_links(&mut c))
            .unwrap();
        let f =
            ferrolb_lab::lab::linkloss::link_loss(&mut c, vip, Duration::from_secs(30)).unwrap();
        println!(
            "link loss: {} answered HTTP through {vip} {} ms after {}'s eth0 went down",
            f.to, f.millis, f.from
        );
        assert_ne!(f.from, f.to);
        assert!(f.millis <= 1000, "link-loss failover {} ms > 1 s", f.millis);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_traffic_policy_follows_endpoints() {
        let _g = serial().await;
        let Some(c) = start("lo", 3).await else {
            return;
        };
        let mut svc = echo_service("local", false);
        svc["spec"]["externalTrafficPolicy"] = "Local".into();
        c.create_json(&svc).await.unwrap();
        c.create_endpoints("default", "local", &[2]).await.unwrap();
        let vip = c
            .wait_ingress("default", "local", Duration::from_secs(60))
            .await
            .unwrap()[0];
        c.topo.add_vip_on_nodes(vip).unwrap();
        let macs = answering_macs(&c, vip, Duration::from_secs(20));
        assert_eq!(
            macs.iter().map(|m| node_of(&c, m)).collect::<Vec<_>>(),
            vec!["node3"]
        );
        // Move the only endpoint to node1: the announcement follows.
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(c.client.clone(), "default");
        let patch = serde_json::json!({"endpoints": [{"addresses": [c.topo.nodes[0].ipv4.to_string()],
            "conditions": {"ready": true}, "nodeName": "node1"}]});
        slices
            .patch("local-lab", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let answering = || {
            let macs = answering_macs(&c, vip, Duration::from_secs(2));
            macs.iter().map(|m| node_of(&c, m)).collect::<Vec<String>>()
        };
        let followed = wait_until(
            "the announcement to follow the endpoint",
            Duration::from_secs(20),
            Duration::ZERO,
            || (answering() == ["node1"]).then_some(()),
        );
        if let Err(e) = followed {
            panic!("{e:#}: {:?}", answering());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_outside_policy_never_answers() {
        let _g = serial().await;
        let Some(mut c) = start("np", 3).await else {
            return;
        };
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
        let unlabel = serde_json::json!({"metadata": {"labels": {"ferrolb.io/lab": null}}});
        nodes
            .patch("node3", &PatchParams::default(), &Patch::Merge(&unlabel))
            .await
            .unwrap();
        let vip = service(&c, "echo", &[0, 1, 2], false).await[0];
        let first = answering_macs(&c, vip, Duration::from_secs(20));
        assert_eq!(first.len(), 1);
        assert_ne!(node_of(&c, &first[0]), "node3");
        // Stop both eligible nodes' agents: nobody may take over, node3 least of all.
        for i in 0..2 {
            c.stop_agent(i, "KILL").unwrap();
        }
        let quiet_until = Instant::now() + lease_duration(&c) + Duration::from_secs(3);
        while Instant::now() < quiet_until {
            let macs = answering_macs(&c, vip, Duration::from_millis(1));
            assert!(
                macs.iter().all(|m| node_of(&c, m) != "node3"),
                "node3 answered: {macs:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_service_is_no_longer_answered_and_its_lease_goes() {
        let _g = serial().await;
        let Some(c) = start("de", 3).await else {
            return;
        };
        let vip = service(&c, "echo", &[0, 1, 2], false).await[0];
        assert_eq!(answering_macs(&c, vip, Duration::from_secs(20)).len(), 1);
        assert_eq!(leases(&c).await.len(), 1, "one lease for one address");
        let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
        svcs.delete("echo", &DeleteParams::default()).await.unwrap();
        let state = || async {
            let macs = answering_macs(&c, vip, Duration::from_millis(1));
            (macs, leases(&c).await.len())
        };
        let gone = wait_until_async(
            "no answer and no lease",
            Duration::from_secs(20),
            Duration::ZERO,
            || async {
                let (macs, n) = state().await;
                Ok((macs.is_empty() && n == 0).then_some(()))
            },
        )
        .await;
        if let Err(e) = gone {
            let (macs, n) = state().await;
            panic!("{e:#}: still answered by {macs:?} / {n} leases left");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn api_outage_longer_than_lease_keeps_vip() {
        let _g = serial().await;
        let Some(c) = start("ou", 3).await else {
            return;
        };
        let vip = service(&c, "echo", &[0, 1, 2], false).await[0];
        let holder = scenario::current_holder(&c, vip, Duration::from_secs(20)).unwrap();
        let prober =
            probe::prober(c.topo.client(), &c.cfg.exe, &format!("http://{vip}/"), 20).unwrap();
        c.fault(Some(serde_json::json!({"kind": "refuse"})))
            .await
            .unwrap();
        let outage = lease_duration(&c) * 3;
        let end = Instant::now() + outage;
        let mut probes = 0;
        while Instant::now() < end {
            if let Some(p) = prober
                .next(Duration::from_millis(500))
                .as_deref()
                .and_then(probe::parse_probe)
            {
                assert_eq!(
                    p.node.as_deref(),
                    Some(holder.as_str()),
                    "VIP lost during the outage at probe {probes}"
                );
                probes += 1;
            }
        }
        c.fault(None).await.unwrap();
        assert!(
            probes > 20,
            "the prober ran throughout the outage ({probes} probes)"
        );
        let macs = answering_macs(&c, vip, Duration::from_secs(5));
        assert_eq!(macs.len(), 1, "{macs:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_cut_off_from_api_is_replaced_without_split_brain() {
        let _g = serial().await;
        let Some(c) = start("cu", 3).await else {
            return;
        };
        let vip = service(&c, "echo", &[0, 1, 2], false).await[0];
        let holder = scenario::current_holder(&c, vip, Duration::from_secs(20)).unwrap();
        c.fault(Some(
            serde_json::json!({"kind": "refuse", "client": holder}),
        ))
        .await
        .unwrap();
        let answering = || {
            let macs = answering_macs(&c, vip, Duration::from_millis(1));
            macs.iter().map(|m| node_of(&c, m)).collect::<Vec<String>>()
        };
        let within = lease_duration(&c) * 4 + Duration::from_secs(5);
        let taken = wait_until(
            &format!("a clean takeover from {holder}"),
            within,
            Duration::ZERO,
            || match &answering()[..] {
                [one] if *one != holder => Some(one.clone()),
                _ => None,
            },
        );
        let new = taken.unwrap_or_else(|e| panic!("{e:#}: {:?}", answering()));
        // The cut-off node saw the newcomer's gratuitous ARP and yielded: only one MAC answers.
        for _ in 0..3 {
            let macs = answering_macs(&c, vip, Duration::from_secs(2));
            assert_eq!(
                macs.iter().map(|m| node_of(&c, m)).collect::<Vec<_>>(),
                vec![new.clone()]
            );
        }
        c.fault(None).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn controller_restart_and_failover_keep_addresses() {
        let _g = serial().await;
        let Some(mut c) = start("cr", 2).await else {
            return;
        };
        let mut before = Vec::new();
        for i in 0..5 {
            before.push(service(&c, &format!("s{i}"), &[0, 1], false).await);
        }
        let svcs: Api<Service> = Api::namespaced(c.client.clone(), "default");
        // Failover: kill one replica at a time (whichever leads), create a Service in between.
        for (round, victim) in [0usize, 1].into_iter().enumerate() {
            if let Some(mut p) = c.controllers[victim].take() {
                p.signal("KILL").unwrap();
                p.wait_exit(Duration::from_secs(10)).unwrap();
            }
            service(&c, &format!("after{round}"), &[0, 1], false).await;
            c.start_controller(victim).unwrap();
        }
        // Full restart: both replicas at once.
        for i in 0..2 {
            if let Some(mut p) = c.controllers[i].take() {
                p.signal("KILL").unwrap();
                p.wait_exit(Duration::from_secs(10)).unwrap();
            }
        }
        for i in 0..2 {
            c.start_controller(i).unwrap();
        }
        service(&c, "after-restart", &[0, 1], false).await;
        for (i, ips) in before.iter().enumerate() {
            let now = ingress_ips(&svcs.get(&format!("s{i}")).await.unwrap());
            assert_eq!(
                &now, ips,
                "s{i} kept its address across controller failover and restart"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_services_spread_evenly() {
        let _g = serial().await;
        let Some(c) = start("ma", 3).await else {
            return;
        };
        let n = 200;
        for i in 0..n {
            let name = format!("m{i}");
            c.create_json(&echo_service(&name, false)).await.unwrap();
            c.create_endpoints("default", &name, &[0, 1, 2])
                .await
                .unwrap();
        }
        let held = || async {
            let ls = leases(&c).await;
            ls.iter()
                .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
                .filter(|h| !h.is_empty())
                .collect::<Vec<String>>()
        };
        let all_held = wait_until_async(
            &format!("all {n} leases to be held"),
            Duration::from_secs(120),
            Duration::from_millis(250),
            || async {
                let held = held().await;
                Ok((held.len() == n).then_some(held))
            },
        )
        .await;
        let held = match all_held {
            Ok(held) => held,
            Err(e) => panic!("{e:#}: only {} of {n} leases held", held().await.len()),
        };
        let mut counts = std::collections::BTreeMap::new();
        for h in held {
            *counts.entry(h).or_insert(0usize) += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        let mean = n as f64 / 3.0;
        assert_eq!(counts.len(), 3, "every node holds some: {counts:?}");
        assert!(
            max / mean <= 1.25,
            "max/mean {:.2} > 1.25: {counts:?}",
            max / mean
        );
    }
}
