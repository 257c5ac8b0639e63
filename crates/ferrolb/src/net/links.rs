//! Interface changes from the kernel, not polling: one rtnetlink socket subscribed to the link
//! and address multicast groups (`RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`), read
//! by one thread that reports each change ([`LinkChange`]) to a callback.
//!
//! The announcer owns the only watcher of a process and reports changes on to the agent
//! ([`crate::net::Announcer::link_changes`]). A change is a *hint* to re-read the interfaces, not
//! a state to apply: every consumer re-reads the whole interface list when told, so a lost or
//! reordered message cannot leave a wrong state behind. When the kernel drops messages because
//! the socket's buffer overflowed (`ENOBUFS`), the watcher reports [`LinkChange::Resync`].
//!
//! Decoding uses `netlink-packet-route`; the socket is `netlink-sys`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::{debug, warn};

/// One change the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// An interface appeared, changed (flags, carrier, name, address) or was removed.
    Link {
        index: u32,
        name: Option<String>,
        /// Administratively up and with carrier (`IFF_UP` and `IFF_RUNNING`), as
        /// [`crate::net::Iface`] counts "up".
        up: bool,
        removed: bool,
    },
    /// An IP address was added to or removed from an interface.
    Addr { index: u32, removed: bool },
    /// Messages were lost (socket buffer overflow) or could not be decoded: re-read everything.
    Resync,
}

/// How often the reader thread looks at its stop flag while no message arrives.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// A running watcher; stops its thread when dropped.
pub struct LinkWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Opens the socket in the current network namespace (the caller's thread's) and starts the
    /// reader thread. Errors only when the socket cannot be opened or bound.
    pub fn start(notify: impl Fn(LinkChange) + Send + 'static) -> io::Result<LinkWatch> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        let groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        sock.bind(&SocketAddr::new(0, groups))?;
        socket2::SockRef::from(&sock).set_read_timeout(Some(STOP_CHECK))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferrolb-links".into())
            .spawn(move || read_loop(&sock, &flag, &notify))?;
        Ok(LinkWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(sock: &Socket, stop: &AtomicBool, notify: &dyn Fn(LinkChange)) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        let mut slice = &mut buf[..];
        match sock.recv(&mut slice, 0) {
            Ok(n) => {
                failing = false;
                for c in parse(&buf[..n]) {
                    debug!(change = ?c, "interface change");
                    notify(c);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                warn!("interface change messages were lost (netlink buffer overflow): re-reading all interfaces");
                notify(LinkChange::Resync);
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "reading interface changes failed; retrying");
                    failing = true;
                }
                notify(LinkChange::Resync);
                std::thread::sleep(STOP_CHECK);
            }
        }
    }
}

/// The changes in one datagram of (possibly several) rtnetlink messages. Messages of other
/// types are skipped; a message that cannot be decoded gives [`LinkChange::Resync`].
pub fn parse(mut buf: &[u8]) -> Vec<LinkChange> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            out.push(LinkChange::Resync);
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            Ok(m) => {
                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                    out.extend(change_of(inner));
                }
            }
            Err(_) => out.push(LinkChange::Resync),
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    out
}

fn change_of(m: RouteNetlinkMessage) -> Option<LinkChange> {
    let link = |l: LinkMessage, removed: bool| LinkChange::Link {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up) && l.header.flags.contains(LinkFlags::Running),
        name: l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        }),
        removed,
    };
    match m {
        RouteNetlinkMessage::NewLink(l) => Some(link(l, false)),
        RouteNetlinkMessage::DelLink(l) => Some(link(l, true)),
        RouteNetlinkMessage::NewAddress(a) => Some(LinkChange::Addr {
            index: a.header.index,
            removed: false,
        }),
        RouteNetlinkMessage::DelAddress(a) => Some(LinkChange::Addr {
            index: a.header.index,
            removed: true,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkSerializable};
    use netlink_packet_route::address::AddressMessage;

    fn bytes<I: NetlinkSerializable + std::fmt::Debug + Clone + Eq>(inner: I) -> Vec<u8> {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(inner),
        );
        m.finalize();
        let mut b = vec![0u8; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = flags;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    #[test]
    fn link_messages_say_up_only_with_carrier() {
        let mut b = bytes(RouteNetlinkMessage::NewLink(link(
            7,
            "eth0",
            LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp,
        )));
        // Admin-up without carrier, in the same datagram.
        b.extend(bytes(RouteNetlinkMessage::NewLink(link(
            7,
            "eth0",
            LinkFlags::Up,
        ))));
        b.extend(bytes(RouteNetlinkMessage::DelLink(link(
            8,
            "eth1",
            LinkFlags::empty(),
        ))));
        assert_eq!(
            parse(&b),
            vec![
                LinkChange::Link {
                    index: 7,
                    name: Some("eth0".into()),
                    up: true,
                    removed: false
                },
                LinkChange::Link {
                    index: 7,
                    name: Some("eth0".into()),
                    up: false,
                    removed: false
                },
                LinkChange::Link {
                    index: 8,
                    name: Some("eth1".into()),
                    up: false,
                    removed: true
                },
            ]
        );
    }

    #[test]
    fn address_messages_name_the_interface() {
        let mut a = AddressMessage::default();
        a.header.index = 3;
        let mut b = bytes(RouteNetlinkMessage::NewAddress(a.clone()));
        b.extend(bytes(RouteNetlinkMessage::DelAddress(a)));
        assert_eq!(
            parse(&b),
            vec![
                LinkChange::Addr {
                    index: 3,
                    removed: false
                },
                LinkChange::Addr {
                    index: 3,
                    removed: true
                },
            ]
        );
    }

    #[test]
    fn garbage_asks_for_a_resync_and_never_panics() {
        assert_eq!(parse(&[0xff; 20]), vec![LinkChange::Resync]);
        assert_eq!(parse(&[1, 0, 0, 0]), vec![]);
        let mut truncated = bytes(RouteNetlinkMessage::NewLink(link(1, "x", LinkFlags::Up)));
        truncated.truncate(truncated.len() - 3);
        assert_eq!(parse(&truncated), vec![LinkChange::Resync]);
    }
}
