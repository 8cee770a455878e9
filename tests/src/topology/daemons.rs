//! The overlayd of each host: starting, stopping, extra daemons, status and the pinned
//! maps they leave.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use overlay_daemon::{
    datapath::PinLayout,
    maps::{CounterMap, CounterSnapshot, VtepMap},
};

use super::{overlayd_bin, Topology};
use crate::{netns::unique_id, ChildGuard};

impl Topology {
    /// Starts overlayd on host `host` with the topology's tables and any extra flags.
    pub fn start_daemon(&mut self, host: usize, extra: &[&str]) {
        let tables = self.tables_path();
        let etcd = self.has_etcd().then(|| {
            self.hosts[host]
                .etcd_args
                .clone()
                .unwrap_or_else(|| self.etcd_args())
        });
        let h = &mut self.hosts[host];
        assert!(h.daemon.is_none(), "daemon on {} already started", h.name);
        let bin = h.overlayd.clone().unwrap_or_else(overlayd_bin);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .expect("daemon log");
        let mut cmd: Command = h.ns.command(bin.to_str().expect("path"));
        cmd.args(["--node-name", &h.name, "--underlay", "ul0"])
            .arg("--run-dir")
            .arg(&h.run_dir)
            .arg("--bpffs")
            .arg(h.pins.root());
        match (etcd, self.lease_ttl) {
            (Some(etcd), Some(ttl)) => {
                cmd.args(etcd).args(["--lease-ttl", &ttl.to_string()]);
            }
            _ => {
                cmd.arg("--tables").arg(&tables);
            }
        }
        cmd.args(extra)
            .env("RUST_LOG", "info,overlay=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn overlayd");
        h.daemon = Some(ChildGuard::new(child, format!("overlayd on {}", h.name)));
    }

    /// `overlayd cleanup` of host `host` (its node name, pins and underlay), run in its
    /// namespace as an operator would after stopping the daemon.
    pub fn cleanup(&self, host: usize) -> std::process::Output {
        let h = &self.hosts[host];
        let pins = h.pins.root().display().to_string();
        let bin = h.overlayd.clone().unwrap_or_else(overlayd_bin);
        h.ns.output(
            bin.to_str().expect("path"),
            &[
                "cleanup",
                "--node-name",
                &h.name,
                "--bpffs",
                &pins,
                "--underlay",
                "ul0",
            ],
        )
    }

    /// Runs another overlayd in host `host`'s namespace with the topology's etcd flags and
    /// `args` (nothing else), until it exits or `timeout` passes (then it is killed).
    /// Returns its exit code (None if it had to be killed) and its output.
    pub fn run_extra_daemon(
        &self,
        host: usize,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let etcd = if self.has_etcd() {
            self.etcd_args()
        } else {
            Vec::new()
        };
        self.run_extra_daemon_with(host, &etcd, args, timeout)
    }

