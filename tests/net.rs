//! The packet layer against the real kernel: `ferrolb announce` in network namespaces on a
//! bridge, probed with the kernel's own tools (arping, ndisc6, ping, ip neigh), and our codecs
//! compared byte for byte with frames the kernel sends (captured with tcpdump). Plus a bounded,
//! coverage-free fuzz of the parsers and decisions (runs without root).
//!
//! Root-only tests print "skipped: needs root" and return when not root.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrolb::net::arp::{self, MacAddr};
use ferrolb::net::ndp;
use ferrolb::netns::{self, Netns, Segment};

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

/// A child process killed (SIGTERM, then SIGKILL) on drop, with its stderr lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and wait (bounded) for exit; returns the exit status.
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("-TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `ferrolb announce` in `ns` and waits until it says it is ready.
fn announce(ns: &Netns, ips: &[&str], extra: &[&str]) -> Proc {
    let mut cmd = ns.cmd(BIN);
    cmd.args(["announce", "--interface", "eth0"]);
    for ip in ips {
        cmd.args(["--ip", ip]);
    }
    cmd.args(extra);
    let mut p = Proc::spawn(cmd);
    p.wait_line("announcer ready", Duration::from_secs(20));
    p
}

fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mac_of(ns: &Netns) -> MacAddr {
    ns.mac("eth0").expect("mac").parse().expect("parse mac")
}

/// MACs in `arping` output lines "Unicast reply from IP [MAC]  ...".
fn arping_reply_macs(out: &str, ip: &str) -> Vec<MacAddr> {
    out.lines()
        .filter(|l| l.contains(&format!("reply from {ip} ")))
        .filter_map(|l| {
            let s = l.split('[').nth(1)?.split(']').next()?;
            s.parse().ok()
        })
        .collect()
}

/// `arping -c count -w secs` from `ns`; returns its stdout (exit status ignored: no reply = 1).
fn arping(ns: &Netns, ip: &str, count: u32, secs: u32) -> String {
    let out = ns
        .cmd("arping")
        .args(["-c", &count.to_string(), "-w", &secs.to_string(), "-I", "eth0", ip])
        .output()
        .expect("arping");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ndisc6` from `ns`; returns the target link-layer addresses it reports.
fn ndisc6(ns: &Netns, ip: &str) -> Vec<MacAddr> {
    let out = ns
        .cmd("ndisc6")
        .args(["-r", "3", "-w", "1000", ip, "eth0"])
        .output()
        .expect("ndisc6");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Target link-layer address"))
        .filter_map(|l| l.split(':').skip(1).collect::<Vec<_>>().join(":").trim().parse().ok())
        .collect()
}

/// `ip neigh show IP dev eth0` in `ns`: (lladdr, state) if there is an entry.
fn neigh(ns: &Netns, ip: &str) -> Option<(Option<MacAddr>, String)> {
    let out = ns.ip(&["neigh", "show", ip, "dev", "eth0"]).ok()?;
    let line = out.lines().next()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mac = words
        .iter()
        .position(|w| *w == "lladdr")
        .and_then(|i| words.get(i + 1))
        .and_then(|m| m.parse().ok());
    Some((mac, words.last()?.to_string()))
}

fn metrics(ns: &Netns, port: u16) -> String {
    ns.exec("curl", &["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .unwrap_or_default()
}

fn metric(text: &str, name: &str, ip: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("ip=\"{ip}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A segment with node namespaces `a`, `b` (no addresses at all on eth0) and client `c`
/// (192.0.2.3/24, 2001:db8:1::3/64, on-link routes to the VIP ranges).
fn lab(tag: &str) -> Segment {
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
    seg
}

#[test]
fn arping_and_ndisc6_get_answers_from_exactly_the_holder() {
    if !root_or_skip("arping_and_ndisc6_get_answers_from_exactly_the_holder") {
        return;
    }
    let seg = lab("ab");
    let (a, b, c) = (&seg.members[0], &seg.members[1], &seg.members[2]);
    let (mac_a, mac_b) = (mac_of(a), mac_of(b));
    let _pa = announce(
        a,
        &["198.51.100.10", "2001:db8:100::10"],
        &["--metrics-addr", "127.0.0.1:9750"],
    );
    let _pb = announce(b, &["198.51.100.11", "2001:db8:100::11"], &[]);

    let out = arping(c, "198.51.100.10", 3, 10);
    let macs = arping_reply_macs(&out, "198.51.100.10");
    assert_eq!(macs, vec![mac_a; 3], "arping output:\n{out}");

    let out = arping(c, "198.51.100.11", 3, 10);
    let macs = arping_reply_macs(&out, "198.51.100.11");
    assert_eq!(macs, vec![mac_b; 3], "arping output:\n{out}");

    // Nobody holds .12: no reply at all.
    let out = arping(c, "198.51.100.12", 2, 2);
    assert!(arping_reply_macs(&out, "198.51.100.12").is_empty(), "{out}");

    assert_eq!(ndisc6(c, "2001:db8:100::10"), vec![mac_a]);
    assert_eq!(ndisc6(c, "2001:db8:100::11"), vec![mac_b]);
    assert!(ndisc6(c, "2001:db8:100::12").is_empty());

    // A joined the solicited-node group of its IPv6 address (so real NICs and snooping
    // switches deliver the NS); B did not join A's.
    let maddr_a = a.ip(&["-6", "maddr", "show", "dev", "eth0"]).expect("maddr");
    assert!(maddr_a.contains("ff02::1:ff00:10"), "{maddr_a}");
    let maddr_b = b.ip(&["-6", "maddr", "show", "dev", "eth0"]).expect("maddr");
    assert!(!maddr_b.contains("ff02::1:ff00:10"), "{maddr_b}");
    assert!(maddr_b.contains("ff02::1:ff00:11"), "{maddr_b}");

    let m = metrics(a, 9750);
    assert_eq!(
        metric(&m, "ferrolb_arp_requests_received_total", "198.51.100.10"),
        3,
        "{m}"
    );
    assert!(metric(&m, "ferrolb_responses_sent_total", "198.51.100.10") >= 3);
    assert!(metric(&m, "ferrolb_ndp_requests_received_total", "2001:db8:100::10") >= 1);
    assert!(metric(&m, "ferrolb_gratuitous_sent_total", "198.51.100.10") >= 2);
    assert!(metric(&m, "ferrolb_gratuitous_sent_total", "2001:db8:100::10") >= 1);
    // Requests for B's address are never counted (nor answered) by A.
    assert_eq!(metric(&m, "ferrolb_arp_requests_received_total", "198.51.100.11"), 0);
}
