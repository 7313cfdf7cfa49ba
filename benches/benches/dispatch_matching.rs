//! Matching: "k nearest available caregivers by travel time" on the grid index,
//! alone and while another thread moves caregivers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
            let (d, stop) = (d.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(3);
                let ids: Vec<_> = (0..n).map(benches::caregiver_id).collect();
                let started = std::time::Instant::now();
                let mut moves = 0u64;
                // Bounded: at most ten minutes' worth even if the flag were lost.
                while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 600 {
                    let i = rng.random_range(0..n);
                    let (lat, lon) = d.caregiver(&ids[i]).map_or((43.88, 125.35), |v| v.position);
                    let at = dispatch_core::GeoPoint::new(
                        "p",
                        (lat + rng.random_range(-0.0045..0.0045)).clamp(benches::CITY.0 .0, benches::CITY.0 .1),
                        (lon + rng.random_range(-0.006..0.006)).clamp(benches::CITY.1 .0, benches::CITY.1 .1),
                    );
                    if let Ok(at) = at {
                        let _ = d.update_location(&ids[i], at, 0);
                    }
                    moves += 1;
                }
                moves as f64 / started.elapsed().as_secs_f64()
            })
        };
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                std::hint::black_box(d.nearest_available(&queries[i], 1))
            })
        });
        stop.store(true, Ordering::Relaxed);
        if let Ok(rate) = mover.join() {
            eprintln!("match_with_moves/{id}: {rate:.0} location updates/s during the run");
        }
    }
    group.finish();
}

criterion_group!(benches, match_nearest_available, match_with_moves);
criterion_main!(benches);
