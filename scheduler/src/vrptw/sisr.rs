//! One start of the solver: construction + local search, then SISR
//! (slack induction by string removals, Christiaens & Vanden Berghe 2020)
//! ruin-and-recreate with simulated-annealing acceptance; local search polishes
//! every new best solution.

use super::construct::{initial, insert_all};
use super::search::{local_search, Neighbours};
use super::state::State;
use super::{Instance, Solution, SolveOptions};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

const AVG_REMOVED: f64 = 10.0;
const MAX_STRING: f64 = 10.0;
const SPLIT_BETA: f64 = 0.01;
const BLINK: f64 = 0.01;
const T_START: f64 = 100.0;
const T_END: f64 = 1.0;
/// Recreate scans the routes of this many nearest customers.
const NEAR_ROUTES: usize = 40;

pub(crate) fn run(inst: &Instance, opts: &SolveOptions, seed: u64) -> Solution {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nb = Neighbours::new(inst, 20);
    let mut cur = initial(inst, &mut rng);
    local_search(&mut cur, &nb, &mut rng);
    let mut best = cur.clone();
    let limit = opts.time_limit.as_secs_f64();
    let mut it: u64 = 0;
    // Scale temperatures to the instance: SISR's 100 -> 1 was tuned for Solomon-like
    // coordinates; we keep it relative to the mean distance to the depot / 25.
    let n = inst.n_customers().max(1) as f64;
    let mean_depot = (1..inst.n_nodes()).map(|c| inst.d(0, c)).sum::<f64>() / n;
    let scale = (mean_depot / 25.0).max(1e-9);
    // Large instances get far fewer iterations per customer in the same time:
    // start colder (tuned on GH1000 at 60 s).
    let (t_start, t_end) = if n > 300.0 { (T_START / 10.0, T_END / 10.0) } else { (T_START, T_END) };
    let mut frac = 0.0;
    let mut cand = cur.clone();
    loop {
        if let Some(max) = opts.max_iterations {
            if it >= max {
                break;
            }
            frac = it as f64 / max as f64;
        } else if it.is_multiple_of(32) {
            let el = t0.elapsed().as_secs_f64();
            if el >= limit {
                break;
            }
            frac = el / limit;
        }
        it += 1;
        let temp = scale * t_start * (t_end / t_start).powf(frac);
        cand.clone_from(&cur);
        let removed = ruin(&mut cand, &nb, &mut rng);
        let removed = sort_removed(inst, removed, &mut rng);
        insert_all(&mut cand, &removed, BLINK, &mut rng, Some((&nb, NEAR_ROUTES)));
        let threshold = cur.cost() - temp * rng.random::<f64>().max(1e-300).ln();
        if cand.cost() < threshold {
            std::mem::swap(&mut cur, &mut cand);
            if cur.cost() < best.cost() - 1e-9 {
                local_search(&mut cur, &nb, &mut rng);
                best = cur.clone();
            }
        }
    }
    tracing::debug!(instance = %inst.name, seed, iterations = it, cost = best.cost(), "sisr finished");
    best.to_solution()
}

/// SISR ruin: removes strings (or split strings) from up to `k_s` routes
/// adjacent to a random seed customer. Returns the removed customers.
fn ruin(st: &mut State, nb: &Neighbours, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let inst = st.inst;
    let n_cust = inst.n_customers();
    if n_cust == 0 || st.routes.is_empty() {
        return Vec::new();
    }
    let avg_card = n_cust as f64 / st.routes.len() as f64;
    let ls_max = MAX_STRING.min(avg_card);
    let ks_max = 4.0 * AVG_REMOVED / (1.0 + ls_max) - 1.0;
    let ks = (rng.random::<f64>() * ks_max).floor() as usize + 1;
    let seed_c = rng.random_range(1..inst.n_nodes());
    let mut ruined: Vec<usize> = Vec::new();
    let mut remove: Vec<(usize, Vec<usize>)> = Vec::new(); // route, positions (customer indices)
    let mut removed = Vec::new();
    for &c in std::iter::once(&seed_c).chain(nb.sorted[seed_c].iter()) {
        if ruined.len() >= ks {
            break;
        }
        let r = st.route_of[c];
        if ruined.contains(&r) {
            continue;
        }
        let route = &st.routes[r];
        let len = route.len();
        let lmax = (len as f64).min(ls_max);
        let l = ((rng.random::<f64>() * lmax).floor() as usize + 1).min(len);
        let pc = st.pos_of[c] - 1; // customer index
        let mut idx: Vec<usize>;
        if l < len && rng.random::<f64>() < 0.5 {
            // split string: a string of l + m, keeping m consecutive customers
            let mut m = 1;
            while l + m < len && rng.random::<f64>() < SPLIT_BETA {
                m += 1;
            }
            let total = l + m;
            let lo = pc.saturating_sub(total - 1);
            let hi = pc.min(len - total);
            let start = rng.random_range(lo..=hi);
            let keep = rng.random_range(0..=l);
            idx = (start..start + total).filter(|&k| k < start + keep || k >= start + keep + m).collect();
        } else {
            let lo = pc.saturating_sub(l - 1);
            let hi = pc.min(len - l);
            let start = rng.random_range(lo..=hi);
            idx = (start..start + l).collect();
        }
        idx.sort_unstable();
        for &k in &idx {
            removed.push(route.nodes[k + 1]);
        }
        ruined.push(r);
        remove.push((r, idx));
    }
    // Apply removals from the highest route index down (set_route may swap_remove).
    remove.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (r, idx) in remove {
        let cs: Vec<usize> = st.routes[r]
            .customers()
            .iter()
            .enumerate()
            .filter(|(k, _)| idx.binary_search(k).is_err())
            .map(|(_, &c)| c)
            .collect();
        st.set_route(r, &cs);
    }
    removed
}

/// SISR sort of removed customers: random (4), demand (4), far (2), close (1).
fn sort_removed(inst: &Instance, mut v: Vec<usize>, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let w = rng.random_range(0..11);
    if w < 4 {
        v.shuffle(rng);
    } else if w < 8 {
        v.sort_by(|&a, &b| inst.demand[b].cmp(&inst.demand[a]).then(a.cmp(&b)));
    } else if w < 10 {
        v.sort_by(|&a, &b| inst.d(0, b).total_cmp(&inst.d(0, a)).then(a.cmp(&b)));
    } else {
        v.sort_by(|&a, &b| inst.d(0, a).total_cmp(&inst.d(0, b)).then(a.cmp(&b)));
    }
    v
}
