//! The packet layer against the real kernel: `ferrolb announce` in network namespaces on a
//! bridge, probed with the kernel's own tools (arping, ndisc6, ping, ip neigh), and our codecs
//! compared byte for byte with frames the kernel sends (captured with tcpdump). Plus a bounded,
//! coverage-free fuzz of the parsers and decisions (runs without root).
//!
//! Root-only tests print "skipped: needs root" and return when not root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb::net::arp::{self, MacAddr};
use ferrolb::net::ndp;
use ferrolb_lab::harness::{
    arping_replies, metric, ndisc6_macs, neighbour, numbered_log, run_arping, wait_until, ApiHttp,
    Proc,
};
use ferrolb_lab::netns::{self, Netns, Segment};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_ferrolb");

fn root_or_skip(test: &str) -> bool {
    if netns::is_root() {
        netns::cleanup_stale();
        true
    } else {
        println!("{test}: skipped: needs root");
        false
    }
}

/// Starts `ferrolb ARGS` in `ns` (its stdin a pipe, for `--control-stdin`), logging to a new
/// file in `logs`.
fn spawn(ns: &Netns, logs: &Path, args: &[&str]) -> Proc {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    Proc::spawn(
        ns.name(),
        Some(ns),
        Path::new(BIN),
        &args,
        &[("NO_COLOR", "1")],
        &numbered_log(logs, ns.name()),
    )
    .expect("spawn")
}

/// Starts `ferrolb announce` in `ns` and waits until it says it is ready.
fn announce(ns: &Netns, logs: &Path, ips: &[&str], extra: &[&str]) -> Proc {
    let mut args = vec!["announce", "--interface", "eth0"];
    for ip in ips {
        args.extend(["--ip", ip]);
    }
    args.extend(extra);
    let mut p = spawn(ns, logs, &args);
    p.next_line("announcer ready", Duration::from_secs(20))
        .unwrap();
    p
}

/// The harness's [`wait_until`] every 50 ms; a timeout fails the test.
fn poll_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until(what, timeout, Duration::from_millis(50), f).unwrap_or_else(|e| panic!("{e:#}"))
}

fn mac_of(ns: &Netns) -> MacAddr {
    ns.mac("eth0").expect("mac").parse().expect("parse mac")
}

/// The MACs of every reply in `arping` output, in order.
fn replied(out: &str) -> Vec<MacAddr> {
    arping_replies(out)
        .iter()
        .map(|r| r.mac.parse().expect("arping prints MACs"))
        .collect()
}

/// `arping -c count -w secs -I eth0 ip` from `ns` (unicast once answered): its output.
fn arping(ns: &Netns, ip: &str, count: u32, secs: u32) -> String {
    run_arping(ns, "eth0", ip, count, secs, false).expect("arping")
}

/// `ndisc6` (3 tries) from `ns`: the MACs that advertised `ip`.
fn ndisc6(ns: &Netns, ip: &str) -> Vec<MacAddr> {
    ndisc6_macs(ns, "eth0", ip, 3)
        .expect("ndisc6")
        .iter()
        .map(|m| m.parse().expect("ndisc6 prints MACs"))
        .collect()
}

/// `ip FAMILY neigh replace IP lladdr MAC dev eth0 nud stale` in `ns`: an entry as if learnt
/// earlier and not confirmed since.
fn stale_neigh(ns: &Netns, family: &str, ip: &str, mac: &str) {
    ns.ip(&[
        family, "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "stale",
    ])
    .expect("setting a STALE neighbour entry");
}

/// The MAC of `ns`'s neighbour entry for `ip` on eth0, if it has one.
fn neigh_mac(ns: &Netns, ip: &str) -> Option<MacAddr> {
    neighbour(ns, "eth0", ip)?.0.parse().ok()
}

/// The state of `ns`'s neighbour entry for `ip` on eth0 (entries with a MAC only).
fn neigh_state(ns: &Netns, ip: &str) -> Option<String> {
    neighbour(ns, "eth0", ip).map(|(_, state)| state)
}

/// Polls (up to 15 s) until `ns`'s neighbour entry for `ip` has the lladdr `mac`.
fn wait_neigh_mac(ns: &Netns, ip: &str, mac: MacAddr, what: &str) {
    poll_until(what, Duration::from_secs(15), || {
        (neigh_mac(ns, ip)? == mac).then_some(())
    });
}

/// The announcer's metrics (its `--metrics-addr` is 127.0.0.1:`port` inside `ns`).
fn metrics(ns: &Netns, port: u16) -> String {
    ApiHttp {
        ns,
        base: &format!("http://127.0.0.1:{port}"),
    }
    .text("/metrics")
    .unwrap_or_default()
}

/// The harness's [`metric`] `name{ip="IP"}`, 0 when absent.
fn ip_count(text: &str, name: &str, ip: &str) -> u64 {
    metric(text, name, &[("ip", ip)]).unwrap_or(0.0) as u64
}

/// The raw `ip neigh show dev eth0` of `ns`, for messages.
fn neighbours(ns: &Netns) -> String {
    ns.ip(&["neigh", "show", "dev", "eth0"])
        .unwrap_or_else(|e| e.to_string())
}

/// A segment with node namespaces `a`, `b` (no addresses at all on eth0) and client `c`
/// (192.0.2.3/24, 2001:db8:1::3/64, on-link routes to the VIP ranges), and a directory for logs.
fn lab(tag: &str) -> (Segment, TempDir) {
    let mut seg = Segment::create(tag).expect("segment");
    seg.add_member(tag, "a", &[]).expect("a");
    seg.add_member(tag, "b", &[]).expect("b");
    seg.add_member(tag, "c", &["192.0.2.3/24", "2001:db8:1::3/64"])
        .expect("c");
    let c = &seg.members[2];
    c.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"])
        .expect("v4 route");
    c.ip(&["-6", "route", "add", "2001:db8:100::/64", "dev", "eth0"])
        .expect("v6 route");
    (seg, tempfile::tempdir().expect("tempdir"))
}

