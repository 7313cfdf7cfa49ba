//! Pipeline throughput: alarms from intake to the offer decision (dedup,
//! merge check, lane admission, incident, match, claim, events) on a city of
//! 100,000 caregivers (30% busy), from two ingest threads (kept for the run,
//! as the server keeps its stagers) taking alarms in as the server does:
//! chunks of `CHUNK` alarms (a stream's batch), each run handed to the
//! journal without waiting, so commits overlap staging. Each measured batch
//! is followed, outside the timing, by cancelling its incidents so the
//! caregivers it claimed are free again and every batch meets the same city.
//!
//! Ids: `100k_caregivers` (in memory, no journal); `100k_caregivers_with_moves`
//! (the same while another thread moves caregivers as fast as it can: about
//! ten moves per caregiver a second, a core's worth);
//! `100k_caregivers_with_moves_1hz` (the same with every caregiver moving
//! once a second, 100,000 location updates/s: a phone app reporting a GPS
//! fix every second, already more often than most do);
//! `100k_caregivers_durable` (the embedded store as journal: SQLite, WAL,
//! synchronous=FULL, group commit — every alarm durable before it is answered).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dispatch_core::{Alarm, Dispatcher, IncidentId, Intake, JournaledRun};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CAREGIVERS: usize = 100_000;
const BATCH: usize = 4_000;
const THREADS: usize = 2;
/// Alarms per `raise_batch` call.
const CHUNK: usize = 256;

