// Shared by the build scripts that embed an eBPF object (overlay-daemon, overlay-bench):
// builds one eBPF package of the workspace for the BPF target with the nightly toolchain and
// leaves the object in OUT_DIR. No target paths are hard-coded.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn build_ebpf_package(name: &str) -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| anyhow!("{name} package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{name} manifest has no parent directory"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name,
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
