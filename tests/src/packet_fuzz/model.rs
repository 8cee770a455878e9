//! A reference model of the three programs, written from docs/architecture.md and the
//! programs' documented checks, over the fuzzer's tables (`World`): for a frame, the verdict,
//! the drop reason, the output frame and the traffic counters the program must produce.
//!
//! Service balancing keeps per-flow state (LRU flow tables, timestamps) the model does not
//! follow, so where it may act (the node has services and the packet is an unfragmented
//! TCP/UDP one with a plain IPv4 header, the only kind it touches) the expectation carries a
//! `Leeway`: addresses, ports and checksums may be rewritten, the flow may be refused for a
//! balancing reason, and a packet to a VIP may end any way the structural invariants accept.

use std::ops::Range;

use overlay_common::{Direction, DropReason};

use super::{
    fixture::{Case, Phase, Program},
    frames::{
        be16, checksum, ip_at, mac_at, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, PROTO_TCP,
        PROTO_UDP,
    },
    world::{Identity, Loc, World, LOCAL_VTEP, UNDERLAY_MTU, VXLAN_PORT},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// BPF_PROG_TEST_RUN refuses the frame before the program runs.
    Refused,
    /// TC_ACT_SHOT / XDP_DROP, counted with this reason.
    Drop(DropReason),
    /// TC_NEXT / XDP_PASS, the frame untouched.
    Pass,
    /// TC_ACT_REDIRECT with this frame; bytes in `ignore` are not predicted (the outer UDP
    /// source port comes from the kernel's flow hash).
    Redirect {
        frame: Vec<u8>,
        ignore: Option<Range<usize>>,
    },
    /// A packet to a service VIP while services are on: any result the structural
    /// invariants accept (a translated delivery or encapsulation, a reset or unreachable
    /// sent back, or a drop for a service reason).
    Service,
}

/// How far the program may stray from `Outcome` because of service balancing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leeway {
    Exact,
    /// The IPv4 packet at `ip_off` of the output may have its addresses, ports and
    /// checksums rewritten, or the frame may be dropped as `lb_nat_failed` or
    /// `lb_tuple_conflict`.
    Nat {
        ip_off: usize,
        proto: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Outcome,
    /// Traffic counters that go up by one each; no other may move (with `Leeway::Nat` or
    /// `Outcome::Service`, service counters may move too, see `invariants`).
    pub traffic: Vec<Direction>,
    pub leeway: Leeway,
}

impl Expected {
    fn new(outcome: Outcome, traffic: Vec<Direction>) -> Self {
        Self {
            outcome,
            traffic,
            leeway: Leeway::Exact,
        }
    }

    fn with(mut self, leeway: Leeway) -> Self {
        self.leeway = leeway;
        self
    }
}

fn drop(reason: DropReason, traffic: Vec<Direction>) -> Expected {
    Expected::new(Outcome::Drop(reason), traffic)
}

fn plus(mut traffic: Vec<Direction>, d: Direction) -> Vec<Direction> {
    traffic.push(d);
    traffic
}

/// What the model expects of `case` in `phase`.
pub fn expect(w: &World, phase: Phase, case: &Case) -> Expected {
    match case.program {
        Program::FromContainer => from_container(w, phase, case),
        Program::FromUnderlay => from_underlay(w, phase, case),
        Program::UnderlayXdp => underlay_xdp(w, phase, case),
    }
}

/// test_run builds an skb only from a whole Ethernet header, and for IPv4 (IPv6) frames only
/// with a whole IPv4 (IPv6) header behind it.
fn refused_as_skb(f: &[u8]) -> bool {
    f.len() < ETH_HLEN
        || (be16(f, 12) == ETH_P_IP && f.len() < ETH_HLEN + 20)
        || (be16(f, 12) == ETH_P_IPV6 && f.len() < ETH_HLEN + 40)
}

/// The ports `lb::ports` reads, if the packet at `ip_off` is one balancing may touch:
/// plain IPv4 header, not a fragment, TCP with its whole header or UDP with its ports.
pub fn balanced_proto(f: &[u8], ip_off: usize) -> Option<u8> {
    if f.len() < ip_off + 20 || f[ip_off] != 0x45 || be16(f, ip_off + 6) & 0x3fff != 0 {
        return None;
    }
    let proto = f[ip_off + 9];
    let l4 = ip_off + 20;
    match proto {
        PROTO_TCP if f.len() >= l4 + 20 => Some(proto),
        PROTO_UDP if f.len() >= l4 + 4 => Some(proto),
        _ => None,
    }
}

