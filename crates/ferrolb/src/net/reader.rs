//! One interface's reader: a raw `AF_PACKET` socket restricted by a classic BPF filter to ARP
//! and ICMPv6 NS/NA, and the blocking thread that answers requests for held addresses and
//! reports other stations announcing them (rate-limited [`super::Conflict`]s). Owned by the
//! announcer's manager ([`super::announcer`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tracing::debug;

use super::announcer::{Conflict, Shared};
use super::arp::{self, MacAddr};
use super::metrics::Kind;
use super::ndp;

/// A reader thread and the sending half of its socket, for one interface.
pub(super) struct Reader {
    pub(super) index: u32,
    pub(super) mac: MacAddr,
    pub(super) up: bool,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) tx: Arc<Mutex<Box<dyn DataLinkSender>>>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// The solicited-node groups joined on this interface.
    pub(super) mcast: super::mcast::Memberships,
}

impl Reader {
    pub(super) fn send(&self, frame: &[u8]) -> bool {
        let Ok(mut tx) = self.tx.lock() else {
            return false;
        };
        match tx.send_to(frame, None) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                debug!(error = %e, "send failed");
                false
            }
            None => false,
        }
    }

    pub(super) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
/// Classic BPF: accept ARP, and IPv6 whose next header is ICMPv6 with type NS or NA. (An NS
/// behind IPv6 extension headers is not seen; RFC 4861 hosts do not send those, and the
/// parser would reject it anyway.) Everything else stays in the kernel.
fn packet_filter() -> [SockFilter; 10] {
    const LDH_ABS: u16 = 0x28;
    const LDB_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    [
        SockFilter::new(LDH_ABS, 0, 0, 12),
        SockFilter::new(JEQ_K, 7, 0, u32::from(arp::ETHERTYPE_ARP)),
        SockFilter::new(JEQ_K, 0, 5, u32::from(ndp::ETHERTYPE_IPV6)),
        SockFilter::new(LDB_ABS, 0, 0, 14 + 6),
        SockFilter::new(JEQ_K, 0, 3, u32::from(ndp::NEXT_HEADER_ICMPV6)),
        SockFilter::new(LDB_ABS, 0, 0, 14 + 40),
        SockFilter::new(JEQ_K, 2, 0, u32::from(ndp::TYPE_NS)),
        SockFilter::new(JEQ_K, 1, 0, u32::from(ndp::TYPE_NA)),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, 0x0004_0000),
    ]
}

/// Opens a filtered, non-promiscuous packet socket bound to `ifc`.
pub(super) fn open_channel(
    ifc: &pnet_datalink::NetworkInterface,
) -> anyhow::Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    // Protocol 0: the socket receives nothing until pnet binds it (with ETH_P_ALL) to the
    // interface, by which time the filter is in place.
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
        .context("opening a packet socket (needs CAP_NET_RAW)")?;
    sock.attach_filter(&packet_filter())
        .context("attaching the packet filter")?;
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(200)),
        write_timeout: Some(Duration::from_millis(200)),
        promiscuous: false,
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

/// The per-interface receive loop.
pub(super) struct ReadLoop {
    pub(super) name: String,
    pub(super) mac: MacAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) tx: Arc<Mutex<Box<dyn DataLinkSender>>>,
    pub(super) stop: Arc<AtomicBool>,
    /// When each (address, MAC, kind) conflict was last reported: reports are limited to one
    /// per [`CONFLICT_REPORT_EVERY`] so a flood of hostile frames cannot flood the agent or logs.
    /// The kind (answer to our probe, or announcement) is part of the key: a station's takeover
    /// announcement must not be hidden behind its answer to our probe a moment earlier (a sticky
    /// holder yields to the one, never to the other).
    pub(super) reported: HashMap<(IpAddr, MacAddr, bool), Instant>,
}

/// Minimum interval between two reports of the same conflict (address, MAC).
pub const CONFLICT_REPORT_EVERY: Duration = Duration::from_secs(1);

impl ReadLoop {
    pub(super) fn run(mut self, mut rx: Box<dyn DataLinkReceiver>) {
        let mut logged_error = false;
        while !self.stop.load(Ordering::Relaxed) {
            match rx.next() {
                Ok(frame) => self.handle(frame),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => {
                    // ENETDOWN while the interface is down; the socket works again once it is
                    // up. Back off a little so a persistent error does not spin.
                    if !logged_error {
                        debug!(iface = %self.name, error = %e, "receive error");
                        logged_error = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn handle(&mut self, frame: &[u8]) {
        if frame.len() < arp::ETH_HEADER_LEN {
            return;
        }
        match arp::be16(frame, 12) {
            arp::ETHERTYPE_ARP => self.handle_arp(frame),
            ndp::ETHERTYPE_IPV6 => self.handle_ndp(frame),
            _ => {}
        }
    }

    fn send(&self, frame: &[u8]) -> bool {
        let Ok(mut tx) = self.tx.lock() else {
            return false;
        };
        matches!(tx.send_to(frame, None), Some(Ok(())))
    }

    fn handle_arp(&mut self, frame: &[u8]) {
        let Ok(f) = arp::parse(frame) else {
            return;
        };
        let v = arp::decide(&f, self.mac, |ip| {
            self.shared.holds(&self.name, IpAddr::V4(ip))
        });
        if let Some(ip) = v.request_for {
            self.count(Kind::ArpRequests, IpAddr::V4(ip));
        }
        if let Ok(reply) = v.reply {
            if self.send(&arp::encode(&reply)) {
                self.count(Kind::Responses, IpAddr::V4(reply.sender_ip));
            }
        }
        if let Some((ip, mac)) = v.conflict {
            self.conflict(IpAddr::V4(ip), mac, v.probe_answer);
        }
    }

    fn handle_ndp(&mut self, frame: &[u8]) {
        let Ok(f) = ndp::parse(frame) else {
            return;
        };
        let v = ndp::decide(&f, self.mac, |ip| {
            self.shared.holds(&self.name, IpAddr::V6(ip))
        });
        if let Some(ip) = v.request_for {
            self.count(Kind::NdpRequests, IpAddr::V6(ip));
        }
        if let Ok(reply) = v.reply {
            if self.send(&ndp::encode(&reply)) {
                self.count(Kind::Responses, IpAddr::V6(reply.msg.target()));
            }
        }
        if let Some((ip, mac)) = v.conflict {
            self.conflict(IpAddr::V6(ip), mac, v.probe_answer);
        }
    }

    fn count(&self, kind: Kind, ip: IpAddr) {
        self.shared.metrics.inc(kind, ip, &self.name);
    }

    fn conflict(&mut self, ip: IpAddr, mac: MacAddr, probe_answer: bool) {
        if self.shared.own_macs.read().is_ok_and(|m| m.contains(&mac)) {
            return;
        }
        self.count(Kind::Conflicts, ip);
        let now = Instant::now();
        if let Some(last) = self.reported.get(&(ip, mac, probe_answer)) {
            if now.duration_since(*last) < CONFLICT_REPORT_EVERY {
                return;
            }
        }
        if self.reported.len() >= 1024 {
            self.reported
                .retain(|_, t| now.duration_since(*t) < CONFLICT_REPORT_EVERY);
            if self.reported.len() >= 4096 {
                // A flood of distinct MACs: forget rather than grow without bound.
                self.reported.clear();
            }
        }
        self.reported.insert((ip, mac, probe_answer), now);
        debug!(%ip, iface = %self.name, %mac, "another station announces an address we hold");
        let _ = self.shared.conflicts.send(Conflict {
            ip,
            iface: self.name.clone(),
            mac,
            probe_answer,
        });
    }
}