#[test]
fn arping_and_ndisc6_get_answers_from_exactly_the_holder() {
    if !root_or_skip("arping_and_ndisc6_get_answers_from_exactly_the_holder") {
        return;
    }
    let (seg, logs) = lab("ab");
    let (a, b, c) = (&seg.members[0], &seg.members[1], &seg.members[2]);
    let (mac_a, mac_b) = (mac_of(a), mac_of(b));
    // One announcement each, sent before "ready": no gratuitous reply can be mistaken by
    // arping for an answer (which would also make it stop early).
    let _pa = announce(
        a,
        logs.path(),
        &["198.51.100.10", "2001:db8:100::10"],
        &[
            "--gratuitous-count",
            "1",
            "--metrics-addr",
            "127.0.0.1:9750",
        ],
    );
    let _pb = announce(
        b,
        logs.path(),
        &["198.51.100.11", "2001:db8:100::11"],
        &["--gratuitous-count", "1"],
    );

    let out = arping(c, "198.51.100.10", 3, 10);
    let macs = replied(&out);
    assert_eq!(macs, vec![mac_a; 3], "arping output:\n{out}");
    let sent: u64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Sent ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("arping summary");

    let out = arping(c, "198.51.100.11", 3, 10);
    let macs = replied(&out);
    assert_eq!(macs, vec![mac_b; 3], "arping output:\n{out}");

    // Nobody holds .12: no reply at all.
    let out = arping(c, "198.51.100.12", 2, 2);
    assert!(replied(&out).is_empty(), "{out}");

    assert_eq!(ndisc6(c, "2001:db8:100::10"), vec![mac_a]);
    assert_eq!(ndisc6(c, "2001:db8:100::11"), vec![mac_b]);
    assert!(ndisc6(c, "2001:db8:100::12").is_empty());

    // A joined the solicited-node group of its IPv6 address (so real NICs and snooping
    // switches deliver the NS); B did not join A's.
    let maddr_a = a
        .ip(&["-6", "maddr", "show", "dev", "eth0"])
        .expect("maddr");
    assert!(maddr_a.contains("ff02::1:ff00:10"), "{maddr_a}");
    let maddr_b = b
        .ip(&["-6", "maddr", "show", "dev", "eth0"])
        .expect("maddr");
    assert!(!maddr_b.contains("ff02::1:ff00:10"), "{maddr_b}");
    assert!(maddr_b.contains("ff02::1:ff00:11"), "{maddr_b}");

    let m = metrics(a, 9750);
    assert_eq!(
        ip_count(&m, "ferrolb_arp_requests_received_total", "198.51.100.10"),
        sent,
        "{m}"
    );
    assert!(ip_count(&m, "ferrolb_responses_sent_total", "198.51.100.10") >= 3);
    assert!(
        ip_count(
            &m,
            "ferrolb_ndp_requests_received_total",
            "2001:db8:100::10"
        ) >= 1
    );
    assert!(ip_count(&m, "ferrolb_gratuitous_sent_total", "198.51.100.10") >= 2);
    assert!(ip_count(&m, "ferrolb_gratuitous_sent_total", "2001:db8:100::10") >= 1);
    // Requests for B's address are never counted (nor answered) by A.
    assert_eq!(
        ip_count(&m, "ferrolb_arp_requests_received_total", "198.51.100.11"),
        0
    );
}

#[test]
fn gratuitous_burst_corrects_stale_neighbours_and_sigterm_exits_cleanly() {
    if !root_or_skip("gratuitous_burst_corrects_stale_neighbours_and_sigterm_exits_cleanly") {
        return;
    }
    let (seg, logs) = lab("ga");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    let wrong = "02:00:00:00:00:99";
    for (v, ip) in [("-4", "198.51.100.10"), ("-6", "2001:db8:100::10")] {
        stale_neigh(c, v, ip, wrong);
        assert_eq!(neigh_mac(c, ip), Some(wrong.parse().expect("mac")));
    }
    // No traffic from C to the VIPs: only the announcer's gratuitous frames can fix the entries.
    let mut p = announce(a, logs.path(), &["198.51.100.10", "2001:db8:100::10"], &[]);
    for ip in ["198.51.100.10", "2001:db8:100::10"] {
        wait_neigh_mac(
            c,
            ip,
            mac_a,
            &format!("C's neighbour entry for {ip} to point at A"),
        );
    }
    let code = p
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert_eq!(code, Some(0), "exit code");
    p.next_line("shutting down", Duration::from_secs(5))
        .unwrap();
}

#[test]
fn unicast_nud_probes_are_answered() {
    if !root_or_skip("unicast_nud_probes_are_answered") {
        return;
    }
    let (seg, logs) = lab("nu");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a).to_string();
    c.sysctl("net.ipv4.neigh.eth0.delay_first_probe_time", "1")
        .expect("sysctl");
    c.sysctl("net.ipv6.neigh.eth0.delay_first_probe_time", "1")
        .expect("sysctl");
    // No gratuitous frames: the only way C's entries become REACHABLE is an answer to the
    // unicast probes the kernel sends from the PROBE state (mcast_resolicit is 0).
    let _p = announce(
        a,
        logs.path(),
        &["198.51.100.10", "2001:db8:100::10"],
        &[
            "--gratuitous-count",
            "0",
            "--metrics-addr",
            "127.0.0.1:9751",
        ],
    );
    for (v, ip) in [("-4", "198.51.100.10"), ("-6", "2001:db8:100::10")] {
        stale_neigh(c, v, ip, &mac_a);
        // Traffic to a STALE entry: DELAY, then (1 s) PROBE with unicast solicitations. A does
        // not hold the address in its kernel, so the ping itself gets no answer.
        let _ = c.exec("ping", &["-c", "1", "-W", "1", ip]);
        poll_until(
            &format!("C's entry for {ip} to be confirmed REACHABLE"),
            Duration::from_secs(15),
            || (neigh_state(c, ip)? == "REACHABLE").then_some(()),
        );
    }
    let m = metrics(a, 9751);
    assert!(
        ip_count(&m, "ferrolb_arp_requests_received_total", "198.51.100.10") >= 1,
        "{m}"
    );
    assert!(
        ip_count(
            &m,
            "ferrolb_ndp_requests_received_total",
            "2001:db8:100::10"
        ) >= 1,
        "{m}"
    );
    assert_eq!(
        ip_count(&m, "ferrolb_gratuitous_sent_total", "198.51.100.10"),
        0,
        "{m}"
    );
}

/// Frames of a classic pcap file (any byte order, µs or ns timestamps).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    if b.len() < 24 {
        return vec![];
    }
    let magic = [b[0], b[1], b[2], b[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file: magic {magic:02x?}"),
    };
    let u32_at = |at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    assert_eq!(u32_at(20), 1, "link type must be Ethernet");
    let mut frames = Vec::new();
    let mut at = 24usize;
    while at + 16 <= b.len() {
        let incl = u32_at(at + 8) as usize;
        let start = at + 16;
        let Some(frame) = b.get(start..start + incl) else {
            break; // record still being written
        };
        frames.push(frame.to_vec());
        at = start + incl;
    }
    frames
}

