//! Socket-level balancing for IPv6 services: the connect6/sendmsg6/recvmsg6/getpeername6
//! hooks, as `sock_lb` does for IPv4, over `LB6_SERVICES` and `LB6_BACKENDS` (what they do
//! not balance, `lb` balances per packet).
//!
//! An IPv6 socket may address an IPv4 VIP by its IPv4-mapped form (`::ffff:a.b.c.d`): the
//! kernel runs only the IPv6 hooks for its connect, and for its replies and peer name, so
//! those are balanced and shown here with the IPv4 maps (`sock_lb::balance`, `SOCK_REV`).
//! Its unconnected sends go through the IPv4 `sendmsg4` hook (the kernel hands them to UDP
//! over IPv4 with an IPv4 address).

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SockAddrContext, SockContext},
};
use core::ptr::{addr_of, addr_of_mut};
use overlay_common::{
    lb::{flow_hash, Service6Key, ServiceInfo, Sock6Addr, Sock6Key, SockKey},
    wire::IPPROTO_UDP,
    Direction,
};

use crate::{
    counters::count,
    lb,
    maps::{LB6_BACKENDS, LB6_SERVICES, SOCK6_FWD, SOCK6_REV, SOCK_REV},
    sock_lb::{self, netns_info, proto_of, refuse, AF_INET6, ALLOW},
};

/// The IPv4 address (key form) of an IPv4-mapped IPv6 address.
#[inline(always)]
fn mapped_v4(ip: &[u32; 4]) -> Option<u32> {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])).then_some(ip[3])
}

#[inline(always)]
fn mapped(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

#[inline(always)]
fn key4(cookie: u64, ip: u32, port: u16, proto: u8) -> SockKey {
    SockKey {
        cookie,
        ip,
        port,
        proto,
        _pad: 0,
    }
}

/// The socket's IPv6 address, read a word at a time (the verifier's access size for
/// `user_ip6`), host-order port and IP protocol.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> Option<([u32; 4], u16, u8)> {
    let sa = ctx.sock_addr;
    let proto = proto_of(unsafe { (*sa).type_ })?;
    let ip = unsafe {
        let p = addr_of!((*sa).user_ip6) as *const u32;
        [
            p.read_volatile(),
            p.add(1).read_volatile(),
            p.add(2).read_volatile(),
            p.add(3).read_volatile(),
        ]
    };
    let port = unsafe { (*sa).user_port };
    Some((ip, u16::from_be(port as u16), proto))
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, ip: [u32; 4], port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        let p = addr_of_mut!((*sa).user_ip6) as *mut u32;
        p.write_volatile(ip[0]);
        p.add(1).write_volatile(ip[1]);
        p.add(2).write_volatile(ip[2]);
        p.add(3).write_volatile(ip[3]);
        (*sa).user_port = port.to_be() as u32;
    }
}

