//! A real containerd (1.6, Debian's) with its CRI plugin per test host: Kubernetes' path to a
//! CNI plugin (kubelet → CRI → containerd → CNI). It runs in the host's network namespace with
//! its own root, state, sockets and CNI directories; the CNI config is the conflist this
//! repository ships (deploy/cni/10-overlay.conflist) pointed at the host's overlayd. Pods left
//! by a failed test are stopped and removed on drop, shims killed, mounts undone.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use overlay_daemon::api;

use crate::{
    cri::{pb, ContainerSpec, Cri, PodSpec},
    image::busybox_docker_archive,
    process::ChildGuard,
    topology::overlayd_bin,
    Topology,
};

/// The image the sandboxes and containers run (imported, never pulled).
pub const IMAGE: &str = "overlay.test/bbox:latest";

/// The conflist the DaemonSet installs, as shipped.
pub fn shipped_conflist() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-overlay.conflist");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the shipped conflist is JSON")
}

/// The DaemonSet as shipped.
pub fn daemonset() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/overlayd-daemonset.yaml");
    std::fs::read_to_string(path).unwrap()
}

/// The conflist the DaemonSet's ConfigMap carries (its `10-overlay.conflist` block).
pub fn daemonset_conflist() -> String {
    let yaml = daemonset();
    let key = "10-overlay.conflist: |";
    let at = yaml.find(key).expect("the ConfigMap's conflist");
    let indent = at - yaml[..at].rfind('\n').unwrap() - 1;
    yaml[at + key.len()..]
        .lines()
        .skip(1)
        .take_while(|l| l.len() > indent && l[..=indent].trim().is_empty())
        .map(|l| format!("{}\n", &l[indent..]))
        .collect()
}

/// A pod run through the CRI: its sandbox id and config (containers need both).
pub struct Pod {
    pub id: String,
    pub config: pb::PodSandboxConfig,
    /// Its network namespace, removed on drop if containerd left it.
    netns: Option<PathBuf>,
}

pub struct Containerd {
    dir: PathBuf,
    daemon: Option<ChildGuard>,
    pub cri: Cri,
    /// Every pod network namespace it made, removed on drop if still there.
    netns: Vec<PathBuf>,
    /// The overlay network of the conflist ("pods" in the shipped one), for tests to create;
    /// the conflist's name for other plugins.
    pub network: String,
}

impl Containerd {
    /// Starts containerd on host `host` of `t` with the shipped conflist (its `socket` set to
    /// the host's overlayd) and imports the busybox image.
    pub fn start(t: &Topology, host: usize) -> Self {
        let mut conflist = shipped_conflist();
        conflist["plugins"][0]["socket"] = api::socket_path(&t.hosts[host].run_dir)
            .display()
            .to_string()
            .into();
        Self::start_with(t, host, "overlay", conflist)
    }

    /// containerd on host `host` with `conflist` as its only CNI config (the CNI plugins it
    /// names come from /usr/lib/cni, overlay-cni from this build). `label` names its
    /// directory: several may run on one host.
    pub fn start_with(t: &Topology, host: usize, label: &str, conflist: serde_json::Value) -> Self {
        let h = &t.hosts[host];
        let dir = t.dir.join(format!("containerd-{label}-{}", h.name));
        let (bin, netd) = (dir.join("cni-bin"), dir.join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&netd).unwrap();
        let plugin = overlayd_bin().with_file_name("overlay-cni");
        std::os::unix::fs::symlink(plugin, bin.join("overlay-cni")).unwrap();
        // The CRI plugin sets up lo through `loopback`; conflists chain `portmap` and may
        // name the reference plugins.
        for p in ["loopback", "portmap", "bandwidth", "bridge", "host-local"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), bin.join(p)).unwrap();
        }
        let network = conflist["plugins"][0]["network"]
            .as_str()
            .or(conflist["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        std::fs::write(
            netd.join(format!("10-{label}.conflist")),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
            ),
        )
        .unwrap();
        let (guard, cri) = Self::spawn(&dir, h.ns.name());
        let c = Self {
            cri,
            daemon: Some(guard),
            netns: Vec::new(),
            network,
            dir,
        };
        c.import(&busybox_docker_archive(&c.dir, IMAGE));
        c
    }

    fn socket(dir: &Path) -> PathBuf {
        dir.join("containerd.sock")
    }

    /// Starts containerd and waits until its CRI service answers.
    fn spawn(dir: &Path, ns: &str) -> (ChildGuard, Cri) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        let child = crate::Netns::open(ns)
            .command("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (cargo xtask setup installs containerd)");
        let guard = ChildGuard::new(child, format!("containerd in {ns}"));
        let log = || std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Self::socket(dir).exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cri = Cri::connect(&Self::socket(dir));
        while let Err(e) = cri.version() {
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not answer: {e}\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        (guard, cri)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(Self::socket(&self.dir))
            .args(args)
            .output()
            .expect("ctr")
    }

    /// Imports the docker-archive `tar` into the CRI's image store (namespace `k8s.io`).
    pub fn import(&self, tar: &Path) {
        let out = self.ctr(&["-n", "k8s.io", "images", "import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// RunPodSandbox of `spec`, as the kubelet does.
    pub fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod, tonic::Status> {
        let config = spec.config(&self.dir.join("logs"));
        let id = self.cri.run_pod(&config)?;
        let netns = self.netns_of(&id);
        if let Some(p) = &netns {
            self.netns.push(p.clone());
        }
        Ok(Pod { id, config, netns })
    }

    /// The sandbox's network namespace path, from the verbose status.
    fn netns_of(&mut self, id: &str) -> Option<PathBuf> {
        let status = self.cri.pod_status(id).ok()?;
        let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array()?;
        namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
    }

    /// The network namespace containerd made for `pod`.
    pub fn netns_path(&self, pod: &Pod) -> Option<PathBuf> {
        pod.netns.clone()
    }

    /// Every network namespace this containerd made for a pod (removed ones too).
    pub fn netns_made(&self) -> &[PathBuf] {
        &self.netns
    }

    /// A container running `sleep` in `pod`, for ExecSync.
    pub fn start_sleeper(&mut self, pod: &Pod, name: &str) -> String {
        let spec = ContainerSpec {
            name,
            image: IMAGE,
            command: vec!["sleep".into(), "100000".into()],
            mounts: Vec::new(),
        };
        self.cri
            .start_container(&pod.id, &pod.config, &spec)
            .unwrap_or_else(|e| panic!("start container {name}: {e}\n{}", self.log()))
    }

    /// StopPodSandbox + RemovePodSandbox, as the kubelet does when a pod is deleted.
    pub fn delete_pod(&mut self, pod: &Pod) {
        self.cri.stop_pod(&pod.id).expect("StopPodSandbox");
        self.cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(pods) = self.cri.pods() {
            for id in pods {
                let _ = self.cri.stop_pod(&id);
                let _ = self.cri.remove_pod(&id);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
        }
        // Shims outlive containerd; theirs name its socket.
        let sock = Self::socket(&self.dir);
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("containerd-shim.*-address {}", sock.display()))
            .output();
        for ns in self.netns.iter().filter(|n| n.exists()) {
            let _ = Command::new("umount").arg(ns).output();
            let _ = std::fs::remove_file(ns);
        }
        // Mounts left under its root and state (rootfs, shm), deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
