//! The lab's L2 segment: a bridge namespace, an `api` member (API server and controllers), N node
//! members (agents and echo backends) and a `client` member, all on documentation ranges:
//!
//! | member   | IPv4            | IPv6              |
//! |----------|-----------------|-------------------|
//! | api      | 192.0.2.254/24  | 2001:db8:1::fe/64 |
//! | node *i* | 192.0.2.(11+i)  | 2001:db8:1::(11+i)|
//! | client   | 192.0.2.100/24  | 2001:db8:1::64/64 |
//!
//! VIPs come from 198.51.100.0/24 and 2001:db8:100::/64; the client reaches them on-link (a
//! device route, no gateway), so it must ARP/NDP for them and only our responder can answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;

use crate::netns::{Netns, Segment};

/// One node of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: String,
}

/// The whole segment. Dropping it removes every namespace and kills what runs inside.
#[derive(Debug)]
pub struct Topology {
    pub seg: Segment,
    pub nodes: Vec<LabNode>,
    pub api_ipv4: Ipv4Addr,
    pub client_ipv4: Ipv4Addr,
}

const API: usize = 0;
const CLIENT: usize = 1;

impl Topology {
    /// Builds the segment with `n` nodes. `tag` keeps concurrent labs/tests apart.
    pub fn build(tag: &str, n: usize) -> anyhow::Result<Self> {
        let mut seg = Segment::create(tag).context("creating the bridge namespace")?;
        seg.add_member(tag, "api", &["192.0.2.254/24", "2001:db8:1::fe/64"])?;
        let client = seg.add_member(tag, "cl", &["192.0.2.100/24", "2001:db8:1::64/64"])?;
        // VIP ranges are on-link for the client: it resolves them with ARP/NDP itself.
        client.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"])?;
        client.ip(&["-6", "route", "add", "2001:db8:100::/64", "dev", "eth0"])?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let v4 = Ipv4Addr::new(192, 0, 2, 11 + i as u8);
            let v6: Ipv6Addr = format!("2001:db8:1::{:x}", 0x11 + i).parse()?;
            let name = format!("node{}", i + 1);
            let ns = seg.add_member(
                tag,
                &format!("n{}", i + 1),
                &[&format!("{v4}/24"), &format!("{v6}/64")],
            )?;
            // The kube-proxy way: VIPs live on `lo`, and the kernel must never answer ARP for
            // them (arp_ignore=1: only for addresses on the receiving interface; arp_announce=2:
            // never use a VIP as the source of our own ARP requests).
            for dev in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{dev}.arp_ignore"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{dev}.arp_announce"), "2")?;
            }
            let mac = ns.mac("eth0")?;
            nodes.push(LabNode {
                name,
                ipv4: v4,
                ipv6: v6,
                mac,
            });
        }
        Ok(Topology {
            seg,
            nodes,
            api_ipv4: Ipv4Addr::new(192, 0, 2, 254),
            client_ipv4: Ipv4Addr::new(192, 0, 2, 100),
        })
    }

    pub fn api(&self) -> &Netns {
        &self.seg.members[API]
    }

    pub fn client(&self) -> &Netns {
        &self.seg.members[CLIENT]
    }

    pub fn node_ns(&self, i: usize) -> &Netns {
        &self.seg.members[2 + i]
    }

    /// Index of the node owning `mac`.
    pub fn node_by_mac(&self, mac: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.mac.eq_ignore_ascii_case(mac))
    }

    /// Makes `vip` deliverable on every node the way kube-proxy does: an address on `lo`.
    pub fn add_vip_on_nodes(&self, vip: IpAddr) -> anyhow::Result<()> {
        let cidr = match vip {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        for i in 0..self.nodes.len() {
            let ns = self.node_ns(i);
            let have = ns.ip(&["addr", "show", "dev", "lo"])?;
            if !have.contains(&format!(" {cidr} ")) {
                ns.ip(&["addr", "add", &cidr, "dev", "lo"])?;
            }
        }
        Ok(())
    }
}
