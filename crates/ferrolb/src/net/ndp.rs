//! IPv6 Neighbor Discovery (RFC 4861) over Ethernet: a pure codec for Neighbor Solicitations and
//! Advertisements and the decision whether to answer.
//!
//! The parser validates like a host must (RFC 4861 §7.1): IPv6 next header ICMPv6 (no extension
//! headers), hop limit 255, ICMPv6 code 0, a correct checksum, a non-multicast target, well-formed
//! options (length 0 is invalid; an option may not run past the message), an NS from `::` (DAD)
//! must go to a solicited-node group and carry no source link-layer option, an NA to a multicast
//! address must not have the Solicited flag. Options are parsed here with checked slicing (not
//! pnet_packet's option parser, which can panic on hostile input).
//!
//! Answers (see [`decide`]):
//! - NS for a held target sent to its solicited-node group (`ff02::1:ffXX:XXXX`, MAC
//!   `33:33:ff:XX:XX:XX`) or unicast to the target itself with our MAC (NUD) → NA with Solicited +
//!   Override and a target link-layer option, from the target address, to the solicitor's address
//!   and link-layer address (its source link-layer option, else the Ethernet source).
//!   (The kernel omits Override and the option when answering a unicast NS; we always set them so
//!   a stale neighbour entry pointing at a previous holder is corrected at once.)
//! - NS from `::` (another node's DAD for an address we hold) → NA to all-nodes `ff02::1`,
//!   Override, not Solicited (as the kernel defends its addresses).
//! - Unsolicited NA on takeover: to `ff02::1`, Override, not Solicited, source = the announced
//!   address, target link-layer option — the form the kernel sends (`ndisc_notify`).
//!
//! Probing for foreign answerers ([`probe`]): with each announcement the announcer sends an NS
//! for the held address, *from that address*, to its solicited-node group, with our MAC as
//! source link-layer option. A host that has the address on the receiving interface (a static
//! address left on it; Linux answers NS only for addresses on the interface the NS arrives on)
//! answers with a Solicited NA unicast to us. Not DAD-style from `::`: Linux answers a DAD probe
//! with an unsolicited NA to all-nodes, which cannot be told from another node announcing a
//! takeover — and a sticky holder must yield to the latter, never to an answer to its own probe.
//! Hence the classification in [`decide`]: an NA with the Solicited flag answers someone's NS;
//! the only NS we send are these probes, and a takeover is always announced unsolicited
//! (RFC 4861 §7.2.6), so a Solicited NA from another station is a `probe_answer` conflict. So is
//! an NS for an address from that same address: another announcer's probe like ours, or the
//! neighbour-unreachability check a host with the address may make of the entry our probe left
//! in its cache — neither announces a takeover.

use std::net::Ipv6Addr;

use super::arp::{be16, is_multicast_mac, mac_at, MacAddr};

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbor Solicitation.
pub const TYPE_NS: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const TYPE_NA: u8 = 136;
const ETH: usize = 14;
const IP6: usize = 40;
/// Fixed part of an NS/NA (type, code, checksum, flags/reserved, target).
const ND_FIXED: usize = 24;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Length of the frames we build: Ethernet + IPv6 + NA + one link-layer option.
pub const NA_FRAME_LEN: usize = ETH + IP6 + ND_FIXED + 8;

/// All-nodes multicast address.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A parsed NS or NA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    Solicit {
        target: Ipv6Addr,
        source_ll: Option<MacAddr>,
    },
    Advert {
        router: bool,
        solicited: bool,
        override_: bool,
        target: Ipv6Addr,
        target_ll: Option<MacAddr>,
    },
}

impl Message {
    pub fn target(&self) -> Ipv6Addr {
        match *self {
            Message::Solicit { target, .. } | Message::Advert { target, .. } => target,
        }
    }
}

/// A parsed Ethernet + IPv6 + ICMPv6 NS/NA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NdpFrame {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub ip_src: Ipv6Addr,
    pub ip_dst: Ipv6Addr,
    pub hop_limit: u8,
    pub msg: Message,
}

