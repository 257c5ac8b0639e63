//! The namespace utility every network test and the lab stand on: namespaces appear, a segment
//! passes traffic between members, and dropping removes namespaces and kills what ran inside.

use ferrolb_lab::netns::{self, is_root, Netns, Segment};
use ferrolb_lab::wire::Impairment;

fn ns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn segment_passes_traffic_and_drop_cleans_up() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names;
    let mut sleeper;
    {
        let mut seg = Segment::create("nt").unwrap();
        seg.add_member("nt", "a", &["192.0.2.1/24", "2001:db8:1::1/64"])
            .unwrap();
        seg.add_member("nt", "b", &["192.0.2.2/24"]).unwrap();
        let a = &seg.members[0];
        let b = &seg.members[1];
        a.exec("ping", &["-c", "1", "-W", "5", "192.0.2.2"])
            .unwrap();
        let bmac = b.mac("eth0").unwrap();
        let neigh = a.ip(&["neigh", "show", "192.0.2.2"]).unwrap();
        assert!(neigh.contains(&bmac), "a learned b's MAC {bmac}: {neigh}");
        sleeper = b.cmd("sleep").arg("600").spawn().unwrap();
        names = vec![
            a.name().to_string(),
            b.name().to_string(),
            seg.bridge.name().to_string(),
        ];
        for n in &names {
            assert!(ns_exists(n), "{n} exists while the segment lives");
        }
    }
    for n in &names {
        assert!(!ns_exists(n), "{n} removed on drop");
    }
    // The process that ran inside was killed, not left behind.
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "sleep was killed: {status:?}");
}

#[test]
fn separate_namespaces_are_isolated() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let a = Netns::create("iso").unwrap();
    // Nothing but loopback exists inside a fresh namespace: no host interface leaks in.
    let links = a.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"));
}

#[test]
fn a_bridge_made_by_the_helper_keeps_its_mac_when_a_port_with_a_lower_one_joins() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let a = Netns::create("brmac").unwrap();
    netns::bridge(&a, "brx", "02:fe:00:00:00:fe").unwrap();
    for (port, mac) in [("pa", "02:80:00:00:00:01"), ("pb", "02:00:00:00:00:01")] {
        a.ip(&[
            "link",
            "add",
            port,
            "address",
            mac,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{port}x"),
        ])
        .unwrap();
        a.ip(&["link", "set", port, "master", "brx"]).unwrap();
        a.ip(&["link", "set", port, "up"]).unwrap();
        // A bridge with a kernel-chosen MAC would now have its lowest port's.
        assert_eq!(
            a.mac("brx").unwrap(),
            "02:fe:00:00:00:fe",
            "after {port} joined"
        );
    }
}

/// `rtt min/avg/max/mdev = 301.2/…` of ping's summary: the minimum, in ms.
fn min_rtt_ms(ping_output: &str) -> f64 {
    let line = ping_output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no rtt summary in {ping_output}"));
    line.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The lab's lossy wire (`loss-delay` chaos faults): between a member's port and the bridge it
/// passes ARP, NDP, ICMP and TCP (a 300 kB download, so segments larger than the MTU the
/// sender's offloads build cross it too), drops every frame at 100 % loss, and delays each
/// direction by what it is told.
#[test]
fn a_wire_carries_every_kind_of_frame_and_drops_and_delays_as_told() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut seg = Segment::create("nw").unwrap();
    seg.add_member("nw", "a", &["192.0.2.1/24", "2001:db8:1::1/64"])
        .unwrap();
    seg.add_member("nw", "b", &["192.0.2.2/24", "2001:db8:1::2/64"])
        .unwrap();
    seg.wire_member(1, 7).unwrap();
    let ns_b = seg.members[1].name().to_string();
    {
        let a = &seg.members[0];
        let b = &seg.members[1];
        let bmac = b.mac("eth0").unwrap();
        let arp = a
            .exec("arping", &["-c", "2", "-w", "5", "-I", "eth0", "192.0.2.2"])
            .unwrap();
        assert!(arp.to_lowercase().contains(&bmac.to_lowercase()), "{arp}");
        a.exec("ping", &["-6", "-c", "1", "-W", "5", "2001:db8:1::2"])
            .unwrap();
        // TCP: a file served from b, fetched by a, byte for byte.
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &body).unwrap();
        let mut server = b
            .cmd("python3")
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "192.0.2.2",
                "--directory",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = dir.path().join("got");
        // Polled: the server has no readiness signal but its port.
        let fetched = ferrolb_lab::wait::wait_until(
            "the file fetched through the wire",
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(200),
            || {
                a.exec(
                    "curl",
                    &[
                        "-sf",
                        "-m",
                        "5",
                        "-o",
                        out.to_str().unwrap(),
                        "http://192.0.2.2:8080/f",
                    ],
                )
                .ok()
            },
        );
        let _ = server.kill();
        let _ = server.wait();
        if let Err(e) = fetched {
            panic!("{e:#}; wire: {:?}", seg.wires[&1].stats());
        }
        assert_eq!(
            std::fs::read(&out).unwrap(),
            body,
            "the file arrived intact"
        );
        assert_eq!(seg.wires[&1].stats().send_errors, 0);

        // 100 % loss: nothing gets across, ARP included.
        seg.impair(
            1,
            Impairment {
                loss_pct: 100.0,
                ..Default::default()
            },
        )
        .unwrap();
        let before = seg.wires[&1].stats();
        a.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
        assert!(
            a.exec("arping", &["-c", "3", "-w", "3", "-I", "eth0", "192.0.2.2"])
                .is_err(),
            "no ARP reply across a dead wire"
        );
        let after = seg.wires[&1].stats();
        assert!(
            after.dropped >= before.dropped + 3,
            "{before:?} → {after:?}"
        );
        assert_eq!(after.forwarded, before.forwarded, "{before:?} → {after:?}");

        // 150 ms each way: no echo comes back sooner than 300 ms.
        seg.impair(
            1,
            Impairment {
                delay: std::time::Duration::from_millis(150),
                ..Default::default()
            },
        )
        .unwrap();
        let slow = a
            .exec("ping", &["-c", "3", "-i", "0.2", "-W", "5", "192.0.2.2"])
            .unwrap();
        assert!(min_rtt_ms(&slow) >= 300.0, "{slow}");

        // Cleared: back to a plain link.
        seg.impair(1, Impairment::default()).unwrap();
        let quick = a
            .exec("ping", &["-c", "3", "-i", "0.2", "-W", "5", "192.0.2.2"])
            .unwrap();
        assert!(min_rtt_ms(&quick) < 300.0, "{quick}");
    }
    drop(seg);
    assert!(!ns_exists(&ns_b), "{ns_b} removed with its wire");
}
