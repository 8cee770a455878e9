//! Types shared by the eBPF datapath (`overlay-ebpf`) and the daemon (`overlay-daemon`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, and its size is checked at
//! compile time, so the kernel and userspace always agree on the layout. IPv4 addresses are
//! stored as `u32` holding the four octets in network order (`u32::from_ne_bytes(octets)`),
//! which is what the datapath reads straight out of packets.
#![no_std]

pub mod counters;
pub mod lb;
pub mod maps;
pub mod monitor;
pub mod wire;

pub use counters::{Direction, DropReason, PacketCounter};
pub use maps::*;
