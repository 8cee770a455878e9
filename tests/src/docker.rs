//! A real dockerd (20.10, Debian's docker.io) per test host, in the host's network namespace
//! and in a mount namespace of its own where the host's plugin directory is bind-mounted on
//! /run/docker/plugins, so each dockerd finds its own host's overlayd driver. Storage, exec
//! root and API socket live in the topology's temp dir; everything is removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{image::busybox_rootfs, process::ChildGuard, Topology};

pub struct Docker {
    dir: PathBuf,
    ns: String,
    daemon: Option<ChildGuard>,
    log: PathBuf,
}

/// Where host `host`'s overlayd serves the driver (pass as `--docker-plugin`).
pub fn plugin_socket(t: &Topology, host: usize) -> PathBuf {
    t.dir
        .join(format!("docker-{}", t.hosts[host].name))
        .join("plugins/overlay-ebpf.sock")
}

impl Docker {
    /// Starts dockerd on host `host` and imports the busybox image.
    pub fn start(t: &Topology, host: usize) -> Self {
        let h = &t.hosts[host];
        let dir = t.dir.join(format!("docker-{}", h.name));
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        // The mount point; dockerd would create it anyway.
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let mut d = Self {
            log: dir.join("dockerd.log"),
            dir,
            ns: h.ns.name().to_owned(),
            daemon: None,
        };
        d.spawn();
        let tar = busybox_rootfs(&d.dir);
        d.run_ok(&["import", tar.to_str().unwrap(), "bbox:latest"]);
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn spawn(&mut self) {
        let d = self.dir.display();
        let script = format!(
            "mount --bind {d}/plugins /run/docker/plugins && exec dockerd \
             --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid \
             -H unix://{d}/docker.sock --iptables=false --ip6tables=false --ip-forward=false \
             --ip-masq=false --bridge=none --storage-driver=vfs \
             --exec-opt native.cgroupdriver=cgroupfs --userland-proxy=false \
             --default-ulimit nofile=1024:1024 --default-ulimit nproc=1024:1024"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = crate::Netns::open(&self.ns)
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (cargo xtask setup installs docker.io)");
        self.daemon = Some(ChildGuard::new(child, format!("dockerd in {}", self.ns)));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.run(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills dockerd with `signal` and starts it again on the same state.
    pub fn restart(&mut self, signal: Signal) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(signal, Duration::from_secs(20));
        }
        self.spawn();
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .expect("docker CLI")
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        crate::fixtures::stdout_ok(&format!("docker {args:?}"), self.run(args))
    }

    /// A Docker network of this driver with our IPAM and `-o` options.
    pub fn create_network(&self, name: &str, subnet: &str, opts: &[&str]) {
        self.create(name, &["--subnet", subnet], opts);
    }

    /// `docker network create --ipv6` adopting the dual-stack overlay network `name`.
    pub fn create_dual_stack(&self, name: &str, subnet: &str, subnet6: &str) {
        let opt = format!("network={name}");
        self.create(
            name,
            &["--ipv6", "--subnet", subnet, "--subnet", subnet6],
            &[&opt],
        );
    }

    fn create(&self, name: &str, flags: &[&str], opts: &[&str]) {
        let out = self.try_create(name, flags, opts);
        crate::fixtures::stdout_ok(&format!("docker network create {name}"), out);
    }

    /// `docker network create` of this driver with our IPAM, `flags` and `-o` options.
    pub fn try_create(&self, name: &str, flags: &[&str], opts: &[&str]) -> Output {
        let mut args = vec![
            "network",
            "create",
            "-d",
            "overlay-ebpf",
            "--ipam-driver",
            "overlay-ebpf",
        ];
        args.extend_from_slice(flags);
        for o in opts {
            args.extend(["-o", o]);
        }
        args.push(name);
        self.run(&args)
    }

    /// A container's IPv6 address on `network`.
    pub fn ipv6_of(&self, name: &str, network: &str) -> String {
        self.run_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.{network}.GlobalIPv6Address}}}}"),
            name,
        ])
        .trim()
        .to_owned()
    }

    /// `red` (198.19.1.0/24) adopting the overlay network of that name.
    pub fn create_red(&self) {
        self.create_network("red", "198.19.1.0/24", &["network=red"]);
    }

    /// Starts a long-running busybox container on `network`; returns its address there.
    pub fn start_container(&self, name: &str, network: &str) -> String {
        self.run_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "bbox:latest",
            "sleep",
            "600",
        ]);
        self.run_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"),
            name,
        ])
        .trim()
        .to_owned()
    }

    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args)
    }
}

/// Processes whose command line mentions `dir` (containerd and shims that outlive a killed
/// dockerd).
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let ids = self.run(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.run(&["rm", "-f", id]);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop(Signal::SIGTERM, Duration::from_secs(20));
        }
        for pid in processes_under(&self.dir) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        // dockerd's mounts lived in its own mount namespace, gone with it.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
