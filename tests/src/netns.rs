//! A named network namespace that is deleted when dropped, and running things inside it.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short id unique to this process and call, for names that must not collide.
pub fn unique_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", std::process::id() % 0xfffff)
}

#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Created by this handle, so deleted when it drops.
    owned: bool,
}

impl Netns {
    /// Creates `name` (must be unique) with its loopback up.
    pub fn create(name: &str) -> Self {
        run_ok("ip", &["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A handle on an existing namespace that leaves it in place when dropped.
    pub fn open(name: &str) -> Self {
        assert!(
            Path::new(&format!("/run/netns/{name}")).exists(),
            "no netns {name}"
        );
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> args...`, panicking with the command's stderr if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    /// A command that will run inside this namespace. Only the network namespace changes
    /// (unlike `ip netns exec`, which also remounts /sys and would hide the shared bpffs).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let file = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path()));
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a command inside the namespace and returns its output, whatever its status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Runs a command inside the namespace, panicking with its stderr if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.output(program, args);
        if !out.status.success() {
            panic!(
                "{program} {} in netns {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it opens live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path()));
        std::thread::spawn(move || {
            // Network namespaces are per thread: this moves only the new thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A veth `ifname` here, MTU `mtu`, whose peer `peer` goes into namespace `other`.
    pub fn add_veth(&self, ifname: &str, mtu: impl std::fmt::Display, peer: &str, other: &str) {
        let mtu = mtu.to_string();
        self.ip(&[
            "link", "add", ifname, "mtu", &mtu, "type", "veth", "peer", "name", peer, "netns",
            other,
        ]);
    }

    /// Adds bridge `br0` as a plain L2 switch, the underlay between hosts. Where br_netfilter
    /// is loaded (Docker loads it) bridged frames would also run through iptables, which a
    /// physical switch does not do: turned off for this namespace.
    pub fn add_switch(&self) {
        self.ip(&["link", "add", "br0", "type", "bridge"]);
        for proto in ["iptables", "ip6tables", "arptables"] {
            let path = format!("/proc/sys/net/bridge/bridge-nf-call-{proto}");
            self.enter(move || {
                // Absent without br_netfilter: nothing to turn off.
                let _ = std::fs::write(path, "0");
            });
        }
        self.ip(&["link", "set", "br0", "up"]);
    }

    /// A counter of this namespace's /proc/net/snmp, e.g. ("Udp", "InErrors"); None if the
    /// group or field is missing.
    pub fn snmp(&self, group: &str, field: &str) -> Option<u64> {
        let out = self.output("cat", &["/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{group}: ");
        let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (lines.next()?, lines.next()?);
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == field)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// A counter of this namespace's /proc/net/snmp6, e.g. "Udp6InErrors".
    pub fn snmp6(&self, field: &str) -> Option<u64> {
        let out = self.output("cat", &["/proc/net/snmp6"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(name, _)| *name == field)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    /// Writes a sysctl of this namespace (e.g. `net/ipv6/conf/all/disable_ipv6`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.enter(move || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("sysctl {path}: {e}"));
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command in the current namespace, panicking with its stderr if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}
