//! Interface discovery and selection.
//!
//! [`Iface`] is a snapshot of what the kernel says about an interface; [`eligibility`] and
//! [`select`] are pure (tested without the system); [`interfaces`] and [`eligible_interfaces`]
//! read the current network namespace (getifaddrs via pnet_datalink, plus `/sys/class/net` for
//! bridge/bond membership).
//!
//! Policy (as MetalLB and Cilium do): without regexes every *eligible* interface is selected —
//! up, broadcast-capable, ARP-capable (not NOARP), not loopback, not a bridge/bond member, and not
//! a container/virtual interface by name (`lo`, `veth*`, `cali*`, `lxc*`, `cilium_*`, `docker*`,
//! `kube-ipvs*`, `flannel*`, `cni*`, `vxlan*`, `tunl*`, ...). Exclusion is by name prefix, never
//! by driver: a veth named `eth0` inside a namespace (tests, the lab, many VMs) is eligible.
//! With regexes, the regexes (each anchored: it must match the whole name; a name is selected
//! when any matches) choose among interfaces that pass the flag checks; the name-prefix list is
//! then not applied, because the operator named the interfaces explicitly.

use std::path::Path;

use regex::Regex;

pub use pnet_base::MacAddr;

/// Name prefixes of container/virtual interfaces excluded when no regex is given.
pub const EXCLUDED_PREFIXES: &[&str] = &[
    "veth",
    "cali",
    "lxc",
    "cilium_",
    "docker",
    "kube-ipvs",
    "kube-bridge",
    "flannel",
    "cni",
    "vxlan",
    "tunl",
    "genev",
    "ip6tnl",
    "sit",
    "gre",
    "weave",
    "nodelocaldns",
    "virbr",
];

/// What the kernel reports about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddr>,
    /// Administratively up and operationally running (carrier).
    pub up: bool,
    pub broadcast: bool,
    pub loopback: bool,
    pub noarp: bool,
    /// Enslaved to a bridge or bond (`/sys/class/net/NAME/master` exists).
    pub has_master: bool,
}

/// Why an interface is not eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    Down,
    Loopback,
    NoBroadcast,
    NoArp,
    NoMac,
    Member,
    VirtualName,
    NotSelected,
}

const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_RUNNING: u32 = 0x40;
const IFF_NOARP: u32 = 0x80;

impl Iface {
    /// Builds a snapshot from kernel interface flags (`IFF_*`).
    pub fn from_flags(
        name: &str,
        index: u32,
        mac: Option<MacAddr>,
        flags: u32,
        has_master: bool,
    ) -> Self {
        Iface {
            name: name.to_string(),
            index,
            mac: mac.filter(|m| m.octets() != [0; 6]),
            up: flags & IFF_UP != 0 && flags & IFF_RUNNING != 0,
            broadcast: flags & IFF_BROADCAST != 0,
            loopback: flags & IFF_LOOPBACK != 0,
            noarp: flags & IFF_NOARP != 0,
            has_master,
        }
    }
}

