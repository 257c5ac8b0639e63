//! The solicited-node group memberships of one interface, spread over as many sockets as they
//! need. The kernel charges a socket's multicast memberships to its option memory
//! (`net.core.optmem_max`; 128 KiB by default, ≈ 2,300 IPv6 groups), so one socket cannot hold
//! the groups of thousands of held IPv6 addresses: joins beyond that fail with `ENOMEM`, and the
//! interface would not receive the multicast Neighbor Solicitations for those addresses. A new
//! socket is opened when the earlier ones are full; a group is left on the socket that joined it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv6Addr;

use socket2::{Domain, Protocol, Socket, Type};

/// More sockets than this per interface (≈ 150k groups at the default option memory) means the
/// system refuses memberships for another reason: stop opening sockets.
const MAX_SOCKETS: usize = 64;

/// Where memberships are made: a socket joins or leaves a group on an interface. The real one
/// is [`UdpSockets`]; tests count.
pub(super) trait Joiner {
    type Sock;
    fn open(&mut self) -> io::Result<Self::Sock>;
    fn join(&mut self, sock: &Self::Sock, group: &Ipv6Addr, index: u32) -> io::Result<()>;
    fn leave(&mut self, sock: &Self::Sock, group: &Ipv6Addr, index: u32) -> io::Result<()>;
}

/// IPv6 UDP sockets (`IPV6_ADD_MEMBERSHIP`: the kernel also sends the MLD reports).
#[derive(Default)]
pub(super) struct UdpSockets;

impl Joiner for UdpSockets {
    type Sock = Socket;
    fn open(&mut self) -> io::Result<Socket> {
        Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
    }
    fn join(&mut self, sock: &Socket, group: &Ipv6Addr, index: u32) -> io::Result<()> {
        sock.join_multicast_v6(group, index)
    }
    fn leave(&mut self, sock: &Socket, group: &Ipv6Addr, index: u32) -> io::Result<()> {
        sock.leave_multicast_v6(group, index)
    }
}

/// What one [`Memberships::sync`] did.
#[derive(Debug, Default)]
pub(super) struct Synced {
    /// Groups joined or left.
    pub changed: usize,
    /// Groups wanted but not joined, and the first error.
    pub failed: usize,
    pub error: Option<io::Error>,
}

/// The groups joined on one interface and the sockets holding them.
pub(super) struct Memberships<J: Joiner = UdpSockets> {
    joiner: J,
    index: u32,
    /// Each socket and whether it refused a join for lack of option memory (until it leaves one).
    socks: Vec<(J::Sock, bool)>,
    /// Group → the socket that joined it.
    joined: BTreeMap<Ipv6Addr, usize>,
    /// A fresh socket was refused its first group: the limit is not per socket, so no more
    /// sockets are opened until a group is left.
    exhausted: bool,
}

impl Memberships<UdpSockets> {
    pub(super) fn new(index: u32) -> Self {
        Memberships::with(UdpSockets, index)
    }
}

impl<J: Joiner> Memberships<J> {
    pub(super) fn with(joiner: J, index: u32) -> Self {
        Memberships {
            joiner,
            index,
            socks: Vec::new(),
            joined: BTreeMap::new(),
            exhausted: false,
        }
    }

    /// Exactly `want` is joined.
    pub(super) fn is(&self, want: &BTreeSet<Ipv6Addr>) -> bool {
        self.joined.len() == want.len() && self.joined.keys().eq(want.iter())
    }

    /// Leaves the groups not in `want` and joins those missing, opening another socket when
    /// every open one is full.
    pub(super) fn sync(&mut self, want: &BTreeSet<Ipv6Addr>) -> Synced {
        let mut out = Synced::default();
        let gone: Vec<Ipv6Addr> = self
            .joined
            .keys()
            .filter(|g| !want.contains(g))
            .copied()
            .collect();
        for g in gone {
            if let Some(i) = self.joined.remove(&g) {
                let (sock, full) = &mut self.socks[i];
                // A failed leave (the interface is gone) leaves nothing to undo.
                let _ = self.joiner.leave(sock, &g, self.index);
                *full = false;
                self.exhausted = false;
                out.changed += 1;
            }
        }
        for g in want {
            if self.joined.contains_key(g) {
                continue;
            }
            match self.join(g) {
                Ok(()) => out.changed += 1,
                Err(e) => {
                    out.failed += 1;
                    out.error.get_or_insert(e);
                }
            }
        }
        out
    }

