//! A lossy, slow piece of wire between two interfaces of one namespace: the lab's packet loss
//! and delay, on every kernel.
//!
//! `tc netem` is the usual tool, but it is a kernel module that many kernels lack (Firecracker
//! guests, minimal cloud images: no `sch_netem`, no `modprobe`). A wire is two packet sockets
//! and two threads per direction in the lab process: every frame that arrives on one interface
//! (ARP, NDP, IP, whatever the kernel sent) is dropped with the configured probability or sent
//! out of the other after the configured delay (± jitter, never reordered). With no impairment
//! set it passes every frame straight through.
//!
//! [`crate::netns::Segment::wire_member`] puts one between a member's bridge port and the
//! bridge. Loss is drawn from a seeded generator per direction, so a run with the same seed and
//! the same frames drops the same ones.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// What a wire does to the frames it carries (both directions alike).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Percent of frames dropped, 0–100.
    pub loss_pct: f64,
    /// Added to every frame that is not dropped.
    pub delay: Duration,
    /// Each frame's delay is `delay` ± up to this (uniform), but never before the frame ahead.
    pub jitter: Duration,
}

/// Frame counts of a wire since it started (both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    pub forwarded: u64,
    pub dropped: u64,
    /// Frames the other interface refused (down, or larger than its MTU).
    pub send_errors: u64,
}

#[derive(Default)]
struct Shared {
    impairment: Mutex<Impairment>,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    send_errors: AtomicU64,
}

/// A running wire; dropping it stops its threads (within one read timeout).
pub struct Wire {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("impairment", &self.impairment())
            .field("stats", &self.stats())
            .finish()
    }
}

/// How long a receive waits before looking at the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Larger than any frame a veth can hand a packet socket (64 KiB GSO frames included).
const BUFFER: usize = 70_000;

