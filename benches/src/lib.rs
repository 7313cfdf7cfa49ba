//! Shared fixtures of the benchmarks: synthetic cities of caregivers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The allocator `anxin` ships with (see `server/src/main.rs`), so the
/// benches measure the pipeline as deployed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use dispatch_core::{
    Alarm, AlarmKind, CaregiverId, CaregiverProfile, CaregiverStatus, Dispatcher, ElderId, GeoPoint, IdempotencyKey,
    Journal, TravelMode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A city of about 30 x 30 km around Changchun.
pub const CITY: ((f64, f64), (f64, f64)) = ((43.75, 44.02), (125.15, 125.55));

pub fn random_point(rng: &mut StdRng) -> GeoPoint {
    let ((la0, la1), (lo0, lo1)) = CITY;
    GeoPoint::new("p", rng.random_range(la0..la1), rng.random_range(lo0..lo1)).unwrap_or_else(|_| unreachable!())
}

/// The alarm mix of a district: mostly urgent and routine, a share of
/// critical (offered to two).
pub const ALARM_MIX: [AlarmKind; 6] = [
    AlarmKind::SosButton,
    AlarmKind::Inactivity,
    AlarmKind::Wandering,
    AlarmKind::AbnormalVitals,
    AlarmKind::LowBattery,
    AlarmKind::DeviceOffline,
];

/// Alarms `first`, `first + 1`, ... of a run, `n` of them (see [`alarm`]).
pub fn alarms(rng: &mut StdRng, first: u64, n: usize) -> Vec<Alarm> {
    (first..first + n as u64).map(|k| alarm(rng, k)).collect()
}

/// The `n`-th alarm of a run: its own key (`a{n}`) and elder (`E{n}`), a
/// kind of [`ALARM_MIX`] and a point of the city, both drawn from `rng`.
pub fn alarm(rng: &mut StdRng, n: u64) -> Alarm {
    Alarm {
        key: IdempotencyKey::parse("key", &format!("a{n}")).unwrap_or_else(|_| unreachable!()),
        elder: ElderId::parse("elder", &format!("E{n}")).unwrap_or_else(|_| unreachable!()),
        device: None,
        kind: ALARM_MIX[rng.random_range(0..ALARM_MIX.len())],
        location: random_point(rng),
        occurred_ms: 0,
        detail: String::new(),
        required_skill: None,
    }
}

/// The id of the `i`-th caregiver of [`city`].
pub fn caregiver_id(i: usize) -> CaregiverId {
    CaregiverId::parse("id", &format!("C{i}")).unwrap_or_else(|_| unreachable!())
}

/// A dispatcher with `n` caregivers on duty, `busy` of them (a fraction)
/// busy, a third each on foot, by bike and by car.
pub fn city(n: usize, busy: f64, seed: u64) -> Arc<Dispatcher> {
    city_with_journal(n, busy, seed, Arc::new(dispatch_core::NoJournal))
}

/// [`city`] writing its incident events to `journal`.
pub fn city_with_journal(n: usize, busy: f64, seed: u64, journal: Arc<dyn Journal>) -> Arc<Dispatcher> {
    city_of_modes(n, busy, seed, &[TravelMode::Walk, TravelMode::Bike, TravelMode::Car], journal)
}

/// [`city`] with caregiver `i` travelling by `modes[i % modes.len()]`.
pub fn city_of_modes(
    n: usize,
    busy: f64,
    seed: u64,
    modes: &[TravelMode],
    journal: Arc<dyn Journal>,
) -> Arc<Dispatcher> {
    let d = Arc::new(Dispatcher::new(
        Default::default(),
        journal,
        Arc::new(dispatch_core::NoSink),
        Arc::new(dispatch_core::SystemClock),
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        let id = caregiver_id(i);
        let home = random_point(&mut rng);
        d.upsert_caregiver(CaregiverProfile { id: id.clone(), skills: vec![], home, mode: modes[i % modes.len()] });
        let status = if rng.random_bool(busy) { CaregiverStatus::OnVisit } else { CaregiverStatus::Available };
        let _ = d.set_status(&id, status, None);
    }
    d
}

/// A step of a moving caregiver from `(lat, lon)`: a jump of up to about
/// 500 m, kept inside [`CITY`].
pub fn step_from(rng: &mut StdRng, (lat, lon): (f64, f64)) -> GeoPoint {
    let ((la0, la1), (lo0, lo1)) = CITY;
    GeoPoint::new(
        "p",
        (lat + rng.random_range(-0.0045..0.0045)).clamp(la0, la1),
        (lon + rng.random_range(-0.006..0.006)).clamp(lo0, lo1),
    )
    .unwrap_or_else(|_| unreachable!())
}

/// Moves one of `ids` (drawn from `rng`) on `d` a [`step_from`] its position.
pub fn step_one(d: &Dispatcher, ids: &[CaregiverId], rng: &mut StdRng) {
    let i = rng.random_range(0..ids.len());
    let from = d.caregiver(&ids[i]).map_or((43.88, 125.35), |v| v.position);
    let _ = d.update_location(&ids[i], step_from(rng, from), 0);
}

/// Runs `step` on a thread of its own until `stop` is set: as fast as it
/// can, or `per_second` times a second spread evenly (a millisecond's share,
/// then a wait for the next). Bounded: it ends after ten minutes even if the
/// flag were lost. The thread returns the steps it made per second.
pub fn mover<F>(seed: u64, per_second: Option<u64>, stop: Arc<AtomicBool>, mut step: F) -> thread::JoinHandle<f64>
where
    F: FnMut(&mut StdRng) + Send + 'static,
{
    thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let mut steps = 0u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs() < 600 {
            if let Some(rate) = per_second {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                if steps >= due {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            step(&mut rng);
            steps += 1;
        }
        steps as f64 / started.elapsed().as_secs_f64()
    })
}
