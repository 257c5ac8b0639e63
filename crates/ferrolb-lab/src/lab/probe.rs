//! What the lab's client sees: ARP/NDP answers (the kernel's arping/ndisc6), HTTP through the VIP
//! (a prober process inside the client namespace), and gratuitous ARP on the wire (tcpdump).

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::netns::Netns;

/// One ARP reply seen by arping: the answering MAC, the round trip, and whether it came to the
/// broadcast address (`Broadcast reply`: a gratuitous reply that happened to match) rather than
/// to us (`Unicast reply`).
#[derive(Debug, Clone, PartialEq)]
pub struct ArpReply {
    pub mac: String,
    pub rtt_ms: f64,
    pub broadcast: bool,
}

/// The samples of metric `name` in Prometheus text exposition (`name{k="v",...} value`): each
/// one's labels and value. Label values may hold commas, braces and escaped quotes.
pub fn prom_samples(
    text: &str,
    name: &str,
) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let mut labels = std::collections::BTreeMap::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                r = r.trim_start_matches([',', ' ']);
                if let Some(after) = r.strip_prefix('}') {
                    break Some(after);
                }
                let Some((k, v)) = r.split_once("=\"") else {
                    break None;
                };
                let mut val = String::new();
                let mut chars = v.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c)) => val.push(c),
                            None => break,
                        },
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => val.push(c),
                    }
                }
                let Some(end) = end else { break None };
                labels.insert(k.trim().to_string(), val);
                r = &v[end..];
            }
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric whose name starts with `name`
        };
        let Some(value) = rest
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        out.push((labels, value));
    }
    out
}

/// Normalises a MAC to lowercase `aa:bb:cc:dd:ee:ff`.
pub fn norm_mac(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// One iputils-arping reply line (`Unicast reply from 192.0.2.11 [8A:ED:1E:C5:83:11]  0.593ms`
/// or `Broadcast reply from ...`), MAC normalised; `None` for any other line.
pub fn arping_reply(line: &str) -> Option<ArpReply> {
    let line = line.trim();
    let (broadcast, rest) = if let Some(r) = line.strip_prefix("Unicast reply from ") {
        (false, r)
    } else {
        (true, line.strip_prefix("Broadcast reply from ")?)
    };
    let (_, rest) = rest.split_once('[')?;
    let (mac, rest) = rest.split_once(']')?;
    let rtt_ms = rest.trim().strip_suffix("ms")?.trim().parse().ok()?;
    Some(ArpReply {
        mac: norm_mac(mac),
        rtt_ms,
        broadcast,
    })
}

/// Every reply in iputils-arping output, in order.
pub fn parse_arping(out: &str) -> Vec<ArpReply> {
    out.lines().filter_map(arping_reply).collect()
}

/// `arping [-b] -c COUNT -w DEADLINE_S -I IFACE IP` in `ns`: its stdout. arping exits 1 when
/// nobody answered, which is not an error here; failing to run it is. `broadcast` keeps every
/// request broadcast (without it, arping unicasts to the first MAC that answered).
pub fn run_arping(
    ns: &Netns,
    iface: &str,
    ip: &str,
    count: u32,
    deadline_s: u32,
    broadcast: bool,
) -> anyhow::Result<String> {
    let mut cmd = ns.cmd("arping");
    if broadcast {
        cmd.arg("-b");
    }
    let out = cmd
        .args([
            "-c",
            &count.to_string(),
            "-w",
            &deadline_s.to_string(),
            "-I",
            iface,
            ip,
        ])
        .output()
        .context("running arping")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `arping -c count` from the client's eth0: the replies sent to us (no reply is an empty list).
pub fn arping(client: &Netns, ip: IpAddr, count: u32) -> Vec<ArpReply> {
    run_arping(client, "eth0", &ip.to_string(), count, count + 2, false)
        .map(|out| parse_arping(&out))
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.broadcast)
        .collect()
}

/// Parses ndisc6's `Target link-layer address: 8A:ED:...` lines.
pub fn parse_ndisc6(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Target link-layer address:"))
        .map(norm_mac)
        .collect()
}

/// `ndisc6 -m -n -r TRIES -w WAIT_MS IP IFACE` in `ns` (every advertisement of an attempt, not
/// only the first): the MACs advertised.
pub fn run_ndisc6(
    ns: &Netns,
    iface: &str,
    ip: &str,
    tries: u32,
    wait_ms: u32,
) -> anyhow::Result<Vec<String>> {
    let out = ns
        .cmd("ndisc6")
        .args([
            "-m",
            "-n",
            "-r",
            &tries.to_string(),
            "-w",
            &wait_ms.to_string(),
            ip,
            iface,
        ])
        .output()
        .context("running ndisc6")?;
    Ok(parse_ndisc6(&String::from_utf8_lossy(&out.stdout)))
}

/// Neighbor Solicitation from the client; the MACs of the advertisements received.
pub fn ndisc6(client: &Netns, ip: IpAddr, tries: u32) -> Vec<String> {
    run_ndisc6(client, "eth0", &ip.to_string(), tries, 1000).unwrap_or_default()
}

/// The distinct MACs (sorted) answering `ip` from the client's eth0: ARP replies to `count`
/// requests for IPv4, Neighbor Advertisements to `count` solicitations for IPv6.
pub fn answering_macs(client: &Netns, ip: IpAddr, count: u32) -> Vec<String> {
    let mut macs: Vec<String> = match ip {
        IpAddr::V4(_) => arping(client, ip, count)
            .into_iter()
            .map(|r| r.mac)
            .collect(),
        IpAddr::V6(_) => ndisc6(client, ip, count),
    };
    macs.sort();
    macs.dedup();
    macs
}

/// The neighbour entry for `ip` on `iface` in `ns`: (MAC, state), if there is one with a MAC.
pub fn neighbour(ns: &Netns, iface: &str, ip: &str) -> Option<(String, String)> {
    let out = ns.ip(&["neigh", "show", ip, "dev", iface]).ok()?;
    parse_neighbour(&out)
}

/// Parses one line of `ip neigh show IP dev IF`: `IP lladdr MAC STATE` → (MAC, state).
pub fn parse_neighbour(out: &str) -> Option<(String, String)> {
    let line = out.lines().next()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "lladdr")?;
    let mac = norm_mac(words.get(i + 1)?);
    let state = words.last()?.to_string();
    Some((mac, state))
}

