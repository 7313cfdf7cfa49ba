//! The caregiver index under concurrent location updates: queries running
//! while other threads move caregivers never panic, and every answer satisfies
//! the filter; once the movers stop, answers are exact again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use dispatch_core::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N: usize = 3_000;

fn point(rng: &mut StdRng) -> GeoPoint {
    GeoPoint::new("p", rng.random_range(43.80..43.95), rng.random_range(125.25..125.45)).unwrap()
}

fn id(i: usize) -> CaregiverId {
    CaregiverId::parse("caregiver_id", &format!("C{i}")).unwrap()
}

#[test]
fn queries_stay_valid_while_caregivers_move() {
    let d = Arc::new(Dispatcher::new(
        DispatchConfig::default(),
        Arc::new(NoJournal),
        Arc::new(NoSink),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    ));
    let mut rng = StdRng::seed_from_u64(11);
    let modes = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];
    for i in 0..N {
        let home = point(&mut rng);
        d.upsert_caregiver(CaregiverProfile { id: id(i), skills: vec![], home, mode: modes[i % 3] });
        // Every fourth caregiver is on a visit for the whole test.
        let status = if i % 4 == 0 { CaregiverStatus::OnVisit } else { CaregiverStatus::Available };
        d.set_status(&id(i), status, None).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let movers: Vec<_> = (0..2)
        .map(|t| {
            let (d, stop) = (d.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + t);
                let mut moves = 0u64;
                // Bounded, so a lost stop flag cannot hang the test.
                while !stop.load(Ordering::Relaxed) && moves < 2_000_000 {
                    let i = rng.random_range(0..N);
                    d.update_location(&id(i), point(&mut rng), 1_700_000_000_000).unwrap();
                    moves += 1;
                }
                moves
            })
        })
        .collect();
    let travel = d.config().travel;
    let radius = d.config().max_radius_m;
    let queriers: Vec<_> = (0..2)
        .map(|t| {
            let d = d.clone();
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(200 + t);
                for _ in 0..3_000 {
                    let got = d.nearest_available(&point(&mut rng), 5);
                    assert_eq!(got.len(), 5, "thousands are free, none may go missing while moving");
                    for (n, c) in got.iter().enumerate() {
                        assert_eq!(c.slot.status(), CaregiverStatus::Available, "{} is not free", c.slot.id);
                        assert!(c.distance_m <= radius);
                        assert!((c.eta_s - travel.eta_s(c.distance_m, c.slot.profile().mode)).abs() < 1e-9);
                        assert!(got[..n].iter().all(|o| o.slot.id != c.slot.id), "{} twice", c.slot.id);
                        assert!(n == 0 || got[n - 1].eta_s <= c.eta_s, "not sorted");
                    }
                }
            })
        })
        .collect();
    for q in queriers {
        q.join().expect("a query thread panicked");
    }
    stop.store(true, Ordering::Relaxed);
    let moves: u64 = movers.into_iter().map(|m| m.join().expect("a mover thread panicked")).sum();
    assert!(moves > 0);

    // Quiescent again: the index holds each caregiver once and answers exactly.
    let q = GeoPoint::new("q", 43.88, 125.35).unwrap();
    let mut all: Vec<f64> = (0..N)
        .filter_map(|i| d.caregiver(&id(i)))
        .filter(|v| v.status == CaregiverStatus::Available)
        .map(|v| {
            let p = GeoPoint::new("p", v.position.0, v.position.1).unwrap();
            travel.eta_s(q.distance_m(&p), v.profile.mode)
        })
        .collect();
    all.sort_by(f64::total_cmp);
    let got: Vec<f64> = d.nearest_available(&q, 5).iter().map(|c| c.eta_s).collect();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&all) {
        assert!((g - w).abs() < 1e-6, "got {got:?}, want {:?}", &all[..5]);
    }
}
