//! Container interfaces through rtnetlink: the veth pair of an endpoint, its container side
//! configured inside the container's network namespace (addresses, MTU, MAC, default
//! routes).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use overlay_api::{DefaultRoute, DefaultRoutes};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} already exists in the container: pick another interface name")]
    Exists(String),
    #[error("{ifname} was to hold the container's default route (defaultRoute true), but the container has one already, via another interface than {gateway}'s: set defaultRoute false on one of its networks")]
    DefaultRouteTaken { ifname: String, gateway: IpAddr },
    #[error("{what}: {source}")]
    Rtnetlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{path}: {source} (overlayd needs a writable /proc/sys: run it privileged)")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the container side of an endpoint looks like.
#[derive(Clone, Debug)]
pub struct ContainerIface {
    pub netns: PathBuf,
    pub ifname: String,
    pub mac: [u8; 6],
    pub ipv4: Option<overlay_api::Ipv4Assignment>,
    pub ipv6: Option<overlay_api::Ipv6Assignment>,
    pub mtu: u32,
    pub default_route: DefaultRoute,
    /// Limits shaped on the interfaces (`qdisc`): egress on the container's side, ingress
    /// on the host's.
    pub bandwidth: Option<overlay_api::Bandwidth>,
}

/// The veth pair `create_veth` made.
pub struct MadeVeth {
    pub host_mac: Option<[u8; 6]>,
    /// The container's default routes the container side got.
    pub default_routes: DefaultRoutes,
}

pub(crate) fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

pub(crate) fn rt(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Rtnetlink { what, source }
}

pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(rt(format!("looking up {name}"))(e)),
    }
}

