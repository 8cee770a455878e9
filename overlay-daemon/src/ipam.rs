//! Address management: a network's subnet is cut into blocks that nodes claim (one etcd
//! transaction per claim, so two nodes never hold the same block), and each node hands out
//! addresses from its own blocks. This module is the arithmetic; `store` does the claiming.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("block length /{block_len} does not fit subnet {subnet}: use a length between {} and 30", subnet.prefix_len())]
    BadBlockLen { subnet: Ipv4Net, block_len: u8 },
    #[error("IPv6 block length /{block_len} does not fit subnet {subnet}: use a length between {} and {MAX_BLOCK_LEN6}", subnet.prefix_len())]
    BadBlockLen6 { subnet: Ipv6Net, block_len: u8 },
    #[error("network {0} has no free address block left: use a larger subnet or remove endpoints")]
    Exhausted(String),
    #[error("subnet {subnet} in /{block_len} blocks makes {count} blocks, more than {MAX_BLOCKS}: use larger blocks (a shorter block length) or a smaller subnet")]
    TooManyBlocks {
        subnet: Ipv4Net,
        block_len: u8,
        count: u64,
    },
}

/// Blocks one network may be cut into: every allocation walks them, and a node's view holds
/// one claim per block in use (a /8 in /26 blocks is 262 144).
pub const MAX_BLOCKS: u64 = 1 << 20;

/// Every block of `subnet` with prefix length `block_len`, in address order.
pub fn blocks(subnet: Ipv4Net, block_len: u8) -> Result<Vec<Ipv4Net>, IpamError> {
    check_blocks(subnet, block_len)?;
    Ok(subnet
        .subnets(block_len)
        .map(|s| s.collect())
        .unwrap_or_default())
}

/// Whether `subnet` can be cut into blocks of `block_len`, without making them (validation
/// runs on every network record a daemon reads).
pub fn check_blocks(subnet: Ipv4Net, block_len: u8) -> Result<(), IpamError> {
    if block_len < subnet.prefix_len() || block_len > 30 {
        return Err(IpamError::BadBlockLen { subnet, block_len });
    }
    let count = 1u64 << (block_len - subnet.prefix_len());
    if count > MAX_BLOCKS {
        return Err(IpamError::TooManyBlocks {
            subnet,
            block_len,
            count,
        });
    }
    Ok(())
}

/// The longest IPv6 block length: 16 addresses per block.
pub const MAX_BLOCK_LEN6: u8 = 124;

/// Whether an IPv6 `subnet` can be cut into blocks of `block_len`. IPv6 blocks are never
/// all made (a /64 in /96 blocks is 2^32 of them): `block6` names one by its index.
pub fn check_blocks6(subnet: Ipv6Net, block_len: u8) -> Result<(), IpamError> {
    if block_len < subnet.prefix_len() || block_len > MAX_BLOCK_LEN6 {
        return Err(IpamError::BadBlockLen6 { subnet, block_len });
    }
    Ok(())
}

/// The `index`th block of `subnet` of length `block_len`, if there is one.
pub fn block6(subnet: Ipv6Net, block_len: u8, index: u128) -> Option<Ipv6Net> {
    check_blocks6(subnet, block_len).ok()?;
    let bits = u32::from(block_len - subnet.prefix_len());
    if bits < 128 && index >> bits != 0 {
        return None;
    }
    let size_bits = 128 - u32::from(block_len);
    let base = u128::from(subnet.network()) | index.checked_shl(size_bits)?;
    Ipv6Net::new(Ipv6Addr::from(base), block_len).ok()
}

/// The block of `subnet` that holds `ip`.
pub fn block6_of(ip: Ipv6Addr, block_len: u8) -> Option<Ipv6Net> {
    Ipv6Net::new(ip, block_len).ok().map(|b| b.trunc())
}

/// The first address of an IPv6 `block` that can be given to an endpoint: not the subnet's
/// network address (the subnet-router anycast address), not the gateway, not taken.
pub fn first_free6(
    block: Ipv6Net,
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    taken: &BTreeSet<Ipv6Addr>,
) -> Option<Ipv6Addr> {
    let start = u128::from(block.network());
    let end = u128::from(block.broadcast());
    // Only the taken addresses can be skipped, so the walk is at most |taken| + 3 long.
    (start..=end)
        .map(Ipv6Addr::from)
        .find(|ip| *ip != subnet.network() && *ip != gateway && !taken.contains(ip))
}