/// Why a frame is not a valid NS/NA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame too short: {0} bytes")]
    TooShort(usize),
    #[error("not IPv6: ethertype {0:#06x}")]
    NotIpv6(u16),
    #[error("IP version {0}, not 6")]
    BadVersion(u8),
    #[error("next header {0}, not ICMPv6")]
    NotIcmpv6(u8),
    #[error("IPv6 payload length {0} exceeds the frame")]
    Truncated(usize),
    #[error("ICMPv6 type {0} is not NS/NA")]
    NotNd(u8),
    #[error("hop limit {0}, not 255")]
    HopLimit(u8),
    #[error("ICMPv6 code {0}, not 0")]
    BadCode(u8),
    #[error("bad ICMPv6 checksum")]
    BadChecksum,
    #[error("malformed option at offset {0}")]
    BadOption(usize),
    #[error("multicast target address")]
    MulticastTarget,
    #[error("DAD solicitation not to a solicited-node group or with a source link-layer option")]
    BadDad,
    #[error("solicited advertisement to a multicast address")]
    SolicitedMulticast,
}

/// The solicited-node multicast group of `ip` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The Ethernet multicast MAC of an IPv6 multicast address (`33:33` + its last 32 bits).
pub fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr(0x33, 0x33, o[12], o[13], o[14], o[15])
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// ICMPv6 checksum over the pseudo-header and `msg` (whose checksum field is included as is:
/// a correct message sums to 0, a message with a zeroed field gives the value to store).
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        let mut chunks = b.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Walks options with checked arithmetic; returns the first link-layer address of `want`.
fn link_layer_option(opts: &[u8], base: usize, want: u8) -> Result<Option<MacAddr>, ParseError> {
    let mut found = None;
    let mut at = 0usize;
    while at < opts.len() {
        let rest = &opts[at..];
        let (Some(&ty), Some(&units)) = (rest.first(), rest.get(1)) else {
            return Err(ParseError::BadOption(base + at));
        };
        let len = usize::from(units) * 8;
        if len == 0 || len > rest.len() {
            return Err(ParseError::BadOption(base + at));
        }
        if ty == want && found.is_none() && len >= 8 {
            found = Some(mac_at(rest, 2));
        }
        at += len;
    }
    Ok(found)
}

/// Parses and validates an Ethernet frame carrying an NS or NA (see module docs).
pub fn parse(frame: &[u8]) -> Result<NdpFrame, ParseError> {
    if frame.len() < ETH + IP6 {
        return Err(ParseError::TooShort(frame.len()));
    }
    let ethertype = be16(frame, 12);
    if ethertype != ETHERTYPE_IPV6 {
        return Err(ParseError::NotIpv6(ethertype));
    }
    let ip = &frame[ETH..];
    let version = ip[0] >> 4;
    if version != 6 {
        return Err(ParseError::BadVersion(version));
    }
    let payload_len = usize::from(be16(ip, 4));
    let next_header = ip[6];
    let hop_limit = ip[7];
    if next_header != NEXT_HEADER_ICMPV6 {
        return Err(ParseError::NotIcmpv6(next_header));
    }
    let msg = ip
        .get(IP6..IP6 + payload_len)
        .ok_or(ParseError::Truncated(payload_len))?;
    if msg.len() < ND_FIXED {
        return Err(ParseError::TooShort(frame.len()));
    }
    let ty = msg[0];
    if ty != TYPE_NS && ty != TYPE_NA {
        return Err(ParseError::NotNd(ty));
    }
    if hop_limit != 255 {
        return Err(ParseError::HopLimit(hop_limit));
    }
    if msg[1] != 0 {
        return Err(ParseError::BadCode(msg[1]));
    }
    let ip_src = ipv6_at(ip, 8);
    let ip_dst = ipv6_at(ip, 24);
    if checksum(ip_src, ip_dst, msg) != 0 {
        return Err(ParseError::BadChecksum);
    }
    let target = ipv6_at(msg, 8);
    if target.is_multicast() {
        return Err(ParseError::MulticastTarget);
    }
    let opts = &msg[ND_FIXED..];
    let opts_base = ETH + IP6 + ND_FIXED;
    let m = if ty == TYPE_NS {
        let source_ll = link_layer_option(opts, opts_base, OPT_SOURCE_LL)?;
        if ip_src.is_unspecified() && (source_ll.is_some() || ip_dst != solicited_node(target)) {
            return Err(ParseError::BadDad);
        }
        Message::Solicit { target, source_ll }
    } else {
        let flags = msg[4];
        let solicited = flags & 0x40 != 0;
        if solicited && ip_dst.is_multicast() {
            return Err(ParseError::SolicitedMulticast);
        }
        Message::Advert {
            router: flags & 0x80 != 0,
            solicited,
            override_: flags & 0x20 != 0,
            target,
            target_ll: link_layer_option(opts, opts_base, OPT_TARGET_LL)?,
        }
    };
    Ok(NdpFrame {
        eth_dst: mac_at(frame, 0),
        eth_src: mac_at(frame, 6),
        ip_src,
        ip_dst,
        hop_limit,
        msg: m,
    })
}

