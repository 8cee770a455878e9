//! The image the DaemonSet names, made by the script `cargo xtask image` runs
//! (deploy/image/build.sh: local files only, nothing pulled; here from the test build's
//! binaries rather than release ones), imported into a real containerd and run as the
//! DaemonSet runs it: its install-cni init container (host network, the host's CNI
//! directories and the ConfigMap mounted) puts the plugin and the conflist on the host, and
//! overlayd and overlayctl run from the image with the libraries it carries (`--version`).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use overlay_tests::{
    containerd::{daemonset, daemonset_conflist, shipped_conflist, Containerd},
    cri::{pb::ContainerState, ContainerSpec, PodSpec},
    topology::overlayd_bin,
    Topology, TopologySpec,
};

const IMAGE: &str = "overlay-ebpf:latest";

/// The install-cni init container's command, as the DaemonSet has it.
fn install_command() -> Vec<String> {
    let yaml = daemonset();
    let init = yaml
        .find("- name: install-cni")
        .expect("the install-cni container");
    let line = yaml[init..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("command:"))
        .expect("its command");
    serde_json::from_str(line.trim()).expect("a JSON-style list")
}

#[test]
fn the_daemonset_image_installs_the_plugin_and_runs() {
    let t = Topology::new(TopologySpec::new(1));
    let mut c = Containerd::start(&t, 0);
    let dir = t.dir.join("daemonset");
    let tar = dir.join("overlay-ebpf.tar");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("sh")
        .arg(repo.join("deploy/image/build.sh"))
        .arg(overlayd_bin().parent().unwrap())
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.import(&tar);

    // The host's CNI directories and the ConfigMap, mounted as the DaemonSet mounts them.
    let (bin, netd, config) = (
        dir.join("opt-cni-bin"),
        dir.join("net.d"),
        dir.join("config"),
    );
    for d in [&bin, &netd, &config] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(config.join("10-overlay.conflist"), daemonset_conflist()).unwrap();
    let mut spec = PodSpec::new("kube-system", "overlayd-node");
    spec.host_network = true;
    let pod = c
        .run_pod(&spec)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
    let install = ContainerSpec {
        name: "install-cni",
        image: IMAGE,
        command: install_command(),
        mounts: vec![
            (bin.clone(), "/host/opt/cni/bin".into()),
            (netd.clone(), "/host/etc/cni/net.d".into()),
            (config.clone(), "/config".into()),
        ],
    };
    let id = c
        .cri
        .start_container(&pod.id, &pod.config, &install)
        .unwrap_or_else(|e| panic!("install-cni: {e}\n{}", c.log()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit_code = loop {
        match c.cri.container_state(&id).unwrap() {
            (ContainerState::ContainerExited, code) => break code,
            state => assert!(Instant::now() < deadline, "install-cni still {state:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exit_code, 0, "install-cni failed");
    let plugin = overlayd_bin().with_file_name("overlay-cni");
    assert!(
        std::fs::read(bin.join("overlay-cni")).unwrap() == std::fs::read(plugin).unwrap(),
        "the plugin on the host is the one built"
    );
    let installed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(netd.join("10-overlay.conflist")).unwrap()).unwrap();
    assert_eq!(installed, shipped_conflist());

    // overlayd and overlayctl start from the image: the libraries they load came with them.
    let shell = ContainerSpec {
        name: "shell",
        image: IMAGE,
        command: vec!["sleep".into(), "100000".into()],
        mounts: Vec::new(),
    };
    let shell = c.cri.start_container(&pod.id, &pod.config, &shell).unwrap();
    for bin in ["/usr/local/bin/overlayd", "/usr/local/bin/overlayctl"] {
        let out = c
            .cri
            .exec(&shell, &[bin, "--version"], Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.exit_code, 0, "{bin}: {}", out.stderr);
        assert!(
            out.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{bin}: {}",
            out.stdout
        );
    }
    c.delete_pod(&pod);
}
