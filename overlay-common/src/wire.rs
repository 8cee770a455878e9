//! Protocol constants shared by the datapath, the daemon and the tests.

/// IANA port for VXLAN (RFC 7348).
pub const VXLAN_DEFAULT_PORT: u16 = 4789;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers added by encapsulation.
pub const VXLAN_ENCAP_OVERHEAD: u32 = 14 + 20 + 8 + 8;
/// What the container MTU loses to the outer headers: underlay MTU - 50.
pub const VXLAN_MTU_OVERHEAD: u32 = 20 + 8 + 8 + 14;
/// The VXLAN "I" flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Source ports for the outer UDP header come from this range (RFC 7348 section 5).
pub const VXLAN_SRC_PORT_MIN: u16 = 49152;
pub const VXLAN_SRC_PORT_MAX: u16 = 65535;

/// Converts IPv4 octets to the datapath's key representation.
#[inline(always)]
pub const fn ipv4_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts the datapath's key representation back to octets.
#[inline(always)]
pub const fn ipv4_octets(key: u32) -> [u8; 4] {
    key.to_ne_bytes()
}