/// The IPv6 service at `vip:port/proto` for a container of this node, if any.
#[inline(always)]
fn service(
    ctx: &SockAddrContext,
    vip: [u32; 4],
    port: u16,
    proto: u8,
) -> Option<&'static ServiceInfo> {
    let info = netns_info(ctx)?;
    let mut i = 0;
    while i < 4 {
        if i as u32 >= info.count {
            break;
        }
        let key = Service6Key {
            vni: info.vnis[i],
            vip,
            port,
            proto,
            _pad: 0,
        };
        if let Some(svc) = unsafe { LB6_SERVICES.get(key) } {
            return Some(svc);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn key(cookie: u64, ip: [u32; 4], port: u16, proto: u8) -> Sock6Key {
    Sock6Key {
        cookie,
        ip,
        port,
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// Picks a backend for the socket and remembers which VIP it stands for.
#[inline(always)]
fn balance(
    ctx: &SockAddrContext,
    vip: [u32; 4],
    port: u16,
    proto: u8,
) -> Option<Result<Sock6Addr, ()>> {
    let svc = service(ctx, vip, port, proto)?;
    if svc.backends == 0 {
        return Some(Err(()));
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let hash = flow_hash(cookie as u32, (cookie >> 32) as u32, port, 0, proto);
    let Some(backend) = lb::pick_id(svc, hash)
        .ok()
        .and_then(|id| unsafe { LB6_BACKENDS.get(id) })
    else {
        return Some(Err(()));
    };
    let to = Sock6Addr {
        ip: backend.ip,
        port: backend.port,
        _pad: 0,
    };
    let vip_addr = Sock6Addr {
        ip: vip,
        port,
        _pad: 0,
    };
    let _ = SOCK6_REV.insert(key(cookie, to.ip, to.port, proto), vip_addr, 0);
    // Network-order words: their bytes in memory are the address's.
    let bytes = |a: [u32; 4]| unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(a) };
    crate::monitor::trace_socket(6, proto, bytes(vip), port, bytes(to.ip), to.port);
    Some(Ok(to))
}

pub fn connect6(ctx: &SockAddrContext) -> i32 {
    let Some((vip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    if let Some(vip4) = mapped_v4(&vip) {
        return match sock_lb::balance(ctx, vip4, port, proto) {
            None => ALLOW,
            Some(Err(())) => refuse(),
            Some(Ok(to)) => {
                set_user_addr(ctx, mapped(to.ip), to.port);
                count(Direction::SockLbConnect, 0);
                ALLOW
            }
        };
    }
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

/// Unconnected UDP keeps the backend it got for a VIP.
pub fn sendmsg6(ctx: &SockAddrContext) -> i32 {
    let Some((vip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    if proto != IPPROTO_UDP {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let fwd = key(cookie, vip, port, proto);
    if let Some(to) = unsafe { SOCK6_FWD.get(fwd) } {
        let to = *to;
        set_user_addr(ctx, to.ip, to.port);
        return ALLOW;
    }
    match balance(ctx, vip, port, proto) {
        None => ALLOW,
        Some(Err(())) => refuse(),
        Some(Ok(to)) => {
            let _ = SOCK6_FWD.insert(fwd, to, 0);
            set_user_addr(ctx, to.ip, to.port);
            count(Direction::SockLbSendmsg, 0);
            ALLOW
        }
    }
}

/// The peer the socket sees: the VIP it asked for.
#[inline(always)]
fn show_vip(ctx: &SockAddrContext) -> i32 {
    let Some((ip, port, proto)) = user_addr(ctx) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(ip4) = mapped_v4(&ip) {
        if let Some(vip) = unsafe { SOCK_REV.get(key4(cookie, ip4, port, proto)) } {
            let vip = *vip;
            set_user_addr(ctx, mapped(vip.ip), vip.port);
            count(Direction::SockLbRevNat, 0);
        }
        return ALLOW;
    }
    if let Some(vip) = unsafe { SOCK6_REV.get(key(cookie, ip, port, proto)) } {
        let vip = *vip;
        set_user_addr(ctx, vip.ip, vip.port);
        count(Direction::SockLbRevNat, 0);
    }
    ALLOW
}

pub fn recvmsg6(ctx: &SockAddrContext) -> i32 {
    show_vip(ctx)
}

pub fn getpeername6(ctx: &SockAddrContext) -> i32 {
    show_vip(ctx)
}

/// A closing IPv6 socket forgets the VIP it stood for (called by `sock_lb::release`).
#[inline(always)]
pub fn release6(ctx: &SockContext, proto: u8) -> i32 {
    let sk = ctx.sock;
    let (family, ip, port) = unsafe {
        let p = addr_of!((*sk).dst_ip6) as *const u32;
        (
            (*sk).family,
            [
                p.read_volatile(),
                p.add(1).read_volatile(),
                p.add(2).read_volatile(),
                p.add(3).read_volatile(),
            ],
            (*sk).dst_port,
        )
    };
    if family != AF_INET6 || ip == [0; 4] {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    let port = u16::from_be(port);
    let _ = match mapped_v4(&ip) {
        Some(ip4) => SOCK_REV.remove(key4(cookie, ip4, port, proto)),
        None => SOCK6_REV.remove(key(cookie, ip, port, proto)),
    };
    ALLOW
}