fn from_container(w: &World, phase: Phase, case: &Case) -> Expected {
    let f = &case.frame;
    if refused_as_skb(f) {
        return Expected::new(Outcome::Refused, vec![]);
    }
    let Some(me) = w.identity(case.ifindex) else {
        return drop(DropReason::UnknownInterface, vec![]);
    };
    let t = vec![Direction::FromContainer];
    if mac_at(f, 6) != me.mac {
        return drop(DropReason::SpoofedMac, t);
    }
    match be16(f, 12) {
        ETH_P_ARP => arp(w, me, f, t),
        ETH_P_IP => ipv4(w, phase, me, case, t),
        ETH_P_IPV6 => ipv6(w, me, f, t),
        _ => drop(DropReason::UnsupportedEthertype, t),
    }
}

/// IPv6 from a container (test_run guarantees the 40-byte header). The world's identities
/// have no IPv6 address (prog_test_run6 covers IPv6 forwarding), so nothing of it passes.
fn ipv6(w: &World, me: &Identity, f: &[u8], t: Vec<Direction>) -> Expected {
    // Neighbour discovery is told apart by the ICMPv6 type after the header.
    if f[20] == 58 && f.len() < ETH_HLEN + 41 {
        return drop(DropReason::Malformed, t);
    }
    if f[14] >> 4 != 6 {
        return drop(DropReason::Malformed, t);
    }
    if w.network(me.vni).is_none() {
        return drop(DropReason::UnknownNetwork, t);
    }
    drop(DropReason::Ipv6Disabled, t)
}

fn arp(w: &World, me: &Identity, f: &[u8], t: Vec<Direction>) -> Expected {
    if f.len() < ETH_HLEN + 28 {
        return drop(DropReason::Malformed, t);
    }
    if f[14..22] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return drop(DropReason::ArpUnsupported, t);
    }
    let (sha, spa, tpa) = (mac_at(f, 22), ip_at(f, 28), ip_at(f, 38));
    if sha != me.mac || (!spa.is_unspecified() && spa != me.ip) {
        return drop(DropReason::SpoofedArp, t);
    }
    let Some(net) = w.network(me.vni) else {
        return drop(DropReason::UnknownNetwork, t);
    };
    let answer = if tpa == net.gw_ip {
        net.gw_mac
    } else {
        match w.by_ip(me.vni, tpa) {
            Some(ep) if tpa != me.ip => ep.mac,
            _ => return drop(DropReason::ArpUnknownTarget, t),
        }
    };
    let mut out = f.to_vec();
    out[0..6].copy_from_slice(&sha);
    out[6..12].copy_from_slice(&answer);
    out[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    out[22..28].copy_from_slice(&answer);
    out[28..32].copy_from_slice(&tpa.octets());
    out[32..38].copy_from_slice(&sha);
    out[38..42].copy_from_slice(&spa.octets());
    Expected::new(
        Outcome::Redirect {
            frame: out,
            ignore: None,
        },
        plus(t, Direction::ArpReply),
    )
}

