//! Attaching the socket-level balancer: eight cgroup sock_addr hooks (four per family) and a sock_release hook
//! on the root of the cgroup v2 hierarchy (every process of the host runs them; they act
//! only for sockets of namespaces in `SOCK_NETNS`, or sockets they balanced), each link
//! pinned like the TC ones.
//!
//! A cgroup link cannot be re-pointed at a new program, so a restarted daemon attaches its
//! programs next to the old ones (links always coexist) and then moves its pins over the old pins,
//! which detaches them. In between both run: the second sees the backend the first chose,
//! not a VIP, and leaves it alone.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr};
use overlay_common::maps::programs;
use tracing::{info, warn};

use super::{pins::remove_link_pin, program, Datapath, DatapathError};

/// Whether sockets are balanced when they connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum SocketLb {
    /// On where the cgroup hooks can be attached; otherwise every service flow takes the
    /// per-packet path.
    #[default]
    Auto,
    /// On, or the daemon does not start.
    On,
    /// Off: service flows are translated per packet.
    Off,
}

/// sock_addr hooks, by program and link pin name.
const ADDR_HOOKS: [(&str, &str); 8] = [
    (programs::SOCK_CONNECT4, "sock-connect4"),
    (programs::SOCK_SENDMSG4, "sock-sendmsg4"),
    (programs::SOCK_RECVMSG4, "sock-recvmsg4"),
    (programs::SOCK_GETPEERNAME4, "sock-getpeername4"),
    (programs::SOCK_CONNECT6, "sock-connect6"),
    (programs::SOCK_SENDMSG6, "sock-sendmsg6"),
    (programs::SOCK_RECVMSG6, "sock-recvmsg6"),
    (programs::SOCK_GETPEERNAME6, "sock-getpeername6"),
];
const RELEASE_HOOK: (&str, &str) = (programs::SOCK_RELEASE, "sock-release");

/// The root of the cgroup v2 hierarchy this process sees (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mut fields = pre.split_whitespace().skip(3);
        let (root, mountpoint) = (fields.next()?, fields.next()?);
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(mountpoint))
    })
}

impl Datapath {
    /// Attaches (or detaches, for `Off`) the socket hooks. Returns whether they are on.
    pub(super) fn attach_socket_lb(
        &mut self,
        setting: SocketLb,
        cgroup: Option<&Path>,
    ) -> Result<bool, DatapathError> {
        if setting == SocketLb::Off {
            self.detach_socket_lb();
            return Ok(false);
        }
        let result = cgroup
            .map(Path::to_owned)
            .or_else(cgroup2_root)
            .ok_or_else(|| {
                DatapathError::Bpffs(
                    "no cgroup v2 hierarchy is mounted: mount one or pass --socket-lb-cgroup"
                        .into(),
                )
            })
            .and_then(|root| self.attach_hooks(&root).map(|()| root));
        match (result, setting) {
            (Ok(root), _) => {
                info!(cgroup = %root.display(), "socket-level balancing on");
                Ok(true)
            }
            (Err(e), SocketLb::Auto) => {
                // The kernel's errno is at the end of the chain.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                warn!("socket-level balancing off, services are translated per packet: {why}");
                self.detach_socket_lb();
                Ok(false)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn attach_hooks(&mut self, root: &Path) -> Result<(), DatapathError> {
        let dir = fs::File::open(root).map_err(|source| DatapathError::Io {
            path: root.to_owned(),
            source,
        })?;
        // A cgroup link is always one of many (the kernel refuses ALLOW_MULTI flags on
        // link_create): `Single` passes no flags.
        for (name, pin) in ADDR_HOOKS {
            let err = |source| DatapathError::Program { name, source };
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(err)?;
            }
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(err)?;
            let link = prog.take_link(id).map_err(err)?;
            self.pin_hook(name, pin, FdLink::try_from(link))?;
        }
        let (name, pin) = RELEASE_HOOK;
        let err = |source| DatapathError::Program { name, source };
        let prog: &mut CgroupSock = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        self.pin_hook(name, pin, FdLink::try_from(link))
    }

    /// Pins a hook's link as `pin`, over (and so detaching) the previous daemon's.
    fn pin_hook(
        &self,
        name: &'static str,
        pin: &str,
        link: Result<FdLink, aya::programs::links::LinkError>,
    ) -> Result<(), DatapathError> {
        let link = link.map_err(|source| DatapathError::Link { name, source })?;
        let path = self.pins.links().join(pin);
        // bpffs refuses names with a dot.
        let tmp = self.pins.links().join(format!("{pin}-new"));
        let _ = fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|source| DatapathError::Pin {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| DatapathError::Io { path, source })
    }

    pub(super) fn detach_socket_lb(&mut self) {
        for (_, pin) in ADDR_HOOKS.into_iter().chain([RELEASE_HOOK]) {
            let path = self.pins.links().join(pin);
            if path.exists() {
                remove_link_pin(&path);
            }
        }
    }
}