/// Milliseconds since the Unix epoch (shared by every namespace of the machine).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One HTTP probe result from the prober: when, and which node answered (None = failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub at_ms: u64,
    pub node: Option<String>,
}

/// Parses a prober line: `<epoch_ms> ok <node>` or `<epoch_ms> err <reason>`.
pub fn parse_probe(line: &str) -> Option<Probe> {
    let mut it = line.splitn(3, ' ');
    let at_ms = it.next()?.parse().ok()?;
    match it.next()? {
        "ok" => Some(Probe {
            at_ms,
            node: Some(it.next()?.trim().to_string()),
        }),
        "err" => Some(Probe { at_ms, node: None }),
        _ => None,
    }
}

/// A running line-oriented observer (prober or tcpdump) whose lines arrive on a channel.
pub struct Stream {
    child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Stream {
    pub fn spawn(mut cmd: std::process::Command) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = cmd.spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Stream { child, lines: rx })
    }

    /// Next line within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the HTTP prober in the client namespace against `url`.
pub fn prober(
    client: &Netns,
    exe: &std::path::Path,
    url: &str,
    interval_ms: u64,
) -> anyhow::Result<Stream> {
    let mut cmd = client.cmd("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(exe).args([
        "echo",
        "--probe",
        url,
        "--interval-ms",
        &interval_ms.to_string(),
        "--timeout-ms",
        "200",
    ]);
    Stream::spawn(cmd)
}

/// A gratuitous ARP seen on the client's wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Gratuitous {
    pub at_ms: u64,
    pub ip: IpAddr,
    pub mac: String,
}

/// Parses `tcpdump -l -n -e -tt arp` lines for gratuitous ARP (request `who-has X tell X` or
/// reply `X is-at M`), e.g.
/// `1700000000.123456 8a:ed:1e:c5:83:11 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.51.100.10 tell 198.51.100.10, length 28`.
pub fn parse_tcpdump_garp(line: &str) -> Option<Gratuitous> {
    let mut words = line.split_whitespace();
    let ts: f64 = words.next()?.parse().ok()?;
    let src = words.next()?.to_ascii_lowercase();
    let dst = line.split(" > ").nth(1)?.split(',').next()?.trim();
    let arp = line.split(": ").nth(1)?;
    let w: Vec<&str> = arp.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let ip: IpAddr = match w.as_slice() {
        ["Request", "who-has", a, "tell", b, ..] if a == b && dst == "ff:ff:ff:ff:ff:ff" => {
            a.parse().ok()?
        }
        ["Reply", a, "is-at", _mac, ..] if dst == "ff:ff:ff:ff:ff:ff" => a.parse().ok()?,
        _ => return None,
    };
    Some(Gratuitous {
        at_ms: (ts * 1000.0) as u64,
        ip,
        mac: src,
    })
}

