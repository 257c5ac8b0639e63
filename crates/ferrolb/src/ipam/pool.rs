//! Pool definitions: [`PoolDef`] is the allocator's validated view of a `LoadBalancerIPPool`.
//!
//! Invalid blocks (bad CIDR, host bits set, start > stop, mixed families, absurdly large blocks,
//! duplicates or overlaps inside the pool, cidr together with start/stop) are reported as
//! [`BlockError`]s naming the field (`spec.blocks[2].cidr`); **the valid rest of the pool keeps
//! working** (existing allocations in good blocks are not disturbed by a typo in a new block), and
//! the pool carries an `InvalidBlocks` condition until the spec is fixed. An invalid
//! `serviceSelector` makes the pool select nothing (condition `InvalidSelector`).

use std::fmt;

use k8s_openapi::jiff::Timestamp;

use super::range::{host_mask, parse_cidr, Addr, Family, Range};
use super::selector::{Selector, SelectorError};
use crate::api::{IpBlock, IpMode, LoadBalancerIPPool, YesNo};

/// Largest accepted IPv4 block: a /8 (anything larger is certainly a mistake).
pub const MIN_PREFIX_V4: u32 = 8;
/// Largest accepted IPv6 block: a /32 (2^96 addresses).
pub const MIN_PREFIX_V6: u32 = 32;

/// A problem with one block; `field` is the path, e.g. `spec.blocks[2].cidr`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockError {
    /// Index in `spec.blocks`.
    pub index: usize,
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One valid block of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Index in `spec.blocks`.
    pub index: usize,
    /// Every address of the block.
    pub range: Range,
    /// The addresses that may be handed out: `range` minus the reserved first/last address of
    /// a CIDR block unless `allowFirstLastIPs: Yes`. `None` when nothing is usable.
    pub usable: Option<Range>,
}

/// The allocator's view of a pool.
#[derive(Debug, Clone)]
pub struct PoolDef {
    /// Pool name (cluster-scoped).
    pub name: String,
    /// `metadata.creationTimestamp`; unset sorts as the oldest, ties broken by name. Decides which
    /// of two overlapping pools is the newer (conflicting) one.
    pub created: Option<Timestamp>,
    /// `metadata.generation`, echoed into `status.observedGeneration`.
    pub generation: Option<i64>,
    /// Valid blocks.
    pub blocks: Vec<Block>,
    /// Blocks that failed validation.
    pub block_errors: Vec<BlockError>,
    /// Compiled `spec.serviceSelector` (unset = everything), or why it is invalid.
    pub selector: Result<Selector, SelectorError>,
    /// `spec.disabled`.
    pub disabled: bool,
    /// `spec.allowFirstLastIPs == Yes`.
    pub allow_first_last: bool,
    /// `spec.priority` (see [`PoolDef::order_key`]).
    pub priority: Option<i32>,
    /// `spec.namespaces`.
    pub namespaces: Vec<String>,
    /// Compiled `spec.namespaceSelector` (`None` = unset), or why it is invalid (the pool then
    /// selects nothing, condition `InvalidSelector`).
    pub namespace_selector: Result<Option<Selector>, SelectorError>,
    /// `spec.autoAssign` (default true).
    pub auto_assign: bool,
    /// `spec.ipMode` (default `VIP`).
    pub ip_mode: IpMode,
}

impl PoolDef {
    /// A pool from raw parts (tests, benches); blocks are validated like the CRD's.
    pub fn new(name: &str, blocks: &[IpBlock]) -> Self {
        let (blocks, block_errors) = parse_blocks(blocks, false);
        PoolDef {
            name: name.to_string(),
            created: None,
            generation: None,
            blocks,
            block_errors,
            selector: Ok(Selector::everything()),
            disabled: false,
            allow_first_last: false,
            priority: None,
            namespaces: Vec::new(),
            namespace_selector: Ok(None),
            auto_assign: true,
            ip_mode: IpMode::Vip,
        }
    }

    /// Converts a `LoadBalancerIPPool`; the returned errors are also kept in `block_errors`.
    pub fn from_crd(pool: &LoadBalancerIPPool) -> (PoolDef, Vec<BlockError>) {
        let allow = pool.spec.allow_first_last_ips == YesNo::Yes;
        let (blocks, errors) = parse_blocks(&pool.spec.blocks, allow);
        let def = PoolDef {
            name: pool.metadata.name.clone().unwrap_or_default(),
            created: pool.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: pool.metadata.generation,
            blocks,
            block_errors: errors.clone(),
            selector: Selector::compile_opt(pool.spec.service_selector.as_ref()),
            disabled: pool.spec.disabled,
            allow_first_last: allow,
            priority: pool.spec.priority,
            namespaces: pool.spec.namespaces.clone(),
            namespace_selector: pool
                .spec
                .namespace_selector
                .as_ref()
                .map(Selector::compile)
                .transpose(),
            auto_assign: pool.spec.auto_assigns(),
            ip_mode: pool.spec.ip_mode.unwrap_or_default(),
        };
        (def, errors)
    }

