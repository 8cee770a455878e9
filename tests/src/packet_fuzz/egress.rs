//! What `from_container` may redirect: an ARP reply, a well-formed encapsulation towards the
//! destination's VTEP, a delivery to a local endpoint of the sender's VNI, or a service's
//! reset or unreachable sent back; always for a frame from the container's own addresses.
//! Translated packets keep valid checksums valid.

use super::{
    fixture::{Case, Phase},
    frames::{
        be16, checksum, ip_at, l4_checksum, mac_at, ETH_HLEN, ETH_P_ARP, ETH_P_IP, PROTO_ICMP,
        PROTO_TCP,
    },
    invariants::{differs, ensure, fail, nat_skip, Violation},
    world::{Identity, Loc, World, LOCAL_VTEP, UNDERLAY_MTU, VXLAN_PORT},
};

/// Whether the IPv4 header at `ip_off` and its complete TCP/UDP segment (as far as the
/// total length says, if the frame holds it) carry valid checksums; `None` where there is
/// nothing to check. UDP without a checksum counts as valid only while it stays without.
fn checksums(f: &[u8], ip_off: usize) -> Option<(bool, Option<bool>)> {
    if f.len() < ip_off + 20 || f[ip_off] != 0x45 {
        return None;
    }
    let header = checksum(&f[ip_off..ip_off + 20]) == 0;
    let end = ip_off + be16(f, ip_off + 2) as usize;
    let proto = f[ip_off + 9];
    let l4 = ip_off + 20;
    let segment = match proto {
        PROTO_TCP if end <= f.len() && end >= l4 + 20 => Some(&f[l4..end]),
        17 if end <= f.len() && end >= l4 + 8 => Some(&f[l4..end]),
        _ => None,
    };
    let l4_ok = segment.map(|seg| {
        if proto == 17 && be16(seg, 6) == 0 {
            return false;
        }
        l4_checksum(ip_at(f, ip_off + 12), ip_at(f, ip_off + 16), proto, seg) == 0
    });
    Some((header, l4_ok))
}

/// Address and port translation keeps valid checksums valid (and a UDP checksum of zero
/// zero): what held for the packet at `in_off` of the input holds at `out_off` of the output.
pub(super) fn nat_keeps_checksums(
    f: &[u8],
    in_off: usize,
    out: &[u8],
    out_off: usize,
) -> Result<(), Violation> {
    let (Some((h_in, l4_in)), Some((h_out, l4_out))) =
        (checksums(f, in_off), checksums(out, out_off))
    else {
        return Ok(());
    };
    ensure(!h_in || h_out, "translation-keeps-checksums", || {
        "IPv4 header checksum broken".into()
    })?;
    ensure(
        l4_in != Some(true) || l4_out == Some(true),
        "translation-keeps-checksums",
        || "TCP/UDP checksum broken".into(),
    )?;
    let zero_udp =
        |p: &[u8], off: usize| p[off + 9] == 17 && p.len() >= off + 28 && be16(p, off + 26) == 0;
    ensure(
        !zero_udp(f, in_off) || zero_udp(out, out_off),
        "translation-keeps-checksums",
        || "a UDP checksum of zero was filled in".into(),
    )
}

