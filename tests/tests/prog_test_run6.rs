//! IPv6 in each program, on hand-built frames through BPF_PROG_TEST_RUN: neighbour discovery
//! answered byte for byte, forged discovery and sources dropped with their reasons,
//! extension headers and fragments carried, truncated headers dropped, encapsulation,
//! decapsulation and "packet too big".

use overlay_common::{Direction, DropReason};
use overlay_daemon::{maps::LocalIdentity, tables::MacAddr};
use overlay_tests::{frames6::*, prog_fixture::*, traffic};

fn gateway_mac() -> [u8; 6] {
    MacAddr::gateway(VNI).0
}

#[test]
fn a_solicitation_for_the_gateway_is_answered_byte_for_byte() {
    let f = fixture();
    let me = f.me.1 .0;
    let ns = neighbour_solicit(me, ip6(ME6), ip6(GATEWAY6), Some(me));
    let out = f.run_from_container(&ns);
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "sent back into the container");
    // Router, solicited, override: the gateway is the container's router.
    let want = neighbour_advert(gateway_mac(), ip6(GATEWAY6), me, ip6(ME6), 0xe0);
    assert_eq!(out.frame, want);
    assert_eq!(f.traffic(Direction::NdpReply), 1);
}

#[test]
fn a_solicitation_for_an_endpoint_is_answered_with_its_mac() {
    let f = fixture();
    let me = f.me.1 .0;
    let ns = neighbour_solicit(me, ip6(ME6), ip6(REMOTE6), Some(me));
    let out = f.run_from_container(&ns);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let want = neighbour_advert(f.remote.1 .0, ip6(REMOTE6), me, ip6(ME6), 0x60);
    assert_eq!(out.frame, want);
    // From the link-local address, without an option (a unicast probe may omit it).
    let ll = link_local(me);
    let ns = neighbour_solicit(me, ll, ip6(GATEWAY6), None);
    let out = f.run_from_container(&ns);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let want = neighbour_advert(gateway_mac(), ip6(GATEWAY6), me, ll, 0xe0);
    assert_eq!(out.frame, want);
    assert_eq!(f.traffic(Direction::NdpReply), 2);
}

#[test]
fn duplicate_address_detection_and_unknown_targets_get_no_answer() {
    let f = fixture();
    let me = f.me.1 .0;
    // DAD: from the unspecified address, for the container's own address.
    let dad = neighbour_solicit(me, "::".parse().unwrap(), ip6(ME6), None);
    assert_eq!(f.run_from_container(&dad).verdict, TC_ACT_SHOT);
    let own = neighbour_solicit(me, ip6(ME6), ip6(ME6), Some(me));
    assert_eq!(f.run_from_container(&own).verdict, TC_ACT_SHOT);
    let nobody = neighbour_solicit(me, ip6(ME6), ip6("2001:2:0:1080::99"), Some(me));
    assert_eq!(f.run_from_container(&nobody).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::NdpUnknownTarget), 3);
    assert_eq!(f.traffic(Direction::NdpReply), 0);
}

