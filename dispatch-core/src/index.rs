//! Geospatial index of caregivers: a uniform lat/lon grid of about 1 km cells,
//! each cell a small vector of slots behind its own shard lock (dashmap). A
//! location update moves a slot between two cells; queries run concurrently
//! with updates and never wait for a rebuild.
//!
//! Queries scan rings of cells outward from the query point and stop as soon
//! as the nearest unscanned ring cannot beat the k-th best travel time found.

use std::sync::atomic::Ordering;

use dashmap::DashMap;

use crate::geo::{GeoPoint, TravelModel, EARTH_RADIUS_KM};
use crate::roster::{SlotRef, SHARED_BIT};
use crate::types::{CaregiverId, CaregiverStatus};

/// Cell edge in degrees (about 1.1 km of latitude, 0.8 km of longitude at 44°N).
const CELL_DEG: f64 = 0.01;
const METRES_PER_DEG: f64 = EARTH_RADIUS_KM * 1000.0 * std::f64::consts::PI / 180.0;

type CellKey = (i32, i32);

fn cell_of(lat: f64, lon: f64) -> CellKey {
    ((lat / CELL_DEG).floor() as i32, (lon / CELL_DEG).floor() as i32)
}

fn pack_cell(c: CellKey) -> u64 {
    (c.0 as u32 as u64) << 32 | c.1 as u32 as u64
}

/// What a candidate must satisfy.
#[derive(Debug, Default, Clone)]
pub struct MatchFilter<'a> {
    /// Required skill: its bit mask and its name (to confirm a shared bit).
    pub skill: Option<(u64, &'a str)>,
    /// Caregivers that already declined or let the offer expire.
    pub exclude: &'a [CaregiverId],
    /// Also consider caregivers on a scheduled visit (pre-emption for critical alarms).
    pub allow_on_visit: bool,
    /// Search radius, metres.
    pub max_radius_m: f64,
}

/// A caregiver found by a query, with its estimated travel time.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub slot: SlotRef,
    pub eta_s: f64,
    pub distance_m: f64,
}

#[derive(Debug, Default)]
pub struct GridIndex {
    cells: DashMap<CellKey, Vec<SlotRef>>,
}

impl GridIndex {
    /// Files `slot` under the cell of its current position, moving it if needed.
    pub fn upsert(&self, slot: &SlotRef) {
        let (lat, lon) = slot.position();
        let key = cell_of(lat, lon);
        let packed = pack_cell(key);
        let old = slot.cell.swap(packed, Ordering::AcqRel);
        if old == packed {
            return;
        }
        if old != u64::MAX {
            let old_key = ((old >> 32) as u32 as i32, old as u32 as i32);
            if let Some(mut v) = self.cells.get_mut(&old_key) {
                if let Some(i) = v.iter().position(|s| std::sync::Arc::ptr_eq(s, slot)) {
                    v.swap_remove(i);
                }
            }
        }
        self.cells.entry(key).or_default().push(slot.clone());
    }

    /// Up to `k` free caregivers nearest to `at` by estimated travel time,
    /// best first.
    pub fn nearest(&self, at: &GeoPoint, k: usize, filter: &MatchFilter<'_>, model: &TravelModel) -> Vec<Candidate> {
        let mut best: Vec<Candidate> = Vec::with_capacity(k + 1);
        if k == 0 {
            return best;
        }
        let (ci, cj) = cell_of(at.lat(), at.lon());
        let max_speed = model.max_speed_mps();
        // Smallest extent of a cell in metres around the query latitude.
        let lat_extent = CELL_DEG * METRES_PER_DEG;
        let cos_at = |lat: f64| lat.abs().min(89.9).to_radians().cos();
        let mut ring: i32 = 0;
        loop {
            // Every point in ring r is at least (r - 1) cell extents away.
            let reach_lat = at.lat().abs() + (ring as f64 + 1.0) * CELL_DEG;
            let min_extent = 0.99 * lat_extent.min(lat_extent * cos_at(reach_lat));
            let ring_min_m = (ring as f64 - 1.0).max(0.0) * min_extent;
            if ring_min_m > filter.max_radius_m {
                break;
            }
            if best.len() == k {
                let worst = best[k - 1].eta_s;
                if ring_min_m * model.detour_factor / max_speed > worst {
                    break;
                }
            }
            self.scan_ring(ci, cj, ring, |slot| consider(slot, at, k, filter, model, &mut best));
            ring += 1;
            if ring > 20_000 {
                break;
            }
        }
        best
    }

