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
    assert_one_line(
        &err,
        &[
            "\"bare0\"",
            "neither an IPv4 nor a global IPv6",
            "--vtep-ip",
        ],
    );

    // VTEP addresses no peer can send to, or that would alias an IPv4 VTEP's key, and two
    // of one family.
    for (vtep, why) in [
        ("::ffff:198.18.0.9", "IPv4-mapped"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
    ] {
        let args = ["--underlay", "bare0", "--node-name", "n", "--run-dir", rd];
        let (code, err) = overlayd(&ns, &[&args[..], &["--vtep-ip", vtep]].concat());
        assert_eq!(code, 1, "{vtep}");
        assert_one_line(&err, &[vtep, "cannot be a VTEP address", why]);
    }
    let (code, err) = overlayd(
        &ns,
        &[
            "--underlay",
            "bare0",
            "--node-name",
            "n",
            "--run-dir",
            rd,
            "--vtep-ip",
            "198.18.0.9",
            "--vtep-ip",
            "198.18.0.10",
        ],
    );
    assert_eq!(code, 1);
    assert_one_line(&err, &["--vtep-ip given twice for IPv4"]);

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