#[test]
fn forged_discovery_is_dropped_as_spoofed() {
    let f = fixture();
    let me = f.me.1 .0;
    let other = f.remote.1 .0;
    // A source link-layer option that is not the container's MAC.
    let ns = neighbour_solicit(me, ip6(ME6), ip6(GATEWAY6), Some(other));
    assert_eq!(f.run_from_container(&ns).verdict, TC_ACT_SHOT);
    // A solicitation in another endpoint's name.
    let ns = neighbour_solicit(me, ip6(REMOTE6), ip6(GATEWAY6), Some(me));
    assert_eq!(f.run_from_container(&ns).verdict, TC_ACT_SHOT);
    // An advertisement claiming another endpoint's address for this container's MAC, from
    // that endpoint's address and from the container's own.
    let mut na = neighbour_advert(me, ip6(REMOTE6), gateway_mac(), ip6(GATEWAY6), 0x20);
    na[6..12].copy_from_slice(&me);
    assert_eq!(f.run_from_container(&na).verdict, TC_ACT_SHOT);
    let mut rest = vec![0x20, 0, 0, 0];
    rest.extend_from_slice(&ip6(REMOTE6).octets());
    rest.extend_from_slice(&[2, 1]);
    rest.extend_from_slice(&me);
    let msg = icmp6(ip6(ME6), ip6(GATEWAY6), ND_NEIGHBOR_ADVERT, 0, &rest);
    let own_src = ipv6_frame(
        me,
        gateway_mac(),
        ip6(ME6),
        ip6(GATEWAY6),
        NH_ICMPV6,
        255,
        &msg,
    );
    assert_eq!(f.run_from_container(&own_src).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::SpoofedNdp), 4);
    // A link-local source that is not derived from the MAC (stable-privacy addresses) is
    // answered: the answer only goes back to this container.
    let ll = "fe80::1234:5678:9abc:def0".parse().unwrap();
    let ns = neighbour_solicit(me, ll, ip6(GATEWAY6), Some(me));
    let out = f.run_from_container(&ns);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out.frame,
        neighbour_advert(gateway_mac(), ip6(GATEWAY6), me, ll, 0xe0)
    );
    assert_eq!(f.traffic(Direction::NdpReply), 1);
    // Its own address: nothing forged, but nobody to tell either.
    let na = neighbour_advert(me, ip6(ME6), gateway_mac(), ip6(GATEWAY6), 0x20);
    assert_eq!(f.run_from_container(&na).verdict, TC_ACT_SHOT);
    // A router solicitation (the route comes with the address), a hop limit below 255.
    let rs = icmp6(
        ip6(ME6),
        "ff02::2".parse().unwrap(),
        ND_ROUTER_SOLICIT,
        0,
        &[0; 4],
    );
    let rs = ipv6_frame(
        me,
        [0x33, 0x33, 0, 0, 0, 2],
        ip6(ME6),
        "ff02::2".parse().unwrap(),
        NH_ICMPV6,
        255,
        &rs,
    );
    assert_eq!(f.run_from_container(&rs).verdict, TC_ACT_SHOT);
    let mut ns = neighbour_solicit(me, ip6(ME6), ip6(GATEWAY6), Some(me));
    ns[21] = 64;
    assert_eq!(f.run_from_container(&ns).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::NdpUnsupported), 3);
}

/// Neighbour discovery hidden behind extension headers: a receiving kernel would process
/// it, so it is never forwarded (an advertisement from the container's own address naming
/// another endpoint would poison the receiver's cache).
#[test]
fn discovery_behind_extension_headers_is_never_forwarded() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    let (src, dst) = (ip6(ME6), ip6(REMOTE6));
    let mut rest = vec![0x20, 0, 0, 0];
    rest.extend_from_slice(&ip6(GATEWAY6).octets());
    rest.extend_from_slice(&[2, 1]);
    rest.extend_from_slice(&me);
    let na = icmp6(src, dst, ND_NEIGHBOR_ADVERT, 0, &rest);
    let behind = |chain: &[(u8, Vec<u8>)]| {
        // Each (type, header with next-header byte first); the last points at ICMPv6.
        let mut payload = Vec::new();
        for (i, (_, hdr)) in chain.iter().enumerate() {
            let mut hdr = hdr.clone();
            hdr[0] = chain.get(i + 1).map_or(NH_ICMPV6, |(t, _)| *t);
            payload.extend_from_slice(&hdr);
        }
        payload.extend_from_slice(&na);
        ipv6_frame(me, remote, src, dst, chain[0].0, 255, &payload)
    };
    let hbh = (NH_HOP_BY_HOP, vec![0, 0, 1, 4, 0, 0, 0, 0]);
    let dest_opts = (60u8, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let first_fragment = (NH_FRAGMENT, vec![0, 0, 0, 0, 0, 0, 0, 9]);
    for chain in [
        vec![hbh.clone()],
        vec![dest_opts.clone()],
        vec![hbh.clone(), dest_opts.clone()],
        vec![first_fragment.clone()],
        // Longer than the datapath looks through: dropped whatever follows.
        vec![
            hbh.clone(),
            hbh.clone(),
            hbh.clone(),
            hbh.clone(),
            hbh.clone(),
        ],
    ] {
        let frame = behind(&chain);
        assert_eq!(
            f.run_from_container(&frame).verdict,
            TC_ACT_SHOT,
            "{chain:?}"
        );
    }
    assert_eq!(f.drops(DropReason::Ipv6HiddenNdp), 5);
    // A later fragment of anything, and UDP behind two headers, are carried.
    let later = (NH_FRAGMENT, vec![0, 0, 0x05, 0x00, 0, 0, 0, 9]);
    assert_eq!(
        f.run_from_container(&behind(&[later])).verdict,
        TC_ACT_REDIRECT
    );
    let mut two = vec![60u8, 0, 1, 4, 0, 0, 0, 0, NH_UDP, 0, 1, 4, 0, 0, 0, 0];
    two.extend_from_slice(&udp6(src, dst, 9000, b"x"));
    let frame = ipv6_frame(me, remote, src, dst, NH_HOP_BY_HOP, 64, &two);
    assert_eq!(f.run_from_container(&frame).verdict, TC_ACT_REDIRECT);
    assert_eq!(f.traffic(Direction::EncapTx), 2);
}

