//! libFuzzer target for the ARP and NDP parsers and answer decisions.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run packets -- -max_total_time=60` in `fuzz/`
//! (stable toolchain; RUSTC_BOOTSTRAP enables the sanitizer flags cargo-fuzz passes).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;

// Included by path at the crate root (ndp.rs refers to `super::arp`).
#[allow(dead_code)]
#[path = "../../crates/ferrolb/src/net/arp.rs"]
mod arp;
#[allow(dead_code)]
#[path = "../../crates/ferrolb/src/net/ndp.rs"]
mod ndp;
#[path = "../../crates/ferrolb/src/net/verdict.rs"]
mod verdict;
use verdict::Verdict;

const US: arp::MacAddr = arp::MacAddr(0x02, 0, 0, 0, 0, 0x0a);

/// The input with the IPv6 payload length and ICMPv6 checksum made consistent, so the fuzzer
/// reaches the NDP option parser and decisions instead of stopping at the checksum.
fn fixed(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < 14 + 40 + 4 {
        return b;
    }
    let plen = (b.len() - 54).min(usize::from(u16::MAX)) as u16;
    b[18..20].copy_from_slice(&plen.to_be_bytes());
    b[56] = 0;
    b[57] = 0;
    let mut s = [0u8; 16];
    s.copy_from_slice(&b[22..38]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[38..54]);
    let c = ndp::checksum(Ipv6Addr::from(s), Ipv6Addr::from(d), &b[54..]);
    b[56..58].copy_from_slice(&c.to_be_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&fixed(data));
});

fn check(data: &[u8]) {
    let held4 = |ip: Ipv4Addr| ip == Ipv4Addr::new(198, 51, 100, 10);
    let held6 = |ip: Ipv6Addr| ip == Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
    if let Ok(a) = arp::parse(data) {
        assert_eq!(arp::parse(&arp::encode(&a)), Ok(a));
        if let Ok(r) = arp::decide(&a, US, held4).reply {
            assert!(held4(r.sender_ip));
            assert!(!arp::is_multicast_mac(r.eth_dst));
        }
    }
    if let Ok(n) = ndp::parse(data) {
        assert_eq!(ndp::parse(&ndp::encode(&n)), Ok(n));
        if let Ok(r) = ndp::decide(&n, US, held6).reply {
            assert!(held6(r.msg.target()));
            assert_eq!(ndp::parse(&ndp::encode(&r)), Ok(r));
        }
    }
}
