//! overlayctl as operators use it: help and usage for every command, tables, JSON and YAML
//! of every object against golden files (`tests/golden/`; `UPDATE_GOLDEN=1` rewrites
//! them), filters and their errors, shell completion, man pages, and `network rm` racing
//! endpoint creation.

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    sync::{Arc, Barrier},
    thread,
};

use overlay_api::EndpointRequest;
use overlay_tests::{
    golden::{assert_golden, normalize},
    netns::unique_id,
    topology::{overlayd_bin, Topology, TopologySpec},
    Netns,
};

fn overlayctl_bin() -> String {
    overlayd_bin()
        .with_file_name("overlayctl")
        .to_string_lossy()
        .into_owned()
}

/// Runs a binary with none of the OVERLAY_* variables of the environment (they would show
/// in the help's `[env: ...]`).
fn run(bin: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("OVERLAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).output().expect("run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands a help text lists (`help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_has_help_and_groups_show_their_usage() {
    let ctl = overlayctl_bin();
    let mut paths: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = paths.get(seen).cloned() {
        seen += 1;
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = run(&ctl, &args);
        assert!(out.status.success(), "{args:?}");
        let help = text(&out.stdout);
        let name = std::iter::once("overlayctl")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("-");
        assert_golden(&format!("help/{name}"), &help);
        let subs = subcommands(&help);
        if !subs.is_empty() {
            // A group run bare shows its usage and subcommands (exit 2), not one line.
            args.pop();
            let bare = run(&ctl, &args);
            assert_eq!(bare.status.code(), Some(2), "{args:?}");
            let usage = text(&bare.stderr);
            assert!(
                usage.contains("Usage:") && subs.iter().all(|s| usage.contains(s.as_str())),
                "{args:?}: {usage}"
            );
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            paths.push(p);
        }
    }
    assert!(seen >= 20, "only {seen} commands found");
    // overlayd: flags only where they apply.
    let overlayd = overlayd_bin().to_string_lossy().into_owned();
    for sub in ["cleanup", "stats"] {
        let help = text(&run(&overlayd, &[sub, "--help"]).stdout);
        assert_golden(&format!("help/overlayd-{sub}"), &help);
    }
    let cleanup = text(&run(&overlayd, &["cleanup", "--help"]).stdout);
    assert!(!cleanup.contains("--json") && cleanup.contains("--underlay"));
    let stats = text(&run(&overlayd, &["stats", "--help"]).stdout);
    assert!(stats.contains("--json") && !stats.contains("--underlay"));
}

#[test]
fn shell_completion_completes_and_man_pages_render() {
    let ctl = overlayctl_bin();
    let script = text(&run(&ctl, &["completion", "bash"]).stdout);
    let file = std::env::temp_dir().join(format!("ovt-{}-completion.bash", unique_id()));
    std::fs::write(&file, script).unwrap();
    // What bash's programmable completion does on <TAB>.
    let complete =
        |line: &str| -> String {
            let words: Vec<&str> = line.split(' ').collect();
            let program =
                format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             _overlayctl overlayctl '{}' '{}'; echo \"${{COMPREPLY[@]}}\"",
            file.display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
            let out = Command::new("bash")
                .args(["-c", &program])
                .output()
                .unwrap();
            text(&out.stdout).trim().to_owned()
        };
    assert_eq!(complete("overlayctl net"), "network");
    assert_eq!(complete("overlayctl network ins"), "inspect");
    assert_eq!(complete("overlayctl service add x --pro"), "--proto");
    assert_eq!(complete("overlayctl -o y"), "yaml");
    let _ = std::fs::remove_file(&file);
    for shell in ["zsh", "fish"] {
        let out = run(&ctl, &["completion", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }

    let dir = std::env::temp_dir().join(format!("ovt-{}-man", unique_id()));
    let out = run(&ctl, &["man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pages: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for page in [
        "overlayctl.1",
        "overlayctl-network-create.1",
        "overlayctl-service-inspect.1",
    ] {
        assert!(pages.contains(page), "{page} not in {pages:?}");
    }
    let page = dir.join("overlayctl-network-create.1");
    let rendered = Command::new("man")
        .args(["-l", page.to_str().unwrap()])
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    // Bold and underline are overstruck (X, backspace, X) when not on a terminal.
    let rendered = text(&rendered.stdout)
        .chars()
        .fold(String::new(), |mut s, c| {
            if c == '\u{8}' {
                s.pop();
            } else {
                s.push(c);
            }
            s
        });
    assert!(
        rendered.contains("--vni") && rendered.contains("VXLAN network identifier"),
        "{rendered}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What changes from run to run, replaced by names: the test id, veth names, VTEP MACs,
/// leases and their time left, registration times.
struct Normalizer {
    pairs: Vec<(String, String)>,
    patterns: Vec<(regex::Regex, &'static str)>,
}

impl Normalizer {
    fn new(t: &Topology) -> Self {
        let nodes: serde_json::Value =
            serde_json::from_str(&t.overlayctl_ok(0, &["node", "ls", "-o", "json"])).unwrap();
        // Container ids are `<test id>-<name>`: the id alone could be part of a hex value.
        let mut pairs = vec![(format!("{}-", t.id), "ID-".to_owned())];
        for n in nodes.as_array().unwrap() {
            let name = n["name"].as_str().unwrap();
            pairs.push((
                n["vtep_mac"].as_str().unwrap().into(),
                format!("<{name} vtep mac>"),
            ));
            pairs.push((
                n["lease"].as_str().unwrap().into(),
                format!("<{name} lease>"),
            ));
        }
        let re = |s| regex::Regex::new(s).unwrap();
        Self {
            pairs,
            patterns: vec![
                (re(r"ovl[0-9a-f]{10}"), "<veth>"),
                (re(r#"("lease_ttl": |lease_ttl: )\d+"#), "${1}<ttl>"),
                (re(r"\b\d+s left"), "<ttl>s left"),
                (re(r"  \d+s  "), "  <ttl>s  "),
                (re(r"\d+s ago"), "<n>s ago"),
                (
                    re(r#"("registered_at": |registered_at: )\d+"#),
                    "${1}<time>",
                ),
                // Columns are as wide as their widest value, which varies (a lease id):
                // runs of spaces inside a line (not its indentation) are compared as two.
                (re(r"(\S)  +"), "${1}  "),
            ],
        }
    }

    fn apply(&self, s: &str) -> String {
        let s = self.patterns.iter().fold(s.to_owned(), |s, (re, to)| {
            re.replace_all(&s, *to).into_owned()
        });
        normalize(&s, &self.pairs)
    }
}

/// overlayctl on host 0: stdout (and stderr) of a command, normalized, compared with the
/// golden file `cli/<name>`.
fn golden(t: &Topology, n: &Normalizer, name: &str, args: &[&str]) {
    let out = t.overlayctl(0, args);
    let mut shown = text(&out.stdout);
    if !out.status.success() {
        shown.push_str(&format!(
            "exit {}: {}",
            out.status.code().unwrap_or(-1),
            text(&out.stderr)
        ));
    }
    assert_golden(&format!("cli/{name}"), &n.apply(&shown));
}

#[test]
fn outputs_of_every_object_match_their_golden_files() {
    let mut t = Topology::new(TopologySpec::new(2).with_etcd(15));
    t.start_all(&[]);
    t.wait_registered(0);
    t.wait_registered(1);
    let n = Normalizer::new(&t);

    golden(
        &t,
        &n,
        "network-create",
        &[
            "network",
            "create",
            "red",
            "--vni",
            "100",
            "--subnet",
            "198.19.1.0/24",
        ],
    );
    golden(
        &t,
        &n,
        "network-create-json",
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "101",
            "--subnet",
            "198.19.2.0/24",
            "--subnet",
            "2001:2:0:1002::/64",
            "--mtu",
            "1400",
            "-o",
            "json",
        ],
    );
    golden(
        &t,
        &n,
        "network-create-name-taken",
        &[
            "network",
            "create",
            "red",
            "--vni",
            "102",
            "--subnet",
            "198.19.3.0/24",
        ],
    );
    golden(
        &t,
        &n,
        "network-create-vni-taken",
        &[
            "network",
            "create",
            "green",
            "--vni",
            "100",
            "--subnet",
            "198.19.3.0/24",
        ],
    );

    // The topology turns IPv6 on in the containers of networks it knows to have it.
    t.tables.networks.push(overlay_daemon::tables::NetworkSpec {
        name: "blue".into(),
        vni: 101,
        subnet: Some("198.19.2.0/24".parse().unwrap()),
        gateway: None,
        subnet6: Some("2001:2:0:1002::/64".parse().unwrap()),
        gateway6: None,
    });
    for h in 0..2 {
        t.wait_status(h, "both networks", |s| s["networks"] == 2);
    }
    t.add_labelled_pod(0, "a", "red", &["web:8080"]);
    t.add_pod(1, "b", "red");
    t.add_pod(0, "c", "blue");
    let a = t.container("a").ip.to_string();
    let b = t.container("b").ip.to_string();

    golden(
        &t,
        &n,
        "service-add",
        &[
            "service",
            "add",
            "web",
            "--network",
            "red",
            "--vip",
            "198.19.250.1:80",
            "--backend",
            &format!("{b}:8080@2"),
            "--backend",
            "198.19.1.250:8080",
        ],
    );
    golden(
        &t,
        &n,
        "service-add-vip-taken",
        &[
            "service",
            "add",
            "www",
            "--network",
            "red",
            "--vip",
            "198.19.250.1:80",
        ],
    );
    for (name, args) in [
        ("network-ls", vec!["network", "ls"]),
        ("network-ls-json", vec!["network", "ls", "-o", "json"]),
        ("network-ls-yaml", vec!["network", "ls", "-o", "yaml"]),
        ("network-inspect", vec!["network", "inspect", "red"]),
        (
            "network-inspect-json",
            vec!["network", "inspect", "blue", "-o", "json"],
        ),
        (
            "network-inspect-nosuch",
            vec!["network", "inspect", "nosuch"],
        ),
        ("node-ls", vec!["node", "ls"]),
        ("node-ls-json", vec!["node", "ls", "-o", "json"]),
        ("node-inspect", vec!["node", "inspect", "h1"]),
        (
            "node-inspect-yaml",
            vec!["node", "inspect", "h2", "-o", "yaml"],
        ),
        ("endpoint-ls", vec!["endpoint", "ls"]),
        ("endpoint-ls-json", vec!["endpoint", "ls", "-o", "json"]),
        (
            "endpoint-ls-network",
            vec!["endpoint", "ls", "--network", "blue"],
        ),
        ("endpoint-ls-node", vec!["endpoint", "ls", "--node", "h2"]),
        (
            "endpoint-ls-both",
            vec!["endpoint", "ls", "--node", "h1", "--network", "red"],
        ),
        (
            "endpoint-ls-nosuch-network",
            vec!["endpoint", "ls", "--network", "nosuch"],
        ),
        (
            "endpoint-ls-nosuch-node",
            vec!["endpoint", "ls", "--node", "h9"],
        ),
        ("endpoint-inspect", vec!["endpoint", "inspect", a.as_str()]),
        (
            "endpoint-inspect-json",
            vec![
                "endpoint",
                "inspect",
                &format!("{}-b/eth0", t.id),
                "-o",
                "json",
            ],
        ),
        ("service-ls", vec!["service", "ls"]),
        ("service-ls-json", vec!["service", "ls", "-o", "json"]),
        (
            "service-ls-network",
            vec!["service", "ls", "--network", "blue"],
        ),
        (
            "service-ls-nosuch",
            vec!["service", "ls", "--network", "nosuch"],
        ),
        ("service-inspect", vec!["service", "inspect", "web"]),
        (
            "service-inspect-yaml",
            vec!["service", "inspect", "web", "-o", "yaml"],
        ),
        ("network-rm-busy", vec!["network", "rm", "blue"]),
    ] {
        golden(&t, &n, name, &args);
    }
    let only_b = format!("{b}:8080@3");
    golden(
        &t,
        &n,
        "service-set-backends-json",
        &[
            "service",
            "set-backends",
            "web",
            "--backend",
            &only_b,
            "-o",
            "json",
        ],
    );
    golden(
        &t,
        &n,
        "service-set-backends-weight-0",
        &[
            "service",
            "set-backends",
            "web",
            "--backend",
            &format!("{b}:8080@0"),
        ],
    );
    golden(
        &t,
        &n,
        "service-rm-json",
        &["service", "rm", "web", "-o", "json"],
    );
    golden(&t, &n, "service-rm-nosuch", &["service", "rm", "web"]);

    // The daemon's own view: one format for a lease, counters as objects.
    let status: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["status", "-o", "json"])).unwrap();
    let nodes: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["node", "ls", "-o", "json"])).unwrap();
    assert_eq!(
        status["lease"], nodes[0]["lease"],
        "status and node ls print a lease alike"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["stats", "-o", "json"])).unwrap();
    assert!(
        stats["traffic"].is_object() && stats["drops"]["spoofed_mac"].is_object(),
        "{stats}"
    );

    // An unreachable etcd: one line, said once.
    let out = t.overlayctl_with(
        0,
        &["--etcd-endpoints".into(), "http://198.18.0.254:1".into()],
        &["network", "ls"],
    );
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(err.matches("refused").count(), 1, "{err}");

    for name in ["a", "b", "c"] {
        let c = t.container(name);
        t.client(c.host)
            .delete_endpoint(&format!("{}-{name}", t.id), "eth0")
            .unwrap();
    }
    golden(
        &t,
        &n,
        "network-rm-json",
        &["network", "rm", "blue", "-o", "json"],
    );
    golden(&t, &n, "network-rm", &["network", "rm", "red"]);
    golden(&t, &n, "network-rm-nosuch", &["network", "rm", "red"]);
}

/// `network rm` and an endpoint's creation on another node, started together, never both
/// succeed: a network is never removed under a live endpoint.
#[test]
fn network_rm_racing_endpoint_creation_has_one_winner() {
    let mut t = Topology::new(TopologySpec::new(2).with_etcd(15));
    t.start_all(&[]);
    t.wait_registered(0);
    t.wait_registered(1);
    let (mut removed, mut created) = (0, 0);
    // An ADD started after a delay spread over twice what an overlayctl call takes here,
    // so that across the rounds its transaction lands before, during and after the
    // removal's, on a fast machine or a slow one.
    let started = std::time::Instant::now();
    t.overlayctl_ok(0, &["network", "ls"]);
    let step = started.elapsed() * 2 / 30;
    for round in 0..30 {
        let net = format!("race{round}");
        let vni = (300 + round).to_string();
        let subnet = format!("198.19.{}.0/24", 100 + round);
        t.overlayctl_ok(
            0,
            &[
                "network", "create", &net, "--vni", &vni, "--subnet", &subnet,
            ],
        );
        t.wait_status(1, "the network", |s| s["networks"] == 1);
        let ns = Netns::create(&format!("ovt{}-r{round}", t.id));
        let req = EndpointRequest {
            network: net.clone(),
            container_id: format!("{}-r{round}", t.id),
            netns: ns.path().into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let go = Arc::new(Barrier::new(2));
        let client = t.client(1);
        let add = {
            let go = go.clone();
            // Started later each round: across the rounds, the ADD's etcd transaction moves
            // from before the removal's (which runs a process and reads first) to after it.
            let delay = step * round;
            thread::spawn(move || {
                go.wait();
                thread::sleep(delay);
                client.create_endpoint(req)
            })
        };
        go.wait();
        let rm = t.overlayctl(0, &["network", "rm", &net]);
        let add = add.join().unwrap();
        let listed: serde_json::Value =
            serde_json::from_str(&t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"])).unwrap();
        let orphans: Vec<_> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["network"] == net.as_str())
            .collect();
        if rm.status.success() {
            removed += 1;
            assert!(
                add.is_err(),
                "round {round}: the network was removed and the endpoint created"
            );
            assert!(
                orphans.is_empty(),
                "round {round}: endpoints of a removed network: {orphans:?}"
            );
        } else {
            created += 1;
            assert!(
                add.is_ok(),
                "round {round}: rm refused ({}) but no endpoint",
                text(&rm.stderr)
            );
            assert!(
                text(&rm.stderr).contains("still has 1 endpoint"),
                "{}",
                text(&rm.stderr)
            );
            t.client(1)
                .delete_endpoint(&format!("{}-r{round}", t.id), "eth0")
                .unwrap();
            t.overlayctl_ok(0, &["network", "rm", &net]);
        }
        t.wait_status(1, "the network gone", |s| s["networks"] == 0);
    }
    eprintln!("rm won {removed} rounds, the endpoint {created}");
    assert!(
        removed > 0 && created > 0,
        "the two never overlapped: rm won {removed} rounds, the endpoint {created}"
    );
}

/// A node away (its lease, and so its endpoints' keys, expired) while its network is
/// removed: coming back, it does not publish the endpoint of a network that no longer
/// exists, and removes it.
#[test]
fn a_node_back_after_its_network_was_removed_publishes_nothing_of_it() {
    let mut t = Topology::new(TopologySpec::new(2).with_etcd(3));
    t.start_all(&[]);
    t.wait_registered(0);
    t.wait_registered(1);
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "gone",
            "--vni",
            "400",
            "--subnet",
            "198.19.40.0/24",
        ],
    );
    t.wait_status(1, "the network", |s| s["networks"] == 1);
    t.add_pod(1, "p", "gone");
    let veth = t.container("p").host_ifname.clone();
    t.stop_daemon(1, nix::sys::signal::Signal::SIGKILL);
    // The lease (3 s) expires and takes the endpoint's key along: rm is allowed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !t.overlayctl(0, &["network", "rm", "gone"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoint's key did not expire"
        );
        thread::sleep(std::time::Duration::from_millis(200));
    }
    t.start_daemon(1, &[]);
    t.wait_registered(1);
    t.wait_status(1, "no endpoint", |s| s["local_endpoints"] == 0);
    let listed = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    assert_eq!(
        listed.trim(),
        "[]",
        "an endpoint of a removed network was published"
    );
    let links = t.hosts[1].ns.run("ip", &["-o", "link", "show"]);
    assert!(!links.contains(&veth), "{veth} left behind: {links}");
}
