//! ARP over Ethernet: a pure codec (parse, build) and the decision whether to answer.
//!
//! Nothing here does I/O; every function takes bytes or values and returns values, so the parser
//! is fuzzed (`tests/net.rs`, `fuzz/`) and the builders are compared byte for byte with frames
//! the Linux kernel produces.
//!
//! Choices (documented because they differ between implementations):
//! - We answer ARP *probes* (sender IP 0.0.0.0, RFC 5227) for addresses we hold, like the Linux
//!   kernel does: the prober learns the address is in use. The reply's target IP is then 0.0.0.0.
//! - We never answer a *gratuitous* request (sender IP == target IP): that is another station
//!   announcing the address; if it is one we hold and the MAC is not ours it is a [`Verdict::conflict`].
//! - We answer only requests whose Ethernet destination is broadcast or our MAC (unicast
//!   refreshes); multicast and frames for other stations are ignored, as are frames sent from our
//!   own MAC (our own transmissions seen by the packet socket).
//! - The reply goes unicast to the requester's *ARP sender hardware address* (as the kernel does),
//!   which must be a unicast MAC — we never reply to a broadcast or multicast address.
//! - Gratuitous announcements come in two forms, both broadcast: a request (target MAC zero, as the
//!   kernel's `arp_notify` sends it) and a reply (target MAC broadcast, as MetalLB sends it).

use std::net::Ipv4Addr;

pub use pnet_base::MacAddr;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4 (the ARP protocol type we accept).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Length of an Ethernet II header.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;
/// Length of the frames we build (Ethernet header + ARP, unpadded like the kernel's).
pub const FRAME_LEN: usize = ETH_HEADER_LEN + ARP_LEN;

/// The broadcast MAC.
pub const BROADCAST: MacAddr = MacAddr(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
/// The all-zero MAC.
pub const ZERO_MAC: MacAddr = MacAddr(0, 0, 0, 0, 0, 0);

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Request,
    Reply,
}

impl Op {
    fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Reply => 2,
        }
    }
}

/// A parsed Ethernet + ARP (Ethernet/IPv4) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpFrame {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub op: Op,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

/// Why a frame is not an ARP frame we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame too short: {0} bytes")]
    TooShort(usize),
    #[error("not ARP: ethertype {0:#06x}")]
    NotArp(u16),
    #[error("unsupported ARP hardware/protocol: htype {htype}, ptype {ptype:#06x}, hlen {hlen}, plen {plen}")]
    Unsupported {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
    #[error("unknown ARP operation {0}")]
    BadOp(u16),
}

/// Reads a MAC at `at` (caller guarantees `at + 6 <= b.len()`).
pub(crate) fn mac_at(b: &[u8], at: usize) -> MacAddr {
    MacAddr(b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5])
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// True for a MAC with the group bit set (multicast or broadcast).
pub fn is_multicast_mac(m: MacAddr) -> bool {
    m.0 & 1 == 1
}

