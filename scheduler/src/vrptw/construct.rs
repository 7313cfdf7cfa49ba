//! Construction: greedy cheapest insertion (with optional blinks) shared by the
//! initial solution and the recreate step of ruin-and-recreate.

use super::search::Neighbours;
use super::state::{concat_ok, State};
use super::Instance;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Can customer `c` be served by a vehicle doing only `c`?
pub(crate) fn serviceable_alone(inst: &Instance, c: usize) -> bool {
    let st = (inst.ready[0] + inst.service[0] + inst.d(0, c)).max(inst.ready[c]);
    inst.demand[c] <= inst.capacity && st <= inst.due[c] && st + inst.service[c] + inst.d(c, 0) <= inst.due[0]
}

/// Inserts every customer of `todo` (in that order) at its cheapest feasible
/// position, skipping each candidate position with probability `blink`;
/// opens a new route when none is feasible.
///
/// With `near = Some((neighbours, k))`, only routes holding one of the `k`
/// nearest customers of `c` are scanned (plus a new route).
pub(crate) fn insert_all(
    st: &mut State,
    todo: &[usize],
    blink: f64,
    rng: &mut ChaCha8Rng,
    near: Option<(&Neighbours, usize)>,
) {
    let inst = st.inst;
    let mut cand: Vec<usize> = Vec::new();
    for &c in todo {
        cand.clear();
        match near {
            Some((nb, k)) if st.routes.len() > 8 => {
                for &v in nb.sorted[c].iter().take(k) {
                    let r = st.route_of[v];
                    if r != usize::MAX && !cand.contains(&r) {
                        cand.push(r);
                    }
                }
            }
            _ => cand.extend(0..st.routes.len()),
        }
        // An empty route is always available (unlimited fleet): it competes on cost.
        let alone = inst.d(0, c) + inst.d(c, 0);
        let mut best: (f64, usize, usize) = (alone, usize::MAX, 0);
        let mut found = scan(st, c, &cand, blink, rng, &mut best);
        if !found && cand.len() < st.routes.len() {
            // No near route can take c: look at every other route before opening one.
            let rest: Vec<usize> = (0..st.routes.len()).filter(|r| !cand.contains(r)).collect();
            found = scan(st, c, &rest, blink, rng, &mut best);
        }
        let _ = found;
        let best = Some(best);
        match best {
            Some((_, ri, k)) if ri != usize::MAX => {
                let mut cs = st.routes[ri].customers().to_vec();
                cs.insert(k, c);
                st.set_route(ri, &cs);
            }
            _ => st.add_route(&[c]),
        }
    }
}

/// Scans the given routes for a cheaper feasible insertion of `c` than `best`;
/// returns whether any feasible position exists (even a dearer one).
fn scan(
    st: &State,
    c: usize,
    routes: &[usize],
    blink: f64,
    rng: &mut ChaCha8Rng,
    best: &mut (f64, usize, usize),
) -> bool {
    let inst = st.inst;
    let mut found = false;
    for &ri in routes {
        let r = &st.routes[ri];
        if r.total_load() + inst.demand[c] > inst.capacity {
            continue;
        }
        for k in 0..r.nodes.len() - 1 {
            let (x, y) = (r.nodes[k], r.nodes[k + 1]);
            let delta = inst.d(x, c) + inst.d(c, y) - inst.d(x, y);
            if found && delta >= best.0 {
                continue;
            }
            if blink > 0.0 && rng.random::<f64>() < blink {
                continue;
            }
            if concat_ok(inst, r, k, [c], r, k + 1) {
                found = true;
                if delta < best.0 {
                    *best = (delta, ri, k);
                }
            }
        }
    }
    found
}

/// Initial solution: customers by decreasing distance from the depot, cheapest insertion.
pub(crate) fn initial<'a>(inst: &'a Instance, rng: &mut ChaCha8Rng) -> State<'a> {
    let mut st = State::empty(inst);
    let mut order: Vec<usize> = (1..inst.n_nodes()).collect();
    order.sort_by(|&a, &b| inst.d(0, b).total_cmp(&inst.d(0, a)).then(a.cmp(&b)));
    insert_all(&mut st, &order, 0.0, rng, None);
    st
}
