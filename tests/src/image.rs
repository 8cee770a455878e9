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
        "sh", "ping", "nc", "md5sum", "dd", "sleep", "cat", "ip", "wc", "ls", "mv",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}
