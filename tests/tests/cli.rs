//! Bad flags and a missing underlay interface give one line that names the problem.

use overlay_tests::{netns::unique_id, topology::overlayd_bin, Netns};

/// Runs overlayd in a fresh namespace (so nothing real is touched) and returns (code, stderr).
fn overlayd(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .command(overlayd_bin().to_str().unwrap())
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run overlayd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str, needles: &[&str]) {
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr:?}");
    }
}

#[test]
fn bad_input_gives_one_clear_line() {
    let ns = Netns::create(&format!("ovt{}-cli", unique_id()));
    ns.ip(&[
        "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
    ]);
    ns.ip(&["link", "set", "bare0", "up"]);
    let run_dir = std::env::temp_dir().join(format!("ovt-cli-{}", unique_id()));
    let rd = run_dir.to_str().unwrap();

    let (code, err) = overlayd(&ns, &["--node-name", "n", "--run-dir", rd]);
    assert_eq!(code, 2);
    assert_one_line(&err, &["--underlay"]);

    let (code, err) = overlayd(
        &ns,
        &["--underlay", "eth9", "--node-name", "n", "--run-dir", rd],
    );
    assert_eq!(code, 1);
    assert_one_line(&err, &["\"eth9\"", "not found", "--underlay"]);

    let (code, err) = overlayd(
        &ns,
        &["--underlay", "bare0", "--node-name", "n", "--run-dir", rd],
    );
    assert_eq!(code, 1);
    assert_one_line(&err, &["\"bare0\"", "no IPv4 address", "--vtep-ip"]);

    let (code, err) = overlayd(&ns, &["--underlay", "bare0", "--vxlan-port", "0"]);
    assert_eq!(code, 2);
    assert_one_line(&err, &["--vxlan-port"]);

    let (code, err) = overlayd(&ns, &["--underlay", "bare0", "--vtep-ip", "300.1.1.1"]);
    assert_eq!(code, 2);
    assert_one_line(&err, &["--vtep-ip", "300.1.1.1"]);

    let (code, err) = overlayd(&ns, &["--underlay", "bare0", "--xdp", "sometimes"]);
    assert_eq!(code, 2);
    assert_one_line(&err, &["--xdp", "sometimes"]);

    let (code, err) = overlayd(&ns, &["--node-name", "", "--underlay", "bare0"]);
    assert_eq!(code, 1);
    assert_one_line(&err, &["--node-name"]);
    let _ = std::fs::remove_dir_all(run_dir);
}
