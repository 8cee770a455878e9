//! The CNI plugin as a runtime sees it: the real `overlay-cni` binary exec'd with CNI_* and a
//! config on stdin, against a real overlayd and etcd. Scenarios are JSON fixtures in
//! tests/fixtures/cni/ (numbered, run in order), plus 50 parallel ADD/DEL.

use std::{
    collections::{BTreeMap, BTreeSet},
    thread,
};

use overlay_tests::{
    fixtures::{self, json_subset},
    Netns, Topology, TopologySpec,
};
use serde_json::Value;

use overlay_tests::cni::{cni_env, exec_plugin};

struct Scenario {
    t: Topology,
    netns: BTreeMap<String, Netns>,
    paths: BTreeMap<String, String>,
}

impl Scenario {
    fn new() -> Self {
        Self::with_daemon_args(&[])
    }

    fn with_daemon_args(args: &[&str]) -> Self {
        let mut t = Topology::new(
            TopologySpec::new(1)
                .network("red", 100, "198.19.1.0/24")
                .with_etcd(5),
        );
        t.start_daemon(0, args);
        t.wait_status(0, "network installed", |s| s["networks"] == 1);
        // Registered (holding a lease) before the first ADD.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !t.overlayctl_ok(0, &["node", "ls"]).contains("h1") {
            assert!(std::time::Instant::now() < deadline, "h1 did not register");
            thread::sleep(std::time::Duration::from_millis(100));
        }
        Self {
            t,
            netns: BTreeMap::new(),
            paths: BTreeMap::new(),
        }
    }

    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.t.id)
    }

    fn substitute(&self, text: &str) -> String {
        let mut out = text.replace(
            "{socket}",
            &overlay_daemon::api::socket_path(&self.t.hosts[0].run_dir)
                .display()
                .to_string(),
        );
        for (name, path) in &self.paths {
            out = out
                .replace(&format!("{{netns:{name}}}"), path)
                .replace(&format!("{{id:{name}}}"), &self.id(name));
        }
        out
    }

    /// A plugin config of this scenario's network and socket.
    fn conf(&self, version: &str) -> String {
        let socket = overlay_daemon::api::socket_path(&self.t.hosts[0].run_dir);
        format!(
            r#"{{"cniVersion":"{version}","name":"red","type":"overlay-cni","socket":"{}"}}"#,
            socket.display()
        )
    }

    fn endpoints(&self) -> usize {
        let out = self.t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
        serde_json::from_str::<Vec<Value>>(&out).unwrap().len()
    }

    /// Endpoint files in the daemon's local state.
    fn local_state(&self) -> usize {
        std::fs::read_dir(self.t.hosts[0].run_dir.join("endpoints"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The overlay's veths on the host.
    fn veths(&self) -> usize {
        let links = self.t.hosts[0].ns.run("ip", &["-o", "link", "show"]);
        links.matches(": ovl").count()
    }

    /// DEL of container `<id>-<tag><i>` in each of `namespaces`, each succeeding, and
    /// nothing left: no address, no veth.
    fn del_all(&self, conf: &str, tag: &str, namespaces: &[Netns]) {
        self.del_each(conf, tag, namespaces);
        assert_eq!(self.endpoints(), 0);
        assert_eq!(self.veths(), 0);
    }

    /// The DELs of `del_all`, each succeeding.
    fn del_each(&self, conf: &str, tag: &str, namespaces: &[Netns]) {
        for (i, ns) in namespaces.iter().enumerate() {
            let env = cni_env("DEL", format!("{}-{tag}{i}", self.t.id), ns.path());
            let out = exec_plugin(&env, conf.as_bytes());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    fn step(&mut self, file: &str, i: usize, step: &Value) {
        let what = format!("{file} step {i}: {step}");
        if let Some(action) = step["action"].as_str() {
            let name = step["name"]
                .as_str()
                .or(step["container"].as_str())
                .unwrap_or_default()
                .to_owned();
            match action {
                "create_netns" => {
                    let ns = Netns::create(&format!("ovt{}-{name}", self.t.id));
                    self.paths.insert(name.clone(), ns.path());
                    self.netns.insert(name, ns);
                }
                "delete_netns" => drop(self.netns.remove(&name)),
                "add_link" => {
                    let ifname = step["ifname"].as_str().unwrap();
                    self.netns[&name].ip(&[
                        "link", "add", ifname, "type", "veth", "peer", "name", "other0",
                    ]);
                }
                "stop_etcd" => self.t.etcd.as_mut().unwrap().pause(),
                "start_etcd" => self.t.etcd.as_mut().unwrap().resume(),
                "expect_endpoints" => {
                    let want = step["count"].as_u64().unwrap() as usize;
                    assert_eq!(self.endpoints(), want, "{what}");
                }
                other => panic!("{file}: unknown action {other}"),
            }
            return;
        }
        let command = step["command"].as_str().unwrap_or_default();
        let container = step["container"].as_str();
        let mut env = vec![("CNI_COMMAND", command.to_owned())];
        if let Some(c) = container {
            env.push(("CNI_CONTAINERID", self.id(c)));
            let netns = match step.get("netns") {
                Some(v) => v.as_str().unwrap_or_default().to_owned(),
                None => self.paths.get(c).cloned().unwrap_or_default(),
            };
            env.push(("CNI_NETNS", netns));
        }
        if let Some(ifname) = step["ifname"].as_str() {
            env.push(("CNI_IFNAME", ifname.to_owned()));
        }
        env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=fixture".into()));
        let stdin = match step.get("raw_stdin") {
            Some(raw) => self.substitute(raw.as_str().unwrap()),
            None => self.substitute(&step["stdin"].to_string()),
        };
        let out = exec_plugin(&env, stdin.as_bytes());
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let expect = &step["expect"];
        let exit = expect["exit"].as_i64().unwrap_or(0);
        assert_eq!(
            out.status.code().map(i64::from),
            Some(exit),
            "{what}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if expect["empty"].as_bool() == Some(true) {
            assert!(
                stdout.is_empty(),
                "{what}: expected no output, got {stdout}"
            );
        }
        if exit != 0 || expect.get("json").is_some() {
            let actual: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"));
            if let Some(code) = expect.get("code") {
                assert_eq!(&actual["code"], code, "{what}: {actual}");
            }
            let needle = expect["msg_contains"].as_str();
            if expect.get("code").is_some() || needle.is_some() {
                fixtures::assert_one_line_error(&what, &actual, "msg", needle);
            }
            if let Some(json) = expect.get("json") {
                let json: Value =
                    serde_json::from_str(&self.substitute(&json.to_string())).unwrap();
                assert!(
                    json_subset(&json, &actual),
                    "{what}\nexpected ⊆ {json}\nactual {actual}"
                );
            }
        }
    }
}

#[test]
fn spec_fixtures() {
    for (file, fixture) in fixtures::load("cni", 6) {
        eprintln!("fixture {file}: {}", fixture["about"]);
        let mut s = Scenario::new();
        for (i, step) in fixture["steps"].as_array().unwrap().iter().enumerate() {
            s.step(&file, i, step);
        }
    }
}

#[test]
fn fifty_parallel_add_and_del_leak_nothing() {
    let s = Scenario::new();
    let conf = s.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..50)
        .map(|i| Netns::create(&format!("ovt{}-q{i}", s.t.id)))
        .collect();
    let run = |command: &'static str| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let env = cni_env(command, format!("{}-q{i}", s.t.id), ns.path());
                let conf = conf.clone();
                thread::spawn(move || exec_plugin(&env, conf.as_bytes()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    let added = run("ADD");
    let mut ips = BTreeSet::new();
    for out in &added {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ips.insert(v["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    assert_eq!(ips.len(), 50, "50 distinct addresses");
    assert_eq!(s.endpoints(), 50);
    for out in run("DEL") {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(s.endpoints(), 0, "no address leaked");
    let links = s.t.hosts[0].ns.run("ip", &["-o", "link", "show"]);
    assert!(!links.contains("ovl"), "no veth leaked: {links}");
}

/// An ADD whose endpoint the datapath cannot install (here: its endpoint table is full)
/// fails with "try again later" and a one-line reason, and leaves nothing behind: no
/// address in etcd, no veth, no local state, nothing in the container. Once room is made,
/// the same ADD succeeds.
#[test]
fn an_add_the_datapath_cannot_install_fails_with_11_and_leaves_nothing() {
    let mut s = Scenario::with_daemon_args(&["--max-endpoints", "2"]);
    let conf = s.conf("1.1.0");
    for name in ["c1", "c2", "c3"] {
        let ns = Netns::create(&format!("ovt{}-{name}", s.t.id));
        s.paths.insert(name.into(), ns.path());
        s.netns.insert(name.into(), ns);
    }
    let cni = |s: &Scenario, command: &str, name: &str| {
        exec_plugin(
            &cni_env(command, s.id(name), s.paths[name].clone()),
            conf.as_bytes(),
        )
    };
    let mut ips = BTreeMap::new();
    for name in ["c1", "c2"] {
        let out = cni(&s, "ADD", name);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip = v["ips"][0]["address"].as_str().unwrap();
        ips.insert(name, ip.split('/').next().unwrap().to_owned());
    }

    let out = cni(&s, "ADD", "c3");
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error JSON");
    assert_eq!(err["code"], 11, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("endpoint table is full") && !msg.contains('\n'),
        "{msg}"
    );

    assert_eq!(s.endpoints(), 2, "no address left in etcd for c3");
    assert_eq!(s.local_state(), 2, "no local state left for c3");
    assert_eq!(s.veths(), 2, "no veth left for c3");
    let inside = s.netns["c3"].run("ip", &["-o", "link", "show"]);
    assert!(!inside.contains("eth0"), "nothing left in c3: {inside}");
    assert!(
        overlay_tests::traffic::ping(
            &s.netns["c1"],
            ips["c2"].parse::<std::net::IpAddr>().unwrap(),
            2
        ),
        "the installed endpoints keep working"
    );

    // Room made: the runtime's retry succeeds.
    let out = cni(&s, "DEL", "c1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cni(&s, "ADD", "c3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(s.endpoints(), 2);
}

/// SIGTERM while ADDs are in flight, then the daemon started again (a restart, an upgrade):
/// the daemon stops accepting, finishes what it started and exits; the plugin waits for the
/// new one. Every ADD either succeeded (and its endpoint is whole: etcd record, veth, local
/// state) or failed with "try again" (11) and left nothing behind. The daemon serves DEL for
/// all of them.
#[test]
fn stopping_the_daemon_under_load_leaves_no_half_made_endpoint() {
    let mut s = Scenario::new();
    let conf = s.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..20)
        .map(|i| Netns::create(&format!("ovt{}-s{i}", s.t.id)))
        .collect();
    let handles: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let env = cni_env("ADD", format!("{}-s{i}", s.t.id), ns.path());
            let conf = conf.clone();
            thread::spawn(move || {
                thread::sleep(std::time::Duration::from_millis(10 * i as u64));
                exec_plugin(&env, conf.as_bytes())
            })
        })
        .collect();
    thread::sleep(std::time::Duration::from_millis(60));
    assert!(
        s.t.stop_daemon(0, nix::sys::signal::Signal::SIGTERM),
        "overlayd drains and exits on SIGTERM:\n{}",
        s.t.daemon_log(0)
    );
    s.t.start_daemon(0, &[]);
    s.t.wait_registered(0);
    let mut added = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        let inside = namespaces[i].run("ip", &["-o", "link", "show"]);
        if out.status.success() {
            added += 1;
            assert!(inside.contains("eth0"), "ADD {i} succeeded: eth0 is there");
        } else {
            let err: Value = serde_json::from_slice(&out.stdout).expect("CNI error JSON");
            assert!(err["code"] == 11, "ADD {i} during the restart: {err}");
            assert!(
                !inside.contains("eth0"),
                "failed ADD {i} left eth0: {inside}"
            );
        }
    }
    assert!(
        s.t.daemon_log(0)
            .contains("stopping: finishing requests in flight"),
        "{}",
        s.t.daemon_log(0)
    );
    assert_eq!(
        s.endpoints(),
        added,
        "etcd holds exactly the endpoints that were made"
    );
    assert_eq!(
        s.local_state(),
        added,
        "local state holds exactly the endpoints that were made"
    );
    assert_eq!(s.veths(), added);
    eprintln!("{added} of 20 ADDs made across the restart");
    s.del_all(&conf, "s", &namespaces);
}

/// ADDs and DELs of one container racing each other (a runtime that timed out an ADD and
/// deletes while the plugin still runs, a repeated ADD), for ten containers at once: ADDs
/// and DELs of different containers run side by side in the daemon, those of one container
/// one after the other. Whatever order they ran in, each container ends whole (address in
/// etcd, local state, veth, eth0 inside) or with nothing at all, and DEL then leaves nothing.
#[test]
fn racing_add_and_del_of_one_container_end_whole_or_empty() {
    let s = Scenario::new();
    let conf = s.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..10)
        .map(|i| Netns::create(&format!("ovt{}-r{i}", s.t.id)))
        .collect();
    let mut handles = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        for (k, command) in ["ADD", "DEL", "ADD"].into_iter().enumerate() {
            let env = cni_env(command, format!("{}-r{i}", s.t.id), ns.path());
            let conf = conf.clone();
            handles.push(thread::spawn(move || {
                thread::sleep(std::time::Duration::from_millis((i % 3 * 2 + k) as u64));
                (command, exec_plugin(&env, conf.as_bytes()))
            }));
        }
    }
    for h in handles {
        let (command, out) = h.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // A second ADD of a container that has its interface is refused; nothing else fails.
        assert!(
            out.status.success() || (command == "ADD" && stdout.contains("already")),
            "{command}: {stdout}"
        );
    }
    let whole = namespaces
        .iter()
        .filter(|ns| ns.run("ip", &["-o", "link", "show"]).contains("eth0"))
        .count();
    assert_eq!(s.endpoints(), whole, "etcd holds the containers with eth0");
    assert_eq!(s.local_state(), whole, "local state holds them");
    assert_eq!(s.veths(), whole, "and their veths");
    eprintln!("{whole} of 10 containers ended attached");
    s.del_all(&conf, "r", &namespaces);
}

/// SIGKILL while 20 ADDs are in flight (a crash, the OOM killer), then the daemon started
/// again: whatever each ADD answered, a container whose ADD succeeded has its interface,
/// every DEL succeeds and leaves nothing (address, veth, local state), and the same
/// containers can be added again.
#[test]
fn a_daemon_killed_under_load_leaks_nothing_after_its_restart() {
    let mut s = Scenario::new();
    let conf = s.conf("1.0.0");
    let namespaces: Vec<Netns> = (0..20)
        .map(|i| Netns::create(&format!("ovt{}-k{i}", s.t.id)))
        .collect();
    let add_all = |id: &str, stagger: u64| -> Vec<_> {
        namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let env = cni_env("ADD", format!("{id}-k{i}"), ns.path());
                let conf = conf.clone();
                thread::spawn(move || {
                    thread::sleep(std::time::Duration::from_millis(stagger * i as u64));
                    exec_plugin(&env, conf.as_bytes())
                })
            })
            .collect()
    };
    let id = s.t.id.clone();
    let handles = add_all(&id, 4);
    thread::sleep(std::time::Duration::from_millis(40));
    s.t.stop_daemon(0, nix::sys::signal::Signal::SIGKILL);
    s.t.start_daemon(0, &[]);
    s.t.wait_registered(0);
    let mut added = 0;
    for (i, h) in handles.into_iter().enumerate() {
        if h.join().unwrap().status.success() {
            added += 1;
            let inside = namespaces[i].run("ip", &["-o", "link", "show"]);
            assert!(inside.contains("eth0"), "ADD {i} succeeded: eth0 is there");
        }
    }
    eprintln!("{added} of 20 ADDs answered success before or across the kill");
    s.del_each(&conf, "k", &namespaces);
    assert_eq!(s.veths(), 0);
    let left = std::fs::read_dir(s.t.hosts[0].run_dir.join("endpoints"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "no local state left, not even a partial write: {left:?}"
    );
    // A kill between an address's etcd write and its local state leaves a record no local
    // endpoint stands for: the reaper's sweep (every 10 s) releases it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while s.endpoints() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "addresses left after every DEL and a sweep: {}",
            s.t.overlayctl_ok(0, &["endpoint", "ls"])
        );
        thread::sleep(std::time::Duration::from_millis(200));
    }
    for (i, h) in add_all(&id, 0).into_iter().enumerate() {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "ADD {i} again: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(s.endpoints(), 20);
    s.del_all(&conf, "k", &namespaces);
}
