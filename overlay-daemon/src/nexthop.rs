//! Underlay next hops of remote VTEPs. The encapsulation hands the packet to the neighbour
//! layer with its next hop already known, so no route lookup runs per packet (the kernel's
//! vxlan device caches its route per remote for the same reason). The next hop comes from the
//! host's routing table, asked once per VTEP, and is asked again whenever a route of
//! either family changes. Where one next hop cannot stand for the route (multipath, nexthop objects, another
//! device than the underlay, no route), the VTEP gets none and the kernel routes each packet.

use std::{collections::HashMap, io, net::IpAddr};

use rtnetlink::{
    packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    packet_route::{
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
        AddressFamily, RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};
use tracing::{debug, warn};

use crate::vtep::Vteps;

#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    #[error("netlink route socket: {0}")]
    Socket(io::Error),
    #[error("asking the route to {vtep}: {source}")]
    Query {
        vtep: IpAddr,
        #[source]
        source: io::Error,
    },
}

/// Resolves and caches the next hop of each VTEP through the underlay.
pub struct NextHops {
    socket: Socket,
    underlay_ifindex: u32,
    /// Outer source addresses, for source-based routing rules.
    local: Vteps,
    seq: u32,
    cache: HashMap<IpAddr, Option<IpAddr>>,
}

impl NextHops {
    pub fn new(underlay_ifindex: u32, local: Vteps) -> Result<Self, NextHopError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NextHopError::Socket)?;
        socket.bind_auto().map_err(NextHopError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NextHopError::Socket)?;
        // A route query is answered at once; the timeout only keeps a broken socket from
        // stalling the reconciler.
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )
        .map_err(|e| NextHopError::Socket(e.into()))?;
        Ok(Self {
            socket,
            underlay_ifindex,
            local,
            seq: 0,
            cache: HashMap::new(),
        })
    }

    /// The next hop towards `vtep` (None: the kernel routes each packet). A failed query is
    /// logged and treated as None, which is always correct, only slower.
    pub fn resolve(&mut self, vtep: IpAddr) -> Option<IpAddr> {
        if let Some(nh) = self.cache.get(&vtep) {
            return *nh;
        }
        let nh = match self.query(vtep) {
            Ok(nh) => nh,
            Err(e) => {
                warn!("{e}; the kernel routes each packet to {vtep}");
                None
            }
        };
        debug!(%vtep, nexthop = ?nh, "underlay next hop");
        self.cache.insert(vtep, nh);
        nh
    }

    /// Forgets the answers for VTEPs that are gone, so the cache holds at most the current
    /// ones however often nodes come and go.
    pub fn retain(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        self.cache.retain(|vtep, _| keep(*vtep));
    }

    /// Forgets every answer (the routing table changed).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// RTM_GETROUTE with RTM_F_FIB_MATCH: the routing entry that matches, so a multipath
    /// route shows as one instead of as the path one flow would take.
    fn query(&mut self, vtep: IpAddr) -> Result<Option<IpAddr>, NextHopError> {
        let err = |source| NextHopError::Query { vtep, source };
        self.seq = self.seq.wrapping_add(1);
        let mut route = RouteMessage::default();
        let (family, len, dst, src) = match vtep {
            IpAddr::V4(v4) => (
                AddressFamily::Inet,
                32,
                RouteAddress::Inet(v4),
                self.local.v4.map(RouteAddress::Inet),
            ),
            IpAddr::V6(v6) => (
                AddressFamily::Inet6,
                128,
                RouteAddress::Inet6(v6),
                self.local.v6.map(RouteAddress::Inet6),
            ),
        };
        route.header = RouteHeader {
            address_family: family,
            destination_prefix_length: len,
            flags: RouteFlags::FibMatch,
            ..RouteHeader::default()
        };
        route.attributes = vec![
            RouteAttribute::Destination(dst),
            RouteAttribute::Oif(self.underlay_ifindex),
        ];
        route.attributes.extend(src.map(RouteAttribute::Source));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetRoute(route)),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(err)?;

        let mut reply = Vec::with_capacity(8192);
        loop {
            reply.clear();
            let n = self.socket.recv(&mut reply, 0).map_err(err)?;
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
                .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
            if msg.header.sequence_number != self.seq {
                continue; // the answer to a query that timed out earlier
            }
            return match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                    Ok(next_hop(&r, vtep, self.underlay_ifindex))
                }
                // No route (ENETUNREACH and the like): nothing to pin; the kernel decides per
                // packet and drops what it cannot route.
                _ => Ok(None),
            };
        }
    }
}

