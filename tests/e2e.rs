//! End-to-end suite on the lab's machinery (root; namespaces are created and removed per test).

use std::net::IpAddr;
use std::time::Duration;

use ferrolb::lab::{probe, topo::Topology};
use ferrolb::netns::is_root;

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
