//! The daemon's userspace hot paths between etcd and the BPF maps: decoding a watch event into
//! the cluster view, turning it into endpoint-table writes (the delta pass), a full pass, and
//! the endpoint table's key/value encoding and diff. Tables are in memory (the same code the
//! kernel maps are written through, minus the syscalls).

use std::{hint::black_box, net::Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use overlay_daemon::{
    maps::{EndpointEntry, EndpointMaps, Location},
    reconcile::{NodeIdentity, Reconciler, Target},
    store::{
        client::{Change, Kv},
        ClusterView, Layout,
    },
    vtep::Vteps,
};

const NODES: usize = 100;

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 2)) + i as u32)
}

fn endpoint_kv(i: usize) -> Kv {
    let ip = ip(i);
    let o = ip.octets();
    Kv {
        key: format!("/overlay/v1/endpoints/scale/{ip}"),
        value: format!(
            r#"{{"version":1,"mac":"0a:58:{:02x}:{:02x}:{:02x}:{:02x}","node":"sim-{:03}","container_id":"sim-container-{i}","host_ifname":"ovl{i:08x}","ifname":"eth0"}}"#,
            o[0], o[1], o[2], o[3], 1 + i % (NODES - 1)
        )
        .into_bytes(),
        lease: 0,
    }
}

/// A view of a cluster with 100 nodes and `endpoints` endpoints, as node sim-000 sees it.
fn cluster(endpoints: usize) -> ClusterView {
    let mut kvs = vec![Kv {
        key: "/overlay/v1/networks/scale".into(),
        value: br#"{"version":1,"vni":4242,"subnet":"198.18.0.0/15"}"#.to_vec(),
        lease: 0,
    }];
    for n in 0..NODES {
        kvs.push(Kv {
            key: format!("/overlay/v1/nodes/sim-{n:03}"),
            value: format!(
                r#"{{"version":1,"vtep_ip":"198.18.{}.{}","vtep_mac":"02:00:00:00:00:01","registered_at":0}}"#,
                n / 250,
                1 + n % 250
            )
            .into_bytes(),
            lease: 1,
        });
    }
    kvs.extend((0..endpoints).map(endpoint_kv));
    let mut view = ClusterView::new(Layout::new("/overlay"));
    view.reset(kvs);
    view
}

fn me() -> NodeIdentity {
    NodeIdentity {
        name: "sim-000".into(),
        vteps: Vteps::v4("198.18.0.1".parse().unwrap()),
    }
}

/// Watch event → view → delta pass → table write, per event, in a cluster of n endpoints;
/// and the decoding into the view alone.
fn watch_event_to_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("watch_event_to_table");
    for n in [1_000usize, 100_000] {
        let mut view = cluster(n);
        let mut target = Target::Memory(Box::new(EndpointMaps::in_memory()));
        let mut reconciler = Reconciler::new(me());
        let tables = view.tables();
        let report = reconciler.full(&mut target, &tables, |_| Some(1)).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", &report.rejected[..1]);
        view.take_dirty();
        // Events alternate: add an endpoint, delete it again (the subnet is finite).
        let mut k = 0usize;
        let mut event = move || {
            let index = n + (k / 2) % 20_000;
            k += 1;
            if k % 2 == 1 {
                Change::Put(endpoint_kv(index))
            } else {
                Change::Delete(endpoint_kv(index).key)
            }
        };
        group.bench_function(BenchmarkId::new("endpoint_event_delta", n), |b| {
            b.iter(|| {
                view.apply(event());
                let dirty = view.take_dirty();
                let report = reconciler
                    .delta(&mut target, &view, &dirty, |_| Some(1))
                    .unwrap();
                black_box(report.expect("a remote endpoint event is a delta"))
            })
        });
        group.bench_function(BenchmarkId::new("decode_into_view", n), |b| {
            b.iter(|| {
                view.apply(event());
                black_box(view.take_dirty())
            })
        });
    }
    group.finish();
}

/// What a structural change (a node joining) costs: tables, validation, plan, diff.
fn full_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_pass");
    group.sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        let view = cluster(n);
        let mut target = Target::Memory(Box::new(EndpointMaps::in_memory()));
        let mut reconciler = Reconciler::new(me());
        reconciler
            .full(&mut target, &view.tables(), |_| Some(1))
            .unwrap();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let tables = view.tables();
                black_box(reconciler.full(&mut target, &tables, |_| Some(1)).unwrap())
            })
        });
    }
    group.finish();
}

/// The endpoint table itself: encoding keys and values and diffing against what is installed.
fn endpoint_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_table");
    let entries: Vec<EndpointEntry> = (0..100_000)
        .map(|i| EndpointEntry {
            ip6: None,
            vni: 4242,
            ip: Some(ip(i)),
            mac: [0x0a, 0x58, 0, 0, (i >> 8) as u8, i as u8],
            location: Location::Remote {
                vtep: Ipv4Addr::new(198, 18, 0, 2 + (i % 100) as u8).into(),
            },
        })
        .collect();
    let vtep = &Vteps::v4(Ipv4Addr::new(198, 18, 0, 1));
    group.sample_size(10);
    group.bench_function("sync_100k_into_empty", |b| {
        b.iter_batched(
            EndpointMaps::in_memory,
            |mut t| black_box(t.sync(&entries, vtep).unwrap()),
            BatchSize::LargeInput,
        )
    });
    let mut table = EndpointMaps::in_memory();
    table.sync(&entries, vtep).unwrap();
    group.bench_function("sync_100k_unchanged", |b| {
        b.iter(|| black_box(table.sync(&entries, vtep).unwrap()))
    });
    group.sample_size(100);
    let mut i = 0;
    group.bench_function("upsert_one", |b| {
        b.iter(|| {
            let mut e = entries[i % entries.len()];
            e.location = Location::Remote {
                vtep: Ipv4Addr::new(198, 18, 1, (i % 200) as u8).into(),
            };
            i += 1;
            black_box(table.upsert(&e, vtep).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, watch_event_to_table, full_pass, endpoint_table);
criterion_main!(benches);
