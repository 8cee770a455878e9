//! etcd with TLS between clients and members (and between members), client certificates
//! required (`--client-cert-auth`) and authentication on, with a role limited to the
//! overlay's prefix: the daemons, overlayctl, the CNI plugin and the Docker driver work as
//! the `overlay` user (by certificate or by password), and every misconfiguration fails
//! with one line that names what to fix. Certificates are made per run (rcgen).

use std::time::Duration;

use overlay_tests::{
    cni,
    docker::plugin_socket,
    etcd::{OVERLAY_USER, STRANGER_USER, USER_PASSWORD},
    traffic, workload, Netns, Topology, TopologySpec,
};

fn secure_cluster() -> Topology {
    Topology::new(
        TopologySpec::new(2)
            .network("red", 100, "198.19.1.0/24")
            .with_secure_etcd_cluster(5),
    )
}

/// The etcd flags for `cert` (a user's client certificate, or none), `ca`, and an optional
/// user and password.
fn flags(
    t: &Topology,
    ca: &std::path::Path,
    cert: Option<&str>,
    user: Option<(&str, &str)>,
) -> Vec<String> {
    let pki = t.pki.as_ref().unwrap();
    let mut f = vec![
        "--etcd-endpoints".to_owned(),
        t.etcd_endpoint(),
        "--etcd-cacert".to_owned(),
        ca.display().to_string(),
    ];
    if let Some(cn) = cert {
        let c = pki.client(cn);
        f.extend([
            "--etcd-cert".to_owned(),
            c.cert.display().to_string(),
            "--etcd-key".to_owned(),
            c.key.display().to_string(),
        ]);
    }
    if let Some((u, p)) = user {
        f.extend([
            "--etcd-user".to_owned(),
            u.to_owned(),
            "--etcd-password".to_owned(),
            p.to_owned(),
        ]);
    }
    f
}

/// overlayctl with `etcd` fails with exactly one line on stderr containing every `needle`.
fn refused(t: &Topology, etcd: &[String], what: &str, needles: &[&str]) {
    let out = t.overlayctl_with(0, etcd, &["network", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: overlayctl succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{what}: not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {err:?} does not mention {n:?}");
    }
    eprintln!("{what}: {}", err.trim());
}

#[test]
fn tls_client_certificates_and_roles_end_to_end() {
    let mut t = secure_cluster();
    let socket = plugin_socket(&t, 0);
    let ca = t.pki.as_ref().unwrap().ca();
    // Host 1 by its certificate (CN overlay); host 2 by password, with a certificate whose
    // CN has no access of its own.
    let by_password = flags(
        &t,
        &ca,
        Some(STRANGER_USER),
        Some((OVERLAY_USER, USER_PASSWORD)),
    );
    t.hosts[1].etcd_args = Some(by_password.clone());
    t.start_daemon(0, &["--docker-plugin", socket.to_str().unwrap()]);
    t.start_daemon(1, &[]);
    t.wait_registered(0);
    t.wait_registered(1);

    // Docker (CNM driver and IPAM) on host 1, the CNI plugin on host 2, reaching each other.
    let fe = workload::docker_and_cni(&t, 0, 1);
    let (web, ip, api) = (fe.web.to_string(), fe.cni_ip, fe.socket.clone());

    // overlayctl as the overlay user, by certificate (the topology's flags)...
    let eps = t.overlayctl_ok(0, &["endpoint", "ls", "-o", "json"]);
    assert!(eps.contains(&ip.to_string()) && eps.contains(&web), "{eps}");
    t.overlayctl_ok(
        0,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "101",
            "--subnet",
            "198.19.2.0/24",
        ],
    );
    // ... and by password.
    let out = t.overlayctl_with(0, &by_password, &["network", "rm", "blue"]);
    assert!(
        out.status.success(),
        "password auth: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every misconfiguration: one line naming the fix.
    let other_ca = t.pki.as_ref().unwrap().other_ca();
    refused(
        &t,
        &flags(&t, &other_ca, Some(OVERLAY_USER), None),
        "wrong CA",
        &["--etcd-cacert"],
    );
    refused(
        &t,
        &flags(&t, &ca, None, None),
        "no client certificate",
        &["--etcd-cert"],
    );
    refused(
        &t,
        &flags(&t, &ca, Some(OVERLAY_USER), Some((OVERLAY_USER, "wrong"))),
        "wrong password",
        &["authentication failed", "--etcd-password"],
    );
    refused(
        &t,
        &flags(&t, &ca, Some(STRANGER_USER), None),
        "role without access",
        &["permission denied", "/overlay/", "grant-permission"],
    );
    let plain: Vec<String> = t
        .etcd_args()
        .iter()
        .map(|a| a.replace("https://", "http://"))
        .collect();
    refused(
        &t,
        &plain[..2],
        "plain HTTP to a TLS member",
        &["unreachable", "connection lost"],
    );
    // TLS files with a plain URL: refused before anything is dialled.
    let mixed: Vec<String> = flags(&t, &ca, Some(OVERLAY_USER), None)
        .iter()
        .map(|a| a.replace("https://", "http://"))
        .collect();
    refused(&t, &mixed, "TLS files with http://", &["use https://"]);
    // A daemon with the wrong CA says so in its log, once, and does not register.
    let run_dir = t.dir.join("wrong-ca");
    let pins = t.extra_pins("wrong-ca");
    let (code, log) = t.run_extra_daemon_with(
        1,
        &flags(&t, &other_ca, Some(OVERLAY_USER), None),
        &[
            "--node-name",
            "wrong-ca",
            "--control-plane-only",
            "--vtep-ip",
            "198.18.0.99",
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--bpffs",
            pins.root().to_str().unwrap(),
        ],
        Duration::from_secs(4),
    );
    assert_eq!(code, None, "the daemon should keep retrying: {log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line, not {errors:#?}\n{log}");
    assert!(errors[0].contains("--etcd-cacert"), "{}", errors[0]);

    // A rolling restart of etcd: each member in turn, so in the end none knows the auth
    // token host 2's daemon got by password (simple tokens live in members' memory). It
    // authenticates again and goes on; neither daemon reports an error.
    for i in 0..3 {
        let cluster = t.etcd_cluster.as_mut().unwrap();
        cluster.members[i].pause();
        std::thread::sleep(Duration::from_secs(1));
        cluster.restart(i);
    }
    let ns2 = Netns::create(&format!("ovt{}-cni2", t.id));
    let id2 = format!("{}-cni2", t.id);
    let ip2 = cni::add(&api, "red", &id2, &ns2.path()).expect("CNI ADD after a rolling restart");
    assert!(
        traffic::ping(&ns2, web.parse::<std::net::IpAddr>().unwrap(), 3),
        "new container -> Docker"
    );
    for h in 0..2 {
        let log = t.daemon_log(h);
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", t.hosts[h].name);
    }
    let _ = ip2;

    cni::del(&api, "red", &id2, &ns2.path()).expect("CNI DEL");
    fe.remove();
}