fn ipv4(w: &World, phase: Phase, me: &Identity, case: &Case, t: Vec<Direction>) -> Expected {
    let f = &case.frame;
    if f.len() < ETH_HLEN + 20 || f[14] & 0x0f < 5 {
        return drop(DropReason::Malformed, t);
    }
    if ip_at(f, 26) != me.ip {
        return drop(DropReason::SpoofedIp, t);
    }
    if f[0] & 1 != 0 {
        return drop(DropReason::Broadcast, t);
    }
    let Some(net) = w.network(me.vni) else {
        return drop(DropReason::UnknownNetwork, t);
    };
    let to_gateway = mac_at(f, 0) == net.gw_mac;
    let dst = ip_at(f, 30);
    let balanced = if phase.lb {
        balanced_proto(f, ETH_HLEN)
    } else {
        None
    };
    if balanced.is_some() && to_gateway && w.is_vip(me.vni, dst) {
        return Expected::new(Outcome::Service, t);
    }
    let mut out = f.to_vec();
    let target = if to_gateway {
        let Some(ep) = w.by_ip(me.vni, dst) else {
            return drop(DropReason::UnknownDestination, t);
        };
        out[0..6].copy_from_slice(&ep.mac);
        ep
    } else {
        match w.by_mac(me.vni, mac_at(f, 0)) {
            Some(ep) => ep,
            None => return drop(DropReason::UnknownDestination, t),
        }
    };
    let leeway = |ip_off| match balanced {
        Some(proto) => Leeway::Nat { ip_off, proto },
        None => Leeway::Exact,
    };
    let vtep = match target.loc {
        Loc::Local(_) => {
            return Expected::new(
                Outcome::Redirect {
                    frame: out,
                    ignore: None,
                },
                plus(t, Direction::LocalDelivery),
            )
            .with(leeway(ETH_HLEN));
        }
        Loc::Remote(vtep) => vtep,
    };
    // Too big for the underlay once encapsulated (icmp.rs; the fuzzer's packets carry no
    // gso_size, so each is judged whole): a DF packet with a plain header to a known VTEP
    // gets "fragmentation needed" back, before any balancing; the rest are dropped.
    let outer_ip_len = f.len() + 36;
    if outer_ip_len > UNDERLAY_MTU as usize {
        if !w.vtep_known(vtep) || f[14] != 0x45 || f[20] & 0x40 == 0 {
            return drop(DropReason::TooBig, t);
        }
        return Expected::new(
            Outcome::Redirect {
                frame: frag_needed(net.gw_mac, net.gw_ip, f),
                ignore: None,
            },
            plus(t, Direction::IcmpFragNeeded),
        );
    }
    // Encapsulation (encap.rs).
    let outer = leeway(ETH_HLEN + 50);
    if !w.vtep_known(vtep) {
        return drop(DropReason::UnknownVtep, t).with(outer);
    }
    if outer_ip_len > 0xffff {
        return drop(DropReason::TooBig, t).with(outer);
    }
    // bpf_skb_adjust_room has no MTU limit of its own (since Linux 5.12), so growing by 50
    // bytes never fails here: `encap_failed` is not expected.
    Expected::new(
        Outcome::Redirect {
            frame: encapsulated(me.vni, vtep, &out),
            ignore: Some(34..36),
        },
        plus(t, Direction::EncapTx),
    )
    .with(outer)
}

/// The ICMP "fragmentation needed" icmp.rs answers the packet in `f` with.
fn frag_needed(gw_mac: [u8; 6], gw_ip: std::net::Ipv4Addr, f: &[u8]) -> Vec<u8> {
    let mut o = f[6..12].to_vec();
    o.extend_from_slice(&gw_mac);
    o.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&56u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&gw_ip.octets());
    ip[16..20].copy_from_slice(&f[26..30]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    o.extend_from_slice(&ip);
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&((UNDERLAY_MTU - 50) as u16).to_be_bytes());
    icmp.extend_from_slice(&f[14..42]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    o.extend_from_slice(&icmp);
    o
}

