//! The floor of intake on this index: what one thread needs per alarm for
//! only the work no intake can skip, on the city of
//! `pipeline_throughput/100k_caregivers` (100,000 caregivers, 30% busy, the
//! same alarm mix). Each alarm goes through plain single-threaded hash maps
//! (its key inserted, its source looked up and inserted, an incident of the
//! real size inserted) and the real index (the nearest free caregiver, two
//! for a critical alarm, claimed), with no locks, events, timers, KPIs,
//! lanes or journal. Claims are released every 4,000 alarms, as the bench's
//! cancels do. Two cores can do at most twice the rate this prints, so it
//! bounds what `pipeline_throughput` could reach with any intake over this
//! index.
//!
//! Run: `cargo run --release -p benches --example intake_floor`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dispatch_core::{Alarm, AlarmKind, CaregiverSlot, ElderId, IdempotencyKey, Incident, IncidentId, Severity};
use rand::rngs::StdRng;
use rand::SeedableRng;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Alarms per round, and rounds (printed fastest first, with their median).
const ALARMS: usize = 400_000;
const ROUNDS: usize = 3;
/// Claims held before they are released.
const BATCH: usize = 4_000;

#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Maps and matching: the floor.
    All,
    /// Matching and claims only.
    Matching,
    /// Maps only.
    Maps,
}

fn main() {
    let d = benches::city(100_000, 0.3, 1);
    let mut rng = StdRng::seed_from_u64(4);
    // An incident as the dispatcher makes them, from a dispatcher of its own.
    let template = {
        let other = benches::city(10, 0.0, 9);
        other.raise(benches::alarm(&mut rng, 1)).unwrap_or_else(|e| panic!("template incident: {e}")).incident
    };
    let mut next = 2u64;
    for (part, name) in [(Part::All, "floor (maps + matching)"), (Part::Matching, "matching"), (Part::Maps, "maps")] {
        let mut ns: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let batch = benches::alarms(&mut rng, next, ALARMS);
                next += ALARMS as u64;
                round(&d, &template, &batch, part)
            })
            .collect();
        ns.sort_by(f64::total_cmp);
        let median = ns[ROUNDS / 2];
        println!("{name}: {median:.0} ns per alarm on one thread ({:.0} alarms/s); rounds {ns:.0?}", 1e9 / median);
    }
}

/// Nanoseconds per alarm for one pass of `alarms` through `part`.
fn round(d: &dispatch_core::Dispatcher, template: &Incident, alarms: &[Alarm], part: Part) -> f64 {
    let mut keys: Map<IdempotencyKey, IncidentId> = Map::default();
    let mut sources: Map<(ElderId, AlarmKind), IncidentId> = Map::default();
    let mut incidents: Map<IncidentId, Incident> = Map::default();
    let mut claims = Vec::with_capacity(2 * BATCH);
    let started = Instant::now();
    for (n, a) in alarms.iter().enumerate() {
        let id = IncidentId(n as u64 + 1);
        if part != Part::Matching
            && (keys.insert(a.key.clone(), id).is_some() || sources.contains_key(&(a.elder.clone(), a.kind)))
        {
            continue;
        }
        let mut assigned = None;
        if part != Part::Maps {
            let critical = a.kind.severity() == Severity::Critical;
            for c in d.nearest_available(&a.location, 1 + usize::from(critical)) {
                if c.slot.try_claim(id, false) {
                    assigned.get_or_insert_with(|| c.slot.id.clone());
                    claims.push((c.slot, id));
                }
            }
        }
        if part != Part::Matching {
            let mut inc = template.clone();
            (inc.id, inc.key, inc.elder, inc.kind, inc.location, inc.assigned) =
                (id, a.key.clone(), a.elder.clone(), a.kind, a.location, assigned);
            sources.insert((a.elder.clone(), a.kind), id);
            incidents.insert(id, inc);
        }
        if n % BATCH == BATCH - 1 {
            release(&mut claims);
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / alarms.len() as f64;
    release(&mut claims);
    ns
}

/// Releases every claim in `claims`.
fn release(claims: &mut Vec<(Arc<CaregiverSlot>, IncidentId)>) {
    for (slot, id) in claims.drain(..) {
        slot.release(id, false);
    }
}
