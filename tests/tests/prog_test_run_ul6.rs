//! Packet handling over an IPv6 underlay (VXLAN in IPv6/UDP), through BPF_PROG_TEST_RUN on
//! hand-built frames: encapsulation byte for byte, decapsulation, and malformed or foreign
//! outer IPv6 (the fixture: `overlay_tests::prog_fixture::fixture_ul6`).

use overlay_common::{Direction, DropReason};
use overlay_tests::{frames6, prog_fixture::*, traffic};

#[test]
fn encapsulates_in_ipv6_byte_for_byte() {
    let f = fixture_ul6();
    // DSCP 46 (EF) and ECN 01: the outer traffic class carries both.
    let mut inner = f.outbound(b"hello ipv6 underlay");
    inner[15] = 0xb9;
    inner[24..26].copy_from_slice(&[0, 0]);
    let ck = traffic::checksum(&inner[14..34]);
    inner[24..26].copy_from_slice(&ck.to_be_bytes());
    let out = f.run_from_container(&inner);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out.frame.len(),
        inner.len() + 70,
        "70 bytes of outer headers"
    );
    let o = &out.frame;
    assert_eq!(o[12..14], [0x86, 0xdd], "outer ethertype IPv6");
    let vx = traffic::parse_vxlan6(o, 4789).expect("VXLAN in IPv6/UDP on the way out");
    assert_eq!(vx.version_class_flow >> 28, 6, "version");
    // The inner TOS is the outer traffic class; the flow label comes from the flow hash.
    assert_eq!((vx.version_class_flow >> 20) & 0xff, 0xb9, "traffic class");
    assert_eq!(vx.payload_len as usize, o.len() - 14 - 40, "payload length");
    assert_eq!(vx.hop_limit, 64);
    assert_eq!(vx.outer_src, ip6(LOCAL_VTEP6));
    assert_eq!(vx.outer_dst, ip6(REMOTE_VTEP6));
    assert!(
        vx.udp_src >= 49152,
        "source port {} from the flow hash",
        vx.udp_src
    );
    assert_eq!(vx.udp_len, vx.payload_len, "UDP length");
    assert_eq!(vx.udp_checksum, 0, "zero UDP checksum (RFC 6935)");
    assert_eq!(
        vx.header,
        [0x08, 0, 0, 0, 0, 0, VNI as u8, 0],
        "VXLAN header"
    );
    assert_eq!(vx.inner, inner, "inner frame carried unchanged");
    assert_eq!(f.traffic(Direction::EncapTx), 1);

    // One flow, one label and port (ECMP keeps it on one path); the labels of many flows
    // differ.
    let again = f.run_from_container(&inner);
    let vx2 = traffic::parse_vxlan6(&again.frame, 4789).unwrap();
    assert_eq!(vx2.version_class_flow, vx.version_class_flow);
    assert_eq!(vx2.udp_src, vx.udp_src);
    let labels: std::collections::BTreeSet<u32> = (0..16u16)
        .map(|port| {
            let frame = traffic::inner_udp_frame(
                f.me.1 .0,
                f.remote.1 .0,
                f.me.0,
                f.remote.0,
                9000 + port,
                b"x",
            );
            let out = f.run_from_container(&frame);
            traffic::parse_vxlan6(&out.frame, 4789)
                .unwrap()
                .version_class_flow
                & 0xf_ffff
        })
        .collect();
    assert!(labels.len() > 8, "flow labels of 16 flows: {labels:x?}");
}

#[test]
fn decapsulates_vxlan_in_ipv6_for_a_local_endpoint() {
    let f = fixture_ul6();
    let inner = f.inner_to_me();
    let frame = f.inbound6(ip6(REMOTE_VTEP6), VNI, &inner);
    assert_eq!(f.xdp(&frame).verdict, XDP_PASS, "XDP lets it through");
    let out = f.run_from_underlay(&frame, 0);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.frame, inner, "exactly the inner frame is delivered");
    assert_eq!(f.traffic(Direction::DecapRx), 1);
    // What the encapsulation emits is what the decapsulation takes: a frame this node
    // encapsulated, turned around (swap the VTEPs), is accepted.
    let sent = f.run_from_container(&f.outbound(b"round trip")).frame;
    let mut back = sent.clone();
    back[14 + 8..14 + 24].copy_from_slice(&ip6(REMOTE_VTEP6).octets());
    back[14 + 24..14 + 40].copy_from_slice(&ip6(LOCAL_VTEP6).octets());
    let reply = f.inner_to_me();
    back.truncate(14 + 70 - 14);
    back.extend_from_slice(&reply);
    let len = (back.len() - 54) as u16;
    back[18..20].copy_from_slice(&len.to_be_bytes());
    back[58..60].copy_from_slice(&len.to_be_bytes());
    assert_eq!(f.run_from_underlay(&back, 0).verdict, TC_ACT_REDIRECT);
}