/// The frame encap.rs makes of `inner` (outer UDP source port left zero).
pub fn encapsulated(vni: u32, vtep: std::net::Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let outer_ip_len = inner.len() + 36;
    let mut o = vec![0u8; 12];
    o.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = inner[15];
    ip[2..4].copy_from_slice(&(outer_ip_len as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&LOCAL_VTEP.octets());
    ip[16..20].copy_from_slice(&vtep.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    o.extend_from_slice(&ip);
    o.extend_from_slice(&[0, 0]);
    o.extend_from_slice(&VXLAN_PORT.to_be_bytes());
    o.extend_from_slice(&((outer_ip_len - 20) as u16).to_be_bytes());
    o.extend_from_slice(&[0, 0]);
    let v = vni.to_be_bytes();
    o.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    o.extend_from_slice(inner);
    o
}

/// What `vxlan::receive` decides about an underlay frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rx {
    /// Not VXLAN for this node (or not parseable as such): passes untouched.
    NotOurs,
    Reject(DropReason),
    Accept,
}

pub fn receive(w: &World, phase: Phase, f: &[u8]) -> Rx {
    if f.len() < ETH_HLEN + 20 {
        return Rx::NotOurs;
    }
    if be16(f, 12) != ETH_P_IP
        || f[23] != PROTO_UDP
        || ip_at(f, 30) != LOCAL_VTEP
        || be16(f, 20) & 0x3fff != 0
        || f[14] != 0x45
    {
        return Rx::NotOurs;
    }
    if f.len() < 42 || be16(f, 36) != VXLAN_PORT {
        return Rx::NotOurs;
    }
    if f.len() < 50 {
        return Rx::Reject(DropReason::VxlanMalformed);
    }
    let vni = u32::from_be_bytes([0, f[46], f[47], f[48]]);
    if phase.foreign_vni_pass && w.network(vni).is_none() {
        return Rx::NotOurs;
    }
    // The inner header, IPv4 or IPv6 by the inner ethertype, is read before any lookup.
    let inner_v6 = f.len() >= 64 && be16(f, 62) == ETH_P_IPV6;
    if f.len() < if inner_v6 { 104 } else { 84 } {
        return Rx::Reject(DropReason::Malformed);
    }
    if f[42] & 0x08 == 0 {
        return Rx::Reject(DropReason::VxlanMalformed);
    }
    let vtep = ip_at(f, 26);
    if !w.vtep_known(vtep) {
        return Rx::Reject(DropReason::UnknownVtep);
    }
    if w.network(vni).is_none() {
        return Rx::Reject(DropReason::UnknownVni);
    }
    if be16(f, 62) != ETH_P_IP && !inner_v6 {
        return Rx::Reject(DropReason::UnsupportedEthertype);
    }
    if (!inner_v6 && f[64] & 0x0f < 5) || (inner_v6 && f[64] >> 4 != 6) {
        return Rx::Reject(DropReason::Malformed);
    }
    if !w.by_mac(vni, mac_at(f, 50)).is_some_and(|e| e.is_local()) {
        return Rx::Reject(DropReason::DecapNotLocal);
    }
    match w.by_mac(vni, mac_at(f, 56)) {
        // The world has no IPv6 addresses: an IPv6 source is never an endpoint's.
        Some(_) if inner_v6 => Rx::Reject(DropReason::DecapSpoofedSource),
        Some(src) if src.loc == Loc::Remote(vtep) && src.ip == ip_at(f, 76) => Rx::Accept,
        _ => Rx::Reject(DropReason::DecapSpoofedSource),
    }
}

fn from_underlay(w: &World, phase: Phase, case: &Case) -> Expected {
    let f = &case.frame;
    if refused_as_skb(f) {
        return Expected::new(Outcome::Refused, vec![]);
    }
    match receive(w, phase, f) {
        Rx::NotOurs => Expected::new(Outcome::Pass, vec![Direction::UnderlayPass]),
        Rx::Reject(reason) => drop(reason, vec![]),
        Rx::Accept => {
            let room = f.len() - 64;
            let inner_len = be16(f, 66) as usize;
            if inner_len > room || (case.gso_segs > 1 && inner_len != room) {
                return drop(DropReason::DecapFailed, vec![]);
            }
            let out = f[50..].to_vec();
            let leeway = match balanced_proto(&out, ETH_HLEN) {
                Some(proto) if phase.lb => Leeway::Nat {
                    ip_off: ETH_HLEN,
                    proto,
                },
                _ => Leeway::Exact,
            };
            Expected::new(
                Outcome::Redirect {
                    frame: out,
                    ignore: None,
                },
                vec![Direction::DecapRx],
            )
            .with(leeway)
        }
    }
}

fn underlay_xdp(w: &World, phase: Phase, case: &Case) -> Expected {
    let f = &case.frame;
    if f.len() < ETH_HLEN {
        return Expected::new(Outcome::Refused, vec![]);
    }
    match receive(w, phase, f) {
        Rx::NotOurs => Expected::new(Outcome::Pass, vec![]),
        Rx::Reject(reason) => drop(reason, vec![]),
        Rx::Accept => Expected::new(Outcome::Pass, vec![Direction::XdpVxlanPass]),
    }
}
