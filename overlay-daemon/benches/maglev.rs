//! Maglev table builds (the daemon's work when a service's backends change), by table size
//! and backend count, with and without weights.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use overlay_daemon::maglev::{build, Weighted};

fn backends(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("198.19.{}.{}:8080", i / 250, 2 + i % 250))
        .collect()
}

fn maglev(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(20);
    for (m, n) in [
        (65537u32, 3usize),
        (65537, 10),
        (65537, 100),
        (65537, 1000),
        (16381, 100),
    ] {
        let names = backends(n);
        let equal: Vec<Weighted<'_>> = names
            .iter()
            .map(|s| Weighted {
                name: s.as_bytes(),
                weight: 1,
            })
            .collect();
        group.bench_with_input(BenchmarkId::new(format!("m{m}"), n), &equal, |b, w| {
            b.iter(|| build(w, m))
        });
        let weighted: Vec<Weighted<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, s)| Weighted {
                name: s.as_bytes(),
                weight: 1 + (i % 3) as u32,
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::new(format!("m{m}-weighted"), n),
            &weighted,
            |b, w| b.iter(|| build(w, m)),
        );
    }
    group.finish();
}

criterion_group!(benches, maglev);
criterion_main!(benches);
