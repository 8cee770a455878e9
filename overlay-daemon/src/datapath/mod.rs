//! Loads the eBPF datapath, attaches it and pins everything under the node's bpffs directory:
//!
//! ```text
//! <bpffs>/maps/OVL_*            the tables (pinned by name, reused on restart)
//! <bpffs>/links/underlay-tc     TC ingress on the underlay (decapsulation)
//! <bpffs>/links/underlay-xdp    XDP on the underlay (early VXLAN filter)
//! <bpffs>/links/ep-<ifindex>    TC ingress on each container's host-side veth
//! ```
//!
//! Links are pinned, so the datapath keeps forwarding while the daemon is down. A restarted
//! daemon loads the new programs and swaps them into the pinned links with `bpf_link_update`,
//! which is atomic: no packet sees a missing program.

mod attach;
mod compat;
mod pins;
mod sock_attach;

use std::{fs, io, net::IpAddr, path::PathBuf};

use aya::{
    programs::{links::LinkError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use overlay_common::maps::{names, programs};
use tracing::{info, warn};

pub use pins::{ifname, remove, PinLayout};
pub use sock_attach::{cgroup2_root, SocketLb};

use crate::{
    maps::{DatapathMaps, MapsError},
    nexthop::NextHops,
};

/// The eBPF object built by build.rs from overlay-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("interface with index {0} not found")]
    NoSuchInterface(u32),
    #[error(transparent)]
    Locked(#[from] crate::locks::LockError),
}

/// Where XDP runs on the underlay, if at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum XdpSetting {
    /// Native on real NICs; none on veth: there a native program makes the kernel strip GSO
    /// from the peer, and generic XDP only repeats the checks the TC decap program makes
    /// anyway while costing 10-15 % of throughput (`cargo xtask bench`).
    #[default]
    Auto,
    /// In the driver.
    Native,
    /// Generic XDP in the stack: works everywhere, costs more.
    Skb,
    /// No XDP program; TC alone checks VXLAN.
    Off,
}

impl XdpSetting {
    /// Turns `Auto` into a concrete mode for an underlay driven by `driver`.
    pub fn resolve(self, driver: Option<&str>) -> XdpSetting {
        match (self, driver) {
            (XdpSetting::Auto, Some("veth")) => XdpSetting::Off,
            (XdpSetting::Auto, _) => XdpSetting::Native,
            (other, _) => other,
        }
    }
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TcMode {
    /// On the underlay TCX links on Linux 6.6 and later, clsact filters before; on
    /// container veths clsact filters (attached in 0.1 ms where a TCX link takes a grace
    /// period).
    #[default]
    Auto,
    /// TCX links everywhere (Linux 6.6 or later).
    Tcx,
    /// clsact filters everywhere.
    Clsact,
}

impl TcMode {
    /// The modes of the underlay and of container veths. Auto gives container veths clsact
    /// filters even where TCX exists: attaching a TCX link waits for an RCU grace period with
    /// the RTNL lock held (13 ms per attach on the benchmark host, against 0.08 ms for a
    /// filter), which every pod's ADD would pay and every concurrent ADD or link change on
    /// the host would queue behind. The daemon makes those veths, so nothing else attaches
    /// there that TCX's ownership would protect.
    fn resolve(self) -> (TcMode, TcMode) {
        match self {
            TcMode::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => (TcMode::Tcx, TcMode::Clsact),
                _ => (TcMode::Clsact, TcMode::Clsact),
            },
            other => (other, other),
        }
    }
}

/// clsact filters of ours use this priority and handle, so a restart can replace them.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: u32 = 0x0F1;

/// Size of the endpoint tables unless told otherwise (entries are allocated on demand).
pub const DEFAULT_MAX_ENDPOINTS: u32 = overlay_common::maps::MAX_ENDPOINTS;

/// What loading does with pinned maps of another layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Migration {
    /// Make them anew in place (nothing forwards on them: tests, unattached loads).
    Replace,
    /// Make them anew apart, for `commit` (a daemon taking over a forwarding datapath).
    Staged,
}

