//! What a result says: the ADD result made from the daemon's endpoint, in the shape of the
//! configuration's version, and CHECK's comparison of a recorded result with the endpoint.

use overlay_api::{Endpoint, MacAddr, Sandbox};

use crate::types::{code, CniError, CniResult, Dns, Interface, IpConfig, Route};

/// The ADD result in the shape of `version`.
pub fn add_result(version: &str, ep: &Endpoint) -> CniResult {
    let host = Interface {
        name: ep.host_ifname().unwrap_or_default().to_owned(),
        mac: ep.host_mac.map(|m| m.to_string()),
        ..Default::default()
    };
    let container = Interface {
        name: ep.ifname.clone(),
        mac: Some(ep.mac.to_string()),
        mtu: (version == "1.1.0").then_some(ep.mtu),
        sandbox: match &ep.sandbox {
            Sandbox::Netns(p) => Some(p.display().to_string()),
            Sandbox::Runtime => None,
        },
    };
    let (mut ips, mut routes) = (Vec::new(), Vec::new());
    if let Some(v4) = ep.ipv4 {
        ips.push(IpConfig {
            version: version.starts_with("0.").then(|| "4".to_owned()),
            address: format!("{}/{}", v4.ip, v4.prefix_len),
            gateway: Some(v4.gateway.to_string()),
            interface: Some(1),
        });
        if ep.default_routes.ipv4 {
            routes.push(Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(v4.gateway.to_string()),
            });
        }
    }
    if let Some(v6) = ep.ipv6 {
        ips.push(IpConfig {
            version: version.starts_with("0.").then(|| "6".to_owned()),
            address: format!("{}/{}", v6.ip, v6.prefix_len),
            gateway: Some(v6.gateway.to_string()),
            interface: Some(1),
        });
        if ep.default_routes.ipv6 {
            routes.push(Route {
                dst: "::/0".into(),
                gw: Some(v6.gateway.to_string()),
            });
        }
    }
    CniResult {
        cni_version: version.to_owned(),
        interfaces: vec![host, container],
        ips,
        routes,
        // The runtime writes these into the container's resolv.conf (docs/dns.md).
        dns: match &ep.dns {
            Some(d) => Dns {
                nameservers: d.nameservers.iter().map(|ip| ip.to_string()).collect(),
                search: d.search.clone(),
                ..Dns::default()
            },
            None => Dns::default(),
        },
    }
}

/// CHECK: the container interface the runtime recorded (its MAC and addresses of both
/// families) must be the one the daemon holds.
pub fn check_recorded(prev: &CniResult, ifname: &str, ep: &Endpoint) -> Result<(), CniError> {
    let Some((iface, addresses)) = prev.container_interface(ifname)? else {
        return Ok(());
    };
    let mut held: Vec<(std::net::IpAddr, u8)> = ep
        .ipv4
        .map(|v4| (v4.ip.into(), v4.prefix_len))
        .into_iter()
        .collect();
    held.extend(ep.ipv6.map(|v6| (v6.ip.into(), v6.prefix_len)));
    let held_text: Vec<String> = held.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    let differs = |what: String| {
        CniError::new(
            code::ATTACHMENT,
            format!(
                "interface {ifname:?}: the runtime recorded {what}, the attachment has {} and MAC {}: delete and re-add the container",
                held_text.join(" "), ep.mac
            ),
        )
    };
    if let Some(mac) = &iface.mac {
        if mac.parse::<MacAddr>().ok() != Some(ep.mac) {
            return Err(differs(format!("MAC {mac:?}")));
        }
    }
    if let Some((ip, len)) = addresses.iter().find(|a| !held.contains(a)) {
        return Err(differs(format!("address {ip}/{len}")));
    }
    // A recorded result that lacks an address of a family it records is another
    // attachment's. (A family it does not record at all: a plugin of the previous release
    // made the result, IPv4 only, while the daemon gave both; the daemon's own check looks
    // at the container's addresses.)
    let recorded =
        |a: &&(std::net::IpAddr, u8)| addresses.iter().any(|r| r.0.is_ipv4() == a.0.is_ipv4());
    match held.iter().find(|a| recorded(a) && !addresses.contains(a)) {
        Some((ip, len)) => Err(differs(format!("no {ip}/{len}"))),
        None => Ok(()),
    }
}
