//! Mutations of a template: blind ones (bit flips, bytes and words set to interesting values,
//! truncation, extension, garbage tails) and field-aware ones that vary every header field
//! the programs read: Ethernet addresses and ethertypes (IPv6, VLAN, QinQ), IPv4 IHL,
//! options, fragment bits, lengths, checksum, protocol and addresses, UDP ports, length and
//! checksum, every VXLAN field (flags, reserved bits, VNI), the inner Ethernet and IPv4
//! headers, TCP flags and ARP fields. Offsets are the template's (container: IPv4 at 14;
//! underlay: outer IPv4 at 14, UDP at 34, VXLAN at 42, inner Ethernet at 50, inner IPv4 at
//! 64); after a mutation that shifts headers, later ones hit whatever is there.

use std::net::Ipv4Addr;

use super::{
    frames::{fix_ipv4_checksum, Mac, BROADCAST},
    rng::Rng,
    world::{World, LOCAL_VTEP, UNKNOWN_VTEP, VTEP_B, VTEP_C},
};

/// Frames never grow beyond this (test_run takes at most a page minus its overheads).
pub const MAX_FRAME: usize = 3000;

const BYTES: [u8; 16] = [
    0x00, 0x01, 0x7f, 0x80, 0xff, 0x45, 0x08, 0x40, 0x11, 0x06, 0x20, 0x3f, 0x0f, 0x46, 0x4f, 0xfe,
];
const WORDS: [u16; 14] = [
    0, 1, 0xffff, 0x8000, 0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 4789, 20, 34, 0x4000, 0x2000,
];
const ETHERTYPES: [u16; 9] = [
    0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x88cc, 0x0000, 0x05dc, 0x0600,
];
const FRAG: [u16; 9] = [
    0x2000, 0x6000, 0x0001, 0x1fff, 0x8000, 0xc000, 0x0000, 0x4000, 0x2010,
];