#[test]
fn vxlan_in_ipv6_from_a_stranger_or_for_no_one_is_dropped_and_counted() {
    let f = fixture_ul6();
    let inner = f.inner_to_me();
    // Not a VTEP of the cluster: dropped in XDP, and in TC where XDP is not attached.
    let stranger = f.inbound6(ip6("2001:2:0:ff00::99"), VNI, &inner);
    assert_eq!(f.xdp(&stranger).verdict, XDP_DROP);
    assert_eq!(f.run_from_underlay(&stranger, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::UnknownVtep), 2);
    // An IPv4 VTEP is keyed by its IPv4-mapped address: VXLAN in IPv6 from that address
    // must not pass as the IPv4 VTEP's, even for an endpoint that lives behind it.
    let mut f = f;
    let v4_vtep: std::net::IpAddr = ip(REMOTE_VTEP).into();
    f.dp.maps.vteps.insert(v4_vtep, 3, None).unwrap();
    let behind_v4 = overlay_daemon::maps::EndpointEntry {
        vni: VNI,
        ip: Some(f.remote.0),
        ip6: None,
        mac: f.remote.1 .0,
        location: overlay_daemon::maps::Location::Remote { vtep: v4_vtep },
    };
    let local = overlay_daemon::vtep::Vteps {
        v4: None,
        v6: Some(ip6(LOCAL_VTEP6)),
        prefer: Default::default(),
    };
    f.dp.maps.endpoints.upsert(&behind_v4, &local).unwrap();
    let mapped = f.inbound6("::ffff:198.18.0.2".parse().unwrap(), VNI, &inner);
    assert_eq!(f.xdp(&mapped).verdict, XDP_DROP);
    assert_eq!(f.run_from_underlay(&mapped, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::UnknownVtep), 4);
    // A VNI nobody uses, and a known one our endpoint is not in.
    let unknown_vni = f.inbound6(ip6(REMOTE_VTEP6), 4242, &inner);
    assert_eq!(f.run_from_underlay(&unknown_vni, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::UnknownVni), 1);
    let other = f.inbound6(ip6(REMOTE_VTEP6), OTHER_VNI, &inner);
    assert_eq!(f.xdp(&other).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::DecapNotLocal), 1);
    // An inner source that is not behind the sending VTEP.
    let forged = traffic::inner_udp_frame(
        f.other_net.1 .0,
        f.me.1 .0,
        f.other_net.0,
        f.me.0,
        9000,
        b"x",
    );
    let forged = f.inbound6(ip6(REMOTE_VTEP6), VNI, &forged);
    assert_eq!(f.run_from_underlay(&forged, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::DecapSpoofedSource), 1);
}

#[test]
fn malformed_or_foreign_outer_ipv6_is_dropped_or_left_to_the_stack() {
    let f = fixture_ul6();
    let full = f.inbound6(ip6(REMOTE_VTEP6), VNI, &f.inner_to_me());
    // VXLAN cut inside its header: ours (to our VTEP, our port) and malformed.
    let cut = &full[..14 + 40 + 8 + 4];
    assert_eq!(f.run_from_underlay(cut, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.xdp(cut).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::VxlanMalformed), 2);
    // The inner frame cut short.
    let cut = &full[..70 + 10];
    assert_eq!(f.run_from_underlay(cut, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::Malformed), 1);
    // The inner length claims more than the packet holds.
    let mut inner = f.inner_to_me();
    inner[16..18].copy_from_slice(&1400u16.to_be_bytes());
    let long = f.inbound6(ip6(REMOTE_VTEP6), VNI, &inner);
    assert_eq!(f.run_from_underlay(&long, 0).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::DecapFailed), 1);

    let passes = |frame: &[u8], what: &str| {
        let out = f.run_from_underlay(frame, 0);
        assert_eq!(out.verdict, TC_NEXT, "{what}: left to the stack");
        assert_eq!(out.frame, frame, "{what}: untouched");
        assert_eq!(f.xdp(frame).verdict, XDP_PASS, "{what}: XDP");
    };
    // An extension header before UDP (hop-by-hop options): the overlay sends none.
    let grown = |mut f: Vec<u8>, next: u8, ext: [u8; 8]| {
        f[14 + 6] = next;
        f.splice(54..54, ext);
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        f
    };
    let hbh = grown(full.clone(), 0, [17, 0, 1, 4, 0, 0, 0, 0]);
    passes(&hbh, "hop-by-hop header");
    // A fragment header (nothing this datapath sends).
    let frag = grown(full.clone(), 44, [17, 0, 0, 1, 0, 0, 0, 1]);
    passes(&frag, "fragment");
    // To another address, or another port, or not version 6.
    let mut elsewhere = full.clone();
    elsewhere[14 + 39] = 0x33;
    passes(&elsewhere, "another destination");
    let dns = frames6::udp6_frame(
        [2, 0, 0, 0, 0, 2],
        [2, 0, 0, 0, 0, 1],
        ip6(REMOTE_VTEP6),
        ip6(LOCAL_VTEP6),
        53,
        b"not vxlan",
    );
    passes(&dns, "another port");
    let mut v5 = full.clone();
    v5[14] = 0x50;
    passes(&v5, "version 5");
    // (An outer IPv6 header cut short cannot be run: test_run refuses IPv6 frames shorter
    // than the header. The parse reads it whole or leaves the packet alone.)
    // IPv4 VXLAN to a node with an IPv6 VTEP only: no IPv4 VTEP to be addressed to.
    let v4 = f.inbound(VNI, &f.inner_to_me());
    passes(&v4, "IPv4 to a node without an IPv4 VTEP");
}

#[test]
fn a_packet_too_big_for_the_ipv6_underlay_gets_fragmentation_needed_at_1430() {
    let f = fixture_ul6();
    // 1430 bytes of IPv4 fit a 1500-byte underlay with 70 bytes of headers; 1431 do not.
    let fits = f.outbound(&vec![0u8; 1430 - 28]);
    assert_eq!(f.run_from_container(&fits).verdict, TC_ACT_REDIRECT);
    // (The frames carry DF.)
    let big = f.outbound(&vec![0u8; 1431 - 28]);
    let out = f.run_from_container(&big);
    assert_eq!(
        f.traffic(Direction::IcmpFragNeeded),
        1,
        "verdict {}",
        out.verdict
    );
    // ICMP type 3 code 4, next-hop MTU 1430 (bytes 6-7 of the ICMP header).
    let icmp = &out.frame[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1430);
}
