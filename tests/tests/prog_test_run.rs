//! Packet handling of each program on hand-built IPv4 frames, through BPF_PROG_TEST_RUN
//! (the fixture: `overlay_tests::prog_fixture`; IPv6: prog_test_run6.rs).

use overlay_common::{Direction, DropReason};
use overlay_daemon::tables::MacAddr;
use overlay_tests::{prog_fixture::*, traffic};

#[test]
fn encapsulates_to_the_remote_vtep() {
    let f = fixture();
    let inner = f.outbound(b"hello overlay");
    let out = f.run_from_container(&inner);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.frame.len(), inner.len() + 50);
    let vx = traffic::parse_vxlan(&out.frame, 4789).expect("VXLAN on the way out");
    assert_eq!(vx.outer_src, ip(LOCAL_VTEP));
    assert_eq!(vx.outer_dst, ip(REMOTE_VTEP));
    assert_eq!(vx.flags, 0x08);
    assert_eq!(vx.vni, VNI);
    assert_eq!(vx.udp_checksum, 0);
    assert!(vx.udp_src >= 49152);
    assert_eq!(vx.inner, inner, "inner frame carried unchanged");
    let outer_ip = &out.frame[14..34];
    assert_eq!(traffic::checksum(outer_ip), 0, "outer IPv4 checksum");
    assert_eq!(
        u16::from_be_bytes([outer_ip[2], outer_ip[3]]) as usize,
        out.frame.len() - 14
    );
    assert_eq!(outer_ip[6] & 0x40, 0x40, "DF set");
    assert_eq!(f.traffic(Direction::EncapTx), 1);
}

#[test]
fn decapsulates_for_a_local_endpoint() {
    let f = fixture();
    let inner = f.inner_to_me();
    let out = f.run_from_underlay(&f.inbound(VNI, &inner), 0);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.frame, inner, "exactly the inner frame is delivered");
    assert_eq!(f.traffic(Direction::DecapRx), 1);
    // XDP lets the same packet through to TC.
    assert_eq!(f.xdp(&f.inbound(VNI, &inner)).verdict, XDP_PASS);
}

#[test]
fn wrong_or_unknown_vni_is_dropped_in_xdp_and_tc() {
    let f = fixture();
    let inner = f.inner_to_me();
    // Known VNI of another network: our endpoint is not in it.
    assert_eq!(
        f.run_from_underlay(&f.inbound(OTHER_VNI, &inner), 0)
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.xdp(&f.inbound(OTHER_VNI, &inner)).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::DecapNotLocal), 2);
    // A VNI nobody uses.
    assert_eq!(
        f.run_from_underlay(&f.inbound(4242, &inner), 0).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.xdp(&f.inbound(4242, &inner)).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::UnknownVni), 2);
    // An unknown VTEP.
    let stranger = traffic::udp_frame(
        ip("198.18.0.99"),
        ip(LOCAL_VTEP),
        50000,
        4789,
        &traffic::vxlan_payload(VNI, 8, &inner),
    );
    assert_eq!(f.xdp(&stranger).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::UnknownVtep), 1);
    // A source from the other network inside our VNI.
    let forged = traffic::inner_udp_frame(
        f.other_net.1 .0,
        f.me.1 .0,
        f.other_net.0,
        f.me.0,
        9000,
        b"x",
    );
    assert_eq!(
        f.run_from_underlay(&f.inbound(VNI, &forged), 0).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.drops(DropReason::DecapSpoofedSource), 1);
}

#[test]
fn malformed_and_truncated_packets_are_dropped_with_a_reason() {
    let f = fixture();
    // ARP cut short (the kernel's test_run refuses IPv4 frames shorter than an IPv4 header,
    // so the truncated-IPv4 case is covered on the underlay side below).
    let cut_arp = traffic::arp_request(f.me.1 .0, f.me.0, f.remote.0)[..14 + 10].to_vec();
    assert_eq!(f.run_from_container(&cut_arp).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::Malformed), 1);
    // Bad IHL.
    let mut bad_ihl = f.outbound(b"abc");
    bad_ihl[14] = 0x43;
    assert_eq!(f.run_from_container(&bad_ihl).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::Malformed), 2);
    // VXLAN cut inside its header.
    let full = f.inbound(VNI, &f.inner_to_me());
    let cut = &full[..14 + 20 + 8 + 4];
    assert_eq!(f.run_from_underlay(cut, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.xdp(cut).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::VxlanMalformed), 2);
    // VXLAN whose inner frame is cut short.
    let cut = &full[..50 + 10];
    assert_eq!(f.run_from_underlay(cut, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::Malformed), 3);
    // No I flag.
    let no_i = traffic::udp_frame(
        ip(REMOTE_VTEP),
        ip(LOCAL_VTEP),
        50000,
        4789,
        &traffic::vxlan_payload(VNI, 0, &f.inner_to_me()),
    );
    assert_eq!(f.run_from_underlay(&no_i, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::VxlanMalformed), 3);
    // An inner length that claims more than the packet holds.
    let mut inner = f.inner_to_me();
    inner[16..18].copy_from_slice(&1400u16.to_be_bytes());
    assert_eq!(
        f.run_from_underlay(&f.inbound(VNI, &inner), 0).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.drops(DropReason::DecapFailed), 1);
    // A GSO packet must hold exactly one inner packet (not a UDP GRO aggregate).
    let mut padded = f.inner_to_me();
    padded.extend_from_slice(&[0u8; 64]);
    assert_eq!(
        f.run_from_underlay(&f.inbound(VNI, &padded), 2).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.drops(DropReason::DecapFailed), 2);
    // ...while trailing padding on a single packet is fine.
    assert_eq!(
        f.run_from_underlay(&f.inbound(VNI, &padded), 0).verdict,
        TC_ACT_REDIRECT
    );
}

