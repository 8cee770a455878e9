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

use std::{
    ffi::CStr,
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use overlay_common::maps::programs;
use tracing::{debug, info, warn};

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
    /// TCX links on Linux 6.6 and later, clsact filters before.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcMode {
    fn resolve(self) -> TcMode {
        match self {
            TcMode::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcMode::Tcx,
                _ => TcMode::Clsact,
            },
            other => other,
        }
    }
}

/// clsact filters of ours use this priority and handle, so a restart can replace them.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: u32 = 0x0F1;

/// The directory layout of one node's pins.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    fn underlay_tc(&self) -> PathBuf {
        self.links().join("underlay-tc")
    }
    fn underlay_xdp(&self) -> PathBuf {
        self.links().join("underlay-xdp")
    }
    fn endpoint(&self, ifindex: u32) -> PathBuf {
        self.links().join(format!("ep-{ifindex}"))
    }
    /// ifindexes of container interfaces with a pinned link.
    pub fn endpoint_links(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(self.links()) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("ep-")?.parse().ok())
            .collect()
    }
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
}

/// What a program did with a test frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (TC action or XDP action).
    pub verdict: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// A loaded, attached datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinLayout,
    tc_mode: TcMode,
    pub maps: DatapathMaps,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// Without it (a datapath loaded for tests), the kernel routes each encapsulated packet.
    next_hops: Option<NextHops>,
}

impl Datapath {
    /// Loads the programs and maps and attaches them to the underlay; container links left
    /// by a previous daemon are re-pointed at the new programs.
    pub fn load(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let mut datapath = Self::load_unattached(&opts.pins, opts.tc_mode, opts.ebpf_log_level)?;
        datapath.attach_underlay(opts.underlay_ifindex, opts.xdp)?;
        datapath.reattach_endpoints();
        info!(bpffs = %opts.pins.root().display(), tc_mode = ?datapath.tc_mode, xdp = ?opts.xdp, "datapath loaded");
        Ok(datapath)
    }

