//! Construction: greedy cheapest insertion (with optional blinks) shared by the
//! initial solution and the recreate step of ruin-and-recreate.

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
pub(crate) fn insert_all(st: &mut State, todo: &[usize], blink: f64, rng: &mut ChaCha8Rng) {
    let inst = st.inst;
    for &c in todo {
        // An empty route is always available (unlimited fleet): it competes on cost.
        let alone = inst.d(0, c) + inst.d(c, 0);
        let mut best: Option<(f64, usize, usize)> = Some((alone, usize::MAX, 0));
        for (ri, r) in st.routes.iter().enumerate() {
            if r.total_load() + inst.demand[c] > inst.capacity {
                continue;
            }
            for k in 0..r.nodes.len() - 1 {
                let (x, y) = (r.nodes[k], r.nodes[k + 1]);
                let delta = inst.d(x, c) + inst.d(c, y) - inst.d(x, y);
                if best.is_some_and(|b| delta >= b.0) {
                    continue;
                }
                if blink > 0.0 && rng.random::<f64>() < blink {
                    continue;
                }
                if concat_ok(inst, r, k, [c], r, k + 1) {
                    best = Some((delta, ri, k));
                }
            }
        }
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

/// Initial solution: customers by decreasing distance from the depot, cheapest insertion.
pub(crate) fn initial<'a>(inst: &'a Instance, rng: &mut ChaCha8Rng) -> State<'a> {
    let mut st = State::empty(inst);
    let mut order: Vec<usize> = (1..inst.n_nodes()).collect();
    order.sort_by(|&a, &b| inst.d(0, b).total_cmp(&inst.d(0, a)).then(a.cmp(&b)));
    insert_all(&mut st, &order, 0.0, rng);
    st
}