#[test]
fn a_spoofed_ipv6_source_is_dropped() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    let spoofed = udp6_frame(me, remote, ip6(REMOTE6), ip6(REMOTE6), 9000, b"x");
    assert_eq!(f.run_from_container(&spoofed).verdict, TC_ACT_SHOT);
    // Link-local is for neighbour discovery only.
    let ll = udp6_frame(me, remote, link_local(me), ip6(REMOTE6), 9000, b"x");
    assert_eq!(f.run_from_container(&ll).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::SpoofedIp6), 2);
    // A network without IPv6 for this container: nothing of IPv6 passes.
    let mut dp = f;
    dp.dp
        .maps
        .local_ifaces
        .sync(&[LocalIdentity {
            bandwidth: None,
            ip6: None,
            ifindex: CONTAINER_IFINDEX,
            vni: VNI,
            ip: Some(dp.me.0),
            mac: me,
        }])
        .unwrap();
    let fine = udp6_frame(me, remote, ip6(ME6), ip6(REMOTE6), 9000, b"x");
    assert_eq!(dp.run_from_container(&fine).verdict, TC_ACT_SHOT);
    assert_eq!(dp.drops(DropReason::Ipv6Disabled), 1);
}

#[test]
fn ipv6_is_encapsulated_and_the_gateway_path_finds_the_endpoint() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    let frame = udp6_frame(me, remote, ip6(ME6), ip6(REMOTE6), 9000, b"hello over IPv6");
    let out = f.run_from_container(&frame);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let vx = traffic::parse_vxlan(&out.frame, 4789).expect("VXLAN on the way out");
    assert_eq!(
        (vx.outer_src, vx.outer_dst),
        (ip(LOCAL_VTEP), ip(REMOTE_VTEP))
    );
    assert_eq!(vx.vni, VNI);
    assert_eq!(vx.inner, frame, "inner frame carried unchanged");
    // Sent to the gateway's MAC (off-link in the container's view): switched by address.
    let via_gw = udp6_frame(me, gateway_mac(), ip6(ME6), ip6(REMOTE6), 9000, b"x");
    let out = f.run_from_container(&via_gw);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let vx = traffic::parse_vxlan(&out.frame, 4789).unwrap();
    assert_eq!(
        &vx.inner[0..6],
        &remote,
        "inner destination MAC is the endpoint's"
    );
    assert_eq!(f.traffic(Direction::EncapTx), 2);
}

#[test]
fn extension_headers_and_fragments_are_carried_and_truncation_is_dropped() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    let udp = udp6(ip6(ME6), ip6(REMOTE6), 9000, b"behind an extension header");
    // Hop-by-hop options (PadN) before UDP.
    let mut hbh = vec![NH_UDP, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&udp);
    let frame = ipv6_frame(me, remote, ip6(ME6), ip6(REMOTE6), NH_HOP_BY_HOP, 64, &hbh);
    let out = f.run_from_container(&frame);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(traffic::parse_vxlan(&out.frame, 4789).unwrap().inner, frame);
    // A first fragment.
    let mut frag = vec![NH_UDP, 0, 0, 1, 0, 0, 0, 7];
    frag.extend_from_slice(&udp);
    let frame = ipv6_frame(me, remote, ip6(ME6), ip6(REMOTE6), NH_FRAGMENT, 64, &frag);
    assert_eq!(f.run_from_container(&frame).verdict, TC_ACT_REDIRECT);
    // An ICMPv6 error (not discovery) is forwarded like any packet.
    let unreach = icmp6(ip6(ME6), ip6(REMOTE6), 1, 4, &[0; 52]);
    let frame = ipv6_frame(me, remote, ip6(ME6), ip6(REMOTE6), NH_ICMPV6, 64, &unreach);
    assert_eq!(f.run_from_container(&frame).verdict, TC_ACT_REDIRECT);
    assert_eq!(f.traffic(Direction::EncapTx), 3);
    // Truncated: an IPv6 header cut short (inside VXLAN: the kernel's test_run refuses
    // such a frame from a container), a solicitation without its target.
    let full = udp6_frame(me, remote, ip6(ME6), ip6(REMOTE6), 9000, b"x");
    let to_me = udp6_frame(remote, me, ip6(REMOTE6), ip6(ME6), 9000, b"x");
    let cut = f.inbound(VNI, &to_me[..14 + 30]);
    assert_eq!(f.run_from_underlay(&cut, 0).verdict, TC_ACT_SHOT);
    let ns = neighbour_solicit(me, ip6(ME6), ip6(GATEWAY6), None);
    assert_eq!(
        f.run_from_container(&ns[..14 + 40 + 8]).verdict,
        TC_ACT_SHOT
    );
    // Version 4 in an IPv6 ethertype.
    let mut bad = full.clone();
    bad[14] = 0x45;
    assert_eq!(f.run_from_container(&bad).verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(DropReason::Malformed), 3);
}