    /// `run_extra_daemon` with `etcd` as its etcd flags (to try other credentials).
    pub fn run_extra_daemon_with(
        &self,
        host: usize,
        etcd: &[String],
        args: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let h = &self.hosts[host];
        let mut cmd: Command = h.ns.command(overlayd_bin().to_str().expect("path"));
        if let (true, Some(ttl)) = (self.has_etcd(), self.lease_ttl) {
            cmd.args(etcd).args(["--lease-ttl", &ttl.to_string()]);
        }
        let out = self.dir.join(format!("extra-{}.log", unique_id()));
        let log = std::fs::File::create(&out).expect("extra daemon log");
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn overlayd");
        let mut guard = ChildGuard::new(child, format!("extra overlayd on {}", h.name));
        let deadline = Instant::now() + timeout;
        let mut code = None;
        while Instant::now() < deadline {
            if !guard.is_running() {
                code = guard.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(1));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(guard);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        (code.and_then(|s| s.code()), text)
    }

    /// Where an extra daemon's pins go: inside the topology's bpffs root (removed with it).
    pub fn extra_pins(&self, name: &str) -> PinLayout {
        PinLayout::new(self.pins_root.join(name))
    }

    /// Stops the daemon on `host` with `signal`; returns whether it exited by itself.
    pub fn stop_daemon(&mut self, host: usize, signal: nix::sys::signal::Signal) -> bool {
        let h = &mut self.hosts[host];
        let mut d = h.daemon.take().expect("daemon not running");
        d.stop(signal, Duration::from_secs(10)).is_some()
    }

    /// Starts overlayd everywhere and waits until every host has installed the tables.
    pub fn start_all(&mut self, extra: &[&str]) {
        for i in 0..self.hosts.len() {
            self.start_daemon(i, extra);
        }
        for i in 0..self.hosts.len() {
            self.wait_converged(i);
        }
    }

    /// The restarts a running flow must survive: a graceful restart of host 0's daemon
    /// (SIGTERM), then a crash and restart of host 1's (SIGKILL), each waited for.
    pub fn restart_two_daemons(&mut self) {
        use nix::sys::signal::Signal;
        assert!(
            self.stop_daemon(0, Signal::SIGTERM),
            "overlayd exits on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(500));
        self.start_daemon(0, &[]);
        self.wait_converged(0);
        std::thread::sleep(Duration::from_secs(1));
        self.stop_daemon(1, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(500));
        self.start_daemon(1, &[]);
        self.wait_converged(1);
    }

    /// Waits until host `host` reports every endpoint installed (those of the tables file,
    /// or in etcd topologies every container of the topology).
    pub fn wait_converged(&mut self, host: usize) {
        let (want, want_local) = if self.has_etcd() {
            let all = self.containers.len() as u64;
            (
                all,
                self.containers.iter().filter(|c| c.host == host).count() as u64,
            )
        } else {
            let me = &self.hosts[host].name;
            let local = self
                .tables
                .endpoints
                .iter()
                .filter(|e| &e.node == me)
                .count();
            (self.tables.endpoints.len() as u64, local as u64)
        };
        self.wait_status(
            host,
            &format!("{want} endpoints ({want_local} local) installed"),
            |s| {
                s["endpoints"].as_u64() == Some(want)
                    && s["local_endpoints"].as_u64() == Some(want_local)
            },
        );
    }

    /// The daemon's last status report, if it wrote one.
    pub fn status(&self, host: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.hosts[host].run_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn daemon_log(&self, host: usize) -> String {
        std::fs::read_to_string(&self.hosts[host].log).unwrap_or_default()
    }

    /// Host `host`'s VTEP table: (address, node id, pinned underlay next hop), IPv4 or IPv6.
    pub fn vteps(&self, host: usize) -> Vec<(IpAddr, u32, Option<IpAddr>)> {
        VtepMap::open_pinned(&self.hosts[host].pins.maps())
            .and_then(|v| v.entries())
            .unwrap_or_else(|e| panic!("VTEPs of {}: {e}", self.hosts[host].name))
    }

    /// Counters of host `host`'s datapath, read from its pinned maps.
    /// Asserts that none of hosts `0..hosts` failed to encapsulate or decapsulate a packet
    /// (after a transfer: every segment of it went through).
    pub fn assert_no_encap_failures(&self, hosts: usize) {
        for h in 0..hosts {
            let c = self.counters(h);
            let bad: Vec<_> = c.drops.iter().filter(|(_, v)| v.packets > 0).collect();
            assert!(
                c.drops(overlay_common::DropReason::DecapFailed).packets == 0
                    && c.drops(overlay_common::DropReason::EncapFailed).packets == 0,
                "host {h} dropped packets during the transfers: {bad:?}"
            );
        }
    }

    pub fn counters(&self, host: usize) -> CounterSnapshot {
        CounterMap::open_pinned(&self.hosts[host].pins.maps())
            .and_then(|c| c.snapshot())
            .unwrap_or_else(|e| panic!("counters of {}: {e}", self.hosts[host].name))
    }

    /// Waits until `check` holds for host `host`'s status report.
    pub fn wait_status(
        &mut self,
        host: usize,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(host);
            if status.as_ref().is_some_and(&check) {
                return;
            }
            if !self.hosts[host].daemon_running() {
                panic!(
                    "overlayd on {} exited:\n{}",
                    self.hosts[host].name,
                    self.daemon_log(host)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} on {}: status {status:?}\n{}",
                    what,
                    self.hosts[host].name,
                    self.daemon_log(host)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
