//! CRD types of `ferrolb.io/v1alpha1` and the well-known names (annotations, classes,
//! condition types) shared by the controller, the agent, `plan` and `convert`.
//!
//! `crds/*.yaml` are generated from these types (`ferrolb crds`); a test fails when they are stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every ferrolb custom resource.
pub const GROUP: &str = "ferrolb.io";
/// `spec.loadBalancerClass` that ferrolb always serves.
pub const LB_CLASS: &str = "ferrolb.io/l2-announcer";
/// Cilium's class, served only when the controller/agent is told to (`--serve-cilium-class`).
pub const CILIUM_LB_CLASS: &str = "io.cilium/l2-announcer";
/// Requested addresses, comma-separated.
pub const ANN_IPS: &str = "ferrolb.io/ips";
/// Services with the same sharing key may share an address.
pub const ANN_SHARING_KEY: &str = "ferrolb.io/sharing-key";
/// Namespaces (comma-separated, or `*`) allowed to share across namespaces.
pub const ANN_SHARING_CROSS_NS: &str = "ferrolb.io/sharing-cross-namespace";
/// Pools (comma-separated names) a Service wants its addresses from; only these are considered,
/// `autoAssign: false` pools included.
pub const ANN_POOLS: &str = "ferrolb.io/pools";
/// `"true"`: the Service gives up addresses that no pool covers any more (after a pool edit) and
/// gets new ones. Without it such addresses are kept (condition `ferrolb.io/AddressNotCovered`).
pub const ANN_REALLOCATE: &str = "ferrolb.io/reallocate";
/// MetalLB aliases, honoured with `--metallb-annotations` (current spelling first, then the
/// older `metallb.universe.tf/...`).
pub const METALLB_ANN_IPS: &[&str] = &[
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
];
pub const METALLB_ANN_SHARING_KEY: &[&str] = &[
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
];
pub const METALLB_ANN_POOL: &[&str] = &[
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
];
/// Cilium aliases honoured by the controller, and their legacy `io.cilium/...` forms.
pub const CILIUM_ANN_IPS: &[&str] = &["lbipam.cilium.io/ips", "io.cilium/lb-ipam-ips"];
pub const CILIUM_ANN_SHARING_KEY: &[&str] = &[
    "lbipam.cilium.io/sharing-key",
    "io.cilium/lb-ipam-sharing-key",
];
pub const CILIUM_ANN_SHARING_CROSS_NS: &[&str] = &[
    "lbipam.cilium.io/sharing-cross-namespace",
    "io.cilium/lb-ipam-sharing-cross-namespace",
];
/// Service condition written by the controller.
pub const COND_IPAM_SATISFIED: &str = "ferrolb.io/IPAMRequestSatisfied";
/// Service condition: `True` while the Service keeps an address that no pool selecting it
/// covers any more (the message names the pool and field); removed when covered again.
pub const COND_NOT_COVERED: &str = "ferrolb.io/AddressNotCovered";
/// Label the API server puts on every Namespace (its name); assumed for unknown namespaces.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Virtual labels every Service carries for selectors.
pub const LABEL_SERVICE_NAMESPACE: &str = "io.kubernetes.service.namespace";
pub const LABEL_SERVICE_NAME: &str = "io.kubernetes.service.name";
/// Field manager / reporting controller name.
pub const CONTROLLER_NAME: &str = "ferrolb.io/controller";
pub const AGENT_NAME: &str = "ferrolb.io/agent";

