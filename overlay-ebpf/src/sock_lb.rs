//! Socket-level balancing (Cilium's socket LB, Calico's connect-time balancing): cgroup hooks
//! that give a container's socket a backend when it connects to a service VIP, so the flow's
//! packets carry the backend's address from the start and need no per-packet translation.
//! Unconnected UDP gets a backend per socket and VIP on send; replies and `getpeername` show
//! the VIP. Only sockets of containers on this node (by netns cookie) are touched; every
//! other socket passes untouched, whatever it does.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SockAddrContext, SockContext},
};
use overlay_common::{
    lb::{flow_hash, NetnsInfo, ServiceKey, SockAddr, SockKey},
    wire::{IPPROTO_TCP, IPPROTO_UDP},
    Direction,
};

use crate::{
    counters::count,
    lb,
    maps::{LB_SERVICES, SOCK_FWD, SOCK_NETNS, SOCK_REV},
};

/// A cgroup sock_addr hook's verdict: carry on (every path ends here but a refusal).
pub(crate) const ALLOW: i32 = 1;
/// The connect of a service without backends is refused, with ECONNREFUSED (set by
/// `refuse`) as a TCP RST would give, not the EPERM a bare denial means.
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
pub(crate) fn refuse() -> i32 {
    count(Direction::LbRejected, 0);
    unsafe { aya_ebpf::helpers::generated::bpf_set_retval(-ECONNREFUSED) };
    DENY
}
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;

/// The IP protocol of a socket type that can be balanced.
#[inline(always)]
pub(crate) fn proto_of(sock_type: u32) -> Option<u8> {
    match sock_type {
        SOCK_STREAM => Some(IPPROTO_TCP),
        SOCK_DGRAM => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// The socket's address as the hook sees it: (IPv4 key, host-order port, IP protocol).
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> Option<(u32, u16, u8)> {
    let sa = unsafe { &*ctx.sock_addr };
    let proto = proto_of(sa.type_)?;
    Some((sa.user_ip4, u16::from_be(sa.user_port as u16), proto))
}

/// The networks of the socket's namespace, if it is a container's on this node.
#[inline(always)]
pub(crate) fn netns_info(ctx: &SockAddrContext) -> Option<&'static NetnsInfo> {
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    unsafe { SOCK_NETNS.get(netns) }
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, ip: u32, port: u16) {
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = ip;
    sa.user_port = port.to_be() as u32;
}

/// The service at `vip:port/proto` for a container of this node, if any: the networks of
/// the socket's namespace, tried in order.
#[inline(always)]
fn service(
    ctx: &SockAddrContext,
    vip: u32,
    port: u16,
    proto: u8,
) -> Option<&'static overlay_common::lb::ServiceInfo> {
    let info = netns_info(ctx)?;
    let mut i = 0;
    while i < 4 {
        if i as u32 >= info.count {
            break;
        }
        let key = ServiceKey {
            vni: info.vnis[i],
            vip,
            port,
            proto,
            _pad: 0,
        };
        if let Some(svc) = unsafe { LB_SERVICES.get(key) } {
            return Some(svc);
        }
        i += 1;
    }
    None
}

/// Picks a backend for the socket (its cookie spreads sockets over the Maglev table) and
/// remembers which VIP it stands for.
#[inline(always)]
pub(crate) fn balance(
    ctx: &SockAddrContext,
    vip: u32,
    port: u16,
    proto: u8,
) -> Option<Result<SockAddr, ()>> {
    let svc = service(ctx, vip, port, proto)?;
    if svc.backends == 0 {
        return Some(Err(()));
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let hash = flow_hash(cookie as u32, (cookie >> 32) as u32, port, 0, proto);
    let Ok((_, backend)) = lb::pick(svc, hash) else {
        return Some(Err(()));
    };
    let to = SockAddr {
        ip: backend.ip,
        port: backend.port,
        _pad: 0,
    };
    let rev = SockKey {
        cookie,
        ip: backend.ip,
        port: backend.port,
        proto,
        _pad: 0,
    };
    let vip_addr = SockAddr {
        ip: vip,
        port,
        _pad: 0,
    };
    let _ = SOCK_REV.insert(rev, vip_addr, 0);
    crate::monitor::trace_socket(4, proto, v4(vip), port, v4(backend.ip), backend.port);
    Some(Ok(to))
}

/// An IPv4 key as the 16 bytes of an event's address.
#[inline(always)]
fn v4(ip: u32) -> [u8; 16] {
    let mut a = [0; 16];
    a[..4].copy_from_slice(&ip.to_ne_bytes());
    a
}

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let Some((vip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    match balance(ctx, vip, port, proto) {
        None => ALLOW,
        Some(Err(())) => refuse(),
        Some(Ok(to)) => {
            set_user_addr(ctx, to.ip, to.port);
            count(Direction::SockLbConnect, 0);
            ALLOW
        }
    }
}

/// Unconnected UDP: the backend a socket got for a VIP stays its backend (request/response
/// protocols such as DNS keep talking to one server).
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    let Some((vip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    if proto != IPPROTO_UDP {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockKey {
        cookie,
        ip: vip,
        port,
        proto,
        _pad: 0,
    };
    if let Some(to) = unsafe { SOCK_FWD.get(key) } {
        let to = *to;
        set_user_addr(ctx, to.ip, to.port);
        return ALLOW;
    }
    match balance(ctx, vip, port, proto) {
        None => ALLOW,
        Some(Err(())) => refuse(),
        Some(Ok(to)) => {
            let _ = SOCK_FWD.insert(key, to, 0);
            set_user_addr(ctx, to.ip, to.port);
            count(Direction::SockLbSendmsg, 0);
            ALLOW
        }
    }
}

/// The peer the socket sees: the VIP it asked for, not the backend it got.
#[inline(always)]
fn show_vip(ctx: &SockAddrContext) -> i32 {
    let Some((ip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockKey {
        cookie,
        ip,
        port,
        proto,
        _pad: 0,
    };
    if let Some(vip) = unsafe { SOCK_REV.get(key) } {
        let vip = *vip;
        set_user_addr(ctx, vip.ip, vip.port);
        count(Direction::SockLbRevNat, 0);
    }
    ALLOW
}

/// A closing socket forgets the VIP it stood for, so `SOCK_REV` holds live sockets only and
/// balancing a connection never has to evict an entry from a full LRU map (which cost as much
/// as 4 % of a short connection). Unconnected UDP (no peer) is left to the LRU.
pub fn release(ctx: &SockContext) -> i32 {
    let sk = unsafe { &*ctx.sock };
    let Some(proto) = proto_of(sk.type_) else {
        return ALLOW;
    };
    if sk.family == AF_INET6 {
        return crate::sock_lb6::release6(ctx, proto);
    }
    if sk.family != AF_INET || sk.dst_ip4 == 0 {
        return ALLOW;
    }
    let key = SockKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock.cast()) },
        ip: sk.dst_ip4,
        port: u16::from_be(sk.dst_port),
        proto,
        _pad: 0,
    };
    let _ = SOCK_REV.remove(key);
    ALLOW
}

pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    show_vip(ctx)
}

pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    show_vip(ctx)
}
