//! Attaching the programs: TC (TCX links, or clsact filters before Linux 6.6) and XDP on
//! the underlay, TC on each container's host-side veth (clsact filters: see
//! `TcMode::resolve`). Every link is pinned and every filter stays when the daemon exits, so
//! the datapath keeps forwarding while the daemon is down, and a restarted daemon swaps its
//! programs in atomically (`bpf_link_update`, or a filter replaced in place).

use std::path::Path;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use overlay_common::maps::programs;
use tracing::{debug, warn};

use super::{
    classifier, ifname,
    pins::{detach_clsact, is_clsact_marker, mark_clsact, pin_link, remove_link_pin},
    program, Datapath, DatapathError, TcMode, XdpSetting, CLSACT_HANDLE, CLSACT_PRIORITY,
};

impl Datapath {
    pub(super) fn attach_underlay(
        &mut self,
        ifindex: u32,
        xdp: XdpSetting,
    ) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?;
        let path = self.pins.underlay_tc();
        self.attach_tc(programs::FROM_UNDERLAY, &ifname, &path, self.tc_mode)?;

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
        mode: TcMode,
    ) -> Result<(), DatapathError> {
        let err = |source| DatapathError::Program { name, source };
        let prog = classifier(&mut self.ebpf, name)?;
        match mode {
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
                mark_clsact(pin).map_err(|source| DatapathError::Io {
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
                // Switched from clsact: the filter goes once the link is in place.
                if is_clsact_marker(pin) {
                    detach_clsact(ifname);
                }
                pin_link(fd_link, pin)?;
            }
        }
        Ok(())
    }

    /// Re-points every pinned container link at the newly loaded program; links whose
    /// interface is gone are unpinned.
    pub(super) fn reattach_endpoints(&mut self) {
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
        self.attach_tc(programs::FROM_CONTAINER, &ifname, &pin, self.container_tc)
    }

    /// Detaches the from-container program from a host-side veth (if it still exists).
    pub fn detach_container(&mut self, ifindex: u32) {
        let pin = self.pins.endpoint(ifindex);
        if self.container_tc == TcMode::Clsact || is_clsact_marker(&pin) {
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
        // Not `exists()`: a clsact marker is a symlink to nothing.
        self.pins.endpoint(ifindex).symlink_metadata().is_ok()
    }
}
