//! Frame builders (Ethernet, IPv4, TCP, UDP, ICMP, ARP, VXLAN) with valid lengths and
//! checksums, and the checksum and hex helpers the checks use.

use std::net::Ipv4Addr;

pub use crate::traffic::checksum;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_VLAN: u16 = 0x8100;
pub const ETH_P_QINQ: u16 = 0x88a8;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const BROADCAST: [u8; 6] = [0xff; 6];

pub type Mac = [u8; 6];

pub fn eth(dst: Mac, src: Mac, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header without options, checksum filled in.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = ipv4_header(src, dst, proto, l4.len()).to_vec();
    p.extend_from_slice(l4);
    p
}

/// The L4 checksum over the IPv4 pseudo-header and `l4` (with its checksum field zero).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(12 + l4.len());
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.extend_from_slice(&[0, proto]);
    buf.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    buf.extend_from_slice(l4);
    checksum(&buf)
}

pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    if flags & 0x10 != 0 {
        t[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    }
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(data);
    let c = l4_checksum(src, dst, PROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram; `with_checksum` false leaves the (optional over IPv4) checksum zero.
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    data: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(data);
    if with_checksum {
        let c = match l4_checksum(src, dst, PROTO_UDP, &u) {
            0 => 0xffff,
            c => c,
        };
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

pub fn icmp_echo(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut i = vec![kind, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&seq.to_be_bytes());
    i.extend_from_slice(data);
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

/// An Ethernet/IPv4 ARP message (28 bytes).
pub fn arp(oper: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// A VXLAN header and the inner frame.
pub fn vxlan(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut p = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
    p.extend_from_slice(inner);
    p
}

/// Recomputes the checksum of the IPv4 header at `off`, if the whole header is there.
pub fn fix_ipv4_checksum(frame: &mut [u8], off: usize) {
    let Some(&vihl) = frame.get(off) else {
        return;
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 || frame.len() < off + ihl {
        return;
    }
    frame[off + 10] = 0;
    frame[off + 11] = 0;
    let c = checksum(&frame[off..off + ihl]);
    frame[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
}

pub fn ip_at(frame: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[off], frame[off + 1], frame[off + 2], frame[off + 3])
}

pub fn mac_at(frame: &[u8], off: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[off..off + 6]);
    m
}

pub fn be16(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// Lowercase hex, 32 bytes per line.
pub fn hex(frame: &[u8]) -> String {
    let mut s = String::with_capacity(frame.len() * 2 + frame.len() / 32 + 1);
    for (i, b) in frame.iter().enumerate() {
        if i > 0 && i % 32 == 0 {
            s.push('\n');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses hex digits, ignoring whitespace.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).map_err(|e| e.to_string())?;
            u8::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_and_hex_round_trips() {
        let (a, b) = (Ipv4Addr::new(10, 1, 0, 11), Ipv4Addr::new(10, 1, 0, 12));
        let seg = tcp(a, b, 1000, 80, 0x02, b"hi");
        assert_eq!(l4_checksum(a, b, PROTO_TCP, &seg), 0);
        let dgram = udp(a, b, 1000, 53, b"abc", true);
        assert_eq!(l4_checksum(a, b, PROTO_UDP, &dgram), 0);
        let pkt = ipv4(a, b, PROTO_UDP, &dgram);
        assert_eq!(checksum(&pkt[..20]), 0);
        let f = eth([2; 6], [4; 6], ETH_P_IP, &pkt);
        assert_eq!(unhex(&hex(&f)).unwrap(), f);
    }
}
