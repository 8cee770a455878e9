//! A thousand services on a three-node cluster, every VIP answering from every node, and the
//! one capacity limit that remains (the shared Maglev table) refused when the service is
//! added, not found later by a node.

use std::net::{Ipv4Addr, SocketAddrV4};

use overlay_common::lb::{maglev_size_for, MAGLEV_SLOTS};
use overlay_tests::{
    lb,
    services::{tcp_ask, tcp_identity_server},
};

const SERVICES: u32 = 1000;

/// The VIP of service `i`: 198.19.252.1 onwards.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 252, 1)) + i)
}

#[test]
fn a_thousand_services_answer_on_every_node_and_capacity_is_refused_at_add_time() {
    let mut t = lb::cluster(3, 5, &[]);
    for h in 0..3 {
        t.add_pod(h, &format!("b{h}"), "red");
        t.add_pod(h, &format!("c{h}"), "red");
    }
    for h in 0..3 {
        t.wait_converged(h);
    }
    let backends: Vec<Ipv4Addr> = (0..3).map(|h| t.container(&format!("b{h}")).ip).collect();
    let _servers: Vec<_> = (0..3)
        .map(|h| {
            let name = format!("b{h}");
            tcp_identity_server(&t.container(&name).ns, 8080, &name)
        })
        .collect();

    // Service i: VIP i port 80 over backend i % 3. Added by four overlayctl at a time.
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..4u32 {
            let (t, backends) = (&t, &backends);
            scope.spawn(move || {
                for i in (worker..SERVICES).step_by(4) {
                    let (name, vip) = (format!("s{i}"), format!("{}:80", vip(i)));
                    let backend = format!("{}:8080", backends[(i % 3) as usize]);
                    t.overlayctl_ok(
                        (i % 3) as usize,
                        &[
                            "service",
                            "add",
                            &name,
                            "--network",
                            "red",
                            "--vip",
                            &vip,
                            "--backend",
                            &backend,
                        ],
                    );
                }
            });
        }
    });
    eprintln!("{SERVICES} services added in {:?}", started.elapsed());
    for h in 0..3 {
        t.wait_status(h, "every service installed", |s| s["services"] == SERVICES);
    }
    eprintln!(
        "installed on every node {:?} after the first add",
        started.elapsed()
    );

    // From a client on each node, every VIP answers, from the backend it was given.
    for h in 0..3 {
        let client = format!("c{h}");
        let result = t
            .container(&client)
            .ns
            .spawn(move || -> Result<(), String> {
                for i in 0..SERVICES {
                    let addr = SocketAddrV4::new(vip(i), 80);
                    let name =
                        tcp_ask(addr, &format!("s{i}")).map_err(|e| format!("{addr}: {e}"))?;
                    if name != format!("b{}", i % 3) {
                        return Err(format!("{addr} answered as {name}, not b{}", i % 3));
                    }
                }
                Ok(())
            });
        result
            .join()
            .expect("client")
            .unwrap_or_else(|e| panic!("from {client}: {e}\n{:?}", t.counters(h)));
    }

    // The shared Maglev table: services of 656+ backends take 65537 slots each; those that
    // fit beside the thousand are accepted, the next is refused at add time, in one line.
    let big = maglev_size_for(656);
    assert_eq!(big, 65537);
    let used = SERVICES * maglev_size_for(1);
    let fit = (MAGLEV_SLOTS - used) / big;
    let many: Vec<String> = (0..656)
        .map(|p| format!("{}:{}", backends[0], 10_000 + p))
        .collect();
    let add_big = |i: u32| {
        let (name, vip) = (format!("big{i}"), format!("198.19.251.{}:80", i + 1));
        let mut args = vec!["service", "add", &name, "--network", "red", "--vip", &vip];
        for b in &many {
            args.extend(["--backend", b.as_str()]);
        }
        t.overlayctl(0, &args)
    };
    for i in 0..fit {
        let out = add_big(i);
        assert!(
            out.status.success(),
            "big service {i} of {fit} that fit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = add_big(fit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "service {fit} past the capacity accepted"
    );
    assert!(
        err.contains("no room for the service's 65537-slot Maglev table"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    eprintln!(
        "{fit} services of 656 backends fit beside {SERVICES}; the next: {}",
        err.trim()
    );

    // Every node installed all it was given and rejected nothing.
    let total = SERVICES + fit;
    for h in 0..3 {
        t.wait_status(h, "the big services installed", |s| {
            s["services"] == total && s["rejected"].as_array().is_some_and(|r| r.is_empty())
        });
    }
    // And the thousand still answer beside them.
    let result = t.container("c0").ns.spawn(move || -> Result<(), String> {
        for i in (0..SERVICES).step_by(10) {
            let addr = SocketAddrV4::new(vip(i), 80);
            tcp_ask(addr, "again").map_err(|e| format!("{addr} after the big ones: {e}"))?;
        }
        Ok(())
    });
    result
        .join()
        .expect("client")
        .unwrap_or_else(|e| panic!("{e}"));
}
