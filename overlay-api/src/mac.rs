//! MAC addresses, written `02:42:c6:13:01:02`.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The virtual gateway MAC of a network: locally administered, derived from the VNI.
    pub fn gateway(vni: u32) -> Self {
        let v = vni.to_be_bytes();
        Self([0x02, 0x6f, 0x76, v[1], v[2], v[3]])
    }

    /// A locally administered MAC derived from an IPv4 address (like Kubernetes' 0a:58).
    pub fn from_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Self([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    /// A locally administered MAC for an endpoint without an IPv4 address: 0e:58 and 32
    /// bits of a hash of its IPv6 address and `attempt` (an allocator that finds the MAC
    /// taken in the network tries the next attempt).
    pub fn from_ip6(ip: std::net::Ipv6Addr, attempt: u8) -> Self {
        // FNV-1a: stable across releases and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in ip.octets().into_iter().chain([attempt]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let h = ((h >> 32) as u32 ^ h as u32).to_be_bytes();
        Self([0x0e, 0x58, h[0], h[1], h[2], h[3]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("MAC {s:?}: expected 6 octets"))?;
            // One or two hex digits: `from_str_radix` alone would take "+a" and "00a".
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("MAC {s:?}: {part:?} is not a hex octet"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("MAC {s:?}: {part:?} is not a hex octet"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?}: expected 6 octets"));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_reject_garbage() {
        let m: MacAddr = "0a:58:c6:13:01:02".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:c6:13:01:02");
        assert!("0a:58:c6:13:01".parse::<MacAddr>().is_err());
        assert!("0a:58:c6:13:01:02:03".parse::<MacAddr>().is_err());
        assert!("zz:58:c6:13:01:02".parse::<MacAddr>().is_err());
        for odd in ["+a:58:c6:13:01:02", "0a:58:c6:13:01:072", "0a::c6:13:01:02"] {
            assert!(odd.parse::<MacAddr>().is_err(), "{odd}");
        }
        assert_eq!(
            "A:58:C6:13:1:2".parse::<MacAddr>().unwrap().to_string(),
            "0a:58:c6:13:01:02"
        );
        assert!(!MacAddr([1, 0, 0, 0, 0, 0]).is_unicast());
    }

    #[test]
    fn ipv6_derived_macs_are_stable_local_unicast_and_differ_by_attempt() {
        let ip: std::net::Ipv6Addr = "2001:2:0:1090::2".parse().unwrap();
        let m = MacAddr::from_ip6(ip, 0);
        assert_eq!(m, MacAddr::from_ip6(ip, 0));
        assert!(m.is_unicast() && m.0[0] & 2 != 0 && m.0[..2] == [0x0e, 0x58]);
        assert_ne!(m, MacAddr::from_ip6(ip, 1));
        let next: std::net::Ipv6Addr = "2001:2:0:1090::3".parse().unwrap();
        assert_ne!(m, MacAddr::from_ip6(next, 0));
    }
}
