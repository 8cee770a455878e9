//! Named VIPs: a service added without `--vip` gets an address from its network's service
//! range, claimed in etcd in the service's own creation transaction: 200 services added at
//! once from two hosts get 200 distinct VIPs, and an allocated VIP carries traffic.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use overlay_tests::{
    lb::{self, spread, wait_table, Svc},
    services::tcp_identity_server,
};

const RANGE: &str = "198.19.240.0/24";

#[test]
fn services_without_a_vip_get_distinct_ones_from_the_range() {
    let mut t = lb::cluster(2, 3, &[]);
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        e
    };
    let add = ["service", "add", "web", "--network", "red", "--port", "80"];
    let e = err(t.overlayctl(0, &add));
    assert!(
        e.contains("no service range") && e.contains("network set red"),
        "{e}"
    );
    let e = err(t.overlayctl(
        0,
        &[
            "network",
            "set",
            "red",
            "--service-range",
            "198.19.1.128/25",
        ],
    ));
    assert!(e.contains("overlaps the subnet"), "{e}");
    t.overlayctl_ok(0, &["network", "set", "red", "--service-range", RANGE]);
    let net: serde_json::Value =
        serde_json::from_str(&t.overlayctl_ok(0, &["network", "inspect", "red", "-o", "json"]))
            .unwrap();
    assert_eq!(net["service_range"], RANGE);

    // An allocated VIP is a VIP like any other: connections to it reach the backend.
    t.add_pod(0, "a", "red");
    t.add_pod(1, "client", "red");
    for h in 0..2 {
        t.wait_converged(h);
    }
    let a = t.container("a").ip;
    let _server = tcp_identity_server(&t.container("a").ns, 8080, "a");
    let backend = format!("{a}:8080");
    let mut with_backend = add.to_vec();
    with_backend.extend(["--backend", &backend, "-o", "json"]);
    let web: serde_json::Value = serde_json::from_str(&t.overlayctl_ok(0, &with_backend)).unwrap();
    assert_eq!(web["allocated"], true, "{web}");
    let range: IpNet = RANGE.parse().unwrap();
    let vip: std::net::Ipv4Addr = web["vip"].as_str().unwrap().parse().unwrap();
    assert!(range.contains(&IpAddr::V4(vip)), "{vip}");
    for h in 0..2 {
        wait_table(&t, h, Svc::tcp(100, vip, 80), &[a]);
    }
    let counts = spread(&t, "client", std::net::SocketAddrV4::new(vip, 80), 20);
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");

    // 200 services at once, half from each host, 25 processes at a time per host.
    std::thread::scope(|s| {
        for host in 0..2 {
            let t = &t;
            s.spawn(move || {
                for wave in 0..4 {
                    let running: Vec<_> = (0..25)
                        .map(|i| {
                            let name = format!("s{host}-{}", wave * 25 + i);
                            let mut cmd = t.overlayctl_command(host);
                            cmd.args(["service", "add", &name, "--network", "red", "--port", "80"])
                                .stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::piped());
                            cmd.spawn().expect("overlayctl")
                        })
                        .collect();
                    for child in running {
                        let out = child.wait_with_output().unwrap();
                        assert!(
                            out.status.success(),
                            "{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            });
        }
    });
    let vips = |t: &overlay_tests::Topology| -> Vec<IpAddr> {
        let all: serde_json::Value =
            serde_json::from_str(&t.overlayctl_ok(0, &["service", "ls", "-o", "json"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .map(|s| s["vip"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let all = vips(&t);
    let distinct: BTreeSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(all.len(), 201);
    assert_eq!(distinct.len(), 201, "a VIP handed out twice");
    assert!(all.iter().all(|v| range.contains(v)));

    // The range has 254 addresses: 53 more fit, the next is refused with a way out, and a
    // removed service's address can be taken again.
    for i in 0..53 {
        let name = format!("more{i}");
        t.overlayctl_ok(
            0,
            &["service", "add", &name, "--network", "red", "--port", "80"],
        );
    }
    let e = err(t.overlayctl(
        0,
        &["service", "add", "full", "--network", "red", "--port", "80"],
    ));
    assert!(
        e.contains("no free VIP") && e.contains("--service-range"),
        "{e}"
    );
    t.overlayctl_ok(0, &["service", "rm", "s0-7"]);
    t.overlayctl_ok(
        0,
        &[
            "service",
            "add",
            "again",
            "--network",
            "red",
            "--port",
            "80",
        ],
    );
    assert_eq!(vips(&t).iter().collect::<BTreeSet<_>>().len(), 254);
}
