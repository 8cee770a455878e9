//! Kernel vxlan devices that share the overlay's UDP port (flannel, Docker swarm, another
//! overlay). The datapath intercepts VXLAN to this node's VTEP on the port before the stack;
//! where such a device exists it passes every VNI the overlay does not own to the kernel
//! untouched, and a network of the overlay whose VNI a device uses is refused on this node.

use std::{fmt, net::IpAddr};

use crate::vtep::Vteps;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};

/// One kernel vxlan device on the port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanDevice {
    pub name: String,
    /// Its VNI; `None` for a collect_md (`external`) device, which takes any.
    pub vni: Option<u32>,
}

impl fmt::Display for VxlanDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vni {
            Some(vni) => write!(f, "{} (VNI {vni})", self.name),
            None => write!(f, "{} (external: any VNI)", self.name),
        }
    }
}

/// The vxlan devices of this namespace that receive on `port` at `vtep` (bound to it or to
/// any address), sorted.
pub async fn sharing_port(port: u16, vtep: Vteps) -> std::io::Result<Vec<VxlanDevice>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    loop {
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => break,
            Err(e) => {
                task.abort();
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        let mut name = None;
        let mut attrs = None;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    let vxlan = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                    if vxlan {
                        attrs = infos.iter().find_map(|i| match i {
                            LinkInfo::Data(InfoData::Vxlan(a)) => Some(a.clone()),
                            _ => None,
                        });
                    }
                }
                _ => {}
            }
        }
        if let (Some(name), Some(attrs)) = (name, attrs) {
            if let Some(dev) = device(name, &attrs, port, &vtep) {
                out.push(dev);
            }
        }
    }
    task.abort();
    out.sort();
    Ok(out)
}

fn device(name: String, attrs: &[InfoVxlan], port: u16, vtep: &Vteps) -> Option<VxlanDevice> {
    let mut dev_port = None;
    let mut local = None;
    let mut vni = None;
    let mut external = false;
    for a in attrs {
        match a {
            InfoVxlan::Port(p) => dev_port = Some(*p),
            InfoVxlan::Local(ip) => local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Id(id) => vni = Some(*id),
            InfoVxlan::CollectMetadata(true) => external = true,
            _ => {}
        }
    }
    let receives_here = local.is_none_or(|l| vtep.has(l) || l.is_unspecified());
    (dev_port == Some(port) && receives_here).then_some(VxlanDevice {
        name,
        vni: if external { None } else { vni },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn devices_on_another_port_or_address_do_not_count() {
        let vtep = &Vteps::v4(Ipv4Addr::new(198, 18, 0, 1));
        let attrs = |port, local: Option<Ipv4Addr>| {
            let mut a = vec![InfoVxlan::Id(42), InfoVxlan::Port(port)];
            a.extend(local.map(InfoVxlan::Local));
            a
        };
        assert_eq!(
            device("vx0".into(), &attrs(4789, None), 4789, vtep),
            Some(VxlanDevice {
                name: "vx0".into(),
                vni: Some(42)
            })
        );
        assert!(device("vx0".into(), &attrs(8472, None), 4789, vtep).is_none());
        let other = Some(Ipv4Addr::new(198, 18, 0, 9));
        assert!(device("vx0".into(), &attrs(4789, other), 4789, vtep).is_none());
        let external = [InfoVxlan::Port(4789), InfoVxlan::CollectMetadata(true)];
        assert_eq!(
            device("vxe".into(), &external, 4789, vtep).unwrap().vni,
            None
        );
    }
}