/// A cluster-scoped pool of addresses for `type: LoadBalancer` Services.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "LoadBalancerIPPool",
    plural = "loadbalancerippools",
    shortname = "lbpool",
    category = "ferrolb",
    status = "LoadBalancerIPPoolStatus",
    doc = "LoadBalancerIPPool is a cluster-scoped pool of IPs for LoadBalancer Services.",
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Conflicting","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflict\")].status"}"#,
    printcolumn = r#"{"name":"IPs Total","type":"integer","jsonPath":".status.ipsTotal"}"#,
    printcolumn = r#"{"name":"IPs Used","type":"integer","jsonPath":".status.ipsUsed"}"#,
    printcolumn = r#"{"name":"IPs Available","type":"integer","jsonPath":".status.ipsAvailable"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority","priority":1}"#,
    printcolumn = r#"{"name":"Not Covered","type":"integer","jsonPath":".status.ipsNotCovered","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIPPoolSpec {
    /// Address blocks: each either `cidr`, or `start` with an optional `stop` (omitted = one address).
    #[schemars(length(min = 1))]
    pub blocks: Vec<IpBlock>,
    /// Services this pool serves. Unset selects every Service. The virtual labels
    /// `io.kubernetes.service.namespace` and `io.kubernetes.service.name` match too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// No new allocations from this pool; existing ones are kept.
    #[serde(default)]
    pub disabled: bool,
    /// Allow the first (network) and last (broadcast) address of CIDR blocks. Blocks of /31, /32,
    /// /127 and /128 and start/stop ranges never reserve them.
    #[serde(default, rename = "allowFirstLastIPs")]
    pub allow_first_last_ips: YesNo,
    /// Order of choice for new allocations: pools with a priority come first, lower first;
    /// pools without one come after them; ties by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Namespaces whose Services may get addresses from this pool. With `namespaceSelector`, a
    /// namespace listed here or matching the selector is allowed; both unset = every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Label selector over Namespaces whose Services may get addresses from this pool (see
    /// `namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Give addresses to Services that ask for nothing in particular (default true). `false`:
    /// only Services that name this pool (`ferrolb.io/pools`) or request one of its addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
    /// `status.loadBalancer.ingress[].ipMode` written for this pool's addresses: `VIP` (default:
    /// traffic to the address is delivered to the node as is) or `Proxy` (a proxy in front of the
    /// cluster terminates it; kube-proxy then does not short-cut in-cluster traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<IpMode>,
}

impl LoadBalancerIPPoolSpec {
    /// `spec.autoAssign` with its default.
    pub fn auto_assigns(&self) -> bool {
        self.auto_assign.unwrap_or(true)
    }
}

/// `status.loadBalancer.ingress[].ipMode` (KEP-1860).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IpMode {
    #[default]
    #[serde(rename = "VIP")]
    Vip,
    Proxy,
}

impl IpMode {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IpMode::Vip => "VIP",
            IpMode::Proxy => "Proxy",
        }
    }
}

/// Cilium-compatible `Yes`/`No` switch.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum YesNo {
    Yes,
    #[default]
    No,
}

/// One block of a pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub struct IpBlock {
    /// A CIDR (`198.51.100.0/24`, `2001:db8:100::/112`); host bits must be zero. Exclusive with
    /// `start`/`stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// First address of a range (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last address of the range, same family as `start`; omitted = `start` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// Pool status written by the controller. Counts saturate at 2^63-1 (a /48 of IPv6 has more).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIPPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ips_total: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ips_used: i64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ips_available: i64,
    /// Addresses Services keep although this pool no longer covers them (shrunk, selector or
    /// namespaces changed); they are not counted in `ipsUsed` when outside the pool's blocks.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ips_not_covered: i64,
    /// `Conflict` (reason `CIDROverlap`, message names the other pool), `Exhausted`,
    /// `InvalidBlocks` (message names the fields), `InvalidSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Which nodes announce which Services' addresses, on which interfaces.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "L2AnnouncementPolicy",
    plural = "l2announcementpolicies",
    shortname = "l2policy",
    category = "ferrolb",
    status = "L2AnnouncementPolicyStatus",
    doc = "L2AnnouncementPolicy selects the Services whose addresses are announced over ARP/NDP, and the nodes and interfaces that announce them.",
    printcolumn = r#"{"name":"LB IPs","type":"boolean","jsonPath":".spec.loadBalancerIPs"}"#,
    printcolumn = r#"{"name":"External IPs","type":"boolean","jsonPath":".spec.externalIPs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementPolicySpec {
    /// Services whose addresses this policy announces. Unset selects every Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Nodes that may announce. Unset selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interface name regexes (anchored, OR). Empty = every eligible interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Announce `status.loadBalancer.ingress` addresses (default true).
    #[serde(default = "default_true", rename = "loadBalancerIPs")]
    pub load_balancer_ips: bool,
    /// Announce `spec.externalIPs` (default false).
    #[serde(default, rename = "externalIPs")]
    pub external_ips: bool,
    /// Nodes preferred as announcers. A node's preference is the sum of the weights of the
    /// entries whose `nodeSelector` selects it (as Kubernetes' preferred node affinity); among
    /// the nodes this policy lets announce, those with a higher preference go first in every
    /// address's rendezvous order (ties by the normal rendezvous rank), nodes matching no entry
    /// are fallbacks. Balancing and rebalancing work within the most preferred nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_nodes: Vec<PreferredNode>,
    /// Subnet-aware candidacy (default true): a node stands for an address only on selected
    /// interfaces that carry a prefix containing it (each agent publishes its interfaces'
    /// prefixes). When no eligible node has such an interface, every eligible node stands as
    /// without this rule (announcing on interfaces without a containing prefix), and the
    /// policy's `SubnetMatch` condition says so. `false`: prefixes are not looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_aware: Option<bool>,
    /// Announce only addresses from these pools (`LoadBalancerIPPool` names). With
    /// `poolSelector`, an address of a pool named here or selected by it is announced; both
    /// unset = every address, whatever its pool. An address belongs to the oldest pool whose
    /// blocks contain it (the controller's attribution; see the README): an address no pool
    /// contains (a pool shrunk or deleted under it, an `externalIP`) is never announced by a
    /// policy that names pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Label selector over `LoadBalancerIPPool`s whose addresses this policy announces (see
    /// `pools`; an empty selector selects every pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_selector: Option<LabelSelector>,
}