/// Options for loading the datapath.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    pub pins: PinLayout,
    pub underlay_ifindex: u32,
    pub xdp: XdpSetting,
    pub tc_mode: TcMode,
    /// Most verbose aya-log level compiled in (0 = off .. 5 = trace).
    pub ebpf_log_level: u8,
    /// Size of the endpoint tables when they are created (pinned ones keep theirs).
    pub max_endpoints: Option<u32>,
    pub socket_lb: SocketLb,
    /// Where the socket hooks go (default: the root of the cgroup v2 hierarchy).
    pub socket_lb_cgroup: Option<PathBuf>,
}

/// What a program did with a test frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (TC action or XDP action).
    pub verdict: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// Where the programs are attached.
#[derive(Clone, Debug)]
struct AttachPlan {
    underlay_ifindex: u32,
    xdp: XdpSetting,
    socket_lb: SocketLb,
    socket_lb_cgroup: Option<PathBuf>,
}

/// A migrating datapath: what it attaches once its maps are filled (`Datapath::commit`).
#[derive(Clone, Debug)]
struct Staged {
    /// The maps made anew for the new layout.
    replaced: Vec<String>,
    plan: AttachPlan,
}

/// A loaded, attached datapath.
pub struct Datapath {
    /// Held while the datapath is this process's.
    _lock: crate::locks::HostLock,
    ebpf: Ebpf,
    pins: PinLayout,
    /// How the underlay's TC program is attached.
    tc_mode: TcMode,
    /// How container veths' programs are attached.
    container_tc: TcMode,
    pub maps: DatapathMaps,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// Without it (a datapath loaded for tests), the kernel routes each encapsulated packet.
    next_hops: Option<NextHops>,
    /// Whether the socket hooks are attached.
    socket_lb: bool,
    /// The namespaces the socket hooks balance for, and closing sockets of backends that left.
    pub sockets: crate::sock_lb::SocketBalancer,
    /// Loaded for a pinned datapath of another layout, not attached yet: the old programs
    /// forward on the old maps until the first reconcile pass has filled the new ones.
    staged: Option<Staged>,
}

impl Datapath {
    /// Loads the programs and maps and attaches them to the underlay; container links left
    /// by a previous daemon are re-pointed at the new programs. If the pinned maps are of
    /// another layout (another release), the new programs are loaded against new maps and
    /// nothing is attached yet: `commit` does, after the first reconcile pass filled them.
    pub fn load(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let (mut datapath, replaced) = Self::load_sized(
            &opts.pins,
            opts.tc_mode,
            opts.ebpf_log_level,
            opts.max_endpoints,
            Migration::Staged,
        )?;
        let plan = AttachPlan {
            underlay_ifindex: opts.underlay_ifindex,
            xdp: opts.xdp,
            socket_lb: opts.socket_lb,
            socket_lb_cgroup: opts.socket_lb_cgroup.clone(),
        };
        if !replaced.is_empty() {
            info!(bpffs = %opts.pins.root().display(), ?replaced,
                  "pinned datapath of another layout: the new programs take over once their maps are filled");
            datapath.staged = Some(Staged { replaced, plan });
            return Ok(datapath);
        }
        datapath.attach_all(&plan)?;
        info!(bpffs = %opts.pins.root().display(), tc_mode = ?datapath.tc_mode, container_tc = ?datapath.container_tc, xdp = ?opts.xdp,
              socket_lb = datapath.socket_lb, "datapath loaded");
        Ok(datapath)
    }

    fn attach_all(&mut self, plan: &AttachPlan) -> Result<(), DatapathError> {
        self.attach_underlay(plan.underlay_ifindex, plan.xdp)?;
        self.reattach_endpoints();
        self.socket_lb = self.attach_socket_lb(plan.socket_lb, plan.socket_lb_cgroup.as_deref())?;
        self.maps.config.set_track_direct(!self.socket_lb)?;
        Ok(())
    }