fn describe(frames: &[Vec<u8>]) -> String {
    frames
        .iter()
        .map(|f| match (arp::parse(f), ndp::parse(f)) {
            (Ok(a), _) => format!("{a:?}"),
            (_, Ok(n)) => format!("{n:?}"),
            (Err(e), Err(e6)) => format!("unparsed ({e}; {e6}): {f:02x?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn codecs_match_kernel_frames_byte_for_byte() {
    if !root_or_skip("codecs_match_kernel_frames_byte_for_byte") {
        return;
    }
    let mut seg = Segment::create("kb").expect("segment");
    seg.add_member("kb", "k", &["192.0.2.1/24", "2001:db8:1::1/64"])
        .expect("k");
    seg.add_member("kb", "c", &["192.0.2.3/24", "2001:db8:1::3/64"])
        .expect("c");
    let (k, c) = (&seg.members[0], &seg.members[1]);
    let (mac_k, mac_c) = (mac_of(k), mac_of(c));
    let new_mac: MacAddr = "02:00:00:00:00:77".parse().expect("mac");
    k.sysctl("net.ipv4.conf.eth0.arp_notify", "1")
        .expect("sysctl");
    k.sysctl("net.ipv6.conf.eth0.ndisc_notify", "1")
        .expect("sysctl");
    c.sysctl("net.ipv6.neigh.eth0.delay_first_probe_time", "1")
        .expect("sysctl");
    let v4: Ipv4Addr = "192.0.2.1".parse().expect("ip");
    let v6: Ipv6Addr = "2001:db8:1::1".parse().expect("ip");
    let c_v6: Ipv6Addr = "2001:db8:1::3".parse().expect("ip");

    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("kernel.pcap");
    let cap: Vec<String> = ["-i", "eth0", "-U", "-n", "-Z", "root", "-w"]
        .into_iter()
        .map(String::from)
        .chain([
            pcap.to_string_lossy().into_owned(),
            "arp or (icmp6 and (ip6[40] == 135 or ip6[40] == 136))".to_string(),
        ])
        .collect();
    let mut tcpdump = Proc::spawn(
        "tcpdump",
        Some(c),
        Path::new("tcpdump"),
        &cap,
        &[],
        &dir.path().join("tcpdump.log"),
    )
    .expect("tcpdump");
    tcpdump
        .next_line("listening on", Duration::from_secs(10))
        .unwrap();

    // 1. ARP request (arping) and the kernel's reply; 2. an ARP probe (sender 0.0.0.0).
    let out = arping(c, "192.0.2.1", 1, 5);
    assert_eq!(replied(&out), vec![mac_k], "{out}");
    let _ = c
        .cmd("arping")
        .args(["-D", "-c", "1", "-w", "3", "-I", "eth0", "192.0.2.1"])
        .output();
    // 3. Multicast NS (ndisc6) and the kernel's NA.
    assert_eq!(ndisc6(c, "2001:db8:1::1"), vec![mac_k]);
    // 4. Unicast NUD: C's STALE entry probed with a unicast NS.
    stale_neigh(c, "-6", "2001:db8:1::1", &mac_k.to_string());
    let _ = c.exec("ping", &["-c", "1", "-W", "1", "2001:db8:1::1"]);
    poll_until("C's NUD to confirm K", Duration::from_secs(15), || {
        (neigh_state(c, "2001:db8:1::1")? == "REACHABLE").then_some(())
    });
    // 5. The kernel's own gratuitous ARP and unsolicited NA (arp_notify / ndisc_notify on a
    //    MAC change).
    k.ip(&[
        "link",
        "set",
        "dev",
        "eth0",
        "address",
        &new_mac.to_string(),
    ])
    .expect("set mac");

    let is_arp = |f: &Vec<u8>, pred: &dyn Fn(&arp::ArpFrame) -> bool| {
        arp::parse(f).map(|a| pred(&a)).unwrap_or(false)
    };
    let is_nd = |f: &Vec<u8>, pred: &dyn Fn(&ndp::NdpFrame) -> bool| {
        ndp::parse(f).map(|n| pred(&n)).unwrap_or(false)
    };
    let frames = poll_until(
        "all kernel frames captured",
        Duration::from_secs(15),
        || {
            let frames = read_pcap(&pcap);
            let garp = frames.iter().any(|f| {
                is_arp(f, &|a| {
                    a.eth_src == new_mac && a.sender_ip == v4 && a.target_ip == v4
                })
            });
            let una = frames.iter().any(|f| {
                is_nd(f, &|n| {
                    n.eth_src == new_mac
                        && matches!(n.msg, ndp::Message::Advert { target, .. } if target == v6)
                })
            });
            (garp && una).then_some(frames)
        },
    );
    let _ = tcpdump.signal("INT");

    let held4 = |ip: Ipv4Addr| ip == v4;
    let held6 = |ip: Ipv6Addr| ip == v6;
    let find = |what: &str, pred: &dyn Fn(&Vec<u8>) -> bool| -> Vec<u8> {
        frames
            .iter()
            .find(|f| pred(f))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} in the capture:\n{}", describe(&frames)))
    };

    // ARP request → reply: our reply is exactly the kernel's.
    let req = arp::parse(&find("arping request", &|f| {
        is_arp(f, &|a| {
            a.op == arp::Op::Request && a.eth_src == mac_c && !a.sender_ip.is_unspecified()
        })
    }))
    .expect("parse");
    assert_eq!(req.target_ip, v4);
    let kernel_reply = find("kernel ARP reply", &|f| {
        is_arp(f, &|a| {
            a.op == arp::Op::Reply && a.eth_src == mac_k && !a.target_ip.is_unspecified()
        })
    });
    let ours = arp::decide(&req, mac_k, held4)
        .reply
        .expect("we answer it too");
    assert_eq!(arp::encode(&ours).as_slice(), kernel_reply.as_slice());

    // ARP probe (RFC 5227) → reply with target IP 0.0.0.0.
    let probe = arp::parse(&find("ARP probe", &|f| {
        is_arp(f, &|a| {
            a.op == arp::Op::Request && a.eth_src == mac_c && a.sender_ip.is_unspecified()
        })
    }))
    .expect("parse");
    let kernel_probe_reply = find("kernel reply to the probe", &|f| {
        is_arp(f, &|a| {
            a.op == arp::Op::Reply && a.eth_src == mac_k && a.target_ip.is_unspecified()
        })
    });
    let ours = arp::decide(&probe, mac_k, held4)
        .reply
        .expect("we answer probes");
    assert_eq!(arp::encode(&ours).as_slice(), kernel_probe_reply.as_slice());

    // Multicast NS (ndisc6) → NA (Solicited + Override + TLLA): identical bytes.
    let ns = ndp::parse(&find("multicast NS", &|f| {
        is_nd(f, &|n| {
            n.eth_src == mac_c
                && n.ip_dst == ndp::solicited_node(v6)
                && matches!(n.msg, ndp::Message::Solicit { .. })
        })
    }))
    .expect("parse");
    let kernel_na = find("kernel NA to the multicast NS", &|f| {
        is_nd(f, &|n| {
            n.eth_src == mac_k
                && n.ip_dst == ns.ip_src
                && matches!(
                    n.msg,
                    ndp::Message::Advert {
                        solicited: true,
                        override_: true,
                        ..
                    }
                )
        })
    });
    let ours = ndp::decide(&ns, mac_k, held6).reply.expect("answered");
    assert_eq!(ndp::encode(&ours), kernel_na);

    // Unicast NUD NS → the kernel answers with Solicited only and no TLLA option; we also set
    // Override and include the option (see ndp.rs). Masking exactly those two choices, the
    // bytes are identical (payload length and checksum follow from them).
    let nud = ndp::parse(&find("unicast NS", &|f| {
        is_nd(f, &|n| {
            n.eth_src == mac_c && n.eth_dst == mac_k && n.ip_dst == v6
        })
    }))
    .expect("parse");
    // (The kernel sources NUD probes from its link-local address.)
    assert!(
        nud.ip_src == c_v6 || nud.ip_src.is_unicast_link_local(),
        "{nud:?}"
    );
    let kernel_nud_na = find("kernel NA to the unicast NS", &|f| {
        is_nd(f, &|n| {
            n.eth_src == mac_k
                && n.ip_dst == nud.ip_src
                && matches!(
                    n.msg,
                    ndp::Message::Advert {
                        override_: false,
                        ..
                    }
                )
        })
    });
    let mut ours = ndp::decide(&nud, mac_k, held6).reply.expect("NUD answered");
    assert!(matches!(
        ours.msg,
        ndp::Message::Advert { solicited: true, override_: true, target_ll: Some(m), .. } if m == mac_k
    ));
    if let ndp::Message::Advert {
        override_,
        target_ll,
        ..
    } = &mut ours.msg
    {
        *override_ = false;
        *target_ll = None;
    }
    assert_eq!(ndp::encode(&ours), kernel_nud_na);

    // The kernel's gratuitous ARP is our request form; its unsolicited NA is ours (source =
    // the announced address itself, Override, to ff02::1, TLLA).
    let kernel_garp = find("kernel gratuitous ARP", &|f| {
        is_arp(f, &|a| {
            a.eth_src == new_mac && a.sender_ip == v4 && a.target_ip == v4
        })
    });
    assert_eq!(
        arp::encode(&arp::gratuitous(arp::Op::Request, new_mac, v4)).as_slice(),
        kernel_garp.as_slice()
    );
    let kernel_una = find("kernel unsolicited NA", &|f| {
        is_nd(f, &|n| {
            n.eth_src == new_mac
                && matches!(n.msg, ndp::Message::Advert { target, .. } if target == v6)
        })
    });
    assert_eq!(ndp::encode(&ndp::unsolicited_na(new_mac, v6)), kernel_una);
}

/// Valid frames of every kind the parsers accept, to mutate.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let us: MacAddr = "02:00:00:00:00:0a".parse().expect("mac");
    let them: MacAddr = "02:00:00:00:00:0c".parse().expect("mac");
    let v4: Ipv4Addr = "198.51.100.10".parse().expect("ip");
    let c4: Ipv4Addr = "192.0.2.3".parse().expect("ip");
    let v6: Ipv6Addr = "2001:db8:100::10".parse().expect("ip");
    let c6: Ipv6Addr = "2001:db8:1::3".parse().expect("ip");
    let req = arp::ArpFrame {
        eth_dst: arp::BROADCAST,
        eth_src: them,
        op: arp::Op::Request,
        sender_mac: them,
        sender_ip: c4,
        target_mac: arp::ZERO_MAC,
        target_ip: v4,
    };
    let ns = ndp::NdpFrame {
        eth_dst: ndp::multicast_mac(ndp::solicited_node(v6)),
        eth_src: them,
        ip_src: c6,
        ip_dst: ndp::solicited_node(v6),
        hop_limit: 255,
        msg: ndp::Message::Solicit {
            target: v6,
            source_ll: Some(them),
        },
    };
    let mut nud = ns;
    nud.eth_dst = us;
    nud.ip_dst = v6;
    let mut dad = ns;
    dad.ip_src = Ipv6Addr::UNSPECIFIED;
    dad.msg = ndp::Message::Solicit {
        target: v6,
        source_ll: None,
    };
    let mut seeds = vec![
        arp::encode(&req).to_vec(),
        arp::encode(&arp::reply_to(&req, us)).to_vec(),
        arp::encode(&arp::gratuitous(arp::Op::Request, them, v4)).to_vec(),
        arp::encode(&arp::gratuitous(arp::Op::Reply, them, v4)).to_vec(),
        ndp::encode(&ns),
        ndp::encode(&nud),
        ndp::encode(&dad),
        ndp::encode(&ndp::unsolicited_na(them, v6)),
        // Probes (ours and another station's) and the answers to them.
        arp::encode(&arp::reply_to(&arp::probe(us, v4), them)).to_vec(),
        ndp::encode(&ndp::probe(them, v6)),
        ndp::encode(
            &ndp::decide(&ndp::probe(us, v6), them, |ip| ip == v6)
                .reply
                .expect("answered"),
        ),
    ];
    // An NS with several options (nonce, unknown, source link-layer).
    let mut multi = ndp::encode(&ns);
    multi.extend_from_slice(&[
        14, 1, 1, 2, 3, 4, 5, 6, 200, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    fix_nd(&mut multi);
    seeds.push(multi);
    seeds
}

/// Rewrites the IPv6 payload length to the frame and recomputes the ICMPv6 checksum, so
/// mutations reach the option parser instead of dying at the checksum.
fn fix_nd(b: &mut [u8]) {
    if b.len() < 14 + 40 + 4 {
        return;
    }
    let plen = (b.len() - 54).min(u16::MAX as usize) as u16;
    b[18..20].copy_from_slice(&plen.to_be_bytes());
    b[56] = 0;
    b[57] = 0;
    let mut s = [0u8; 16];
    s.copy_from_slice(&b[22..38]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[38..54]);
    let c = ndp::checksum(Ipv6Addr::from(s), Ipv6Addr::from(d), &b[54..]);
    b[56..58].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn fuzz_parsers_and_decisions_with_mutated_frames() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("FERROLB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let iters: usize = std::env::var("FERROLB_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    println!("fuzz seed {seed} ({iters} iterations; FERROLB_FUZZ_SEED/FERROLB_FUZZ_ITERS)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let seeds = fuzz_seeds();
    // `FERROLB_FUZZ_SEEDS_DIR=fuzz/seeds/packets` refreshes the libFuzzer seed corpus.
    if let Ok(dir) = std::env::var("FERROLB_FUZZ_SEEDS_DIR") {
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(Path::new(&dir).join(format!("seed-{i:02}.bin")), s)
                .expect("write seed");
        }
    }
    let us: MacAddr = "02:00:00:00:00:0a".parse().expect("mac");
    let held4 = |ip: Ipv4Addr| ip == Ipv4Addr::new(198, 51, 100, 10);
    let held6 = |ip: Ipv6Addr| ip == "2001:db8:100::10".parse::<Ipv6Addr>().expect("ip");
    let (mut arp_ok, mut nd_ok, mut replies) = (0usize, 0usize, 0usize);
    for _ in 0..iters {
        let mut f = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=6) {
            let len = f.len();
            match rng.random_range(0..8) {
                0 if len > 0 => {
                    let i = rng.random_range(0..len);
                    f[i] ^= 1 << rng.random_range(0..8);
                }
                1 if len > 0 => {
                    let i = rng.random_range(0..len);
                    f[i] = [0, 1, 2, 8, 0x7f, 0x80, 0xfe, 0xff][rng.random_range(0..8)];
                }
                2 => f.truncate(rng.random_range(0..=len)),
                3 => {
                    let n = rng.random_range(1..40);
                    f.extend((0..n).map(|_| rng.random::<u8>()));
                }
                4 if len > 0 => {
                    let i = rng.random_range(0..len);
                    f.insert(i, rng.random());
                }
                5 if len > 0 => {
                    f.remove(rng.random_range(0..len));
                }
                6 if len > 0 => {
                    let i = rng.random_range(0..len);
                    f[i] = rng.random();
                }
                _ => {}
            }
        }
        if rng.random_bool(0.5) {
            fix_nd(&mut f);
        }
        if let Ok(a) = arp::parse(&f) {
            arp_ok += 1;
            assert_eq!(arp::parse(&arp::encode(&a)), Ok(a), "ARP roundtrip");
            let v = arp::decide(&a, us, held4);
            assert!(!v.probe_answer || v.conflict.is_some(), "{a:?}");
            if let Ok(r) = v.reply {
                replies += 1;
                assert!(held4(r.sender_ip), "replied for an address not held: {a:?}");
                assert!(
                    !arp::is_multicast_mac(r.eth_dst),
                    "reply to a group MAC: {a:?}"
                );
                assert_ne!(a.eth_src, us);
                assert_eq!(arp::parse(&arp::encode(&r)), Ok(r));
            }
        }
        if let Ok(n) = ndp::parse(&f) {
            nd_ok += 1;
            // Re-encoding keeps the fields we use (other options are dropped).
            assert_eq!(ndp::parse(&ndp::encode(&n)), Ok(n), "NDP roundtrip");
            let v = ndp::decide(&n, us, held6);
            assert!(!v.probe_answer || v.conflict.is_some(), "{n:?}");
            if let Ok(r) = v.reply {
                replies += 1;
                assert!(held6(r.msg.target()), "answered an address not held: {n:?}");
                assert_eq!(r.ip_src, r.msg.target());
                assert!(
                    !arp::is_multicast_mac(r.eth_dst) || r.ip_dst == ndp::ALL_NODES,
                    "NA to a group MAC: {n:?}"
                );
                assert_eq!(ndp::parse(&ndp::encode(&r)), Ok(r), "our NA is valid");
            }
        }
    }
    println!("{arp_ok} ARP and {nd_ok} NDP frames parsed, {replies} replies");
    // The mutations must leave many frames valid, or the run proves little.
    if iters >= 10_000 {
        assert!(arp_ok > iters / 50 && nd_ok > iters / 50 && replies > iters / 100);
    }
}

#[test]
fn release_stops_answers_at_once_and_conflicts_are_reported() {
    if !root_or_skip("release_stops_answers_at_once_and_conflicts_are_reported") {
        return;
    }
    let (seg, logs) = lab("rc");
    let (a, b, c) = (&seg.members[0], &seg.members[1], &seg.members[2]);
    let (mac_a, mac_b) = (mac_of(a), mac_of(b));
    let both = "198.51.100.10@eth0 2001:db8:100::10@eth0";
    let mut pa = announce(
        a,
        logs.path(),
        &["198.51.100.10", "2001:db8:100::10"],
        &["--control-stdin", "--metrics-addr", "127.0.0.1:9752"],
    );
    let out = arping(c, "198.51.100.10", 1, 5);
    assert_eq!(replied(&out), vec![mac_a], "{out}");

    // Release everything: no more answers, and the solicited-node group is left.
    pa.say("").unwrap();
    pa.next_line("applied held set", Duration::from_secs(10))
        .unwrap();
    let out = arping(c, "198.51.100.10", 2, 2);
    assert!(replied(&out).is_empty(), "{out}");
    assert!(ndisc6(c, "2001:db8:100::10").is_empty());
    let maddr = a
        .ip(&["-6", "maddr", "show", "dev", "eth0"])
        .expect("maddr");
    assert!(!maddr.contains("ff02::1:ff00:10"), "{maddr}");

    // Hold again: answered again, group joined again.
    pa.say(both).unwrap();
    pa.next_line("applied held set", Duration::from_secs(10))
        .unwrap();
    let out = arping(c, "198.51.100.10", 1, 5);
    assert_eq!(replied(&out), vec![mac_a], "{out}");
    assert_eq!(ndisc6(c, "2001:db8:100::10"), vec![mac_a]);
    let maddr = a
        .ip(&["-6", "maddr", "show", "dev", "eth0"])
        .expect("maddr");
    assert!(maddr.contains("ff02::1:ff00:10"), "{maddr}");

    // B starts announcing the same addresses: A sees B's gratuitous ARP and unsolicited NA.
    let _pb = announce(b, logs.path(), &["198.51.100.10", "2001:db8:100::10"], &[]);
    let want = mac_b.to_string();
    let l4 = pa
        .next_line("ip=198.51.100.10", Duration::from_secs(10))
        .unwrap();
    assert!(l4.contains("conflict") && l4.contains(&want), "{l4}");
    let l6 = pa
        .next_line("ip=2001:db8:100::10", Duration::from_secs(10))
        .unwrap();
    assert!(l6.contains("conflict") && l6.contains(&want), "{l6}");
    let m = metrics(a, 9752);
    assert!(
        ip_count(&m, "ferrolb_announce_conflicts_total", "198.51.100.10") >= 1,
        "{m}"
    );
    assert!(
        ip_count(&m, "ferrolb_announce_conflicts_total", "2001:db8:100::10") >= 1,
        "{m}"
    );
}

#[test]
fn interface_coming_up_or_appearing_gets_a_burst() {
    if !root_or_skip("interface_coming_up_or_appearing_gets_a_burst") {
        return;
    }
    let (seg, logs) = lab("up");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    a.ip(&["link", "set", "eth0", "down"]).expect("down");
    stale_neigh(c, "-4", "198.51.100.10", "02:00:00:00:00:99");
    let mut p = spawn(
        a,
        logs.path(),
        &[
            "announce",
            "-i",
            "eth0",
            "-i",
            "eth1",
            "--ip",
            "198.51.100.10",
            "--metrics-addr",
            "127.0.0.1:9753",
        ],
    );
    p.next_line("announcer ready", Duration::from_secs(20))
        .unwrap();
    // eth0 comes up: the announcer notices within its poll period and sends a burst.
    a.ip(&["link", "set", "eth0", "up"]).expect("up");
    wait_neigh_mac(c, "198.51.100.10", mac_a, "C's entry to point at A's eth0");
    // eth1 appears (plugged into the same bridge): answered there too.
    netns::veth(a, "eth1", &seg.bridge, "p9").expect("veth");
    seg.bridge
        .ip(&["link", "set", "p9", "master", "br0"])
        .expect("enslave");
    let mac_a1: MacAddr = a.mac("eth1").expect("mac").parse().expect("mac");
    p.next_line("listening", Duration::from_secs(10)).unwrap();
    let macs: BTreeSet<MacAddr> = poll_until(
        "replies from both interfaces",
        Duration::from_secs(15),
        || {
            let out = arping(c, "198.51.100.10", 2, 3);
            let macs: BTreeSet<MacAddr> = replied(&out).into_iter().collect();
            (macs.len() == 2).then_some(macs)
        },
    );
    assert_eq!(macs, BTreeSet::from([mac_a, mac_a1]));
    // Each interface hears the other's gratuitous frames: our own MACs are never a conflict.
    let m = metrics(a, 9753);
    assert!(
        ip_count(&m, "ferrolb_gratuitous_sent_total", "198.51.100.10") >= 4,
        "{m}\n{}",
        p.log_text()
    );
    assert_eq!(
        ip_count(&m, "ferrolb_announce_conflicts_total", "198.51.100.10"),
        0,
        "{m}"
    );
}

/// A switch reboot: every port of the segment loses carrier, the clients' neighbour caches are
/// flushed, carrier returns. The holder hears of it from the kernel (rtnetlink, no polling) and
/// re-announces at once, so the client learns the address again without asking.
#[test]
fn switch_reboot_carrier_back_reannounces_every_held_address_at_once() {
    if !root_or_skip("switch_reboot_carrier_back_reannounces_every_held_address_at_once") {
        return;
    }
    let (seg, logs) = lab("sw");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    // The client learns from gratuitous ARP without having asked (as routers and L3 switches
    // commonly do), so its neighbour table shows what it heard.
    c.exec("sysctl", &["-qw", "net.ipv4.conf.eth0.arp_accept=1"])
        .expect("arp_accept");
    // Long self-check and no periodic re-announcement: only the carrier event can explain an
    // announcement after the outage (the first burst, 5 × 1 s, is over by then).
    let mut p = announce(
        a,
        logs.path(),
        &["198.51.100.10", "198.51.100.11"],
        &["--self-check-secs", "600"],
    );
    wait_neigh_mac(
        c,
        "198.51.100.10",
        mac_a,
        "C to learn .10 from the first burst",
    );
    // The switch goes down: every bridge port loses carrier (a's and c's eth0 with it).
    for port in ["p0", "p2"] {
        seg.bridge
            .ip(&["link", "set", port, "down"])
            .expect("port down");
    }
    for ip in ["198.51.100.10", "198.51.100.11"] {
        let _ = c.ip(&["neigh", "del", ip, "dev", "eth0"]);
    }
    std::thread::sleep(Duration::from_secs(5)); // the outage itself, not a synchronisation
    for port in ["p0", "p2"] {
        seg.bridge
            .ip(&["link", "set", port, "up"])
            .expect("port up");
    }
    let back = Instant::now();
    let heard = |ip: &str| neigh_mac(c, ip) == Some(mac_a);
    if let Err(e) = wait_until(
        "C to hear both addresses again",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (heard("198.51.100.10") && heard("198.51.100.11")).then_some(()),
    ) {
        let _ = p.terminate(Duration::from_secs(10));
        panic!("{e:#}; neighbours:\n{}\n{}", neighbours(c), p.log_text());
    }
    let took = back.elapsed();
    println!("switch reboot: every held address heard again {took:?} after carrier returned");
    assert!(
        took < Duration::from_secs(2),
        "re-announcement took {took:?}\n{}",
        p.log_text()
    );
    p.next_line("interface came up; announcing", Duration::from_secs(5))
        .unwrap();
}

/// Issue 11's other switch case: only the CLIENT's bridge port flaps (down 5 s, up). The
/// holder's carrier never changes, so nothing tells it to re-announce; the client's kernel
/// flushes its neighbour entries on carrier loss (printed, not asserted: kernel behaviour) and
/// resolves each address again with its first packet, which our responder answers. Asserted:
/// every address (IPv4 and IPv6) points at the holder again within 2 s of the client's carrier
/// returning, the refresh is the client's own request answered (the holder's request and
/// response counters moved, its gratuitous counter did not: no unsolicited frame explains it).
#[test]
fn client_port_flap_the_first_packet_resolves_every_address_again() {
    if !root_or_skip("client_port_flap_the_first_packet_resolves_every_address_again") {
        return;
    }
    let (seg, logs) = lab("cf");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    let ips = ["198.51.100.10", "198.51.100.11", "2001:db8:100::10"];
    // One gratuitous announcement at start, no periodic ones, a long self-check.
    let mut p = announce(
        a,
        logs.path(),
        &ips,
        &[
            "--gratuitous-count",
            "1",
            "--self-check-secs",
            "600",
            "--metrics-addr",
            "127.0.0.1:9757",
        ],
    );
    // The client's first packet to an address: the kernel resolves it (the packet itself goes
    // unanswered: A has no address, only our responder answers ARP/NDP for it).
    // Started, not waited for (each ping waits for a reply that never comes).
    let poke = |ip: &str| {
        let v6 = ip.contains(':');
        c.cmd("ping")
            .args([if v6 { "-6" } else { "-4" }, "-c", "1", "-W", "1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping")
    };
    let reap = |pings: Vec<Child>| {
        for mut p in pings {
            let _ = p.wait();
        }
    };
    for ip in ips {
        let ping = poke(ip);
        wait_neigh_mac(c, ip, mac_a, "C to resolve the address before the flap");
        reap(vec![ping]);
    }
    let counters = || {
        let m = metrics(a, 9757);
        let sum = |name: &str| ips.iter().map(|ip| ip_count(&m, name, ip)).sum::<u64>();
        (
            sum("ferrolb_gratuitous_sent_total"),
            sum("ferrolb_arp_requests_received_total") + sum("ferrolb_ndp_requests_received_total"),
            sum("ferrolb_responses_sent_total"),
        )
    };
    // The start burst (one frame per address) is over once it is counted.
    let before = poll_until("the start burst counted", Duration::from_secs(15), || {
        let k = counters();
        (k.0 >= ips.len() as u64).then_some(k)
    });
    let carrier = || {
        c.ip(&["link", "show", "eth0"])
            .map(|s| !s.contains("NO-CARRIER") && s.contains("LOWER_UP"))
            .unwrap_or(false)
    };
    seg.bridge
        .ip(&["link", "set", "p2", "down"])
        .expect("port down");
    poll_until("C's carrier to go", Duration::from_secs(10), || {
        (!carrier()).then_some(())
    });
    println!(
        "client port down: C's neighbour entries:\n{}",
        neighbours(c)
    );
    std::thread::sleep(Duration::from_secs(5)); // the outage itself, not a synchronisation
    seg.bridge
        .ip(&["link", "set", "p2", "up"])
        .expect("port up");
    poll_until("C's carrier to return", Duration::from_secs(10), || {
        carrier().then_some(())
    });
    let back = Instant::now();
    println!("carrier back, before C sent anything:\n{}", neighbours(c));
    let pings: Vec<Child> = ips.iter().map(|ip| poke(ip)).collect();
    if let Err(e) = wait_until(
        "C to resolve every address again",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            ips.iter()
                .all(|ip| neigh_mac(c, ip) == Some(mac_a))
                .then_some(())
        },
    ) {
        let _ = p.terminate(Duration::from_secs(10));
        panic!("{e:#}; neighbours:\n{}", neighbours(c));
    }
    let took = back.elapsed();
    reap(pings);
    println!("client port flap: every address resolved again {took:?} after C's carrier returned");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let after = counters();
    assert_eq!(
        after.0, before.0,
        "the holder sent gratuitous frames although its own carrier never changed"
    );
    assert!(
        after.1 > before.1 && after.2 > before.2,
        "the refresh was not C's request answered by A: before {before:?} after {after:?}"
    );
}

/// The self-check notices a reader thread that died behind the manager's back, restarts it and
/// counts the repair; requests are answered again.
#[test]
fn self_check_repairs_a_dead_reader_and_counts_it() {
    if !root_or_skip("self_check_repairs_a_dead_reader_and_counts_it") {
        return;
    }
    let (seg, logs) = lab("sc");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    let mut p = announce(
        a,
        logs.path(),
        &["198.51.100.10"],
        &[
            "--control-stdin",
            "--self-check-secs",
            "1",
            "--metrics-addr",
            "127.0.0.1:9754",
        ],
    );
    p.say("198.51.100.10@eth0").unwrap();
    p.next_line("applied held set", Duration::from_secs(10))
        .unwrap();
    assert_eq!(replied(&arping(c, "198.51.100.10", 1, 2)), vec![mac_a]);
    p.say("!break eth0").unwrap();
    p.next_line("self-check repaired", Duration::from_secs(10))
        .unwrap();
    let macs = poll_until("answers again", Duration::from_secs(10), || {
        let m = replied(&arping(c, "198.51.100.10", 1, 2));
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(macs, vec![mac_a]);
    let m = metrics(a, 9754);
    let repairs = metric(&m, "ferrolb_announce_repairs_total", &[]).unwrap_or(0.0);
    assert!(repairs >= 1.0, "{m}");
}

#[test]
fn periodic_reannounce_repeats_announcements_after_the_burst() {
    if !root_or_skip("periodic_reannounce_repeats_announcements_after_the_burst") {
        return;
    }
    let (seg, logs) = lab("re");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let mac_a = mac_of(a);
    // A burst of one announcement, then one every second.
    let _p = announce(
        a,
        logs.path(),
        &["198.51.100.10", "2001:db8:100::10"],
        &[
            "--gratuitous-count",
            "1",
            "--reannounce-interval-secs",
            "1",
            "--metrics-addr",
            "127.0.0.1:9754",
        ],
    );
    poll_until(
        "three IPv4 and IPv6 announcements",
        Duration::from_secs(15),
        || {
            let m = metrics(a, 9754);
            (ip_count(&m, "ferrolb_gratuitous_sent_total", "198.51.100.10") >= 6
                && ip_count(&m, "ferrolb_gratuitous_sent_total", "2001:db8:100::10") >= 3)
                .then_some(())
        },
    );
    // A neighbour entry made wrong after the burst is corrected by a re-announcement.
    stale_neigh(c, "-4", "198.51.100.10", "02:00:00:00:00:99");
    wait_neigh_mac(c, "198.51.100.10", mac_a, "C's entry to point at A again");
}

/// RTTs (ms) of `arping` replies from `ip`: `par` concurrent arpings of `count` requests each
/// (iputils arping sends at most one request a second; concurrent ones see each other's
/// replies, so keep `par` at 1 for latency figures).
fn arping_rtts(ns: &Netns, ip: &str, par: usize, count: u32, broadcast: bool) -> Vec<f64> {
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..par)
            .map(|_| s.spawn(|| run_arping(ns, "eth0", ip, count, count + 5, broadcast)))
            .collect();
        runs.into_iter()
            .flat_map(|run| {
                let out = run.join().expect("arping thread").expect("arping");
                arping_replies(&out).into_iter().map(|r| r.rtt_ms)
            })
            .collect()
    })
}

/// Measurement, not a check of speed: ARP reply latency of the announcer vs the kernel on the
/// same segment. Run with `cargo test --release --test net -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_arp_reply_latency_vs_kernel() {
    if !root_or_skip("measure_arp_reply_latency_vs_kernel") {
        return;
    }
    let (mut seg, logs) = lab("ms");
    seg.add_member("ms", "k", &["192.0.2.1/24"]).expect("k");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    let _p = announce(
        a,
        logs.path(),
        &["198.51.100.10"],
        &["--gratuitous-count", "1"],
    );
    let (par, count) = (1, 20);
    let pct = |mut v: Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p) as usize]
    };
    for broadcast in [true, false] {
        for (who, ip) in [("kernel", "192.0.2.1"), ("ferrolb", "198.51.100.10")] {
            let r = arping_rtts(c, ip, par, count, broadcast);
            assert_eq!(
                r.len(),
                par * count as usize,
                "{who}: every request answered"
            );
            println!(
                "{who:8} {}: n={} p50={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms",
                if broadcast { "broadcast" } else { "unicast  " },
                r.len(),
                pct(r.clone(), 0.5),
                pct(r.clone(), 0.9),
                pct(r.clone(), 0.99),
                pct(r, 1.0)
            );
        }
    }
}

