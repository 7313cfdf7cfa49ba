//! Local-search driver: owns the solution, walks a granular neighbourhood
//! (each customer's `k` nearest customers) and applies the first improving
//! move of any operator until none improves.

use super::ops::{cross_exchange, or_opt, relocate, swap, two_opt, two_opt_star};
use super::state::State;
use super::Instance;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Granular neighbourhood: for each node, the other customers by increasing distance.
pub(crate) struct Neighbours {
    pub sorted: Vec<Vec<usize>>,
    pub granular: usize,
}

impl Neighbours {
    pub fn new(inst: &Instance, granular: usize) -> Self {
        let n = inst.n_nodes();
        let mut sorted = vec![Vec::new(); n];
        for (i, row) in sorted.iter_mut().enumerate() {
            let mut v: Vec<usize> = (1..n).filter(|&j| j != i).collect();
            v.sort_by(|&a, &b| inst.d(i, a).total_cmp(&inst.d(i, b)).then(a.cmp(&b)));
            *row = v;
        }
        Neighbours { sorted, granular: granular.min(n.saturating_sub(2)).max(1) }
    }
}

/// Runs local search to a local optimum. Deterministic given the RNG state.
pub(crate) fn local_search(st: &mut State, nb: &Neighbours, rng: &mut ChaCha8Rng) {
    let n = st.inst.n_nodes();
    let mut order: Vec<usize> = (1..n).collect();
    let mut improved = true;
    let mut rounds = 0;
    while improved && rounds < 1000 {
        improved = false;
        rounds += 1;
        order.shuffle(rng);
        for &u in &order {
            for k in 0..nb.granular {
                let v = nb.sorted[u][k];
                if try_pair(st, u, v) {
                    improved = true;
                }
            }
        }
    }
}

/// Applies a move and checks (debug builds) that the cost changed by its delta
/// and that the touched solution is still feasible per the independent checker.
macro_rules! take {
    ($st:expr, $op:ident, $m:expr) => {{
        let m = $m;
        let expect = $st.cost() + m.delta;
        $op::apply($st, m);
        debug_assert!(($st.cost() - expect).abs() < 1e-6, "{} delta mismatch", stringify!($op));
        #[cfg(debug_assertions)]
        if let Err(v) = super::feasibility::check_routes($st.inst, $st.routes.iter().map(|r| r.customers())) {
            panic!("{} produced an infeasible route: {v:?}", stringify!($op));
        }
        return true;
    }};
}

/// Tries every operator on the pair (u, v); applies the first improving move.
fn try_pair(st: &mut State, u: usize, v: usize) -> bool {
    if let Some(m) = relocate::evaluate(st, u, v, false) {
        take!(st, relocate, m);
    }
    if let Some(m) = relocate::evaluate(st, u, v, true) {
        take!(st, relocate, m);
    }
    if let Some(m) = swap::evaluate(st, u, v) {
        take!(st, swap, m);
    }
    if let Some(m) = two_opt_star::evaluate(st, u, v) {
        take!(st, two_opt_star, m);
    }
    if let Some(m) = two_opt::evaluate(st, u, v) {
        take!(st, two_opt, m);
    }
    for len in 2..=3 {
        if let Some(m) = or_opt::evaluate(st, u, v, len) {
            take!(st, or_opt, m);
        }
    }
    for (la, lb) in [(1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (2, 3), (3, 2), (3, 3)] {
        if let Some(m) = cross_exchange::evaluate(st, u, v, la, lb) {
            take!(st, cross_exchange, m);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrptw::{feasibility, Instance};
    use rand::{Rng, SeedableRng};

    fn random_instance(seed: u64, n: usize) -> Instance {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut coords = vec![(50.0, 50.0)];
        let mut demand = vec![0];
        let mut ready = vec![0.0];
        let mut due = vec![1000.0];
        let mut service = vec![0.0];
        for _ in 0..n {
            let c = (rng.random_range(0.0..100.0), rng.random_range(0.0..100.0));
            coords.push(c);
            demand.push(rng.random_range(1..20));
            let a: f64 = rng.random_range(0.0..700.0f64).max(super::super::euclid((50.0, 50.0), c));
            ready.push(a);
            due.push(a + rng.random_range(30.0..200.0));
            service.push(10.0);
        }
        Instance::new("r".into(), 100, None, coords, demand, ready, due, service)
    }

    #[test]
    fn local_search_keeps_feasibility_and_never_worsens() {
        for seed in 0..5 {
            let inst = random_instance(seed, 40);
            let mut st = State::empty(&inst);
            for c in 1..inst.n_nodes() {
                st.add_route(&[c]);
            }
            let before = st.cost();
            let nb = Neighbours::new(&inst, 15);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            local_search(&mut st, &nb, &mut rng);
            let sol = st.to_solution();
            let rep = feasibility::check(&inst, &sol).expect("feasible after local search");
            assert!((rep.distance - st.cost()).abs() < 1e-6);
            assert!(st.cost() < before, "local search found nothing on seed {seed}");
        }
    }
}
