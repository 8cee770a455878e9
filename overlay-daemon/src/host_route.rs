//! The host's own way to its containers: a route to each local endpoint's addresses through
//! its veth, with a permanent neighbour entry (the container's MAC), so that the host itself
//! (the kubelet's probes, hostPort connections made on the node, host-network processes)
//! reaches them. The datapath hands the replies, sent to the host's addresses through the
//! gateway, to the host's stack (`overlay-ebpf/src/host.rs`).
//!
//! The routes live in a table of their own, consulted only for what the host itself sends
//! (`iif lo`): a host that forwards never routes underlay traffic into a container past the
//! VTEP's checks, nor one container's traffic into another network's container. The kernel
//! removes them with the veth.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    use futures::TryStreamExt as _;
    let h = connect()?;
    for version in [IpVersion::V4, IpVersion::V6] {
        let mut rules = h.rule().get(version).execute();
        let mut ours = Vec::new();
        while let Ok(Some(rule)) = rules.try_next().await {
            let table = rule
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(rule.header.table.into());
            if table == TABLE {
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
/// host-side veth `host_ifname`. Idempotent (replaces).
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
    forwarding_on(host_ifname, ipv6.is_some())?;
    if let Some(ip) = ipv4 {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(index)
            .table_id(TABLE)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(rt(format!("the host's route to {ip}")))?;
        neighbour(h, index, ip.into(), mac).await?;
    }
    if let Some(ip) = ipv6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(ip, 128)
            .output_interface(index)
            .table_id(TABLE)
            .build();
        match h.route().add(route).replace().execute().await {
            Ok(()) => neighbour(h, index, ip.into(), mac).await?,
            // IPv6 is off on the host (disable_ipv6): it has no IPv6 to reach them from.
            Err(e) if errno(&e) == Some(libc::EACCES) => {
                tracing::debug!(%ip, "IPv6 is disabled on the host: no route to the container's IPv6 address");
            }
            Err(e) => return Err(rt(format!("the host's route to {ip}"))(e)),
        }
    }
    Ok(())
}

/// The datapath asks the kernel's FIB whether a container's packet is for the host
/// (`bpf_fib_lookup`), which answers "forwarding disabled" for a packet that enters through
/// an interface without forwarding: it is turned on for the host side of the veth. The host
/// forwards nothing from there all the same, since the datapath hands it only packets for
/// the host's own addresses.
fn forwarding_on(host_ifname: &str, ipv6: bool) -> Result<(), NetlinkError> {
    let mut families = vec!["ipv4"];
    if ipv6 {
        families.push("ipv6");
    }
    for family in families {
        let path = format!("/proc/sys/net/{family}/conf/{host_ifname}/forwarding");
        match std::fs::write(&path, "1") {
            Ok(()) => {}
            // IPv6 is off on the host: nothing to reach the container's IPv6 address from.
            Err(e) if family == "ipv6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetlinkError::Sysctl { path, source: e }),
        }
    }
    Ok(())
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
    for ep in endpoints {
        let Some(host_ifname) = ep.host_ifname() else {
            continue;
        };
        let ip6 = ep.ipv6.map(|a| a.ip);
        if let Err(e) = add(host_ifname, ep.ip(), ip6, ep.mac.0).await {
            tracing::warn!(container = %ep.container_id, "the host will not reach it: {e}");
        }
    }
}