#[test]
fn announce_rejects_bad_input_with_a_clear_error() {
    for (args, needle) in [
        (vec!["--ip", "224.0.0.1", "-i", "eth0"], "only unicast"),
        (vec!["--ip", "ff02::1", "-i", "eth0"], "only unicast"),
        (
            vec!["--ip", "198.51.100.300", "-i", "eth0"],
            "invalid value",
        ),
        (vec!["-i", "eth0"], "--ip"),
    ] {
        let out = Command::new(BIN)
            .arg("announce")
            .args(&args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn vlan_interfaces_are_answered() {
    if !root_or_skip("vlan_interfaces_are_answered") {
        return;
    }
    // Cilium fails on VLAN interfaces (#37959); a VLAN device is just another interface here.
    let (seg, logs) = lab("vl");
    let (a, c) = (&seg.members[0], &seg.members[2]);
    for ns in [a, c] {
        let vlan = [
            "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100",
        ];
        if let Err(e) = ns.ip(&vlan) {
            // Containers without the 8021q module cannot create VLAN devices.
            println!("vlan_interfaces_are_answered: skipped: no VLAN support here ({e})");
            return;
        }
        ns.ip(&["link", "set", "eth0.100", "up"]).expect("up");
    }
    c.ip(&["addr", "add", "192.0.2.103/24", "dev", "eth0.100"])
        .expect("addr");
    c.ip(&["route", "replace", "198.51.100.0/24", "dev", "eth0.100"])
        .expect("route");
    let mac_vlan: MacAddr = a.mac("eth0.100").expect("mac").parse().expect("mac");
    let mut p = spawn(
        a,
        logs.path(),
        &["announce", "-i", "eth0.100", "--ip", "198.51.100.10"],
    );
    p.next_line("announcer ready", Duration::from_secs(20))
        .unwrap();
    let out = run_arping(c, "eth0.100", "198.51.100.10", 2, 5, false).expect("arping");
    assert_eq!(replied(&out), vec![mac_vlan; 2], "{out}");
    // Untagged requests on the parent are not answered: the address is held on the VLAN only.
    let out = arping(c, "198.51.100.10", 2, 2);
    assert!(replied(&out).is_empty(), "{out}");
}

#[test]
fn default_interface_selection_on_a_real_system() {
    if !root_or_skip("default_interface_selection_on_a_real_system") {
        return;
    }
    let (seg, logs) = lab("se");
    let a = &seg.members[0];
    // eth5/veth5: a veth pair; eth5 is then enslaved to bridge br1 (a member: excluded; the
    // bridge is eligible); veth5 is excluded by name; eth6 (peer veth6) has ARP off (NOARP);
    // eth7 (peer veth7 up) stays down; lo is loopback.
    for n in ["5", "6", "7"] {
        let (e, v) = (format!("eth{n}"), format!("veth{n}"));
        a.ip(&["link", "add", &e, "type", "veth", "peer", "name", &v])
            .expect("veth");
    }
    a.ip(&["link", "add", "br1", "type", "bridge"])
        .expect("bridge");
    a.ip(&["link", "set", "eth5", "master", "br1"])
        .expect("enslave");
    a.ip(&["link", "set", "eth6", "arp", "off"]).expect("noarp");
    for i in ["eth5", "veth5", "br1", "eth6", "veth6", "veth7"] {
        a.ip(&["link", "set", i, "up"]).expect("up");
    }
    poll_until("br1 to have carrier", Duration::from_secs(10), || {
        let l = a.ip(&["-o", "link", "show", "br1"]).ok()?;
        l.contains("LOWER_UP").then_some(())
    });
    let mut p = spawn(a, logs.path(), &["announce", "--ip", "198.51.100.10"]);
    let line = p
        .next_line("announcer ready", Duration::from_secs(20))
        .unwrap();
    assert!(
        line.contains(r#"interfaces={"br1", "eth0"}"#),
        "selected interfaces: {line}"
    );
}

/// Probes the announcer sent for `ip` (0 when absent).
fn probes_sent(a: &Netns, port: u16, ip: &str) -> u64 {
    ip_count(&metrics(a, port), "ferrolb_announce_probes_sent_total", ip)
}

/// A host with the address configured on its interface (a static address left behind; Linux
/// answers NS only for addresses on the receiving interface) answers the NS probe that goes with
/// each unsolicited NA: the announcer reports it as a conflict that is a probe answer (a
/// Solicited NA to the probed address), naming that host's MAC. An address the other host does
/// not have gets no such report.
#[test]
fn a_host_with_the_ipv6_address_answers_our_ns_probe_and_is_reported() {
    if !root_or_skip("a_host_with_the_ipv6_address_answers_our_ns_probe_and_is_reported") {
        return;
    }
    let (seg, logs) = lab("n6");
    let (a, b) = (&seg.members[0], &seg.members[1]);
    let mac_b = mac_of(b);
    // nodad: usable at once, and no DAD probe of b's own that a could mistake for anything.
    b.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:100::10/128",
        "dev",
        "eth0",
        "nodad",
    ])
    .expect("address on b");
    let mut pa = announce(
        a,
        logs.path(),
        &["2001:db8:100::10", "2001:db8:100::11"],
        &[
            "--gratuitous-count",
            "3",
            "--probe-after-ms",
            "0",
            "--metrics-addr",
            "127.0.0.1:9755",
        ],
    );
    let l = pa
        .next_line("ip=2001:db8:100::10", Duration::from_secs(10))
        .unwrap();
    assert!(
        l.contains("conflict") && l.contains(&mac_b.to_string()) && l.contains("probe_answer=true"),
        "{l}"
    );
    // Every announcement of the burst went with a probe, for both addresses.
    let m = poll_until("the burst's probes", Duration::from_secs(15), || {
        let m = metrics(a, 9755);
        (ip_count(&m, "ferrolb_announce_probes_sent_total", "2001:db8:100::11") >= 3).then_some(m)
    });
    assert!(
        ip_count(&m, "ferrolb_announce_probes_sent_total", "2001:db8:100::10") >= 3,
        "{m}"
    );
    assert!(
        ip_count(&m, "ferrolb_announce_conflicts_total", "2001:db8:100::10") >= 1,
        "{m}"
    );
    assert_eq!(
        ip_count(&m, "ferrolb_announce_conflicts_total", "2001:db8:100::11"),
        0,
        "nobody else has ::11\n{m}"
    );
    let log = pa.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("conflict") && l.contains("ip=2001:db8:100::11")),
        "{log}"
    );
}

