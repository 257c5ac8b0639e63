//! Network namespaces for tests and the lab, created with a unique prefix and removed on drop
//! (and, for leftovers of a crashed run, by [`cleanup_stale`]).
//!
//! Names are `flt<PID>-<role>`: the PID of the creating process makes them unique between
//! concurrent test binaries and lets [`cleanup_stale`] remove only namespaces whose creator is
//! dead. veth pairs are created directly inside their namespaces, so the host's own namespace
//! never sees an interface of ours.

use std::process::{Command, Output};

use anyhow::{bail, Context};

use crate::wire::{Impairment, Wire};

/// Prefix of every namespace this crate creates.
pub const PREFIX: &str = "flt";

/// True when running as root (namespace tests skip themselves otherwise).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip ARGS` in the current namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that is deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `flt<PID>-<role>`, with `lo` up. `role` should be short and unique per process.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        // A previous run of this same PID cannot exist, but a stale one of a recycled PID can.
        delete_ns(&name);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        Ok(String::from_utf8_lossy(&run(&mut c)?.stdout).into_owned())
    }

    /// Runs `program ARGS` inside this namespace and returns stdout; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&run(self.cmd(program).args(args))?.stdout).into_owned())
    }

    /// Sets a sysctl inside this namespace (`net.ipv4.conf.all.arp_ignore`, ...).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("no MAC on {iface} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_ns(&self.name);
    }
}

/// Kills every process still inside namespace `name` (deleting a namespace does not), then
/// deletes it.
fn delete_ns(name: &str) -> bool {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    Command::new("ip")
        .args(["netns", "del", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates a veth pair with one end `a_if` in `a` and the other `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    ip(&[
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Creates bridge `name` in `ns` with the fixed MAC `mac`, up. A bridge whose MAC the kernel
/// chose takes the lowest MAC of its ports and changes it whenever a port with a lower one
/// joins; a host that resolved an address on the bridge before then keeps the old MAC for up to
/// ~45 s (neighbour REACHABLE time), and its frames to it are dropped — a TCP connect then hangs
/// until the entry is re-resolved. An address set by hand never changes.
pub fn bridge(ns: &Netns, name: &str, mac: &str) -> anyhow::Result<()> {
    ns.ip(&["link", "add", name, "address", mac, "type", "bridge"])?;
    ns.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// A bridge namespace with member namespaces, each attached by a veth (`eth0` on the member's
/// side): the L2 segment every network test and the lab use.
#[derive(Debug)]
pub struct Segment {
    /// Members, in creation order. Dropped before the bridge.
    pub members: Vec<Netns>,
    /// The namespace holding bridge `br0`.
    pub bridge: Netns,
    /// Wires put between members' ports and the bridge ([`Segment::wire_member`]), by member
    /// index. Stopped before the namespaces go.
    pub wires: std::collections::BTreeMap<usize, Wire>,
}

impl Segment {
    /// Creates `<tag>br` with bridge `br0` (no STP, no forwarding delay, IPv6 multicast
    /// snooping off so NDP multicast reaches every member).
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let bridge = Netns::create(&format!("{tag}br"))?;
        bridge.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        bridge.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        Ok(Segment {
            members: Vec::new(),
            bridge,
            wires: Default::default(),
        })
    }

    /// Adds a member namespace `<tag><role>` whose `eth0` is plugged into the bridge.
    /// `addrs` are CIDR addresses to put on `eth0` (documentation ranges only).
    pub fn add_member(&mut self, tag: &str, role: &str, addrs: &[&str]) -> anyhow::Result<&Netns> {
        let ns = Netns::create(&format!("{tag}{role}"))?;
        let port = format!("p{}", self.members.len());
        veth(&ns, "eth0", &self.bridge, &port)?;
        self.bridge.ip(&["link", "set", &port, "master", "br0"])?;
        for a in addrs {
            let mut args = vec!["addr", "add", a, "dev", "eth0"];
            if a.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        self.members.push(ns);
        Ok(self.members.last().expect("just pushed"))
    }

    /// Puts a [`Wire`] between member `i`'s port `p<i>` and the bridge: `p<i>` leaves the
    /// bridge, a veth pair `w<i>`/`x<i>` joins it by `x<i>`, and the wire carries every frame
    /// between `p<i>` and `w<i>`. The member keeps its link (cutting `p<i>` still takes its
    /// carrier away); [`Segment::impair`] then sets loss and delay on it. Idempotent.
    pub fn wire_member(&mut self, i: usize, seed: u64) -> anyhow::Result<&Wire> {
        if !self.wires.contains_key(&i) {
            let (p, w, x) = (format!("p{i}"), format!("w{i}"), format!("x{i}"));
            self.bridge
                .ip(&["link", "add", &w, "type", "veth", "peer", "name", &x])?;
            self.bridge.ip(&["link", "set", &x, "master", "br0"])?;
            for dev in [&w, &x] {
                self.bridge.ip(&["link", "set", dev, "up"])?;
            }
            // A packet socket reads a TCP sender's offloaded super-segment (up to 64 KiB) as
            // one frame, and no interface sends a frame above its MTU: every member's stack
            // segments for itself (one MSS per packet, the `ethtool -K tso off` of the lab).
            for m in &self.members {
                m.ip(&["link", "set", "dev", "eth0", "gso_max_segs", "1"])?;
            }
            self.bridge.ip(&["link", "set", &p, "nomaster"])?;
            let wire = Wire::start(self.bridge.name(), &p, &w, seed)
                .with_context(|| format!("starting the wire of {p}"))?;
            self.wires.insert(i, wire);
        }
        Ok(&self.wires[&i])
    }

    /// Sets what member `i`'s wire does (see [`Segment::wire_member`]).
    pub fn impair(&self, i: usize, imp: Impairment) -> anyhow::Result<()> {
        self.wires
            .get(&i)
            .with_context(|| format!("member {i} has no wire"))?
            .set(imp);
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.wires.clear();
        self.members.clear();
    }
}

/// Deletes `flt<PID>-*` namespaces whose creating process no longer exists (leftovers of a
/// crashed run). Namespaces of live processes (concurrent tests) are left alone.
pub fn cleanup_stale() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return vec![];
    };
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if delete_ns(name) {
            removed.push(name.to_string());
        }
    }
    removed
}
