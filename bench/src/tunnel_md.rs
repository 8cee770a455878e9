//! The `kernel-vxlan-bpf` mode's programs (bench/ebpf): loaded once per host, attached with
//! TCX, and given the host's two entries. Detached when the host is dropped.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::HashMap,
    programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType},
    Ebpf,
};
use overlay_bench_common::{TunnelLocal, TunnelRemote};
use overlay_daemon::tables::MacAddr;
use overlay_tests::Netns;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunnel-md"));

/// The collect_md vxlan device of each host.
pub const DEVICE: &str = "vxb";
const VNI: u32 = 100;

/// A host's loaded programs; dropping it detaches them.
pub struct Programs {
    _ebpf: Ebpf,
}

/// What one host needs: its container (behind host veth `veth`) and the peer container.
pub struct HostPlan<'a> {
    pub host: &'a Netns,
    pub container: &'a Netns,
    pub veth: &'a str,
    pub local_ip: Ipv4Addr,
    pub remote_ip: Ipv4Addr,
    pub remote_vtep: Ipv4Addr,
}

pub fn install(plan: &HostPlan) -> Result<Programs> {
    let mac = |ns: &Netns, dev: &str| -> Result<[u8; 6]> {
        // `ip -br link`: name, state, MAC, flags.
        let text = ns.ip(&["-br", "link", "show", "dev", dev]);
        let field = text.split_whitespace().nth(2).unwrap_or_default();
        let mac: MacAddr = field.parse().map_err(|e: String| anyhow!(e))?;
        Ok(mac.0)
    };
    let local = TunnelLocal {
        vni: VNI,
        mac: mac(plan.container, "eth0")?,
        gateway_mac: mac(plan.host, plan.veth)?,
        ..Default::default()
    };
    let (veth, local_ip, remote_ip) = (plan.veth.to_owned(), plan.local_ip, plan.remote_ip);
    let vtep = u32::from(plan.remote_vtep);
    // Interface names and TCX attachment resolve in the caller's namespace: do it in the host's.
    plan.host.enter(move || -> Result<Programs> {
        let ifindex = |name: &str| {
            nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))
        };
        let vxlan_ifindex = ifindex(DEVICE)?;
        let local = TunnelLocal {
            ifindex: ifindex(&veth)?,
            ..local
        };
        let mut ebpf = Ebpf::load(OBJECT).context("loading the tunnel-md programs")?;
        let mut remote_map: HashMap<_, u32, TunnelRemote> = HashMap::try_from(
            ebpf.map_mut("TMD_REMOTE")
                .ok_or_else(|| anyhow!("TMD_REMOTE missing"))?,
        )?;
        let remote = TunnelRemote {
            vtep_ip: vtep,
            vni: VNI,
            vxlan_ifindex,
            _pad: 0,
        };
        remote_map.insert(key(remote_ip), remote, 0)?;
        let mut local_map: HashMap<_, u32, TunnelLocal> = HashMap::try_from(
            ebpf.map_mut("TMD_LOCAL")
                .ok_or_else(|| anyhow!("TMD_LOCAL missing"))?,
        )?;
        local_map.insert(key(local_ip), local, 0)?;
        for (name, iface) in [
            ("tmd_from_container", veth.as_str()),
            ("tmd_from_tunnel", DEVICE),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
            prog.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching {name} to {iface}"))?;
        }
        Ok(Programs { _ebpf: ebpf })
    })
}

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}