/// A redirect from a container: the frame came from the container's own MAC and IP (ARP:
/// sender MAC and IP), and what leaves is an ARP reply, a well-formed encapsulation to a
/// known VTEP, a delivery to a local endpoint of the same VNI, or a service's reset or
/// unreachable sent back.
pub(super) fn container_redirect(
    w: &World,
    phase: Phase,
    case: &Case,
    out: &[u8],
) -> Result<(), Violation> {
    let f = &case.frame;
    let Some(me) = w.identity(case.ifindex) else {
        return fail(
            "redirect-only-from-known-interface",
            format!("ifindex {} has no identity", case.ifindex),
        );
    };
    ensure(mac_at(f, 6) == me.mac, "anti-spoofing", || {
        format!("redirected a frame from MAC {:02x?}", mac_at(f, 6))
    })?;
    match be16(f, 12) {
        ETH_P_IP => {
            ensure(ip_at(f, 26) == me.ip, "anti-spoofing", || {
                format!("redirected an IPv4 packet from {}", ip_at(f, 26))
            })?;
        }
        ETH_P_ARP => return arp_reply(w, me, f, out),
        other => {
            return fail(
                "redirect-only-ipv4-or-arp",
                format!("redirected a frame of ethertype {other:#06x}"),
            )
        }
    }
    if out.len() == f.len() + 50 {
        encapsulation(w, phase, me, case, out)
    } else if out.len() == FRAG_NEEDED_LEN && out[23] == PROTO_ICMP && out[34..36] == [3, 4] {
        frag_needed(w, me, f, out)
    } else if out.len() >= ETH_HLEN && mac_at(out, 6) == me.mac {
        local_delivery(w, phase, me, f, out)
    } else if phase.lb {
        service_answer(w, me, f, out)
    } else {
        fail(
            "container-redirect-shape",
            format!(
                "{} bytes out of {} in, neither delivery nor encapsulation",
                out.len(),
                f.len()
            ),
        )
    }
}

/// Ethernet, IPv4, ICMP headers and the quoted IPv4 header with 8 bytes.
const FRAG_NEEDED_LEN: usize = 14 + 20 + 8 + 28;

/// An ICMP "fragmentation needed" from the gateway: only for a DF packet too big for the
/// underlay once encapsulated, advertising the MTU that fits, quoting the packet.
fn frag_needed(w: &World, me: &Identity, f: &[u8], out: &[u8]) -> Result<(), Violation> {
    const WHAT: &str = "frag-needed-well-formed";
    let check = |ok: bool, what: &str| ensure(ok, WHAT, || what.to_string());
    ensure(
        f.len() + 36 > UNDERLAY_MTU as usize && f.len() >= 42 && f[14] == 0x45 && f[20] & 0x40 != 0,
        "frag-needed-only-when-too-big",
        || {
            format!(
                "answered a {}-byte frame (DF {})",
                f.len(),
                f.get(20).map_or(0, |b| b & 0x40)
            )
        },
    )?;
    let Some(net) = w.network(me.vni) else {
        return fail(WHAT, "answered for a VNI without a network".to_string());
    };
    check(mac_at(out, 0) == me.mac, "not sent to the container's MAC")?;
    check(mac_at(out, 6) == net.gw_mac, "not from the gateway's MAC")?;
    check(be16(out, 12) == ETH_P_IP, "ethertype is not IPv4")?;
    check(
        out[14] == 0x45 && be16(out, 16) == 56,
        "IPv4 header or length",
    )?;
    check(checksum(&out[14..34]) == 0, "IPv4 header checksum is wrong")?;
    check(
        ip_at(out, 26) == net.gw_ip,
        "not from the gateway's address",
    )?;
    check(ip_at(out, 30) == me.ip, "not to the container's address")?;
    check(checksum(&out[34..]) == 0, "ICMP checksum is wrong")?;
    check(
        be16(out, 40) as u32 == UNDERLAY_MTU - 50,
        "advertised MTU is not the underlay's - 50",
    )?;
    check(
        out[42..] == f[14..42],
        "does not quote the packet's header and 8 bytes",
    )
}

