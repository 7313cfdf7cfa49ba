//! The choice of geospatial index (the issue's "grid, H3 cells or a k-d
//! tree; measure and choose"), measured on one city: 100,000 caregivers, 30%
//! busy, random query points, the nearest free caregiver (k = 1).
//!
//! - `anxin_grid`: the shipped `GridIndex` through `Dispatcher::nearest_available`
//!   (a third of the caregivers each on foot, by bike and by car, ranked by
//!   travel time; status read per candidate; lock-free reads).
//! - `kiddo_kdtree_per_mode`: the same question on k-d trees, one per mode,
//!   each behind a `parking_lot::RwLock` and holding only that mode's free
//!   caregivers (so a query needs no status filter; a claim or a release
//!   would be a removal or an insertion under the write lock): the nearest of
//!   each mode, the fastest of the three. Checked to agree with `anxin_grid`.
//! - The easier question, straight-line distance with one mode:
//!   `anxin_grid_one_mode` (the shipped index on a city where everyone
//!   drives), `kiddo_kdtree` (one k-d tree of all the free) and `rstar_rtree`
//!   (an R*-tree of all the free), locked as above. Positions are metres on a
//!   local plane.
//! - `plain_grid`: a single-threaded uniform grid (250 m cells, everyone filed,
//!   a status flag per caregiver), the reference point; it cannot take
//!   a move while it is read.
//! - `h3o_cell_and_ring`: only the cell arithmetic any H3 query starts with
//!   (the query's resolution-9 cell, about 0.1 km², and its first ring of
//!   seven cells), before a single caregiver is read.
//!
//! Ids ending `query_with_moves_1hz` run the same queries while another
//! thread moves every caregiver once a second (100,000 moves/s, paced, each
//! a step of up to about 500 m); `move` is one such move on the bench thread;
//! `claim_and_release` takes a free caregiver for an incident and gives it
//! back (a tree must drop it and file it again); `match_and_claim_two_threads`
//! finds and takes the fastest free caregiver from both cores at once,
//! giving claims back every 64, as the pipeline's two ingest threads match
//! (the time is wall time per attempt, so half the CPU time of one).
//! Before measuring, the distance indexes are checked to give the same
//! nearest caregiver for 2,000 queries, and the per-mode trees the same
//! travel time as `anxin_grid`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dispatch_core::{CaregiverStatus, GeoPoint, TravelMode, TravelModel};
use kiddo::SquaredEuclidean;
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rstar::primitives::GeomWithData;
use rstar::RTree;

const CAREGIVERS: usize = 100_000;
const MOVES_PER_S: u64 = CAREGIVERS as u64;
/// The plane's origin (the city's south-west corner) and metres per degree there.
const LAT0: f64 = benches::CITY.0 .0;
const LON0: f64 = benches::CITY.1 .0;
const M_PER_DEG_LAT: f64 = 111_132.0;
const PLAIN_CELL_M: f64 = 250.0;

fn m_per_deg_lon() -> f64 {
    111_320.0 * ((benches::CITY.0 .0 + benches::CITY.0 .1) / 2.0).to_radians().cos()
}

/// A point on the local plane, metres east and north of the origin.
fn xy(p: &GeoPoint) -> [f64; 2] {
    [(p.lon() - LON0) * m_per_deg_lon(), (p.lat() - LAT0) * M_PER_DEG_LAT]
}

type Free = GeomWithData<[f64; 2], u32>;
type KdTree = kiddo::KdTree<f64, 2>;
/// Moves caregiver `i` in a tree from one position to another.
type Refile<'a> = dyn Fn(usize, &[f64; 2], &[f64; 2]) + 'a;
/// The modes in the order of [`PerMode`]'s trees.
const MODES: [TravelMode; 3] = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];

/// The city as the alternatives see it: each caregiver's position on the
/// plane and whether it is free, read from the dispatcher.
struct Snapshot {
    at: Vec<[f64; 2]>,
    free: Vec<bool>,
    mode: Vec<TravelMode>,
}

impl Snapshot {
    fn of(d: &dispatch_core::Dispatcher) -> Self {
        let (mut at, mut free, mut mode) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..CAREGIVERS {
            let v = d.caregiver(&benches::caregiver_id(i)).unwrap_or_else(|| panic!("caregiver {i} of the city"));
            let p = GeoPoint::new("p", v.position.0, v.position.1).unwrap_or_else(|e| panic!("position of {i}: {e}"));
            at.push(xy(&p));
            free.push(v.status == CaregiverStatus::Available);
            mode.push(v.profile.mode);
        }
        Snapshot { at, free, mode }
    }

