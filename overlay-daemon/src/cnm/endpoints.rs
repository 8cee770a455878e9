//! The cluster operations only Docker needs: libnetwork asks IPAM for an address before the
//! endpoint exists, so an address is first reserved (a record without an interface, which
//! other nodes already route here), then given a veth pair whose far side Docker moves into
//! the container itself.

use std::{net::Ipv4Addr, time::Duration};

use overlay_api::{Attachment, Endpoint, EndpointRequest, Owner, Sandbox};
use tracing::info;

use crate::{
    cluster::{host_ifname, Cluster, ClusterError},
    netlink,
    store::records::{self, EndpointRecord, NetworkRecord},
    tables::MacAddr,
};

/// Docker endpoints are known by their address until Docker names them: IPAM hands the
/// address out before the endpoint exists.
pub fn docker_address_id(network: &str, ip: Ipv4Addr) -> String {
    format!("docker:{network}:{ip}")
}

/// The `ifname` of every Docker endpoint (Docker picks the name inside the container).
pub const DOCKER_IFNAME: &str = "eth";

/// What Docker's CreateEndpoint says of the endpoint an address is attached to.
pub struct DockerAttach<'a> {
    /// Docker's endpoint id.
    pub endpoint_id: &'a str,
    /// The veth side Docker moves into the container (left in this namespace).
    pub peer: &'a str,
    pub mac: Option<MacAddr>,
    pub services: Vec<String>,
    /// Its name in the overlay's DNS.
    pub name: Option<String>,
    /// The Docker network's MTU option.
    pub mtu: Option<u32>,
}