    fn join(&mut self, g: &Ipv6Addr) -> io::Result<()> {
        let mut last = None;
        for i in 0..self.socks.len() {
            let (sock, full) = &mut self.socks[i];
            if *full {
                continue;
            }
            match self.joiner.join(sock, g, self.index) {
                Ok(()) => {
                    self.joined.insert(*g, i);
                    return Ok(());
                }
                Err(e) if out_of_room(&e) => {
                    *full = true;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if self.exhausted || self.socks.len() >= MAX_SOCKETS {
            // ENOMEM, as the kernel said (or would say).
            return Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(12)));
        }
        let sock = self.joiner.open()?;
        let i = self.socks.len();
        self.socks.push((sock, false));
        match self.joiner.join(&self.socks[i].0, g, self.index) {
            Ok(()) => {
                self.joined.insert(*g, i);
                Ok(())
            }
            Err(e) => {
                // Even a fresh socket is refused: the limit is not per socket. Keep it open
                // (marked full) and open no more rather than one per failed group.
                if out_of_room(&e) {
                    self.socks[i].1 = true;
                    self.exhausted = true;
                }
                Err(e)
            }
        }
    }

    /// Groups joined now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.joined.len()
    }
}

/// `ENOMEM`/`ENOBUFS`: the socket's option memory is used up.
fn out_of_room(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12) | Some(105))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sockets that each take `room` groups, as the kernel's option memory does.
    struct Counting {
        room: usize,
        per_sock: Vec<usize>,
        opened: usize,
    }

    impl Joiner for Counting {
        type Sock = usize;
        fn open(&mut self) -> io::Result<usize> {
            self.per_sock.push(0);
            self.opened += 1;
            Ok(self.per_sock.len() - 1)
        }
        fn join(&mut self, sock: &usize, _: &Ipv6Addr, _: u32) -> io::Result<()> {
            if self.per_sock[*sock] == self.room {
                return Err(io::Error::from_raw_os_error(12));
            }
            self.per_sock[*sock] += 1;
            Ok(())
        }
        fn leave(&mut self, sock: &usize, _: &Ipv6Addr, _: u32) -> io::Result<()> {
            self.per_sock[*sock] -= 1;
            Ok(())
        }
    }

    fn groups(n: u32) -> BTreeSet<Ipv6Addr> {
        (0..n)
            .map(|i| Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (i >> 16) as u16, i as u16))
            .collect()
    }

    #[test]
    fn more_groups_than_one_socket_takes_are_spread_over_more_sockets() {
        let mut m = Memberships::with(
            Counting {
                room: 100,
                per_sock: Vec::new(),
                opened: 0,
            },
            7,
        );
        let want = groups(250);
        let s = m.sync(&want);
        assert_eq!((s.changed, s.failed), (250, 0), "{:?}", s.error);
        assert!(m.is(&want));
        assert_eq!(m.joiner.opened, 3);
        // Leaving frees room on the socket that held the group; it is used again first.
        let fewer: BTreeSet<Ipv6Addr> = want.iter().skip(10).copied().collect();
        assert_eq!(m.sync(&fewer).changed, 10);
        let more = groups(260);
        let s = m.sync(&more);
        assert_eq!((s.changed, s.failed), (20, 0));
        assert!(m.is(&more));
        assert_eq!(m.joiner.opened, 3, "room freed on the first socket is used");
        assert_eq!(m.len(), 260);
        // Nothing to do: no calls at all.
        assert_eq!(m.sync(&more).changed, 0);
    }

    #[test]
    fn a_limit_that_is_not_per_socket_fails_without_opening_a_socket_per_group() {
        // Every socket refuses everything (the interface's limit, not the socket's).
        let mut m = Memberships::with(
            Counting {
                room: 0,
                per_sock: Vec::new(),
                opened: 0,
            },
            7,
        );
        let s = m.sync(&groups(500));
        assert_eq!(s.failed, 500);
        assert_eq!(s.error.and_then(|e| e.raw_os_error()), Some(12));
        assert_eq!(m.joiner.opened, 1);
        assert_eq!(m.len(), 0);
    }
}