/// Serialises a frame, computing the payload length and checksum.
pub fn encode(f: &NdpFrame) -> Vec<u8> {
    let (ty, flags, target, ll) = match f.msg {
        Message::Solicit { target, source_ll } => {
            (TYPE_NS, 0u8, target, source_ll.map(|m| (OPT_SOURCE_LL, m)))
        }
        Message::Advert {
            router,
            solicited,
            override_,
            target,
            target_ll,
        } => (
            TYPE_NA,
            (u8::from(router) << 7) | (u8::from(solicited) << 6) | (u8::from(override_) << 5),
            target,
            target_ll.map(|m| (OPT_TARGET_LL, m)),
        ),
    };
    let msg_len = ND_FIXED + if ll.is_some() { 8 } else { 0 };
    let mut b = Vec::with_capacity(ETH + IP6 + msg_len);
    b.extend_from_slice(&f.eth_dst.octets());
    b.extend_from_slice(&f.eth_src.octets());
    b.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    b.extend_from_slice(&[0x60, 0, 0, 0]);
    b.extend_from_slice(&(msg_len as u16).to_be_bytes());
    b.push(NEXT_HEADER_ICMPV6);
    b.push(f.hop_limit);
    b.extend_from_slice(&f.ip_src.octets());
    b.extend_from_slice(&f.ip_dst.octets());
    let m0 = b.len();
    b.extend_from_slice(&[ty, 0, 0, 0, flags, 0, 0, 0]);
    b.extend_from_slice(&target.octets());
    if let Some((opt, mac)) = ll {
        b.extend_from_slice(&[opt, 1]);
        b.extend_from_slice(&mac.octets());
    }
    let c = checksum(f.ip_src, f.ip_dst, &b[m0..]);
    b[m0 + 2..m0 + 4].copy_from_slice(&c.to_be_bytes());
    b
}

/// An unsolicited NA announcing `ip` at `mac` (Override, to all-nodes, from `ip`).
pub fn unsolicited_na(mac: MacAddr, ip: Ipv6Addr) -> NdpFrame {
    NdpFrame {
        eth_dst: multicast_mac(ALL_NODES),
        eth_src: mac,
        ip_src: ip,
        ip_dst: ALL_NODES,
        hop_limit: 255,
        msg: Message::Advert {
            router: false,
            solicited: false,
            override_: true,
            target: ip,
            target_ll: Some(mac),
        },
    }
}

/// A probe for `ip` from `mac`: an NS for `ip`, from `ip`, to its solicited-node group, with a
/// source link-layer option (see the module docs). A host with `ip` on the receiving interface
/// answers with a Solicited NA to `ip` at `mac`, which [`decide`] reports as a `probe_answer`
/// conflict.
pub fn probe(mac: MacAddr, ip: Ipv6Addr) -> NdpFrame {
    let group = solicited_node(ip);
    NdpFrame {
        eth_dst: multicast_mac(group),
        eth_src: mac,
        ip_src: ip,
        ip_dst: group,
        hop_limit: 255,
        msg: Message::Solicit {
            target: ip,
            source_ll: Some(mac),
        },
    }
}

/// Why an NS is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    NotSolicitation,
    OwnFrame,
    NotForUs,
    NotHeld,
    BadSender,
}

/// What to do with a received NS/NA.
pub type Verdict = super::Verdict<Ipv6Addr, NdpFrame, Ignored>;

