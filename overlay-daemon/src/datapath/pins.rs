//! The bpffs layout of one node's pins, and removing them:
//!
//! ```text
//! <bpffs>/maps/OVL_*            the tables (pinned by name, reused on restart)
//! <bpffs>/links/underlay-tc     TC ingress on the underlay (decapsulation)
//! <bpffs>/links/underlay-xdp    XDP on the underlay (early VXLAN filter)
//! <bpffs>/links/ep-<ifindex>    TC ingress on each container's host-side veth
//! <bpffs>/maps-next/OVL_*       during a migration (bpffs refuses dots in names): the maps the new programs use, filled
//!                               before the links switch to them (see `Datapath::commit`)
//! ```

use std::{
    ffi::CStr,
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::FdLink,
    tc::{SchedClassifierLink, TcHandle},
    TcAttachType,
};
use tracing::warn;

use super::{DatapathError, CLSACT_HANDLE, CLSACT_PRIORITY};

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
    /// Where the maps of a datapath being migrated to are pinned until it takes over.
    pub fn staged_maps(&self) -> PathBuf {
        self.root.join("maps-next")
    }
    pub fn underlay_tc(&self) -> PathBuf {
        self.links().join("underlay-tc")
    }
    pub(super) fn underlay_xdp(&self) -> PathBuf {
        self.links().join("underlay-xdp")
    }
    pub(super) fn endpoint(&self, ifindex: u32) -> PathBuf {
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

/// Detaches everything and removes every pin of a node: the opposite of `Datapath::load`.
/// Best effort: carries on past errors and returns them all.
pub fn remove(pins: &PinLayout, underlay_ifname: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Ok(dir) = fs::read_dir(pins.links()) {
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            if is_clsact_marker(&path) {
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
    for maps in [pins.maps(), pins.staged_maps()] {
        if let Ok(dir) = fs::read_dir(maps) {
            for entry in dir.filter_map(Result::ok) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    errors.push(format!("{}: {e}", entry.path().display()));
                }
            }
        }
    }
    for dir in [
        pins.links(),
        pins.maps(),
        pins.staged_maps(),
        pins.root().to_owned(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", dir.display())),
        }
    }
    errors
}

/// What a clsact filter leaves where a TCX link would be pinned: a symlink to "clsact",
/// because bpffs holds only BPF objects, directories and symlinks (a regular file there
/// fails with EPERM). An existing marker or stale link is replaced.
pub(super) fn mark_clsact(pin: &Path) -> io::Result<()> {
    if is_clsact_marker(pin) {
        return Ok(());
    }
    match fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(CLSACT_MARKER, pin)
}

/// Whether `path` is a clsact marker (`mark_clsact`).
pub(super) fn is_clsact_marker(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|target| target == Path::new(CLSACT_MARKER))
}

const CLSACT_MARKER: &str = "clsact";

pub(super) fn detach_clsact(ifname: &str) {
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

pub(super) fn remove_link_pin(path: &Path) {
    if let Err(e) = remove_pin(path) {
        warn!(path = %path.display(), "removing link pin: {e}");
    }
}

pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<(), DatapathError> {
    // A leftover pin (e.g. a link whose interface vanished) would make pinning fail.
    let _ = remove_pin(path);
    link.pin(path).map_err(|source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// Makes sure `dir` can live on a bpffs, mounting /sys/fs/bpf if nothing is mounted there.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
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
