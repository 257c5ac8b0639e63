//! The decision type shared by the ARP and NDP codecs (its own file so the fuzz target,
//! which compiles `arp.rs` and `ndp.rs` by path, can include it too).

/// What to do with a received ARP request or NDP message (`arp::Verdict`, `ndp::Verdict`):
/// `A` is the address family, `F` the frame type, `R` why no answer is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<A, F, R> {
    /// A request (ARP request / NS) for an address we hold on this interface (counted in
    /// metrics even when not answered because it is malformed).
    pub request_for: Option<A>,
    /// The reply to send, or why none is sent.
    pub reply: Result<F, R>,
    /// Another station (MAC) claims an address we hold.
    pub conflict: Option<(A, pnet_base::MacAddr)>,
    /// With a `conflict`: the frame is a probe or answers one (an ARP reply to 0.0.0.0, a
    /// solicited NA, an NS for the address from the address) rather than announcing a takeover
    /// (a gratuitous ARP, an unsolicited NA, a request from the address for another one). The
    /// station has the address, but nothing may yield to it (`agent::holdings`). Always false
    /// without a conflict.
    pub probe_answer: bool,
}