impl L2AnnouncementPolicySpec {
    /// `spec.subnetAware` with its default.
    pub fn is_subnet_aware(&self) -> bool {
        self.subnet_aware.unwrap_or(true)
    }
}

/// One `spec.preferredNodes[]` entry of an `L2AnnouncementPolicy`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferredNode {
    /// Added to the preference of every node the selector selects (1–100).
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// Nodes this entry prefers (an empty selector selects every node).
    pub node_selector: LabelSelector,
}

fn default_true() -> bool {
    true
}

/// Policy status: conditions for a bad selector or interface regex.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Who announces one Service's addresses: written by the node that holds their Lease, only when
/// something changes (it took the Lease over, or the interfaces changed). One per announced
/// Service, named after it, in its namespace, owned by it (garbage-collected with it). The
/// `spec` is empty: everything is status.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "L2Announcement",
    plural = "l2announcements",
    derive = "PartialEq",
    shortname = "l2a",
    category = "ferrolb",
    namespaced,
    status = "L2AnnouncementStatus",
    doc = "L2Announcement says which node announces a Service's addresses over ARP/NDP, on which interfaces and since when; written by that node.",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".status.addressesText"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".status.interfacesText"}"#,
    printcolumn = r#"{"name":"Since","type":"date","jsonPath":".status.since"}"#,
    printcolumn = r#"{"name":"Transitions","type":"integer","jsonPath":".status.leaseTransitions"}"#,
    printcolumn = r#"{"name":"Last Failover","type":"string","jsonPath":".status.lastFailover.kind"}"#,
    printcolumn = r#"{"name":"Failover ms","type":"integer","jsonPath":".status.lastFailover.durationMilliseconds"}"#,
    printcolumn = r#"{"name":"Lease","type":"string","jsonPath":".status.lease","priority":1}"#,
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".status.lastFailover.from","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {}

/// What the announcing node wrote.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementStatus {
    /// The Service's addresses this node answers ARP/NDP for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The announcing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The interfaces it answers on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// `addresses`, comma-separated (for the printer column: a column's jsonPath on a list
    /// prints it as JSON, and `[*]` prints only its first item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses_text: Option<String>,
    /// `interfaces`, comma-separated (for the printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces_text: Option<String>,
    /// When this node took the Lease (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The address Lease (in the agents' namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// `leaseTransitions` of that Lease when this node took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub lease_transitions: Option<i32>,
    /// The takeover that made this node the holder, as this node saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<L2Failover>,
}

/// One takeover seen by the new holder.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2Failover {
    /// `Created` (no Lease existed), `Expired` (the holder stopped renewing: crash, partition),
    /// `Released` (the holder let go: shutdown, hand-over, no longer eligible).
    pub kind: String,
    /// The previous holder, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// From the previous holder's last renewal (or its release) as this node saw it, to this
    /// node's successful takeover, on this node's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub duration_milliseconds: Option<i64>,
}