fn set16(f: &mut [u8], off: usize, v: u16) {
    if off + 2 <= f.len() {
        f[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn set(f: &mut [u8], off: usize, bytes: &[u8]) {
    if off + bytes.len() <= f.len() {
        f[off..off + bytes.len()].copy_from_slice(bytes);
    }
}

fn some_mac(w: &World, rng: &mut Rng) -> Mac {
    match rng.below(10) {
        0 => BROADCAST,
        1 => [0x01, 0x00, 0x5e, 0, 0, rng.u8()],
        2 => {
            let mut m = [0u8; 6];
            rng.fill(&mut m);
            m
        }
        3 => rng.pick(&w.networks).gw_mac,
        _ => rng.pick(&w.endpoints).mac,
    }
}

fn some_ip(w: &World, rng: &mut Rng) -> Ipv4Addr {
    match rng.below(10) {
        0 => Ipv4Addr::from(rng.u32()),
        1 => Ipv4Addr::UNSPECIFIED,
        2 => Ipv4Addr::BROADCAST,
        3 => rng.pick(&w.networks).gw_ip,
        4 => rng.pick(&w.services).vip,
        _ => rng.pick(&w.endpoints).ip,
    }
}

fn some_vtep(rng: &mut Rng) -> Ipv4Addr {
    one_of!(
        rng,
        VTEP_B,
        VTEP_C,
        UNKNOWN_VTEP,
        LOCAL_VTEP,
        Ipv4Addr::from(rng.u32())
    )
}

/// IPv4 IHL byte, fragment field, total length, protocol, TTL, checksum, or options, of the
/// header at `ip`.
fn ipv4_field(f: &mut Vec<u8>, ip: usize, rng: &mut Rng) -> &'static str {
    match rng.below(7) {
        0 => {
            let v = if rng.chance(70) {
                0x40 | rng.below(16) as u8
            } else {
                rng.u8()
            };
            set(f, ip, &[v]);
            "ip-version-ihl"
        }
        1 => {
            set16(f, ip + 6, *rng.pick(&FRAG));
            "ip-fragment-bits"
        }
        2 => {
            let len = f.len().saturating_sub(ip) as u16;
            let v = one_of!(
                rng,
                0,
                20,
                28,
                len,
                len.wrapping_add(1),
                len.wrapping_sub(1),
                0xffff,
                rng.u16()
            );
            set16(f, ip + 2, v);
            "ip-total-length"
        }
        3 => {
            set(f, ip + 9, &[one_of!(rng, 17, 6, 1, 47, 0, 255, rng.u8())]);
            "ip-protocol"
        }
        4 => {
            set(f, ip + 8, &[*rng.pick(&[0, 1, 255])]);
            "ip-ttl"
        }
        5 => {
            set16(f, ip + 10, rng.u16());
            "ip-checksum"
        }
        _ => {
            // Options: the header grows by 4..40 bytes, IHL and total length follow.
            if f.len() < ip + 20 {
                return "ip-options";
            }
            let words = rng.range(1, 10);
            let opt: Vec<u8> = match rng.below(3) {
                0 => vec![1; words * 4],
                1 => vec![0; words * 4],
                _ => rng.bytes(words * 4),
            };
            f.splice(ip + 20..ip + 20, opt);
            f[ip] = 0x40 | (5 + words as u8);
            let tot = u16::from_be_bytes([f[ip + 2], f[ip + 3]]).wrapping_add((words * 4) as u16);
            set16(f, ip + 2, tot);
            "ip-options"
        }
    }
}

/// A field-aware change of an underlay (VXLAN) frame.
fn underlay_field(w: &World, f: &mut Vec<u8>, rng: &mut Rng) -> &'static str {
    match rng.below(20) {
        0..=3 => ipv4_field(f, 14, rng),
        4 => {
            set(f, 26, &some_vtep(rng).octets());
            "outer-source"
        }
        5 => {
            let d = one_of!(
                rng,
                LOCAL_VTEP,
                VTEP_B,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::from(rng.u32())
            );
            set(f, 30, &d.octets());
            "outer-destination"
        }
        6 => {
            let (off, v) = if rng.chance(50) {
                (34, one_of!(rng, 0, 4789, 49152, 65535, rng.u16()))
            } else {
                (
                    36,
                    one_of!(rng, 4789, 4790, 8472, 6081, 0, 65535, rng.u16()),
                )
            };
            set16(f, off, v);
            "udp-port"
        }
        7 => {
            let len = f.len().saturating_sub(34) as u16;
            let v = one_of!(
                rng,
                0,
                8,
                16,
                len,
                len.wrapping_add(1),
                len.wrapping_sub(9),
                0xffff,
                rng.u16()
            );
            if rng.chance(70) {
                set16(f, 38, v);
                "udp-length"
            } else {
                set16(f, 40, rng.u16());
                "udp-checksum"
            }
        }
        8 | 9 => {
            set(
                f,
                42,
                &[one_of!(
                    rng,
                    0x00,
                    0x08,
                    0x0c,
                    0x88,
                    0x48,
                    0x80,
                    0xff,
                    0x09,
                    0xf7,
                    rng.u8()
                )],
            );
            "vxlan-flags"
        }
        10 => {
            if rng.chance(60) {
                let r = [rng.u8(), rng.u8(), rng.u8()];
                set(f, 43, &r);
            } else {
                set(f, 49, &[rng.u8().max(1)]);
            }
            "vxlan-reserved"
        }
        11 | 12 => {
            let vni = match rng.below(6) {
                0 => rng.u32() & 0xff_ffff,
                1 => 0,
                2 => 0xff_ffff,
                3 => 101,
                _ => rng.pick(&w.networks).vni,
            };
            set(f, 46, &vni.to_be_bytes()[1..]);
            "vxlan-vni"
        }
        13 => {
            let m = some_mac(w, rng);
            set(f, if rng.chance(50) { 50 } else { 56 }, &m);
            "inner-mac"
        }
        14 => {
            set16(
                f,
                62,
                if rng.chance(80) {
                    *rng.pick(&ETHERTYPES)
                } else {
                    rng.u16()
                },
            );
            "inner-ethertype"
        }
        15 => {
            let room = f.len().saturating_sub(64) as u16;
            let v = one_of!(
                rng,
                0,
                20,
                room,
                room.wrapping_add(1),
                room.wrapping_sub(1),
                0xffff,
                rng.u16()
            );
            set16(f, 66, v);
            "inner-total-length"
        }
        16 | 17 => ipv4_field(f, 64, rng),
        18 => {
            let a = some_ip(w, rng);
            set(f, if rng.chance(60) { 76 } else { 80 }, &a.octets());
            "inner-address"
        }
        _ => {
            // A VLAN tag between the outer Ethernet header and IPv4.
            if f.len() >= 14 {
                f.splice(12..12, [0x81, 0x00, 0x00, rng.u8()]);
            }
            "outer-vlan-tag"
        }
    }
}

/// A field-aware change of a container frame.
fn container_field(w: &World, f: &mut Vec<u8>, rng: &mut Rng) -> &'static str {
    match rng.below(14) {
        0 | 1 => {
            let m = some_mac(w, rng);
            set(f, 0, &m);
            "eth-destination"
        }
        2 => {
            let m = some_mac(w, rng);
            set(f, 6, &m);
            "eth-source"
        }
        3 => {
            set16(
                f,
                12,
                if rng.chance(80) {
                    *rng.pick(&ETHERTYPES)
                } else {
                    rng.u16()
                },
            );
            "ethertype"
        }
        4..=6 => ipv4_field(f, 14, rng),
        7 => {
            let a = some_ip(w, rng);
            set(f, 26, &a.octets());
            "ip-source"
        }
        8 => {
            let a = some_ip(w, rng);
            set(f, 30, &a.octets());
            "ip-destination"
        }
        9 => {
            let p = one_of!(rng, 80, 53, 5353, 8080, 0, 65535, rng.u16());
            set16(f, if rng.chance(50) { 34 } else { 36 }, p);
            "l4-port"
        }
        10 => {
            set(
                f,
                47,
                &[one_of!(
                    rng,
                    0x02,
                    0x04,
                    0x11,
                    0x12,
                    0x14,
                    0x3f,
                    0x00,
                    rng.u8()
                )],
            );
            "tcp-flags"
        }
        11 | 12 => {
            // ARP: one field of htype, ptype, hlen, plen, oper, sender or target.
            match rng.below(6) {
                0 => set16(f, 14, *rng.pick(&[0, 6, 0xffff])),
                1 => set16(f, 16, *rng.pick(&[0x86dd, 0, 0x0801])),
                2 => set(f, 18, &[*rng.pick(&[0, 4, 8, 16])]),
                3 => set(f, 19, &[*rng.pick(&[0, 6, 16])]),
                4 => set16(f, 20, *rng.pick(&[0, 2, 3, 4, 0xffff])),
                _ => {
                    let (mac, addr) = (some_mac(w, rng), some_ip(w, rng));
                    match rng.below(3) {
                        0 => set(f, 22, &mac),
                        1 => set(f, 28, &addr.octets()),
                        _ => set(f, 38, &addr.octets()),
                    }
                }
            }
            "arp-field"
        }
        _ => {
            if f.len() >= 14 {
                f.splice(12..12, [0x81, 0x00, 0x00, rng.u8()]);
            }
            "vlan-tag"
        }
    }
}

