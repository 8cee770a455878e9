//! The host's own way to its containers: a route to each local endpoint's addresses through
//! its veth, with a permanent neighbour entry (the container's MAC), so that the host itself
//! (the kubelet's probes, hostPort connections made on the node, host-network processes)
//! reaches them. The datapath hands the replies, sent to the host's addresses through the
//! gateway, to the host's stack (`overlay-ebpf/src/host.rs`).
//!
//! The routes live in a table of their own, consulted only for what the host itself sends
//! (`iif lo`): a host that forwards never routes underlay traffic into a container past the
//! VTEP's checks. What the host sends reaches every network's containers: the host is
//! trusted, including what its own output NAT rewrites (kube-proxy's IPVS mode would carry a
//! container's connection to a local ClusterIP into a container of another network). The
//! kernel removes the routes with the veth.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use rtnetlink::{
    packet_route::{
        neighbour::NeighbourState,
        route::RouteScope,
        rule::{RuleAction, RuleAttribute},
    },
    Handle, IpVersion, RouteMessageBuilder,
};

use crate::netlink::{connect, errno, link_index, rt, NetlinkError};

/// The routing table of the host's routes to its containers.
pub const TABLE: u32 = 4789;

/// The table a route is in: its `RTA_TABLE`, which the header's one-byte field cannot hold
/// above 255.
pub fn route_table(r: &rtnetlink::packet_route::route::RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table.into())
}
/// The priority of the rule that sends the host's own traffic to `TABLE`: after any rule an
/// operator is likely to add, before the main table (32766).
pub const RULE_PRIORITY: u32 = 32000;

/// Adds the rules (IPv4 and IPv6) that send the host's own traffic to `TABLE`. Idempotent.
pub async fn ensure_rules() -> Result<(), NetlinkError> {
    let h = connect()?;
    for v6 in [false, true] {
        let add = h
            .rule()
            .add()
            .input_interface("lo")
            .table_id(TABLE)
            .priority(RULE_PRIORITY)
            .action(RuleAction::ToTable);
        let done = match v6 {
            false => add.v4().execute().await,
            true => add.v6().execute().await,
        };
        match done {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            // A host without IPv6: nothing to route there.
            Err(e) if v6 && errno(&e) == Some(libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(rt("adding the rule to the containers' routing table")(e)),
        }
    }
    Ok(())
}

/// Removes the rules `ensure_rules` added (`overlayd cleanup`). Missing is fine.
pub async fn remove_rules() -> Result<(), NetlinkError> {
    remove_rules_to(TABLE).await
}

/// Removes every rule (both families) that sends traffic to `table`.
pub(crate) async fn remove_rules_to(table_id: u32) -> Result<(), NetlinkError> {
    use futures::TryStreamExt as _;
    let h = connect()?;
    for version in [IpVersion::V4, IpVersion::V6] {
        let mut rules = h.rule().get(version).execute();
        let mut ours = Vec::new();
        while let Some(rule) = rules
            .try_next()
            .await
            .map_err(rt("listing the routing rules"))?
        {
            let table = rule
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(rule.header.table.into());
            if table == table_id {
                ours.push(rule);
            }
        }
        for rule in ours {
            if let Err(e) = h.rule().del(rule).execute().await {
                if errno(&e) != Some(libc::ENOENT) {
                    return Err(rt("removing the rule to the containers' routing table")(e));
                }
            }
        }
    }
    Ok(())
}

/// The host's route and neighbour entry for each of a container's addresses, through its
/// host-side veth `host_ifname`. Idempotent.
pub async fn add(
    host_ifname: &str,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    let h = connect()?;
    let Some(index) = link_index(&h, host_ifname).await? else {
        return Ok(());
    };
    add_by_index(&h, index, host_ifname, ipv4, ipv6, mac).await
}

pub(crate) async fn add_by_index(
    h: &Handle,
    index: u32,
    host_ifname: &str,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    mac: [u8; 6],
) -> Result<(), NetlinkError> {
    forwarding_off(host_ifname)?;
    if let Some(ip) = ipv4 {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(index)
            .table_id(TABLE)
            .scope(RouteScope::Link)
            .build();
        match h.route().add(route).execute().await {
            Ok(()) => {}
            // Made before this daemon restarted; or another network's endpoint on this host
            // has the same address (networks may overlap): the host reaches the first.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                tracing::debug!(%ip, "the host has a route to this address already");
            }
            Err(e) => return Err(rt(format!("the host's route to {ip}"))(e)),
        }
        neighbour(h, index, ip.into(), mac).await?;
    }
    if let Some(ip) = ipv6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(ip, 128)
            .output_interface(index)
            .table_id(TABLE)
            .build();
        match h.route().add(route).execute().await {
            Ok(()) => neighbour(h, index, ip.into(), mac).await?,
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                neighbour(h, index, ip.into(), mac).await?
            }
            // IPv6 is off on the host (disable_ipv6): it has no IPv6 to reach them from.
            Err(e) if errno(&e) == Some(libc::EACCES) => {
                tracing::debug!(%ip, "IPv6 is disabled on the host: no route to the container's IPv6 address");
            }
            Err(e) => return Err(rt(format!("the host's route to {ip}"))(e)),
        }
    }
    Ok(())
}

