//! Synthetic districts, feasible by construction: every elder is attached to
//! a caregiver and its visits are appended to that caregiver's day routes
//! while they fit; windows, days and skills are then drawn to contain that
//! witness schedule, which is returned as a valid [`Plan`]. For tests,
//! benchmarks and the demo.

use super::calendar::{min_gap, Month};
use super::input::PlanInput;
use super::model::*;
use super::output::Plan;
use super::routes::{Ctx, Month as Routes};
use super::travel::{Haversine, TravelModel};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A generated instance with its witness plan (100% coverage).
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// The instance (month 2026-12, holiday 2026-12-25: 22 Mon-Fri working days).
    pub input: PlanInput,
    /// A valid plan covering every elder under [`Haversine::default`].
    pub witness: Plan,
}

const KM_PER_DEG: f64 = 111.195;

fn offset(c: GeoPoint, r_km: f64, rng: &mut ChaCha8Rng) -> GeoPoint {
    let r = r_km * rng.random::<f64>().sqrt();
    let a = rng.random::<f64>() * std::f64::consts::TAU;
    GeoPoint {
        lat: c.lat + r * a.sin() / KM_PER_DEG,
        lon: c.lon + r * a.cos() / (KM_PER_DEG * c.lat.to_radians().cos()),
    }
}

