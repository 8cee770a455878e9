//! The etcd key layout (version 1), under a configurable prefix (default `/overlay`):
//!
//! ```text
//! <prefix>/v1/networks/<network>                  NetworkRecord
//! <prefix>/v1/nodes/<node>                        NodeRecord      (node's lease)
//! <prefix>/v1/blocks/<network>/<address>-<len>    BlockRecord     (owner's lease; IPv4 or IPv6)
//! <prefix>/v1/endpoints/<network>/<ip>            EndpointRecord  (owner's lease; its IPv4
//!                                                 address, or IPv6 on an IPv6-only network)
//! <prefix>/v1/endpoints6/<network>/<ipv6>         Endpoint6Record (owner's lease; which
//!                                                 endpoint of the network holds the address)
//! <prefix>/v1/vnis/<vni>                          network name    (keeps VNIs unique)
//! <prefix>/v1/services/<service>                  ServiceRecord
//! <prefix>/v1/vips/<network>_<vip>_<port>_<proto> service name    (keeps VIPs unique)
//! ```
//!
//! Everything a node owns is attached to its lease, so it disappears from the cluster when
//! the node stops renewing. Names are restricted to `[A-Za-z0-9._-]` so keys parse back.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

pub const LAYOUT_VERSION: &str = "v1";

/// A parsed key of the layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Network(String),
    Node(String),
    Block {
        network: String,
        block: IpNet,
    },
    /// An endpoint, named by its IPv4 address, or by its IPv6 one on an IPv6-only network
    /// (releases before 0.3 skip those keys: they do not parse as IPv4).
    Endpoint {
        network: String,
        ip: IpAddr,
    },
    /// An IPv6 address of a dual-stack network's endpoint. A key of its own, not a field of
    /// the endpoint record: the address is claimed like the IPv4 one (created only if
    /// absent), and the endpoint record stays what the previous release writes, so a node
    /// downgraded to it re-publishes its endpoints unchanged.
    Endpoint6 {
        network: String,
        ip6: Ipv6Addr,
    },
    /// Who an endpoint belongs to (its pod, its Docker endpoint), beside the endpoint's
    /// record rather than in it: the previous release re-publishes the record it can
    /// reproduce and takes any difference for another node's address.
    EndpointInfo {
        network: String,
        ip: IpAddr,
    },
    /// Reserves a VNI for one network (created in the same transaction as the network).
    Vni(u32),
    Service(String),
    /// Reserves a VIP:port/proto of a network for one service (same transaction).
    ServiceVip(String),
}

/// Builds and parses keys under one prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    root: String,
}

/// Names of networks and nodes: what keys can hold unambiguously.
pub use overlay_api::labels::valid_name;

impl Layout {
    pub fn new(prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Self {
            root: format!("{prefix}/{LAYOUT_VERSION}/"),
        }
    }

    /// Everything of this layout version (for list and watch).
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn networks(&self) -> String {
        format!("{}networks/", self.root)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }
    pub fn blocks(&self, network: &str) -> String {
        format!("{}blocks/{network}/", self.root)
    }
    pub fn endpoints(&self, network: &str) -> String {
        format!("{}endpoints/{network}/", self.root)
    }
    pub fn endpoints6(&self, network: &str) -> String {
        format!("{}endpoints6/{network}/", self.root)
    }
    pub fn all_endpoints(&self) -> String {
        format!("{}endpoints/", self.root)
    }
    pub fn services(&self) -> String {
        format!("{}services/", self.root)
    }

    pub fn key(&self, key: &Key) -> String {
        match key {
            Key::Network(n) => format!("{}{n}", self.networks()),
            Key::Node(n) => format!("{}{n}", self.nodes()),
            Key::Block { network, block } => {
                format!(
                    "{}{}-{}",
                    self.blocks(network),
                    block.network(),
                    block.prefix_len()
                )
            }
            Key::Endpoint { network, ip } => format!("{}{ip}", self.endpoints(network)),
            Key::Endpoint6 { network, ip6 } => format!("{}{ip6}", self.endpoints6(network)),
            Key::EndpointInfo { network, ip } => {
                format!("{}endpointinfo/{network}/{ip}", self.root)
            }
            Key::Vni(vni) => format!("{}vnis/{vni}", self.root),
            Key::Service(n) => format!("{}{n}", self.services()),
            Key::ServiceVip(id) => format!("{}vips/{id}", self.root),
        }
    }

