//! Swap: exchange customers `u` and `v` of two different routes.

use crate::vrptw::state::{concat_ok, State};

#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub delta: f64,
    ra: usize,
    rb: usize,
    pu: usize,
    pv: usize,
    u: usize,
    v: usize,
}

pub(crate) fn evaluate(st: &State, u: usize, v: usize) -> Option<Move> {
    let inst = st.inst;
    let (ra, rb) = (st.route_of[u], st.route_of[v]);
    if ra == rb {
        return None;
    }
    let (pu, pv) = (st.pos_of[u], st.pos_of[v]);
    let (a, b) = (&st.routes[ra], &st.routes[rb]);
    let (ap, an) = (a.nodes[pu - 1], a.nodes[pu + 1]);
    let (bp, bn) = (b.nodes[pv - 1], b.nodes[pv + 1]);
    let delta = inst.d(ap, v) + inst.d(v, an) - inst.d(ap, u) - inst.d(u, an) + inst.d(bp, u) + inst.d(u, bn)
        - inst.d(bp, v)
        - inst.d(v, bn);
    if delta >= -1e-9 {
        return None;
    }
    let dq = inst.demand[v] - inst.demand[u];
    if a.total_load() + dq > inst.capacity || b.total_load() - dq > inst.capacity {
        return None;
    }
    if !concat_ok(inst, a, pu - 1, [v], a, pu + 1) || !concat_ok(inst, b, pv - 1, [u], b, pv + 1) {
        return None;
    }
    Some(Move { delta, ra, rb, pu, pv, u, v })
}

pub(crate) fn apply(st: &mut State, m: Move) {
    let mut ca = st.routes[m.ra].customers().to_vec();
    let mut cb = st.routes[m.rb].customers().to_vec();
    ca[m.pu - 1] = m.v;
    cb[m.pv - 1] = m.u;
    st.set_two(m.ra, ca, m.rb, cb);
}