fn arp_reply(w: &World, me: &Identity, f: &[u8], out: &[u8]) -> Result<(), Violation> {
    const WHAT: &str = "arp-reply-well-formed";
    ensure(
        f.len() >= 42 && f[14..22] == [0, 1, 8, 0, 6, 4, 0, 1],
        WHAT,
        || "answered ARP that is not an Ethernet/IPv4 request".into(),
    )?;
    let (sha, spa, tpa) = (mac_at(f, 22), ip_at(f, 28), ip_at(f, 38));
    ensure(
        sha == me.mac && (spa.is_unspecified() || spa == me.ip),
        "anti-spoofing",
        || format!("answered ARP from sender {sha:02x?} {spa}"),
    )?;
    ensure(out.len() == f.len(), WHAT, || {
        format!("reply of {} bytes", out.len())
    })?;
    let answer = mac_at(out, 22);
    let net = w.network(me.vni);
    let right = match net {
        Some(n) if tpa == n.gw_ip => Some(n.gw_mac),
        Some(_) if tpa != me.ip => w.by_ip(me.vni, tpa).map(|e| e.mac),
        _ => None,
    };
    ensure(right == Some(answer), "arp-answer-from-table", || {
        format!("{tpa} answered with {answer:02x?}, table says {right:02x?}")
    })?;
    let ok = mac_at(out, 0) == sha
        && mac_at(out, 6) == answer
        && be16(out, 12) == ETH_P_ARP
        && out[14..22] == [0, 1, 8, 0, 6, 4, 0, 2]
        && ip_at(out, 28) == tpa
        && mac_at(out, 32) == sha
        && ip_at(out, 38) == spa
        && out[42..] == f[42..];
    ensure(ok, WHAT, || {
        "reply fields are not the request's, swapped".into()
    })
}

fn encapsulation(
    w: &World,
    phase: Phase,
    me: &Identity,
    case: &Case,
    o: &[u8],
) -> Result<(), Violation> {
    const WHAT: &str = "encapsulation-well-formed";
    let check = |ok: bool, what: &str| ensure(ok, WHAT, || what.to_string());
    check(be16(o, 12) == ETH_P_IP, "outer ethertype is not IPv4")?;
    check(o[14] == 0x45, "outer IPv4 version/IHL is not 4/5")?;
    check(
        checksum(&o[14..34]) == 0,
        "outer IPv4 header checksum is wrong",
    )?;
    check(
        be16(o, 16) as usize == o.len() - 14,
        "outer IPv4 total length is not frame - 14",
    )?;
    check(
        be16(o, 20) == 0x4000,
        "outer IPv4 is not DF without fragment bits",
    )?;
    check(o[22] == 64, "outer TTL is not 64")?;
    check(o[23] == 17, "outer protocol is not UDP")?;
    check(ip_at(o, 26) == LOCAL_VTEP, "outer source is not our VTEP")?;
    let vtep = ip_at(o, 30);
    ensure(w.vtep_known(vtep), "encapsulation-to-known-vtep", || {
        format!("encapsulated to {vtep}, not a known VTEP")
    })?;
    check(be16(o, 34) >= 49152, "outer UDP source port below 49152")?;
    check(
        be16(o, 36) == VXLAN_PORT,
        "outer UDP destination port is not the VXLAN port",
    )?;
    check(
        be16(o, 38) as usize == o.len() - 34,
        "outer UDP length is not frame - 34",
    )?;
    check(be16(o, 40) == 0, "outer UDP checksum is not 0")?;
    check(
        o[42..46] == [0x08, 0, 0, 0],
        "VXLAN flags are not just I, or reserved bits set",
    )?;
    check(o[49] == 0, "VXLAN reserved byte set")?;
    let vni = u32::from_be_bytes([0, o[46], o[47], o[48]]);
    ensure(vni == me.vni, "encapsulation-in-sender-vni", || {
        format!("VNI {vni} for a sender in {}", me.vni)
    })?;
    if case.gso_segs <= 1 {
        check(
            be16(o, 16) as u32 <= UNDERLAY_MTU,
            "a single packet larger than the underlay MTU",
        )?;
    }
    let inner = &o[50..];
    let dst = mac_at(inner, 0);
    ensure(
        w.by_mac(me.vni, dst)
            .is_some_and(|e| e.loc == Loc::Remote(vtep)),
        "encapsulation-to-destination-vtep",
        || format!("inner destination {dst:02x?} is not an endpoint of VNI {vni} behind {vtep}"),
    )?;
    let skip = nat_skip(phase, inner, ETH_HLEN);
    let mut skip_all = skip.clone();
    skip_all.push(0..6);
    if let Some(d) = differs(inner, &case.frame, &skip_all) {
        return fail(
            "encapsulation-carries-the-frame",
            format!("inner frame: {d}"),
        );
    }
    nat_keeps_checksums(&case.frame, ETH_HLEN, inner, ETH_HLEN)?;
    ensure(ip_at(inner, 26) == me.ip, "anti-spoofing", || {
        format!("encapsulated with inner source {}", ip_at(inner, 26))
    })
}