/// Decides what to do with `f` received on an interface whose MAC is `our_mac`; `held(ip)` says
/// whether we hold `ip` on this interface.
pub fn decide(f: &NdpFrame, our_mac: MacAddr, held: impl Fn(Ipv6Addr) -> bool) -> Verdict {
    let own = f.eth_src == our_mac;
    match f.msg {
        Message::Advert {
            target,
            target_ll,
            solicited,
            ..
        } => {
            let mac = target_ll.unwrap_or(f.eth_src);
            let conflict = (!own && mac != our_mac && held(target)).then_some((target, mac));
            Verdict {
                request_for: None,
                reply: Err(Ignored::NotSolicitation),
                conflict,
                // Solicited: the answer to an NS, i.e. to our probe (module docs).
                probe_answer: conflict.is_some() && solicited,
            }
        }
        Message::Solicit { target, source_ll } => {
            let sender_mac = source_ll.unwrap_or(f.eth_src);
            let conflict =
                (!own && sender_mac != our_mac && !f.ip_src.is_unspecified() && held(f.ip_src))
                    .then_some((f.ip_src, sender_mac));
            // A probe (from the address, for the address; module docs), not an announcement.
            let probe_answer = conflict.is_some() && f.ip_src == target;
            let is_held = held(target);
            let request_for = (!own && is_held).then_some(target);
            let reply = if own {
                Err(Ignored::OwnFrame)
            } else if (f.eth_dst != our_mac && f.eth_dst != multicast_mac(f.ip_dst))
                || (f.ip_dst != target && f.ip_dst != solicited_node(target))
            {
                Err(Ignored::NotForUs)
            } else if !is_held {
                Err(Ignored::NotHeld)
            } else if f.ip_src.is_unspecified() {
                // DAD probe: answer to all-nodes with an unsolicited NA.
                Ok(unsolicited_na(our_mac, target))
            } else if is_multicast_mac(sender_mac)
                || sender_mac.octets() == [0; 6]
                || f.ip_src.is_multicast()
            {
                Err(Ignored::BadSender)
            } else {
                Ok(NdpFrame {
                    eth_dst: sender_mac,
                    eth_src: our_mac,
                    ip_src: target,
                    ip_dst: f.ip_src,
                    hop_limit: 255,
                    msg: Message::Advert {
                        router: false,
                        solicited: true,
                        override_: true,
                        target,
                        target_ll: Some(our_mac),
                    },
                })
            };
            Verdict {
                request_for,
                reply,
                conflict,
                probe_answer,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0a);
    const THEM: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x0c);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 3);

    fn ns(target: Ipv6Addr) -> NdpFrame {
        let dst = solicited_node(target);
        NdpFrame {
            eth_dst: multicast_mac(dst),
            eth_src: THEM,
            ip_src: CLIENT,
            ip_dst: dst,
            hop_limit: 255,
            msg: Message::Solicit {
                target,
                source_ll: Some(THEM),
            },
        }
    }

    fn held(ip: Ipv6Addr) -> bool {
        ip == VIP
    }

    #[test]
    fn solicited_node_group_and_mac() {
        let g = solicited_node(VIP);
        assert_eq!(g, "ff02::1:ff00:10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(g), MacAddr(0x33, 0x33, 0xff, 0, 0, 0x10));
        let g = solicited_node("2001:db8::abcd:ef12:3456".parse().unwrap());
        assert_eq!(
            multicast_mac(g),
            MacAddr(0x33, 0x33, 0xff, 0x12, 0x34, 0x56)
        );
    }

    #[test]
    fn roundtrip_and_checksum() {
        let f = ns(VIP);
        let b = encode(&f);
        assert_eq!(b.len(), NA_FRAME_LEN);
        assert_eq!(parse(&b), Ok(f));
        let na = unsolicited_na(US, VIP);
        assert_eq!(parse(&encode(&na)), Ok(na));
        for i in 14 + 8..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            assert!(parse(&bad).is_err(), "flipped byte {i} still parsed");
        }
    }

    #[test]
    fn validation() {
        let b = encode(&ns(VIP));
        let mut hop = b.clone();
        hop[21] = 64;
        assert_eq!(parse(&hop), Err(ParseError::HopLimit(64)));
        let mut zero_opt = b.clone();
        zero_opt[14 + 40 + 24 + 1] = 0;
        // Fix the checksum so only the option is wrong.
        fix_checksum(&mut zero_opt);
        assert_eq!(parse(&zero_opt), Err(ParseError::BadOption(78)));
        let mut long_opt = b.clone();
        long_opt[14 + 40 + 24 + 1] = 200;
        fix_checksum(&mut long_opt);
        assert_eq!(parse(&long_opt), Err(ParseError::BadOption(78)));
        let mut dad = ns(VIP);
        dad.ip_src = Ipv6Addr::UNSPECIFIED;
        assert_eq!(parse(&encode(&dad)), Err(ParseError::BadDad));
        dad.msg = Message::Solicit {
            target: VIP,
            source_ll: None,
        };
        assert_eq!(parse(&encode(&dad)), Ok(dad));
        let mut trunc = b.clone();
        trunc.truncate(b.len() - 1);
        assert_eq!(parse(&trunc), Err(ParseError::Truncated(32)));
    }

    fn fix_checksum(b: &mut [u8]) {
        let m0 = 14 + 40;
        b[m0 + 2] = 0;
        b[m0 + 3] = 0;
        let src = ipv6_at(b, 14 + 8);
        let dst = ipv6_at(b, 14 + 24);
        let c = checksum(src, dst, &b[m0..]);
        b[m0 + 2..m0 + 4].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn answers_multicast_ns_with_solicited_override_na() {
        let v = decide(&ns(VIP), US, held);
        assert_eq!(v.request_for, Some(VIP));
        let r = v.reply.expect("answered");
        assert_eq!((r.eth_dst, r.eth_src), (THEM, US));
        assert_eq!((r.ip_src, r.ip_dst, r.hop_limit), (VIP, CLIENT, 255));
        assert_eq!(
            r.msg,
            Message::Advert {
                router: false,
                solicited: true,
                override_: true,
                target: VIP,
                target_ll: Some(US)
            }
        );
        assert_eq!(parse(&encode(&r)), Ok(r));
    }

    #[test]
    fn answers_unicast_nud_without_source_option() {
        let mut f = ns(VIP);
        f.eth_dst = US;
        f.ip_dst = VIP;
        f.msg = Message::Solicit {
            target: VIP,
            source_ll: None,
        };
        let r = decide(&f, US, held).reply.expect("NUD answered");
        assert_eq!(r.eth_dst, THEM, "falls back to the Ethernet source");
        assert_eq!(r.ip_dst, CLIENT);
        // Unicast to another MAC, or to the wrong address, is not for us.
        f.eth_dst = THEM;
        assert_eq!(decide(&f, US, held).reply, Err(Ignored::NotForUs));
        f.eth_dst = US;
        f.ip_dst = CLIENT;
        assert_eq!(decide(&f, US, held).reply, Err(Ignored::NotForUs));
    }

    #[test]
    fn dad_is_defended_to_all_nodes() {
        let mut f = ns(VIP);
        f.ip_src = Ipv6Addr::UNSPECIFIED;
        f.msg = Message::Solicit {
            target: VIP,
            source_ll: None,
        };
        let r = decide(&f, US, held).reply.expect("defended");
        assert_eq!(r.ip_dst, ALL_NODES);
        assert_eq!(r.eth_dst, MacAddr(0x33, 0x33, 0, 0, 0, 1));
        assert!(matches!(
            r.msg,
            Message::Advert {
                solicited: false,
                override_: true,
                ..
            }
        ));
    }

    #[test]
    fn never_answers_unheld_or_own() {
        let other: Ipv6Addr = "2001:db8:100::11".parse().unwrap();
        assert_eq!(decide(&ns(other), US, held).reply, Err(Ignored::NotHeld));
        let mut own = ns(VIP);
        own.eth_src = US;
        assert_eq!(decide(&own, US, held).reply, Err(Ignored::OwnFrame));
        // NS for VIP sent to the solicited-node group of another address.
        let mut wrong = ns(VIP);
        wrong.ip_dst = solicited_node(other);
        wrong.eth_dst = multicast_mac(wrong.ip_dst);
        assert_eq!(decide(&wrong, US, held).reply, Err(Ignored::NotForUs));
    }

    /// What a host with `VIP` on its interface sends back to our probe (as Linux's
    /// `ndisc_recv_ns` builds it: Solicited, Override, target option, unicast to the prober).
    fn answer_to_probe(from: MacAddr, to: MacAddr) -> NdpFrame {
        NdpFrame {
            eth_dst: to,
            eth_src: from,
            ip_src: VIP,
            ip_dst: VIP,
            hop_limit: 255,
            msg: Message::Advert {
                router: false,
                solicited: true,
                override_: true,
                target: VIP,
                target_ll: Some(from),
            },
        }
    }

    #[test]
    fn the_probe_is_an_ns_from_the_address_to_its_group_with_our_mac() {
        let p = probe(US, VIP);
        assert_eq!(p.ip_src, VIP, "not DAD-style from ::");
        assert_eq!(p.ip_dst, solicited_node(VIP));
        assert_eq!(p.eth_dst, multicast_mac(solicited_node(VIP)));
        assert_eq!(p.eth_src, US);
        assert_eq!(
            p.msg,
            Message::Solicit {
                target: VIP,
                source_ll: Some(US)
            }
        );
        assert_eq!(parse(&encode(&p)), Ok(p), "valid on the wire");
        // Our own probe, seen by our reader: neither answered nor a conflict.
        let v = decide(&p, US, held);
        assert_eq!(v.reply, Err(Ignored::OwnFrame));
        assert_eq!((v.conflict, v.probe_answer), (None, false));
        // Another announcer holding VIP answers it (a solicited NA to VIP at our MAC), and
        // reports the prober as claiming VIP — a probe, nothing to yield to.
        let v = decide(&p, THEM, held);
        let r = v.reply.expect("answered");
        assert_eq!((r.eth_dst, r.ip_dst), (US, VIP));
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, US)), true));
        // The NUD check a host with VIP may make of the entry the probe left (unicast, from VIP,
        // for VIP): a probe too.
        let mut nud = probe(THEM, VIP);
        nud.eth_dst = US;
        nud.ip_dst = VIP;
        let v = decide(&nud, US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), true));
        // That answer, back at the prober: a probe answer.
        let v = decide(&r, US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), true));
    }

    #[test]
    fn a_solicited_na_is_a_probe_answer_an_unsolicited_one_an_announcement() {
        // The kernel's answer to our probe.
        let a = answer_to_probe(THEM, US);
        assert_eq!(parse(&encode(&a)), Ok(a));
        let v = decide(&a, US, held);
        assert_eq!(v.conflict, Some((VIP, THEM)));
        assert!(v.probe_answer);
        assert!(v.reply.is_err());
        // Without the target option the Ethernet source names the station.
        let mut bare = a;
        bare.msg = Message::Advert {
            router: false,
            solicited: true,
            override_: false,
            target: VIP,
            target_ll: None,
        };
        let v = decide(&bare, US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), true));
        // A takeover (unsolicited NA to all-nodes) and the answer to a DAD probe (the same
        // frame): an announcement, never a probe answer.
        let v = decide(&unsolicited_na(THEM, VIP), US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), false));
        // An NS from the address for another one (the station resolving a neighbour with the
        // address as its source, i.e. using it): an announcement.
        let mut from_vip = ns(CLIENT);
        from_vip.ip_src = VIP;
        let v = decide(&from_vip, US, held);
        assert_eq!((v.conflict, v.probe_answer), (Some((VIP, THEM)), false));
        // No conflict, no probe answer: our own MAC, or an address we do not hold.
        let v = decide(&answer_to_probe(US, US), US, held);
        assert_eq!((v.conflict, v.probe_answer), (None, false));
        let mut other = answer_to_probe(THEM, US);
        other.msg = Message::Advert {
            router: false,
            solicited: true,
            override_: true,
            target: CLIENT,
            target_ll: Some(THEM),
        };
        let v = decide(&other, US, held);
        assert_eq!((v.conflict, v.probe_answer), (None, false));
    }

    #[test]
    fn advertisement_by_another_mac_is_a_conflict() {
        let na = unsolicited_na(THEM, VIP);
        let v = decide(&na, US, held);
        assert_eq!(v.conflict, Some((VIP, THEM)));
        assert!(v.reply.is_err());
        assert_eq!(decide(&unsolicited_na(US, VIP), US, held).conflict, None);
        assert_eq!(
            decide(&unsolicited_na(THEM, CLIENT), US, held).conflict,
            None
        );
    }
}
