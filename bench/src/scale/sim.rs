//! The simulated cluster: an etcd (one member, or a cluster with TLS) in a namespace of its
//! own and N control-plane-only daemons, with their status files.

use super::*;

pub(super) enum EtcdServer {
    Single(Etcd),
    Cluster(EtcdCluster, Option<Pki>),
}

/// A daemon's status file: its tables (`status.json`) or its DNS zone (`dns.json`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Status {
    Tables,
    Dns,
}

pub(super) struct Sim {
    /// Dropped before the namespace it runs in.
    pub(super) etcd: EtcdServer,
    pub(super) ns: Netns,
    pub(super) dir: PathBuf,
    pub(super) daemons: Vec<(String, ChildGuard)>,
    /// Whether the daemons keep the DNS zone.
    dns: bool,
}

impl Sim {
    /// `dns`: the daemons keep the DNS zone (else `--dns off`).
    pub(super) fn new(setup: &EtcdSetup, dns: bool) -> Result<Self> {
        let id = unique_id();
        let ns = Netns::create(&format!("ovb-cp-{id}"));
        let dir = std::env::temp_dir().join(format!("ovb-cp-{id}"));
        if setup.members <= 1 && !setup.secure {
            ns.ip(&["addr", "add", &format!("{ETCD_IP}/32"), "dev", "lo"]);
            let etcd = EtcdServer::Single(Etcd::start(&ns, ETCD_IP));
            return Ok(Self {
                etcd,
                ns,
                dir,
                daemons: Vec::new(),
                dns,
            });
        }
        if setup.down * 2 >= setup.members {
            bail!(
                "{} of {} etcd members down leaves no quorum",
                setup.down,
                setup.members
            );
        }
        let ips: Vec<Ipv4Addr> = (0..setup.members)
            .map(|i| Ipv4Addr::new(198, 19, 255, 250 - i as u8))
            .collect();
        for ip in &ips {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        let pki = setup.secure.then(|| {
            Pki::new(
                &dir.join("pki"),
                &ips,
                &["root", OVERLAY_USER, STRANGER_USER],
            )
        });
        let namespaces = ips.iter().map(|_| Netns::open(ns.name())).collect();
        let mut cluster =
            EtcdCluster::start_with(namespaces, &ips, pki.as_ref().map(EtcdTls::from_pki));
        if pki.is_some() {
            cluster.enable_auth("/overlay/");
        }
        for m in &mut cluster.members[..setup.down] {
            m.kill();
        }
        Ok(Self {
            etcd: EtcdServer::Cluster(cluster, pki),
            ns,
            dir,
            daemons: Vec::new(),
            dns,
        })
    }

    pub(super) fn etcd_config(&self) -> EtcdConfig {
        match &self.etcd {
            EtcdServer::Single(e) => EtcdConfig {
                endpoints: vec![e.endpoint()],
                ..EtcdConfig::local("/overlay")
            },
            EtcdServer::Cluster(c, pki) => {
                let me = pki.as_ref().map(|p| p.client(OVERLAY_USER));
                EtcdConfig {
                    endpoints: c.endpoints().split(',').map(str::to_owned).collect(),
                    cacert: pki.as_ref().map(Pki::ca),
                    cert: me.as_ref().map(|c| c.cert.clone()),
                    key: me.map(|c| c.key),
                    ..EtcdConfig::local("/overlay")
                }
            }
        }
    }

    /// The daemons' etcd flags for `etcd_config`.
    pub(super) fn etcd_args(&self) -> Vec<String> {
        let cfg = self.etcd_config();
        let mut args = vec!["--etcd-endpoints".to_owned(), cfg.endpoints.join(",")];
        for (flag, path) in [
            ("--etcd-cacert", cfg.cacert),
            ("--etcd-cert", cfg.cert),
            ("--etcd-key", cfg.key),
        ] {
            if let Some(p) = path {
                args.extend([flag.to_owned(), p.display().to_string()]);
            }
        }
        args
    }

    /// Lines of the daemons' logs about trouble with etcd (none expected, also with
    /// members down).
    pub(super) fn etcd_trouble(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, _) in &self.daemons {
            let log = std::fs::read_to_string(self.dir.join(name).join("overlayd.log"))
                .unwrap_or_default();
            lines.extend(
                log.lines()
                    .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("etcd"))
                    .map(|l| format!("{name}: {l}")),
            );
        }
        lines
    }

    pub(super) fn status_path(&self, node: &str, file: Status) -> PathBuf {
        self.dir.join(node).join(match file {
            Status::Tables => "status.json",
            Status::Dns => "dns.json",
        })
    }

    pub(super) fn spawn(&self, index: usize) -> Result<(String, ChildGuard)> {
        self.spawn_with(index, &[])
    }

    pub(super) fn spawn_with(
        &self,
        index: usize,
        extra: &[String],
    ) -> Result<(String, ChildGuard)> {
        let name = format!("sim-{index:03}");
        let run_dir = self.dir.join(&name);
        std::fs::create_dir_all(&run_dir)?;
        let log = File::create(run_dir.join("overlayd.log"))?;
        let vtep = Ipv4Addr::new(198, 18, (index / 250) as u8, (index % 250 + 1) as u8);
        let child = self
            .ns
            .command(overlayd_bin().to_str().context("overlayd path")?)
            .args(["--control-plane-only", "--node-name", &name])
            .args(["--vtep-ip", &vtep.to_string()])
            .arg("--run-dir")
            .arg(&run_dir)
            .args(self.etcd_args())
            .args(["--dns", if self.dns { "on" } else { "off" }])
            .args(["--lease-ttl", "60", "--detach-on-exit"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting overlayd")?;
        Ok((name.clone(), ChildGuard::new(child, name)))
    }

    pub(super) fn status(&self, node: &str, file: Status) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.status_path(node, file)).ok()?).ok()
    }

    /// Waits until every named node's status satisfies `check`; returns their statuses.
    pub(super) fn wait_all(
        &mut self,
        names: &[String],
        file: Status,
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        let mut done: Vec<Option<serde_json::Value>> = vec![None; names.len()];
        loop {
            for (i, name) in names.iter().enumerate() {
                if done[i].is_none() {
                    done[i] = self.status(name, file).filter(|s| check(s));
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok(done.into_iter().flatten().collect());
            }
            for (name, child) in &mut self.daemons {
                if !child.is_running() {
                    let log = std::fs::read_to_string(self.dir.join(&*name).join("overlayd.log"))
                        .unwrap_or_default();
                    bail!("overlayd {name} exited while waiting for {what}:\n{log}");
                }
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = names
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| d.is_none())
                    .map(|(n, _)| n.as_str())
                    .take(5)
                    .collect();
                bail!("{what}: not reached within {timeout:?} by {missing:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `f` with an etcd client inside the namespace.
    pub(super) fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, &Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cfg = self.etcd_config();
        self.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let store = rt.block_on(Store::connect(&cfg))?;
            f(&rt, &store)
        })
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            child.stop(Signal::SIGKILL, Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