#[test]
fn foreign_underlay_traffic_passes_untouched() {
    let f = fixture();
    let dns = traffic::udp_frame(ip(REMOTE_VTEP), ip(LOCAL_VTEP), 40000, 53, b"not vxlan");
    let out = f.run_from_underlay(&dns, 0);
    assert_eq!(out.verdict, TC_NEXT);
    assert_eq!(out.frame, dns);
    assert_eq!(f.xdp(&dns).verdict, XDP_PASS);
    let arp = traffic::arp_request([2, 0, 0, 0, 0, 2], ip(REMOTE_VTEP), ip(LOCAL_VTEP));
    assert_eq!(f.run_from_underlay(&arp, 0).verdict, TC_NEXT);
    assert_eq!(f.xdp(&arp).verdict, XDP_PASS);
    // VXLAN to us behind another ethertype (a VLAN tag, a local experimental type): not
    // IPv4, so not parsed as such.
    for ethertype in [[0x81, 0x00], [0x88, 0xb5]] {
        let mut other = f.inbound(VNI, &f.inner_to_me());
        other[12..14].copy_from_slice(&ethertype);
        let out = f.run_from_underlay(&other, 0);
        assert_eq!(out.verdict, TC_NEXT, "ethertype {ethertype:02x?}");
        assert_eq!(out.frame, other);
        assert_eq!(f.xdp(&other).verdict, XDP_PASS);
    }
    // VXLAN addressed to another VTEP is not ours either.
    let elsewhere = traffic::udp_frame(
        ip(REMOTE_VTEP),
        ip("198.18.0.3"),
        50000,
        4789,
        &traffic::vxlan_payload(VNI, 8, b""),
    );
    assert_eq!(f.run_from_underlay(&elsewhere, 0).verdict, TC_NEXT);
    let c = f.dp.maps.counters.snapshot().unwrap();
    assert!(
        c.drops.iter().all(|(_, v)| v.packets == 0),
        "nothing dropped: {:?}",
        c.drops
    );
}

#[test]
fn arp_is_answered_from_the_table() {
    let f = fixture();
    let out = f.run_from_container(&traffic::arp_request(f.me.1 .0, f.me.0, f.remote.0));
    assert_eq!(
        out.verdict, TC_ACT_REDIRECT,
        "reply sent back to the container"
    );
    let reply = &out.frame;
    assert_eq!(&reply[0..6], &f.me.1 .0, "to the asker");
    assert_eq!(&reply[6..12], &f.remote.1 .0);
    assert_eq!(&reply[20..22], &[0, 2], "ARP reply");
    assert_eq!(
        &reply[22..28],
        &f.remote.1 .0,
        "sender hardware address is the answer"
    );
    assert_eq!(&reply[28..32], &f.remote.0.octets());
    assert_eq!(&reply[38..42], &f.me.0.octets());
    // The gateway has a MAC too.
    let out = f.run_from_container(&traffic::arp_request(f.me.1 .0, f.me.0, ip("198.19.1.1")));
    assert_eq!(&out.frame[22..28], &MacAddr::gateway(VNI).0);
    // An address of another network is not answered.
    let out = f.run_from_container(&traffic::arp_request(f.me.1 .0, f.me.0, f.other_net.0));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::ArpUnknownTarget), 1);
    // ARP claiming another sender IP.
    let out = f.run_from_container(&traffic::arp_request(
        f.me.1 .0,
        ip("198.19.1.99"),
        f.remote.0,
    ));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::SpoofedArp), 1);
    assert_eq!(f.traffic(Direction::ArpReply), 2);
}

/// The verifier checks every path of a program, up to a million instructions; the kernel
/// refuses to load one that needs more, and other kernels may explore more paths than this
/// one. The container program keeps most of that free (it needed 498k before its searches
/// for a free port went through `bpf_loop`, 807k with the IPv6 service path added).
#[test]
fn the_programs_leave_the_verifier_room() {
    let before: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| p.id())
        .collect();
    let _f = fixture();
    let mut seen = 0;
    // Only the programs this fixture loaded (other tests load theirs at the same time).
    for p in aya::programs::loaded_programs().flatten() {
        let name = p.name_as_str().unwrap_or_default().to_owned();
        let ours = ["from_container", "from_underlay", "underlay_xdp"].contains(&name.as_str());
        if !ours || before.contains(&p.id()) {
            continue;
        }
        let verified = p
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("{name}: the kernel reports no verified instruction count"));
        eprintln!("{name} (id {}): {verified} instructions verified", p.id());
        assert!(
            verified < 600_000,
            "{name} took {verified} instructions to verify: too near the limit of 1000000"
        );
        seen += 1;
    }
    assert!(seen >= 3, "the fixture's programs were not found");
}
