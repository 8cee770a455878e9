//! How the containers' queries reach the resolver's sockets: the datapath marks them
//! (`DNS_MARK`) and hands them to the host's stack; a policy rule sends that mark to a table
//! whose one route delivers everything locally (as TPROXY setups do), where the sockets
//! bound to the gateway addresses take them. Nothing else is marked, so nothing else is
//! delivered that way.

use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_common::maps::DNS_MARK;
use rtnetlink::{
    packet_route::{
        route::{RouteScope, RouteType},
        rule::RuleAction,
    },
    IpVersion, RouteMessageBuilder,
};

use crate::netlink::{connect, errno, rt, NetlinkError};

/// The table of the local-delivery route.
pub const TABLE: u32 = 4790;
/// Before the rule to the containers' table and the main table.
pub const RULE_PRIORITY: u32 = 31999;

/// Adds the rules and routes (both families). Idempotent.
pub async fn ensure() -> Result<(), NetlinkError> {
    let h = connect()?;
    // The loopback interface is always index 1.
    let lo = 1;
    for v6 in [false, true] {
        let add = h
            .rule()
            .add()
            .fw_mark(DNS_MARK)
            .table_id(TABLE)
            .priority(RULE_PRIORITY)
            .action(RuleAction::ToTable);
        let rule = match v6 {
            false => add.v4().execute().await,
            true => add.v6().execute().await,
        };
        let route = match v6 {
            false => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(TABLE)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build(),
            true => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .output_interface(lo)
                .table_id(TABLE)
                .kind(RouteType::Local)
                .build(),
        };
        let done = match rule {
            Ok(()) => h.route().add(route).replace().execute().await,
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                h.route().add(route).replace().execute().await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {}
            // A host without IPv6 (or with it disabled): no IPv6 queries to take.
            Err(e) if v6 && matches!(errno(&e), Some(libc::EAFNOSUPPORT | libc::EACCES)) => {}
            Err(e) => return Err(rt("the DNS queries' rule and local route")(e)),
        }
    }
    Ok(())
}

/// Removes what `ensure` added (`overlayd cleanup`). Missing is fine.
pub async fn remove() -> Result<(), NetlinkError> {
    crate::host_route::remove_rules_to(TABLE).await?;
    let h = connect()?;
    for version in [IpVersion::V4, IpVersion::V6] {
        use futures::TryStreamExt as _;
        let filter = match version {
            IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(TABLE)
                .build(),
            IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(TABLE)
                .build(),
        };
        let mut routes = h.route().get(filter).execute();
        let mut ours = Vec::new();
        while let Ok(Some(r)) = routes.try_next().await {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    rtnetlink::packet_route::route::RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(r.header.table.into());
            if table == TABLE {
                ours.push(r);
            }
        }
        for r in ours {
            if let Err(e) = h.route().del(r).execute().await {
                if errno(&e) != Some(libc::ESRCH) && errno(&e) != Some(libc::ENOENT) {
                    return Err(rt("removing the DNS queries' local route")(e));
                }
            }
        }
    }
    Ok(())
}