/// True when `name` looks like a container/virtual interface.
pub fn is_virtual_name(name: &str) -> bool {
    name == "lo" || EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Flag-based checks every announced-on interface must pass (down interfaces are reported as
/// [`Ineligible::Down`]).
pub fn capable(i: &Iface) -> Result<(), Ineligible> {
    if i.loopback {
        Err(Ineligible::Loopback)
    } else if i.mac.is_none() {
        Err(Ineligible::NoMac)
    } else if !i.broadcast {
        Err(Ineligible::NoBroadcast)
    } else if i.noarp {
        Err(Ineligible::NoArp)
    } else if i.has_master {
        Err(Ineligible::Member)
    } else if !i.up {
        Err(Ineligible::Down)
    } else {
        Ok(())
    }
}

/// Anchors a policy regex so that it must match a whole interface name.
pub fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// Whether `i` is selected by `regexes` (see the module docs for the policy).
pub fn eligibility(i: &Iface, regexes: &[Regex]) -> Result<(), Ineligible> {
    capable(i)?;
    if regexes.is_empty() {
        if is_virtual_name(&i.name) {
            return Err(Ineligible::VirtualName);
        }
        return Ok(());
    }
    if regexes.iter().any(|r| whole_match(r, &i.name)) {
        Ok(())
    } else {
        Err(Ineligible::NotSelected)
    }
}

/// True when `re` matches all of `name` (whether or not `re` itself is anchored).
pub fn whole_match(re: &Regex, name: &str) -> bool {
    // Cheap path for already-anchored regexes; otherwise anchor a copy (a valid regex stays
    // valid inside a non-capturing group).
    match anchored(re.as_str()) {
        Ok(a) => a.is_match(name),
        Err(_) => false,
    }
}

/// The interfaces of `all` selected by `regexes`, in the given order.
pub fn select(all: &[Iface], regexes: &[Regex]) -> Vec<Iface> {
    let anchored: Vec<Regex> = regexes
        .iter()
        .filter_map(|r| anchored(r.as_str()).ok())
        .collect();
    all.iter()
        .filter(|i| {
            capable(i).is_ok()
                && if anchored.is_empty() {
                    !is_virtual_name(&i.name)
                } else {
                    anchored.iter().any(|r| r.is_match(&i.name))
                }
        })
        .cloned()
        .collect()
}

/// Every interface of the current network namespace.
pub fn interfaces() -> Vec<Iface> {
    pnet_datalink::interfaces()
        .into_iter()
        .map(|n| {
            let has_master = Path::new("/sys/class/net")
                .join(&n.name)
                .join("master")
                .exists();
            Iface::from_flags(&n.name, n.index, n.mac, n.flags, has_master)
        })
        .collect()
}

/// The interfaces of the current namespace selected by `regexes` (none = every eligible one).
pub fn eligible_interfaces(regexes: &[Regex]) -> Vec<Iface> {
    select(&interfaces(), regexes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str) -> Iface {
        Iface {
            name: name.into(),
            index: 2,
            mac: Some(MacAddr(2, 0, 0, 0, 0, 1)),
            up: true,
            broadcast: true,
            loopback: false,
            noarp: false,
            has_master: false,
        }
    }

    #[test]
    fn flags_decode() {
        let i = Iface::from_flags("eth0", 3, Some(MacAddr(2, 0, 0, 0, 0, 1)), 0x1043, false);
        assert!(i.up && i.broadcast && !i.loopback && !i.noarp);
        let lo = Iface::from_flags("lo", 1, Some(MacAddr(0, 0, 0, 0, 0, 0)), 0x49, false);
        assert!(lo.loopback && lo.mac.is_none());
        let down = Iface::from_flags("eth1", 4, Some(MacAddr(2, 0, 0, 0, 0, 2)), 0x1003, false);
        assert!(!down.up, "up but not running (no carrier) is down");
    }

    #[test]
    fn default_policy_excludes_virtual_and_incapable() {
        let mut all = vec![
            iface("eth0"),
            iface("lo"),
            iface("veth1a2b"),
            iface("cali123"),
            iface("lxc_health"),
            iface("cilium_host"),
            iface("docker0"),
            iface("kube-ipvs0"),
            iface("flannel.1"),
            iface("cni0"),
            iface("vxlan.calico"),
            iface("tunl0"),
            iface("enp3s0"),
            iface("bond0"),
            iface("br0"),
        ];
        let mut member = iface("enp4s0");
        member.has_master = true;
        let mut noarp = iface("wg0");
        noarp.noarp = true;
        let mut down = iface("eth1");
        down.up = false;
        let mut ptp = iface("ppp0");
        ptp.broadcast = false;
        all.extend([member, noarp, down, ptp]);
        let names: Vec<String> = select(&all, &[]).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["eth0", "enp3s0", "bond0", "br0"]);
    }

    #[test]
    fn regexes_are_anchored_and_override_name_exclusion() {
        let all = vec![
            iface("eth0"),
            iface("eth10"),
            iface("xeth0"),
            iface("veth0"),
        ];
        let re = vec![Regex::new("eth[0-9]").unwrap()];
        let names: Vec<String> = select(&all, &re).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["eth0"]);
        let re = vec![
            Regex::new("eth[0-9]+").unwrap(),
            Regex::new("veth.*").unwrap(),
        ];
        let names: Vec<String> = select(&all, &re).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["eth0", "eth10", "veth0"]);
        assert_eq!(
            eligibility(&iface("xeth0"), &re),
            Err(Ineligible::NotSelected)
        );
        // Alternation is anchored as a whole, not just its first branch.
        let re = [Regex::new("eth0|bond.*").unwrap()];
        assert!(whole_match(&re[0], "bond1"));
        assert!(!whole_match(&re[0], "xeth0"));
        assert!(!whole_match(&re[0], "eth00"));
    }

    #[test]
    fn eligibility_reasons() {
        let mut i = iface("eth0");
        assert_eq!(eligibility(&i, &[]), Ok(()));
        i.has_master = true;
        assert_eq!(eligibility(&i, &[]), Err(Ineligible::Member));
        assert_eq!(
            eligibility(&iface("veth0"), &[]),
            Err(Ineligible::VirtualName)
        );
        let mut lo = iface("lo");
        lo.loopback = true;
        assert_eq!(eligibility(&lo, &[]), Err(Ineligible::Loopback));
    }
}
