//! The `endpoints6/` keys by the endpoint they name, for the view: which IPv6 address an
//! endpoint has. Normally one claim per endpoint; a stale one (a crash between deleting an
//! endpoint's two keys, a node downgraded to 0.2 deleting only the endpoint record) stands
//! until its node's reaper removes it, and while two claims by the endpoint's own node stand
//! neither counts, whatever order they were listed in.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use super::records::NodeRecord;

#[derive(Clone, Debug, Default)]
pub struct Claims6(HashMap<(String, Ipv4Addr), Vec<(Ipv6Addr, String)>>);

impl Claims6 {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// `node` claims `ip6` for the endpoint (`network`, `ip`).
    pub fn add(&mut self, network: &str, ip: Ipv4Addr, ip6: Ipv6Addr, node: &str) {
        let claims = self.0.entry((network.to_owned(), ip)).or_default();
        claims.retain(|(a, _)| *a != ip6);
        claims.push((ip6, node.to_owned()));
    }

    /// The claim of `ip6` for (`network`, `ip`) is gone.
    pub fn remove(&mut self, network: &str, ip: Ipv4Addr, ip6: Ipv6Addr) {
        let id = (network.to_owned(), ip);
        if let Some(claims) = self.0.get_mut(&id) {
            claims.retain(|(a, _)| *a != ip6);
            if claims.is_empty() {
                self.0.remove(&id);
            }
        }
    }

    /// The address the endpoint's own node claims for it, if exactly one.
    pub fn own(&self, network: &str, ip: Ipv4Addr, node: &str) -> Option<Ipv6Addr> {
        let claims = self.0.get(&(network.to_owned(), ip))?;
        let mut own = claims.iter().filter(|(_, n)| n == node);
        match (own.next(), own.next()) {
            (Some((ip6, _)), None) => Some(*ip6),
            _ => None,
        }
    }
}

/// Whether a node's release carries IPv6 (0.3 and later; no release: before 0.2).
pub fn carries_ipv6(node: &NodeRecord) -> bool {
    let Some(release) = node.release.as_deref() else {
        return false;
    };
    let mut parts = release.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (0, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn one_own_claim_counts_in_any_order_and_two_count_as_none() {
        let ip = Ipv4Addr::new(198, 19, 1, 2);
        let (old, new) = (a("2001:2::5"), a("2001:2::9"));
        for order in [[old, new], [new, old]] {
            let mut c = Claims6::default();
            for ip6 in order {
                c.add("red", ip, ip6, "h1");
            }
            assert_eq!(c.own("red", ip, "h1"), None, "two claims: neither");
            c.remove("red", ip, old);
            assert_eq!(c.own("red", ip, "h1"), Some(new), "the stale one reaped");
        }
        let mut c = Claims6::default();
        c.add("red", ip, old, "h2");
        assert_eq!(c.own("red", ip, "h1"), None, "another node's claim");
        c.add("red", ip, new, "h1");
        assert_eq!(c.own("red", ip, "h1"), Some(new));
        c.remove("red", ip, new);
        c.remove("red", ip, old);
        assert!(c.0.is_empty());
    }

    #[test]
    fn releases_from_0_3_carry_ipv6() {
        let node = |release: Option<&str>| NodeRecord {
            version: 1,
            vtep_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            vtep_ip6: None,
            vtep_prefer: Default::default(),
            vtep_mac: crate::tables::MacAddr([2, 0, 0, 0, 0, 1]),
            registered_at: 0,
            instance: None,
            container_mtu: None,
            release: release.map(str::to_owned),
        };
        for (release, ipv6) in [
            (None, false),
            (Some("0.2.0"), false),
            (Some("0.3.0"), true),
            (Some("0.10.1"), true),
            (Some("1.0.0"), true),
            (Some("garbage"), false),
        ] {
            assert_eq!(carries_ipv6(&node(release)), ipv6, "{release:?}");
        }
    }
}
