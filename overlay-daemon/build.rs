//! Builds overlay-ebpf, which `include_bytes_aligned!` then embeds from OUT_DIR.
include!("build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf_package("overlay-ebpf")
}