/// Runs `f` with a netlink handle inside the network namespace at `netns`, on a thread of
/// its own (a namespace switch only affects the calling thread).
async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
{
    let file = File::open(netns).map_err(|source| NetlinkError::Netns {
        path: netns.to_owned(),
        source,
    })?;
    let path = netns.to_owned();
    let join = std::thread::spawn(move || {
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetlinkError::Netns {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        with_connection(f)
    });
    tokio::task::spawn_blocking(move || {
        join.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
    .await
    .unwrap_or_else(|p| std::panic::resume_unwind(p.into_panic()))
}

/// The errno a netlink request failed with, if the kernel answered with one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Creates the veth pair: `host_ifname` here, `c.ifname` in the container, configured.
/// Fails if the container already has `c.ifname`.
pub async fn create_veth(host_ifname: &str, c: &ContainerIface) -> Result<MadeVeth, NetlinkError> {
    let handle = connect()?;
    remove_stale(&handle, host_ifname).await?;
    let netns = File::open(&c.netns).map_err(|source| NetlinkError::Netns {
        path: c.netns.clone(),
        source,
    })?;
    // The container side is created directly in the container's namespace, with its final
    // name, MAC and MTU, so it never appears half-configured on the host.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(c.ifname.clone())
        .mtu(c.mtu)
        .address(c.mac.to_vec())
        .setns_by_fd(netns.as_raw_fd())
        .build();
    // The host side's name is free (a stale link was removed): the kernel's "exists" is
    // about the container's side, made in one step with the pair.
    let host_index = match add_veth(&handle, host_ifname, &c.ifname, peer, c.mtu).await {
        Err(NetlinkError::Rtnetlink { ref source, .. }) if errno(source) == Some(libc::EEXIST) => {
            return Err(NetlinkError::Exists(c.ifname.clone()))
        }
        other => other?,
    };
    drop(netns);

    let c2 = c.clone();
    let configured = in_netns(&c.netns, move |h| async move {
        let index = link_index(&h, &c2.ifname)
            .await?
            .ok_or_else(|| NetlinkError::Exists(c2.ifname.clone()))?;
        if let Some(v4) = c2.ipv4 {
            h.address()
                .add(index, IpAddr::V4(v4.ip), v4.prefix_len)
                .execute()
                .await
                .map_err(rt(format!("adding {} to {}", v4.ip, c2.ifname)))?;
        }
        if let Some(v6) = c2.ipv6 {
            // No duplicate address detection: the address is the cluster's to give, and
            // DAD would keep it unusable for a second or more.
            let mut add = h.address().add(index, IpAddr::V6(v6.ip), v6.prefix_len);
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            add.execute()
                .await
                .map_err(rt(format!("adding {} to {}", v6.ip, c2.ifname)))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(rt(format!("setting {} up", c2.ifname)))?;
        if let Some(egress) = c2.bandwidth.and_then(|b| b.egress) {
            let mut h = h.clone();
            crate::qdisc::shape(&mut h, index, &egress).await?;
        }
        // A default route per family, via the network's gateways, as `default_route` asks.
        let mut routes = Vec::new();
        if let Some(v4) = c2.ipv4 {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(v4.gateway)
                .output_interface(index)
                .build();
            routes.push((route, IpAddr::from(v4.gateway)));
        }
        if let Some(v6) = c2.ipv6 {
            let route = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(v6.gateway)
                .output_interface(index)
                .build();
            routes.push((route, v6.gateway.into()));
        }
        let mut held = DefaultRoutes::default();
        if c2.default_route == DefaultRoute::Never {
            routes.clear();
        }
        for (route, gateway) in routes {
            match h.route().add(route).execute().await {
                Ok(()) => match gateway {
                    IpAddr::V4(_) => held.ipv4 = true,
                    IpAddr::V6(_) => held.ipv6 = true,
                },
                // The container is on another network already, whose interface has the
                // default route of this family: it keeps it (as Docker gives a container
                // one gateway); this network's subnet is reached on-link.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {
                    if c2.default_route == DefaultRoute::Required {
                        return Err(NetlinkError::DefaultRouteTaken {
                            ifname: c2.ifname.clone(),
                            gateway,
                        });
                    }
                    tracing::info!(ifname = %c2.ifname, %gateway, "the container has a default route already; this interface gets none");
                }
                Err(e) => return Err(rt(format!("default route via {gateway}"))(e)),
            }
        }
        Ok(held)
    })
    .await;
    let configured = match (configured, c.bandwidth.and_then(|b| b.ingress)) {
        (Ok(held), Some(ingress)) => {
            let mut h = handle.clone();
            crate::qdisc::shape(&mut h, host_index, &ingress)
                .await
                .map(|()| held)
        }
        (configured, _) => configured,
    };
    let configured = match configured {
        Ok(held) => {
            let (ip, ip6) = (c.ipv4.map(|a| a.ip), c.ipv6.map(|a| a.ip));
            crate::host_route::add_by_index(&handle, host_index, host_ifname, ip, ip6, c.mac)
                .await
                .map(|()| held)
        }
        Err(e) => Err(e),
    };
    let default_routes = match configured {
        Ok(held) => held,
        Err(e) => {
            let _ = handle.link().del(host_index).execute().await;
            return Err(e);
        }
    };
    Ok(MadeVeth {
        host_mac: link_mac(&handle, host_index).await,
        default_routes,
    })
}

/// Creates a veth pair with both sides in this namespace: `host_ifname` up (the datapath
/// attaches to it), `peer` down with `mac` and `mtu`, for a runtime to move into its
/// container (Docker). Stale links with either name are replaced. Returns the host side's MAC.
pub async fn create_veth_here(
    host_ifname: &str,
    peer: &str,
    mac: [u8; 6],
    mtu: u32,
) -> Result<Option<[u8; 6]>, NetlinkError> {
    let handle = connect()?;
    for name in [host_ifname, peer] {
        remove_stale(&handle, name).await?;
    }
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .mtu(mtu)
        .address(mac.to_vec())
        .build();
    let index = add_veth(&handle, host_ifname, peer, peer_msg, mtu).await?;
    Ok(link_mac(&handle, index).await)
}

/// Removes a link left over from a crash, which would block its name.
async fn remove_stale(handle: &Handle, name: &str) -> Result<(), NetlinkError> {
    if let Some(index) = link_index(handle, name).await? {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(rt(format!("removing stale {name}")))?;
    }
    Ok(())
}

/// Adds the veth pair `host_ifname` (up, here) / `peer` (as `peer_msg` describes it);
/// returns the host side's ifindex.
async fn add_veth(
    handle: &Handle,
    host_ifname: &str,
    peer: &str,
    peer_msg: LinkMessage,
    mtu: u32,
) -> Result<u32, NetlinkError> {
    let msg = LinkVeth::new(host_ifname, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .mtu(mtu)
        .up()
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(rt(format!("creating veth {host_ifname}")))?;
    link_index(handle, host_ifname)
        .await?
        .ok_or_else(|| NetlinkError::Exists(host_ifname.to_owned()))
}

async fn link_mac(handle: &Handle, index: u32) -> Option<[u8; 6]> {
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .ok()??;
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) if mac.len() == 6 => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

/// The addresses (with prefix lengths) of `ifname` in the namespace at `netns`, if the
/// interface exists.
pub async fn container_addresses(
    netns: &Path,
    ifname: &str,
) -> Result<Option<Vec<(IpAddr, u8)>>, NetlinkError> {
    let ifname = ifname.to_owned();
    in_netns(netns, move |h| async move {
        let Some(index) = link_index(&h, &ifname).await? else {
            return Ok(None);
        };
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        let mut found = Vec::new();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(rt(format!("addresses of {ifname}")))?
        {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    found.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(Some(found))
    })
    .await
}

/// Removes the veth pair by its host side (which also removes the container side). Missing
/// is fine: deletion is idempotent.
pub async fn delete_veth(host_ifname: &str) -> Result<(), NetlinkError> {
    let host_ifname = host_ifname.to_owned();
    on_own_thread(move |handle| async move {
        if let Some(index) = link_index(&handle, &host_ifname).await? {
            match handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(rt(format!("removing {host_ifname}"))(e)),
            }
        }
        Ok(())
    })
    .await
}

/// Runs `f` with a netlink connection of its own on a blocking thread. The kernel carries
/// out a request inside the `sendmsg` that sends it, and removing a link waits there for
/// RCU grace periods (10-25 ms): on a runtime worker that would stall every other task on
/// it, and concurrent DELs would queue behind each other instead of sharing grace periods.
async fn on_own_thread<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
{
    tokio::task::spawn_blocking(move || with_connection(f))
        .await
        .unwrap_or_else(|p| std::panic::resume_unwind(p.into_panic()))
}

/// Runs `f` with a netlink connection of its own on this (blocking) thread.
fn with_connection<T, F, Fut>(f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, NetlinkError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetlinkError::Socket)?;
    runtime.block_on(async move { f(connect()?).await })
}

/// Whether an interface exists here, and whether the container still has `ifname`.
pub async fn container_has(netns: &Path, ifname: &str) -> Result<bool, NetlinkError> {
    let ifname = ifname.to_owned();
    Ok(
        in_netns(netns, move |h| async move { link_index(&h, &ifname).await })
            .await?
            .is_some(),
    )
}
