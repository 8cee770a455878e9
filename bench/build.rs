//! Builds the comparison datapath (overlay-bench-ebpf) as overlay-daemon's build script
//! builds the overlay's own programs.
include!("../overlay-daemon/build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf_package("overlay-bench-ebpf")
}