/// kube-proxy binding the address after the takeover burst is over: no periodic
/// re-announcement, a burst of one, yet the follow-up probes (here 4 s and 8 s after the
/// takeover) find the late answerer for IPv4 (ARP probe) and IPv6 (NS probe).
#[test]
fn a_late_answerer_is_found_by_the_follow_up_probes() {
    if !root_or_skip("a_late_answerer_is_found_by_the_follow_up_probes") {
        return;
    }
    let (seg, logs) = lab("lt");
    let (a, b) = (&seg.members[0], &seg.members[1]);
    let mac_b = mac_of(b).to_string();
    let (v4, v6) = ("198.51.100.10", "2001:db8:100::10");
    let mut pa = announce(
        a,
        logs.path(),
        &[v4, v6],
        &[
            "--gratuitous-count",
            "1",
            "--probe-after-ms",
            "4000,8000",
            "--metrics-addr",
            "127.0.0.1:9756",
        ],
    );
    let t0 = Instant::now();
    // The burst (one announcement, one probe each) is over when the announcer is ready.
    for ip in [v4, v6] {
        assert_eq!(probes_sent(a, 9756, ip), 1, "{ip}");
    }
    // Now the late binding on b.
    b.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])
        .expect("v4 on b");
    b.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])
    .expect("v6 on b");
    let bound = t0.elapsed();
    let m = metrics(a, 9756);
    if bound < Duration::from_secs(3) {
        // Nothing probes before the first follow-up, and b announces nothing by itself.
        for ip in [v4, v6] {
            assert_eq!(
                ip_count(&m, "ferrolb_announce_conflicts_total", ip),
                0,
                "{ip}\n{m}"
            );
        }
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let l = pa.next_line("conflict", Duration::from_secs(20)).unwrap();
        assert!(l.contains(&mac_b) && l.contains("probe_answer=true"), "{l}");
        for ip in [v4, v6] {
            if l.contains(&format!("ip={ip} ")) {
                seen.insert(ip);
            }
        }
    }
    println!(
        "late answerer bound {bound:?} after the takeover, found {:?} after it",
        t0.elapsed()
    );
    for ip in [v4, v6] {
        assert!(probes_sent(a, 9756, ip) >= 2, "{ip}");
    }
}

