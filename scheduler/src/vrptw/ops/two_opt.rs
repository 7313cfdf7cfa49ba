//! Intra-route 2-opt: reverse the stretch after `u` up to `v` (same route),
//! creating the edge `(u, v)`.

use crate::vrptw::state::{concat_ok, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    r: usize,
    pu: usize,
    pv: usize,
}

pub(crate) fn evaluate(st: &State, u: usize, v: usize) -> Option<Move> {
    let inst = st.inst;
    let r = st.route_of[u];
    if r != st.route_of[v] {
        return None;
    }
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    if pu + 1 >= pv {
        return None;
    }
    let a = &st.routes[r];
    let (un, vn) = (a.nodes[pu + 1], a.nodes[pv + 1]);
    let delta = inst.d(u, v) + inst.d(un, vn) - inst.d(u, un) - inst.d(v, vn);
    if delta >= -1e-9 {
        return None;
    }
    if !concat_ok(inst, a, pu, a.nodes[pu + 1..=pv].iter().rev().copied(), a, pv + 1) {
        return None;
    }
    Some(Move { delta, r, pu, pv })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    let mut cs = st.routes[m.r].nodes.clone();
    cs[m.pu + 1..=m.pv].reverse();
    let n = cs.len();
    st.set_route(m.r, &cs[1..n - 1]);
}
