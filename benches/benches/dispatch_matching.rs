//! Matching: "k nearest available caregivers by travel time" on the grid index,
//! alone and while another thread moves caregivers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;

const SIZES: [(usize, &str); 2] = [(10_000, "10k_caregivers"), (100_000, "100k_caregivers")];

fn match_nearest_available(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_nearest_available");
    for (n, id) in SIZES {
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

/// The same queries while one other thread applies location updates as fast
/// as it can (each a jump of up to about 500 m), so the cost of concurrent
/// writers on readers shows. Updates per second are printed to stderr.
fn match_with_moves(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_with_moves");
    for (n, id) in SIZES {
        let d = benches::city(n, 0.3, 1);
        let mut rng = StdRng::seed_from_u64(2);
        let queries: Vec<_> = (0..4096).map(|_| benches::random_point(&mut rng)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mover = {
            let d = d.clone();
            let ids: Vec<_> = (0..n).map(benches::caregiver_id).collect();
            benches::mover(3, None, stop.clone(), move |rng| benches::step_one(&d, &ids, rng))
        };
        let mut i = 0;
        let mut measured = false;
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            measured = true;
            b.iter(|| {
                i = (i + 1) % queries.len();
                std::hint::black_box(d.nearest_available(&queries[i], 1))
            })
        });
        stop.store(true, Ordering::Relaxed);
        if let (Ok(rate), true) = (mover.join(), measured) {
            eprintln!("match_with_moves/{id}: {rate:.0} location updates/s during the run");
        }
    }
    group.finish();
}

criterion_group!(benches, match_nearest_available, match_with_moves);
criterion_main!(benches);
