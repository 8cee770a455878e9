//! Services in the tables: a VIP:port in one network balanced over backends
//! (Minuteman-style).

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => overlay_common::wire::IPPROTO_TCP,
            Proto::Udp => overlay_common::wire::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("protocol {s:?}: use tcp or udp")),
        }
    }
}

/// A service backend: an endpoint address and port, with a relative weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Of the service VIP's family.
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Largest backend weight (keeps Maglev's turn arithmetic and shares sensible).
pub const MAX_WEIGHT: u32 = 1000;

impl FromStr for BackendSpec {
    type Err = String;
    /// `IP:PORT` or `IP:PORT@WEIGHT` (`[IPv6]:PORT` for IPv6).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("backend {s:?}: write IP:PORT or IP:PORT@WEIGHT ([IPv6]:PORT for IPv6)");
        let (addr, weight) = match s.split_once('@') {
            Some((a, w)) => (a, w.parse::<u32>().map_err(|_| bad())?),
            None => (s, 1),
        };
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| bad())?;
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(format!("backend {s:?}: weight must be 1..={MAX_WEIGHT}"));
        }
        Ok(Self {
            ip: addr.ip(),
            port: addr.port(),
            weight,
        })
    }
}

/// A service as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub network: String,
    /// IPv4, or IPv6 on a network with an IPv6 subnet.
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
}

/// A service ready for the datapath: its VNI and the backends that are alive now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidService {
    pub name: String,
    pub vni: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Live backends, sorted; configured ones and those joined by label.
    pub backends: Vec<BackendSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_syntax() {
        let b: BackendSpec = "198.19.1.2:80@5".parse().unwrap();
        assert_eq!((b.port, b.weight), (80, 5));
        assert_eq!("198.19.1.2:80".parse::<BackendSpec>().unwrap().weight, 1);
        let b: BackendSpec = "[2001:2:0:1001::5]:8080@2".parse().unwrap();
        assert_eq!(
            (b.ip.to_string().as_str(), b.port, b.weight),
            ("2001:2:0:1001::5", 8080, 2)
        );
        for bad in [
            "198.19.1.2",
            "198.19.1.2:80@0",
            "198.19.1.2:80@x",
            "host:80",
            "198.19.1.2:80@1001",
            "2001:2::5:80",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad}");
        }
    }
}