/// Parses an Ethernet II frame carrying Ethernet/IPv4 ARP. Trailing bytes (padding) are ignored.
pub fn parse(frame: &[u8]) -> Result<ArpFrame, ParseError> {
    if frame.len() < FRAME_LEN {
        return Err(ParseError::TooShort(frame.len()));
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETHERTYPE_ARP {
        return Err(ParseError::NotArp(ethertype));
    }
    let a = &frame[ETH_HEADER_LEN..];
    let (htype, ptype, hlen, plen) = (be16(a, 0), be16(a, 2), a[4], a[5]);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || hlen != 6 || plen != 4 {
        return Err(ParseError::Unsupported {
            htype,
            ptype,
            hlen,
            plen,
        });
    }
    let op = match be16(a, 6) {
        1 => Op::Request,
        2 => Op::Reply,
        other => return Err(ParseError::BadOp(other)),
    };
    Ok(ArpFrame {
        eth_dst: mac_at(frame, 0),
        eth_src: mac_at(frame, 6),
        op,
        sender_mac: mac_at(a, 8),
        sender_ip: ipv4_at(a, 14),
        target_mac: mac_at(a, 18),
        target_ip: ipv4_at(a, 24),
    })
}

fn put_mac(b: &mut [u8], at: usize, m: MacAddr) {
    b[at..at + 6].copy_from_slice(&m.octets());
}

/// Serialises a frame (42 bytes, no padding).
pub fn encode(f: &ArpFrame) -> [u8; FRAME_LEN] {
    let mut b = [0u8; FRAME_LEN];
    put_mac(&mut b, 0, f.eth_dst);
    put_mac(&mut b, 6, f.eth_src);
    b[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    b[14..16].copy_from_slice(&1u16.to_be_bytes());
    b[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    b[18] = 6;
    b[19] = 4;
    b[20..22].copy_from_slice(&f.op.code().to_be_bytes());
    put_mac(&mut b, 22, f.sender_mac);
    b[28..32].copy_from_slice(&f.sender_ip.octets());
    put_mac(&mut b, 32, f.target_mac);
    b[38..42].copy_from_slice(&f.target_ip.octets());
    b
}

/// The reply to `req` from `our_mac` (unicast to the requester's sender hardware address).
pub fn reply_to(req: &ArpFrame, our_mac: MacAddr) -> ArpFrame {
    ArpFrame {
        eth_dst: req.sender_mac,
        eth_src: our_mac,
        op: Op::Reply,
        sender_mac: our_mac,
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    }
}

/// A gratuitous announcement of `ip` at `mac`, broadcast. The request form has a zero target
/// MAC (like the kernel's own), the reply form a broadcast one (like MetalLB's).
pub fn gratuitous(op: Op, mac: MacAddr, ip: Ipv4Addr) -> ArpFrame {
    ArpFrame {
        eth_dst: BROADCAST,
        eth_src: mac,
        op,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: match op {
            Op::Request => ZERO_MAC,
            Op::Reply => BROADCAST,
        },
        target_ip: ip,
    }
}

/// An ARP probe for `ip` from `mac` (RFC 5227: sender address 0.0.0.0, broadcast). It changes
/// nobody's neighbour table; a host that has `ip` on an interface answers it (Linux does with
/// `arp_ignore=0` even for an address on another interface, e.g. kube-proxy's `kube-ipvs0`),
/// and that answer reaches us as a conflict: a foreign answerer.
pub fn probe(mac: MacAddr, ip: Ipv4Addr) -> ArpFrame {
    ArpFrame {
        eth_dst: BROADCAST,
        eth_src: mac,
        op: Op::Request,
        sender_mac: mac,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: ZERO_MAC,
        target_ip: ip,
    }
}

/// Why a request is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    NotRequest,
    OwnFrame,
    NotForUs,
    Gratuitous,
    NotHeld,
    BadSender,
}

/// What to do with a received ARP frame.
pub type Verdict = super::Verdict<Ipv4Addr, ArpFrame, Ignored>;

/// Decides what to do with `f` received on an interface whose MAC is `our_mac`; `held(ip)` says
/// whether we hold `ip` on this interface.
pub fn decide(f: &ArpFrame, our_mac: MacAddr, held: impl Fn(Ipv4Addr) -> bool) -> Verdict {
    let own = f.eth_src == our_mac || f.sender_mac == our_mac;
    let conflict = (!own && !f.sender_ip.is_unspecified() && held(f.sender_ip))
        .then_some((f.sender_ip, f.sender_mac));
    // Our probes come from 0.0.0.0, so their answers go to 0.0.0.0; a takeover announcement
    // never does (its target is the address itself).
    let probe_answer = conflict.is_some() && f.op == Op::Reply && f.target_ip.is_unspecified();
    let request_for = (f.op == Op::Request && !own && held(f.target_ip)).then_some(f.target_ip);
    let reply = if f.op != Op::Request {
        Err(Ignored::NotRequest)
    } else if own {
        Err(Ignored::OwnFrame)
    } else if f.eth_dst != BROADCAST && f.eth_dst != our_mac {
        Err(Ignored::NotForUs)
    } else if f.sender_ip == f.target_ip {
        Err(Ignored::Gratuitous)
    } else if !held(f.target_ip) {
        Err(Ignored::NotHeld)
    } else if is_multicast_mac(f.sender_mac) || f.sender_mac == ZERO_MAC {
        Err(Ignored::BadSender)
    } else {
        Ok(reply_to(f, our_mac))
    };
    Verdict {
        request_for,
        reply,
        conflict,
        probe_answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const THEM: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0c);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    fn request(target: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            eth_dst: BROADCAST,
            eth_src: THEM,
            op: Op::Request,
            sender_mac: THEM,
            sender_ip: CLIENT,
            target_mac: ZERO_MAC,
            target_ip: target,
        }
    }

    fn held(ip: Ipv4Addr) -> bool {
        ip == VIP
    }

    #[test]
    fn roundtrip_encode_parse() {
        let f = request(VIP);
        let bytes = encode(&f);
        assert_eq!(parse(&bytes), Ok(f));
        // Padding to the Ethernet minimum is ignored.
        let mut padded = bytes.to_vec();
        padded.resize(60, 0);
        assert_eq!(parse(&padded), Ok(f));
    }

    #[test]
    fn rejects_short_and_foreign() {
        let bytes = encode(&request(VIP));
        for n in 0..FRAME_LEN {
            assert_eq!(parse(&bytes[..n]), Err(ParseError::TooShort(n)));
        }
        let mut ipv6 = bytes;
        ipv6[12] = 0x86;
        ipv6[13] = 0xdd;
        assert_eq!(parse(&ipv6), Err(ParseError::NotArp(0x86dd)));
        let mut badop = bytes;
        badop[21] = 9;
        assert_eq!(parse(&badop), Err(ParseError::BadOp(9)));
        let mut badhlen = bytes;
        badhlen[18] = 8;
        assert!(matches!(
            parse(&badhlen),
            Err(ParseError::Unsupported { hlen: 8, .. })
        ));
    }

    #[test]
    fn answers_broadcast_request_for_held_address() {
        let v = decide(&request(VIP), US, held);
        let r = v.reply.expect("reply");
        assert_eq!(r.eth_dst, THEM);
        assert_eq!(r.eth_src, US);
        assert_eq!(r.op, Op::Reply);
        assert_eq!((r.sender_mac, r.sender_ip), (US, VIP));
        assert_eq!((r.target_mac, r.target_ip), (THEM, CLIENT));
        assert_eq!(v.request_for, Some(VIP));
        assert_eq!(v.conflict, None);
    }

    #[test]
    fn answers_unicast_refresh_but_not_frames_for_others() {
        let mut f = request(VIP);
        f.eth_dst = US;
        assert!(decide(&f, US, held).reply.is_ok());
        f.eth_dst = MacAddr(0x02, 0, 0, 0, 0, 0x0b);
        assert_eq!(decide(&f, US, held).reply, Err(Ignored::NotForUs));
        f.eth_dst = MacAddr(0x01, 0, 0x5e, 0, 0, 1);
        assert_eq!(decide(&f, US, held).reply, Err(Ignored::NotForUs));
    }

    #[test]
    fn never_answers_unheld_own_or_replies() {
        assert_eq!(
            decide(&request(Ipv4Addr::new(198, 51, 100, 11)), US, held).reply,
            Err(Ignored::NotHeld)
        );
        let mut own = request(VIP);
        own.eth_src = US;
        own.sender_mac = US;
        assert_eq!(decide(&own, US, held).reply, Err(Ignored::OwnFrame));
        let mut rep = request(VIP);
        rep.op = Op::Reply;
        assert_eq!(decide(&rep, US, held).reply, Err(Ignored::NotRequest));
    }

    #[test]
    fn answers_probe_and_refuses_multicast_sender() {
        let mut probe = request(VIP);
        probe.sender_ip = Ipv4Addr::UNSPECIFIED;
        let r = decide(&probe, US, held).reply.expect("probe answered");
        assert_eq!(r.target_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.eth_dst, THEM);
        let mut bad = request(VIP);
        bad.sender_mac = BROADCAST;
        assert_eq!(decide(&bad, US, held).reply, Err(Ignored::BadSender));
    }

    #[test]
    fn gratuitous_from_another_station_is_a_conflict_not_answered() {
        for op in [Op::Request, Op::Reply] {
            let g = gratuitous(op, THEM, VIP);
            let v = decide(&g, US, held);
            assert_eq!(v.conflict, Some((VIP, THEM)));
            assert!(v.reply.is_err());
        }
        // Our own gratuitous frames are not a conflict.
        let v = decide(&gratuitous(Op::Request, US, VIP), US, held);
        assert_eq!(v.conflict, None);
        // Nor is another station's announcement of an address we do not hold.
        let v = decide(&gratuitous(Op::Reply, THEM, CLIENT), US, held);
        assert_eq!(v.conflict, None);
    }

    #[test]
    fn an_answer_to_our_probe_is_a_probe_answer_a_gratuitous_reply_is_not() {
        let answer = reply_to(&probe(US, VIP), THEM);
        assert_eq!(answer.target_ip, Ipv4Addr::UNSPECIFIED);
        let v = decide(&answer, US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), true));
        for op in [Op::Request, Op::Reply] {
            let v = decide(&gratuitous(op, THEM, VIP), US, held);
            assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), false));
        }
        // No conflict (another address), no probe answer.
        let mut other = answer;
        other.sender_ip = CLIENT;
        let v = decide(&other, US, held);
        assert_eq!((v.conflict, v.probe_answer), (None, false));
    }

    #[test]
    fn gratuitous_forms() {
        let req = gratuitous(Op::Request, US, VIP);
        assert_eq!(req.target_mac, ZERO_MAC);
        assert_eq!(req.eth_dst, BROADCAST);
        let rep = gratuitous(Op::Reply, US, VIP);
        assert_eq!(rep.target_mac, BROADCAST);
        assert_eq!((rep.sender_ip, rep.target_ip), (VIP, VIP));
        let b = encode(&rep);
        assert_eq!(&b[20..22], &[0, 2]);
    }
}