    fn free_ones(&self) -> impl Iterator<Item = (usize, [f64; 2])> + '_ {
        self.at.iter().enumerate().filter(|&(i, _)| self.free[i]).map(|(i, &p)| (i, p))
    }
}

/// One k-d tree of free caregivers per mode.
struct PerMode {
    trees: [RwLock<KdTree>; 3],
    travel: TravelModel,
}

impl PerMode {
    fn new(s: &Snapshot) -> Self {
        let trees = MODES.map(|m| {
            let mut t = KdTree::new();
            s.free_ones().filter(|&(i, _)| s.mode[i] == m).for_each(|(i, p)| t.add(&p, i as u64));
            RwLock::new(t)
        });
        PerMode { trees, travel: TravelModel::default() }
    }

    /// The tree of `mode`.
    fn tree(&self, mode: TravelMode) -> &RwLock<KdTree> {
        &self.trees[MODES.iter().position(|&m| m == mode).unwrap_or_else(|| unreachable!())]
    }

    /// The fastest free caregiver to `q`: (travel time in seconds, index).
    fn fastest(&self, q: &[f64; 2]) -> (f64, u64) {
        let mut best = (f64::INFINITY, u64::MAX);
        for (t, m) in self.trees.iter().zip(MODES) {
            let n = t.read().nearest_one::<SquaredEuclidean>(q);
            let eta = self.travel.eta_s(n.distance.sqrt(), m);
            if eta < best.0 {
                best = (eta, n.item);
            }
        }
        best
    }
}

/// The reference: a uniform grid over the city, single-threaded.
struct PlainGrid {
    cols: usize,
    rows: usize,
    cells: Vec<Vec<([f32; 2], u32)>>,
    free: Vec<bool>,
}

impl PlainGrid {
    fn new(s: &Snapshot) -> Self {
        let width = (benches::CITY.1 .1 - LON0) * m_per_deg_lon();
        let height = (benches::CITY.0 .1 - LAT0) * M_PER_DEG_LAT;
        let (cols, rows) = ((width / PLAIN_CELL_M) as usize + 1, (height / PLAIN_CELL_M) as usize + 1);
        let mut g = PlainGrid { cols, rows, cells: vec![Vec::new(); cols * rows], free: s.free.clone() };
        for (i, p) in s.at.iter().enumerate() {
            let (c, r) = g.cell(p);
            g.cells[r * cols + c].push(([p[0] as f32, p[1] as f32], i as u32));
        }
        g
    }

    fn cell(&self, p: &[f64; 2]) -> (usize, usize) {
        let c = ((p[0] / PLAIN_CELL_M).max(0.0) as usize).min(self.cols - 1);
        let r = ((p[1] / PLAIN_CELL_M).max(0.0) as usize).min(self.rows - 1);
        (c, r)
    }

    /// The nearest free caregiver: rings of cells outwards until no unread
    /// cell can hold anything nearer.
    fn nearest(&self, q: &[f64; 2]) -> Option<u32> {
        let (qc, qr) = self.cell(q);
        let (qx, qy) = (q[0] as f32, q[1] as f32);
        let mut best = (f32::INFINITY, None);
        for ring in 0..self.cols.max(self.rows) as isize {
            let reach = (ring - 1).max(0) as f32 * PLAIN_CELL_M as f32;
            if best.1.is_some() && best.0 <= reach * reach {
                break;
            }
            for dr in -ring..=ring {
                for dc in -ring..=ring {
                    if dr.abs() != ring && dc.abs() != ring {
                        continue;
                    }
                    let (r, c) = (qr as isize + dr, qc as isize + dc);
                    if r < 0 || c < 0 || r >= self.rows as isize || c >= self.cols as isize {
                        continue;
                    }
                    for &(p, id) in &self.cells[r as usize * self.cols + c as usize] {
                        let d2 = (p[0] - qx).powi(2) + (p[1] - qy).powi(2);
                        if d2 < best.0 && self.free[id as usize] {
                            best = (d2, Some(id));
                        }
                    }
                }
            }
        }
        best.1
    }
}