    /// Whether the loaded programs still wait for their maps to be filled (`commit`).
    pub fn is_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// A migrating datapath takes over, its maps filled by a reconcile pass: every link
    /// switches to the new programs atomically (`bpf_link_update`), then the new maps' pins
    /// replace the old ones. Nothing to do otherwise.
    pub fn commit(&mut self) -> Result<(), DatapathError> {
        let Some(staged) = self.staged.take() else {
            return Ok(());
        };
        self.attach_all(&staged.plan)?;
        compat::promote(&self.pins.maps(), &self.pins.staged_maps())?;
        info!(bpffs = %self.pins.root().display(), replaced = ?staged.replaced, tc_mode = ?self.tc_mode, container_tc = ?self.container_tc,
              xdp = ?staged.plan.xdp, socket_lb = self.socket_lb,
              "datapath migrated: the new programs forward on their filled maps");
        Ok(())
    }

    /// Loads the programs and (pinned) maps without attaching anything.
    pub fn load_unattached(
        pins: &PinLayout,
        tc_mode: TcMode,
        ebpf_log_level: u8,
    ) -> Result<Self, DatapathError> {
        Ok(Self::load_sized(pins, tc_mode, ebpf_log_level, None, Migration::Replace)?.0)
    }

    fn load_sized(
        pins: &PinLayout,
        tc_mode: TcMode,
        ebpf_log_level: u8,
        max_endpoints: Option<u32>,
        migration: Migration,
    ) -> Result<(Self, Vec<String>), DatapathError> {
        pins::ensure_bpffs(pins.root())?;
        for dir in [pins.maps(), pins.links()] {
            fs::create_dir_all(&dir).map_err(|source| DatapathError::Io { path: dir, source })?;
        }
        // Before touching a pin: a second daemon on these pins would swap its programs in.
        let lock = crate::locks::HostLock::bpffs(pins.root())?;
        // A migration that never took over left maps no program forwarded on.
        let _ = fs::remove_dir_all(pins.staged_maps());
        let replaced = match migration {
            Migration::Replace => {
                compat::replace_incompatible(&pins.maps())?;
                Vec::new()
            }
            Migration::Staged => compat::incompatible(&pins.maps())?,
        };
        let pin_dir = if replaced.is_empty() {
            pins.maps()
        } else {
            compat::stage(&pins.maps(), &pins.staged_maps(), &replaced)?;
            pins.staged_maps()
        };
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir).override_global(
            aya_log::LEVEL,
            &ebpf_log_level,
            false,
        );
        if let Some(n) = max_endpoints {
            loader
                .map_max_entries(names::ENDPOINTS_BY_IP, n)
                .map_max_entries(names::ENDPOINTS_BY_MAC, n)
                .map_max_entries(names::ENDPOINTS_BY_IP6, n);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("eBPF logs unavailable: {e}");
                None
            }
        };
        for name in [programs::FROM_CONTAINER, programs::FROM_UNDERLAY] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, programs::UNDERLAY_XDP)?;
        xdp.load().map_err(|source| DatapathError::Program {
            name: programs::UNDERLAY_XDP,
            source,
        })?;
        let maps = DatapathMaps::take(&mut ebpf)?;
        if let Some(n) = max_endpoints {
            let pinned = maps.endpoints.capacity();
            if pinned != n as usize {
                warn!(
                    pinned,
                    asked = n,
                    "the pinned endpoint tables keep their size: run `overlayd cleanup` first to resize them"
                );
            }
        }
        let (tc_mode, container_tc) = tc_mode.resolve();
        let datapath = Self {
            _lock: lock,
            ebpf,
            pins: pins.clone(),
            tc_mode,
            container_tc,
            maps,
            logger,
            next_hops: None,
            socket_lb: false,
            sockets: Default::default(),
            staged: None,
        };
        Ok((datapath, replaced))
    }

    /// Runs one program on a frame with BPF_PROG_TEST_RUN (nothing is sent anywhere).
    /// `skb_ctx` is an optional `struct __sk_buff` for TC programs (e.g. to set the ifindex).
    pub fn test_run(
        &self,
        name: &'static str,
        frame: &[u8],
        skb_ctx: Option<&[u8]>,
    ) -> Result<TestRunOutput, DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: skb_ctx,
            ..TestRunOptions::new()
        };
        let prog = self.ebpf.program(name).ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?;
        let result = match prog {
            aya::programs::Program::SchedClassifier(p) => p.test_run(opts),
            aya::programs::Program::Xdp(p) => p.test_run(opts),
            _ => Err(aya::programs::ProgramError::NotLoaded),
        }
        .map_err(|source| DatapathError::Program { name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: result.return_value as i32,
            frame: out,
        })
    }

    /// The aya-log reader; the daemon polls it so eBPF log lines reach tracing.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Whether container sockets are balanced when they connect.
    pub fn socket_lb(&self) -> bool {
        self.socket_lb
    }

    /// Pins each VTEP's underlay next hop from now on (see `nexthop`).
    pub fn set_next_hops(&mut self, next_hops: NextHops) {
        self.next_hops = Some(next_hops);
    }

    /// Stops pinning next hops (route changes can no longer be seen): every VTEP goes back to
    /// a route lookup per packet.
    pub fn clear_next_hops(&mut self) -> Result<usize, MapsError> {
        self.next_hops = None;
        self.refresh_next_hops_with(|_| None)
    }

    fn next_hop(&mut self, vtep: IpAddr) -> Option<IpAddr> {
        self.next_hops.as_mut().and_then(|n| n.resolve(vtep))
    }

    /// Adds or replaces one remote VTEP, with its next hop.
    pub fn insert_vtep(&mut self, vtep: IpAddr, node_id: u32) -> Result<(), MapsError> {
        let nexthop = self.next_hop(vtep);
        self.maps.vteps.insert(vtep, node_id, nexthop)
    }

    /// Removes one remote VTEP (absent is fine).
    pub fn remove_vtep(&mut self, vtep: IpAddr) -> Result<(), MapsError> {
        if let Some(n) = self.next_hops.as_mut() {
            n.retain(|v| v != vtep);
        }
        self.maps.vteps.remove(vtep)
    }

    /// Makes the VTEP table equal to `vteps` (address, node id), with their next hops.
    pub fn sync_vteps(&mut self, vteps: &[(IpAddr, u32)]) -> Result<(usize, usize), MapsError> {
        if let Some(n) = self.next_hops.as_mut() {
            let wanted: std::collections::HashSet<IpAddr> =
                vteps.iter().map(|&(ip, _)| ip).collect();
            n.retain(|v| wanted.contains(&v));
        }
        let desired: Vec<_> = vteps
            .iter()
            .map(|&(ip, node_id)| (ip, node_id, self.next_hop(ip)))
            .collect();
        self.maps.vteps.sync(desired)
    }

    /// The routing table changed: asks again for every VTEP's next hop and rewrites the
    /// entries whose next hop moved. Returns how many.
    pub fn refresh_next_hops(&mut self) -> Result<usize, MapsError> {
        let Some(mut next_hops) = self.next_hops.take() else {
            return Ok(0);
        };
        next_hops.invalidate();
        let changed = self.refresh_next_hops_with(|vtep| next_hops.resolve(vtep));
        self.next_hops = Some(next_hops);
        changed
    }

    fn refresh_next_hops_with(
        &mut self,
        mut resolve: impl FnMut(IpAddr) -> Option<IpAddr>,
    ) -> Result<usize, MapsError> {
        let mut changed = 0;
        for (vtep, node_id, old) in self.maps.vteps.entries()? {
            let new = resolve(vtep);
            if new != old {
                info!(%vtep, old = ?old, new = ?new, "underlay next hop changed");
                self.maps.vteps.insert(vtep, node_id, new)?;
                changed += 1;
            }
        }
        Ok(changed)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program(ebpf, name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// docs/architecture.md's map table names exactly the maps the built object defines,
    /// and every one of them is in `overlay_common::maps::names::ALL`.
    #[test]
    fn the_architecture_map_table_lists_every_map() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let defined: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        let doc = include_str!("../../../docs/architecture.md");
        let start = doc.find("\n## Maps").expect("a Maps section");
        let section = &doc[start..];
        let section = &section[..section[4..].find("\n## ").map_or(section.len(), |e| e + 4)];
        let listed: BTreeSet<&str> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('`').nth(1))
            .collect();
        assert_eq!(listed, defined, "docs/architecture.md's map table");
        let ours: BTreeSet<&str> = defined
            .iter()
            .copied()
            .filter(|n| n.starts_with("OVL_"))
            .collect();
        assert_eq!(ours, names::ALL.iter().copied().collect::<BTreeSet<_>>());
    }
}