    /// Loads the programs and (pinned) maps without attaching anything.
    pub fn load_unattached(
        pins: &PinLayout,
        tc_mode: TcMode,
        ebpf_log_level: u8,
    ) -> Result<Self, DatapathError> {
        ensure_bpffs(pins.root())?;
        for dir in [pins.maps(), pins.links()] {
            fs::create_dir_all(&dir).map_err(|source| DatapathError::Io { path: dir, source })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .override_global(aya_log::LEVEL, &ebpf_log_level, false)
            .load(EBPF_OBJECT)?;
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
        Ok(Self {
            ebpf,
            pins: pins.clone(),
            tc_mode: tc_mode.resolve(),
            maps,
            logger,
            next_hops: None,
        })
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

    fn attach_underlay(&mut self, ifindex: u32, xdp: XdpSetting) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?;
        let path = self.pins.underlay_tc();
        self.attach_tc(programs::FROM_UNDERLAY, &ifname, &path)?;

        let path = self.pins.underlay_xdp();
        let mode = match xdp {
            XdpSetting::Auto => unreachable!("resolved by XdpSetting::resolve"),
            XdpSetting::Native => XdpMode::Driver,
            XdpSetting::Skb => XdpMode::Skb,
            XdpSetting::Off => {
                remove_link_pin(&path);
                return Ok(());
            }
        };
        let name = programs::UNDERLAY_XDP;
        let err = |source| DatapathError::Program { name, source };
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let id = match PinnedLink::from_pin(&path) {
            Ok(old) => match FdLink::from(old).try_into() {
                Ok(link) => prog.attach_to_link(link).map_err(err)?,
                Err(e) => {
                    warn!("pinned XDP link unusable ({e}); attaching anew");
                    remove_link_pin(&path);
                    prog.attach(&ifname, mode).map_err(err)?
                }
            },
            Err(_) => prog.attach(&ifname, mode).map_err(err)?,
        };
        let link = prog.take_link(id).map_err(err)?;
        match FdLink::try_from(link) {
            Ok(fd_link) => pin_link(fd_link, &path)?,
            // Netlink XDP (no bpf_link support): keep it attached past our exit.
            Err(_) => warn!("XDP attached without a bpf_link; it is not pinned"),
        }
        Ok(())
    }

    /// Attaches (or, if a pinned link exists, atomically re-points) a TC ingress program.
    fn attach_tc(
        &mut self,
        name: &'static str,
        ifname: &str,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        let err = |source| DatapathError::Program { name, source };
        let prog = classifier(&mut self.ebpf, name)?;
        match self.tc_mode {
            TcMode::Clsact => {
                // Keep a clsact filter at a fixed priority/handle: replace it if present.
                let _ = aya::programs::tc::qdisc_add_clsact(ifname);
                let handle = TcHandle::from(CLSACT_HANDLE);
                let existing = SchedClassifierLink::attached(
                    ifname,
                    TcAttachType::Ingress,
                    CLSACT_PRIORITY,
                    handle,
                    None,
                )
                .ok()
                .and_then(|link| prog.attach_to_link(link).ok());
                let id = match existing {
                    Some(id) => id,
                    None => prog
                        .attach_with_options(
                            ifname,
                            TcAttachType::Ingress,
                            TcAttachOptions::Netlink(NlOptions {
                                priority: CLSACT_PRIORITY,
                                handle,
                                ..Default::default()
                            }),
                        )
                        .map_err(err)?,
                };
                // Leaving the filter in place when we exit is the point.
                std::mem::forget(prog.take_link(id).map_err(err)?);
                fs::write(pin, b"clsact\n").map_err(|source| DatapathError::Io {
                    path: pin.to_owned(),
                    source,
                })?;
            }
            _ => {
                let fresh = |prog: &mut SchedClassifier| {
                    prog.attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                };
                let id = match PinnedLink::from_pin(pin) {
                    Ok(old) => {
                        let replaced = FdLink::from(old)
                            .try_into()
                            .map_err(|e: LinkError| e.to_string())
                            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
                        match replaced {
                            Ok(id) => id,
                            Err(e) => {
                                debug!(pin = %pin.display(), "stale TC link ({e}); attaching anew");
                                remove_link_pin(pin);
                                fresh(prog).map_err(err)?
                            }
                        }
                    }
                    Err(_) => fresh(prog).map_err(err)?,
                };
                let link = prog.take_link(id).map_err(err)?;
                let fd_link = FdLink::try_from(link)
                    .map_err(|source| DatapathError::Link { name, source })?;
                pin_link(fd_link, pin)?;
            }
        }
        Ok(())
    }

    /// Re-points every pinned container link at the newly loaded program; links whose
    /// interface is gone are unpinned.
    fn reattach_endpoints(&mut self) {
        for ifindex in self.pins.endpoint_links() {
            if let Err(e) = self.attach_container(ifindex) {
                debug!(ifindex, "dropping stale container link: {e}");
                self.detach_container(ifindex);
            }
        }
    }

    /// Attaches the from-container program to a host-side veth.
    pub fn attach_container(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?;
        let pin = self.pins.endpoint(ifindex);
        self.attach_tc(programs::FROM_CONTAINER, &ifname, &pin)
    }

    /// Detaches the from-container program from a host-side veth (if it still exists).
    pub fn detach_container(&mut self, ifindex: u32) {
        let pin = self.pins.endpoint(ifindex);
        if self.tc_mode == TcMode::Clsact {
            if let Ok(name) = ifname(ifindex) {
                detach_clsact(&name);
            }
        }
        remove_link_pin(&pin);
    }

    /// ifindexes of the container interfaces the datapath is attached to.
    pub fn attached_containers(&self) -> Vec<u32> {
        self.pins.endpoint_links()
    }

    /// Whether the datapath is attached to this container interface.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.pins.endpoint(ifindex).exists()
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
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

    fn next_hop(&mut self, vtep: Ipv4Addr) -> Option<Ipv4Addr> {
        self.next_hops.as_mut().and_then(|n| n.resolve(vtep))
    }

    /// Adds or replaces one remote VTEP, with its next hop.
    pub fn insert_vtep(&mut self, vtep: Ipv4Addr, node_id: u32) -> Result<(), MapsError> {
        let nexthop = self.next_hop(vtep);
        self.maps.vteps.insert(vtep, node_id, nexthop)
    }

    /// Removes one remote VTEP (absent is fine).
    pub fn remove_vtep(&mut self, vtep: Ipv4Addr) -> Result<(), MapsError> {
        if let Some(n) = self.next_hops.as_mut() {
            n.retain(|v| v != vtep);
        }
        self.maps.vteps.remove(vtep)
    }

    /// Makes the VTEP table equal to `vteps` (address, node id), with their next hops.
    pub fn sync_vteps(&mut self, vteps: &[(Ipv4Addr, u32)]) -> Result<(usize, usize), MapsError> {
        if let Some(n) = self.next_hops.as_mut() {
            let wanted: std::collections::HashSet<Ipv4Addr> =
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
        mut resolve: impl FnMut(Ipv4Addr) -> Option<Ipv4Addr>,
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

/// Detaches everything and removes every pin of a node: the opposite of `Datapath::load`.
/// Best effort: carries on past errors and returns them all.
pub fn remove(pins: &PinLayout, underlay_ifname: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Ok(dir) = fs::read_dir(pins.links()) {
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            if fs::read(&path).is_ok_and(|c| c.starts_with(b"clsact")) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ifname = match name.strip_prefix("ep-").and_then(|i| i.parse().ok()) {
                    Some(ifindex) => ifname(ifindex).ok(),
                    None => underlay_ifname.map(str::to_owned),
                };
                if let Some(ifname) = ifname {
                    detach_clsact(&ifname);
                }
            }
            if let Err(e) = remove_pin(&path) {
                errors.push(format!("{}: {e}", path.display()));
            }
        }
    }
    if let Ok(dir) = fs::read_dir(pins.maps()) {
        for entry in dir.filter_map(Result::ok) {
            if let Err(e) = fs::remove_file(entry.path()) {
                errors.push(format!("{}: {e}", entry.path().display()));
            }
        }
    }
    for dir in [pins.links(), pins.maps(), pins.root().to_owned()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", dir.display())),
        }
    }
    errors
}

fn detach_clsact(ifname: &str) {
    if let Ok(link) = SchedClassifierLink::attached(
        ifname,
        TcAttachType::Ingress,
        CLSACT_PRIORITY,
        TcHandle::from(CLSACT_HANDLE),
        None,
    ) {
        let _ = aya::programs::links::Link::detach(link);
    }
}

fn remove_pin(path: &Path) -> io::Result<()> {
    // Unpinning a bpf_link detaches it once the last fd is closed (ours, dropped here).
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_link_pin(path: &Path) {
    if let Err(e) = remove_pin(path) {
        warn!(path = %path.display(), "removing link pin: {e}");
    }
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), DatapathError> {
    // A leftover pin (e.g. a link whose interface vanished) would make pinning fail.
    let _ = remove_pin(path);
    link.pin(path).map_err(|source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
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

/// Makes sure `dir` can live on a bpffs, mounting /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    // The nearest existing ancestor decides which filesystem the directory will be on.
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if dir.starts_with(default) && !is_bpffs(default) {
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DatapathError::Bpffs(format!("mounting bpffs on /sys/fs/bpf: {e}")))?;
        return Ok(());
    }
    Err(DatapathError::Bpffs(format!(
        "{} is not on a bpf filesystem: mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs under it",
        dir.display()
    )))
}

/// Name of an interface in this network namespace.
pub fn ifname(ifindex: u32) -> Result<String, DatapathError> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return Err(DatapathError::NoSuchInterface(ifindex));
    }
    Ok(unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned())
}