    /// Parses a key of this layout; `None` for anything else (other versions, strangers).
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.root)?;
        let mut parts = rest.split('/');
        let kind = parts.next()?;
        let a = parts.next()?;
        let b = parts.next();
        if parts.next().is_some() || !valid_name(a) {
            return None;
        }
        match (kind, b) {
            ("vnis", None) => Some(Key::Vni(a.parse().ok()?)),
            ("networks", None) => Some(Key::Network(a.to_owned())),
            ("nodes", None) => Some(Key::Node(a.to_owned())),
            ("services", None) => Some(Key::Service(a.to_owned())),
            ("vips", None) => Some(Key::ServiceVip(a.to_owned())),
            ("blocks", Some(b)) => {
                let (ip, len) = b.split_once('-')?;
                let block = IpNet::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
                (block.network() == block.addr()).then(|| Key::Block {
                    network: a.to_owned(),
                    block,
                })
            }
            ("endpoints6", Some(b)) => Some(Key::Endpoint6 {
                network: a.to_owned(),
                ip6: b.parse().ok()?,
            }),
            ("endpointinfo", Some(b)) => {
                let ip: IpAddr = b.parse().ok()?;
                (ip.to_string() == b).then(|| Key::EndpointInfo {
                    network: a.to_owned(),
                    ip,
                })
            }
            ("endpoints", Some(b)) => {
                // One text per address (no "::ffff:a.b.c.d", no leading zeros), so two keys
                // never name one endpoint.
                let ip: IpAddr = b.parse().ok()?;
                let mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
                (ip.to_string() == b && !mapped).then(|| Key::Endpoint {
                    network: a.to_owned(),
                    ip,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let l = Layout::new("/overlay/");
        for key in [
            Key::Network("red".into()),
            Key::Node("host-1.example".into()),
            Key::Block {
                network: "red".into(),
                block: "198.19.1.64/26".parse().unwrap(),
            },
            Key::Block {
                network: "red".into(),
                block: "2001:2:0:1080::/96".parse().unwrap(),
            },
            Key::Endpoint {
                network: "red".into(),
                ip: "198.19.1.70".parse().unwrap(),
            },
            Key::Endpoint {
                network: "red".into(),
                ip: "2001:2:0:1080::71".parse().unwrap(),
            },
            Key::Endpoint6 {
                network: "red".into(),
                ip6: "2001:2:0:1080::70".parse().unwrap(),
            },
            Key::EndpointInfo {
                network: "red".into(),
                ip: "198.19.1.70".parse().unwrap(),
            },
            Key::Vni(100),
            Key::Service("web".into()),
            Key::ServiceVip("red_198.18.250.1_80_tcp".into()),
            Key::ServiceVip("red_2001-2-0-1200--80_80_tcp".into()),
        ] {
            let text = l.key(&key);
            assert!(text.starts_with("/overlay/v1/"), "{text}");
            assert_eq!(l.parse(&text), Some(key));
        }
    }

    #[test]
    fn strangers_are_not_parsed() {
        let l = Layout::new("/overlay");
        for key in [
            "/overlay/v2/networks/red",
            "/overlay/v1/networks/red/extra",
            "/overlay/v1/networks/",
            "/overlay/v1/blocks/red/198.19.1.65-26",
            "/overlay/v1/endpoints/red/not-an-ip",
            "/overlay/v1/endpoints/red/2001:2:0:1080:0::71",
            "/overlay/v1/endpoints/red/::ffff:198.19.1.2",
            "/overlay/v1/services/x/y",
            "/other/v1/networks/red",
            "/overlay/v1/networks/r d",
        ] {
            assert_eq!(l.parse(key), None, "{key}");
        }
    }
}
