//! The etcd client's own guarantees against a real three-member cluster, with a proxy in
//! front of one member that forwards requests but can swallow the answers: a write whose
//! answer is lost is retried on another member and reported done, applied once; an equal
//! value that somebody else wrote is still refused.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use overlay_daemon::store::{EtcdConfig, Store};
use overlay_tests::{Netns, Topology, TopologySpec};

/// Copies `from` to `to` until either side closes; drops what it reads while `swallow` is on.
fn pipe(mut from: TcpStream, mut to: TcpStream, swallow: Option<Arc<AtomicBool>>) {
    let _ = from.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if swallow.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A TCP proxy on `listen` to `upstream`, in the calling thread's namespace; while
/// `swallow` is on, what the upstream answers never reaches the client.
fn proxy(
    listener: TcpListener,
    upstream: SocketAddr,
    swallow: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        client.set_nonblocking(false).expect("blocking connection");
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
            continue;
        };
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let swallow = swallow.clone();
        std::thread::spawn(move || pipe(client, server, None));
        std::thread::spawn(move || pipe(s2, c2, Some(swallow)));
    }
}

#[test]
fn a_write_whose_answer_is_lost_is_applied_once_and_reported_done() {
    let mut t = Topology::new(TopologySpec::new(1).with_etcd_cluster(5));
    let cluster = t.etcd_cluster.as_ref().unwrap();
    let ns = Netns::open(t.hosts[0].ns.name());
    let upstream: SocketAddr = cluster.members[0]
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let others: Vec<String> = cluster.members[1..].iter().map(|m| m.endpoint()).collect();
    let swallow = Arc::new(AtomicBool::new(false));
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let proxying = {
        let (swallow, stop) = (swallow.clone(), stop.clone());
        ns.spawn(move || proxy(listener, upstream, swallow, stop))
    };
    let cfg = EtcdConfig {
        // The proxied member first: the store starts on it.
        endpoints: [vec![format!("http://127.0.0.1:{port}")], others].concat(),
        ..EtcdConfig::local("/overlay")
    };
    let (lost, duplicate, took) = ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::connect(&cfg).await.unwrap();
            assert!(store
                .create("/overlay/v1/test/first", b"one".to_vec(), None)
                .await
                .unwrap());
            // The next request reaches etcd through the proxy; its answer does not come back.
            swallow.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let lost = store
                .create("/overlay/v1/test/k", b"mine".to_vec(), None)
                .await
                .unwrap();
            let took = started.elapsed();
            // The same value again, as another request: not this call's own write.
            let duplicate = store
                .create("/overlay/v1/test/k", b"mine".to_vec(), None)
                .await
                .unwrap();
            (lost, duplicate, took)
        })
    });
    stop.store(true, Ordering::Relaxed);
    proxying.join().expect("proxy");
    eprintln!("the write with its answer lost reported after {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "the proxied member was not used first ({took:?})"
    );
    assert!(
        lost,
        "a write applied through a member whose answer was lost reported as not done"
    );
    assert!(
        !duplicate,
        "another request with an equal value reported as done"
    );
    let cluster = t.etcd_cluster.as_mut().unwrap();
    let out = cluster.ctl_ok(&["get", "/overlay/v1/test/k", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kvs"].as_array().map(Vec::len), Some(1), "{v}");
}