/// Starts tcpdump for ARP on the client's eth0.
pub fn arp_watch(client: &Netns) -> anyhow::Result<Stream> {
    let mut cmd = client.cmd("tcpdump");
    cmd.args(["-i", "eth0", "-l", "-n", "-e", "-tt", "arp"]);
    Stream::spawn(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prom_samples_read_labels_with_commas_quotes_and_skip_longer_names() {
        let text = "# HELP m x\n\
            m{a=\"1,2\",b=\"say \\\"hi\\\"\",c=\"{x}\"} 3\n\
            m 4 1700000000\n\
            m_total{a=\"1\"} 9\n\
            m{broken 5\n";
        let v = prom_samples(text, "m");
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].0["a"], "1,2");
        assert_eq!(v[0].0["b"], "say \"hi\"");
        assert_eq!(v[0].0["c"], "{x}");
        assert_eq!(v[0].1, 3.0);
        assert!(v[1].0.is_empty());
        assert_eq!(v[1].1, 4.0);
    }

    #[test]
    fn arping_lines() {
        let out = "ARPING 192.0.2.11 from 192.0.2.100 eth0\n\
                   Unicast reply from 192.0.2.11 [8A:ED:1E:C5:83:11]  0.593ms\n\
                   Broadcast reply from 192.0.2.11 [8a:ed:1e:c5:83:12]  1.5ms\n\
                   Unicast reply from 192.0.2.11 [8A:ED:1E:C5:83:11]  0.6ms\n\
                   Sent 3 probes (1 broadcast(s))\nReceived 3 response(s)\n";
        let reply = |mac: &str, rtt_ms, broadcast| ArpReply {
            mac: mac.into(),
            rtt_ms,
            broadcast,
        };
        assert_eq!(
            parse_arping(out),
            vec![
                reply("8a:ed:1e:c5:83:11", 0.593, false),
                reply("8a:ed:1e:c5:83:12", 1.5, true),
                reply("8a:ed:1e:c5:83:11", 0.6, false),
            ]
        );
        assert!(parse_arping("Received 0 response(s)").is_empty());
        // Not a reply, or a reply line cut short: nothing.
        assert_eq!(
            arping_reply("ARPING 192.0.2.11 from 192.0.2.100 eth0"),
            None
        );
        assert_eq!(arping_reply("Unicast reply from 192.0.2.11 [8A:ED"), None);
        assert_eq!(
            arping_reply("Unicast reply from 192.0.2.11 [8A:ED:1E:C5:83:11]"),
            None
        );
    }

    #[test]
    fn neighbour_lines() {
        assert_eq!(
            parse_neighbour("198.51.100.10 lladdr 3A:1B:2C:4D:5E:6F STALE\n"),
            Some(("3a:1b:2c:4d:5e:6f".into(), "STALE".into()))
        );
        assert_eq!(parse_neighbour("198.51.100.10  FAILED\n"), None);
        assert_eq!(parse_neighbour(""), None);
    }

    #[test]
    fn ndisc6_lines() {
        let out = "Soliciting 2001:db8:1::11 (2001:db8:1::11) on eth0...\nTarget link-layer address: 8A:ED:1E:C5:83:11\n from 2001:db8:1::11\n";
        assert_eq!(parse_ndisc6(out), vec!["8a:ed:1e:c5:83:11"]);
    }

    #[test]
    fn probe_lines() {
        assert_eq!(
            parse_probe("17 ok node2"),
            Some(Probe {
                at_ms: 17,
                node: Some("node2".into())
            })
        );
        assert_eq!(
            parse_probe("18 err timeout"),
            Some(Probe {
                at_ms: 18,
                node: None
            })
        );
        assert_eq!(parse_probe("garbage"), None);
    }

    #[test]
    fn tcpdump_gratuitous() {
        let req = "1700000000.123456 8a:ed:1e:c5:83:11 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.51.100.10 tell 198.51.100.10, length 28";
        let g = parse_tcpdump_garp(req).unwrap();
        assert_eq!(g.mac, "8a:ed:1e:c5:83:11");
        assert_eq!(g.ip.to_string(), "198.51.100.10");
        assert_eq!(g.at_ms, 1_700_000_000_123);
        let ordinary = "1700000000.2 aa:bb:cc:dd:ee:ff > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.51.100.10 tell 192.0.2.100, length 28";
        assert_eq!(parse_tcpdump_garp(ordinary), None);
        let reply = "1700000000.3 8a:ed:1e:c5:83:11 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Reply 198.51.100.10 is-at 8a:ed:1e:c5:83:11, length 28";
        assert!(parse_tcpdump_garp(reply).is_some());
        let unicast_reply = "1700000000.3 8a:ed:1e:c5:83:11 > aa:bb:cc:dd:ee:ff, ethertype ARP (0x0806), length 42: Reply 198.51.100.10 is-at 8a:ed:1e:c5:83:11, length 28";
        assert_eq!(parse_tcpdump_garp(unicast_reply), None);
    }
}