    /// Number of usable addresses (saturating).
    pub fn total(&self) -> u128 {
        self.blocks
            .iter()
            .filter_map(|b| b.usable.map(|u| u.len()))
            .fold(0u128, |a, b| a.saturating_add(b))
    }

    /// Whether the pool has a usable block of `family`.
    pub fn has_family(&self, family: Family) -> bool {
        self.blocks
            .iter()
            .any(|b| b.usable.is_some_and(|u| u.family == family))
    }

    /// The block whose usable range contains `a`.
    pub fn usable_block(&self, a: Addr) -> Option<&Block> {
        self.blocks
            .iter()
            .find(|b| b.usable.is_some_and(|u| u.contains(a)))
    }

    /// The block whose whole range (reserved addresses included) contains `a`.
    pub fn block_containing(&self, a: Addr) -> Option<&Block> {
        self.blocks.iter().find(|b| b.range.contains(a))
    }

    /// The order in which pools are tried for a new allocation (THE rule, used by the controller
    /// and `ferrolb plan` through the allocator): pools with a `priority` first, lower first, then
    /// pools without one; ties by name.
    pub fn order_key(&self) -> (bool, i32, &str) {
        (
            self.priority.is_none(),
            self.priority.unwrap_or(0),
            &self.name,
        )
    }

    /// Whether the pool's namespace rule (`spec.namespaces`, `spec.namespaceSelector`) allows
    /// namespace `ns`, whose labels `ns_label` answers. Both unset allow every namespace; an
    /// invalid selector allows none.
    pub fn allows_namespace<'a>(
        &self,
        ns: &str,
        ns_label: impl Fn(&str) -> Option<&'a str>,
    ) -> bool {
        match &self.namespace_selector {
            Err(_) => false,
            Ok(None) if self.namespaces.is_empty() => true,
            Ok(sel) => {
                self.namespaces.iter().any(|n| n == ns)
                    || sel.as_ref().is_some_and(|s| s.matches_with(ns_label))
            }
        }
    }

    /// Age order key: older first.
    pub(crate) fn age_key(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_some(), self.created, &self.name)
    }
}

/// The pool an address belongs to when only the pools' blocks decide: of the pools whose usable
/// blocks contain `a`, the oldest ([`PoolDef::created`], then name). Two pools containing one
/// address overlap and the younger one is in `Conflict`, so when pools do not overlap this is
/// the pool the controller handed the address out from. THE rule for: the allocator's
/// attribution of an address no pool selecting its Service covers, and the agent's
/// `L2AnnouncementPolicy` `spec.pools` / `spec.poolSelector` (the agent knows pools, not the
/// controller's bookkeeping).
pub fn containing_pool<'p>(
    pools: impl IntoIterator<Item = &'p PoolDef>,
    a: Addr,
) -> Option<&'p PoolDef> {
    pools
        .into_iter()
        .filter(|p| p.usable_block(a).is_some())
        .min_by(|x, y| x.age_key().cmp(&y.age_key()))
}

