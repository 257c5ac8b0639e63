//! Address arithmetic: IPv4 and IPv6 addresses as `u128` with a family tag, pool blocks as inclusive
//! ranges, and [`UsedSet`], a set of used addresses kept as merged intervals so that "lowest free
//! address in a block" is a logarithmic search, never a scan (a /64 is never iterated).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Kubernetes spelling (`IPv4` / `IPv6`), as in `spec.ipFamilies`.
    pub fn as_k8s(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn from_k8s(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// Number of bits of an address.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Largest address value.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// An address as (family, value). Orders IPv4 before IPv6, then numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    /// Family.
    pub family: Family,
    /// Numeric value (IPv4 in the low 32 bits).
    pub value: u128,
}

impl Addr {
    /// Converts from std.
    pub fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(a) => Addr {
                family: Family::V4,
                value: u32::from(a) as u128,
            },
            IpAddr::V6(a) => Addr {
                family: Family::V6,
                value: u128::from(a),
            },
        }
    }

    /// Converts to std. IPv4 values above `u32::MAX` cannot be built by this module.
    pub fn to_ip(self) -> IpAddr {
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from((self.value & u32::MAX as u128) as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.value)),
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        Addr::from_ip(ip)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_ip().fmt(f)
    }
}

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// Family of both ends.
    pub family: Family,
    /// First address (inclusive).
    pub first: u128,
    /// Last address (inclusive), `>= first`.
    pub last: u128,
}

impl Range {
    /// Number of addresses, saturating at `u128::MAX` (only the whole IPv6 space overflows).
    pub fn len(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    /// Never empty (`last >= first`); present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `a` lies in the range.
    pub fn contains(&self, a: Addr) -> bool {
        a.family == self.family && self.first <= a.value && a.value <= self.last
    }

    /// Whether two ranges share an address.
    pub fn overlaps(&self, o: &Range) -> bool {
        self.family == o.family && self.first <= o.last && o.first <= self.last
    }

    /// Human form: `a-b`, or `a` for one address.
    pub fn display(&self) -> String {
        let a = Addr {
            family: self.family,
            value: self.first,
        };
        if self.first == self.last {
            a.to_string()
        } else {
            let b = Addr {
                family: self.family,
                value: self.last,
            };
            format!("{a}-{b}")
        }
    }
}

/// Parses a CIDR strictly: address/prefix, prefix within the family, no host bits set.
pub fn parse_cidr(s: &str) -> Result<(Family, u128, u32), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (expected ADDRESS/PREFIX)"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR: {ip:?} is not an IP address"))?;
    let a = Addr::from_ip(ip);
    let bits = a.family.bits();
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= bits)
        .ok_or_else(|| format!("{s:?} is not a CIDR: prefix length must be 0..={bits}"))?;
    let host = host_mask(a.family, len);
    if a.value & host != 0 {
        let net = Addr {
            family: a.family,
            value: a.value & !host,
        };
        return Err(format!(
            "{s:?} has host bits set (did you mean \"{net}/{len}\"?)"
        ));
    }
    Ok((a.family, a.value, len))
}

