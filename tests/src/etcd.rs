//! A real etcd server for tests, inside a test namespace (the underlay's), stopped and its
//! data removed on drop; optionally with TLS (server, peer and client certificates) and
//! etcd's authentication with roles limited to the overlay's prefix.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{
    netns::unique_id,
    pki::{ClientCert, Pki},
    ChildGuard, Netns,
};

/// TLS for clients and peers: the CA, the members' certificate, and the client certificate
/// etcdctl uses (CN `root`, etcd's administrator once authentication is on).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server: ClientCert,
    pub admin: ClientCert,
}

impl EtcdTls {
    pub fn from_pki(pki: &Pki) -> Self {
        Self {
            ca: pki.ca(),
            server: pki.server(),
            admin: pki.client("root"),
        }
    }
}

/// etcdctl (v3 API) in `ns` against `endpoints`.
fn etcdctl(
    ns: &Netns,
    endpoints: &str,
    tls: Option<&EtcdTls>,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = ns.command("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--dial-timeout", "2s"]);
    if let Some(t) = tls {
        cmd.arg("--cacert")
            .arg(&t.ca)
            .arg("--cert")
            .arg(&t.admin.cert)
            .arg("--key")
            .arg(&t.admin.key);
    }
    cmd.args(args);
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

/// `scheme://ip:port`, with the brackets an IPv6 address needs in a URL.
fn url(scheme: &str, ip: IpAddr, port: u16) -> String {
    format!("{scheme}://{}", SocketAddr::new(ip, port))
}

pub struct Etcd {
    ns: String,
    /// Where it listens (clients on 2379, peers on 2380): IPv4, or IPv6 on an IPv6 underlay.
    pub ip: IpAddr,
    data_dir: PathBuf,
    child: Option<ChildGuard>,
    /// Member name and `--initial-cluster` (a single member by default).
    name: String,
    initial_cluster: String,
    tls: Option<EtcdTls>,
}

impl Etcd {
    /// Starts etcd on `ip` (an address of `ns`, IPv4 or IPv6) and waits until it answers.
    pub fn start(ns: &Netns, ip: impl Into<IpAddr>) -> Self {
        let ip = ip.into();
        let initial = format!("ovt={}", url("http", ip, 2380));
        let mut etcd = Self::member(ns, ip, "ovt", &initial, None);
        etcd.resume();
        etcd
    }