#[test]
fn ipv6_is_decapsulated_and_a_forged_inner_source_is_dropped() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    let inner = udp6_frame(remote, me, ip6(REMOTE6), ip6(ME6), 9000, b"to me");
    let out = f.run_from_underlay(&f.inbound(VNI, &inner), 0);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.frame, inner, "exactly the inner frame is delivered");
    assert_eq!(f.xdp(&f.inbound(VNI, &inner)).verdict, XDP_PASS);
    // The remote endpoint's MAC with an IPv6 source that is not its own.
    let forged = udp6_frame(remote, me, ip6("2001:2:0:1080::66"), ip6(ME6), 9000, b"x");
    assert_eq!(
        f.run_from_underlay(&f.inbound(VNI, &forged), 0).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(f.xdp(&f.inbound(VNI, &forged)).verdict, XDP_DROP);
    // Our own address as the source, from the remote MAC.
    let forged = udp6_frame(remote, me, ip6(ME6), ip6(ME6), 9000, b"x");
    assert_eq!(f.xdp(&f.inbound(VNI, &forged)).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::DecapSpoofedSource), 3);
    // A neighbour solicitation never crosses the underlay: multicast reaches nobody.
    let ns = neighbour_solicit(remote, ip6(REMOTE6), ip6(ME6), Some(remote));
    assert_eq!(f.xdp(&f.inbound(VNI, &ns)).verdict, XDP_DROP);
    assert_eq!(f.drops(DropReason::DecapNotLocal), 1);
}

#[test]
fn a_packet_too_big_for_the_underlay_gets_packet_too_big_from_the_gateway() {
    let f = fixture();
    let me = f.me.1 .0;
    let remote = f.remote.1 .0;
    // 1500 bytes of IPv6: 50 more than the overlay carries over a 1500-byte underlay.
    let big = udp6_frame(me, remote, ip6(ME6), ip6(REMOTE6), 9000, &[7; 1500 - 48]);
    assert_eq!(big.len(), 14 + 1500);
    let out = f.run_from_container(&big);
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "answered into the container");
    let r = &out.frame;
    assert_eq!(&r[0..6], &me);
    assert_eq!(&r[6..12], &gateway_mac());
    assert_eq!(&r[12..14], &[0x86, 0xdd]);
    assert_eq!(r[20], NH_ICMPV6);
    assert_eq!(&r[22..38], &ip6(GATEWAY6).octets());
    assert_eq!(&r[38..54], &ip6(ME6).octets());
    let icmp = &r[54..];
    assert_eq!(u16::from_be_bytes([r[18], r[19]]) as usize, icmp.len());
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1450);
    assert_eq!(&icmp[8..48], &big[14..54], "the offending header is quoted");
    assert_eq!(checksum6(ip6(GATEWAY6), ip6(ME6), NH_ICMPV6, icmp), 0);
    assert_eq!(f.traffic(Direction::Icmp6TooBig), 1);
    // One byte less fits.
    let fits = udp6_frame(me, remote, ip6(ME6), ip6(REMOTE6), 9000, &[7; 1450 - 48]);
    assert_eq!(f.run_from_container(&fits).verdict, TC_ACT_REDIRECT);
    assert_eq!(f.traffic(Direction::EncapTx), 1);
}
