//! The Docker remote driver protocol as dockerd speaks it: recorded request bodies (JSON
//! fixtures in tests/fixtures/cnm/, numbered, run in order) replayed over HTTP on the plugin's
//! unix socket of a real overlayd with a real etcd, checking status, reply and side effects.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use overlay_tests::{
    docker::plugin_socket,
    fixtures::{self, json_subset},
    Topology, TopologySpec,
};
use serde_json::Value;

struct Scenario {
    t: Topology,
    socket: PathBuf,
    saved: BTreeMap<String, String>,
}

/// POSTs `body` to `method` on the plugin socket; returns the status and the body.
fn post(socket: &Path, method: &str, body: &str) -> (u16, String) {
    let mut child = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/vnd.docker.plugins.v1.2+json",
        ])
        .arg("--unix-socket")
        .arg(socket)
        .args(["--data-binary", "@-"])
        .arg(format!("http://plugin{method}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl (cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

impl Scenario {
    fn new() -> Self {
        let mut t = Topology::new(
            TopologySpec::new(1)
                .network("red", 100, "198.19.1.0/24")
                .network6("blue", 200, "198.19.2.0/24", "2001:2:0:1002::/64")
                .network6_only("six", 301, "2001:2:0:1003::/64")
                .with_etcd(5),
        );
        let socket = plugin_socket(&t, 0);
        t.start_daemon(0, &["--docker-plugin", socket.to_str().unwrap()]);
        t.wait_status(0, "networks installed", |s| s["networks"] == 3);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !t.overlayctl_ok(0, &["node", "ls"]).contains("h1") || !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "h1 did not register");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self {
            t,
            socket,
            saved: BTreeMap::new(),
        }
    }

    fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (k, v) in &self.saved {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn links(&self) -> String {
        self.t.hosts[0].ns.run("ip", &["-br", "link"])
    }

    fn step(&mut self, file: &str, i: usize, step: &Value) {
        let what = format!("{file} step {i}: {step}");
        if let Some(action) = step["action"].as_str() {
            match action {
                "expect_endpoints" => {
                    let out = self.t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
                    let eps: Vec<Value> = serde_json::from_str(&out).unwrap();
                    assert_eq!(
                        eps.len(),
                        step["count"].as_u64().unwrap() as usize,
                        "{what}: {eps:?}"
                    );
                }
                "expect_veths" => {
                    let n = self
                        .links()
                        .lines()
                        .filter(|l| l.starts_with("ovl") || l.starts_with("ovc"))
                        .count();
                    assert_eq!(
                        n,
                        step["count"].as_u64().unwrap() as usize,
                        "{what}: {}",
                        self.links()
                    );
                }
                "expect_claims6" => {
                    let etcd = self.t.etcd.as_ref().expect("etcd");
                    let claims = etcd.keys("/overlay/v1/endpoints6/");
                    assert_eq!(
                        claims.len(),
                        step["count"].as_u64().unwrap() as usize,
                        "{what}: {claims:?}"
                    );
                }
                "expect_network" => {
                    let nets = self.t.overlayctl_ok(0, &["network", "ls", "-o", "json"]);
                    let name = step["name"].as_str().unwrap();
                    assert!(nets.contains(&format!("\"{name}\"")), "{what}: {nets}");
                }
                other => panic!("{file}: unknown action {other}"),
            }
            return;
        }
        let method = step["call"].as_str().expect("call");
        let body = match step.get("raw") {
            Some(raw) => self.substitute(raw.as_str().unwrap()),
            None => self.substitute(&step["body"].to_string()),
        };
        let (status, reply) = post(&self.socket, method, &body);
        let expect = &step["expect"];
        let want = expect["status"].as_u64().unwrap_or(200) as u16;
        assert_eq!(status, want, "{what}\nreply: {reply}");
        let actual: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{what}: reply is not JSON ({e}): {reply}"));
        let needle = expect["err_contains"].as_str();
        if want != 200 || needle.is_some() {
            fixtures::assert_one_line_error(&what, &actual, "Err", needle);
        }
        if let Some(json) = expect.get("json") {
            let json: Value = serde_json::from_str(&self.substitute(&json.to_string())).unwrap();
            assert!(
                json_subset(&json, &actual),
                "{what}\nexpected ⊆ {json}\nactual {actual}"
            );
        }
        if let Some(save) = step["save"].as_object() {
            for (var, field) in save {
                let v = actual.pointer(field.as_str().unwrap()).unwrap_or_else(|| {
                    panic!("{what}: no {field} in {actual}");
                });
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                self.saved.insert(var.clone(), v);
            }
        }
    }
}

#[test]
fn recorded_requests() {
    for (file, fixture) in fixtures::load("cnm", 6) {
        eprintln!("fixture {file}: {}", fixture["about"]);
        let mut s = Scenario::new();
        for (i, step) in fixture["steps"].as_array().unwrap().iter().enumerate() {
            s.step(&file, i, step);
        }
    }
}
