//! Matching: "k nearest available caregivers by travel time" on the grid index.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn match_nearest_available(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_nearest_available");
    for (n, id) in [(10_000, "10k_caregivers"), (100_000, "100k_caregivers")] {
        let d = benches::city(n, 0.3, 1);
        let mut rng = StdRng::seed_from_u64(2);
        let queries: Vec<_> = (0..4096).map(|_| benches::random_point(&mut rng)).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                std::hint::black_box(d.nearest_available(&queries[i], 1))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, match_nearest_available);
criterion_main!(benches);
