//! overlayd as a library: the datapath loader, typed map wrappers, the cluster tables and the
//! reconciler that keeps the maps equal to them, the cluster's etcd side, and the front ends
//! (the local API the CNI plugin calls, the Docker driver). The `overlayd` and `overlayctl`
//! binaries are thin shells over it; the CNI plugin is a crate of its own over `overlay-api`.

pub mod admin;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod cnm;
pub mod daemon;
pub mod datapath;
pub mod dns;
#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod fuzz;
pub mod host_events;
pub mod host_route;
pub mod ipam;
pub mod json_dir;
pub mod kernel_vxlan;
pub mod locks;
pub mod maglev;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub mod netif;
pub mod netlink;
pub mod nexthop;
pub mod qdisc;
pub mod reconcile;
pub mod sock_lb;
pub mod store;
pub mod tables;
pub mod vtep;

pub use overlay_api::MacAddr;

/// This release (the workspace version), as node records and `status` report it.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");