fn index_choice(c: &mut Criterion) {
    let d = benches::city(CAREGIVERS, 0.3, 1);
    let snapshot = Snapshot::of(&d);
    let mut rng = StdRng::seed_from_u64(2);
    let queries: Vec<GeoPoint> = (0..4096).map(|_| benches::random_point(&mut rng)).collect();
    let planar: Vec<[f64; 2]> = queries.iter().map(xy).collect();

    let rtree =
        Arc::new(RwLock::new(RTree::bulk_load(snapshot.free_ones().map(|(i, p)| Free::new(p, i as u32)).collect())));
    let kdtree = Arc::new(RwLock::new({
        let mut t = KdTree::with_capacity(CAREGIVERS);
        snapshot.free_ones().for_each(|(i, p)| t.add(&p, i as u64));
        t
    }));
    let per_mode = Arc::new(PerMode::new(&snapshot));
    let plain = PlainGrid::new(&snapshot);
    agree(&planar, &rtree.read(), &kdtree.read(), &plain, &snapshot);
    for (q, p) in queries.iter().zip(&planar).take(2000) {
        let grid = d.nearest_available(q, 1).first().map_or(f64::INFINITY, |c| c.eta_s);
        let (tree, i) = per_mode.fastest(p);
        // The plane and the sphere differ by a few parts in a thousand across the city.
        assert!(
            (grid - tree).abs() <= 0.005 * tree + 0.5,
            "anxin_grid {grid} s, per-mode k-d trees {tree} s (caregiver {i})"
        );
    }
    let drivers = benches::city_of_modes(CAREGIVERS, 0.3, 1, &[TravelMode::Car], Arc::new(dispatch_core::NoJournal));

    let mut group = c.benchmark_group("index_choice");
    let (mut i, n) = (0, queries.len());
    let mut next = move || {
        i = (i + 1) % n;
        i
    };

    // Queries alone.
    group.bench_function(BenchmarkId::new("anxin_grid", "query"), |b| {
        b.iter(|| black_box(d.nearest_available(&queries[next()], 1)))
    });
    group.bench_function(BenchmarkId::new("kiddo_kdtree_per_mode", "query"), |b| {
        b.iter(|| black_box(per_mode.fastest(&planar[next()])))
    });
    group.bench_function(BenchmarkId::new("anxin_grid_one_mode", "query"), |b| {
        b.iter(|| black_box(drivers.nearest_available(&queries[next()], 1)))
    });
    group.bench_function(BenchmarkId::new("rstar_rtree", "query"), |b| {
        b.iter(|| black_box(rtree.read().nearest_neighbor(&planar[next()]).map(|f| f.data)))
    });
    group.bench_function(BenchmarkId::new("kiddo_kdtree", "query"), |b| {
        b.iter(|| black_box(kdtree.read().nearest_one::<SquaredEuclidean>(&planar[next()]).item))
    });
    group.bench_function(BenchmarkId::new("plain_grid", "query"), |b| {
        b.iter(|| black_box(plain.nearest(&planar[next()])))
    });
    group.bench_function(BenchmarkId::new("h3o_cell_and_ring", "query"), |b| {
        b.iter(|| {
            let q = &queries[next()];
            let cell = h3o::LatLng::new(q.lat(), q.lon()).map(|p| p.to_cell(h3o::Resolution::Nine));
            black_box(cell.map(|c| c.grid_disk::<Vec<_>>(1)).ok())
        })
    });

    // A claim and its release: the shipped index's compare-and-swap of the
    // slot's status (the index is not written), against a removal and an
    // insertion under the write lock of the caregiver's tree.
    let claimable: Vec<(Arc<dispatch_core::CaregiverSlot>, usize)> = queries
        .iter()
        .zip(&planar)
        .filter_map(|(q, p)| {
            let slot = d.nearest_available(q, 1).pop()?.slot;
            Some((slot, per_mode.fastest(p).1 as usize))
        })
        .collect();
    let tree_of = |i: usize| per_mode.tree(snapshot.mode[i]);
    let mut n = 0u64;
    group.bench_function(BenchmarkId::new("anxin_grid", "claim_and_release"), |b| {
        b.iter(|| {
            n += 1;
            let (slot, _) = &claimable[n as usize % claimable.len()];
            let incident = dispatch_core::IncidentId(n);
            black_box(slot.try_claim(incident, false) && slot.release(incident, false))
        })
    });
    group.bench_function(BenchmarkId::new("kiddo_kdtree_per_mode", "claim_and_release"), |b| {
        b.iter(|| {
            n += 1;
            let (_, i) = claimable[n as usize % claimable.len()];
            // Two sections: the claim, and later the release.
            tree_of(i).write().remove(&snapshot.at[i], i as u64);
            tree_of(i).write().add(&snapshot.at[i], i as u64);
        })
    });

    // Both cores matching at once, as the pipeline's two ingest threads do.
    let incidents = AtomicU64::new(n + 1);
    two_threads(
        &mut group,
        "anxin_grid",
        |q| {
            let c = d.nearest_available(&queries[q], 1).pop()?;
            let incident = dispatch_core::IncidentId(incidents.fetch_add(1, Ordering::Relaxed));
            c.slot.try_claim(incident, false).then_some((c.slot, incident))
        },
        |(slot, incident)| {
            slot.release(incident, false);
        },
    );
    two_threads(
        &mut group,
        "kiddo_kdtree_per_mode",
        |q| {
            let (_, i) = per_mode.fastest(&planar[q]);
            let i = usize::try_from(i).ok().filter(|&i| i < CAREGIVERS)?;
            // Taken by the other thread since it was found: no removal.
            (tree_of(i).write().remove(&snapshot.at[i], i as u64) > 0).then_some(i)
        },
        |i| tree_of(i).write().add(&snapshot.at[i], i as u64),
    );

    // One move each, on the bench thread (a free caregiver stepping, as
    // most moves are: the trees hold only the free).
    let free: Vec<usize> = snapshot.free_ones().map(|(i, _)| i).collect();
    let ids: Arc<Vec<_>> = Arc::new((0..CAREGIVERS).map(benches::caregiver_id).collect());
    let mut rng = StdRng::seed_from_u64(6);
    let mut grid_at: Vec<(f64, f64)> = (0..CAREGIVERS).map(|i| planar_to_degrees(&snapshot.at[i])).collect();
    group.bench_function(BenchmarkId::new("anxin_grid", "move"), |b| {
        b.iter(|| {
            let i = free[rng.random_range(0..free.len())];
            let to = benches::step_from(&mut rng, grid_at[i]);
            grid_at[i] = (to.lat(), to.lon());
            black_box(d.update_location(&ids[i], to, 0))
        })
    });
    // Where each tree has each caregiver filed (a removal must name it).
    let (mut rtree_at, mut kdtree_at) = (snapshot.at.clone(), snapshot.at.clone());
    let mut tree_move = |name: &str, at: &mut [[f64; 2]], refile: &Refile<'_>| {
        group.bench_function(BenchmarkId::new(name, "move"), |b| {
            b.iter(|| {
                let i = free[rng.random_range(0..free.len())];
                let to = xy(&benches::step_from(&mut rng, planar_to_degrees(&at[i])));
                refile(i, &at[i], &to);
                at[i] = to;
            })
        });
    };
    tree_move("rstar_rtree", &mut rtree_at, &|i, from, to| refile_r(&rtree, i, from, to));
    tree_move("kiddo_kdtree", &mut kdtree_at, &|i, from, to| refile_kd(&kdtree, i, from, to));

    // Queries while every caregiver moves once a second.
    let with_moves = |group: &mut criterion::BenchmarkGroup<'_, WallTime>,
                      name: &str,
                      step: Box<dyn FnMut(&mut StdRng) + Send>,
                      query: &mut dyn FnMut()| {
        let stop = Arc::new(AtomicBool::new(false));
        let mover = benches::mover(7, Some(MOVES_PER_S), stop.clone(), step);
        let mut measured = false;
        group.bench_function(BenchmarkId::new(name, "query_with_moves_1hz"), |b| {
            measured = true;
            b.iter(&mut *query)
        });
        stop.store(true, Ordering::Relaxed);
        if let Ok(rate) = mover.join() {
            if measured {
                eprintln!("index_choice/{name}/query_with_moves_1hz: {rate:.0} moves/s during the run");
            }
        }
    };
    let (grid, ids) = (d.clone(), ids.clone());
    let step = Box::new(move |rng: &mut StdRng| benches::step_one(&grid, &ids, rng));
    with_moves(&mut group, "anxin_grid", step, &mut || {
        black_box(d.nearest_available(&queries[next()], 1));
    });
    let (trees, mode) = (per_mode.clone(), snapshot.mode.clone());
    let step = tree_step(snapshot.free.clone(), snapshot.at.clone(), move |i, from, to| {
        refile_kd(trees.tree(mode[i]), i, from, to)
    });
    with_moves(&mut group, "kiddo_kdtree_per_mode", step, &mut || {
        black_box(per_mode.fastest(&planar[next()]));
    });
    let t = rtree.clone();
    let step = tree_step(snapshot.free.clone(), rtree_at, move |i, from, to| refile_r(&t, i, from, to));
    with_moves(&mut group, "rstar_rtree", step, &mut || {
        black_box(rtree.read().nearest_neighbor(&planar[next()]).map(|f| f.data));
    });
    let t = kdtree.clone();
    let step = tree_step(snapshot.free.clone(), kdtree_at, move |i, from, to| refile_kd(&t, i, from, to));
    with_moves(&mut group, "kiddo_kdtree", step, &mut || {
        black_box(kdtree.read().nearest_one::<SquaredEuclidean>(&planar[next()]).item);
    });
    group.finish();
}