impl Cluster {
    /// Reserves an address for a Docker endpoint (IPAM RequestAddress): published in etcd,
    /// remembered locally as `docker_address_id(network, ip)`/`DOCKER_IFNAME`, no veth yet.
    pub async fn reserve_address(
        &self,
        network: &str,
        requested: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<Endpoint, ClusterError> {
        let _guard = self.alloc.lock().await;
        let req = EndpointRequest {
            network: network.to_owned(),
            container_id: docker_address_id(network, requested.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            ifname: DOCKER_IFNAME.into(),
            mac,
            owner: Owner::Docker,
            ..Default::default()
        };
        let (_, _, ep) = self
            .reserve_locked(
                &req,
                crate::cluster::Claim::Docker { requested },
                Sandbox::Runtime,
                Attachment::Reserved,
            )
            .await?;
        info!(ip = %ep.key_ip(), network, "address reserved for a Docker endpoint");
        Ok(ep)
    }

    /// Gives up a Docker reservation's IPv6 address, which Docker will not configure (a
    /// network without `--ipv6`, IPv6 off in the container), so that no node answers for it.
    /// Only before the endpoint is attached; idempotent.
    pub async fn drop_docker_ipv6(&self, network: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
        let _guard = self.alloc.lock().await;
        let id = docker_address_id(network, ip);
        let Some(mut ep) = self.local.load(&id, DOCKER_IFNAME) else {
            return Ok(());
        };
        if ep.attachment != Attachment::Reserved {
            return Ok(());
        }
        let store = self.try_store()?;
        let Some((key6, value6)) = self.endpoint6_kv(&store, &ep) else {
            return Ok(());
        };
        // Forgotten locally first: a crash before the delete leaves an orphan claim, which
        // the reaper removes; the other order could leave an address claimed by nobody's
        // record yet handed out again.
        ep.ipv6 = None;
        self.local.save(&ep)?;
        store.delete_if(&key6, value6).await?;
        info!(%ip, network, "IPv6 address of a Docker endpoint given up: Docker does not configure it");
        Ok(())
    }

    /// Gives a reserved Docker address its veth pair: the host side gets the datapath, the
    /// other side (`peer`, left in this namespace with MAC and MTU set) is for Docker to move
    /// into the container. Idempotent.
    pub async fn attach_docker(
        &self,
        network: &str,
        ip: Ipv4Addr,
        how: DockerAttach<'_>,
    ) -> Result<Endpoint, ClusterError> {
        let _guard = self.alloc.lock().await;
        let id = docker_address_id(network, ip);
        let mut ep = self
            .local
            .load(&id, DOCKER_IFNAME)
            .ok_or_else(|| ClusterError::NotFound(format!("{network}/{ip}")))?;
        if ep
            .host_ifname()
            .is_some_and(|h| crate::netif::ifindex(h).is_some())
        {
            return Ok(ep);
        }
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let store = self.try_store()?;
        let (key, before) = self.endpoint_kv(&store, &ep);
        let host = host_ifname(&id, DOCKER_IFNAME);
        ep.attachment = Attachment::Veth {
            host_ifname: host.clone(),
        };
        ep.services = how.services;
        ep.name = how.name;
        ep.docker_endpoint = Some(how.endpoint_id.to_owned());
        if let Some(mac) = how.mac {
            ep.mac = mac;
        }
        // The Docker network's own MTU (checked against the limits when it was created).
        if let Some(mtu) = how.mtu {
            ep.mtu = ep.mtu.min(mtu);
        }
        ep.host_mac = netlink::create_veth_here(&host, how.peer, ep.mac.0, ep.mtu)
            .await?
            .map(MacAddr);
        let (v4, v6) = (ep.ip(), ep.ipv6.map(|a| a.ip));
        if let Err(e) = crate::host_route::add(&host, v4, v6, ep.mac.0).await {
            let _ = netlink::delete_veth(&host).await;
            return Err(e.into());
        }
        let after = records::encode(&EndpointRecord::of(&ep, &self.cfg.node_name));
        match store.replace(&key, before, after, Some(lease)).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = netlink::delete_veth(&host).await;
                return Err(ClusterError::NotFound(format!(
                    "{network}/{ip} (its address record changed in etcd)"
                )));
            }
            Err(e) => {
                let _ = netlink::delete_veth(&host).await;
                return Err(e.into());
            }
        }
        let done = match self.local.save(&ep) {
            Ok(()) => match self.put_endpoint_info(&store, lease, &ep).await {
                Ok(()) => self.install(&store, lease, &ep).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            // Back to a plain reservation: Docker releases the address separately.
            let _ = netlink::delete_veth(&host).await;
            if let Err(undo) = self.back_to_reservation(&store, lease, &mut ep).await {
                tracing::warn!(%ip, network, "undoing a failed attach: {undo}");
            }
            self.applied.bump();
            return Err(e);
        }
        info!(ip = %ep.key_ip(), network, host = %host, "Docker endpoint attached");
        Ok(ep)
    }

    /// Removes a Docker endpoint's veth pair but keeps its address reserved (Docker releases
    /// it separately). Idempotent.
    pub async fn detach_docker(&self, network: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
        let _guard = self.alloc.lock().await;
        let id = docker_address_id(network, ip);
        let Some(mut ep) = self.local.load(&id, DOCKER_IFNAME) else {
            return Ok(());
        };
        let Some(host) = ep.host_ifname().map(str::to_owned) else {
            return Ok(());
        };
        let lease = self.lease().ok_or(ClusterError::NotRegistered)?;
        let store = self.try_store()?;
        netlink::delete_veth(&host).await?;
        self.back_to_reservation(&store, lease, &mut ep).await?;
        let generation = self.applied.bump();
        self.wait_for(generation).await?;
        info!(%ip, network, "Docker endpoint detached");
        Ok(())
    }

    /// Makes an attached Docker endpoint a plain reservation again, in etcd, locally and in
    /// the view.
    async fn back_to_reservation(
        &self,
        store: &crate::store::Store,
        lease: i64,
        ep: &mut Endpoint,
    ) -> Result<(), ClusterError> {
        if let Some((info, value)) = self.endpoint_info_kv(store, ep) {
            store.delete_if(&info, value).await?;
        }
        let (key, before) = self.endpoint_kv(store, ep);
        ep.attachment = Attachment::Reserved;
        ep.host_mac = None;
        ep.docker_endpoint = None;
        // The name was the attached container's: a reservation answers to none.
        ep.name = None;
        let (_, after) = self.endpoint_kv(store, ep);
        store
            .replace(&key, before, after.clone(), Some(lease))
            .await?;
        self.local.save(ep)?;
        self.view
            .lock()
            .await
            .apply(crate::store::client::Change::Put(
                crate::store::client::Kv {
                    key,
                    value: after,
                    lease,
                },
            ));
        Ok(())
    }

    /// Creates an overlay network in etcd (the Docker driver's `-o vni=N`) and waits until
    /// this node's view has it. Returns false if the name or VNI is taken.
    pub async fn create_network(
        &self,
        name: &str,
        record: NetworkRecord,
    ) -> Result<bool, ClusterError> {
        let store = self.try_store()?;
        if !store
            .create_network(name, record.vni, records::encode(&record))
            .await?
        {
            return Ok(false);
        }
        for _ in 0..100 {
            if self.network(name).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }
}
