//! overlayd as a library: the datapath loader, typed map wrappers, the cluster tables and the
//! reconciler that keeps the maps equal to them. The `overlayd` binary is a thin shell over
//! [`daemon::run`].

pub mod daemon;
pub mod datapath;
pub mod maps;
pub mod netif;
pub mod reconcile;
pub mod tables;
