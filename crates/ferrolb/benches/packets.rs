//! The responder's per-frame work: parse, decide, build the answer (no I/O). This is what the
//! reader thread does between `recvfrom` and `sendto` for every ARP request / NS it receives.
//!
//! `cargo bench --bench packets`. Frames use documentation addresses only.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrolb::net::arp::{self, MacAddr};
use ferrolb::net::ndp;

const US: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
const THEM: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0c);

fn frames() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let vip4 = Ipv4Addr::new(198, 51, 100, 10);
    let vip6: Ipv6Addr = "2001:db8:100::10".parse().expect("ip");
    let req = arp::encode(&arp::ArpFrame {
        eth_dst: arp::BROADCAST,
        eth_src: THEM,
        op: arp::Op::Request,
        sender_mac: THEM,
        sender_ip: Ipv4Addr::new(192, 0, 2, 3),
        target_mac: arp::ZERO_MAC,
        target_ip: vip4,
    })
    .to_vec();
    let group = ndp::solicited_node(vip6);
    let ns = ndp::encode(&ndp::NdpFrame {
        eth_dst: ndp::multicast_mac(group),
        eth_src: THEM,
        ip_src: "2001:db8:1::3".parse().expect("ip"),
        ip_dst: group,
        hop_limit: 255,
        msg: ndp::Message::Solicit {
            target: vip6,
            source_ll: Some(THEM),
        },
    });
    // A request for an address we do not hold (the common case on a busy segment).
    let mut other = req.clone();
    other[41] = 99;
    (req, ns, other)
}

fn bench(c: &mut Criterion) {
    let (req, ns, other) = frames();
    // 1,000 held addresses, looked up like the reader does (a hash set per interface).
    let held4: std::collections::HashSet<Ipv4Addr> = (0..1000u32)
        .map(|i| {
            Ipv4Addr::from(
                u32::from(Ipv4Addr::new(198, 51, 100, 0)) + (i % 256) + (i / 256) * 65536,
            )
        })
        .chain([Ipv4Addr::new(198, 51, 100, 10)])
        .collect();
    let held6: std::collections::HashSet<Ipv6Addr> = (0..1000u16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i))
        .chain(["2001:db8:100::10".parse().expect("ip")])
        .collect();
    let mut g = c.benchmark_group("responder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("arp_request_to_reply_bytes", |b| {
        b.iter(|| {
            let f = arp::parse(black_box(&req)).expect("arp");
            let v = arp::decide(&f, US, |ip| held4.contains(&ip));
            black_box(v.reply.map(|r| arp::encode(&r)))
        })
    });
    g.bench_function("arp_request_not_held", |b| {
        b.iter(|| {
            let f = arp::parse(black_box(&other)).expect("arp");
            black_box(arp::decide(&f, US, |ip| held4.contains(&ip)).reply.is_ok())
        })
    });
    g.bench_function("ns_to_na_bytes", |b| {
        b.iter(|| {
            let f = ndp::parse(black_box(&ns)).expect("ns");
            let v = ndp::decide(&f, US, |ip| held6.contains(&ip));
            black_box(v.reply.map(|r| ndp::encode(&r)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
