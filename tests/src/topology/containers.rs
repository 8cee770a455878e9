//! Containers: pods the daemon makes through its API, and hand-made ones for the static
//! tables file.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::Ipv4Net;
use overlay_api::{Endpoint, EndpointRequest, Ipv6Assignment};
use overlay_daemon::tables::{EndpointIface, EndpointSpec, MacAddr};

use super::{Container, Topology};
use crate::Netns;

impl Topology {
    /// Creates an empty container namespace and asks host `host`'s daemon for an endpoint in
    /// `network` (the daemon allocates the address and makes the veth).
    pub fn add_pod(&mut self, host: usize, name: &str, network: &str) -> usize {
        self.add_labelled_pod(host, name, network, &[])
    }

    /// `add_pod` for a container labelled `overlay.service=NAME:PORT` for each of `services`.
    pub fn add_labelled_pod(
        &mut self,
        host: usize,
        name: &str,
        network: &str,
        services: &[&str],
    ) -> usize {
        self.add_pod_with(host, name, network, services, None, None)
    }

    /// `add_pod` for a Kubernetes pod `<namespace>/<name>` (as a CRI runtime names it).
    pub fn add_k8s_pod(
        &mut self,
        host: usize,
        name: &str,
        network: &str,
        namespace: &str,
    ) -> usize {
        let pod = overlay_api::Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: Some(format!("uid-{name}")),
        };
        self.add_pod_with(host, name, network, &[], Some(pod), None)
    }

    /// `add_pod` for a container its runtime names outside a pod (as podman does): its DNS
    /// name in the network.
    pub fn add_named_pod(&mut self, host: usize, name: &str, network: &str) -> usize {
        self.add_pod_with(host, name, network, &[], None, Some(name.into()))
    }

    fn add_pod_with(
        &mut self,
        host: usize,
        name: &str,
        network: &str,
        services: &[&str],
        pod: Option<overlay_api::Pod>,
        runtime_name: Option<String>,
    ) -> usize {
        let ns = self.container_ns(name, network);
        let req = EndpointRequest {
            network: network.to_owned(),
            container_id: format!("{}-{name}", self.id),
            netns: PathBuf::from(ns.path()),
            ifname: "eth0".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            pod,
            name: runtime_name,
            ..Default::default()
        };
        // The daemon writes its first status before it binds the API socket: a pod added
        // right after `start_all` could find no socket yet.
        let socket = overlay_daemon::api::socket_path(&self.hosts[host].run_dir);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ep = self.client(host).create_endpoint(req).unwrap_or_else(|e| {
            panic!(
                "creating endpoint {name} on {}: {e}\n{}",
                self.hosts[host].name,
                self.daemon_log(host)
            )
        });
        self.push_container(name, ns, host, network, &ep)
    }

    /// A new container namespace; IPv6 is off in it unless `network` is dual-stack (so the
    /// container's kernel sends nothing of IPv6 where nothing of IPv6 is expected).
    fn container_ns(&self, name: &str, network: &str) -> Netns {
        let ns = Netns::create(&format!("ovt{}-{name}", self.id));
        let has_ipv6 = self
            .tables
            .networks
            .iter()
            .any(|n| n.name == network && n.subnet6.is_some());
        if !has_ipv6 {
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        }
        ns
    }

    /// Records a container the daemon made an endpoint for.
    fn push_container(
        &mut self,
        name: &str,
        ns: Netns,
        host: usize,
        network: &str,
        ep: &Endpoint,
    ) -> usize {
        self.containers.push(Container {
            name: name.to_owned(),
            ns,
            host,
            network: network.to_owned(),
            ip: ep.ip().unwrap_or(Ipv4Addr::UNSPECIFIED),
            mac: ep.mac,
            host_ifname: ep.host_ifname().unwrap_or_default().to_owned(),
            gateway: ep.ipv4.map_or(Ipv4Addr::UNSPECIFIED, |a| a.gateway),
            ipv6: ep.ipv6,
        });
        self.containers.len() - 1
    }

    pub fn tables_path(&self) -> PathBuf {
        self.dir.join("tables.json")
    }

    /// Writes the tables file every daemon reads (atomically).
    pub fn write_tables(&self) {
        let tmp = self.dir.join(".tables.json.tmp");
        let text = serde_json::to_string_pretty(&self.tables).expect("tables json");
        std::fs::write(&tmp, text).expect("write tables");
        std::fs::rename(&tmp, self.tables_path()).expect("rename tables");
    }

    /// Adds a container on host `host` (0-based) in `network`, with the `index`-th address
    /// of that host's range in the subnet (.<10*(host+1)+index>), and on a dual-stack network
    /// the same offset in the IPv6 subnet.
    pub fn add_container(&mut self, host: usize, name: &str, network: &str, index: u8) -> usize {
        let net = self
            .tables
            .networks
            .iter()
            .find(|n| n.name == network)
            .unwrap_or_else(|| panic!("no network {network}"))
            .clone();
        let offset = 10 * (host as u32 + 1) + index as u32;
        let subnet = net
            .subnet
            .expect("hand-made containers are on IPv4 networks");
        let ip = Ipv4Addr::from(u32::from(subnet.network()) + offset);
        let ipv6 = net.subnet6.map(|s6| Ipv6Assignment {
            ip: Ipv6Addr::from(u128::from(s6.network()) + offset as u128),
            prefix_len: s6.prefix_len(),
            gateway: net.gateway_ip6().expect("dual-stack"),
        });
        let mac = MacAddr::from_ip(ip);
        let ns = self.container_ns(name, network);
        let host_ifname = format!("v{name}");
        let mtu = self.container_mtu().to_string();
        let h = &self.hosts[host];
        h.ns.add_veth(&host_ifname, &mtu, "eth0", ns.name());
        h.ns.ip(&["link", "set", &host_ifname, "up"]);
        let prefix = Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix");
        let gateway = net.gateway_ip().expect("IPv4 network");
        ns.ip(&[
            "link",
            "set",
            "eth0",
            "address",
            &mac.to_string(),
            "mtu",
            &mtu,
            "up",
        ]);
        ns.ip(&["addr", "add", &prefix.to_string(), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
            "dev",
            "eth0",
        ]);
        if let Some(v6) = ipv6 {
            let addr = format!("{}/{}", v6.ip, v6.prefix_len);
            ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"]);
            let gw = v6.gateway.to_string();
            ns.ip(&["-6", "route", "add", "default", "via", &gw, "dev", "eth0"]);
        }
        self.tables.endpoints.push(EndpointSpec {
            bandwidth: None,
            ip6: ipv6.map(|v6| v6.ip),
            network: network.to_owned(),
            ip: Some(ip),
            mac: Some(mac),
            node: h.name.clone(),
            iface: EndpointIface::Veth(host_ifname.clone()),
            services: Vec::new(),
        });
        self.containers.push(Container {
            name: name.to_owned(),
            ns,
            host,
            network: network.to_owned(),
            ip,
            mac,
            host_ifname,
            gateway,
            ipv6,
        });
        self.containers.len() - 1
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// A container added to `network` on host `host` through the CNI plugin `plugin` (a
    /// real binary, of any release), as a runtime does; its details from the daemon.
    pub fn add_cni_container(
        &mut self,
        host: usize,
        name: &str,
        network: &str,
        plugin: &std::path::Path,
    ) -> Result<usize, (u64, String)> {
        let ns = self.container_ns(name, network);
        let id = format!("{}-{name}", self.id);
        let socket = overlay_daemon::api::socket_path(&self.hosts[host].run_dir);
        crate::cni::add_using(plugin, &socket, network, &id, &ns.path())?;
        let ep = self
            .client(host)
            .get_endpoint(&id, "eth0")
            .unwrap_or_else(|e| panic!("endpoint {id} after its ADD: {e}"));
        Ok(self.push_container(name, ns, host, network, &ep))
    }

    /// CNI DEL of a container `add_cni_container` made, through `plugin`; it leaves the
    /// topology's list.
    pub fn del_cni_container(
        &mut self,
        name: &str,
        plugin: &std::path::Path,
    ) -> Result<(), (u64, String)> {
        let i = self
            .containers
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"));
        let c = &self.containers[i];
        let socket = overlay_daemon::api::socket_path(&self.hosts[c.host].run_dir);
        let id = format!("{}-{name}", self.id);
        crate::cni::del_using(plugin, &socket, &c.network, &id, &c.ns.path())?;
        self.containers.remove(i);
        Ok(())
    }
}
