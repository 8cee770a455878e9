//! A loaded, unattached datapath with a small dual-stack table, for BPF_PROG_TEST_RUN tests
//! of each program on hand-built frames: the real programs and maps in the kernel, nothing
//! attached, nothing sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{netns::unique_id, traffic};
use overlay_common::{maps::programs, Direction, DropReason};
use overlay_daemon::{
    datapath::{self, Datapath, PinLayout, TcMode, TestRunOutput},
    maps::{EndpointEntry, LocalIdentity, Location, NetworkEntry, NodeDatapathConfig},
    tables::MacAddr,
    vtep::{Prefer, Vteps},
};

pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
pub const TC_NEXT: i32 = -1;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;

pub const VNI: u32 = 100;
pub const OTHER_VNI: u32 = 200;
/// The test "container" is behind ifindex 1: BPF_PROG_TEST_RUN runs skbs on loopback.
pub const CONTAINER_IFINDEX: u32 = 1;

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A loaded, unattached datapath with a small table, removed (pins included) on drop.
pub struct Fixture {
    pub dp: Datapath,
    _pins: Pins,
    pub me: (Ipv4Addr, MacAddr),
    pub remote: (Ipv4Addr, MacAddr),
    pub other_net: (Ipv4Addr, MacAddr),
}

/// A fixture's pin directory, removed on drop: made before the datapath is loaded, so a
/// load or a setup step that fails leaves nothing in /sys/fs/bpf either.
struct Pins(PinLayout);

impl Drop for Pins {
    fn drop(&mut self) {
        for e in datapath::remove(&self.0, None) {
            eprintln!("cleanup: {e}");
        }
        let _ = std::fs::remove_dir(self.0.root().parent().unwrap());
    }
}

/// The IPv6 side of network `VNI` (`OTHER_VNI` has none).
pub const GATEWAY6: &str = "2001:2:0:1080::1";
pub const ME6: &str = "2001:2:0:1080::11";
pub const REMOTE6: &str = "2001:2:0:1080::21";

pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub const LOCAL_VTEP: &str = "198.18.0.1";
pub const REMOTE_VTEP: &str = "198.18.0.2";
/// The VTEPs of `fixture_ul6`: an IPv6-only underlay.
pub const LOCAL_VTEP6: &str = "2001:2:0:ff00::1";
pub const REMOTE_VTEP6: &str = "2001:2:0:ff00::2";

/// The underlay of the fixture: IPv4 VTEPs, or IPv6 ones only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    V4,
    V6,
}

pub fn fixture() -> Fixture {
    fixture_on(Underlay::V4)
}

/// The same table over an IPv6-only underlay.
pub fn fixture_ul6() -> Fixture {
    fixture_on(Underlay::V6)
}

fn fixture_on(underlay: Underlay) -> Fixture {
    let (local, remote_vtep): (Vteps, IpAddr) = match underlay {
        Underlay::V4 => (Vteps::v4(ip(LOCAL_VTEP)), ip(REMOTE_VTEP).into()),
        Underlay::V6 => (
            Vteps {
                v4: None,
                v6: Some(ip6(LOCAL_VTEP6)),
                prefer: Prefer::Ipv4,
            },
            ip6(REMOTE_VTEP6).into(),
        ),
    };
    let pins = Pins(PinLayout::new(format!(
        "/sys/fs/bpf/ovt-unit-{}/node",
        unique_id()
    )));
    let mut dp = Datapath::load_unattached(&pins.0, TcMode::Auto, 0).expect("load datapath");
    let me = (ip("198.19.1.11"), MacAddr::from_ip(ip("198.19.1.11")));
    let remote = (ip("198.19.1.21"), MacAddr::from_ip(ip("198.19.1.21")));
    let other_net = (ip("198.19.2.21"), MacAddr::from_ip(ip("198.19.2.21")));
    let maps = &mut dp.maps;
    maps.config
        .set(&NodeDatapathConfig {
            vteps: local,
            underlay_ifindex: 1,
            underlay_mtu: 1500,
            vxlan_port: 4789,
        })
        .unwrap();
    let nets = [
        NetworkEntry {
            gateway_ip6: Some(ip6(GATEWAY6)),
            vni: VNI,
            gateway_ip: Some(ip("198.19.1.1")),
            gateway_mac: MacAddr::gateway(VNI).0,
        },
        NetworkEntry {
            gateway_ip6: None,
            vni: OTHER_VNI,
            gateway_ip: Some(ip("198.19.2.1")),
            gateway_mac: MacAddr::gateway(OTHER_VNI).0,
        },
    ];
    maps.networks.sync(&nets).unwrap();
    maps.vteps.sync([(remote_vtep, 2, None)]).unwrap();
    let eps = [
        EndpointEntry {
            ip6: Some(ip6(ME6)),
            vni: VNI,
            ip: Some(me.0),
            mac: me.1 .0,
            location: Location::Local {
                ifindex: CONTAINER_IFINDEX,
            },
        },
        EndpointEntry {
            ip6: Some(ip6(REMOTE6)),
            vni: VNI,
            ip: Some(remote.0),
            mac: remote.1 .0,
            location: Location::Remote { vtep: remote_vtep },
        },
        EndpointEntry {
            ip6: None,
            vni: OTHER_VNI,
            ip: Some(other_net.0),
            mac: other_net.1 .0,
            location: Location::Remote { vtep: remote_vtep },
        },
    ];
    maps.endpoints.sync(&eps, &local).unwrap();
    maps.local_ifaces
        .sync(&[LocalIdentity {
            bandwidth: None,
            ip6: Some(ip6(ME6)),
            ifindex: CONTAINER_IFINDEX,
            vni: VNI,
            ip: Some(me.0),
            mac: me.1 .0,
        }])
        .unwrap();
    Fixture {
        dp,
        _pins: pins,
        me,
        remote,
        other_net,
    }
}

