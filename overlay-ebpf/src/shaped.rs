//! Delivery to a container with an ingress bandwidth limit (`SHAPED`): through the host side
//! of its veth, whose token-bucket qdisc the daemon set to the limit, rather than straight
//! into its namespace (`bpf_redirect_peer` passes no qdisc). What containers send is shaped
//! on their own interface, before it reaches the datapath. Nothing here runs unless
//! `CONFIG_F_SHAPED` says limits exist.

use aya_ebpf::helpers::{bpf_redirect, bpf_redirect_peer};
use overlay_common::{maps::CONFIG_F_SHAPED, DropReason};

use crate::{kernel::redirected, maps::SHAPED};

/// Delivers a packet to the local container behind host interface `ifindex`. `flags`: the
/// configuration's.
#[inline(always)]
pub fn deliver(flags: u16, ifindex: u32) -> Result<i32, DropReason> {
    let shaped = flags & CONFIG_F_SHAPED != 0 && unsafe { SHAPED.get(ifindex) }.is_some();
    let ret = match shaped {
        // To the interface's egress, through its qdisc, then to its peer.
        true => unsafe { bpf_redirect(ifindex, 0) },
        false => unsafe { bpf_redirect_peer(ifindex, 0) },
    };
    redirected(ret)
}