/// A blind change anywhere in the frame.
fn blind(f: &mut Vec<u8>, rng: &mut Rng) -> &'static str {
    if f.is_empty() {
        f.extend({
            let n = rng.range(1, 64);
            rng.bytes(n)
        });
        return "extend";
    }
    match rng.below(7) {
        0 | 1 => {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            "bit-flip"
        }
        2 => {
            let i = rng.below(f.len());
            f[i] = *rng.pick(&BYTES);
            "interesting-byte"
        }
        3 => {
            let i = rng.below(f.len());
            set16(f, i & !1, *rng.pick(&WORDS));
            "interesting-word"
        }
        4 => {
            let n = rng.below(f.len() + 1);
            f.truncate(n);
            "truncate"
        }
        5 => {
            let n = rng.range(1, 64);
            f.extend(rng.bytes(n));
            "extend"
        }
        _ => {
            let i = rng.below(f.len());
            let tail = rng.bytes(f.len() - i);
            f[i..].copy_from_slice(&tail);
            "garbage-tail"
        }
    }
}

/// Applies 0..=6 mutations (fewer more often), then sometimes repairs the IPv4 checksums so
/// the frame is not always obviously corrupt. Returns the mutations' names.
pub fn mutate(w: &World, f: &mut Vec<u8>, underlay: bool, rng: &mut Rng) -> Vec<&'static str> {
    let n = match rng.below(100) {
        0..=29 => 0,
        30..=64 => 1,
        65..=84 => 2,
        _ => rng.range(3, 6),
    };
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = if rng.chance(60) {
            if underlay {
                underlay_field(w, f, rng)
            } else {
                container_field(w, f, rng)
            }
        } else {
            blind(f, rng)
        };
        tags.push(tag);
    }
    if n > 0 && rng.chance(50) {
        fix_ipv4_checksum(f, 14);
        if underlay {
            fix_ipv4_checksum(f, 64);
        }
    }
    f.truncate(MAX_FRAME);
    tags
}