    /// A member of a cluster, not started yet.
    fn member(
        ns: &Netns,
        ip: IpAddr,
        name: &str,
        initial_cluster: &str,
        tls: Option<EtcdTls>,
    ) -> Self {
        Self {
            tls,
            ns: ns.name().to_owned(),
            ip,
            data_dir: std::env::temp_dir().join(format!("ovt-etcd-{}", unique_id())),
            child: None,
            name: name.to_owned(),
            initial_cluster: initial_cluster.to_owned(),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn endpoint(&self) -> String {
        url(self.scheme(), self.ip, 2379)
    }

    fn peer_url(&self) -> String {
        url(self.scheme(), self.ip, 2380)
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
        let (client, peer) = (self.endpoint(), self.peer_url());
        let mut cmd = self.netns().command("etcd");
        cmd.args([
            "--name",
            &self.name,
            "--log-level",
            "error",
            "--logger",
            "zap",
        ])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &self.initial_cluster])
        .args(["--initial-cluster-token", "ovt"]);
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.server.cert),
                ("--key-file", &t.server.key),
                ("--trusted-ca-file", &t.ca),
                ("--peer-cert-file", &t.server.cert),
                ("--peer-key-file", &t.server.key),
                ("--peer-trusted-ca-file", &t.ca),
            ] {
                cmd.arg(flag).arg(path);
            }
            cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        let child = cmd
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
            TcpStream::connect_timeout(&SocketAddr::new(ip, 2379), Duration::from_millis(200))
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
        etcdctl(&self.netns(), &self.endpoint(), self.tls.as_ref(), args)
            .output()
            .expect("etcdctl")
    }

    /// `etcdctl put KEY` with the value on stdin (values beyond an argument's size limit).
    pub fn put_large(&self, key: &str, value: &[u8]) {
        use std::io::Write as _;
        let mut child = etcdctl(
            &self.netns(),
            &self.endpoint(),
            self.tls.as_ref(),
            &["put", key],
        )
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

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl_ok(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
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
    tls: Option<EtcdTls>,
}

/// The users `EtcdCluster::enable_auth` makes: `overlay` may use the overlay's prefix,
/// `stranger` only another one. Both have this password; their client certificates (CN =
/// user) come from the same `Pki`.
pub const OVERLAY_USER: &str = "overlay";
pub const STRANGER_USER: &str = "stranger";
pub const USER_PASSWORD: &str = "s3cret-pw";

impl EtcdCluster {
    /// Starts a member in each of `namespaces` at the matching address and waits until the
    /// cluster serves requests.
    pub fn start(namespaces: Vec<Netns>, ips: &[Ipv4Addr]) -> Self {
        Self::start_with(namespaces, ips, None)
    }

    /// Like `start`, with TLS between clients and members and between members, and client
    /// certificates required.
    pub fn start_with(namespaces: Vec<Netns>, ips: &[Ipv4Addr], tls: Option<EtcdTls>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let initial: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{}={}", i + 1, url(scheme, (*ip).into(), 2380)))
            .collect();
        let initial = initial.join(",");
        let mut members: Vec<Etcd> = namespaces
            .iter()
            .zip(ips)
            .enumerate()
            .map(|(i, (ns, ip))| {
                Etcd::member(
                    ns,
                    (*ip).into(),
                    &format!("m{}", i + 1),
                    &initial,
                    tls.clone(),
                )
            })
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
            tls,
        }
    }

    /// Turns on etcd's authentication: `root` (the admin certificate's CN), and the users
    /// `OVERLAY_USER` (role `overlay`: readwrite on `prefix`) and `STRANGER_USER` (role
    /// `elsewhere`: readwrite on another prefix only).
    pub fn enable_auth(&mut self, prefix: &str) {
        let root = format!("root:{USER_PASSWORD}");
        let overlay = format!("{OVERLAY_USER}:{USER_PASSWORD}");
        let stranger = format!("{STRANGER_USER}:{USER_PASSWORD}");
        for args in [
            &["user", "add", &root, "--interactive=false"][..],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "overlay"],
            &[
                "role",
                "grant-permission",
                "overlay",
                "readwrite",
                prefix,
                "--prefix=true",
            ],
            &["user", "add", &overlay, "--interactive=false"],
            &["user", "grant-role", OVERLAY_USER, "overlay"],
            &["role", "add", "elsewhere"],
            &[
                "role",
                "grant-permission",
                "elsewhere",
                "readwrite",
                "/elsewhere/",
                "--prefix=true",
            ],
            &["user", "add", &stranger, "--interactive=false"],
            &["user", "grant-role", STRANGER_USER, "elsewhere"],
            &["auth", "enable"],
        ] {
            self.ctl_ok(args);
        }
    }

    /// Every member's client URL, comma separated.
    pub fn endpoints(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(Etcd::endpoint).collect();
        urls.join(",")
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
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
        etcdctl(
            &self.members[0].netns(),
            &running.join(","),
            self.tls.as_ref(),
            args,
        )
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

    /// The index of the member that is the leader now, asked of every running member.
    pub fn leader(&mut self) -> Option<usize> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let leader = v.as_array()?.iter().find_map(|s| {
            let status = &s["Status"];
            (status["leader"].as_u64()? == status["header"]["member_id"].as_u64()?)
                .then(|| s["Endpoint"].as_str().map(str::to_owned))?
        })?;
        self.members.iter().position(|m| m.endpoint() == leader)
    }

    /// Makes member `i` the leader (etcd's leadership transfer) and waits until it is.
    pub fn move_leader(&mut self, i: usize) {
        let out = self.members[i].ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let id = v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member id");
        if self.leader() != Some(i) {
            self.ctl_ok(&["move-leader", &format!("{id:x}")]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.leader() != Some(i) {
            assert!(
                Instant::now() < deadline,
                "member {i} did not become the leader"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member `i`'s view of the store: (revision, its leader's id, raft index), asked of it
    /// alone.
    pub fn member_status(&self, i: usize) -> Option<(i64, u64, u64)> {
        let out = self.members[i].ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = &v[0]["Status"];
        Some((
            s["header"]["revision"].as_i64()?,
            s["leader"].as_u64()?,
            s["raftIndex"].as_u64()?,
        ))
    }

    /// Cuts member `i` off the underlay (its link down) or puts it back.
    pub fn set_link(&self, i: usize, up: bool) {
        self.namespaces[i].ip(&["link", "set", "eth0", if up { "up" } else { "down" }]);
    }
}
impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.members.clear();
    }
}