/// One socket holds ≈ 2,300 IPv6 memberships (its option memory, `net.core.optmem_max`); a
/// node holding more IPv6 addresses must still have joined every solicited-node group, or a
/// real NIC and an MLD-snooping switch would not deliver the NS for the rest.
#[test]
fn thousands_of_ipv6_addresses_have_every_solicited_node_group_joined() {
    if !root_or_skip("thousands_of_ipv6_addresses_have_every_solicited_node_group_joined") {
        return;
    }
    let (seg, logs) = lab("mc");
    let a = &seg.members[0];
    const N: u32 = 3000;
    let ips: Vec<String> = (1..=N)
        .map(|i| format!("2001:db8:100::{:x}:{:x}", i >> 8, i & 0xff))
        .collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let _p = announce(a, logs.path(), &refs, &["--gratuitous-count", "1"]);
    let want: BTreeSet<String> = ips
        .iter()
        .map(|ip| ndp::solicited_node(ip.parse().unwrap()).to_string())
        .collect();
    let missing = poll_until(
        "every solicited-node group joined",
        Duration::from_secs(20),
        || {
            let maddr = a.ip(&["-6", "maddr", "show", "dev", "eth0"]).ok()?;
            let joined: BTreeSet<String> = maddr
                .split_whitespace()
                .filter(|w| w.starts_with("ff02::1:ff"))
                .map(str::to_string)
                .collect();
            let missing = want.difference(&joined).count();
            (missing == 0).then_some(missing)
        },
    );
    assert_eq!(missing, 0);
}
