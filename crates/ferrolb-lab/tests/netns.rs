//! The namespace utility every network test and the lab stand on: namespaces appear, a segment
//! passes traffic between members, and dropping removes namespaces and kills what ran inside.

use ferrolb_lab::netns::{self, is_root, Netns, Segment};

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
