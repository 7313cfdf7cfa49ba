//! Capacitated VRP with time windows (VRPLIB CVRPTW), the routing engine's
//! benchmark face. Exact Euclidean distances and times in double precision;
//! unlimited fleet; objective = total distance.
//!
//! Knows nothing about the monthly planner, files other than VRPLIB, or threads
//! beyond the optional rayon multi-start in [`solve`].
//!
//! Note on style rule 9 (integer time inside the search): the benchmark's
//! convention is exact double-precision Euclidean time, so this module searches
//! in `f64`; every route it returns is re-checked by [`feasibility::check`]
//! (tolerance [`feasibility::TOLERANCE`]) and the search itself is strict (no tolerance).

mod construct;
pub mod feasibility;
pub mod io;
mod ops;
mod search;
mod sisr;
mod state;

pub use feasibility::{check, FeasibilityReport, Violation, TOLERANCE};
pub use io::{format_solution, parse_instance, parse_solution, read_instance, read_solution, write_solution};

use std::time::Duration;

/// One CVRPTW instance. Node 0 is the depot; node `k >= 1` is customer `k`
/// (the numbering of VRPLIB `.sol` files).
#[derive(Debug, Clone)]
pub struct Instance {
    /// `NAME` field.
    pub name: String,
    /// Vehicle capacity.
    pub capacity: i64,
    /// `VEHICLES` field if present (informative only: the fleet is unlimited).
    pub vehicles: Option<usize>,
    /// Coordinates of every node.
    pub coords: Vec<(f64, f64)>,
    /// Demand of every node (depot 0).
    pub demand: Vec<i64>,
    /// Earliest service start of every node.
    pub ready: Vec<f64>,
    /// Latest service start of every node (for the depot: latest return).
    pub due: Vec<f64>,
    /// Service duration of every node.
    pub service: Vec<f64>,
    dist: Vec<f64>,
}

impl Instance {
    /// Builds an instance from its columns (one argument per VRPLIB section)
    /// and precomputes the distance matrix.
    #[allow(clippy::too_many_arguments)]
    /// Invariant (checked by the reader): all columns have the same length >= 1.
    pub fn new(
        name: String,
        capacity: i64,
        vehicles: Option<usize>,
        coords: Vec<(f64, f64)>,
        demand: Vec<i64>,
        ready: Vec<f64>,
        due: Vec<f64>,
        service: Vec<f64>,
    ) -> Self {
        let n = coords.len();
        debug_assert!(demand.len() == n && ready.len() == n && due.len() == n && service.len() == n);
        let mut dist = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                dist[i * n + j] = euclid(coords[i], coords[j]);
            }
        }
        Self { name, capacity, vehicles, coords, demand, ready, due, service, dist }
    }

    /// Number of nodes including the depot.
    pub fn n_nodes(&self) -> usize {
        self.coords.len()
    }

    /// Number of customers.
    pub fn n_customers(&self) -> usize {
        self.coords.len() - 1
    }

    /// Exact Euclidean distance (= travel time) between nodes `i` and `j`.
    #[inline]
    pub fn d(&self, i: usize, j: usize) -> f64 {
        self.dist[i * self.coords.len() + j]
    }
}

/// Exact Euclidean distance in double precision.
pub fn euclid(a: (f64, f64), b: (f64, f64)) -> f64 {
    let dx = a.0 - b.0;
    let dy = a.1 - b.1;
    (dx * dx + dy * dy).sqrt()
}

/// A set of routes; each route lists customers (1-based node numbers), the depot omitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Routes in order.
    pub routes: Vec<Vec<usize>>,
    /// Total distance as computed by the solver (or read from a `Cost` line).
    pub cost: f64,
}

impl Solution {
    /// Recomputes the total Euclidean distance of the routes.
    pub fn distance(&self, inst: &Instance) -> f64 {
        self.routes.iter().map(|r| route_distance(inst, r)).sum()
    }
}

/// Distance of one route (depot -> customers -> depot).
pub fn route_distance(inst: &Instance, route: &[usize]) -> f64 {
    if route.is_empty() {
        return 0.0;
    }
    let mut prev = 0;
    let mut total = 0.0;
    for &c in route {
        total += inst.d(prev, c);
        prev = c;
    }
    total + inst.d(prev, 0)
}

/// Options of [`solve`].
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// Wall-clock limit of the whole solve.
    pub time_limit: Duration,
    /// Seed of every random choice; thread `i` uses `seed + i`.
    pub seed: u64,
    /// Number of independent parallel starts (1 = deterministic single thread).
    pub threads: usize,
    /// Optional cap on ruin-and-recreate iterations per start (for
    /// deterministic, time-independent runs in tests); `None` = until the time limit.
    pub max_iterations: Option<u64>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self { time_limit: Duration::from_secs(10), seed: 1, threads: 1, max_iterations: None }
    }
}

/// Solves a CVRPTW instance: regret-insertion construction, granular local
/// search (relocate, swap, 2-opt*, or-opt, cross-exchange, intra 2-opt) and a
/// SISR ruin-and-recreate loop with simulated annealing. Minimises total
/// distance with an unlimited fleet. With `threads > 1`, runs starts with seeds
/// `seed..seed+threads` in parallel and returns the best (ties: lowest seed).
///
/// Returns an error only if some customer cannot be served even alone
/// (its window or the depot's close make it unreachable, or its demand exceeds capacity).
pub fn solve(inst: &Instance, opts: &SolveOptions) -> crate::Result<Solution> {
    for c in 1..inst.n_nodes() {
        if !construct::serviceable_alone(inst, c) {
            let reason = if inst.demand[c] > inst.capacity {
                "demand exceeds capacity"
            } else {
                "time window or depot close unreachable"
            };
            return Err(crate::Error::Unservable { customer: c, reason });
        }
    }
    let threads = opts.threads.max(1);
    let run = |i: usize| sisr::run(inst, opts, opts.seed.wrapping_add(i as u64));
    let best = if threads == 1 {
        run(0)
    } else {
        use rayon::prelude::*;
        let sols: Vec<Solution> = (0..threads).into_par_iter().map(run).collect();
        let mut best: Option<Solution> = None;
        for s in sols {
            if best.as_ref().is_none_or(|b| s.cost < b.cost) {
                best = Some(s);
            }
        }
        best.unwrap_or(Solution { routes: Vec::new(), cost: 0.0 })
    };
    debug_assert!(feasibility::check(inst, &best).is_ok(), "solver produced an infeasible solution");
    Ok(best)
}
