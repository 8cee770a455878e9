//! A real etcd server for tests, inside a test namespace (the underlay's), stopped and its
//! data removed on drop.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{netns::unique_id, ChildGuard, Netns};

pub struct Etcd {
    ns: String,
    pub ip: Ipv4Addr,
    data_dir: PathBuf,
    child: Option<ChildGuard>,
}

impl Etcd {
    /// Starts etcd on `ip` (an address of `ns`) and waits until it answers.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Self {
        let data_dir = std::env::temp_dir().join(format!("ovt-etcd-{}", unique_id()));
        let mut etcd = Self {
            ns: ns.name().to_owned(),
            ip,
            data_dir,
            child: None,
        };
        etcd.resume();
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn netns(&self) -> Netns {
        Netns::open(&self.ns)
    }

    /// (Re)starts the server on the same data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let ip = self.ip;
        let child = self
            .netns()
            .command("etcd")
            .args(["--name", "ovt", "--log-level", "error", "--logger", "zap"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &format!("ovt=http://{ip}:2380")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (cargo xtask setup installs etcd-server)");
        self.child = Some(ChildGuard::new(child, "etcd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let ns = self.netns();
        while !ns.enter(move || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(ip, 2379).into(),
                Duration::from_millis(200),
            )
            .is_ok()
        }) {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Ready to serve requests, not only to accept connections.
        while !self.ctl(&["endpoint", "health"]).status.success() {
            assert!(Instant::now() < deadline, "etcd is not healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server, keeping its data.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop(Signal::SIGTERM, Duration::from_secs(10));
        }
    }

    /// Runs etcdctl (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.netns()
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--dial-timeout", "2s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let out = self.ctl_ok(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("revision")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