/// The first address of `block` that can be given to an endpoint: not the subnet's network
/// or broadcast address, not the gateway, not taken.
pub fn first_free(
    block: Ipv4Net,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (start, end) = (u32::from(block.network()), u32::from(block.broadcast()));
    (start..=end).map(Ipv4Addr::from).find(|ip| {
        *ip != subnet.network()
            && *ip != subnet.broadcast()
            && *ip != gateway
            && !taken.contains(ip)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_network_of_too_many_blocks_is_refused_before_they_are_made() {
        let all: ipnet::Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(matches!(
            super::blocks(all, 26),
            Err(super::IpamError::TooManyBlocks { count, .. }) if count == 1 << 26
        ));
        let slash8: ipnet::Ipv4Net = "10.0.0.0/8".parse().unwrap();
        assert_eq!(super::blocks(slash8, 26).unwrap().len(), 1 << 18);
    }

    use super::*;

    #[test]
    fn blocks_cover_the_subnet() {
        let subnet: Ipv4Net = "198.19.1.0/24".parse().unwrap();
        let b = blocks(subnet, 26).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b[3], "198.19.1.192/26".parse::<Ipv4Net>().unwrap());
        assert!(blocks(subnet, 23).is_err());
        assert!(blocks(subnet, 31).is_err());
    }

    #[test]
    fn ipv6_blocks_are_named_by_index_and_addresses_skip_the_reserved() {
        let subnet: Ipv6Net = "2001:2:0:1080::/64".parse().unwrap();
        assert_eq!(
            block6(subnet, 96, 0).unwrap(),
            "2001:2:0:1080::/96".parse::<Ipv6Net>().unwrap()
        );
        assert_eq!(
            block6(subnet, 96, 3).unwrap(),
            "2001:2:0:1080:0:3::/96".parse::<Ipv6Net>().unwrap()
        );
        assert_eq!(block6(subnet, 96, 1 << 32), None);
        assert_eq!(
            block6_of("2001:2:0:1080:0:3:0:9".parse().unwrap(), 96).unwrap(),
            block6(subnet, 96, 3).unwrap()
        );
        assert!(check_blocks6(subnet, 63).is_err());
        assert!(check_blocks6(subnet, 125).is_err());
        let gw: Ipv6Addr = "2001:2:0:1080::1".parse().unwrap();
        let first = block6(subnet, 96, 0).unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(
            first_free6(first, subnet, gw, &taken),
            Some("2001:2:0:1080::2".parse().unwrap())
        );
        taken.insert("2001:2:0:1080::2".parse().unwrap());
        assert_eq!(
            first_free6(first, subnet, gw, &taken),
            Some("2001:2:0:1080::3".parse().unwrap())
        );
        let tiny = Ipv6Net::new("2001:2:0:1080::10".parse().unwrap(), 126).unwrap();
        taken.extend((0x10..0x14u128).map(|i| Ipv6Addr::from(u128::from(subnet.network()) | i)));
        assert_eq!(first_free6(tiny, subnet, gw, &taken), None);
    }

    #[test]
    fn first_free_skips_reserved_and_taken() {
        let subnet: Ipv4Net = "198.19.1.0/24".parse().unwrap();
        let gw = Ipv4Addr::new(198, 19, 1, 1);
        let first = subnet.subnets(26).unwrap().next().unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(
            first_free(first, subnet, gw, &taken),
            Some(Ipv4Addr::new(198, 19, 1, 2))
        );
        taken.insert(Ipv4Addr::new(198, 19, 1, 2));
        assert_eq!(
            first_free(first, subnet, gw, &taken),
            Some(Ipv4Addr::new(198, 19, 1, 3))
        );
        let last: Ipv4Net = "198.19.1.252/30".parse().unwrap();
        // .252 .253 .254 usable, .255 is the subnet's broadcast.
        taken.extend([252, 253, 254].map(|o| Ipv4Addr::new(198, 19, 1, o)));
        assert_eq!(first_free(last, subnet, gw, &taken), None);
    }
}