/// Mask of the host part of a `/len` in `family`.
pub fn host_mask(family: Family, len: u32) -> u128 {
    let host_bits = family.bits() - len.min(family.bits());
    if host_bits == 0 {
        0
    } else if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// A set of used addresses stored as disjoint, non-adjacent inclusive intervals per family.
///
/// `first_free(range)` finds the lowest address of `range` not in the set in O(log n).
#[derive(Clone, Debug, Default)]
pub struct UsedSet {
    /// (family, first) → last, intervals merged so that no two touch.
    map: BTreeMap<(Family, u128), u128>,
    count: u128,
}

impl UsedSet {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of addresses in the set.
    pub fn len(&self) -> u128 {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The interval containing `a`, if any.
    fn containing(&self, a: Addr) -> Option<(u128, u128)> {
        let (&(f, first), &last) = self.map.range(..=(a.family, a.value)).next_back()?;
        (f == a.family && a.value <= last).then_some((first, last))
    }

    /// Whether `a` is in the set.
    pub fn contains(&self, a: Addr) -> bool {
        self.containing(a).is_some()
    }

    /// Adds `a`; returns false when it was already present.
    pub fn insert(&mut self, a: Addr) -> bool {
        if self.contains(a) {
            return false;
        }
        let f = a.family;
        let v = a.value;
        // Interval ending right before v?
        let left = v.checked_sub(1).and_then(|p| {
            self.containing(Addr {
                family: f,
                value: p,
            })
        });
        // Interval starting right after v?
        let right = v
            .checked_add(1)
            .filter(|n| *n <= f.max())
            .and_then(|n| self.map.get(&(f, n)).map(|&last| (n, last)));
        match (left, right) {
            (Some((lf, _)), Some((rf, rl))) => {
                self.map.remove(&(f, rf));
                self.map.insert((f, lf), rl);
            }
            (Some((lf, _)), None) => {
                self.map.insert((f, lf), v);
            }
            (None, Some((rf, rl))) => {
                self.map.remove(&(f, rf));
                self.map.insert((f, v), rl);
            }
            (None, None) => {
                self.map.insert((f, v), v);
            }
        }
        self.count += 1;
        true
    }

    /// Removes `a`; returns false when it was not present.
    pub fn remove(&mut self, a: Addr) -> bool {
        let Some((first, last)) = self.containing(a) else {
            return false;
        };
        let f = a.family;
        let v = a.value;
        self.map.remove(&(f, first));
        if first < v {
            self.map.insert((f, first), v - 1);
        }
        if v < last {
            self.map.insert((f, v + 1), last);
        }
        self.count -= 1;
        true
    }

    /// Lowest address of `r` not in the set.
    pub fn first_free(&self, r: &Range) -> Option<u128> {
        let mut cand = r.first;
        loop {
            match self.containing(Addr {
                family: r.family,
                value: cand,
            }) {
                // Intervals never touch, so the address after an interval is free.
                Some((_, last)) => cand = last.checked_add(1)?,
                None => return (cand <= r.last).then_some(cand),
            }
            if cand > r.last {
                return None;
            }
        }
    }

    /// Number of used addresses inside `r` (walks the intervals overlapping `r`).
    pub fn count_in(&self, r: &Range) -> u128 {
        let mut n: u128 = 0;
        let start = match self.containing(Addr {
            family: r.family,
            value: r.first,
        }) {
            Some((first, _)) => first,
            None => r.first,
        };
        for (&(f, first), &last) in self.map.range((r.family, start)..) {
            if f != r.family || first > r.last {
                break;
            }
            let lo = first.max(r.first);
            let hi = last.min(r.last);
            if lo <= hi {
                n = n.saturating_add((hi - lo).saturating_add(1));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Addr {
        Addr::from_ip(s.parse().unwrap())
    }

    #[test]
    fn cidr_parsing_is_strict() {
        assert_eq!(
            parse_cidr("198.51.100.0/24").unwrap(),
            (Family::V4, v4("198.51.100.0").value, 24)
        );
        assert!(parse_cidr("198.51.100.5/24")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_cidr("198.51.100.0/33").is_err());
        assert!(parse_cidr("198.51.100.0").is_err());
        assert!(parse_cidr("2001:db8:100::/64").is_ok());
        assert!(parse_cidr("2001:db8:100::/129").is_err());
        assert!(parse_cidr("::/0").is_ok());
    }

    #[test]
    fn used_set_merges_and_finds_gaps() {
        let r = Range {
            family: Family::V4,
            first: 10,
            last: 20,
        };
        let mut s = UsedSet::new();
        for v in [10, 11, 13, 12] {
            assert!(s.insert(Addr {
                family: Family::V4,
                value: v
            }));
        }
        assert_eq!(s.map.len(), 1, "10..=13 merged into one interval");
        assert_eq!(s.first_free(&r), Some(14));
        assert!(s.remove(Addr {
            family: Family::V4,
            value: 11
        }));
        assert_eq!(s.first_free(&r), Some(11));
        assert_eq!(s.count_in(&r), 3);
        assert_eq!(s.len(), 3);
        // IPv6 addresses with the same value do not collide with IPv4 ones.
        assert!(!s.contains(Addr {
            family: Family::V6,
            value: 10
        }));
    }

    #[test]
    fn first_free_in_huge_range_is_immediate() {
        let (f, base, _) = parse_cidr("2001:db8:200::/64").unwrap();
        let r = Range {
            family: f,
            first: base,
            last: base + (1u128 << 64) - 1,
        };
        let mut s = UsedSet::new();
        for i in 0..1000u128 {
            s.insert(Addr {
                family: f,
                value: base + i,
            });
        }
        assert_eq!(s.first_free(&r), Some(base + 1000));
        assert_eq!(s.count_in(&r), 1000);
    }

    #[test]
    fn full_range_has_no_free_address() {
        let r = Range {
            family: Family::V6,
            first: u128::MAX - 1,
            last: u128::MAX,
        };
        let mut s = UsedSet::new();
        s.insert(Addr {
            family: Family::V6,
            value: u128::MAX,
        });
        s.insert(Addr {
            family: Family::V6,
            value: u128::MAX - 1,
        });
        assert_eq!(s.first_free(&r), None);
    }
}
