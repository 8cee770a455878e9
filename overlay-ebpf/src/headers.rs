//! Packet headers as byte-array structs (no alignment assumptions) and bounds-checked access
//! through one trait for TC and XDP contexts. Lengths and offsets are `overlay_common::wire`'s.

use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::size_of;
use overlay_common::wire::{
    ARP_HLEN, ETH_HLEN, ICMP_HLEN, IPV4_HLEN, IPV6_HLEN, NDP_HLEN, TCP_HLEN, UDP_HLEN, VXLAN_HLEN,
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

impl EthHdr {
    #[inline(always)]
    pub fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn ihl_bytes(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    #[inline(always)]
    pub fn is_plain_v4(&self) -> bool {
        self.version_ihl == 0x45
    }
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }
    /// True for any fragment (MF set or a non-zero offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x3fff != 0
    }
    #[inline(always)]
    pub fn src_key(&self) -> u32 {
        u32::from_ne_bytes(self.src)
    }
    #[inline(always)]
    pub fn dst_key(&self) -> u32 {
        u32::from_ne_bytes(self.dst)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
    /// The traffic class (DSCP and ECN), as IPv4's TOS byte carries them.
    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        (self.vtc_flow[0] << 4) | (self.vtc_flow[1] >> 4)
    }
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(self.payload_len)
    }
}

/// ICMPv6 neighbour solicitation or advertisement (RFC 4861), before its options.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NdpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    /// Reserved in a solicitation; the R, S, O flags in an advertisement.
    pub flags: [u8; 4],
    pub target: [u8; 16],
}

/// A source or target link-layer address option (RFC 4861 4.6.1) for Ethernet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NdpLinkOpt {
    pub kind: u8,
    /// In units of 8 bytes: 1 for an Ethernet address.
    pub len: u8,
    pub mac: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHdr {
    pub flags: u8,
    pub reserved1: [u8; 3],
    pub vni: [u8; 3],
    pub reserved2: u8,
}

impl VxlanHdr {
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        ((self.vni[0] as u32) << 16) | ((self.vni[1] as u32) << 8) | self.vni[2] as u32
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (top 4 bits) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

/// Ethernet/IPv4 ARP (RFC 826).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

const _: () = assert!(size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(size_of::<Ipv4Hdr>() == IPV4_HLEN);
const _: () = assert!(size_of::<UdpHdr>() == UDP_HLEN);
const _: () = assert!(size_of::<VxlanHdr>() == VXLAN_HLEN);
const _: () = assert!(size_of::<ArpHdr>() == ARP_HLEN);
const _: () = assert!(size_of::<TcpHdr>() == TCP_HLEN);
const _: () = assert!(size_of::<IcmpHdr>() == ICMP_HLEN);
const _: () = assert!(size_of::<Ipv6Hdr>() == IPV6_HLEN);
const _: () = assert!(size_of::<NdpHdr>() == NDP_HLEN);
const _: () = assert!(size_of::<NdpLinkOpt>() == 8);

/// A packet a program can read headers from: TC or XDP, so a parse is written once.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes of the whole packet.
    fn len(&self) -> u32;
    /// Makes the first `len` bytes directly readable, if the context can (TC can).
    fn pull(&self, len: u32) -> bool;

    /// A copy of the `T` at `offset`, or `None` if the packet is shorter.
    #[inline(always)]
    fn header<T: Copy>(&self, offset: usize) -> Option<T> {
        if let Some(p) = ptr_at::<Self, T>(self, offset) {
            return Some(unsafe { *p });
        }
        // In TC the linear part of an skb may end before the header does: pull it in once.
        let want = (offset + size_of::<T>()) as u32;
        if want > self.len() || !self.pull(want) {
            return None;
        }
        ptr_at::<Self, T>(self, offset).map(|p| unsafe { *p })
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn pull(&self, len: u32) -> bool {
        self.pull_data(len).is_ok()
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn pull(&self, _len: u32) -> bool {
        false
    }
}

/// A bounds-checked pointer to a `T` at `offset`, or `None` if the packet is shorter.
#[inline(always)]
fn ptr_at<C: Packet + ?Sized, T>(ctx: &C, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Copies `N` bytes at `off` out of a TC packet through the helper: a variable offset into
/// packet data confuses the verifier, and the helper's length must be a constant.
#[inline(always)]
pub fn load<const N: usize>(
    ctx: &TcContext,
    off: usize,
    buf: &mut [u8; N],
    fail: overlay_common::DropReason,
) -> Result<(), overlay_common::DropReason> {
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    if ret != 0 {
        return Err(fail);
    }
    Ok(())
}

/// RFC 1071 checksum of an IPv4 header whose `check` field is zero.
#[inline(always)]
pub fn ipv4_checksum(hdr: &Ipv4Hdr) -> [u8; 2] {
    let words = unsafe { &*(hdr as *const Ipv4Hdr as *const [[u8; 2]; 10]) };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += u16::from_be_bytes(words[i]) as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Adds big-endian 16-bit words of `bytes` to a one's complement sum (RFC 1071), unfolded.
#[inline(always)]
pub fn csum_add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a sum from `csum_add` into the 16-bit checksum field value.
#[inline(always)]
pub fn csum_finish(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