/// Validates `spec.blocks`.
pub fn parse_blocks(blocks: &[IpBlock], allow_first_last: bool) -> (Vec<Block>, Vec<BlockError>) {
    let mut ok: Vec<Block> = Vec::new();
    let mut errs = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        match parse_block(i, b, allow_first_last) {
            Ok(blk) => {
                if let Some(prev) = ok.iter().find(|p| p.range.overlaps(&blk.range)) {
                    let what = if prev.range == blk.range {
                        "duplicates"
                    } else {
                        "overlaps"
                    };
                    errs.push(BlockError {
                        index: i,
                        field: format!("spec.blocks[{i}]"),
                        message: format!(
                            "{} {what} spec.blocks[{}] ({})",
                            blk.range.display(),
                            prev.index,
                            prev.range.display()
                        ),
                    });
                } else {
                    ok.push(blk);
                }
            }
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

fn parse_block(i: usize, b: &IpBlock, allow_first_last: bool) -> Result<Block, BlockError> {
    let err = |f: &str, m: String| BlockError {
        index: i,
        field: if f.is_empty() {
            format!("spec.blocks[{i}]")
        } else {
            format!("spec.blocks[{i}].{f}")
        },
        message: m,
    };
    match (nonempty(&b.cidr), nonempty(&b.start), nonempty(&b.stop)) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err(err("", "cidr and start/stop are mutually exclusive".into()))
        }
        (None, None, None) => Err(err("", "needs either cidr or start (and stop)".into())),
        (None, None, Some(_)) => Err(err("start", "stop without start".into())),
        (Some(c), None, None) => {
            let (family, base, len) = parse_cidr(c).map_err(|m| err("cidr", m))?;
            let min = match family {
                Family::V4 => MIN_PREFIX_V4,
                Family::V6 => MIN_PREFIX_V6,
            };
            if len < min {
                return Err(err(
                    "cidr",
                    format!("{c:?} is too large (prefix shorter than /{min})"),
                ));
            }
            let range = Range {
                family,
                first: base,
                last: base | host_mask(family, len),
            };
            // /31, /32, /127 and /128 never reserve; allowFirstLastIPs lifts the reservation.
            let reserve = !allow_first_last && family.bits() - len >= 2;
            let usable = if reserve {
                Some(Range {
                    family,
                    first: range.first + 1,
                    last: range.last - 1,
                })
            } else {
                Some(range)
            };
            Ok(Block {
                index: i,
                range,
                usable,
            })
        }
        (None, Some(s), stop) => {
            let a = parse_ip(s).map_err(|m| err("start", m))?;
            let z = match stop {
                Some(t) => parse_ip(t).map_err(|m| err("stop", m))?,
                None => a,
            };
            if a.family != z.family {
                return Err(err(
                    "stop",
                    format!("{z} is {} but start {a} is {}", z.family, a.family),
                ));
            }
            if z.value < a.value {
                return Err(err("stop", format!("{z} is before start {a}")));
            }
            let min = match a.family {
                Family::V4 => MIN_PREFIX_V4,
                Family::V6 => MIN_PREFIX_V6,
            };
            if z.value - a.value > host_mask(a.family, min) {
                return Err(err(
                    "stop",
                    format!("range {a}-{z} is too large (more than a /{min})"),
                ));
            }
            let range = Range {
                family: a.family,
                first: a.value,
                last: z.value,
            };
            Ok(Block {
                index: i,
                range,
                usable: Some(range),
            })
        }
    }
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_ip(s: &str) -> Result<Addr, String> {
    s.parse::<std::net::IpAddr>()
        .map(Addr::from_ip)
        .map_err(|_| format!("{s:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cidr(c: &str) -> IpBlock {
        IpBlock {
            cidr: Some(c.into()),
            ..Default::default()
        }
    }
    fn range(a: &str, z: Option<&str>) -> IpBlock {
        IpBlock {
            start: Some(a.into()),
            stop: z.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn cidr_blocks_reserve_first_and_last_unless_small_or_allowed() {
        let (b, e) = parse_blocks(
            &[
                cidr("198.51.100.0/24"),
                cidr("203.0.113.8/31"),
                cidr("2001:db8:100::/127"),
                cidr("2001:db8:100::10/128"),
            ],
            false,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(b[0].usable.unwrap().len(), 254);
        assert_eq!(b[1].usable.unwrap().len(), 2);
        assert_eq!(b[2].usable.unwrap().len(), 2);
        assert_eq!(b[3].usable.unwrap().len(), 1);
        let (b, _) = parse_blocks(&[cidr("198.51.100.0/24")], true);
        assert_eq!(b[0].usable.unwrap().len(), 256);
    }

    #[test]
    fn ranges_never_reserve() {
        let (b, e) = parse_blocks(
            &[
                range("198.51.100.0", Some("198.51.100.255")),
                range("198.51.100.77", None),
            ],
            false,
        );
        assert_eq!(e.len(), 1, "the single address overlaps the first range");
        assert_eq!(b[0].usable.unwrap().len(), 256);
        let (b, e) = parse_blocks(&[range("203.0.113.7", None)], false);
        assert!(e.is_empty());
        assert_eq!(b[0].usable.unwrap().len(), 1);
    }

    #[test]
    fn invalid_blocks_name_the_field() {
        let (b, e) = parse_blocks(
            &[
                cidr("198.51.100.0/24"),
                cidr("198.51.100.300/24"),
                cidr("198.51.100.0/24"),
                range("198.51.100.9", Some("198.51.100.1")),
                range("203.0.113.1", Some("2001:db8::1")),
                cidr("2001:db8::/16"),
                IpBlock {
                    cidr: Some("203.0.113.0/24".into()),
                    start: Some("203.0.113.1".into()),
                    stop: None,
                },
                IpBlock::default(),
                cidr("203.0.113.0/24"),
            ],
            false,
        );
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.blocks[1].cidr",
                "spec.blocks[2]",
                "spec.blocks[3].stop",
                "spec.blocks[4].stop",
                "spec.blocks[5].cidr",
                "spec.blocks[6]",
                "spec.blocks[7]",
            ]
        );
        assert!(e[1].message.contains("duplicates spec.blocks[0]"));
        assert_eq!(b.len(), 2, "the valid blocks still work");
        assert_eq!(b[1].index, 8);
    }
}
