//! How the containers' queries reach the resolver's sockets: the datapath marks them
//! (`DNS_MARK`) and hands them to the host's stack; a policy rule sends that mark to a table
//! holding a local route for each gateway address overlayd serves (so its socket bound
//! there takes them, as TPROXY setups do) and an unreachable default: a query for a gateway
//! not served (its socket could not be bound) is dropped, never delivered to another local
//! socket nor routed on. Nothing else is marked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use overlay_common::maps::DNS_MARK;
use rtnetlink::{
    packet_route::{
        route::{RouteAttribute, RouteScope, RouteType},
        rule::RuleAction,
    },
    IpVersion, RouteMessageBuilder,
};

use crate::netlink::{connect, errno, rt, NetlinkError};

/// The table of the queries' routes.
pub const TABLE: u32 = 4790;
/// Before the rule to the containers' table and the main table.
pub const RULE_PRIORITY: u32 = 31999;
/// The loopback interface is always index 1.
const LOOPBACK: u32 = 1;

fn route(ip: IpAddr, prefix: u8, kind: RouteType) -> rtnetlink::packet_route::route::RouteMessage {
    match ip {
        IpAddr::V4(ip) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, prefix)
                .table_id(TABLE)
                .kind(kind);
            match kind {
                RouteType::Local => b.output_interface(LOOPBACK).scope(RouteScope::Host),
                _ => b,
            }
            .build()
        }
        IpAddr::V6(ip) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(ip, prefix)
                .table_id(TABLE)
                .kind(kind);
            match kind {
                RouteType::Local => b.output_interface(LOOPBACK),
                _ => b,
            }
            .build()
        }
    }
}

/// Adds the rules and the unreachable defaults (both families), and removes the local
/// routes an earlier daemon left (its gateways are served again once bound). Idempotent.
pub async fn ensure() -> Result<(), NetlinkError> {
    let h = connect()?;
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
        let any = match v6 {
            false => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            true => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let done = match rule {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        };
        let done = match done {
            Ok(()) => {
                h.route()
                    .add(route(any, 0, RouteType::Unreachable))
                    .replace()
                    .execute()
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {}
            // A host without IPv6 (or with it disabled): no IPv6 queries to take.
            Err(e) if v6 && matches!(errno(&e), Some(libc::EAFNOSUPPORT | libc::EACCES)) => {}
            Err(e) => return Err(rt("the DNS queries' rule and table")(e)),
        }
    }
    flush(Some(RouteType::Local)).await
}

/// Delivers queries for `gateway` locally (its socket is bound).
pub async fn serve(gateway: IpAddr) -> Result<(), NetlinkError> {
    let prefix = if gateway.is_ipv4() { 32 } else { 128 };
    connect()?
        .route()
        .add(route(gateway, prefix, RouteType::Local))
        .replace()
        .execute()
        .await
        .map_err(rt(format!("the local route for DNS on {gateway}")))
}

/// Stops delivering queries for `gateway` (its network is gone).
pub async fn unserve(gateway: IpAddr) -> Result<(), NetlinkError> {
    let prefix = if gateway.is_ipv4() { 32 } else { 128 };
    match connect()?
        .route()
        .del(route(gateway, prefix, RouteType::Local))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
        Err(e) => Err(rt(format!("removing the local route for DNS on {gateway}"))(e)),
    }
}

/// Removes what `ensure` and `serve` added (`overlayd cleanup`, and at start: routes of
/// gateways an earlier daemon served). Missing is fine.
pub async fn remove() -> Result<(), NetlinkError> {
    crate::host_route::remove_rules_to(TABLE).await?;
    flush(None).await
}

/// Empties the table (both families), or removes its routes of one kind.
async fn flush(only: Option<RouteType>) -> Result<(), NetlinkError> {
    use futures::TryStreamExt as _;
    let h = connect()?;
    for version in [IpVersion::V4, IpVersion::V6] {
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
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(r.header.table.into());
            if table == TABLE && only.is_none_or(|k| r.header.kind == k) {
                ours.push(r);
            }
        }
        for r in ours {
            if let Err(e) = h.route().del(r).execute().await {
                if !matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) {
                    return Err(rt("removing the DNS queries' routes")(e));
                }
            }
        }
    }
    Ok(())
}
