//! Pipeline throughput: alarms from intake to the offer decision (dedup,
//! merge check, lane admission, incident, match, claim, events), in memory
//! with no journal, on a city of 100,000 caregivers (30% busy), from two
//! ingest threads. Each measured batch is followed, outside the timing, by
//! cancelling its incidents so the caregivers it claimed are free again and
//! every batch meets the same city. A second id runs the same while another
//! thread moves caregivers continuously.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dispatch_core::{Alarm, AlarmKind, Dispatcher, ElderId, IdempotencyKey, IncidentId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CAREGIVERS: usize = 100_000;
const BATCH: usize = 4_000;
const THREADS: usize = 2;
/// Mix of a district: mostly urgent and routine, a share of critical (offered to two).
const KINDS: [AlarmKind; 6] = [
    AlarmKind::SosButton,
    AlarmKind::Inactivity,
    AlarmKind::Wandering,
    AlarmKind::AbnormalVitals,
    AlarmKind::LowBattery,
    AlarmKind::DeviceOffline,
];

fn alarms(seq: &AtomicU64, rng: &mut StdRng, n: usize) -> Vec<Alarm> {
    (0..n)
        .map(|_| {
            let k = seq.fetch_add(1, Ordering::Relaxed);
            Alarm {
                key: IdempotencyKey::parse("k", &format!("a{k}")).unwrap_or_else(|_| unreachable!()),
                elder: ElderId::parse("e", &format!("E{k}")).unwrap_or_else(|_| unreachable!()),
                device: None,
                kind: KINDS[rng.random_range(0..KINDS.len())],
                location: benches::random_point(rng),
                occurred_ms: 0,
                detail: String::new(),
            }
        })
        .collect()
}

/// Raises `batch` on `THREADS` threads; returns the time and the incidents.
fn raise_all(d: &Arc<Dispatcher>, batch: Vec<Alarm>) -> (Duration, Vec<IncidentId>) {
    let mut parts: Vec<Vec<Alarm>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, a) in batch.into_iter().enumerate() {
        parts[i % THREADS].push(a);
    }
    let t = Instant::now();
    let handles: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let d = d.clone();
            thread::spawn(move || {
                part.into_iter().filter_map(|a| d.raise(a).ok()).map(|o| o.incident.id).collect::<Vec<IncidentId>>()
            })
        })
        .collect();
    let ids: Vec<IncidentId> = handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    (t.elapsed(), ids)
}

fn run(c: &mut Criterion, moving: bool) {
    let mut group = c.benchmark_group("pipeline_throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    let d = benches::city(CAREGIVERS, 0.3, 1);
    let seq = AtomicU64::new(0);
    let mut rng = StdRng::seed_from_u64(4);
    let stop = Arc::new(AtomicBool::new(false));
    let mover = moving.then(|| {
        let (d, stop) = (d.clone(), stop.clone());
        thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(5);
            let ids: Vec<_> = (0..CAREGIVERS).map(benches::caregiver_id).collect();
            let started = Instant::now();
            let mut moves = 0u64;
            // Bounded: at most ten minutes even if the flag were lost.
            while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 600 {
                let i = rng.random_range(0..CAREGIVERS);
                let _ = d.update_location(&ids[i], benches::random_point(&mut rng), 0);
                moves += 1;
            }
            moves as f64 / started.elapsed().as_secs_f64()
        })
    });
    let id = if moving { "100k_caregivers_with_moves" } else { "100k_caregivers" };
    group.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = alarms(&seq, &mut rng, BATCH);
                let (t, ids) = raise_all(&d, batch);
                total += t;
                for id in ids {
                    let _ = d.cancel(id, "bench");
                }
                d.tick(); // drains deferred routine alarms, evicts nothing yet
            }
            // Per element: criterion divides by iters; the throughput line reports alarms/s.
            total
        })
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(Ok(rate)) = mover.map(|m| m.join()) {
        eprintln!("pipeline_throughput/{id}: {rate:.0} location updates/s during the run");
    }
    group.finish();
}

fn pipeline_throughput(c: &mut Criterion) {
    run(c, false);
    run(c, true);
}

criterion_group!(benches, pipeline_throughput);
criterion_main!(benches);