/// A `struct __sk_buff` (192 bytes) with the fields test_run lets us set.
pub fn skb_ctx(ifindex: u32, gso_segs: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx
}

impl Fixture {
    pub fn run_from_container(&self, frame: &[u8]) -> TestRunOutput {
        self.dp
            .test_run(
                programs::FROM_CONTAINER,
                frame,
                Some(&skb_ctx(CONTAINER_IFINDEX, 0)),
            )
            .expect("test run")
    }
    pub fn run_from_underlay(&self, frame: &[u8], gso_segs: u32) -> TestRunOutput {
        self.dp
            .test_run(programs::FROM_UNDERLAY, frame, Some(&skb_ctx(0, gso_segs)))
            .expect("test run")
    }
    pub fn xdp(&self, frame: &[u8]) -> TestRunOutput {
        self.dp
            .test_run(programs::UNDERLAY_XDP, frame, None)
            .expect("test run")
    }
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dp
            .maps
            .counters
            .snapshot()
            .unwrap()
            .drops(reason)
            .packets
    }
    pub fn traffic(&self, dir: Direction) -> u64 {
        self.dp
            .maps
            .counters
            .snapshot()
            .unwrap()
            .traffic(dir)
            .packets
    }
    /// A frame from our container to the remote endpoint.
    pub fn outbound(&self, payload: &[u8]) -> Vec<u8> {
        traffic::inner_udp_frame(
            self.me.1 .0,
            self.remote.1 .0,
            self.me.0,
            self.remote.0,
            9000,
            payload,
        )
    }
    /// VXLAN from the remote VTEP carrying a frame from the remote endpoint to ours.
    pub fn inbound(&self, vni: u32, inner: &[u8]) -> Vec<u8> {
        traffic::udp_frame(
            ip(REMOTE_VTEP),
            ip(LOCAL_VTEP),
            50000,
            4789,
            &traffic::vxlan_payload(vni, 0x08, inner),
        )
    }
    /// VXLAN over IPv6 from `src` (the remote VTEP of `fixture_ul6`, or a stranger) with a
    /// zero UDP checksum, as the datapath sends it.
    pub fn inbound6(&self, src: Ipv6Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let payload = traffic::vxlan_payload(vni, 0x08, inner);
        let mut udp = Vec::with_capacity(8 + payload.len());
        udp.extend_from_slice(&50000u16.to_be_bytes());
        udp.extend_from_slice(&4789u16.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&payload);
        crate::frames6::ipv6_frame(
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            src,
            ip6(LOCAL_VTEP6),
            17,
            64,
            &udp,
        )
    }
    pub fn inner_to_me(&self) -> Vec<u8> {
        traffic::inner_udp_frame(
            self.remote.1 .0,
            self.me.1 .0,
            self.remote.0,
            self.me.0,
            9000,
            b"payload",
        )
    }
}
