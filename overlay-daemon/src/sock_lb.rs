//! The daemon's side of socket-level balancing: telling the hooks which container network
//! namespaces are this node's (by netns cookie) and on which networks, and closing the
//! sockets a backend that left still holds (as Cilium does with `sock_destroy`; here through
//! sock_diag's SOCK_DESTROY in each container namespace, which gives the application
//! ECONNABORTED instead of a connection that hangs until TCP gives up).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use tracing::{debug, info, warn};

use crate::maps::{BalancedSocket, MapsError, SockMaps};

/// A container namespace and the networks of its endpoints there, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub vni: u32,
}

/// Remembers each namespace's cookie (a namespace file's inode names it while it exists).
#[derive(Default)]
pub struct SocketBalancer {
    cookies: HashMap<(u64, u64), u64>,
    /// The namespaces of the last sync: where balanced sockets can be.
    netns: Vec<PathBuf>,
    /// What the last sync wrote: a pass that changed no namespace writes nothing.
    written: Option<BTreeMap<u64, Vec<u32>>>,
}

impl SocketBalancer {
    /// Makes `SOCK_NETNS` name exactly the namespaces of `sandboxes`. A namespace that cannot
    /// be opened (its container is going) is left out.
    pub fn sync(&mut self, maps: &mut SockMaps, sandboxes: &[Sandbox]) -> Result<(), MapsError> {
        let mut desired: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut live = HashMap::new();
        let mut netns = Vec::new();
        for sb in sandboxes {
            let Ok(meta) = std::fs::metadata(&sb.netns) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            let cookie = match self.cookies.get(&id) {
                Some(c) => *c,
                None => match netns_cookie(&sb.netns) {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(netns = %sb.netns.display(), "no netns cookie: {e}");
                        continue;
                    }
                },
            };
            live.insert(id, cookie);
            let vnis = desired.entry(cookie).or_default();
            if vnis.is_empty() {
                netns.push(sb.netns.clone());
            }
            if !vnis.contains(&sb.vni) {
                vnis.push(sb.vni);
            }
        }
        self.cookies = live;
        self.netns = netns;
        if self.written.as_ref() != Some(&desired) {
            maps.sync_netns(&desired)?;
            self.written = Some(desired);
        }
        Ok(())
    }

    /// Closes the sockets in this node's containers that were balanced to `sockets`' backends.
    pub fn close(&self, sockets: &[BalancedSocket]) {
        if sockets.is_empty() {
            return;
        }
        let mut closed = 0;
        for netns in &self.netns {
            match in_netns(netns, || destroy(sockets)) {
                Ok(Ok(n)) => closed += n,
                Ok(Err(e)) | Err(e) => {
                    warn!(netns = %netns.display(), "closing sockets of removed backends: {e}")
                }
            }
        }
        if closed > 0 {
            info!(closed, "closed sockets balanced to backends that left");
        }
    }
}

/// Runs `f` on a thread of its own inside the namespace at `path`.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The cookie of the network namespace at `path` (what `bpf_get_netns_cookie` returns for
/// its sockets).
pub fn netns_cookie(path: &Path) -> io::Result<u64> {
    in_netns(path, || {
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    })?
}

// sock_diag (linux/inet_diag.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    hdr: libc::nlmsghdr,
    req: DiagReq,
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, req: DiagReq) -> io::Result<()> {
    let msg = Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: kind,
            nlmsg_flags: flags,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        req,
    };
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&msg as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads netlink messages until the dump ends (or, for a request with an ACK, the answer),
/// handing each payload of type `kind` to `each`. An error message ends it with its code.
fn receive(fd: &OwnedFd, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= size_of::<libc::nlmsghdr>() {
            let hdr: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
            let len = (hdr.nlmsg_len as usize).min(rest.len());
            let body = &rest[size_of::<libc::nlmsghdr>()..len];
            match hdr.nlmsg_type as libc::c_int {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                    return match code {
                        0 => Ok(()),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                _ => each(body),
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

fn diag_socket() -> io::Result<OwnedFd> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// In the current namespace: destroys every socket whose cookie and peer are in `sockets`.
fn destroy(sockets: &[BalancedSocket]) -> io::Result<usize> {
    let fd = diag_socket()?;
    let mut closed = 0;
    // IPv6 sockets too for IPv4 backends: one that connected to an IPv4 VIP's mapped form
    // (`::ffff:a.b.c.d`) has the backend's mapped address as its peer.
    let v4 = sockets.iter().any(|s| s.backend.0.is_ipv4());
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        if family == libc::AF_INET as u8 && !v4 {
            continue;
        }
        for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            closed += destroy_of(&fd, family, proto, sockets)?;
        }
    }
    Ok(closed)
}

/// The peer of a dumped socket of `family` (an IPv4-mapped one as the IPv4 address).
fn peer(family: u8, id: &SockId) -> (IpAddr, u16) {
    let ip: IpAddr = if family == libc::AF_INET6 as u8 {
        let mut o = [0u8; 16];
        for (i, w) in id.dst.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let ip = Ipv6Addr::from(o);
        ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
    } else {
        Ipv4Addr::from(id.dst[0].to_ne_bytes()).into()
    };
    (ip, u16::from_be(id.dport))
}

fn destroy_of(
    fd: &OwnedFd,
    family: u8,
    proto: u8,
    sockets: &[BalancedSocket],
) -> io::Result<usize> {
    let mut closed = 0;
    let mut found = Vec::new();
    send(
        fd,
        SOCK_DIAG_BY_FAMILY,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        DiagReq {
            family,
            protocol: proto,
            states: u32::MAX,
            ..Default::default()
        },
    )?;
    receive(fd, |body| {
        if body.len() < size_of::<DiagMsg>() {
            return;
        }
        let msg: DiagMsg = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
        let cookie = msg.id.cookie[0] as u64 | (msg.id.cookie[1] as u64) << 32;
        let peer = peer(family, &msg.id);
        if sockets
            .iter()
            .any(|s| s.cookie == cookie && s.proto == proto && s.backend == peer)
        {
            found.push(msg.id);
        }
    })?;
    for id in found {
        let req = DiagReq {
            family,
            protocol: proto,
            states: u32::MAX,
            id,
            ..Default::default()
        };
        send(
            fd,
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            req,
        )?;
        match receive(fd, |_| {}) {
            Ok(()) => closed += 1,
            // Gone in between.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(closed)
}
