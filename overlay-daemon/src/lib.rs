//! overlayd as a library: the datapath loader, typed map wrappers, the cluster tables and the
//! reconciler that keeps the maps equal to them. The `overlayd` binary is a thin shell over
//! [`daemon::run`].

pub mod api;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod cnm;
pub mod daemon;
pub mod datapath;
pub mod ipam;
pub mod maglev;
pub mod maps;
pub mod netif;
pub mod netlink;
pub mod nexthop;
pub mod reconcile;
pub mod store;
pub mod tables;
