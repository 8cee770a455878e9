//! Path MTU across the overlay: a packet with DF set that would not fit the underlay once
//! encapsulated is answered with ICMP "fragmentation needed" from the network's gateway, so
//! the container's kernel lowers its path MTU and its transfers go on instead of stalling on
//! a silent drop; the datapath follows an operator's change of the underlay MTU at once.

use std::time::{Duration, Instant};

use overlay_common::{Direction, DropReason};
use overlay_tests::{traffic, Topology, TopologySpec};

fn frag_needed(t: &Topology, host: usize) -> u64 {
    t.counters(host).traffic(Direction::IcmpFragNeeded).packets
}

fn wait_log(t: &Topology, host: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.daemon_log(host).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            t.daemon_log(host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_packet_too_big_for_the_underlay_gets_fragmentation_needed_and_transfers_go_on() {
    let mut t = Topology::new(TopologySpec::new(2).network("red", 100, "198.19.1.0/24"));
    t.add_container(0, "a", "red", 1);
    t.add_container(1, "b", "red", 1);
    t.write_tables();
    t.start_all(&[]);
    let (a, b) = (t.container("a"), t.container("b"));
    // Full size (MTU 1450: 1422 bytes of ICMP payload) crosses while the underlay is 1500.
    let (ok, out) = traffic::df_ping(&a.ns, b.ip, 1422, 1);
    assert!(ok, "a full-size ping before the change: {out}");

    // The operator lowers h1's underlay MTU under running containers (still MTU 1450).
    t.hosts[0].ns.ip(&["link", "set", "ul0", "mtu", "1400"]);
    wait_log(&t, 0, "the underlay MTU changed");

    // A full-size packet with DF: "fragmentation needed" from the gateway with the MTU that
    // fits, and the kernel remembers it for that destination.
    let before = frag_needed(&t, 0);
    let (ok, out) = traffic::df_ping(&a.ns, b.ip, 1422, 1);
    assert!(!ok && out.contains("mtu = 1350"), "{out}");
    assert!(
        out.contains(&format!("From {}", a.gateway)),
        "not from the gateway: {out}"
    );
    assert_eq!(frag_needed(&t, 0), before + 1);
    let (ok, out) = traffic::df_ping(&a.ns, b.ip, 1422, 1);
    assert!(
        !ok && out.contains("mtu=1350"),
        "the path MTU was not learnt: {out}"
    );
    let (ok, out) = traffic::df_ping(&a.ns, b.ip, 1322, 1);
    assert!(ok, "a ping that fits the new MTU: {out}");

    // Without DF the datapath does not fragment: dropped and counted. (The container must
    // have forgotten the MTU, or its kernel fragments the packet itself.)
    a.ns.ip(&["route", "flush", "cache"]);
    let too_big = t.counters(0).drops(DropReason::TooBig).packets;
    let out = a.ns.output(
        "ping",
        &[
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "dont",
            "-s",
            "1422",
            &b.ip.to_string(),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(t.counters(0).drops(DropReason::TooBig).packets, too_big + 1);

    // TCP finds the path MTU by itself, with segmentation offload (the check applies to each
    // segment) and without (every segment a packet of its own); the bytes arrive intact.
    for offload in ["on", "off"] {
        a.ns.ip(&["route", "flush", "cache"]);
        a.ns.run("ethtool", &["-K", "eth0", "tso", offload, "gso", offload]);
        let before = frag_needed(&t, 0);
        let (sent, received) = traffic::tcp_transfer(&b.ns, &a.ns, b.ip, 5201, 16 << 20);
        assert_eq!(sent, received, "16 MiB with offload {offload}");
        assert!(
            frag_needed(&t, 0) > before,
            "offload {offload}: the transfer never met the lower MTU"
        );
    }

    // Back to 1500: full-size packets cross again once the container forgets the old MTU.
    t.hosts[0].ns.ip(&["link", "set", "ul0", "mtu", "1500"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a.ns.ip(&["route", "flush", "cache"]);
        if traffic::df_ping(&a.ns, b.ip, 1422, 1).0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "full size after the MTU came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
