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

/// etcdctl (v3 API) in `ns` against `endpoints`.
fn etcdctl(ns: &Netns, endpoints: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = ns.command("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--dial-timeout", "2s"])
        .args(args);
    cmd
}

/// etcdctl's stdout, panicking with its stderr if it failed.
fn stdout_of(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Etcd {
    ns: String,
    pub ip: Ipv4Addr,
    data_dir: PathBuf,
    child: Option<ChildGuard>,
    /// Member name and `--initial-cluster` (a single member by default).
    name: String,
    initial_cluster: String,
}

impl Etcd {
    /// Starts etcd on `ip` (an address of `ns`) and waits until it answers.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Self {
        let mut etcd = Self::member(ns, ip, "ovt", &format!("ovt=http://{ip}:2380"));
        etcd.resume();
        etcd
    }

    /// A member of a cluster, not started yet.
    fn member(ns: &Netns, ip: Ipv4Addr, name: &str, initial_cluster: &str) -> Self {
        Self {
            ns: ns.name().to_owned(),
            ip,
            data_dir: std::env::temp_dir().join(format!("ovt-etcd-{}", unique_id())),
            child: None,
            name: name.to_owned(),
            initial_cluster: initial_cluster.to_owned(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn netns(&self) -> Netns {
        Netns::open(&self.ns)
    }

    /// (Re)starts the server on the same data and waits until it serves requests.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let ip = self.ip;
        let child = self
            .netns()
            .command("etcd")
            .args([
                "--name",
                &self.name,
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "ovt"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (cargo xtask setup installs etcd-server)");
        self.child = Some(ChildGuard::new(child, format!("etcd {}", self.name)));
    }

    fn wait_healthy(&self) {
        let ip = self.ip;
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// Kills the server outright (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop(Signal::SIGKILL, Duration::from_secs(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// Runs etcdctl (v3 API) against this server.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        etcdctl(&self.netns(), &self.endpoint(), args)
            .output()
            .expect("etcdctl")
    }

    /// `etcdctl put KEY` with the value on stdin (values beyond an argument's size limit).
    pub fn put_large(&self, key: &str, value: &[u8]) {
        use std::io::Write as _;
        let mut child = self
            .netns()
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoint(),
                "--dial-timeout",
                "2s",
                "put",
                key,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value)
            .expect("value on stdin");
        let out = child.wait_with_output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        stdout_of(args, self.ctl(args))
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

/// A real etcd cluster: one member per namespace, each on the underlay switch.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    /// The members' namespaces (dropped after the members).
    namespaces: Vec<Netns>,
}

impl EtcdCluster {
    /// Starts a member in each of `namespaces` at the matching address and waits until the
    /// cluster serves requests.
    pub fn start(namespaces: Vec<Netns>, ips: &[Ipv4Addr]) -> Self {
        let initial: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{}=http://{ip}:2380", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut members: Vec<Etcd> = namespaces
            .iter()
            .zip(ips)
            .enumerate()
            .map(|(i, (ns, ip))| Etcd::member(ns, *ip, &format!("m{}", i + 1), &initial))
            .collect();
        // All at once: a member alone has no quorum to become healthy with.
        for m in &mut members {
            m.spawn();
        }
        for m in &members {
            m.wait_healthy();
        }
        Self {
            members,
            namespaces,
        }
    }

    /// Every member's client URL, comma separated.
    pub fn endpoints(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(Etcd::endpoint).collect();
        urls.join(",")
    }

    pub fn netns(&self, i: usize) -> &Netns {
        &self.namespaces[i]
    }

    /// etcdctl against the members that run (any of them answers for the cluster).
    pub fn ctl(&mut self, args: &[&str]) -> std::process::Output {
        let running: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.endpoint()))
            .collect();
        etcdctl(&self.members[0].netns(), &running.join(","), args)
            .output()
            .expect("etcdctl")
    }

    pub fn ctl_ok(&mut self, args: &[&str]) -> String {
        stdout_of(args, self.ctl(args))
    }

    /// Restarts member `i` on its data (after `kill` or `pause`) and waits for it.
    pub fn restart(&mut self, i: usize) {
        self.members[i].resume();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.members.clear();
    }
}
