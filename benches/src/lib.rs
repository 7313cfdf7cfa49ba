//! Shared fixtures of the benchmarks: synthetic cities of caregivers.

use std::sync::Arc;

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

/// A dispatcher with `n` caregivers on duty, `busy` of them (a fraction) busy.
pub fn city(n: usize, busy: f64, seed: u64) -> Arc<Dispatcher> {
    city_with_journal(n, busy, seed, Arc::new(dispatch_core::NoJournal))
}

/// [`city`] writing its incident events to `journal`.
pub fn city_with_journal(n: usize, busy: f64, seed: u64, journal: Arc<dyn Journal>) -> Arc<Dispatcher> {
    let d = Arc::new(Dispatcher::new(
        Default::default(),
        journal,
        Arc::new(dispatch_core::NoSink),
        Arc::new(dispatch_core::SystemClock),
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let modes = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];
    for i in 0..n {
        let id = caregiver_id(i);
        let home = random_point(&mut rng);
        d.upsert_caregiver(CaregiverProfile { id: id.clone(), skills: vec![], home, mode: modes[i % 3] });
        let status = if rng.random_bool(busy) { CaregiverStatus::OnVisit } else { CaregiverStatus::Available };
        let _ = d.set_status(&id, status, None);
    }
    d
}