/// Claims held per thread before they are given back (as incidents end).
const HELD: usize = 64;

/// Measures `claim` (find the fastest free caregiver to query point `q` and
/// take it; `None` if another thread took it first) from two threads at
/// once: the wall time per claim attempt with both cores busy. Each thread
/// gives its claims back through `release` every [`HELD`] attempts.
fn two_threads<T, C, R>(group: &mut criterion::BenchmarkGroup<'_, WallTime>, name: &str, claim: C, release: R)
where
    T: Send,
    C: Fn(usize) -> Option<T> + Sync,
    R: Fn(T) + Sync,
{
    group.bench_function(BenchmarkId::new(name, "match_and_claim_two_threads"), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(2) as usize;
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (claim, release) = (&claim, &release);
                    s.spawn(move || {
                        let mut held = Vec::with_capacity(HELD);
                        for n in 0..per_thread {
                            held.extend(claim((t * 2048 + n) % 4096));
                            if n % HELD == HELD - 1 {
                                held.drain(..).for_each(release);
                            }
                        }
                        held.drain(..).for_each(release);
                    });
                }
            });
            started.elapsed()
        })
    });
}

/// Re-files caregiver `i` of a k-d tree from `from` to `to`.
fn refile_kd(t: &RwLock<KdTree>, i: usize, from: &[f64; 2], to: &[f64; 2]) {
    let mut t = t.write();
    t.remove(from, i as u64);
    t.add(to, i as u64);
}

