//! How the containers' queries reach the resolver's sockets: the datapath marks them
//! (`DNS_MARK`) and hands them to the host's stack; policy rules send that mark to a table
//! per protocol (UDP, TCP) holding a local route for each gateway address overlayd has a
//! socket of that protocol bound on (so that socket takes them, as TPROXY setups do) and an
//! unreachable default: a query for a gateway not served is dropped, never delivered to
//! another local socket nor routed on. Nothing else is marked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use overlay_common::maps::DNS_MARK;
use rtnetlink::{
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute},
        IpProtocol,
    },
    IpVersion, RouteMessageBuilder,
};

use crate::netlink::{connect, errno, rt, NetlinkError};

/// The tables of the queries' routes: UDP, then TCP.
pub const TABLE: u32 = 4790;
pub const TABLE_TCP: u32 = 4791;

/// The protocol a table is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn table(self) -> u32 {
        match self {
            Proto::Udp => TABLE,
            Proto::Tcp => TABLE_TCP,
        }
    }
}
/// Before the rule to the containers' table and the main table.
pub const RULE_PRIORITY: u32 = 31999;
/// The loopback interface is always index 1.
const LOOPBACK: u32 = 1;

fn route(
    ip: IpAddr,
    prefix: u8,
    kind: RouteType,
    table: u32,
) -> rtnetlink::packet_route::route::RouteMessage {
    match ip {
        IpAddr::V4(ip) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, prefix)
                .table_id(table)
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
                .table_id(table)
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
    for (v6, proto) in [false, true]
        .into_iter()
        .flat_map(|v6| [(v6, Proto::Udp), (v6, Proto::Tcp)])
    {
        let mut add = h
            .rule()
            .add()
            .fw_mark(DNS_MARK)
            .table_id(proto.table())
            .priority(RULE_PRIORITY)
            .action(RuleAction::ToTable);
        add.message_mut()
            .attributes
            .push(RuleAttribute::IpProtocol(match proto {
                Proto::Udp => IpProtocol::Udp,
                Proto::Tcp => IpProtocol::Tcp,
            }));
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
                    .add(route(any, 0, RouteType::Unreachable, proto.table()))
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
            Err(e) => return Err(rt("the DNS queries' rules and tables")(e)),
        }
    }
    flush(Some(RouteType::Local)).await
}

/// Delivers `proto` queries for `gateway` locally (its socket of that protocol is bound).
pub async fn serve(gateway: IpAddr, proto: Proto) -> Result<(), NetlinkError> {
    let prefix = if gateway.is_ipv4() { 32 } else { 128 };
    connect()?
        .route()
        .add(route(gateway, prefix, RouteType::Local, proto.table()))
        .replace()
        .execute()
        .await
        .map_err(rt(format!("the local route for DNS on {gateway}")))
}

/// Stops delivering queries for `gateway` (its network is gone).
pub async fn unserve(gateway: IpAddr) -> Result<(), NetlinkError> {
    let prefix = if gateway.is_ipv4() { 32 } else { 128 };
    let h = connect()?;
    for table in [TABLE, TABLE_TCP] {
        match h
            .route()
            .del(route(gateway, prefix, RouteType::Local, table))
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => {}
            Err(e) => return Err(rt(format!("removing the local route for DNS on {gateway}"))(e)),
        }
    }
    Ok(())
}

/// Removes what `ensure` and `serve` added (`overlayd cleanup`, and at start: routes of
/// gateways an earlier daemon served). Missing is fine.
pub async fn remove() -> Result<(), NetlinkError> {
    crate::host_route::remove_rules_to(TABLE).await?;
    crate::host_route::remove_rules_to(TABLE_TCP).await?;
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
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(rt("listing the DNS queries' routes"))?
        {
            let table = crate::host_route::route_table(&r);
            if (table == TABLE || table == TABLE_TCP) && only.is_none_or(|k| r.header.kind == k) {
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