/// The one next hop a routing entry stands for on the underlay, if it has exactly one.
fn next_hop(route: &RouteMessage, vtep: IpAddr, underlay_ifindex: u32) -> Option<IpAddr> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut oif = None;
    let mut gateway = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) if vtep.is_ipv4() => {
                gateway = Some(IpAddr::V4(*gw))
            }
            RouteAttribute::Gateway(RouteAddress::Inet6(gw)) if vtep.is_ipv6() => {
                gateway = Some(IpAddr::V6(*gw))
            }
            // A gateway of another family, several paths or a nexthop object: one address
            // cannot stand for it.
            RouteAttribute::Gateway(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::MultiPath(_)
            | RouteAttribute::NhId(_)
            | RouteAttribute::Encap(_) => return None,
            _ => {}
        }
    }
    if oif != Some(underlay_ifindex) {
        return None;
    }
    Some(gateway.unwrap_or(vtep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.kind = kind;
        r.attributes = attrs;
        r
    }

    use std::net::{Ipv4Addr, Ipv6Addr};

    const VTEP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const GW4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
    const VTEP: IpAddr = IpAddr::V4(VTEP4);
    const GW: IpAddr = IpAddr::V4(GW4);

    #[test]
    fn on_link_vtep_is_its_own_next_hop() {
        let r = route(RouteType::Unicast, vec![RouteAttribute::Oif(4)]);
        assert_eq!(next_hop(&r, VTEP, 4), Some(VTEP));
    }

    #[test]
    fn gateway_route_gives_the_gateway() {
        let r = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(GW4)),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(next_hop(&r, VTEP, 4), Some(GW));
    }

    #[test]
    fn ipv6_routes_give_ipv6_next_hops() {
        let vtep = Ipv6Addr::new(0x2001, 2, 0, 0xff00, 0, 0, 0, 2);
        let gw = Ipv6Addr::new(0x2001, 2, 0, 0xff00, 0, 0, 0, 0xfd);
        let on_link = route(RouteType::Unicast, vec![RouteAttribute::Oif(4)]);
        assert_eq!(next_hop(&on_link, vtep.into(), 4), Some(vtep.into()));
        let via = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet6(gw)),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(next_hop(&via, vtep.into(), 4), Some(gw.into()));
        // A gateway of the other family (RFC 5549 routes) cannot be a neighbour of this one.
        let other = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(GW4)),
                RouteAttribute::Oif(4),
            ],
        );
        assert_eq!(next_hop(&other, vtep.into(), 4), None);
    }

    #[test]
    fn routes_one_address_cannot_stand_for_are_left_to_the_kernel() {
        let other_dev = route(RouteType::Unicast, vec![RouteAttribute::Oif(5)]);
        assert_eq!(next_hop(&other_dev, VTEP, 4), None);
        let multipath = route(
            RouteType::Unicast,
            vec![RouteAttribute::MultiPath(vec![]), RouteAttribute::Oif(4)],
        );
        assert_eq!(next_hop(&multipath, VTEP, 4), None);
        let nh_object = route(
            RouteType::Unicast,
            vec![RouteAttribute::NhId(7), RouteAttribute::Oif(4)],
        );
        assert_eq!(next_hop(&nh_object, VTEP, 4), None);
        let blackhole = route(RouteType::BlackHole, vec![RouteAttribute::Oif(4)]);
        assert_eq!(next_hop(&blackhole, VTEP, 4), None);
    }
}
