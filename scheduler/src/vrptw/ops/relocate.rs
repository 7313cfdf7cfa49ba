//! Relocate: move customer `u` next to its neighbour `v` (after or before it),
//! in the same or another route.

use crate::vrptw::state::{concat_ok, simulate, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    ra: usize,
    new_a: Vec<usize>,
    rb: usize,
    new_b: Vec<usize>,
}

/// Evaluates moving `u` right after `v` (`before == false`) or right before `v`.
pub(crate) fn evaluate(st: &State, u: usize, v: usize, before: bool) -> Option<Move> {
    let inst = st.inst;
    let (ra, rb) = (st.route_of[u], st.route_of[v]);
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    let a = &st.routes[ra];
    let b = &st.routes[rb];
    // insertion edge (x, y) in route b
    let (ix, iy) = if before { (pv - 1, pv) } else { (pv, pv + 1) };
    let (x, y) = (b.nodes[ix], b.nodes[iy]);
    if x == u || y == u {
        return None;
    }
    let (p, n) = (a.nodes[pu - 1], a.nodes[pu + 1]);
    let delta = inst.d(p, n) - inst.d(p, u) - inst.d(u, n) + inst.d(x, u) + inst.d(u, y) - inst.d(x, y);
    if delta >= -1e-9 {
        return None;
    }
    if ra == rb {
        let mut cs: Vec<usize> = a.customers().iter().copied().filter(|&c| c != u).collect();
        let at = cs.iter().position(|&c| c == v)?;
        cs.insert(if before { at } else { at + 1 }, u);
        simulate(inst, &cs)?;
        return Some(Move { delta, ra, new_a: cs, rb, new_b: Vec::new() });
    }
    if b.total_load() + inst.demand[u] > inst.capacity {
        return None;
    }
    if !concat_ok(inst, a, pu - 1, std::iter::empty(), a, pu + 1) || !concat_ok(inst, b, ix, [u], b, iy) {
        return None;
    }
    let new_a: Vec<usize> = a.customers().iter().copied().filter(|&c| c != u).collect();
    let mut new_b = b.customers().to_vec();
    new_b.insert(ix, u); // customers index of position iy is iy-1 == ix
    Some(Move { delta, ra, new_a, rb, new_b })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    if m.ra == m.rb {
        st.set_route(m.ra, &m.new_a);
    } else {
        st.set_two(m.ra, m.new_a, m.rb, m.new_b);
    }
}
