//! Test harness for the overlay: hosts are network namespaces joined by an underlay bridge
//! (in a namespace of its own), containers are namespaces with a veth into their host.
//! Every namespace, link, pin and process it makes is owned by a guard and removed on drop,
//! also when the test panics. Names carry a per-process, per-topology id so tests can run in
//! parallel.

pub mod cni;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod etcd;
pub mod fixtures;
pub mod frames6;
pub mod golden;
pub mod image;
pub mod lb;
pub mod netns;
pub mod packet_fuzz;
pub mod pki;
pub mod podman;
pub mod process;
pub mod prog_fixture;
pub mod services;
pub mod soak;
pub mod topology;
pub mod traffic;
pub mod workload;

pub use etcd::Etcd;
pub use netns::Netns;
pub use process::ChildGuard;
pub use topology::{Container, Host, Topology, TopologySpec};
