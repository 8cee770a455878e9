//! A real podman (4.3, CNI backend) per test host: its own storage, config and CNI network
//! directory, running in the host's network namespace so its containers attach to that host's
//! overlayd through overlay-cni. Containers are removed on drop.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use overlay_daemon::api;

use crate::{image::busybox_rootfs, topology::overlayd_bin, Topology};

pub struct Podman {
    ns: String,
    dir: PathBuf,
    containers: Vec<String>,
}

impl Podman {
    /// Sets podman up on host `host` of `t`, with a conflist for `network` that chains the
    /// reference tuning plugin after overlay-cni.
    pub fn new(t: &Topology, host: usize, network: &str) -> Self {
        let h = &t.hosts[host];
        let dir = t.dir.join(format!("podman-{}", h.name));
        let netd = dir.join("net.d");
        std::fs::create_dir_all(&netd).unwrap();
        let plugin_dir = overlayd_bin().parent().unwrap().to_owned();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n",
                plugin_dir.display(),
                netd.display()
            ),
        )
        .unwrap();
        write_conflist(&netd, t, host, network, true);
        let p = Self {
            ns: h.ns.name().to_owned(),
            dir: dir.clone(),
            containers: Vec::new(),
        };
        let tar = busybox_rootfs(&dir);
        p.run_ok(&["import", tar.to_str().unwrap(), "bbox:latest"]);
        p
    }

    /// Makes `network` (on host `host` of `t`) known to this podman too, for containers on
    /// several networks.
    pub fn add_network(&self, t: &Topology, host: usize, network: &str) {
        // Without the tuning plugin, whose sysctl names eth0: podman may attach this network
        // first (it attaches them at once).
        write_conflist(&self.dir.join("net.d"), t, host, network, false);
    }

    fn command(&self) -> Command {
        let mut cmd = crate::Netns::open(&self.ns).command("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("podman (cargo xtask setup installs it)")
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        crate::fixtures::stdout_ok(&format!("podman {args:?}"), self.run(args))
    }

    /// Starts a long-running busybox container on `network`; returns its overlay address.
    pub fn start(&mut self, name: &str, network: &str) -> String {
        self.start_on(name, &[network]);
        let ip = self.run_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"),
            name,
        ]);
        ip.trim().to_owned()
    }

    /// Starts a long-running busybox container attached to each of `networks`.
    pub fn start_on(&mut self, name: &str, networks: &[&str]) {
        let networks = networks.join(",");
        self.run_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &networks,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "bbox:latest",
            "sleep",
            "600",
        ]);
        self.containers.push(name.to_owned());
    }

    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    pub fn remove(&mut self, name: &str) {
        self.run_ok(&["rm", "-f", "-t", "0", name]);
        self.containers.retain(|c| c != name);
    }
}

/// A conflist for `network` against host `host`'s daemon, chaining the reference tuning
/// plugin (if `tuning`) after overlay-cni. (Not `bandwidth`: it cannot add its ingress
/// qdisc where the datapath's clsact filter is, and would not shape overlay traffic anyway;
/// docs/cni.md.)
fn write_conflist(netd: &std::path::Path, t: &Topology, host: usize, network: &str, tuning: bool) {
    let h = &t.hosts[host];
    let mut plugins = vec![
        serde_json::json!({"type": "overlay-cni", "network": network, "socket": api::socket_path(&h.run_dir)}),
    ];
    if tuning {
        let sysctl =
            serde_json::json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}});
        plugins.insert(1, sysctl);
    }
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": plugins,
    });
    std::fs::write(
        netd.join(format!("{network}.conflist")),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in self.containers.clone() {
            let _ = self.run(&["rm", "-f", "-t", "0", &c]);
        }
        // Storage of its own; unmount anything podman left mounted under it.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("root"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
