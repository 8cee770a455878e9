//! What the daemon follows of its host through rtnetlink announcements: route changes (the
//! underlay next hops), address changes (the VTEP address moving), and links coming and
//! going (a container's veth vanishing with its namespace, a kernel vxlan device appearing
//! on the VXLAN port). One socket, subscribed before anything is asked, so no change goes
//! unseen.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    time::Duration,
};

use futures::{channel::mpsc::UnboundedReceiver, StreamExt as _};
use rtnetlink::{
    constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    },
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteMessage},
        RouteNetlinkMessage,
    },
    sys::{AsyncSocket as _, SocketAddr},
};

/// A burst of changes (an interface going down) is answered once.
const SETTLE: Duration = Duration::from_millis(20);

pub struct HostEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// The burst being gathered: kept here, not in `next`'s future, which the daemon's
    /// loop drops whenever another of its events comes first.
    pending: Option<HostChanges>,
}

/// What changed in one burst.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostChanges {
    pub routes: bool,
    /// Interfaces whose addresses (either family) changed.
    pub addresses: BTreeSet<u32>,
    /// Names of links that went away.
    pub links_removed: BTreeSet<String>,
    /// Links that appeared or changed.
    pub links_changed: bool,
    /// The MTU each announced link has now, by interface index (the last announcement of
    /// the burst).
    pub mtus: BTreeMap<u32, u32>,
}

/// The kernel's table of local and broadcast addresses (`RT_TABLE_LOCAL`).
const RT_TABLE_LOCAL: u32 = 255;

/// Whether a route can be one a VTEP is reached by: not the link-local and multicast routes
/// every interface brings (each container veth adds IPv6 ones), nor those of the local
/// table or of the daemon's own table (a route per container, `host_route::TABLE`).
fn reaches_vteps(r: &RouteMessage) -> bool {
    let table = crate::host_route::route_table(r);
    if table == RT_TABLE_LOCAL || table == crate::host_route::TABLE {
        return false;
    }
    !r.attributes.iter().any(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet6(dst)) => {
            dst.segments()[0] & 0xffc0 == 0xfe80 || dst.is_multicast()
        }
        _ => false,
    })
}

impl HostChanges {
    fn add(&mut self, msg: &RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                self.routes |= reaches_vteps(r)
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                self.addresses.insert(a.header.index);
            }
            RouteNetlinkMessage::DelLink(l) => {
                for attr in &l.attributes {
                    if let LinkAttribute::IfName(name) = attr {
                        self.links_removed.insert(name.clone());
                    }
                }
            }
            RouteNetlinkMessage::NewLink(l) => {
                self.links_changed = true;
                for attr in &l.attributes {
                    if let LinkAttribute::Mtu(mtu) = attr {
                        self.mtus.insert(l.header.index, *mtu);
                    }
                }
            }
            _ => {}
        }
    }
}

impl HostEvents {
    /// `ipv6_routes`: IPv6 route changes count too (a node with an IPv6 VTEP). Without one
    /// they are not listened to: every container veth's link-local route would ask again
    /// for every VTEP's next hop.
    pub fn subscribe(ipv6_routes: bool) -> io::Result<Self> {
        let (mut conn, _handle, messages) = rtnetlink::new_connection()?;
        let mut groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE;
        if ipv6_routes {
            groups |= RTMGRP_IPV6_ROUTE;
        }
        // Bound, not only subscribed: an unbound socket has port 0, the kernel's own, and
        // the kernel does not deliver its announcements to it.
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))?;
        tokio::spawn(conn);
        Ok(Self {
            messages,
            pending: None,
        })
    }

    /// Waits for a change and the burst it belongs to. `None`: the subscription ended and
    /// changes can no longer be seen.
    /// Cancel-safe: a burst whose wait is cut short (the caller's `select!` took another
    /// branch) is finished by the next call, nothing of it lost.
    pub async fn next(&mut self) -> Option<HostChanges> {
        if self.pending.is_none() {
            let (first, _) = self.messages.next().await?;
            let mut changes = HostChanges::default();
            if let NetlinkPayload::InnerMessage(m) = &first.payload {
                changes.add(m);
            }
            self.pending = Some(changes);
        }
        tokio::time::sleep(SETTLE).await;
        let mut changes = self.pending.take().unwrap_or_default();
        while let Ok((msg, _)) = self.messages.try_recv() {
            if let NetlinkPayload::InnerMessage(m) = &msg.payload {
                changes.add(m);
            }
        }
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_multicast_and_local_routes_do_not_move_next_hops() {
        let route = |table: u8, dst: &str| {
            let mut r = RouteMessage::default();
            r.header.table = table;
            let dst = match dst.parse().unwrap() {
                std::net::IpAddr::V4(a) => RouteAddress::Inet(a),
                std::net::IpAddr::V6(a) => RouteAddress::Inet6(a),
            };
            r.attributes = vec![RouteAttribute::Destination(dst)];
            r
        };
        assert!(reaches_vteps(&route(254, "2001:2:0:ff00::2")));
        assert!(reaches_vteps(&route(254, "198.18.0.2")));
        assert!(!reaches_vteps(&route(254, "fe80::")));
        assert!(!reaches_vteps(&route(255, "ff00::")));
        assert!(!reaches_vteps(&route(255, "2001:2:0:ff00::1")));
        // The daemon's own per-container routes: table 4789 in RTA_TABLE (the header's
        // field holds 252, RT_TABLE_COMPAT, for tables above 255).
        let mut own = route(252, "198.19.1.2");
        own.attributes
            .push(RouteAttribute::Table(crate::host_route::TABLE));
        assert!(!reaches_vteps(&own));
    }
}