/// Generates `n_elders` elders and `n_caregivers` caregivers around `centre`.
/// Deterministic in `seed`. Requires `n_caregivers >= 1`.
pub fn generate(seed: u64, n_elders: usize, n_caregivers: usize, centre: GeoPoint) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let month = Month { year: 2026, month: 12 };
    let holidays = vec![25];
    let travel = Haversine::default();
    let n_cg = n_caregivers.max(1);
    let radius = 1.0 + (n_cg as f64).sqrt() * 0.8;
    let mut caregivers = Vec::with_capacity(n_cg);
    for i in 0..n_cg {
        let mode = match rng.random_range(0..10) {
            0..=6 => Mode::Bike,
            7..=8 => Mode::Walk,
            _ => Mode::Car,
        };
        let mut skills = Vec::new();
        if rng.random_bool(0.4) {
            skills.push("nursing".to_string());
        }
        if rng.random_bool(0.2) {
            skills.push("dementia".to_string());
        }
        let shift = if rng.random_bool(0.8) {
            TimeWindow { open: 8 * 3600 + 1800, close: 17 * 3600 + 1800 }
        } else {
            TimeWindow { open: 8 * 3600, close: 16 * 3600 }
        };
        let days = if rng.random_bool(0.85) { Weekdays(0b0011111) } else { Weekdays(0b0111111) };
        caregivers.push(Caregiver {
            id: CaregiverId(format!("C{:03}", i + 1)),
            name: format!("护理员{}", i + 1),
            base: offset(centre, radius, &mut rng),
            days,
            shift,
            max_visits_per_day: rng.random_range(7..=9),
            skills,
            mode,
        });
    }
    let days_in = month.days();
    let works = |c: &Caregiver, d: u32| c.days.contains(month.weekday(d)) && !holidays.contains(&d);
    // witness[c][d] = stops (elder, start) ; end[c][d] = (time free, location)
    let mut routes: Vec<Vec<Vec<(usize, Secs)>>> = vec![vec![Vec::new(); days_in as usize + 1]; n_cg];
    let mut elders: Vec<Elder> = Vec::with_capacity(n_elders);
    let cats = [
        Category::EmptyNest,
        Category::LivingAlone,
        Category::LeftBehind,
        Category::Disabled,
        Category::SpecialFamily,
        Category::Other,
    ];
    let mut e = 0;
    let mut attempts = 0;
    while elders.len() < n_elders && attempts < n_elders * 50 {
        attempts += 1;
        let c = (e + attempts) % n_cg;
        let cg = &caregivers[c];
        let r_km = match cg.mode {
            Mode::Walk => 0.6,
            Mode::Bike => 1.5,
            Mode::Car => 3.0,
        };
        let at = offset(cg.base, r_km, &mut rng);
        let mut v: u32 = match rng.random_range(0..20) {
            0..=7 => 1,
            8..=13 => 2,
            14..=16 => 3,
            _ => 4,
        };
        let service: Secs = rng.random_range(4..=12) * 5 * 60;
        let mut chosen: Option<Vec<(u32, Secs)>> = None;
        while v >= 1 && chosen.is_none() {
            let gap = min_gap(days_in, v);
            let fits = |d: u32| -> Option<Secs> {
                if !works(cg, d) {
                    return None;
                }
                let r = &routes[c][d as usize];
                if r.len() as u32 + 1 >= cg.max_visits_per_day {
                    return None; // keep one slot of slack
                }
                let (free, from) = match r.last() {
                    Some(&(pe, ps)) => (ps + elders[pe].service, elders[pe].at),
                    None => (cg.shift.open, cg.base),
                };
                let st = free + travel.seconds(cg.mode, from, at);
                let back = st + service + travel.seconds(cg.mode, at, cg.base);
                (back + 1800 <= cg.shift.close).then_some(st)
            };
            for _try in 0..8 {
                let mut picks = Vec::new();
                let mut d = rng.random_range(1..=days_in.min(gap.max(1) + 3));
                while picks.len() < v as usize && d <= days_in {
                    if let Some(st) = fits(d) {
                        picks.push((d, st));
                        d += gap.max(1) + rng.random_range(0..=1);
                    } else {
                        d += 1;
                    }
                }
                if picks.len() == v as usize {
                    chosen = Some(picks);
                    break;
                }
            }
            if chosen.is_none() {
                v -= 1;
            }
        }
        let Some(picks) = chosen else { continue };
        e += 1;
        let idx = elders.len();
        for &(d, st) in &picks {
            routes[c][d as usize].push((idx, st));
        }
        let min_st = picks.iter().map(|p| p.1).min().unwrap_or(cg.shift.open);
        let max_end = picks.iter().map(|p| p.1).max().unwrap_or(cg.shift.open) + service;
        let window = if rng.random_bool(0.4) {
            let open = ((min_st - 3600).max(0) / 900) * 900;
            let close = (((max_end + 3600) + 899) / 900 * 900).min(86_400);
            Some(TimeWindow { open, close })
        } else {
            None
        };
        let days = match rng.random_range(0..10) {
            0..=4 => Weekdays::ALL,
            5..=7 => {
                let mut w = Weekdays(0b0011111).0;
                for &(d, _) in &picks {
                    w |= 1 << month.weekday(d);
                }
                Weekdays(w)
            }
            _ => {
                let mut w = 1u8 << rng.random_range(0..5);
                for &(d, _) in &picks {
                    w |= 1 << month.weekday(d);
                }
                Weekdays(w)
            }
        };
        let skill =
            if !cg.skills.is_empty() && rng.random_bool(0.3) { cg.skills.choose(&mut rng).cloned() } else { None };
        let preferred = rng.random_bool(0.2).then(|| cg.id.clone());
        let mut categories = vec![*cats.choose(&mut rng).unwrap_or(&Category::Other)];
        if rng.random_bool(0.3) {
            let more = *cats.choose(&mut rng).unwrap_or(&Category::Other);
            if !categories.contains(&more) {
                categories.push(more);
            }
        }
        elders.push(Elder {
            id: ElderId(format!("E{:05}", idx + 1)),
            name: format!("老人{}", idx + 1),
            at,
            categories,
            visits_per_month: picks.len() as u32,
            service,
            days,
            window,
            skill,
            preferred,
        });
    }
    let input = PlanInput { month, holidays, elders, caregivers };
    let ctx = Ctx::new(&input, &travel);
    let mut m = Routes::new(&ctx);
    for (c, per_day) in routes.iter().enumerate() {
        for (d, stops) in per_day.iter().enumerate() {
            let i = m.idx(c, d as u32);
            for &(e, _) in stops {
                m.routes[i].stops.push(e);
                m.visits[e].push((d as u32, c));
            }
            let ok = m.routes[i].recompute(&ctx, c);
            debug_assert!(ok, "synthetic witness route infeasible");
        }
    }
    let mut witness = super::output::to_plan(&ctx, &m);
    witness.stats.solve_seconds = 0.0;
    Synthetic { input, witness }
}

/// [`generate`] around Hangzhou's West Lake, a convenient default centre.
pub fn default_centre() -> GeoPoint {
    GeoPoint { lat: 30.2590, lon: 120.1300 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_is_valid_and_complete() {
        for seed in 0..4 {
            let s = generate(seed, 60, 3, default_centre());
            assert_eq!(s.input.elders.len(), 60);
            let bad = super::super::feasibility::validate(&s.input, &Haversine::default(), &s.witness);
            assert!(bad.is_empty(), "seed {seed}: {bad:?}");
            assert_eq!(s.witness.coverage.rate, 1.0);
        }
    }
}