/// What a container sends to the host's own addresses enters the host's stack from its veth;
/// a hostPort or NodePort DNAT there could send it on to an address elsewhere, out of the
/// underlay unencapsulated with the container's source. IPv4 forwarding is turned off for
/// the veth's host side, so the host delivers such packets locally or not at all, whatever
/// `ip_forward` says. (IPv6 has no per-interface switch for it: documented.)
fn forwarding_off(host_ifname: &str) -> Result<(), NetlinkError> {
    let path = format!("/proc/sys/net/ipv4/conf/{host_ifname}/forwarding");
    std::fs::write(&path, "0").map_err(|source| NetlinkError::Sysctl { path, source })
}

/// The container's answers to the host's ARP and neighbour solicitations would come back
/// through the datapath, which hands the host only what is sent through the gateway: its MAC
/// is written down instead.
async fn neighbour(h: &Handle, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
    h.neighbours()
        .add(index, ip)
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(rt(format!("the host's neighbour entry for {ip}")))
}

/// At start: the rules, and the routes of endpoints made by a release without them (or whose
/// routes someone removed). Failures are logged: the overlay works without, the host only
/// does not reach its containers.
pub async fn restore(endpoints: &[overlay_api::Endpoint]) {
    if let Err(e) = ensure_rules().await {
        tracing::warn!("the host will not reach its containers: {e}");
        return;
    }
    // One netlink socket for all of them (a node may hold thousands).
    let h = match connect() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("the host will not reach its containers: {e}");
            return;
        }
    };
    for ep in endpoints {
        let Some(host_ifname) = ep.host_ifname() else {
            continue;
        };
        let ip6 = ep.ipv6.map(|a| a.ip);
        let done = match link_index(&h, host_ifname).await {
            Ok(Some(index)) => add_by_index(&h, index, host_ifname, ep.ip(), ip6, ep.mac.0).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!(container = %ep.container_id, "the host will not reach it: {e}");
        }
    }
}

/// The host's own addresses a container may send to: those of its interfaces, but never
/// loopback, link-local, multicast or unspecified ones (so a container never reaches what the
/// host serves on 127.0.0.1 or ::1).
pub async fn own_addresses() -> Result<BTreeSet<IpAddr>, NetlinkError> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::address::AddressAttribute;
    let h = connect()?;
    let mut dump = h.address().get().execute();
    let mut found = BTreeSet::new();
    while let Some(msg) = dump
        .try_next()
        .await
        .map_err(rt("listing the host's addresses"))?
    {
        // IFA_LOCAL is the address itself (IFA_ADDRESS the peer's, on point-to-point links).
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let address = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local
            .or(address)
            .filter(|ip| reachable_from_containers(*ip))
        {
            found.insert(ip);
        }
    }
    Ok(found)
}

fn reachable_from_containers(ip: IpAddr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
        && match ip {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// Makes the datapath's `HOST_ADDRS` the host's addresses now (at start and whenever they
/// change). Failures are logged: the host's addresses are then not reached from containers.
pub async fn follow_addresses(map: &mut crate::maps::HostAddrMap) {
    let addrs = match own_addresses().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("containers may not reach the host's addresses: {e}");
            return;
        }
    };
    match map.sync(&addrs) {
        Ok((0, 0)) => {}
        Ok(_) => tracing::info!(addresses = ?addrs, "containers reach the host at"),
        Err(e) => tracing::warn!("containers may not reach the host's addresses: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_addresses_are_never_the_containers_to_reach() {
        for no in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "224.0.0.1",
            "ff02::1",
        ] {
            assert!(!reachable_from_containers(no.parse().unwrap()), "{no}");
        }
        for yes in ["198.18.0.1", "2001:2::1", "10.0.0.1"] {
            assert!(reachable_from_containers(yes.parse().unwrap()), "{yes}");
        }
    }
}