/// `THREADS` ingest threads kept for the whole run, as the server keeps its
/// stagers (they used to be spawned per measured batch).
struct Ingest {
    parts: Vec<crossbeam::channel::Sender<Vec<Alarm>>>,
    done: crossbeam::channel::Receiver<Vec<IncidentId>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Ingest {
    fn start(d: &Arc<Dispatcher>) -> Self {
        let (done_tx, done) = crossbeam::channel::unbounded();
        let (mut parts, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..THREADS {
            let (tx, rx) = crossbeam::channel::bounded::<Vec<Alarm>>(1);
            let (d, done_tx) = (d.clone(), done_tx.clone());
            threads.push(thread::spawn(move || {
                for part in rx {
                    let _ = done_tx.send(take_in_pipelined(&d, part));
                }
            }));
            parts.push(tx);
        }
        Ingest { parts, done, threads }
    }

    /// Raises `batch` split over the threads; returns the time and the incidents.
    fn raise_all(&self, batch: Vec<Alarm>) -> (Duration, Vec<IncidentId>) {
        let mut parts: Vec<Vec<Alarm>> = (0..THREADS).map(|_| Vec::new()).collect();
        for (i, a) in batch.into_iter().enumerate() {
            parts[i % THREADS].push(a);
        }
        let t = Instant::now();
        for (tx, part) in self.parts.iter().zip(parts) {
            let _ = tx.send(part);
        }
        let ids: Vec<IncidentId> = (0..THREADS).filter_map(|_| self.done.recv().ok()).flatten().collect();
        (t.elapsed(), ids)
    }

    fn stop(self) {
        drop(self.parts);
        self.threads.into_iter().for_each(|t| {
            let _ = t.join();
        });
    }
}

/// Takes `alarms` in as the server does: in chunks of `CHUNK`, each run
/// staged and handed to the journal without waiting for its commit, so the
/// chunks' commits overlap with staging the next ones; a run is finished when
/// the journal reports it (here on this thread, in the server on the batch's
/// task), and its chunk's next run, if any, is staged then.
fn take_in_pipelined(d: &Dispatcher, alarms: Vec<Alarm>) -> Vec<IncidentId> {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, JournaledRun)>();
    let mut alarms = alarms.into_iter().peekable();
    let mut intakes: Vec<Intake> = Vec::new();
    while alarms.peek().is_some() {
        intakes.push(d.intake(alarms.by_ref().take(CHUNK).collect()));
    }
    // Stages chunk `i`'s next run, if any: how many runs that put in flight.
    let stage = |i: usize, intake: &mut Intake| match d.next_run(intake) {
        Some(run) => {
            let tx = done_tx.clone();
            d.journal_run(run, move |run| {
                let _ = tx.send((i, run));
            });
            1
        }
        None => 0,
    };
    let mut in_flight: usize = intakes.iter_mut().enumerate().map(|(i, intake)| stage(i, intake)).sum();
    // Every chunk is answered once none of its runs is in flight.
    while in_flight > 0 {
        let Ok((i, run)) = done_rx.recv() else { break };
        d.finish_run(&mut intakes[i], run);
        in_flight = in_flight - 1 + stage(i, &mut intakes[i]);
    }
    intakes.into_iter().flat_map(|intake| intake.into_answers()).filter_map(|o| o.ok()).map(|o| o.incident.id).collect()
}

/// Cancels `ids` from 32 threads (with a durable journal each cancel waits
/// for its commit; concurrent ones share it).
fn cancel_all(d: &Arc<Dispatcher>, ids: Vec<IncidentId>) {
    let ids = Arc::new(ids);
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (d, ids) = (d.clone(), ids.clone());
            thread::spawn(move || {
                for id in ids.iter().skip(w).step_by(32) {
                    let _ = d.cancel(*id, "bench");
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// How the caregivers move while alarms are taken in.
#[derive(Clone, Copy)]
enum Moves {
    None,
    /// As fast as one thread can.
    FlatOut,
    /// This many location updates a second, spread evenly.
    PerSecond(u64),
}

/// Measures `id` on `d`. `next` numbers the alarms (their keys and elders)
/// and goes on from one run to the next: runs on one dispatcher must not
/// reuse keys, or the later run measures retries answered as duplicates.
fn run(c: &mut Criterion, id: &str, d: Arc<Dispatcher>, moves: Moves, next: &mut u64) {
    let mut group = c.benchmark_group("pipeline_throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    let mut rng = StdRng::seed_from_u64(4);
    let stop = Arc::new(AtomicBool::new(false));
    let per_second = match moves {
        Moves::None | Moves::FlatOut => None,
        Moves::PerSecond(rate) => Some(rate),
    };
    let mover = (!matches!(moves, Moves::None)).then(|| {
        let d = d.clone();
        let ids: Vec<_> = (0..CAREGIVERS).map(benches::caregiver_id).collect();
        benches::mover(5, per_second, stop.clone(), move |rng| {
            let i = rng.random_range(0..CAREGIVERS);
            let _ = d.update_location(&ids[i], benches::random_point(rng), 0);
        })
    });
    let ingest = Ingest::start(&d);
    // Whether the command line kept this id (the mover runs either way).
    let mut measured = false;
    group.bench_function(BenchmarkId::from_parameter(id), |b| {
        measured = true;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = benches::alarms(&mut rng, *next, BATCH);
                *next += BATCH as u64;
                let (t, ids) = ingest.raise_all(batch);
                total += t;
                cancel_all(&d, ids);
                d.tick(); // drains deferred routine alarms, evicts nothing yet
            }
            // Per element: criterion divides by iters; the throughput line reports alarms/s.
            total
        })
    });
    ingest.stop();
    stop.store(true, Ordering::Relaxed);
    if let Some(Ok(rate)) = mover.map(|m| m.join()) {
        if measured {
            eprintln!("pipeline_throughput/{id}: {rate:.0} location updates/s during the run");
        }
    }
    group.finish();
}

fn pipeline_throughput(c: &mut Criterion) {
    let d = benches::city(CAREGIVERS, 0.3, 1);
    let mut next = 0;
    run(c, "100k_caregivers", d.clone(), Moves::None, &mut next);
    run(c, "100k_caregivers_with_moves", d.clone(), Moves::FlatOut, &mut next);
    run(c, "100k_caregivers_with_moves_1hz", d, Moves::PerSecond(CAREGIVERS as u64), &mut next);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let (store, writer, _) =
        server::store::Store::open(dir.path()).unwrap_or_else(|e| panic!("store in {}: {e}", dir.path().display()));
    let durable = benches::city_with_journal(CAREGIVERS, 0.3, 1, Arc::new(store));
    run(c, "100k_caregivers_durable", durable, Moves::None, &mut 0);
    writer.close();
}

criterion_group!(benches, pipeline_throughput);
criterion_main!(benches);