impl Wire {
    /// Starts carrying frames between interfaces `a` and `b` of namespace `ns` (both must exist
    /// and be up; neither may be a bridge port). `seed` seeds the loss draws.
    pub fn start(ns: &str, a: &str, b: &str, seed: u64) -> anyhow::Result<Self> {
        let ((a_tx, a_rx), (b_tx, b_rx)) = open_in(ns, a, b)?;
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        for (dir, rx, tx) in [(0u64, a_rx, b_tx), (1, b_rx, a_tx)] {
            let (queue_tx, queue_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let s = shared.clone();
            let rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(2).wrapping_add(dir));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wire-{a}-{dir}-rx"))
                    .spawn(move || receive(rx, queue_tx, s, rng))?,
            );
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wire-{a}-{dir}-tx"))
                    .spawn(move || transmit(tx, queue_rx, s))?,
            );
        }
        Ok(Wire { shared, threads })
    }

    /// Changes what the wire does from the next frame on.
    pub fn set(&self, imp: Impairment) {
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = imp;
    }

    pub fn impairment(&self) -> Impairment {
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> WireStats {
        WireStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            send_errors: self.shared.send_errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Pair = (Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>);

/// Opens packet sockets on `a` and `b` from a thread that entered namespace `ns` (a socket stays
/// in the namespace it was created in; the lab process itself never leaves the host's).
fn open_in(ns: &str, a: &str, b: &str) -> anyhow::Result<(Pair, Pair)> {
    let path = format!("/run/netns/{ns}");
    let (a, b) = (a.to_string(), b.to_string());
    std::thread::Builder::new()
        .name("wire-open".into())
        .spawn(move || -> anyhow::Result<(Pair, Pair)> {
            let f = File::open(&path).with_context(|| format!("opening {path}"))?;
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
            .with_context(|| format!("entering {path}"))?;
            let ifaces = pnet_datalink::interfaces();
            let open = |name: &str| {
                let ifc = ifaces
                    .iter()
                    .find(|i| i.name == name)
                    .with_context(|| format!("no interface {name} in {path}"))?;
                open_channel(ifc)
            };
            Ok((open(&a)?, open(&b)?))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the wire's opening thread panicked"))?
}

/// Every frame but those the socket's own interface sends: without that, a frame sent out of
/// `b` would be read back on `b` and carried to `a` again.
fn not_outgoing() -> [SockFilter; 4] {
    const LDB_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    // The packet type from the ancillary area (SKF_AD_OFF + SKF_AD_PKTTYPE).
    const PKTTYPE: u32 = 0xffff_f000 + 4;
    const PACKET_OUTGOING: u32 = 4;
    [
        SockFilter::new(LDB_ABS, 0, 0, PKTTYPE),
        SockFilter::new(JEQ_K, 0, 1, PACKET_OUTGOING),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, BUFFER as u32),
    ]
}

fn open_channel(ifc: &pnet_datalink::NetworkInterface) -> anyhow::Result<Pair> {
    // Protocol 0: nothing arrives until pnet binds the socket to the interface, by which time
    // the filter is in place.
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
        .context("opening a packet socket (needs CAP_NET_RAW)")?;
    sock.attach_filter(&not_outgoing())
        .context("attaching the packet filter")?;
    let cfg = pnet_datalink::Config {
        read_buffer_size: BUFFER,
        write_buffer_size: BUFFER,
        read_timeout: Some(READ_TIMEOUT),
        write_timeout: Some(READ_TIMEOUT),
        promiscuous: true,
        socket_fd: Some(sock.into_raw_fd()),
        ..Default::default()
    };
    match pnet_datalink::channel(ifc, cfg)
        .with_context(|| format!("binding a packet socket to {}", ifc.name))?
    {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => anyhow::bail!("unexpected channel type on {}", ifc.name),
    }
}

/// One direction's receiving half: drop or schedule each frame.
fn receive(
    mut rx: Box<dyn DataLinkReceiver>,
    queue: mpsc::Sender<(Instant, Vec<u8>)>,
    s: Arc<Shared>,
    mut rng: ChaCha8Rng,
) {
    let mut last_due = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        let frame = match rx.next() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            // ENETDOWN while the interface is down (a cut or flapping port): try again shortly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let imp = *s.impairment.lock().unwrap_or_else(|e| e.into_inner());
        if imp.loss_pct > 0.0 && rng.random::<f64>() * 100.0 < imp.loss_pct {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut delay = imp.delay;
        if !imp.jitter.is_zero() {
            let j = imp.jitter.as_secs_f64();
            let d = (delay.as_secs_f64() + rng.random_range(-j..=j)).max(0.0);
            delay = Duration::from_secs_f64(d);
        }
        // Never ahead of the frame before it: a delayed link does not reorder.
        let due = (Instant::now() + delay).max(last_due);
        last_due = due;
        let mut frame = frame.to_vec();
        complete_checksum(&mut frame);
        if queue.send((due, frame)).is_err() {
            return;
        }
    }
}

/// Writes the whole TCP/UDP checksum into a frame read off a veth. A sender's stack leaves the
/// checksum to the device (`CHECKSUM_PARTIAL`: only the pseudo-header sum is in place), and a
/// veth carries that promise to its peer; a packet socket reads the bytes as they are and sends
/// them as a finished frame, so the receiver would find a wrong checksum and drop the segment.
/// A checksum that was complete is recomputed to the same value. IPv4 fragments and IPv6
/// extension headers are left as they are (the lab sends neither).
fn complete_checksum(frame: &mut [u8]) {
    use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
    use pnet_packet::ip::IpNextHeaderProtocols as P;
    use pnet_packet::ipv4::Ipv4Packet;
    use pnet_packet::ipv6::Ipv6Packet;
    use pnet_packet::tcp::{self, MutableTcpPacket};
    use pnet_packet::udp::{self, MutableUdpPacket};

    const ETH: usize = 14;
    let Some(eth) = EthernetPacket::new(frame) else {
        return;
    };
    let (src, dst, proto, start, end) = match eth.get_ethertype() {
        EtherTypes::Ipv4 => {
            let Some(ip) = Ipv4Packet::new(&frame[ETH..]) else {
                return;
            };
            if ip.get_fragment_offset() != 0 || ip.get_flags() & 1 != 0 {
                return;
            }
            let start = ETH + usize::from(ip.get_header_length()) * 4;
            let end = ETH + usize::from(ip.get_total_length());
            let (s, d) = (ip.get_source().into(), ip.get_destination().into());
            (s, d, ip.get_next_level_protocol(), start, end)
        }
        EtherTypes::Ipv6 => {
            let Some(ip) = Ipv6Packet::new(&frame[ETH..]) else {
                return;
            };
            let start = ETH + 40;
            let end = start + usize::from(ip.get_payload_length());
            let (s, d) = (ip.get_source().into(), ip.get_destination().into());
            (s, d, ip.get_next_header(), start, end)
        }
        _ => return,
    };
    if start > end || end > frame.len() {
        return;
    }
    let l4 = &mut frame[start..end];
    match (proto, src, dst) {
        (P::Tcp, std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            if let Some(mut t) = MutableTcpPacket::new(l4) {
                let sum = tcp::ipv4_checksum(&t.to_immutable(), &s, &d);
                t.set_checksum(sum);
            }
        }
        (P::Tcp, std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            if let Some(mut t) = MutableTcpPacket::new(l4) {
                let sum = tcp::ipv6_checksum(&t.to_immutable(), &s, &d);
                t.set_checksum(sum);
            }
        }
        // An IPv4 UDP checksum of 0 means "none": it stays none.
        (P::Udp, std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            if let Some(mut u) = MutableUdpPacket::new(l4) {
                if u.get_checksum() != 0 {
                    let sum = udp::ipv4_checksum(&u.to_immutable(), &s, &d);
                    u.set_checksum(sum);
                }
            }
        }
        (P::Udp, std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            if let Some(mut u) = MutableUdpPacket::new(l4) {
                let sum = udp::ipv6_checksum(&u.to_immutable(), &s, &d);
                u.set_checksum(sum);
            }
        }
        _ => {}
    }
}

/// One direction's sending half: each frame out when it is due.
fn transmit(
    mut tx: Box<dyn DataLinkSender>,
    queue: mpsc::Receiver<(Instant, Vec<u8>)>,
    s: Arc<Shared>,
) {
    let mut waiting: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    while !s.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while waiting.front().is_some_and(|(due, _)| *due <= now) {
            let (_, frame) = waiting.pop_front().expect("just looked");
            match tx.send_to(&frame, None) {
                Some(Ok(())) => s.forwarded.fetch_add(1, Ordering::Relaxed),
                _ => s.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        let wait = waiting
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(READ_TIMEOUT)
            .min(READ_TIMEOUT);
        match queue.recv_timeout(wait) {
            Ok(item) => waiting.push_back(item),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
    }
}