    fn scan_ring(&self, ci: i32, cj: i32, r: i32, mut f: impl FnMut(&SlotRef)) {
        let mut visit = |i: i32, j: i32| {
            if let Some(v) = self.cells.get(&(i, j)) {
                v.iter().for_each(&mut f);
            }
        };
        if r == 0 {
            visit(ci, cj);
            return;
        }
        for j in (cj - r)..=(cj + r) {
            visit(ci - r, j);
            visit(ci + r, j);
        }
        for i in (ci - r + 1)..=(ci + r - 1) {
            visit(i, cj - r);
            visit(i, cj + r);
        }
    }

    pub fn len(&self) -> usize {
        self.cells.iter().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn consider(
    slot: &SlotRef,
    at: &GeoPoint,
    k: usize,
    filter: &MatchFilter<'_>,
    model: &TravelModel,
    best: &mut Vec<Candidate>,
) {
    match slot.status() {
        CaregiverStatus::Available => {}
        CaregiverStatus::OnVisit if filter.allow_on_visit => {}
        _ => return,
    }
    if let Some((mask, name)) = filter.skill {
        if slot.skills_mask() & mask != mask || (mask == SHARED_BIT && !slot.has_skill(name)) {
            return;
        }
    }
    if filter.exclude.iter().any(|c| *c == slot.id) {
        return;
    }
    let (lat, lon) = slot.position();
    let Ok(p) = GeoPoint::new("position", lat, lon) else { return };
    let distance_m = at.distance_m(&p);
    if distance_m > filter.max_radius_m {
        return;
    }
    let eta_s = model.eta_s(distance_m, slot.mode());
    if best.len() == k && eta_s >= best[k - 1].eta_s {
        return;
    }
    if best.iter().any(|c| std::sync::Arc::ptr_eq(&c.slot, slot)) {
        return; // seen twice while it moved between cells
    }
    let pos = best.partition_point(|c| c.eta_s <= eta_s);
    best.insert(pos, Candidate { slot: slot.clone(), eta_s, distance_m });
    best.truncate(k);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::geo::TravelMode;
    use crate::roster::{CaregiverProfile, CaregiverSlot};

    fn slot(i: usize, lat: f64, lon: f64, mode: TravelMode) -> SlotRef {
        let p = GeoPoint::new("p", lat, lon).unwrap();
        let s = Arc::new(CaregiverSlot::new(
            CaregiverProfile { id: CaregiverId::parse("id", &format!("C{i}")).unwrap(), skills: vec![], home: p, mode },
            0,
        ));
        s.set_duty(CaregiverStatus::Available).unwrap();
        s
    }

    /// The grid answer equals a brute-force scan on random cities, including
    /// after moves and with busy caregivers.
    #[test]
    fn nearest_matches_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let modes = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];
        let slots: Vec<SlotRef> = (0..2000)
            .map(|i| slot(i, 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3, modes[i % 3]))
            .collect();
        slots.iter().for_each(|s| grid.upsert(s));
        for (n, s) in slots.iter().enumerate() {
            if n % 3 == 0 {
                s.try_claim(crate::types::IncidentId(n as u64 + 1), false);
            }
            if n % 5 == 0 {
                let p =
                    GeoPoint::new("p", 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3).unwrap();
                s.set_position(&p, 1);
                grid.upsert(s);
            }
        }
        assert_eq!(grid.len(), 2000);
        let filter = MatchFilter { max_radius_m: 50_000.0, ..Default::default() };
        for _ in 0..200 {
            let q = GeoPoint::new("q", 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3).unwrap();
            let got: Vec<String> = grid.nearest(&q, 3, &filter, &model).iter().map(|c| c.slot.id.to_string()).collect();
            let mut all: Vec<(f64, String)> = slots
                .iter()
                .filter(|s| s.status() == CaregiverStatus::Available)
                .map(|s| {
                    let (lat, lon) = s.position();
                    let d = q.distance_m(&GeoPoint::new("p", lat, lon).unwrap());
                    (model.eta_s(d, s.mode()), s.id.to_string())
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<String> = all.into_iter().take(3).map(|x| x.1).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn respects_radius_exclusions_and_skills() {
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let near = slot(1, 43.880, 125.370, TravelMode::Walk);
        let far = slot(2, 43.980, 125.370, TravelMode::Walk);
        grid.upsert(&near);
        grid.upsert(&far);
        let q = GeoPoint::new("q", 43.881, 125.371).unwrap();
        let excl = [near.id.clone()];
        let f = MatchFilter { exclude: &excl, max_radius_m: 5_000.0, ..Default::default() };
        assert!(grid.nearest(&q, 2, &f, &model).is_empty(), "far one is 11 km away");
        let f = MatchFilter { exclude: &excl, max_radius_m: 50_000.0, ..Default::default() };
        assert_eq!(grid.nearest(&q, 2, &f, &model)[0].slot.id, far.id);
        let f = MatchFilter { skill: Some((1 << 3, "nurse")), max_radius_m: 50_000.0, ..Default::default() };
        assert!(grid.nearest(&q, 2, &f, &model).is_empty());
    }
}