/// Re-files caregiver `i` of an R*-tree from `from` to `to`.
fn refile_r(t: &RwLock<RTree<Free>>, i: usize, from: &[f64; 2], to: &[f64; 2]) {
    let mut t = t.write();
    let _ = t.remove(&Free::new(*from, i as u32));
    t.insert(Free::new(*to, i as u32));
}

/// A mover's step over a tree of the free: a random caregiver steps from
/// `at` (where the tree filed it), and `refile` moves it in the tree if it
/// is free (`free`; the busy are not in the tree).
fn tree_step<F>(free: Vec<bool>, mut at: Vec<[f64; 2]>, refile: F) -> Box<dyn FnMut(&mut StdRng) + Send>
where
    F: Fn(usize, &[f64; 2], &[f64; 2]) + Send + 'static,
{
    Box::new(move |rng: &mut StdRng| {
        let i = rng.random_range(0..at.len());
        let to = xy(&benches::step_from(rng, planar_to_degrees(&at[i])));
        if free[i] {
            refile(i, &at[i], &to);
        }
        at[i] = to;
    })
}

/// The inverse of [`xy`].
fn planar_to_degrees(p: &[f64; 2]) -> (f64, f64) {
    (LAT0 + p[1] / M_PER_DEG_LAT, LON0 + p[0] / m_per_deg_lon())
}

/// Panics unless the three distance indexes name the same nearest free
/// caregiver (or one at the same distance) for the first 2,000 queries.
fn agree(planar: &[[f64; 2]], rtree: &RTree<Free>, kdtree: &KdTree, plain: &PlainGrid, s: &Snapshot) {
    let dist = |q: &[f64; 2], i: usize| ((s.at[i][0] - q[0]).powi(2) + (s.at[i][1] - q[1]).powi(2)).sqrt();
    for q in planar.iter().take(2000) {
        let r = rtree.nearest_neighbor(q).map(|f| f.data as usize).unwrap_or_else(|| panic!("R-tree empty"));
        let k = kdtree.nearest_one::<SquaredEuclidean>(q).item as usize;
        let p = plain.nearest(q).map(|i| i as usize).unwrap_or_else(|| panic!("plain grid found none"));
        for (name, i) in [("kiddo", k), ("plain grid", p)] {
            // The plain grid compares in f32: a tie within centimetres may go either way.
            assert!(s.free[i], "{name} returned busy caregiver {i}");
            assert!(
                (dist(q, i) - dist(q, r)).abs() < 0.05,
                "{name} chose {i} at {} m, rstar {r} at {} m",
                dist(q, i),
                dist(q, r)
            );
        }
    }
}

criterion_group!(benches, index_choice);
criterion_main!(benches);
