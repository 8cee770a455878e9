//! A busybox container image made from Debian's busybox-static (no registry needed), as a
//! tarball that `podman import` and `docker import` both take.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A busybox image made from Debian's busybox-static (no registry needed).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static (cargo xtask setup installs it)");
    for applet in [
        "sh",
        "ping",
        "nc",
        "md5sum",
        "sha256sum",
        "dd",
        "sleep",
        "cat",
        "ip",
        "wc",
        "ls",
        "mv",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    tar(&root, &dir.join("rootfs.tar"), &["."])
}

/// A tarball at `out` of `members` of `dir`.
fn tar(dir: &Path, out: &Path, members: &[&str]) -> PathBuf {
    let done = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(members)
        .output()
        .unwrap();
    assert!(
        done.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    out.to_owned()
}

/// The same busybox as a docker-archive tarball tagged `tag` whose entrypoint sleeps, for
/// `ctr images import`: containerd's CRI plugin takes it as the pod sandbox ("pause") image
/// and as a container image.
pub fn busybox_docker_archive(dir: &Path, tag: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let layer = busybox_rootfs(dir);
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::rename(&layer, archive.join("layer.tar")).unwrap();
    let diff_id = format!(
        "sha256:{:x}",
        Sha256::digest(std::fs::read(archive.join("layer.tar")).unwrap())
    );
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    std::fs::write(archive.join("config.json"), config.to_string()).unwrap();
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    std::fs::write(archive.join("manifest.json"), manifest.to_string()).unwrap();
    tar(
        &archive,
        &dir.join("image.tar"),
        &["manifest.json", "config.json", "layer.tar"],
    )
}