fn local_delivery(
    w: &World,
    phase: Phase,
    me: &Identity,
    f: &[u8],
    out: &[u8],
) -> Result<(), Violation> {
    let dst = mac_at(out, 0);
    ensure(
        w.by_mac(me.vni, dst).is_some_and(|e| e.is_local()),
        "local-delivery-to-local-endpoint-of-vni",
        || {
            format!(
                "delivered to {dst:02x?}, not a local endpoint of VNI {}",
                me.vni
            )
        },
    )?;
    let mut skip = nat_skip(phase, f, ETH_HLEN);
    skip.push(0..6);
    if let Some(d) = differs(out, f, &skip) {
        return fail("local-delivery-carries-the-frame", d);
    }
    nat_keeps_checksums(f, ETH_HLEN, out, ETH_HLEN)?;
    let src = ip_at(out, 26);
    ensure(
        src == me.ip || (phase.lb && w.is_vip(me.vni, src)),
        "anti-spoofing",
        || format!("delivered with source {src}"),
    )
}

/// A TCP reset or ICMP port unreachable for a service without backends, from the VIP.
fn service_answer(w: &World, me: &Identity, f: &[u8], o: &[u8]) -> Result<(), Violation> {
    const WHAT: &str = "service-answer-well-formed";
    let vip = ip_at(f, 30);
    let proto = f[23];
    let (sport, dport) = (be16(f, 34), be16(f, 36));
    let svc = w.service(me.vni, vip, dport, proto);
    ensure(
        svc.is_some_and(|s| s.backends.is_empty()),
        "service-answer-only-without-backends",
        || format!("answered a packet to {vip}:{dport}/{proto}, not a service without backends"),
    )?;
    let check = |ok: bool, what: &str| ensure(ok, WHAT, || what.to_string());
    check(o.len() >= 34, "answer shorter than Ethernet + IPv4")?;
    check(
        mac_at(o, 0) == me.mac && mac_at(o, 6) == mac_at(f, 0),
        "answer MACs are not swapped",
    )?;
    check(
        be16(o, 12) == ETH_P_IP && o[14] == 0x45,
        "answer is not plain IPv4",
    )?;
    check(checksum(&o[14..34]) == 0, "answer IPv4 checksum is wrong")?;
    check(
        be16(o, 16) as usize == o.len() - 14,
        "answer IPv4 length is not frame - 14",
    )?;
    let (src, dst) = (ip_at(o, 26), ip_at(o, 30));
    check(
        src == vip && dst == me.ip,
        "answer is not from the VIP to the client",
    )?;
    if proto == PROTO_TCP {
        check(
            o.len() == 54 && o[23] == PROTO_TCP,
            "reset is not TCP of 54 bytes",
        )?;
        check(
            be16(o, 34) == dport && be16(o, 36) == sport,
            "reset ports are not swapped",
        )?;
        check(o[47] & 0x04 != 0, "reset without RST")?;
        check(
            l4_checksum(src, dst, PROTO_TCP, &o[34..]) == 0,
            "reset TCP checksum is wrong",
        )
    } else {
        check(
            o.len() == 70 && o[23] == PROTO_ICMP,
            "unreachable is not ICMP of 70 bytes",
        )?;
        check(o[34] == 3 && o[35] == 3, "ICMP is not port unreachable")?;
        check(checksum(&o[34..]) == 0, "ICMP checksum is wrong")?;
        check(o[42..70] == f[14..42], "ICMP does not quote the packet")
    }
}
